"""The hypervisor's safety invariants, checked against its own state.

What a PV guest can never achieve on Xen, whatever it passes to hypercalls:

* a writable mapping of a pagetable or descriptor frame (`mm_query.writable_pagetable_mappings`);
* type and general reference counts that differ from what the validated pagetables,
  pins, CR3s, GDT/LDT frames, vcpu_info registrations and Xen-heap shares imply (a
  recount: the frame table's own counters are only compared, never trusted);
* a guest mapping of the hypervisor hole: a guest pagetable entry naming one of Xen's
  frames or a frame outside RAM, an L2 in L3 slot 3 whose slots 428..511 are not Xen's,
  an L3 reusing a slot-3 L2, or a GDT window page that maps anything but the vcpu's GDT
  frames read-only.

`problems(hv)` checks everything from scratch.  `InvariantChecker` is for checking after
every hypercall: it keeps the references each pagetable holds (recomputed only when the
table's bytes change) and re-verifies only the frames whose page_info the hypervisor
touched (`MemoryManager.page` is the only way to change one) or whose references
changed, and runs the exact from-scratch check every `full_every` calls.
ABI: xen/arch/x86/mm.c (get_page_from_l*e, _get_page_type), XEN-PV-ABI.md 1.1, 4.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Callable

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE
from .constants import XEN_FIRST_L2_SLOT
from .entry import AREA_VA, GDT_WINDOW_PAGES, gdt_window_va
from .mm import (ENTRIES, L3_GUEST_SLOTS, PROTECTED_TYPES, PTE_P, PTE_RW, MemoryManager,
                 Owner, PageInfo, PageType)
from .mm_query import writable_pagetable_mappings

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

_ADDR = 0x000FFFFFFFFFF000
_PAGETABLE_TYPES = frozenset({PageType.l1, PageType.l2, PageType.l3, PageType.l4})
GUEST_GDT_PAGES = GDT_WINDOW_PAGES - 2           # the window's pages 0..13


class TableRefs:
    """The references one validated pagetable holds, from its bytes."""
    __slots__ = ("key", "general", "typed", "rw", "rw_l2", "targets")

    def __init__(self, key: tuple[PageType, bool, bytes], general: Counter, typed: Counter,
                 rw: Counter, rw_l2: tuple[int, ...]) -> None:
        self.key = key
        self.general = general       # general references per target frame
        self.typed = typed           # type references per target frame
        self.rw = rw                 # L1: writable mappings per target frame
        self.rw_l2 = rw_l2           # L2: targets of writable entries (never an L2)
        self.targets = tuple(general)


def table_refs(mm: MemoryManager, mfn: int, type_: PageType, pae_xen_l2: bool,
               raw: bytes) -> TableRefs:
    """What Xen's get_page_from_l*e took for each present entry of table `mfn`."""
    entries = mm.entries(mfn)
    general: Counter = Counter()
    typed: Counter = Counter()
    rw: Counter = Counter()
    rw_l2: list[int] = []
    if type_ is PageType.l1:
        for pte in entries:
            if pte & PTE_P:
                target = (pte & _ADDR) >> PAGE_SHIFT
                if mm.frame_valid(target):
                    general[target] += 1
                    if pte & PTE_RW:
                        typed[target] += 1
                        rw[target] += 1
    else:
        last = L3_GUEST_SLOTS if type_ is PageType.l3 else (
            XEN_FIRST_L2_SLOT if pae_xen_l2 else ENTRIES)
        for pte in entries[:last]:
            if pte & PTE_P:
                target = (pte & _ADDR) >> PAGE_SHIFT
                if target != mfn:
                    general[target] += 1
                    typed[target] += 1
                    if type_ is PageType.l2 and pte & PTE_RW:
                        rw_l2.append(target)
    return TableRefs((type_, pae_xen_l2, raw), general, typed, rw, tuple(rw_l2))


def _is_table(pi: PageInfo) -> bool:
    return pi.validated and pi.type_count > 0 and pi.type in _PAGETABLE_TYPES


