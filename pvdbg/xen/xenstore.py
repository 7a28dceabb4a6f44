"""xenstored: the store tree, its permissions, transactions and watches, the xs_wire
protocol on a domain's xenstore ring, and the tree a toolstack writes for a PV domU.

Layers, pure and testable alone:
  * `Xenstored` holds the tree and the connections, and answers one xs_wire message at a
    time (`handle_message`) with the same errors and watch events as C xenstored.  Tools
    in pvdbg (CLI, REPL, backends) use its privileged API (`read`, `write`, `watch`, ...),
    acting as dom0.
  * `XenstoreRing` moves bytes between a domain's xenstore_domain_interface page and its
    connection: partial messages across ring wraps and across pumps, replies written as
    space frees up, protocol violations reported in the page's `error` field.
  * `populate_pv_domain` writes what libxl writes when it creates a PV domain.
ABI: xen/include/public/io/xs_wire.h; docs/misc/xenstore.txt; tools/xenstored (core.c,
watch.c, transaction.c, domain.c); tools/libs/light/libxl_create.c libxl__domain_make,
libxl_dom.c libxl__build_post, libxl_console.c, libxl_disk.c.
"""
from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Callable, Iterator, Sequence

from ..machine.memory import PAGE_SHIFT, MachineMemory
from .abi import abi_struct, at

XENSTORE_RING_SIZE = 1024
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

# C xenstored's default quotas for unprivileged domains (tools/xenstored/core.c).
QUOTA_ENTRIES_PER_DOMAIN = 1000
QUOTA_WATCHES_PER_DOMAIN = 128
QUOTA_MAX_ENTRY_SIZE = 2048
QUOTA_MAX_TRANSACTIONS = 10
QUOTA_PERMS_PER_NODE = 5

# Errors xenstored may send, by name (xs_wire.h xsd_errors).
XS_ERRORS = frozenset({"EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
                       "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG",
                       "EPERM"})

HEADER = struct.Struct("<IIII")        # struct xsd_sockmsg: type, req_id, tx_id, len
_VALID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
U32 = 0xFFFFFFFF

PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 4
_PERM_LETTER = {0: "n", PERM_READ: "r", PERM_WRITE: "w", PERM_READ | PERM_WRITE: "b"}
_LETTER_PERM = {v: k for k, v in _PERM_LETTER.items()}


class XsType(IntEnum):
    """enum xsd_sockmsg_type.  ABI: xen/include/public/io/xs_wire.h."""
    CONTROL = 0                          # was DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    INVALID = 0xFFFF


class XenstoreErrorCode(IntEnum):
    """xenstore_domain_interface.error values.  ABI: xs_wire.h XENSTORE_ERROR_*."""
    NONE = 0
    COMM = 1
    RINGIDX = 2
    PROTO = 3


def type_name(msg_type: int) -> str:
    try:
        return XsType(msg_type).name
    except ValueError:
        return f"type_{msg_type}"


class XenstoreError(Exception):
    """xenstored refuses a request; `errno` is the name sent back in an ERROR reply."""

    def __init__(self, errno: str, why: str = "") -> None:
        if errno not in XS_ERRORS:
            raise ValueError(f"{errno} is not an error xenstored can send")
        self.errno = errno
        self.why = why
        super().__init__(f"{errno}: {why}" if why else errno)


@dataclass(frozen=True)
class XsMessage:
    """One xs_wire message: header fields and payload.  ABI: struct xsd_sockmsg."""
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> "XsMessage":
        if len(data) < HEADER.size:
            raise ValueError("xs_wire message shorter than its header")
        msg_type, req_id, tx_id, length = HEADER.unpack_from(data)
        if len(data) != HEADER.size + length:
            raise ValueError(f"xs_wire header says {length} payload bytes, got {len(data) - HEADER.size}")
        return cls(msg_type, req_id, tx_id, bytes(data[HEADER.size:]))

    def strings(self) -> tuple[str, ...]:
        """The payload split at NULs, for display."""
        parts = self.payload.split(b"\0")
        if parts and parts[-1] == b"":
            parts.pop()
        return tuple(p.decode("latin-1") for p in parts)


@dataclass(frozen=True)
class Perm:
    """One xs_permissions entry: the first of a node's list names its owner and the
    access everyone else gets by default.  Text form: n/r/w/b followed by the domid."""
    domid: int
    access: int                         # PERM_READ | PERM_WRITE

    def __str__(self) -> str:
        return f"{_PERM_LETTER[self.access & 3]}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> "Perm":
        if len(text) < 2 or text[0] not in _LETTER_PERM or not is_decimal(text[1:]):
            raise XenstoreError("EINVAL", f"bad permission {text!r}")
        domid = int(text[1:])
        if domid > U32:
            raise XenstoreError("EINVAL", f"bad permission {text!r}")
        return cls(domid, _LETTER_PERM[text[0]])


def is_decimal(text: str) -> bool:
    """Only ASCII digits (str.isdigit also accepts superscripts and other scripts)."""
    return bool(text) and all("0" <= ch <= "9" for ch in text)


def perms_of(*texts: str) -> tuple[Perm, ...]:
    return tuple(Perm.parse(t) for t in texts)


@dataclass
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    children: list[str]
    generation: int

    def copy(self) -> "Node":
        return Node(self.value, self.perms, list(self.children), self.generation)

    def size(self) -> int:
        """Bytes xenstored stores for this node (header, perms, data, child names)."""
        return 16 + 8 * len(self.perms) + len(self.value) + sum(len(c) + 1 for c in self.children)


def parent_of(path: str) -> str:
    cut = path.rfind("/")
    return "/" if cut <= 0 else path[:cut]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def is_under(path: str, ancestor: str) -> bool:
    """`path` is `ancestor` or below it."""
    if ancestor == "/":
        return path.startswith("/")
    return path == ancestor or path.startswith(ancestor + "/")


