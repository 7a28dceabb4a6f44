"""The 64-bit PV engine on tiny hand-assembled guests: syscall hypercalls, bounce frames
and the iret hypercall, 4-level pagetable pinning and baseptr switches, set_segment_base,
the hypercall page, the forced-emulation CPUID and emulated privileged instructions."""
from __future__ import annotations

import pytest

from guestbuild64 import VIRT_BASE, build_asm_guest64
from pvdbg.xen.abi64 import BounceFrame64, StartInfo64
from pvdbg.xen.builder import BuildError, BuildOptions
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.pv64.builder import build_domain64, hypercall_page_64
from pvdbg.xen.pv64.hypervisor import Hypervisor64
from pvdbg.xen.pv64.layout import (FLAT_KERNEL_CS64, M2P_L4_SLOT, MACH2PHYS_VIRT_START,
                                   PERDOMAIN_L4_SLOT, guest_addr_ok)
from pvdbg.xen.pv64.mm import PageType
from pvdbg.xen.pv64.paging import walk_4level

# Macros: hypercalls through syscall, a console line, shutdown.
MACROS = r"""
.macro HC nr
    mov $\nr, %eax
    syscall
.endm
.macro PRINT label, len
    xor %edi, %edi
    mov $\len, %esi
    lea \label(%rip), %rdx
    HC 18
.endm
.macro POWEROFF
    mov $2, %edi
    lea poweroff_reason(%rip), %rsi
    HC 29
    ud2
.endm
"""
DATA = r"""
.data
poweroff_reason: .long 0
"""


def boot(tmp_path, body: str, *, memory_mib: int = 16, hypercall_page: bool = False,
         cmdline: str = "", initrd: bytes = b"") -> Hypervisor64:
    path = build_asm_guest64(tmp_path, MACROS + body + DATA, hypercall_page=hypercall_page)
    image = load_guest_image(str(path), allow_64bit=True)
    built = build_domain64(image, BuildOptions(memory_mib=memory_mib, cmdline=cmdline),
                           initrd=initrd)
    return Hypervisor64(built, image.symbols, hypercall_page_va=image.hypercall_page_va)


def run(hv: Hypervisor64, insns: int = 100_000) -> None:
    hv.cpu.run(insns)
    assert hv.internal_error is None, hv.internal_error


