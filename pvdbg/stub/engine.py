"""The GDB stub's view of the engine: `Target` implemented on a `Session`.

Thin: every call maps to one Session method; monitor commands go through the same
table the REPL uses (pvdbg/monitor.py).
"""
from __future__ import annotations

import functools
import shlex

from unicorn.x86_const import (UC_X86_REG_FCS, UC_X86_REG_FDP, UC_X86_REG_FDS, UC_X86_REG_FIP,
                               UC_X86_REG_FOP, UC_X86_REG_FP0, UC_X86_REG_FPCW, UC_X86_REG_FPSW,
                               UC_X86_REG_FPTAG, UC_X86_REG_MXCSR, UC_X86_REG_XMM0,
                               UC_X86_REG_XMM8)

from ..machine.paging import PageWalkError
from ..monitor import MonitorError, run_monitor
from ..session import Session, StopReason as EngineStop
from ..xen.guestmem import GuestFault
from ..xen.mm_query import debugger_walk
from .target import (BreakpointKind, MemoryAccessError, RegisterUnavailable, ResumeActions,
                     ResumeKind, StopEvent, StopReason, TargetError, UnsupportedBreakpoint)
from .tdesc import load_target_description

_FPU = {"fctrl": UC_X86_REG_FPCW, "fstat": UC_X86_REG_FPSW, "ftag": UC_X86_REG_FPTAG,
        "fiseg": UC_X86_REG_FCS, "fioff": UC_X86_REG_FIP, "foseg": UC_X86_REG_FDS,
        "fooff": UC_X86_REG_FDP, "fop": UC_X86_REG_FOP, "mxcsr": UC_X86_REG_MXCSR}
_CORE = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
         "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4")
_EXTENDED = (*_FPU, *(f"st{i}" for i in range(8)), *(f"xmm{i}" for i in range(8)))
_EXTENDED_IDS = (*_FPU.values(), *(UC_X86_REG_FP0 + i for i in range(8)),
                 *(UC_X86_REG_XMM0 + i for i in range(8)))
_STOP_REGISTERS = ("esp", "ebp", "eip", "cs")
"""What every stop needs: the registers stop replies carry (commands.EXPEDITED_REGISTERS)
and CS for the thread list's ring, read in one small batch when nothing else is asked
for (a single step, a breakpoint hit)."""
_CORE64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags",
           "cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base",
           "cr0", "cr2", "cr3", "cr4")
_EXTENDED64 = (*_FPU, *(f"st{i}" for i in range(8)), *(f"xmm{i}" for i in range(16)))
_EXTENDED64_IDS = (*_FPU.values(), *(UC_X86_REG_FP0 + i for i in range(8)),
                   *(UC_X86_REG_XMM0 + i for i in range(8)),
                   *(UC_X86_REG_XMM8 + i for i in range(8)))
_STOP_REGISTERS64 = ("rsp", "rbp", "rip", "cs")
_WRITABLE = {32: frozenset(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip",
                            "eflags")),
             64: frozenset((*_CORE64[:18],))}
"""Registers a debugger write goes straight to the CPU; segments, bases and CRs belong
to the hypervisor."""
PAGE_SIZE = 4096
MAX_CACHED_PAGES = 4096            # translations kept (16 MiB of guest VA)
_WATCH = {BreakpointKind.WRITE: "write", BreakpointKind.READ: "read",
          BreakpointKind.ACCESS: "access"}
