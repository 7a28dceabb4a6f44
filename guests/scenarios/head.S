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

/* Xen ELF notes */
#include <xen-notes.h>
	XEN_PV32_NOTES pvdbg-scenario, _start, VIRT_BASE, PADDR_OFFSET, "1", PVDBG_GUEST_FEATURES

	.section .note.GNU-stack, "", @progbits
