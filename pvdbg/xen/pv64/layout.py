"""Xen's x86_64 virtual layout and selectors as a 64-bit PV guest sees them.

ABI: xen/include/public/arch-x86/xen-x86_64.h (selectors, HYPERVISOR_VIRT_START/END,
MACH2PHYS_VIRT_START), xen/arch/x86/include/asm/config.h (per-domain slot).
"""
from __future__ import annotations

L4_SHIFT, L3_SHIFT, L2_SHIFT, L1_SHIFT = 39, 30, 21, 12
ENTRIES = 512

HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000
HYPERVISOR_VIRT_END = 0xFFFF_8800_0000_0000
XEN_FIRST_L4_SLOT = 256                 # slots 256..271 belong to Xen in every L4
XEN_LAST_L4_SLOT = 271
MACH2PHYS_VIRT_START = 0xFFFF_8000_0000_0000   # read-only M2P, 8-byte entries (slot 256)
MACH2PHYS_VIRT_END = 0xFFFF_8040_0000_0000
M2P_L4_SLOT = 256
PERDOMAIN_L4_SLOT = 260                 # Xen's per-domain area: GDT windows, ...
PERDOMAIN_VIRT_START = 0xFFFF_8200_0000_0000
CANONICAL_LOW_END = 1 << 47

# Selectors in Xen's reserved GDT page (index 7168 onwards: 0xe000).
HYPERVISOR_CS64 = 0xE008
HYPERVISOR_DS = 0xE010
FLAT_RING3_CS32 = 0xE023
FLAT_RING3_DS32 = 0xE02B
FLAT_RING3_CS64 = 0xE033
FLAT_RING3_SS64 = 0xE02B
FLAT_RING3_DS64 = 0x0000
FLAT_KERNEL_CS64 = FLAT_RING3_CS64
FLAT_KERNEL_SS64 = FLAT_RING3_SS64
FLAT_KERNEL_DS64 = FLAT_RING3_DS64
FLAT_USER_CS64 = FLAT_RING3_CS64
FLAT_USER_SS64 = FLAT_RING3_SS64

PTE_P, PTE_RW, PTE_U, PTE_PWT, PTE_PCD, PTE_A, PTE_D, PTE_PSE, PTE_G = (
    1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100)
PTE_NX = 1 << 63
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000
ADDR_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def canonical(va: int) -> int:
    """`va` (48 significant bits) as a canonical 64-bit address."""
    va &= (1 << 48) - 1
    return va | 0xFFFF_0000_0000_0000 if va >> 47 else va


def is_canonical(va: int) -> bool:
    return va < CANONICAL_LOW_END or va >= 0xFFFF_8000_0000_0000


def guest_addr_ok(va: int, length: int = 1) -> bool:
    """Xen's __addr_ok for a 64-bit PV guest: the range lies in the guest's half or above
    Xen's slots (xen/arch/x86/include/asm/x86_64/uaccess.h)."""
    end = va + max(length, 1) - 1
    if va < 0 or end > ADDR_MASK64:
        return False
    if end < CANONICAL_LOW_END:
        return True
    return va >= HYPERVISOR_VIRT_END


def table_index(va: int, level: int) -> int:
    """Index of `va` in its level-`level` table (1..4)."""
    return (va >> (L1_SHIFT + 9 * (level - 1))) & 0x1FF
