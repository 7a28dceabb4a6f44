"""Drive real gdb (pygdbmi, MI3) against `pvdbg gdbserver`, with timeouts and no sleeps."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from pygdbmi.gdbcontroller import GdbController


class GdbServerProcess:
    """`pvdbg gdbserver --port 0 ...` in a subprocess; `.port` once it listens."""

    def __init__(self, *args: str, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pvdbg.cli", "gdbserver", "--port", "0",
                                      *args], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        self.port = None
        self.stderr_lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            m = re.search(r"listening on [\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.close()
            raise RuntimeError("gdbserver did not start: " + "".join(self.stderr_lines))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Gdb:
    def __init__(self, elf: Path | None = None) -> None:
        cmd = ["gdb", "--nx", "--quiet", "--interpreter=mi3"]
        if elf is not None:
            cmd.append(str(elf))
        self.ctl = GdbController(cmd)
        self.log: list[dict] = []
        self.cmd("-gdb-set mi-async on")

    def cmd(self, command: str, timeout: float = 20.0, until_done: bool = True) -> list[dict]:
        out = self.ctl.write(command, timeout_sec=timeout, raise_error_on_timeout=False)
        self.log += out
        if until_done:
            deadline = time.monotonic() + timeout
            while not any(r["type"] == "result" for r in out) and time.monotonic() < deadline:
                more = self.ctl.get_gdb_response(timeout_sec=1, raise_error_on_timeout=False)
                self.log += more
                out += more
        return out

    def wait_stopped(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for r in self.log:
            if r["type"] == "notify" and r["message"] == "stopped" and not r.get("_seen"):
                r["_seen"] = True
                return r["payload"]
        while time.monotonic() < deadline:
            for r in self.ctl.get_gdb_response(timeout_sec=1, raise_error_on_timeout=False):
                self.log.append(r)
                if r["type"] == "notify" and r["message"] == "stopped":
                    r["_seen"] = True
                    return r["payload"]
        raise TimeoutError("gdb never reported a stop: " + repr(self.log[-10:]))

    def drain(self) -> None:
        """Forget stop notifications seen so far (e.g. the one on connecting)."""
        self.log += self.ctl.get_gdb_response(timeout_sec=0.5, raise_error_on_timeout=False)
        for r in self.log:
            if r["type"] == "notify" and r["message"] == "stopped":
                r["_seen"] = True

    def connect(self, target: str) -> list[dict]:
        out = self.cmd(f"-target-select remote {target}")
        self.drain()
        return out

    def console(self, command: str, timeout: float = 20.0) -> str:
        """Run a CLI command; return everything gdb printed for it."""
        out = self.cmd(f'-interpreter-exec console "{command}"', timeout)
        return "".join(str(r.get("payload") or "") for r in out
                       if r["type"] in ("console", "target", "log"))

    def close(self) -> None:
        self.ctl.exit()
