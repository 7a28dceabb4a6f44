"""Xen PV ABI structures as a 64-bit (x86_64) PV guest sees them, each declared once.

Classes carry the suffix ``64``; layouts both ABIs share (vcpu_time_info, mmu_update,
sched_shutdown, ...) live in pvdbg.xen.abi without a suffix and are re-exported here.
Offsets are those of Xen 4.17's public headers compiled with ``gcc -m64``
(tests/test_abi_golden.py repeats that check). The bounce and failsafe frames are no C
structures: Xen writes them word by word onto the guest stack (xen/arch/x86/x86_64/entry.S
create_bounce_frame; xen/arch/x86/domain.c load_segments), so their layouts are declared
here from that code and checked by unit tests instead.
"""
from __future__ import annotations

from typing import ClassVar

from .abi import (
    FeatureInfo,
    MmuUpdate,
    SchedRemoteShutdown,
    SchedShutdown,
    VcpuTimeInfo,
    XenconsInterface,
    abi_struct,
    at,
)

__all__ = [
    "StartInfo64", "VcpuInfo64", "ArchVcpuInfo64", "SharedInfo64", "PlatformParameters64",
    "SchedPoll64", "TrapInfo64", "CallbackRegister64", "MulticallEntry64", "MmuextOp64",
    "MachphysMapping64", "MemoryReservation64", "MemoryMap64", "AddToPhysmap64",
    "GnttabSetupTable64", "GnttabGetStatusFrames64", "GnttabCopy64", "GnttabTransfer64", "CpuUserRegs64", "VcpuGuestContext64",
    "IretContext64", "BounceFrame64", "BounceFrameErrorCode64", "FailsafeFrame64",
    "bounce_frame_va",
    # shared with the 32-bit ABI
    "VcpuTimeInfo", "FeatureInfo", "MmuUpdate", "SchedShutdown", "SchedRemoteShutdown",
    "XenconsInterface",
]


@abi_struct(size=1168, source="xen/include/public/xen.h struct start_info (x86_64)")
class StartInfo64:
    magic: bytes = at(0, "32s")             # "xen-3.0-x86_64"
    nr_pages: int = at(32, "Q")
    shared_info: int = at(40, "Q")          # machine address
    flags: int = at(48, "I")                # SIF_*
    store_mfn: int = at(56, "Q")
    store_evtchn: int = at(64, "I")
    console_mfn: int = at(72, "Q")          # console.domU.mfn
    console_evtchn: int = at(80, "I")       # console.domU.evtchn
    pt_base: int = at(88, "Q")              # VA of the L4
    nr_pt_frames: int = at(96, "Q")
    mfn_list: int = at(104, "Q")            # VA of the p2m (u64 entries)
    mod_start: int = at(112, "Q")           # VA, or a PFN with SIF_MOD_START_PFN
    mod_len: int = at(120, "Q")
    cmd_line: bytes = at(128, "1024s")
    first_p2m_pfn: int = at(1152, "Q")      # p2m placed by INIT_P2M outside the initial map
    nr_p2m_frames: int = at(1160, "Q")


@abi_struct(size=16, source="xen/include/public/arch-x86/xen-x86_64.h struct arch_vcpu_info")
class ArchVcpuInfo64:
    cr2: int = at(0, "Q")
    pad: int = at(8, "Q")


@abi_struct(size=64, source="xen/include/public/xen.h struct vcpu_info (x86_64)")
class VcpuInfo64:
    evtchn_upcall_pending: int = at(0, "B")
    evtchn_upcall_mask: int = at(1, "B")
    evtchn_pending_sel: int = at(8, "Q")    # one bit per evtchn_pending word
    cr2: int = at(16, "Q")                  # arch_vcpu_info.cr2
    time: bytes = at(32, "32s")             # vcpu_time_info


