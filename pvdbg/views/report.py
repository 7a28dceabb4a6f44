"""Plain-text renderers for the CLI: crash reports and hypercall summaries."""
from __future__ import annotations

from collections import Counter

from ..trace import TraceKind, TraceLog


def _gprs64(r: dict[str, int], prefix: str) -> list[str]:
    """rax..r15 of a 64-bit vcpu, four a line."""
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
    return [prefix + " ".join(f"{name} {r[name]:016x}" for name in names[i:i + 4])
            for i in range(0, 16, 4)]


def render_crash_report(crash, hv) -> str:
    r = crash.registers
    if "r8" in r:                     # a 64-bit vcpu (cpu64.FRAME_REGS64)
        lines = [
            f"(XEN) domain {hv.domain.domid} crashed on vcpu{crash.vcpu}: {crash.reason}",
            f"(XEN) rip {r['rip']:#018x} {crash.symbol or ''}".rstrip(),
            f"(XEN)   {crash.instruction_bytes.hex(' ') or '??'}    {crash.instruction}",
            *_gprs64(r, "(XEN) "),
            f"(XEN) rflags {r['rflags']:08x} cs {r['cs']:04x} ss {r['ss']:04x} "
            f"ds {r['ds']:04x} es {r['es']:04x} fs {r['fs']:04x} gs {r['gs']:04x}",
            f"(XEN) fs_base {r['fs_base']:016x} gs_base {r['gs_base']:016x}",
            f"(XEN) cr2 {crash.cr2:016x} cr3 {crash.cr3:016x}",
        ]
        return _with_records(lines, crash)
    lines = [
        f"(XEN) domain {hv.domain.domid} crashed on vcpu{crash.vcpu}: {crash.reason}",
        f"(XEN) eip {r['eip']:#010x} {crash.symbol or ''}".rstrip(),
        f"(XEN)   {crash.instruction_bytes.hex(' ') or '??'}    {crash.instruction}",
        f"(XEN) eax {r['eax']:08x} ebx {r['ebx']:08x} ecx {r['ecx']:08x} edx {r['edx']:08x}",
        f"(XEN) esi {r['esi']:08x} edi {r['edi']:08x} ebp {r['ebp']:08x} esp {r['esp']:08x}",
        f"(XEN) eflags {r['eflags']:08x} cs {r['cs']:04x} ss {r['ss']:04x} ds {r['ds']:04x} "
        f"es {r['es']:04x} fs {r['fs']:04x} gs {r['gs']:04x}",
        f"(XEN) cr2 {crash.cr2:08x} cr3 {crash.cr3:08x}",
    ]
    return _with_records(lines, crash)


def _with_records(lines: list[str], crash) -> str:
    if crash.last_records:
        lines.append("(XEN) last trace records:")
        for rec in crash.last_records:
            res = "" if rec.result is None else f" = {rec.error or rec.result}"
            lines.append(f"(XEN)   #{rec.seq} {rec.kind} {rec.name}{res} {rec.detail[:60]}".rstrip())
    return "\n".join(lines) + "\n"


def render_stop_state(stop, registers: dict[str, int], where: str, ring: int) -> str:
    """Where a guest that did not shut down was stopped: vcpu, EIP as symbol+offset,
    ring, and its general registers (for --max-insns, --timeout, signals, blocked)."""
    r = registers
    if "r8" in r:                     # a 64-bit vcpu: guest kernel and user both at CPL 3
        return "\n".join([
            f"pvdbg: vcpu{stop.vcpu} stopped at rip {stop.eip:#018x} {where} (ring {ring})",
            *_gprs64(r, "pvdbg:   "),
            f"pvdbg:   rflags {r['rflags']:08x} cs {r['cs']:04x} ss {r['ss']:04x} "
            f"cr3 {r['cr3']:016x}"]) + "\n"
    return (f"pvdbg: vcpu{stop.vcpu} stopped at eip {stop.eip:#010x} {where} (ring {ring})\n"
            f"pvdbg:   eax {r['eax']:08x} ebx {r['ebx']:08x} ecx {r['ecx']:08x} "
            f"edx {r['edx']:08x} esi {r['esi']:08x} edi {r['edi']:08x}\n"
            f"pvdbg:   ebp {r['ebp']:08x} esp {r['esp']:08x} eflags {r['eflags']:08x} "
            f"cs {r['cs']:04x} ss {r['ss']:04x} cr3 {r['cr3']:08x}\n")


def render_hypercall_summary(stop, trace: TraceLog, *, state: str = "") -> str:
    """The stop line, then `state` (render_stop_state) if given, then per-hypercall counts."""
    counts = Counter({k: v for k, v in trace.counts.items()})
    errors = Counter(r.name for r in trace if r.kind is TraceKind.hypercall and r.error)
    lines = [f"pvdbg: stopped: {stop.reason}" + (f" ({stop.detail})" if stop.detail else "")
             + (f" after {stop.icount} instructions" if stop.icount is not None else "")]
    if state:
        lines.append(state.rstrip("\n"))
    if counts:
        lines.append(f"pvdbg: {sum(counts.values())} hypercalls:")
        width = max(len(n) for n in counts)
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            err = f"  ({errors[name]} failed)" if errors[name] else ""
            lines.append(f"  {name:<{width}} {n:>8}{err}")
    return "\n".join(lines) + "\n"
