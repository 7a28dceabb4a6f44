"""XENVER_get_features submap 0 for a PV domU, 32-bit PAE and 64-bit, as Xen 4.17 reports
it, one table row per XENFEAT bit with where Xen sets it and what Linux 6.1 does with it.

Xen decides per domain type, not per guest width: both PV ABIs get the same bits, and the
only guest-controlled one, pae_pgdir_above_4gb, follows VMASST_TYPE_pae_extended_cr3,
which 32-bit Linux turns on and 64-bit Linux does not (it has no use for it).
ABI: xen/include/public/features.h; xen/common/kernel.c do_xen_version XENVER_get_features;
xen/arch/x86/include/asm/config.h (NATIVE_/COMPAT_VM_ASSIST_VALID); Linux
drivers/xen/features.c xen_setup_features (reads submap 0 only, XENFEAT_NR_SUBMAPS = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .constants import Vmasst, XenFeat

__all__ = ["When", "XenverFeature", "XENVER_FEATURES", "BadFeatureAbi", "domu_feature_submap",
           "feature_names"]


class When(Enum):
    """When Xen 4.17 sets a bit for a PV domain."""

    ALWAYS = "always"
    NEVER = "never"
    PAE_EXTENDED_CR3 = "when VMASST_TYPE_pae_extended_cr3 is on"
    HARDWARE_DOMAIN = "for the hardware domain only"


@dataclass(frozen=True)
class XenverFeature:
    """One XENFEAT bit for PV guests of each width; `source` is Xen's reason, `linux` what
    Linux 6.1 makes of the bit on a PV guest."""

    bit: XenFeat
    pv32: When
    pv64: When
    source: str
    linux: str


_KERNEL_C = "kernel.c XENVER_get_features"

XENVER_FEATURES: tuple[XenverFeature, ...] = (
    XenverFeature(XenFeat.writable_page_tables, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: only with paging_mode_translate (HVM/PVH)",
                  "absent: the kernel enables VMASST_TYPE_writable_pagetables itself"),
    XenverFeature(XenFeat.writable_descriptor_tables, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: never set on x86",
                  "absent: GDT/LDT updates go through update_descriptor"),
    XenverFeature(XenFeat.auto_translated_physmap, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: only with paging_mode_translate (HVM/PVH)",
                  "must be absent for PV: the kernel keeps its own p2m"),
    XenverFeature(XenFeat.supervisor_mode_kernel, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: PVH only", "absent"),
    XenverFeature(XenFeat.pae_pgdir_above_4gb, When.PAE_EXTENDED_CR3, When.PAE_EXTENDED_CR3,
                  f"{_KERNEL_C}: VM_ASSIST(d, pae_extended_cr3), valid for both widths "
                  "(config.h NATIVE_VM_ASSIST_VALID)",
                  "32-bit sets the assist; 64-bit never does, so the bit stays clear there"),
    XenverFeature(XenFeat.mmu_pt_update_preserve_ad, When.ALWAYS, When.ALWAYS,
                  f"{_KERNEL_C}: every PV domain",
                  "xen_start_kernel then uses MMU_PT_UPDATE_PRESERVE_AD for "
                  "ptep_modify_prot_*; the banner says '(preserve-AD)' (later kernels "
                  "assume the bit)"),
    XenverFeature(XenFeat.highmem_assist, When.ALWAYS, When.ALWAYS,
                  f"{_KERNEL_C}: every PV domain",
                  "used by 32-bit highmem only"),
    XenverFeature(XenFeat.gnttab_map_avail_bits, When.ALWAYS, When.ALWAYS,
                  f"{_KERNEL_C}: every PV domain",
                  "grant mappings may carry PTE available bits (gntdev)"),
    XenverFeature(XenFeat.hvm_callback_vector, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: HVM/PVH only", "absent: PV uses the event callback"),
    XenverFeature(XenFeat.hvm_safe_pvclock, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: HVM/PVH only", "absent"),
    XenverFeature(XenFeat.hvm_pirqs, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: HVM only", "absent"),
    XenverFeature(XenFeat.dom0, When.HARDWARE_DOMAIN, When.HARDWARE_DOMAIN,
                  f"{_KERNEL_C}: is_hardware_domain", "absent for a domU"),
    XenverFeature(XenFeat.memory_op_vnode_supported, When.ALWAYS, When.ALWAYS,
                  f"{_KERNEL_C}: every domain", "XENMEM_get_vnumainfo may be tried"),
    XenverFeature(XenFeat.ARM_SMCCC_supported, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: Arm only", "absent"),
    XenverFeature(XenFeat.linux_rsdp_unrestricted, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: not reported by Xen (a SUPPORTED_FEATURES note bit)",
                  "absent"),
    XenverFeature(XenFeat.not_direct_mapped, When.NEVER, When.NEVER,
                  f"{_KERNEL_C}: only translated domains that are not direct-mapped",
                  "absent"),
    XenverFeature(XenFeat.direct_mapped, When.ALWAYS, When.ALWAYS,
                  f"{_KERNEL_C}: !paging_mode_translate(d), i.e. every PV domain",
                  "read with not_direct_mapped when Linux decides on swiotlb-xen"),
)


class BadFeatureAbi(ValueError):
    """A guest width other than 32 or 64 bits."""


def domu_feature_submap(guest_bits: int, vm_assist: int, *,
                        hardware_domain: bool = False) -> int:
    """Submap 0 for a PV domain of `guest_bits` (32 or 64) with the VMASST bits
    `vm_assist` (a bitmap of VMASST_TYPE_* numbers)."""
    if guest_bits not in (32, 64):
        raise BadFeatureAbi(f"no XENVER features for {guest_bits}-bit PV guests (32 or 64)")
    submap = 0
    for feature in XENVER_FEATURES:
        when = feature.pv64 if guest_bits == 64 else feature.pv32
        if (when is When.ALWAYS
                or (when is When.PAE_EXTENDED_CR3 and vm_assist >> Vmasst.pae_extended_cr3 & 1)
                or (when is When.HARDWARE_DOMAIN and hardware_domain)):
            submap |= 1 << feature.bit
    return submap


def feature_names(submap: int) -> tuple[str, ...]:
    """XENFEAT names of the bits set in `submap`, lowest first (unknown bits as numbers)."""
    names = []
    for bit in range(32):
        if submap >> bit & 1:
            names.append(XenFeat(bit).name if bit in XenFeat._value2member_map_ else str(bit))
    return tuple(names)
