"""Descriptor tables: Xen's check_descriptor (both segment-limit policies), set_gdt,
update_descriptor, SET_LDT with the lazily mapped LDT, and the GDT/LDT views."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.xen import mm_query
from pvdbg.xen.constants import Errno
from pvdbg.xen.descriptors import (LDT_WINDOW_VA, LimitPolicy, check_descriptor,
                                   decode_descriptor, set_gdt, update_descriptor)
from pvdbg.xen.hypercalls import HypercallError
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.mm import PTE_A, PTE_P, PageType

from guestbuild import build_asm_guest


def desc(base: int, limit: int, access: int, flags: int = 0xC) -> int:
    """Descriptor from base, 20-bit limit, access byte and the G/D/L/AVL nibble."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40 | (limit >> 16 & 0xF) << 48
            | flags << 52 | (base >> 24) << 56)


def gate(selector: int, offset: int, dpl: int, high_bits: int = 0) -> int:
    return ((offset & 0xFFFF) | selector << 16 | high_bits << 32 | (0x80 | dpl << 5 | 0xC) << 40
            | (offset >> 16) << 48)


FLAT_CODE_DPL1 = desc(0, 0xFFFFF, 0xBB)

# (rule, descriptor, accepted?, stored value or None for "unchanged", words in the note/reason)
CASES_4_17 = [
    ("a not-present descriptor is always accepted", desc(0, 5, 0x1B), True, None, ()),
    ("an empty slot is accepted", 0, True, None, ()),
    ("a flat ring-1 code segment is kept", FLAT_CODE_DPL1, True, None, ()),
    ("DPL 0 is raised to 1", desc(0, 0xFFFFF, 0x9B), True, desc(0, 0xFFFFF, 0xBB),
     ("DPL 0 raised to 1",)),
    ("DPL 3 is kept", desc(0, 0xFFFFF, 0xF3), True, None, ()),
    ("L-bit (64-bit) code is refused", desc(0, 0xFFFFF, 0xBB, 0xA), False, None, ("L bit",)),
    ("a flat segment ending at 0xf6800000 is widened to 4 GiB",
     desc(0, 0xF67FF, 0xB3), True, desc(0, 0xFFFFF, 0xB3), ("widened to 4 GiB",)),
    ("a base-0 segment below the hole is kept", desc(0, 0x1FFFF, 0xB3), True, None, ()),
    ("a based segment is never widened", desc(0x1000, 0xF67FF, 0xB3), True, None, ()),
    ("a 32-bit call gate to a guest selector is stored with DPL 0",
     gate(0x0011, 0xC0001234, 3), True, gate(0x0013, 0xC0001234, 0),
     ("stored with DPL 0", "emulated")),
    ("a call gate to FLAT_RING1_CS is accepted", gate(0xE019, 0xC0001000, 1), True,
     gate(0xE019, 0xC0001000, 0), ()),
    ("a call gate to an LDT selector is accepted", gate(0x0007, 0x1000, 3), True,
     gate(0x0007, 0x1000, 0), ()),
    ("a call gate to Xen's ring-0 code is refused", gate(0xE008, 0x1000, 3), False, None,
     ("Xen's reserved",)),
    ("a call gate with parameter-count bits 5-7 set is refused",
     gate(0x0011, 0x1000, 3, high_bits=0x20), False, None, ("reserved bits",)),
    ("an interrupt gate is refused", gate(0x0011, 0, 1) | (0x2 << 40), False, None,
     ("type 0xe",)),
    ("a TSS descriptor is refused", desc(0x1000, 0x67, 0x89, 0), False, None, ("type 0x9",)),
    ("an LDT descriptor is refused", desc(0x1000, 0xFFF, 0x82, 0), False, None, ("type 0x2",)),
    ("type 0 (second half of a gate) is accepted unchanged", desc(0, 0, 0x80, 0), True, None, ()),
]


@pytest.mark.parametrize("rule, raw, ok, stored, words", CASES_4_17,
                         ids=[c[0] for c in CASES_4_17])
