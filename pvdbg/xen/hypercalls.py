"""The hypercall table: number -> typed handler, filled by decorators.

Each handler declares its parameters once (names, and how to show them); dispatch,
argument decoding for the trace, and -ENOSYS for anything unregistered derive from the
table.  ABI: xen/include/hypercall-defs.c (pv32 column), xen/arch/x86/pv/hypercall.c.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable

from .constants import Errno, Hc

if TYPE_CHECKING:
    from .hypervisor import HypercallContext


@dataclass(frozen=True)
class Param:
    """One hypercall argument: its name and how to decode it (an IntEnum or 'hex'/'int')."""
    name: str
    kind: type[IntEnum] | str = "hex"

    def decode(self, value: int) -> Any:
        if isinstance(self.kind, type) and issubclass(self.kind, IntEnum):
            try:
                return self.kind(value).name
            except ValueError:
                return value
        if self.kind == "int":
            return value - (1 << 32) if value & 0x80000000 else value
        return value


@dataclass(frozen=True)
class HypercallSpec:
    number: int
    name: str
    fn: Callable[..., int]
    params: tuple[Param, ...] = field(default_factory=tuple)

    def decode_args(self, raw: tuple[int, ...]) -> dict[str, Any]:
        return {p.name: p.decode(v) for p, v in zip(self.params, raw)}


class HypercallTable:
    def __init__(self) -> None:
        self._specs: dict[int, HypercallSpec] = {}

    def handler(self, number: Hc, *params: Param):
        def register(fn: Callable[..., int]) -> Callable[..., int]:
            assert number not in self._specs, number.name
            self._specs[int(number)] = HypercallSpec(int(number), number.name, fn, params)
            return fn
        return register

    def get(self, number: int) -> HypercallSpec | None:
        return self._specs.get(number)

    def __contains__(self, number: int) -> bool:
        return number in self._specs

    def names(self) -> list[str]:
        return sorted(s.name for s in self._specs.values())

    @staticmethod
    def name_of(number: int) -> str:
        try:
            return Hc(number).name
        except ValueError:
            return f"hypercall_{number}"


HYPERCALLS = HypercallTable()


class HypercallError(Exception):
    """A handler's refusal: the hypercall returns -errno; `why` goes in the trace."""

    def __init__(self, errno: Errno, why: str = "") -> None:
        self.errno = errno
        self.why = why
        super().__init__(f"-{errno.name}: {why}" if why else f"-{errno.name}")


def fail(errno: Errno, why: str = "") -> HypercallError:
    return HypercallError(errno, why)

