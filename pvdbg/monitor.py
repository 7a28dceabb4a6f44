"""Text commands over the engine, shared by gdb's `monitor` and the REPL.

Table-driven: each command is registered once with its usage, help and aliases, and
returns formatted text made by the pure renderers in pvdbg/views/render.py.  gdb gets it
as plain text (`run_monitor`), the REPL with colours and clipped to the terminal
(`run_command`, with pvdbg.views.render.OUTPUT_WIDTH set).  The REPL adds its execution
commands (continue, step, break, ...) to the same table (pvdbg/views/repl.py); `live`
commands only read the trace and console, so the REPL runs them while the guest runs.
"""
from __future__ import annotations

import json
import shlex
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

from prompt_toolkit.formatted_text import FormattedText

from .debug import CatchSpecError
from .trace import write_jsonl
from .views import gather, hvviews, render
from .views.expr import AddressError, eval_address
from .xen.constants import Hc
from .xen.guestmem import GuestFault


class MonitorError(Exception):
    """A command that cannot run (one line, shown to the user)."""


Output = str | FormattedText


@dataclass(frozen=True)
class MonitorCommand:
    name: str
    usage: str
    help: str
    fn: Callable[..., Output]
    aliases: tuple[str, ...] = ()
    live: bool = False            # reads only the trace/console: fine while the guest runs
    scope: str = "all"            # "all": gdb's monitor and the REPL; "repl": the REPL only
    complete: tuple[str, ...] = field(default_factory=tuple)   # argument kinds to complete


COMMANDS: dict[str, MonitorCommand] = {}
ALIASES: dict[str, str] = {}
COMMAND_SCOPE: ContextVar[str] = ContextVar("pvdbg_command_scope", default="all")
"""Which front end runs the command now ("all": gdb's monitor, "repl": the REPL)."""


def command(name: str, usage: str, help_text: str, *, aliases: tuple[str, ...] = (),
            live: bool = False, scope: str = "all", complete: tuple[str, ...] = ()):
    """Register `fn(session, args) -> str | FormattedText` under `name` (and `aliases`).
    `complete` names what the REPL completes for the arguments: "@symbol", "@hypercall",
    "@command", or literal words."""
    def register(fn):
        assert name not in COMMANDS and name not in ALIASES, name
        COMMANDS[name] = MonitorCommand(name, usage, help_text, fn, tuple(aliases), live,
                                        scope, tuple(complete))
        for alias in aliases:
            assert alias not in COMMANDS and alias not in ALIASES, alias
            ALIASES[alias] = name
        return fn
    return register


def resolve(word: str, scope: str = "all") -> MonitorCommand | None:
    """The command `word` names (its name or an alias), visible in `scope`."""
    cmd = COMMANDS.get(word) or COMMANDS.get(ALIASES.get(word, ""))
    if cmd is None or (cmd.scope == "repl" and scope != "repl"):
        return None
    return cmd


def split_line(line: str) -> list[str]:
    """Words of a command line; `x/16w addr` becomes ['x', '/16w', 'addr']."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise MonitorError(f"cannot parse: {exc}") from None
    if words and "/" in words[0] and not words[0].startswith("/"):
        head, _, fmt = words[0].partition("/")
        words[0:1] = [head, "/" + fmt]
    return words


def run_command(session, line: str, scope: str = "all") -> FormattedText:
    """Run one command line; formatted output.  Raises MonitorError (one line)."""
    words = split_line(line)
    if not words:
        words = ["help"]
    cmd = resolve(words[0], scope)
    if cmd is None:
        raise MonitorError(f"unknown command {words[0]!r}; try 'help'")
    token = COMMAND_SCOPE.set(scope)
    try:
        out = cmd.fn(session, words[1:])
    finally:
        COMMAND_SCOPE.reset(token)
    return render.message(out) if isinstance(out, str) else out


def run_monitor(session, line: str) -> str:
    """gdb's `monitor LINE`: plain text; raises MonitorError with a one-line message."""
    return render.to_plain(run_command(session, line))


def _int(word: str, what: str) -> int:
    try:
        return int(word, 0)
    except ValueError:
        raise MonitorError(f"{what} must be a number, not {word!r}") from None


def address_of(session, text: str) -> int:
    """An address expression (symbol+off, $reg, number) on this session."""
    try:
        return eval_address(text, session.symbol, lambda name: session.registers()[name],
                            bits=getattr(session.hv, "guest_bits", 32))
    except AddressError as exc:
        raise MonitorError(str(exc)) from None


def _view(fn, *args):
    try:
        return fn(*args)
    except gather.ViewError as exc:
        raise MonitorError(str(exc)) from None