class Tree:
    """The node map.  A transaction works on a copy that records each path it looks at,
    with the generation the path had, to detect conflicts at commit."""

    def __init__(self, nodes: dict[str, Node] | None = None, generation: int = 0,
                 record: bool = False) -> None:
        self.nodes = nodes if nodes is not None else {}
        self.generation = generation
        self.accessed: dict[str, int] | None = {} if record else None

    def get(self, path: str) -> Node | None:
        node = self.nodes.get(path)
        if self.accessed is not None and path not in self.accessed:
            self.accessed[path] = node.generation if node is not None else -1
        return node

    def bump(self) -> int:
        self.generation += 1
        return self.generation

    def copy(self, record: bool = False) -> "Tree":
        return Tree({p: n.copy() for p, n in self.nodes.items()}, self.generation, record)


@dataclass
class Watch:
    node: str                           # canonical path, or an @special name
    token: str
    relative: bool
    conn: "Connection"
    callback: Callable[[str, str], None] | None = None   # tools only


@dataclass
class Transaction:
    tx_id: int
    view: Tree
    ops: list[tuple[XsType, tuple]] = field(default_factory=list)


@dataclass(frozen=True)
class _Change:
    path: str
    perms: tuple[tuple[Perm, ...], ...]  # node perms that decide who may see the event
    exact: bool


class Connection:
    """One client of xenstored: a domain's ring, or pvdbg's own tools (dom0)."""

    def __init__(self, domid: int, privileged: bool) -> None:
        self.domid = domid
        self.privileged = privileged
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.outbox = bytearray()       # encoded messages not yet on the ring
        self.wake: Callable[[], None] | None = None

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"


class XsTraceKind(StrEnum):
    request = "request"
    reply = "reply"
    watch_event = "watch_event"
    tool = "tool"                       # pvdbg's own (dom0) access through the API
    protocol_error = "protocol_error"


@dataclass(frozen=True)
class XsTrace:
    """One thing xenstored saw or sent, for trace records and the REPL."""
    kind: XsTraceKind
    domid: int
    msg_type: str
    req_id: int = 0
    tx_id: int = 0
    args: tuple[str, ...] = ()
    error: str | None = None
    detail: str = ""

    def describe(self) -> str:
        args = " ".join(repr(a) if (not a or " " in a) else a for a in self.args)
        tx = f" tx{self.tx_id}" if self.tx_id else ""
        head = f"d{self.domid} {self.kind} {self.msg_type}{tx}"
        tail = f" -> {self.error}" if self.error else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{head} {args}{tail}{extra}".replace("  ", " ").strip()


class _Ctx:
    """The state one operation runs in: who asks, which tree, which transaction."""

    def __init__(self, conn: Connection, view: Tree, tx: Transaction | None) -> None:
        self.conn = conn
        self.view = view
        self.tx = tx
        self.changes: list[_Change] = []


