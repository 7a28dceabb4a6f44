"""dom0's side of a domU (pvdbg.xen.devices): toolstack xenstore tree, grant table seeded
and shared, xenstored/xenconsoled on start_info's ports, block backends binding the
frontend's port; and two fixes PV GRUB needed: a kernel whose entry is VA 0, and ELF
segments that do not start on a page."""
from __future__ import annotations

import subprocess

import pytest

from guestbuild import HERE, _note
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.xen.blkback import BindError
from pvdbg.xen.devices import DiskSpec, disk_names
from pvdbg.xen.events import EvtchnStatus
from pvdbg.xen.grant_table import GtfFlags
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.mm import Owner


@pytest.fixture
def seed():
    s = Session.open(None, SessionOptions(memory_mib=16))
    yield s
    s.close()


def test_disk_names():
    assert disk_names(3) == ["xvda", "xvdb", "xvdc"]
    assert disk_names(28)[25:] == ["xvdz", "xvdaa", "xvdab"]


def test_toolstack_tree_grants_and_ports(seed):
    dev = seed.devices
    xs = dev.xenstore
    assert not any(r.kind == "xenstore" for r in seed.trace)  # the toolstack is not traced
    assert xs.read("/local/domain/1/name") == b"guest"
    assert xs.read("/local/domain/1/domid") == b"1"
    assert xs.read("/local/domain/1/store/ring-ref") == str(dev.store_mfn).encode()
    assert xs.read("/local/domain/1/console/ring-ref") == str(dev.console_mfn).encode()
    assert xs.read("/local/domain/1/console/port") == b"2"
    assert xs.read("/local/domain/1/memory/target") == str(16 * 1024).encode()
    assert seed.trace.records()[-1].detail == "d0 tool READ /local/domain/1/memory/target"
    assert not xs.exists("/local/domain/1/device/vbd")       # no disks: GRUB's ENOENT
    table = seed.hv.grant_table
    assert table is dev.grants and table.nr_frames == 1
    entries = dict(table.active_entries())
    assert entries[0].frame == dev.console_mfn and entries[1].frame == dev.store_mfn
    assert entries[0].flags == GtfFlags.permit_access and entries[0].domid == 0
    assert seed.hv.mm.owner(table.frames[0]) is Owner.domain   # the guest may map it
    assert table.frames[0] not in seed.hv.built.free_mfns
    events = seed.hv.events
    for port, backend in ((1, dev.store_port), (2, dev.console_port)):
        assert events.channels[port].state is EvtchnStatus.interdomain
        assert events.channels[port].backend is backend


def test_backend_close_leaves_the_guest_port_unbound(seed):
    events = seed.hv.events
    events.channels[9].state = EvtchnStatus.unbound
    events.channels[9].remote_domid = 0
    end = seed.devices._bind_blkif(1, 9, lambda: None)
    assert events.channels[9].state is EvtchnStatus.interdomain
    end.close()
    assert events.channels[9].state is EvtchnStatus.unbound and events.channels[9].backend is None
    with pytest.raises(BindError, match="not unbound for dom0"):
        seed.devices._bind_blkif(1, 10, lambda: None)              # a closed port
    with pytest.raises(BindError, match="no domain 7"):
        seed.devices._bind_blkif(7, 9, lambda: None)


def test_disk_is_announced_before_the_guest_runs(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(512 * 64))
    s = Session.open(None, SessionOptions(memory_mib=16, disks=(DiskSpec(str(image), True),)))
    xs = s.devices.xenstore
    assert xs.directory("/local/domain/1/device/vbd") == ["51712"]
    back = "/local/domain/0/backend/vbd/1/51712"
    assert xs.read(f"{back}/state") == b"2" and xs.read(f"{back}/mode") == b"r"
    assert xs.read("/local/domain/1/device/vbd/51712/backend") == back.encode()


def test_missing_disk_is_a_one_line_error(tmp_path):
    from pvdbg.session import SessionError
    with pytest.raises(SessionError, match="cannot open disk image"):
        Session.open(None, SessionOptions(memory_mib=16,
                                          disks=(DiskSpec(str(tmp_path / "none.img")),)))


