"""Pure renderers: view data (pvdbg/views/gather.py, trace records) -> formatted text.

Every function returns prompt-toolkit FormattedText, a list of (style class, text);
`to_plain` turns it into the plain text gdb's `monitor` shows.  Nothing here touches
the engine, a terminal or a clock.  `width` (terminal columns, None = unlimited) makes
tables give up their least important text first on a narrow terminal.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from prompt_toolkit.formatted_text import FormattedText, fragment_list_width
from prompt_toolkit.utils import get_cwidth

from ..trace import TraceKind, TraceRecord
from .gather import DisasLine, Frame, RegistersView, SPACE_NAMES, Status, VcpuState

ELLIPSIS = "…"
Fragments = list[tuple[str, str]]

OUTPUT_WIDTH: ContextVar[int | None] = ContextVar("pvdbg_output_width", default=None)
"""Columns of the front end that runs a command now (None: no limit, as for gdb)."""


def current_width() -> int | None:
    return OUTPUT_WIDTH.get()


# -- plumbing ----------------------------------------------------------------------------
def to_plain(text: FormattedText | Sequence[tuple[str, str]] | str) -> str:
    """The text of formatted text, without styles."""
    if isinstance(text, str):
        return text
    return "".join(fragment[1] for fragment in text)


def join(*parts: Iterable[tuple[str, str]]) -> FormattedText:
    out: Fragments = []
    for part in parts:
        out.extend(part)
    return FormattedText(out)


def lines_of(text: FormattedText) -> list[Fragments]:
    """Split formatted text into lines (without their newlines)."""
    lines: list[Fragments] = [[]]
    for style, chunk, *_ in text:
        pieces = chunk.split("\n")
        for i, piece in enumerate(pieces):
            if i:
                lines.append([])
            if piece:
                lines[-1].append((style, piece))
    if lines and not lines[-1]:
        lines.pop()
    return lines


def clip_line(line: Fragments, width: int) -> Fragments:
    """`line` cut to `width` columns, ending in an ellipsis when cut."""
    if width <= 0 or fragment_list_width(line) <= width:
        return line
    out: Fragments = []
    room = width - 1
    for style, chunk in line:
        if room <= 0:
            break
        taken = ""
        for ch in chunk:
            w = get_cwidth(ch)
            if w > room:
                room = 0
                break
            taken += ch
            room -= w
        if taken:
            out.append((style, taken))
    out.append(("class:dim", ELLIPSIS))
    return out


def clip(text: FormattedText, width: int | None) -> FormattedText:
    """Every line of `text` cut to `width` columns (None: unchanged)."""
    if width is None:
        return text
    out: Fragments = []
    for line in lines_of(text):
        out.extend(clip_line(line, width))
        out.append(("", "\n"))
    return FormattedText(out)


def ellipsize(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)] + ELLIPSIS


def error_text(message: str) -> FormattedText:
    return FormattedText([("class:error", "error: "), ("", message + "\n")])


def message(text: str, style: str = "") -> FormattedText:
    return FormattedText([(style, text if text.endswith("\n") else text + "\n")])


def _hex(value: int, digits: int = 8) -> str:
    return f"{value:#0{digits + 2}x}"


def _where(address: int, symbol: str | None) -> Fragments:
    out: Fragments = [("class:address", _hex(address))]
    if symbol:
        out += [("", " <"), ("class:symbol", symbol), ("", ">")]
    return out


# -- stops -------------------------------------------------------------------------------
def stop_notice(stop, symbol: str | None, location: str | None, who: str = "",
                reason: str | None = None, detail: str | None = None) -> FormattedText:
    """One line for a stop: why, where (symbol, source line) and when (instructions).
    `reason`/`detail` replace the engine's words (e.g. "until" for a temporary
    breakpoint, "breakpoint 2" for a numbered one)."""
    prefix: Fragments = [("class:dim", f"[{who}] ")] if who else []
    after = "" if stop.icount is None else f", after {stop.icount} instructions"
    why = reason or str(stop.reason)
    if detail is None:
        detail = stop.detail if why in ("catch", "watchpoint", "blocked", "limit", "timeout",
                                        "shutdown", "crash") else ""
    if why == "shutdown":
        head = [("class:stop", "the domain shut down")] + ([("", f" ({detail})")] if detail else [])
    elif why == "crash":
        head = [("class:error", "the domain crashed"), ("", f": {detail}")]
    else:
        head = [("class:stop", f"stopped: {why}")] + ([("", f" ({detail})")] if detail else [])
    at: Fragments = [("", " at ")] + _where(stop.eip, symbol)
    if location:
        at += [("", " "), ("class:location", location)]
    return FormattedText(prefix + head + at + [("", after + "\n")])


# -- registers ---------------------------------------------------------------------------
_EFLAGS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
           (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (21, "ID"))


def eflags_text(value: int) -> str:
    names = [name for bit, name in _EFLAGS if value >> bit & 1]
    iopl = value >> 12 & 3
    return "[ " + " ".join(names + ([f"IOPL={iopl}"] if iopl else [])) + " ]"


REGISTER_ROWS32 = (("eax", "ebx", "ecx", "edx"), ("esi", "edi", "ebp", "esp"))
REGISTER_ROWS64 = (("rax", "rbx", "rcx", "rdx"), ("rsi", "rdi", "rbp", "rsp"),
                   ("r8", "r9", "r10", "r11"), ("r12", "r13", "r14", "r15"))


def registers_text(view: RegistersView) -> FormattedText:
    """General registers, pc with symbol and source line, flags, ring (32-bit) or the
    guest's kernel/user mode (64-bit: both at CPL 3), selectors, fs/gs bases (64-bit),
    CRs, the upcall bits."""
    wide = getattr(view, "bits", 32) == 64
    r = view.regs
    digits = 16 if wide else 8
    pc, flags = ("rip", "rflags") if wide else ("eip", "eflags")
    out: Fragments = []
    for row in REGISTER_ROWS64 if wide else REGISTER_ROWS32:
        for name in row:
            label = f"{name:<3} " if wide else f"{name} "
            out += [("class:label", label), ("class:value", f"{r[name]:0{digits}x}  ")]
        out.append(("", "\n"))
    out += [("class:label", f"{pc[:3]} "), ("class:address", f"{r[pc]:0{digits}x}")]
    if view.eip_symbol:
        out += [("", " <"), ("class:symbol", view.eip_symbol), ("", ">")]
    if view.eip_location:
        out += [("", " "), ("class:location", view.eip_location)]
    out += [("", "\n"), ("class:label", f"{flags} "), ("", f"{r[flags]:08x} "
                                                        f"{eflags_text(r[flags])}  ")]
    if wide:
        out += [("class:label", "mode "), ("", f"{view.mode or '?'}\n")]
    else:
        out += [("class:label", "ring "), ("", f"{view.ring}\n")]
    for name in ("cs", "ss", "ds", "es", "fs", "gs"):
        out += [("class:label", f"{name} "), ("", f"{r[name]:04x}  ")]
    if wide:
        out += [("class:label", "fs_base "), ("", f"{r['fs_base']:016x}  "),
                ("class:label", "gs_base "), ("", f"{r['gs_base']:016x}\n")]
    else:
        out.append(("", "\n"))
    for name in ("cr0", "cr2", "cr3", "cr4"):
        out += [("class:label", f"{name} "), ("", f"{r[name]:0{digits}x}  ")]
    out.append(("", "\n"))
    out += [("class:label", "upcall_mask "),
            ("class:masked" if view.upcall_mask else "class:unmasked", str(view.upcall_mask)),
            ("class:label", "  upcall_pending "),
            ("class:pending" if view.upcall_pending else "", str(view.upcall_pending)),
            ("", "\n")]
    return FormattedText(out)


# -- memory ------------------------------------------------------------------------------
UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}


def hexdump(space: str, address: int, data: bytes, unit: int = 1,
            label_for: Callable[[int], str | None] | None = None) -> FormattedText:
    """16 bytes a line: address (with the symbol a line starts in), values, ASCII."""
    out: Fragments = [("class:dim", f"{SPACE_NAMES.get(space, space)} memory\n")]
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        line_address = address + offset
        out.append(("class:address", _hex(line_address)))
        label = label_for(line_address) if label_for is not None else None
        if label:
            out += [("", " <"), ("class:symbol", label), ("", ">")]
        out.append(("", ":"))
        for i in range(0, len(chunk), unit):
            out.append(("class:value", " " + chunk[i:i + unit][::-1].hex()))   # little-endian
        if unit == 1:
            pad = 3 * (16 - len(chunk))
            text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
            out += [("", " " * pad + "  "), ("class:dim", text)]
        out.append(("", "\n"))
    return FormattedText(out)


# -- disassembly -------------------------------------------------------------------------
def disassembly_text(lines: Sequence[DisasLine], width: int | None = None) -> FormattedText:
    out: Fragments = []
    for line in lines:
        if line.label:
            out += [("class:address", _hex(line.address)), ("", " <"),
                    ("class:symbol", line.label), ("", ">:\n")]
        if line.location:
            out += [("class:location", f"  {line.location}")]
            if line.source:
                out += [("", "  "), ("class:source", line.source)]
            out.append(("", "\n"))
        marker = "=> " if line.is_pc else "   "
        out.append(("class:pc" if line.is_pc else "", marker))
        out.append(("class:breakpoint" if line.breakpoint else "", "*" if line.breakpoint else " "))
        out += [("class:address", _hex(line.address))]
        if line.symbol and not line.label:
            out += [("class:dim", f" <{line.symbol}>")]
        out += [("", ":  "), ("class:bytes", f"{line.raw.hex(' '):<21} "),
                ("", line.text)]
        if line.target:
            out += [("", " <"), ("class:symbol", line.target), ("", ">")]
        out.append(("", "\n"))
    return clip(FormattedText(out), width)


# -- backtrace ---------------------------------------------------------------------------
def backtrace_text(frames: Sequence[Frame], note: str | None = None) -> FormattedText:
    out: Fragments = []
    for frame in frames:
        out += [("class:label", f"#{frame.level:<3}"), ("class:address", _hex(frame.eip)),
                ("", " in "), ("class:symbol", frame.symbol or "??")]
        if frame.location:
            out += [("", " at "), ("class:location", frame.location)]
        out.append(("", "\n"))
    if note:
        out += [("class:dim", f"(backtrace ends: {note})\n")]
    return FormattedText(out)


# -- hypercalls --------------------------------------------------------------------------
@dataclass(frozen=True)
class HypercallFilter:
    """Which hypercall records to show; every set field must match."""
    name: str | None = None          # exact hypercall name
    caller: str | None = None        # substring of the caller's symbol
    result: str | None = None        # "ok", "error", "-EINVAL", or a number
    text: str | None = None          # substring of the name, caller or result

    def matches(self, record: TraceRecord) -> bool:
        caller = record.symbol or f"{record.eip:#x}"
        result = result_text(record)
        if self.name is not None and record.name != self.name:
            return False
        if self.caller is not None and self.caller not in caller:
            return False
        if self.result is not None and not _result_matches(self.result, record, result):
            return False
        if self.text is not None and not (self.text in record.name or self.text in caller
                                          or self.text == result):
            return False
        return True


def _result_matches(wanted: str, record: TraceRecord, shown: str) -> bool:
    if wanted in ("ok", "success"):
        return record.result is not None and not record.error
    if wanted in ("error", "failed", "fail"):
        return bool(record.error)
    if wanted == shown or (record.error is not None and wanted.upper() == record.error.upper()):
        return True
    try:
        return record.result == int(wanted, 0)
    except ValueError:
        return False


def result_text(record: TraceRecord) -> str:
    if record.result is None:
        return ""
    if record.error:
        return record.error
    return f"{record.result:#x}" if record.result > 9 else str(record.result)


def format_args(args: dict) -> str:
    return ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool)
                     else f"{k}={v}" for k, v in args.items())


HYPERCALL_KINDS = (TraceKind.hypercall, TraceKind.multicall_entry)


def select_hypercalls(records: Iterable[TraceRecord], filt: HypercallFilter,
                      count: int | None) -> list[TraceRecord]:
    """The last `count` matching hypercall records (None: all) in call order; a multicall's
    entries follow their batch, and a batch that matches brings its entries along."""
    calls = [r for r in records if r.kind in HYPERCALL_KINDS]
    chosen = [r for r in calls if filt.matches(r)]
    batches = {r.seq for r in chosen if r.kind is TraceKind.hypercall}
    picked = {r.seq for r in chosen}
    chosen += [r for r in calls if r.parent in batches and r.seq not in picked
               and r.kind is TraceKind.multicall_entry]
    chosen.sort(key=lambda r: r.seq)
    if count:
        chosen = chosen[-count:]
        while chosen and chosen[0].kind is TraceKind.multicall_entry and \
                chosen[0].parent in batches:
            chosen.pop(0)                     # never an entry without its batch
    return chosen


@dataclass(frozen=True)
class HypercallColumns:
    caller: int
    vcpu: bool


def hypercall_columns(records: Sequence[TraceRecord], width: int | None) -> HypercallColumns:
    longest = max((len(r.symbol or f"{r.eip:#x}") for r in records), default=6)
    caller = min(max(longest, 6), 28)
    if width is not None:
        caller = max(8, min(caller, width // 4))
    return HypercallColumns(caller, any(r.vcpu for r in records) or width is None or width >= 80)


def hypercall_header(columns: HypercallColumns) -> FormattedText:
    vcpu = "vcpu " if columns.vcpu else ""
    return FormattedText([("class:header", f"{'insns':>10} {vcpu}{'caller':<{columns.caller}} "
                                           "hypercall = result"), ("", "\n")])


def hypercall_row(record: TraceRecord, columns: HypercallColumns,
                  width: int | None) -> FormattedText:
    """One record: the arguments are shortened first, so `= result` stays on screen."""
    when = "-" if record.icount is None else str(record.icount)
    caller = ellipsize(record.symbol or f"{record.eip:#x}", columns.caller)
    nested = record.kind is TraceKind.multicall_entry
    head: Fragments = [("class:dim", f"{when:>10} ")]
    if columns.vcpu:
        head.append(("", f"{record.vcpu:>4} "))
    head += [("class:symbol", f"{caller:<{columns.caller}} ")]
    if nested:
        head.append(("class:dim", "  └ "))
    result = result_text(record)
    tail: Fragments = []
    if record.result is not None:
        tail = [("", " = "), ("class:error" if record.error else "class:ok", result)]
    args = format_args(record.args)
    if width is not None:
        fixed = fragment_list_width(head) + len(record.name) + 2 + fragment_list_width(tail)
        args = ellipsize(args, max(0, width - fixed))
    line = head + [("class:name", record.name), ("", f"({args})")] + tail
    if record.detail:
        detail = f"  [{record.detail}]"
        if width is not None:
            detail = ellipsize(detail, width - fragment_list_width(line))
        if detail.strip():
            line += [("class:dim", detail)]
    if width is not None:
        line = clip_line(line, width)
    return FormattedText(line + [("", "\n")])


def hypercall_table(records: Sequence[TraceRecord], width: int | None = None) -> FormattedText:
    """Header plus one row per record (already selected with select_hypercalls)."""
    if not records:
        return message("no hypercalls recorded")
    columns = hypercall_columns(records, width)
    out = list(hypercall_header(columns))
    for record in records:
        out += hypercall_row(record, columns, width)
    return FormattedText(out)


# -- vcpu --------------------------------------------------------------------------------
def port_ranges(ports: Sequence[int]) -> str:
    """(1, 2, 3, 7) -> "1-3, 7"; empty -> "none"."""
    if not ports:
        return "none"
    parts = []
    start = prev = ports[0]
    for port in list(ports[1:]) + [None]:
        if port is not None and port == prev + 1:
            prev = port
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if port is not None:
            start = prev = port
    return ", ".join(parts)


def vcpu_text(state: VcpuState) -> FormattedText:
    """The vcpu's event state first (upcall_mask=N upcall_pending=N, parsed by gdbscripts)."""
    out: Fragments = [
        ("class:label", f"vcpu{state.vcpu_id}: "),
        ("", "upcall_mask="),
        ("class:masked" if state.upcall_mask else "class:unmasked", str(state.upcall_mask)),
        ("", " upcall_pending="),
        ("class:pending" if state.upcall_pending else "", str(state.upcall_pending)),
        ("", f" pending_sel={state.pending_sel:#010x} cr2={state.cr2:#x}\n"),
    ]
    mode = getattr(state, "mode", None)
    if state.ring is not None and state.eip is not None:
        where = f"{mode} mode" if mode is not None else f"ring {state.ring}"
        names = ("rip", "rsp") if mode is not None else ("eip", "esp")
        out += [("", f"  {where}  {names[0]} "), *_where(state.eip, state.eip_symbol),
                ("", f"  cr3 {state.cr3:#010x}  {names[1]} {state.esp:#010x}\n")]
    elif mode is not None:
        out += [("", f"  {mode} mode\n")]
    run_state = ("offline" if not state.online else "blocked" if state.blocked else "runnable")
    out += [("", f"  {run_state}{' (on the CPU)' if state.current else ''}  kernel stack "
                 f"{state.kernel_ss:#06x}:{state.kernel_sp:#010x}\n")]
    if getattr(state, "kernel_table_mfn", None) is not None:
        user = state.user_table_mfn
        out += [("", f"  kernel pagetable mfn {state.kernel_table_mfn:#x}  user pagetable "
                     f"{'none' if not user else f'mfn {user:#x}'}\n")]
    masked_pending = [p for p in state.pending_ports if p in set(state.masked_ports)]
    out += [("", "  pending ports: "),
            ("class:pending" if state.pending_ports else "", port_ranges(state.pending_ports)),
            ("", "   masked ports: "), ("class:masked" if state.masked_ports else "",
                                        port_ranges(state.masked_ports))]
    if masked_pending:
        out += [("class:warning", f"   pending but masked: {port_ranges(masked_pending)}")]
    out.append(("", "\n"))
    t = state.time
    out += [("", f"  time: version {t.version}{' (being updated)' if t.version & 1 else ''}"
                 f"  system_time {t.system_time} ns  tsc_timestamp {t.tsc_timestamp}"
                 f"  tsc_to_system_mul {t.tsc_to_system_mul:#x} tsc_shift {t.tsc_shift}\n")]
    return FormattedText(out)


