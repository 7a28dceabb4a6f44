/*
 * Entry point, hypercall page, init stack and Xen ELF notes of the seed kernel.
 * Boot flow after Linux v5.8 arch/x86/xen/xen-head.S (startup_xen).
 *
 * Xen starts us (XEN-PV-ABI.md 2.6) at ring 1 with CS 0xe019, DS/ES/SS 0xe021,
 * ESI = VA of start_info, ESP = top of a one-page boot stack, event upcalls masked.
 */
#include <page.h>
#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/sched.h>

	.cfi_sections .debug_frame

/* ------------------------------------------------------------------ entry */

	.section .head.text, "ax", @progbits
	.globl	startup_xen
	.type	startup_xen, @function
startup_xen:
	.cfi_startproc
	.cfi_undefined eip              /* outermost frame: debuggers stop unwinding here */
	cld
	movl	%esi, xen_start_info
	/* Leave Xen's boot stack for our own, then build a terminating frame on it. */
	movl	$(init_thread_union + THREAD_SIZE), %esp
	xorl	%ebp, %ebp
	subl	$12, %esp               /* keep ESP 16-byte aligned at the call below */
	pushl	$0                      /* fake return address */
	call	xen_start_kernel

	/* xen_start_kernel never returns; if it does, crash the domain for good. */
.Lcrash:
	pushl	$SHUTDOWN_crash         /* struct sched_shutdown on the stack */
	movl	%esp, %ecx
	movl	$SCHEDOP_shutdown, %ebx
	call	hypercall_page + __HYPERVISOR_sched_op * HYPERCALL_STUB_SIZE
	addl	$4, %esp
	jmp	.Lcrash
	.cfi_endproc
	.size	startup_xen, . - startup_xen

/* ---------------------------------------------------------- hypercall page */

/*
 * Xen overwrites this page with 128 stubs of 32 bytes (stub n: mov $n,%eax; int $0x82;
 * ret). Until then it holds int3, so a call through an unfilled page traps at once.
 * Each stub used by the kernel also gets a symbol, so backtraces and disassembly name it.
 */
	.text
	.balign	PAGE_SIZE
	.globl	hypercall_page
	.type	hypercall_page, @function
hypercall_page:
	.fill	PAGE_SIZE, 1, 0xcc
	.size	hypercall_page, PAGE_SIZE

#define HYPERCALL_STUB(name)                                                       \
	.globl	xen_hypercall_##name;                                              \
	.type	xen_hypercall_##name, @function;                                   \
	.set	xen_hypercall_##name, hypercall_page + __HYPERVISOR_##name * HYPERCALL_STUB_SIZE; \
	.size	xen_hypercall_##name, HYPERCALL_STUB_SIZE

	HYPERCALL_STUB(set_trap_table)
	HYPERCALL_STUB(mmu_update)
	HYPERCALL_STUB(set_gdt)
	HYPERCALL_STUB(stack_switch)
	HYPERCALL_STUB(set_callbacks)
	HYPERCALL_STUB(fpu_taskswitch)
	HYPERCALL_STUB(set_debugreg)
	HYPERCALL_STUB(get_debugreg)
	HYPERCALL_STUB(update_descriptor)
	HYPERCALL_STUB(memory_op)
	HYPERCALL_STUB(multicall)
	HYPERCALL_STUB(update_va_mapping)
	HYPERCALL_STUB(set_timer_op)
	HYPERCALL_STUB(xen_version)
	HYPERCALL_STUB(console_io)
	HYPERCALL_STUB(grant_table_op)
	HYPERCALL_STUB(vm_assist)
	HYPERCALL_STUB(iret)
	HYPERCALL_STUB(vcpu_op)
	HYPERCALL_STUB(mmuext_op)
	HYPERCALL_STUB(nmi_op)
	HYPERCALL_STUB(sched_op)
	HYPERCALL_STUB(callback_op)
	HYPERCALL_STUB(event_channel_op)
	HYPERCALL_STUB(physdev_op)

/* -------------------------------------------------------------- init stack */

/* The boot CPU's kernel stack, like Linux's init_thread_union (THREAD_SIZE-aligned). */
	.bss
	.balign	THREAD_SIZE
	.globl	init_thread_union
	.type	init_thread_union, @object
init_thread_union:
	.skip	THREAD_SIZE
	.size	init_thread_union, THREAD_SIZE

/* ------------------------------------------------------------ Xen ELF notes */

#include <xen-notes.h>
	XEN_PV32_NOTES pvdbg-seed, startup_xen, VIRT_BASE, PADDR_OFFSET, "1", PVDBG_GUEST_FEATURES

	.section .note.GNU-stack, "", @progbits
