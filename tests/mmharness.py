"""A frame table without a CPU: 64 machine frames, a booted PAE address space, and an
MmuEnv that records flushes, for the memory-management tests.

Layout: frames 0..47 are the domain's (M2P identity), 48..55 Xen's (48 is the M2P,
49 the L1 behind Xen's L2 slot 428, 50 the private-area L1 in slot 511), 56..63 free.
The booted tables: L3 = 1, its slot-3 L2 = 2, L1 = 3 in L2 slot 0 mapping VA 0xC0000000 +
i*4096 -> frame i for i < 48, frames 1..9 read-only (page-table area), the rest RW.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pvdbg.machine.memory import MachineMemory
from pvdbg.xen.guestmem import GuestFault
from pvdbg.xen.mm import (PTE_A, PTE_D, PTE_P, PTE_RW, PTE_U, MemoryManager, Owner, PageType,
                          pte_mfn)

NR_FRAMES = 64
GUEST = range(0, 48)
XEN = range(48, 56)
FREE = range(56, 64)
M2P_MFN, XEN_M2P_L1, XEN_AREA_L1 = 48, 49, 50
L3, L2, L1 = 1, 2, 3
SPARE_TABLES = range(4, 10)        # mapped read-only, free for new tables
DATA = range(10, 48)               # mapped read-write
VA_BASE = 0xC0000000
XEN_L2_ENTRIES = {428: (XEN_M2P_L1 << 12) | 0x63, 511: (XEN_AREA_L1 << 12) | 0x67}

RO = PTE_P | PTE_A
RW = PTE_P | PTE_RW | PTE_A | PTE_D
TABLE = PTE_P | PTE_RW | PTE_U | PTE_A | PTE_D


def pte(mfn: int, flags: int = RW) -> int:
    return (mfn << 12) | flags


def va_of(mfn: int) -> int:
    return VA_BASE + mfn * 4096


def make_mm(boot: bool = True, segdesc_ok: bool = True) -> MemoryManager:
    memory = MachineMemory(NR_FRAMES)
    mm = MemoryManager(memory, domain_mfns=GUEST, free_mfns=list(FREE), m2p_mfns=[M2P_MFN],
                       xen_l2_entries=XEN_L2_ENTRIES)
    for mfn in range(NR_FRAMES):
        mm.m2p_set(mfn, mfn if mfn in GUEST else 0xFFFFFFFF)
    if segdesc_ok:
        mm.segdesc_validator = lambda mfn: None
    memory.write_u64((L3 << 12) + 3 * 8, pte(L2, PTE_P))
    memory.write_u64((L2 << 12) + 0, pte(L1, TABLE))
    for mfn in GUEST:
        memory.write_u64((L1 << 12) + mfn * 8, pte(mfn, RO if mfn < 10 else RW))
    if boot:
        mm.boot(L3)
    return mm


@dataclass
class FakeEnv:
    """MmuEnv for a vcpu of the harness: records flushes, CR3 loads and LDT changes."""
    mm: MemoryManager
    vcpu_id: int = 0
    nr_vcpus: int = 1
    flushes: int = 0
    cr3_loads: list[int] = field(default_factory=list)
    ldt: tuple[int, int] = (0, 0)
    words: dict[int, int] = field(default_factory=dict)    # guest VA -> u32 for read_u32
    written: list[int] = field(default_factory=list)

    def flush_tlb(self) -> None:
        self.flushes += 1

    def load_cr3(self, mfn: int) -> None:
        self.cr3_loads.append(mfn)

    def set_ldt(self, base: int, ents: int) -> bool:
        self.ldt = (base, ents)
        return False

    def destroy_ldt(self) -> bool:
        return False

    def read_u32(self, guest_va: int) -> int:
        if guest_va not in self.words:
            raise GuestFault(guest_va, "not mapped")
        return self.words[guest_va]

    def frame_written(self, mfn: int) -> None:
        self.written.append(mfn)


def expected_type_counts(mm: MemoryManager) -> Counter:
    """Type references every frame should hold, recomputed from the validated tables,
    the pins and the CR3s (the frame table's own bookkeeping is not consulted)."""
    want: Counter = Counter()
    for mfn in mm.touched_frames():
        pi = mm.peek(mfn)
        if pi.pinned:
            want[mfn] += 1
        if not (pi.validated and pi.type_count and pi.type.is_pagetable):
            continue
        entries = mm.entries(mfn)
        if pi.type is PageType.l1:
            for e in entries:
                if e & (PTE_P | PTE_RW) == (PTE_P | PTE_RW) and mm.frame_valid(pte_mfn(e)):
                    want[pte_mfn(e)] += 1
        elif pi.type is PageType.l2:
            for i, e in enumerate(entries[:428 if pi.pae_xen_l2 else 512]):
                if e & PTE_P and pte_mfn(e) != mfn:
                    want[pte_mfn(e)] += 1
        else:
            for e in entries[:4]:
                if e & PTE_P and pte_mfn(e) != mfn:
                    want[pte_mfn(e)] += 1
    for cr3 in mm.vcpu_cr3:
        if cr3 is not None:
            want[cr3] += 1
    for mfn in mm.touched_frames():
        if mm.peek(mfn).xen_heap:
            want[mfn] += 1
    return want


def audit(mm: MemoryManager) -> list[str]:
    """Differences between the frame table's type counts and what the tables imply
    (descriptor pages are held by GDTs/LDTs outside the frame table: not checked)."""
    want = expected_type_counts(mm)
    problems = []
    for mfn in sorted(set(want) | set(mm.touched_frames())):
        if mm.peek(mfn).type is PageType.seg_desc:
            continue
        have = mm.peek(mfn).type_count
        if have != want.get(mfn, 0):
            problems.append(f"mfn {mfn:#x}: type count {have}, expected {want.get(mfn, 0)}")
        pi = mm.peek(mfn)
        if pi.owner is Owner.domain and pi.count < (1 if pi.allocated else 0):
            problems.append(f"mfn {mfn:#x}: general count {pi.count}")
    return problems
