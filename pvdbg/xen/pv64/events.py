"""Event channels and scheduling for a 64-bit PV domain.

The channel table, bindings, backends and hypercall bodies are the 32-bit engine's
(events.py); what a 64-bit guest sees differently is where the bits live: evtchn_mask
follows a 512-byte evtchn_pending in shared_info, evtchn_pending_sel is a 64-bit word at
vcpu_info+8 with one bit per 64 ports, and the upcall is a 64-bit bounce frame.  A
little-endian bitmap has the same bytes whatever its word size, so pending and mask bits
are read as the 32-bit engine reads them.  The first 1024 ports are offered (the
32-bit engine's table size).
ABI: xen/include/public/xen.h struct shared_info, struct vcpu_info (x86_64);
xen/common/event_2l.c; xen/arch/x86/x86_64/entry.S (test_all_events).
"""
from __future__ import annotations

import time as host_time
from typing import TYPE_CHECKING

from ...trace import TraceKind, TraceRecord
from ..abi64 import SharedInfo64, StartInfo64, VcpuInfo64
from ..events import (_MASK, DOM0, NR_EVENT_CHANNELS, Channel, EventChannels, EvtchnStatus)
from ..guestmem import GuestFault
from .traps import GuestCrash

if TYPE_CHECKING:
    from .hypervisor import Hypervisor64, Vcpu64

MASK64 = SharedInfo64.offset_of("evtchn_mask")
PENDING_SEL64 = VcpuInfo64.offset_of("evtchn_pending_sel")
HOST_IDLE_WAIT_S = 0.05
MAX_IDLE_STEPS = 10_000


