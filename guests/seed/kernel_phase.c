/*
 * Phase 6, the kernel phase (Linux arch/x86/xen/enlighten_pv.c xen_write_idt_entry,
 * xen_cpuid; events/events_2l.c; arch/x86/xen/time.c; multicalls.c; entry_32.S;
 * process_32.c __switch_to). One console line per step:
 *
 *  1. a virtual trap table (exceptions 0-19, int $0x80 with DPL 3) and the event and
 *     failsafe callbacks;
 *  2. a CPUID paravirt op that hides APIC and ACPI (forced-emulation CPUID underneath);
 *  3. VIRQ_TIMER bound, a 1 ms periodic timer, three ticks taken in the safe_halt idle
 *     loop through the irq ops (vcpu_info mask, pending check after unmask);
 *  4. a one-shot timer from set_timer_op;
 *  5. a privileged instruction (rdmsr APIC_BASE) that Xen traps and emulates;
 *  6. task B: its own page tables and TLS, entered with ONE multicall (MMUEXT_NEW_BASEPTR
 *     + update_descriptor + stack_switch) and a stack switch;
 *  7. from task B, a ring-3 user task entered with the iret hypercall: the first return
 *     uses a stack selector that is not present, so Xen's reload of SS fails and the
 *     failsafe callback repairs the frame;
 *  8. the user task's int $0x80 system calls (write, exit);
 *  9. back to task A with the same multicall, timers stopped.
 *
 * With `timer=1` on the command line the 1 ms periodic timer is restarted at the end and
 * events stay enabled, so later phases (bench=N) run with the tick going (one more line).
 *
 * ABI: xen/include/public/xen.h (trap_info, multicall_entry, VIRQ_*), callback.h,
 * event_channel.h, vcpu.h; XEN-PV-ABI.md 3.6-3.11, 3.15, 3.16, 5.
 */
#include <hypercall.h>
#include <irq.h>
#include <lib.h>
#include <paravirt.h>
#include <setup.h>

#define PTRS_PER_PTE             512
#define PTE_ADDR_MASK            0x000ffffffffff000ULL
#define __page_aligned           __attribute__((aligned(PAGE_SIZE)))
#define MACH2PHYS_VIRT_START     HYPERVISOR_VIRT_START_PAE   /* compat M2P */

#define CALLBACKOP_register      0
#define CALLBACKTYPE_event       0
#define CALLBACKTYPE_failsafe    1
#define CALLBACKF_mask_events    1
#define EVTCHNOP_bind_virq       1
#define VIRQ_TIMER               0
#define VCPUOP_set_periodic_timer   6
#define VCPUOP_stop_periodic_timer  7
#define VCPUOP_stop_singleshot_timer 9
#define MSR_IA32_APICBASE        0x1b
#define X86_FEATURE_APIC         (1u << 9)
#define X86_FEATURE_ACPI         (1u << 22)

#define GDT_ENTRY_TLS            6
#define GDT_ENTRY_BAD_SS         7
#define GDT_ENTRIES              8
#define TLS_SELECTOR             (GDT_ENTRY_TLS * 8 + 3)
#define BAD_USER_SS              (GDT_ENTRY_BAD_SS * 8 + 3)
#define TRAP_IF                  4          /* trap_info.flags: mask events on entry */
#define PROBE_VA                 0xc0c00000UL  /* one 2 MiB slot each task maps privately */
#define SYS_exit                 1
#define SYS_write                4
#define TIMER_TICKS              3
#define THREAD_PAGES             2

/* 8-byte descriptor: access byte in flags 7:0, G/D in flags 15:12 (Linux GDT_ENTRY). */
#define DESC(flags, base, limit)                                                        \
	((((base) & 0xff000000ULL) << (56 - 24)) | (((flags) & 0x0000f0ffULL) << 40) |  \
	 (((limit) & 0x000f0000ULL) << (48 - 16)) | (((base) & 0x00ffffffULL) << 16) |  \
	 ((limit) & 0x0000ffffULL))

struct callback_register {
	uint16_t type;
	uint16_t flags;
	uint32_t cs;
	uint32_t eip;
};

struct evtchn_bind_virq {
	uint32_t virq;
	uint32_t vcpu;
	uint32_t port;
};

