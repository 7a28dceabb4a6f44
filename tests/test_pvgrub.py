"""Debian's PV GRUB (grub-xen-host, grub-i386-xen.bin): a real guest no one here wrote boots
on pvdbg to `grub>`, takes commands on its PV console, lists and reads a PV disk (xenstore,
grant table, blkif), sits idle at its prompt, and works with gdb attached."""
from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from debian import grub_i386_xen
from gdbmi import Gdb, GdbServerProcess
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.devices import DiskSpec

pytestmark = pytest.mark.e2e

PROMPT = "grub> "
BOOT_INSNS = 200_000_000          # GRUB reaches its prompt in ~24M (~48M with a disk)
DISK_TEXT = "pvdbg was here: a file on a PV disk\n"


@pytest.fixture(scope="module")
def grub() -> Path:
    return grub_i386_xen()


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    """A 2 MiB ext2 image with /hello.txt and /boot/grub/notes.txt (mke2fs -d, no root)."""
    root = tmp_path_factory.mktemp("disk")
    tree = root / "tree"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "hello.txt").write_text(DISK_TEXT)
    (tree / "boot" / "grub" / "notes.txt").write_text("nested\n")
    image = root / "disk.img"
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    subprocess.run([mke2fs, "-q", "-F", "-t", "ext2", "-b", "1024", "-L", "pvdbg", "-d", str(tree),
                    str(image), "2048"], check=True, capture_output=True)
    return image


