"""The PV domain builder: lays out a 32-bit PAE domU as libxc does.

Order of the guest's pseudo-physical pages (tools/libs/guest/xg_dom_x86.c): kernel, p2m
list (u32 MFNs), start_info, xenstore page, console page, pagetables (L3, L2s, L1s),
boot stack, then padding so at least 512 KiB lie mapped above the stack, rounded to 4 MiB.
Every page is mapped at VIRT_BASE + pfn*4096; pagetable pages are mapped read-only.
ABI: xen/include/public/xen.h (start-of-day comment), XEN-PV-ABI.md section 2.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .abi import SharedInfo32, StartInfo32, VcpuInfo32
from .constants import HYPERVISOR_VIRT_START_PAE, MACH2PHYS_COMPAT_VIRT_END, XEN_FIRST_L2_SLOT
from .entry import MAX_VCPUS, PrivateArea
from .image import GuestImage

L1_FLAGS = 0x023                 # P|RW|A, no U (alloc_pgtables_x86_32_pae)
L1_FLAGS_RO = 0x021              # pagetable pages: P|A
L2_FLAGS = 0x067                 # P|RW|U|A|D
L3_FLAGS = 0x001                 # PAE PDPTE: present (Xen ORs RW|U for compat)
M2P_PTE_FLAGS = 0x021            # present, read-only, supervisor (x86_64/mm.c)
INVALID_P2M_ENTRY = 0xFFFFFFFF
START_INFO_MAGIC = b"xen-3.0-x86_32p"
SPARE_MACHINE_FRAMES = 256       # pool for populate_physmap, grant frames, ...
MIB = 1 << 20


class BuildError(Exception):
    """The guest cannot be built with these options (one line)."""


@dataclass(frozen=True)
class BuildOptions:
    memory_mib: int = 64
    cmdline: str = ""
    p2m_seed: int | None = 0x5EED     # None: identity P2M (pfn == mfn)
    vcpus: int = 1
    # A toolstack e820 map (address, size, type) for XENMEM_memory_map; () = none (-ENOSYS).
    memory_map: tuple[tuple[int, int, int], ...] = ()


@dataclass
class DomainLayout:
    """Where the builder put things; all VAs are guest virtual."""
    nr_pages: int
    virt_base: int
    kernel_pfns: range
    p2m_va: int
    start_info_va: int
    store_pfn: int
    console_pfn: int
    pt_base_va: int                  # the L3
    nr_pt_frames: int
    pt_pfns: range
    stack_va: int                    # bottom of the boot stack page
    virt_end: int                    # end of the initial mapping
    entry: int
    initial_esp: int


@dataclass
class BuiltDomain:
    memory: MachineMemory
    p2m: list[int]                    # pfn -> mfn
    layout: DomainLayout
    shared_info_mfn: int
    private_area: PrivateArea
    xen_l2_entries: dict[int, int]    # slot -> entry for Xen's slots of a slot-3 L2
    m2p_mfns: list[int]
    free_mfns: list[int]              # machine frames not given to anyone yet
    xen_mfns: set[int] = field(default_factory=set)
    l3_mfn: int = 0
    memory_map: tuple[tuple[int, int, int], ...] = ()   # the toolstack's e820, if any


def _pages(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def guest_p2m(nr_pages: int, p2m_seed: int | None) -> list[int]:
    """pfn -> mfn for a domain of `nr_pages` given machine frames 0..nr_pages-1: in
    order, or shuffled by `p2m_seed` (so guests cannot assume pfn == mfn)."""
    mfns = list(range(nr_pages))
    if p2m_seed is not None:
        random.Random(p2m_seed).shuffle(mfns)
    return mfns


class XenFrames:
    """Machine frames for Xen's own structures, handed out zeroed in order from `first`
    (the frame after the guest's); `next` is the first not handed out."""

    def __init__(self, memory: MachineMemory, first: int) -> None:
        self.memory = memory
        self.next = first

    def __call__(self) -> int:
        mfn = self.next
        self.next += 1
        self.memory.zero_frame(mfn)
        return mfn


def build_domain(image: GuestImage, options: BuildOptions) -> BuiltDomain:
    if image.elfclass != 32:
        raise BuildError(f"{image.path}: 64-bit PV guests are not supported yet")
    if not 1 <= options.vcpus <= MAX_VCPUS:
        raise BuildError(f"--vcpus must be between 1 and {MAX_VCPUS}")
    if options.memory_mib < 4 or options.memory_mib > 2048:
        raise BuildError(f"--memory {options.memory_mib}: must be between 4 and 2048 MiB")
    nr_pages = options.memory_mib * MIB // PAGE_SIZE
    virt_base = image.virt_base
    if image.kernel_start_va < virt_base:
        raise BuildError(f"{image.path}: kernel starts below VIRT_BASE")

    kernel_first = (image.kernel_start_va - virt_base) >> PAGE_SHIFT
    kernel_end = _pages(image.kernel_end_va - virt_base)
    next_pfn = kernel_end
    p2m_pfn = next_pfn
    next_pfn += _pages(nr_pages * 4)
    start_info_pfn = next_pfn
    store_pfn = start_info_pfn + 1
    console_pfn = store_pfn + 1
    pt_pfn = console_pfn + 1

    # Pagetables map [virt_base, virt_end); their own count moves virt_end: iterate.
    nr_pt = 1
    while True:
        stack_pfn = pt_pfn + nr_pt
        try_end = _round_up(virt_base + (stack_pfn + 1) * PAGE_SIZE + 512 * 1024, 4 * MIB)
        l3_slots = set(range(virt_base >> 30, ((try_end - 1) >> 30) + 1)) | {3}
        nr_l1 = ((try_end - 1) >> 21) - (virt_base >> 21) + 1
        need = 1 + len(l3_slots) + nr_l1
        if need <= nr_pt:
            break
        nr_pt = need
    virt_end = try_end
    if virt_end > HYPERVISOR_VIRT_START_PAE or virt_end < virt_base:
        raise BuildError(f"{image.path}: the initial mapping would reach the hypervisor hole")
    mapped_pages = (virt_end - virt_base) >> PAGE_SHIFT
    if mapped_pages > nr_pages:
        raise BuildError(f"{image.path}: image and bootstrap need {mapped_pages * 4 // 1024} MiB, "
                         f"more than --memory {options.memory_mib}")

    # Machine frames: guest frames first, then Xen's own, then a spare pool.
    nr_m2p_frames = _pages((nr_pages + 4096) * 4)
    m2p_l1s = _pages(nr_m2p_frames * 8)
    nr_xen = 6 + options.vcpus + nr_m2p_frames + m2p_l1s
    total = nr_pages + nr_xen + SPARE_MACHINE_FRAMES
    nr_m2p_frames = _pages(total * 4)
    m2p_l1s = _pages(nr_m2p_frames * 8)
    nr_xen = 6 + options.vcpus + nr_m2p_frames + m2p_l1s
    total = nr_pages + nr_xen + SPARE_MACHINE_FRAMES
    if (HYPERVISOR_VIRT_START_PAE + total * 4) > MACH2PHYS_COMPAT_VIRT_END:
        raise BuildError("machine too large for the compat M2P")
    memory = MachineMemory(total)

    p2m = guest_p2m(nr_pages, options.p2m_seed)
    xen_frame = XenFrames(memory, nr_pages)
    area = PrivateArea(memory, l1_mfn=xen_frame(), zero_mfn=xen_frame(),
                       trampoline_mfn=xen_frame(), tss_mfn=xen_frame(), stack_mfn=xen_frame(),
                       reserved_gdt_mfns=[xen_frame() for _ in range(options.vcpus)])
    area.install()
    shared_info_mfn = xen_frame()
    m2p_mfns = [xen_frame() for _ in range(nr_m2p_frames)]
    m2p_l1_mfns = [xen_frame() for _ in range(m2p_l1s)]
    free_mfns = list(range(xen_frame.next, total))
    xen_mfns = set(range(nr_pages, xen_frame.next))

    # M2P contents: every guest frame maps back to its pfn, the rest is invalid.
    m2p = bytearray(b"\xff" * (nr_m2p_frames * PAGE_SIZE))
    for pfn, mfn in enumerate(p2m):
        m2p[mfn * 4:mfn * 4 + 4] = pfn.to_bytes(4, "little")
    for i, mfn in enumerate(m2p_mfns):
        memory.write(mfn << PAGE_SHIFT, bytes(m2p[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))
    for i, mfn in enumerate(m2p_mfns):
        l1 = m2p_l1_mfns[i // 512]
        memory.write_u64((l1 << PAGE_SHIFT) + (i % 512) * 8, (mfn << PAGE_SHIFT) | M2P_PTE_FLAGS)
    xen_l2 = {XEN_FIRST_L2_SLOT + i: (mfn << PAGE_SHIFT) | 0x063 for i, mfn in enumerate(m2p_l1_mfns)}
    xen_l2[511] = area.l2_entry

    def maddr(pfn: int) -> int:
        return p2m[pfn] << PAGE_SHIFT

    # Kernel image.
    for seg in image.segments:
        off = 0                  # page by page; a segment need not start on a page
        while off < seg.memsz:
            va = seg.guest_va + off
            pfn = (va - virt_base) >> PAGE_SHIFT
            base = maddr(pfn) + (va & (PAGE_SIZE - 1))
            chunk = min(PAGE_SIZE - (va & (PAGE_SIZE - 1)), seg.memsz - off)
            data = seg.data[off:off + chunk]
            memory.write(base, data + bytes(chunk - len(data)))
            off += chunk

    # p2m list.
    p2m_bytes = b"".join(mfn.to_bytes(4, "little") for mfn in p2m)
    for i in range(_pages(len(p2m_bytes))):
        memory.write(maddr(p2m_pfn + i), p2m_bytes[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])

    # Pagetables: L3 at pt_pfn, then L2s (in L3 slot order), then L1s.
    pt_pfns = range(pt_pfn, pt_pfn + nr_pt)
    l3_pfn = pt_pfn
    l2_pfn_for_slot = {slot: pt_pfn + 1 + i for i, slot in enumerate(sorted(l3_slots))}
    first_l1 = pt_pfn + 1 + len(l3_slots)
    for slot, l2_pfn in l2_pfn_for_slot.items():
        memory.write_u64(maddr(l3_pfn) + slot * 8, maddr(l2_pfn) | L3_FLAGS)
    for i in range(nr_l1):
        va = (virt_base & ~((1 << 21) - 1)) + i * (1 << 21)
        l2_pfn = l2_pfn_for_slot[va >> 30]
        memory.write_u64(maddr(l2_pfn) + ((va >> 21) & 0x1FF) * 8, maddr(first_l1 + i) | L2_FLAGS)
    for pfn in range(mapped_pages):
        va = virt_base + pfn * PAGE_SIZE
        l1_index = ((va >> 21) - (virt_base >> 21))
        flags = L1_FLAGS_RO if pfn in pt_pfns else L1_FLAGS
        memory.write_u64(maddr(first_l1 + l1_index) + ((va >> 12) & 0x1FF) * 8, maddr(pfn) | flags)
    for slot, entry in xen_l2.items():
        memory.write_u64(maddr(l2_pfn_for_slot[3]) + slot * 8, entry)

    if image.hypercall_page_va is not None:
        pfn = (image.hypercall_page_va - virt_base) >> PAGE_SHIFT
        memory.write(maddr(pfn), hypercall_page_32())

    # start_info and shared_info.
    start_info = StartInfo32(
        magic=START_INFO_MAGIC, nr_pages=nr_pages, shared_info=shared_info_mfn << PAGE_SHIFT,
        flags=0, store_mfn=p2m[store_pfn], store_evtchn=1, console_mfn=p2m[console_pfn],
        console_evtchn=2, pt_base=virt_base + l3_pfn * PAGE_SIZE, nr_pt_frames=nr_pt,
        mfn_list=virt_base + p2m_pfn * PAGE_SIZE, mod_start=0, mod_len=0,
        cmd_line=options.cmdline.encode()[:1023])
    memory.write(maddr(start_info_pfn), start_info.to_bytes())
    for vcpu_id in range(SharedInfo32.NR_VCPU_INFO):
        off = (shared_info_mfn << PAGE_SHIFT) + vcpu_id * VcpuInfo32.SIZE
        memory.write(off + VcpuInfo32.offset_of("evtchn_upcall_mask"), b"\x01")
    memory.write_u32((shared_info_mfn << PAGE_SHIFT) + SharedInfo32.offset_of("max_pfn"), nr_pages)

    stack_va = virt_base + stack_pfn * PAGE_SIZE
    layout = DomainLayout(
        nr_pages=nr_pages, virt_base=virt_base, kernel_pfns=range(kernel_first, kernel_end),
        p2m_va=virt_base + p2m_pfn * PAGE_SIZE, start_info_va=virt_base + start_info_pfn * PAGE_SIZE,
        store_pfn=store_pfn, console_pfn=console_pfn, pt_base_va=virt_base + l3_pfn * PAGE_SIZE,
        nr_pt_frames=nr_pt, pt_pfns=pt_pfns, stack_va=stack_va, virt_end=virt_end,
        entry=image.entry, initial_esp=stack_va + PAGE_SIZE)
    return BuiltDomain(memory=memory, p2m=p2m, layout=layout, shared_info_mfn=shared_info_mfn,
                       private_area=area, xen_l2_entries=xen_l2, m2p_mfns=m2p_mfns,
                       free_mfns=free_mfns, xen_mfns=xen_mfns, l3_mfn=p2m[l3_pfn],
                       memory_map=tuple(options.memory_map))


def hypercall_page_32() -> bytes:
    """128 stubs of 32 bytes: ``mov $i,%eax; int $0x82; ret``; stub 23 (iret) has no ret.

    ABI: xen/arch/x86/pv/hypercall.c pv_ring1_init_hypercall_page.
    """
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for i in range(PAGE_SIZE // 32):
        if i == 23:
            stub = b"\x50\xb8" + (23).to_bytes(4, "little") + b"\xcd\x82"
        else:
            stub = b"\xb8" + i.to_bytes(4, "little") + b"\xcd\x82\xc3"
        page[i * 32:i * 32 + len(stub)] = stub
    return bytes(page)
