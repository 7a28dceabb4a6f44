/*
 * The steps of the fuzz stream: one step is one entry of the stream (the call index the
 * harness reports) and makes one to a few hypercalls.
 *
 *   raw          any number (0..63, 64..127, random words) with generated arguments
 *   table        turn an arena page into an L1/L2/L3 (make it writable, fill it, map it
 *                read-only, pin it): the sequences a PV kernel uses, done at random
 *   uvm          update_va_mapping on arena pages and generated addresses
 *   mmu_update   batches of pagetable writes into arena tables and the live ones
 *   mmuext       batches of pins, unpins, base pointers, flushes, LDTs, page copies
 *   descriptor   set_gdt and update_descriptor with interesting descriptors
 *   multicall    batches of the above, with bad lists and huge counts
 *   iret         HYPERVISOR_iret with a forged frame (ring 1, ring 3, odd selectors)
 *
 * sanitize_call() keeps the guest alive unless wild=1: it never lets a call shut the
 * domain down, block it for good, take its only vcpu offline, or make Xen write into
 * the guest's vital frames or unmap them.  ABI: xen/include/public/xen.h, sched.h,
 * vcpu.h, grant_table.h, memory.h (compat layouts); XEN-PV-ABI.md section 3.
 */
#include "fuzz.h"

#define HC_XEN_VERSION   17
#define MC_ENTRY_WORDS   8

/* -- hypercalls ------------------------------------------------------------------------- */
long do_call(uint32_t nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5)
{
	uint32_t regs[6] = { nr, a1, a2, a3, a4, a5 };

	fuzz_hypercalls++;
	return fuzz_hypercall(regs);
}

static long call7(const uint32_t c[7])
{
	return do_call(c[0], c[1], c[2], c[3], c[4], c[5]);
}

static int maps_frame(uint64_t pte, uint32_t mfn);

static uint32_t hole_pointer(void)
{
	return 0xf5800000 + (below(0x0a800000) & ~3u);
}

/* A pointer Xen cannot read: in the hole, or straddling or misaligned into it.  (Low
 * addresses are no good: the stream may have mapped arena pages there.) */
static uint32_t bad_pointer(void)
{
	return chance(25) ? 0xf5800000 - 4 + below(8) : hole_pointer() | below(4);
}

static int arena_index(uint32_t mfn)
{
	int i;

	for (i = 0; i < ARENA_PAGES; i++)
		if (lay.arena_mfn[i] == mfn)
			return i;
	return -1;
}

static int boot_l1_index(uint32_t mfn)
{
	uint32_t i;

	for (i = 0; i < lay.nr_boot_l1; i++)
		if (lay.l1_mfn[i] == mfn)
			return (int)i;
	return -1;
}

/* The live L1 entry that maps arena page `page`: (L1 mfn, slot). */
static void arena_pte_slot(uint32_t page, uint32_t *mfn, uint32_t *slot)
{
	uint32_t va = arena_page_va(page);

	*mfn = lay.l1_mfn[(va - VIRT_BASE) >> PMD_SHIFT];
	*slot = (va >> PAGE_SHIFT) & 511;
}

static uint64_t keep_frame_safe(uint64_t pte)
{
	uint64_t mfn = (pte >> PAGE_SHIFT) & 0xffffffffffULL;

	if (!(pte & 1) || mfn >> 32 || !vital_mfn((uint32_t)mfn))
		return pte;
	return (pte & ~(0xffffffffffULL << PAGE_SHIFT))
	       | ((uint64_t)lay.arena_mfn[(uint32_t)mfn % ARENA_PAGES] << PAGE_SHIFT);
}

/* -- sanitizing: keep the guest alive --------------------------------------------------- */
/* Is `mfn` an arena frame, mapped at its own arena VA, whose boot slots are empty (so
 * that as an L2 in L3 slots 0..2 it cannot alias the kernel's boot L1s)? */
static int arena_plain(uint32_t mfn)
{
	uint32_t l1, slot, i;
	const uint64_t *t;
	int p = arena_index(mfn);

	if (p < 0)
		return 0;
	arena_pte_slot((uint32_t)p, &l1, &slot);
	if (!maps_frame(boot_l1_entries(l1)[slot], mfn))
		return 0;
	t = (const uint64_t *)arena_page_va((uint32_t)p);
	for (i = 0; i <= lay.nr_boot_l1; i++)
		if (t[i] & 1)
			return 0;
	return 1;
}

/* A value for slot 0..2 of a (possible) L3: never an L2 that could map the boot L1s
 * below VIRT_BASE.  Frames that are not the domain's, or scratch frames, are kept: Xen
 * refuses them. */
static uint64_t l3_value_safe(uint64_t v)
{
	uint64_t mfn = (v >> PAGE_SHIFT) & 0xffffffffffULL;
	uint32_t i;

	if (fuzz_wild || !(v & 1) || mfn >= lay.nr_pages)
		return v;
	for (i = 0; i < SCRATCH_PAGES - 2; i++)
		if (lay.scratch_mfn[i] == mfn)
			return v;
	return arena_plain((uint32_t)mfn) ? v : v & ~1ULL;
}

