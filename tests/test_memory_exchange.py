"""XENMEM_exchange for a 32-bit PV domU, as Xen's compat_memory_op + memory_exchange do
it: chunked all-or-nothing exchanges, nr_exchanged progress, the input frames' rules
(the domain's, referenced only by their allocation), output frames fresh with their M2P
entries set, and each refusal's errno; the hypervisor invariants hold throughout."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestbuild import build_asm_guest
from pvdbg.session import Session, SessionOptions
from pvdbg.xen import invariants
from pvdbg.xen.constants import DOMID_SELF, Errno, XenMem
from pvdbg.xen.guestmem import GuestFault
from pvdbg.xen.hypercalls import HypercallError
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.mm import INVALID_M2P_ENTRY, PageType
from pvdbg.xen.mmu import memory_op

SPIN = "_start:\n    jmp _start\n"
HIGH_PFN = 0x10000          # PFNs the guest gives its new frames (beyond its RAM)


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    return str(build_asm_guest(tmp_path_factory.mktemp("xchg"), SPIN))


def new_session(elf) -> Session:
    return Session(load_guest_image(elf), SessionOptions(memory_mib=8))


@pytest.fixture
def s(elf):
    return new_session(elf)


def ctx(s):
    return HypercallContext(s.hv, s.hv.current)


def buf(s) -> int:
    return s.hv.layout.stack_va


def populate(s, count: int, pfn: int = HIGH_PFN) -> list[int]:
    """populate_physmap `count` order-0 extents at pfn.. (fresh, unmapped frames)."""
    b = buf(s)
    lst = b + 0x100
    s.hv.guest.write(lst, struct.pack(f"<{count}I", *range(pfn, pfn + count)))
    s.hv.guest.write(b, struct.pack("<IIIIH", lst, count, 0, 0, DOMID_SELF))
    assert memory_op(ctx(s), XenMem.populate_physmap, b) == count
    return list(struct.unpack(f"<{count}I", s.read_memory(lst, 4 * count)))


def exchange(s, in_mfns: list[int], out_pfns: list[int], *, in_order: int = 0,
             out_order: int = 0, done: int = 0, out_flags: int = 0, in_domid: int = DOMID_SELF,
             out_domid: int = DOMID_SELF, in_list: int | None = None,
             out_list: int | None = None) -> tuple[int | Errno, int, list[int]]:
    """Run XENMEM_exchange; (result or errno, nr_exchanged, the out list afterwards)."""
    b = buf(s)
    in_va = b + 0x200 if in_list is None else in_list
    out_va = b + 0x600 if out_list is None else out_list
    if in_list is None:
        s.hv.guest.write(in_va, struct.pack(f"<{len(in_mfns)}I", *in_mfns))
    if out_list is None:
        s.hv.guest.write(out_va, struct.pack(f"<{len(out_pfns)}I", *out_pfns))
    s.hv.guest.write(b, struct.pack("<IIIIHxx", in_va, len(in_mfns), in_order, 0, in_domid)
                     + struct.pack("<IIIIHxx", out_va, len(out_pfns), out_order, out_flags,
                                   out_domid)
                     + struct.pack("<I", done))
    try:
        result: int | Errno = memory_op(ctx(s), XenMem.exchange, b)
    except HypercallError as err:
        result = err.errno
    nr = struct.unpack("<I", s.read_memory(b + 40, 4))[0]
    out = [] if out_list is not None else list(
        struct.unpack(f"<{len(out_pfns)}I", s.read_memory(out_va, 4 * len(out_pfns))))
    return result, nr, out


def test_balloon_like_round_trip(s):
    mm = s.hv.mm
    old = populate(s, 3)
    pages = mm.tot_pages
    result, nr, new = exchange(s, old, [HIGH_PFN + 7, HIGH_PFN + 8, HIGH_PFN + 9])
    assert (result, nr) == (0, 3)
    assert not set(new) & set(old)
    assert all(mm.owner(m).name == "free" for m in old)
    assert all(mm.m2p_get(m) == INVALID_M2P_ENTRY for m in old)
    assert [mm.m2p_get(m) for m in new] == [HIGH_PFN + 7, HIGH_PFN + 8, HIGH_PFN + 9]
    assert all(mm.owner(m).name == "domain" and mm.peek(m).allocated for m in new)
    assert mm.tot_pages == pages                        # an exchange keeps the size
    assert invariants.problems(s.hv) == []
    # And back: the new frames can be exchanged again (the balloon's round trip).
    result, nr, again = exchange(s, new, [HIGH_PFN, HIGH_PFN + 1, HIGH_PFN + 2])
    assert (result, nr) == (0, 3) and mm.tot_pages == pages
    assert invariants.problems(s.hv) == []


def test_orders_two_singles_for_one_contiguous_pair(s):
    mm = s.hv.mm
    old = populate(s, 4)
    result, nr, new = exchange(s, old, [HIGH_PFN + 0x20, HIGH_PFN + 0x22], out_order=1)
    assert (result, nr) == (0, 4)                        # counted in input extents
    for mfn, pfn in zip(new, (HIGH_PFN + 0x20, HIGH_PFN + 0x22)):
        assert mfn % 2 == 0
        assert (mm.m2p_get(mfn), mm.m2p_get(mfn + 1)) == (pfn, pfn + 1)
    # One contiguous pair for two singles (in order 1, out order 0).
    result, nr, singles = exchange(s, [new[0]], [HIGH_PFN + 0x30, HIGH_PFN + 0x31],
                                   in_order=1)
    assert (result, nr) == (0, 1) and len(set(singles)) == 2
    assert invariants.problems(s.hv) == []


def test_partial_progress_stops_at_a_mapped_frame(s):
    mm = s.hv.mm
    good = populate(s, 2)
    mapped = s.hv.built.p2m[20]          # mapped by the boot pagetables: referenced
    result, nr, out = exchange(s, good + [mapped, good[0]], [1, 2, 3, 4])
    assert (result, nr) == (Errno.EINVAL, 2)
    assert all(mm.owner(m).name == "free" for m in good)
    assert mm.owner(mapped).name == "domain"
    assert out[2:] == [3, 4]             # the failed chunk wrote nothing back
    assert invariants.problems(s.hv) == []


@pytest.mark.parametrize("why, frame", [
    ("xen_frame", lambda s: s.hv.built.m2p_mfns[0]),
    ("free_frame", lambda s: s.hv.mm.free_mfns[-1]),
    ("beyond_ram", lambda s: 0xFFFFFF),
    ("typed_frame", lambda s: "typed"),
])
def test_input_frames_that_cannot_be_given(s, why, frame):
    target = frame(s)
    if target == "typed":
        target = populate(s, 1)[0]
        s.hv.mm.get_page_and_type(target, PageType.seg_desc)
    result, nr, _ = exchange(s, [target], [5])
    assert (result, nr) == (Errno.EINVAL, 0)
    assert invariants.problems(s.hv) == [] or why == "typed_frame"


def test_duplicate_input_frame_in_one_chunk(s):
    mfn = populate(s, 1)[0]
    result, nr, _ = exchange(s, [mfn, mfn], [1], in_order=0, out_order=1)
    assert (result, nr) == (Errno.EINVAL, 0)
    assert s.hv.mm.owner(mfn).name == "domain"


def test_argument_checks(s):
    mfns = populate(s, 2)
    # Sizes differ: compat's check, nothing written back.
    assert exchange(s, mfns, [1], done=0)[:2] == (Errno.EINVAL, 0)
    # nr_exchanged beyond the list, or not a whole output extent.
    assert exchange(s, mfns, [1, 2], done=3)[:2] == (Errno.EINVAL, 3)
    assert exchange(s, mfns, [1], out_order=1, done=1)[:2] == (Errno.EINVAL, 1)
    # Lists in the hypervisor hole.
    assert exchange(s, mfns, [1, 2], in_list=0xF57FFFFC)[0] == Errno.EFAULT
    assert exchange(s, mfns, [1, 2], out_list=0xF57FFFFC)[0] == Errno.EFAULT
    # Different domains, orders beyond a domU's, another domain.
    assert exchange(s, mfns, [1, 2], out_domid=0)[:2] == (Errno.EINVAL, 0)
    assert exchange(s, mfns[:1], [1], in_order=10, out_order=10)[:2] == (Errno.EPERM, 0)
    assert exchange(s, mfns, [1, 2], in_domid=0, out_domid=0)[:2] == (Errno.ESRCH, 0)
    # Output below 13 address bits: no frame fits.
    assert exchange(s, mfns, [1, 2], out_flags=12)[:2] == (Errno.ENOMEM, 0)
    # Continuation bits are not used by exchange.
    with pytest.raises(HypercallError) as info:
        memory_op(ctx(s), XenMem.exchange | (1 << 6), buf(s))
    assert info.value.errno == Errno.ENOSYS
    with pytest.raises(GuestFault):
        memory_op(ctx(s), XenMem.exchange, 0xF5800000)
    # nr_exchanged resumes: the first extent is skipped.
    result, nr, out = exchange(s, mfns, [7, 8], done=1)
    assert (result, nr) == (0, 2) and out[0] == 7 and s.hv.mm.owner(mfns[0]).name == "domain"
    assert invariants.problems(s.hv) == []


def test_address_bits_bound_the_new_frames(s):
    mfns = populate(s, 1)
    limit_bits = 23                         # below 8 MiB
    result, nr, out = exchange(s, mfns, [9], out_flags=limit_bits)
    if result == 0:
        assert out[0] < 1 << (limit_bits - 12)
    else:
        assert (result, nr) == (Errno.ENOMEM, 0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["populate", "exchange", "exchange_bad", "release"]),
                          st.integers(1, 4)), min_size=1, max_size=8))
def test_random_balloon_sequences_keep_the_invariants(elf, ops):
    s = new_session(elf)
    mm = s.hv.mm
    owned: list[int] = []
    next_pfn = HIGH_PFN
    start_pages = mm.tot_pages
    for op, n in ops:
        if op == "populate":
            owned += populate(s, n, next_pfn)
            next_pfn += n
        elif op.startswith("exchange") and owned:
            give = owned[:n]
            if op == "exchange_bad":
                give = give + [s.hv.built.p2m[20]]
            result, nr, out = exchange(s, give, list(range(next_pfn, next_pfn + len(give))))
            next_pfn += len(give)
            assert nr == (len(give) if result == 0 else len(owned[:n]))
            owned = out[:nr] + owned[len(give[:nr]):] if result == 0 else \
                out[:nr] + owned[nr:]
        elif op == "release" and owned:
            b = buf(s)
            s.hv.guest.write(b + 0x100, struct.pack("<I", owned[0]))
            s.hv.guest.write(b, struct.pack("<IIIIH", b + 0x100, 1, 0, 0, DOMID_SELF))
            assert memory_op(ctx(s), XenMem.decrease_reservation, b) == 1
            owned = owned[1:]
        assert invariants.problems(s.hv) == []
        assert mm.tot_pages == start_pages + len(owned)
        assert all(mm.owner(m).name == "domain" for m in owned)
