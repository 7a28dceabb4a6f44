"""vcpu_op, callbacks and NMIs: bringing a second vcpu up and scheduling it, runstate
areas, moving vcpu_info, callback registration rules, send_nmi, VIRQ_DEBUG."""
from __future__ import annotations

import struct

from pvasm import session, u32, words
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.schedule import Runstate

SECOND_VCPU = r"""
_start:
    MAP_SHARED_INFO
    movl %cr3, %eax                   /* emulated: the folded CR3 for vcpu 1's context */
    movl %eax, ctx + 2716 + 12
    movl $3, %ebx                     /* VCPUOP_is_up(1) */
    movl $1, %ecx
    xorl %edx, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, up_before
    movl $1, %ebx                     /* VCPUOP_up before initialise: -EINVAL */
    movl $1, %ecx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_up_early
    movl $0, %ebx                     /* VCPUOP_initialise */
    movl $1, %ecx
    movl $ctx, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_init
    movl $0, %ebx                     /* again: -EEXIST */
    movl $1, %ecx
    movl $ctx, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_init2
    movl $5, %ebx                     /* register_runstate_memory_area for vcpu 0 */
    movl $0, %ecx
    movl $rs_area_arg, %edx
    HYPERCALL(HC_vcpu_op)
    movl $1, %ebx                     /* VCPUOP_up */
    movl $1, %ecx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_up
1:  movl $0, %ebx                     /* SCHEDOP_yield until vcpu 1 ran */
    xorl %ecx, %ecx
    HYPERCALL(HC_sched_op)
    cmpl $0, vcpu1_ran
    je 1b
    movl $4, %ebx                     /* get_runstate_info(1) */
    movl $1, %ecx
    movl $rs1, %edx
    HYPERCALL(HC_vcpu_op)
    POWEROFF
vcpu1_entry:
    movl $1, vcpu1_ran
    movl %ds, %eax
    movl %eax, vcpu1_ds
2:  movl $0, %ebx
    xorl %ecx, %ecx
    HYPERCALL(HC_sched_op)
    jmp 2b
.data
.balign 4
up_before: .long 0xff
rc_up_early: .long 0
rc_init: .long 0xff
rc_init2: .long 0
rc_up: .long 0xff
vcpu1_ran: .long 0
vcpu1_ds: .long 0
rs_area_arg: .long rs0, 0
rs0: .fill 44, 1, 0
rs1: .fill 44, 1, 0
.balign 4096
v1stack: .fill 1024, 4, 0
v1stack_top:
ctx:
    .fill 512, 1, 0                   /* fpu_ctxt */
    .long 0x24                        /* flags: in_kernel | online */
    .long 0, 0, 0, 0, 0, 0, 0         /* ebx ecx edx esi edi ebp eax */
    .word 0, 0                        /* error_code, entry_vector */
    .long vcpu1_entry                 /* eip */
    .word KCS, 0                      /* cs, saved_upcall_mask + pad */
    .long 0x202                       /* eflags */
    .long v1stack_top, KDS            /* esp, ss */
    .long KDS, KDS, 0, 0              /* es ds fs gs */
    .fill 2800 - 584, 1, 0            /* trap_ctxt .. vm_assist */
"""


def test_second_vcpu_up_and_scheduled(tmp_path):
    s = session(tmp_path, SECOND_VCPU, name="smp", vcpus=2)
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert u32(s, "up_before") == 0
    assert u32(s, "rc_up_early") == (-22) & 0xFFFFFFFF
    assert u32(s, "rc_init") == 0 and u32(s, "rc_init2") == (-17) & 0xFFFFFFFF
    assert u32(s, "rc_up") == 0 and u32(s, "vcpu1_ran") == 1
    assert u32(s, "vcpu1_ds") == 0xE021
    assert s.hv.scheduler.context_switches >= 2
    state, entry = struct.unpack_from("<IQ", s.read_memory(s.symbol("rs1"), 12))
    assert state == Runstate.runnable
    state0 = struct.unpack_from("<I", s.read_memory(s.symbol("rs0"), 4))[0]
    assert state0 in (Runstate.running, Runstate.runnable)
    assert {r.vcpu for r in s.trace if r.kind is TraceKind.hypercall} == {0, 1}


