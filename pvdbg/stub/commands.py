"""GDB remote protocol packet handlers: one packet payload in, reply payloads out.

Handlers register into `RSP` with `@RSP.exact(b"qC")` (whole packet) or
`@RSP.prefix(b"m")` (packet starts with it); the longest registered match wins, so
registration order never matters. Unregistered packets get the empty reply, which
RSP defines as "unsupported". Handlers return a reply payload, a `Replies` (several
packets, or an action after sending) or a `ResumeRequest`; they never touch I/O.
`qSupported` advertises exactly the features the registered handlers declare.

Protocol source: gdb manual, "Remote Protocol" > "Packets", "Stop Reply Packets",
"General Query Packets". Threads: gdb thread N+1 is vcpu N (no multiprocess ids).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from xml.sax.saxutils import escape as xml_escape

from pvdbg.stub.rsp import (MAX_PACKET_SIZE, RspProtocolError, decode_hex, encode_hex,
                            parse_hex_int)
from pvdbg.stub.target import (CONTINUE, STAY_STOPPED, STEP, BreakpointKind,
                               MemoryAccessError, RegisterUnavailable, ResumeAction,
                               ResumeActions, ResumeKind, StopEvent, StopReason, Target,
                               TargetError, UnsupportedBreakpoint)
from pvdbg.stub.tdesc import RegisterSpec, TargetDescription, load_target_description

log = logging.getLogger(__name__)

PC_REGISTER = "eip"
CONSOLE_CHUNK_BYTES = 0x400
"""Text bytes per `O` console-output packet."""


class UnknownThread(RspProtocolError):
    """gdb named a thread id that is no vcpu."""


class AfterReply(Enum):
    NOTHING = "nothing"
    START_NO_ACK = "start_no_ack"   # switch the connection to no-ack mode after sending
    CLOSE = "close"                 # gdb detached or killed: close the connection


@dataclass(frozen=True)
class Replies:
    """Reply payloads to send in order, then `after`."""

    payloads: tuple[bytes, ...]
    after: AfterReply = AfterReply.NOTHING


@dataclass(frozen=True)
class ResumeRequest:
    """Run `target.resume(actions)`, then answer with `Stub.stop_replies(event)`.
    `short`: the resume ends by itself at once (single steps of a vcpu that is not
    blocked), so a front end may run it without waiting for ^C meanwhile. `inline`:
    the target may run it in the thread that reads gdb (`target.inline_resumes`), if
    that front end watches for ^C meanwhile."""

    actions: ResumeActions
    short: bool = False
    inline: bool = False


HandlerResult = bytes | Replies | ResumeRequest
Outcome = Replies | ResumeRequest
Handler = Callable[["Stub", bytes], HandlerResult]


@dataclass(frozen=True)
class CommandSpec:
    name: bytes
    handler: Handler
    exact: bool                       # True: the packet is exactly `name`
    features: tuple[bytes, ...]       # qSupported entries this handler provides


class CommandTable:
    """Packet name -> handler; the longest registered name matching a packet wins."""

    def __init__(self) -> None:
        self._specs: dict[bytes, CommandSpec] = {}
        self._lengths: tuple[int, ...] = ()
        self._lengths_by_first: dict[int, tuple[int, ...]] = {}   # first byte -> lengths

    def exact(self, name: bytes, *, features: tuple[bytes, ...] = ()) -> Callable[[Handler], Handler]:
        return self._register(name, exact=True, features=features)

    def prefix(self, name: bytes, *, features: tuple[bytes, ...] = ()) -> Callable[[Handler], Handler]:
        return self._register(name, exact=False, features=features)

    def _register(self, name: bytes, *, exact: bool,
                  features: tuple[bytes, ...]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if not name:
                raise ValueError("packet name must not be empty")
            if name in self._specs:
                raise ValueError(f"packet {name!r} registered twice")
            self._specs[name] = CommandSpec(name, handler, exact, features)
            self._lengths = tuple(sorted({len(key) for key in self._specs}, reverse=True))
            by_first: dict[int, set[int]] = {}
            for key in self._specs:
                by_first.setdefault(key[0], set()).add(len(key))
            self._lengths_by_first = {first: tuple(sorted(lengths, reverse=True))
                                      for first, lengths in by_first.items()}
            return handler
        return register

    def lookup(self, payload: bytes) -> tuple[CommandSpec, bytes] | None:
        """(spec, arguments after the name) for the longest match, or None."""
        if not payload:
            return None
        for length in self._lengths_by_first.get(payload[0], ()):
            spec = self._specs.get(payload[:length])
            if spec is not None and (not spec.exact or len(payload) == length):
                return spec, payload[length:]
        return None

    def features(self) -> tuple[bytes, ...]:
        return tuple(feature for spec in self._specs.values() for feature in spec.features)

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(self._specs.values())


RSP = CommandTable()

# errno-style codes in E replies; looked up along the exception's MRO.
_ERROR_CODES: dict[type[BaseException], int] = {
    UnknownThread: 3,             # ESRCH
    RegisterUnavailable: 5,       # EIO
    TargetError: 5,               # EIO
    MemoryAccessError: 14,        # EFAULT
    RspProtocolError: 22,         # EINVAL
    UnsupportedBreakpoint: 95,    # EOPNOTSUPP
}
_BUG_ERROR_CODE = 1              # anything else: a pvdbg bug, logged with its traceback


def error_reply(error: BaseException) -> bytes:
    for cls in type(error).__mro__:
        if cls in _ERROR_CODES:
            return b"E%02x" % _ERROR_CODES[cls]
    return b"E%02x" % _BUG_ERROR_CODE


def thread_id(vcpu: int) -> bytes:
    return b"%x" % (vcpu + 1)


ALL_THREADS = -1
ANY_THREAD = 0


def parse_thread_id(text: bytes) -> int:
    """gdb thread id -> ALL_THREADS, ANY_THREAD or a thread number (>= 1).
    A `pPID.TID` form is accepted and its pid ignored."""
    if text.startswith(b"p") and b"." in text:
        text = text.split(b".", 1)[1]
    if text == b"-1":
        return ALL_THREADS
    return parse_hex_int(text)


def console_output(text: str) -> tuple[bytes, ...]:
    """`O` packets carrying `text` for gdb's console, CONSOLE_CHUNK_BYTES per packet."""
    data = text.encode("utf-8", "replace")
    return tuple(b"O" + encode_hex(data[start:start + CONSOLE_CHUNK_BYTES])
                 for start in range(0, len(data), CONSOLE_CHUNK_BYTES))