def _onearg(payload: bytes) -> str:
    """The payload must be exactly one NUL-terminated string (xenstored onearg)."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XenstoreError("EINVAL", "payload must be one NUL-terminated string")
    return payload[:-1].decode("latin-1")


def _strings(payload: bytes, count: int) -> list[str]:
    """Up to `count` leading NUL-terminated strings (xenstored get_strings)."""
    out: list[str] = []
    off = 0
    while len(out) < count:
        end = payload.find(b"\0", off)
        if end < 0:
            break
        out.append(payload[off:end].decode("latin-1"))
        off = end + 1
    return out


def _atoi(text: str) -> int:
    text = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    digits = ""
    for ch in text:
        if not "0" <= ch <= "9":
            break
        digits += ch
    return sign * int(digits) if digits else 0


def _cstrings(names: Sequence[str]) -> bytes:
    return b"".join(n.encode("latin-1") + b"\0" for n in names)


class Xenstored:
    """The store and its clients.  `tracers` receive an `XsTrace` for every request,
    reply, watch event and tool access."""

    def __init__(self) -> None:
        self.tree = Tree()
        self.tree.nodes["/"] = Node(b"", perms_of("n0"), [], 0)
        self.tool = Connection(0, privileged=True)
        self.connections: list[Connection] = [self.tool]
        self.special_perms: dict[str, tuple[Perm, ...]] = {
            "@introduceDomain": perms_of("n0"), "@releaseDomain": perms_of("n0")}
        self.tracers: list[Callable[[XsTrace], None]] = []
        self._callbacks: list[tuple[Callable[[str, str], None], str, str]] = []
        self._running_callbacks = False
        self._after_reply: list[Watch] = []
        self.introduced: set[int] = set()
        for path in ("/tool", "/tool/xenstored", "/local", "/local/domain"):
            self.write(path, b"")

    # -- connections ----------------------------------------------------------------
    def connect_domain(self, domid: int) -> Connection:
        """A connection for domain `domid` (introduced, unprivileged unless dom0)."""
        conn = Connection(domid, privileged=(domid == 0))
        self.connections.append(conn)
        self.introduced.add(domid)
        self.fire_special("@introduceDomain")
        return conn

    def introduce_domain(self, domid: int, memory: MachineMemory, mfn: int,
                         notify: Callable[[], None]) -> "XenstoreRing":
        """XS_INTRODUCE as the toolstack does it: serve `domid` on its store page."""
        return XenstoreRing(self, self.connect_domain(domid), memory, mfn, notify)

    def release_domain(self, conn: Connection) -> None:
        self.reset_connection(conn)
        if conn in self.connections:
            self.connections.remove(conn)
        self.introduced.discard(conn.domid)
        self.fire_special("@releaseDomain")

    def reset_connection(self, conn: Connection) -> None:
        """Drop a connection's watches, transactions and unsent output."""
        conn.watches.clear()
        conn.transactions.clear()
        conn.outbox.clear()

    # -- tracing --------------------------------------------------------------------
    def _trace(self, event: XsTrace) -> None:
        for tracer in self.tracers:
            tracer(event)

    # -- permissions and names -------------------------------------------------------
    def _perm(self, conn: Connection, perms: tuple[Perm, ...]) -> int:
        """xenstored perm_for_conn: READ/WRITE/OWNER bits `conn` has on a node."""
        if conn.privileged or perms[0].domid == conn.domid:
            return PERM_READ | PERM_WRITE | PERM_OWNER
        for perm in perms[1:]:
            if perm.domid == conn.domid:
                return perm.access
        return perms[0].access

    def _canonical(self, conn: Connection, path: str) -> str:
        if path.startswith("/") or path.startswith("@"):
            return path
        return f"{conn.home}/{path}"

    def _check_name(self, conn: Connection, name: str) -> None:
        """xenstored is_valid_nodename; a bad name is EINVAL."""
        if not name.startswith("/"):
            raise XenstoreError("EINVAL", f"{name!r} is not an absolute path")
        if len(name) > 1 and name.endswith("/"):
            raise XenstoreError("EINVAL", f"{name!r} ends with '/'")
        if "//" in name:
            raise XenstoreError("EINVAL", f"{name!r} contains '//'")
        if len(name) > XENSTORE_ABS_PATH_MAX:
            raise XenstoreError("EINVAL", f"path longer than {XENSTORE_ABS_PATH_MAX} bytes")
        if not conn.privileged:
            local = 0
            parts = name.split("/", 4)
            if len(parts) == 5 and parts[1] == "local" and parts[2] == "domain" and is_decimal(parts[3]):
                local = len("/".join(parts[:4])) + 1
            if len(name) - local > XENSTORE_REL_PATH_MAX:
                raise XenstoreError("EINVAL", f"path longer than {XENSTORE_REL_PATH_MAX} bytes "
                                              "below the domain's home")
        if not set(name) <= _VALID_CHARS:
            raise XenstoreError("EINVAL", f"{name!r} has characters outside [A-Za-z0-9-/_@]")

    def _ancestor_perm(self, c: _Ctx, name: str) -> int:
        path = name
        while path != "/":
            path = parent_of(path)
            node = c.view.get(path)
            if node is not None:
                return self._perm(c.conn, node.perms)
        return 0

    def _get_node(self, c: _Ctx, name: str, need: int) -> Node:
        """xenstored get_node + errno_from_parents."""
        self._check_name(c.conn, name)
        node = c.view.get(name)
        if node is not None and (self._perm(c.conn, node.perms) & need) == need:
            return node
        errno = "EACCES" if node is not None else "ENOENT"
        if not self._ancestor_perm(c, name) & need:
            errno = "EACCES"
        raise XenstoreError(errno, name)

    def _owned_entries(self, view: Tree, domid: int) -> int:
        return sum(1 for node in view.nodes.values() if node.perms[0].domid == domid)

    # -- tree operations --------------------------------------------------------------
    def _create(self, c: _Ctx, name: str, value: bytes) -> Node:
        """Create `name` and any missing ancestors (construct_node, create_node)."""
        missing = [name]
        parent = parent_of(name)
        while c.view.get(parent) is None:
            missing.append(parent)
            parent = parent_of(parent)
        base = c.view.get(parent)
        assert base is not None
        if not c.conn.privileged:
            if self._owned_entries(c.view, c.conn.domid) + len(missing) > QUOTA_ENTRIES_PER_DOMAIN:
                raise XenstoreError("ENOSPC", f"d{c.conn.domid} owns {QUOTA_ENTRIES_PER_DOMAIN} nodes")
            if 16 + 8 * len(base.perms) + len(value) >= QUOTA_MAX_ENTRY_SIZE:
                raise XenstoreError("ENOSPC", f"node would exceed {QUOTA_MAX_ENTRY_SIZE} bytes")
        gen = c.view.bump()
        node = base
        for path in reversed(missing):
            perms = base.perms
            if not c.conn.privileged:
                perms = (Perm(c.conn.domid, perms[0].access),) + perms[1:]
            node = Node(b"", perms, [], gen)
            base.children.append(basename(path))
            base.generation = gen
            c.view.nodes[path] = node
            base = node
        node.value = value
        return node

    def _op_write(self, c: _Ctx, path: str, value: bytes) -> None:
        name = self._canonical(c.conn, path)
        try:
            node = self._get_node(c, name, PERM_WRITE)
        except XenstoreError as err:
            if err.errno != "ENOENT":
                raise
            node = self._create(c, name, value)
        else:
            if not c.conn.privileged:
                trial = Node(value, node.perms, node.children, 0)
                if trial.size() >= QUOTA_MAX_ENTRY_SIZE:
                    raise XenstoreError("ENOSPC", f"node would exceed {QUOTA_MAX_ENTRY_SIZE} bytes")
            node.value = value
            node.generation = c.view.bump()
        c.changes.append(_Change(name, (node.perms,), exact=False))

    def _op_mkdir(self, c: _Ctx, path: str) -> None:
        name = self._canonical(c.conn, path)
        try:
            self._get_node(c, name, PERM_WRITE)
        except XenstoreError as err:
            if err.errno != "ENOENT":
                raise
            node = self._create(c, name, b"")
            c.changes.append(_Change(name, (node.perms,), exact=False))

    def _op_rm(self, c: _Ctx, path: str) -> None:
        name = self._canonical(c.conn, path)
        try:
            self._get_node(c, name, PERM_WRITE)
        except XenstoreError as err:
            if err.errno == "ENOENT" and c.view.get(parent_of(name)) is not None:
                return                      # already gone, parent exists: fine
            raise
        if name == "/":
            raise XenstoreError("EINVAL", "cannot remove the root")
        doomed: list[str] = []

        def collect(path: str) -> None:
            n = c.view.nodes[path]
            for child in n.children:
                collect(path.rstrip("/") + "/" + child)
            doomed.append(path)
        collect(name)
        for path in doomed:
            c.view.get(path)
            c.changes.append(_Change(path, (c.view.nodes[path].perms,), exact=(path != name)))
            del c.view.nodes[path]
        parent = c.view.get(parent_of(name))
        assert parent is not None
        parent.children.remove(basename(name))
        parent.generation = c.view.bump()

    def _op_set_perms(self, c: _Ctx, path: str, perms: tuple[Perm, ...]) -> None:
        if path.startswith("@"):
            if not c.conn.privileged:
                raise XenstoreError("EACCES", f"{path} perms are dom0's")
            self.special_perms[path] = perms
            return
        name = self._canonical(c.conn, path)
        node = self._get_node(c, name, PERM_WRITE | PERM_OWNER)
        if not c.conn.privileged and perms[0].domid != node.perms[0].domid:
            raise XenstoreError("EPERM", "only dom0 may change a node's owner")
        old = node.perms
        node.perms = perms
        node.generation = c.view.bump()
        c.changes.append(_Change(name, (old, perms), exact=False))

    # -- watches ----------------------------------------------------------------------
    def _event_path(self, watch: Watch, name: str) -> str:
        if watch.relative and name.startswith(watch.conn.home + "/"):
            return name[len(watch.conn.home) + 1:]
        return name

    def _deliver(self, watch: Watch, name: str) -> None:
        path = self._event_path(watch, name)
        if watch.callback is not None:
            self._callbacks.append((watch.callback, path, watch.token))
            return
        conn = watch.conn
        msg = XsMessage(XsType.WATCH_EVENT, 0, 0, _cstrings([path, watch.token]))
        conn.outbox += msg.encode()
        self._trace(XsTrace(XsTraceKind.watch_event, conn.domid, "WATCH_EVENT",
                            args=(path, watch.token)))
        if conn.wake is not None:
            conn.wake()

    def _fire(self, changes: Sequence[_Change]) -> None:
        for change in changes:
            for conn in list(self.connections):
                permitted = any(self._perm(conn, p) & PERM_READ for p in change.perms)
                if not permitted:
                    continue
                for watch in list(conn.watches):
                    if watch.node.startswith("@"):
                        continue
                    hit = (watch.node == change.path) if change.exact else is_under(change.path, watch.node)
                    if hit:
                        self._deliver(watch, change.path)

    def fire_special(self, name: str) -> None:
        """Fire @introduceDomain / @releaseDomain watches."""
        perms = self.special_perms.get(name, perms_of("n0"))
        for conn in list(self.connections):
            if not self._perm(conn, perms) & PERM_READ:
                continue
            for watch in list(conn.watches):
                if watch.node == name:
                    self._deliver(watch, name)
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        if self._running_callbacks:
            return
        self._running_callbacks = True
        try:
            while self._callbacks:
                callback, path, token = self._callbacks.pop(0)
                callback(path, token)
        finally:
            self._running_callbacks = False

    def _add_watch(self, conn: Connection, path: str, token: str,
                   callback: Callable[[str, str], None] | None) -> Watch:
        if path.startswith("@"):
            if len(path) > XENSTORE_REL_PATH_MAX:
                raise XenstoreError("EINVAL", "special watch name too long")
            name, relative = path, False
        else:
            relative = not path.startswith("/")
            name = self._canonical(conn, path)
            self._check_name(conn, name)
        for watch in conn.watches:
            if watch.node == name and watch.token == token:
                raise XenstoreError("EEXIST", f"watch {name} {token!r} already set")
        if not conn.privileged and len(conn.watches) >= QUOTA_WATCHES_PER_DOMAIN:
            raise XenstoreError("E2BIG", f"d{conn.domid} has {QUOTA_WATCHES_PER_DOMAIN} watches")
        watch = Watch(name, token, relative, conn, callback)
        conn.watches.append(watch)
        return watch

    # -- the wire protocol --------------------------------------------------------------
    def handle_message(self, conn: Connection, msg: XsMessage) -> XsMessage:
        """Answer one request from `conn`; the reply (and any watch events, in the order
        xenstored queues them) go to `conn.outbox`.  Returns the reply."""
        name = type_name(msg.type)
        self._trace(XsTrace(XsTraceKind.request, conn.domid, name, msg.req_id, msg.tx_id,
                            msg.strings()))
        self._after_reply = []
        try:
            payload = self._dispatch(conn, msg)
            reply = XsMessage(msg.type, msg.req_id, msg.tx_id, payload)
            if len(payload) > XENSTORE_PAYLOAD_MAX:
                raise XenstoreError("E2BIG", f"reply of {len(payload)} bytes")
            error = None
            detail = ""
        except XenstoreError as err:
            reply = XsMessage(XsType.ERROR, msg.req_id, msg.tx_id, err.errno.encode() + b"\0")
            error, detail = err.errno, err.why
            self._after_reply = []
        conn.outbox += reply.encode()
        self._trace(XsTrace(XsTraceKind.reply, conn.domid, name, msg.req_id, msg.tx_id,
                            () if error else reply.strings(), error, detail))
        for watch in self._after_reply:
            self._deliver(watch, watch.node)
        self._after_reply = []
        self._run_callbacks()
        return reply

    _PRIVILEGED = frozenset({XsType.CONTROL, XsType.INTRODUCE, XsType.RELEASE,
                             XsType.IS_DOMAIN_INTRODUCED, XsType.RESUME, XsType.SET_TARGET})
    _NO_TX = frozenset({XsType.WATCH, XsType.UNWATCH, XsType.GET_DOMAIN_PATH,
                        XsType.RESET_WATCHES}) | _PRIVILEGED

    def _dispatch(self, conn: Connection, msg: XsMessage) -> bytes:
        try:
            kind = XsType(msg.type)
        except ValueError:
            raise XenstoreError("ENOSYS", f"unknown operation {msg.type}") from None
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise XenstoreError("ENOSYS", f"{kind.name} is not a request")
        if kind in self._PRIVILEGED and not conn.privileged:
            raise XenstoreError("EACCES", f"{kind.name} is for dom0")
        tx = None
        if kind not in self._NO_TX and msg.tx_id:
            tx = conn.transactions.get(msg.tx_id)
            if tx is None:
                raise XenstoreError("ENOENT", f"no transaction {msg.tx_id}")
        return handler(self, conn, tx, msg.payload)

    def _run(self, conn: Connection, tx: Transaction | None, op: XsType, args: tuple) -> None:
        """Run a tree-changing operation; outside a transaction its watches fire now,
        inside one it is recorded and replayed at commit."""
        c = _Ctx(conn, tx.view if tx is not None else self.tree, tx)
        _MUTATORS[op](self, c, *args)
        if tx is not None:
            tx.ops.append((op, args))
        else:
            self._fire(c.changes)

    def _read_ctx(self, conn: Connection, tx: Transaction | None) -> _Ctx:
        return _Ctx(conn, tx.view if tx is not None else self.tree, tx)

    def _h_read(self, conn, tx, payload: bytes) -> bytes:
        c = self._read_ctx(conn, tx)
        return self._get_node(c, self._canonical(conn, _onearg(payload)), PERM_READ).value

    def _h_directory(self, conn, tx, payload: bytes) -> bytes:
        c = self._read_ctx(conn, tx)
        return _cstrings(self._get_node(c, self._canonical(conn, _onearg(payload)), PERM_READ).children)

    def _h_directory_part(self, conn, tx, payload: bytes) -> bytes:
        if payload.count(b"\0") != 2:
            raise XenstoreError("EINVAL", "DIRECTORY_PART takes a path and an offset")
        path, offset_text = _strings(payload, 2)
        c = self._read_ctx(conn, tx)
        node = self._get_node(c, self._canonical(conn, path), PERM_READ)
        children = _cstrings(node.children)
        offset = max(_atoi(offset_text), 0)
        gen = str(node.generation).encode() + b"\0"
        if offset >= len(children):
            return gen + b"\0"
        maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        length = 0
        for name in children[offset:].split(b"\0")[:-1]:
            if length + len(name) >= maxlen:
                break
            length += len(name) + 1
            if offset + length == len(children):
                break
        data = gen + children[offset:offset + length]
        if offset + length == len(children):
            data += b"\0"
        return data

    def _h_get_perms(self, conn, tx, payload: bytes) -> bytes:
        c = self._read_ctx(conn, tx)
        node = self._get_node(c, self._canonical(conn, _onearg(payload)), PERM_READ)
        return _cstrings([str(p) for p in node.perms])

    def _h_write(self, conn, tx, payload: bytes) -> bytes:
        cut = payload.find(b"\0")
        if cut < 0:
            raise XenstoreError("EINVAL", "WRITE needs a NUL-terminated path")
        self._run(conn, tx, XsType.WRITE, (payload[:cut].decode("latin-1"), payload[cut + 1:]))
        return b"OK\0"

    def _h_mkdir(self, conn, tx, payload: bytes) -> bytes:
        self._run(conn, tx, XsType.MKDIR, (_onearg(payload),))
        return b"OK\0"

    def _h_rm(self, conn, tx, payload: bytes) -> bytes:
        self._run(conn, tx, XsType.RM, (_onearg(payload),))
        return b"OK\0"

    def _h_set_perms(self, conn, tx, payload: bytes) -> bytes:
        count = payload.count(b"\0")
        if count < 2:
            raise XenstoreError("EINVAL", "SET_PERMS needs a path and at least one permission")
        strings = _strings(payload, count)
        if not conn.privileged and count - 1 > QUOTA_PERMS_PER_NODE:
            raise XenstoreError("ENOSPC", f"more than {QUOTA_PERMS_PER_NODE} permissions")
        perms = tuple(Perm.parse(s) for s in strings[1:])
        self._run(conn, tx, XsType.SET_PERMS, (strings[0], perms))
        return b"OK\0"

    def _h_watch(self, conn, tx, payload: bytes) -> bytes:
        args = _strings(payload, 2)
        if len(args) != 2:
            raise XenstoreError("EINVAL", "WATCH takes a path and a token")
        watch = self._add_watch(conn, args[0], args[1], None)
        self._after_reply.append(watch)     # fired once straight away, after the ack
        return b"OK\0"

    def _h_unwatch(self, conn, tx, payload: bytes) -> bytes:
        args = _strings(payload, 2)
        if len(args) != 2:
            raise XenstoreError("EINVAL", "UNWATCH takes a path and a token")
        name = args[0] if args[0].startswith("@") else self._canonical(conn, args[0])
        for watch in conn.watches:
            if watch.node == name and watch.token == args[1]:
                conn.watches.remove(watch)
                return b"OK\0"
        raise XenstoreError("ENOENT", f"no watch {name} {args[1]!r}")

    def _h_transaction_start(self, conn, tx, payload: bytes) -> bytes:
        if tx is not None:
            raise XenstoreError("EBUSY", "already inside a transaction")
        if not conn.privileged and len(conn.transactions) >= QUOTA_MAX_TRANSACTIONS:
            raise XenstoreError("ENOSPC", f"{QUOTA_MAX_TRANSACTIONS} transactions open")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & U32
        conn.next_tx_id = (tx_id + 1) & U32
        conn.transactions[tx_id] = Transaction(tx_id, self.tree.copy(record=True))
        return str(tx_id).encode() + b"\0"

    def _h_transaction_end(self, conn, tx, payload: bytes) -> bytes:
        arg = _onearg(payload)
        if arg not in ("T", "F"):
            raise XenstoreError("EINVAL", "TRANSACTION_END takes T (commit) or F (abort)")
        if tx is None:
            raise XenstoreError("ENOENT", "not inside a transaction")
        del conn.transactions[tx.tx_id]
        if arg == "T":
            self._commit(conn, tx)
        return b"OK\0"

    def _commit(self, conn: Connection, tx: Transaction) -> None:
        assert tx.view.accessed is not None
        for path, gen in tx.view.accessed.items():
            node = self.tree.nodes.get(path)
            if (node.generation if node is not None else -1) != gen:
                raise XenstoreError("EAGAIN", f"{path} changed since the transaction started")
        staged = self.tree.copy()
        changes: list[_Change] = []
        for op, args in tx.ops:
            c = _Ctx(conn, staged, None)
            try:
                _MUTATORS[op](self, c, *args)
            except XenstoreError as err:
                raise XenstoreError("EAGAIN", f"replaying {op.name}: {err}") from None
            changes += c.changes
        self.tree = staged
        self._fire(changes)

    def _h_get_domain_path(self, conn, tx, payload: bytes) -> bytes:
        domid = _atoi(_onearg(payload)) & U32
        return f"/local/domain/{domid}".encode() + b"\0"

    def _h_reset_watches(self, conn, tx, payload: bytes) -> bytes:
        conn.watches.clear()
        conn.transactions.clear()
        return b"OK\0"

    def _h_is_domain_introduced(self, conn, tx, payload: bytes) -> bytes:
        domid = _atoi(_onearg(payload))
        return b"T\0" if domid in self.introduced else b"F\0"

    def _h_privileged_only(self, conn, tx, payload: bytes) -> bytes:
        raise XenstoreError("ENOSYS", "toolstack operations are done through pvdbg's API")

    # -- pvdbg's API (dom0) ---------------------------------------------------------------
    def _tool(self, op: str, path: str, fn: Callable[[], object], *extra: str) -> object:
        try:
            result = fn()
        except XenstoreError as err:
            self._trace(XsTrace(XsTraceKind.tool, 0, op, args=(path, *extra), error=err.errno,
                                detail=err.why))
            raise
        self._trace(XsTrace(XsTraceKind.tool, 0, op, args=(path, *extra)))
        self._run_callbacks()
        return result

    def read(self, path: str) -> bytes:
        """The value at `path` (absolute, or relative to dom0's home)."""
        c = self._read_ctx(self.tool, None)
        return self._tool("READ", path, lambda: self._get_node(
            c, self._canonical(self.tool, path), PERM_READ).value)

    def write(self, path: str, value: bytes | str) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._tool("WRITE", path, lambda: self._run(self.tool, None, XsType.WRITE, (path, data)),
                   data.decode("latin-1"))

    def mkdir(self, path: str) -> None:
        self._tool("MKDIR", path, lambda: self._run(self.tool, None, XsType.MKDIR, (path,)))

    def rm(self, path: str) -> None:
        self._tool("RM", path, lambda: self._run(self.tool, None, XsType.RM, (path,)))

    def directory(self, path: str) -> list[str]:
        c = self._read_ctx(self.tool, None)
        return list(self._tool("DIRECTORY", path, lambda: self._get_node(
            c, self._canonical(self.tool, path), PERM_READ).children))

    def exists(self, path: str) -> bool:
        return self._canonical(self.tool, path) in self.tree.nodes

    def get_perms(self, path: str) -> list[str]:
        c = self._read_ctx(self.tool, None)
        node = self._tool("GET_PERMS", path, lambda: self._get_node(
            c, self._canonical(self.tool, path), PERM_READ))
        return [str(p) for p in node.perms]

    def set_perms(self, path: str, perms: Sequence[str]) -> None:
        parsed = tuple(Perm.parse(p) for p in perms)
        if not parsed:
            raise XenstoreError("EINVAL", "at least one permission is needed")
        self._tool("SET_PERMS", path, lambda: self._run(self.tool, None, XsType.SET_PERMS,
                                                        (path, parsed)), *perms)

    def watch(self, path: str, callback: Callable[[str, str], None], token: str = "pvdbg") -> Watch:
        """Call `callback(path, token)` on every change at or below `path` (and once now)."""
        watch = self._tool("WATCH", path, lambda: self._add_watch(self.tool, path, token, callback),
                           token)
        self._deliver(watch, watch.node)
        self._run_callbacks()
        return watch

    def unwatch(self, watch: Watch) -> None:
        if watch in watch.conn.watches:
            watch.conn.watches.remove(watch)

    def walk(self, path: str = "/") -> Iterator[tuple[str, bytes, list[str]]]:
        """(path, value, perms) for `path` and everything below it, depth first."""
        name = self._canonical(self.tool, path)
        node = self.tree.nodes.get(name)
        if node is None:
            raise XenstoreError("ENOENT", name)
        yield name, node.value, [str(p) for p in node.perms]
        for child in node.children:
            yield from self.walk(name.rstrip("/") + "/" + child)


