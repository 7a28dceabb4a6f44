"""Hypervisor tables -> view data: frames and page types (hv.mm via pvdbg/xen/mm_query.py),
descriptor tables (hv.descriptors), the virtual trap table and callbacks (hv.traps),
event channels (hv.events), console input.

Like gather.py this only reads, and returns frozen dataclasses for render.py.  When a
part of the emulated Xen is missing from this hypervisor, the view raises ViewError
naming it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from ..trace import TraceKind
from ..xen import mm_query
from ..xen.mm import pte_mfn
from ..xen.entry import GATE_SEL, RING0_CS, RING0_DS, TSS_SEL, XEN_RESERVED_DESCRIPTORS
from ..xen.pv64.layout import (FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32,
                               HYPERVISOR_CS64, HYPERVISOR_DS)
from .gather import ViewError

FrameInfo = mm_query.FrameInfo


def _part(hv, name: str, what: str) -> Any:
    """hv.<name>, or ViewError naming what this hypervisor lacks."""
    part = vars(hv).get(name)
    if part is None:
        raise ViewError(f"this hypervisor keeps no {what} (hv.{name})")
    return part


# -- frames and page types ----------------------------------------------------------------
def frame_facts_lookup(hv) -> Callable[[int], FrameInfo | None] | None:
    """mfn -> FrameInfo from Xen's frame table (None for frames outside RAM)."""
    if vars(hv).get("mm") is None:
        return None

    def facts(mfn: int) -> FrameInfo | None:
        try:
            return mm_query.frame_info(hv, mfn)
        except ValueError:
            return None
    return facts


@dataclass(frozen=True)
class PtWalkView:
    """`pt ADDRESS`: the walk with each table's and target's frame facts."""
    walk: mm_query.VaWalk
    tables: tuple[FrameInfo | None, ...]     # the frame of each level's table
    targets: tuple[FrameInfo | None, ...]    # the frame each level's entry names
    base: str = "cr3"                        # "cr3", or "table" for a given TABLE-MFN


def pt_walk(hv, guest_va: int, table_mfn: int | None = None) -> PtWalkView:
    """The walk through the current vcpu's tables, or through the top-level table at
    `table_mfn` (a table the guest pinned but has not loaded yet)."""
    _part(hv, "mm", "page-type system")
    try:
        walk = mm_query.walk(hv, guest_va, table_mfn=table_mfn)
    except ValueError as exc:
        raise ViewError(str(exc)) from None
    facts = frame_facts_lookup(hv)
    return PtWalkView(walk, tuple(facts(level.table_mfn) for level in walk.levels),
                      tuple(facts(level.target_mfn) if level.target_mfn is not None else None
                            for level in walk.levels),
                      "cr3" if table_mfn is None else "table")


@dataclass(frozen=True)
class FrameRow:
    info: FrameInfo
    mapped_ro: int           # present read-only L1 entries (of validated L1s) mapping it
    mapped_rw: int           # present read-write ones: an error for a protected frame


@dataclass(frozen=True)
class FrameTable:
    rows: tuple[FrameRow, ...]
    violations: tuple[Any, ...]         # mm.Violation: writable mappings of protected frames
    pinned: tuple[int, ...]


def frame_table(hv, every_frame: bool = False) -> FrameTable:
    """Every pagetable and seg_desc frame (`every_frame`: every frame Xen's frame table
    has touched), with how many entries map it RO/RW, and the writable-mapping check."""
    _part(hv, "mm", "page-type system")
    if every_frame:
        infos = [mm_query.frame_info(hv, mfn) for mfn in mm_query.touched_frames(hv)]
    else:
        infos = mm_query.typed_frames(hv)
    ro: Counter[int] = Counter()
    rw: Counter[int] = Counter()
    wanted = {info.mfn for info in infos}
    for l1 in mm_query.typed_frames(hv):        # leaf mappings: entries of validated L1s
        if l1.type != "L1" or not l1.validated:
            continue
        for pte in mm_query.table_entries(hv, l1.mfn):
            if pte & 1 and (target := pte_mfn(pte)) in wanted:
                (rw if pte & 2 else ro)[target] += 1
    rows = tuple(FrameRow(info, ro[info.mfn], rw[info.mfn]) for info in infos)
    return FrameTable(rows, tuple(mm_query.writable_pagetable_mappings(hv)),
                      tuple(info.mfn for info in mm_query.pinned_tables(hv)))


@dataclass(frozen=True)
class FrameDetail:
    """`frame MFN`: one frame, everything that references it, and its virtual addresses."""
    info: FrameInfo
    refs: tuple[mm_query.PteRef, ...]
    mappings: tuple[mm_query.VaMapping, ...]


def frame_detail(hv, mfn: int) -> FrameDetail:
    _part(hv, "mm", "page-type system")
    try:
        info = mm_query.frame_info(hv, mfn)
    except ValueError as exc:
        raise ViewError(str(exc)) from None
    return FrameDetail(info, tuple(mm_query.frame_mappings(hv, mfn)),
                       tuple(mm_query.frame_virtual_mappings(hv, mfn)))


