"""Exceptions and software interrupts of a 32-bit PV guest: the virtual trap table, the
bounce frames Xen builds to enter the guest's handlers, and every return to the guest.

A fault the CPU raises (or an ``int n``) reaches `Traps.exception`.  Xen's rules decide
what the guest sees: privileged instructions are emulated (emulate.py), ``int n`` obeys
the DPL the guest registered, ``int $0x80`` is a direct trap, the rest is bounced to
trap_ctxt[vector] with a frame laid out exactly as compat_create_bounce_frame writes it
-- on the current ring-1 stack, or on kernel_ss:kernel_sp when the guest was in ring 3.
A missing handler, or a fault while writing the frame, crashes the domain with a report.
`exit_to_guest` is Xen's compat_test_all_events: NMI, then the event upcall, then the
return itself.
ABI: xen/arch/x86/x86_64/compat/entry.S compat_create_bounce_frame, compat_test_all_events;
xen/arch/x86/pv/traps.c pv_inject_event; xen/arch/x86/traps.c do_general_protection,
do_trap, do_device_not_available; xen/arch/x86/pv/callback.c compat_set_trap_table;
XEN-PV-ABI.md 3.6, 3.7, 5.1, 5.2.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from ..machine.cpu import CR0_TS
from ..trace import TraceKind, TraceRecord
from .abi import TrapInfo32
from .constants import FLAT_RING1_DS, FLAT_RING3_DS, Hc, Vmasst
from .entry import (AREA_VA, HV_STACK_VA, LANDING_VECTOR, TRAMP3_VA, TRAMP_IRET,
                    TRAMP_LANDING, TRAMP_TO_RING1, TRAMPOLINE_VA)
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param
from .pvvcpu import EMPTY_TRAP, NR_VECTORS, PvVcpu
from .selectors import (check_code_selector, check_data_selector, check_stack_selector,
                        segment_base)

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, HypercallContext, Vcpu

VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
EFLAGS_TF = 1 << 8
EFLAGS_IF = 1 << 9
EFLAGS_IOPL = 3 << 12
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17
PFEC_PRESENT = 1 << 0
PFEC_USER = 1 << 2
PFEC_INSN_FETCH = 1 << 4
LCALL_SIZE = 7                      # the trampoline's `lcall $GATE_SEL, $0`
TRAP_DEBUG, TRAP_NMI, TRAP_INT3, TRAP_OVERFLOW = 1, 2, 3, 4
TRAP_INVALID_OP, TRAP_NO_DEVICE, TRAP_DOUBLE_FAULT = 6, 7, 8
TRAP_GP, TRAP_PF = 13, 14
LEGACY_SYSCALL_VECTOR = 0x80
HYPERCALL_VECTOR = 0x82
TRAMPOLINE_END = TRAMP3_VA + 0x1000   # the trampoline page through its ring-3 alias
_FLAT_STACKS = (FLAT_RING1_DS, FLAT_RING3_DS)

TRAP_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
              8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
              17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}


def vector_name(vector: int) -> str:
    return TRAP_NAMES.get(vector, f"int {vector:#x}")


@dataclass(frozen=True)
class GuestFrame:
    """The guest state Xen returns to (the iret part of cpu_user_regs)."""
    eip: int
    cs: int
    eflags: int
    esp: int
    ss: int

    @property
    def ring(self) -> int:
        return self.cs & 3

    @classmethod
    def from_regs(cls, regs: dict[str, int]) -> "GuestFrame":
        return cls(regs["eip"], regs["cs"], regs["eflags"], regs["esp"], regs["ss"])

    def replace(self, **changes: int) -> "GuestFrame":
        values = {"eip": self.eip, "cs": self.cs, "eflags": self.eflags, "esp": self.esp,
                  "ss": self.ss}
        values.update(changes)
        return GuestFrame(**values)


class DeliveryError(Exception):
    """Xen could not enter the guest (frame not writable, null selector): domain_crash."""


class Traps:
    """Trap delivery for one domain (all vcpus)."""

    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.pv_vcpus = [PvVcpu(v.vcpu_id) for v in hv.vcpus]
        self.delivered = 0
        self.in_code_hook = False       # delivering from a Unicorn code hook (debugregs)
        self.pending: list[tuple] = []  # exceptions owed from hooks (see `pend`)
        from .gate_op import GateOps
        self.gates = GateOps(hv)        # #GP(selector): call-gate emulation
        # The boot's iret into ring 1 has run: the transit pages leave the guest's reach.
        self.close_transit()
        self._absorb_first_uncounted_start()

    def pv(self, vcpu: "Vcpu") -> PvVcpu:
        return self.pv_vcpus[vcpu.vcpu_id]

    # -- the bounce frame -----------------------------------------------------------
    def bounce(self, vcpu: "Vcpu", frame: GuestFrame, cs: int, eip: int, *,
               error_code: int | None = None, mask_events: bool = False,
               failsafe_segments: tuple[int, int, int, int] | None = None) -> GuestFrame:
        """Write Xen's exception frame for `frame` and return the frame of the handler.

        Low to high: [DS ES FS GS (failsafe)] [error code] EIP, CS|saved_mask<<16,
        EFLAGS (IF = !saved_mask), [ESP SS when leaving ring 2/3]."""
        hv = self.hv
        pv = self.pv(vcpu)
        if frame.cs & 2:
            ss, sp = vcpu.kernel_ss, vcpu.kernel_sp
            fault = None if ss == FLAT_RING1_DS else check_stack_selector(hv, ss, 1)
            if fault is not None:
                raise DeliveryError(f"kernel_ss {ss:#06x} (stack_switch) cannot be loaded: "
                                    f"{fault.reason}")
            outer = [frame.esp, frame.ss]
        else:
            ss, sp = frame.ss, frame.esp
            fault = None if ss in _FLAT_STACKS else check_data_selector(hv, ss, 0)
            if fault is not None:
                raise DeliveryError(f"the interrupted stack selector {ss:#06x} cannot be "
                                    f"loaded: {fault.reason}")
            outer = []
        if cs & ~3 == 0:
            raise DeliveryError(f"handler selector {cs:#06x} is null")
        info = hv.vcpu_info_maddr(vcpu.vcpu_id)
        view = hv.memory.view
        saved_mask = view[info + 1]
        eflags = frame.eflags & ~(EFLAGS_IF | EFLAGS_IOPL)
        if not saved_mask:
            eflags |= EFLAGS_IF
        if hv.domain.vm_assist & (1 << Vmasst.architectural_iopl):
            eflags |= pv.iopl << 12
        words = [frame.eip, (frame.cs & 0xFFFF) | saved_mask << 16, eflags] + outer
        if error_code is not None:
            words.insert(0, error_code & 0xFFFFFFFF)
        if failsafe_segments is not None:
            words[0:0] = list(failsafe_segments)
        new_sp = (sp - 4 * len(words)) & 0xFFFFFFFF
        base = 0 if ss in _FLAT_STACKS else segment_base(hv, ss)
        va = (base + new_sp) & 0xFFFFFFFF
        try:
            hv.guest.write(va, struct.pack(f"<{len(words)}I", *words))
        except GuestFault as fault:
            raise DeliveryError(f"the bounce frame at {ss:#06x}:{new_sp:#010x} cannot be "
                                f"written: {fault.reason}") from None
        if mask_events:
            view[info + 1] = saved_mask | 1
        self.delivered += 1
        return GuestFrame(eip & 0xFFFFFFFF, cs, frame.eflags & ~(EFLAGS_VM | EFLAGS_RF |
                                                                 EFLAGS_NT | EFLAGS_TF),
                          new_sp, ss)

    # -- the return to the guest ------------------------------------------------------
    def exit_to_guest(self, frame: GuestFrame | None = None,
                      extra: dict[str, int] | None = None) -> None:
        """compat_test_all_events: NMI, event upcall, then resume at `frame` (None: the
        CPU's current state), also loading the registers in `extra` (an emulation's
        results)."""
        hv = self.hv
        vcpu = hv.current
        if hv.domain.is_dying or vcpu.blocked:
            return
        pv = self.pv(vcpu)
        info = hv.vcpu_info_maddr(vcpu.vcpu_id)
        view = hv.memory.view
        nmi = pv.nmi_pending and not pv.nmi_masked
        event = view[info] and not view[info + 1]
        if frame is None:
            if not (nmi or event):
                if extra:
                    hv.cpu.write_many(extra)
                return
            regs = hv.cpu.frame_registers()
            if TRAMPOLINE_VA <= regs["eip"] < TRAMPOLINE_END:
                return          # mid ring change: Xen never returns there; deliver later
            frame = GuestFrame.from_regs(regs)
        try:
            if nmi:
                frame = self._deliver_nmi(vcpu, pv, frame)
            if view[info] and not view[info + 1]:
                frame = hv.events.upcall(vcpu, frame)
        except DeliveryError as err:
            hv.crash_domain(f"cannot deliver {pv.delivering or 'an event'}: {err}")
            return
        self.commit(frame, extra)

    def pend(self, vector: int, frame: GuestFrame | None, error_code: int | None,
             detail: str, dr6_bits: int = 0) -> None:
        """An exception owed to the guest from inside a hook that cannot redirect the
        CPU; `deliver_pending` raises it at the next boundary.  `frame` None: the frame
        is where the CPU stopped (a trap after the instruction)."""
        self.pending.append((vector, frame, error_code, detail, dr6_bits))

    def deliver_pending(self) -> None:
        hv = self.hv
        while self.pending and not hv.domain.is_dying:
            vector, frame, error_code, detail, dr6_bits = self.pending.pop(0)
            if frame is None:
                frame = GuestFrame.from_regs(hv.cpu.frame_registers())
            if dr6_bits:
                pv = self.pv(hv.current)
                pv.dr6 = (pv.dr6 & ~0xF) | dr6_bits
            self.inject(vector, frame, error_code=error_code, detail=detail)

    def hypercall_return(self) -> None:
        """After a hypercall: due timers fire, then the return to the guest (to the frame
        an iret hypercall left, or where the CPU is)."""
        hv = self.hv
        if hv.domain.is_dying:
            return
        vcpu = hv.current
        hv.time.run_due()
        pv = self.pv(vcpu)
        frame, pv.resume = pv.resume, None
        if vcpu.blocked:
            return
        self.exit_to_guest(frame)

    def _deliver_nmi(self, vcpu: "Vcpu", pv: PvVcpu, frame: GuestFrame) -> GuestFrame:
        pv.nmi_pending = False
        ti = pv.trap_ctxt[TRAP_NMI]
        if ti.cs & ~3 == 0:
            return frame            # no NMI callback: the NMI is dropped
        pv.nmi_masked = True
        pv.delivering = "NMI"
        new = self.bounce(vcpu, frame, ti.cs, ti.address, mask_events=bool(ti.flags & 4))
        self._record(TraceKind.trap, vcpu, frame, "NMI",
                     {"vector": TRAP_NMI, "ring": frame.ring, "handler": ti.address,
                      "frame": new.esp}, "NMI callback")
        return new

    def commit(self, frame: GuestFrame, extra: dict[str, int] | None = None) -> None:
        """Put the CPU at `frame` (and load `extra`), changing rings through Xen's
        trampolines if needed."""
        self._commit(frame, extra)
        if self.in_code_hook:
            # Unicorn honours an EIP change inside a code hook only through a single
            # uc_reg_write (a batched write does not leave the translated block).
            cpu = self.hv.cpu
            cpu.write("eip", cpu.read("eip"))

    def _commit(self, frame: GuestFrame, extra: dict[str, int] | None) -> None:
        hv = self.hv
        cpu = hv.cpu
        eflags = (frame.eflags | EFLAGS_IF) & ~(EFLAGS_IOPL | EFLAGS_VM | EFLAGS_NT)
        target = frame.cs & 3
        if target == 0:
            hv.crash_domain(f"return to ring 0 at {frame.cs:#06x}:{frame.eip:#x}")
            return
        regs = cpu.read_many(("cs", "ss"))
        current_ring = regs["cs"] & 3
        if extra and current_ring != target:
            cpu.write_many(extra)
        if current_ring == target:
            values = dict(extra) if extra else {}
            values.update(eip=frame.eip, eflags=eflags, esp=frame.esp)
            if frame.cs != regs["cs"]:
                fault = check_code_selector(hv, frame.cs)
                if fault is not None:
                    hv.callbacks.failsafe_after_iret(frame, "CS", frame.cs, fault)
                    return
                values["cs"] = frame.cs
            if frame.ss != regs["ss"]:
                fault = check_stack_selector(hv, frame.ss, target)
                if fault is not None:
                    hv.callbacks.failsafe_after_iret(frame, "SS", frame.ss, fault)
                    return
                values["ss"] = frame.ss
            cpu.write_many(values)
        elif current_ring == 1:
            self.pv(hv.current).outer_iret = frame
            hv.iret_to_outer_ring(frame.eip, frame.cs, eflags, frame.esp, frame.ss)
        else:
            self.pv(hv.current).outer_iret = None       # that iret has completed
            hv.switch_to_ring1(lambda _saved: self._landed(frame, eflags))

    def _landed(self, frame: GuestFrame, eflags: int) -> None:
        """At Xen's ring-1 landing pad: continue at a ring-1 frame."""
        hv = self.hv
        if frame.ss != FLAT_RING1_DS:
            fault = check_stack_selector(hv, frame.ss, 1)
            if fault is not None:
                hv.crash_domain(f"kernel stack selector {frame.ss:#06x} cannot be loaded: "
                                f"{fault.reason}")
                return
        values = {"ss": frame.ss, "esp": frame.esp, "eip": frame.eip, "eflags": eflags}
        if frame.cs != hv.cpu.read("cs"):
            fault = check_code_selector(hv, frame.cs)
            if fault is not None:
                hv.crash_domain(f"handler selector {frame.cs:#06x} cannot be loaded: "
                                f"{fault.reason}")
                return
            values["cs"] = frame.cs
        hv.cpu.write_many(values)

    # -- exceptions from the CPU --------------------------------------------------------
    _absorbing = False

    def exception(self, vector: int) -> None:
        """A fault or software interrupt the CPU raised in guest context."""
        if self._absorbing:
            return
        hv = self.hv
        cpu = hv.cpu
        regs = cpu.frame_registers()
        frame = GuestFrame.from_regs(regs)
        vcpu = hv.current
        pv = self.pv(vcpu)
        if TRAMPOLINE_VA <= frame.eip < TRAMPOLINE_END:
            self._fault_in_trampoline(vector, frame, pv)
            return
        pv.outer_iret = None            # any iret of Xen's into ring 3 has completed
        if vector in (TRAP_INT3, TRAP_OVERFLOW):
            self.inject(vector, frame)          # DPL-3 gates: delivered whatever the DPL
            return
        if vector >= 32 or self._is_int_instruction(vector, frame.eip):
            self.software_interrupt(vector, frame)
            return
        error_code = cpu.exception_error_code() if vector in VECTORS_WITH_ERROR_CODE else None
        if vector == TRAP_PF:
            cr2 = cpu.read("cr2")
            fixup = getattr(hv, "fixup_page_fault", None)
            if fixup is not None and fixup(cr2, error_code):
                return
            detail = ""
            if cr2 >= AREA_VA:
                # pvdbg's private area: on Xen 4.17 nothing is mapped there for a 32-bit
                # guest, so the guest's fault is a not-present one.
                error_code &= ~PFEC_PRESENT
                detail = "pvdbg's private area, where Xen maps nothing for a PV guest"
            self.inject(TRAP_PF, frame, error_code=error_code, cr2=cr2, detail=detail)
        elif vector == TRAP_GP:
            refused = ""
            if error_code == 0:
                refused = hv.emulator.emulate(frame, regs)
                if refused is None:
                    return
            if error_code and not error_code & 3:
                # A selector error code from a 32-bit guest: Xen's gate-op emulation,
                # which injects the #GP itself when no call gate was used.
                self.gates.emulate(frame, error_code)
                return
            self.inject(TRAP_GP, frame, error_code=error_code, detail=refused)
        elif vector == TRAP_NO_DEVICE:
            self._device_not_available(frame, pv)
        elif vector == TRAP_INVALID_OP:
            if not hv.cpuid.forced_emulation(frame):
                self.inject(TRAP_INVALID_OP, frame)
        elif vector == TRAP_DEBUG:
            pv.dr6 |= 1 << 14 if frame.eflags & EFLAGS_TF else 0
            self.inject(TRAP_DEBUG, frame)
        elif vector == TRAP_DOUBLE_FAULT:
            hv.crash_domain(f"double fault at {frame.eip:#x} (ring {frame.ring})", vector=vector)
        else:
            self.inject(vector, frame, error_code=error_code)

    def _is_int_instruction(self, vector: int, eip: int) -> bool:
        """`int $n` for n < 32 reaches the hook with EIP past it, a fault with EIP at the
        instruction: an `int n` is recognised by the two bytes before EIP."""
        try:
            return self.hv.guest.read((eip - 2) & 0xFFFFFFFF, 2) == bytes((0xCD, vector))
        except GuestFault:
            return False

    def _device_not_available(self, frame: GuestFrame, pv: PvVcpu) -> None:
        cpu = self.hv.cpu
        cpu.write("cr0", cpu.read("cr0") & ~CR0_TS)
        if pv.cr0_ts:
            pv.cr0_ts = False
            self.inject(TRAP_NO_DEVICE, frame, detail="virtual CR0.TS was set: cleared")

    def _absorb_first_uncounted_start(self) -> None:
        """Unicorn's first emu_start without an instruction count (clock="host") drops the
        boot's count hook and, doing so, fetches at the address the boot's counted run
        began -- the trampoline, now unmapped: a #PF that sets CR2 and stays in flight
        (unicorn issue 1883) so the guest's next fault would become #DF.  Take that start
        here, stopping before any instruction, and undo its traces."""
        hv = self.hv
        cpu = hv.cpu
        uc = cpu.uc
        regs = cpu.read_many(("eip", "cr2"))
        hv.traps = self                 # the hook reaches `exception`, which ignores it
        self._absorbing = True
        uc.ctl_set_exits([regs["eip"]])
        try:
            uc.emu_start(regs["eip"], 0, count=0)
        finally:
            uc.ctl_set_exits([])
            self._absorbing = False
        cpu.clear_exception_in_flight()
        cpu.write_many({"cr2": regs["cr2"], "eip": regs["eip"]})

    def close_transit(self) -> None:
        """Unmap the transit pages (entry.py) now that the vcpu runs guest code in ring 1,
        dropping the CPU's cached translations of them (a raw TLB flush: nothing else
        changed, so pvdbg's own guest-memory cache stays)."""
        self.hv.area.transit_close()
        self.hv.cpu.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _fault_in_trampoline(self, vector: int, frame: GuestFrame, pv: PvVcpu) -> None:
        hv = self.hv
        self.close_transit()            # whatever follows runs the guest in ring 1
        if (frame.eip == TRAMPOLINE_VA + TRAMP_IRET and pv.outer_iret is not None
                and frame.ring == 1):
            target, pv.outer_iret = pv.outer_iret, None
            error_code = hv.cpu.exception_error_code() if vector in VECTORS_WITH_ERROR_CODE else 0
            hv.callbacks.failsafe_after_iret(target, "iret", error_code, None, vector=vector)
            return
        if hv.current.ring3_return is None:
            self._jumped_into_trampoline(vector, frame)
            return
        hv.crash_domain(f"{vector_name(vector)} inside Xen's trampoline at {frame.eip:#x}",
                        vector=vector)

    def _jumped_into_trampoline(self, vector: int, frame: GuestFrame) -> None:
        """The guest itself jumped into the trampoline page, which Xen does not have (its
        entry code lies above 4 GiB, out of a compat guest's reach): deliver the #PF that
        fetching from that unmapped address takes on Xen, at the address entered."""
        entry = frame
        gate_return = TRAMPOLINE_VA + TRAMP_TO_RING1 + LCALL_SIZE
        if vector == LANDING_VECTOR and frame.eip == TRAMPOLINE_VA + TRAMP_LANDING + 2:
            # Came through the call gate from the lcall: CS:EIP (and SS:ESP from an outer
            # ring) of the caller are on the stack the gate switched to.
            ret_eip, ret_cs, esp, ss = self._gate_frame(frame)
            if ret_eip == gate_return:
                outer = ret_cs & 3 != frame.cs & 3
                entry = GuestFrame(TRAMPOLINE_VA + TRAMP_TO_RING1, ret_cs & 0xFFFF, frame.eflags,
                                   esp if outer else (frame.esp + 8) & 0xFFFFFFFF,
                                   ss & 0xFFFF if outer else frame.ss)
        if entry is frame and (vector >= 32 or vector in (TRAP_INT3, TRAP_OVERFLOW)):
            entry = frame.replace(eip=(frame.eip - (2 if vector >= 32 else 1)) & 0xFFFFFFFF)
        self.inject(TRAP_PF, entry, error_code=PFEC_INSN_FETCH, cr2=entry.eip,
                    detail="the guest jumped into pvdbg's trampoline page, where Xen maps "
                           "nothing for a PV guest")

    def _gate_frame(self, frame: GuestFrame) -> tuple[int, int, int, int]:
        """The four words a far call through a gate left at SS:ESP (zeros if unreadable)."""
        hv = self.hv
        if HV_STACK_VA <= frame.esp <= HV_STACK_VA + 0x1000 - 16:
            data = hv.memory.read((hv.area.stack_mfn << 12) | (frame.esp & 0xFFF), 16)
        else:
            try:
                data = hv.guest.read(frame.esp, 8) + bytes(8)
            except GuestFault:
                data = bytes(16)
        ret_eip, ret_cs, esp, ss = struct.unpack("<4I", data)
        return ret_eip, ret_cs, esp, ss

    # -- software interrupts -------------------------------------------------------------
    def software_interrupt(self, vector: int, frame: GuestFrame) -> None:
        """`int n` (EIP already past it): direct trap for 0x80, DPL rule for the rest."""
        pv = self.pv(self.hv.current)
        ti = pv.trap_ctxt[vector]
        if vector == LEGACY_SYSCALL_VECTOR and ti.cs & ~3:
            self.inject(vector, frame, software=True, detail="int80 direct trap")
            return
        dpl = ti.flags & 3
        if dpl >= (1 if frame.ring == 1 else 3):
            self.inject(vector, frame, software=True)
            return
        at_int = frame.replace(eip=(frame.eip - 2) & 0xFFFFFFFF)
        why = (f"int {vector:#x} from ring {frame.ring}: trap table DPL {dpl} "
               + ("(not registered)" if ti.cs & ~3 == 0 else "too low"))
        self.inject(TRAP_GP, at_int, error_code=vector << 3 | 2, detail=why)

    # -- delivery ------------------------------------------------------------------------
    def inject(self, vector: int, frame: GuestFrame, *, error_code: int | None = None,
               cr2: int | None = None, software: bool = False, detail: str = "") -> None:
        """pv_inject_event + the return to the guest: bounce to trap_ctxt[vector]."""
        hv = self.hv
        vcpu = hv.current
        pv = self.pv(vcpu)
        ti = pv.trap_ctxt[vector]
        name = vector_name(vector)
        args: dict[str, object] = {"vector": vector, "ring": frame.ring}
        if error_code is not None:
            args["error_code"] = error_code
        if cr2 is not None:
            error_code = (error_code or 0) & ~PFEC_USER
            if frame.ring != 1:
                error_code |= PFEC_USER
            args["error_code"] = error_code
            args["cr2"] = cr2
            pv.cr2 = cr2
            hv.memory.write_u32(hv.vcpu_info_maddr(vcpu.vcpu_id) + 8, cr2)
        if ti.cs & ~3 == 0:
            where = f"{name} at {frame.eip:#x} (ring {frame.ring})"
            if error_code is not None:
                where += f", error code {error_code:#x}"
            if cr2 is not None:
                where += f", cr2={cr2:#x}{self._walk_text(cr2)}"
            why = f"{where}: no handler in the virtual trap table (set_trap_table)"
            if detail:
                why = f"{why}; {detail}"
            self._record(TraceKind.trap, vcpu, frame, name, args, f"no handler; {detail}".strip("; "))
            hv.crash_domain(why, vector=vector if software else None)
            return
        pv.delivering = name
        try:
            new = self.bounce(vcpu, frame, ti.cs, ti.address,
                              error_code=error_code if vector in VECTORS_WITH_ERROR_CODE
                              and not software else None,
                              mask_events=bool(ti.flags & 4))
        except DeliveryError as err:
            self._record(TraceKind.trap, vcpu, frame, name, args, f"delivery failed: {err}")
            hv.crash_domain(f"fault while delivering {name} from {frame.eip:#x} "
                            f"(ring {frame.ring}) to its handler {ti.address:#x}: {err}"
                            + self._stack_origin(vcpu, frame), vector=vector if software else None)
            return
        args.update(handler=ti.address, frame=new.esp, stack=f"{new.ss:#06x}:{new.esp:#010x}")
        note = detail
        if frame.cs & 2:
            note = (f"{detail}; " if detail else "") + (
                f"frame on kernel_ss:kernel_sp {vcpu.kernel_ss:#06x}:{vcpu.kernel_sp:#010x} "
                f"from {pv.kernel_sp_source}")
        self._record(TraceKind.trap, vcpu, frame, name, args, note)
        pv.delivering = None
        self.exit_to_guest(new)

    def _stack_origin(self, vcpu: "Vcpu", frame: GuestFrame) -> str:
        if not frame.cs & 2:
            return ""
        return (f"; kernel_ss:kernel_sp {vcpu.kernel_ss:#06x}:{vcpu.kernel_sp:#010x} came from "
                f"{self.pv(vcpu).kernel_sp_source}")

    def _walk_text(self, va: int) -> str:
        try:
            self.hv.guest.translate(va)
            return ""
        except GuestFault as fault:
            return f" ({fault.reason})"

    def _record(self, kind: TraceKind, vcpu: "Vcpu", frame: GuestFrame, name: str,
                args: dict, detail: str) -> None:
        hv = self.hv
        hv.emit(TraceRecord(seq=hv.trace.next_seq(), kind=kind, icount=hv.cpu.icount,
                            vcpu=vcpu.vcpu_id, eip=frame.eip, name=name, args=args,
                            symbol=hv.symbolize(frame.eip), detail=detail,
                            parent=hv.current_hypercall_seq))


