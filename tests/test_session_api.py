"""The scripting API of Session: run_until, snapshot/restore, close, deterministic traces."""
from __future__ import annotations

import io
import re

import pytest

from guestbuild import build_asm_guest
from pvdbg.session import (AtAddress, ConsoleText, HypercallDone, InstructionCount, Session,
                           SessionError, SessionOptions, Shutdown, SnapshotError, StopReason,
                           UntilError)
from pvdbg.trace import TraceKind
from pvdbg.xen.image import load_guest_image

BENCH = SessionOptions(memory_mib=16, cmdline="bench=1000")


@pytest.fixture
def seed():
    s = Session.open(None, BENCH)
    yield s
    s.close()


# -- run_until -----------------------------------------------------------------------
def test_until_hypercall_stops_right_after_it_completes(seed):
    res = seed.run_until(hypercall="xen_version")
    assert res and res.reached == HypercallDone("xen_version")
    assert res.stop.reason is StopReason.catch
    assert res.record.kind is TraceKind.hypercall and res.record.name == "xen_version"
    assert seed.trace.records(TraceKind.hypercall)[-1] is res.record
    # completed: the result is in EAX and EIP is past the int $0x82
    assert seed.registers()["eax"] == res.record.result & 0xFFFFFFFF
    assert seed.cpu.read("eip") == res.record.eip + 2
    assert not seed.debug.catchpoints                      # the catchpoint is gone
    second = seed.run_until(hypercall="xen_version")
    assert second.record.args["cmd"] == "get_features" and second.record.seq > res.record.seq


def test_until_symbol_and_offset_and_address(seed):
    va = seed.symbol("start_kernel")
    res = seed.run_until(symbol="start_kernel")
    assert res.reached == AtAddress(va, "start_kernel")
    assert res.stop.reason is StopReason.breakpoint and res.stop.eip == va
    assert not seed.debug.breakpoints
    body = seed.symbol("bench_loop_body")
    res = seed.run_until(symbol="bench_loop_body+0x0")
    assert res.stop.eip == body
    res = seed.run_until(address=body)                     # the next iteration
    assert res.reached == AtAddress(body) and res.stop.eip == body


def test_until_instruction_count_is_exact(seed):
    res = seed.run_until(icount=5000)
    assert res.reached == InstructionCount(5000)
    assert seed.cpu.icount == 5000 == res.stop.icount
    with pytest.raises(UntilError, match="not ahead"):
        seed.run_until(icount=4000)


def test_until_console_substring_and_regex(seed):
    res = seed.run_until(console="command line")
    assert res.reached == ConsoleText("command line") and res.console_match == "command line"
    assert res.record.kind is TraceKind.console
    assert seed.console_text.rstrip().endswith('command line "bench=1000"')
    pattern = re.compile(r"bench_loop\((\d+)\) = (0x[0-9a-f]+)")
    res = seed.run_until(console=pattern)
    assert res.console_match == "bench_loop(1000) = 0x1548479a"
    assert "powering off" not in seed.console_text


def test_until_console_only_counts_new_output(seed):
    seed.run_until(console="booting")
    res = seed.run_until(console="booting")                 # already printed: never again
    assert not res and res.reached is None
    assert res.stop.reason is StopReason.shutdown


def test_until_shutdown_with_and_without_reason(seed):
    snap = seed.snapshot()
    res = seed.run_until(shutdown="reboot")
    assert res.reached is None and res.stop.reason is StopReason.shutdown
    seed.restore(snap)
    res = seed.run_until(shutdown=True)
    assert res.reached == Shutdown() and seed.shutdown_reason.name == "poweroff"
    seed.restore(snap)
    assert seed.run_until(Shutdown("poweroff")).reached == Shutdown("poweroff")


def test_until_first_condition_wins(seed):
    res = seed.run_until(HypercallDone("sched_op"), symbol="start_kernel")
    assert isinstance(res.reached, AtAddress)
    res = seed.run_until(hypercall="set_timer_op", console="seed: vm_assist")
    assert res.reached == ConsoleText("seed: vm_assist")
    res = seed.run_until(hypercall="set_timer_op", icount=10**9)
    assert res.reached == HypercallDone("set_timer_op") and res.record.result == 0