_HANDLERS: dict[XsType, Callable[[Xenstored, Connection, Transaction | None, bytes], bytes]] = {
    XsType.READ: Xenstored._h_read,
    XsType.DIRECTORY: Xenstored._h_directory,
    XsType.DIRECTORY_PART: Xenstored._h_directory_part,
    XsType.GET_PERMS: Xenstored._h_get_perms,
    XsType.WRITE: Xenstored._h_write,
    XsType.MKDIR: Xenstored._h_mkdir,
    XsType.RM: Xenstored._h_rm,
    XsType.SET_PERMS: Xenstored._h_set_perms,
    XsType.WATCH: Xenstored._h_watch,
    XsType.UNWATCH: Xenstored._h_unwatch,
    XsType.TRANSACTION_START: Xenstored._h_transaction_start,
    XsType.TRANSACTION_END: Xenstored._h_transaction_end,
    XsType.GET_DOMAIN_PATH: Xenstored._h_get_domain_path,
    XsType.RESET_WATCHES: Xenstored._h_reset_watches,
    XsType.IS_DOMAIN_INTRODUCED: Xenstored._h_is_domain_introduced,
    XsType.CONTROL: Xenstored._h_privileged_only,
    XsType.INTRODUCE: Xenstored._h_privileged_only,
    XsType.RELEASE: Xenstored._h_privileged_only,
    XsType.RESUME: Xenstored._h_privileged_only,
    XsType.SET_TARGET: Xenstored._h_privileged_only,
}

