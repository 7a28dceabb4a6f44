/*
 * Scenario pin_hole: pin a table with entries into the hypervisor hole.
 *
 * The bug: to make a new kernel pmd the kernel copies all 512 entries of its current one,
 * including slots 428..511, which map the hypervisor hole (0xf5800000 up: Xen's M2P and
 * private area) with Xen's own frames, and pins the copy as an L2.
 * Rule (xen/arch/x86/mm.c get_page_from_l2e, is_guest_l2_slot, init_xen_pae_l2_slots): an
 * L2 entry must point at one of the domain's L1s; Xen fills the hole's slots itself when
 * an L2 is used in slot 3 of an L3, and a guest copy must leave them out.
 * On Xen: MMUEXT_PIN_L2_TABLE returns -EINVAL (slot 428 maps a frame of Xen's).
 */
#include <scenario.h>

static uint64_t pmd_copy[512] __page_aligned;

void scenario_main(void)
{
	const uint64_t *pgd = (const uint64_t *)xen_start_info->pt_base;
	const uint64_t *pmd = entry_va(pgd[3]);
	struct mmuext_op op = { .cmd = MMUEXT_PIN_L2_TABLE };

	memcpy(pmd_copy, pmd, sizeof(pmd_copy));        /* Xen's slots included: the bug */
	remap_readonly(pmd_copy);
	op.arg1.mfn = virt_to_mfn(pmd_copy);
	printk("scenario: pin_hole: pin a copy of the kernel pmd, slots 428..511 included "
	       "(mfn 0x%x)\n", op.arg1.mfn);
	scenario_result("mmuext_op(MMUEXT_PIN_L2_TABLE)",
			HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF));
}
