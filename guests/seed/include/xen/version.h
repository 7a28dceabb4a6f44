/*
 * xen_version (hypercall 17) commands and their argument structures (32-bit guest layout).
 * ABI: xen/include/public/version.h.
 */
#ifndef SEED_XEN_VERSION_H
#define SEED_XEN_VERSION_H

#define XENVER_version              0   /* returns (major << 16) | minor */
#define XENVER_extraversion         1   /* char[16] */
#define XENVER_compile_info         2
#define XENVER_capabilities         3   /* char[1024] */
#define XENVER_changeset            4   /* char[64] */
#define XENVER_platform_parameters  5   /* struct xen_platform_parameters */
#define XENVER_get_features         6   /* struct xen_feature_info */
#define XENVER_pagesize             7   /* returns the page size; arg must be NULL */
#define XENVER_guest_handle         8
#define XENVER_commandline          9   /* char[1024] */
#define XENVER_build_id             10

#ifndef __ASSEMBLY__
#include <stdint.h>

/* ABI: xen/include/public/version.h xen_extraversion_t */
struct xen_extraversion {
	char extraversion[16];
};

/* ABI: xen/include/public/version.h struct xen_platform_parameters (4 bytes for 32-bit) */
struct xen_platform_parameters {
	unsigned long virt_start;   /* VA where the hypervisor hole starts */
};

/* ABI: xen/include/public/version.h struct xen_feature_info (8 bytes) */
struct xen_feature_info {
	uint32_t submap_idx;        /* IN: which 32-bit submap */
	uint32_t submap;            /* OUT: bit n set = XENFEAT n + 32 * submap_idx supported */
};
#endif /* __ASSEMBLY__ */

#endif /* SEED_XEN_VERSION_H */
