"""Golden trace of the bundled seed guest's boot: every record must stay the same.

When the seed guest or the hypervisor changes on purpose, rewrite the golden file and
review the diff before committing it:

    python -m pytest tests/test_golden_seed.py --pvdbg-refresh-golden
"""
from __future__ import annotations

from pvdbg.testing import assert_matches_golden

GOLDEN = "golden/seed-boot.jsonl"


def test_seed_boot_matches_golden_trace(pvdbg_trace):
    trace = pvdbg_trace(None, memory_mib=16, cmdline="bench=100")
    assert trace.shutdown_reason is not None
    assert_matches_golden(trace, GOLDEN)
