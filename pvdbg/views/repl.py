"""The pvdbg REPL: a prompt-toolkit front end over the same engine as the GDB stub.

The guest runs in a worker thread (Controller.start), so the prompt and the bottom
status line stay live while it runs; stops, console output and followed hypercalls
are printed above the prompt.  Commands come from the table in pvdbg/monitor.py (what
gdb's `monitor` answers) plus the execution commands registered here with
scope="repl" (continue, step, break, ...), which receive the Repl instead of the
Session.  Ctrl-C stops a running guest, Ctrl-D exits.
"""
from __future__ import annotations

import asyncio
import os
import queue
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import DummyOutput, Output, create_output
from prompt_toolkit.output.plain_text import PlainTextOutput
from prompt_toolkit.shortcuts import print_formatted_text

from .. import monitor
from ..debug import CatchSpecError
from ..monitor import MonitorError, command, parse_hypercall_query, resolve, split_line
from ..session import SessionError, StopReason, Stopped
from ..trace import TraceKind
from ..xen.constants import Hc
from ..xen.guestmem import GuestFault
from . import gather, render
from .completer import ReplCompleter
from .control import Controller, EngineBusy, Runner, StopNotice
from .keys import load_repl_bindings, load_wait_bindings
from .style import color_depth, color_enabled, is_dumb_terminal, repl_style

TICK_S = 0.1                      # how often output and the status line are refreshed
MAX_LINE_STEPS = 1_000_000        # instructions `step`/`next` may take for one line
EXIT_STOP_TIMEOUT_S = 10.0
TRANSCRIPT_LINES = 20_000


class ReplExit(Exception):
    """`quit` was typed."""


