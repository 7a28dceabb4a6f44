/*
 * Xen irq ops: the virtual interrupt flag is the vCPU's evtchn_upcall_mask
 * (Linux arch/x86/xen/irq.c). While shared_info is not mapped (xen_vcpu == NULL) the
 * mask lives in a local flag instead.
 * ABI: xen/include/public/xen.h struct vcpu_info; sched_op SCHEDOP_block.
 */
#include <hypercall.h>
#include <irq.h>
#include <paravirt.h>

struct vcpu_info *xen_vcpu;

/* Stand-in for evtchn_upcall_mask while xen_vcpu is NULL; 1 (masked) as Xen starts us. */
static volatile uint8_t boot_upcall_mask = 1;

static volatile uint8_t *upcall_mask(void)
{
	return xen_vcpu ? &xen_vcpu->evtchn_upcall_mask : &boot_upcall_mask;
}

/*
 * After unmasking, an event that arrived while masked must still be delivered: any
 * hypercall makes Xen check for pending upcalls on its way back to the guest.
 */
static void xen_force_evtchn_callback(void)
{
	HYPERVISOR_xen_version(XENVER_version, NULL);
}

static void xen_check_pending(void)
{
	asm volatile ("" ::: "memory");   /* read pending only after the unmask is visible */
	if (xen_vcpu && xen_vcpu->evtchn_upcall_pending)
		xen_force_evtchn_callback();
}

static unsigned long xen_save_fl(void)
{
	return *upcall_mask() ? 0 : X86_EFLAGS_IF;
}

static void xen_irq_disable(void)
{
	*upcall_mask() = 1;
	asm volatile ("" ::: "memory");
}

static void xen_irq_enable(void)
{
	*upcall_mask() = 0;
	xen_check_pending();
}

static void xen_restore_fl(unsigned long flags)
{
	if (flags & X86_EFLAGS_IF)
		xen_irq_enable();
	else
		xen_irq_disable();
}

/* SCHEDOP_block unmasks the real vcpu_info itself; keep the local flag in step. */
static void xen_safe_halt(void)
{
	if (!xen_vcpu)
		boot_upcall_mask = 0;
	HYPERVISOR_sched_op(SCHEDOP_block, NULL);
}

void xen_vcpu_info_attach(struct vcpu_info *vcpu)
{
	vcpu->evtchn_upcall_mask = boot_upcall_mask;
	asm volatile ("" ::: "memory");
	xen_vcpu = vcpu;
	if (!boot_upcall_mask)
		xen_check_pending();
}

const struct pv_irq_ops xen_irq_ops = {
	.save_fl = xen_save_fl,
	.restore_fl = xen_restore_fl,
	.irq_disable = xen_irq_disable,
	.irq_enable = xen_irq_enable,
	.safe_halt = xen_safe_halt,
};