def _holders(hv: "Hypervisor") -> Counter:
    """References (type and general alike) held outside the pagetables: CR3s, GDT
    frames, LDT shadow pages, registered vcpu_info frames."""
    held: Counter = Counter()
    held.update(cr3 for cr3 in hv.mm.vcpu_cr3 if cr3 is not None)
    for state in hv.descriptors.vcpus:
        held.update(state.gdt_frames)
        held.update(state.ldt_shadow.values())
    held.update(hv.vcpu_info_maddr(v) >> PAGE_SHIFT for v in hv.vcpu_ops.vcpu_info_registered)
    return held


def _grant_holders(hv: "Hypervisor") -> tuple[Counter, Counter]:
    """(general, type) references grant mappings hold beyond their PTEs (device maps)."""
    table = getattr(hv, "grant_table", None)
    if table is None or not getattr(table, "maptrack", None):
        return Counter(), Counter()
    return table.held_references()


def _frame_problems(mm: MemoryManager, mfn: int, want_type: int, want_general: int,
                    rw: int, rw_l2: int) -> list[str]:
    if not mm.frame_valid(mfn):
        return [f"mfn {mfn:#x} is referenced but outside machine RAM"]
    pi = mm.peek(mfn)
    out = []
    if pi.xen_heap:
        want_type += 1
    if pi.pinned:
        want_type += 1
        want_general += 1
    if pi.allocated:
        want_general += 1
    if pi.type_count != want_type:
        out.append(f"mfn {mfn:#x} ({pi.type.label}): type count {pi.type_count}, the tables "
                   f"imply {want_type}")
    if pi.owner is Owner.domain:
        if pi.count != want_general:
            out.append(f"mfn {mfn:#x} ({pi.type.label}): reference count {pi.count}, the "
                       f"tables imply {want_general}")
    elif want_general:
        out.append(f"mfn {mfn:#x} is {pi.owner.name}'s but holds {want_general} reference(s) "
                   "from the domain")
    if rw:
        if pi.type in PROTECTED_TYPES and (pi.type_count or pi.validated):
            out.append(f"writable mapping: {mm.describe(mfn)} but {rw} L1 entr"
                       f"{'y maps' if rw == 1 else 'ies map'} it writable")
        elif pi.type is not PageType.writable or pi.type_count == 0:
            out.append(f"writable mapping: mfn {mfn:#x} is mapped writable {rw} time(s) "
                       "without a writable type reference")
    if rw_l2 and pi.type is PageType.l2:
        out.append(f"writable mapping: L2 mfn {mfn:#x} is mapped by a writable linear L2 entry")
    return out


def _target_problems(mm: MemoryManager, mfn: int, label: str, refs: TableRefs) -> list[str]:
    out = []
    for target in refs.targets:
        if not mm.frame_valid(target):
            out.append(f"{label} mfn {mfn:#x} maps mfn {target:#x}, outside machine RAM")
        elif mm.owner(target) is Owner.xen:
            out.append(f"{label} mfn {mfn:#x} maps mfn {target:#x}, a frame of Xen "
                       "(the hypervisor hole)")
    return out


def recount_problems(hv: "Hypervisor") -> list[str]:
    """Every frame's counts against a recount from scratch, and the targets of every
    validated pagetable."""
    mm = hv.mm
    want_type: Counter = Counter()
    want_general: Counter = Counter()
    rw: Counter = Counter()
    rw_l2: Counter = Counter()
    out: list[str] = []
    for mfn, pi in list(mm._pages.items()):
        if not _is_table(pi):
            continue
        base = mfn << PAGE_SHIFT
        refs = table_refs(mm, mfn, pi.type, pi.pae_xen_l2,
                          bytes(mm.memory.view[base:base + PAGE_SIZE]))
        want_type.update(refs.typed)
        want_general.update(refs.general)
        rw.update(refs.rw)
        rw_l2.update(refs.rw_l2)
        out += _target_problems(mm, mfn, pi.type.label, refs)
    held = _holders(hv)
    want_type.update(held)
    want_general.update(held)
    grant_general, grant_typed = _grant_holders(hv)
    want_general.update(grant_general)
    want_type.update(grant_typed)
    for mfn in sorted(set(mm._pages) | set(want_type) | set(want_general)):
        out += _frame_problems(mm, mfn, want_type[mfn], want_general[mfn], rw[mfn], rw_l2[mfn])
    return out


