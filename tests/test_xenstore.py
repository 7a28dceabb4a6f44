"""xenstored: tree, permissions, watches, transactions, xs_wire on the ring, the toolstack's
PV domain tree, tracing and the dom0 API.  Pure: a MachineMemory and fake notify calls."""
from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pvdbg.machine.memory import MachineMemory
from pvdbg.xen.xenstore import (
    HEADER, QUOTA_ENTRIES_PER_DOMAIN, QUOTA_MAX_TRANSACTIONS, QUOTA_WATCHES_PER_DOMAIN,
    XENSTORE_CONNECTED, XENSTORE_RECONNECT,
    XENSTORE_RING_SIZE, PvDomainConfig, Xenstored, XenstoreDomainInterface, XenstoreError,
    XenstoreErrorCode, XsMessage, XsTraceKind, XsType, populate_pv_domain)

DOMID = 1
CFG = PvDomainConfig(domid=DOMID, name="grub", memory_kib=65536, store_mfn=0x1234, store_port=1,
                     console_mfn=0x1235, console_port=2, vcpus=2, kernel="/boot/grub.bin")
STORE_MFN = 2
BASE = STORE_MFN << 12
OFF = {f: XenstoreDomainInterface.offset_of(f) for f in
       ("req", "rsp", "req_cons", "req_prod", "rsp_cons", "rsp_prod", "server_features",
        "connection", "error")}


def strings(*args: str) -> bytes:
    return b"".join(a.encode() + b"\0" for a in args)


def parse(stream: bytes) -> list[XsMessage]:
    out = []
    while stream:
        _, _, _, length = HEADER.unpack_from(stream)
        out.append(XsMessage.decode(stream[:HEADER.size + length]))
        stream = stream[HEADER.size + length:]
    return out


@pytest.fixture
def store():
    xs = Xenstored()
    populate_pv_domain(xs, CFG)
    conn = xs.connect_domain(DOMID)
    return xs, conn


def ask(xs, conn, msg_type, payload: bytes, tx: int = 0, req_id: int = 7) -> list[XsMessage]:
    """Send one request; return everything queued for the guest (events and reply)."""
    conn.outbox.clear()
    xs.handle_message(conn, XsMessage(msg_type, req_id, tx, payload))
    out = parse(bytes(conn.outbox))
    conn.outbox.clear()
    return out


def answer(xs, conn, msg_type, payload: bytes, tx: int = 0) -> tuple[str, bytes]:
    """The reply alone: ('OK', payload) or ('ERROR', errno name)."""
    msgs = [m for m in ask(xs, conn, msg_type, payload, tx) if m.type != XsType.WATCH_EVENT]
    assert len(msgs) == 1
    reply = msgs[0]
    if reply.type == XsType.ERROR:
        return "ERROR", reply.payload.rstrip(b"\0")
    assert reply.type == msg_type and reply.tx_id == tx and reply.req_id == 7
    return "OK", reply.payload


# -- reads, writes and permissions -------------------------------------------------------------
def test_relative_reads_of_the_toolstack_tree(store):
    xs, conn = store
    assert answer(xs, conn, XsType.READ, strings("domid")) == ("OK", b"1")
    assert answer(xs, conn, XsType.READ, strings("name")) == ("OK", b"grub")
    assert answer(xs, conn, XsType.READ, strings("memory/target")) == ("OK", b"65536")
    assert answer(xs, conn, XsType.READ, strings("console/ring-ref")) == ("OK", b"4661")
    assert answer(xs, conn, XsType.READ, strings("/local/domain/1/console/port")) == ("OK", b"2")
    assert answer(xs, conn, XsType.DIRECTORY, strings("cpu")) == ("OK", strings("0", "1"))


def test_grub_probe_for_disks_gets_enoent(store):
    xs, conn = store
    assert answer(xs, conn, XsType.DIRECTORY, strings("device/vbd")) == ("ERROR", b"ENOENT")
    assert answer(xs, conn, XsType.DIRECTORY, strings("device")) == ("OK", strings("suspend"))


def test_permissions_hide_other_domains(store):
    xs, conn = store
    assert answer(xs, conn, XsType.READ, strings("/local/domain/0/name")) == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.READ, strings("/local/domain/0/nothing")) == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.DIRECTORY, strings("/local/domain")) == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.READ, strings("/local/domain/1/nothing")) == ("ERROR", b"ENOENT")
    assert answer(xs, conn, XsType.READ, strings("/vm/" + CFG.vm_uuid + "/name")) == ("OK", b"grub")


