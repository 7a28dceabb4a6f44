"""Harness for the fuzz guest (guests/fuzz): run seeded streams of random hypercalls and
check the hypervisor's invariants after every hypercall.

The guest makes steps `start .. start+count-1` of the stream for a seed (its command
line: ``seed=S start=I count=N``) and keeps the index of the step it is making in
`fuzz_index`.  A listener on the trace (`InvariantWatch`) checks the invariants
(`invariants.InvariantChecker`) after each hypercall record; the first violation, or any Python exception inside the
hypervisor, stops the run and becomes a `FuzzFailure` naming the seed and the step, which
replays exactly with ``seed=S start=0 count=I+1``.  A crashed, wedged or blocked domain is
not a failure (the guest is hostile by design): the campaign records why and carries on
with the next seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .machine.memory import PAGE_SHIFT
from .session import Session, SessionError, SessionOptions, StopReason
from .trace import TraceKind, TraceRecord
from .xen.image import GuestImage
from .xen.invariants import InvariantChecker, problems

SLICE_INSNS = 1_000_000           # the run is watched between slices of this many
WEDGED_INSNS = 4_000_000          # no new step for this long: the guest is wedged


class FuzzError(Exception):
    """The fuzz guest cannot be run (one line)."""


@dataclass(frozen=True)
class FuzzFailure:
    """A hypervisor bug: an invariant broke, or Python raised inside the hypervisor."""
    seed: int
    index: int | None             # the step being made (None: before the first step)
    record: str                   # the hypercall after which it was seen
    problems: tuple[str, ...]

    def replay(self) -> str:
        count = 1 if self.index is None else self.index + 1
        return (f"python bench/run_fuzz.py --seed {self.seed} --steps {count} "
                f"(guest command line: seed={self.seed} start=0 count={count})")

    def describe(self) -> str:
        where = "at boot" if self.index is None else f"at step {self.index}"
        lines = [f"fuzz failure: seed {self.seed} {where}, after {self.record}"]
        lines += [f"  {p}" for p in self.problems[:20]]
        lines.append(f"  replay: {self.replay()}")
        return "\n".join(lines)


@dataclass
class SeedRun:
    """One boot of the fuzz guest."""
    seed: int
    start: int
    count: int
    steps_done: int = 0
    hypercalls: int = 0
    checks: int = 0
    traps: int = 0
    stop: str = ""                # "done", or why the domain ended early
    failure: FuzzFailure | None = None
    seconds: float = 0.0


@dataclass
class Campaign:
    """Many seeds until a number of steps is reached."""
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(r.steps_done for r in self.runs)

    @property
    def hypercalls(self) -> int:
        return sum(r.hypercalls for r in self.runs)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def failures(self) -> list[FuzzFailure]:
        return [r.failure for r in self.runs if r.failure is not None]

    def ended_early(self) -> list[SeedRun]:
        return [r for r in self.runs if r.stop != "done" and r.failure is None]


class _GuestWord:
    """A u32 of the guest's image (in its vital, never remapped memory)."""

    def __init__(self, session: Session, symbol: str) -> None:
        va = session.image.symbols.address(symbol)
        if va is None:
            raise FuzzError(f"{session.image.path}: no symbol {symbol!r} (not the fuzz guest?)")
        layout = session.hv.layout
        pfn = (va - layout.virt_base) >> PAGE_SHIFT
        self.memory = session.hv.memory
        self.maddr = (session.hv.built.p2m[pfn] << PAGE_SHIFT) | (va & 0xFFF)

    def read(self) -> int:
        return self.memory.read_u32(self.maddr)


class InvariantWatch:
    """Trace listener: the invariants after every hypercall; stops the run at the first
    violation."""

    def __init__(self, session: Session, seed: int, check: bool = True,
                 full_every: int = 1) -> None:
        self.session = session
        self.seed = seed
        self.check = check
        self.checker = InvariantChecker(session.hv, full_every) if check else None
        self.index = _GuestWord(session, "fuzz_index")
        self.started = False
        self.checks = 0
        self.failure: FuzzFailure | None = None

    def step_index(self) -> int | None:
        return self.index.read() if self.started else None

    def on_trace(self, record: TraceRecord) -> None:
        if record.kind is not TraceKind.hypercall or self.failure is not None:
            return
        if not self.started and record.name == "console_io":
            self.started = True          # the banner: steps begin after it
        if self.checker is None:
            return
        self.checks += 1
        problems = self.checker.problems()
        if problems:
            self.failure = FuzzFailure(self.seed, self.step_index(), _describe(record),
                                       tuple(problems))
            self.session.request_stop()


def _describe(record: TraceRecord) -> str:
    text = f"{record.name}{record.args} = {record.result}"
    if record.error:
        text += f" ({record.error})"
    if record.detail:
        text += f" [{record.detail[:300]}]"
    return f"trace seq {record.seq}: {text}"


