"""Trace records -> Chrome trace-event JSON, for Perfetto (ui.perfetto.dev) and
chrome://tracing.  Format: "Trace Event Format" (Google), JSON object form.

One process (the domain), one thread track per vcpu.  Hypercalls, multicall entries,
traps, emulations and upcalls are complete ("X") slices; console output, page-type
changes, shutdown and crash are instant ("i") events.  Time is guest instructions
(`icount`) when every record has one, else the record sequence number: one tick is one
instruction (or one record) and is shown as `ns_per_tick` nanoseconds, 1 µs by default.
Records that happen within one tick (a multicall and its entries, the console output of
a console_io) share the tick: a parent's slice is split among its children, so
multicall entries nest inside their multicall, and records at the same tick on the same
vcpu sit side by side.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Sequence

from ..trace import TraceKind, TraceRecord

SLICE_KINDS = frozenset({TraceKind.hypercall, TraceKind.multicall_entry, TraceKind.trap,
                         TraceKind.emulation, TraceKind.upcall})
PROCESS_SCOPED = frozenset({TraceKind.shutdown, TraceKind.crash})
PID = 1
MIN_LEAF_NS = 10        # the narrowest interval a record may get before the scale grows
_NAME_LIMIT = 80


def _children_index(records: Sequence[TraceRecord]):
    by_seq = {r.seq: r for r in records}
    children: dict[int, list[TraceRecord]] = defaultdict(list)
    roots: list[TraceRecord] = []
    for r in records:
        if r.parent is not None and r.parent in by_seq and r.parent != r.seq:
            children[r.parent].append(r)
        else:
            roots.append(r)
    return roots, children


def _layout(records: Sequence[TraceRecord], tick_of, ns_per_tick: int):
    """[(record, start_ns, width_ns)] with children subdividing their parent."""
    roots, children = _children_index(records)
    groups: dict[tuple[int, int], list[TraceRecord]] = defaultdict(list)
    for r in roots:
        groups[(r.vcpu, tick_of(r))].append(r)
    placed: list[tuple[TraceRecord, int, int]] = []
    visiting: set[int] = set()

    def place(siblings: list[TraceRecord], start: int, width: int) -> None:
        n = len(siblings)
        for k, r in enumerate(sorted(siblings, key=lambda x: x.seq)):
            s = start + k * width // n
            w = start + (k + 1) * width // n - s
            placed.append((r, s, w))
            kids = children.get(r.seq)
            if kids and r.seq not in visiting:
                visiting.add(r.seq)
                inner = _slice_width(w)
                place(kids, s, inner)
                visiting.discard(r.seq)

    for (vcpu, tick), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        place(members, tick * ns_per_tick, ns_per_tick)
    return placed


def _slice_width(width_ns: int) -> int:
    """A slice leaves a tenth of its interval free, so neighbours never touch."""
    return max(1, width_ns - max(1, width_ns // 10)) if width_ns > 1 else width_ns


def _event_name(r: TraceRecord) -> str:
    if r.kind is TraceKind.console:
        text = r.detail.strip() or "console"
        return text[:_NAME_LIMIT]
    return r.name or str(r.kind)


def _event_args(r: TraceRecord) -> dict[str, Any]:
    args: dict[str, Any] = {"seq": r.seq, "eip": f"{r.eip:#010x}"}
    if r.icount is not None:
        args["icount"] = r.icount
    if r.args:
        args["args"] = {k: (f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool)
                            and abs(v) > 9 else v) for k, v in r.args.items()}
    for name in ("result", "error", "symbol", "detail", "parent"):
        value = getattr(r, name)
        if value not in (None, ""):
            args[name] = value
    return args


def export_trace_events(records: Sequence[TraceRecord], title: str = "pvdbg guest") -> dict:
    """The trace-event JSON object for `records` (see the module docstring)."""
    by_icount = bool(records) and all(r.icount is not None for r in records)
    clock = "icount" if by_icount else "seq"

    def tick_of(r: TraceRecord) -> int:
        return r.icount if by_icount else r.seq

    ns_per_tick = 1000
    while True:
        placed = _layout(records, tick_of, ns_per_tick)
        narrowest = min((w for _r, _s, w in placed), default=ns_per_tick)
        if narrowest >= MIN_LEAF_NS or ns_per_tick >= 10 ** 12:
            break
        ns_per_tick *= 10
    unit = "instruction" if by_icount else "trace record"
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": PID, "tid": 0,
         "args": {"name": f"{title} (1 tick = 1 {unit} = {ns_per_tick} ns)"}},
    ]
    for vcpu in sorted({r.vcpu for r in records}):
        events.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": vcpu,
                       "args": {"name": f"vcpu{vcpu}"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": vcpu,
                       "args": {"sort_index": vcpu}})
    timed: list[dict[str, Any]] = []
    for r, start_ns, width_ns in placed:
        ev: dict[str, Any] = {"name": _event_name(r), "cat": str(r.kind), "pid": PID,
                              "tid": r.vcpu, "ts": start_ns / 1000, "args": _event_args(r)}
        if r.kind in SLICE_KINDS:
            ev["ph"] = "X"
            ev["dur"] = _slice_width(width_ns) / 1000
        else:
            ev["ph"] = "i"
            ev["s"] = "p" if r.kind in PROCESS_SCOPED else "t"
        timed.append(ev)
    timed.sort(key=lambda e: (e["ts"], -e.get("dur", 0), e["args"]["seq"]))
    return {"traceEvents": events + timed, "displayTimeUnit": "ns",
            "otherData": {"generator": "pvdbg", "clock": clock, "ns_per_tick": ns_per_tick,
                          "records": len(records)}}


def export_json(records: Sequence[TraceRecord], title: str = "pvdbg guest") -> str:
    return json.dumps(export_trace_events(records, title), sort_keys=True,
                      separators=(",", ":")) + "\n"
