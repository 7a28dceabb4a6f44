/*
 * Phase 3: keep the kernel out of the hypervisor's hole at the top of the address space,
 * as Linux's 32-bit xen_reserve_top() / reserve_top_address() do.
 * ABI: xen/include/public/version.h XENVER_platform_parameters; XEN-PV-ABI.md 1.1.
 */
#include <hypercall.h>
#include <lib.h>
#include <setup.h>

unsigned long hypervisor_hole_start;
unsigned long fixaddr_top = 0xfffff000;

/* Reserve `reserve` bytes at the top of the 4 GiB space: fixmaps end below them. */
static void reserve_top_address(unsigned long reserve)
{
	fixaddr_top = ((-reserve) & ~(unsigned long)(PMD_SIZE - 1)) - PAGE_SIZE;
}

void xen_reserve_top(void)
{
	struct xen_platform_parameters pp;
	unsigned long top = HYPERVISOR_VIRT_START_PAE;

	if (HYPERVISOR_xen_version(XENVER_platform_parameters, &pp) == 0)
		top = pp.virt_start;
	hypervisor_hole_start = top;
	reserve_top_address(-top);

	printk("seed: hypervisor hole %p reserved 0x%x bytes fixaddr_top %p\n",
	       (void *)top, (unsigned int)-top, (void *)fixaddr_top);
}
