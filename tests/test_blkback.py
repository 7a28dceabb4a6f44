"""The block backend: xenbus handshake in xenstore, then blkif requests through grants,
against a simulated frontend that does what PV GRUB's xendisk.c does."""
from __future__ import annotations

import struct

import pytest

from pvdbg.machine.memory import MachineMemory
from pvdbg.xen.blkback import (
    LAYOUTS, SECTOR_SIZE, SRING_HEADER_SIZE, VDISK_READONLY, BindError, BlkBackend, BlkifAbi,
    BlkifOp, BlkifRequest, BlkifSegment, BlkifStatus, decode_response, vbd_devid)
from pvdbg.xen.grant_table import GrantEntryV1, GrantTable, GtfFlags
from pvdbg.xen.xenstore import (PvDomainConfig, XenbusState, Xenstored, XsMessage, XsType,
                                populate_pv_domain)

DOMID = 1
RING_MFN, DATA_MFN, DATA2_MFN = 10, 11, 12
RING_REF, DATA_REF, DATA2_REF, RO_REF = 2, 3, 4, 5
FRONT = "/local/domain/1/device/vbd/51712"
BACK = "/local/domain/0/backend/vbd/1/51712"
DISK_SECTORS = 64


class FakePort:
    def __init__(self, domid: int, port: int, on_event) -> None:
        self.domid, self.port, self.on_event = domid, port, on_event
        self.notifications = 0
        self.closed = False

    def notify(self) -> None:
        self.notifications += 1

    def close(self) -> None:
        self.closed = True


class Frontend:
    """The guest: xenstore requests on its connection, and the shared ring."""

    def __init__(self, xs: Xenstored, memory: MachineMemory, abi: BlkifAbi = BlkifAbi.x86_32) -> None:
        self.xs = xs
        self.conn = xs.connect_domain(DOMID)
        self.memory = memory
        self.layout = LAYOUTS[abi]
        self.req_prod_pvt = 0
        self.rsp_cons = 0

    def xs_req(self, msg_type: int, payload: bytes) -> XsMessage:
        reply = self.xs.handle_message(self.conn, XsMessage(msg_type, 1, 0, payload))
        self.conn.outbox.clear()
        return reply

    def write(self, rel: str, value: str) -> None:
        reply = self.xs_req(XsType.WRITE, rel.encode() + b"\0" + value.encode())
        assert reply.type == XsType.WRITE, reply

    def read(self, path: str) -> bytes:
        reply = self.xs_req(XsType.READ, path.encode() + b"\0")
        return reply.payload if reply.type == XsType.READ else b"!" + reply.payload

    def init_ring(self) -> None:
        self.memory.zero_frame(RING_MFN)
        self.memory.write(RING_MFN << 12, struct.pack("<IIII", 0, 1, 0, 1))   # SHARED_RING_INIT

    def push(self, *requests: BlkifRequest) -> None:
        for req in requests:
            slot = SRING_HEADER_SIZE + (self.req_prod_pvt % self.layout.nr_entries) * self.layout.entry_size
            self.memory.write((RING_MFN << 12) + slot, req.encode(self.layout))
            self.req_prod_pvt = (self.req_prod_pvt + 1) & 0xFFFFFFFF
        self.memory.write_u32(RING_MFN << 12, self.req_prod_pvt)

    def responses(self) -> list[tuple[int, int, int]]:
        out = []
        prod = self.memory.read_u32((RING_MFN << 12) + 8)
        while self.rsp_cons != prod:
            slot = SRING_HEADER_SIZE + (self.rsp_cons % self.layout.nr_entries) * self.layout.entry_size
            out.append(decode_response(self.memory.read((RING_MFN << 12) + slot, self.layout.response_size)))
            self.rsp_cons += 1
        return out


def read_req(sector: int, nr: int = 8, gref: int = DATA_REF, req_id: int = 77,
             first: int = 0) -> BlkifRequest:
    return BlkifRequest(BlkifOp.read, 1, 51712, req_id, sector,
                        (BlkifSegment(gref, first, first + nr - 1),))


