"""Debian's PV GRUB on pvdbg (issue 8): how long to the `grub>` prompt, and where the time goes.

    python bench/run_grub.py            # one table on stdout, progress on stderr
    python bench/run_grub.py --json     # the same figures with every sample, as JSON

For each configuration (clock icount, clock host, icount with a PV disk; then the x86_64
image, grub-x86_64-xen.bin, on the 64-bit PV engine with icount, with and without a disk)
GRUB is booted
from `Session.open` to its first `grub> `, R times (median taken, runs interleaved):

* wall seconds from Session.open to the prompt (domain build included), instructions
  retired (icount clock only), hypercalls, all trace records;
* the split of the run's wall time (of the median run): Unicorn (inside emu_start, minus Python hooks),
  Python hooks (the hypervisor answering hypercalls, traps, CPUID and ring polls
  inside emu_start) and Python between slices (run loop, ring pumps, timers);
* then `echo hello` typed at the prompt: wall milliseconds until `hello` is printed;
* then idle at the prompt for 2 s with console input open (a front end could type):
  CPU seconds pvdbg used meanwhile (it should sleep, not poll).

The grub-xen-host package is fetched with tools/fetch-debian-deb (apt-get download, no
install).  See bench/README.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from debian import DebianFetchError, grub_i386_xen, grub_x86_64_xen  # noqa: E402

from pvdbg.guestinput import InputPollWatch  # noqa: E402
from pvdbg.machine.cpu import X86Cpu  # noqa: E402
from pvdbg.machine.cpu64 import X64Cpu  # noqa: E402
from pvdbg.session import Session, SessionOptions, StopReason  # noqa: E402
from pvdbg.xen.cpuid import CpuidPolicy  # noqa: E402
from pvdbg.xen.devices import DiskSpec  # noqa: E402
from pvdbg.xen.pv64.hypervisor import Hypervisor64  # noqa: E402

PROMPT = "grub> "
MAX_INSNS = 400_000_000
IDLE_SECONDS = 2.0


class _Clock:
    """Wall time spent inside emu_start and inside the Python hooks it calls."""

    def __init__(self) -> None:
        self.emu = 0.0
        self.hooks = 0.0
        self.depth = 0

    def reset(self) -> None:
        self.emu = self.hooks = 0.0


CLOCK = _Clock()


def _timed_run(original):
    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            CLOCK.emu += time.perf_counter() - start
    return run


def _timed_hook(original):
    def hook(*args, **kwargs):
        if CLOCK.depth:
            return original(*args, **kwargs)
        CLOCK.depth += 1
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            CLOCK.hooks += time.perf_counter() - start
            CLOCK.depth -= 1
    return hook


def install_timers() -> None:
    """Wrap X86Cpu.run and every Python callback pvdbg gives Unicorn (before any Session
    exists, so the hooks bind the wrappers)."""
    X86Cpu.run = _timed_run(X86Cpu.run)
    for cls, name in ((X86Cpu, "_on_intr"), (X86Cpu, "_on_invalid"), (CpuidPolicy, "_on_cpuid"),
                      (InputPollWatch, "_on_read"), (X64Cpu, "_on_syscall"),
                      (Hypervisor64, "_on_cpuid")):
        setattr(cls, name, _timed_hook(getattr(cls, name)))


@dataclass
class Sample:
    config: str
    boot_s: float
    build_s: float
    insns: int | None
    hypercalls: int
    records: int
    unicorn_s: float
    hooks_s: float
    between_s: float
    echo_ms: float
    idle_cpu_s: float


@dataclass
class Figure:
    config: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, name: str):
        values = [getattr(s, name) for s in self.samples]
        if any(v is None for v in values):
            return None
        return statistics.median(values)


def make_disk(tmp: Path) -> Path:
    tree = tmp / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "hello.txt").write_text("hello from a PV disk\n")
    image = tmp / "disk.img"
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    subprocess.run([mke2fs, "-q", "-F", "-t", "ext2", "-b", "1024", "-d", str(tree), str(image),
                    "2048"], check=True, capture_output=True)
    return image


def one_run(grub: Path, config: str, disk: Path | None) -> Sample:
    gc.collect()
    clock = "host" if config == "host" else "icount"
    disks = (DiskSpec(str(disk), True),) if disk is not None else ()
    start = time.perf_counter()
    session = Session.open(grub, SessionOptions(memory_mib=64, clock=clock, disks=disks))
    built = time.perf_counter()
    CLOCK.reset()
    hit = session.run_until(console=PROMPT, max_insns=None if clock == "host" else MAX_INSNS,
                            timeout=120)
    boot_end = time.perf_counter()
    if not hit:
        raise RuntimeError(f"{config}: GRUB did not reach its prompt: {hit.stop}")
    run_s = boot_end - built
    sample_hooks, sample_emu = CLOCK.hooks, CLOCK.emu
    hypercalls = sum(session.trace.counts.values())
    records = session.trace.total
    insns = session.cpu.icount
    # `echo hello`: typed, then run until it is printed.
    t0 = time.perf_counter()
    session.console_send(b"echo hello\n")
    done = session.run_until(console=re.compile(r"\rhello\n"), timeout=60,
                             max_insns=None if clock == "host" else MAX_INSNS)
    echo_ms = (time.perf_counter() - t0) * 1000
    if not done:
        raise RuntimeError(f"{config}: no echo: {done.stop}")
    # Idle with input open: the run sleeps until a stop request.
    session.console_input.open()
    timer = threading.Timer(IDLE_SECONDS, session.request_stop)
    cpu0 = time.process_time()
    timer.start()
    stop = session.run()
    idle_cpu = time.process_time() - cpu0
    if stop.reason is not StopReason.interrupt:
        raise RuntimeError(f"{config}: idle run ended with {stop}")
    session.close()
    return Sample(config=config, boot_s=boot_end - start, build_s=built - start, insns=insns,
                  hypercalls=hypercalls, records=records,
                  unicorn_s=sample_emu - sample_hooks, hooks_s=sample_hooks,
                  between_s=run_s - sample_emu, echo_ms=echo_ms, idle_cpu_s=idle_cpu)


def render(figures: list[Figure]) -> str:
    rows = [("configuration", "to grub>", "build", "instructions", "hypercalls", "records",
             "Unicorn", "Py hooks", "Py between", "echo", "idle CPU/2s")]
    for f in figures:
        boot = f.median("boot_s")
        # The split is the median run's own (medians of parts taken apart need not add up).
        middle = sorted(f.samples, key=lambda s: s.boot_s)[len(f.samples) // 2]
        run = middle.unicorn_s + middle.hooks_s + middle.between_s
        parts = [middle.unicorn_s, middle.hooks_s, middle.between_s]
        insns = f.median("insns")
        rows.append((f.config, f"{boot:.2f} s", f"{f.median('build_s'):.2f} s",
                     f"{insns / 1e6:.1f} M" if insns is not None else "n/a",
                     f"{f.median('hypercalls'):.0f}", f"{f.median('records'):.0f}",
                     *(f"{p:.2f} s {100 * p / run:.0f}%" for p in parts),
                     f"{f.median('echo_ms'):.0f} ms", f"{f.median('idle_cpu_s'):.3f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per configuration (median)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    try:
        grub = grub_i386_xen()
        grub64 = grub_x86_64_xen()
    except DebianFetchError as exc:
        sys.stderr.write(f"run_grub: {exc}\n")
        return 2
    install_timers()
    with tempfile.TemporaryDirectory() as tmp:
        disk = make_disk(Path(tmp))
        configs = [("icount", grub, None), ("host", grub, None), ("icount+disk", grub, disk),
                   ("x86_64 icount", grub64, None), ("x86_64 icount+disk", grub64, disk)]
        figures = {name: Figure(name) for name, _, _ in configs}
        for run in range(args.runs):
            for name, image, disk_image in configs:
                if not args.quiet:
                    sys.stderr.write(f"run {run + 1}/{args.runs}: {name}\n")
                figures[name].samples.append(one_run(image, name, disk_image))
    result = list(figures.values())
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(),
                          "python": platform.python_version(),
                          "figures": [{"config": f.config,
                                       "median": {k: f.median(k) for k in asdict(f.samples[0])
                                                  if k != "config"},
                                       "samples": [asdict(s) for s in f.samples]}
                                      for f in result]}, indent=2))
    else:
        sys.stdout.write(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