def test_console_io_through_syscall_and_registers_after(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    mov $0x1111, %rbx
    PRINT msg, 6
    mov %rcx, %r12          # Xen returns like sysret: RCX = next RIP, R11 = RFLAGS
    lea after(%rip), %r13
after:
    POWEROFF
msg: .ascii "hello\n"
""")
    assert hv.cpu.cpl == 3
    run(hv)
    assert bytes(hv.domain.console) == b"hello\n"
    assert hv.domain.shutdown_reason == 0
    regs = hv.cpu.read_many(("rbx", "r12", "r13"))
    assert regs["rbx"] == 0x1111
    assert regs["r12"] == regs["r13"] - 10          # the mov right after the syscall
    calls = [r for r in hv.trace.last(10) if r.kind.name == "hypercall"]
    assert [c.name for c in calls] == ["console_io", "sched_op"]
    assert calls[0].symbol == "_start+0x1a"


def test_start_info_and_initial_layout(tmp_path):
    hv = boot(tmp_path, "\n.globl _start\n_start:\n    POWEROFF\n", cmdline="console=hvc0",
              initrd=b"MODULE" * 1000)
    rsi = hv.cpu.read("rsi")
    assert rsi == hv.layout.start_info_va
    si = StartInfo64.from_bytes(hv.guest.read(rsi, StartInfo64.SIZE))
    assert si.magic.rstrip(b"\0") == b"xen-3.0-x86_64"
    assert si.cmd_line.rstrip(b"\0") == b"console=hvc0"
    assert si.nr_pages == 16 * 256
    assert si.pt_base == hv.layout.pt_base_va
    assert hv.guest.read(si.mod_start, 6) == b"MODULE" and si.mod_len == 6000
    # the p2m holds 8-byte MFNs; the read-only M2P at its architectural address maps back
    pfn = 0x105
    mfn = hv.guest.read_u64(si.mfn_list + pfn * 8)
    walk = walk_4level(hv.memory, hv.cr3, MACH2PHYS_VIRT_START + mfn * 8, user=True)
    assert hv.memory.read_u64(walk.maddr) == pfn and not walk.writable
    l4 = hv.memory.read_u64(hv.cr3 + M2P_L4_SLOT * 8)
    assert l4 & 4 and not l4 & 2                    # user-readable, never writable
    assert not hv.memory.read_u64(hv.cr3 + PERDOMAIN_L4_SLOT * 8) & 4   # supervisor only
    assert hv.mm.type_name(hv.built.l4_mfn) == "l4" and hv.built.l4_mfn in hv.mm.pinned
    assert hv.cpu.read("rsp") == hv.layout.initial_esp
    assert not guest_addr_ok(MACH2PHYS_VIRT_START + 8) and guest_addr_ok(VIRT_BASE)


def test_trap_bounce_frame_and_iret_hypercall(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    lea traps(%rip), %rdi
    HC 0                    # set_trap_table
    mov $0x77, %r11
    mov $0x66, %rcx
    mov %rsp, %r14
    ud2
back:
    mov %rsp, %r15
    PRINT msg, 5
    POWEROFF
ud_handler:
    mov %rsp, %rbx          # the bounce frame: RCX R11 RIP CS RFLAGS RSP SS
    mov 16(%rsp), %r8
    pop %rcx
    pop %r11
    addq $2, (%rsp)         # skip the ud2
    pushq $0                # iret flags
    push %rcx
    push %r11
    push %rax
    HC 23
msg: .ascii "back\n"
.balign 16
traps:
    .byte 6, 0
    .word 0xe033
    .long 0
    .quad ud_handler
    .quad 0, 0
""")
    run(hv)
    assert bytes(hv.domain.console) == b"back\n", hv.domain.crash
    regs = hv.cpu.read_many(("rbx", "r8", "r14", "r15", "rcx", "r11"))
    frame_va = regs["rbx"]
    assert frame_va == ((regs["r14"] & ~15) - BounceFrame64.SIZE)
    assert regs["r15"] == regs["r14"]
    traps = [r for r in hv.trace.last(20) if r.kind.name == "trap"]
    assert traps and traps[0].name == "#UD" and traps[0].args["frame"] == frame_va


