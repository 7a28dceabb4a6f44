"""Engine -> view data: what the renderers show, read from a stopped Session.

Everything here reads (never changes) the machine and returns frozen dataclasses, so
pvdbg/views/render.py stays pure.  Callers hold the engine (Controller.inspect or the
stub's thread) while these run.
"""
from __future__ import annotations

import linecache
import os
import re
import struct
from dataclasses import dataclass

from ..disasm import disassemble
from ..machine.memory import PAGE_SHIFT, PAGE_SIZE
from ..xen.abi import VcpuTimeInfo
from ..xen.entry import AREA_VA, TRAMPOLINE_VA
from ..xen.guestmem import GuestFault

MAX_DISAS_INSNS = 1000
MAX_DUMP_BYTES = 1 << 16
MAX_BACKTRACE = 64
X86_MAX_INSN = 15
INVALID_M2P = 0xFFFFFFFF


class ViewError(Exception):
    """The view cannot be produced (bad address, unmapped memory...): one line."""


def guest_bits(session_or_hv) -> int:
    """32 (PAE) or 64: the width of the guest's registers and addresses."""
    hv = getattr(session_or_hv, "hv", session_or_hv)
    return getattr(hv, "guest_bits", 32)


def _in_xen(session, guest_va: int) -> bool:
    """Whether `guest_va` is in Xen's part of the guest's address space."""
    if guest_bits(session) == 64:
        from ..xen.pv64.layout import HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START
        return HYPERVISOR_VIRT_START <= guest_va < HYPERVISOR_VIRT_END
    return guest_va >= AREA_VA


def _trampoline_va(session) -> int:
    if guest_bits(session) == 64:
        from ..xen.pv64.area import TRAMPOLINE_VA as TRAMPOLINE_VA64
        return TRAMPOLINE_VA64
    return TRAMPOLINE_VA


def vcpu_mode(hv, vcpu_id: int) -> str | None:
    """"kernel" or "user" for a 64-bit PV vcpu (both run at CPL 3), None for 32-bit."""
    pv = getattr(hv.vcpus[vcpu_id], "pv", None)
    if guest_bits(hv) != 64 or pv is None:
        return None
    return "kernel" if pv.kernel_mode else "user"


# -- symbols -----------------------------------------------------------------------------
def symbol_at(session, guest_va: int) -> str | None:
    """name+offset for an address inside the guest image, Xen's trampoline page by name,
    None elsewhere (so a stack or heap address is never shown as `_end+0x...`)."""
    trampoline = _trampoline_va(session)
    if trampoline <= guest_va < trampoline + PAGE_SIZE:
        offset = guest_va - trampoline
        return "xen_trampoline" + (f"+{offset:#x}" if offset else "")
    image = session.image
    if not image.kernel_start_va <= guest_va < image.kernel_end_va:
        return None
    return session.image.symbols.format(guest_va) if session.image.symbols.lookup(guest_va) \
        else None


# -- registers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistersView:
    regs: dict[str, int]
    eip_symbol: str | None
    eip_location: str | None
    ring: int
    upcall_mask: int
    upcall_pending: int
    bits: int = 32               # 64: regs holds rax..r15, rip, fs_base/gs_base
    mode: str | None = None      # 64-bit PV: "kernel" or "user" mode


def registers_view(session) -> RegistersView:
    regs = session.registers()
    hv = session.hv
    info = hv.vcpu_info(hv.current.vcpu_id)
    return RegistersView(regs, symbol_at(session, regs["eip"]),
                         source_location(session, regs["eip"]),
                         regs["cs"] & 3, info.evtchn_upcall_mask, info.evtchn_upcall_pending,
                         guest_bits(session), vcpu_mode(hv, hv.current.vcpu_id))


# -- memory in three address spaces ---------------------------------------------------
ADDRESS_SPACES = ("va", "pa", "ma")
SPACE_NAMES = {"va": "guest virtual", "pa": "pseudo-physical", "ma": "machine"}