# -- descriptor tables ---------------------------------------------------------------------
RESERVED_NAMES: dict[int, str] = {
    **{sel >> 3: name for sel, (name, _) in XEN_RESERVED_DESCRIPTORS.items()},
    RING0_CS >> 3: "Xen ring-0 CS", RING0_DS >> 3: "Xen ring-0 DS",
    TSS_SEL >> 3: "Xen TSS", (GATE_SEL & ~7) >> 3: "ring 3->1 gate",
}


@dataclass(frozen=True)
class DescriptorTable:
    name: str                           # "GDT" or "LDT"
    vcpu_id: int
    frames: tuple[int, ...]             # the guest's GDT frames (MFNs)
    entries: int                        # the guest's entry count (gdt_ents / ldt_ents)
    base: int                           # LDT: the guest's linear base
    rows: tuple[Any, ...]               # descriptors.DescriptorView
    reserved: dict[int, str]            # index -> name of Xen's reserved entries
    policy: str                         # which segment-limit rule applies


def gdt_table(hv, every_slot: bool = False) -> DescriptorTable:
    if getattr(hv, "guest_bits", 32) == 64:
        return _gdt_table64(hv, every_slot)
    tables = _part(hv, "descriptors", "descriptor tables")
    vcpu_id = hv.current.vcpu_id
    state = tables.vcpus[vcpu_id]
    rows = tuple(view for view in tables.gdt(vcpu_id)
                 if every_slot or view.kind != "empty")
    return DescriptorTable("GDT", vcpu_id, tuple(state.gdt_frames), state.gdt_ents, 0, rows,
                           RESERVED_NAMES, tables.policy.description)


RESERVED_NAMES64: dict[int, str] = {
    HYPERVISOR_CS64 >> 3: "Xen CS (64-bit)", HYPERVISOR_DS >> 3: "Xen DS",
    FLAT_RING3_CS32 >> 3: "flat ring-3 CS (32-bit)", FLAT_RING3_DS32 >> 3: "flat ring-3 DS/SS",
    FLAT_RING3_CS64 >> 3: "flat ring-3 CS (64-bit)",
}
GDT64_POLICY = ("64-bit PV: Xen's check_descriptor for x86_64 guests (code and data "
                "descriptors at DPL 3, no system descriptors but call gates)")


