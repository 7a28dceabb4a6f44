"""Core speed figures of pvdbg (issue 2), measured in one run.

    python bench/run_core.py            # one table on stdout
    python bench/run_core.py --json     # the same figures, with every sample, as JSON

1. Guest instructions per second: the seed guest's bench_loop(N) inside pvdbg (default
   TraceLog on), against raw Unicorn running the very same loop bytes with no hooks.
2. Microseconds per trivial hypercall (xen_version, trace record included), from a tiny PV
   guest built here with gcc (bench/guests/hcloop.S), minus the same loop calling a stub;
   plus raw Unicorn's empty UC_HOOK_INTR round trip for reference.

See bench/README.md for what each figure means and the goals.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import unicorn
from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INTR, UC_MODE_32, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

from pvdbg.session import DEFAULT_SLICE, Session, SessionOptions, StopReason, bundled_guest_path

BENCH_DIR = Path(__file__).resolve().parent
HCLOOP_SOURCE = BENCH_DIR / "guests" / "hcloop.S"
HCLOOP_LINKER_SCRIPT = BENCH_DIR / "guests" / "hcloop.lds"

PAGE_SIZE = 4096
INSNS_PER_ITERATION = 8              # bench_loop_body..bench_loop_end (guests/seed/bench.S)
# Register values bench_loop sets before its first iteration (guests/seed/bench.S).
BENCH_EAX_START = 0x5EED5EED
BENCH_EDX_START = 0x9E3779B9

DEFAULT_ITERATIONS = 40_000_000      # ~2.5 s of pvdbg on a 2020s x86-64 core
DEFAULT_HYPERCALLS = 50_000          # ~2 s at the current per-hypercall cost
DEFAULT_RUNS = 3
INTR_LOOP_COUNT = 200_000            # int $0x82 round trips per raw Unicorn sample
GUEST_MEMORY_MIB = 64

GOAL_SPEED_RATIO = 0.5               # pvdbg / raw Unicorn, at least
GOAL_HYPERCALL_US = 15.0             # per hypercall, at most


class BenchError(Exception):
    """The benchmark could not measure what it should (one line)."""


# -- machine -----------------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    nproc: int                      # CPUs this process may run on (what `nproc` prints)
    cpu_model: str
    python: str
    unicorn: str                    # Python binding version
    unicorn_core: str               # version of the loaded libunicorn
    platform: str


def describe_machine() -> Machine:
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    major, minor, combined = unicorn.uc_version()
    patch = (combined >> 8) & 0xFF
    return Machine(nproc=len(os.sched_getaffinity(0)), cpu_model=cpu_model,
                   python=platform.python_version(), unicorn=unicorn.__version__,
                   unicorn_core=f"{major}.{minor}.{patch}",
                   platform=platform.platform(terse=True))


# -- ELF helpers -------------------------------------------------------------------

@dataclass(frozen=True)
class LoopCode:
    """The bytes of bench_loop_body..bench_loop_end and where they live (guest VAs)."""
    entry_va: int                   # bench_loop
    body_va: int                    # bench_loop_body
    end_va: int                     # bench_loop_end
    body: bytes


def read_loop_code(elf_path: Path) -> LoopCode:
    """Extract the bench loop from the seed ELF by its symbols."""
    try:
        with open(elf_path, "rb") as stream:
            elf = ELFFile(stream)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise BenchError(f"{elf_path}: no .symtab, cannot find bench_loop")
            wanted = ("bench_loop", "bench_loop_body", "bench_loop_end")
            found: dict[str, int] = {}
            for name in wanted:
                symbols = symtab.get_symbol_by_name(name)
                if not symbols:
                    raise BenchError(f"{elf_path}: symbol {name} missing")
                found[name] = symbols[0]["st_value"]
            body_va, end_va = found["bench_loop_body"], found["bench_loop_end"]
            if not found["bench_loop"] <= body_va < end_va:
                raise BenchError(f"{elf_path}: bench_loop symbols out of order")
            for section in elf.iter_sections():
                start = section["sh_addr"]
                if (section["sh_flags"] & SH_FLAGS.SHF_ALLOC and section["sh_type"] == "SHT_PROGBITS"
                        and start <= body_va and end_va <= start + section["sh_size"]):
                    data = section.data()
                    return LoopCode(found["bench_loop"], body_va, end_va,
                                    data[body_va - start:end_va - start])
    except (OSError, ELFError) as exc:
        raise BenchError(f"{elf_path}: cannot read: {exc}") from None
    raise BenchError(f"{elf_path}: no loaded section holds bench_loop_body..bench_loop_end")


# -- figure 1: guest instructions per second ------------------------------------------

@dataclass(frozen=True)
class LoopSample:
    instructions: int
    seconds: float
    eax: int                        # checksum left by the loop

    @property
    def per_second(self) -> float:
        return self.instructions / self.seconds


def _timed(action: Callable[[], object]) -> tuple[object, float]:
    """(result, wall seconds) of `action`; a Unicorn error becomes BenchError."""
    gc.collect()
    start = time.perf_counter()
    try:
        result = action()
    except UcError as exc:
        raise BenchError(f"Unicorn stopped: {exc}") from None
    return result, time.perf_counter() - start


def _open_seed(seed: Path, iterations: int) -> Session:
    return Session.open(seed, SessionOptions(memory_mib=GUEST_MEMORY_MIB, cmdline=f"bench={iterations}"))


def _boot_to(seed: Path, iterations: int, icount: int) -> tuple[Session, bool]:
    """A fresh seed session run for `icount` instructions; True if that is bench_loop_body
    with the registers bench_loop sets (guests/seed/bench.S)."""
    session = _open_seed(seed, iterations)
    stop = session.run(max_insns=icount)
    body_va = session.symbol("bench_loop_body")
    regs = session.cpu.read_many(("eax", "ecx", "edx"))
    at_body = (stop.reason is StopReason.limit and stop.eip == body_va
               and regs == {"eax": BENCH_EAX_START, "ecx": iterations, "edx": BENCH_EDX_START})
    return session, at_body


def find_loop_start_icount(seed: Path, iterations: int, body_va: int) -> int:
    """Instructions the seed guest retires before its first bench_loop_body instruction.

    Found once in a throwaway session with a code hook on bench_loop_body; the guest is
    deterministic, so every fresh session with the same options reaches the loop there.
    Inside a UC_HOOK_CODE callback Unicorn's own count= hook may already have counted the
    instruction about to run, so the hook's reading and the one before it are both tried.
    """
    session = _open_seed(seed, iterations)
    first: list[int] = []

    def on_body(_uc: Uc, _address: int, _size: int, _data: object) -> None:
        if not first:
            first.append(session.cpu.icount)
            session.request_stop()

    hook = session.cpu.uc.hook_add(UC_HOOK_CODE, on_body, begin=body_va, end=body_va)
    try:
        stop = session.run(timeout=60.0)
    finally:
        session.cpu.uc.hook_del(hook)
    if not first:
        raise BenchError(f"seed guest never reached bench_loop_body ({stop.reason}: {stop.detail})")
    for candidate in (first[0] - 1, first[0]):
        if _boot_to(seed, iterations, candidate)[1]:
            return candidate
    raise BenchError(f"cannot stop pvdbg exactly at bench_loop_body (code hook saw icount {first[0]})")


def measure_pvdbg_loop(seed: Path, iterations: int, start_icount: int, loop: LoopCode) -> LoopSample:
    """Boot the seed guest to bench_loop_body (untimed), then time the loop alone."""
    session, at_body = _boot_to(seed, iterations, start_icount)
    if not at_body:
        raise BenchError(f"pvdbg did not stop at bench_loop_body after {start_icount} instructions")
    loop_insns = iterations * INSNS_PER_ITERATION
    before = session.cpu.icount
    stop, seconds = _timed(lambda: session.run(max_insns=loop_insns))
    retired = session.cpu.icount - before
    if stop.eip != loop.end_va or retired != loop_insns or session.cpu.read("ecx") != 0:
        raise BenchError(f"pvdbg loop ended at {stop.eip:#x} after {retired} instructions, "
                         f"expected bench_loop_end after {loop_insns}")
    eax = session.cpu.read("eax")
    final = session.run(timeout=60.0)
    if final.reason is not StopReason.shutdown or f"= {eax:#x}" not in session.console_text:
        raise BenchError(f"seed guest did not power off reporting checksum {eax:#x} "
                         f"({final.reason}: {final.detail})")
    return LoopSample(retired, seconds, eax)


def measure_pvdbg_host_loop(seed: Path, iterations: int, loop: LoopCode) -> LoopSample:
    """clock="host": the same loop at full speed, bracketed by two breakpoints (the
    second sits on the loop's own page, so this also shows that a breakpoint costs
    nothing where it is not)."""
    session = Session.open(seed, SessionOptions(memory_mib=GUEST_MEMORY_MIB, clock="host",
                                                cmdline=f"bench={iterations}"))
    session.add_breakpoint(loop.body_va)
    stop = session.run(timeout=60.0)
    if stop.reason is not StopReason.breakpoint or stop.eip != loop.body_va:
        raise BenchError(f"host-clock run did not reach bench_loop_body ({stop.reason})")
    session.remove_breakpoint(loop.body_va)
    session.add_breakpoint(loop.end_va)
    stop, seconds = _timed(lambda: session.run(timeout=120.0))
    if stop.reason is not StopReason.breakpoint or session.cpu.read("ecx") != 0:
        raise BenchError(f"host-clock loop stopped with {stop.reason} at {stop.eip:#x}")
    return LoopSample(iterations * INSNS_PER_ITERATION, seconds, session.cpu.read("eax"))


def _bare_loop_cpu(loop: LoopCode) -> Uc:
    """A bare 32-bit Unicorn with the loop mapped at its guest VA and no hooks."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    base = loop.body_va & ~(PAGE_SIZE - 1)
    size = (loop.end_va - base + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    uc.mem_map(base, size, UC_PROT_ALL)
    uc.mem_write(loop.body_va, loop.body)
    return uc


def _set_loop_registers(uc: Uc, iterations: int) -> None:
    # What bench_loop does before bench_loop_body: c = N, a and d seeded (bench.S).
    uc.reg_write(X.UC_X86_REG_ECX, iterations)
    uc.reg_write(X.UC_X86_REG_EAX, BENCH_EAX_START)
    uc.reg_write(X.UC_X86_REG_EDX, BENCH_EDX_START)


def _check_raw_end(uc: Uc, loop: LoopCode, what: str) -> int:
    eip, ecx = uc.reg_read(X.UC_X86_REG_EIP), uc.reg_read(X.UC_X86_REG_ECX)
    if eip != loop.end_va or ecx != 0:
        raise BenchError(f"{what} stopped at {eip:#x} with ECX={ecx}, expected "
                         f"bench_loop_end with ECX=0")
    return uc.reg_read(X.UC_X86_REG_EAX)


def measure_raw_loop(loop: LoopCode, iterations: int) -> LoopSample:
    """Raw Unicorn, no hooks: emu_start(body, until=end)."""
    uc = _bare_loop_cpu(loop)
    _set_loop_registers(uc, iterations)
    _, seconds = _timed(lambda: uc.emu_start(loop.body_va, loop.end_va))
    eax = _check_raw_end(uc, loop, "raw Unicorn")
    return LoopSample(iterations * INSNS_PER_ITERATION, seconds, eax)


def measure_raw_counted_loop(loop: LoopCode, iterations: int) -> LoopSample:
    """Raw Unicorn, no hooks, but run in emu_start(count=DEFAULT_SLICE) slices as pvdbg does.

    A diagnostic: Unicorn implements count= with an internal per-instruction code hook.
    """
    uc = _bare_loop_cpu(loop)
    _set_loop_registers(uc, iterations)
    total = iterations * INSNS_PER_ITERATION

    def run_slices() -> None:
        done, pc = 0, loop.body_va
        while done < total:
            budget = min(DEFAULT_SLICE, total - done)
            uc.emu_start(pc, loop.end_va, count=budget)
            done += budget
            pc = uc.reg_read(X.UC_X86_REG_EIP)

    _, seconds = _timed(run_slices)
    eax = _check_raw_end(uc, loop, "raw Unicorn with count=")
    return LoopSample(total, seconds, eax)


# -- figure 2: hypercall cost -----------------------------------------------------------

def build_hcloop(out_dir: Path, hypercalls: int, stub: bool) -> Path:
    """Assemble and link bench/guests/hcloop.S with gcc; return the ELF path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("gcc not found on PATH: needed to build bench/guests/hcloop.S")
    elf = out_dir / ("hcloop-stub.elf" if stub else "hcloop.elf")
    command = [gcc, "-m32", "-nostdlib", "-static", "-no-pie", "-fno-pic",
               f"-DHC_ITERATIONS={hypercalls}", *(["-DHC_STUB"] if stub else []),
               "-Wa,--fatal-warnings", "-Wl,--build-id=none", "-Wl,-z,noexecstack",
               "-Wl,--orphan-handling=error", "-Wl,--fatal-warnings",
               f"-Wl,-T,{HCLOOP_LINKER_SCRIPT}", "-o", str(elf), str(HCLOOP_SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        first_error = (result.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BenchError(f"building {elf.name} failed: {first_error}")
    return elf


@dataclass(frozen=True)
class GuestRunSample:
    seconds: float
    xen_version_calls: int          # hypercall trace records of xen_version
    trace_records: int


def measure_guest_run(elf: Path, expected_calls: int) -> GuestRunSample:
    """Time session.run() of a booted hcloop guest, from its first instruction to poweroff."""
    session = Session.open(elf, SessionOptions(memory_mib=GUEST_MEMORY_MIB))
    stop, seconds = _timed(lambda: session.run(timeout=120.0))
    calls = session.trace.counts.get("xen_version", 0)
    if stop.reason is not StopReason.shutdown or stop.detail != "poweroff":
        raise BenchError(f"{elf.name} did not power off: {stop.reason}: {stop.detail}")
    if calls != expected_calls:
        raise BenchError(f"{elf.name} made {calls} xen_version hypercalls, expected {expected_calls}")
    failed = [r for r in session.trace.records(name="xen_version") if r.result is None or r.result < 0]
    if failed:
        raise BenchError(f"{elf.name}: xen_version failed: {failed[0].error or failed[0].result}")
    return GuestRunSample(seconds, calls, session.trace.total)


# Raw Unicorn reference: mov $K,%ecx; 1: <body>; dec %ecx; jnz 1b
_INT_0X82 = b"\xcd\x82"
_TWO_BYTE_NOP = b"\x66\x90"
_INTR_CODE_VA = 0x1000


def measure_raw_intr(body: bytes, count: int) -> tuple[float, int]:
    """Seconds to run `count` loop iterations around `body` with an empty UC_HOOK_INTR hook."""
    code = (b"\xb9" + count.to_bytes(4, "little") + body + b"\x49\x75"
            + bytes([(-(len(body) + 3)) & 0xFF]))
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(_INTR_CODE_VA, PAGE_SIZE, UC_PROT_ALL)
    uc.mem_write(_INTR_CODE_VA, code)
    hits = [0]

    def on_intr(_uc: Uc, _intno: int, _data: object) -> None:
        hits[0] += 1

    uc.hook_add(UC_HOOK_INTR, on_intr)
    _, seconds = _timed(lambda: uc.emu_start(_INTR_CODE_VA, _INTR_CODE_VA + len(code)))
    if uc.reg_read(X.UC_X86_REG_ECX) != 0:
        raise BenchError("raw Unicorn int $0x82 loop did not finish")
    return seconds, hits[0]


# -- the whole run ------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    return statistics.median(values)


def run_all(iterations: int, hypercalls: int, runs: int, progress: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    machine = describe_machine()
    seed = bundled_guest_path()
    loop = read_loop_code(seed)
    body_insns = len(list(Cs(CS_ARCH_X86, CS_MODE_32).disasm(loop.body, loop.body_va)))
    if body_insns != INSNS_PER_ITERATION:
        raise BenchError(f"bench_loop_body..bench_loop_end holds {body_insns} instructions, "
                         f"expected {INSNS_PER_ITERATION} (guests/seed/bench.S changed?)")

    progress("figure 1: locating bench_loop_body in the seed guest")
    start_icount = find_loop_start_icount(seed, iterations, loop.body_va)
    pvdbg_runs: list[LoopSample] = []
    raw_runs: list[LoopSample] = []
    counted_runs: list[LoopSample] = []
    host_runs: list[LoopSample] = []
    for index in range(runs):
        progress(f"figure 1: run {index + 1}/{runs}")
        host_runs.append(measure_pvdbg_host_loop(seed, iterations, loop))
        pvdbg_runs.append(measure_pvdbg_loop(seed, iterations, start_icount, loop))
        raw_runs.append(measure_raw_loop(loop, iterations))
        counted_runs.append(measure_raw_counted_loop(loop, iterations))
    checksums = {s.eax for s in pvdbg_runs + raw_runs + counted_runs + host_runs}
    if len(checksums) != 1:
        raise BenchError(f"pvdbg and raw Unicorn disagree on the loop checksum: "
                         f"{sorted(hex(c) for c in checksums)}")
    pvdbg_ips = _median([s.per_second for s in pvdbg_runs])
    host_ips = _median([s.per_second for s in host_runs])
    raw_ips = _median([s.per_second for s in raw_runs])
    counted_ips = _median([s.per_second for s in counted_runs])

    progress("figure 2: building hcloop guests with gcc")
    with tempfile.TemporaryDirectory(prefix="pvdbg-bench-") as tmp:
        hc_elf = build_hcloop(Path(tmp), hypercalls, stub=False)
        stub_elf = build_hcloop(Path(tmp), hypercalls, stub=True)
        hc_runs: list[GuestRunSample] = []
        stub_runs: list[GuestRunSample] = []
        intr_runs: list[float] = []
        nop_runs: list[float] = []
        for index in range(runs):
            progress(f"figure 2: run {index + 1}/{runs}")
            hc_runs.append(measure_guest_run(hc_elf, hypercalls))
            stub_runs.append(measure_guest_run(stub_elf, 0))
            intr_seconds, hits = measure_raw_intr(_INT_0X82, INTR_LOOP_COUNT)
            if hits != INTR_LOOP_COUNT:
                raise BenchError(f"raw Unicorn INTR hook ran {hits} times, expected {INTR_LOOP_COUNT}")
            intr_runs.append(intr_seconds)
            nop_runs.append(measure_raw_intr(_TWO_BYTE_NOP, INTR_LOOP_COUNT)[0])
    hc_seconds = _median([s.seconds for s in hc_runs])
    stub_seconds = _median([s.seconds for s in stub_runs])
    hypercall_us = (hc_seconds - stub_seconds) / hypercalls * 1e6
    intr_us = (_median(intr_runs) - _median(nop_runs)) / INTR_LOOP_COUNT * 1e6

    ratio = host_ips / raw_ips
    return {
        "machine": asdict(machine),
        "parameters": {"bench_iterations": iterations, "loop_instructions": iterations * INSNS_PER_ITERATION,
                       "hypercalls": hypercalls, "runs": runs, "intr_loop_count": INTR_LOOP_COUNT,
                       "pvdbg_slice_instructions": DEFAULT_SLICE, "loop_checksum": f"{checksums.pop():#x}",
                       "loop_start_icount": start_icount},
        "guest_speed": {
            "pvdbg_host_clock_insns_per_s": host_ips,
            "pvdbg_host_clock_seconds": [s.seconds for s in host_runs],
            "icount_ratio": pvdbg_ips / raw_ips,
            "pvdbg_insns_per_s": pvdbg_ips,
            "raw_unicorn_insns_per_s": raw_ips,
            "ratio": ratio,
            "goal_ratio_min": GOAL_SPEED_RATIO,
            "goal_met": ratio >= GOAL_SPEED_RATIO,
            "raw_unicorn_count_slices_insns_per_s": counted_ips,
            "pvdbg_seconds": [s.seconds for s in pvdbg_runs],
            "raw_unicorn_seconds": [s.seconds for s in raw_runs],
            "raw_unicorn_count_slices_seconds": [s.seconds for s in counted_runs],
        },
        "hypercall": {
            "us_per_hypercall": hypercall_us,
            "goal_us_max": GOAL_HYPERCALL_US,
            "goal_met": hypercall_us <= GOAL_HYPERCALL_US,
            "hcloop_seconds": [s.seconds for s in hc_runs],
            "stub_loop_seconds": [s.seconds for s in stub_runs],
            "trace_records_per_run": hc_runs[0].trace_records,
            "raw_unicorn_intr_hook_us": intr_us,
            "raw_unicorn_intr_loop_seconds": intr_runs,
            "raw_unicorn_nop_loop_seconds": nop_runs,
        },
        "wall_seconds": time.perf_counter() - started,
    }


def _mips(value: float) -> str:
    return f"{value / 1e6:,.1f} M insn/s"


def format_table(report: dict) -> str:
    m, p, g, h = report["machine"], report["parameters"], report["guest_speed"], report["hypercall"]
    verdict = {True: "met", False: "NOT met"}
    rows = [
        ("machine", f"{m['nproc']} CPU(s), {m['cpu_model']}", ""),
        ("python / unicorn", f"{m['python']} / {m['unicorn']} (core {m['unicorn_core']})", ""),
        ("guest speed, pvdbg --clock host (trace on)", _mips(g["pvdbg_host_clock_insns_per_s"]), ""),
        ("guest speed, pvdbg --clock icount (default)", _mips(g["pvdbg_insns_per_s"]),
         "exact counts, deterministic"),
        ("guest speed, raw Unicorn (no hooks)", _mips(g["raw_unicorn_insns_per_s"]), ""),
        ("  pvdbg host clock / raw Unicorn", f"{g['ratio']:.3f}x",
         f">= {g['goal_ratio_min']}x: {verdict[g['goal_met']]}"),
        ("  pvdbg icount clock / raw Unicorn", f"{g['icount_ratio']:.3f}x", "counting costs this"),
        ("  ref: raw Unicorn, count= slices", _mips(g["raw_unicorn_count_slices_insns_per_s"]),
         "diagnostic"),
        ("hypercall xen_version + trace", f"{h['us_per_hypercall']:.2f} us",
         f"<= {h['goal_us_max']} us: {verdict[h['goal_met']]}"),
        ("  ref: raw Unicorn empty INTR hook", f"{h['raw_unicorn_intr_hook_us']:.3f} us", "reference"),
    ]
    params = (f"bench={p['bench_iterations']} ({p['loop_instructions']:,} insns), "
              f"{p['hypercalls']:,} hypercalls, median of {p['runs']} interleaved runs, "
              f"total {report['wall_seconds']:.1f} s")
    widths = [max(len(r[i]) for r in rows + [("figure", "value", "goal")]) for i in range(3)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(row: tuple[str, str, str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    return "\n".join([line, fmt(("figure", "value", "goal")), line, *map(fmt, rows), line, params])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure pvdbg's core speed figures (issue 2).")
    parser.add_argument("--json", action="store_true", help="print the figures and samples as JSON")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"bench_loop iterations (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--hypercalls", type=int, default=DEFAULT_HYPERCALLS,
                        help=f"hypercalls per hcloop run (default {DEFAULT_HYPERCALLS})")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"interleaved runs per figure, median taken (default {DEFAULT_RUNS})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if not 1 <= args.iterations < 1 << 32:
        parser.error("--iterations must be between 1 and 2^32-1")
    if not 1 <= args.hypercalls < 1 << 31:
        parser.error("--hypercalls must be between 1 and 2^31-1")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        report = run_all(args.iterations, args.hypercalls, args.runs, progress)
    except BenchError as exc:
        print(f"run_core: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
