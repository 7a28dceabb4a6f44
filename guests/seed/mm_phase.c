/*
 * Phase 5, the memory phase (Linux arch/x86/xen/setup.c xen_memory_setup/xen_arch_setup,
 * mmu_pv.c xen_setup_kernel_pagetable, enlighten_pv.c xen_load_gdt, drivers/xen/balloon.c).
 * One console line per step:
 *
 *  1. VM assists: 4gb_segments, writable_pagetables, pae_extended_cr3;
 *  2. shared_info mapped over a .bss page with update_va_mapping, vcpu_info attached;
 *  3. the read-only M2P found with XENMEM_machphys_mapping and checked against the p2m;
 *  4. the memory map (XENMEM_memory_map, or one RAM range on -ENOSYS);
 *  5. init_mm: a new pgd and kernel pmd built with Xen's tables as the template, inserting
 *     mappings only where none exist (set_pte during setup silently keeps a read-only
 *     page read-only), the new tables made read-only with one batched mmu_update;
 *  6. init_mm pinned and loaded (write_cr3), Xen's boot pgd unpinned;
 *  7. writable pagetables: a PTE cleared and restored by direct writes Xen emulates;
 *  8. the kernel's own GDT (frame made read-only, then set_gdt), segments reloaded, a TLS
 *     descriptor set with update_descriptor and read through %gs;
 *  9. a balloon round trip: one page released with decrease_reservation and repopulated
 *     with populate_physmap, MMU_MACHPHYS_UPDATE and update_va_mapping.
 *
 * ABI: xen/include/public/xen.h (vm_assist, mmu_update, mmuext_op, update_va_mapping,
 * set_gdt, update_descriptor), xen/include/public/memory.h; XEN-PV-ABI.md 1.1, 1.3, 3.2-3.5,
 * 3.14, 4.
 */
#include <hypercall.h>
#include <irq.h>
#include <lib.h>
#include <paravirt.h>
#include <setup.h>
#include <xen/memory.h>

#define PTRS_PER_PTE        512
#define LOWMEM_MAX          (8u << 20)          /* the seed maps at most 8 MiB of lowmem */
#define EXTRA_L1_PAGES      2                   /* new L1s for lowmem beyond Xen's mapping */
#define PTE_ADDR_MASK       0x000ffffffffff000ULL
#define _PAGE_TABLE         (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define ENOSYS              38
#define __page_aligned      __attribute__((aligned(PAGE_SIZE)))

/* The seed's GDT: kernel selectors carry RPL 1 (ring 1), user ones RPL 3. */
#define GDT_ENTRY_KERNEL_CS 2
#define GDT_ENTRY_KERNEL_DS 3
#define GDT_ENTRY_USER_CS   4
#define GDT_ENTRY_USER_DS   5
#define GDT_ENTRY_TLS       6
#define GDT_ENTRIES         7
#define __KERNEL_CS         (GDT_ENTRY_KERNEL_CS * 8 + 1)
#define __KERNEL_DS         (GDT_ENTRY_KERNEL_DS * 8 + 1)
#define __TLS_SELECTOR      (GDT_ENTRY_TLS * 8 + 3)
#define TLS_MAGIC           0x7e57c0de

/* 8-byte descriptor from Linux-style flags: access byte in 7:0, G/D/L/AVL in 15:12. */
#define GDT_ENTRY(flags, base, limit)                                                  \
	((((base) & 0xff000000ULL) << (56 - 24)) | (((flags) & 0x0000f0ffULL) << 40) |  \
	 (((limit) & 0x000f0000ULL) << (48 - 16)) | (((base) & 0x00ffffffULL) << 16) |  \
	 ((limit) & 0x0000ffffULL))

