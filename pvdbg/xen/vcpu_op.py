"""vcpu_op: bringing vcpus up and down, their timers, runstate and vcpu_info placement,
and the context switch between vcpus of the domain.
ABI: xen/include/public/vcpu.h; xen/common/domain.c (do_vcpu_op, map_vcpu_info);
xen/common/compat/domain.c; xen/arch/x86/domain.c (arch_set_info_guest, arch_do_vcpu_op,
load_segments); XEN-PV-ABI.md 2.5, 2.6, 3.15.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE
from .abi import TrapInfo32, VcpuInfo32
from .constants import FLAT_RING1_CS, FLAT_RING1_DS, Errno, Hc
from .entry import TSS_SEL, TSS_SIZE, tss_va
from .hypercalls import HYPERCALLS, HypercallError, Param, fail
from .pvvcpu import Callback, VGCF_FAILSAFE_DISABLES_EVENTS
from .schedule import RUNSTATE_INFO_SIZE, Runstate
from .selectors import check_code_selector, check_data_selector, check_stack_selector
from .time import MIN_PERIOD_NS

if TYPE_CHECKING:
    from .hypervisor import Hypervisor, HypercallContext, Vcpu

VCPU_GUEST_CONTEXT_SIZE = 2800          # compat vcpu_guest_context
MAX_GDT_FRAMES = 16
STIME_DELTA_MAX = (1 << 62) - 1


class VcpuOp(IntEnum):
    """VCPUOP_*.  ABI: xen/include/public/vcpu.h."""
    initialise = 0
    up = 1
    down = 2
    is_up = 3
    get_runstate_info = 4
    register_runstate_memory_area = 5
    set_periodic_timer = 6
    stop_periodic_timer = 7
    set_singleshot_timer = 8
    stop_singleshot_timer = 9
    register_vcpu_info = 10
    send_nmi = 11
    get_physid = 12
    register_vcpu_time_memory_area = 13


@dataclass(frozen=True)
class VcpuContext:
    """The parts of a compat vcpu_guest_context Xen applies (offsets: XEN-PV-ABI.md 3.15)."""
    flags: int
    regs: dict[str, int]
    trap_ctxt: tuple[TrapInfo32, ...]
    gdt_frames: tuple[int, ...]
    gdt_ents: int
    kernel_ss: int
    kernel_sp: int
    cr3: int
    debugreg: tuple[int, ...]
    event: tuple[int, int]
    failsafe: tuple[int, int]

    @classmethod
    def from_bytes(cls, data: bytes) -> "VcpuContext":
        names = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax")
        gprs = struct.unpack_from("<7I", data, 516)
        eip, cs, eflags, esp, ss, es, ds, fs, gs = struct.unpack_from("<IHxxIIIIIII", data, 548)
        regs = dict(zip(names, gprs))
        regs.update(eip=eip, cs=cs, eflags=eflags, esp=esp, ss=ss & 0xFFFF, es=es & 0xFFFF,
                    ds=ds & 0xFFFF, fs=fs & 0xFFFF, gs=gs & 0xFFFF)
        traps = tuple(TrapInfo32.from_bytes(data, 584 + 8 * i) for i in range(256))
        return cls(
            flags=struct.unpack_from("<I", data, 512)[0], regs=regs, trap_ctxt=traps,
            gdt_frames=struct.unpack_from("<16I", data, 2640),
            gdt_ents=struct.unpack_from("<I", data, 2704)[0],
            kernel_ss=struct.unpack_from("<I", data, 2708)[0] & 0xFFFF,
            kernel_sp=struct.unpack_from("<I", data, 2712)[0],
            cr3=struct.unpack_from("<I", data, 2716 + 12)[0],
            debugreg=struct.unpack_from("<8I", data, 2748),
            event=struct.unpack_from("<II", data, 2780),
            failsafe=struct.unpack_from("<II", data, 2788))


def _ring1(sel: int) -> int:
    sel &= 0xFFFF
    return sel | 1 if sel & 3 == 0 else sel


class VcpuOps:
    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv
        self.contexts: dict[int, VcpuContext] = {}
        self.initialised = {0}
        self.cr3: dict[int, int] = {0: hv.cr3}
        self.vcpu_info_registered: set[int] = set()

    # -- context switch -----------------------------------------------------------------
    def switch_to(self, nxt: "Vcpu") -> None:
        """Save the current vcpu's CPU state and run `nxt` (outside any hook)."""
        hv = self.hv
        prev = hv.current
        if nxt is prev:
            return
        cpu = hv.cpu
        prev.saved_context = cpu.save_context()
        self.cr3[prev.vcpu_id] = hv.cr3
        if nxt.saved_context is None:
            self._first_run(nxt)
        else:
            cpu.restore_context(nxt.saved_context)
            hv._cr3 = self.cr3.get(nxt.vcpu_id, hv.cr3)
            hv.descriptors.load_vcpu(nxt.vcpu_id)
        hv.current = nxt
        cpu.flush_tlb()
        sched = hv.scheduler
        sched.set_runstate(prev, Runstate.blocked if prev.blocked else
                           Runstate.runnable if prev.online else Runstate.offline)
        sched.set_runstate(nxt, Runstate.running)
        sched.context_switches += 1
        hv.time.publish(nxt)
        hv.callbacks.reload_data_segments()

    def _first_run(self, vcpu: "Vcpu") -> None:
        """Enter a vcpu brought up with VCPUOP_initialise + VCPUOP_up for the first time:
        its GDT, page tables and TSS, then the context's registers (the CPU is already
        in ring 1, where the context's selectors are raised to)."""
        hv = self.hv
        cpu = hv.cpu
        ctx = self.contexts[vcpu.vcpu_id]
        area = hv.area
        hv.descriptors.load_vcpu(vcpu.vcpu_id)
        hv._cr3 = hv.mm.vcpu_cr3[vcpu.vcpu_id] << PAGE_SHIFT
        cpu.write("cr3", hv._cr3)
        cpu.set_task_register(TSS_SEL, tss_va(vcpu.vcpu_id), TSS_SIZE - 1)
        area.set_ring1_stack(vcpu.vcpu_id, FLAT_RING1_DS, area.ring1_stack_top)
        cpu.flush_tlb()
        r = ctx.regs
        cs, ss = _ring1(r["cs"]), _ring1(r["ss"])
        if check_code_selector(hv, cs) is not None:
            cs = FLAT_RING1_CS
        if check_stack_selector(hv, ss, 1) is not None:
            ss = FLAT_RING1_DS
        values = {"ss": ss, "cs": cs}
        for name in ("ds", "es", "fs", "gs"):
            values[name] = r[name] if check_data_selector(hv, r[name], 1) is None else 0
        values.update({name: r[name] for name in ("eax", "ebx", "ecx", "edx", "esi", "edi",
                                                  "ebp", "esp")})
        values["eflags"] = (r["eflags"] | 0x200) & ~0x3000
        values.update(dr6=0xFFFF0FF0, dr7=0x400)
        cpu.write_many(values)
        cpu.write("eip", r["eip"])

    # -- initialise -----------------------------------------------------------------------
    def initialise(self, ctx_: "HypercallContext", vcpu: "Vcpu", arg: int) -> int:
        if vcpu.vcpu_id in self.initialised:
            raise fail(Errno.EEXIST, f"vcpu {vcpu.vcpu_id} is already initialised")
        ctx = VcpuContext.from_bytes(ctx_.guest.read(arg, VCPU_GUEST_CONTEXT_SIZE))
        if (ctx.gdt_ents + 511) // 512 > MAX_GDT_FRAMES - 2:
            raise fail(Errno.EINVAL, f"gdt_ents {ctx.gdt_ents} needs more than 14 frames")
        hv = self.hv
        mfn = (ctx.cr3 >> 12 | ctx.cr3 << 20) & 0xFFFFFFFF
        nr_frames = (ctx.gdt_ents + 511) // 512
        try:
            hv.descriptors.set_gdt(vcpu.vcpu_id, list(ctx.gdt_frames[:nr_frames]), ctx.gdt_ents)
            hv.mm.new_baseptr(vcpu.vcpu_id, mfn)
        except HypercallError as err:
            raise fail(Errno.EINVAL, f"vcpu context refused: {err.why}") from None
        pv = hv.traps.pv(vcpu)
        pv.trap_ctxt = [TrapInfo32(t.vector, t.flags, _ring1(t.cs) if t.address else t.cs, t.address)
                        for t in ctx.trap_ctxt]
        pv.event = Callback(_ring1(ctx.event[0]), ctx.event[1], True)
        fs_mask = bool(ctx.flags & VGCF_FAILSAFE_DISABLES_EVENTS)
        pv.failsafe = Callback(_ring1(ctx.failsafe[0]), ctx.failsafe[1], fs_mask)
        pv.vgc_flags = ctx.flags
        pv.iopl = (ctx.regs["eflags"] >> 12) & 3
        vcpu.kernel_ss = _ring1(ctx.kernel_ss)
        vcpu.kernel_sp = ctx.kernel_sp
        pv.kernel_sp_source = "VCPUOP_initialise"
        self.contexts[vcpu.vcpu_id] = ctx
        self.initialised.add(vcpu.vcpu_id)
        ctx_.note(f"vcpu {vcpu.vcpu_id} at {ctx.regs['cs']:#06x}:{ctx.regs['eip']:#x} "
                  f"esp {ctx.regs['esp']:#x} cr3 mfn {mfn:#x}")
        return 0

    def owned_frame(self, mfn: int) -> bool:
        """Is `mfn` a frame allocated to this domain (get_page_from_gfn for PV)?"""
        from .mm import Owner
        mm = self.hv.mm
        return mm.frame_valid(mfn) and mm.owner(mfn) is Owner.domain

    # -- vcpu_info ------------------------------------------------------------------------
    def register_vcpu_info(self, ctx: "HypercallContext", vcpu: "Vcpu", arg: int) -> int:
        """map_vcpu_info: move vcpu_info into a guest frame (once)."""
        hv = self.hv
        mfn, offset, _rsvd = struct.unpack("<QII", ctx.guest.read(arg, 16))
        if offset > PAGE_SIZE - VcpuInfo32.SIZE or offset & 3:
            raise fail(Errno.ENXIO, f"offset {offset:#x} must be 4-aligned and leave 64 bytes")
        if vcpu.vcpu_id in self.vcpu_info_registered:
            raise fail(Errno.EINVAL, "vcpu_info is already registered for this vcpu")
        if vcpu is not hv.current and vcpu.online:
            raise fail(Errno.EINVAL, "another vcpu's vcpu_info can only move while it is down")
        if not self.owned_frame(mfn):
            raise fail(Errno.EINVAL, f"mfn {mfn:#x} is not a frame of this domain")
        from .mm import PageType
        try:
            hv.mm.get_page_and_type(mfn, PageType.writable, what="vcpu_info needs a writable page")
        except HypercallError as err:
            raise fail(Errno.EINVAL, err.why) from None
        old = hv.vcpu_info_maddr(vcpu.vcpu_id)
        new = (mfn << PAGE_SHIFT) + offset
        hv.memory.write(new, hv.memory.read(old, VcpuInfo32.SIZE))
        hv.vcpu_info_moved[vcpu.vcpu_id] = new
        self.vcpu_info_registered.add(vcpu.vcpu_id)
        hv.memory.write_u32(new + 4, 0xFFFFFFFF)
        hv.events.mark_events_pending(vcpu)
        hv.time.publish(vcpu)
        ctx.note(f"vcpu_info of vcpu {vcpu.vcpu_id} now at mfn {mfn:#x} + {offset:#x}; "
                 "pending_sel = ~0, upcall_pending = 1")
        return 0


