"""Debian's 64-bit cloud kernel on pvdbg: instructions, hypercalls and wall time to
milestone A (the `Linux version` banner on the console), then how far it gets, and the
guest's MIPS during long stretches without hypercalls next to raw Unicorn.

    python bench/run_linux.py                    # to the banner, icount clock, then on
    python bench/run_linux.py --clock host       # full speed (no instruction counts)
    python bench/run_linux.py --beyond 400       # run up to 400 M instructions past it
    python bench/run_linux.py --milestone-b      # busybox initramfs: prompt, `uname -a`

The kernel is fetched (and cached) by tests/debian_kernel.py.  "Quiet" slices are the
1 M-instruction slices with no trace record at all (no hypercall, trap or emulation):
their rate is the engine's raw guest speed.  The raw Unicorn figure runs a register
loop in a bare 64-bit Unicorn with and without an instruction budget (count=).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent / "tests"), str(BENCH_DIR.parent)]

from pvdbg.session import Session, SessionOptions, StopReason  # noqa: E402

BANNER = b"Linux version"
HVC0 = "printk: console [hvc0] enabled"
SLICE = 1_000_000


class BannerStop:
    """Console sink: stop the CPU inside the hook that prints the banner."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seen = bytearray()
        self.at_icount: int | None = None
        self.at_wall: float | None = None
        self.started = time.perf_counter()

    def __call__(self, data: bytes) -> None:
        if self.at_wall is None:
            self.seen += data
            if BANNER in self.seen:
                self.at_wall = time.perf_counter() - self.started
                self.at_icount = self.session.cpu.icount
                self.session.cpu.stop()


def raw_unicorn_mips(count: int = 20_000_000) -> tuple[float, float]:
    """(MIPS without an instruction budget, MIPS with count=) for a register loop."""
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as X
    code = bytes.fromhex("48ffc1" "48ffca" "ebf8")      # inc rcx; dec rdx; jmp back
    rates = []
    for budget in (False, True):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, code)
        start = time.perf_counter()
        if budget:
            uc.emu_start(0x1000, 0, count=count)
        else:
            uc.emu_start(0x1000, 0, timeout=300_000)     # 0.3 s
        elapsed = time.perf_counter() - start
        done = count if budget else (uc.reg_read(X.UC_X86_REG_RCX) * 3)
        rates.append(done / elapsed / 1e6)
    return rates[0], rates[1]


