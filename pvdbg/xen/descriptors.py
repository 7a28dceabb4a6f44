"""Descriptor tables of a 32-bit PV guest: Xen's descriptor checks, set_gdt,
update_descriptor, MMUEXT_SET_LDT with its lazily mapped LDT shadow, the per-vcpu GDT
window, and decoded GDT/LDT views for the front ends.

Segment limits.  Xen 4.17 runs a 32-bit guest in compat mode and protects its hole with
pagetables, so a flat segment (base 0) whose limit reaches the hole is *widened* to
4 GiB.  The 32-bit PAE Xen of the seed's era instead *truncated* every segment to end
below RO_MPT_VIRT_END (0xF6800000) so the guest kernel could not reach the hypervisor.
`LimitPolicy` selects which of the two checks applies; 4.17 is the default.

The GDT window and the LDT window live in Xen's private area (entry.py); the frames are
mapped read-only there, so the CPU's write of a descriptor's accessed bit faults and
is completed here (on Xen the mapping is writable to Xen and the CPU does it).

ABI: xen/arch/x86/pv/descriptor-tables.c (check_descriptor, pv_set_gdt,
do_update_descriptor, pv_destroy_ldt), xen/arch/x86/pv/mm.c (pv_map_ldt_shadow_page),
xen/arch/x86/traps.c (handle_gdt_ldt_mapping_fault), 32-bit Xen 3.x
xen/arch/x86/x86_32/mm.c (check_descriptor with limit truncation); XEN-PV-ABI.md 1.2,
1.3, 3.5.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE
from .constants import (FIRST_RESERVED_GDT_ENTRY, FIRST_RESERVED_GDT_PAGE, FLAT_RING1_CS,
                        Errno, HYPERVISOR_VIRT_START_PAE, Hc)
from .entry import (GDT_LIMIT, GDT_WINDOW_PAGES, GDT_WINDOW_VA, MAX_VCPUS, PTE_A, PTE_P,
                    TRAMPOLINE_VA, gdt_window_va)

AREA_END = 1 << 32
from .hypercalls import HYPERCALLS, HypercallError, Param, fail
from .mm import PTE_ADDR, PageType, pte_mfn

if TYPE_CHECKING:
    from .hypervisor import HypercallContext, Hypervisor

# High-dword bits of a descriptor (xen/arch/x86/include/asm/desc.h _SEGMENT_*).
SEG_ACCESSED = 1 << 8
SEG_TYPE = 0xF << 8
SEG_EC = 1 << 10          # expand-down (data) / conforming (code)
SEG_CODE = 1 << 11
SEG_S = 1 << 12           # code/data (not system)
SEG_DPL = 3 << 13
SEG_P = 1 << 15
SEG_L = 1 << 21
SEG_DB = 1 << 22
SEG_G = 1 << 23
GATE_RESERVED = 0xE0      # bits 5-7 of a 32-bit call gate's high word

GUEST_KERNEL_RPL = 1
MAX_LDT_ENTRIES = 8192
RO_MPT_VIRT_END_PAE = 0xF6800000        # 32-bit PAE Xen's GUEST_SEGMENT_MAX_ADDR
LDT_SELECTOR = 0xE050                    # Xen's per-cpu LDT descriptor (desc.h)
LDT_WINDOW_VA = GDT_WINDOW_VA + MAX_VCPUS * GDT_WINDOW_PAGES * PAGE_SIZE
LDT_WINDOW_PAGES = 16
DESC_ENTRIES_PER_PAGE = PAGE_SIZE // 8
_PAGE_DESCS = struct.Struct("<512Q")


def ldt_window_va(vcpu_id: int) -> int:
    return LDT_WINDOW_VA + vcpu_id * (LDT_WINDOW_PAGES * PAGE_SIZE)


class LimitPolicy(StrEnum):
    """How check_descriptor treats a segment limit that reaches the hypervisor hole."""
    xen_4_17 = "xen-4.17"       # compat: widen flat segments to 4 GiB
    xen_3_pae = "xen-3-pae"     # 32-bit PAE Xen: truncate below RO_MPT_VIRT_END

    @property
    def description(self) -> str:
        if self is LimitPolicy.xen_4_17:
            return (f"Xen 4.17 (32-bit guest in compat mode): a flat segment whose limit "
                    f"reaches the hypervisor hole at {HYPERVISOR_VIRT_START_PAE:#x} is widened "
                    "to 4 GiB; pagetables, not segments, protect the hole")
        return (f"32-bit PAE Xen (the seed's era): segment limits are truncated to end below "
                f"{RO_MPT_VIRT_END_PAE:#x} so the guest kernel cannot reach the hypervisor "
                "(stored limits: the emulated CPU, Unicorn 2.1.4, enforces none)")


@dataclass(frozen=True)
class DescriptorCheck:
    """check_descriptor()'s verdict: the value Xen stores, or why it refuses."""
    ok: bool
    value: int
    notes: tuple[str, ...] = ()
    reason: str = ""


