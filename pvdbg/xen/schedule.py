"""The domain's scheduler: blocking, polling and waking vcpus, idling until a timer or an
event wakes one, switching between vcpus, and runstate accounting.

Session.run calls `slice_budget` before each execution slice and `boundary` between
slices (Xen returning to the guest: timers fire, upcalls are delivered); when every vcpu
sleeps it calls `idle`, which skips the domain's clock to the next timer that can wake a
vcpu (or sleeps on the host clock) and says why the domain would sleep forever when
nothing can.
ABI: xen/common/sched/core.c (vcpu_block, do_poll, vcpu_unblock, vcpu_kick,
update_runstate_area); xen/include/public/vcpu.h struct vcpu_runstate_info;
XEN-PV-ABI.md 3.9, 3.15.
"""
from __future__ import annotations

import struct
import threading
import time as host_time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

from .constants import Errno, Vmasst
from .events import NR_EVENT_CHANNELS, EvtchnStatus, Virq
from .guestmem import GuestFault
from .hypercalls import fail

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, Vcpu

XEN_RUNSTATE_UPDATE = 1 << 63
RUNSTATE_INFO_SIZE = 44                 # compat vcpu_runstate_info
MAX_IDLE_STEPS = 64
HOST_IDLE_WAIT_S = 0.05


class Runstate(IntEnum):
    """RUNSTATE_*.  ABI: xen/include/public/vcpu.h."""
    running = 0
    runnable = 1
    blocked = 2
    offline = 3


@dataclass
class RunstateInfo:
    state: Runstate = Runstate.offline
    entry_ns: int = 0
    time_ns: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    area_va: int = 0                    # VCPUOP_register_runstate_memory_area

    def to_bytes(self, now_ns: int, updating: bool = False) -> bytes:
        times = list(self.time_ns)
        entry = self.entry_ns | (XEN_RUNSTATE_UPDATE if updating else 0)
        return struct.pack("<IQ4Q", self.state, entry, *times)


