"""Debian's 64-bit PV GRUB (grub-xen-host, grub-x86_64-xen.bin) on the 64-bit PV engine:
`grub>` on its PV console, a typed command answered, and a PV disk listed and read through
xenstore, the 64-bit grant table and the x86_64-abi blkif ring (issue 10 item 6)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from debian import grub_x86_64_xen
from test_pvgrub import _command, _plain
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.devices import DiskSpec

pytestmark = pytest.mark.e2e

PROMPT = "grub> "
BOOT_INSNS = 200_000_000          # the prompt comes after ~24 M instructions
DISK_TEXT = "pvdbg was here: a file on a 64-bit guest's PV disk\n"


@pytest.fixture(scope="module")
def grub() -> Path:
    return grub_x86_64_xen()


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    """A 2 MiB ext2 image with /hello.txt (mke2fs -d, no root)."""
    root = tmp_path_factory.mktemp("disk64")
    tree = root / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text(DISK_TEXT)
    image = root / "disk.img"
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    subprocess.run([mke2fs, "-q", "-F", "-t", "ext2", "-b", "1024", "-L", "pvdbg64", "-d",
                    str(tree), str(image), "2048"], check=True, capture_output=True)
    return image


def _boot(grub: Path, **options) -> Session:
    session = Session.open(grub, SessionOptions(memory_mib=64, **options))
    hit = session.run_until(console=PROMPT, max_insns=BOOT_INSNS)
    assert hit, (hit.stop, session.crash and session.crash.reason, session.console_text[-400:])
    return session


def test_boots_to_prompt_and_answers(grub):
    s = _boot(grub)
    assert s.hv.guest_bits == 64 and s.cpu.cpl == 3
    text = _plain(s.console_text)
    assert text.startswith("Welcome to GRUB!")
    assert "error: no such device: /boot/xen/pvboot-x86_64.elf." in text
    assert "GNU GRUB  version 2.06" in text and text.endswith(PROMPT)
    calls = s.trace.records(TraceKind.hypercall)
    names = {r.name for r in calls}
    assert {"grant_table_op", "mmuext_op", "event_channel_op", "sched_op"} <= names
    # The 64-bit setup_table layout: GRUB got its frames and no call was refused.
    gnttab = [r for r in calls if r.name == "grant_table_op"]
    assert gnttab and all(r.result == 0 for r in gnttab)
    table = s.devices.grants
    assert all(s.hv.mm.may_map(mfn) for mfn in table.frames)
    assert "hello" in _command(s, "echo hello").splitlines()
    before = s.cpu.icount
    stop = s.run(max_insns=BOOT_INSNS)
    assert stop.reason is StopReason.idle, stop
    assert s.cpu.icount - before < 50_000
    assert "(memdisk)" in _command(s, "ls")
    s.close()


def test_lists_and_reads_a_pv_disk(grub, disk):
    s = _boot(grub, disks=(DiskSpec(str(disk), readonly=True),))
    assert "(xen/xvda)" in _command(s, "ls")
    assert "hello.txt" in _command(s, "ls (xen/xvda)/")
    assert DISK_TEXT.strip() in _command(s, "cat (xen/xvda)/hello.txt")
    reads = s.trace.records(TraceKind.blkif, "read")
    assert reads and all(r.args["status"] == 0 for r in reads)
    backend = s.devices.disks[0]
    assert backend.state.name == "Connected"
    assert s.devices.xenstore.read("/local/domain/1/device/vbd/51712/protocol") == b"x86_64-abi"
    s.close()