static void sanitize_mmu_req(struct mmu_update *req)
{
	uint32_t cmd = (uint32_t)req->ptr & 7;
	uint64_t mfn64 = req->ptr >> PAGE_SHIFT;
	uint32_t mfn, slot, page;
	int l1;

	if (cmd == MMU_MACHPHYS_UPDATE || mfn64 >> 32)
		return;
	mfn = (uint32_t)mfn64;
	slot = ((uint32_t)req->ptr & 0xfff) >> 3;
	l1 = boot_l1_index(mfn);
	if (l1 >= 0) {
		uint32_t va = VIRT_BASE + ((uint32_t)l1 << PMD_SHIFT) + (slot << PAGE_SHIFT);

		if (va < lay.arena_va || va >= lay.scratch_va) {
			page = below(ARENA_PAGES);
			arena_pte_slot(page, &mfn, &slot);
		}
		req->val = keep_frame_safe(req->val);
	} else if ((mfn == lay.l2_mfn || arena_index(mfn) >= 0) && slot <= lay.nr_boot_l1) {
		/* The boot slots of the live L2 and of arena L2s (which may be the slot-3 L2 of
		 * an arena pgd loaded as CR3) map the kernel, and the slot after them stays
		 * empty so that a count running off the end of scratch faults: leave them. */
		slot = lay.nr_boot_l1 + 1 + below(L2_FIRST_XEN - lay.nr_boot_l1 - 1);
	} else if (vital_mfn(mfn) && mfn != lay.l3_mfn) {
		mfn = safe_mfn(mfn);                    /* a plain write into a vital page */
	}
	if (slot < 3 && (mfn == lay.l3_mfn || arena_index(mfn) >= 0))
		req->val = l3_value_safe(req->val);
	req->ptr = ((uint64_t)mfn << PAGE_SHIFT) | (slot << 3) | cmd;
}

static int maps_frame(uint64_t pte, uint32_t mfn)
{
	return (pte & 1) && ((pte >> PAGE_SHIFT) & 0xffffffffffULL) == mfn;
}

/* May `mfn` become CR3?  The live pgd, or an arena pgd whose slot-3 L2 maps the kernel
 * as the live one does (read through the arena mappings; a fault aborts the step). */
static int safe_baseptr(uint32_t mfn)
{
	const uint64_t *l3, *l2, *live_l2 = lay.l2_va;
	uint32_t l2_mfn, i, page, l1, slot;
	int p;

	if (mfn == lay.l3_mfn)
		return 1;
	p = arena_index(mfn);
	if (p < 0)
		return 0;
	arena_pte_slot((uint32_t)p, &l1, &slot);
	if (!maps_frame(boot_l1_entries(l1)[slot], mfn))
		return 0;
	l3 = (const uint64_t *)arena_page_va((uint32_t)p);
	if (!(l3[3] & 1) || (l3[3] >> 32))
		return 0;
	l2_mfn = (uint32_t)(l3[3] >> PAGE_SHIFT);
	p = arena_index(l2_mfn);
	if (p < 0)
		return 0;
	page = (uint32_t)p;
	arena_pte_slot(page, &l1, &slot);
	if (!maps_frame(boot_l1_entries(l1)[slot], l2_mfn))
		return 0;
	l2 = (const uint64_t *)arena_page_va(page);
	for (i = 0; i < lay.nr_boot_l1; i++)
		if ((l2[i] | 0x60) != (live_l2[i] | 0x60))
			return 0;
	return !(l2[lay.nr_boot_l1] & 1);
}

static void sanitize_mmuext(struct mmuext_op *op)
{
	switch (op->cmd) {
	case MMUEXT_CLEAR_PAGE:
	case MMUEXT_COPY_PAGE:
		op->arg1.mfn = safe_mfn(op->arg1.mfn);
		break;
	case MMUEXT_NEW_BASEPTR:
		if (!safe_baseptr(op->arg1.mfn))
			op->arg1.mfn = lay.l3_mfn;
		break;
	default:
		break;
	}
}

static void *in_scratch(uint32_t va, uint32_t len)
{
	return scratch_range(va, len) ? (void *)va : 0;
}

/* Sanitize `count` records of `size` bytes at `va`; huge counts on scratch are cut to
 * 64 records plus a terminator record that Xen refuses (it stops a batch at the first
 * failure), so a huge count still reaches Xen. */
static void sanitize_records(uint32_t va, uint32_t count, uint32_t size,
			     void (*one)(void *), const void *terminator)
{
	uint32_t i;

	for (i = 0; i < count && i < 64 && in_scratch(va + i * size, size); i++)
		one((void *)(va + i * size));
	if (i == 64 && count > 64 && in_scratch(va + i * size, size))
		memcpy((void *)(va + i * size), terminator, size);
}

static void one_mmu_req(void *p) { sanitize_mmu_req(p); }
static void one_mmuext(void *p) { sanitize_mmuext(p); }

/*
 * Grants the domain gives itself, so that map, unmap and copy reach past the entry checks:
 * now and then, before a grant_table_op, one of entries GRANT_FIRST.. is rewritten (by a
 * GNTTABOP_copy into the table's first frame) to grant an arena frame to this domain
 * (d1 under pvdbg), read-only or writable, to accept a transfer, or to nothing.  Map
 * records naming this domain become device mappings: a host mapping would leave a grant
 * PTE that later random page-table calls remove, which Xen punishes with domain_crash.
 */
#define GRANT_FIRST     8
#define GRANT_COUNT     8
#define FUZZ_DOMID      1

