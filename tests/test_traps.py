"""Trap delivery as Xen does it: bounce-frame layout from ring 1 and ring 3, software
interrupt rules, int 0x80 direct trap, #NM with fpu_taskswitch, hardware breakpoints,
the iret hypercall, the failsafe callback, and crashes with a report."""
from __future__ import annotations

import pytest

from pvasm import session, u32, user_pages, words
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.constants import FLAT_RING1_CS, FLAT_RING1_DS
from pvdbg.xen.traps import GuestFrame, vector_name

KCS, KDS, UCS, UDS = 0xE019, 0xE021, 0xE02B, 0xE033

# Records every frame word the handler finds, then powers off.
COPY_FRAME = r"""
copy_frame:                 /* esi = frame va, ecx = words */
    movl %esi, saved_esp
    movl $frame, %edi
    rep movsl
    POWEROFF
"""

DATA = r"""
.data
.balign 4
saved_esp: .long 0
frame: .fill 16, 4, 0
.balign 4096
user_stack: .fill 1024, 4, 0
user_stack_top:
.balign 4096
kstack: .fill 1024, 4, 0
kstack_top:
"""


def run(s, insns=200_000):
    stop = s.run(max_insns=insns)
    return stop


def trap_records(s, name=None):
    return [r for r in s.trace if r.kind is TraceKind.trap and (name is None or r.name == name)]


def test_page_fault_frame_from_ring1(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
fault_insn:
    movl (0x500000), %eax
    POWEROFF
pf_handler:
    movl %esp, %esi
    movl $4, %ecx
    jmp copy_frame
""" + COPY_FRAME + DATA + r"""
traps:
    .byte 14, 0
    .word KCS
    .long pf_handler
    .long 0, 0
""")
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    esp0 = s.hv.layout.initial_esp
    assert u32(s, "saved_esp") == esp0 - 16
    ec, eip, cs_word, eflags = words(s, s.symbol("frame"), 4)
    assert ec == 0                                   # read of a not-present page, kernel
    assert eip == s.symbol("fault_insn")
    assert cs_word == FLAT_RING1_CS | 1 << 16         # events were masked at boot
    assert not eflags & 0x200                         # IF = !saved_mask
    assert s.hv.vcpu_info(0).cr2 == 0x500000
    rec = trap_records(s, "#PF")[0]
    assert rec.args["cr2"] == 0x500000 and rec.args["error_code"] == 0
    assert rec.args["handler"] == s.symbol("pf_handler")


def test_int80_from_ring3_lands_on_kernel_stack(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    pushl $UDS
    pushl $user_stack_top
    pushl $0x202
    pushl $UCS
    pushl $user_code
    jmp hypercall_page + HC_iret * 32
syscall_handler:
    movl %esp, %esi
    movl $5, %ecx
    jmp copy_frame
.balign 4096
user_code:
    movl $42, %eax
    int $0x80
after_int:
    jmp user_code
""" + COPY_FRAME + DATA + r"""
traps:
    .byte 0x80, 3
    .word KCS
    .long syscall_handler
    .long 0, 0
""")
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "saved_esp") == s.symbol("kstack_top") - 20
    eip, cs_word, eflags, esp, ss = words(s, s.symbol("frame"), 5)
    assert eip == s.symbol("after_int")
    assert cs_word & 0xFFFF == UCS
    assert esp == s.symbol("user_stack_top") and ss == UDS
    assert eflags & 0x200                            # iret unmasked events (IF=1)
    rec = trap_records(s, "int 0x80")[0]
    assert "int80 direct trap" in rec.detail and "stack_switch" in rec.detail
    assert rec.args["ring"] == 3


SOFTINT = r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    int $0x40
ring1_back:
    pushl $UDS
    pushl $user_stack_top
    pushl $0x202
    pushl $UCS
    pushl $user_code
    jmp hypercall_page + HC_iret * 32
int40_handler:
    incl count40
    iret
