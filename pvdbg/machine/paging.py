"""A software walker for 32-bit PAE pagetables, as the MMU walks them.

It gives the hypervisor and the debugger guest-virtual access with the same answer the
CPU would give, and on failure says which level failed and why.  ABI: Intel SDM vol. 3
section 4.4 (PAE paging); Xen keeps PAE L3s as 4 used entries of a 512-entry page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .memory import PAGE_SHIFT, PAGE_SIZE

PTE_PRESENT = 1 << 0
PTE_RW = 1 << 1
PTE_USER = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_PSE = 1 << 7
PTE_GLOBAL = 1 << 8
PTE_NX = 1 << 63
PTE_ADDR_MASK = 0x000FFFFFFFFFF000

LEVEL_NAMES = {3: "L3", 2: "L2", 1: "L1"}


class PhysicalMemory(Protocol):
    def read_u64(self, maddr: int) -> int: ...
    def frame_valid(self, mfn: int) -> bool: ...


def pte_flags_text(pte: int) -> str:
    """Short flag string, e.g. 'P RW U A D NX'."""
    names = [(PTE_PRESENT, "P"), (PTE_RW, "RW"), (PTE_USER, "U"), (PTE_PWT, "PWT"),
             (PTE_PCD, "PCD"), (PTE_ACCESSED, "A"), (PTE_DIRTY, "D"), (PTE_PSE, "PSE"),
             (PTE_GLOBAL, "G"), (PTE_NX, "NX")]
    return " ".join(n for bit, n in names if pte & bit) or "-"


@dataclass(frozen=True)
class WalkStep:
    level: int              # 3, 2 or 1
    table_mfn: int          # frame holding the table
    index: int              # entry index in that table
    entry: int              # 64-bit entry value

    @property
    def entry_maddr(self) -> int:
        return (self.table_mfn << PAGE_SHIFT) + self.index * 8

    @property
    def target_mfn(self) -> int:
        return (self.entry & PTE_ADDR_MASK) >> PAGE_SHIFT


@dataclass(frozen=True)
class Walk:
    """A successful translation of `guest_va`."""
    guest_va: int
    steps: tuple[WalkStep, ...]
    maddr: int
    writable: bool          # RW at every level
    user: bool              # U at every level
    nx: bool

    @property
    def mfn(self) -> int:
        return self.maddr >> PAGE_SHIFT

    @property
    def l1_entry_maddr(self) -> int:
        return self.steps[-1].entry_maddr


class PageWalkError(Exception):
    """Translation failed; `level` is where, `reason` says why in one line."""

    def __init__(self, guest_va: int, level: int, reason: str,
                 steps: tuple[WalkStep, ...] = ()) -> None:
        self.guest_va = guest_va
        self.level = level
        self.reason = reason
        self.steps = steps
        super().__init__(f"{guest_va:#010x}: {LEVEL_NAMES.get(level, 'CR3')}: {reason}")


# Reserved bits of PAE entries with NX enabled and MAXPHYADDR 40 (Unicorn's default).
_RSVD_HIGH = 0x7FF0000000000000 | (((1 << 52) - 1) & ~((1 << 40) - 1))
# L2/L1 entries: bits 52..62 are ignored, as by the 64-bit paging a PV guest runs under on
# Xen and by Unicorn's walker (Xen keeps _PAGE_GNTTAB, bit 62, in grant mappings).
_RSVD_HIGH_LOWER = ((1 << 52) - 1) & ~((1 << 40) - 1)


def walk_pae(mem: PhysicalMemory, cr3: int, guest_va: int, *, write: bool = False,
             user: bool = False) -> Walk:
    """Translate `guest_va` through the PAE tables at machine address `cr3`.

    `write`/`user` ask for the access rights of a write / a ring-3 access (CR0.WP on).
    """
    guest_va &= 0xFFFFFFFF
    steps: list[WalkStep] = []
    l3_maddr = cr3 & 0xFFFFFFE0
    index = guest_va >> 30
    entry = mem.read_u64(l3_maddr + index * 8)
    steps.append(WalkStep(3, l3_maddr >> PAGE_SHIFT, index + ((l3_maddr & 0xFFF) >> 3), entry))
    if not entry & PTE_PRESENT:
        raise PageWalkError(guest_va, 3, f"L3 entry {index} not present", tuple(steps))
    if entry & (_RSVD_HIGH | PTE_NX):
        raise PageWalkError(guest_va, 3, f"L3 entry {index} has reserved bits set ({entry:#x})",
                            tuple(steps))
    writable = True
    is_user = True
    nx = False
    table = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
    for level, shift in ((2, 21), (1, 12)):
        if not mem.frame_valid(table):
            raise PageWalkError(guest_va, level, f"table frame {table:#x} is not RAM", tuple(steps))
        index = (guest_va >> shift) & 0x1FF
        entry = mem.read_u64((table << PAGE_SHIFT) + index * 8)
        steps.append(WalkStep(level, table, index, entry))
        name = LEVEL_NAMES[level]
        if not entry & PTE_PRESENT:
            raise PageWalkError(guest_va, level, f"{name} entry {index} not present", tuple(steps))
        if entry & _RSVD_HIGH_LOWER:
            raise PageWalkError(guest_va, level, f"{name} entry {index} has reserved bits set "
                                f"({entry:#x})", tuple(steps))
        writable = writable and bool(entry & PTE_RW)
        is_user = is_user and bool(entry & PTE_USER)
        nx = nx or bool(entry & PTE_NX)
        if level == 2 and entry & PTE_PSE:
            base = entry & PTE_ADDR_MASK & ~((1 << 21) - 1)
            maddr = base + (guest_va & ((1 << 21) - 1))
            return _finish(guest_va, steps, maddr, writable, is_user, nx, write, user)
        table = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
    maddr = (table << PAGE_SHIFT) + (guest_va & (PAGE_SIZE - 1))
    return _finish(guest_va, steps, maddr, writable, is_user, nx, write, user)


def _finish(guest_va: int, steps: list[WalkStep], maddr: int, writable: bool, is_user: bool,
            nx: bool, write: bool, user: bool) -> Walk:
    if user and not is_user:
        raise PageWalkError(guest_va, 1, "supervisor page accessed from ring 3", tuple(steps))
    if write and not writable:
        raise PageWalkError(guest_va, 1, "page is mapped read-only", tuple(steps))
    return Walk(guest_va, tuple(steps), maddr, writable, is_user, nx)
