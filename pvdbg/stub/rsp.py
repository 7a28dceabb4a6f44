"""GDB remote serial protocol framing, sans-IO: bytes in, events out, bytes to send.

No sockets, threads or target here. `RspConnection.receive_data` buffers what gdb
sent, `next_event` returns one `Packet`, `Interrupt`, `Ack`, `Nack`, `DroppedPacket`
or `NEED_DATA`, and `send` frames a reply payload. After every `next_event` call
(whether it returned or raised) the caller writes `data_to_send()`: the acks,
nacks and retransmissions the connection decided on.

Protocol source: gdb manual, "Remote Protocol" > "Overview" (framing, `}` escapes,
acks) and "Packet Acknowledgment" (QStartNoAckMode).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Final

MAX_PACKET_SIZE: Final = 0x20000
"""Largest packet body (between `$` and `#`, escaped) accepted from gdb, in bytes."""

_ESCAPE: Final = 0x7D  # '}'
_ESCAPE_XOR: Final = 0x20
_NEEDS_ESCAPE: Final = frozenset(b"#$}*")
_PACKET_START: Final = 0x24  # '$'
_STARTS: Final = frozenset(b"$+-\x03")
_TERMINATOR: Final = re.compile(rb"[#$]")
_START: Final = re.compile(rb"[$+\-\x03]")
_HEX_RE: Final = re.compile(rb"[0-9a-fA-F]*")
_ESCAPE_RE: Final = re.compile(rb"[#$}*]")
_HEX_NUMBER_RE: Final = re.compile(rb"[0-9a-fA-F]+")
_CHECKSUM_RE: Final = re.compile(rb"[0-9a-fA-F]{2}")


class RspProtocolError(Exception):
    """gdb sent bytes that are not valid RSP: junk, bad checksum, oversized or malformed packet."""


@dataclass(frozen=True)
class Packet:
    """One complete packet from gdb, checksum verified, `}` escapes removed."""

    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """A 0x03 byte outside any packet: gdb asks the running target to stop."""


@dataclass(frozen=True)
class Ack:
    """`+`: gdb received our last packet intact."""


@dataclass(frozen=True)
class Nack:
    """`-`: gdb wants our last packet again (already queued in ack mode)."""


@dataclass(frozen=True)
class DroppedPacket:
    """A complete packet that was discarded (too long or malformed); answer it with an error reply."""

    reason: str


class NeedData:
    """More bytes are needed before another event can be returned."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

Event = Packet | Interrupt | Ack | Nack | DroppedPacket | NeedData


_ADLER_CHUNK: Final = 256
"""Bytes per zlib.adler32 call in `checksum`: 1 + 256 * 255 stays below Adler-32's
modulus 65521, so the low half of each result is 1 + the chunk's exact byte sum."""


def checksum(body: bytes) -> int:
    """Modulo-256 sum of the framed (escaped) body bytes. Long bodies are summed by
    zlib in C: each chunk's Adler-32 is 1 + its byte sum in the low half and a multiple
    of 65536 above it, so the results' sum minus the chunk count is the byte sum
    modulo 256 (5x faster than `sum` on a 128 KiB reply)."""
    length = len(body)
    if length <= _ADLER_CHUNK:
        return sum(body) & 0xFF
    view = memoryview(body)
    starts = range(0, length, _ADLER_CHUNK)
    chunks = map(view.__getitem__, map(slice, starts, range(_ADLER_CHUNK, length + _ADLER_CHUNK,
                                                          _ADLER_CHUNK)))
    return (sum(map(zlib.adler32, chunks)) - len(starts)) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape `# $ } *` as `}` followed by the byte xor 0x20."""
    if len(data) < 256:
        clean = _ESCAPE_RE.search(data) is None
    else:                           # four memchr scans beat the regex on long replies
        clean = (data.find(0x23) < 0 and data.find(0x24) < 0 and data.find(0x7D) < 0
                 and data.find(0x2A) < 0)
    if clean:
        return data if type(data) is bytes else bytes(data)
    out = bytearray()
    for byte in data:
        if byte in _NEEDS_ESCAPE:
            out += bytes((_ESCAPE, byte ^ _ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo `escape`; raises RspProtocolError on a `}` with nothing after it."""
    if _ESCAPE not in data:
        return bytes(data)
    out = bytearray()
    pending_escape = False
    for byte in data:
        if pending_escape:
            out.append(byte ^ _ESCAPE_XOR)
            pending_escape = False
        elif byte == _ESCAPE:
            pending_escape = True
        else:
            out.append(byte)
    if pending_escape:
        raise RspProtocolError("packet ends inside a '}' escape")
    return bytes(out)


