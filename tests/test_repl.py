"""The REPL driven through prompt-toolkit's pipe input and a dummy output, on the seed guest
(the bundled one), plus the engine ownership shared with the GDB stub (Controller,
SharedSessionTarget) without a socket.  Every wait has a timeout."""
from __future__ import annotations

import io
import threading
from contextlib import ExitStack

import pytest
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from pvdbg.monitor import MonitorError, run_monitor
from pvdbg.session import Session, SessionOptions
from pvdbg.stub.target import (CONTINUE, BreakpointKind, ResumeActions, StopReason,
                               TargetError)
from pvdbg.views.control import Controller, EngineBusy, Runner, SharedSessionTarget
from pvdbg.views.repl import Repl

TIMEOUT_S = 20.0
LONG_RUN = "bench=400000000"      # seconds of guest time: long enough to interrupt
SEED = Session.open(None).image.symbols
RESERVE = SEED.address("xen_reserve_top")
START_KERNEL = SEED.address("start_kernel")


class Driver:
    """Types lines into a running REPL and waits for what it prints."""

    def __init__(self, repl: Repl, pipe, thread: threading.Thread, result: list) -> None:
        self.repl = repl
        self.pipe = pipe
        self.thread = thread
        self.result = result

    @property
    def controller(self) -> Controller:
        return self.repl.controller

    def send(self, line: str, expect: str | None = None, timeout: float = TIMEOUT_S) -> str:
        """Type `line`; return what the REPL printed after it once `expect` appears."""
        start = len(self.repl.transcript_text())
        self.pipe.send_text(line + "\n")
        if expect is not None:
            self.wait(expect, start, timeout)
        return self.repl.transcript_text()[start:]

    def wait(self, expect: str, start: int = 0, timeout: float = TIMEOUT_S) -> str:
        ok = self.repl.wait_for_output(lambda text: expect in text[start:], timeout)
        assert ok, f"{expect!r} never printed; last output:\n{self.repl.transcript_text()[-3000:]}"
        return self.repl.transcript_text()[start:]

    def wait_running(self) -> None:
        assert wait_until(lambda: self.controller.running), "the guest never started running"

    def quit(self) -> int:
        self.pipe.send_text("\x04")                # Ctrl-D
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "the REPL did not exit on Ctrl-D"
        return self.result[0]


@pytest.fixture
def start_repl():
    stack = ExitStack()
    drivers: list[Driver] = []

    def start(cmdline: str = "", controller: Controller | None = None) -> Driver:
        if controller is None:
            controller = Controller(Session.open(None, SessionOptions(cmdline=cmdline)))
        pipe = stack.enter_context(create_pipe_input())
        repl = Repl(controller, input=pipe, output=DummyOutput(), history=InMemoryHistory(),
                    color=False)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(repl.run()), daemon=True)
        thread.start()
        driver = Driver(repl, pipe, thread, result)
        driver.wait("halted at its first instruction")
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        if driver.thread.is_alive():
            driver.repl.stop_guest()
            driver.pipe.send_text("\x04")
            driver.thread.join(TIMEOUT_S)
    stack.close()


