"""Xen's private area in the hypervisor hole, and real ring transitions through it.

Xen keeps a PV vcpu at ring 1 (kernel) or ring 3 (user) and moves it between them with
real far transfers.  pvdbg does the same on Unicorn, whose API cannot change the CPL:

* ring 0 -> ring 1 (boot) and ring 1 -> ring 3: an ``iret`` in the trampoline page,
  from a frame the hypervisor writes on its own stack;
* ring 3 -> ring 1: ``lcall`` through a call gate (DPL 3) to a ring-1 landing pad that
  executes ``int $0xf0``; the CPU takes SS1:ESP1 from the TSS, as for any inward call.

The area is the last 2 MiB of the address space (slot 511 of the slot-3 L2, inside the
hole that starts at HYPERVISOR_VIRT_START_PAE), mapped by one hypervisor L1 shared by
every guest L2 that Xen owns slots in (as Xen's own L2 slots 428..511 are).

Layout (guest virtual):
  GDT_WINDOW + vcpu*0x10000  16 pages: guest GDT frames 0..13 (or the zero page),
                             Xen's reserved GDT page (entries 7168..7679), zero page
  TRAMPOLINE_VA              trampolines (read-only)
  TSS_VA                     one 32-bit TSS per vcpu (read-only to the guest)
  HV_STACK_VA                the hypervisor's scratch stack (frames for iret)
  TRAMP3_VA                  the trampoline page again, user-accessible: ring 3's lcall

The last four are *transit* pages: mapped only while a ring change runs on them (from
`iret_to_outer_ring`/`switch_to_ring1` until the landing back in ring 1), so guest code
in ring 1 finds nothing there, as on Xen 4.17 where a compat guest sees nothing of Xen
up here; the user alias is mapped only for ring 3's one far call.  The GDT and LDT
windows stay mapped: the CPU reads descriptors through them whenever a segment register
is loaded, and Unicorn 2.1.4 has no segment-limit checks to keep ring 1 out of them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .constants import FIRST_RESERVED_GDT_BYTE

MAX_VCPUS = 8
AREA_VA = 0xFFE00000
GDT_WINDOW_VA = AREA_VA
GDT_WINDOW_PAGES = 16
TRAMPOLINE_VA = 0xFFF00000
TSS_VA = 0xFFF01000
HV_STACK_VA = 0xFFF02000
TRAMP3_VA = 0xFFF03000          # the trampoline page again, user-accessible (ring 3's lcall)
GDT_LIMIT = 0xEFFF              # Xen's GDTR limit for PV vcpus (xen/arch/x86/desc.c)

# Selectors in Xen's reserved GDT page.
RING0_CS = 0xE008
RING0_DS = 0xE010
TSS_SEL = 0xE040
GATE_SEL = 0xE070 | 3           # call gate to the ring-1 landing pad, usable from ring 3

# Trampoline offsets.
TRAMP_IRET = 0x00
TRAMP_TO_RING1 = (TRAMP3_VA - TRAMPOLINE_VA) + 0x40   # through the ring-3 alias
TRAMP_LANDING = 0x80
LANDING_VECTOR = 0xF0

TSS_SIZE = 0x68
TSS_ESP1 = 12
TSS_SS1 = 16

PTE_P, PTE_RW, PTE_U, PTE_A, PTE_D = 1, 2, 4, 0x20, 0x40
PTE_NX = 1 << 63


_TRANSIT = struct.Struct("<4Q")
assert (TSS_VA, HV_STACK_VA, TRAMP3_VA) == tuple(TRAMPOLINE_VA + k * PAGE_SIZE for k in (1, 2, 3))


def segment_descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> int:
    """An 8-byte code/data/system descriptor; `access` is byte 5, `flags` the G/D/L/AVL nibble."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (access & 0xFF) << 40
            | ((limit >> 16) & 0xF) << 48 | (flags & 0xF) << 52 | ((base >> 24) & 0xFF) << 56)


