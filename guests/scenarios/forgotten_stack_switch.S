/*
 * Scenario: a forgotten stack_switch.  Two user tasks each have their own kernel stack;
 * task 1 makes a system call (int $0x80) that parks it on kernel stack 1 and starts task
 * 2 -- but the kernel never tells Xen about kernel stack 2 (no stack_switch).  Task 2's
 * system call frame therefore lands on kernel stack 1 (Xen bounces ring-3 traps to
 * kernel_ss:kernel_sp) and its handler's pushes overwrite task 1's parked context.
 * Switching back to task 1 returns into task 2's register values: a wild jump, a #PF
 * with no handler, a crash.  pvdbg's trace shows task 2's int 0x80 landing on the stack
 * set by the stack_switch made for task 1.
 *
 * Built by tests/guestbuild.py build_asm_guest; the test maps the user pages with U.
 * ABI: xen/arch/x86/pv/misc-hypercalls.c do_stack_switch; XEN-PV-ABI.md 3.7, 5.1.
 */
#define HYPERCALL(n) call hypercall_page + (n) * 32
#define HC_set_trap_table 0
#define HC_stack_switch 3
#define HC_iret 23
#define UCS 0xe02b
#define UDS 0xe033

	.globl	_start
_start:
	movl	$traps, %ebx
	HYPERCALL(HC_set_trap_table)
	movl	$0xe021, %ebx               /* task 1 runs: its kernel stack is kstack1 */
	movl	$kstack1_top, %ecx
	HYPERCALL(HC_stack_switch)
	pushl	$UDS                        /* enter task 1 in ring 3 */
	pushl	$ustack1_top
	pushl	$0x202
	pushl	$UCS
	pushl	$task1
	jmp	hypercall_page + HC_iret * 32

/* int $0x80: EAX 1 = "switch to the other task". */
syscall:
	pushal                              /* the calling task's registers */
	call	do_syscall
	popal
	iret
do_syscall:
	cmpl	$2, current
	je	back_to_task1
	pushl	$task1_resumes              /* park task 1: where it resumes, on kstack1 */
	movl	%esp, task1_sp
	movl	$2, current
	movl	$kstack2_top, %esp          /* run task 2 on kernel stack 2 ... */
	/* BUG: no stack_switch(__KERNEL_DS, kstack2_top) here */
	pushl	$UDS
	pushl	$ustack2_top
	pushl	$0x202
	pushl	$UCS
	pushl	$task2
	jmp	hypercall_page + HC_iret * 32
task1_resumes:
	ret                                 /* into syscall: popal, iret to task 1 */
back_to_task1:
	pushl	%ebx                        /* task 2's handler saves a register: on kstack1! */
	movl	task1_sp, %esp
	ret                                 /* task 1's resume address was overwritten */

	.balign	4096
task1:
	movl	$1, %eax
	int	$0x80                       /* switch to task 2 */
	jmp	task1
task2:
	movl	$0x2badd00d, %ebx
	movl	$0x2badd00d, %ecx
	movl	$0x2badd00d, %edx
	movl	$0x2badd00d, %esi
	movl	$0x2badd00d, %edi
	movl	$0x2badd00d, %ebp
	movl	$1, %eax
	int	$0x80                       /* switch back to task 1 */
	jmp	task2
	.balign	4096

	.data
	.balign	4
traps:	.byte	0x80, 3
	.word	0xe019
	.long	syscall
	.long	0, 0
current:   .long 1
task1_sp:  .long 0
	.balign	4096
ustack1:   .fill 1024, 4, 0
ustack1_top:
ustack2:   .fill 1024, 4, 0
ustack2_top:
kstack1:   .fill 1024, 4, 0
kstack1_top:
kstack2:   .fill 1024, 4, 0
kstack2_top:
