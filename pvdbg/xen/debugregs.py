"""Debug registers of a PV guest: set_debugreg/get_debugreg, mov to/from %drN, and the
hardware breakpoints DR0-3/DR7 describe, which really fire.

Unicorn ignores DR7, so each enabled breakpoint becomes a hook: an instruction
breakpoint is a code hook bounded to its address (raising #DB as a fault, honouring
EFLAGS.RF), a data breakpoint a memory hook on the machine bytes it covers (raising #DB
as a trap after the access, from a code hook that exists only while one is armed).  I/O
breakpoints (RW=10, needing CR4.DE) match the ports Xen's emulator touches.
ABI: xen/arch/x86/pv/misc-hypercalls.c (do_set_debugreg, do_get_debugreg), set_debugreg
in xen/arch/x86/traps.c; Intel SDM vol. 3 chapter 17 (DR6/DR7); XEN-PV-ABI.md 3.7.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

from .constants import Errno, Hc
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param, fail
from .pvvcpu import CR4_DE

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, HypercallContext, Vcpu

DR6_RESERVED_ONE = 0xFFFF0FF0
DR6_RESERVED_ZERO = 1 << 12
DR6_BS = 1 << 14
DR7_RESERVED_ONE = 0x400
DR7_VALID = 0xFFFF27FF            # bits 11, 12, 14, 15 read as zero
DR7_GD = 1 << 13
DR7_ENABLES = 0xFF
RW_EXEC, RW_WRITE, RW_IO, RW_ACCESS = 0, 1, 2, 3
LEN_BYTES = {0: 1, 1: 2, 2: 8, 3: 4}


class DebugRegisterError(Exception):
    """A debug-register access Xen refuses: `errno` for the hypercall, `undefined` when
    the mov instruction itself would raise #UD (DR4/DR5 with CR4.DE, DR8+)."""

    def __init__(self, errno: Errno, why: str, undefined: bool = False) -> None:
        self.errno = errno
        self.undefined = undefined
        super().__init__(why)


def breakpoint_fields(dr7: int, index: int) -> tuple[bool, int, int]:
    """(enabled, RW, length in bytes) of breakpoint `index` in DR7."""
    enabled = bool(dr7 >> (2 * index) & 3)
    rw = dr7 >> (16 + 4 * index) & 3
    length = LEN_BYTES[dr7 >> (18 + 4 * index) & 3]
    return enabled, rw, length


class ArmedHooks:
    """The Unicorn hooks standing for the guest's breakpoints, and what they were armed
    for.  They belong to the live CPU: machine snapshots share this object instead of
    copying it, and `sync` rearms when the restored registers differ."""

    def __init__(self) -> None:
        self.handles: list[int] = []
        self.step_handle: int | None = None
        self.armed_for: tuple | None = None

    def __deepcopy__(self, memo) -> "ArmedHooks":
        return self


