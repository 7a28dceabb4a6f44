"""Trace files: one `TraceRecord` per line as JSON (JSONL), written and read back.

A line is the record's `TraceRecord.to_json()` (sorted keys, no spaces), so the same
run gives a byte-identical file.  Reading checks every field's type and reports the
first bad line as `FILE:LINE: why`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Iterable

from .trace import TraceKind, TraceRecord

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "seq": (int,), "kind": (str,), "icount": (int, type(None)), "vcpu": (int,),
    "eip": (int,), "name": (str,), "args": (dict,), "result": (int, type(None)),
    "error": (str, type(None)), "symbol": (str, type(None)), "detail": (str,),
    "parent": (int, type(None)),
}
_REQUIRED = ("seq", "kind", "icount", "vcpu", "eip", "name")


class TraceFileError(Exception):
    """A trace file that cannot be read or written (one line: FILE:LINE: why)."""


def record_from_line(line: str, where: str = "<trace>") -> TraceRecord:
    """One JSONL line -> TraceRecord; raises TraceFileError naming `where`."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceFileError(f"{where}: not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise TraceFileError(f"{where}: a trace record must be a JSON object, "
                             f"not {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise TraceFileError(f"{where}: trace record lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise TraceFileError(f"{where}: unknown trace record field {unknown[0]!r}")
    for key, value in data.items():
        types = _FIELD_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise TraceFileError(f"{where}: field {key!r} must be {want}, "
                                 f"not {json.dumps(value)[:40]}")
    try:
        data["kind"] = TraceKind(data["kind"])
    except ValueError:
        raise TraceFileError(f"{where}: unknown record kind {data['kind']!r}") from None
    return TraceRecord(**data)


def read_records(stream: IO[str], name: str = "<trace>") -> list[TraceRecord]:
    """Every record of a JSONL stream (blank lines are skipped)."""
    out: list[TraceRecord] = []
    for number, line in enumerate(stream, 1):
        if line.strip():
            out.append(record_from_line(line, f"{name}:{number}"))
    return out


def read_trace(path: str | Path) -> list[TraceRecord]:
    """Read a JSONL trace file; raises TraceFileError (missing file, bad line, ...)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:
            return read_records(stream, str(path))
    except OSError as exc:
        raise TraceFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceFileError(f"{path}: not a text (UTF-8) file") from None


def write_records(records: Iterable[TraceRecord], stream: IO[str]) -> int:
    """Write records as JSONL; return how many."""
    n = 0
    for r in records:
        stream.write(r.to_json() + "\n")
        n += 1
    return n


def write_trace(path: str | Path, records: Iterable[TraceRecord]) -> int:
    """Write a JSONL trace file (replacing it); return how many records."""
    path = Path(path)
    try:
        with path.open("w", encoding="utf-8") as stream:
            return write_records(records, stream)
    except OSError as exc:
        raise TraceFileError(f"{path}: {exc.strerror or exc}") from None


def records_of(source: Any) -> list[TraceRecord]:
    """Records from a list of records, a TraceLog, a Session, or a JSONL file path."""
    if isinstance(source, (str, Path)):
        return read_trace(source)
    trace = getattr(source, "trace", None)
    if trace is not None and not isinstance(source, TraceRecord):
        source = trace
    records = list(source)
    for r in records:
        if not isinstance(r, TraceRecord):
            raise TypeError(f"expected trace records, got {type(r).__name__}")
    return records
