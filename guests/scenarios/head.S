/*
 * Entry point, hypercall page, stack and Xen notes shared by the scenario guests.
 * Xen starts a PV kernel at ring 1 with ESI = VA of start_info (XEN-PV-ABI.md 2.6).
 * scenario_main() commits its bug; if it ever returns, the domain powers off.
 */
#include <page.h>
#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/sched.h>

	.section .head.text, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	cld
	movl	%esi, xen_start_info
	movl	$(scenario_stack + THREAD_SIZE), %esp
	xorl	%ebp, %ebp
	call	scenario_main
	pushl	$SHUTDOWN_poweroff
	call	xen_reboot
	.size	_start, . - _start

	.text
	.balign	PAGE_SIZE
	.globl	hypercall_page
	.type	hypercall_page, @function
hypercall_page:
	.fill	PAGE_SIZE, 1, 0xcc
	.size	hypercall_page, PAGE_SIZE

	.bss
	.balign	THREAD_SIZE
scenario_stack:
	.skip	THREAD_SIZE

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
	XEN_ELFNOTE(XEN_ELFNOTE_GUEST_OS,       .asciz "pvdbg-scenario")
	XEN_ELFNOTE(XEN_ELFNOTE_GUEST_VERSION,  .asciz "1")
	XEN_ELFNOTE(XEN_ELFNOTE_XEN_VERSION,    .asciz "xen-3.0")
	XEN_ELFNOTE(XEN_ELFNOTE_VIRT_BASE,      .long VIRT_BASE)
	XEN_ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET,   .long PADDR_OFFSET)
	XEN_ELFNOTE(XEN_ELFNOTE_ENTRY,          .long _start)
	XEN_ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .long hypercall_page)
	XEN_ELFNOTE(XEN_ELFNOTE_FEATURES,       .asciz "!writable_page_tables|pae_pgdir_above_4gb")
	XEN_ELFNOTE(XEN_ELFNOTE_PAE_MODE,       .asciz "yes")
	XEN_ELFNOTE(XEN_ELFNOTE_LOADER,         .asciz "generic")

	.section .note.GNU-stack, "", @progbits
