"""Bounded resources for `pvdbg run` (issue 9 item 5).

A guest that never stops is stopped by --max-insns/--timeout with its state reported;
trace memory is a ring buffer (--trace-buffer) while every record still reaches the
--trace file; a run ended by SIGTERM, SIGINT or a guest crash leaves a trace file of
whole, valid lines up to the last record (even SIGKILL leaves only whole lines).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestbuild import build_asm_guest
from pvdbg import cli
from pvdbg.trace import JsonlSpill, TraceKind, TraceLog, TraceRecord, read_jsonl

HYPERCALL_LOOP = r"""
.globl _start
_start:
hypercall_loop:
    xorl %ebx, %ebx                 /* XENVER_version */
    xorl %ecx, %ecx
    call hypercall_page + 17 * 32   /* xen_version */
    jmp hypercall_loop
"""

SPIN = r"""
.globl _start
_start:
    movl $0x5eed, %eax
spin:
    incl %ebx
    jmp spin
"""

CRASH_AFTER_HYPERCALLS = r"""
.globl _start
_start:
    movl $50, %edi
again:
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    call hypercall_page + 17 * 32
    decl %edi
    jnz again
    movl 0x10, %eax                 /* #PF, and no trap table: the domain crashes */
"""


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bounds")
    return {"loop": build_asm_guest(tmp, HYPERCALL_LOOP, "hcloop"),
            "spin": build_asm_guest(tmp, SPIN, "spin"),
            "crash": build_asm_guest(tmp, CRASH_AFTER_HYPERCALLS, "crash")}


def run_cli(*argv: str) -> tuple[int, str]:
    """`pvdbg run ...` in this process: (exit status, stderr)."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stderr = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["run", *argv])
    return code, stderr.getvalue()


