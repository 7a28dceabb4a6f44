"""RSP framing (pvdbg/stub/rsp.py): unit tests and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdbg.stub.rsp import (MAX_PACKET_SIZE, NEED_DATA, Ack, DroppedPacket, Interrupt, Nack,
                            Packet, RspConnection, RspProtocolError, checksum, decode_hex,
                            encode_hex, escape, frame, int_to_le_hex, le_hex_to_int,
                            parse_hex_int, unescape)


def drive(conn: RspConnection, chunks: list[bytes]) -> list[object]:
    """Feed chunks; record every event, error and byte the connection wants sent."""
    log: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except RspProtocolError as error:
                log.append(("error", str(error)))
                event = None
            out = conn.data_to_send()
            if out:
                log.append(("send", out))
            if event is NEED_DATA:
                break
            if event is not None:
                log.append(event)
    return log


def events(data: bytes, *, ack_mode: bool = True, limit: int = MAX_PACKET_SIZE) -> list[object]:
    conn = RspConnection(limit)
    if not ack_mode:
        conn.start_no_ack_mode()
    return drive(conn, [data])


# -- helpers -----------------------------------------------------------------------

def test_escape_known_bytes() -> None:
    assert escape(b"a#b$c}d*e") == b"a}\x03b}\x04c}]d}\x0ae"
    assert unescape(b"a}\x03b}\x04c}]d}\x0ae") == b"a#b$c}d*e"
    assert escape(b"plain") == b"plain"


def test_unescape_rejects_dangling_escape() -> None:
    with pytest.raises(RspProtocolError):
        unescape(b"abc}")


def test_frame_and_checksum() -> None:
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"") == b"$#00"
    assert frame(b"#") == b"$}\x03#80"
    assert checksum(b"}\x03") == 0x80


def test_hex_helpers() -> None:
    assert encode_hex(b"\x00\xab") == b"00ab"
    assert decode_hex(b"00AB") == b"\x00\xab"
    assert parse_hex_int(b"C0100000") == 0xC0100000
    assert int_to_le_hex(0x12345678, 4) == b"78563412"
    assert int_to_le_hex(-1, 2) == b"ffff"
    assert le_hex_to_int(b"78563412") == 0x12345678


@pytest.mark.parametrize("text", [b"", b"g", b"-1", b"0x10", b" 1"])
def test_parse_hex_int_rejects(text: bytes) -> None:
    with pytest.raises(RspProtocolError):
        parse_hex_int(text)


@pytest.mark.parametrize("text", [b"0", b"zz", b"0g"])
def test_decode_hex_rejects(text: bytes) -> None:
    with pytest.raises(RspProtocolError):
        decode_hex(text)


# -- receiving ---------------------------------------------------------------------

def test_packet_is_acked_in_ack_mode() -> None:
    assert events(b"$g#67") == [("send", b"+"), Packet(b"g")]


def test_no_ack_mode_sends_nothing() -> None:
    assert events(b"$g#67", ack_mode=False) == [Packet(b"g")]


def test_payload_is_unescaped() -> None:
    assert events(frame(b"X0,2:#}")) == [("send", b"+"), Packet(b"X0,2:#}")]


def test_checksum_digits_are_case_insensitive() -> None:
    assert events(b"$" + b"OK" + b"#9A") == [("send", b"+"), Packet(b"OK")]


def test_interrupt_ack_nack() -> None:
    assert events(b"\x03+-", ack_mode=False) == [Interrupt(), Ack(), Nack()]


def test_nack_retransmits_last_packet_in_ack_mode() -> None:
    conn = RspConnection()
    sent = conn.send(b"T05thread:1;")
    assert drive(conn, [b"-"]) == [("send", sent), Nack()]
    conn.start_no_ack_mode()
    assert drive(conn, [b"-"]) == [Nack()]


def test_interrupt_byte_inside_packet_is_data() -> None:
    assert events(frame(b"X0,1:\x03"), ack_mode=False) == [Packet(b"X0,1:\x03")]


def test_need_data_until_checksum_complete() -> None:
    conn = RspConnection()
    for part in (b"$", b"qC", b"#", b"b"):
        conn.receive_data(part)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"4")
    assert conn.next_event() == Packet(b"qC")


def test_bad_checksum_nacks_and_stream_continues() -> None:
    assert events(b"$g#00$g#67") == [
        ("error", "bad checksum b'00' (expected 67) on b'g'"), ("send", b"-"),
        ("send", b"+"), Packet(b"g")]


def test_bad_checksum_in_no_ack_mode_is_only_an_error() -> None:
    log = events(b"$g#zz$?#3f", ack_mode=False)
    assert [type(item) for item in log] == [tuple, Packet]
    assert log[1] == Packet(b"?")


def test_junk_is_skipped_with_one_error() -> None:
    assert events(b"hello$g#67", ack_mode=False) == [
        ("error", "skipped 5 junk bytes outside any packet"), Packet(b"g")]


def test_trailing_junk_waits_for_the_next_byte() -> None:
    conn = RspConnection()
    conn.start_no_ack_mode()
    assert drive(conn, [b"junk"]) == []
    assert drive(conn, [b"more", b"+"]) == [
        ("error", "skipped 8 junk bytes outside any packet"), Ack()]


def test_new_packet_start_aborts_a_torn_packet() -> None:
    assert events(b"$m12$g#67", ack_mode=False) == [
        ("error", "packet cut short by '$' after 3 bytes"), Packet(b"g")]


def test_dangling_escape_is_dropped_with_ack() -> None:
    body = b"X0,1:}"
    log = events(b"$" + body + b"#%02x" % checksum(body))
    assert log == [("send", b"+"), DroppedPacket("packet ends inside a '}' escape")]


def test_oversized_packet_is_discarded_then_reported() -> None:
    limit = 8
    log = events(b"$" + b"a" * 20 + b"#00$g#67", limit=limit)
    assert log == [("error", "packet longer than 8 bytes; discarding it"),
                   ("send", b"+"), DroppedPacket("packet longer than 8 bytes"),
                   ("send", b"+"), Packet(b"g")]


def test_packet_exactly_at_limit_is_accepted() -> None:
    assert events(frame(b"a" * 8), limit=8, ack_mode=False) == [Packet(b"a" * 8)]


def test_oversized_packet_cut_by_new_packet() -> None:
    log = events(b"$" + b"a" * 20 + b"$g#67", limit=8, ack_mode=False)
    assert log == [("error", "packet longer than 8 bytes; discarding it"), Packet(b"g")]


def test_memory_stays_bounded_while_discarding() -> None:
    conn = RspConnection(1024)
    conn.start_no_ack_mode()
    conn.receive_data(b"$")
    errors = 0
    for _ in range(1000):
        conn.receive_data(b"x" * 4096)
        try:
            assert conn.next_event() is NEED_DATA
        except RspProtocolError:
            errors += 1
        assert conn.buffered_bytes <= 4096
    assert errors == 1
    conn.receive_data(b"#00")
    assert isinstance(conn.next_event(), DroppedPacket)


def test_max_packet_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RspConnection(0)


# -- properties --------------------------------------------------------------------

rsp_bytes = st.binary(max_size=300) | st.lists(
    st.sampled_from(b"$#}*+-\x03ag0f9") | st.integers(0, 255), max_size=300).map(bytes)


@st.composite
def split_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    edges = [0, *cuts, len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:])]


@settings(max_examples=400)
@given(st.data(), rsp_bytes, st.booleans(), st.sampled_from([4, 16, MAX_PACKET_SIZE]))
def test_any_split_gives_same_events_and_only_rsp_errors(
        data: st.DataObject, stream: bytes, ack_mode: bool, limit: int) -> None:
    def fresh() -> RspConnection:
        conn = RspConnection(limit)
        conn.send(b"last")
        if not ack_mode:
            conn.start_no_ack_mode()
        return conn

    whole = drive(fresh(), [stream])                 # only RspProtocolError is caught
    chunks = data.draw(split_points(stream))
    assert drive(fresh(), chunks) == whole
    assert drive(fresh(), [bytes([b]) for b in stream]) == whole


@given(st.binary(max_size=500))
def test_escape_round_trip(payload: bytes) -> None:
    escaped = escape(payload)
    assert unescape(escaped) == payload
    assert not any(byte in b"#$*" for byte in escaped)


@given(st.lists(st.binary(max_size=200), max_size=8), st.data())
def test_framed_payloads_come_back_intact(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    log = drive(RspConnection(), data.draw(split_points(stream)))
    assert [item for item in log if isinstance(item, Packet)] == [Packet(p) for p in payloads]
    assert [item for item in log if isinstance(item, tuple)] == [("send", b"+")] * len(payloads)


@given(st.binary(min_size=1, max_size=64))
def test_payload_over_limit_never_becomes_a_packet(payload: bytes) -> None:
    limit = len(escape(payload)) - 1
    if limit < 1:
        return
    log = events(frame(payload) + frame(b"g"), limit=limit, ack_mode=False)
    assert log[0] == ("error", f"packet longer than {limit} bytes; discarding it")
    assert log[-1] == Packet(b"g")
    assert Packet(payload) not in log


@given(st.binary(max_size=5000))
def test_checksum_is_the_byte_sum_modulo_256(data: bytes) -> None:
    assert checksum(data) == sum(data) & 0xFF


def test_checksum_of_long_bodies_of_maximal_bytes() -> None:
    for length in (255, 256, 257, 512, 513, 0x20000):
        assert checksum(b"\xff" * length) == (255 * length) & 0xFF