def read_space(session, space: str, address: int, length: int) -> bytes:
    """`length` bytes at `address` in `space`: va (through the current pagetables,
    Xen's area included), pa (pfn -> mfn through the domain's P2M), ma (machine)."""
    if not 0 < length <= MAX_DUMP_BYTES:
        raise ViewError(f"length must be 1..{MAX_DUMP_BYTES}")
    if space == "va":
        try:
            return session.read_memory_any(address, length)
        except GuestFault as fault:
            raise ViewError(f"cannot read guest virtual {fault.guest_va:#x}: {fault.reason}") from None
    memory = session.hv.memory
    out = bytearray()
    while len(out) < length:
        at = address + len(out)
        chunk = min(length - len(out), PAGE_SIZE - (at & (PAGE_SIZE - 1)))
        if space == "pa":
            mfn = pfn_to_mfn(session.hv, at >> PAGE_SHIFT)
            if mfn is None:
                raise ViewError(f"pseudo-physical {at:#x}: pfn {at >> PAGE_SHIFT:#x} is not "
                                f"in the domain's P2M ({len(session.hv.built.p2m)} pages)")
            maddr = (mfn << PAGE_SHIFT) | (at & (PAGE_SIZE - 1))
        elif space == "ma":
            if not memory.frame_valid(at >> PAGE_SHIFT):
                raise ViewError(f"machine address {at:#x} is outside RAM "
                                f"({memory.nr_frames} frames)")
            maddr = at
        else:
            raise ViewError(f"unknown address space {space!r} (va, pa or ma)")
        out += memory.read(maddr, chunk)
    return bytes(out)


def pfn_to_mfn(hv, pfn: int) -> int | None:
    """The domain's P2M as the builder made it (hv.built.p2m)."""
    p2m = hv.built.p2m
    return p2m[pfn] if 0 <= pfn < len(p2m) else None


def mfn_to_pfn(hv, mfn: int) -> int | None:
    """Xen's M2P (machine_to_phys_mapping) entry for `mfn`, None if invalid."""
    m2p = hv.built.m2p_mfns
    entry = 8 if guest_bits(hv) == 64 else 4
    index, offset = divmod(mfn * entry, PAGE_SIZE)
    if mfn < 0 or index >= len(m2p):
        return None
    value = int.from_bytes(hv.memory.read((m2p[index] << PAGE_SHIFT) + offset, entry), "little")
    return None if value == (1 << entry * 8) - 1 else value


# -- disassembly -----------------------------------------------------------------------
@dataclass(frozen=True)
class DisasLine:
    address: int
    raw: bytes
    text: str
    label: str | None            # the symbol that starts here
    symbol: str | None           # name+offset of this address
    location: str | None         # "file.c:42" when the source line changes here
    source: str | None           # that source line's text, when the file is on disk
    target: str | None           # symbol of a direct call/jump target
    is_pc: bool
    breakpoint: bool


_TARGET = re.compile(r"^(?:call|j\w+|loop\w*)\s+(0x[0-9a-f]+)$")


def _read_code(session, address: int, length: int) -> bytes:
    """As many bytes as are readable from `address`, up to `length`."""
    try:
        return session.read_memory_any(address, length)
    except GuestFault as fault:
        readable = fault.guest_va - address
        if readable <= 0:
            raise ViewError(f"cannot read code at {address:#x}: {fault.reason}") from None
        return session.read_memory_any(address, readable)


def disassembly(session, address: int, count: int) -> list[DisasLine]:
    """`count` instructions from `address` with symbols, source lines and markers."""
    if not 0 < count <= MAX_DISAS_INSNS:
        raise ViewError(f"instruction count must be 1..{MAX_DISAS_INSNS}")
    code = _read_code(session, address, count * X86_MAX_INSN)
    symbols = session.image.symbols
    eip = session.cpu.read("eip")
    breakpoints = session.debug.breakpoints
    out = []
    last_line = symbols.line_for(address - 1) if address else None
    for insn_address, raw, text in disassemble(code, address, count, guest_bits(session)):
        symbol = symbols.symbol_for(insn_address)
        label = symbol.name if symbol is not None and symbol.address == insn_address else None
        line = symbols.line_for(insn_address)
        location = source = None
        if line is not None and line != last_line:
            location = f"{os.path.basename(line[0])}:{line[1]}"
            source = linecache.getline(line[0], line[1]).strip() or None
        last_line = line
        m = _TARGET.match(text)
        target = symbol_at(session, int(m.group(1), 16)) if m is not None else None
        out.append(DisasLine(insn_address, raw, text, label, symbol_at(session, insn_address),
                             location, source, target, insn_address == eip,
                             insn_address in breakpoints))
    if not out:
        raise ViewError(f"no instruction decodes at {address:#x}")
    return out


