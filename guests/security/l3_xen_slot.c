/*
 * An L3 entry aimed at Xen's part of the address space.  Slot 3 of a PAE L3 holds the L2
 * whose slots 428..511 map the hypervisor hole; Xen fills those slots itself, refuses
 * any change to slot 3 of a validated L3, refuses a slot-3 L2 shared between two L3s
 * or reused in slots 0..2 (its type is L2|pae_xen_l2), refuses Xen's own frames
 * anywhere, and refuses guest writes to the Xen slots of that L2.
 * ABI: xen/arch/x86/mm.c mod_l3_entry, promote_l3_table, mod_l2_entry,
 * pv/mm.c init_xen_pae_l2_slots; XEN-PV-ABI.md 1.1.
 */
#include "sec.h"

static uint64_t new_l3[512] __page_aligned;
static uint64_t new_l2[512] __page_aligned;

void attempt(void)
{
	uint32_t l3 = boot_l3_mfn(), l2 = boot_l2_mfn(), m2p = m2p_first_mfn();
	uint64_t l3_slot0 = (uint64_t)l3 << PAGE_SHIFT;
	uint64_t xen_slot = (uint64_t)boot_l2()[428];

	result("l3_slot3_replaced", mmu_update1(l3_slot0 | (3 << 3), ((uint64_t)l2 << PAGE_SHIFT) | 1));
	result("l3_slot3_cleared", mmu_update1(l3_slot0 | (3 << 3), 0));
	result("l3_slot0_hole_l2", mmu_update1(l3_slot0, ((uint64_t)l2 << PAGE_SHIFT) | 1));
	result("l3_slot0_m2p", mmu_update1(l3_slot0, ((uint64_t)m2p << PAGE_SHIFT) | 1));
	result("l3_slot0_self", mmu_update1(l3_slot0, ((uint64_t)l3 << PAGE_SHIFT) | 1));
	result("l2_xen_slot_write", mmu_update1(((uint64_t)l2 << PAGE_SHIFT) | (500 << 3), 0));
	result("l2_xen_slot_copy", mmu_update1(((uint64_t)l2 << PAGE_SHIFT) | (300 << 3), xen_slot));
	new_l3[3] = ((uint64_t)l2 << PAGE_SHIFT) | 1;
	result("remap_new_l3", remap(new_l3, virt_to_mfn(new_l3), PTE_RO_FLAGS));
	result("pin_l3_sharing_hole_l2", mmuext1(MMUEXT_PIN_L3_TABLE, virt_to_mfn(new_l3), 0));
	new_l2[428] = xen_slot;
	result("remap_new_l2", remap(new_l2, virt_to_mfn(new_l2), PTE_RO_FLAGS));
	result("pin_l2_with_xen_entry", mmuext1(MMUEXT_PIN_L2_TABLE, virt_to_mfn(new_l2), 0));
	result("baseptr_l2", mmuext1(MMUEXT_NEW_BASEPTR, l2, 0));
	result("baseptr_m2p", mmuext1(MMUEXT_NEW_BASEPTR, m2p, 0));
	value("l2_slot428_unchanged", (uint32_t)(boot_l2()[428] == xen_slot));
}