class DebugRegisters:
    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.pending_io_match = 0
        self._pending_data = 0
        self.hooks = ArmedHooks()
        self.hits = 0

    def _signature(self) -> tuple:
        pv = self.hv.traps.pv(self.hv.current)
        return (self.hv.current.vcpu_id, tuple(pv.dr), pv.dr7, self.hv.cr3)

    def sync(self) -> None:
        """Rearm if the current vcpu's breakpoints are not what the hooks stand for."""
        if self.hooks.armed_for != self._signature():
            self.rearm()

    # -- register semantics -------------------------------------------------------------
    def set(self, vcpu: "Vcpu", reg: int, value: int) -> None:
        """set_debugreg: raises DebugRegisterError with Xen's errno."""
        pv = self.hv.traps.pv(vcpu)
        value &= 0xFFFFFFFF
        de = bool(pv.cr4 & CR4_DE)
        if reg in (4, 5) and de:
            raise DebugRegisterError(Errno.ENODEV, f"DR{reg} is undefined with CR4.DE set",
                                     undefined=True)
        if reg in (0, 1, 2, 3):
            pv.dr[reg] = value
        elif reg in (4, 6):
            pv.dr6 = (value & ~DR6_RESERVED_ZERO) | DR6_RESERVED_ONE
        elif reg in (5, 7):
            value = (value & DR7_VALID) | DR7_RESERVED_ONE
            if value & DR7_GD:
                raise DebugRegisterError(Errno.EPERM, "DR7.GD (general detect) is privileged")
            io_enable = 0
            if value & DR7_ENABLES:
                for i in range(4):
                    if value >> (16 + 4 * i) & 3 == RW_IO:
                        if not de:
                            raise DebugRegisterError(
                                Errno.EPERM, f"I/O breakpoint {i} needs CR4.DE")
                        io_enable |= value & (3 << (2 * i))
            pv.dr7_emul = io_enable
            pv.dr7 = value & ~io_enable
        else:
            raise DebugRegisterError(Errno.ENODEV, f"DR{reg} does not exist", undefined=True)
        if vcpu is self.hv.current:
            self.rearm()

    def get(self, vcpu: "Vcpu", reg: int) -> int:
        pv = self.hv.traps.pv(vcpu)
        de = bool(pv.cr4 & CR4_DE)
        if reg in (0, 1, 2, 3):
            return pv.dr[reg]
        if reg == 6 or (reg == 4 and not de):
            return pv.dr6
        if reg == 7 or (reg == 5 and not de):
            return pv.dr7 | pv.dr7_emul
        raise DebugRegisterError(Errno.ENODEV, f"DR{reg} is undefined"
                                 + (" with CR4.DE set" if reg in (4, 5) else ""), undefined=True)

    def io_breakpoint_match(self, vcpu: "Vcpu", port: int, size: int) -> int:
        """check_guest_io_breakpoint: DR6 bits of the I/O breakpoints `port` hits."""
        pv = self.hv.traps.pv(vcpu)
        if not pv.dr7_emul or not pv.cr4 & CR4_DE:
            return 0
        match = 0
        for i in range(4):
            if not pv.dr7_emul >> (2 * i) & 3:
                continue
            start = pv.dr[i]
            width = LEN_BYTES[(pv.dr7 | pv.dr7_emul) >> (18 + 4 * i) & 3]
            if start < port + size and start + width > port:
                match |= 1 << i
        return match

    # -- breakpoints that fire ------------------------------------------------------------
    def rearm(self) -> None:
        """Install hooks for the current vcpu's enabled breakpoints."""
        uc = self.hv.cpu.uc
        hooks = self.hooks
        for handle in hooks.handles:
            uc.hook_del(handle)
        hooks.handles = []
        if hooks.step_handle is not None:
            uc.hook_del(hooks.step_handle)
            hooks.step_handle = None
        hooks.armed_for = self._signature()
        pv = self.hv.traps.pv(self.hv.current)
        data = False
        for i in range(4):
            enabled, rw, length = breakpoint_fields(pv.dr7, i)
            if not enabled or rw == RW_IO:
                continue
            va = pv.dr[i]
            if rw == RW_EXEC:
                hooks.handles.append(uc.hook_add(UC_HOOK_CODE, self._on_exec, i, va, va))
                self.hv.cpu.invalidate_code(va, va + 1)
                continue
            va &= ~(length - 1)
            try:
                maddr = self.hv.guest.translate(va).maddr
            except GuestFault:
                continue            # not mapped now: the access would fault first anyway
            kinds = [UC_HOOK_MEM_WRITE] + ([UC_HOOK_MEM_READ] if rw == RW_ACCESS else [])
            for kind in kinds:
                hooks.handles.append(uc.hook_add(kind, self._on_data, i, maddr, maddr + length - 1))
            data = True
        if data:
            hooks.step_handle = uc.hook_add(UC_HOOK_CODE, self._on_step, None, 1, 0)
            uc.ctl_flush_tb()

    def _on_exec(self, uc, address: int, size: int, index: int) -> None:
        hv = self.hv
        cpu = hv.cpu
        regs = cpu.frame_registers()
        if regs["eip"] != address:
            return
        if regs["eflags"] & (1 << 16):          # RF: this instruction may run once
            cpu.write("eflags", regs["eflags"] & ~(1 << 16))
            return
        pv = hv.traps.pv(hv.current)
        pv.dr6 = (pv.dr6 & ~0xF) | (1 << index) | DR6_RESERVED_ONE
        self.hits += 1
        cpu.uncount_current()
        from .traps import TRAP_DEBUG, GuestFrame
        hv.traps.in_code_hook = True
        try:
            hv.traps.inject(TRAP_DEBUG,
                            GuestFrame.from_regs(regs).replace(eflags=regs["eflags"] | (1 << 16)),
                            detail=f"instruction breakpoint DR{index} at {address:#x}")
        finally:
            hv.traps.in_code_hook = False

    def _on_data(self, uc, access, address: int, size: int, value, index: int) -> None:
        self._pending_data |= 1 << index

    def _on_step(self, uc, address: int, size: int, _data) -> None:
        if not self._pending_data:
            return
        hv = self.hv
        pv = hv.traps.pv(hv.current)
        pv.dr6 = (pv.dr6 & ~0xF) | self._pending_data | DR6_RESERVED_ONE
        bits, self._pending_data = self._pending_data, 0
        self.hits += 1
        hv.cpu.uncount_current()
        from .traps import TRAP_DEBUG, GuestFrame
        hv.traps.in_code_hook = True
        try:
            hv.traps.inject(TRAP_DEBUG, GuestFrame.from_regs(hv.cpu.frame_registers()),
                            detail=f"data breakpoint DR6 bits {bits:#x}")
        finally:
            hv.traps.in_code_hook = False


@HYPERCALLS.handler(Hc.set_debugreg, Param("reg", "int"), Param("value"))
def set_debugreg(ctx: "HypercallContext", reg: int, value: int) -> int:
    try:
        ctx.hv.debugregs.set(ctx.vcpu, reg, value)
    except DebugRegisterError as err:
        raise fail(err.errno, str(err)) from None
    return 0


@HYPERCALLS.handler(Hc.get_debugreg, Param("reg", "int"))
def get_debugreg(ctx: "HypercallContext", reg: int) -> int:
    try:
        return ctx.hv.debugregs.get(ctx.vcpu, reg)
    except DebugRegisterError as err:
        raise fail(err.errno, str(err)) from None
