/*
 * The loop every debugger in bench/run_gdb.py runs: the same bytes for pvdbg (PV guest),
 * QEMU (multiboot kernel) and udbserver (bare Unicorn). Included by pv.S and multiboot.S.
 *
 * Position independent: EBX holds the address of bench_data, every jump is relative,
 * so the bytes from bench_start to bench_done + 2 are identical in both builds (the
 * benchmark checks this). No stack, no interrupts, no hypercalls.
 *
 *   bench_outer:  ECX <- bench_iterations (set by the debugger)
 *   bench_loop:   4 instructions per iteration; the first writes bench_counter
 *   bench_done:   on its own page; a breakpoint here ends a timed free run
 *   bench_cold:   on the hot loop's page, never executed (the "breakpoint on the hot
 *                 page" row puts one here)
 *
 * From a stop at bench_done, one step (its jmp) then a continue to bench_done retires
 * 2 + 4 * bench_iterations instructions.
 */
#define BENCH_COUNTER_OFFSET     0
#define BENCH_ITERATIONS_OFFSET  4
#define BENCH_PAGE_SIZE          4096
#define BENCH_BUFFER_BYTES       (1024 * 1024)
#define BENCH_STACK_BYTES        4096

	.text
	.balign	BENCH_PAGE_SIZE
	.globl	bench_start, bench_outer, bench_loop, bench_loop_bp, bench_loop_end
	.globl	bench_cold, bench_done
bench_start:
bench_outer:
	movl	BENCH_ITERATIONS_OFFSET(%ebx), %ecx
bench_loop:
	incl	BENCH_COUNTER_OFFSET(%ebx)      /* the watched write */
bench_loop_bp:                                  /* the breakpoint inside the loop */
	addl	%ecx, %eax
	decl	%ecx
	jnz	bench_loop
bench_loop_end:
	jmp	bench_done
bench_cold:
	incl	8(%ebx)
	jmp	bench_outer

	.balign	BENCH_PAGE_SIZE
bench_done:
	jmp	bench_outer
	.balign	BENCH_PAGE_SIZE

	.data
	.balign	BENCH_PAGE_SIZE
	.globl	bench_data, bench_counter, bench_iterations, bench_buffer, bench_stack_top
bench_data:
bench_counter:
	.long	0
bench_iterations:
	.long	1
	.long	0                               /* bench_cold's counter */
	.balign	BENCH_PAGE_SIZE
/* 1 MiB that gdb reads back: word i holds i * 0x9E3779B1 (mod 2^32). */
bench_buffer:
	.set	.Lbench_word, 0
	.rept	BENCH_BUFFER_BYTES / 4
	.long	(.Lbench_word * 0x9E3779B1) & 0xFFFFFFFF
	.set	.Lbench_word, .Lbench_word + 1
	.endr
bench_stack:
	.fill	BENCH_STACK_BYTES, 1, 0
bench_stack_top:
