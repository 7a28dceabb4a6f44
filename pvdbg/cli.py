"""The `pvdbg` command line.  Exit status:

  0  the guest powered off cleanly; or stdin ended and the guest waits for console input
     at its prompt; or Ctrl-] detached the terminal from the guest console
  1  the guest crashed (a crash report is printed)
  2  bad input: usage, missing file, not a PV kernel, does not fit in memory
  3  a bound was hit (--max-insns or --timeout)
  4  the guest blocked forever (every vcpu asleep, nothing can wake it)
  5  the guest shut down for another reason (reboot, suspend, watchdog)
  70 an internal error in pvdbg (please report it, with the trace)
  128+N  `run` stopped by signal N (SIGTERM 143, SIGINT 130) after writing its summary
     and closing its trace file
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path
from typing import IO, Sequence

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_BOUND, EXIT_BLOCKED, EXIT_OTHER, EXIT_INTERNAL = (
    0, 1, 2, 3, 4, 5, 70)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"pvdbg: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _add_guest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("guest", nargs="?", help="PV kernel ELF (default: the bundled seed guest)")
    p.add_argument("--memory", type=int, default=None, metavar="MiB",
                   help="guest RAM (default 64; 256 for 64-bit guests)")
    p.add_argument("--cmdline", default="", help="guest command line (start_info.cmd_line)")
    p.add_argument("--initrd", metavar="FILE",
                   help="initial ramdisk, loaded as the start_info module (64-bit guests)")
    p.add_argument("--identity-p2m", action="store_true",
                   help="give the guest pfn == mfn instead of a shuffled P2M")
    p.add_argument("--clock", choices=("icount", "host"), default="icount",
                   help="icount (default): exact instruction counts, deterministic time and "
                        "traces; host: full emulation speed, wall-clock time, no counts")
    p.add_argument("--p2m-seed", type=lambda v: int(v, 0), default=0x5EED,
                   help="seed of the shuffled P2M (default 0x5eed)")
    p.add_argument("--disk", action="append", default=[], metavar="FILE",
                   help="serve a raw disk image to the guest as a PV disk (xvda, then xvdb, "
                        "...; repeatable)")
    p.add_argument("--disk-readonly", action="store_true",
                   help="attach the --disk images read-only")
    p.add_argument("--xenstore", action="append", default=[], metavar="PATH=VALUE",
                   help="write a xenstore key before the guest starts (relative paths are "
                        "under /local/domain/<domid>; repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pvdbg", description="Debug Xen PV guests on an emulated Xen machine.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="boot a guest, stream its console, summarise its hypercalls")
    _add_guest_options(run)
    run.add_argument("--trace", metavar="FILE.jsonl", help="write every trace record as JSONL")
    run.add_argument("--max-insns", type=int, metavar="N", help="stop after N instructions")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after SECONDS")
    run.add_argument("--quiet", action="store_true", help="no summary at the end")
    run.add_argument("--trace-buffer", type=int, metavar="N",
                     help="trace records kept in memory (default 1000000, the oldest are "
                          "dropped); with --trace every record still reaches the file")
    tr = sub.add_parser("trace", add_help=False, prefix_chars="\0",
                        help="run a guest and write its JSONL trace; trace diff; trace export",
                        usage="pvdbg trace [GUEST] -o FILE.jsonl [run options] | "
                              "trace diff A B | trace export --perfetto A -o OUT")
    tr.add_argument("argv", nargs=argparse.REMAINDER)   # parsed by pvdbg.trace_cli
    gs = sub.add_parser("gdbserver", help="serve the guest to gdb, halted at its first instruction")
    _add_guest_options(gs)
    where = gs.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=1234, help="TCP port (0: pick a free one)")
    where.add_argument("--stdio", action="store_true",
                       help="speak RSP on stdin/stdout (gdb: target remote | pvdbg gdbserver --stdio)")
    gs.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                    help="address to bind (default 127.0.0.1; anything else is reachable by others)")
    g = sub.add_parser("gdb", help="start gdb connected to the guest, pvdbg's gdb commands loaded")
    _add_guest_options(g)
    g.add_argument("--gdb-binary", default="gdb", help="gdb to run (default: gdb)")
    g.add_argument("--batch-command", action="append", default=[], metavar="CMD",
                   help="run gdb in batch mode with these commands (repeatable)")
    sub.add_parser("gdb-init", help="print the gdb command that loads pvdbg's gdb scripts")
    rp = sub.add_parser("repl", help="interactive debugger (the default): hypercalls, vcpu, "
                                     "pagetables, descriptor tables, next to gdb with --gdb")
    _add_guest_options(rp)
    rp.add_argument("--gdb", type=int, metavar="PORT",
                    help="also serve gdb on PORT (0: pick a free one), sharing the guest")
    rp.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                    help="address the --gdb stub binds (default 127.0.0.1)")
    return parser


def _open_session(args, trace_file: IO[str] | None):
    from .session import Session, SessionOptions
    from .xen.builder import BuildError
    from .xen.image import BadGuestImage
    from .session import SessionError
    from .xen.devices import DiskSpec
    disks = tuple(DiskSpec(path, getattr(args, "disk_readonly", False))
                  for path in getattr(args, "disk", []))
    for disk in disks:
        if not Path(disk.path).is_file():
            raise _Fatal(f"--disk {disk.path}: no such file", EXIT_BAD_INPUT)
    keys = []
    for item in getattr(args, "xenstore", []):
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise _Fatal(f"--xenstore {item!r}: expected PATH=VALUE", EXIT_BAD_INPUT)
        keys.append((path, value))
    options = SessionOptions(memory_mib=args.memory, cmdline=args.cmdline, clock=args.clock,
                             p2m_seed=None if args.identity_p2m else args.p2m_seed,
                             disks=disks, xenstore=tuple(keys),
                             initrd=getattr(args, "initrd", None))
    if getattr(args, "trace_buffer", None) is not None:
        options = dataclasses.replace(options, trace_capacity=args.trace_buffer)
    try:
        return Session.open(args.guest, options, trace_file)
    except (BadGuestImage, BuildError, SessionError) as exc:
        raise _Fatal(str(exc), EXIT_BAD_INPUT) from None


class _Fatal(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def cmd_run(args) -> int:
    from .session import SessionError, StopReason
    from .trace import JsonlSpill
    from .views.report import render_crash_report, render_hypercall_summary, render_stop_state
    if args.guest is not None and not Path(args.guest).exists():
        raise _Fatal(f"{args.guest}: no such file", EXIT_BAD_INPUT)
    trace_buffer = getattr(args, "trace_buffer", None)
    if trace_buffer is not None and trace_buffer < 1:
        raise _Fatal(f"--trace-buffer must be at least 1 record, not {trace_buffer}",
                     EXIT_BAD_INPUT)
    trace_file = None
    if args.trace:
        try:
            trace_file = JsonlSpill(args.trace)   # whole lines only, even if killed
        except OSError as exc:
            raise _Fatal(f"cannot write trace file {args.trace}: {exc.strerror}", EXIT_BAD_INPUT)
    try:
        session = _open_session(args, trace_file)
    except BaseException:
        if trace_file is not None:
            trace_file.close()
        raise
    signals: list[int] = []

    def on_signal(signum, _frame):
        # First SIGTERM/SIGINT: stop the guest at the end of its slice, then report and
        # close the trace as for any stop. A second one: leave now (the trace file is
        # still closed on the way out, in whole lines).
        if signals:
            raise SystemExit(128 + signum)
        signals.append(signum)
        session.request_stop()

    previous_handlers = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous_handlers[signum] = signal.signal(signum, on_signal)
        except ValueError:                          # not the main thread
            pass
    out = sys.stdout.buffer
    session.hv.console_sinks.append(lambda data: (out.write(data), out.flush()))
    from .terminal import ConsoleTerminal
    keyboard = ConsoleTerminal(session, on_quit=session.request_stop)
    keyboard.start()
    try:
        stop = session.run(max_insns=args.max_insns, timeout=args.timeout)
    except SessionError as exc:
        raise _Fatal(str(exc), EXIT_INTERNAL) from None
    except KeyboardInterrupt:
        stop = session._stopped(StopReason.interrupt, "interrupted by Ctrl-C")
    finally:
        keyboard.close()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        session.close()
        if trace_file is not None:
            trace_file.close()
    if signals and stop.reason is StopReason.interrupt:
        stop = dataclasses.replace(stop, detail=f"{signal.Signals(signals[0]).name} received")
    detached = keyboard.quit_requested and stop.reason is StopReason.interrupt
    if detached:
        stop = dataclasses.replace(stop, detail="Ctrl-] pressed: detached from the guest console")
    err = sys.stderr
    if session.console_text and not session.console_text.endswith("\n"):
        out.write(b"\n")
        out.flush()
    if stop.reason is StopReason.idle and not args.quiet:
        err.write("pvdbg: input ended and the guest is idle, waiting for console input\n")
    if stop.reason is StopReason.crash:
        err.write(render_crash_report(session.crash, session.hv))
    if not args.quiet:
        state = ""
        if stop.reason in (StopReason.limit, StopReason.timeout, StopReason.interrupt,
                           StopReason.blocked):
            state = render_stop_state(stop, session.registers(),
                                      session.image.symbols.format(stop.eip), session.cpu.cpl)
        err.write(render_hypercall_summary(stop, session.trace, state=state))
    if signals:
        return 128 + signals[0]
    if detached or stop.reason is StopReason.idle:
        return EXIT_OK
    if stop.reason is StopReason.shutdown:
        return EXIT_OK if stop.detail == "poweroff" else EXIT_OTHER
    return {StopReason.crash: EXIT_CRASH, StopReason.limit: EXIT_BOUND,
            StopReason.timeout: EXIT_BOUND, StopReason.blocked: EXIT_BLOCKED,
            StopReason.interrupt: EXIT_BOUND}.get(stop.reason, EXIT_INTERNAL)


def cmd_gdbserver(args) -> int:
    from .stub.engine import SessionTarget
    from .stub.server import GdbServer, serve_stdio
    if args.guest is not None and not Path(args.guest).exists():
        raise _Fatal(f"{args.guest}: no such file", EXIT_BAD_INPUT)
    session = _open_session(args, None)
    session.console_input.open()         # `monitor console send` may type into the guest
    target = SessionTarget(session)
    if args.stdio:
        serve_stdio(target, sys.stdin.buffer, sys.stdout.buffer, log=sys.stderr)
        return EXIT_OK
    try:
        server = GdbServer(target, host=args.listen, port=args.port, log=sys.stderr)
    except OSError as exc:
        raise _Fatal(f"cannot listen on {args.listen}:{args.port}: {exc.strerror}", EXIT_BAD_INPUT)
    sys.stderr.write(f"pvdbg: gdbserver listening on {server.host}:{server.port} "
                     f"(gdb: target remote {server.host}:{server.port})\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return EXIT_OK


def _gdbscript_path() -> str:
    return str(Path(__file__).resolve().parent / "gdbscript.py")


def _guest_option_words(args) -> list[str]:
    words = ["--clock", args.clock, "--p2m-seed", hex(args.p2m_seed)]
    if args.memory is not None:
        words += ["--memory", str(args.memory)]
    if getattr(args, "initrd", None):
        words += ["--initrd", str(Path(args.initrd).resolve())]
    if args.cmdline:
        words += ["--cmdline", args.cmdline]
    if args.identity_p2m:
        words.append("--identity-p2m")
    for path in getattr(args, "disk", []):
        words += ["--disk", str(Path(path).resolve())]
    if getattr(args, "disk_readonly", False):
        words.append("--disk-readonly")
    for item in getattr(args, "xenstore", []):
        words += ["--xenstore", item]
    return words


def cmd_gdb(args) -> int:
    import os
    import shlex
    import shutil
    from .session import bundled_guest_path
    guest = args.guest or str(bundled_guest_path())
    if not Path(guest).exists():
        raise _Fatal(f"{guest}: no such file", EXIT_BAD_INPUT)
    gdb = shutil.which(args.gdb_binary)
    if gdb is None:
        raise _Fatal(f"{args.gdb_binary}: not found (install gdb)", EXIT_BAD_INPUT)
    server = " ".join(shlex.quote(w) for w in [sys.executable, "-m", "pvdbg.cli", "gdbserver",
                                                "--stdio", guest, *_guest_option_words(args)])
    argv = [gdb, "-q", "-ex", f"source {_gdbscript_path()}", "-ex", f"target remote | {server}"]
    if args.batch_command:
        argv.insert(1, "--batch")
        for c in args.batch_command:
            argv += ["-ex", c]
    argv.append(guest)
    sys.stdout.flush()
    os.execv(gdb, argv)
    return EXIT_INTERNAL


def cmd_gdb_init(args) -> int:
    print(f"source {_gdbscript_path()}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "gdbserver": cmd_gdbserver, "gdb": cmd_gdb, "gdb-init": cmd_gdb_init}


def cmd_trace(args) -> int:
    from .trace_cli import cmd_trace as run_trace_command
    return run_trace_command(args, cmd_run)


COMMANDS["trace"] = cmd_trace


def cmd_repl(args) -> int:
    from .views.launch import GdbListenError, launch_repl
    if args.guest is not None and not Path(args.guest).exists():
        raise _Fatal(f"{args.guest}: no such file", EXIT_BAD_INPUT)
    session = _open_session(args, None)
    try:
        return launch_repl(session, args.gdb, args.listen)
    except GdbListenError as exc:
        raise _Fatal(str(exc), EXIT_BAD_INPUT) from None


COMMANDS["repl"] = cmd_repl


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["repl"])      # `pvdbg`: the REPL on the seed guest
    try:
        return COMMANDS[args.command](args)
    except _Fatal as exc:
        sys.stderr.write(f"pvdbg: {exc}\n")
        return exc.code
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:        # a pvdbg bug: one line, the traceback for the report
        import traceback
        sys.stderr.write(f"pvdbg: internal error: {type(exc).__name__}: {exc} "
                         "(please report it with the traceback below)\n")
        traceback.print_exc(file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
