"""multicall: a batch of hypercalls in one trap.

Each entry goes through the same dispatch as a direct hypercall, its result is written
back into the entry, and a failing entry does not stop the batch.  A multicall inside a
multicall gets -EINVAL; an iret entry ends the batch (the multicall returns what iret
returns); a sub-call that blocks the vcpu leaves the rest as a continuation (the
multicall restarts on the remaining entries when the vcpu runs again).  The trace shows
the batch as the multicall's own record with one multicall_entry child per entry.
ABI: xen/include/public/xen.h struct multicall_entry (compat: 32 bytes, op, result,
args[6]); xen/common/multicall.c do_multicall; xen/arch/x86/pv/hypercall.c
pv_do_multicall_call; XEN-PV-ABI.md 3.16.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..trace import TraceKind, TraceRecord
from .abi import MulticallEntry32
from .constants import Errno, Hc, errno_name
from .guestmem import GuestFault
from .hypercalls import HYPERCALLS, Param, fail

if TYPE_CHECKING:
    from .hypervisor import HypercallContext

ENTRY_SIZE = MulticallEntry32.SIZE
RESULT_OFFSET = MulticallEntry32.offset_of("result")


class MulticallState:
    """Per-vcpu mc_state: only the in-multicall flag matters here."""

    def __init__(self, nr_vcpus: int) -> None:
        self.in_multicall = [False] * nr_vcpus
        self.batches = 0
        self.entries = 0


@HYPERCALLS.handler(Hc.multicall, Param("call_list"), Param("nr_calls", "int"))
def multicall(ctx: "HypercallContext", call_list: int, nr_calls: int) -> int:
    hv = ctx.hv
    state: MulticallState = hv.multicalls
    vid = ctx.vcpu.vcpu_id
    if state.in_multicall[vid]:
        raise fail(Errno.EINVAL, "multicall reentry is disallowed")
    if nr_calls and (call_list + nr_calls * ENTRY_SIZE > ctx.guest.hole_start
                     or nr_calls * ENTRY_SIZE > ctx.guest.hole_start):
        raise fail(Errno.EFAULT, f"{nr_calls} entries at {call_list:#x} reach the hypervisor hole")
    state.in_multicall[vid] = True
    state.batches += 1
    parent = hv.current_hypercall_seq
    cpu = hv.cpu
    regs = cpu.read_many(("eip", "esp"))
    caller = (regs["eip"] - 2) & 0xFFFFFFFF
    symbol = hv._caller_symbol(caller, regs["esp"])
    try:
        for i in range(nr_calls):
            va = call_list + i * ENTRY_SIZE
            try:
                raw = ctx.guest.read(va, ENTRY_SIZE)
            except GuestFault as fault:
                ctx.note(f"entry {i} unreadable: {fault.reason}")
                return -Errno.EFAULT
            op, _result, *args = struct.unpack("<8I", raw)
            sub = type(ctx)(hv, ctx.vcpu)
            seq = hv.trace.next_seq()
            hv.current_hypercall_seq = seq
            icount = cpu.icount
            name, decoded, result = hv.dispatch_hypercall(sub, op, tuple(args[:5]) + (0,))
            hv.current_hypercall_seq = parent
            state.entries += 1
            if result is not None:
                try:
                    ctx.guest.write_u32(va + RESULT_OFFSET, result)
                except GuestFault as fault:
                    ctx.note(f"entry {i} result not writable: {fault.reason}")
                    return -Errno.EFAULT
            hv.emit(TraceRecord(
                seq=seq, kind=TraceKind.multicall_entry, icount=icount, vcpu=vid, eip=caller,
                name=name, args=decoded, result=result, error=errno_name(result or 0),
                symbol=symbol, detail="; ".join([f"entry {i}"] + sub.details), parent=parent))
            if op == Hc.iret:
                ctx.note(f"iret at entry {i} ends the batch")
                return result
            if hv.domain.is_dying:
                return 0
            if ctx.vcpu.blocked and i + 1 < nr_calls:
                # Continuation: the remaining entries run when the vcpu is woken.
                left = nr_calls - i - 1
                cpu.write_many({"ebx": va + ENTRY_SIZE, "ecx": left,
                                "eip": (regs["eip"] - 2) & 0xFFFFFFFF})
                ctx.note(f"entry {i} blocked the vcpu: {left} entries continue later")
                return Hc.multicall
        ctx.note(f"{nr_calls} entries")
        return 0
    finally:
        state.in_multicall[vid] = False
