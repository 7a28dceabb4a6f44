"""gdb's non-stop protocol in the stub (pvdbg/stub/nonstop.py) on a guest shared with the
REPL: packet sequences over a loopback socket, then the real gdb (`set non-stop on`,
`target remote`) next to a REPL driven through pipe input.  Ports are picked free,
every wait has a timeout, nothing sleeps."""
from __future__ import annotations

import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from gdbmi import Gdb
from pvdbg.session import Session, SessionOptions, bundled_guest_path
from pvdbg.stub.engine import SessionTarget
from pvdbg.stub.nonstop import notification
from pvdbg.stub.rsp import checksum
from pvdbg.stub.server import GdbServer
from pvdbg.views.control import Controller, Runner, SharedSessionTarget
from pvdbg.views.repl import Repl

TIMEOUT_S = 20.0
LONG_RUN = "bench=400000000"
SEED = Session.open(None).image.symbols
STARTUP = SEED.address("startup_xen")
LOOP_BODY = SEED.address("bench_loop_body")


class RawGdb:
    """The gdb side of one connection, by hand: packets out, replies and %notifications
    in (acks skipped)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.buffer = b""
        self.notifications: list[bytes] = []

    def ask(self, payload: bytes) -> bytes:
        """Send a packet; return its reply (notifications met on the way are kept)."""
        self.sock.sendall(b"$" + payload + b"#%02x" % checksum(payload))
        while True:
            kind, body = self._next()
            if kind == b"$":
                return body
            self.notifications.append(body)

    def notification(self) -> bytes:
        """The next %notification's body (waits up to the socket timeout)."""
        if self.notifications:
            return self.notifications.pop(0)
        kind, body = self._next()
        assert kind == b"%", f"expected a notification, got the reply {body!r}"
        return body

    def _next(self) -> tuple[bytes, bytes]:
        while True:
            match = re.match(rb"\+*([$%])([^#]*)#([0-9a-f]{2})", self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                body = match.group(2)
                assert int(match.group(3), 16) == checksum(body)
                if match.group(1) == b"$":
                    self.sock.sendall(b"+")
                return match.group(1), body
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def shared() -> Iterator[tuple[Controller, GdbServer]]:
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    server = GdbServer(SharedSessionTarget(controller), port=0)
    server.start()
    yield controller, server
    server.shutdown()
    controller.session.close()


def wait_until(predicate, timeout: float = TIMEOUT_S) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        event.wait(0.01)
    return predicate()


def connect_non_stop(port: int) -> RawGdb:
    gdb = RawGdb(port)
    assert b"QNonStop+" in gdb.ask(b"qSupported:swbreak+;hwbreak+").split(b";")
    assert gdb.ask(b"QNonStop:1") == b"OK"
    return gdb


def test_notification_framing():
    assert notification(b"Stop:T05thread:1;") == b"%Stop:T05thread:1;#" + \
        b"%02x" % checksum(b"Stop:T05thread:1;")
    assert notification(b"a#b") == b"%a}\x03b#" + b"%02x" % checksum(b"a}\x03b")


def test_all_stop_gdb_is_told_all_stop_and_nothing_changes(shared):
    controller, server = shared
    gdb = RawGdb(server.port)
    try:
        gdb.ask(b"qSupported:swbreak+")
        assert gdb.ask(b"QNonStop:0") == b"OK"
        assert gdb.ask(b"?").startswith(b"T05thread:1;")
        assert gdb.ask(b"vStopped") == b""              # not a non-stop packet here
        assert gdb.ask(b"vCtrlC") == b""
        assert not controller.non_stop
    finally:
        gdb.close()


def test_plain_gdbserver_refuses_non_stop_in_one_line():
    server = GdbServer(SessionTarget(Session.open(None)), port=0)
    server.start()
    gdb = RawGdb(server.port)
    try:
        gdb.ask(b"qSupported")
        reply = gdb.ask(b"QNonStop:1")
        assert reply.startswith(b"E.") and b"pvdbg repl --gdb" in reply
        assert gdb.ask(b"QNonStop:0") == b"OK"
        assert gdb.ask(b"QNonStop:x") == b"E16"
    finally:
        gdb.close()
        server.shutdown()


def test_non_stop_resume_is_ok_at_once_and_each_stop_a_notification(shared):
    controller, server = shared
    gdb = connect_non_stop(server.port)
    try:
        assert controller.non_stop
        assert gdb.ask(b"?").startswith(b"T05thread:1;")   # the one stopped thread
        assert gdb.ask(b"vStopped") == b"OK"
        assert gdb.ask(b"vCont;c") == b"OK"
        assert wait_until(lambda: controller.runner is Runner.gdb)
        # While it runs: `?` says all threads run; reads fail at once; threads answer.
        assert gdb.ask(b"?") == b"OK"
        assert gdb.ask(b"m%x,4" % STARTUP).startswith(b"E")
        assert gdb.ask(b"g").startswith(b"E")
        assert gdb.ask(b"qfThreadInfo") == b"m1"
        assert gdb.ask(b"vCont;c") .startswith(b"E.")     # already running
        # ^C in non-stop is vCtrlC: OK, then the stop as %Stop with SIGINT.
        assert gdb.ask(b"vCtrlC") == b"OK"
        stop = gdb.notification()
        assert stop.startswith(b"Stop:T02") and b"thread:1;" in stop
        assert gdb.ask(b"vStopped") == b"OK"
        assert not controller.gdb_pending
        assert gdb.ask(b"m%x,4" % STARTUP) == controller.session.read_memory(STARTUP, 4).hex().encode()
        # `interrupt` is vCont;t: the stop is reported with signal 0.
        assert gdb.ask(b"vCont;c:1") == b"OK"
        assert wait_until(lambda: controller.runner is Runner.gdb)
        assert gdb.ask(b"vCont;t:1") == b"OK"
        assert gdb.notification().startswith(b"Stop:T00")
        assert gdb.ask(b"vStopped") == b"OK"
        assert gdb.ask(b"vCont;t:1") == b"OK"              # already stopped: nothing more
        # A step: OK, then its stop.
        assert gdb.ask(b"vCont;s:1") == b"OK"
        assert gdb.notification().startswith(b"Stop:T05")
        assert gdb.ask(b"vStopped") == b"OK"
        # Detaching while the guest runs ends gdb's resume first; the guest stays stopped.
        assert gdb.ask(b"vCont;c") == b"OK"
        assert wait_until(lambda: controller.runner is Runner.gdb)
        assert gdb.ask(b"D") == b"OK"
        assert not controller.gdb_attached and not controller.running
    finally:
        gdb.close()


def test_non_stop_gdb_sees_the_stop_after_the_repl_held_and_continued(shared):
    controller, server = shared
    gdb = connect_non_stop(server.port)
    try:
        gdb.ask(b"?")
        gdb.ask(b"vStopped")
        assert gdb.ask(b"vCont;c") == b"OK"
        assert wait_until(lambda: controller.runner is Runner.gdb)
        assert controller.request_stop()                   # the REPL's stop: a hold
        assert wait_until(lambda: controller.held and controller.runner is None)
        # gdb still sees a running thread, and reads the held guest as it is.
        assert gdb.ask(b"?") == b"OK"
        eip = controller.session.cpu.read("eip")
        assert gdb.ask(b"m%x,1" % eip) == controller.session.read_memory(eip, 1).hex().encode()
        assert gdb.ask(b"Z0,%x,1" % LOOP_BODY) == b"OK"    # a breakpoint, inserted now
        assert controller.start(lambda session: session.run(), "continue") is None
        stop = gdb.notification()                          # the stop the REPL's continue ran to
        assert stop.startswith(b"Stop:T05") and b"swbreak:" in stop
        assert gdb.ask(b"vStopped") == b"OK"
        assert controller.session.cpu.read("eip") == LOOP_BODY
        assert controller.holder_text() == "gdb holds it (non-stop)"
    finally:
        gdb.close()


@pytest.fixture
def repl_with_gdb() -> Iterator[tuple[Repl, object, GdbServer]]:
    """A REPL on pipe input and a GDB stub on a free port, sharing one guest."""
    assert shutil.which("gdb"), "gdb is needed (apt-get install gdb)"
    stack = ExitStack()
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    server = GdbServer(SharedSessionTarget(controller), port=0)
    server.start()
    pipe = stack.enter_context(create_pipe_input())
    repl = Repl(controller, input=pipe, output=DummyOutput(), history=InMemoryHistory(),
                color=False, gdb_label=lambda: f"gdb 127.0.0.1:{server.port}")
    thread = threading.Thread(target=repl.run, daemon=True)
    thread.start()
    assert repl.wait_for_output(lambda text: "halted at its first instruction" in text,
                                TIMEOUT_S)
    yield repl, pipe, server
    pipe.send_text("\x04")
    thread.join(TIMEOUT_S)
    server.shutdown()
    stack.close()
    controller.session.close()


def typed(repl: Repl, pipe, line: str, expect: str) -> str:
    start = len(repl.transcript_text())
    pipe.send_text(line + "\n")
    assert repl.wait_for_output(lambda text: expect in text[start:], TIMEOUT_S), \
        f"{expect!r} never printed after {line!r}:\n{repl.transcript_text()[-2000:]}"
    return repl.transcript_text()[start:]


@pytest.mark.e2e
def test_real_gdb_non_stop_sees_the_stop_after_the_repl_resumes(repl_with_gdb):
    repl, pipe, server = repl_with_gdb
    controller = repl.controller
    gdb = Gdb(bundled_guest_path())
    try:
        gdb.cmd("-gdb-set non-stop on")
        out = gdb.connect(f"127.0.0.1:{server.port}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        assert controller.non_stop
        assert repl.status().gdb == "gdb holds it (non-stop)"
        # gdb holds the guest stopped: the REPL's continue says how to get it.
        assert "`continue &` there" in typed(repl, pipe, "continue", "error:")
        # gdb continues (its prompt stays free); the REPL stops it: held, gdb waits.
        gdb.cmd("-exec-continue")
        assert wait_until(lambda: controller.runner is Runner.gdb)
        assert "Unable to read memory" in str(gdb.cmd(f"-data-read-memory-bytes {STARTUP:#x} 4"))
        typed(repl, pipe, "stop", "the REPL holds the guest")
        assert repl.status().gdb == "REPL holds it, gdb waits (non-stop)"
        memory = gdb.cmd(f"-data-read-memory-bytes {STARTUP:#x} 4")
        assert controller.session.read_memory(STARTUP, 4).hex() in str(memory)
        assert "(running)" in gdb.console("info threads")
        typed(repl, pipe, "stepi", "stopped: step")
        out = gdb.cmd("-break-insert bench_loop_body")
        assert any(r["message"] == "done" for r in out if r["type"] == "result"), out
        # The REPL resumes; gdb sees the stop that follows, and so does the REPL.
        typed(repl, pipe, "continue", "[gdb] stopped: breakpoint")
        stop = gdb.wait_stopped()
        assert stop["reason"] == "breakpoint-hit" and stop["frame"]["addr"] == f"{LOOP_BODY:#010x}"
        assert f"{LOOP_BODY:#x}" in gdb.console("p/x $pc")
        assert repl.status().gdb == "gdb holds it (non-stop)"
        # gdb's interrupt takes the guest from a REPL hold (signal 0, as for `interrupt`).
        gdb.cmd("-break-delete")
        gdb.cmd("-exec-continue")
        assert wait_until(lambda: controller.runner is Runner.gdb)
        typed(repl, pipe, "stop", "the REPL holds the guest")
        gdb.cmd("-exec-interrupt")
        assert gdb.wait_stopped()["signal-name"] == "0"
        assert wait_until(lambda: not controller.gdb_pending)
        # gdb 13 detaches with its thread running (no stop first): the stub ends that
        # run, and the guest is the REPL's again.
        gdb.cmd("-exec-continue")
        assert wait_until(lambda: controller.runner is Runner.gdb)
        gdb.cmd("-target-detach")
        assert repl.wait_for_output(lambda text: "gdb detached" in text, TIMEOUT_S)
        assert not controller.gdb_attached and not controller.running
        typed(repl, pipe, "continue", "continuing")
        typed(repl, pipe, "stop", "stopped: interrupt")
    finally:
        gdb.close()


@pytest.mark.e2e
def test_real_gdb_ctrl_c_in_non_stop_is_vctrlc_and_a_sigint_notification(shared):
    """gdb's CLI in a terminal (tmux): Ctrl-C while `continue` runs in non-stop mode."""
    from test_repl_e2e import Tmux
    controller, server = shared
    tmux = Tmux(["gdb", "-q", "-nx", str(bundled_guest_path()), "-ex", "set non-stop on",
                 "-ex", "set debug remote 1", "-ex", f"target remote 127.0.0.1:{server.port}"],
                {"TERM": "xterm"}, width=200, height=50)
    try:
        tmux.wait_for("(gdb)")
        assert controller.non_stop
        mark = tmux.mark()
        tmux.type("continue")
        assert wait_until(lambda: controller.runner is Runner.gdb)
        tmux.keys("C-c")
        screen = tmux.wait_for("received signal SIGINT", mark)
        assert "Sending packet: $vCtrlC" in screen
        assert "Notification received: Stop:T02thread:1;" in screen
        assert wait_until(lambda: not controller.gdb_pending)
        mark = tmux.mark()
        tmux.type("detach")
        tmux.wait_for("detached", mark)
        assert wait_until(lambda: not controller.gdb_attached)
    finally:
        tmux.close()
