"""Fuzz campaign of the emulated Xen with the fuzz guest (guests/fuzz), and its speed.

    python bench/run_fuzz.py                          # 20,000 steps from seed 1, checked
    python bench/run_fuzz.py --steps 1000000          # the long run (issue 9: 10^6 calls)
    python bench/run_fuzz.py --seed 7 --steps 1234    # replay seed 7, steps 0..1233
    python bench/run_fuzz.py --json                   # the summary as JSON

The guest makes a seeded stream of random hypercalls; after every hypercall the
hypervisor's invariants are checked (pvdbg.xen.invariants: incrementally, and from
scratch every --full-every calls).  A violation or a Python exception inside the
hypervisor stops the campaign with the seed, the step and the command that replays it,
exit status 1.  A domain that crashes or wedges is the guest's doing: the campaign records
why and goes on with the next seed.  The summary gives steps and hypercalls per second,
with the checks and (--baseline) without them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from pvdbg.guestfuzz import (Campaign, FuzzError, SeedRun, build_fuzz_guest,  # noqa: E402
                             run_campaign, run_seed)
from pvdbg.xen.image import load_guest_image  # noqa: E402


def _rates(steps: int, hypercalls: int, seconds: float) -> dict[str, float]:
    seconds = max(seconds, 1e-9)
    return {"steps": steps, "hypercalls": hypercalls, "seconds": round(seconds, 3),
            "steps_per_s": round(steps / seconds, 1),
            "hypercalls_per_s": round(hypercalls / seconds, 1)}


def _progress(quiet: bool):
    def show(run: SeedRun, campaign: Campaign) -> None:
        if quiet:
            return
        how = "ok" if run.stop == "done" else (run.stop or "failed")
        print(f"seed {run.seed}: {run.steps_done} steps, {run.hypercalls} hypercalls, "
              f"{run.checks} checks, {run.seconds:.1f} s; {how}  "
              f"[total {campaign.steps} steps]", file=sys.stderr, flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000, help="steps in all (default 20000)")
    p.add_argument("--seed", type=int, default=None,
                   help="replay one seed: steps [--start, --start+--steps) of it")
    p.add_argument("--start", type=int, default=0, help="first step of a replayed seed")
    p.add_argument("--first-seed", type=int, default=1, help="campaign: first seed")
    p.add_argument("--steps-per-seed", type=int, default=5_000,
                   help="campaign: steps per boot of the guest (default 5000)")
    p.add_argument("--full-every", type=int, default=64,
                   help="check from scratch every N hypercalls (1: always; default 64)")
    p.add_argument("--no-check", action="store_true", help="no invariant checks")
    p.add_argument("--baseline", action="store_true",
                   help="also run the same seeds without checks and report both speeds")
    p.add_argument("--clock", choices=("icount", "host"), default="icount")
    p.add_argument("--elf", type=Path, help="a prebuilt fuzz.elf (default: build it)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-seed progress")
    args = p.parse_args(argv)
    check = not args.no_check
    try:
        with tempfile.TemporaryDirectory(prefix="pvdbg-fuzz-") as tmp:
            elf = args.elf or build_fuzz_guest(Path(tmp), ROOT)
            image = load_guest_image(str(elf))
            if args.seed is not None:
                run = run_seed(image, args.seed, args.start, args.steps, check=check,
                               clock=args.clock, full_every=args.full_every)
                campaign = Campaign([run])
                _progress(args.quiet)(run, campaign)
            else:
                campaign = run_campaign(image, args.steps, first_seed=args.first_seed,
                                        steps_per_seed=args.steps_per_seed, check=check,
                                        clock=args.clock, full_every=args.full_every,
                                        progress=_progress(args.quiet))
            baseline = None
            if args.baseline and check and not campaign.failures:
                began = time.perf_counter()
                plain = Campaign([run_seed(image, r.seed, r.start, r.count, check=False,
                                           clock=args.clock) for r in campaign.runs])
                baseline = _rates(plain.steps, plain.hypercalls, time.perf_counter() - began)
    except FuzzError as exc:
        print(f"run_fuzz: {exc}", file=sys.stderr)
        return 2
    summary = {
        "checked": check, "full_every": args.full_every, "clock": args.clock,
        "seeds": len(campaign.runs),
        "ended_early": [r.stop for r in campaign.ended_early()],
        **_rates(campaign.steps, campaign.hypercalls, campaign.seconds),
        "checks": sum(r.checks for r in campaign.runs),
        "failures": [f.describe() for f in campaign.failures],
        "load_average": os.getloadavg()[0],
    }
    if baseline is not None:
        summary["unchecked"] = baseline
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"fuzz: {summary['steps']} steps, {summary['hypercalls']} hypercalls, "
              f"{summary['seeds']} seed(s), {summary['seconds']} s "
              f"(load {summary['load_average']:.1f})")
        what = (f"checked after every hypercall (from scratch every {args.full_every})"
                if check else "unchecked")
        print(f"  {what}: {summary['steps_per_s']} steps/s, "
              f"{summary['hypercalls_per_s']} hypercalls/s")
        if baseline is not None:
            print(f"  unchecked: {baseline['steps_per_s']} steps/s, "
                  f"{baseline['hypercalls_per_s']} hypercalls/s")
        for why in summary["ended_early"]:
            print(f"  domain ended early: {why}")
        for text in summary["failures"]:
            print(text)
    return 1 if campaign.failures else 0


if __name__ == "__main__":
    sys.exit(main())