def test_check_descriptor_4_17(rule, raw, ok, stored, words):
    verdict = check_descriptor(raw, LimitPolicy.xen_4_17)
    assert verdict.ok is ok, verdict
    if ok:
        assert verdict.value == (raw if stored is None else stored), hex(verdict.value)
    text = " ".join(verdict.notes) + verdict.reason
    for word in words:
        assert word in text, text


def test_call_gate_reserved_bits():
    raw = gate(0x0011, 0x1000, 3) | (0x20 << 32)           # bit 5 of the high word
    assert not check_descriptor(raw).ok
    assert "reserved bits" in check_descriptor(raw).reason


CASES_3_PAE = [
    ("a flat 4 GiB segment is truncated below 0xf6800000", desc(0, 0xFFFFF, 0xB3), True,
     desc(0, 0xF67FF, 0xB3), 0xF67FFFFF),
    ("a segment ending below the hypervisor is kept", desc(0, 0x1FFFF, 0xB3), True, None,
     0x1FFFFFFF),
    ("a based 4 GiB segment is truncated to end at 0xf6800000",
     desc(0xC0005000, 0xFFFFF, 0xF3), True, desc(0xC0005000, 0x367FA, 0xF3), 0x367FAFFF),
    ("a base within a page of the hypervisor is refused", desc(0xF67FF000, 0, 0xB3), False,
     None, None),
    ("a byte-granular segment reaching the hypervisor is refused",
     desc(0xF6780000, 0xFFFFF, 0xB3, 0x4), False, None, None),
]


@pytest.mark.parametrize("rule, raw, ok, stored, limit", CASES_3_PAE,
                         ids=[c[0] for c in CASES_3_PAE])
def test_check_descriptor_seed_era_truncation(rule, raw, ok, stored, limit):
    verdict = check_descriptor(raw, LimitPolicy.xen_3_pae)
    assert verdict.ok is ok, verdict
    if ok:
        assert verdict.value == (raw if stored is None else stored), hex(verdict.value)
        assert decode_descriptor("gdt", 1, verdict.value).limit == limit


@settings(max_examples=500, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.sampled_from(list(LimitPolicy)))
def test_check_descriptor_is_a_fixed_point(raw, policy):
    """What Xen stores passes the check again unchanged, never has DPL 0 for a present
    code/data segment, and never carries the L bit."""
    verdict = check_descriptor(raw, policy)
    if not verdict.ok:
        return
    again = check_descriptor(verdict.value, policy)
    high = verdict.value >> 32
    if high & (1 << 15) and not high & (1 << 12) and (high >> 8) & 0xF == 0xC:
        # A stored call gate has DPL 0 and its DPL in the target's RPL; checking it again
        # raises that DPL 0 to 1 and stores 1 there, as Xen's check_descriptor does.
        assert again.ok and again.value == verdict.value & ~(3 << 16) | (1 << 16)
        return
    assert again.ok and again.value == verdict.value
    if high & (1 << 15) and high & (1 << 12):
        assert (high >> 13) & 3 >= 1 and not high & (1 << 21)


# -- on a domain ----------------------------------------------------------------------
SPIN = "_start:\n    jmp _start\n"


@pytest.fixture
def domain(tmp_path):
    return Session(load_guest_image(str(build_asm_guest(tmp_path, SPIN))),
                   SessionOptions(memory_mib=8))


def ctx_of(s: Session) -> HypercallContext:
    return HypercallContext(s.hv, s.hv.current)


def data_page(s: Session, pfn: int) -> tuple[int, int, int]:
    """(VA, MFN, machine address of its PTE) of guest page `pfn`."""
    va = 0xC0000000 + pfn * 4096
    walk = mm_query.walk(s.hv, va)
    step = walk.levels[-1]
    return va, step.target_mfn, (step.table_mfn << 12) + step.index * 8