def test_guest_writes_where_libxl_lets_it(store):
    xs, conn = store
    assert answer(xs, conn, XsType.WRITE, b"data/foo\0bar") == ("OK", b"OK\0")
    assert xs.read("/local/domain/1/data/foo") == b"bar"
    assert answer(xs, conn, XsType.GET_PERMS, strings("data/foo")) == ("OK", strings("n1"))
    assert answer(xs, conn, XsType.WRITE, b"data/a/b/c\0deep") == ("OK", b"OK\0")
    assert xs.get_perms("/local/domain/1/data/a") == ["n1"]
    assert answer(xs, conn, XsType.WRITE, b"console/ring-ref\x005") == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.WRITE, b"newkey\0x") == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.MKDIR, strings("memory/x")) == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.WRITE, b"control/shutdown\0poweroff") == ("OK", b"OK\0")
    assert answer(xs, conn, XsType.WRITE, b"data/empty\0") == ("OK", b"OK\0")
    assert xs.read("/local/domain/1/data/empty") == b""
    assert answer(xs, conn, XsType.WRITE, b"data/bin\0a\0b") == ("OK", b"OK\0")
    assert xs.read("/local/domain/1/data/bin") == b"a\0b"


def test_mkdir_and_rm(store):
    xs, conn = store
    assert answer(xs, conn, XsType.MKDIR, strings("data/d")) == ("OK", b"OK\0")
    assert answer(xs, conn, XsType.MKDIR, strings("data/d")) == ("OK", b"OK\0")
    assert answer(xs, conn, XsType.WRITE, b"data/d/e\0v") == ("OK", b"OK\0")
    assert answer(xs, conn, XsType.RM, strings("data/d")) == ("OK", b"OK\0")
    assert not xs.exists("/local/domain/1/data/d/e")
    assert answer(xs, conn, XsType.RM, strings("data/d")) == ("OK", b"OK\0")       # parent exists
    assert answer(xs, conn, XsType.RM, strings("data/x/y")) == ("ERROR", b"ENOENT")
    # the console frontend directory belongs to the guest
    assert answer(xs, conn, XsType.RM, strings("console")) == ("OK", b"OK\0")
    assert answer(xs, conn, XsType.RM, strings("/")) == ("ERROR", b"EACCES")
    with pytest.raises(XenstoreError) as err:
        xs.rm("/")
    assert err.value.errno == "EINVAL"


@pytest.mark.parametrize("path", ["data//x", "data/x/", "data/a b", "", "data/\u00e9",
                                  "x" * 2100, "/" + "y" * 3100])
def test_bad_paths_are_einval(store, path):
    xs, conn = store
    assert answer(xs, conn, XsType.READ, path.encode("latin-1", "replace") + b"\0") == ("ERROR", b"EINVAL")


@pytest.mark.parametrize("msg_type,payload,errno", [
    (XsType.READ, b"domid", b"EINVAL"),                 # no NUL
    (XsType.READ, b"domid\0\0", b"EINVAL"),             # two strings
    (XsType.READ, b"", b"EINVAL"),
    (XsType.WRITE, b"data/x", b"EINVAL"),
    (XsType.WATCH, b"data\0", b"EINVAL"),
    (XsType.SET_PERMS, b"data\0", b"EINVAL"),
    (XsType.SET_PERMS, b"data\0q1\0", b"EINVAL"),
    (XsType.SET_PERMS, b"data\0r\0", b"EINVAL"),
    (XsType.SET_PERMS, b"data\0r\xb2\0", b"EINVAL"),      # a superscript digit is no digit
    (XsType.DIRECTORY_PART, b"data\0", b"EINVAL"),
    (XsType.TRANSACTION_END, b"X\0", b"EINVAL"),
    (99, b"", b"ENOSYS"),
    (20, b"", b"ENOSYS"),                               # XS_RESTRICT, removed
    (XsType.WATCH_EVENT, strings("a", "b"), b"ENOSYS"),
    (XsType.ERROR, b"", b"ENOSYS"),
    (XsType.INTRODUCE, strings("2", "5", "6"), b"EACCES"),
    (XsType.CONTROL, strings("print", "x"), b"EACCES"),
    (XsType.IS_DOMAIN_INTRODUCED, strings("1"), b"EACCES"),
    (XsType.READ, strings("domid"), b"ENOENT"),         # sent with an unknown tx id (below)
])
def test_malformed_requests(store, msg_type, payload, errno):
    xs, conn = store
    tx = 55 if errno == b"ENOENT" else 0
    msgs = ask(xs, conn, msg_type, payload, tx=tx)
    assert [(m.type, m.req_id, m.tx_id, m.payload) for m in msgs] == [(XsType.ERROR, 7, tx, errno + b"\0")]


