/*
 * Virtual interrupt flag of the boot vCPU (irq.c).
 * ABI: xen/include/public/xen.h struct vcpu_info evtchn_upcall_mask / evtchn_upcall_pending.
 */
#ifndef SEED_IRQ_H
#define SEED_IRQ_H

#include <xen/xen.h>

/*
 * This vCPU's vcpu_info (one vCPU: the per-cpu variable has a single instance).
 * NULL until a later phase maps shared_info; until then the irq ops keep the upcall
 * mask in a local flag that starts at 1, as Xen builds the domain with events masked.
 */
extern struct vcpu_info *xen_vcpu;

/*
 * Point the irq ops at the real vcpu_info once shared_info is mapped: the local flag's
 * value is copied into vcpu->evtchn_upcall_mask first, so the interrupt state carries over.
 */
void xen_vcpu_info_attach(struct vcpu_info *vcpu);

#endif /* SEED_IRQ_H */