_MUTATORS: dict[XsType, Callable[..., None]] = {
    XsType.WRITE: Xenstored._op_write,
    XsType.MKDIR: Xenstored._op_mkdir,
    XsType.RM: Xenstored._op_rm,
    XsType.SET_PERMS: Xenstored._op_set_perms,
}


# -- the ring -------------------------------------------------------------------------------
@abi_struct(size=2076, source="xen/include/public/io/xs_wire.h struct xenstore_domain_interface")
class XenstoreDomainInterface:
    req: bytes = at(0, "1024s")
    rsp: bytes = at(1024, "1024s")
    req_cons: int = at(2048, "I")
    req_prod: int = at(2052, "I")
    rsp_cons: int = at(2056, "I")
    rsp_prod: int = at(2060, "I")
    server_features: int = at(2064, "I")
    connection: int = at(2068, "I")
    error: int = at(2072, "I")


_REQ = XenstoreDomainInterface.offset_of("req")
_RSP = XenstoreDomainInterface.offset_of("rsp")
_REQ_CONS = XenstoreDomainInterface.offset_of("req_cons")
_REQ_PROD = XenstoreDomainInterface.offset_of("req_prod")
_RSP_CONS = XenstoreDomainInterface.offset_of("rsp_cons")
_RSP_PROD = XenstoreDomainInterface.offset_of("rsp_prod")
_FEATURES = XenstoreDomainInterface.offset_of("server_features")
_CONNECTION = XenstoreDomainInterface.offset_of("connection")
_ERROR = XenstoreDomainInterface.offset_of("error")


