"""Assertions about traces, for tests of guest kernels (used by pvdbg.pytest_plugin).

    from pvdbg.testing import ANY, hc, assert_hypercalls, assert_matches_golden

    assert_hypercalls(trace, ["xen_version",
                              hc("console_io", cmd="write", count=range(1, 200)),
                              hc("sched_op", cmd="shutdown", result=0)])

A trace is a list of TraceRecords, a TraceLog, a Session or a JSONL path.  Expected
hypercalls are names, `(name, {arg: matcher})` pairs or `hc(...)` patterns; a matcher
is an exact value, `ANY`, a `range`, a compiled regex (searched in strings), an enum
member (compared by name), or a callable returning true for an acceptable value.
Failures raise AssertionError with what matched, where the search stopped and the
closest records.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .trace import TraceKind, TraceRecord
from .tracediff import diff_traces, format_record, render_diff
from .tracefile import read_trace, records_of, write_trace

REFRESH_OPTION = "--pvdbg-refresh-golden"
REFRESH_ENV = "PVDBG_REFRESH_GOLDEN"
_CLOSEST = 3
_HYPERCALL_KINDS = (TraceKind.hypercall, TraceKind.multicall_entry)


class _Any:
    def __repr__(self) -> str:
        return "ANY"

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


ANY = _Any()
_UNSET = object()


def describe_matcher(m: Any) -> str:
    if m is ANY:
        return "ANY"
    if isinstance(m, re.Pattern):
        return f"re({m.pattern!r})"
    if isinstance(m, enum.Enum):
        return f"{type(m).__name__}.{m.name}"
    if isinstance(m, range):
        return repr(m)
    if callable(m) and not isinstance(m, type):
        return getattr(m, "__name__", repr(m))
    if isinstance(m, int) and not isinstance(m, bool) and abs(m) >= 0x10000:
        return f"{m:#x}"
    return repr(m)


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 9:
        return f"{value} ({value:#x})"
    return repr(value)


def check_value(matcher: Any, value: Any) -> str | None:
    """None when `value` satisfies `matcher`, else why not (one phrase)."""
    shown = _show(value)
    if matcher is ANY:
        return None
    if isinstance(matcher, re.Pattern):
        if isinstance(value, str) and matcher.search(value):
            return None
        return f"{shown} does not match re({matcher.pattern!r})"
    if isinstance(matcher, range):
        if isinstance(value, int) and not isinstance(value, bool) and value in matcher:
            return None
        return f"{shown} not in {matcher!r}"
    if isinstance(matcher, enum.Enum):
        if (isinstance(value, str) and value == matcher.name) or \
                (isinstance(value, int) and not isinstance(value, str) and value == matcher.value):
            return None
        return f"{shown} != {describe_matcher(matcher)}"
    if callable(matcher) and not isinstance(matcher, type):
        try:
            ok = matcher(value)
        except Exception as exc:
            return f"{describe_matcher(matcher)}({shown}) raised {type(exc).__name__}: {exc}"
        return None if ok else f"{describe_matcher(matcher)}({shown}) is false"
    if isinstance(value, bool) == isinstance(matcher, bool) and value == matcher:
        return None
    return f"{shown} != {_show(matcher)}"


@dataclasses.dataclass(frozen=True)
class HypercallPattern:
    """What one expected hypercall must look like (build it with `hc`)."""
    name: Any
    args: tuple[tuple[str, Any], ...] = ()
    fields: tuple[tuple[str, Any], ...] = ()     # result, error, symbol, detail, vcpu
    multicall: bool | None = None                # True: only multicall entries

    def mismatches(self, r: TraceRecord) -> list[str]:
        out = []
        why = check_value(self.name, r.name)
        if why is not None:
            out.append(f"name: {why}")
        if self.multicall is True and r.kind is not TraceKind.multicall_entry:
            out.append("not a multicall entry")
        if self.multicall is False and r.kind is TraceKind.multicall_entry:
            out.append("is a multicall entry")
        for key, matcher in self.args:
            if key not in r.args:
                out.append(f"{key}: no such argument (has {', '.join(r.args) or 'none'})")
                continue
            why = check_value(matcher, r.args[key])
            if why is not None:
                out.append(f"{key}: {why}")
        for key, matcher in self.fields:
            why = check_value(matcher, getattr(r, key))
            if why is not None:
                out.append(f"{key}: {why}")
        return out

    def score(self, r: TraceRecord) -> int:
        """Higher is closer: the name counts most, then each satisfied argument."""
        name_ok = check_value(self.name, r.name) is None
        args_ok = sum(1 for k, m in self.args if k in r.args and check_value(m, r.args[k]) is None)
        fields_ok = sum(1 for k, m in self.fields if check_value(m, getattr(r, k)) is None)
        return (100 if name_ok else 0) + args_ok + fields_ok

    def __str__(self) -> str:
        parts = [f"{k}={describe_matcher(v)}" for k, v in self.args]
        tail = "".join(f" {k}={describe_matcher(v)}" for k, v in self.fields)
        where = {True: " in a multicall", False: " outside multicalls", None: ""}[self.multicall]
        name = self.name if isinstance(self.name, str) else describe_matcher(self.name)
        call = f"{name}({', '.join(parts)})" if parts else name
        return f"{call}{tail}{where}"


def hc(name: Any, args: dict[str, Any] | None = None, /, *, result: Any = _UNSET,
       error: Any = _UNSET, symbol: Any = _UNSET, detail: Any = _UNSET, vcpu: Any = _UNSET,
       multicall: bool | None = None, **arg_matchers: Any) -> HypercallPattern:
    """An expected hypercall: `name` (or a matcher for it), argument matchers (a dict
    and/or keywords), and optional matchers for the result and other record fields."""
    merged = dict(args or {})
    merged.update(arg_matchers)
    fields = tuple((k, v) for k, v in (("result", result), ("error", error),
                                       ("symbol", symbol), ("detail", detail), ("vcpu", vcpu))
                   if v is not _UNSET)
    return HypercallPattern(name, tuple(merged.items()), fields, multicall)


def as_pattern(item: Any) -> HypercallPattern:
    if isinstance(item, HypercallPattern):
        return item
    if isinstance(item, str):
        return hc(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
        return hc(item[0], item[1])
    raise TypeError(f"expected hypercall must be a name, (name, {{args}}) or hc(...), "
                    f"not {item!r}")


def hypercall_records(trace: Any) -> list[TraceRecord]:
    """Hypercalls and multicall entries, in the order they started (sequence number)."""
    return sorted((r for r in records_of(trace) if r.kind in _HYPERCALL_KINDS),
                  key=lambda r: r.seq)


def assert_hypercalls(trace: Any, expected: Iterable[Any], ordered: bool = True,
                      exact: bool = False) -> list[TraceRecord]:
    """Assert the trace has the expected hypercalls: as a subsequence in that order
    (ordered=True) or each matched by a distinct hypercall in any order (ordered=False).
    exact=True: and no other hypercalls.  Returns the matching records, in the order
    of `expected`."""
    __tracebackhide__ = True
    patterns = [as_pattern(x) for x in expected]
    records = hypercall_records(trace)
    if ordered:
        found, failed_at, pos = _match_ordered(patterns, records, exact)
        if failed_at is None and not (exact and len(records) != len(patterns)):
            return found
        raise AssertionError(_ordered_failure(patterns, records, found, failed_at, pos, exact))
    assignment = _match_unordered(patterns, records)
    missing = [i for i, j in enumerate(assignment) if j is None]
    if not missing and not (exact and len(records) != len(patterns)):
        return [records[j] for j in assignment]
    raise AssertionError(_unordered_failure(patterns, records, assignment, missing, exact))


def _match_ordered(patterns, records, exact):
    found: list[TraceRecord] = []
    pos = 0
    for i, pat in enumerate(patterns):
        window = records[pos:pos + 1] if exact else records[pos:]
        hit = next((k for k, r in enumerate(window, pos) if not pat.mismatches(r)), None)
        if hit is None:
            return found, i, pos
        found.append(records[hit])
        pos = hit + 1
    return found, None, pos


def _match_unordered(patterns, records) -> list[int | None]:
    """Each pattern to a distinct record (augmenting paths, Kuhn's algorithm)."""
    fits = [[j for j, r in enumerate(records) if not p.mismatches(r)] for p in patterns]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(patterns)):
        augment(i, set())
    assignment: list[int | None] = [None] * len(patterns)
    for j, i in owner.items():
        assignment[i] = j
    return assignment