def test_get_domain_path(store):
    xs, conn = store
    assert answer(xs, conn, XsType.GET_DOMAIN_PATH, strings("1")) == ("OK", b"/local/domain/1\0")
    assert answer(xs, conn, XsType.GET_DOMAIN_PATH, strings("junk")) == ("OK", b"/local/domain/0\0")
    assert answer(xs, conn, XsType.GET_DOMAIN_PATH, b"\xb23\0") == ("OK", b"/local/domain/0\0")
    assert answer(xs, conn, XsType.GET_DOMAIN_PATH, strings(" -1")) == ("OK", b"/local/domain/4294967295\0")
    assert answer(xs, conn, XsType.GET_DOMAIN_PATH, strings("7"), tx=99) == ("OK", b"/local/domain/7\0")


def test_set_perms(store):
    xs, conn = store
    answer(xs, conn, XsType.WRITE, b"data/p\0v")
    assert answer(xs, conn, XsType.SET_PERMS, strings("data/p", "n1", "r0", "b2")) == ("OK", b"OK\0")
    assert xs.get_perms("/local/domain/1/data/p") == ["n1", "r0", "b2"]
    assert answer(xs, conn, XsType.SET_PERMS, strings("data/p", "n0")) == ("ERROR", b"EPERM")
    assert answer(xs, conn, XsType.SET_PERMS, strings("console/port", "n1")) == ("ERROR", b"EACCES")
    assert answer(xs, conn, XsType.SET_PERMS, strings("data/p", *["r1"] * 7)) == ("ERROR", b"ENOSPC")


def test_directory_part(store):
    xs, conn = store
    gen, rest = answer(xs, conn, XsType.DIRECTORY_PART, strings("cpu", "0"))[1].split(b"\0", 1)
    assert gen.isdigit() and rest == strings("0", "1") + b"\0"
    gen2, rest = answer(xs, conn, XsType.DIRECTORY_PART, strings("cpu", "2"))[1].split(b"\0", 1)
    assert gen2 == gen and rest == strings("1") + b"\0"
    assert answer(xs, conn, XsType.DIRECTORY_PART, strings("cpu", "50"))[1] == gen + b"\0\0"


def test_directory_too_big_for_one_reply(store):
    xs, conn = store
    for i in range(300):
        xs.write(f"/local/domain/1/data/a_rather_long_child_name_{i:04d}", "")
    assert answer(xs, conn, XsType.DIRECTORY, strings("data")) == ("ERROR", b"E2BIG")
    reply = answer(xs, conn, XsType.DIRECTORY_PART, strings("data", "0"))[1]
    assert len(reply) <= 4096 and not reply.endswith(b"\0\0")


def test_node_count_and_size_quotas(store):
    xs, conn = store
    assert answer(xs, conn, XsType.WRITE, b"data/big\0" + b"x" * 2100) == ("ERROR", b"ENOSPC")
    owned = sum(1 for _, _, perms in xs.walk("/") if perms[0] == "n1")
    for i in range(QUOTA_ENTRIES_PER_DOMAIN - 1 - owned):
        xs.write(f"/local/domain/1/data/n{i}", "")
        xs.set_perms(f"/local/domain/1/data/n{i}", ["n1"])
    assert answer(xs, conn, XsType.WRITE, b"data/q/r\0v") == ("ERROR", b"ENOSPC")
    assert answer(xs, conn, XsType.WRITE, b"data/q\0v") == ("OK", b"OK\0")


