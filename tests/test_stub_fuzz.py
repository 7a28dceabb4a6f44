"""Hostile gdb clients: the RSP layer and a live stub under fuzzing (issue 9 item 3).

Three layers, cheapest first:

* the sans-IO framing (`RspConnection`) under hypothesis: arbitrary bytes in arbitrary
  chunks give only events or RspProtocolError, memory stays bounded, and framed payloads
  (binary, escaped) survive noise around them;
* the packet handlers (`Stub`) over a real `SessionTarget` on the seed guest: random and
  valid-looking packets with garbage arguments never raise and never hit the "pvdbg bug"
  reply E01;
* a live `pvdbg gdbserver --port 0` process: random, truncated, oversized, badly
  checksummed and escaped packets, drops mid-packet and mid-run, 0x03 floods, a second
  client; afterwards the real gdb attaches and debugs normally, and the stub never died
  or printed a traceback.

CI runs a small number of cases. The long run (>= 100,000 cases per property):
    PVDBG_SLOW=1 python -m pytest -m slow tests/test_stub_fuzz.py
with PVDBG_FUZZ_EXAMPLES=N to change the count.
"""
from __future__ import annotations

import io
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdbg.session import Session, SessionOptions, bundled_guest_path
from pvdbg.stub.commands import RSP, Replies, ResumeRequest, Stub
from pvdbg.stub.engine import EFLAGS_FROM_DEBUGGER, SessionTarget
from pvdbg.stub.rsp import (MAX_PACKET_SIZE, NEED_DATA, Ack, DroppedPacket, Interrupt, Nack,
                            NeedData, Packet, RspConnection, RspProtocolError, escape, frame)
from pvdbg.stub.target import ResumeKind
from pvdbg.xen.image import load_guest_image

CI_EXAMPLES = 300
LONG_EXAMPLES = max(100_000, int(os.environ.get("PVDBG_FUZZ_EXAMPLES", "100000")))
HOLE_VA = 0xF5800000
SEED_ELF = bundled_guest_path()


def _ci(test: Callable) -> Callable:
    return settings(max_examples=CI_EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])(test)


def _long(test: Callable, examples: int = LONG_EXAMPLES) -> Callable:
    return pytest.mark.slow(settings(max_examples=examples, deadline=None, database=None,
                                     suppress_health_check=[HealthCheck.too_slow])(test))


# -- 1. the sans-IO framing -------------------------------------------------------------

EVENT_TYPES = (Packet, Interrupt, Ack, Nack, DroppedPacket, NeedData)
rsp_noise = st.binary(max_size=400) | st.lists(
    st.sampled_from(b"$#}*+-\x03aG0f9:") | st.integers(0, 255), max_size=400).map(bytes)


def _feed(conn: RspConnection, chunks: list[bytes], limit: int) -> list[object]:
    """Events and error texts for `chunks`; asserts the memory bound after every event."""
    log: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except RspProtocolError as error:
                log.append(("error", str(error)))
                continue
            finally:
                sent = conn.data_to_send()
                if sent:
                    log.append(("send", sent))
            assert isinstance(event, EVENT_TYPES), event
            assert conn.buffered_bytes <= limit + 2 + len(chunk)
            if event is NEED_DATA:
                break
            log.append(event)
    return log


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=16)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def _noise_parses_or_raises_rsp_errors(data: st.DataObject, stream: bytes, ack_mode: bool,
                                       limit: int) -> None:
    def fresh() -> RspConnection:
        conn = RspConnection(limit)
        conn.send(b"OK")
        if not ack_mode:
            conn.start_no_ack_mode()
        return conn

    whole = _feed(fresh(), [stream], limit)
    assert _feed(fresh(), data.draw(chunked(stream)), limit) == whole


_noise_given = given(st.data(), rsp_noise, st.booleans(),
                     st.sampled_from([1, 8, 64, MAX_PACKET_SIZE]))
test_noise_parses_or_raises_rsp_errors = _ci(_noise_given(_noise_parses_or_raises_rsp_errors))
test_noise_parses_or_raises_rsp_errors_long = _long(
    _noise_given(_noise_parses_or_raises_rsp_errors))


