"""Unit tests: builder layout, page walker, hypercall dispatch table, ABI sizes, CLI errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pvdbg.machine.memory import MachineMemory
from pvdbg.machine.paging import PageWalkError, walk_pae
from pvdbg.xen.abi import MulticallEntry32, SharedInfo32, StartInfo32, VcpuInfo32
from pvdbg.xen.builder import BuildOptions, build_domain, hypercall_page_32
from pvdbg.xen.constants import Hc, HYPERVISOR_VIRT_START_PAE
from pvdbg.xen.hypercalls import HYPERCALLS
from pvdbg.session import bundled_guest_path
from pvdbg.xen.image import load_guest_image


def test_abi_sizes_and_offsets():
    assert StartInfo32.SIZE == 1112 and StartInfo32.offset_of("cmd_line") == 80
    assert StartInfo32.offset_of("pt_base") == 60
    assert SharedInfo32.offset_of("evtchn_pending") == 2048
    assert SharedInfo32.offset_of("wc_version") == 2304
    assert VcpuInfo32.offset_of("cr2") == 8 and VcpuInfo32.SIZE == 64
    assert MulticallEntry32.SIZE == 32
    si = StartInfo32(magic=b"xen-3.0-x86_32p", nr_pages=7)
    assert StartInfo32.from_bytes(si.to_bytes()) == StartInfo32(magic=si.magic.ljust(32, b"\0"),
                                                                nr_pages=7, cmd_line=bytes(1024))


def _walk_table(entries):
    mem = MachineMemory(8)
    for maddr, val in entries:
        mem.write_u64(maddr, val)
    return mem


def test_page_walker_levels():
    # L3 at frame 1, L2 at 2, L1 at 3, target frame 4; VA 0xC0201000 -> L3[3] L2[1] L1[1].
    mem = _walk_table([(0x1000 + 3 * 8, 0x2001), (0x2000 + 1 * 8, 0x3067), (0x3000 + 1 * 8, 0x4021)])
    w = walk_pae(mem, 0x1000, 0xC0201ABC)
    assert w.maddr == 0x4ABC and not w.writable and not w.user
    assert [s.level for s in w.steps] == [3, 2, 1]
    with pytest.raises(PageWalkError) as e:
        walk_pae(mem, 0x1000, 0xC0201ABC, write=True)
    assert "read-only" in str(e.value)
    with pytest.raises(PageWalkError) as e:
        walk_pae(mem, 0x1000, 0xC0401000)
    assert e.value.level == 2 and "not present" in e.value.reason
    with pytest.raises(PageWalkError) as e:
        walk_pae(mem, 0x1000, 0x00001000)
    assert e.value.level == 3


def test_builder_layout_matches_libxc():
    image = load_guest_image(str(bundled_guest_path()))
    built = build_domain(image, BuildOptions(memory_mib=16))
    lay = built.layout
    mem = built.memory
    si = StartInfo32.from_bytes(mem.read(built.p2m[(lay.start_info_va - lay.virt_base) >> 12] << 12,
                                         StartInfo32.SIZE))
    assert si.magic.rstrip(b"\0") == b"xen-3.0-x86_32p"
    assert si.nr_pages == 4096 and si.pt_base == lay.pt_base_va and si.mfn_list == lay.p2m_va
    assert si.shared_info == built.shared_info_mfn << 12
    # order: kernel, p2m, start_info, store, console, pagetables, stack
    assert lay.p2m_va < lay.start_info_va < lay.pt_base_va < lay.stack_va
    assert lay.store_pfn + 1 == lay.console_pfn
    assert lay.virt_end % (4 << 20) == 0 and lay.virt_end - lay.initial_esp >= 512 * 1024
    cr3 = built.l3_mfn << 12
    # every pagetable page is mapped read-only, every other page read-write
    for pfn in range(lay.nr_pages if lay.virt_end - lay.virt_base >= lay.nr_pages * 4096
                     else (lay.virt_end - lay.virt_base) >> 12):
        w = walk_pae(mem, cr3, lay.virt_base + pfn * 4096)
        assert w.mfn == built.p2m[pfn]
        assert w.writable == (pfn not in lay.pt_pfns)
    # the P2M is shuffled by default, identity on request
    assert built.p2m != sorted(built.p2m)
    assert build_domain(image, BuildOptions(memory_mib=16, p2m_seed=None)).p2m == list(range(4096))
    # the hole is Xen's: its first slot holds the read-only M2P, not a guest mapping
    m2p = walk_pae(mem, cr3, HYPERVISOR_VIRT_START_PAE)
    assert not m2p.writable and not m2p.user


def test_m2p_inverts_p2m():
    image = load_guest_image(str(bundled_guest_path()))
    built = build_domain(image, BuildOptions(memory_mib=8))
    cr3 = built.l3_mfn << 12
    for pfn in (0, 1, 77, 2047):
        mfn = built.p2m[pfn]
        w = walk_pae(built.memory, cr3, HYPERVISOR_VIRT_START_PAE + mfn * 4)
        assert built.memory.read_u32(w.maddr) == pfn


def test_hypercall_page_stubs():
    page = hypercall_page_32()
    assert page[17 * 32:17 * 32 + 8] == b"\xb8\x11\x00\x00\x00\xcd\x82\xc3"
    assert page[23 * 32:23 * 32 + 8] == b"\x50\xb8\x17\x00\x00\x00\xcd\x82"
    assert page[8:32] == b"\xcc" * 24


def test_dispatch_table():
    for hc in (Hc.console_io, Hc.xen_version, Hc.sched_op, Hc.sched_op_compat):
        assert hc in HYPERCALLS
    spec = HYPERCALLS.get(Hc.console_io)
    assert spec.decode_args((0, 5, 0xC0000000)) == {"cmd": "write", "count": 5, "buffer": 0xC0000000}
    assert HYPERCALLS.get(63) is None and HYPERCALLS.name_of(63) == "hypercall_63"


def _pvdbg(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pvdbg.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.parametrize("make,expect", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"hello world, not an elf"), "not an ELF"),
    (lambda p: p.write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 9), ""),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, make, expect):
    path = tmp_path / "guest.elf"
    make(path)
    r = _pvdbg("run", str(path))
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert expect in r.stderr


def test_cli_64bit_and_no_notes_and_too_big(tmp_path):
    c = tmp_path / "x.c"
    c.write_text("void _start(void){for(;;);}\n")
    # 64-bit kernels boot on the 64-bit engine now: without notes both are refused alike
    for flags, expect in ((["-m64"], "not a PV kernel"), (["-m32"], "not a PV kernel")):
        out = tmp_path / "x.elf"
        subprocess.run(["gcc", *flags, "-nostdlib", "-static", str(c), "-o", str(out)], check=True)
        r = _pvdbg("run", str(out))
        assert r.returncode == 2 and expect in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = _pvdbg("run", "--memory", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_cli_run_bundled_guest_and_trace(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = _pvdbg("run", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "seed: powering off" in r.stdout
    assert "stopped: shutdown (poweroff)" in r.stderr and "console_io" in r.stderr
    lines = trace.read_text().splitlines()
    assert any('"name":"sched_op"' in line for line in lines)


def test_cli_bounds(tmp_path):
    r = _pvdbg("run", "--max-insns", "1000")
    assert r.returncode == 3 and "instruction limit" in r.stderr


def test_cli_crash_report(tmp_path):
    from guestbuild import build_asm_guest
    guest = build_asm_guest(tmp_path, """
_start:
    movl $0x1234, %eax
    movl (0x500000), %ebx
""")
    r = _pvdbg("run", str(guest))
    assert r.returncode == 1, r.stderr
    assert "crashed on vcpu0: #PF at" in r.stderr and "cr2=0x500000" in r.stderr
    assert "mov ebx, dword ptr [0x500000]" in r.stderr and "eax 00001234" in r.stderr
    assert "Traceback" not in r.stderr