def call_gate_descriptor(selector: int, offset: int, dpl: int) -> int:
    """A 32-bit call gate (type 0xC), present, with `dpl`."""
    access = 0x80 | (dpl & 3) << 5 | 0xC
    return (offset & 0xFFFF) | (selector & 0xFFFF) << 16 | access << 40 | (offset >> 16) << 48


# Xen's reserved descriptors (xen/arch/x86/desc.c, public/arch-x86/xen-x86_32.h).
XEN_RESERVED_DESCRIPTORS: dict[int, tuple[str, int]] = {
    RING0_CS: ("Xen ring-0 code", segment_descriptor(0, 0xFFFFF, 0x9B)),
    RING0_DS: ("Xen ring-0 data", segment_descriptor(0, 0xFFFFF, 0x93)),
    0xE019 & ~7: ("FLAT_RING1_CS", segment_descriptor(0, 0xFFFFF, 0xBB)),
    0xE021 & ~7: ("FLAT_RING1_DS/SS", segment_descriptor(0, 0xFFFFF, 0xB3)),
    0xE02B & ~7: ("FLAT_RING3_CS", segment_descriptor(0, 0xFFFFF, 0xFB)),
    0xE033 & ~7: ("FLAT_RING3_DS/SS", segment_descriptor(0, 0xFFFFF, 0xF3)),
}


def gdt_window_va(vcpu_id: int) -> int:
    return GDT_WINDOW_VA + vcpu_id * (GDT_WINDOW_PAGES * PAGE_SIZE)


def tss_va(vcpu_id: int) -> int:
    return TSS_VA + vcpu_id * 0x80


