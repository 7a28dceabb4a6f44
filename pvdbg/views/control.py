"""One owner for the engine when several front ends share a Session (REPL + GDB stub).

`Controller` serialises every engine access with one lock and knows who runs the guest
(nobody, the REPL's worker thread, or gdb's resume).  The REPL starts runs with `start`
(a worker thread) and inspects with `inspect()`; the stub's target goes through
`SharedSessionTarget`, which takes the same lock, so gdb and the REPL never run the guest
at once and both see every stop.  `request_stop` never takes the lock (it is how a run
is interrupted).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from ..session import Session, SessionError, StopReason, Stopped
from ..stub.engine import SessionTarget
from ..stub.target import BreakpointKind, ResumeActions, StopEvent

GDB_ATTACH_STOP_TIMEOUT_S = 10.0
LOCK_POLL_S = 0.05


class Runner(StrEnum):
    """Who is running the guest right now."""
    repl = "repl"
    gdb = "gdb"


class EngineBusy(Exception):
    """The engine cannot do that now (the guest runs, or gdb controls it); one line."""


@dataclass(frozen=True)
class StopNotice:
    """A finished run, as every front end hears about it."""
    stop: Stopped | None
    runner: Runner
    error: str | None = None     # the run ended with an engine error instead of a stop


class Controller:
    """Lock and run ownership over one Session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._lock = threading.Lock()          # held by whoever touches the engine
        self._cond = threading.Condition()     # guards runner / gdb_attached
        self.runner: Runner | None = None
        self.gdb_attached = False
        self.gdb_breakpoints: set[int] = set()
        self.gdb_watchpoints: set[tuple[str, int, int]] = set()
        self.repl_breakpoints: set[int] = set()       # VAs the REPL owns in the engine
        self.repl_watchpoints: set[tuple[str, int, int]] = set()
        self.listeners: list[Callable[[StopNotice], None]] = []
        self.last_notice: StopNotice | None = None
        self.interrupted = threading.Event()   # REPL actions that loop check it
        self._worker: threading.Thread | None = None

    # -- state ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner is not None

    def _notify(self, notice: StopNotice) -> None:
        """Listeners run with the engine held (they may read it) and must not block."""
        self.last_notice = notice
        for listener in list(self.listeners):
            listener(notice)

    # -- the REPL's side -----------------------------------------------------------
    @contextmanager
    def inspect(self) -> Iterator[Session]:
        """Engine access for a REPL command; raises EngineBusy while the guest runs.
        Never waits for a run: only for another command's brief access."""
        while not self._lock.acquire(timeout=LOCK_POLL_S):
            if self.runner is not None:
                raise EngineBusy(f"the guest is running ({self._runner_text()}): "
                                 "stop it first (stop or Ctrl-C)")
        try:
            if self.runner is not None:
                raise EngineBusy(f"the guest is running ({self._runner_text()}): "
                                 "stop it first (stop or Ctrl-C)")
            yield self.session
        finally:
            self._lock.release()

    def _runner_text(self) -> str:
        return "resumed by gdb" if self.runner is Runner.gdb else "resumed from the REPL"

    def start(self, action: Callable[[Session], Stopped], what: str = "run") -> threading.Thread:
        """Run `action(session)` in a worker thread holding the engine; listeners hear the
        stop.  Raises EngineBusy if the guest already runs or gdb controls execution."""
        with self._cond:
            if self.runner is not None:
                raise EngineBusy(f"the guest is already running ({self._runner_text()})")
            if self.gdb_attached:
                raise EngineBusy(f"gdb is attached and controls execution: {what} from gdb "
                                 "(the REPL can stop the guest, or inspect it)")
            self.runner = Runner.repl
            self.interrupted.clear()
        worker = threading.Thread(target=self._work, args=(action,), name="pvdbg-repl-run",
                                  daemon=True)
        self._worker = worker
        worker.start()
        return worker

    def _work(self, action: Callable[[Session], Stopped]) -> None:
        try:
            with self._lock:
                try:
                    notice = StopNotice(action(self.session), Runner.repl)
                except SessionError as exc:
                    notice = StopNotice(None, Runner.repl, str(exc))
                except Exception as exc:   # an engine bug must not kill the worker silently
                    notice = StopNotice(None, Runner.repl, f"{type(exc).__name__}: {exc}")
                self._notify(notice)
        finally:
            with self._cond:
                self.runner = None
                self._cond.notify_all()

    def request_stop(self) -> bool:
        """Interrupt whoever runs the guest (thread-safe); False if nothing runs."""
        if self.runner is None:
            return False
        self.interrupted.set()
        self.session.request_stop()
        return True

    def add_breakpoint(self, guest_va: int) -> None:
        """A REPL breakpoint (the engine has one hook per VA, shared with gdb's)."""
        with self.inspect() as session:
            session.add_breakpoint(guest_va)
            self.repl_breakpoints.add(guest_va)

    def remove_breakpoint(self, guest_va: int) -> None:
        with self.inspect() as session:
            self.repl_breakpoints.discard(guest_va)
            if guest_va not in self.gdb_breakpoints:
                session.remove_breakpoint(guest_va)

    def add_watchpoint(self, kind: str, guest_va: int, length: int) -> None:
        """Raises GuestFault when `guest_va` is not mapped."""
        with self.inspect() as session:
            session.add_watchpoint(kind, guest_va, length)
            self.repl_watchpoints.add((kind, guest_va, length))

    def remove_watchpoint(self, kind: str, guest_va: int, length: int) -> None:
        with self.inspect() as session:
            self.repl_watchpoints.discard((kind, guest_va, length))
            if (kind, guest_va, length) not in self.gdb_watchpoints:
                session.remove_watchpoint(kind, guest_va, length)

    @contextmanager
    def peek(self) -> Iterator[Session | None]:
        """The engine if nobody runs or holds it right now, else None (never blocks)."""
        if self.runner is not None or not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            yield self.session if self.runner is None else None
        finally:
            self._lock.release()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.runner is None, timeout)

    # -- gdb's side ----------------------------------------------------------------
    def _gdb_takes_over(self) -> None:
        """With _cond held: gdb is here; a run the REPL started stops first, as attaching
        a debugger stops a process."""
        self.gdb_attached = True
        if self.runner is Runner.repl:
            self.request_stop()
        if not self._cond.wait_for(lambda: self.runner is None, GDB_ATTACH_STOP_TIMEOUT_S):
            raise SessionError("the guest did not stop for gdb")

    @contextmanager
    def gdb_access(self) -> Iterator[Session]:
        """Engine access for one gdb packet."""
        with self._cond:
            self._gdb_takes_over()
        with self._lock:
            yield self.session

    @contextmanager
    def gdb_run(self) -> Iterator[Session]:
        """Hold the engine for one gdb resume; the REPL shows 'running (gdb)'."""
        with self._cond:
            self._gdb_takes_over()
            self.runner = Runner.gdb
        try:
            with self._lock:
                yield self.session
        finally:
            with self._cond:
                self.runner = None
                self._cond.notify_all()

    def gdb_stopped(self, stop: Stopped | None, error: str | None = None) -> None:
        """Called by the gdb side, engine held, when a gdb resume ends."""
        self._notify(StopNotice(stop, Runner.gdb, error))

    def gdb_detached(self) -> None:
        with self._cond:
            self.gdb_attached = False


