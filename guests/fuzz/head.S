/*
 * Entry point, hypercall page, stacks, trap and callback entries, a raw hypercall, the
 * iret hypercall with a forged frame, and setjmp/longjmp for the fuzz guest.
 *
 * Xen starts a PV kernel at ring 1 with ESI = VA of start_info (XEN-PV-ABI.md 2.6).
 * Every trap vector and the event, failsafe and NMI callbacks enter fuzz_trap() with the
 * bounce frame Xen wrote (compat_create_bounce_frame); fuzz_trap() never returns: it
 * long-jumps back to the fuzz loop, which goes on with the next call.
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
	movl	$(fuzz_stack + THREAD_SIZE), %esp
	xorl	%ebp, %ebp
	call	fuzz_main
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

/*
 * long fuzz_hypercall(const uint32_t regs[6]): int $0x82 with EAX = regs[0] (any number)
 * and EBX, ECX, EDX, ESI, EDI = regs[1..5]; EBP is left as it is (it is the sixth
 * argument only for multicall entries).  Returns EAX.
 */
	.globl	fuzz_hypercall
	.type	fuzz_hypercall, @function
fuzz_hypercall:
	pushl	%ebx
	pushl	%esi
	pushl	%edi
	movl	16(%esp), %eax
	movl	4(%eax), %ebx
	movl	8(%eax), %ecx
	movl	12(%eax), %edx
	movl	16(%eax), %esi
	movl	20(%eax), %edi
	movl	(%eax), %eax
	int	$0x82
	popl	%edi
	popl	%esi
	popl	%ebx
	ret
	.size	fuzz_hypercall, . - fuzz_hypercall

/*
 * void fuzz_iret(const uint32_t frame[6]): HYPERVISOR_iret with the frame
 * EAX, EIP, CS, EFLAGS, ESP, SS (the last two are used when CS is not ring 1).  The
 * stub in the hypercall page pushes EAX itself.  Control never comes back here: the
 * forged frame lands at fuzz_iret_landing or in a trap entry.
 */
	.globl	fuzz_iret
	.type	fuzz_iret, @function
fuzz_iret:
	movl	4(%esp), %eax
	pushl	20(%eax)                /* SS */
	pushl	16(%eax)                /* ESP */
	pushl	12(%eax)                /* EFLAGS */
	pushl	8(%eax)                 /* CS */
	pushl	4(%eax)                 /* EIP */
	movl	(%eax), %eax
	jmp	hypercall_page + __HYPERVISOR_iret * HYPERCALL_STUB_SIZE
	.size	fuzz_iret, . - fuzz_iret

	.globl	fuzz_iret_landing
	.type	fuzz_iret_landing, @function
fuzz_iret_landing:
	pushl	$0x200                  /* "the forged iret returned normally" */
	jmp	trap_common
	.size	fuzz_iret_landing, . - fuzz_iret_landing

/* int fuzz_setjmp(struct fuzz_jmp *), void fuzz_longjmp(struct fuzz_jmp *, int). */
	GUEST_SETJMP fuzz

/*
 * Trap entries: push the vector (0x100 event, 0x101 failsafe, 0x102 NMI, 0x200 iret
 * landing) and enter fuzz_trap(vector, frame) with the data segments reloaded (a forged
 * iret may have left odd selectors in DS and ES).
 */
	.macro	TRAP_ENTRY vec
	.globl	trap_entry_\vec
trap_entry_\vec:
	pushl	$\vec
	jmp	trap_common
	.endm

	.irp	vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	TRAP_ENTRY \vec
	.endr
	TRAP_ENTRY 0x100
	TRAP_ENTRY 0x101
	TRAP_ENTRY 0x102

	.section .rodata
	.balign	4
	.globl	trap_entries
trap_entries:                           /* the entry of each exception vector */
	.irp	vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long	trap_entry_\vec
	.endr
	.text

trap_common:
	movl	$FLAT_RING1_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	cld
	movl	%esp, %eax
	pushl	%eax                    /* frame: vector, then what Xen pushed */
	pushl	(%eax)                  /* vector */
	call	fuzz_trap
	ud2

	.bss
	.balign	THREAD_SIZE
	.globl	fuzz_stack
fuzz_stack:
	.skip	THREAD_SIZE
	.balign	THREAD_SIZE
	.globl	fuzz_kernel_stack
fuzz_kernel_stack:                      /* stack_switch: entries from ring 3 */
	.skip	THREAD_SIZE

/* Xen ELF notes */
#include <xen-notes.h>
	XEN_PV32_NOTES pvdbg-fuzz, _start, VIRT_BASE, PADDR_OFFSET, "1", PVDBG_GUEST_FEATURES

	.section .note.GNU-stack, "", @progbits