@dataclass
class PrivateArea:
    """Hypervisor frames backing the private area; built once per machine."""
    memory: MachineMemory
    l1_mfn: int
    zero_mfn: int
    trampoline_mfn: int
    tss_mfn: int
    stack_mfn: int
    reserved_gdt_mfns: list[int]        # Xen's reserved GDT page, one per vcpu

    def install(self) -> None:
        mem = self.memory
        for mfn in (self.l1_mfn, self.zero_mfn, self.trampoline_mfn, self.tss_mfn,
                    self.stack_mfn, *self.reserved_gdt_mfns):
            mem.zero_frame(mfn)
        tramp = bytearray(b"\xcc" * PAGE_SIZE)
        tramp[TRAMP_IRET] = 0xCF
        lcall = TRAMP_TO_RING1 & (PAGE_SIZE - 1)
        tramp[lcall:lcall + 7] = b"\x9a" + struct.pack("<IH", 0, GATE_SEL)
        tramp[TRAMP_LANDING:TRAMP_LANDING + 2] = bytes([0xCD, LANDING_VECTOR])
        mem.write(self.trampoline_mfn << PAGE_SHIFT, bytes(tramp))
        for vcpu_id, gdt_mfn in enumerate(self.reserved_gdt_mfns):
            base = gdt_mfn << PAGE_SHIFT
            for sel, (_name, desc) in XEN_RESERVED_DESCRIPTORS.items():
                mem.write_u64(base + (sel - FIRST_RESERVED_GDT_BYTE), desc)
            mem.write_u64(base + (TSS_SEL - FIRST_RESERVED_GDT_BYTE),
                          segment_descriptor(tss_va(vcpu_id), TSS_SIZE - 1, 0x8B, 0))
            mem.write_u64(base + ((GATE_SEL & ~7) - FIRST_RESERVED_GDT_BYTE),
                          call_gate_descriptor(0xE019, TRAMPOLINE_VA + TRAMP_LANDING, 3))
            # The guest GDT pages of the window start as the zero page.
            for page in range(GDT_WINDOW_PAGES):
                mfn = gdt_mfn if page == 14 else self.zero_mfn
                self.map_private(gdt_window_va(vcpu_id) + page * PAGE_SIZE, mfn, PTE_P | PTE_A)
        self.transit_open()             # the boot's iret into ring 1 runs there

    def transit_open(self, ring3_lcall: bool = False) -> None:
        """Map the transit pages a ring change runs on: the trampolines, the TSS and
        Xen's stack (supervisor), and with `ring3_lcall` the trampoline's user alias from
        which ring 3 makes its far call.  Going from not present to present needs no TLB
        flush."""
        entries = self._transit_entries
        if entries is None:
            entries = self._transit_entries = (
                (self.trampoline_mfn << PAGE_SHIFT) | PTE_P | PTE_A,
                (self.tss_mfn << PAGE_SHIFT) | PTE_P | PTE_A | PTE_NX,
                (self.stack_mfn << PAGE_SHIFT) | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_NX,
                (self.trampoline_mfn << PAGE_SHIFT) | PTE_P | PTE_U | PTE_A)
        _TRANSIT.pack_into(self.memory.view, self._transit_maddr, entries[0], entries[1],
                           entries[2], entries[3] if ring3_lcall else 0)

    def transit_close(self) -> None:
        """Unmap every transit page: while the guest runs in ring 1, only the GDT and LDT
        windows of the area stay mapped (the CPU reads descriptors through them), so its
        accesses elsewhere take Xen's not-present #PF.  The caller flushes the TLB."""
        _TRANSIT.pack_into(self.memory.view, self._transit_maddr, 0, 0, 0, 0)

    _transit_entries: tuple[int, int, int, int] | None = None

    @property
    def _transit_maddr(self) -> int:
        """Machine address of the first transit entry in the private L1 (the four
        transit pages are consecutive: trampolines, TSS, Xen's stack, user alias)."""
        return (self.l1_mfn << PAGE_SHIFT) + ((TRAMPOLINE_VA - AREA_VA) >> PAGE_SHIFT) * 8

    def transit_mapped(self) -> bool:
        """True while the transit pages are mapped (between a ring change and the
        return to guest code in ring 1)."""
        index = (TRAMPOLINE_VA - AREA_VA) >> PAGE_SHIFT
        return bool(self.memory.read_u64((self.l1_mfn << PAGE_SHIFT) + index * 8) & PTE_P)

    def map_private(self, va: int, mfn: int, flags: int) -> None:
        """Map `mfn` at `va` in the private area; every page but the trampolines is data
        (NX), so a guest jumping into one takes the instruction-fetch #PF it takes on
        Xen, where nothing is mapped there."""
        index = (va - AREA_VA) >> PAGE_SHIFT
        assert 0 <= index < 512, hex(va)
        if flags & PTE_P and va not in (TRAMPOLINE_VA, TRAMP3_VA):
            flags |= PTE_NX
        self.memory.write_u64((self.l1_mfn << PAGE_SHIFT) + index * 8, (mfn << PAGE_SHIFT) | flags)

    def set_gdt_frame(self, vcpu_id: int, page: int, mfn: int | None) -> None:
        """Map guest GDT frame `page` (0..13) of `vcpu_id` read-only, or the zero page."""
        self.map_private(gdt_window_va(vcpu_id) + page * PAGE_SIZE,
                         self.zero_mfn if mfn is None else mfn, PTE_P | PTE_A)

    def set_ring1_stack(self, vcpu_id: int, ss: int, esp: int) -> None:
        """SS1:ESP1 of the vcpu's TSS: where an inward call through the gate lands."""
        base = (self.tss_mfn << PAGE_SHIFT) + (tss_va(vcpu_id) - TSS_VA)
        self.memory.write_u32(base + TSS_ESP1, esp)
        self.memory.write_u32(base + TSS_SS1, ss)

    def write_stack_frame(self, words: list[int]) -> int:
        """Put `words` at the top of the hypervisor stack; return the guest VA of the first."""
        data = struct.pack(f"<{len(words)}I", *(w & 0xFFFFFFFF for w in words))
        offset = PAGE_SIZE - 64 - len(data)
        self.memory.write((self.stack_mfn << PAGE_SHIFT) + offset, data)
        return HV_STACK_VA + offset

    @property
    def l2_entry(self) -> int:
        """The entry for slot 511 of a Xen-owned L2 (U so ring 3 can reach the trampoline)."""
        return (self.l1_mfn << PAGE_SHIFT) | PTE_P | PTE_RW | PTE_U | PTE_A | PTE_D

    @property
    def ring1_stack_top(self) -> int:
        return HV_STACK_VA + PAGE_SIZE - 256