class XenstoreRing:
    """xenstored's end of one domain's store page at machine frame `mfn`.  Call `pump`
    when the guest signals the store event channel (and between execution slices);
    `notify()` signals it back."""

    def __init__(self, daemon: Xenstored, conn: Connection, memory: MachineMemory, mfn: int,
                 notify: Callable[[], None]) -> None:
        if not memory.frame_valid(mfn):
            raise ValueError(f"store frame {mfn:#x} is outside machine memory")
        self.daemon = daemon
        self.conn = conn
        self.memory = memory
        self.base = mfn << PAGE_SHIFT
        self.notify = notify
        self.inbuf = bytearray()
        self.broken: XenstoreErrorCode | None = None
        self._pumping = False
        memory.write_u32(self.base + _FEATURES,
                         XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR)
        conn.wake = self._wake

    def _u32(self, off: int) -> int:
        return self.memory.read_u32(self.base + off)

    def _wake(self) -> None:
        """Output appeared outside a pump (a tool wrote a watched key)."""
        if not self._pumping and self.broken is None and self._flush():
            self.notify()

    def pump(self) -> bool:
        """Consume requests, answer complete ones, write what fits of the replies.
        Returns whether any index moved (the guest was then notified)."""
        self._pumping = True
        try:
            moved = self._pump()
        finally:
            self._pumping = False
        if moved:
            self.notify()
        return moved

    def _pump(self) -> bool:
        moved = False
        if self._u32(_CONNECTION) == XENSTORE_RECONNECT:
            self._reconnect()
            moved = True
        if self.broken is not None:
            return moved
        cons, prod = self._u32(_REQ_CONS), self._u32(_REQ_PROD)
        avail = (prod - cons) & U32
        if avail > XENSTORE_RING_SIZE:
            self._fail(XenstoreErrorCode.RINGIDX, f"req_prod {prod:#x} - req_cons {cons:#x} "
                                                  "exceeds the ring")
            return moved
        if avail:
            self.inbuf += self._read_ring(_REQ, cons, avail)
            self.memory.write_u32(self.base + _REQ_CONS, prod)
            moved = True
        while len(self.inbuf) >= HEADER.size:
            msg_type, req_id, tx_id, length = HEADER.unpack_from(self.inbuf)
            if length > XENSTORE_PAYLOAD_MAX:
                self._fail(XenstoreErrorCode.PROTO, f"{type_name(msg_type)} with {length} payload "
                                                    f"bytes (max {XENSTORE_PAYLOAD_MAX})")
                return moved
            if len(self.inbuf) < HEADER.size + length:
                break
            payload = bytes(self.inbuf[HEADER.size:HEADER.size + length])
            del self.inbuf[:HEADER.size + length]
            self.daemon.handle_message(self.conn, XsMessage(msg_type, req_id, tx_id, payload))
        return self._flush() or moved

    def _read_ring(self, ring: int, index: int, count: int) -> bytes:
        start = index % XENSTORE_RING_SIZE
        first = min(count, XENSTORE_RING_SIZE - start)
        data = self.memory.read(self.base + ring + start, first)
        if first < count:
            data += self.memory.read(self.base + ring, count - first)
        return data

    def _flush(self) -> bool:
        if not self.conn.outbox:
            return False
        cons, prod = self._u32(_RSP_CONS), self._u32(_RSP_PROD)
        used = (prod - cons) & U32
        if used > XENSTORE_RING_SIZE:
            self._fail(XenstoreErrorCode.RINGIDX, f"rsp_prod {prod:#x} - rsp_cons {cons:#x} "
                                                  "exceeds the ring")
            return False
        count = min(XENSTORE_RING_SIZE - used, len(self.conn.outbox))
        if count == 0:
            return False
        data = bytes(self.conn.outbox[:count])
        start = prod % XENSTORE_RING_SIZE
        first = min(count, XENSTORE_RING_SIZE - start)
        self.memory.write(self.base + _RSP + start, data[:first])
        if first < count:
            self.memory.write(self.base + _RSP, data[first:])
        del self.conn.outbox[:count]
        self.memory.write_u32(self.base + _RSP_PROD, (prod + count) & U32)
        return True

    def _fail(self, code: XenstoreErrorCode, why: str) -> None:
        """Stop serving a misbehaving guest, as xenstored's ignore_connection does."""
        self.broken = code
        self.memory.write_u32(self.base + _ERROR, code)
        self.daemon._trace(XsTrace(XsTraceKind.protocol_error, self.conn.domid, code.name,
                                   detail=why))

    def _reconnect(self) -> None:
        """The guest asked to reconnect: forget its state, zero the indices."""
        self.daemon.reset_connection(self.conn)
        self.inbuf.clear()
        for off in (_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD, _ERROR):
            self.memory.write_u32(self.base + off, 0)
        self.broken = None
        self.memory.write_u32(self.base + _CONNECTION, XENSTORE_CONNECTED)


