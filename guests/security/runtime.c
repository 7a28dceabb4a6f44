/*
 * Runtime of the security regression guests: boot (trap table, shared_info mapping),
 * the boot pagetables, hypercall helpers, fault probes and result lines (sec.h).
 * ABI: xen/include/public/xen.h start_info, trap_info, vcpu_info (arch.cr2);
 * XEN-PV-ABI.md 2.3, 3.6.
 */
#include "sec.h"
#include <xen/memory.h>

struct start_info *xen_start_info;

struct sec_jmp {
	uint32_t ebx, esi, edi, ebp, esp, eip;
};

int sec_setjmp(struct sec_jmp *jmp) __attribute__((returns_twice));
void sec_longjmp(struct sec_jmp *jmp, int value) __attribute__((noreturn));
void sec_trap(uint32_t vector, uint32_t *frame) __attribute__((noreturn));
void sec_boot(void);
extern const uint32_t trap_entries[32];

static struct sec_jmp probe_jmp;
static int probe_armed;
static uint32_t fault_vector, fault_ec, fault_eip;
static struct trap_info traps[33];
static uint8_t shared_page[PAGE_SIZE] __page_aligned;

void xen_reboot(unsigned int reason)
{
	struct sched_shutdown shutdown = { .reason = reason };

	for (;;)
		HYPERVISOR_sched_op(SCHEDOP_shutdown, &shutdown);
}

unsigned long pfn_to_mfn(unsigned long pfn)
{
	const uint32_t *p2m = (const uint32_t *)xen_start_info->mfn_list;

	return pfn < xen_start_info->nr_pages ? p2m[pfn] : INVALID_P2M_ENTRY;
}

uint64_t virt_to_machine(unsigned long va)
{
	return ((uint64_t)pfn_to_mfn(virt_to_pfn(va)) << PAGE_SHIFT) | (va & ~PAGE_MASK);
}

unsigned long virt_to_mfn(const void *va)
{
	unsigned long addr = (unsigned long)va;

	asm ("" : "+r" (addr));
	return pfn_to_mfn(virt_to_pfn(addr));
}

/* VA of a boot pagetable frame (they follow pt_base). */
static const uint64_t *boot_table(uint32_t mfn)
{
	uint32_t first = virt_to_pfn(xen_start_info->pt_base), i;

	for (i = 0; i < xen_start_info->nr_pt_frames; i++)
		if (pfn_to_mfn(first + i) == mfn)
			return (const uint64_t *)(VIRT_BASE + (first + i) * PAGE_SIZE);
	printk("security: boot table mfn %x not found\n", mfn);
	xen_reboot(SHUTDOWN_crash);
}

uint32_t boot_l3_mfn(void)
{
	return virt_to_mfn((const void *)xen_start_info->pt_base);
}

uint32_t boot_l2_mfn(void)
{
	return (uint32_t)(((const uint64_t *)xen_start_info->pt_base)[3] >> PAGE_SHIFT);
}

const uint64_t *boot_l2(void)
{
	return boot_table(boot_l2_mfn());
}

uint32_t boot_l1_mfn(const void *va)
{
	return (uint32_t)(boot_l2()[((unsigned long)va >> PMD_SHIFT) & 511] >> PAGE_SHIFT);
}

uint32_t first_free_l2_slot(void)
{
	const uint64_t *l2 = boot_l2();
	uint32_t slot = (VIRT_BASE >> PMD_SHIFT) & 511;

	while (l2[slot] & 1)
		slot++;
	return slot;
}

uint32_t m2p_first_mfn(void)
{
	struct {
		uint32_t max_extents, extent_start, nr_extents;
	} list;
	uint32_t mfn = 0;

	list.max_extents = 1;
	list.extent_start = (uint32_t)&mfn;
	list.nr_extents = 0;
	hc(__HYPERVISOR_memory_op, XENMEM_machphys_mfn_list, (uint32_t)&list, 0, 0, 0);
	return mfn;
}

long hc(uint32_t nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5)
{
	long ret;

	asm volatile ("int $0x82"
		      : "=a" (ret), "+b" (a1), "+c" (a2), "+d" (a3), "+S" (a4), "+D" (a5)
		      : "0" (nr) : "memory");
	return ret;
}

long mmu_update1(uint64_t ptr, uint64_t val)
{
	static struct mmu_update req;

	req.ptr = ptr;
	req.val = val;
	return hc(__HYPERVISOR_mmu_update, (uint32_t)&req, 1, 0, DOMID_SELF, 0);
}

long mmuext1(uint32_t cmd, uint32_t arg1, uint32_t arg2)
{
	static struct mmuext_op op;

	op.cmd = cmd;
	op.arg1.mfn = arg1;
	op.arg2.src_mfn = arg2;
	return hc(__HYPERVISOR_mmuext_op, (uint32_t)&op, 1, 0, DOMID_SELF, 0);
}

long remap(const void *va, uint32_t mfn, uint64_t flags)
{
	uint64_t pte = ((uint64_t)mfn << PAGE_SHIFT) | flags;

	return hc(__HYPERVISOR_update_va_mapping, (uint32_t)va, (uint32_t)pte,
		  (uint32_t)(pte >> 32), UVMF_INVLPG, 0);
}

void result(const char *probe_name, long rc)
{
	printk("security: %s rc=%d\n", probe_name, (int)rc);
}

void value(const char *probe_name, uint32_t v)
{
	printk("security: %s value=%x\n", probe_name, v);
}

int probe(const char *name, uint32_t (*fn)(uint32_t), uint32_t arg)
{
	volatile uint32_t got;
	const struct shared_info *si = (const struct shared_info *)shared_page;

	if (sec_setjmp(&probe_jmp)) {
		probe_armed = 0;
		printk("security: %s fault vector=%u ec=%x cr2=%x eip=%x\n", name, fault_vector,
		       fault_ec, fault_vector == 14 ? (uint32_t)si->vcpu_info[0].arch.cr2 : 0, fault_eip);
		return (int)fault_vector + 1;
	}
	probe_armed = 1;
	got = fn(arg);
	probe_armed = 0;
	printk("security: %s nofault value=%x\n", name, got);
	return 0;
}

void sec_trap(uint32_t vector, uint32_t *frame)
{
	int has_ec = vector == 8 || (vector >= 10 && vector <= 14) || vector == 17;

	fault_vector = vector;
	fault_ec = has_ec ? frame[1] : 0;
	fault_eip = frame[has_ec ? 2 : 1];
	if (!probe_armed) {
		printk("security: unexpected trap vector=%u eip=%x\n", vector, fault_eip);
		xen_reboot(SHUTDOWN_crash);
	}
	sec_longjmp(&probe_jmp, 1);
}

void sec_boot(void)
{
	uint32_t v;

	for (v = 0; v < 32; v++) {
		traps[v].vector = (uint8_t)v;
		traps[v].flags = 0;
		traps[v].cs = FLAT_RING1_CS;
		traps[v].address = trap_entries[v];
	}
	hc(__HYPERVISOR_set_trap_table, (uint32_t)traps, 0, 0, 0, 0);
	remap(shared_page, xen_start_info->shared_info >> PAGE_SHIFT, PTE_RW_FLAGS);
	attempt();
	printk("security: done\n");
}
