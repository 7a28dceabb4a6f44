"""Structured trace records: every hypercall, trap, emulation, upcall and console line.

Records are plain frozen dataclasses that serialise to one JSON object per line (JSONL).
The log keeps the newest `capacity` records in memory and can spill every record to a
JSONL file as it is made, so a long run neither exhausts memory nor loses data.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import IO, Any, Iterable, Iterator


class TraceKind(StrEnum):
    hypercall = "hypercall"
    multicall_entry = "multicall_entry"
    trap = "trap"
    emulation = "emulation"
    upcall = "upcall"
    page_type = "page_type"
    console = "console"
    shutdown = "shutdown"
    crash = "crash"


@dataclass(frozen=True, slots=True)
class TraceRecord:
    seq: int
    kind: TraceKind
    icount: int | None          # instructions retired before this event (None: uncounted)
    vcpu: int
    eip: int                    # guest EIP of the caller / faulting instruction
    name: str                   # hypercall name, trap name, ...
    args: dict[str, Any] = field(default_factory=dict)   # decoded arguments
    result: int | None = None   # hypercall return value (signed)
    error: str | None = None    # "-EINVAL" etc. when result is an errno
    symbol: str | None = None   # caller as symbol+offset
    detail: str = ""            # why, in Xen's terms
    parent: int | None = None   # seq of the enclosing multicall

    def to_json(self) -> str:
        d = asdict(self)
        d["kind"] = str(self.kind)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "TraceRecord":
        d = json.loads(line)
        d["kind"] = TraceKind(d["kind"])
        return cls(**d)


class TraceLog:
    """Bounded in-memory trace with optional JSONL spill."""

    def __init__(self, capacity: int = 1_000_000, spill: IO[str] | None = None) -> None:
        self.capacity = capacity
        self._records: deque[TraceRecord] = deque(maxlen=capacity)
        self._spill = spill
        self.total = 0
        self.recording = True       # `trace stop` pauses recording (records are dropped)
        self._next_seq = 0
        self.counts: dict[str, int] = {}

    def next_seq(self) -> int:
        """Allocate the sequence number of a record about to be made."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def append(self, record: TraceRecord) -> TraceRecord:
        if not self.recording:
            return record
        self._records.append(record)
        self.total += 1
        if record.kind is TraceKind.hypercall or record.kind is TraceKind.multicall_entry:
            self.counts[record.name] = self.counts.get(record.name, 0) + 1
        if self._spill is not None:
            self._spill.write(record.to_json() + "\n")
        return record

    def set_spill(self, spill: IO[str] | None) -> None:
        self._spill = spill

    def flush(self) -> None:
        if self._spill is not None:
            self._spill.flush()

    def __iter__(self) -> Iterator[TraceRecord]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def records(self, kind: TraceKind | None = None, name: str | None = None) -> list[TraceRecord]:
        return [r for r in self._records
                if (kind is None or r.kind is kind) and (name is None or r.name == name)]

    def last(self, n: int) -> list[TraceRecord]:
        return list(self._records)[-n:]

    def clear(self) -> None:
        self._records.clear()


def write_jsonl(records: Iterable[TraceRecord], stream: IO[str]) -> None:
    for r in records:
        stream.write(r.to_json() + "\n")


def read_jsonl(stream: IO[str]) -> list[TraceRecord]:
    return [TraceRecord.from_json(line) for line in stream if line.strip()]
