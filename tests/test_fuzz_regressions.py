"""Regressions for hypervisor bugs the fuzz guest found (guests/fuzz, issue 9).

1. X86Cpu.invalidate_code on a VA that cannot be fetched (not present, NX) left a #PF in
   flight in QEMU and clobbered CR2: the guest's next fault became a double fault.
2. A guest TF flag single-stepped Xen's trampolines: a ring-3 fault with TF set crashed
   the domain ("#DB inside Xen's trampoline") instead of reaching the guest's handler.
4. A guest that jumped into pvdbg's trampoline page (0xfff00000, where Xen maps nothing
   for a PV guest) crashed the domain ("... inside Xen's trampoline") -- from ring 3 too,
   through the call gate -- instead of taking the #PF a fetch from the hole takes on Xen.
3. A failsafe callback whose selector cannot be loaded: the return into it faulted, the
   failsafe was entered again, forever -- a Python hot loop (ring 3, no instruction ever
   retires, so no budget ends the run) or a RecursionError (same ring).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from pvasm import session, user_pages, words
from pvdbg.machine.cpu import _context_ptr
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind

DATA = r"""
.data
.balign 4
frame: .fill 8, 4, 0
.balign 4096
user_stack: .fill 1024, 4, 0
user_stack_top:
.balign 4096
kstack: .fill 1024, 4, 0
kstack_top:
"""


def in_flight(cpu) -> int:
    ctx = cpu.uc.context_save()
    return ctypes.c_int32.from_address(_context_ptr(ctx)
                                       + cpu.calibration.exception_in_flight_offset).value


def test_invalidate_code_of_an_unfetchable_va_leaves_no_fault_in_flight(tmp_path: Path):
    s = session(tmp_path, "_start: jmp _start\n", memory_mib=8)
    s.run(max_insns=1000)
    cpu = s.cpu
    cpu.write("cr2", 0x1234)
    cpu.invalidate_code(0x40000000, 0x40001000)        # nothing maps it
    assert in_flight(cpu) == -1
    assert cpu.read("cr2") == 0x1234


def test_page_fault_after_invalidating_unfetchable_code_is_a_page_fault(tmp_path: Path):
    """The guest maps a page NX, Xen copies into it (MMUEXT_COPY_PAGE drops translated
    code for every VA mapping it), then the guest faults: #PF, not #DF."""
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $target, %ebx              /* remap `target` NX, same frame */
    movl target_pte_lo, %ecx
    movl $0x80000000, %edx
    movl $2, %esi
    HYPERCALL(HC_update_va_mapping)
    movl $ops, %ebx
    movl $1, %ecx
    xorl %edx, %edx
    movl $0x7ff0, %esi
    HYPERCALL(26)                   /* mmuext_op COPY_PAGE into target's frame */
    movl %eax, copy_rc
    movl (0x500000), %eax           /* #PF */
    jmp .
pf_handler:
    movl $1, reached
    POWEROFF
.data
.balign 4
copy_rc: .long 0xdead
reached: .long 0
target_pte_lo: .long 0
ops: .long 17, 0, 0                 /* MMUEXT_COPY_PAGE dst, src: filled in by the test */
traps:
    .byte 14, 0
    .word KCS
    .long pf_handler
    .long 0, 0
.balign 4096
target: .fill 4096, 1, 0
""", memory_mib=8)
    target = s.symbol("target")
    walk = s.hv.guest.translate(target)
    mfn = walk.maddr >> 12
    s.write_memory(s.symbol("target_pte_lo"), ((mfn << 12) | 0x63).to_bytes(4, "little"))
    src = s.hv.guest.translate(s.symbol("frame") if s.symbol("frame") else target).maddr >> 12
    s.write_memory(s.symbol("ops") + 4, mfn.to_bytes(4, "little") + src.to_bytes(4, "little"))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert words(s, s.symbol("copy_rc"), 1) == [0]
    assert words(s, s.symbol("reached"), 1) == [1]
    assert [r.name for r in s.trace if r.kind is TraceKind.trap] == ["#PF"]


def test_ring3_fault_with_tf_set_reaches_the_guest_handler(tmp_path: Path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    pushl $UDS
    pushl $user_stack_top
    pushl $0x102                    /* TF, events masked */
    pushl $UCS
    pushl $supervisor_code          /* not user-accessible: #PF in ring 3 */
    jmp hypercall_page + HC_iret * 32
pf_handler:
    movl (%esp), %eax
    movl %eax, frame                /* error code */
    movl 4(%esp), %eax
    movl %eax, frame + 4            /* eip */
    movl 12(%esp), %eax
    movl %eax, frame + 8            /* eflags */
    POWEROFF
supervisor_code:
    nop
""" + DATA + r"""
traps:
    .byte 14, 0
    .word KCS
    .long pf_handler
    .long 0, 0
""", memory_mib=8)
    user_pages(s, s.symbol("user_stack"))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    error_code, eip, eflags = words(s, s.symbol("frame"), 3)
    assert eip == s.symbol("supervisor_code")
    assert error_code & 4                              # a user-mode fault
    assert eflags & 0x100                              # the interrupted context keeps TF
    assert not [r for r in s.trace if r.kind is TraceKind.trap and r.name == "#DB"]


