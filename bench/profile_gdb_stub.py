"""Where pvdbg's GDB stub spends its time, without sockets, gdb or other debuggers.

    python bench/profile_gdb_stub.py                 # per-packet cost table, both clocks
    python bench/profile_gdb_stub.py --profile s g   # plus cProfile's top functions
    python bench/profile_gdb_stub.py --ceiling       # the icount clock's speed limit

Packets go through the real connection loop (`stub/server.py` _ClientLoop: framing,
acks, handlers, the engine), fed from memory and answered into a list, so each figure
is pvdbg's own cost per packet; what a socket round trip adds on top is the kernel's
and the client's (bench/run_gdb.py measures those end to end). `bp` and `wp` are the
packets gdb 13 sends for one breakpoint or watchpoint hit (seen with `set debug remote
1`). `--ceiling` runs the loop in a bare Unicorn with and without `count=` next to
pvdbg's free run: the icount clock cannot beat Unicorn's own instruction counting.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

import run_gdb  # noqa: E402  (bench/run_gdb.py: guest build, loop layout)

PACKETS_PER_SAMPLE = 2000
SAMPLES = 5
CEILING_ITERATIONS = 10_000_000


class InProcessLoop:
    """A stub connection loop on a Session, fed packets from memory."""

    def __init__(self, guest: run_gdb.GuestBuild, clock: str) -> None:
        from pvdbg.session import Session, SessionOptions
        from pvdbg.stub.engine import SessionTarget
        from pvdbg.stub.server import _ClientLoop
        self.session = Session.open(guest.elf, SessionOptions(clock=clock))
        self.out: list[bytes] = []
        self.loop = _ClientLoop(SessionTarget(self.session), lambda: b"", self.out.append,
                                lambda: None, max_packet_size=0x20000, log=sys.stderr,
                                peer="profile")
        self.guest = guest

    def send(self, payload: bytes) -> bytes:
        """One packet in, its (framed) answer out. A continue, which the loop would hand
        to its worker thread, runs in this thread instead."""
        from pvdbg.stub.rsp import frame
        if payload in (b"c", b"vCont;c"):
            replies = self.loop._stub.handle_synchronously(payload).payloads
            return b"".join(frame(reply) for reply in replies)
        self.loop._conn.receive_data(frame(payload))
        self.out.clear()
        self.loop._drain()
        return b"".join(self.out)

    def boot_to_loop(self) -> None:
        """Stop at bench_done, with the loop set to run (nearly) forever."""
        guest = self.guest
        done, data = guest.sym("bench_done"), guest.sym("bench_data")
        for payload in (b"QStartNoAckMode", b"Z0,%x,1" % done, b"c", b"z0,%x,1" % done,
                        b"M%x,4:%s" % (data + run_gdb.ITERATIONS_OFFSET,
                                       run_gdb.HUGE_ITERATIONS.to_bytes(4, "little").hex().encode()),
                        b"s", b"s"):
            self.send(payload)


def packet_sets(guest: run_gdb.GuestBuild) -> dict[str, list[bytes]]:
    data, bp = guest.sym("bench_data"), guest.sym("bench_loop_bp")
    threads = b"qXfer:threads:read::0,1000"
    return {
        "s": [b"s"],
        "vCont;s:1;c": [b"vCont;s:1;c"],
        "g": [b"g"],
        "m 4 B": [b"m%x,4" % data],
        "m 2 KiB": [b"m%x,800" % guest.sym("bench_buffer")],
        "qXfer threads": [threads],
        "Z0 + z0": [b"Z0,%x,1" % bp, b"z0,%x,1" % bp],
        "bp hit (6 packets)": [b"vCont;c", threads, b"z0,%x,1" % bp, b"m%x,1" % bp,
                               b"vCont;s:1", b"Z0,%x,1" % bp],
        "wp hit (7 packets)": [b"vCont;c", b"m%x,4" % data, threads, b"z2,%x,4" % data,
                               b"m%x,1" % bp, b"m%x,4" % data, b"Z2,%x,4" % data],
    }


def hit_setup(loop: InProcessLoop, name: str) -> tuple[bytes, bytes] | None:
    """For the hit sets: (insert, remove) packets of their breakpoint or watchpoint, which
    is inserted and hit once here."""
    data, bp = loop.guest.sym("bench_data"), loop.guest.sym("bench_loop_bp")
    setup = {"bp hit (6 packets)": (b"Z0,%x,1" % bp, b"z0,%x,1" % bp),
             "wp hit (7 packets)": (b"Z2,%x,4" % data, b"z2,%x,4" % data)}.get(name)
    if setup:
        loop.send(setup[0])
        loop.send(b"vCont;c")
    return setup


def measure(loop: InProcessLoop, name: str, payloads: list[bytes]) -> float:
    """Median microseconds per packet set over SAMPLES samples."""
    setup = hit_setup(loop, name)
    samples = []
    for _ in range(SAMPLES):
        gc.collect()
        start = time.perf_counter()
        for _ in range(PACKETS_PER_SAMPLE // len(payloads)):
            for payload in payloads:
                loop.send(payload)
        samples.append((time.perf_counter() - start) / (PACKETS_PER_SAMPLE // len(payloads)))
    if setup:
        loop.send(setup[1])
    return statistics.median(samples) * 1e6


def profile(loop: InProcessLoop, name: str, payloads: list[bytes],
            out: io.TextIOBase) -> None:
    setup = hit_setup(loop, name)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(PACKETS_PER_SAMPLE // len(payloads)):
        for payload in payloads:
            loop.send(payload)
    profiler.disable()
    if setup:
        loop.send(setup[1])
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    print(text.getvalue().rstrip(), file=out)


def ceiling(guest: run_gdb.GuestBuild) -> None:
    """Bare Unicorn with and without count=, and pvdbg's icount free run, interleaved."""
    from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_MODE_32, Uc
    from unicorn import x86_const as X
    from pvdbg.session import Session, SessionOptions
    data, outer, done = guest.sym("bench_data"), guest.sym("bench_outer"), guest.sym("bench_done")
    instructions = run_gdb.INSNS_OUTSIDE_LOOP + run_gdb.INSNS_PER_ITERATION * CEILING_ITERATIONS
    iterations = CEILING_ITERATIONS.to_bytes(4, "little")

    def bare(counted: bool, hooks: bool = False, read_hook: bool = True) -> float:
        """`hooks`: what a pvdbg session has while gdb waits at a breakpoint: one code
        hook bounded to one address (gdb's breakpoint, off the loop) and, with
        `read_hook`, one read hook bounded to 4 bytes (the console input poll watch,
        guestinput.py, which a free run of a guest that neither polls nor makes a
        hypercall drops after QUIET_INSNS_BEFORE_UNHOOK instructions)."""
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        run_gdb._map_segments(uc, guest)
        uc.reg_write(X.UC_X86_REG_EBX, data)
        uc.mem_write(data + run_gdb.ITERATIONS_OFFSET, iterations)
        if hooks:
            unused = guest.sym("bench_buffer")
            uc.hook_add(UC_HOOK_CODE, lambda *_: None, None, begin=done + 0x100,
                        end=done + 0x100)
            if read_hook:
                uc.hook_add(UC_HOOK_MEM_READ, lambda *_: None, None, begin=unused,
                            end=unused + 3)
        start = time.perf_counter()
        uc.emu_start(outer, done, count=instructions if counted else 0)
        return instructions / (time.perf_counter() - start)

    session = Session.open(guest.elf, SessionOptions(clock="icount"))
    session.add_breakpoint(done)
    session.run()

    def pvdbg_icount() -> float:
        maddr = session.hv.guest.translate(data + run_gdb.ITERATIONS_OFFSET).maddr
        session.hv.memory.write(maddr, iterations)
        session.step(1)
        start = time.perf_counter()
        session.run()
        return instructions / (time.perf_counter() - start)

    figures: dict[str, list[float]] = {"bare Unicorn, no count": [],
                                       "bare Unicorn, count=N": [],
                                       "bare, count=N + pvdbg's 2 hooks": [],
                                       "bare, count=N + breakpoint hook": [],
                                       "pvdbg icount free run": []}
    for _ in range(3):
        figures["bare Unicorn, no count"].append(bare(False))
        figures["bare Unicorn, count=N"].append(bare(True))
        figures["bare, count=N + pvdbg's 2 hooks"].append(bare(True, hooks=True))
        figures["bare, count=N + breakpoint hook"].append(bare(True, hooks=True,
                                                               read_hook=False))
        figures["pvdbg icount free run"].append(pvdbg_icount())
    raw = statistics.median(figures["bare Unicorn, no count"])
    print(f"\nThe icount clock's ceiling ({instructions:,} instructions of the bench loop, "
          "medians of 3, interleaved):")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"  {name:32s} {value / 1e6:8.1f} M insn/s  ({value / raw:.2f}x raw)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clocks", default="icount,host")
    parser.add_argument("--profile", nargs="*", default=[], metavar="NAME",
                        help="cProfile these packet sets (names as in the table, "
                             "e.g. s g 'bp hit (6 packets)')")
    parser.add_argument("--ceiling", action="store_true",
                        help="only measure the icount clock's ceiling")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pvdbg-stubprofile-") as tmp:
        guest = run_gdb.build_guests(Path(tmp)).pv
        if args.ceiling:
            ceiling(guest)
            return 0
        clocks = [c for c in args.clocks.split(",") if c]
        loops = {clock: InProcessLoop(guest, clock) for clock in clocks}
        for loop in loops.values():
            loop.boot_to_loop()
        sets = packet_sets(guest)
        print("pvdbg stub, in-process cost (us, median of %d samples):" % SAMPLES)
        print(f"  {'packets':22s}" + "".join(f"{clock:>10s}" for clock in clocks))
        for name, payloads in sets.items():
            cells = "".join(f"{measure(loops[clock], name, payloads):10.1f}" for clock in clocks)
            print(f"  {name:22s}{cells}")
        for name in args.profile:
            if name not in sets:
                parser.error(f"no packet set {name!r}; choose from {', '.join(sets)}")
            for clock, loop in loops.items():
                print(f"\n{name} ({clock} clock), top functions by own time:")
                profile(loop, name, sets[name], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
