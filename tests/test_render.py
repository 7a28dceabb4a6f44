"""Pure renderers (pvdbg/views/render.py) on hand-made view data: formatted text in,
(style, text) fragments out.  Plus the small pure helpers around them: styles, history
location, address expressions, completion."""
from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText, fragment_list_width

from pvdbg.session import StopReason, Stopped
from pvdbg.trace import TraceKind, TraceRecord
from pvdbg.views import render
from pvdbg.views.completer import ReplCompleter
from pvdbg.views.expr import AddressError, eval_address
from pvdbg.views.gather import DisasLine, Frame, Status, VcpuState
from pvdbg.views.hvviews import (CallbackRow, DescriptorTable, EventRow, FrameRow, FrameTable,
                                 RESERVED_NAMES, TrapRow, TrapTable)
from pvdbg.views.repl import history_path
from pvdbg.views.style import STYLE_RULES, color_enabled, repl_style
from pvdbg.xen.abi import VcpuTimeInfo
from pvdbg.xen.descriptors import decode_descriptor
from pvdbg.xen.mm import Violation
from pvdbg.xen.mm_query import FrameInfo

import pytest


def hc(seq, name, result=0, error=None, kind=TraceKind.hypercall, symbol="printk+0x32",
       icount=100, args=None, parent=None, detail="", vcpu=0):
    return TraceRecord(seq=seq, kind=kind, icount=icount, vcpu=vcpu, eip=0xC0001000, name=name,
                       args=args if args is not None else {"cmd": "write", "count": 5},
                       result=result, error=error, symbol=symbol, detail=detail, parent=parent)


def styles_of(text: FormattedText, needle: str) -> set[str]:
    return {style for style, chunk, *_ in text if needle in chunk}


def lines(text) -> list[str]:
    return render.to_plain(text).splitlines()


# -- plumbing -------------------------------------------------------------------------------
def test_to_plain_and_clip_keep_text_and_mark_cuts():
    text = FormattedText([("class:a", "abcdef"), ("", "ghij\n"), ("class:b", "short\n")])
    assert render.to_plain(text) == "abcdefghij\nshort\n"
    clipped = render.clip(text, 6)
    assert lines(clipped) == ["abcde…", "short"]
    assert ("class:a", "abcde") in list(clipped)
    assert render.clip(text, None) is text


def test_clip_line_counts_wide_characters():
    line = [("", "日本語テキスト")]
    out = render.clip_line(line, 7)
    assert fragment_list_width(out) <= 7 and render.to_plain(out).endswith("…")


# -- stops ------------------------------------------------------------------------------------
def test_stop_notice_breakpoint_with_location_and_override():
    stop = Stopped(StopReason.breakpoint, 0, 0xC000274E, 6394, "breakpoint at 0xc000274e",
                   0xC000274E)
    text = render.stop_notice(stop, "xen_reserve_top", "reserve.c:20", reason="breakpoint 1")
    assert render.to_plain(text) == ("stopped: breakpoint 1 at 0xc000274e <xen_reserve_top> "
                                     "reserve.c:20, after 6394 instructions\n")
    assert "class:symbol" in styles_of(text, "xen_reserve_top")
    assert "class:location" in styles_of(text, "reserve.c:20")


def test_stop_notice_shutdown_crash_and_gdb_prefix():
    down = Stopped(StopReason.shutdown, 0, 0xC00013A7, 9862, "poweroff")
    assert render.to_plain(render.stop_notice(down, None, None, "gdb")).startswith(
        "[gdb] the domain shut down (poweroff) at 0xc00013a7")
    crash = Stopped(StopReason.crash, 0, 0xC0000010, None, "#PF at 0xc0000010")
    text = render.stop_notice(crash, "startup_xen+0x10", None)
    assert "class:error" in styles_of(text, "crashed")
    assert "after" not in render.to_plain(text)          # no count in host-clock mode