/* Pages this phase turns into page tables, a GDT, and scratch space. */
static uint64_t init_pgd[PTRS_PER_PTE] __page_aligned;
static uint64_t init_pmd[PTRS_PER_PTE] __page_aligned;
static uint64_t lowmem_pte[EXTRA_L1_PAGES][PTRS_PER_PTE] __page_aligned;
static uint64_t gdt_page[PTRS_PER_PTE] __page_aligned;
static unsigned char shared_info_page[PAGE_SIZE] __page_aligned;
static unsigned char ptwr_page[PAGE_SIZE] __page_aligned;
static unsigned char balloon_page[PAGE_SIZE] __page_aligned;
static uint32_t tls_block[4] = { TLS_MAGIC };

struct shared_info *HYPERVISOR_shared_info;
const uint32_t *machine_to_phys_mapping;     /* the read-only M2P (Linux: same name) */
unsigned long machine_to_phys_nr;
unsigned long lowmem_end;                    /* end VA of the kernel's 1:1 mapping */

static unsigned int ptes_inserted, ptes_kept_ro, new_l1_pages;

static inline long HYPERVISOR_vm_assist(unsigned int cmd, unsigned int type)
{
	return _hypercall2(__HYPERVISOR_vm_assist, cmd, type);
}

static inline long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{
	return _hypercall2(__HYPERVISOR_memory_op, cmd, (unsigned long)arg);
}

static inline long HYPERVISOR_update_descriptor(uint64_t maddr, uint64_t desc)
{
	return _hypercall4(__HYPERVISOR_update_descriptor, (unsigned long)maddr,
			   (unsigned long)(maddr >> 32), (unsigned long)desc,
			   (unsigned long)(desc >> 32));
}

/*
 * The address of a kernel object as an opaque run-time value, so __pa() of it is not
 * folded into a link-time constant below VIRT_BASE (make check audits relocations).
 */
static unsigned long kva(const void *p)
{
	unsigned long va = (unsigned long)p;

	asm ("" : "+r" (va));
	return va;
}

static unsigned long virt_to_mfn(const void *va)
{
	return pfn_to_mfn(virt_to_pfn(kva(va)));
}

static unsigned long mfn_to_pfn(unsigned long mfn)
{
	if (!machine_to_phys_mapping || mfn >= machine_to_phys_nr)
		return INVALID_P2M_ENTRY;
	return machine_to_phys_mapping[mfn];
}

/* VA, in the 1:1 kernel mapping, of the frame a page-table entry points at. */
static uint64_t *entry_va(uint64_t entry)
{
	unsigned long mfn = (unsigned long)((entry & PTE_ADDR_MASK) >> PAGE_SHIFT);
	unsigned long pfn = mfn_to_pfn(mfn);

	if (pfn == INVALID_P2M_ENTRY || pfn >= xen_start_info->nr_pages)
		panic("mfn 0x%x is not one of the domain's frames", (unsigned int)mfn);
	return (uint64_t *)__va(pfn << PAGE_SHIFT);
}

static void mmuext(unsigned int cmd, unsigned long mfn, const char *what)
{
	struct mmuext_op op = { .cmd = cmd, .arg1.mfn = mfn };
	long rc = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);

	if (rc)
		panic("%s of mfn 0x%x failed: %d", what, (unsigned int)mfn, (int)rc);
}

/* 1. VM assists (Linux xen_arch_setup / xen_start_kernel). */
static void xen_enable_vm_assists(void)
{
	static const unsigned int types[] = {
		VMASST_TYPE_4gb_segments, VMASST_TYPE_writable_pagetables,
		VMASST_TYPE_pae_extended_cr3,
	};
	unsigned int i;
	long rc;

	for (i = 0; i < ARRAY_SIZE(types); i++) {
		rc = HYPERVISOR_vm_assist(VMASST_CMD_enable, types[i]);
		if (rc)
			panic("vm_assist(enable, %u) failed: %d", types[i], (int)rc);
	}
	printk("seed: vm_assist 4gb_segments writable_pagetables pae_extended_cr3 enabled\n");
}

