"""Machine memory: the emulated host-physical address space, in 4 KiB frames.

The bytes live in one anonymous mmap that Unicorn maps with ``mem_map_ptr``, so the
hypervisor reads and writes machine memory with plain slicing (no Unicorn call) and the
CPU sees the same bytes.  Writes made here bypass QEMU's code-page tracking: callers that
may overwrite code the CPU has translated must tell the CPU (``X86Cpu.invalidate_code``).
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from typing import NewType

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

Mfn = NewType("Mfn", int)   # machine frame number
Pfn = NewType("Pfn", int)   # pseudo-physical frame number (the guest's view)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class MachineMemoryError(Exception):
    """A machine address outside the emulated RAM."""


class MachineMemory:
    """`nr_frames` frames of machine RAM starting at machine address 0."""

    def __init__(self, nr_frames: int) -> None:
        if nr_frames <= 0:
            raise ValueError("machine memory needs at least one frame")
        self.nr_frames = nr_frames
        self.size = nr_frames * PAGE_SIZE
        self._map = mmap.mmap(-1, self.size)
        self.view = memoryview(self._map)
        self._anchor = (ctypes.c_char * self.size).from_buffer(self._map)
        self.host_address = ctypes.addressof(self._anchor)

    def _check(self, maddr: int, length: int) -> None:
        if maddr < 0 or length < 0 or maddr + length > self.size:
            raise MachineMemoryError(f"machine address {maddr:#x}+{length:#x} outside RAM")

    def frame_valid(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames

    def read(self, maddr: int, length: int) -> bytes:
        self._check(maddr, length)
        return bytes(self.view[maddr:maddr + length])

    def write(self, maddr: int, data: bytes) -> None:
        self._check(maddr, len(data))
        self.view[maddr:maddr + len(data)] = data

    def read_u32(self, maddr: int) -> int:
        self._check(maddr, 4)
        return _U32.unpack_from(self._map, maddr)[0]

    def write_u32(self, maddr: int, value: int) -> None:
        self._check(maddr, 4)
        _U32.pack_into(self._map, maddr, value & 0xFFFFFFFF)

    def read_u64(self, maddr: int) -> int:
        self._check(maddr, 8)
        return _U64.unpack_from(self._map, maddr)[0]

    def write_u64(self, maddr: int, value: int) -> None:
        self._check(maddr, 8)
        _U64.pack_into(self._map, maddr, value & 0xFFFFFFFFFFFFFFFF)

    def zero_frame(self, mfn: int) -> None:
        self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT] = bytes(PAGE_SIZE)

    def frame(self, mfn: int) -> memoryview:
        """A writable view of one frame."""
        self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        return self.view[mfn << PAGE_SHIFT:(mfn + 1) << PAGE_SHIFT]

    def snapshot(self) -> bytes:
        return bytes(self.view)

    def restore(self, data: bytes) -> None:
        if len(data) != self.size:
            raise MachineMemoryError("snapshot size does not match machine memory")
        self.view[:] = data
