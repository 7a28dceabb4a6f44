"""The pytest plugin (run with pytester) and the trace assertions behind it."""
from __future__ import annotations

import re

import pytest

# Import the engine here, before pytester runs: an in-process pytester run forgets the
# modules first imported inside it, and a re-imported hypervisor would find the hypercall
# handler modules still bound to the first import's table.
import pvdbg.session  # noqa: F401
from pvdbg.testing import (ANY, assert_hypercalls, assert_matches_golden, check_value, hc,
                           refresh_requested)
from pvdbg.trace import TraceKind, TraceRecord
from pvdbg.tracefile import read_trace, write_trace
from pvdbg.xen.constants import ConsoleIO

pytest_plugins = ["pytester"]


def rec(seq, name, kind=TraceKind.hypercall, result=0, **args) -> TraceRecord:
    return TraceRecord(seq=seq, kind=kind, icount=seq * 100, vcpu=0, eip=0xC0001000,
                       name=name, args=args, result=result, symbol="printk+0x32")


TRACE = [rec(0, "xen_version", cmd="version", arg=0, result=0x40011),
         rec(1, "console_io", cmd="write", count=57, buffer=0xC00084A0),
         rec(2, "console_io", cmd="write", count=12, buffer=0xC00084A0),
         rec(3, "multicall", nr_calls=2),
         rec(4, "mmu_update", kind=TraceKind.multicall_entry, count=1),
         rec(5, "update_va_mapping", kind=TraceKind.multicall_entry, va=0x1000),
         rec(6, "sched_op", cmd="shutdown", arg=0xC0007F48)]


# -- matchers -----------------------------------------------------------------------------
@pytest.mark.parametrize("matcher, value, ok", [
    (ANY, object(), True), (5, 5, True), (5, 6, False), ("write", "write", True),
    (range(1, 10), 9, True), (range(1, 10), 10, False), (range(1, 10), "9", False),
    (re.compile(r"^wr"), "write", True), (re.compile("x"), "write", False),
    (re.compile("1"), 1, False), (lambda v: v > 3, 4, True), (lambda v: v > 3, 2, False),
    (ConsoleIO.write, "write", True), (ConsoleIO.write, 0, True), (ConsoleIO.read, "write", False),
    (True, 1, False), (1, True, False), (None, None, True),
])
def test_check_value(matcher, value, ok):
    assert (check_value(matcher, value) is None) is ok


def test_callable_that_raises_is_a_mismatch_with_the_reason():
    why = check_value(lambda v: v.missing, 5)
    assert "raised AttributeError" in why


def test_ordered_subsequence_and_return_value():
    got = assert_hypercalls(TRACE, ["xen_version", ("console_io", {"count": 12}),
                                    hc("sched_op", cmd="shutdown", result=0)])
    assert [r.seq for r in got] == [0, 2, 6]


def test_ordered_failure_shows_matches_and_the_closest_record():
    with pytest.raises(AssertionError) as exc:
        assert_hypercalls(TRACE, ["xen_version", hc("console_io", count=range(100, 200)),
                                  "sched_op"])
    text = str(exc.value)
    assert "expected [1] console_io(count=range(100, 200)) not found after #0" in text
    assert "[0] xen_version  ->  #0 hypercall xen_version" in text
    assert "count: 57 (0x39) not in range(100, 200)" in text
    assert "not yet looked for: [2] sched_op" in text
    assert "hypercalls in the trace: xen_version, console_io" in text


def test_order_matters_when_ordered():
    with pytest.raises(AssertionError, match="no hypercalls left"):
        assert_hypercalls(TRACE, ["sched_op", "xen_version"])
    assert_hypercalls(TRACE, ["sched_op", "xen_version"], ordered=False)


def test_unordered_finds_a_matching_when_greedy_would_not():
    # the first pattern could take #1 or #2, the second only #1
    assert_hypercalls(TRACE, [hc("console_io", count=ANY), hc("console_io", count=57)],
                      ordered=False)
    with pytest.raises(AssertionError) as exc:
        assert_hypercalls(TRACE, [hc("console_io"), hc("console_io"), hc("console_io")],
                          ordered=False)
    assert "1 of 3 expected hypercalls not found" in str(exc.value)
    assert "(none left)" in str(exc.value) or "closest unused" in str(exc.value)


def test_exact_sequences():
    names = [r.name for r in sorted(TRACE, key=lambda r: r.seq)]
    assert_hypercalls(TRACE, names, exact=True)
    with pytest.raises(AssertionError, match="the trace has 7 hypercalls"):
        assert_hypercalls(TRACE, names[:-1], exact=True)
    with pytest.raises(AssertionError, match=r"expected \[1\] console_io\(count=12\)"):
        assert_hypercalls(TRACE, ["xen_version", hc("console_io", count=12)], exact=True)
    assert_hypercalls(TRACE, list(reversed(names)), ordered=False, exact=True)


