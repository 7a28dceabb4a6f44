"""The memory-management hypercalls on a real domain (vm_assist, memory_op, mmu_update
and mmuext_op argument handling), and writable-pagetable emulation of real instructions
run by small assembly guests."""
from __future__ import annotations

import struct

import pytest

from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen import mm_query
from pvdbg.xen.constants import DOMID_SELF, Errno, MmuextCmd, Vmasst, XenMem
from pvdbg.xen.guestmem import GuestFault
from pvdbg.xen.hypercalls import HypercallError
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.mm import PTE_A, PTE_D, PTE_P, PTE_RW, PageType, pte_mfn
from pvdbg.xen.mmu import (E820Entry, mmu_update, mmuext_op, memory_op,
                           set_toolstack_memory_map, update_va_mapping, vm_assist)

from guestbuild import build_asm_guest

SPIN = "_start:\n    jmp _start\n"


@pytest.fixture
def domain(tmp_path):
    s = Session(load_guest_image(str(build_asm_guest(tmp_path, SPIN))),
                SessionOptions(memory_mib=8))
    return s


def ctx_of(s: Session) -> HypercallContext:
    return HypercallContext(s.hv, s.hv.current)


def scratch(s: Session) -> int:
    """A guest VA of a writable page nothing uses before the guest runs (its boot stack)."""
    return s.hv.layout.stack_va


def call(fn, s: Session, *args) -> int:
    return fn(ctx_of(s), *args)


def errno_of(fn, s: Session, *args) -> Errno:
    with pytest.raises(HypercallError) as info:
        fn(ctx_of(s), *args)
    return info.value.errno


# -- vm_assist ----------------------------------------------------------------------
def test_vm_assist(domain):
    s = domain
    assert call(vm_assist, s, 0, Vmasst.writable_pagetables) == 0
    assert s.hv.domain.vm_assist == 1 << 2
    assert call(vm_assist, s, 1, Vmasst.writable_pagetables) == 0
    assert s.hv.domain.vm_assist == 0
    assert errno_of(vm_assist, s, 0, Vmasst.m2p_strict) == Errno.EINVAL    # 64-bit only
    assert errno_of(vm_assist, s, 0, 6) == Errno.EINVAL
    assert errno_of(vm_assist, s, 7, 2) == Errno.ENOSYS                     # bad command
    assert errno_of(vm_assist, s, 7, 40) == Errno.EINVAL                    # type first


# -- memory_op ----------------------------------------------------------------------
def test_machphys_mapping_and_mfn_list(domain):
    s = domain
    buf = scratch(s)
    assert call(memory_op, s, XenMem.machphys_mapping, buf) == 0
    assert struct.unpack("<3I", s.read_memory(buf, 12)) == (0xF5800000, 0xFFE00000, 0x297FFFF)
    s.hv.guest.write(buf, struct.pack("<3I", 8, buf + 64, 0))
    assert call(memory_op, s, XenMem.machphys_mfn_list, buf) == 0
    max_extents, start, nr = struct.unpack("<3I", s.read_memory(buf, 12))
    assert nr == 1 and struct.unpack("<I", s.read_memory(buf + 64, 4))[0] == s.hv.built.m2p_mfns[0]
    assert errno_of(memory_op, s, XenMem.machphys_mapping | (1 << 6), buf) == Errno.ENOSYS


def test_reservation_counts(domain):
    s = domain
    buf = scratch(s)
    s.hv.guest.write(buf, struct.pack("<H", DOMID_SELF))
    assert call(memory_op, s, XenMem.current_reservation, buf) == 2048
    assert call(memory_op, s, XenMem.maximum_reservation, buf) == 2048 + 256
    assert call(memory_op, s, XenMem.maximum_gpfn, buf) == 2047
    s.hv.guest.write(buf, struct.pack("<H", 1))                       # its own domid
    assert call(memory_op, s, XenMem.current_reservation, buf) == 2048
    s.hv.guest.write(buf, struct.pack("<H", 0))
    assert errno_of(memory_op, s, XenMem.current_reservation, buf) == Errno.ESRCH
    assert errno_of(memory_op, s, XenMem.current_reservation | (1 << 6), buf) == Errno.EINVAL
    assert call(memory_op, s, XenMem.maximum_ram_page, 0) == s.hv.memory.nr_frames
    with pytest.raises(GuestFault):                                    # -EFAULT
        call(memory_op, s, XenMem.current_reservation, 0xF5800000)