def encode_hex(data: bytes) -> bytes:
    """Bytes -> lowercase hex digits, two per byte."""
    return data.hex().encode("ascii")


def decode_hex(text: bytes) -> bytes:
    """Hex digits -> bytes; raises RspProtocolError on odd length or a non-hex digit."""
    if len(text) % 2 or _HEX_RE.fullmatch(text) is None:
        raise RspProtocolError(f"bad hex data {bytes(text[:32])!r}")
    return bytes.fromhex(text.decode("ascii"))


def parse_hex_int(text: bytes) -> int:
    """A non-empty big-endian hex number such as b"c0100000"; raises RspProtocolError."""
    if _HEX_NUMBER_RE.fullmatch(text) is None:
        raise RspProtocolError(f"bad hex number {bytes(text[:32])!r}")
    return int(text, 16)


def int_to_le_hex(value: int, nbytes: int) -> bytes:
    """Register value -> target byte order (little-endian) hex, `nbytes` bytes wide."""
    return encode_hex((value & ((1 << (8 * nbytes)) - 1)).to_bytes(nbytes, "little"))


def le_hex_to_int(text: bytes) -> int:
    """Little-endian hex (as in g/p replies) -> int; raises RspProtocolError."""
    return int.from_bytes(decode_hex(text), "little")


def frame(payload: bytes) -> bytes:
    """`$<escaped payload>#<checksum>` with no connection state involved."""
    body = escape(payload)
    return b"$%s#%02x" % (body, checksum(body))


