"""4-level (long mode) page walks over machine memory, as the MMU does them.

Entries are Xen's x86_64 PTEs (xen/arch/x86/include/asm/x86_64/page.h): 52-bit physical
addresses, NX in bit 63, 2 MiB superpages refused for PV guests (Xen's default).
"""
from __future__ import annotations

from ...machine.memory import PAGE_SHIFT, PAGE_SIZE
from ...machine.paging import PageWalkError, Walk, WalkStep
from .layout import PTE_ADDR_MASK, PTE_NX, PTE_P, PTE_PSE, PTE_RW, PTE_U, is_canonical

LEVEL_NAMES64 = {4: "L4", 3: "L3", 2: "L2", 1: "L1"}


def walk_4level(mem, cr3: int, guest_va: int, *, write: bool = False,
                user: bool = False) -> Walk:
    """Translate `guest_va` through the 4-level tables at machine address `cr3`."""
    if not is_canonical(guest_va):
        raise PageWalkError(guest_va, 4, "non-canonical address")
    steps: list[WalkStep] = []
    table = (cr3 & PTE_ADDR_MASK) >> PAGE_SHIFT
    writable = is_user = True
    nx = False
    for level in (4, 3, 2, 1):
        if not mem.frame_valid(table):
            raise PageWalkError(guest_va, level, f"table frame {table:#x} is not RAM",
                                tuple(steps))
        index = (guest_va >> (PAGE_SHIFT + 9 * (level - 1))) & 0x1FF
        entry = mem.read_u64((table << PAGE_SHIFT) + index * 8)
        steps.append(WalkStep(level, table, index, entry))
        name = LEVEL_NAMES64[level]
        if not entry & PTE_P:
            raise PageWalkError(guest_va, level, f"{name} entry {index} not present",
                                tuple(steps))
        if level in (3, 2) and entry & PTE_PSE:
            raise PageWalkError(guest_va, level, f"{name} entry {index} is a superpage",
                                tuple(steps))
        writable = writable and bool(entry & PTE_RW)
        is_user = is_user and bool(entry & PTE_U)
        nx = nx or bool(entry & PTE_NX)
        table = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
    maddr = (table << PAGE_SHIFT) + (guest_va & (PAGE_SIZE - 1))
    if user and not is_user:
        raise PageWalkError(guest_va, 1, "supervisor page accessed from ring 3", tuple(steps))
    if write and not writable:
        raise PageWalkError(guest_va, 1, "page is mapped read-only", tuple(steps))
    return Walk(guest_va, tuple(steps), maddr, writable, is_user, nx)