def test_multicall_entries_and_record_fields():
    assert_hypercalls(TRACE, [hc("multicall"), hc("mmu_update", multicall=True)])
    with pytest.raises(AssertionError, match="not a multicall entry"):
        assert_hypercalls(TRACE, [hc("sched_op", multicall=True)])
    with pytest.raises(AssertionError, match="is a multicall entry"):
        assert_hypercalls(TRACE, [hc("mmu_update", multicall=False)])
    assert_hypercalls(TRACE, [hc(re.compile("^xen_"), result=0x40011,
                                 symbol=re.compile("printk"))])
    with pytest.raises(AssertionError, match=r"nosuch: no such argument \(has cmd, arg\)"):
        assert_hypercalls(TRACE, [hc("xen_version", nosuch=1)])
    with pytest.raises(AssertionError, match="no hypercall named 'frob'"):
        assert_hypercalls(TRACE, ["frob"])
    with pytest.raises(TypeError, match="expected hypercall must be"):
        assert_hypercalls(TRACE, [42])


def test_golden_compare_refresh_and_ignore(tmp_path):
    golden = tmp_path / "g.jsonl"
    with pytest.raises(AssertionError, match="(?s)does not exist; create it.*--pvdbg-refresh-golden"):
        assert_matches_golden(TRACE, golden)
    assert_matches_golden(TRACE, golden, refresh=True)
    assert read_trace(golden) == TRACE
    assert_matches_golden(TRACE, golden)
    moved = [TraceRecord(**{**{f: getattr(r, f) for f in r.__dataclass_fields__},
                            "icount": r.icount + 1}) for r in TRACE]
    with pytest.raises(AssertionError) as exc:
        assert_matches_golden(moved, golden)
    assert "traces differ at record 1" in str(exc.value) and "--pvdbg-refresh-golden" in str(exc.value)
    assert_matches_golden(moved, golden, ignore=("icount",))
    with pytest.raises(ValueError, match="unknown trace record field"):
        assert_matches_golden(moved, golden, ignore=("bogus",))


def test_golden_relative_paths_are_relative_to_the_caller(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = __import__("pathlib").Path(__file__).parent
    write_trace(tmp_path / "rel.jsonl", TRACE)
    with pytest.raises(AssertionError, match=re.escape(str(here / "nowhere" / "rel.jsonl"))):
        assert_matches_golden(TRACE, "nowhere/rel.jsonl")


def test_refresh_env_variable(monkeypatch):
    monkeypatch.setenv("PVDBG_REFRESH_GOLDEN", "1")
    assert refresh_requested()
    monkeypatch.setenv("PVDBG_REFRESH_GOLDEN", "0")
    assert not refresh_requested()


# -- the plugin, through pytester ---------------------------------------------------------
def test_plugin_is_registered_with_its_option(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*pvdbg*", "*--pvdbg-refresh-golden*"])
    assert result.ret == 0


def test_fixtures_boot_run_and_close(pytester):
    pytester.makepyfile("""
        from pvdbg.session import SessionOptions, StopReason
        from pvdbg.pytest_plugin import assert_hypercalls, hc
        SEEN = []

        def test_session(pvdbg_session):
            s = pvdbg_session(None, memory_mib=16, cmdline="bench=10")
            SEEN.append(s)
            assert s.cpu.icount == 0 and s.registers()["eip"] == s.symbol("startup_xen")
            assert s.run_until(symbol="start_kernel")
            other = pvdbg_session(options=SessionOptions(memory_mib=16))
            SEEN.append(other)

        def test_sessions_were_closed():
            assert len(SEEN) == 2 and all(s.closed for s in SEEN)

        def test_trace(pvdbg_trace):
            trace = pvdbg_trace(memory_mib=16, cmdline="bench=10")
            assert trace.stop.reason is StopReason.shutdown and trace.shutdown_reason == "poweroff"
            assert "bench_loop(10)" in trace.console_text
            assert len(trace.hypercalls("console_io")) == trace.console_text.count("\\n")
            assert_hypercalls(trace, ["xen_version", hc("sched_op", cmd="shutdown")])

        def test_both_kinds_of_options(pvdbg_session):
            import pytest
            with pytest.raises(TypeError, match="either"):
                pvdbg_session(options=SessionOptions(), memory_mib=16)
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_failures_read_well(pytester):
    pytester.makepyfile("""
        from pvdbg.testing import assert_hypercalls, hc

        def test_wrong_args(pvdbg_trace):
            trace = pvdbg_trace(memory_mib=16)
            assert_hypercalls(trace, ["xen_version", hc("console_io", cmd="read")])

        def test_unfinished(pvdbg_trace):
            pvdbg_trace(memory_mib=16, max_insns=100)
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*expected [[]1] console_io(cmd='read') not found after #*",
        "*closest records for [[]1]:*",
        "*differs: cmd: 'write' != 'read'*",
    ])
    result.stdout.fnmatch_lines(["*the guest did not finish: limit*"])


def test_golden_lifecycle(pytester):
    pytester.makepyfile(test_golden="""
        from pvdbg.testing import assert_matches_golden

        def test_seed_golden(pvdbg_trace):
            assert_matches_golden(pvdbg_trace(memory_mib=16), "golden/seed.jsonl")
    """)
    golden = pytester.path / "golden" / "seed.jsonl"
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden trace*seed.jsonl does not exist*",
                                 "*python -m pytest test_golden.py --pvdbg-refresh-golden*"])
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "--pvdbg-refresh-golden")
    result.assert_outcomes(passed=1)
    assert golden.exists() and len(read_trace(golden)) > 10
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    lines = golden.read_text().splitlines()
    golden.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*trace differs from golden*", "*traces differ at record 4*",
                                 "*rewrite the golden file with:*",
                                 "*python -m pytest test_golden.py --pvdbg-refresh-golden*"])