def make_readonly(s: Session, pfn: int) -> tuple[int, int]:
    va, mfn, pte_maddr = data_page(s, pfn)
    s.hv.mm.mod_l1_entry(pte_maddr >> 12, (pte_maddr & 0xFFF) // 8, (mfn << 12) | PTE_P | PTE_A)
    s.cpu.flush_tlb()
    return va, mfn


def test_set_gdt_validates_fixes_and_maps(domain):
    s = domain
    va, mfn = data_page(s, 20)[:2]
    s.hv.guest.write(va + 16, struct.pack("<QQ", desc(0, 0xFFFFF, 0x9B), desc(0, 0xF67FF, 0x93)))
    make_readonly(s, 20)
    buf = s.hv.layout.stack_va
    s.hv.guest.write(buf, struct.pack("<I", mfn))
    assert set_gdt(ctx_of(s), buf, 4) == 0
    info = mm_query.frame_info(s.hv, mfn)
    assert (info.type, info.type_count, info.gdt_of) == ("seg_desc", 1, (0,))
    views = s.hv.descriptors.gdt(0)
    code, data = views[2], views[3]
    assert code.dpl == 1 and code.guest_raw == desc(0, 0xFFFFF, 0x9B)
    assert data.limit == 0xFFFFFFFF and any("widened" in n for n in data.notes)
    assert [v.selector for v in views if v.table == "xen"][:2] == [0xE008, 0xE010]
    # The GDT window now shows the frame to the CPU.
    window = mm_query.virtual_mappings(s.hv.mm, s.hv.mm.vcpu_cr3[0], mfn)
    assert any(m.xen and not m.writable for m in window)
    assert s.hv.descriptors.effective_limit(0, 0x19) == 0xFFFFFFFF
    # A second set_gdt releases the first frame.
    assert set_gdt(ctx_of(s), buf, 0) == 0
    assert mm_query.frame_info(s.hv, mfn).type_count == 0
    assert mm_query.writable_pagetable_mappings(s.hv) == []


def test_set_gdt_refusals(domain):
    s = domain
    va, mfn = data_page(s, 21)[:2]
    buf = s.hv.layout.stack_va
    s.hv.guest.write(buf, struct.pack("<I", mfn))
    with pytest.raises(HypercallError) as info:
        set_gdt(ctx_of(s), buf, 7169)
    assert info.value.errno == Errno.EINVAL and "at most 7168" in info.value.why
    with pytest.raises(HypercallError) as info:                  # still mapped writable
        set_gdt(ctx_of(s), buf, 8)
    assert info.value.errno == Errno.EINVAL and "writable page" in info.value.why
    s.hv.guest.write(va + 24, struct.pack("<Q", desc(0, 0xFFFFF, 0xBB, 0xA)))
    make_readonly(s, 21)
    with pytest.raises(HypercallError) as info:                  # a 64-bit code segment
        set_gdt(ctx_of(s), buf, 8)
    assert "descriptor 3" in info.value.why and "L bit" in info.value.why
    assert s.hv.mm.page(mfn).type is PageType.none
    s.hv.guest.write(buf, struct.pack("<I", s.hv.built.m2p_mfns[0]))
    with pytest.raises(HypercallError) as info:                  # not the domain's frame
        set_gdt(ctx_of(s), buf, 8)
    assert "belongs to Xen" in info.value.why


def test_update_descriptor(domain):
    s = domain
    va, mfn = data_page(s, 22)[:2]
    maddr = (mfn << 12) + 5 * 8
    ctx = ctx_of(s)
    raw = desc(0, 0xFFFFF, 0x93)
    assert update_descriptor(ctx, maddr, 0, raw & 0xFFFFFFFF, raw >> 32) == 0    # writable page
    assert s.hv.memory.read_u64(maddr) == desc(0, 0xFFFFF, 0xB3)                 # DPL raised
    for bad_addr, bad in ((maddr + 4, raw), (maddr, desc(0, 0xFFFFF, 0xBB, 0xA))):
        with pytest.raises(HypercallError) as info:
            update_descriptor(ctx, bad_addr, 0, bad & 0xFFFFFFFF, bad >> 32)
        assert info.value.errno == Errno.EINVAL
    l1 = s.hv.mm.vcpu_cr3[0]                                                      # an L3
    with pytest.raises(HypercallError) as info:
        update_descriptor(ctx, l1 << 12, 0, raw & 0xFFFFFFFF, raw >> 32)
    assert "descriptor page or a writable page" in info.value.why
    # Into a live GDT frame.
    make_readonly(s, 22)
    buf = s.hv.layout.stack_va
    s.hv.guest.write(buf, struct.pack("<I", mfn))
    set_gdt(ctx, buf, 16)
    tls = desc(0x1000, 0xFFFFF, 0xF2)
    assert update_descriptor(ctx, (mfn << 12) + 6 * 8, 0, tls & 0xFFFFFFFF, tls >> 32) == 0
    assert s.hv.descriptors.segment_base(0, 0x33) == 0x1000


def test_policy_switch_changes_the_stored_limit(domain):
    s = domain
    s.hv.descriptors.policy = LimitPolicy.xen_3_pae
    va, mfn = data_page(s, 23)[:2]
    maddr = (mfn << 12) + 8
    raw = desc(0, 0xFFFFF, 0xB3)
    update_descriptor(ctx_of(s), maddr, 0, raw & 0xFFFFFFFF, raw >> 32)
    assert s.hv.memory.read_u64(maddr) == desc(0, 0xF67FF, 0xB3)
    assert "truncated" in LimitPolicy.xen_3_pae.description


HC_MMUEXT = "hypercall_page + 26 * 32"
HC_UVM = "hypercall_page + 14 * 32"
HC_SCHED = "hypercall_page + 29 * 32"
LDT_GUEST = f"""
_start:
    /* update_va_mapping(ldt_page, pte_lo, 0, UVMF_INVLPG): make the LDT read-only */
    movl $ldt_page, %ebx
    movl pte_lo, %ecx
    xorl %edx, %edx
    movl $2, %esi
    cmpl $0, keep_writable
    jne 1f
    call {HC_UVM}
1:  /* mmuext_op(SET_LDT, ldt_page, 2 entries) */
    movl $op, %ebx
    movl $1, %ecx
    xorl %edx, %edx
    movl $0x7ff0, %esi
    call {HC_MMUEXT}
    movl $0xf, %eax               /* LDT entry 1, RPL 3 */
    movl %eax, %fs
    movl %fs:0, %eax
    movl %eax, seen
    pushl $0
    movl %esp, %ecx
    movl $2, %ebx
    call {HC_SCHED}
2:  jmp 2b
.data
op: .long 13, ldt_page, 2
pte_lo: .long 0
keep_writable: .long 0
seen: .long 0
value: .long 0x1dc0ffee
.balign 4096
ldt_page:
    .quad 0
    .quad 0x00cff2000000ffff      /* data, DPL 3, not accessed; base patched below */
.balign 4096
"""


def ldt_session(tmp_path, keep_writable: bool) -> Session:
    s = Session(load_guest_image(str(build_asm_guest(tmp_path, LDT_GUEST))),
                SessionOptions(memory_mib=8))
    sym = s.image.symbols.address
    ldt = sym("ldt_page")
    mfn = mm_query.walk(s.hv, ldt).levels[-1].target_mfn
    base = sym("value")
    d = desc(base, 0xFFFFF, 0xF2)
    s.hv.guest.write(ldt + 8, struct.pack("<Q", d))
    s.hv.guest.write(sym("pte_lo"), struct.pack("<I", (mfn << 12) | PTE_P | PTE_A))
    s.hv.guest.write(sym("keep_writable"), struct.pack("<I", int(keep_writable)))
    return s


def test_set_ldt_maps_the_ldt_lazily(tmp_path):
    s = ldt_session(tmp_path, keep_writable=False)
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert struct.unpack("<I", s.read_memory(s.image.symbols.address("seen"), 4))[0] == 0x1DC0FFEE
    ldt = s.hv.descriptors.ldt(0)
    assert len(ldt) == 2 and ldt[1].accessed and ldt[1].selector == 0xC
    mfn = mm_query.walk(s.hv, s.image.symbols.address("ldt_page")).frame.mfn
    info = mm_query.frame_info(s.hv, mfn)
    assert info.type == "seg_desc" and info.ldt_of == (0,)
    assert mm_query.writable_pagetable_mappings(s.hv) == []


def test_ldt_still_writable_faults_at_the_guests_address(tmp_path):
    s = ldt_session(tmp_path, keep_writable=True)
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.crash
    assert s.crash.cr2 == s.image.symbols.address("ldt_page") + 8
    assert LDT_WINDOW_VA not in range(s.crash.cr2 - 0x1000, s.crash.cr2 + 1)
