"""grant_table_op for a 64-bit PV guest: the shared handlers with the x86_64 layouts
(setup_table's xen_pfn_t frame list, get_status_frames, copy with 64-bit gmfns, transfer),
64-bit address checks, and XENMEM_decrease_reservation, on a tiny 64-bit guest's domain."""
from __future__ import annotations

import struct

import pytest

from guestbuild64 import build_asm_guest64
from pvdbg.machine.memory import PAGE_SHIFT, PAGE_SIZE
from pvdbg.xen.abi64 import (GnttabCopy64, GnttabGetStatusFrames64, GnttabSetupTable64,
                             GnttabTransfer64, MemoryReservation64)
from pvdbg.xen.builder import BuildOptions
from pvdbg.xen.constants import DOMID_SELF, Errno, Hc, XenMem
from pvdbg.xen.devices import attach_devices
from pvdbg.xen.grant_table import (GNTCOPY_SOURCE_GREF, GRANT_ABI64, GnttabMapGrantRef,
                                   GnttabOp, GnttabQuerySize, GrantEntryV1, Gntst, GtfFlags,
                                   grant_abi)
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.pv64.builder import build_domain64
from pvdbg.xen.pv64.hypervisor import Hypervisor64

GUEST = r"""
.globl _start
_start:
    jmp _start
"""


@pytest.fixture
def hv(tmp_path) -> Hypervisor64:
    path = build_asm_guest64(tmp_path, GUEST)
    image = load_guest_image(str(path), allow_64bit=True)
    built = build_domain64(image, BuildOptions(memory_mib=16))
    hv = Hypervisor64(built, image.symbols)
    attach_devices(hv)
    return hv


def scratch(hv) -> int:
    """The boot stack page: mapped writable, unused by a guest that has not run."""
    return hv.layout.stack_va


def pfn_of(hv, va: int) -> int:
    return (va - hv.layout.virt_base) >> PAGE_SHIFT


def hypercall(hv, number: int, *args: int) -> int:
    ctx = HypercallContext(hv, hv.current)
    raw = tuple(args) + (0,) * (6 - len(args))
    _name, _args, result = hv.dispatch_hypercall(ctx, number, raw)
    return result


def gnttab(hv, cmd: int, uop: int, count: int = 1) -> int:
    return hypercall(hv, Hc.grant_table_op, cmd, uop, count)


def test_the_domain_uses_the_64bit_layouts(hv):
    assert grant_abi(hv) is GRANT_ABI64
    assert (GnttabCopy64.SIZE, GnttabTransfer64.SIZE, GnttabSetupTable64.SIZE) == (40, 24, 24)


def test_setup_table_writes_64bit_frames(hv):
    buf = scratch(hv)
    frame_list = buf + 0x100
    hv.guest.write(frame_list, b"\xee" * 8 * 3)
    hv.guest.write(buf, GnttabSetupTable64(dom=DOMID_SELF, nr_frames=2,
                                           frame_list=frame_list, status=0x77).to_bytes())
    assert gnttab(hv, GnttabOp.setup_table, buf) == 0
    out = GnttabSetupTable64.from_bytes(hv.guest.read(buf, GnttabSetupTable64.SIZE))
    assert out.status == Gntst.okay
    table = hv.grant_table
    frames = struct.unpack("<3Q", hv.guest.read(frame_list, 24))
    assert list(frames[:2]) == table.frames[:2] and table.nr_frames == 2
    assert frames[2] == 0xEEEEEEEEEEEEEEEE                   # only nr_frames entries written
    assert all(hv.mm.may_map(mfn) for mfn in table.frames)   # the guest may map them
    hv.guest.write(buf, GnttabQuerySize(dom=DOMID_SELF).to_bytes())
    assert gnttab(hv, GnttabOp.query_size, buf) == 0
    size = GnttabQuerySize.from_bytes(hv.guest.read(buf, GnttabQuerySize.SIZE))
    assert (size.nr_frames, size.max_nr_frames, size.status) == (2, table.max_frames, 0)


def test_addresses_in_xens_slots_fault(hv):
    xen_va = 0xFFFF_8000_0000_0000
    assert gnttab(hv, GnttabOp.setup_table, xen_va) == -Errno.EFAULT
    buf = scratch(hv)
    hv.guest.write(buf, GnttabSetupTable64(dom=DOMID_SELF, nr_frames=1,
                                           frame_list=xen_va).to_bytes())
    assert gnttab(hv, GnttabOp.setup_table, buf) == -Errno.EFAULT
    assert gnttab(hv, GnttabOp.copy, xen_va, 2) == -Errno.EFAULT


def test_setup_table_stops_at_an_unwritable_frame_list(hv):
    buf = scratch(hv)
    read_only = hv.layout.pt_base_va                 # the L4: mapped read-only
    hv.guest.write(buf, GnttabSetupTable64(dom=DOMID_SELF, nr_frames=1,
                                           frame_list=read_only).to_bytes())
    assert gnttab(hv, GnttabOp.setup_table, buf) == 0
    out = GnttabSetupTable64.from_bytes(hv.guest.read(buf, GnttabSetupTable64.SIZE))
    assert out.status == Gntst.bad_virt_addr