@abi_struct(size=3136, source="xen/include/public/xen.h struct shared_info (x86_64)")
class SharedInfo64:
    vcpu_info: bytes = at(0, "2048s")       # 32 x vcpu_info
    evtchn_pending: bytes = at(2048, "512s")  # 64 x u64: 4096 ports
    evtchn_mask: bytes = at(2560, "512s")
    wc_version: int = at(3072, "I")
    wc_sec: int = at(3076, "I")
    wc_nsec: int = at(3080, "I")
    wc_sec_hi: int = at(3084, "I")
    max_pfn: int = at(3088, "Q")            # arch.max_pfn
    pfn_to_mfn_frame_list_list: int = at(3096, "Q")
    nmi_reason: int = at(3104, "Q")
    p2m_cr3: int = at(3112, "Q")
    p2m_vaddr: int = at(3120, "Q")
    p2m_generation: int = at(3128, "Q")

    NR_VCPU_INFO: ClassVar[int] = 32


@abi_struct(size=8, source="xen/include/public/version.h xen_platform_parameters_t (x86_64)")
class PlatformParameters64:
    virt_start: int = at(0, "Q")


@abi_struct(size=24, source="xen/include/public/sched.h struct sched_poll (x86_64)")
class SchedPoll64:
    ports: int = at(0, "Q")                 # guest VA of evtchn_port_t[]
    nr_ports: int = at(8, "I")
    timeout: int = at(16, "Q")              # absolute ns, 0 = none


@abi_struct(size=16, source="xen/include/public/arch-x86/xen.h struct trap_info (x86_64)")
class TrapInfo64:
    vector: int = at(0, "B")
    flags: int = at(1, "B")                 # bits 1:0 DPL, bit 2 mask events
    cs: int = at(2, "H")
    address: int = at(8, "Q")


@abi_struct(size=16, source="xen/include/public/callback.h struct callback_register (x86_64)")
class CallbackRegister64:
    type: int = at(0, "H")                  # CALLBACKTYPE_*
    flags: int = at(2, "H")                 # CALLBACKF_mask_events = 1
    address: int = at(8, "Q")               # xen_callback_t: an RIP, no CS


@abi_struct(size=64, source="xen/include/public/xen.h struct multicall_entry (x86_64)")
class MulticallEntry64:
    op: int = at(0, "Q")
    result: int = at(8, "Q")
    args: bytes = at(16, "48s")             # 6 x u64


@abi_struct(size=24, source="xen/include/public/xen.h struct mmuext_op (x86_64)")
class MmuextOp64:
    cmd: int = at(0, "I")
    arg1: int = at(8, "Q")                  # mfn or linear address
    arg2: int = at(16, "Q")                 # nr_ents, vcpumask pointer or src_mfn


@abi_struct(size=24, source="xen/include/public/memory.h struct xen_machphys_mapping (x86_64)")
class MachphysMapping64:
    v_start: int = at(0, "Q")
    v_end: int = at(8, "Q")
    max_mfn: int = at(16, "Q")


@abi_struct(size=32, source="xen/include/public/memory.h struct xen_memory_reservation (x86_64)")
class MemoryReservation64:
    extent_start: int = at(0, "Q")          # guest VA of xen_pfn_t[]
    nr_extents: int = at(8, "Q")
    extent_order: int = at(16, "I")
    mem_flags: int = at(20, "I")            # XENMEMF_*
    domid: int = at(24, "H")


@abi_struct(size=16, source="xen/include/public/memory.h struct xen_memory_map (x86_64)")
class MemoryMap64:
    nr_entries: int = at(0, "I")            # in: room in buffer; out: e820 entries written
    buffer: int = at(8, "Q")                # guest VA of the e820 entries


@abi_struct(size=24, source="xen/include/public/memory.h struct xen_add_to_physmap (x86_64)")
class AddToPhysmap64:
    domid: int = at(0, "H")
    size: int = at(2, "H")                  # XENMAPSPACE_gmfn_range only
    space: int = at(4, "I")                 # XENMAPSPACE_*
    idx: int = at(8, "Q")
    gpfn: int = at(16, "Q")


