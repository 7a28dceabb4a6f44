"""A block backend serving a raw disk image to a PV frontend through the blkif ring.

It plays three dom0 parts: the toolstack writing the vbd's frontend and backend nodes
(libxl device_disk_add), the hotplug script, and Linux's xen-blkback (xenbus state
machine, ring-ref and event-channel from the frontend, BLKIF_OP_READ/WRITE on 512-byte
sectors through grant references).  Requests are served synchronously when the
frontend signals the backend's event channel (`on_frontend_event`).
ABI: xen/include/public/io/blkif.h, io/ring.h, io/xenbus.h, io/protocols.h;
Linux drivers/block/xen-blkback/{xenbus,blkback}.c; tools/libs/light/libxl_disk.c.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Callable, Protocol

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .grant_table import GrantError, GrantTable
from .xenstore import XenbusState, Xenstored, XenstoreError, add_device_nodes, is_decimal

SECTOR_SIZE = 512
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR_SIZE
BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
SRING_HEADER_SIZE = 64                 # req_prod, req_event, rsp_prod, rsp_event, padding
VDISK_CDROM = 1
VDISK_REMOVABLE = 2
VDISK_READONLY = 4
XEN_BLKIF_MAJOR = 202
U32 = 0xFFFFFFFF


class BlkifOp(IntEnum):
    """BLKIF_OP_*.  ABI: xen/include/public/io/blkif.h."""
    read = 0
    write = 1
    write_barrier = 2
    flush_diskcache = 3
    reserved_1 = 4
    discard = 5
    indirect = 6


class BlkifStatus(IntEnum):
    """BLKIF_RSP_*."""
    okay = 0
    error = -1
    eopnotsupp = -2


class BlkifAbi(StrEnum):
    """Ring layouts by the frontend's `protocol` key.  ABI: io/protocols.h."""
    x86_32 = "x86_32-abi"
    x86_64 = "x86_64-abi"


@dataclass(frozen=True)
class RingLayout:
    """Byte layout of blkif requests and responses for one ABI (io/blkif.h, with the
    i386 ABI's 4-byte alignment of uint64_t for x86_32)."""
    req_id: int
    req_sector: int
    req_segs: int
    request_size: int
    response_size: int

    @property
    def entry_size(self) -> int:
        return max(self.request_size, self.response_size)

    @property
    def nr_entries(self) -> int:
        """__RING_SIZE: entries that fit after the header, rounded down to a power of 2."""
        count = (PAGE_SIZE - SRING_HEADER_SIZE) // self.entry_size
        return 1 << (count.bit_length() - 1)


LAYOUTS = {
    BlkifAbi.x86_32: RingLayout(req_id=4, req_sector=12, req_segs=20, request_size=108, response_size=12),
    BlkifAbi.x86_64: RingLayout(req_id=8, req_sector=16, req_segs=24, request_size=112, response_size=16),
}
_SEG = struct.Struct("<IBB2x")          # blkif_request_segment: gref, first_sect, last_sect


@dataclass(frozen=True)
class BlkifSegment:
    gref: int
    first_sect: int
    last_sect: int


@dataclass(frozen=True)
class BlkifRequest:
    operation: int
    nr_segments: int
    handle: int
    id: int
    sector_number: int
    segments: tuple[BlkifSegment, ...]

    @classmethod
    def decode(cls, data: bytes, layout: RingLayout) -> "BlkifRequest":
        operation, nr_segments, handle = struct.unpack_from("<BBH", data, 0)
        (req_id,) = struct.unpack_from("<Q", data, layout.req_id)
        (sector,) = struct.unpack_from("<Q", data, layout.req_sector)
        segs = tuple(BlkifSegment(*_SEG.unpack_from(data, layout.req_segs + i * _SEG.size))
                     for i in range(min(nr_segments, BLKIF_MAX_SEGMENTS_PER_REQUEST)))
        return cls(operation, nr_segments, handle, req_id, sector, segs)

    def encode(self, layout: RingLayout) -> bytes:
        """The request as a frontend writes it (tests and fuzzing)."""
        buf = bytearray(layout.request_size)
        struct.pack_into("<BBH", buf, 0, self.operation, self.nr_segments, self.handle)
        struct.pack_into("<Q", buf, layout.req_id, self.id)
        struct.pack_into("<Q", buf, layout.req_sector, self.sector_number)
        for i, seg in enumerate(self.segments):
            _SEG.pack_into(buf, layout.req_segs + i * _SEG.size, seg.gref, seg.first_sect, seg.last_sect)
        return bytes(buf)