@pytest.fixture
def env(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(bytes([i]) * SECTOR_SIZE for i in range(DISK_SECTORS)))
    memory = MachineMemory(64)
    pool = list(range(40, 64))
    grants = GrantTable(memory, DOMID, lambda: pool.pop(0))
    grants.seed_toolstack_entries(console_mfn=7, store_mfn=8)
    for ref, mfn, flags in ((RING_REF, RING_MFN, GtfFlags.permit_access),
                            (DATA_REF, DATA_MFN, GtfFlags.permit_access),
                            (DATA2_REF, DATA2_MFN, GtfFlags.permit_access),
                            (RO_REF, DATA_MFN, GtfFlags.permit_access | GtfFlags.readonly)):
        grants.set_entry(ref, GrantEntryV1(flags=flags, domid=0, frame=mfn))
    xs = Xenstored()
    populate_pv_domain(xs, PvDomainConfig(domid=DOMID, name="grub", memory_kib=65536, store_mfn=8,
                                          store_port=1, console_mfn=7, console_port=2))
    ports: list[FakePort] = []

    def bind(domid, port, on_event):
        ports.append(FakePort(domid, port, on_event))
        return ports[-1]

    def make(readonly=False, binder=bind, abi=BlkifAbi.x86_32):
        backend = BlkBackend(xs, grants, memory, str(image), frontend_domid=DOMID,
                             bind_event_channel=binder, readonly=readonly)
        backend.attach()
        return backend, Frontend(xs, memory, abi)
    return make, memory, xs, ports, image


def connect(front: Frontend, protocol: str = "x86_32-abi") -> None:
    """What GRUB's xendisk fill() writes, in its order."""
    front.init_ring()
    base = "device/vbd/51712"
    front.write(f"{base}/ring-ref", str(RING_REF))
    front.write(f"{base}/event-channel", "5")
    front.write(f"{base}/protocol", protocol)
    front.write(f"{base}/state", "3")


def test_attach_writes_the_toolstack_and_backend_nodes(env):
    make, _, xs, _, image = env
    backend, front = make()
    assert front.xs_req(XsType.DIRECTORY, b"device/vbd\0").payload == b"51712\0"
    assert front.read("device/vbd/51712/backend") == BACK.encode()
    assert front.read("device/vbd/51712/backend-id") == b"0"
    assert front.read("device/vbd/51712/virtual-device") == b"51712"
    assert front.read("device/vbd/51712/protocol") == b"x86_32-abi"
    assert front.read(f"{BACK}/dev") == b"xvda"
    assert front.read(f"{BACK}/state") == b"2"
    assert front.read(f"{BACK}/params") == str(image).encode()
    assert front.read(f"{BACK}/mode") == b"w"
    assert xs.get_perms(FRONT) == ["n1", "r0"] and xs.get_perms(BACK) == ["n0", "r1"]
    assert backend.state == XenbusState.InitWait


def test_handshake_then_read(env):
    make, memory, xs, ports, _ = env
    backend, front = make()
    connect(front)
    assert backend.state == XenbusState.Connected
    assert front.read(f"{BACK}/state") == b"4"
    assert front.read(f"{BACK}/sectors") == str(DISK_SECTORS).encode()
    assert front.read(f"{BACK}/sector-size") == b"512"
    assert front.read(f"{BACK}/info") == b"0"
    assert [(p.domid, p.port) for p in ports] == [(DOMID, 5)]
    front.push(read_req(8))
    assert ports[0].on_event() == 1                   # the frontend's EVTCHNOP_send
    assert front.responses() == [(77, BlkifOp.read, BlkifStatus.okay)]
    data = memory.read(DATA_MFN << 12, 4096)
    assert data == b"".join(bytes([i]) * SECTOR_SIZE for i in range(8, 16))
    assert ports[0].notifications == 1                # rsp_event was 1: frontend wants a kick


def test_write_and_flush(env):
    make, memory, _, ports, image = env
    backend, front = make()
    connect(front)
    memory.write((DATA_MFN << 12) + 512, b"\xab" * 1024)
    front.push(BlkifRequest(BlkifOp.write, 1, 51712, 5, 20, (BlkifSegment(DATA_REF, 1, 2),)),
               BlkifRequest(BlkifOp.flush_diskcache, 0, 51712, 6, 0, ()))
    ports[0].on_event()
    assert front.responses() == [(5, BlkifOp.write, 0), (6, BlkifOp.flush_diskcache, 0)]
    disk = image.read_bytes()
    assert disk[20 * 512:22 * 512] == b"\xab" * 1024
    assert disk[19 * 512:20 * 512] == bytes([19]) * 512 and disk[22 * 512:23 * 512] == bytes([22]) * 512


