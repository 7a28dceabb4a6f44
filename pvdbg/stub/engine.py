"""The GDB stub's view of the engine: `Target` implemented on a `Session`.

Thin: every call maps to one Session method; monitor commands go through the same
table the REPL uses (pvdbg/monitor.py).
"""
from __future__ import annotations

import shlex

from unicorn.x86_const import (UC_X86_REG_FCS, UC_X86_REG_FDP, UC_X86_REG_FDS, UC_X86_REG_FIP,
                               UC_X86_REG_FOP, UC_X86_REG_FP0, UC_X86_REG_FPCW, UC_X86_REG_FPSW,
                               UC_X86_REG_FPTAG, UC_X86_REG_MXCSR, UC_X86_REG_XMM0)

from ..machine.cpu import REGISTERS
from ..monitor import MonitorError, run_monitor
from ..session import Session, StopReason as EngineStop
from ..xen.guestmem import GuestFault
from .target import (BreakpointKind, MemoryAccessError, RegisterUnavailable, ResumeActions,
                     ResumeKind, StopEvent, StopReason, TargetError, UnsupportedBreakpoint)

_FPU = {"fctrl": UC_X86_REG_FPCW, "fstat": UC_X86_REG_FPSW, "ftag": UC_X86_REG_FPTAG,
        "fiseg": UC_X86_REG_FCS, "fioff": UC_X86_REG_FIP, "foseg": UC_X86_REG_FDS,
        "fooff": UC_X86_REG_FDP, "fop": UC_X86_REG_FOP, "mxcsr": UC_X86_REG_MXCSR}
_CORE = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
         "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4")
_WATCH = {BreakpointKind.WRITE: "write", BreakpointKind.READ: "read",
          BreakpointKind.ACCESS: "access"}
MAX_WATCH_LENGTH = 1 << 16
HOST_FILE_COMMANDS = frozenset({("trace", "save")})
"""Monitor command words refused over the protocol: they read or write host files."""
EFLAGS_FROM_DEBUGGER = 0x244DD5
"""EFLAGS bits a debugger write may change: CF PF AF ZF SF TF DF OF NT AC ID, what a
ring-1 `popf` changes. IF stays 1, IOPL 0 and VM/RF/VIF/VIP 0, as Xen keeps them for
a PV vcpu (ABI: XEN-PV-ABI.md "EFLAGS = 0x200", iret: "IOPL cleared and IF forced")."""


