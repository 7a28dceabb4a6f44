"""Breakpoints, watchpoints and catchpoints on the running machine.

Each breakpoint is a Unicorn code hook bounded to its one address, each watchpoint a
memory hook bounded to its range, so they cost only where they are; nothing is hooked
when nothing is set.  Catchpoints listen to the hypervisor's trace records.

Unicorn facts this relies on (tests/test_debug.py):
* `emu_stop` in a bounded code hook stops before that instruction executes;
* a code hook only reaches blocks translated after it was added, so adding a breakpoint
  drops the translated code at its address;
* with the CPU's own MMU (UC_TLB_CPU) memory hooks see machine addresses, so a
  watchpoint is placed on the machine bytes its guest VAs map to when it is set (it
  follows the frame, not the VA, if the guest later remaps the page);
* `emu_stop` in a memory-write hook stops after the store but before the instruction
  retires (EIP still at it, registers not written back).  A watchpoint hit therefore
  undoes the store and re-executes the instruction once with watchpoints muted, so the
  guest stops after the instruction, with every effect applied exactly once, as an x86
  data breakpoint reports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

from .trace import TraceKind, TraceRecord


class WatchKind(StrEnum):
    write = "write"
    read = "read"
    access = "access"


@dataclass
class Watchpoint:
    kind: WatchKind
    guest_va: int
    length: int
    hooks: list[int] = field(default_factory=list)
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (maddr, va, length)

    def guest_va_of(self, maddr: int) -> int:
        for start, va, length in self.pieces:
            if start <= maddr < start + length:
                return va + (maddr - start)
        return self.guest_va


@dataclass(frozen=True)
class Hit:
    """What stopped the guest inside a hook."""
    kind: str                   # "breakpoint" | "watch" | "catch"
    address: int = 0            # breakpoint VA or watched data VA
    watch_kind: WatchKind | None = None
    message: str = ""
    record: TraceRecord | None = None


@dataclass
class Catchpoint:
    """Stop when a trace record matches: kind in `kinds` and `match(record)`."""
    number: int
    description: str
    kinds: frozenset[TraceKind]
    match: Callable[[TraceRecord], bool]
    hits: int = 0


class DebugState:
    """The debugger's hooks on one CPU and hypervisor."""

    def __init__(self, hv) -> None:
        self.hv = hv
        self.cpu = hv.cpu
        self.uc = hv.cpu.uc
        self.breakpoints: dict[int, int] = {}          # va -> hook handle
        self.watchpoints: dict[tuple[WatchKind, int, int], Watchpoint] = {}
        self.catchpoints: dict[int, Catchpoint] = {}
        self._next_catch = 1
        self.hit: Hit | None = None
        self.skip_breakpoint_at: int | None = None
        self.watch_muted = False
        self._undo: tuple[int, bytes] | None = None   # (guest va, old bytes) of a hit store
        hv.listeners.append(self)

    # -- breakpoints -------------------------------------------------------------
    def add_breakpoint(self, guest_va: int) -> None:
        if guest_va in self.breakpoints:
            return
        self.breakpoints[guest_va] = self.uc.hook_add(UC_HOOK_CODE, self._on_code,
                                                      begin=guest_va, end=guest_va)
        # Unicorn decides at translation time whether a block calls code hooks: drop
        # any block already translated over this address so the new hook is seen.
        self.cpu.invalidate_code(guest_va, guest_va + 1)

    def remove_breakpoint(self, guest_va: int) -> bool:
        handle = self.breakpoints.pop(guest_va, None)
        if handle is None:
            return False
        self.uc.hook_del(handle)
        return True

    def _on_code(self, uc, address: int, size: int, _data) -> None:
        if self.skip_breakpoint_at == address:
            self.skip_breakpoint_at = None
            return
        self.skip_breakpoint_at = None
        if address in self.breakpoints and self.hit is None:
            self.hit = Hit("breakpoint", address)
            self.cpu.uncount_current()
            self.cpu.stop()

    # -- watchpoints -------------------------------------------------------------
    def add_watchpoint(self, kind: WatchKind, guest_va: int, length: int) -> None:
        key = (kind, guest_va, length)
        if key in self.watchpoints:
            return
        wp = Watchpoint(kind, guest_va, length)
        done = 0
        while done < length:          # raises GuestFault for an unmapped VA
            va = guest_va + done
            chunk = min(length - done, 4096 - (va & 0xFFF))
            wp.pieces.append((self.hv.guest.translate(va).maddr, va, chunk))
            done += chunk
        for maddr, _va, chunk in wp.pieces:
            end = maddr + chunk - 1
            if kind in (WatchKind.write, WatchKind.access):
                wp.hooks.append(self.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write, wp,
                                                 begin=maddr, end=end))
            if kind in (WatchKind.read, WatchKind.access):
                wp.hooks.append(self.uc.hook_add(UC_HOOK_MEM_READ, self._on_read, wp,
                                                 begin=maddr, end=end))
        self.watchpoints[key] = wp
        # Translated code and cached TLB entries predate the hook: start afresh.
        self.uc.ctl_flush_tb()
        self.cpu.flush_tlb()

    def remove_watchpoint(self, kind: WatchKind, guest_va: int, length: int) -> bool:
        wp = self.watchpoints.pop((kind, guest_va, length), None)
        if wp is None:
            return False
        for handle in wp.hooks:
            self.uc.hook_del(handle)
        return True

    def _on_write(self, uc, access, address: int, size: int, value, wp: Watchpoint) -> None:
        if self.watch_muted or self.hit is not None:
            return
        self._undo = (address, self.hv.memory.read(address, size))
        self.hit = Hit("watch", wp.guest_va_of(address), wp.kind)
        self.cpu.uncount_current()
        self.cpu.stop()

    def _on_read(self, uc, access, address: int, size: int, value, wp: Watchpoint) -> None:
        if self.watch_muted or self.hit is not None:
            return
        self._undo = None
        self.hit = Hit("watch", wp.guest_va_of(address),
                       WatchKind.read if wp.kind is WatchKind.read else WatchKind.access)
        self.cpu.uncount_current()
        self.cpu.stop()

    def finish_watch_hit(self, step_one: Callable[[], None]) -> None:
        """After a watch hit: undo the store, re-execute the instruction with watchpoints
        muted, so the guest stops after it with its effects applied once."""
        if self._undo is not None:
            maddr, old = self._undo
            self.hv.memory.write(maddr, old)
            self._undo = None
        self.watch_muted = True
        try:
            step_one()
        finally:
            self.watch_muted = False

    # -- catchpoints ---------------------------------------------------------------
    def add_catchpoint(self, description: str, kinds: set[TraceKind],
                       match: Callable[[TraceRecord], bool]) -> Catchpoint:
        cp = Catchpoint(self._next_catch, description, frozenset(kinds), match)
        self.catchpoints[cp.number] = cp
        self._next_catch += 1
        return cp

    def remove_catchpoint(self, number: int) -> bool:
        return self.catchpoints.pop(number, None) is not None

    def on_trace(self, record: TraceRecord) -> None:
        if self.hit is not None or not self.catchpoints:
            return
        for cp in self.catchpoints.values():
            if record.kind in cp.kinds and cp.match(record):
                cp.hits += 1
                self.hit = Hit("catch", record.eip,
                               message=f"catchpoint {cp.number} ({cp.description}): "
                                       f"{describe_record(record)}", record=record)
                self.cpu.stop()
                return

    def clear_all(self) -> None:
        for va in list(self.breakpoints):
            self.remove_breakpoint(va)
        for key in list(self.watchpoints):
            self.remove_watchpoint(*key)
        self.catchpoints.clear()