static uint32_t grant_frame_mfn;
static uint32_t grant_entry_buf[2] __attribute__((aligned(8)));
static uint32_t granted_mfn[GRANT_COUNT];

struct gnttab_copy_rec {
	uint32_t src;
	uint16_t src_dom, src_off;
	uint32_t dst;
	uint16_t dst_dom, dst_off;
	uint16_t len, flags;
	int16_t status, pad;
};

static void self_grant(void)
{
	static const uint16_t entry_flags[] = { 0, 1, 1 | 4, 2 };   /* none, RW, RO, transfer */
	struct { uint16_t dom, pad; uint32_t nr_frames; int16_t status, pad2; uint32_t list; } setup;
	struct gnttab_copy_rec copy;
	uint32_t ref = below(GRANT_COUNT);
	uint32_t buf = (uint32_t)grant_entry_buf;

	if (!grant_frame_mfn) {
		setup.dom = DOMID_SELF;
		setup.nr_frames = 1;
		setup.status = 0;
		setup.list = (uint32_t)&grant_frame_mfn;
		if (_hypercall3(__HYPERVISOR_grant_table_op, 2, (unsigned long)&setup, 1) || setup.status) {
			grant_frame_mfn = 0;
			return;
		}
	}
	granted_mfn[ref] = lay.arena_mfn[below(ARENA_PAGES)];
	grant_entry_buf[0] = entry_flags[below(4)] | ((uint32_t)FUZZ_DOMID << 16);
	grant_entry_buf[1] = granted_mfn[ref];
	copy.src = pfn_to_mfn(virt_to_pfn(buf));
	copy.src_dom = DOMID_SELF;
	copy.src_off = buf & ~PAGE_MASK;
	copy.dst = grant_frame_mfn;
	copy.dst_dom = DOMID_SELF;
	copy.dst_off = (GRANT_FIRST + ref) * 8;
	copy.len = 8;
	copy.flags = 0;
	_hypercall3(__HYPERVISOR_grant_table_op, 5, (unsigned long)&copy, 1);
}

/* struct gnttab_copy (compat, 24 bytes): source {u32 ref|gmfn; u16 domid; u16 offset},
 * dest {the same}, u16 len, u16 flags, s16 status. */
static void one_gnttab_copy(void *p)
{
	struct gnttab_copy_rec *op = p;

	if (chance(30)) {                               /* source: a self-granted entry */
		op->flags |= 1;
		op->src = GRANT_FIRST + below(GRANT_COUNT);
		op->src_dom = chance(50) ? FUZZ_DOMID : DOMID_SELF;
	}
	if (chance(30)) {                               /* dest: a self-granted entry */
		op->flags |= 2;
		op->dst = GRANT_FIRST + below(GRANT_COUNT);
		op->dst_dom = chance(50) ? FUZZ_DOMID : DOMID_SELF;
	}
	if (!(op->flags & 2))                           /* GNTCOPY_dest_gref clear: a frame */
		op->dst = safe_mfn(op->dst);
}

/* struct gnttab_transfer (compat, 16 bytes): u32 mfn, u16 domid, u32 ref at 8, s16 status. */
static void one_gnttab_transfer(void *p)
{
	uint32_t *w = p;

	w[0] = safe_mfn(w[0]);
}

/* struct gnttab_map_grant_ref (32 bytes): u64 host_addr, u32 flags, u32 ref, u16 dom, ...
 * A successful map replaces the PTE at host_addr (a linear address, or the PTE's machine
 * address with GNTMAP_contains_pte): keep it off the guest's own code and data. */
static void one_gnttab_map(void *p)
{
	uint32_t *w = p;

	if (chance(50)) {
		((uint16_t *)p)[8] = FUZZ_DOMID;
		w[3] = GRANT_FIRST + below(GRANT_COUNT);
	}
	if (((uint16_t *)p)[8] == FUZZ_DOMID)
		w[2] = (w[2] & ~2u) | 1;                /* device_map, never host_map */
	if (w[1])
		return;                                 /* beyond 32 bits: refused */
	if (w[2] & 16) {                                /* GNTMAP_contains_pte */
		if (vital_mfn(w[0] >> PAGE_SHIFT))
			w[2] &= ~16u;
		else
			return;
	}
	if (vital_va(w[0]) || in_scratch(w[0], 1))
		w[0] = arena_page_va(below(ARENA_PAGES));
}

/* struct gnttab_unmap_grant_ref (24 bytes): u64 host_addr, u64 dev_bus_addr, u32 handle. */
static void one_gnttab_unmap(void *p)
{
	uint32_t *w = p;

	if (chance(50)) {
		w[2] = granted_mfn[below(GRANT_COUNT)] << PAGE_SHIFT;
		w[3] = 0;
		w[4] = below(16);
	}
}

/* struct gnttab_unmap_and_replace (24 bytes): u64 host_addr, u64 new_addr, u32 handle:
 * the PTE at new_addr is taken away to replace the grant mapping. */
static void one_gnttab_replace(void *p)
{
	uint32_t *w = p;

	if (!w[3] && (vital_va(w[2]) || in_scratch(w[2], 1)))
		w[2] = arena_page_va(below(ARENA_PAGES));
}