def test_bounce_frame_contents(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    lea traps(%rip), %rdi
    HC 0
    mov $0x77, %r11
    mov $0x66, %rcx
    int3
    hlt
bp_handler:
    mov %rsp, %rbx
    POWEROFF
.balign 16
traps:
    .byte 3, 3
    .word 0xe033
    .long 0
    .quad bp_handler
    .quad 0, 0
""")
    run(hv)
    frame_va = hv.cpu.read("rbx")
    frame = BounceFrame64.from_bytes(hv.guest.read(frame_va, BounceFrame64.SIZE))
    assert (frame.rcx, frame.r11) == (0x66, 0x77)
    assert frame.cs == FLAT_KERNEL_CS64 & ~3            # kernel mode shows RPL 0
    assert frame.saved_upcall_mask == 1                 # events start masked
    assert not frame.rflags & (1 << 9)                  # IF mirrors !mask
    assert hv.symbols.lookup(frame.rip)[0] == "_start"  # int3 frames hold the next RIP


def test_pin_l4_and_new_baseptr(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    mov %rsi, %rbp                   # start_info
    mov 88(%rbp), %rsi               # pt_base: the builder's L4
    lea new_l4(%rip), %rdi
    mov $512, %ecx
    rep movsq                        # copy it
    # new_l4's mfn: p2m[(va - VIRT_BASE) >> 12]
    lea new_l4(%rip), %rax
    movabs $0xffffffff80000000, %rdx
    sub %rdx, %rax
    shr $12, %rax
    mov 104(%rbp), %rdx              # mfn_list
    mov (%rdx,%rax,8), %r12          # mfn of new_l4
    # make it read-only: update_va_mapping(new_l4, mfn << 12 | P | A, UVMF_INVLPG)
    lea new_l4(%rip), %rdi
    mov %r12, %rsi
    shl $12, %rsi
    or $0x21, %rsi
    mov $2, %edx
    HC 14
    mov %rax, %r13
    # pin it as an L4, then switch to it
    mov %r12, op_arg1(%rip)
    movl $3, op_cmd(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $0x7ff0, %r10d
    HC 26
    mov %rax, %r14
    movl $5, op_cmd(%rip)
    lea op_cmd(%rip), %rdi
    HC 26
    mov %rax, %r15
    PRINT msg, 9
    # writing to the now read-only L4 faults
    lea traps(%rip), %rdi
    HC 0
    movq $0, new_l4(%rip)
    hlt
pf_handler:
    PRINT pfmsg, 3
    POWEROFF
msg: .ascii "switched\n"
pfmsg: .ascii "pf\n"
.balign 16
traps:
    .byte 14, 0
    .word 0xe033
    .long 0
    .quad pf_handler
    .quad 0, 0
.data
.balign 8
op_cmd: .long 0, 0
op_arg1: .quad 0
op_arg2: .quad 0
.balign 4096
new_l4: .skip 4096
""")
    run(hv)
    assert bytes(hv.domain.console) == b"switched\npf\n", hv.domain.crash
    regs = hv.cpu.read_many(("r12", "r13", "r14", "r15"))
    assert (regs["r13"], regs["r14"], regs["r15"]) == (0, 0, 0)
    mfn = regs["r12"]
    assert hv.cr3 == mfn << 12
    assert hv.mm.type_name(mfn) == "l4" and mfn in hv.mm.pinned
    assert hv.mm.count[mfn] == 2                       # the pin and the vcpu's baseptr
    assert hv.current.pv.kernel_table_mfn == mfn
    # Xen filled its own slots in the new L4
    assert hv.memory.read_u64((mfn << 12) + M2P_L4_SLOT * 8) == hv.built.xen_l4_entries[M2P_L4_SLOT]
    pf = [r for r in hv.trace.last(30) if r.kind.name == "trap"]
    assert pf[-1].name == "#PF" and pf[-1].args["error_code"] & 2


def test_pinning_a_writable_table_fails(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    mov %rsi, %rbp
    lea new_l4(%rip), %rax
    movabs $0xffffffff80000000, %rdx
    sub %rdx, %rax
    shr $12, %rax
    mov 104(%rbp), %rdx
    mov (%rdx,%rax,8), %r12
    # the frame is still mapped writable: pinning it as an L1 must fail
    mov %r12, op_arg1(%rip)
    movl $0, op_cmd(%rip)
    lea op_cmd(%rip), %rdi
    mov $1, %esi
    lea done(%rip), %rdx
    mov $0x7ff0, %r10d
    HC 26
    mov %rax, %r14
    POWEROFF
.data
.balign 8
op_cmd: .long 0, 0
op_arg1: .quad 0
op_arg2: .quad 0
done: .long 0x55
.balign 4096
new_l4: .skip 4096
""")
    run(hv)
    assert hv.cpu.read("r14") == (-22) & (2**64 - 1)           # -EINVAL
    rec = [r for r in hv.trace.last(10) if r.name == "mmuext_op"][0]
    assert rec.error == "-EINVAL"


def test_set_segment_base_and_gs_swap(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    mov $2, %edi                     # SEGBASE_GS_KERNEL
    movabs $0xffffffff80123000, %rsi
    HC 25
    xor %edi, %edi                   # SEGBASE_FS
    mov $0x4000, %esi
    HC 25
    mov $1, %edi                     # SEGBASE_GS_USER (shadow while in kernel mode)
    mov $0x5000, %esi
    HC 25
    mov $9, %edi
    xor %esi, %esi
    HC 25
    mov %rax, %r12
    POWEROFF
""")
    run(hv)
    regs = hv.cpu.read_many(("gs_base", "fs_base", "r12"))
    assert regs["gs_base"] == 0xFFFFFFFF80123000 and regs["fs_base"] == 0x4000
    assert hv.current.pv.gs_base_user == 0x5000
    assert regs["r12"] == (-22) & (2**64 - 1)
    hv.traps.toggle_guest_mode(hv.current)           # kernel -> user swaps the GS bases
    assert hv.cpu.read("gs_base") == 0x5000


