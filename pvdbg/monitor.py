"""Text commands over the engine, shared by gdb's `monitor` and the REPL.

Table-driven: each command is registered once with its help; output is plain text
produced by the renderers in pvdbg/views/text.py (pure functions of engine data).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable

from .debug import CatchSpecError
from .trace import write_jsonl
from .views import text


class MonitorError(Exception):
    """A command that cannot run (one line, shown to the user)."""


@dataclass(frozen=True)
class MonitorCommand:
    name: str
    usage: str
    help: str
    fn: Callable[["object", list[str]], str]


COMMANDS: dict[str, MonitorCommand] = {}


def command(name: str, usage: str, help_text: str):
    def register(fn):
        assert name not in COMMANDS, name
        COMMANDS[name] = MonitorCommand(name, usage, help_text, fn)
        return fn
    return register


def run_monitor(session, line: str) -> str:
    """Run one command line; raises MonitorError with a one-line message."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise MonitorError(f"cannot parse: {exc}") from None
    if not words:
        return run_monitor(session, "help")
    cmd = COMMANDS.get(words[0])
    if cmd is None:
        raise MonitorError(f"unknown command {words[0]!r}; try 'help'")
    return cmd.fn(session, words[1:])


def _int(word: str, what: str) -> int:
    try:
        return int(word, 0)
    except ValueError:
        raise MonitorError(f"{what} must be a number, not {word!r}") from None


@command("help", "help [COMMAND]", "list commands, or show one command's usage")
def _help(session, args: list[str]) -> str:
    if args:
        cmd = COMMANDS.get(args[0])
        if cmd is None:
            raise MonitorError(f"no command {args[0]!r}")
        return f"{cmd.usage}\n  {cmd.help}\n"
    width = max(len(c.usage) for c in COMMANDS.values())
    return "".join(f"{c.usage:<{width}}  {c.help}\n" for c in sorted(COMMANDS.values(),
                                                                     key=lambda c: c.name))


@command("hypercalls", "hypercalls [N] [FILTER]",
         "the last N hypercalls (default 20); FILTER matches name, result or caller")
def _hypercalls(session, args: list[str]) -> str:
    count, filt = 20, None
    for word in args:
        if word.isdigit():
            count = int(word)
        else:
            filt = word
    return text.hypercall_table(session.trace, count, filt)


@command("vcpu", "vcpu [ID]", "a vcpu's event mask and pending bits, ring, eip, cr3")
def _vcpu(session, args: list[str]) -> str:
    ids = [v.vcpu_id for v in session.hv.vcpus if v.online]
    if args:
        vid = _int(args[0], "vcpu id")
        if vid not in ids:
            raise MonitorError(f"no online vcpu {vid}")
        ids = [vid]
    return "".join(text.vcpu_summary(session, vid) for vid in ids)


@command("catch", "catch hypercall NAME|trap VEC|upcall [PORT]|pagetype [MFN]|shutdown|crash",
         "stop when the hypervisor sees that event")
def _catch(session, args: list[str]) -> str:
    try:
        cp = session.add_catchpoint(" ".join(args))
    except CatchSpecError as exc:
        raise MonitorError(str(exc)) from None
    return f"catchpoint {cp.number}: {cp.description}\n"


@command("uncatch", "uncatch N", "delete catchpoint N")
def _uncatch(session, args: list[str]) -> str:
    if len(args) != 1:
        raise MonitorError("usage: uncatch N")
    if not session.remove_catchpoint(_int(args[0], "catchpoint number")):
        raise MonitorError(f"no catchpoint {args[0]}")
    return f"deleted catchpoint {args[0]}\n"


@command("catchpoints", "catchpoints", "list catchpoints with their hit counts")
def _catchpoints(session, args: list[str]) -> str:
    cps = session.debug.catchpoints.values()
    if not cps:
        return "no catchpoints\n"
    return "".join(f"{cp.number:>3}  {cp.description}  (hit {cp.hits} times)\n" for cp in cps)


@command("trace", "trace start|stop|save FILE|status",
         "pause or resume recording, or write the trace as JSONL")
def _trace(session, args: list[str]) -> str:
    if not args:
        raise MonitorError("usage: trace start|stop|save FILE|status")
    if args[0] in ("start", "stop"):
        session.trace.recording = args[0] == "start"
        return f"trace recording {'on' if session.trace.recording else 'off'}\n"
    if args[0] == "status":
        return (f"trace recording {'on' if session.trace.recording else 'off'}, "
                f"{len(session.trace)} records in memory, {session.trace.total} in all\n")
    if args[0] == "save" and len(args) == 2:
        try:
            with open(args[1], "w", encoding="utf-8") as out:
                write_jsonl(session.trace, out)
        except OSError as exc:
            raise MonitorError(f"cannot write {args[1]}: {exc.strerror}") from None
        return f"wrote {len(session.trace)} records to {args[1]}\n"
    raise MonitorError("usage: trace start|stop|save FILE|status")


@command("console", "console [N]", "the guest's console output (last N lines)")
def _console(session, args: list[str]) -> str:
    lines = session.console_text.splitlines(keepends=True)
    if args:
        lines = lines[-_int(args[0], "line count"):]
    return "".join(lines) or "(no console output yet)\n"


@command("stop-reason", "stop-reason", "why the guest is stopped")
def _stop_reason(session, args: list[str]) -> str:
    stop = session.last_stop
    if stop is None:
        return "the guest has not run yet\n"
    return text.stop_line(stop) + "\n"


@command("abi", "abi [NAME]", "the layout of an ABI structure as JSON (for gdbscripts)")
def _abi(session, args: list[str]) -> str:
    import json
    from .xen import abi
    names = sorted(n for n, obj in vars(abi).items()
                   if isinstance(obj, type) and hasattr(obj, "_layout"))
    if not args:
        return json.dumps(names) + "\n"
    cls = getattr(abi, args[0], None)
    if args[0] not in names or cls is None:
        raise MonitorError(f"no ABI structure {args[0]!r}; known: {', '.join(names)}")
    fields = [{"name": name, "offset": off, "format": st.format.lstrip("<")}
              for name, off, st in cls._layout]
    return json.dumps({"name": args[0], "size": cls.SIZE, "source": cls.SOURCE,
                       "fields": fields}) + "\n"