def test_break_continue_and_the_hypervisor_views(start_repl):
    repl = start_repl()
    out = repl.send("break xen_reserve_top", "breakpoint 1 at")
    assert "<xen_reserve_top> reserve.c:20" in out
    out = repl.send("continue", "stopped: breakpoint 1 at")
    assert "seed: pvdbg-seed 1 booting on Xen 4.17" in out          # console echoed live
    assert f"=> *{RESERVE:#x}" in out                               # the instruction at EIP

    out = repl.send("hypercalls console_io", "hypercall = result")
    rows = [line for line in out.splitlines() if "(" in line]
    assert rows and all("console_io(cmd=write" in row for row in rows)
    out = repl.send("hc result=0x40011", "xen_version(cmd=version")
    assert "console_io" not in out

    out = repl.send("vcpu", "pending ports")
    assert "vcpu0: upcall_mask=1 upcall_pending=0" in out
    assert f"eip {RESERVE:#010x} <xen_reserve_top>" in out

    out = repl.send("pt $eip", "maps to")
    assert "L3 pinned" in out and " L1 " in out and "writable" in out

    out = repl.send("frames", "writable mapping")
    assert "no writable mapping of any pagetable or descriptor frame" in out
    assert "pinned" in out and "cr3 of vcpu0" in out

    out = repl.send("gdt", "[FLAT_RING1_CS]")
    assert "segment limits:" in out
    assert all(len(line) <= 80 for line in out.splitlines())        # DummyOutput is 80 wide

    out = repl.send("bt", "#2")
    assert [line.split(" in ")[1].split()[0].split("+")[0] for line in out.splitlines()
            if line.startswith("#")] == ["xen_reserve_top", "xen_start_kernel", "startup_xen"]
    assert f"eip {RESERVE:08x} <xen_reserve_top> reserve.c:" in repl.send("regs", "upcall_mask")
    assert "<xen_start_info>:" in repl.send("x xen_start_info 16", "xen_start_info")
    assert "push ebp" in repl.send("disas", f"=> *{RESERVE:#x}")
    assert "hit 1 times" in repl.send("info b", "breakpoint")
    assert repl.quit() == 0


def test_stepping_commands(start_repl):
    repl = start_repl()
    repl.send("until xen_reserve_top", f"stopped: until at {RESERVE:#x}")
    out = repl.send("stepi", "stopped: stepi")
    assert "<xen_reserve_top+0x1>" in out
    out = repl.send("", "stopped: stepi")              # an empty line repeats stepi
    assert "<xen_reserve_top+0x3>" in out
    repl.send("step", "stopped: step")
    out = repl.send("next", "stopped: next")
    assert "reserve.c:" in out
    out = repl.send("finish", "stopped: finish")
    assert "until xen_reserve_top returns to xen_start_kernel+0x" in out
    assert "<xen_start_kernel+0x" in out and "enlighten.c:" in out


def test_ctrl_c_stops_a_running_guest_and_busy_commands_say_why(start_repl):
    repl = start_repl(LONG_RUN)
    repl.send("continue", "continuing")
    in_bench_loop(repl.repl)
    out = repl.send("regs", "error:")
    assert "the guest is running (resumed from the REPL): stop it first" in out
    assert len([l for l in out.splitlines() if l.startswith("error:")]) == 1
    assert "console_io" in repl.send("hypercalls 2", "hypercall = result")   # live view
    start = len(repl.repl.transcript_text())
    repl.pipe.send_text("\x03")                     # Ctrl-C
    out = repl.wait("stopped: interrupt", start)
    assert "bench_loop" in out
    assert not repl.controller.running
    assert "bench_loop" in repl.send("bt", "#0")


def test_wait_holds_the_prompt_until_ctrl_c_stops_the_guest(start_repl):
    repl = start_repl(LONG_RUN)
    repl.send("continue", "continuing")
    in_bench_loop(repl.repl)
    start = len(repl.repl.transcript_text())
    repl.pipe.send_text("wait\n")
    assert wait_until(lambda: repl.repl._wait_app is not None)     # waiting in the foreground
    repl.pipe.send_text("\x03")
    repl.wait("stopped: interrupt", start)
    assert wait_until(lambda: repl.repl._wait_app is None)
    assert "stopped: stepi" in repl.send("si", "stopped: stepi")  # the prompt is back


def test_follow_prints_hypercalls_as_they_happen_in_order_with_the_console(start_repl):
    repl = start_repl()
    repl.send("hypercalls follow", "following hypercalls")
    out = repl.send("continue", "the domain shut down (poweroff)")
    console = out.index("seed: powering off")
    shutdown = out.index("sched_op(cmd=shutdown")
    assert console < shutdown                       # in the order they happened
    assert out.count("console_io(cmd=write") >= 7
    repl.send("hypercalls follow off", "no longer following")


