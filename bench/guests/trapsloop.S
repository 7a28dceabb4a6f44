/*
 * trapsloop: a minimal 32-bit PAE Xen PV guest that repeats one hypervisor path N times,
 * for bench/run_traps.py.  Built with gcc at bench time:
 *     gcc -m32 -nostdlib -static -no-pie -DITERATIONS=<N> -DMODE_<X> -T trapsloop.lds
 *
 * Modes (each paired with a baseline that does everything but the measured part):
 *   MODE_GP / MODE_GP_BASE          mov %cr0,%eax (a #GP Xen emulates) / mov %ebx,%eax
 *   MODE_UPCALL / MODE_SEND_MASKED  EVTCHNOP_send of an IPI to ourselves with events on
 *                                   (upcall, handler, iret hypercall) / with the port
 *                                   masked (the send alone)
 *   MODE_MULTICALL / MODE_MULTICALL0  a multicall of 32 xen_version entries / of none
 * Then sched_op(SCHEDOP_shutdown, {SHUTDOWN_poweroff}).
 * ABI: xen/include/public/xen.h, event_channel.h, callback.h, elfnote.h.
 */
#include "../../guests/include/xen-notes.h"

#define PAGE_SIZE                   4096
#define HYPERCALL(n)                call hypercall_page + (n) * 32
#define HC_multicall                13
#define HC_update_va_mapping        14
#define HC_xen_version              17
#define HC_iret                     23
#define HC_sched_op                 29
#define HC_callback_op              30
#define HC_event_channel_op         32
#define BATCH                       32

#ifndef ITERATIONS
#error "define ITERATIONS"
#endif

	.section .head.text, "ax", @progbits
	.globl	startup_xen
startup_xen:
	movl	36(%esi), %ecx              /* map shared_info (start_info.shared_info) */
	orl	$0x63, %ecx
	xorl	%edx, %edx
	movl	$shinfo, %ebx
	movl	$2, %esi
	HYPERCALL(HC_update_va_mapping)
	movl	$0, %ebx                    /* the event callback */
	movl	$event_cb, %ecx
	HYPERCALL(HC_callback_op)
	movl	$7, %ebx                    /* EVTCHNOP_bind_ipi */
	movl	$ipi, %ecx
	HYPERCALL(HC_event_channel_op)
#ifdef MODE_SEND_MASKED
	movl	ipi_port, %eax
	btsl	%eax, shinfo + 2176
#endif
	movb	$0, shinfo + 1              /* events on */
	movl	$ITERATIONS, %esi
	.globl	loop_start
loop_start:
#if defined(MODE_GP)
	movl	%cr0, %eax
#elif defined(MODE_GP_BASE)
	movl	%ebx, %eax
#elif defined(MODE_UPCALL) || defined(MODE_SEND_MASKED)
	movl	$4, %ebx                    /* EVTCHNOP_send */
	movl	$ipi_port, %ecx
	HYPERCALL(HC_event_channel_op)
#elif defined(MODE_MULTICALL)
	movl	$calls, %ebx
	movl	$BATCH, %ecx
	HYPERCALL(HC_multicall)
#elif defined(MODE_MULTICALL0)
	movl	$calls, %ebx
	xorl	%ecx, %ecx
	HYPERCALL(HC_multicall)
#else
#error "define a MODE_"
#endif
	decl	%esi
	jnz	loop_start
	.globl	loop_end
loop_end:
	movl	$2, %ebx
	movl	$poweroff, %ecx
	HYPERCALL(HC_sched_op)
	jmp	loop_end

upcall:
	pushl	%eax
	movb	$0, shinfo                  /* upcall_pending = 0 */
	movl	$0, shinfo + 4              /* pending_sel = 0 */
	movl	$0, shinfo + 2048           /* acknowledge */
	incl	upcalls
	popl	%eax
	jmp	hypercall_page + HC_iret * 32

	.text
	.balign	PAGE_SIZE
	.globl	hypercall_page
hypercall_page:
	.fill	PAGE_SIZE, 1, 0xcc

	.data
	.balign	4
event_cb:  .word 0, 0
	   .long 0xe019, upcall
ipi:	   .long 0
ipi_port:  .long 0
	.globl	upcalls
upcalls:   .long 0
poweroff:  .long 0
calls:
	.rept	BATCH
	.long	HC_xen_version, 0, 0, 0, 0, 0, 0, 0
	.endr
	.balign	PAGE_SIZE
shinfo:	   .fill PAGE_SIZE, 1, 0

/* Xen ELF notes (guests/include/xen-notes.h). */
	XEN_PV32_NOTES trapsloop, startup_xen, 0xC0000000, 0

	.section .note.GNU-stack, "", @progbits
