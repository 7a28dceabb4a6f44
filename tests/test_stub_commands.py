"""GDB stub packet handlers (pvdbg/stub/commands.py) against an in-memory FakeTarget.

FakeTarget is also used by tests/test_stub_server.py.
"""

from __future__ import annotations

import threading
from collections import deque

import pytest

from pvdbg.stub import commands
from pvdbg.stub.commands import (RSP, AfterReply, CommandTable, Replies, ResumeRequest, Stub,
                                 console_output)
from pvdbg.stub.rsp import decode_hex, encode_hex
from pvdbg.stub.target import (CONTINUE, STAY_STOPPED, STEP, BreakpointKind, GdbSignal,
                               MemoryAccessError, RegisterUnavailable, ResumeAction,
                               ResumeActions, ResumeKind, StopEvent, StopReason, Target,
                               TargetError, UnsupportedBreakpoint)
from pvdbg.stub.tdesc import (TargetDescriptionError, load_target_description,
                              parse_target_description)

MEMORY_BASE = 0xC0100000
MEMORY_SIZE = 0x1000
FAKE_STOP_TIMEOUT_S = 10.0


class FakeTarget:
    """A Target with bytearray memory and a toy CPU: every instruction is one byte long,
    a step advances eip by 1, continue runs to the next breakpoint above eip or blocks
    until request_stop(). Queue StopEvents in `scripted` to make resume return them."""

    def __init__(self, nr_vcpus: int = 2) -> None:
        self.memory = bytearray(bytes(range(256)) * (MEMORY_SIZE // 256))
        names = [spec.name for spec in load_target_description().registers]
        self.registers = {vcpu: dict.fromkeys(names, 0) for vcpu in range(nr_vcpus)}
        for vcpu, regs in self.registers.items():
            regs.update(eip=MEMORY_BASE + 0x10 * vcpu, esp=MEMORY_BASE + 0x800, eflags=0x202,
                        cs=0xE019, ss=0xE021, ds=0xE021, es=0xE021, cr0=0x8005003B,
                        cr3=0x1234000, cr4=0x20, upcall_mask=1, fctrl=0x37F, mxcsr=0x1F80)
        self.unavailable: set[str] = set()
        self.breakpoints: set[tuple[BreakpointKind, int, int]] = set()
        self.scripted: deque[StopEvent] = deque()
        self.resume_calls: list[ResumeActions] = []
        self.resume_started = threading.Event()
        self.detach_count = 0
        self.detached = threading.Event()
        self.killed = False
        self.monitor_commands: list[str] = []
        self._stop_requested = threading.Event()
        self._state = StopEvent(0, StopReason.INTERRUPT, signal=GdbSignal.TRAP)

    # -- Target protocol ------------------------------------------------------

    def vcpu_ids(self) -> list[int]:
        return sorted(self.registers)

    def describe_vcpu(self, vcpu: int) -> str:
        regs = self.registers[vcpu]
        return (f"vcpu{vcpu} ring1 upcall_mask={regs['upcall_mask']} "
                f"pending={regs['upcall_pending']}")

    def read_register(self, vcpu: int, name: str) -> int:
        if name in self.unavailable:
            raise RegisterUnavailable(name)
        return self.registers[vcpu][name]

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        if name in self.unavailable:
            raise RegisterUnavailable(name)
        self.registers[vcpu][name] = value

    def _offset(self, guest_va: int, length: int) -> int:
        offset = guest_va - MEMORY_BASE
        if offset < 0 or offset >= MEMORY_SIZE:
            raise MemoryAccessError(guest_va)
        if offset + length > MEMORY_SIZE:
            raise MemoryAccessError(MEMORY_BASE + MEMORY_SIZE)
        return offset

    def read_memory(self, vcpu: int, guest_va: int, length: int) -> bytes:
        offset = self._offset(guest_va, length)
        return bytes(self.memory[offset:offset + length])

    def write_memory(self, vcpu: int, guest_va: int, data: bytes) -> None:
        offset = self._offset(guest_va, len(data))
        self.memory[offset:offset + len(data)] = data

    def insert_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        if kind is BreakpointKind.READ:
            raise UnsupportedBreakpoint("fake target has no read watchpoints")
        if kind in (BreakpointKind.SW, BreakpointKind.HW):
            self._offset(guest_va, 1)
        elif length not in (1, 2, 4):
            raise UnsupportedBreakpoint(f"watch length {length}")
        self.breakpoints.add((kind, guest_va, length))

    def remove_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        self.breakpoints.discard((kind, guest_va, length))

    def _code_breakpoint(self, guest_va: int) -> StopReason | None:
        if (BreakpointKind.SW, guest_va, 1) in self.breakpoints:
            return StopReason.BREAKPOINT_SW
        if (BreakpointKind.HW, guest_va, 1) in self.breakpoints:
            return StopReason.BREAKPOINT_HW
        return None

    def resume(self, actions: ResumeActions) -> StopEvent:
        self.resume_calls.append(actions)
        self._state = self._run(actions)
        return self._state

    def _run(self, actions: ResumeActions) -> StopEvent:
        if self.scripted:
            return self.scripted.popleft()
        running = [vcpu for vcpu in self.vcpu_ids()
                   if actions.action_for(vcpu).kind is not ResumeKind.STOP]
        for vcpu in running:
            action = actions.action_for(vcpu)
            regs = self.registers[vcpu]
            if action.kind is ResumeKind.STEP:
                regs["eip"] += 1
                return StopEvent(vcpu, StopReason.STEP)
            if action.kind is ResumeKind.RANGE_STEP:
                regs["eip"] += 1
                while action.range_start <= regs["eip"] < action.range_end:
                    reason = self._code_breakpoint(regs["eip"])
                    if reason is not None:
                        return StopEvent(vcpu, reason)
                    regs["eip"] += 1
                return StopEvent(vcpu, StopReason.STEP)
        vcpu = running[0]
        regs = self.registers[vcpu]
        for guest_va in range(regs["eip"] + 1, MEMORY_BASE + MEMORY_SIZE):
            reason = self._code_breakpoint(guest_va)
            if reason is not None:
                regs["eip"] = guest_va
                return StopEvent(vcpu, reason)
        self.resume_started.set()
        if not self._stop_requested.wait(FAKE_STOP_TIMEOUT_S):
            raise TargetError("fake target: nothing stopped the guest")
        self._stop_requested.clear()
        self.resume_started.clear()
        return StopEvent(vcpu, StopReason.INTERRUPT)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def stop_state(self) -> StopEvent:
        return self._state

    def monitor(self, command: str) -> str:
        self.monitor_commands.append(command)
        if command == "help":
            return "fake monitor commands:\n  help\n  echo TEXT\n  fail\n"
        if command.startswith("echo "):
            return command[5:]
        if command == "fail":
            raise TargetError("fake failure")
        if command == "quiet":
            return ""
        return f"unknown command {command!r}\n"

    def kill(self) -> None:
        self.killed = True

    def detach(self) -> None:
        self.detach_count += 1
        self.breakpoints.clear()
        self.detached.set()


# -- helpers --------------------------------------------------------------------

@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def stub(target: FakeTarget) -> Stub:
    stub = Stub(target)
    stub.handle(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
    return stub


def reply(stub: Stub, packet: bytes) -> bytes:
    """The single reply payload to `packet` (resumes run synchronously)."""
    replies = stub.handle_synchronously(packet)
    assert len(replies.payloads) == 1, replies
    return replies.payloads[0]


def le32(value: int) -> bytes:
    return encode_hex(value.to_bytes(4, "little"))


def stop_reply(signal: int, thread: int, eip: int, reason: bytes = b"") -> bytes:
    """The exact `T` reply for a FakeTarget stop: signal, thread, then the expedited
    esp (04, FakeTarget's MEMORY_BASE + 0x800), ebp (05, zero) and eip (08), then the
    stop reason."""
    return (b"T%02xthread:%x;04:000810c0;05:00000000;08:%s;" % (signal, thread, le32(eip))
            + reason)


def console_text(payloads: tuple[bytes, ...]) -> str:
    return "".join(decode_hex(p[1:]).decode() for p in payloads
                   if p.startswith(b"O") and p != b"OK")


# -- the fake itself ---------------------------------------------------------------

def test_fake_target_satisfies_protocol(target: FakeTarget) -> None:
    assert isinstance(target, Target)


# -- registry ----------------------------------------------------------------------

def test_longest_prefix_wins_regardless_of_order() -> None:
    seen = []
    for order in ([b"v", b"vCont;", b"vCont"], [b"vCont", b"vCont;", b"v"]):
        table = CommandTable()
        for name in order:
            table.prefix(name)(lambda stub, args, name=name: name)
        spec, args = table.lookup(b"vCont;c")
        seen.append((spec.name, args))
    assert seen == [(b"vCont;", b"c"), (b"vCont;", b"c")]


def test_exact_entries_only_match_whole_packets() -> None:
    table = CommandTable()
    table.exact(b"qC")(lambda stub, args: b"QC")
    table.prefix(b"q")(lambda stub, args: b"q")
    assert table.lookup(b"qC")[0].name == b"qC"
    assert table.lookup(b"qCRC:0,4")[0].name == b"q"
    assert table.lookup(b"m0,4") is None


def test_duplicate_registration_rejected() -> None:
    table = CommandTable()
    table.prefix(b"m")(lambda stub, args: b"")
    with pytest.raises(ValueError):
        table.exact(b"m")(lambda stub, args: b"")


def test_every_builtin_handler_is_reachable() -> None:
    for spec in RSP:
        found = RSP.lookup(spec.name + (b"" if spec.exact else b"1"))
        assert found is not None and found[0] is spec


# -- connection setup -----------------------------------------------------------------

def test_qsupported_advertises_exactly_registered_features(stub: Stub) -> None:
    features = reply(stub, b"qSupported:swbreak+;xmlRegisters=i386").split(b";")
    assert features[0] == b"PacketSize=20000"
    assert set(features[1:]) == {b"qXfer:features:read+", b"qXfer:threads:read+", b"swbreak+",
                                 b"hwbreak+", b"QStartNoAckMode+", b"vContSupported+",
                                 b"QNonStop+"}
    assert stub.peer_features == {b"swbreak+", b"xmlRegisters=i386"}


def test_start_no_ack_mode(stub: Stub) -> None:
    assert stub.handle(b"QStartNoAckMode") == Replies((b"OK",), AfterReply.START_NO_ACK)


@pytest.mark.parametrize("packet", [b"vMustReplyEmpty", b"qTStatus", b"qOffsets", b"vFile:open:",
                                    b"qSymbol::", b"!", b"qCRC:0,4", b"vKill;1", b"vCont"])
def test_unknown_packets_get_empty_reply(stub: Stub, packet: bytes) -> None:
    assert reply(stub, packet) == b""


def test_qattached(stub: Stub) -> None:
    assert reply(stub, b"qAttached") == b"1"
    assert reply(stub, b"qAttached:1") == b"1"


def test_stop_reason_question_mark_has_no_console_text(stub: Stub, target: FakeTarget) -> None:
    target._state = StopEvent(1, StopReason.CATCH, message="caught hypercall mmu_update")
    assert stub.handle(b"?") == Replies((b"T05thread:2;04:000810c0;05:00000000;08:100010c0;",))


# -- target description ----------------------------------------------------------------

def test_qxfer_features_chunks_reassemble(stub: Stub) -> None:
    whole = load_target_description().annexes["target.xml"]
    chunks, offset = [], 0
    while True:
        answer = reply(stub, b"qXfer:features:read:target.xml:%x,40" % offset)
        chunks.append(answer[1:])
        offset += len(answer) - 1
        if answer[:1] == b"l":
            break
        assert answer[:1] == b"m"
    assert b"".join(chunks) == whole
    assert reply(stub, b"qXfer:features:read:target.xml:%x,40" % (len(whole) + 5)) == b"l"


def test_qxfer_features_includes_are_served(stub: Stub) -> None:
    answer = reply(stub, b"qXfer:features:read:pvdbg-xen.xml:0,10000")
    assert answer.startswith(b"l<?xml") and b"org.pvdbg.xen" in answer


@pytest.mark.parametrize("packet", [b"qXfer:features:read:nope.xml:0,100",
                                    b"qXfer:features:read:target.xml:zz,100",
                                    b"qXfer:features:read:target.xml"])
def test_qxfer_features_bad_requests(stub: Stub, packet: bytes) -> None:
    assert reply(stub, packet) == b"E16"


def test_register_table_order_matches_gdb_i386_features() -> None:
    registers = load_target_description().registers
    expected = (["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
                 "cs", "ss", "ds", "es", "fs", "gs"]
                + [f"st{i}" for i in range(8)]
                + ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
                + [f"xmm{i}" for i in range(8)] + ["mxcsr"]
                + ["cr0", "cr2", "cr3", "cr4", "upcall_mask", "upcall_pending"])
    assert [reg.name for reg in registers] == expected
    assert [reg.regnum for reg in registers] == list(range(len(expected)))
    assert {reg.feature for reg in registers} == {
        "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.pvdbg.xen"}
    by_name = registers.by_name
    assert (by_name["st3"].bitsize, by_name["xmm7"].bitsize, by_name["upcall_mask"].bitsize) \
        == (80, 128, 8)


def _feature(regs: str) -> bytes:
    return f'<feature name="f">{regs}</feature>'.encode()


_TARGET = (b'<target xmlns:xi="http://www.w3.org/2001/XInclude">'
           b'<xi:include href="a.xml"/></target>')


@pytest.mark.parametrize("annexes", [
    {"target.xml": _TARGET},
    {"target.xml": b"<target>"},
    {"other.xml": _TARGET},
    {"target.xml": _TARGET, "a.xml": _feature('<reg name="r" bitsize="32" regnum="1"/>')},
    {"target.xml": _TARGET, "a.xml": _feature('<reg name="r" bitsize="12"/>')},
    {"target.xml": _TARGET, "a.xml": _feature('<reg name="r" bitsize="wide"/>')},
    {"target.xml": _TARGET,
     "a.xml": _feature('<reg name="r" bitsize="8"/><reg name="r" bitsize="8"/>')},
])
def test_inconsistent_descriptions_are_rejected(annexes: dict[str, bytes]) -> None:
    with pytest.raises(TargetDescriptionError):
        parse_target_description(annexes)


def test_inline_features_are_numbered_in_order() -> None:
    description = parse_target_description({"target.xml": b"<target>" + _feature(
        '<reg name="a" bitsize="16"/><reg name="b" bitsize="64"/>') + b"</target>"})
    assert [(reg.name, reg.regnum, reg.nbytes) for reg in description.registers] == [
        ("a", 0, 2), ("b", 1, 8)]
    assert description.read("target.xml", 2, 4) == (b"arge", False)


# -- registers --------------------------------------------------------------------------

def test_g_packet_layout(stub: Stub, target: FakeTarget) -> None:
    target.registers[0]["st0"] = 0x4000_C90FDAA2_2168C000    # pi as 80-bit extended
    target.registers[0]["xmm1"] = 0x00112233_44556677_8899AABB_CCDDEEFF
    answer = reply(stub, b"g")
    registers = load_target_description().registers
    assert len(answer) == registers.g_packet_hex_length == 652
    assert answer[:8] == b"00000000"
    assert answer[8 * 8:9 * 8] == le32(MEMORY_BASE)                    # eip, regnum 8
    st0 = 16 * 8
    assert answer[st0:st0 + 20] == b"00c06821a2da0fc90040"
    xmm1 = 16 * 8 + 8 * 20 + 8 * 8 + 32
    assert answer[xmm1:xmm1 + 32] == b"ffeeddccbbaa99887766554433221100"
    assert answer[-4:] == b"0100"                                      # upcall_mask, pending


def test_g_reports_unavailable_registers_as_xx(stub: Stub, target: FakeTarget) -> None:
    target.unavailable.add("fop")
    answer = reply(stub, b"g")
    fop = 16 * 8 + 8 * 20 + 7 * 8
    assert answer[fop:fop + 8] == b"xxxxxxxx"
    assert reply(stub, b"p1f") == b"xxxxxxxx"


def test_G_round_trip(stub: Stub, target: FakeTarget) -> None:
    original = reply(stub, b"g")
    changed = le32(0xDEADBEEF) + original[8:]
    assert reply(stub, b"G" + changed) == b"OK"
    assert target.registers[0]["eax"] == 0xDEADBEEF
    assert reply(stub, b"g") == changed


def test_G_skips_xx_and_accepts_leading_registers(stub: Stub, target: FakeTarget) -> None:
    assert reply(stub, b"G" + b"xxxxxxxx" + le32(7)) == b"OK"
    assert target.registers[0]["eax"] == 0 and target.registers[0]["ecx"] == 7


@pytest.mark.parametrize("packet", [b"G123", b"G" + b"00" * 400, b"Gzz000000"])
def test_G_malformed(stub: Stub, packet: bytes) -> None:
    assert reply(stub, packet) == b"E16"


def test_p_and_P(stub: Stub, target: FakeTarget) -> None:
    assert reply(stub, b"p8") == le32(MEMORY_BASE)
    assert reply(stub, b"P2d=00") == b"OK"                            # upcall_mask
    assert target.registers[0]["upcall_mask"] == 0
    assert reply(stub, b"P20=" + b"11" * 16) == b"OK"                  # xmm0
    assert target.registers[0]["xmm0"] == int("11" * 16, 16)
    assert reply(stub, b"p29") == le32(0x8005003B)                     # cr0


@pytest.mark.parametrize("packet", [b"p2f", b"p", b"pxyz", b"P0", b"P0=12", b"P99=00000000"])
def test_p_P_malformed(stub: Stub, packet: bytes) -> None:
    assert reply(stub, packet) == b"E16"


def test_registers_follow_hg(stub: Stub, target: FakeTarget) -> None:
    assert reply(stub, b"Hg2") == b"OK"
    assert reply(stub, b"p8") == le32(MEMORY_BASE + 0x10)
    assert reply(stub, b"Hg0") == b"OK"                                # any: keep vcpu 1
    assert reply(stub, b"p8") == le32(MEMORY_BASE + 0x10)
    assert reply(stub, b"Hg3") == b"E03"
    assert reply(stub, b"Hx1") == b"E16"


# -- memory ------------------------------------------------------------------------------

def test_m_reads(stub: Stub) -> None:
    assert reply(stub, b"m%x,4" % (MEMORY_BASE + 0x10)) == b"10111213"


def test_m_short_read_at_end_of_mapping(stub: Stub) -> None:
    end = MEMORY_BASE + MEMORY_SIZE
    assert reply(stub, b"m%x,8" % (end - 2)) == b"feff"
    assert reply(stub, b"m%x,4" % end) == b"E0e"


def test_m_caps_huge_lengths(stub: Stub) -> None:
    assert len(reply(stub, b"m%x,ffffffff" % MEMORY_BASE)) == 2 * MEMORY_SIZE


def test_M_and_X_write(stub: Stub, target: FakeTarget) -> None:
    assert reply(stub, b"M%x,2:abcd" % MEMORY_BASE) == b"OK"
    assert reply(stub, b"X%x,3:#$}" % (MEMORY_BASE + 2)) == b"OK"
    assert target.memory[:5] == b"\xab\xcd#$}"
    assert reply(stub, b"X%x,0:" % MEMORY_BASE) == b"OK"


@pytest.mark.parametrize("packet", [b"M0,2:abcd", b"X0,1:a"])
def test_writes_to_unmapped_memory(stub: Stub, packet: bytes) -> None:
    assert reply(stub, packet) == b"E0e"


@pytest.mark.parametrize("packet", [b"m", b"m12", b"m,4", b"mzz,4", b"M%x,3:abcd" % MEMORY_BASE,
                                    b"M%x,2:abc" % MEMORY_BASE, b"M%x,2" % MEMORY_BASE,
                                    b"X%x,4:ab" % MEMORY_BASE])
def test_memory_malformed(stub: Stub, packet: bytes) -> None:
    assert reply(stub, packet) == b"E16"


# -- breakpoints -----------------------------------------------------------------------------

def test_breakpoints_insert_and_remove(stub: Stub, target: FakeTarget) -> None:
    address = MEMORY_BASE + 0x40
    assert reply(stub, b"Z0,%x,1" % address) == b"OK"
    assert reply(stub, b"Z1,%x,1" % (address + 1)) == b"OK"
    assert reply(stub, b"Z2,%x,4" % address) == b"OK"
    assert reply(stub, b"Z4,%x,2;X1,ff" % address) == b"OK"
    assert target.breakpoints == {(BreakpointKind.SW, address, 1),
                                  (BreakpointKind.HW, address + 1, 1),
                                  (BreakpointKind.WRITE, address, 4),
                                  (BreakpointKind.ACCESS, address, 2)}
    for packet in (b"z0,%x,1" % address, b"z1,%x,1" % (address + 1), b"z2,%x,4" % address,
                   b"z4,%x,2" % address):
        assert reply(stub, packet) == b"OK"
    assert target.breakpoints == set()


def test_breakpoint_failures(stub: Stub) -> None:
    assert reply(stub, b"Z3,%x,4" % MEMORY_BASE) == b"E5f"              # unsupported
    assert reply(stub, b"Z2,%x,8" % MEMORY_BASE) == b"E5f"
    assert reply(stub, b"Z0,10,1") == b"E0e"                            # unmapped
    assert reply(stub, b"Z5,10,1") == b""                               # unknown type
    assert reply(stub, b"Z0,10") == b"E16"
    assert reply(stub, b"z0,zz,1") == b"E16"


# -- execution -------------------------------------------------------------------------------

def test_vcont_query(stub: Stub) -> None:
    assert reply(stub, b"vCont?") == b"vCont;c;C;s;S;t;r"


@pytest.mark.parametrize("packet, expected", [
    (b"vCont;c", ResumeActions(default=CONTINUE)),
    (b"vCont;C0b", ResumeActions(default=CONTINUE)),
    (b"vCont;s:1;c", ResumeActions({0: STEP}, CONTINUE)),
    (b"vCont;S05:2", ResumeActions({1: STEP})),
    (b"vCont;s:2;s:2;c:1", ResumeActions({1: STEP, 0: CONTINUE})),
    (b"vCont;c;s:1", ResumeActions(default=CONTINUE)),
    (b"vCont;c:-1", ResumeActions(default=CONTINUE)),
    (b"vCont;t:1;c", ResumeActions({0: STAY_STOPPED}, CONTINUE)),
    (b"vCont;rc0100000,c0100010:1",
     ResumeActions({0: ResumeAction(ResumeKind.RANGE_STEP, 0xC0100000, 0xC0100010)})),
    (b"vCont;s:p1.2", ResumeActions({1: STEP})),
])
def test_vcont_parsing(stub: Stub, packet: bytes, expected: ResumeActions) -> None:
    outcome = stub.handle(packet)
    assert outcome == ResumeRequest(expected)


@pytest.mark.parametrize("packet, expected", [
    (b"vCont;x", b"E16"), (b"vCont;s:9", b"E03"), (b"vCont;Czz", b"E16"), (b"vCont;", b"E16"),
    (b"vCont;r1:1", b"E16"), (b"vCont;c1", b"E16"), (b"vCont;t", b"OK"),
])
def test_vcont_rejects_or_has_nothing_to_run(stub: Stub, packet: bytes, expected: bytes) -> None:
    assert stub.handle(packet) == Replies((expected,))


def test_legacy_continue_and_step(stub: Stub, target: FakeTarget) -> None:
    assert stub.handle(b"c") == ResumeRequest(ResumeActions(default=CONTINUE))
    assert stub.handle(b"C05") == ResumeRequest(ResumeActions(default=CONTINUE))
    assert stub.handle(b"s") == ResumeRequest(ResumeActions({0: STEP}))
    assert reply(stub, b"Hc2") == b"OK"
    assert stub.handle(b"S05;%x" % (MEMORY_BASE + 0x30)) == ResumeRequest(ResumeActions({1: STEP}))
    assert target.registers[1]["eip"] == MEMORY_BASE + 0x30
    assert stub.handle(b"c%x" % MEMORY_BASE) == ResumeRequest(ResumeActions(default=CONTINUE))
    assert target.registers[1]["eip"] == MEMORY_BASE
    assert reply(stub, b"cxyz") == b"E16"


def test_step_and_breakpoint_stop_replies(stub: Stub, target: FakeTarget) -> None:
    assert reply(stub, b"vCont;s:1") == b"T05thread:1;04:000810c0;05:00000000;08:010010c0;"
    assert target.registers[0]["eip"] == MEMORY_BASE + 1
    reply(stub, b"Z0,%x,1" % (MEMORY_BASE + 0x20))
    assert reply(stub, b"vCont;c") == stop_reply(5, 1, MEMORY_BASE + 0x20, b"swbreak:;")
    assert target.registers[0]["eip"] == MEMORY_BASE + 0x20
    reply(stub, b"Z1,%x,1" % (MEMORY_BASE + 0x24))
    assert reply(stub, b"vCont;r%x,%x:1" % (MEMORY_BASE + 0x20, MEMORY_BASE + 0x30)) \
        == stop_reply(5, 1, MEMORY_BASE + 0x24, b"hwbreak:;")
    assert target.registers[0]["eip"] == MEMORY_BASE + 0x24


def test_swbreak_only_reported_when_gdb_supports_it(target: FakeTarget) -> None:
    stub = Stub(target)
    reply(stub, b"qSupported:multiprocess+")
    reply(stub, b"Z0,%x,1" % (MEMORY_BASE + 0x20))
    assert reply(stub, b"c") == stop_reply(5, 1, MEMORY_BASE + 0x20)


def test_stop_selects_the_stopped_thread(stub: Stub, target: FakeTarget) -> None:
    target.scripted.append(StopEvent(1, StopReason.BREAKPOINT_HW))
    reply(stub, b"Hc1")
    assert reply(stub, b"vCont;c") == stop_reply(5, 2, MEMORY_BASE + 0x10, b"hwbreak:;")
    assert reply(stub, b"qC") == b"QC2"
    assert stub.continue_vcpu is None


@pytest.mark.parametrize("event, expected", [
    (StopEvent(0, StopReason.WATCH, address=0xC0101000),
     b"T05thread:1;04:000810c0;05:00000000;08:000010c0;watch:c0101000;"),
    (StopEvent(1, StopReason.RWATCH, address=0x10),
     b"T05thread:2;04:000810c0;05:00000000;08:100010c0;rwatch:10;"),
    (StopEvent(0, StopReason.AWATCH, address=0),
     b"T05thread:1;04:000810c0;05:00000000;08:000010c0;awatch:0;"),
    (StopEvent(0, StopReason.INTERRUPT), b"T02thread:1;04:000810c0;05:00000000;08:000010c0;"),
    (StopEvent(0, StopReason.STEP, signal=GdbSignal.SEGV),
     b"T0bthread:1;04:000810c0;05:00000000;08:000010c0;"),
    (StopEvent(0, StopReason.SHUTDOWN, exit_code=3), b"W03"),
])
def test_stop_reply_formats(stub: Stub, target: FakeTarget, event: StopEvent,
                            expected: bytes) -> None:
    target.scripted.append(event)
    assert reply(stub, b"vCont;c") == expected


@pytest.mark.parametrize("reason", [StopReason.CATCH, StopReason.CRASH])
def test_catch_and_crash_print_their_message_first(stub: Stub, target: FakeTarget,
                                                   reason: StopReason) -> None:
    message = "caught hypercall mmu_update (multicall entry 2 of 3)"
    target.scripted.append(StopEvent(0, reason, message=message))
    replies = stub.handle_synchronously(b"vCont;c")
    assert replies.payloads[-1] == stop_reply(5, 1, MEMORY_BASE)
    assert all(p.startswith(b"O") for p in replies.payloads[:-1])
    assert console_text(replies.payloads) == message + "\n"


def test_shutdown_message_precedes_exit(stub: Stub, target: FakeTarget) -> None:
    target.scripted.append(StopEvent(0, StopReason.SHUTDOWN, message="domain poweroff",
                                     exit_code=0))
    replies = stub.handle_synchronously(b"c")
    assert replies.payloads[-1] == b"W00"
    assert console_text(replies.payloads) == "domain poweroff\n"


def test_resume_failure_still_sends_a_stop_reply(stub: Stub, target: FakeTarget) -> None:
    def broken(actions: ResumeActions) -> StopEvent:
        raise TargetError("emulator fault")
    target.resume = broken  # type: ignore[method-assign]
    replies = stub.handle_synchronously(b"vCont;c")
    assert "emulator fault" in console_text(replies.payloads)
    assert replies.payloads[-1] == stop_reply(5, 1, MEMORY_BASE)


def test_stop_event_validation() -> None:
    with pytest.raises(ValueError):
        StopEvent(0, StopReason.WATCH)
    with pytest.raises(ValueError):
        StopEvent(-1, StopReason.STEP)
    with pytest.raises(ValueError):
        StopEvent(0, StopReason.SHUTDOWN, exit_code=256)


def test_detach_and_kill(stub: Stub, target: FakeTarget) -> None:
    assert stub.handle(b"D") == Replies((b"OK",), AfterReply.CLOSE)
    assert stub.handle(b"D;1") == Replies((b"OK",), AfterReply.CLOSE)
    assert target.detach_count == 2
    assert stub.handle(b"k") == Replies((), AfterReply.CLOSE)
    assert target.killed


# -- threads ---------------------------------------------------------------------------------

def test_thread_list_and_current(stub: Stub) -> None:
    assert reply(stub, b"qfThreadInfo") == b"m1,2"
    assert reply(stub, b"qsThreadInfo") == b"l"
    assert reply(stub, b"qC") == b"QC1"


def test_thread_alive(stub: Stub) -> None:
    assert reply(stub, b"T1") == b"OK"
    assert reply(stub, b"T2") == b"OK"
    assert reply(stub, b"T3") == b"E03"
    assert reply(stub, b"T-1") == b"E03"
    assert reply(stub, b"Tq") == b"E16"


def test_thread_extra_info(stub: Stub) -> None:
    assert decode_hex(reply(stub, b"qThreadExtraInfo,2")) == \
        b"vcpu1 ring1 upcall_mask=1 pending=0"
    assert reply(stub, b"qThreadExtraInfo,5") == b"E03"


def test_qxfer_threads(stub: Stub, target: FakeTarget) -> None:
    first = reply(stub, b"qXfer:threads:read::0,20")
    assert first.startswith(b"m<?xml")
    target.registers[0]["upcall_mask"] = 0          # later chunks come from the snapshot
    rest = reply(stub, b"qXfer:threads:read::20,1000")
    assert rest.startswith(b"l")
    document = first[1:] + rest[1:]
    assert b'<thread id="1" name="vcpu0">vcpu0 ring1 upcall_mask=1 pending=0</thread>' in document
    assert b'<thread id="2" name="vcpu1">' in document
    assert reply(stub, b"qXfer:threads:read:x:0,20") == b"E16"


def test_qxfer_threads_escapes_xml(stub: Stub, target: FakeTarget) -> None:
    target.describe_vcpu = lambda vcpu: "a<b & c>"  # type: ignore[method-assign]
    assert b"a&lt;b &amp; c&gt;" in reply(stub, b"qXfer:threads:read::0,1000")


# -- monitor ---------------------------------------------------------------------------------

def rcmd(stub: Stub, command: str) -> Replies:
    return stub.handle_synchronously(b"qRcmd," + encode_hex(command.encode()))


def test_monitor_output(stub: Stub, target: FakeTarget) -> None:
    replies = rcmd(stub, "help")
    assert replies.payloads[-1] == b"OK"
    assert console_text(replies.payloads) == target.monitor("help")
    assert target.monitor_commands[0] == "help"


def test_monitor_adds_newline_and_handles_empty_output(stub: Stub) -> None:
    assert console_text(rcmd(stub, "echo hi").payloads) == "hi\n"
    assert rcmd(stub, "quiet").payloads == (b"OK",)


def test_monitor_error_is_shown_as_text(stub: Stub) -> None:
    replies = rcmd(stub, "fail")
    assert console_text(replies.payloads) == "error: fake failure\n"
    assert replies.payloads[-1] == b"OK"


def test_monitor_long_output_is_chunked(stub: Stub) -> None:
    text = "x" * (3 * commands.CONSOLE_CHUNK_BYTES + 5)
    replies = rcmd(stub, "echo " + text)
    assert len(replies.payloads) == 5
    assert console_text(replies.payloads) == text + "\n"


def test_monitor_bad_hex(stub: Stub) -> None:
    assert reply(stub, b"qRcmd,6") == b"E16"


def test_console_output_is_hex_o_packets() -> None:
    assert console_output("hi\n") == (b"O68690a",)
    assert console_output("") == ()


# -- robustness ------------------------------------------------------------------------------

def test_target_bug_becomes_error_reply(stub: Stub, target: FakeTarget) -> None:
    def broken(vcpu: int) -> str:
        raise KeyError(vcpu)
    target.describe_vcpu = broken  # type: ignore[method-assign]
    assert reply(stub, b"qThreadExtraInfo,1") == b"E01"


def test_stop_reply_leaves_out_unavailable_expedited_registers(stub: Stub,
                                                                target: FakeTarget) -> None:
    target.unavailable.add("ebp")
    assert reply(stub, b"vCont;s:1") == b"T05thread:1;04:000810c0;08:010010c0;"


def test_resume_is_short_only_when_the_target_says_so(target: FakeTarget) -> None:
    stub = Stub(target)
    assert stub.handle(b"s") == ResumeRequest(ResumeActions({0: STEP}), short=False)
    asked: list[ResumeActions] = []
    target.resume_is_quick = lambda actions: asked.append(actions) or True  # type: ignore[attr-defined]
    stub = Stub(target)
    assert stub.handle(b"vCont;s:1;c") == ResumeRequest(
        ResumeActions({0: STEP}, CONTINUE), short=True)
    assert asked == [ResumeActions({0: STEP}, CONTINUE)]


def test_threads_xml_is_rebuilt_only_when_a_description_changes(stub: Stub,
                                                                  target: FakeTarget) -> None:
    first = reply(stub, b"qXfer:threads:read::0,1000")
    document = stub.threads_xml
    assert reply(stub, b"qXfer:threads:read::0,1000") == first
    assert stub.threads_xml is document
    target.registers[1]["upcall_pending"] = 1
    changed = reply(stub, b"qXfer:threads:read::0,1000")
    assert b"vcpu1 ring1 upcall_mask=1 pending=1" in changed
    assert changed.replace(b"pending=1", b"pending=0") == first
