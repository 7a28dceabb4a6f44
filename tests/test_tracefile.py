"""Trace files: JSONL round trip, `pvdbg trace` / `trace diff` / `trace export`, and the
structure of the Chrome/Perfetto trace-event export."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdbg import cli
from pvdbg.session import Session, SessionOptions
from pvdbg.trace import TraceKind, TraceRecord
from pvdbg.tracediff import diff_traces, render_diff
from pvdbg.tracefile import (TraceFileError, read_records, read_trace, record_from_line,
                             write_records, write_trace)
from pvdbg.views.perfetto import SLICE_KINDS, export_json, export_trace_events


def rec(seq, kind=TraceKind.hypercall, name="console_io", icount=None, vcpu=0, parent=None,
        **kw) -> TraceRecord:
    return TraceRecord(seq=seq, kind=kind, icount=seq * 10 if icount is None else icount,
                       vcpu=vcpu, eip=0xC0001000 + seq, name=name, parent=parent, **kw)


@pytest.fixture(scope="module")
def seed_records() -> list[TraceRecord]:
    s = Session.open(None, SessionOptions(memory_mib=16, cmdline="bench=100"))
    s.run()
    return list(s.trace)


# -- JSONL ---------------------------------------------------------------------------
json_scalars = st.one_of(st.integers(-2**63, 2**64), st.text(max_size=20), st.booleans(),
                         st.none())
records = st.builds(
    TraceRecord, seq=st.integers(0, 2**40), kind=st.sampled_from(list(TraceKind)),
    icount=st.one_of(st.none(), st.integers(0, 2**62)), vcpu=st.integers(0, 127),
    eip=st.integers(0, 2**32 - 1), name=st.text(max_size=30),
    args=st.dictionaries(st.text(max_size=10), json_scalars, max_size=5),
    result=st.one_of(st.none(), st.integers(-2**31, 2**32)),
    error=st.one_of(st.none(), st.text(max_size=10)),
    symbol=st.one_of(st.none(), st.text(max_size=20)), detail=st.text(max_size=60),
    parent=st.one_of(st.none(), st.integers(0, 2**40)))


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=8))
def test_jsonl_round_trip(rs):
    out = io.StringIO()
    assert write_records(rs, out) == len(rs)
    back = read_records(io.StringIO(out.getvalue()))
    assert back == rs
    again = io.StringIO()
    write_records(back, again)
    assert again.getvalue() == out.getvalue()


def test_seed_trace_round_trips_through_a_file(tmp_path, seed_records):
    path = tmp_path / "t.jsonl"
    assert write_trace(path, seed_records) == len(seed_records)
    assert read_trace(path) == seed_records
    assert path.read_text().splitlines() == [r.to_json() for r in seed_records]


@pytest.mark.parametrize("line, why", [
    ("{", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"seq": 1}', "lacks kind, icount, vcpu, eip, name"),
    ('{"seq":1,"kind":"hypercall","icount":1,"vcpu":0,"eip":1,"name":"x","bogus":1}',
     "unknown trace record field 'bogus'"),
    ('{"seq":"1","kind":"hypercall","icount":1,"vcpu":0,"eip":1,"name":"x"}',
     "field 'seq' must be int"),
    ('{"seq":1,"kind":"hypercall","icount":true,"vcpu":0,"eip":1,"name":"x"}',
     "field 'icount' must be int or null"),
    ('{"seq":1,"kind":"nope","icount":1,"vcpu":0,"eip":1,"name":"x"}', "unknown record kind"),
])
def test_bad_lines_are_one_clear_error(line, why):
    with pytest.raises(TraceFileError) as exc:
        record_from_line(line, "f.jsonl:7")
    message = str(exc.value)
    assert message.startswith("f.jsonl:7: ") and why in message and "\n" not in message


def test_read_trace_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(rec(0).to_json() + "\n\n" + "garbage\n")
    with pytest.raises(TraceFileError, match=r"bad.jsonl:3: not JSON"):
        read_trace(path)
    with pytest.raises(TraceFileError, match="No such file"):
        read_trace(tmp_path / "missing.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceFileError, match="not a text"):
        read_trace(tmp_path / "bin.jsonl")


# -- diff ------------------------------------------------------------------------------
def test_diff_identical():
    a = [rec(i) for i in range(5)]
    d = diff_traces(a, list(a))
    assert d.identical and render_diff(d) == "traces are identical (5 records)\n"


def test_diff_first_divergence_fields_and_summary():
    a = [rec(0, name="xen_version", args={"cmd": "version"}), rec(1, args={"count": 5}),
         rec(2), rec(3, name="sched_op")]
    b = [rec(0, name="xen_version", args={"cmd": "version"}), rec(1, args={"count": 6}),
         rec(2), rec(3, name="sched_op"), rec(4, kind=TraceKind.console, detail="hi\n")]
    d = diff_traces(a, b)
    assert d.divergence.index == 1
    assert [(f.name, f.a, f.b) for f in d.divergence.fields] == [("args.count", 5, 6)]
    assert d.divergence.context == (a[0],)
    assert [(r.args, n) for r, n in d.only_a] == [({"count": 5}, 1)]
    assert [r.args.get("count") for r, _n in d.only_b] == [6, None]
    text = render_diff(d, "a.jsonl", "b.jsonl")
    assert "traces differ at record 2" in text and "args.count 5 != 6" in text
    assert "console console_io" in text and "only in B (2):" in text


def test_diff_prefix_and_icount_shift():
    a = [rec(i) for i in range(3)]
    d = diff_traces(a, a[:2])
    assert d.divergence.index == 2 and d.divergence.b is None
    assert "B (ends after 2 records)" in render_diff(d)
    shifted = [rec(i, icount=i * 10 + 1) for i in range(3)]
    d = diff_traces(a, shifted)
    assert d.divergence.index == 0 and d.only_a == () and d.only_b == ()
    assert [f.name for f in d.divergence.fields] == ["icount"]


# -- the CLI ------------------------------------------------------------------------------
def _pvdbg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvdbg.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.e2e
def test_cli_trace_is_byte_identical_across_runs(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        r = _pvdbg("trace", "-o", str(out), "--memory", "16", "--cmdline", "bench=50", "--quiet")
        assert r.returncode == 0, r.stderr
        assert "seed: powering off" in r.stdout
    assert a.read_bytes() == b.read_bytes()
    assert read_trace(a)[-1].kind is TraceKind.hypercall
    r = _pvdbg("trace", "diff", str(a), str(b))
    assert (r.returncode, r.stdout) == (0, f"traces are identical ({len(read_trace(a))} records)\n")


@pytest.mark.e2e
def test_cli_trace_bad_input_exits_2(tmp_path):
    r = _pvdbg("trace", "--memory", "16")
    assert r.returncode == 2 and "-o/--output" in r.stderr
    r = _pvdbg("trace", str(tmp_path / "nope.elf"), "-o", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = _pvdbg("trace", "-o", str(tmp_path / "no" / "x.jsonl"))
    assert r.returncode == 2 and r.stderr.startswith("pvdbg: cannot write trace file")
    assert len(r.stderr.splitlines()) == 1


def test_cli_diff_exit_codes(tmp_path, capsys, seed_records):
    a, b, bad = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "bad.jsonl"
    write_trace(a, seed_records)
    write_trace(b, seed_records[:-3])
    bad.write_text(seed_records[0].to_json() + "\n{not json\n")
    assert cli.main(["trace", "diff", str(a), str(a)]) == 0
    assert cli.main(["trace", "diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"traces differ at record {len(seed_records) - 2}" in out and "summary" in out
    assert cli.main(["trace", "diff", str(a), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"pvdbg: {bad}:2: not JSON: Expecting property name enclosed in double " \
                  f"quotes at column 2\n"
    assert cli.main(["trace", "diff", str(a), str(tmp_path / "none.jsonl")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        cli.main(["trace", "diff", str(a)])
    assert exc.value.code == 2


def test_cli_export_writes_valid_trace_events(tmp_path, seed_records):
    src, out = tmp_path / "a.jsonl", tmp_path / "a.json"
    write_trace(src, seed_records)
    assert cli.main(["trace", "export", "--perfetto", str(src), "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    check_trace_events(doc, seed_records)
    assert cli.main(["trace", "export", "--perfetto", str(tmp_path / "no.jsonl"),
                     "-o", str(out)]) == 2
    assert cli.main(["trace", "export", "--perfetto", str(src),
                     "-o", str(tmp_path / "no" / "dir.json")]) == 2


# -- the Perfetto / Chrome trace-event export ---------------------------------------------
def check_trace_events(doc: dict, records: list[TraceRecord]) -> dict[int, dict]:
    """Structural validation against the Trace Event Format; returns seq -> event."""
    assert set(doc) >= {"traceEvents", "displayTimeUnit"} and doc["displayTimeUnit"] in ("ms", "ns")
    events = doc["traceEvents"]
    assert isinstance(events, list)
    named_threads, by_seq = set(), {}
    for ev in events:
        assert ev["ph"] in ("X", "i", "M"), ev
        assert isinstance(ev["name"], str) and isinstance(ev["pid"], int)
        assert isinstance(ev["tid"], int) and isinstance(ev.get("args", {}), dict)
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name", "thread_sort_index")
            if ev["name"] == "thread_name":
                named_threads.add(ev["tid"])
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0 and isinstance(ev["cat"], str)
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] > 0
        else:
            assert ev["s"] in ("t", "p", "g")
        by_seq[ev["args"]["seq"]] = ev
    assert set(by_seq) == {r.seq for r in records}           # one event per record
    for r in records:
        ev = by_seq[r.seq]
        assert ev["ph"] == ("X" if r.kind in SLICE_KINDS else "i")
        assert ev["tid"] == r.vcpu and ev["tid"] in named_threads and ev["cat"] == str(r.kind)
        if r.args:
            assert set(ev["args"]["args"]) == set(r.args)
    # X slices on each track nest properly: never a partial overlap
    tracks = defaultdict(list)
    for ev in events:
        if ev["ph"] == "X":
            tracks[ev["tid"]].append((ev["ts"], ev["ts"] + ev["dur"]))
    for slices in tracks.values():
        stack: list[float] = []
        for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"slice {start}..{end} overlaps its parent"
            stack.append(end)
    # children inside their parent; order in time follows icount (or seq)
    seqs = {r.seq for r in records}
    for r in records:
        if r.parent in seqs and r.parent != r.seq:
            parent = by_seq[r.parent]
            child = by_seq[r.seq]
            end = child["ts"] + child.get("dur", 0)
            assert parent["ts"] <= child["ts"] and end <= parent["ts"] + parent["dur"]
    top = [r for r in records if r.parent not in seqs]
    clock = doc["otherData"]["clock"]
    key = (lambda r: r.icount) if clock == "icount" else (lambda r: r.seq)
    for x, y in zip(top, top[1:]):
        if key(x) < key(y) and x.vcpu == y.vcpu:
            assert by_seq[x.seq]["ts"] < by_seq[y.seq]["ts"]
    return by_seq


def _scenario() -> list[TraceRecord]:
    """A multicall with three entries (one writes the console), a trap, an upcall, two
    records at the same instruction, a second vcpu, and a shutdown inside sched_op."""
    H, M, C = TraceKind.hypercall, TraceKind.multicall_entry, TraceKind.console
    return [
        rec(0, H, "xen_version", icount=100, result=0x40011),
        rec(2, M, "mmu_update", icount=200, parent=1, args={"count": 1}),
        rec(3, M, "console_io", icount=200, parent=1, args={"cmd": "write"}),
        rec(4, C, "console_io", icount=200, parent=3, detail="hello\n"),
        rec(5, M, "update_va_mapping", icount=200, parent=1),
        rec(1, H, "multicall", icount=200, args={"nr_calls": 3}),
        rec(6, TraceKind.trap, "#PF", icount=300, args={"vector": 14}),
        rec(7, TraceKind.upcall, "upcall", icount=300, args={"ports": [3]}),
        rec(8, TraceKind.page_type, "pin_l3", icount=310),
        rec(9, H, "vcpu_op", icount=305, vcpu=1),
        rec(11, TraceKind.shutdown, "poweroff", icount=400, parent=10),
        rec(10, H, "sched_op", icount=400, args={"cmd": "shutdown"}),
    ]


def test_export_nests_multicall_entries_and_validates():
    rs = _scenario()
    doc = export_trace_events(rs)
    assert doc["otherData"]["clock"] == "icount"
    by_seq = check_trace_events(doc, rs)
    mc = by_seq[1]
    for child in (2, 3, 5):
        assert mc["ts"] <= by_seq[child]["ts"] < mc["ts"] + mc["dur"]
    assert by_seq[4]["ph"] == "i" and by_seq[4]["name"] == "hello"
    assert by_seq[6]["ts"] < by_seq[7]["ts"]                   # same icount, side by side
    assert by_seq[11]["s"] == "p" and by_seq[9]["tid"] == 1
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert names == {"vcpu0", "vcpu1"}
    assert json.loads(export_json(rs)) == doc


def test_export_without_icount_uses_seq():
    rs = [TraceRecord(seq=r.seq, kind=r.kind, icount=None, vcpu=r.vcpu, eip=r.eip,
                      name=r.name, args=r.args, detail=r.detail, parent=r.parent)
          for r in _scenario()]
    doc = export_trace_events(rs)
    assert doc["otherData"]["clock"] == "seq"
    check_trace_events(doc, rs)


def test_export_of_a_wide_multicall_grows_the_scale():
    rs = [rec(0, TraceKind.hypercall, "multicall", icount=50)]
    rs += [rec(i, TraceKind.multicall_entry, "mmu_update", icount=50, parent=0)
           for i in range(1, 600)]
    doc = export_trace_events(rs)
    assert doc["otherData"]["ns_per_tick"] > 1000
    check_trace_events(doc, rs)


def test_export_of_the_seed_guest(seed_records):
    doc = export_trace_events(seed_records)
    by_seq = check_trace_events(doc, seed_records)
    consoles = [r for r in seed_records if r.kind is TraceKind.console]
    assert consoles and all(by_seq[r.seq]["ph"] == "i" for r in consoles)
    assert any(by_seq[r.seq]["name"].startswith("seed: bench_loop(100)") for r in consoles)


def test_export_of_nothing():
    doc = export_trace_events([])
    assert [e["name"] for e in doc["traceEvents"]] == ["process_name"]
