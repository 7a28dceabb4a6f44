"""Pure renderers: engine data -> plain text (monitor commands, CLI, REPL panes)."""
from __future__ import annotations

from ..trace import TraceKind, TraceLog


def _fmt_args(args: dict) -> str:
    return ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
                     for k, v in args.items())


def hypercall_table(trace: TraceLog, count: int = 20, filt: str | None = None) -> str:
    """The last `count` hypercalls as a table; multicall entries indented."""
    rows = []
    for r in trace:
        if r.kind not in (TraceKind.hypercall, TraceKind.multicall_entry):
            continue
        result = "" if r.result is None else (r.error or f"{r.result:#x}" if r.result > 9 else
                                              r.error or str(r.result))
        if filt and filt not in r.name and filt not in (r.symbol or "") and filt != result:
            continue
        indent = "  " if r.kind is TraceKind.multicall_entry else ""
        when = "-" if r.icount is None else str(r.icount)
        rows.append(f"{when:>12} vcpu{r.vcpu} {(r.symbol or hex(r.eip)):<28} "
                    f"{indent}{r.name}({_fmt_args(r.args)}) = {result}"
                    + (f"  [{r.detail}]" if r.detail else ""))
    rows = rows[-count:] if count else rows
    header = f"{'icount':>12} vcpu  {'caller':<28} hypercall = result\n"
    return header + "".join(row + "\n" for row in rows) if rows else "no hypercalls recorded\n"


def vcpu_summary(session, vcpu_id: int) -> str:
    hv = session.hv
    info = hv.vcpu_info(vcpu_id)
    regs = session.registers() if hv.current.vcpu_id == vcpu_id else None
    lines = [f"vcpu{vcpu_id}: upcall_mask={info.evtchn_upcall_mask} "
             f"upcall_pending={info.evtchn_upcall_pending} "
             f"pending_sel={info.evtchn_pending_sel:#010x} cr2={info.cr2:#x}"]
    if regs is not None:
        where = hv.symbolize(regs["eip"]) or f"{regs['eip']:#x}"
        lines.append(f"  ring {regs['cs'] & 3}  eip {regs['eip']:#010x} {where}  "
                     f"cr3 {regs['cr3']:#010x}  esp {regs['esp']:#010x}")
    vcpu = hv.vcpus[vcpu_id]
    lines.append(f"  {'blocked' if vcpu.blocked else 'runnable'}  kernel stack "
                 f"{vcpu.kernel_ss:#06x}:{vcpu.kernel_sp:#010x}")
    return "\n".join(lines) + "\n"


def stop_line(stop) -> str:
    where = f"eip {stop.eip:#010x}"
    counted = "" if stop.icount is None else f" after {stop.icount} instructions"
    return f"stopped ({stop.reason}{': ' + stop.detail if stop.detail else ''}) at {where}{counted}"