/* Saved by common_trap / xen_syscall_entry: pushal, then the vector and error code. */
struct trap_regs {
	uint32_t edi, esi, ebp, esp_ignored, ebx, edx, ecx, eax;
	uint32_t vector, error_code;
	uint32_t eip, cs, eflags;
};

struct syscall_regs {
	uint32_t edi, esi, ebp, esp_ignored, ebx, edx, ecx, eax;
	uint32_t eip, cs, eflags, esp, ss;
};

struct failsafe_frame {
	uint32_t ds, es, fs, gs;
	uint32_t eip, cs, eflags, esp, ss;
};

/* A kernel task: page tables, TLS, the stack ring-3 entries land on, a saved ESP. */
struct task {
	const char *name;
	uint64_t *pgd;
	uint32_t *probe_page;
	uint32_t tls_block[4];
	uint64_t tls_desc;
	unsigned long sp0;
	unsigned long saved_sp;
	struct mmuext_op baseptr;
	struct multicall_entry switch_calls[3];
};

extern char xen_hypercall_iret[];
extern char user_task[], user_page[];
void xen_trap_0(void), xen_trap_1(void), xen_trap_3(void), xen_trap_4(void);
void xen_trap_5(void), xen_trap_6(void), xen_trap_7(void), xen_trap_8(void);
void xen_trap_9(void), xen_trap_10(void), xen_trap_11(void), xen_trap_12(void);
void xen_trap_13(void), xen_trap_14(void), xen_trap_16(void), xen_trap_17(void);
void xen_trap_18(void), xen_trap_19(void);
void xen_syscall_entry(void), xen_hypervisor_callback(void), xen_failsafe_callback(void);
void switch_stacks(unsigned long *save_sp, unsigned long next_sp);
long enter_user(unsigned long eip, unsigned long esp, unsigned long ss);
void leave_user(long code) __attribute__((noreturn));
void do_trap(struct trap_regs *regs);
void do_syscall(struct syscall_regs *regs);
void xen_evtchn_do_upcall(void);
void xen_failsafe_fixup(struct failsafe_frame *frame);

static uint64_t kernel_gdt[PTRS_PER_PTE] __page_aligned;
static unsigned char own_shared_info[PAGE_SIZE] __page_aligned;
static uint64_t taskb_pgd[PTRS_PER_PTE] __page_aligned;
static uint64_t taskb_pmd[PTRS_PER_PTE] __page_aligned;
static uint64_t probe_pte[2][PTRS_PER_PTE] __page_aligned;
static uint32_t probe_page[2][PAGE_SIZE / 4] __page_aligned;
static unsigned char taskb_stack[THREAD_PAGES * PAGE_SIZE] __page_aligned;
static unsigned char sp0_stack[2][PAGE_SIZE] __page_aligned;
static unsigned char user_stack[PAGE_SIZE] __page_aligned;

static struct shared_info *shinfo;
static struct task task_a = { .name = "A" }, task_b = { .name = "B" };
static volatile unsigned int timer_ticks, upcalls, oneshot_seen;
static unsigned int timer_port = ~0u, syscalls;
static void (*native_cpuid)(unsigned int *, unsigned int *, unsigned int *, unsigned int *);

static long hc_callback_op(int cmd, void *arg)
{
	return _hypercall2(__HYPERVISOR_callback_op, cmd, (unsigned long)arg);
}

static long hc_event_channel_op(int cmd, void *arg)
{
	return _hypercall2(__HYPERVISOR_event_channel_op, cmd, (unsigned long)arg);
}

static long hc_vcpu_op(int cmd, unsigned int vcpu, void *arg)
{
	return _hypercall3(__HYPERVISOR_vcpu_op, cmd, vcpu, (unsigned long)arg);
}

static long hc_set_timer_op(uint64_t deadline_ns)
{
	return _hypercall2(__HYPERVISOR_set_timer_op, (unsigned long)deadline_ns,
			   (unsigned long)(deadline_ns >> 32));
}

static long hc_multicall(struct multicall_entry *calls, unsigned int nr)
{
	return _hypercall2(__HYPERVISOR_multicall, (unsigned long)calls, nr);
}

static long hc_set_trap_table(const struct trap_info *table)
{
	return _hypercall1(__HYPERVISOR_set_trap_table, (unsigned long)table);
}

