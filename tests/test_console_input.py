"""Console input for a guest that busy-polls its PV console ring (as PV GRUB does):
delivery between slices, the idle stop when no more input can come, sleeping (not
spinning) while a front end may still type, exact single steps through the poll loop."""
from __future__ import annotations

import threading
import time

from pvasm import session
from pvdbg.guestinput import POLLS_BEFORE_IDLE, ConsoleInput
from pvdbg.session import StopReason

# Echo console input to console output until 'q'; the console page follows start_info
# and the xenstore page in the builder's layout.  No hypercall while waiting.
ECHO_GUEST = r"""
_start:
    lea 0x2000(%esi), %ebx          /* xencons_interface */
poll:
    movl 3076(%ebx), %eax           /* in_prod */
    cmpl 3072(%ebx), %eax           /* in_cons */
    je poll
    movl 3072(%ebx), %ecx
    andl $1023, %ecx
    movzbl (%ebx,%ecx), %edx
    incl 3072(%ebx)
    cmpb $'q', %dl
    je done
    movl 3084(%ebx), %ecx           /* out_prod */
    andl $2047, %ecx
    movb %dl, 1024(%ebx,%ecx)
    incl 3084(%ebx)
    jmp poll
done:
    POWEROFF
"""


def echo(tmp_path, **options):
    return session(tmp_path, ECHO_GUEST, name="echo", **options)


def test_idle_stop_when_no_input_can_come(tmp_path):
    s = echo(tmp_path)
    stop = s.run(max_insns=10_000_000)
    assert stop.reason is StopReason.idle, stop
    assert "no more input" in stop.detail
    assert s.cpu.icount == 1 + 3 * (POLLS_BEFORE_IDLE - 1)   # lea, then 3-insn polls
    assert s.read_memory(stop.eip, 3) == bytes.fromhex("8b8304")   # stopped before the poll
    first = s.cpu.icount
    s.console_send(b"abc")
    assert s.run(max_insns=10_000_000).reason is StopReason.idle
    assert s.console_text == "abc"
    assert s.trace.records()[-1].name == "console_ring"
    s.console_send(b"zq")
    assert s.run(max_insns=10_000_000).reason is StopReason.shutdown
    assert s.console_text == "abcz"
    again = echo(tmp_path)                          # deterministic: same counts
    assert again.run().reason is StopReason.idle and again.cpu.icount == first


def test_open_input_sleeps_until_input_arrives(tmp_path):
    s = echo(tmp_path)
    s.console_input.open()
    threading.Timer(0.4, s.console_send, (b"hi q",)).start()
    started = time.monotonic()
    cpu = time.process_time()
    stop = s.run(timeout=30)
    assert stop.reason is StopReason.shutdown, stop
    assert s.console_text == "hi "
    assert time.monotonic() - started >= 0.35
    assert time.process_time() - cpu < 0.3          # asleep while waiting, not polling
    assert s.hv.time.idle_ns >= 300_000_000         # the guest's clock moved on meanwhile


def test_stop_request_wakes_a_waiting_run(tmp_path):
    s = echo(tmp_path)
    s.console_input.open()
    threading.Timer(0.2, s.request_stop).start()
    stop = s.run(timeout=30)
    assert stop.reason is StopReason.interrupt, stop
    s.console_input.close()
    assert s.run().reason is StopReason.idle


def test_steps_through_the_poll_loop_are_exact(tmp_path):
    s = echo(tmp_path)
    before = s.cpu.icount
    stop = s.step(10 * POLLS_BEFORE_IDLE)
    assert stop.reason is StopReason.step
    assert s.cpu.icount - before == 10 * POLLS_BEFORE_IDLE
    s.console_send(b"x")
    s.step(40)
    assert s.console_text == "x"                    # input reaches the ring while stepping


def test_console_input_queue():
    q = ConsoleInput()
    assert q.closed and q.arrived.is_set() is False
    q.open()
    q.feed(b"ab")
    q.feed(b"c")
    assert q.pending() and q.arrived.is_set()
    assert q.take() == b"abc" and not q.pending() and not q.arrived.is_set()
    q.close()
    assert q.take() == b"" and q.arrived.is_set()   # closed: waits never block


def test_idle_stop_mid_block_is_exact(tmp_path):
    """The polling read in the middle of a translated block: the stop still falls right
    before it, with the instructions before it counted."""
    s = session(tmp_path, r"""
_start:
    lea 0x2000(%esi), %ebx
poll:
    nop
    nop
    movl 3076(%ebx), %eax
    cmpl 3072(%ebx), %eax
    je poll
    POWEROFF
""", name="midblock")
    stop = s.run(max_insns=1_000_000)
    assert stop.reason is StopReason.idle
    assert s.cpu.icount == 1 + 5 * (POLLS_BEFORE_IDLE - 1) + 2
    assert s.read_memory(stop.eip, 2) == b"\x8b\x83"
