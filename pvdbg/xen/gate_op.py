"""Call-gate emulation for a 32-bit PV guest: what Xen does with a #GP(selector) that a
far call or jump through one of the guest's call gates raised.

check_descriptor stores every call gate the guest installs with DPL 0 (the DPL the guest
asked for kept in the target selector's RPL), so any use of one faults.  Xen then decodes
the faulting ``lcall``/``ljmp`` (ptr16:32 or ptr16:16 direct, m16:32 or m16:16 indirect
through any ModRM/SIB form and segment), applies the gate's privilege rules with the
recovered DPL, and performs the transfer itself: a same-ring call pushes CS:EIP on the
current stack; a call inward (ring 3 -> ring 1, the only inner ring a PV guest has)
switches to kernel_ss:kernel_sp from stack_switch and pushes SS, ESP, the gate's
parameters, CS, EIP as the CPU would; a jump only loads CS:EIP.  Every refusal is the
exception Xen injects, with its error code.  Ring changes go through Xen's trampolines
(entry.py) via `Traps.exit_to_guest`.

ABI: xen/arch/x86/pv/emul-gate-op.c (read_gate_descriptor, check_stack_limit,
pv_emulate_gate_op), xen/arch/x86/pv/emulate.c (pv_emul_read_descriptor,
pv_emul_instruction_done), xen/arch/x86/traps.c do_general_protection; Intel SDM vol. 3
section 5.8.6 (call gates); XEN-PV-ABI.md 1.3.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..trace import TraceKind, TraceRecord
from .constants import HYPERVISOR_VIRT_START_PAE
from .guestmem import GuestFault
from .traps import EFLAGS_RF, EFLAGS_TF, TRAP_DEBUG, TRAP_GP, TRAP_PF, GuestFrame
from .x86insn import MAX_INSN, DecodeError, X86Decoder

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

TRAP_TS, TRAP_NP, TRAP_SS = 10, 11, 12
PFEC_WRITE = 1 << 1
GUEST_KERNEL_RPL = 1

# Access-rights bits (descriptor high word, bits 8..15; Xen's _SEGMENT_*).
AR_ACCESSED = 1 << 8
AR_WR = 1 << 9              # data: writable; code: readable
AR_EC = 1 << 10             # data: expand-down; code: conforming
AR_CODE = 1 << 11
AR_S = 1 << 12
AR_DPL = 3 << 13
AR_P = 1 << 15
AR_DB = 1 << 22
AR_G = 1 << 23
AR_L = 1 << 21


@dataclass(frozen=True)
class SegmentInfo:
    """pv_emul_read_descriptor()'s result: base, inclusive byte limit, access rights."""
    base: int
    limit: int
    ar: int

    @property
    def dpl(self) -> int:
        return (self.ar >> 13) & 3

    @classmethod
    def from_raw(cls, raw: int) -> "SegmentInfo":
        a, b = raw & 0xFFFFFFFF, raw >> 32
        b &= ~AR_L
        base = (a >> 16) | ((b & 0xFF) << 16) | (b & 0xFF000000)
        limit = (a & 0xFFFF) | (b & 0x000F0000)
        if b & AR_G:
            limit = ((limit + 1) << 12) - 1
        return cls(base & 0xFFFFFFFF, limit & 0xFFFFFFFF, b & 0x00F0FF00)


@dataclass(frozen=True)
class Gate:
    """A call gate as Xen reads it back: target selector (RPL 0), offset, access rights
    with the guest's DPL restored."""
    selector: int
    offset: int
    ar: int

    @property
    def dpl(self) -> int:
        return (self.ar >> 13) & 3

    @property
    def param_count(self) -> int:
        return self.ar & 0x1F


class GateFault(Exception):
    """The exception Xen injects instead of completing the gate operation."""

    def __init__(self, vector: int, error_code: int | None, why: str,
                 cr2: int | None = None) -> None:
        self.vector = vector
        self.error_code = error_code
        self.why = why
        self.cr2 = cr2
        super().__init__(why)


def stack_limit_ok(ar: int, limit: int, esp: int, decrement: int) -> bool:
    """check_stack_limit(): `decrement` bytes below ESP fit the segment without wrapping
    (expand-up: ESP-1 <= limit; expand-down: ESP-decrement > limit), 32-bit arithmetic."""
    mask = 0xFFFFFFFF
    low = (esp - decrement) & mask
    if not low < ((esp - 1) & mask):
        return False
    if ar & AR_EC:
        return low > limit
    return ((esp - 1) & mask) <= limit


def compat_access_ok(va: int, size: int) -> bool:
    """compat_access_ok(): the range lies below the compat hypervisor hole."""
    return va >= 0 and va + size <= HYPERVISOR_VIRT_START_PAE