# -- hypercalls ----------------------------------------------------------------------------

def _traps(ctx: "HypercallContext") -> Traps:
    return ctx.hv.traps


@HYPERCALLS.handler(Hc.set_trap_table, Param("traps"))
def set_trap_table(ctx: "HypercallContext", traps: int) -> int:
    """Install trap_info entries up to the first with address 0; NULL clears all 256.
    ABI: xen/arch/x86/pv/callback.c compat_set_trap_table."""
    pv = _traps(ctx).pv(ctx.vcpu)
    if traps == 0:
        pv.trap_ctxt = [EMPTY_TRAP] * NR_VECTORS
        ctx.note("virtual IDT cleared")
        return 0
    installed = []
    for i in range(NR_VECTORS + 1):
        entry = TrapInfo32.from_bytes(ctx.guest.read(traps + i * TrapInfo32.SIZE, TrapInfo32.SIZE))
        if entry.address == 0:
            break
        cs = entry.cs | 1 if entry.cs & 3 == 0 else entry.cs
        pv.trap_ctxt[entry.vector] = TrapInfo32(entry.vector, entry.flags, cs, entry.address)
        installed.append(entry.vector)
    ctx.note(f"{len(installed)} vectors: " + ",".join(f"{v:#x}" for v in installed[:40]))
    return 0


