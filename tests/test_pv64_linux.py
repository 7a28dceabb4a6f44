"""Debian's own 64-bit cloud kernel on the 64-bit PV engine (issue 10, milestone A):
`pvdbg run vmlinuz --cmdline "earlyprintk=xen console=hvc0"` prints its banner.

The kernel comes from tests/debian_kernel.py (Debian's archive, cached)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvdbg.session import Session, SessionOptions, StopReason

CMDLINE = "earlyprintk=xen console=hvc0"
BANNER = "Linux version 6.1"
BANNER_BUDGET = 60_000_000          # instructions; the banner comes after ~15 M
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def debian_kernel():
    from debian_kernel import fetch_debian_vmlinuz
    return fetch_debian_vmlinuz().path


def boot_to_banner(path: Path) -> Session:
    session = Session.open(path, SessionOptions(cmdline=CMDLINE))
    while BANNER not in session.console_text and session.cpu.icount < BANNER_BUDGET:
        stop = session.run(max_insns=1_000_000)
        assert stop.reason is StopReason.limit, (stop, session.console_text[-2000:])
    return session


@pytest.mark.e2e
def test_debian_kernel_prints_its_banner(debian_kernel):
    session = boot_to_banner(debian_kernel)
    text = session.console_text
    assert BANNER in text, text[-2000:]
    assert "Command line: " + CMDLINE in text
    assert "mapping kernel into physical memory" in text      # xen_start_kernel's own
    hv = session.hv
    assert hv.guest_bits == 64 and hv.cpu.cpl == 3
    assert not session.crash
    # Linux built its own L4, pinned it and switched to it; the builder's L4 is unpinned
    pinned_l4s = [m for m in hv.mm.pinned if hv.mm.type_name(m) == "l4"]
    assert hv.current.pv.kernel_table_mfn in pinned_l4s
    assert hv.built.l4_mfn not in hv.mm.pinned
    names = {r.name for r in hv.trace.last(100_000) if r.kind.name == "hypercall"}
    assert {"mmuext_op", "set_gdt", "set_trap_table", "console_io", "update_va_mapping"} <= names
    session.close()


@pytest.mark.e2e
def test_pvdbg_run_prints_the_banner(debian_kernel):
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from pvdbg.cli import main; sys.exit(main())",
         "run", str(debian_kernel), "--cmdline", CMDLINE, "--max-insns", str(BANNER_BUDGET // 2)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert BANNER in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "unchecked MSR access error" not in result.stdout
    assert "mmuext_op" in result.stderr + result.stdout


@pytest.mark.e2e
def test_initrd_becomes_the_start_info_module(debian_kernel, tmp_path):
    from pvdbg.xen.abi64 import StartInfo64
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"070701" + bytes(5000))
    session = Session.open(debian_kernel, SessionOptions(cmdline=CMDLINE, initrd=str(initrd)))
    hv = session.hv
    si = StartInfo64.from_bytes(hv.guest.read(hv.layout.start_info_va, StartInfo64.SIZE))
    assert si.mod_len == 5006 and hv.guest.read(si.mod_start, 6) == b"070701"
    # XEN_ELFNOTE_INIT_P2M: the p2m list is mapped at 512 GiB, outside the initial mapping.
    assert si.mfn_list == 0x80_0000_0000 == hv.layout.p2m_va
    assert si.first_p2m_pfn and si.nr_p2m_frames == si.nr_pages * 8 // 4096 + 3
    assert hv.guest.read_u64(si.mfn_list) == hv.built.p2m[0]
    session.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_debian_kernel_reaches_hvc0_through_the_console_ring(debian_kernel):
    """Past milestone A: event channels, timers and xenconsoled carry the kernel's hvc0
    console (its output goes through the PV console ring, not console_io)."""
    session = Session.open(debian_kernel, SessionOptions(cmdline=CMDLINE))
    target = "Serial: 8250/16550 driver"
    while target not in session.console_text and session.cpu.icount < 2_500_000_000:
        stop = session.run(max_insns=20_000_000)
        assert stop.reason is StopReason.limit, (stop, session.console_text[-2000:])
    text = session.console_text
    assert "printk: console [hvc0] enabled" in text and target in text, text[-2000:]
    assert "Grant table initialized" in text          # grant_table_op, 64-bit layouts
    hv = session.hv
    setups = [r for r in hv.trace.last(1_000_000)
              if r.name == "grant_table_op" and r.args["cmd"] == "setup_table"]
    assert setups and all(r.result == 0 for r in setups)
    sources = {r.name for r in hv.trace.last(1_000_000) if r.kind.name == "console"}
    assert len(sources) >= 2                        # console_io early, the ring later
    assert any(r.kind.name == "upcall" for r in hv.trace.last(1_000_000))
    assert hv.trace.counts.get("event_channel_op", 0) > 0
    session.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_milestone_b_busybox_shell_answers_uname(debian_kernel):
    """Milestone B: with Debian's busybox-static initramfs as --initrd, /init (busybox sh)
    prints a prompt on hvc0 and `uname -a` typed into the PV console answers."""
    from initramfs import SHELL_PROMPT, build_busybox_initramfs
    initrd = build_busybox_initramfs().path
    session = Session.open(debian_kernel, SessionOptions(cmdline=CMDLINE, initrd=str(initrd)))
    while SHELL_PROMPT not in session.console_text and session.cpu.icount < 4_000_000_000:
        stop = session.run(max_insns=50_000_000)
        assert stop.reason is StopReason.limit, (stop, session.console_text[-2000:])
    assert SHELL_PROMPT in session.console_text, session.console_text[-2000:]
    seen = len(session.console_text)
    session.console_send(b"uname -a\n")
    budget = session.cpu.icount + 500_000_000
    while "GNU/Linux" not in session.console_text[seen:] and session.cpu.icount < budget:
        stop = session.run(max_insns=20_000_000)
        assert stop.reason is StopReason.limit, (stop, session.console_text[-2000:])
    answer = session.console_text[seen:]
    assert "Linux (none) 6.1.0" in answer and "x86_64 GNU/Linux" in answer, answer
    assert not session.hv.current.pv.kernel_mode or session.hv.current.pv.user_table_mfn
    session.close()
