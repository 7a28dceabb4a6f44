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
        hv.listeners.append(self)
        self._hook = hv.cpu.uc.hook_add(UC_HOOK_MEM_READ, self._on_read, None,
                                        self._in_prod, self._in_prod + 3)

    def on_trace(self, record: TraceRecord) -> None:
        if record.kind in _RESETTING_KINDS:
            self.polls = 0

    def rearm(self) -> None:
        """The run loop handled a stop: count afresh."""
        self.polls = 0
        self.waiting = False

    def _on_read(self, uc, access, address, size, value, user_data) -> None:
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
