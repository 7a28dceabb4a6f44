"""Xen's frame table for one 32-bit PAE PV (compat) domain: page types, reference
counts, pinning, and the pagetable validation rules Xen enforces.

Every machine frame has an owner, a general reference count, a type (none, L1, L2, L3,
seg_desc, writable) with a type count, and the flags validated, pinned and pae_xen_l2.
A frame changes type only while its type count is 0.  Taking a pagetable or descriptor
type validates the frame's contents; dropping the last type reference of a pagetable
devalidates it, which drops the references its entries held.  Who holds type references:
each present entry of the level above, each RW L1 mapping (writable type), a pin, a
vcpu's CR3, a GDT frame or LDT page (seg_desc).  Refusals raise HypercallError with the
errno Xen returns and a one-line reason in Xen's terms.

Not modelled: PV L1TF shadowing of non-present entries (pv-l1tf), preemption/partial
validation (everything completes in one call), I/O memory (a domU has no iomem rights).

ABI: xen/arch/x86/mm.c (get_page_from_l1e .. mod_l3_entry, _get_page_type,
_put_page_type, promote_l*_table, demote_l*_table, new_guest_cr3), xen/arch/x86/pv/mm.h
(adjust_guest_l*e), xen/common/memory.c (guest_remove_page); XEN-PV-ABI.md section 4.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Callable, Iterable, Protocol

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .constants import Errno, HYPERVISOR_VIRT_START_PAE, XEN_FIRST_L2_SLOT
from .hypercalls import HypercallError, fail

# PTE bits (64-bit PAE entries; Xen's "flags" bits 12-23 are PTE bits 52-63).
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_U = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PSE = 1 << 7              # PAT in an L1 entry
PTE_G = 1 << 8
PTE_GNTTAB = 1 << 62          # _PAGE_GNTTAB
PTE_NX = 1 << 63
PTE_ADDR = 0x000FFFFFFFFFF000  # bits 12..51 (PADDR_MASK & PAGE_MASK)
MFN_FIELD_ALL_ONES = (1 << 40) - 1

# Disallow masks for a PV domU without I/O rights (mm.c L1_DISALLOW_MASK, l1_disallow_mask,
# L2_DISALLOW_MASK, compat l3_disallow_mask 0xFFFFF198).
L1_DISALLOW = PTE_PWT | PTE_PCD | PTE_PSE | PTE_GNTTAB
L2_DISALLOW = PTE_PWT | PTE_PCD | PTE_PSE | PTE_G
L3_DISALLOW = PTE_PWT | PTE_PCD | PTE_PSE | PTE_G | (0xFFF << 52)
# Bits whose change needs re-validation (everything but FASTPATH_FLAG_WHITELIST:
# NX, AVAIL_HIGH, AVAIL, G, D, A, U); the same for PDEs when linear pagetables are on.
FASTPATH_SENSITIVE = PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PSE | PTE_ADDR

ENTRIES = 512
L3_GUEST_SLOTS = 4            # a compat L3 has 4 usable entries; Xen zeroes 4..511
INVALID_M2P_ENTRY = 0xFFFFFFFF
LIBXL_MAXMEM_CONSTANT_PAGES = 256   # libxl: maxmem = target + 1 MiB
DOMU_MAX_ORDER = 9            # CONFIG_DOMU_MAX_ORDER
_ENTRIES_FMT = struct.Struct("<512Q")

_BIT_NAMES = ((PTE_PWT, "PWT"), (PTE_PCD, "PCD"), (PTE_PSE, "PSE/PAT"), (PTE_G, "G"),
              (PTE_GNTTAB, "GNTTAB"), (PTE_NX, "NX"))


def pte_mfn(pte: int) -> int:
    return (pte & PTE_ADDR) >> PAGE_SHIFT


def bit_names(bits: int) -> str:
    names = [n for b, n in _BIT_NAMES if bits & b]
    high = (bits >> 52) & 0x3FF
    if high:
        names.append(f"bits 52-61 {high:#x}")
    return "|".join(names) or f"{bits:#x}"


class PageType(IntEnum):
    """PGT_* types.  ABI: xen/arch/x86/include/asm/mm.h."""
    none = 0
    l1 = 1
    l2 = 2
    l3 = 3
    l4 = 4
    seg_desc = 5
    shared = 6
    writable = 7

    @property
    def label(self) -> str:
        return _TYPE_LABELS[self]

    @property
    def is_pagetable(self) -> bool:
        return PageType.l1 <= self <= PageType.l4


_TYPE_LABELS = {PageType.none: "none", PageType.l1: "L1", PageType.l2: "L2", PageType.l3: "L3",
                PageType.l4: "L4", PageType.seg_desc: "seg_desc", PageType.shared: "shared",
                PageType.writable: "writable"}
PROTECTED_TYPES = frozenset({PageType.l1, PageType.l2, PageType.l3, PageType.l4,
                             PageType.seg_desc})


class Owner(IntEnum):
    """Who a machine frame belongs to."""
    free = 0          # in the heap, nobody's
    domain = 1        # the guest
    xen = 2           # Xen's own (M2P, private area, ...)


class PageTypeEvent(StrEnum):
    """What a page_type trace record reports."""
    validated = "validated"
    validation_failed = "validation_failed"
    devalidated = "devalidated"
    pinned = "pinned"
    unpinned = "unpinned"


@dataclass(slots=True)
class PageInfo:
    """struct page_info: count_info and type_info of one frame."""
    owner: Owner
    count: int = 0                 # general references, including the allocation one
    allocated: bool = False        # PGC_allocated
    type: PageType = PageType.none
    type_count: int = 0
    validated: bool = False        # PGT_validated
    pinned: bool = False           # PGT_pinned
    pae_xen_l2: bool = False       # PGT_pae_xen_l2: the L2 in slot 3 of a PAE L3
    linear: int = 0                # linear_pt_count: >0 has linear entries, <0 used as linear
    xen_heap: bool = False         # PGC_xen_heap (shared_info, grant frames)


class MmEvents(Protocol):
    def page_type_event(self, event: PageTypeEvent, mfn: int, page: PageInfo,
                        detail: str) -> None: ...
    def flush_tlb(self) -> None: ...


@dataclass
class RecordingEvents:
    """MmEvents that keeps what happened (tests, and a MemoryManager without a CPU)."""
    events: list[tuple[PageTypeEvent, int, str, str]] = field(default_factory=list)
    flushes: int = 0

    def page_type_event(self, event: PageTypeEvent, mfn: int, page: PageInfo,
                        detail: str) -> None:
        self.events.append((event, mfn, page.type.label, detail))

    def flush_tlb(self) -> None:
        self.flushes += 1


@dataclass(frozen=True)
class Violation:
    """An entry that breaks "no writable mapping of a pagetable or descriptor frame"."""
    table_mfn: int
    table_type: str
    index: int
    entry: int
    target_mfn: int
    target_type: str
    reason: str


class MemoryManager:
    """The frame table and type system of one PV domain (mm.c, for a compat guest)."""

    def __init__(self, memory: MachineMemory, *, domain_mfns: Iterable[int],
                 free_mfns: list[int], m2p_mfns: list[int], xen_l2_entries: dict[int, int],
                 domid: int = 1, max_pages: int | None = None, nr_vcpus: int = 1,
                 events: MmEvents | None = None) -> None:
        self.memory = memory
        self.domid = domid
        self.events: MmEvents = events if events is not None else RecordingEvents()
        self.free_mfns = free_mfns          # shared with the builder's spare pool
        self.m2p_mfns = m2p_mfns
        self.xen_l2_entries = dict(xen_l2_entries)
        self._owner = bytearray([Owner.xen]) * memory.nr_frames
        for mfn in free_mfns:
            self._owner[mfn] = Owner.free
        self.tot_pages = 0
        for mfn in domain_mfns:
            self._owner[mfn] = Owner.domain
            self.tot_pages += 1
        self.max_pages = max_pages if max_pages is not None else (
            self.tot_pages + LIBXL_MAXMEM_CONSTANT_PAGES)
        self._pages: dict[int, PageInfo] = {}
        self.vcpu_cr3: list[int | None] = [None] * nr_vcpus
        self.e820: list = []          # toolstack memory map (XENMEM_memory_map); none by default

    @classmethod
    def for_built_domain(cls, built, *, domid: int = 1, nr_vcpus: int = 1,
                         events: MmEvents | None = None) -> "MemoryManager":
        """The frame table as the domain builder leaves it: guest frames allocated,
        shared_info shared writable with the guest, the spare pool free."""
        mm = cls(built.memory, domain_mfns=built.p2m, free_mfns=built.free_mfns,
                 m2p_mfns=built.m2p_mfns, xen_l2_entries=built.xen_l2_entries, domid=domid,
                 nr_vcpus=nr_vcpus, events=events)
        mm.share_xen_page_with_guest(built.shared_info_mfn)
        return mm

    def boot(self, l3_mfn: int, vcpu_id: int = 0) -> None:
        """What libxc and XEN_DOMCTL_setvcpucontext do: pin the L3, load it as CR3."""
        self.pin(l3_mfn, PageType.l3)
        self.new_baseptr(vcpu_id, l3_mfn)

    # -- frames ----------------------------------------------------------------------
    def frame_valid(self, mfn: int) -> bool:
        return 0 <= mfn < self.memory.nr_frames

    def owner(self, mfn: int) -> Owner:
        return Owner(self._owner[mfn])

    def page(self, mfn: int) -> PageInfo:
        """The frame's page_info (created on first use)."""
        pi = self._pages.get(mfn)
        if pi is None:
            owner = Owner(self._owner[mfn])
            pi = PageInfo(owner)
            if owner is Owner.domain:
                pi.count, pi.allocated = 1, True
            self._pages[mfn] = pi
        return pi

    def peek(self, mfn: int) -> PageInfo:
        """The frame's page_info without creating one (a default for untouched frames)."""
        pi = self._pages.get(mfn)
        if pi is not None:
            return pi
        owner = Owner(self._owner[mfn])
        return PageInfo(owner, count=1 if owner is Owner.domain else 0,
                        allocated=owner is Owner.domain)

    def touched_frames(self) -> list[int]:
        """Frames whose page_info has ever changed, in MFN order."""
        return sorted(self._pages)

    def entries(self, mfn: int) -> tuple[int, ...]:
        """The 512 64-bit entries of frame `mfn`."""
        return _ENTRIES_FMT.unpack_from(self.memory.view, mfn << PAGE_SHIFT)

    def read_entry(self, mfn: int, index: int) -> int:
        return self.memory.read_u64((mfn << PAGE_SHIFT) + index * 8)

    def write_entry(self, mfn: int, index: int, value: int) -> None:
        """Store an entry as Xen does after its checks (no reference changes)."""
        self.memory.write_u64((mfn << PAGE_SHIFT) + index * 8, value)

    def share_xen_page_with_guest(self, mfn: int, writable: bool = True) -> None:
        """A Xen-heap frame the guest may map (shared_info, grant frames): owned by the
        domain, its type pinned as writable (or none, read-only) by one reference."""
        self._owner[mfn] = Owner.domain
        pi = self.page(mfn)
        pi.owner = Owner.domain
        pi.xen_heap = True
        pi.count, pi.allocated = 1, True
        pi.type = PageType.writable if writable else PageType.none
        pi.type_count, pi.validated = 1, True

    # -- M2P -------------------------------------------------------------------------
    def m2p_get(self, mfn: int) -> int:
        """The compat M2P entry of `mfn` (u32 PFN, 0xFFFFFFFF if invalid)."""
        frame, off = divmod(mfn * 4, PAGE_SIZE)
        if not 0 <= frame < len(self.m2p_mfns):
            return INVALID_M2P_ENTRY
        return self.memory.read_u32((self.m2p_mfns[frame] << PAGE_SHIFT) + off)

    def m2p_set(self, mfn: int, pfn: int) -> None:
        frame, off = divmod(mfn * 4, PAGE_SIZE)
        if 0 <= frame < len(self.m2p_mfns):
            self.memory.write_u32((self.m2p_mfns[frame] << PAGE_SHIFT) + off, pfn)

    def mfn_of_pfn(self, pfn: int) -> int | None:
        """The domain's frame whose M2P entry is `pfn` (a reverse lookup), or None."""
        table = array("I", b"".join(self.memory.read(m << PAGE_SHIFT, PAGE_SIZE)
                                    for m in self.m2p_mfns))
        start, end = 0, min(len(table), self.memory.nr_frames)
        while True:
            try:
                mfn = table.index(pfn, start, end)
            except ValueError:
                return None
            if self._owner[mfn] == Owner.domain:
                return mfn
            start = mfn + 1

    def pfn_hint(self, value: int, wanted: PageType, pinned: bool = False) -> str:
        """' (0xe is the pfn of mfn 0xfdb, an L3 pagetable: ...)' when `value`, refused as
        an MFN, is the PFN of another frame that already is what the caller wanted (of
        type `wanted`, or pinned); '' otherwise."""
        mfn = self.mfn_of_pfn(value)
        if mfn is None or mfn == value:
            return ""
        pi = self.peek(mfn)
        if pinned and not pi.pinned:
            return ""
        if not pinned and (pi.type is not wanted or not pi.type_count):
            return ""
        return (f" ({value:#x} is the pfn of mfn {mfn:#x}, {self.type_phrase(pi)}: a PFN "
                "passed where an MFN is required?)")

    # -- descriptions (Xen's terms) -------------------------------------------------------
    def describe(self, mfn: int) -> str:
        """'mfn 0x1a2b (pfn 0x12) is an L1 pagetable (type count 2, pinned)'."""
        if not self.frame_valid(mfn):
            return f"mfn {mfn:#x} is outside machine RAM"
        pi = self.peek(mfn)
        name = f"mfn {mfn:#x}"
        if pi.owner is Owner.domain:
            pfn = self.m2p_get(mfn)
            if pfn != INVALID_M2P_ENTRY:
                name += f" (pfn {pfn:#x})"
        if pi.owner is Owner.xen:
            return f"{name} belongs to Xen"
        if pi.owner is Owner.free:
            return f"{name} is a free frame"
        return f"{name} is {self.type_phrase(pi)}"

    @staticmethod
    def type_phrase(pi: PageInfo) -> str:
        if pi.type_count == 0 and not (pi.type is PageType.seg_desc and pi.validated):
            return "an untyped page (type count 0)"
        extra = ", pinned" if pi.pinned else ""
        if pi.type.is_pagetable:
            what = ("an L2|pae_xen_l2 pagetable" if pi.pae_xen_l2
                    else f"an {pi.type.label} pagetable")
        elif pi.type is PageType.seg_desc:
            what = "a descriptor page (seg_desc)"
        elif pi.type is PageType.writable:
            what = "a writable page"
            extra += ", mapped writable" if not pi.xen_heap else ", Xen heap"
        else:
            what = f"a {pi.type.label} page"
        return f"{what} (type count {pi.type_count}{extra})"

    @staticmethod
    def type_request(type_: PageType, pae_xen_l2: bool = False) -> str:
        if type_ is PageType.l2 and pae_xen_l2:
            return "an L2|pae_xen_l2 pagetable"
        if type_.is_pagetable:
            return f"an {type_.label} pagetable"
        if type_ is PageType.seg_desc:
            return "a descriptor page"
        return f"a {type_.label} page"

    def _emit(self, event: PageTypeEvent, mfn: int, detail: str) -> None:
        self.events.page_type_event(event, mfn, self.page(mfn), detail)

    # -- general references (count_info) -------------------------------------------------
    def get_page(self, mfn: int, owner: Owner = Owner.domain) -> bool:
        """get_page(): a reference if the frame is allocated to `owner`."""
        if not self.frame_valid(mfn):
            return False
        pi = self.page(mfn)
        if pi.owner is not owner or pi.count <= 0:
            return False
        pi.count += 1
        return True

    def put_page(self, mfn: int) -> None:
        pi = self.page(mfn)
        if pi.count <= 0:
            raise MmInternalError(f"put_page on mfn {mfn:#x} with no reference")
        pi.count -= 1
        if pi.count == 0 and not pi.xen_heap:
            self._free(mfn)

    def _free(self, mfn: int) -> None:
        """free_domheap_page: the frame goes back to the heap, scrubbed."""
        pi = self._pages.pop(mfn)
        if pi.owner is Owner.domain:
            self.tot_pages -= 1
        self._owner[mfn] = Owner.free
        self.memory.zero_frame(mfn)
        self.free_mfns.append(mfn)

    def not_ours(self, mfn: int) -> str:
        """Why `mfn` cannot be referenced by the domain, in one phrase."""
        if not self.frame_valid(mfn):
            return f"mfn {mfn:#x} is outside machine RAM"
        owner = self.owner(mfn)
        if owner is Owner.xen:
            return f"mfn {mfn:#x} belongs to Xen, not to d{self.domid}"
        if owner is Owner.free:
            return f"mfn {mfn:#x} is a free frame, not allocated to d{self.domid}"
        return f"mfn {mfn:#x} has no reference left"

    def get_page_from_mfn(self, mfn: int, what: str = "") -> None:
        """get_page_from_mfn(mfn, d) or -EINVAL, naming why."""
        if not self.get_page(mfn):
            raise fail(Errno.EINVAL, self.not_ours(mfn) + (f": {what}" if what else ""))

    # -- type references (type_info) ------------------------------------------------------
    def get_page_type(self, mfn: int, type_: PageType, pae_xen_l2: bool = False) -> None:
        """_get_page_type(): one type reference of `type_`, validating on 0 -> 1."""
        pi = self.page(mfn)
        if pi.type_count == 0:
            if pi.type is not type_ or pi.pae_xen_l2 != pae_xen_l2:
                if pi.type is PageType.writable and type_ is not PageType.writable:
                    # Stale writable TLB entries must not survive a frame becoming a
                    # pagetable or descriptor page (the type-change flush).
                    self.events.flush_tlb()
                pi.type, pi.pae_xen_l2, pi.validated = type_, pae_xen_l2, False
            pi.type_count = 1
            if type_ in (PageType.writable, PageType.shared):
                pi.validated = True
                return
            if pi.validated:
                return
            try:
                self._validate(mfn, type_)
            except HypercallError as err:
                self._emit(PageTypeEvent.validation_failed, mfn,
                           f"mfn {mfn:#x} as {self._type_word(type_, pae_xen_l2)}: {err.why}")
                pi.type, pi.type_count, pi.validated = PageType.none, 0, False
                pi.pae_xen_l2 = False
                pi.linear = 0
                raise
            pi.validated = True
            self._emit(PageTypeEvent.validated, mfn,
                       f"mfn {mfn:#x} validated as {self._type_word(type_, pae_xen_l2)}")
            return
        if pi.type is not type_ or pi.pae_xen_l2 != pae_xen_l2:
            raise fail(Errno.EINVAL,
                       f"{self.describe(mfn)}: it cannot also be "
                       f"{self.type_request(type_, pae_xen_l2)} (Bad type: saw "
                       f"{self._type_word(pi.type, pi.pae_xen_l2)} != exp "
                       f"{self._type_word(type_, pae_xen_l2)})")
        if not pi.validated:
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is still being validated as {pi.type.label}")
        pi.type_count += 1

    @staticmethod
    def _type_word(type_: PageType, pae: bool) -> str:
        return "L2|pae_xen_l2" if pae else type_.label

    def put_page_type(self, mfn: int, ptpg: int | None = None) -> None:
        """_put_page_type(): drop one type reference; a pagetable losing its last one is
        devalidated.  `ptpg` is the table whose entry held the reference (linear maps)."""
        pi = self.page(mfn)
        if pi.type_count <= 0:
            raise MmInternalError(f"put_page_type on mfn {mfn:#x} with type count 0")
        linear = ptpg is not None and self.page(ptpg).type is pi.type
        if pi.type_count == 1 and pi.type.is_pagetable and pi.validated:
            pi.validated = False
            self._devalidate(mfn)
            pi.type_count = 0
            if linear:
                self._dec_linear(mfn, ptpg)
            self._emit(PageTypeEvent.devalidated, mfn,
                       f"mfn {mfn:#x} is no longer an {pi.type.label} pagetable (type count 0)")
            pi.pae_xen_l2 = False
            return
        pi.type_count -= 1
        if linear:
            self._dec_linear(mfn, ptpg)

    def _dec_linear(self, mfn: int, ptpg: int | None) -> None:
        self.page(mfn).linear += 1
        self.page(ptpg).linear -= 1

    def get_page_and_type(self, mfn: int, type_: PageType, pae_xen_l2: bool = False,
                          what: str = "") -> None:
        """get_page_and_type_from_mfn(): -EINVAL if not the domain's, else the type."""
        self.get_page_from_mfn(mfn, what)
        try:
            self.get_page_type(mfn, type_, pae_xen_l2)
        except HypercallError:
            self.put_page(mfn)
            raise

    def put_page_and_type(self, mfn: int, ptpg: int | None = None) -> None:
        self.put_page_type(mfn, ptpg)
        self.put_page(mfn)

    # -- entries: references taken by present entries ---------------------------------
    def get_page_from_l1e(self, pte: int, pg_owner: Owner = Owner.domain) -> None:
        """get_page_from_l1e(): a general reference on the target, plus a writable type
        reference if the entry is RW.  -EINVAL bad flags, -EPERM MMIO, -EBUSY otherwise."""
        bad = pte & L1_DISALLOW
        if bad:
            raise fail(Errno.EINVAL, f"L1 entry {pte:#x}: flags {bit_names(bad)} are not allowed "
                                     f"for a PV domU (l1_disallow_mask)")
        mfn = pte_mfn(pte)
        if not self.frame_valid(mfn):
            if mfn == MFN_FIELD_ALL_ONES:
                raise fail(Errno.EINVAL, f"L1 entry {pte:#x} maps INVALID_MFN")
            raise fail(Errno.EPERM, f"mfn {mfn:#x} is outside RAM (MMIO) and d{self.domid} "
                                    "has no I/O memory permission")
        if not self.get_page(mfn, pg_owner):
            raise fail(Errno.EBUSY, f"{self.not_ours(mfn)}: it cannot be mapped")
        if pte & PTE_RW:
            try:
                self.get_page_type(mfn, PageType.writable)
            except HypercallError:
                self.put_page(mfn)
                raise fail(Errno.EBUSY, f"{self.describe(mfn)}: writable mapping refused") \
                    from None

    def put_page_from_l1e(self, pte: int) -> None:
        if not pte & PTE_P:
            return
        if pte & PTE_GNTTAB:            # a grant mapping must be destroyed by grant_table_op
            implicit_unmap = getattr(self.events, "implicit_grant_unmap", None)
            if implicit_unmap is not None:
                implicit_unmap(pte)
        mfn = pte_mfn(pte)
        if not self.frame_valid(mfn):
            return
        if pte & PTE_RW:
            self.put_page_and_type(mfn)
        else:
            self.put_page(mfn)

    def get_page_from_l2e(self, pte: int, l2mfn: int) -> None:
        """get_page_from_l2e(): the target must take the L1 type, or be a validated L2
        mapped read-only (a linear pagetable)."""
        bad = pte & L2_DISALLOW
        if bad:
            raise fail(Errno.EINVAL, f"L2 entry {pte:#x}: flags {bit_names(bad)} are not allowed "
                                     "(no superpages or cache attributes)")
        mfn = pte_mfn(pte)
        try:
            self.get_page_and_type(mfn, PageType.l1, what="an L2 entry must point at one of "
                                                           "the domain's L1 pagetables")
        except HypercallError as err:
            if err.errno != Errno.EINVAL:
                raise
            refusal = self._get_linear_pagetable(pte, l2mfn)
            if refusal is None:
                return
            raise fail(Errno.EINVAL, f"{err.why}; {refusal}") from None

    def _get_linear_pagetable(self, pte: int, l2mfn: int) -> str | None:
        """define_get_linear_pagetable(l2): None if `pte` is an acceptable linear entry
        (references taken), else why not."""
        mfn = pte_mfn(pte)
        if not self.frame_valid(mfn) or self.peek(mfn).type is not PageType.l2:
            return "nor is it a linear pagetable entry"
        if pte & PTE_RW:
            return "a linear pagetable entry (L2 -> L2) must be read-only"
        if mfn == l2mfn:
            return None
        if self.page(l2mfn).owner is not Owner.domain or not self.get_page(mfn):
            return "a linear pagetable must map a frame of the same domain"
        table, target = self.page(l2mfn), self.page(mfn)
        if table.linear < 0:
            self.put_page(mfn)
            return (f"L2 mfn {l2mfn:#x} is itself mapped as a linear pagetable and cannot hold "
                    "linear entries")
        if target.linear > 0:
            self.put_page(mfn)
            return f"L2 mfn {mfn:#x} holds linear entries and cannot be mapped linearly"
        if not target.validated or target.type_count == 0:
            self.put_page(mfn)
            return f"L2 mfn {mfn:#x} is not a validated L2 (linear maps need one)"
        target.type_count += 1
        table.linear += 1
        target.linear -= 1
        return None

    def put_page_from_l2e(self, pte: int, l2mfn: int) -> None:
        if not pte & PTE_P:
            return
        mfn = pte_mfn(pte)
        if mfn == l2mfn:
            return
        self.put_page_type(mfn, ptpg=l2mfn)
        self.put_page(mfn)

    def get_page_from_l3e(self, pte: int, l3mfn: int) -> None:
        bad = pte & L3_DISALLOW
        if bad:
            raise fail(Errno.EINVAL, f"L3 entry {pte:#x}: flags {bit_names(bad)} are not allowed "
                                     "in a compat L3 (disallow mask 0xfffff198)")
        self.get_page_and_type(pte_mfn(pte), PageType.l2,
                               what="an L3 entry must point at one of the domain's L2s")

    def put_page_from_l3e(self, pte: int, l3mfn: int) -> None:
        if not pte & PTE_P:
            return
        mfn = pte_mfn(pte)
        if mfn == l3mfn:
            return
        self.put_page_type(mfn, ptpg=l3mfn)
        self.put_page(mfn)

    # -- validation ---------------------------------------------------------------------------
    def _validate(self, mfn: int, type_: PageType) -> None:
        if type_ is PageType.l1:
            self._promote_l1(mfn)
        elif type_ is PageType.l2:
            self._promote_l2(mfn, self.page(mfn).pae_xen_l2)
        elif type_ is PageType.l3:
            self._promote_l3(mfn)
        elif type_ is PageType.seg_desc:
            self._validate_segdesc(mfn)
        else:
            raise fail(Errno.EINVAL, f"type {type_.label} cannot be used by a 32-bit PV guest")

    def _validate_segdesc(self, mfn: int) -> None:
        # The descriptor checks live in descriptors.py; it installs itself here.
        if self.segdesc_validator is None:
            raise fail(Errno.EINVAL, "no descriptor checker installed")
        self.segdesc_validator(mfn)

    # Checks a frame's 512 descriptors (installed by descriptors.py), raising HypercallError.
    segdesc_validator: Callable[[int], None] | None = None

    def _promote_l1(self, mfn: int) -> None:
        entries = self.entries(mfn)
        done: list[int] = []
        for i, pte in enumerate(entries):
            if not pte & PTE_P:
                continue
            try:
                self.get_page_from_l1e(pte)
            except HypercallError as err:
                for j in reversed(done):
                    self.put_page_from_l1e(entries[j])
                raise fail(err.errno, f"L1 mfn {mfn:#x} slot {i} ({pte:#x}): {err.why}") from None
            done.append(i)

    def _promote_l2(self, mfn: int, pae_xen_l2: bool) -> None:
        entries = self.entries(mfn)
        last = XEN_FIRST_L2_SLOT if pae_xen_l2 else ENTRIES
        done: list[int] = []
        for i in range(last):
            pte = entries[i]
            if not pte & PTE_P:
                continue
            try:
                self.get_page_from_l2e(pte, mfn)
            except HypercallError as err:
                for j in reversed(done):
                    self.put_page_from_l2e(entries[j], mfn)
                why = f"L2 mfn {mfn:#x} slot {i} ({pte:#x}): {err.why}"
                if i >= XEN_FIRST_L2_SLOT:
                    why += (f" (slots {XEN_FIRST_L2_SLOT}..511 of an L2 in L3 slot 3 map the "
                            f"hypervisor hole at {HYPERVISOR_VIRT_START_PAE:#x}; Xen fills them)")
                raise fail(err.errno, why) from None
            done.append(i)
        if pae_xen_l2:
            self.init_xen_pae_l2_slots(mfn)

    def init_xen_pae_l2_slots(self, mfn: int) -> None:
        """Copy Xen's entries into slots 428..511 of an L2|pae_xen_l2."""
        base = mfn << PAGE_SHIFT
        for slot in range(XEN_FIRST_L2_SLOT, ENTRIES):
            self.memory.write_u64(base + slot * 8, self.xen_l2_entries.get(slot, 0))

    def _promote_l3(self, mfn: int) -> None:
        base = mfn << PAGE_SHIFT
        self.memory.write(base + L3_GUEST_SLOTS * 8, bytes((ENTRIES - L3_GUEST_SLOTS) * 8))
        entries = self.entries(mfn)
        done: list[int] = []

        def unwind() -> None:
            for j in reversed(done):
                pte = self.read_entry(mfn, j)
                self.write_entry(mfn, j, pte & ~(PTE_U | PTE_RW | PTE_A))
                self.put_page_from_l3e(pte, mfn)

        for i in range(L3_GUEST_SLOTS):
            pte = entries[i]
            try:
                if i == 3:
                    if not pte & PTE_P:
                        raise fail(Errno.EINVAL, "slot 3 must be present: it holds the L2 with "
                                                 "Xen's mappings (hypervisor hole)")
                    bad = pte & L3_DISALLOW
                    if bad:
                        raise fail(Errno.EINVAL, f"flags {bit_names(bad)} are not allowed in a "
                                                 "compat L3 (disallow mask 0xfffff198)")
                    l2 = pte_mfn(pte)
                    self.get_page_and_type(l2, PageType.l2, pae_xen_l2=True,
                                           what="slot 3 must point at one of the domain's L2s")
                    if self.page(l2).type_count != 1:
                        self.put_page_and_type(l2)
                        raise fail(Errno.EINVAL, f"PAE L3 3rd slot is shared: L2 mfn {l2:#x} is "
                                                 "already in slot 3 of another L3")
                elif not pte & PTE_P:
                    continue
                else:
                    self.get_page_from_l3e(pte, mfn)
            except HypercallError as err:
                unwind()
                raise fail(err.errno, f"PAE L3 mfn {mfn:#x} slot {i} ({pte:#x}): {err.why}") \
                    from None
            self.write_entry(mfn, i, pte | PTE_U | PTE_RW)      # adjust_guest_l3e (compat)
            done.append(i)

    def _devalidate(self, mfn: int) -> None:
        pi = self.page(mfn)
        if pi.type is PageType.l1:
            for pte in self.entries(mfn):
                self.put_page_from_l1e(pte)
        elif pi.type is PageType.l2:
            last = XEN_FIRST_L2_SLOT if pi.pae_xen_l2 else ENTRIES
            entries = self.entries(mfn)
            for i in range(last - 1, -1, -1):
                self.put_page_from_l2e(entries[i], mfn)
        elif pi.type is PageType.l3:
            entries = self.entries(mfn)
            for i in range(ENTRIES - 1, -1, -1):
                pte = entries[i]
                if pte & PTE_P:
                    self.put_page_from_l3e(pte, mfn)
                    self.write_entry(mfn, i, pte & ~(PTE_U | PTE_RW | PTE_A))   # unadjust

    # -- updates ------------------------------------------------------------------------------
    @staticmethod
    def _update_value(old: int, new: int, preserve_ad: bool) -> int:
        return new | (old & (PTE_A | PTE_D)) if preserve_ad else new

    def mod_l1_entry(self, l1mfn: int, index: int, new: int, *, preserve_ad: bool = False,
                     pg_owner: Owner = Owner.domain) -> None:
        """mod_l1_entry(): write `new` into a validated L1, taking and dropping refs."""
        old = self.read_entry(l1mfn, index)
        if new & PTE_P:
            bad = new & L1_DISALLOW
            if bad:
                raise fail(Errno.EINVAL, f"L1 entry {new:#x}: flags {bit_names(bad)} are not "
                                         "allowed for a PV domU (l1_disallow_mask)")
            if old & PTE_P and not (old ^ new) & FASTPATH_SENSITIVE:
                self.write_entry(l1mfn, index, self._update_value(old, new, preserve_ad))
                return
            self.get_page_from_l1e(new, pg_owner)
        self.write_entry(l1mfn, index, self._update_value(old, new, preserve_ad))
        self.put_page_from_l1e(old)

    def mod_l2_entry(self, l2mfn: int, index: int, new: int, *, preserve_ad: bool = False) -> None:
        pi = self.page(l2mfn)
        if pi.pae_xen_l2 and index >= XEN_FIRST_L2_SLOT:
            va = 0xC0000000 + (index << 21)
            raise fail(Errno.EPERM, f"L2 mfn {l2mfn:#x} slot {index} ({va:#x}) is in the Xen-"
                                    f"private area (hypervisor hole from "
                                    f"{HYPERVISOR_VIRT_START_PAE:#x}): update refused")
        old = self.read_entry(l2mfn, index)
        if new & PTE_P:
            bad = new & L2_DISALLOW
            if bad:
                raise fail(Errno.EINVAL, f"L2 entry {new:#x}: flags {bit_names(bad)} are not "
                                         "allowed (no superpages or cache attributes)")
            if old & PTE_P and not (old ^ new) & FASTPATH_SENSITIVE:
                self.write_entry(l2mfn, index, self._update_value(old, new, preserve_ad))
                return
            self.get_page_from_l2e(new, l2mfn)
        self.write_entry(l2mfn, index, self._update_value(old, new, preserve_ad))
        self.put_page_from_l2e(old, l2mfn)

    def mod_l3_entry(self, l3mfn: int, index: int, new: int, *, preserve_ad: bool = False) -> None:
        if index >= 3:
            raise fail(Errno.EINVAL, f"L3 mfn {l3mfn:#x} slot {index}: slot 3 and above of a "
                                     "validated PAE L3 cannot be changed (Xen's mappings)")
        old = self.read_entry(l3mfn, index)
        if new & PTE_P:
            bad = new & L3_DISALLOW
            if bad:
                raise fail(Errno.EINVAL, f"L3 entry {new:#x}: flags {bit_names(bad)} are not "
                                         "allowed in a compat L3 (disallow mask 0xfffff198)")
            new |= PTE_U | PTE_RW                              # adjust_guest_l3e
            if old & PTE_P and not (old ^ new) & FASTPATH_SENSITIVE:
                self.write_entry(l3mfn, index, self._update_value(old, new, preserve_ad))
                return
            self.get_page_from_l3e(new, l3mfn)
        self.write_entry(l3mfn, index, self._update_value(old, new, preserve_ad))
        self.put_page_from_l3e(old, l3mfn)

    # -- pinning and CR3 ----------------------------------------------------------------------
    def pin(self, mfn: int, type_: PageType) -> None:
        """MMUEXT_PIN_Lx_TABLE: take the type (validating) and set the pin bit."""
        if type_ is PageType.l4:
            return                                   # ignored for a 32-bit guest
        self.get_page_from_mfn(mfn, "only the domain's frames can be pinned")
        try:
            self.get_page_type(mfn, type_)
        except HypercallError as err:
            self.put_page(mfn)
            raise fail(err.errno, f"pinning mfn {mfn:#x} as {type_.label}: {err.why}") from None
        pi = self.page(mfn)
        if pi.pinned:
            self.put_page_and_type(mfn)
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} already pinned")
        pi.pinned = True
        self._emit(PageTypeEvent.pinned, mfn, f"mfn {mfn:#x} pinned as {type_.label}")

    def unpin(self, mfn: int) -> None:
        """MMUEXT_UNPIN_TABLE: clear the pin bit and drop its references."""
        self.get_page_from_mfn(mfn, "only the domain's frames can be unpinned")
        pi = self.page(mfn)
        if not pi.pinned:
            self.put_page(mfn)
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} not pinned")
        pi.pinned = False
        self._emit(PageTypeEvent.unpinned, mfn, f"mfn {mfn:#x} ({pi.type.label}) unpinned")
        self.put_page_and_type(mfn)
        self.put_page(mfn)

    def pinned_mfns(self) -> list[int]:
        return [mfn for mfn, pi in sorted(self._pages.items()) if pi.pinned]

    def new_baseptr(self, vcpu_id: int, mfn: int) -> int | None:
        """new_guest_cr3() (compat): the L3 goes into Xen's L4 slot 0 for this vcpu,
        taking an L3 type reference; the old one is dropped.  Returns the old MFN."""
        old = self.vcpu_cr3[vcpu_id]
        if old == mfn:
            return old
        self.get_page_and_type(mfn, PageType.l3, what="CR3 must be one of the domain's L3s")
        self.vcpu_cr3[vcpu_id] = mfn
        if old is not None:
            self.put_page_and_type(old)
        return old

    def release_baseptr(self, vcpu_id: int) -> None:
        """vcpu_destroy_pagetables(): drop the vcpu's CR3 reference (domain teardown)."""
        old = self.vcpu_cr3[vcpu_id]
        self.vcpu_cr3[vcpu_id] = None
        if old is not None:
            self.put_page_and_type(old)

    # -- the domain's memory (memory_op) -----------------------------------------------------
    def alloc_domheap_pages(self, order: int, address_bits: int = 0,
                            check_max: bool = True) -> int | None:
        """A naturally aligned extent of 2**order free frames for the domain, scrubbed,
        or None (over max_pages unless `check_max` is False, or no such extent)."""
        count = 1 << order
        if check_max and self.tot_pages + count > self.max_pages:
            return None
        limit = 1 << (address_bits - PAGE_SHIFT) if address_bits > PAGE_SHIFT else None
        free = set(self.free_mfns)
        for mfn in self.free_mfns:
            if mfn & (count - 1) or (limit is not None and mfn + count > limit):
                continue
            if all(mfn + k in free for k in range(count)):
                for k in range(count):
                    self.free_mfns.remove(mfn + k)
                    self._owner[mfn + k] = Owner.domain
                    self._pages.pop(mfn + k, None)
                    self.memory.zero_frame(mfn + k)
                self.tot_pages += count
                return mfn
        return None

    def guest_remove_page(self, mfn: int) -> None:
        """guest_remove_page(): drop the allocation reference; the frame is freed when
        its last reference goes (it may still be mapped or pinned until then)."""
        if not self.frame_valid(mfn):
            raise fail(Errno.EINVAL, f"d{self.domid} page number {mfn:#x} invalid")
        if not self.get_page(mfn):
            raise fail(Errno.ENXIO, f"Bad page free: {self.describe(mfn)}, not d{self.domid}'s")
        pi = self.page(mfn)
        if pi.allocated:
            pi.allocated = False
            self.put_page(mfn)
        self.put_page(mfn)

    def steal_refusal(self, mfn: int) -> str | None:
        """Why steal_page() would refuse `mfn` (XENMEM_exchange's input frames): it must
        be the domain's, allocated, and referenced by nothing but that allocation (no
        mapping, type, pin or grant).  None when it can be taken."""
        if not self.frame_valid(mfn):
            return f"mfn {mfn:#x} is outside machine RAM"
        pi = self.peek(mfn)
        if pi.owner is not Owner.domain or pi.xen_heap:
            return self.not_ours(mfn) if pi.owner is not Owner.domain else (
                f"mfn {mfn:#x} is a Xen heap page shared with d{self.domid}")
        if not pi.allocated or pi.count != 1 or pi.type_count or pi.pinned:
            return (f"{self.describe(mfn)}: it has {pi.count} references"
                    + (f" and {pi.type_count} type references" if pi.type_count else "")
                    + (", pinned" if pi.pinned else "")
                    + " (only the allocation reference may remain)")
        return None

    def release_stolen(self, mfn: int) -> None:
        """Drop the allocation reference of a frame steal_refusal() accepted: it goes
        back to the heap, its M2P entry invalidated."""
        self.m2p_set(mfn, INVALID_M2P_ENTRY)
        pi = self.page(mfn)
        pi.allocated = False
        self.put_page(mfn)

    # -- invariant ----------------------------------------------------------------------------
    def writable_pagetable_mappings(self) -> list[Violation]:
        """Every present RW entry, in a validated L1, of a frame typed as a pagetable or
        descriptor page, and every writable linear L2 entry.  Always empty on Xen."""
        out: list[Violation] = []
        for table, pi in list(self._pages.items()):
            if not pi.validated or pi.type_count == 0:
                continue
            if pi.type is PageType.l1:
                for i, pte in enumerate(self.entries(table)):
                    if pte & (PTE_P | PTE_RW) != (PTE_P | PTE_RW):
                        continue
                    target = pte_mfn(pte)
                    if not self.frame_valid(target):
                        continue
                    tp = self.peek(target)
                    if tp.type in PROTECTED_TYPES and (tp.type_count or tp.validated):
                        out.append(Violation(table, "L1", i, pte, target, tp.type.label,
                                             f"{self.describe(target)} but L1 mfn {table:#x} "
                                             f"slot {i} maps it writable"))
                    elif tp.type is not PageType.writable or tp.type_count == 0:
                        out.append(Violation(table, "L1", i, pte, target, tp.type.label,
                                             f"L1 mfn {table:#x} slot {i} maps mfn {target:#x} "
                                             "writable without a writable type reference"))
            elif pi.type is PageType.l2:
                last = XEN_FIRST_L2_SLOT if pi.pae_xen_l2 else ENTRIES
                entries = self.entries(table)
                for i in range(last):
                    pte = entries[i]
                    if pte & (PTE_P | PTE_RW) != (PTE_P | PTE_RW):
                        continue
                    target = pte_mfn(pte)
                    if self.frame_valid(target) and self.peek(target).type is PageType.l2:
                        out.append(Violation(table, "L2", i, pte, target, "L2",
                                             f"L2 mfn {table:#x} slot {i} is a writable linear "
                                             f"mapping of L2 mfn {target:#x}"))
        return out


class MmInternalError(Exception):
    """The frame table's own bookkeeping is inconsistent (a pvdbg bug)."""