# -- watches ----------------------------------------------------------------------------------
def test_watch_fires_once_at_registration_after_the_ack(store):
    xs, conn = store
    msgs = ask(xs, conn, XsType.WATCH, strings("data", "tok"))
    assert [(m.type, m.payload) for m in msgs] == [(XsType.WATCH, b"OK\0"),
                                                   (XsType.WATCH_EVENT, strings("data", "tok"))]
    assert msgs[1].req_id == 0 and msgs[1].tx_id == 0


def test_watch_events_come_before_the_writers_ack(store):
    xs, conn = store
    ask(xs, conn, XsType.WATCH, strings("data", "tok"))
    ask(xs, conn, XsType.WATCH, strings("/local/domain/1/data/x", "abs"))
    msgs = ask(xs, conn, XsType.WRITE, b"data/x\0v")
    assert [(m.type, m.payload) for m in msgs] == [
        (XsType.WATCH_EVENT, strings("data/x", "tok")),
        (XsType.WATCH_EVENT, strings("/local/domain/1/data/x", "abs")),
        (XsType.WRITE, b"OK\0")]
    assert answer(xs, conn, XsType.WATCH, strings("data", "tok")) == ("ERROR", b"EEXIST")
    assert answer(xs, conn, XsType.UNWATCH, strings("data", "tok")) == ("OK", b"OK\0")
    assert answer(xs, conn, XsType.UNWATCH, strings("data", "tok")) == ("ERROR", b"ENOENT")
    assert [m.payload for m in ask(xs, conn, XsType.WRITE, b"data/y\0v")] == [b"OK\0"]


def test_rm_fires_for_watches_above_and_below(store):
    xs, conn = store
    answer(xs, conn, XsType.WRITE, b"data/a/b/c\0v")
    for path, token in (("data", "top"), ("data/a/b/c", "leaf"), ("data/a/b/other", "none")):
        ask(xs, conn, XsType.WATCH, strings(path, token))
    msgs = ask(xs, conn, XsType.RM, strings("data/a"))
    events = sorted(m.strings() for m in msgs if m.type == XsType.WATCH_EVENT)
    assert events == [("data/a", "top"), ("data/a/b/c", "leaf")]


def test_tool_changes_wake_the_guest_connection(store):
    xs, conn = store
    woken = []
    conn.wake = lambda: woken.append(1)
    ask(xs, conn, XsType.WATCH, strings("control/shutdown", "ctl"))
    woken.clear()
    xs.write("/local/domain/1/control/shutdown", "poweroff")
    assert parse(bytes(conn.outbox))[0].strings() == ("control/shutdown", "ctl") and woken == [1]


def test_watch_events_respect_read_permission(store):
    xs, conn = store
    msgs = ask(xs, conn, XsType.WATCH, strings("/local/domain/0", "peek"))
    assert msgs[-1].type == XsType.WATCH_EVENT            # the initial event always fires
    conn.outbox.clear()
    xs.write("/local/domain/0/secret", "x")
    assert conn.outbox == b""


def test_watch_quota(store):
    xs, conn = store
    for i in range(QUOTA_WATCHES_PER_DOMAIN):
        ask(xs, conn, XsType.WATCH, strings("data", f"t{i}"))
    assert answer(xs, conn, XsType.WATCH, strings("data", "last")) == ("ERROR", b"E2BIG")
    assert answer(xs, conn, XsType.RESET_WATCHES, b"") == ("OK", b"OK\0")
    assert conn.watches == []


def test_tool_watch_callback_runs_after_the_guest_request(store):
    xs, conn = store
    seen = []
    xs.watch("/local/domain/1/data", lambda path, token: seen.append((path, token)), token="t")
    assert seen == [("/local/domain/1/data", "t")]
    answer(xs, conn, XsType.WRITE, b"data/k\0v")
    assert seen[-1] == ("/local/domain/1/data/k", "t")


def test_special_watches(store):
    xs, conn = store
    seen = []
    xs.watch("@introduceDomain", lambda path, token: seen.append(path))
    xs.connect_domain(2)
    assert seen == ["@introduceDomain", "@introduceDomain"]
    msgs = ask(xs, conn, XsType.WATCH, strings("@releaseDomain", "rel"))
    assert msgs[-1].strings() == ("@releaseDomain", "rel")
    xs.release_domain(xs.connections[-1])
    assert conn.outbox == b""                              # dom0's event, not the guest's


