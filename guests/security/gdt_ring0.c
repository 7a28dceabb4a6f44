/*
 * Descriptors that would reach ring 0: a DPL-0 code or data segment, and call gates to
 * Xen's ring-0 selectors.  Xen 4.17 raises a DPL below 1 to 1 (so a far jump lands in
 * ring 1), refuses call gates whose target is one of its reserved selectors, stores the
 * gates it accepts with DPL 0 so every use traps and is emulated (landing in ring 1),
 * and refuses every other system descriptor (TSS, LDT, task, interrupt and trap gates)
 * and 64-bit code.  update_descriptor only writes the domain's own frames.
 * Using an accepted gate never reaches ring 0 either: Xen emulates the far call, which
 * lands in ring 1 -- also through a gate aimed at the DPL-0 code descriptor as written,
 * since check_descriptor raised that descriptor's DPL to 1.
 * ABI: xen/arch/x86/pv/descriptor-tables.c check_descriptor, pv_set_gdt,
 * do_update_descriptor; pv/emul-gate-op.c; XEN-PV-ABI.md 1.3.
 */
#include "sec.h"

#define SEL_CODE_DPL0   0x0009          /* gdt[1], RPL 1 */
#define SEL_GATE        0x002b          /* gdt[5], RPL 3 */
#define SEL_GATE_RING0  0x003b          /* gdt[7], RPL 3: gate to gdt[1] */

static uint64_t gdt[512] __page_aligned;
static uint32_t gdt_frames[1];

static long update_descriptor(uint32_t index, uint64_t desc)
{
	uint64_t maddr = ((uint64_t)virt_to_mfn(gdt) << PAGE_SHIFT) + index * 8;

	return hc(__HYPERVISOR_update_descriptor, (uint32_t)maddr, (uint32_t)(maddr >> 32),
		  (uint32_t)desc, (uint32_t)(desc >> 32), 0);
}

/* Far jump through gdt[1] (a DPL-0 code descriptor as written), report the CPL. */
static uint32_t far_jump(uint32_t unused)
{
	uint32_t cs;

	(void)unused;
	asm volatile ("ljmp %[sel], $1f\n"
		      "1: movl %%cs, %[cs]\n"
		      "ljmp %[flat], $2f\n"
		      "2:"
		      : [cs] "=r" (cs)
		      : [sel] "i" (SEL_CODE_DPL0), [flat] "i" (FLAT_RING1_CS)
		      : "memory");
	return cs;
}

/* Far call through the call gate gdt[5]; the target returns the CS it ran with. */
static uint32_t gate_call(uint32_t unused)
{
	uint32_t cs;

	(void)unused;
	asm volatile ("lcall %[gate], $0\n"
		      : "=a" (cs) : [gate] "i" (SEL_GATE) : "ecx", "edx", "memory");
	return cs;
}

/* Far call through the gate gdt[7], whose target is the DPL-0 code gdt[1]. */
static uint32_t gate_call_ring0(uint32_t unused)
{
	uint32_t cs;

	(void)unused;
	asm volatile ("lcall %[gate], $0\n"
		      : "=a" (cs) : [gate] "i" (SEL_GATE_RING0) : "ecx", "edx", "memory");
	return cs;
}

void gate_target(void);
asm (".text\n"
     "gate_target:\n"
     "  movl %cs, %eax\n"
     "  lret\n");

void attempt(void)
{
	uint32_t target = (uint32_t)gate_target;

	gdt[1] = 0x00cf9b000000ffffULL;         /* code, DPL 0 */
	gdt[2] = 0x00cf93000000ffffULL;         /* data, DPL 0 */
	gdt_frames[0] = virt_to_mfn(gdt);
	result("remap_gdt", remap(gdt, gdt_frames[0], PTE_RO_FLAGS));
	result("set_gdt", hc(__HYPERVISOR_set_gdt, (uint32_t)gdt_frames, 512, 0, 0, 0));
	value("code_dpl0_high", (uint32_t)(gdt[1] >> 32));
	value("data_dpl0_high", (uint32_t)(gdt[2] >> 32));
	result("update_code_dpl0", update_descriptor(3, 0x00cf9b000000ffffULL));
	value("code_dpl0_updated_high", (uint32_t)(gdt[3] >> 32));
	result("gate_to_xen_cs", update_descriptor(4, 0x0000ec00e0080000ULL));
	result("gate_to_xen_ds", update_descriptor(4, 0x0000ec00e0100000ULL));
	result("gate_to_tss_sel", update_descriptor(4, 0x0000ec00e0400000ULL));
	result("gate_to_flat_cs", update_descriptor(5, ((uint64_t)(target & 0xffff0000) << 32)
				    | 0x0000ec0000000000ULL | ((uint64_t)FLAT_RING1_CS << 16)
				    | (target & 0xffff)));
	value("gate_high", (uint32_t)(gdt[5] >> 32));
	value("gate_low", (uint32_t)gdt[5]);
	result("tss_descriptor", update_descriptor(6, 0x0000890000000067ULL));
	result("ldt_descriptor", update_descriptor(6, 0x0000820000000fffULL));
	result("interrupt_gate", update_descriptor(6, 0x0000ee00e0190000ULL));
	result("trap_gate", update_descriptor(6, 0x0000ef00e0190000ULL));
	result("task_gate", update_descriptor(6, 0x0000e50000000000ULL));
	result("code_64bit", update_descriptor(6, 0x00af9b000000ffffULL));
	result("update_xen_frame", hc(__HYPERVISOR_update_descriptor, m2p_first_mfn() << PAGE_SHIFT,
				      0, 0x0000ffff, 0x00cfb300, 0));
	probe("far_jump_dpl0_code", far_jump, 0);
	probe("call_gate", gate_call, 0);
	result("gate_to_dpl0_code", update_descriptor(7, ((uint64_t)(target & 0xffff0000) << 32)
				       | 0x0000ec0000000000ULL | ((uint64_t)SEL_CODE_DPL0 << 16)
				       | (target & 0xffff)));
	probe("call_gate_ring0", gate_call_ring0, 0);
}
