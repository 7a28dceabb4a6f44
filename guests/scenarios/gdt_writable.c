/*
 * Scenario gdt_writable: hand set_gdt a frame that is still mapped writable.
 *
 * The bug: the kernel fills a GDT page and calls set_gdt without first remapping the page
 * read-only (Linux's xen_load_gdt does make_lowmem_page_readonly first).
 * Rule (xen/arch/x86/pv/descriptor-tables.c pv_set_gdt): every GDT frame must take the
 * seg_desc type, which a frame mapped writable cannot.
 * On Xen: set_gdt returns -EINVAL.
 */
#include <scenario.h>

static uint64_t gdt[512] __page_aligned;

void scenario_main(void)
{
	unsigned long frames[1];

	gdt[2] = 0x00cfbb000000ffffULL;                 /* flat ring-1 code */
	gdt[3] = 0x00cfb3000000ffffULL;                 /* flat ring-1 data */
	frames[0] = virt_to_mfn(gdt);                   /* still mapped read-write: the bug */
	printk("scenario: gdt_writable: set_gdt with mfn 0x%x, still mapped writable at %p\n",
	       (unsigned int)frames[0], (void *)gdt);
	scenario_result("set_gdt", HYPERVISOR_set_gdt(frames, 4));
}