# -- status line -------------------------------------------------------------------------
def status_line(status: Status, width: int | None = None) -> FormattedText:
    """The bottom line: state, EIP, upcall mask/pending, instructions, hypercalls, gdb,
    ring; parts are dropped from the right when the terminal is too narrow."""
    state_class = ("class:status.state.running" if status.state == "running" else
                   "class:status.state.dead" if status.state in ("crashed", "shut down") else
                   "class:status.state.stopped")
    state = f" {status.state}" + (f": {status.reason}" if status.reason else "") + " "
    parts: list[Fragments] = []
    if status.eip is not None:
        where = status.eip_symbol or f"{status.eip:#x}"
        parts.append([("class:status", f" eip {where} ")])
    if status.upcall_mask is not None:
        parts.append([("class:status", f" mask {status.upcall_mask} pending "
                                        f"{status.upcall_pending} ")])
    parts.append([("class:status", " insns " + ("-" if status.icount is None
                                                else f"{status.icount:,}") + " ")])
    parts.append([("class:status", f" hypercalls {status.hypercalls} ")])
    if status.gdb:
        parts.append([("class:status", f" {status.gdb} ")])
    if status.ring is not None:
        parts.append([("class:status", f" ring {status.ring} ")])
    out: Fragments = [(state_class, state)]
    if width is not None and len(state) > width:
        return FormattedText(clip_line(out, width))
    used = len(state)
    for part in parts:
        w = fragment_list_width(part) + 1
        if width is not None and used + w > width:
            break
        out += [("class:status", "|")] + part
        used += w
    if width is not None and used < width:
        out.append(("class:status", " " * (width - used)))
    return FormattedText(out)


