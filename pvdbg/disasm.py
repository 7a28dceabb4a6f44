"""Capstone disassembly of guest code (32-bit, or 64-bit with bits=64)."""
from __future__ import annotations

from functools import lru_cache

import capstone


@lru_cache(maxsize=2)
def _engine(bits: int = 32) -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86,
                       capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)


def disassemble_one(code: bytes, address: int, bits: int = 32) -> tuple[bytes, str]:
    """(instruction bytes, 'mnemonic operands') of the first instruction in `code`."""
    for insn in _engine(bits).disasm(code, address, count=1):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        return bytes(insn.bytes), text
    return code[:1], "(bad)"


def disassemble(code: bytes, address: int, count: int,
                bits: int = 32) -> list[tuple[int, bytes, str]]:
    out = []
    for insn in _engine(bits).disasm(code, address, count=count):
        out.append((insn.address, bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()))
    return out
