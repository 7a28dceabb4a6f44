"""mm_query.py's read-only views for a 64-bit PV domain (pv64/mm.py's frame table):
frame facts, 4-level walks with each level's frame type, references to a frame, the
virtual addresses that map it, pinned and typed frames, and the invariant "no writable
mapping of a pagetable or descriptor frame".  Same result types as mm_query.py.
ABI: xen/arch/x86/mm.c (x86_64 frame types), xen/include/public/arch-x86/xen-x86_64.h.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE
from ..machine.paging import pte_flags_text
from .mm import Owner, Violation
from .mm_query import FrameInfo, MmQueryError, PteRef, VaMapping, VaWalk, WalkLevel
from .pv64.layout import (HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, PTE_ADDR_MASK, PTE_NX,
                          PTE_P, PTE_PSE, PTE_RW, PTE_U, XEN_FIRST_L4_SLOT, XEN_LAST_L4_SLOT)
from .pv64.mm import PageType

if TYPE_CHECKING:
    from .pv64.hypervisor import Hypervisor64

INVALID_M2P = (1 << 64) - 1
_LABELS = {PageType.none: "none", PageType.l1: "L1", PageType.l2: "L2", PageType.l3: "L3",
           PageType.l4: "L4", PageType.writable: "writable", PageType.seg_desc: "seg_desc"}
_PROTECTED = frozenset({PageType.l1, PageType.l2, PageType.l3, PageType.l4,
                        PageType.seg_desc})
_PAGETABLES = (PageType.l1, PageType.l2, PageType.l3, PageType.l4)


def _mfn(entry: int) -> int:
    return (entry & PTE_ADDR_MASK) >> PAGE_SHIFT


def type_of(hv: "Hypervisor64", mfn: int) -> PageType:
    """The frame's current type (none while no reference holds one)."""
    mm = hv.mm
    return PageType(mm.type[mfn]) if mm.count[mfn] else PageType.none


def type_label(hv: "Hypervisor64", mfn: int) -> str:
    return _LABELS[type_of(hv, mfn)] if hv.mm.frame_valid(mfn) else "none"


