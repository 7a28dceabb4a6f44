/*
 * Hypercall buffers inside the hypervisor hole (or straddling its start): Xen checks
 * every guest handle against the hole (__compat_addr_ok / compat_handle_okay) and
 * answers -EFAULT, never touching the memory -- not even the read-only M2P the guest
 * itself may read.  A virtual address in the hole given to update_va_mapping is
 * -EINVAL.  ABI: xen/arch/x86/include/asm/x86_64/uaccess.h; xen/common/multicall.c;
 * xen/arch/x86/mm.c do_update_va_mapping; XEN-PV-ABI.md section 0.
 */
#include "sec.h"

#define HOLE            0xf5800000u
#define STRADDLE        0xf57ffff0u
#define XENVER_extraversion 1

void attempt(void)
{
	result("console_write", hc(__HYPERVISOR_console_io, CONSOLEIO_write, 16, HOLE, 0, 0));
	result("console_straddle", hc(__HYPERVISOR_console_io, CONSOLEIO_write, 32, STRADDLE, 0, 0));
	result("xen_version_m2p", hc(__HYPERVISOR_xen_version, XENVER_extraversion, HOLE, 0, 0, 0));
	result("xen_version_top", hc(__HYPERVISOR_xen_version, XENVER_extraversion, 0xffe00000, 0, 0, 0));
	result("mmu_update", hc(__HYPERVISOR_mmu_update, HOLE, 1, 0, DOMID_SELF, 0));
	result("mmuext_op", hc(__HYPERVISOR_mmuext_op, 0xfffff000, 1, 0, DOMID_SELF, 0));
	result("multicall", hc(__HYPERVISOR_multicall, HOLE, 1, 0, 0, 0));
	result("multicall_straddle", hc(__HYPERVISOR_multicall, STRADDLE, 1, 0, 0, 0));
	result("memory_op", hc(__HYPERVISOR_memory_op, 3, HOLE, 0, 0, 0));
	result("set_trap_table", hc(__HYPERVISOR_set_trap_table, HOLE, 0, 0, 0, 0));
	result("set_gdt", hc(__HYPERVISOR_set_gdt, HOLE, 1, 0, 0, 0));
	result("grant_query", hc(__HYPERVISOR_grant_table_op, 6, HOLE, 1, 0, 0));
	result("evtchn_send", hc(__HYPERVISOR_event_channel_op, 4, HOLE, 0, 0, 0));
	result("vcpu_runstate", hc(__HYPERVISOR_vcpu_op, 4, 0, HOLE, 0, 0));
	result("sched_shutdown", hc(__HYPERVISOR_sched_op, SCHEDOP_shutdown, HOLE, 0, 0, 0));
	result("uvm_hole_va", hc(__HYPERVISOR_update_va_mapping, HOLE, 0, 0, 0, 0));
}