@abi_struct(size=24, source="xen/include/public/grant_table.h struct gnttab_setup_table (x86_64)")
class GnttabSetupTable64:
    dom: int = at(0, "H")
    nr_frames: int = at(4, "I")
    status: int = at(8, "h")                # GNTST_*
    frame_list: int = at(16, "Q")           # guest VA of xen_pfn_t[]


@abi_struct(size=16,
            source="xen/include/public/grant_table.h struct gnttab_get_status_frames (x86_64)")
class GnttabGetStatusFrames64:
    nr_frames: int = at(0, "I")
    dom: int = at(4, "H")
    status: int = at(6, "h")
    frame_list: int = at(8, "Q")            # guest VA of u64[]


@abi_struct(size=40, source="xen/include/public/grant_table.h struct gnttab_copy (x86_64)")
class GnttabCopy64:
    """The ref/gmfn union holds a 64-bit xen_pfn_t, so both sides are 16 bytes."""
    source_ref: int = at(0, "Q")            # grant ref with GNTCOPY_source_gref, else a frame
    source_domid: int = at(8, "H")
    source_offset: int = at(10, "H")
    dest_ref: int = at(16, "Q")             # grant ref with GNTCOPY_dest_gref, else a frame
    dest_domid: int = at(24, "H")
    dest_offset: int = at(26, "H")
    len: int = at(32, "H")
    flags: int = at(34, "H")                # GNTCOPY_*
    status: int = at(36, "h")               # OUT


@abi_struct(size=24, source="xen/include/public/grant_table.h struct gnttab_transfer (x86_64)")
class GnttabTransfer64:
    mfn: int = at(0, "Q")
    domid: int = at(8, "H")
    ref: int = at(12, "I")
    status: int = at(16, "h")               # OUT


@abi_struct(size=200, source="xen/include/public/arch-x86/xen-x86_64.h struct cpu_user_regs")
class CpuUserRegs64:
    r15: int = at(0, "Q")
    r14: int = at(8, "Q")
    r13: int = at(16, "Q")
    r12: int = at(24, "Q")
    rbp: int = at(32, "Q")
    rbx: int = at(40, "Q")
    r11: int = at(48, "Q")
    r10: int = at(56, "Q")
    r9: int = at(64, "Q")
    r8: int = at(72, "Q")
    rax: int = at(80, "Q")
    rcx: int = at(88, "Q")
    rdx: int = at(96, "Q")
    rsi: int = at(104, "Q")
    rdi: int = at(112, "Q")
    error_code: int = at(120, "I")          # Xen private
    entry_vector: int = at(124, "I")        # Xen private
    rip: int = at(128, "Q")
    cs: int = at(136, "H")
    saved_upcall_mask: int = at(140, "B")
    rflags: int = at(144, "Q")              # IF == !saved_upcall_mask
    rsp: int = at(152, "Q")
    ss: int = at(160, "H")
    es: int = at(168, "H")
    ds: int = at(176, "H")
    fs: int = at(184, "H")
    gs: int = at(192, "H")


@abi_struct(size=5168, source="xen/include/public/arch-x86/xen.h struct vcpu_guest_context (x86_64)")
class VcpuGuestContext64:
    fpu_ctxt: bytes = at(0, "512s")         # FXSAVE image
    flags: int = at(512, "Q")               # VGCF_*
    user_regs: bytes = at(520, "200s")      # CpuUserRegs64
    trap_ctxt: bytes = at(720, "4096s")     # 256 x TrapInfo64
    ldt_base: int = at(4816, "Q")
    ldt_ents: int = at(4824, "Q")
    gdt_frames: bytes = at(4832, "128s")    # 16 x u64 MFNs
    gdt_ents: int = at(4960, "Q")
    kernel_ss: int = at(4968, "Q")
    kernel_sp: int = at(4976, "Q")
    ctrlreg: bytes = at(4984, "64s")        # 8 x u64; ctrlreg[1] is the user pagetable
    debugreg: bytes = at(5048, "64s")       # 8 x u64
    event_callback_eip: int = at(5112, "Q")
    failsafe_callback_eip: int = at(5120, "Q")
    syscall_callback_eip: int = at(5128, "Q")
    vm_assist: int = at(5136, "Q")          # VMASST_TYPE_* bitmap
    fs_base: int = at(5144, "Q")
    gs_base_kernel: int = at(5152, "Q")
    gs_base_user: int = at(5160, "Q")


