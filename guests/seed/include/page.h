/*
 * Address-space layout of the seed kernel and page-frame helpers.
 * The constants are shared by C, assembly and the linker script (seed.lds.S), so they are
 * plain integers without C suffixes.
 */
#ifndef SEED_PAGE_H
#define SEED_PAGE_H

/*
 * VIRT_BASE: VA of pseudo-physical address 0 (XEN_ELFNOTE_VIRT_BASE). PADDR_OFFSET is 0,
 * so the loader puts each PT_LOAD segment at p_paddr + VIRT_BASE and the kernel must be
 * linked with p_vaddr == p_paddr + VIRT_BASE.
 */
#define VIRT_BASE        0xC0000000
#define PADDR_OFFSET     0

#define PAGE_SHIFT       12
#define PAGE_SIZE        4096
#define PMD_SHIFT        21              /* PAE: one L2 entry maps 2 MiB */
#define PMD_SIZE         0x200000
#define THREAD_SIZE      8192            /* init stack, like Linux's 32-bit THREAD_SIZE */

#ifndef __ASSEMBLY__
#include <stdint.h>

#define PAGE_MASK        (~(unsigned long)(PAGE_SIZE - 1))

/* PAE page-table entries are 64 bits wide. */
typedef struct { uint64_t pte; } pte_t;
typedef struct { uint64_t pgd; } pgd_t;

#define _PAGE_PRESENT    0x001ULL
#define _PAGE_RW         0x002ULL
#define _PAGE_USER       0x004ULL
#define _PAGE_ACCESSED   0x020ULL
#define _PAGE_DIRTY      0x040ULL
#define PAGE_KERNEL_RO   (_PAGE_PRESENT | _PAGE_ACCESSED)
#define PAGE_KERNEL      (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)

#define INVALID_P2M_ENTRY  (~0UL)

/* Pseudo-physical address of a VA in the initial 1:1 mapping, and back. */
static inline unsigned long __pa(unsigned long va)
{
	return va - VIRT_BASE;
}

static inline unsigned long __va(unsigned long pa)
{
	return pa + VIRT_BASE;
}

static inline unsigned long virt_to_pfn(unsigned long va)
{
	return __pa(va) >> PAGE_SHIFT;
}

/* MFN of a PFN from the Xen-built p2m (start_info.mfn_list); INVALID_P2M_ENTRY if unknown. */
unsigned long pfn_to_mfn(unsigned long pfn);

/* Machine address of a VA in the initial 1:1 mapping; INVALID_P2M_ENTRY if unknown. */
uint64_t virt_to_machine(unsigned long va);

static inline pte_t mfn_pte(unsigned long mfn, uint64_t flags)
{
	pte_t pte = { ((uint64_t)mfn << PAGE_SHIFT) | flags };
	return pte;
}

#endif /* __ASSEMBLY__ */

#endif /* SEED_PAGE_H */
