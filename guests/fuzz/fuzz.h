/*
 * The fuzz guest: a seeded stream of random hypercalls (README.md).
 *
 * Memory it owns, at the top of Xen's initial mapping (the 512 KiB padding above the boot
 * stack, XEN-PV-ABI.md 2.3): an arena of ARENA_PAGES pages it turns into page tables,
 * remaps, pins and scribbles over, then SCRATCH_PAGES pages of argument buffers that end
 * exactly where the mapping ends, so a huge count walks off into unmapped memory.
 * Everything below the arena (kernel image, p2m, start_info, rings, boot page tables,
 * stacks) is "vital": unless wild=1, generated arguments never point Xen at it.
 * Generated pointers stay out of the last two scratch pages: the last one holds the
 * multicall lists, which Xen must read as the guest sanitized them.
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <stdint.h>
#include <hypercall.h>
#include <lib.h>
#include <page.h>

#define ARENA_PAGES      64
#define SCRATCH_PAGES    16
#define SCRATCH_SIZE     (SCRATCH_PAGES * PAGE_SIZE)
#define MAX_BOOT_L1      8
#define VITAL_FRAMES     (1 << 18)      /* bitmap of the vital MFNs (up to 1 GiB domains) */
#define L2_FIRST_XEN     428            /* first Xen slot of an L2 in L3 slot 3 */

/* Trap vectors of fuzz_trap() beyond the 32 exceptions. */
#define FUZZ_EVENT       0x100
#define FUZZ_FAILSAFE    0x101
#define FUZZ_NMI         0x102
#define FUZZ_IRET_OK     0x200

struct fuzz_jmp {
	uint32_t ebx, esi, edi, ebp, esp, eip;
};

int fuzz_setjmp(struct fuzz_jmp *jmp) __attribute__((returns_twice));
void fuzz_longjmp(struct fuzz_jmp *jmp, int value) __attribute__((noreturn));
long fuzz_hypercall(const uint32_t regs[6]);
void fuzz_iret(const uint32_t frame[6]) __attribute__((noreturn));
void fuzz_iret_landing(void);
void fuzz_trap(uint32_t vector, uint32_t *frame) __attribute__((noreturn));
void xen_reboot(unsigned int reason) __attribute__((noreturn));

extern char fuzz_kernel_stack[];
extern struct start_info *xen_start_info;

/* The domain as the guest found it at boot (fuzz.c). */
struct layout {
	uint32_t virt_end;              /* end of Xen's initial mapping */
	uint32_t arena_va, scratch_va;
	uint32_t arena_mfn[ARENA_PAGES];
	uint32_t scratch_mfn[SCRATCH_PAGES];
	uint32_t l3_mfn, l2_mfn;        /* the boot pgd and its slot-3 L2 */
	uint32_t l1_mfn[MAX_BOOT_L1];   /* the boot L1s, mapping [VIRT_BASE, virt_end) */
	uint32_t nr_boot_l1;
	const uint64_t *l2_va;          /* the boot tables in Xen's 1:1 mapping (read-only) */
	const uint64_t *l1_va[MAX_BOOT_L1];
	uint32_t nr_pages, first_free_pfn, max_ram_page;
	uint32_t shared_info_mfn, m2p_mfn;
};

extern struct layout lay;
extern uint32_t vcpu_info_page_mfn;     /* a page for VCPUOP_register_vcpu_info */
extern int fuzz_wild;

/* The entries of boot L1 `mfn` (read-only mapping). */
const uint64_t *boot_l1_entries(uint32_t mfn);

/* Random numbers: xoshiro128** seeded from (seed, call index) (gen.c). */
void rng_seed(uint32_t seed, uint32_t index);
uint32_t rnd(void);
uint32_t below(uint32_t n);
int chance(uint32_t percent);

/* Argument generators (gen.c). */
int vital_mfn(uint32_t mfn);
int vital_va(uint32_t va);
int scratch_range(uint32_t va, uint32_t len);
uint32_t arena_page_va(uint32_t page);
uint32_t gen_value(void);
uint32_t gen_mfn(void);
uint32_t safe_mfn(uint32_t mfn);
uint64_t gen_pte(void);
uint32_t gen_slot(void);
uint32_t gen_selector(void);
uint32_t gen_eflags(void);
void fill_words(uint32_t va, uint32_t words);
void *scratch_alloc(uint32_t len);
void scratch_reset(void);

/* Restores owed after a call that replaced the guest's own handlers (fuzz.c). */
#define R_TRAPS       1u
#define R_STACK       2u
#define R_CALLBACKS   4u
#define R_DEBUGREGS   8u
extern uint32_t restore_owed;

/* The call generators (ops.c): one step of the stream. */
void fuzz_step(void);
void sanitize_call(uint32_t call[7], int in_multicall);
long do_call(uint32_t nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5);

extern volatile uint32_t fuzz_hypercalls;

#endif /* FUZZ_H */