# -- tables of commands and breakpoints ------------------------------------------------
def help_table(entries: Sequence[tuple[str, str, str]], width: int | None = None) -> FormattedText:
    """(usage, aliases, help) rows; on a terminal the help text wraps under itself and a
    usage too long for its column puts the help on the next line."""
    usage_width = min(max((len(u) for u, _, _ in entries), default=0), 30 if width else 44)
    out: Fragments = []
    for usage, aliases, text in entries:
        body = text + (f" ({aliases})" if aliases else "")
        if width is None:
            out += [("class:name", f"{usage:<{usage_width}}"), ("", "  " + text)]
            if aliases:
                out += [("class:dim", f" ({aliases})")]
            out.append(("", "\n"))
            continue
        room = max(20, width - usage_width - 3)
        wrapped = textwrap.wrap(body, room) or [""]
        indent = " " * (usage_width + 2)
        if len(usage) > usage_width:
            out += [("class:name", usage), ("", "\n")]
            first = indent
        else:
            first = f"{usage:<{usage_width}}  "
            out.append(("class:name", first[:usage_width]))
            first = "  "
        out += [("", first + wrapped[0] + "\n")]
        out += [("", indent + line + "\n") for line in wrapped[1:]]
    return clip(FormattedText(out), width)


@dataclass(frozen=True)
class BreakpointRow:
    number: str          # "1", "catch 2", "gdb"
    kind: str            # "breakpoint", "watch write", "catch"
    where: str
    hits: str = ""