def _base(a: int, b: int) -> int:
    return (b & 0xFF000000) | ((b & 0xFF) << 16) | (a >> 16)


def _limit_field(a: int, b: int) -> int:
    return (b & 0xF0000) | (a & 0xFFFF)


def gate_selector_okay(sel: int) -> bool:
    """guest_gate_selector_okay(): a guest GDT selector, FLAT_RING1_CS, or an LDT one."""
    return (sel >> 3) < FIRST_RESERVED_GDT_ENTRY or sel == FLAT_RING1_CS or bool(sel & 4)


def check_descriptor(raw: int, policy: LimitPolicy = LimitPolicy.xen_4_17) -> DescriptorCheck:
    """Xen's check_descriptor() for a compat guest: DPL below 1 raised, L-bit code/data
    refused, only 32-bit call gates among system descriptors (stored with DPL 0 so every
    use traps and is emulated), and the segment-limit rule of `policy`."""
    raw &= 0xFFFFFFFFFFFFFFFF
    a, b = raw & 0xFFFFFFFF, raw >> 32
    if not b & SEG_P:
        return DescriptorCheck(True, raw)
    notes: list[str] = []
    dpl = (b >> 13) & 3
    if dpl < GUEST_KERNEL_RPL:
        notes.append(f"DPL {dpl} raised to {GUEST_KERNEL_RPL}")
        dpl = GUEST_KERNEL_RPL
    b = (b & ~SEG_DPL) | (dpl << 13)
    if b & SEG_S:
        if b & SEG_L:
            return DescriptorCheck(False, raw, reason="the L bit (64-bit code) is set")
        if policy is LimitPolicy.xen_4_17:
            base = _base(a, b)
            limit = _limit_field(a, b) + 1
            if b & SEG_G:
                limit <<= 12
            if base == 0 and limit > HYPERVISOR_VIRT_START_PAE:
                if _limit_field(a, b) != 0xFFFFF:
                    notes.append(f"limit {_effective_limit(a, b):#x} widened to 4 GiB "
                                 "(compat: the hole is protected by pagetables)")
                a |= 0x0000FFFF
                b |= 0x000F0000
        else:
            checked = _truncate_3_pae(a, b, notes)
            if isinstance(checked, str):
                return DescriptorCheck(False, raw, reason=checked)
            a, b = checked
        return DescriptorCheck(True, (b << 32) | a, tuple(notes))
    if b & SEG_TYPE == 0:
        return DescriptorCheck(True, raw)        # 2nd half of a call gate: left as is
    if b & SEG_TYPE != 0xC00:
        return DescriptorCheck(False, raw, reason=f"system descriptor type {(b >> 8) & 0xF:#x} "
                                                  "is not allowed (only 32-bit call gates)")
    cs = a >> 16
    if not gate_selector_okay(cs):
        return DescriptorCheck(False, raw, reason=f"call gate target selector {cs:#x} is one of "
                                                  "Xen's reserved GDT entries")
    b &= ~SEG_DPL
    cs = (cs & ~3) | dpl
    a = (a & 0xFFFF) | (cs << 16)
    if b & GATE_RESERVED:
        return DescriptorCheck(False, raw, reason="call gate reserved bits 5-7 are set")
    notes.append(f"call gate stored with DPL 0 (DPL {dpl} kept in the target RPL): every use "
                 "traps to Xen and is emulated")
    return DescriptorCheck(True, (b << 32) | a, tuple(notes))


