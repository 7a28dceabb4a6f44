"""Xen time for a PV guest: vcpu_time_info and wallclock publication, the TSC through
CR4.TSD, set_timer_op / singleshot / periodic timers waking a blocked vcpu, poll
timeouts, and the icount clock skipping idle time."""
from __future__ import annotations

import struct

from pvasm import session, u32, words
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.time import (DEFAULT_PERIOD_NS, TIMER_SLOP_NS, TSC_KHZ, WALLCLOCK_EPOCH_S,
                            sanitise_timeout)

# Event callback that counts VIRQ_TIMER upcalls and acknowledges every pending port.
TIMER_GUEST = r"""
setup_events:
    movl $cb, %ecx
    movl $0, %ebx
    HYPERCALL(HC_callback_op)
    movl $1, %ebx                      /* EVTCHNOP_bind_virq */
    movl $virq, %ecx
    HYPERCALL(HC_event_channel_op)
    ret
upcall:
    pushal
    movb $0, shinfo
    xorl %eax, %eax
    xchgl %eax, shinfo+4
    xorl %eax, %eax
    xchgl %eax, shinfo+2048
    incl ticks
    popal
    jmp hypercall_page + HC_iret * 32
block:
    movl $1, %ebx                      /* SCHEDOP_block */
    movl $0, %ecx
    HYPERCALL(HC_sched_op)
    ret
.data
cb: .word 0, 0
    .long KCS, upcall
virq: .long 0, 0, 0                    /* VIRQ_TIMER, vcpu 0, port out */
ticks: .long 0
"""


def time_info(s):
    raw = s.hv.memory.read(s.hv.vcpu_info_maddr(0) + 32, 32)
    version, _pad, tsc, system, mul, shift, flags = struct.unpack("<IIQQIbB2x", raw)
    return version, tsc, system, mul, shift, flags


def test_time_info_and_wallclock_published(tmp_path):
    s = session(tmp_path, "_start: jmp _start\n", name="idle")
    version, tsc, system, mul, shift, flags = time_info(s)
    assert version % 2 == 0 and version > 0
    assert (tsc << shift) * mul >> 32 == system if shift >= 0 else True
    assert mul == 1 << 31 and shift == 0 and flags & 1
    info = s.hv.shared_info()
    assert info.wc_version % 2 == 0 and info.wc_sec == WALLCLOCK_EPOCH_S and info.wc_nsec == 0


def test_rdtsc_is_emulated_from_the_instruction_count(tmp_path):
    s = session(tmp_path, r"""
_start:
    rdtsc
    movl %eax, t0
    nop
    nop
    nop
    rdtsc
    movl %eax, t1
    movl %cr4, %eax
    movl %eax, cr4
    POWEROFF
.data
t0: .long 0
t1: .long 0
cr4: .long 0
""", name="tsc")
    stop = s.run(max_insns=1000)
    assert stop.reason is StopReason.shutdown
    # Four instructions retire between the two reads (movl + 3 nops); 2 TSC ticks per ns.
    assert u32(s, "t1") - u32(s, "t0") == 4 * TSC_KHZ // 1_000_000
    assert not u32(s, "cr4") & 4                       # the guest's virtual CR4.TSD is clear
    assert [r.name for r in s.trace if r.kind is TraceKind.emulation][:2] == ["rdtsc", "rdtsc"]


def test_set_timer_op_wakes_blocked_vcpu_and_skips_idle_time(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    call setup_events
    movl shinfo+48, %ebx               /* system_time (low) */
    addl $5000000, %ebx                /* + 5 ms */
    movl shinfo+52, %ecx
    adcl $0, %ecx
    HYPERCALL(HC_set_timer_op)
    call block
    rdtsc
    movl %eax, tsc_lo
    movl %edx, tsc_hi
    POWEROFF
.data
tsc_lo: .long 0
tsc_hi: .long 0
""" + TIMER_GUEST, name="sshot")
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert u32(s, "ticks") == 1
    now_ns = (u32(s, "tsc_hi") << 32 | u32(s, "tsc_lo")) * 1_000_000 // TSC_KHZ
    assert now_ns >= 5_000_000
    assert s.cpu.icount < 1000                          # the 5 ms were skipped, not executed
    assert s.hv.time.idle_ns >= 4_990_000
    ups = [r for r in s.trace if r.kind is TraceKind.upcall]
    assert len(ups) == 1 and ups[0].args["ports"] == [words(s, s.symbol("virq") + 8, 1)[0]]


def test_default_periodic_timer_ticks_every_10ms(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    call setup_events
1:  call block
    cmpl $3, ticks
    jb 1b
    movl shinfo+48, %eax
    movl %eax, sys_lo
    POWEROFF
.data
sys_lo: .long 0
""" + TIMER_GUEST, name="periodic")
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert u32(s, "ticks") == 3
    assert u32(s, "sys_lo") == 3 * DEFAULT_PERIOD_NS   # published at the third tick


