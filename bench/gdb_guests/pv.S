/*
 * bench/run_gdb.py's guest for pvdbg: a 32-bit PAE Xen PV guest running loop.S.
 *
 * Built at bench time: gcc -m32 -nostdlib -static -no-pie -T pv.lds pv.S
 * Xen enters startup_xen at ring 1 with events masked (XEN-PV-ABI.md 2.6); the guest
 * points EBX at bench_data and ESP at its own stack and enters the loop. It makes no
 * hypercall. ABI: xen/include/public/elfnote.h (guests/include/xen-notes.h).
 */
#include "../../guests/include/xen-notes.h"

#define VIRT_BASE                   0xC0000000
#define PADDR_OFFSET                0

	.section .head.text, "ax", @progbits
	.globl	startup_xen
startup_xen:
	movl	$bench_stack_top, %esp
	movl	$bench_data, %ebx
	xorl	%eax, %eax
	jmp	bench_start

	.text
	.balign	4096
	.globl	hypercall_page
hypercall_page:
	.fill	4096, 1, 0xcc

#include "loop.S"

/* Xen ELF notes (guests/include/xen-notes.h). */
	XEN_PV32_NOTES pvdbg-gdbbench, startup_xen, VIRT_BASE, PADDR_OFFSET

	.section .note.GNU-stack, "", @progbits
