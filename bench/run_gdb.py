"""GDB stub speed of pvdbg against QEMU's gdbstub and udbserver (issue 5), in one run.

    python bench/run_gdb.py             # one table on stdout, progress on stderr
    python bench/run_gdb.py --json      # the same figures plus every sample, as JSON
    python bench/run_gdb.py --profile   # also profile pvdbg's stub in-process (cProfile)

Every debugger runs the same loop (bench/gdb_guests/loop.S): pvdbg a PV guest, QEMU
(qemu-system-i386 -S, TCG) a multiboot kernel, udbserver a bare Unicorn mapped like the
PV guest. Figures come from real gdb in batch mode (stepi, memory dumps, breakpoint and
watchpoint hits) and from a small RSP client of our own in no-ack mode (round trips of
`s`, `g`, `m`; free-run speed while attached). Everything talks over 127.0.0.1 only.
See bench/README.md for what each figure means and the goals.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import io
import json
import os
import platform
import pstats
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

BENCH_DIR = Path(__file__).resolve().parent
GUEST_DIR = BENCH_DIR / "gdb_guests"
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"

PAGE_SIZE = 4096
INSNS_PER_ITERATION = 4              # bench_loop (gdb_guests/loop.S)
INSNS_OUTSIDE_LOOP = 2               # bench_outer's mov + bench_loop_end's jmp
COUNTER_OFFSET = 0                   # bench_data layout (loop.S)
ITERATIONS_OFFSET = 4
BUFFER_BYTES = 1 << 20
BUFFER_WORD_FACTOR = 0x9E3779B1      # word i of bench_buffer is i * this (mod 2^32)
HUGE_ITERATIONS = 0x7FFFFFFF         # keeps the loop busy through stepping and hits
STEP_ITERATIONS = 1000               # outer pass while 3,000 steps run (4,002 insns > 3,000)
LOOP_CODE_BYTES = 16                 # bench_start .. bench_cold + 1 (covers the hot loop)
DONE_CODE_BYTES = 2                  # bench_done's jmp
REPLAY_TOLERANCE = 100_000           # extra `incl`s accepted (and reported) in one free run
PROBE_TIMEOUT_S = 5.0                # a one-iteration pass that has not stopped by then never will

DEFAULT_RUNS = 3
RAW_STEPS = 3000                     # raw `s` round trips; also "after 3,000 stepi"
GDB_STEPI = 1000                     # gdb stepi per sample
GDB_HITS = 200                       # breakpoint and watchpoint hits per sample
RATE_SECONDS = 0.25                  # each raw round-trip rate runs at least this long
FREE_RUN_TARGET_S = 0.35             # free-run calibration aims at this long a run
FREE_RUN_MIN_S = 0.2                 # and accepts a run at least this long
FREE_RUN_START_ITERATIONS = 4096
FREE_RUN_MAX_ATTEMPTS = 12
SOCKET_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 60.0
GDB_PHASE_TIMEOUT_S = 15.0           # each gdb phase normally takes 0.2 to 4 s
GDB_POLL_S = 0.1
QEMU_MEMORY_MIB = 16

GOAL_FREE_RUN_RATIO = 0.5            # pvdbg free run / raw Unicorn, at least
GOAL_AFTER_STEPS_RATIO = 0.8         # free run after steps / before, at least (noise margin)

TARGETS = ("pvdbg-icount", "pvdbg-host", "qemu", "udbserver")
TARGET_TITLES = {"pvdbg-icount": "pvdbg icount", "pvdbg-host": "pvdbg host",
                 "qemu": "QEMU", "udbserver": "udbserver"}


class BenchError(Exception):
    """The benchmark could not measure what it should (one line)."""


# -- guests --------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    va: int
    data: bytes                      # file bytes, zero-extended to memsz


@dataclass(frozen=True)
class GuestBuild:
    """One build of the loop: the ELF, its symbols and its loadable segments."""
    elf: Path
    symbols: dict[str, int]
    segments: tuple[Segment, ...]

    def sym(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise BenchError(f"{self.elf.name}: symbol {name} missing") from None

    def read(self, va: int, length: int) -> bytes:
        for segment in self.segments:
            if segment.va <= va and va + length <= segment.va + len(segment.data):
                return segment.data[va - segment.va:va - segment.va + length]
        raise BenchError(f"{self.elf.name}: {va:#x}+{length:#x} is in no loaded segment")


@dataclass(frozen=True)
class Guests:
    pv: GuestBuild                   # pvdbg, and udbserver / raw Unicorn (same VAs)
    multiboot: GuestBuild            # QEMU
    loop_bytes: int                  # bench_start .. bench_done + 2, identical in both


def _run_gcc(args: list[str], what: str) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError(f"gcc not found on PATH: needed to build {what}")
    result = subprocess.run([gcc, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        first_error = (result.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BenchError(f"building {what} failed: {first_error}")


def _build_guest(out_dir: Path, name: str) -> Path:
    elf = out_dir / f"{name}.elf"
    _run_gcc(["-m32", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-Wa,--fatal-warnings",
              "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,--orphan-handling=error",
              "-Wl,--fatal-warnings", f"-Wl,-T,{GUEST_DIR / (name + '.lds')}",
              "-o", str(elf), str(GUEST_DIR / f"{name}.S")], f"bench/gdb_guests/{name}.S")
    return elf


def read_guest(elf_path: Path) -> GuestBuild:
    try:
        with open(elf_path, "rb") as stream:
            elf = ELFFile(stream)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise BenchError(f"{elf_path}: no .symtab")
            symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
            segments = tuple(
                Segment(seg["p_vaddr"], seg.data() + bytes(seg["p_memsz"] - seg["p_filesz"]))
                for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
    except (OSError, ELFError) as exc:
        raise BenchError(f"{elf_path}: cannot read: {exc}") from None
    return GuestBuild(elf_path, symbols, segments)


def build_guests(out_dir: Path) -> Guests:
    """Build the PV and multiboot guests; check that their loops are the same bytes."""
    pv = read_guest(_build_guest(out_dir, "pv"))
    multiboot = read_guest(_build_guest(out_dir, "multiboot"))
    spans = []
    for guest in (pv, multiboot):
        start, done = guest.sym("bench_start"), guest.sym("bench_done")
        spans.append(guest.read(start, done + 2 - start))
        offsets = {name: guest.sym(name) - start for name in
                   ("bench_loop", "bench_loop_bp", "bench_loop_end", "bench_cold", "bench_done")}
        if offsets != {"bench_loop": 3, "bench_loop_bp": 5, "bench_loop_end": 10,
                       "bench_cold": 15, "bench_done": PAGE_SIZE}:
            raise BenchError(f"{guest.elf.name}: unexpected loop layout {offsets}")
        buffer = guest.read(guest.sym("bench_buffer"), 8)
        if buffer != expected_buffer(0, 8):
            raise BenchError(f"{guest.elf.name}: bench_buffer does not hold the pattern")
    if spans[0] != spans[1]:
        raise BenchError("the PV and multiboot builds of loop.S differ")
    return Guests(pv, multiboot, len(spans[0]))


def expected_buffer(offset: int, length: int) -> bytes:
    """bench_buffer[offset:offset+length] as loop.S fills it (offset 4-aligned)."""
    first = offset // 4
    words = (length + 3) // 4
    data = b"".join(((i * BUFFER_WORD_FACTOR) & 0xFFFFFFFF).to_bytes(4, "little")
                    for i in range(first, first + words))
    return data[:length]


def build_loopback_shim(out_dir: Path) -> Path:
    shim = out_dir / "loopback_bind.so"
    _run_gcc(["-shared", "-fPIC", "-O2", "-o", str(shim), str(GUEST_DIR / "loopback_bind.c"),
              "-ldl"], "bench/gdb_guests/loopback_bind.c")
    return shim


# -- stub processes ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class StubProcess:
    """One gdb stub in a child process; stderr is drained by a thread and kept."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.port = 0
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_tail: list[str] = []
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            env=env, cwd=cwd, text=True, errors="replace")
        except OSError as exc:
            raise BenchError(f"cannot start {name}: {exc}") from None
        threading.Thread(target=self._drain, name=f"{name}-stderr", daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name} did not print /{pattern}/ within "
                                 f"{STARTUP_TIMEOUT_S:.0f} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(f"{self.name} exited (status {self.process.wait()}): "
                                 f"{' | '.join(self.stderr_tail[-3:])}")
            match = re.search(pattern, line)
            if match:
                return match

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> StubProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class Tools:
    qemu: str | None
    gdb: str
    loopback_shim: Path | None


