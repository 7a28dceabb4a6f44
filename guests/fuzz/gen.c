/*
 * Random numbers and argument generators of the fuzz guest.
 *
 * Values come from classes a hypervisor must survive: small integers (sub-ops, counts,
 * ports, grant references), boundaries, raw random words, pointers into the scratch
 * buffers, into the arena, into the hypervisor hole (>= 0xF5800000), unmapped and
 * misaligned pointers, machine frame numbers of every owner, domain ids and huge counts.
 * Unless wild=1, no value names the guest's vital memory: a random word inside the vital
 * VAs is moved out of them and frame numbers are drawn from non-vital frames.
 */
#include "fuzz.h"

static uint32_t rs[4];

static uint32_t rotl(uint32_t x, int k)
{
	return (x << k) | (x >> (32 - k));
}

static uint32_t mix32(uint32_t z)
{
	z = (z ^ (z >> 16)) * 0x85ebca6bu;
	z = (z ^ (z >> 13)) * 0xc2b2ae35u;
	return z ^ (z >> 16);
}

void rng_seed(uint32_t seed, uint32_t index)
{
	uint32_t z = mix32(seed * 0x9e3779b9u + 0x7f4a7c15u) ^ mix32(index + 0x632be5abu);
	int i;

	for (i = 0; i < 4; i++) {
		z += 0x9e3779b9u;
		rs[i] = mix32(z);
	}
	if (!(rs[0] | rs[1] | rs[2] | rs[3]))
		rs[0] = 1;
}

uint32_t rnd(void)
{
	uint32_t result = rotl(rs[1] * 5, 7) * 9;
	uint32_t t = rs[1] << 9;

	rs[2] ^= rs[0];
	rs[3] ^= rs[1];
	rs[1] ^= rs[2];
	rs[0] ^= rs[3];
	rs[2] ^= t;
	rs[3] = rotl(rs[3], 11);
	return result;
}

uint32_t below(uint32_t n)
{
	return (uint32_t)(((uint64_t)rnd() * n) >> 32);
}

int chance(uint32_t percent)
{
	return below(100) < percent;
}

/* -- what the guest must keep ------------------------------------------------------- */
static uint8_t vital_map[VITAL_FRAMES / 8];

void mark_vital(uint32_t mfn);
void mark_vital(uint32_t mfn)
{
	if (mfn < VITAL_FRAMES)
		vital_map[mfn >> 3] |= (uint8_t)(1u << (mfn & 7));
}

int vital_mfn(uint32_t mfn)
{
	return mfn < VITAL_FRAMES && (vital_map[mfn >> 3] >> (mfn & 7)) & 1;
}

int vital_va(uint32_t va)
{
	return va >= VIRT_BASE && va < lay.arena_va;
}

int scratch_range(uint32_t va, uint32_t len)
{
	return va >= lay.scratch_va && len <= SCRATCH_SIZE && va - lay.scratch_va <= SCRATCH_SIZE - len;
}

uint32_t arena_page_va(uint32_t page)
{
	return lay.arena_va + page * PAGE_SIZE;
}

/* A frame the generators may name instead of a vital one. */
uint32_t safe_mfn(uint32_t mfn)
{
	if (fuzz_wild || !vital_mfn(mfn))
		return mfn;
	return lay.arena_mfn[mfn % ARENA_PAGES];
}

/* -- scratch buffers ------------------------------------------------------------------ */
static uint32_t scratch_used;

void scratch_reset(void)
{
	scratch_used = 0;
}

/* Bump allocation in the first half of scratch (the second half takes random fills). */
void *scratch_alloc(uint32_t len)
{
	uint32_t va;

	len = (len + 7) & ~7u;
	if (len > SCRATCH_SIZE / 2)
		len = SCRATCH_SIZE / 2;
	if (scratch_used + len > SCRATCH_SIZE / 2)
		scratch_used = 0;
	va = lay.scratch_va + scratch_used;
	scratch_used += len;
	return (void *)va;
}

