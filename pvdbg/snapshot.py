"""Machine snapshots: machine memory, the CPU context and all of the hypervisor's state.

The hypervisor's Python state is captured generically: every attribute of the
`Hypervisor` is deep-copied except the wiring listed in `WIRING_ATTRIBUTES` (the CPU and
its Unicorn engine, machine memory, the symbol table, the trace log, front-end
listeners).  New state objects added to the hypervisor later (memory management, event
channels, timers, ...) are therefore snapshotted without changes here.

Restore puts the state back *in place*: every mutable object that existed when the
snapshot was taken (lists, dicts, sets, bytearrays, deques, plain objects) keeps its
identity and gets its old contents back, so references held outside the hypervisor
(the CPU's TLB listeners, a catchpoint's closure, a front end holding `hv.domain`) stay
valid.  Objects made after the snapshot are dropped from the hypervisor's graph.
Objects with their own copy protocol (a Unicorn context kept for an idle vcpu) are
restored as fresh copies.

The trace log is restored to its records and counters at snapshot time (records are
immutable and shared); its settings (spill file, capacity, recording on/off) stay as
they are now, and a JSONL spill file keeps what was already written.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Any

WIRING_ATTRIBUTES = frozenset({"cpu", "memory", "symbols", "trace", "listeners",
                               "console_sinks"})
_TRACE_SETTINGS = frozenset({"_spill", "capacity", "recording"})   # stay as they are now
_SCALARS = (bool, int, float, str, type(None))
_CONTAINERS = (list, dict, set, bytearray, deque)


class SnapshotError(Exception):
    """A snapshot cannot be taken or restored (one line)."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One saved machine state; restore it with `Session.restore` (any number of times)."""
    owner: int                              # id() of the hypervisor it belongs to
    icount: int | None                      # instructions retired when it was taken
    eip: int
    memory: bytes
    cpu_context: Any                        # unicorn UcContext
    cpu_scalars: dict[str, Any]             # X86Cpu's own counters
    hv_attributes: dict[str, Any]           # deep copies of the hypervisor's attributes
    hv_pairs: tuple[tuple[Any, Any], ...]   # (live object, its copy) for in-place restore
    trace_state: dict[str, Any]
    extra: dict[str, Any]                   # the session's own bits (last stop)


def _restorable_in_place(obj: Any) -> bool:
    if isinstance(obj, _CONTAINERS):
        return True
    cls = type(obj)
    return (cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and not hasattr(cls, "__deepcopy__")
            and (isinstance(getattr(obj, "__dict__", None), dict) or _slot_names(cls)))


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
    return names


def _shared_objects(hv) -> list[Any]:
    """Objects that keep their identity and are never copied."""
    shared = [hv]
    for name in WIRING_ATTRIBUTES:
        value = hv.__dict__.get(name)
        if value is not None:
            shared.append(value)
            if isinstance(value, list):
                shared.extend(value)
    cpu = hv.__dict__.get("cpu")
    if cpu is not None:
        shared.extend(vars(cpu).values())
    return shared


def _base_memo(hv) -> dict[int, Any]:
    return {id(obj): obj for obj in _shared_objects(hv)}


def capture(hv, extra: dict[str, Any] | None = None) -> Snapshot:
    """Snapshot `hv` (a Hypervisor) between runs of its CPU."""
    cpu = hv.cpu
    if cpu.in_run:
        raise SnapshotError("cannot snapshot while the CPU is running")
    memo = _base_memo(hv)
    state = {k: v for k, v in vars(hv).items() if k not in WIRING_ATTRIBUTES}
    try:
        copied = copy.deepcopy(state, memo)
    except Exception as exc:  # an attribute holding something that cannot be copied
        bad = _first_uncopyable(state, hv)
        raise SnapshotError(f"cannot snapshot Hypervisor.{bad}: {type(exc).__name__}: {exc}") \
            from None
    pairs = tuple((live, memo[id(live)]) for live in memo.get(id(memo), ())
                  if live is not state and memo.get(id(live), live) is not live)
    trace = hv.trace
    trace_state = {k: copy.copy(v) for k, v in vars(trace).items() if k not in _TRACE_SETTINGS}
    scalars = {k: v for k, v in vars(cpu).items() if isinstance(v, _SCALARS)}
    return Snapshot(owner=id(hv), icount=cpu.icount, eip=cpu.read("eip"),
                    memory=hv.memory.snapshot(), cpu_context=cpu.save_context(),
                    cpu_scalars=scalars, hv_attributes=copied, hv_pairs=pairs,
                    trace_state=trace_state, extra=dict(extra or {}))