/* 2. shared_info over a page of .bss, and the real vcpu_info for the irq ops. */
static void xen_map_shared_info(void)
{
	unsigned long va = (unsigned long)shared_info_page;
	unsigned long mfn = xen_start_info->shared_info >> PAGE_SHIFT;
	long rc = HYPERVISOR_update_va_mapping(va, mfn_pte(mfn, PAGE_KERNEL).pte, UVMF_INVLPG);

	if (rc)
		panic("mapping shared_info (mfn 0x%x) failed: %d", (unsigned int)mfn, (int)rc);
	HYPERVISOR_shared_info = (struct shared_info *)va;
	xen_vcpu_info_attach(&HYPERVISOR_shared_info->vcpu_info[0]);
	printk("seed: shared_info mfn 0x%x at %p, vcpu_info attached, save_fl 0x%x\n",
	       (unsigned int)mfn, (void *)va, (unsigned int)arch_local_save_flags());
}

/* 3. The read-only machine-to-phys table (Linux xen_setup_machphys_mapping). */
static void xen_setup_machphys_mapping(void)
{
	struct xen_machphys_mapping mapping;
	unsigned long pgd_pfn = virt_to_pfn(xen_start_info->pt_base);
	unsigned long pgd_mfn = pfn_to_mfn(pgd_pfn);
	long rc = HYPERVISOR_memory_op(XENMEM_machphys_mapping, &mapping);

	if (rc)
		panic("XENMEM_machphys_mapping failed: %d", (int)rc);
	machine_to_phys_mapping = (const uint32_t *)mapping.v_start;
	machine_to_phys_nr = mapping.max_mfn + 1;
	if (mfn_to_pfn(pgd_mfn) != pgd_pfn)
		panic("M2P disagrees with the p2m: m2p[0x%x] = 0x%x, expected 0x%x",
		      (unsigned int)pgd_mfn, (unsigned int)mfn_to_pfn(pgd_mfn),
		      (unsigned int)pgd_pfn);
	printk("seed: machphys 0x%x-0x%x max_mfn 0x%x, m2p[0x%x] = 0x%x\n",
	       mapping.v_start, mapping.v_end, mapping.max_mfn, (unsigned int)pgd_mfn,
	       (unsigned int)pgd_pfn);
}

/* 4. The pseudo-physical memory map (Linux xen_memory_setup). */
static void xen_memory_map_setup(void)
{
	static struct e820entry map[8];
	struct xen_memory_map memmap = {
		.nr_entries = ARRAY_SIZE(map), .buffer = (uint32_t)(unsigned long)map,
	};
	unsigned long ram = xen_start_info->nr_pages << PAGE_SHIFT;
	long rc = HYPERVISOR_memory_op(XENMEM_memory_map, &memmap);
	unsigned int i;

	if (rc == -ENOSYS) {
		printk("seed: memory map: XENMEM_memory_map %d, one RAM range 0x0-0x%x\n",
		       (int)rc, (unsigned int)ram);
		return;
	}
	if (rc)
		panic("XENMEM_memory_map failed: %d", (int)rc);
	ram = 0;
	for (i = 0; i < memmap.nr_entries && i < ARRAY_SIZE(map); i++)
		if (map[i].type == E820_RAM)
			ram += (unsigned long)map[i].size;
	printk("seed: memory map: %u entries, 0x%x bytes of RAM\n", memmap.nr_entries,
	       (unsigned int)ram);
}

static int is_new_l1(const uint64_t *table)
{
	return table >= &lowmem_pte[0][0] && table < &lowmem_pte[EXTRA_L1_PAGES][0];
}

/*
 * set_pte while the kernel's tables are being set up: insert where no mapping exists and
 * silently keep a read-only page read-only (it is a page table; Xen would refuse).
 * Entries of a table that is not live yet are plain stores; live ones go to Xen.
 */
static void set_pte_setup(uint64_t *ptep, pte_t pte)
{
	uint64_t old = *ptep;

	if (old & _PAGE_PRESENT) {
		if (!(old & _PAGE_RW) && (pte.pte & _PAGE_RW))
			ptes_kept_ro++;
		return;
	}
	if (is_new_l1((const uint64_t *)((unsigned long)ptep & PAGE_MASK)))
		*ptep = pte.pte;
	else
		pv_ops.mmu.set_pte((pte_t *)ptep, pte);
	ptes_inserted++;
}

