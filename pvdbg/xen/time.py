"""Xen system time, the TSC the guest reads, and the per-vcpu timers.

With the exact instruction count (clock "icount", the default) one guest instruction
is one nanosecond of system time, plus whatever time the domain spent idle; the TSC
runs at 2 GHz on top of it, so two runs of one guest see the same times and make the
same trace.  When the CPU runs uncounted (clock "host") system time is the host's
monotonic clock.  vcpu_time_info and the wallclock are published with Xen's version
protocol (odd while updating), and RDTSC/RDTSCP (trapped through CR4.TSD) return the
TSC consistent with the published scale.  Timers: set_timer_op and VCPUOP singleshot,
the 10 ms periodic timer every PV vcpu starts with, and SCHEDOP_poll timeouts.
ABI: xen/include/public/xen.h struct vcpu_time_info, shared_info wc_*; xen/arch/x86/time.c
(update_vcpu_system_time); xen/common/sched/core.c (do_set_timer_op,
vcpu_periodic_timer_work); XEN-PV-ABI.md 2.4, 2.5, 3.10.
"""
from __future__ import annotations

import struct
import time as host_time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..machine.cpu import CR4_TSD
from .abi import SharedInfo32
from .constants import Hc
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, HypercallContext, Vcpu

NS_PER_INSN = 1                         # icount clock: 1 instruction = 1 ns
TSC_KHZ = 2_000_000                     # the guest's TSC: 2 GHz
TSC_TO_SYSTEM_MUL = 1 << 31             # ns = (tsc << 0) * 2^31 >> 32
TSC_SHIFT = 0
XEN_PVCLOCK_TSC_STABLE = 1
WALLCLOCK_EPOCH_S = 1_704_067_200       # 2024-01-01T00:00:00Z: system time 0, icount clock
DEFAULT_PERIOD_NS = 10_000_000          # Xen's periodic timer for PV vcpus
MIN_PERIOD_NS = 1_000_000
TIMER_SLOP_NS = 100_000_000             # "now + 100 ms" for absurd set_timer_op deadlines
_VCPU_TIME_OFFSET = 32                  # vcpu_info.time


def ns_to_tsc(ns: int) -> int:
    return ns * TSC_KHZ // 1_000_000


@dataclass
class VcpuTimers:
    singleshot_ns: int | None = None
    periodic_period_ns: int = DEFAULT_PERIOD_NS
    periodic_last_ns: int = 0
    poll_deadline_ns: int | None = None
    time_version: int = 0
    time_area_va: int = 0               # VCPUOP_register_vcpu_time_memory_area

    @property
    def periodic_next_ns(self) -> int | None:
        if not self.periodic_period_ns:
            return None
        return self.periodic_last_ns + self.periodic_period_ns