def breakpoint_table(rows: Sequence[BreakpointRow]) -> FormattedText:
    if not rows:
        return message("no breakpoints, watchpoints or catchpoints")
    num = max(3, max(len(r.number) for r in rows))
    kind = max(4, max(len(r.kind) for r in rows))
    out: Fragments = [("class:header", f"{'num':<{num}}  {'type':<{kind}}  where"), ("", "\n")]
    for r in rows:
        out += [("class:label", f"{r.number:<{num}}  "), ("", f"{r.kind:<{kind}}  "),
                ("class:symbol", r.where)]
        if r.hits:
            out += [("class:dim", f"  {r.hits}")]
        out.append(("", "\n"))
    return FormattedText(out)


def console_lines(text: str) -> FormattedText:
    if not text:
        return message("(no console output yet)", "class:dim")
    return FormattedText([("class:console", text if text.endswith("\n") else text + "\n")])



# -- hypervisor tables (data from pvdbg/views/hvviews.py) ---------------------------------
PROTECTED_TYPE_NAMES = ("L1", "L2", "L3", "L4", "seg_desc")


def _frame_facts(info) -> Fragments:
    """'L2 pinned (types 1, refs 2)' for one FrameInfo."""
    out: Fragments = [("class:name", info.type)]
    if info.pinned:
        out += [("", " "), ("class:pinned", "pinned")]
    if info.pae_xen_l2:
        out += [("class:dim", " pae_xen_l2")]
    if info.type != "none" and not info.validated and info.type_count:
        out += [("class:warning", " not-validated")]
    out += [("class:dim", f" (types {info.type_count}, refs {info.ref_count})")]
    return out