FAILSAFE_GUEST = r"""
_start:
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    movl $KCS, %ebx
    movl $event, %ecx
    movl $BAD_FAILSAFE_CS, %edx
    xorl %esi, %esi
    HYPERCALL(HC_set_callbacks)
    pushl $UDS
    pushl $user_stack_top
    pushl $0x2
    pushl $BAD_IRET_CS              /* the iret faults: failsafe */
    pushl $event
    jmp hypercall_page + HC_iret * 32
event:
    jmp event
""" + DATA


def test_unenterable_failsafe_callback_from_ring3_crashes_instead_of_hanging(tmp_path: Path):
    s = session(tmp_path, "#define BAD_FAILSAFE_CS 0x8b3b\n#define BAD_IRET_CS 0x8b3b\n"
                + FAILSAFE_GUEST, memory_mib=8)
    stop = s.run(max_insns=200_000, timeout=30)
    assert stop.reason is StopReason.crash
    assert "the failsafe callback 0x8b3b:0x0 cannot be entered" in s.crash.reason
    assert s.hv.internal_error is None


def test_unenterable_failsafe_callback_in_ring1_crashes_without_recursion(tmp_path: Path):
    s = session(tmp_path, "#define BAD_FAILSAFE_CS 0x8b39\n#define BAD_IRET_CS 0x8b39\n"
                + FAILSAFE_GUEST, memory_mib=8)
    stop = s.run(max_insns=200_000, timeout=30)
    assert stop.reason is StopReason.crash
    assert "cannot be entered" in s.crash.reason
    assert s.hv.internal_error is None
    assert len([r for r in s.trace if r.kind is TraceKind.trap and r.name == "failsafe"]) == 1


PF_FRAME_GUEST = r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    ENTER
pf_handler:
    movl %esp, %esi
    movl $frame, %edi
    movl $6, %ecx
    rep movsl
    movl 2340 + shinfo, %eax        /* the cr2 Xen put in vcpu_info (arch.cr2, offset 8) */
    POWEROFF
""" + DATA + r"""
traps:
    .byte 14, 0
    .word KCS
    .long pf_handler
    .long 0, 0
"""

ENTER_RING3 = r"""
    pushl $UDS
    pushl $user_stack_top
    pushl $0x2
    pushl $UCS
    pushl $user_code
    jmp hypercall_page + HC_iret * 32
.balign 4096
user_code:
    movl $TARGET, %eax
    jmp *%eax
"""


def pf_frame(s):
    return dict(zip(("ec", "eip", "cs", "eflags", "esp", "ss"), words(s, s.symbol("frame"), 6)))


def test_ring3_jump_through_the_gate_trampoline_is_a_page_fault(tmp_path: Path):
    s = session(tmp_path, PF_FRAME_GUEST.replace("ENTER", "#define TARGET 0xfff00040\n"
                                                 + ENTER_RING3), memory_mib=8)
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    f = pf_frame(s)
    assert f["ec"] == 0x14                             # instruction fetch, user, not present
    assert f["eip"] == 0xFFF00040 and f["cs"] & 0xFFFF == 0xE02B
    assert f["esp"] == s.symbol("user_stack_top") and f["ss"] == 0xE033
    [rec] = [r for r in s.trace if r.kind is TraceKind.trap]
    assert rec.name == "#PF" and rec.args["cr2"] == 0xFFF00040 and rec.args["ring"] == 3


def test_ring3_jump_onto_trampoline_filler_is_a_page_fault(tmp_path: Path):
    s = session(tmp_path, PF_FRAME_GUEST.replace("ENTER", "#define TARGET 0xfff00001\n"
                                                 + ENTER_RING3), memory_mib=8)
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert pf_frame(s)["eip"] == 0xFFF00001 and pf_frame(s)["ec"] == 0x14


def test_ring1_jump_onto_the_trampoline_iret_is_a_page_fault(tmp_path: Path):
    s = session(tmp_path, PF_FRAME_GUEST.replace("ENTER", r"""
    pushl $0                        /* a frame the trampoline's iret refuses: CS 0 */
    pushl $0
    pushl $0
    movl $0xfff00000, %eax
    jmp *%eax
"""), memory_mib=8)
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    f = pf_frame(s)
    assert f["ec"] == 0x10 and f["eip"] == 0xFFF00000 and f["cs"] & 0xFFFF == 0xE019