/* 5. init_mm from Xen's pgd and pmd as the template (Linux xen_setup_kernel_pagetable). */
static void xen_build_init_mm(void)
{
	const uint64_t *xen_pgd = (const uint64_t *)xen_start_info->pt_base;
	unsigned int xen_first_slot = (hypervisor_hole_start >> PMD_SHIFT) & (PTRS_PER_PTE - 1);
	unsigned long lowmem = xen_start_info->nr_pages << PAGE_SHIFT;
	unsigned long va;
	unsigned int i;

	if (lowmem > LOWMEM_MAX)
		lowmem = LOWMEM_MAX;
	lowmem_end = VIRT_BASE + lowmem;
	for (i = 0; i < 3; i++)
		init_pgd[i] = xen_pgd[i];
	if (!(xen_pgd[3] & _PAGE_PRESENT))
		panic("Xen's pgd has no L2 in slot 3");
	/* Only the guest's slots: Xen fills slots xen_first_slot..511 itself. */
	memcpy(init_pmd, entry_va(xen_pgd[3]), xen_first_slot * sizeof(uint64_t));
	init_pgd[3] = virt_to_machine((unsigned long)init_pmd) | _PAGE_PRESENT;

	for (va = VIRT_BASE; va < lowmem_end; va += PAGE_SIZE) {
		unsigned int slot = (va >> PMD_SHIFT) & (PTRS_PER_PTE - 1);
		uint64_t *ptes;

		if (!(init_pmd[slot] & _PAGE_PRESENT)) {
			if (new_l1_pages == EXTRA_L1_PAGES)
				panic("lowmem needs more than %u new L1 pages", EXTRA_L1_PAGES);
			ptes = lowmem_pte[new_l1_pages++];
			memset(ptes, 0, PAGE_SIZE);
			init_pmd[slot] = virt_to_machine((unsigned long)ptes) | _PAGE_TABLE;
		}
		ptes = entry_va(init_pmd[slot]);
		set_pte_setup(&ptes[(va >> PAGE_SHIFT) & (PTRS_PER_PTE - 1)],
			      mfn_pte(pfn_to_mfn(virt_to_pfn(va)), PAGE_KERNEL));
	}
	printk("seed: init_mm pgd %p: lowmem 0x%x bytes, %u ptes inserted, %u read-only kept\n",
	       (void *)init_pgd, (unsigned int)lowmem, ptes_inserted, ptes_kept_ro);
}

/* Machine address of the live PTE that maps `va` in the 1:1 kernel mapping. */
static uint64_t pte_maddr(const void *va)
{
	unsigned long addr = (unsigned long)va;
	uint64_t *ptes = entry_va(init_pmd[(addr >> PMD_SHIFT) & (PTRS_PER_PTE - 1)]);

	return virt_to_machine((unsigned long)&ptes[(addr >> PAGE_SHIFT) & (PTRS_PER_PTE - 1)]);
}

/* The new tables become read-only in one batched mmu_update (Linux: make_lowmem_page_readonly). */
static void make_tables_readonly(void)
{
	struct mmu_update req[2 + EXTRA_L1_PAGES];
	const void *pages[2 + EXTRA_L1_PAGES];
	unsigned int n = 0, i, done = 0;
	long rc;

	pages[n++] = init_pgd;
	pages[n++] = init_pmd;
	for (i = 0; i < new_l1_pages; i++)
		pages[n++] = lowmem_pte[i];
	for (i = 0; i < n; i++) {
		req[i].ptr = pte_maddr(pages[i]) | MMU_NORMAL_PT_UPDATE;
		req[i].val = mfn_pte(virt_to_mfn(pages[i]), PAGE_KERNEL_RO).pte;
	}
	rc = HYPERVISOR_mmu_update(req, n, &done, DOMID_SELF);
	if (rc || done != n)
		panic("making the new page tables read-only: %d (%u of %u done)", (int)rc, done, n);
	pv_ops.mmu.flush_tlb();
}