# -- help ------------------------------------------------------------------------------
def help_entries(scope: str) -> list[tuple[str, str, str]]:
    visible = [c for c in COMMANDS.values() if c.scope == "all" or scope == "repl"]
    return [(c.usage, ", ".join(c.aliases), c.help) for c in sorted(visible, key=lambda c: c.name)]


def help_output(args: list[str], scope: str) -> FormattedText:
    if args:
        cmd = resolve(args[0], scope)
        if cmd is None:
            raise MonitorError(f"no command {args[0]!r}")
        aliases = f"  (aliases: {', '.join(cmd.aliases)})" if cmd.aliases else ""
        return FormattedText([("class:name", cmd.usage), ("class:dim", aliases),
                              ("", f"\n  {cmd.help}\n")])
    return render.help_table(help_entries(scope), render.current_width())


@command("help", "help [COMMAND]", "list commands, or show one command's usage",
         aliases=("h", "?"), live=True, complete=("@command",))
def _help(session, args: list[str]) -> Output:
    return help_output(args, COMMAND_SCOPE.get())


# -- the trace ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HypercallQuery:
    count: int | None
    filt: render.HypercallFilter
    follow: bool


HYPERCALL_USAGE = ("hypercalls [N|all] [NAME] [name=NAME] [caller=SYM] [result=ok|error|-EINVAL|N]"
                   " [TEXT] [follow]")


def parse_hypercall_query(args: list[str]) -> HypercallQuery:
    count: int | None = 20
    name = caller = result = text = None
    follow = False
    for word in args:
        key, eq, value = word.partition("=")
        if word.isdigit():
            count = int(word)
        elif word == "all":
            count = None
        elif word in ("follow", "-f"):
            follow = True
        elif eq and key == "name":
            name = value
        elif eq and key == "caller":
            caller = value
        elif eq and key == "result":
            result = value
        elif eq:
            raise MonitorError(f"unknown filter {key!r}: name=, caller= or result=")
        elif word in Hc.__members__:
            name = word
        else:
            text = word
    return HypercallQuery(count, render.HypercallFilter(name, caller, result, text), follow)


@command("hypercalls", HYPERCALL_USAGE,
         "the hypercall trace: time (instructions), vcpu, caller, call, result; multicall "
         "entries under their batch; `follow` (REPL) prints new ones as they happen",
         aliases=("hc",), live=True, complete=("@hypercall", "all", "follow", "name=", "caller=",
                                               "result="))
def _hypercalls(session, args: list[str]) -> Output:
    query = parse_hypercall_query(args)
    if query.follow:
        raise MonitorError("follow needs the pvdbg REPL (gdb: run `monitor hypercalls` again)")
    records = render.select_hypercalls(session.trace, query.filt, query.count)
    return render.hypercall_table(records, render.current_width())


@command("trace", "trace start|stop|save FILE|status",
         "pause or resume recording, or write the trace as JSONL", live=True,
         complete=("start", "stop", "save", "status"))
def _trace(session, args: list[str]) -> Output:
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


@command("console", "console [N] | console send TEXT",
         "the guest's console output (last N lines), or type TEXT into the guest's console",
         live=True, complete=("send",))
def _console(session, args: list[str]) -> Output:
    if args and args[0] == "send":
        if len(args) < 2:
            raise MonitorError("usage: console send TEXT")
        data = (" ".join(args[1:]) + "\n").encode("latin-1", "replace")
        send = getattr(session, "console_send", None)
        where = send(data) if send is not None else hvviews.console_input(session.hv, data)
        return f"queued {len(data)} bytes for the guest ({where})\n"
    lines = session.console_text.splitlines(keepends=True)
    if args:
        lines = lines[-_int(args[0], "line count"):]
    return render.console_lines("".join(lines))


# -- catchpoints ------------------------------------------------------------------------
@command("catch", "catch hypercall NAME|trap VEC|upcall [PORT]|pagetype [MFN]|shutdown|crash",
         "stop when the hypervisor sees that event",
         complete=("hypercall", "trap", "upcall", "pagetype", "shutdown", "crash"))
def _catch(session, args: list[str]) -> Output:
    try:
        cp = session.add_catchpoint(" ".join(args))
    except CatchSpecError as exc:
        raise MonitorError(str(exc)) from None
    return f"catchpoint {cp.number}: {cp.description}\n"


@command("uncatch", "uncatch N", "delete catchpoint N")
def _uncatch(session, args: list[str]) -> Output:
    if len(args) != 1:
        raise MonitorError("usage: uncatch N")
    if not session.remove_catchpoint(_int(args[0], "catchpoint number")):
        raise MonitorError(f"no catchpoint {args[0]}")
    return f"deleted catchpoint {args[0]}\n"