@HYPERCALLS.handler(Hc.stack_switch, Param("ss"), Param("esp"))
def stack_switch(ctx: "HypercallContext", ss: int, esp: int) -> int:
    """kernel_ss:kernel_sp for entries from ring 3 (RPL raised to 1).
    ABI: xen/arch/x86/pv/misc-hypercalls.c do_stack_switch."""
    ss &= 0xFFFF
    if ss & 3 == 0:
        ss |= 1
    ctx.vcpu.kernel_ss = ss
    ctx.vcpu.kernel_sp = esp
    pv = _traps(ctx).pv(ctx.vcpu)
    seq = ctx.hv.current_hypercall_seq
    pv.kernel_sp_source = f"stack_switch at trace seq {seq}"
    ctx.note(f"kernel stack {ss:#06x}:{esp:#010x}")
    return 0


@HYPERCALLS.handler(Hc.fpu_taskswitch, Param("set", "int"))
def fpu_taskswitch(ctx: "HypercallContext", set_ts: int) -> int:
    """Set or clear the virtual CR0.TS; the next FPU instruction with TS set raises #NM.
    ABI: xen/arch/x86/pv/misc-hypercalls.c do_fpu_taskswitch."""
    pv = _traps(ctx).pv(ctx.vcpu)
    cpu = ctx.hv.cpu
    pv.cr0_ts = bool(set_ts)
    cr0 = cpu.read("cr0")
    cpu.write("cr0", cr0 | CR0_TS if set_ts else cr0 & ~CR0_TS)
    return 0
