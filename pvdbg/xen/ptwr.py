"""Writable pagetables (VMASST_TYPE_writable_pagetables) and the rest of Xen's #PF
fix-ups for a PV guest.

A ring-1 write to a page that is mapped read-only because it is one of the domain's
validated L1 pagetables faults; Xen decodes the instruction, checks the new entry with
the L1 rules, and performs the write (or cmpxchg) itself, then resumes the guest after
the instruction.  Only one naturally aligned 1/2/4/8-byte access inside the faulting page
is emulated; a sub-word write is merged into the 64-bit entry; a 4-byte write of the
high half that yields an invalid entry is stored with P clear (the guest is expected to
write the low half next).  Writes to L2/L3 pages, and every fault without the assist,
go to the guest as #PF.  Faults in the GDT/LDT windows of Xen's private area are
handled by descriptors.py.

The decoder covers what guests use on PTEs: mov, xchg, cmpxchg, cmpxchg8b, stos
(one iteration), and the read-modify-write forms of and/or/xor/add/sub/inc/dec/not and
bts/btr/btc.  Anything else is left to the guest as Xen's emulator would fail it.

ABI: xen/arch/x86/traps.c (fixup_page_fault), xen/arch/x86/pv/ro-page-fault.c
(pv_ro_page_fault, ptwr_emulated_update); XEN-PV-ABI.md 4.4.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import capstone
from capstone import x86_const as cx

from ..trace import TraceKind, TraceRecord
from .constants import HYPERVISOR_VIRT_START_PAE, Vmasst
from .descriptors import guest_l1e
from .guestmem import GuestFault
from .hypercalls import HypercallError
from .mm import PTE_P, PTE_RW, PageType, pte_mfn

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, Vcpu

PFEC_PRESENT = 1 << 0
PFEC_WRITE = 1 << 1
PFEC_USER = 1 << 2
PFEC_RSVD = 1 << 3
PFEC_FETCH = 1 << 4
EFLAGS_CF, EFLAGS_PF, EFLAGS_AF, EFLAGS_ZF = 1 << 0, 1 << 2, 1 << 4, 1 << 6
EFLAGS_SF, EFLAGS_IF, EFLAGS_DF, EFLAGS_OF = 1 << 7, 1 << 9, 1 << 10, 1 << 11
ARITH_FLAGS = EFLAGS_CF | EFLAGS_PF | EFLAGS_AF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF
MASK32 = 0xFFFFFFFF

# capstone register name -> (32-bit register, bit shift, width in bits)
_REGS: dict[str, tuple[str, int, int]] = {}
for _r32, _r16, _lo, _hi in (("eax", "ax", "al", "ah"), ("ebx", "bx", "bl", "bh"),
                             ("ecx", "cx", "cl", "ch"), ("edx", "dx", "dl", "dh")):
    _REGS.update({_r32: (_r32, 0, 32), _r16: (_r32, 0, 16), _lo: (_r32, 0, 8),
                  _hi: (_r32, 8, 8)})
for _r32, _r16 in (("esi", "si"), ("edi", "di"), ("ebp", "bp"), ("esp", "sp")):
    _REGS.update({_r32: (_r32, 0, 32), _r16: (_r32, 0, 16)})
_SEG_REGS = {cx.X86_REG_CS: "cs", cx.X86_REG_DS: "ds", cx.X86_REG_ES: "es",
             cx.X86_REG_FS: "fs", cx.X86_REG_GS: "gs", cx.X86_REG_SS: "ss"}
_RMW = {"and", "or", "xor", "add", "sub", "inc", "dec", "not", "neg", "bts", "btr", "btc"}


@lru_cache(maxsize=1)
def _decoder() -> capstone.Cs:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    cs.detail = True
    return cs


class Unhandleable(Exception):
    """X86EMUL_UNHANDLEABLE: the fault goes to the guest; the message says why."""


def fixup_page_fault(hv: "Hypervisor", vcpu: "Vcpu", cr2: int, error_code: int) -> bool:
    """Xen's fixup_page_fault() for a PV vcpu: True if the fault was fixed (the guest
    resumes, at the same instruction or after an emulated one), False to bounce it."""
    cr2 &= MASK32
    if cr2 >= HYPERVISOR_VIRT_START_PAE:
        if error_code & (PFEC_USER | PFEC_RSVD):
            return False
        return hv.descriptors.handle_window_fault(vcpu.vcpu_id, cr2, error_code)
    regs = hv.cpu.frame_registers()
    if (regs["cs"] & 3) != 1 or not regs["eflags"] & EFLAGS_IF:
        return False
    if error_code & (PFEC_RSVD | PFEC_FETCH) or not error_code & PFEC_WRITE:
        return False
    if not error_code & PFEC_PRESENT:
        return False
    if not hv.domain.vm_assist >> Vmasst.writable_pagetables & 1:
        _note_unassisted_write(hv, vcpu, cr2, regs)
        return False
    return ptwr_do_page_fault(hv, vcpu, cr2, regs)


def _l1_target(hv: "Hypervisor", vcpu: "Vcpu", cr2: int) -> tuple[int, int] | None:
    """(pte, mfn) of the read-only present mapping of `cr2`, or None."""
    cr3 = hv.mm.vcpu_cr3[vcpu.vcpu_id]
    if cr3 is None:
        return None
    pte = guest_l1e(hv.mm, cr3, cr2)
    if pte & (PTE_P | PTE_RW) != PTE_P:
        return None
    return pte, pte_mfn(pte)


def _note_unassisted_write(hv: "Hypervisor", vcpu: "Vcpu", cr2: int, regs: dict[str, int]) -> None:
    """Say in the trace why a write to an L1 pagetable was not emulated."""
    found = _l1_target(hv, vcpu, cr2)
    if found is None or not hv.mm.frame_valid(found[1]):
        return
    pi = hv.mm.peek(found[1])
    if pi.type is not PageType.l1 or not pi.type_count:
        return
    _emit(hv, vcpu, regs["eip"], "ptwr", {"va": cr2, "mfn": found[1]}, None,
          f"write to {cr2:#x}: mfn {found[1]:#x} is an L1 pagetable mapped read-only and "
          "VMASST_TYPE_writable_pagetables is not enabled: the #PF goes to the guest")


def _emit(hv: "Hypervisor", vcpu: "Vcpu", eip: int, name: str, args: dict, result: int | None,
          detail: str) -> None:
    args = {"vector": 14, **args}      # the #PF Xen took (catch trap 14 / #PF sees it)
    hv.emit(TraceRecord(seq=hv.trace.next_seq(), kind=TraceKind.emulation, icount=hv.cpu.icount,
                        vcpu=vcpu.vcpu_id, eip=eip, name=name, args=args, result=result,
                        symbol=hv.symbolize(eip), detail=detail,
                        parent=hv.current_hypercall_seq))


def ptwr_do_page_fault(hv: "Hypervisor", vcpu: "Vcpu", cr2: int, regs: dict[str, int]) -> bool:
    """pv_ro_page_fault() / ptwr_do_page_fault(): emulate the write if `cr2` is mapped
    read-only to one of the domain's validated L1 pagetables."""
    found = _l1_target(hv, vcpu, cr2)
    if found is None:
        return False
    _pte, l1mfn = found
    mm = hv.mm
    if not mm.get_page(l1mfn):
        return False
    try:
        pi = mm.page(l1mfn)
        if pi.type is not PageType.l1 or not pi.validated or not pi.type_count:
            if pi.type in (PageType.l2, PageType.l3) and pi.type_count:
                _emit(hv, vcpu, regs["eip"], "ptwr", {"va": cr2, "mfn": l1mfn}, None,
                      f"write to {cr2:#x}: mfn {l1mfn:#x} is an {pi.type.label} pagetable; "
                      "only L1 writes are emulated, the #PF goes to the guest")
            return False
        emulator = PtwrEmulator(hv, vcpu, cr2, l1mfn, regs)
        try:
            emulator.run()
        except Unhandleable as why:
            _emit(hv, vcpu, regs["eip"], "ptwr", {"va": cr2, "mfn": l1mfn}, None,
                  f"write to L1 mfn {l1mfn:#x} at {cr2:#x} not emulated: {why}; "
                  "the #PF goes to the guest")
            return False
        return True
    finally:
        mm.put_page(l1mfn)


