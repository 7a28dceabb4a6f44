/*
 * The pv_ops table and its installation, as Linux's xen_start_kernel does with
 * "pv_info = xen_info; pv_ops.cpu = xen_cpu_ops; xen_init_irq_ops(); xen_init_mmu_ops()".
 */
#include <paravirt.h>

/* Empty (all NULL) until xen_init_paravirt(): nothing may call a pv op before phase 1. */
struct paravirt_ops pv_ops;

struct pv_info pv_info = {
	.name = "bare hardware",
	.kernel_rpl = 0,
};

void xen_init_paravirt(void)
{
	pv_info.name = "Xen";
	pv_info.kernel_rpl = 1;
	pv_ops.irq = xen_irq_ops;
	pv_ops.mmu = xen_mmu_ops;
	pv_ops.cpu = xen_cpu_ops;
}