def _first_uncopyable(state: dict[str, Any], hv) -> str:
    for name, value in state.items():
        try:
            copy.deepcopy(value, _base_memo(hv))
        except Exception:
            return name
    return "?"


def restore(hv, snap: Snapshot) -> None:
    """Put `hv`, its CPU, memory and trace log back to `snap`."""
    if snap.owner != id(hv):
        raise SnapshotError("this snapshot was taken on another machine")
    cpu = hv.cpu
    if cpu.in_run:
        raise SnapshotError("cannot restore while the CPU is running")
    memo = _base_memo(hv)
    in_place = [(live, saved) for live, saved in snap.hv_pairs if _restorable_in_place(live)]
    for live, saved in in_place:
        memo[id(saved)] = live
    for live, saved in in_place:
        _assign(live, saved, memo)
    attrs = hv.__dict__
    for name in [k for k in attrs if k not in WIRING_ATTRIBUTES and k not in snap.hv_attributes]:
        del attrs[name]
    for name, saved in snap.hv_attributes.items():
        attrs[name] = copy.deepcopy(saved, memo)
    _restore_trace(hv.trace, snap.trace_state)
    hv.memory.restore(snap.memory)
    for name, value in snap.cpu_scalars.items():
        setattr(cpu, name, value)
    cpu.restore_context(snap.cpu_context)     # also flushes the TLBs
    cpu.uc.ctl_flush_tb()                     # code bytes may differ: drop translations


def _assign(live: Any, saved: Any, memo: dict[int, Any]) -> None:
    """Give `live` the contents of `saved`, whose references map through `memo`."""
    if isinstance(live, bytearray):
        live[:] = bytes(saved)
    elif isinstance(live, list):
        live[:] = [copy.deepcopy(x, memo) for x in saved]
    elif isinstance(live, dict):
        items = [(copy.deepcopy(k, memo), copy.deepcopy(v, memo)) for k, v in saved.items()]
        live.clear()
        live.update(items)
    elif isinstance(live, set):
        items = [copy.deepcopy(x, memo) for x in saved]
        live.clear()
        live.update(items)
    elif isinstance(live, deque):
        items = [copy.deepcopy(x, memo) for x in saved]
        live.clear()
        live.extend(items)
    else:
        if isinstance(getattr(live, "__dict__", None), dict):
            values = {k: copy.deepcopy(v, memo) for k, v in vars(saved).items()}
            live.__dict__.clear()
            live.__dict__.update(values)
        for name in _slot_names(type(live)):
            if hasattr(saved, name):
                object.__setattr__(live, name, copy.deepcopy(getattr(saved, name), memo))
            elif hasattr(live, name):
                object.__delattr__(live, name)


def _restore_trace(trace, state: dict[str, Any]) -> None:
    attrs = vars(trace)
    for name, saved in state.items():
        live = attrs.get(name)
        if isinstance(live, deque) and isinstance(saved, deque):
            live.clear()
            live.extend(saved)
        elif isinstance(live, dict) and isinstance(saved, dict):
            live.clear()
            live.update(saved)
        elif isinstance(live, list) and isinstance(saved, list):
            live[:] = saved
        else:
            attrs[name] = copy.copy(saved)
