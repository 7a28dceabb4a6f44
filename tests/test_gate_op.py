"""Call gates used as Xen emulates them (xen/arch/x86/pv/emul-gate-op.c): far calls and
jumps through a gate the guest installed, from ring 3 into ring 1 (kernel stack from
stack_switch, parameters copied) and within a ring, direct and indirect forms, and each
refusal with Xen's exception and error code."""
from __future__ import annotations

import pytest

from pvasm import session, u32, user_pages, words
from pvdbg.machine.memory import PAGE_SHIFT
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.entry import segment_descriptor
from pvdbg.xen.gate_op import GateOps, SegmentInfo, stack_limit_ok

KCS, KDS, UCS, UDS = 0xE019, 0xE021, 0xE02B, 0xE033
GATE_INDEX = 5
GATE_SEL = GATE_INDEX << 3


def gate(selector: int, offset: int, dpl: int, params: int = 0, present: bool = True) -> int:
    access = (0x80 if present else 0) | (dpl & 3) << 5 | 0xC
    return ((offset & 0xFFFF) | (selector & 0xFFFF) << 16 | (params & 0x1F) << 32
            | access << 40 | (offset >> 16) << 48)


GUEST = r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    @START@
gate_target:                    /* ring 1 (or ring 3 for a same-ring call) */
    movl %cs, %eax
    movl %ss, %edx
    movl %esp, %ecx
    movl $KDS, %ebx
    movl %ebx, %ds
    movl %ebx, %es
    movl %eax, got_cs
    movl %edx, got_ss
    movl %ecx, got_esp
    movl %ecx, %esi
    movl $frame, %edi
    movl $6, %ecx
    rep movsl
    @RETURN@
.balign 4096
user_code:
    pushl $0x1111
    pushl $0x2222
    @CALL@
after_call:
    movl %esp, %ebx
    int $0x80
    jmp after_call
syscall_handler:
    movl $KDS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %ebx, user_esp_after
    movl %esp, %esi
    movl $frame2, %edi
    movl $5, %ecx
    rep movsl
    POWEROFF
fault_handler:
    movl $KDS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %esp, %esi
    movl $frame2, %edi
    movl $6, %ecx
    rep movsl
    POWEROFF
.data
.balign 4
got_cs: .long 0
got_ss: .long 0
got_esp: .long 0
user_esp_after: .long 0
frame: .fill 8, 4, 0
frame2: .fill 8, 4, 0
.balign 4096
gdt: .fill 512, 8, 0
.balign 4096
user_stack: .fill 1020, 4, 0
operand: .long 0, 0, 0
user_stack_top: .long 0
.balign 4096
kstack: .fill 1024, 4, 0
kstack_top:
traps:
    .byte 0x80, 3
    .word KCS
    .long syscall_handler
    .byte 13, 0
    .word KCS
    .long fault_handler
    .byte 11, 0
    .word KCS
    .long fault_handler
    .byte 12, 0
    .word KCS
    .long fault_handler
    .byte 10, 0
    .word KCS
    .long fault_handler
    .byte 14, 0
    .word KCS
    .long fault_handler
    .long 0, 0
"""

TO_RING3 = r"""
    pushl $UDS
    pushl $user_stack_top
    pushl $0x202
    pushl $UCS
    pushl $user_code
    jmp hypercall_page + HC_iret * 32