def test_memory_map(domain):
    s = domain
    buf = scratch(s)
    s.hv.guest.write(buf, struct.pack("<II", 4, buf + 64))
    assert errno_of(memory_op, s, XenMem.memory_map, buf) == Errno.ENOSYS
    set_toolstack_memory_map(s.hv.mm, [(0, 0x800000, 1), (0xFEE00000, 0x1000, 2)])
    assert call(memory_op, s, XenMem.memory_map, buf) == 0
    assert struct.unpack("<I", s.read_memory(buf, 4))[0] == 2
    first = E820Entry.from_bytes(s.read_memory(buf + 64, 20))
    assert (first.addr, first.size, first.type) == (0, 0x800000, 1)


def _reservation(s: Session, op: XenMem, frames: list[int] | None, order: int = 0,
                 flags: int = 0, domid: int = DOMID_SELF,
                 cmd_extra: int = 0) -> tuple[int, list[int]]:
    buf = scratch(s)
    lst = buf + 64
    if frames is not None:
        s.hv.guest.write(lst, struct.pack(f"<{len(frames)}I", *frames))
    n = len(frames) if frames is not None else 2
    s.hv.guest.write(buf, struct.pack("<IIIIH", lst if frames is not None else 0, n, order,
                                      flags, domid))
    rc = call(memory_op, s, op | cmd_extra, buf)
    out = list(struct.unpack(f"<{n}I", s.read_memory(lst, 4 * n))) if frames is not None else []
    return rc, out


def test_balloon_round_trip(domain):
    s = domain
    mm = s.hv.mm
    pfn = 20             # a page beyond the boot stack, mapped RW by the boot tables
    mfn = s.hv.built.p2m[pfn]
    va = 0xC0000000 + pfn * 4096
    update_va_mapping(ctx_of(s), va, 0, 0, 2)                         # unmap it
    rc, _ = _reservation(s, XenMem.decrease_reservation, [mfn])
    assert rc == 1 and mm.owner(mfn).name == "free" and mm.tot_pages == 2047
    rc, out = _reservation(s, XenMem.populate_physmap, [pfn])
    assert rc == 1 and mm.owner(out[0]).name == "domain" and mm.m2p_get(out[0]) == pfn
    rc, out = _reservation(s, XenMem.increase_reservation, [0, 0])
    assert rc == 2 and all(mm.owner(m).name == "domain" for m in out)
    assert mm.tot_pages == 2050
    rc, _ = _reservation(s, XenMem.increase_reservation, None)       # no list: allowed
    assert rc == 2 and mm.tot_pages == 2052


def test_reservation_refusals_return_extents_done(domain):
    s = domain
    mm = s.hv.mm
    assert _reservation(s, XenMem.decrease_reservation, [0xFFFFFF])[0] == 0   # invalid mfn
    assert _reservation(s, XenMem.decrease_reservation,
                        [s.hv.built.m2p_mfns[0]])[0] == 0                     # Xen's frame
    assert _reservation(s, XenMem.increase_reservation, [0], order=10)[0] == 0  # > max order
    assert _reservation(s, XenMem.increase_reservation, [0], flags=12)[0] == 0  # address bits
    assert _reservation(s, XenMem.increase_reservation, [0], domid=0)[0] == 0   # other domain
    assert _reservation(s, XenMem.populate_physmap, [1, 2], cmd_extra=2 << 6)[0] == 2
    mm.max_pages = mm.tot_pages + 1
    assert _reservation(s, XenMem.increase_reservation, [0, 0])[0] == 1        # max_pages


def test_other_memory_ops(domain):
    s = domain
    buf = scratch(s)
    s.hv.guest.write(buf, struct.pack("<HHIII", DOMID_SELF, 0, 0, 0, 0x100))
    assert errno_of(memory_op, s, XenMem.add_to_physmap, buf) == Errno.EACCES
    assert errno_of(memory_op, s, XenMem.machine_memory_map, buf) == Errno.EPERM
    assert errno_of(memory_op, s, XenMem.claim_pages, buf) == Errno.EPERM
    assert errno_of(memory_op, s, 63, buf) == Errno.ENOSYS