def _truncate_3_pae(a: int, b: int, notes: list[str]) -> tuple[int, int] | str:
    """32-bit PAE Xen's base and limit checks (x86_32/mm.c), in 32-bit arithmetic."""
    mask = 0xFFFFFFFF
    top = RO_MPT_VIRT_END_PAE
    base = _base(a, b)
    if base >= top - PAGE_SIZE:
        return f"base {base:#x} is within a page of the hypervisor area ({top:#x})"
    limit = (_limit_field(a, b) + 1) & mask
    if b & SEG_G:
        limit = (limit << 12) & mask
    if b & (SEG_CODE | SEG_EC) == SEG_EC:
        if (base + limit) & mask > base:
            new_limit = (-(base & ~(PAGE_SIZE - 1))) & mask
        else:
            return a, b
    elif ((base + limit) & mask) <= base or ((base + limit) & mask) > top:
        new_limit = (top - base) & mask
    else:
        return a, b
    if not b & SEG_G:
        return "a byte-granular segment would reach the hypervisor (too hard to truncate)"
    field = ((new_limit >> 12) - 1) & 0xFFFFF
    old = _effective_limit(a, b)
    a = (a & ~0xFFFF) | (field & 0xFFFF)
    b = (b & ~0xF0000) | (field & 0xF0000)
    notes.append(f"limit {old:#x} truncated to {_effective_limit(a, b):#x} "
                 "(32-bit Xen keeps segments out of the hypervisor)")
    return a, b


def _effective_limit(a: int, b: int) -> int:
    field_ = _limit_field(a, b)
    return (field_ << 12) | 0xFFF if b & SEG_G else field_


@dataclass(frozen=True)
class DescriptorView:
    """One decoded descriptor, for the GDT/LDT views."""
    table: str                 # "gdt", "ldt" or "xen" (Xen's reserved GDT page)
    index: int
    selector: int
    raw: int                   # as stored (after Xen's fix-ups)
    guest_raw: int | None      # what the guest supplied, when Xen changed it
    kind: str                  # "empty", "not present", "code", "data", "call gate", ...
    present: bool
    dpl: int
    base: int
    limit: int                 # effective byte limit, inclusive
    page_granular: bool
    big: bool                  # D/B
    long: bool
    expand_down: bool
    accessed: bool
    gate_selector: int | None
    gate_offset: int | None
    notes: tuple[str, ...]


_SYSTEM_KINDS = {0x1: "16-bit TSS", 0x2: "LDT", 0x3: "16-bit TSS (busy)", 0x4: "16-bit call gate",
                 0x5: "task gate", 0x6: "16-bit interrupt gate", 0x7: "16-bit trap gate",
                 0x9: "TSS", 0xB: "TSS (busy)", 0xC: "call gate", 0xE: "interrupt gate",
                 0xF: "trap gate"}


