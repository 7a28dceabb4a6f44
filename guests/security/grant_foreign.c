/*
 * Grant-table operations on another domain's table and on references the domain does
 * not have.  Xen 4.17 reports per-operation failures in the status field (the hypercall
 * itself returns 0): GNTST_permission_denied (-8) for dom0's table (XSM), GNTST_bad_domain
 * (-2) for no domain, GNTST_bad_gntref (-3) for a reference beyond the table; get_version
 * returns -EPERM / -ESRCH itself.
 * ABI: xen/common/grant_table.c gnttab_setup_table, gnttab_query_size,
 * gnttab_get_version, gnttab_swap_grant_ref; xen/include/public/grant_table.h.
 *
 * Mapping, unmapping, copying and transferring through references the domain does not
 * hold are refused per operation too: dom0 has granted nothing (GNTST_general_error -1
 * for an empty entry, -3 beyond its table), map_grant_ref names domains by id only
 * (DOMID_SELF is -2), an unknown maptrack handle is GNTST_bad_handle (-4), a copy may
 * name a frame only as DOMID_SELF (-8), and a frame outside RAM cannot be transferred
 * (GNTST_bad_page -9).
 * ABI: map_grant_ref, unmap_common, gnttab_copy_lock_domain, acquire_grant_for_copy,
 * gnttab_transfer in xen/common/grant_table.c.
 */
#include "sec.h"

#define GNTTABOP_setup_table    2
#define GNTTABOP_query_size     6
#define GNTTABOP_get_version    10
#define GNTTABOP_swap_grant_ref 11
#define GNTTABOP_map_grant_ref  0
#define GNTTABOP_unmap_grant_ref 1
#define GNTTABOP_transfer       4
#define GNTTABOP_copy           5
#define GNTMAP_host_map         2
#define GNTMAP_readonly         4
#define GNTCOPY_source_gref     1
#define GNTCOPY_dest_gref       2
#define DOMID_SELF_ID           0x7FF0

static long gnttab(uint32_t cmd, const void *uop, uint32_t count)
{
	return hc(__HYPERVISOR_grant_table_op, cmd, (uint32_t)uop, count, 0, 0);
}

struct map_op {
	uint64_t host_addr;
	uint32_t flags, ref;
	uint16_t dom;
	int16_t status;
	uint32_t handle;
	uint64_t dev_bus_addr;
} __attribute__((packed));

struct copy_op {
	uint32_t src_ref;
	uint16_t src_dom, src_off;
	uint32_t dst_ref;
	uint16_t dst_dom, dst_off;
	uint16_t len, flags;
	int16_t status, pad;
};

static char map_target[4096] __attribute__((aligned(4096)));

static void map_probe(const char *name, const char *status_name, uint16_t dom, uint32_t ref)
{
	struct map_op op = { .host_addr = (uint32_t)map_target, .flags = GNTMAP_host_map | GNTMAP_readonly,
			     .ref = ref, .dom = dom, .handle = 0xdead };

	result(name, gnttab(GNTTABOP_map_grant_ref, &op, 1));
	value(status_name, (uint32_t)(int32_t)op.status);
}

static void copy_probe(const char *name, const char *status_name, struct copy_op op)
{
	result(name, gnttab(GNTTABOP_copy, &op, 1));
	value(status_name, (uint32_t)(int32_t)op.status);
}

static void map_copy_transfer(void)
{
	struct { uint64_t host_addr, dev_bus_addr; uint32_t handle; int16_t status, pad; } unmap;
	struct { uint32_t mfn; uint16_t domid, pad; uint32_t ref; int16_t status, pad2; } transfer;

	map_probe("map_dom0_ref", "map_dom0_ref_status", 0, 5);
	map_probe("map_dom0_beyond", "map_dom0_beyond_status", 0, 100000);
	map_probe("map_domid_self", "map_domid_self_status", DOMID_SELF_ID, 5);
	map_probe("map_no_domain", "map_no_domain_status", 7, 5);
	unmap.host_addr = (uint32_t)map_target;
	unmap.dev_bus_addr = 0;
	unmap.handle = 0x12345;
	result("unmap_unknown", gnttab(GNTTABOP_unmap_grant_ref, &unmap, 1));
	value("unmap_unknown_status", (uint32_t)(int32_t)unmap.status);
	copy_probe("copy_from_dom0", "copy_from_dom0_status", (struct copy_op){ .src_ref = 5, .src_dom = 0,
		.dst_ref = 5, .dst_dom = 0, .len = 8, .flags = GNTCOPY_source_gref | GNTCOPY_dest_gref });
	copy_probe("copy_dom0_beyond", "copy_dom0_beyond_status", (struct copy_op){ .src_ref = 100000, .src_dom = 0,
		.dst_ref = 0, .dst_dom = 0, .len = 8, .flags = GNTCOPY_source_gref | GNTCOPY_dest_gref });
	copy_probe("copy_frame_of_dom0", "copy_frame_of_dom0_status", (struct copy_op){ .src_ref = 1, .src_dom = 0,
		.dst_ref = 2, .dst_dom = DOMID_SELF_ID, .len = 8 });
	transfer.mfn = 0xFFFFFFF0u;
	transfer.domid = 0;
	transfer.ref = 0;
	result("transfer_not_ram", gnttab(GNTTABOP_transfer, &transfer, 1));
	value("transfer_not_ram_status", (uint32_t)(int32_t)transfer.status);
}


void attempt(void)
{
	uint32_t frames[4];
	struct { uint16_t dom, pad; uint32_t nr_frames; int16_t status, pad2; uint32_t frame_list; } setup;
	struct { uint16_t dom, pad; uint32_t nr_frames, max_nr_frames; int16_t status, pad2; } query;
	struct { uint16_t dom, pad; uint32_t version; } version;
	struct { uint32_t ref_a, ref_b; int16_t status, pad; } swap;

	setup.dom = 0;
	setup.nr_frames = 1;
	setup.frame_list = (uint32_t)frames;
	result("setup_dom0", gnttab(GNTTABOP_setup_table, &setup, 1));
	value("setup_dom0_status", (uint32_t)(int32_t)setup.status);
	setup.dom = 5;
	result("setup_no_domain", gnttab(GNTTABOP_setup_table, &setup, 1));
	value("setup_no_domain_status", (uint32_t)(int32_t)setup.status);
	query.dom = 0;
	result("query_dom0", gnttab(GNTTABOP_query_size, &query, 1));
	value("query_dom0_status", (uint32_t)(int32_t)query.status);
	version.dom = 0;
	result("version_dom0", gnttab(GNTTABOP_get_version, &version, 1));
	version.dom = 5;
	result("version_no_domain", gnttab(GNTTABOP_get_version, &version, 1));
	swap.ref_a = 100000;
	swap.ref_b = 0;
	result("swap_beyond", gnttab(GNTTABOP_swap_grant_ref, &swap, 1));
	value("swap_beyond_status", (uint32_t)(int32_t)swap.status);
	map_copy_transfer();
}
