"""The xenconsoled-like backend on a xencons_interface page, driven by a simulated guest."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pvdbg.machine.memory import MachineMemory
from pvdbg.xen.abi import XenconsInterface
from pvdbg.xen.consring import IN_RING_SIZE, OUT_RING_SIZE, ConsoleRing

MFN = 3
BASE = MFN << 12
OFF = {name: XenconsInterface.offset_of(name) for name in
       ("in_ring", "out_ring", "in_cons", "in_prod", "out_cons", "out_prod")}


class Guest:
    """The guest's side of the console page, as PV GRUB drives it."""

    def __init__(self, memory: MachineMemory) -> None:
        self.memory = memory

    def u32(self, name: str) -> int:
        return self.memory.read_u32(BASE + OFF[name])

    def set(self, name: str, value: int) -> None:
        self.memory.write_u32(BASE + OFF[name], value & 0xFFFFFFFF)

    def put(self, data: bytes) -> int:
        """Write what fits into out[], advance out_prod; returns bytes written."""
        prod, cons = self.u32("out_prod"), self.u32("out_cons")
        room = OUT_RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
        data = data[:room]
        for i, byte in enumerate(data):
            self.memory.write(BASE + OFF["out_ring"] + ((prod + i) % OUT_RING_SIZE), bytes([byte]))
        self.set("out_prod", prod + len(data))
        return len(data)

    def getkeys(self, limit: int = 1 << 20) -> bytes:
        prod, cons = self.u32("in_prod"), self.u32("in_cons")
        out = bytearray()
        while cons != prod and len(out) < limit:
            out += self.memory.read(BASE + OFF["in_ring"] + (cons % IN_RING_SIZE), 1)
            cons = (cons + 1) & 0xFFFFFFFF
        self.set("in_cons", cons)
        return bytes(out)


@pytest.fixture
def setup():
    memory = MachineMemory(8)
    shown: list[bytes] = []
    kicks: list[int] = []
    ring = ConsoleRing(memory, MFN, on_output=shown.append, notify=lambda: kicks.append(1))
    return memory, ring, Guest(memory), shown, kicks


def test_output_is_consumed_and_the_guest_notified(setup):
    memory, ring, guest, shown, kicks = setup
    guest.put(b"Welcome to GRUB!\n")
    result = ring.pump()
    assert shown == [b"Welcome to GRUB!\n"] and result.output == b"Welcome to GRUB!\n"
    assert guest.u32("out_cons") == guest.u32("out_prod") == 17
    assert kicks == [1] and ring.total_output == 17


def test_nothing_to_do_means_no_notification(setup):
    _, ring, _, shown, kicks = setup
    result = ring.pump()
    assert not result.moved and shown == [] and kicks == []


def test_output_wrapping_the_ring_and_the_index(setup):
    _, ring, guest, shown, _ = setup
    start = 0xFFFFFFFF - 2                     # u32 indices wrap too
    guest.set("out_prod", start)
    guest.set("out_cons", start)
    payload = bytes(range(256)) * 10           # 2560 bytes: more than the ring holds
    sent = guest.put(payload)
    assert sent == OUT_RING_SIZE
    ring.pump()
    sent2 = guest.put(payload[sent:])
    ring.pump()
    assert b"".join(shown) == payload[:sent + sent2]
    assert guest.u32("out_cons") == (start + sent + sent2) & 0xFFFFFFFF


def test_corrupt_output_indices_are_ignored(setup):
    _, ring, guest, shown, kicks = setup
    guest.set("out_prod", OUT_RING_SIZE + 1)
    result = ring.pump()
    assert result.out_ring_corrupt and shown == [] and kicks == []
    assert guest.u32("out_cons") == 0 and ring.corrupt_reports == 1


def test_input_reaches_the_ring(setup):
    _, ring, guest, _, kicks = setup
    ring.feed(b"echo hello\n")
    result = ring.pump()
    assert result.input_delivered == 11 and kicks == [1]
    assert guest.u32("in_prod") == 11
    assert guest.getkeys() == b"echo hello\n"
    assert ring.pending_input == b""


def test_input_waits_for_room(setup):
    _, ring, guest, _, _ = setup
    data = bytes((i * 7) % 251 for i in range(1500))
    ring.feed(data)
    assert ring.pump().input_delivered == IN_RING_SIZE
    assert ring.pump().input_delivered == 0            # ring full, guest consumed nothing
    got = guest.getkeys(limit=100)
    assert ring.pump().input_delivered == 100
    got += guest.getkeys()
    ring.pump()
    got += guest.getkeys()
    assert got == data and ring.total_input == 1500


def test_corrupt_input_indices_keep_input_queued(setup):
    _, ring, guest, _, _ = setup
    guest.set("in_prod", IN_RING_SIZE + 5)
    ring.feed(b"x")
    result = ring.pump()
    assert result.in_ring_corrupt and ring.pending_input == b"x"


def test_bad_frame_is_refused():
    with pytest.raises(ValueError):
        ConsoleRing(MachineMemory(2), 5, on_output=print, notify=lambda: None)


def test_reset_page_and_indices(setup):
    memory, ring, guest, _, _ = setup
    guest.put(b"abc")
    ring.reset_page()
    assert ring.indices() == {"in_cons": 0, "in_prod": 0, "out_cons": 0, "out_prod": 0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=700), max_size=12), st.integers(0, 0xFFFFFFFF),
       st.binary(max_size=3000))
def test_streams_arrive_intact_in_any_chunking(chunks, start, keys):
    memory = MachineMemory(8)
    shown: list[bytes] = []
    ring = ConsoleRing(memory, MFN, on_output=shown.append, notify=lambda: None)
    guest = Guest(memory)
    for name in ("out_prod", "out_cons", "in_prod", "in_cons"):
        guest.set(name, start)
    ring.feed(keys)
    typed = bytearray()
    for chunk in chunks:
        while chunk:
            n = guest.put(chunk)
            chunk = chunk[n:]
            ring.pump()
            typed += guest.getkeys(limit=333)
    for _ in range(8):
        ring.pump()
        typed += guest.getkeys()
    assert b"".join(shown) == b"".join(chunks)
    assert bytes(typed) == keys