def decode_descriptor(table: str, index: int, raw: int, guest_raw: int | None = None,
                      notes: tuple[str, ...] = ()) -> DescriptorView:
    a, b = raw & 0xFFFFFFFF, raw >> 32
    present = bool(b & SEG_P)
    sel = (index << 3) | (4 if table == "ldt" else 0)
    gate_sel = gate_off = None
    if raw == 0:
        kind = "empty"
    elif b & SEG_S:
        kind = "code" if b & SEG_CODE else "data"
    else:
        kind = _SYSTEM_KINDS.get((b >> 8) & 0xF, f"system type {(b >> 8) & 0xF:#x}")
        if (b >> 8) & 0xF in (0x4, 0xC, 0x5, 0xE, 0xF, 0x6, 0x7):
            gate_sel, gate_off = a >> 16, (a & 0xFFFF) | (b & 0xFFFF0000)
    if raw and not present:
        kind += " (not present)"
    return DescriptorView(
        table=table, index=index, selector=sel, raw=raw, guest_raw=guest_raw, kind=kind,
        present=present, dpl=(b >> 13) & 3,
        base=0 if gate_sel is not None else _base(a, b),
        limit=0 if gate_sel is not None else _effective_limit(a, b),
        page_granular=bool(b & SEG_G), big=bool(b & SEG_DB), long=bool(b & SEG_L),
        expand_down=bool(b & SEG_S) and not b & SEG_CODE and bool(b & SEG_EC),
        accessed=bool(b & SEG_ACCESSED), gate_selector=gate_sel, gate_offset=gate_off,
        notes=notes)


@dataclass
class VcpuDescriptors:
    """A vcpu's descriptor-table state (arch_vcpu.pv: gdt_frames, gdt_ents, ldt_*)."""
    gdt_frames: list[int] = field(default_factory=list)
    gdt_ents: int = 0
    ldt_base: int = 0
    ldt_ents: int = 0
    ldt_shadow: dict[int, int] = field(default_factory=dict)   # LDT page -> mfn mapped


