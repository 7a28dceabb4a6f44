"""End to end: build the seed guest from source with gcc, boot it, check console and hypercalls."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pvdbg.session import Session, SessionOptions, StopReason
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
        "seed: bench_loop(1000) = 0x1548479a",
        "seed: powering off",
    ]
    assert s.shutdown_reason.name == "poweroff"
    calls = [(r.name, r.args.get("cmd")) for r in s.trace if r.kind is TraceKind.hypercall]
    assert calls == [
        ("xen_version", "version"), ("console_io", "write"), ("console_io", "write"),
        ("xen_version", "get_features"), ("console_io", "write"), ("console_io", "write"),
        ("xen_version", "platform_parameters"), ("console_io", "write"), ("console_io", "write"),
        ("console_io", "write"), ("console_io", "write"), ("sched_op", "shutdown"),
    ]
    hc = [r for r in s.trace if r.kind is TraceKind.hypercall]
    assert all(r.result == 0 for r in hc if r.name != "xen_version" or r.args["cmd"] != "version")
    assert hc[0].result == 0x00040011
    assert hc[1].symbol.startswith("printk")
    assert [r.icount for r in hc] == sorted(r.icount for r in hc)


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
