"""pvdbg's private area (GDT/LDT windows, trampolines, TSS, Xen's stack at 0xffe00000+)
as a 32-bit PV guest sees it: on Xen 4.17 nothing of Xen is mapped there, so every
access the emulated CPU can catch is a not-present #PF at the address -- from ring 3,
writes and fetches from ring 1, and a jump onto the trampoline's iret, which must never
act as an iret."""
from __future__ import annotations

from pvasm import session, u32, user_pages, words
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.entry import AREA_VA, TRAMPOLINE_VA

PF_USER, PF_WRITE, PF_FETCH = 4, 2, 0x10

GUEST = r"""
_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    @BODY@
pf_handler:
    movl $KDS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %esp, %esi
    movl $frame, %edi
    movl $6, %ecx
    rep movsl
    POWEROFF
.balign 4096
user_code:
    @USER@
escaped:
    movl $KDS, %eax
    movl %eax, %ds
    movl $1, escaped_flag
    POWEROFF
.data
.balign 4
escaped_flag: .long 0
frame: .fill 8, 4, 0
.balign 4096
user_stack: .fill 1020, 4, 0
user_stack_top: .long 0, 0, 0, 0
.balign 4096
kstack: .fill 1024, 4, 0
kstack_top:
traps:
    .byte 14, 0
    .word KCS
    .long pf_handler
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


def run(tmp_path, body=TO_RING3, user="jmp user_code"):
    s = session(tmp_path, GUEST.replace("@BODY@", body).replace("@USER@", user))
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    rec = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "#PF"][0]
    return s, rec


def test_ring3_read_of_the_area_is_a_not_present_user_fault(tmp_path):
    s, rec = run(tmp_path, user="movl (0xffe00000), %eax")
    assert rec.args["cr2"] == AREA_VA
    assert rec.args["error_code"] == PF_USER                  # not present, read, user
    ec, eip, cs = words(s, s.symbol("frame"), 3)
    assert ec == PF_USER and eip == s.symbol("user_code") and cs & 3 == 3
    assert "private area" in rec.detail


def test_ring3_write_of_xen_stack_page(tmp_path):
    s, rec = run(tmp_path, user="movl $0, (0xfff02000)")
    assert (rec.args["cr2"], rec.args["error_code"]) == (0xFFF02000, PF_USER | PF_WRITE)


def test_ring3_jump_onto_trampoline_iret_faults_and_never_irets(tmp_path):
    # A frame that an iret would take back to `escaped` in ring 3.
    user = ("pushl $0x202\n pushl $UCS\n pushl $escaped\n"
            f"movl ${TRAMPOLINE_VA:#x}, %eax\n jmp *%eax")
    s, rec = run(tmp_path, user=user)
    assert u32(s, "escaped_flag") == 0
    assert rec.args["cr2"] == TRAMPOLINE_VA
    assert rec.args["error_code"] == PF_USER | PF_FETCH
    assert words(s, s.symbol("frame"), 2)[1] == TRAMPOLINE_VA


def test_ring1_jump_onto_trampoline_iret_faults_and_never_irets(tmp_path):
    body = ("pushl $0x202\n pushl $KCS\n pushl $escaped\n"
            f"movl ${TRAMPOLINE_VA:#x}, %eax\n jmp *%eax\n")
    s, rec = run(tmp_path, body=body)
    assert u32(s, "escaped_flag") == 0
    assert (rec.args["cr2"], rec.args["error_code"]) == (TRAMPOLINE_VA, PF_FETCH)
    assert rec.args["ring"] == 1
    assert "trampoline" in rec.detail


def test_ring1_fetch_and_write_in_the_gdt_window(tmp_path):
    s, rec = run(tmp_path, body="movl $0, (0xffe00010)\n")
    assert (rec.args["cr2"], rec.args["error_code"]) == (AREA_VA + 0x10, PF_WRITE)
    s, rec = run(tmp_path, body="movl $0xffe00100, %eax\n jmp *%eax\n")
    assert (rec.args["cr2"], rec.args["error_code"]) == (AREA_VA + 0x100, PF_FETCH)


def test_ring3_round_trips_still_work(tmp_path):
    # Xen's own iret into ring 3 runs the trampoline iret past the hook, repeatedly.
    user = "int $0x80\n jmp user_code"
    body = TO_RING3
    s = session(tmp_path, GUEST.replace("@BODY@", body).replace("@USER@", user)
                .replace(".byte 14, 0", ".byte 0x80, 3\n .word KCS\n .long int80\n .byte 14, 0")
                .replace("pf_handler:", "int80:\n incl count\n cmpl $5, count\n jne 1f\n"
                         " POWEROFF\n1: iret\npf_handler:")
                .replace("escaped_flag: .long 0", "escaped_flag: .long 0\ncount: .long 0"))
    user_pages(s, s.symbol("user_code"))
    user_pages(s, s.symbol("user_stack"))
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    assert u32(s, "count") == 5
    assert not [r for r in s.trace if r.kind is TraceKind.trap and r.name == "#PF"]