def _elf(tmp_path, lds: str, body: str, virt_base: int, name: str):
    notes = [(6, ".asciz", '"pvdbg-test"'), (5, ".asciz", '"xen-3.0"'), (3, ".long", hex(virt_base)),
             (4, ".long", "0"), (1, ".long", "_start"), (8, ".asciz", '"generic"'),
             (9, ".asciz", '"yes"')]
    src = tmp_path / f"{name}.S"
    src.write_text("".join(_note(i, *n) for i, n in enumerate(notes)) + body)
    script = tmp_path / f"{name}.lds"
    script.write_text(lds)
    out = tmp_path / f"{name}.elf"
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-fno-pic", "-no-pie",
                    "-Wl,--build-id=none", "-T", str(script), str(src), "-o", str(out)],
                   check=True, capture_output=True)
    return Session(load_guest_image(str(out)), SessionOptions(memory_mib=8))


def _trap_recorder(s: Session) -> list:
    seen = []

    def exception(vector):
        seen.append((vector, s.cpu.read("eip"), s.cpu.read("cr2"), s.cpu.read("eax")))
        s.hv.shutdown(__import__("pvdbg.xen.constants", fromlist=["x"]).ShutdownReason.poweroff)
    s.hv.guest_exception = exception
    return seen


def test_kernel_linked_at_zero_runs_from_its_entry(tmp_path):
    """PV GRUB is linked at 0 with ENTRY 0: no instruction address may be Unicorn's
    `until` exit, which would stop there silently and probe the page below (a spurious
    #PF at 0xfffff000)."""
    s = _elf(tmp_path, "ENTRY(_start)\nSECTIONS { . = 0; .text : { *(.text*) } "
                       ".note : { *(.note.Xen) } }\n",
             ".text\n_start: movl $0x1234, %eax\n int $0x83\n", 0, "zero")
    assert s.hv.layout.entry == 0 and s.cpu.read("eip") == 0
    seen = _trap_recorder(s)
    assert s.run(timeout=10).reason is StopReason.shutdown
    assert seen == [(0x83, 7, seen[0][2], 0x1234)]


def test_jump_to_zero_faults_at_zero(tmp_path):
    s = _elf(tmp_path, (HERE / "guests" / "mini.lds").read_text(),
             ".text\n_start: xorl %eax, %eax\n jmp *%eax\n", 0xC0000000, "null")
    seen = _trap_recorder(s)
    assert s.run(timeout=10).reason is StopReason.shutdown
    assert [(v, eip, cr2) for v, eip, cr2, _ in seen] == [(14, 0, 0)]


def test_segments_that_do_not_start_on_a_page_are_loaded_whole(tmp_path):
    """GRUB's module area is a segment at 0x416858: every byte of it must land."""
    pattern = bytes(range(256)) * 48                    # 3 pages, no zero run
    s = _elf(tmp_path, "ENTRY(_start)\nSECTIONS { . = 0xC0000000; .text : AT(0) { *(.note.Xen) "
                       "*(.text*) } . = 0xC0002858; .blob : AT(0x2858) { *(.blob) } }\n",
             ".text\n_start: int $0x83\n.section .blob, \"a\"\nblob: .incbin \"" +
             str(tmp_path / "pattern.bin") + "\"\n", 0xC0000000, "unaligned")
    assert s.read_memory(0xC0002858, len(pattern)) == pattern


@pytest.fixture(autouse=True)
def _pattern(tmp_path):
    (tmp_path / "pattern.bin").write_bytes(bytes(range(256)) * 48)


def test_xenstore_command_and_option(tmp_path):
    from pvdbg.monitor import MonitorError, run_monitor
    s = Session.open(None, SessionOptions(memory_mib=16, xenstore=(("data/greeting", "hi"),
                                                                   ("/tool/pvdbg", "1"))))
    assert s.devices.xenstore.read("/local/domain/1/data/greeting") == b"hi"
    listing = run_monitor(s, "xenstore ls data")
    assert listing.splitlines()[1] == '  greeting = "hi"  (n1)'
    assert run_monitor(s, "xenstore write data/greeting hello there") == \
        "wrote /local/domain/1/data/greeting\n"
    assert run_monitor(s, "xs read /local/domain/1/data/greeting") == '"hello there"\n'
    assert run_monitor(s, "xenstore rm data/greeting") == "removed /local/domain/1/data/greeting\n"
    with pytest.raises(MonitorError, match="ENOENT"):
        run_monitor(s, "xenstore read data/greeting")
    assert "d0 tool WRITE /local/domain/1/data/greeting 'hello there'" in \
        run_monitor(s, "xenstore log")
    with pytest.raises(MonitorError, match="usage"):
        run_monitor(s, "xenstore frob")
    from pvdbg.session import SessionError
    with pytest.raises(SessionError, match="xenstore: EINVAL"):
        Session.open(None, SessionOptions(memory_mib=16, xenstore=(("bad key", "x"),)))
