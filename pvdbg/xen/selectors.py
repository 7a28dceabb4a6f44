"""Segment selectors as the CPU checks them when Xen loads one for the guest.

Xen reloads segment registers on the guest's behalf (the final iret of every return to
the guest loads CS and SS; a context switch reloads DS/ES/FS/GS in load_segments), and a
selector the CPU refuses sends the guest to its failsafe callback.  These checks give
the same verdict the CPU would, from the descriptor in the vcpu's GDT window or LDT.
ABI: Intel SDM vol. 3 sections 5.5-5.8 (privilege checks on segment loads); XEN-PV-ABI.md
1.3, 5.3.
"""
from __future__ import annotations

from dataclasses import dataclass

from unicorn import x86_const as X

from ..machine.paging import PageWalkError, walk_pae

VECTOR_GP, VECTOR_NP, VECTOR_SS = 13, 11, 12


@dataclass(frozen=True)
class Descriptor:
    raw: int

    @property
    def present(self) -> bool:
        return bool(self.raw >> 47 & 1)

    @property
    def dpl(self) -> int:
        return self.raw >> 45 & 3

    @property
    def is_system(self) -> bool:
        return not self.raw >> 44 & 1

    @property
    def type(self) -> int:
        return self.raw >> 40 & 0xF

    @property
    def is_code(self) -> bool:
        return not self.is_system and bool(self.type & 8)

    @property
    def readable(self) -> bool:          # code: R bit; data: always
        return not self.is_code or bool(self.type & 2)

    @property
    def writable(self) -> bool:          # data: W bit
        return not self.is_code and not self.is_system and bool(self.type & 2)

    @property
    def conforming(self) -> bool:
        return self.is_code and bool(self.type & 4)

    @property
    def base(self) -> int:
        return (self.raw >> 16 & 0xFFFFFF) | (self.raw >> 56 & 0xFF) << 24

    @property
    def limit(self) -> int:
        limit = (self.raw & 0xFFFF) | (self.raw >> 48 & 0xF) << 16
        if self.raw >> 55 & 1:
            limit = limit << 12 | 0xFFF
        return limit


@dataclass(frozen=True)
class SegmentFault:
    """The exception the CPU would raise loading a selector, and why."""
    vector: int
    error_code: int
    reason: str

    def describe(self, register: str, selector: int) -> str:
        names = {VECTOR_GP: "#GP", VECTOR_NP: "#NP", VECTOR_SS: "#SS"}
        return (f"loading {register} with {selector:#06x} raises "
                f"{names.get(self.vector, self.vector)}({self.error_code:#x}): {self.reason}")


def read_descriptor(hv, selector: int) -> Descriptor | SegmentFault:
    """The descriptor `selector` names in the current GDT or LDT (through the memory
    manager's descriptor tables when the hypervisor has them: LDT pages map lazily)."""
    tables = getattr(hv, "descriptors", None)
    if tables is not None:
        raw = tables.descriptor(hv.current.vcpu_id, selector)
        if raw is None:
            return SegmentFault(VECTOR_GP, selector & ~3,
                                f"entry {selector >> 3} is beyond the "
                                f"{'LDT' if selector & 4 else 'GDT'} or unreadable")
        return Descriptor(raw)
    index_off = selector & ~7
    if selector & 4:
        _sel, base, limit, _flags = hv.cpu.uc.reg_read(X.UC_X86_REG_LDTR)
        table = "LDT"
    else:
        base, limit = hv.cpu.gdtr()
        table = "GDT"
    if index_off + 7 > limit:
        return SegmentFault(VECTOR_GP, selector & ~3,
                            f"entry {selector >> 3} is beyond the {table} limit {limit:#x}")
    va = (base + index_off) & 0xFFFFFFFF
    try:
        walk = walk_pae(hv.memory, hv.cr3, va)
    except PageWalkError as exc:
        return SegmentFault(VECTOR_GP, selector & ~3, f"{table} entry not mapped: {exc.reason}")
    return Descriptor(hv.memory.read_u64(walk.maddr))


def check_data_selector(hv, selector: int, cpl: int) -> SegmentFault | None:
    """mov to DS/ES/FS/GS at `cpl`; a null selector always loads."""
    if selector & ~3 == 0:
        return None
    desc = read_descriptor(hv, selector)
    if isinstance(desc, SegmentFault):
        return desc
    code = selector & ~3
    if desc.is_system:
        return SegmentFault(VECTOR_GP, code, "a system descriptor, not a data segment")
    if not desc.readable:
        return SegmentFault(VECTOR_GP, code, "an execute-only code segment")
    if not desc.conforming and desc.dpl < max(cpl, selector & 3):
        return SegmentFault(VECTOR_GP, code,
                            f"DPL {desc.dpl} is below max(CPL {cpl}, RPL {selector & 3})")
    if not desc.present:
        return SegmentFault(VECTOR_NP, code, "the descriptor is not present")
    return None


def check_stack_selector(hv, selector: int, ring: int) -> SegmentFault | None:
    """Loading SS for code running at `ring` (iret, inter-ring transfer)."""
    code = selector & ~3
    if code == 0:
        return SegmentFault(VECTOR_GP, 0, "a null stack segment")
    if selector & 3 != ring:
        return SegmentFault(VECTOR_GP, code, f"RPL {selector & 3} is not the new CPL {ring}")
    desc = read_descriptor(hv, selector)
    if isinstance(desc, SegmentFault):
        return desc
    if not desc.writable:
        return SegmentFault(VECTOR_GP, code, "not a writable data segment")
    if desc.dpl != ring:
        return SegmentFault(VECTOR_GP, code, f"DPL {desc.dpl} is not the new CPL {ring}")
    if not desc.present:
        return SegmentFault(VECTOR_SS, code, "the descriptor is not present")
    return None


def check_code_selector(hv, selector: int) -> SegmentFault | None:
    """Loading CS for a return to ring RPL (iret)."""
    code = selector & ~3
    if code == 0:
        return SegmentFault(VECTOR_GP, 0, "a null code segment")
    desc = read_descriptor(hv, selector)
    if isinstance(desc, SegmentFault):
        return desc
    rpl = selector & 3
    if not desc.is_code:
        return SegmentFault(VECTOR_GP, code, "not a code segment")
    if desc.conforming and desc.dpl > rpl:
        return SegmentFault(VECTOR_GP, code, f"conforming DPL {desc.dpl} above RPL {rpl}")
    if not desc.conforming and desc.dpl != rpl:
        return SegmentFault(VECTOR_GP, code, f"DPL {desc.dpl} is not RPL {rpl}")
    if not desc.present:
        return SegmentFault(VECTOR_NP, code, "the descriptor is not present")
    return None


def segment_base(hv, selector: int) -> int:
    """Base address of a data/stack selector (0 when it cannot be read)."""
    desc = read_descriptor(hv, selector)
    return 0 if isinstance(desc, SegmentFault) else desc.base
