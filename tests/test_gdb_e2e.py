"""Stock gdb against `pvdbg gdbserver` on the seed guest (real gdb, pygdbmi)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gdbmi import Gdb, GdbServerProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seed_elf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed-gdb")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    return out / "seed.elf"


@pytest.fixture
def attached(seed_elf, request):
    cmdline = getattr(request, "param", "")
    server = GdbServerProcess(str(seed_elf), "--cmdline", cmdline)
    gdb = Gdb(seed_elf)
    out = gdb.connect(f"127.0.0.1:{server.port}")
    assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
    yield gdb, server
    gdb.close()
    server.close()


def test_break_continue_bt_registers(attached):
    gdb, _ = attached
    text = gdb.console("info symbol $pc")
    assert "startup_xen" in text                     # halted at the first instruction
    gdb.cmd("-break-insert xen_reserve_top")
    gdb.cmd("-exec-continue")
    stop = gdb.wait_stopped()
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "xen_reserve_top"
    assert stop["frame"]["file"].endswith("reserve.c")
    bt = gdb.cmd("-stack-list-frames")
    funcs = [f["func"] for f in next(r for r in bt if r["type"] == "result")["payload"]["stack"]]
    assert funcs[:3] == ["xen_reserve_top", "xen_start_kernel", "startup_xen"]
    regs = gdb.console("info registers cr3 eip")
    assert "cr3" in regs and "xen_reserve_top" in regs
    assert "push" in gdb.console("x/i $pc")
    warnings = [r for r in gdb.log if r["type"] == "log" and "warning" in str(r["payload"]).lower()
                and "No executable" not in str(r["payload"])]
    assert warnings == []


def test_stepi_across_a_hypercall(attached):
    gdb, _ = attached
    gdb.cmd("-break-insert *xen_hypercall_console_io")
    gdb.cmd("-exec-continue")
    gdb.wait_stopped()
    gdb.cmd("-exec-step-instruction")              # mov $18, %eax
    gdb.wait_stopped()
    assert "int    $0x82" in gdb.console("x/i $pc")
    gdb.cmd("-exec-step-instruction")              # the hypercall, done within one step
    gdb.wait_stopped()
    assert "ret" in gdb.console("x/i $pc")
    assert "console_io(cmd=write" in gdb.console("monitor hypercalls 1")


def test_watchpoint_on_a_variable_and_catch_hypercall(attached):
    gdb, _ = attached
    gdb.cmd("-break-watch hypervisor_hole_start")
    gdb.cmd("-exec-continue")
    stop = gdb.wait_stopped()
    assert stop["reason"] == "watchpoint-trigger", stop
    assert stop["value"]["new"].startswith("41") or "0xf5800000" in str(stop["value"])
    gdb.cmd("-break-delete")
    assert "catchpoint 1" in gdb.console("monitor catch hypercall sched_op")
    gdb.cmd("-exec-continue")
    gdb.wait_stopped(120)
    text = "".join(str(r.get("payload")) for r in gdb.log if r["type"] in ("target", "console"))
    assert "hypercall sched_op" in text


@pytest.mark.parametrize("attached", ["bench=400000000"], indirect=True)
def test_interrupt_running_guest_then_detach_and_reattach(attached, seed_elf):
    gdb, server = attached
    gdb.cmd("-exec-continue")
    gdb.cmd("-exec-interrupt")
    stop = gdb.wait_stopped()
    assert stop.get("signal-name") == "SIGINT", stop
    assert "bench_loop" in gdb.console("info symbol $pc")
    gdb.cmd("-target-detach")
    gdb.close()
    second = Gdb(seed_elf)
    try:
        out = second.connect(f"127.0.0.1:{server.port}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        assert "bench_loop" in second.console("info symbol $pc")
    finally:
        second.close()
    attached_gdb = attached[0]
    attached_gdb.ctl = Gdb().ctl      # the fixture closes a live controller


def test_connect_over_stdio(seed_elf):
    gdb = Gdb(seed_elf)
    try:
        cmd = f"| {sys.executable} -m pvdbg.cli gdbserver --stdio {seed_elf}"
        out = gdb.connect(cmd)
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        gdb.cmd("-break-insert start_kernel")
        gdb.cmd("-exec-continue")
        assert gdb.wait_stopped()["frame"]["func"] == "start_kernel"
    finally:
        gdb.close()