class DescriptorTables:
    """GDT/LDT state of every vcpu and the descriptor hypercalls' semantics."""

    def __init__(self, hv: "Hypervisor", policy: LimitPolicy = LimitPolicy.xen_4_17) -> None:
        self.hv = hv
        self.mm = hv.mm
        self.area = hv.area
        self.policy = policy
        self.vcpus = [VcpuDescriptors() for _ in hv.vcpus]
        # (mfn, index) -> (what the guest wrote, Xen's notes) where Xen changed a descriptor
        self.fixups: dict[tuple[int, int], tuple[int, tuple[str, ...]]] = {}
        self.mm.segdesc_validator = self.validate_segdesc_page

    # -- checks --------------------------------------------------------------------------
    def check(self, raw: int) -> DescriptorCheck:
        return check_descriptor(raw, self.policy)

    def validate_segdesc_page(self, mfn: int) -> None:
        """validate_segdesc_page(): all 512 descriptors pass check_descriptor; Xen's
        fix-ups are written back into the frame."""
        base = mfn << PAGE_SHIFT
        for i, raw in enumerate(_PAGE_DESCS.unpack_from(self.hv.memory.view, base)):
            verdict = self.check(raw)
            if not verdict.ok:
                raise fail(Errno.EINVAL, f"descriptor {i} ({raw:#018x}) of mfn {mfn:#x}: "
                                         f"{verdict.reason}")
            self._record(mfn, i, raw, verdict)

    def _record(self, mfn: int, index: int, raw: int, verdict: DescriptorCheck) -> None:
        if verdict.value != raw:
            self.hv.memory.write_u64((mfn << PAGE_SHIFT) + index * 8, verdict.value)
        if verdict.notes:
            self.fixups[(mfn, index)] = (raw, verdict.notes)
        else:
            self.fixups.pop((mfn, index), None)

    # -- GDT ------------------------------------------------------------------------------
    def set_gdt(self, vcpu_id: int, frames: list[int], entries: int) -> None:
        """pv_set_gdt(): every frame takes the seg_desc type, then replaces the old GDT."""
        if entries > FIRST_RESERVED_GDT_ENTRY:
            raise fail(Errno.EINVAL, f"{entries} entries: a guest GDT has at most "
                                     f"{FIRST_RESERVED_GDT_ENTRY}")
        nr_frames = -(-entries // DESC_ENTRIES_PER_PAGE)
        taken: list[int] = []
        for i, mfn in enumerate(frames[:nr_frames]):
            try:
                if not self.mm.frame_valid(mfn):
                    raise fail(Errno.EINVAL, f"mfn {mfn:#x} is outside machine RAM")
                self.mm.get_page_and_type(mfn, PageType.seg_desc,
                                          what="GDT frames must be the domain's")
            except HypercallError as err:
                for done in reversed(taken):
                    self.mm.put_page_and_type(done)
                hint = self.mm.pfn_hint(mfn, PageType.seg_desc)
                raise fail(Errno.EINVAL, f"GDT frame {i}: {err.why}{hint}") from None
            taken.append(mfn)
        self.destroy_gdt(vcpu_id)
        state = self.vcpus[vcpu_id]
        state.gdt_ents = entries
        state.gdt_frames = taken
        for i, mfn in enumerate(taken):
            self.area.set_gdt_frame(vcpu_id, i, mfn)

    def destroy_gdt(self, vcpu_id: int) -> None:
        """pv_destroy_gdt(): drop the frames' references, map the zero page instead."""
        state = self.vcpus[vcpu_id]
        for mfn in state.gdt_frames:
            self.mm.put_page_and_type(mfn)
        for page in range(FIRST_RESERVED_GDT_PAGE):
            self.area.set_gdt_frame(vcpu_id, page, None)
        state.gdt_frames, state.gdt_ents = [], 0

    def update_descriptor(self, maddr: int, raw: int) -> None:
        """do_update_descriptor(): one checked descriptor write at machine address
        `maddr`, into a descriptor page or a page that can take the writable type."""
        if maddr & 7:
            raise fail(Errno.EINVAL, f"machine address {maddr:#x} is not 8-byte aligned")
        verdict = self.check(raw)
        if not verdict.ok:
            raise fail(Errno.EINVAL, f"descriptor {raw:#018x}: {verdict.reason}")
        mfn = maddr >> PAGE_SHIFT
        self.mm.get_page_from_mfn(mfn, "update_descriptor writes only the domain's frames")
        try:
            pi = self.mm.page(mfn)
            want = PageType.seg_desc if pi.type is PageType.seg_desc else PageType.writable
            try:
                self.mm.get_page_type(mfn, want)
            except HypercallError:
                raise fail(Errno.EINVAL, f"{self.mm.describe(mfn)}: a descriptor can only be "
                                         "written into a descriptor page or a writable page") \
                    from None
            self._record(mfn, (maddr & (PAGE_SIZE - 1)) // 8, raw, verdict)
            self.hv.memory.write_u64(maddr, verdict.value)
            self.mm.put_page_type(mfn)
        finally:
            self.mm.put_page(mfn)

    # -- LDT ------------------------------------------------------------------------------
    def set_ldt(self, vcpu_id: int, base: int, ents: int) -> bool:
        """MMUEXT_SET_LDT after its argument checks; True if the TLB needs a flush."""
        state = self.vcpus[vcpu_id]
        if (state.ldt_ents, state.ldt_base) == (ents, base):
            return False
        flush = self.destroy_ldt(vcpu_id)
        state.ldt_base, state.ldt_ents = base, ents
        if vcpu_id == self.hv.current.vcpu_id:
            self.load_ldt(vcpu_id)
        return flush

    def load_ldt(self, vcpu_id: int) -> None:
        """Point LDTR at the vcpu's LDT window (load_LDT)."""
        ents = self.vcpus[vcpu_id].ldt_ents
        if ents == 0:
            self.hv.cpu.set_ldtr(0, 0, 0)
        else:
            self.hv.cpu.set_ldtr(LDT_SELECTOR, ldt_window_va(vcpu_id), ents * 8 - 1)

    def load_vcpu(self, vcpu_id: int) -> None:
        """Load this vcpu's GDTR and LDTR (on a vcpu switch, with its registers loaded),
        and map the area's transit pages only if it is in ring 3 or mid ring change
        (entry.py); the switch flushes the TLB."""
        cpu = self.hv.cpu
        cpu.set_gdtr(gdt_window_va(vcpu_id), GDT_LIMIT)
        self.load_ldt(vcpu_id)
        vcpu = self.hv.vcpus[vcpu_id]
        regs = cpu.read_many(("cs", "eip"))
        if vcpu.saved_context is not None and (regs["cs"] & 3 == 3
                                               or TRAMPOLINE_VA <= regs["eip"] < AREA_END):
            self.area.transit_open(ring3_lcall=vcpu.ring3_return is not None)
        else:
            self.area.transit_close()

    def destroy_ldt(self, vcpu_id: int) -> bool:
        """pv_destroy_ldt(): unmap the LDT shadow pages, dropping their seg_desc
        references; True if any mapping was removed."""
        state = self.vcpus[vcpu_id]
        dropped = bool(state.ldt_shadow)
        for page, mfn in sorted(state.ldt_shadow.items()):
            self.area.map_private(ldt_window_va(vcpu_id) + page * PAGE_SIZE, 0, 0)
            self.mm.put_page_and_type(mfn)
        state.ldt_shadow.clear()
        return dropped

    def map_ldt_shadow_page(self, vcpu_id: int, offset: int) -> bool:
        """pv_map_ldt_shadow_page(): map the guest's LDT page holding byte `offset` into
        the LDT window if it can take the seg_desc type."""
        state = self.vcpus[vcpu_id]
        if offset >> 3 >= state.ldt_ents:
            return False
        linear = (state.ldt_base + offset) & 0xFFFFFFFF
        cr3 = self.mm.vcpu_cr3[vcpu_id]
        pte = guest_l1e(self.mm, cr3, linear) if cr3 is not None else 0
        if not pte & PTE_P:
            return False
        mfn = pte_mfn(pte)
        if not self.mm.get_page(mfn):
            return False
        try:
            self.mm.get_page_type(mfn, PageType.seg_desc)
        except HypercallError:
            self.mm.put_page(mfn)
            return False
        page = offset >> PAGE_SHIFT
        self.area.map_private(ldt_window_va(vcpu_id) + page * PAGE_SIZE, mfn, PTE_P | PTE_A)
        state.ldt_shadow[page] = mfn
        return True

    # -- faults in the windows ------------------------------------------------------------
    def handle_window_fault(self, vcpu_id: int, cr2: int, error_code: int) -> bool:
        """handle_gdt_ldt_mapping_fault(): a not-present LDT window page is mapped
        lazily; the CPU's accessed-bit write to a read-only GDT/LDT window page is done
        here.  Returns True if the faulting instruction can be restarted."""
        gdt = gdt_window_va(vcpu_id)
        ldt = ldt_window_va(vcpu_id)
        write = bool(error_code & 2)
        present = bool(error_code & 1)
        if gdt <= cr2 < gdt + FIRST_RESERVED_GDT_PAGE * PAGE_SIZE:
            page = (cr2 - gdt) >> PAGE_SHIFT
            frames = self.vcpus[vcpu_id].gdt_frames
            if not (write and present and page < len(frames)):
                return False
            return self._set_accessed(frames[page], cr2)
        if ldt <= cr2 < ldt + LDT_WINDOW_PAGES * PAGE_SIZE:
            offset = cr2 - ldt
            state = self.vcpus[vcpu_id]
            page = offset >> PAGE_SHIFT
            if page in state.ldt_shadow:
                return write and present and self._set_accessed(state.ldt_shadow[page], cr2)
            if self.map_ldt_shadow_page(vcpu_id, offset):
                return True
            # Not mappable: the guest sees a #PF at its own LDT address.
            self.hv.cpu.write("cr2", (state.ldt_base + offset) & 0xFFFFFFFF)
            return False
        return False

    def _set_accessed(self, mfn: int, cr2: int) -> bool:
        maddr = (mfn << PAGE_SHIFT) + ((cr2 & (PAGE_SIZE - 1)) & ~7)
        raw = self.hv.memory.read_u64(maddr)
        if not (raw >> 32) & SEG_P or (raw >> 32) & SEG_ACCESSED:
            return False
        self.hv.memory.write_u64(maddr, raw | (SEG_ACCESSED << 32))
        return True

    # -- views ----------------------------------------------------------------------------
    def gdt(self, vcpu_id: int, include_xen: bool = True) -> list[DescriptorView]:
        """The vcpu's GDT decoded: the guest's entries, then Xen's present reserved ones."""
        state = self.vcpus[vcpu_id]
        out: list[DescriptorView] = []
        for i in range(state.gdt_ents):
            mfn = state.gdt_frames[i // DESC_ENTRIES_PER_PAGE]
            out.append(self._view("gdt", i, mfn, i % DESC_ENTRIES_PER_PAGE))
        if include_xen:
            xen_page = self.area.reserved_gdt_mfns[vcpu_id]
            for j, raw in enumerate(_PAGE_DESCS.unpack_from(self.hv.memory.view,
                                                            xen_page << PAGE_SHIFT)):
                if raw:
                    out.append(decode_descriptor("xen", FIRST_RESERVED_GDT_ENTRY + j, raw))
        return out

    def ldt(self, vcpu_id: int) -> list[DescriptorView]:
        """The vcpu's LDT decoded, read through its current pagetables."""
        state = self.vcpus[vcpu_id]
        cr3 = self.mm.vcpu_cr3[vcpu_id]
        out: list[DescriptorView] = []
        for i in range(state.ldt_ents):
            linear = (state.ldt_base + i * 8) & 0xFFFFFFFF
            pte = guest_l1e(self.mm, cr3, linear) if cr3 is not None else 0
            if not pte & PTE_P or not self.mm.frame_valid(pte_mfn(pte)):
                continue
            out.append(self._view("ldt", i, pte_mfn(pte), (linear & (PAGE_SIZE - 1)) // 8))
        return out

    def _view(self, table: str, index: int, mfn: int, slot: int) -> DescriptorView:
        raw = self.hv.memory.read_u64((mfn << PAGE_SHIFT) + slot * 8)
        guest_raw, notes = self.fixups.get((mfn, slot), (None, ()))
        return decode_descriptor(table, index, raw, guest_raw, notes)

    def descriptor(self, vcpu_id: int, selector: int) -> int | None:
        """The raw descriptor `selector` names for this vcpu, or None (null, beyond the
        table, or not readable)."""
        index = selector >> 3
        if selector & 4:
            state = self.vcpus[vcpu_id]
            if index >= state.ldt_ents:
                return None
            cr3 = self.mm.vcpu_cr3[vcpu_id]
            linear = (state.ldt_base + index * 8) & 0xFFFFFFFF
            pte = guest_l1e(self.mm, cr3, linear) if cr3 is not None else 0
            if not pte & PTE_P or not self.mm.frame_valid(pte_mfn(pte)):
                return None
            return self.hv.memory.read_u64((pte & PTE_ADDR) + (linear & (PAGE_SIZE - 1)))
        if index == 0:
            return None
        if index >= FIRST_RESERVED_GDT_ENTRY:
            xen_page = self.area.reserved_gdt_mfns[vcpu_id]
            return self.hv.memory.read_u64((xen_page << PAGE_SHIFT)
                                           + (index - FIRST_RESERVED_GDT_ENTRY) * 8)
        state = self.vcpus[vcpu_id]
        if index >= len(state.gdt_frames) * DESC_ENTRIES_PER_PAGE:
            return 0
        mfn = state.gdt_frames[index // DESC_ENTRIES_PER_PAGE]
        return self.hv.memory.read_u64((mfn << PAGE_SHIFT) + (index % DESC_ENTRIES_PER_PAGE) * 8)

    def segment_base(self, vcpu_id: int, selector: int) -> int:
        """Base of the segment `selector` names (0 for null or unreadable)."""
        raw = self.descriptor(vcpu_id, selector)
        if not raw:
            return 0
        return _base(raw & 0xFFFFFFFF, raw >> 32)

    def effective_limit(self, vcpu_id: int, selector: int) -> int | None:
        """Effective byte limit of the segment `selector` names, as the CPU applies it."""
        raw = self.descriptor(vcpu_id, selector)
        if raw is None:
            return None
        return _effective_limit(raw & 0xFFFFFFFF, raw >> 32)


def guest_l1e(mm, cr3_mfn: int, linear: int) -> int:
    """The guest's L1 entry for `linear` through the L3 at `cr3_mfn` (0 if none):
    guest_get_eff_l1e, read from the tables Xen validated."""
    l3e = mm.read_entry(cr3_mfn, linear >> 30)
    if not l3e & PTE_P or not mm.frame_valid(pte_mfn(l3e)):
        return 0
    l2e = mm.read_entry(pte_mfn(l3e), (linear >> 21) & 0x1FF)
    if l2e & (PTE_P | 0x80) != PTE_P or not mm.frame_valid(pte_mfn(l2e)):
        return 0
    return mm.read_entry(pte_mfn(l2e), (linear >> 12) & 0x1FF)


# -- hypercalls -------------------------------------------------------------------------
@HYPERCALLS.handler(Hc.set_gdt, Param("frame_list"), Param("entries", "int"))
def set_gdt(ctx: "HypercallContext", frame_list: int, entries: int) -> int:
    """compat_set_gdt: `entries` descriptors in ceil(entries/512) frames whose u32 MFNs
    are at guest VA `frame_list`.  ABI: xen/arch/x86/pv/descriptor-tables.c."""
    if entries > FIRST_RESERVED_GDT_ENTRY:
        raise fail(Errno.EINVAL, f"{entries} entries: a guest GDT has at most "
                                 f"{FIRST_RESERVED_GDT_ENTRY}")
    nr_frames = -(-entries // DESC_ENTRIES_PER_PAGE)
    if frame_list + nr_frames * 4 > HYPERVISOR_VIRT_START_PAE:
        raise fail(Errno.EFAULT, f"frame list {frame_list:#x} reaches the hypervisor hole")
    data = ctx.guest.read(frame_list, nr_frames * 4)
    frames = list(struct.unpack(f"<{nr_frames}I", data))
    tables: DescriptorTables = ctx.hv.descriptors
    tables.set_gdt(ctx.vcpu.vcpu_id, frames, entries)
    ctx.hv.cpu.flush_tlb()
    ctx.note(f"GDT of vcpu{ctx.vcpu.vcpu_id}: {entries} entries in "
             + (", ".join(f"mfn {m:#x}" for m in frames) or "no frames"))
    return 0


@HYPERCALLS.handler(Hc.update_descriptor, Param("pa_lo"), Param("pa_hi"), Param("desc_lo"),
                    Param("desc_hi"))
def update_descriptor(ctx: "HypercallContext", pa_lo: int, pa_hi: int, desc_lo: int,
                      desc_hi: int) -> int:
    """compat_update_descriptor: write one checked descriptor at a machine address."""
    maddr = (pa_hi << 32) | pa_lo
    raw = (desc_hi << 32) | desc_lo
    tables: DescriptorTables = ctx.hv.descriptors
    tables.update_descriptor(maddr, raw)
    stored = ctx.hv.memory.read_u64(maddr)
    ctx.note(f"descriptor at maddr {maddr:#x} = {stored:#018x}"
             + (f" (guest asked {raw:#018x})" if stored != raw else ""))
    return 0
