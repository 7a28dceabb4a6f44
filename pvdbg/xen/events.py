"""Event channels, 2-level ABI: ports, VIRQs, IPIs, interdomain channels to the emulated
backends, and the upcall that delivers them.

Pending and mask bits live in shared_info (evtchn_pending, evtchn_mask: one bit per
port, 32 words of 32 bits for a 32-bit guest); each vcpu has evtchn_pending_sel,
evtchn_upcall_pending and evtchn_upcall_mask in its vcpu_info.  Backends (xenstore, the
console, block devices) are emulated in dom0 and connect through `register_backend`.
ABI: xen/include/public/event_channel.h, xen.h (VIRQ_*); xen/common/event_channel.c;
xen/common/event_2l.c; xen/arch/x86/compat.c; XEN-PV-ABI.md 3.11, 5.5, 5.6.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

from ..trace import TraceKind, TraceRecord
from .abi import SharedInfo32, StartInfo32
from .constants import DOMID_SELF, Errno, Hc
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param, fail
from .traps import DeliveryError, GuestFrame

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, HypercallContext, Vcpu

NR_EVENT_CHANNELS = 32 * 32        # 2-level, 32-bit guest: BITS_PER_EVTCHN_WORD squared
NR_VIRQS = 24
DOM0 = 0
_PENDING = SharedInfo32.offset_of("evtchn_pending")
_MASK = SharedInfo32.offset_of("evtchn_mask")


class Virq(IntEnum):
    """VIRQ_*.  ABI: xen/include/public/xen.h."""
    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13
    ARCH_0 = 16


PER_VCPU_VIRQS = frozenset({Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU})


def virq_is_global(virq: int) -> bool:
    return virq not in PER_VCPU_VIRQS


def virq_name(virq: int) -> str:
    if 16 <= virq < 24:
        return f"ARCH_{virq - 16}"
    try:
        return Virq(virq).name
    except ValueError:
        return str(virq)


class EvtchnOp(IntEnum):
    """EVTCHNOP_*.  ABI: xen/include/public/event_channel.h."""
    bind_interdomain = 0
    bind_virq = 1
    bind_pirq = 2
    close = 3
    send = 4
    status = 5
    alloc_unbound = 6
    bind_ipi = 7
    bind_vcpu = 8
    unmask = 9
    reset = 10
    init_control = 11
    expand_array = 12
    set_priority = 13
    reset_cont = 14


class EvtchnStatus(IntEnum):
    """EVTCHNSTAT_*: the port states, numbered as EVTCHNOP_status reports them."""
    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


@dataclass
class BackendPort:
    """dom0's end of an interdomain channel to an emulated backend.

    `on_notify()` runs when the guest sends on its end; `notify()` raises the guest's
    end (returns False while the guest has not bound it)."""
    events: "EventChannels"
    name: str
    port: int                                # dom0's port number
    on_notify: Callable[[], None] | None
    guest_port: int | None = None
    notifications_sent: int = 0
    notifications_received: int = 0

    @property
    def connected(self) -> bool:
        return self.guest_port is not None

    def notify(self) -> bool:
        if self.guest_port is None:
            return False
        self.notifications_sent += 1
        self.events.set_pending(self.guest_port)
        return True


@dataclass
class Channel:
    state: EvtchnStatus = EvtchnStatus.closed
    notify_vcpu: int = 0
    remote_domid: int = 0                   # unbound: who may bind; interdomain: the peer
    remote_port: int = 0                    # interdomain: the peer's port
    virq: int = 0
    backend: BackendPort | None = None
    reserved: bool = False                  # port 0


@dataclass
class VcpuEvents:
    virq_ports: dict[int, int] = field(default_factory=dict)    # virq -> port
    poll_ports: frozenset[int] | None = None                  # SCHEDOP_poll in progress


class EventChannels:
    """The domain's event channel table and the 2-level pending logic."""

    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.domid = hv.domain.domid
        self.channels = [Channel() for _ in range(NR_EVENT_CHANNELS)]
        self.channels[0].reserved = True
        self.per_vcpu = [VcpuEvents() for _ in hv.vcpus]
        self.backends: dict[int, BackendPort] = {}       # dom0 port -> backend
        self._next_dom0_port = 1
        self.upcalls = 0
        self.last_upcall_seq: dict[int, int] = {}       # vcpu -> seq of its last upcall
        self.store_port, self.console_port = self._toolstack_ports()

    # -- toolstack -------------------------------------------------------------------
    def _toolstack_ports(self) -> tuple[int, int]:
        """libxl allocates store_evtchn and console_evtchn unbound towards dom0 before the
        domain runs (xc_evtchn_alloc_unbound); start_info carries their numbers."""
        layout = self.hv.layout
        try:
            info = StartInfo32.from_bytes(self.hv.guest.read(layout.start_info_va, StartInfo32.SIZE))
            store, console = info.store_evtchn, info.console_evtchn
        except GuestFault:
            store, console = 1, 2
        for port in (store, console):
            if 0 < port < NR_EVENT_CHANNELS:
                self.channels[port] = Channel(EvtchnStatus.unbound, 0, DOM0)
        return store, console

    # -- backends --------------------------------------------------------------------
    def register_backend(self, name: str, on_notify: Callable[[], None] | None = None,
                         guest_port: int | None = None) -> BackendPort:
        """Give an emulated dom0 backend a port.  With `guest_port` (e.g. start_info's
        store_evtchn or console_evtchn, unbound towards dom0) the two ends are bound at
        once, as xenstored/xenconsoled do; without it the dom0 port stays unbound for the
        guest to bind with EVTCHNOP_bind_interdomain(0, port)."""
        backend = BackendPort(self, name, self._next_dom0_port, on_notify)
        self._next_dom0_port += 1
        self.backends[backend.port] = backend
        if guest_port is not None:
            ch = self._channel(guest_port)
            if ch is None or ch.state is not EvtchnStatus.unbound or ch.remote_domid != DOM0:
                raise ValueError(f"guest port {guest_port} is not unbound towards dom0")
            self._connect_backend(guest_port, backend)
        return backend

    def close_backend(self, backend: BackendPort) -> None:
        """dom0 closes its end (a backend disconnecting): the guest's port goes back to
        unbound towards dom0, as evtchn_close leaves the remote end of an interdomain
        channel."""
        self.backends.pop(backend.port, None)
        port = backend.guest_port
        backend.guest_port = None
        if port is not None and self.channels[port].backend is backend:
            ch = self.channels[port]
            ch.state = EvtchnStatus.unbound
            ch.remote_port = 0
            ch.backend = None

    def _connect_backend(self, port: int, backend: BackendPort) -> None:
        ch = self.channels[port]
        ch.state = EvtchnStatus.interdomain
        ch.remote_domid = DOM0
        ch.remote_port = backend.port
        ch.backend = backend
        backend.guest_port = port

    # -- bits ------------------------------------------------------------------------
    def _word(self, base: int, port: int) -> tuple[int, int]:
        addr = self.hv.shared_info_maddr() + base + (port >> 5) * 4
        return addr, self.hv.memory.read_u32(addr)

    def is_pending(self, port: int) -> bool:
        return bool(self._word(_PENDING, port)[1] >> (port & 31) & 1)

    def is_masked(self, port: int) -> bool:
        return bool(self._word(_MASK, port)[1] >> (port & 31) & 1)

    def set_pending(self, port: int) -> None:
        """evtchn_2l_set_pending: pending bit, then (unless masked) the vcpu's selector bit
        and upcall_pending, waking the vcpu."""
        hv = self.hv
        mem = hv.memory
        addr, word = self._word(_PENDING, port)
        bit = 1 << (port & 31)
        if word & bit:
            return
        mem.write_u32(addr, word | bit)
        ch = self.channels[port]
        vcpu = hv.vcpus[ch.notify_vcpu] if ch.notify_vcpu < len(hv.vcpus) else hv.vcpus[0]
        if not self.is_masked(port):
            self._select(vcpu, port)
        self._check_pollers(port)

    def _select(self, vcpu: "Vcpu", port: int) -> None:
        mem = self.hv.memory
        info = self.hv.vcpu_info_maddr(vcpu.vcpu_id)
        sel = mem.read_u32(info + 4)
        bit = 1 << (port >> 5)
        if not sel & bit:
            mem.write_u32(info + 4, sel | bit)
            self.mark_events_pending(vcpu)

    def mark_events_pending(self, vcpu: "Vcpu") -> None:
        """vcpu_mark_events_pending: set evtchn_upcall_pending; a new edge kicks the vcpu."""
        view = self.hv.memory.view
        info = self.hv.vcpu_info_maddr(vcpu.vcpu_id)
        if not view[info]:
            view[info] = 1
            self.hv.scheduler.kick(vcpu)

    def _check_pollers(self, port: int) -> None:
        for vcpu, ev in zip(self.hv.vcpus, self.per_vcpu):
            if ev.poll_ports is not None and (not ev.poll_ports or port in ev.poll_ports):
                self.hv.scheduler.wake_poller(vcpu)

    def unmask(self, port: int) -> None:
        """evtchn_2l_unmask: clear the mask; if the port is pending, re-raise it."""
        addr, word = self._word(_MASK, port)
        bit = 1 << (port & 31)
        if not word & bit:
            return
        self.hv.memory.write_u32(addr, word & ~bit)
        if self.is_pending(port):
            ch = self.channels[port]
            self._select(self.hv.vcpus[min(ch.notify_vcpu, len(self.hv.vcpus) - 1)], port)

    def clear_pending(self, port: int) -> None:
        addr, word = self._word(_PENDING, port)
        self.hv.memory.write_u32(addr, word & ~(1 << (port & 31)))

    def deliverable(self, vcpu: "Vcpu") -> bool:
        """local_events_need_delivery: upcall_pending set and upcall_mask clear."""
        view = self.hv.memory.view
        info = self.hv.vcpu_info_maddr(vcpu.vcpu_id)
        return bool(view[info]) and not view[info + 1]

    def pending_unmasked_ports(self, vcpu: "Vcpu") -> list[int]:
        """Ports the guest's upcall handler would find: selector words, pending & ~mask."""
        mem = self.hv.memory
        sel = mem.read_u32(self.hv.vcpu_info_maddr(vcpu.vcpu_id) + 4)
        base = self.hv.shared_info_maddr()
        ports = []
        for w in range(32):
            if sel >> w & 1:
                bits = mem.read_u32(base + _PENDING + 4 * w) & ~mem.read_u32(base + _MASK + 4 * w)
                ports.extend(w * 32 + b for b in range(32) if bits >> b & 1)
        return ports

    # -- VIRQs -------------------------------------------------------------------------
    def send_virq(self, virq: int, vcpu_id: int = 0) -> bool:
        """send_guest_vcpu_virq / send_guest_global_virq; False if the VIRQ is unbound."""
        owner = 0 if virq_is_global(virq) else vcpu_id
        if owner >= len(self.per_vcpu):
            return False
        port = self.per_vcpu[owner].virq_ports.get(virq)
        if port is None:
            return False
        self.set_pending(port)
        return True

    def raise_debug_virq(self, vcpu_id: int = 0) -> bool:
        """VIRQ_DEBUG, as Xen sends it from its debug key handler ('q' on the console)."""
        return self.send_virq(Virq.DEBUG, vcpu_id)

    def console_input_arrived(self) -> bool:
        """VIRQ_CONSOLE: new input for console_io(CONSOLEIO_read)."""
        return self.send_virq(Virq.CONSOLE)

    def timer_can_wake(self, vcpu: "Vcpu", need_upcall: bool) -> bool:
        """Would a VIRQ_TIMER for `vcpu` wake it?  Bound, unmasked (and with the upcall
        unmasked when the vcpu waits for an upcall rather than polling the port)."""
        port = self.per_vcpu[vcpu.vcpu_id].virq_ports.get(Virq.TIMER)
        if port is None:
            return False
        ev = self.per_vcpu[vcpu.vcpu_id]
        if ev.poll_ports is not None and (not ev.poll_ports or port in ev.poll_ports):
            return True
        if self.is_masked(port):
            return False
        return not need_upcall or not self.hv.memory.view[self.hv.vcpu_info_maddr(vcpu.vcpu_id) + 1]

    # -- the upcall ----------------------------------------------------------------------
    def upcall(self, vcpu: "Vcpu", frame: GuestFrame) -> GuestFrame:
        """Bounce to the event callback with events masked; DeliveryError if none."""
        hv = self.hv
        traps = hv.traps
        pv = traps.pv(vcpu)
        ports = self.pending_unmasked_ports(vcpu)
        sel = hv.memory.read_u32(hv.vcpu_info_maddr(vcpu.vcpu_id) + 4)
        if not pv.event.registered:
            raise DeliveryError("an event upcall is pending and unmasked, but no event "
                                "callback is registered (set_callbacks / CALLBACKTYPE_event); "
                                f"pending ports {ports}")
        pv.delivering = "event upcall"
        new = traps.bounce(vcpu, frame, pv.event.cs, pv.event.eip, mask_events=True)
        pv.delivering = None
        self.upcalls += 1
        seq = hv.trace.next_seq()
        self.last_upcall_seq[vcpu.vcpu_id] = seq
        hv.emit(TraceRecord(
            seq=seq, kind=TraceKind.upcall, icount=hv.cpu.icount,
            vcpu=vcpu.vcpu_id, eip=frame.eip, name="event_callback",
            args={"ports": ports, "pending_sel": sel, "ring": frame.ring,
                  "handler": pv.event.eip, "frame": new.esp},
            symbol=hv.symbolize(frame.eip),
            detail=", ".join(f"port {p} ({self.describe(p)})" for p in ports[:8]),
            parent=hv.current_hypercall_seq))
        return new

    def describe(self, port: int) -> str:
        ch = self._channel(port)
        if ch is None:
            return "invalid"
        if ch.state is EvtchnStatus.virq:
            return f"virq {virq_name(ch.virq)}"
        if ch.state is EvtchnStatus.interdomain:
            peer = ch.backend.name if ch.backend is not None else f"port {ch.remote_port}"
            return f"interdomain dom{ch.remote_domid} {peer}"
        if ch.state is EvtchnStatus.unbound:
            return f"unbound for dom{ch.remote_domid}"
        return ch.state.name

    # -- channel table -----------------------------------------------------------------
    def _channel(self, port: int) -> Channel | None:
        return self.channels[port] if 0 <= port < NR_EVENT_CHANNELS else None

    def _valid_bound(self, port: int) -> Channel:
        ch = self._channel(port)
        if ch is None:
            raise fail(Errno.EINVAL, f"port {port} is beyond the {NR_EVENT_CHANNELS}-port 2-level ABI")
        return ch

    def alloc_port(self) -> int:
        for port in range(1, NR_EVENT_CHANNELS):
            ch = self.channels[port]
            if ch.state is EvtchnStatus.closed and not ch.reserved:
                return port
        raise fail(Errno.ENOSPC, "all event channel ports are in use")

    def close(self, port: int) -> None:
        ch = self._valid_bound(port)
        if ch.reserved or ch.state is EvtchnStatus.closed:
            raise fail(Errno.EINVAL, f"port {port} is not bound")
        if ch.state is EvtchnStatus.interdomain:
            if ch.backend is not None:
                ch.backend.guest_port = None
            elif ch.remote_domid == self.domid:
                peer = self.channels[ch.remote_port]
                peer.state = EvtchnStatus.unbound
                peer.remote_domid = self.domid
                peer.remote_port = 0
        elif ch.state is EvtchnStatus.virq:
            owner = 0 if virq_is_global(ch.virq) else ch.notify_vcpu
            self.per_vcpu[owner].virq_ports.pop(ch.virq, None)
        self.clear_pending(port)
        self.channels[port] = Channel()

    def reset(self) -> None:
        for port in range(1, NR_EVENT_CHANNELS):
            if self.channels[port].state is not EvtchnStatus.closed:
                self.close(port)

    def _resolve_domid(self, domid: int) -> int:
        return self.domid if domid in (DOMID_SELF, self.domid) else domid

    # -- hypercall bodies ----------------------------------------------------------------
    def op(self, ctx: "HypercallContext", cmd: int, arg: int) -> int:
        g = ctx.guest
        if cmd == EvtchnOp.alloc_unbound:
            dom, remote = struct.unpack("<HH", g.read(arg, 4))
            self._require_self(dom)
            port = self.alloc_port()
            self.channels[port] = Channel(EvtchnStatus.unbound, 0, self._resolve_domid(remote))
            g.write_u32(arg + 4, port)
            ctx.note(f"port {port} unbound for dom{self._resolve_domid(remote)}")
            return 0
        if cmd == EvtchnOp.bind_interdomain:
            remote_dom = self._resolve_domid(struct.unpack("<H", g.read(arg, 2))[0])
            remote_port = g.read_u32(arg + 4)
            local = self._bind_interdomain(remote_dom, remote_port)
            g.write_u32(arg + 8, local)
            ctx.note(f"port {local} <-> dom{remote_dom} port {remote_port}")
            return 0
        if cmd == EvtchnOp.bind_virq:
            virq, vcpu_id = struct.unpack("<II", g.read(arg, 8))
            port = self._bind_virq(virq, vcpu_id)
            g.write_u32(arg + 8, port)
            ctx.note(f"virq {virq_name(virq)} vcpu {vcpu_id} -> port {port}")
            return 0
        if cmd == EvtchnOp.bind_ipi:
            vcpu_id = g.read_u32(arg)
            if vcpu_id >= len(self.hv.vcpus):
                raise fail(Errno.ENOENT, f"vcpu {vcpu_id} does not exist")
            port = self.alloc_port()
            self.channels[port] = Channel(EvtchnStatus.ipi, vcpu_id)
            g.write_u32(arg + 4, port)
            ctx.note(f"ipi vcpu {vcpu_id} -> port {port}")
            return 0
        if cmd == EvtchnOp.bind_pirq:
            raise fail(Errno.EPERM, "this domain has no physical IRQs")
        if cmd == EvtchnOp.close:
            port = g.read_u32(arg)
            ctx.note(f"port {port} ({self.describe(port)})")
            self.close(port)
            return 0
        if cmd == EvtchnOp.send:
            return self._send(ctx, g.read_u32(arg))
        if cmd == EvtchnOp.status:
            return self._status(ctx, arg)
        if cmd == EvtchnOp.bind_vcpu:
            port, vcpu_id = struct.unpack("<II", g.read(arg, 8))
            if vcpu_id >= len(self.hv.vcpus):
                raise fail(Errno.ENOENT, f"vcpu {vcpu_id} does not exist")
            ch = self._valid_bound(port)
            ok = (ch.state in (EvtchnStatus.unbound, EvtchnStatus.interdomain, EvtchnStatus.pirq)
                  or (ch.state is EvtchnStatus.virq and virq_is_global(ch.virq)))
            if not ok:
                raise fail(Errno.EINVAL, f"port {port} ({self.describe(port)}) cannot move vcpu")
            ch.notify_vcpu = vcpu_id
            ctx.note(f"port {port} -> vcpu {vcpu_id}")
            return 0
        if cmd == EvtchnOp.unmask:
            port = g.read_u32(arg)
            self._valid_bound(port)
            self.unmask(port)
            return 0
        if cmd == EvtchnOp.reset:
            (dom,) = struct.unpack("<H", g.read(arg, 2))
            self._require_self(dom)
            self.reset()
            return 0
        if cmd in (EvtchnOp.init_control, EvtchnOp.expand_array, EvtchnOp.set_priority):
            raise fail(Errno.ENOSYS, "this Xen offers the 2-level event channel ABI only")
        raise fail(Errno.ENOSYS, f"unknown event_channel_op {cmd}")

    def _require_self(self, dom: int) -> None:
        if dom in (DOMID_SELF, self.domid):
            return
        if dom == DOM0:
            raise fail(Errno.EPERM, "acting on dom0's event channels needs privilege")
        raise fail(Errno.ESRCH, f"no domain {dom}")

    def _bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        if remote_dom == self.domid:
            peer = self._channel(remote_port)
            if (peer is None or peer.state is not EvtchnStatus.unbound
                    or peer.remote_domid != self.domid):
                raise fail(Errno.EINVAL, f"own port {remote_port} is not unbound for this domain")
            local = self.alloc_port()
            self.channels[local] = Channel(EvtchnStatus.interdomain, 0, self.domid, remote_port)
            peer.state = EvtchnStatus.interdomain
            peer.remote_port = local
        elif remote_dom == DOM0:
            backend = self.backends.get(remote_port)
            if backend is None or backend.connected:
                raise fail(Errno.EINVAL, f"dom0 port {remote_port} is not unbound for this domain")
            local = self.alloc_port()
            self._connect_backend(local, backend)
        else:
            raise fail(Errno.ESRCH, f"no domain {remote_dom}")
        # Notifications sent to the unbound remote end may have been lost: Xen always
        # sets the new local port pending.
        self.set_pending(local)
        return local

    def _bind_virq(self, virq: int, vcpu_id: int) -> int:
        if virq >= NR_VIRQS:
            raise fail(Errno.EINVAL, f"virq {virq} >= NR_VIRQS ({NR_VIRQS})")
        if virq_is_global(virq) and vcpu_id != 0:
            raise fail(Errno.EINVAL, f"global virq {virq_name(virq)} binds on vcpu 0 only")
        if vcpu_id >= len(self.hv.vcpus):
            raise fail(Errno.ENOENT, f"vcpu {vcpu_id} does not exist")
        ports = self.per_vcpu[vcpu_id].virq_ports
        if virq in ports:
            raise fail(Errno.EEXIST, f"virq {virq_name(virq)} is already bound to port {ports[virq]}")
        port = self.alloc_port()
        self.channels[port] = Channel(EvtchnStatus.virq, vcpu_id, virq=virq)
        ports[virq] = port
        return port

    def _send(self, ctx: "HypercallContext", port: int) -> int:
        ch = self._valid_bound(port)
        ctx.note(f"port {port} ({self.describe(port)})")
        if ch.state is EvtchnStatus.interdomain:
            if ch.backend is not None:
                ch.backend.notifications_received += 1
                if ch.backend.on_notify is not None:
                    ch.backend.on_notify()
            else:
                self.set_pending(ch.remote_port)
                self._note_masked(ctx, self.channels[ch.remote_port].notify_vcpu)
            return 0
        if ch.state is EvtchnStatus.ipi:
            self.set_pending(port)
            self._note_masked(ctx, ch.notify_vcpu)
            return 0
        if ch.state is EvtchnStatus.unbound:
            ctx.note("unbound: the notification is dropped")
            return 0
        raise fail(Errno.EINVAL, f"port {port} ({self.describe(port)}) cannot be sent to")

    def _note_masked(self, ctx: "HypercallContext", vcpu_id: int) -> None:
        """Say so when the event cannot be delivered because the vcpu masks upcalls."""
        info = self.hv.vcpu_info_maddr(vcpu_id)
        if not self.hv.memory.view[info + 1]:
            return
        last = self.last_upcall_seq.get(vcpu_id)
        since = f"; the last upcall was trace seq {last}" if last is not None else ""
        ctx.note(f"vcpu{vcpu_id} has evtchn_upcall_mask=1: the event stays pending, no upcall"
                 + since)

    def _status(self, ctx: "HypercallContext", arg: int) -> int:
        g = ctx.guest
        (dom,) = struct.unpack("<H", g.read(arg, 2))
        port = g.read_u32(arg + 4)
        self._require_self(dom)
        ch = self._valid_bound(port)
        union = b"\0" * 8
        state = EvtchnStatus.closed if ch.reserved else ch.state
        if state is EvtchnStatus.unbound:
            union = struct.pack("<HHI", ch.remote_domid, 0, 0)
        elif state is EvtchnStatus.interdomain:
            union = struct.pack("<HHI", ch.remote_domid, 0, ch.remote_port)
        elif state is EvtchnStatus.virq:
            union = struct.pack("<II", ch.virq, 0)
        g.write(arg + 8, struct.pack("<II", state, ch.notify_vcpu) + union)
        ctx.note(f"port {port}: {self.describe(port)}")
        return 0


@HYPERCALLS.handler(Hc.event_channel_op, Param("cmd", EvtchnOp), Param("arg"))
def event_channel_op(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    return ctx.hv.events.op(ctx, cmd, arg)


@HYPERCALLS.handler(Hc.event_channel_op_compat, Param("op"))
def event_channel_op_compat(ctx: "HypercallContext", op: int) -> int:
    """The old form: `op` points at {u32 cmd; union}.  ABI: xen/arch/x86/compat.c."""
    cmd = ctx.guest.read_u32(op)
    if cmd > EvtchnOp.unmask:
        raise fail(Errno.ENOSYS, f"event_channel_op_compat {cmd}")
    ctx.note(f"cmd {EvtchnOp(cmd).name}")
    return ctx.hv.events.op(ctx, cmd, op + 4)
