/*
 * A writable mapping of a pagetable through a linear ("recursive") L2 entry.
 *
 * An L2 entry that points at an L2 makes that L2's entries appear as pages: the boot
 * L1s, and the L2 itself.  Xen 4.17 (pv-linear-pt) accepts such an entry only read-only,
 * so the window it opens can be read but every write faults; a writable L1 mapping of a
 * pagetable is refused outright.  With the writable_pagetables assist a write into an L1
 * seen through the window is emulated and validated like any PTE write, so it still
 * cannot make a pagetable writable.
 * ABI: xen/arch/x86/mm.c get_l2_linear_pagetable, get_page_from_l1e; pv/ro-page-fault.c.
 */
#include "sec.h"

static uint8_t spare[PAGE_SIZE] __page_aligned;
static uint32_t window;

static uint32_t read_at(uint32_t va)
{
	return *(volatile uint32_t *)va;
}

static uint32_t write_zero_at(uint32_t va)
{
	*(volatile uint32_t *)va = 0;
	return 0;
}

/* Through the window, write an L1 entry that maps the boot L3 writable. */
static uint32_t write_rw_l3_pte(uint32_t va)
{
	*(volatile uint64_t *)va = ((uint64_t)boot_l3_mfn() << PAGE_SHIFT) | PTE_RW_FLAGS;
	return 0;
}

void attempt(void)
{
	uint32_t l2 = boot_l2_mfn(), slot = first_free_l2_slot();
	uint64_t ptr = ((uint64_t)l2 << PAGE_SHIFT) | (slot << 3);
	uint32_t kernel_slot = (VIRT_BASE >> PMD_SHIFT) & 511;
	uint32_t spare_pte;

	result("l1_rw_of_l3", remap(spare, boot_l3_mfn(), PTE_RW_FLAGS));
	result("l1_rw_of_l2", remap(spare, l2, PTE_RW_FLAGS));
	result("l1_rw_of_l1", remap(spare, boot_l1_mfn(spare), PTE_RW_FLAGS));
	result("l3_linear", mmu_update1(((uint64_t)boot_l3_mfn() << PAGE_SHIFT),
					((uint64_t)boot_l3_mfn() << PAGE_SHIFT) | 1));
	result("l2_linear_rw", mmu_update1(ptr, ((uint64_t)l2 << PAGE_SHIFT) | L2E_FLAGS));
	result("l2_linear_ro", mmu_update1(ptr, ((uint64_t)l2 << PAGE_SHIFT) | 0x25));
	window = VIRT_BASE + ((slot - kernel_slot) << PMD_SHIFT);
	/* Window page 0 is the boot L1 that maps VIRT_BASE; page `slot` is the L2 itself. */
	probe("window_read_l1", read_at, window);
	probe("window_read_l2", read_at, window + (slot << PAGE_SHIFT) + kernel_slot * 8);
	probe("window_write_l1", write_zero_at, window + 8);
	probe("window_write_l2", write_zero_at, window + (slot << PAGE_SHIFT));
	result("assist", hc(__HYPERVISOR_vm_assist, VMASST_CMD_enable,
			    VMASST_TYPE_writable_pagetables, 0, 0, 0));
	spare_pte = window + ((((uint32_t)spare - VIRT_BASE) >> PMD_SHIFT) << PAGE_SHIFT)
		    + ((((uint32_t)spare) >> PAGE_SHIFT) & 511) * 8;
	probe("assist_write_rw_l3", write_rw_l3_pte, spare_pte);
	probe("assist_write_l2", write_zero_at, window + (slot << PAGE_SHIFT));
	result("linear_cleared", mmu_update1(ptr, 0));
}