/* 6. Pin init_mm, load it, and let go of the page tables Xen built. */
static void xen_switch_to_init_mm(void)
{
	unsigned long pgd_mfn = virt_to_mfn(init_pgd);
	unsigned long xen_pgd_mfn = pfn_to_mfn(virt_to_pfn(xen_start_info->pt_base));

	make_tables_readonly();
	mmuext(MMUEXT_PIN_L3_TABLE, pgd_mfn, "pinning init_mm's pgd");
	pv_ops.mmu.write_cr3(xen_pfn_to_cr3(pgd_mfn));
	mmuext(MMUEXT_UNPIN_TABLE, xen_pgd_mfn, "unpinning Xen's pgd");
	init_mm.pgd = (pgd_t *)init_pgd;
	printk("seed: init_mm pinned, cr3 0x%x, Xen's pgd %p unpinned\n",
	       (unsigned int)pv_ops.mmu.read_cr3(), (void *)xen_start_info->pt_base);
}

/* 7. With writable_pagetables, plain stores to a PTE are emulated by Xen. */
static void xen_check_writable_pagetables(void)
{
	unsigned long va = (unsigned long)ptwr_page;
	uint64_t *ptes = entry_va(init_pmd[(va >> PMD_SHIFT) & (PTRS_PER_PTE - 1)]);
	volatile uint32_t *pte = (volatile uint32_t *)&ptes[(va >> PAGE_SHIFT) & (PTRS_PER_PTE - 1)];
	uint32_t low = pte[0], high = pte[1];

	pte[0] = 0;                     /* low half first: the entry stops being present */
	pte[1] = 0;
	pv_ops.mmu.flush_tlb_one(va);
	if (pte[0] || pte[1])
		panic("ptwr: pte of %p still 0x%x%08x after clearing", (void *)va, pte[1], pte[0]);
	pte[1] = high;                  /* high half first: harmless while P is clear */
	pte[0] = low;
	pv_ops.mmu.flush_tlb_one(va);
	ptwr_page[0] = 0x5a;            /* the CPU may now set the accessed/dirty bits */
	if ((pte[0] ^ low) & ~(uint32_t)(_PAGE_ACCESSED | _PAGE_DIRTY) || ptwr_page[0] != 0x5a)
		panic("ptwr: pte of %p was not restored", (void *)va);
	printk("seed: ptwr: pte of %p cleared and restored by 4 direct writes\n", (void *)va);
}

/* 8. The kernel's GDT, its segments, and a TLS descriptor. */
static void xen_setup_gdt(void)
{
	struct desc_ptr dtr = {
		.size = GDT_ENTRIES * 8 - 1, .address = (unsigned long)gdt_page,
	};
	/* Not accessed yet: loading %gs makes the CPU set the bit in the read-only GDT. */
	uint64_t tls = GDT_ENTRY(0xc0f2, (unsigned long)tls_block, 0xfffff);
	uint32_t seen;
	long rc;

	/* DPL 0 on purpose for the kernel segments: Xen raises it to 1. */
	gdt_page[GDT_ENTRY_KERNEL_CS] = GDT_ENTRY(0xc09b, 0, 0xfffff);
	gdt_page[GDT_ENTRY_KERNEL_DS] = GDT_ENTRY(0xc093, 0, 0xfffff);
	gdt_page[GDT_ENTRY_USER_CS] = GDT_ENTRY(0xc0fb, 0, 0xfffff);
	gdt_page[GDT_ENTRY_USER_DS] = GDT_ENTRY(0xc0f3, 0, 0xfffff);
	pv_ops.cpu.load_gdt(&dtr);

	asm volatile ("ljmp %0, $1f\n1:" : : "i" (__KERNEL_CS));
	asm volatile ("movl %0, %%ds; movl %0, %%es" : : "r" (__KERNEL_DS));

	rc = HYPERVISOR_update_descriptor(virt_to_machine((unsigned long)&gdt_page[GDT_ENTRY_TLS]),
					  tls);
	if (rc)
		panic("update_descriptor of the TLS entry failed: %d", (int)rc);
	asm volatile ("movl %1, %%gs; movl %%gs:0, %0" : "=r" (seen) : "r" (__TLS_SELECTOR));
	if (seen != TLS_MAGIC)
		panic("%%gs:0 is 0x%x, not 0x%x", seen, TLS_MAGIC);
	printk("seed: gdt %p mfn 0x%x: %u entries, cs 0x%x ds 0x%x, tls base %p, %%gs:0 0x%x\n",
	       (void *)gdt_page, (unsigned int)virt_to_mfn(gdt_page), GDT_ENTRIES, __KERNEL_CS,
	       __KERNEL_DS, (void *)tls_block, seen);
}

