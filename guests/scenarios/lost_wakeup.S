/*
 * Scenario: a lost wakeup.  The kernel masks its event channel port (disable_irq), the
 * event arrives while masked (Xen sets only the port's pending bit), then the kernel
 * "unmasks" by clearing the mask bit itself -- without the pending re-check that
 * EVTCHNOP_unmask or Linux's unmask_evtchn do (set the selector bit and
 * evtchn_upcall_pending when the port is pending) -- and blocks waiting for the handler.
 * Nothing re-raises the event and no timer is bound: on Xen the vcpu sleeps forever.
 * pvdbg stops with "blocked" and explains which port is pending and why no upcall came.
 *
 * Built by tests/guestbuild.py build_asm_guest (which adds the Xen notes and the
 * hypercall page).  ABI: xen/common/event_2l.c evtchn_2l_unmask; XEN-PV-ABI.md 5.5.
 */
#define HYPERCALL(n) call hypercall_page + (n) * 32
#define HC_sched_op 29
#define HC_callback_op 30
#define HC_event_channel_op 32
#define HC_update_va_mapping 14

	.globl	_start
_start:
	movl	36(%esi), %ecx              /* start_info.shared_info (machine address) */
	orl	$0x63, %ecx
	xorl	%edx, %edx
	movl	$shinfo, %ebx
	movl	$2, %esi                    /* UVMF_INVLPG */
	HYPERCALL(HC_update_va_mapping)
	movl	$0, %ebx                    /* CALLBACKOP_register: the event callback */
	movl	$event_cb, %ecx
	HYPERCALL(HC_callback_op)
	movl	$7, %ebx                    /* EVTCHNOP_bind_ipi to vcpu 0 */
	movl	$ipi, %ecx
	HYPERCALL(HC_event_channel_op)
	movl	ipi_port, %eax
	btsl	%eax, shinfo + 2176         /* disable_irq: mask the port */
	movb	$0, shinfo + 1              /* local_irq_enable (events on) */
	movl	$4, %ebx                    /* EVTCHNOP_send: the event arrives while masked */
	movl	$ipi_port, %ecx
	HYPERCALL(HC_event_channel_op)
enable_irq_buggy:
	movl	ipi_port, %eax
	btrl	%eax, shinfo + 2176         /* BUG: unmask without re-raising the pending event */
wait_for_event:
	cmpl	$0, handled
	jne	done
	movl	$1, %ebx                    /* SCHEDOP_block: wait for the upcall */
	xorl	%ecx, %ecx
	HYPERCALL(HC_sched_op)
	jmp	wait_for_event
done:
	movl	$2, %ebx                    /* never reached */
	movl	$poweroff, %ecx
	HYPERCALL(HC_sched_op)

upcall:
	movl	$1, handled
	movb	$0, shinfo
	jmp	hypercall_page + 23 * 32    /* iret hypercall */

	.data
	.balign	4
event_cb:  .word 0, 0
	   .long 0xe019, upcall
ipi:	   .long 0                     /* vcpu */
ipi_port:  .long 0
handled:   .long 0
poweroff:  .long 0
	.balign	4096
shinfo:	   .fill 4096, 1, 0
