/*
 * Scenario map_pt_writable: map a page-table frame writable.
 *
 * The bug: the kernel remaps its own pgd (start_info.pt_base) read-write, e.g. to edit it
 * with plain stores. Rule (xen/arch/x86/mm.c get_page_from_l1e): a writable mapping takes
 * the frame's writable type, which a frame typed as a page table can never have.
 * On Xen: update_va_mapping returns -EBUSY ("... is an L3 pagetable ...: writable mapping
 * refused"); the kernel BUG()s.
 */
#include <scenario.h>

void scenario_main(void)
{
	unsigned long pgd = xen_start_info->pt_base;
	unsigned long mfn = virt_to_mfn((const void *)pgd);

	printk("scenario: map_pt_writable: remap the pgd at %p (mfn 0x%x) read-write\n",
	       (void *)pgd, (unsigned int)mfn);
	scenario_result("update_va_mapping",
			HYPERVISOR_update_va_mapping(pgd, mfn_pte(mfn, PAGE_KERNEL).pte,
						     UVMF_INVLPG));
}
