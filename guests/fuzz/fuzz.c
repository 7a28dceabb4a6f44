/*
 * The fuzz guest's boot and loop: find the layout Xen built, install trap handlers and
 * callbacks that recover from anything, then make steps start .. start+count-1 of the
 * stream for `seed` (command line "seed=S start=I count=N [wild=1]").  Step i draws its
 * random numbers from (seed, i) alone; its effects depend on the steps before it, so a
 * run replays exactly from start=0.
 *
 * Console: "fuzz: seed=S start=I count=N wild=W" at boot, "fuzz: done seed=S steps=N
 * hypercalls=H traps=T" before powering off.  The harness (bench/run_fuzz.py) reads
 * fuzz_index and fuzz_hypercalls through the symbol table after every hypercall.
 * ABI: xen/include/public/xen.h (start_info, trap_info, mmuext_op), callback.h,
 * memory.h (compat); XEN-PV-ABI.md sections 2 and 3.
 */
#include "fuzz.h"
#include <xen/memory.h>

struct start_info *xen_start_info;
struct layout lay;
int fuzz_wild;
uint32_t restore_owed;

/* Read by the harness: the step being made, and how many hypercalls were issued. */
volatile uint32_t fuzz_index;
volatile uint32_t fuzz_seed;
volatile uint32_t fuzz_hypercalls;
volatile uint32_t fuzz_traps;
volatile uint32_t fuzz_last_trap;