def test_watch_catch_delete_and_errors(start_repl):
    repl = start_repl()
    out = repl.send("watch hypervisor_hole_start", "watchpoint 1")
    out = repl.send("c", "stopped: watchpoint 1")
    assert "write watchpoint" in out
    assert "catchpoint 1: hypercall sched_op" in repl.send("catch hypercall sched_op",
                                                           "catchpoint 1")
    out = repl.send("breakpoints", "catch 1")
    assert "watch write 4" in out and "hypercall sched_op" in out
    repl.send("delete 1", "deleted 1")
    out = repl.send("c", "stopped: catch")
    assert "hypercall sched_op(cmd=" in out
    repl.send("delete", "deleted all")
    assert "no breakpoints" in repl.send("bl", "no breakpoints")
    for line, message in (("frobnicate", "unknown command 'frobnicate'"),
                          ("break nosuch", "no symbol 'nosuch'"),
                          ("x 0", "cannot read guest virtual 0x0"),
                          ("x pa 0x7fffffff", "not in the domain's P2M"),
                          ("delete 9", "no breakpoint 9"),
                          ("catch hypercall nosuch", "unknown hypercall"),
                          ("vcpu 5", "no online vcpu 5"),
                          ("stepi x", "count must be a number")):
        out = repl.send(line, "error:")
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (line, out)


def test_help_lists_repl_and_shared_commands(start_repl):
    repl = start_repl()
    out = repl.send("help", "continue")
    for name in ("break", "continue", "hypercalls", "pt ADDRESS", "frames", "gdt", "traps",
                 "events", "stepi", "until"):
        assert name in out
    assert "(aliases: c, run, r, cont)" in repl.send("help c", "aliases")


def test_ctrl_d_exits_and_stops_a_running_guest(start_repl):
    repl = start_repl(LONG_RUN)
    repl.send("continue", "continuing")
    repl.wait_running()
    assert repl.quit() == 0
    assert not repl.controller.running


def test_traps_and_events_views_on_the_real_tables():
    """The views read hv.traps / hv.events as pvdbg/xen/traps.py and events.py keep them."""
    from pvdbg.xen.abi import TrapInfo32
    from pvdbg.xen.events import EvtchnStatus
    session = Session.open(None)
    hv = session.hv
    handler = session.symbol("printk")
    hv.traps.pv_vcpus[0].trap_ctxt[14] = TrapInfo32(14, 4, 0xE019, handler)
    out = run_monitor(session, "traps")
    assert "#PF" in out and "<printk>" in out and "vcpu0 virtual trap table" in out
    out = run_monitor(session, "events")
    assert "interdomain dom0 console" in out        # start_info's console port, xenconsoled
    channel = hv.events.channels[5]
    channel.state, channel.virq = EvtchnStatus.virq, 0
    assert "virq TIMER" in run_monitor(session, "events")


def test_script_mode_runs_each_line_to_completion():
    controller = Controller(Session.open(None))
    output = io.StringIO()
    from prompt_toolkit.output.plain_text import PlainTextOutput
    repl = Repl(controller, output=PlainTextOutput(output), history=InMemoryHistory(), color=False)
    script = ["break start_kernel", "continue", "bt", "continue", "hypercalls sched_op", "quit",
              "never reached"]
    assert repl.run_script(iter(line + "\n" for line in script)) == 0
    text = output.getvalue()
    assert f"stopped: breakpoint 1 at {START_KERNEL:#x} <start_kernel>" in text
    assert f"#0  {START_KERNEL:#x} in start_kernel" in text
    assert "the domain shut down (poweroff)" in text
    assert "sched_op(cmd=shutdown" in text
    assert "never reached" not in text
    assert "\x1b[" not in text                      # plain text when not a terminal