void sanitize_call(uint32_t c[7], int in_multicall)
{
	static const struct mmu_update mmu_stop = { 7, 0 };
	static const struct mmuext_op ext_stop = { 0xffff, { 0 }, { 0 } };
	static const uint8_t zero_record[32];
	uint32_t *w;

	switch (c[0]) {
	case __HYPERVISOR_set_trap_table:
		restore_owed |= R_TRAPS;
		break;
	case __HYPERVISOR_stack_switch:
		restore_owed |= R_STACK;
		break;
	case __HYPERVISOR_set_callbacks:
	case __HYPERVISOR_callback_op:
	case __HYPERVISOR_nmi_op:
		restore_owed |= R_CALLBACKS;
		break;
	case __HYPERVISOR_set_debugreg:
		restore_owed |= R_DEBUGREGS;
		break;
	default:
		break;
	}
	if (fuzz_wild)
		return;
	switch (c[0]) {
	case __HYPERVISOR_mmu_update:
	case __HYPERVISOR_mmuext_op:
		/* Records outside scratch (the arena may hold copies of the boot L1s) cannot be
		 * checked: Xen gets a pointer it refuses instead. */
		if (!in_scratch(c[1], 1))
			c[1] = bad_pointer();
		if (c[0] == __HYPERVISOR_mmu_update)
			sanitize_records(c[1], c[2] & 0x7fffffff, sizeof(struct mmu_update),
					 one_mmu_req, &mmu_stop);
		else
			sanitize_records(c[1], c[2] & 0x7fffffff, sizeof(struct mmuext_op),
					 one_mmuext, &ext_stop);
		break;
	case __HYPERVISOR_sched_op_compat:
		if (c[1] == SCHEDOP_block || c[1] == SCHEDOP_shutdown)
			c[1] = SCHEDOP_yield;
		break;
	case __HYPERVISOR_update_descriptor:
		if (!c[2] && vital_mfn(c[1] >> PAGE_SHIFT))
			c[1] = (safe_mfn(c[1] >> PAGE_SHIFT) << PAGE_SHIFT) | (c[1] & 0xfff);
		break;
	case __HYPERVISOR_update_va_mapping:
	case __HYPERVISOR_update_va_mapping_otherdomain: {
		uint64_t pte = keep_frame_safe(((uint64_t)c[3] << 32) | c[2]);

		if (vital_va(c[1]) || in_scratch(c[1], 1))
			c[1] = arena_page_va(below(ARENA_PAGES));
		c[2] = (uint32_t)pte;
		c[3] = (uint32_t)(pte >> 32);
		break;
	}
	case __HYPERVISOR_console_io:
		if (c[1] == CONSOLEIO_write && c[2] > 1024 && c[3] < HYPERVISOR_VIRT_START_PAE)
			c[2] = below(1024);
		break;
	case __HYPERVISOR_grant_table_op:
		/* Xen writes a status back into every record: a huge count on scratch would
		 * run into the multicall page while a batch is being read. */
		if (c[3] > 64 && in_scratch(c[2], 1))
			c[3] = 64;
		if (chance(25))
			self_grant();
		switch (c[1] & 0xfff) {
		case 1:                                 /* unmap_grant_ref */
			if (in_scratch(c[2], 1))
				sanitize_records(c[2], c[3], 24, one_gnttab_unmap, zero_record);
			break;
		case 0:                                 /* map_grant_ref */
		case 4:                                 /* transfer */
		case 5:                                 /* copy */
		case 7:                                 /* unmap_and_replace */
			if (!in_scratch(c[2], 1))
				c[2] = bad_pointer();
			if ((c[1] & 0xfff) == 0)
				sanitize_records(c[2], c[3], 32, one_gnttab_map, zero_record);
			else if ((c[1] & 0xfff) == 4)
				sanitize_records(c[2], c[3], 16, one_gnttab_transfer, zero_record);
			else if ((c[1] & 0xfff) == 5)
				sanitize_records(c[2], c[3], 24, one_gnttab_copy, zero_record);
			else
				sanitize_records(c[2], c[3], 24, one_gnttab_replace, zero_record);
			break;
		default:
			break;
		}
		break;
	case __HYPERVISOR_iret:
		if (in_multicall)
			c[0] = HC_XEN_VERSION;  /* iret reads its frame from the caller's stack */
		break;
	case __HYPERVISOR_vcpu_op:
		if (c[1] == 2 && c[2] == 0)                     /* VCPUOP_down on vcpu 0 */
			c[2] = 1;
		if (c[1] == 5 || c[1] == 13) {                  /* runstate / time areas */
			w = in_scratch(c[3], 8);
			if (!w)
				c[3] = hole_pointer();
			else if (vital_va(w[0]))
				w[0] = lay.scratch_va + (below(SCRATCH_SIZE - 2 * PAGE_SIZE - 64) & ~7u);
		}
		if (c[1] == 10) {                               /* register_vcpu_info */
			w = in_scratch(c[3], 16);
			if (!w) {
				c[3] = hole_pointer();
			} else if (!w[1]) {
				/* Half the time into a page only Xen writes, so that the upcall
				 * mask it copies (1) stays set. */
				w[0] = chance(50) ? vcpu_info_page_mfn : safe_mfn(w[0]);
			}
		}
		break;
	case __HYPERVISOR_sched_op:
		switch (c[1]) {
		case SCHEDOP_block:
			c[1] = SCHEDOP_yield;
			break;
		case SCHEDOP_shutdown:
			c[2] = hole_pointer();
			break;
		case SCHEDOP_poll:                      /* ports, nr_ports, u64 timeout (ns) */
			w = in_scratch(c[2], 16);
			if (!w) {
				c[2] = hole_pointer();
			} else {
				w[2] = 1 + below(1000);
				w[3] = 0;
			}
			break;
		case SCHEDOP_remote_shutdown:           /* u16 domid, u32 reason */
			w = in_scratch(c[2], 8);
			if (!w)
				c[2] = hole_pointer();
			else if ((w[0] & 0xffff) == 1 || (w[0] & 0xffff) == DOMID_SELF)
				w[0] &= 0xffff0000;
			break;
		case SCHEDOP_watchdog:                  /* u32 id, u32 timeout (s) */
			w = in_scratch(c[2], 8);
			if (!w)
				c[2] = hole_pointer();
			else
				w[1] = 0;
			break;
		default:
			break;
		}
		break;
	default:
		break;
	}
}

