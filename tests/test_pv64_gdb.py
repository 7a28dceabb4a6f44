"""The GDB stub on 64-bit PV guests: the x86-64 target description, g/p/P in its layout,
expedited rsp/rbp/rip, memory through 4-level tables; real gdb on a small 64-bit guest
and (slow) on Debian's cloud kernel with its DWARF vmlinux."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from guestbuild64 import build_asm_guest64
from gdbmi import Gdb, GdbServerProcess
from pvdbg.session import Session, SessionOptions, StopReason as EngineStop
from pvdbg.stub.commands import Stub
from pvdbg.stub.engine import SessionTarget
from pvdbg.stub.target import MemoryAccessError, RegisterUnavailable
from pvdbg.stub.tdesc import load_target_description
from pvdbg.xen.image import load_guest_image

GUEST = r"""
.globl _start
_start:
    lea stack_top(%rip), %rsp
    xor %ebp, %ebp
    call main_loop
    ud2
.globl main_loop
main_loop:
    push %rbp
    mov %rsp, %rbp
    mov $0x1122334455667788, %rax
    call say_hello
    movq $42, counter(%rip)
    mov $2, %edi
    lea poweroff_reason(%rip), %rsi
    mov $29, %eax
    syscall
    ud2
.globl say_hello
say_hello:
    push %rbp
    mov %rsp, %rbp
    mov $0xabcdef, %r12
    xor %edi, %edi
    mov $6, %esi
    lea hello(%rip), %rdx
    mov $18, %eax
    syscall
    pop %rbp
    ret
.data
hello: .ascii "hello\n"
.globl counter
counter: .quad 7
poweroff_reason: .long 0
.balign 16
stack: .skip 8192
stack_top:
"""


@pytest.fixture(scope="module")
def guest_elf(tmp_path_factory) -> Path:
    return build_asm_guest64(tmp_path_factory.mktemp("g64"), GUEST)


@pytest.fixture
def stopped_in_say_hello(guest_elf):
    """(session, target, stub) stopped at say_hello's first instruction."""
    image = load_guest_image(str(guest_elf), allow_64bit=True)
    session = Session(image, SessionOptions(memory_mib=16))
    target = SessionTarget(session)
    session.add_breakpoint(image.symbols.address("say_hello"))
    assert session.run().reason is EngineStop.breakpoint
    return session, target, Stub(target)


def test_amd64_description_numbers_registers_as_gdb_does() -> None:
    registers = load_target_description(64).registers
    numbers = {spec.name: spec.regnum for spec in registers}
    assert (numbers["rax"], numbers["rbp"], numbers["rsp"], numbers["rip"]) == (0, 6, 7, 16)
    assert numbers["xmm15"] == 55 and numbers["mxcsr"] == 56
    assert (numbers["fs_base"], numbers["gs_base"], numbers["cr3"]) == (57, 58, 61)
    assert {"kernel_mode", "gs_base_kernel", "gs_base_user", "upcall_mask"} <= set(numbers)
    target_xml = load_target_description(64).annexes["target.xml"]
    assert b"i386:x86-64" in target_xml and b"pvdbg-amd64-segments.xml" in target_xml
    assert b"<architecture>i386</architecture>" in load_target_description(32).annexes[
        "target.xml"]


def test_stub_serves_the_64_bit_layout(stopped_in_say_hello) -> None:
    session, target, stub = stopped_in_say_hello
    assert stub.tdesc is load_target_description(64)
    packed = stub.handle(b"g").payloads[0]
    generic = b"".join(stub.register_hex(0, spec) for spec in stub.tdesc.registers)
    assert packed == generic and len(packed) == stub.tdesc.registers.g_packet_hex_length
    rip = session.cpu.read("rip")
    assert stub.handle(b"p10").payloads[0] == rip.to_bytes(8, "little").hex().encode()
    assert int.from_bytes(bytes.fromhex(stub.handle(b"p0").payloads[0].decode()),
                          "little") == 0x1122334455667788
    reply = stub.stop_reply_payload(target.stop_state())
    assert b"10:" + rip.to_bytes(8, "little").hex().encode() in reply
    assert b"07:" in reply and b"06:" in reply and b"04:" not in reply
    cr3 = int.from_bytes(bytes.fromhex(stub.handle(b"p3d").payloads[0].decode()), "little")
    assert cr3 == session.hv.cr3
    assert stub.handle(b"p41").payloads[0] == b"01"          # kernel_mode


