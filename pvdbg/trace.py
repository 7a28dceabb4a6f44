"""Structured trace records: every hypercall, trap, emulation, upcall and console line.

Records are plain frozen dataclasses that serialise to one JSON object per line (JSONL).
The log keeps the newest `capacity` records in memory and can spill every record to a
JSONL file as it is made, so a long run neither exhausts memory nor loses data.
"""
from __future__ import annotations

import json
import os
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
    xenstore = "xenstore"       # xs_wire traffic on the store ring, and pvdbg's own accesses
    blkif = "blkif"             # a block request served by a disk backend


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


class JsonlSpill:
    """A trace file that only ever holds whole lines: what `TraceLog` spills to.

    Lines are collected in memory and written with one `os.write` per batch of at most
    `buffer_bytes`, so even a process killed outright (SIGKILL) leaves a file that ends
    on a line boundary; it then lacks at most the last batch. `flush` (at every stop)
    and `close` write everything. Each `write` must be whole lines, as TraceLog's are.
    """

    def __init__(self, path: str | os.PathLike, buffer_bytes: int = 1 << 16) -> None:
        self.name = os.fspath(path)
        self._fd: int | None = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.buffer_bytes = buffer_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, lines: str) -> int:
        data = lines.encode("utf-8")
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.buffer_bytes:
            self.flush()
        return len(lines)

    def flush(self) -> None:
        """Write every collected line. The batch leaves the buffer before it is written,
        so an exception raised mid-way (a signal) can lose lines but never repeat them."""
        if self._fd is None or not self._pending:
            return
        batch = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        view = memoryview(batch)
        while view:
            view = view[os.write(self._fd, view):]

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "JsonlSpill":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_jsonl(records: Iterable[TraceRecord], stream: IO[str]) -> None:
    for r in records:
        stream.write(r.to_json() + "\n")


def read_jsonl(stream: IO[str]) -> list[TraceRecord]:
    return [TraceRecord.from_json(line) for line in stream if line.strip()]
