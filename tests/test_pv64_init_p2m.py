"""XEN_ELFNOTE_INIT_P2M in the 64-bit domain builder: the p2m list mapped at the VA the
kernel asks for, outside the initial mapping, as libxc lays it out (after the boot stack,
followed by the tables that map it; start_info mfn_list / first_p2m_pfn / nr_p2m_frames)."""
from __future__ import annotations

import pytest

from guestbuild64 import VIRT_BASE, _note, build_asm_guest64
from test_pv64_engine import DATA, MACROS
from pvdbg.machine.memory import PAGE_SHIFT, PAGE_SIZE
from pvdbg.xen.abi64 import StartInfo64
from pvdbg.xen.builder import BuildError, BuildOptions
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.pv64.builder import build_domain64
from pvdbg.xen.pv64.hypervisor import Hypervisor64
from pvdbg.xen.pv64.mm import PageType
from pvdbg.xen.pv64.paging import walk_4level

P2M_BASE = 0x80_0000_0000          # what Linux asks for: PUD_SIZE * PTRS_PER_PUD
MEMORY_MIB = 16                    # 4096 pages: an 8-page p2m list

# Reads p2m[0] and p2m[last] through start_info.mfn_list, then powers off.
GUEST = MACROS + r"""
.globl _start
_start:
    mov 104(%rsi), %rax
    mov (%rax), %rbx
    mov 32(%rsi), %rcx
    mov -8(%rax,%rcx,8), %r12
    POWEROFF
""" + DATA


def boot(tmp_path, p2m_note: int | None) -> Hypervisor64:
    body = GUEST if p2m_note is None else _note(20, 15, ".quad", f"{p2m_note:#x}") + GUEST
    path = build_asm_guest64(tmp_path, body)
    image = load_guest_image(str(path), allow_64bit=True)
    built = build_domain64(image, BuildOptions(memory_mib=MEMORY_MIB))
    return Hypervisor64(built, image.symbols)


def start_info(hv) -> StartInfo64:
    return StartInfo64.from_bytes(hv.guest.read(hv.layout.start_info_va, StartInfo64.SIZE))


def test_p2m_is_mapped_where_the_kernel_asked(tmp_path):
    hv = boot(tmp_path, P2M_BASE)
    plain = boot(tmp_path / "..", None)
    si = start_info(hv)
    lay = hv.layout
    stack_pfn = (lay.stack_va - lay.virt_base) >> PAGE_SHIFT
    assert si.mfn_list == lay.p2m_va == P2M_BASE
    assert si.first_p2m_pfn == stack_pfn + 1                 # allocated after the stack
    assert si.nr_p2m_frames == 8 + 3                         # the list, its L3, L2, L1
    # The initial mapping is laid out as without the note, minus the p2m after the initrd.
    assert si.nr_pt_frames == start_info(plain).nr_pt_frames
    assert lay.start_info_va == plain.layout.start_info_va - 8 * PAGE_SIZE
    p2m = hv.built.p2m
    assert [hv.guest.read_u64(P2M_BASE + 8 * pfn) for pfn in range(len(p2m))] == p2m
    walk = walk_4level(hv.memory, hv.built.l4_mfn << PAGE_SHIFT, P2M_BASE)
    assert walk.writable and walk.mfn == p2m[si.first_p2m_pfn]
    assert [step.index for step in walk.steps[:1]] == [1]    # L4 slot 1, a guest slot
    table_pfns = range(si.first_p2m_pfn + 8, si.first_p2m_pfn + 11)
    table_mfns = [step.table_mfn for step in walk.steps[1:]]
    assert table_mfns == [p2m[pfn] for pfn in table_pfns]
    # Pinning the L4 validated them as L3, L2, L1; the initial mapping has them read-only.
    assert [hv.mm.type[m] for m in table_mfns] == [PageType.l3, PageType.l2, PageType.l1]
    for pfn in table_pfns:
        va = lay.virt_base + pfn * PAGE_SIZE
        assert va < lay.virt_end and not hv.guest.translate(va).writable
    hv.cpu.run(1000)
    assert hv.domain.shutdown_reason is not None
    assert hv.cpu.read("rbx") == p2m[0] and hv.cpu.read("r12") == p2m[-1]


@pytest.mark.parametrize("note", [VIRT_BASE + 0x4000_0000, P2M_BASE + 8])
def test_addresses_libxc_ignores_keep_the_p2m_in_the_initial_mapping(tmp_path, note):
    hv = boot(tmp_path, note)
    si = start_info(hv)
    assert si.mfn_list == hv.layout.p2m_va and hv.layout.virt_base <= si.mfn_list
    assert (si.first_p2m_pfn, si.nr_p2m_frames) == (0, 0)


@pytest.mark.parametrize("note", [0xFFFF_8000_0000_0000, 0x8000_0000_0000])
def test_p2m_in_xens_slots_or_non_canonical_is_refused(tmp_path, note):
    with pytest.raises(BuildError, match="INIT_P2M"):
        boot(tmp_path, note)