/* -- step: raw ---------------------------------------------------------------------------- */
static uint32_t gen_number(void)
{
	static const uint32_t frequent[] = { 1, 12, 13, 14, 20, 24, 26, 29, 32, 2, 10 };
	uint32_t r = below(100);

	if (r < 70)
		return below(64);
	if (r < 80)
		return 64 + below(64);
	if (r < 88)
		return rnd();
	return frequent[below(sizeof(frequent) / sizeof(frequent[0]))];
}

/* Argument `i` (1..6) of a raw call: sub-ops first, then a good pointer more often than
 * gen_value gives one (so structure fields get read), vcpu 0 for the vcpu id. */
static uint32_t gen_arg(uint32_t nr, int i)
{
	uint32_t v;

	if (i == 1 && chance(50))
		v = below(24);
	else if (i == 2 && nr == __HYPERVISOR_vcpu_op && chance(60))
		v = 0;
	else if (i >= 2 && chance(30))
		v = lay.scratch_va + (below(SCRATCH_SIZE - 2 * PAGE_SIZE - 256) & ~7u);
	else
		v = gen_value();
	if (in_scratch(v, 4))
		fill_words(v, 8 + below(40));
	return v;
}

static void step_multicall(void);
static void step_iret(void);

static void step_raw(void)
{
	uint32_t c[7];
	int i;

	c[0] = gen_number();
	if (c[0] == __HYPERVISOR_iret) {
		step_iret();
		return;
	}
	if (c[0] == __HYPERVISOR_multicall) {
		step_multicall();
		return;
	}
	for (i = 1; i < 7; i++)
		c[i] = gen_arg(c[0], i);
	sanitize_call(c, 0);
	call7(c);
}

/* -- steps: memory management -------------------------------------------------------------- */
static long uvm(uint32_t va, uint64_t pte, uint32_t flags)
{
	uint32_t c[7] = { __HYPERVISOR_update_va_mapping, va, (uint32_t)pte,
			  (uint32_t)(pte >> 32), flags, 0, 0 };

	sanitize_call(c, 0);
	return call7(c);
}

static long mmuext1(uint32_t cmd, uint32_t arg1, uint32_t arg2)
{
	struct mmuext_op *op = scratch_alloc(sizeof(*op));
	uint32_t c[7] = { __HYPERVISOR_mmuext_op, (uint32_t)op, 1, 0, DOMID_SELF, 0, 0 };

	op->cmd = cmd;
	op->arg1.mfn = arg1;
	op->arg2.src_mfn = arg2;
	sanitize_call(c, 0);
	return call7(c);
}

static uint32_t arena_mfn_any(void)
{
	return lay.arena_mfn[below(ARENA_PAGES)];
}

/* An entry for a table of `level` (1..3) built in the arena. */
static uint64_t table_entry(uint32_t level)
{
	if (chance(30))
		return gen_pte();
	switch (level) {
	case 1:
		return ((uint64_t)gen_mfn() << PAGE_SHIFT) | (chance(50) ? 0x63 : 0x21);
	case 2:
		return ((uint64_t)arena_mfn_any() << PAGE_SHIFT) | (chance(80) ? 0x67 : 0x25);
	default:
		return ((uint64_t)arena_mfn_any() << PAGE_SHIFT) | 1;
	}
}

static void step_table(void)
{
	uint32_t page = below(ARENA_PAGES), level = 1 + below(3), n, i;
	uint32_t va = arena_page_va(page), mfn = lay.arena_mfn[page];
	uint64_t *t = (uint64_t *)va;
	const uint64_t *live_l2 = lay.l2_va;

	if (chance(30))
		mmuext1(MMUEXT_UNPIN_TABLE, mfn, 0);
	uvm(va, ((uint64_t)mfn << PAGE_SHIFT) | 0x63, UVMF_INVLPG);
	if (chance(60))
		memset(t, 0, PAGE_SIZE);
	if (level == 2 && chance(60))
		for (i = 0; i < lay.nr_boot_l1; i++)
			t[i] = live_l2[i];
	if (level == 3) {
		for (i = 0; i < 4; i++)
			t[i] = chance(70) ? table_entry(3) : 0;
	} else {
		for (n = below(8); n; n--) {
			i = gen_slot();
			if (level == 2 && i < lay.nr_boot_l1 && chance(90))
				continue;
			t[i] = table_entry(level);
		}
	}
	for (i = 0; i < 3; i++)
		t[i] = l3_value_safe(t[i]);     /* whatever it becomes, it may be pinned as L3 */
	if (chance(90))
		uvm(va, ((uint64_t)mfn << PAGE_SHIFT) | 0x21, UVMF_INVLPG);
	if (chance(85))
		mmuext1(chance(90) ? MMUEXT_PIN_L1_TABLE + level - 1 : below(4), mfn, 0);
}