def run_seed(image: GuestImage, seed: int, start: int = 0, count: int = 1000, *,
             check: bool = True, full_every: int = 1, memory_mib: int = 16,
             clock: str = "icount", wild: bool = False) -> SeedRun:
    """Boot the fuzz guest once and make steps [start, start+count) of `seed`, checking
    the invariants after every hypercall (from scratch every `full_every`).  A failure a
    from-scratch check finds is pinned to its exact step by a replay that checks every
    hypercall from scratch."""
    run = _run_once(image, seed, start, count, check, full_every, memory_mib, clock, wild)
    failure = run.failure
    if failure is not None and full_every > 1 and failure.index is not None:
        exact = _run_once(image, seed, start, failure.index + 1 - start, check, 1, memory_mib,
                          clock, wild)
        if exact.failure is not None:
            run.failure = exact.failure
    return run


def _run_once(image: GuestImage, seed: int, start: int, count: int, check: bool,
              full_every: int, memory_mib: int, clock: str, wild: bool) -> SeedRun:
    cmdline = f"seed={seed} start={start} count={count}" + (" wild=1" if wild else "")
    options = SessionOptions(memory_mib=memory_mib, cmdline=cmdline, trace_capacity=64,
                             clock=clock, p2m_seed=0x5EED + seed)
    session = Session(image, options)
    watch = InvariantWatch(session, seed, check, full_every)
    session.hv.listeners.append(watch)
    hypercalls = _GuestWord(session, "fuzz_hypercalls")
    traps = _GuestWord(session, "fuzz_traps")
    index = _GuestWord(session, "fuzz_index")
    run = SeedRun(seed, start, count)
    began = time.perf_counter()
    stop = None
    try:
        last, stalled = None, 0
        while True:
            stop = session.run(max_insns=SLICE_INSNS)
            if stop.reason is not StopReason.limit or watch.failure is not None:
                break
            now = index.read()
            stalled = stalled + SLICE_INSNS if now == last else 0
            last = now
            if stalled >= WEDGED_INSNS:
                break
        if watch.failure is None and check:
            final = problems(session.hv)
            if final:
                watch.failure = FuzzFailure(seed, watch.step_index(), "the end of the run",
                                            tuple(final))
    except SessionError as exc:
        watch.failure = watch.failure or FuzzFailure(
            seed, watch.step_index(), "a Python exception in the hypervisor", (str(exc),))
        stop = None
    run.seconds = time.perf_counter() - began
    run.failure = watch.failure
    run.checks = watch.checks
    run.hypercalls = hypercalls.read()
    run.traps = traps.read()
    at = watch.step_index()
    run.steps_done = 0 if at is None else max(0, min(count, at - start))
    if run.failure is None and stop is not None:
        dom = session.hv.domain
        if (stop.reason is StopReason.shutdown and dom.shutdown_reason is not None
                and dom.shutdown_reason.name == "poweroff" and at == start + count):
            run.stop = "done"
        elif stop.reason is StopReason.crash:
            run.stop = f"domain crashed at step {at}: {stop.detail}"
        elif stop.reason is StopReason.limit:
            run.stop = (f"wedged at step {at}: no progress in {WEDGED_INSNS} instructions "
                        f"(eip {stop.eip:#x})")
        else:
            run.stop = f"{stop.reason.value} at step {at}: {stop.detail}"
    return run


def run_campaign(image: GuestImage, steps: int, *, first_seed: int = 1,
                 steps_per_seed: int = 5000, check: bool = True, full_every: int = 1,
                 clock: str = "icount", stop_on_failure: bool = True,
                 progress: Callable[[SeedRun, Campaign], None] | None = None) -> Campaign:
    """Seeds first_seed, first_seed+1, ... until `steps` steps were made; a seed whose
    domain ends early leaves the rest of its steps to the next seed."""
    campaign = Campaign()
    seed = first_seed
    while campaign.steps < steps:
        count = min(steps_per_seed, steps - campaign.steps)
        run = run_seed(image, seed, 0, count, check=check, full_every=full_every, clock=clock)
        if run.failure is None and run.steps_done == 0:
            run.steps_done = 1          # a seed that dies at once still moves the campaign on
        campaign.runs.append(run)
        if progress is not None:
            progress(run, campaign)
        if run.failure is not None and stop_on_failure:
            break
        seed += 1
    return campaign


def build_fuzz_guest(out_dir: Path, root: Path | None = None) -> Path:
    """`make` guests/fuzz into `out_dir`; returns the ELF's path."""
    import subprocess
    root = root if root is not None else Path(__file__).resolve().parent.parent
    src = root / "guests" / "fuzz"
    if not (src / "Makefile").exists():
        raise FuzzError(f"{src}: the fuzz guest's sources are not there")
    proc = subprocess.run(["make", "-s", "-C", str(src), f"O={out_dir}"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise FuzzError(f"building the fuzz guest failed: {proc.stderr.strip()[-500:]}")
    return out_dir / "fuzz.elf"