def test_hypercall_page_stubs(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    xor %edi, %edi
    mov $4, %esi
    lea msg(%rip), %rdx
    mov $0x1234, %rcx
    call hypercall_page + 18 * 32
    mov %rcx, %r12                   # the stub preserves RCX and R11
    POWEROFF
msg: .ascii "via\n"
""", hypercall_page=True)
    run(hv)
    assert bytes(hv.domain.console) == b"via\n"
    assert hv.cpu.read("r12") == 0x1234
    page = hypercall_page_64()
    assert page[23 * 32:23 * 32 + 4] == b"\x51\x41\x53\x50"   # iret: push rcx, r11, rax
    rec = [r for r in hv.trace.last(10) if r.kind.name == "hypercall"][0]
    assert rec.symbol == "_start+0x15"                   # the call into the stub


def test_forced_cpuid_and_privileged_instructions(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    xor %eax, %eax
    ud2
    .ascii "xen"
    cpuid
    mov %ebx, %r12d
    mov $0x40000000, %eax
    ud2
    .ascii "xen"
    cpuid
    mov %ebx, %r13d
    mov %cr4, %r14
    mov $0xc0000080, %ecx
    rdmsr
    mov %eax, %r15d
    rdtsc
    POWEROFF
""")
    run(hv)
    assert hv.domain.crash is None
    regs = hv.cpu.read_many(("r12", "r13", "r14", "r15"))
    assert regs["r13"] == 0x566E6558                     # "XenV"
    assert regs["r12"] != 0
    assert regs["r14"] & 0x20                            # CR4.PAE
    assert regs["r15"] & (1 << 10)                       # EFER.LMA
    names = [r.name for r in hv.trace.last(20) if r.kind.name == "emulation"]
    assert names[:2] == ["cpuid", "cpuid"] and "rdmsr" in names and "rdtsc" in names


def test_unhandled_fault_crashes_with_a_report(tmp_path):
    hv = boot(tmp_path, "\n.globl _start\n_start:\n    movq $1, 0x10\n")
    run(hv)
    crash = hv.domain.crash
    assert crash is not None and "#PF" in crash.reason
    assert crash.instruction.startswith("mov")


def test_builder_refuses_too_little_memory(tmp_path):
    path = build_asm_guest64(tmp_path, MACROS + "\n.globl _start\n_start:\n    hlt\n.data\n"
                             ".skip 8*1024*1024\n")
    image = load_guest_image(str(path), allow_64bit=True)
    with pytest.raises(BuildError, match="more than --memory 8"):
        build_domain64(image, BuildOptions(memory_mib=8))


def test_types_drop_when_unpinned(tmp_path):
    hv = boot(tmp_path, "\n.globl _start\n_start:\n    POWEROFF\n")
    mm = hv.mm
    l4 = hv.built.l4_mfn
    l1_entry = hv.memory.read_u64((l4 << 12) + 511 * 8)
    l3 = (l1_entry & 0x000FFFFFFFFFF000) >> 12
    assert mm.type_name(l3) == "l3"
    with pytest.raises(Exception):
        mm.get_page_type(l3, PageType.writable)
    mm.unpin(l4)
    mm.put_page_type(l4)                               # the vcpu's reference
    assert mm.type_name(l4) == "none" and mm.type_name(l3) == "none"


def test_session_picks_the_64bit_engine(tmp_path):
    from pvdbg.session import Session, SessionOptions, SessionError, StopReason
    from pvdbg.xen.pv64.hypervisor import Hypervisor64
    path = build_asm_guest64(tmp_path, MACROS + r"""
.globl _start
_start:
    PRINT msg, 3
    POWEROFF
msg: .ascii "64\n"
""" + DATA)
    session = Session.open(path, SessionOptions(memory_mib=16, cmdline="x"))
    assert isinstance(session.hv, Hypervisor64)
    stop = session.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown and session.console_text == "64\n"
    assert stop.icount == session.cpu.icount and stop.eip >> 32 == 0xFFFFFFFF
    regs = session.registers()
    assert regs["rip"] == stop.eip and regs["cs"] == FLAT_KERNEL_CS64
    assert "event channel port 2" in session.console_send(b"x")
    session.close()
    from pvdbg.xen.devices import DiskSpec
    with pytest.raises(SessionError, match="nonexistent"):      # disks are served; this one
        Session.open(path, SessionOptions(memory_mib=16,       # cannot be opened
                                          disks=(DiskSpec("/nonexistent/disk.img"),)))