# -- transactions -----------------------------------------------------------------------------
def test_transaction_isolation_and_commit(store):
    xs, conn = store
    ask(xs, conn, XsType.WATCH, strings("data", "w"))
    ok, tx = answer(xs, conn, XsType.TRANSACTION_START, b"\0")
    tx_id = int(tx.rstrip(b"\0"))
    assert tx_id == 1
    assert ask(xs, conn, XsType.WRITE, b"data/t\0inside", tx=tx_id)[0].payload == b"OK\0"   # no event yet
    assert answer(xs, conn, XsType.READ, strings("data/t")) == ("ERROR", b"ENOENT")
    assert answer(xs, conn, XsType.READ, strings("data/t"), tx=tx_id) == ("OK", b"inside")
    msgs = ask(xs, conn, XsType.TRANSACTION_END, strings("T"), tx=tx_id)
    assert [(m.type, m.payload) for m in msgs] == [(XsType.WATCH_EVENT, strings("data/t", "w")),
                                                   (XsType.TRANSACTION_END, b"OK\0")]
    assert xs.read("/local/domain/1/data/t") == b"inside"
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("T"), tx=tx_id) == ("ERROR", b"ENOENT")


def test_transaction_conflict_is_eagain(store):
    xs, conn = store
    tx_id = int(answer(xs, conn, XsType.TRANSACTION_START, b"\0")[1].rstrip(b"\0"))
    answer(xs, conn, XsType.READ, strings("control/shutdown"), tx=tx_id)
    answer(xs, conn, XsType.WRITE, b"data/r\0mine", tx=tx_id)
    xs.write("/local/domain/1/control/shutdown", "reboot")
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("T"), tx=tx_id) == ("ERROR", b"EAGAIN")
    assert not xs.exists("/local/domain/1/data/r")
    # an unrelated change does not conflict
    tx_id = int(answer(xs, conn, XsType.TRANSACTION_START, b"\0")[1].rstrip(b"\0"))
    answer(xs, conn, XsType.WRITE, b"data/r\0mine", tx=tx_id)
    xs.write("/local/domain/1/feature/x", "1")
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("T"), tx=tx_id) == ("OK", b"OK\0")


def test_transaction_directory_conflict(store):
    xs, conn = store
    tx_id = int(answer(xs, conn, XsType.TRANSACTION_START, b"\0")[1].rstrip(b"\0"))
    answer(xs, conn, XsType.DIRECTORY, strings("data"), tx=tx_id)
    xs.write("/local/domain/1/data/new", "")
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("T"), tx=tx_id) == ("ERROR", b"EAGAIN")


def test_transaction_abort_and_limits(store):
    xs, conn = store
    tx_id = int(answer(xs, conn, XsType.TRANSACTION_START, b"\0")[1].rstrip(b"\0"))
    answer(xs, conn, XsType.WRITE, b"data/gone\0x", tx=tx_id)
    assert answer(xs, conn, XsType.TRANSACTION_START, b"\0", tx=tx_id) == ("ERROR", b"EBUSY")
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("F"), tx=tx_id) == ("OK", b"OK\0")
    assert not xs.exists("/local/domain/1/data/gone")
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("T")) == ("ERROR", b"ENOENT")
    ids = {answer(xs, conn, XsType.TRANSACTION_START, b"\0")[1] for _ in range(QUOTA_MAX_TRANSACTIONS)}
    assert len(ids) == QUOTA_MAX_TRANSACTIONS
    assert answer(xs, conn, XsType.TRANSACTION_START, b"\0") == ("ERROR", b"ENOSPC")


def test_transaction_rm_and_set_perms_replay(store):
    xs, conn = store
    answer(xs, conn, XsType.WRITE, b"data/a/b\0v")
    tx_id = int(answer(xs, conn, XsType.TRANSACTION_START, b"\0")[1].rstrip(b"\0"))
    answer(xs, conn, XsType.RM, strings("data/a"), tx=tx_id)
    answer(xs, conn, XsType.MKDIR, strings("data/m"), tx=tx_id)
    answer(xs, conn, XsType.SET_PERMS, strings("data/m", "n1", "r0"), tx=tx_id)
    assert xs.exists("/local/domain/1/data/a/b")
    assert answer(xs, conn, XsType.TRANSACTION_END, strings("T"), tx=tx_id) == ("OK", b"OK\0")
    assert not xs.exists("/local/domain/1/data/a")
    assert xs.get_perms("/local/domain/1/data/m") == ["n1", "r0"]