def test_until_other_stop_is_reported_not_swallowed(seed):
    user_bp = seed.symbol("printk")
    seed.add_breakpoint(user_bp)
    res = seed.run_until(symbol="xen_reboot")
    assert res.reached is None
    assert res.stop.reason is StopReason.breakpoint and res.stop.eip == user_bp
    assert user_bp in seed.debug.breakpoints                 # the user's breakpoint stays
    res = seed.run_until(hypercall="console_io", max_insns=10)
    assert res.reached is None and res.stop.reason is StopReason.limit


def test_until_keeps_a_users_breakpoint_at_the_target(seed):
    va = seed.symbol("printk")
    seed.add_breakpoint(va)
    assert seed.run_until(symbol="printk").reached is not None
    assert va in seed.debug.breakpoints


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs a condition"),
    ({"hypercall": "no_such_call"}, "unknown hypercall"),
    ({"symbol": "no_such_symbol"}, "no symbol named"),
    ({"symbol": "printk+zz"}, "bad symbol offset"),
    ({"console": ""}, "empty"),
    ({"console": 42}, "string or a compiled regex"),
])
def test_until_bad_conditions(seed, kwargs, message):
    with pytest.raises(UntilError, match=message):
        seed.run_until(**kwargs)
    assert not seed.debug.catchpoints and not seed.debug.breakpoints


def test_until_not_a_condition(seed):
    with pytest.raises(UntilError, match="not a run_until condition"):
        seed.run_until("console_io")


def test_until_icount_needs_the_icount_clock():
    s = Session.open(None, SessionOptions(memory_mib=16, clock="host"))
    s.run_until(symbol="start_kernel")
    with pytest.raises(UntilError, match="clock='icount'"):
        s.run_until(icount=10**6)


# -- a scenario guest -----------------------------------------------------------------
TICKER = """
_start:
    xor %edi, %edi
1:  mov $18, %eax            /* console_io */
    xor %ebx, %ebx           /* CONSOLEIO_write */
    mov $5, %ecx
    mov $msg, %edx
    int $0x82
    inc %edi
tick_done:
    cmp $5, %edi
    jne 1b
    mov $29, %eax            /* sched_op */
    mov $2, %ebx             /* SCHEDOP_shutdown */
    mov $reason, %ecx
    int $0x82
    ud2
msg: .ascii "tick\\n"
.balign 4
reason: .long 0              /* SHUTDOWN_poweroff */
"""


def test_scenario_guest_until_and_snapshot(tmp_path):
    s = Session(load_guest_image(str(build_asm_guest(tmp_path, TICKER))),
                SessionOptions(memory_mib=16))
    res = s.run_until(console=re.compile(r"(tick\n){2}"))
    assert res.console_match == "tick\ntick\n" and s.cpu.read("edi") == 1
    snap = s.snapshot()
    assert s.run_until(symbol="tick_done").stop.eip == s.symbol("tick_done")
    assert s.cpu.read("edi") == 2
    assert s.run_until(hypercall="sched_op").reached == HypercallDone("sched_op")
    assert s.console_text == "tick\n" * 5
    s.restore(snap)
    assert s.console_text == "tick\n" * 2 and s.cpu.read("edi") == 1
    assert s.shutdown_reason is None
    assert s.run().reason is StopReason.shutdown
    assert s.console_text == "tick\n" * 5
    assert len(s.trace.records(TraceKind.hypercall, "console_io")) == 5


# -- snapshot / restore -----------------------------------------------------------------
def _trace_lines(s: Session) -> list[str]:
    return [r.to_json() for r in s.trace]


def test_snapshot_mid_boot_restore_replays_identically(seed):
    seed.run_until(symbol="bench_loop_body")
    seed.run_until(icount=seed.cpu.icount + 777)            # mid-loop
    regs = seed.registers()
    snap = seed.snapshot()
    n_before = len(seed.trace)
    assert seed.run().reason is StopReason.shutdown
    console1, trace1 = seed.console_text, _trace_lines(seed)
    icount1 = seed.cpu.icount
    for _ in range(2):                                     # a snapshot restores many times
        seed.restore(snap)
        assert seed.registers() == regs and seed.cpu.icount == snap.icount
        assert len(seed.trace) == n_before and seed.shutdown_reason is None
        assert seed.run().reason is StopReason.shutdown
        assert seed.console_text == console1
        assert _trace_lines(seed) == trace1
        assert seed.cpu.icount == icount1
    assert "bench_loop(1000) = 0x1548479a" in console1


