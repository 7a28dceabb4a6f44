/*
 * bench/run_gdb.py's guest for pvdbg: a 32-bit PAE Xen PV guest running loop.S.
 *
 * Built at bench time: gcc -m32 -nostdlib -static -no-pie -T pv.lds pv.S
 * Xen enters startup_xen at ring 1 with events masked (XEN-PV-ABI.md 2.6); the guest
 * points EBX at bench_data and ESP at its own stack and enters the loop. It makes no
 * hypercall. ABI: xen/include/public/elfnote.h (the notes below).
 */
#define VIRT_BASE                   0xC0000000
#define PADDR_OFFSET                0
#define XEN_ELFNOTE_ENTRY           1
#define XEN_ELFNOTE_HYPERCALL_PAGE  2
#define XEN_ELFNOTE_VIRT_BASE       3
#define XEN_ELFNOTE_PADDR_OFFSET    4
#define XEN_ELFNOTE_XEN_VERSION     5
#define XEN_ELFNOTE_GUEST_OS        6
#define XEN_ELFNOTE_LOADER          8
#define XEN_ELFNOTE_PAE_MODE        9

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

/* One Xen note per field: namesz, descsz, type, "Xen\0", desc (4-byte aligned). */
#define XEN_ELFNOTE(type, desc)                                                    \
	.balign	4;                                                                 \
	.long	2f - 1f;                                                           \
	.long	4f - 3f;                                                           \
	.long	type;                                                              \
1:	.asciz	"Xen";                                                             \
2:	.balign	4;                                                                 \
3:	desc;                                                                      \
4:	.balign	4

	.section .note.Xen, "a", @note
	XEN_ELFNOTE(XEN_ELFNOTE_GUEST_OS,       .asciz "pvdbg-gdbbench")
	XEN_ELFNOTE(XEN_ELFNOTE_XEN_VERSION,    .asciz "xen-3.0")
	XEN_ELFNOTE(XEN_ELFNOTE_VIRT_BASE,      .long VIRT_BASE)
	XEN_ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET,   .long PADDR_OFFSET)
	XEN_ELFNOTE(XEN_ELFNOTE_ENTRY,          .long startup_xen)
	XEN_ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .long hypercall_page)
	XEN_ELFNOTE(XEN_ELFNOTE_LOADER,         .asciz "generic")
	XEN_ELFNOTE(XEN_ELFNOTE_PAE_MODE,       .asciz "yes")

	.section .note.GNU-stack, "", @progbits
