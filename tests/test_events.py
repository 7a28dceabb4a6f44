"""2-level event channels: pending/mask/selector bits, the EVTCHNOP commands, backends,
and upcall delivery to a running guest."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pvasm import session, u32, words
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.events import EvtchnOp, EvtchnStatus, Virq
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.hypercalls import HypercallError

IDLE = r"""
_start:
    jmp _start
.data
.balign 4096
args: .fill 1024, 1, 0
"""


@pytest.fixture
def idle(tmp_path):
    return session(tmp_path, IDLE, name="idle")


def op(s, cmd, payload: bytes, out_len: int = 0) -> tuple[int, bytes]:
    """Run EVTCHNOP `cmd` with `payload` at a guest buffer; (result, buffer after)."""
    hv = s.hv
    va = s.symbol("args")
    hv.guest.write(va, payload + bytes(32 - len(payload)))
    ctx = HypercallContext(hv, hv.current)
    try:
        rc = hv.events.op(ctx, cmd, va)
    except HypercallError as err:
        rc = -err.errno
    return rc, hv.guest.read(va, 32)


def sel(s):
    return s.hv.vcpu_info(0).evtchn_pending_sel


def test_start_info_ports_are_bound_to_dom0_daemons(idle):
    """xenstored and xenconsoled (pvdbg.xen.devices) bind start_info's ports at once."""
    ev = idle.hv.events
    assert (ev.store_port, ev.console_port) == (1, 2)
    for port, backend in ((1, idle.devices.store_port), (2, idle.devices.console_port)):
        rc, out = op(idle, EvtchnOp.status, struct.pack("<HHI", 0x7FF0, 0, port))
        assert rc == 0
        status, _vcpu, dom, _pad, rport = struct.unpack_from("<IIHHI", out, 8)
        assert status == EvtchnStatus.interdomain and dom == 0 and rport == backend.port


def test_backend_binds_start_info_port_and_notifies(idle):
    ev = idle.hv.events
    ev.close_backend(idle.devices.store_port)        # the port goes back to unbound for dom0
    rc, out = op(idle, EvtchnOp.status, struct.pack("<HHI", 0x7FF0, 0, ev.store_port))
    status, _vcpu, dom = struct.unpack_from("<IIH", out, 8)
    assert rc == 0 and status == EvtchnStatus.unbound and dom == 0
    got = []
    backend = ev.register_backend("xenstore", lambda: got.append(1), guest_port=ev.store_port)
    rc, out = op(idle, EvtchnOp.status, struct.pack("<HHI", 0x7FF0, 0, ev.store_port))
    status, _vcpu, dom, _pad, rport = struct.unpack_from("<IIHHI", out, 8)
    assert status == EvtchnStatus.interdomain and dom == 0 and rport == backend.port
    rc, _ = op(idle, EvtchnOp.send, struct.pack("<I", ev.store_port))
    assert rc == 0 and got == [1]
    assert backend.notify()
    assert ev.is_pending(ev.store_port) and sel(idle) & 1
    assert idle.hv.vcpu_info(0).evtchn_upcall_pending == 1


def test_guest_binds_to_backend_port_and_gets_pending(idle):
    ev = idle.hv.events
    backend = ev.register_backend("vif", None)
    rc, out = op(idle, EvtchnOp.bind_interdomain, struct.pack("<HHII", 0, 0, backend.port, 0))
    assert rc == 0
    local = struct.unpack_from("<I", out, 8)[0]
    assert backend.guest_port == local
    assert ev.is_pending(local)                      # Xen always sets the new local port
    rc, _ = op(idle, EvtchnOp.close, struct.pack("<I", local))
    assert rc == 0 and not backend.connected and not ev.is_pending(local)


