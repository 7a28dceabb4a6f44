"""Privileged-instruction emulation: what Xen does with a #GP(0) from a PV guest.

A 32-bit PV kernel runs in ring 1, so privileged instructions fault.  Xen decodes the
instruction and emulates the ones its validate() hook allows -- in/out/ins/outs under
the virtual IOPL or the guest's I/O bitmap, mov to/from CR0/CR2/CR3/CR4 and DR0-7, clts,
wbinvd, rdmsr/wrmsr for its MSR set, rdtsc/rdtscp (trapped through CR4.TSD), cli/sti
when the IOPL allows (as no-ops), xsetbv -- and hands everything else (hlt, invd, lmsw,
lgdt, lidt, lldt, ltr, invlpg, ...) back to the guest as the #GP it was.  Each emulation
is traced with the instruction's bytes and its disassembly.
ABI: xen/arch/x86/pv/emul-priv-op.c (validate, read_cr, write_cr, read_msr, write_msr,
guest_io_okay, guest_io_read/write); xen/arch/x86/msr.c guest_rdmsr/guest_wrmsr;
XEN-PV-ABI.md 5.7.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from unicorn import UC_HOOK_INSN
from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT
from capstone import x86 as cx

from ..machine.cpu import CR0_TS
from ..machine.memory import PAGE_SHIFT
from ..trace import TraceKind, TraceRecord
from .builder import hypercall_page_32
from .constants import Vmasst
from .debugregs import DebugRegisterError
from .guestmem import GuestFault
from .hypercalls import HypercallError
from .pvvcpu import CR4_GUEST_CONTROLLED, CR4_GUEST_VISIBLE, CR4_TSD
from .traps import EFLAGS_RF, EFLAGS_TF, TRAP_DEBUG, TRAP_GP, TRAP_INVALID_OP, TRAP_PF, GuestFrame

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

MAX_INSN = 15
GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")

# MSRs (xen/arch/x86/include/asm/msr-index.h).
MSR_IA32_TSC = 0x10
MSR_IA32_PLATFORM_ID = 0x17
MSR_APIC_BASE = 0x1B
MSR_IA32_UCODE_REV = 0x8B
MSR_INTEL_PLATFORM_INFO = 0xCE
MSR_INTEL_MISC_FEATURES_ENABLES = 0x140
MSR_IA32_MCG_CAP = 0x179
MSR_IA32_MCG_STATUS = 0x17A
MSR_IA32_MCG_CTL = 0x17B
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_CR_PAT = 0x277
MSR_IA32_PERF_CAPABILITIES = 0x345
MSR_IA32_MC0_CTL = 0x400
MSR_EFER = 0xC0000080
XEN_MSR_BASE = 0x40000000

APIC_DEFAULT_PHYS_BASE = 0xFEE00000
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8
XEN_MSR_PAT = 0x0000050100070406
GUEST_EFER = 1 << 11                    # host EFER minus LME/LMA/SCE (Intel): NXE
HOST_MISC_ENABLE = 0x850089
MISC_ENABLE_PERF_AVAIL = 1 << 7
MISC_ENABLE_BTS_UNAVAIL = 1 << 11
MISC_ENABLE_PEBS_UNAVAIL = 1 << 12
MISC_ENABLE_MONITOR = 1 << 18
MISC_ENABLE_XTPR_DISABLE = 1 << 23
PLATFORM_INFO_CPUID_FAULTING = 1 << 31
GUEST_MC_BANKS = 2
GUEST_MCG_CAP = GUEST_MC_BANKS | 1 << 11 | 1 << 24       # banks | MCG_TES_P | MCG_SER_P
CR0_HOST_BITS_MASK = ~CR0_TS & 0xFFFFFFFF


def guest_misc_enable(value: int) -> int:
    value &= ~(MISC_ENABLE_PERF_AVAIL | MISC_ENABLE_MONITOR)
    return value | MISC_ENABLE_BTS_UNAVAIL | MISC_ENABLE_PEBS_UNAVAIL | MISC_ENABLE_XTPR_DISABLE


def _vpmu_msr(msr: int) -> bool:
    """Performance-counter MSRs: with the vPMU off Xen reads 0 and drops writes."""
    return (0xC1 <= msr <= 0xC8 or 0x186 <= msr <= 0x189 or 0x309 <= msr <= 0x30B
            or 0x38D <= msr <= 0x390)


def _mce_bank_msr(msr: int) -> bool:
    return MSR_IA32_MC0_CTL <= msr < MSR_IA32_MC0_CTL + 4 * GUEST_MC_BANKS


def host_has_msr(msr: int) -> bool:
    """Does the emulated host CPU implement `msr` (rdmsr_safe would succeed)?"""
    return (msr < 0x1000 and msr not in (0x5, 0x6)) or 0xC0000080 <= msr <= 0xC0000104


@dataclass(frozen=True)
class Decoded:
    mnemonic: str
    text: str
    length: int
    raw: bytes
    insn_id: int
    operands: tuple[tuple[str, Any, int], ...]   # (kind, value, size): "reg"/"imm"/"mem"
    rep: bool


class EmulatedFault(Exception):
    """The emulation raises an exception in the guest (x86_emul_hw_exception)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None,
                 why: str = "") -> None:
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.why = why
        super().__init__(why)


