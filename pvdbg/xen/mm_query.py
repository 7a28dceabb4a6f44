"""Read-only views of Xen's memory-management state for the front ends (REPL, GDB stub,
trace tools): what a frame is and who references it, every pagetable entry and virtual
address that maps it (RW or RO), a guest-virtual walk annotated with frame types, the
pinned tables, and the invariant "no writable mapping of a pagetable or descriptor
frame", which is empty on a correct hypervisor.  Data only; rendering is elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..machine.memory import PAGE_SHIFT
from ..machine.paging import Walk, pte_flags_text, walk_pae
from .constants import HYPERVISOR_VIRT_START_PAE, XEN_FIRST_L2_SLOT
from .mm import (INVALID_M2P_ENTRY, PROTECTED_TYPES, PTE_NX, PTE_P, PTE_PSE, PTE_RW, PTE_U,
                 MemoryManager, Owner, PageType, Violation, pte_mfn)

if TYPE_CHECKING:
    from .hypervisor import Hypervisor


class MmQueryError(ValueError):
    """A query names something that does not exist (one line)."""


def _mm64(hv: "Hypervisor"):
    """mm_query64 (the same queries on pv64/mm.py's frame table) for a 64-bit domain,
    else None."""
    if getattr(hv, "guest_bits", 32) == 64:
        from . import mm_query64
        return mm_query64
    return None


def touched_frames(hv: "Hypervisor") -> list[int]:
    """Frames the frame table has given a type or a reference (ascending mfn)."""
    if _mm64(hv) is not None:
        return [mfn for mfn, count in enumerate(hv.mm.count) if count]
    return list(hv.mm.touched_frames())


def table_entries(hv: "Hypervisor", mfn: int) -> list[int]:
    """The 512 64-bit entries of pagetable frame `mfn`."""
    if (wide := _mm64(hv)) is not None:
        return wide.table_entries(hv, mfn)
    return list(hv.mm.entries(mfn))


def debugger_walk(hv: "Hypervisor", cr3: int, guest_va: int) -> Walk:
    """The MMU's walk of `guest_va` through the tables at machine address `cr3`, as the
    debugger reads memory: 3-level PAE for 32-bit guests, 4-level for 64-bit ones (no
    access checks). Raises PageWalkError."""
    if getattr(hv, "guest_bits", 32) == 64:
        from .pv64.paging import walk_4level
        return walk_4level(hv.memory, cr3, guest_va)
    return walk_pae(hv.memory, cr3, guest_va & 0xFFFFFFFF)


@dataclass(frozen=True)
class FrameInfo:
    """One machine frame as Xen's frame table sees it."""
    mfn: int
    pfn: int | None                 # from the M2P
    owner: str                      # "d1", "xen" or "free"
    type: str                       # "none", "L1", "L2", "L3", "seg_desc", "writable", ...
    type_count: int
    ref_count: int                  # general references, including the allocation one
    allocated: bool
    validated: bool
    pinned: bool
    pae_xen_l2: bool
    linear_count: int               # >0 holds linear entries, <0 mapped as a linear table
    xen_heap: bool
    cr3_of: tuple[int, ...]         # vcpus whose CR3 it is
    gdt_of: tuple[int, ...]         # vcpus whose GDT includes it
    ldt_of: tuple[int, ...]         # vcpus whose LDT shadow maps it


@dataclass(frozen=True)
class PteRef:
    """Something that references a frame: a pagetable entry, a CR3, a GDT/LDT slot."""
    table_mfn: int | None           # None for CR3 (Xen's per-vcpu L4 slot 0)
    table_type: str                 # "L1", "L2", "L3", "CR3", "GDT", "LDT"
    index: int                      # entry index, vcpu id (CR3) or page (GDT/LDT)
    entry: int                      # the entry's value (0 for CR3/GDT/LDT)
    writable: bool


@dataclass(frozen=True)
class VaMapping:
    """A virtual address of one vcpu's current address space that maps a frame."""
    va: int
    writable: bool                  # RW at L2 and L1
    user: bool
    pte_maddr: int                  # machine address of the L1 entry
    pte: int
    xen: bool                       # inside the hypervisor hole (Xen's own slots)


@dataclass(frozen=True)
class WalkLevel:
    level: int                      # 3, 2, 1
    table_mfn: int
    table_type: str
    index: int
    entry: int
    flags: str                      # "P RW U A D NX"
    target_mfn: int | None          # None if not present
    target_type: str | None


@dataclass(frozen=True)
class VaWalk:
    """A guest-virtual address resolved through one vcpu's pagetables."""
    va: int
    cr3_mfn: int
    levels: tuple[WalkLevel, ...]
    maddr: int | None               # None if the walk stopped
    writable: bool
    user: bool
    nx: bool
    stopped: str | None             # why the walk stopped, or None
    frame: FrameInfo | None


def frame_info(hv: "Hypervisor", mfn: int) -> FrameInfo:
    """Type, counts, flags and users of machine frame `mfn`."""
    if (wide := _mm64(hv)) is not None:
        return wide.frame_info(hv, mfn)
    mm = hv.mm
    if not mm.frame_valid(mfn):
        raise MmQueryError(f"mfn {mfn:#x} is outside machine RAM "
                           f"({mm.memory.nr_frames} frames)")
    pi = mm.peek(mfn)
    pfn = mm.m2p_get(mfn) if pi.owner is Owner.domain else INVALID_M2P_ENTRY
    owner = {Owner.domain: f"d{mm.domid}", Owner.xen: "xen", Owner.free: "free"}[pi.owner]
    tables = hv.descriptors.vcpus
    return FrameInfo(
        mfn=mfn, pfn=None if pfn == INVALID_M2P_ENTRY else pfn, owner=owner,
        type=pi.type.label, type_count=pi.type_count, ref_count=pi.count,
        allocated=pi.allocated, validated=pi.validated, pinned=pi.pinned,
        pae_xen_l2=pi.pae_xen_l2, linear_count=pi.linear, xen_heap=pi.xen_heap,
        cr3_of=tuple(v for v, cr3 in enumerate(mm.vcpu_cr3) if cr3 == mfn),
        gdt_of=tuple(v for v, st in enumerate(tables) if mfn in st.gdt_frames),
        ldt_of=tuple(v for v, st in enumerate(tables) if mfn in st.ldt_shadow.values()))


def _validated_tables(mm: MemoryManager) -> list[tuple[int, PageType, bool]]:
    out = []
    for mfn in mm.touched_frames():
        pi = mm.peek(mfn)
        if pi.validated and pi.type_count and pi.type.is_pagetable:
            out.append((mfn, pi.type, pi.pae_xen_l2))
    return out


def frame_mappings(hv: "Hypervisor", mfn: int) -> list[PteRef]:
    """Every reference to `mfn`: entries of validated pagetables (RW or RO), CR3s, and
    GDT/LDT slots."""
    if (wide := _mm64(hv)) is not None:
        return wide.frame_mappings(hv, mfn)
    mm = hv.mm
    refs: list[PteRef] = []
    for table, type_, pae in _validated_tables(mm):
        entries = mm.entries(table)
        last = XEN_FIRST_L2_SLOT if pae else len(entries)
        if type_ is PageType.l3:
            last = 4
        for i in range(last):
            pte = entries[i]
            if pte & PTE_P and pte_mfn(pte) == mfn:
                refs.append(PteRef(table, type_.label, i, pte, bool(pte & PTE_RW)))
    for vcpu, cr3 in enumerate(mm.vcpu_cr3):
        if cr3 == mfn:
            refs.append(PteRef(None, "CR3", vcpu, 0, False))
    for vcpu, state in enumerate(hv.descriptors.vcpus):
        for page, gdt_mfn in enumerate(state.gdt_frames):
            if gdt_mfn == mfn:
                refs.append(PteRef(None, "GDT", page, 0, False))
        for page, ldt_mfn in sorted(state.ldt_shadow.items()):
            if ldt_mfn == mfn:
                refs.append(PteRef(None, "LDT", page, 0, False))
    return refs


def virtual_mappings(mm: MemoryManager, cr3_mfn: int | None, mfn: int) -> list[VaMapping]:
    """Every virtual address of the address space at `cr3_mfn` that maps `mfn`."""
    if cr3_mfn is None:
        return []
    out: list[VaMapping] = []
    for l3i, l3e in enumerate(mm.entries(cr3_mfn)[:4]):
        if not l3e & PTE_P or not mm.frame_valid(pte_mfn(l3e)):
            continue
        l2 = pte_mfn(l3e)
        for l2i, l2e in enumerate(mm.entries(l2)):
            if l2e & (PTE_P | PTE_PSE) != PTE_P or not mm.frame_valid(pte_mfn(l2e)):
                continue
            l1 = pte_mfn(l2e)
            for l1i, pte in enumerate(mm.entries(l1)):
                if pte & PTE_P and pte_mfn(pte) == mfn:
                    va = (l3i << 30) | (l2i << 21) | (l1i << 12)
                    out.append(VaMapping(
                        va=va, writable=bool(l2e & pte & PTE_RW), user=bool(l2e & pte & PTE_U),
                        pte_maddr=(l1 << PAGE_SHIFT) + l1i * 8, pte=pte,
                        xen=va >= HYPERVISOR_VIRT_START_PAE))
    return out


def frame_virtual_mappings(hv: "Hypervisor", mfn: int,
                           vcpu_id: int | None = None) -> list[VaMapping]:
    """`virtual_mappings` in the current address space of `vcpu_id` (default: current)."""
    if (wide := _mm64(hv)) is not None:
        return wide.frame_virtual_mappings(hv, mfn, vcpu_id)
    vcpu = hv.current.vcpu_id if vcpu_id is None else vcpu_id
    return virtual_mappings(hv.mm, hv.mm.vcpu_cr3[vcpu], mfn)


def walk(hv: "Hypervisor", va: int, vcpu_id: int | None = None,
         table_mfn: int | None = None) -> VaWalk:
    """Resolve `va` through the vcpu's pagetables (or the top-level table at `table_mfn`,
    e.g. one just pinned), naming each level's frame type."""
    if (wide := _mm64(hv)) is not None:
        return wide.walk(hv, va, vcpu_id, table_mfn)
    mm = hv.mm
    va &= 0xFFFFFFFF
    vcpu = hv.current.vcpu_id if vcpu_id is None else vcpu_id
    if not 0 <= vcpu < len(mm.vcpu_cr3):
        raise MmQueryError(f"no vcpu{vcpu} (the domain has {len(mm.vcpu_cr3)})")
    cr3 = mm.vcpu_cr3[vcpu] if table_mfn is None else table_mfn
    if table_mfn is not None and not mm.frame_valid(table_mfn):
        raise MmQueryError(f"mfn {table_mfn:#x} is outside machine RAM")
    if cr3 is None:
        raise MmQueryError(f"vcpu{vcpu} has no pagetable base")
    levels: list[WalkLevel] = []
    table = cr3
    writable = user = True
    nx = False
    for level, index in ((3, va >> 30), (2, (va >> 21) & 0x1FF), (1, (va >> 12) & 0x1FF)):
        entry = mm.read_entry(table, index)
        present = bool(entry & PTE_P)
        target = pte_mfn(entry) if present else None
        target_type = (mm.peek(target).type.label if target is not None and mm.frame_valid(target)
                       else None)
        levels.append(WalkLevel(level, table, mm.peek(table).type.label, index, entry,
                                pte_flags_text(entry), target, target_type))
        if not present:
            return VaWalk(va, cr3, tuple(levels), None, False, False, nx,
                          f"L{level} entry {index} not present", None)
        if not mm.frame_valid(target):
            return VaWalk(va, cr3, tuple(levels), None, False, False, nx,
                          f"L{level} entry {index} points outside RAM", None)
        if level < 3:
            writable &= bool(entry & PTE_RW)
            user &= bool(entry & PTE_U)
            nx |= bool(entry & PTE_NX)
        if level == 2 and entry & PTE_PSE:
            return VaWalk(va, cr3, tuple(levels), None, False, False, nx,
                          "L2 superpage (never validated by Xen)", None)
        table = target
    maddr = (table << PAGE_SHIFT) | (va & 0xFFF)
    return VaWalk(va, cr3, tuple(levels), maddr, writable, user, nx, None,
                  frame_info(hv, table))


def pinned_tables(hv: "Hypervisor") -> list[FrameInfo]:
    if (wide := _mm64(hv)) is not None:
        return wide.pinned_tables(hv)
    return [frame_info(hv, mfn) for mfn in hv.mm.pinned_mfns()]


def typed_frames(hv: "Hypervisor") -> list[FrameInfo]:
    """Every frame that currently is a pagetable or descriptor page."""
    if (wide := _mm64(hv)) is not None:
        return wide.typed_frames(hv)
    mm = hv.mm
    out = []
    for mfn in mm.touched_frames():
        pi = mm.peek(mfn)
        if pi.type in PROTECTED_TYPES and (pi.type_count or pi.validated):
            out.append(frame_info(hv, mfn))
    return out


def writable_pagetable_mappings(hv: "Hypervisor") -> list[Violation]:
    """Writable mappings of pagetable or descriptor frames: from the frame table's
    validated L1s, and from a walk of every vcpu's live address space (guest slots).
    Always empty on a correct hypervisor."""
    if (wide := _mm64(hv)) is not None:
        return wide.writable_pagetable_mappings(hv)
    mm = hv.mm
    out = list(mm.writable_pagetable_mappings())
    seen = {(v.table_mfn, v.index) for v in out}
    for cr3 in {c for c in mm.vcpu_cr3 if c is not None}:
        for l3i, l3e in enumerate(mm.entries(cr3)[:4]):
            if not l3e & PTE_P or not mm.frame_valid(pte_mfn(l3e)):
                continue
            l2 = pte_mfn(l3e)
            l2_entries = mm.entries(l2)
            last = XEN_FIRST_L2_SLOT if l3i == 3 else len(l2_entries)
            for l2i in range(last):
                l2e = l2_entries[l2i]
                if l2e & (PTE_P | PTE_RW) != (PTE_P | PTE_RW) or not mm.frame_valid(pte_mfn(l2e)):
                    continue
                l1 = pte_mfn(l2e)
                for l1i, pte in enumerate(mm.entries(l1)):
                    if pte & (PTE_P | PTE_RW) != (PTE_P | PTE_RW):
                        continue
                    target = pte_mfn(pte)
                    if not mm.frame_valid(target) or (l1, l1i) in seen:
                        continue
                    tp = mm.peek(target)
                    if tp.type in PROTECTED_TYPES and (tp.type_count or tp.validated):
                        va = (l3i << 30) | (l2i << 21) | (l1i << 12)
                        seen.add((l1, l1i))
                        out.append(Violation(l1, mm.peek(l1).type.label, l1i, pte, target,
                                             tp.type.label, f"{mm.describe(target)} but va "
                                             f"{va:#x} maps it writable"))
    return out
