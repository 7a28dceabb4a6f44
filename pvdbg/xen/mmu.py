"""Xen's memory-management hypercalls for a 32-bit PV guest: mmu_update, mmuext_op,
update_va_mapping(_otherdomain), vm_assist and memory_op.

The command semantics (`do_mmu_update`, `do_mmuext_op`, `do_update_va_mapping`) work on
a `MmuEnv` -- the frame table plus the few things they touch outside it (TLB, CR3, LDT,
guest reads) -- so tests can drive them without a CPU; the registered handlers read the
guest's request arrays and build the env from the hypervisor.

ABI: xen/include/public/xen.h (mmu_update, mmuext_op, MMU_*, MMUEXT_*, UVMF_*,
VMASST_*), xen/include/public/memory.h (XENMEM_*), xen/arch/x86/mm.c (do_mmu_update,
do_mmuext_op, __do_update_va_mapping, arch_memory_op), xen/arch/x86/x86_64/compat/mm.c,
xen/common/memory.c, xen/common/domain.c (vm_assist); XEN-PV-ABI.md 3.2-3.4, 3.14, 4.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Protocol

from ..machine.memory import PAGE_SHIFT, PAGE_SIZE
from ..trace import TraceKind, TraceRecord
from .abi import MachphysMapping32, MmuextOp32, MmuUpdate, abi_struct, at
from .constants import (DOMID_IO, DOMID_SELF, DOMID_XEN, Errno, Hc, HYPERVISOR_VIRT_START_PAE,
                        MACH2PHYS_COMPAT_VIRT_END, UVMF_LOCAL, MmuCmd, MmuextCmd, Uvmf,
                        VmasstCmd, XenMem)
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, HypercallError, Param, fail
from .mm import (DOMU_MAX_ORDER, INVALID_M2P_ENTRY, PTE_P, MemoryManager, MmEvents, Owner,
                 PageInfo, PageType, PageTypeEvent, pte_mfn)

if TYPE_CHECKING:
    from .hypervisor import HypercallContext, Hypervisor

MMU_UPDATE_PREEMPTED = 0x80000000
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1
MAX_LDT_ENTRIES = 8192
# VMASST types a 32-bit PV guest may use (PV32_VM_ASSIST_MASK): 0..5.
PV32_VM_ASSIST_MASK = 0x3F
XENMEMF_VNODE = 1 << 18
XENMEMF_EXACT_NODE_REQUEST = 1 << 17
E820MAX = 1024
XENMAPSPACE_GMFN_FOREIGN = 4
_PIN_TYPES = {MmuextCmd.pin_l1_table: PageType.l1, MmuextCmd.pin_l2_table: PageType.l2,
              MmuextCmd.pin_l3_table: PageType.l3, MmuextCmd.pin_l4_table: PageType.l4}


@abi_struct(size=20, source="xen/include/public/memory.h struct xen_memory_reservation (compat)")
class MemoryReservation32:
    extent_start: int = at(0, "I")          # guest VA of u32 frame numbers
    nr_extents: int = at(4, "I")
    extent_order: int = at(8, "I")
    mem_flags: int = at(12, "I")            # XENMEMF_*: address bits in 7:0
    domid: int = at(16, "H")


@abi_struct(size=8, source="xen/include/public/memory.h struct xen_memory_map (compat)")
class MemoryMap32:
    nr_entries: int = at(0, "I")
    buffer: int = at(4, "I")                # guest VA of e820 entries


@abi_struct(size=12, source="xen/include/public/memory.h struct xen_foreign_memory_map (compat)")
class ForeignMemoryMap32:
    domid: int = at(0, "H")
    nr_entries: int = at(4, "I")
    buffer: int = at(8, "I")


@abi_struct(size=12, source="xen/include/public/memory.h struct xen_machphys_mfn_list (compat)")
class MachphysMfnList32:
    max_extents: int = at(0, "I")
    extent_start: int = at(4, "I")          # guest VA of u32 MFNs
    nr_extents: int = at(8, "I")


@abi_struct(size=20, source="xen/arch/x86/include/asm/e820.h struct e820entry")
class E820Entry:
    addr: int = at(0, "Q")
    size: int = at(8, "Q")
    type: int = at(16, "I")


@abi_struct(size=16, source="xen/include/public/memory.h struct xen_add_to_physmap (compat)")
class AddToPhysmap32:
    domid: int = at(0, "H")
    size: int = at(2, "H")
    space: int = at(4, "I")
    idx: int = at(8, "I")
    gpfn: int = at(12, "I")


# -- the environment the commands act on --------------------------------------------------
class MmuEnv(Protocol):
    mm: MemoryManager
    vcpu_id: int
    nr_vcpus: int

    def flush_tlb(self) -> None: ...
    def load_cr3(self, mfn: int) -> None: ...
    def set_ldt(self, base: int, ents: int) -> bool: ...
    def destroy_ldt(self) -> bool: ...
    def read_u32(self, guest_va: int) -> int: ...
    def frame_written(self, mfn: int) -> None: ...


def handle_okay(guest_va: int, count: int, size: int) -> bool:
    """compat_handle_okay(): the array lies below the hypervisor hole."""
    return guest_va + count * size <= HYPERVISOR_VIRT_START_PAE


def get_pg_owner(mm: MemoryManager, domid: int) -> Owner | None:
    """get_pg_owner(): the owner of the frames to map.  DOMID_SELF is the domain;
    DOMID_IO gives None (I/O frames, matching no RAM); naming itself or an unknown
    domain is -ESRCH; DOMID_XEN gives Owner.xen (refused later by XSM)."""
    if domid == DOMID_SELF:
        return Owner.domain
    if domid == mm.domid:
        raise fail(Errno.ESRCH, f"d{mm.domid} cannot specify itself as foreign domain")
    if domid == DOMID_IO:
        return None
    if domid == DOMID_XEN:
        return Owner.xen
    raise fail(Errno.ESRCH, f"unknown domain d{domid}")


def read_vcpumask(env: MmuEnv, guest_va: int) -> set[int]:
    """vcpumask_to_pcpumask(): u32 words of a vcpu bitmap; -EFAULT if unreadable."""
    vcpus: set[int] = set()
    for word in range((env.nr_vcpus + 31) // 32):
        try:
            bits = env.read_u32(guest_va + word * 4)
        except GuestFault as fault:
            raise fail(Errno.EFAULT, f"vcpu mask: {fault}") from None
        vcpus |= {word * 32 + b for b in range(32)
                  if bits >> b & 1 and word * 32 + b < env.nr_vcpus}
    return vcpus


# -- mmu_update ---------------------------------------------------------------------------
def do_mmu_update(env: MmuEnv, fetch: Callable[[int], tuple[int, int]], count: int,
                  foreigndom: int) -> tuple[int, HypercallError | None]:
    """do_mmu_update(): process requests 0..count-1 (`fetch(i)` -> (ptr, val), raising
    GuestFault); stop at the first failure.  Returns (requests done, the failure)."""
    mm = env.mm
    pt_dom = foreigndom >> 16
    if pt_dom and pt_dom - 1 != mm.domid:
        raise fail(Errno.ESRCH, f"pagetable owner d{pt_dom - 1} does not exist")
    try:
        pg_owner = get_pg_owner(mm, foreigndom & 0xFFFF)
    except HypercallError as err:
        return 0, err
    flush = False
    done = 0
    error: HypercallError | None = None
    for i in range(count):
        try:
            ptr, val = fetch(i)
        except GuestFault as fault:
            error = fail(Errno.EFAULT, f"request {i}: {fault}")
            break
        try:
            flush |= _mmu_update_one(env, ptr, val, pg_owner)
        except HypercallError as err:
            error = fail(err.errno, f"request {i} (ptr {ptr:#x}, val {val:#x}): {err.why}")
            break
        done += 1
    if flush:
        env.flush_tlb()          # Xen flushes after L2/L3 updates
    return done, error


def _mmu_update_one(env: MmuEnv, ptr: int, val: int, pg_owner: Owner | None) -> bool:
    """One request; True if it changed an L2/L3 (a TLB flush follows the batch)."""
    mm = env.mm
    cmd = ptr & 7
    if cmd in (MmuCmd.normal_pt_update, MmuCmd.pt_update_preserve_ad,
               MmuCmd.pt_update_no_translate):
        if pg_owner is Owner.xen:
            raise fail(Errno.EPERM, "XSM: d%d may not map Xen's frames" % mm.domid)
        ptr &= ~7
        mfn = ptr >> PAGE_SHIFT
        index = (ptr & (PAGE_SIZE - 1)) >> 3
        if not mm.get_page(mfn):
            raise fail(Errno.EINVAL, f"Could not get page for normal update: {mm.not_ours(mfn)}")
        preserve_ad = cmd == MmuCmd.pt_update_preserve_ad
        try:
            pi = mm.page(mfn)
            if pi.validated and pi.type_count:                        # page_lock()
                if pi.type is PageType.l1:
                    mm.mod_l1_entry(mfn, index, val, preserve_ad=preserve_ad,
                                    pg_owner=pg_owner)
                    return False
                if pi.type in (PageType.l2, PageType.l3):
                    if pg_owner is not Owner.domain:
                        raise fail(Errno.EINVAL, f"{pi.type.label} updates need the pagetable "
                                                 "owner as page owner")
                    if pi.type is PageType.l2:
                        mm.mod_l2_entry(mfn, index, val, preserve_ad=preserve_ad)
                    else:
                        mm.mod_l3_entry(mfn, index, val, preserve_ad=preserve_ad)
                    return True
                if pi.type is PageType.writable:
                    mm.write_entry(mfn, index, val)
                    return False
                raise fail(Errno.EINVAL, f"{mm.describe(mfn)}: mmu_update cannot write it")
            try:
                mm.get_page_type(mfn, PageType.writable)
            except HypercallError:
                raise fail(Errno.EINVAL, f"{mm.describe(mfn)}: not a validated pagetable and "
                                         "cannot be written as a plain page") from None
            mm.write_entry(mfn, index, val)
            mm.put_page_type(mfn)
            return False
        finally:
            mm.put_page(mfn)
    if cmd == MmuCmd.machphys_update:
        if pg_owner is Owner.xen:
            raise fail(Errno.EPERM, "XSM: d%d may not update Xen's M2P entries" % mm.domid)
        mfn = ptr >> PAGE_SHIFT
        if pg_owner is None or not mm.get_page(mfn, pg_owner):
            raise fail(Errno.EINVAL, f"Could not get page for mach->phys update: "
                                     f"{mm.not_ours(mfn)}")
        mm.m2p_set(mfn, val & 0xFFFFFFFF)
        mm.put_page(mfn)
        return False
    raise fail(Errno.ENOSYS, f"unknown mmu_update command {cmd}")


# -- mmuext_op ------------------------------------------------------------------------------
def do_mmuext_op(env: MmuEnv, fetch: Callable[[int], tuple[int, int, int]], count: int,
                 foreigndom: int) -> tuple[int, HypercallError | None]:
    """do_mmuext_op() with the compat translation: ops 0..count-1 (`fetch(i)` ->
    (cmd, arg1, arg2)).  Returns (ops done, the failure).  A foreign domain is refused
    before any op (-ESRCH, or XSM's -EPERM)."""
    pg_owner = get_pg_owner(env.mm, foreigndom & 0xFFFF)
    if pg_owner is not Owner.domain:
        raise fail(Errno.EPERM, f"XSM: d{env.mm.domid} may not run mmuext ops on another domain")
    done = 0
    for i in range(count):
        try:
            cmd, arg1, arg2 = fetch(i)
        except GuestFault as fault:
            return done, fail(Errno.EFAULT, f"op {i}: {fault}")
        try:
            _mmuext_one(env, cmd, arg1, arg2)
        except HypercallError as err:
            hint = _pfn_hint(env.mm, cmd, arg1)
            return done, fail(err.errno, f"op {i} ({_cmd_name(cmd)}): {err.why}{hint}")
        done += 1
    return done, None


def _pfn_hint(mm: MemoryManager, cmd: int, arg1: int) -> str:
    """A hint when an MFN argument looks like the PFN of the frame the guest meant."""
    if cmd in _PIN_TYPES:
        return mm.pfn_hint(arg1, _PIN_TYPES[cmd])
    if cmd == MmuextCmd.new_baseptr:
        return mm.pfn_hint(arg1, PageType.l3)
    if cmd == MmuextCmd.unpin_table:
        return mm.pfn_hint(arg1, PageType.none, pinned=True)
    return ""


def _cmd_name(cmd: int) -> str:
    try:
        return "MMUEXT_" + MmuextCmd(cmd).name.upper()
    except ValueError:
        return f"cmd {cmd}"


def _mmuext_one(env: MmuEnv, cmd: int, arg1: int, arg2: int) -> None:
    mm = env.mm
    if cmd in _PIN_TYPES:
        mm.pin(arg1, _PIN_TYPES[cmd])
    elif cmd == MmuextCmd.unpin_table:
        mm.unpin(arg1)
    elif cmd == MmuextCmd.new_baseptr:
        mm.new_baseptr(env.vcpu_id, arg1)
        env.destroy_ldt()
        env.load_cr3(arg1)
    elif cmd == MmuextCmd.new_user_baseptr:
        raise fail(Errno.EINVAL, "NEW_USER_BASEPTR is for 64-bit guests only")
    elif cmd in (MmuextCmd.tlb_flush_local, MmuextCmd.invlpg_local, MmuextCmd.tlb_flush_all,
                 MmuextCmd.invlpg_all):
        env.flush_tlb()
    elif cmd in (MmuextCmd.tlb_flush_multi, MmuextCmd.invlpg_multi):
        try:
            vcpus = read_vcpumask(env, arg2)
        except HypercallError as err:
            raise fail(Errno.EINVAL, err.why) from None
        if env.vcpu_id in vcpus:
            env.flush_tlb()
    elif cmd == MmuextCmd.flush_cache:
        raise fail(Errno.EACCES, "cache flushes need I/O memory or port rights")
    elif cmd == MmuextCmd.flush_cache_global:
        raise fail(Errno.EINVAL, "cache flushes need I/O memory or port rights")
    elif cmd == MmuextCmd.set_ldt:
        ents, base = arg2, (arg1 if arg2 else 0)
        if ents > MAX_LDT_ENTRIES or (ents and base & (PAGE_SIZE - 1)):
            raise fail(Errno.EINVAL, f"Bad args to SET_LDT: ptr={base:#x}, ents={ents:#x}")
        if env.set_ldt(base, ents):
            env.flush_tlb()
    elif cmd == MmuextCmd.clear_page:
        _with_writable(mm, arg1, "clearing", lambda: mm.memory.zero_frame(arg1))
        env.frame_written(arg1)
    elif cmd == MmuextCmd.copy_page:
        if not mm.get_page(arg2):
            raise fail(Errno.EINVAL, f"Error copying from mfn {arg2:#x}: {mm.not_ours(arg2)}")
        try:
            _with_writable(mm, arg1, "copying to", lambda: mm.memory.write(
                arg1 << PAGE_SHIFT, mm.memory.read(arg2 << PAGE_SHIFT, PAGE_SIZE)))
        finally:
            mm.put_page(arg2)
        env.frame_written(arg1)
    elif cmd in (MmuextCmd.mark_super, MmuextCmd.unmark_super):
        raise fail(Errno.EOPNOTSUPP, "superpage marking was removed from Xen")
    else:
        raise fail(Errno.ENOSYS, f"unknown mmuext command {cmd}")


def _with_writable(mm: MemoryManager, mfn: int, verb: str, action: Callable[[], None]) -> None:
    """Run `action` while `mfn` holds a writable type reference (CLEAR/COPY_PAGE)."""
    if not mm.get_page(mfn):
        raise fail(Errno.EINVAL, f"Error {verb} mfn {mfn:#x}: {mm.not_ours(mfn)}")
    try:
        mm.get_page_type(mfn, PageType.writable)
    except HypercallError:
        mm.put_page(mfn)
        raise fail(Errno.EINVAL, f"Error {verb} {mm.describe(mfn)}: it cannot take the "
                                 "writable type") from None
    try:
        action()
    finally:
        mm.put_page_and_type(mfn)


# -- update_va_mapping --------------------------------------------------------------------
def guest_l1_location(mm: MemoryManager, cr3_mfn: int | None, va: int) -> tuple[int, int] | None:
    """map_guest_l1e(): (L1 mfn, index) of the entry mapping `va` in the current
    tables, or None if the L3/L2 entry is absent or a superpage."""
    if cr3_mfn is None:
        return None
    l3e = mm.read_entry(cr3_mfn, (va >> 30) & 3)
    if not l3e & PTE_P or not mm.frame_valid(pte_mfn(l3e)):
        return None
    l2e = mm.read_entry(pte_mfn(l3e), (va >> 21) & 0x1FF)
    if l2e & (PTE_P | 0x80) != PTE_P or not mm.frame_valid(pte_mfn(l2e)):
        return None
    return pte_mfn(l2e), (va >> 12) & 0x1FF


def do_update_va_mapping(env: MmuEnv, va: int, pte: int, flags: int,
                         pg_owner: Owner | None = Owner.domain) -> None:
    """__do_update_va_mapping(): the L1 entry of `va` (through the current tables)
    becomes `pte` under the L1 rules, then the UVMF_* flush."""
    mm = env.mm
    va &= 0xFFFFFFFF
    where = guest_l1_location(mm, mm.vcpu_cr3[env.vcpu_id], va)
    if where is None:
        raise fail(Errno.EINVAL, f"no L1 pagetable maps {va:#x} (L3/L2 entry not present)")
    l1mfn, index = where
    if not mm.get_page(l1mfn):
        raise fail(Errno.EINVAL, f"the L1 for {va:#x}: {mm.not_ours(l1mfn)}")
    try:
        pi = mm.page(l1mfn)
        if pi.type is not PageType.l1 or not pi.validated or not pi.type_count:
            raise fail(Errno.EINVAL, f"{mm.describe(l1mfn)} maps {va:#x} but is not a "
                                     "validated L1")
        mm.mod_l1_entry(l1mfn, index, pte, pg_owner=pg_owner)
    finally:
        mm.put_page(l1mfn)
    flush_type = flags & Uvmf.flushtype_mask
    target = flags & ~Uvmf.flushtype_mask
    if flush_type not in (Uvmf.tlb_flush, Uvmf.invlpg):
        return
    if target in (UVMF_LOCAL, Uvmf.all):
        env.flush_tlb()
        return
    vcpus = read_vcpumask(env, target)
    if env.vcpu_id in vcpus:
        env.flush_tlb()


# -- the hypervisor-backed environment ---------------------------------------------------
class HypervisorMmuEnv:
    """MmuEnv of the calling vcpu of a running Hypervisor."""

    def __init__(self, hv: "Hypervisor", vcpu_id: int) -> None:
        self.hv = hv
        self.mm = hv.mm
        self.vcpu_id = vcpu_id
        self.nr_vcpus = len(hv.vcpus)

    def flush_tlb(self) -> None:
        self.hv.cpu.flush_tlb()

    def load_cr3(self, mfn: int) -> None:
        if self.vcpu_id == self.hv.current.vcpu_id:
            self.hv.set_cr3(mfn << PAGE_SHIFT)

    def set_ldt(self, base: int, ents: int) -> bool:
        return self.hv.descriptors.set_ldt(self.vcpu_id, base, ents)

    def destroy_ldt(self) -> bool:
        return self.hv.descriptors.destroy_ldt(self.vcpu_id)

    def read_u32(self, guest_va: int) -> int:
        return self.hv.guest.read_u32(guest_va)

    def frame_written(self, mfn: int) -> None:
        """Xen wrote a frame the guest may execute: drop translated code mapping it."""
        from .mm_query import virtual_mappings
        for mapping in virtual_mappings(self.mm, self.mm.vcpu_cr3[self.vcpu_id], mfn):
            self.hv.cpu.invalidate_code(mapping.va, mapping.va + PAGE_SIZE)


class HypervisorMmEvents:
    """MmEvents that become page_type trace records and CPU TLB flushes."""

    def __init__(self, hv: "Hypervisor") -> None:
        self.hv = hv

    def page_type_event(self, event: PageTypeEvent, mfn: int, page: PageInfo,
                        detail: str) -> None:
        hv = self.hv
        eip = hv.cpu.read("eip")
        pfn = hv.mm.m2p_get(mfn)
        hv.emit(TraceRecord(
            seq=hv.trace.next_seq(), kind=TraceKind.page_type, icount=hv.cpu.icount,
            vcpu=hv.current.vcpu_id, eip=eip, name=str(event),
            args={"mfn": mfn, "pfn": None if pfn == INVALID_M2P_ENTRY else pfn,
                  "type": page.type.label, "type_count": page.type_count,
                  "pinned": page.pinned},
            symbol=hv.symbolize(eip), detail=detail, parent=hv.current_hypercall_seq))

    def flush_tlb(self) -> None:
        self.hv.cpu.flush_tlb()

    def implicit_grant_unmap(self, pte: int) -> None:
        """put_page_from_l1e on a grant PTE: Xen crashes the domain."""
        self.hv.crash_domain(f"Attempt to implicitly unmap a granted PTE {pte:#x}")


def create_memory_manager(hv: "Hypervisor") -> MemoryManager:
    """The domain's frame table as the builder leaves it (call `boot` once descriptor
    tables exist)."""
    events: MmEvents = HypervisorMmEvents(hv)
    mm = MemoryManager.for_built_domain(hv.built, domid=hv.domain.domid,
                                        nr_vcpus=len(hv.vcpus), events=events)
    set_toolstack_memory_map(mm, list(hv.built.memory_map))
    return mm


# -- hypercall handlers -----------------------------------------------------------------------
@HYPERCALLS.handler(Hc.mmu_update, Param("reqs"), Param("count", "int"), Param("done"),
                    Param("foreigndom"))
def mmu_update(ctx: "HypercallContext", reqs: int, count: int, pdone: int, foreigndom: int) -> int:
    """do_mmu_update for a compat guest; `count` MmuUpdate records at guest VA `reqs`."""
    preempted = bool(count & MMU_UPDATE_PREEMPTED)
    count &= ~MMU_UPDATE_PREEMPTED
    if not handle_okay(reqs, count, MmuUpdate.SIZE):
        raise fail(Errno.EFAULT, f"{count} requests at {reqs:#x} reach the hypervisor hole")
    base_done = _read_done(ctx, pdone) if preempted else 0

    def fetch(i: int) -> tuple[int, int]:
        req = MmuUpdate.from_bytes(ctx.guest.read(reqs + i * MmuUpdate.SIZE, MmuUpdate.SIZE))
        return req.ptr, req.val

    done, error = do_mmu_update(HypervisorMmuEnv(ctx.hv, ctx.vcpu.vcpu_id), fetch, count,
                                foreigndom)
    _write_done(ctx, pdone, base_done + done)
    ctx.note(f"{done} of {count} done")
    if error is not None:
        raise error
    return 0


@HYPERCALLS.handler(Hc.mmuext_op, Param("ops"), Param("count", "int"), Param("done"),
                    Param("foreigndom"))
def mmuext_op(ctx: "HypercallContext", ops: int, count: int, pdone: int, foreigndom: int) -> int:
    """compat_mmuext_op / do_mmuext_op; `count` MmuextOp32 records at guest VA `ops`."""
    preempted = bool(count & MMU_UPDATE_PREEMPTED)
    count &= ~MMU_UPDATE_PREEMPTED
    if not handle_okay(ops, count, MmuextOp32.SIZE):
        raise fail(Errno.EFAULT, f"{count} ops at {ops:#x} reach the hypervisor hole")
    base_done = _read_done(ctx, pdone) if preempted else 0
    names: list[str] = []

    def fetch(i: int) -> tuple[int, int, int]:
        op = MmuextOp32.from_bytes(ctx.guest.read(ops + i * MmuextOp32.SIZE, MmuextOp32.SIZE))
        names.append(f"{_cmd_name(op.cmd)}({op.arg1:#x})")
        return op.cmd, op.arg1, op.arg2

    done, error = do_mmuext_op(HypervisorMmuEnv(ctx.hv, ctx.vcpu.vcpu_id), fetch, count,
                               foreigndom)
    _write_done(ctx, pdone, base_done + done)
    ctx.note(", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
             + f": {done} of {count} done")
    if error is not None:
        raise error
    return 0


def _read_done(ctx: "HypercallContext", pdone: int) -> int:
    if not pdone:
        return 0
    try:
        return ctx.guest.read_u32(pdone)
    except GuestFault:
        return 0


def _write_done(ctx: "HypercallContext", pdone: int, done: int) -> None:
    if pdone:
        try:
            ctx.guest.write_u32(pdone, done)
        except GuestFault as fault:
            ctx.note(f"done count not written: {fault}")


@HYPERCALLS.handler(Hc.update_va_mapping, Param("va"), Param("pte_lo"), Param("pte_hi"),
                    Param("flags"))
def update_va_mapping(ctx: "HypercallContext", va: int, lo: int, hi: int, flags: int) -> int:
    """compat_update_va_mapping: the PTE mapping `va` becomes (hi << 32) | lo."""
    pte = (hi << 32) | lo
    do_update_va_mapping(HypervisorMmuEnv(ctx.hv, ctx.vcpu.vcpu_id), va, pte, flags)
    ctx.note(f"{va:#x} -> {pte:#x}")
    return 0


@HYPERCALLS.handler(Hc.update_va_mapping_otherdomain, Param("va"), Param("pte_lo"),
                    Param("pte_hi"), Param("flags"), Param("domid"))
def update_va_mapping_otherdomain(ctx: "HypercallContext", va: int, lo: int, hi: int,
                                  flags: int, domid: int) -> int:
    """compat_update_va_mapping_otherdomain: as update_va_mapping, frames owned by `domid`."""
    pte = (hi << 32) | lo
    pg_owner = get_pg_owner(ctx.hv.mm, domid & 0xFFFF)
    if pg_owner is not Owner.domain and pte & PTE_P:
        raise fail(Errno.EPERM, f"XSM: d{ctx.domain.domid} may not map frames of domain "
                                f"{domid:#x}")
    do_update_va_mapping(HypervisorMmuEnv(ctx.hv, ctx.vcpu.vcpu_id), va, pte, flags, pg_owner)
    return 0


@HYPERCALLS.handler(Hc.vm_assist, Param("cmd", VmasstCmd), Param("type", "int"))
def vm_assist(ctx: "HypercallContext", cmd: int, type_: int) -> int:
    """vm_assist(cmd, type): set or clear a VMASST_TYPE_* bit.  ABI: xen/common/domain.c."""
    if type_ >= 32 or not PV32_VM_ASSIST_MASK >> type_ & 1:
        raise fail(Errno.EINVAL, f"VMASST type {type_} is not available to a 32-bit PV guest")
    if cmd == VmasstCmd.enable:
        ctx.domain.vm_assist |= 1 << type_
    elif cmd == VmasstCmd.disable:
        ctx.domain.vm_assist &= ~(1 << type_)
    else:
        raise fail(Errno.ENOSYS, f"unknown vm_assist command {cmd}")
    return 0


# -- memory_op -----------------------------------------------------------------------------
@HYPERCALLS.handler(Hc.memory_op, Param("cmd", XenMem), Param("arg"))
def memory_op(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    """compat_memory_op / do_memory_op / compat_arch_memory_op.  cmd bits 5:0 are the
    XENMEM_* operation, the rest a continuation's start extent."""
    op = cmd & MEMOP_CMD_MASK
    start = cmd >> MEMOP_EXTENT_SHIFT
    try:
        name = XenMem(op).name
    except ValueError:
        name = f"op {op}"
    ctx.note(f"XENMEM_{name}")
    handler = _MEMORY_OPS.get(op)
    if start and op in _ARCH_OPS:
        raise fail(Errno.ENOSYS, f"XENMEM_{name} takes no continuation bits")
    if handler is None:
        raise fail(Errno.ENOSYS, f"XENMEM_{name} is not available to a 32-bit PV domU "
                                 "in pvdbg")
    return handler(ctx, arg, start)


def _domain_by_any_id(ctx: "HypercallContext", domid: int) -> bool:
    """rcu_lock_domain_by_any_id(): DOMID_SELF or the domain's own id."""
    return domid in (DOMID_SELF, ctx.domain.domid)


def _reservation(ctx: "HypercallContext", arg: int, start: int, op: XenMem) -> int:
    mm: MemoryManager = ctx.hv.mm
    try:
        r = MemoryReservation32.from_bytes(ctx.guest.read(arg, MemoryReservation32.SIZE))
    except GuestFault as fault:
        ctx.note(f"reservation unreadable: {fault}")
        return start
    if r.nr_extents > (0xFFFFFFFF >> MEMOP_EXTENT_SHIFT) or start >= r.nr_extents:
        return start
    if not _domain_by_any_id(ctx, r.domid):
        ctx.note(f"no domain d{r.domid}")
        return start
    address_bits = r.mem_flags & 0xFF
    if address_bits and address_bits <= PAGE_SHIFT:
        ctx.note(f"address_bits {address_bits} is below a page")
        return start
    if r.mem_flags & XENMEMF_VNODE or (r.mem_flags & XENMEMF_EXACT_NODE_REQUEST
                                       and (r.mem_flags >> 8) & 0xFF):
        ctx.note("NUMA node requests need vNUMA or a privileged domain")
        return start
    if r.extent_order > DOMU_MAX_ORDER:
        ctx.note(f"extent order {r.extent_order} above the domU limit {DOMU_MAX_ORDER}")
        return start
    has_list = r.extent_start != 0
    if (has_list or op is not XenMem.increase_reservation) and \
            not handle_okay(r.extent_start, r.nr_extents, 4):
        return start
    done = start
    for i in range(start, r.nr_extents):
        slot = r.extent_start + i * 4
        try:
            if op is XenMem.decrease_reservation:
                gmfn = ctx.guest.read_u32(slot)
                try:
                    for j in range(1 << r.extent_order):
                        mm.guest_remove_page(gmfn + j)
                except HypercallError as err:
                    ctx.note(f"extent {i}: {err.why}")
                    break
            else:
                gpfn = ctx.guest.read_u32(slot) if op is XenMem.populate_physmap else None
                mfn = mm.alloc_domheap_pages(r.extent_order, address_bits)
                if mfn is None:
                    ctx.note(f"extent {i}: could not allocate an order-{r.extent_order} extent "
                             f"(d{mm.domid} has {mm.tot_pages} of max {mm.max_pages} pages)")
                    break
                if gpfn is not None:
                    for j in range(1 << r.extent_order):
                        mm.m2p_set(mfn + j, gpfn + j)
                if has_list:
                    ctx.guest.write_u32(slot, mfn)
        except GuestFault as fault:
            ctx.note(f"extent {i}: {fault}")
            break
        done = i + 1
    ctx.note(f"{done - start} of {r.nr_extents - start} extents; d{mm.domid} now has "
             f"{mm.tot_pages} pages")
    return done


MAX_ORDER = 20                  # the page allocator's largest order (xen/include/xen/mm.h)
EXCHANGE_SIZE = 44              # compat xen_memory_exchange: in, out, nr_exchanged
EXCHANGE_NR_EXCHANGED = 40


def _exchange(ctx: "HypercallContext", arg: int, start: int) -> int:
    """XENMEM_exchange through compat_memory_op: give the domain's frames in `in` back
    and get freshly allocated ones for `out`, in chunks of equal size; each chunk is
    all-or-nothing and nr_exchanged (in input extents) reports the progress.  For a PV
    guest the lists hold MFNs: `in` names the frames to give up (each referenced only
    by its allocation), `out` holds the PFNs the new frames' M2P entries are set to and
    receives their MFNs.  ABI: xen/common/compat/memory.c (XENMEM_exchange checks),
    xen/common/memory.c memory_exchange, xen/arch/x86/mm.c steal_page,
    xen/include/public/memory.h struct xen_memory_exchange."""
    if start:
        raise fail(Errno.ENOSYS, "XENMEM_exchange takes no continuation bits")
    mm: MemoryManager = ctx.hv.mm
    data = ctx.guest.read(arg, EXCHANGE_SIZE)
    xin = MemoryReservation32.from_bytes(data[0:20])
    xout = MemoryReservation32.from_bytes(data[20:40])
    done = struct.unpack_from("<I", data, EXCHANGE_NR_EXCHANGED)[0]
    delta = xout.extent_order - xin.extent_order
    if (done > xin.nr_extents
            or (delta > 0 and done & ((1 << delta) - 1))
            or xin.extent_order >= 32 or xout.extent_order >= 32
            or (0xFFFFFFFF >> xin.extent_order) < xin.nr_extents
            or (0xFFFFFFFF >> xout.extent_order) < xout.nr_extents
            or xin.nr_extents << xin.extent_order != xout.nr_extents << xout.extent_order):
        raise fail(Errno.EINVAL, f"in {xin.nr_extents} x order {xin.extent_order}, out "
                                 f"{xout.nr_extents} x order {xout.extent_order}, "
                                 f"nr_exchanged {done}: the lists do not match")
    if not handle_okay(xin.extent_start, xin.nr_extents, 4) or \
            not handle_okay(xout.extent_start, xout.nr_extents, 4):
        raise fail(Errno.EFAULT, "an extent list reaches the hypervisor hole")

    def report(count: int) -> None:
        ctx.guest.write_u32(arg + EXCHANGE_NR_EXCHANGED, count)

    if xin.domid != xout.domid or max(xin.extent_order, xout.extent_order) > MAX_ORDER:
        report(done)
        raise fail(Errno.EINVAL, f"domids d{xin.domid}/d{xout.domid} or orders "
                                 f"{xin.extent_order}/{xout.extent_order} not acceptable")
    if max(xin.extent_order, xout.extent_order) > DOMU_MAX_ORDER:
        report(done)
        raise fail(Errno.EPERM, f"extent order above {DOMU_MAX_ORDER}: multi-page extents "
                                "that large need I/O memory permissions")
    if not _domain_by_any_id(ctx, xin.domid):
        report(done)
        raise fail(Errno.ESRCH, f"no domain d{xin.domid}")
    in_chunk = max(0, delta)            # input extents per chunk: 2**in_chunk
    out_chunk = max(0, -delta)          # output extents per chunk: 2**out_chunk
    address_bits = xout.mem_flags & 0xFF
    rc = 0
    chunk = done >> in_chunk
    for chunk in range(done >> in_chunk, xin.nr_extents >> in_chunk):
        stolen: list[int] = []
        allocated: list[int] = []
        try:
            for j in range(1 << in_chunk):
                slot = xin.extent_start + ((chunk << in_chunk) + j) * 4
                try:
                    gmfn = ctx.guest.read_u32(slot)
                except GuestFault as fault:
                    raise fail(Errno.EFAULT, f"input extent list: {fault}") from None
                for k in range(1 << xin.extent_order):
                    mfn = gmfn + k
                    why = mm.steal_refusal(mfn) if mfn not in stolen else \
                        f"mfn {mfn:#x} is listed twice"
                    if why is not None:
                        raise fail(Errno.EINVAL, f"input mfn {mfn:#x}: {why}")
                    stolen.append(mfn)
            for j in range(1 << out_chunk):
                mfn = None
                if not 0 < address_bits <= PAGE_SHIFT:
                    mfn = mm.alloc_domheap_pages(xout.extent_order, address_bits,
                                                 check_max=False)
                if mfn is None:
                    raise fail(Errno.ENOMEM, f"no free order-{xout.extent_order} extent"
                                             + (f" below {address_bits} address bits"
                                                if address_bits else ""))
                allocated.append(mfn)
        except HypercallError as err:
            for mfn in allocated:
                for k in range(1 << xout.extent_order):
                    mm.release_stolen(mfn + k)
            report(chunk << in_chunk)
            ctx.note(f"chunk {chunk}: {err.why}; {chunk << in_chunk} input extents exchanged")
            raise
        for mfn in stolen:
            mm.release_stolen(mfn)
        for j, mfn in enumerate(allocated):
            slot = xout.extent_start + ((chunk << out_chunk) + j) * 4
            try:
                gpfn = ctx.guest.read_u32(slot)
            except GuestFault as fault:
                ctx.note(f"output extent list: {fault}")
                rc = -Errno.EFAULT
                continue
            for k in range(1 << xout.extent_order):
                mm.m2p_set(mfn + k, (gpfn + k) & 0xFFFFFFFF)
            try:
                ctx.guest.write_u32(slot, mfn)
            except GuestFault as fault:
                ctx.note(f"output extent list: {fault}")
                rc = -Errno.EFAULT
        ctx.note(f"chunk {chunk}: " + ",".join(f"{m:#x}" for m in stolen) + " -> "
                 + ",".join(f"{m:#x}" for m in allocated))
    try:
        report(xin.nr_extents)
    except GuestFault:
        rc = -Errno.EFAULT
    return rc


def _stat(ctx: "HypercallContext", arg: int, start: int, op: XenMem) -> int:
    if start:
        raise fail(Errno.EINVAL, "no continuation for this operation")
    domid = struct.unpack("<H", ctx.guest.read(arg, 2))[0]
    if not _domain_by_any_id(ctx, domid):
        raise fail(Errno.ESRCH, f"no domain d{domid}")
    mm: MemoryManager = ctx.hv.mm
    if op is XenMem.current_reservation:
        return mm.tot_pages
    if op is XenMem.maximum_reservation:
        return mm.max_pages
    max_pfn = ctx.hv.shared_info().max_pfn
    return (max_pfn or 1) - 1


def _maximum_ram_page(ctx: "HypercallContext", arg: int, start: int) -> int:
    if start:
        raise fail(Errno.EINVAL, "no continuation for this operation")
    return ctx.hv.memory.nr_frames


def _machphys_mapping(ctx: "HypercallContext", arg: int, start: int) -> int:
    mapping = MachphysMapping32(v_start=HYPERVISOR_VIRT_START_PAE, v_end=MACH2PHYS_COMPAT_VIRT_END,
                                max_mfn=((MACH2PHYS_COMPAT_VIRT_END - HYPERVISOR_VIRT_START_PAE)
                                         >> 2) - 1)
    ctx.guest.write(arg, mapping.to_bytes())
    return 0


def _machphys_mfn_list(ctx: "HypercallContext", arg: int, start: int) -> int:
    """One MFN per 2 MiB of M2P: the frame that starts each 2 MiB extent."""
    xmml = MachphysMfnList32.from_bytes(ctx.guest.read(arg, MachphysMfnList32.SIZE))
    mm: MemoryManager = ctx.hv.mm
    frames_per_extent = (2 << 20) // PAGE_SIZE
    needed = -(-(ctx.hv.memory.nr_frames * 4) // PAGE_SIZE)
    extents = min(-(-needed // frames_per_extent), -(-len(mm.m2p_mfns) // frames_per_extent))
    i = 0
    while i != xmml.max_extents and i < extents:
        ctx.guest.write_u32(xmml.extent_start + i * 4, mm.m2p_mfns[i * frames_per_extent])
        i += 1
    ctx.guest.write(arg, MachphysMfnList32(xmml.max_extents, xmml.extent_start, i).to_bytes())
    return 0


def _memory_map(ctx: "HypercallContext", arg: int, start: int) -> int:
    xmm = MemoryMap32.from_bytes(ctx.guest.read(arg, MemoryMap32.SIZE))
    e820 = ctx.hv.mm.e820
    if not e820:
        raise fail(Errno.ENOSYS, "no memory map was set for this domain by the toolstack "
                                 "(backwards compatibility: use one RAM range)")
    n = min(xmm.nr_entries, len(e820))
    ctx.guest.write(xmm.buffer, b"".join(e.to_bytes() for e in e820[:n]))
    ctx.guest.write(arg, MemoryMap32(n, xmm.buffer).to_bytes())
    return 0


def _set_memory_map(ctx: "HypercallContext", arg: int, start: int) -> int:
    fmap = ForeignMemoryMap32.from_bytes(ctx.guest.read(arg, ForeignMemoryMap32.SIZE))
    if fmap.nr_entries > E820MAX:
        raise fail(Errno.EINVAL, f"{fmap.nr_entries} entries, at most {E820MAX}")
    if not _domain_by_any_id(ctx, fmap.domid):
        raise fail(Errno.ESRCH, f"no domain d{fmap.domid}")
    data = ctx.guest.read(fmap.buffer, fmap.nr_entries * E820Entry.SIZE)
    ctx.hv.mm.e820 = [E820Entry.from_bytes(data, k * E820Entry.SIZE)
                      for k in range(fmap.nr_entries)]
    return 0


def _privileged(ctx: "HypercallContext", arg: int, start: int) -> int:
    raise fail(Errno.EPERM, "XSM: a privileged (control or hardware) domain only")


def _add_to_physmap(ctx: "HypercallContext", arg: int, start: int) -> int:
    if start > 0xFFFF:
        raise fail(Errno.EDOM, "start extent does not fit the size field")
    xatp = AddToPhysmap32.from_bytes(ctx.guest.read(arg, AddToPhysmap32.SIZE))
    if xatp.space == XENMAPSPACE_GMFN_FOREIGN:
        raise fail(Errno.ENOSYS, "foreign mappings need XENMEM_add_to_physmap_batch")
    if not _domain_by_any_id(ctx, xatp.domid):
        raise fail(Errno.ESRCH, f"no domain d{xatp.domid}")
    raise fail(Errno.EACCES, "add_to_physmap needs a translated (HVM/PVH) domain: a PV guest "
                             "maps frames by MFN")


def _vnuma(ctx: "HypercallContext", arg: int, start: int) -> int:
    if start:
        raise fail(Errno.EINVAL, "no continuation for this operation")
    raise fail(Errno.EOPNOTSUPP, "the domain has no vNUMA topology")


_MEMORY_OPS: dict[int, Callable[["HypercallContext", int, int], int]] = {
    XenMem.increase_reservation: lambda c, a, s: _reservation(c, a, s, XenMem.increase_reservation),
    XenMem.decrease_reservation: lambda c, a, s: _reservation(c, a, s, XenMem.decrease_reservation),
    XenMem.populate_physmap: lambda c, a, s: _reservation(c, a, s, XenMem.populate_physmap),
    XenMem.maximum_ram_page: _maximum_ram_page,
    XenMem.exchange: _exchange,
    XenMem.current_reservation: lambda c, a, s: _stat(c, a, s, XenMem.current_reservation),
    XenMem.maximum_reservation: lambda c, a, s: _stat(c, a, s, XenMem.maximum_reservation),
    XenMem.maximum_gpfn: lambda c, a, s: _stat(c, a, s, XenMem.maximum_gpfn),
    XenMem.machphys_mapping: _machphys_mapping,
    XenMem.machphys_mfn_list: _machphys_mfn_list,
    XenMem.machphys_compat_mfn_list: _machphys_mfn_list,
    XenMem.memory_map: _memory_map,
    XenMem.set_memory_map: _set_memory_map,
    XenMem.machine_memory_map: _privileged,
    XenMem.claim_pages: _privileged,
    XenMem.add_to_physmap: _add_to_physmap,
    XenMem.get_vnumainfo: _vnuma,
}
_ARCH_OPS = frozenset({XenMem.machphys_mapping, XenMem.machphys_mfn_list,
                       XenMem.machphys_compat_mfn_list, XenMem.memory_map,
                       XenMem.set_memory_map, XenMem.machine_memory_map})


def set_toolstack_memory_map(mm: MemoryManager, ranges: list[tuple[int, int, int]]) -> None:
    """Give the domain an e820 map, as a toolstack's XENMEM_set_memory_map would:
    (address, size, type) triples; XENMEM_memory_map then returns it."""
    mm.e820 = [E820Entry(addr, size, kind) for addr, size, kind in ranges]