def source_location(session, address: int) -> str | None:
    line = session.image.symbols.line_for(address)
    return None if line is None else f"{os.path.basename(line[0])}:{line[1]}"


# -- backtrace -------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    level: int
    eip: int
    symbol: str | None
    location: str | None
    frame_pointer: int | None     # EBP of this frame, when known


def _u32(session, guest_va: int) -> int | None:
    try:
        return struct.unpack("<I", session.read_memory(guest_va, 4))[0]
    except GuestFault:
        return None


def _word(session, guest_va: int) -> int | None:
    """A stack word: 4 bytes for a 32-bit guest, 8 for a 64-bit one."""
    size = 8 if guest_bits(session) == 64 else 4
    try:
        return int.from_bytes(session.read_memory(guest_va, size), "little")
    except GuestFault:
        return None


def backtrace(session, max_frames: int = MAX_BACKTRACE) -> tuple[list[Frame], str | None]:
    """Frame-pointer unwind from the current vcpu: (frames, why it ended early or None).

    At a function's first instruction (before `push %ebp`) or one after it, and in
    frameless code such as the hypercall page, the return address is read from the stack
    pointer instead of EBP, as the prologue has not run yet."""
    regs = session.cpu.read_many(("eip", "esp", "ebp"))
    symbols = session.image.symbols
    eip, esp, ebp = regs["eip"], regs["esp"], regs["ebp"]
    word = 8 if guest_bits(session) == 64 else 4

    def frame(level: int, pc: int, fp: int | None) -> Frame:
        if _in_xen(session, pc):
            return Frame(level, pc, symbol_at(session, pc) or "<Xen>", None, fp)
        lookup_pc = pc if level == 0 else pc - 1      # a caller's line is the call's
        return Frame(level, pc, symbol_at(session, pc), source_location(session, lookup_pc), fp)

    frames = [frame(0, eip, ebp)]
    symbol = symbols.symbol_for(eip)
    at_ret = _u32(session, eip)
    first = None if symbol is None else _u32(session, symbol.address)
    ret: int | None
    if at_ret is not None and at_ret & 0xFF == 0xC3:
        ret = _word(session, esp)                  # epilogue done: EBP is the caller's
    elif symbol is not None and (eip == symbol.address or first is None
                                 or first & 0xFF != 0x55):
        ret = _word(session, esp)                  # before the prologue, or frameless
    elif symbol is not None and eip == symbol.address + 1:
        ret = _word(session, esp + word)           # after push %ebp
    elif ebp:
        ret, ebp = _word(session, ebp + word), _word(session, ebp) or 0
    else:
        ret = None
    seen = set()
    while ret and len(frames) < max_frames:
        if symbol_at(session, ret) is None:
            return frames, f"stopped at {ret:#x}: not in the guest's code"
        frames.append(frame(len(frames), ret, ebp or None))
        if not ebp:
            return frames, None
        if ebp in seen:
            return frames, f"frame pointer loop at {ebp:#x}"
        seen.add(ebp)
        ret, next_ebp = _word(session, ebp + word), _word(session, ebp)
        if ret is None or next_ebp is None:
            return frames, f"frame pointer {ebp:#x} is not readable"
        if next_ebp and next_ebp <= ebp:
            return frames, f"frame pointer {next_ebp:#x} goes down the stack"
        ebp = next_ebp
    if ret and len(frames) >= max_frames:
        return frames, f"more than {max_frames} frames"
    return frames, None


# -- vcpu ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VcpuState:
    vcpu_id: int
    online: bool
    blocked: bool
    current: bool
    upcall_mask: int
    upcall_pending: int
    pending_sel: int
    cr2: int
    pending_ports: tuple[int, ...]       # evtchn_pending bits set (shared_info)
    masked_ports: tuple[int, ...]        # evtchn_mask bits set
    time: VcpuTimeInfo
    ring: int | None                     # only for the vcpu on the CPU
    eip: int | None
    eip_symbol: str | None
    esp: int | None
    cr3: int | None
    kernel_ss: int
    kernel_sp: int
    mode: str | None = None              # 64-bit PV: "kernel" or "user" mode
    user_table_mfn: int | None = None    # 64-bit PV: NEW_USER_BASEPTR's table (0: none)
    kernel_table_mfn: int | None = None  # 64-bit PV: NEW_BASEPTR's table


