/*
 * Helpers shared by the scenario guests (runtime.c): start_info, the p2m and M2P, the
 * PTE that maps a kernel VA, and reporting a hypercall's result.
 */
#ifndef SCENARIO_H
#define SCENARIO_H

#include <stdint.h>
#include <hypercall.h>
#include <lib.h>
#include <page.h>

#define __page_aligned  __attribute__((aligned(PAGE_SIZE)))

extern struct start_info *xen_start_info;

/* Shut the domain down with a SHUTDOWN_* reason. */
void xen_reboot(unsigned int reason) __attribute__((noreturn));

/* The read-only M2P (at the start of the hypervisor hole): machine frame -> pfn. */
unsigned long mfn_to_pfn(unsigned long mfn);

/* MFN of a page of the kernel image. */
unsigned long virt_to_mfn(const void *va);

/* VA (in the 1:1 kernel mapping) of the frame a page-table entry points at. */
void *entry_va(uint64_t entry);

/* VA of the live L1 entry that maps `va`, found through Xen's boot page tables. */
uint64_t *pte_of(const void *va);

/* Remap a page of the kernel image read-only (update_va_mapping); crashes on failure. */
void remap_readonly(const void *va);

/*
 * Print "scenario: <call> returned <rc>": on failure the guest then crashes, as Linux
 * BUG()s when a page-table hypercall fails; on success it returns.
 */
void scenario_result(const char *call, long rc);

#endif /* SCENARIO_H */