def describe_record(record: TraceRecord) -> str:
    if record.kind in (TraceKind.hypercall, TraceKind.multicall_entry):
        args = ", ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
                         for k, v in record.args.items())
        where = " in a multicall" if record.kind is TraceKind.multicall_entry else ""
        res = "" if record.result is None else f" = {record.error or record.result}"
        return f"hypercall {record.name}({args}){res}{where}"
    return f"{record.kind} {record.name} {record.detail}".strip()


class CatchSpecError(ValueError):
    """A catchpoint description that cannot be understood (one line)."""


CATCH_HELP = ("catch hypercall NAME|NUMBER | catch trap VECTOR|NAME | catch upcall [PORT] | "
              "catch pagetype [MFN] | catch shutdown | catch crash")


def parse_catch_spec(text: str) -> tuple[str, set[TraceKind], Callable[[TraceRecord], bool]]:
    """'hypercall mmu_update' -> (description, record kinds, predicate)."""
    from .xen.constants import Hc
    words = text.split()
    if not words:
        raise CatchSpecError(f"what to catch? {CATCH_HELP}")
    what, rest = words[0], words[1:]
    if what == "hypercall":
        if len(rest) != 1:
            raise CatchSpecError("catch hypercall takes one name or number")
        arg = rest[0]
        try:
            name = Hc(int(arg, 0)).name
        except ValueError:
            name = arg
            if name not in Hc.__members__:
                raise CatchSpecError(f"unknown hypercall {arg!r}") from None
        return (f"hypercall {name}", {TraceKind.hypercall, TraceKind.multicall_entry},
                lambda r, name=name: r.name == name)
    if what == "trap":
        if len(rest) != 1:
            raise CatchSpecError("catch trap takes one vector (number or name like #GP)")
        names = {"#DE": 0, "#DB": 1, "#BP": 3, "#OF": 4, "#BR": 5, "#UD": 6, "#NM": 7, "#DF": 8,
                 "#TS": 10, "#NP": 11, "#SS": 12, "#GP": 13, "#PF": 14, "#MF": 16, "#AC": 17,
                 "#MC": 18, "#XM": 19}
        key = rest[0].upper()
        try:
            vector = names[key] if key in names else int(rest[0], 0)
        except ValueError:
            raise CatchSpecError(f"bad trap vector {rest[0]!r}") from None
        if not 0 <= vector <= 255:
            raise CatchSpecError(f"trap vector {vector} is outside 0..255")
        return (f"trap {vector}", {TraceKind.trap, TraceKind.emulation, TraceKind.crash},
                lambda r, v=vector: r.args.get("vector") == v)
    if what == "upcall":
        port = None
        if rest:
            try:
                port = int(rest[0], 0)
            except ValueError:
                raise CatchSpecError(f"bad port {rest[0]!r}") from None
        return ("upcall" + (f" port {port}" if port is not None else ""), {TraceKind.upcall},
                lambda r, p=port: p is None or p in r.args.get("ports", ()))
    if what == "pagetype":
        mfn = None
        if rest:
            try:
                mfn = int(rest[0], 0)
            except ValueError:
                raise CatchSpecError(f"bad mfn {rest[0]!r}") from None
        return ("page-type change" + (f" of mfn {mfn:#x}" if mfn is not None else ""),
                {TraceKind.page_type}, lambda r, m=mfn: m is None or r.args.get("mfn") == m)
    if what == "shutdown":
        return "shutdown", {TraceKind.shutdown}, lambda r: True
    if what == "crash":
        return "domain crash", {TraceKind.crash}, lambda r: True
    raise CatchSpecError(f"unknown catchpoint {what!r}: {CATCH_HELP}")
