/*
 * Paravirtual operations: tables of function pointers the rest of the kernel calls
 * instead of privileged instructions, in the shape of Linux's pv_ops
 * (arch/x86/include/asm/paravirt_types.h). The seed kernel only ever runs on Xen, so
 * pv_ops is empty until xen_init_paravirt() installs the Xen implementations.
 */
#ifndef SEED_PARAVIRT_H
#define SEED_PARAVIRT_H

#include <stdint.h>
#include <page.h>

#define X86_EFLAGS_IF  0x200UL   /* "interrupts enabled" bit reported by save_fl */

/* Operand of lgdt: limit (bytes - 1) and linear base. */
struct desc_ptr {
	uint16_t size;
	unsigned long address;
} __attribute__((packed));

/* Interrupt flag, virtualised as the vCPU's event upcall mask (irq.c). */
struct pv_irq_ops {
	unsigned long (*save_fl)(void);            /* X86_EFLAGS_IF if upcalls are unmasked */
	void (*restore_fl)(unsigned long flags);   /* unmask iff flags has X86_EFLAGS_IF */
	void (*irq_disable)(void);
	void (*irq_enable)(void);
	void (*safe_halt)(void);                   /* enable events and block until one arrives */
};

/* Page tables and TLB, through mmu_update / mmuext_op (mmu.c). */
struct pv_mmu_ops {
	unsigned long (*read_cr3)(void);           /* folded machine CR3 of the current pgd */
	void (*write_cr3)(unsigned long cr3);
	void (*set_pte)(pte_t *ptep, pte_t pte);   /* ptep: VA in the 1:1 kernel mapping */
	void (*flush_tlb)(void);
	void (*flush_tlb_one)(unsigned long va);
};

/* Descriptor tables, stacks, debug registers, cpuid (enlighten.c). */
struct pv_cpu_ops {
	void (*cpuid)(unsigned int *ax, unsigned int *bx, unsigned int *cx, unsigned int *dx);
	void (*load_gdt)(const struct desc_ptr *dtr);
	void (*load_sp0)(unsigned long sp0);       /* ring-1 stack for entries from ring 3 */
	void (*set_debugreg)(int reg, unsigned long value);
	unsigned long (*get_debugreg)(int reg);
};

struct paravirt_ops {
	struct pv_irq_ops irq;
	struct pv_mmu_ops mmu;
	struct pv_cpu_ops cpu;
};

struct pv_info {
	const char *name;           /* "Xen" once installed */
	unsigned int kernel_rpl;    /* privilege ring the kernel runs in: 1 on 32-bit PV */
};

extern struct paravirt_ops pv_ops;
extern struct pv_info pv_info;

extern const struct pv_irq_ops xen_irq_ops;
extern const struct pv_mmu_ops xen_mmu_ops;
extern const struct pv_cpu_ops xen_cpu_ops;

/* Install the Xen tables into pv_ops and pv_info (paravirt.c). */
void xen_init_paravirt(void);

/* Wrappers used by the rest of the kernel. */
static inline unsigned long arch_local_save_flags(void)
{
	return pv_ops.irq.save_fl();
}

static inline void arch_local_irq_restore(unsigned long flags)
{
	pv_ops.irq.restore_fl(flags);
}

static inline void arch_local_irq_disable(void)
{
	pv_ops.irq.irq_disable();
}

static inline void arch_local_irq_enable(void)
{
	pv_ops.irq.irq_enable();
}

static inline unsigned long arch_local_irq_save(void)
{
	unsigned long flags = arch_local_save_flags();

	arch_local_irq_disable();
	return flags;
}

#endif /* SEED_PARAVIRT_H */