def test_multi_segment_request(env):
    make, memory, _, ports, _ = env
    backend, front = make()
    connect(front)
    front.push(BlkifRequest(BlkifOp.read, 2, 51712, 9, 30,
                            (BlkifSegment(DATA_REF, 7, 7), BlkifSegment(DATA2_REF, 0, 1))))
    ports[0].on_event()
    assert front.responses() == [(9, BlkifOp.read, 0)]
    assert memory.read((DATA_MFN << 12) + 7 * 512, 512) == bytes([30]) * 512
    assert memory.read(DATA2_MFN << 12, 1024) == bytes([31]) * 512 + bytes([32]) * 512


@pytest.mark.parametrize("req,status", [
    (read_req(DISK_SECTORS - 4), BlkifStatus.error),                             # runs off the end
    (read_req(0, gref=RO_REF), BlkifStatus.error),                               # READ needs a writable grant
    (read_req(0, gref=99), BlkifStatus.error),                                   # empty grant entry
    (read_req(0, gref=RING_REF + 1000), BlkifStatus.error),                      # ref beyond the table
    (BlkifRequest(BlkifOp.read, 0, 51712, 77, 0, ()), BlkifStatus.error),        # no segments
    (BlkifRequest(BlkifOp.read, 1, 51712, 77, 0, (BlkifSegment(DATA_REF, 3, 2),)), BlkifStatus.error),
    (BlkifRequest(BlkifOp.read, 1, 51712, 77, 0, (BlkifSegment(DATA_REF, 0, 8),)), BlkifStatus.error),
    (BlkifRequest(BlkifOp.discard, 0, 51712, 77, 0, ()), BlkifStatus.eopnotsupp),
    (BlkifRequest(BlkifOp.indirect, 0, 51712, 77, 0, ()), BlkifStatus.eopnotsupp),
    (BlkifRequest(BlkifOp.write_barrier, 1, 51712, 77, 0, (BlkifSegment(DATA_REF, 0, 0),)),
     BlkifStatus.eopnotsupp),
])
def test_bad_requests_get_error_responses(env, req, status):
    make, memory, _, ports, _ = env
    backend, front = make()
    connect(front)
    memory.write(DATA_MFN << 12, b"\x5a" * 4096)
    traces = []
    backend.tracers.append(traces.append)
    front.push(req)
    ports[0].on_event()
    assert front.responses() == [(77, req.operation, status)]
    assert memory.read(DATA_MFN << 12, 4096) == b"\x5a" * 4096
    assert traces[-1].status == status and traces[-1].detail


def test_read_only_device(env):
    make, memory, _, ports, image = env
    backend, front = make(readonly=True)
    connect(front)
    assert front.read(f"{BACK}/info") == str(VDISK_READONLY).encode()
    assert front.read(f"{BACK}/mode") == b"r"
    before = image.read_bytes()
    front.push(BlkifRequest(BlkifOp.write, 1, 51712, 1, 0, (BlkifSegment(DATA_REF, 0, 0),)), read_req(1))
    ports[0].on_event()
    assert front.responses() == [(1, BlkifOp.write, BlkifStatus.error), (77, BlkifOp.read, 0)]
    assert image.read_bytes() == before


def test_batches_and_notification_suppression(env):
    make, memory, _, ports, _ = env
    backend, front = make()
    connect(front)
    memory.write_u32((RING_MFN << 12) + 12, 1000)       # rsp_event far ahead: no kick wanted
    front.push(*[read_req(i, nr=1, req_id=i) for i in range(40)][:32])
    ports[0].on_event()
    assert [r[0] for r in front.responses()] == list(range(32))
    assert ports[0].notifications == 0
    assert memory.read_u32((RING_MFN << 12) + 4) == 33   # req_event = req_cons + 1
    front.push(*[read_req(i, nr=1, req_id=i) for i in range(32, 40)])
    ports[0].on_event()
    assert [r[0] for r in front.responses()] == list(range(32, 40))


def test_bogus_ring_halts_processing(env):
    make, memory, _, ports, _ = env
    backend, front = make()
    connect(front)
    memory.write_u32(RING_MFN << 12, 500)
    assert ports[0].on_event() == 0 and backend.ring_broken
    assert front.responses() == []