# -- the toolstack tree -------------------------------------------------------------------------
def test_populated_tree_matches_libxl(store):
    xs, _ = store
    d = "/local/domain/1"
    expect = {
        f"{d}/name": b"grub", f"{d}/domid": b"1", f"{d}/vm": f"/vm/{CFG.vm_uuid}".encode(),
        f"{d}/memory/static-max": b"65536", f"{d}/memory/target": b"65536",
        f"{d}/cpu/0/availability": b"online", f"{d}/cpu/1/availability": b"online",
        f"{d}/store/port": b"1", f"{d}/store/ring-ref": b"4660",
        f"{d}/console/ring-ref": b"4661", f"{d}/console/port": b"2", f"{d}/console/type": b"xenconsoled",
        f"{d}/console/limit": b"1048576", f"{d}/console/backend": b"/local/domain/0/backend/console/1/0",
        f"{d}/console/backend-id": b"0", f"{d}/control/platform-feature-xs_reset_watches": b"1",
        f"/vm/{CFG.vm_uuid}/image/kernel": b"/boot/grub.bin", "/libxl/1/type": b"pv",
        "/local/domain/0/backend/console/1/0/frontend": f"{d}/console".encode(),
        "/local/domain/0/name": b"Domain-0",
    }
    for path, value in expect.items():
        assert xs.read(path) == value, path
    assert xs.get_perms(d) == ["n0", "r1"]
    assert xs.get_perms(f"{d}/control/shutdown") == ["n1"]
    assert xs.get_perms(f"{d}/console") == ["n1", "r0"]
    assert xs.get_perms(f"{d}/console/ring-ref") == ["n0", "r1"]
    assert xs.get_perms("/local/domain/0/backend/console/1/0") == ["n0", "r1"]


def test_api_and_walk(store):
    xs, _ = store
    xs.write("/local/domain/1/data/k", "v")
    xs.mkdir("/local/domain/1/data/dir")
    assert xs.directory("/local/domain/1/data") == ["k", "dir"]
    xs.set_perms("/local/domain/1/data/k", ["n1", "r0"])
    listing = {path: value for path, value, _ in xs.walk("/local/domain/1/data")}
    assert listing == {"/local/domain/1/data": b"", "/local/domain/1/data/k": b"v",
                       "/local/domain/1/data/dir": b""}
    xs.rm("/local/domain/1/data/k")
    assert not xs.exists("/local/domain/1/data/k")
    with pytest.raises(XenstoreError) as err:
        xs.read("/local/domain/1/nothing")
    assert err.value.errno == "ENOENT"
    with pytest.raises(XenstoreError):
        list(xs.walk("/nothing"))
    with pytest.raises(XenstoreError):
        xs.set_perms("/local/domain/1/data", ["x9"])
    with pytest.raises(ValueError):
        XenstoreError("EWHATEVER")


def test_tracing(store):
    xs, conn = store
    seen = []
    xs.tracers.append(seen.append)
    answer(xs, conn, XsType.DIRECTORY, strings("device/vbd"))
    xs.write("/local/domain/1/data/x", "1")
    assert [(t.kind, t.msg_type, t.args, t.error) for t in seen] == [
        (XsTraceKind.request, "DIRECTORY", ("device/vbd",), None),
        (XsTraceKind.reply, "DIRECTORY", (), "ENOENT"),
        (XsTraceKind.tool, "WRITE", ("/local/domain/1/data/x", "1"), None)]
    assert seen[1].describe() == "d1 reply DIRECTORY -> ENOENT (/local/domain/1/device/vbd)"