# Noise that cannot swallow a following frame: no '$' (which would start a packet).
between_frames = st.lists(st.sampled_from([b"+", b"-", b"\x03", b"\x03" * 64, b"junk", b"#zz",
                                           b"}", b"*"]), max_size=3).map(b"".join)


def _framed_payloads_survive_noise(data: st.DataObject, payloads: list[bytes],
                                   gaps: list[bytes]) -> None:
    stream = b"".join(gap + frame(payload) for payload, gap in zip(payloads, gaps))
    log = _feed(RspConnection(), data.draw(chunked(stream)), MAX_PACKET_SIZE)
    assert [e for e in log if isinstance(e, Packet)] == [Packet(p) for p in payloads]


_framed_given = given(st.data(), st.lists(st.binary(max_size=300), max_size=6),
                      st.lists(between_frames, min_size=6, max_size=6))
test_framed_payloads_survive_noise = _ci(_framed_given(_framed_payloads_survive_noise))
test_framed_payloads_survive_noise_long = _long(_framed_given(_framed_payloads_survive_noise))


def _damaged_frames_never_become_packets(payload: bytes, damage: int, tail: bytes) -> None:
    """A frame with a wrong checksum, or torn by a new '$', never yields its payload;
    the intact frame after it always does."""
    framed = frame(payload)
    if damage == 0:      # wrong checksum digits
        good = int(framed[-2:], 16)
        bad = framed[:-2] + b"%02x" % ((good + 1) & 0xFF)
    elif damage == 1:    # non-hex checksum
        bad = framed[:-2] + b"zz"
    elif damage in (2, 3):   # torn inside the checksum, right before the next '$'
        bad = framed[:1 - damage]
    else:                # torn: cut before the '#'
        bad = framed[:max(1, min(damage, len(framed) - 3))]
    log = _feed(RspConnection(), [bad + frame(tail)], MAX_PACKET_SIZE)
    packets = [e for e in log if isinstance(e, Packet)]
    assert packets == [Packet(tail)]
    assert any(isinstance(e, tuple) and e[0] == "error" for e in log)


_damaged_given = given(st.binary(max_size=200), st.integers(0, 300), st.binary(max_size=50))
test_damaged_frames_never_become_packets = _ci(_damaged_given(_damaged_frames_never_become_packets))
test_damaged_frames_never_become_packets_long = _long(
    _damaged_given(_damaged_frames_never_become_packets))