def _frame_name(mfn: int, pfn: int | None) -> str:
    return f"mfn {mfn:#x}" + ("" if pfn is None else f" (pfn {pfn:#x})")


def pt_walk_text(view, width: int | None = None) -> FormattedText:
    """Each level of the walk: the table's frame (type, pinned), the entry, its flags,
    the frame it names, RO/RW; then the final frame, with a writable mapping of a
    pagetable or descriptor frame shown as an error."""
    walk = view.walk
    four_level = bool(walk.levels) and walk.levels[0].level == 4
    out: Fragments = [("class:label", "walk of "), ("class:address", _hex(walk.va)),
                      ("", f"  ({getattr(view, 'base', 'cr3')} mfn {walk.cr3_mfn:#x})\n")]
    for level, table, target in zip(walk.levels, view.tables, view.targets):
        out += [("class:label", f"L{level.level}"), ("", f" mfn {level.table_mfn:#x} ")]
        if table is not None:
            out += [("", "[")] + _frame_facts(table) + [("", "]")]
        out += [("", f"\n   [{level.index:3}] "), ("class:value", f"{level.entry:016x}"),
                ("", f"  {level.flags:<14}")]
        if level.target_mfn is not None:
            pfn = None if target is None else target.pfn
            out += [("", f" -> {_frame_name(level.target_mfn, pfn)} ")]
            if target is not None:
                out += [("class:name", target.type)]
            if level.level < 3 or four_level:      # PAE L3 entries have no RW bit
                rw = bool(level.entry & 2)
                out += [("", "  "), ("class:rw" if rw else "class:ro", "RW" if rw else "RO")]
        out.append(("", "\n"))
    if walk.stopped is not None:
        out += [("class:error", "not mapped: "), ("", walk.stopped + "\n")]
    elif walk.maddr is not None:
        out += [("class:label", "maps to "), ("class:address", f"{walk.maddr:#x}"), ("", "  "),
                ("class:rw" if walk.writable else "class:ro",
                 "writable" if walk.writable else "read-only"),
                ("", "  user" if walk.user else "  supervisor"), ("", "  NX" if walk.nx else ""),
                ("", "\n")]
        if walk.frame is not None:
            out += [("", f"  frame {_frame_name(walk.frame.mfn, walk.frame.pfn)} owner "
                         f"{walk.frame.owner}: ")] + _frame_facts(walk.frame) + [("", "\n")]
            in_xen = (0xFFFF800000000000 <= walk.va < 0xFFFF880000000000 if four_level
                      else walk.va >= 0xF5800000)          # Xen's own slots
            if walk.writable and walk.frame.type in PROTECTED_TYPE_NAMES and not in_xen:
                out += [("class:error", f"  ERROR: a {walk.frame.type} frame is mapped "
                                        "writable\n")]
    return clip(FormattedText(out), width)


