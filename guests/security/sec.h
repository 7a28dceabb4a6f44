/*
 * Runtime of the security regression guests (runtime.c): each guest is one attempt at a
 * classic PV escape, written in attempt(), and reports how Xen answered, one line per
 * probe on the console:
 *
 *   security: <probe> rc=<n>                         a hypercall's result (0 or -errno)
 *   security: <probe> fault vector=<v> ec=<hex> cr2=<hex>   a guest access that trapped
 *   security: <probe> nofault value=<hex>             a guest access that went through
 *   security: <probe> value=<hex>                     something the guest read back
 *
 * then "security: done" and a poweroff.  tests/test_security_guests.py checks the lines.
 * ABI: xen/include/public/xen.h (start_info, mmu_update, mmuext_op, trap_info),
 * XEN-PV-ABI.md sections 1-4.
 */
#ifndef SEC_H
#define SEC_H

#include <stdint.h>
#include <hypercall.h>
#include <lib.h>
#include <page.h>

#define __page_aligned  __attribute__((aligned(PAGE_SIZE)))
#define PTE_RO_FLAGS    0x021ULL                /* P A */
#define PTE_RW_FLAGS    0x063ULL                /* P RW A D */
#define L2E_FLAGS       0x067ULL                /* P RW U A D */

extern struct start_info *xen_start_info;

void xen_reboot(unsigned int reason) __attribute__((noreturn));

/* The attempt each guest makes (its own .c file). */
void attempt(void);

/* Frames and the boot pagetables (read-only mapped by Xen among the first pages). */
unsigned long virt_to_mfn(const void *va);
uint32_t boot_l3_mfn(void);
uint32_t boot_l2_mfn(void);                     /* the L2 in slot 3 (the hole's L2) */
const uint64_t *boot_l2(void);
uint32_t boot_l1_mfn(const void *va);           /* the boot L1 that maps `va` */
uint32_t first_free_l2_slot(void);              /* a slot of the boot L2 above the kernel */
uint32_t m2p_first_mfn(void);                   /* a frame of Xen's M2P table */

/* Hypercalls: any number, and the ones the attempts use most. */
long hc(uint32_t nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5);
long mmu_update1(uint64_t ptr, uint64_t val);
long mmuext1(uint32_t cmd, uint32_t arg1, uint32_t arg2);
long remap(const void *va, uint32_t mfn, uint64_t flags);

/* Reporting. */
void result(const char *probe, long rc);
void value(const char *probe, uint32_t v);

/* Run fn(arg) expecting it may trap: prints the fault line or the nofault line (with
 * the value fn returned); returns the vector + 1, or 0 if nothing trapped. */
int probe(const char *name, uint32_t (*fn)(uint32_t), uint32_t arg);

#endif /* SEC_H */