def _plain(text: str) -> str:
    """Console text without GRUB's VT100 cursor movements and colours."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


def _command(session: Session, line: str) -> str:
    """Type `line` at the prompt; return the plain output up to the next prompt."""
    before = len(session.console_text)
    session.console_send(line.encode() + b"\n")
    hit = session.run_until(console=re.compile(r"\n\r?grub> $"), max_insns=BOOT_INSNS)
    assert hit, (hit.stop, session.console_text[-400:])
    return _plain(session.console_text[before:])


def _boot(grub: Path, **options) -> Session:
    session = Session.open(grub, SessionOptions(memory_mib=64, **options))
    hit = session.run_until(console=PROMPT, max_insns=BOOT_INSNS)
    assert hit, (hit.stop, session.crash and session.crash.reason, session.console_text[-400:])
    return session


def test_boots_to_prompt_and_echoes(grub):
    s = _boot(grub)
    text = _plain(s.console_text)
    assert text.startswith("Welcome to GRUB!")
    assert "error: no such device: /boot/xen/pvboot-i386.elf." in text
    assert "error: no such device: /grub/grub.cfg." in text
    assert "GNU GRUB  version 2.06" in text and text.endswith(PROMPT)
    # Before printing, GRUB asked xenstore for its disks (relative path) and got ENOENT.
    xs = s.trace.records(TraceKind.xenstore, "DIRECTORY")
    assert xs[0].args["args"] == ["device/vbd"] and xs[1].error == "ENOENT"
    calls = {r.name for r in s.trace.records(TraceKind.hypercall)}
    assert {"grant_table_op", "mmuext_op", "update_va_mapping", "event_channel_op",
            "sched_op"} <= calls
    assert "hello" in _command(s, "echo hello").splitlines()
    # Idle at the prompt: the run ends (no more input) within a few polls, no hypercall.
    before = s.cpu.icount
    stop = s.run(max_insns=BOOT_INSNS)
    assert stop.reason is StopReason.idle, stop
    assert s.cpu.icount - before < 50_000
    out = _command(s, "ls")
    assert "(memdisk)" in out and "(xen/xvda)" not in out


def test_trace_is_deterministic_with_input(grub):
    def run() -> list[str]:
        s = _boot(grub)
        _command(s, "echo same")
        return [r.to_json() for r in s.trace]
    assert run() == run()


def test_lists_and_reads_a_pv_disk(grub, disk):
    s = _boot(grub, disks=(DiskSpec(str(disk), readonly=True),))
    assert "(xen/xvda)" in _command(s, "ls")
    listing = _command(s, "ls (xen/xvda)/")
    assert "hello.txt" in listing and "boot/" in listing and "lost+found/" in listing
    assert DISK_TEXT.strip() in _command(s, "cat (xen/xvda)/hello.txt")
    assert "nested" in _command(s, "cat (xen/xvda)/boot/grub/notes.txt")
    reads = s.trace.records(TraceKind.blkif, "read")
    assert reads and all(r.args["status"] == 0 for r in reads)
    assert s.devices.disks[0].state.name == "Connected"
    writes = {tuple(r.args["args"][:1]) for r in s.trace.records(TraceKind.xenstore, "WRITE")
              if r.args["what"] == "request"}
    assert ("device/vbd/51712/ring-ref",) in writes and ("device/vbd/51712/state",) in writes
    ring_ref = int(s.devices.xenstore.read("/local/domain/1/device/vbd/51712/ring-ref"))
    grants = dict(s.devices.grants.active_entries())
    assert ring_ref >= 2 and grants[ring_ref].domid == 0           # the ring, granted to dom0
    assert grants[0].frame == s.devices.console_mfn and grants[1].frame == s.devices.store_mfn


def _pvdbg(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvdbg.cli", *args], capture_output=True,
                          timeout=120, **kw)


def test_cli_piped_input(grub, disk):
    proc = _pvdbg("run", str(grub), "--disk", str(disk), "--disk-readonly",
                  input=b"echo hello\nls\ncat (xen/xvda)/hello.txt\n")
    out = _plain(proc.stdout.decode("latin-1"))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "\nhello\n" in out and "(xen/xvda)" in out and DISK_TEXT.strip() in out
    assert out.rstrip().endswith("grub>")
    assert "input ended and the guest is idle" in err and "stopped: idle" in err
    proc = _pvdbg("run", str(grub), "--quiet", stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and b"grub> " in proc.stdout
    proc = _pvdbg("run", str(grub), "--disk", "/nonexistent/disk.img", stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_until(fd: int, pattern: bytes, timeout: float, seen: bytearray) -> bytes:
    deadline = time.monotonic() + timeout
    while pattern not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    assert pattern in seen, bytes(seen[-400:])
    return bytes(seen)


def test_terminal_is_connected_raw_and_idle_costs_no_cpu(grub):
    """On a terminal: raw keys to the guest, an idle prompt sleeps, Ctrl-] quits and the
    terminal gets its settings back."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "pvdbg.cli", "run", str(grub)],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: __import__("fcntl").ioctl(
                                0, termios.TIOCSCTTY, 0))
    seen = bytearray()
    try:
        _read_until(master, b"grub> ", 60, seen)
        _read_until(master, b"Ctrl-] quits", 10, seen)
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO
        time.sleep(0.5)
        cpu = _cpu_seconds(proc.pid)
        time.sleep(2.0)
        assert _cpu_seconds(proc.pid) - cpu < 0.3          # asleep, not polling
        os.write(master, b"echo typed\r")
        _read_until(master, b"typed\r\n", 30, seen)
        os.write(master, b"\x1d")                          # Ctrl-]
        assert proc.wait(30) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_gdb_catches_a_hypercall_reads_memory_and_continues_to_the_prompt(grub):
    server = GdbServerProcess(str(grub))
    gdb = Gdb(grub)
    try:
        out = gdb.connect(f"127.0.0.1:{server.port}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        assert "lea" in gdb.console("x/i $pc") and "0x0" in gdb.console("p/x $pc")
        assert "catchpoint 1" in gdb.console("monitor catch hypercall grant_table_op")
        gdb.cmd("-exec-continue")
        gdb.wait_stopped(60)
        text = "".join(str(r.get("payload")) for r in gdb.log if r["type"] in ("target", "console"))
        assert "grant_table_op" in text and "set_version" in text
        code = gdb.console("x/6xb 0")                      # GRUB's first instruction
        assert "0x8d\t0x25\t0x00\t0xc0\t0x40\t0x00" in code, code
        assert "grant_table_op(cmd=set_version" in gdb.console("monitor hypercalls 1")
        gdb.console("monitor uncatch 1")
        console = ""
        for _ in range(30):                                # continue until GRUB waits for keys
            gdb.cmd("-exec-continue")
            time.sleep(1.0)
            gdb.cmd("-exec-interrupt")
            stop = gdb.wait_stopped(60)
            assert stop.get("signal-name") == "SIGINT", stop
            console = gdb.console("monitor console 3")
            if "grub>" in console:
                break
        assert "grub>" in console, console
        assert "queued" in gdb.console("monitor console send echo from-gdb")
        gdb.cmd("-exec-continue")
        time.sleep(1.0)
        gdb.cmd("-exec-interrupt")
        gdb.wait_stopped(60)
        assert "from-gdb" in gdb.console("monitor console 6"), gdb.console("monitor console 6")
    finally:
        gdb.close()
        server.close()