# -- the engine shared with gdb (no socket: the stub's Target called directly) -----------------
def gdb_resume_in_thread(target: SharedSessionTarget) -> tuple[threading.Thread, list]:
    events: list = []
    thread = threading.Thread(target=lambda: events.append(
        target.resume(ResumeActions(default=CONTINUE))), daemon=True)
    thread.start()
    return thread, events


def in_bench_loop(repl: Repl) -> None:
    """Wait until the running guest is in bench_loop (the status line reads EIP live)."""
    assert wait_until(lambda: (repl.status().eip_symbol or "").startswith("bench_loop")), \
        f"never reached bench_loop: {repl.status()}"


def wait_until(predicate, timeout: float = TIMEOUT_S) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        event.wait(0.01)
    return predicate()


def test_gdb_holding_the_guest_refuses_repl_runs_in_one_line(start_repl):
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    target = SharedSessionTarget(controller)
    repl = start_repl(controller=controller)
    target.stop_state()                              # gdb's `?` on connecting
    repl.wait("gdb attached")
    assert repl.repl.status().gdb == "gdb holds it (all-stop)"
    for command in ("continue", "stepi", "until start_kernel"):
        out = repl.send(command, "error:")
        error = out.split("error: ", 1)[1]
        assert error.startswith("gdb holds the guest stopped: ") and "\n" not in error.strip()
        assert "set non-stop on" in error and "from gdb" in error
    out = repl.send("stop --to-gdb", "error:")
    assert "gdb has no resume waiting" in out
    target.set_non_stop(True)
    assert "`continue &` there" in repl.send("continue", "error:")
    assert repl.repl.status().gdb == "gdb holds it (non-stop)"


def test_repl_stop_holds_gdbs_resume_and_continue_hands_it_back(start_repl):
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    target = SharedSessionTarget(controller)
    repl = start_repl(controller=controller)
    target.stop_state()
    thread, events = gdb_resume_in_thread(target)
    in_bench_loop(repl.repl)
    assert controller.runner is Runner.gdb
    assert repl.repl.status().reason == "resumed by gdb"
    assert "(resumed by gdb)" in repl.send("regs", "error:")
    # stop: the REPL holds the guest, gdb keeps waiting; the REPL inspects and steps.
    repl.send("stop", "the REPL holds the guest")
    assert wait_until(lambda: controller.held and not controller.running)
    assert thread.is_alive() and not events
    assert repl.repl.status().gdb == "REPL holds it, gdb waits (all-stop)"
    eip = controller.session.cpu.read("eip")
    assert "bench_loop" in repl.send("regs", "eip")
    repl.send("stepi", "stopped: step")
    assert controller.session.cpu.read("eip") != eip and controller.held
    assert target.read_memory(0, RESERVE, 4) == controller.session.read_memory(RESERVE, 4)
    # continue: gdb's resume goes on; the next stop (gdb's interrupt) is gdb's.
    repl.send("continue", "continuing")
    assert wait_until(lambda: controller.runner is Runner.gdb)
    assert not controller.held and not events
    target.request_stop()                            # gdb's ^C
    thread.join(TIMEOUT_S)
    assert events and events[0].reason is StopReason.INTERRUPT
    repl.wait("[gdb] stopped: interrupt")
    assert repl.repl.status().gdb == "gdb holds it (all-stop)"