static struct fuzz_jmp step_jmp;
static uint8_t vcpu_info_page[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
uint32_t vcpu_info_page_mfn;
static struct trap_info trap_table[33];

void mark_vital(uint32_t mfn);

void xen_reboot(unsigned int reason)
{
	struct sched_shutdown shutdown = { .reason = reason };

	for (;;)
		HYPERVISOR_sched_op(SCHEDOP_shutdown, &shutdown);
}

unsigned long pfn_to_mfn(unsigned long pfn)
{
	const uint32_t *p2m = (const uint32_t *)xen_start_info->mfn_list;

	if (pfn >= xen_start_info->nr_pages)
		return INVALID_P2M_ENTRY;
	return p2m[pfn];
}

uint64_t virt_to_machine(unsigned long va)
{
	return ((uint64_t)pfn_to_mfn(virt_to_pfn(va)) << PAGE_SHIFT) | (va & ~PAGE_MASK);
}

const uint64_t *boot_l1_entries(uint32_t mfn)
{
	uint32_t i;

	for (i = 0; i < lay.nr_boot_l1; i++)
		if (lay.l1_mfn[i] == mfn)
			return lay.l1_va[i];
	return lay.l1_va[0];
}

/* VA of a boot pagetable frame: Xen maps them read-only among the first pages. */
static const uint64_t *boot_table_va(uint32_t mfn)
{
	uint32_t first = virt_to_pfn(xen_start_info->pt_base), i;

	for (i = 0; i < xen_start_info->nr_pt_frames; i++)
		if (pfn_to_mfn(first + i) == mfn)
			return (const uint64_t *)(VIRT_BASE + (first + i) * PAGE_SIZE);
	printk("fuzz: boot table mfn %x is not among the boot pagetable frames\n", mfn);
	xen_reboot(SHUTDOWN_crash);
}

static void find_layout(void)
{
	struct start_info *si = xen_start_info;
	uint32_t pt_end = si->pt_base + si->nr_pt_frames * PAGE_SIZE;
	const uint64_t *l3 = (const uint64_t *)si->pt_base;
	uint32_t i, pfn, first_arena_pfn;
	struct xen_machphys_mfn_list {
		uint32_t max_extents, extent_start, nr_extents;
	} list;
	uint32_t m2p_start = 0;

	/* Xen's start-of-day contract: the mapping covers the bootstrap stack plus at least
	 * 512 KiB, rounded up to 4 MiB (xen.h start_info comment). */
	lay.virt_end = (pt_end + PAGE_SIZE + 512 * 1024 + 0x3fffff) & ~0x3fffffu;
	lay.scratch_va = lay.virt_end - SCRATCH_SIZE;
	lay.arena_va = lay.scratch_va - ARENA_PAGES * PAGE_SIZE;
	lay.nr_pages = si->nr_pages;
	lay.first_free_pfn = virt_to_pfn(lay.virt_end);
	first_arena_pfn = virt_to_pfn(lay.arena_va);
	for (i = 0; i < ARENA_PAGES; i++)
		lay.arena_mfn[i] = pfn_to_mfn(first_arena_pfn + i);
	for (i = 0; i < SCRATCH_PAGES; i++)
		lay.scratch_mfn[i] = pfn_to_mfn(first_arena_pfn + ARENA_PAGES + i);
	for (pfn = 0; pfn < first_arena_pfn; pfn++)
		mark_vital(pfn_to_mfn(pfn));
	/* shared_info holds the upcall mask that keeps random callbacks from running. */
	mark_vital(si->shared_info >> PAGE_SHIFT);
	/* The multicall page and its guard: nothing may write them but the guest. */
	mark_vital(lay.scratch_mfn[SCRATCH_PAGES - 1]);
	mark_vital(lay.scratch_mfn[SCRATCH_PAGES - 2]);

	lay.l3_mfn = pfn_to_mfn(virt_to_pfn(si->pt_base));
	lay.l2_mfn = (uint32_t)(l3[3] >> PAGE_SHIFT);
	lay.l2_va = boot_table_va(lay.l2_mfn);
	lay.nr_boot_l1 = (lay.virt_end - VIRT_BASE) >> PMD_SHIFT;
	if (lay.nr_boot_l1 > MAX_BOOT_L1) {
		printk("fuzz: %u boot L1s, more than %u\n", lay.nr_boot_l1, MAX_BOOT_L1);
		xen_reboot(SHUTDOWN_crash);
	}
	for (i = 0; i < lay.nr_boot_l1; i++) {
		lay.l1_mfn[i] = (uint32_t)(lay.l2_va[i] >> PAGE_SHIFT);
		lay.l1_va[i] = boot_table_va(lay.l1_mfn[i]);
	}
	lay.shared_info_mfn = si->shared_info >> PAGE_SHIFT;
	vcpu_info_page_mfn = pfn_to_mfn(virt_to_pfn((unsigned long)vcpu_info_page));
	lay.max_ram_page = (uint32_t)do_call(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page,
					     0, 0, 0, 0);
	list.max_extents = 1;
	list.extent_start = (uint32_t)&m2p_start;
	list.nr_extents = 0;
	do_call(__HYPERVISOR_memory_op, XENMEM_machphys_mfn_list, (uint32_t)&list, 0, 0, 0);
	lay.m2p_mfn = m2p_start;
}

/* -- the guest's own handlers ----------------------------------------------------------- */
extern const uint32_t trap_entries[32];
extern char trap_entry_0x100[], trap_entry_0x101[];

static void install_handlers(void)
{
	uint32_t v;

	if (restore_owed & R_TRAPS) {
		do_call(__HYPERVISOR_set_trap_table, 0, 0, 0, 0, 0);
		for (v = 0; v < 32; v++) {
			trap_table[v].vector = (uint8_t)v;
			trap_table[v].flags = 0;
			trap_table[v].cs = FLAT_RING1_CS;
			trap_table[v].address = trap_entries[v];
		}
		trap_table[32].address = 0;
		do_call(__HYPERVISOR_set_trap_table, (uint32_t)trap_table, 0, 0, 0, 0);
	}
	if (restore_owed & R_STACK)
		do_call(__HYPERVISOR_stack_switch, FLAT_RING1_DS,
			(uint32_t)fuzz_kernel_stack + THREAD_SIZE, 0, 0, 0);
	if (restore_owed & R_CALLBACKS) {
		do_call(__HYPERVISOR_set_callbacks, FLAT_RING1_CS, (uint32_t)trap_entry_0x100,
			FLAT_RING1_CS, (uint32_t)trap_entry_0x101, 0);
		do_call(__HYPERVISOR_nmi_op, 1, 0, 0, 0, 0);   /* XENNMI_unregister_callback */
	}
	if (restore_owed & R_DEBUGREGS)
		do_call(__HYPERVISOR_set_debugreg, 7, 0, 0, 0, 0);
	restore_owed = 0;
}

void fuzz_trap(uint32_t vector, uint32_t *frame)
{
	(void)frame;
	fuzz_traps++;
	fuzz_last_trap = vector;
	fuzz_longjmp(&step_jmp, (int)vector + 1);
}

/* -- the loop ---------------------------------------------------------------------------- */
static unsigned int cmdline_value(const char *key, unsigned int fallback)
{
	unsigned int value;

	if (cmdline_get_uint(xen_start_info->cmd_line, key, &value) == CMDLINE_FOUND)
		return value;
	return fallback;
}

void fuzz_main(void);
void fuzz_main(void)
{
	uint32_t seed = cmdline_value("seed", 1);
	uint32_t start = cmdline_value("start", 0);
	uint32_t count = cmdline_value("count", 1000);
	volatile uint32_t i;

	fuzz_wild = cmdline_value("wild", 0) != 0;
	fuzz_seed = seed;
	find_layout();
	restore_owed = R_TRAPS | R_STACK | R_CALLBACKS;
	install_handlers();
	printk("fuzz: seed=%u start=%u count=%u wild=%u\n", seed, start, count, fuzz_wild);
	for (i = start; i - start < count; i++) {
		fuzz_index = i;
		rng_seed(seed, i);
		if (!fuzz_setjmp(&step_jmp))
			fuzz_step();
		if (restore_owed)
			install_handlers();
	}
	fuzz_index = start + count;
	printk("fuzz: done seed=%u steps=%u hypercalls=%u traps=%u\n", seed, count,
	       fuzz_hypercalls, fuzz_traps);
}
