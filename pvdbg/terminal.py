"""`pvdbg run`'s keyboard: stdin connected to the guest's PV console.

On a terminal (stdin and stdout are ttys and pvdbg is in the foreground) the terminal is
switched to raw input once the guest first reads its console input ring, so every key
(Ctrl-C included) goes to the guest as xl console passes it; Ctrl-] ends the run.  The
terminal's settings are put back by `close` (and at exit).  Otherwise stdin is a pipe
or file: its bytes are typed into the console as they come, and its end closes the
console input, so a guest left waiting for input at its prompt ends the run
(StopReason.idle).
"""
from __future__ import annotations

import atexit
import os
import select
import sys
import threading
from typing import Callable

QUIT_BYTE = 0x1D                 # Ctrl-]
READ_CHUNK = 4096
POLL_S = 0.1


def input_mode(fd: int) -> str:
    """How to read stdin: "raw" (a terminal we may take over: stdin and stdout ttys,
    this process in the foreground), "line" (a foreground terminal with stdout
    redirected: cooked lines), "none" (a terminal owned by another process group:
    reading it would stop us with SIGTTIN) or "pipe" (a pipe or file)."""
    try:
        if not os.isatty(fd):
            return "pipe"
        if os.tcgetpgrp(fd) != os.getpgrp():
            return "none"
    except OSError:
        return "none"
    return "raw" if sys.stdout.isatty() else "line"


class ConsoleTerminal:
    """Feeds stdin to `session.console_input` from a reader thread (see module doc)."""

    def __init__(self, session, fd: int | None = None,
                 on_quit: Callable[[], None] | None = None,
                 notice: Callable[[str], None] | None = None) -> None:
        self.session = session
        if fd is None:
            try:
                fd = sys.stdin.fileno()
            except (AttributeError, OSError, ValueError):   # replaced or closed stdin
                fd = -1
        self.fd = fd
        self.mode = input_mode(fd) if fd >= 0 else "none"
        self.interactive = self.mode == "raw"
        self.on_quit = on_quit
        self.notice = notice or (lambda text: (sys.stderr.write(text), sys.stderr.flush()))
        self.quit_requested = False
        self._saved_mode = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.mode == "none":
            return                       # console input stays closed
        self.session.console_input.open()
        self._thread = threading.Thread(target=self._reader, name="pvdbg-console-input",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading and give the terminal its settings back."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._restore()

    # -- the reader thread ------------------------------------------------------------
    def _reader(self) -> None:
        try:
            if self.mode in ("raw", "line"):         # a terminal: only once the guest reads
                self._wait_for_guest_reader()
                if self._stop.is_set():
                    return
                if self.interactive:
                    self._enter_raw()
            while not self._stop.is_set():
                ready, _, _ = select.select([self.fd], [], [], POLL_S)
                if not ready:
                    continue
                try:
                    data = os.read(self.fd, READ_CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                if self.interactive and QUIT_BYTE in data:
                    data = data[:data.index(QUIT_BYTE)]
                    if data:
                        self.session.console_input.feed(data)
                    self.quit_requested = True
                    if self.on_quit is not None:
                        self.on_quit()
                    return
                self.session.console_input.feed(data)
        except (OSError, ValueError):
            pass
        if not self.interactive or not self._stop.is_set():
            self.session.console_input.close()

    def _wait_for_guest_reader(self) -> None:
        polled = self.session.input_watch.ever_polled
        while not self._stop.is_set() and not polled.wait(POLL_S):
            pass

    # -- terminal modes ------------------------------------------------------------------
    def _enter_raw(self) -> None:
        import termios
        with self._lock:
            if self._stop.is_set():
                return
            try:
                saved = termios.tcgetattr(self.fd)
            except termios.error:
                return
            mode = list(saved)
            mode[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP
                         | termios.IXON)                       # iflag
            mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8   # cflag
            mode[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)  # lflag
            mode[6] = list(mode[6])
            mode[6][termios.VMIN] = 1
            mode[6][termios.VTIME] = 0
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, mode)   # output stays cooked
            self._saved_mode = saved
            atexit.register(self._restore)
        self.notice("pvdbg: connected to the guest console (Ctrl-] quits)\r\n")

    def _restore(self) -> None:
        import termios
        with self._lock:
            saved, self._saved_mode = self._saved_mode, None
            if saved is None:
                return
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
            except termios.error:
                pass
