"""The PV half of a vcpu: what Xen keeps in struct pv_vcpu and arch_vcpu for a 32-bit
guest (virtual trap table, callbacks, control and debug registers, virtual IOPL).

The hypervisor's `Vcpu` keeps scheduling state and kernel_ss/kernel_sp; one `PvVcpu`
per vcpu holds the rest.  ABI: xen/arch/x86/include/asm/domain.h struct pv_vcpu;
XEN-PV-ABI.md 2.6, 3.6-3.8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..trace import TraceRecord
from .abi import TrapInfo32

NR_VECTORS = 256
VGCF_FAILSAFE_DISABLES_EVENTS = 1 << 3
VGCF_SYSCALL_DISABLES_EVENTS = 1 << 4

# Guest-visible CR4 bits Xen takes from its own CR4 (pv_fixup_guest_cr4:
# PV_CR4_GUEST_VISIBLE_MASK = PAE | MCE | OSFXSR | OSXMMEXCPT on a typical host).
CR4_GUEST_VISIBLE = 0x20 | 0x40 | 0x200 | 0x400
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
# Bits the guest may set (PV_CR4_GUEST_MASK minus what this CPU policy hides:
# FSGSBASE and OSXSAVE stay clear because the policy has neither).
CR4_GUEST_CONTROLLED = CR4_TSD | CR4_DE

EMPTY_TRAP = TrapInfo32(vector=0, flags=0, cs=0, address=0)


@dataclass
class Callback:
    """A registered callback: where Xen enters the guest and whether events get masked."""
    cs: int = 0
    eip: int = 0
    mask_events: bool = False

    @property
    def registered(self) -> bool:
        return (self.cs & ~3) != 0


@dataclass
class PvVcpu:
    vcpu_id: int
    trap_ctxt: list[TrapInfo32] = field(default_factory=lambda: [EMPTY_TRAP] * NR_VECTORS)
    event: Callback = field(default_factory=Callback)
    failsafe: Callback = field(default_factory=Callback)
    syscall32: Callback = field(default_factory=Callback)
    sysenter: Callback = field(default_factory=Callback)
    vgc_flags: int = 0
    # Virtual control registers (ctrlreg[0] holds only TS, as in Xen).
    cr0_ts: bool = False
    cr2: int = 0
    cr4: int = CR4_GUEST_VISIBLE
    # Debug registers as the guest set them (set_debugreg / mov %drN).
    dr: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    dr6: int = 0xFFFF0FF0
    dr7: int = 0x400
    dr7_emul: int = 0                   # I/O breakpoint enables Xen emulates itself
    # I/O privilege: the virtual IOPL (EFLAGS bits 13:12) and the guest's I/O bitmap.
    iopl: int = 0
    iobmp_va: int = 0
    iobmp_limit: int = 0
    # NMI state (async_exception_mask bit for NMI, pending flag).
    nmi_pending: bool = False
    nmi_masked: bool = False
    # The return frame a hypercall left for the exit path (iret), and the ring-3 frame
    # an iret is returning to through Xen's trampoline (for the failsafe callback).
    resume: "object | None" = None
    outer_iret: "object | None" = None
    kernel_sp_source: str = "domain builder (initial ESP)"
    kernel_sp_record: TraceRecord | None = None
    cpuid_faulting: bool = False       # MSR_INTEL_MISC_FEATURES_ENABLES bit 0
    delivering: str | None = None       # what is being delivered (for nested-fault reports)
