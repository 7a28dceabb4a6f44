/*
 * A superpage over the pagetables: an L2 entry with PSE that would map the 2 MiB around
 * the boot pagetables writable.  Xen 4.17 has no PV superpages: PSE is in the L2
 * disallow mask (and is PAT in an L1 entry, refused for a domU), whether the entry is
 * written by mmu_update or found while pinning a new L2.
 * ABI: xen/arch/x86/mm.c L2_DISALLOW_MASK, l1_disallow_mask, get_page_from_l2e.
 */
#include "sec.h"

static uint64_t new_l2[512] __page_aligned;
static uint8_t spare[PAGE_SIZE] __page_aligned;

void attempt(void)
{
	uint32_t l2 = boot_l2_mfn(), slot = first_free_l2_slot();
	uint64_t ptr = ((uint64_t)l2 << PAGE_SHIFT) | (slot << 3);
	uint64_t big = (uint64_t)(boot_l3_mfn() & ~511u) << PAGE_SHIFT;

	result("pse_rw", mmu_update1(ptr, big | 0xe7));
	result("pse_ro", mmu_update1(ptr, big | 0xa5));
	new_l2[0] = big | 0xe7;
	result("remap_new_l2", remap(new_l2, virt_to_mfn(new_l2), PTE_RO_FLAGS));
	result("pin_l2_with_pse", mmuext1(MMUEXT_PIN_L2_TABLE, virt_to_mfn(new_l2), 0));
	result("l1_pat_bit", remap(spare, boot_l3_mfn(), PTE_RO_FLAGS | 0x80));
	result("slot_still_empty", (long)(boot_l2()[slot] & 1));
}
