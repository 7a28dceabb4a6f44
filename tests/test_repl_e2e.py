"""`pvdbg repl` in a real terminal (tmux): run to a breakpoint and read the screen; then
the same with real gdb attached through --gdb, both driving one guest."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from gdbmi import Gdb
from pvdbg.session import Session, bundled_guest_path

pytestmark = pytest.mark.e2e
RESERVE = Session.open(None).symbol("xen_reserve_top")
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 30.0
POLL_S = 0.05


class Tmux:
    """One detached tmux server (own socket) running `command` in a fixed-size pane."""

    def __init__(self, command: list[str], env: dict[str, str], width: int = 120,
                 height: int = 32) -> None:
        assert shutil.which("tmux"), "tmux is needed (apt-get install tmux)"
        self.socket = f"pvdbg-test-{uuid.uuid4().hex[:12]}"
        line = " ".join(_quote(word) for word in command)
        self._tmux("new-session", "-d", "-s", "repl", "-x", str(width), "-y", str(height),
                   f"cd {_quote(str(ROOT))} && exec env {self._env_words(env)} {line}")

    @staticmethod
    def _env_words(env: dict[str, str]) -> str:
        return " ".join(f"{key}={_quote(value)}" for key, value in env.items())

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        return done.stdout

    def screen(self) -> str:
        """The visible pane plus its scrollback."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", "repl")

    def visible(self) -> list[str]:
        return self._tmux("capture-pane", "-p", "-t", "repl").splitlines()

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "repl", "-l", text)
        self._tmux("send-keys", "-t", "repl", "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "repl", *keys)

    def wait_for(self, needle: str | re.Pattern, before: str = "",
                 timeout: float = TIMEOUT_S) -> str:
        """Wait until `needle` shows on the screen more often than in `before` (an earlier
        screen from `mark`), i.e. until it is printed anew."""
        count = (lambda text: len(needle.findall(text))) if isinstance(needle, re.Pattern) \
            else (lambda text: text.count(needle))
        seen = count(before)
        pause = threading.Event()
        for _ in range(int(timeout / POLL_S)):
            text = self.screen()
            if count(text) > seen:
                return text
            pause.wait(POLL_S)
        raise AssertionError(f"{needle!r} never appeared; screen:\n{self.screen()}")

    def wait_gone(self, timeout: float = TIMEOUT_S) -> bool:
        pause = threading.Event()
        for _ in range(int(timeout / POLL_S)):
            if "repl" not in self._tmux("list-sessions", "-F", "#{session_name}"):
                return True
            pause.wait(POLL_S)
        return False

    def status_line(self, *parts: str, timeout: float = TIMEOUT_S) -> str:
        """Wait until the bottom status line shows every one of `parts`; return it."""
        pause = threading.Event()
        line = ""
        for _ in range(int(timeout / POLL_S)):
            lines = [text for text in self.visible() if text.strip()]
            line = lines[-1] if lines else ""
            if all(part in line for part in parts):
                return line
            pause.wait(POLL_S)
        raise AssertionError(f"status line never showed {parts}: {line!r}")

    def mark(self) -> str:
        return self.screen()

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=TIMEOUT_S)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path / "state"),
            "TERM": "xterm-256color"}


@pytest.fixture
def tmux_factory():
    sessions: list[Tmux] = []

    def make(command: list[str], env: dict[str, str], **size) -> Tmux:
        tmux = Tmux(command, env, **size)
        sessions.append(tmux)
        return tmux
    yield make
    for tmux in sessions:
        tmux.close()


def test_repl_in_a_terminal_runs_to_a_breakpoint(tmux_factory, tmp_path):
    # `pvdbg` with no arguments is the REPL on the bundled seed guest.
    tmux = tmux_factory([sys.executable, "-m", "pvdbg.cli"], _env(tmp_path))
    tmux.wait_for("(pvdbg)")
    assert "halted at its first instruction (startup_xen)" in tmux.screen()
    mark = tmux.mark()
    tmux.type("break xen_reserve_top")
    tmux.wait_for(f"breakpoint 1 at {RESERVE:#x} <xen_reserve_top>", mark)
    mark = tmux.mark()
    tmux.type("continue")
    screen = tmux.wait_for(f"stopped: breakpoint 1 at {RESERVE:#x} <xen_reserve_top> reserve.c:",
                           mark)
    assert "seed: pvdbg-seed 1 booting on Xen 4.17" in screen
    tmux.status_line("stopped: breakpoint", "eip xen_reserve_top", "mask 1 pending 0",
                     "insns ", "hypercalls ")
    mark = tmux.mark()
    tmux.type("bt")
    tmux.wait_for(re.compile(r"#1  0x[0-9a-f]+ in xen_start_kernel\+0x[0-9a-f]+ at enlighten\.c"),
                  mark)
    tmux.keys("C-d")
    assert tmux.wait_gone(), "pvdbg did not exit on Ctrl-D"
    history = (tmp_path / "state" / "pvdbg" / "history").read_text()
    assert "+break xen_reserve_top" in history and "+continue" in history