def test_get_status_frames_has_none_for_version_1(hv):
    buf = scratch(hv)
    hv.guest.write(buf, GnttabGetStatusFrames64(nr_frames=1, dom=DOMID_SELF,
                                                frame_list=buf + 0x100).to_bytes())
    assert gnttab(hv, GnttabOp.get_status_frames, buf) == 0
    out = GnttabGetStatusFrames64.from_bytes(hv.guest.read(buf, GnttabGetStatusFrames64.SIZE))
    assert out.status == Gntst.general_error


def test_copy_from_a_grant_to_a_frame(hv):
    buf = scratch(hv)
    own = hv.domain.domid
    source_mfn = hv.built.p2m[pfn_of(hv, buf)]
    dest_mfn = hv.built.p2m[-1]
    hv.guest.write(buf + 0x800, b"granted bytes")
    hv.grant_table.set_entry(10, GrantEntryV1(flags=GtfFlags.permit_access, domid=own,
                                              frame=source_mfn))
    ops = [GnttabCopy64(source_ref=10, source_domid=own, source_offset=0x800,
                        dest_ref=dest_mfn, dest_domid=DOMID_SELF, dest_offset=0x10, len=13,
                        flags=GNTCOPY_SOURCE_GREF, status=0x55),
           GnttabCopy64(source_ref=10, source_domid=own, source_offset=0xFFC,
                        dest_ref=dest_mfn, dest_domid=DOMID_SELF, len=8,
                        flags=GNTCOPY_SOURCE_GREF)]
    hv.guest.write(buf, b"".join(op.to_bytes() for op in ops))
    assert gnttab(hv, GnttabOp.copy, buf, 2) == 0
    statuses = [GnttabCopy64.from_bytes(hv.guest.read(buf + i * 40, 40)).status for i in (0, 1)]
    assert statuses == [Gntst.okay, Gntst.bad_copy_arg]
    assert hv.memory.read((dest_mfn << PAGE_SHIFT) + 0x10, 13) == b"granted bytes"
    assert not hv.grant_table.pinned(10)
    assert hv.grant_table.entry(10).flags == GtfFlags.permit_access     # reading dropped
    assert hv.mm.count[dest_mfn] == 0                                   # type released


def test_transfer_to_an_accepting_entry_and_a_refused_one(hv):
    buf = scratch(hv)
    own = hv.domain.domid
    pfn = len(hv.built.p2m) - 1
    mfn = hv.built.p2m[pfn]
    hv.grant_table.set_entry(11, GrantEntryV1(flags=GtfFlags.accept_transfer, domid=own,
                                              frame=pfn))
    hv.guest.write(buf, GnttabTransfer64(mfn=mfn, domid=own, ref=11).to_bytes())
    assert gnttab(hv, GnttabOp.transfer, buf) == 0
    assert GnttabTransfer64.from_bytes(hv.guest.read(buf, 24)).status == Gntst.okay
    entry = hv.grant_table.entry(11)
    assert entry.frame == mfn and entry.flags == GtfFlags.accept_transfer | 0xC
    assert hv.mm.owned[mfn] and hv.memory.read_u64(
        (hv.built.m2p_mfns[mfn * 8 // PAGE_SIZE] << PAGE_SHIFT) + mfn * 8 % PAGE_SIZE) == pfn
    hv.guest.write(buf, GnttabTransfer64(mfn=mfn, domid=own, ref=12).to_bytes())
    assert gnttab(hv, GnttabOp.transfer, buf) == 0
    assert GnttabTransfer64.from_bytes(hv.guest.read(buf, 24)).status == Gntst.general_error
    assert not hv.mm.owned[mfn] and mfn in hv.built.free_mfns       # stolen, then freed
    # A typed frame (the L4) cannot be stolen.
    hv.guest.write(buf, GnttabTransfer64(mfn=hv.built.l4_mfn, domid=own, ref=11).to_bytes())
    assert gnttab(hv, GnttabOp.transfer, buf) == 0
    assert GnttabTransfer64.from_bytes(hv.guest.read(buf, 24)).status == Gntst.bad_page


def test_mapping_grants_is_refused_for_64bit_guests(hv):
    buf = scratch(hv)
    hv.guest.write(buf, GnttabMapGrantRef(host_addr=buf, flags=2, ref=0,
                                          dom=DOMID_SELF).to_bytes())
    assert gnttab(hv, GnttabOp.map_grant_ref, buf) == -Errno.ENOSYS
    assert gnttab(hv, GnttabOp.unmap_grant_ref, buf) == -Errno.ENOSYS


def test_decrease_reservation_gives_frames_back(hv):
    buf = scratch(hv)
    last = hv.built.p2m[-1]
    l4 = hv.built.l4_mfn
    hv.guest.write(buf + 0x100, struct.pack("<QQ", last, l4))
    hv.guest.write(buf, MemoryReservation64(extent_start=buf + 0x100, nr_extents=2,
                                            domid=DOMID_SELF).to_bytes())
    pages = hv.nr_guest_pages()
    assert hypercall(hv, Hc.memory_op, XenMem.decrease_reservation, buf) == 1
    assert hv.nr_guest_pages() == pages - 1 and last in hv.built.free_mfns
    assert hv.mm.owned[l4]                  # the live L4 stopped the batch
