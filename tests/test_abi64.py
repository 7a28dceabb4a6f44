"""The 64-bit PV layouts that no public header declares: bounce and failsafe frames.

Word order follows Xen's create_bounce_frame (xen/arch/x86/x86_64/entry.S) and
load_segments (xen/arch/x86/domain.c), summarised in XEN-PV-ABI.md section 7.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from pvdbg.xen import abi64
from pvdbg.xen.abi64 import (
    BounceFrame64,
    BounceFrameErrorCode64,
    FailsafeFrame64,
    IretContext64,
    bounce_frame_va,
)

# Lowest address first, one u64 word each; "cs" is the CS|saved_upcall_mask<<32 word.
WORDS = {
    BounceFrame64: ("rcx", "r11", "rip", "cs", "rflags", "rsp", "ss"),
    BounceFrameErrorCode64: ("rcx", "r11", "error_code", "rip", "cs", "rflags", "rsp", "ss"),
    FailsafeFrame64: ("rcx", "r11", "ds", "es", "fs", "gs", "rip", "cs", "rflags", "rsp",
                      "ss"),
}


@pytest.mark.parametrize("frame", WORDS, ids=lambda frame: frame.__name__)
def test_frame_is_a_run_of_u64_words_in_xens_order(frame):
    names = WORDS[frame]
    assert frame.SIZE == 8 * len(names)
    for index, name in enumerate(names):
        assert frame.offset_of(name) == 8 * index, name
    assert frame.offset_of("saved_upcall_mask") == frame.offset_of("cs") + 4


@pytest.mark.parametrize("frame", WORDS, ids=lambda frame: frame.__name__)
def test_cs_word_carries_the_saved_mask_in_bits_39_to_32(frame):
    values = {name: 0 for name in WORDS[frame]}
    values.update(cs=0xE030, saved_upcall_mask=1)
    raw = frame(**values).to_bytes()
    cs_word = struct.unpack_from("<Q", raw, frame.offset_of("cs"))[0]
    assert cs_word == 0xE030 | (1 << 32)


def test_error_code_frame_is_the_plain_frame_with_one_more_word():
    plain = BounceFrame64(rcx=1, r11=2, rip=3, cs=0xE033, saved_upcall_mask=0,
                          rflags=0x202, rsp=0xFFFF_8800_0000_1000, ss=0xE02B)
    with_error = BounceFrameErrorCode64(rcx=1, r11=2, error_code=0x14, rip=3, cs=0xE033,
                                        saved_upcall_mask=0, rflags=0x202,
                                        rsp=0xFFFF_8800_0000_1000, ss=0xE02B)
    a, b = plain.to_bytes(), with_error.to_bytes()
    assert b[:16] == a[:16] and b[24:] == a[16:]
    assert struct.unpack_from("<Q", b, 16)[0] == 0x14


@given(st.integers(min_value=0x1000, max_value=(1 << 64) - 1))
def test_frames_end_at_the_16_byte_aligned_stack_top(stack_top_va):
    for frame in WORDS:
        frame_va = bounce_frame_va(stack_top_va, frame)
        assert frame_va + frame.SIZE == stack_top_va & ~0xF
        assert frame_va + frame.SIZE <= stack_top_va


def test_bounce_frame_va_examples():
    assert bounce_frame_va(0xFFFF_FFFF_8200_3FF8, BounceFrame64) == 0xFFFF_FFFF_8200_3FF0 - 56
    assert bounce_frame_va(0x1_0000, FailsafeFrame64) == 0x1_0000 - 88


@given(st.lists(st.integers(min_value=0, max_value=(1 << 64) - 1), min_size=9, max_size=9))
def test_iret_context_round_trips(words):
    names = ("rax", "r11", "rcx", "flags", "rip", "cs", "rflags", "rsp", "ss")
    raw = struct.pack("<9Q", *words)
    frame = IretContext64.from_bytes(raw)
    assert [getattr(frame, name) for name in names] == words
    assert frame.to_bytes() == raw
    assert IretContext64.VGCF_IN_SYSCALL == 0x100


def test_shared_layouts_are_reexported_unchanged():
    from pvdbg.xen import abi
    assert abi64.VcpuTimeInfo is abi.VcpuTimeInfo
    assert abi64.MmuUpdate is abi.MmuUpdate
    assert set(abi64.__all__) <= set(vars(abi64))