@abi_struct(size=72, source="xen/include/public/arch-x86/xen-x86_64.h struct iret_context")
class IretContext64:
    """The frame at RSP when a 64-bit guest makes the iret hypercall (lowest address first)."""

    rax: int = at(0, "Q")
    r11: int = at(8, "Q")
    rcx: int = at(16, "Q")
    flags: int = at(24, "Q")                # VGCF_in_syscall: return as SYSRET would
    rip: int = at(32, "Q")
    cs: int = at(40, "Q")
    rflags: int = at(48, "Q")
    rsp: int = at(56, "Q")
    ss: int = at(64, "Q")

    VGCF_IN_SYSCALL: ClassVar[int] = 1 << 8  # _VGCF_in_syscall 8


@abi_struct(size=56, source="xen/arch/x86/x86_64/entry.S create_bounce_frame (no error code)")
class BounceFrame64:
    """What Xen pushes for an event, a syscall or an exception without error code.

    The frame ends at the 16-byte-aligned stack top (RSP & ~15, or kernel_sp coming from
    user mode) and always holds RSP and SS. `cs` has RPL 0 when the guest was in kernel
    mode; `saved_upcall_mask` is the mask before delivery; RFLAGS.IF = !saved_upcall_mask.
    """

    rcx: int = at(0, "Q")
    r11: int = at(8, "Q")
    rip: int = at(16, "Q")
    cs: int = at(24, "H")
    saved_upcall_mask: int = at(28, "B")    # bits 39:32 of the CS word
    rflags: int = at(32, "Q")
    rsp: int = at(40, "Q")
    ss: int = at(48, "Q")


@abi_struct(size=64, source="xen/arch/x86/x86_64/entry.S create_bounce_frame (error code)")
class BounceFrameErrorCode64:
    """BounceFrame64 with the exception's error code between R11 and RIP."""

    rcx: int = at(0, "Q")
    r11: int = at(8, "Q")
    error_code: int = at(16, "Q")
    rip: int = at(24, "Q")
    cs: int = at(32, "H")
    saved_upcall_mask: int = at(36, "B")
    rflags: int = at(40, "Q")
    rsp: int = at(48, "Q")
    ss: int = at(56, "Q")


@abi_struct(size=88, source="xen/arch/x86/domain.c load_segments (64-bit failsafe frame)")
class FailsafeFrame64:
    """What Xen pushes before the failsafe callback when it can't reload DS/ES/FS/GS.

    Placed like BounceFrame64; the selectors are the ones the guest asked for.
    """

    rcx: int = at(0, "Q")
    r11: int = at(8, "Q")
    ds: int = at(16, "Q")
    es: int = at(24, "Q")
    fs: int = at(32, "Q")
    gs: int = at(40, "Q")
    rip: int = at(48, "Q")
    cs: int = at(56, "H")
    saved_upcall_mask: int = at(60, "B")
    rflags: int = at(64, "Q")
    rsp: int = at(72, "Q")
    ss: int = at(80, "Q")


def bounce_frame_va(stack_top_va: int, frame: type) -> int:
    """Guest VA where Xen writes `frame` (a frame class above) below `stack_top_va`.

    Xen aligns the stack top down to 16 bytes, then writes the frame just below it.
    """
    return ((stack_top_va & ~0xF) - frame.SIZE) & 0xFFFF_FFFF_FFFF_FFFF
