/*
 * Scenario pfn_as_mfn: put a PFN where an MFN is required.
 *
 * The bug: the kernel switches page tables with MMUEXT_NEW_BASEPTR and passes its pgd's
 * pseudo-physical frame number instead of the machine frame (no pfn_to_mfn()).
 * Rule (xen/arch/x86/mm.c new_guest_cr3, get_page_and_type_from_mfn): the argument is a
 * machine frame that must take the L3 type; the frame with that number is some other page
 * of the domain (a data page, or not an L3 with a present slot 3).
 * On Xen: MMUEXT_NEW_BASEPTR returns -EINVAL.
 */
#include <scenario.h>

void scenario_main(void)
{
	unsigned long pgd = xen_start_info->pt_base;
	struct mmuext_op op = { .cmd = MMUEXT_NEW_BASEPTR };

	op.arg1.mfn = virt_to_pfn(pgd);                 /* should be pfn_to_mfn() of it */
	printk("scenario: pfn_as_mfn: MMUEXT_NEW_BASEPTR with the pgd's pfn 0x%x (its mfn is "
	       "0x%x)\n", op.arg1.mfn, (unsigned int)virt_to_mfn((const void *)pgd));
	scenario_result("mmuext_op(MMUEXT_NEW_BASEPTR)",
			HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF));
}
