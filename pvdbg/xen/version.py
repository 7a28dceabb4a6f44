"""xen_version: what this emulated Xen says it is.  ABI: xen/include/public/version.h,
xen/common/kernel.c do_xen_version, xen/common/compat/kernel.c."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .abi import FeatureInfo, PlatformParameters32
from .constants import (XEN_CAPABILITIES, XEN_CHANGESET, XEN_COMPILE_BY, XEN_COMPILE_DATE,
                        XEN_COMPILE_DOMAIN, XEN_COMPILER, XEN_EXTRAVERSION, XEN_VERSION_MAJOR,
                        XEN_VERSION_MINOR, Errno, Hc, XenFeat, XenVer)
from .hypercalls import HYPERCALLS, Param, fail
from .xenfeatures import domu_feature_submap

if TYPE_CHECKING:
    from .hypervisor import HypercallContext

# What Xen 4.17 reports to a PV domU in submap 0 (xen/common/kernel.c).
DOMU_FEATURES = (1 << XenFeat.mmu_pt_update_preserve_ad | 1 << XenFeat.highmem_assist
                 | 1 << XenFeat.gnttab_map_avail_bits | 1 << XenFeat.memory_op_vnode_supported
                 | 1 << XenFeat.direct_mapped)


def _fixed(text: str, size: int) -> bytes:
    data = text.encode()[:size - 1]
    return data + bytes(size - len(data))


def feature_submap(vm_assist: int, guest_bits: int = 32) -> int:
    """Submap 0 for a PV domU of `guest_bits` (32 or 64); table in xenfeatures.py."""
    return domu_feature_submap(guest_bits, vm_assist)


@HYPERCALLS.handler(Hc.xen_version, Param("cmd", XenVer), Param("arg"))
def xen_version(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    if cmd == XenVer.version:
        return XEN_VERSION_MAJOR << 16 | XEN_VERSION_MINOR
    if cmd == XenVer.extraversion:
        ctx.guest.write(arg, _fixed(XEN_EXTRAVERSION, 16))
    elif cmd == XenVer.compile_info:
        ctx.guest.write(arg, _fixed(XEN_COMPILER, 64) + _fixed(XEN_COMPILE_BY, 16)
                        + _fixed(XEN_COMPILE_DOMAIN, 32) + _fixed(XEN_COMPILE_DATE, 32))
    elif cmd == XenVer.capabilities:
        ctx.guest.write(arg, _fixed(XEN_CAPABILITIES, 1024))
    elif cmd == XenVer.changeset:
        ctx.guest.write(arg, _fixed(XEN_CHANGESET, 64))
    elif cmd == XenVer.platform_parameters:
        ctx.guest.write(arg, PlatformParameters32(virt_start=ctx.guest.hole_start).to_bytes())
    elif cmd == XenVer.get_features:
        info = FeatureInfo.from_bytes(ctx.guest.read(arg, FeatureInfo.SIZE))
        if info.submap_idx != 0:
            raise fail(Errno.EINVAL, f"feature submap {info.submap_idx} does not exist")
        submap = feature_submap(ctx.domain.vm_assist)
        ctx.guest.write(arg, FeatureInfo(0, submap).to_bytes())
        ctx.note(f"submap 0 = {submap:#010x}")
    elif cmd == XenVer.pagesize:
        if arg != 0:
            raise fail(Errno.EINVAL, "pagesize takes no buffer")
        return 4096
    elif cmd == XenVer.guest_handle:
        ctx.guest.write(arg, bytes(16))
    elif cmd == XenVer.commandline:
        ctx.guest.write(arg, _fixed("pvdbg", 1024))
    elif cmd == XenVer.build_id:
        raise fail(Errno.EPERM, "build_id is for privileged domains")
    else:
        raise fail(Errno.ENOSYS, f"unknown xen_version command {cmd}")
    return 0
