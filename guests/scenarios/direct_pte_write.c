/*
 * Scenario direct_pte_write: write an L1 entry directly without the assist.
 *
 * The bug: the kernel clears a PTE with a plain store, as on bare metal, but never enabled
 * VMASST_TYPE_writable_pagetables. Page tables are mapped read-only, so the store faults.
 * Rule (xen/arch/x86/traps.c fixup_page_fault, pv/ro-page-fault.c): Xen emulates a write
 * to a read-only L1 only with the writable_pagetables assist; otherwise the #PF goes to
 * the guest, which has no trap handler here.
 * On Xen: the domain crashes on a #PF at the store, cr2 = the PTE's address.
 */
#include <scenario.h>

static unsigned char victim[PAGE_SIZE] __page_aligned;

void scenario_main(void)
{
	volatile uint32_t *pte = (volatile uint32_t *)pte_of(victim);

	printk("scenario: direct_pte_write: clear the pte of %p at %p with a plain store\n",
	       (void *)victim, (void *)pte);
	pte[0] = 0;                                     /* #PF: the L1 is mapped read-only */
	printk("scenario: the store to %p went through\n", (void *)pte);
}