def _closest(pattern: HypercallPattern, candidates: Sequence[TraceRecord]) -> list[str]:
    ranked = sorted(enumerate(candidates), key=lambda kv: (-pattern.score(kv[1]), kv[0]))
    lines = []
    if isinstance(pattern.name, str) and all(r.name != pattern.name for r in candidates):
        lines.append(f"    (no hypercall named {pattern.name!r} among them)")
    for _k, r in ranked[:_CLOSEST]:
        lines.append(f"    {format_record(r)}")
        lines.append(f"        differs: {'; '.join(pattern.mismatches(r))}")
    return lines


def _census(records: Sequence[TraceRecord]) -> str:
    names = [r.name for r in records]
    if len(names) <= 40:
        return ", ".join(names) or "(none)"
    return ", ".join(names[:40]) + f", ... ({len(names) - 40} more)"


def _ordered_failure(patterns, records, found, failed_at, pos, exact) -> str:
    how = "exact sequence" if exact else "ordered subsequence"
    if failed_at is None:
        head = (f"assert_hypercalls ({how}): all {len(patterns)} expected hypercalls matched, "
                f"but the trace has {len(records)} hypercalls")
        lines = [head, "  unexpected after the last match:"]
        lines += [f"    {format_record(r)}" for r in records[pos:pos + 5]]
        return "\n".join(lines)
    pat = patterns[failed_at]
    after = f"after {format_record(records[pos - 1]).split(' ')[0]}" if pos else "from the start"
    lines = [f"assert_hypercalls ({how}): expected [{failed_at}] {pat} not found {after} "
             f"({len(patterns)} expected, {len(records)} hypercalls in the trace)"]
    if found:
        lines.append("  matched:")
        for i, r in enumerate(found):
            lines.append(f"    [{i}] {patterns[i]}  ->  {format_record(r)}")
    rest = records[pos:pos + 1] if exact else records[pos:]
    if rest:
        lines.append(f"  closest {'record' if exact else 'records'} for [{failed_at}]:")
        lines += _closest(pat, rest)
    else:
        lines.append("  no hypercalls left in the trace")
    if failed_at + 1 < len(patterns):
        lines.append("  not yet looked for: " + ", ".join(
            f"[{i}] {p}" for i, p in enumerate(patterns[failed_at + 1:], failed_at + 1)))
    lines.append(f"  hypercalls in the trace: {_census(records)}")
    return "\n".join(lines)


