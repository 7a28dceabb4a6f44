"""The 64-bit hypercall table: handlers whose arguments or structures have 64-bit
layouts (abi64.py), and the shared handlers whose ABI is the same for both.

A 64-bit PV guest issues ``syscall`` with RAX = number and RDI, RSI, RDX, R10, R8 the
arguments (xen/arch/x86/x86_64/entry.S, hypercall-defs.c pv64 column).  Handlers look
like the 32-bit ones (`fn(ctx, *args) -> int`, `fail(...)` for errors).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...machine.memory import PAGE_SHIFT, PAGE_SIZE
from ...trace import TraceKind, TraceRecord
from ..abi64 import (CallbackRegister64, MachphysMapping64, MemoryMap64, MemoryReservation64,
                     MmuextOp64,
                     MulticallEntry64, PlatformParameters64, SchedPoll64, TrapInfo64)
from ..abi import FeatureInfo
from ..callbacks import CallbackOp, CallbackType
from ..constants import (DOMID_SELF, Errno, Hc, MmuCmd, MmuextCmd, SchedOp, Uvmf, Vmasst, VmasstCmd,
                         XenMem, XenVer, errno_name)
from ..guestmem import GuestFault
from ..mm import DOMU_MAX_ORDER
from ..mmu import MEMOP_EXTENT_SHIFT
from ..hypercalls import HYPERCALLS, HypercallTable, Param, fail
from ..physdev import PhysdevOp
from ..xenfeatures import domu_feature_submap
from .layout import (HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, MACH2PHYS_VIRT_END,
                     MACH2PHYS_VIRT_START, is_canonical)
from .ldt import set_ldt
from .mm import PageType
from .traps import CALLBACKF_MASK_EVENTS, TrapEntry

if TYPE_CHECKING:
    from ..hypervisor import HypercallContext

HYPERCALLS64 = HypercallTable()
# Handlers of the shared table whose arguments mean the same for a 64-bit guest, or that
# pick the 64-bit structure layouts themselves (grant_table_op: grant_table.GrantAbi).
SHARED_WITH_64 = frozenset({Hc.console_io, Hc.event_channel_op, Hc.grant_table_op,
                            Hc.sched_op_compat})
MAX_MULTICALL_ENTRIES = 1 << 20
SEGBASE_FS, SEGBASE_GS_USER, SEGBASE_GS_KERNEL, SEGBASE_GS_USER_SEL = 0, 1, 2, 3


def lookup64(number: int):
    spec = HYPERCALLS64.get(number)
    if spec is None and number in SHARED_WITH_64:
        spec = HYPERCALLS.get(number)
    return spec


# -- xen_version, sched_op: 64-bit structures where they differ -----------------------
@HYPERCALLS64.handler(Hc.xen_version, Param("cmd", XenVer), Param("arg"))
def xen_version64(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    if cmd == XenVer.platform_parameters:
        ctx.guest.write(arg, PlatformParameters64(virt_start=HYPERVISOR_VIRT_START).to_bytes())
        return 0
    if cmd == XenVer.get_features:
        info = FeatureInfo.from_bytes(ctx.guest.read(arg, FeatureInfo.SIZE))
        if info.submap_idx != 0:
            raise fail(Errno.EINVAL, f"feature submap {info.submap_idx} does not exist")
        submap = domu_feature_submap(64, ctx.domain.vm_assist)
        ctx.guest.write(arg, FeatureInfo(0, submap).to_bytes())
        ctx.note(f"submap 0 = {submap:#010x}")
        return 0
    return HYPERCALLS.get(Hc.xen_version).fn(ctx, cmd, arg)


@HYPERCALLS64.handler(Hc.sched_op, Param("cmd", SchedOp), Param("arg"))
def sched_op64(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    if cmd == SchedOp.poll:
        poll = SchedPoll64.from_bytes(ctx.guest.read(arg, SchedPoll64.SIZE))
        if poll.nr_ports > 128:
            raise fail(Errno.EINVAL, f"nr_ports {poll.nr_ports} > 128")
        ports = [ctx.guest.read_u32(poll.ports + 4 * i) for i in range(poll.nr_ports)]
        ctx.note(f"ports {ports} timeout {poll.timeout}")
        return ctx.hv.poll_vcpu(ctx.vcpu, ports, poll.timeout)
    return HYPERCALLS.get(Hc.sched_op).fn(ctx, cmd, arg)


# -- traps and callbacks -----------------------------------------------------------------
@HYPERCALLS64.handler(Hc.set_trap_table, Param("traps"))
def set_trap_table64(ctx: "HypercallContext", traps: int) -> int:
    pv = ctx.vcpu.pv
    if traps == 0:
        pv.trap_table.clear()
        ctx.note("trap table cleared")
        return 0
    count = 0
    for i in range(256):
        info = TrapInfo64.from_bytes(ctx.guest.read(traps + i * TrapInfo64.SIZE, TrapInfo64.SIZE))
        if info.address == 0 and info.vector == 0 and info.flags == 0 and info.cs == 0:
            break
        if not is_canonical(info.address):
            raise fail(Errno.EINVAL, f"vector {info.vector}: non-canonical handler")
        pv.trap_table[info.vector] = TrapEntry(info.vector, info.flags, info.cs, info.address)
        count += 1
    ctx.note(f"{count} entries")
    return 0


def _register_callback(ctx: "HypercallContext", kind: int, address: int, flags: int) -> None:
    pv = ctx.vcpu.pv
    if address and not is_canonical(address):
        raise fail(Errno.EINVAL, f"non-canonical callback {address:#x}")
    mask = bool(flags & CALLBACKF_MASK_EVENTS)
    if kind == CallbackType.event:
        pv.event_callback, pv.event_mask = address, True
    elif kind == CallbackType.failsafe:
        pv.failsafe_callback, pv.failsafe_mask = address, mask
    elif kind == CallbackType.syscall:
        pv.syscall_callback, pv.syscall_mask = address, mask
    elif kind == CallbackType.nmi:
        pv.nmi_callback = address
    elif kind in (CallbackType.syscall32, CallbackType.sysenter):
        ctx.note("32-bit compat user-mode entry points are not used by pvdbg's 64-bit CPU")
    else:
        raise fail(Errno.EINVAL, f"callback type {kind}")


@HYPERCALLS64.handler(Hc.set_callbacks, Param("event_address"), Param("failsafe_address"),
                      Param("syscall_address"))
def set_callbacks64(ctx: "HypercallContext", event: int, failsafe: int, syscall: int) -> int:
    _register_callback(ctx, CallbackType.event, event, CALLBACKF_MASK_EVENTS)
    _register_callback(ctx, CallbackType.failsafe, failsafe, CALLBACKF_MASK_EVENTS)
    _register_callback(ctx, CallbackType.syscall, syscall, 0)
    return 0


@HYPERCALLS64.handler(Hc.callback_op, Param("cmd", CallbackOp), Param("arg"))
def callback_op64(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    if cmd == CallbackOp.register:
        reg = CallbackRegister64.from_bytes(ctx.guest.read(arg, CallbackRegister64.SIZE))
        _register_callback(ctx, reg.type, reg.address, reg.flags)
        ctx.note(f"{CallbackType(reg.type).name if reg.type in CallbackType._value2member_map_ else reg.type}"
                 f" -> {reg.address:#x}")
        return 0
    if cmd == CallbackOp.unregister:
        kind = ctx.guest.read_u32(arg) & 0xFFFF
        if kind == CallbackType.event:
            raise fail(Errno.EINVAL, "the event callback cannot be unregistered")
        _register_callback(ctx, kind, 0, 0)
        return 0
    raise fail(Errno.ENOSYS, f"callback_op {cmd}")


@HYPERCALLS64.handler(Hc.stack_switch, Param("ss"), Param("sp"))
def stack_switch64(ctx: "HypercallContext", ss: int, sp: int) -> int:
    ctx.vcpu.pv.kernel_ss, ctx.vcpu.pv.kernel_sp = ss & 0xFFFF, sp
    return 0


@HYPERCALLS64.handler(Hc.fpu_taskswitch, Param("set", "int"))
def fpu_taskswitch64(ctx: "HypercallContext", set_: int) -> int:
    from ...machine.cpu import CR0_TS
    cpu = ctx.hv.cpu
    ctx.vcpu.pv.fpu_ts = bool(set_)
    cr0 = cpu.read("cr0")
    cpu.write("cr0", cr0 | CR0_TS if set_ else cr0 & ~CR0_TS)
    return 0


@HYPERCALLS64.handler(Hc.set_segment_base, Param("which", "int"), Param("base"))
def set_segment_base64(ctx: "HypercallContext", which: int, base: int) -> int:
    cpu = ctx.hv.cpu
    pv = ctx.vcpu.pv
    if which in (SEGBASE_FS, SEGBASE_GS_USER, SEGBASE_GS_KERNEL) and not is_canonical(base):
        raise fail(Errno.EINVAL, f"non-canonical base {base:#x}")
    if which == SEGBASE_FS:
        cpu.write("fs_base", base)
    elif which == SEGBASE_GS_USER:
        if pv.kernel_mode:
            pv.gs_base_user = base
        else:
            cpu.write("gs_base", base)
    elif which == SEGBASE_GS_KERNEL:
        if pv.kernel_mode:
            cpu.write("gs_base", base)
        else:
            pv.gs_base_kernel = base
    elif which == SEGBASE_GS_USER_SEL:
        # Load the user GS selector; its base becomes the user GS base (0 for null).
        sel = base & 0xFFFF
        if sel & ~3:
            raise fail(Errno.EINVAL, f"GS selector {sel:#x}: only the null selector is "
                       "supported for user GS")
        pv.gs_base_user = 0
    else:
        raise fail(Errno.EINVAL, f"set_segment_base: unknown which {which}")
    return 0


@HYPERCALLS64.handler(Hc.iret)
def iret64(ctx: "HypercallContext") -> int:
    from .traps import GuestCrash
    try:
        return ctx.hv.traps.do_iret()
    except GuestCrash as crash:
        ctx.hv.crash_domain(str(crash))
        return 0


@HYPERCALLS64.handler(Hc.vm_assist, Param("cmd", VmasstCmd), Param("type", Vmasst))
def vm_assist64(ctx: "HypercallContext", cmd: int, type_: int) -> int:
    allowed = set(Vmasst)              # NATIVE_VM_ASSIST_VALID (xen/arch/x86/include/asm/config.h)
    if type_ not in allowed:
        raise fail(Errno.EINVAL, f"VMASST type {type_} does not exist")
    if cmd == VmasstCmd.enable:
        ctx.domain.vm_assist |= 1 << type_
    elif cmd == VmasstCmd.disable:
        ctx.domain.vm_assist &= ~(1 << type_)
    else:
        raise fail(Errno.ENOSYS, f"vm_assist cmd {cmd}")
    return 0


@HYPERCALLS64.handler(Hc.physdev_op, Param("cmd", PhysdevOp), Param("arg"))
def physdev_op64(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    if cmd == PhysdevOp.set_iopl:
        iopl = ctx.guest.read_u32(arg)
        if iopl > 3:
            raise fail(Errno.EINVAL, f"iopl {iopl} > 3")
        ctx.vcpu.pv.iopl = iopl
        ctx.note(f"virtual IOPL {iopl}")
        return 0
    if cmd == PhysdevOp.set_iobitmap:
        bitmap, nr_ports = struct.unpack("<QI", ctx.guest.read(arg, 12))
        if nr_ports > 65536:
            raise fail(Errno.EINVAL, f"nr_ports {nr_ports} > 65536")
        ctx.vcpu.pv.iobmp_va, ctx.vcpu.pv.iobmp_limit = bitmap, nr_ports
        return 0
    if cmd in (PhysdevOp.pirq_eoi_gmfn_v1, PhysdevOp.pirq_eoi_gmfn_v2):
        gmfn = ctx.guest.read_u64(arg)
        if not ctx.hv.mm.may_map(gmfn) or gmfn in ctx.hv.mm.shared_xen:
            raise fail(Errno.EINVAL, f"gmfn {gmfn:#x} is not a frame of this domain")
        ctx.note(f"PIRQ EOI bitmap at mfn {gmfn:#x} (no PIRQs will use it)")
        return 0
    return HYPERCALLS.get(Hc.physdev_op).fn(ctx, cmd, arg)


# -- memory management ---------------------------------------------------------------------
@HYPERCALLS64.handler(Hc.mmu_update, Param("reqs"), Param("count", "int"), Param("done"),
                      Param("domid"))
def mmu_update64(ctx: "HypercallContext", reqs: int, count: int, done_ptr: int,
                 domid: int) -> int:
    hv = ctx.hv
    if domid not in (0x7FF0, ctx.domain.domid):
        raise fail(Errno.ESRCH, f"domid {domid:#x} is not this domain")
    done = 0
    try:
        for i in range(count):
            ptr, val = struct.unpack("<QQ", ctx.guest.read(reqs + 16 * i, 16))
            cmd = ptr & 3
            if cmd in (MmuCmd.normal_pt_update, MmuCmd.pt_update_preserve_ad):
                hv.mm.mod_entry(ptr & ~7, val)
            elif cmd == MmuCmd.machphys_update:
                mfn = ptr >> PAGE_SHIFT
                if not hv.mm.may_map(mfn) or mfn in hv.mm.shared_xen:
                    raise fail(Errno.EINVAL, f"machphys_update of mfn {mfn:#x}")
                hv.set_m2p(mfn, val)
            else:
                raise fail(Errno.ENOSYS, f"mmu_update command {cmd}")
            done += 1
    finally:
        if done:
            hv.flush_guest_tlb()
        if done_ptr:
            try:
                ctx.guest.write(done_ptr, struct.pack("<I", done))
            except GuestFault:
                pass
        ctx.note(f"{done}/{count} done")
    return 0


def _walk_to_l1_entry(hv, va: int) -> int:
    """Machine address of the L1 entry mapping `va` in the current pagetable."""
    from .paging import walk_4level
    from ...machine.paging import PageWalkError
    try:
        walk = walk_4level(hv.memory, hv.cr3, va)
        return walk.l1_entry_maddr
    except PageWalkError as exc:
        if exc.level == 1 and len(exc.steps) == 4:
            return exc.steps[-1].entry_maddr
        raise fail(Errno.EINVAL, f"{va:#x}: {exc.reason}") from None


@HYPERCALLS64.handler(Hc.update_va_mapping, Param("va"), Param("val"), Param("flags", Uvmf))
def update_va_mapping64(ctx: "HypercallContext", va: int, val: int, flags: int) -> int:
    hv = ctx.hv
    if not is_canonical(va) or HYPERVISOR_VIRT_START <= va < HYPERVISOR_VIRT_END:
        raise fail(Errno.EINVAL, f"{va:#x} is not a guest address")
    entry = _walk_to_l1_entry(hv, va)
    if hv.mm.count[entry >> PAGE_SHIFT] == 0 or hv.mm.type[entry >> PAGE_SHIFT] != PageType.l1:
        raise fail(Errno.EINVAL, f"the L1 mapping {va:#x} is not a validated L1 table")
    hv.mm.mod_entry(entry, val)
    hv.flush_guest_tlb()
    return 0


@HYPERCALLS64.handler(Hc.mmuext_op, Param("ops"), Param("count", "int"), Param("done"),
                      Param("domid"))
def mmuext_op64(ctx: "HypercallContext", ops: int, count: int, done_ptr: int,
                domid: int) -> int:
    hv = ctx.hv
    mm = hv.mm
    if domid not in (0x7FF0, ctx.domain.domid):
        raise fail(Errno.ESRCH, f"domid {domid:#x} is not this domain")
    done = 0
    names = []
    try:
        for i in range(count):
            op = MmuextOp64.from_bytes(ctx.guest.read(ops + i * MmuextOp64.SIZE, MmuextOp64.SIZE))
            cmd = op.cmd
            names.append(MmuextCmd(cmd).name if cmd in MmuextCmd._value2member_map_ else str(cmd))
            if MmuextCmd.pin_l1_table <= cmd <= MmuextCmd.pin_l4_table:
                mm.pin(op.arg1, cmd - MmuextCmd.pin_l1_table + 1)
            elif cmd == MmuextCmd.unpin_table:
                mm.unpin(op.arg1)
            elif cmd == MmuextCmd.new_baseptr:
                hv.new_baseptr(ctx.vcpu, op.arg1)
            elif cmd == MmuextCmd.new_user_baseptr:
                hv.new_user_baseptr(ctx.vcpu, op.arg1)
            elif cmd in (MmuextCmd.tlb_flush_local, MmuextCmd.tlb_flush_multi,
                         MmuextCmd.tlb_flush_all, MmuextCmd.invlpg_local,
                         MmuextCmd.invlpg_multi, MmuextCmd.invlpg_all,
                         MmuextCmd.flush_cache, MmuextCmd.flush_cache_global):
                hv.flush_guest_tlb()
            elif cmd == MmuextCmd.set_ldt:
                ctx.note(set_ldt(hv, ctx.vcpu, op.arg1, op.arg2))
            elif cmd == MmuextCmd.clear_page:
                mfn = op.arg1
                if not mm.may_map(mfn) or mm.count[mfn] and mm.type[mfn] != PageType.writable:
                    raise fail(Errno.EINVAL, f"clear_page of mfn {mfn:#x}")
                hv.memory.zero_frame(mfn)
            elif cmd == MmuextCmd.copy_page:
                dst, src = op.arg1, op.arg2
                if not (mm.may_map(dst) and mm.may_map(src)) or \
                        mm.count[dst] and mm.type[dst] != PageType.writable:
                    raise fail(Errno.EINVAL, f"copy_page {src:#x} -> {dst:#x}")
                hv.memory.write(dst << PAGE_SHIFT, hv.memory.read(src << PAGE_SHIFT, PAGE_SIZE))
            else:
                raise fail(Errno.ENOSYS, f"mmuext_op command {cmd}")
            done += 1
    finally:
        if done_ptr:
            try:
                ctx.guest.write(done_ptr, struct.pack("<I", done))
            except GuestFault:
                pass
        ctx.note(", ".join(names))
    return 0


@HYPERCALLS64.handler(Hc.set_gdt, Param("frame_list"), Param("entries", "int"))
def set_gdt64(ctx: "HypercallContext", frame_list: int, entries: int) -> int:
    hv = ctx.hv
    if entries > 14 * 512:
        raise fail(Errno.EINVAL, f"{entries} GDT entries reach Xen's reserved page")
    nr = (entries + 511) // 512
    frames = [ctx.guest.read_u64(frame_list + 8 * i) for i in range(nr)]
    taken = []
    try:
        for mfn in frames:
            hv.mm.get_page_type(mfn, PageType.seg_desc)
            taken.append(mfn)
            fixup_descriptors(hv.memory, mfn)
    except Exception:
        for mfn in taken:
            hv.mm.put_page_type(mfn)
        raise
    hv.install_gdt(ctx.vcpu, frames, entries)
    ctx.note(f"{nr} frames, {entries} entries")
    return 0


def fixup_descriptors(memory, mfn: int) -> None:
    """check_descriptor for a 64-bit PV guest on every entry of a GDT frame: code and
    data descriptors get DPL 3 (the guest kernel runs at CPL 3); system descriptors
    (TSS, LDT, gates) are refused."""
    base = mfn << PAGE_SHIFT
    for i in range(512):
        desc = memory.read_u64(base + i * 8)
        access = (desc >> 40) & 0xFF
        if not access & 0x80:
            continue
        if not access & 0x10:
            raise fail(Errno.EINVAL, f"GDT entry {i}: system descriptor type {access & 0xF:#x}")
        if (access >> 5) & 3 != 3:
            memory.write_u64(base + i * 8, desc | (3 << 45))


@HYPERCALLS64.handler(Hc.update_descriptor, Param("maddr"), Param("desc"))
def update_descriptor64(ctx: "HypercallContext", maddr: int, desc: int) -> int:
    hv = ctx.hv
    mfn = maddr >> PAGE_SHIFT
    if maddr & 7 or not hv.mm.may_map(mfn):
        raise fail(Errno.EINVAL, f"descriptor address {maddr:#x}")
    access = (desc >> 40) & 0xFF
    if access & 0x80:
        if not access & 0x10:
            raise fail(Errno.EINVAL, f"system descriptor type {access & 0xF:#x}")
        if (access >> 5) & 3 != 3:
            desc |= 3 << 45
    if hv.mm.count[mfn] and hv.mm.type[mfn] not in (PageType.seg_desc, PageType.writable):
        raise fail(Errno.EINVAL, f"mfn {mfn:#x} is a pagetable")
    hv.memory.write_u64(maddr, desc)
    return 0


@HYPERCALLS64.handler(Hc.memory_op, Param("cmd", XenMem), Param("arg"))
def memory_op64(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    hv = ctx.hv
    op = cmd & 0x3F
    if op == XenMem.memory_map:
        mmap = MemoryMap64.from_bytes(ctx.guest.read(arg, MemoryMap64.SIZE))
        entries = hv.built.memory_map
        if not entries:
            raise fail(Errno.ENOSYS, "the toolstack set no memory map")
        count = min(len(entries), mmap.nr_entries)
        data = b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries[:count])
        ctx.guest.write(mmap.buffer, data)
        ctx.guest.write(arg, MemoryMap64(nr_entries=count, buffer=mmap.buffer).to_bytes())
        return 0
    if op in (XenMem.current_reservation, XenMem.maximum_reservation):
        domid = struct.unpack("<H", ctx.guest.read(arg, 2))[0]
        if domid not in (0x7FF0, ctx.domain.domid):
            raise fail(Errno.ESRCH, f"domid {domid:#x}")
        return hv.nr_guest_pages()
    if op == XenMem.maximum_ram_page:
        return hv.memory.nr_frames - 1
    if op == XenMem.maximum_gpfn:
        return len(hv.built.p2m) - 1
    if op == XenMem.machphys_mapping:
        ctx.guest.write(arg, MachphysMapping64(
            v_start=MACH2PHYS_VIRT_START, v_end=MACH2PHYS_VIRT_END,
            max_mfn=(MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) // 8 - 1).to_bytes())
        return 0
    if op == XenMem.decrease_reservation:
        return _decrease_reservation64(ctx, arg, cmd >> MEMOP_EXTENT_SHIFT)
    raise fail(Errno.ENOSYS, f"memory_op {XenMem(op).name if op in XenMem._value2member_map_ else op}"
               " is not provided for 64-bit guests yet")


def _decrease_reservation64(ctx: "HypercallContext", arg: int, start: int) -> int:
    """XENMEM_decrease_reservation: the domain gives back extents of frames it names by
    MFN (a PV domain's gmfn); each frame is unpinned if pinned and returns, scrubbed, to
    the free pool.  A frame still typed (a live pagetable, descriptor table or writable
    mapping) stops the batch there, as this frame table cannot defer the free.
    Returns the extents done.  ABI: xen/common/memory.c decrease_reservation,
    guest_remove_page; xen/include/public/memory.h struct xen_memory_reservation."""
    hv = ctx.hv
    mm = hv.mm
    try:
        r = MemoryReservation64.from_bytes(ctx.guest.read(arg, MemoryReservation64.SIZE))
    except GuestFault as fault:
        ctx.note(f"reservation unreadable: {fault}")
        return start
    if start >= r.nr_extents or r.domid not in (DOMID_SELF, ctx.domain.domid):
        ctx.note(f"nothing to do (start {start}, {r.nr_extents} extents, d{r.domid})")
        return start
    if r.extent_order > DOMU_MAX_ORDER:
        ctx.note(f"extent order {r.extent_order} above the domU limit {DOMU_MAX_ORDER}")
        return start
    done = start
    for i in range(start, r.nr_extents):
        try:
            gmfn = ctx.guest.read_u64(r.extent_start + 8 * i)
        except GuestFault as fault:
            ctx.note(f"extent {i}: {fault}")
            break
        why = ""
        for mfn in range(gmfn, gmfn + (1 << r.extent_order)):
            if not mm.get_page(mfn):
                why = f"{mm.not_ours(mfn)}"
                break
            if mfn in mm.pinned:
                mm.unpin(mfn)
            if mm.count[mfn]:
                why = f"{mm.describe(mfn)}: still in use"
                break
            mm.take_back(mfn)
            hv.memory.zero_frame(mfn)
            hv.built.free_mfns.append(mfn)
        if why:
            ctx.note(f"extent {i}: {why}")
            break
        done = i + 1
    hv.flush_guest_tlb()
    ctx.note(f"{done - start} of {r.nr_extents - start} extents given back; the domain has "
             f"{hv.nr_guest_pages()} pages")
    return done


# -- multicall ----------------------------------------------------------------------------
@HYPERCALLS64.handler(Hc.multicall, Param("call_list"), Param("nr_calls", "int"))
def multicall64(ctx: "HypercallContext", call_list: int, nr_calls: int) -> int:
    hv = ctx.hv
    if nr_calls > MAX_MULTICALL_ENTRIES:
        raise fail(Errno.EINVAL, f"{nr_calls} entries")
    if hv.in_multicall:
        raise fail(Errno.EINVAL, "multicall reentry is disallowed")
    hv.in_multicall = True
    parent = hv.current_hypercall_seq
    rip = hv.cpu.read("rip")
    symbol = hv.symbolize(rip)
    try:
        for i in range(nr_calls):
            va = call_list + i * MulticallEntry64.SIZE
            try:
                entry = MulticallEntry64.from_bytes(ctx.guest.read(va, MulticallEntry64.SIZE))
            except GuestFault as fault:
                ctx.note(f"entry {i} unreadable: {fault.reason}")
                return -Errno.EFAULT
            args = struct.unpack("<6Q", entry.args)
            sub = type(ctx)(hv, ctx.vcpu)
            seq = hv.trace.next_seq()
            hv.current_hypercall_seq = seq
            icount = hv.cpu.icount
            name, decoded, result = hv.dispatch_hypercall(sub, entry.op, args)
            hv.current_hypercall_seq = parent
            if result is not None:
                try:
                    ctx.guest.write_u64(va + 8, result)
                except GuestFault as fault:
                    ctx.note(f"entry {i} result not writable: {fault.reason}")
                    return -Errno.EFAULT
            hv.emit(TraceRecord(
                seq=seq, kind=TraceKind.multicall_entry, icount=icount, vcpu=ctx.vcpu.vcpu_id,
                eip=rip, name=name, args=decoded, result=result,
                error=errno_name(result or 0), symbol=symbol,
                detail="; ".join([f"entry {i}"] + sub.details), parent=parent))
            if hv.domain.is_dying:
                return 0
        ctx.note(f"{nr_calls} entries")
        return 0
    finally:
        hv.in_multicall = False





# -- vcpu_op, debug registers ----------------------------------------------------------
RUNSTATE_RUNNING, RUNSTATE_BLOCKED, RUNSTATE_OFFLINE = 0, 2, 3
RUNSTATE_INFO64 = struct.Struct("<iI5Q")         # state, pad, state_entry_time, time[4]


def runstate_bytes(hv, vcpu) -> bytes:
    """struct vcpu_runstate_info (x86_64 layout): the vcpu ran since boot, except the
    time it spent blocked.  ABI: xen/include/public/vcpu.h."""
    now = hv.time.now_ns() if hasattr(hv, "time") else 0
    state = RUNSTATE_BLOCKED if vcpu.blocked else RUNSTATE_RUNNING if vcpu.online else \
        RUNSTATE_OFFLINE
    return RUNSTATE_INFO64.pack(state, 0, now, now, 0, 0, 0)


@HYPERCALLS64.handler(Hc.vcpu_op, Param("cmd", "int"), Param("vcpuid", "int"), Param("arg"))
def vcpu_op64(ctx: "HypercallContext", cmd: int, vcpuid: int, arg: int) -> int:
    from ..vcpu_op import VcpuOp
    hv = ctx.hv
    if not 0 <= vcpuid < len(hv.vcpus):
        raise fail(Errno.ENOENT, f"no vcpu {vcpuid}")
    vcpu = hv.vcpus[vcpuid]
    if cmd == VcpuOp.is_up:
        return int(vcpu.online)
    if cmd == VcpuOp.get_runstate_info:
        ctx.guest.write(arg, runstate_bytes(hv, vcpu))
        return 0
    if cmd == VcpuOp.register_runstate_memory_area:
        area = ctx.guest.read_u64(arg)
        if area:
            ctx.guest.write(area, runstate_bytes(hv, vcpu))
        hv.runstate_areas[vcpuid] = area
        ctx.note(f"runstate area at {area:#x}")
        return 0
    if cmd == VcpuOp.register_vcpu_info:
        mfn, offset, _rsvd = struct.unpack("<QII", ctx.guest.read(arg, 16))
        if offset > PAGE_SIZE - 64 or offset & 7:
            raise fail(Errno.EINVAL, f"offset {offset:#x} must be 8-aligned and leave 64 bytes")
        if vcpuid in hv.vcpu_info_moved:
            raise fail(Errno.EINVAL, "vcpu_info is already registered for this vcpu")
        hv.mm.get_page_type(mfn, PageType.writable)
        old = hv.vcpu_info_maddr(vcpuid)
        new = (mfn << PAGE_SHIFT) + offset
        data = bytearray(hv.memory.read(old, 64))
        hv.memory.write(new, bytes(data))
        hv.vcpu_info_moved[vcpuid] = new
        ctx.note(f"vcpu_info -> mfn {mfn:#x} + {offset:#x}")
        return 0
    if cmd == VcpuOp.set_singleshot_timer:
        deadline, flags = struct.unpack("<QI", ctx.guest.read(arg, 12))
        now = hv.time.now_ns()
        if flags & 1 and deadline < now:                  # VCPU_SSHOTTMR_future
            raise fail(Errno.ETIME, f"deadline {deadline} ns is in the past (now {now})")
        hv.time.set_singleshot(vcpu, deadline)
        ctx.note(f"VIRQ_TIMER at {deadline} ns (in {deadline - now} ns)")
        return 0
    if cmd == VcpuOp.stop_singleshot_timer:
        hv.time.set_singleshot(vcpu, None)
        return 0
    if cmd == VcpuOp.set_periodic_timer:
        period = ctx.guest.read_u64(arg)
        if period < 1_000_000:
            raise fail(Errno.EINVAL, f"period {period} ns is below 1 ms")
        hv.time.set_periodic(vcpu, period)
        return 0
    if cmd == VcpuOp.stop_periodic_timer:
        hv.time.set_periodic(vcpu, 0)
        return 0
    name = VcpuOp(cmd).name if cmd in VcpuOp._value2member_map_ else str(cmd)
    raise fail(Errno.ENOSYS, f"VCPUOP_{name} is not provided for 64-bit guests yet")


@HYPERCALLS64.handler(Hc.get_debugreg, Param("reg", "int"))
def get_debugreg64(ctx: "HypercallContext", reg: int) -> int:
    if reg not in (0, 1, 2, 3, 6, 7):
        raise fail(Errno.EINVAL, f"debug register {reg}")
    return ctx.hv.cpu.read(f"dr{reg}")


@HYPERCALLS64.handler(Hc.set_debugreg, Param("reg", "int"), Param("value"))
def set_debugreg64(ctx: "HypercallContext", reg: int, value: int) -> int:
    if reg in (0, 1, 2, 3):
        if not is_canonical(value) or HYPERVISOR_VIRT_START <= value < HYPERVISOR_VIRT_END:
            raise fail(Errno.EPERM, f"breakpoint address {value:#x} is not the guest's")
    elif reg == 6:
        value = (value & 0xE00F) | 0xFFFF0FF0
    elif reg == 7:
        if value & 0x2000:
            raise fail(Errno.EPERM, "DR7.GD is not available to PV guests")
        value = (value & 0xFFFF23FF) | 0x400
    else:
        raise fail(Errno.EINVAL, f"debug register {reg}")
    ctx.hv.cpu.write(f"dr{reg}", value)
    return 0


@HYPERCALLS64.handler(Hc.set_timer_op, Param("timeout"))
def set_timer_op64(ctx: "HypercallContext", timeout: int) -> int:
    """One-shot VIRQ_TIMER at absolute system time `timeout` ns (one 64-bit register);
    0 cancels.  ABI: xen/common/sched/core.c do_set_timer_op."""
    from ..time import sanitise_timeout
    tk = ctx.hv.time
    if timeout == 0:
        tk.set_singleshot(ctx.vcpu, None)
        return 0
    now = tk.now_ns()
    deadline = sanitise_timeout(now, timeout)
    tk.set_singleshot(ctx.vcpu, deadline)
    ctx.note(f"VIRQ_TIMER at {deadline} ns (now {now})")
    return 0
