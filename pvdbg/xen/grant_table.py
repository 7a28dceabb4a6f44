"""Grant tables: a domain's v1 grant entries, the grant_table_op hypercall, and the
access checks a backend makes before it touches a granted frame.

The shared table lives in Xen-owned frames (taken from the builder's spare pool) that a
PV guest receives by MFN from GNTTABOP_setup_table and maps itself.  The toolstack seeds
reserved entries 0 (console) and 1 (xenstore) before the guest runs.
ABI: xen/include/public/grant_table.h; xen/common/grant_table.c,
xen/common/compat/grant_table.c; tools/libs/guest/xg_dom_boot.c xc_dom_gnttab_seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Callable, Sequence

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .abi import abi_struct, at
from .constants import DOMID_SELF, Errno, Hc
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param, fail

if TYPE_CHECKING:
    from .builder import BuiltDomain
    from .hypervisor import HypercallContext

GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
INITIAL_NR_GRANT_FRAMES = 1
DEFAULT_MAX_GRANT_FRAMES = 64          # xl's max_grant_frames default
GNTTABOP_ARG_SHIFT = 12
GNTTABOP_CMD_MASK = (1 << GNTTABOP_ARG_SHIFT) - 1
XENMAPIDX_GRANT_TABLE_STATUS = 0x80000000
DOM0_ID = 0


class GnttabOp(IntEnum):
    """GNTTABOP_* commands.  ABI: xen/include/public/grant_table.h."""
    map_grant_ref = 0
    unmap_grant_ref = 1
    setup_table = 2
    dump_table = 3
    transfer = 4
    copy = 5
    query_size = 6
    unmap_and_replace = 7
    set_version = 8
    get_status_frames = 9
    get_version = 10
    swap_grant_ref = 11
    cache_flush = 12


class Gntst(IntEnum):
    """GNTST_* per-operation status codes (negative).  ABI: grant_table.h."""
    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13


class GtfFlags(IntFlag):
    """grant_entry_v1.flags bits.  ABI: grant_table.h GTF_*."""
    permit_access = 1
    accept_transfer = 2
    readonly = 4
    reading = 8
    writing = 16
    PWT = 32
    PCD = 64
    PAT = 128


GTF_TYPE_MASK = 3


class XenMapSpace(IntEnum):
    """XENMAPSPACE_* for XENMEM_add_to_physmap.  ABI: xen/include/public/memory.h."""
    shared_info = 0
    grant_table = 1
    gmfn = 2
    gmfn_range = 3
    gmfn_foreign = 4
    dev_mmio = 5


@abi_struct(size=8, source="xen/include/public/grant_table.h struct grant_entry_v1")
class GrantEntryV1:
    flags: int = at(0, "H")                 # GTF_*
    domid: int = at(2, "H")                 # domain allowed to use the grant
    frame: int = at(4, "I")                 # MFN for a PV granter


@abi_struct(size=16, source="xen/include/public/grant_table.h struct gnttab_setup_table (compat)")
class GnttabSetupTable32:
    dom: int = at(0, "H")
    nr_frames: int = at(4, "I")
    status: int = at(8, "h")                # OUT: GNTST_*
    frame_list: int = at(12, "I")           # guest VA of u32 frames[nr_frames]


@abi_struct(size=16, source="xen/include/public/grant_table.h struct gnttab_query_size")
class GnttabQuerySize:
    dom: int = at(0, "H")
    nr_frames: int = at(4, "I")             # OUT
    max_nr_frames: int = at(8, "I")         # OUT
    status: int = at(12, "h")               # OUT


@abi_struct(size=4, source="xen/include/public/grant_table.h struct gnttab_set_version")
class GnttabSetVersion:
    version: int = at(0, "I")               # IN/OUT


@abi_struct(size=8, source="xen/include/public/grant_table.h struct gnttab_get_version")
class GnttabGetVersion:
    dom: int = at(0, "H")
    version: int = at(4, "I")               # OUT


@abi_struct(size=12, source="xen/include/public/grant_table.h struct gnttab_get_status_frames (compat)")
class GnttabGetStatusFrames32:
    nr_frames: int = at(0, "I")
    dom: int = at(4, "H")
    status: int = at(6, "h")                # OUT
    frame_list: int = at(8, "I")            # guest VA of u64 frames[nr_frames]


@abi_struct(size=12, source="xen/include/public/grant_table.h struct gnttab_swap_grant_ref")
class GnttabSwapGrantRef:
    ref_a: int = at(0, "I")
    ref_b: int = at(4, "I")
    status: int = at(8, "h")                # OUT


@abi_struct(size=16, source="xen/include/public/memory.h struct xen_add_to_physmap (compat)")
class AddToPhysmap32:
    domid: int = at(0, "H")
    size: int = at(2, "H")                  # gmfn_range only
    space: int = at(4, "I")                 # XENMAPSPACE_*
    idx: int = at(8, "I")
    gpfn: int = at(12, "I")


ENTRIES_PER_FRAME = PAGE_SIZE // GrantEntryV1.SIZE


class GrantError(Exception):
    """A grant cannot be used as asked; `status` is the GNTST_* Xen would report."""

    def __init__(self, status: Gntst, why: str) -> None:
        self.status = status
        self.why = why
        super().__init__(f"GNTST_{status.name}: {why}")


@dataclass(frozen=True)
class GrantAccess:
    """A validated grant: the frame a backend may touch, and how."""
    ref: int
    mfn: int
    writable: bool


class GrantTable:
    """One domain's grant table (version 1 only: this Xen runs with gnttab=max-ver:1).

    `alloc_mfn()` returns a fresh machine frame or None when none is left.
    `frame_owned(mfn)` says whether a frame belongs to the granting domain (Xen's
    get_paged_frame); by default any frame inside machine RAM.
    """

    def __init__(self, memory: MachineMemory, domid: int, alloc_mfn: Callable[[], int | None], *,
                 max_frames: int = DEFAULT_MAX_GRANT_FRAMES, max_version: int = 1,
                 frame_owned: Callable[[int], bool] | None = None) -> None:
        if not 1 <= max_frames <= 1024:
            raise ValueError(f"max grant frames {max_frames} out of range")
        if max_version != 1:
            raise ValueError("only grant table version 1 is emulated")
        self.memory = memory
        self.domid = domid
        self._alloc_mfn = alloc_mfn
        self.max_frames = max_frames
        self.max_version = max_version
        self.version = 1
        self.frames: list[int] = []
        self._frame_owned = frame_owned if frame_owned is not None else memory.frame_valid
        if not self.grow(INITIAL_NR_GRANT_FRAMES):
            raise ValueError("no machine frame left for the grant table")

    @classmethod
    def for_domain(cls, built: "BuiltDomain", domid: int, **kwargs) -> "GrantTable":
        """A table whose frames come from the builder's spare pool (`free_mfns`)."""
        def alloc() -> int | None:
            return built.free_mfns.pop(0) if built.free_mfns else None
        return cls(built.memory, domid, alloc, **kwargs)

    # -- frames and entries -------------------------------------------------------
    @property
    def nr_frames(self) -> int:
        return len(self.frames)

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * ENTRIES_PER_FRAME

    def grow(self, nr_frames: int) -> bool:
        """Grow to `nr_frames` frames (gnttab_grow_table); False if over the limit or
        out of machine memory, leaving the table as it was."""
        if nr_frames > self.max_frames:
            return False
        added: list[int] = []
        while len(self.frames) + len(added) < nr_frames:
            mfn = self._alloc_mfn()
            if mfn is None:
                return False
            self.memory.zero_frame(mfn)
            added.append(mfn)
        self.frames.extend(added)
        return True

    def _entry_maddr(self, ref: int) -> int:
        if not 0 <= ref < self.nr_entries:
            raise GrantError(Gntst.bad_gntref, f"bad grant reference {ref:#x} "
                                               f"(table has {self.nr_entries} entries)")
        frame = self.frames[ref // ENTRIES_PER_FRAME]
        return (frame << PAGE_SHIFT) + (ref % ENTRIES_PER_FRAME) * GrantEntryV1.SIZE

    def entry(self, ref: int) -> GrantEntryV1:
        """The shared v1 entry `ref`, as the guest last wrote it."""
        return GrantEntryV1.from_bytes(self.memory.read(self._entry_maddr(ref), GrantEntryV1.SIZE))

    def set_entry(self, ref: int, entry: GrantEntryV1) -> None:
        self.memory.write(self._entry_maddr(ref), entry.to_bytes())

    def active_entries(self) -> list[tuple[int, GrantEntryV1]]:
        """Every entry with a non-zero type, in reference order (for views)."""
        out = []
        for ref in range(self.nr_entries):
            entry = self.entry(ref)
            if entry.flags & GTF_TYPE_MASK:
                out.append((ref, entry))
        return out

    def seed_toolstack_entries(self, console_mfn: int, store_mfn: int, *, console_domid: int = DOM0_ID,
                               store_domid: int = DOM0_ID) -> None:
        """Entries 0 and 1 as xc_dom_gnttab_seed writes them for a PV domU."""
        if console_domid != self.domid:
            self.set_entry(GNTTAB_RESERVED_CONSOLE, GrantEntryV1(
                flags=GtfFlags.permit_access, domid=console_domid, frame=console_mfn))
        if store_domid != self.domid:
            self.set_entry(GNTTAB_RESERVED_XENSTORE, GrantEntryV1(
                flags=GtfFlags.permit_access, domid=store_domid, frame=store_mfn))

    # -- backend access -----------------------------------------------------------
    def acquire(self, ref: int, user_domid: int, *, writable: bool) -> GrantAccess:
        """Check that `user_domid` may access grant `ref` (acquire_grant_for_copy, v1)."""
        entry = self.entry(ref)
        if (entry.flags & GTF_TYPE_MASK) != GtfFlags.permit_access or entry.domid != user_domid:
            raise GrantError(Gntst.general_error,
                             f"grant {ref:#x}: bad flags ({entry.flags:#x}) or dom ({entry.domid}); "
                             f"expected d{user_domid}")
        if writable and entry.flags & GtfFlags.readonly:
            raise GrantError(Gntst.general_error, f"grant {ref:#x}: attempt to write-pin a r/o grant entry")
        if not self.memory.frame_valid(entry.frame) or not self._frame_owned(entry.frame):
            raise GrantError(Gntst.bad_page, f"grant {ref:#x}: frame {entry.frame:#x} is not "
                                             f"owned by d{self.domid}")
        return GrantAccess(ref, entry.frame, writable)

    def read_granted(self, ref: int, user_domid: int, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the frame behind grant `ref` (GNTCOPY source)."""
        self._check_span(offset, length)
        access = self.acquire(ref, user_domid, writable=False)
        return self.memory.read((access.mfn << PAGE_SHIFT) + offset, length)

    def write_granted(self, ref: int, user_domid: int, offset: int, data: bytes) -> None:
        """Write into the frame behind grant `ref` (GNTCOPY destination)."""
        self._check_span(offset, len(data))
        access = self.acquire(ref, user_domid, writable=True)
        self.memory.write((access.mfn << PAGE_SHIFT) + offset, data)

    @staticmethod
    def _check_span(offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > PAGE_SIZE:
            raise GrantError(Gntst.bad_copy_arg, f"copy of {length} bytes at offset {offset} "
                                                 "goes beyond the page")

    # -- XENMAPSPACE_grant_table ---------------------------------------------------
    def shared_frame_for_index(self, idx: int) -> int:
        """MFN of shared frame `idx`, growing the table if needed (gnttab_get_shared_frame_mfn).
        Raises HypercallError(-EINVAL) if `idx` is beyond what the table can reach."""
        if idx & XENMAPIDX_GRANT_TABLE_STATUS:
            raise fail(Errno.EINVAL, "status frames exist only for grant table version 2")
        if idx >= self.nr_frames:
            if idx + 1 > self.max_frames or not self.grow(idx + 1):
                raise fail(Errno.EINVAL, f"grant frame {idx} is beyond the table's "
                                         f"{self.max_frames}-frame limit or machine memory")
        return self.frames[idx]


def add_to_physmap(table: GrantTable, xatp: AddToPhysmap32, *, translated: bool) -> int:
    """XENMEM_add_to_physmap for XENMAPSPACE_grant_table (xatp_permission_check,
    xenmem_add_to_physmap_one).  Returns the MFN to enter at `xatp.gpfn` in a translated
    domain's physmap (the caller updates its p2m); raises HypercallError otherwise.

    A PV domain is not translated, so Xen refuses with -EACCES: PV guests get grant
    frames by MFN from GNTTABOP_setup_table.
    """
    if xatp.space == XenMapSpace.gmfn_foreign:
        raise fail(Errno.ENOSYS, "foreign mappings need XENMEM_add_to_physmap_batch")
    is_self = xatp.domid in (DOMID_SELF, table.domid)
    if not is_self and xatp.domid != DOM0_ID:
        raise fail(Errno.ESRCH, f"no domain {xatp.domid}")
    if not (translated and is_self):               # dom0 is PV too
        raise fail(Errno.EACCES, "add_to_physmap needs a translated (HVM/PVH) domain; a PV "
                                 "guest maps grant frames by MFN from GNTTABOP_setup_table")
    if not is_self:
        raise fail(Errno.EPERM, f"d{table.domid} may not change d{xatp.domid}'s physmap")
    if xatp.space != XenMapSpace.grant_table:
        raise fail(Errno.ENOSYS, f"XENMAPSPACE {xatp.space} is not emulated here")
    return table.shared_frame_for_index(xatp.idx)


# -- grant_table_op ---------------------------------------------------------------------
def _target(ctx: "HypercallContext", dom: int) -> tuple[str, Gntst]:
    """Who `dom` names, for the calling domU: ('self'|'other'|'none', status if refused)."""
    own = ctx.domain.domid
    if dom in (DOMID_SELF, own):
        return "self", Gntst.okay
    if dom == DOM0_ID:
        return "other", Gntst.permission_denied
    return "none", Gntst.bad_domain


def _table(ctx: "HypercallContext") -> GrantTable:
    table = getattr(ctx.hv, "grant_table", None)
    if table is None:
        raise fail(Errno.ENOSYS, "this domain has no grant table")
    return table


def _setup_table(ctx: "HypercallContext", uop: int, count: int) -> int:
    if count > 1:
        raise fail(Errno.EINVAL, f"setup_table takes count 1, got {count}")
    if count == 0:
        ctx.note("count 0: nothing to do (compat path)")
        return 0
    op = GnttabSetupTable32.from_bytes(ctx.guest.read(uop, GnttabSetupTable32.SIZE))
    if op.frame_list + op.nr_frames * 4 > ctx.guest.hole_start:
        raise fail(Errno.EFAULT, "frame_list is outside the guest's address space")
    who, status = _target(ctx, op.dom)
    table = _table(ctx)
    frames: Sequence[int] = ()
    if who == "self":
        if op.nr_frames > table.max_frames:
            status = Gntst.general_error
            ctx.note(f"d{table.domid} is limited to {table.max_frames} grant-table frames")
        elif op.nr_frames > table.nr_frames and not table.grow(op.nr_frames):
            status = Gntst.general_error
            ctx.note(f"growing the grant table to {op.nr_frames} frames failed")
        else:
            frames = table.frames[:op.nr_frames]
    for i, mfn in enumerate(frames):
        try:                           # compat copies each frame back and ignores faults
            ctx.guest.write_u32(op.frame_list + 4 * i, mfn)
        except GuestFault:
            ctx.note(f"frame_list[{i}] not writable; frame dropped as compat Xen does")
    ctx.note(f"nr_frames {op.nr_frames} -> status {Gntst(status).name}"
             + (f" frames {[hex(f) for f in frames]}" if frames else ""))
    ctx.guest.write(uop + GnttabSetupTable32.offset_of("status"),
                    int(status).to_bytes(2, "little", signed=True))
    return 0


def _query_size(ctx: "HypercallContext", uop: int, count: int) -> int:
    if count != 1:
        raise fail(Errno.EINVAL, f"query_size takes count 1, got {count}")
    op = GnttabQuerySize.from_bytes(ctx.guest.read(uop, GnttabQuerySize.SIZE))
    who, status = _target(ctx, op.dom)
    nr, max_nr = op.nr_frames, op.max_nr_frames
    if who == "self":
        table = _table(ctx)
        nr, max_nr = table.nr_frames, table.max_frames
    ctx.note(f"status {Gntst(status).name} nr_frames {nr} max {max_nr}")
    ctx.guest.write(uop, GnttabQuerySize(dom=op.dom, nr_frames=nr, max_nr_frames=max_nr,
                                         status=status).to_bytes())
    return 0


def _set_version(ctx: "HypercallContext", uop: int) -> int:
    op = GnttabSetVersion.from_bytes(ctx.guest.read(uop, GnttabSetVersion.SIZE))
    table = _table(ctx)
    error: tuple[Errno, str] | None = None
    if op.version not in (1, 2):
        error = (Errno.EINVAL, f"no grant table version {op.version}")
    elif op.version == 2 and table.max_version == 1:
        error = (Errno.ENOSYS, "grant table version 2 is disabled (max version 1)")
    ctx.guest.write(uop, GnttabSetVersion(version=table.version).to_bytes())
    if error is not None:
        raise fail(*error)
    return 0


def _get_version(ctx: "HypercallContext", uop: int) -> int:
    op = GnttabGetVersion.from_bytes(ctx.guest.read(uop, GnttabGetVersion.SIZE))
    who, _ = _target(ctx, op.dom)
    if who == "none":
        raise fail(Errno.ESRCH, f"no domain {op.dom}")
    if who == "other":
        raise fail(Errno.EPERM, f"d{ctx.domain.domid} may not query d{op.dom}")
    version = _table(ctx).version
    ctx.guest.write(uop + GnttabGetVersion.offset_of("version"), version.to_bytes(4, "little"))
    return 0


def _get_status_frames(ctx: "HypercallContext", uop: int, count: int) -> int:
    if count != 1:
        raise fail(Errno.EINVAL, f"get_status_frames takes count 1, got {count}")
    op = GnttabGetStatusFrames32.from_bytes(ctx.guest.read(uop, GnttabGetStatusFrames32.SIZE))
    who, status = _target(ctx, op.dom)
    if who == "self" and op.nr_frames > 0:
        status = Gntst.general_error
        ctx.note(f"asked for {op.nr_frames} status frames; a version 1 table has none")
    ctx.guest.write(uop + GnttabGetStatusFrames32.offset_of("status"),
                    int(status).to_bytes(2, "little", signed=True))
    return 0


def _swap_grant_ref(ctx: "HypercallContext", uop: int, count: int) -> int:
    table = _table(ctx)
    for i in range(count):
        addr = uop + i * GnttabSwapGrantRef.SIZE
        op = GnttabSwapGrantRef.from_bytes(ctx.guest.read(addr, GnttabSwapGrantRef.SIZE))
        status = Gntst.okay
        if op.ref_a >= table.nr_entries or op.ref_b >= table.nr_entries:
            status = Gntst.bad_gntref
        elif op.ref_a != op.ref_b:
            a, b = table.entry(op.ref_a), table.entry(op.ref_b)
            table.set_entry(op.ref_a, b)
            table.set_entry(op.ref_b, a)
        ctx.guest.write(addr + GnttabSwapGrantRef.offset_of("status"),
                        int(status).to_bytes(2, "little", signed=True))
    return 0


_NOT_EMULATED = {
    GnttabOp.map_grant_ref, GnttabOp.unmap_grant_ref, GnttabOp.unmap_and_replace,
    GnttabOp.transfer, GnttabOp.copy, GnttabOp.cache_flush,
}


@HYPERCALLS.handler(Hc.grant_table_op, Param("cmd", GnttabOp), Param("uop"), Param("count", "int"))
def grant_table_op(ctx: "HypercallContext", cmd: int, uop: int, count: int) -> int:
    """GNTTABOP_* on the caller's own table.  ABI: xen/common/grant_table.c do_grant_table_op,
    xen/common/compat/grant_table.c compat_grant_table_op."""
    if count & 0x80000000:
        raise fail(Errno.EINVAL, "negative count")
    opaque = cmd & ~GNTTABOP_CMD_MASK
    cmd &= GNTTABOP_CMD_MASK
    if opaque and cmd != GnttabOp.cache_flush:
        raise fail(Errno.EINVAL, f"continuation bits {opaque:#x} on a command that takes none")
    if cmd == GnttabOp.setup_table:
        return _setup_table(ctx, uop, count)
    if cmd == GnttabOp.query_size:
        return _query_size(ctx, uop, count)
    if cmd == GnttabOp.set_version:
        return _set_version(ctx, uop)
    if cmd == GnttabOp.get_version:
        return _get_version(ctx, uop)
    if cmd == GnttabOp.get_status_frames:
        return _get_status_frames(ctx, uop, count)
    if cmd == GnttabOp.swap_grant_ref:
        return _swap_grant_ref(ctx, uop, count)
    if cmd == GnttabOp.dump_table:
        raise fail(Errno.ENOSYS, "GNTTABOP_dump_table was removed from Xen")
    if cmd in _NOT_EMULATED:
        raise fail(Errno.ENOSYS, f"GNTTABOP_{GnttabOp(cmd).name} is not emulated by pvdbg "
                                 "(no other domain shares pages with this guest)")
    raise fail(Errno.ENOSYS, f"unknown grant_table_op {cmd}")