def history_path(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/pvdbg/history, else ~/.local/state/pvdbg/history."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pvdbg" / "history"


def open_history(environ: Mapping[str, str] | None = None) -> tuple[History, str | None]:
    """A FileHistory in the state directory, or an in-memory one and why."""
    path = history_path(environ)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return FileHistory(str(path)), None
    except OSError as exc:
        return InMemoryHistory(), f"history not kept: cannot write {path}: {exc.strerror}"


@dataclass
class UserBreakpoint:
    number: int
    kind: str                 # "breakpoint", or a watch kind: "write", "read", "access"
    guest_va: int
    length: int
    spec: str                 # what the user typed
    hits: int = 0


class HypercallTap:
    """A trace listener (hv.listeners) that keeps what `hypercalls follow` asked for, with
    the console records between them so both print in order.  Registered once and
    switched with `filt`; called on the emulation thread."""

    def __init__(self) -> None:
        self.filt: render.HypercallFilter | None = None
        self.pending: deque = deque(maxlen=10_000)

    def on_trace(self, record) -> None:
        filt = self.filt
        if filt is None:
            return
        if record.kind is TraceKind.console or (record.kind in render.HYPERCALL_KINDS
                                                 and filt.matches(record)):
            self.pending.append(record)


class Repl:
    """One REPL over a Controller.  `input`/`output` default to the terminal; tests pass
    create_pipe_input() and DummyOutput() and read `transcript`."""

    def __init__(self, controller: Controller, *, input=None, output: Output | None = None,
                 history: History | None = None, color: bool | None = None,
                 gdb_label: Callable[[], str | None] | None = None) -> None:
        self.controller = controller
        self.session = controller.session
        self.color = color_enabled() if color is None else color
        self.style = repl_style(self.color)
        self.input = input
        self.dumb = is_dumb_terminal()
        self.output = output if output is not None else create_output()
        if self.dumb and not isinstance(self.output, DummyOutput):
            self.output = PlainTextOutput(sys.stdout)
        self.history_note: str | None = None
        if history is None:
            history, self.history_note = open_history()
        self.history = history
        self.gdb_label = gdb_label
        self.breakpoints: dict[int, UserBreakpoint] = {}
        self._next_breakpoint = 1
        self.transcript: deque[str] = deque(maxlen=TRANSCRIPT_LINES)
        self._transcript_changed = threading.Condition()
        self._messages: queue.SimpleQueue[FormattedText] = queue.SimpleQueue()
        self._running_command = ""
        self._tap = HypercallTap()
        self._follow_columns: render.HypercallColumns | None = None
        self.console_echo = True
        self._console_seen = len(self.session.hv.domain.console)
        self._status_cache: gather.Status | None = None
        self._gdb_attached_seen = False
        self._was_running = False
        self._wait_app: Application | None = None
        self._prompt: PromptSession | None = None
        self._last_line = ""
        with controller.inspect() as session:
            session.hv.listeners.append(self._tap)
            self._status_cache = gather.gather_status(session, None, self._gdb_text())
        controller.listeners.append(self._on_stop)

    # -- output ------------------------------------------------------------------------
    def width(self) -> int | None:
        if isinstance(self.output, PlainTextOutput):
            return None
        try:
            return max(20, self.output.get_size().columns)
        except Exception:          # some outputs cannot tell
            return None

    def emit(self, text: FormattedText | str) -> None:
        """Print above the prompt (on the REPL's own thread) and keep it in the transcript."""
        if isinstance(text, str):
            text = render.message(text)
        if not text:
            return
        plain = render.to_plain(text)
        with self._transcript_changed:
            self.transcript.extend(plain.splitlines())
            self._transcript_changed.notify_all()
        print_formatted_text(text, end="", style=self.style, output=self.output,
                             color_depth=color_depth(self.color and not self.dumb),
                             include_default_pygments_style=False)

    def post(self, text: FormattedText | str) -> None:
        """Thread-safe: queue output for the REPL's thread."""
        self._messages.put(render.message(text) if isinstance(text, str) else text)

    def transcript_text(self) -> str:
        with self._transcript_changed:
            return "\n".join(self.transcript)

    def wait_for_output(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Block until predicate(transcript text) holds (for tests and scripts)."""
        with self._transcript_changed:
            return self._transcript_changed.wait_for(
                lambda: predicate("\n".join(self.transcript)), timeout)

    def _gdb_text(self) -> str | None:
        """Who holds the guest when gdb is attached (the status line's gdb part)."""
        holder = self.controller.holder_text()
        if holder is not None or self.gdb_label is None:
            return holder
        return self.gdb_label()

    # -- stops (called by the Controller with the engine held) -------------------------
    def _on_stop(self, notice: StopNotice) -> None:
        session = self.session
        who = "gdb" if notice.runner is Runner.gdb else ""
        if notice.error is not None:
            self.post(render.error_text(f"the run ended with an engine error: {notice.error}"))
        elif notice.stop is not None:
            self.post(self._describe_stop(notice.stop, who))
            if notice.held:
                self.post(FormattedText([("class:dim", "the REPL holds the guest; gdb still "
                                          "waits for its continue: continue hands the guest "
                                          "back to it, stop --to-gdb ends it with SIGINT\n")]))
        elif notice.note:
            self.post(FormattedText([("class:dim", notice.note + "\n")]))
        self._status_cache = gather.gather_status(session, None, self._gdb_text())

    def _describe_stop(self, stop: Stopped, who: str) -> FormattedText:
        session = self.session
        symbol = gather.symbol_at(session, stop.eip)
        location = gather.source_location(session, stop.eip)
        reason = detail = None
        if stop.reason is StopReason.breakpoint:
            numbered = [bp for bp in self.breakpoints.values()
                        if bp.kind == "breakpoint" and bp.guest_va == stop.address]
            if numbered:
                numbered[0].hits += 1
                reason = f"breakpoint {numbered[0].number}"
            elif not who and stop.address not in self.controller.gdb_breakpoints \
                    and self._running_command:
                reason = self._running_command          # until/finish/next's own breakpoint
        elif stop.reason is StopReason.watchpoint:
            for bp in self.breakpoints.values():
                if bp.kind != "breakpoint" and \
                        bp.guest_va <= (stop.address or 0) < bp.guest_va + bp.length:
                    bp.hits += 1
                    reason, detail = f"watchpoint {bp.number}", stop.detail
                    break
        elif stop.reason is StopReason.step and self._running_command and not who:
            reason = self._running_command
        out = list(render.stop_notice(stop, symbol, location, who, reason, detail))
        if stop.reason not in (StopReason.shutdown, StopReason.crash, StopReason.blocked):
            try:
                line = gather.disassembly(session, stop.eip, 1)
                out += render.disassembly_text([_plain_pc(line[0])], self.width())
            except gather.ViewError:
                pass
        return FormattedText(out)

    # -- status line ---------------------------------------------------------------------
    def status(self) -> gather.Status:
        controller = self.controller
        if controller.running:
            who = "resumed by gdb" if controller.runner is Runner.gdb else self._running_command
            return gather.gather_status(self.session, who or "continue", self._gdb_text())
        with controller.peek() as session:
            if session is not None:
                self._status_cache = gather.gather_status(session, None, self._gdb_text())
        return self._status_cache

    def _toolbar(self) -> FormattedText:
        return render.status_line(self.status(), self.width())

    def _prompt_message(self) -> FormattedText:
        if self.controller.running:
            return FormattedText([("class:prompt.running", "(pvdbg: running) ")])
        return FormattedText([("class:prompt", "(pvdbg) ")])

    # -- the periodic tick ---------------------------------------------------------------
    def tick(self) -> None:
        """Print what happened since the last tick: console output, followed hypercalls,
        stops, gdb attaching or leaving; refresh the status line."""
        if self.console_echo and self._tap.filt is None:
            console = self.session.hv.domain.console
            if len(console) > self._console_seen:
                data = bytes(console[self._console_seen:])
                self._console_seen += len(data)
                self.emit(FormattedText([("class:console", data.decode("latin-1"))]))
                if not data.endswith(b"\n"):
                    self.emit("")
        if self._tap.pending:
            out: list[tuple[str, str]] = []
            columns = self._follow_columns or render.HypercallColumns(24, True)
            while self._tap.pending:
                record = self._tap.pending.popleft()
                if record.kind is TraceKind.console:
                    self._console_seen += len(record.detail)
                    if self.console_echo:
                        out.append(("class:console", record.detail))
                        if not record.detail.endswith("\n"):
                            out.append(("", "\n"))
                else:
                    out += render.hypercall_row(record, columns, self.width())
            self.emit(FormattedText(out))
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                break
            self.emit(message)
        attached = self.controller.gdb_attached
        if attached != self._gdb_attached_seen:
            self._gdb_attached_seen = attached
            self.emit(FormattedText([("class:dim", "gdb attached: it holds the guest; while "
                                                   "gdb's continue runs, stop holds the guest "
                                                   "here and continue resumes it\n" if attached
                                      else "gdb detached\n")]))
        if self._wait_app is not None and not self.controller.running:
            self._wait_app.exit()
        running = self.controller.running
        app = self._prompt.app if self._prompt is not None else None
        if app is not None and app.is_running and (running or running != self._was_running):
            app.invalidate()                    # the status line follows the guest
        self._was_running = running

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception as exc:         # never let the ticker die silently
                self.emit(render.error_text(f"display: {type(exc).__name__}: {exc}"))

    # -- commands ------------------------------------------------------------------------
    def execute(self, line: str) -> None:
        """Run one command line; output goes to `emit`.  Raises ReplExit for quit."""
        line = line.strip()
        if not line:
            if self._last_line.split()[:1] and self._last_line.split()[0] in _REPEATABLE:
                line = self._last_line
            else:
                return
        self._last_line = line
        width_token = render.OUTPUT_WIDTH.set(self.width())
        scope_token = monitor.COMMAND_SCOPE.set("repl")
        try:
            words = split_line(line)
            cmd = resolve(words[0], "repl")
            if cmd is None:
                raise MonitorError(f"unknown command {words[0]!r}; try 'help'")
            if cmd.scope == "repl":
                out = cmd.fn(self, words[1:])
            elif cmd.name in _REPL_OVERRIDES and _REPL_OVERRIDES[cmd.name](self, words[1:]):
                out = None
            elif cmd.live:
                out = cmd.fn(self.session, words[1:])
            else:
                with self.controller.inspect() as session:
                    out = cmd.fn(session, words[1:])
            if out is not None:
                self.emit(out)
        except ReplExit:
            raise
        except (MonitorError, EngineBusy, gather.ViewError, CatchSpecError, SessionError) as exc:
            self.emit(render.error_text(str(exc)))
        except GuestFault as fault:
            self.emit(render.error_text(str(fault)))
        except Exception as exc:        # a pvdbg bug: say so, keep the REPL alive
            self.emit(render.error_text(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            monitor.COMMAND_SCOPE.reset(scope_token)
            render.OUTPUT_WIDTH.reset(width_token)

    def start(self, what: str, action: Callable) -> None:
        """Run `action(session)` in the worker; the stop is printed when it comes."""
        self._running_command = what
        self.controller.start(action, what)

    def stop_guest(self) -> None:
        if self.controller.request_stop():
            self.post(FormattedText([("class:dim", "stopping the guest...\n")]))

    def address(self, text: str) -> int:
        with self.controller.inspect() as session:
            return monitor.address_of(session, text)

    # -- running the REPL ------------------------------------------------------------------
    def _make_prompt(self) -> PromptSession:
        return PromptSession(
            message=self._prompt_message, bottom_toolbar=self._toolbar, style=self.style,
            color_depth=color_depth(self.color), include_default_pygments_style=False,
            history=self.history, completer=self._completer(), complete_while_typing=False,
            key_bindings=load_repl_bindings(lambda: self.controller.running, self.stop_guest),
            input=self.input, output=self.output, enable_history_search=True,
            erase_when_done=False)

    def _completer(self) -> ReplCompleter:
        symbols = self.session.image.symbols.names()
        hypercalls = tuple(sorted(Hc.__members__))

        def commands() -> dict[str, tuple[str, ...]]:
            table = {}
            for name, cmd in monitor.COMMANDS.items():
                table[name] = cmd.complete
                for alias in cmd.aliases:
                    table[alias] = cmd.complete
            return table
        return ReplCompleter(commands, lambda: symbols, lambda: hypercalls)

    def banner(self) -> FormattedText:
        image = self.session.image
        out = [("class:label", "pvdbg"), ("", f" {image.path}: "),
               ("", f"{len(image.symbols)} symbols, halted at its first instruction "
                    f"({gather.symbol_at(self.session, self.session.cpu.read('eip')) or 'entry'})\n"),
               ("class:dim", "help lists commands; continue runs the guest, Ctrl-C stops it, "
                             "Ctrl-D exits\n")]
        if self.history_note:
            out.append(("class:warning", self.history_note + "\n"))
        return FormattedText(out)

    async def run_async(self) -> int:
        """The interactive loop; returns when the user quits or input ends."""
        self._prompt = self._make_prompt()
        self.emit(self.banner())
        ticker = asyncio.create_task(self._ticker())
        try:
            while True:
                try:
                    line = await self._prompt.prompt_async()
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                try:
                    self.execute(line)
                    if _words(line)[:1] == ["wait"]:
                        await self.wait_foreground(_wait_timeout(line))
                except ReplExit:
                    break
                self.tick()
        finally:
            ticker.cancel()
            self.shutdown()
            self.tick()
        return 0

    def run(self) -> int:
        return asyncio.run(self.run_async())

    async def wait_foreground(self, timeout: float | None) -> None:
        """Wait for the guest to stop, with the status line live; Ctrl-C stops it."""
        if not self.controller.running:
            return
        layout = Layout(HSplit([
            Window(FormattedTextControl(lambda: [("class:dim", "waiting for the guest to stop "
                                                               "(Ctrl-C stops it)")]), height=1),
            Window(FormattedTextControl(self._toolbar), height=1, style="class:bottom-toolbar")]))
        self._wait_app = Application(layout=layout, key_bindings=load_wait_bindings(
            self.stop_guest), style=self.style, color_depth=color_depth(self.color),
            include_default_pygments_style=False, input=self.input, output=self.output,
            erase_when_done=True, refresh_interval=TICK_S)
        ticker = asyncio.create_task(self._ticker())
        try:
            if timeout is None:
                await self._wait_app.run_async()
            else:
                try:
                    await asyncio.wait_for(self._wait_app.run_async(), timeout)
                except asyncio.TimeoutError:
                    self.emit(FormattedText([("class:dim", f"still running after {timeout} s\n")]))
        finally:
            self._wait_app = None
            ticker.cancel()
        self.tick()

    def run_script(self, lines) -> int:
        """Non-interactive: each line runs to completion (a run waits for its stop)."""
        self.emit(self.banner())
        try:
            for line in lines:
                self.emit(FormattedText([("class:prompt", "(pvdbg) "), ("", line.rstrip("\n") + "\n")]))
                try:
                    self.execute(line)
                except ReplExit:
                    break
                if self.controller.running and _words(line)[:1] != ["stop"]:
                    self.controller.wait_stopped()
                self.tick()
        finally:
            self.shutdown()
            self.tick()
        return 0

    def shutdown(self) -> None:
        """Stop a guest the REPL is running before leaving; a hold goes back to gdb."""
        if self.controller.runner is Runner.repl:
            self.stop_guest()
            self.controller.wait_stopped(EXIT_STOP_TIMEOUT_S)
        if self.controller.held:
            self.controller.request_stop(to_gdb=True)


def _words(line: str) -> list[str]:
    try:
        return split_line(line)
    except MonitorError:
        return []


def _wait_timeout(line: str) -> float | None:
    words = _words(line)
    try:
        return float(words[1]) if len(words) > 1 else None
    except ValueError:
        return None


def _plain_pc(line: gather.DisasLine) -> gather.DisasLine:
    """The one-instruction display after a stop: no label or source header."""
    return gather.DisasLine(line.address, line.raw, line.text, None, line.symbol, None, None,
                            line.target, True, line.breakpoint)


_REPEATABLE = {"stepi", "si", "step", "s", "next", "n"}


# -- execution actions (run in the worker, engine held) -------------------------------------
def _read_u32(session, guest_va: int) -> int | None:
    try:
        return struct.unpack("<I", session.read_memory(guest_va, 4))[0]
    except GuestFault:
        return None


def run_to(session, guest_va: int, interrupted: threading.Event,
           above_esp: int | None = None) -> Stopped:
    """Run until EIP reaches `guest_va` (with ESP > above_esp when given, so a recursive
    call does not count), or anything else stops the guest."""
    added = guest_va not in session.debug.breakpoints
    if added:
        session.add_breakpoint(guest_va)
    try:
        while True:
            if interrupted.is_set():
                return session.step(0)
            stop = session.run()
            if not (stop.reason is StopReason.breakpoint and stop.eip == guest_va):
                return stop
            if above_esp is None or session.cpu.read("esp") > above_esp:
                return stop
    finally:
        if added:
            session.remove_breakpoint(guest_va)


def step_line(session, over: bool, interrupted: threading.Event) -> Stopped:
    """gdb's step (over=False) or next (over=True) by DWARF lines: instructions until the
    source line changes.  Functions without line information (the hypercall page) and,
    for next, every call, are run through to their return."""
    symbols = session.image.symbols
    eip = session.cpu.read("eip")
    start_line = symbols.line_for(eip)
    if start_line is None:
        return session.step(1)
    stop = None
    for _ in range(MAX_LINE_STEPS):
        esp_before = session.cpu.read("esp")
        stop = session.step(1)
        if stop.reason is not StopReason.step or interrupted.is_set():
            return stop
        esp = session.cpu.read("esp")
        symbol = symbols.symbol_for(stop.eip)
        called = esp == esp_before - 4 and symbol is not None and symbol.address == stop.eip
        if called and (over or symbols.line_for(stop.eip) is None):
            ret = _read_u32(session, esp)
            if ret is None:
                return stop
            stop = run_to(session, ret, interrupted, above_esp=esp)
            if not (stop.reason is StopReason.breakpoint and stop.eip == ret):
                return stop
        line = symbols.line_for(stop.eip)
        if line != start_line:
            return stop
    return stop


# -- REPL commands (scope="repl": fn(repl, args)) ---------------------------------------------
def _count(args: list[str], default: int = 1) -> int:
    if not args:
        return default
    try:
        value = int(args[0], 0)
    except ValueError:
        raise MonitorError(f"count must be a number, not {args[0]!r}") from None
    if value <= 0:
        raise MonitorError("count must be positive")
    return value


@command("continue", "continue", "run the guest until something stops it (it runs in the "
                                 "background: the prompt stays live; stop or Ctrl-C stops it)",
         aliases=("c", "run", "r", "cont"), scope="repl")
def _continue(repl: Repl, args: list[str]) -> FormattedText:
    repl.start("continue", lambda session: session.run())
    return FormattedText([("class:dim", "continuing\n")])


@command("stop", "stop [--to-gdb]", "stop the running guest (also Ctrl-C); a guest gdb "
                                    "resumed is held here while gdb waits (continue resumes "
                                    "it); --to-gdb ends gdb's resume with SIGINT instead",
         aliases=("interrupt",), scope="repl", live=True, complete=("--to-gdb",))
def _stop(repl: Repl, args: list[str]) -> FormattedText | None:
    if args not in ([], ["--to-gdb"]):
        raise MonitorError("usage: stop [--to-gdb]")
    controller = repl.controller
    to_gdb = bool(args)
    if to_gdb and not controller.gdb_pending:
        raise MonitorError("gdb has no resume waiting for a stop" if controller.gdb_attached
                           else "gdb is not attached")
    if not controller.running and not to_gdb:
        raise MonitorError("the guest is not running" + (
            " (the REPL holds it; gdb waits: continue or stop --to-gdb)"
            if controller.held else ""))
    if controller.request_stop(to_gdb=to_gdb):
        repl.post(FormattedText([("class:dim", "stopping the guest...\n" if not to_gdb else
                                  "handing the guest to gdb (SIGINT)...\n")]))
    return None


@command("stepi", "stepi [N]", "execute N instructions (a hypercall completes within its "
                               "int $0x82)", aliases=("si",), scope="repl")
def _stepi(repl: Repl, args: list[str]) -> None:
    count = _count(args)
    interrupted = repl.controller.interrupted
    repl.start("stepi", lambda session: _repeat(count, lambda: session.step(1), interrupted))


@command("step", "step [N]", "run to the next source line (N times), into calls that have "
                             "line information", aliases=("s",), scope="repl")
def _step(repl: Repl, args: list[str]) -> None:
    count = _count(args)
    interrupted = repl.controller.interrupted
    repl.start("step", lambda session: _repeat(
        count, lambda: step_line(session, False, interrupted), interrupted))


@command("next", "next [N]", "run to the next source line (N times), over calls",
         aliases=("n",), scope="repl")
def _next(repl: Repl, args: list[str]) -> None:
    count = _count(args)
    interrupted = repl.controller.interrupted
    repl.start("next", lambda session: _repeat(
        count, lambda: step_line(session, True, interrupted), interrupted))


def _repeat(count: int, once: Callable[[], Stopped], interrupted: threading.Event) -> Stopped:
    """`once()` up to `count` times, while it keeps ending in a plain step."""
    stop = once()
    for _ in range(count - 1):
        if stop.reason is not StopReason.step or interrupted.is_set():
            break
        stop = once()
    return stop


@command("until", "until SYMBOL|ADDRESS", "run until EIP reaches that address (or something "
                                          "else stops the guest)",
         aliases=("u", "advance"), scope="repl", complete=("@symbol",))
def _until(repl: Repl, args: list[str]) -> FormattedText:
    if len(args) != 1:
        raise MonitorError("usage: until SYMBOL|ADDRESS")
    target = repl.address(args[0])
    interrupted = repl.controller.interrupted
    repl.start("until", lambda session: run_to(session, target, interrupted))
    return FormattedText([("class:dim", f"running until {target:#x}\n")])


@command("finish", "finish", "run until the current function returns", aliases=("fin",),
         scope="repl")
def _finish(repl: Repl, args: list[str]) -> FormattedText:
    with repl.controller.inspect() as session:
        frames, _ = gather.backtrace(session, 2)
        esp = session.cpu.read("esp")
    if len(frames) < 2:
        raise MonitorError("finish: no caller frame (outermost function)")
    ret = frames[1].eip
    interrupted = repl.controller.interrupted
    repl.start("finish", lambda session: run_to(session, ret, interrupted, above_esp=esp))
    function = (frames[0].symbol or hex(frames[0].eip)).split("+")[0]
    return FormattedText([("class:dim", f"running until {function} returns to "
                                        f"{frames[1].symbol or hex(ret)}\n")])


@command("wait", "wait [SECONDS]", "wait in the foreground until the guest stops (status "
                                   "line live, Ctrl-C stops it)", scope="repl", live=True)
def _wait(repl: Repl, args: list[str]) -> None:
    if args:
        try:
            float(args[0])
        except ValueError:
            raise MonitorError(f"seconds must be a number, not {args[0]!r}") from None
    if not repl.controller.running:
        repl.emit(FormattedText([("class:dim", "the guest is not running\n")]))


@command("break", "break SYMBOL|ADDRESS", "stop before the instruction at that address",
         aliases=("b", "br"), scope="repl", complete=("@symbol",))
def _break(repl: Repl, args: list[str]) -> FormattedText:
    if len(args) != 1:
        raise MonitorError("usage: break SYMBOL|ADDRESS")
    guest_va = repl.address(args[0])
    repl.controller.add_breakpoint(guest_va)
    bp = _new_breakpoint(repl, "breakpoint", guest_va, 1, args[0])
    where = gather.symbol_at(repl.session, guest_va)
    location = gather.source_location(repl.session, guest_va)
    return FormattedText([("class:label", f"breakpoint {bp.number}"), ("", " at "),
                          ("class:address", f"{guest_va:#x}")]
                         + ([("", " <"), ("class:symbol", where), ("", ">")] if where else [])
                         + ([("", " "), ("class:location", location)] if location else [])
                         + [("", "\n")])


def _new_breakpoint(repl: Repl, kind: str, guest_va: int, length: int, spec: str) -> UserBreakpoint:
    for bp in repl.breakpoints.values():
        if (bp.kind, bp.guest_va, bp.length) == (kind, guest_va, length):
            return bp
    bp = UserBreakpoint(repl._next_breakpoint, kind, guest_va, length, spec)
    repl._next_breakpoint += 1
    repl.breakpoints[bp.number] = bp
    return bp


@command("watch", "watch [-r|-a] SYMBOL|ADDRESS [LENGTH]",
         "stop after an instruction writes (-r: reads, -a: reads or writes) LENGTH bytes "
         "(default 4) there", scope="repl", complete=("@symbol", "-r", "-a"))
def _watch(repl: Repl, args: list[str]) -> FormattedText:
    kind = "write"
    rest = list(args)
    if rest and rest[0] in ("-r", "-a", "-w"):
        kind = {"-r": "read", "-a": "access", "-w": "write"}[rest.pop(0)]
    if not 1 <= len(rest) <= 2:
        raise MonitorError("usage: watch [-r|-a] SYMBOL|ADDRESS [LENGTH]")
    guest_va = repl.address(rest[0])
    length = _count(rest[1:], 4)
    try:
        repl.controller.add_watchpoint(kind, guest_va, length)
    except GuestFault as fault:
        raise MonitorError(f"cannot watch {rest[0]}: {fault.reason}") from None
    bp = _new_breakpoint(repl, kind, guest_va, length, rest[0])
    return FormattedText([("class:label", f"watchpoint {bp.number}"),
                          ("", f" ({kind}) on {length} bytes at "),
                          ("class:address", f"{guest_va:#x}"), ("", "\n")])


@command("delete", "delete [N...] | delete catch N",
         "delete breakpoints/watchpoints N (all of them, and every catchpoint, without N)",
         aliases=("d",), scope="repl", complete=("catch",))
def _delete(repl: Repl, args: list[str]) -> FormattedText:
    session = repl.session
    if args and args[0] == "catch":
        if len(args) != 2:
            raise MonitorError("usage: delete catch N")
        with repl.controller.inspect():
            if not session.remove_catchpoint(_count(args[1:])):
                raise MonitorError(f"no catchpoint {args[1]}")
        return render.message(f"deleted catchpoint {args[1]}")
    numbers = [_count([a]) for a in args] if args else list(repl.breakpoints)
    for number in numbers:
        if number not in repl.breakpoints:
            raise MonitorError(f"no breakpoint {number}")
    for number in numbers:
        bp = repl.breakpoints.pop(number)
        if bp.kind == "breakpoint":
            repl.controller.remove_breakpoint(bp.guest_va)
        else:
            repl.controller.remove_watchpoint(bp.kind, bp.guest_va, bp.length)
    if not args:
        with repl.controller.inspect():
            for number in list(session.debug.catchpoints):
                session.remove_catchpoint(number)
        return render.message("deleted all breakpoints, watchpoints and catchpoints")
    return render.message("deleted " + ", ".join(str(n) for n in numbers))


@command("breakpoints", "breakpoints", "list breakpoints, watchpoints and catchpoints (the "
                                       "REPL's and gdb's)", aliases=("bl",), scope="repl",
         live=True)
def _breakpoints(repl: Repl, args: list[str]) -> FormattedText:
    def where(guest_va: int) -> str:
        name = gather.symbol_at(repl.session, guest_va)
        return f"{guest_va:#x}" + (f" <{name}>" if name else "")

    rows = []
    for bp in repl.breakpoints.values():
        kind = "breakpoint" if bp.kind == "breakpoint" else f"watch {bp.kind} {bp.length}"
        rows.append(render.BreakpointRow(str(bp.number), kind, where(bp.guest_va),
                                         f"hit {bp.hits} times" if bp.hits else ""))
    for cp in list(repl.session.debug.catchpoints.values()):
        rows.append(render.BreakpointRow(f"catch {cp.number}", "catch", cp.description,
                                         f"hit {cp.hits} times" if cp.hits else ""))
    for guest_va in sorted(repl.controller.gdb_breakpoints):
        rows.append(render.BreakpointRow("gdb", "breakpoint", where(guest_va)))
    for kind, guest_va, length in sorted(repl.controller.gdb_watchpoints):
        rows.append(render.BreakpointRow("gdb", f"watch {kind} {length}", where(guest_va)))
    return render.breakpoint_table(rows)


@command("info", "info breakpoints|registers|threads|frame",
         "gdb's spellings: breakpoints, regs, vcpu, bt", aliases=("i",), scope="repl",
         complete=("breakpoints", "registers", "threads", "frame"))
def _info(repl: Repl, args: list[str]) -> None:
    if not args:
        raise MonitorError("usage: info breakpoints|registers|threads|frame")
    target = {"b": "breakpoints", "br": "breakpoints", "breakpoints": "breakpoints",
              "break": "breakpoints", "watchpoints": "breakpoints", "r": "regs",
              "registers": "regs", "reg": "regs", "threads": "vcpu", "vcpus": "vcpu",
              "frame": "bt", "stack": "bt"}.get(args[0])
    if target is None:
        raise MonitorError(f"info {args[0]}: try info breakpoints|registers|threads|frame")
    repl.execute(" ".join([target, *args[1:]]))


@command("gdb", "gdb", "the GDB stub sharing this guest (with --gdb PORT)", scope="repl",
         live=True)
def _gdb(repl: Repl, args: list[str]) -> FormattedText:
    if repl.gdb_label is None:
        return render.message("no GDB stub: start the REPL with --gdb PORT")
    label = repl.gdb_label()
    holder = repl.controller.holder_text()
    return render.message(f"{label}: gdb attached, {holder}" if holder else
                          f"{label}: gdb not attached")


@command("quit", "quit", "leave pvdbg (also Ctrl-D); a running guest is stopped first",
         aliases=("q", "exit"), scope="repl", live=True)
def _quit(repl: Repl, args: list[str]) -> None:
    raise ReplExit()


# -- REPL forms of shared commands -----------------------------------------------------------
def _hypercalls_follow(repl: Repl, args: list[str]) -> bool:
    """`hypercalls ... follow [off]`: print matching hypercalls as they happen."""
    if "follow" not in args and "-f" not in args:
        return False
    if "off" in args:
        repl._tap.filt = None
        repl.tick()
        repl._console_seen = len(repl.session.hv.domain.console)
        repl.emit(render.message("no longer following hypercalls", "class:dim"))
        return True
    query = parse_hypercall_query([a for a in args if a != "off"])
    records = render.select_hypercalls(repl.session.trace, query.filt, query.count)
    width = repl.width()
    repl._follow_columns = render.hypercall_columns(records, width) if records else \
        render.HypercallColumns(min(24, (width or 96) // 4), True)
    repl.tick()
    if records:
        repl.emit(render.hypercall_table(records, width))
    repl.emit(render.message("following hypercalls (hypercalls follow off to stop)", "class:dim"))
    repl._tap.filt = query.filt
    return True


def _console_echo(repl: Repl, args: list[str]) -> bool:
    if args[:1] != ["echo"]:
        return False
    if len(args) != 2 or args[1] not in ("on", "off"):
        raise MonitorError("usage: console echo on|off")
    repl.console_echo = args[1] == "on"
    repl._console_seen = len(repl.session.hv.domain.console)
    repl.emit(render.message(f"console echo {args[1]}", "class:dim"))
    return True


_REPL_OVERRIDES: dict[str, Callable[[Repl, list[str]], bool]] = {
    "hypercalls": _hypercalls_follow,
    "console": _console_echo,
}

__all__ = ["Repl", "ReplExit", "history_path", "open_history", "run_to", "step_line",
           "UserBreakpoint", "HypercallTap"]
