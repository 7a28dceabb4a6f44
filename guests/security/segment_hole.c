/*
 * Segments that reach into the hypervisor hole.  On Xen 4.17 a base-0 segment whose
 * limit ends inside the hole is widened to 4 GiB: segments protect nothing, paging
 * does.  The compat M2P at the hole's start is mapped read-only for the guest kernel;
 * everything else in the hole is not present.  So through any segment a read of the
 * M2P works, a write to it faults, and a read of the rest of the hole faults.
 * ABI: xen/arch/x86/pv/descriptor-tables.c check_descriptor; x86_64/mm.c (compat M2P);
 * XEN-PV-ABI.md 1.1, 1.3.
 */
#include "sec.h"

#define SEL_LIMIT_HOLE  0x0009          /* gdt[1]: base 0, limit 0xf67fffff */
#define SEL_BASE_HIGH   0x0011          /* gdt[2]: base 0x10000000, 4 GiB (wraps) */

static uint64_t gdt[512] __page_aligned;
static uint32_t gdt_frames[1];

static uint32_t fs_read(uint32_t offset)
{
	uint32_t v;

	asm volatile ("movl %%fs:(%1), %0" : "=r" (v) : "r" (offset) : "memory");
	return v;
}

static uint32_t fs_write(uint32_t offset)
{
	asm volatile ("movl $0, %%fs:(%0)" : : "r" (offset) : "memory");
	return 0;
}

static uint32_t flat_read(uint32_t va)
{
	return *(volatile uint32_t *)va;
}

static void load_fs(uint32_t sel)
{
	asm volatile ("movl %0, %%fs" : : "r" (sel) : "memory");
}

void attempt(void)
{
	gdt[1] = 0x00cfb30000006fffULL | (0xfULL << 48);   /* limit 0xf6fff pages */
	gdt[1] = (gdt[1] & ~0xffffULL) | 0x67ff;            /* limit 0xf67ff pages */
	gdt[2] = 0x10cfb3000000ffffULL;
	gdt_frames[0] = virt_to_mfn(gdt);
	result("remap_gdt", remap(gdt, gdt_frames[0], PTE_RO_FLAGS));
	result("set_gdt", hc(__HYPERVISOR_set_gdt, (uint32_t)gdt_frames, 512, 0, 0, 0));
	value("limit_low", (uint32_t)gdt[1] & 0xffff);
	value("limit_high", (uint32_t)(gdt[1] >> 48) & 0xf);
	load_fs(SEL_LIMIT_HOLE);
	probe("read_m2p", fs_read, 0xf5800000);
	probe("write_m2p", fs_write, 0xf5800000);
	probe("read_hole", fs_read, 0xff000000);
	probe("read_hole_end", fs_read, 0xffdffffc);
	load_fs(SEL_BASE_HIGH);
	probe("wrap_read_m2p", fs_read, 0xe5800000);
	probe("wrap_write_m2p", fs_write, 0xe5800000);
	probe("wrap_read_hole", fs_read, 0xef000000);
	load_fs(0);
	probe("flat_read_m2p", flat_read, 0xf5800000);
	probe("flat_read_hole", flat_read, 0xff000000);
}
