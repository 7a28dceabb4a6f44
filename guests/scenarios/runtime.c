/*
 * Run-time support of the scenario guests: what the seed kernel's mmu.c and enlighten.c
 * provide, reduced to what a single-bug guest needs.
 * ABI: xen/include/public/xen.h start_info, mmu_update, update_va_mapping; XEN-PV-ABI.md 1.1.
 */
#include <scenario.h>

struct start_info *xen_start_info;

void xen_reboot(unsigned int reason)
{
	struct sched_shutdown shutdown = { .reason = reason };

	for (;;)
		HYPERVISOR_sched_op(SCHEDOP_shutdown, &shutdown);
}

unsigned long pfn_to_mfn(unsigned long pfn)
{
	const uint32_t *p2m = (const uint32_t *)xen_start_info->mfn_list;

	if (pfn >= xen_start_info->nr_pages)
		return INVALID_P2M_ENTRY;
	return p2m[pfn];
}

uint64_t virt_to_machine(unsigned long va)
{
	return ((uint64_t)pfn_to_mfn(virt_to_pfn(va)) << PAGE_SHIFT) | (va & ~PAGE_MASK);
}

unsigned long mfn_to_pfn(unsigned long mfn)
{
	return ((const uint32_t *)HYPERVISOR_VIRT_START_PAE)[mfn];
}

unsigned long virt_to_mfn(const void *va)
{
	unsigned long addr = (unsigned long)va;

	asm ("" : "+r" (addr));     /* a run-time VA: keep __pa() out of link-time constants */
	return pfn_to_mfn(virt_to_pfn(addr));
}

void *entry_va(uint64_t entry)
{
	unsigned long pfn = mfn_to_pfn((unsigned long)((entry & 0x000ffffffffff000ULL) >> PAGE_SHIFT));

	return (void *)__va(pfn << PAGE_SHIFT);
}

uint64_t *pte_of(const void *va)
{
	unsigned long addr = (unsigned long)va;
	const uint64_t *pgd = (const uint64_t *)xen_start_info->pt_base;
	const uint64_t *pmd = entry_va(pgd[addr >> 30]);
	uint64_t *ptes = entry_va(pmd[(addr >> PMD_SHIFT) & 511]);

	return &ptes[(addr >> PAGE_SHIFT) & 511];
}

void remap_readonly(const void *va)
{
	long rc = HYPERVISOR_update_va_mapping((unsigned long)va,
					       mfn_pte(virt_to_mfn(va), PAGE_KERNEL_RO).pte,
					       UVMF_INVLPG);

	if (rc) {
		printk("scenario: remapping %p read-only failed: %d\n", va, (int)rc);
		xen_reboot(SHUTDOWN_crash);
	}
}

void scenario_result(const char *call, long rc)
{
	if (!rc) {
		printk("scenario: %s succeeded\n", call);
		return;
	}
	printk("scenario: %s returned %d\n", call, (int)rc);
	xen_reboot(SHUTDOWN_crash);
}
