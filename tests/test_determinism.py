"""With the instruction-count clock, a guest's run is a function of the guest: the seed
kernel (timers, idle skips, upcalls, emulations, multicalls, ring changes) produces the
same trace twice, and the same trace again when run in small slices or stepped."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.image import load_guest_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seed_elf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed_det")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    return out / "seed.elf"


def run(elf: Path, chunk: int | None = None) -> Session:
    s = Session(load_guest_image(str(elf)), SessionOptions(memory_mib=16, cmdline="bench=100"))
    while True:
        stop = s.run(max_insns=chunk) if chunk else s.run(max_insns=50_000_000)
        if stop.reason is not StopReason.limit or not chunk:
            break
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    return s


def lines(s: Session) -> list[str]:
    return [r.to_json() for r in s.trace]


def test_two_runs_identical_trace(seed_elf):
    a, b = run(seed_elf), run(seed_elf)
    assert lines(a) == lines(b)
    assert a.console_text == b.console_text
    assert a.cpu.icount == b.cpu.icount and a.hv.time.now_ns() == b.hv.time.now_ns()
    kinds = {r.kind for r in a.trace}
    assert {TraceKind.upcall, TraceKind.emulation, TraceKind.trap,
            TraceKind.multicall_entry} <= kinds


def test_sliced_run_same_trace(seed_elf):
    """Stopping every 7919 instructions (a prime, so slices fall everywhere) changes
    nothing the guest can observe."""
    assert lines(run(seed_elf, chunk=7919)) == lines(run(seed_elf))


def test_idle_time_is_deterministic(seed_elf):
    s = run(seed_elf)
    assert s.hv.time.idle_ns > 0
    assert s.hv.time.now_ns() == s.cpu.icount + s.hv.time.idle_ns
