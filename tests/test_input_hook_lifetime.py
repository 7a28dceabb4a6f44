"""The console input poll watch's read hook (pvdbg/guestinput.py) exists only while the
guest may poll: dropped after a quiet stretch, back after a hypercall or with input
queued, and kept while the guest polls, on both clocks."""
from __future__ import annotations

from pvasm import session
from pvdbg.guestinput import QUIET_INSNS_BEFORE_UNHOOK
from pvdbg.session import StopReason

# Spin with no hypercall and no console read; then one xen_version, then spin again.
QUIET_THEN_HYPERCALL = r"""
_start:
    mov $3000000, %ecx
spin1:
    dec %ecx
    jnz spin1
    mov $0, %ebx
    xor %ecx, %ecx
    mov $HC_xen_version, %eax
    HYPERCALL(HC_xen_version)
after_hypercall:
    mov $3000000, %ecx
spin2:
    dec %ecx
    jnz spin2
    POWEROFF
"""

# Poll in_prod (as in test_console_input.ECHO_GUEST) after a long quiet spin.
POLL_FOREVER = r"""
_start:
    lea 0x2000(%esi), %ebx
poll:
    movl 3076(%ebx), %eax
    cmpl 3072(%ebx), %eax
    je poll
    POWEROFF
"""


def test_quiet_guest_drops_the_hook_and_a_hypercall_brings_it_back(tmp_path):
    s = session(tmp_path, QUIET_THEN_HYPERCALL, name="quiet")
    assert s.input_watch.installed
    s.run(max_insns=2 * QUIET_INSNS_BEFORE_UNHOOK + 10)
    assert not s.input_watch.installed
    after = s.symbol("after_hypercall")
    s.add_breakpoint(after)
    assert s.run(max_insns=10_000_000).reason is StopReason.breakpoint
    s.remove_breakpoint(after)
    stop = s.run(max_insns=100)                  # the hypercall's slice is settled
    assert stop.reason is StopReason.limit
    assert s.input_watch.installed
    assert s.run(max_insns=20_000_000).reason is StopReason.shutdown


def test_same_counts_with_and_without_the_hook(tmp_path):
    """Dropping the hook changes no instruction count: the icount clock stays exact."""
    first = session(tmp_path, QUIET_THEN_HYPERCALL, name="quiet")
    assert first.run(max_insns=20_000_000).reason is StopReason.shutdown
    second = session(tmp_path, QUIET_THEN_HYPERCALL, name="quiet")
    second.run(max_insns=1_234_567)
    assert second.run(max_insns=20_000_000).reason is StopReason.shutdown
    assert first.cpu.icount == second.cpu.icount
    assert [r.name for r in first.trace.records()] == [r.name for r in second.trace.records()]


def test_polling_guest_keeps_the_hook_and_idles(tmp_path):
    for clock in ("icount", "host"):
        s = session(tmp_path, POLL_FOREVER, name="poll", clock=clock)
        stop = s.run(max_insns=5_000_000) if clock == "icount" else s.run(timeout=30)
        assert stop.reason is StopReason.idle, (clock, stop)
        assert s.input_watch.installed


def test_queued_input_brings_the_hook_back(tmp_path):
    s = session(tmp_path, QUIET_THEN_HYPERCALL, name="quiet")
    s.run(max_insns=2 * QUIET_INSNS_BEFORE_UNHOOK + 10)
    assert not s.input_watch.installed
    s.console_send(b"x")
    s.run(max_insns=10)
    assert s.input_watch.installed
