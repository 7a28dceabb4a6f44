"""Comparing two traces: the first divergence with context, and a summary.

Records are compared position by position on their full JSON form.  The summary counts
records per (kind, name) on each side, and lists the records only one side has, matched
as a multiset on what the guest asked and got (kind, name, vcpu, arguments, result,
detail), so a shifted instruction count or sequence number alone does not make a record
"only in one".
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .trace import TraceKind, TraceRecord

CONTEXT_RECORDS = 3
LIST_LIMIT = 10


@dataclass(frozen=True)
class FieldDiff:
    name: str            # "icount", "args.count", ...
    a: Any
    b: Any


@dataclass(frozen=True)
class Divergence:
    index: int                              # 0-based position in both traces
    a: TraceRecord | None                   # None: trace A ended here
    b: TraceRecord | None
    fields: tuple[FieldDiff, ...]
    context: tuple[TraceRecord, ...]        # identical records just before


@dataclass(frozen=True)
class TraceDiff:
    a_len: int
    b_len: int
    divergence: Divergence | None
    counts_a: Counter = field(default_factory=Counter)     # (kind, name) -> records
    counts_b: Counter = field(default_factory=Counter)
    only_a: tuple[tuple[TraceRecord, int], ...] = ()      # (example record, how many)
    only_b: tuple[tuple[TraceRecord, int], ...] = ()

    @property
    def identical(self) -> bool:
        return self.divergence is None


def identity_key(r: TraceRecord) -> tuple:
    """What a record says the guest did, without where or when."""
    return (str(r.kind), r.name, r.vcpu, json.dumps(r.args, sort_keys=True, default=str),
            r.result, r.error, r.detail)


def field_diffs(a: TraceRecord, b: TraceRecord) -> tuple[FieldDiff, ...]:
    da, db = asdict(a), asdict(b)
    out: list[FieldDiff] = []
    for name in da:
        if name == "args":
            args_a, args_b = da["args"], db["args"]
            for key in list(args_a) + [k for k in args_b if k not in args_a]:
                va, vb = args_a.get(key, _MISSING), args_b.get(key, _MISSING)
                if va != vb:
                    out.append(FieldDiff(f"args.{key}", va, vb))
        elif da[name] != db[name]:
            out.append(FieldDiff(name, da[name], db[name]))
    return tuple(out)


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def diff_traces(a: Sequence[TraceRecord], b: Sequence[TraceRecord],
                context: int = CONTEXT_RECORDS) -> TraceDiff:
    divergence = None
    for i in range(max(len(a), len(b))):
        ra = a[i] if i < len(a) else None
        rb = b[i] if i < len(b) else None
        if ra is not None and rb is not None and ra.to_json() == rb.to_json():
            continue
        fields = field_diffs(ra, rb) if ra is not None and rb is not None else ()
        divergence = Divergence(i, ra, rb, fields, tuple(a[max(0, i - context):i]))
        break
    counts_a = Counter((str(r.kind), r.name) for r in a)
    counts_b = Counter((str(r.kind), r.name) for r in b)
    keys_a = Counter(identity_key(r) for r in a)
    keys_b = Counter(identity_key(r) for r in b)
    return TraceDiff(len(a), len(b), divergence, counts_a, counts_b,
                     _only(a, keys_a - keys_b), _only(b, keys_b - keys_a))


def _only(records: Sequence[TraceRecord], extra: Counter) -> tuple[tuple[TraceRecord, int], ...]:
    out = []
    seen = set()
    for r in records:
        key = identity_key(r)
        if key in extra and key not in seen:
            seen.add(key)
            out.append((r, extra[key]))
    return tuple(out)


def format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value) if isinstance(value, str) else str(value)
    return f"{value:#x}" if abs(value) > 9 else str(value)


def format_record(r: TraceRecord) -> str:
    """One line: '#seq kind name(args) = result  [symbol] @icount'."""
    head = f"#{r.seq} {r.kind} {r.name}"
    if r.kind in (TraceKind.hypercall, TraceKind.multicall_entry) or r.args:
        head += "(" + ", ".join(f"{k}={format_value(v)}" for k, v in r.args.items()) + ")"
    if r.result is not None:
        head += f" = {r.error or format_value(r.result)}"
    if r.detail:
        detail = r.detail.rstrip("\n")
        head += " " + (json.dumps(detail) if r.kind is TraceKind.console else detail)
    if r.symbol:
        head += f"  [{r.symbol}]"
    head += f" @{r.icount}" if r.icount is not None else ""
    if r.parent is not None:
        head += f" (in #{r.parent})"
    return head


def render_diff(diff: TraceDiff, name_a: str = "A", name_b: str = "B") -> str:
    """Plain text for `pvdbg trace diff` and golden-trace failures."""
    if diff.identical:
        return f"traces are identical ({diff.a_len} records)\n"
    d = diff.divergence
    assert d is not None
    lines = [f"traces differ at record {d.index + 1} "
             f"(A = {name_a}: {diff.a_len} records, B = {name_b}: {diff.b_len} records)"]
    for r in d.context:
        lines.append(f"    {format_record(r)}")
    lines.append(f"  A {format_record(d.a)}" if d.a is not None else
                 f"  A (ends after {diff.a_len} records)")
    lines.append(f"  B {format_record(d.b)}" if d.b is not None else
                 f"  B (ends after {diff.b_len} records)")
    if d.fields:
        lines.append("  differs in: " + "; ".join(
            f"{f.name} {format_value(f.a)} != {format_value(f.b)}" for f in d.fields))
    lines.append("summary (records per kind/name, * where they differ):")
    rows = sorted(set(diff.counts_a) | set(diff.counts_b))
    width = max((len(f"{k} {n}") for k, n in rows), default=10)
    lines.append(f"  {'':<{width}} {'A':>7} {'B':>7}")
    for key in rows:
        ca, cb = diff.counts_a.get(key, 0), diff.counts_b.get(key, 0)
        mark = " *" if ca != cb else ""
        lines.append(f"  {key[0] + ' ' + key[1]:<{width}} {ca:>7} {cb:>7}{mark}")
    for label, only in (("A", diff.only_a), ("B", diff.only_b)):
        total = sum(n for _r, n in only)
        if not only:
            lines.append(f"only in {label}: none")
            continue
        lines.append(f"only in {label} ({total}):")
        for r, n in only[:LIST_LIMIT]:
            lines.append(f"  {n} x {format_record(r)}")
        if len(only) > LIST_LIMIT:
            lines.append(f"  ... and {len(only) - LIST_LIMIT} more distinct records")
    return "\n".join(lines) + "\n"