def test_register_vcpu_info_moves_it(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $10, %ebx                    /* VCPUOP_register_vcpu_info */
    movl $0, %ecx
    movl $arg, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc
    movl $10, %ebx
    movl $0, %ecx
    movl $arg, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc2
    POWEROFF
.data
.balign 8
arg: .long 0, 0, 0x40, 0               /* mfn (filled by the test), offset 0x40 */
rc: .long 0xff
rc2: .long 0
.balign 4096
page: .fill 4096, 1, 0
""", name="vinfo")
    hv = s.hv
    mfn = hv.guest.translate(s.symbol("page")).mfn
    hv.guest.write_u32(s.symbol("arg"), mfn)
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown
    assert u32(s, "rc") == 0 and u32(s, "rc2") == (-22) & 0xFFFFFFFF
    assert hv.vcpu_info_maddr(0) == (mfn << 12) + 0x40
    info = hv.vcpu_info(0)
    assert info.evtchn_pending_sel == 0xFFFFFFFF and info.evtchn_upcall_pending == 1
    assert info.evtchn_upcall_mask == 1                 # copied from the old location
    assert struct.unpack_from("<I", info.time)[0] % 2 == 0


def test_callback_registration_rules(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $0, %ebx
    movl $syscall32, %ecx
    HYPERCALL(HC_callback_op)
    movl %eax, r_sys32
    movl $0, %ebx
    movl $sysenter, %ecx
    HYPERCALL(HC_callback_op)
    movl %eax, r_sysenter
    movl $0, %ebx
    movl $syscall64, %ecx
    HYPERCALL(HC_callback_op)
    movl %eax, r_syscall
    movl $1, %ebx
    movl $unreg_event, %ecx
    HYPERCALL(HC_callback_op)
    movl %eax, r_unreg_event
    movl $0, %ebx
    movl $nmi, %ecx
    HYPERCALL(HC_callback_op)
    movl %eax, r_nmi
    movl $1, %ebx
    movl $unreg_nmi, %ecx
    HYPERCALL(HC_callback_op)
    movl %eax, r_unreg_nmi
    movl $KCS & ~1, %ebx              /* set_callbacks with ring-0 RPL: raised to 1 */
    movl $0x1000, %ecx
    movl $KCS & ~1, %edx
    movl $0x2000, %esi
    HYPERCALL(HC_set_callbacks)
    movl %eax, r_setcb
    POWEROFF
.data
syscall32: .word 7, 1
    .long KCS, 0x1234
sysenter: .word 5, 0
    .long KCS, 0x5678
syscall64: .word 2, 0
    .long KCS, 0x9abc
unreg_event: .word 0, 0
nmi: .word 4, 0
    .long KCS, 0x4444
unreg_nmi: .word 4, 0
r_sys32: .long 0xff
r_sysenter: .long 0xff
r_syscall: .long 0
r_unreg_event: .long 0
r_nmi: .long 0xff
r_unreg_nmi: .long 0xff
r_setcb: .long 0xff
""", name="cb")
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown
    neg = lambda e: (-e) & 0xFFFFFFFF  # noqa: E731
    assert u32(s, "r_sys32") == 0 and u32(s, "r_sysenter") == 0
    assert u32(s, "r_syscall") == neg(38) and u32(s, "r_unreg_event") == neg(22)
    assert u32(s, "r_nmi") == 0 and u32(s, "r_unreg_nmi") == 0 and u32(s, "r_setcb") == 0
    pv = s.hv.traps.pv(s.hv.current)
    assert pv.syscall32.eip == 0x1234 and pv.syscall32.mask_events
    assert pv.event.cs == 0xE019 and pv.failsafe.cs == 0xE019 and pv.failsafe.eip == 0x2000
    assert pv.trap_ctxt[2].address == 0


def test_send_nmi_and_virq_debug_delivered(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    movl $0, %ebx                     /* XENNMI_register_callback */
    movl $nmi_arg, %ecx
    HYPERCALL(28)
    movl $0, %ebx
    movl $cb, %ecx
    HYPERCALL(HC_callback_op)
    movl $1, %ebx                     /* bind VIRQ_DEBUG */
    movl $virq, %ecx
    HYPERCALL(HC_event_channel_op)
    movl $11, %ebx                    /* VCPUOP_send_nmi */
    xorl %ecx, %ecx
    xorl %edx, %edx
    HYPERCALL(HC_vcpu_op)
after_nmi:
    movb $0, shinfo+1                 /* events on; then wait for VIRQ_DEBUG */
1:  cmpl $0, debug_seen
    je 1b
    POWEROFF
nmi_handler:
    incl nmi_seen
    jmp hypercall_page + HC_iret * 32
upcall:
    movl $1, debug_seen
    movb $0, shinfo
    movl $0, shinfo+4
    movl $0, shinfo+2048
    jmp hypercall_page + HC_iret * 32
.data
nmi_arg: .long nmi_handler, 0
cb: .word 0, 0
    .long KCS, upcall
virq: .long 1, 0, 0
nmi_seen: .long 0
debug_seen: .long 0
""", name="nmi")
    stop = s.run(max_insns=2000)
    assert stop.reason is StopReason.limit
    assert u32(s, "nmi_seen") == 1
    assert s.hv.events.raise_debug_virq()              # what a debugger's "send VIRQ_DEBUG" does
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown
    assert u32(s, "debug_seen") == 1
    nmi = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "NMI"]
    assert len(nmi) == 1 and nmi[0].args["handler"] == s.symbol("nmi_handler")
    ups = [r for r in s.trace if r.kind is TraceKind.upcall]
    port = words(s, s.symbol("virq") + 8, 1)[0]
    assert ups[-1].args["ports"] == [port]