def hole_problems(hv: "Hypervisor") -> list[str]:
    """The hypervisor hole stays Xen's: the L2 in slot 3 of every loaded L3 carries
    Xen's entries in slots 428..511, slots 0..2 never reuse such an L2, and the GDT
    windows map only the vcpus' GDT frames, read-only."""
    mm = hv.mm
    out: list[str] = []
    xen_slots = tuple(mm.xen_l2_entries.get(slot, 0) for slot in range(XEN_FIRST_L2_SLOT, ENTRIES))
    for vcpu, cr3 in enumerate(mm.vcpu_cr3):
        if cr3 is None:
            continue
        l3 = mm.entries(cr3)
        if not l3[3] & PTE_P:
            out.append(f"vcpu{vcpu}: L3 mfn {cr3:#x} has no slot 3 (the hole's L2)")
            continue
        l2 = (l3[3] & _ADDR) >> PAGE_SHIFT
        if not mm.frame_valid(l2):
            out.append(f"vcpu{vcpu}: slot 3 of L3 mfn {cr3:#x} is outside machine RAM")
            continue
        pi = mm.peek(l2)
        if not (pi.type is PageType.l2 and pi.pae_xen_l2 and pi.validated):
            out.append(f"vcpu{vcpu}: slot 3 of L3 mfn {cr3:#x} is {mm.describe(l2)}, not a "
                       "validated L2|pae_xen_l2")
        if mm.entries(l2)[XEN_FIRST_L2_SLOT:] != xen_slots:
            out.append(f"vcpu{vcpu}: L2 mfn {l2:#x} slots {XEN_FIRST_L2_SLOT}..511 are not "
                       "Xen's entries")
        for slot in range(3):
            if l3[slot] & PTE_P:
                other = (l3[slot] & _ADDR) >> PAGE_SHIFT
                if mm.frame_valid(other) and mm.peek(other).pae_xen_l2:
                    out.append(f"vcpu{vcpu}: L3 mfn {cr3:#x} slot {slot} reuses the "
                               f"L2|pae_xen_l2 mfn {other:#x}")
    area = hv.area
    for vcpu, state in enumerate(hv.descriptors.vcpus):
        first = (gdt_window_va(vcpu) - AREA_VA) >> PAGE_SHIFT
        for page in range(GUEST_GDT_PAGES):
            pte = mm.memory.read_u64((area.l1_mfn << PAGE_SHIFT) + (first + page) * 8)
            mfn = (pte & _ADDR) >> PAGE_SHIFT
            allowed = state.gdt_frames[page] if page < len(state.gdt_frames) else area.zero_mfn
            if pte & PTE_RW or mfn != allowed:
                out.append(f"vcpu{vcpu}: GDT window page {page} maps mfn {mfn:#x} "
                           f"({pte:#x}), expected mfn {allowed:#x} read-only")
    return out


def _internal_error(hv: "Hypervisor") -> list[str]:
    err = hv.internal_error
    return [] if err is None else [f"internal hypervisor error: {type(err).__name__}: {err}"]


def problems(hv: "Hypervisor") -> list[str]:
    """All invariant violations of `hv` right now, checked from scratch (empty on a
    correct hypervisor)."""
    out = [f"writable mapping: {v.reason}" for v in writable_pagetable_mappings(hv)]
    return out + recount_problems(hv) + hole_problems(hv) + _internal_error(hv)


