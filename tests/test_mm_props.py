"""Property tests of the frame table: random sequences of mmu_update, mmuext_op,
update_va_mapping and guest stores never leave a writable mapping of a pagetable or
descriptor frame, the type counts always match what the tables imply, and everything
returns to zero once every table is unpinned and unloaded."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdbg.xen.constants import DOMID_SELF, MmuextCmd
from pvdbg.xen.hypercalls import HypercallError
from pvdbg.xen.mm import (PTE_A, PTE_D, PTE_G, PTE_P, PTE_PCD, PTE_PSE, PTE_RW, PTE_U,
                          MemoryManager, Owner, PageType, pte_mfn)
from pvdbg.xen.mmu import do_mmu_update, do_mmuext_op, do_update_va_mapping

from mmharness import GUEST, L1, L2, L3, NR_FRAMES, FakeEnv, audit, make_mm, va_of

FLAGS = [0, PTE_P, PTE_P | PTE_A, PTE_P | PTE_RW | PTE_A | PTE_D,
         PTE_P | PTE_RW | PTE_U | PTE_A | PTE_D, PTE_P | PTE_RW | PTE_PSE, PTE_P | PTE_PCD,
         PTE_P | PTE_RW | PTE_G]
TABLE_FLAGS = [PTE_P, PTE_P | PTE_A, PTE_P | PTE_RW | PTE_U | PTE_A | PTE_D]
# Frames the sequences build tables in: 4..9 start read-only, 10..15 read-write.
POOL = list(range(4, 16))
TABLES = [L1, L2, L3] + POOL
frames = st.integers(0, NR_FRAMES - 1)
guest_frames = st.integers(0, len(GUEST) - 1)
targets = st.one_of(st.sampled_from(POOL + [L1, L2, L3]), frames, st.just(0x100000))
entries = st.builds(lambda mfn, flags: (mfn << 12) | flags if flags else 0,
                    targets, st.sampled_from(FLAGS))
table_entries = st.builds(lambda mfn, flags: (mfn << 12) | flags,
                          st.sampled_from(POOL + [L1, L2]), st.sampled_from(TABLE_FLAGS))
indexes = st.one_of(st.integers(0, 5), st.integers(20, 24), st.integers(426, 431),
                    st.integers(508, 511))
PIN = [MmuextCmd.pin_l1_table, MmuextCmd.pin_l2_table, MmuextCmd.pin_l3_table]

ops = st.one_of(
    st.tuples(st.just("make_pgd"), st.permutations(POOL).map(lambda p: p[:3]),
              st.lists(st.tuples(st.integers(16, 47), st.booleans()), max_size=4)),
    st.tuples(st.just("build"), st.sampled_from(POOL),
              st.lists(st.tuples(indexes, st.one_of(entries, table_entries)), max_size=6)),
    st.tuples(st.just("protect"), st.sampled_from(POOL), st.booleans()),
    st.tuples(st.just("mmu_update"), st.sampled_from(TABLES + [20]), indexes,
              st.one_of(entries, table_entries), st.sampled_from([0, 2])),
    st.tuples(st.just("update_va_mapping"), st.one_of(st.sampled_from(POOL), guest_frames),
              entries, st.sampled_from([0, 2, 5])),
    st.tuples(st.just("pin"), st.sampled_from(TABLES), st.sampled_from(PIN)),
    st.tuples(st.just("unpin"), st.sampled_from(TABLES)),
    st.tuples(st.just("new_baseptr"), st.sampled_from(TABLES)),
    st.tuples(st.just("store"), st.sampled_from(TABLES + [20]), indexes, entries),
    st.tuples(st.just("copy_page"), guest_frames, guest_frames),
    st.tuples(st.just("remove"), guest_frames),
)


def writable_somewhere(mm: MemoryManager, mfn: int) -> bool:
    """A guest can store into `mfn` only through an RW entry of a validated L1."""
    for table in mm.touched_frames():
        pi = mm.peek(table)
        if pi.type is PageType.l1 and pi.validated and pi.type_count:
            for e in mm.entries(table):
                if e & (PTE_P | PTE_RW) == (PTE_P | PTE_RW) and pte_mfn(e) == mfn:
                    return True
    return False


def apply(mm: MemoryManager, env: FakeEnv, op: tuple) -> None:
    kind = op[0]
    if kind == "make_pgd":
        # A well-formed pgd (L3 -> slot-3 L2 -> L1 mapping some data frames), built while
        # the three frames are writable and then protected, as a guest kernel does.
        _, (l3, l2, l1), maps = op
        if not all(writable_somewhere(mm, f) or mm.peek(f).type_count == 0 for f in (l3, l2, l1)):
            return
        for frame in (l3, l2, l1):
            apply(mm, env, ("protect", frame, False))
        if not all(writable_somewhere(mm, f) for f in (l3, l2, l1)):
            return
        for frame in (l3, l2, l1):
            mm.memory.zero_frame(frame)
        for i, (data, rw) in enumerate(maps):
            flags = PTE_P | PTE_A | (PTE_RW | PTE_D if rw else 0)
            mm.memory.write_u64((l1 << 12) + i * 8, (data << 12) | flags)
        mm.memory.write_u64(l2 << 12, (l1 << 12) | PTE_P | PTE_RW | PTE_U | PTE_A | PTE_D)
        mm.memory.write_u64((l3 << 12) + 24, (l2 << 12) | PTE_P)
        for frame in (l3, l2, l1):
            apply(mm, env, ("protect", frame, True))
    elif kind == "build":
        _, frame, writes = op
        if writable_somewhere(mm, frame):
            for index, value in writes:
                mm.memory.write_u64((frame << 12) + index * 8, value)
    elif kind == "protect":
        _, frame, read_only = op
        flags = PTE_P | PTE_A if read_only else PTE_P | PTE_RW | PTE_A | PTE_D
        do_mmu_update(env, lambda i: ((L1 << 12) + frame * 8, (frame << 12) | flags), 1,
                      DOMID_SELF)
    elif kind == "mmu_update":
        _, table, index, value, cmd = op
        do_mmu_update(env, lambda i: ((table << 12) + index * 8 | cmd, value), 1, DOMID_SELF)
    elif kind == "update_va_mapping":
        _, page, value, flags = op
        try:
            do_update_va_mapping(env, va_of(page), value, flags)
        except HypercallError:
            pass
    elif kind in ("pin", "unpin", "new_baseptr", "copy_page"):
        cmd, arg1, arg2 = {
            "pin": lambda: (op[2], op[1], 0), "unpin": lambda: (MmuextCmd.unpin_table, op[1], 0),
            "new_baseptr": lambda: (MmuextCmd.new_baseptr, op[1], 0),
            "copy_page": lambda: (MmuextCmd.copy_page, op[1], op[2]),
        }[kind]()
        do_mmuext_op(env, lambda i: (cmd, arg1, arg2), 1, DOMID_SELF)
    elif kind == "store":
        _, frame, index, value = op
        if writable_somewhere(mm, frame):
            mm.memory.write_u64((frame << 12) + index * 8, value)
    elif kind == "remove":
        try:
            mm.guest_remove_page(op[1])
        except HypercallError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=40))
def test_no_writable_mapping_of_a_pagetable_and_counts_return_to_zero(sequence):
    mm = make_mm()
    env = FakeEnv(mm)
    for op in sequence:
        apply(mm, env, op)
        assert mm.writable_pagetable_mappings() == [], op
        assert audit(mm) == [], op
    # Tear down: unpin everything, unload CR3; every type reference must go.
    for mfn in mm.pinned_mfns():
        mm.unpin(mfn)
    mm.release_baseptr(0)
    assert audit(mm) == []
    for mfn in range(NR_FRAMES):
        pi = mm.peek(mfn)
        assert pi.type_count == 0, (mfn, pi)
        assert not pi.validated or pi.type in (PageType.writable, PageType.seg_desc), (mfn, pi)
        if pi.owner is Owner.domain:
            assert pi.allocated and pi.count == 1, (mfn, pi)
        else:
            assert pi.count == 0, (mfn, pi)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(guest_frames, entries), max_size=30))
def test_random_l1_batches_keep_the_invariant(batch):
    """One mmu_update batch of random L1 writes into the live L1: whatever succeeds or
    fails part way, no pagetable ends up writable and the counts stay exact."""
    mm = make_mm()
    env = FakeEnv(mm)
    reqs = [((L1 << 12) + slot * 8, value) for slot, value in batch]
    done, err = do_mmu_update(env, lambda i: reqs[i], len(reqs), DOMID_SELF)
    assert done == len(reqs) or err is not None
    assert mm.writable_pagetable_mappings() == []
    assert audit(mm) == []
