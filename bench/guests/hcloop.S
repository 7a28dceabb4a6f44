/*
 * hcloop: a minimal 32-bit PAE Xen PV guest for timing one trivial hypercall.
 *
 * Built by bench/run_core.py with gcc at bench time:
 *     gcc -m32 -nostdlib -static -no-pie -DHC_ITERATIONS=<M> [-DHC_STUB] -T hcloop.lds
 *
 * startup_xen calls xen_version(XENVER_version, NULL) HC_ITERATIONS times through the
 * hypercall page, then powers off with sched_op(SCHEDOP_shutdown, {SHUTDOWN_poweroff}).
 * With HC_STUB defined the call goes to hc_stub instead: the same three instructions as
 * a hypercall page stub (mov $17,%eax; int $0x82; ret) with the int replaced by a nop,
 * so the difference between the two builds is the cost of the hypercalls alone.
 *
 * Xen starts us at ring 1 with ESP at the top of a boot stack it allocated
 * (XEN-PV-ABI.md 2.6); that stack is all this guest needs.
 * ABI: xen/include/public/xen.h (hypercall numbers), version.h, sched.h, elfnote.h.
 */
#include "../../guests/include/xen-notes.h"

#define VIRT_BASE                   0xC0000000
#define PADDR_OFFSET                0
#define PAGE_SIZE                   4096
#define HYPERCALL_STUB_SIZE         32

#define __HYPERVISOR_xen_version    17
#define __HYPERVISOR_sched_op       29
#define XENVER_version              0
#define SCHEDOP_shutdown            2
#define SHUTDOWN_poweroff           0


#ifndef HC_ITERATIONS
#error "define HC_ITERATIONS (the number of hypercalls to make)"
#endif

#ifdef HC_STUB
#define HC_TARGET   hc_stub
#else
#define HC_TARGET   hypercall_page + __HYPERVISOR_xen_version * HYPERCALL_STUB_SIZE
#endif

	.section .head.text, "ax", @progbits
	.globl	startup_xen
	.type	startup_xen, @function
startup_xen:
	movl	$HC_ITERATIONS, %esi    /* loop counter: hypercalls preserve ESI */
	.globl	hc_loop
hc_loop:
	movl	$XENVER_version, %ebx
	xorl	%ecx, %ecx              /* arg: NULL */
	call	HC_TARGET
	decl	%esi
	jnz	hc_loop
	.globl	hc_loop_end
hc_loop_end:
	pushl	$SHUTDOWN_poweroff      /* struct sched_shutdown { reason } on the stack */
	movl	%esp, %ecx
	movl	$SCHEDOP_shutdown, %ebx
	call	hypercall_page + __HYPERVISOR_sched_op * HYPERCALL_STUB_SIZE
	/* Shutdown does not return; if it does, spin on it. */
	jmp	hc_loop_end
	.size	startup_xen, . - startup_xen

	.globl	hc_stub
	.type	hc_stub, @function
hc_stub:
	movl	$__HYPERVISOR_xen_version, %eax
	nop                             /* stands in for int $0x82 */
	ret
	.size	hc_stub, . - hc_stub

/* Xen fills this page with 32-byte stubs; int3 until then. */
	.text
	.balign	PAGE_SIZE
	.globl	hypercall_page
	.type	hypercall_page, @function
hypercall_page:
	.fill	PAGE_SIZE, 1, 0xcc
	.size	hypercall_page, PAGE_SIZE

/* Xen ELF notes (guests/include/xen-notes.h). */
	XEN_PV32_NOTES pvdbg-hcloop, startup_xen, VIRT_BASE, PADDR_OFFSET

	.section .note.GNU-stack, "", @progbits