@dataclass
class _Access:
    linear: int
    size: int            # bytes


class PtwrEmulator:
    """One instruction's emulation against a read-only L1 pagetable."""

    def __init__(self, hv: "Hypervisor", vcpu: "Vcpu", cr2: int, l1mfn: int,
                 regs: dict[str, int]) -> None:
        self.hv = hv
        self.vcpu = vcpu
        self.cr2 = cr2
        self.l1mfn = l1mfn
        self.regs = dict(regs)
        self.changed: dict[str, int] = {}
        self.updates: list[str] = []

    # -- registers --------------------------------------------------------------------
    def reg(self, name: str) -> int:
        r32, shift, bits = _REGS[name]
        return (self.regs[r32] >> shift) & ((1 << bits) - 1)

    def set_reg(self, name: str, value: int) -> None:
        r32, shift, bits = _REGS[name]
        mask = ((1 << bits) - 1) << shift
        self.regs[r32] = (self.regs[r32] & ~mask) | ((value << shift) & mask)
        self.changed[r32] = self.regs[r32]

    def set_flags(self, flags: int, affected: int) -> None:
        self.regs["eflags"] = (self.regs["eflags"] & ~affected) | (flags & affected)
        self.changed["eflags"] = self.regs["eflags"]

    # -- the instruction ----------------------------------------------------------------
    def run(self) -> None:
        eip = self.regs["eip"]
        code = self._fetch(eip)
        insn = next(_decoder().disasm(code, eip, count=1), None)
        if insn is None:
            raise Unhandleable(f"cannot decode the instruction at {eip:#x}")
        self.text = f"{insn.mnemonic} {insn.op_str}".strip()
        mnemonic = insn.mnemonic.split()[-1]          # capstone spells "lock btr", "rep stosd"
        prefixes = set(insn.prefix)
        rep = cx.X86_PREFIX_REP in prefixes
        if rep and not mnemonic.startswith("stos"):
            raise Unhandleable(f"'{self.text}' has a rep prefix")
        next_eip = (eip + insn.size) & MASK32
        if mnemonic == "mov":
            self._mov(insn)
        elif mnemonic == "xchg":
            self._xchg(insn)
        elif mnemonic == "cmpxchg":
            self._cmpxchg(insn)
        elif mnemonic == "cmpxchg8b":
            self._cmpxchg8b(insn)
        elif mnemonic.startswith("stos"):
            if self._stos(insn, rep):
                next_eip = eip
        elif mnemonic in _RMW:
            self._rmw(insn, locked=cx.X86_PREFIX_LOCK in prefixes)
        else:
            raise Unhandleable(f"'{self.text}' is not a write the emulator handles")
        self.changed["eip"] = next_eip
        self.hv.cpu.write_many(self.changed)
        _emit(self.hv, self.vcpu, eip, "ptwr", {"va": self.cr2, "mfn": self.l1mfn,
                                                "insn": self.text}, 0,
              f"{self.text}: " + "; ".join(self.updates))

    def _fetch(self, eip: int) -> bytes:
        for length in (15, 8, 4, 2, 1):
            try:
                return self.hv.guest.read(eip, length)
            except GuestFault:
                continue
        raise Unhandleable(f"instruction at {eip:#x} is not readable")

    def _mem(self, insn) -> tuple[object, _Access]:
        mems = [op for op in insn.operands if op.type == cx.X86_OP_MEM]
        if len(mems) != 1:
            raise Unhandleable(f"'{self.text}' has no single memory operand")
        op = mems[0]
        return op, _Access(self._linear(insn, op), op.size)

    def _linear(self, insn, op) -> int:
        mem = op.mem
        ea = mem.disp
        if mem.base:
            ea += self.reg(insn.reg_name(mem.base))
        if mem.index:
            ea += self.reg(insn.reg_name(mem.index)) * mem.scale
        seg = _SEG_REGS.get(mem.segment)
        if seg is None:
            base_name = insn.reg_name(mem.base) if mem.base else ""
            seg = "ss" if base_name in ("esp", "ebp") else "ds"
        selector = self.regs[seg]
        base = self.hv.descriptors.segment_base(self.vcpu.vcpu_id, selector)
        return (base + ea) & MASK32

    def _operand_value(self, insn, op, size: int) -> int:
        if op.type == cx.X86_OP_REG:
            return self.reg(insn.reg_name(op.reg))
        if op.type == cx.X86_OP_IMM:
            return op.imm & ((1 << (size * 8)) - 1)
        raise Unhandleable(f"'{self.text}': unexpected operand")

    def _read(self, access: _Access) -> int:
        try:
            data = self.hv.guest.read(access.linear, access.size)
        except GuestFault as fault:
            raise Unhandleable(f"read of {access.linear:#x} faults ({fault.reason})") from None
        return int.from_bytes(data, "little")

    # -- instruction forms ----------------------------------------------------------------
    def _mov(self, insn) -> None:
        op, access = self._mem(insn)
        if insn.operands[0].type != cx.X86_OP_MEM:
            raise Unhandleable(f"'{self.text}' does not write memory")
        self.update(access, self._operand_value(insn, insn.operands[1], access.size))

    def _xchg(self, insn) -> None:
        op, access = self._mem(insn)
        reg_op = next(o for o in insn.operands if o.type == cx.X86_OP_REG)
        name = insn.reg_name(reg_op.reg)
        old = self._read(access)
        self.update(access, self.reg(name))
        self.set_reg(name, old)

    def _cmpxchg(self, insn) -> None:
        op, access = self._mem(insn)
        acc = {1: "al", 2: "ax", 4: "eax"}[access.size]
        expected = self.reg(acc)
        new = self._operand_value(insn, insn.operands[1], access.size)
        current = self.update(access, new, expected=expected)
        self.set_flags(_sub_flags(expected, current, access.size * 8), ARITH_FLAGS)
        if current != expected:
            self.set_reg(acc, current)

    def _cmpxchg8b(self, insn) -> None:
        op, access = self._mem(insn)
        access.size = 8
        expected = (self.reg("edx") << 32) | self.reg("eax")
        new = (self.reg("ecx") << 32) | self.reg("ebx")
        current = self.update(access, new, expected=expected)
        if current == expected:
            self.set_flags(EFLAGS_ZF, EFLAGS_ZF)
        else:
            self.set_flags(0, EFLAGS_ZF)
            self.set_reg("eax", current & MASK32)
            self.set_reg("edx", current >> 32)

    def _stos(self, insn, rep: bool) -> bool:
        """One iteration; True if a rep stos has iterations left (EIP stays)."""
        op, access = self._mem(insn)
        if rep and self.reg("ecx") == 0:
            return False
        acc = {1: "al", 2: "ax", 4: "eax"}[access.size]
        self.update(access, self.reg(acc))
        step = -access.size if self.regs["eflags"] & EFLAGS_DF else access.size
        self.set_reg("edi", (self.reg("edi") + step) & MASK32)
        if rep:
            self.set_reg("ecx", (self.reg("ecx") - 1) & MASK32)
            return self.reg("ecx") != 0
        return False

    def _rmw(self, insn, locked: bool) -> None:
        op, access = self._mem(insn)
        if insn.operands[0].type != cx.X86_OP_MEM:
            raise Unhandleable(f"'{self.text}' does not write memory")
        bits = access.size * 8
        mask = (1 << bits) - 1
        m = insn.mnemonic.split()[-1]
        src = self._operand_value(insn, insn.operands[1], access.size) \
            if len(insn.operands) > 1 else 0
        if m in ("bts", "btr", "btc"):
            if insn.operands[1].type == cx.X86_OP_REG:
                offset = src if src < (1 << (bits - 1)) else src - (1 << bits)
                access.linear = (access.linear + (offset >> 5) * 4 if bits == 32
                                 else access.linear + (offset >> 4) * 2) & MASK32
                bit = offset & (bits - 1)
            else:
                bit = src & (bits - 1)
            old = self._read(access)
            cf = (old >> bit) & 1
            new = {"bts": old | (1 << bit), "btr": old & ~(1 << bit), "btc": old ^ (1 << bit)}[m]
            self.update(access, new & mask, expected=old if locked else None)
            self.set_flags(cf, EFLAGS_CF)
            return
        old = self._read(access)
        if m in ("and", "or", "xor"):
            new = {"and": old & src, "or": old | src, "xor": old ^ src}[m] & mask
            flags, affected = _logic_flags(new, bits), ARITH_FLAGS
        elif m == "add":
            new = (old + src) & mask
            flags, affected = _add_flags(old, src, bits), ARITH_FLAGS
        elif m == "sub":
            new = (old - src) & mask
            flags, affected = _sub_flags(old, src, bits), ARITH_FLAGS
        elif m == "inc":
            new = (old + 1) & mask
            flags, affected = _add_flags(old, 1, bits), ARITH_FLAGS & ~EFLAGS_CF
        elif m == "dec":
            new = (old - 1) & mask
            flags, affected = _sub_flags(old, 1, bits), ARITH_FLAGS & ~EFLAGS_CF
        elif m == "neg":
            new = (-old) & mask
            flags = _sub_flags(0, old, bits)
            affected = ARITH_FLAGS
        else:                                                   # not
            new, flags, affected = (~old) & mask, 0, 0
        self.update(access, new, expected=old if locked else None)
        if affected:
            self.set_flags(flags, affected)

    # -- ptwr_emulated_update ---------------------------------------------------------------
    def update(self, access: _Access, value: int, expected: int | None = None) -> int:
        """Write (or cmpxchg, with `expected`) `value` at `access` through the L1 rules.
        Returns the value found in memory before the update (for cmpxchg)."""
        addr, size = access.linear, access.size
        if size not in (1, 2, 4, 8):
            raise Unhandleable(f"{size}-byte access")
        if (addr ^ self.cr2) & ~0xFFF or addr & (size - 1):
            raise Unhandleable(f"access of {size} bytes at {addr:#x} is not naturally aligned "
                               f"inside the faulting page {self.cr2 & ~0xFFF:#x}")
        mm = self.hv.mm
        index = (addr & 0xFFF) >> 3
        shift = (addr & 7) * 8
        width = (1 << (size * 8)) - 1
        full = mm.read_entry(self.l1mfn, index)
        new = (full & ~(width << shift)) | ((value & width) << shift)
        old_word = (full & ~(width << shift)) | (((expected or 0) & width) << shift)
        fixed_up = False
        if new & PTE_P:
            try:
                mm.get_page_from_l1e(new)
            except HypercallError as err:
                if size == 4 and addr & 4 and expected is None:
                    new &= ~PTE_P
                    fixed_up = True
                else:
                    raise Unhandleable(f"new entry {new:#x} refused: {err.why}") from None
        current = (full >> shift) & width
        if expected is not None and full != old_word:
            if new & PTE_P and not fixed_up:
                mm.put_page_from_l1e(new)
            self.updates.append(f"L1 mfn {self.l1mfn:#x} slot {index}: cmpxchg failed "
                                f"(found {full:#x})")
            return current
        mm.write_entry(self.l1mfn, index, new)
        mm.put_page_from_l1e(full)
        note = " (invalid PAE half stored with P clear)" if fixed_up else ""
        self.updates.append(f"L1 mfn {self.l1mfn:#x} slot {index}: {full:#x} -> {new:#x}{note}")
        return current