def _ops(ctx: "HypercallContext") -> VcpuOps:
    return ctx.hv.vcpu_ops


@HYPERCALLS.handler(Hc.vcpu_op, Param("cmd", VcpuOp), Param("vcpuid", "int"), Param("arg"))
def vcpu_op(ctx: "HypercallContext", cmd: int, vcpuid: int, arg: int) -> int:
    hv = ctx.hv
    if vcpuid >= len(hv.vcpus):
        raise fail(Errno.ENOENT, f"vcpu {vcpuid} does not exist (max_vcpus {len(hv.vcpus)})")
    vcpu = hv.vcpus[vcpuid]
    ops = _ops(ctx)
    sched = hv.scheduler
    tk = hv.time
    if cmd == VcpuOp.initialise:
        return ops.initialise(ctx, vcpu, arg)
    if cmd == VcpuOp.up:
        if vcpuid not in ops.initialised:
            raise fail(Errno.EINVAL, f"vcpu {vcpuid} was never initialised")
        if not vcpu.online:
            vcpu.online = True
            vcpu.blocked = False
            sched.set_runstate(vcpu, Runstate.runnable)
        return 0
    if cmd == VcpuOp.down:
        if not any(v.online for v in hv.vcpus if v is not vcpu):
            ctx.note("the last vcpu went down: domain_shutdown(poweroff)")
            from .constants import ShutdownReason
            hv.shutdown(ShutdownReason.poweroff, "last vcpu went down (VCPUOP_down)")
            return 0
        if vcpu.online:
            vcpu.online = False
            sched.set_runstate(vcpu, Runstate.offline)
            if vcpu is hv.current:
                hv.cpu.stop()
        return 0
    if cmd == VcpuOp.is_up:
        return 1 if vcpu.online else 0
    if cmd == VcpuOp.get_runstate_info:
        ctx.guest.write(arg, sched.runstate_bytes(vcpu))
        return 0
    if cmd == VcpuOp.register_runstate_memory_area:
        (va,) = struct.unpack("<Q", ctx.guest.read(arg, 8))
        va &= 0xFFFFFFFF
        if va and va + RUNSTATE_INFO_SIZE > ctx.guest.hole_start:
            raise fail(Errno.EFAULT, f"runstate area {va:#x} is not a guest address")
        sched.runstates[vcpuid].area_va = va
        sched.update_runstate_area(vcpu)
        ctx.note(f"runstate area at {va:#x}" if va else "runstate area removed")
        return 0
    if cmd == VcpuOp.set_periodic_timer:
        (period,) = struct.unpack("<Q", ctx.guest.read(arg, 8))
        if period < MIN_PERIOD_NS or period > STIME_DELTA_MAX:
            raise fail(Errno.EINVAL, f"period {period} ns is below 1 ms or too large")
        tk.set_periodic(vcpu, period)
        ctx.note(f"periodic VIRQ_TIMER every {period} ns")
        return 0
    if cmd == VcpuOp.stop_periodic_timer:
        tk.set_periodic(vcpu, 0)
        return 0
    if cmd == VcpuOp.set_singleshot_timer:
        if vcpu is not hv.current:
            raise fail(Errno.EINVAL, "singleshot timers are for the calling vcpu only")
        timeout, _flags = struct.unpack("<QI", ctx.guest.read(arg, 12))
        now = tk.now_ns()
        if timeout < now:
            tk.set_singleshot(vcpu, None)
            tk.publish(vcpu)
            hv.events.send_virq(0, vcpuid)
            ctx.note(f"deadline {timeout} ns already passed (now {now}): VIRQ_TIMER sent")
            return 0
        tk.set_singleshot(vcpu, timeout)
        ctx.note(f"VIRQ_TIMER at {timeout} ns (in {timeout - now} ns)")
        return 0
    if cmd == VcpuOp.stop_singleshot_timer:
        if vcpu is not hv.current:
            raise fail(Errno.EINVAL, "singleshot timers are for the calling vcpu only")
        tk.set_singleshot(vcpu, None)
        return 0
    if cmd == VcpuOp.register_vcpu_info:
        return ops.register_vcpu_info(ctx, vcpu, arg)
    if cmd == VcpuOp.send_nmi:
        if arg != 0:
            raise fail(Errno.EINVAL, "send_nmi takes no argument")
        pv = hv.traps.pv(vcpu)
        if not pv.nmi_pending:
            pv.nmi_pending = True
            sched.kick(vcpu)
        return 0
    if cmd == VcpuOp.get_physid:
        raise fail(Errno.EINVAL, "physical CPU ids are for the hardware domain's pinned vcpus")
    if cmd == VcpuOp.register_vcpu_time_memory_area:
        (va,) = struct.unpack("<Q", ctx.guest.read(arg, 8))
        va &= 0xFFFFFFFF
        if va and va + 32 > ctx.guest.hole_start:
            raise fail(Errno.EFAULT, f"time area {va:#x} is not a guest address")
        tk.timers[vcpuid].time_area_va = va
        tk.publish(vcpu)
        return 0
    raise fail(Errno.ENOSYS, f"unknown vcpu_op {cmd}")
