/*
 * bench/run_gdb.py's guest for QEMU (qemu-system-i386 -kernel): a multiboot kernel
 * running loop.S. The boot loader enters multiboot_entry in 32-bit protected mode with
 * paging off, flat segments and IF=0 (Multiboot 0.6.96, "Machine state"); the kernel
 * points EBX at bench_data and ESP at its own stack and enters the loop.
 */
#define MULTIBOOT_MAGIC   0x1BADB002
#define MULTIBOOT_FLAGS   0

	.section .multiboot, "a", @progbits
	.balign	4
	.long	MULTIBOOT_MAGIC
	.long	MULTIBOOT_FLAGS
	.long	-(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

	.section .head.text, "ax", @progbits
	.globl	multiboot_entry
multiboot_entry:
	movl	$bench_stack_top, %esp
	movl	$bench_data, %ebx
	xorl	%eax, %eax
	jmp	bench_start

	.text
	.balign	4096
	/* The page the PV build gives to its hypercall page, so loop.S lands at the same
	   offset from the image start in both builds. */
	.fill	4096, 1, 0xcc

#include "loop.S"

	.section .note.GNU-stack, "", @progbits