def encode_response(req_id: int, operation: int, status: int, layout: RingLayout) -> bytes:
    buf = bytearray(layout.response_size)
    struct.pack_into("<QBxh", buf, 0, req_id, operation & 0xFF, status)
    return bytes(buf)


def decode_response(data: bytes) -> tuple[int, int, int]:
    """(id, operation, status) of a blkif_response."""
    return struct.unpack_from("<QBxh", data, 0)


def vbd_devid(vdev: str) -> int:
    """The xenstore device number of an xvd name (libxl__device_disk_dev_number):
    xvda..xvdp -> 202<<8 | index<<4, further disks use the extended encoding."""
    if (not vdev.isascii() or not vdev.startswith("xvd") or len(vdev) < 4 or not vdev[3:].isalpha()
            or not vdev[3:].islower()):
        raise ValueError(f"{vdev!r} is not an xvd disk name (xvda, xvdb, ...)")
    index = 0
    for ch in vdev[3:]:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    index -= 1
    if index < 16:
        return (XEN_BLKIF_MAJOR << 8) | (index << 4)
    return (1 << 28) | (index << 8)


class BindError(Exception):
    """The backend could not bind the frontend's event channel (`errno` positive)."""

    def __init__(self, errno: int, why: str) -> None:
        self.errno = errno
        self.why = why
        super().__init__(f"errno {errno}: {why}")


class BackendPort(Protocol):
    """The backend's end of an interdomain event channel."""

    def notify(self) -> None: ...

    def close(self) -> None: ...


# (frontend domid, frontend port, callback on frontend events) -> the bound port.
EventChannelBinder = Callable[[int, int, Callable[[], None]], BackendPort]