gp_handler:
    movl %esp, %esi
    movl $6, %ecx
    jmp copy_frame
.balign 4096
user_code:
    int3
    int $0x40
user_after:
    jmp user_code
bp_handler:
    incl count3
    iret
""" + COPY_FRAME + DATA + r"""
count40: .long 0
count3: .long 0
traps:
    .byte 0x40, 1
    .word KCS
    .long int40_handler
    .byte 13, 0
    .word KCS
    .long gp_handler
    .byte 3, 0
    .word KCS
    .long bp_handler
    .long 0, 0
"""


def test_software_interrupt_dpl_rules(tmp_path):
    """int $0x40 with DPL 1: allowed from ring 1, #GP((0x40<<3)|2) from ring 3, EIP at
    the int.  int3 is delivered whatever its DPL."""
    s = session(tmp_path, SOFTINT)
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "count40") == 1 and u32(s, "count3") == 1
    ec, eip, cs_word, _eflags, esp, ss = words(s, s.symbol("frame"), 6)
    assert ec == (0x40 << 3) | 2
    assert eip == s.symbol("user_after") - 2         # the faulting int instruction
    assert cs_word & 0xFFFF == UCS and ss == UDS
    gp = trap_records(s, "#GP")[0]
    assert "DPL 1" in gp.detail


def test_no_handler_crashes_with_report(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl (0x700000), %eax
""")
    stop = run(s)
    assert stop.reason is StopReason.crash
    why = s.crash.reason
    assert "#PF" in why and "no handler" in why and "0x700000" in why


def test_fault_while_delivering_crashes(tmp_path):
    """The handler's stack is not mapped: Xen cannot write the frame (domain_crash)."""
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $0x600000, %esp
    ud2
handler:
    POWEROFF
.data
traps:
    .byte 6, 0
    .word KCS
    .long handler
    .long 0, 0
""")
    stop = run(s)
    assert stop.reason is StopReason.crash
    assert "fault while delivering #UD" in s.crash.reason
    assert "cannot be written" in s.crash.reason


def test_interrupt_gate_flag_masks_events(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $shared, %eax
    movb $0, 1(%eax)            /* not really shared_info: cleared below by Python */
    int $0x41
    POWEROFF
handler:
    movl %esp, %esi
    movl $3, %ecx
    jmp copy_frame
""" + COPY_FRAME + DATA + r"""
shared: .long 0
traps:
    .byte 0x41, 1 | 4
    .word KCS
    .long handler
    .long 0, 0
""")
    s.hv.memory.write(s.hv.vcpu_info_maddr(0) + 1, b"\x00")     # events enabled
    stop = run(s)
    assert stop.reason is StopReason.shutdown
    _eip, cs_word, eflags = words(s, s.symbol("frame"), 3)
    assert cs_word >> 16 == 0 and eflags & 0x200    # saved mask 0 -> IF set in the frame
    assert s.hv.vcpu_info(0).evtchn_upcall_mask == 1