class TimeKeeper:
    """System time, TSC and timers of one domain."""

    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.mode = "icount"
        self.idle_ns = 0                 # icount clock: time skipped while every vcpu slept
        self._host_base = 0              # host clock: monotonic_ns at system time 0
        self._last_ns = 0
        self.wc_version = 0
        self.timers = [VcpuTimers() for _ in hv.vcpus]
        self.slice_end_ns: int | None = None
        self.fired = 0
        cpu = hv.cpu
        cpu.write("cr4", cpu.read("cr4") | CR4_TSD)
        self.publish_wallclock()
        for vcpu in hv.vcpus:
            self.publish(vcpu)

    # -- the clock -------------------------------------------------------------------
    def now_ns(self) -> int:
        icount = self.hv.cpu.icount
        if icount is None:
            if self.mode != "host":
                self.mode = "host"
                self._host_base = host_time.monotonic_ns() - self._last_ns
            now = host_time.monotonic_ns() - self._host_base
        else:
            now = icount * NS_PER_INSN + self.idle_ns
        if now > self._last_ns:
            self._last_ns = now
        return self._last_ns

    def tsc(self) -> int:
        return ns_to_tsc(self.now_ns())

    def advance_idle(self, to_ns: int) -> None:
        """Every vcpu sleeps until `to_ns`: skip the time (icount clock)."""
        now = self.now_ns()
        if to_ns > now:
            self.idle_ns += to_ns - now
            self._last_ns = to_ns

    # -- publication -----------------------------------------------------------------
    def publish(self, vcpu: "Vcpu") -> None:
        """update_vcpu_system_time: version odd, fields, version even."""
        hv = self.hv
        mem = hv.memory
        t = self.timers[vcpu.vcpu_id]
        now = self.now_ns()
        base = hv.vcpu_info_maddr(vcpu.vcpu_id) + _VCPU_TIME_OFFSET
        body = struct.pack("<QQIbB2x", ns_to_tsc(now), now, TSC_TO_SYSTEM_MUL, TSC_SHIFT,
                           XEN_PVCLOCK_TSC_STABLE)
        t.time_version = (t.time_version + 1) | 1
        mem.write_u32(base, t.time_version)
        mem.write(base + 8, body)
        t.time_version += 1
        mem.write_u32(base, t.time_version)
        if t.time_area_va:
            try:
                hv.guest.write(t.time_area_va, struct.pack("<II", t.time_version, 0) + body)
            except GuestFault:      # an unmapped secondary area is simply not updated
                pass

    def publish_wallclock(self) -> None:
        """shared_info wc_sec/wc_nsec: UTC at system time 0 (version protocol)."""
        mem = self.hv.memory
        base = self.hv.shared_info_maddr()
        if self.mode == "host" or self.hv.cpu.icount is None:
            boot_ns = host_time.time_ns() - self.now_ns()
        else:
            boot_ns = WALLCLOCK_EPOCH_S * 1_000_000_000
        sec, nsec = divmod(boot_ns, 1_000_000_000)
        layout = getattr(self.hv, "SHARED_INFO_LAYOUT", SharedInfo32)   # 32- or 64-bit ABI
        self.wc_version = (self.wc_version + 1) | 1
        mem.write_u32(base + layout.offset_of("wc_version"), self.wc_version)
        mem.write_u32(base + layout.offset_of("wc_sec"), sec & 0xFFFFFFFF)
        mem.write_u32(base + layout.offset_of("wc_nsec"), nsec)
        mem.write_u32(base + layout.offset_of("wc_sec_hi"), sec >> 32)
        self.wc_version += 1
        mem.write_u32(base + layout.offset_of("wc_version"), self.wc_version)

    # -- timers ------------------------------------------------------------------------
    def next_deadline(self) -> int | None:
        best = None
        for vcpu, t in zip(self.hv.vcpus, self.timers):
            if not vcpu.online:
                continue
            for d in (t.singleshot_ns, t.periodic_next_ns, t.poll_deadline_ns):
                if d is not None and (best is None or d < best):
                    best = d
        return best

    def arm_changed(self, deadline_ns: int | None) -> None:
        """A timer moved: cut the running slice if it now ends after the deadline."""
        if deadline_ns is None or not self.hv.cpu.in_run:
            return
        if self.slice_end_ns is None or deadline_ns < self.slice_end_ns:
            self.hv.cpu.stop()

    def set_singleshot(self, vcpu: "Vcpu", deadline_ns: int | None) -> None:
        self.timers[vcpu.vcpu_id].singleshot_ns = deadline_ns
        self.arm_changed(deadline_ns)

    def set_periodic(self, vcpu: "Vcpu", period_ns: int) -> None:
        t = self.timers[vcpu.vcpu_id]
        t.periodic_period_ns = period_ns
        self.arm_changed(t.periodic_next_ns)

    def run_due(self) -> int:
        """Fire every timer whose deadline has passed; returns how many fired."""
        deadline = self.next_deadline()
        if deadline is None:
            return 0
        now = self.now_ns()
        if now < deadline:
            return 0
        fired = 0
        events = self.hv.events
        for vcpu, t in zip(self.hv.vcpus, self.timers):
            if not vcpu.online:
                continue
            timer_event = False
            if t.singleshot_ns is not None and t.singleshot_ns <= now:
                t.singleshot_ns = None
                timer_event = True
            nxt = t.periodic_next_ns
            if nxt is not None and nxt <= now:
                t.periodic_last_ns = now
                timer_event = True
            if timer_event:
                fired += 1
                self.publish(vcpu)
                events.send_virq(0, vcpu.vcpu_id)
            if t.poll_deadline_ns is not None and t.poll_deadline_ns <= now:
                t.poll_deadline_ns = None
                fired += 1
                self.hv.scheduler.wake_poller(vcpu)
        self.fired += fired
        return fired

    def budget(self, default_insns: int) -> int:
        """Instructions until the next timer (icount clock), at most `default_insns`;
        remembers where the slice ends so arming an earlier timer can cut it."""
        deadline = self.next_deadline()
        now = self.now_ns()
        insns = default_insns
        if deadline is not None:
            insns = max(1, min(insns, (deadline - now + NS_PER_INSN - 1) // NS_PER_INSN))
        self.slice_end_ns = now + insns * NS_PER_INSN
        return insns

    def host_timeout_us(self, default_us: int) -> int:
        deadline = self.next_deadline()
        self.slice_end_ns = None
        if deadline is None:
            return default_us
        return max(1, min(default_us, (deadline - self.now_ns()) // 1000))


def _timekeeper(ctx: "HypercallContext") -> TimeKeeper:
    return ctx.hv.time


def sanitise_timeout(now_ns: int, timeout_ns: int) -> int:
    """do_set_timer_op: a negative or more-than-2^50-ns-ahead deadline becomes now + 100 ms."""
    signed = timeout_ns - (1 << 64) if timeout_ns >> 63 else timeout_ns
    offset = signed - now_ns
    if signed < 0 or (offset > 0 and offset >> 50):
        return now_ns + TIMER_SLOP_NS
    return signed


@HYPERCALLS.handler(Hc.set_timer_op, Param("timeout_lo"), Param("timeout_hi"))
def set_timer_op(ctx: "HypercallContext", timeout_lo: int, timeout_hi: int) -> int:
    """One-shot VIRQ_TIMER at absolute system time hi:lo ns; 0 cancels.
    ABI: xen/common/sched/core.c do_set_timer_op; compat splits the u64."""
    tk = _timekeeper(ctx)
    timeout = timeout_hi << 32 | timeout_lo
    if timeout == 0:
        tk.set_singleshot(ctx.vcpu, None)
        ctx.note("single-shot timer stopped")
        return 0
    now = tk.now_ns()
    deadline = sanitise_timeout(now, timeout)
    tk.set_singleshot(ctx.vcpu, deadline)
    ctx.note(f"VIRQ_TIMER at {deadline} ns (now {now}, in {deadline - now} ns)")
    return 0
