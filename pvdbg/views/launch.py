"""`pvdbg repl`: a Session under a Controller, the REPL on the terminal and, with
--gdb PORT, the GDB stub on the same session in a background thread."""
from __future__ import annotations

import io
import sys
from typing import TextIO

from prompt_toolkit.formatted_text import FormattedText

from ..stub.server import GdbServer
from .control import Controller, SharedSessionTarget
from .repl import Repl


class GdbListenError(Exception):
    """The --gdb port cannot be bound (one line)."""


class _PostedLog(io.TextIOBase):
    """A text stream whose lines appear above the REPL's prompt (the stub's log)."""

    def __init__(self) -> None:
        self.repl: Repl | None = None
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if self.repl is not None and line:
                self.repl.post(FormattedText([("class:dim", line + "\n")]))
        return len(text)


def launch_repl(session, gdb_port: int | None = None, listen: str = "127.0.0.1",
                stdin: TextIO | None = None) -> int:
    """Run the REPL until the user quits; raises GdbListenError when the gdb port cannot
    be bound.  Interactive on a terminal, else each line of `stdin` is a command."""
    stdin = sys.stdin if stdin is None else stdin
    controller = Controller(session)
    server = None
    log = _PostedLog()
    if gdb_port is not None:
        try:
            server = GdbServer(SharedSessionTarget(controller), host=listen, port=gdb_port,
                               log=log)
        except OSError as exc:
            raise GdbListenError(f"cannot listen on {listen}:{gdb_port}: {exc.strerror}") from None
    label = None if server is None else (lambda: f"gdb {server.host}:{server.port}")
    repl = Repl(controller, gdb_label=label)
    log.repl = repl
    if server is not None:
        server.start()
        repl.post(FormattedText([("class:dim", f"GDB stub on {server.host}:{server.port} "
                                               f"(gdb: target remote {server.host}:"
                                               f"{server.port})\n")]))
    try:
        if stdin.isatty():
            session.console_input.open()   # a guest waiting for console input sleeps
            return repl.run()
        return repl.run_script(stdin)
    finally:
        if server is not None:
            server.shutdown()
        session.close()


__all__ = ["launch_repl", "GdbListenError"]