_WATCH_KEYS = {StopReason.WATCH: b"watch", StopReason.RWATCH: b"rwatch",
               StopReason.AWATCH: b"awatch"}
EXPEDITED_REGISTERS = ("esp", "ebp", "eip", "rsp", "rbp", "rip")
"""Sent in every stop reply as `NN:VALUE;` (gdb register number, target byte order),
so gdb knows where the thread stopped and which frame it is in without asking for
`g` (gdb manual, "Stop Reply Packets": `T AA n1:r1;n2:r2;...`). Those the target
description lacks are left out: i386 sends the e* ones, x86-64 the r* ones."""


class Stub:
    """Per-connection stub state: the target, thread selection and gdb's features."""

    def __init__(self, target: Target, *, tdesc: TargetDescription | None = None,
                 table: CommandTable = RSP, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.target = target
        # A target may name its own description (`target_description`, e.g. x86-64
        # for a 64-bit guest); the packed `g` fast path follows the target's one.
        own_tdesc = getattr(target, "target_description", None) or load_target_description()
        self.tdesc = tdesc if tdesc is not None else own_tdesc
        self.table = table
        self.max_packet_size = max_packet_size
        self.peer_features: frozenset[bytes] = frozenset()   # from gdb's qSupported
        self.continue_vcpu: int | None = None                 # Hc; None = all threads
        self.threads_xml = b""                                # qXfer:threads:read snapshot
        self.threads_described: tuple[tuple[int, str], ...] = ()   # what threads_xml shows
        self._general_vcpu: int | None = None                 # Hg; None until known
        by_name = self.tdesc.registers.by_name
        self._expedited = tuple((spec.name, b"%02x:" % spec.regnum, spec.nbytes,
                                 (1 << spec.bitsize) - 1)
                                for spec in (by_name[name] for name in EXPEDITED_REGISTERS
                                             if name in by_name))
        # Optional fast paths a Target may offer (target.py, "Optional"; engine's
        # SessionTarget does): without them the generic path is taken.
        g_packet = getattr(target, "g_packet", None)
        self._g_packet = g_packet if self.tdesc is own_tdesc else None
        self._resume_is_quick = getattr(target, "resume_is_quick", None)
        self._stop_registers = getattr(target, "stop_registers", None)
        self._inline_resumes = bool(getattr(target, "inline_resumes", False))

    # -- dispatch -----------------------------------------------------------

    def handle(self, payload: bytes) -> Outcome:
        """Dispatch one packet. Never raises: failures become `E` replies."""
        found = self.table.lookup(payload)
        if found is None:
            return Replies((b"",))
        spec, args = found
        try:
            result = spec.handler(self, args)
        except (RspProtocolError, TargetError) as error:
            log.debug("packet %r failed: %s", payload[:64], error)
            return Replies((error_reply(error),))
        except Exception:
            log.exception("pvdbg bug handling packet %r", payload[:64])
            return Replies((b"E%02x" % _BUG_ERROR_CODE,))
        if isinstance(result, bytes):
            return Replies((result,))
        return result

    def handle_synchronously(self, payload: bytes) -> Replies:
        """`handle`, running any resume in this thread (no ^C possible meanwhile)."""
        outcome = self.handle(payload)
        if isinstance(outcome, ResumeRequest):
            return self.run_resume(outcome)
        return outcome

    def run_resume(self, request: ResumeRequest) -> Replies:
        """Call the blocking `target.resume` and build the replies for its stop."""
        try:
            event = self.target.resume(request.actions)
        except Exception as error:
            return self.resume_failed(error)
        return self.stop_replies(event)

    # -- stops --------------------------------------------------------------

    def stop_replies(self, event: StopEvent, *, announce: bool = True) -> Replies:
        """Console text for `event.message` (if `announce`), then the stop reply.
        The stopped vcpu becomes the selected thread, as gdb will assume."""
        if event.reason is not StopReason.SHUTDOWN:
            self._general_vcpu = event.vcpu
            self.continue_vcpu = None
        packets: tuple[bytes, ...] = ()
        if announce and event.message:
            text = event.message if event.message.endswith("\n") else event.message + "\n"
            packets = console_output(text)
        return Replies(packets + (self.stop_reply_payload(event),))

    def stop_reply_payload(self, event: StopEvent) -> bytes:
        if event.reason is StopReason.SHUTDOWN:
            return b"W%02x" % event.exit_code
        reply = b"T%02xthread:%s;" % (event.gdb_signal & 0xFF, thread_id(event.vcpu))
        reply += self.expedited_registers(event.vcpu)
        if event.reason is StopReason.BREAKPOINT_SW and b"swbreak+" in self.peer_features:
            reply += b"swbreak:;"
        elif event.reason is StopReason.BREAKPOINT_HW and b"hwbreak+" in self.peer_features:
            reply += b"hwbreak:;"
        elif event.reason in _WATCH_KEYS:
            reply += b"%s:%x;" % (_WATCH_KEYS[event.reason], event.address or 0)
        return reply

    def expedited_registers(self, vcpu: int) -> bytes:
        """`NN:VALUE;` for EXPEDITED_REGISTERS of `vcpu`; unavailable ones are left out.
        A target's optional `stop_registers(vcpu)` gives them all in one batch."""
        batch = self._stop_registers(vcpu) if self._stop_registers is not None else None
        if batch is None:
            batch = {}
        read = self.target.read_register
        parts = []
        for name, prefix, nbytes, mask in self._expedited:
            value = batch.get(name)
            if value is None:
                try:
                    value = read(vcpu, name)
                except TargetError:
                    continue
            parts.append(prefix + (value & mask).to_bytes(nbytes, "little").hex().encode() + b";")
        return b"".join(parts)

    def resume_request(self, actions: ResumeActions) -> ResumeRequest:
        """A ResumeRequest, marked short when the target says this resume ends at once
        (`resume_is_quick(actions)`, optional: e.g. a single step)."""
        quick = self._resume_is_quick
        return ResumeRequest(actions, quick is not None and bool(quick(actions)),
                             self._inline_resumes)

    def resume_failed(self, error: BaseException) -> Replies:
        """gdb waits for a stop reply no matter what: report the error, then the stop state."""
        if not isinstance(error, TargetError):
            log.error("pvdbg bug in target.resume", exc_info=error)
        try:
            state = self.target.stop_state()
        except Exception:
            log.exception("target.stop_state failed after a failed resume")
            return Replies((*console_output(f"pvdbg: resume failed: {error}\n"),
                            error_reply(error)))
        return Replies((*console_output(f"pvdbg: resume failed: {error}\n"),
                        *self.stop_replies(state, announce=False).payloads))

    # -- threads ------------------------------------------------------------

    @property
    def general_vcpu(self) -> int:
        """The vcpu g/G/p/P/m/M/X act on (Hg), defaulting to the stopped vcpu."""
        if self._general_vcpu is None:
            self._general_vcpu = self.target.stop_state().vcpu
        return self._general_vcpu

    @general_vcpu.setter
    def general_vcpu(self, vcpu: int) -> None:
        self._general_vcpu = vcpu

    def vcpu_of_thread(self, thread: int) -> int:
        """A specific gdb thread number -> vcpu id; raises UnknownThread."""
        vcpu = thread - 1
        if vcpu not in self.target.vcpu_ids():
            raise UnknownThread(f"no thread {thread:x}")
        return vcpu

    def select_thread(self, text: bytes) -> int | None:
        """Thread id text -> vcpu, or None for all threads; `0` (any) -> general vcpu."""
        thread = parse_thread_id(text)
        if thread == ALL_THREADS:
            return None
        if thread == ANY_THREAD:
            return self.general_vcpu
        return self.vcpu_of_thread(thread)

    # -- registers ----------------------------------------------------------

    def register_spec(self, number: int) -> RegisterSpec:
        if not 0 <= number < len(self.tdesc.registers):
            raise RspProtocolError(f"no register number {number:#x}")
        return self.tdesc.registers[number]

    def register_hex(self, vcpu: int, spec: RegisterSpec) -> bytes:
        try:
            return spec.to_hex(self.target.read_register(vcpu, spec.name))
        except RegisterUnavailable:
            return spec.unavailable_hex


# -- helpers for argument parsing ---------------------------------------------

_ADDRESS_LENGTH_RE = re.compile(rb"([0-9a-fA-F]+),([0-9a-fA-F]+)")
_BREAKPOINT_RE = re.compile(rb"([0-9a-fA-F]+),([0-9a-fA-F]+),([0-9a-fA-F]+)(?:;.*)?", re.DOTALL)


def _split_address_length(text: bytes) -> tuple[int, int]:
    match = _ADDRESS_LENGTH_RE.fullmatch(text)
    if match is not None:       # the common case in one regex; errors come from below
        return int(match[1], 16), int(match[2], 16)
    address, comma, length = text.partition(b",")
    if not comma:
        raise RspProtocolError(f"expected ADDR,LENGTH, got {text[:40]!r}")
    return parse_hex_int(address), parse_hex_int(length)


def _split_data(args: bytes) -> tuple[int, int, bytes]:
    head, colon, data = args.partition(b":")
    if not colon:
        raise RspProtocolError(f"expected ADDR,LENGTH:DATA, got {args[:40]!r}")
    address, length = _split_address_length(head)
    return address, length, data


def _qxfer_args(args: bytes) -> tuple[str, int, int]:
    """`annex:offset,length` -> (annex, offset, length)."""
    annex, colon, window = args.rpartition(b":")
    if not colon:
        raise RspProtocolError(f"expected ANNEX:OFFSET,LENGTH, got {args[:40]!r}")
    offset, length = _split_address_length(window)
    return annex.decode("ascii", "replace"), offset, length


def _qxfer_reply(document: bytes, offset: int, length: int) -> bytes:
    chunk = document[offset:offset + length]
    return (b"l" if offset + len(chunk) >= len(document) else b"m") + chunk


# -- connection setup -----------------------------------------------------------

@RSP.prefix(b"qSupported")
def q_supported(stub: Stub, args: bytes) -> bytes:
    """Remember gdb's features; advertise PacketSize and the registered handlers' features."""
    if args.startswith(b":"):
        stub.peer_features = frozenset(item for item in args[1:].split(b";") if item)
    elif args:
        raise RspProtocolError(f"bad qSupported arguments {args[:40]!r}")
    return b";".join((b"PacketSize=%x" % stub.max_packet_size, *stub.table.features()))


@RSP.exact(b"QStartNoAckMode", features=(b"QStartNoAckMode+",))
def start_no_ack_mode(stub: Stub, args: bytes) -> Replies:
    return Replies((b"OK",), AfterReply.START_NO_ACK)


@RSP.exact(b"?")
def stop_reason(stub: Stub, args: bytes) -> Replies:
    """The current stop; no console text, gdb reads exactly one reply here."""
    return stub.stop_replies(stub.target.stop_state(), announce=False)


@RSP.prefix(b"qAttached")
def q_attached(stub: Stub, args: bytes) -> bytes:
    """1: gdb attached to a running guest, so quitting detaches instead of killing."""
    return b"1"


@RSP.prefix(b"qXfer:features:read:", features=(b"qXfer:features:read+",))
def read_features(stub: Stub, args: bytes) -> bytes:
    annex, offset, length = _qxfer_args(args)
    document = stub.tdesc.annexes.get(annex)
    if document is None:
        raise RspProtocolError(f"no target description annex {annex!r}")
    return _qxfer_reply(document, offset, length)


# -- registers -------------------------------------------------------------------

@RSP.exact(b"g")
def read_registers(stub: Stub, args: bytes) -> bytes:
    vcpu = stub.general_vcpu
    if stub._g_packet is not None:
        packed = stub._g_packet(vcpu)
        if packed is not None:
            return packed
    return b"".join(stub.register_hex(vcpu, spec) for spec in stub.tdesc.registers)


@RSP.prefix(b"G")
def write_registers(stub: Stub, args: bytes) -> bytes:
    """All registers in g order; a shorter packet ending on a register boundary
    writes the leading registers only; `xx` leaves a register untouched."""
    vcpu = stub.general_vcpu
    position = 0
    writes: list[tuple[RegisterSpec, int]] = []
    for spec in stub.tdesc.registers:
        if position == len(args):
            break
        text = args[position:position + 2 * spec.nbytes]
        position += len(text)
        if text == spec.unavailable_hex:
            continue
        writes.append((spec, spec.from_hex(text)))
    if position != len(args):
        raise RspProtocolError(f"G packet has {len(args)} hex digits, more than all registers")
    for spec, value in writes:
        stub.target.write_register(vcpu, spec.name, value)
    return b"OK"


@RSP.prefix(b"p")
def read_register(stub: Stub, args: bytes) -> bytes:
    return stub.register_hex(stub.general_vcpu, stub.register_spec(parse_hex_int(args)))


@RSP.prefix(b"P")
def write_register(stub: Stub, args: bytes) -> bytes:
    number, equals, text = args.partition(b"=")
    if not equals:
        raise RspProtocolError(f"expected N=VALUE, got {args[:40]!r}")
    spec = stub.register_spec(parse_hex_int(number))
    stub.target.write_register(stub.general_vcpu, spec.name, spec.from_hex(text))
    return b"OK"


# -- memory ------------------------------------------------------------------------

@RSP.prefix(b"m")
def read_memory(stub: Stub, args: bytes) -> bytes:
    """Up to LENGTH bytes; stops early at the first unreadable byte (RSP allows a short read)."""
    guest_va, length = _split_address_length(args)
    length = min(length, stub.max_packet_size // 2)
    vcpu = stub.general_vcpu
    try:
        return encode_hex(stub.target.read_memory(vcpu, guest_va, length))
    except MemoryAccessError as error:
        readable = error.guest_va - guest_va
        if not 0 < readable < length:
            raise
        return encode_hex(stub.target.read_memory(vcpu, guest_va, readable))


@RSP.prefix(b"M")
def write_memory_hex(stub: Stub, args: bytes) -> bytes:
    guest_va, length, text = _split_data(args)
    data = decode_hex(text)
    if len(data) != length:
        raise RspProtocolError(f"M packet says {length} bytes but carries {len(data)}")
    if length:
        stub.target.write_memory(stub.general_vcpu, guest_va, data)
    return b"OK"


@RSP.prefix(b"X")
def write_memory_binary(stub: Stub, args: bytes) -> bytes:
    guest_va, length, data = _split_data(args)
    if len(data) != length:
        raise RspProtocolError(f"X packet says {length} bytes but carries {len(data)}")
    if length:
        stub.target.write_memory(stub.general_vcpu, guest_va, data)
    return b"OK"


# -- breakpoints -------------------------------------------------------------------

_BREAKPOINT_TYPES = frozenset(kind.value for kind in BreakpointKind)
_BREAKPOINT_KINDS = {kind.value: kind for kind in BreakpointKind}


def _breakpoint_args(args: bytes) -> tuple[BreakpointKind, int, int] | None:
    """`type,addr,kind[;cond]` -> (kind, guest_va, length); None for an unknown type."""
    match = _BREAKPOINT_RE.fullmatch(args)
    if match is not None:
        type_number = int(match[1], 16)
        if type_number not in _BREAKPOINT_TYPES:
            return None
        return _BREAKPOINT_KINDS[type_number], int(match[2], 16), int(match[3], 16)
    fields = args.split(b";", 1)[0].split(b",")
    if len(fields) != 3:
        raise RspProtocolError(f"expected TYPE,ADDR,KIND, got {args[:40]!r}")
    type_number = parse_hex_int(fields[0])
    if type_number not in _BREAKPOINT_TYPES:
        return None
    return BreakpointKind(type_number), parse_hex_int(fields[1]), parse_hex_int(fields[2])


@RSP.prefix(b"Z", features=(b"swbreak+", b"hwbreak+"))
def insert_breakpoint(stub: Stub, args: bytes) -> bytes:
    parsed = _breakpoint_args(args)
    if parsed is None:
        return b""
    stub.target.insert_breakpoint(*parsed)
    return b"OK"


@RSP.prefix(b"z")
def remove_breakpoint(stub: Stub, args: bytes) -> bytes:
    parsed = _breakpoint_args(args)
    if parsed is None:
        return b""
    stub.target.remove_breakpoint(*parsed)
    return b"OK"


# -- execution ---------------------------------------------------------------------

def _legacy_resume(stub: Stub, args: bytes, *, step: bool, with_signal: bool) -> ResumeRequest:
    """c/s [addr] and C/S sig[;addr]: the signal is accepted and ignored."""
    if with_signal:
        signal, _, args = args.partition(b";")
        parse_hex_int(signal)
    vcpu = stub.continue_vcpu if stub.continue_vcpu is not None else stub.general_vcpu
    if args:
        stub.target.write_register(vcpu, PC_REGISTER, parse_hex_int(args))
    if step:
        return stub.resume_request(ResumeActions({vcpu: STEP}))
    return stub.resume_request(ResumeActions(default=CONTINUE))


@RSP.prefix(b"c")
def continue_(stub: Stub, args: bytes) -> ResumeRequest:
    return _legacy_resume(stub, args, step=False, with_signal=False)


@RSP.prefix(b"C")
def continue_with_signal(stub: Stub, args: bytes) -> ResumeRequest:
    return _legacy_resume(stub, args, step=False, with_signal=True)


@RSP.prefix(b"s")
def step(stub: Stub, args: bytes) -> ResumeRequest:
    return _legacy_resume(stub, args, step=True, with_signal=False)


@RSP.prefix(b"S")
def step_with_signal(stub: Stub, args: bytes) -> ResumeRequest:
    return _legacy_resume(stub, args, step=True, with_signal=True)


@RSP.exact(b"vCont?", features=(b"vContSupported+",))
def vcont_actions(stub: Stub, args: bytes) -> bytes:
    return b"vCont;c;C;s;S;t;r"


@RSP.prefix(b"QNonStop:", features=(b"QNonStop+",))
def non_stop_mode(stub: Stub, args: bytes) -> bytes:
    """All-stop (0) is what this table speaks; a connection's NonStop layer
    (pvdbg/stub/nonstop.py) sees QNonStop first and switches non-stop (1) on."""
    if args == b"0":
        return b"OK"
    raise TargetError("non-stop mode needs the connection loop of pvdbg.stub.server")


_VCONT_ACTIONS = {b"c": CONTINUE, b"C": CONTINUE, b"s": STEP, b"S": STEP, b"t": STAY_STOPPED}


def _vcont_action(text: bytes) -> ResumeAction:
    letter, rest = text[:1], text[1:]
    if letter in (b"C", b"S"):
        parse_hex_int(rest)             # the signal: accepted, ignored
        rest = b""
    if letter == b"r":
        start, end = _split_address_length(rest)
        return ResumeAction(ResumeKind.RANGE_STEP, start, end)
    if rest:
        raise RspProtocolError(f"bad vCont action {text[:40]!r}")
    action = _VCONT_ACTIONS.get(letter)
    if action is None:
        raise RspProtocolError(f"unknown vCont action {text[:40]!r}")
    return action


@RSP.prefix(b"vCont;")
def vcont(stub: Stub, args: bytes) -> Replies | ResumeRequest:
    """Leftmost action matching a vcpu wins; one without a thread covers the rest."""
    if args == b"c":               # gdb's plain continue, every hit: nothing to parse
        actions = ResumeActions({}, CONTINUE)
        if not stub.target.vcpu_ids():
            return Replies((b"OK",))
        return stub.resume_request(actions)
    per_vcpu: dict[int, ResumeAction] = {}
    default: ResumeAction | None = None
    for item in args.split(b";"):
        action_text, colon, thread_text = item.partition(b":")
        action = _vcont_action(action_text)
        vcpu = stub.select_thread(thread_text) if colon else None
        if default is not None:
            continue
        if vcpu is None:
            default = action
        else:
            per_vcpu.setdefault(vcpu, action)
    actions = ResumeActions(per_vcpu, default or STAY_STOPPED)
    if not actions.runs_any(stub.target.vcpu_ids()):
        return Replies((b"OK",))
    return stub.resume_request(actions)


@RSP.prefix(b"D")
def detach(stub: Stub, args: bytes) -> Replies:
    stub.target.detach()
    return Replies((b"OK",), AfterReply.CLOSE)


@RSP.exact(b"k")
def kill(stub: Stub, args: bytes) -> Replies:
    """gdb expects no reply to `k` and closes the connection itself."""
    stub.target.kill()
    return Replies((), AfterReply.CLOSE)


# -- threads -----------------------------------------------------------------------

@RSP.exact(b"qfThreadInfo")
def first_thread_info(stub: Stub, args: bytes) -> bytes:
    return b"m" + b",".join(thread_id(vcpu) for vcpu in stub.target.vcpu_ids())


@RSP.exact(b"qsThreadInfo")
def subsequent_thread_info(stub: Stub, args: bytes) -> bytes:
    return b"l"


@RSP.exact(b"qC")
def current_thread(stub: Stub, args: bytes) -> bytes:
    return b"QC" + thread_id(stub.general_vcpu)


@RSP.prefix(b"H")
def set_thread(stub: Stub, args: bytes) -> bytes:
    operation, text = args[:1], args[1:]
    vcpu = stub.select_thread(text)
    if operation == b"g":
        if vcpu is not None:
            stub.general_vcpu = vcpu
    elif operation == b"c":
        stub.continue_vcpu = vcpu
    else:
        raise RspProtocolError(f"unknown H operation {args[:40]!r}")
    return b"OK"


@RSP.prefix(b"T")
def thread_alive(stub: Stub, args: bytes) -> bytes:
    thread = parse_thread_id(args)
    if thread in (ALL_THREADS, ANY_THREAD):
        raise UnknownThread(f"thread id {args[:40]!r} is not one thread")
    stub.vcpu_of_thread(thread)
    return b"OK"


@RSP.prefix(b"qThreadExtraInfo,")
def thread_extra_info(stub: Stub, args: bytes) -> bytes:
    thread = parse_thread_id(args)
    vcpu = stub.vcpu_of_thread(thread)
    return encode_hex(stub.target.describe_vcpu(vcpu).encode("utf-8", "replace"))


@RSP.prefix(b"qXfer:threads:read:", features=(b"qXfer:threads:read+",))
def read_threads(stub: Stub, args: bytes) -> bytes:
    """The XML is built at offset 0 and reused for the following chunks."""
    annex, offset, length = _qxfer_args(args)
    if annex:
        raise RspProtocolError(f"qXfer:threads:read takes no annex, got {annex!r}")
    if offset == 0 or not stub.threads_xml:
        describe = stub.target.describe_vcpu
        threads = tuple((vcpu, describe(vcpu)) for vcpu in stub.target.vcpu_ids())
        if threads != stub.threads_described:    # gdb asks at every stop: reuse the XML
            lines = ['<?xml version="1.0"?>', "<threads>"]
            for vcpu, description in threads:
                lines.append(f'  <thread id="{vcpu + 1:x}" name="vcpu{vcpu}">'
                             f'{xml_escape(description)}</thread>')
            lines.append("</threads>")
            stub.threads_xml = "\n".join(lines).encode("utf-8", "replace")
            stub.threads_described = threads
    return _qxfer_reply(stub.threads_xml, offset, length)


# -- monitor -------------------------------------------------------------------------

@RSP.prefix(b"qRcmd,")
def monitor(stub: Stub, args: bytes) -> Replies:
    """`monitor CMD`: output as `O` packets, then OK; a TargetError's text is the output."""
    command = decode_hex(args).decode("utf-8", "replace")
    try:
        output = stub.target.monitor(command)
    except TargetError as error:
        output = f"error: {error}\n"
    if output and not output.endswith("\n"):
        output += "\n"
    return Replies((*console_output(output), b"OK"))