def test_nm_after_fpu_taskswitch(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $1, %ebx
    HYPERCALL(HC_fpu_taskswitch)
fpu_insn:
    fninit
    movl %cr0, %eax                 /* emulated: TS is clear again */
    movl %eax, cr0_after
    POWEROFF
nm_handler:
    incl nm_count
    iret
""" + DATA + r"""
nm_count: .long 0
cr0_after: .long 0
traps:
    .byte 7, 0
    .word KCS
    .long nm_handler
    .long 0, 0
""")
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "nm_count") == 1
    assert not u32(s, "cr0_after") & 8
    assert trap_records(s, "#NM")[0].args["vector"] == 7


def test_iret_hypercall_restores_mask_and_eax(tmp_path):
    s = session(tmp_path, r"""
_start:
    pushl $0x0                    /* EFLAGS without IF: events stay masked */
    pushl $KCS
    pushl $target
    movl $0x1234, %eax
    jmp hypercall_page + HC_iret * 32
target:
    movl %eax, eax_after
    movl %esp, esp_after
    POWEROFF
""" + DATA + r"""
eax_after: .long 0
esp_after: .long 0
""")
    esp0 = s.hv.layout.initial_esp
    stop = run(s)
    assert stop.reason is StopReason.shutdown
    assert u32(s, "eax_after") == 0x1234
    assert u32(s, "esp_after") == esp0
    assert s.hv.vcpu_info(0).evtchn_upcall_mask == 1
    rec = [r for r in s.trace if r.name == "iret"][0]
    assert rec.result == 0x1234


def test_failsafe_callback_on_bad_iret_ss(tmp_path):
    """iret to ring 3 with a not-present SS: Xen's final iret faults and the guest's
    failsafe callback gets DS, ES, FS, GS on top of the frame."""
    s = session(tmp_path, r"""
_start:
    movl $cb, %ebx
    movl $0, %ecx
    movl $cb, %ecx
    movl $0, %ebx
    movl $HC_callback_op, %eax
    movl $0, %ebx
    movl $cb, %ecx
    HYPERCALL(HC_callback_op)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    pushl $0x1234 | 3             /* SS: nothing there */
    pushl $user_stack_top
    pushl $0x202
    pushl $UCS
    pushl $user_code
    jmp hypercall_page + HC_iret * 32
failsafe:
    movl %esp, %esi
    movl $9, %ecx
    jmp copy_frame
.balign 4096
user_code:
    jmp user_code
""" + COPY_FRAME + DATA + r"""
cb:
    .word 1, 0                    /* CALLBACKTYPE_failsafe, no flags */
    .long KCS, failsafe
""")
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "saved_esp") == s.symbol("kstack_top") - 36
    ds, es, fs, gs, eip, cs_word, _eflags, esp, ss = words(s, s.symbol("frame"), 9)
    assert (ds, es, fs, gs) == (KDS, KDS, KDS, KDS)
    assert eip == s.symbol("user_code") and cs_word & 0xFFFF == UCS
    assert esp == s.symbol("user_stack_top") and ss == 0x1237
    rec = trap_records(s, "failsafe")[0]
    assert rec.args["vector"] in (11, 12, 13)


def test_hardware_breakpoint_dr0(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $0, %ebx
    movl $target, %ecx
    HYPERCALL(HC_set_debugreg)
    movl $7, %ebx
    movl $1, %ecx                 /* L0, execute, 1 byte */
    HYPERCALL(HC_set_debugreg)
    nop
target:
    incl hits
    movl $6, %ebx
    HYPERCALL(HC_get_debugreg)
    movl %eax, dr6
    POWEROFF
db_handler:
    incl db_count
    movl (%esp), %eax
    movl %eax, db_eip
    iret
""" + DATA + r"""
hits: .long 0
db_count: .long 0
db_eip: .long 0
dr6: .long 0
traps:
    .byte 1, 0
    .word KCS
    .long db_handler
    .long 0, 0
""")
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "db_count") == 1                    # RF lets the instruction run after iret
    assert u32(s, "db_eip") == s.symbol("target")
    assert u32(s, "hits") == 1
    assert u32(s, "dr6") & 1