def test_repl_and_gdb_on_one_guest(tmux_factory, tmp_path):
    tmux = tmux_factory([sys.executable, "-m", "pvdbg.cli", "repl", "--gdb", "0",
                         "--cmdline", "bench=400000000"], _env(tmp_path), width=140)
    screen = tmux.wait_for(re.compile(r"target remote 127\.0\.0\.1:(\d+)"))
    port = re.search(r"target remote 127\.0\.0\.1:(\d+)", screen).group(1)
    gdb = Gdb(bundled_guest_path())
    try:
        mark = tmux.mark()
        out = gdb.connect(f"127.0.0.1:{port}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        tmux.wait_for("gdb attached", mark)

        # gdb runs the guest to a breakpoint; the REPL sees the stop and inspects.
        mark = tmux.mark()
        gdb.cmd("-break-insert xen_reserve_top")
        gdb.cmd("-exec-continue")
        assert gdb.wait_stopped()["reason"] == "breakpoint-hit"
        tmux.wait_for(re.compile(r"\[gdb\] stopped: breakpoint at 0x[0-9a-f]+ <xen_reserve_top"),
                      mark)
        mark = tmux.mark()
        tmux.type("bt")
        tmux.wait_for("in xen_start_kernel+0x", mark)
        mark = tmux.mark()
        tmux.type("continue")
        tmux.wait_for("gdb holds the guest stopped: continue from gdb", mark)
        tmux.status_line("gdb holds it (all-stop)")
        assert "console_io(cmd=write" in gdb.console("monitor hypercalls 1")

        # gdb resumes: the REPL shows it running; `stop` holds it while gdb waits,
        # `continue` resumes gdb's run, `stop --to-gdb` is SIGINT for gdb.
        gdb.cmd("-break-delete")
        gdb.cmd("-exec-continue")
        tmux.status_line("running: resumed by gdb", "eip bench_loop")
        mark = tmux.mark()
        tmux.type("stop")
        tmux.wait_for("the REPL holds the guest", mark)
        tmux.status_line("stopped: interrupt", "REPL holds it, gdb waits (all-stop)")
        mark = tmux.mark()
        tmux.type("continue")
        tmux.status_line("running: resumed by gdb", "gdb's resume (all-stop)")
        mark = tmux.mark()
        tmux.type("stop --to-gdb")
        stop = gdb.wait_stopped()
        assert stop.get("signal-name") == "SIGINT", stop
        assert "bench_loop" in gdb.console("info symbol $pc")
        tmux.wait_for("[gdb] stopped: interrupt", mark)

        # gdb leaves; the REPL drives the guest again.
        mark = tmux.mark()
        gdb.cmd("-target-detach")
        tmux.wait_for("gdb detached", mark)
        mark = tmux.mark()
        tmux.type("continue")
        tmux.wait_for("continuing", mark)
        mark = tmux.mark()
        tmux.keys("C-c")
        tmux.wait_for("stopped: interrupt at", mark)
        tmux.type("quit")
        assert tmux.wait_gone(), "pvdbg did not exit on quit"
    finally:
        gdb.close()


@pytest.fixture(scope="module")
def seed_from_source(tmp_path_factory) -> Path:
    """The seed guest built from guests/seed (all its phases), as test_gdb_e2e builds it."""
    out = tmp_path_factory.mktemp("seed-repl")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True, timeout=300)
    return out / "seed.elf"


def test_repl_script_shows_the_kernel_phase_state(seed_from_source, tmp_path):
    """`pvdbg repl GUEST` reading commands from a pipe: the trap table, event channels,
    GDT, frames and multicalls the seed's kernel sets up, seen at its shutdown."""
    script = "\n".join(["catch shutdown", "continue", "traps", "events", "gdt", "frames",
                        "hypercalls multicall", "vcpu", "quit"]) + "\n"
    done = subprocess.run([sys.executable, "-m", "pvdbg.cli", "repl", str(seed_from_source)],
                          input=script, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **_env(tmp_path)})
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "stopped: catch (catchpoint 1 (shutdown)" in out
    traps = out.split("(pvdbg) traps")[1].split("(pvdbg) events")[0]
    assert re.search(r"0xe #PF .* <\w+>", traps), traps
    assert "callbacks" in traps and "event" in traps
    events = out.split("(pvdbg) events")[1].split("(pvdbg) gdt")[0]
    timer = [line for line in events.splitlines() if "virq TIMER" in line]
    assert timer and int(timer[0].split()[-1]) > 0, events          # upcalls delivered
    gdt = out.split("(pvdbg) gdt")[1].split("(pvdbg) frames")[0]
    assert "set_gdt not called" not in gdt and "[FLAT_RING1_CS]" in gdt
    frames = out.split("(pvdbg) frames")[1].split("(pvdbg) hypercalls")[0]
    assert "seg_desc" in frames and "gdt of vcpu0" in frames and "pinned" in frames
    assert "no writable mapping of any pagetable or descriptor frame" in frames
    assert "  └ " in out.split("(pvdbg) hypercalls multicall")[1]
    assert "\x1b[" not in out
