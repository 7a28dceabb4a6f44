/*
 * 32-bit PV hypercalls: `call hypercall_page + nr * 32`, arguments in EBX, ECX, EDX, ESI,
 * EDI, result in EAX (negative errno on failure).
 * ABI: xen/include/public/arch-x86/xen-x86_32.h; XEN-PV-ABI.md section 0.
 *
 * Every argument register is declared as clobbered: debug builds of Xen overwrite the
 * ones a hypercall uses, and the ABI reserves the right to overwrite any of them.
 */
#ifndef SEED_HYPERCALL_H
#define SEED_HYPERCALL_H

#include <stddef.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/sched.h>

/* The 4 KiB stub page in .text that Xen fills (head.S, XEN_ELFNOTE_HYPERCALL_PAGE). */
extern char hypercall_page[];

#define __hypercall_inline static inline __attribute__((always_inline))

/*
 * All wrappers go through _hypercall5: the unused argument registers are loaded with 0
 * and all five are clobbered, whatever the hypercall's own argument count is.
 */
__hypercall_inline long _hypercall5(unsigned int nr, unsigned long a1, unsigned long a2,
				    unsigned long a3, unsigned long a4, unsigned long a5)
{
	long ret;

	asm volatile ("call hypercall_page + %c[stub]"
		      : "=a" (ret), "+b" (a1), "+c" (a2), "+d" (a3), "+S" (a4), "+D" (a5)
		      : [stub] "i" (nr * HYPERCALL_STUB_SIZE)
		      : "memory");
	return ret;
}

__hypercall_inline long _hypercall4(unsigned int nr, unsigned long a1, unsigned long a2,
				    unsigned long a3, unsigned long a4)
{
	return _hypercall5(nr, a1, a2, a3, a4, 0);
}

__hypercall_inline long _hypercall3(unsigned int nr, unsigned long a1, unsigned long a2,
				    unsigned long a3)
{
	return _hypercall5(nr, a1, a2, a3, 0, 0);
}

__hypercall_inline long _hypercall2(unsigned int nr, unsigned long a1, unsigned long a2)
{
	return _hypercall5(nr, a1, a2, 0, 0, 0);
}

__hypercall_inline long _hypercall1(unsigned int nr, unsigned long a1)
{
	return _hypercall5(nr, a1, 0, 0, 0, 0);
}

__hypercall_inline long _hypercall0(unsigned int nr)
{
	return _hypercall5(nr, 0, 0, 0, 0, 0);
}

/* console_io(cmd, count, buffer VA). CONSOLEIO_write returns 0. */
__hypercall_inline long HYPERVISOR_console_io(int cmd, unsigned int count, const char *buf)
{
	return _hypercall3(__HYPERVISOR_console_io, cmd, count, (unsigned long)buf);
}

/* xen_version(cmd, arg VA): XENVER_version returns (major << 16) | minor. */
__hypercall_inline long HYPERVISOR_xen_version(int cmd, void *arg)
{
	return _hypercall2(__HYPERVISOR_xen_version, cmd, (unsigned long)arg);
}

/* sched_op(cmd, arg VA), e.g. SCHEDOP_shutdown with a struct sched_shutdown. */
__hypercall_inline long HYPERVISOR_sched_op(int cmd, void *arg)
{
	return _hypercall2(__HYPERVISOR_sched_op, cmd, (unsigned long)arg);
}

/* mmu_update(reqs VA, count, done VA or NULL, foreigndom). */
__hypercall_inline long HYPERVISOR_mmu_update(struct mmu_update *req, unsigned int count,
					      unsigned int *done, domid_t domid)
{
	return _hypercall4(__HYPERVISOR_mmu_update, (unsigned long)req, count,
			   (unsigned long)done, domid);
}

/* mmuext_op(ops VA, count, done VA or NULL, foreigndom). */
__hypercall_inline long HYPERVISOR_mmuext_op(struct mmuext_op *op, unsigned int count,
					     unsigned int *done, domid_t domid)
{
	return _hypercall4(__HYPERVISOR_mmuext_op, (unsigned long)op, count,
			   (unsigned long)done, domid);
}

/* update_va_mapping(va, pte low, pte high, UVMF_* flags). */
__hypercall_inline long HYPERVISOR_update_va_mapping(unsigned long va, uint64_t pte,
						     unsigned long flags)
{
	return _hypercall4(__HYPERVISOR_update_va_mapping, va, (unsigned long)pte,
			   (unsigned long)(pte >> 32), flags);
}

/* set_gdt(frames VA: u32 MFNs, number of descriptors). */
__hypercall_inline long HYPERVISOR_set_gdt(unsigned long *frames, unsigned int entries)
{
	return _hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, entries);
}

/* stack_switch(ss, esp): the ring-1 stack used on entry from ring 3. */
__hypercall_inline long HYPERVISOR_stack_switch(unsigned long ss, unsigned long esp)
{
	return _hypercall2(__HYPERVISOR_stack_switch, ss, esp);
}

__hypercall_inline long HYPERVISOR_set_debugreg(int reg, unsigned long value)
{
	return _hypercall2(__HYPERVISOR_set_debugreg, reg, value);
}

__hypercall_inline unsigned long HYPERVISOR_get_debugreg(int reg)
{
	return _hypercall1(__HYPERVISOR_get_debugreg, reg);
}

#endif /* SEED_HYPERCALL_H */
