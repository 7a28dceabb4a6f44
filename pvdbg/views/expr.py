"""Address expressions typed at the REPL and in monitor commands.

`start_kernel`, `start_kernel+0x10`, `0xc0001000`, `$esp+8`, `$eip`, `1234`, `sym-4`:
terms are numbers (Python syntax: 0x.., 0o.., decimal), guest symbols or `$register`,
joined by `+` and `-`.  Results are guest addresses of the guest's width (32 or 64 bits).
"""
from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(r"\s*(?:(?P<op>[+-])|(?P<term>\$?[A-Za-z_.][\w.$@]*|\d[\w]*))")


class AddressError(ValueError):
    """An address expression that cannot be evaluated (one line)."""


def eval_address(text: str, lookup_symbol: Callable[[str], int | None],
                 read_register: Callable[[str], int] | None = None, *,
                 bits: int = 32) -> int:
    """Evaluate `text` to a `bits`-bit address; raises AddressError."""
    source = text.strip()
    if not source:
        raise AddressError("an address is needed")
    pos = 0
    total = 0
    sign = 1
    expect_term = True
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None or m.end() == pos:
            raise AddressError(f"cannot parse address {text!r} at {source[pos:]!r}")
        pos = m.end()
        if m.group("op"):
            if expect_term:
                if m.group("op") == "-":
                    sign = -sign
                continue
            sign = 1 if m.group("op") == "+" else -1
            expect_term = True
            continue
        if not expect_term:
            raise AddressError(f"missing + or - before {m.group('term')!r} in {text!r}")
        total += sign * _term(m.group("term"), lookup_symbol, read_register)
        sign = 1
        expect_term = False
    if expect_term:
        raise AddressError(f"address {text!r} ends with an operator")
    return total & ((1 << bits) - 1)


def _term(word: str, lookup_symbol, read_register) -> int:
    if word.startswith("$"):
        if read_register is None:
            raise AddressError(f"registers are not available here ({word})")
        try:
            return read_register(word[1:].lower())
        except KeyError:
            raise AddressError(f"no register {word}") from None
    if word[0].isdigit():
        try:
            return int(word, 0)
        except ValueError:
            raise AddressError(f"bad number {word!r}") from None
    address = lookup_symbol(word)
    if address is None:
        raise AddressError(f"no symbol {word!r} in the guest image")
    return address


__all__ = ["AddressError", "eval_address"]