@command("catchpoints", "catchpoints", "list catchpoints with their hit counts", live=True)
def _catchpoints(session, args: list[str]) -> Output:
    cps = list(session.debug.catchpoints.values())
    if not cps:
        return "no catchpoints\n"
    return "".join(f"{cp.number:>3}  {cp.description}  (hit {cp.hits} times)\n" for cp in cps)


@command("stop-reason", "stop-reason", "why the guest is stopped")
def _stop_reason(session, args: list[str]) -> Output:
    stop = session.last_stop
    if stop is None:
        return "the guest has not run yet\n"
    return render.stop_notice(stop, gather.symbol_at(session, stop.eip),
                              gather.source_location(session, stop.eip))


# -- the CPU -------------------------------------------------------------------------------
@command("regs", "regs", "registers of the current vcpu, with EIP's symbol and source line",
         aliases=("registers",))
def _regs(session, args: list[str]) -> Output:
    return render.registers_text(gather.registers_view(session))


def parse_dump_args(session, args: list[str]) -> tuple[str, int, int, int]:
    """x's arguments -> (space, address, length in bytes, unit in bytes)."""
    unit, count, space = 1, None, "va"
    rest = list(args)
    if rest and rest[0].startswith("/"):
        fmt = rest.pop(0)[1:]
        digits = "".join(ch for ch in fmt if ch.isdigit())
        letters = [ch for ch in fmt if not ch.isdigit()]
        if any(ch not in render.UNITS and ch != "x" for ch in letters):
            raise MonitorError(f"bad format /{fmt}: COUNT then b, h, w or g")
        for ch in letters:
            if ch in render.UNITS:
                unit = render.UNITS[ch]
        count = int(digits) if digits else None
    if rest and rest[0] in gather.ADDRESS_SPACES:
        space = rest.pop(0)
    if not rest or len(rest) > 2:
        raise MonitorError("usage: x[/COUNT{b,h,w,g}] [va|pa|ma] ADDRESS [LENGTH]")
    if space == "va":
        address = address_of(session, rest[0])
    else:
        address = _int(rest[0], f"{gather.SPACE_NAMES[space]} address")
    if len(rest) == 2:
        length = _int(rest[1], "length")
    else:
        length = (count if count is not None else (64 if unit == 1 else 16)) * unit
    return space, address, length, unit


@command("x", "x[/COUNT{b,h,w,g}] [va|pa|ma] ADDRESS [LENGTH]",
         "memory by guest virtual (default; symbols and $regs work), pseudo-physical or "
         "machine address", complete=("@symbol", "va", "pa", "ma"))
def _x(session, args: list[str]) -> Output:
    space, address, length, unit = parse_dump_args(session, args)
    data = _view(gather.read_space, session, space, address, length)
    return render.hexdump(space, address, data, unit,
                          (lambda va: gather.symbol_at(session, va)) if space == "va" else None)


@command("disas", "disas [ADDRESS] [N]",
         "N instructions (default 12) at ADDRESS (default: around EIP), with symbols, source "
         "lines, => at EIP and * at breakpoints", aliases=("disassemble",),
         complete=("@symbol",))
def _disas(session, args: list[str]) -> Output:
    count = 12
    if len(args) > 2:
        raise MonitorError("usage: disas [ADDRESS] [N]")
    if len(args) == 2:
        count = _int(args[1], "instruction count")
    if args:
        address = address_of(session, args[0])
    else:
        eip = session.cpu.read("eip")
        symbol = session.image.symbols.symbol_for(eip)
        address = symbol.address if symbol is not None and eip - symbol.address <= 24 else eip
        if address != eip:
            before = [line.address for line in _view(gather.disassembly, session, address, 24)]
            if eip in before:
                count += before.index(eip)
            else:
                address = eip
    lines = _view(gather.disassembly, session, address, count)
    return render.disassembly_text(lines, render.current_width())


@command("bt", "bt [N]", "backtrace by frame pointers, with symbols and source lines",
         aliases=("backtrace", "where"))
def _bt(session, args: list[str]) -> Output:
    limit = _int(args[0], "frame count") if args else gather.MAX_BACKTRACE
    frames, note = gather.backtrace(session, max(1, limit))
    return render.backtrace_text(frames, note)


# -- the hypervisor's state ---------------------------------------------------------------
@command("vcpu", "vcpu [ID]",
         "a vcpu's upcall mask and pending bits, pending_sel, pending/masked ports, time, "
         "ring, eip, cr3")
