/*
 * Boot phases and boot-time state shared between them.
 * Flow (Linux v5.8 32-bit PV): head.S startup_xen -> enlighten.c xen_start_kernel
 * -> mmu.c xen_adopt_boot_pagetables -> reserve.c xen_reserve_top -> main.c start_kernel.
 */
#ifndef SEED_SETUP_H
#define SEED_SETUP_H

#include <xen/xen.h>
#include <xen/features.h>
#include <page.h>

/* VA of start_info, saved from ESI by startup_xen. */
extern struct start_info *xen_start_info;

/* Copy of start_info.cmd_line, NUL-terminated (main.c). */
extern char boot_command_line[MAX_GUEST_CMDLINE];

/* xen_features[n] != 0 if XENFEAT n is supported (features.c). */
extern unsigned char xen_features[XENFEAT_NR_SUBMAPS * 32];

static inline int xen_feature(unsigned int flag)
{
	return flag < sizeof(xen_features) ? xen_features[flag] : 0;
}

/* The initial address space: Xen's boot page tables, adopted in phase 2 (mmu.c). */
struct mm_struct {
	pgd_t *pgd;      /* VA of the L3 */
};
extern struct mm_struct init_mm;

/* Top of the guest's usable address space (reserve.c). */
extern unsigned long hypervisor_hole_start;   /* first VA owned by Xen */
extern unsigned long fixaddr_top;             /* like Linux __FIXADDR_TOP */

/* Phase 1 (enlighten.c): first C code, called by startup_xen with ESP on init_thread_union. */
void xen_start_kernel(void);

/* Query XENVER_get_features into xen_features; returns 0 or the negative errno (features.c). */
long xen_setup_features(unsigned int *submap0);

/* Phase 2 (mmu.c). */
void xen_adopt_boot_pagetables(void);

/* Phase 3 (reserve.c). */
void xen_reserve_top(void);

/* Memory phase (mm_phase.c), run by start_kernel. */
void xen_memory_phase(void);

/* Kernel phase (kernel_phase.c): traps, events, timers, tasks, ring 3; after the memory phase. */
void xen_kernel_phase(void);

/* Phase 4 (main.c). */
void start_kernel(void);

/* Shut the domain down with a SHUTDOWN_* reason; never returns (enlighten.c). */
void xen_reboot(unsigned int reason) __attribute__((noreturn));

/* Benchmark loop (bench.S): N iterations of register-only arithmetic, returns a checksum. */
unsigned int bench_loop(unsigned int iterations);

#endif /* SEED_SETUP_H */
