"""The engine's breakpoints, watchpoints, catchpoints and stepping on the seed guest."""
from __future__ import annotations

import pytest

from pvdbg.debug import CatchSpecError
from pvdbg.session import Session, StopReason
from pvdbg.trace import TraceKind


@pytest.fixture
def seed():
    return Session.open(None)


def test_breakpoint_at_symbol_then_continue(seed):
    va = seed.symbol("start_kernel")
    seed.add_breakpoint(va)
    stop = seed.run()
    assert stop.reason is StopReason.breakpoint and stop.eip == va
    icount = stop.icount
    assert seed.run().reason is StopReason.shutdown       # resumes past the breakpoint
    assert seed.cpu.icount > icount


def test_breakpoint_hit_twice_in_loop(seed):
    va = seed.symbol("printk")
    seed.add_breakpoint(va)
    hits = 0
    while seed.run().reason is StopReason.breakpoint:
        hits += 1
    # one stop per console line, each printed by one printk
    assert hits == seed.console_text.count("\n") and hits > 7


def test_step_over_hypercall_completes_it(seed):
    stub = seed.symbol("xen_hypercall_console_io") or seed.symbol("hypercall_page") + 18 * 32
    seed.add_breakpoint(stub)
    seed.run()
    seed.remove_breakpoint(stub)
    n = len(seed.trace.records(TraceKind.hypercall, "console_io"))
    # mov $18,%eax ; int $0x82 -> two steps and the hypercall is done
    seed.step(1)
    stop = seed.step(1)
    assert stop.reason is StopReason.step and stop.eip == stub + 7
    assert len(seed.trace.records(TraceKind.hypercall, "console_io")) == n + 1


def test_write_watchpoint_stops_after_the_store(seed):
    var = seed.symbol("xen_start_info")
    seed.add_watchpoint("write", var, 4)
    stop = seed.run()
    assert stop.reason is StopReason.watchpoint and stop.address == var
    assert stop.watch_kind == "write"
    # the store happened exactly once and EIP is past the instruction
    assert int.from_bytes(seed.read_memory(var, 4), "little") == seed.hv.layout.start_info_va
    assert stop.eip != seed.symbol("startup_xen")
    assert seed.run().reason is StopReason.shutdown


def test_catch_hypercall_by_name(seed):
    cp = seed.add_catchpoint("hypercall xen_version")
    stop = seed.run()
    assert stop.reason is StopReason.catch and "xen_version" in stop.detail
    assert cp.hits == 1
    seed.remove_catchpoint(cp.number)
    assert seed.run().reason is StopReason.shutdown


def test_catch_shutdown_stops_before_the_end(seed):
    seed.add_catchpoint("shutdown")
    stop = seed.run()
    assert stop.reason is StopReason.catch and "poweroff" in stop.detail


@pytest.mark.parametrize("spec", ["", "hypercall nosuch", "trap x", "frob", "hypercall"])
def test_bad_catch_specs(seed, spec):
    with pytest.raises(CatchSpecError):
        seed.add_catchpoint(spec)


def test_breakpoint_added_after_its_code_ran(seed):
    """Unicorn bakes code hooks into translated blocks: a late breakpoint must still hit."""
    va = seed.symbol("printk")
    seed.add_breakpoint(va)
    assert seed.run().reason is StopReason.breakpoint       # printk's block is translated now
    seed.remove_breakpoint(va)
    inner = va + 1                                         # inside the translated block
    seed.add_breakpoint(inner)
    stop = seed.run()
    assert stop.reason is StopReason.breakpoint and stop.eip == inner


def test_watchpoint_added_after_the_code_ran(seed):
    va = seed.symbol("printk")
    seed.add_breakpoint(va)
    seed.run()
    seed.remove_breakpoint(va)
    # printk's caller-saved stack slots are written on every call: watch the first one
    esp = seed.cpu.read("esp")
    seed.add_watchpoint("write", esp - 4, 4)
    stop = seed.run()
    assert stop.reason is StopReason.watchpoint and stop.address == esp - 4