class Unhandleable(Exception):
    """X86EMUL_UNHANDLEABLE: the guest gets its #GP(0) back."""


class InstructionDecoder:
    """Capstone with a cache of decoded instructions.  Shared, never copied: machine
    snapshots keep the one decoder (a copied capstone handle would be freed twice)."""

    def __init__(self) -> None:
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True
        self._cache: dict[bytes, Decoded | None] = {}

    def __deepcopy__(self, memo) -> "InstructionDecoder":
        return self

    def decode(self, code: bytes) -> Decoded | None:
        if code in self._cache:
            return self._cache[code]
        decoded = None
        for insn in self._cs.disasm(code, 0, 1):
            ops = []
            for op in insn.operands:
                if op.type == cx.X86_OP_REG:
                    ops.append(("reg", insn.reg_name(op.reg), op.size))
                elif op.type == cx.X86_OP_IMM:
                    ops.append(("imm", op.imm & 0xFFFFFFFF, op.size))
                else:
                    ops.append(("mem", None, op.size))
            text = f"{insn.mnemonic} {insn.op_str}".strip()
            decoded = Decoded(insn.mnemonic, text, insn.size, bytes(insn.bytes), insn.id,
                              tuple(ops), 0xF3 in insn.prefix)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[code] = decoded
        return decoded