/* Fill up to `words` words at `va` (clipped to scratch) with generated values. */
void fill_words(uint32_t va, uint32_t words)
{
	uint32_t *p = (uint32_t *)(va & ~3u);
	uint32_t end = lay.scratch_va + SCRATCH_SIZE - 2 * PAGE_SIZE;

	if ((uint32_t)p < lay.scratch_va)
		return;
	while (words-- && (uint32_t)p + 4 <= end)
		*p++ = chance(40) ? below(64) : gen_value();
}

/* -- values ---------------------------------------------------------------------------- */
static const uint32_t boundaries[] = {
	0, 1, 2, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 0xffff, 0x10000,
	0x7ff0, 0x7ff1, 0x7ff2, 0x7ff3, 0x7ff4, 0x7fff, 0x1000, 0xfff, 0x1000000, 0x100,
	0x3ff, 0x400, 0x800, 0x1c00, 0x1bff, 0xe000, 0xf000,
};

static const uint32_t hole_pointers[] = {
	0xf5800000, 0xf5800004, 0xf57ffffc, 0xf57fffff, 0xf6800000, 0xffe00000, 0xffe0e000,
	0xfff00000, 0xfff01000, 0xfff02000, 0xfff02f00, 0xfffff000, 0xfffffffc, 0xffffffff,
};

static const uint32_t domids[] = {
	0, 1, 2, 0x7ff0, 0x7ff1, 0x7ff2, 0x7ff3, 0x7ff4, 0x7ff5, 0x7fff, 0xffff, 0x3ff,
};

static const uint32_t huge_counts[] = {
	0x7fffffff, 0xffffffff, 0x80000000, 0x80000001, 0x10000000, 0x100000, 0x10001,
	0x40000, 0xffffff, 0x1fffffff,
};

#define PICK(table) (table)[below(sizeof(table) / sizeof((table)[0]))]

/* A raw word that does not point into the guest's vital memory (unless wild=1). */
static uint32_t raw_word(void)
{
	uint32_t v = rnd();

	if (!fuzz_wild && vital_va(v))
		v ^= 0x80000000;        /* 0xc.. -> 0x4..: unmapped user space */
	return v;
}

uint32_t gen_value(void)
{
	switch (below(16)) {
	case 0: case 1: case 2:
		return below(65);
	case 3:
		return (uint32_t)-(int32_t)(1 + below(8));
	case 4:
		return PICK(boundaries);
	case 5:
		return raw_word();
	case 6: case 7:
		return lay.scratch_va + (below(SCRATCH_SIZE - 2 * PAGE_SIZE - 64) & ~3u);
	case 8:
		return arena_page_va(below(ARENA_PAGES)) + (chance(70) ? 0 : below(PAGE_SIZE) & ~7u);
	case 9:
		return chance(50) ? PICK(hole_pointers) : 0xf5800000 + below(0x0a800000);
	case 10:
		switch (below(4)) {
		case 0: return 0;
		case 1: return below(0x100000);
		case 2: return lay.virt_end + below(64) * PAGE_SIZE;
		default: return 0x40000000 + below(0x40000000);
		}
	case 11:
		return chance(50) ? lay.scratch_va + below(SCRATCH_SIZE - 2 * PAGE_SIZE - 64) + 1 + below(3)
				  : lay.virt_end - 1 - below(16);
	case 12:
		return gen_mfn();
	case 13:
		return PICK(domids);
	case 14:
		return (gen_mfn() << PAGE_SHIFT) | (chance(50) ? below(512) * 8 : below(PAGE_SIZE));
	default:
		return PICK(huge_counts);
	}
}