# -- hypercall table ----------------------------------------------------------------------------
def test_multicall_entries_follow_their_batch_indented():
    batch = hc(10, "multicall", args={"call_list": 0xC0008000, "nr_calls": 2}, icount=500)
    first = hc(11, "mmu_update", kind=TraceKind.multicall_entry, parent=10, icount=500)
    second = hc(12, "mmuext_op", kind=TraceKind.multicall_entry, parent=10, icount=500,
                result=-22, error="-EINVAL")
    # The batch's record is appended after its entries; the table orders by sequence.
    chosen = render.select_hypercalls([first, second, batch], render.HypercallFilter(), None)
    assert [r.name for r in chosen] == ["multicall", "mmu_update", "mmuext_op"]
    out = lines(render.hypercall_table(chosen))
    assert out[0].split() == ["insns", "vcpu", "caller", "hypercall", "=", "result"]
    assert "  └ mmu_update(" in out[2] and "  └ mmuext_op(" in out[3]
    assert "└" not in out[1]
    assert out[3].endswith("= -EINVAL")
    only_batch = render.select_hypercalls([first, second, batch],
                                          render.HypercallFilter(name="multicall"), None)
    assert [r.seq for r in only_batch] == [10, 11, 12]          # the batch brings its entries
    assert [r.seq for r in render.select_hypercalls(
        [first, second, batch], render.HypercallFilter(name="mmuext_op"), None)] == [12]


def test_hypercall_filters():
    records = [hc(1, "xen_version", result=0x40011, symbol="xen_start_kernel+0x45"),
               hc(2, "console_io"), hc(3, "console_io", result=-14, error="-EFAULT"),
               hc(4, "sched_op", symbol="xen_reboot+0x20")]
    pick = lambda **kw: [r.seq for r in render.select_hypercalls(
        records, render.HypercallFilter(**kw), None)]
    assert pick(name="console_io") == [2, 3]
    assert pick(result="error") == [3]
    assert pick(result="-efault") == [3]
    assert pick(result="ok") == [1, 2, 4]
    assert pick(result="0x40011") == [1]
    assert pick(caller="xen_reboot") == [4]
    assert pick(text="sched") == [4]
    assert pick(name="console_io", result="0") == [2]
    assert [r.seq for r in render.select_hypercalls(records, render.HypercallFilter(), 2)] == [3, 4]


def test_hypercall_row_keeps_the_result_on_a_narrow_terminal():
    record = hc(1, "console_io", args={"cmd": "write", "count": 0x39, "buffer": 0xC00084A0},
                symbol="a_very_long_caller_function_name+0x1234", result=-22, error="-EINVAL",
                detail="why Xen refused it")
    columns = render.hypercall_columns([record], 60)
    row = render.hypercall_row(record, columns, 60)
    text = render.to_plain(row).rstrip("\n")
    assert len(text) <= 60
    assert "= -EINVAL" in text and "…" in text
    assert "class:error" in styles_of(row, "-EINVAL")
    wide = render.to_plain(render.hypercall_row(record, render.hypercall_columns([record], None),
                                                None))
    assert "buffer=0xc00084a0) = -EINVAL  [why Xen refused it]" in wide


def test_empty_hypercall_table():
    assert render.to_plain(render.hypercall_table([])) == "no hypercalls recorded\n"


# -- vcpu ---------------------------------------------------------------------------------------
def vcpu_state(**changes) -> VcpuState:
    base = dict(vcpu_id=0, online=True, blocked=False, current=True, upcall_mask=1,
                upcall_pending=0, pending_sel=0, cr2=0, pending_ports=(), masked_ports=(),
                time=VcpuTimeInfo(version=2, system_time=1500), ring=1, eip=0xC000274E,
                eip_symbol="xen_reserve_top", esp=0xC0007F8C, cr3=0x320D000, kernel_ss=0xE021,
                kernel_sp=0xC0021000)
    base.update(changes)
    return VcpuState(**base)


def test_vcpu_text_first_line_is_what_gdbscripts_parse():
    text = render.vcpu_text(vcpu_state())
    first = lines(text)[0]
    assert first.startswith("vcpu0: upcall_mask=1 upcall_pending=0 ")
    assert "class:masked" in styles_of(text, "1")
    assert "ring 1  eip 0xc000274e <xen_reserve_top>" in render.to_plain(text)
    assert "system_time 1500 ns" in render.to_plain(text)


