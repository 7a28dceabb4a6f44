"""The fuzz guest (guests/fuzz) under the harness (pvdbg.guestfuzz): seeded streams of
random hypercalls with the hypervisor's invariants checked after every hypercall.

CI runs fixed seeds for a few thousand steps; `PVDBG_SLOW=1 python -m pytest -m slow`
runs 10^6 steps.  A failure names the seed and the step and replays exactly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pvdbg.guestfuzz import InvariantWatch, build_fuzz_guest, run_campaign, run_seed
from pvdbg.session import Session, SessionOptions
from pvdbg.trace import TraceKind
from pvdbg.xen import invariants
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.mm import PTE_P, PTE_RW, PageType

ROOT = Path(__file__).resolve().parent.parent
CI_SEEDS = (1, 2, 3)
CI_STEPS_PER_SEED = 1500


@pytest.fixture(scope="module")
def fuzz_image(tmp_path_factory):
    return load_guest_image(str(build_fuzz_guest(tmp_path_factory.mktemp("fuzz"), ROOT)))


def booted(image, seed: int = 1, count: int = 50) -> Session:
    s = Session(image, SessionOptions(memory_mib=16, cmdline=f"seed={seed} count={count}",
                                      p2m_seed=0x5EED + seed))
    s.run(max_insns=20_000_000)
    return s


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_fixed_seeds_hold_every_invariant(fuzz_image, seed):
    run = run_seed(fuzz_image, seed, 0, CI_STEPS_PER_SEED, full_every=8)
    assert run.failure is None, run.failure.describe()
    assert run.stop == "done", run.stop
    assert run.steps_done == CI_STEPS_PER_SEED
    assert run.hypercalls > CI_STEPS_PER_SEED          # steps make one to a few calls
    assert run.checks >= run.hypercalls


def test_exact_checks_on_every_hypercall(fuzz_image):
    """mm_query.writable_pagetable_mappings and the full recount after every call."""
    run = run_seed(fuzz_image, 4, 0, 300, full_every=1)
    assert run.failure is None, run.failure.describe()
    assert run.stop == "done"


def test_campaign_runs_consecutive_seeds(fuzz_image):
    campaign = run_campaign(fuzz_image, 900, first_seed=10, steps_per_seed=300, full_every=16)
    assert campaign.failures == []
    assert campaign.steps >= 900
    assert [r.seed for r in campaign.runs][:3] == [10, 11, 12]


def test_a_seed_replays_exactly(fuzz_image):
    a = run_seed(fuzz_image, 5, 0, 400, check=False)
    b = run_seed(fuzz_image, 5, 0, 400, check=False)
    assert (a.hypercalls, a.traps, a.stop) == (b.hypercalls, b.traps, b.stop)
    later = run_seed(fuzz_image, 5, 200, 200, check=False)   # start index from the cmdline
    assert later.steps_done == 200 and later.stop == "done"


def test_failure_names_seed_and_step(fuzz_image):
    """A frame-table corruption at step 37 is reported at step 37 with a replay line."""
    s = Session(fuzz_image, SessionOptions(memory_mib=16, cmdline="seed=3 count=60",
                                           p2m_seed=0x5EED + 3))
    watch = InvariantWatch(s, 3)

    class Corrupt:
        done = False

        def on_trace(self, record):
            if (not self.done and record.kind is TraceKind.hypercall and watch.started
                    and watch.step_index() == 37):
                self.done = True
                s.hv.mm.page(s.hv.built.l3_mfn).type_count += 1

    s.hv.listeners.extend([Corrupt(), watch])
    s.run(max_insns=50_000_000)
    failure = watch.failure
    assert failure is not None and (failure.seed, failure.index) == (3, 37)
    assert any("type count" in p for p in failure.problems)
    text = failure.describe()
    assert "seed 3 at step 37" in text and "--seed 3 --steps 38" in text
    assert "seed=3 start=0 count=38" in text


# -- the checker itself --------------------------------------------------------------------
def test_checkers_agree_on_a_clean_domain(fuzz_image):
    s = booted(fuzz_image)
    assert invariants.problems(s.hv) == []
    checker = invariants.InvariantChecker(s.hv, full_every=10**9)
    assert checker.problems() == []


def test_type_count_drift_is_found(fuzz_image):
    s = booted(fuzz_image)
    checker = invariants.InvariantChecker(s.hv, full_every=10**9)
    s.hv.mm.page(s.hv.built.l3_mfn).type_count += 1
    for found in (invariants.problems(s.hv), checker.problems()):
        assert any(f"mfn {s.hv.built.l3_mfn:#x}" in p and "type count" in p for p in found)


def test_writable_mapping_of_a_pagetable_is_found(fuzz_image):
    """A store that bypasses Xen: an RW PTE to the L3 written straight into a boot L1."""
    s = booted(fuzz_image)
    hv = s.hv
    checker = invariants.InvariantChecker(hv, full_every=10**9)
    l1 = next(m for m in hv.mm.touched_frames()
              if hv.mm.peek(m).type is PageType.l1 and hv.mm.peek(m).validated)
    hv.mm.write_entry(l1, 511, (hv.built.l3_mfn << 12) | PTE_P | PTE_RW)
    for found in (invariants.problems(hv), checker.problems()):
        assert any("writable mapping" in p for p in found), found
        assert any("reference count" in p for p in found), found


def test_a_changed_xen_slot_is_found(fuzz_image):
    s = booted(fuzz_image)
    hv = s.hv
    checker = invariants.InvariantChecker(hv, full_every=10**9)
    l2 = hv.mm.read_entry(hv.built.l3_mfn, 3) >> 12 & 0xFFFFFFFFFF
    hv.mm.write_entry(l2, 430, (hv.area.l1_mfn << 12) | PTE_P | PTE_RW)
    for found in (invariants.problems(hv), checker.problems()):
        assert any("slots 428..511 are not Xen's" in p for p in found), found


def test_an_internal_error_is_a_failure(fuzz_image):
    s = booted(fuzz_image)
    s.hv.internal_error = KeyError("boom")
    assert invariants.problems(s.hv) == ["internal hypervisor error: KeyError: 'boom'"]


def test_bench_replays_one_seed(tmp_path, fuzz_image):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_fuzz.py"), "--seed", "2",
                          "--steps", "200", "--json", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"steps": 200' in out.stdout and '"failures": []' in out.stdout


@pytest.mark.slow
def test_a_million_steps(fuzz_image):
    campaign = run_campaign(fuzz_image, 1_000_000, first_seed=1, steps_per_seed=20_000,
                            full_every=64)
    assert campaign.failures == [], campaign.failures[0].describe()
    assert campaign.steps >= 1_000_000
