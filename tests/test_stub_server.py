"""GDB stub server (pvdbg/stub/server.py) over real loopback sockets and pipes,
plus end-to-end runs of the real gdb against a FakeTarget."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvdbg.stub.rsp import NEED_DATA, Ack, Packet, RspConnection, decode_hex, frame
from pvdbg.stub.server import BUSY_MESSAGE, GdbServer, serve_stdio
from pvdbg.stub.target import StopEvent, StopReason
from test_stub_commands import MEMORY_BASE, FakeTarget, stop_reply

TIMEOUT_S = 10.0
REPO = Path(__file__).resolve().parents[1]


class GdbClient:
    """The gdb side of a connection, built on the same sans-IO framing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = RspConnection()
        self.acks = 0

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.conn.send(payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_packet(self) -> bytes:
        while True:
            event = self.conn.next_event()
            pending = self.conn.data_to_send()
            if pending:
                self.sock.sendall(pending)
            if isinstance(event, Packet):
                return event.payload
            if isinstance(event, Ack):
                self.acks += 1
            elif event is NEED_DATA:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("stub closed the connection")
                self.conn.receive_data(data)

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv_packet()

    def is_closed_by_peer(self) -> bool:
        """True once the stub closed its end (reads EOF)."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def server_log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def server(target: FakeTarget, server_log: io.StringIO) -> Iterator[GdbServer]:
    server = GdbServer(target, port=0, log=server_log)
    server.start()
    yield server
    server.shutdown()


@pytest.fixture
def client(server: GdbServer) -> Iterator[GdbClient]:
    client = GdbClient(server.port)
    yield client
    client.close()


# -- sockets ------------------------------------------------------------------------

def test_port_zero_picks_a_free_port(server: GdbServer) -> None:
    assert server.port > 0 and server.host == "127.0.0.1"


def test_acks_then_replies(client: GdbClient) -> None:
    assert client.request(b"qSupported:swbreak+").startswith(b"PacketSize=20000;")
    assert client.request(b"?") == stop_reply(5, 1, MEMORY_BASE)
    assert client.acks == 2


def test_no_ack_mode(client: GdbClient) -> None:
    assert client.request(b"QStartNoAckMode") == b"OK"
    client.conn.start_no_ack_mode()
    acks = client.acks
    assert client.request(b"qC") == b"QC1"
    assert client.request(b"m%x,2" % MEMORY_BASE) == b"0001"
    assert client.acks == acks


def test_bad_checksum_is_nacked_then_served(client: GdbClient, server_log: io.StringIO) -> None:
    client.send_raw(b"$qC#00")
    assert client.sock.recv(1) == b"-"
    client.send_raw(b"garbage")
    assert client.request(b"qC") == b"QC1"
    assert "bad checksum" in server_log.getvalue()
    assert "skipped 7 junk bytes" in server_log.getvalue()


def test_interrupt_while_resume_blocks(client: GdbClient, target: FakeTarget) -> None:
    client.send(b"vCont;c")
    assert target.resume_started.wait(TIMEOUT_S)
    client.send_raw(b"\x03")
    assert client.recv_packet() == stop_reply(2, 1, MEMORY_BASE)
    assert client.request(b"qC") == b"QC1"


def test_packets_while_running_get_errors(client: GdbClient, target: FakeTarget) -> None:
    client.send(b"c")
    assert target.resume_started.wait(TIMEOUT_S)
    assert client.request(b"g") == b"E16"
    client.send_raw(b"\x03")
    assert client.recv_packet() == stop_reply(2, 1, MEMORY_BASE)


def test_catch_message_arrives_as_console_output(client: GdbClient, target: FakeTarget) -> None:
    target.scripted.append(StopEvent(0, StopReason.CATCH, message="caught hypercall mmu_update"))
    client.send(b"vCont;c")
    output = client.recv_packet()
    assert output.startswith(b"O")
    assert decode_hex(output[1:]) == b"caught hypercall mmu_update\n"
    assert client.recv_packet() == stop_reply(5, 1, MEMORY_BASE)


def test_second_client_is_refused_while_first_stays(server: GdbServer, client: GdbClient,
                                                    server_log: io.StringIO) -> None:
    assert client.request(b"?") == stop_reply(5, 1, MEMORY_BASE)
    second = GdbClient(server.port)
    try:
        assert second.request(b"qSupported") == b"E." + BUSY_MESSAGE.encode()
        assert second.is_closed_by_peer()
    finally:
        second.close()
    assert client.request(b"qC") == b"QC1"
    assert "refused" in server_log.getvalue()


def test_reattach_after_dropped_connection(server: GdbServer, target: FakeTarget) -> None:
    first = GdbClient(server.port)
    assert first.request(b"Z0,%x,1" % (MEMORY_BASE + 4)) == b"OK"
    first.close()
    assert target.detached.wait(TIMEOUT_S)
    second = GdbClient(server.port)
    try:
        assert second.request(b"?") == stop_reply(5, 1, MEMORY_BASE)
        assert target.detach_count == 1
        assert target.breakpoints == set()
    finally:
        second.close()


def test_drop_while_running_stops_the_guest(server: GdbServer, target: FakeTarget) -> None:
    first = GdbClient(server.port)
    first.send(b"vCont;c")
    assert target.resume_started.wait(TIMEOUT_S)
    first.close()
    assert target.detached.wait(TIMEOUT_S)
    second = GdbClient(server.port)
    try:
        assert second.request(b"?") == stop_reply(2, 1, MEMORY_BASE)
        assert target.detach_count == 1
    finally:
        second.close()


def test_detach_closes_and_allows_a_new_client(server: GdbServer, target: FakeTarget) -> None:
    first = GdbClient(server.port)
    assert first.request(b"D") == b"OK"
    assert first.is_closed_by_peer()
    first.close()
    second = GdbClient(server.port)
    try:
        assert second.request(b"qfThreadInfo") == b"m1,2"
        assert target.detach_count == 1
    finally:
        second.close()


def test_kill_closes_without_reply(client: GdbClient, target: FakeTarget) -> None:
    client.send(b"k")
    assert client.is_closed_by_peer()
    assert target.killed
    assert target.detach_count == 0


def test_shutdown_stops_a_running_resume(target: FakeTarget, server_log: io.StringIO) -> None:
    server = GdbServer(target, port=0, log=server_log)
    server.start()
    client = GdbClient(server.port)
    try:
        client.send(b"vCont;c")
        assert target.resume_started.wait(TIMEOUT_S)
        server.shutdown()
        assert client.is_closed_by_peer()
    finally:
        client.close()
    assert target.stop_state().reason is StopReason.INTERRUPT
    assert target.detach_count == 1
    with pytest.raises(OSError):
        GdbClient(server.port)


def test_shutdown_is_idempotent_and_works_unstarted(target: FakeTarget) -> None:
    server = GdbServer(target, port=0, log=io.StringIO())
    server.shutdown()
    server.shutdown()


def test_binding_beyond_loopback_warns(target: FakeTarget) -> None:
    log = io.StringIO()
    with GdbServer(target, host="0.0.0.0", port=0, log=log):
        pass
    assert "WARNING" in log.getvalue() and "0.0.0.0" in log.getvalue()


def test_loopback_binding_is_quiet(target: FakeTarget) -> None:
    log = io.StringIO()
    with GdbServer(target, port=0, log=log):
        pass
    assert log.getvalue() == ""


# -- stdio --------------------------------------------------------------------------

def test_stdio_mode(target: FakeTarget) -> None:
    to_stub_read, to_stub_write = os.pipe()
    from_stub_read, from_stub_write = os.pipe()
    rfile, wfile = os.fdopen(to_stub_read, "rb"), os.fdopen(from_stub_write, "wb")
    worker = threading.Thread(target=serve_stdio, args=(target, rfile, wfile),
                              kwargs={"log": io.StringIO()}, daemon=True)
    worker.start()
    conn = RspConnection()

    def request(payload: bytes) -> bytes:
        os.write(to_stub_write, conn.send(payload))
        while True:
            event = conn.next_event()
            if isinstance(event, Packet):
                return event.payload
            if event is NEED_DATA:
                conn.receive_data(os.read(from_stub_read, 65536))

    try:
        assert request(b"?") == stop_reply(5, 1, MEMORY_BASE)
        assert request(b"vCont;s:2") == stop_reply(5, 2, MEMORY_BASE + 0x11)
        assert request(b"D") == b"OK"
        worker.join(TIMEOUT_S)
        assert not worker.is_alive()
    finally:
        for descriptor in (to_stub_write, from_stub_read):
            os.close(descriptor)
        rfile.close()
        wfile.close()
    assert target.detach_count == 1


def test_stdio_mode_with_in_memory_streams(target: FakeTarget) -> None:
    commands = frame(b"?") + frame(b"qC") + b"\x03" + frame(b"k")
    output = io.BytesIO()
    serve_stdio(target, io.BytesIO(commands), output, log=io.StringIO())
    assert output.getvalue() == b"+" + frame(stop_reply(5, 1, MEMORY_BASE)) + b"+" + frame(b"QC1") + b"+"
    assert target.killed


# -- end to end with real gdb -----------------------------------------------------------

GDB = shutil.which("gdb") or "/usr/bin/gdb"


def run_gdb(commands: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [GDB, "--nx", "--batch"]
    for command in commands:
        argv += ["-ex", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def assert_no_tdesc_warnings(output: str) -> None:
    lowered = output.lower()
    for needle in ("target description", "tdesc", "xml", "unknown register",
                   "could not load", "remote failure", "protocol error", "bogus"):
        assert needle not in lowered, output


@pytest.mark.e2e
def test_real_gdb_session(target: FakeTarget, server: GdbServer) -> None:
    breakpoint_va = MEMORY_BASE + 0x20
    result = run_gdb([
        f"target remote 127.0.0.1:{server.port}",
        "info registers",
        f"x/4xb {MEMORY_BASE:#x}",
        f"break *{breakpoint_va:#x}",
        "continue",
        "stepi",
        "info threads",
        "monitor help",
        "print $upcall_mask",
        "print/x $cr3",
        "print $xmm0.uint128",
        "set var $eax = 0x1234",
        "print/x $eax",
        "detach",
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_no_tdesc_warnings(output)
    assert "eip            0xc0100000" in output
    assert "upcall_mask    0x1" in output
    assert "cr0            0x8005003b          [ PE MP TS ET NE WP AM PG ]" in output
    assert f"{MEMORY_BASE:#x}:\t0x00\t0x01\t0x02\t0x03" in output
    assert f'Thread 1 "vcpu0" hit Breakpoint 1, {breakpoint_va:#x} in ?? ()' in output
    assert f"{breakpoint_va + 1:#x} in ?? ()" in output
    assert 'Thread 1 "vcpu0" (vcpu0 ring1 upcall_mask=1 pending=0)' in output
    assert 'Thread 2 "vcpu1" (vcpu1 ring1 upcall_mask=1 pending=0)' in output
    assert "fake monitor commands:" in output
    assert "$2 = 0x1234000" in output
    assert "$4 = 0x1234" in output
    assert "detached" in output
    assert target.registers[0]["eax"] == 0x1234
    assert target.detach_count == 1


@pytest.mark.e2e
def test_real_gdb_sees_catch_watch_and_shutdown(target: FakeTarget, server: GdbServer) -> None:
    data_va = MEMORY_BASE + 0x100
    target.scripted.extend([
        StopEvent(1, StopReason.CATCH, message="caught hypercall mmu_update (multicall entry 2 of 3)"),
        StopEvent(0, StopReason.AWATCH, address=data_va),
        StopEvent(0, StopReason.SHUTDOWN, message="domain shut down: poweroff", exit_code=0),
    ])
    result = run_gdb([
        f"target remote 127.0.0.1:{server.port}",
        f"awatch *(int *){data_va:#x}",
        "continue",
        "info threads",
        "continue",
        "continue",
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_no_tdesc_warnings(output)
    assert "caught hypercall mmu_update (multicall entry 2 of 3)" in output
    assert 'Thread 2 "vcpu1" received signal SIGTRAP' in output
    assert "* 2    Thread 2" in output
    assert f"Hardware access (read/write) watchpoint 1: *(int *){data_va:#x}" in output
    assert "domain shut down: poweroff" in output
    assert "exited normally" in output


@pytest.mark.e2e
def test_real_gdb_over_stdio(tmp_path: Path) -> None:
    launcher = tmp_path / "stub.py"
    launcher.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        "from test_stub_commands import FakeTarget\n"
        "from pvdbg.stub.server import serve_stdio\n"
        "serve_stdio(FakeTarget(), sys.stdin.buffer, sys.stdout.buffer)\n")
    result = run_gdb([f"target remote | {sys.executable} {launcher}", "stepi",
                      f"x/2xb {MEMORY_BASE + 1:#x}", "detach"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_no_tdesc_warnings(output)
    assert "Fatal Python error" not in output
    assert f"{MEMORY_BASE + 1:#x} in ?? ()" in output
    assert f"{MEMORY_BASE + 1:#x}:\t0x01\t0x02" in output


@pytest.mark.e2e
def test_real_gdb_refused_while_another_client_attached(server: GdbServer,
                                                        client: GdbClient) -> None:
    assert client.request(b"?") == stop_reply(5, 1, MEMORY_BASE)
    result = run_gdb([f"target remote 127.0.0.1:{server.port}"])
    assert BUSY_MESSAGE in result.stdout + result.stderr
    assert client.request(b"qC") == b"QC1"
