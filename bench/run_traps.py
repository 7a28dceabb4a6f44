"""Trap, event and multicall costs of pvdbg's emulated Xen (issue 4), measured in one run.

    python bench/run_traps.py            # one table on stdout
    python bench/run_traps.py --json     # the same figures, with every sample, as JSON

1. Microseconds per trap round trip: a #GP that Xen emulates (mov %cr0,%eax in a loop of
   bench/guests/trapsloop.S), minus the same loop with a plain mov.
2. Microseconds per event upcall: EVTCHNOP_send of an IPI to ourselves with events on
   (upcall delivery, the guest's handler, the iret hypercall), minus the same send with
   the port masked.
3. Microseconds per multicall entry: a multicall of 32 xen_version entries, minus an
   empty multicall, divided by 32.
4. Instructions per second of the seed guest's bench_loop with its 1 ms periodic timer
   running (seed `bench=N timer=1`: an upcall every million instructions), without it,
   and raw Unicorn on the same loop bytes with no hooks.

All pvdbg figures use the default instruction-count clock.  Medians of --runs runs; the
machine's load average is printed because the figures scale with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from run_core import (BenchError, describe_machine, measure_raw_counted_loop,  # noqa: E402
                      measure_raw_loop, read_loop_code)

from pvdbg.session import Session, SessionOptions, StopReason  # noqa: E402
from pvdbg.trace import TraceKind  # noqa: E402
from pvdbg.xen.image import load_guest_image  # noqa: E402

TRAPSLOOP_SOURCE = BENCH_DIR / "guests" / "trapsloop.S"
TRAPSLOOP_LDS = BENCH_DIR / "guests" / "trapsloop.lds"
MULTICALL_BATCH = 32
INSNS_PER_ITERATION = 8
DEFAULT_RUNS = 3


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    samples: list[float]
    note: str


def build_trapsloop(out: Path, mode: str, iterations: int) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("gcc not found: needed to build bench/guests/trapsloop.S")
    elf = out / f"trapsloop-{mode.lower()}.elf"
    cmd = [gcc, "-m32", "-nostdlib", "-static", "-no-pie", "-fno-pic", f"-DITERATIONS={iterations}",
           f"-DMODE_{mode}", "-Wl,--build-id=none", f"-Wl,-T,{TRAPSLOOP_LDS}", "-o", str(elf),
           str(TRAPSLOOP_SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise BenchError(f"building {elf.name}: {(result.stderr.splitlines() or ['?'])[0]}")
    return elf


def time_guest(elf: Path) -> float:
    """Seconds of session.run() from the first instruction to poweroff."""
    s = Session(load_guest_image(str(elf)), SessionOptions())
    start = time.perf_counter()
    stop = s.run(timeout=300)
    seconds = time.perf_counter() - start
    if stop.reason is not StopReason.shutdown or s.shutdown_reason.name != "poweroff":
        raise BenchError(f"{elf.name} stopped with {stop.reason}: {stop.detail}")
    return seconds


def paired(out: Path, mode: str, base: str, iterations: int, per: int, runs: int,
           name: str, note: str) -> Figure:
    """(median time of `mode` - median time of `base`) / (iterations * per), in µs."""
    elf, base_elf = build_trapsloop(out, mode, iterations), build_trapsloop(out, base, iterations)
    samples = []
    for _ in range(runs):
        samples.append((time_guest(elf) - time_guest(base_elf)) * 1e6 / (iterations * per))
    return Figure(name, statistics.median(samples), "µs", samples, note)


def build_seed(out: Path) -> Path:
    result = subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise BenchError(f"building the seed guest: {(result.stderr.splitlines() or ['?'])[0]}")
    return out / "seed.elf"


def seed_loop(seed: Path, iterations: int, timer: bool,
              clock: str = "icount") -> tuple[float, int, int]:
    """(seconds, instructions retired, upcalls) of bench_loop_body..bench_loop_end (with
    the host clock the count is the loop's own 8 per iteration)."""
    cmdline = f"bench={iterations}" + (" timer=1" if timer else "")
    s = Session(load_guest_image(str(seed)), SessionOptions(memory_mib=64, cmdline=cmdline,
                                                            clock=clock))
    body, end = s.symbol("bench_loop_body"), s.symbol("bench_loop_end")
    s.add_breakpoint(body)
    stop = s.run(timeout=60)
    if stop.reason is not StopReason.breakpoint:
        raise BenchError(f"seed did not reach bench_loop_body ({stop.reason}: {stop.detail})")
    s.remove_breakpoint(body)
    s.add_breakpoint(end)
    before, ups = s.cpu.icount, len(s.trace.records(TraceKind.upcall))
    start = time.perf_counter()
    stop = s.run(timeout=600)
    seconds = time.perf_counter() - start
    if stop.reason is not StopReason.breakpoint or stop.eip != end:
        raise BenchError(f"seed loop stopped with {stop.reason} at {stop.eip:#x}")
    insns = (s.cpu.icount - before if s.cpu.icount is not None and before is not None
             else iterations * INSNS_PER_ITERATION)
    return seconds, insns, len(s.trace.records(TraceKind.upcall)) - ups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--gp", type=int, default=5000, help="emulated #GPs per sample")
    ap.add_argument("--upcalls", type=int, default=3000, help="upcalls per sample")
    ap.add_argument("--multicalls", type=int, default=500, help="32-entry multicalls per sample")
    ap.add_argument("--iterations", type=int, default=5_000_000, help="bench_loop iterations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    machine = describe_machine()
    load = os.getloadavg()
    figures: list[Figure] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pvdbg-traps-") as tmp:
            out = Path(tmp)
            figures.append(paired(out, "GP", "GP_BASE", args.gp, 1, args.runs,
                                  "trap round trip (#GP emulated: mov %cr0)",
                                  "decode, emulate, trace record, return to the guest"))
            figures.append(paired(out, "UPCALL", "SEND_MASKED", args.upcalls, 1, args.runs,
                                  "event upcall round trip",
                                  "bounce to the event callback + 5-instruction handler + "
                                  "iret hypercall"))
            figures.append(paired(out, "MULTICALL", "MULTICALL0", args.multicalls,
                                  MULTICALL_BATCH, args.runs, "multicall entry (xen_version)",
                                  "dispatch, result write-back, child trace record"))
            seed = build_seed(out / "seed")
            loop = read_loop_code(seed)
            timed, plain, host, raw, counted = [], [], [], [], []
            ticks = host_ticks = 0
            for _ in range(args.runs):
                seconds, insns, ticks = seed_loop(seed, args.iterations, timer=True)
                timed.append(insns / seconds / 1e6)
                seconds, insns, _ = seed_loop(seed, args.iterations, timer=False)
                plain.append(insns / seconds / 1e6)
                seconds, insns, host_ticks = seed_loop(seed, args.iterations, timer=True,
                                                       clock="host")
                host.append(insns / seconds / 1e6)
                raw.append(measure_raw_loop(loop, args.iterations).per_second / 1e6)
                counted.append(measure_raw_counted_loop(loop, args.iterations).per_second / 1e6)
            figures.append(Figure("seed bench_loop, 1 ms timer running", statistics.median(timed),
                                  "M insn/s", timed,
                                  f"{ticks} VIRQ_TIMER upcalls during the loop"))
            figures.append(Figure("seed bench_loop, no timer", statistics.median(plain),
                                  "M insn/s", plain, "same loop, timer stopped"))
            figures.append(Figure("raw Unicorn, same loop bytes", statistics.median(raw),
                                  "M insn/s", raw, "emu_start(until=end), no hooks"))
            figures.append(Figure("raw Unicorn, count= slices", statistics.median(counted),
                                  "M insn/s", counted,
                                  "what exact instruction counts cost Unicorn itself"))
            figures.append(Figure("seed bench_loop, timer, clock=host", statistics.median(host),
                                  "M insn/s", host,
                                  f"{host_ticks} upcalls (wall-clock ticks), uncounted"))
    except BenchError as err:
        print(f"run_traps: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machine": asdict(machine), "loadavg": load,
                          "figures": [asdict(f) for f in figures]}, indent=2))
        return 0
    print(f"pvdbg trap/event/multicall costs — {machine.cpu_model}, {machine.nproc} CPUs, "
          f"Python {machine.python}, Unicorn {machine.unicorn_core}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, medians of {args.runs}")
    width = max(len(f.name) for f in figures)
    for f in figures:
        print(f"  {f.name:<{width}}  {f.value:10.2f} {f.unit:<9} {f.note}")
    print(f"  seed with timer / raw Unicorn: {figures[3].value / figures[5].value:.3f}; "
          f"/ raw Unicorn with count=: {figures[3].value / figures[6].value:.2f}; "
          f"clock=host with timer / raw Unicorn: {figures[7].value / figures[5].value:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