def frames_text(table, width: int | None = None) -> FormattedText:
    """Pagetable and seg_desc frames; writable mappings of them are errors."""
    out: Fragments = []
    if table.rows:
        out += [("class:header", f"{'mfn':>8} {'pfn':>8} {'type':<9} {'types':>5} {'refs':>5}"
                                 f"  {'mapped':<10} flags"), ("", "\n")]
    for row in table.rows:
        info = row.info
        pfn = "-" if info.pfn is None else f"{info.pfn:#x}"
        protected = info.type in PROTECTED_TYPE_NAMES
        out += [("class:address", f"{info.mfn:#8x} "), ("", f"{pfn:>8} "),
                ("class:name", f"{info.type:<9} "),
                ("", f"{info.type_count:>5} {info.ref_count:>5}  "),
                ("class:ro", f"{row.mapped_ro:>3} RO "),
                ("class:error" if row.mapped_rw and protected else "class:rw",
                 f"{row.mapped_rw:>2} RW"), ("", "  ")]
        flags: Fragments = []
        if info.pinned:
            flags.append(("class:pinned", "pinned"))
        for text, show in (("pae_xen_l2", info.pae_xen_l2), ("not-validated", not info.validated),
                           ("xen-heap", info.xen_heap)):
            if show:
                flags.append(("class:dim", text))
        for label, vcpus in (("cr3", info.cr3_of), ("gdt", info.gdt_of), ("ldt", info.ldt_of)):
            if vcpus:
                flags.append(("class:dim", f"{label} of vcpu{','.join(map(str, vcpus))}"))
        for i, flag in enumerate(flags):
            out += ([("", " ")] if i else []) + [flag]
        out.append(("", "\n"))
    if not table.rows:
        out += [("class:dim", "no pagetable or descriptor frames\n")]
    out += [("", f"{len(table.rows)} frames, {len(table.pinned)} pinned"
                 + (f" ({', '.join(f'{m:#x}' for m in table.pinned)})" if table.pinned else "")
                 + "\n")]
    if table.violations:
        out += [("class:error", f"{len(table.violations)} writable mappings of protected "
                                "frames:\n")]
        for v in table.violations:
            out += [("class:error", "  ERROR "), ("", f"{v.table_type} mfn {v.table_mfn:#x} "
                                                      f"[{v.index}] = {v.entry:016x}: {v.reason}\n")]
    else:
        out += [("class:ok", "no writable mapping of any pagetable or descriptor frame\n")]
    return clip(FormattedText(out), width)