# -- the toolstack's tree for a PV domain ----------------------------------------------------
XENCONSOLE_LIMIT = 1048576             # LIBXL_XENCONSOLE_LIMIT
XENCONSOLE_PROTOCOL = "vt100"          # LIBXL_XENCONSOLE_PROTOCOL


class XenbusState(IntEnum):
    """enum xenbus_state.  ABI: xen/include/public/io/xenbus.h."""
    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


@dataclass(frozen=True)
class PvDomainConfig:
    """What libxl knows about a PV domU when it fills in xenstore."""
    domid: int
    name: str
    memory_kib: int
    store_mfn: int
    store_port: int
    console_mfn: int
    console_port: int
    vcpus: int = 1
    max_memory_kib: int | None = None
    kernel: str = ""
    cmdline: str = ""
    start_time: str = "0.00"           # libxl writes the wall clock; fixed for reproducibility
    uuid: str | None = None            # default: derived from the name

    @property
    def vm_uuid(self) -> str:
        return self.uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"pvdbg:{self.name}"))


def _writev(xs: Xenstored, base: str, entries: Sequence[tuple[str, str]]) -> None:
    for key, value in entries:
        xs.write(f"{base}/{key}", value)


def populate_pv_domain(xs: Xenstored, cfg: PvDomainConfig) -> None:
    """Write the nodes libxl creates for a PV domU and its primary console
    (libxl__domain_make, libxl__build_post, libxl__device_console_add)."""
    d = cfg.domid
    dom = f"/local/domain/{d}"
    vm = f"/vm/{cfg.vm_uuid}"
    libxl = f"/libxl/{d}"
    ro = ["n0", f"r{d}"]
    rw = [f"n{d}"]
    if not xs.exists("/local/domain/0"):
        _writev(xs, "/local/domain/0", [("name", "Domain-0"), ("domid", "0")])
    for path, perms in ((dom, ro), (vm, ro), (libxl, ["n0"]), (f"{libxl}/device", ["n0"])):
        xs.mkdir(path)
        xs.set_perms(path, perms)
    xs.write(f"{dom}/vm", vm)
    xs.write(f"{dom}/name", cfg.name)
    for sub in ("cpu", "memory", "device", "control"):
        xs.mkdir(f"{dom}/{sub}")
    for sub in ("device/suspend/event-channel", "control/shutdown", "control/feature-poweroff",
                "control/feature-reboot", "control/feature-suspend", "control/sysrq", "data",
                "drivers", "feature", "attr", "error"):
        xs.mkdir(f"{dom}/{sub}")
        xs.set_perms(f"{dom}/{sub}", rw)
    _writev(xs, vm, [("uuid", cfg.vm_uuid), ("name", cfg.name)])
    _writev(xs, dom, [("control/platform-feature-multiprocessor-suspend", "1"),
                      ("control/platform-feature-xs_reset_watches", "1")])
    xs.write(f"{libxl}/type", "pv")
    max_kib = cfg.max_memory_kib or cfg.memory_kib
    _writev(xs, dom, [("memory/static-max", str(max_kib)), ("memory/target", str(cfg.memory_kib)),
                      ("memory/videoram", "0"), ("domid", str(d)),
                      ("store/port", str(cfg.store_port)), ("store/ring-ref", str(cfg.store_mfn))]
            + [(f"cpu/{i}/availability", "online") for i in range(cfg.vcpus)])
    vm_entries = [("image/ostype", "linux"), ("image/kernel", cfg.kernel),
                  ("start_time", cfg.start_time)]
    if cfg.cmdline:
        vm_entries.append(("image/cmdline", cfg.cmdline))
    _writev(xs, vm, vm_entries)
    # Primary console (devid 0): frontend at <dom>/console, xenconsoled backend in dom0.
    front = f"{dom}/console"
    back = f"/local/domain/0/backend/console/{d}/0"
    add_device_nodes(xs, d, 0, front, back, libxl_path=f"{libxl}/device/console/0",
                     backend=[("frontend-id", str(d)), ("online", "1"),
                              ("state", str(int(XenbusState.Initialising))),
                              ("protocol", XENCONSOLE_PROTOCOL)],
                     frontend=[("backend-id", "0")],
                     frontend_ro=[("limit", str(XENCONSOLE_LIMIT)), ("type", "xenconsoled"),
                                  ("output", "pty"), ("tty", ""), ("port", str(cfg.console_port)),
                                  ("ring-ref", str(cfg.console_mfn))])


def add_device_nodes(xs: Xenstored, domid: int, backend_domid: int, front: str, back: str, *,
                     libxl_path: str, backend: Sequence[tuple[str, str]],
                     frontend: Sequence[tuple[str, str]],
                     frontend_ro: Sequence[tuple[str, str]] = ()) -> None:
    """libxl__device_generic_add: frontend dir owned by the guest (backend may read),
    backend dir owned by the backend domain (guest may read), read-only frontend keys."""
    _writev(xs, libxl_path, [("frontend", front), ("backend", back)])
    xs.mkdir(front)
    xs.set_perms(front, [f"n{domid}", f"r{backend_domid}"])
    xs.write(f"{front}/backend", back)
    _writev(xs, front, frontend)
    for key, value in frontend_ro:
        xs.write(f"{front}/{key}", value)
        xs.set_perms(f"{front}/{key}", [f"n{backend_domid}", f"r{domid}"])
    xs.mkdir(back)
    xs.set_perms(back, [f"n{backend_domid}", f"r{domid}"])
    xs.write(f"{back}/frontend", front)
    _writev(xs, back, backend)