class EventChannels64(EventChannels):
    """The 2-level event channels of a 64-bit guest."""

    def _toolstack_ports(self) -> tuple[int, int]:
        hv = self.hv
        try:
            info = StartInfo64.from_bytes(hv.guest.read(hv.layout.start_info_va,
                                                        StartInfo64.SIZE))
            store, console = info.store_evtchn, info.console_evtchn
        except GuestFault:
            store, console = 1, 2
        for port in (store, console):
            if 0 < port < NR_EVENT_CHANNELS:
                self.channels[port] = Channel(EvtchnStatus.unbound, 0, DOM0)
        return store, console

    def _word(self, base: int, port: int) -> tuple[int, int]:
        return super()._word(MASK64 if base == _MASK else base, port)

    def _select(self, vcpu: "Vcpu64", port: int) -> None:
        mem = self.hv.memory
        sel_addr = self.hv.vcpu_info_maddr(vcpu.vcpu_id) + PENDING_SEL64
        sel = mem.read_u64(sel_addr)
        bit = 1 << (port >> 6)
        if not sel & bit:
            mem.write_u64(sel_addr, sel | bit)
            self.mark_events_pending(vcpu)

    def pending_unmasked_ports(self, vcpu: "Vcpu64") -> list[int]:
        mem = self.hv.memory
        sel = mem.read_u64(self.hv.vcpu_info_maddr(vcpu.vcpu_id) + PENDING_SEL64)
        base = self.hv.shared_info_maddr()
        pending0 = SharedInfo64.offset_of("evtchn_pending")
        ports = []
        for w in range(NR_EVENT_CHANNELS // 64):
            if sel >> w & 1:
                bits = mem.read_u64(base + pending0 + 8 * w) & ~mem.read_u64(base + MASK64 + 8 * w)
                ports.extend(w * 64 + b for b in range(64) if bits >> b & 1)
        return ports

    def upcall64(self, vcpu: "Vcpu64") -> None:
        """Bounce to the event callback with events masked (test_all_events)."""
        hv = self.hv
        pv = vcpu.pv
        ports = self.pending_unmasked_ports(vcpu)
        rip = hv.cpu.read("rip")
        if not pv.event_callback:
            raise GuestCrash("an event upcall is pending and unmasked, but no event callback "
                             f"is registered; pending ports {ports}")
        frame = hv.traps.bounce(vcpu, pv.event_callback, mask_events=True)
        self.upcalls += 1
        seq = hv.trace.next_seq()
        self.last_upcall_seq[vcpu.vcpu_id] = seq
        hv.emit(TraceRecord(
            seq=seq, kind=TraceKind.upcall, icount=hv.cpu.icount, vcpu=vcpu.vcpu_id, eip=rip,
            name="event_callback", args={"ports": ports, "handler": pv.event_callback,
                                         "frame": frame},
            symbol=hv.symbolize(rip),
            detail=", ".join(f"port {p} ({self.describe(p)})" for p in ports[:8]),
            parent=hv.current_hypercall_seq))


class Scheduler64:
    """One vcpu's scheduling: block and poll sleep until an event or a timer; between
    slices timers fire and a deliverable event is delivered."""

    def __init__(self, hv: "Hypervisor64") -> None:
        self.hv = hv

    def slice_budget(self, default_insns: int) -> int:
        return self.hv.time.budget(default_insns)

    def slice_timeout_us(self, default_us: int) -> int:
        return self.hv.time.host_timeout_us(default_us)

    def boundary(self) -> None:
        hv = self.hv
        if hv.domain.is_dying:
            return
        hv.time.run_due()
        if not hv.current.blocked:
            hv.deliver_events()

    def block(self, vcpu: "Vcpu64", why: str) -> None:
        hv = self.hv
        if hv.events.deliverable(vcpu):
            return
        self._sleep(vcpu, why)

    def poll(self, vcpu: "Vcpu64", ports: list[int], timeout_ns: int) -> int:
        hv = self.hv
        if hv.events.deliverable(vcpu) or any(hv.events.is_pending(p) for p in ports
                                              if 0 <= p < NR_EVENT_CHANNELS):
            return 0
        hv.events.per_vcpu[vcpu.vcpu_id].poll_ports = frozenset(ports)
        if timeout_ns:
            hv.time.timers[vcpu.vcpu_id].poll_deadline_ns = timeout_ns
            hv.time.arm_changed(timeout_ns)
        self._sleep(vcpu, f"SCHEDOP_poll on ports {sorted(ports)}")
        return 0

    def _sleep(self, vcpu: "Vcpu64", why: str) -> None:
        vcpu.blocked = True
        vcpu.block_reason = why
        if vcpu is self.hv.current:
            self.hv.cpu.stop()

    def yield_(self, vcpu: "Vcpu64") -> None:
        return None

    def kick(self, vcpu: "Vcpu64") -> None:
        if vcpu.blocked:
            self.unblock(vcpu)

    def wake_poller(self, vcpu: "Vcpu64") -> None:
        if self.hv.events.per_vcpu[vcpu.vcpu_id].poll_ports is not None:
            self.unblock(vcpu)

    def unblock(self, vcpu: "Vcpu64") -> None:
        hv = self.hv
        vcpu.blocked = False
        vcpu.block_reason = ""
        hv.events.per_vcpu[vcpu.vcpu_id].poll_ports = None
        hv.time.timers[vcpu.vcpu_id].poll_deadline_ns = None
        hv.time.publish(vcpu)

    def idle(self, interrupt, deadline: float | None) -> str | None:
        """The vcpu sleeps: move time to the next timer (icount clock) or wait for it
        (host clock); None once it can run, a sentence if nothing can wake it."""
        hv = self.hv
        tk = hv.time
        for _ in range(MAX_IDLE_STEPS):
            if not hv.current.blocked:
                return None
            wake_at = tk.next_deadline()
            if wake_at is None:
                return (f"vcpu0 sleeps in {hv.current.block_reason or 'a block'} with no "
                        "timer armed: nothing can wake the domain")
            if tk.mode == "host" or hv.cpu.icount is None:
                wait_s = min(HOST_IDLE_WAIT_S, max(0, wake_at - tk.now_ns()) / 1e9)
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
        return None
