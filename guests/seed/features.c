/*
 * xen_setup_features(): read the XENFEAT bitmap (Linux drivers/xen/features.c).
 * ABI: xen/include/public/version.h XENVER_get_features; xen/include/public/features.h.
 */
#include <hypercall.h>
#include <setup.h>

unsigned char xen_features[XENFEAT_NR_SUBMAPS * 32];

long xen_setup_features(unsigned int *submap0)
{
	struct xen_feature_info fi;
	unsigned int i, bit;
	long rc;

	for (i = 0; i < XENFEAT_NR_SUBMAPS; i++) {
		fi.submap_idx = i;
		fi.submap = 0;
		rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
		if (rc < 0)
			return rc;
		for (bit = 0; bit < 32; bit++)
			xen_features[i * 32 + bit] = !!(fi.submap & (1U << bit));
		if (i == 0)
			*submap0 = fi.submap;
	}
	return 0;
}
