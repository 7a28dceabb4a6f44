"""The stub's fast paths on a real Session (pvdbg/stub/engine.py, server.py): the packed
`g` reply, cached page translations, expedited registers, quick steps, breakpoint and
watchpoint removals deferred to the next resume, and the CPU's one-block retranslation
for a step after an uncounted run (pvdbg/machine/cpu.py)."""
from __future__ import annotations

import io

import pytest

from pvdbg.session import Session, SessionOptions, StopReason as EngineStop, bundled_guest_path
from pvdbg.stub.commands import ResumeRequest, Stub
from pvdbg.stub.engine import SessionTarget
from pvdbg.stub.rsp import frame
from pvdbg.stub.server import _ClientLoop
from pvdbg.stub.target import (CONTINUE, STEP, BreakpointKind, MemoryAccessError,
                               ResumeActions)
from pvdbg.xen.image import load_guest_image

BENCH = 1_000_000


@pytest.fixture(scope="module")
def seed_image():
    return load_guest_image(str(bundled_guest_path()))


def looping_session(seed_image, clock: str = "icount") -> tuple[Session, int]:
    """A session stopped inside the seed guest's bench loop; returns it and the body VA."""
    session = Session(seed_image, SessionOptions(memory_mib=4, cmdline=f"bench={BENCH}",
                                                 clock=clock))
    body = seed_image.symbols.address("bench_loop_body")
    session.add_breakpoint(body)
    assert session.run().reason is EngineStop.breakpoint
    session.remove_breakpoint(body)
    return session, body


def generic_g(stub: Stub, vcpu: int) -> bytes:
    return b"".join(stub.register_hex(vcpu, spec) for spec in stub.tdesc.registers)


def test_packed_g_matches_the_per_register_path(seed_image) -> None:
    session, _ = looping_session(seed_image)
    target = SessionTarget(session)
    stub = Stub(target)
    packed = stub.handle(b"g").payloads[0]
    assert packed == generic_g(stub, 0)
    assert len(packed) == stub.tdesc.registers.g_packet_hex_length
    assert stub.handle(b"g").payloads[0] is packed             # cached while stopped


def test_g_follows_register_writes_and_steps(seed_image) -> None:
    session, _ = looping_session(seed_image)
    stub = Stub(SessionTarget(session))
    before = stub.handle(b"g").payloads[0]
    assert stub.handle(b"P0=78563412").payloads == (b"OK",)
    after_write = stub.handle(b"g").payloads[0]
    assert after_write[:8] == b"78563412" and after_write[8:] == before[8:]
    stub.handle_synchronously(b"s")
    assert stub.handle(b"g").payloads[0] == generic_g(stub, 0)
    assert stub.handle(b"g").payloads[0][64:72] == session.cpu.read("eip").to_bytes(
        4, "little").hex().encode()


def test_memory_reads_follow_debugger_writes(seed_image) -> None:
    session, body = looping_session(seed_image)
    target = SessionTarget(session)
    original = session.read_memory_any(body, 4)
    assert target.read_memory(0, body, 4) == original
    target.write_memory(0, body, b"\x90\x90\x90\x90")
    assert target.read_memory(0, body, 4) == b"\x90\x90\x90\x90"
    target.write_memory(0, body, original)
    assert target.read_memory(0, body - 2, 0x2004) == session.read_memory_any(body - 2, 0x2004)


def test_memory_read_reports_the_first_unmapped_address(seed_image) -> None:
    session, _ = looping_session(seed_image)
    target = SessionTarget(session)
    with pytest.raises(MemoryAccessError) as caught:
        target.read_memory(0, 0x1000 - 4, 8)
    assert caught.value.guest_va == 0x1000 - 4
    reply = Stub(target).handle(b"m%x,8" % (0x1000 - 4)).payloads
    assert reply == (b"E0e",)


def test_stop_reply_carries_esp_ebp_eip(seed_image) -> None:
    session, body = looping_session(seed_image)
    stub = Stub(SessionTarget(session))
    reply = stub.handle_synchronously(b"vCont;s:1;c").payloads[-1]
    regs = session.cpu.read_many(("esp", "ebp", "eip"))
    assert reply == b"T05thread:1;04:%s;05:%s;08:%s;" % tuple(
        regs[name].to_bytes(4, "little").hex().encode() for name in ("esp", "ebp", "eip"))


def test_steps_are_quick_continues_are_not(seed_image) -> None:
    session, _ = looping_session(seed_image)
    target = SessionTarget(session)
    stub = Stub(target)
    step = stub.handle(b"vCont;s:1;c")
    assert isinstance(step, ResumeRequest) and step.short
    cont = stub.handle(b"vCont;c")
    assert isinstance(cont, ResumeRequest) and not cont.short
    assert not target.resume_is_quick(ResumeActions(default=CONTINUE))
    assert target.resume_is_quick(ResumeActions({0: STEP}))