def test_repl_stop_to_gdb_and_gdbs_interrupt_end_a_hold(start_repl):
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    target = SharedSessionTarget(controller)
    repl = start_repl(controller=controller)
    target.stop_state()
    # stop --to-gdb while gdb's resume runs: SIGINT for gdb at once (no hold).
    thread, events = gdb_resume_in_thread(target)
    in_bench_loop(repl.repl)
    repl.send("stop --to-gdb", "[gdb] stopped: interrupt")
    thread.join(TIMEOUT_S)
    assert events[0].reason is StopReason.INTERRUPT and not controller.held
    # stop, then stop --to-gdb: the hold ends with SIGINT for gdb where the guest is.
    thread, events = gdb_resume_in_thread(target)
    in_bench_loop(repl.repl)
    repl.send("stop", "the REPL holds the guest")
    repl.send("stop --to-gdb", "the guest is gdb's again")
    thread.join(TIMEOUT_S)
    assert events[0].reason is StopReason.INTERRUPT
    assert target.read_register(0, "eip") == controller.session.cpu.read("eip")
    # stop, then gdb's ^C: the same.
    thread, events = gdb_resume_in_thread(target)
    in_bench_loop(repl.repl)
    repl.send("stop", "the REPL holds the guest")
    assert wait_until(lambda: controller.held)
    target.request_stop()
    thread.join(TIMEOUT_S)
    assert events[0].reason is StopReason.INTERRUPT and not controller.gdb_pending
    assert "gdb holds the guest stopped" in repl.send("continue", "error:")


def test_gdb_reads_while_its_resume_runs_fail_at_once(start_repl):
    """Non-stop gdb sends packets while its resume runs: errors, never a wait."""
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    target = SharedSessionTarget(controller)
    repl = start_repl(controller=controller)
    target.set_non_stop(True)
    thread, events = gdb_resume_in_thread(target)
    in_bench_loop(repl.repl)
    with pytest.raises(TargetError, match="running"):
        target.read_memory(0, RESERVE, 4)
    with pytest.raises(TargetError, match="running"):
        target.read_register(0, "eip")
    assert target.vcpu_ids() == [0]
    assert "running" in target.describe_vcpu(0)
    target.request_stop()
    thread.join(TIMEOUT_S)
    assert events[0].reason is StopReason.INTERRUPT


def test_gdb_detach_keeps_the_repls_breakpoints(start_repl):
    controller = Controller(Session.open(None))
    target = SharedSessionTarget(controller)
    repl = start_repl(controller=controller)
    start_kernel = controller.session.symbol("start_kernel")
    repl.send("break start_kernel", "breakpoint 1")
    target.insert_breakpoint(BreakpointKind.SW, start_kernel, 1)
    reserve = controller.session.symbol("xen_reserve_top")
    target.insert_breakpoint(BreakpointKind.SW, reserve, 1)
    assert "gdb" in repl.send("breakpoints", "gdb")
    target.remove_breakpoint(BreakpointKind.SW, start_kernel, 1)
    assert start_kernel in controller.session.debug.breakpoints     # still the REPL's
    target.detach()
    repl.wait("gdb detached")
    assert set(controller.session.debug.breakpoints) == {start_kernel}
    repl.send("continue", f"stopped: breakpoint 1 at {START_KERNEL:#x} <start_kernel>")


def test_gdb_attaching_stops_a_guest_the_repl_runs(start_repl):
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    target = SharedSessionTarget(controller)
    repl = start_repl(controller=controller)
    repl.send("continue", "continuing")
    repl.wait_running()
    event = target.stop_state()                     # gdb connects: the guest stops for it
    assert not controller.running
    assert event.reason is StopReason.INTERRUPT
    repl.wait("stopped: interrupt")
    assert target.read_register(0, "eip") == controller.session.cpu.read("eip")


def test_controller_refuses_overlapping_runs():
    controller = Controller(Session.open(None, SessionOptions(cmdline=LONG_RUN)))
    controller.start(lambda session: session.run())
    try:
        with pytest.raises(EngineBusy, match="already running"):
            controller.start(lambda session: session.run())
        with pytest.raises(EngineBusy, match="stop it first"):
            with controller.inspect():
                pass
        with controller.peek() as session:
            assert session is None
    finally:
        assert controller.request_stop()
        assert controller.wait_stopped(TIMEOUT_S)
    assert controller.last_notice.stop.reason.value == "interrupt"
    with controller.peek() as session:
        assert session is controller.session
    with pytest.raises(MonitorError):
        run_monitor(controller.session, "hypercalls follow")