def test_session_step_and_breakpoint_on_64bit(tmp_path):
    from pvdbg.session import Session, SessionOptions, StopReason
    path = build_asm_guest64(tmp_path, MACROS + r"""
.globl _start
_start:
    nop
    nop
target:
    PRINT msg, 3
    POWEROFF
msg: .ascii "bp\n"
""" + DATA)
    session = Session.open(path, SessionOptions(memory_mib=16))
    target = session.symbol("target")
    assert target is not None and target >> 32 == 0xFFFFFFFF
    stop = session.step(1)
    assert stop.icount == 1
    session.add_breakpoint(target)
    stop = session.run(max_insns=1000)
    assert stop.reason is StopReason.breakpoint and stop.eip == target
    stop = session.run(max_insns=1000)
    assert stop.reason is StopReason.shutdown and session.console_text == "bp\n"


def test_initrd_is_refused_for_32bit_guests():
    from pvdbg.session import Session, SessionError, SessionOptions
    with pytest.raises(SessionError, match="64-bit"):
        Session.open(None, SessionOptions(initrd="/nonexistent"))


def test_emulated_rdtsc_costs_system_time(tmp_path):
    from pvdbg.xen.pv64.traps import RDTSC_TRAP_NS
    from pvdbg.xen.time import ns_to_tsc
    hv = boot(tmp_path, r"""
.globl _start
_start:
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r12
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r13
    POWEROFF
""")
    run(hv)
    regs = hv.cpu.read_many(("r12", "r13"))
    delta = regs["r13"] - regs["r12"]
    assert ns_to_tsc(RDTSC_TRAP_NS) <= delta < ns_to_tsc(RDTSC_TRAP_NS + 100)


def test_writable_pagetables_emulate_l1_writes(tmp_path):
    hv = boot(tmp_path, r"""
.globl _start
_start:
    mov 88(%rsi), %rbx               # pt_base: L4, L3, L2, then the first L1
    lea 3*4096(%rbx), %rbx
    lea scratch(%rip), %rax
    movabs $0xffffffff80000000, %rdx
    sub %rdx, %rax
    shr $12, %rax
    lea (%rbx,%rax,8), %rax          # &L1[scratch]
    mov (%rax), %r12                 # the entry (the L1 is readable)
    mov %r12, %r13
    and $-3, %r13
    mov %r13, (%rax)                 # ptwr: scratch becomes read-only
    mov %r12, %r14
    xchg %r14, (%rax)                # ptwr: back to writable, r14 = the read-only entry
    mov %rax, %rbx
    xor %eax, %eax                   # cmpxchg expecting 0 fails: rax = the entry
    mov %r13, %rcx
    lock cmpxchg %rcx, (%rbx)
    mov %rax, %r15
    lock andb $0xfd, (%rbx)          # clear_bit(_PAGE_BIT_RW) as Linux writes it
    mov (%rbx), %r8
    lock btsq $1, (%rbx)             # and set it again
    movq $1, scratch(%rip)           # writable again
    POWEROFF
.data
.balign 4096
scratch: .quad 0
""")
    run(hv)
    assert hv.domain.crash is None, hv.domain.crash
    regs = hv.cpu.read_many(("r8", "r12", "r13", "r14", "r15"))
    assert regs["r12"] & 2 and regs["r14"] == regs["r13"] and regs["r15"] == regs["r12"]
    assert regs["r8"] == regs["r13"]
    records = [r for r in hv.trace.last(50) if r.name == "ptwr"]
    assert [r.args["insn"].split()[0] for r in records] == ["mov", "xchg", "cmpxchg", "and",
                                                            "bts"]
    assert hv.symbols.lookup(records[0].eip)[0] == "_start"