class SharedSessionTarget(SessionTarget):
    """The stub's Target over a Session shared with the REPL through a Controller.

    Differences from SessionTarget: every call takes the Controller's lock; detach and
    kill remove only gdb's own breakpoints and watchpoints (the REPL's stay) and leave
    the guest to the REPL; the REPL hears about every gdb stop."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.session)
        self.controller = controller
        self._seen_stop: Stopped | None = None

    def vcpu_ids(self):
        with self.controller.gdb_access():
            return super().vcpu_ids()

    def describe_vcpu(self, vcpu: int) -> str:
        with self.controller.gdb_access():
            return super().describe_vcpu(vcpu)

    def read_register(self, vcpu: int, name: str) -> int:
        with self.controller.gdb_access():
            return super().read_register(vcpu, name)

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        with self.controller.gdb_access():
            super().write_register(vcpu, name, value)

    def read_memory(self, vcpu: int, guest_va: int, length: int) -> bytes:
        with self.controller.gdb_access():
            return super().read_memory(vcpu, guest_va, length)

    def write_memory(self, vcpu: int, guest_va: int, data: bytes) -> None:
        with self.controller.gdb_access():
            super().write_memory(vcpu, guest_va, data)

    def insert_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        with self.controller.gdb_access():
            super().insert_breakpoint(kind, guest_va, length)
            if kind in (BreakpointKind.SW, BreakpointKind.HW):
                self.controller.gdb_breakpoints.add(guest_va)
            else:
                self.controller.gdb_watchpoints.add((_WATCH_NAMES[kind], guest_va, length))

    def remove_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        controller = self.controller
        with controller.gdb_access():
            if kind in (BreakpointKind.SW, BreakpointKind.HW):
                own = self._sw_breakpoints if kind is BreakpointKind.SW else self._hw_breakpoints
                other = self._hw_breakpoints if kind is BreakpointKind.SW else self._sw_breakpoints
                own.discard(guest_va)
                if guest_va not in other:
                    controller.gdb_breakpoints.discard(guest_va)
                    if guest_va not in controller.repl_breakpoints:
                        self.session.remove_breakpoint(guest_va)
                return
            key = (_WATCH_NAMES[kind], guest_va, length)
            controller.gdb_watchpoints.discard(key)
            if key not in controller.repl_watchpoints:
                self.session.remove_watchpoint(*key)

    def resume(self, actions: ResumeActions) -> StopEvent:
        with self.controller.gdb_run():
            try:
                event = super().resume(actions)
            except SessionError as exc:
                self.controller.gdb_stopped(None, str(exc))
                raise
            self._seen_stop = self.session.last_stop
            self.controller.gdb_stopped(self.session.last_stop)
        return event

    def stop_state(self) -> StopEvent:
        """Why the guest is stopped, including stops the REPL's runs ended in."""
        with self.controller.gdb_access():
            last = self.session.last_stop
            if last is not None and last is not self._seen_stop:
                self._seen_stop = last
                self._stop = self._convert(last)
            return super().stop_state()

    def monitor(self, command: str) -> str:
        with self.controller.gdb_access():
            return super().monitor(command)

    def kill(self) -> None:
        """gdb's kill: the guest belongs to the REPL, so this only lets gdb go."""
        self.detach()

    def detach(self) -> None:
        controller = self.controller
        with controller.gdb_access():
            for guest_va in controller.gdb_breakpoints - controller.repl_breakpoints:
                self.session.remove_breakpoint(guest_va)
            for key in controller.gdb_watchpoints - controller.repl_watchpoints:
                self.session.remove_watchpoint(*key)
            controller.gdb_breakpoints.clear()
            controller.gdb_watchpoints.clear()
            self._sw_breakpoints.clear()
            self._hw_breakpoints.clear()
        controller.gdb_detached()


_WATCH_NAMES = {BreakpointKind.WRITE: "write", BreakpointKind.READ: "read",
                BreakpointKind.ACCESS: "access"}

__all__ = ["Controller", "Runner", "EngineBusy", "StopNotice", "SharedSessionTarget",
           "StopReason"]
