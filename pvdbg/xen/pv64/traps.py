"""Exceptions, bounce frames, kernel/user mode and the iret hypercall for 64-bit PV.

A 64-bit PV vcpu runs kernel and user at CPL 3; Xen tracks which one it is in
(TF_kernel_mode) and toggles on every crossing: the active pagetable switches between the
kernel's (NEW_BASEPTR) and the user's (NEW_USER_BASEPTR) and the GS bases swap (as
``swapgs``).  Exceptions, events and user-mode ``syscall`` reach the guest kernel through
a bounce frame (RCX, R11, [error code], RIP, CS with the saved upcall mask in bits 39:32,
RFLAGS with IF = !mask, RSP, SS) written below the 16-byte aligned kernel stack.
Privileged instructions at CPL 3 raise #GP and are emulated here (MSRs, control
registers, TSC, I/O ports with the virtual IOPL, hlt), as Xen's emul-priv-op does.
ABI: xen/arch/x86/x86_64/entry.S (create_bounce_frame, lstar_enter), xen/arch/x86/pv/
iret.c (do_iret), xen/arch/x86/pv/domain.c (toggle_guest_mode), xen/arch/x86/pv/
emul-priv-op.c, xen/include/public/arch-x86/xen-x86_64.h.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from ...machine.cpu import CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, CR4_TSD
from ...machine.cpu64 import MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE
from ...machine.memory import PAGE_SHIFT
from ...trace import TraceKind, TraceRecord
from ..abi64 import (BounceFrame64, BounceFrameErrorCode64, IretContext64, VcpuInfo64,
                     bounce_frame_va)
from ..cpuid import CPUID_INSN, XEN_EMULATE_PREFIX, PvCpuidPolicy
from ..guestmem import GuestFault
from .layout import FLAT_KERNEL_CS64, FLAT_KERNEL_SS64

if TYPE_CHECKING:
    from .hypervisor import Hypervisor64, Vcpu64

TRAP_DE, TRAP_DB, TRAP_BP, TRAP_UD, TRAP_NM, TRAP_GP, TRAP_PF = 0, 1, 3, 6, 7, 13, 14
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})
TI_MASK_EVENTS = 4                   # trap_info.flags bit 2
VMASST_ARCHITECTURAL_IOPL = 4
RDTSC_TRAP_NS = 1000
CALLBACKF_MASK_EVENTS = 1
EFLAGS_IF, EFLAGS_TF, EFLAGS_IOPL, EFLAGS_NT, EFLAGS_RF, EFLAGS_VM, EFLAGS_AC = (
    1 << 9, 1 << 8, 3 << 12, 1 << 14, 1 << 16, 1 << 17, 1 << 18)
_CLEAR_ON_BOUNCE = EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM | EFLAGS_AC
_VCPU_INFO_MASK = VcpuInfo64.offset_of("evtchn_upcall_mask")
_VCPU_INFO_CR2 = VcpuInfo64.offset_of("cr2")
MSR_EFER = 0xC0000080
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_MISC_ENABLE = 0x1A0
MSR_PLATFORM_INFO = 0xCE
MSR_IA32_UCODE_REV = 0x8B            # MSR_AMD_PATCHLEVEL: reads 0, writes discarded
GUEST_EFER = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11)      # SCE, LME, LMA, NXE
VISIBLE_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT


@dataclass
class TrapEntry:
    vector: int
    flags: int
    cs: int
    address: int


@dataclass
class PvState64:
    """Per-vcpu PV state (struct pv_vcpu for a 64-bit guest)."""
    trap_table: dict[int, TrapEntry] = field(default_factory=dict)
    event_callback: int = 0
    event_mask: bool = True
    failsafe_callback: int = 0
    failsafe_mask: bool = True
    syscall_callback: int = 0
    syscall_mask: bool = False
    nmi_callback: int = 0
    kernel_mode: bool = True
    kernel_ss: int = FLAT_KERNEL_SS64
    kernel_sp: int = 0
    gs_base_kernel: int = 0
    gs_base_user: int = 0
    fs_base: int = 0
    kernel_table_mfn: int = 0          # guest_table (NEW_BASEPTR)
    user_table_mfn: int = 0            # guest_table_user (NEW_USER_BASEPTR), 0 = none
    iopl: int = 0                      # virtual IOPL (0..3)
    iobmp_va: int = 0                  # PHYSDEVOP_set_iobitmap
    iobmp_limit: int = 0
    cr4: int = VISIBLE_CR4
    fpu_ts: bool = False


class GuestCrash(Exception):
    """The guest cannot be entered any more (Xen would domain_crash)."""


class Traps64:
    def __init__(self, hv: "Hypervisor64") -> None:
        self.hv = hv
        self.cpuid = PvCpuidPolicy(64)
        self._cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self.emulated = 0

    def pv(self, vcpu: "Vcpu64") -> PvState64:
        return vcpu.pv

    # -- upcall mask ------------------------------------------------------------------
    def upcall_mask(self, vcpu: "Vcpu64") -> int:
        return self.hv.memory.view[self.hv.vcpu_info_maddr(vcpu.vcpu_id) + _VCPU_INFO_MASK]

    def set_upcall_mask(self, vcpu: "Vcpu64", value: int) -> None:
        self.hv.memory.view[self.hv.vcpu_info_maddr(vcpu.vcpu_id) + _VCPU_INFO_MASK] = value & 1

    # -- kernel/user mode ---------------------------------------------------------------
    def toggle_guest_mode(self, vcpu: "Vcpu64") -> None:
        """Switch between kernel and user mode: pagetable and GS bases (swapgs)."""
        pv = vcpu.pv
        cpu = self.hv.cpu
        active = cpu.read("gs_base")
        if pv.kernel_mode:
            pv.gs_base_kernel = active
            cpu.write("gs_base", pv.gs_base_user)
        else:
            pv.gs_base_user = active
            cpu.write("gs_base", pv.gs_base_kernel)
        pv.kernel_mode = not pv.kernel_mode
        self.hv.load_pagetable(vcpu)

    # -- delivery ------------------------------------------------------------------------
    def bounce(self, vcpu: "Vcpu64", handler: int, *, error_code: int | None = None,
               mask_events: bool, regs: dict[str, int] | None = None,
               rip: int | None = None) -> int:
        """Write a bounce frame and resume the guest kernel at `handler`; returns the
        frame's guest VA.  `rip` overrides the interrupted RIP (syscall: after it)."""
        hv = self.hv
        cpu = hv.cpu
        pv = vcpu.pv
        if regs is None:
            regs = cpu.read_many(("rcx", "r11", "rip", "rflags", "rsp", "cs", "ss"))
            regs["rip"] = cpu.resume_rip()
        from_user = not pv.kernel_mode
        if handler == 0:
            raise GuestCrash("no guest handler registered")
        if from_user:
            self.toggle_guest_mode(vcpu)
            stack_top = pv.kernel_sp
        else:
            stack_top = regs["rsp"]
        saved_mask = self.upcall_mask(vcpu)
        rflags = regs["rflags"] & ~EFLAGS_IOPL | (pv.iopl << 12)
        rflags = rflags | EFLAGS_IF if not saved_mask else rflags & ~EFLAGS_IF
        cs = regs["cs"] & ~3 if not from_user else regs["cs"] | 3
        fields = dict(rcx=regs["rcx"], r11=regs["r11"], rip=regs["rip"] if rip is None else rip,
                      cs=cs & 0xFFFF, saved_upcall_mask=saved_mask, rflags=rflags,
                      rsp=regs["rsp"], ss=regs["ss"] & 0xFFFF | (0 if from_user else 0))
        if error_code is None:
            frame_cls, frame = BounceFrame64, BounceFrame64(**fields)
        else:
            frame_cls, frame = BounceFrameErrorCode64, BounceFrameErrorCode64(
                error_code=error_code, **fields)
        frame_va = bounce_frame_va(stack_top, frame_cls)
        try:
            hv.guest.write(frame_va, frame.to_bytes())
        except GuestFault as fault:
            raise GuestCrash(f"cannot write the bounce frame at {frame_va:#x}: "
                             f"{fault.reason}") from None
        if mask_events:
            self.set_upcall_mask(vcpu, 1)
        cpu.write_many({"rsp": frame_va, "rflags": (regs["rflags"] & ~_CLEAR_ON_BOUNCE)
                        | EFLAGS_IF, "ss": FLAT_KERNEL_SS64})
        if cpu.read("cs") != FLAT_KERNEL_CS64:
            cpu.write("cs", FLAT_KERNEL_CS64)
        cpu.set_rip(handler)
        return frame_va

    def inject(self, vector: int, *, error_code: int | None = None, cr2: int | None = None,
               detail: str = "") -> None:
        """Deliver exception `vector` to the guest's handler from its trap table."""
        hv = self.hv
        vcpu = hv.current
        entry = vcpu.pv.trap_table.get(vector)
        rip = hv.cpu.read("rip")
        if entry is None or entry.address == 0:
            raise GuestCrash(f"{_name(vector)} at {rip:#x} with no handler in the trap table"
                             + (f" ({detail})" if detail else ""))
        if cr2 is not None:
            hv.memory.write_u64(hv.vcpu_info_maddr(vcpu.vcpu_id) + _VCPU_INFO_CR2, cr2)
            hv.cpu.write("cr2", cr2)
        if vector in ERROR_CODE_VECTORS and error_code is None:
            error_code = 0
        frame = self.bounce(vcpu, entry.address, error_code=error_code,
                            mask_events=bool(entry.flags & TI_MASK_EVENTS))
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.trap, icount=hv.cpu.icount,
            vcpu=vcpu.vcpu_id, eip=rip, name=_name(vector),
            args={"vector": vector, "error_code": error_code, "handler": entry.address,
                  "frame": frame, **({"cr2": cr2} if cr2 is not None else {})},
            symbol=hv.symbolize(rip), detail=detail, parent=hv.current_hypercall_seq))

    # -- exceptions ------------------------------------------------------------------------
    def exception(self, vector: int) -> None:
        hv = self.hv
        try:
            if vector == TRAP_GP:
                code = hv.cpu.exception_error_code()
                if code == 0 and self.emulate_privileged():
                    return
                self.inject(TRAP_GP, error_code=code)
            elif vector == TRAP_PF:
                code = hv.cpu.exception_error_code()
                cr2 = hv.cpu.read("cr2")
                if hv.fixup_page_fault(cr2, code):
                    return
                self.inject(TRAP_PF, error_code=code | 4, cr2=cr2)
            elif vector == TRAP_UD:
                if self.forced_cpuid():
                    return
                self.inject(TRAP_UD)
            elif vector == TRAP_NM and hv.current.pv.fpu_ts:
                hv.current.pv.fpu_ts = False
                hv.cpu.write("cr0", hv.cpu.read("cr0") & ~CR0_TS)
                self.inject(TRAP_NM)
            elif vector >= 32 or vector in (TRAP_BP, 4):
                self.software_interrupt(vector)
            else:
                self.inject(vector, error_code=hv.cpu.exception_error_code()
                            if vector in ERROR_CODE_VECTORS else None)
        except GuestCrash as crash:
            hv.crash_domain(str(crash), vector=vector)

    def software_interrupt(self, vector: int) -> None:
        """``int N`` (RIP already past it): allowed if the trap table entry's DPL is 3."""
        hv = self.hv
        entry = hv.current.pv.trap_table.get(vector)
        if entry is None or entry.address == 0 or (entry.flags & 3) != 3:
            length = 1 if vector in (TRAP_BP, 4) else 2
            rip = hv.cpu.read("rip") - length
            hv.cpu.write("rip", rip)
            self.inject(TRAP_GP, error_code=(vector << 3) | 2,
                        detail=f"int {vector:#x} not allowed from the guest")
            return
        self.inject(vector)

    def forced_cpuid(self) -> bool:
        hv = self.hv
        rip = hv.cpu.read("rip")
        try:
            code = hv.guest.read(rip, len(XEN_EMULATE_PREFIX) + 2)
        except GuestFault:
            return False
        if code != XEN_EMULATE_PREFIX + CPUID_INSN:
            return False
        self._cpuid(rip, rip + len(code), "forced emulation (ud2; \"xen\"; cpuid)")
        return True

    def native_cpuid(self) -> None:
        """The cpuid instruction hook (CPUID faulting: Xen's policy, never the host's)."""
        rip = self.hv.cpu.read("rip")
        regs = self.hv.cpu.read_many(("rax", "rcx"))
        self.hv.cpu.write_many(self._cpuid_values(regs))
        self._cpuid_record(rip, regs, "cpuid (faulting)")

    def _cpuid_values(self, regs: dict[str, int]) -> dict[str, int]:
        pv = self.hv.current.pv
        return self.cpuid.registers_after(regs, cr4=pv.cr4,
                                          max_mfn=self.hv.memory.nr_frames - 1)

    def _cpuid(self, rip: int, next_rip: int, how: str) -> None:
        regs = self.hv.cpu.read_many(("rax", "rcx"))
        out = self._cpuid_values(regs)
        out["rip"] = next_rip
        self.hv.cpu.write_many(out)
        self._cpuid_record(rip, regs, how)

    def _cpuid_record(self, rip: int, regs: dict[str, int], how: str) -> None:
        hv = self.hv
        self.emulated += 1
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.emulation, icount=hv.cpu.icount,
            vcpu=hv.current.vcpu_id, eip=rip, name="cpuid",
            args={"leaf": regs["rax"] & 0xFFFFFFFF, "subleaf": regs["rcx"] & 0xFFFFFFFF},
            symbol=hv.symbolize(rip), detail=how, parent=hv.current_hypercall_seq))

    # -- privileged instructions --------------------------------------------------------
    def emulate_privileged(self) -> bool:
        """#GP(0) at CPL 3: emulate what Xen's emul-priv-op would; False if not ours."""
        hv = self.hv
        cpu = hv.cpu
        rip = cpu.read("rip")
        first = min(15, 4096 - (rip & 0xFFF))      # the next page may be unmapped
        try:
            code = hv.guest.read(rip, first)
        except GuestFault:
            return False
        if code[:2] == b"\x0f\x31":                # rdtsc: the hot case (delay loops)
            tsc = self._trapped_tsc()
            cpu.write_many({"rax": tsc & 0xFFFFFFFF, "rdx": tsc >> 32, "rip": rip + 2})
            self._emulated_record(rip, "rdtsc", "", b"\x0f\x31")
            return True
        if first < 15:
            try:
                code += hv.guest.read(rip + first, 15 - first)
            except GuestFault:
                pass
        insn = next(self._cs.disasm(code, rip, 1), None)
        if insn is None:
            return False
        mnem, ops = insn.mnemonic, insn.op_str
        next_rip = rip + insn.size
        out: dict[str, int] = {}
        if mnem == "rdtsc":
            tsc = self._trapped_tsc()
            out = {"rax": tsc & 0xFFFFFFFF, "rdx": tsc >> 32}
        elif mnem == "rdtscp":
            tsc = self._trapped_tsc()
            out = {"rax": tsc & 0xFFFFFFFF, "rdx": tsc >> 32, "rcx": hv.current.vcpu_id}
        elif mnem == "rdmsr":
            value = self._read_msr(cpu.read("rcx") & 0xFFFFFFFF)
            if value is None:
                return False
            out = {"rax": value & 0xFFFFFFFF, "rdx": value >> 32}
        elif mnem == "wrmsr":
            regs = cpu.read_many(("rcx", "rax", "rdx"))
            value = (regs["rdx"] & 0xFFFFFFFF) << 32 | regs["rax"] & 0xFFFFFFFF
            if not self._write_msr(regs["rcx"] & 0xFFFFFFFF, value):
                return False
        elif mnem == "mov" and "cr" in ops:
            if not self._mov_cr(ops, out):
                return False
        elif mnem in ("cli", "sti"):
            if not self.iopl_ok():
                return False                # Xen ignores them: the upcall mask is the guest's
        elif mnem == "hlt":
            hv.block_vcpu(hv.current)
        elif mnem in ("wbinvd", "invd"):
            pass
        elif mnem in ("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"):
            if not self.iopl_ok():
                return False
            if mnem == "in":
                width = {"al": 1, "ax": 2, "eax": 4}[ops.split(",")[0].strip()]
                out = {"rax": (cpu.read("rax") & ~((1 << (8 * width)) - 1)) | ((1 << (8 * width)) - 1)}
            elif mnem != "out":
                return False
        else:
            return False
        out["rip"] = next_rip
        cpu.write_many(out)
        self._emulated_record(rip, mnem, ops, bytes(insn.bytes))
        return True

    def _emulated_record(self, rip: int, mnem: str, ops: str, raw: bytes) -> None:
        hv = self.hv
        self.emulated += 1
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.emulation, icount=hv.cpu.icount,
            vcpu=hv.current.vcpu_id, eip=rip, name=mnem,
            args={"insn": f"{mnem} {ops}".strip(), "bytes": raw.hex()},
            symbol=hv.symbolize(rip), detail="emul-priv-op", parent=hv.current_hypercall_seq))

    def _trapped_tsc(self) -> int:
        """The TSC an emulated rdtsc returns.  On the icount clock the trap itself costs
        the guest RDTSC_TRAP_NS of system time (the order of an emulated-TSC trap on
        Xen): one instruction is otherwise one nanosecond, and a delay loop polling the
        TSC would need a trap per 20 cycles."""
        tk = self.hv.time
        if tk.mode != "host" and self.hv.cpu.icount is not None:
            tk.advance_idle(tk.now_ns() + RDTSC_TRAP_NS)
        return tk.tsc()

    def iopl_ok(self) -> bool:
        """Xen's iopl_ok: the virtual IOPL against CPL 1 in kernel mode (0 with the
        architectural_iopl assist), CPL 3 in user mode."""
        pv = self.hv.current.pv
        if pv.kernel_mode:
            cpl = 0 if self.hv.domain.vm_assist >> VMASST_ARCHITECTURAL_IOPL & 1 else 1
        else:
            cpl = 3
        return cpl <= pv.iopl

    def _read_msr(self, msr: int) -> int | None:
        hv = self.hv
        pv = hv.current.pv
        cpu = hv.cpu
        if msr == MSR_FS_BASE:
            return cpu.read("fs_base")
        if msr == MSR_GS_BASE:
            return cpu.read("gs_base")
        if msr == MSR_KERNEL_GS_BASE:
            return pv.gs_base_user if pv.kernel_mode else pv.gs_base_kernel
        if msr == MSR_EFER:
            return GUEST_EFER
        if msr in (MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK):
            return 0
        if msr == MSR_MISC_ENABLE:
            return (1 << 0) | (1 << 11) | (1 << 12)   # fast strings, no BTS, no PEBS
        if msr in (MSR_PLATFORM_INFO, MSR_IA32_UCODE_REV):
            return 0
        return None

    def _write_msr(self, msr: int, value: int) -> bool:
        hv = self.hv
        pv = hv.current.pv
        cpu = hv.cpu
        if msr == MSR_FS_BASE:
            cpu.write("fs_base", value)
        elif msr == MSR_GS_BASE:
            cpu.write("gs_base", value)
        elif msr == MSR_KERNEL_GS_BASE:
            if pv.kernel_mode:
                pv.gs_base_user = value
            else:
                pv.gs_base_kernel = value
        elif msr in (MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_EFER,
                     MSR_IA32_UCODE_REV):
            pass                                    # Xen ignores these for PV guests
        else:
            return False
        return True

    def _mov_cr(self, ops: str, out: dict[str, int]) -> bool:
        hv = self.hv
        pv = hv.current.pv
        dst, src = (x.strip() for x in ops.split(","))
        if dst.startswith("cr"):
            value = hv.cpu.read(src)
            if dst == "cr0":
                pv.fpu_ts = bool(value & CR0_TS)
                cr0 = hv.cpu.read("cr0")
                hv.cpu.write("cr0", (cr0 | CR0_TS) if pv.fpu_ts else (cr0 & ~CR0_TS))
            elif dst == "cr3":
                try:
                    hv.new_baseptr(hv.current, value >> PAGE_SHIFT)
                except Exception:
                    return False
            elif dst == "cr4":
                pv.cr4 = (value & VISIBLE_CR4) | (pv.cr4 & CR4_TSD)
            else:
                return False
            return True
        if src.startswith("cr"):
            if src == "cr0":
                value = hv.cpu.read("cr0")
            elif src == "cr2":
                value = hv.memory.read_u64(hv.vcpu_info_maddr(hv.current.vcpu_id) + _VCPU_INFO_CR2)
            elif src == "cr3":
                value = pv.kernel_table_mfn << PAGE_SHIFT if pv.kernel_mode else \
                    pv.user_table_mfn << PAGE_SHIFT
            elif src == "cr4":
                value = pv.cr4
            else:
                return False
            out[dst] = value
            return True
        return False

    # -- the iret hypercall -------------------------------------------------------------
    def do_iret(self) -> int:
        """HYPERVISOR_iret: resume from the iret_context at RSP; returns the RAX to load."""
        hv = self.hv
        cpu = hv.cpu
        vcpu = hv.current
        rsp = cpu.read("rsp")
        try:
            ctx = IretContext64.from_bytes(hv.guest.read(rsp, IretContext64.SIZE))
        except GuestFault as fault:
            raise GuestCrash(f"iret: cannot read the iret context at {rsp:#x}: "
                             f"{fault.reason}") from None
        if ctx.cs & 3 == 3 and vcpu.pv.kernel_mode:
            if not vcpu.pv.user_table_mfn:
                raise GuestCrash("iret to user mode with no user pagetable")
            self.toggle_guest_mode(vcpu)
        out = {"rsp": ctx.rsp,
               "rflags": (ctx.rflags & ~(EFLAGS_IOPL | EFLAGS_VM)) | EFLAGS_IF}
        if ctx.flags & IretContext64.VGCF_IN_SYSCALL:
            out["rcx"], out["r11"] = ctx.rip, out["rflags"]
        else:
            out["rcx"], out["r11"] = ctx.rcx, ctx.r11
        cpu.write_many(out)
        cs, ss = (ctx.cs | 3) & 0xFFFF, (ctx.ss | 3) & 0xFFFF
        if cpu.read("cs") != cs:
            cpu.write("cs", cs)
        if cpu.read("ss") != ss:
            cpu.write("ss", ss)
        cpu.set_rip(ctx.rip)
        self.set_upcall_mask(vcpu, 0 if ctx.rflags & EFLAGS_IF else 1)
        return ctx.rax

    # -- syscall from user mode -----------------------------------------------------------
    def user_syscall(self) -> None:
        """``syscall`` in guest user mode: enter the kernel's syscall callback."""
        hv = self.hv
        vcpu = hv.current
        cpu = hv.cpu
        regs = cpu.read_many(("rcx", "r11", "rip", "rflags", "rsp", "cs", "ss"))
        ret = cpu.syscall_return_rip()
        regs["rcx"], regs["r11"] = ret, regs["rflags"]
        try:
            self.bounce(vcpu, vcpu.pv.syscall_callback, mask_events=vcpu.pv.syscall_mask,
                        regs=regs, rip=ret)
        except GuestCrash as crash:
            hv.crash_domain(f"syscall from user mode: {crash}")
        cpu.write_many({"rcx": ret, "r11": regs["rflags"]})


def _name(vector: int) -> str:
    from ..hypervisor import trap_name
    return trap_name(vector)