def start_stub(target: str, guests: Guests, tools: Tools) -> StubProcess:
    """Start `target`'s stub halted, listening on 127.0.0.1; `.port` is set on return
    (for QEMU and udbserver the port may not accept yet: connect with retries)."""
    if target.startswith("pvdbg-"):
        clock = target.split("-", 1)[1]
        # pvdbg from PYTHONPATH if set, else this checkout; never from the child's cwd.
        env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(REPO_ROOT))
        stub = StubProcess(target, [sys.executable, "-c",
                                    "import sys; from pvdbg.cli import main; sys.exit(main())",
                                    "gdbserver", "--port", "0", "--listen", HOST,
                                    "--clock", clock, str(guests.pv.elf)],
                           env=env, cwd=guests.pv.elf.parent)
        match = stub.wait_for_line(r"listening on ([0-9.]+):(\d+)")
        stub.port = int(match.group(2))
        return stub
    port = free_port()
    if target == "qemu":
        assert tools.qemu is not None
        stub = StubProcess(target, [tools.qemu, "-nodefaults", "-display", "none",
                                    "-no-reboot", "-accel", "tcg", "-m", str(QEMU_MEMORY_MIB),
                                    "-kernel", str(guests.multiboot.elf),
                                    "-gdb", f"tcp:{HOST}:{port}", "-S"])
        stub.port = port
        return stub
    if target == "udbserver":
        assert tools.loopback_shim is not None
        env = dict(os.environ, LD_PRELOAD=str(tools.loopback_shim))
        stub = StubProcess(target, [sys.executable, str(Path(__file__).resolve()),
                                    "--serve-udbserver", str(guests.pv.elf), str(port)], env=env)
        stub.wait_for_line(r"Waiting for a GDB connection")
        stub.port = port
        return stub
    raise BenchError(f"unknown target {target!r}")


def serve_udbserver(elf_path: Path, port: int) -> int:
    """Child mode: the PV guest's segments in a bare Unicorn under udbserver."""
    from udbserver import udbserver
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as X
    guest = read_guest(elf_path)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    _map_segments(uc, guest)
    uc.reg_write(X.UC_X86_REG_EBX, guest.sym("bench_data"))
    uc.reg_write(X.UC_X86_REG_ESP, guest.sym("bench_stack_top"))
    uc.reg_write(X.UC_X86_REG_EAX, 0)
    udbserver(uc, port, guest.sym("bench_start"))
    uc.emu_start(guest.sym("bench_start"), 0)
    return 0


