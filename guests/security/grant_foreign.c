/*
 * Grant-table operations on another domain's table and on references the domain does
 * not have.  Xen 4.17 reports per-operation failures in the status field (the hypercall
 * itself returns 0): GNTST_permission_denied (-8) for dom0's table (XSM), GNTST_bad_domain
 * (-2) for no domain, GNTST_bad_gntref (-3) for a reference beyond the table; get_version
 * returns -EPERM / -ESRCH itself.
 * ABI: xen/common/grant_table.c gnttab_setup_table, gnttab_query_size,
 * gnttab_get_version, gnttab_swap_grant_ref; xen/include/public/grant_table.h.
 */
#include "sec.h"

#define GNTTABOP_setup_table    2
#define GNTTABOP_query_size     6
#define GNTTABOP_get_version    10
#define GNTTABOP_swap_grant_ref 11

static long gnttab(uint32_t cmd, const void *uop, uint32_t count)
{
	return hc(__HYPERVISOR_grant_table_op, cmd, (uint32_t)uop, count, 0, 0);
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
}