def test_quick_step_is_answered_by_the_loop_thread(seed_image) -> None:
    session, _ = looping_session(seed_image)
    written: list[bytes] = []
    loop = _ClientLoop(SessionTarget(session), lambda: b"", written.append, lambda: None,
                       max_packet_size=0x20000, log=io.StringIO(), peer="test")
    loop._conn.receive_data(frame(b"QStartNoAckMode") + frame(b"s"))
    assert loop._drain() is False
    assert written[0] == b"+" + frame(b"OK")
    assert written[1].startswith(b"$T05thread:1;04:")      # no-ack mode: no "+"
    assert loop._worker is None                      # no thread for a step


def test_breakpoint_removed_and_reinserted_keeps_its_hook(seed_image) -> None:
    session, body = looping_session(seed_image)
    target = SessionTarget(session)
    target.insert_breakpoint(BreakpointKind.SW, body, 1)
    handle = session.debug.breakpoints[body]
    target.remove_breakpoint(BreakpointKind.SW, body, 1)
    target.resume(ResumeActions({0: STEP}))           # a step keeps it meanwhile
    target.insert_breakpoint(BreakpointKind.SW, body, 1)
    assert session.debug.breakpoints[body] == handle
    stop = target.resume(ResumeActions(default=CONTINUE))
    assert stop.reason.value == "breakpoint_sw" and session.cpu.read("eip") == body


def test_removed_breakpoint_is_gone_at_the_next_continue(seed_image) -> None:
    session, body = looping_session(seed_image)
    target = SessionTarget(session)
    end = seed_image.symbols.address("bench_loop_end")
    target.insert_breakpoint(BreakpointKind.SW, body, 1)
    target.insert_breakpoint(BreakpointKind.HW, end, 1)
    target.remove_breakpoint(BreakpointKind.SW, body, 1)
    stop = target.resume(ResumeActions(default=CONTINUE))
    assert body not in session.debug.breakpoints
    assert stop.reason.value == "breakpoint_hw" and session.cpu.read("eip") == end


def test_removed_watchpoint_is_gone_before_a_step(seed_image) -> None:
    session, _ = looping_session(seed_image)
    target = SessionTarget(session)
    esp = session.cpu.read("esp")
    target.insert_breakpoint(BreakpointKind.ACCESS, esp - 4, 4)
    key = ("access", esp - 4, 4)
    hooks = session.debug.watchpoints[key].hooks
    target.remove_breakpoint(BreakpointKind.ACCESS, esp - 4, 4)
    target.insert_breakpoint(BreakpointKind.ACCESS, esp - 4, 4)
    assert session.debug.watchpoints[key].hooks == hooks      # z then Z: untouched
    target.remove_breakpoint(BreakpointKind.ACCESS, esp - 4, 4)
    target.resume(ResumeActions({0: STEP}))
    assert key not in session.debug.watchpoints


LOOP_GUEST = """
.globl _start
_start:
    movl $counter, %ebx
loop:
    incl (%ebx)
after_store:
    addl $1, %eax
    addl $2, %eax
    jmp loop
.data
.balign 4096
counter: .long 0
"""


def loop_guest_session(tmp_path, clock: str) -> tuple[Session, dict[str, int]]:
    from guestbuild import build_asm_guest
    image = load_guest_image(str(build_asm_guest(tmp_path, LOOP_GUEST)))
    session = Session(image, SessionOptions(memory_mib=4, clock=clock))
    names = ("loop", "after_store", "counter")
    return session, {name: image.symbols.address(name) for name in names}


def counter_value(session: Session, va: int) -> int:
    return int.from_bytes(session.read_memory(va, 4), "little")


@pytest.mark.parametrize("clock", ["icount", "host"])
def test_step_after_a_continue_retires_one_instruction(tmp_path, clock: str) -> None:
    """Under the host clock a continue caches blocks without Unicorn's count hook; the
    step after it retranslates only its block (or flushes them all) and still stops
    after exactly one instruction, cycle after cycle."""
    session, sym = loop_guest_session(tmp_path, clock)
    loop, after_store = sym["loop"], sym["after_store"]
    expected = [after_store, after_store + 3, after_store + 6, loop, after_store]
    for cycle in range(4):
        session.add_breakpoint(loop)
        assert session.run().eip == loop
        session.remove_breakpoint(loop)
        before = counter_value(session, sym["counter"])
        assert [session.step(1).eip for _ in range(5)] == expected, cycle
        assert counter_value(session, sym["counter"]) == before + 2