def test_register_writes_and_refusals(stopped_in_say_hello) -> None:
    session, target, stub = stopped_in_say_hello
    assert stub.handle(b"Pf=" + (0x1234).to_bytes(8, "little").hex().encode()).payloads == (b"OK",)
    assert session.cpu.read("r15") == 0x1234
    assert target.read_register(0, "r15") == 0x1234
    target.write_register(0, "xmm12", 0x99)
    assert target.read_register(0, "xmm12") == 0x99
    for name in ("cr3", "fs_base", "gs_base_kernel", "kernel_mode"):
        with pytest.raises(RegisterUnavailable):
            target.write_register(0, name, 0)
    assert target.describe_vcpu(0).startswith("vcpu0 kernel mode")


def test_memory_through_four_level_tables(stopped_in_say_hello) -> None:
    session, target, stub = stopped_in_say_hello
    counter = session.image.symbols.address("counter")
    assert target.read_memory(0, counter, 8) == (7).to_bytes(8, "little")
    target.write_memory(0, counter, (9).to_bytes(8, "little"))
    assert target.read_memory(0, counter, 8) == (9).to_bytes(8, "little")
    assert stub.handle(b"m%x,8" % counter).payloads[0] == (9).to_bytes(8, "little").hex().encode()
    with pytest.raises(MemoryAccessError):
        target.read_memory(0, 0x0000_7000_0000_0000, 4)


def _warnings(gdb: Gdb) -> list:
    return [r for r in gdb.log if r["type"] == "log" and "warning" in str(r["payload"]).lower()]


@pytest.mark.e2e
def test_real_gdb_on_a_64_bit_guest(guest_elf) -> None:
    server = GdbServerProcess(str(guest_elf))
    gdb = Gdb(guest_elf)
    try:
        out = gdb.connect(f"127.0.0.1:{server.port}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        assert "_start" in gdb.console("info symbol $pc")
        gdb.cmd("-break-insert *say_hello")
        gdb.cmd("-exec-continue")
        stop = gdb.wait_stopped()
        assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "say_hello"
        regs = gdb.console("info registers rip rsp cr3 fs_base gs_base kernel_mode")
        assert re.search(r"rip\s+0xffffffff801", regs) and "cr3" in regs
        assert "kernel_mode    0x1" in regs
        assert "0x1122334455667788" in gdb.console("p/x $rax")
        bt = gdb.console("bt")
        assert "say_hello" in bt and "main_loop" in bt
        gdb.cmd("-exec-step-instruction")
        gdb.wait_stopped()
        gdb.cmd("-exec-step-instruction")
        gdb.wait_stopped()
        assert "say_hello+4" in gdb.console("x/i $pc")
        assert "= 7" in gdb.console("p *(long *)&counter")
        gdb.console("set var *(long *)&counter = 8")
        assert "= 8" in gdb.console("p *(long *)&counter")
        gdb.console("watch *(long *)&counter")
        gdb.cmd("-exec-continue")
        stop = gdb.wait_stopped()
        assert stop["reason"] == "watchpoint-trigger", stop
        assert stop["value"]["new"] == "42"
        assert _warnings(gdb) == []
    finally:
        gdb.close()
        server.close()


@pytest.mark.slow
@pytest.mark.e2e
def test_gdb_on_debian_linux_breaks_at_xen_start_kernel() -> None:
    from debian_kernel import debian_vmlinuz, fetch_debian_vmlinux_dbg
    vmlinuz = debian_vmlinuz()
    vmlinux = fetch_debian_vmlinux_dbg().path
    server = GdbServerProcess(str(vmlinuz), "--cmdline", "earlyprintk=xen console=hvc0")
    gdb = Gdb(vmlinux)
    try:
        out = gdb.connect(f"127.0.0.1:{server.port}")
        assert any(r["message"] == "connected" for r in out if r["type"] == "result"), out
        gdb.cmd("-break-insert xen_start_kernel", timeout=120)
        gdb.cmd("-exec-continue")
        stop = gdb.wait_stopped(timeout=120)
        assert stop["reason"] == "breakpoint-hit", stop
        assert stop["frame"]["func"] == "xen_start_kernel"
        assert stop["frame"]["file"].endswith("enlighten_pv.c")
        bt = gdb.console("bt", timeout=120)
        assert "xen_start_kernel" in bt and "enlighten_pv.c" in bt
        regs = gdb.console("info registers rip cr3 kernel_mode")
        assert "xen_start_kernel" in regs and "cr3" in regs
        line_before = gdb.console("info line *$pc")
        gdb.cmd("-exec-next", timeout=120)
        stop = gdb.wait_stopped(timeout=120)
        assert stop["frame"]["func"] == "xen_start_kernel", stop
        assert gdb.console("info line *$pc") != line_before
        gdb.cmd("-exec-step-instruction")
        gdb.wait_stopped()
        assert _warnings(gdb) == []
    finally:
        gdb.close()
        server.close()