static void step_uvm(void)
{
	uint32_t page = below(ARENA_PAGES);
	uint32_t va = chance(80) ? arena_page_va(page) : gen_value();
	uint64_t pte;
	uint32_t flags = below(8);

	switch (below(4)) {
	case 0:
		pte = ((uint64_t)lay.arena_mfn[page] << PAGE_SHIFT) | (chance(50) ? 0x63 : 0x21);
		break;
	case 1:
		pte = ((uint64_t)gen_mfn() << PAGE_SHIFT) | (chance(50) ? 0x63 : 0x21);
		break;
	default:
		pte = gen_pte();
		break;
	}
	if (chance(15))
		flags |= gen_value() & ~7u;             /* a vcpumask pointer (UVMF_MULTI) */
	if (chance(10)) {
		uint32_t c[7] = { __HYPERVISOR_update_va_mapping_otherdomain, va, (uint32_t)pte,
				  (uint32_t)(pte >> 32), flags, chance(50) ? DOMID_SELF : gen_value(), 0 };

		sanitize_call(c, 0);
		call7(c);
		return;
	}
	uvm(va, pte, flags);
}

/* A pagetable-entry address for mmu_update (command in bits 2:0). */
static uint64_t gen_pt_ptr(uint32_t cmd)
{
	uint32_t mfn, slot;

	switch (below(10)) {
	case 0: case 1: case 2: case 3:
		mfn = arena_mfn_any();
		slot = gen_slot();
		break;
	case 4: case 5:
		arena_pte_slot(below(ARENA_PAGES), &mfn, &slot);
		break;
	case 6:
		mfn = lay.l2_mfn;
		slot = chance(70) ? lay.nr_boot_l1 + below(8) : L2_FIRST_XEN + below(84);
		break;
	case 7:
		mfn = lay.l3_mfn;
		slot = below(5);
		break;
	case 8:
		mfn = gen_mfn();
		slot = gen_slot();
		break;
	default:
		return ((uint64_t)below(16) << 32) | (rnd() & ~7u) | cmd;
	}
	return ((uint64_t)mfn << PAGE_SHIFT) | (slot << 3) | cmd;
}

static uint32_t gen_mmu_cmd(void)
{
	uint32_t r = below(20);

	if (r < 13)
		return MMU_NORMAL_PT_UPDATE;
	if (r < 16)
		return MMU_PT_UPDATE_PRESERVE_AD;
	if (r < 18)
		return MMU_MACHPHYS_UPDATE;
	return r == 18 ? MMU_PT_UPDATE_NO_TRANSLATE : 4 + below(4);
}

static uint32_t gen_count(uint32_t n)
{
	if (chance(5))
		return gen_value();
	if (chance(3))
		return n | 0x80000000;                  /* MMU_UPDATE_PREEMPTED */
	return n;
}

static uint32_t gen_done_ptr(void)
{
	return chance(60) ? (uint32_t)scratch_alloc(4) : gen_value();
}

static void step_mmu_update(void)
{
	uint32_t n = 1 + below(8), i;
	struct mmu_update *reqs = scratch_alloc(n * sizeof(*reqs));
	uint32_t c[7];

	for (i = 0; i < n; i++) {
		uint32_t cmd = gen_mmu_cmd();

		if (cmd == MMU_MACHPHYS_UPDATE) {
			reqs[i].ptr = ((uint64_t)gen_mfn() << PAGE_SHIFT) | cmd;
			reqs[i].val = chance(50) ? below(lay.nr_pages + 16) : gen_value();
		} else {
			reqs[i].ptr = gen_pt_ptr(cmd);
			reqs[i].val = gen_pte();
		}
	}
	c[0] = __HYPERVISOR_mmu_update;
	c[1] = chance(90) ? (uint32_t)reqs : gen_value();
	c[2] = gen_count(n);
	c[3] = gen_done_ptr();
	c[4] = chance(85) ? DOMID_SELF : gen_value();
	c[5] = c[6] = 0;
	sanitize_call(c, 0);
	call7(c);
}

static void gen_mmuext_op(struct mmuext_op *op)
{
	uint32_t r = below(24);

	op->arg2.src_mfn = 0;
	if (r < 5) {
		op->cmd = MMUEXT_PIN_L1_TABLE + below(4);
		op->arg1.mfn = gen_mfn();
	} else if (r < 8) {
		op->cmd = MMUEXT_UNPIN_TABLE;
		op->arg1.mfn = gen_mfn();
	} else if (r < 10) {
		op->cmd = MMUEXT_NEW_BASEPTR;
		op->arg1.mfn = chance(50) ? lay.l3_mfn : gen_mfn();
	} else if (r < 12) {
		op->cmd = MMUEXT_TLB_FLUSH_LOCAL + below(7);    /* flushes, invlpg, multi, all */
		op->arg1.linear_addr = chance(50) ? arena_page_va(below(ARENA_PAGES)) : gen_value();
		op->arg2.vcpumask = gen_value();
	} else if (r < 14) {
		op->cmd = MMUEXT_SET_LDT;
		op->arg1.linear_addr = chance(50) ? arena_page_va(below(ARENA_PAGES)) : gen_value();
		op->arg2.nr_ents = chance(60) ? below(600) : gen_value();
	} else if (r < 17) {
		op->cmd = chance(50) ? MMUEXT_CLEAR_PAGE : MMUEXT_COPY_PAGE;
		op->arg1.mfn = gen_mfn();
		op->arg2.src_mfn = gen_mfn();
	} else if (r < 19) {
		op->cmd = MMUEXT_NEW_USER_BASEPTR + below(6) * (chance(50) ? 1 : 0);
		op->arg1.mfn = gen_mfn();
	} else if (r < 21) {
		op->cmd = chance(50) ? MMUEXT_MARK_SUPER : MMUEXT_UNMARK_SUPER;
		op->arg1.mfn = gen_mfn();
	} else {
		op->cmd = chance(50) ? below(32) : gen_value();
		op->arg1.mfn = gen_value();
		op->arg2.src_mfn = gen_value();
	}
}

