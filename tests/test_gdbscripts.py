"""gdbscripts/pvdbg.py through real gdb: xen commands, convenience functions, printers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gdbmi import Gdb

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seed_elf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed-gdbscripts")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    return out / "seed.elf"


def test_pvdbg_gdb_batch(seed_elf):
    cmds = ["break xen_reserve_top", "continue", "xen hypercalls 2",
            "print *(struct start_info *)xen_start_info", "print $xen_upcall_mask()",
            "xen catch hypercall sched_op", "continue", "xen vcpu", "xen nosuch"]
    argv = [sys.executable, "-m", "pvdbg.cli", "gdb", str(seed_elf)]
    for c in cmds:
        argv += ["--batch-command", c]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert "Breakpoint 1, xen_reserve_top" in out
    assert "console_io(cmd=write" in out
    assert 'StartInfo32 {magic = "xen-3.0-x86_32p", nr_pages = 0x4000' in out
    assert "$2 = 1" in out
    assert "catchpoint 1: hypercall sched_op" in out
    assert "hypercall sched_op(cmd=block" in out
    assert "vcpu0: upcall_mask=" in out
    assert "Traceback" not in out


def test_gdbscripts_source_under_pygdbmi(seed_elf):
    gdb = Gdb(seed_elf)
    try:
        gdb.console(f"source {ROOT / 'gdbscripts' / 'pvdbg.py'}")
        out = gdb.connect(f"| {sys.executable} -m pvdbg.cli gdbserver --stdio {seed_elf}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        assert "catchpoint 1: hypercall xen_version" in gdb.console("xen catch hypercall xen_version")
        gdb.cmd("-exec-continue")
        gdb.wait_stopped()
        text = "".join(str(r.get("payload")) for r in gdb.log if r["type"] in ("target", "console"))
        assert "hypercall xen_version(cmd=version" in text
        assert "help" in gdb.console("help xen")
    finally:
        gdb.close()


def test_gdb_init_prints_source_line():
    r = subprocess.run([sys.executable, "-m", "pvdbg.cli", "gdb-init"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("source ") and r.stdout.strip().endswith(
        "gdbscript.py")
