"""Decoding of the memory operands and branch targets of one x86 instruction, for the
hypervisor paths that must know what a faulting instruction was doing: the call-gate
emulation (an indirect far call's m16:32 operand) and the private-area limit faults
(which linear addresses an access through a segment would touch).

Capstone does the decoding (prefixes, ModRM, SIB, 16-bit addressing); this module turns
its operands into (segment register, offset, size, write) accesses.
ABI: Intel SDM vol. 2 sections 2.1-2.2 (instruction format), vol. 1 section 3.7.5
(default segments); xen/arch/x86/x86_emulate (x86_insn_operand_ea).
"""
from __future__ import annotations

from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs
from capstone import x86 as cx

PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
SEGMENT_PREFIXES = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
MAX_INSN = 15


class DecodeError(Exception):
    """The bytes are not one decodable instruction."""


@dataclass(frozen=True)
class MemOperand:
    """An explicit memory operand: segment register name, offset (wrapped to the
    address size), size in bytes."""
    segment: str
    offset: int
    size: int
    write: bool


@dataclass(frozen=True)
class Insn:
    """One decoded instruction with what the fault paths need."""
    mnemonic: str
    text: str
    length: int
    raw: bytes
    opcode: int                 # first opcode byte after the prefixes
    modrm: int | None           # the ModRM byte, when the opcode has one
    operand_size: int           # bytes: 2 or 4
    address_size: int           # bytes: 2 or 4
    segment_override: str | None
    memory: tuple[MemOperand, ...]
    immediates: tuple[int, ...]
    insn_id: int


class X86Decoder:
    """Capstone handles for 32- and 16-bit code, with operand detail."""

    def __init__(self) -> None:
        self._cs32 = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs32.detail = True
        self._cs16 = Cs(CS_ARCH_X86, CS_MODE_16)
        self._cs16.detail = True

    def __deepcopy__(self, memo) -> "X86Decoder":
        return self

    def decode(self, code: bytes, regs: dict[str, int], big: bool = True) -> Insn:
        """Decode the instruction at the start of `code`; memory operands are resolved
        against `regs` (general registers by name)."""
        cs = self._cs32 if big else self._cs16
        insn = next(cs.disasm(code, 0, 1), None)
        if insn is None:
            raise DecodeError(f"undecodable bytes {code[:8].hex()}")
        raw = bytes(insn.bytes)
        i = 0
        override = None
        opsize_prefix = addrsize_prefix = False
        while i < len(raw) and raw[i] in PREFIXES:
            byte = raw[i]
            if byte in SEGMENT_PREFIXES:
                override = SEGMENT_PREFIXES[byte]
            elif byte == 0x66:
                opsize_prefix = True
            elif byte == 0x67:
                addrsize_prefix = True
            i += 1
        if i >= len(raw):
            raise DecodeError(f"prefixes only: {raw.hex()}")
        opcode = raw[i]
        modrm = raw[i + 1] if insn.modrm_offset else None
        operand_size = 2 if big == opsize_prefix else 4
        address_size = 2 if big == addrsize_prefix else 4
        mask = (1 << (8 * address_size)) - 1
        memory: list[MemOperand] = []
        immediates: list[int] = []
        for n, op in enumerate(insn.operands):
            if op.type == cx.X86_OP_IMM:
                immediates.append(op.imm & 0xFFFFFFFF)
            elif op.type == cx.X86_OP_MEM:
                mem = op.mem
                offset = mem.disp
                base = insn.reg_name(mem.base) if mem.base else None
                if base:
                    offset += _reg_value(regs, base)
                if mem.index:
                    offset += _reg_value(regs, insn.reg_name(mem.index)) * mem.scale
                segment = override or ("ss" if base in ("esp", "ebp", "sp", "bp") else "ds")
                write = bool(op.access & 2) if hasattr(op, "access") else n == 0
                memory.append(MemOperand(segment, offset & mask, op.size, write))
        return Insn(insn.mnemonic, f"{insn.mnemonic} {insn.op_str}".strip(), insn.size, raw,
                    opcode, modrm, operand_size, address_size, override, tuple(memory),
                    tuple(immediates), insn.id)


def _reg_value(regs: dict[str, int], name: str) -> int:
    """Value of a 32-, 16- or 8-bit general register (eip for eip-relative forms)."""
    if name in regs:
        return regs[name]
    if len(name) == 2 and name in ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di"):
        return regs["e" + name] & 0xFFFF
    raise DecodeError(f"register {name} in an address")