/* The address of a kernel object as a run-time value (see mm_phase.c kva()). */
static unsigned long kva(const void *p)
{
	unsigned long va = (unsigned long)p;

	asm ("" : "+r" (va));
	return va;
}

static unsigned long virt_to_mfn(const void *va)
{
	return pfn_to_mfn(virt_to_pfn(kva(va)));
}

static void remap(const void *va, uint64_t flags)
{
	long rc = HYPERVISOR_update_va_mapping(kva(va), mfn_pte(virt_to_mfn(va), flags).pte,
					       UVMF_INVLPG);

	if (rc)
		panic("remapping %p (flags 0x%x) failed: %d", va, (unsigned int)flags, (int)rc);
}

static void mmuext(unsigned int cmd, unsigned long mfn, const char *what)
{
	struct mmuext_op op = { .cmd = cmd, .arg1.mfn = mfn };
	long rc = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);

	if (rc)
		panic("%s of mfn 0x%x failed: %d", what, (unsigned int)mfn, (int)rc);
}

/* System time in ns from vcpu_time_info, with the version protocol (Linux pvclock). */
static uint64_t xen_clocksource_read(void)
{
	volatile struct vcpu_time_info *t = &xen_vcpu->time;
	uint32_t version, lo, hi;
	uint64_t system, stamp, delta;
	uint32_t mul;
	int8_t shift;

	do {
		version = t->version;
		asm volatile ("" ::: "memory");
		system = t->system_time;
		stamp = t->tsc_timestamp;
		mul = t->tsc_to_system_mul;
		shift = t->tsc_shift;
		asm volatile ("rdtsc" : "=a" (lo), "=d" (hi));
		asm volatile ("" ::: "memory");
	} while ((version & 1) || version != t->version);
	delta = (((uint64_t)hi << 32) | lo) - stamp;
	delta = shift >= 0 ? delta << shift : delta >> -shift;
	/* (delta * mul) >> 32 without a 64x64 multiply library call. */
	return system + (((delta >> 32) * mul) + (((delta & 0xffffffffu) * mul) >> 32));
}

/* -- 1. trap table and callbacks --------------------------------------------------- */

void do_trap(struct trap_regs *regs)
{
	panic("unexpected trap %u (error code 0x%x) at %p", regs->vector, regs->error_code,
	      (void *)regs->eip);
}

#define TRAP(vec, fn, dpl) { vec, dpl, FLAT_KERNEL_CS, (unsigned long)fn }
static const struct trap_info trap_table[] = {
	TRAP(0, xen_trap_0, 0), TRAP(1, xen_trap_1, 0), TRAP(3, xen_trap_3, 3),
	TRAP(4, xen_trap_4, 3), TRAP(5, xen_trap_5, 0), TRAP(6, xen_trap_6, 0),
	TRAP(7, xen_trap_7, 0), TRAP(8, xen_trap_8, 0), TRAP(9, xen_trap_9, 0),
	TRAP(10, xen_trap_10, 0), TRAP(11, xen_trap_11, 0), TRAP(12, xen_trap_12, 0),
	TRAP(13, xen_trap_13, 0), TRAP(14, xen_trap_14, 0 | TRAP_IF), TRAP(16, xen_trap_16, 0),
	TRAP(17, xen_trap_17, 0), TRAP(18, xen_trap_18, 0), TRAP(19, xen_trap_19, 0),
	TRAP(0x80, xen_syscall_entry, 3),
	{ 0, 0, 0, 0 },
};

static void xen_init_traps(void)
{
	struct callback_register event = {
		.type = CALLBACKTYPE_event, .cs = FLAT_KERNEL_CS,
		.eip = (unsigned long)xen_hypervisor_callback,
	};
	struct callback_register failsafe = {
		.type = CALLBACKTYPE_failsafe, .flags = CALLBACKF_mask_events,
		.cs = FLAT_KERNEL_CS, .eip = (unsigned long)xen_failsafe_callback,
	};
	long rc = hc_set_trap_table(trap_table);

	if (rc)
		panic("set_trap_table failed: %d", (int)rc);
	if ((rc = hc_callback_op(CALLBACKOP_register, &event)) ||
	    (rc = hc_callback_op(CALLBACKOP_register, &failsafe)))
		panic("callback_op(register) failed: %d", (int)rc);
	printk("seed: traps: set_trap_table %u vectors, int 0x80 DPL 3; callbacks event %p "
	       "failsafe %p\n", (unsigned int)ARRAY_SIZE(trap_table) - 1,
	       (void *)xen_hypervisor_callback, (void *)xen_failsafe_callback);
}

