"""The PV domain builder for a 64-bit domU, laid out as libxc does for x86_64.

Order of the guest's pseudo-physical pages (tools/libs/guest/xg_dom_x86.c, xg_dom_core.c):
kernel, initrd (the start_info module), p2m list (u64 MFNs), start_info, xenstore page,
console page, pagetables (L4, L3s, L2s, L1s), boot stack, then padding so at least
512 KiB lie mapped above the stack, rounded to 4 MiB.  Every page is mapped at
VIRT_BASE + pfn*4096; pagetable pages read-only.  Xen's slots of the L4 hold the
read-only M2P (slot 256, 8-byte entries, user-readable) and Xen's private area (slot
260, supervisor-only).

The p2m list sits after the initrd inside the initial mapping, unless the kernel gives
XEN_ELFNOTE_INIT_P2M (a page-aligned VA below VIRT_BASE; libxc ignores any other): then
it is allocated after the boot stack, followed by the pagetables that map it at that VA
(L3s, L2s, L1s for the regions the initial mapping's tables do not cover, hung off the
initial L4), and start_info says mfn_list = that VA, first_p2m_pfn, nr_p2m_frames (the
list and those tables).  The initial mapping maps those tables read-only too, where it
reaches them.  ABI: xg_dom_core.c xc_dom_build_image, xg_dom_x86.c count_pgtables,
alloc_p2m_list_x86_64, setup_pgtables_x86, start_info_x86_64.
ABI: xen/include/public/xen.h (start-of-day comment), XEN-PV-ABI.md section 2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from ..abi64 import SharedInfo64, StartInfo64, VcpuInfo64
from ..builder import (SPARE_MACHINE_FRAMES, BuildError, BuildOptions, DomainLayout,
                       XenFrames, guest_p2m)
from ..image import GuestImage
from .area import PrivateArea64
from .layout import (M2P_L4_SLOT, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START,
                     PERDOMAIN_L4_SLOT, PTE_A, PTE_D, PTE_NX, PTE_P, PTE_RW, PTE_U,
                     HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, is_canonical, table_index)

L1_FLAGS = PTE_P | PTE_RW | PTE_A | PTE_U       # Xen adds U to every 64-bit PV entry
L1_FLAGS_RO = PTE_P | PTE_A | PTE_U             # pagetable pages
UPPER_FLAGS = PTE_P | PTE_RW | PTE_A | PTE_D | PTE_U
M2P_TABLE_FLAGS = PTE_P | PTE_A | PTE_U         # read-only all the way, readable at CPL 3
M2P_LEAF_FLAGS = PTE_P | PTE_A | PTE_U | PTE_NX
START_INFO_MAGIC64 = b"xen-3.0-x86_64"
MAX_VCPUS64 = 8
MIB = 1 << 20


@dataclass
class BuiltDomain64:
    """What build_domain64 made; the field names match BuiltDomain where shared code
    reads them (memory, p2m, layout, shared_info_mfn, private_area, free_mfns, ...)."""
    memory: MachineMemory
    p2m: list[int]
    layout: DomainLayout
    shared_info_mfn: int
    private_area: PrivateArea64
    xen_l4_entries: dict[int, int]      # slot -> entry Xen puts in every guest L4
    m2p_mfns: list[int]
    free_mfns: list[int]
    xen_mfns: set[int] = field(default_factory=set)
    l4_mfn: int = 0
    memory_map: tuple[tuple[int, int, int], ...] = ()
    module_pfns: range = range(0)

    @property
    def l3_mfn(self) -> int:
        """The top-level table (shared code calls it the L3 for 32-bit guests)."""
        return self.l4_mfn


def _pages(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _tables_needed(virt_base: int, virt_end: int) -> tuple[list[int], list[int], list[int]]:
    """The L4 slots, 1 GiB regions and 2 MiB regions [virt_base, virt_end) touches."""
    last = virt_end - 1
    l3s = list(range(virt_base >> 39, (last >> 39) + 1))
    l2s = list(range(virt_base >> 30, (last >> 30) + 1))
    l1s = list(range(virt_base >> 21, (last >> 21) + 1))
    return l3s, l2s, l1s


def _init_p2m_base(image: GuestImage, virt_base: int) -> int | None:
    """The VA XEN_ELFNOTE_INIT_P2M asks for, or None where libxc ignores it (at or above
    VIRT_BASE, or not page-aligned).  BuildError for an address no L4 can map for the
    guest (non-canonical, or in Xen's slots)."""
    base = image.notes.init_p2m
    if base is None or base >= virt_base or base & (PAGE_SIZE - 1):
        return None
    if not is_canonical(base) or HYPERVISOR_VIRT_START <= base < HYPERVISOR_VIRT_END:
        raise BuildError(f"{image.path}: INIT_P2M {base:#x} is not an address the guest "
                         "may map")
    return base


def _p2m_tables(p2m_base: int, p2m_end: int, initial: tuple[list[int], list[int], list[int]]
                ) -> tuple[list[int], list[int], list[int]]:
    """count_pgtables for the p2m mapping: the 512 GiB, 1 GiB and 2 MiB regions it
    touches that the initial mapping's L3s, L2s and L1s do not already cover."""
    wanted = _tables_needed(p2m_base, p2m_end)
    l3s, l2s, l1s = (sorted(set(w) - set(have)) for w, have in zip(wanted, initial))
    return l3s, l2s, l1s


def build_domain64(image: GuestImage, options: BuildOptions, initrd: bytes = b"") -> BuiltDomain64:
    if image.elfclass != 64:
        raise BuildError(f"{image.path}: not a 64-bit PV kernel")
    if not 1 <= options.vcpus <= MAX_VCPUS64:
        raise BuildError(f"--vcpus must be between 1 and {MAX_VCPUS64}")
    if options.memory_mib < 4 or options.memory_mib > 4096:
        raise BuildError(f"--memory {options.memory_mib}: must be between 4 and 4096 MiB")
    nr_pages = options.memory_mib * MIB // PAGE_SIZE
    virt_base = image.virt_base
    if image.kernel_start_va < virt_base:
        raise BuildError(f"{image.path}: kernel starts below VIRT_BASE")
    if virt_base < HYPERVISOR_VIRT_START and image.kernel_end_va > HYPERVISOR_VIRT_START:
        raise BuildError(f"{image.path}: the kernel overlaps Xen's slots")

    p2m_base = _init_p2m_base(image, virt_base)
    kernel_first = (image.kernel_start_va - virt_base) >> PAGE_SHIFT
    kernel_end = _pages(image.kernel_end_va - virt_base)
    next_pfn = kernel_end
    module_pfn = next_pfn
    next_pfn += _pages(len(initrd))
    p2m_pages = _pages(nr_pages * 8)
    p2m_pfn = next_pfn
    if p2m_base is None:
        next_pfn += p2m_pages
    start_info_pfn = next_pfn
    store_pfn = start_info_pfn + 1
    console_pfn = store_pfn + 1
    pt_pfn = console_pfn + 1

    nr_pt = 1
    while True:
        stack_pfn = pt_pfn + nr_pt
        try_end = _round_up(virt_base + (stack_pfn + 1) * PAGE_SIZE + 512 * 1024, 4 * MIB)
        l3s, l2s, l1s = _tables_needed(virt_base, try_end)
        need = 1 + len(l3s) + len(l2s) + len(l1s)
        if need <= nr_pt:
            break
        nr_pt = need
    virt_end = try_end
    mapped_pages = (virt_end - virt_base) >> PAGE_SHIFT
    p2m_l3s: list[int] = []
    p2m_l2s: list[int] = []
    p2m_l1s: list[int] = []
    p2m_pt_pfns = range(0)
    if p2m_base is not None:
        p2m_pfn = stack_pfn + 1
        p2m_l3s, p2m_l2s, p2m_l1s = _p2m_tables(p2m_base, p2m_base + p2m_pages * PAGE_SIZE,
                                                (l3s, l2s, l1s))
        p2m_pt_pfns = range(p2m_pfn + p2m_pages,
                            p2m_pfn + p2m_pages + len(p2m_l3s) + len(p2m_l2s) + len(p2m_l1s))
    needed = max(mapped_pages, p2m_pt_pfns.stop)
    if needed > nr_pages:
        raise BuildError(f"{image.path}: image and bootstrap need {needed * 4 // 1024} "
                         f"MiB, more than --memory {options.memory_mib}")

    # Machine frames: guest frames first, then Xen's own, then a spare pool.
    nr_area = 6 + options.vcpus
    total = nr_pages + nr_area + SPARE_MACHINE_FRAMES
    for _ in range(3):
        nr_m2p = _pages(total * 8)
        nr_m2p_l1 = _pages(nr_m2p * 8)
        nr_xen = nr_area + 1 + nr_m2p + nr_m2p_l1 + 2      # + shared_info, M2P L1s, L2, L3
        total = nr_pages + nr_xen + SPARE_MACHINE_FRAMES
    if MACH2PHYS_VIRT_START + total * 8 > MACH2PHYS_VIRT_END or nr_m2p_l1 > 512:
        raise BuildError("machine too large for the M2P")
    memory = MachineMemory(total)

    p2m = guest_p2m(nr_pages, options.p2m_seed)
    xen_frame = XenFrames(memory, nr_pages)
    area = PrivateArea64(memory, l3_mfn=xen_frame(), l2_mfn=xen_frame(), l1_mfn=xen_frame(),
                         zero_mfn=xen_frame(), trampoline_mfn=xen_frame(),
                         stack_mfn=xen_frame(),
                         reserved_gdt_mfns=[xen_frame() for _ in range(options.vcpus)])
    area.install()
    shared_info_mfn = xen_frame()
    m2p_mfns = [xen_frame() for _ in range(nr_m2p)]
    m2p_l1_mfns = [xen_frame() for _ in range(nr_m2p_l1)]
    m2p_l2_mfn = xen_frame()
    m2p_l3_mfn = xen_frame()
    free_mfns = list(range(xen_frame.next, total))
    xen_mfns = set(range(nr_pages, xen_frame.next))

    m2p = bytearray(b"\xff" * (nr_m2p * PAGE_SIZE))
    for pfn, mfn in enumerate(p2m):
        m2p[mfn * 8:mfn * 8 + 8] = pfn.to_bytes(8, "little")
    for i, mfn in enumerate(m2p_mfns):
        memory.write(mfn << PAGE_SHIFT, bytes(m2p[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))
        l1 = m2p_l1_mfns[i // 512]
        memory.write_u64((l1 << PAGE_SHIFT) + (i % 512) * 8, (mfn << PAGE_SHIFT) | M2P_LEAF_FLAGS)
    for i, l1 in enumerate(m2p_l1_mfns):
        memory.write_u64((m2p_l2_mfn << PAGE_SHIFT) + i * 8, (l1 << PAGE_SHIFT) | M2P_TABLE_FLAGS)
    memory.write_u64((m2p_l3_mfn << PAGE_SHIFT) + table_index(MACH2PHYS_VIRT_START, 3) * 8,
                     (m2p_l2_mfn << PAGE_SHIFT) | M2P_TABLE_FLAGS)
    xen_l4 = {M2P_L4_SLOT: (m2p_l3_mfn << PAGE_SHIFT) | M2P_TABLE_FLAGS,
              PERDOMAIN_L4_SLOT: area.l4_entry}

    def maddr(pfn: int) -> int:
        return p2m[pfn] << PAGE_SHIFT

    for seg in image.segments:
        off = 0
        while off < seg.memsz:
            va = seg.guest_va + off
            pfn = (va - virt_base) >> PAGE_SHIFT
            base = maddr(pfn) + (va & (PAGE_SIZE - 1))
            chunk = min(PAGE_SIZE - (va & (PAGE_SIZE - 1)), seg.memsz - off)
            data = seg.data[off:off + chunk]
            memory.write(base, data + bytes(chunk - len(data)))
            off += chunk
    for i in range(_pages(len(initrd))):
        memory.write(maddr(module_pfn + i), initrd[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])

    p2m_bytes = b"".join(mfn.to_bytes(8, "little") for mfn in p2m)
    for i in range(_pages(len(p2m_bytes))):
        memory.write(maddr(p2m_pfn + i), p2m_bytes[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])

    # Pagetables: L4, then L3s, L2s, L1s (each in address order).
    pt_pfns = range(pt_pfn, pt_pfn + nr_pt)
    l4_pfn = pt_pfn
    l3_pfn = {slot: pt_pfn + 1 + i for i, slot in enumerate(l3s)}
    l2_pfn = {gib: pt_pfn + 1 + len(l3s) + i for i, gib in enumerate(l2s)}
    l1_pfn = {two_mib: pt_pfn + 1 + len(l3s) + len(l2s) + i for i, two_mib in enumerate(l1s)}
    for slot, pfn in l3_pfn.items():
        memory.write_u64(maddr(l4_pfn) + (slot & 0x1FF) * 8, maddr(pfn) | UPPER_FLAGS)
    for gib, pfn in l2_pfn.items():
        memory.write_u64(maddr(l3_pfn[gib >> 9]) + (gib & 0x1FF) * 8, maddr(pfn) | UPPER_FLAGS)
    for two_mib, pfn in l1_pfn.items():
        memory.write_u64(maddr(l2_pfn[two_mib >> 9]) + (two_mib & 0x1FF) * 8,
                         maddr(pfn) | UPPER_FLAGS)
    for pfn in range(mapped_pages):
        va = virt_base + pfn * PAGE_SIZE
        flags = L1_FLAGS_RO if pfn in pt_pfns or pfn in p2m_pt_pfns else L1_FLAGS
        memory.write_u64(maddr(l1_pfn[va >> 21]) + table_index(va, 1) * 8, maddr(pfn) | flags)
    if p2m_base is not None:
        # The p2m mapping's own tables, in pfn order L3s, L2s, L1s, each hung off the
        # table above it (its own or the initial mapping's).
        tables = iter(p2m_pt_pfns)
        l3_pfn.update({slot: next(tables) for slot in p2m_l3s})
        l2_pfn.update({gib: next(tables) for gib in p2m_l2s})
        l1_pfn.update({two_mib: next(tables) for two_mib in p2m_l1s})
        for slot in p2m_l3s:
            memory.write_u64(maddr(l4_pfn) + (slot & 0x1FF) * 8, maddr(l3_pfn[slot]) | UPPER_FLAGS)
        for gib in p2m_l2s:
            memory.write_u64(maddr(l3_pfn[gib >> 9]) + (gib & 0x1FF) * 8,
                             maddr(l2_pfn[gib]) | UPPER_FLAGS)
        for two_mib in p2m_l1s:
            memory.write_u64(maddr(l2_pfn[two_mib >> 9]) + (two_mib & 0x1FF) * 8,
                             maddr(l1_pfn[two_mib]) | UPPER_FLAGS)
        for i in range(p2m_pages):
            va = p2m_base + i * PAGE_SIZE
            memory.write_u64(maddr(l1_pfn[va >> 21]) + table_index(va, 1) * 8,
                             maddr(p2m_pfn + i) | L1_FLAGS)
    for slot, entry in xen_l4.items():
        memory.write_u64(maddr(l4_pfn) + slot * 8, entry)

    if image.hypercall_page_va is not None:
        pfn = (image.hypercall_page_va - virt_base) >> PAGE_SHIFT
        if not 0 <= pfn < mapped_pages:
            raise BuildError(f"{image.path}: HYPERCALL_PAGE outside the initial mapping")
        memory.write(maddr(pfn), hypercall_page_64())

    p2m_va = virt_base + p2m_pfn * PAGE_SIZE if p2m_base is None else p2m_base
    start_info = StartInfo64(
        magic=START_INFO_MAGIC64, nr_pages=nr_pages, shared_info=shared_info_mfn << PAGE_SHIFT,
        flags=0, store_mfn=p2m[store_pfn], store_evtchn=1, console_mfn=p2m[console_pfn],
        console_evtchn=2, pt_base=virt_base + l4_pfn * PAGE_SIZE, nr_pt_frames=nr_pt,
        mfn_list=p2m_va,
        mod_start=virt_base + module_pfn * PAGE_SIZE if initrd else 0, mod_len=len(initrd),
        cmd_line=options.cmdline.encode()[:1023],
        first_p2m_pfn=p2m_pfn if p2m_base is not None else 0,
        nr_p2m_frames=p2m_pages + len(p2m_pt_pfns) if p2m_base is not None else 0)
    memory.write(maddr(start_info_pfn), start_info.to_bytes())
    si = shared_info_mfn << PAGE_SHIFT
    for vcpu_id in range(SharedInfo64.NR_VCPU_INFO):
        memory.write(si + vcpu_id * VcpuInfo64.SIZE + VcpuInfo64.offset_of("evtchn_upcall_mask"),
                     b"\x01")
    memory.write_u64(si + SharedInfo64.offset_of("max_pfn"), nr_pages)

    stack_va = virt_base + stack_pfn * PAGE_SIZE
    layout = DomainLayout(
        nr_pages=nr_pages, virt_base=virt_base, kernel_pfns=range(kernel_first, kernel_end),
        p2m_va=p2m_va,
        start_info_va=virt_base + start_info_pfn * PAGE_SIZE,
        store_pfn=store_pfn, console_pfn=console_pfn, pt_base_va=virt_base + l4_pfn * PAGE_SIZE,
        nr_pt_frames=nr_pt, pt_pfns=pt_pfns, stack_va=stack_va, virt_end=virt_end,
        entry=image.entry, initial_esp=stack_va + PAGE_SIZE)
    return BuiltDomain64(memory=memory, p2m=p2m, layout=layout, shared_info_mfn=shared_info_mfn,
                         private_area=area, xen_l4_entries=xen_l4, m2p_mfns=m2p_mfns,
                         free_mfns=free_mfns, xen_mfns=xen_mfns, l4_mfn=p2m[l4_pfn],
                         memory_map=tuple(options.memory_map),
                         module_pfns=range(module_pfn, module_pfn + _pages(len(initrd))))


HYPERCALL_IRET = 23


def hypercall_page_64() -> bytes:
    """128 stubs of 32 bytes for a 64-bit kernel: ``push %rcx; push %r11; mov $i,%eax;
    syscall; pop %r11; pop %rcx; ret``; the iret stub pushes RCX, R11, RAX (building the
    iret_context) and never returns.

    ABI: xen/arch/x86/pv/hypercall.c (the 64-bit hypercall page), public/arch-x86/
    xen-x86_64.h struct iret_context.
    """
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for i in range(PAGE_SIZE // 32):
        mov = b"\xb8" + i.to_bytes(4, "little")
        if i == HYPERCALL_IRET:
            stub = b"\x51\x41\x53\x50" + mov + b"\x0f\x05"
        else:
            stub = b"\x51\x41\x53" + mov + b"\x0f\x05\x41\x5b\x59\xc3"
        page[i * 32:i * 32 + len(stub)] = stub
    return bytes(page)
