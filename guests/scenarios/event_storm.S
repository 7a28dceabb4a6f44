/*
 * Scenario: an event storm with the mask left set.  The upcall handler returns with a
 * native `iret`, which restores EFLAGS but not evtchn_upcall_mask (only the iret
 * hypercall, or an explicit unmask, does that): after the first upcall the vcpu keeps
 * events masked.  The kernel then sends itself a storm of IPIs while it waits for the
 * handler to count them; Xen marks them pending and never delivers.  The guest's own
 * watchdog gives up and crashes the domain.  pvdbg's trace shows one upcall, every later
 * send noting that the vcpu's upcall_mask has been 1 since that upcall.
 *
 * Built by tests/guestbuild.py build_asm_guest.  ABI: xen/arch/x86/x86_64/compat/entry.S
 * compat_test_guest_events; xen/arch/x86/pv/iret.c; XEN-PV-ABI.md 3.16, 5.5.
 */
#define HYPERCALL(n) call hypercall_page + (n) * 32
#define HC_sched_op 29
#define HC_callback_op 30
#define HC_event_channel_op 32
#define HC_update_va_mapping 14
#define STORM 64

	.globl	_start
_start:
	movl	36(%esi), %ecx
	orl	$0x63, %ecx
	xorl	%edx, %edx
	movl	$shinfo, %ebx
	movl	$2, %esi
	HYPERCALL(HC_update_va_mapping)
	movl	$0, %ebx
	movl	$event_cb, %ecx
	HYPERCALL(HC_callback_op)
	movl	$7, %ebx                    /* EVTCHNOP_bind_ipi */
	movl	$ipi, %ecx
	HYPERCALL(HC_event_channel_op)
	movb	$0, shinfo + 1              /* events on */
	xorl	%edi, %edi
storm:
	movl	$4, %ebx                    /* EVTCHNOP_send to ourselves */
	movl	$ipi_port, %ecx
	HYPERCALL(HC_event_channel_op)
	incl	%edi
	cmpl	$STORM, %edi
	jb	storm
	cmpl	$STORM, upcalls             /* every IPI should have been handled */
	je	ok
	movl	$2, %ebx                    /* watchdog: SCHEDOP_shutdown(crash) */
	movl	$crash, %ecx
	HYPERCALL(HC_sched_op)
ok:
	movl	$2, %ebx
	movl	$poweroff, %ecx
	HYPERCALL(HC_sched_op)

upcall:
	incl	upcalls
	movb	$0, shinfo                  /* upcall_pending = 0 */
	movl	$0, shinfo + 4              /* pending_sel = 0 */
	movl	$0, shinfo + 2048           /* acknowledge the ports */
	iret                                /* BUG: upcall_mask stays 1 */

	.data
	.balign	4
event_cb:  .word 0, 0
	   .long 0xe019, upcall
ipi:	   .long 0
ipi_port:  .long 0
upcalls:   .long 0
crash:	   .long 3
poweroff:  .long 0
	.balign	4096
shinfo:	   .fill 4096, 1, 0