def m2p_get(hv: "Hypervisor64", mfn: int) -> int:
    """M2P[mfn] (8-byte entries in Xen's read-only M2P frames)."""
    index = mfn * 8
    frames = hv.built.m2p_mfns
    if index // PAGE_SIZE >= len(frames):
        return INVALID_M2P
    return hv.memory.read_u64((frames[index // PAGE_SIZE] << PAGE_SHIFT) + index % PAGE_SIZE)


def table_entries(hv: "Hypervisor64", mfn: int) -> list[int]:
    view = hv.memory.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT]
    return list(view.cast("Q"))


def _tables(hv: "Hypervisor64") -> list[tuple[int, PageType]]:
    """Every frame typed as a pagetable, in mfn order."""
    mm = hv.mm
    return [(mfn, PageType(kind)) for mfn, kind in enumerate(mm.type)
            if kind and mm.count[mfn] and PageType(kind) in _PAGETABLES]


def frame_info(hv: "Hypervisor64", mfn: int) -> FrameInfo:
    mm = hv.mm
    if not mm.frame_valid(mfn):
        raise MmQueryError(f"mfn {mfn:#x} is outside machine RAM ({mm.nr_frames} frames)")
    owner = mm.owner(mfn)
    pfn = m2p_get(hv, mfn) if owner is Owner.domain else INVALID_M2P
    kind = type_of(hv, mfn)
    vcpus = hv.vcpus
    return FrameInfo(
        mfn=mfn, pfn=None if pfn == INVALID_M2P else pfn,
        owner={Owner.domain: "d1", Owner.xen: "xen", Owner.free: "free"}[owner],
        type=_LABELS[kind], type_count=mm.count[mfn], ref_count=mm.count[mfn],
        allocated=owner is Owner.domain, validated=kind is not PageType.none,
        pinned=mfn in mm.pinned, pae_xen_l2=False, linear_count=0,
        xen_heap=mfn in mm.shared_xen,
        cr3_of=tuple(v.vcpu_id for v in vcpus
                     if mfn in (v.pv.kernel_table_mfn, v.pv.user_table_mfn)),
        gdt_of=tuple(v.vcpu_id for v in vcpus if mfn in v.gdt_frames),
        ldt_of=tuple(v.vcpu_id for v in vcpus if mfn in getattr(v, "ldt_frames", ())))


def walk(hv: "Hypervisor64", va: int, vcpu_id: int | None = None,
         table_mfn: int | None = None) -> VaWalk:
    """`va` through the vcpu's current 4-level tables (the kernel's in kernel mode, the
    user table in user mode) or the L4 at `table_mfn`, naming each level's frame type."""
    vcpu = hv.current if vcpu_id is None else next(
        (v for v in hv.vcpus if v.vcpu_id == vcpu_id), None)
    if vcpu is None:
        raise MmQueryError(f"no vcpu{vcpu_id} (the domain has {len(hv.vcpus)})")
    va &= (1 << 64) - 1
    if vcpu is hv.current:
        cr3 = hv.cr3 >> PAGE_SHIFT
    else:
        pv = vcpu.pv
        cr3 = pv.kernel_table_mfn if pv.kernel_mode else pv.user_table_mfn
    if table_mfn is not None:
        if not hv.mm.frame_valid(table_mfn):
            raise MmQueryError(f"mfn {table_mfn:#x} is outside machine RAM")
        cr3 = table_mfn
    if not cr3:
        raise MmQueryError(f"vcpu{vcpu.vcpu_id} has no pagetable base")
    mm = hv.mm
    levels: list[WalkLevel] = []
    table = cr3
    writable = user = True
    nx = False
    for level in (4, 3, 2, 1):
        index = (va >> (PAGE_SHIFT + 9 * (level - 1))) & 0x1FF
        entry = hv.memory.read_u64((table << PAGE_SHIFT) + index * 8)
        present = bool(entry & PTE_P)
        target = _mfn(entry) if present else None
        target_type = (type_label(hv, target) if target is not None and mm.frame_valid(target)
                       else None)
        levels.append(WalkLevel(level, table, type_label(hv, table), index, entry,
                                pte_flags_text(entry), target, target_type))
        if not present:
            return VaWalk(va, cr3, tuple(levels), None, False, False, nx,
                          f"L{level} entry {index} not present", None)
        if not mm.frame_valid(target):
            return VaWalk(va, cr3, tuple(levels), None, False, False, nx,
                          f"L{level} entry {index} points outside RAM", None)
        writable &= bool(entry & PTE_RW)
        user &= bool(entry & PTE_U)
        nx |= bool(entry & PTE_NX)
        if level in (3, 2) and entry & PTE_PSE:
            return VaWalk(va, cr3, tuple(levels), None, False, False, nx,
                          f"L{level} superpage (Xen refuses them for PV guests)", None)
        table = target
    maddr = (table << PAGE_SHIFT) | (va & 0xFFF)
    return VaWalk(va, cr3, tuple(levels), maddr, writable, user, nx, None,
                  frame_info(hv, table))


def pinned_tables(hv: "Hypervisor64") -> list[FrameInfo]:
    return [frame_info(hv, mfn) for mfn in sorted(hv.mm.pinned)]


def typed_frames(hv: "Hypervisor64") -> list[FrameInfo]:
    """Every frame that currently is a pagetable or descriptor page."""
    mm = hv.mm
    return [frame_info(hv, mfn) for mfn, kind in enumerate(mm.type)
            if kind and mm.count[mfn] and PageType(kind) in _PROTECTED]


def _guest_slots(kind: PageType) -> range:
    return range(XEN_FIRST_L4_SLOT) if kind is PageType.l4 else range(512)


def frame_mappings(hv: "Hypervisor64", mfn: int) -> list[PteRef]:
    """Every reference to `mfn`: entries of typed pagetables (guest slots), the vcpus'
    kernel/user pagetable bases and GDT frames."""
    refs: list[PteRef] = []
    for table, kind in _tables(hv):
        entries = table_entries(hv, table)
        slots = list(_guest_slots(kind))
        if kind is PageType.l4:
            slots += range(XEN_LAST_L4_SLOT + 1, 512)
        for i in slots:
            pte = entries[i]
            if pte & PTE_P and _mfn(pte) == mfn:
                refs.append(PteRef(table, _LABELS[kind], i, pte, bool(pte & PTE_RW)))
    for vcpu in hv.vcpus:
        if mfn in (vcpu.pv.kernel_table_mfn, vcpu.pv.user_table_mfn):
            refs.append(PteRef(None, "CR3", vcpu.vcpu_id, 0, False))
        for page, gdt_mfn in enumerate(vcpu.gdt_frames):
            if gdt_mfn == mfn:
                refs.append(PteRef(None, "GDT", page, 0, False))
        for page, ldt_mfn in enumerate(getattr(vcpu, "ldt_frames", ())):
            if ldt_mfn == mfn:
                refs.append(PteRef(None, "LDT", page, 0, False))
    return refs


def _leaf_mappings(hv: "Hypervisor64", l4_mfn: int):
    """(va, pte maddr, pte, writable, user) for every present L1 entry of the address
    space at `l4_mfn`, Xen's slots included."""
    mm = hv.mm
    for i4, e4 in enumerate(table_entries(hv, l4_mfn)):
        if not e4 & PTE_P or not mm.frame_valid(_mfn(e4)):
            continue
        for i3, e3 in enumerate(table_entries(hv, _mfn(e4))):
            if e3 & (PTE_P | PTE_PSE) != PTE_P or not mm.frame_valid(_mfn(e3)):
                continue
            for i2, e2 in enumerate(table_entries(hv, _mfn(e3))):
                if e2 & (PTE_P | PTE_PSE) != PTE_P or not mm.frame_valid(_mfn(e2)):
                    continue
                l1 = _mfn(e2)
                for i1, pte in enumerate(table_entries(hv, l1)):
                    if pte & PTE_P:
                        va = i4 << 39 | i3 << 30 | i2 << 21 | i1 << 12
                        if va >> 47:
                            va |= 0xFFFF << 48
                        rw = bool(e4 & e3 & e2 & pte & PTE_RW)
                        user = bool(e4 & e3 & e2 & pte & PTE_U)
                        yield va, (l1 << PAGE_SHIFT) + i1 * 8, pte, rw, user


def frame_virtual_mappings(hv: "Hypervisor64", mfn: int,
                           vcpu_id: int | None = None) -> list[VaMapping]:
    """Every virtual address of the vcpu's current address space that maps `mfn`."""
    vcpu = hv.current if vcpu_id is None else hv.vcpus[vcpu_id]
    pv = vcpu.pv
    l4 = (hv.cr3 >> PAGE_SHIFT if vcpu is hv.current
          else pv.kernel_table_mfn if pv.kernel_mode else pv.user_table_mfn)
    if not l4:
        return []
    return [VaMapping(va=va, writable=rw, user=user, pte_maddr=maddr, pte=pte,
                      xen=HYPERVISOR_VIRT_START <= va < HYPERVISOR_VIRT_END)
            for va, maddr, pte, rw, user in _leaf_mappings(hv, l4) if _mfn(pte) == mfn]


def writable_pagetable_mappings(hv: "Hypervisor64") -> list[Violation]:
    """RW entries of typed L1 tables that map a pagetable or descriptor frame.  Always
    empty on a correct hypervisor (writable mappings take the `writable` type)."""
    out = []
    mm = hv.mm
    for table, kind in _tables(hv):
        if kind is not PageType.l1:
            continue
        for i, pte in enumerate(table_entries(hv, table)):
            if pte & (PTE_P | PTE_RW) != (PTE_P | PTE_RW):
                continue
            target = _mfn(pte)
            if mm.frame_valid(target) and type_of(hv, target) in _PROTECTED:
                out.append(Violation(table, "L1", i, pte, target, type_label(hv, target),
                                     f"{mm.describe(target)} but L1 mfn {table:#x} entry "
                                     f"{i} maps it writable"))
    return out