def test_vcpu_op_timers(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    call setup_events
    movl $6, %ebx                      /* set_periodic_timer */
    movl $0, %ecx
    movl $tiny, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_tiny
    movl $7, %ebx                      /* stop_periodic_timer */
    movl $0, %ecx
    HYPERCALL(HC_vcpu_op)
    movb $0, shinfo+1                  /* events on: the timer's upcall comes at once */
    movl $8, %ebx                      /* set_singleshot_timer in the past */
    movl $0, %ecx
    movl $past, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_past
    movl ticks, %eax
    movl %eax, ticks_after_past
    movl $8, %ebx                      /* singleshot for vcpu 1: -ENOENT */
    movl $1, %ecx
    movl $past, %edx
    HYPERCALL(HC_vcpu_op)
    movl %eax, rc_other
    call block                         /* nothing armed: sleeps forever */
    POWEROFF
.data
tiny: .long 999999, 0
past: .long 1, 0, 0
rc_tiny: .long 0
rc_past: .long 0
rc_other: .long 0
ticks_after_past: .long 0
""" + TIMER_GUEST, name="vcpuop")
    stop = s.run(max_insns=100_000)
    assert u32(s, "rc_tiny") == (-22) & 0xFFFFFFFF
    assert u32(s, "rc_past") == 0 and u32(s, "ticks_after_past") == 1
    assert u32(s, "rc_other") == (-2) & 0xFFFFFFFF
    assert stop.reason is StopReason.blocked
    assert "no timer is armed" in stop.detail and "sleep forever" in stop.detail


def test_block_without_virq_timer_is_reported(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $1, %ebx
    movl $0, %ecx
    HYPERCALL(HC_sched_op)
    POWEROFF
""", name="forever")
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.blocked
    assert "VIRQ_TIMER is not bound" in stop.detail


def test_poll_timeout_returns(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    movl shinfo+48, %eax
    addl $2000000, %eax
    movl %eax, poll+8
    movl $3, %ebx                      /* SCHEDOP_poll */
    movl $poll, %ecx
    HYPERCALL(HC_sched_op)
    movl %eax, rc
    movl shinfo+48, %eax
    movl %eax, after
    POWEROFF
.data
port: .long 7
poll: .long port, 1, 0, 0
rc: .long 0xff
after: .long 0
""", name="poll")
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert u32(s, "rc") == 0
    assert u32(s, "after") >= 2_000_000                 # published on wake


def test_host_clock_timer(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    call setup_events
    movl $6, %ebx
    movl $0, %ecx
    movl $period, %edx
    HYPERCALL(HC_vcpu_op)
1:  call block
    cmpl $2, ticks
    jb 1b
    POWEROFF
.data
period: .long 2000000, 0
""" + TIMER_GUEST, name="hostclock", clock="host")
    stop = s.run(timeout=10)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    # Wall-clock ticks keep coming while the guest heads for SCHEDOP_shutdown: on a loaded
    # host a third period can expire between the guest's check and its poweroff.
    assert u32(s, "ticks") >= 2
    assert s.hv.time.mode == "host"


def test_sanitise_timeout():
    now = 1_000_000
    assert sanitise_timeout(now, now + 5) == now + 5
    assert sanitise_timeout(now, (1 << 64) - 1) == now + TIMER_SLOP_NS
    assert sanitise_timeout(now, now + (1 << 51)) == now + TIMER_SLOP_NS
    assert sanitise_timeout(now, 10) == 10               # already passed: fires at once