def _bits(data: bytes) -> tuple[int, ...]:
    words = struct.unpack(f"<{len(data) // 4}I", data)
    return tuple(i * 32 + b for i, w in enumerate(words) if w for b in range(32) if w >> b & 1)


def vcpu_state(session, vcpu_id: int) -> VcpuState:
    hv = session.hv
    if not 0 <= vcpu_id < len(hv.vcpus):
        raise ViewError(f"no vcpu {vcpu_id} (the domain has {len(hv.vcpus)})")
    info = hv.vcpu_info(vcpu_id)
    shared = hv.shared_info()
    vcpu = hv.vcpus[vcpu_id]
    current = hv.current.vcpu_id == vcpu_id
    regs = session.registers() if current else None
    return VcpuState(
        vcpu_id=vcpu_id, online=vcpu.online, blocked=vcpu.blocked, current=current,
        upcall_mask=info.evtchn_upcall_mask, upcall_pending=info.evtchn_upcall_pending,
        pending_sel=info.evtchn_pending_sel, cr2=info.cr2,
        pending_ports=_bits(shared.evtchn_pending), masked_ports=_bits(shared.evtchn_mask),
        time=VcpuTimeInfo.from_bytes(info.time),
        ring=None if regs is None else regs["cs"] & 3,
        eip=None if regs is None else regs["eip"],
        eip_symbol=None if regs is None else symbol_at(session, regs["eip"]),
        esp=None if regs is None else regs["esp"], cr3=hv.cr3 if current else None,
        **_kernel_stack(vcpu), mode=vcpu_mode(hv, vcpu_id))


def _kernel_stack(vcpu) -> dict:
    """kernel_ss/kernel_sp (stack_switch), and for a 64-bit PV vcpu its two tables."""
    pv = getattr(vcpu, "pv", None)
    if pv is None:
        return {"kernel_ss": vcpu.kernel_ss, "kernel_sp": vcpu.kernel_sp}
    return {"kernel_ss": pv.kernel_ss, "kernel_sp": pv.kernel_sp,
            "kernel_table_mfn": pv.kernel_table_mfn, "user_table_mfn": pv.user_table_mfn}


# -- status line -----------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    state: str                  # "stopped", "running", "shut down", "crashed", ...
    reason: str                 # last stop reason or who runs the guest
    ring: int | None
    eip: int | None
    eip_symbol: str | None
    upcall_mask: int | None
    upcall_pending: int | None
    icount: int | None
    hypercalls: int
    gdb: str | None             # "gdb attached", "gdb :1234" or None


def hypercall_count(trace) -> int:
    return sum(list(trace.counts.values()))


def gather_status(session, running: str | None, gdb: str | None) -> Status:
    """The status line's data.  `running` names who runs the guest (None: stopped); while
    it runs only lock-free sources are read: the instruction counter, the trace counters,
    shared_info in machine memory, and EIP/CS as last synchronised by the CPU."""
    hv = session.hv
    try:
        regs = session.cpu.read_many(("eip", "cs"))
        eip, ring = regs["eip"], regs["cs"] & 3
    except Exception:          # the CPU is between states in another thread
        eip = ring = None
    info = hv.vcpu_info(hv.current.vcpu_id)
    stop = session.last_stop
    if running is not None:
        state, reason = "running", running
    elif hv.domain.crash is not None:
        state, reason = "crashed", hv.domain.crash.reason
    elif hv.domain.shutdown_reason is not None:
        state, reason = "shut down", hv.domain.shutdown_reason.name
    elif stop is None:
        state, reason = "stopped", "at the entry point"
    else:
        state, reason = "stopped", str(stop.reason)
    return Status(state, reason, ring, eip, None if eip is None else symbol_at(session, eip),
                  info.evtchn_upcall_mask, info.evtchn_upcall_pending, session.cpu.icount,
                  hypercall_count(session.trace), gdb)


__all__ = ["ViewError", "RegistersView", "registers_view", "read_space", "ADDRESS_SPACES",
           "SPACE_NAMES", "pfn_to_mfn", "mfn_to_pfn", "DisasLine", "disassembly", "Frame",
           "backtrace", "VcpuState", "vcpu_state", "Status", "hypercall_count", "source_location", "gather_status", "symbol_at"]