def _parity(value: int) -> int:
    return EFLAGS_PF if bin(value & 0xFF).count("1") % 2 == 0 else 0


def _szp(result: int, bits: int) -> int:
    flags = _parity(result)
    if result == 0:
        flags |= EFLAGS_ZF
    if result >> (bits - 1) & 1:
        flags |= EFLAGS_SF
    return flags


def _logic_flags(result: int, bits: int) -> int:
    return _szp(result, bits)


def _add_flags(a: int, b: int, bits: int) -> int:
    mask = (1 << bits) - 1
    raw = a + b
    res = raw & mask
    flags = _szp(res, bits)
    if raw >> bits:
        flags |= EFLAGS_CF
    if ((a ^ res) & (b ^ res)) >> (bits - 1) & 1:
        flags |= EFLAGS_OF
    if (a ^ b ^ res) & 0x10:
        flags |= EFLAGS_AF
    return flags


def _sub_flags(a: int, b: int, bits: int) -> int:
    mask = (1 << bits) - 1
    res = (a - b) & mask
    flags = _szp(res, bits)
    if (a & mask) < (b & mask):
        flags |= EFLAGS_CF
    if ((a ^ b) & (a ^ res)) >> (bits - 1) & 1:
        flags |= EFLAGS_OF
    if (a ^ b ^ res) & 0x10:
        flags |= EFLAGS_AF
    return flags
