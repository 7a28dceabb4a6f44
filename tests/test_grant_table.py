"""Grant tables: the v1 table, grant_table_op as a 32-bit PV guest sees it, backend access
checks, and XENMAPSPACE_grant_table.  Pure: machine memory plus a fake guest address
space where guest VA == machine address."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st

from pvdbg.machine.memory import PAGE_SIZE, MachineMemory
from pvdbg.xen.constants import DOMID_SELF, Errno, Hc
from pvdbg.xen.grant_table import (
    DEFAULT_MAX_GRANT_FRAMES, ENTRIES_PER_FRAME, AddToPhysmap32, GnttabGetVersion, GnttabOp,
    GnttabQuerySize, GnttabSetupTable32, GnttabSwapGrantRef, GrantEntryV1, GrantError, GrantTable,
    GtfFlags, Gntst, XenMapSpace, add_to_physmap)
from pvdbg.xen.guestmem import GuestFault
from pvdbg.xen.hypercalls import HYPERCALLS, HypercallError

NR_FRAMES = 64
POOL = list(range(40, 64))            # spare machine frames for the table
SCRATCH = 0x3000                      # guest VA (== maddr) of hypercall argument buffers


class FlatGuest:
    """copy_from/to_guest over machine memory with VA == maddr; frame 0 is unmapped."""

    hole_start = NR_FRAMES * PAGE_SIZE

    def __init__(self, memory: MachineMemory) -> None:
        self.memory = memory

    def _check(self, va: int, length: int) -> None:
        if va < PAGE_SIZE or va + length > self.hole_start:
            raise GuestFault(va, "not mapped")

    def read(self, va: int, length: int) -> bytes:
        self._check(va, length)
        return self.memory.read(va, length)

    def write(self, va: int, data: bytes) -> None:
        self._check(va, len(data))
        self.memory.write(va, data)

    def read_u32(self, va: int) -> int:
        return struct.unpack("<I", self.read(va, 4))[0]

    def write_u32(self, va: int, value: int) -> None:
        self.write(va, struct.pack("<I", value))


def make_table(**kwargs) -> tuple[MachineMemory, GrantTable, list[int]]:
    memory = MachineMemory(NR_FRAMES)
    pool = list(POOL)
    table = GrantTable(memory, 1, lambda: pool.pop(0) if pool else None, **kwargs)
    return memory, table, pool


def make_ctx(memory: MachineMemory, table: GrantTable):
    notes: list[str] = []
    return SimpleNamespace(hv=SimpleNamespace(grant_table=table), domain=SimpleNamespace(domid=1),
                           guest=FlatGuest(memory), note=notes.append, notes=notes)


def call(ctx, cmd: int, uop: int, count: int) -> int:
    """Dispatch as Hypervisor.hypercall does: -errno for refusals and bad pointers."""
    spec = HYPERCALLS.get(Hc.grant_table_op)
    try:
        return spec.fn(ctx, cmd & 0xFFFFFFFF, uop & 0xFFFFFFFF, count & 0xFFFFFFFF)
    except HypercallError as err:
        return -err.errno
    except GuestFault:
        return -Errno.EFAULT


def setup_table(memory, ctx, nr_frames: int, dom: int = DOMID_SELF,
                count: int = 1) -> tuple[int, int, list[int]]:
    frame_list = SCRATCH + 0x100
    memory.write(frame_list, b"\xee" * 4 * max(nr_frames, 1))
    memory.write(SCRATCH, GnttabSetupTable32(dom=dom, nr_frames=nr_frames, status=0x7777,
                                             frame_list=frame_list).to_bytes())
    rc = call(ctx, GnttabOp.setup_table, SCRATCH, count)
    op = GnttabSetupTable32.from_bytes(memory.read(SCRATCH, GnttabSetupTable32.SIZE))
    frames = [memory.read_u32(frame_list + 4 * i) for i in range(nr_frames)]
    return rc, op.status, frames


def test_table_starts_with_one_frame_from_the_pool_and_seeds_reserved_entries():
    memory, table, pool = make_table()
    assert table.frames == [POOL[0]] and table.nr_entries == ENTRIES_PER_FRAME == 512
    assert table.active_entries() == []
    table.seed_toolstack_entries(console_mfn=7, store_mfn=8)
    assert table.entry(0) == GrantEntryV1(flags=GtfFlags.permit_access, domid=0, frame=7)
    assert table.entry(1) == GrantEntryV1(flags=GtfFlags.permit_access, domid=0, frame=8)
    assert [ref for ref, _ in table.active_entries()] == [0, 1]
    # The entries are plain bytes in the frame the guest maps.
    assert memory.read(POOL[0] << 12, 8) == struct.pack("<HHI", 1, 0, 7)


def test_seed_skips_entries_the_domain_serves_itself():
    _, table, _ = make_table()
    table.seed_toolstack_entries(console_mfn=7, store_mfn=8, console_domid=1, store_domid=1)
    assert table.active_entries() == []


def test_for_domain_takes_frames_from_the_builder_pool():
    memory = MachineMemory(8)
    built = SimpleNamespace(memory=memory, free_mfns=[5, 6, 7])
    table = GrantTable.for_domain(built, 1)
    assert table.frames == [5] and built.free_mfns == [6, 7]


def test_setup_table_returns_the_frames_and_grows_on_demand():
    memory, table, _ = make_table()
    ctx = make_ctx(memory, table)
    rc, status, frames = setup_table(memory, ctx, 1)
    assert (rc, status, frames) == (0, Gntst.okay, [POOL[0]])
    rc, status, frames = setup_table(memory, ctx, 3)
    assert (rc, status, frames) == (0, Gntst.okay, POOL[:3])
    assert table.nr_frames == 3
    # own domid works like DOMID_SELF
    assert setup_table(memory, ctx, 2, dom=1)[:2] == (0, Gntst.okay)


def test_setup_table_refusals_come_back_in_status():
    memory, table, pool = make_table()
    ctx = make_ctx(memory, table)
    assert setup_table(memory, ctx, DEFAULT_MAX_GRANT_FRAMES + 1)[:2] == (0, Gntst.general_error)
    assert setup_table(memory, ctx, 1, dom=0)[:2] == (0, Gntst.permission_denied)
    assert setup_table(memory, ctx, 1, dom=9)[:2] == (0, Gntst.bad_domain)
    pool.clear()                                   # machine memory exhausted
    assert setup_table(memory, ctx, 2)[:2] == (0, Gntst.general_error)
    assert table.nr_frames == 1


def test_setup_table_count_rules_follow_the_compat_path():
    memory, table, _ = make_table()
    ctx = make_ctx(memory, table)
    assert setup_table(memory, ctx, 1, count=2)[0] == -Errno.EINVAL
    rc, status, _ = setup_table(memory, ctx, 1, count=0)
    assert rc == 0 and status == 0x7777               # nothing touched
    assert call(ctx, GnttabOp.setup_table, 0x10, 1) == -Errno.EFAULT
    # frame_list reaching into the hypervisor hole is refused up front
    memory.write(SCRATCH, GnttabSetupTable32(dom=DOMID_SELF, nr_frames=4,
                                             frame_list=FlatGuest.hole_start - 8).to_bytes())
    assert call(ctx, GnttabOp.setup_table, SCRATCH, 1) == -Errno.EFAULT


def test_query_size():
    memory, table, _ = make_table()
    ctx = make_ctx(memory, table)
    table.grow(2)
    memory.write(SCRATCH, GnttabQuerySize(dom=DOMID_SELF).to_bytes())
    assert call(ctx, GnttabOp.query_size, SCRATCH, 1) == 0
    assert GnttabQuerySize.from_bytes(memory.read(SCRATCH, 16)) == GnttabQuerySize(
        dom=DOMID_SELF, nr_frames=2, max_nr_frames=DEFAULT_MAX_GRANT_FRAMES, status=0)
    memory.write(SCRATCH, GnttabQuerySize(dom=0).to_bytes())
    assert call(ctx, GnttabOp.query_size, SCRATCH, 1) == 0
    assert GnttabQuerySize.from_bytes(memory.read(SCRATCH, 16)).status == Gntst.permission_denied
    assert call(ctx, GnttabOp.query_size, SCRATCH, 2) == -Errno.EINVAL


def test_set_and_get_version():
    memory, table, _ = make_table()
    ctx = make_ctx(memory, table)
    for asked, rc in ((1, 0), (2, -Errno.ENOSYS), (3, -Errno.EINVAL), (0, -Errno.EINVAL)):
        memory.write_u32(SCRATCH, asked)
        assert call(ctx, GnttabOp.set_version, SCRATCH, 1) == rc
        assert memory.read_u32(SCRATCH) == 1           # always written back: the current version
    memory.write(SCRATCH, GnttabGetVersion(dom=DOMID_SELF, version=99).to_bytes())
    assert call(ctx, GnttabOp.get_version, SCRATCH, 1) == 0
    assert GnttabGetVersion.from_bytes(memory.read(SCRATCH, 8)).version == 1
    memory.write(SCRATCH, GnttabGetVersion(dom=0).to_bytes())
    assert call(ctx, GnttabOp.get_version, SCRATCH, 1) == -Errno.EPERM
    memory.write(SCRATCH, GnttabGetVersion(dom=42).to_bytes())
    assert call(ctx, GnttabOp.get_version, SCRATCH, 1) == -Errno.ESRCH


def test_version_change_keeps_table_contents():
    memory, table, _ = make_table()
    ctx = make_ctx(memory, table)
    table.seed_toolstack_entries(7, 8)
    memory.write_u32(SCRATCH, 1)
    assert call(ctx, GnttabOp.set_version, SCRATCH, 1) == 0
    assert table.entry(0).frame == 7


def test_get_status_frames_and_swap_grant_ref():
    memory, table, _ = make_table()
    ctx = make_ctx(memory, table)
    memory.write(SCRATCH, struct.pack("<IHhI", 1, DOMID_SELF, 0, SCRATCH + 64))
    assert call(ctx, GnttabOp.get_status_frames, SCRATCH, 1) == 0
    assert struct.unpack_from("<h", memory.read(SCRATCH + 6, 2))[0] == Gntst.general_error
    memory.write(SCRATCH, struct.pack("<IHhI", 0, DOMID_SELF, 0, SCRATCH + 64))
    assert call(ctx, GnttabOp.get_status_frames, SCRATCH, 1) == 0
    assert struct.unpack_from("<h", memory.read(SCRATCH + 6, 2))[0] == Gntst.okay

    table.set_entry(3, GrantEntryV1(flags=1, domid=0, frame=20))
    table.set_entry(4, GrantEntryV1(flags=5, domid=0, frame=21))
    ops = (GnttabSwapGrantRef(ref_a=3, ref_b=4).to_bytes()
           + GnttabSwapGrantRef(ref_a=3, ref_b=9999).to_bytes())
    memory.write(SCRATCH, ops)
    assert call(ctx, GnttabOp.swap_grant_ref, SCRATCH, 2) == 0
    assert table.entry(3).frame == 21 and table.entry(4).frame == 20
    results = [GnttabSwapGrantRef.from_bytes(memory.read(SCRATCH + 12 * i, 12)).status for i in range(2)]
    assert results == [Gntst.okay, Gntst.bad_gntref]


@pytest.mark.parametrize("cmd,count,rc", [
    (GnttabOp.dump_table, 1, -Errno.ENOSYS),
    (GnttabOp.map_grant_ref, 1 << 28, -Errno.EFAULT),          # the array reaches the hole
    (GnttabOp.copy, 1 << 28, -Errno.EFAULT),
    (GnttabOp.map_grant_ref | (1 << 12), 1, -Errno.EINVAL),
    (99, 1, -Errno.ENOSYS),
    (GnttabOp.query_size | (1 << 12), 1, -Errno.EINVAL),       # continuation bits
    (GnttabOp.query_size, -1, -Errno.EINVAL),                  # (int)count < 0
])
def test_other_commands(cmd, count, rc):
    memory, table, _ = make_table()
    assert call(make_ctx(memory, table), cmd, SCRATCH, count) == rc


def test_no_grant_table_means_enosys():
    memory = MachineMemory(NR_FRAMES)
    ctx = SimpleNamespace(hv=SimpleNamespace(), domain=SimpleNamespace(domid=1),
                          guest=FlatGuest(memory), note=lambda text: None)
    memory.write_u32(SCRATCH, 1)
    assert call(ctx, GnttabOp.set_version, SCRATCH, 1) == -Errno.ENOSYS


def test_backend_access_checks():
    memory, table, _ = make_table(frame_owned=lambda mfn: mfn < 32)
    table.set_entry(2, GrantEntryV1(flags=GtfFlags.permit_access, domid=0, frame=10))
    table.set_entry(3, GrantEntryV1(flags=GtfFlags.permit_access | GtfFlags.readonly, domid=0, frame=11))
    table.set_entry(4, GrantEntryV1(flags=GtfFlags.permit_access, domid=5, frame=12))
    table.set_entry(5, GrantEntryV1(flags=GtfFlags.permit_access, domid=0, frame=50))
    table.set_entry(6, GrantEntryV1(flags=GtfFlags.accept_transfer, domid=0, frame=13))
    assert table.acquire(2, 0, writable=True).mfn == 10
    assert table.acquire(3, 0, writable=False).mfn == 11
    cases = [(3, True, Gntst.general_error), (4, False, Gntst.general_error),
             (5, False, Gntst.bad_page), (6, False, Gntst.general_error),
             (7, False, Gntst.general_error), (512, False, Gntst.bad_gntref)]
    for ref, writable, status in cases:
        with pytest.raises(GrantError) as err:
            table.acquire(ref, 0, writable=writable)
        assert err.value.status == status, ref


def test_granted_copies():
    memory, table, _ = make_table()
    table.set_entry(2, GrantEntryV1(flags=GtfFlags.permit_access, domid=0, frame=10))
    table.write_granted(2, 0, 100, b"xyz")
    assert memory.read((10 << 12) + 100, 3) == b"xyz"
    assert table.read_granted(2, 0, 99, 5) == b"\0xyz\0"
    with pytest.raises(GrantError) as err:
        table.read_granted(2, 0, 4090, 10)
    assert err.value.status == Gntst.bad_copy_arg


def test_add_to_physmap_grant_table():
    _, table, _ = make_table()
    xatp = AddToPhysmap32(domid=DOMID_SELF, space=XenMapSpace.grant_table, idx=2, gpfn=0x500)
    with pytest.raises(HypercallError) as err:
        add_to_physmap(table, xatp, translated=False)
    assert err.value.errno == Errno.EACCES
    assert add_to_physmap(table, xatp, translated=True) == POOL[2]
    assert table.nr_frames == 3
    for bad, errno in ((AddToPhysmap32(domid=DOMID_SELF, space=XenMapSpace.gmfn_foreign), Errno.ENOSYS),
                       (AddToPhysmap32(domid=9, space=XenMapSpace.grant_table), Errno.ESRCH),
                       (AddToPhysmap32(domid=0, space=XenMapSpace.grant_table), Errno.EACCES),
                       (AddToPhysmap32(domid=DOMID_SELF, space=XenMapSpace.grant_table,
                                       idx=0x80000000), Errno.EINVAL),
                       (AddToPhysmap32(domid=DOMID_SELF, space=XenMapSpace.grant_table,
                                       idx=DEFAULT_MAX_GRANT_FRAMES), Errno.EINVAL)):
        with pytest.raises(HypercallError) as err:
            add_to_physmap(table, bad, translated=True)
        assert err.value.errno == errno


def test_hypercall_is_registered_with_decoded_arguments():
    spec = HYPERCALLS.get(Hc.grant_table_op)
    assert spec is not None
    assert spec.decode_args((2, 0x1000, 1)) == {"cmd": "setup_table", "uop": 0x1000, "count": 1}


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.integers(0, ENTRIES_PER_FRAME - 1))
def test_entries_round_trip(flags, domid, frame, ref):
    _, table, _ = make_table()
    entry = GrantEntryV1(flags=flags, domid=domid, frame=frame)
    table.set_entry(ref, entry)
    assert table.entry(ref) == entry
    assert GrantEntryV1.from_bytes(entry.to_bytes()) == entry
