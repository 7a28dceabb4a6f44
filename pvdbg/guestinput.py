"""Keyboard input for the guest's PV console, from front ends on any thread.

A front end (the terminal of `pvdbg run`, the REPL's `console send`, a test) calls
`ConsoleInput.feed`; the run loop takes the bytes between execution slices and hands
them to xenconsoled's ring (`PvDevices.feed_console`).  `closed` says no more input
will come (a pipe reached its end), which lets the run loop end a run whose guest waits
for input; `arrived` wakes a run loop sleeping while the guest waits.
"""
from __future__ import annotations

import threading

from unicorn import UC_HOOK_MEM_READ

from .trace import TraceKind, TraceRecord


class ConsoleInput:
    """Thread-safe queue of console input bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = bytearray()
        self.arrived = threading.Event()     # set by feed/close: wakes an idle run loop
        self.closed = True                   # no front end will feed more (the default)

    def open(self) -> None:
        """A front end may feed input from now on: an idle guest waits for it."""
        with self._lock:
            self.closed = False

    def close(self) -> None:
        """No more input will come: an idle guest waiting for input ends the run."""
        with self._lock:
            self.closed = True
        self.arrived.set()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._data += data
        self.arrived.set()

    def take(self) -> bytes:
        """Everything fed so far (run-loop thread)."""
        if not self._data and self.arrived.is_set() == self.closed:
            return b""                   # nothing fed, `arrived` already as take leaves it
        with self._lock:
            data = bytes(self._data)
            self._data.clear()
            self.arrived.clear()
            if self.closed:
                self.arrived.set()       # keep waking: nothing will ever arrive
        return data

    def pending(self) -> bool:
        with self._lock:
            return bool(self._data)


QUIET_INSNS_BEFORE_UNHOOK = 1_000_000   # icount clock: instructions with no poll, no record
POLLS_BEFORE_IDLE = 8        # reads of an empty in[] with nothing else done: the guest waits
_RESETTING_KINDS = frozenset({TraceKind.hypercall, TraceKind.multicall_entry, TraceKind.console,
                              TraceKind.xenstore, TraceKind.blkif, TraceKind.upcall})


class InputPollWatch:
    """Notices a guest busy-waiting on its console input ring, as PV GRUB does at its
    prompt (it reads in_prod in a loop, with no hypercall to block on).

    A read hook bounded to the 4 bytes of in_prod counts the guest's reads while in[] is
    empty; a hypercall, an upcall, console output or backend traffic (trace records of
    those kinds) restarts the count.  At POLLS_BEFORE_IDLE reads the slice stops before
    the reading instruction (which then runs again) and `waiting` is set; the run loop
    then sleeps until input arrives.  A read of an empty ring while input is queued
    stops the slice too, so the input is delivered at once.  Stops come at fixed
    instruction counts, so an icount run stays deterministic.

    A read hook makes Unicorn route every load of the blocks translated while it exists
    through its slow path (a bench loop: 79 -> 63 M insn/s counted), so the hook exists
    only while the guest may poll: from the start, until whole slices (`slice_ended`,
    not cut short by a debugger stop) covering QUIET_INSNS_BEFORE_UNHOOK instructions
    pass with neither a read of in_prod nor a resetting record; it is installed again
    after a slice with such a record (a guest that goes on to poll says something
    first: GRUB prints its prompt), or at a run's start with input queued.  Both
    choices are made between slices, at deterministic counts under the icount clock.
    The host clock has no counts and its slices end only at a hook: there one whole
    quiet slice (the run's counted first slice, or one of >= HOST_SLICE_US) drops it.
    A guest that starts to poll after a silent stretch with no record at all is not
    noticed until it makes one.
    """

    def __init__(self, hv, devices, console_input: ConsoleInput) -> None:
        self.hv = hv
        self.devices = devices
        self.console_input = console_input
        self.polls = 0
        self.waiting = False
        self.muted = False                       # single steps never stop here
        self.ever_polled = threading.Event()     # the guest has read its input ring once
        self._in_prod = devices.input_ring_maddr()
        self._in_cons = self._in_prod - 4        # xencons_interface: in_cons, in_prod
        self._read_in_slice = False              # in_prod read since the last slice_ended
        self._active_in_slice = False            # a resetting record since then
        # The icount since which the guest neither polled nor made a record (None: host).
        self._quiet_since: int | None = None
        hv.listeners.append(self)
        self._hook: int | None = None
        self._install()

    @property
    def installed(self) -> bool:
        """The read hook exists (translated code checks for it)."""
        return self._hook is not None

    def _install(self) -> None:
        self._hook = self.hv.cpu.uc.hook_add(UC_HOOK_MEM_READ, self._on_read, None,
                                             self._in_prod, self._in_prod + 3)
        self._quiet_since = self.hv.cpu.icount   # a quiet stretch counts from here
        self._retranslate()

    def _uninstall(self) -> None:
        self.hv.cpu.uc.hook_del(self._hook)
        self._hook = None
        self.polls = 0
        self._retranslate()

    def _retranslate(self) -> None:
        """Unicorn decides at translation time whether loads check memory hooks."""
        self.hv.cpu.uc.ctl_flush_tb()
        self.hv.cpu.flush_tlb()

    def reset(self) -> None:
        """Machine state replaced (a snapshot restored): watch from the start again."""
        self.rearm()
        self._read_in_slice = self._active_in_slice = False
        if self._hook is None:
            self._install()
        self._quiet_since = self.hv.cpu.icount

    def slice_ended(self, whole: bool) -> None:
        """Between slices (run loop, outside emu_start): add or drop the hook.  `whole`:
        the slice was not cut short by a debugger stop; only those can show the guest
        stopped polling, other slices carry their reads and records over (to `rearm`)."""
        if not whole:
            return
        now = self.hv.cpu.icount
        if self._read_in_slice or self._active_in_slice:
            self._quiet_since = now
            if self._hook is None and self._active_in_slice:
                self._install()
        elif self._hook is not None:
            since = self._quiet_since
            if now is None or (since is not None and now - since >= QUIET_INSNS_BEFORE_UNHOOK):
                self._uninstall()
        self._read_in_slice = self._active_in_slice = False

    def on_trace(self, record: TraceRecord) -> None:
        if record.kind in _RESETTING_KINDS:
            self.polls = 0
            self._active_in_slice = True

    def rearm(self) -> None:
        """The run loop handled a stop: count afresh, settle what the last slices saw.
        With input queued and no hook, the hook comes back: a guest polling for it gets
        it on its next read."""
        self.polls = 0
        self.waiting = False
        if self._read_in_slice or self._active_in_slice:   # seen before this run: settled
            self._quiet_since = self.hv.cpu.icount
            if self._active_in_slice and self._hook is None:
                self._install()
            self._read_in_slice = self._active_in_slice = False
        if self._hook is None and (self.devices.console.pending_input
                                   or self.console_input.pending()):
            self._install()

    def _on_read(self, uc, access, address, size, value, user_data) -> None:
        self._read_in_slice = True
        if not self.ever_polled.is_set():
            self.ever_polled.set()
        if self.muted:
            return
        memory = self.hv.memory
        if memory.read_u32(self._in_prod) != memory.read_u32(self._in_cons):
            self.polls = 0                       # input to read: the guest is busy with it
            return
        if self.devices.console.pending_input or self.console_input.pending():
            self._stop()                         # deliver the queued input now
            return
        self.polls += 1
        if self.polls >= POLLS_BEFORE_IDLE:
            self.waiting = True
            self._stop()

    def _stop(self) -> None:
        cpu = self.hv.cpu
        if cpu.stop_requested:
            return
        self.polls = 0
        cpu.uncount_current()
        cpu.stop()
