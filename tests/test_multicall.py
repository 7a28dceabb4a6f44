"""multicall: each entry through the same dispatch, results written back, failures do
not stop the batch, no nesting, iret ends it, a blocking entry continues later, and the
trace shows the batch as a parent with one child record per entry."""
from __future__ import annotations

from pvasm import session, u32, words
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind

ENOSYS, EINVAL, EFAULT = 38, 22, 14


def results(s, n):
    base = s.symbol("calls")
    return [words(s, base + 32 * i + 4, 1)[0] for i in range(n)]


def neg(e):
    return (-e) & 0xFFFFFFFF


def test_batch_results_and_trace(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $calls, %ebx
    movl $4, %ecx
    HYPERCALL(HC_multicall)
    movl %eax, rc
    POWEROFF
.data
msg: .ascii "from a multicall\n"
calls:
    .long HC_xen_version, 0xdead, 0, 0, 0, 0, 0, 0
    .long HC_console_io, 0xdead, 0, 17, msg, 0, 0, 0
    .long 99, 0xdead, 0, 0, 0, 0, 0, 0
    .long HC_multicall, 0xdead, calls, 1, 0, 0, 0, 0
rc: .long 0xff
""")
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown
    assert u32(s, "rc") == 0
    assert results(s, 4) == [0x00040011, 0, neg(ENOSYS), neg(EINVAL)]
    assert "from a multicall" in s.console_text
    parent = [r for r in s.trace if r.kind is TraceKind.hypercall and r.name == "multicall"][0]
    kids = [r for r in s.trace if r.kind is TraceKind.multicall_entry]
    assert [k.name for k in kids] == ["xen_version", "console_io", "hypercall_99", "multicall"]
    assert all(k.parent == parent.seq for k in kids)
    assert [k.seq for k in kids] == sorted(k.seq for k in kids) and kids[0].seq > parent.seq
    assert kids[3].error == "-EINVAL" and "reentry" in kids[3].detail
    console = [r for r in s.trace if r.kind is TraceKind.console and "multicall" in r.detail][0]
    assert console.parent == kids[1].seq


def test_iret_entry_ends_the_batch(tmp_path):
    s = session(tmp_path, r"""
_start:
    pushl $0x200
    pushl $KCS
    pushl $landing
    pushl $0x4321                     /* EAX restored by iret */
    movl $calls, %ebx
    movl $3, %ecx
    movl $HC_multicall, %eax          /* int $0x82 directly: ESP is the iret frame */
    int $0x82
    POWEROFF                          /* not reached: iret goes to landing */
landing:
    movl %eax, eax_after
    POWEROFF
.data
calls:
    .long HC_xen_version, 0xdead, 0, 0, 0, 0, 0, 0
    .long HC_iret, 0xdead, 0, 0, 0, 0, 0, 0
    .long HC_xen_version, 0xdead, 0, 0, 0, 0, 0, 0
eax_after: .long 0
""")
    stop = s.run(max_insns=10_000)
    assert stop.reason is StopReason.shutdown
    res = results(s, 3)
    assert res[0] == 0x00040011 and res[2] == 0xDEAD      # third entry never ran
    kids = [r.name for r in s.trace if r.kind is TraceKind.multicall_entry]
    assert kids == ["xen_version", "iret"]
    assert u32(s, "eax_after") == 0x4321


def test_bad_list_is_efault(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $0x700000, %ebx
    movl $2, %ecx
    HYPERCALL(HC_multicall)
    movl %eax, rc
    movl $0xf5800000 - 32, %ebx
    movl $4, %ecx
    HYPERCALL(HC_multicall)
    movl %eax, rc2
    POWEROFF
.data
rc: .long 0
rc2: .long 0
""")
    s.run(max_insns=10_000)
    assert u32(s, "rc") == neg(EFAULT) and u32(s, "rc2") == neg(EFAULT)


def test_block_in_a_batch_continues_after_wake(tmp_path):
    s = session(tmp_path, r"""
_start:
    MAP_SHARED_INFO
    movl $cb, %ecx
    movl $0, %ebx
    HYPERCALL(HC_callback_op)
    movl $1, %ebx
    movl $virq, %ecx
    HYPERCALL(HC_event_channel_op)
    movl $calls, %ebx
    movl $3, %ecx
    HYPERCALL(HC_multicall)
    movl %eax, rc
    POWEROFF
upcall:
    movb $0, shinfo
    movl $0, shinfo+4
    movl $0, shinfo+2048
    incl ticks
    jmp hypercall_page + HC_iret * 32
.data
cb: .word 0, 0
    .long KCS, upcall
virq: .long 0, 0, 0
ticks: .long 0
rc: .long 0xff
calls:
    .long HC_xen_version, 0xdead, 0, 0, 0, 0, 0, 0
    .long HC_sched_op, 0xdead, 1, 0, 0, 0, 0, 0
    .long HC_xen_version, 0xdead, 0, 0, 0, 0, 0, 0
""")
    stop = s.run(max_insns=100_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert results(s, 3) == [0x00040011, 0, 0x00040011]
    assert u32(s, "rc") == 0 and u32(s, "ticks") == 1
    batches = [r for r in s.trace if r.kind is TraceKind.hypercall and r.name == "multicall"]
    assert batches[0].result == 13 and "continue later" in batches[0].detail
    assert batches[1].result == 0 and batches[1].args["nr_calls"] == 1
