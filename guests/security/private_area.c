/*
 * pvdbg's private area (0xffe00000 and up: the GDT and LDT windows, Xen's trampolines,
 * the TSS and Xen's stack) seen from the guest kernel in ring 1.  On Xen 4.17 a 32-bit
 * guest has nothing of Xen mapped there: every access is a not-present #PF at the
 * address, and jumping onto what is pvdbg's trampoline `iret` is an instruction fetch
 * that faults -- it must never act as an iret.
 * Known limit of pvdbg (docs in README.md): the CPU reads descriptors through the GDT
 * window, the emulated CPU (Unicorn 2.1.4) enforces no segment limits and paging cannot
 * tell ring 1 from ring 0, so a ring-1 read of the GDT window still succeeds; the rest
 * of the area (trampolines, TSS, Xen's stack) is unmapped while guest code runs in
 * ring 1, and writes and instruction fetches fault everywhere, as on Xen.
 * ABI: xen/arch/x86/x86_64/mm.c (compat hole: the M2P ends at 0xffe00000);
 * xen/arch/x86/traps.c do_page_fault; XEN-PV-ABI.md 1.1.
 */
#include "sec.h"

#define AREA            0xffe00000u
#define TRAMPOLINE      0xfff00000u     /* pvdbg's trampoline page: its iret */
#define TSS_PAGE        0xfff01000u

static uint32_t area_read(uint32_t va)
{
	return *(volatile uint32_t *)va;
}

static uint32_t area_write(uint32_t va)
{
	*(volatile uint32_t *)va = 0;
	return 0;
}

static uint32_t area_jump(uint32_t va)
{
	asm volatile ("pushl $0\n pushl $0\n pushl $0\n"
		      "call *%0\n"
		      "addl $12, %%esp" : : "r" (va) : "memory");
	return 0;
}

void attempt(void)
{
	probe("write_gdt_window", area_write, AREA);
	probe("write_trampoline", area_write, TRAMPOLINE);
	probe("jump_trampoline_iret", area_jump, TRAMPOLINE);
	probe("jump_area", area_jump, AREA + 0x100);
	probe("read_gdt_window", area_read, AREA);
	probe("read_tss", area_read, TSS_PAGE);
}
