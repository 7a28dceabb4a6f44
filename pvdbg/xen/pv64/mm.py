"""Frame types and 4-level pagetable rules for a 64-bit PV domain (Xen's mm.c for x86_64).

Every guest frame has a type (none, writable, L1..L4, descriptor table) with a count of
references holding it.  A frame becomes an Ln table when something takes that type: its
present entries are validated (each L1 entry's target must be a frame the domain may
map, writable only if it is not a pagetable or descriptor page; each higher entry takes
the next-lower table type of its target), Xen ORs _PAGE_USER into every entry (a 64-bit
PV kernel runs at CPL 3) and Xen's own L4 slots (256..271) are filled with the M2P and
Xen's area.  Dropping the last reference devalidates the table.  Pinning holds one type
reference; NEW_BASEPTR / NEW_USER_BASEPTR hold one each for the vcpu.
ABI: xen/arch/x86/mm.c (get_page_type, alloc_lN_table, mod_lN_entry, new_guest_cr3),
xen/arch/x86/pv/mm.h (adjust_guest_l*e).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ...machine.memory import PAGE_SHIFT
from ..constants import Errno
from ..hypercalls import fail
from .layout import (PTE_ADDR_MASK, PTE_P, PTE_PSE, PTE_RW, PTE_U, XEN_FIRST_L4_SLOT,
                     XEN_LAST_L4_SLOT)


class PageType(IntEnum):
    none = 0
    l1 = 1
    l2 = 2
    l3 = 3
    l4 = 4
    writable = 5
    seg_desc = 6


PT_TYPES = (PageType.l1, PageType.l2, PageType.l3, PageType.l4)
# Flags Xen refuses in guest entries (x86_64 L*_DISALLOW_MASK): bits 8..11 of L2..L4
# entries other than the available ones, PSE above L1.
_L1_DISALLOW = 0
_UPPER_DISALLOW = PTE_PSE


@dataclass
class Validation:
    """Statistics for tests and views."""
    validated: int = 0
    devalidated: int = 0


class MemoryManager64:
    """The frame table of one 64-bit domain over `hv.memory`."""

    def __init__(self, hv) -> None:
        self.hv = hv
        self.memory = hv.memory
        built = hv.built
        nr = built.memory.nr_frames if hasattr(built.memory, "nr_frames") else \
            built.memory.size >> PAGE_SHIFT
        self.nr_frames = nr
        self.type = bytearray(nr)
        self.count = [0] * nr
        self.pinned: set[int] = set()
        self.owned = bytearray(nr)           # 1: the guest's frame
        for mfn in built.p2m:
            self.owned[mfn] = 1
        self.shared_xen = {built.shared_info_mfn}   # Xen frames the guest may map
        self.xen_l4 = dict(built.xen_l4_entries)
        self.stats = Validation()

    # -- ownership -----------------------------------------------------------------
    def may_map(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames and (self.owned[mfn] or mfn in self.shared_xen)

    def give(self, mfn: int) -> None:
        """A frame becomes the guest's (populate_physmap, ...)."""
        self.owned[mfn] = 1

    def take_back(self, mfn: int) -> None:
        if self.count[mfn]:
            raise fail(Errno.EBUSY, f"mfn {mfn:#x} is still in use as {self.type_name(mfn)}")
        self.owned[mfn] = 0

    def owner(self, mfn: int):
        """The 32-bit engine's Owner for `mfn` (grant tables and views ask this)."""
        from ..mm import Owner
        if 0 <= mfn < self.nr_frames and self.owned[mfn]:
            return Owner.domain
        if mfn in self.hv.built.free_mfns:
            return Owner.free
        return Owner.xen

    def share_xen_page_with_guest(self, mfn: int) -> None:
        """A Xen frame the guest may map (grant table frames, as shared_info)."""
        self.shared_xen.add(mfn)

    # -- general references (get_page / put_page), as grant_table.py asks for them ------
    def frame_valid(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames

    def get_page(self, mfn: int) -> bool:
        """get_page(): whether `mfn` is allocated to the domain.  This frame table counts
        type references only; a frame leaves the domain through take_back, which refuses
        while a type reference holds it, and never during one hypercall."""
        return self.frame_valid(mfn) and bool(self.owned[mfn])

    def put_page(self, mfn: int) -> None:
        """The end of a get_page() use: no general count to drop (see get_page)."""

    def not_ours(self, mfn: int) -> str:
        """Why `mfn` cannot be referenced by the domain, in one phrase."""
        if not self.frame_valid(mfn):
            return f"mfn {mfn:#x} is outside machine RAM"
        if mfn in self.hv.built.free_mfns:
            return f"mfn {mfn:#x} is a free frame, not allocated to the domain"
        if not self.owned[mfn]:
            return f"mfn {mfn:#x} belongs to Xen, not to the domain"
        return f"mfn {mfn:#x} is the domain's"

    def describe(self, mfn: int) -> str:
        """'mfn 0x1a2b is the domain's (type l1, count 2)'."""
        if not self.frame_valid(mfn) or not self.owned[mfn]:
            return self.not_ours(mfn)
        return f"mfn {mfn:#x} is the domain's (type {self.type_name(mfn)}, count {self.count[mfn]})"

    def type_name(self, mfn: int) -> str:
        return PageType(self.type[mfn]).name if self.count[mfn] else "none"

    # -- types -----------------------------------------------------------------------
    def get_page_type(self, mfn: int, ptype: PageType) -> None:
        if not self.may_map(mfn):
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is not the domain's")
        if mfn in self.shared_xen and ptype != PageType.writable:
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is Xen's shared page")
        if self.count[mfn] == 0:
            if ptype in PT_TYPES:
                self._validate(mfn, int(ptype))
            self.type[mfn] = ptype
        elif self.type[mfn] != ptype:
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is in use as {self.type_name(mfn)}, "
                       f"not {ptype.name}")
        self.count[mfn] += 1

    def put_page_type(self, mfn: int) -> None:
        if self.count[mfn] <= 0:
            return
        self.count[mfn] -= 1
        if self.count[mfn] == 0:
            ptype = self.type[mfn]
            self.type[mfn] = PageType.none
            if ptype in PT_TYPES:
                self._devalidate(mfn, ptype)

    def _entries(self, mfn: int) -> list[int]:
        view = self.memory.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT]
        return list(view.cast("Q"))

    def _is_guest_slot(self, level: int, index: int) -> bool:
        return not (level == 4 and XEN_FIRST_L4_SLOT <= index <= XEN_LAST_L4_SLOT)

    def get_entry_ref(self, level: int, entry: int) -> None:
        """Take what a present entry at `level` needs (get_page_from_lNe)."""
        target = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
        if level == 1:
            if not self.may_map(target):
                raise fail(Errno.EINVAL, f"L1 entry {entry:#x} maps mfn {target:#x}, "
                           "not the domain's")
            if entry & PTE_RW:
                self.get_page_type(target, PageType.writable)
            return
        if entry & _UPPER_DISALLOW:
            raise fail(Errno.EINVAL, f"L{level} entry {entry:#x}: superpages are not allowed")
        self.get_page_type(target, PageType(level - 1))

    def put_entry_ref(self, level: int, entry: int) -> None:
        target = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
        if level == 1:
            if entry & PTE_RW and 0 <= target < self.nr_frames:
                self.put_page_type(target)
            return
        self.put_page_type(target)

    def _validate(self, mfn: int, level: int) -> None:
        base = mfn << PAGE_SHIFT
        entries = self._entries(mfn)
        taken: list[int] = []
        try:
            for index, entry in enumerate(entries):
                if not self._is_guest_slot(level, index):
                    continue
                if entry & PTE_P:
                    self.get_entry_ref(level, entry)
                    taken.append(index)
                    if not entry & PTE_U:
                        self.memory.write_u64(base + index * 8, entry | PTE_U)
        except Exception:
            for index in taken:
                self.put_entry_ref(level, entries[index])
            raise
        if level == 4:
            for slot in range(XEN_FIRST_L4_SLOT, XEN_LAST_L4_SLOT + 1):
                self.memory.write_u64(base + slot * 8, self.xen_l4.get(slot, 0))
        self.stats.validated += 1

    def _devalidate(self, mfn: int, level: int) -> None:
        for index, entry in enumerate(self._entries(mfn)):
            if entry & PTE_P and self._is_guest_slot(level, index):
                self.put_entry_ref(level, entry)
        self.stats.devalidated += 1

    # -- operations --------------------------------------------------------------------
    def pin(self, mfn: int, level: int) -> None:
        if mfn in self.pinned:
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is already pinned")
        self.get_page_type(mfn, PageType(level))
        self.pinned.add(mfn)

    def unpin(self, mfn: int) -> None:
        if mfn not in self.pinned:
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is not pinned")
        self.pinned.discard(mfn)
        self.put_page_type(mfn)

    def mod_entry(self, entry_maddr: int, new: int) -> None:
        """Write `new` at `entry_maddr` (an entry of a table of the domain), with Xen's
        checks and reference moves (mod_lN_entry); a plain write for a writable page."""
        mfn = entry_maddr >> PAGE_SHIFT
        if not self.may_map(mfn) or mfn in self.shared_xen:
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is not the domain's")
        index = (entry_maddr & 0xFFF) >> 3
        entry_maddr &= ~7
        if self.count[mfn] == 0 or self.type[mfn] not in PT_TYPES:
            if self.count[mfn] and self.type[mfn] == PageType.seg_desc:
                raise fail(Errno.EINVAL, f"mfn {mfn:#x} is a descriptor table")
            self.memory.write_u64(entry_maddr, new)
            return
        level = self.type[mfn]
        if not self._is_guest_slot(level, index):
            raise fail(Errno.EINVAL, f"L4 slot {index} belongs to Xen")
        old = self.memory.read_u64(entry_maddr)
        if new & PTE_P:
            new |= PTE_U
            self.get_entry_ref(level, new)
        self.memory.write_u64(entry_maddr, new)
        if old & PTE_P:
            self.put_entry_ref(level, old)

    def boot(self, l4_mfn: int) -> None:
        """libxc pins the initial L4; it is vcpu0's kernel pagetable."""
        self.pin(l4_mfn, 4)
        self.get_page_type(l4_mfn, PageType.l4)