def read_trace(path: Path) -> list[TraceRecord]:
    """Every line whole (ends in a newline, parses); seq strictly increasing."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), text[-200:]
    for line in text.splitlines():
        json.loads(line)
    with path.open(encoding="utf-8") as stream:
        records = read_jsonl(stream)
    seqs = [r.seq for r in records]
    assert seqs == sorted(set(seqs)), "records repeated or out of order"
    return records


# -- a guest that never stops ---------------------------------------------------------

def test_max_insns_stops_a_spinning_guest_and_reports_its_state(guests) -> None:
    code, stderr = run_cli(str(guests["spin"]), "--max-insns", "100000", "--memory", "16")
    assert code == 3
    assert "pvdbg: stopped: limit (instruction limit 100000 reached) after 100000" in stderr
    state = re.search(r"pvdbg: vcpu0 stopped at eip (0x[0-9a-f]{8}) spin(\+0x[0-9a-f]+)? "
                      r"\(ring 1\)", stderr)
    assert state, stderr
    assert re.search(r"eax 00005eed ebx [0-9a-f]{8}", stderr), stderr
    assert re.search(r"cs e019 ss e021 cr3 [0-9a-f]{8}", stderr)


def test_timeout_stops_a_spinning_guest_and_reports_its_state(guests) -> None:
    started = time.monotonic()
    code, stderr = run_cli(str(guests["spin"]), "--timeout", "0.3", "--memory", "16")
    assert code == 3 and time.monotonic() - started < 10
    assert "pvdbg: stopped: timeout (timeout of 0.3 s reached)" in stderr
    assert re.search(r"vcpu0 stopped at eip 0x[0-9a-f]{8} spin", stderr), stderr


def test_quiet_bounded_run_prints_nothing(guests) -> None:
    assert run_cli(str(guests["spin"]), "--max-insns", "1000", "--quiet") == (3, "")


# -- the trace ring buffer and its file -------------------------------------------------

def test_trace_buffer_keeps_memory_bounded_and_the_file_complete(guests, tmp_path) -> None:
    trace = tmp_path / "t.jsonl"
    code, stderr = run_cli(str(guests["loop"]), "--max-insns", "200000", "--memory", "16",
                           "--trace", str(trace), "--trace-buffer", "10")
    assert code == 3
    records = read_trace(trace)
    calls = int(re.search(r"pvdbg: (\d+) hypercalls:", stderr).group(1))
    hypercalls = [r for r in records if r.kind is TraceKind.hypercall]
    assert len(hypercalls) == calls > 1000               # every record reached the file
    assert [r.seq for r in records] == list(range(len(records)))
    assert re.search(rf"xen_version\s+{calls}\b", stderr)


def test_trace_log_ring_buffer_spills_everything(tmp_path) -> None:
    path = tmp_path / "spill.jsonl"
    with JsonlSpill(path, buffer_bytes=512) as spill:
        log = TraceLog(capacity=7, spill=spill)
        for _ in range(1000):
            log.append(TraceRecord(log.next_seq(), TraceKind.hypercall, 1, 0, 0xC0000000,
                                   "xen_version", {"cmd": 0}, 0x40011))
        assert len(log) == 7 and log.total == 1000
        assert [r.seq for r in log] == list(range(993, 1000))
        assert log.counts == {"xen_version": 1000}
        lines = path.read_text().splitlines(keepends=True)
        assert lines and all(line.endswith("\n") for line in lines)   # written as it goes
    assert [r.seq for r in read_trace(path)] == list(range(1000))


def test_spill_file_never_repeats_a_batch(tmp_path, monkeypatch) -> None:
    """A signal raised inside a write (simulated) loses that batch, never duplicates it."""
    path = tmp_path / "spill.jsonl"
    spill = JsonlSpill(path, buffer_bytes=1 << 20)
    spill.write('{"a":1}\n')
    real_write = os.write

    def interrupted(fd, data):
        monkeypatch.setattr(os, "write", real_write)
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        spill.flush()
    spill.write('{"b":2}\n')
    spill.close()
    spill.close()
    assert path.read_text() == '{"b":2}\n'


def test_bad_trace_buffer_is_bad_input(guests) -> None:
    assert run_cli("--trace-buffer", "0") == (
        2, "pvdbg: --trace-buffer must be at least 1 record, not 0\n")


# -- runs that end badly still leave a valid trace ----------------------------------------

def test_crash_leaves_a_complete_trace(guests, tmp_path) -> None:
    trace = tmp_path / "crash.jsonl"
    code, stderr = run_cli(str(guests["crash"]), "--trace", str(trace), "--memory", "16")
    assert code == 1 and "crashed" in stderr
    records = read_trace(trace)
    assert sum(r.kind is TraceKind.hypercall for r in records) == 50
    assert [r.kind for r in records[-3:]] == [TraceKind.trap, TraceKind.crash, TraceKind.shutdown]


def _start_tracing_run(guest: Path, trace: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pvdbg.cli", "run", str(guest), "--memory",
                             "16", "--trace", str(trace), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:               # wait until records reach the file
        if trace.exists() and trace.stat().st_size > 100_000:
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the guest wrote no trace")


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_a_complete_trace_and_a_summary(guests, tmp_path, signum) -> None:
    trace = tmp_path / "killed.jsonl"
    proc = _start_tracing_run(guests["loop"], trace)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    assert f"pvdbg: stopped: interrupt ({name} received)" in stderr
    assert re.search(r"vcpu0 stopped at eip 0x[0-9a-f]{8} hypercall", stderr), stderr
    records = read_trace(trace)
    calls = int(re.search(r"pvdbg: (\d+) hypercalls:", stderr).group(1))
    hypercalls = [r for r in records if r.kind is TraceKind.hypercall]
    assert len(hypercalls) == calls > 100           # nothing lost: the file has them all
    assert [r.seq for r in records] == list(range(len(records)))


@pytest.mark.e2e
def test_sigkill_leaves_only_whole_lines(guests, tmp_path) -> None:
    trace = tmp_path / "sigkill.jsonl"
    proc = _start_tracing_run(guests["loop"], trace)
    proc.kill()
    proc.communicate(timeout=30)
    assert len(read_trace(trace)) > 100
