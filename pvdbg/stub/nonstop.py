"""gdb's non-stop protocol for one connection: QNonStop, `%Stop` notifications drained
with vStopped, vCtrlC, vCont `t` actions and `?` answering with every stopped thread.

Protocol source: gdb manual, "Remote Protocol" > "Remote Non-Stop", "Notification
Packets", "Packets" (vCont, vCtrlC, vStopped). What stock gdb 13 does, checked against it:
it sends `QNonStop:0` on connecting to a stub that offers `QNonStop+` when the user did
not `set non-stop on`; in non-stop mode it resumes with `vCont` only, interrupts with
`vCont;t:TID` (`interrupt`) and `vCtrlC` (^C), and sends memory and thread-list packets
while threads run. It accepts a `%Stop` only for a thread it resumed: a stop for a
thread it already holds stopped fails an internal assertion in gdb 13 (inline-frame.c
skip_inline_frames), so this layer reports exactly the stops that end gdb's own resumes.

The engine runs every vcpu together, so a resume must name all of them (one vcpu: any
resume) and a stop is reported for each online vcpu (the others as signal 0).

The connection loop (server.py) asks `handle` first for every packet; `accept_resume`
before it runs a resume in its worker (the reply is `OK` at once), and `stopped` with the
stop replies the resume produced: it returns the framed `%Stop` notification to write,
or nothing while a notification sequence is being drained.
"""
from __future__ import annotations

import logging
import threading
from collections import deque

from pvdbg.stub.commands import Replies, ResumeRequest, Stub, thread_id
from pvdbg.stub.rsp import checksum, escape
from pvdbg.stub.target import ResumeKind, TargetError

log = logging.getLogger(__name__)

INTERRUPT_RETRY_S = 0.05
"""How often an interrupt is repeated until the resume it targets stops (a request that
lands just before the engine starts its run is otherwise lost)."""
INTERRUPT_GIVE_UP_S = 10.0
SIGNAL_0 = b"T00"
SIGINT = b"T02"


def notification(payload: bytes) -> bytes:
    """`%<escaped payload>#<checksum>`: a notification needs no ack (gdb manual,
    "Notification Packets")."""
    body = escape(payload)
    return b"%" + body + b"#%02x" % checksum(body)


