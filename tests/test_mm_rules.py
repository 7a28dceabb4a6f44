"""Xen's page-table rules for a 32-bit PAE PV guest, one table row per rule: the action,
the errno Xen returns (None: accepted), and words the refusal must contain.
The frame table runs without a CPU (mmharness)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from pvdbg.xen.constants import DOMID_IO, DOMID_SELF, DOMID_XEN, Errno, MmuextCmd
from pvdbg.xen.hypercalls import HypercallError
from pvdbg.xen.mm import (PTE_A, PTE_D, PTE_G, PTE_GNTTAB, PTE_NX, PTE_P, PTE_PCD, PTE_PSE,
                          PTE_PWT, PTE_RW, PTE_U, MemoryManager, PageType, PageTypeEvent)
from pvdbg.xen.mmu import do_mmu_update, do_mmuext_op, do_update_va_mapping

from mmharness import FREE, L1, L2, L3, RO, RW, TABLE, FakeEnv, audit, make_mm, pte, va_of


@dataclass(frozen=True)
class Rule:
    name: str
    action: Callable[[MemoryManager, FakeEnv], object]
    errno: Errno | None
    words: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name


def l1_write(index: int, value: int):
    return lambda mm, env: mm.mod_l1_entry(L1, index, value)


def new_l1(mm: MemoryManager, mfn: int, entries: dict[int, int]) -> int:
    """Fill spare frame `mfn` (mapped read-only) as an L1 with `entries`."""
    mm.memory.zero_frame(mfn)
    for i, e in entries.items():
        mm.memory.write_u64((mfn << 12) + i * 8, e)
    return mfn


def make_seg_desc(mfn: int):
    """Map data frame `mfn` read-only and give it a seg_desc type reference (a GDT frame)."""
    def run(mm, env):
        mm.mod_l1_entry(L1, mfn, pte(mfn, RO))
        mm.get_page_and_type(mfn, PageType.seg_desc)
    return run


def pin(mfn: int, type_: PageType):
    return lambda mm, env: mm.pin(mfn, type_)


def mmu(reqs: list[tuple[int, int]], foreigndom: int = DOMID_SELF):
    def run(mm, env):
        done, err = do_mmu_update(env, lambda i: reqs[i], len(reqs), foreigndom)
        if err is not None:
            raise err
        return done
    return run


def ext(cmd: int, arg1: int = 0, arg2: int = 0, foreigndom: int = DOMID_SELF):
    def run(mm, env):
        done, err = do_mmuext_op(env, lambda i: (cmd, arg1, arg2), 1, foreigndom)
        if err is not None:
            raise err
        return done
    return run


def seq(*actions):
    def run(mm, env):
        for a in actions:
            a(mm, env)
    return run


def setup_l2_for_slot0(mm: MemoryManager) -> int:
    """Spare frame 5 as an empty L2, put in L3 slot 0 (validated)."""
    mm.memory.zero_frame(5)
    mm.mod_l3_entry(L3, 0, pte(5, PTE_P))
    return 5


RULES = [
    # -- L1 entries (get_page_from_l1e) --
    Rule("l1: PWT/PCD cache attributes are refused without I/O rights (l1_disallow_mask)",
         l1_write(20, pte(20, RW | PTE_PCD)), Errno.EINVAL, ("PCD", "l1_disallow_mask")),
    Rule("l1: the PAT bit is refused", l1_write(20, pte(20, RW | PTE_PSE)), Errno.EINVAL,
         ("PSE/PAT",)),
    Rule("l1: _PAGE_GNTTAB (bit 62) is refused", l1_write(20, pte(20, RW) | PTE_GNTTAB),
         Errno.EINVAL, ("GNTTAB",)),
    Rule("l1: NX, G, AVAIL and high available bits are accepted",
         l1_write(20, pte(20, RW | PTE_G | 0xE00) | PTE_NX | (0x3FF << 52)), None),
    Rule("l1: an L1 pagetable cannot be mapped writable", l1_write(20, pte(L1, RW)),
         Errno.EBUSY, (f"mfn {L1:#x}", "is an L1 pagetable", "writable mapping refused")),
    Rule("l1: an L2 pagetable cannot be mapped writable", l1_write(20, pte(L2, RW)),
         Errno.EBUSY, ("L2|pae_xen_l2 pagetable", "writable mapping refused")),
    Rule("l1: the pinned L3 cannot be mapped writable", l1_write(20, pte(L3, RW)),
         Errno.EBUSY, ("L3 pagetable", "pinned", "writable mapping refused")),
    Rule("l1: a pagetable may be mapped read-only", l1_write(20, pte(L1, RO)), None),
    Rule("l1: a descriptor page cannot be mapped writable",
         seq(make_seg_desc(30), l1_write(21, pte(30, RW))),
         Errno.EBUSY, ("descriptor page (seg_desc)", "writable mapping refused")),
    Rule("l1: a frame of Xen's cannot be mapped", l1_write(20, pte(49, RO)), Errno.EBUSY,
         ("belongs to Xen",)),
    Rule("l1: a free frame cannot be mapped", l1_write(20, pte(60, RO)), Errno.EBUSY,
         ("free frame",)),
    Rule("l1: MMIO (beyond RAM) needs I/O memory permission", l1_write(20, pte(0x100000, RW)),
         Errno.EPERM, ("MMIO",)),
    Rule("l1: INVALID_MFN is refused", l1_write(20, 0x000FFFFFFFFFF000 | RW), Errno.EINVAL,
         ("INVALID_MFN",)),
    Rule("l1: a page mapped writable cannot be pinned as L1", pin(20, PageType.l1),
         Errno.EINVAL, ("writable page", "cannot also be an L1 pagetable")),
    # -- L2 entries (get_page_from_l2e, mod_l2_entry) --
    Rule("l2: superpages (PSE) are refused", lambda mm, env: mm.mod_l2_entry(
        L2, 1, pte(40, TABLE | PTE_PSE)), Errno.EINVAL, ("PSE",)),
    Rule("l2: the global bit is refused", lambda mm, env: mm.mod_l2_entry(
        L2, 1, pte(4, TABLE | PTE_G)), Errno.EINVAL, ("G",)),
    Rule("l2: an entry must point at an L1 (a page mapped writable is not one)",
         lambda mm, env: mm.mod_l2_entry(L2, 1, pte(20, TABLE)), Errno.EINVAL,
         ("writable page", "cannot also be an L1", "nor is it a linear")),
    Rule("l2: Xen's slots 428..511 of the slot-3 L2 refuse updates",
         lambda mm, env: mm.mod_l2_entry(L2, 428, pte(4, TABLE)), Errno.EPERM,
         ("slot 428", "hypervisor hole")),
    Rule("l2: an L1 with a bad entry fails the L2 update with the L1's errno",
         lambda mm, env: mm.mod_l2_entry(L2, 1, pte(new_l1(mm, 4, {0: pte(L2, RW)}), TABLE)),
         Errno.EBUSY, ("L1 mfn 0x4 slot 0", "writable mapping refused")),
    Rule("l2: a read-only linear entry to itself is accepted",
         lambda mm, env: mm.mod_l2_entry(L2, 2, pte(L2, PTE_P | PTE_A)), None),
    Rule("l2: a writable linear entry is refused",
         lambda mm, env: mm.mod_l2_entry(L2, 2, pte(L2, TABLE)), Errno.EINVAL,
         ("linear pagetable entry (L2 -> L2) must be read-only",)),
    Rule("l2: a read-only linear entry to another validated L2 is accepted",
         lambda mm, env: mm.mod_l2_entry(setup_l2_for_slot0(mm), 7, pte(L2, PTE_P | PTE_A)),
         None),
    Rule("l2: copying Xen's hole entries into an L2 and pinning it is refused",
         seq(lambda mm, env: mm.memory.write(5 << 12, mm.memory.read(L2 << 12, 4096)),
             pin(5, PageType.l2)),
         Errno.EINVAL, ("slot 428", "belongs to Xen", "hypervisor hole")),
    # -- L3 (promote_l3_table, mod_l3_entry) --
    Rule("l3: slot 3 must be present",
         lambda mm, env: (mm.memory.zero_frame(6), mm.pin(6, PageType.l3)),
         Errno.EINVAL, ("slot 3 must be present",)),
    Rule("l3: an L2 already in slot 3 of another L3 cannot be shared (PAE L3 3rd slot)",
         lambda mm, env: (mm.memory.zero_frame(6),
                          mm.memory.write_u64((6 << 12) + 24, pte(L2, PTE_P)),
                          mm.pin(6, PageType.l3)),
         Errno.EINVAL, ("PAE L3 3rd slot is shared",)),
    Rule("l3: a pinned plain L2 cannot become the slot-3 L2",
         lambda mm, env: (mm.memory.zero_frame(5), mm.pin(5, PageType.l2),
                          mm.memory.zero_frame(6),
                          mm.memory.write_u64((6 << 12) + 24, pte(5, PTE_P)),
                          mm.pin(6, PageType.l3)),
         Errno.EINVAL, ("Bad type", "L2|pae_xen_l2")),
    Rule("l3: NX is refused in a compat L3 (disallow mask 0xfffff198)",
         lambda mm, env: mm.mod_l3_entry(L3, 0, pte(5, PTE_P) | PTE_NX), Errno.EINVAL,
         ("0xfffff198",)),
    Rule("l3: PWT/PCD are refused in a compat L3",
         lambda mm, env: mm.mod_l3_entry(L3, 0, pte(5, PTE_P | PTE_PWT)), Errno.EINVAL,
         ("PWT",)),
    Rule("l3: slot 3 cannot be changed once validated",
         lambda mm, env: mm.mod_l3_entry(L3, 3, 0), Errno.EINVAL, ("slot 3 and above",)),
    Rule("l3: an L3 entry must point at an L2 (a data page mapped writable is not one)",
         lambda mm, env: mm.mod_l3_entry(L3, 1, pte(20, PTE_P)), Errno.EINVAL,
         ("writable page", "cannot also be an L2")),
    # -- pins and CR3 --
    Rule("pin: a table can be pinned only once", pin(L3, PageType.l3), Errno.EINVAL,
         ("already pinned",)),
    Rule("unpin: the frame must be pinned", lambda mm, env: mm.unpin(L1), Errno.EINVAL,
         ("not pinned",)),
    Rule("pin: only the domain's frames", pin(49, PageType.l1), Errno.EINVAL,
         ("belongs to Xen",)),
    Rule("pin: PIN_L4_TABLE is ignored for a 32-bit guest", pin(20, PageType.l4), None),
    Rule("new_baseptr: the frame must take the L3 type",
         ext(MmuextCmd.new_baseptr, L1), Errno.EINVAL, ("cannot also be an L3",)),
    # -- mmu_update (do_mmu_update) --
    Rule("mmu_update: a descriptor page cannot be written",
         seq(make_seg_desc(30), mmu([((30 << 12), 0)])),
         Errno.EINVAL, ("descriptor page", "cannot write it")),
    Rule("mmu_update: a writable page is written as is",
         mmu([((20 << 12) + 8, 0x1234)]), None),
    Rule("mmu_update: an unknown command", mmu([((L1 << 12) | 4, 0)]), Errno.ENOSYS,
         ("command 4",)),
    Rule("mmu_update: naming itself as foreign domain", mmu([((L1 << 12), 0)], 1),
         Errno.ESRCH, ("itself",)),
    Rule("mmu_update: mapping Xen's frames (DOMID_XEN) is refused by XSM",
         mmu([((L1 << 12) + 20 * 8, pte(49, RO))], DOMID_XEN), Errno.EPERM, ("XSM",)),
    Rule("mmu_update: with DOMID_IO a RAM frame is not an I/O frame",
         mmu([((L1 << 12) + 20 * 8, pte(21, RO))], DOMID_IO), Errno.EBUSY, ()),
    Rule("mmu_update: MACHPHYS_UPDATE needs one of the domain's frames",
         mmu([((49 << 12) | 1, 7)]), Errno.EINVAL, ("mach->phys",)),
    Rule("mmu_update: a frame not the domain's cannot be updated", mmu([((49 << 12), 0)]),
         Errno.EINVAL, ("Could not get page for normal update",)),
    # -- mmuext_op --
    Rule("mmuext: FLUSH_CACHE needs I/O rights", ext(MmuextCmd.flush_cache), Errno.EACCES),
    Rule("mmuext: FLUSH_CACHE_GLOBAL needs I/O rights", ext(MmuextCmd.flush_cache_global),
         Errno.EINVAL),
    Rule("mmuext: MARK_SUPER was removed", ext(MmuextCmd.mark_super, 20), Errno.EOPNOTSUPP),
    Rule("mmuext: NEW_USER_BASEPTR is 64-bit only", ext(MmuextCmd.new_user_baseptr, L3),
         Errno.EINVAL),
    Rule("mmuext: an unknown command", ext(99), Errno.ENOSYS),
    Rule("mmuext: SET_LDT with more than 8192 entries", ext(MmuextCmd.set_ldt, 0x1000, 8193),
         Errno.EINVAL, ("SET_LDT",)),
    Rule("mmuext: SET_LDT with an unaligned base", ext(MmuextCmd.set_ldt, 0x1008, 4),
         Errno.EINVAL, ("SET_LDT",)),
    Rule("mmuext: CLEAR_PAGE of a pagetable is refused", ext(MmuextCmd.clear_page, L1),
         Errno.EINVAL, ("writable type",)),
    Rule("mmuext: COPY_PAGE into a page table is refused",
         ext(MmuextCmd.copy_page, L2, 20), Errno.EINVAL, ("writable type",)),
    Rule("mmuext: a foreign domain is refused by XSM",
         ext(MmuextCmd.tlb_flush_local, foreigndom=DOMID_IO), Errno.EPERM, ("XSM",)),
    # -- update_va_mapping --
    Rule("update_va_mapping: the VA needs an L1 in the current tables",
         lambda mm, env: do_update_va_mapping(env, 0x10000000, 0, 0), Errno.EINVAL,
         ("no L1 pagetable maps",)),
    Rule("update_va_mapping: the VA's L1 must be the domain's (the hypervisor hole)",
         lambda mm, env: do_update_va_mapping(env, 0xF5800000, 0, 0), Errno.EINVAL,
         ("belongs to Xen",)),
]


@pytest.mark.parametrize("rule", RULES, ids=str)
def test_rule(rule: Rule):
    mm = make_mm()
    env = FakeEnv(mm)
    if rule.errno is None:
        rule.action(mm, env)
    else:
        with pytest.raises(HypercallError) as info:
            rule.action(mm, env)
        assert info.value.errno == rule.errno, info.value.why
        for word in rule.words:
            assert word in info.value.why, info.value.why
    assert mm.writable_pagetable_mappings() == []
    assert audit(mm) == []


def test_boot_state_is_what_libxc_leaves():
    mm = make_mm()
    assert mm.pinned_mfns() == [L3]
    assert mm.vcpu_cr3 == [L3]
    l3 = mm.page(L3)
    assert (l3.type, l3.type_count, l3.validated, l3.pinned) == (PageType.l3, 2, True, True)
    assert mm.page(L2).pae_xen_l2 and mm.page(L2).type_count == 1
    assert (mm.page(L1).type, mm.page(L1).type_count) == (PageType.l1, 1)
    assert (mm.page(20).type, mm.page(20).type_count) == (PageType.writable, 1)
    assert mm.page(5).type_count == 0 and mm.page(5).count == 2      # allocated + RO mapping


def test_l3_validation_zeroes_slots_4_up_and_sets_u_rw():
    mm = make_mm(boot=False)
    mm.memory.write_u64((L3 << 12) + 100 * 8, 0xDEAD000)
    mm.boot(L3)
    assert mm.read_entry(L3, 100) == 0
    assert mm.read_entry(L3, 3) == pte(L2, PTE_P | PTE_RW | PTE_U)


def test_xen_slots_installed_in_the_slot3_l2():
    mm = make_mm(boot=False)
    mm.memory.write_u64((L2 << 12) + 430 * 8, pte(20, TABLE))     # guest junk in Xen's slot
    mm.boot(L3)
    assert mm.read_entry(L2, 428) == (49 << 12) | 0x63
    assert mm.read_entry(L2, 430) == 0
    assert mm.read_entry(L2, 511) == (50 << 12) | 0x67
    assert mm.page(20).type_count == 1            # the junk entry took no reference


def test_linear_counts_and_release():
    mm = make_mm()
    other = setup_l2_for_slot0(mm)
    mm.mod_l2_entry(other, 7, pte(L2, PTE_P | PTE_A))
    assert mm.page(L2).type_count == 2 and mm.page(L2).linear == -1
    assert mm.page(other).linear == 1
    # An L2 used as a linear table cannot itself hold linear entries, and vice versa.
    with pytest.raises(HypercallError) as info:
        mm.mod_l2_entry(L2, 5, pte(other, PTE_P | PTE_A))
    assert "mapped as a linear pagetable" in info.value.why
    mm.mod_l2_entry(other, 7, 0)
    assert (mm.page(L2).linear, mm.page(other).linear, mm.page(L2).type_count) == (0, 0, 1)
    assert audit(mm) == []


def test_fast_path_keeps_references():
    mm = make_mm()
    before = (mm.page(20).count, mm.page(20).type_count)
    mm.mod_l1_entry(L1, 20, pte(20, RW | PTE_U | PTE_G) | PTE_NX)
    assert (mm.page(20).count, mm.page(20).type_count) == before
    mm.mod_l1_entry(L1, 20, pte(20, RO))          # RW -> RO drops the writable reference
    assert (mm.page(20).count, mm.page(20).type_count) == (before[0], 0)


def test_devalidation_drops_entry_references_and_traces():
    mm = make_mm()
    l1 = new_l1(mm, 4, {0: pte(20, RW), 1: pte(21, RO)})
    mm.pin(l1, PageType.l1)
    assert mm.page(20).type_count == 2 and mm.page(21).count == 3
    mm.unpin(l1)
    assert (mm.page(l1).type_count, mm.page(l1).validated) == (0, False)
    assert mm.page(20).type_count == 1 and mm.page(21).count == 2
    events = [(e, mfn) for e, mfn, _t, _d in mm.events.events]
    assert events[-4:] == [(PageTypeEvent.validated, 4), (PageTypeEvent.pinned, 4),
                           (PageTypeEvent.unpinned, 4), (PageTypeEvent.devalidated, 4)]
    # No longer a pagetable: the frame can now be mapped writable.
    mm.mod_l1_entry(L1, 4, pte(4, RW))
    assert mm.page(4).type is PageType.writable


def test_validation_failure_leaves_no_references():
    mm = make_mm()
    l1 = new_l1(mm, 4, {0: pte(20, RW), 1: pte(21, RO), 2: pte(L3, RW)})
    with pytest.raises(HypercallError) as info:
        mm.pin(l1, PageType.l1)
    assert info.value.errno == Errno.EBUSY and "L1 mfn 0x4 slot 2" in info.value.why
    assert mm.page(l1).type is PageType.none and mm.page(l1).type_count == 0
    assert audit(mm) == []
    assert mm.events.events[-1][0] is PageTypeEvent.validation_failed


def test_new_baseptr_moves_the_cr3_reference():
    mm = make_mm()
    env = FakeEnv(mm)
    mm.memory.zero_frame(5)
    mm.memory.write(5 << 12, mm.memory.read(L2 << 12, 428 * 8))
    mm.memory.zero_frame(6)
    mm.memory.write_u64((6 << 12) + 24, pte(5, PTE_P))
    ext(MmuextCmd.new_baseptr, 6)(mm, env)
    assert mm.vcpu_cr3 == [6] and env.cr3_loads == [6]
    assert mm.page(6).type_count == 1 and mm.page(L3).type_count == 1     # pin only
    assert mm.page(L1).type_count == 2            # referenced by both slot-3 L2s
    mm.unpin(L3)                                  # Xen's boot tables go away
    assert mm.page(L3).type_count == 0 and mm.page(L2).type_count == 0
    assert mm.page(L1).type_count == 1
    assert audit(mm) == []


def test_mmu_update_partial_success_and_flushes():
    mm = make_mm()
    env = FakeEnv(mm)
    reqs = [((L1 << 12) + 20 * 8, pte(21, RW)), ((L1 << 12) + 21 * 8, pte(L1, RW)),
            ((L1 << 12) + 22 * 8, 0)]
    done, err = do_mmu_update(env, lambda i: reqs[i], 3, DOMID_SELF)
    assert done == 1 and err.errno == Errno.EBUSY and "request 1" in err.why
    assert mm.read_entry(L1, 22) != 0             # not reached
    assert env.flushes == 0                       # L1 updates: the guest flushes
    done, err = do_mmu_update(env, lambda i: [((L2 << 12) + 8, pte(4, TABLE))][i], 1,
                              DOMID_SELF)
    assert (done, err, env.flushes) == (1, None, 1)   # Xen flushes after L2/L3 updates


def test_mmu_update_preserve_ad():
    mm = make_mm()
    env = FakeEnv(mm)
    mm.memory.write_u64((L1 << 12) + 20 * 8, pte(20, RW | PTE_A | PTE_D))
    do_mmu_update(env, lambda i: [((L1 << 12) + 20 * 8 | 2, pte(20, PTE_P | PTE_RW))][i], 1,
                  DOMID_SELF)
    assert mm.read_entry(L1, 20) & (PTE_A | PTE_D) == PTE_A | PTE_D


def test_machphys_update():
    mm = make_mm()
    env = FakeEnv(mm)
    done, err = do_mmu_update(env, lambda i: [((20 << 12) | 1, 0x77)][i], 1, DOMID_SELF)
    assert (done, err, mm.m2p_get(20)) == (1, None, 0x77)


@pytest.mark.parametrize("flags, mask, flushes", [
    (0, None, 0),                         # UVMF_NONE
    (2, None, 1),                         # UVMF_INVLPG | UVMF_LOCAL
    (1 | 4, None, 1),                     # UVMF_TLB_FLUSH | UVMF_ALL
    (2 | 0x1000, 0b01, 1),                # INVLPG on a mask with vcpu0
    (2 | 0x1000, 0b10, 0),                # a mask without this vcpu: nothing to flush here
    (3, None, 0),                         # both bits: no such flush type
])
def test_update_va_mapping_flushes(flags, mask, flushes):
    mm = make_mm()
    env = FakeEnv(mm, nr_vcpus=2)
    if mask is not None:
        env.words[0x1000] = mask
    do_update_va_mapping(env, va_of(20), pte(21, RW), flags)
    assert env.flushes == flushes
    assert mm.read_entry(L1, 20) == pte(21, RW)


def test_update_va_mapping_bad_mask_is_efault_after_the_update():
    mm = make_mm()
    env = FakeEnv(mm)
    with pytest.raises(HypercallError) as info:
        do_update_va_mapping(env, va_of(20), pte(21, RW), 2 | 0x2000)
    assert info.value.errno == Errno.EFAULT
    assert mm.read_entry(L1, 20) == pte(21, RW)


def test_clear_and_copy_page():
    mm = make_mm()
    env = FakeEnv(mm)
    mm.memory.write((21 << 12), b"abc")
    ext(MmuextCmd.copy_page, 20, 21)(mm, env)
    assert mm.memory.read(20 << 12, 3) == b"abc"
    ext(MmuextCmd.clear_page, 20)(mm, env)
    assert mm.memory.read(20 << 12, 3) == bytes(3)
    assert env.written == [20, 20] and audit(mm) == []


def test_reservation_release_and_reallocate():
    mm = make_mm()
    assert (mm.tot_pages, mm.max_pages) == (48, 48 + 256)
    mm.mod_l1_entry(L1, 20, 0)                    # unmap first, as a balloon driver does
    mm.guest_remove_page(20)
    assert mm.owner(20).name == "free" and mm.tot_pages == 47 and 20 in mm.free_mfns
    mfn = mm.alloc_domheap_pages(0)
    assert mfn == FREE.start and mm.tot_pages == 48 and mm.page(mfn).count == 1
    with pytest.raises(HypercallError) as info:
        mm.guest_remove_page(49)
    assert info.value.errno == Errno.ENXIO


def test_removed_page_stays_until_unmapped():
    mm = make_mm()
    mm.guest_remove_page(21)                      # still mapped read-write by the L1
    assert mm.owner(21).name == "domain" and not mm.page(21).allocated
    assert mm.tot_pages == 48
    mm.mod_l1_entry(L1, 21, 0)
    assert mm.owner(21).name == "free" and mm.tot_pages == 47


def test_allocation_respects_max_pages_and_alignment():
    mm = make_mm()
    mm.max_pages = mm.tot_pages + 2
    assert mm.alloc_domheap_pages(2) is None      # 4 pages over the limit
    mm.max_pages = 1000
    base = mm.alloc_domheap_pages(3)
    assert base == 56 and base % 8 == 0
    assert mm.alloc_domheap_pages(0) is None      # the pool is empty


def test_pfn_hint_names_the_frame_meant():
    mm = make_mm()
    for mfn in range(48):                          # a non-identity P2M: pfn = 47 - mfn
        mm.m2p_set(mfn, 47 - mfn)
    env = FakeEnv(mm)
    with pytest.raises(HypercallError) as info:
        ext(MmuextCmd.new_baseptr, 47 - L3)(mm, env)
    assert f"is the pfn of mfn {L3:#x}" in info.value.why
    with pytest.raises(HypercallError) as info:
        ext(MmuextCmd.pin_l1_table, 20)(mm, env)   # a real MFN: no misleading hint
    assert "pfn of" not in info.value.why