def test_set_pending_masked_then_unmask(idle):
    ev = idle.hv.events
    rc, out = op(idle, EvtchnOp.bind_ipi, struct.pack("<I", 0))
    port = struct.unpack_from("<I", out, 4)[0]
    assert port == 3                                 # lowest free after store and console
    mask_word = idle.hv.shared_info_maddr() + 2176
    idle.hv.memory.write_u32(mask_word, 1 << port)
    rc, _ = op(idle, EvtchnOp.send, struct.pack("<I", port))
    assert rc == 0 and ev.is_pending(port)
    assert sel(idle) == 0 and idle.hv.vcpu_info(0).evtchn_upcall_pending == 0
    assert ev.pending_unmasked_ports(idle.hv.current) == []
    rc, _ = op(idle, EvtchnOp.unmask, struct.pack("<I", port))
    assert rc == 0 and sel(idle) == 1 and idle.hv.vcpu_info(0).evtchn_upcall_pending == 1
    assert ev.pending_unmasked_ports(idle.hv.current) == [port]


def test_second_pending_does_not_reraise(idle):
    ev = idle.hv.events
    ev.set_pending(40)
    assert sel(idle) == 1 << 1
    idle.hv.memory.write_u32(idle.hv.vcpu_info_maddr(0) + 4, 0)   # guest consumed sel
    ev.set_pending(40)                                             # already pending: no-op
    assert sel(idle) == 0


def test_bind_virq_rules(idle):
    rc, out = op(idle, EvtchnOp.bind_virq, struct.pack("<II", Virq.TIMER, 0))
    assert rc == 0
    port = struct.unpack_from("<I", out, 8)[0]
    assert op(idle, EvtchnOp.bind_virq, struct.pack("<II", Virq.TIMER, 0))[0] == -17   # EEXIST
    assert op(idle, EvtchnOp.bind_virq, struct.pack("<II", 24, 0))[0] == -22          # EINVAL
    assert op(idle, EvtchnOp.bind_virq, struct.pack("<II", Virq.CONSOLE, 1))[0] == -22
    assert op(idle, EvtchnOp.bind_virq, struct.pack("<II", Virq.TIMER, 5))[0] == -2   # ENOENT
    assert op(idle, EvtchnOp.send, struct.pack("<I", port))[0] == -22
    assert idle.hv.events.send_virq(Virq.TIMER, 0)
    assert idle.hv.events.is_pending(port)
    rc, out = op(idle, EvtchnOp.status, struct.pack("<HHI", 0x7FF0, 0, port))
    assert struct.unpack_from("<III", out, 8) == (EvtchnStatus.virq, 0, Virq.TIMER)
    assert op(idle, EvtchnOp.bind_vcpu, struct.pack("<II", port, 0))[0] == -22  # per-vcpu virq
    assert not idle.hv.events.raise_debug_virq()       # VIRQ_DEBUG unbound: nothing sent


def test_loopback_interdomain_and_close(idle):
    ev = idle.hv.events
    rc, out = op(idle, EvtchnOp.alloc_unbound, struct.pack("<HHI", 0x7FF0, 0x7FF0, 0))
    a = struct.unpack_from("<I", out, 4)[0]
    rc, out = op(idle, EvtchnOp.bind_interdomain, struct.pack("<HHII", 0x7FF0, 0, a, 0))
    assert rc == 0
    b = struct.unpack_from("<I", out, 8)[0]
    ev.clear_pending(b)
    assert op(idle, EvtchnOp.send, struct.pack("<I", a))[0] == 0
    assert ev.is_pending(b) and not ev.is_pending(a)
    assert op(idle, EvtchnOp.close, struct.pack("<I", b))[0] == 0
    assert ev.channels[a].state is EvtchnStatus.unbound
    assert op(idle, EvtchnOp.close, struct.pack("<I", b))[0] == -22
    assert op(idle, EvtchnOp.send, struct.pack("<I", a))[0] == 0        # unbound: dropped