class NonStop:
    """Non-stop state of one connection. `handle` runs on the connection's thread,
    `stopped` on its resume worker; both take one lock around the stop queue."""

    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.enabled = False
        self.running = False                 # a resume of gdb's is in progress
        self._queue: deque[bytes] = deque()  # head: the stop gdb was told about last
        self._lock = threading.Lock()
        self._stop_by_t = False              # vCont;t asked: report the stop as signal 0
        self._stopped = threading.Event()
        self._stopped.set()
        self._leaving = False                # D or k while running: no more stops to gdb

    # -- packets -------------------------------------------------------------------------
    def handle(self, payload: bytes) -> Replies | None:
        """The reply to a packet non-stop mode answers itself, else None."""
        if payload.startswith(b"QNonStop:"):
            return Replies((self._set_mode(payload[len(b"QNonStop:"):]),))
        if not self.enabled:
            return None
        if payload == b"vStopped":
            return Replies((self._next_stop(),))
        if payload == b"?":
            return Replies((self._all_stops(),))
        if payload == b"vCtrlC":
            self._interrupt(by_t=False)
            return Replies((b"OK",))
        if (payload[:1] == b"D" or payload == b"k") and self.running:
            return self._stop_before_leaving()
        if payload.startswith(b"vCont;") and all(
                action[:1] == b"t" for action in payload[len(b"vCont;"):].split(b";")):
            if self.running:
                self._interrupt(by_t=True)
            return Replies((b"OK",))
        return None

    def _set_mode(self, argument: bytes) -> bytes:
        if argument not in (b"0", b"1"):
            return b"E16"
        enable = argument == b"1"
        if self.running:
            return b"E.the guest runs: change the mode while it is stopped"
        set_non_stop = getattr(self.stub.target, "set_non_stop", None)
        if set_non_stop is None:
            if enable:
                return (b"E.pvdbg gdbserver is all-stop only; non-stop mode needs "
                        b"pvdbg repl --gdb PORT")
            return b"OK"
        try:
            set_non_stop(enable)
        except TargetError as error:
            return b"E." + str(error).encode("utf-8", "replace")
        with self._lock:
            self.enabled = enable
            self._queue.clear()
        return b"OK"

    def _next_stop(self) -> bytes:
        """vStopped: gdb took the head of the queue; the next stop or OK."""
        with self._lock:
            if self._queue:
                self._queue.popleft()
            return self._queue[0] if self._queue else b"OK"

    def _all_stops(self) -> bytes:
        """`?`: a new sequence with every stopped thread; OK while the guest runs."""
        with self._lock:
            self._queue.clear()
            if self.running:
                return b"OK"
        try:
            payloads = self._with_other_vcpus(self.stub.stop_replies(
                self.stub.target.stop_state(), announce=False).payloads[-1])
        except TargetError as error:
            log.debug("? in non-stop mode failed: %s", error)
            return b"E05"
        with self._lock:
            self._queue.extend(payloads)
            return self._queue[0]

    def _stop_before_leaving(self) -> Replies | None:
        """gdb 13 detaches (or kills) in non-stop mode without stopping its running
        threads first: the resume is ended here, its stop not reported, and the packet
        then handled on a stopped guest (None)."""
        self._leaving = True
        self._interrupt(by_t=False)
        if not self._stopped.wait(INTERRUPT_GIVE_UP_S):
            return Replies((b"E.the guest did not stop for gdb to leave",))
        return None

    def _interrupt(self, *, by_t: bool) -> None:
        """Stop the running resume; repeated until it stops (see INTERRUPT_RETRY_S)."""
        if not self.running:
            return
        self._stop_by_t = by_t
        target = self.stub.target
        target.request_stop()

        def repeat() -> None:
            for _ in range(int(INTERRUPT_GIVE_UP_S / INTERRUPT_RETRY_S)):
                if self._stopped.wait(INTERRUPT_RETRY_S):
                    return
                target.request_stop()
        threading.Thread(target=repeat, name="pvdbg-nonstop-interrupt", daemon=True).start()

    # -- resumes -------------------------------------------------------------------------
    def accept_resume(self, request: ResumeRequest) -> bytes:
        """`OK` when the resume may run (it then counts as running), else an `E` reply."""
        vcpus = self.stub.target.vcpu_ids()
        if len(vcpus) > 1 and any(request.actions.action_for(vcpu).kind is ResumeKind.STOP
                                  for vcpu in vcpus):
            return b"E.pvdbg runs all vcpus together: resume every thread (continue -a)"
        with self._lock:
            if self.running:
                return b"E.the guest is already running"
            self.running = True
            self._stopped.clear()
        return b"OK"

    def stopped(self, replies: Replies) -> bytes:
        """The resume ended with `replies` (console text, then the stop reply): the
        framed %Stop notification to write now, or b"" while gdb drains earlier stops."""
        reply = replies.payloads[-1] if replies.payloads else b""
        if self._stop_by_t and reply.startswith(SIGINT):
            reply = SIGNAL_0 + reply[len(SIGINT):]
        self._stop_by_t = False
        if self._leaving or reply[:1] not in (b"T", b"S", b"W", b"X"):
            if not self._leaving:
                log.error("resume ended without a stop reply: %r", reply[:64])
            with self._lock:
                self.running = False
            self._stopped.set()
            return b""
        stops = self._with_other_vcpus(reply)
        with self._lock:
            self.running = False
            notify = not self._queue
            self._queue.extend(stops)
        self._stopped.set()
        return notification(b"Stop:" + reply) if notify else b""

    def _with_other_vcpus(self, reply: bytes) -> list[bytes]:
        """`reply` first, then a signal-0 stop for every other online vcpu (all stopped)."""
        if not reply.startswith(b"T"):
            return [reply]
        marker = b"thread:"
        start = reply.find(marker)
        stopped = reply[start + len(marker):].split(b";", 1)[0] if start >= 0 else b""
        others = [b"T00thread:%s;" % thread_id(vcpu) for vcpu in self.stub.target.vcpu_ids()
                  if thread_id(vcpu) != stopped]
        return [reply, *others]


__all__ = ["NonStop", "notification"]