class GateOps:
    """Xen's pv_emulate_gate_op for one domain."""

    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.decoder = X86Decoder()
        self.emulated = 0

    # -- descriptors -------------------------------------------------------------------
    def read_segment(self, selector: int) -> SegmentInfo | None:
        """pv_emul_read_descriptor(): None when the descriptor cannot be read; a zero
        descriptor for a null selector or an LDT index beyond the LDT."""
        hv = self.hv
        vcpu_id = hv.current.vcpu_id
        if selector < 4:
            return SegmentInfo(0, 0, 0)
        if selector & 4 and selector >> 3 >= hv.descriptors.vcpus[vcpu_id].ldt_ents:
            return SegmentInfo(0, 0, 0)
        raw = hv.descriptors.descriptor(vcpu_id, selector)
        if raw is None:
            return None
        return SegmentInfo.from_raw(raw)

    def read_gate(self, gate_selector: int) -> Gate | None:
        """read_gate_descriptor(): the call gate `gate_selector` names, or None when it is
        not one Xen stored (beyond the table, DPL not 0, not a call gate)."""
        hv = self.hv
        state = hv.descriptors.vcpus[hv.current.vcpu_id]
        ents = state.ldt_ents if gate_selector & 4 else state.gdt_ents
        if gate_selector < 4 or gate_selector >> 3 >= ents:
            return None
        raw = hv.descriptors.descriptor(hv.current.vcpu_id, gate_selector)
        if raw is None:
            return None
        a, b = raw & 0xFFFFFFFF, raw >> 32
        selector = (a >> 16) & 0xFFFC
        offset = (a & 0xFFFF) | (b & 0xFFFF0000)
        ar = b & 0xFFFF
        if ar & AR_DPL:
            return None
        ar |= ((a >> 16) & 3) << 13
        kind = ar & 0x1F00
        if kind == 0x0400:
            offset &= 0xFFFF
        elif kind != 0x0C00:
            return None
        return Gate(selector, offset, ar)

    # -- memory ------------------------------------------------------------------------
    def _read_operand(self, segment: str, offset: int, size: int, regs: dict[str, int],
                      cs_info: SegmentInfo, gp_code: int) -> bytes:
        """read_mem(): `size` bytes at segment:offset, with the segment's checks."""
        if segment == "cs":
            base, limit = cs_info.base, cs_info.limit
        else:
            selector = regs[segment]
            if not selector:
                raise GateFault(TRAP_GP, gp_code, f"the operand's segment {segment} is null")
            info = self.read_segment(selector)
            if (info is None or not info.ar & AR_S or not info.ar & AR_P
                    or (info.ar & AR_CODE and not info.ar & AR_WR)):
                raise GateFault(TRAP_GP, gp_code, f"the operand's segment {segment}="
                                                  f"{selector:#06x} is not readable data")
            base, limit = info.base, info.limit
        if limit < size - 1 or offset > limit - size + 1:
            raise GateFault(TRAP_GP, gp_code, f"operand {segment}:{offset:#x} is beyond the "
                                              f"segment limit {limit:#x}")
        linear = (base + offset) & 0xFFFFFFFF
        try:
            return self.hv.guest.read(linear, size)
        except GuestFault as fault:
            raise GateFault(TRAP_PF, 0, f"reading {linear:#x}: {fault.reason}",
                            cr2=fault.guest_va) from None

    def _fetch(self, cs_info: SegmentInfo, eip: int) -> bytes:
        """Up to 15 instruction bytes at CS:EIP (fewer at the segment limit or at the end
        of the mapped range)."""
        if eip > cs_info.limit:
            raise GateFault(TRAP_GP, 0, f"EIP {eip:#x} is beyond the CS limit")
        count = min(MAX_INSN, cs_info.limit - eip + 1)
        linear = (cs_info.base + eip) & 0xFFFFFFFF
        try:
            return self.hv.guest.read(linear, count)
        except GuestFault as fault:
            page_left = 0x1000 - (linear & 0xFFF)
            if page_left < count and fault.guest_va != linear:
                try:
                    return self.hv.guest.read(linear, page_left)
                except GuestFault as again:
                    fault = again
            raise GateFault(TRAP_PF, 0, f"fetching the instruction at {linear:#x}: "
                                        f"{fault.reason}", cr2=fault.guest_va) from None

    def _push(self, words: list[int], base: int, esp: int) -> int:
        """Write `words` (first pushed first) below ESP; return the new ESP.  A fault
        leaves the words already written, as Xen's one-at-a-time pushes do."""
        for word in words:
            esp = (esp - 4) & 0xFFFFFFFF
            linear = (base + esp) & 0xFFFFFFFF
            try:
                self.hv.guest.write(linear, struct.pack("<I", word & 0xFFFFFFFF))
            except GuestFault as fault:
                raise GateFault(TRAP_PF, PFEC_WRITE, f"pushing at {linear:#x}: {fault.reason}",
                                cr2=fault.guest_va) from None
        return esp

    # -- the operation -----------------------------------------------------------------
    def emulate(self, frame: GuestFrame, error_code: int) -> None:
        """A #GP(error_code) with a non-zero selector error code from the guest: emulate
        the gate use, or inject the exception Xen injects."""
        hv = self.hv
        regs = hv.cpu.frame_registers()
        try:
            new, record = self._operate(frame, error_code, regs)
        except GateFault as fault:
            hv.traps.inject(fault.vector, frame, error_code=fault.error_code, cr2=fault.cr2,
                            detail=f"call gate {error_code:#06x}: {fault.why}")
            return
        self.emulated += 1
        hv.emit(TraceRecord(seq=hv.trace.next_seq(), kind=TraceKind.emulation,
                            icount=hv.cpu.icount, vcpu=hv.current.vcpu_id, eip=frame.eip,
                            name="gate_op", args=record, symbol=hv.symbolize(frame.eip),
                            detail=(f"{record['insn']} through call gate "
                                    f"{record['gate']:#06x} to {new.cs:#06x}:{new.eip:#x}, "
                                    f"ring {frame.ring} -> {new.ring}"),
                            parent=hv.current_hypercall_seq))
        if frame.eflags & EFLAGS_TF:
            pv = hv.traps.pv(hv.current)
            pv.dr6 |= 1 << 14
            hv.traps.inject(TRAP_DEBUG, new, detail="after an emulated gate operation")
            return
        hv.traps.exit_to_guest(new)

    def _operate(self, frame: GuestFrame, error_code: int,
                 regs: dict[str, int]) -> tuple[GuestFrame, dict]:
        cpl = frame.cs & 3
        gate = self.read_gate(error_code)
        if gate is None or gate.dpl < cpl or gate.ar & 0x1F00 != 0x0C00:
            raise GateFault(TRAP_GP, error_code,
                            "not a call gate usable from ring "
                            f"{cpl}" if gate is not None else "not a call gate")
        if not gate.ar & AR_P:
            raise GateFault(TRAP_NP, error_code, "the call gate is not present")
        cs_info = self.read_segment(frame.cs)
        if cs_info is None or cs_info.ar & (AR_S | AR_P | AR_CODE) != AR_S | AR_P | AR_CODE:
            raise GateFault(TRAP_GP, error_code, f"CS {frame.cs:#06x} cannot be read")
        code = self._fetch(cs_info, frame.eip)
        try:
            insn = self.decoder.decode(code, regs, big=bool(cs_info.ar & AR_DB))
        except DecodeError as err:
            raise GateFault(TRAP_GP, error_code, str(err)) from None
        jump: bool | None = None
        operand_selector = 0
        if insn.opcode in (0x9A, 0xEA):
            jump = insn.opcode == 0xEA
            operand_selector = insn.immediates[0] & 0xFFFF
        elif insn.opcode == 0xFF and insn.modrm is not None and insn.modrm >> 6 != 3 \
                and (insn.modrm >> 3) & 7 in (3, 5):
            jump = (insn.modrm >> 3) & 7 == 5
            mem = insn.memory[0]
            offset = (mem.offset + insn.operand_size) & ((1 << 8 * insn.address_size) - 1)
            operand_selector = struct.unpack(
                "<H", self._read_operand(mem.segment, offset, 2, regs, cs_info, error_code))[0]
        if jump is None:
            raise GateFault(TRAP_GP, error_code, f"{insn.text} is not a far call or jump")
        if operand_selector & ~3 != error_code:
            raise GateFault(TRAP_GP, error_code, f"{insn.text} names selector "
                                                 f"{operand_selector:#06x}, not the gate")
        if gate.dpl < operand_selector & 3:
            raise GateFault(TRAP_GP, error_code, f"gate DPL {gate.dpl} is below the "
                                                 f"selector's RPL {operand_selector & 3}")
        selector = gate.selector
        target = self.read_segment(selector)
        if target is None or not target.ar & AR_S or not target.ar & AR_CODE:
            raise GateFault(TRAP_GP, selector, f"gate target {selector:#06x} is not a code "
                                               "segment")
        if not jump or target.ar & AR_EC:
            if target.dpl > cpl:
                raise GateFault(TRAP_GP, selector, f"target DPL {target.dpl} is above CPL {cpl}")
        elif target.dpl != cpl:
            raise GateFault(TRAP_GP, selector, f"jump to non-conforming DPL {target.dpl} "
                                               f"from CPL {cpl}")
        if not target.ar & AR_P:
            raise GateFault(TRAP_NP, selector, f"gate target {selector:#06x} is not present")
        if gate.offset > target.limit:
            raise GateFault(TRAP_GP, 0, f"gate offset {gate.offset:#x} is beyond the target's "
                                        f"limit {target.limit:#x}")
        ss, esp = frame.ss, frame.esp
        if jump:
            selector |= cpl
        elif target.dpl < cpl:
            selector |= target.dpl
            ss, esp = self._inner_call(frame, gate, selector, regs, error_code, insn.length)
        else:
            selector |= cpl
            stack = self.read_segment(ss)
            if stack is None or stack.dpl != cpl:
                raise GateFault(TRAP_GP, error_code, f"SS {ss:#06x} is not a ring-{cpl} stack")
            if not stack_limit_ok(stack.ar, stack.limit, esp, 8):
                raise GateFault(TRAP_SS, 0, f"8 bytes below ESP {esp:#x} are outside SS")
            if not compat_access_ok((stack.base + esp - 8) & 0xFFFFFFFF, 8):
                raise GateFault(TRAP_GP, error_code, "the stack reaches the hypervisor hole")
            esp = self._push([frame.cs, frame.eip + insn.length], stack.base, esp)
        new = GuestFrame(gate.offset, selector, frame.eflags & ~EFLAGS_RF, esp, ss)
        record = {"gate": error_code, "insn": insn.text, "target_cs": selector,
                  "target_eip": gate.offset, "from_ring": cpl, "to_ring": selector & 3,
                  "kind": "jmp" if jump else "call", "params": 0 if jump else gate.param_count}
        return new, record

    def _inner_call(self, frame: GuestFrame, gate: Gate, selector: int, regs: dict[str, int],
                    error_code: int, length: int) -> tuple[int, int]:
        """A call through the gate into ring 1: the kernel stack from stack_switch gets
        SS, ESP, the parameters, CS, EIP.  Returns the new SS:ESP."""
        vcpu = self.hv.current
        if selector & 3 != GUEST_KERNEL_RPL:
            raise GateFault(TRAP_GP, error_code, f"inner ring {selector & 3} has no known stack")
        ss, esp = vcpu.kernel_ss, vcpu.kernel_sp
        nparm = gate.param_count
        stack = self.read_segment(ss) if ss & 3 == selector & 3 else None
        if (stack is None or stack.dpl != selector & 3 or not stack.ar & AR_S
                or stack.ar & AR_CODE or not stack.ar & AR_WR):
            raise GateFault(TRAP_TS, ss & ~3, f"kernel_ss {ss:#06x} is not a ring-1 stack")
        if not stack.ar & AR_P or not stack_limit_ok(stack.ar, stack.limit, esp,
                                                     (4 + nparm) * 4):
            raise GateFault(TRAP_SS, ss & ~3, f"kernel stack {ss:#06x}:{esp:#x} cannot take "
                                              f"{4 + nparm} words")
        start = (stack.base + esp) & 0xFFFFFFFF
        if not compat_access_ok(start - 16 - 4 * nparm, 16 + 4 * nparm):
            raise GateFault(TRAP_GP, error_code, "the kernel stack reaches the hypervisor hole")
        words = [frame.ss, frame.esp]
        if nparm:
            outer = self.read_segment(frame.ss)
            if (outer is None or outer.dpl != frame.cs & 3 or not outer.ar & AR_S
                    or outer.ar & AR_CODE or not outer.ar & AR_WR
                    or not stack_limit_ok(outer.ar, outer.limit, frame.esp + nparm * 4,
                                          nparm * 4)):
                raise GateFault(TRAP_GP, error_code, f"the caller's stack {frame.ss:#06x} "
                                                     f"cannot supply {nparm} parameters")
            source = (outer.base + frame.esp) & 0xFFFFFFFF
            if not compat_access_ok(source, 4 * nparm):
                raise GateFault(TRAP_GP, error_code, "the parameters lie in the hypervisor hole")
            # Pushed in the order the CPU copies them: the highest-addressed first.
            for k in range(nparm - 1, -1, -1):
                va = source + 4 * k
                try:
                    words.append(self.hv.guest.read_u32(va))
                except GuestFault as fault:
                    self._push(words, stack.base, esp)
                    raise GateFault(TRAP_PF, 0, f"reading parameter at {va:#x}: "
                                                f"{fault.reason}", cr2=fault.guest_va) from None
        words += [frame.cs, frame.eip + length]
        return ss, self._push(words, stack.base, esp)