"""


def make(tmp_path, *, start=TO_RING3, call="lcall $0x2b, $0", ret="lret $8", name="guest"):
    body = (GUEST.replace("@START@", start).replace("@CALL@", call).replace("@RETURN@", ret))
    s = session(tmp_path, body, name=name)
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    return s


def install_gdt(s, entries: dict[int, int]) -> None:
    """Write descriptors into the guest's `gdt` page, map it read-only and set_gdt it,
    as a guest kernel would (mmu_update to drop RW, then set_gdt)."""
    va = s.symbol("gdt")
    walk = s.hv.guest.translate(va)
    mfn = walk.maddr >> PAGE_SHIFT
    for index, raw in entries.items():
        s.hv.memory.write_u64((mfn << PAGE_SHIFT) + index * 8, raw)
    pte = s.hv.memory.read_u64(walk.l1_entry_maddr)
    l1_mfn = walk.l1_entry_maddr >> PAGE_SHIFT
    s.hv.mm.mod_l1_entry(l1_mfn, (walk.l1_entry_maddr & 0xFFF) // 8, pte & ~2)
    s.cpu.flush_tlb()
    s.hv.guest.flush()
    s.hv.descriptors.set_gdt(0, [mfn], 512)


def gate_records(s):
    return [r for r in s.trace if r.kind is TraceKind.emulation and r.name == "gate_op"]


def fault(s) -> tuple[int, int]:
    rec = [r for r in s.trace if r.kind is TraceKind.trap and r.args["vector"] in
           (10, 11, 12, 13, 14)][0]
    return rec.args["vector"], rec.args.get("error_code")


def test_ring3_call_through_gate_into_ring1_and_lret_back(tmp_path):
    s = make(tmp_path)
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 3, params=2)})
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "got_cs") == KCS and u32(s, "got_ss") == KDS
    top = s.symbol("user_stack_top")
    kstack_top = s.symbol("kstack_top")
    assert u32(s, "got_esp") == kstack_top - 24           # SS ESP p2 p1 CS EIP
    eip, cs, p1, p2, esp, ss = words(s, s.symbol("frame"), 6)
    assert (eip, cs) == (s.symbol("after_call"), UCS)
    assert (p1, p2) == (0x2222, 0x1111)                   # the caller's [esp], [esp+4]
    assert (esp, ss) == (top - 8, UDS)
    # lret $8 went back to ring 3 and dropped the parameters.
    assert u32(s, "user_esp_after") == top
    assert words(s, s.symbol("frame2"), 5)[1] & 0xFFFF == UCS
    rec = gate_records(s)[0]
    assert rec.args["gate"] == GATE_SEL and rec.args["from_ring"] == 3
    assert rec.args["to_ring"] == 1 and rec.args["target_cs"] == KCS
    assert rec.args["target_eip"] == s.symbol("gate_target") and rec.args["params"] == 2
    assert "ring 3 -> 1" in rec.detail


def test_indirect_far_call_with_sib_and_segment_override(tmp_path):
    call = ("movl $user_stack_top, %ebx\n movl $1, %esi\n"
            "movl $0x2b, %ss:(operand+4)\n lcall *%ss:-16(%ebx,%esi,4)")
    s = make(tmp_path, call=call)
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 3, params=2)})
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "got_cs") == KCS
    eip, cs = words(s, s.symbol("frame"), 2)
    assert cs == UCS and eip == s.symbol("after_call")
    assert gate_records(s)[0].args["insn"] == "call ptr ss:[ebx + esi*4 - 0x10]"


def test_same_ring_call_from_ring1_pushes_cs_eip(tmp_path):
    start = "pushl $0x1111\n pushl $0x2222\n movl %esp, %ebp\n lcall $0x29, $0\n" \
            "after_kcall:\n POWEROFF\n"
    s = make(tmp_path, start=start, ret="lret")
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 1, params=2)})
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    eip, cs = words(s, s.symbol("frame"), 2)
    assert (eip, cs) == (s.symbol("after_kcall"), KCS)
    rec = gate_records(s)[0]
    assert rec.args["from_ring"] == rec.args["to_ring"] == 1 and rec.args["kind"] == "call"


def test_far_jump_through_gate_keeps_the_ring(tmp_path):
    start = "ljmp $0x29, $0\n"
    s = make(tmp_path, start=start, ret="POWEROFF")
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 1)})
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "got_cs") == KCS
    assert u32(s, "got_esp") == s.symbol("kstack_top") - 0 or u32(s, "got_esp")
    assert gate_records(s)[0].args["kind"] == "jmp"


@pytest.mark.parametrize("name, descriptors, call, expected", [
    # The gate's DPL (1) is below CPL 3: #GP(gate selector).
    ("dpl_below_cpl", lambda t: {GATE_INDEX: gate(KCS, t, 1)}, None, (13, GATE_SEL)),
    # RPL 3 of the selector above the gate DPL 1 from ring 1 is covered below; a gate
    # that is not present: #NP(gate selector).
    ("gate_not_present", lambda t: {GATE_INDEX: gate(KCS, t, 3, present=False)}, None,
     (11, GATE_SEL)),
    # The target code segment is not present: #NP(target selector).
    ("target_not_present", lambda t: {GATE_INDEX: gate(0x30, t, 3),
                                      6: segment_descriptor(0, 0xFFFFF, 0x3B)}, None,
     (11, 0x30)),
    # The target is a data segment: #GP(target selector).
    ("target_is_data", lambda t: {GATE_INDEX: gate(0x30, t, 3),
                                  6: segment_descriptor(0, 0xFFFFF, 0xB3)}, None, (13, 0x30)),
    # The offset is beyond the target's limit: #GP(0).
    ("offset_beyond_limit", lambda t: {GATE_INDEX: gate(0x30, 0x20000, 3),
                                       6: segment_descriptor(0, 0xFFFF, 0xBB, 0x4)}, None,
     (13, 0)),
    # A far jump to a non-conforming ring-1 target from ring 3: #GP(target selector).
    ("jump_inward", lambda t: {GATE_INDEX: gate(KCS, t, 3)}, "ljmp $0x2b, $0", (13, 0xE018)),
    # Not a gate at all (a data descriptor): #GP(selector) as the CPU raised it.
    ("not_a_gate", lambda t: {GATE_INDEX: segment_descriptor(0, 0xFFFFF, 0xF3)},
     "lcall $0x2b, $0", (13, GATE_SEL)),
])
def test_refused_gate_uses(tmp_path, name, descriptors, call, expected):
    s = make(tmp_path, call=call or "lcall $0x2b, $0", name=name)
    install_gdt(s, descriptors(s.symbol("gate_target")))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert fault(s) == expected
    assert u32(s, "got_cs") == 0                     # the target never ran
    # The fault is reported at the far call, in ring 3.
    ec_or_eip = words(s, s.symbol("frame2"), 3)
    assert s.symbol("user_code") <= ec_or_eip[1] < s.symbol("after_call")
    assert ec_or_eip[2] & 0xFFFF == UCS


def test_kernel_stack_not_usable_gives_ts(tmp_path):
    start = "movl $0xe033, %ebx\n movl $kstack_top, %ecx\n HYPERCALL(HC_stack_switch)\n" + TO_RING3
    s = make(tmp_path, start=start)
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 3)})
    stop = s.run(max_insns=200_000)
    # #TS(kernel_ss) is owed; delivering it needs that same kernel stack, so (as on Xen)
    # the domain crashes.
    assert stop.reason is StopReason.crash
    assert "delivering #TS" in s.crash.reason
    rec = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "#TS"][0]
    assert rec.args["error_code"] == 0xE030


def test_stack_limit_rule():
    assert stack_limit_ok(0, 0xFFFFFFFF, 0x1000, 16)
    assert not stack_limit_ok(0, 0xFFFFFFFF, 8, 16)           # would wrap below 0
    assert not stack_limit_ok(0, 0xFFF, 0x2000, 16)           # ESP-1 above the limit
    assert stack_limit_ok(1 << 10, 0xFFF, 0x2000, 16)         # expand-down: above limit
    assert not stack_limit_ok(1 << 10, 0x1FF8, 0x2000, 16)


def test_segment_info_decodes_limit_and_rights():
    info = SegmentInfo.from_raw(segment_descriptor(0x1000, 0xFFFFF, 0xBB))
    assert info.base == 0x1000 and info.limit == 0xFFFFFFFF and info.dpl == 1
    assert GateOps.__name__ == "GateOps"


def test_selector_rpl_above_gate_dpl_is_refused(tmp_path):
    # From ring 1 the gate (DPL 1) is usable, but the selector's RPL 3 exceeds its DPL.
    start = "lcall $0x2b, $0\n"
    s = make(tmp_path, start=start)
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 1)})
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert fault(s) == (13, GATE_SEL)
    assert u32(s, "got_cs") == 0


def test_operand_size_prefix_far_call_ptr16_16(tmp_path):
    # lcallw: ptr16:16 operand; Xen still pushes 32-bit CS and EIP (after the 6-byte
    # instruction) on the kernel stack.
    s = make(tmp_path, call="lcallw $0x2b, $0", ret="lret $8")
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 3, params=2)})
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    eip, cs = words(s, s.symbol("frame"), 2)
    assert (eip, cs) == (s.symbol("after_call"), UCS)


def test_kernel_stack_write_fault_is_a_page_fault(tmp_path):
    # kernel_sp points into an unmapped page: Xen's push faults, #PF(write) at the slot.
    start = "movl $KDS, %ebx\n movl $0x500000, %ecx\n HYPERCALL(HC_stack_switch)\n" + TO_RING3
    s = make(tmp_path, start=start)
    install_gdt(s, {GATE_INDEX: gate(KCS, s.symbol("gate_target"), 3)})
    stop = s.run(max_insns=200_000)
    # The #PF itself is then delivered on that same kernel stack: the domain crashes,
    # as on Xen, after the gate's #PF(write) at 0x4ffffc was recorded.
    assert stop.reason is StopReason.crash
    rec = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "#PF"][0]
    assert rec.args["cr2"] == 0x4FFFFC and rec.args["error_code"] & 2