def _vcpu(session, args: list[str]) -> Output:
    ids = [v.vcpu_id for v in session.hv.vcpus if v.online]
    if args:
        vid = _int(args[0], "vcpu id")
        if vid not in ids:
            raise MonitorError(f"no online vcpu {vid}")
        ids = [vid]
    out: list[tuple[str, str]] = []
    for vid in ids:
        out += render.vcpu_text(_view(gather.vcpu_state, session, vid))
    return FormattedText(out)


@command("pt", "pt ADDRESS [TABLE-MFN]",
         "the pagetable walk of a guest virtual address: each level's table (type, pinned), "
         "entry, flags, frame, RO/RW; a writable pagetable mapping is an error (TABLE-MFN: "
         "walk through that top-level table, e.g. one just pinned, instead of CR3's)",
         aliases=("walk",), complete=("@symbol",))
def _pt(session, args: list[str]) -> Output:
    if len(args) not in (1, 2):
        raise MonitorError("usage: pt ADDRESS [TABLE-MFN]")
    table_mfn = _int(args[1], "table mfn") if len(args) == 2 else None
    view = _view(hvviews.pt_walk, session.hv, address_of(session, args[0]), table_mfn)
    return render.pt_walk_text(view, render.current_width())


@command("frames", "frames [all]",
         "pagetable and descriptor frames: type, counts, pinned, how many entries map each "
         "RO/RW; writable mappings of them are errors (`all`: every frame Xen has typed)")
def _frames(session, args: list[str]) -> Output:
    if args and args != ["all"]:
        raise MonitorError("usage: frames [all]")
    table = _view(hvviews.frame_table, session.hv, bool(args))
    return render.frames_text(table, render.current_width())


@command("frame", "frame [ma|pa|va] N",
         "one machine frame (an MFN, or the frame holding a pa/va address): type, counts, "
         "pinned, every entry that maps it RO/RW, and where it is mapped", complete=("ma", "pa", "va", "@symbol"))
def _frame(session, args: list[str]) -> Output:
    space = "ma"
    rest = list(args)
    if rest and rest[0] in gather.ADDRESS_SPACES:
        space = rest.pop(0)
    if len(rest) != 1:
        raise MonitorError("usage: frame [ma|pa|va] N  (ma: an MFN; pa, va: an address)")
    if space == "va":
        try:
            mfn = session.hv.guest.translate(address_of(session, rest[0])).mfn
        except GuestFault as fault:
            raise MonitorError(str(fault)) from None
    elif space == "pa":
        pfn = _int(rest[0], "pseudo-physical address") >> 12
        mfn = gather.pfn_to_mfn(session.hv, pfn)
        if mfn is None:
            raise MonitorError(f"pfn {pfn:#x} is not in the domain's P2M")
    else:
        mfn = _int(rest[0], "mfn")
    detail = _view(hvviews.frame_detail, session.hv, mfn)
    return render.frame_detail_text(detail, render.current_width())


@command("gdt", "gdt [all]",
         "the current vcpu's GDT decoded (`all`: empty slots too), Xen's reserved entries "
         "marked, Xen's fix-ups and the segment-limit rule shown")
def _gdt(session, args: list[str]) -> Output:
    if args and args != ["all"]:
        raise MonitorError("usage: gdt [all]")
    table = _view(hvviews.gdt_table, session.hv, bool(args))
    return render.descriptors_text(table, render.current_width())


@command("ldt", "ldt", "the current vcpu's LDT decoded")
def _ldt(session, args: list[str]) -> Output:
    table = _view(hvviews.ldt_table, session.hv)
    return render.descriptors_text(table, render.current_width())


@command("events", "events", "event channels: port, type, bound to, vcpu, masked, pending, "
                             "upcalls delivered")
def _events(session, args: list[str]) -> Output:
    rows = _view(hvviews.event_table, session.hv, session.trace)
    return render.events_text(rows, render.current_width())


@command("traps", "traps [VCPU]", "the virtual trap table and callbacks, with symbols")
def _traps(session, args: list[str]) -> Output:
    vid = _int(args[0], "vcpu id") if args else session.hv.current.vcpu_id
    table = _view(hvviews.trap_table, session.hv, vid,
                  lambda va: gather.symbol_at(session, va))
    return render.traps_text(table, render.current_width())


# -- gdbscripts -------------------------------------------------------------------------------
@command("abi", "abi [NAME]", "the layout of an ABI structure as JSON (for gdbscripts)", live=True)
def _abi(session, args: list[str]) -> Output:
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


from . import xsmonitor  # noqa: E402,F401  (registers `xenstore`)