def frame_detail_text(detail, width: int | None = None) -> FormattedText:
    info = detail.info
    out: Fragments = [("class:label", _frame_name(info.mfn, info.pfn)),
                      ("", f"  owner {info.owner}: ")] + _frame_facts(info) + [("", "\n")]
    protected = info.type in PROTECTED_TYPE_NAMES
    if detail.refs:
        out += [("class:header", "referenced by"), ("", "\n")]
    for ref in detail.refs:
        where = f"  {ref.table_type:<4}" + (f" mfn {ref.table_mfn:#x}" if ref.table_mfn is not None
                                           else "")
        out += [("", f"{where} [{ref.index}]")]
        if ref.entry:
            out += [("class:dim", f" {ref.entry:016x}")]
        if ref.table_type in ("L1", "L2"):
            bad = ref.writable and protected
            out += [("", " "), ("class:error" if bad else "class:rw" if ref.writable else "class:ro",
                                "RW" if ref.writable else "RO")]
            if bad:
                out += [("class:error", f"  ERROR: writable mapping of a {info.type} frame")]
        out.append(("", "\n"))
    if detail.mappings:
        out += [("class:header", "mapped at (current address space)"), ("", "\n")]
        for m in detail.mappings:
            out += [("", "  "), ("class:address", _hex(m.va)), ("", "  "),
                    ("class:rw" if m.writable else "class:ro", "RW" if m.writable else "RO"),
                    ("class:dim", ("  user" if m.user else "") + ("  (Xen's slots)" if m.xen else "")),
                    ("", "\n")]
    elif not detail.refs:
        out += [("class:dim", "not referenced by any pagetable, CR3 or descriptor table\n")]
    return clip(FormattedText(out), width)


