/*
 * memory_op: reservations, the machine-to-phys table and the memory map, 32-bit layouts.
 * ABI: xen/include/public/memory.h (compat: xen_pfn_t and handles are 32 bits).
 */
#ifndef SEED_XEN_MEMORY_H
#define SEED_XEN_MEMORY_H

#define XENMEM_increase_reservation   0
#define XENMEM_decrease_reservation   1
#define XENMEM_maximum_ram_page       2
#define XENMEM_current_reservation    3
#define XENMEM_maximum_reservation    4
#define XENMEM_machphys_mfn_list      5
#define XENMEM_populate_physmap       6
#define XENMEM_memory_map             9
#define XENMEM_machphys_mapping       12

#define E820_RAM                      1

#ifndef __ASSEMBLY__
#include <stdint.h>

/* XENMEM_{increase,decrease}_reservation, XENMEM_populate_physmap (20 bytes). */
struct xen_memory_reservation {
	uint32_t extent_start;      /* VA of u32 frame numbers (MFNs or GPFNs) */
	uint32_t nr_extents;
	uint32_t extent_order;      /* 2^order pages per extent */
	uint32_t mem_flags;         /* XENMEMF_*: address bits in 7:0 */
	uint16_t domid;
};

/* XENMEM_machphys_mapping: where the read-only M2P lives (12 bytes). */
struct xen_machphys_mapping {
	uint32_t v_start;
	uint32_t v_end;
	uint32_t max_mfn;
};

/* XENMEM_memory_map: IN buffer size, OUT entries written (8 bytes). */
struct xen_memory_map {
	uint32_t nr_entries;
	uint32_t buffer;            /* VA of struct e820entry[] */
};

/* One BIOS-style memory map entry (20 bytes). */
struct e820entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
} __attribute__((packed));

_Static_assert(sizeof(struct xen_memory_reservation) == 20, "xen_memory_reservation layout");
_Static_assert(sizeof(struct xen_machphys_mapping) == 12, "xen_machphys_mapping layout");
_Static_assert(sizeof(struct xen_memory_map) == 8, "xen_memory_map layout");
_Static_assert(sizeof(struct e820entry) == 20, "e820entry layout");

#endif /* __ASSEMBLY__ */

#endif /* SEED_XEN_MEMORY_H */
