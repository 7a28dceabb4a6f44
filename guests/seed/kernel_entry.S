/*
 * Kernel-phase entry points (Linux arch/x86/entry/entry_32.S, xen-asm_32.S): the
 * exception stubs of the virtual trap table, int $0x80, the event upcall
 * (hypervisor_callback), the failsafe callback, the stack switch between kernel tasks,
 * and the ring-3 user task.
 *
 * Frames come from Xen's bounce-frame builder: [error code] EIP, CS|saved_mask<<16,
 * EFLAGS, and ESP, SS when the guest was in ring 3; the failsafe frame has DS, ES, FS,
 * GS below that.  Upcalls and the failsafe callback return with the iret hypercall,
 * which also restores the event mask from the frame's EFLAGS.IF.
 * ABI: XEN-PV-ABI.md 3.16 (iret), 5.1-5.3.
 */
#include <page.h>
#include <xen/xen.h>

	.cfi_sections .debug_frame

/* -------------------------------------------------------------- exceptions */

/* Exceptions without an error code push a 0 so every frame looks the same. */
#define TRAP_NOCODE(vec)           \
	.globl	xen_trap_##vec;    \
xen_trap_##vec:                    \
	pushl	$0;                \
	pushl	$vec;              \
	jmp	common_trap

#define TRAP_CODE(vec)             \
	.globl	xen_trap_##vec;    \
xen_trap_##vec:                    \
	pushl	$vec;              \
	jmp	common_trap

	.text
	TRAP_NOCODE(0)
	TRAP_NOCODE(1)
	TRAP_NOCODE(3)
	TRAP_NOCODE(4)
	TRAP_NOCODE(5)
	TRAP_NOCODE(6)
	TRAP_NOCODE(7)
	TRAP_CODE(8)
	TRAP_NOCODE(9)
	TRAP_CODE(10)
	TRAP_CODE(11)
	TRAP_CODE(12)
	TRAP_CODE(13)
	TRAP_CODE(14)
	TRAP_NOCODE(16)
	TRAP_CODE(17)
	TRAP_NOCODE(18)
	TRAP_NOCODE(19)

/* Stack: vector, error code, EIP, CS, EFLAGS, ... -> do_trap(struct trap_regs *). */
common_trap:
	pushal
	pushl	%esp
	call	do_trap
	addl	$4, %esp
	popal
	addl	$8, %esp
	iret

/* --------------------------------------------------------------- int $0x80 */

/* System call from the ring-3 task: EAX number, EBX/ECX arguments, result in EAX. */
	.globl	xen_syscall_entry
	.type	xen_syscall_entry, @function
xen_syscall_entry:
	pushal
	pushl	%esp
	call	do_syscall
	addl	$4, %esp
	popal
	iret
	.size	xen_syscall_entry, . - xen_syscall_entry

/* ----------------------------------------------------------- event upcall */

	.globl	xen_hypervisor_callback
	.type	xen_hypervisor_callback, @function
xen_hypervisor_callback:
	pushal
	call	xen_evtchn_do_upcall
	popal
	jmp	xen_hypercall_iret      /* pushes EAX, restores the mask from EFLAGS.IF */
	.size	xen_hypervisor_callback, . - xen_hypervisor_callback

/* ------------------------------------------------------ failsafe callback */

/*
 * Xen could not load a segment register for us (here: the iret to ring 3 faulted on
 * SS).  The frame is DS, ES, FS, GS, EIP, CS, EFLAGS, ESP, SS; xen_failsafe_fixup
 * reports it and repairs the saved SS, then the iret hypercall retries the return.
 */
	.globl	xen_failsafe_callback
	.type	xen_failsafe_callback, @function
xen_failsafe_callback:
	pushal
	leal	32(%esp), %eax
	pushl	%eax
	call	xen_failsafe_fixup
	addl	$4, %esp
	popal
	addl	$16, %esp               /* DS, ES, FS, GS: the kernel's own, keep them */
	jmp	xen_hypercall_iret
	.size	xen_failsafe_callback, . - xen_failsafe_callback

/* ------------------------------------------------------ kernel task switch */

/* switch_stacks(unsigned long *save_sp, unsigned long next_sp): callee-saved registers
 * stay on the old stack; a new task's stack holds the same four words and an address
 * to return to. */
	.globl	switch_stacks
	.type	switch_stacks, @function
switch_stacks:
	movl	4(%esp), %eax
	movl	8(%esp), %edx
	pushl	%ebp
	pushl	%ebx
	pushl	%esi
	pushl	%edi
	movl	%esp, (%eax)
	movl	%edx, %esp
	popl	%edi
	popl	%esi
	popl	%ebx
	popl	%ebp
	ret
	.size	switch_stacks, . - switch_stacks

/* ------------------------------------------------------ entering ring 3 */

/*
 * int enter_user(eip, esp, ss): return to ring 3 through the iret hypercall; comes back
 * (with the exit code) when the task makes the exit system call (leave_user).
 */
	.globl	enter_user
	.type	enter_user, @function
enter_user:
	pushl	%ebp
	pushl	%ebx
	pushl	%esi
	pushl	%edi
	movl	%esp, user_return_sp
	movl	20(%esp), %ecx          /* eip */
	movl	24(%esp), %edx          /* esp */
	movl	28(%esp), %ebx          /* ss */
	pushl	%ebx                    /* SS */
	pushl	%edx                    /* ESP */
	pushl	$0x202                  /* EFLAGS: IF, so events are enabled in user mode */
	pushl	$FLAT_RING3_CS
	pushl	%ecx                    /* EIP */
	xorl	%eax, %eax
	jmp	xen_hypercall_iret
	.size	enter_user, . - enter_user

/* leave_user(code): back on the stack enter_user was called on, returning `code`. */
	.globl	leave_user
	.type	leave_user, @function
leave_user:
	movl	4(%esp), %eax
	movl	user_return_sp, %esp
	popl	%edi
	popl	%esi
	popl	%ebx
	popl	%ebp
	ret
	.size	leave_user, . - leave_user

	.bss
	.balign	4
user_return_sp:
	.skip	4

/* --------------------------------------------------------- the user task */

/* Ring-3 code and data live on their own pages, mapped with _PAGE_USER by the kernel. */
#define SYS_write  4
#define SYS_exit   1

	.section .text.user, "ax", @progbits
	.balign	PAGE_SIZE
	.globl	user_task
	.type	user_task, @function
user_task:
	movl	$SYS_write, %eax
	movl	$user_message, %ebx
	movl	$user_message_len, %ecx
	int	$0x80
	movl	$SYS_exit, %eax
	movl	$7, %ebx
	int	$0x80
1:	jmp	1b                      /* exit never returns */
	.size	user_task, . - user_task
	.balign	PAGE_SIZE

	.section .data.user, "aw", @progbits
	.balign	PAGE_SIZE
	.globl	user_page
user_page:
user_message:
	.ascii	"hello from ring 3 via int $0x80"
	.set	user_message_len, . - user_message
	.balign	PAGE_SIZE

	.section .note.GNU-stack, "", @progbits
