"""CPUID as a PV guest (32-bit PAE or 64-bit) sees it on Xen 4.17: the CPU's own leaves
filtered by Xen's PV policy, plus the hypervisor leaves at 0x40000000.

Two layers.  `PvCpuidPolicy` is the policy alone (pure: leaf, subleaf and the vcpu's
CR4 in, four registers out), built once per guest ABI from `PV_FEATURE_BITS`, a table
naming each feature bit's fate and its source.  `CpuidPolicy` wires it into the 32-bit
engine's CPU: the forced-emulation prefix ``ud2; .ascii "xen"; cpuid`` (a #UD Xen
recognises and emulates from any ring, skipping all 7 bytes) and a plain ``cpuid``, which
Xen intercepts through CPUID faulting on the hosts that have it (all current ones), so both
paths give the filtered view.  With the guest's own CPUID faulting enabled
(MSR_INTEL_MISC_FEATURES_ENABLES) user mode gets #GP instead.  The 64-bit engine uses
`PvCpuidPolicy(64)`, `forced_cpuid_at` and `cpuid_result_registers`.
ABI: xen/arch/x86/pv/emul-inv-op.c emulate_forced_invalid_op; xen/arch/x86/cpuid.c
guest_cpuid, recalculate_cpuid_policy (32-bit PV: no LM, no SYSCALL on Intel),
recalculate_misc; xen/arch/x86/traps.c cpuid_hypervisor_leaves;
xen/include/public/arch-x86/cpufeatureset.h (PV = features marked A);
xen/include/public/arch-x86/cpuid.h; XEN-PV-ABI.md 5.7, 5.8.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
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

__all__ = [
    "XEN_EMULATE_PREFIX", "CPUID_INSN", "FORCED_CPUID", "HV_BASE", "HV_LIMIT", "XEN_SIGNATURE",
    "FeatureBit", "PV_FEATURE_BITS", "BadCpuidAbi", "PvCpuidPolicy", "native_leaves",
    "forced_cpuid_at", "cpuid_result_registers", "CpuidPolicy",
]

XEN_EMULATE_PREFIX = bytes.fromhex("0f0b78656e")
CPUID_INSN = bytes.fromhex("0fa2")
FORCED_CPUID = XEN_EMULATE_PREFIX + CPUID_INSN            # 7 bytes, skipped as one
HV_BASE = 0x40000000
HV_LIMIT = 5                                              # XEN_CPUID_MAX_NUM_LEAVES (4.17)
HV_RANGE_END = 0x40000200                                 # Xen answers 0x40000000-0x400001ff
XEN_SIGNATURE = (0x566E6558, 0x65584D4D, 0x4D4D566E)      # "XenVMMXenVMM"
XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD = 1
TSC_MODE_ALWAYS_EMULATE = 1
CR4_OSXSAVE = 1 << 18
MAX_BASIC_LEAF = 0xD            # the basic leaves this policy knows (XSTATE is the last)
MAX_EXTENDED_LEAF = 0x80000008  # CPUID_GUEST_NR_EXTD_INTEL - 1
GUEST_BITS = (32, 64)

# (leaf, subleaf, register) of each feature word, as in cpufeatureset.h.
EDX1 = (1, 0, "edx")
ECX1 = (1, 0, "ecx")
EBX7 = (7, 0, "ebx")
ECX7 = (7, 0, "ecx")
EDX7 = (7, 0, "edx")
EDX_E1 = (0x80000001, 0, "edx")
ECX_E1 = (0x80000001, 0, "ecx")
EDX_E7 = (0x80000007, 0, "edx")
EBX_E8 = (0x80000008, 0, "ebx")

_A = "cpufeatureset.h 'A' (all guests)"
_S = "cpufeatureset.h 'S' (HVM only)"
_H = "cpufeatureset.h 'H' (HVM with HAP only)"
_NONE = "cpufeatureset.h: no guest attribute"


@dataclass(frozen=True)
class FeatureBit:
    """One CPUID feature bit and whether a 32-bit / 64-bit PV guest sees it (when the CPU
    has it).  `source` names where Xen 4.17 decides, `pvdbg` why pvdbg differs if it does."""

    name: str
    word: tuple[int, int, str]      # (leaf, subleaf, register)
    bit: int
    pv32: bool
    pv64: bool
    source: str
    pvdbg: str = ""


def _bit(name, word, bit, pv32, pv64=None, source=_A, pvdbg=""):
    return FeatureBit(name, word, bit, pv32, pv32 if pv64 is None else pv64, source, pvdbg)


# Every bit of the feature words pvdbg passes through (True) or must hide (False); bits
# absent from the table are hidden too.
PV_FEATURE_BITS: tuple[FeatureBit, ...] = (
    _bit("FPU", EDX1, 0, True),
    _bit("VME", EDX1, 1, False, source=_S),
    _bit("DE", EDX1, 2, True),
    _bit("PSE", EDX1, 3, False, source=_S),
    _bit("TSC", EDX1, 4, True),
    _bit("MSR", EDX1, 5, True),
    _bit("PAE", EDX1, 6, True),
    _bit("MCE", EDX1, 7, True),
    _bit("CX8", EDX1, 8, True),
    _bit("APIC", EDX1, 9, False, source="cpufeatureset.h '!A'",
         pvdbg="a PV domU has no local APIC to drive; hidden (Linux clears it for PV anyway)"),
    _bit("SEP", EDX1, 11, True),
    _bit("MTRR", EDX1, 12, False, source=_S + "; guest_cpuid leaks it to dom0's kernel only"),
    _bit("PGE", EDX1, 13, False, source=_S),
    _bit("MCA", EDX1, 14, True),
    _bit("CMOV", EDX1, 15, True),
    _bit("PAT", EDX1, 16, True),
    _bit("PSE36", EDX1, 17, False, source=_S),
    _bit("CLFLUSH", EDX1, 19, True),
    _bit("DS", EDX1, 21, False, source=_NONE),
    _bit("ACPI", EDX1, 22, False, source=_A,
         pvdbg="no ACPI via MSR in pvdbg; hidden (Linux clears it for a PV domU anyway)"),
    _bit("MMX", EDX1, 23, True),
    _bit("FXSR", EDX1, 24, True),
    _bit("SSE", EDX1, 25, True),
    _bit("SSE2", EDX1, 26, True),
    _bit("SS", EDX1, 27, True),
    _bit("HTT", EDX1, 28, True, source="cpufeatureset.h '!A'"),
    _bit("TM1", EDX1, 29, False, source=_NONE),
    _bit("PBE", EDX1, 31, False, source=_NONE),
    _bit("SSE3", ECX1, 0, True),
    _bit("PCLMULQDQ", ECX1, 1, True),
    _bit("DTES64", ECX1, 2, False, source=_NONE),
    _bit("MONITOR", ECX1, 3, False, source=_NONE + "; leaked to dom0's kernel only"),
    _bit("DSCPL", ECX1, 4, False, source=_NONE),
    _bit("VMX", ECX1, 5, False, source=_S),
    _bit("SMX", ECX1, 6, False, source=_NONE),
    _bit("EIST", ECX1, 7, False, source=_NONE + "; leaked to dom0's kernel only"),
    _bit("TM2", ECX1, 8, False, source=_NONE),
    _bit("SSSE3", ECX1, 9, True),
    _bit("FMA", ECX1, 12, True),
    _bit("CX16", ECX1, 13, True),
    _bit("XTPR", ECX1, 14, False, source=_NONE),
    _bit("PDCM", ECX1, 15, False, source=_NONE),
    _bit("PCID", ECX1, 17, False, source=_H),
    _bit("DCA", ECX1, 18, False, source=_NONE),
    _bit("SSE4_1", ECX1, 19, True),
    _bit("SSE4_2", ECX1, 20, True),
    _bit("X2APIC", ECX1, 21, False, source="cpufeatureset.h '!A'",
         pvdbg="Xen 4.17 leaked the host's bit but never let PV turn x2APIC on (4.19's "
               "calculate_pv_max_policy); hidden"),
    _bit("MOVBE", ECX1, 22, True),
    _bit("POPCNT", ECX1, 23, True),
    _bit("TSC_DEADLINE", ECX1, 24, False, source=_S),
    _bit("AESNI", ECX1, 25, True),
    _bit("XSAVE", ECX1, 26, False, source=_A,
         pvdbg="pvdbg offers no XSAVE state or xsetbv emulation; AVX/F16C go with it "
               "(deep dependencies)"),
    _bit("OSXSAVE", ECX1, 27, False, source="cpufeatureset.h '!': follows the vcpu's CR4"),
    _bit("AVX", ECX1, 28, False, source=_A, pvdbg="depends on XSAVE"),
    _bit("F16C", ECX1, 29, False, source=_A, pvdbg="depends on AVX"),
    _bit("RDRAND", ECX1, 30, True, source="cpufeatureset.h '!A'"),
    _bit("HYPERVISOR", ECX1, 31, True,
         source="cpu-policy.c guest_common_feature_adjustments: always set"),
    _bit("FSGSBASE", EBX7, 0, False, source=_A,
         pvdbg="pvdbg does not virtualise CR4.FSGSBASE; the PV ABI has set_segment_base"),
    _bit("TSC_ADJUST", EBX7, 1, False, source=_S),
    _bit("BMI1", EBX7, 3, True),
    _bit("HLE", EBX7, 4, False, source="cpufeatureset.h '!a' (opt-in only)"),
    _bit("AVX2", EBX7, 5, False, source=_A, pvdbg="depends on AVX"),
    _bit("SMEP", EBX7, 7, False, source=_S),
    _bit("BMI2", EBX7, 8, True),
    _bit("ERMS", EBX7, 9, True),
    _bit("INVPCID", EBX7, 10, False, source=_H),
    _bit("RTM", EBX7, 11, False, source="cpufeatureset.h '!A'",
         pvdbg="Unicorn has no transactional memory"),
    _bit("MPX", EBX7, 14, False, source="cpufeatureset.h 's' (opt-in HVM only)"),
    _bit("AVX512F", EBX7, 16, False, source=_A, pvdbg="depends on AVX"),
    _bit("RDSEED", EBX7, 18, True),
    _bit("ADX", EBX7, 19, True),
    _bit("SMAP", EBX7, 20, False, source=_S),
    _bit("CLFLUSHOPT", EBX7, 23, True),
    _bit("CLWB", EBX7, 24, True),
    _bit("SHA", EBX7, 29, True),
    _bit("UMIP", ECX7, 2, False, source=_S),
    _bit("PKU", ECX7, 3, False, source=_H),
    _bit("RDPID", ECX7, 22, False, source=_A, pvdbg="TSC_AUX is not virtualised by pvdbg"),
    _bit("MD_CLEAR", EDX7, 10, False, source=_A, pvdbg="no speculation controls in pvdbg"),
    _bit("SYSCALL", EDX_E1, 11, False, True,
         source="cpuid.c recalculate_cpuid_policy: 32-bit PV loses SYSCALL on Intel"),
    _bit("NX", EDX_E1, 20, True),
    _bit("MMXEXT", EDX_E1, 22, True),
    _bit("FFXSR", EDX_E1, 25, True),
    _bit("PAGE1GB", EDX_E1, 26, False, source=_H),
    _bit("RDTSCP", EDX_E1, 27, False, source=_A,
         pvdbg="the TSC is always emulated and TSC_AUX is not virtualised"),
    _bit("LM", EDX_E1, 29, False, True,
         source="cpuid.c recalculate_cpuid_policy: 32-bit PV loses LM"),
    _bit("3DNOWEXT", EDX_E1, 30, True),
    _bit("3DNOW", EDX_E1, 31, True),
    _bit("LAHF_LM", ECX_E1, 0, True),
    _bit("CMP_LEGACY", ECX_E1, 1, True, source="cpufeatureset.h '!A'"),
    _bit("SVM", ECX_E1, 2, False, source=_S),
    _bit("CR8_LEGACY", ECX_E1, 4, False, source=_S),
    _bit("ABM", ECX_E1, 5, True),
    _bit("SSE4A", ECX_E1, 6, True),
    _bit("MISALIGNSSE", ECX_E1, 7, True),
    _bit("3DNOWPREFETCH", ECX_E1, 8, True),
    _bit("XOP", ECX_E1, 11, False, source=_A, pvdbg="depends on AVX"),
    _bit("FMA4", ECX_E1, 16, False, source=_A, pvdbg="depends on AVX"),
    _bit("TBM", ECX_E1, 21, True),
    _bit("MONITORX", ECX_E1, 29, False, source=_NONE),
    _bit("ITSC", EDX_E7, 8, True,
         source="cpuid.c recalculate_cpuid_policy: allowed with vTSC (tsc_mode always_emulate)"),
    _bit("CLZERO", EBX_E8, 0, True),
    _bit("IBPB", EBX_E8, 12, False, source=_A, pvdbg="no speculation controls in pvdbg"),
)


def feature_mask(guest_bits: int, word: tuple[int, int, str]) -> int:
    """The bits of one feature word a PV guest of `guest_bits` may see."""
    mask = 0
    for feature in PV_FEATURE_BITS:
        if feature.word == word and (feature.pv64 if guest_bits == 64 else feature.pv32):
            mask |= 1 << feature.bit
    return mask


class BadCpuidAbi(ValueError):
    """A guest ABI other than 32 or 64 bits."""


_native_lock = threading.Lock()
_native: dict[tuple[int, int], tuple[int, int, int, int]] | None = None


def native_leaves() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """The emulated CPU's own CPUID (probed once from a scratch Unicorn).  Unicorn's x86
    model is the same in 32- and 64-bit mode, so one probe serves both ABIs."""
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
            for leaf in range(0, min(max_basic, MAX_BASIC_LEAF) + 1):
                for sub in range(4 if leaf in (4, 7, 0xB, 0xD) else 1):
                    out[(leaf, sub)] = query(leaf, sub)
            max_ext = query(0x80000000)[0]
            for leaf in range(0x80000000, min(max_ext, MAX_EXTENDED_LEAF) + 1):
                out[(leaf, 0)] = query(leaf)
            _native = out
        return _native


_REGISTERS = ("eax", "ebx", "ecx", "edx")
_WORDS = (EDX1, ECX1, EBX7, ECX7, EDX7, EDX_E1, ECX_E1, EDX_E7, EBX_E8)


class PvCpuidPolicy:
    """Xen 4.17's guest_cpuid for one PV domain of `guest_bits` (32 or 64) on an Intel CPU
    whose own leaves are `native` ({(leaf, subleaf): (eax, ebx, ecx, edx)}; default: the
    emulated CPU).  Static leaves are computed once, as Xen's domain policy is."""

    def __init__(self, guest_bits: int = 32,
                 native: Mapping[tuple[int, int], tuple[int, int, int, int]] | None = None
                 ) -> None:
        if guest_bits not in GUEST_BITS:
            raise BadCpuidAbi(f"no PV CPUID policy for {guest_bits}-bit guests (32 or 64)")
        self.guest_bits = guest_bits
        self.native = dict(native_leaves() if native is None else native)
        self.masks = {word: feature_mask(guest_bits, word) for word in _WORDS}
        self.max_basic = min(self._raw(0, 0)[0], MAX_BASIC_LEAF)
        self.max_ext = min(max(self._raw(0x80000000, 0)[0], 0x80000000), MAX_EXTENDED_LEAF)
        self.static: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        for leaf in range(self.max_basic + 1):
            for sub in range(4 if leaf in (4, 7, 0xB, 0xD) else 1):
                self.static[(leaf, sub)] = self._basic(leaf, sub)
        for leaf in range(0x80000000, self.max_ext + 1):
            self.static[(leaf, 0)] = self._extended(leaf)

    # -- static policy (recalculate_cpuid_policy, recalculate_misc) ---------------------------
    def _raw(self, leaf: int, sub: int) -> tuple[int, int, int, int]:
        return tuple(self.native.get((leaf, sub), (0, 0, 0, 0)))

    def _masked(self, leaf: int, sub: int, values) -> tuple[int, int, int, int]:
        out = list(values)
        for index, register in enumerate(_REGISTERS):
            mask = self.masks.get((leaf, sub, register))
            if mask is not None:
                out[index] &= mask
        return tuple(out)

    def _basic(self, leaf: int, sub: int) -> tuple[int, int, int, int]:
        a, b, c, d = self._raw(leaf, sub)
        if leaf == 0:
            return self.max_basic, b, c, d
        if leaf == 1:
            # Processor type and APIC ID cleared; the hypervisor bit always set.
            return self._masked(1, 0, (a & 0x0FFF0FFF, b & 0x00FFFFFF, c | 1 << 31, d))
        if leaf == 2:
            return a, b, c, d
        if leaf == 4:
            if 1 <= a & 0x1F <= 3:          # a valid cache type: reserved fields cleared
                return a & 0xFFFFC3FF, b, c, d & 7
            return 0, 0, 0, 0
        if leaf == 7:
            if sub != 0:
                return 0, 0, 0, 0
            return self._masked(7, 0, (0, b, c, d))     # max subleaf 0
        # 3 PSN, 5 MONITOR, 6 power, 8, 9 DCA, 0xa vPMU, 0xb topology, 0xc, 0xd XSAVE
        # (XSAVE hidden).
        return 0, 0, 0, 0

    def _extended(self, leaf: int) -> tuple[int, int, int, int]:
        a, b, c, d = self._raw(leaf, 0)
        if leaf == 0x80000000:
            return self.max_ext, 0, 0, 0                # Intel: no vendor string here
        if leaf == 0x80000001:
            return self._masked(leaf, 0, (0, 0, c, d))
        if leaf in (0x80000002, 0x80000003, 0x80000004, 0x80000006):
            return a, b, c, d                           # brand string, L2 cache
        if leaf == 0x80000007:
            return self._masked(leaf, 0, (0, 0, 0, d))
        if leaf == 0x80000008:
            # Physical width as the CPU has it; linear width 48 with LM, else 32.
            linear = 48 if self.guest_bits == 64 else 32
            return (a & 0xFF) | linear << 8, self._masked(leaf, 0, (0, b, 0, 0))[1], 0, 0
        return 0, 0, 0, 0                               # 0x80000005: empty on Intel

    # -- guest_cpuid --------------------------------------------------------------------------
    def leaf(self, leaf: int, subleaf: int = 0, *, cr4: int = 0,
             max_mfn: int = 0) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) for CPUID `leaf`/`subleaf` (both taken as 32-bit values).

        `cr4` is the vcpu's virtual CR4 (OSXSAVE follows it); `max_mfn` the highest machine
        frame number (leaf 0x40000005 reports its width).  Leaves beyond the policy read as
        zeros, as Xen answers them (the AMD model).
        """
        leaf &= 0xFFFFFFFF
        subleaf &= 0xFFFFFFFF
        if HV_BASE <= leaf < HV_RANGE_END:
            return self.hypervisor_leaf(leaf - HV_BASE, subleaf, max_mfn=max_mfn)
        if leaf <= self.max_basic:
            if leaf in (4, 7, 0xB, 0xD):
                values = self.static.get((leaf, subleaf), (0, 0, 0, 0))
            else:
                values = self.static[(leaf, 0)]
            if leaf == 1 and cr4 & CR4_OSXSAVE:
                values = (values[0], values[1], values[2] | 1 << 27, values[3])
            return values
        if 0x80000000 <= leaf <= self.max_ext:
            return self.static[(leaf, 0)]
        return 0, 0, 0, 0

    def hypervisor_leaf(self, idx: int, sub: int, *, max_mfn: int = 0
                        ) -> tuple[int, int, int, int]:
        """cpuid_hypervisor_leaves for a PV domain (no Viridian: Xen's leaves start at
        0x40000000); `idx` counts from there."""
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
            return 0, max_mfn.bit_length() + PAGE_SHIFT, 0, 0
        return 0, 0, 0, 0           # 4 is HVM-only; beyond the limit reads as zeros

    def registers_after(self, regs: Mapping[str, int], *, cr4: int = 0,
                        max_mfn: int = 0) -> dict[str, int]:
        """The registers a cpuid leaves behind, from the guest's registers before it:
        `regs` holds eax and ecx (32-bit names) or rax and rcx (64-bit names)."""
        wide = "rax" in regs
        leaf = regs["rax" if wide else "eax"]
        subleaf = regs["rcx" if wide else "ecx"]
        values = self.leaf(leaf, subleaf, cr4=cr4, max_mfn=max_mfn)
        return cpuid_result_registers(values, 64 if wide else 32)


def forced_cpuid_at(code: bytes) -> bool:
    """Whether the bytes at a #UD are Xen's forced-emulation prefix before cpuid
    (emulate_forced_invalid_op: the 7 bytes are emulated and skipped as one)."""
    return bytes(code[:len(FORCED_CPUID)]) == FORCED_CPUID


def cpuid_result_registers(values: tuple[int, int, int, int], guest_bits: int
                           ) -> dict[str, int]:
    """The four results as registers to write: eax..edx, or in 64-bit mode rax..rdx
    (cpuid clears the upper halves there)."""
    if guest_bits not in GUEST_BITS:
        raise BadCpuidAbi(f"no PV CPUID policy for {guest_bits}-bit guests (32 or 64)")
    names = ("rax", "rbx", "rcx", "rdx") if guest_bits == 64 else _REGISTERS
    return {name: value & 0xFFFFFFFF for name, value in zip(names, values)}


class CpuidPolicy:
    """The 32-bit engine's CPUID: `PvCpuidPolicy` behind the forced-emulation #UD and the
    native cpuid instruction hook, with a trace record per emulated cpuid."""

    def __init__(self, hv: "Hypervisor", guest_bits: int = 32) -> None:
        self.hv = hv
        self.policy = PvCpuidPolicy(guest_bits)
        self.native = self.policy.native
        self.emulated = 0
        self.pending_gp: GuestFrame | None = None
        hv.cpu.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)

    def leaf(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """guest_cpuid for the current vcpu."""
        pv = self.hv.traps.pv(self.hv.current)
        return self.policy.leaf(leaf, subleaf, cr4=pv.cr4,
                                max_mfn=self.hv.memory.nr_frames - 1)

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
