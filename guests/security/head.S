/*
 * Entry, hypercall page, stack, trap entries and setjmp/longjmp shared by the security
 * regression guests.  Every exception vector enters sec_trap(vector, frame) with the
 * bounce frame Xen wrote; sec_trap() records the fault and long-jumps back to the
 * attempt that expected it (runtime.c).
 */
#include <page.h>
#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/sched.h>
#include <setjmp.h>

	.section .head.text, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	cld
	movl	%esi, xen_start_info
	movl	$(sec_stack + THREAD_SIZE), %esp
	xorl	%ebp, %ebp
	call	sec_boot
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

/* int sec_setjmp(struct sec_jmp *), void sec_longjmp(struct sec_jmp *, int). */
	GUEST_SETJMP sec

	.macro	TRAP_ENTRY vec
trap_entry_\vec:
	pushl	$\vec
	jmp	trap_common
	.endm

	.irp	vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	TRAP_ENTRY \vec
	.endr

trap_common:
	movl	$FLAT_RING1_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	cld
	movl	%esp, %eax
	pushl	%eax
	pushl	(%eax)
	call	sec_trap
	ud2

	.section .rodata
	.balign	4
	.globl	trap_entries
trap_entries:
	.irp	vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long	trap_entry_\vec
	.endr

	.bss
	.balign	THREAD_SIZE
sec_stack:
	.skip	THREAD_SIZE

/* Xen ELF notes */
#include <xen-notes.h>
	XEN_PV32_NOTES pvdbg-security, _start, VIRT_BASE, PADDR_OFFSET, "1", PVDBG_GUEST_FEATURES

	.section .note.GNU-stack, "", @progbits