def test_vcpu_text_pending_but_masked_ports_are_warned_about():
    text = render.vcpu_text(vcpu_state(upcall_mask=0, upcall_pending=1, pending_sel=1,
                                       pending_ports=(1, 2, 3, 7), masked_ports=(3, 7, 8)))
    plain = render.to_plain(text)
    assert "pending ports: 1-3, 7" in plain and "masked ports: 3, 7-8" in plain
    assert "pending but masked: 3, 7" in plain
    assert "class:pending" in styles_of(text, "1-3, 7")
    assert render.port_ranges(()) == "none"


# -- registers, memory, code, stack ---------------------------------------------------------------
def test_hexdump_units_and_ascii():
    data = bytes(range(0x41, 0x41 + 20))
    text = render.hexdump("va", 0xC0008000, data, 1, lambda va: "xen_start_info"
                          if va == 0xC0008000 else None)
    out = lines(text)
    assert out[0] == "guest virtual memory"
    assert out[1].startswith("0xc0008000 <xen_start_info>: 41 42 43")
    assert out[1].endswith("ABCDEFGHIJKLMNOP")
    assert out[2].startswith("0xc0008010: 51 52 53 54") and out[2].endswith("QRST")
    words = lines(render.hexdump("ma", 0x1000, bytes.fromhex("0100000002000000"), 4))
    assert words == ["machine memory", "0x00001000: 00000001 00000002"]


def test_disassembly_marks_pc_breakpoints_symbols_and_source():
    rows = [DisasLine(0xC000274E, b"\x55", "push ebp", "xen_reserve_top", "xen_reserve_top",
                      "reserve.c:20", "{", None, True, True),
            DisasLine(0xC0002768, bytes.fromhex("e8b3eaffff"), "call 0xc0001220", None,
                      "xen_reserve_top+0x1a", None, None, "xen_hypercall_xen_version", False,
                      False)]
    text = render.disassembly_text(rows)
    out = lines(text)
    assert out[0] == "0xc000274e <xen_reserve_top>:"
    assert out[1].strip() == "reserve.c:20  {"
    assert out[2].startswith("=> *0xc000274e:") and out[2].endswith("push ebp")
    assert out[3].startswith("    0xc0002768 <xen_reserve_top+0x1a>:")
    assert out[3].endswith("call 0xc0001220 <xen_hypercall_xen_version>")
    assert "class:pc" in styles_of(text, "=> ")
    assert "class:breakpoint" in styles_of(text, "*")


def test_backtrace_text():
    frames = [Frame(0, 0xC000274E, "xen_reserve_top", "reserve.c:20", 0xC0007FE8),
              Frame(1, 0xC00022D2, "xen_start_kernel+0xe4", "enlighten.c:125", 0xC0007FE8),
              Frame(2, 0xC0000018, None, None, None)]
    out = lines(render.backtrace_text(frames, "frame pointer 0x0 is not readable"))
    assert out[0] == "#0  0xc000274e in xen_reserve_top at reserve.c:20"
    assert out[2] == "#2  0xc0000018 in ??"
    assert out[3] == "(backtrace ends: frame pointer 0x0 is not readable)"


def test_eflags_text():
    assert render.eflags_text(0x282) == "[ SF IF ]"
    assert render.eflags_text(0x3246) == "[ PF ZF IF IOPL=3 ]"


# -- status line ----------------------------------------------------------------------------------
def status(**changes) -> Status:
    base = dict(state="stopped", reason="breakpoint", ring=1, eip=0xC000274E,
                eip_symbol="xen_reserve_top", upcall_mask=1, upcall_pending=0, icount=6394,
                hypercalls=6, gdb="gdb 127.0.0.1:1234")
    base.update(changes)
    return Status(**base)


def test_status_line_fills_the_width_and_drops_parts_from_the_right():
    wide = render.status_line(status(), 160)
    plain = render.to_plain(wide)
    assert len(plain) == 160
    for part in ("stopped: breakpoint", "eip xen_reserve_top", "mask 1 pending 0",
                 "insns 6,394", "hypercalls 6", "gdb 127.0.0.1:1234", "ring 1"):
        assert part in plain
    narrow = render.to_plain(render.status_line(status(), 50))
    assert len(narrow) == 50 and "eip xen_reserve_top" in narrow and "ring" not in narrow
    tiny = render.to_plain(render.status_line(status(), 10))
    assert len(tiny) <= 10 and tiny.endswith("…")


