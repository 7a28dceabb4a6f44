"""One owner for the engine when several front ends share a Session (REPL + GDB stub).

`Controller` serialises every engine access with one lock and knows who runs the guest
(nobody, the REPL's worker thread, or gdb's resume).  The REPL starts runs with `start`
(a worker thread) and inspects with `inspect()`; the stub's target goes through
`SharedSessionTarget`, which takes the same lock, so gdb and the REPL never run the guest
at once and both see every stop.  `request_stop` never takes the lock (it is how a run
is interrupted).

Who holds the guest while gdb is attached (gdb learns of a stop only as the answer to its
own resume, in all-stop and in non-stop mode alike, and gdb 13 fails an internal assertion
when told of a stop of a thread it already holds stopped):

* gdb holds it stopped (after its stop reply / %Stop): the REPL inspects; REPL runs are
  refused with one line saying how to hand the guest on (continue from gdb).
* gdb's resume is pending (gdb waits for its stop): the REPL's `stop` (Ctrl-C) pauses the
  guest *held by the REPL* while gdb keeps waiting; the REPL may then inspect, step and
  `continue` (which hands the guest back to gdb's pending resume: the next stop is
  gdb's); `stop --to-gdb`, gdb's own interrupt (^C, vCtrlC, vCont;t) or gdb leaving end
  gdb's resume with SIGINT at the current place.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from ..session import Session, SessionError, StopReason, Stopped
from ..stub.engine import SessionTarget
from ..stub.target import (BreakpointKind, ResumeActions, StopEvent, StopReason as GdbStop,
                           TargetError)

GDB_ATTACH_STOP_TIMEOUT_S = 10.0
LOCK_POLL_S = 0.05
STOP_RETRY_S = 0.05
"""A stop request is repeated this often while the run it targets goes on: one that
lands just before the engine starts its run is otherwise lost (Session.run clears it)."""
STOP_GIVE_UP_S = 10.0


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
    held: bool = False           # a gdb resume is paused, the REPL holds the guest
    note: str = ""               # a hand-over without a new stop (e.g. back to gdb)


class Controller:
    """Lock and run ownership over one Session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._lock = threading.RLock()         # held by whoever touches the engine (gdb-side
                                               # calls nest: SessionTarget methods call others)
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
        self.gdb_pending = False               # gdb waits for the stop of its resume
        self.held = False                      # ... and the REPL holds the guest meanwhile
        self.non_stop = False                  # gdb talks the non-stop protocol
        self._hold_requested = False           # the REPL's stop pauses gdb's resume
        self._gdb_interrupt = False            # gdb asked its resume to stop (^C)
        self._release: str | None = None       # "continue" or "to_gdb" ends a hold
        self._run_serial = 0                   # counts runs, for repeated stop requests

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

    def holder_text(self) -> str | None:
        """Who holds the guest, for the status line; None without gdb attached."""
        if not self.gdb_attached:
            return None
        mode = "non-stop" if self.non_stop else "all-stop"
        if self.held:
            return f"REPL holds it, gdb waits ({mode})"
        if self.gdb_pending:
            return f"gdb's resume ({mode})"
        return f"gdb holds it ({mode})"

    def _gdb_holds_message(self, what: str) -> str:
        if self.non_stop:
            return (f"gdb holds the guest stopped: {what} is gdb's to do (`continue &` there); "
                    "while gdb's continue runs, stop here holds the guest and continue "
                    "resumes it")
        return (f"gdb holds the guest stopped: {what} from gdb (or `set non-stop on` before "
                "`target remote`, then `continue &`); while gdb's continue runs, stop here "
                "holds the guest and continue resumes it")

    def start(self, action: Callable[[Session], Stopped],
              what: str = "run") -> threading.Thread | None:
        """Run `action(session)` in a worker thread holding the engine; listeners hear the
        stop.  While the REPL holds a guest gdb's resume waits for, `continue` hands it
        back to that resume instead (None returned).  Raises EngineBusy if the guest
        already runs or gdb holds it stopped."""
        with self._cond:
            if self.runner is not None:
                raise EngineBusy(f"the guest is already running ({self._runner_text()})")
            if self.gdb_attached and not self.held:
                raise EngineBusy(self._gdb_holds_message(what))
            if self.held and what == "continue":
                self._release = "continue"
                self._cond.notify_all()
                return None
            self.runner = Runner.repl
            self._run_serial += 1
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

    def request_stop(self, to_gdb: bool = False) -> bool:
        """The REPL's stop (thread-safe); False if there is nothing to stop.  A resume of
        gdb's is paused and held by the REPL, or with `to_gdb` ended with SIGINT for gdb
        (also from a hold)."""
        with self._cond:
            if self.runner is None and not (to_gdb and self.held):
                return False
            self.interrupted.set()
            if to_gdb and self.held:
                self._release = "to_gdb"
                self._cond.notify_all()
            elif self.runner is Runner.gdb and not to_gdb:
                self._hold_requested = True
            if self.runner is not None:
                self._stop_run()
        return True

    def _stop_run(self) -> None:
        """With _cond held: request_stop now, and again until this run ends."""
        serial = self._run_serial
        self.session.request_stop()

        def repeat() -> None:
            for _ in range(int(STOP_GIVE_UP_S / STOP_RETRY_S)):
                with self._cond:
                    if self._cond.wait_for(lambda: self.runner is None
                                           or self._run_serial != serial, STOP_RETRY_S):
                        return
                    self.session.request_stop()
        threading.Thread(target=repeat, name="pvdbg-stop-retry", daemon=True).start()

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
            self.interrupted.set()
            self.session.request_stop()
        if not self._cond.wait_for(lambda: self.runner is None, GDB_ATTACH_STOP_TIMEOUT_S):
            raise SessionError("the guest did not stop for gdb")

    @contextmanager
    def gdb_access(self) -> Iterator[Session]:
        """Engine access for one gdb packet.  While gdb's own resume is pending (gdb's
        packets then come only in non-stop mode) the guest is read as it is when the REPL
        holds it; a running guest raises TargetError (an `E` reply), never waits."""
        with self._cond:
            if self.gdb_pending and self.runner is not None:
                raise TargetError(f"the guest is running ({self._runner_text()}): "
                                  "interrupt it first")
            if not self.gdb_pending:
                self._gdb_takes_over()
        with self._lock:
            yield self.session

    # -- gdb's resume ----------------------------------------------------------------
    def gdb_resume_begins(self) -> None:
        with self._cond:
            self._gdb_takes_over()
            self.gdb_pending = True
            self.held = False
            self._hold_requested = self._gdb_interrupt = False
            self._release = None

    def gdb_resume_ends(self) -> None:
        with self._cond:
            self.gdb_pending = self.held = False
            self._hold_requested = False
            self._release = None
            self._cond.notify_all()

    def gdb_interrupt(self) -> None:
        """gdb's ^C / vCtrlC / vCont;t (thread-safe): its pending resume ends, from a hold
        too, with the guest stopped where it is."""
        with self._cond:
            self._gdb_interrupt = True
            self._hold_requested = False
            if self.held:
                self._release = "to_gdb"
                self._cond.notify_all()
            if self.runner is not None:
                self.interrupted.set()
                self._stop_run()

    def wait_gdb_resume_end(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self.gdb_pending, timeout)

    def gdb_interrupted(self) -> bool:
        with self._cond:
            return self._gdb_interrupt

    def hold_if_requested(self, stop: Stopped) -> bool:
        """With gdb's run just ended (engine held): True when the REPL's stop paused it,
        so the guest is now held by the REPL and gdb keeps waiting."""
        with self._cond:
            hold = (self._hold_requested and not self._gdb_interrupt
                    and stop.reason is StopReason.interrupt)
            self._hold_requested = False
            if hold:
                self.held = True
        if hold:
            self._notify(StopNotice(stop, Runner.repl, held=True))
        return hold

    def hold_requested_before_run(self) -> bool:
        """A stop the REPL asked for before gdb's run began (it would be lost)."""
        with self._cond:
            return self._hold_requested

    def wait_release(self) -> str:
        """Block gdb's resume while the REPL holds the guest: "continue" (the REPL
        continued: gdb's run goes on) or "to_gdb" (end it, SIGINT for gdb)."""
        with self._cond:
            self._cond.wait_for(lambda: self._release is not None)
            how, self._release = self._release, None
            if how == "continue":
                self.held = False
            return how

    @contextmanager
    def engine_after_hold(self) -> Iterator[Session]:
        """The engine for gdb's resume once a hold ends (a REPL run in it stops first)."""
        with self._cond:
            if self.runner is not None:
                self.session.request_stop()
            if not self._cond.wait_for(lambda: self.runner is None, GDB_ATTACH_STOP_TIMEOUT_S):
                raise SessionError("the guest did not stop for gdb")
        with self._lock:
            yield self.session

    @contextmanager
    def gdb_run(self) -> Iterator[Session]:
        """Hold the engine for one run of gdb's resume; the REPL shows 'running (gdb)'."""
        with self._cond:
            self._gdb_takes_over()
            self.held = False
            self.runner = Runner.gdb
            self._run_serial += 1
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
            self.non_stop = False