@pytest.mark.parametrize("fraction", [0.0001, 0.3, 0.7, 0.999])
def test_snapshot_anywhere_in_the_boot(fraction):
    whole = Session.open(None, BENCH)
    end = whole.run().icount
    s = Session.open(None, BENCH)
    s.run_until(icount=max(1, int(end * fraction)))
    snap = s.snapshot()
    s.run()
    first = (s.console_text, _trace_lines(s), s.cpu.icount)
    s.restore(snap)
    s.run()
    assert (s.console_text, _trace_lines(s), s.cpu.icount) == first
    assert _trace_lines(s) == _trace_lines(whole)


def test_restore_puts_memory_back(seed):
    seed.run_until(symbol="start_kernel")
    va = seed.symbol("boot_command_line")
    snap = seed.snapshot()
    before = seed.read_memory(va, 16)
    seed.write_memory(va, b"X" * 16)
    seed.restore(snap)
    assert seed.read_memory(va, 16) == before


class _Widget:
    """A stand-in for hypervisor state added by other modules (mm, events, timers)."""

    def __init__(self, hv) -> None:
        self.hv = hv                       # a back reference: must not be copied
        self.table = {1: [1, 2]}
        self.alias = self.table[1]         # aliasing inside the state
        self.count = 0


def test_snapshot_covers_any_hypervisor_attribute(seed):
    hv = seed.hv
    hv.widget = _Widget(hv)
    hv.counter_list = [0]
    widget, table, domain = hv.widget, hv.widget.table, hv.domain
    snap = seed.snapshot()
    widget.count = 5
    widget.alias.append(3)
    table[2] = []
    hv.counter_list.append(1)
    hv.widget = _Widget(hv)                 # replaced after the snapshot
    hv.added_later = "x"
    seed.run_until(hypercall="console_io")
    seed.restore(snap)
    assert hv.widget is widget and widget.table is table       # identities kept
    assert widget.count == 0 and table == {1: [1, 2]} and widget.alias is table[1]
    assert widget.hv is hv and hv.counter_list == [0]
    assert not hasattr(hv, "added_later")
    assert hv.domain is domain and hv.domain.console == bytearray()
    assert hv.cpu.tlb_listeners[0].__self__ is hv.guest           # wiring untouched


def test_snapshot_of_another_session_is_refused(seed):
    other = Session.open(None, BENCH)
    with pytest.raises(SnapshotError, match="another machine"):
        seed.restore(other.snapshot())


def test_snapshot_reports_uncopyable_state(seed):
    seed.hv.handle = open(__file__)          # noqa: SIM115  (a file cannot be copied)
    try:
        with pytest.raises(SnapshotError, match=r"Hypervisor\.handle"):
            seed.snapshot()
    finally:
        seed.hv.handle.close()


def test_snapshot_keeps_breakpoints_as_they_are_now(seed):
    snap = seed.snapshot()
    va = seed.symbol("start_kernel")
    seed.add_breakpoint(va)
    seed.restore(snap)
    assert seed.run().eip == va


# -- close, determinism ------------------------------------------------------------------
def test_close_ends_running_but_keeps_inspection(seed):
    seed.run_until(symbol="start_kernel")
    seed.add_breakpoint(seed.symbol("printk"))
    seed.close()
    seed.close()                                           # idempotent
    assert not seed.debug.breakpoints
    assert "booting" in seed.console_text and seed.registers()["eip"] == seed.symbol("start_kernel")
    for call in (seed.run, seed.step, seed.snapshot, lambda: seed.run_until(shutdown=True)):
        with pytest.raises(SessionError, match="closed"):
            call()


def test_same_guest_same_options_byte_identical_jsonl():
    outs = []
    for _ in range(2):
        spill = io.StringIO()
        s = Session.open(None, BENCH, trace_file=spill)
        assert s.run().reason is StopReason.shutdown
        s.close()
        outs.append(spill.getvalue().encode())
    assert outs[0] == outs[1] and outs[0].count(b"\n") > 10