def _map_segments(uc, guest: GuestBuild) -> None:
    for segment in guest.segments:
        start = segment.va & ~(PAGE_SIZE - 1)
        end = (segment.va + len(segment.data) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        uc.mem_map(start, end - start)
        uc.mem_write(segment.va, segment.data)


# -- a minimal RSP client ------------------------------------------------------------------

class RspError(BenchError):
    pass


class ResumeTimeout(RspError):
    """A resume did not stop in time (the stub missed a breakpoint, or runs slowly)."""


def _checksum(payload: bytes) -> bytes:
    return b"%02x" % (sum(payload) & 0xFF)


def _decode_rle(payload: bytes) -> bytes:
    if b"*" not in payload:
        return payload
    out = bytearray()
    i = 0
    while i < len(payload):
        if payload[i:i + 1] == b"*" and out and i + 1 < len(payload):
            out += out[-1:] * (payload[i + 1] - 29)
            i += 2
        else:
            out.append(payload[i])
            i += 1
    return bytes(out)


class RspClient:
    """gdb's side of the remote protocol, just enough to time round trips."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.acks = True
        self.packet_size = 0

    @classmethod
    def connect(cls, port: int, timeout: float = STARTUP_TIMEOUT_S) -> RspClient:
        """Connect to 127.0.0.1:port, retrying while the stub is not listening yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise BenchError(f"nothing listens on {HOST}:{port}") from None
                time.sleep(0.02)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise RspError(f"no reply within {self.sock.gettimeout():.0f} s") from None
        if not data:
            raise RspError("the stub closed the connection")
        self.buffer += data

    def send(self, payload: bytes) -> None:
        self.sock.sendall(b"$" + payload + b"#" + _checksum(payload))

    def receive(self) -> bytes:
        """The next packet's payload (acks and noise before `$` skipped)."""
        while True:
            start = self.buffer.find(b"$")
            if start >= 0:
                end = self.buffer.find(b"#", start)
                if end >= 0 and len(self.buffer) >= end + 3:
                    payload = bytes(self.buffer[start + 1:end])
                    checksum = bytes(self.buffer[end + 1:end + 3])
                    del self.buffer[:end + 3]
                    if checksum != _checksum(payload):
                        raise RspError(f"bad checksum on {payload[:32]!r}")
                    if self.acks:
                        self.sock.sendall(b"+")
                    return _decode_rle(payload)
            self._fill()

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.receive()

    def ok(self, payload: bytes) -> None:
        reply = self.request(payload)
        if reply != b"OK":
            raise RspError(f"{payload.decode()[:40]} -> {reply.decode()[:40]!r}")

    def resume(self, payload: bytes, timeout: float | None = None) -> bytes:
        """Send a resume packet; return its stop reply (console `O` packets skipped).
        With `timeout`, raise ResumeTimeout when no stop reply came in that many seconds."""
        self.send(payload)
        self.sock.settimeout(timeout if timeout is not None else SOCKET_TIMEOUT_S)
        try:
            return self._stop_reply(payload)
        except RspError as error:
            if timeout is not None and "no reply within" in str(error):
                raise ResumeTimeout(f"{payload.decode()} gave no stop within {timeout:.0f} s") from None
            raise
        finally:
            self.sock.settimeout(SOCKET_TIMEOUT_S)

    def _stop_reply(self, payload: bytes) -> bytes:
        while True:
            reply = self.receive()
            if reply[:1] in (b"T", b"S"):
                return reply
            if reply[:1] in (b"W", b"X"):
                raise RspError(f"the guest ended: {reply.decode()[:40]}")
            if reply[:1] == b"O" and reply != b"OK":
                continue
            raise RspError(f"unexpected reply to {payload.decode()}: {reply.decode()[:40]!r}")

    def interrupt(self) -> bytes:
        """gdb's ^C (a bare 0x03) while the target runs; returns the stop reply."""
        self.sock.sendall(b"\x03")
        return self._stop_reply(b"^C")

    def handshake(self) -> None:
        """qSupported, then no-ack mode when the stub offers it (QEMU 7.2 does not)."""
        reply = self.request(b"qSupported:swbreak+;hwbreak+;vContSupported+")
        for feature in reply.split(b";"):
            if feature.startswith(b"PacketSize="):
                self.packet_size = int(feature.split(b"=", 1)[1], 16)
        if b"QStartNoAckMode+" in reply.split(b";"):
            self.ok(b"QStartNoAckMode")
            self.acks = False
        stop = self.request(b"?")
        if stop[:1] not in (b"T", b"S"):
            raise RspError(f"? -> {stop.decode()[:40]!r}")

    def read_memory(self, va: int, length: int) -> bytes:
        reply = self.request(b"m%x,%x" % (va, length))
        if reply[:1] == b"E" and len(reply) == 3:
            raise RspError(f"m{va:x},{length:x} -> {reply.decode()}")
        return bytes.fromhex(reply.decode())

    def write_u32(self, va: int, value: int) -> None:
        self.ok(b"M%x,4:%s" % (va, value.to_bytes(4, "little").hex().encode()))

    def read_u32(self, va: int) -> int:
        return int.from_bytes(self.read_memory(va, 4), "little")

    def eip(self) -> int:
        """EIP from `g`: every i386 layout starts eax..edi, eip (4 bytes each)."""
        reply = self.request(b"g")
        return int.from_bytes(bytes.fromhex(reply[64:72].decode()), "little")


# -- raw RSP session -----------------------------------------------------------------------

@dataclass(frozen=True)
class FreeRun:
    instructions: int
    seconds: float
    attempts: int

    @property
    def per_second(self) -> float:
        return self.instructions / self.seconds


class LoopDriver:
    """Drives the loop over RSP the way gdb does: from a stop at bench_done with a
    breakpoint there, `z0` it, step off (`s`), `Z0` it again, continue (`c`)."""

    def __init__(self, client: RspClient, guest: GuestBuild) -> None:
        self.client = client
        self.guest = guest
        self.data = guest.sym("bench_data")
        self.start = guest.sym("bench_start")
        self.done = guest.sym("bench_done")
        self.cold = guest.sym("bench_cold")
        self.loop = guest.sym("bench_loop")
        self.defects: list[str] = []
        self.refresh_code = True

    def insert(self, va: int) -> None:
        self.client.ok(b"Z0,%x,1" % va)

    def remove(self, va: int) -> None:
        self.client.ok(b"z0,%x,1" % va)

    def refresh(self) -> None:
        """Rewrite the loop's code bytes with themselves (`M`), so that an emulator drops
        any translated code there. Works around pvdbg defects that leave stale
        translations behind (see bench/README.md, "Defects"); never timed."""
        if not self.refresh_code:
            return
        for va, length in ((self.start, LOOP_CODE_BYTES), (self.done, DONE_CODE_BYTES)):
            code = self.guest.read(va, length)
            self.client.ok(b"M%x,%x:%s" % (va, length, code.hex().encode()))

    def counter(self) -> int:
        return self.client.read_u32(self.data + COUNTER_OFFSET)

    def set_iterations(self, iterations: int) -> None:
        self.client.write_u32(self.data + ITERATIONS_OFFSET, iterations)

    def expect_eip(self, va: int, what: str) -> None:
        eip = self.client.eip()
        if eip != va:
            raise BenchError(f"{what}: the guest stopped at {eip:#x}, not {va:#x}")

    def boot_to_done(self) -> None:
        self.insert(self.done)
        self.client.resume(b"c")
        self.expect_eip(self.done, "boot")

    def probe_defects(self) -> None:
        """One pass exactly as gdb would drive it, with no workaround: does the step off
        the breakpoint retire one instruction, and does the re-inserted breakpoint stop
        the next pass? Failures go to `defects`; the guest ends at bench_done."""
        client = self.client
        self.set_iterations(1)
        self.remove(self.done)
        client.resume(b"s")
        eip = client.eip()
        if eip != self.start:
            self.defects.append(f"stepi off a breakpoint after a continue did not stop after "
                                f"one instruction (landed at {self.where(eip)})")
        self.insert(self.done)
        try:
            client.resume(b"c", timeout=PROBE_TIMEOUT_S)
        except ResumeTimeout:
            self.defects.append("a breakpoint removed for a step and inserted again was never "
                                f"hit (bench_done passed for {PROBE_TIMEOUT_S:.0f} s)")
            client.interrupt()
            self.refresh()
            client.resume(b"c")
        self.expect_eip(self.done, "probe")

    def where(self, va: int) -> str:
        names = sorted((value, name) for name, value in self.guest.symbols.items()
                       if name.startswith("bench_") and value <= va)
        return f"{names[-1][1]}+{va - names[-1][0]:#x}" if names else f"{va:#x}"

    def timed_pass(self, iterations: int) -> float:
        """From a stop at bench_done: step its jmp, then continue through `iterations`
        loop iterations back to bench_done; wall seconds of the `c` alone."""
        client = self.client
        self.set_iterations(iterations)
        self.remove(self.done)
        self.refresh()
        client.resume(b"s")
        self.expect_eip(self.start, "step off bench_done")
        self.insert(self.done)
        self.refresh()
        before = self.counter()
        gc.collect()
        start = time.perf_counter()
        client.resume(b"c")
        seconds = time.perf_counter() - start
        self.expect_eip(self.done, "free run")
        counted = (self.counter() - before) & 0xFFFFFFFF
        if counted != iterations:
            if not iterations < counted < iterations + REPLAY_TOLERANCE:
                raise BenchError(f"free run: the loop counted {counted} iterations, "
                                 f"not {iterations}")
            defect = ("a free run replayed guest instructions: bench_counter's `incl` ran more "
                      "often than the loop iterated (Unicorn leaves EIP stale after an "
                      "asynchronous emu_stop or timeout)")
            if defect not in self.defects:
                self.defects.append(defect)
        return seconds

    def free_run(self) -> FreeRun:
        """Grow the pass until it lasts FREE_RUN_MIN_S; the last pass is the sample."""
        iterations = FREE_RUN_START_ITERATIONS
        for attempt in range(1, FREE_RUN_MAX_ATTEMPTS + 1):
            seconds = self.timed_pass(iterations)
            if seconds >= FREE_RUN_MIN_S or iterations >= HUGE_ITERATIONS:
                break
            factor = min(64.0, max(2.0, FREE_RUN_TARGET_S / max(seconds, 1e-6)))
            iterations = min(HUGE_ITERATIONS, int(iterations * factor))
        return FreeRun(INSNS_OUTSIDE_LOOP + INSNS_PER_ITERATION * iterations, seconds, attempt)


def _rate(action: Callable[[], object], min_seconds: float = RATE_SECONDS) -> float:
    """Calls per second of `action`, called in batches until `min_seconds` passed."""
    gc.collect()
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(10):
            action()
        calls += 10
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls / elapsed


def raw_session(port: int, guest: GuestBuild) -> tuple[dict[str, float], list[str]]:
    """Round trips and free runs over one raw connection: (figures per second, defects)."""
    client = RspClient.connect(port)
    try:
        client.handshake()
        driver = LoopDriver(client, guest)
        driver.boot_to_done()
        driver.probe_defects()
        figures: dict[str, float] = {}
        figures["free_no_bp"] = driver.free_run().per_second
        driver.insert(driver.cold)
        figures["free_hot_bp"] = driver.free_run().per_second
        driver.remove(driver.cold)

        counter = driver.data + COUNTER_OFFSET
        buffer = guest.sym("bench_buffer")
        figures["raw_g"] = _rate(lambda: client.request(b"g"))
        figures["raw_m4"] = _rate(lambda: client.read_memory(counter, 4))
        chunk = 2048
        if client.read_memory(buffer, chunk) != expected_buffer(0, chunk):
            raise BenchError(f"m{buffer:x},{chunk:x} returned other bytes than the guest's")
        figures["raw_m2k"] = _rate(lambda: client.read_memory(buffer, chunk))

        # RAW_STEPS steps from bench_done through a pass of STEP_ITERATIONS iterations.
        driver.set_iterations(STEP_ITERATIONS)
        driver.remove(driver.done)
        driver.refresh()
        before = driver.counter()
        gc.collect()
        start = time.perf_counter()
        for _ in range(RAW_STEPS):
            client.resume(b"s")
        figures["raw_s"] = RAW_STEPS / (time.perf_counter() - start)
        eip, counted = client.eip(), (driver.counter() - before) & 0xFFFFFFFF
        expected_eip, expected_count = loop_position_after(guest, RAW_STEPS)
        if (eip, counted) != (expected_eip, expected_count):
            driver.defects.append(
                f"{RAW_STEPS} raw `s` from bench_done ended at {driver.where(eip)} with "
                f"{counted} loop iterations, not at {driver.where(expected_eip)} with "
                f"{expected_count} (s/s figure not exact)")
        driver.insert(driver.done)
        driver.refresh()
        client.resume(b"c")
        driver.expect_eip(driver.done, f"pass after {RAW_STEPS} steps")
        figures["free_after_steps"] = driver.free_run().per_second
        try:
            client.send(b"D")
            client.receive()
        except (OSError, BenchError):
            pass
        return figures, driver.defects
    finally:
        client.close()


def loop_position_after(guest: GuestBuild, steps: int) -> tuple[int, int]:
    """(EIP, bench_counter increments) after `steps` single steps from bench_done,
    with bench_iterations large enough that the pass does not end."""
    if steps < 2:
        return (guest.sym("bench_start"), 0) if steps == 1 else (guest.sym("bench_done"), 0)
    in_loop = steps - 2                       # steps after jmp bench_outer and the mov
    offsets = (0, 2, 4, 5)                    # incl, addl, decl, jnz from bench_loop
    return guest.sym("bench_loop") + offsets[in_loop % 4], (in_loop + 3) // 4


# -- gdb session ----------------------------------------------------------------------------

GDB_SCRIPT = r'''
import gdb, json, os, time

P = json.loads(PARAMS_JSON)
results = {"figures": {}, "defects": [], "completed": [], "phase": None}


def save():
    scratch = P["result"] + ".tmp"
    with open(scratch, "w") as out:
        json.dump(results, out)
    os.replace(scratch, P["result"])


def run(command):
    return gdb.execute(command, to_string=True)


def pc():
    return int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFF


def counter():
    return int(gdb.parse_and_eval("*(unsigned int *)%d" % P["counter"]))


def timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def refresh():
    # Rewrite the loop's code with itself so stale translations are dropped (README).
    inferior = gdb.selected_inferior()
    for address, length in P["code"]:
        inferior.write_memory(address, inferior.read_memory(address, length))


def hits():
    for _ in range(P["hits"]):
        run("continue")


def boot():
    for setting in ("pagination off", "confirm off", "width 0", "height 0",
                    "tcp connect-timeout 60", "remotetimeout 60"):
        run("set " + setting)
    run("file " + P["elf"])
    run("target remote %s:%d" % (P["host"], P["port"]))
    run("tbreak *%d" % P["done"])
    run("continue")
    if pc() != P["done"]:
        raise RuntimeError("boot stopped at %#x, not bench_done" % pc())
    run("set {int}%d = %d" % (P["iterations"], P["huge"]))
    refresh()


def stepi():
    seconds = timed(lambda: run("stepi %d" % P["stepi"]))
    results["figures"]["gdb_stepi"] = P["stepi"] / seconds
    if pc() != P["stepi_eip"]:
        results["defects"].append("gdb stepi %d from bench_done ended at %#x, not %#x"
                                  % (P["stepi"], pc(), P["stepi_eip"]))


def dump_memory():
    for key, size, path in (("gdb_read_64k", 65536, P["dump_64k"]),
                            ("gdb_read_1m", 1 << 20, P["dump_1m"])):
        seconds = timed(lambda: run("dump binary memory %s %d %d"
                                    % (path, P["buffer"], P["buffer"] + size)))
        results["figures"][key] = size / seconds / (1 << 20)


def breakpoint_hits():
    run("break *%d" % P["bp"])
    run("continue")
    before = counter()
    results["figures"]["gdb_bp_hits"] = P["hits"] / timed(hits)
    moved = (counter() - before) & 0xFFFFFFFF
    if pc() != P["bp"]:
        raise RuntimeError("breakpoint run stopped at %#x" % pc())
    if moved != P["hits"]:
        results["defects"].append("%d gdb continues to a breakpoint in the loop ran %d "
                                  "iterations, not %d" % (P["hits"], moved, P["hits"]))


def watchpoint_hits():
    kind = run("watch *(unsigned int *)%d" % P["counter"])
    if "Hardware watchpoint" not in kind:
        raise RuntimeError("gdb could not set a hardware watchpoint: " + kind.strip())
    run("continue")
    before = counter()
    results["figures"]["gdb_wp_hits"] = P["hits"] / timed(hits)
    moved = (counter() - before) & 0xFFFFFFFF
    if moved != P["hits"]:
        results["defects"].append("%d watchpoint hits saw %d writes, not %d"
                                  % (P["hits"], moved, P["hits"]))


try:
    for name, action in (("boot", boot), ("stepi", stepi), ("dump memory", dump_memory),
                         ("breakpoint hits", breakpoint_hits),
                         ("watchpoint hits", watchpoint_hits)):
        if name in P["skip"]:
            continue
        results["phase"] = name
        save()
        action()
        results["completed"].append(name)
        run("delete")
    results["phase"] = "detach"
    save()
    run("detach")
    results["phase"] = None
except BaseException as error:
    results["error"] = "%s: %s" % (type(error).__name__, error)
save()
'''


GDB_PHASES = ("stepi", "dump memory", "breakpoint hits", "watchpoint hits")
FIGURES_OF_PHASE = {"stepi": ("gdb_stepi",), "dump memory": ("gdb_read_64k", "gdb_read_1m"),
                    "breakpoint hits": ("gdb_bp_hits",), "watchpoint hits": ("gdb_wp_hits",)}


def gdb_session(start: Callable[[], StubProcess], guest: GuestBuild, gdb: str, work: Path,
                skip: set[str]) -> tuple[dict[str, float], list[str], list[str]]:
    """stepi, memory dumps, breakpoint and watchpoint hits in real gdb (batch), each
    against a fresh stub from `start()`. Returns (figures, defects, phases that hung).
    A phase that outlives GDB_PHASE_TIMEOUT_S is abandoned (gdb and the stub are
    killed) and the remaining phases run in a new gdb and stub; phases in `skip` are
    not run."""
    figures: dict[str, float] = {}
    defects: list[str] = []
    hung: list[str] = []
    finished = set(skip)
    while not finished.issuperset(GDB_PHASES):
        with start() as stub:
            outcome = _gdb_once(stub.port, guest, gdb, work, finished)
        figures.update(outcome["figures"])
        defects += outcome["defects"]
        finished.update(p for p in outcome["completed"] if p in GDB_PHASES)
        phase = outcome["phase"]
        if phase is None:
            break
        if phase not in GDB_PHASES:
            raise BenchError(f"gdb did not get through {phase!r} within "
                             f"{GDB_PHASE_TIMEOUT_S:.0f} s")
        hung.append(phase)
        finished.add(phase)
        defects.append(f"gdb {phase} did not finish within {GDB_PHASE_TIMEOUT_S:.0f} s "
                       "(abandoned; figure missing, later runs skip it)")
    if "gdb_read_1m" in figures:
        for name, size in (("dump-64k.bin", 65536), ("dump-1m.bin", BUFFER_BYTES)):
            if (work / name).read_bytes() != expected_buffer(0, size):
                raise BenchError(f"gdb's {name} differs from the guest's bench_buffer")
    return figures, defects, hung


def _gdb_once(port: int, guest: GuestBuild, gdb: str, work: Path, skip: set[str]) -> dict:
    result = work / "gdb-result.json"
    result.unlink(missing_ok=True)
    params = {"elf": str(guest.elf), "host": HOST, "port": port,
              "done": guest.sym("bench_done"), "bp": guest.sym("bench_loop_bp"),
              "counter": guest.sym("bench_data") + COUNTER_OFFSET,
              "iterations": guest.sym("bench_data") + ITERATIONS_OFFSET,
              "huge": HUGE_ITERATIONS, "stepi": GDB_STEPI, "hits": GDB_HITS,
              "buffer": guest.sym("bench_buffer"),
              "stepi_eip": loop_position_after(guest, GDB_STEPI)[0],
              "code": [[guest.sym("bench_start"), LOOP_CODE_BYTES],
                       [guest.sym("bench_done"), DONE_CODE_BYTES]],
              "dump_64k": str(work / "dump-64k.bin"), "dump_1m": str(work / "dump-1m.bin"),
              "result": str(result), "skip": sorted(skip & set(GDB_PHASES))}
    script = work / "gdb-bench.py"
    script.write_text(f"PARAMS_JSON = {json.dumps(json.dumps(params))}\n" + GDB_SCRIPT)
    stderr_file = work / "gdb-stderr.txt"
    with open(stderr_file, "w") as stderr:
        process = subprocess.Popen([gdb, "-nx", "-batch", "-x", str(script)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        _watch_gdb(process, result)
    if not result.exists():
        tail = " | ".join(stderr_file.read_text(errors="replace").strip().splitlines()[-3:])
        raise BenchError(f"gdb wrote no result (status {process.returncode}): {tail}")
    outcome = json.loads(result.read_text())
    if "error" in outcome:
        raise BenchError(f"gdb failed in phase {outcome['phase']!r}: {outcome['error']}")
    return outcome


def _watch_gdb(process: subprocess.Popen, result: Path) -> None:
    """Wait for gdb; kill it when one phase outlives GDB_PHASE_TIMEOUT_S."""
    phase, since = None, time.monotonic()
    while True:
        try:
            process.wait(timeout=GDB_POLL_S)
            return
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        try:
            current = json.loads(result.read_text()).get("phase")
        except (OSError, ValueError):
            current = phase
        if current != phase:
            phase, since = current, now
        elif now - since > GDB_PHASE_TIMEOUT_S:
            process.kill()
            process.wait()
            return


# -- raw Unicorn reference -------------------------------------------------------------------

def raw_unicorn_run(guest: GuestBuild) -> float:
    """The loop in a bare Unicorn with no hooks: instructions per second of one pass."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as X
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    _map_segments(uc, guest)
    data, outer, done = guest.sym("bench_data"), guest.sym("bench_outer"), guest.sym("bench_done")
    uc.reg_write(X.UC_X86_REG_EBX, data)
    iterations = FREE_RUN_START_ITERATIONS
    for _ in range(FREE_RUN_MAX_ATTEMPTS):
        uc.mem_write(data + ITERATIONS_OFFSET, iterations.to_bytes(4, "little"))
        gc.collect()
        start = time.perf_counter()
        uc.emu_start(outer, done)
        seconds = time.perf_counter() - start
        if uc.reg_read(X.UC_X86_REG_EIP) != done:
            raise BenchError("raw Unicorn did not stop at bench_done")
        if seconds >= FREE_RUN_MIN_S or iterations >= HUGE_ITERATIONS:
            break
        factor = min(64.0, max(2.0, FREE_RUN_TARGET_S / max(seconds, 1e-6)))
        iterations = min(HUGE_ITERATIONS, int(iterations * factor))
    return (INSNS_OUTSIDE_LOOP + INSNS_PER_ITERATION * iterations) / seconds


# -- the whole run ------------------------------------------------------------------------------

FIGURES = (  # key, label, unit kind, goal kind
    ("gdb_stepi", "gdb stepi /s", "rate", "ge_qemu"),
    ("raw_s", "raw RSP `s` round trips /s", "rate", "gt_qemu"),
    ("raw_g", "raw RSP `g` round trips /s", "rate", "gt_qemu"),
    ("raw_m4", "raw RSP `m` 4 B round trips /s", "rate", "gt_qemu"),
    ("raw_m2k", "raw RSP `m` 2 KiB round trips /s", "rate", "gt_qemu"),
    ("gdb_read_64k", "gdb dump memory 64 KiB, MiB/s", "mib", "gt_qemu"),
    ("gdb_read_1m", "gdb dump memory 1 MiB, MiB/s", "mib", "gt_qemu"),
    ("gdb_bp_hits", "breakpoint hits /s (gdb continue)", "rate", "ge_qemu"),
    ("gdb_wp_hits", "watchpoint hits /s (gdb continue)", "rate", "ge_qemu"),
    ("free_no_bp", "free run attached, M insn/s", "mips", "free"),
    ("free_hot_bp", "free run, bp on the hot page, M insn/s", "mips", "free"),
    ("free_after_steps", f"free run after {RAW_STEPS:,} stepi, M insn/s", "mips", "after"),
)
GOAL_TEXT = {"ge_qemu": ">= QEMU", "gt_qemu": "> QEMU",
             "free": f">= {GOAL_FREE_RUN_RATIO}x raw Unicorn",
             "after": f">= {GOAL_FREE_RUN_RATIO}x raw Unicorn and >= {GOAL_AFTER_STEPS_RATIO}x "
                      "free run"}


def find_tools(targets: tuple[str, ...], work: Path) -> Tools:
    gdb = shutil.which("gdb")
    if gdb is None:
        raise BenchError("gdb not found on PATH (Debian: apt-get install gdb)")
    qemu = None
    if "qemu" in targets:
        qemu = shutil.which("qemu-system-i386")
        if qemu is None:
            raise BenchError("qemu-system-i386 not found (Debian: apt-get install "
                             "qemu-system-x86), or leave it out with --targets")
    shim = None
    if "udbserver" in targets:
        if importlib.util.find_spec("udbserver") is None:
            raise BenchError("udbserver not importable (pip install udbserver), or leave it "
                             "out with --targets")
        shim = build_loopback_shim(work)
    return Tools(qemu, gdb, shim)


def _version_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = out.stdout.strip().splitlines()
    return lines[0] if lines else "?"


def describe(tools: Tools) -> dict[str, str]:
    import unicorn
    info = {"python": platform.python_version(), "unicorn": unicorn.__version__,
            "cpus": str(len(os.sched_getaffinity(0))), "gdb": _version_line([tools.gdb, "--version"])}
    if tools.qemu:
        info["qemu"] = _version_line([tools.qemu, "--version"])
    if tools.loopback_shim:
        from importlib.metadata import version
        info["udbserver"] = version("udbserver")
    return info


def run_all(targets: tuple[str, ...], runs: int, progress: Callable[[str], None],
            work: Path) -> dict:
    tools = find_tools(targets, work)
    guests = build_guests(work)
    progress(f"guests built; loop span {guests.loop_bytes} bytes identical in both builds")
    samples: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    samples["raw-unicorn"] = {"free": []}
    defects: dict[str, dict[str, int]] = {}
    skip_phases: dict[str, set[str]] = {t: set() for t in targets}
    for run in range(1, runs + 1):
        for target in targets:
            guest = guests.multiboot if target == "qemu" else guests.pv
            started = time.monotonic()
            with start_stub(target, guests, tools) as stub:
                figures, raw_defects = raw_session(stub.port, guest)
            gdb_figures, gdb_defects, hung = gdb_session(
                lambda: start_stub(target, guests, tools), guest, tools.gdb, work,
                skip_phases[target])
            skip_phases[target].update(hung)
            figures.update(gdb_figures)
            for key, value in figures.items():
                samples[target].setdefault(key, []).append(value)
            for defect in raw_defects + gdb_defects:
                defects.setdefault(target, {}).setdefault(defect, 0)
                defects[target][defect] += 1
                progress(f"{target}: DEFECT: {defect}")
            progress(f"run {run}/{runs} {target}: {time.monotonic() - started:.1f} s")
        samples["raw-unicorn"]["free"].append(raw_unicorn_run(guests.pv))
    medians = {target: {key: statistics.median(values) for key, values in figures.items()}
               for target, figures in samples.items()}
    return {"machine": describe(tools), "runs": runs, "targets": list(targets),
            "medians": medians, "samples": samples, "defects": defects,
            "hung": {t: sorted(key for phase in phases for key in FIGURES_OF_PHASE[phase])
                     for t, phases in skip_phases.items() if phases}}


def verdicts(report: dict, target: str, key: str, goal: str) -> str:
    medians = report["medians"]
    value = medians.get(target, {}).get(key)
    if value is None:
        return "NOT met (no figure)" if key in report["hung"].get(target, ()) else "n/a"
    if goal in ("ge_qemu", "gt_qemu"):
        reference = medians.get("qemu", {}).get(key)
        if reference is None:
            return "n/a"
        met = value >= reference if goal == "ge_qemu" else value > reference
    else:
        raw = medians["raw-unicorn"]["free"]
        met = value >= GOAL_FREE_RUN_RATIO * raw
        if goal == "after":
            met = met and value >= GOAL_AFTER_STEPS_RATIO * medians[target]["free_no_bp"]
    return "met" if met else "NOT met"


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "mips":
        return f"{value / 1e6:,.2f}" if value < 10e6 else f"{value / 1e6:,.1f}"
    if kind == "mib":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def format_table(report: dict) -> str:
    targets = report["targets"]
    medians = report["medians"]
    pvdbg_clocks = [t for t in targets if t.startswith("pvdbg-")]
    header = ["figure (median of %d)" % report["runs"], *(TARGET_TITLES[t] for t in targets),
              "goal", *(f"{TARGET_TITLES[t].split()[1]}?" for t in pvdbg_clocks)]
    rows = [header]
    for key, label, kind, goal in FIGURES:
        rows.append([label, *("hung" if key in report["hung"].get(t, ())
                              else _fmt(medians[t].get(key), kind) for t in targets),
                     GOAL_TEXT[goal], *(verdicts(report, t, key, goal) for t in pvdbg_clocks)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:1 + len(targets)], widths[1:])]
        cells += [cell.ljust(width) for cell, width in
                  zip(row[1 + len(targets):], widths[1 + len(targets):])]
        return "  ".join(cells).rstrip()

    machine = report["machine"]
    lines = ["pvdbg GDB stub benchmark (bench/run_gdb.py); loopback only; "
             + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             line(header), line(["-" * w for w in widths])]
    lines += [line(row) for row in rows[1:]]
    raw = medians["raw-unicorn"]["free"]
    lines += ["", f"raw Unicorn, same loop bytes, no hooks: {_fmt(raw, 'mips')} M insn/s "
                  f"(so the free-run goal is {_fmt(GOAL_FREE_RUN_RATIO * raw, 'mips')} M insn/s)"]
    if report["defects"]:
        lines += ["", "Defects seen (the figures above were taken with the code-refresh "
                      "workaround of bench/README.md):"]
        for target, found in report["defects"].items():
            for defect, count in found.items():
                lines.append(f"  {TARGET_TITLES[target]}: {defect} [{count} of {report['runs']} runs]")
    return "\n".join(lines)


# -- in-process profile of pvdbg's stub ------------------------------------------------------------

def profile_pvdbg(guests: Guests, clock: str, out: io.TextIOBase) -> None:
    """Per-packet cost of pvdbg's stub without sockets or threads, and where it goes."""
    from pvdbg.session import Session, SessionOptions
    from pvdbg.stub.commands import Stub
    from pvdbg.stub.engine import SessionTarget
    guest = guests.pv
    session = Session.open(guest.elf, SessionOptions(clock=clock))
    stub = Stub(SessionTarget(session))
    done, data = guest.sym("bench_done"), guest.sym("bench_data")

    def handle(payload: bytes) -> tuple[bytes, ...]:
        return stub.handle_synchronously(payload).payloads

    handle(b"Z0,%x,1" % done)
    handle(b"c")
    handle(b"z0,%x,1" % done)
    for va, length in ((guest.sym("bench_start"), LOOP_CODE_BYTES), (done, DONE_CODE_BYTES)):
        handle(b"M%x,%x:%s" % (va, length, guest.read(va, length).hex().encode()))
    handle(b"M%x,4:%s" % (data + ITERATIONS_OFFSET,
                          HUGE_ITERATIONS.to_bytes(4, "little").hex().encode()))
    packets = {"s": b"s", "g": b"g", "m4": b"m%x,4" % data,
               "m2k": b"m%x,800" % guest.sym("bench_buffer"),
               "Z0+z0": None}
    print(f"\nIn-process cost of pvdbg's stub (clock {clock}; Stub.handle_synchronously, "
          "no socket, no threads):", file=out)
    for name, payload in packets.items():
        if payload is None:
            def action() -> None:
                handle(b"Z0,%x,1" % done)
                handle(b"z0,%x,1" % done)
        else:
            def action(payload: bytes = payload) -> None:
                handle(payload)
        rate = _rate(action, 0.3)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(300):
            action()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
        body = [ln for ln in text.getvalue().splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(body) if "ncalls" in ln), 0)
        print(f"\n  {name}: {1e6 / rate:,.1f} us per packet in-process "
              f"({rate:,.0f}/s); top functions by own time over 300 packets:", file=out)
        print(textwrap.indent("\n".join(body[start:start + 9]), "    "), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help="runs per figure, median taken (default 3)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--profile", action="store_true",
                        help="also profile pvdbg's stub in-process, per packet kind")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--serve-udbserver", nargs=2, metavar=("ELF", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_udbserver:
        return serve_udbserver(Path(args.serve_udbserver[0]), int(args.serve_udbserver[1]))
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets or args.runs < 1:
        parser.error(f"--targets takes {','.join(TARGETS)}; --runs >= 1")

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[run_gdb] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="pvdbg-gdbbench-") as tmp:
            work = Path(tmp)
            report = run_all(targets, args.runs, progress, work)
            report["seconds"] = time.monotonic() - started
            print(json.dumps(report, indent=2) if args.json else format_table(report))
            if args.profile:
                guests = build_guests(work)
                for target in targets:
                    if target.startswith("pvdbg-"):
                        profile_pvdbg(guests, target.split("-", 1)[1], sys.stdout)
    except BenchError as exc:
        print(f"run_gdb: {exc}", file=sys.stderr)
        return 2
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