# -- mmu_update / mmuext_op argument handling --------------------------------------
def test_mmu_update_arrays_and_done(domain):
    s = domain
    buf = scratch(s)
    walk = mm_query.walk(s.hv, buf + 4096 * 2)
    pte_maddr = (walk.levels[-1].table_mfn << 12) + walk.levels[-1].index * 8
    l1 = walk.levels[-1].table_mfn
    reqs = struct.pack("<QQQQ", pte_maddr, walk.levels[-1].entry & ~PTE_RW,
                       (l1 << 12) + 8, (l1 << 12) | PTE_P | PTE_RW)
    s.hv.guest.write(buf, reqs)
    assert errno_of(mmu_update, s, buf, 2, buf + 512, DOMID_SELF) == Errno.EBUSY
    assert struct.unpack("<I", s.read_memory(buf + 512, 4))[0] == 1          # *done
    assert errno_of(mmu_update, s, 0xF57FFFF0, 2, 0, DOMID_SELF) == Errno.EFAULT
    assert errno_of(mmu_update, s, buf, 1, 0, 5 << 16 | DOMID_SELF) == Errno.ESRCH
    # MMU_UPDATE_PREEMPTED: done counts on from *done.
    s.hv.guest.write(buf + 512, struct.pack("<I", 7))
    assert call(mmu_update, s, buf, 0x80000001, buf + 512, DOMID_SELF) == 0
    assert struct.unpack("<I", s.read_memory(buf + 512, 4))[0] == 8


def test_mmuext_set_ldt_and_flushes(domain):
    s = domain
    buf = scratch(s)
    flushes = []
    s.hv.cpu.tlb_listeners.append(lambda: flushes.append(1))
    s.hv.guest.write(buf, struct.pack("<3I3I", MmuextCmd.tlb_flush_local, 0, 0,
                                      MmuextCmd.set_ldt, 0xC0100000, 3))
    assert call(mmuext_op, s, buf, 2, 0, DOMID_SELF) == 0
    assert len(flushes) == 1
    state = s.hv.descriptors.vcpus[0]
    assert (state.ldt_base, state.ldt_ents) == (0xC0100000, 3)
    assert errno_of(mmuext_op, s, buf, 1, 0, 0x7FF1) == Errno.EPERM          # DOMID_IO
    assert errno_of(mmuext_op, s, buf, 1, 0, 0x1234) == Errno.ESRCH


# -- writable pagetables (ptwr) with real instructions ------------------------------
HC_VM_ASSIST = "hypercall_page + 21 * 32"
HC_SCHED_OP = "hypercall_page + 29 * 32"
PROLOGUE = f"""
_start:
    movl $0, %ebx                 /* VMASST_CMD_enable */
    movl $2, %ecx                 /* VMASST_TYPE_writable_pagetables */
    cmpl $0, assist
    je 1f
    call {HC_VM_ASSIST}
1:  movl regs + 0, %eax
    movl regs + 4, %ebx
    movl regs + 8, %ecx
    movl regs + 12, %edx
    movl regs + 16, %edi          /* VA of the PTE under test */
"""
EPILOGUE = f"""
    pushfl
    popl saved + 16
    movl %eax, saved + 0
    movl %ebx, saved + 4
    movl %ecx, saved + 8
    movl %edx, saved + 12
    movl %edi, saved + 20
    pushl $0                      /* SHUTDOWN_poweroff */
    movl %esp, %ecx
    movl $2, %ebx                 /* SCHEDOP_shutdown */
    call {HC_SCHED_OP}
2:  jmp 2b
.data
assist: .long 1
regs: .long 0, 0, 0, 0, 0
saved: .long 0, 0, 0, 0, 0, 0
"""


def ptwr_guest(tmp_path, insn: str, *, assist: bool = True, regs=(0, 0, 0, 0),
               target_pfn: int = 16, name: str = "g"):
    """Run `insn` against the PTE mapping guest pfn `target_pfn`; `regs` (EAX, EBX, ECX,
    EDX), or a function of the session giving them.  Returns (session, stop, pte machine
    address, saved EAX, EBX, ECX, EDX, EFLAGS, EDI)."""
    path = build_asm_guest(tmp_path, PROLOGUE + "    " + insn + "\n" + EPILOGUE, name=name)
    s = Session(load_guest_image(str(path)), SessionOptions(memory_mib=8))
    walk = mm_query.walk(s.hv, 0xC0000000 + target_pfn * 4096)
    l1 = walk.levels[-1].table_mfn
    pte_maddr = (l1 << 12) + walk.levels[-1].index * 8
    l1_va = next(m.va for m in mm_query.virtual_mappings(s.hv.mm, s.hv.mm.vcpu_cr3[0], l1))
    pte_va = l1_va + walk.levels[-1].index * 8
    sym = s.image.symbols.address
    if callable(regs):
        regs = regs(s)
    s.hv.guest.write(sym("regs"), struct.pack("<5I", *regs, pte_va))
    s.hv.guest.write(sym("assist"), struct.pack("<I", int(assist)))
    stop = s.run(max_insns=10_000)
    saved = struct.unpack("<6I", s.read_memory(sym("saved"), 24))
    return s, stop, pte_maddr, saved