static void step_mmuext(void)
{
	uint32_t n = 1 + below(4), i;
	struct mmuext_op *ops = scratch_alloc(n * sizeof(*ops));
	uint32_t c[7];

	for (i = 0; i < n; i++)
		gen_mmuext_op(&ops[i]);
	c[0] = __HYPERVISOR_mmuext_op;
	c[1] = chance(90) ? (uint32_t)ops : gen_value();
	c[2] = gen_count(n);
	c[3] = gen_done_ptr();
	c[4] = chance(85) ? DOMID_SELF : gen_value();
	c[5] = c[6] = 0;
	sanitize_call(c, 0);
	call7(c);
}

/* An L2 entry in a free slot of the live L2 that maps an L2 (a linear, "recursive"
 * mapping), read-only or writable; then a read through the window it opens. */
static void step_linear(void)
{
	uint32_t slot = lay.nr_boot_l1 + 1 + below(4);
	uint32_t target = chance(40) ? lay.l2_mfn : chance(50) ? arena_mfn_any() : lay.l3_mfn;
	struct mmu_update *req = scratch_alloc(sizeof(*req));
	volatile uint32_t *window;

	req->ptr = ((uint64_t)lay.l2_mfn << PAGE_SHIFT) | (slot << 3);
	req->val = ((uint64_t)target << PAGE_SHIFT) | (chance(50) ? 0x25 : 0x67);
	if (do_call(__HYPERVISOR_mmu_update, (uint32_t)req, 1, 0, DOMID_SELF, 0) == 0) {
		window = (volatile uint32_t *)(VIRT_BASE + (slot << PMD_SHIFT) + below(512) * PAGE_SIZE);
		(void)*window;
		if (chance(20))
			*window = 0;                    /* must fault: the window is read-only */
	}
	if (chance(70)) {
		req->val = 0;
		do_call(__HYPERVISOR_mmu_update, (uint32_t)req, 1, 0, DOMID_SELF, 0);
	}
}

/* -- step: descriptors ---------------------------------------------------------------------- */
static uint64_t gen_descriptor(void)
{
	static const uint64_t descs[] = {
		0x00cf9b000000ffffULL,  /* code, DPL 0: Xen raises DPL to 1 */
		0x00cfbb000000ffffULL,  /* code, DPL 1 */
		0x00cff3000000ffffULL,  /* data, DPL 3 */
		0x00cf93000000ffffULL,  /* data, DPL 0 */
		0x00af9b000000ffffULL,  /* L bit: refused */
		0x00c0b3000000f67fULL,  /* limit 0xf67ff pages: into the hole (widened) */
		0x00cfb3100000ffffULL,  /* base 0x10000000, 4 GiB: wraps into the hole */
		0x0000ec00e0080000ULL,  /* call gate, DPL 3, to 0xe008 (Xen ring 0): refused */
		0x0000ec00e0190000ULL,  /* call gate, DPL 3, to FLAT_RING1_CS */
		0x0000ac0000090000ULL,  /* call gate, DPL 1, to a guest selector */
		0x0000e50000000000ULL,  /* task gate: refused */
		0x0000890000000067ULL,  /* TSS: refused */
		0x0000820000000fffULL,  /* LDT descriptor: refused */
		0x0000ee00e0190000ULL,  /* interrupt gate: refused */
		0,
	};
	if (chance(70))
		return descs[below(sizeof(descs) / sizeof(descs[0]))];
	return ((uint64_t)rnd() << 32) | rnd();
}

static void step_descriptor(void)
{
	if (chance(40)) {
		uint32_t n = 1 + below(3), i, *frames = scratch_alloc(16 * 4);

		for (i = 0; i < 16; i++)
			frames[i] = gen_mfn();
		for (i = 0; i < n; i++) {
			uint32_t page = below(ARENA_PAGES);

			frames[i] = lay.arena_mfn[page];
			if (chance(60))
				uvm(arena_page_va(page), ((uint64_t)frames[i] << PAGE_SHIFT) | 0x21,
				    UVMF_INVLPG);
		}
		do_call(__HYPERVISOR_set_gdt, chance(90) ? (uint32_t)frames : gen_value(),
			chance(70) ? below(n * 512 + 1) : gen_value(), 0, 0, 0);
	} else {
		uint64_t desc = gen_descriptor();
		uint32_t c[7] = { __HYPERVISOR_update_descriptor, 0, 0, (uint32_t)desc,
				  (uint32_t)(desc >> 32), 0, 0 };
		uint64_t maddr = ((uint64_t)(chance(70) ? arena_mfn_any() : gen_mfn()) << PAGE_SHIFT)
				 | (chance(90) ? below(512) * 8 : below(PAGE_SIZE));

		c[1] = (uint32_t)maddr;
		c[2] = (uint32_t)(maddr >> 32);
		sanitize_call(c, 0);
		call7(c);
	}
}