class SharedSessionTarget(SessionTarget):
    """The stub's Target over a Session shared with the REPL through a Controller.

    Differences from SessionTarget: every call takes the Controller's lock; detach and
    kill remove only gdb's own breakpoints and watchpoints (the REPL's stay) and leave
    the guest to the REPL; the REPL hears about every gdb stop."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.session)
        self.controller = controller
        self._seen_stop: Stopped | None = None
        self._vcpus: list[int] = [0]

    def set_non_stop(self, enabled: bool) -> None:
        """gdb chose the non-stop protocol (QNonStop:1) or all-stop (QNonStop:0)."""
        with self.controller.gdb_access():
            self.controller.non_stop = enabled

    def vcpu_ids(self):
        """Never an error: while the guest runs, the vcpus seen last (thread lists)."""
        try:
            with self.controller.gdb_access():
                self._vcpus = super().vcpu_ids()
        except TargetError:
            pass
        return list(self._vcpus)

    def describe_vcpu(self, vcpu: int) -> str:
        try:
            with self.controller.gdb_access():
                return super().describe_vcpu(vcpu)
        except TargetError:
            return f"vcpu{vcpu} running ({self.controller._runner_text()})"

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
        """gdb's resume; the REPL's stop pauses it (held by the REPL, gdb keeps waiting)
        until the REPL continues it or hands the stop to gdb."""
        controller = self.controller
        controller.gdb_resume_begins()
        try:
            while True:
                if controller.gdb_interrupted():
                    return self._interrupted_for_gdb()
                with controller.gdb_run():
                    held = controller.hold_requested_before_run() and \
                        controller.hold_if_requested(self._stopped_here())
                    if not held:
                        try:
                            event = super().resume(actions)
                        except SessionError as exc:
                            controller.gdb_stopped(None, str(exc))
                            raise
                        stop = self.session.last_stop
                        held = stop is not None and event.reason is GdbStop.INTERRUPT \
                            and controller.hold_if_requested(stop)
                    if not held:
                        self._seen_stop = self.session.last_stop
                        controller.gdb_stopped(self.session.last_stop)
                        return event
                if controller.wait_release() == "to_gdb":
                    return self._interrupted_for_gdb()
        finally:
            controller.gdb_resume_ends()

    def _stopped_here(self) -> Stopped:
        """An interrupt stop where the guest stands (engine held)."""
        session = self.session
        return Stopped(StopReason.interrupt, session.hv.current.vcpu_id, session.cpu.read("eip"),
                       session.cpu.icount, detail="held by the REPL as gdb's run began")

    def _interrupted_for_gdb(self) -> StopEvent:
        """gdb's pending resume ends where the guest stands (SIGINT for gdb)."""
        controller = self.controller
        with controller.engine_after_hold() as session:
            self._register_cache = None
            vcpu = session.hv.current.vcpu_id
            self._seen_stop = session.last_stop
            self._stop = StopEvent(vcpu, GdbStop.INTERRUPT)
            controller._notify(StopNotice(None, Runner.gdb, note="the guest is gdb's again: "
                                          "its resume ended here (it holds the guest stopped)"))
        return self._stop

    def request_stop(self) -> None:
        """gdb's interrupt: also ends a hold of the REPL's (thread-safe)."""
        self.controller.gdb_interrupt()

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
        """Non-stop gdb may detach while its resume runs: that resume is ended first."""
        controller = self.controller
        if controller.gdb_pending:
            controller.gdb_interrupt()
            if not controller.wait_gdb_resume_end(GDB_ATTACH_STOP_TIMEOUT_S):
                raise TargetError("the guest did not stop for gdb to detach")
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