class Scheduler:
    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.runstates = [RunstateInfo() for _ in hv.vcpus]
        self.block_reason: list[str] = ["" for _ in hv.vcpus]
        self.rotate = False
        self.context_switches = 0
        for vcpu in hv.vcpus:
            self.set_runstate(vcpu, Runstate.running if vcpu is hv.current and vcpu.online
                              else Runstate.offline)

    # -- runstate ----------------------------------------------------------------------
    def set_runstate(self, vcpu: "Vcpu", state: Runstate) -> None:
        rs = self.runstates[vcpu.vcpu_id]
        now = self.hv.time.now_ns()
        if rs.state != state or rs.entry_ns == 0:
            rs.time_ns[rs.state] += max(0, now - rs.entry_ns)
            rs.state = state
            rs.entry_ns = now
        self.update_runstate_area(vcpu)

    def update_runstate_area(self, vcpu: "Vcpu") -> None:
        """Copy the runstate to the guest's registered area (with XEN_RUNSTATE_UPDATE set
        around the copy when the guest enabled VMASST_TYPE_runstate_update_flag)."""
        rs = self.runstates[vcpu.vcpu_id]
        if not rs.area_va:
            return
        hv = self.hv
        flag = bool(hv.domain.vm_assist & (1 << Vmasst.runstate_update_flag))
        try:
            if flag:
                hv.guest.write(rs.area_va + 4, struct.pack("<Q", rs.entry_ns | XEN_RUNSTATE_UPDATE))
            hv.guest.write(rs.area_va, rs.to_bytes(0, updating=flag))
            if flag:
                hv.guest.write(rs.area_va + 4, struct.pack("<Q", rs.entry_ns))
        except GuestFault:
            pass                # an unmapped area is skipped, as Xen's copy fails silently

    def runstate_bytes(self, vcpu: "Vcpu") -> bytes:
        rs = self.runstates[vcpu.vcpu_id]
        now = self.hv.time.now_ns()
        snapshot = RunstateInfo(rs.state, rs.entry_ns, list(rs.time_ns))
        snapshot.time_ns[rs.state] += max(0, now - rs.entry_ns)
        snapshot.entry_ns = now
        return snapshot.to_bytes(now)

    # -- blocking ----------------------------------------------------------------------
    def block(self, vcpu: "Vcpu") -> None:
        """SCHEDOP_block: enable event delivery, then sleep unless an event is deliverable."""
        hv = self.hv
        hv.memory.view[hv.vcpu_info_maddr(vcpu.vcpu_id) + 1] = 0
        if hv.events.deliverable(vcpu):
            return
        self._sleep(vcpu, "SCHEDOP_block")

    def poll(self, vcpu: "Vcpu", ports: list[int], timeout_ns: int) -> int:
        """SCHEDOP_poll: 0 at once if an upcall is deliverable or a port is pending, else
        sleep until one of `ports` (or any event edge) arrives or `timeout_ns` passes."""
        hv = self.hv
        if hv.events.deliverable(vcpu):
            return 0
        for port in ports:
            if port >= NR_EVENT_CHANNELS:
                raise fail(Errno.EINVAL, f"port {port} is beyond the 2-level ABI")
            if hv.events.is_pending(port):
                return 0
        hv.events.per_vcpu[vcpu.vcpu_id].poll_ports = frozenset(ports)
        if timeout_ns:
            hv.time.timers[vcpu.vcpu_id].poll_deadline_ns = timeout_ns
            hv.time.arm_changed(timeout_ns)
        self._sleep(vcpu, f"SCHEDOP_poll on ports {sorted(ports)}"
                    + (f" until {timeout_ns} ns" if timeout_ns else ""))
        return 0

    def yield_(self, vcpu: "Vcpu") -> None:
        """SCHEDOP_yield: let another runnable vcpu run at the next boundary."""
        if any(self.runnable(v) for v in self.hv.vcpus if v is not vcpu):
            self.rotate = True
            self.hv.cpu.stop()

    def _sleep(self, vcpu: "Vcpu", why: str) -> None:
        vcpu.blocked = True
        self.block_reason[vcpu.vcpu_id] = why
        self.set_runstate(vcpu, Runstate.blocked)
        if vcpu is self.hv.current:
            self.hv.cpu.stop()

    def kick(self, vcpu: "Vcpu") -> None:
        """vcpu_kick: a blocked vcpu becomes runnable (poll or block alike)."""
        if vcpu.blocked:
            self.unblock(vcpu)

    def wake_poller(self, vcpu: "Vcpu") -> None:
        ev = self.hv.events.per_vcpu[vcpu.vcpu_id]
        if ev.poll_ports is not None:
            self.unblock(vcpu)

    def unblock(self, vcpu: "Vcpu") -> None:
        hv = self.hv
        vcpu.blocked = False
        hv.events.per_vcpu[vcpu.vcpu_id].poll_ports = None
        hv.time.timers[vcpu.vcpu_id].poll_deadline_ns = None
        self.block_reason[vcpu.vcpu_id] = ""
        self.set_runstate(vcpu, Runstate.running if vcpu is hv.current else Runstate.runnable)
        hv.time.publish(vcpu)

    def runnable(self, vcpu: "Vcpu") -> bool:
        return vcpu.online and not vcpu.blocked

    # -- run-loop integration ------------------------------------------------------------
    def slice_budget(self, default_insns: int) -> int:
        return self.hv.time.budget(default_insns)

    def slice_timeout_us(self, default_us: int) -> int:
        return self.hv.time.host_timeout_us(default_us)

    def boundary(self) -> None:
        """Between slices (Xen returning to the guest): fire due timers, switch vcpus if
        another should run, deliver what is pending."""
        hv = self.hv
        if hv.domain.is_dying:
            return
        hv.cpuid.deliver_pending_fault()
        hv.traps.deliver_pending()
        hv.debugregs.sync()
        hv.time.run_due()
        self._pick_vcpu()
        if not hv.current.blocked:
            hv.traps.exit_to_guest(None)

    def _pick_vcpu(self) -> None:
        """Round robin: with other runnable vcpus, switch every second boundary (or at
        once when the current vcpu cannot run or yielded)."""
        hv = self.hv
        current = hv.current
        others = [v for v in hv.vcpus if v is not current and self.runnable(v)]
        if not others:
            self.rotate = False
            return
        if self.runnable(current) and not self.rotate:
            self.rotate = True
            return
        after = [v for v in others if v.vcpu_id > current.vcpu_id]
        self.rotate = False
        hv.vcpu_ops.switch_to((after or others)[0])

    def idle(self, interrupt: threading.Event, deadline: float | None) -> str | None:
        """Every vcpu sleeps: move time to the next timer that can wake one (icount clock)
        or wait for it (host clock).  None once a vcpu can run (or on interrupt/timeout,
        with the vcpu still blocked); a sentence when nothing can ever wake the domain."""
        hv = self.hv
        tk = hv.time
        for _ in range(MAX_IDLE_STEPS):
            runnable = [v for v in hv.vcpus if self.runnable(v)]
            if runnable:
                if hv.current.blocked:
                    hv.vcpu_ops.switch_to(runnable[0])
                return None
            wake_at = self._next_wake()
            if wake_at is None:
                return self.explain_sleep()
            if tk.mode == "host" or hv.cpu.icount is None:
                now = tk.now_ns()
                wait_s = min(HOST_IDLE_WAIT_S, max(0, wake_at - now) / 1e9)
                if deadline is not None:
                    wait_s = min(wait_s, max(0.0, deadline - host_time.monotonic()))
                if interrupt.wait(wait_s):
                    return None
                tk.run_due()
                if deadline is not None and host_time.monotonic() >= deadline:
                    return None
                continue
            tk.advance_idle(wake_at)
            tk.run_due()
        return None if any(self.runnable(v) for v in hv.vcpus) else self.explain_sleep()

    def _next_wake(self) -> int | None:
        """The earliest timer deadline that would wake a sleeping vcpu."""
        hv = self.hv
        best = None
        for vcpu, t in zip(hv.vcpus, hv.time.timers):
            if not vcpu.online or not vcpu.blocked:
                continue
            polling = hv.events.per_vcpu[vcpu.vcpu_id].poll_ports is not None
            candidates = []
            if t.poll_deadline_ns is not None:
                candidates.append(t.poll_deadline_ns)
            if self._timer_wakes(vcpu, polling):
                for d in (t.singleshot_ns, t.periodic_next_ns):
                    if d is not None:
                        candidates.append(d)
            for d in candidates:
                if best is None or d < best:
                    best = d
        return best

    def _timer_wakes(self, vcpu: "Vcpu", polling: bool) -> bool:
        """Would VIRQ_TIMER wake `vcpu`?  Only a new pending edge does: the port must be
        bound and not already pending, and either polled or raise a new upcall."""
        ev = self.hv.events
        port = ev.per_vcpu[vcpu.vcpu_id].virq_ports.get(Virq.TIMER)
        if port is None or ev.is_pending(port):
            return False
        polled = ev.per_vcpu[vcpu.vcpu_id].poll_ports
        if polling and polled is not None and (not polled or port in polled):
            return True
        if ev.is_masked(port):
            return False
        info = self.hv.vcpu_info_maddr(vcpu.vcpu_id)
        sel = self.hv.memory.read_u32(info + 4)
        return not sel >> (port >> 5) & 1 and not self.hv.memory.view[info]

    def explain_sleep(self) -> str:
        """Why no vcpu can ever run again, in Xen's terms."""
        hv = self.hv
        ev = hv.events
        parts = []
        for vcpu in hv.vcpus:
            if not vcpu.online:
                continue
            why = self.block_reason[vcpu.vcpu_id] or "blocked"
            notes = []
            timer_port = ev.per_vcpu[vcpu.vcpu_id].virq_ports.get(Virq.TIMER)
            if timer_port is None:
                notes.append("VIRQ_TIMER is not bound, so no timer can wake it")
            elif ev.is_masked(timer_port):
                notes.append(f"its VIRQ_TIMER port {timer_port} is masked")
            elif ev.is_pending(timer_port):
                notes.append(f"its VIRQ_TIMER port {timer_port} is already pending (never handled)")
            else:
                t = hv.time.timers[vcpu.vcpu_id]
                if t.singleshot_ns is None and t.periodic_next_ns is None:
                    notes.append("no timer is armed")
            info = hv.vcpu_info_maddr(vcpu.vcpu_id)
            sel = hv.memory.read_u32(info + 4)
            upcall_pending = hv.memory.view[info]
            for port, ch in enumerate(ev.channels):
                if ch.state is EvtchnStatus.closed or ch.notify_vcpu != vcpu.vcpu_id:
                    continue
                if ev.is_pending(port) and not ev.is_masked(port) and not sel >> (port >> 5) & 1:
                    notes.append(
                        f"port {port} ({ev.describe(port)}) is pending and unmasked, but its "
                        f"evtchn_pending_sel bit {port >> 5} is clear and evtchn_upcall_pending "
                        f"is {upcall_pending}: it was unmasked without re-raising the event "
                        "(a lost wakeup; EVTCHNOP_unmask or setting the selector bit and "
                        "upcall_pending after clearing the mask would deliver it)")
                elif ev.is_pending(port) and ev.is_masked(port):
                    notes.append(f"port {port} ({ev.describe(port)}) is pending but masked")
            parts.append(f"vcpu{vcpu.vcpu_id} sleeps in {why}" + (": " + "; ".join(notes) if notes else ""))
        if not parts:
            return "every vcpu is down"
        return "; ".join(parts) + ". Nothing can wake the domain: it would sleep forever"