/* -- step: multicall -------------------------------------------------------------------------- */
/* One multicall entry: a raw call, or a structured memory-management call. */
static void gen_entry(uint32_t *e)
{
	uint32_t c[7], i;

	if (chance(50)) {
		c[0] = gen_number();
		for (i = 1; i < 7; i++)
			c[i] = gen_arg(c[0], (int)i);
	} else {
		uint32_t r = below(3);
		struct mmu_update *req = scratch_alloc(sizeof(*req));
		struct mmuext_op *op = scratch_alloc(sizeof(*op));

		if (r == 0) {
			req->ptr = gen_pt_ptr(gen_mmu_cmd());
			req->val = gen_pte();
			c[0] = __HYPERVISOR_mmu_update;
			c[1] = (uint32_t)req;
			c[2] = 1;
			c[3] = 0;
			c[4] = DOMID_SELF;
		} else if (r == 1) {
			gen_mmuext_op(op);
			c[0] = __HYPERVISOR_mmuext_op;
			c[1] = (uint32_t)op;
			c[2] = 1;
			c[3] = 0;
			c[4] = DOMID_SELF;
		} else {
			uint64_t pte = gen_pte();

			c[0] = __HYPERVISOR_update_va_mapping;
			c[1] = arena_page_va(below(ARENA_PAGES));
			c[2] = (uint32_t)pte;
			c[3] = (uint32_t)(pte >> 32);
			c[4] = below(8);
		}
		c[5] = c[6] = 0;
	}
	sanitize_call(c, 1);
	e[0] = c[0];
	e[1] = rnd();                                   /* result: written by Xen */
	for (i = 0; i < 6; i++)
		e[2 + i] = c[1 + i];
}

static void step_multicall(void)
{
	/* The batch ends at the end of scratch: a longer count runs off the mapping. */
	uint32_t n = below(17), i, count;
	uint32_t *list = (uint32_t *)(lay.scratch_va + SCRATCH_SIZE - n * MC_ENTRY_WORDS * 4);

	for (i = 0; i < n; i++)
		gen_entry(list + i * MC_ENTRY_WORDS);
	count = chance(85) ? n : chance(50) ? n + 1 + below(4) : gen_value();
	/* Another list pointer must not name memory with unsanitized entries in it. */
	do_call(__HYPERVISOR_multicall, chance(90) ? (uint32_t)list : bad_pointer(), count, 0, 0, 0);
}

/* -- step: iret ----------------------------------------------------------------------------- */
static void step_iret(void)
{
	uint32_t f[6];

	f[0] = rnd();
	f[1] = (uint32_t)fuzz_iret_landing;
	f[2] = FLAT_RING1_CS;
	f[3] = gen_eflags();
	f[4] = lay.scratch_va + SCRATCH_SIZE / 2 + (below(SCRATCH_SIZE / 4) & ~3u);
	f[5] = FLAT_RING1_DS;
	switch (below(10)) {
	case 0: case 1: case 2: case 3:
		break;                                  /* back to ring 1 */
	case 4: case 5: case 6:
		f[2] = FLAT_RING3_CS;                   /* ring 3: #PF on the supervisor page */
		f[5] = FLAT_RING3_DS;
		break;
	case 7: case 8:
		f[2] = gen_selector();
		f[5] = gen_selector();
		f[4] = gen_value();
		break;
	default:
		/* Not into the guest's data, nor into the M2P: into the unmapped hole. */
		f[1] = fuzz_wild ? gen_value() : 0xf6000000 + (below(0x09e00000) & ~3u);
		break;
	}
	if (!fuzz_wild) {
		/* pvdbg keeps its ring-change trampolines at 0xffe00000 and up (Xen keeps them
		 * above 4 GiB): a jump there faults as on Xen, except onto the trampoline's own
		 * iret, which pops whatever the stack holds and resumes anywhere. */
		if (f[1] >= 0xffe00000)
			f[1] = 0xf6000000;
		if ((f[2] & 3) == 0)
			f[2] |= 1;      /* an iret to ring 0 crashes the domain (compat_iret) */
		/* EFLAGS.IF would unmask events (compat_iret): one could then reach a random
		 * event callback before the guest restores its own. */
		f[3] &= ~0x200u;
	}
	fuzz_hypercalls++;
	fuzz_iret(f);
}

/* -- one step ------------------------------------------------------------------------------- */
void fuzz_step(void)
{
	uint32_t r = below(100);

	scratch_reset();
	if (r < 30)
		step_raw();
	else if (r < 38)
		step_table();
	else if (r < 48)
		step_uvm();
	else if (r < 58)
		step_mmu_update();
	else if (r < 68)
		step_mmuext();
	else if (r < 71)
		step_linear();
	else if (r < 77)
		step_descriptor();
	else if (r < 90)
		step_multicall();
	else if (r < 93)
		step_iret();
	else
		step_raw();
}