def test_status_line_state_styles_and_unknown_count():
    running = render.status_line(status(state="running", reason="continue", icount=None), None)
    assert "class:status.state.running" in styles_of(running, "running: continue")
    assert "insns -" in render.to_plain(running)
    dead = render.status_line(status(state="crashed", reason="#GP"), None)
    assert "class:status.state.dead" in styles_of(dead, "crashed")


# -- hypervisor tables -------------------------------------------------------------------------------
def frame_info(mfn, type_="L1", **changes) -> FrameInfo:
    base = dict(mfn=mfn, pfn=mfn - 0x100, owner="d1", type=type_, type_count=1, ref_count=3,
                allocated=True, validated=True, pinned=False, pae_xen_l2=False, linear_count=0,
                xen_heap=False, cr3_of=(), gdt_of=(), ldt_of=())
    base.update(changes)
    return FrameInfo(**base)


def test_frames_text_flags_and_writable_mappings_as_errors():
    table = FrameTable(
        rows=(FrameRow(frame_info(0x320D, "L3", type_count=2, pinned=True, cr3_of=(0,)), 1, 0),
              FrameRow(frame_info(0x3485, "L1"), 0, 1)),
        violations=(Violation(0x3485, "L1", 7, 0x3485063, 0x3485, "L1",
                              "mfn 0x3485 is an L1 pagetable but L1 mfn 0x3485 slot 7 maps it "
                              "writable"),),
        pinned=(0x320D,))
    text = render.frames_text(table)
    out = lines(text)
    assert out[1].split()[:3] == ["0x320d", "0x310d", "L3"] and "pinned cr3 of vcpu0" in out[1]
    assert "class:error" in styles_of(text, " 1 RW")
    assert "1 writable mappings of protected frames:" in render.to_plain(text)
    assert "class:error" in styles_of(text, "ERROR")
    clean = render.frames_text(FrameTable(table.rows[:1], (), (0x320D,)))
    assert "no writable mapping of any pagetable or descriptor frame" in render.to_plain(clean)


def test_descriptors_text_marks_xen_entries_and_fixups():
    rows = (decode_descriptor("gdt", 1, 0x00CFBA000000FFFF, guest_raw=0x00CF9A000000FFFF,
                              notes=("DPL 0 raised to 1",)),
            decode_descriptor("xen", 7171, 0x00CFBB000000FFFF))
    table = DescriptorTable("GDT", 0, (0x1234,), 2, 0, rows, RESERVED_NAMES, "Xen 4.17 rule")
    text = render.descriptors_text(table, None)
    plain = render.to_plain(text)
    assert "vcpu0 GDT: 2 guest entries, frames 0x1234" in plain
    assert "segment limits: Xen 4.17 rule" in plain
    assert "guest wrote 00cf9a000000ffff; DPL 0 raised to 1" in plain
    assert "class:reserved" in styles_of(text, "[FLAT_RING1_CS]")
    assert "00cfba000000ffff" in plain                   # raw column when there is room
    narrow = render.to_plain(render.descriptors_text(table, 80))
    assert "00cfba000000ffff" not in narrow.split("guest wrote")[0]
    assert all(len(line) <= 80 for line in narrow.splitlines())


def test_traps_and_events_text():
    traps = TrapTable(0, (TrapRow(14, "#PF", 0, True, 0xE019, 0xC0003000, "page_fault"),),
                      (CallbackRow("event", 0xE019, 0xC0003100, "hypervisor_callback", True),),
                      (0xE021, 0xC0021000), "stack_switch")
    plain = render.to_plain(render.traps_text(traps))
    assert " 0xe #PF" in plain and "0xe019:0xc0003000 <page_fault>" in plain
    assert "event     0xe019:0xc0003100 <hypervisor_callback>  masks events" in plain
    events = (EventRow(3, "virq", "virq VIRQ_TIMER", 0, True, True, 4),)
    text = render.events_text(events)
    assert "virq VIRQ_TIMER" in render.to_plain(text)
    assert "pending but masked" in render.to_plain(text)
    assert render.to_plain(render.events_text(())) == "no event channels in use\n"