def milestone_b(session: Session, stopper: BannerStop) -> int:
    """From the banner on: to busybox's prompt, then `uname -a` typed on the PV console."""
    from initramfs import SHELL_PROMPT
    hv = session.hv
    while SHELL_PROMPT not in session.console_text and session.cpu.icount < 6_000_000_000:
        if session.run(max_insns=SLICE * 50).reason is not StopReason.limit:
            break
    if SHELL_PROMPT not in session.console_text:
        print("milestone B NOT reached: " + session.console_text.strip().splitlines()[-1])
        return 1
    wall = time.perf_counter() - stopper.started
    print(f"milestone B (shell prompt): {session.cpu.icount:,} instructions, "
          f"{sum(hv.trace.counts.values()):,} hypercalls (multicall entries included), "
          f"{wall:.1f} s wall")
    seen = len(session.console_text)
    session.console_send(b"uname -a\n")
    start_icount, start = session.cpu.icount, time.perf_counter()
    while "GNU/Linux" not in session.console_text[seen:]:
        if session.run(max_insns=SLICE * 20).reason is not StopReason.limit:
            break
    answer = [line for line in session.console_text[seen:].splitlines() if "Linux" in line]
    print(f"`uname -a`: {session.cpu.icount - start_icount:,} instructions, "
          f"{time.perf_counter() - start:.2f} s wall: {answer[0].strip() if answer else '-'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clock", choices=("icount", "host"), default="icount")
    parser.add_argument("--beyond", type=int, default=1800, metavar="MILLION",
                        help="instructions to run past the banner (icount clock; default "
                             "1800, past hvc0)")
    parser.add_argument("--memory", type=int, default=None, metavar="MiB")
    parser.add_argument("--milestone-b", action="store_true",
                        help="boot with the busybox initramfs (tests/initramfs.py) to the "
                             "shell prompt and time `uname -a` (icount clock)")
    args = parser.parse_args()

    from debian_kernel import fetch_debian_vmlinuz
    kernel = fetch_debian_vmlinuz().path
    initrd = None
    if args.milestone_b:
        from initramfs import build_busybox_initramfs
        initrd = str(build_busybox_initramfs().path)
    t0 = time.perf_counter()
    session = Session.open(kernel, SessionOptions(cmdline="earlyprintk=xen console=hvc0",
                                                  memory_mib=args.memory, clock=args.clock,
                                                  initrd=initrd))
    load_s = time.perf_counter() - t0
    hv = session.hv
    stopper = BannerStop(session)
    hv.console_sinks.append(stopper)
    while stopper.at_wall is None and not hv.domain.is_dying:
        if args.clock == "host":
            stop = session.run(timeout=120)
        else:
            stop = session.run(max_insns=SLICE * 50)
        if stop.reason not in (StopReason.limit, StopReason.interrupt, StopReason.timeout):
            break
    hypercalls = Counter(r.name for r in hv.trace.last(1_000_000)
                         if r.kind.name == "hypercall")
    print(f"kernel: {kernel.name} (load + build {load_s:.2f} s), clock {args.clock}")
    if stopper.at_wall is None:
        print("milestone A NOT reached: " + (hv.domain.crash.reason if hv.domain.crash else
                                             "stopped"))
        return 1
    icount = "n/a (host clock)" if stopper.at_icount is None else f"{stopper.at_icount:,}"
    print(f"milestone A (banner): {icount} instructions, {sum(hypercalls.values())} "
          f"hypercalls, {stopper.at_wall:.2f} s wall")
    print("  hypercalls: " + ", ".join(f"{n} {c}" for n, c in hypercalls.most_common()))

    if args.milestone_b:
        return milestone_b(session, stopper)
    if args.clock == "icount" and args.beyond:
        quiet: list[float] = []
        hvc0_at: tuple[int, float] | None = None
        end = session.cpu.icount + args.beyond * 1_000_000
        t1 = time.perf_counter()
        stop = None
        while session.cpu.icount < end:
            before_total = hv.trace.total
            s0 = time.perf_counter()
            start_icount = session.cpu.icount
            stop = session.run(max_insns=SLICE)
            elapsed = time.perf_counter() - s0
            ran = session.cpu.icount - start_icount
            if hv.trace.total == before_total and ran == SLICE:
                quiet.append(ran / elapsed / 1e6)
            if hvc0_at is None and HVC0 in session.console_text:
                hvc0_at = (session.cpu.icount, time.perf_counter() - stopper.started)
            if stop.reason is not StopReason.limit:
                break
        wall = time.perf_counter() - t1
        rip = session.cpu.read("rip")
        print(f"then: {session.cpu.icount:,} instructions after {wall:.1f} s more; stop "
              f"{stop.reason.name if stop else '-'} at {rip:#x}"
              + (f" ({hv.domain.crash.reason})" if hv.domain.crash else ""))
        if hvc0_at is not None:
            print(f"  '{HVC0}' (output through the PV console ring): {hvc0_at[0]:,} "
                  f"instructions, {hvc0_at[1]:.1f} s wall from boot")
        last = session.console_text.strip().splitlines()[-1:] or [""]
        print(f"  last console line: {last[0]}")
        if quiet:
            print(f"  quiet slices: {len(quiet)}, guest MIPS median {statistics.median(quiet):.1f}"
                  f" (max {max(quiet):.1f})")
    free, counted = raw_unicorn_mips()
    print(f"raw Unicorn 64-bit register loop: {free:.1f} MIPS free, {counted:.1f} MIPS "
          "with count=")
    return 0


if __name__ == "__main__":
    sys.exit(main())