@pytest.mark.parametrize("clock", ["icount", "host"])
def test_watchpoint_hit_counts_each_store_once(tmp_path, clock: str) -> None:
    session, sym = loop_guest_session(tmp_path, clock)
    session.add_watchpoint("write", sym["counter"], 4)
    for hit in range(1, 6):
        stop = session.run()
        assert stop.reason is EngineStop.watchpoint
        assert stop.eip == sym["after_store"]
        assert counter_value(session, sym["counter"]) == hit


class _RawGdb:
    """Just enough of gdb's side: no-ack mode, send, read whole packets."""

    def __init__(self, port: int) -> None:
        import socket
        from pvdbg.stub.rsp import RspConnection
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = RspConnection()
        assert self.ask(b"QStartNoAckMode") == b"OK"
        self.conn.start_no_ack_mode()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> bytes:
        from pvdbg.stub.rsp import NEED_DATA, Packet
        while True:
            event = self.conn.next_event()
            if isinstance(event, Packet):
                return event.payload
            if event is NEED_DATA:
                data = self.sock.recv(65536)
                assert data, "the stub closed the connection"
                self.conn.receive_data(data)

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.receive()


def endless_guest_server(seed_image):
    from pvdbg.stub.server import GdbServer
    session = Session(seed_image, SessionOptions(memory_mib=4, cmdline="bench=4000000000"))
    return session, GdbServer(SessionTarget(session), port=0, log=io.StringIO())


def test_continue_runs_in_the_loop_thread_and_interrupt_stops_it(seed_image) -> None:
    session, server = endless_guest_server(seed_image)
    with server:
        server.start()
        gdb = _RawGdb(server.port)
        try:
            for _ in range(3):
                gdb.send_raw(frame(b"c"))
                gdb.send_raw(b"\x03")       # before or during the run: both must stop it
                assert gdb.receive().startswith(b"T02thread:1;04:")
                assert gdb.ask(b"qC") == b"QC1"
            assert server._client._worker is None        # no thread handed a continue
        finally:
            gdb.sock.close()


def test_continue_with_interrupt_in_the_same_segment_stops(seed_image) -> None:
    session, server = endless_guest_server(seed_image)
    with server:
        server.start()
        gdb = _RawGdb(server.port)
        try:
            gdb.send_raw(frame(b"c") + b"\x03")
            assert gdb.receive().startswith(b"T02thread:1;04:")
        finally:
            gdb.sock.close()


def test_dropping_gdb_during_a_continue_stops_and_detaches(seed_image) -> None:
    session, server = endless_guest_server(seed_image)
    with server:
        server.start()
        gdb = _RawGdb(server.port)
        assert gdb.ask(b"Z0,%x,1" % 0xC0000000) == b"OK"
        gdb.send_raw(frame(b"c"))
        gdb.sock.close()
        second = _RawGdb(server.port)               # accepted once the first is gone
        try:
            assert second.ask(b"?").startswith(b"T02thread:1;")
            assert session.debug.breakpoints == {}
        finally:
            second.sock.close()


def test_server_shutdown_stops_a_continue_running_in_the_loop_thread(seed_image) -> None:
    import threading
    session, server = endless_guest_server(seed_image)
    started = threading.Event()
    run = session.run

    def run_and_tell(*args, **kwargs):
        started.set()
        return run(*args, **kwargs)

    session.run = run_and_tell                        # type: ignore[method-assign]
    server.start()
    gdb = _RawGdb(server.port)
    try:
        gdb.send_raw(frame(b"c"))
        assert started.wait(10)
        server.shutdown()                             # returns once the run stopped
        assert not session.cpu.in_run
        assert session.last_stop is not None and session.last_stop.reason is EngineStop.interrupt
        assert server._client._worker is None
    finally:
        gdb.sock.close()


def test_cached_translation_follows_a_pagetable_change_between_stops(tmp_path) -> None:
    """A page read at one stop, remapped by a pagetable write before the next: the read
    after the next stop sees the new frame."""
    session, sym = loop_guest_session(tmp_path, "icount")
    target = SessionTarget(session)
    counter = sym["counter"]
    first = target.read_memory(0, counter, 4)
    walk = session.hv.guest.translate(counter)
    l1 = walk.steps[-1]
    other = session.hv.guest.translate(sym["loop"]).maddr & ~0xFFF
    session.hv.memory.write_u64(l1.entry_maddr, (l1.entry & ~0x000FFFFFFFFFF000) | other)
    assert target.read_memory(0, counter, 4) == first      # same stop: cached
    session.step(1)
    assert target.read_memory(0, counter, 4) == session.hv.memory.read(
        other + (counter & 0xFFF), 4)