def test_breakpoint_and_help_tables():
    rows = [render.BreakpointRow("1", "breakpoint", "0xc000274e <xen_reserve_top>", "hit 1 times"),
            render.BreakpointRow("catch 1", "catch", "hypercall sched_op")]
    out = lines(render.breakpoint_table(rows))
    assert out[0].split() == ["num", "type", "where"]
    assert out[1].startswith("1        breakpoint")
    assert render.to_plain(render.breakpoint_table([])).startswith("no breakpoints")
    help_out = lines(render.help_table([("bt [N]", "backtrace", "backtrace")], 30))
    assert all(len(line) <= 30 for line in help_out)


# -- style, history, expressions, completion --------------------------------------------------------
def test_colour_turns_off_with_no_color_or_a_dumb_terminal():
    assert color_enabled({"TERM": "xterm-256color"})
    assert not color_enabled({"TERM": "xterm", "NO_COLOR": "1"})
    assert color_enabled({"TERM": "xterm", "NO_COLOR": ""})
    assert not color_enabled({"TERM": "dumb"})


def test_monochrome_style_keeps_attributes_only():
    colours = ("ansi", "#", "bg:")
    plain = repl_style(False)
    for name, rule in plain.style_rules:
        assert not any(c in rule for c in colours), (name, rule)
    assert ("status", "reverse") in plain.style_rules
    assert any("ansi" in rule for rule in STYLE_RULES.values())   # colour when allowed
    assert not any("bg:" in rule or "#" in rule for rule in STYLE_RULES.values())


def test_history_lives_in_the_state_directory(tmp_path):
    assert history_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "pvdbg" / "history"
    assert history_path({"HOME": "/home/u"}).as_posix() == "/home/u/.local/state/pvdbg/history"


def test_eval_address():
    symbols = {"start_kernel": 0xC00027AC}.get
    regs = {"esp": 0xC0007F8C}
    read = regs.__getitem__
    assert eval_address("start_kernel", symbols, read) == 0xC00027AC
    assert eval_address("start_kernel+0x10", symbols, read) == 0xC00027BC
    assert eval_address("$esp + 8 - 4", symbols, read) == 0xC0007F90
    assert eval_address("-1", symbols, read) == 0xFFFFFFFF
    assert eval_address("1234", symbols, read) == 1234
    for bad, why in (("nosuch", "no symbol"), ("$xyz", "no register"), ("1 2", "missing +"),
                     ("start_kernel+", "ends with"), ("0xzz", "bad number"), ("", "needed")):
        with pytest.raises(AddressError, match=why):
            eval_address(bad, symbols, read)


def completions(completer, text):
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_completer_commands_symbols_hypercalls():
    commands = {"break": ("@symbol",), "b": ("@symbol",), "catch": ("hypercall", "trap"),
                "hypercalls": ("@hypercall", "follow", "name=", "caller="),
                "help": ("@command",), "backtrace": ()}
    completer = ReplCompleter(lambda: commands, lambda: ("start_kernel", "startup_xen", "xen_vcpu"),
                              lambda: ("console_io", "mmu_update", "mmuext_op"))
    assert completions(completer, "b") == ["b", "backtrace", "break"]
    assert completions(completer, "break sta") == ["start_kernel", "startup_xen"]
    assert completions(completer, "catch h") == ["hypercall"]
    assert completions(completer, "catch hypercall mmu") == ["mmu_update", "mmuext_op"]
    assert completions(completer, "hypercalls con") == ["console_io"]
    assert completions(completer, "hypercalls fo") == ["follow"]
    assert completions(completer, "hypercalls name=mmu") == ["mmu_update", "mmuext_op"]
    assert completions(completer, "hypercalls caller=xen") == ["xen_vcpu"]
    assert completions(completer, "help ba") == ["backtrace"]
    assert completions(completer, "break $e") == []
    assert completions(completer, "nosuch x") == []
