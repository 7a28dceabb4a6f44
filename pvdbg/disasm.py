"""Capstone disassembly of guest code (32-bit)."""
from __future__ import annotations

from functools import lru_cache

import capstone


@lru_cache(maxsize=1)
def _engine() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def disassemble_one(code: bytes, address: int) -> tuple[bytes, str]:
    """(instruction bytes, 'mnemonic operands') of the first instruction in `code`."""
    for insn in _engine().disasm(code, address, count=1):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        return bytes(insn.bytes), text
    return code[:1], "(bad)"


def disassemble(code: bytes, address: int, count: int) -> list[tuple[int, bytes, str]]:
    out = []
    for insn in _engine().disasm(code, address, count=count):
        out.append((insn.address, bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()))
    return out