class RspConnection:
    """One gdb connection's framing state: receive buffer, ack mode, last packet sent.

    Memory is bounded: a packet body longer than `max_packet_size` is discarded as it
    arrives (RspProtocolError, then `DroppedPacket` once its end is seen).
    """

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        if max_packet_size < 1:
            raise ValueError(f"max_packet_size must be positive, not {max_packet_size}")
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._out = bytearray()
        self._ack_mode = True
        self._last_sent = b""
        self._scanned = 1           # body offset already searched for '#'/'$'
        self._junk = 0              # junk bytes skipped, reported when the run ends
        self._discarding = False    # inside an oversized packet
        self._discard_csum_left = 0

    @property
    def ack_mode(self) -> bool:
        """True until `start_no_ack_mode`; in ack mode packets are acked with + or -."""
        return self._ack_mode

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet turned into events (bounded by the packet limit
        plus whatever the last receive_data call brought)."""
        return len(self._buf)

    def start_no_ack_mode(self) -> None:
        """Stop acking; call right after sending the OK reply to QStartNoAckMode."""
        self._ack_mode = False

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from gdb; no parsing happens here."""
        self._buf += data

    def data_to_send(self) -> bytes:
        """Acks, nacks and retransmissions queued by `next_event`; clears the queue."""
        if not self._out:
            return b""
        out, self._out = bytes(self._out), bytearray()
        return out

    def send(self, payload: bytes) -> bytes:
        """Frame one reply payload; returns the bytes to write."""
        framed = frame(payload)
        self._last_sent = framed
        return framed

    def next_event(self) -> Event:
        """Return the next event or NEED_DATA.

        Raises RspProtocolError for junk, a bad checksum or an oversized packet; the
        offending bytes are consumed first, so calling again continues the stream.
        """
        buf = self._buf
        if buf and buf[0] == _PACKET_START and not self._discarding and not self._junk:
            event = self._whole_packet(buf)
            if event is not None:
                return event
        while True:
            if self._discarding:
                event = self._continue_discard()
                if event is None:
                    continue
                return event
            buf = self._buf
            if not buf:
                return NEED_DATA
            first = buf[0]
            if first not in _STARTS:
                start = _START.search(buf)
                run = start.start() if start is not None else len(buf)
                del buf[:run]
                self._junk += run
                if not buf:
                    return NEED_DATA
            if self._junk:
                skipped, self._junk = self._junk, 0
                raise RspProtocolError(f"skipped {skipped} junk bytes outside any packet")
            first = buf[0]
            if first == _PACKET_START:
                return self._parse_packet()
            del buf[:1]
            if first == 0x03:
                return Interrupt()
            if first == ord("+"):
                return Ack()
            if self._ack_mode and self._last_sent:
                self._out += self._last_sent
            return Nack()

    def _whole_packet(self, buf: bytearray) -> Event | None:
        """The common case in one pass: a complete, well-formed packet with a correct
        lowercase checksum at the start of the buffer. None for anything else (partial,
        oversized, torn, bad checksum), which `_parse_packet` then handles."""
        end = buf.find(b"#", 1, self.max_packet_size + 2)
        if end < 0 or len(buf) < end + 3 or buf.find(b"$", 1, end) >= 0:
            return None
        body = bytes(buf[1:end])
        if buf[end + 1:end + 3] != b"%02x" % (sum(body) & 0xFF if end <= _ADLER_CHUNK
                                               else checksum(body)):
            return None
        del buf[:end + 3]
        self._scanned = 1
        if self._ack_mode:
            self._out += b"+"
        if _ESCAPE not in body:
            return Packet(body)
        try:
            return Packet(unescape(body))
        except RspProtocolError as error:
            return DroppedPacket(str(error))

    def _parse_packet(self) -> Event:
        buf = self._buf
        limit = self.max_packet_size
        scan_end = min(len(buf), limit + 2)
        match = _TERMINATOR.search(buf, self._scanned, scan_end)
        if match is None:
            if len(buf) >= limit + 2:
                del buf[:limit + 2]
                self._scanned = 1
                self._discarding = True
                self._discard_csum_left = 0
                raise RspProtocolError(f"packet longer than {limit} bytes; discarding it")
            self._scanned = max(1, scan_end)
            return NEED_DATA
        end = match.start()
        if buf[end] == _PACKET_START:
            del buf[:end]
            self._scanned = 1
            raise RspProtocolError(f"packet cut short by '$' after {end - 1} bytes")
        csum_text = bytes(buf[end + 1:end + 3])
        torn_at = csum_text.find(b"$")
        if torn_at >= 0:            # cut inside its checksum: keep the next packet whole
            del buf[:end + 1 + torn_at]
            self._scanned = 1
            raise RspProtocolError(
                f"packet cut short by '$' in its checksum after {end - 1} bytes")
        if len(buf) < end + 3:
            self._scanned = end
            return NEED_DATA
        body = bytes(buf[1:end])
        del buf[:end + 3]
        self._scanned = 1
        if _CHECKSUM_RE.fullmatch(csum_text) is None or int(csum_text, 16) != checksum(body):
            if self._ack_mode:
                self._out += b"-"
            raise RspProtocolError(
                f"bad checksum {csum_text!r} (expected {checksum(body):02x}) on {body[:32]!r}")
        if self._ack_mode:
            self._out += b"+"
        try:
            return Packet(unescape(body))
        except RspProtocolError as error:
            return DroppedPacket(str(error))

    def _continue_discard(self) -> Event | None:
        """Skip the rest of an oversized packet; None when a new '$' ended it early."""
        buf = self._buf
        while buf:
            if self._discard_csum_left:
                taken = min(self._discard_csum_left, len(buf))
                del buf[:taken]
                self._discard_csum_left -= taken
                if self._discard_csum_left == 0:
                    self._discarding = False
                    if self._ack_mode:
                        self._out += b"+"
                    return DroppedPacket(f"packet longer than {self.max_packet_size} bytes")
                continue
            match = _TERMINATOR.search(buf)
            if match is None:
                del buf[:]
                break
            if buf[match.start()] == _PACKET_START:
                del buf[:match.start()]
                self._discarding = False
                return None
            del buf[:match.start() + 1]
            self._discard_csum_left = 2
        return NEED_DATA
