"""grant_table_op map/unmap/unmap_and_replace/copy/transfer/cache_flush on the seed
domain's real frame table: per-op GNTST_* statuses as Xen 4.17 gives them to a 32-bit PV
domU, page references after every op (pvdbg.xen.invariants), and random op sequences."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pvdbg.machine.memory import PAGE_SHIFT, PAGE_SIZE
from pvdbg.session import Session, SessionOptions
from pvdbg.xen import invariants
from pvdbg.xen.constants import DOMID_SELF, Errno, Hc
from pvdbg.xen.grant_table import (
    DOM0_NR_GRANT_ENTRIES, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTTAB_CACHE_CLEAN,
    GTF_TRANSFER_COMMITTED, GTF_TRANSFER_COMPLETED, GnttabCacheFlush, GnttabCopy32,
    GnttabMapGrantRef, GnttabOp, GnttabSwapGrantRef, GnttabTransfer32, GnttabUnmapAndReplace,
    GnttabUnmapGrantRef, GntMap, Gntst, GrantEntryV1, GtfFlags)
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.mm import PTE_GNTTAB, PTE_P, PTE_RW, Owner, PageType, pte_mfn

VA = 0xC0000000
UOP_PFN = 0x100                       # scratch page for hypercall arguments
DATA_PFNS = range(0x110, 0x130)       # pages to grant
MAP_PFNS = range(0x180, 0x190)        # linear addresses to map grants at
OWN = 1


@pytest.fixture
def hv():
    session = Session.open(None, SessionOptions(memory_mib=16))
    yield session.hv
    session.close()


def va(pfn: int) -> int:
    return VA + (pfn << PAGE_SHIFT)


def mfn(hv, pfn: int) -> int:
    return hv.mm.mfn_of_pfn(pfn)


def gop(hv, cmd: int, records: list, count: int | None = None) -> tuple[int, list]:
    """Write `records` at the scratch page, issue grant_table_op, read them back."""
    uop = va(UOP_PFN)
    for i, rec in enumerate(records):
        hv.guest.write(uop + i * rec.SIZE, rec.to_bytes())
    ctx = HypercallContext(hv, hv.current)
    _, _, rc = hv.dispatch_hypercall(ctx, Hc.grant_table_op,
                                     (cmd, uop, len(records) if count is None else count, 0, 0, 0))
    out = [type(rec).from_bytes(hv.guest.read(uop + i * rec.SIZE, rec.SIZE))
           for i, rec in enumerate(records)]
    assert invariants.problems(hv) == []
    return rc, out


def grant(hv, ref: int, pfn: int, *, domid: int = OWN, flags: int = GtfFlags.permit_access) -> int:
    frame = mfn(hv, pfn)
    hv.grant_table.set_entry(ref, GrantEntryV1(flags=flags, domid=domid, frame=frame))
    return frame


def map_op(ref: int, *, dom: int = OWN, flags: int = GntMap.host_map,
           host_addr: int = va(MAP_PFNS[0])) -> GnttabMapGrantRef:
    return GnttabMapGrantRef(host_addr=host_addr, flags=flags, ref=ref, dom=dom)


def one_map(hv, op: GnttabMapGrantRef) -> GnttabMapGrantRef:
    rc, (out,) = gop(hv, GnttabOp.map_grant_ref, [op])
    assert rc == 0
    return out


def l1_slot(hv, linear: int) -> tuple[int, int]:
    mm = hv.mm
    l3e = mm.read_entry(mm.vcpu_cr3[0], linear >> 30)
    l2e = mm.read_entry(pte_mfn(l3e), (linear >> 21) & 0x1FF)
    return pte_mfn(l2e), (linear >> 12) & 0x1FF


# -- map_grant_ref: refusals ----------------------------------------------------------
@pytest.mark.parametrize("op,status", [
    (map_op(10, flags=0), Gntst.bad_gntref),                         # neither host nor device
    (map_op(10, flags=GntMap.readonly), Gntst.bad_gntref),
    (map_op(10, dom=DOMID_SELF), Gntst.bad_domain),                  # _by_id: no DOMID_SELF
    (map_op(10, dom=5), Gntst.bad_domain),
    (map_op(5, dom=0), Gntst.general_error),                         # dom0 granted nothing
    (map_op(DOM0_NR_GRANT_ENTRIES, dom=0), Gntst.bad_gntref),
    (map_op(512), Gntst.bad_gntref),                                 # beyond the own table
    (map_op(11), Gntst.general_error),                               # empty entry
    (map_op(0), Gntst.general_error),                                # console: granted to d0
    (map_op(12), Gntst.general_error),                               # r/o grant, RW map
    (map_op(13), Gntst.bad_page),                                    # frame not the domain's
    (map_op(14), Gntst.general_error),                               # frame is an L1: no RW type
    (map_op(10, host_addr=0x10000000), Gntst.general_error),         # no L1 for that address
    (map_op(10, host_addr=0xF5800000 + 0x1FF000), Gntst.general_error),   # Xen's L1 (the hole)
    (map_op(10, host_addr=1 << 32), Gntst.general_error),            # beyond 32 bits
    (map_op(10, flags=GntMap.host_map | GntMap.contains_pte, host_addr=3), Gntst.general_error),
    (map_op(15), Gntst.general_error),                               # GTF_sub_page set
])
def test_map_refusals(hv, op, status):
    grant(hv, 10, DATA_PFNS[0])
    grant(hv, 12, DATA_PFNS[1], flags=GtfFlags.permit_access | GtfFlags.readonly)
    hv.grant_table.set_entry(13, GrantEntryV1(flags=GtfFlags.permit_access, domid=OWN,
                                              frame=hv.built.free_mfns[0]))
    l1_mfn, _ = l1_slot(hv, va(MAP_PFNS[0]))
    hv.grant_table.set_entry(14, GrantEntryV1(flags=GtfFlags.permit_access, domid=OWN, frame=l1_mfn))
    grant(hv, 15, DATA_PFNS[2], flags=GtfFlags.permit_access | 0x100)
    before = hv.grant_table.entry(op.ref).flags if op.ref < 512 else 0
    out = one_map(hv, op)
    assert out.status == status
    assert out.handle == 0 and out.dev_bus_addr == 0            # left as the guest wrote them
    if op.ref < 512:
        assert hv.grant_table.entry(op.ref).flags == before     # GTF_reading/writing undone
    assert not hv.grant_table.maptrack and not hv.grant_table.active


def test_host_map_own_grant_and_unmap(hv):
    frame = grant(hv, 10, DATA_PFNS[0])
    hv.memory.write(frame << PAGE_SHIFT, b"granted!")
    target = va(MAP_PFNS[0])
    out = one_map(hv, map_op(10, host_addr=target))
    assert out.status == Gntst.okay and out.handle == 0 and out.dev_bus_addr == frame << PAGE_SHIFT
    l1_mfn, index = l1_slot(hv, target)
    pte = hv.mm.read_entry(l1_mfn, index)
    assert pte_mfn(pte) == frame and pte & (PTE_P | PTE_RW | PTE_GNTTAB) == PTE_P | PTE_RW | PTE_GNTTAB
    hv.cpu.flush_tlb()
    assert hv.guest.read(target, 8) == b"granted!"
    flags = hv.grant_table.entry(10).flags
    assert flags == GtfFlags.permit_access | GtfFlags.reading | GtfFlags.writing
    assert hv.mm.peek(frame).type is PageType.writable

    # a second map of the same grant gets the next handle; a read-only map keeps GTF_writing
    out2 = one_map(hv, map_op(10, flags=GntMap.host_map | GntMap.readonly, host_addr=va(MAP_PFNS[1])))
    assert out2.status == Gntst.okay and out2.handle == 1

    rc, (bad, unknown, wrong_addr) = gop(hv, GnttabOp.unmap_grant_ref, [
        GnttabUnmapGrantRef(host_addr=target, handle=0x7FFFFFFF),
        GnttabUnmapGrantRef(host_addr=target, handle=7),
        GnttabUnmapGrantRef(host_addr=va(MAP_PFNS[2]), handle=0)])
    assert rc == 0
    assert (bad.status, unknown.status, wrong_addr.status) == (
        Gntst.bad_handle, Gntst.bad_handle, Gntst.general_error)
    rc, (ok,) = gop(hv, GnttabOp.unmap_grant_ref, [GnttabUnmapGrantRef(host_addr=target, handle=0)])
    assert ok.status == Gntst.okay and hv.mm.read_entry(l1_mfn, index) == 0
    assert hv.grant_table.entry(10).flags == GtfFlags.permit_access | GtfFlags.reading
    rc, (again,) = gop(hv, GnttabOp.unmap_grant_ref, [GnttabUnmapGrantRef(host_addr=target, handle=0)])
    assert again.status == Gntst.bad_handle
    rc, (ro,) = gop(hv, GnttabOp.unmap_grant_ref, [GnttabUnmapGrantRef(host_addr=va(MAP_PFNS[1]), handle=1)])
    assert ro.status == Gntst.okay and hv.grant_table.entry(10).flags == GtfFlags.permit_access
    assert not hv.grant_table.active


def test_maptrack_handles_are_reused_fifo(hv):
    grant(hv, 10, DATA_PFNS[0])
    first = one_map(hv, map_op(10, flags=GntMap.host_map | GntMap.readonly))
    failed = one_map(hv, map_op(11))                  # takes handle 1, gives it back at the tail
    assert (first.handle, failed.status) == (0, Gntst.general_error)
    second = one_map(hv, map_op(10, flags=GntMap.host_map | GntMap.readonly, host_addr=va(MAP_PFNS[1])))
    assert second.handle == 2


def test_device_map_holds_references_without_a_pte(hv):
    frame = grant(hv, 10, DATA_PFNS[0])
    count_before, type_before = hv.mm.peek(frame).count, hv.mm.peek(frame).type_count
    out = one_map(hv, map_op(10, flags=GntMap.device_map))
    assert out.status == Gntst.okay
    assert hv.mm.peek(frame).count == count_before + 1
    assert hv.mm.peek(frame).type_count == type_before + 1
    rc, (wrong, no_addr) = gop(hv, GnttabOp.unmap_grant_ref, [
        GnttabUnmapGrantRef(dev_bus_addr=(frame + 1) << PAGE_SHIFT, handle=out.handle),
        GnttabUnmapGrantRef(handle=out.handle)])
    assert (wrong.status, no_addr.status) == (Gntst.general_error, Gntst.okay)
    assert hv.grant_table.maptrack                               # nothing was unmapped
    rc, (ok,) = gop(hv, GnttabOp.unmap_grant_ref,
                    [GnttabUnmapGrantRef(dev_bus_addr=frame << PAGE_SHIFT, handle=out.handle)])
    assert ok.status == Gntst.okay and hv.mm.peek(frame).count == count_before
    assert not hv.grant_table.maptrack


def test_contains_pte_map_and_unmap_and_replace(hv):
    frame = grant(hv, 10, DATA_PFNS[0])
    l1_mfn, index = l1_slot(hv, va(MAP_PFNS[3]))
    pte_maddr = (l1_mfn << PAGE_SHIFT) + index * 8
    out = one_map(hv, map_op(10, flags=GntMap.host_map | GntMap.contains_pte, host_addr=pte_maddr))
    assert out.status == Gntst.okay and pte_mfn(hv.mm.read_entry(l1_mfn, index)) == frame
    rc, (refused,) = gop(hv, GnttabOp.unmap_and_replace, [
        GnttabUnmapAndReplace(host_addr=pte_maddr, new_addr=va(MAP_PFNS[4]), handle=out.handle)])
    assert refused.status == Gntst.general_error               # no replace for PTE addresses
    rc, (ok,) = gop(hv, GnttabOp.unmap_grant_ref, [
        GnttabUnmapGrantRef(host_addr=pte_maddr, handle=out.handle)])
    assert ok.status == Gntst.okay and hv.mm.read_entry(l1_mfn, index) == 0

    out = one_map(hv, map_op(10, host_addr=va(MAP_PFNS[5])))
    donor_l1, donor_index = l1_slot(hv, va(MAP_PFNS[6]))
    donor = hv.mm.read_entry(donor_l1, donor_index)
    rc, (ok,) = gop(hv, GnttabOp.unmap_and_replace, [
        GnttabUnmapAndReplace(host_addr=va(MAP_PFNS[5]), new_addr=va(MAP_PFNS[6]), handle=out.handle)])
    assert ok.status == Gntst.okay
    slot = l1_slot(hv, va(MAP_PFNS[5]))
    assert hv.mm.read_entry(*slot) == donor and hv.mm.read_entry(donor_l1, donor_index) == 0


def test_implicit_unmap_of_a_grant_pte_crashes_the_domain(hv):
    grant(hv, 10, DATA_PFNS[0])
    one_map(hv, map_op(10, host_addr=va(MAP_PFNS[0])))
    l1_mfn, index = l1_slot(hv, va(MAP_PFNS[0]))
    hv.mm.mod_l1_entry(l1_mfn, index, 0)
    assert hv.domain.crash is not None
    assert "implicitly unmap a granted PTE" in hv.domain.crash.reason


def test_swap_of_a_pinned_entry_is_eagain(hv):
    grant(hv, 10, DATA_PFNS[0])
    one_map(hv, map_op(10, flags=GntMap.host_map | GntMap.readonly))
    rc, (busy, idle) = gop(hv, GnttabOp.swap_grant_ref, [
        GnttabSwapGrantRef(ref_a=10, ref_b=20), GnttabSwapGrantRef(ref_a=21, ref_b=20)])
    assert (busy.status, idle.status) == (Gntst.eagain, Gntst.okay)


# -- copy -------------------------------------------------------------------------------
def copy_op(src: int, dst: int, *, src_dom: int = DOMID_SELF, dst_dom: int = DOMID_SELF,
            flags: int = 0, length: int = 8, src_off: int = 0, dst_off: int = 0) -> GnttabCopy32:
    return GnttabCopy32(source_ref=src, source_domid=src_dom, source_offset=src_off,
                        dest_ref=dst, dest_domid=dst_dom, dest_offset=dst_off, len=length,
                        flags=flags)


def copy_cases(hv) -> list[tuple[GnttabCopy32, Gntst]]:
    a, b = mfn(hv, DATA_PFNS[0]), mfn(hv, DATA_PFNS[1])
    l1_mfn, _ = l1_slot(hv, va(MAP_PFNS[0]))
    xen_frame = hv.built.free_mfns[0]
    both = GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF
    return [
        (copy_op(a, b), Gntst.okay),
        (copy_op(a, b, src_dom=OWN), Gntst.permission_denied),      # frames need DOMID_SELF
        (copy_op(a, b, dst_dom=0), Gntst.permission_denied),
        (copy_op(5, b, src_dom=0, flags=GNTCOPY_SOURCE_GREF), Gntst.general_error),
        (copy_op(DOM0_NR_GRANT_ENTRIES, b, src_dom=0, flags=GNTCOPY_SOURCE_GREF), Gntst.bad_gntref),
        (copy_op(a, 5, dst_dom=9, flags=GNTCOPY_DEST_GREF), Gntst.bad_domain),
        (copy_op(10, 11, src_dom=OWN, dst_dom=DOMID_SELF, flags=both), Gntst.okay),
        (copy_op(10, 12, flags=both), Gntst.general_error),          # dest grant is read-only
        (copy_op(12, 10, flags=both), Gntst.okay),                   # reading it is fine
        (copy_op(13, b, flags=GNTCOPY_SOURCE_GREF), Gntst.general_error),   # granted to d0
        (copy_op(600, b, flags=GNTCOPY_SOURCE_GREF), Gntst.bad_gntref),
        (copy_op(a, b, length=16, src_off=4090), Gntst.bad_copy_arg),
        (copy_op(a, b, length=16, dst_off=4081), Gntst.bad_copy_arg),
        (copy_op(a, l1_mfn), Gntst.general_error),                   # no writable type on an L1
        (copy_op(l1_mfn, a), Gntst.okay),                            # reading an L1 is fine
        (copy_op(xen_frame, a), Gntst.bad_page),
        (copy_op(a, 0xFFFFFF), Gntst.bad_page),
    ]


def test_copy_statuses(hv):
    grant(hv, 10, DATA_PFNS[2])
    grant(hv, 11, DATA_PFNS[3])
    grant(hv, 12, DATA_PFNS[4], flags=GtfFlags.permit_access | GtfFlags.readonly)
    grant(hv, 13, DATA_PFNS[5], domid=0)
    hv.memory.write(mfn(hv, DATA_PFNS[0]) << PAGE_SHIFT, b"ABCDEFGH")
    hv.memory.write(mfn(hv, DATA_PFNS[2]) << PAGE_SHIFT, b"grant-10")
    cases = copy_cases(hv)
    rc, out = gop(hv, GnttabOp.copy, [op for op, _ in cases])
    assert rc == 0
    assert [o.status for o in out] == [status for _, status in cases]
    assert hv.memory.read(mfn(hv, DATA_PFNS[1]) << PAGE_SHIFT, 8) == b"ABCDEFGH"
    assert hv.memory.read(mfn(hv, DATA_PFNS[3]) << PAGE_SHIFT, 8) == b"grant-10"
    assert not hv.grant_table.active
    for ref in (10, 11, 12):
        assert hv.grant_table.entry(ref).flags & (GtfFlags.reading | GtfFlags.writing) == 0


def test_copy_fault_and_hole_checks(hv):
    uop = va(UOP_PFN)
    ctx = HypercallContext(hv, hv.current)
    _, _, rc = hv.dispatch_hypercall(ctx, Hc.grant_table_op, (GnttabOp.copy, 0xF57FFFF0, 1, 0, 0, 0))
    assert rc == -Errno.EFAULT
    _, _, rc = hv.dispatch_hypercall(ctx, Hc.grant_table_op, (GnttabOp.copy, 0x1000, 1, 0, 0, 0))
    assert rc == -Errno.EFAULT                                   # not mapped
    assert rc == -Errno.EFAULT and uop


# -- transfer ---------------------------------------------------------------------------
def test_transfer(hv):
    table = hv.grant_table
    mm = hv.mm
    table.set_entry(20, GrantEntryV1(flags=GtfFlags.accept_transfer, domid=OWN, frame=0x777))
    given_back = mfn(hv, DATA_PFNS[0])
    mapped_twice = mfn(hv, 0x20)                  # kernel page: mapped, count > 1
    to_dom0 = mfn(hv, DATA_PFNS[1])
    to_nobody = mfn(hv, DATA_PFNS[2])
    bad_ref = mfn(hv, DATA_PFNS[3])
    hv.memory.write(given_back << PAGE_SHIFT, b"keep")
    console = hv.devices.console_mfn              # xenconsoled keeps it mapped
    for pfn in (*DATA_PFNS[:4], hv.layout.console_pfn):   # unmapped: only PGC_allocated left
        slot = l1_slot(hv, va(pfn))
        mm.mod_l1_entry(*slot, 0)
    tot = mm.tot_pages
    rc, out = gop(hv, GnttabOp.transfer, [
        GnttabTransfer32(mfn=given_back, domid=OWN, ref=20),
        GnttabTransfer32(mfn=mapped_twice, domid=OWN, ref=20),
        GnttabTransfer32(mfn=0xFFFFFF, domid=OWN, ref=20),
        GnttabTransfer32(mfn=to_dom0, domid=0, ref=20),
        GnttabTransfer32(mfn=to_nobody, domid=DOMID_SELF, ref=20),
        GnttabTransfer32(mfn=bad_ref, domid=OWN, ref=21),
        GnttabTransfer32(mfn=table.frames[0], domid=OWN, ref=20),
        GnttabTransfer32(mfn=console, domid=OWN, ref=20),
    ])
    assert rc == 0
    assert [o.status for o in out] == [Gntst.okay, Gntst.bad_page, Gntst.bad_page,
                                       Gntst.general_error, Gntst.bad_domain,
                                       Gntst.general_error, Gntst.bad_page, Gntst.bad_page]
    entry = table.entry(20)
    assert entry.frame == given_back
    assert entry.flags == GtfFlags.accept_transfer | GTF_TRANSFER_COMMITTED | GTF_TRANSFER_COMPLETED
    assert mm.m2p_get(given_back) == 0x777 and mm.owner(given_back) is Owner.domain
    assert hv.memory.read(given_back << PAGE_SHIFT, 4) == b"keep"
    for lost in (to_dom0, to_nobody, bad_ref):    # a failed transfer frees the page
        assert mm.owner(lost) is Owner.free and lost in hv.built.free_mfns
    assert mm.tot_pages == tot - 3


# -- cache_flush ------------------------------------------------------------------------
@pytest.mark.parametrize("opaque,op,rc", [
    (0, GnttabCacheFlush(dev_bus_addr=0x110 << 12, length=64, op=GNTTAB_CACHE_CLEAN), 0),
    (0, GnttabCacheFlush(dev_bus_addr=0x110 << 12, length=64, op=3), 0),
    (0, GnttabCacheFlush(dev_bus_addr=0x110 << 12, length=64, op=2), -Errno.EOPNOTSUPP),
    (0, GnttabCacheFlush(dev_bus_addr=0x110 << 12, length=64, op=8), -Errno.EINVAL),
    (0, GnttabCacheFlush(dev_bus_addr=0x110 << 12, length=64, op=1 << 31), -Errno.EINVAL),
    (0, GnttabCacheFlush(dev_bus_addr=0x110 << 12, offset=4090, length=64, op=1), -Errno.EINVAL),
    (0, GnttabCacheFlush(length=0, op=1), 0),
    (1 << 12, GnttabCacheFlush(length=0, op=1), -Errno.EILSEQ),
    (0, GnttabCacheFlush(dev_bus_addr=1 << 44, length=1, op=1), -Errno.EINVAL),
    (0, GnttabCacheFlush(dev_bus_addr=None, length=1, op=1), -Errno.EPERM),   # a free frame
])
def test_cache_flush(hv, opaque, op, rc):
    if op.dev_bus_addr is None:
        op = GnttabCacheFlush(dev_bus_addr=hv.built.free_mfns[0] << PAGE_SHIFT, length=1, op=1)
    elif op.dev_bus_addr == 0x110 << 12:
        op = GnttabCacheFlush(dev_bus_addr=mfn(hv, 0x110) << PAGE_SHIFT, offset=op.offset,
                              length=op.length, op=op.op)
    got, _ = gop(hv, GnttabOp.cache_flush | opaque, [op])
    assert got == rc


# -- random sequences -------------------------------------------------------------------
_op = st.one_of(
    st.tuples(st.just("map"), st.integers(8, 14), st.sampled_from([OWN, 0, DOMID_SELF]),
              st.sampled_from([GntMap.host_map, GntMap.device_map, GntMap.host_map | GntMap.readonly,
                               GntMap.device_map | GntMap.host_map,
                               GntMap.device_map | GntMap.readonly, 0]),
              st.integers(0, 5)),
    st.tuples(st.just("unmap"), st.integers(0, 6), st.booleans(), st.booleans(), st.integers(0, 5)),
    st.tuples(st.just("copy"), st.integers(8, 14), st.integers(8, 14),
              st.integers(0, 3), st.integers(0, 4200)),
    st.tuples(st.just("regrant"), st.integers(8, 14), st.integers(0, 6),
              st.sampled_from([0, GtfFlags.permit_access,
                               GtfFlags.permit_access | GtfFlags.readonly])),
    st.tuples(st.just("swap"), st.integers(8, 14), st.integers(8, 14)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, min_size=1, max_size=25))
def test_random_grant_sequences_keep_the_invariants(ops):
    session = Session.open(None, SessionOptions(memory_mib=16))
    hv = session.hv
    try:
        l1_mfn, _ = l1_slot(hv, va(MAP_PFNS[0]))
        frames = [mfn(hv, p) for p in DATA_PFNS[:6]] + [l1_mfn]
        for ref in range(8, 15):
            grant(hv, ref, DATA_PFNS[ref - 8])
        for op in ops:
            kind = op[0]
            if kind == "map":
                _, ref, dom, flags, where = op
                gop(hv, GnttabOp.map_grant_ref,
                    [map_op(ref, dom=dom, flags=flags, host_addr=va(MAP_PFNS[where]))])
            elif kind == "unmap":
                _, handle, host, dev, where = op
                mapping = hv.grant_table.maptrack.get(handle)
                bus = mapping.mfn << PAGE_SHIFT if (mapping and dev) else 0
                gop(hv, GnttabOp.unmap_grant_ref, [GnttabUnmapGrantRef(
                    host_addr=va(MAP_PFNS[where]) if host else 0, dev_bus_addr=bus, handle=handle)])
            elif kind == "copy":
                _, src, dst, gref_flags, offset = op
                gop(hv, GnttabOp.copy, [copy_op(src, dst, src_dom=OWN, dst_dom=OWN,
                                                flags=gref_flags, src_off=offset % 4096)])
            elif kind == "regrant":
                _, ref, which, flags = op
                hv.grant_table.set_entry(ref, GrantEntryV1(flags=flags, domid=OWN,
                                                           frame=frames[which]))
            else:
                _, a, b = op
                gop(hv, GnttabOp.swap_grant_ref, [GnttabSwapGrantRef(ref_a=a, ref_b=b)])
            if hv.domain.crash is not None:
                break
        for handle, mapping in sorted(hv.grant_table.maptrack.items()):
            gop(hv, GnttabOp.unmap_grant_ref, [GnttabUnmapGrantRef(
                host_addr=0, dev_bus_addr=mapping.mfn << PAGE_SHIFT, handle=handle)])
    finally:
        session.close()


def test_uop_structures_match_the_compat_abi():
    assert (GnttabMapGrantRef.SIZE, GnttabUnmapGrantRef.SIZE, GnttabUnmapAndReplace.SIZE,
            GnttabCopy32.SIZE, GnttabTransfer32.SIZE, GnttabCacheFlush.SIZE) == (32, 24, 24, 24, 16, 16)
    assert GnttabMapGrantRef.offset_of("handle") == 20 and GnttabCopy32.offset_of("status") == 20
    raw = struct.pack("<QIIHhIQ", 1, 2, 3, 4, -5, 6, 7)
    assert GnttabMapGrantRef.from_bytes(raw).status == -5
    assert PAGE_SIZE == 4096
