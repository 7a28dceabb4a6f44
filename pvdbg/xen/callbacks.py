"""Callbacks a 32-bit PV kernel registers (event, failsafe, syscall32, sysenter, NMI),
the iret hypercall, and the failsafe callback Xen takes when it cannot reload a guest
segment register.
ABI: xen/include/public/callback.h, nmi.h; xen/arch/x86/pv/callback.c
(compat_set_callbacks, compat_register_guest_callback, register_guest_nmi_callback);
xen/arch/x86/pv/iret.c compat_iret; xen/arch/x86/x86_64/compat/entry.S
compat_failsafe_callback; xen/arch/x86/domain.c load_segments; XEN-PV-ABI.md 3.8, 3.16, 5.3.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from ..trace import TraceKind, TraceRecord
from .abi import SharedInfo32, TrapInfo32
from .constants import FLAT_RING1_CS, Errno, Hc, Vmasst
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param, fail
from .pvvcpu import EMPTY_TRAP, VGCF_FAILSAFE_DISABLES_EVENTS, Callback
from .selectors import SegmentFault, check_data_selector
from .traps import (EFLAGS_IF, EFLAGS_IOPL, EFLAGS_NT, EFLAGS_RF, EFLAGS_TF, EFLAGS_VM,
                    TRAP_GP, TRAP_NMI, DeliveryError, GuestFrame, vector_name)

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, HypercallContext

CALLBACKF_MASK_EVENTS = 1


class CallbackType(IntEnum):
    """CALLBACKTYPE_*.  ABI: xen/include/public/callback.h."""
    event = 0
    failsafe = 1
    syscall = 2
    sysenter_deprecated = 3
    nmi = 4
    sysenter = 5
    syscall32 = 7


class CallbackOp(IntEnum):
    register = 0
    unregister = 1


class NmiOp(IntEnum):
    register_callback = 0
    unregister_callback = 1


def _fix_cs(cs: int) -> int:
    """fixup_guest_code_selector: a ring-0 RPL becomes ring 1."""
    cs &= 0xFFFF
    return cs | 1 if cs & 3 == 0 else cs


class Callbacks:
    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv

    # -- the failsafe callback ----------------------------------------------------------
    def failsafe_after_iret(self, frame: GuestFrame, register: str, selector: int,
                            fault: SegmentFault | None, *, vector: int | None = None) -> None:
        """The return to `frame` faulted (Xen's final iret): enter the failsafe callback
        with DS, ES, FS, GS on top of the frame.  compat_failsafe_callback."""
        if fault is not None:
            why = fault.describe(register, selector)
            vector = fault.vector
        else:
            why = (f"the iret to {frame.cs:#06x}:{frame.eip:#x} (ss:esp "
                   f"{frame.ss:#06x}:{frame.esp:#x}) raised {vector_name(vector or 0)}"
                   f"({selector:#x})")
        self._enter_failsafe(frame, why, vector or TRAP_GP, handler_cs=None)

    def reload_data_segments(self) -> bool:
        """load_segments on a context switch: reload DS/ES/FS/GS of the current vcpu; a
        selector the CPU refuses is loaded as 0 and the failsafe callback runs.  Returns
        True if the failsafe callback was entered."""
        hv = self.hv
        cpu = hv.cpu
        regs = cpu.frame_registers()
        ring = regs["cs"] & 3
        bad = []
        for name in ("ds", "es", "fs", "gs"):
            fault = check_data_selector(hv, regs[name], ring)
            if fault is not None:
                bad.append((name, fault))
        if not bad:
            return False
        segments = (regs["ds"], regs["es"], regs["fs"], regs["gs"])
        cpu.write_many({name: 0 for name, _ in bad})
        frame = GuestFrame.from_regs(regs)
        name, fault = bad[0]
        self._enter_failsafe(frame, fault.describe(name.upper(), regs[name]), fault.vector,
                             handler_cs=FLAT_RING1_CS, segments=segments)
        return True

    def _enter_failsafe(self, frame: GuestFrame, why: str, vector: int, *,
                        handler_cs: int | None,
                        segments: tuple[int, int, int, int] | None = None) -> None:
        hv = self.hv
        vcpu = hv.current
        traps = hv.traps
        pv = traps.pv(vcpu)
        callback = pv.failsafe
        if segments is None:
            regs = hv.cpu.read_many(("ds", "es", "fs", "gs"))
            segments = (regs["ds"], regs["es"], regs["fs"], regs["gs"])
        if not callback.registered:
            hv.crash_domain(f"{why}, and no failsafe callback is registered "
                            "(set_callbacks / CALLBACKTYPE_failsafe)")
            return
        if frame.eip == callback.eip and frame.cs & 0xFFFF == (handler_cs or callback.cs) & 0xFFFF:
            # The return that failed was the entry into the failsafe callback itself: Xen
            # would bounce to it again and fault again forever, a vcpu that never runs.
            hv.crash_domain(f"{why}: the failsafe callback {frame.cs:#06x}:{frame.eip:#x} "
                            "cannot be entered (Xen 4.17 would retry it forever)")
            return
        mask = bool(pv.vgc_flags & VGCF_FAILSAFE_DISABLES_EVENTS)
        try:
            new = traps.bounce(vcpu, frame, handler_cs or callback.cs, callback.eip,
                               mask_events=mask, failsafe_segments=segments)
        except DeliveryError as err:
            hv.crash_domain(f"{why}; the failsafe frame cannot be built: {err}")
            return
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.trap, icount=hv.cpu.icount,
            vcpu=vcpu.vcpu_id, eip=frame.eip, name="failsafe",
            args={"vector": vector, "ring": frame.ring, "handler": callback.eip,
                  "frame": new.esp, "ds": segments[0], "es": segments[1],
                  "fs": segments[2], "gs": segments[3]},
            symbol=hv.symbolize(frame.eip), detail=why, parent=hv.current_hypercall_seq))
        traps.exit_to_guest(new)

    # -- NMI callback -------------------------------------------------------------------
    def register_nmi(self, ctx: "HypercallContext", address: int) -> None:
        pv = self.hv.traps.pv(ctx.vcpu)
        pv.trap_ctxt[TRAP_NMI] = TrapInfo32(TRAP_NMI, 4, FLAT_RING1_CS, address)
        reason = self.hv.memory.read_u32(self.hv.shared_info_maddr()
                                         + SharedInfo32.offset_of("nmi_reason"))
        if ctx.vcpu.vcpu_id == 0 and reason:
            pv.nmi_pending = True

    def unregister_nmi(self, ctx: "HypercallContext") -> None:
        self.hv.traps.pv(ctx.vcpu).trap_ctxt[TRAP_NMI] = EMPTY_TRAP


def _callbacks(ctx: "HypercallContext") -> Callbacks:
    return ctx.hv.callbacks


@HYPERCALLS.handler(Hc.set_callbacks, Param("event_selector"), Param("event_address"),
                    Param("failsafe_selector"), Param("failsafe_address"))
def set_callbacks(ctx: "HypercallContext", event_selector: int, event_address: int,
                  failsafe_selector: int, failsafe_address: int) -> int:
    """ABI: xen/arch/x86/pv/callback.c compat_set_callbacks."""
    pv = ctx.hv.traps.pv(ctx.vcpu)
    pv.event = Callback(_fix_cs(event_selector), event_address, True)
    pv.failsafe = Callback(_fix_cs(failsafe_selector), failsafe_address,
                           pv.failsafe.mask_events)
    ctx.note(f"event {pv.event.cs:#06x}:{event_address:#x} failsafe "
             f"{pv.failsafe.cs:#06x}:{failsafe_address:#x}")
    return 0


@HYPERCALLS.handler(Hc.callback_op, Param("cmd", CallbackOp), Param("arg"))
def callback_op(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    """ABI: xen/arch/x86/pv/callback.c compat_callback_op (compat callback_register: 12
    bytes type(2) flags(2) cs eip)."""
    pv = ctx.hv.traps.pv(ctx.vcpu)
    if cmd == CallbackOp.register:
        cb_type, flags, cs, eip = struct.unpack("<HHII", ctx.guest.read(arg, 12))
        cs = _fix_cs(cs)
        mask = bool(flags & CALLBACKF_MASK_EVENTS)
        name = CallbackType(cb_type).name if cb_type in CallbackType._value2member_map_ else str(cb_type)
        ctx.note(f"register {name} {cs:#06x}:{eip:#x}" + (" mask_events" if mask else ""))
        if cb_type == CallbackType.event:
            pv.event = Callback(cs, eip, True)
        elif cb_type == CallbackType.failsafe:
            pv.failsafe = Callback(cs, eip, mask)
            if mask:
                pv.vgc_flags |= VGCF_FAILSAFE_DISABLES_EVENTS
            else:
                pv.vgc_flags &= ~VGCF_FAILSAFE_DISABLES_EVENTS
        elif cb_type == CallbackType.syscall32:
            pv.syscall32 = Callback(cs, eip, mask)
        elif cb_type == CallbackType.sysenter:
            pv.sysenter = Callback(cs, eip, mask)
        elif cb_type == CallbackType.nmi:
            _callbacks(ctx).register_nmi(ctx, eip)
        else:
            raise fail(Errno.ENOSYS, f"callback type {name} does not exist for 32-bit guests")
        return 0
    if cmd == CallbackOp.unregister:
        (cb_type,) = struct.unpack("<H", ctx.guest.read(arg, 2))
        if cb_type == CallbackType.nmi:
            _callbacks(ctx).unregister_nmi(ctx)
            return 0
        if cb_type in (CallbackType.event, CallbackType.failsafe, CallbackType.syscall32,
                       CallbackType.sysenter):
            raise fail(Errno.EINVAL, f"callback type {cb_type} cannot be unregistered")
        raise fail(Errno.ENOSYS, f"unknown callback type {cb_type}")
    raise fail(Errno.ENOSYS, f"unknown callback_op {cmd}")


@HYPERCALLS.handler(Hc.nmi_op, Param("cmd", NmiOp), Param("arg"))
def nmi_op(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    """ABI: xen/include/public/nmi.h; xen/arch/x86/pv/callback.c compat_nmi_op."""
    if cmd == NmiOp.register_callback:
        handler, _pad = struct.unpack("<II", ctx.guest.read(arg, 8))
        _callbacks(ctx).register_nmi(ctx, handler)
        return 0
    if cmd == NmiOp.unregister_callback:
        _callbacks(ctx).unregister_nmi(ctx)
        return 0
    raise fail(Errno.ENOSYS, f"unknown nmi_op {cmd}")


@HYPERCALLS.handler(Hc.iret)
def iret(ctx: "HypercallContext") -> int:
    """Return from an exception or upcall frame [EAX, EIP, CS, EFLAGS, (ESP, SS)] at ESP.
    ABI: xen/arch/x86/pv/iret.c compat_iret."""
    hv = ctx.hv
    vcpu = ctx.vcpu
    traps = hv.traps
    pv = traps.pv(vcpu)
    regs = hv.cpu.read_many(("esp", "ss"))
    esp = regs["esp"]
    try:
        eax, eip, cs, eflags = struct.unpack("<4I", ctx.guest.read(esp, 16))
    except GuestFault as fault:
        hv.crash_domain(f"fault while reading the iret frame at {esp:#x}: {fault.reason}")
        return None
    cs &= 0xFFFF
    if hv.domain.vm_assist & (1 << Vmasst.architectural_iopl):
        pv.iopl = (eflags & EFLAGS_IOPL) >> 12
    new_eflags = (eflags & ~EFLAGS_IOPL) | EFLAGS_IF
    ring = cs & 3
    if eflags & EFLAGS_VM:
        return _iret_to_vm86(ctx, esp, eflags, eax)
    if ring == 0:
        hv.crash_domain(f"iret hypercall to ring 0 ({cs:#06x}:{eip:#x})")
        return None
    if ring == 1:
        new_esp, ss = (esp + 16) & 0xFFFFFFFF, regs["ss"]
    else:
        try:
            new_esp, ss = struct.unpack("<2I", ctx.guest.read(esp + 16, 8))
        except GuestFault as fault:
            hv.crash_domain(f"fault while reading the iret frame at {esp:#x}: {fault.reason}")
            return None
        ss &= 0xFFFF
    hv.memory.view[hv.vcpu_info_maddr(vcpu.vcpu_id) + 1] = 0 if eflags & EFLAGS_IF else 1
    pv.nmi_masked = False
    pv.resume = GuestFrame(eip, cs, new_eflags, new_esp, ss)
    ctx.note(f"to ring {ring} {cs:#06x}:{eip:#x} esp {new_esp:#x}, events "
             + ("enabled" if eflags & EFLAGS_IF else "masked"))
    return eax


def _iret_to_vm86(ctx: "HypercallContext", esp: int, eflags: int, eax: int) -> int | None:
    """VM86 cannot be entered: copy the frame to the kernel stack and raise #GP there."""
    hv = ctx.hv
    vcpu = ctx.vcpu
    pv = hv.traps.pv(vcpu)
    ksp = (vcpu.kernel_sp - 40) & 0xFFFFFFFF
    try:
        words = ctx.guest.read(esp + 4, 36)
        ctx.guest.write(ksp + 4, words)
        ctx.guest.write_u32(ksp, 0)
    except GuestFault as fault:
        hv.crash_domain(f"iret to VM86: cannot copy the frame to the kernel stack: {fault.reason}")
        return None
    ti = pv.trap_ctxt[TRAP_GP]
    new_eflags = (eflags & ~(EFLAGS_VM | EFLAGS_RF | EFLAGS_NT | EFLAGS_TF | EFLAGS_IOPL)) | EFLAGS_IF
    if ti.flags & 4:
        hv.memory.view[hv.vcpu_info_maddr(vcpu.vcpu_id) + 1] = 1
    pv.resume = GuestFrame(ti.address, ti.cs, new_eflags, ksp, vcpu.kernel_ss)
    ctx.note("iret to VM86 mode: #GP raised on the kernel stack instead")
    return eax
