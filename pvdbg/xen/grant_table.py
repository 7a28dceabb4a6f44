"""Grant tables: a domain's v1 grant entries, the grant_table_op hypercall, and the
access checks a backend makes before it touches a granted frame.

The shared table lives in Xen-owned frames (taken from the builder's spare pool) that a
PV guest receives by MFN from GNTTABOP_setup_table and maps itself.  The toolstack seeds
reserved entries 0 (console) and 1 (xenstore) before the guest runs.

Every GNTTABOP a 32-bit PV domU can issue is served as Xen 4.17 does, with per-operation
GNTST_* statuses written back and the refusal in Xen's words in the trace.  A 64-bit PV
domU (pv64/) is served by the same handlers through its own structure layouts
(`GrantAbi`: 64-bit frame lists, handles and xen_pfn_t, abi64.py), except that it cannot
map grants (map/unmap are -ENOSYS for it; its frontends only grant and copy):
* map_grant_ref / unmap_grant_ref / unmap_and_replace: the domU may map grants that a
  domain gave it; the only domains here are itself (named by its domid: DOMID_SELF is no
  domain to _by_id lookups) and dom0, whose backends never grant pages to the domU (its
  table is one frame of empty entries).  Host mappings are grant PTEs (_PAGE_GNTTAB) in the
  domU's L1s; pins, GTF_reading/GTF_writing, maptrack handles and page references follow
  grant_table.c, and a grant PTE dropped by anything but grant_table_op crashes the domain.
* copy: frames only as DOMID_SELF, grant references checked against the granting table.
* transfer: steal_page, then the frame goes to the grant entry accepting it or is freed.
* cache_flush: x86's answers (cleaning an owned frame is a no-op on an emulated CPU).
References that grant mappings hold beyond their PTEs are `held_references()`, which the
invariant recount (invariants.py) adds.
ABI: xen/include/public/grant_table.h; xen/common/grant_table.c,
xen/common/compat/grant_table.c, xen/arch/x86/pv/grant_table.c;
tools/libs/guest/xg_dom_boot.c xc_dom_gnttab_seed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Callable, Sequence

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .abi import abi_struct, at
from .abi64 import GnttabCopy64, GnttabGetStatusFrames64, GnttabSetupTable64, GnttabTransfer64
from .constants import DOMID_SELF, HYPERVISOR_VIRT_START_PAE, Errno, Hc
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, HypercallError, Param, fail
from .mm import (PTE_A, PTE_D, PTE_GNTTAB, PTE_NX, PTE_P, PTE_RW, PTE_U, MemoryManager, Owner,
                 PageType, pte_mfn)
from .pv64.layout import guest_addr_ok

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
MAPTRACK_PER_PAGE = PAGE_SIZE // 16     # struct grant_mapping is 16 bytes
DEFAULT_MAX_MAPTRACK_FRAMES = 1024      # xl's max_maptrack_frames default
GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTCOPY_SOURCE_GREF = 1 << 0
GNTCOPY_DEST_GREF = 1 << 1
GNTMAP_GUEST_AVAIL_SHIFT = 16           # _GNTMAP_guest_avail0: 3 bits copied to PTE bits 9..11
# Active-entry pin counts, one byte each (grant_table.c GNTPIN_*).
GNTPIN_HSTW_INC = 1 << 0
GNTPIN_HSTR_INC = 1 << 8
GNTPIN_DEVW_INC = 1 << 16
GNTPIN_DEVR_INC = 1 << 24
GNTPIN_HSTW_MASK = 0xFF << 0
GNTPIN_DEVW_MASK = 0xFF << 16
GNTPIN_WRITE_MASK = GNTPIN_HSTW_MASK | GNTPIN_DEVW_MASK
GNTPIN_OVERFLOW = 0x80808080
# dom0 as pvdbg emulates it: its backends never grant pages to the domU, so its table is
# one frame (INITIAL_NR_GRANT_FRAMES) of empty v1 entries.
DOM0_NR_GRANT_ENTRIES = PAGE_SIZE // 8


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
GTF_SUB_PAGE = 1 << 8                   # v2 only, but a v1 map refuses an entry with it set
GTF_TRANSFER_COMMITTED = 1 << 2
GTF_TRANSFER_COMPLETED = 1 << 3


class GntMap(IntFlag):
    """GNTMAP_* flags of map_grant_ref.  ABI: grant_table.h."""
    device_map = 1
    host_map = 2
    readonly = 4
    application_map = 8
    contains_pte = 16


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


@abi_struct(size=32, source="xen/include/public/grant_table.h struct gnttab_map_grant_ref")
class GnttabMapGrantRef:
    host_addr: int = at(0, "Q")             # linear address, or PTE maddr with contains_pte
    flags: int = at(8, "I")                 # GNTMAP_*
    ref: int = at(12, "I")
    dom: int = at(16, "H")
    status: int = at(18, "h")               # OUT
    handle: int = at(20, "I")               # OUT
    dev_bus_addr: int = at(24, "Q")         # OUT


@abi_struct(size=24, source="xen/include/public/grant_table.h struct gnttab_unmap_grant_ref")
class GnttabUnmapGrantRef:
    host_addr: int = at(0, "Q")
    dev_bus_addr: int = at(8, "Q")
    handle: int = at(16, "I")
    status: int = at(20, "h")               # OUT


@abi_struct(size=24, source="xen/include/public/grant_table.h struct gnttab_unmap_and_replace")
class GnttabUnmapAndReplace:
    host_addr: int = at(0, "Q")
    new_addr: int = at(8, "Q")
    handle: int = at(16, "I")
    status: int = at(20, "h")               # OUT


@abi_struct(size=24, source="xen/include/public/grant_table.h struct gnttab_copy (compat: "
                            "32-bit xen_pfn_t)")
class GnttabCopy32:
    source_ref: int = at(0, "I")            # grant ref with GNTCOPY_source_gref, else a frame
    source_domid: int = at(4, "H")
    source_offset: int = at(6, "H")
    dest_ref: int = at(8, "I")              # grant ref with GNTCOPY_dest_gref, else a frame
    dest_domid: int = at(12, "H")
    dest_offset: int = at(14, "H")
    len: int = at(16, "H")
    flags: int = at(18, "H")                # GNTCOPY_*
    status: int = at(20, "h")               # OUT


@abi_struct(size=16, source="xen/include/public/grant_table.h struct gnttab_transfer (compat)")
class GnttabTransfer32:
    mfn: int = at(0, "I")
    domid: int = at(4, "H")
    ref: int = at(8, "I")
    status: int = at(12, "h")               # OUT


@abi_struct(size=16, source="xen/include/public/grant_table.h struct gnttab_cache_flush")
class GnttabCacheFlush:
    dev_bus_addr: int = at(0, "Q")          # union with a grant ref
    offset: int = at(8, "H")
    length: int = at(10, "H")
    op: int = at(12, "I")                   # GNTTAB_CACHE_*


@abi_struct(size=16, source="xen/include/public/memory.h struct xen_add_to_physmap (compat)")
class AddToPhysmap32:
    domid: int = at(0, "H")
    size: int = at(2, "H")                  # gmfn_range only
    space: int = at(4, "I")                 # XENMAPSPACE_*
    idx: int = at(8, "I")
    gpfn: int = at(12, "I")


ENTRIES_PER_FRAME = PAGE_SIZE // GrantEntryV1.SIZE


@dataclass(frozen=True)
class GrantAbi:
    """The grant_table_op structures whose layout depends on the guest's ABI, and the
    guest_handle_okay check of its arrays.  `frame_size`: bytes of one setup_table
    frame_list entry (xen_pfn_t).  ABI: grant_table.h; compat/grant_table.c."""
    bits: int
    setup_table: type
    get_status_frames: type
    copy: type
    transfer: type
    frame_size: int

    def array_ok(self, uop: int, count: int, size: int,
                 hole_start: int = HYPERVISOR_VIRT_START_PAE) -> bool:
        """The array lies in the guest's part of the address space (a 32-bit guest's
        ends at `hole_start`)."""
        if self.bits == 64:
            return guest_addr_ok(uop, count * size)
        return uop + count * size <= hole_start


GRANT_ABI32 = GrantAbi(32, GnttabSetupTable32, GnttabGetStatusFrames32, GnttabCopy32,
                       GnttabTransfer32, 4)
GRANT_ABI64 = GrantAbi(64, GnttabSetupTable64, GnttabGetStatusFrames64, GnttabCopy64,
                       GnttabTransfer64, 8)


def grant_abi(hv) -> GrantAbi:
    """The layouts for the domain `hv` runs (Hypervisor64 says guest_bits = 64)."""
    return GRANT_ABI64 if getattr(hv, "guest_bits", 32) == 64 else GRANT_ABI32


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


@dataclass
class ActiveGrant:
    """struct active_grant_entry: who has the grant pinned, how often, and its frame."""
    pin: int = 0                  # GNTPIN_* byte counters
    domid: int = 0                # the domain that pinned it
    mfn: int = 0


@dataclass
class GrantMapping:
    """struct grant_mapping (one maptrack slot), plus where its references are counted."""
    ref: int
    flags: int                    # GNTMAP_* still mapped (16 bits as Xen stores them)
    domid: int                    # the granting domain, as the guest named it
    vcpu: int
    mfn: int
    host_pte_counted: bool        # the host PTE went into a live L1, which accounts for it


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
        self.active: dict[int, ActiveGrant] = {}         # pinned entries only
        self.maptrack: dict[int, GrantMapping] = {}      # handle -> mapping (non-zero flags)
        self.maptrack_limit = 0                          # handles allocated (256 a frame)
        self.max_maptrack_frames = DEFAULT_MAX_MAPTRACK_FRAMES
        self.maptrack_free: dict[int, list[int]] = {}    # vcpu -> free handles, head first
        self.handle_vcpu: dict[int, int] = {}            # handle -> vcpu whose list it joins
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

    # -- maptrack (the domain's own record of the grants it has mapped) -------------
    def get_maptrack_handle(self, vcpu: int) -> int | None:
        """A free handle for `vcpu` (get_maptrack_handle), or None when the maptrack is
        full.  Each vcpu keeps a FIFO free list that always retains one entry; a new
        maptrack frame's 256 handles go to the head of the list of the vcpu that needed
        it; with no frame left, a handle is taken from another vcpu's list."""
        free = self.maptrack_free.setdefault(vcpu, [])
        if len(free) >= 2:
            return free.pop(0)
        if self.maptrack_limit // MAPTRACK_PER_PAGE < self.max_maptrack_frames:
            base = self.maptrack_limit
            self.maptrack_limit += MAPTRACK_PER_PAGE
            for handle in range(base, base + MAPTRACK_PER_PAGE):
                self.handle_vcpu[handle] = vcpu
            free[:0] = range(base + 1, base + MAPTRACK_PER_PAGE)
            return base
        for other in sorted(self.maptrack_free):
            other_free = self.maptrack_free[other]
            if other != vcpu and len(other_free) >= 2:
                handle = other_free.pop(0)
                self.handle_vcpu[handle] = vcpu
                return handle
        return None

    def put_maptrack_handle(self, handle: int) -> None:
        """Return `handle` to the tail of its vcpu's free list (put_maptrack_handle)."""
        self.maptrack_free.setdefault(self.handle_vcpu[handle], []).append(handle)

    def held_references(self) -> tuple[Counter, Counter]:
        """(general, type) references per MFN that grant mappings hold beyond what their
        PTEs account for: device mappings, and host mappings whose PTE was written into
        an L1 that was not a live pagetable (for the invariant recount)."""
        general: Counter = Counter()
        typed: Counter = Counter()
        for mapping in self.maptrack.values():
            parts = bool(mapping.flags & GntMap.device_map) + bool(
                mapping.flags & GntMap.host_map and not mapping.host_pte_counted)
            if parts:
                general[mapping.mfn] += parts
                if not mapping.flags & GntMap.readonly:
                    typed[mapping.mfn] += parts
        return general, typed

    # -- active entries (pins) and the shared entry's GTF_reading/GTF_writing ----------
    def pinned(self, ref: int) -> bool:
        """Whether a mapping or a copy in progress holds entry `ref` (act->pin != 0)."""
        act = self.active.get(ref)
        return act is not None and act.pin != 0

    def _set_status(self, ref: int, act: ActiveGrant, readonly: bool, mapping: bool,
                    user_domid: int) -> tuple[Gntst, str]:
        """_set_status_v1: check the entry (when not yet pinned) and set GTF_reading, and
        GTF_writing for a writable use."""
        entry = self.entry(ref)
        mask = GTF_TYPE_MASK | (GTF_SUB_PAGE if mapping else 0)
        if not act.pin and ((entry.flags & mask) != GtfFlags.permit_access
                            or entry.domid != user_domid):
            return Gntst.general_error, (f"Bad flags ({entry.flags:#x}) or dom ({entry.domid}); "
                                         f"expected d{user_domid}")
        flags = entry.flags | GtfFlags.reading
        if not readonly:
            flags |= GtfFlags.writing
            if entry.flags & GtfFlags.readonly:
                return Gntst.general_error, "Attempt to write-pin a r/o grant entry"
        self._write_flags(ref, flags)
        return Gntst.okay, ""

    def _write_flags(self, ref: int, flags: int) -> None:
        self.memory.write(self._entry_maddr(ref), int(flags & 0xFFFF).to_bytes(2, "little"))

    def _clear_flags(self, ref: int, act: ActiveGrant, readonly: bool) -> None:
        """Drop GTF_writing when no writable pin is left (for a writable use) and
        GTF_reading when no pin is left (gnttab_clear_flags)."""
        clear = 0
        if not readonly and not act.pin & GNTPIN_WRITE_MASK:
            clear |= GtfFlags.writing
        if not act.pin:
            clear |= GtfFlags.reading
        if clear:
            self._write_flags(ref, self.entry(ref).flags & ~clear)
        if not act.pin:
            self.active.pop(ref, None)

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
    abi = grant_abi(ctx.hv)
    layout = abi.setup_table
    op = layout.from_bytes(ctx.guest.read(uop, layout.SIZE))
    if not abi.array_ok(op.frame_list, op.nr_frames, abi.frame_size, ctx.guest.hole_start):
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
        slot = op.frame_list + abi.frame_size * i
        try:                           # compat copies each frame back and ignores faults
            ctx.guest.write(slot, mfn.to_bytes(abi.frame_size, "little"))
        except GuestFault:
            if abi.bits == 64:         # the native path stops at the first fault
                status = Gntst.bad_virt_addr
                ctx.note(f"frame_list[{i}] at {slot:#x} is not writable")
                break
            ctx.note(f"frame_list[{i}] not writable; frame dropped as compat Xen does")
    ctx.note(f"nr_frames {op.nr_frames} -> status {Gntst(status).name}"
             + (f" frames {[hex(f) for f in frames]}" if frames else ""))
    ctx.guest.write(uop + layout.offset_of("status"),
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
    layout = grant_abi(ctx.hv).get_status_frames
    op = layout.from_bytes(ctx.guest.read(uop, layout.SIZE))
    who, status = _target(ctx, op.dom)
    if who == "self" and op.nr_frames > 0:
        status = Gntst.general_error
        ctx.note(f"asked for {op.nr_frames} status frames; a version 1 table has none")
    ctx.guest.write(uop + layout.offset_of("status"),
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
        elif op.ref_a != op.ref_b and (table.pinned(op.ref_a) or table.pinned(op.ref_b)):
            status = Gntst.eagain
            ctx.note(f"ref {op.ref_a if table.pinned(op.ref_a) else op.ref_b:#x} busy (pinned)")
        elif op.ref_a != op.ref_b:
            a, b = table.entry(op.ref_a), table.entry(op.ref_b)
            table.set_entry(op.ref_a, b)
            table.set_entry(op.ref_b, a)
        ctx.guest.write(addr + GnttabSwapGrantRef.offset_of("status"),
                        int(status).to_bytes(2, "little", signed=True))
    return 0


# -- map_grant_ref, unmap_grant_ref, unmap_and_replace (PV host and device mappings) -----
_NOTE_LIMIT = 16          # per-op trace notes kept for one hypercall


def _note(ctx: "HypercallContext", index: int, text: str) -> None:
    if index < _NOTE_LIMIT:
        ctx.note(text)
    elif index == _NOTE_LIMIT:
        ctx.note("(further operations not itemised)")


def _granting_domain(ctx: "HypercallContext", dom: int, *, any_id: bool) -> str | None:
    """'self' or 'dom0' for a domain that exists, None otherwise.  `any_id`:
    rcu_lock_domain_by_any_id (DOMID_SELF names the caller) rather than _by_id."""
    if dom == ctx.domain.domid or (any_id and dom == DOMID_SELF):
        return "self"
    if dom == DOM0_ID:
        return "dom0"
    return None


def _dom0_refusal(ref: int, user_domid: int) -> tuple[Gntst, str]:
    """What dom0's table answers: every entry is empty (pvdbg's dom0 grants nothing)."""
    if ref >= DOM0_NR_GRANT_ENTRIES:
        return Gntst.bad_gntref, f"Bad ref {ref:#x} for d0"
    return Gntst.general_error, (f"d0 grant {ref:#x}: Bad flags (0) or dom (0); "
                                 f"expected d{user_domid}")


def _live_l1(mm: MemoryManager, mfn: int) -> bool:
    pi = mm.peek(mfn)
    return pi.type is PageType.l1 and pi.validated and pi.type_count > 0


def _grant_pte_flags(flags: int) -> int:
    """grant_to_pte_flags: the PTE bits a PV grant host mapping gets (cache_flags 0 for RAM)."""
    pte = PTE_P | PTE_A | PTE_D | PTE_GNTTAB | PTE_NX
    if flags & GntMap.application_map:
        pte |= PTE_U
    if not flags & GntMap.readonly:
        pte |= PTE_RW
    return pte | (((flags >> GNTMAP_GUEST_AVAIL_SHIFT) & 7) << 9)


def _guest_l1_slot(ctx: "HypercallContext", linear: int) -> tuple[int, int] | None:
    """map_guest_l1e: (L1 mfn, index) of the PTE for `linear` in the caller's current
    pagetables, or None when the L2 entry is not present or is a superpage."""
    mm: MemoryManager = ctx.hv.mm
    cr3 = mm.vcpu_cr3[ctx.vcpu.vcpu_id]
    if cr3 is None:
        return None
    l3e = mm.read_entry(cr3, (linear >> 30) & 3)
    if not l3e & PTE_P or not mm.frame_valid(pte_mfn(l3e)):
        return None
    l2e = mm.read_entry(pte_mfn(l3e), (linear >> 21) & 0x1FF)
    if l2e & (PTE_P | 0x80) != PTE_P or not mm.frame_valid(pte_mfn(l2e)):
        return None
    return pte_mfn(l2e), (linear >> 12) & 0x1FF


def _pte_slot(ctx: "HypercallContext", addr: int, flags: int) -> tuple[int, int] | str:
    """The L1 slot `addr` names (a PTE maddr with GNTMAP_contains_pte, else a linear
    address), with a general reference taken on the L1, or why there is none."""
    mm: MemoryManager = ctx.hv.mm
    if flags & GntMap.contains_pte:
        if addr & 7:
            return f"Misaligned PTE address {addr:#x}"
        slot = (addr >> PAGE_SHIFT, (addr & (PAGE_SIZE - 1)) >> 3)
    else:
        if addr > 0xFFFFFFFF:
            return f"linear address {addr:#x} is beyond a 32-bit guest's reach"
        found = _guest_l1_slot(ctx, addr)
        if found is None:
            return f"Could not find L1 PTE for linear address {addr:#x}"
        slot = found
    if not mm.get_page(slot[0]):
        return f"L1 {mm.not_ours(slot[0])}"
    if mm.peek(slot[0]).type is not PageType.l1:
        mm.put_page(slot[0])
        return f"mfn {slot[0]:#x} is not an L1 pagetable ({mm.peek(slot[0]).type.label})"
    return slot


def _create_host_mapping(ctx: "HypercallContext", addr: int, mfn: int,
                         flags: int) -> tuple[bool, str]:
    """create_grant_pv_mapping: write the grant PTE; the old entry's references drop.
    (whether the L1 is a live pagetable, why not created or '')."""
    mm: MemoryManager = ctx.hv.mm
    slot = _pte_slot(ctx, addr, flags)
    if isinstance(slot, str):
        return False, slot
    l1mfn, index = slot
    old = mm.read_entry(l1mfn, index)
    mm.write_entry(l1mfn, index, (mfn << PAGE_SHIFT) | _grant_pte_flags(flags))
    mm.put_page(l1mfn)
    ctx.hv.cpu.flush_tlb()
    mm.put_page_from_l1e(old)
    return _live_l1(mm, l1mfn), ""


def _steal_linear_address(ctx: "HypercallContext", linear: int) -> int | str:
    """steal_linear_address: zap the PTE for `linear`; its references pass to the caller."""
    slot = _pte_slot(ctx, linear, 0)
    if isinstance(slot, str):
        return slot
    mm: MemoryManager = ctx.hv.mm
    old = mm.read_entry(*slot)
    mm.write_entry(slot[0], slot[1], 0)
    mm.put_page(slot[0])
    return old


def _replace_host_mapping(ctx: "HypercallContext", addr: int, mfn: int, new_addr: int,
                          flags: int) -> str:
    """replace_grant_pv_mapping: the PTE at `addr` must map `mfn` with the grant's P/RW;
    it becomes empty, or takes the PTE stolen from `new_addr`.  '' on success."""
    mm: MemoryManager = ctx.hv.mm
    new_pte = 0
    why = ""
    if flags & GntMap.contains_pte and new_addr:
        why = "unmap_and_replace is not available for a PTE-address mapping"
    elif not flags & GntMap.contains_pte and (addr > 0xFFFFFFFF or new_addr > 0xFFFFFFFF):
        why = f"address {max(addr, new_addr):#x} is beyond a 32-bit guest's reach"
    elif new_addr:
        stolen = _steal_linear_address(ctx, new_addr)
        if isinstance(stolen, str):
            why = stolen
        else:
            new_pte = stolen
    if not why:
        slot = _pte_slot(ctx, addr, flags)
        if isinstance(slot, str):
            why = slot
        else:
            old = mm.read_entry(*slot)
            want = _grant_pte_flags(flags)
            if pte_mfn(old) != mfn or (old ^ want) & (PTE_P | PTE_RW):
                why = (f"PTE {old:#x} for {addr:#x} doesn't match grant "
                       f"({(mfn << PAGE_SHIFT) | want:#x})")
            else:
                mm.write_entry(slot[0], slot[1], new_pte)
            mm.put_page(slot[0])
    ctx.hv.cpu.flush_tlb()
    if why:
        mm.put_page_from_l1e(new_pte)
    return why


def _get_paged_frame(mm: MemoryManager, gfn: int) -> tuple[Gntst, str]:
    """get_paged_frame for a PV granter (gfn == mfn): a general reference on a frame the
    domain owns, else GNTST_bad_page."""
    if not mm.frame_valid(gfn) or not mm.get_page(gfn):
        return Gntst.bad_page, f"frame {gfn:#x}: {mm.not_ours(gfn)}"
    return Gntst.okay, ""


def _try_type(mm: MemoryManager, mfn: int) -> bool:
    try:
        mm.get_page_type(mfn, PageType.writable)
    except HypercallError:
        return False
    return True


def map_grant_ref(ctx: "HypercallContext", table: GrantTable, op: GnttabMapGrantRef
                  ) -> tuple[Gntst, str, int, int]:
    """One map_grant_ref (grant_table.c map_grant_ref, x86 create_grant_pv_mapping):
    (status, why, handle, dev_bus_addr)."""
    flags = op.flags
    if not flags & (GntMap.device_map | GntMap.host_map):
        return (Gntst.bad_gntref, f"Bad flags in grant map op: {flags:#x}", op.handle,
                op.dev_bus_addr)
    who = _granting_domain(ctx, op.dom, any_id=False)
    if who is None:
        return Gntst.bad_domain, f"Could not find domain {op.dom}", op.handle, op.dev_bus_addr
    handle = table.get_maptrack_handle(ctx.vcpu.vcpu_id)
    if handle is None:
        return Gntst.no_device_space, "Failed to obtain maptrack handle", op.handle, op.dev_bus_addr
    status, why = _map_pinned(ctx, table, op, handle, who)
    if status != Gntst.okay:
        table.put_maptrack_handle(handle)
        return status, why, op.handle, op.dev_bus_addr
    return Gntst.okay, why, handle, table.active[op.ref].mfn << PAGE_SHIFT


def _map_pinned(ctx: "HypercallContext", table: GrantTable, op: GnttabMapGrantRef, handle: int,
                who: str) -> tuple[Gntst, str]:
    own = ctx.domain.domid
    mm: MemoryManager = ctx.hv.mm
    flags, ref = op.flags, op.ref
    readonly = bool(flags & GntMap.readonly)
    if who == "dom0":
        return _dom0_refusal(ref, own)
    if ref >= table.nr_entries:
        return Gntst.bad_gntref, f"Bad ref {ref:#x} for d{own}"
    act = table.active.setdefault(ref, ActiveGrant())
    if act.pin and (act.domid != own or act.pin & GNTPIN_OVERFLOW):
        return Gntst.general_error, (f"Bad domain ({act.domid} != {own}), or risk of counter "
                                     f"overflow {act.pin:08x}")
    refcnt = 0
    if not act.pin or (not readonly and not act.pin & GNTPIN_WRITE_MASK):
        status, why = table._set_status(ref, act, readonly, True, own)
        if status != Gntst.okay:
            if not act.pin:
                table.active.pop(ref, None)
            return status, why
        if not act.pin:
            gfn = table.entry(ref).frame
            status, why = _get_paged_frame(mm, gfn)
            if status != Gntst.okay:
                table._clear_flags(ref, act, readonly)
                return status, why
            refcnt = 1
            act.domid, act.mfn = own, gfn
    increments = 0
    if flags & GntMap.device_map:
        increments += GNTPIN_DEVR_INC if readonly else GNTPIN_DEVW_INC
    if flags & GntMap.host_map:
        increments += GNTPIN_HSTR_INC if readonly else GNTPIN_HSTW_INC
    act.pin += increments
    mfn = act.mfn
    typecnt = 0
    why = ""
    host_counted = False
    if refcnt == 0:
        if mm.get_page(mfn):
            refcnt = 1
        else:
            why = f"Could not pin grant frame {mfn:#x}"
    if not why and flags & GntMap.device_map and not readonly:
        if _try_type(mm, mfn):
            typecnt += 1
        else:
            why = f"Could not pin grant frame {mfn:#x} (not writable: {mm.describe(mfn)})"
    if not why and flags & GntMap.host_map:
        if flags & GntMap.device_map:
            if mm.get_page(mfn):
                refcnt += 1
            else:
                why = f"Could not pin grant frame {mfn:#x}"
        if not why and not readonly:
            if _try_type(mm, mfn):
                typecnt += 1
            else:
                why = f"Could not pin grant frame {mfn:#x} (not writable: {mm.describe(mfn)})"
        if not why:
            host_counted, why = _create_host_mapping(ctx, op.host_addr, mfn, flags)
    if why:
        for _ in range(typecnt):
            mm.put_page_type(mfn)
        for _ in range(refcnt):
            mm.put_page(mfn)
        act.pin -= increments
        table._clear_flags(ref, act, readonly)
        return Gntst.general_error, why
    table.maptrack[handle] = GrantMapping(ref=ref, flags=flags & 0xFFFF, domid=op.dom,
                                          vcpu=ctx.vcpu.vcpu_id, mfn=mfn,
                                          host_pte_counted=host_counted)
    return Gntst.okay, f"mfn {mfn:#x} mapped{' read-only' if readonly else ''}, handle {handle:#x}"


def unmap_common(ctx: "HypercallContext", table: GrantTable, handle: int, host_addr: int,
                 dev_bus_addr: int, new_addr: int) -> tuple[Gntst, str]:
    """One unmap_grant_ref / unmap_and_replace (unmap_common + unmap_common_complete)."""
    own = ctx.domain.domid
    mm: MemoryManager = ctx.hv.mm
    if handle >= table.maptrack_limit:
        return Gntst.bad_handle, f"Bad d{own} handle {handle:#x}"
    mapping = table.maptrack.get(handle)
    if mapping is None:
        return Gntst.bad_handle, f"Zero flags for d{own} handle {handle:#x}"
    act = table.active[mapping.ref]
    mfn = act.mfn
    if dev_bus_addr and dev_bus_addr != mfn << PAGE_SHIFT:
        return Gntst.general_error, (f"Bus address doesn't match gntref ({dev_bus_addr:#x} != "
                                     f"{mfn << PAGE_SHIFT:#x})")
    flags = mapping.flags
    readonly = bool(flags & GntMap.readonly)
    done = 0
    if host_addr and flags & GntMap.host_map:
        why = _replace_host_mapping(ctx, host_addr, mfn, new_addr, flags)
        if why:
            return Gntst.general_error, why
        mapping.flags &= ~GntMap.host_map
        done |= GntMap.host_map
    if dev_bus_addr and flags & GntMap.device_map:
        mapping.flags &= ~GntMap.device_map
        done |= GntMap.device_map
    if not mapping.flags & (GntMap.device_map | GntMap.host_map):
        del table.maptrack[handle]
        table.put_maptrack_handle(handle)
    if not done:
        return Gntst.okay, f"handle {handle:#x}: nothing to unmap"
    for part in (GntMap.device_map, GntMap.host_map):
        if not done & part:
            continue
        if readonly:
            mm.put_page(mfn)
        else:
            mm.put_page_and_type(mfn)
        if part is GntMap.device_map:
            act.pin -= GNTPIN_DEVR_INC if readonly else GNTPIN_DEVW_INC
        else:
            act.pin -= GNTPIN_HSTR_INC if readonly else GNTPIN_HSTW_INC
    table._clear_flags(mapping.ref, act, readonly)
    return Gntst.okay, f"handle {handle:#x} (grant {mapping.ref:#x}, mfn {mfn:#x}) unmapped"


# -- copy --------------------------------------------------------------------------------
@dataclass
class _CopyBuf:
    """struct gnttab_copy_buf: one side of a copy, kept claimed while the next operation
    names the same domain and grant or frame."""
    domain: str | None = None     # 'self' / 'dom0' once locked
    domid: int = 0                # as the guest named it
    is_gref: bool = False
    key: int = 0                  # the grant ref or frame claimed
    mfn: int = 0                  # frame copied to/from
    page: int | None = None       # frame holding our general reference
    start: int = 0
    length: int = 0
    read_only: bool = True
    have_grant: bool = False
    have_type: bool = False
    ready: bool = False


def _acquire_for_copy(ctx: "HypercallContext", table: GrantTable, who: str, ref: int,
                      readonly: bool, buf: _CopyBuf) -> tuple[Gntst, str]:
    """acquire_grant_for_copy (v1, no transitive grants): pin `ref`, a general reference
    on its frame in `buf.page`."""
    own = ctx.domain.domid
    mm: MemoryManager = ctx.hv.mm
    if who == "dom0":
        if ref >= DOM0_NR_GRANT_ENTRIES:
            return Gntst.bad_gntref, f"Bad grant reference {ref:#x} (d0)"
        return Gntst.general_error, f"d0 grant {ref:#x}: Bad flags (0) or dom (0); expected d{own}"
    if ref >= table.nr_entries:
        return Gntst.bad_gntref, f"Bad grant reference {ref:#x}"
    act = table.active.setdefault(ref, ActiveGrant())
    if act.pin and (act.domid != own or act.pin & GNTPIN_OVERFLOW):
        return Gntst.general_error, (f"Bad domain ({act.domid} != {own}), or risk of counter "
                                     f"overflow {act.pin:08x}")
    if not act.pin or (not readonly and not act.pin & GNTPIN_WRITE_MASK):
        status, why = table._set_status(ref, act, readonly, False, own)
        if status != Gntst.okay:
            if not act.pin:
                table.active.pop(ref, None)
            return status, why
        gfn = table.entry(ref).frame
        status, why = _get_paged_frame(mm, gfn)
        if status != Gntst.okay:
            table._clear_flags(ref, act, readonly)
            return status, why
        buf.page = gfn
        if not act.pin:
            act.domid, act.mfn = own, gfn
    else:
        if not mm.get_page(act.mfn):
            table._clear_flags(ref, act, readonly)
            return Gntst.bad_domain, (f"grant {ref:#x}: pinned frame {act.mfn:#x} is no "
                                      f"longer d{own}'s")
        buf.page = act.mfn
    act.pin += GNTPIN_HSTR_INC if readonly else GNTPIN_HSTW_INC
    buf.mfn, buf.start, buf.length = act.mfn, 0, PAGE_SIZE
    return Gntst.okay, ""


def _release_for_copy(table: GrantTable, ref: int, readonly: bool) -> None:
    act = table.active[ref]
    act.pin -= GNTPIN_HSTR_INC if readonly else GNTPIN_HSTW_INC
    table._clear_flags(ref, act, readonly)


def _release_buf(mm: MemoryManager, table: GrantTable, buf: _CopyBuf) -> None:
    """gnttab_copy_release_buf."""
    buf.ready = False
    if buf.have_grant:
        _release_for_copy(table, buf.key, buf.read_only)
        buf.have_grant = False
    if buf.have_type:
        mm.put_page_type(buf.page)
        buf.have_type = False
    if buf.page is not None:
        mm.put_page(buf.page)
        buf.page = None


def _lock_domain(ctx: "HypercallContext", domid: int, is_gref: bool,
                 buf: _CopyBuf) -> tuple[Gntst, str]:
    if domid != DOMID_SELF and not is_gref:
        return Gntst.permission_denied, f"only DOMID_SELF may name a frame (got d{domid})"
    who = _granting_domain(ctx, domid, any_id=True)
    if who is None:
        return Gntst.bad_domain, f"no domain {domid}"
    buf.domain, buf.domid = who, domid
    return Gntst.okay, ""


def _claim_buf(ctx: "HypercallContext", table: GrantTable, op: GnttabCopy32 | GnttabCopy64,
               source: bool, buf: _CopyBuf) -> tuple[Gntst, str]:
    """gnttab_copy_claim_buf."""
    mm: MemoryManager = ctx.hv.mm
    buf.read_only = source
    key = op.source_ref if source else op.dest_ref
    is_gref = bool(op.flags & (GNTCOPY_SOURCE_GREF if source else GNTCOPY_DEST_GREF))
    side = "source" if source else "dest"
    if is_gref:
        status, why = _acquire_for_copy(ctx, table, buf.domain, key, source, buf)
        if status != Gntst.okay:
            return status, f"{side}: {why}"
        buf.have_grant = True
    else:
        status, why = _get_paged_frame(mm, key)
        if status != Gntst.okay:
            return status, f"{side} frame {key:#x} invalid ({why})"
        buf.page, buf.mfn, buf.start, buf.length = key, key, 0, PAGE_SIZE
    buf.key, buf.is_gref = key, is_gref
    if not source:
        if not _try_type(mm, buf.page):
            return Gntst.general_error, (f"Could not get writable frame {buf.mfn:#x} "
                                         f"({mm.describe(buf.mfn)})")
        buf.have_type = True
    buf.ready = True
    return Gntst.okay, ""


def _copy_one(ctx: "HypercallContext", table: GrantTable, op: GnttabCopy32 | GnttabCopy64,
              src: _CopyBuf, dst: _CopyBuf) -> tuple[Gntst, str]:
    """gnttab_copy_one."""
    mm: MemoryManager = ctx.hv.mm
    if (src.domain is None or op.source_domid != src.domid
            or dst.domain is None or op.dest_domid != dst.domid):
        _release_buf(mm, table, src)
        _release_buf(mm, table, dst)
        src.domain = dst.domain = None
        for domid, is_gref, buf in ((op.source_domid, op.flags & GNTCOPY_SOURCE_GREF, src),
                                    (op.dest_domid, op.flags & GNTCOPY_DEST_GREF, dst)):
            status, why = _lock_domain(ctx, domid, bool(is_gref), buf)
            if status != Gntst.okay:
                src.domain = dst.domain = None
                return status, why
    for source, buf in ((True, src), (False, dst)):
        is_gref = bool(op.flags & (GNTCOPY_SOURCE_GREF if source else GNTCOPY_DEST_GREF))
        key = op.source_ref if source else op.dest_ref
        # gnttab_copy_buf_valid: a frame side compares only the number (ref and gmfn
        # share a union), so a claimed grant is reused for a frame of the same number.
        if not (buf.ready and buf.key == key and (buf.have_grant or not is_gref)):
            _release_buf(mm, table, buf)
            status, why = _claim_buf(ctx, table, op, source, buf)
            if status != Gntst.okay:
                return status, why
    if op.source_offset + op.len > PAGE_SIZE or op.dest_offset + op.len > PAGE_SIZE:
        return Gntst.bad_copy_arg, "copy beyond page area"
    if op.source_offset < src.start or op.source_offset + op.len > src.start + src.length:
        return Gntst.general_error, "copy source out of bounds"
    if op.dest_offset < dst.start or op.dest_offset + op.len > dst.start + dst.length:
        return Gntst.general_error, "copy dest out of bounds"
    data = ctx.hv.memory.read((src.mfn << PAGE_SHIFT) + op.source_offset, op.len)
    ctx.hv.memory.write((dst.mfn << PAGE_SHIFT) + op.dest_offset, data)
    return Gntst.okay, (f"{op.len} bytes mfn {src.mfn:#x}+{op.source_offset:#x} -> "
                        f"mfn {dst.mfn:#x}+{op.dest_offset:#x}")


# -- transfer ----------------------------------------------------------------------------
def _free_stolen(mm: MemoryManager, mfn: int) -> None:
    """free_domheap_page of a stolen frame: back to the heap, scrubbed."""
    mm._free(mfn)


def _dom0_mapped_frames(hv) -> set[int]:
    """Frames dom0's daemons and backends keep mapped (xenconsoled's and xenstored's
    rings, connected blkback rings): each holds a page reference in Xen, so no steal."""
    devices = getattr(hv, "devices", None)
    if devices is None:
        return set()
    frames = {devices.console_mfn, devices.store_mfn}
    frames.update(disk.ring_mfn for disk in devices.disks if disk.ring_mfn is not None)
    return frames


def transfer_one(ctx: "HypercallContext", table: GrantTable,
                 op: GnttabTransfer32) -> tuple[Gntst, str]:
    """One gnttab_transfer for a PV (non-translated) domain: steal_page, then give the
    frame to the domain whose grant entry accepts it, or free it on failure."""
    own = ctx.domain.domid
    mm: MemoryManager = ctx.hv.mm
    mfn = op.mfn
    if not mm.frame_valid(mfn):
        return Gntst.bad_page, f"out-of-range {mfn:#x}"
    pi = mm.peek(mfn)
    if pi.owner is not Owner.domain or pi.count <= 0 or pi.xen_heap or not (
            pi.count == 1 and pi.allocated) or mfn in _dom0_mapped_frames(ctx.hv):
        held = " and mapped by dom0" if mfn in _dom0_mapped_frames(ctx.hv) else ""
        return Gntst.bad_page, (f"Bad steal mfn {mfn:#x} from d{own}: {mm.describe(mfn)}, "
                                f"count {pi.count}{held} (needs only its allocation "
                                "reference)")
    pi = mm.page(mfn)
    pi.count, pi.allocated, pi.owner = 0, False, Owner.free
    mm._owner[mfn] = Owner.free
    mm.tot_pages -= 1
    ctx.hv.cpu.flush_tlb()
    headroom = (f"Transferee d{own} has no headroom (tot {mm.tot_pages}, max {mm.max_pages})"
                if mm.tot_pages >= mm.max_pages else "")
    refused = _transfer_refusal(ctx, table, op, headroom)
    if refused is not None:
        _free_stolen(mm, mfn)
        return refused[0], refused[1] + f"; mfn {mfn:#x} freed"
    mm._owner[mfn] = Owner.domain
    pi.owner, pi.count, pi.allocated = Owner.domain, 1, True
    mm.tot_pages += 1
    pfn = _complete_transfer(table, op.ref, mfn)
    mm.m2p_set(mfn, pfn)
    return Gntst.okay, f"mfn {mfn:#x} transferred to d{own} grant {op.ref:#x} (pfn {pfn:#x})"


def _transfer_refusal(ctx: "HypercallContext", table: GrantTable,
                      op: GnttabTransfer32 | GnttabTransfer64,
                      no_headroom: str) -> tuple[Gntst, str] | None:
    """gnttab_transfer's checks of the receiving side once the frame is stolen: None if
    grant `op.ref` of the named domain accepts it, else (status, why).  `no_headroom`:
    the refusal when the domain is at its page limit, '' when it is not."""
    own = ctx.domain.domid
    who = _granting_domain(ctx, op.domid, any_id=False)
    if who is None:
        return Gntst.bad_domain, f"can't find d{op.domid}"
    if who == "dom0":
        return Gntst.general_error, f"d0 grant {op.ref:#x} does not accept a transfer from d{own}"
    if no_headroom:
        return Gntst.general_error, no_headroom
    if op.ref >= table.nr_entries:
        return Gntst.general_error, f"Bad grant reference {op.ref:#x} for transfer to d{own}"
    entry = table.entry(op.ref)
    if entry.flags != GtfFlags.accept_transfer or entry.domid != own:
        return Gntst.general_error, (f"Bad flags ({entry.flags:#x}) or dom ({entry.domid}); "
                                     f"expected d{own}")
    return None


def _complete_transfer(table: GrantTable, ref: int, mfn: int) -> int:
    """Mark grant `ref` committed, then completed with the frame: returns the pfn the
    receiver named in the entry (where the frame goes in its p2m)."""
    entry = table.entry(ref)
    table._write_flags(ref, entry.flags | GTF_TRANSFER_COMMITTED)
    table.set_entry(ref, GrantEntryV1(
        flags=entry.flags | GTF_TRANSFER_COMMITTED | GTF_TRANSFER_COMPLETED,
        domid=entry.domid, frame=mfn))
    return entry.frame


def transfer_one64(ctx: "HypercallContext", table: GrantTable,
                   op: GnttabTransfer64) -> tuple[Gntst, str]:
    """One gnttab_transfer for a 64-bit PV domain (pv64/mm.py's frame table, which counts
    type references only): steal_page takes a frame of the domain that no pagetable,
    writable mapping, pin or dom0 backend holds; the frame then goes to the grant entry
    accepting it, or back to the free pool, scrubbed."""
    own = ctx.domain.domid
    hv = ctx.hv
    mm = hv.mm
    mfn = op.mfn
    if not mm.frame_valid(mfn):
        return Gntst.bad_page, f"out-of-range {mfn:#x}"
    held = mfn in _dom0_mapped_frames(hv)
    if not mm.get_page(mfn) or mm.count[mfn] or mfn in mm.pinned or held:
        return Gntst.bad_page, (f"Bad steal mfn {mfn:#x} from d{own}: {mm.describe(mfn)}"
                                + (" and mapped by dom0" if held else "")
                                + " (needs only its allocation reference)")
    mm.take_back(mfn)
    hv.cpu.flush_tlb()
    refused = _transfer_refusal(ctx, table, op, "")
    if refused is not None:
        hv.memory.zero_frame(mfn)
        hv.built.free_mfns.append(mfn)
        return refused[0], refused[1] + f"; mfn {mfn:#x} freed"
    mm.give(mfn)
    pfn = _complete_transfer(table, op.ref, mfn)
    hv.set_m2p(mfn, pfn)
    return Gntst.okay, f"mfn {mfn:#x} transferred to d{own} grant {op.ref:#x} (pfn {pfn:#x})"


# -- cache_flush -------------------------------------------------------------------------
def _cache_flush_one(ctx: "HypercallContext", op: GnttabCacheFlush, cur_ref: int) -> None:
    """cache_flush for x86: argument checks, then a clean (with or without invalidate) of
    a frame the domain owns, which an emulated CPU has no cache for; invalidate alone is
    -EOPNOTSUPP on x86.  Raises HypercallError on refusal."""
    mm: MemoryManager = ctx.hv.mm
    if (op.offset >= PAGE_SIZE or op.length > PAGE_SIZE or op.offset + op.length > PAGE_SIZE
            or op.op & ~(GNTTAB_CACHE_INVAL | GNTTAB_CACHE_CLEAN)):
        raise fail(Errno.EINVAL, f"offset {op.offset:#x} length {op.length:#x} op {op.op:#x}: "
                                 "out of the page or unknown op bits")
    if op.length == 0 or op.op == 0:
        if cur_ref:
            raise fail(Errno.EILSEQ, "empty flush with a continuation argument")
        return
    mfn = op.dev_bus_addr >> PAGE_SHIFT
    if not mm.frame_valid(mfn):
        raise fail(Errno.EINVAL, f"mfn {mfn:#x} is outside machine RAM")
    if not mm.get_page(mfn):
        raise fail(Errno.EPERM, f"{mm.not_ours(mfn)}: no grant table owner to check against")
    mm.put_page(mfn)
    if op.op == GNTTAB_CACHE_INVAL:
        raise fail(Errno.EOPNOTSUPP, "x86 cannot invalidate the data cache without cleaning it")


# -- the batched commands ----------------------------------------------------------------
def _check_array(ctx: "HypercallContext", uop: int, count: int, size: int, name: str) -> None:
    """guest_handle_okay: the whole array lies in the guest's part of the address space."""
    if not grant_abi(ctx.hv).array_ok(uop, count, size):
        raise fail(Errno.EFAULT, f"{count} {name} records at {uop:#x} reach the hypervisor's "
                                 "addresses")


def _write_status(ctx: "HypercallContext", addr: int, status: Gntst) -> None:
    ctx.guest.write(addr, int(status).to_bytes(2, "little", signed=True))


def _map_batch(ctx: "HypercallContext", uop: int, count: int) -> int:
    _check_array(ctx, uop, count, GnttabMapGrantRef.SIZE, "map_grant_ref")
    table = _table(ctx)
    for i in range(count):
        addr = uop + i * GnttabMapGrantRef.SIZE
        op = GnttabMapGrantRef.from_bytes(ctx.guest.read(addr, GnttabMapGrantRef.SIZE))
        status, why, handle, bus = map_grant_ref(ctx, table, op)
        _note(ctx, i, f"[{i}] d{op.dom} ref {op.ref:#x} flags {op.flags:#x} at {op.host_addr:#x}: "
                      f"GNTST_{Gntst(status).name}" + (f" ({why})" if why else ""))
        out = GnttabMapGrantRef(host_addr=op.host_addr, flags=op.flags, ref=op.ref, dom=op.dom,
                                status=status, handle=handle, dev_bus_addr=bus)
        ctx.guest.write(addr, out.to_bytes())
    return 0


def _unmap_batch(ctx: "HypercallContext", uop: int, count: int, replace: bool) -> int:
    struct_ = GnttabUnmapAndReplace if replace else GnttabUnmapGrantRef
    _check_array(ctx, uop, count, struct_.SIZE, "unmap")
    table = _table(ctx)
    try:
        for i in range(count):
            addr = uop + i * struct_.SIZE
            op = struct_.from_bytes(ctx.guest.read(addr, struct_.SIZE))
            if replace:
                status, why = unmap_common(ctx, table, op.handle, op.host_addr, 0, op.new_addr)
            else:
                status, why = unmap_common(ctx, table, op.handle, op.host_addr, op.dev_bus_addr, 0)
            _note(ctx, i, f"[{i}] handle {op.handle:#x}: GNTST_{Gntst(status).name} ({why})")
            _write_status(ctx, addr + struct_.offset_of("status"), status)
    finally:
        ctx.hv.cpu.flush_tlb()
    return 0


def _copy_batch(ctx: "HypercallContext", uop: int, count: int) -> int:
    layout = grant_abi(ctx.hv).copy
    _check_array(ctx, uop, count, layout.SIZE, "copy")
    table = _table(ctx)
    mm: MemoryManager = ctx.hv.mm
    src, dst = _CopyBuf(), _CopyBuf()
    try:
        for i in range(count):
            addr = uop + i * layout.SIZE
            op = layout.from_bytes(ctx.guest.read(addr, layout.SIZE))
            status, why = _copy_one(ctx, table, op, src, dst)
            if status != Gntst.okay:
                _release_buf(mm, table, src)
                _release_buf(mm, table, dst)
            _note(ctx, i, f"[{i}] GNTST_{Gntst(status).name} ({why})")
            _write_status(ctx, addr + layout.offset_of("status"), status)
    finally:
        _release_buf(mm, table, src)
        _release_buf(mm, table, dst)
    return 0


def _transfer_batch(ctx: "HypercallContext", uop: int, count: int) -> int:
    layout = grant_abi(ctx.hv).transfer
    _check_array(ctx, uop, count, layout.SIZE, "transfer")
    table = _table(ctx)
    one = transfer_one64 if layout is GnttabTransfer64 else transfer_one
    for i in range(count):
        addr = uop + i * layout.SIZE
        op = layout.from_bytes(ctx.guest.read(addr, layout.SIZE))
        status, why = one(ctx, table, op)
        _note(ctx, i, f"[{i}] mfn {op.mfn:#x} to d{op.domid} ref {op.ref:#x}: "
                      f"GNTST_{Gntst(status).name} ({why})")
        _write_status(ctx, addr + layout.offset_of("status"), status)
    return 0


def _cache_flush_batch(ctx: "HypercallContext", uop: int, count: int, opaque: int) -> int:
    _check_array(ctx, uop, count, GnttabCacheFlush.SIZE, "cache_flush")
    cur_ref = opaque
    for i in range(count):
        op = GnttabCacheFlush.from_bytes(ctx.guest.read(uop + i * GnttabCacheFlush.SIZE,
                                                        GnttabCacheFlush.SIZE))
        _cache_flush_one(ctx, op, cur_ref)
        cur_ref = 0
    ctx.note(f"{count} cache flush(es): nothing to write back on an emulated CPU")
    return 0


_MAPPING_OPS = frozenset({GnttabOp.map_grant_ref, GnttabOp.unmap_grant_ref,
                          GnttabOp.unmap_and_replace})


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
    if cmd in _MAPPING_OPS and grant_abi(ctx.hv).bits == 64:
        raise fail(Errno.ENOSYS, f"GNTTABOP_{GnttabOp(cmd).name}: pvdbg maps grants into "
                                 "32-bit guests' pagetables only")
    if cmd == GnttabOp.map_grant_ref:
        return _map_batch(ctx, uop, count)
    if cmd == GnttabOp.unmap_grant_ref:
        return _unmap_batch(ctx, uop, count, replace=False)
    if cmd == GnttabOp.unmap_and_replace:
        return _unmap_batch(ctx, uop, count, replace=True)
    if cmd == GnttabOp.copy:
        return _copy_batch(ctx, uop, count)
    if cmd == GnttabOp.transfer:
        return _transfer_batch(ctx, uop, count)
    if cmd == GnttabOp.cache_flush:
        return _cache_flush_batch(ctx, uop, count, opaque)
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
    raise fail(Errno.ENOSYS, f"unknown grant_table_op {cmd}")
