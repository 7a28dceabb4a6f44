"""MMUEXT_SET_LDT for a 64-bit PV guest: the guest's LDT pages appear read-only in a
per-vcpu LDT window of Xen's private area and LDTR points there.

Xen maps each LDT page into its per-vcpu shadow on the first fault that touches it
(pv_map_ldt_shadow_page); pvdbg maps every page of the LDT when it is set, each taking
the seg_desc type as Xen's shadow mapping does, since Unicorn raises no fault Xen could
fix up inside a descriptor load.  A page that is not present or cannot be a descriptor
page then shows the zero page: a selector into it finds a not-present descriptor, as the
guest would after Xen failed the shadow mapping.  Window: PERDOMAIN_VIRT_START + 0x110000
+ vcpu * 64 KiB (16 pages, the largest LDT: 8192 entries).
ABI: xen/arch/x86/mm.c do_mmuext_op MMUEXT_SET_LDT; xen/arch/x86/pv/descriptor-tables.c
pv_destroy_ldt, pv_map_ldt_shadow_page.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...machine.memory import PAGE_SHIFT, PAGE_SIZE
from ...machine.paging import PageWalkError
from ..constants import Errno
from ..descriptors import LDT_SELECTOR
from ..hypercalls import HypercallError, fail
from .area import GDT_WINDOW_PAGES
from .layout import PERDOMAIN_VIRT_START, PTE_A, PTE_P, guest_addr_ok
from .mm import PageType
from .paging import walk_4level

if TYPE_CHECKING:
    from .hypervisor import Hypervisor64, Vcpu64

LDT_WINDOW_OFFSET = 0x110000
MAX_LDT_ENTRIES = 8192
LDT_ENTRY_SIZE = 8


def ldt_window_va(vcpu_id: int) -> int:
    return PERDOMAIN_VIRT_START + LDT_WINDOW_OFFSET + vcpu_id * GDT_WINDOW_PAGES * PAGE_SIZE


def destroy_ldt(hv: "Hypervisor64", vcpu: "Vcpu64") -> None:
    """pv_destroy_ldt: unmap the window, dropping each page's seg_desc reference."""
    window = ldt_window_va(vcpu.vcpu_id)
    for page in range(GDT_WINDOW_PAGES):
        hv.area.map_private(window + page * PAGE_SIZE, 0, 0)
    for mfn in vcpu.ldt_frames:
        hv.mm.put_page_type(mfn)
    vcpu.ldt_frames = []
    vcpu.ldt_base = vcpu.ldt_ents = 0


def set_ldt(hv: "Hypervisor64", vcpu: "Vcpu64", base: int, ents: int) -> str:
    """MMUEXT_SET_LDT(linear base, entries); returns a note for the trace.  -EINVAL for a
    misaligned base, one outside the guest's addresses or more than 8192 entries."""
    if base & (PAGE_SIZE - 1) or ents > MAX_LDT_ENTRIES or (
            ents and not guest_addr_ok(base, ents * LDT_ENTRY_SIZE)):
        raise fail(Errno.EINVAL, f"Bad args to SET_LDT: ptr={base:#x}, ents={ents:#x}")
    destroy_ldt(hv, vcpu)
    note = "LDT cleared"
    if ents:
        window = ldt_window_va(vcpu.vcpu_id)
        nr_pages = -(-ents * LDT_ENTRY_SIZE // PAGE_SIZE)
        cr3 = vcpu.pv.kernel_table_mfn << PAGE_SHIFT      # a hypercall: kernel mode
        missing = []
        for page in range(nr_pages):
            mfn = _descriptor_frame(hv, cr3, base + page * PAGE_SIZE)
            if mfn is None:
                missing.append(page)
                mfn = hv.area.zero_mfn
            else:
                vcpu.ldt_frames.append(mfn)
            hv.area.map_private(window + page * PAGE_SIZE, mfn, PTE_P | PTE_A)
        vcpu.ldt_base, vcpu.ldt_ents = base, ents
        note = (f"LDT {ents} entries at {base:#x}, frames "
                f"{[hex(m) for m in vcpu.ldt_frames]}"
                + (f"; pages {missing} not mappable (zero page)" if missing else ""))
    hv.flush_guest_tlb()
    load_ldt(hv, vcpu)
    return note


def load_ldt(hv: "Hypervisor64", vcpu: "Vcpu64") -> None:
    """Point LDTR at the vcpu's window (load_LDT), or clear it for an empty LDT."""
    if vcpu is not hv.current:
        return
    if vcpu.ldt_ents:
        hv.cpu.set_ldtr(LDT_SELECTOR, ldt_window_va(vcpu.vcpu_id),
                        vcpu.ldt_ents * LDT_ENTRY_SIZE - 1)
    else:
        hv.cpu.set_ldtr(0, 0, 0)


def _descriptor_frame(hv: "Hypervisor64", cr3: int, va: int) -> int | None:
    """The frame mapped at `va`, typed seg_desc; None if unmapped or not typeable."""
    try:
        mfn = walk_4level(hv.memory, cr3, va).mfn
    except PageWalkError:
        return None
    try:
        hv.mm.get_page_type(mfn, PageType.seg_desc)
    except HypercallError:
        return None
    return mfn