class SessionTarget:
    """A `pvdbg.stub.target.Target` over one Session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._hw_breakpoints: set[int] = set()
        self._sw_breakpoints: set[int] = set()
        self._stop = StopEvent(0, StopReason.INTERRUPT, signal=5,
                               message="guest halted at its first instruction")
        self._crash_reported = False
        self._register_cache: dict[str, int] | None = None

    # -- threads -------------------------------------------------------------------
    def vcpu_ids(self):
        return [v.vcpu_id for v in self.session.hv.vcpus if v.online]

    def describe_vcpu(self, vcpu: int) -> str:
        hv = self.session.hv
        info = hv.vcpu_info(vcpu)
        ring = hv.cpu.cpl if vcpu == hv.current.vcpu_id else "?"
        state = " blocked" if hv.vcpus[vcpu].blocked else ""
        return (f"vcpu{vcpu} ring{ring} upcall_mask={info.evtchn_upcall_mask} "
                f"pending={info.evtchn_upcall_pending}{state}")

    # -- registers -------------------------------------------------------------------
    def _registers(self) -> dict[str, int]:
        """Every core, FPU and SSE register in one batch, cached until the guest moves
        (a `g` packet reads ~45 registers: one batch instead of 45 calls)."""
        if self._register_cache is None:
            cpu = self.session.cpu
            names = (list(_CORE) + list(_FPU) + [f"st{i}" for i in range(8)]
                     + [f"xmm{i}" for i in range(8)])
            ids = ([REGISTERS[n] for n in _CORE] + list(_FPU.values())
                   + [UC_X86_REG_FP0 + i for i in range(8)] + [UC_X86_REG_XMM0 + i for i in range(8)])
            cache = {}
            for name, value in zip(names, cpu.uc.reg_read_batch(ids)):
                if name.startswith("st"):
                    mantissa, exponent = value
                    value = (exponent & 0xFFFF) << 64 | mantissa
                cache[name] = value
            self._register_cache = cache
        return self._register_cache

    def read_register(self, vcpu: int, name: str) -> int:
        cpu = self.session.cpu
        cached = self._registers().get(name)
        if cached is not None:
            return cached
        if name in _CORE:
            return cpu.read(name)
        if name in _FPU:
            return cpu.uc.reg_read(_FPU[name])
        if name.startswith("st") and name[2:].isdigit():
            mantissa, exponent = cpu.uc.reg_read(UC_X86_REG_FP0 + int(name[2:]))
            return (exponent & 0xFFFF) << 64 | mantissa
        if name.startswith("xmm") and name[3:].isdigit():
            return cpu.uc.reg_read(UC_X86_REG_XMM0 + int(name[3:]))
        if name == "upcall_mask":
            return self.session.hv.vcpu_info(vcpu).evtchn_upcall_mask
        if name == "upcall_pending":
            return self.session.hv.vcpu_info(vcpu).evtchn_upcall_pending
        raise RegisterUnavailable(f"no register {name}")

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        self._register_cache = None
        cpu = self.session.cpu
        if name == "eflags":
            value = value & EFLAGS_FROM_DEBUGGER | 0x202      # bit 1 reads as 1; IF on
        if name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags"):
            cpu.write(name, value)
        elif name in ("cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4"):
            raise RegisterUnavailable(f"{name} is owned by the hypervisor: change it through "
                                      "the guest (hypercalls), not the debugger")
        elif name in ("upcall_mask", "upcall_pending"):
            base = self.session.hv.vcpu_info_maddr(vcpu)
            self.session.hv.memory.write(base + (1 if name == "upcall_mask" else 0),
                                         bytes([value & 1]))
        elif name.startswith("xmm") and name[3:].isdigit():
            cpu.uc.reg_write(UC_X86_REG_XMM0 + int(name[3:]), value)
        elif name in _FPU:
            cpu.uc.reg_write(_FPU[name], value)
        elif name.startswith("st") and name[2:].isdigit():
            cpu.uc.reg_write(UC_X86_REG_FP0 + int(name[2:]),
                             (value & ((1 << 64) - 1), value >> 64 & 0xFFFF))
        else:
            raise RegisterUnavailable(f"no register {name}")

    # -- memory ------------------------------------------------------------------------
    def read_memory(self, vcpu: int, guest_va: int, length: int) -> bytes:
        try:
            return self.session.read_memory_any(guest_va, length)
        except GuestFault as fault:
            raise MemoryAccessError(fault.guest_va, str(fault)) from None

    def write_memory(self, vcpu: int, guest_va: int, data: bytes) -> None:
        try:
            self.session.write_memory(guest_va, data)
        except GuestFault as fault:
            raise MemoryAccessError(fault.guest_va, str(fault)) from None

    # -- breakpoints ------------------------------------------------------------------
    def insert_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        if kind in (BreakpointKind.SW, BreakpointKind.HW):
            if not 0 <= guest_va <= 0xFFFFFFFF:
                raise MemoryAccessError(guest_va)
            (self._sw_breakpoints if kind is BreakpointKind.SW else self._hw_breakpoints).add(guest_va)
            self.session.add_breakpoint(guest_va)
            return
        if not 0 < length <= MAX_WATCH_LENGTH:
            raise UnsupportedBreakpoint(f"watchpoint length {length} not supported")
        try:
            self.session.add_watchpoint(_WATCH[kind], guest_va, length)
        except GuestFault as fault:
            raise MemoryAccessError(fault.guest_va, str(fault)) from None

    def remove_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        if kind in (BreakpointKind.SW, BreakpointKind.HW):
            own = self._sw_breakpoints if kind is BreakpointKind.SW else self._hw_breakpoints
            other = self._hw_breakpoints if kind is BreakpointKind.SW else self._sw_breakpoints
            own.discard(guest_va)
            if guest_va not in other:
                self.session.remove_breakpoint(guest_va)
            return
        self.session.remove_watchpoint(_WATCH[kind], guest_va, length)

    # -- execution -----------------------------------------------------------------------
    def resume(self, actions: ResumeActions) -> StopEvent:
        self._register_cache = None
        session = self.session
        vcpu = session.hv.current.vcpu_id
        action = actions.action_for(vcpu)
        if action.kind is ResumeKind.STOP:
            return self._stop
        if getattr(session, "closed", False):
            raise TargetError("the guest was killed (gdb kill); restart pvdbg gdbserver")
        if session.crash is not None and self._crash_reported:
            self._stop = StopEvent(vcpu, StopReason.SHUTDOWN, exit_code=3,
                                   message="the domain crashed and is gone")
            return self._stop
        if action.kind is ResumeKind.STEP:
            stop = session.step(1)
        elif action.kind is ResumeKind.RANGE_STEP:
            stop = session.step_range(action.range_start, action.range_end)
        else:
            stop = session.run()
        self._stop = self._convert(stop)
        return self._stop

    def _convert(self, stop) -> StopEvent:
        vcpu = stop.vcpu
        if stop.reason is EngineStop.breakpoint:
            hw = stop.address in self._hw_breakpoints and stop.address not in self._sw_breakpoints
            return StopEvent(vcpu, StopReason.BREAKPOINT_HW if hw else StopReason.BREAKPOINT_SW)
        if stop.reason is EngineStop.watchpoint:
            reason = {"write": StopReason.WATCH, "read": StopReason.RWATCH,
                      "access": StopReason.AWATCH}[stop.watch_kind]
            return StopEvent(vcpu, reason, address=stop.address)
        if stop.reason is EngineStop.step:
            return StopEvent(vcpu, StopReason.STEP)
        if stop.reason is EngineStop.interrupt:
            return StopEvent(vcpu, StopReason.INTERRUPT)
        if stop.reason is EngineStop.catch:
            return StopEvent(vcpu, StopReason.CATCH, message=f"pvdbg: {stop.detail}")
        if stop.reason is EngineStop.crash:
            self._crash_reported = True
            return StopEvent(vcpu, StopReason.CRASH,
                             message=f"pvdbg: domain crash: {stop.detail} (state kept for "
                                     "inspection; continuing ends the domain)")
        if stop.reason is EngineStop.shutdown:
            reason = self.session.shutdown_reason
            return StopEvent(vcpu, StopReason.SHUTDOWN, exit_code=int(reason) if reason else 0,
                             message=f"pvdbg: domain shut down ({stop.detail})")
        return StopEvent(vcpu, StopReason.CATCH, message=f"pvdbg: {stop.reason}: {stop.detail}")

    def request_stop(self) -> None:
        self.session.request_stop()

    def stop_state(self) -> StopEvent:
        return self._stop

    def monitor(self, command: str) -> str:
        self._register_cache = None
        """Monitor commands that would touch host files are refused: whoever reaches the
        stub's port gets no host file access (`trace save` is for the REPL)."""
        try:
            words = shlex.split(command)
        except ValueError:
            words = []
        if tuple(words[:2]) in HOST_FILE_COMMANDS:
            return (f"error: '{' '.join(words[:2])}' writes a host file; the gdb stub offers no "
                    "host file access (use pvdbg run --trace FILE or the REPL)\n")
        try:
            return run_monitor(self.session, command)
        except MonitorError as exc:
            return f"error: {exc}\n"

    def kill(self) -> None:
        self.session.request_stop()
        self.session.close()

    def detach(self) -> None:
        self.session.debug.clear_all()
        self._sw_breakpoints.clear()
        self._hw_breakpoints.clear()
