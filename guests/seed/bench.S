/*
 * unsigned int bench_loop(unsigned int iterations)
 *
 * A fixed compute loop for measuring the emulator: each iteration is exactly 8
 * instructions of register-only integer arithmetic (no memory access, no calls) between
 * bench_loop_body and bench_loop_end. Returns a checksum of the work in EAX.
 *
 * Only EAX, ECX and EDX are used, which the i386 C ABI lets a callee clobber, so nothing
 * is saved except the frame pointer. Checksum model (all arithmetic mod 2^32):
 *     a = 0x5eed5eed; d = 0x9e3779b9
 *     for c = N down to 1:
 *         a = rol(a + d, 5) ^ c
 *         d = ror((d + 0x7f4a7c15) ^ a, 3)
 *     return a
 */
	.cfi_sections .debug_frame

	.text
	.globl	bench_loop
	.type	bench_loop, @function
	.globl	bench_loop_body
	.globl	bench_loop_end
bench_loop:
	.cfi_startproc
	pushl	%ebp
	.cfi_def_cfa_offset 8
	.cfi_offset ebp, -8
	movl	%esp, %ebp
	.cfi_def_cfa_register ebp
	movl	8(%ebp), %ecx           /* c = iterations */
	movl	$0x5eed5eed, %eax       /* a */
	movl	$0x9e3779b9, %edx       /* d */
	testl	%ecx, %ecx
	jz	bench_loop_end
bench_loop_body:
	addl	%edx, %eax
	roll	$5, %eax
	xorl	%ecx, %eax
	addl	$0x7f4a7c15, %edx
	xorl	%eax, %edx
	rorl	$3, %edx
	decl	%ecx
	jnz	bench_loop_body
bench_loop_end:
	popl	%ebp
	.cfi_def_cfa esp, 4
	ret
	.cfi_endproc
	.size	bench_loop, . - bench_loop

	.section .note.GNU-stack, "", @progbits