def _oversized_is_dropped_in_bounded_memory(extra: int, terminated: bool, chunk: int) -> None:
    limit = 64
    body = bytes(range(0x30, 0x30 + 40)) * ((limit + extra) // 40 + 1)
    stream = b"$" + body[:limit + extra] + (b"#00" if terminated else b"") + frame(b"g")
    log = _feed(RspConnection(limit), [stream[i:i + chunk] for i in range(0, len(stream), chunk)],
                limit)
    assert log[-1] == Packet(b"g") or log[-2] == Packet(b"g")
    assert not any(isinstance(e, Packet) and e.payload != b"g" for e in log)


_oversized_given = given(st.integers(1, 5000), st.booleans(), st.integers(1, 700))
test_oversized_is_dropped_in_bounded_memory = _ci(
    _oversized_given(_oversized_is_dropped_in_bounded_memory))
test_oversized_is_dropped_in_bounded_memory_long = _long(
    _oversized_given(_oversized_is_dropped_in_bounded_memory))


def _binary_escapes_round_trip(payload: bytes) -> None:
    escaped = escape(payload)
    assert not any(byte in b"#$*" for byte in escaped)
    log = _feed(RspConnection(), [frame(b"X0,%x:" % len(payload) + payload)], MAX_PACKET_SIZE)
    assert log[-1] == Packet(b"X0,%x:" % len(payload) + payload)


_escape_given = given(st.binary(max_size=500) | st.lists(st.sampled_from(b"}#$*\x03\x00"),
                                                         max_size=200).map(bytes))
test_binary_escapes_round_trip = _ci(_escape_given(_binary_escapes_round_trip))
test_binary_escapes_round_trip_long = _long(_escape_given(_binary_escapes_round_trip))


# -- 2. packet handlers over a real SessionTarget ------------------------------------

ADDRESSES = [0, 1, 0x1000, 0x40000000, 0xBFFFFFFF, 0xC0000000, 0xC0000FFF, 0xC0001000,
             0xC0008FFE, 0xC03FFFFF, 0xC0400000, HOLE_VA - 2, HOLE_VA, 0xFFC00000, 0xFFFFF000,
             0xFFFFFFFF, 0x100000000, 1 << 64, (1 << 128) - 1]
LENGTHS = [0, 1, 2, 3, 4, 8, 15, 0x1000, 0x1001, 0x10000, 0x10001, 0x7FFFFFFF, 0xFFFFFFFF,
           1 << 40, 1 << 64]
THREADS = [b"-1", b"0", b"1", b"2", b"ffffffff", b"p1.1", b"p-1.-1", b"", b"zz", b"1" * 40]
MONITOR = [b"help", b"help nope", b"vcpu 9", b"vcpu -1", b"hypercalls 99999999999",
           b"hypercalls 0 x", b"console -5", b"console 0", b"catch trap 999", b"catch",
           b"catch hypercall nope", b"catch pagetype 99999999999999", b"catch upcall -1",
           b"uncatch 77", b"uncatch x", b"catchpoints", b"abi", b"abi nope", b"stop-reason",
           b"trace status", b"trace", b"trace save /nonexistent/dir/x", b"'unterminated",
           b"", b"\xff\xfe"]

address = st.sampled_from(ADDRESSES) | st.integers(0, (1 << 32) - 1)
length = st.sampled_from(LENGTHS) | st.integers(0, 0x2000)
hexnum = address.map(lambda n: b"%x" % n)
garbage = st.binary(max_size=40)


@st.composite
def hostile_packet(draw: st.DrawFn) -> bytes:
    """A packet gdb could send, with arguments from the edges of every range."""
    kind = draw(st.integers(0, 17))
    if kind == 0:
        return b"m%x,%x" % (draw(address), draw(length))
    if kind == 1:
        data = draw(st.binary(max_size=16))
        return b"M%x,%x:%s" % (draw(address), draw(st.just(len(data)) | length),
                               data.hex().encode())
    if kind == 2:
        data = draw(st.binary(max_size=16))
        return b"X%x,%x:" % (draw(address), draw(st.just(len(data)) | length)) + data
    if kind == 3:
        return b"%s%x,%x,%x" % (draw(st.sampled_from([b"Z", b"z"])), draw(st.integers(0, 6)),
                               draw(address), draw(length))
    if kind == 4:
        return b"G" + draw(st.binary(max_size=400)).hex().encode()[:draw(st.integers(0, 800))]
    if kind == 5:
        return b"P%x=%s" % (draw(st.integers(0, 90)),
                            draw(st.binary(min_size=1, max_size=17)).hex().encode())
    if kind == 6:
        return b"p" + draw(hexnum | garbage)
    if kind == 7:
        actions = draw(st.lists(st.sampled_from([b"c", b"s", b"t", b"C05", b"Sff", b"q", b"r"])
                                | address.map(lambda n: b"r%x,%x" % (n, n + 16)),
                                min_size=1, max_size=3))
        threads = draw(st.lists(st.sampled_from([b""] + [b":" + t for t in THREADS]),
                                min_size=len(actions), max_size=len(actions)))
        return b"vCont" + b"".join(b";" + a + t for a, t in zip(actions, threads))
    if kind == 8:
        annex = draw(st.sampled_from([b"qXfer:features:read:target.xml:", b"qXfer:threads:read::",
                                      b"qXfer:features:read:pvdbg-xen.xml:",
                                      b"qXfer:threads:read:x:",
                                      b"qXfer:features:read:../../etc/passwd:"]))
        return annex + b"%x,%x" % (draw(address), draw(length))
    if kind == 9:
        operation = draw(st.sampled_from([b"g", b"c", b"x", b""]))
        return b"H" + operation + draw(st.sampled_from(THREADS))
    if kind == 10:
        return draw(st.sampled_from([b"T", b"qThreadExtraInfo,"])) + draw(st.sampled_from(THREADS))
    if kind == 11:
        return b"qRcmd," + (draw(st.sampled_from(MONITOR)) + draw(garbage)).hex().encode()
    if kind == 12:
        return draw(st.sampled_from([b"s", b"S05", b"vCont;s:1", b"S", b"szz", b"vCont;t"]))
    if kind == 13:
        return draw(st.sampled_from([b"?", b"g", b"qC", b"qfThreadInfo", b"qsThreadInfo",
                                     b"qAttached", b"vCont?", b"qSupported:swbreak+;hwbreak+",
                                     b"qSupported:" + b";" * 100, b"qSupportedx", b"D;1",
                                     b"vFile:open:2f6574632f706173737764,0,0", b"qRcmd,zz"]))
    if kind == 14:
        return b"qRcmd," + draw(st.binary(max_size=30)).hex().encode()
    if kind == 15:
        return draw(st.sampled_from([spec.name for spec in RSP])) + draw(garbage)
    if kind == 16:
        return draw(st.sampled_from([b"c", b"C", b"s", b"S"])) + draw(garbage)
    return draw(garbage)


@pytest.fixture(scope="module")
def seed_image():
    return load_guest_image(str(SEED_ELF))


class _BugLog(logging.Handler):
    """Collects records the stub logs at ERROR: those are pvdbg bugs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _bounded(request: ResumeRequest) -> bool:
    """Steps and short range steps run in the handler fuzz; continuing needs a 0x03
    (the socket fuzz covers that)."""
    actions = [*request.actions.per_vcpu.values(), request.actions.default]
    if any(a.kind is ResumeKind.CONTINUE for a in actions):
        return False
    return all(a.kind is not ResumeKind.RANGE_STEP or a.range_end - a.range_start <= 64
               for a in actions)


def _handlers_never_fail(seed_image, packets: list[bytes]) -> None:
    session = Session(seed_image, SessionOptions(memory_mib=4))
    stub = Stub(SessionTarget(session))
    bugs = _BugLog()
    logger = logging.getLogger("pvdbg.stub.commands")
    logger.addHandler(bugs)
    try:
        for payload in packets:
            outcome = stub.handle(payload)
            if isinstance(outcome, ResumeRequest):
                if not _bounded(outcome):
                    continue
                outcome = stub.run_resume(outcome)
            assert isinstance(outcome, Replies)
            assert b"E01" not in outcome.payloads, (payload, bugs.records)
            assert all(isinstance(p, bytes) for p in outcome.payloads)
            # Debugger writes never give the vcpu flags Xen would not: IF on, IOPL 0, no VM.
            assert session.cpu.read("eflags") & ~EFLAGS_FROM_DEBUGGER == 0x202 or session.crash
    finally:
        logger.removeHandler(bugs)
    assert bugs.records == []


_handlers_given = given(packets=st.lists(hostile_packet(), min_size=1, max_size=12))
test_handlers_never_fail = _ci(_handlers_given(_handlers_never_fail))
test_handlers_never_fail_long = _long(_handlers_given(_handlers_never_fail), LONG_EXAMPLES // 5)


def test_zero_length_memory_write_is_ok(seed_image) -> None:
    """Found by the fuzz: `M addr,0:` reached Unicorn's cache flush with an empty range."""
    stub = Stub(SessionTarget(Session(seed_image, SessionOptions(memory_mib=4))))
    assert stub.handle(b"Mc0000000,0:").payloads == (b"OK",)
    assert stub.handle(b"Mffffffffffffffff,0:").payloads == (b"OK",)


def test_debugger_cannot_set_privileged_eflags(seed_image) -> None:
    """Found by the fuzz: a P write of EFLAGS.VM put the ring-1 vcpu in virtual-8086
    mode, where a far return reached ring 0. Xen keeps IF=1, IOPL=0, VM=0 for PV vcpus."""
    session = Session(seed_image, SessionOptions(memory_mib=4))
    stub = Stub(SessionTarget(session))
    number = next(i for i, spec in enumerate(stub.tdesc.registers) if spec.name == "eflags")
    assert stub.handle(b"P%x=de62dee1" % number).payloads == (b"OK",)
    assert session.cpu.read("eflags") == 0xE1DE62DE & EFLAGS_FROM_DEBUGGER | 0x202
    assert stub.handle(b"P%x=01010000" % number).payloads == (b"OK",)
    assert session.cpu.read("eflags") == 0x303           # CF and TF taken, IF kept


def test_monitor_cannot_write_host_files(seed_image, tmp_path: Path) -> None:
    stub = Stub(SessionTarget(Session(seed_image, SessionOptions(memory_mib=4))))
    target = tmp_path / "stolen.jsonl"
    replies = stub.handle(b"qRcmd," + f"trace save {target}".encode().hex().encode()).payloads
    assert replies[-1] == b"OK"
    assert b"no host file access" in bytes.fromhex(replies[0][1:].decode())
    assert not target.exists()


def test_breakpoint_inserted_while_the_guest_loops_is_hit(seed_image) -> None:
    """Found by the socket fuzz: a breakpoint set inside a loop the guest had already run
    was never hit (the code hook was missing from the cached translation)."""
    session = Session(seed_image, SessionOptions(memory_mib=4, cmdline="bench=100000000"))
    stub = Stub(SessionTarget(session))
    body = seed_image.symbols.address("bench_loop_body")
    assert session.run(max_insns=200_000).reason == "limit"
    assert body <= session.cpu.read("eip") < body + 32          # inside the loop
    assert stub.handle(b"Z0,%x,1" % body).payloads == (b"OK",)
    replies = stub.run_resume(stub.handle(b"c")).payloads
    regs = session.cpu.read_many(("esp", "ebp", "eip"))
    assert regs["eip"] == body
    assert replies == (b"T05thread:1;04:%s;05:%s;08:%s;" % tuple(
        regs[name].to_bytes(4, "little").hex().encode() for name in ("esp", "ebp", "eip")),)
    assert session.cpu.read("eip") == body


def test_resume_after_kill_is_an_error_reply_not_a_bug(seed_image) -> None:
    stub = Stub(SessionTarget(Session(seed_image, SessionOptions(memory_mib=4))))
    bugs = _BugLog()
    logging.getLogger("pvdbg.stub.commands").addHandler(bugs)
    try:
        stub.handle(b"k")
        replies = stub.run_resume(stub.handle(b"c")).payloads
    finally:
        logging.getLogger("pvdbg.stub.commands").removeHandler(bugs)
    assert b"killed" in bytes.fromhex(replies[0][1:].decode())
    assert replies[-1].startswith(b"T") and bugs.records == []


def test_packet_torn_inside_its_checksum_keeps_the_next_packet() -> None:
    """Found by the socket fuzz: `$qC#1` followed by a packet swallowed that packet's '$'."""
    for torn in (b"$qC#", b"$qC#1"):
        log = _feed(RspConnection(), [torn + frame(b"g")], MAX_PACKET_SIZE)
        assert log[-1] == Packet(b"g"), log
        assert log[0][0] == "error" and "checksum" in log[0][1]


def test_interrupt_right_after_continue_always_stops(seed_image) -> None:
    """`c` and 0x03 in one segment: the ^C can reach the engine before its run starts;
    the stub repeats it until the run stops (found by the socket fuzz)."""
    from pvdbg.stub.server import GdbServer

    class SlowStart(SessionTarget):
        def resume(self, actions):
            time.sleep(0.02)               # the ^C arrives before the engine runs
            return super().resume(actions)

    session = Session(seed_image, SessionOptions(memory_mib=4, cmdline="bench=4000000000"))
    with GdbServer(SlowStart(session), port=0, log=io.StringIO()) as server:
        server.start()
        client = RawClient(server.port)
        try:
            for _ in range(5):
                client.send(frame(b"c") + b"\x03")
                assert client.wait_for(_is_stop_reply, 10).startswith(b"T02")
        finally:
            client.close()


def test_client_that_never_reads_is_pushed_back(seed_image) -> None:
    """A gdb that floods requests but never reads the replies must not make the stub
    buffer without end: once our replies back up, we stop reading and TCP pushes back."""
    from pvdbg.stub.server import GdbServer
    session = Session(seed_image, SessionOptions(memory_mib=4))
    with GdbServer(SessionTarget(session), port=0, log=io.StringIO()) as server:
        server.start()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=1.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        request = frame(b"mc0000000,8000") * 4096             # 1 MiB of reads, 32 KiB each
        sent = 0
        try:
            with pytest.raises(socket.timeout):
                while sent < 256 << 20:
                    sock.sendall(request)
                    sent += len(request)
        finally:
            sock.close()
        assert sent < 64 << 20


# -- 3. a live stub process under socket fuzzing, then the real gdb ----------------------

class StubProcess:
    """`pvdbg gdbserver --port 0` with stderr in a file (a pipe could fill and block it)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / "gdbserver.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "pvdbg.cli", "gdbserver", "--port", "0",
                                      *args], stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + 30
        self.port = 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"listening on [\d.]+:(\d+)", self.stderr)
            if found:
                self.port = int(found.group(1))
                break
            time.sleep(0.02)
        if not self.port:
            self.close()
            raise RuntimeError("gdbserver did not start: " + self.stderr)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


class RawClient:
    """A hostile gdb: raw bytes out, replies parsed with the same sans-IO framing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = RspConnection(1 << 22)
        self._probes = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def packets(self, timeout: float) -> list[bytes]:
        """Reply payloads that arrive within `timeout` seconds of quiet."""
        out: list[bytes] = []
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                self.conn.receive_data(data)
                out += self._parsed()
        except (socket.timeout, ConnectionResetError):
            pass
        return out

    def wait_for(self, wanted: Callable[[bytes], bool], timeout: float = 20.0) -> bytes:
        """Read replies until one satisfies `wanted`; returns it."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(1.0)
        while time.monotonic() < deadline:
            for payload in self._parsed():
                if wanted(payload):
                    return payload
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.conn.receive_data(data)
        raise TimeoutError("no matching reply from the stub")

    def _parsed(self) -> list[bytes]:
        out = []
        while True:
            try:
                event = self.conn.next_event()
            except RspProtocolError:
                continue
            self.conn.data_to_send()
            if event is NEED_DATA:
                return out
            if isinstance(event, Packet):
                out.append(event.payload)

    def sync(self) -> None:
        """Wait until the stub has answered everything sent so far: a features read
        whose length no earlier probe used, so a stale or resent reply cannot match."""
        self._probes += 1
        length = 16 + self._probes % 200
        self.send(frame(b"qXfer:features:read:target.xml:0,%x" % length))
        self.wait_for(lambda p: p[:1] == b"m" and len(p) == length + 1)

    def close(self) -> None:
        self.sock.close()


def _is_stop_reply(payload: bytes) -> bool:
    return payload[:1] in (b"T", b"S", b"W", b"X")


def _is_features_reply(payload: bytes) -> bool:
    return payload.startswith((b"m<?xml", b"l<?xml"))


PROBE = frame(b"qXfer:features:read:target.xml:0,20")


def _safe_garbage(rng: random.Random) -> bytes:
    """Valid-looking packets with garbage arguments that must not change the guest:
    addresses in the hole or unmapped, wrong sizes, bad thread ids, bad offsets."""
    hole = HOLE_VA + rng.randrange(0, 0xA800000 - 0x100)
    unmapped = rng.choice([0, 0x1000, 0x40000000, 0x100000000, 1 << 64, 0xFFFFFFFF])
    where = rng.choice([hole, unmapped])
    huge = rng.choice([0xFFFFFFFF, 1 << 40, 1 << 64, 0x7FFFFFFF, 0x10001])
    choices = [
        b"Z0,%x,%x" % (where, huge), b"Z1,%x,1" % where, b"Z2,%x,%x" % (where, huge),
        b"Z3,c0000000,%x" % huge, b"Z4,%x,0" % where, b"Z9,0,0", b"Z0,zz,1", b"z0,%x,1" % where,
        b"m%x,%x" % (where, huge), b"m%x,%x" % (0xC0000000, huge), b"mffffffff,2",
        b"M%x,4:deadbeef" % hole, b"M%x,4:deadbeef" % unmapped, b"Mc0000000,9:00",
        b"X%x,%x:" % (hole, 4) + b"}#$*", b"Xc0000000,5:ab", b"X%x,2:\x03\x03" % unmapped,
        b"G" + b"0" * rng.choice([1, 7, 9, 2000, 20000]), b"Gzz",
        b"P%x=00000000" % rng.choice([0x1000, 0x7FFFFFFF, 99]), b"P0=0", b"P=",
        b"p%x" % rng.choice([0x1000, 1 << 40]), b"pzz",
        b"vCont;c:%x" % rng.choice([0x99, 0xFFFFFFFF, 1 << 70]), b"vCont;s:p7.7",
        b"vCont;x", b"vCont;r1,2:0x1", b"vCont;t:-1", b"vCont;c:zz", b"vCont;C:1",
        b"qXfer:features:read:target.xml:%x,%x" % (huge, huge),
        b"qXfer:features:read:nope.xml:0,10", b"qXfer:threads:read::%x,%x" % (huge, 1),
        b"qXfer:features:read:target.xml:zz", b"Hg%x" % rng.choice([7, 0xFFFFFFFF]),
        b"Hc-2", b"Hzz", b"T9", b"Tzz", b"qThreadExtraInfo,99", b"cz", b"szz", b"C;1",
        b"qRcmd," + b"vcpu 42".hex().encode(), b"qRcmd,zz",
        b"qRcmd," + f"trace save /tmp/pvdbg-fuzz-{os.getpid()}".encode().hex().encode(),
        b"vFile:open:2f6574632f706173737764,0,0", b"vMustReplyEmpty", b"qSupported:" + b"x;" * 500,
    ]
    return rng.choice(choices)


def _fuzz_one_connection(rng: random.Random, port: int, steps: list[str]) -> None:
    """One hostile connection: a random mix of bad input, then a random way of leaving."""
    for _ in range(200):                       # the previous client may still be finishing
        client = RawClient(port)
        client.send(PROBE)
        try:
            reply = client.wait_for(lambda p: _is_features_reply(p) or p.startswith(b"E."), 10)
        except (ConnectionError, TimeoutError):
            reply = b"E.closed"
        if _is_features_reply(reply):
            break
        client.close()                         # refused as busy: try again shortly
        time.sleep(0.02)
    else:
        raise AssertionError("the stub never accepted a new client")
    try:
        _fuzz_actions(rng, client, port, steps)
    finally:
        client.close()


def _fuzz_actions(rng: random.Random, client: RawClient, port: int, steps: list[str]) -> None:
    for _ in range(rng.randint(2, 12)):
        action = rng.randrange(12)
        steps.append(f"action {action}")
        if action == 0:
            client.send(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2048))))
        elif action == 1:
            bad = frame(_safe_garbage(rng))
            client.send(bad[:-2] + rng.choice([b"zz", b"%02x" % ((int(bad[-2:], 16) + 1) & 0xFF)]))
        elif action == 2:
            whole = frame(_safe_garbage(rng))
            client.send(whole[:rng.randint(1, len(whole) - 1)])         # torn; next '$' ends it
        elif action == 3:
            client.send(b"$" + b"m" * (MAX_PACKET_SIZE + rng.randint(1, 70000))
                        + rng.choice([b"#00", b""]))
        elif action == 4:
            client.send(b"\x03" * rng.randint(1, 20000))                 # while stopped: ignored
        elif action == 5:
            client.send(b"".join(frame(_safe_garbage(rng)) for _ in range(rng.randint(1, 20))))
        elif action == 6:                                               # run, noise, ^C flood
            client.sync()
            client.send(frame(rng.choice([b"c", b"vCont;c", b"vCont;c:1", b"C05"])))
            time.sleep(rng.uniform(0, 0.03))
            client.send(b"".join(frame(_safe_garbage(rng)) for _ in range(rng.randint(0, 5))))
            client.send(b"\x03" * rng.randint(1, 5000))
            client.wait_for(_is_stop_reply)
        elif action == 7:
            client.sync()
            client.send(frame(rng.choice([b"s", b"vCont;s:1", b"vCont;s"])))
            client.wait_for(_is_stop_reply)
        elif action == 8:                                               # a second client
            other = RawClient(port)
            other.send(frame(b"?"))
            reply = other.wait_for(lambda p: True, 10)
            other.close()
            assert reply.startswith(b"E."), reply
        elif action == 9:
            client.send(frame(b"QStartNoAckMode"))
        elif action == 10:
            client.send(b"+-" * rng.randint(1, 50))                     # nacks ask for resends
        else:
            client.sync()
    ending = rng.randrange(6)
    steps.append(f"ending {ending}")
    if ending == 0:
        client.sync()
        client.send(frame(b"D"))
        client.wait_for(lambda p: p == b"OK")
    elif ending == 1:                                                   # drop mid-run
        client.send(frame(b"c"))
        time.sleep(rng.uniform(0, 0.02))
    elif ending == 2:                                                   # drop mid-packet
        client.send(frame(b"m%x,40" % 0xC0000000)[:rng.randint(1, 8)])
    elif ending == 3:                                                   # drop mid-reply
        client.send(frame(b"qXfer:features:read:target.xml:0,fffff"))
    elif ending == 4:                                                   # drop mid-run, ^C sent
        client.send(frame(b"vCont;c") + b"\x03")
    # else: just close


def _socket_fuzz_then_real_gdb(tmp_path: Path, connections: int, seed: int,
                               budget_s: float) -> None:
    from gdbmi import Gdb                                              # tests/gdbmi.py
    stub = StubProcess(tmp_path, "--memory", "16", "--cmdline", "bench=4000000000")
    try:
        rng = random.Random(seed)
        deadline = time.monotonic() + budget_s
        done = 0
        while done < connections and time.monotonic() < deadline:
            steps: list[str] = []
            try:
                _fuzz_one_connection(rng, stub.port, steps)
            except (ConnectionError, TimeoutError, OSError) as error:
                assert stub.alive(), f"stub died after connection {done}: {stub.stderr[-2000:]}"
                raise AssertionError(f"connection {done} (seed {seed}) after {steps}: {error!r}; "
                                     f"stub said: {stub.stderr[-1500:]}") from error
            assert stub.alive(), f"stub died after connection {done}: {stub.stderr[-2000:]}"
            done += 1
        assert done >= min(connections, 10)

        gdb = Gdb(SEED_ELF)
        try:
            for _ in range(200):
                out = gdb.connect(f"127.0.0.1:{stub.port}")
                if any(r["type"] == "result" and r["message"] == "connected" for r in out):
                    break
                time.sleep(0.05)
            else:
                probe = RawClient(stub.port)
                probe.send(frame(b"?") + frame(b"qRcmd," + b"stop-reason".hex().encode()))
                state = probe.packets(1.0)
                probe.close()
                raise AssertionError(f"gdb could not attach after the fuzz: {out}; {state}; "
                                     f"{stub.stderr[-3000:]}")
            gdb.cmd("-break-insert bench_loop_body")
            gdb.cmd("-exec-continue")
            stop = gdb.wait_stopped(60)
            body = load_guest_image(str(SEED_ELF)).symbols.address("bench_loop_body")
            assert stop["reason"] == "breakpoint-hit", stop
            assert int(stop["frame"]["addr"], 16) == body, stop
            gdb.cmd("-exec-step-instruction")
            stepped = gdb.wait_stopped(30)
            assert body < int(stepped["frame"]["addr"], 16) < body + 16, stepped
            assert re.search(r"0x[0-9a-f]+ <bench_loop\+\d+>:\s+0x[0-9a-f]{8}",
                             gdb.console("x/2xw $pc"))
            assert f"{body:#x}" in gdb.console("x/i bench_loop_body")
            gdb.cmd("-break-delete")
            gdb.cmd("-exec-continue")
            gdb.cmd("-exec-interrupt")
            assert gdb.wait_stopped(30)["reason"] == "signal-received"
            gdb.cmd("-target-detach")
        finally:
            gdb.close()
        assert stub.alive()
    finally:
        code = stub.close()
    text = stub.stderr
    assert "Traceback" not in text and "pvdbg bug" not in text, text[-4000:]
    assert code == 0, text[-2000:]


@pytest.mark.e2e
def test_socket_fuzz_then_real_gdb_debugs(tmp_path: Path) -> None:
    _socket_fuzz_then_real_gdb(tmp_path, connections=40, seed=0x5EED, budget_s=40)


@pytest.mark.slow
@pytest.mark.e2e
def test_socket_fuzz_long(tmp_path: Path) -> None:
    _socket_fuzz_then_real_gdb(tmp_path, connections=max(1000, LONG_EXAMPLES // 100),
                               seed=int(os.environ.get("PVDBG_FUZZ_SEED", "1")), budget_s=1800)
