"""Writable pagetables for a 64-bit PV guest: a kernel write to a read-only mapped L1
table faults, and Xen emulates it as an mmu_update of that entry (validated, with its
references moved), then resumes after the instruction.

Emulated: 1- to 8-byte ``mov`` stores, ``xchg`` and ``cmpxchg`` (locked or not), ``and``,
``or`` and ``btr``/``bts`` with an immediate bit (Linux's clear_bit/set_bit on a PTE) to
one entry.  Anything else, or a value Xen refuses, leaves the #PF to the
guest, as a failed ptwr_emulated_update does.
ABI: xen/arch/x86/pv/ro-page-fault.c (ptwr_do_page_fault, ptwr_emulated_update).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone import x86_const as CX

from ...machine.memory import PAGE_SHIFT
from ...machine.paging import PageWalkError
from ...trace import TraceKind, TraceRecord
from ..hypercalls import HypercallError
from .mm import PageType
from .paging import walk_4level

if TYPE_CHECKING:
    from .hypervisor import Hypervisor64

PF_PRESENT, PF_WRITE, PF_USER = 1, 2, 4
EFLAGS_ZF = 1 << 6
_MASK64 = (1 << 64) - 1


class Ptwr64:
    def __init__(self, hv: "Hypervisor64") -> None:
        self.hv = hv
        self._cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self._cs.detail = True
        self.emulated = 0

    def fixup(self, cr2: int, error_code: int) -> bool:
        """True if the #PF at `cr2` was a pagetable write Xen emulated."""
        hv = self.hv
        if error_code & (PF_PRESENT | PF_WRITE) != PF_PRESENT | PF_WRITE:
            return False
        if not hv.current.pv.kernel_mode:
            return False
        try:
            walk = walk_4level(hv.memory, hv.cr3, cr2)
        except PageWalkError:
            return False
        mfn = walk.mfn
        mm = hv.mm
        if mm.count[mfn] == 0 or mm.type[mfn] != PageType.l1:
            return False
        cpu = hv.cpu
        rip = cpu.read("rip")
        first = min(15, 4096 - (rip & 0xFFF))
        try:
            code = hv.guest.read(rip, first)
        except Exception:
            return False
        insn = next(self._cs.disasm(code, rip, 1), None)
        if insn is None:
            return False
        return self._emulate(insn, cr2, walk.maddr)

    def _reg(self, reg_id: int) -> tuple[str, int]:
        name = self._cs.reg_name(reg_id)
        return name, self.hv.cpu.read(_full_name(name))

    def _emulate(self, insn, cr2: int, maddr: int) -> bool:
        hv = self.hv
        cpu = hv.cpu
        ops = insn.operands
        mnem = insn.mnemonic.removeprefix("lock ")
        if len(ops) != 2 or ops[0].type != CX.X86_OP_MEM:
            if mnem == "xchg" and len(ops) == 2 and ops[1].type == CX.X86_OP_MEM:
                ops = [ops[1], ops[0]]
            else:
                return False
        size = ops[0].size
        if size not in (1, 2, 4, 8):
            return False
        entry_maddr = maddr & ~7
        offset = maddr & 7
        if offset + size > 8:
            return False
        old_entry = hv.memory.read_u64(entry_maddr)
        shift = offset * 8
        field_mask = ((1 << (size * 8)) - 1) << shift
        old = (old_entry & field_mask) >> shift
        src = ops[1]
        if src.type == CX.X86_OP_REG:
            reg_name, value = self._reg(src.reg)
        elif src.type == CX.X86_OP_IMM:
            reg_name, value = None, src.imm
        else:
            return False
        value &= (1 << (size * 8)) - 1
        out: dict[str, int] = {}
        if mnem == "mov":
            new = value
        elif mnem == "xchg" and reg_name is not None:
            new = value
            out[_full_name(reg_name)] = old
        elif mnem == "cmpxchg" and reg_name is not None:
            expected = cpu.read("rax") & ((1 << (size * 8)) - 1)
            flags = cpu.read("rflags")
            if old == expected:
                new = value
                out["rflags"] = flags | EFLAGS_ZF
            else:
                new = old
                out["rflags"] = flags & ~EFLAGS_ZF
                out["rax"] = old if size == 8 else (cpu.read("rax") & ~0xFFFFFFFF) | old
        elif mnem == "and":
            new = old & value
        elif mnem == "or":
            new = old | value
        elif mnem in ("btr", "bts") and reg_name is None:
            bit = value % (size * 8)
            flags = cpu.read("rflags")
            out["rflags"] = flags | 1 if old >> bit & 1 else flags & ~1     # CF = the old bit
            new = old & ~(1 << bit) if mnem == "btr" else old | (1 << bit)
        else:
            return False
        new_entry = (old_entry & ~field_mask) | ((new << shift) & field_mask)
        try:
            if new_entry != old_entry:
                hv.mm.mod_entry(entry_maddr, new_entry)
        except HypercallError:
            return False
        out["rip"] = insn.address + insn.size
        cpu.write_many(out)
        hv.flush_guest_tlb()
        self.emulated += 1
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.emulation, icount=cpu.icount,
            vcpu=hv.current.vcpu_id, eip=insn.address, name="ptwr",
            args={"insn": f"{mnem} {insn.op_str}", "va": cr2,
                  "mfn": entry_maddr >> PAGE_SHIFT, "old": old_entry,
                  "new": hv.memory.read_u64(entry_maddr)},
            symbol=hv.symbolize(insn.address), detail="writable pagetable",
            parent=hv.current_hypercall_seq))
        return True


_HALF_TO_FULL = {f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")}


def _full_name(name: str) -> str:
    """The 64-bit register holding `name` (eax -> rax, r8d -> r8)."""
    if name in _HALF_TO_FULL:
        return _HALF_TO_FULL[name]
    if name.startswith("r") and name.endswith("d") and name[1:-1].isdigit():
        return name[:-1]
    return name
