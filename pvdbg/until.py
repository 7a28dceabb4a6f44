"""Run-until conditions for `Session.run_until`: typed conditions and a typed result.

A hypercall condition and a console condition are catchpoints (pvdbg.debug) on the
trace records, so the guest stops right after the hypercall that completed them; an
address is a breakpoint (the guest stops before that instruction); an instruction
count is the run's instruction bound; a shutdown is the domain's own stop.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from .debug import CatchSpecError, parse_catch_spec
from .trace import TraceKind, TraceRecord

if TYPE_CHECKING:
    from .session import Session, Stopped


@dataclass(frozen=True)
class HypercallDone:
    """Stop right after a hypercall (or a multicall entry) named `name` completes."""
    name: str


@dataclass(frozen=True)
class AtAddress:
    """Stop before the instruction at `guest_va` executes (`symbol` names it, if known)."""
    guest_va: int
    symbol: str | None = None


@dataclass(frozen=True)
class InstructionCount:
    """Stop when exactly `icount` instructions have retired since boot."""
    icount: int


@dataclass(frozen=True)
class ConsoleText:
    """Stop once `pattern` (a substring, or a compiled regex) appears in console output
    produced during this run_until call."""
    pattern: str | re.Pattern[str]


@dataclass(frozen=True)
class Shutdown:
    """Stop when the domain shuts down (`reason` like "poweroff", or any; a crash is
    SHUTDOWN_crash and counts as a shutdown with reason "crash")."""
    reason: str | None = None


Condition = Union[HypercallDone, AtAddress, InstructionCount, ConsoleText, Shutdown]


@dataclass(frozen=True)
class UntilResult:
    """How a run_until call ended.  `reached` is the condition met, or None when the
    guest stopped for another reason (see `stop`)."""
    stop: "Stopped"
    reached: Condition | None
    record: TraceRecord | None = None      # the hypercall/console record that matched
    console_match: str | None = None       # the console text that matched

    def __bool__(self) -> bool:
        return self.reached is not None


class UntilError(ValueError):
    """A run_until condition that cannot be set up (one line)."""


def conditions_from_keywords(session: "Session", conditions: tuple[Condition, ...], *,
                             hypercall: str | None = None, symbol: str | None = None,
                             address: int | None = None, icount: int | None = None,
                             console: str | re.Pattern[str] | None = None,
                             shutdown: bool | str = False) -> list[Condition]:
    """Keyword arguments of `Session.run_until` -> condition objects."""
    out = list(conditions)
    if hypercall is not None:
        out.append(HypercallDone(hypercall))
    if symbol is not None:
        out.append(AtAddress(resolve_symbol(session, symbol), symbol))
    if address is not None:
        out.append(AtAddress(address))
    if icount is not None:
        out.append(InstructionCount(icount))
    if console is not None:
        out.append(ConsoleText(console))
    if shutdown:
        out.append(Shutdown(shutdown if isinstance(shutdown, str) else None))
    for c in out:
        if not isinstance(c, (HypercallDone, AtAddress, InstructionCount, ConsoleText, Shutdown)):
            raise UntilError(f"not a run_until condition: {c!r}")
    if not out:
        raise UntilError("run_until needs a condition: hypercall=, symbol=, address=, "
                         "icount=, console= or shutdown=")
    return out


def resolve_symbol(session: "Session", spec: str) -> int:
    """'name' or 'name+0x10' -> guest VA."""
    name, plus, offset_text = spec.partition("+")
    try:
        offset = int(offset_text, 0) if plus else 0
    except ValueError:
        raise UntilError(f"bad symbol offset in {spec!r}") from None
    va = session.symbol(name.strip())
    if va is None:
        raise UntilError(f"no symbol named {name.strip()!r} in {session.image.path}")
    return va + offset


class _ConsoleWatch:
    """Incremental search of the console output produced after `start`."""

    def __init__(self, console: bytearray, pattern: str | re.Pattern[str]) -> None:
        self.console = console
        self.start = len(console)
        self.pattern = pattern
        self.scanned = self.start
        if isinstance(pattern, str):
            if not pattern:
                raise UntilError("console text to wait for is empty")
            try:
                self.needle: bytes | None = pattern.encode("latin-1")
            except UnicodeEncodeError:
                raise UntilError(f"console text {pattern!r} has characters the Xen console "
                                 "cannot carry") from None
        elif isinstance(pattern, re.Pattern):
            self.needle = None
        else:
            raise UntilError(f"console= takes a string or a compiled regex, not "
                             f"{type(pattern).__name__}")

    def search(self) -> str | None:
        if self.needle is not None:
            begin = max(self.start, self.scanned - len(self.needle) + 1)
            self.scanned = len(self.console)
            at = self.console.find(self.needle, begin)
            return None if at < 0 else self.needle.decode("latin-1")
        text = bytes(self.console[self.start:]).decode("latin-1")
        m = self.pattern.search(text)
        return None if m is None else m.group(0)


def run_until(session: "Session", conditions: list[Condition], max_insns: int | None,
              timeout: float | None) -> UntilResult:
    from .session import StopReason
    debug = session.debug
    matched: list[tuple[Condition, TraceRecord, str | None]] = []
    catch_numbers: list[int] = []
    added_breakpoints: list[int] = []
    targets: dict[int, AtAddress] = {}
    icount_target: InstructionCount | None = None
    shutdown_cond: Shutdown | None = None
    try:
        for cond in conditions:
            if isinstance(cond, HypercallDone):
                try:
                    desc, kinds, match = parse_catch_spec(f"hypercall {cond.name}")
                except CatchSpecError as exc:
                    raise UntilError(str(exc)) from None

                def on_hypercall(r, match=match, cond=cond):
                    if match(r):
                        matched.append((cond, r, None))
                        return True
                    return False
                catch_numbers.append(debug.add_catchpoint(f"until {desc}", kinds,
                                                          on_hypercall).number)
            elif isinstance(cond, ConsoleText):
                watch = _ConsoleWatch(session.hv.domain.console, cond.pattern)

                def on_console(r, watch=watch, cond=cond):
                    text = watch.search()
                    if text is not None:
                        matched.append((cond, r, text))
                        return True
                    return False
                catch_numbers.append(debug.add_catchpoint("until console text",
                                                          {TraceKind.console},
                                                          on_console).number)
            elif isinstance(cond, AtAddress):
                targets[cond.guest_va] = cond
                if cond.guest_va not in debug.breakpoints:
                    debug.add_breakpoint(cond.guest_va)
                    added_breakpoints.append(cond.guest_va)
                    # Unicorn decides at translation time whether a block calls the
                    # code hooks: drop any block already translated over this address.
                    session.cpu.invalidate_code(cond.guest_va, cond.guest_va + 1)
            elif isinstance(cond, InstructionCount):
                now = session.cpu.icount
                if now is None:
                    raise UntilError("instruction-count conditions need clock='icount'")
                if cond.icount <= now:
                    raise UntilError(f"instruction count {cond.icount} is not ahead of the "
                                     f"current count {now}")
                if icount_target is None or cond.icount < icount_target.icount:
                    icount_target = cond
            elif isinstance(cond, Shutdown):
                shutdown_cond = cond
        bound = max_insns
        if icount_target is not None:
            to_target = icount_target.icount - session.cpu.icount
            bound = to_target if bound is None else min(bound, to_target)
        stop = session.run(max_insns=bound, timeout=timeout)
    finally:
        for number in catch_numbers:
            debug.remove_catchpoint(number)
        for va in added_breakpoints:
            debug.remove_breakpoint(va)
    if matched and stop.reason is StopReason.catch:
        cond, record, text = matched[0]
        return UntilResult(stop, cond, record, text)
    if stop.reason is StopReason.breakpoint and stop.address in targets:
        return UntilResult(stop, targets[stop.address])
    if (stop.reason is StopReason.limit and icount_target is not None
            and session.cpu.icount is not None and session.cpu.icount >= icount_target.icount):
        return UntilResult(stop, icount_target)
    if shutdown_cond is not None and stop.reason in (StopReason.shutdown, StopReason.crash):
        reason = session.shutdown_reason
        if shutdown_cond.reason is None or (reason is not None
                                            and reason.name == shutdown_cond.reason):
            return UntilResult(stop, shutdown_cond)
    return UntilResult(stop, None)