def pte_of(s: Session, maddr: int) -> int:
    return s.hv.memory.read_u64(maddr)


def emulations(s: Session) -> list:
    return [r for r in s.trace if r.kind is TraceKind.emulation]


def test_ptwr_mov_low_word(tmp_path):
    s, stop, maddr, _ = ptwr_guest(tmp_path, "movl %eax, (%edi)")
    assert stop.reason is StopReason.shutdown and s.shutdown_reason.name == "poweroff"
    assert pte_of(s, maddr) == 0
    [rec] = emulations(s)
    assert rec.result == 0 and "mov dword ptr [edi], eax" in rec.detail
    assert mm_query.writable_pagetable_mappings(s.hv) == []


def test_ptwr_new_mapping_takes_references(tmp_path):
    def regs(s):
        return ((s.hv.built.p2m[20] << 12) | PTE_P | PTE_RW | PTE_A | PTE_D, 0, 0, 0)

    s, stop, maddr, _ = ptwr_guest(tmp_path, "movl %eax, (%edi)", regs=regs)
    target = s.hv.built.p2m[20]
    assert pte_of(s, maddr) == (target << 12) | PTE_P | PTE_RW | PTE_A | PTE_D
    assert s.hv.mm.page(target).type is PageType.writable
    assert mm_query.frame_info(s.hv, target).type_count == 2


def test_ptwr_refuses_a_writable_mapping_of_a_pagetable(tmp_path):
    s, stop, maddr, _ = ptwr_guest(
        tmp_path, "movl %eax, (%edi)",
        regs=lambda s: ((s.hv.built.l3_mfn << 12) | PTE_P | PTE_RW | PTE_A, 0, 0, 0))
    assert stop.reason is StopReason.crash and s.crash.cr2 & 0xFFF == maddr & 0xFFF
    [rec] = emulations(s)
    assert "not emulated" in rec.detail and "writable mapping refused" in rec.detail
    assert pte_of(s, maddr) & PTE_P                      # unchanged


def test_ptwr_invalid_high_half_is_stored_not_present(tmp_path):
    s, stop, maddr, _ = ptwr_guest(tmp_path, "movl %eax, 4(%edi)", regs=(0x000FFFFF, 0, 0, 0))
    assert s.shutdown_reason.name == "poweroff"
    value = pte_of(s, maddr)
    assert value >> 32 == 0x000FFFFF and not value & PTE_P
    assert "P clear" in emulations(s)[0].detail


def test_ptwr_sub_word_write(tmp_path):
    s, stop, maddr, _ = ptwr_guest(tmp_path, "movb $0x21, (%edi)")
    assert s.shutdown_reason.name == "poweroff"
    assert pte_of(s, maddr) & 0xFF == 0x21               # P|A: now read-only


def test_ptwr_xchg_returns_the_old_entry(tmp_path):
    s, stop, maddr, saved = ptwr_guest(tmp_path, "xchgl %eax, (%edi)")
    assert pte_of(s, maddr) == 0 and saved[0] & PTE_P


def test_ptwr_cmpxchg8b(tmp_path):
    s, stop, maddr, saved = ptwr_guest(tmp_path, "lock cmpxchg8b (%edi)",
                                       regs=(0x1234, 0, 0, 0))          # wrong expected
    assert s.shutdown_reason.name == "poweroff"
    old = pte_of(s, maddr)
    assert old & PTE_P and saved[0] == old & 0xFFFFFFFF              # EAX := current
    assert not saved[4] & (1 << 6)                                    # ZF clear
    assert "cmpxchg failed" in emulations(s)[0].detail


