"""The hypervisor views on 64-bit PV guests: 4-level `pt` walks with frame types, RO/RW
and pinning, `frames`, `vcpu` (kernel/user mode), `regs`, `traps`, `gdt`, 64-bit
disassembly and backtraces, crash/stop reports with 64-bit register names; and the
Debian kernel caught at its first mmuext_op with `pt` on its new L4."""
from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import pytest

from guestbuild64 import VIRT_BASE, build_asm_guest64
from pvdbg.monitor import run_monitor
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.views.report import render_crash_report
from pvdbg.xen.image import load_guest_image

GUEST = r"""
.globl _start
_start:
    lea stack_top(%rip), %rsp
    xor %ebp, %ebp
    call outer
    ud2
.globl outer
outer:
    push %rbp
    mov %rsp, %rbp
    call inner
    pop %rbp
    ret
.globl inner
inner:
    push %rbp
    mov %rsp, %rbp
    mov $0x1122334455667788, %r13
    nop
    ud2
.data
.globl counter
counter: .quad 7
.balign 16
stack: .skip 8192
stack_top:
"""


@pytest.fixture(scope="module")
def guest_elf(tmp_path_factory) -> Path:
    return build_asm_guest64(tmp_path_factory.mktemp("views64"), GUEST)


@pytest.fixture
def session(guest_elf) -> Session:
    """Stopped at `inner`'s nop (after its prologue)."""
    image = load_guest_image(str(guest_elf), allow_64bit=True)
    session = Session(image, SessionOptions(memory_mib=16))
    nop = image.symbols.address("inner") + 14
    session.add_breakpoint(nop)
    assert session.run().reason is StopReason.breakpoint
    session.remove_breakpoint(nop)
    return session


def test_pt_walks_four_levels_with_types_and_pinning(session) -> None:
    text = run_monitor(session, "pt counter")
    levels = re.findall(r"^L(\d) mfn (0x[0-9a-f]+) \[(\S+)", text, re.M)
    assert [(level, kind) for level, _, kind in levels] == [
        ("4", "L4"), ("3", "L3"), ("2", "L2"), ("1", "L1")]
    assert "L4 pinned" in text
    assert text.count(" RW\n") == 4                    # every level's entry is writable
    assert "maps to" in text and "writable" in text and "ERROR" not in text


def test_pt_shows_the_l4_mapped_read_only(session) -> None:
    hv = session.hv
    l4_mfn = hv.cr3 >> 12
    pfn = next(p for p, m in enumerate(hv.built.p2m) if m == l4_mfn)
    text = run_monitor(session, f"pt {VIRT_BASE + pfn * 4096:#x}")
    last_entry = text.splitlines()[8]
    assert f"-> mfn {l4_mfn:#x}" in last_entry and last_entry.endswith("L4  RO")
    assert "read-only" in text and "L4 pinned" in text.splitlines()[-1]


def test_pt_reports_an_unmapped_address(session) -> None:
    assert "not mapped: L4 entry 1 not present" in run_monitor(session, "pt 0x8000000000")


def test_frames_vcpu_regs_traps_gdt(session) -> None:
    frames = run_monitor(session, "frames")
    assert re.search(r"L4 .* pinned cr3 of vcpu0", frames)
    assert "no writable mapping" in frames
    vcpu = run_monitor(session, "vcpu")
    assert "kernel mode  rip" in vcpu and "user pagetable none" in vcpu
    regs = run_monitor(session, "regs")
    assert "r13 1122334455667788" in regs and "mode kernel" in regs
    assert "eax" not in regs and "gs_base" in regs
    assert "stack_switch" in run_monitor(session, "traps")
    gdt = run_monitor(session, "gdt")
    assert "Xen CS (64-bit)" in gdt and "64-bit" in gdt
    assert "vcpu0 LDT: 0 entries" in run_monitor(session, "ldt")


def test_disassembly_and_backtrace_are_64_bit(session) -> None:
    assert "nop" in run_monitor(session, "disas $rip 1")
    assert "lea rsp, [rip" in run_monitor(session, "disas _start 1")
    bt = run_monitor(session, "bt")
    assert re.search(r"#0 .* in inner", bt) and re.search(r"#1 .* in outer", bt)
    assert re.search(r"#2 .* in _start", bt)


def test_frame_detail_follows_a_64_bit_va(session) -> None:
    text = run_monitor(session, "frame va counter")
    assert "writable" in text and re.search(r"0xffffffff8\w+  RW", text)


def test_crash_report_uses_64_bit_names(session) -> None:
    stop = session.run()
    assert stop.reason is StopReason.crash
    report = render_crash_report(session.crash, session.hv)
    assert "(XEN) rip 0xffffffff8" in report and "r13 1122334455667788" in report
    assert "eax" not in report


MMUEXT_PIN_L4_TABLE = 3     # ABI: xen/include/public/xen.h


@pytest.mark.e2e
def test_debian_kernel_first_mmuext_op_and_its_new_l4() -> None:
    """Linux's first mmuext_op pins its new L4 (init_top_pgt); `pt` through that L4
    walks 4 typed levels, and the L4 is mapped read-only in the kernel's own mapping."""
    sys.path.insert(0, str(Path(__file__).parent))
    from debian_kernel import debian_vmlinuz
    session = Session.open(debian_vmlinuz(),
                           SessionOptions(cmdline="earlyprintk=xen console=hvc0"))
    run_monitor(session, "catch hypercall mmuext_op")
    stop = session.run(max_insns=40_000_000)
    assert stop.reason is StopReason.catch and "mmuext_op" in stop.detail, stop
    cmd, _pad, new_l4 = struct.unpack("<IIQ", session.read_memory(session.cpu.read("rdi"), 16))
    assert cmd == MMUEXT_PIN_L4_TABLE
    hv = session.hv
    assert new_l4 != hv.cr3 >> 12                      # pinned, not loaded yet
    walk = run_monitor(session, f"pt $rip {new_l4:#x}")
    lines = walk.splitlines()
    assert lines[0].endswith(f"(table mfn {new_l4:#x})")
    assert [line[:2] for line in lines if re.match(r"L\d mfn", line)] == ["L4", "L3", "L2", "L1"]
    assert lines[1].startswith(f"L4 mfn {new_l4:#x} [L4 pinned")
    assert re.search(r"L3  RW\n.*\n.*L2  RW\n.*\n.*L1  RW\n", walk) and "maps to" in walk
    # The kernel maps the new L4 read-only (Xen refuses writable pagetable mappings).
    new_l4_pfn = next(p for p, m in enumerate(hv.built.p2m) if m == new_l4)
    own = run_monitor(session, f"pt {0xffffffff80000000 + new_l4_pfn * 4096:#x}")
    assert f"-> mfn {new_l4:#x} (pfn {new_l4_pfn:#x}) L4  RO\n" in own, own
    assert "read-only" in own and "L4 pinned" in own.splitlines()[-1] and "ERROR" not in own
    frames = run_monitor(session, "frames")
    assert re.search(rf"{new_l4:#x} .* L4 .* pinned\n", frames)
    assert "no writable mapping of any pagetable" in frames
