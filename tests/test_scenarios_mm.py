"""The memory-management scenario guests (guests/scenarios): each commits one classic PV
bug, fails as it would on Xen 4.17, and the trace or crash report names the rule."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen import mm_query
from pvdbg.xen.image import load_guest_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenarios")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "scenarios"), f"O={out}"],
                   check=True, capture_output=True)
    return out


def run(scenarios: Path, name: str) -> Session:
    s = Session(load_guest_image(str(scenarios / f"{name}.elf")), SessionOptions(memory_mib=16))
    stop = s.run(max_insns=5_000_000)
    assert stop.reason in (StopReason.shutdown, StopReason.crash), stop
    assert mm_query.writable_pagetable_mappings(s.hv) == []
    return s


def refusal(s: Session, name: str):
    [record] = [r for r in s.trace if r.kind is TraceKind.hypercall and r.name == name
                and r.error]
    return record


def test_map_pt_writable(scenarios):
    s = run(scenarios, "map_pt_writable")
    rec = refusal(s, "update_va_mapping")
    l3 = s.hv.built.l3_mfn
    assert rec.error == "-EBUSY"
    assert f"mfn {l3:#x}" in rec.detail and "is an L3 pagetable" in rec.detail
    assert "writable mapping refused" in rec.detail
    assert s.shutdown_reason.name == "crash"
    assert "scenario: update_va_mapping returned -16" in s.console_text


def test_pin_hole(scenarios):
    s = run(scenarios, "pin_hole")
    rec = refusal(s, "mmuext_op")
    assert rec.error == "-EINVAL"
    for words in ("MMUEXT_PIN_L2_TABLE", "slot 428", "belongs to Xen", "hypervisor hole"):
        assert words in rec.detail, rec.detail
    failed = [r for r in s.trace if r.kind is TraceKind.page_type
              and r.name == "validation_failed"]
    assert failed and failed[-1].parent == rec.seq
    assert "returned -22" in s.console_text


def test_pfn_as_mfn(scenarios):
    s = run(scenarios, "pfn_as_mfn")
    rec = refusal(s, "mmuext_op")
    pgd_mfn = s.hv.built.l3_mfn
    assert rec.error == "-EINVAL" and "MMUEXT_NEW_BASEPTR" in rec.detail
    assert f"is the pfn of mfn {pgd_mfn:#x}" in rec.detail
    assert "a PFN passed where an MFN is required" in rec.detail
    assert s.hv.mm.vcpu_cr3 == [pgd_mfn]                          # CR3 unchanged


def test_gdt_writable(scenarios):
    s = run(scenarios, "gdt_writable")
    rec = refusal(s, "set_gdt")
    assert rec.error == "-EINVAL"
    assert "writable page" in rec.detail and "cannot also be a descriptor page" in rec.detail
    assert s.hv.descriptors.vcpus[0].gdt_frames == []


def test_direct_pte_write(scenarios):
    s = run(scenarios, "direct_pte_write")
    assert s.crash is not None and "#PF" in s.crash.reason
    victim = s.image.symbols.address("victim")
    pte_va = next(m.va for m in mm_query.virtual_mappings(
        s.hv.mm, s.hv.mm.vcpu_cr3[0], mm_query.walk(s.hv, victim).levels[-1].table_mfn))
    assert s.crash.cr2 >> 12 == pte_va >> 12
    notes = [r for r in s.crash.last_records if r.kind is TraceKind.emulation]
    assert notes and "VMASST_TYPE_writable_pagetables is not enabled" in notes[-1].detail
    assert "went through" not in s.console_text