def test_errors_and_reset(idle):
    assert op(idle, EvtchnOp.close, struct.pack("<I", 0))[0] == -22         # reserved
    assert op(idle, EvtchnOp.send, struct.pack("<I", 5000))[0] == -22
    assert op(idle, EvtchnOp.alloc_unbound, struct.pack("<HHI", 0, 0, 0))[0] == -1  # EPERM
    assert op(idle, EvtchnOp.status, struct.pack("<HHI", 9, 0, 1))[0] == -3        # ESRCH
    assert op(idle, EvtchnOp.bind_pirq, struct.pack("<III", 1, 0, 0))[0] == -1
    assert op(idle, EvtchnOp.init_control, b"")[0] == -38
    assert op(idle, 99, b"")[0] == -38
    assert op(idle, EvtchnOp.reset, struct.pack("<H", 0x7FF0))[0] == 0
    assert all(c.state is EvtchnStatus.closed for c in idle.hv.events.channels)


def test_upcall_after_send_and_iret_back(tmp_path):
    """Unmask, send an IPI: the upcall arrives when the send hypercall returns, with a
    frame saying events were enabled; the handler scans the 2-level bits and irets."""
    s = session(tmp_path, r"""
_start:
    movl $cb, %ecx
    movl $0, %ebx
    HYPERCALL(HC_callback_op)
    movl $7, %ebx                  /* EVTCHNOP_bind_ipi */
    movl $ipi, %ecx
    HYPERCALL(HC_event_channel_op)
    movl %eax, bind_rc
    movl shinfo_va, %eax
    movb $0, 1(%eax)               /* unmask: evtchn_upcall_mask = 0 */
    movl $4, %ebx                  /* EVTCHNOP_send */
    movl $ipi + 4, %ecx
    HYPERCALL(HC_event_channel_op)
after_send:
    movl %eax, send_rc
    POWEROFF
upcall:
    pushal
    movl 32(%esp), %eax
    movl %eax, up_eip
    movl 36(%esp), %eax
    movl %eax, up_cs
    movl shinfo_va, %ebx
    movb $0, (%ebx)                /* upcall_pending = 0 */
    xorl %eax, %eax
    xchgl %eax, 4(%ebx)            /* sel */
    movl %eax, up_sel
    movl 2048(%ebx), %eax          /* evtchn_pending[0] */
    movl %eax, up_pending
    movl $0, 2048(%ebx)
    incl upcalls
    popal
    jmp hypercall_page + HC_iret * 32
.data
cb: .word 0, 0
    .long KCS, upcall
ipi: .long 0, 0
shinfo_va: .long 0
bind_rc: .long 0
send_rc: .long 0
up_eip: .long 0
up_cs: .long 0
up_sel: .long 0
up_pending: .long 0
upcalls: .long 0
""")
    # The guest reaches shared_info through a mapping the test provides: reuse the
    # page-aligned `args`-less layout by mapping shared_info at a spare kernel VA.
    hv = s.hv
    spare = s.symbol("upcalls") + 0x2000 & ~0xFFF
    walk = hv.guest.translate(spare)
    hv.memory.write_u64(walk.l1_entry_maddr, hv.shared_info_maddr() | 0x63)
    s.cpu.flush_tlb()
    hv.guest.write_u32(s.symbol("shinfo_va"), spare)
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.shutdown, s.crash and s.crash.reason
    port = words(s, s.symbol("ipi") + 4, 1)[0]
    assert u32(s, "bind_rc") == 0 and u32(s, "send_rc") == 0
    assert u32(s, "upcalls") == 1
    # Xen delivers on the way back from the hypercall: inside the stub, at its `ret`.
    stub_ret = s.symbol("hypercall_page") + 32 * 32 + 7
    assert u32(s, "up_eip") == stub_ret
    assert u32(s, "up_cs") == 0xE019                    # saved mask 0 in bits 16-23
    assert u32(s, "up_sel") == 1 and u32(s, "up_pending") == 1 << port
    rec = [r for r in s.trace if r.kind is TraceKind.upcall][0]
    assert rec.args["ports"] == [port] and rec.eip == stub_ret
    assert hv.vcpu_info(0).evtchn_upcall_mask == 0      # iret restored it from EFLAGS.IF


def test_upcall_without_callback_crashes(tmp_path):
    s = session(tmp_path, IDLE, name="nocb")
    s.hv.memory.write(s.hv.vcpu_info_maddr(0) + 1, b"\x00")
    s.hv.events.set_pending(5)
    stop = s.run(max_insns=1000)
    assert stop.reason is StopReason.crash
    assert "no event callback is registered" in s.crash.reason


