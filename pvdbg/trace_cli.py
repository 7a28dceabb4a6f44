"""`pvdbg trace`: write, compare and export trace files.

  pvdbg trace [GUEST] -o FILE.jsonl [run options]   run a guest, write its trace
  pvdbg trace diff A.jsonl B.jsonl                  first divergence and a summary
  pvdbg trace export --perfetto A.jsonl -o OUT.json Chrome/Perfetto trace-event JSON

`trace` runs exit as `pvdbg run` does; `trace diff` exits 0 when the traces are
identical, 1 when they differ, 2 on bad input; `trace export` exits 0, or 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

USAGE = ("pvdbg trace [GUEST] -o FILE.jsonl [run options]\n"
         "       pvdbg trace diff A.jsonl B.jsonl [--context N]\n"
         "       pvdbg trace export --perfetto A.jsonl -o OUT.json")


def _run_subparser() -> argparse.ArgumentParser:
    """`pvdbg run`'s own parser, so `pvdbg trace` takes exactly its options."""
    from .cli import build_parser
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise LookupError("pvdbg.cli has no run command")


def _run_parser():
    from .cli import _Parser
    p = _Parser(prog="pvdbg trace", usage=USAGE, parents=[_run_subparser()],
                conflict_handler="resolve",
                description="Run a guest as `pvdbg run` does and write every trace record "
                            "to a JSONL file (the console goes to stdout, the summary to "
                            "stderr).")
    p.add_argument("-o", "--output", "--trace", required=True, metavar="FILE.jsonl",
                   dest="output", help="where to write the trace (one JSON record per line)")
    return p


def _diff_parser():
    from .cli import _Parser
    p = _Parser(prog="pvdbg trace diff",
                description="Show where two JSONL traces first differ, then a summary. "
                            "Exit 0 identical, 1 different, 2 bad input.")
    p.add_argument("a", metavar="A.jsonl")
    p.add_argument("b", metavar="B.jsonl")
    p.add_argument("--context", type=int, default=3, metavar="N",
                   help="identical records to show before the divergence (default 3)")
    return p


def _export_parser():
    from .cli import _Parser
    p = _Parser(prog="pvdbg trace export",
                description="Convert a JSONL trace to Chrome trace-event JSON "
                            "(open it in ui.perfetto.dev or chrome://tracing).")
    p.add_argument("--perfetto", action="store_true", required=True,
                   help="Chrome/Perfetto trace-event JSON (the one format so far)")
    p.add_argument("trace", metavar="A.jsonl")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json")
    return p


def cmd_trace(args, run_command=None) -> int:
    """Entry from pvdbg.cli: `args.argv` is everything after `trace`; `run_command` is
    the CLI's own `cmd_run` (passed in, as pvdbg.cli may be running as __main__)."""
    argv: list[str] = list(args.argv)
    if argv[:1] == ["diff"]:
        return trace_diff(_diff_parser().parse_args(argv[1:]))
    if argv[:1] == ["export"]:
        return trace_export(_export_parser().parse_args(argv[1:]))
    if run_command is None:
        from .cli import cmd_run as run_command
    run_args = _run_parser().parse_args(argv)
    run_args.trace = run_args.output
    return run_command(run_args)


def trace_diff(args) -> int:
    from .cli import EXIT_BAD_INPUT
    from .tracediff import diff_traces, render_diff
    from .tracefile import TraceFileError, read_trace
    if args.context < 0:
        sys.stderr.write("pvdbg: --context must be 0 or more\n")
        return EXIT_BAD_INPUT
    try:
        a = read_trace(args.a)
        b = read_trace(args.b)
    except TraceFileError as exc:
        sys.stderr.write(f"pvdbg: {exc}\n")
        return EXIT_BAD_INPUT
    diff = diff_traces(a, b, context=args.context)
    sys.stdout.write(render_diff(diff, args.a, args.b))
    return 0 if diff.identical else 1


def trace_export(args) -> int:
    from .cli import EXIT_BAD_INPUT
    from .tracefile import TraceFileError, read_trace
    from .views.perfetto import export_json
    try:
        records = read_trace(args.trace)
    except TraceFileError as exc:
        sys.stderr.write(f"pvdbg: {exc}\n")
        return EXIT_BAD_INPUT
    try:
        Path(args.output).write_text(export_json(records, Path(args.trace).name),
                                     encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"pvdbg: cannot write {args.output}: {exc.strerror or exc}\n")
        return EXIT_BAD_INPUT
    return 0


def main(argv: Sequence[str]) -> int:
    """For tests: `main(["diff", "a.jsonl", "b.jsonl"])`."""
    return cmd_trace(argparse.Namespace(argv=list(argv)))