def test_x86_64_protocol(env):
    make, memory, _, ports, _ = env
    backend, front = make(abi=BlkifAbi.x86_64)
    connect(front, protocol="x86_64-abi")
    front.push(read_req(3, nr=1))
    ports[0].on_event()
    assert front.responses() == [(77, BlkifOp.read, 0)]
    assert memory.read(DATA_MFN << 12, 512) == bytes([3]) * 512


def test_close_and_reconnect_as_grub_hands_over(env):
    make, _, _, ports, _ = env
    backend, front = make()
    connect(front)
    front.write("device/vbd/51712/state", "6")
    assert front.read(f"{BACK}/state") == b"6" and ports[0].closed
    front.write("device/vbd/51712/ring-ref", "")
    front.write("device/vbd/51712/state", "1")
    assert front.read(f"{BACK}/state") == b"2"
    connect(front)
    assert backend.state == XenbusState.Connected and len(ports) == 2
    front.write("device/vbd/51712/state", "5")
    assert backend.state == XenbusState.Closing


@pytest.mark.parametrize("setup,message", [
    (lambda f: f.write("device/vbd/51712/ring-ref", "99"), "mapping ring-ref 99"),
    (lambda f: f.write("device/vbd/51712/protocol", "arm-abi"), "unknown fe protocol arm-abi"),
    (lambda f: f.write("device/vbd/51712/event-channel", "x"), "event-channel"),
])
def test_connect_failures_are_fatal(env, setup, message):
    make, _, xs, _, _ = env
    backend, front = make()
    front.init_ring()
    front.write("device/vbd/51712/ring-ref", str(RING_REF))
    front.write("device/vbd/51712/event-channel", "5")
    setup(front)
    front.write("device/vbd/51712/state", "3")
    assert backend.state == XenbusState.Closing
    assert message in xs.read("/local/domain/0/error/backend/vbd/1/51712/error").decode()


def test_bind_failure_is_fatal(env):
    make, _, xs, _, _ = env

    def refuse(domid, port, on_event):
        raise BindError(22, "port 5 is not unbound for d0")
    backend, front = make(binder=refuse)
    connect(front)
    assert backend.state == XenbusState.Closing
    assert xs.read("/local/domain/0/error/backend/vbd/1/51712/error").startswith(b"22 binding port 5")


@pytest.mark.parametrize("state", ["7", "42", "2"])
def test_frontend_nonsense_state_is_fatal(env, state):
    make, _, xs, _, _ = env
    backend, front = make()
    front.write("device/vbd/51712/state", state)
    assert backend.state == XenbusState.Closing
    error = xs.read("/local/domain/0/error/backend/vbd/1/51712/error")
    assert error == f"22 saw state {state} at frontend".encode()


@pytest.mark.parametrize("value", ["", "x", "\u00b2"])
def test_frontend_state_that_is_not_a_number_closes(env, value):
    make, _, _, _, _ = env
    backend, front = make()
    front.write("device/vbd/51712/state", value)
    assert backend.state == XenbusState.Closed


def test_devids_and_bad_images(tmp_path):
    assert vbd_devid("xvda") == 51712 and vbd_devid("xvdb") == 51728 and vbd_devid("xvdp") == 51952
    assert vbd_devid("xvdq") == (1 << 28) | (16 << 8)
    for bad in ("sda", "xvd", "xvdA", "xvd1", "xvd\u00e9"):
        with pytest.raises(ValueError):
            vbd_devid(bad)
    with pytest.raises(ValueError):
        BlkBackend(Xenstored(), None, MachineMemory(1), str(tmp_path / "missing.img"),
                   frontend_domid=1, bind_event_channel=lambda *a: None)


def test_layouts():
    assert LAYOUTS[BlkifAbi.x86_32].nr_entries == 32 and LAYOUTS[BlkifAbi.x86_32].entry_size == 108
    assert LAYOUTS[BlkifAbi.x86_64].nr_entries == 32 and LAYOUTS[BlkifAbi.x86_64].entry_size == 112
    req = read_req(5)
    layout = LAYOUTS[BlkifAbi.x86_32]
    assert BlkifRequest.decode(req.encode(layout), layout) == req