def _unordered_failure(patterns, records, assignment, missing, exact) -> str:
    if not missing:
        return (f"assert_hypercalls (unordered, exact): all {len(patterns)} expected "
                f"hypercalls matched, but the trace has {len(records)} hypercalls: "
                f"{_census(records)}")
    used = {j for j in assignment if j is not None}
    lines = [f"assert_hypercalls (unordered): {len(missing)} of {len(patterns)} expected "
             f"hypercalls not found ({len(records)} hypercalls in the trace)"]
    matched = [(i, j) for i, j in enumerate(assignment) if j is not None]
    if matched:
        lines.append("  matched:")
        for i, j in matched:
            lines.append(f"    [{i}] {patterns[i]}  ->  {format_record(records[j])}")
    free = [r for j, r in enumerate(records) if j not in used]
    for i in missing:
        lines.append(f"  missing [{i}] {patterns[i]}; closest unused records:")
        lines += _closest(patterns[i], free) if free else ["    (none left)"]
    lines.append(f"  hypercalls in the trace: {_census(records)}")
    return "\n".join(lines)


# -- golden traces ---------------------------------------------------------------------
_refresh_stack: list[bool] = []     # pushed by the pytest plugin per pytest run


def refresh_requested() -> bool:
    if _refresh_stack and _refresh_stack[-1]:
        return True
    return os.environ.get(REFRESH_ENV, "") not in ("", "0")


_NEUTRAL: dict[str, Any] = {"seq": 0, "icount": None, "vcpu": 0, "eip": 0, "name": "",
                            "args": {}, "result": None, "error": None, "symbol": None,
                            "detail": "", "parent": None}


def _neutralise(records: Sequence[TraceRecord], ignore: Sequence[str]) -> list[TraceRecord]:
    if not ignore:
        return list(records)
    unknown = [f for f in ignore if f not in _NEUTRAL]
    if unknown:
        raise ValueError(f"cannot ignore unknown trace record field {unknown[0]!r}")
    blank = {f: _NEUTRAL[f] for f in ignore}
    return [dataclasses.replace(r, **blank) for r in records]


def _caller_dir() -> Path:
    here = Path(__file__).resolve()
    for frame in inspect.stack()[1:]:
        path = Path(frame.filename).resolve()
        if path != here:
            return path.parent
    return Path.cwd()


def _rerun_hint(lead: str = "if the new trace is right, rewrite the golden file") -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    node = current.rsplit(" ", 1)[0] if current else ""
    target = node.split("::", 1)[0] if node else "<the test file>"
    return (f"{lead} with:\n"
            f"    python -m pytest {target} {REFRESH_OPTION}\n"
            f"(or set {REFRESH_ENV}=1), then review and commit the changed file")


def assert_matches_golden(trace: Any, path: str | Path, *, ignore: Sequence[str] = (),
                          refresh: bool | None = None) -> None:
    """Compare a trace with the JSONL golden file at `path` (relative paths are relative
    to the calling test file).  `ignore` names record fields left out of the comparison
    (e.g. ("icount", "eip", "symbol")).  With --pvdbg-refresh-golden (or refresh=True,
    or PVDBG_REFRESH_GOLDEN=1) the file is (re)written instead."""
    __tracebackhide__ = True
    golden = Path(path)
    if not golden.is_absolute():
        golden = _caller_dir() / golden
    records = records_of(trace)
    if refresh if refresh is not None else refresh_requested():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_trace(golden, records)
        return
    if not golden.exists():
        raise AssertionError(f"golden trace {golden} does not exist; "
                             f"{_rerun_hint('create it from this run')}")
    expected = read_trace(golden)
    diff = diff_traces(_neutralise(expected, ignore), _neutralise(records, ignore))
    if diff.identical:
        return
    ignored = f" (ignoring {', '.join(ignore)})" if ignore else ""
    raise AssertionError(f"trace differs from golden {golden}{ignored}:\n"
                         f"{render_diff(diff, 'golden', 'this run')}{_rerun_hint()}")


__all__ = ["ANY", "hc", "HypercallPattern", "assert_hypercalls", "assert_matches_golden",
           "check_value", "hypercall_records", "refresh_requested"]