_WATCH_STOPS = {"write": StopReason.WATCH, "read": StopReason.RWATCH,
                "access": StopReason.AWATCH}
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
        self.guest_bits = getattr(session.hv, "guest_bits", 32)
        self.target_description = load_target_description(self.guest_bits)
        """What the stub serves as target.xml (commands.Stub picks it up)."""
        wide = self.guest_bits == 64
        self._core_names = _CORE64 if wide else _CORE
        self._extended_names = _EXTENDED64 if wide else _EXTENDED
        self._extended_ids = _EXTENDED64_IDS if wide else _EXTENDED_IDS
        self._stop_names = _STOP_REGISTERS64 if wide else _STOP_REGISTERS
        self._address_mask = (1 << self.guest_bits) - 1
        self._g_layout = _g_layout(self.guest_bits)
        self._hw_breakpoints: set[int] = set()
        self._sw_breakpoints: set[int] = set()
        self._stop = StopEvent(0, StopReason.INTERRUPT, signal=5,
                               message="guest halted at its first instruction")
        self._crash_reported = False
        # Caches valid while the guest stays stopped where it is: they are dropped when
        # the session's last stop changes (any run, ours or a REPL's), on every write
        # from the debugger and on monitor commands.
        self._cache_stop = session.last_stop
        self._register_cache: dict[str, int] | None = None    # _CORE, one raw batch
        self._stop_register_cache: dict[str, int] | None = None   # _STOP_REGISTERS
        self._extended_cache: dict[str, int] | None = None    # FPU, x87, SSE
        self._g_cache: bytes | None = None                    # the whole `g` reply
        # guest page VA -> (maddr, ((pagetable entry maddr, value), ...), cr3); checked
        # against the tables once per stop (3 reads instead of a walk), trusted after.
        self._pages: dict[int, tuple[int, tuple[tuple[int, int], ...], int]] = {}
        self._pages_checked: set[int] = set()                 # pages checked this stop
        # z then Z of the same breakpoint or watchpoint (gdb does that around every
        # hit) should not churn Unicorn hooks and translations: removals wait until
        # the next resume, and a re-insert before it cancels them.
        self._pending_bp_removals: set[int] = set()
        self._pending_watch_removals: set[tuple[str, int, int]] = set()
        # A subclass that wraps the accessors (a lock, bookkeeping) gets the generic
        # per-register path instead of the packed `g` reply and quick steps.
        self._fast_registers = type(self).read_register is SessionTarget.read_register
        self._quick_resume = type(self).resume is SessionTarget.resume
        self.inline_resumes = self._quick_resume
        """The stub may run resumes in its reading thread (it watches for ^C meanwhile):
        request_stop is thread-safe and nothing else is shared."""

    # -- threads -------------------------------------------------------------------
    def vcpu_ids(self):
        return [v.vcpu_id for v in self.session.hv.vcpus if v.online]

    def describe_vcpu(self, vcpu: int) -> str:
        hv = self.session.hv
        pending, mask = self._upcall_bytes(vcpu)
        state = " blocked" if hv.vcpus[vcpu].blocked else ""
        pv = getattr(hv.vcpus[vcpu], "pv", None)
        if self.guest_bits == 64 and pv is not None:
            mode = "kernel" if pv.kernel_mode else "user"
            return f"vcpu{vcpu} {mode} mode upcall_mask={mask} pending={pending}{state}"
        ring = self.read_register(vcpu, "cs") & 3 if vcpu == hv.current.vcpu_id else "?"
        return f"vcpu{vcpu} ring{ring} upcall_mask={mask} pending={pending}{state}"

    def _upcall_bytes(self, vcpu: int) -> bytes:
        """vcpu_info's evtchn_upcall_pending and evtchn_upcall_mask, the struct's first
        two bytes (ABI: xen/include/public/xen.h struct vcpu_info)."""
        hv = self.session.hv
        return hv.memory.read(hv.vcpu_info_maddr(vcpu), 2)

    # -- registers -------------------------------------------------------------------
    def _drop_caches(self) -> None:
        self._register_cache = self._extended_cache = self._g_cache = None
        self._stop_register_cache = None
        self._pages_checked.clear()
        self._cache_stop = self.session.last_stop

    def _check_caches(self) -> None:
        if self.session.last_stop is not self._cache_stop:
            self._drop_caches()

    def _registers(self) -> dict[str, int]:
        """The core registers and CRs in one raw batch, cached while stopped."""
        self._check_caches()
        if self._register_cache is None:
            self._register_cache = self.session.cpu.read_many(self._core_names)
        return self._register_cache

    def _extended(self) -> dict[str, int]:
        """FPU, x87 and SSE registers in one batch, cached while stopped."""
        self._check_caches()
        if self._extended_cache is None:
            cache = {}
            for name, value in zip(self._extended_names,
                                   self.session.cpu.uc.reg_read_batch(self._extended_ids)):
                if name.startswith("st"):
                    mantissa, exponent = value
                    value = (exponent & 0xFFFF) << 64 | mantissa
                cache[name] = value
            self._extended_cache = cache
        return self._extended_cache

    def read_register(self, vcpu: int, name: str) -> int:
        self._check_caches()
        if self._register_cache is None and name in self._stop_names:
            if self._stop_register_cache is None:
                self._stop_register_cache = self.session.cpu.read_many(self._stop_names)
            return self._stop_register_cache[name]
        value = self._registers().get(name)
        if value is not None:
            return value
        value = self._extended().get(name)
        if value is not None:
            return value
        if name == "upcall_mask":
            return self._upcall_bytes(vcpu)[1]
        if name == "upcall_pending":
            return self._upcall_bytes(vcpu)[0]
        if self.guest_bits == 64 and name in _PV64_REGISTERS:
            return self._pv64_registers(vcpu)[name]
        raise RegisterUnavailable(f"no register {name}")

    def stop_registers(self, vcpu: int) -> dict[str, int] | None:
        """The registers every stop needs (_STOP_REGISTERS) in one batch, cached while
        stopped; None for a subclass that wraps read_register."""
        if not self._fast_registers:
            return None
        self._check_caches()
        if self._register_cache is not None:
            return self._register_cache
        if self._stop_register_cache is None:
            self._stop_register_cache = self.session.cpu.read_many(self._stop_names)
        return self._stop_register_cache

    def _pv64_registers(self, vcpu: int) -> dict[str, int]:
        """kernel_mode and the two GS bases of a 64-bit PV vcpu: the live GS base is
        the one of the current mode, the other is kept by the hypervisor (Xen's
        arch.pv.gs_base_kernel/gs_base_user)."""
        pv = self.session.hv.vcpus[vcpu].pv
        live = self._registers()["gs_base"]
        if pv.kernel_mode:
            kernel, user = live, pv.gs_base_user
        else:
            kernel, user = pv.gs_base_kernel, live
        return {"kernel_mode": int(pv.kernel_mode), "gs_base_kernel": kernel,
                "gs_base_user": user}

    def g_packet(self, vcpu: int) -> bytes | None:
        """The `g` reply for the packaged target description (hex, gdb's register
        order), built once per stop; None for a subclass that wraps read_register."""
        if not self._fast_registers:
            return None
        self._check_caches()
        if self._g_cache is None:
            values = {**self._registers(), **self._extended()}
            values["upcall_pending"], values["upcall_mask"] = self._upcall_bytes(vcpu)
            if self.guest_bits == 64:
                values.update(self._pv64_registers(vcpu))
            self._g_cache = b"".join(
                (values[name] & mask).to_bytes(nbytes, "little")
                for name, nbytes, mask in self._g_layout).hex().encode("ascii")
        return self._g_cache

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        self._drop_caches()
        cpu = self.session.cpu
        if name == "eflags":
            value = value & EFLAGS_FROM_DEBUGGER | 0x202      # bit 1 reads as 1; IF on
        if name in _WRITABLE[self.guest_bits]:
            cpu.write(name, value)
        elif name in ("cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4",
                      "fs_base", "gs_base", *_PV64_REGISTERS):
            raise RegisterUnavailable(f"{name} is owned by the hypervisor: change it through "
                                      "the guest (hypercalls), not the debugger")
        elif name in ("upcall_mask", "upcall_pending"):
            base = self.session.hv.vcpu_info_maddr(vcpu)
            self.session.hv.memory.write(base + (1 if name == "upcall_mask" else 0),
                                         bytes([value & 1]))
        elif name.startswith("xmm") and name[3:].isdigit():
            index = int(name[3:])
            if index >= (16 if self.guest_bits == 64 else 8):
                raise RegisterUnavailable(f"no register {name}")
            cpu.uc.reg_write(UC_X86_REG_XMM0 + index, value)
        elif name in _FPU:
            cpu.uc.reg_write(_FPU[name], value)
        elif name.startswith("st") and name[2:].isdigit():
            cpu.uc.reg_write(UC_X86_REG_FP0 + int(name[2:]),
                             (value & ((1 << 64) - 1), value >> 64 & 0xFFFF))
        else:
            raise RegisterUnavailable(f"no register {name}")

    # -- memory ------------------------------------------------------------------------
    def read_memory(self, vcpu: int, guest_va: int, length: int) -> bytes:
        """What the CPU can read at ring 1 (Session.read_memory_any), through cached page
        translations."""
        self._check_caches()
        hv = self.session.hv
        view = hv.memory.view
        out = []
        done = 0
        while done < length:
            va = (guest_va + done) & self._address_mask
            page = va & ~(PAGE_SIZE - 1)
            if page in self._pages_checked:
                maddr = self._pages[page][0]
            else:
                maddr = self._translate(page, va)
            chunk = min(length - done, PAGE_SIZE - (va - page))
            start = maddr + (va - page)
            out.append(view[start:start + chunk])
            done += chunk
        return b"".join(out)

    def _translate(self, page: int, va: int) -> int:
        """Machine address of guest page `page` (`va` in it, for errors): the cached
        translation if its pagetable entries and CR3 are unchanged, else a fresh walk."""
        hv = self.session.hv
        memory = hv.memory
        cr3 = hv.cr3
        cached = self._pages.get(page)
        if cached is not None:
            maddr, entries, cached_cr3 = cached
            if cached_cr3 == cr3:
                read_u64 = memory.read_u64
                for entry_maddr, value in entries:
                    if read_u64(entry_maddr) != value:
                        break
                else:
                    self._pages_checked.add(page)
                    return maddr
        try:
            walk = debugger_walk(hv, cr3, page)
        except PageWalkError as exc:
            self._pages.pop(page, None)
            raise MemoryAccessError(va, f"cannot access guest memory at {va:#x}: "
                                        f"{exc.reason}") from None
        if not memory.frame_valid(walk.maddr >> 12):
            self._pages.pop(page, None)
            raise MemoryAccessError(va, f"guest address {va:#x} maps a frame outside RAM")
        if len(self._pages) >= MAX_CACHED_PAGES:
            self._pages.clear()
            self._pages_checked.clear()
        self._pages[page] = (walk.maddr, tuple((step.entry_maddr, step.entry)
                                                for step in walk.steps), cr3)
        self._pages_checked.add(page)
        return walk.maddr

    def write_memory(self, vcpu: int, guest_va: int, data: bytes) -> None:
        self._drop_caches()
        try:
            self.session.write_memory(guest_va, data)
        except GuestFault as fault:
            raise MemoryAccessError(fault.guest_va, str(fault)) from None

    # -- breakpoints ------------------------------------------------------------------
    def insert_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        if kind in (BreakpointKind.SW, BreakpointKind.HW):
            if not 0 <= guest_va <= self._address_mask:
                raise MemoryAccessError(guest_va)
            (self._sw_breakpoints if kind is BreakpointKind.SW else self._hw_breakpoints).add(guest_va)
            self._pending_bp_removals.discard(guest_va)
            self.session.add_breakpoint(guest_va)
            return
        if not 0 < length <= MAX_WATCH_LENGTH:
            raise UnsupportedBreakpoint(f"watchpoint length {length} not supported")
        key = (_WATCH[kind], guest_va, length)
        if key in self._pending_watch_removals:
            self._pending_watch_removals.discard(key)
            return
        try:
            self.session.add_watchpoint(_WATCH[kind], guest_va, length)
        except GuestFault as fault:
            raise MemoryAccessError(fault.guest_va, str(fault)) from None

    def remove_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        if kind in (BreakpointKind.SW, BreakpointKind.HW):
            own = self._sw_breakpoints if kind is BreakpointKind.SW else self._hw_breakpoints
            other = self._hw_breakpoints if kind is BreakpointKind.SW else self._sw_breakpoints
            own.discard(guest_va)
            if guest_va not in other and guest_va in self.session.debug.breakpoints:
                self._pending_bp_removals.add(guest_va)
            return
        key = (_WATCH[kind], guest_va, length)
        if key in self.session.debug.watchpoints:
            self._pending_watch_removals.add(key)

    def _apply_removals(self, *, keep_breakpoints: bool) -> None:
        """Remove what gdb removed since the last resume. A single step may keep the
        breakpoints: it never stops at one (and skips the one it starts on)."""
        for key in self._pending_watch_removals:
            self.session.remove_watchpoint(*key)
        self._pending_watch_removals.clear()
        if keep_breakpoints:
            return
        for guest_va in self._pending_bp_removals:
            if guest_va not in self._sw_breakpoints and guest_va not in self._hw_breakpoints:
                self.session.remove_breakpoint(guest_va)
        self._pending_bp_removals.clear()

    # -- execution -----------------------------------------------------------------------
    def resume_is_quick(self, actions: ResumeActions) -> bool:
        """True when `resume(actions)` ends at once: a single step (or nothing) for the
        running vcpu, which is not blocked. The stub then runs it without a thread."""
        if not self._quick_resume:
            return False
        current = self.session.hv.current
        kind = actions.action_for(current.vcpu_id).kind
        return kind is ResumeKind.STOP or (kind is ResumeKind.STEP and not current.blocked)

    def resume(self, actions: ResumeActions) -> StopEvent:
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
        self._drop_caches()
        self._apply_removals(keep_breakpoints=action.kind is ResumeKind.STEP)
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
        if stop.reason is EngineStop.watchpoint:
            return StopEvent(vcpu, _WATCH_STOPS[stop.watch_kind], address=stop.address)
        if stop.reason is EngineStop.breakpoint:
            hw = stop.address in self._hw_breakpoints and stop.address not in self._sw_breakpoints
            return StopEvent(vcpu, StopReason.BREAKPOINT_HW if hw else StopReason.BREAKPOINT_SW)
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
        """Monitor commands that would touch host files are refused: whoever reaches the
        stub's port gets no host file access (`trace save` is for the REPL)."""
        self._drop_caches()
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
        self._pending_bp_removals.clear()
        self._pending_watch_removals.clear()
        self.session.debug.clear_all()
        self._sw_breakpoints.clear()
        self._hw_breakpoints.clear()


_PV64_REGISTERS = ("kernel_mode", "gs_base_kernel", "gs_base_user")


@functools.cache
def _g_layout(guest_bits: int) -> tuple[tuple[str, int, int], ...]:
    """(register name, bytes, value mask) in `g` order of the packaged description."""
    return tuple((spec.name, spec.nbytes, (1 << spec.bitsize) - 1)
                 for spec in load_target_description(guest_bits).registers)