# -- the ring ---------------------------------------------------------------------------------
class RingGuest:
    """The guest side of xenstore_domain_interface, as PV GRUB drives it."""

    def __init__(self, memory: MachineMemory) -> None:
        self.memory = memory

    def u32(self, name: str) -> int:
        return self.memory.read_u32(BASE + OFF[name])

    def set(self, name: str, value: int) -> None:
        self.memory.write_u32(BASE + OFF[name], value & 0xFFFFFFFF)

    def send(self, data: bytes) -> int:
        prod, cons = self.u32("req_prod"), self.u32("req_cons")
        room = XENSTORE_RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
        data = data[:room]
        for i, byte in enumerate(data):
            self.memory.write(BASE + OFF["req"] + ((prod + i) % XENSTORE_RING_SIZE), bytes([byte]))
        self.set("req_prod", prod + len(data))
        return len(data)

    def recv(self, limit: int = 1 << 20) -> bytes:
        prod, cons = self.u32("rsp_prod"), self.u32("rsp_cons")
        out = bytearray()
        while cons != prod and len(out) < limit:
            out += self.memory.read(BASE + OFF["rsp"] + (cons % XENSTORE_RING_SIZE), 1)
            cons = (cons + 1) & 0xFFFFFFFF
        self.set("rsp_cons", cons)
        return bytes(out)


@pytest.fixture
def ring_setup():
    memory = MachineMemory(4)
    xs = Xenstored()
    populate_pv_domain(xs, CFG)
    kicks = []
    ring = xs.introduce_domain(DOMID, memory, STORE_MFN, lambda: kicks.append(1))
    return memory, xs, ring, RingGuest(memory), kicks


def request(msg_type: int, payload: bytes, req_id: int = 0, tx: int = 0) -> bytes:
    return XsMessage(msg_type, req_id, tx, payload).encode()


def test_ring_request_and_reply(ring_setup):
    memory, xs, ring, guest, kicks = ring_setup
    assert guest.u32("server_features") == 3
    guest.send(request(XsType.READ, strings("name"), req_id=9))
    assert ring.pump() and kicks == [1]
    assert guest.u32("req_cons") == guest.u32("req_prod")
    reply = XsMessage.decode(guest.recv())
    assert (reply.type, reply.req_id, reply.payload) == (XsType.READ, 9, b"grub")


def test_ring_partial_message_as_grub_sends_it(ring_setup):
    _, _, ring, guest, _ = ring_setup
    msg = request(XsType.DIRECTORY, strings("device/vbd"))
    guest.send(msg[:HEADER.size])                   # GRUB: header, event, yield, then the path
    ring.pump()
    assert guest.recv() == b""
    guest.send(msg[HEADER.size:])
    ring.pump()
    reply = XsMessage.decode(guest.recv())
    assert (reply.type, reply.payload) == (XsType.ERROR, b"ENOENT\0")


def test_ring_wraps_and_big_replies_flow_as_space_frees(ring_setup):
    _, xs, ring, guest, _ = ring_setup
    for name in ("req_prod", "req_cons", "rsp_prod", "rsp_cons"):
        guest.set(name, 0xFFFFFFFF - 5)
    value = bytes(range(256)) * 12                  # 3072 bytes: three ring-fulls
    xs.write("/local/domain/1/data/big", value)
    guest.send(request(XsType.READ, strings("data/big")))
    got = b""
    for _ in range(10):
        ring.pump()
        got += guest.recv(limit=700)
    reply = XsMessage.decode(got)
    assert reply.payload == value


def test_ring_oversized_message_is_a_protocol_error(ring_setup):
    _, xs, ring, guest, _ = ring_setup
    seen = []
    xs.tracers.append(seen.append)
    guest.send(HEADER.pack(XsType.WRITE, 0, 0, 5000))
    ring.pump()
    assert guest.u32("error") == XenstoreErrorCode.PROTO and ring.broken == XenstoreErrorCode.PROTO
    assert seen[-1].kind == XsTraceKind.protocol_error
    guest.send(request(XsType.READ, strings("name")))
    ring.pump()
    assert guest.recv() == b""                       # ignored from now on


def test_ring_bad_indices(ring_setup):
    _, _, ring, guest, _ = ring_setup
    guest.set("req_prod", 5000)
    ring.pump()
    assert guest.u32("error") == XenstoreErrorCode.RINGIDX


def test_ring_reconnect_resets_the_connection(ring_setup):
    _, _, ring, guest, _ = ring_setup
    guest.send(request(XsType.WATCH, strings("data", "w")))
    ring.pump()
    assert ring.conn.watches
    guest.set("req_prod", 5000)
    ring.pump()
    assert ring.broken is not None
    guest.set("connection", XENSTORE_RECONNECT)
    ring.pump()
    assert guest.u32("connection") == XENSTORE_CONNECTED and ring.broken is None
    assert [guest.u32(n) for n in ("req_prod", "req_cons", "rsp_prod", "rsp_cons", "error")] == [0] * 5
    assert ring.conn.watches == []
    guest.send(request(XsType.READ, strings("domid")))
    ring.pump()
    assert XsMessage.decode(guest.recv()).payload == b"1"