# -- scenario guests (guests/scenarios) ----------------------------------------------

SCENARIOS = Path(__file__).resolve().parent.parent / "guests" / "scenarios"


def scenario(tmp_path, name, **options):
    from guestbuild import build_asm_guest
    from pvdbg.session import Session, SessionOptions
    from pvdbg.xen.image import load_guest_image
    elf = build_asm_guest(tmp_path, (SCENARIOS / f"{name}.S").read_text(), name)
    return Session(load_guest_image(str(elf)), SessionOptions(**options))


def test_scenario_lost_wakeup(tmp_path):
    s = scenario(tmp_path, "lost_wakeup")
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.blocked
    assert "port 3 (ipi) is pending and unmasked" in stop.detail
    assert "lost wakeup" in stop.detail and "SCHEDOP_block" in stop.detail
    assert not [r for r in s.trace if r.kind is TraceKind.upcall]
    info = s.hv.vcpu_info(0)
    assert info.evtchn_upcall_pending == 0 and info.evtchn_pending_sel == 0
    assert s.hv.events.is_pending(3) and not s.hv.events.is_masked(3)


def test_scenario_event_storm_with_mask_left_set(tmp_path):
    s = scenario(tmp_path, "event_storm")
    stop = s.run(max_insns=1_000_000)
    assert stop.reason is StopReason.shutdown and s.shutdown_reason.name == "crash"
    ups = [r for r in s.trace if r.kind is TraceKind.upcall]
    assert len(ups) == 1
    sends = [r for r in s.trace if r.name == "event_channel_op" and r.args["cmd"] == "send"]
    assert len(sends) == 64
    late = [r for r in sends if r.seq > ups[0].seq]
    assert len(late) == 63
    assert all(f"the last upcall was trace seq {ups[0].seq}" in r.detail for r in late)
    info = s.hv.vcpu_info(0)
    assert info.evtchn_upcall_mask == 1 and info.evtchn_upcall_pending == 1
    # The handler returned with a native iret: no iret hypercall follows the upcall.
    assert not [r for r in s.trace if r.name == "iret"]


def test_upcall_from_ring3_lands_on_kernel_stack(tmp_path):
    """An event arriving while the guest runs in ring 3 is delivered at the next return
    to the guest: frame on kernel_ss:kernel_sp with the ring-3 ESP and SS."""
    from pvasm import user_pages
    s = session(tmp_path, r"""
_start:
    movl $cb, %ecx
    movl $0, %ebx
    HYPERCALL(HC_callback_op)
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    pushl $UDS
    pushl $ustack_top
    pushl $0x202
    pushl $UCS
    pushl $user
    jmp hypercall_page + HC_iret * 32
upcall:
    movl %esp, %esi
    movl $frame, %edi
    movl $5, %ecx
    rep movsl
    POWEROFF
.balign 4096
user:
    jmp user
.data
cb: .word 0, 0
    .long KCS, upcall
frame: .fill 5, 4, 0
.balign 4096
ustack: .fill 1024, 4, 0
ustack_top:
kstack: .fill 1024, 4, 0
kstack_top:
""", name="ring3up")
    user_pages(s, s.symbol("user"))
    user_pages(s, s.symbol("ustack"))
    assert s.run(max_insns=5000).reason is StopReason.limit
    assert s.cpu.cpl == 3
    s.hv.events.set_pending(9)
    stop = s.run(max_insns=5000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    eip, cs_word, eflags, esp, ss = words(s, s.symbol("frame"), 5)
    assert eip == s.symbol("user") and cs_word == 0xE02B     # saved mask 0
    assert esp == s.symbol("ustack_top") and ss == 0xE033 and eflags & 0x200
    rec = [r for r in s.trace if r.kind is TraceKind.upcall][0]
    assert rec.args["ring"] == 3 and rec.args["frame"] == s.symbol("kstack_top") - 20