/* -- 2. CPUID ---------------------------------------------------------------------- */

/* Linux xen_cpuid: a PV kernel never sees the local APIC or ACPI through CPUID. */
static void xen_cpuid_masked(unsigned int *ax, unsigned int *bx, unsigned int *cx,
			     unsigned int *dx)
{
	unsigned int leaf = *ax;

	native_cpuid(ax, bx, cx, dx);
	if (leaf == 1)
		*dx &= ~(X86_FEATURE_APIC | X86_FEATURE_ACPI);
}

static void xen_init_cpuid(void)
{
	unsigned int ax, bx, cx, dx;
	char sig[13];

	native_cpuid = pv_ops.cpu.cpuid;
	pv_ops.cpu.cpuid = xen_cpuid_masked;
	ax = 0x40000000, cx = 0;
	pv_ops.cpu.cpuid(&ax, &bx, &cx, &dx);
	memcpy(sig, &bx, 4);
	memcpy(sig + 4, &cx, 4);
	memcpy(sig + 8, &dx, 4);
	sig[12] = '\0';
	unsigned int max = ax;
	ax = 1, cx = 0;
	pv_ops.cpu.cpuid(&ax, &bx, &cx, &dx);
	printk("seed: cpuid: hypervisor \"%s\" leaves to 0x%x, leaf 1 apic %u acpi %u "
	       "hypervisor %u\n", sig, max, (dx >> 9) & 1, (dx >> 22) & 1, cx >> 31);
}

/* -- 3./4. events and timers ------------------------------------------------------- */

static void xen_attach_shared_info(void)
{
	unsigned long mfn;
	long rc;

	if (xen_vcpu) {
		shinfo = (struct shared_info *)xen_vcpu;     /* vcpu_info[0] starts the page */
		return;
	}
	mfn = xen_start_info->shared_info >> PAGE_SHIFT;
	rc = HYPERVISOR_update_va_mapping(kva(own_shared_info), mfn_pte(mfn, PAGE_KERNEL).pte,
					  UVMF_INVLPG);
	if (rc)
		panic("mapping shared_info failed: %d", (int)rc);
	shinfo = (struct shared_info *)own_shared_info;
	xen_vcpu_info_attach(&shinfo->vcpu_info[0]);
}

static void handle_port(unsigned int port)
{
	if (port == timer_port) {
		timer_ticks++;
		if (oneshot_seen == 1)
			oneshot_seen = 2;
	}
}

