"""CPUID as a 32-bit PV guest sees it on Xen 4.17: the CPU's own leaves filtered by Xen's
PV policy, plus the hypervisor leaves at 0x40000000.

Reached two ways, both traced: the forced-emulation prefix ``ud2; .ascii "xen"; cpuid``
(a #UD Xen recognises and emulates from any ring, skipping all 7 bytes), and a plain
``cpuid``, which Xen intercepts through CPUID faulting on the hosts it supports.  With
the guest's own CPUID faulting enabled (MSR_INTEL_MISC_FEATURES_ENABLES) user mode gets
#GP instead.
ABI: xen/arch/x86/pv/emul-inv-op.c emulate_forced_invalid_op; xen/arch/x86/cpuid.c
guest_cpuid; xen/arch/x86/traps.c cpuid_hypervisor_leaves;
xen/include/public/arch-x86/cpufeatureset.h (PV = features marked A);
xen/include/public/arch-x86/cpuid.h; XEN-PV-ABI.md 5.7, 5.8.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, Uc
from unicorn import x86_const as X

from ..machine.memory import PAGE_SHIFT
from ..trace import TraceKind, TraceRecord
from .constants import XEN_VERSION_MAJOR, XEN_VERSION_MINOR
from .guestmem import GuestFault
from .time import TSC_KHZ, TSC_SHIFT, TSC_TO_SYSTEM_MUL
from .traps import EFLAGS_RF, TRAP_GP, TRAP_PF, GuestFrame

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

XEN_EMULATE_PREFIX = bytes.fromhex("0f0b78656e")
CPUID_INSN = bytes.fromhex("0fa2")
HV_BASE = 0x40000000
HV_LIMIT = 5
XEN_SIGNATURE = (0x566E6558, 0x65584D4D, 0x4D4D566E)      # "XenVMMXenVMM"
XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD = 1
TSC_MODE_ALWAYS_EMULATE = 1

# Leaf 1 features a PV guest may see (cpufeatureset.h 'A'); APIC, ACPI, MTRR, PGE, PSE,
# PSE36, VME, PSN, DS, TM, PBE and the VMX/SMX/EIST/monitor family are hidden.
PV_LEAF1_EDX = sum(1 << b for b in (0, 2, 4, 5, 6, 7, 8, 11, 14, 15, 16, 19, 23, 24, 25, 26,
                                   27, 28))
PV_LEAF1_ECX = sum(1 << b for b in (0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 30))
FEATURE_HYPERVISOR = 1 << 31
PV_LEAF7_EBX = sum(1 << b for b in (3, 8, 9, 18, 19, 23, 24, 29))
PV_EXT1_ECX = sum(1 << b for b in (0, 5, 8))
PV_EXT1_EDX = 1 << 20                       # NX; SYSCALL (Intel), LM, RDTSCP, 1GB hidden
PV_EXT7_EDX = 1 << 8                        # invariant TSC

_native_lock = threading.Lock()
_native: dict[tuple[int, int], tuple[int, int, int, int]] | None = None


def native_leaves() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """The emulated CPU's own CPUID (probed once from a scratch Unicorn)."""
    global _native
    with _native_lock:
        if _native is None:
            uc = Uc(UC_ARCH_X86, UC_MODE_32)
            uc.mem_map(0, 0x1000)
            uc.mem_write(0, CPUID_INSN)
            out = {}

            def query(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
                uc.reg_write(X.UC_X86_REG_EAX, leaf)
                uc.reg_write(X.UC_X86_REG_ECX, sub)
                uc.emu_start(0, 2)
                return tuple(uc.reg_read(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX,
                                                     X.UC_X86_REG_ECX, X.UC_X86_REG_EDX))
            max_basic = query(0)[0]
            for leaf in range(0, min(max_basic, 0xD) + 1):
                for sub in range(4 if leaf in (4, 7, 0xB, 0xD) else 1):
                    out[(leaf, sub)] = query(leaf, sub)
            max_ext = query(0x80000000)[0]
            for leaf in range(0x80000000, min(max_ext, 0x80000008) + 1):
                out[(leaf, 0)] = query(leaf)
            _native = out
        return _native


class CpuidPolicy:
    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.native = native_leaves()
        self.max_basic = min(self.native[(0, 0)][0], 0xD)
        self.max_ext = min(self.native[(0x80000000, 0)][0], 0x80000008)
        self.emulated = 0
        self.pending_gp: GuestFrame | None = None
        hv.cpu.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)

    # -- the policy ---------------------------------------------------------------------
    def leaf(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """guest_cpuid for a 32-bit PV vcpu."""
        leaf &= 0xFFFFFFFF
        if HV_BASE <= leaf < HV_BASE + 0x200:
            return self._hypervisor_leaf(leaf - HV_BASE, subleaf)
        if leaf >= 0x80000000:
            if leaf > self.max_ext:
                return self._basic(self.max_basic, subleaf)
            return self._extended(leaf, subleaf)
        if leaf > self.max_basic:
            return self._basic(self.max_basic, subleaf)
        return self._basic(leaf, subleaf)

    def _get(self, leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        return self.native.get((leaf, sub), self.native.get((leaf, 0), (0, 0, 0, 0)))

    def _basic(self, leaf: int, sub: int) -> tuple[int, int, int, int]:
        a, b, c, d = self._get(leaf, sub)
        if leaf == 0:
            return self.max_basic, b, c, d
        if leaf == 1:
            pv = self.hv.traps.pv(self.hv.current)
            c = (c & PV_LEAF1_ECX) | FEATURE_HYPERVISOR
            if pv.cr4 & (1 << 18):                         # OSXSAVE mirrors CR4
                c |= 1 << 27
            return a & 0x0FFF0FFF, b & 0x00FFFFFF, c, d & PV_LEAF1_EDX
        if leaf in (2, 4):
            return a, b, c, d
        if leaf == 7:
            if sub != 0:
                return 0, 0, 0, 0
            return 0, b & PV_LEAF7_EBX, 0, 0
        return 0, 0, 0, 0           # 3 PSN, 5 MONITOR, 6 power, 8-0xa, 0xb topology, 0xd XSAVE

    def _extended(self, leaf: int, sub: int) -> tuple[int, int, int, int]:
        a, b, c, d = self._get(leaf, sub)
        if leaf == 0x80000000:
            return self.max_ext, b, c, d
        if leaf == 0x80000001:
            return 0, 0, c & PV_EXT1_ECX, d & PV_EXT1_EDX
        if leaf in (0x80000002, 0x80000003, 0x80000004, 0x80000006):
            return a, b, c, d
        if leaf == 0x80000007:
            return 0, 0, 0, d & PV_EXT7_EDX
        if leaf == 0x80000008:
            return a & 0xFFFF, 0, 0, 0
        return 0, 0, 0, 0

    def _hypervisor_leaf(self, idx: int, sub: int) -> tuple[int, int, int, int]:
        """cpuid_hypervisor_leaves (no Viridian: Xen's leaves start at 0x40000000)."""
        if idx == 0:
            return (HV_BASE + HV_LIMIT,) + XEN_SIGNATURE
        if idx == 1:
            return XEN_VERSION_MAJOR << 16 | XEN_VERSION_MINOR, 0, 0, 0
        if idx == 2:
            return 1, HV_BASE, XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD, 0
        if idx == 3:
            if sub == 0:
                return 1, TSC_MODE_ALWAYS_EMULATE, TSC_KHZ, 0
            if sub == 1:
                return 0, 0, TSC_TO_SYSTEM_MUL, TSC_SHIFT
            if sub == 2:
                return TSC_KHZ, 0, 0, 0
            return 0, 0, 0, 0
        if idx == 5 and sub == 0:
            top = self.hv.memory.nr_frames - 1
            return 0, top.bit_length() + PAGE_SHIFT, 0, 0
        return 0, 0, 0, 0           # 4 is HVM-only; beyond the limit reads as zeros

    # -- the two ways in ------------------------------------------------------------------
    def forced_emulation(self, frame: GuestFrame) -> bool:
        """#UD at `frame`: is it Xen's forced-emulation prefix before cpuid?  Emulate and
        return True; False leaves the #UD to the guest."""
        hv = self.hv
        try:
            sig = hv.guest.read(frame.eip, len(XEN_EMULATE_PREFIX))
        except GuestFault as fault:
            hv.traps.inject(TRAP_PF, frame, error_code=0, cr2=fault.guest_va,
                            detail="reading the forced-emulation signature")
            return True
        if sig != XEN_EMULATE_PREFIX:
            return False
        at = (frame.eip + len(XEN_EMULATE_PREFIX)) & 0xFFFFFFFF
        try:
            insn = hv.guest.read(at, 2)
        except GuestFault as fault:
            hv.traps.inject(TRAP_PF, frame, error_code=0, cr2=fault.guest_va,
                            detail="reading the instruction after the forced-emulation prefix")
            return True
        if insn != CPUID_INSN:
            return False
        pv = hv.traps.pv(hv.current)
        if pv.cpuid_faulting and frame.ring != 1:
            hv.traps.inject(TRAP_GP, frame.replace(eip=at), error_code=0,
                            detail="CPUID faulting is enabled for user mode")
            return True
        regs = hv.cpu.read_many(("eax", "ecx"))
        values = self.leaf(regs["eax"], regs["ecx"])
        self._apply(frame, regs, values, "forced emulation (ud2; \"xen\"; cpuid)",
                    XEN_EMULATE_PREFIX + CPUID_INSN)
        hv.traps.exit_to_guest(frame.replace(eip=(at + 2) & 0xFFFFFFFF,
                                             eflags=frame.eflags & ~EFLAGS_RF),
                               dict(zip(("eax", "ebx", "ecx", "edx"), values)))
        return True

    def _on_cpuid(self, uc, _data) -> int:
        """A native cpuid (CPUID faulting on the host): Xen's filtered values."""
        hv = self.hv
        regs = hv.cpu.frame_registers()
        frame = GuestFrame.from_regs(regs)
        pv = hv.traps.pv(hv.current)
        ecx = hv.cpu.read("ecx")
        values = self.leaf(regs["eax"], ecx)
        self._apply(frame, {"eax": regs["eax"], "ecx": ecx}, values, "cpuid (faulting)",
                    CPUID_INSN)
        if pv.cpuid_faulting and frame.ring != 1:
            # The guest enabled CPUID faulting.  Unicorn completes the instruction once
            # this hook returns (an EIP written here is ignored), so registers are left
            # alone and the #GP is raised at the cpuid before the next instruction runs.
            self.pending_gp = frame
            hv.cpu.stop()
            return 1
        hv.cpu.write_many(dict(zip(("eax", "ebx", "ecx", "edx"), values)))
        return 1

    def deliver_pending_fault(self) -> None:
        """At the next boundary: the #GP a faulting user-mode cpuid owes the guest."""
        frame, self.pending_gp = self.pending_gp, None
        if frame is not None:
            self.hv.traps.inject(TRAP_GP, frame, error_code=0,
                                 detail="cpuid in user mode with CPUID faulting enabled")

    def _apply(self, frame: GuestFrame, regs: dict[str, int], values, how: str,
               raw: bytes) -> None:
        hv = self.hv
        self.emulated += 1
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.emulation, icount=hv.cpu.icount,
            vcpu=hv.current.vcpu_id, eip=frame.eip, name="cpuid",
            args={"vector": 6 if len(raw) > 2 else TRAP_GP, "bytes": raw.hex(), "insn": "cpuid",
                  "leaf": regs["eax"], "subleaf": regs["ecx"], "ring": frame.ring,
                  "result": [f"{v:#010x}" for v in values]},
            symbol=hv.symbolize(frame.eip), detail=how, parent=hv.current_hypercall_seq))