uint32_t gen_mfn(void)
{
	uint32_t n;

	switch (below(12)) {
	case 0: case 1: case 2: case 3: case 4:
		return lay.arena_mfn[below(ARENA_PAGES)];
	case 5:
		return lay.scratch_mfn[below(SCRATCH_PAGES - 2)];
	case 6: case 7:
		n = below(lay.nr_boot_l1 + 2);
		return n == 0 ? lay.l3_mfn : n == 1 ? lay.l2_mfn : lay.l1_mfn[n - 2];
	case 8:
		if (lay.nr_pages > lay.first_free_pfn)
			return pfn_to_mfn(lay.first_free_pfn + below(lay.nr_pages - lay.first_free_pfn));
		return lay.arena_mfn[0];
	case 9:
		switch (below(3)) {
		case 0: return lay.m2p_mfn + below(4);
		case 1: return lay.shared_info_mfn;
		default: return lay.max_ram_page - 1 - below(300);
		}
	case 10:
		return safe_mfn(below(lay.max_ram_page));
	default:
		switch (below(5)) {
		case 0: return lay.max_ram_page + below(0x100000);
		case 1: return 0xfffff;
		case 2: return 0xffffffff;
		case 3: return 0x0fffffff;
		default: return raw_word() >> 4;
		}
	}
}

static const uint32_t pte_flags[] = {
	0x000, 0x001, 0x021, 0x023, 0x063, 0x067, 0x027, 0x025, 0x007, 0x061, 0x065,
	0x081, 0x0a3, 0x0e7, 0x011, 0x009, 0x101, 0x123, 0x002, 0x201, 0x0fff, 0xe63,
};

/* A pagetable entry: a frame from gen_mfn with interesting flags, or junk.  Never a
 * boot L1 (unless wild=1): an L2 entry naming one would alias the kernel's mappings at
 * another VA, where generated pointers and update_va_mapping could reach them. */
uint64_t gen_pte(void)
{
	uint64_t pte;
	uint32_t mfn, i;

	switch (below(12)) {
	case 0:
		return 0;
	case 1:
		return ((uint64_t)rnd() << 32) | rnd();
	default:
		mfn = gen_mfn();
		for (i = 0; i < lay.nr_boot_l1 && !fuzz_wild; i++)
			if (mfn == lay.l1_mfn[i])       /* an alias of a boot L1 at another VA */
				mfn = lay.arena_mfn[mfn % ARENA_PAGES];
		pte = ((uint64_t)mfn << PAGE_SHIFT) | PICK(pte_flags);
		if (chance(10))
			pte |= 1ULL << 63;              /* NX */
		if (chance(5))
			pte |= (uint64_t)(1 + below(0x3ff)) << 52;
		if (chance(3))
			pte |= 1ULL << 62;              /* _PAGE_GNTTAB */
		return pte;
	}
}

/* An entry index biased to the interesting ones: the first, Xen's slots, the last. */
uint32_t gen_slot(void)
{
	switch (below(6)) {
	case 0: return below(4);
	case 1: return lay.nr_boot_l1 + below(4);
	case 2: return L2_FIRST_XEN - 2 + below(4);
	case 3: return 508 + below(4);
	default: return below(512);
	}
}

static const uint32_t selectors[] = {
	0, 3, FLAT_RING1_CS, FLAT_RING1_DS, FLAT_RING3_CS, FLAT_RING3_DS, 0xe008, 0xe010,
	0xe018, 0xe020, 0xe02a, 0xe040, 0xe050, 0xe060, 0xe073, 0xe0fb, 0xeff9, 0xf001,
	0x0009, 0x0011, 0x000f, 0x0061, 0x007b, 0x0007, 0xffff, 0x1c0b,
};

uint32_t gen_selector(void)
{
	return chance(80) ? PICK(selectors) : below(0x10000);
}

uint32_t gen_eflags(void)
{
	static const uint32_t bits[] = {
		0x100, 0x200, 0x400, 0x1000, 0x2000, 0x3000, 0x4000, 0x10000, 0x20000, 0x40000,
		0x80000, 0x100000, 0x200000, 0x1, 0x40, 0x80,
	};
	uint32_t eflags = 0x202;
	int n;

	if (chance(10))
		return rnd();
	for (n = below(3); n; n--)
		eflags |= PICK(bits);
	return eflags;
}
