"""The engine: one guest on one emulated Xen, driven by every front end.

No terminal, socket or print here.  Front ends call `run`, `step`, `request_stop` and
the inspection methods, and get typed `Stopped` events back.  `request_stop` is the
only method safe to call from another thread while `run` is executing.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import IO

from .debug import DebugState, WatchKind, parse_catch_spec
from .machine.cpu import CpuError
from .trace import TraceLog
from .xen.builder import BuildOptions, build_domain
from .xen.constants import ShutdownReason
from .xen.devices import DiskSpec, attach_devices
from .xen.entry import TRAMP3_VA, TRAMPOLINE_VA
from .guestinput import ConsoleInput, InputPollWatch
from .xen.guestmem import GuestFault
from .xen.hypervisor import Hypervisor
from .xen.image import GuestImage, load_guest_image
from . import snapshot as _snapshot
from .snapshot import Snapshot, SnapshotError
from .until import (AtAddress, Condition, ConsoleText, HypercallDone, InstructionCount,
                    Shutdown, UntilError, UntilResult, conditions_from_keywords)

DEFAULT_SLICE = 2_000_000          # instructions per emu_start when nothing is watched
HOST_SLICE_US = 20_000             # wall-clock slice with clock="host"
HOST_COUNTED_PREFIX = 50_000       # clock="host": a run's first slice, counted (see run)
INPUT_WAIT_S = 0.25                # longest sleep while the guest waits for console input
ASYNC_STOP_GRACE_S = 1.0           # clock="host": wait this long for an exact stop


class StopReason(StrEnum):
    shutdown = "shutdown"          # the guest shut itself down (poweroff, reboot, ...)
    crash = "crash"                # the domain crashed (report in session.crash)
    interrupt = "interrupt"        # request_stop()
    step = "step"
    limit = "limit"                # --max-insns reached
    timeout = "timeout"            # --timeout reached
    blocked = "blocked"            # every vcpu sleeps and nothing can wake it
    breakpoint = "breakpoint"
    watchpoint = "watchpoint"      # address = data VA, watch_kind = write/read/access
    catch = "catch"                # a catchpoint matched; message says which record
    idle = "idle"                  # the guest polls its console for input; none will come


@dataclass(frozen=True)
class Stopped:
    reason: StopReason
    vcpu: int
    eip: int
    icount: int | None
    detail: str = ""
    address: int | None = None
    watch_kind: str | None = None


class SessionError(Exception):
    """The engine cannot do what was asked (one line)."""


def bundled_guest_path() -> Path:
    """The prebuilt seed guest shipped inside the package."""
    return Path(str(resources.files("pvdbg") / "guests" / "seed.elf"))


@dataclass(frozen=True)
class SessionOptions:
    memory_mib: int | None = None     # None: 64 MiB for 32-bit guests, 256 for 64-bit
    cmdline: str = ""
    p2m_seed: int | None = 0x5EED
    vcpus: int = 1
    trace_capacity: int = 1_000_000
    clock: str = "icount"      # "icount": exact counts, deterministic; "host": full speed
    disks: tuple[DiskSpec, ...] = ()   # raw images served as PV disks xvda, xvdb, ...
    xenstore: tuple[tuple[str, str], ...] = ()   # extra (path, value) keys for the toolstack
    initrd: str | None = None          # 64-bit guests: loaded as the start_info module


class Session:
    def __init__(self, image: GuestImage, options: SessionOptions = SessionOptions(),
                 trace_file: IO[str] | None = None) -> None:
        self.image = image
        self.options = options
        if options.clock not in ("icount", "host"):
            raise SessionError(f"clock must be 'icount' or 'host', not {options.clock!r}")
        self.trace = TraceLog(options.trace_capacity, trace_file)
        if image.elfclass == 64:
            self.hv = self._hypervisor_64bit(image, options)
        else:
            if options.initrd:
                raise SessionError("--initrd is only supported for 64-bit guests")
            built = build_domain(image, BuildOptions(memory_mib=options.memory_mib or 64,
                                                     cmdline=options.cmdline,
                                                     p2m_seed=options.p2m_seed,
                                                     vcpus=options.vcpus))
            self.hv = Hypervisor(built, image.symbols, self.trace,
                                 hypercall_page_va=image.hypercall_page_va)
        self.cpu = self.hv.cpu
        try:
            self.devices = attach_devices(self.hv, disks=options.disks, kernel=image.path,
                                          cmdline=options.cmdline, xenstore=options.xenstore)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        self.console_input = ConsoleInput()
        self.input_watch = InputPollWatch(self.hv, self.devices, self.console_input)
        self._interrupt = threading.Event()
        self.last_stop: Stopped | None = None
        self.debug = DebugState(self.hv)
        self.cpu.counting = options.clock == "icount"

    def _hypervisor_64bit(self, image: GuestImage, options: SessionOptions):
        """A 64-bit PV domain (pvdbg/xen/pv64): same run loop, dom0 daemons and disks."""
        from .xen.pv64.domain import create_hypervisor64
        return create_hypervisor64(image, memory_mib=options.memory_mib,
                                   cmdline=options.cmdline, p2m_seed=options.p2m_seed,
                                   vcpus=options.vcpus, trace=self.trace,
                                   initrd=options.initrd)

    @classmethod
    def open(cls, path: str | Path | None = None, options: SessionOptions = SessionOptions(),
             trace_file: IO[str] | None = None) -> "Session":
        """Load and build a guest; `path` None means the bundled seed guest."""
        image = load_guest_image(str(path) if path is not None else str(bundled_guest_path()),
                                 allow_64bit=True)
        return cls(image, options, trace_file)

    # -- execution ---------------------------------------------------------------
    def _stopped(self, reason: StopReason, detail: str = "", address: int | None = None,
                 watch_kind: str | None = None) -> Stopped:
        stop = Stopped(reason, self.hv.current.vcpu_id, self.cpu.read("eip"), self.cpu.icount,
                       detail, address, watch_kind)
        self.last_stop = stop
        self.trace.flush()
        return stop

    def _dead_stop(self) -> Stopped | None:
        dom = self.hv.domain
        if dom.crash is not None:
            return self._stopped(StopReason.crash, dom.crash.reason)
        if dom.shutdown_reason is not None:
            return self._stopped(StopReason.shutdown, dom.shutdown_reason.name)
        return None

    def run(self, max_insns: int | None = None, timeout: float | None = None) -> Stopped:
        """Run until the guest stops, dies, or a bound is hit."""
        self._check_open()
        dead = self._dead_stop()
        if dead is not None:
            return dead
        self._interrupt.clear()
        self.input_watch.rearm()
        self.cpu.stop_at_event = False
        self._async_stopped = False
        deadline = None if timeout is None else time.monotonic() + timeout
        limit = None if max_insns is None else self.cpu.icount + max_insns
        self.debug.skip_breakpoint_at = self.cpu.read("eip")
        counted_prefix = not self.cpu.counting
        while True:
            if self.hv.current.blocked:      # every vcpu sleeps: skip to a waking timer
                why = self.hv.scheduler.idle(self._interrupt, deadline)
                if why is not None:
                    return self._stopped(StopReason.blocked, why)
                if self.hv.current.blocked:  # interrupted, or out of time, while idle
                    if self._interrupt.is_set():
                        self._interrupt.clear()
                        return self._stopped(StopReason.interrupt, "stopped by request")
                    return self._stopped(StopReason.timeout, f"timeout of {timeout} s reached")
            self.hv.scheduler.boundary()     # timers, vcpu switch, pending upcalls
            stop = self._take_hit() or self._dead_stop()
            if stop is not None:
                return stop
            budget = self.hv.scheduler.slice_budget(DEFAULT_SLICE)
            if limit is not None:
                budget = min(budget, limit - self.cpu.icount)
                if budget <= 0:
                    return self._stopped(StopReason.limit, f"instruction limit {max_insns} reached")
            self.cpu.stop_requested = False
            try:
                if self.cpu.counting or limit is not None:
                    self.cpu.run(budget)
                elif counted_prefix:
                    # clock="host": a short counted slice first. A debugger's breakpoint
                    # or watchpoint hit soon after the start then leaves only counted
                    # translations, and its next step needs no retranslation (X86Cpu.run).
                    counted_prefix = False
                    self.cpu.exact = False   # the host clock keeps no instruction counts
                    self.cpu.run(HOST_COUNTED_PREFIX)
                else:
                    self._run_uncounted(deadline)
            except CpuError as exc:
                self.hv.crash_domain(str(exc))
            self._check_internal_error()
            self._serve_devices()
            self.input_watch.slice_ended(self.debug.hit is None)
            hit = self._take_hit()
            if hit is not None:
                return hit
            dead = self._dead_stop()
            if dead is not None:
                return dead
            if self.input_watch.waiting:
                idle = self._wait_for_input(deadline)
                if idle is not None:
                    return idle
            if self._interrupt.is_set():
                self._interrupt.clear()
                return self._stopped(StopReason.interrupt, "stopped by request" + (
                    " (asynchronously: the guest made no hypercall or trap; Unicorn may have "
                    "replayed the last store, see --clock icount)" if self._async_stopped else ""))
            if deadline is not None and time.monotonic() >= deadline:
                return self._stopped(StopReason.timeout, f"timeout of {timeout} s reached")

    def _run_uncounted(self, deadline: float | None) -> None:
        """clock="host": run with no instruction budget; the slice ends at the first
        hook after the scheduler's next timer (or HOST_SLICE_US), exactly."""
        slice_s = self.hv.scheduler.slice_timeout_us(HOST_SLICE_US) / 1e6
        self.cpu.event_deadline = time.monotonic() + slice_s
        watchdog = None
        if deadline is not None:
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()) + ASYNC_STOP_GRACE_S,
                                       self._deadline_fallback)
            watchdog.daemon = True
            watchdog.start()
        try:
            self.cpu.run(0, counted=False)
        finally:
            self.cpu.event_deadline = None
            if watchdog is not None:
                watchdog.cancel()

    def _deadline_fallback(self) -> None:
        if self.cpu.in_run:
            self._async_stopped = True
            self.cpu.stop_asynchronously()

    def _serve_devices(self) -> None:
        """Between slices, as dom0's daemons would meanwhile: console input into the
        ring, both rings served (guests may poll them without a hypercall)."""
        data = self.console_input.take()
        if data:
            self.devices.feed_console(data)
        self.devices.pump()

    def _wait_for_input(self, deadline: float | None) -> Stopped | None:
        """The guest busy-waits on its empty console input ring: end the run if no input
        can come (`console_input` closed), else sleep until input, a stop request or
        the deadline, at most INPUT_WAIT_S at a time.  The guest's clock moves on by
        the time slept (icount clock), so its own timeouts still expire."""
        self.input_watch.rearm()
        if self.console_input.closed and not self.console_input.pending():
            return self._stopped(StopReason.idle, "the guest waits for console input and "
                                                  "no more input will come")
        wait_s = INPUT_WAIT_S
        if deadline is not None:
            wait_s = max(0.0, min(wait_s, deadline - time.monotonic()))
        started = time.monotonic_ns()
        self.console_input.arrived.wait(wait_s)
        if self.cpu.counting:
            tk = self.hv.time
            tk.advance_idle(tk.now_ns() + time.monotonic_ns() - started)
        return None

    def console_send(self, data: bytes) -> str:
        """Type `data` into the guest's PV console (thread-safe; delivered into the ring
        between slices, at once if the guest waits for it).  Returns where it went."""
        self.console_input.feed(data)
        return f"PV console ring, event channel port {self.devices.console_port.guest_port}"

    def _check_internal_error(self) -> None:
        if self.hv.internal_error is not None:
            err, self.hv.internal_error = self.hv.internal_error, None
            raise SessionError(f"internal error in the emulated hypervisor: {err!r}") from err

    def _take_hit(self) -> Stopped | None:
        hit = self.debug.hit
        if hit is None:
            return None
        self.debug.hit = None
        if hit.kind == "breakpoint":
            return self._stopped(StopReason.breakpoint, f"breakpoint at {hit.address:#x}",
                                 address=hit.address)
        if hit.kind == "watch":
            self.debug.finish_watch_hit(self._step_one_raw)
            self.debug.hit = None
            return self._stopped(StopReason.watchpoint,
                                 f"{hit.watch_kind} watchpoint at {hit.address:#x}",
                                 address=hit.address, watch_kind=str(hit.watch_kind))
        return self._stopped(StopReason.catch, hit.message, address=hit.address)

    def _in_hypervisor_code(self) -> bool:
        eip = self.cpu.read("eip")
        return TRAMPOLINE_VA <= eip < TRAMPOLINE_VA + 4096 or TRAMP3_VA <= eip < TRAMP3_VA + 4096

    def _step_one_raw(self) -> None:
        """One guest instruction, then through any of Xen's own trampolines."""
        self.input_watch.muted = True
        try:
            self.cpu.run(1)
            guard = 0
            while self._in_hypervisor_code() and not self.hv.domain.is_dying and guard < 16:
                self.cpu.run(1)
                guard += 1
        finally:
            self.input_watch.muted = False

    def step(self, count: int = 1) -> Stopped:
        """Execute exactly `count` guest instructions.  A hypercall completes within its
        `int $0x82`; stepping into a fault lands on the guest's handler."""
        self._check_open()
        dead = self._dead_stop()
        if dead is not None:
            return dead
        for _ in range(count):
            if self.hv.current.blocked:
                why = self.hv.scheduler.idle(self._interrupt, None)
                if why is not None or self.hv.current.blocked:
                    return self._stopped(StopReason.blocked, why or "vcpu is blocked")
                self.hv.scheduler.boundary()
            self.debug.skip_breakpoint_at = self.cpu.read("eip")
            self._step_one_raw()
            self.debug.skip_breakpoint_at = None
            self._check_internal_error()
            self._serve_devices()
            if not self.hv.current.blocked:
                self.hv.scheduler.boundary()  # Xen returns to the guest: timers, upcalls
            hit = self._take_hit()
            if hit is not None and hit.reason is not StopReason.breakpoint:
                return hit
            dead = self._dead_stop()
            if dead is not None:
                return dead
        return self._stopped(StopReason.step)

    def step_range(self, start: int, end: int, max_steps: int = 1_000_000) -> Stopped:
        """Step while start <= EIP < end (gdb's range stepping)."""
        stop = self.step(1)
        steps = 1
        while (stop.reason is StopReason.step and start <= stop.eip < end
               and steps < max_steps and not self._interrupt.is_set()):
            if stop.eip in self.debug.breakpoints:
                return self._stopped(StopReason.breakpoint, f"breakpoint at {stop.eip:#x}",
                                     address=stop.eip)
            stop = self.step(1)
            steps += 1
        self._interrupt.clear()
        return stop

    # -- breakpoints, watchpoints, catchpoints --------------------------------------
    def add_breakpoint(self, guest_va: int) -> None:
        self.debug.add_breakpoint(guest_va)

    def remove_breakpoint(self, guest_va: int) -> bool:
        return self.debug.remove_breakpoint(guest_va)

    def add_watchpoint(self, kind: str, guest_va: int, length: int) -> None:
        self.debug.add_watchpoint(WatchKind(kind), guest_va, length)

    def remove_watchpoint(self, kind: str, guest_va: int, length: int) -> bool:
        return self.debug.remove_watchpoint(WatchKind(kind), guest_va, length)

    def add_catchpoint(self, spec: str):
        """`spec` as in pvdbg.debug.CATCH_HELP; raises CatchSpecError."""
        return self.debug.add_catchpoint(*parse_catch_spec(spec))

    def remove_catchpoint(self, number: int) -> bool:
        return self.debug.remove_catchpoint(number)

    def request_stop(self) -> None:
        """Ask a running `run` to stop (thread-safe).

        The stop is exact: at the next hypercall, trap or event (a hook), or at the end of
        the current instruction-count slice.  Under clock="host" there are no slices; a
        guest that makes no hypercall or trap for ASYNC_STOP_GRACE_S is stopped
        asynchronously, which Unicorn may do imprecisely (X86Cpu.stop_asynchronously);
        the stop's detail says so."""
        self._interrupt.set()
        self.console_input.arrived.set()     # wakes a run waiting for console input
        self.cpu.stop_at_event = True
        if not self.cpu.counting:
            timer = threading.Timer(ASYNC_STOP_GRACE_S, self._async_stop_fallback)
            timer.daemon = True
            timer.start()

    def _async_stop_fallback(self) -> None:
        if self._interrupt.is_set() and self.cpu.in_run:
            self._async_stopped = True
            self.cpu.stop_asynchronously()

    # -- inspection ----------------------------------------------------------------
    @property
    def shutdown_reason(self) -> ShutdownReason | None:
        return self.hv.domain.shutdown_reason

    @property
    def crash(self):
        return self.hv.domain.crash

    @property
    def console_text(self) -> str:
        return self.hv.domain.console.decode("latin-1")

    def registers(self) -> dict[str, int]:
        regs = self.cpu.frame_registers()
        regs.update(self.cpu.read_many(("cr0", "cr2", "cr3", "cr4")))
        return regs

    def read_memory(self, guest_va: int, length: int) -> bytes:
        """Guest-virtual read through the current pagetables; raises GuestFault."""
        return self.hv.guest.read(guest_va, length)

    def read_memory_any(self, guest_va: int, length: int) -> bytes:
        """Like read_memory, but reaches the hypervisor hole too (Xen's trampolines,
        the M2P): what the CPU can read at ring 1.  For the debugger, not for guests."""
        from .machine.paging import PageWalkError
        from .xen.mm_query import debugger_walk
        out = bytearray()
        mask = (1 << getattr(self.hv, "guest_bits", 32)) - 1
        while len(out) < length:
            va = (guest_va + len(out)) & mask
            try:
                walk = debugger_walk(self.hv, self.hv.cr3, va)
            except PageWalkError as exc:
                raise GuestFault(va, exc.reason) from None
            if not self.hv.memory.frame_valid(walk.maddr >> 12):
                raise GuestFault(va, "maps a frame outside RAM")
            chunk = min(length - len(out), 4096 - (va & 0xFFF))
            out += self.hv.memory.read(walk.maddr, chunk)
        return bytes(out)

    def write_memory(self, guest_va: int, data: bytes) -> None:
        """Debugger write through the current pagetables, even to read-only mappings of
        guest frames (as a debugger pokes code); never to Xen's own frames.  Translated
        code for the range is dropped."""
        from .machine.paging import PageWalkError
        from .xen.mm_query import debugger_walk
        pieces = []
        done = 0
        while done < len(data):
            va = guest_va + done
            try:
                walk = debugger_walk(self.hv, self.hv.cr3, va)
            except PageWalkError as exc:
                raise GuestFault(va, exc.reason) from None
            if va >= self.hv.guest.hole_start or walk.mfn in self.hv.built.xen_mfns:
                raise GuestFault(va, "belongs to the hypervisor")
            chunk = min(len(data) - done, 4096 - (va & 0xFFF))
            pieces.append((walk.maddr, data[done:done + chunk]))
            done += chunk
        for maddr, piece in pieces:
            self.hv.memory.write(maddr, piece)
        self.cpu.invalidate_code(guest_va, guest_va + len(data))

    def symbol(self, name: str) -> int | None:
        return self.image.symbols.address(name)

    # -- scripted runs, snapshots ----------------------------------------------------
    def run_until(self, *conditions: Condition, hypercall: str | None = None,
                  symbol: str | None = None, address: int | None = None,
                  icount: int | None = None, console=None, shutdown: bool | str = False,
                  max_insns: int | None = None, timeout: float | None = None) -> UntilResult:
        """Run until the first of the conditions holds (see pvdbg.until): `hypercall`
        name (stops right after it completes), `symbol` ("name" or "name+0x10") or
        `address` (stops before that instruction), absolute `icount`, `console` text or
        compiled regex in new console output, `shutdown` (True or a reason such as
        "poweroff").  `max_insns`/`timeout` bound the run.  Raises UntilError."""
        from .until import run_until
        self._check_open()
        conds = conditions_from_keywords(self, conditions, hypercall=hypercall, symbol=symbol,
                                         address=address, icount=icount, console=console,
                                         shutdown=shutdown)
        return run_until(self, conds, max_insns, timeout)

    def snapshot(self) -> Snapshot:
        """Save machine memory, the CPU context and all hypervisor state (pvdbg.snapshot)."""
        self._check_open()
        return _snapshot.capture(self.hv, {"last_stop": self.last_stop})

    def restore(self, snap: Snapshot) -> None:
        """Go back to `snap` (taken on this session); breakpoints, watchpoints and
        catchpoints stay as they are now."""
        self._check_open()
        _snapshot.restore(self.hv, snap)
        self.last_stop = snap.extra.get("last_stop")
        self.debug.hit = None
        self.debug.skip_breakpoint_at = None
        self.input_watch.reset()

    closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise SessionError("the session is closed")

    def close(self) -> None:
        """End the session: flush the trace, drop breakpoints and console sinks.  The
        trace, console and machine state stay readable; running raises SessionError."""
        self.trace.flush()
        if not self.closed:
            self.closed = True
            self.debug.clear_all()
            self.hv.console_sinks.clear()


__all__ = ["Session", "SessionOptions", "Stopped", "StopReason", "SessionError", "GuestFault",
           "bundled_guest_path", "Snapshot", "SnapshotError", "UntilResult", "UntilError",
           "HypercallDone", "AtAddress", "InstructionCount", "ConsoleText", "Shutdown"]