def test_data_breakpoint_is_a_trap(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $1, %ebx
    movl $watched, %ecx
    HYPERCALL(HC_set_debugreg)
    movl $7, %ebx
    movl $(4 | (1 << 20) | (3 << 22)), %ecx     /* L1, write, 4 bytes */
    HYPERCALL(HC_set_debugreg)
    movl $5, watched
after_store:
    nop
    POWEROFF
db_handler:
    movl (%esp), %eax
    movl %eax, db_eip
    iret
""" + DATA + r"""
watched: .long 0
db_eip: .long 0
traps:
    .byte 1, 0
    .word KCS
    .long db_handler
    .long 0, 0
""")
    stop = run(s)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "db_eip") == s.symbol("after_store")
    assert u32(s, "watched") == 5


def test_set_debugreg_errors(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $8, %ebx
    movl $0, %ecx
    HYPERCALL(HC_set_debugreg)
    movl %eax, r1
    movl $7, %ebx
    movl $(1 << 13), %ecx            /* GD */
    HYPERCALL(HC_set_debugreg)
    movl %eax, r2
    movl $7, %ebx
    movl $(1 | (2 << 16)), %ecx      /* I/O breakpoint without CR4.DE */
    HYPERCALL(HC_set_debugreg)
    movl %eax, r3
    POWEROFF
.data
r1: .long 0
r2: .long 0
r3: .long 0
""")
    run(s)
    assert [u32(s, n) - (1 << 32) for n in ("r1", "r2", "r3")] == [-19, -1, -1]


def test_bounce_unit_layout_and_ring3_stack(tmp_path):
    """Traps.bounce on its own: the words written and the handler frame returned."""
    s = session(tmp_path, "_start: POWEROFF\n.data\n.balign 4096\nstk: .fill 1024,4,0\nstk_top:\n")
    hv = s.hv
    top = s.symbol("stk_top")
    vcpu = hv.current
    vcpu.kernel_ss, vcpu.kernel_sp = FLAT_RING1_DS, top
    frame = GuestFrame(eip=0x1000, cs=UCS, eflags=0x246 | 0x100, esp=0x2000, ss=UDS)
    new = hv.traps.bounce(vcpu, frame, FLAT_RING1_CS, 0xC0001234, error_code=0x55,
                          mask_events=True)
    assert new.esp == top - 24 and new.ss == FLAT_RING1_DS
    assert new.eip == 0xC0001234 and new.cs == FLAT_RING1_CS
    assert not new.eflags & 0x100                   # TF cleared on delivery
    assert words(s, top - 24, 6) == [0x55, 0x1000, UCS | 1 << 16, 0x46 | 0x100, 0x2000, UDS]
    # Ring 1 with failsafe segments: on the current stack, segments first.
    frame1 = GuestFrame(eip=0x3000, cs=FLAT_RING1_CS, eflags=0x202, esp=top - 64, ss=KDS)
    new1 = hv.traps.bounce(vcpu, frame1, FLAT_RING1_CS, 0xC0005678,
                           failsafe_segments=(1, 2, 3, 4))
    assert new1.esp == top - 64 - 28
    assert words(s, new1.esp, 7)[:5] == [1, 2, 3, 4, 0x3000]


@pytest.mark.parametrize("vector,name", [(0, "#DE"), (13, "#GP"), (14, "#PF"), (0x80, "int 0x80")])
def test_vector_names(vector, name):
    assert vector_name(vector) == name


def test_scenario_forgotten_stack_switch(tmp_path):
    from pathlib import Path
    from guestbuild import build_asm_guest
    from pvdbg.session import Session, SessionOptions
    from pvdbg.xen.image import load_guest_image
    src = Path(__file__).resolve().parent.parent / "guests" / "scenarios" / "forgotten_stack_switch.S"
    elf = build_asm_guest(tmp_path, src.read_text(), "forgotten_stack_switch")
    s = Session(load_guest_image(str(elf)), SessionOptions())
    for name in ("task1", "ustack1", "ustack2"):
        user_pages(s, s.symbol(name))
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.crash
    assert "#PF" in s.crash.reason and "0x2badd00d" in s.crash.reason
    switch = [r for r in s.trace if r.name == "stack_switch"]
    assert len(switch) == 1
    syscalls = trap_records(s, "int 0x80")
    assert len(syscalls) == 2
    kstack1_top = s.symbol("kstack1_top")
    for rec in syscalls:                      # both tasks' frames land on kernel stack 1
        assert rec.args["frame"] == kstack1_top - 20
        assert f"from stack_switch at trace seq {switch[0].seq}" in rec.detail
