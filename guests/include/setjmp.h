/*
 * setjmp/longjmp for the fuzz and security guests, as an assembler macro (include from a
 * .S file).  GUEST_SETJMP name defines `int name_setjmp(struct name_jmp *)` and
 * `void name_longjmp(struct name_jmp *, int)`; the jmp buffer holds ebx, esi, edi, ebp,
 * the caller's esp and the return address, in that order (cdecl, i386).
 */
#ifndef PVDBG_GUEST_SETJMP_H
#define PVDBG_GUEST_SETJMP_H

.macro GUEST_SETJMP name:req
	.globl	\name\()_setjmp
	.type	\name\()_setjmp, @function
\name\()_setjmp:
	movl	4(%esp), %eax
	movl	%ebx, 0(%eax)
	movl	%esi, 4(%eax)
	movl	%edi, 8(%eax)
	movl	%ebp, 12(%eax)
	leal	4(%esp), %ecx
	movl	%ecx, 16(%eax)
	movl	(%esp), %ecx
	movl	%ecx, 20(%eax)
	xorl	%eax, %eax
	ret
	.size	\name\()_setjmp, . - \name\()_setjmp

	.globl	\name\()_longjmp
	.type	\name\()_longjmp, @function
\name\()_longjmp:
	movl	4(%esp), %edx
	movl	8(%esp), %eax
	movl	0(%edx), %ebx
	movl	4(%edx), %esi
	movl	8(%edx), %edi
	movl	12(%edx), %ebp
	movl	16(%edx), %esp
	jmp	*20(%edx)
	.size	\name\()_longjmp, . - \name\()_longjmp
.endm

#endif
