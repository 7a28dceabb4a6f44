"""The seed kernel's memory phase end to end, checked from the hypervisor's side: the
frame table, the traces, the GDT view, under both segment-limit policies."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen import mm_query
from pvdbg.xen.descriptors import LimitPolicy
from pvdbg.xen.image import load_guest_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seed_elf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed-mm")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    return out / "seed.elf"


def boot(path: Path, policy: LimitPolicy = LimitPolicy.xen_4_17) -> Session:
    """Run the seed until its memory phase is over (the next phase starts, or the end)."""
    s = Session(load_guest_image(str(path)), SessionOptions(memory_mib=16))
    s.hv.descriptors.policy = policy
    after = s.symbol("xen_kernel_phase")
    if after is not None:
        s.add_breakpoint(after)
    stop = s.run(max_insns=50_000_000)
    if after is not None:
        assert stop.reason is StopReason.breakpoint and stop.eip == after, stop
    else:
        assert stop.reason is StopReason.shutdown, (stop, s.console_text[-400:])
    assert "seed: balloon:" in s.console_text, s.console_text[-400:]
    return s


def test_memory_phase_state(seed_elf):
    s = boot(seed_elf)
    hv = s.hv
    sym = s.image.symbols.address
    mfn_of = lambda va: mm_query.walk(hv, va).frame.mfn      # noqa: E731
    init_pgd = mfn_of(sym("init_pgd"))
    xen_pgd = hv.built.l3_mfn
    assert hv.mm.pinned_mfns() == [init_pgd] and hv.mm.vcpu_cr3 == [init_pgd]
    assert hv.cr3 == init_pgd << 12
    assert mm_query.frame_info(hv, xen_pgd).type_count == 0           # unpinned, devalidated
    for name in ("init_pmd", "lowmem_pte"):
        info = mm_query.frame_info(hv, mfn_of(sym(name)))
        assert info.type in ("L2", "L1") and info.type_count == 1
    assert mm_query.frame_info(hv, mfn_of(sym("init_pmd"))).pae_xen_l2
    assert mm_query.writable_pagetable_mappings(hv) == []
    events = [(r.name, r.args["type"]) for r in s.trace if r.kind is TraceKind.page_type]
    assert ("pinned", "L3") in events and ("devalidated", "L3") in events
    assert ("validated", "seg_desc") in events
    ptwr = [r for r in s.trace if r.kind is TraceKind.emulation and r.name == "ptwr"]
    assert len(ptwr) == 4 and all(r.result == 0 for r in ptwr)
    # The balloon: one frame left and another came in; the reservation is back.
    assert hv.mm.tot_pages == 4096


def test_gdt_view_and_effective_limits(seed_elf):
    s = boot(seed_elf)
    gdt = {d.index: d for d in s.hv.descriptors.gdt(0)}
    assert gdt[2].dpl == 1 and gdt[2].guest_raw is not None      # DPL 0 raised to 1
    assert gdt[2].limit == 0xFFFFFFFF and not gdt[2].notes[1:]
    tls = gdt[6]
    assert tls.base == s.image.symbols.address("tls_block") and tls.accessed
    assert s.cpu.read("cs") == 0x11 and s.cpu.read("gs") == 0x33
    assert s.hv.descriptors.effective_limit(0, 0x11) == 0xFFFFFFFF
    assert "widened" in LimitPolicy.xen_4_17.description


def test_seed_era_truncation(seed_elf):
    s = boot(seed_elf, LimitPolicy.xen_3_pae)
    gdt = {d.index: d for d in s.hv.descriptors.gdt(0)}
    assert gdt[2].limit == gdt[3].limit == 0xF67FFFFF
    assert any("truncated" in n for n in gdt[3].notes)
    field = ((0xF6800000 - gdt[6].base) >> 12) - 1           # 32-bit Xen's truncation
    assert s.hv.descriptors.effective_limit(0, 0x33) == (field << 12) | 0xFFF
    assert s.crash is None