class DiskImage:
    """A raw image file seen as 512-byte sectors (a trailing partial sector is hidden,
    as a loop device hides it)."""

    def __init__(self, path: str, readonly: bool) -> None:
        self.path = os.path.abspath(path)
        self.readonly = readonly
        try:
            self._fd = os.open(self.path, os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as exc:
            raise ValueError(f"cannot open disk image {path}: {exc.strerror}") from None
        self.sectors = os.fstat(self._fd).st_size // SECTOR_SIZE

    def read(self, sector: int, count: int) -> bytes:
        data = os.pread(self._fd, count * SECTOR_SIZE, sector * SECTOR_SIZE)
        return data + bytes(count * SECTOR_SIZE - len(data))

    def write(self, sector: int, data: bytes) -> None:
        os.pwrite(self._fd, data, sector * SECTOR_SIZE)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class BlkTrace:
    """One request served (or refused), for trace records."""
    devid: int
    operation: int
    sector: int
    nr_sectors: int
    status: int
    detail: str = ""

    def describe(self) -> str:
        try:
            op = BlkifOp(self.operation).name
        except ValueError:
            op = f"op{self.operation}"
        status = BlkifStatus(self.status).name if self.status in (0, -1, -2) else str(self.status)
        extra = f" ({self.detail})" if self.detail else ""
        return f"vbd {self.devid} {op} sector {self.sector} x{self.nr_sectors} -> {status}{extra}"


class _RequestFailed(Exception):
    def __init__(self, status: BlkifStatus, why: str) -> None:
        self.status = status
        self.why = why
        super().__init__(why)


class BlkBackend:
    """One virtual block device `vdev` of domain `frontend_domid`, backed by `disk_path`,
    served from `backend_domid` (dom0).  `guest_abi` is the protocol the toolstack
    announces for the guest (x86_32-abi for a 32-bit PV domain)."""

    def __init__(self, xs: Xenstored, grants: GrantTable, memory: MachineMemory, disk_path: str, *,
                 frontend_domid: int, bind_event_channel: EventChannelBinder, vdev: str = "xvda",
                 readonly: bool = False, backend_domid: int = 0,
                 guest_abi: BlkifAbi = BlkifAbi.x86_32) -> None:
        self.xs = xs
        self.grants = grants
        self.memory = memory
        self.disk = DiskImage(disk_path, readonly)
        self.readonly = readonly
        self.frontend_domid = frontend_domid
        self.backend_domid = backend_domid
        self.vdev = vdev
        self.devid = vbd_devid(vdev)
        self.bind_event_channel = bind_event_channel
        self.guest_abi = guest_abi
        self.front = f"/local/domain/{frontend_domid}/device/vbd/{self.devid}"
        self.back = f"/local/domain/{backend_domid}/backend/vbd/{frontend_domid}/{self.devid}"
        self.tracers: list[Callable[[BlkTrace], None]] = []
        self.state = XenbusState.Initialising
        self.port: BackendPort | None = None
        self.layout: RingLayout | None = None
        self.ring_mfn: int | None = None
        self.req_cons = 0
        self.rsp_prod_pvt = 0
        self.ring_broken = False
        self.requests_served = 0
        self._watch = None

    # -- xenbus -------------------------------------------------------------------------
    def attach(self) -> None:
        """Create the device in xenstore and wait for the frontend (state InitWait)."""
        mode = "r" if self.readonly else "w"
        add_device_nodes(
            self.xs, self.frontend_domid, self.backend_domid, self.front, self.back,
            libxl_path=f"/libxl/{self.frontend_domid}/device/vbd/{self.devid}",
            backend=[("params", self.disk.path), ("script", "/etc/xen/scripts/block"),
                     ("frontend-id", str(self.frontend_domid)), ("online", "1"), ("removable", "0"),
                     ("bootable", "1"), ("state", str(int(XenbusState.Initialising))),
                     ("dev", self.vdev), ("type", "phy"), ("mode", mode), ("device-type", "disk"),
                     ("discard-enable", "0")],
            frontend=[("backend-id", str(self.backend_domid)),
                      ("state", str(int(XenbusState.Initialising))),
                      ("virtual-device", str(self.devid)), ("device-type", "disk"),
                      ("protocol", self.guest_abi.value)])
        self._switch(XenbusState.InitWait)
        for key, value in (("physical-device", "7:0"), ("physical-device-path", "/dev/loop0"),
                           ("hotplug-status", "connected")):
            self.xs.write(f"{self.back}/{key}", value)
        self._watch = self.xs.watch(f"{self.front}/state", self._frontend_changed,
                                    token=f"blkback-{self.devid}")

    def _switch(self, state: XenbusState) -> None:
        if self.state != state:
            self.state = state
            self.xs.write(f"{self.back}/state", str(int(state)))

    def _fatal(self, errno: int, message: str) -> None:
        """xenbus_dev_fatal: record the error under dom0's error/ tree and close."""
        where = self.back[len(f"/local/domain/{self.backend_domid}/"):]
        self.xs.write(f"/local/domain/{self.backend_domid}/error/{where}/error", f"{errno} {message}")
        self._disconnect()
        self._switch(XenbusState.Closing)

    def _frontend_state(self) -> int:
        """The frontend's state key as a number; Unknown (0) if missing or not a number."""
        try:
            text = self.xs.read(f"{self.front}/state").decode("latin-1")
        except XenstoreError:
            return XenbusState.Unknown
        return int(text) if is_decimal(text) else XenbusState.Unknown

    def _frontend_changed(self, path: str, token: str) -> None:
        state = self._frontend_state()
        if state == XenbusState.Initialising:
            if self.state == XenbusState.Closed:
                self._switch(XenbusState.InitWait)
        elif state in (XenbusState.Initialised, XenbusState.Connected):
            if self.state != XenbusState.Connected:
                self._disconnect()
                if self._connect_ring():
                    self._connect()
        elif state == XenbusState.Closing:
            self._switch(XenbusState.Closing)
        elif state in (XenbusState.Closed, XenbusState.Unknown):
            self._disconnect()
            self._switch(XenbusState.Closed)
        else:
            self._fatal(22, f"saw state {int(state)} at frontend")

    def _read_front(self, key: str) -> str | None:
        try:
            return self.xs.read(f"{self.front}/{key}").decode("latin-1")
        except XenstoreError:
            return None

    def _connect_ring(self) -> bool:
        """Read ring-ref, event-channel and protocol; check the ring grant; bind the port."""
        ring_ref = self._read_front("ring-ref")
        evtchn = self._read_front("event-channel")
        if ring_ref is None or not is_decimal(ring_ref):
            self._fatal(2, f"reading {self.front}/ring-ref")
            return False
        if evtchn is None or not is_decimal(evtchn):
            self._fatal(2, f"reading {self.front}/event-channel")
            return False
        protocol = self._read_front("protocol") or BlkifAbi.x86_64.value
        try:
            abi = BlkifAbi(protocol)
        except ValueError:
            self._fatal(38, f"unknown fe protocol {protocol}")
            return False
        if self._read_front("ring-page-order") not in (None, "0"):
            self._fatal(22, "multi-page rings are not supported (no max-ring-page-order)")
            return False
        try:
            access = self.grants.acquire(int(ring_ref), self.backend_domid, writable=True)
        except GrantError as err:
            self._fatal(22, f"mapping ring-ref {ring_ref} port {evtchn}: {err}")
            return False
        try:
            self.port = self.bind_event_channel(self.frontend_domid, int(evtchn), self.on_frontend_event)
        except BindError as err:
            self._fatal(err.errno, f"binding port {evtchn}: {err.why}")
            return False
        self.layout = LAYOUTS[abi]
        self.ring_mfn = access.mfn
        self.req_cons = 0
        self.rsp_prod_pvt = 0
        self.ring_broken = False
        return True

    def _connect(self) -> None:
        for key, value in (("feature-flush-cache", "1"), ("sectors", str(self.disk.sectors)),
                           ("info", str(VDISK_READONLY if self.readonly else 0)),
                           ("sector-size", str(SECTOR_SIZE)),
                           ("physical-sector-size", str(SECTOR_SIZE))):
            self.xs.write(f"{self.back}/{key}", value)
        self._switch(XenbusState.Connected)
        self.on_frontend_event()

    def _disconnect(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None
        self.ring_mfn = None
        self.layout = None

    def close(self) -> None:
        """Detach from xenstore and close the image."""
        self._disconnect()
        if self._watch is not None:
            self.xs.unwatch(self._watch)
            self._watch = None
        self.disk.close()

    # -- the ring ------------------------------------------------------------------------
    def _ring_u32(self, off: int) -> int:
        assert self.ring_mfn is not None
        return self.memory.read_u32((self.ring_mfn << PAGE_SHIFT) + off)

    def _ring_set_u32(self, off: int, value: int) -> None:
        assert self.ring_mfn is not None
        self.memory.write_u32((self.ring_mfn << PAGE_SHIFT) + off, value)

    def on_frontend_event(self) -> int:
        """The frontend signalled: serve every queued request.  Returns how many."""
        if self.ring_mfn is None or self.layout is None or self.ring_broken:
            return 0
        layout = self.layout
        size = layout.nr_entries
        served = 0
        while True:
            req_prod = self._ring_u32(0)
            if ((req_prod - self.rsp_prod_pvt) & U32) > size:
                self.ring_broken = True
                self._trace(BlkTrace(self.devid, -1, 0, 0, BlkifStatus.error,
                                     f"frontend provided bogus ring requests ({req_prod} - "
                                     f"{self.rsp_prod_pvt}); halting ring processing"))
                break
            while self.req_cons != req_prod:
                if ((self.req_cons - self.rsp_prod_pvt) & U32) >= size:
                    break
                slot = SRING_HEADER_SIZE + (self.req_cons % size) * layout.entry_size
                raw = self.memory.read((self.ring_mfn << PAGE_SHIFT) + slot, layout.request_size)
                self.req_cons = (self.req_cons + 1) & U32
                self._respond(BlkifRequest.decode(raw, layout))
                served += 1
            # RING_FINAL_CHECK_FOR_REQUESTS
            if self._unconsumed():
                continue
            self._ring_set_u32(4, (self.req_cons + 1) & U32)           # req_event
            if not self._unconsumed():
                break
        self.requests_served += served
        return served

    def _unconsumed(self) -> int:
        size = self.layout.nr_entries if self.layout else 0
        return min((self._ring_u32(0) - self.req_cons) & U32,
                   size - ((self.req_cons - self.rsp_prod_pvt) & U32))

    def _respond(self, req: BlkifRequest) -> None:
        assert self.layout is not None and self.ring_mfn is not None
        nr_sectors = sum(s.last_sect - s.first_sect + 1 for s in req.segments
                         if s.last_sect >= s.first_sect)
        try:
            self._serve(req)
            status, detail = BlkifStatus.okay, ""
        except _RequestFailed as failure:
            status, detail = failure.status, failure.why
        layout = self.layout
        slot = SRING_HEADER_SIZE + (self.rsp_prod_pvt % layout.nr_entries) * layout.entry_size
        self.memory.write((self.ring_mfn << PAGE_SHIFT) + slot,
                          encode_response(req.id, req.operation, status, layout))
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & U32
        old = self._ring_u32(8)
        new = self.rsp_prod_pvt
        self._ring_set_u32(8, new)                                      # rsp_prod
        rsp_event = self._ring_u32(12)
        self._trace(BlkTrace(self.devid, req.operation, req.sector_number, nr_sectors, status, detail))
        if ((new - rsp_event) & U32) < ((new - old) & U32) and self.port is not None:
            self.port.notify()

    def _serve(self, req: BlkifRequest) -> None:
        if req.operation == BlkifOp.flush_diskcache:
            if not self.readonly:
                self.disk.flush()
            return
        if req.operation not in (BlkifOp.read, BlkifOp.write):
            raise _RequestFailed(BlkifStatus.eopnotsupp, f"unsupported operation {req.operation}")
        if not 1 <= req.nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise _RequestFailed(BlkifStatus.error, f"bad number of segments {req.nr_segments}")
        for seg in req.segments:
            if seg.last_sect >= SECTORS_PER_PAGE or seg.last_sect < seg.first_sect:
                raise _RequestFailed(BlkifStatus.error,
                                     f"bad segment sectors {seg.first_sect}..{seg.last_sect}")
        writing = req.operation == BlkifOp.write
        if writing and self.readonly:
            raise _RequestFailed(BlkifStatus.error, "write to a read-only device")
        total = sum(s.last_sect - s.first_sect + 1 for s in req.segments)
        end = req.sector_number + total
        if end > self.disk.sectors:
            raise _RequestFailed(BlkifStatus.error, f"sectors {req.sector_number}..{end - 1} beyond "
                                                    f"the {self.disk.sectors}-sector disk")
        try:
            frames = [self.grants.acquire(s.gref, self.backend_domid, writable=not writing).mfn
                      for s in req.segments]
        except GrantError as err:
            raise _RequestFailed(BlkifStatus.error, f"invalid buffer: {err}") from None
        sector = req.sector_number
        for seg, mfn in zip(req.segments, frames):
            count = seg.last_sect - seg.first_sect + 1
            maddr = (mfn << PAGE_SHIFT) + seg.first_sect * SECTOR_SIZE
            if writing:
                self.disk.write(sector, self.memory.read(maddr, count * SECTOR_SIZE))
            else:
                self.memory.write(maddr, self.disk.read(sector, count))
            sector += count

    def _trace(self, event: BlkTrace) -> None:
        for tracer in self.tracers:
            tracer(event)