/* The 2-level upcall (Linux __xen_evtchn_do_upcall / evtchn_2l_handle_events). */
void xen_evtchn_do_upcall(void)
{
	struct vcpu_info *v = xen_vcpu;

	upcalls++;
	do {
		unsigned long sel;

		v->evtchn_upcall_pending = 0;
		sel = __atomic_exchange_n(&v->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
		while (sel) {
			unsigned int word = __builtin_ctz(sel);
			unsigned long bits;

			sel &= sel - 1;
			bits = shinfo->evtchn_pending[word] & ~shinfo->evtchn_mask[word];
			while (bits) {
				unsigned int bit = __builtin_ctz(bits);

				bits &= bits - 1;
				__atomic_fetch_and(&shinfo->evtchn_pending[word], ~(1ul << bit),
						   __ATOMIC_SEQ_CST);
				handle_port(word * 32 + bit);
			}
		}
	} while (v->evtchn_upcall_pending);
}

static void xen_init_timer(void)
{
	struct evtchn_bind_virq bind = { .virq = VIRQ_TIMER, .vcpu = 0 };
	uint64_t period = 1000000;           /* 1 ms */
	long rc = hc_event_channel_op(EVTCHNOP_bind_virq, &bind);

	if (rc)
		panic("bind_virq(VIRQ_TIMER) failed: %d", (int)rc);
	timer_port = bind.port;
	shinfo->evtchn_mask[timer_port / 32] &= ~(1ul << (timer_port % 32));
	rc = hc_vcpu_op(VCPUOP_set_periodic_timer, 0, &period);
	if (rc)
		panic("VCPUOP_set_periodic_timer failed: %d", (int)rc);
	arch_local_irq_enable();             /* unmask, then the pending check */
	while (timer_ticks < TIMER_TICKS)
		pv_ops.irq.safe_halt();      /* SCHEDOP_block until the next tick */
	arch_local_irq_disable();
	hc_vcpu_op(VCPUOP_stop_periodic_timer, 0, NULL);
	printk("seed: events: VIRQ_TIMER on port %u, %u ticks of the 1 ms periodic timer, "
	       "%u upcalls\n", timer_port, timer_ticks, upcalls);
}

static void xen_oneshot_timer(void)
{
	uint64_t now = xen_clocksource_read();
	unsigned int before = timer_ticks;
	long rc;

	oneshot_seen = 1;
	rc = hc_set_timer_op(now + 2000000);   /* 2 ms from now */
	if (rc)
		panic("set_timer_op failed: %d", (int)rc);
	arch_local_irq_enable();
	while (oneshot_seen != 2)
		pv_ops.irq.safe_halt();
	arch_local_irq_disable();
	printk("seed: set_timer_op one-shot fired after %s2 ms (tick %u)\n",
	       xen_clocksource_read() - now >= 2000000 ? "" : "less than ", before + 1);
}

/* -- 5. a privileged instruction -------------------------------------------------- */

static void xen_emulated_rdmsr(void)
{
	uint32_t lo, hi;

	asm volatile ("rdmsr" : "=a" (lo), "=d" (hi) : "c" (MSR_IA32_APICBASE));
	printk("seed: rdmsr APIC_BASE trapped and emulated by Xen: 0x%x\n", lo);
}

/* -- 6. kernel tasks --------------------------------------------------------------- */

static unsigned long mfn_to_pfn(unsigned long mfn)
{
	return ((const uint32_t *)MACH2PHYS_VIRT_START)[mfn];
}

static uint64_t *pgd_va_from_cr3(unsigned long cr3)
{
	return (uint64_t *)__va(mfn_to_pfn(xen_cr3_to_pfn(cr3)) << PAGE_SHIFT);
}

/* The current page tables, read with a privileged mov that Xen emulates. */
static unsigned long read_cr3(void)
{
	unsigned long cr3;

	asm volatile ("movl %%cr3, %0" : "=r" (cr3));
	return cr3;
}

static void map_probe(uint64_t *pmd, unsigned int which, uint32_t magic, int live)
{
	uint64_t *pte = probe_pte[which];
	unsigned int idx = (PROBE_VA >> PMD_SHIFT) & (PTRS_PER_PTE - 1);
	struct mmu_update req;
	long rc;

	probe_page[which][0] = magic;
	pte[0] = mfn_pte(virt_to_mfn(probe_page[which]), PAGE_KERNEL).pte;
	remap(pte, PAGE_KERNEL_RO);
	if (!live) {
		pmd[idx] = ((uint64_t)virt_to_mfn(pte) << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_RW |
			   _PAGE_ACCESSED | _PAGE_DIRTY;
		return;
	}
	/* The live pmd is read-only: one mmu_update writes its entry. */
	req.ptr = virt_to_machine(kva(&pmd[idx])) | MMU_NORMAL_PT_UPDATE;
	req.val = ((uint64_t)virt_to_mfn(pte) << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_RW |
		  _PAGE_ACCESSED | _PAGE_DIRTY;
	rc = HYPERVISOR_mmu_update(&req, 1, NULL, DOMID_SELF);
	if (rc)
		panic("mmu_update of the probe pmd entry failed: %d", (int)rc);
}

static void xen_load_kernel_gdt(void)
{
	struct desc_ptr dtr = {
		.size = GDT_ENTRIES * 8 - 1, .address = (unsigned long)kernel_gdt,
	};

	/* Leave whatever GDT came before on Xen's flat selectors, then load ours. */
	asm volatile ("ljmp %0, $1f\n1:" : : "i" (FLAT_KERNEL_CS));
	asm volatile ("movl %0, %%ds; movl %0, %%es; movl %0, %%ss; movl %1, %%fs; "
		      "movl %1, %%gs" : : "r" (FLAT_KERNEL_DS), "r" (0));
	kernel_gdt[GDT_ENTRY_TLS] = task_a.tls_desc;
	kernel_gdt[GDT_ENTRY_BAD_SS] = DESC(0xc073, 0, 0xfffff);   /* DPL 3 data, not present */
	pv_ops.cpu.load_gdt(&dtr);
}

static void prepare_task(struct task *t, uint32_t tls_magic, unsigned long sp0)
{
	t->tls_block[0] = tls_magic;
	t->tls_desc = DESC(0xc0f3, kva(t->tls_block), 0xfffff);    /* DPL 3 data, accessed */
	t->sp0 = sp0;
	t->baseptr.cmd = MMUEXT_NEW_BASEPTR;
	t->baseptr.arg1.mfn = virt_to_mfn(t->pgd);
}

/* The one multicall that switches address space, TLS and ring-0 stack (Linux
 * xen_mc_* batching in __switch_to). */
static void build_switch_calls(struct task *next)
{
	uint64_t tls_maddr = virt_to_machine(kva(&kernel_gdt[GDT_ENTRY_TLS]));
	struct multicall_entry *mc = next->switch_calls;

	memset(mc, 0, sizeof(next->switch_calls));
	mc[0].op = __HYPERVISOR_mmuext_op;
	mc[0].args[0] = kva(&next->baseptr);
	mc[0].args[1] = 1;
	mc[0].args[3] = DOMID_SELF;
	mc[1].op = __HYPERVISOR_update_descriptor;
	mc[1].args[0] = (unsigned long)tls_maddr;
	mc[1].args[1] = (unsigned long)(tls_maddr >> 32);
	mc[1].args[2] = (unsigned long)next->tls_desc;
	mc[1].args[3] = (unsigned long)(next->tls_desc >> 32);
	mc[2].op = __HYPERVISOR_stack_switch;
	mc[2].args[0] = FLAT_KERNEL_SS;
	mc[2].args[1] = next->sp0;
}

static void switch_to(struct task *prev, struct task *next)
{
	unsigned int i;
	long rc;

	build_switch_calls(next);
	rc = hc_multicall(next->switch_calls, 3);
	if (rc)
		panic("task switch multicall failed: %d", (int)rc);
	for (i = 0; i < 3; i++)
		if (next->switch_calls[i].result)
			panic("task switch multicall entry %u failed: %d", i,
			      (int)next->switch_calls[i].result);
	asm volatile ("movl %0, %%gs" : : "r" (TLS_SELECTOR) : "memory");
	switch_stacks(&prev->saved_sp, next->saved_sp);
	asm volatile ("movl %0, %%gs" : : "r" (TLS_SELECTOR) : "memory");
}

static uint32_t gs_word(void)
{
	uint32_t v;

	asm volatile ("movl %%gs:0, %0" : "=r" (v));
	return v;
}

static uint32_t probe(void)
{
	return *(volatile uint32_t *)PROBE_VA;
}

/* -- 7./8. ring 3 ------------------------------------------------------------------ */

static unsigned int failsafe_calls;

void xen_failsafe_fixup(struct failsafe_frame *f)
{
	failsafe_calls++;
	printk("seed: failsafe callback: iret to ring 3 faulted on ss 0x%x (ds 0x%x es 0x%x "
	       "fs 0x%x gs 0x%x, eip %p); retrying with FLAT_USER_SS\n", f->ss, f->ds, f->es,
	       f->fs, f->gs, (void *)f->eip);
	if (failsafe_calls > 1 || f->ss != BAD_USER_SS)
		panic("unexpected failsafe callback");
	f->ss = FLAT_RING3_SS;
}

void do_syscall(struct syscall_regs *regs)
{
	syscalls++;
	switch (regs->eax) {
	case SYS_write: {
		char text[64];
		unsigned int len = regs->ecx < sizeof(text) - 1 ? regs->ecx : sizeof(text) - 1;

		memcpy(text, (const char *)regs->ebx, len);
		text[len] = '\0';
		printk("seed: user task (ring 3) says: %s\n", text);
		regs->eax = len;
		return;
	}
	case SYS_exit:
		leave_user(regs->ebx);
	}
	regs->eax = (uint32_t)-38;
}

static void run_user_task(void)
{
	long code;

	remap(user_task, _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED);
	remap(user_page, PAGE_KERNEL | _PAGE_USER);
	remap(user_stack, PAGE_KERNEL | _PAGE_USER);
	code = enter_user(kva(user_task), kva(user_stack + PAGE_SIZE), BAD_USER_SS);
	arch_local_irq_disable();
	printk("seed: user task exited with %d after %u system calls\n", (int)code, syscalls);
}

/* -- 9. task B and the way back ------------------------------------------------------- */

static void task_b_main(void)
{
	printk("seed: task %s: own pgd, private page 0x%x, TLS %%gs:0 0x%x, switched in by one "
	       "multicall of 3 entries\n", task_b.name, probe(), gs_word());
	run_user_task();
	switch_to(&task_b, &task_a);
	panic("task B resumed after switching away for good");
}

static void xen_build_task_b(void)
{
	uint64_t *pgd_a = pgd_va_from_cr3(read_cr3());
	uint64_t *pmd_a = (uint64_t *)__va(mfn_to_pfn((pgd_a[3] & PTE_ADDR_MASK) >> PAGE_SHIFT)
					   << PAGE_SHIFT);
	unsigned long *sp;
	unsigned int i;

	task_a.pgd = pgd_a;
	task_b.pgd = taskb_pgd;
	prepare_task(&task_a, 0xa1a1a1a1, kva(sp0_stack[0] + PAGE_SIZE));
	prepare_task(&task_b, 0xb1b1b1b1, kva(sp0_stack[1] + PAGE_SIZE));
	xen_load_kernel_gdt();

	/* Task B: a copy of A's kernel pmd, guest slots only (Xen fills its own slots,
	 * hypervisor_hole_start and above, when it validates the table). */
	for (i = 0; i < ((hypervisor_hole_start >> PMD_SHIFT) & (PTRS_PER_PTE - 1)); i++)
		taskb_pmd[i] = pmd_a[i];
	map_probe(taskb_pmd, 1, 0xb2b2b2b2, 0);
	remap(taskb_pmd, PAGE_KERNEL_RO);
	taskb_pgd[3] = ((uint64_t)virt_to_mfn(taskb_pmd) << PAGE_SHIFT) | _PAGE_PRESENT;
	remap(taskb_pgd, PAGE_KERNEL_RO);
	mmuext(MMUEXT_PIN_L3_TABLE, virt_to_mfn(taskb_pgd), "pinning task B's pgd");
	map_probe(pmd_a, 0, 0xa2a2a2a2, 1);
	pv_ops.mmu.flush_tlb();

	/* B's first switch_stacks() pops four registers and returns into task_b_main. */
	sp = (unsigned long *)(taskb_stack + sizeof(taskb_stack));
	*--sp = 0;
	*--sp = (unsigned long)task_b_main;
	for (i = 0; i < 4; i++)
		*--sp = 0;
	task_b.saved_sp = kva(sp);
}

/* timer=1: the periodic tick keeps running (events enabled) for whatever follows. */
static void xen_keep_timer_running(void)
{
	uint64_t period = 1000000;
	unsigned int on;

	if (cmdline_get_uint(boot_command_line, "timer", &on) != CMDLINE_FOUND || !on)
		return;
	if (hc_vcpu_op(VCPUOP_set_periodic_timer, 0, &period))
		panic("restarting the periodic timer failed");
	arch_local_irq_enable();
	printk("seed: timer=1: the 1 ms periodic timer keeps running, events enabled\n");
}

void xen_kernel_phase(void)
{
	xen_attach_shared_info();
	xen_init_traps();
	xen_init_cpuid();
	xen_init_timer();
	xen_oneshot_timer();
	xen_emulated_rdmsr();
	xen_build_task_b();
	switch_to(&task_a, &task_b);
	hc_vcpu_op(VCPUOP_stop_singleshot_timer, 0, NULL);
	printk("seed: back in task %s: private page 0x%x, TLS %%gs:0 0x%x\n", task_a.name,
	       probe(), gs_word());
	xen_keep_timer_running();
}
