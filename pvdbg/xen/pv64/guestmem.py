"""copy_from_guest / copy_to_guest for a 64-bit PV guest: 4-level walks, and Xen's
64-bit address check (the guest's half and above Xen's slots; never Xen's own slots)."""
from __future__ import annotations

import struct

from ...machine.paging import PageWalkError, Walk
from ..guestmem import GuestFault, GuestMemory
from .layout import guest_addr_ok
from .paging import walk_4level


class GuestMemory64(GuestMemory):
    """Virtual-memory access through the 4-level pagetables `cr3()` names."""

    def __init__(self, memory, cr3) -> None:
        super().__init__(memory, cr3, hole_start=1 << 64)

    def translate(self, guest_va: int, *, write: bool = False) -> Walk:
        try:
            return walk_4level(self.memory, self._cr3(), guest_va, write=write)
        except PageWalkError as exc:
            raise GuestFault(guest_va, exc.reason) from None

    def _pieces(self, guest_va: int, length: int, write: bool):
        if length and not guest_addr_ok(guest_va, length):
            raise GuestFault(guest_va, "outside the guest's address space (Xen's slots or "
                             "non-canonical)")
        return super()._pieces(guest_va, length, write)

    def read_u32(self, guest_va: int) -> int:
        return struct.unpack("<I", self.read(guest_va, 4))[0]

    def read_u64(self, guest_va: int) -> int:
        return struct.unpack("<Q", self.read(guest_va, 8))[0]

    def write_u64(self, guest_va: int, value: int) -> None:
        self.write(guest_va, struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF))