static long reservation(unsigned int op, uint32_t *frame)
{
	struct xen_memory_reservation r = {
		.extent_start = (uint32_t)(unsigned long)frame, .nr_extents = 1,
		.extent_order = 0, .mem_flags = 0, .domid = DOMID_SELF,
	};

	return HYPERVISOR_memory_op(op, &r);
}

static long domain_pages(unsigned int op)
{
	domid_t self = DOMID_SELF;

	return HYPERVISOR_memory_op(op, &self);
}

/* 9. Give one page back to Xen and take one again (drivers/xen/balloon.c). */
static void xen_balloon_round_trip(void)
{
	unsigned long va = kva(balloon_page);
	unsigned long pfn = virt_to_pfn(va);
	uint32_t *p2m = (uint32_t *)xen_start_info->mfn_list;
	uint32_t frame = pfn_to_mfn(pfn), old_mfn = frame, released, current, maximum;
	struct mmu_update m2p;
	long rc;

	rc = HYPERVISOR_update_va_mapping(va, 0, UVMF_INVLPG);
	if (rc)
		panic("balloon: unmapping %p failed: %d", (void *)va, (int)rc);
	if (reservation(XENMEM_decrease_reservation, &frame) != 1)
		panic("balloon: decrease_reservation of mfn 0x%x failed", old_mfn);
	p2m[pfn] = INVALID_P2M_ENTRY;
	released = domain_pages(XENMEM_current_reservation);

	frame = pfn;
	if (reservation(XENMEM_populate_physmap, &frame) != 1)
		panic("balloon: populate_physmap of pfn 0x%x failed", (unsigned int)pfn);
	p2m[pfn] = frame;
	m2p.ptr = ((uint64_t)frame << PAGE_SHIFT) | MMU_MACHPHYS_UPDATE;
	m2p.val = pfn;
	rc = HYPERVISOR_mmu_update(&m2p, 1, NULL, DOMID_SELF);
	if (rc)
		panic("balloon: MMU_MACHPHYS_UPDATE failed: %d", (int)rc);
	rc = HYPERVISOR_update_va_mapping(va, mfn_pte(frame, PAGE_KERNEL).pte, UVMF_INVLPG);
	if (rc)
		panic("balloon: remapping %p failed: %d", (void *)va, (int)rc);
	balloon_page[0] = 0xb1;
	if (balloon_page[0] != 0xb1 || mfn_to_pfn(frame) != pfn)
		panic("balloon: the new page at %p is not usable", (void *)va);
	current = domain_pages(XENMEM_current_reservation);
	maximum = domain_pages(XENMEM_maximum_reservation);
	printk("seed: balloon: pfn 0x%x mfn 0x%x released (%u pages), repopulated with mfn 0x%x "
	       "(%u of max %u pages)\n", (unsigned int)pfn, old_mfn, released, frame, current,
	       maximum);
}

void xen_memory_phase(void)
{
	xen_enable_vm_assists();
	xen_map_shared_info();
	xen_setup_machphys_mapping();
	xen_memory_map_setup();
	xen_build_init_mm();
	xen_switch_to_init_mm();
	xen_check_writable_pagetables();
	xen_setup_gdt();
	xen_balloon_round_trip();
}
