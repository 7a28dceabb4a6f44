/*
 * Xen MMU: the p2m lookup, the pv mmu ops and phase 2, adopting the page tables Xen
 * built as init_mm (Linux arch/x86/xen/mmu_pv.c).
 * ABI: xen/include/public/xen.h mmu_update, mmuext_op; XEN-PV-ABI.md 2.2, 3.2, 3.3.
 */
#include <hypercall.h>
#include <lib.h>
#include <paravirt.h>
#include <setup.h>

struct mm_struct init_mm;

/* Shadow of the guest's CR3 (folded machine address), like Linux's per-cpu xen_cr3. */
static unsigned long xen_cr3;

unsigned long pfn_to_mfn(unsigned long pfn)
{
	const uint32_t *p2m = (const uint32_t *)xen_start_info->mfn_list;

	if (pfn >= xen_start_info->nr_pages)
		return INVALID_P2M_ENTRY;
	return p2m[pfn];
}

uint64_t virt_to_machine(unsigned long va)
{
	unsigned long mfn;

	if (va < VIRT_BASE)
		return INVALID_P2M_ENTRY;
	mfn = pfn_to_mfn(virt_to_pfn(va));
	if (mfn == INVALID_P2M_ENTRY)
		return INVALID_P2M_ENTRY;
	return ((uint64_t)mfn << PAGE_SHIFT) | (va & ~PAGE_MASK);
}

static void xen_mmuext(unsigned int cmd, unsigned long arg1)
{
	struct mmuext_op op = { .cmd = cmd, .arg1.mfn = arg1 };
	long rc = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);

	if (rc)
		panic("mmuext_op %u (arg 0x%x) failed: %d", cmd, (unsigned int)arg1, (int)rc);
}

static unsigned long xen_read_cr3(void)
{
	return xen_cr3;
}

static void xen_write_cr3(unsigned long cr3)
{
	xen_mmuext(MMUEXT_NEW_BASEPTR, xen_cr3_to_pfn(cr3));
	xen_cr3 = cr3;
}

static void xen_set_pte(pte_t *ptep, pte_t pte)
{
	struct mmu_update req;
	long rc;

	req.ptr = virt_to_machine((unsigned long)ptep);
	if (req.ptr == INVALID_P2M_ENTRY)
		panic("set_pte: %p is not in the kernel mapping", ptep);
	req.ptr |= MMU_NORMAL_PT_UPDATE;
	req.val = pte.pte;
	rc = HYPERVISOR_mmu_update(&req, 1, NULL, DOMID_SELF);
	if (rc)
		panic("set_pte: mmu_update of %p failed: %d", ptep, (int)rc);
}

static void xen_flush_tlb(void)
{
	xen_mmuext(MMUEXT_TLB_FLUSH_LOCAL, 0);
}

static void xen_flush_tlb_one(unsigned long va)
{
	xen_mmuext(MMUEXT_INVLPG_LOCAL, va & PAGE_MASK);
}

const struct pv_mmu_ops xen_mmu_ops = {
	.read_cr3 = xen_read_cr3,
	.write_cr3 = xen_write_cr3,
	.set_pte = xen_set_pte,
	.flush_tlb = xen_flush_tlb,
	.flush_tlb_one = xen_flush_tlb_one,
};

/*
 * Phase 2. Xen built an L3, L2s and L1s mapping the first pages at VIRT_BASE and loaded
 * the L3 into CR3; keep using it as the kernel's address space (init_mm) and remember
 * its CR3 for read_cr3.
 */
void xen_adopt_boot_pagetables(void)
{
	unsigned long pgd_va = xen_start_info->pt_base;
	unsigned long mfn;

	if (pgd_va < VIRT_BASE || (pgd_va & ~PAGE_MASK))
		panic("start_info.pt_base %p is not a page-aligned kernel address", (void *)pgd_va);
	mfn = pfn_to_mfn(virt_to_pfn(pgd_va));
	if (mfn == INVALID_P2M_ENTRY)
		panic("start_info.pt_base %p is outside the p2m", (void *)pgd_va);

	init_mm.pgd = (pgd_t *)pgd_va;
	xen_cr3 = xen_pfn_to_cr3(mfn);

	printk("seed: init_mm.pgd %p nr_pt_frames %u nr_pages %u\n", init_mm.pgd,
	       (unsigned int)xen_start_info->nr_pt_frames,
	       (unsigned int)xen_start_info->nr_pages);
}