class InvariantChecker:
    """`problems()` after every hypercall, incrementally (see the module docstring); the
    exact `problems(hv)` runs every `full_every` calls (1: always)."""

    def __init__(self, hv: "Hypervisor", full_every: int = 1) -> None:
        self.hv = hv
        self.full_every = max(1, full_every)
        self.calls = 0
        self.full_checks = 0
        self._tables: dict[int, TableRefs] = {}
        self._general: Counter = Counter()
        self._typed: Counter = Counter()
        self._rw: Counter = Counter()
        self._rw_l2: Counter = Counter()
        self._held: Counter = Counter()
        self._grant_held: tuple[Counter, Counter] = (Counter(), Counter())
        self._touched: set[int] = set()
        self._watch_page(hv.mm)
        self._rebuild()

    def _watch_page(self, mm: MemoryManager) -> None:
        """Record every frame whose page_info the hypervisor fetches for a change."""
        page: Callable[[int], PageInfo] = mm.page
        touched = self._touched

        def watched_page(mfn: int) -> PageInfo:
            touched.add(mfn)
            return page(mfn)

        mm.page = watched_page          # type: ignore[method-assign]

    def _rebuild(self) -> None:
        mm = self.hv.mm
        self._tables.clear()
        for counter in (self._general, self._typed, self._rw, self._rw_l2):
            counter.clear()
        for mfn, pi in list(mm._pages.items()):
            if _is_table(pi):
                self._add_table(mfn, self._refs(mfn, pi))
        self._held = _holders(self.hv)
        self._grant_held = _grant_holders(self.hv)
        self._touched.clear()

    def _refs(self, mfn: int, pi: PageInfo) -> TableRefs:
        base = mfn << PAGE_SHIFT
        raw = bytes(self.hv.mm.memory.view[base:base + PAGE_SIZE])
        cached = self._tables.get(mfn)
        if cached is not None and cached.key == (pi.type, pi.pae_xen_l2, raw):
            return cached
        return table_refs(self.hv.mm, mfn, pi.type, pi.pae_xen_l2, raw)

    def _add_table(self, mfn: int, refs: TableRefs) -> None:
        self._tables[mfn] = refs
        self._general.update(refs.general)
        self._typed.update(refs.typed)
        self._rw.update(refs.rw)
        self._rw_l2.update(refs.rw_l2)

    def _drop_table(self, mfn: int) -> TableRefs:
        refs = self._tables.pop(mfn)
        self._general.subtract(refs.general)
        self._typed.subtract(refs.typed)
        self._rw.subtract(refs.rw)
        self._rw_l2.subtract(refs.rw_l2)
        return refs

    def problems(self) -> list[str]:
        self.calls += 1
        if self.calls % self.full_every == 0:
            self.full_checks += 1
            out = problems(self.hv)
            self._rebuild()
            return out
        mm = self.hv.mm
        view = mm.memory.view
        out: list[str] = []
        touched = set(self._touched)
        self._touched.clear()
        verify = set(touched)
        for mfn in list(self._tables) + [m for m in touched if m not in self._tables]:
            pi = mm.peek(mfn)
            old = self._tables.get(mfn)
            if not _is_table(pi):
                if old is not None:
                    verify.update(self._drop_table(mfn).targets)
                continue
            if old is not None:
                base = mfn << PAGE_SHIFT
                if (old.key[0] is pi.type and old.key[1] == pi.pae_xen_l2
                        and bytes(view[base:base + PAGE_SIZE]) == old.key[2]):
                    continue
                verify.update(self._drop_table(mfn).targets)
            refs = self._refs(mfn, pi)
            self._add_table(mfn, refs)
            verify.update(refs.targets)
            out += _target_problems(mm, mfn, pi.type.label, refs)
        held = _holders(self.hv)
        if held != self._held:
            verify.update(held)
            verify.update(self._held)
            self._held = held
        grant_general, grant_typed = grant_held = _grant_holders(self.hv)
        if grant_held != self._grant_held:
            verify.update(grant_general, self._grant_held[0])
            self._grant_held = grant_held
        for mfn in sorted(verify):
            extra = held[mfn]
            out += _frame_problems(mm, mfn, self._typed[mfn] + extra + grant_typed[mfn],
                                   self._general[mfn] + extra + grant_general[mfn],
                                   self._rw[mfn], self._rw_l2[mfn])
        return out + hole_problems(self.hv) + _internal_error(self.hv)