class PrivOpEmulator:
    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.decoder = InstructionDecoder()
        self.emulated = 0
        self.pit_latch = 0
        self.pit_mode = 0
        self.cmos_index = 0
        # Unicorn performs in/out without the I/O permission check a CPU makes (no #GP
        # for CPL > IOPL), so port accesses are intercepted as they happen.
        hv.cpu.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, UC_X86_INS_IN)
        hv.cpu.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, UC_X86_INS_OUT)

    def decode(self, code: bytes) -> Decoded | None:
        return self.decoder.decode(code)

    def fetch(self, eip: int) -> bytes:
        """Up to 15 bytes at EIP (fewer at the end of a mapped range)."""
        guest = self.hv.guest
        try:
            return guest.read(eip, MAX_INSN)
        except GuestFault:
            pass
        page_left = 0x1000 - (eip & 0xFFF)
        return guest.read(eip, min(MAX_INSN, page_left))

    # -- entry -------------------------------------------------------------------------
    def emulate(self, frame: GuestFrame, regs: dict[str, int]) -> str | None:
        """#GP(0) from the guest: emulate as Xen would.  None when handled (emulated, or
        another exception injected); otherwise why the guest gets its #GP back."""
        hv = self.hv
        try:
            code = self.fetch(frame.eip)
        except GuestFault as fault:
            hv.traps.inject(TRAP_PF, frame, error_code=0, cr2=fault.guest_va,
                            detail="instruction fetch during #GP emulation")
            return None
        insn = self.decode(code)
        if insn is None:
            return f"undecodable bytes {code[:8].hex()}"
        pv = hv.traps.pv(hv.current)
        details: dict[str, Any] = {}
        debugregs = hv.debugregs
        debugregs.pending_io_match = 0
        try:
            updates = self._execute(insn, frame, regs, pv, details)
        except Unhandleable as why:
            return f"{insn.text} ({insn.raw.hex()}): {why}"
        except EmulatedFault as fault:
            self._record(frame, insn, details, f"raises {fault.vector}: {fault.why}")
            hv.traps.inject(fault.vector, frame, error_code=fault.error_code, cr2=fault.cr2,
                            detail=f"{insn.text}: {fault.why}")
            return None
        self.emulated += 1
        self._record(frame, insn, details, "emulated")
        new = frame.replace(eip=(frame.eip + insn.length) & 0xFFFFFFFF,
                            eflags=frame.eflags & ~EFLAGS_RF)
        step = bool(frame.eflags & EFLAGS_TF)
        if step or debugregs.pending_io_match:
            if updates:
                hv.cpu.write_many(updates)
            pv.dr6 = (pv.dr6 & ~0xF) | debugregs.pending_io_match | (1 << 14 if step else 0)
            debugregs.pending_io_match = 0
            hv.traps.inject(TRAP_DEBUG, new, detail="after an emulated instruction")
            return None
        hv.traps.exit_to_guest(new, updates)
        return None

    def _record(self, frame: GuestFrame, insn: Decoded, details: dict, outcome: str) -> None:
        hv = self.hv
        args = {"vector": TRAP_GP, "bytes": insn.raw.hex(), "insn": insn.text, "ring": frame.ring}
        args.update(details)
        hv.emit(TraceRecord(seq=hv.trace.next_seq(), kind=TraceKind.emulation,
                            icount=hv.cpu.icount, vcpu=hv.current.vcpu_id, eip=frame.eip,
                            name=insn.mnemonic, args=args, symbol=hv.symbolize(frame.eip),
                            detail=outcome, parent=hv.current_hypercall_seq))

    # -- privilege -----------------------------------------------------------------------
    def _kernel(self, frame: GuestFrame) -> bool:
        return frame.ring == 1

    def iopl_ok(self, frame: GuestFrame) -> bool:
        """The virtual IOPL against the assumed CPL: 1 for the kernel (0 with VMASST
        architectural_iopl), 3 for user mode."""
        hv = self.hv
        pv = hv.traps.pv(hv.current)
        if self._kernel(frame):
            cpl = 0 if hv.domain.vm_assist & (1 << Vmasst.architectural_iopl) else 1
        else:
            cpl = 3
        return cpl <= pv.iopl

    def guest_io_okay(self, frame: GuestFrame, port: int, size: int) -> bool:
        if self.iopl_ok(frame):
            return True
        pv = self.hv.traps.pv(self.hv.current)
        if port + size > pv.iobmp_limit:
            return False
        raw = bytearray(b"\xff\xff")
        for i in range(2):
            try:
                raw[i] = self.hv.guest.read(pv.iobmp_va + (port >> 3) + i, 1)[0]
            except GuestFault:
                break
        mask = ((1 << size) - 1) << (port & 7)
        return (raw[0] | raw[1] << 8) & mask == 0

    def _require_kernel(self, frame: GuestFrame, insn: Decoded) -> None:
        if not self._kernel(frame):
            raise EmulatedFault(TRAP_GP, 0, why=f"{insn.mnemonic} needs CPL 0 (the guest "
                                                 f"kernel's ring 1), not ring {frame.ring}")

    # -- instructions --------------------------------------------------------------------
    def _execute(self, insn: Decoded, frame: GuestFrame, regs: dict[str, int], pv,
                 details: dict[str, Any]) -> dict[str, int]:
        I = cx
        hv = self.hv
        iid = insn.insn_id
        if iid in (I.X86_INS_IN, I.X86_INS_OUT):
            return self._in_out(insn, frame, regs, details)
        if iid in (I.X86_INS_INSB, I.X86_INS_INSW, I.X86_INS_INSD,
                   I.X86_INS_OUTSB, I.X86_INS_OUTSW, I.X86_INS_OUTSD):
            return self._string_io(insn, frame, regs, details)
        if iid in (I.X86_INS_CLI, I.X86_INS_STI):
            if not self.iopl_ok(frame):
                raise Unhandleable(f"the virtual IOPL {pv.iopl} does not allow {insn.mnemonic}")
            details["note"] = "no-op: Xen ignores cli/sti under IOPL (events use upcall_mask)"
            return {}
        if iid == I.X86_INS_RDTSC or iid == I.X86_INS_RDTSCP:
            if pv.cr4 & CR4_TSD and not self._kernel(frame):
                raise EmulatedFault(TRAP_GP, 0, why="CR4.TSD is set and the guest is in user mode")
            tsc = hv.time.tsc()
            details["tsc"] = tsc
            out = {"eax": tsc & 0xFFFFFFFF, "edx": tsc >> 32}
            if iid == I.X86_INS_RDTSCP:
                out["ecx"] = 0
            return out
        if iid == I.X86_INS_CPUID:
            leaf = hv.cpuid.leaf(regs["eax"], regs["ecx"])
            details["leaf"] = regs["eax"]
            return dict(zip(("eax", "ebx", "ecx", "edx"), leaf))
        if iid == I.X86_INS_MOV and insn.operands and insn.operands[0][0] == "reg":
            dst, src = insn.operands[0][1], insn.operands[1][1]
            if dst.startswith("cr") or src.startswith("cr") or dst.startswith("dr") or src.startswith("dr"):
                self._require_kernel(frame, insn)
                return self._mov_control(dst, src, regs, pv, details)
        if iid == I.X86_INS_CLTS:
            self._require_kernel(frame, insn)
            self._set_ts(pv, False)
            return {}
        if iid in (I.X86_INS_WBINVD, I.X86_INS_WBNOINVD):
            self._require_kernel(frame, insn)
            details["note"] = "ignored: this domain may not flush caches"
            return {}
        if iid == I.X86_INS_RDMSR:
            self._require_kernel(frame, insn)
            msr = regs["ecx"]
            value = self.read_msr(msr, frame)
            details.update(msr=msr, value=value)
            return {"eax": value & 0xFFFFFFFF, "edx": value >> 32}
        if iid == I.X86_INS_WRMSR:
            self._require_kernel(frame, insn)
            msr = regs["ecx"]
            value = regs["edx"] << 32 | regs["eax"]
            details.update(msr=msr, value=value)
            self.write_msr(msr, value, details)
            return {}
        if iid == I.X86_INS_XSETBV:
            self._require_kernel(frame, insn)
            raise EmulatedFault(TRAP_INVALID_OP, why="CR4.OSXSAVE is clear (XSAVE is not offered)")
        raise Unhandleable(f"Xen emulates no '{insn.mnemonic}' for PV guests")

    def _set_ts(self, pv, value: bool) -> None:
        cpu = self.hv.cpu
        pv.cr0_ts = value
        cr0 = cpu.read("cr0")
        cpu.write("cr0", cr0 | CR0_TS if value else cr0 & ~CR0_TS)

    def _mov_control(self, dst: str, src: str, regs: dict[str, int], pv,
                     details: dict[str, Any]) -> dict[str, int]:
        hv = self.hv
        if src.startswith("cr"):
            n = int(src[2:])
            details["cr"] = n
            value = self.read_cr(n, pv)
            details["value"] = value
            return {dst: value}
        if src.startswith("dr"):
            n = int(src[2:])
            details["dr"] = n
            try:
                value = hv.debugregs.get(hv.current, n)
            except DebugRegisterError as err:
                raise EmulatedFault(TRAP_INVALID_OP if err.undefined else TRAP_GP,
                                    None if err.undefined else 0, why=str(err)) from None
            details["value"] = value
            return {dst: value}
        value = regs[src]
        details["value"] = value
        if dst.startswith("cr"):
            n = int(dst[2:])
            details["cr"] = n
            self.write_cr(n, value, pv, details)
            return {}
        n = int(dst[2:])
        details["dr"] = n
        try:
            hv.debugregs.set(hv.current, n, value)
        except DebugRegisterError as err:
            raise EmulatedFault(TRAP_INVALID_OP if err.undefined else TRAP_GP,
                                None if err.undefined else 0, why=str(err)) from None
        return {}

    def read_cr(self, n: int, pv) -> int:
        hv = self.hv
        if n == 0:
            return (hv.cpu.read("cr0") & CR0_HOST_BITS_MASK) | (CR0_TS if pv.cr0_ts else 0)
        if n == 2:
            return pv.cr2
        if n == 3:
            mfn = hv.cr3 >> PAGE_SHIFT
            return (mfn << 12 | mfn >> 20) & 0xFFFFFFFF
        if n == 4:
            return pv.cr4
        raise EmulatedFault(TRAP_INVALID_OP, why=f"CR{n} does not exist")

    def write_cr(self, n: int, value: int, pv, details: dict[str, Any]) -> None:
        hv = self.hv
        if n == 0:
            if (value ^ hv.cpu.read("cr0")) & CR0_HOST_BITS_MASK:
                raise Unhandleable("only CR0.TS may change (attempt to change unmodifiable "
                                   "CR0 flags)")
            self._set_ts(pv, bool(value & CR0_TS))
            return
        if n == 2:
            pv.cr2 = value
            hv.memory.write_u32(hv.vcpu_info_maddr(hv.current.vcpu_id) + 8, value)
            return
        if n == 3:
            mfn = (value >> 12 | value << 20) & 0xFFFFFFFF
            details["mfn"] = mfn
            try:
                hv.mm.new_baseptr(hv.current.vcpu_id, mfn)
            except HypercallError as err:
                raise Unhandleable(f"new_guest_cr3(mfn {mfn:#x}) refused: {err.why}") from None
            hv.set_cr3(mfn << PAGE_SHIFT)
            return
        if n == 4:
            pv.cr4 = (value & CR4_GUEST_CONTROLLED) | CR4_GUEST_VISIBLE
            details["cr4"] = pv.cr4
            return
        raise EmulatedFault(TRAP_INVALID_OP, why=f"CR{n} does not exist")

    # -- MSRs ------------------------------------------------------------------------------
    def read_msr(self, msr: int, frame: GuestFrame) -> int:
        hv = self.hv
        pv = hv.traps.pv(hv.current)
        if msr == MSR_IA32_TSC:
            return hv.time.tsc()
        if msr == MSR_APIC_BASE:
            return APIC_DEFAULT_PHYS_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if hv.current.vcpu_id == 0 else 0)
        if msr == MSR_EFER:
            return GUEST_EFER
        if msr == MSR_IA32_CR_PAT:
            return XEN_MSR_PAT
        if msr == MSR_IA32_MISC_ENABLE:
            return guest_misc_enable(HOST_MISC_ENABLE)
        if msr in (MSR_IA32_PERF_CAPABILITIES, MSR_IA32_UCODE_REV, MSR_IA32_PLATFORM_ID):
            return 0
        if msr == MSR_INTEL_PLATFORM_INFO:
            return PLATFORM_INFO_CPUID_FAULTING
        if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
            return 1 if pv.cpuid_faulting else 0
        if msr == MSR_IA32_MCG_CAP:
            return GUEST_MCG_CAP
        if msr == MSR_IA32_MCG_STATUS or _mce_bank_msr(msr) or _vpmu_msr(msr):
            return 0
        why = f"MSR {msr:#x} is not readable by PV guests"
        if (pv.trap_ctxt[TRAP_GP].address == 0 and msr >> 16 != XEN_MSR_BASE >> 16
                and host_has_msr(msr)):
            return 0        # "faking RDMSR": no #GP handler yet, Xen returns 0
        raise EmulatedFault(TRAP_GP, 0, why=why)

    def write_msr(self, msr: int, value: int, details: dict[str, Any]) -> None:
        hv = self.hv
        pv = hv.traps.pv(hv.current)
        if msr == MSR_EFER:
            if value != GUEST_EFER:
                raise EmulatedFault(TRAP_GP, 0, why=f"EFER may only be written with its value {GUEST_EFER:#x}")
            return
        if msr == MSR_IA32_MISC_ENABLE:
            if value != guest_misc_enable(HOST_MISC_ENABLE):
                details["note"] = "ignored: MISC_ENABLE cannot change"
            return
        if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
            if value & ~1:
                raise EmulatedFault(TRAP_GP, 0, why="only CPUID faulting (bit 0) can be enabled")
            pv.cpuid_faulting = bool(value & 1)
            return
        if msr == XEN_MSR_BASE:
            self._write_hypercall_page(value, details)
            return
        if (_vpmu_msr(msr) or _mce_bank_msr(msr) or msr == MSR_IA32_MCG_STATUS
                or msr in (0xE7, 0xE8, 0x19A, 0x1B0)):
            details["note"] = "accepted and ignored"
            return
        raise EmulatedFault(TRAP_GP, 0, why=f"WRMSR {msr:#x} is not allowed for PV guests")

    def _write_hypercall_page(self, value: int, details: dict[str, Any]) -> None:
        """guest_wrmsr_xen: fill the frame `value >> 12` with the hypercall page."""
        hv = self.hv
        index, mfn = value & 0xFFF, value >> PAGE_SHIFT
        if index:
            raise EmulatedFault(TRAP_GP, 0, why=f"hypercall page index {index} is out of range")
        from .mm import PageType
        if not hv.vcpu_ops.owned_frame(mfn):
            raise EmulatedFault(TRAP_GP, 0, why=f"mfn {mfn:#x} is not a frame of this domain")
        try:
            hv.mm.get_page_and_type(mfn, PageType.writable, what="the hypercall page")
        except HypercallError as err:
            raise EmulatedFault(TRAP_GP, 0, why=err.why) from None
        hv.memory.write(mfn << PAGE_SHIFT, hypercall_page_32())
        hv.mm.put_page_and_type(mfn)
        hv.cpu.uc.ctl_flush_tb()
        details["note"] = f"hypercall page written to mfn {mfn:#x}"

    # -- port I/O --------------------------------------------------------------------------
    def _in_out(self, insn: Decoded, frame: GuestFrame, regs: dict[str, int],
                details: dict[str, Any]) -> dict[str, int]:
        is_in = insn.insn_id == cx.X86_INS_IN
        ops = insn.operands
        port_op = ops[1] if is_in else ops[0]
        data_op = ops[0] if is_in else ops[1]
        port = port_op[1] & 0xFF if port_op[0] == "imm" else regs["edx"] & 0xFFFF
        size = data_op[2]
        details.update(port=port, size=size)
        if not self.guest_io_okay(frame, port, size):
            raise Unhandleable(f"port {port:#x} is not allowed by the virtual IOPL or the "
                               "I/O bitmap")
        self._io_breakpoints(port, size)
        mask = (1 << (8 * size)) - 1
        if is_in:
            value = self.io_read(port, size)
            details["value"] = value
            return {"eax": (regs["eax"] & ~mask & 0xFFFFFFFF) | (value & mask)}
        value = regs["eax"] & mask
        details["value"] = value
        self.io_write(port, size, value)
        return {}

    def _string_io(self, insn: Decoded, frame: GuestFrame, regs: dict[str, int],
                   details: dict[str, Any]) -> dict[str, int]:
        is_in = insn.mnemonic.startswith("rep ins") or insn.mnemonic.startswith("ins")
        size = {"b": 1, "w": 2, "d": 4}[insn.mnemonic[-1]]
        port = regs["edx"] & 0xFFFF
        details.update(port=port, size=size)
        if not self.guest_io_okay(frame, port, size):
            raise Unhandleable(f"port {port:#x} is not allowed by the virtual IOPL or the "
                               "I/O bitmap")
        self._io_breakpoints(port, size)
        count = regs["ecx"] if insn.rep else 1
        step = -size if frame.eflags & (1 << 10) else size
        index = regs["edi"] if is_in else regs["esi"]
        guest = self.hv.guest
        done = 0
        try:
            while done < count:
                if is_in:
                    guest.write(index, self.io_read(port, size).to_bytes(size, "little"))
                else:
                    self.io_write(port, size, int.from_bytes(guest.read(index, size), "little"))
                index = (index + step) & 0xFFFFFFFF
                done += 1
        except GuestFault as fault:
            raise EmulatedFault(TRAP_PF, 2 if is_in else 0, cr2=fault.guest_va,
                                why="string I/O operand not mapped") from None
        details["count"] = done
        out = {"edi" if is_in else "esi": index}
        if insn.rep:
            out["ecx"] = (count - done) & 0xFFFFFFFF
        return out

    def _on_in(self, uc, port: int, size: int, _data) -> int:
        return self._port_access(port, size, None)

    def _on_out(self, uc, port: int, size: int, value: int, _data) -> None:
        self._port_access(port, size, value)

    def _port_access(self, port: int, size: int, value: int | None) -> int:
        """An in (`value` None; returns what the guest reads) or out reaching the CPU's
        port hook: Xen's guest_io_okay, then the emulated devices.  A refused access
        leaves the registers alone, stops the CPU after the instruction (exact with the
        instruction-count clock) and raises #GP at it on the way back to the guest."""
        hv = self.hv
        cpu = hv.cpu
        regs = cpu.frame_registers()
        frame = GuestFrame.from_regs(regs)
        mask = (1 << (8 * size)) - 1
        try:
            code = self.fetch(frame.eip)
            insn = self.decode(code)
        except GuestFault:
            insn = None
        text = insn.text if insn is not None else ("in" if value is None else "out")
        if not self.guest_io_okay(frame, port, size):
            pv = hv.traps.pv(hv.current)
            cpu.uncount_current()
            hv.traps.pend(TRAP_GP, frame, 0, f"{text}: port {port:#x} is not allowed by the "
                                              f"virtual IOPL {pv.iopl} or the I/O bitmap")
            cpu.stop()
            return regs["eax"] & mask
        details: dict[str, Any] = {"port": port, "size": size}
        if value is None:
            result = self.io_read(port, size)
            details["value"] = result
        else:
            result = 0
            details["value"] = value & mask
            self.io_write(port, size, value & mask)
        if insn is not None:
            self.emulated += 1
            self._record(frame, insn, details, "emulated")
        self._io_breakpoints(port, size)
        if hv.debugregs.pending_io_match:
            match, hv.debugregs.pending_io_match = hv.debugregs.pending_io_match, 0
            hv.traps.pend(TRAP_DEBUG, None, None, f"I/O breakpoint on port {port:#x}",
                          dr6_bits=match)
            cpu.stop()
        return result & mask

    def _io_breakpoints(self, port: int, size: int) -> None:
        match = self.hv.debugregs.io_breakpoint_match(self.hv.current, port, size)
        if match:
            self.hv.debugregs.pending_io_match = match

    def io_read(self, port: int, size: int) -> int:
        """guest_io_read for a domain with no physical I/O ports: PIT channel 2 and the
        RTC index are emulated, everything else reads as all ones."""
        value = 0
        for i in range(size):
            p = port + i
            if p == 0x61:
                byte = 0x20 if (self.hv.time.now_ns() // 838) & 1 else 0
            elif p in (0x42, 0x43):
                byte = self.pit_latch & 0xFF
            elif p == 0x70:
                byte = self.cmos_index & 0xFF
            else:
                byte = 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            p = port + i
            byte = value >> (8 * i) & 0xFF
            if p == 0x43:
                self.pit_mode = byte
            elif p == 0x42:
                self.pit_latch = byte
            elif p == 0x70:
                self.cmos_index = byte