def test_ptwr_bit_ops_and_flags(tmp_path):
    s, stop, maddr, saved = ptwr_guest(tmp_path, "lock btrl $1, (%edi)")
    assert not pte_of(s, maddr) & PTE_RW and saved[4] & 1          # CF = the old RW bit
    s, stop, maddr, saved = ptwr_guest(tmp_path, "andl $0xfffffffd, (%edi)", name="g2")
    assert not pte_of(s, maddr) & PTE_RW and not saved[4] & (1 << 6)
    assert mm_query.writable_pagetable_mappings(s.hv) == []


def test_ptwr_rep_stos_one_iteration_per_fault(tmp_path):
    s, stop, maddr, saved = ptwr_guest(tmp_path, "rep stosl", regs=(0, 0, 2, 0))
    assert s.shutdown_reason.name == "poweroff"
    assert pte_of(s, maddr) == 0 and saved[2] == 0 and len(emulations(s)) == 2


def test_without_the_assist_the_fault_goes_to_the_guest(tmp_path):
    s, stop, maddr, _ = ptwr_guest(tmp_path, "movl %eax, (%edi)", assist=False)
    assert stop.reason is StopReason.crash
    [rec] = emulations(s)
    assert "VMASST_TYPE_writable_pagetables is not enabled" in rec.detail
    assert rec in s.crash.last_records


def test_writes_to_an_l2_are_not_emulated(tmp_path):
    path = build_asm_guest(tmp_path, PROLOGUE + "    movl %eax, (%edi)\n" + EPILOGUE)
    s = Session(load_guest_image(str(path)), SessionOptions(memory_mib=8))
    l3 = s.hv.mm.vcpu_cr3[0]
    l2 = pte_mfn(s.hv.mm.read_entry(l3, 3))
    l2_va = next(m.va for m in mm_query.virtual_mappings(s.hv.mm, l3, l2))
    s.hv.guest.write(s.image.symbols.address("regs") + 16, struct.pack("<I", l2_va + 8))
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.crash
    assert "only L1 writes are emulated" in emulations(s)[0].detail


def test_memory_map_from_the_builder(tmp_path):
    from pvdbg.xen.builder import BuildOptions, build_domain
    from pvdbg.xen.hypervisor import Hypervisor
    image = load_guest_image(str(build_asm_guest(tmp_path, SPIN)))
    built = build_domain(image, BuildOptions(memory_mib=8, memory_map=((0, 8 << 20, 1),)))
    hv = Hypervisor(built, image.symbols, hypercall_page_va=image.hypercall_page_va)
    ctx = HypercallContext(hv, hv.current)
    buf = hv.layout.stack_va
    hv.guest.write(buf, struct.pack("<II", 8, buf + 64))
    assert memory_op(ctx, XenMem.memory_map, buf) == 0
    assert struct.unpack("<IQQI", hv.guest.read(buf, 4) + hv.guest.read(buf + 64, 20)) == \
        (1, 0, 8 << 20, 1)


def test_queries_for_front_ends(domain):
    s = domain
    hv = s.hv
    l3 = hv.mm.vcpu_cr3[0]
    info = mm_query.frame_info(hv, l3)
    assert (info.type, info.pinned, info.cr3_of, info.owner) == ("L3", True, (0,), "d1")
    [pinned] = mm_query.pinned_tables(hv)
    assert pinned.mfn == l3
    refs = mm_query.frame_mappings(hv, l3)
    kinds = sorted(r.table_type for r in refs)
    assert kinds == ["CR3", "L1"] and not any(r.writable for r in refs)
    vas = mm_query.frame_virtual_mappings(hv, l3)
    assert [v.va for v in vas] == [s.hv.layout.pt_base_va] and not vas[0].writable
    walk = mm_query.walk(hv, s.hv.layout.pt_base_va)
    assert [lv.table_type for lv in walk.levels] == ["L3", "L2", "L1"]
    assert walk.frame.mfn == l3 and not walk.writable
    assert mm_query.walk(hv, 0x1000).stopped == "L3 entry 0 not present"
    typed = {f.mfn: f.type for f in mm_query.typed_frames(hv)}
    assert typed[l3] == "L3" and list(typed.values()).count("L1") == 2
    assert mm_query.writable_pagetable_mappings(hv) == []
    with pytest.raises(mm_query.MmQueryError):
        mm_query.frame_info(hv, 1 << 30)
