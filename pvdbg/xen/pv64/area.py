"""Xen's private area for a 64-bit PV domain, in Xen's per-domain L4 slot (260).

A 64-bit PV guest runs kernel and user at CPL 3, so every page here is supervisor-only and
the guest genuinely cannot touch it.  The CPU needs, per vcpu, a GDT window (guest GDT
frames 0..13 or the zero page, Xen's reserved GDT page with the flat 64-bit selectors,
the zero page), plus a trampoline page whose ``iretq`` takes vcpu0 from CPL 0 to the
kernel entry once at boot, and a stack page for that frame.  No IDT or TSS: every
exception reaches the hypervisor through Unicorn's hook.

Layout (guest virtual, PERDOMAIN_VIRT_START + ...):
  vcpu * 0x10000         GDT window, 16 pages
  0x100000               trampoline (iretq at 0)
  0x101000               Xen's stack
ABI: xen/arch/x86/include/asm/config.h (PERDOMAIN slot), xen/include/public/arch-x86/
xen-x86_64.h (the FLAT_RING3_* selectors).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ...machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from ..constants import FIRST_RESERVED_GDT_BYTE
from ..entry import segment_descriptor
from .layout import (FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32, HYPERVISOR_CS64,
                     HYPERVISOR_DS, PERDOMAIN_VIRT_START, PTE_A, PTE_D, PTE_P, PTE_RW)

GDT_WINDOW_PAGES = 16
GDT_LIMIT = 0xEFFF
TRAMPOLINE_VA = PERDOMAIN_VIRT_START + 0x100000
HV_STACK_VA = PERDOMAIN_VIRT_START + 0x101000
TRAMP_IRETQ = 0

RESERVED_DESCRIPTORS64: dict[int, tuple[str, int]] = {
    HYPERVISOR_CS64: ("Xen 64-bit code", segment_descriptor(0, 0xFFFFF, 0x9B, 0xA)),
    HYPERVISOR_DS: ("Xen data", segment_descriptor(0, 0xFFFFF, 0x93)),
    FLAT_RING3_CS32 & ~7: ("FLAT_RING3_CS32", segment_descriptor(0, 0xFFFFF, 0xFB)),
    FLAT_RING3_DS32 & ~7: ("FLAT_RING3_DS32/SS", segment_descriptor(0, 0xFFFFF, 0xF3)),
    FLAT_RING3_CS64 & ~7: ("FLAT_RING3_CS64", segment_descriptor(0, 0xFFFFF, 0xFB, 0xA)),
}
# Entries a table for this area needs: L4 slot 260 -> L3[0] -> L2[0] -> one L1.
AREA_TABLE_FLAGS = PTE_P | PTE_RW | PTE_A | PTE_D


def gdt_window_va(vcpu_id: int) -> int:
    return PERDOMAIN_VIRT_START + vcpu_id * GDT_WINDOW_PAGES * PAGE_SIZE


@dataclass
class PrivateArea64:
    """Frames backing the area (all Xen's); `l3_mfn` goes in L4 slot 260 of every L4."""
    memory: MachineMemory
    l3_mfn: int
    l2_mfn: int
    l1_mfn: int
    zero_mfn: int
    trampoline_mfn: int
    stack_mfn: int
    reserved_gdt_mfns: list[int]

    def install(self) -> None:
        mem = self.memory
        for mfn in (self.l3_mfn, self.l2_mfn, self.l1_mfn, self.zero_mfn, self.trampoline_mfn,
                    self.stack_mfn, *self.reserved_gdt_mfns):
            mem.zero_frame(mfn)
        mem.write_u64(self.l3_mfn << PAGE_SHIFT, (self.l2_mfn << PAGE_SHIFT) | AREA_TABLE_FLAGS)
        mem.write_u64(self.l2_mfn << PAGE_SHIFT, (self.l1_mfn << PAGE_SHIFT) | AREA_TABLE_FLAGS)
        tramp = bytearray(b"\xcc" * PAGE_SIZE)
        tramp[TRAMP_IRETQ:TRAMP_IRETQ + 2] = b"\x48\xcf"
        mem.write(self.trampoline_mfn << PAGE_SHIFT, bytes(tramp))
        for vcpu_id, gdt_mfn in enumerate(self.reserved_gdt_mfns):
            base = gdt_mfn << PAGE_SHIFT
            for sel, (_name, desc) in RESERVED_DESCRIPTORS64.items():
                mem.write_u64(base + (sel - FIRST_RESERVED_GDT_BYTE), desc)
            for page in range(GDT_WINDOW_PAGES):
                mfn = gdt_mfn if page == 14 else self.zero_mfn
                self.map_private(gdt_window_va(vcpu_id) + page * PAGE_SIZE, mfn, PTE_P | PTE_A)
        self.map_private(TRAMPOLINE_VA, self.trampoline_mfn, PTE_P | PTE_A)
        self.map_private(HV_STACK_VA, self.stack_mfn, PTE_P | PTE_RW | PTE_A | PTE_D)

    def map_private(self, va: int, mfn: int, flags: int) -> None:
        index = (va - PERDOMAIN_VIRT_START) >> PAGE_SHIFT
        if not 0 <= index < 512:
            raise ValueError(f"{va:#x} is outside Xen's private area")
        self.memory.write_u64((self.l1_mfn << PAGE_SHIFT) + index * 8, (mfn << PAGE_SHIFT) | flags)

    def set_gdt_frame(self, vcpu_id: int, page: int, mfn: int | None) -> None:
        """Map guest GDT frame `page` (0..13) of `vcpu_id` read-only, or the zero page."""
        self.map_private(gdt_window_va(vcpu_id) + page * PAGE_SIZE,
                         self.zero_mfn if mfn is None else mfn, PTE_P | PTE_A)

    def write_stack_frame(self, words: list[int]) -> int:
        """Put 64-bit `words` near the top of Xen's stack; return the VA of the first."""
        data = struct.pack(f"<{len(words)}Q", *(w & 0xFFFF_FFFF_FFFF_FFFF for w in words))
        offset = PAGE_SIZE - 64 - len(data)
        self.memory.write((self.stack_mfn << PAGE_SHIFT) + offset, data)
        return HV_STACK_VA + offset

    @property
    def l4_entry(self) -> int:
        return (self.l3_mfn << PAGE_SHIFT) | AREA_TABLE_FLAGS
