"""Guest-virtual memory access for the hypervisor: copy_from_guest / copy_to_guest.

Pointers a guest passes to Xen are virtual addresses walked through its current
pagetables; they must lie below the hypervisor hole (Xen: __compat_addr_ok), and a bad
pointer gives -EFAULT, never a fault in the guest.
"""
from __future__ import annotations

import struct
from typing import Callable

from ..machine.memory import PAGE_SIZE, MachineMemory
from ..machine.paging import PageWalkError, Walk, walk_pae
from .constants import HYPERVISOR_VIRT_START_PAE


class GuestFault(Exception):
    """A guest pointer cannot be accessed; the hypercall returns -EFAULT."""

    def __init__(self, guest_va: int, reason: str) -> None:
        self.guest_va = guest_va
        self.reason = reason
        super().__init__(f"guest address {guest_va:#x}: {reason}")


class GuestMemory:
    """Virtual-memory access through the pagetables `cr3()` names."""

    def __init__(self, memory: MachineMemory, cr3: Callable[[], int],
                 hole_start: int = HYPERVISOR_VIRT_START_PAE) -> None:
        self.memory = memory
        self._cr3 = cr3
        self.hole_start = hole_start
        self._tlb: dict[tuple[int, bool], int] = {}   # (guest page, write) -> machine page

    def flush(self) -> None:
        """Forget cached translations (with every TLB flush, as the MMU's TLB)."""
        self._tlb.clear()

    def translate(self, guest_va: int, *, write: bool = False) -> Walk:
        try:
            return walk_pae(self.memory, self._cr3(), guest_va, write=write)
        except PageWalkError as exc:
            raise GuestFault(guest_va, exc.reason) from None

    def _pieces(self, guest_va: int, length: int, write: bool):
        if length < 0 or guest_va < 0 or guest_va + length > self.hole_start:
            raise GuestFault(guest_va, "outside the guest's address space (hypervisor hole)")
        done = 0
        while done < length:
            va = guest_va + done
            key = (va >> 12, write)
            page = self._tlb.get(key)
            if page is None:
                walk = self.translate(va, write=write)
                if not self.memory.frame_valid(walk.maddr >> 12):
                    raise GuestFault(va, "maps a frame outside RAM")
                page = walk.maddr & ~0xFFF
                if len(self._tlb) > 4096:
                    self._tlb.clear()
                self._tlb[key] = page
            chunk = min(length - done, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            yield page | (va & 0xFFF), done, chunk
            done += chunk

    def read(self, guest_va: int, length: int) -> bytes:
        out = bytearray(length)
        for maddr, done, chunk in self._pieces(guest_va, length, False):
            out[done:done + chunk] = self.memory.view[maddr:maddr + chunk]
        return bytes(out)

    def write(self, guest_va: int, data: bytes) -> None:
        # Validate every page before writing anything, as copy_to_guest fails whole.
        pieces = list(self._pieces(guest_va, len(data), True))
        for maddr, done, chunk in pieces:
            self.memory.view[maddr:maddr + chunk] = data[done:done + chunk]

    def read_u32(self, guest_va: int) -> int:
        page = self._tlb.get((guest_va >> 12, False))
        if page is not None and (guest_va & 0xFFF) <= 0xFFC and guest_va + 4 <= self.hole_start:
            return self.memory.read_u32(page | (guest_va & 0xFFF))
        return struct.unpack("<I", self.read(guest_va, 4))[0]

    def write_u32(self, guest_va: int, value: int) -> None:
        self.write(guest_va, struct.pack("<I", value & 0xFFFFFFFF))

    def read_cstring(self, guest_va: int, limit: int = 4096) -> bytes:
        out = bytearray()
        while len(out) < limit:
            chunk = self.read(guest_va + len(out), min(64, PAGE_SIZE - ((guest_va + len(out)) & 0xFFF)))
            nul = chunk.find(b"\0")
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
        return bytes(out[:limit])
