"""The seed guest's kernel phase end to end: console lines, the hypercall sequence, and
the hypervisor events behind them (traps, upcalls, emulations, the failsafe callback)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from seed_kernel_phase import KERNEL_PHASE_CALLS, kernel_phase_lines
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.testing import assert_hypercalls, hc
from pvdbg.trace import TraceKind
from pvdbg.xen.image import load_guest_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def booted(tmp_path_factory) -> Session:
    out = tmp_path_factory.mktemp("seedk")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    s = Session(load_guest_image(str(out / "seed.elf")), SessionOptions(memory_mib=16))
    stop = s.run(max_insns=50_000_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    return s


def test_console_lines(booted):
    lines = booted.console_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("seed: traps:"))
    assert lines[start:start + 10] == kernel_phase_lines(booted)
    assert lines[-1] == "seed: powering off"


def test_hypercall_sequence(booted):
    start = [r for r in booted.trace if r.name == "set_trap_table"][0].seq
    tail = [r for r in booted.trace if r.seq >= start]
    assert_hypercalls(tail, KERNEL_PHASE_CALLS + [hc("console_io"), hc("sched_op")], exact=True)


def test_events_and_traps_behind_the_lines(booted):
    s = booted
    sym = s.image.symbols.address
    ups = [r for r in s.trace if r.kind is TraceKind.upcall]
    assert len(ups) == 4 and all(r.args["ports"] == [3] for r in ups)
    assert all(r.args["handler"] == sym("xen_hypervisor_callback") for r in ups)
    failsafe = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "failsafe"]
    assert len(failsafe) == 1 and failsafe[0].args["vector"] == 11
    assert failsafe[0].args["gs"] == 0x33
    syscalls = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "int 0x80"]
    assert len(syscalls) == 2 and all(r.args["ring"] == 3 for r in syscalls)
    assert all("stack_switch" in r.detail for r in syscalls)
    emul = {r.args["insn"] for r in s.trace if r.kind is TraceKind.emulation}
    assert {"rdmsr", "mov eax, cr3", "rdtsc", "cpuid"} <= emul
    mc = [r for r in s.trace if r.kind is TraceKind.hypercall and r.name == "multicall"]
    kids = [r for r in s.trace if r.kind is TraceKind.multicall_entry]
    assert [k.parent for k in kids] == [mc[0].seq] * 3 + [mc[1].seq] * 3


def test_kernel_phase_with_host_clock(tmp_path):
    out = tmp_path / "b"
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    s = Session(load_guest_image(str(out / "seed.elf")),
                SessionOptions(memory_mib=16, clock="host"))
    stop = s.run(timeout=60)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert "seed: back in task A: private page 0xa2a2a2a2, TLS %gs:0 0xa1a1a1a1" in s.console_text