def descriptors_text(table, width: int | None = None) -> FormattedText:
    """A GDT or LDT decoded: Xen's reserved entries marked, Xen's fix-ups shown."""
    out: Fragments = [("class:label", f"vcpu{table.vcpu_id} {table.name}")]
    if table.name == "GDT":
        frames = ", ".join(f"{m:#x}" for m in table.frames) or "none (set_gdt not called)"
        out += [("", f": {table.entries} guest entries, frames {frames}\n")]
    else:
        out += [("", f": {table.entries} entries at {table.base:#x}"
                     + (f", shadow frames {', '.join(f'{m:#x}' for m in table.frames)}"
                        if table.frames else "") + "\n")]
    note = f"segment limits: {table.policy}"
    for line in (textwrap.wrap(note, width - 1) if width else [note]):
        out += [("class:dim", line + "\n")]
    if not table.rows:
        return clip(FormattedText(out + [("class:dim", f"no {table.name} entries\n")]), width)
    raw_column = width is None or width >= 130       # the raw descriptor goes first
    kind_width = max(4, max(len(view.kind) for view in table.rows))
    out += [("class:header", f"{'index':>5} {'sel':>6}  " + (f"{'descriptor':<16}  " if raw_column
                                                              else "")
             + f"{'type':<{kind_width}} dpl  {'base/target':<17} {'limit':<10}  [Xen] flags"),
            ("", "\n")]
    for view in table.rows:
        if view.gate_selector is not None:
            where = f"{view.gate_selector:#06x}:{view.gate_offset:#010x}"
            limit = ""
        else:
            where = f"{view.base:#010x}"
            limit = f"{view.limit:#010x}"
        flags = "" if view.gate_selector is not None else " ".join(
            name for name, on in (("G", view.page_granular), ("32-bit", view.big),
                                  ("64-bit", view.long), ("expand-down", view.expand_down),
                                  ("A", view.accessed)) if on)
        out += [("class:label", f"{view.index:>5} "), ("class:address", f"{view.selector:#06x}  ")]
        if raw_column:
            out += [("class:dim", f"{view.raw:016x}  ")]
        out += [("class:name", f"{view.kind:<{kind_width}} "),
                ("", f"{view.dpl:>3}  {where:<17} {limit:<10}")]
        if view.table == "xen":
            reserved = table.reserved.get(view.index)
            out += [("", "  "), ("class:reserved", f"[{reserved or 'Xen reserved'}]")]
        if flags:
            out += [("", f"  {flags}")]
        out.append(("", "\n"))
        if view.guest_raw is not None:
            out += [("class:warning", f"{'':>14}guest wrote {view.guest_raw:016x}"),
                    ("class:dim", "; " + "; ".join(view.notes)), ("", "\n")]
        elif view.notes:
            out += [("class:dim", f"{'':>14}" + "; ".join(view.notes)), ("", "\n")]
    return clip(FormattedText(out), width)


def traps_text(table, width: int | None = None) -> FormattedText:
    out: Fragments = [("class:label", f"vcpu{table.vcpu_id} virtual trap table"),
                      ("", f"  (ring-3 entries switch to {table.kernel_stack[0]:#06x}:"
                           f"{table.kernel_stack[1]:#010x}, set by {table.kernel_stack_source})\n")]
    if not table.rows:
        out += [("class:dim", "no trap handlers registered (set_trap_table not called)\n")]
    else:
        out += [("class:header", f"{'vec':>4} {'name':<8} dpl  ev  handler"), ("", "\n")]
    for row in table.rows:
        out += [("class:label", f"{row.vector:#4x} "), ("class:name", f"{row.name:<8} "),
                ("", f"{row.dpl:>3}  {'M' if row.masks_events else '-':<2}  {row.cs:#06x}:"),
                ("class:address", f"{row.address:#010x}")]
        if row.symbol:
            out += [("", " <"), ("class:symbol", row.symbol), ("", ">")]
        out.append(("", "\n"))
    if table.rows:
        out += [("class:dim", "ev M: delivery masks events (interrupt-gate flag)\n")]
    if table.callbacks:
        out += [("class:header", "callbacks"), ("", "\n")]
        for cb in table.callbacks:
            out += [("class:label", f"  {cb.name:<10}"), ("", f"{cb.cs:#06x}:"),
                    ("class:address", f"{cb.address:#010x}")]
            if cb.symbol:
                out += [("", " <"), ("class:symbol", cb.symbol), ("", ">")]
            if cb.masks_events:
                out += [("class:dim", "  masks events")]
            out.append(("", "\n"))
    else:
        out += [("class:dim", "no callbacks registered\n")]
    return clip(FormattedText(out), width)


def events_text(rows, width: int | None = None) -> FormattedText:
    if not rows:
        return message("no event channels in use")
    out: Fragments = [("class:header", f"{'port':>5} {'type':<12} {'bound to':<28} vcpu  "
                                       "masked  pending  delivered"), ("", "\n")]
    for row in rows:
        out += [("class:label", f"{row.port:>5} "), ("class:name", f"{row.state:<12} "),
                ("", f"{ellipsize(row.bound_to, 28):<28} {row.vcpu:>4}  "),
                ("class:masked" if row.masked else "", f"{'yes' if row.masked else 'no':<6}  "),
                ("class:pending" if row.pending else "", f"{'yes' if row.pending else 'no':<7}  "),
                ("", f"{row.delivered:>9}\n")]
        if row.pending and row.masked:
            out += [("class:warning", f"{'':>6}pending but masked: not delivered until unmasked\n")]
    return clip(FormattedText(out), width)