def test_ring_tool_write_reaches_a_watching_guest(ring_setup):
    _, xs, ring, guest, kicks = ring_setup
    guest.send(request(XsType.WATCH, strings("control/shutdown", "c")))
    ring.pump()
    guest.recv()
    kicks.clear()
    xs.write("/local/domain/1/control/shutdown", "poweroff")
    assert kicks == [1]
    assert XsMessage.decode(guest.recv()).strings() == ("control/shutdown", "c")


def test_bad_store_frame():
    with pytest.raises(ValueError):
        Xenstored().introduce_domain(1, MachineMemory(2), 9, lambda: None)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=40), st.integers(0, 0xFFFFFFFF))
def test_ring_any_split_gives_the_same_replies(cuts, start):
    memory = MachineMemory(4)
    xs = Xenstored()
    populate_pv_domain(xs, CFG)
    ring = xs.introduce_domain(DOMID, memory, STORE_MFN, lambda: None)
    guest = RingGuest(memory)
    for name in ("req_prod", "req_cons", "rsp_prod", "rsp_cons"):
        guest.set(name, start)
    stream = b"".join(request(XsType.READ, strings(k), req_id=i)
                      for i, k in enumerate(["name", "domid", "nothing", "memory/target"] * 3))
    got = b""
    pos = 0
    for cut in itertools.cycle(cuts):
        if pos >= len(stream):
            break
        pos += guest.send(stream[pos:pos + cut])
        ring.pump()
        got += guest.recv(limit=97)
    for _ in range(20):
        ring.pump()
        got += guest.recv()
    replies = parse(got)
    assert [(r.req_id, r.payload) for r in replies] == [
        (i, v) for i, v in enumerate([b"grub", b"1", b"ENOENT\0", b"65536"] * 3)]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_the_daemon(data):
    xs = Xenstored()
    populate_pv_domain(xs, CFG)
    conn = xs.connect_domain(DOMID)
    for msg_type in (XsType.READ, XsType.WRITE, XsType.WATCH, XsType.SET_PERMS, XsType.RM,
                     XsType.DIRECTORY_PART, XsType.TRANSACTION_END, XsType.MKDIR):
        reply = xs.handle_message(conn, XsMessage(msg_type, 1, 0, data))
        assert reply.type in (msg_type, XsType.ERROR)
        if reply.type == XsType.ERROR:
            assert reply.payload.rstrip(b"\0").decode() in {"EINVAL", "EACCES", "ENOENT", "EEXIST",
                                                            "ENOSPC", "EPERM", "E2BIG"}


def test_interface_layout():
    assert XenstoreDomainInterface.SIZE == 2076
    assert struct.calcsize("<IIII") == HEADER.size == 16


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), st.binary(max_size=80)), max_size=20))
def test_any_message_sequence_gets_one_reply_each(messages):
    xs = Xenstored()
    populate_pv_domain(xs, CFG)
    conn = xs.connect_domain(DOMID)
    for msg_type, tx_id, payload in messages:
        conn.outbox.clear()
        reply = xs.handle_message(conn, XsMessage(msg_type, 5, tx_id, payload))
        replies = [m for m in parse(bytes(conn.outbox)) if m.type != XsType.WATCH_EVENT]
        assert replies == [reply] and reply.req_id == 5 and reply.tx_id == tx_id


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 0xFFFFFFFF))
def test_ring_garbage_never_raises(data, start):
    memory = MachineMemory(4)
    xs = Xenstored()
    populate_pv_domain(xs, CFG)
    ring = xs.introduce_domain(DOMID, memory, STORE_MFN, lambda: None)
    guest = RingGuest(memory)
    for name in ("req_prod", "req_cons", "rsp_prod", "rsp_cons"):
        guest.set(name, start)
    pos = 0
    for _ in range(8):
        pos += guest.send(data[pos:])
        ring.pump()
        guest.recv()
    assert guest.u32("error") in (0, XenstoreErrorCode.PROTO)
