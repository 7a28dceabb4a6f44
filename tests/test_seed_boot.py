"""End to end: build the seed guest from source with gcc, boot it, check console and hypercalls."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.testing import assert_hypercalls, hc
from seed_kernel_phase import KERNEL_PHASE_CALLS, kernel_phase_lines
from pvdbg.trace import TraceKind
from pvdbg.xen.image import load_guest_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def seed_elf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed")
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "seed"), f"O={out}"], check=True,
                   capture_output=True)
    return out / "seed.elf"


def boot(path: Path, **options) -> Session:
    s = Session(load_guest_image(str(path)), SessionOptions(**options))
    stop = s.run(max_insns=50_000_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash)
    return s


def _ok(name: str, **args):
    return hc(name, result=0, **args)


_WRITE = hc("console_io", cmd="write", result=0)
# The memory phase (mm_phase.c), in order: see guests/seed/README.md "Hypercalls".
MEMORY_PHASE_CALLS = [
    _ok("vm_assist", cmd="enable", type=0), _ok("vm_assist", cmd="enable", type=2),
    _ok("vm_assist", cmd="enable", type=3), _WRITE,
    _ok("update_va_mapping"), _WRITE,
    _ok("memory_op", cmd="machphys_mapping"), _WRITE,
    hc("memory_op", cmd="memory_map", error="-ENOSYS"), _WRITE,
    _WRITE,
    _ok("mmu_update"), _ok("mmuext_op"), _ok("mmuext_op"), _ok("mmuext_op"), _ok("mmuext_op"),
    _WRITE,
    _ok("mmuext_op"), _ok("mmuext_op"), _WRITE,
    _ok("update_va_mapping"), _ok("set_gdt"), _ok("update_descriptor"), _WRITE,
    _ok("update_va_mapping"), hc("memory_op", cmd="decrease_reservation", result=1),
    hc("memory_op", cmd="current_reservation", result=4095),
    hc("memory_op", cmd="populate_physmap", result=1), _ok("mmu_update"), _ok("update_va_mapping"),
    hc("memory_op", cmd="current_reservation", result=4096),
    hc("memory_op", cmd="maximum_reservation", result=4096 + 256), _WRITE,
]


def memory_phase_lines(s: Session, xen_pgd: int) -> list[str]:
    """The memory phase's console lines for a 16 MiB boot, from the image and the domain."""
    sym = s.image.symbols.address
    hv = s.hv
    p2m = hv.built.p2m
    pgd_pfn = (xen_pgd - 0xC0000000) >> 12
    init_pgd_mfn = p2m[(sym("init_pgd") - 0xC0000000) >> 12]
    balloon_pfn = (sym("balloon_page") - 0xC0000000) >> 12
    new_mfn = hv.mm.mfn_of_pfn(balloon_pfn)
    return [
        "seed: vm_assist 4gb_segments writable_pagetables pae_extended_cr3 enabled",
        f"seed: shared_info mfn {hv.built.shared_info_mfn:#x} at {sym('shared_info_page'):#010x}, "
        "vcpu_info attached, save_fl 0x0",
        f"seed: machphys 0xf5800000-0xffe00000 max_mfn 0x297ffff, m2p[{p2m[pgd_pfn]:#x}] = "
        f"{pgd_pfn:#x}",
        "seed: memory map: XENMEM_memory_map -38, one RAM range 0x0-0x1000000",
        f"seed: init_mm pgd {sym('init_pgd'):#010x}: lowmem 0x800000 bytes, 1024 ptes inserted, "
        "4 read-only kept",
        f"seed: init_mm pinned, cr3 {init_pgd_mfn << 12:#x}, Xen's pgd {xen_pgd:#010x} unpinned",
        f"seed: ptwr: pte of {sym('ptwr_page'):#010x} cleared and restored by 4 direct writes",
        f"seed: gdt {sym('gdt_page'):#010x} mfn {p2m[(sym('gdt_page') - 0xC0000000) >> 12]:#x}: "
        f"7 entries, cs 0x11 ds 0x19, tls base {sym('tls_block'):#010x}, %gs:0 0x7e57c0de",
        f"seed: balloon: pfn {balloon_pfn:#x} mfn {p2m[balloon_pfn]:#x} released (4095 pages), "
        f"repopulated with mfn {new_mfn:#x} (4096 of max 4352 pages)",
    ]


def test_seed_boots_to_poweroff(seed_elf):
    s = boot(seed_elf, memory_mib=16, cmdline="console=hvc0 bench=1000 quiet")
    lines = s.console_text.splitlines()
    end = s.image.symbols.address("_end")
    pgd = 0xC0000000 + ((end - 0xC0000000 + 4095) // 4096 + 4 + 3) * 4096
    assert lines == [
        "seed: pvdbg-seed 1 booting on Xen 4.17 (xen-3.0-x86_32p)",
        "seed: pv_ops Xen installed, save_fl 0x0, vcpu_info not mapped",
        "seed: xen features submap[0] 0x220e0",
        f"seed: init_mm.pgd {pgd:#x} nr_pt_frames 4 nr_pages 4096",
        "seed: hypervisor hole 0xf5800000 reserved 0xa800000 bytes fixaddr_top 0xf57ff000",
        'seed: command line "console=hvc0 bench=1000 quiet"',
        *memory_phase_lines(s, pgd),
        *kernel_phase_lines(s),
        "seed: bench_loop(1000) = 0x1548479a",
        "seed: powering off",
    ]
    assert s.shutdown_reason.name == "poweroff"
    write = hc("console_io", cmd="write", result=0, symbol=re.compile(r"^printk\b"))
    assert_hypercalls(s, [
        hc("xen_version", cmd="version", result=0x00040011), write, write,
        hc("xen_version", cmd="get_features", result=0), write, write,
        hc("xen_version", cmd="platform_parameters", result=0), write, write,
        *MEMORY_PHASE_CALLS, *KERNEL_PHASE_CALLS, write, write,
        hc("sched_op", cmd="shutdown", result=0),
    ], exact=True)
    calls = [r for r in s.trace if r.kind is TraceKind.hypercall]
    assert [r.icount for r in calls] == sorted(r.icount for r in calls)


def test_same_guest_same_trace(seed_elf):
    a = boot(seed_elf)
    b = boot(seed_elf)
    assert [r.to_json() for r in a.trace] == [r.to_json() for r in b.trace]


def test_prebuilt_guest_matches_source(seed_elf):
    """The guest shipped in the package boots the same way."""
    s = Session.open(None)
    assert s.run(max_insns=10_000_000).reason is StopReason.shutdown
    assert "seed: powering off" in s.console_text
    assert shutil.which("gcc")
