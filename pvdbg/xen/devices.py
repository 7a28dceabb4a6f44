"""dom0's side of a PV domU: the toolstack's set-up and the backend daemons, wired to the
domain's event channels, grant table and trace.

What a real host runs in dom0 for one domU is played here by four pure backends
(grant_table.py, xenstore.py, consring.py, blkback.py); this module connects them:

  * the grant table (its frames shared with the guest, entries 0 and 1 seeded as
    xc_dom_gnttab_seed does) becomes `hv.grant_table`, which grant_table_op serves;
  * xenstored is filled with libxl's tree for a PV domU and introduced on the store page,
    behind start_info.store_evtchn; xenconsoled serves the console page behind
    start_info.console_evtchn;
  * each `--disk` image gets a block backend (vbd xvda, xvdb, ...) announced in xenstore
    before the guest runs;
  * xenstore and blkif traffic becomes trace records (TraceKind.xenstore, .blkif); ring
    console output goes where console_io output goes (`Hypervisor.console_output`).

Rings are pumped when the guest signals their port and by the run loop between slices
(`pump`), since guests such as PV GRUB poll the console input ring without a hypercall.
ABI: tools/libs/light/libxl_create.c, libxl_dom.c; tools/libs/guest/xg_dom_boot.c;
tools/console/daemon/io.c; tools/xenstored/domain.c.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..machine.memory import PAGE_SHIFT
from ..trace import TraceKind, TraceRecord
from .abi import StartInfo32, XenconsInterface
from .blkback import BindError, BlkBackend, BlkifAbi, BlkifOp, BlkTrace
from .consring import ConsoleRing
from .events import BackendPort, EvtchnStatus
from .grant_table import GrantTable
from .guestmem import GuestFault
from .mm import Owner
from .xenstore import (PvDomainConfig, Xenstored, XenstoreError, XenstoreRing, XsTrace,
                       populate_pv_domain)

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

CONSOLE_SOURCE = "console_ring"          # TraceRecord.name of output taken from the ring


@dataclass(frozen=True)
class DiskSpec:
    """A raw image file served to the guest as a PV block device."""
    path: str
    readonly: bool = False


def disk_names(count: int) -> list[str]:
    """xvda, xvdb, ... for `count` disks (libxl's vdev names for PV disks)."""
    names = []
    for index in range(count):
        letters = ""
        n = index + 1
        while n:
            n, rem = divmod(n - 1, 26)
            letters = chr(ord("a") + rem) + letters
        names.append("xvd" + letters)
    return names


class _BackendEnd:
    """A block backend's end of the interdomain channel the frontend allocated."""

    def __init__(self, hv: "Hypervisor", port: BackendPort) -> None:
        self.hv = hv
        self.port = port

    def notify(self) -> None:
        self.port.notify()

    def close(self) -> None:
        self.hv.events.close_backend(self.port)


class PvDevices:
    """The toolstack and dom0 backends of one PV domU (see the module docstring)."""

    def __init__(self, hv: "Hypervisor", *, disks: Sequence[DiskSpec] = (), kernel: str = "",
                 cmdline: str = "", xenstore: Sequence[tuple[str, str]] = ()) -> None:
        self.hv = hv
        memory = hv.memory
        domid = hv.domain.domid
        info = self._start_info()
        self.store_mfn = info.store_mfn
        self.console_mfn = info.console_mfn
        self.grants = GrantTable(memory, domid, self._alloc_grant_frame,
                                 frame_owned=lambda mfn: hv.mm.owner(mfn) is Owner.domain)
        self.grants.seed_toolstack_entries(self.console_mfn, self.store_mfn)
        hv.grant_table = self.grants

        self.xenstore = Xenstored()
        populate_pv_domain(self.xenstore, PvDomainConfig(
            domid=domid, name=hv.domain.name, memory_kib=hv.layout.nr_pages * 4,
            store_mfn=self.store_mfn, store_port=info.store_evtchn,
            console_mfn=self.console_mfn, console_port=info.console_evtchn,
            vcpus=len(hv.vcpus), kernel=kernel, cmdline=cmdline))
        self.store_port = hv.events.register_backend("xenstore", self._store_kicked,
                                                     guest_port=info.store_evtchn)
        self.store: XenstoreRing = self.xenstore.introduce_domain(
            domid, memory, self.store_mfn, self.store_port.notify)
        self.console_port = hv.events.register_backend("console", self._console_kicked,
                                                       guest_port=info.console_evtchn)
        self.console = ConsoleRing(memory, self.console_mfn, on_output=self._console_output,
                                   notify=self.console_port.notify)

        self.disks: list[BlkBackend] = []
        # The toolstack announces the domain's native ring layout (libxl: x86_64-abi for
        # a 64-bit PV domain).
        guest_abi = BlkifAbi.x86_64 if getattr(hv, "guest_bits", 32) == 64 else BlkifAbi.x86_32
        for spec, vdev in zip(disks, disk_names(len(disks))):
            backend = BlkBackend(self.xenstore, self.grants, memory, spec.path,
                                 frontend_domid=domid, bind_event_channel=self._bind_blkif,
                                 vdev=vdev, readonly=spec.readonly, guest_abi=guest_abi)
            backend.tracers.append(self._trace_blkif)
            backend.attach()
            self.disks.append(backend)
        home = f"/local/domain/{domid}"
        for path, value in xenstore:     # the user's keys (relative: under the home)
            self.xenstore.write(path if path.startswith("/") else f"{home}/{path}", value)
        # The toolstack's own writes above happen before the domain exists in the trace.
        self.xenstore.tracers.append(self._trace_xenstore)

    # -- set-up ------------------------------------------------------------------------
    def _start_info(self) -> StartInfo32:
        hv = self.hv
        layout = getattr(hv, "START_INFO_LAYOUT", StartInfo32)    # StartInfo64 for 64-bit
        try:
            return layout.from_bytes(hv.guest.read(hv.layout.start_info_va, layout.SIZE))
        except GuestFault as fault:
            raise ValueError(f"start_info is not readable: {fault}") from None

    def _alloc_grant_frame(self) -> int | None:
        """A frame from the spare pool, shared with the guest as Xen shares grant frames
        (gnttab_create_shared_page: Xen heap, guest-writable).  Taken from the top of
        the pool, as Xen's heap is apart from the domain heap that populate_physmap
        allocates from the bottom."""
        free = self.hv.built.free_mfns
        if not free:
            return None
        mfn = free.pop()
        self.hv.mm.share_xen_page_with_guest(mfn)
        return mfn

    def _bind_blkif(self, frontend_domid: int, port: int, on_event) -> _BackendEnd:
        """xen-blkback binding the frontend's event-channel (bind_interdomain from dom0)."""
        events = self.hv.events
        if frontend_domid != self.hv.domain.domid:
            raise BindError(3, f"no domain {frontend_domid}")
        ch = events.channels[port] if 0 < port < len(events.channels) else None
        if ch is None or ch.state is not EvtchnStatus.unbound or ch.remote_domid != 0:
            raise BindError(22, f"port {port} is not unbound for dom0")
        return _BackendEnd(self.hv, events.register_backend(f"vbd-{port}", on_event, guest_port=port))

    # -- rings -------------------------------------------------------------------------
    def _store_kicked(self) -> None:
        self.store.pump()

    def _console_kicked(self) -> None:
        self.console.pump()

    def pump(self) -> bool:
        """Serve both rings (between execution slices); True if anything moved."""
        moved = self.store.pump()
        return self.console.pump().moved or moved

    def feed_console(self, data: bytes) -> None:
        """Keyboard input for the guest's PV console; it reaches in[] on the next pump."""
        self.console.feed(data)
        self.console.pump()

    def console_input_pending(self) -> bool:
        """Input not yet consumed by the guest: queued here or unread in in[]."""
        if self.console.pending_input:
            return True
        idx = self.console.indices()
        return idx["in_prod"] != idx["in_cons"]

    def input_ring_maddr(self) -> int:
        """Machine address of the console page's in_prod index (what a poller reads)."""
        return (self.console_mfn << PAGE_SHIFT) + XenconsInterface.offset_of("in_prod")

    def close(self) -> None:
        for backend in self.disks:
            backend.close()

    # -- output and tracing ------------------------------------------------------------
    def _console_output(self, data: bytes) -> None:
        self.hv.console_output(data, source=CONSOLE_SOURCE)

    def _record(self, kind: TraceKind, name: str, args: dict, detail: str,
                error: str | None = None) -> None:
        hv = self.hv
        eip = hv.cpu.read("eip")
        hv.emit(TraceRecord(seq=hv.trace.next_seq(), kind=kind, icount=hv.cpu.icount,
                            vcpu=hv.current.vcpu_id, eip=eip, name=name, args=args,
                            error=error, symbol=hv.symbolize(eip), detail=detail,
                            parent=hv.current_hypercall_seq))

    def _trace_xenstore(self, event: XsTrace) -> None:
        self._record(TraceKind.xenstore, event.msg_type,
                     {"what": str(event.kind), "domid": event.domid, "req_id": event.req_id,
                      "tx_id": event.tx_id, "args": list(event.args)},
                     event.describe(), error=event.error)

    def _trace_blkif(self, event: BlkTrace) -> None:
        try:
            name = BlkifOp(event.operation).name
        except ValueError:
            name = f"op{event.operation}"
        self._record(TraceKind.blkif, name,
                     {"devid": event.devid, "operation": event.operation, "sector": event.sector,
                      "nr_sectors": event.nr_sectors, "status": event.status},
                     event.describe(), error=None if event.status == 0 else str(event.status))


def attach_devices(hv: "Hypervisor", *, disks: Sequence[DiskSpec] = (), kernel: str = "",
                   cmdline: str = "", xenstore: Sequence[tuple[str, str]] = ()) -> PvDevices:
    """Create dom0's side of the domain as `hv.devices` (and `hv.grant_table`); raises
    ValueError (one line) for a disk that cannot be opened or a bad xenstore key."""
    try:
        hv.devices = PvDevices(hv, disks=disks, kernel=kernel, cmdline=cmdline,
                               xenstore=xenstore)
    except XenstoreError as err:
        raise ValueError(f"xenstore: {err}") from None
    return hv.devices