def _gdt_table64(hv, every_slot: bool) -> DescriptorTable:
    """The current 64-bit vcpu's GDT: the guest's set_gdt frames, then the present
    entries of Xen's reserved GDT page (pv64/area.py)."""
    from ..xen.constants import FIRST_RESERVED_GDT_BYTE
    from ..xen.descriptors import decode_descriptor
    vcpu = hv.current
    rows = []
    for i in range(vcpu.gdt_entries):
        raw = hv.memory.read_u64((vcpu.gdt_frames[i // 512] << 12) + (i % 512) * 8)
        rows.append(decode_descriptor("gdt", i, raw))
    xen_page = hv.area.reserved_gdt_mfns[vcpu.vcpu_id]
    first = FIRST_RESERVED_GDT_BYTE >> 3
    for j in range(512):
        raw = hv.memory.read_u64((xen_page << 12) + j * 8)
        if raw:
            rows.append(decode_descriptor("xen", first + j, raw))
    rows = [view for view in rows if every_slot or view.kind != "empty"]
    return DescriptorTable("GDT", vcpu.vcpu_id, tuple(vcpu.gdt_frames), vcpu.gdt_entries, 0,
                           tuple(rows), RESERVED_NAMES64, GDT64_POLICY)


def _ldt_table64(hv) -> DescriptorTable:
    """The current 64-bit vcpu's LDT (MMUEXT_SET_LDT's linear base and entry count),
    read through the vcpu's kernel pagetable as Xen's shadow mapping reads it; pages
    that are not mapped are left out."""
    from ..machine.paging import PageWalkError
    from ..xen.descriptors import decode_descriptor
    vcpu = hv.current
    base, ents = getattr(vcpu, "ldt_base", 0), getattr(vcpu, "ldt_ents", 0)
    table = vcpu.pv.kernel_table_mfn << 12
    rows = []
    for i in range(ents):
        try:
            walk = mm_query.debugger_walk(hv, table, base + i * 8)
        except PageWalkError:
            continue
        raw = hv.memory.read_u64(walk.maddr)
        view = decode_descriptor("ldt", i, raw)
        if view.kind != "empty":
            rows.append(view)
    frames = tuple(getattr(vcpu, "ldt_frames", ()))
    return DescriptorTable("LDT", vcpu.vcpu_id, frames, ents, base, tuple(rows), {},
                           GDT64_POLICY)


def ldt_table(hv) -> DescriptorTable:
    if getattr(hv, "guest_bits", 32) == 64:
        return _ldt_table64(hv)
    tables = _part(hv, "descriptors", "descriptor tables")
    vcpu_id = hv.current.vcpu_id
    state = tables.vcpus[vcpu_id]
    rows = tuple(view for view in tables.ldt(vcpu_id) if view.kind != "empty")
    return DescriptorTable("LDT", vcpu_id, tuple(sorted(state.ldt_shadow.values())),
                           state.ldt_ents, state.ldt_base, rows, {}, tables.policy.description)


# -- virtual trap table -----------------------------------------------------------------------
@dataclass(frozen=True)
class TrapRow:
    vector: int
    name: str
    dpl: int
    masks_events: bool
    cs: int
    address: int
    symbol: str | None


@dataclass(frozen=True)
class CallbackRow:
    name: str
    cs: int
    address: int
    symbol: str | None
    masks_events: bool


@dataclass(frozen=True)
class TrapTable:
    vcpu_id: int
    rows: tuple[TrapRow, ...]
    callbacks: tuple[CallbackRow, ...]
    kernel_stack: tuple[int, int]       # ss, esp Xen switches to for entries from ring 3
    kernel_stack_source: str            # who set it (stack_switch, the domain builder)


def trap_table(hv, vcpu_id: int, symbol_at: Callable[[int], str | None]) -> TrapTable:
    if getattr(hv, "guest_bits", 32) == 64:
        return _trap_table64(hv, vcpu_id, symbol_at)
    traps = _part(hv, "traps", "virtual trap table")
    if not 0 <= vcpu_id < len(traps.pv_vcpus):
        raise ViewError(f"no vcpu {vcpu_id}")
    from ..xen.traps import vector_name
    pv = traps.pv_vcpus[vcpu_id]
    rows = tuple(TrapRow(vector, vector_name(vector), entry.flags & 3, bool(entry.flags & 4),
                         entry.cs, entry.address, symbol_at(entry.address))
                 for vector, entry in enumerate(pv.trap_ctxt) if entry.address)
    callbacks = tuple(CallbackRow(name, cb.cs, cb.eip, symbol_at(cb.eip), cb.mask_events)
                      for name, cb in (("event", pv.event), ("failsafe", pv.failsafe),
                                       ("syscall32", pv.syscall32), ("sysenter", pv.sysenter))
                      if cb.registered)
    vcpu = hv.vcpus[vcpu_id]
    return TrapTable(vcpu_id, rows, callbacks, (vcpu.kernel_ss, vcpu.kernel_sp),
                     pv.kernel_sp_source)


def _trap_table64(hv, vcpu_id: int, symbol_at: Callable[[int], str | None]) -> TrapTable:
    """A 64-bit vcpu's set_trap_table entries and callbacks (event, failsafe, syscall,
    nmi); Xen enters them on the kernel stack set by stack_switch."""
    from ..xen.traps import vector_name
    from ..xen.pv64.layout import FLAT_KERNEL_CS64
    if not 0 <= vcpu_id < len(hv.vcpus):
        raise ViewError(f"no vcpu {vcpu_id}")
    pv = hv.vcpus[vcpu_id].pv
    rows = tuple(TrapRow(vector, vector_name(vector), entry.flags & 3, bool(entry.flags & 4),
                         entry.cs, entry.address, symbol_at(entry.address))
                 for vector, entry in sorted(pv.trap_table.items()) if entry.address)
    callbacks = tuple(CallbackRow(name, FLAT_KERNEL_CS64, address, symbol_at(address), masks)
                      for name, address, masks in (
                          ("event", pv.event_callback, pv.event_mask),
                          ("failsafe", pv.failsafe_callback, pv.failsafe_mask),
                          ("syscall", pv.syscall_callback, pv.syscall_mask),
                          ("nmi", pv.nmi_callback, False))
                      if address)
    return TrapTable(vcpu_id, rows, callbacks, (pv.kernel_ss, pv.kernel_sp), "stack_switch")


# -- event channels ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EventRow:
    port: int
    state: str             # EVTCHNSTAT_* name: unbound, interdomain, virq, ipi, pirq
    bound_to: str          # "virq VIRQ_TIMER", "interdomain dom0 xenstore", ...
    vcpu: int              # the vcpu notified
    masked: bool
    pending: bool
    delivered: int         # upcalls that carried this port (from the trace)


def event_table(hv, trace) -> tuple[EventRow, ...]:
    events = _part(hv, "events", "event channel table")
    delivered: Counter[int] = Counter()
    for record in trace.records(TraceKind.upcall):
        for port in record.args.get("ports", ()):
            delivered[port] += 1
    rows = []
    for port, channel in enumerate(events.channels):
        if channel.reserved or channel.state.name == "closed":
            continue
        rows.append(EventRow(port, channel.state.name, events.describe(port),
                             channel.notify_vcpu, events.is_masked(port),
                             events.is_pending(port), delivered[port]))
    return tuple(rows)


# -- console input ---------------------------------------------------------------------------
def console_input(hv, data: bytes) -> str:
    """Queue `data` for the guest's console (read with CONSOLEIO_read); returns where."""
    hv.console_input += data
    return "console_io(CONSOLEIO_read)"


__all__ = ["frame_facts_lookup", "PtWalkView", "pt_walk", "FrameRow", "FrameTable",
           "frame_table", "FrameDetail", "frame_detail", "RESERVED_NAMES", "DescriptorTable",
           "gdt_table", "ldt_table", "TrapRow", "CallbackRow", "TrapTable", "trap_table",
           "EventRow", "event_table", "console_input"]
