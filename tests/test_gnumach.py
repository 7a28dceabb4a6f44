"""GNU Mach's Xen image (Debian's gnumach-image-1.8-xen-486, an x86-64 ELF) on the 64-bit
PV engine, as far as it gets (issue 10 item 6).

Its ELF notes have owner "GNU", so they are ignored as Xen ignores them and the legacy
`__xen_guest` string (with a page-index HYPERCALL_PAGE) lays the domain out.  Mach then
builds its own pagetables (pins L1s, mmu_update, NEW_BASEPTR), gives pages back with
XENMEM_decrease_reservation, loads its GDT, trap table and LDT, and switches stacks.
The first store into its page tables after that writes a 64-bit entry straight into a
page it uses as an L2 (mapped read-only, as Xen requires): Xen emulates such stores into
L1 tables only, so the write faults into Mach's page-fault handler, which gives up with
the old sched_op(SCHEDOP_shutdown) and a pointer for the reason, and spins.  No console
output comes before that."""
from __future__ import annotations

import pytest

from debian import gnumach_xen
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.pv64.mm import PageType
from pvdbg.xen.pv64.paging import walk_4level

pytestmark = pytest.mark.e2e

BUDGET = 5_000_000                 # the fault comes after ~1.6 M instructions


@pytest.fixture(scope="module")
def mach():
    session = Session.open(gnumach_xen(), SessionOptions(memory_mib=64))
    stop = session.run(max_insns=BUDGET)
    yield session, stop
    session.close()


def test_mach_boots_its_memory_and_descriptors(mach):
    session, stop = mach
    hv = session.hv
    assert hv.guest_bits == 64 and not session.crash
    calls = [r for r in session.trace.records(TraceKind.hypercall)]
    ok = {r.name for r in calls if r.result == 0 or r.name == "memory_op" and r.result == 1}
    assert {"mmuext_op", "mmu_update", "update_va_mapping", "set_gdt", "set_trap_table",
            "update_descriptor", "vm_assist", "stack_switch", "memory_op"} <= ok
    assert any("LDT 4 entries" in r.detail for r in calls if r.name == "mmuext_op")
    assert any("extents given back" in r.detail for r in calls if r.name == "memory_op")
    assert hv.current.ldt_ents == 4 and len(hv.current.ldt_frames) == 1
    assert hv.mm.type_name(hv.current.ldt_frames[0]) == "seg_desc"


def test_mach_stops_on_a_store_into_its_l2(mach):
    session, stop = mach
    hv = session.hv
    faults = session.trace.records(TraceKind.trap, "#PF")
    assert len(faults) == 1
    fault = faults[0]
    assert fault.args["error_code"] == 7                    # present, write, CPL 3
    walk = walk_4level(hv.memory, hv.current.pv.kernel_table_mfn << 12, fault.args["cr2"])
    assert hv.mm.type[walk.mfn] == PageType.l2 and not walk.writable
    last = session.trace.records(TraceKind.hypercall)[-1]
    assert last.name == "sched_op_compat" and last.args["cmd"] == "shutdown"
    assert last.icount > fault.icount
    assert stop.reason is StopReason.limit and session.console_text == ""
