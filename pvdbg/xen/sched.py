"""sched_op and sched_op_compat: yield, block, shutdown, poll.
ABI: xen/include/public/sched.h; xen/common/sched/core.c do_sched_op."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .abi import SchedPoll32, SchedRemoteShutdown, SchedShutdown
from .constants import Errno, Hc, SchedOp, ShutdownReason
from .hypercalls import HYPERCALLS, Param, fail

if TYPE_CHECKING:
    from .hypervisor import HypercallContext

MAX_POLL_PORTS = 128


def _reason_name(reason: int) -> str:
    try:
        return ShutdownReason(reason).name
    except ValueError:
        return f"reason {reason}"


def _shutdown(ctx: "HypercallContext", reason: int) -> int:
    if reason not in ShutdownReason.__members__.values():
        raise fail(Errno.EINVAL, f"unknown shutdown reason {reason}")
    reason = ShutdownReason(reason)
    ctx.note(f"domain shutdown: {reason.name}")
    if reason is ShutdownReason.suspend:
        ctx.note("suspend is cancelled by this Xen (no toolstack to save the domain)")
        return 1
    ctx.hv.shutdown(reason, f"guest asked for shutdown ({reason.name})")
    return 0


@HYPERCALLS.handler(Hc.sched_op, Param("cmd", SchedOp), Param("arg"))
def sched_op(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    if cmd == SchedOp.yield_:
        ctx.hv.scheduler.yield_(ctx.vcpu)
        return 0
    if cmd == SchedOp.block:
        ctx.hv.block_vcpu(ctx.vcpu)
        return 0
    if cmd == SchedOp.shutdown:
        return _shutdown(ctx, SchedShutdown.from_bytes(ctx.guest.read(arg, SchedShutdown.SIZE)).reason)
    if cmd == SchedOp.poll:
        poll = SchedPoll32.from_bytes(ctx.guest.read(arg, SchedPoll32.SIZE))
        if poll.nr_ports > MAX_POLL_PORTS:
            raise fail(Errno.EINVAL, f"nr_ports {poll.nr_ports} > {MAX_POLL_PORTS}")
        ports = [ctx.guest.read_u32(poll.ports + 4 * i) for i in range(poll.nr_ports)]
        ctx.note(f"ports {ports} timeout {poll.timeout}")
        return ctx.hv.poll_vcpu(ctx.vcpu, ports, poll.timeout)
    if cmd == SchedOp.remote_shutdown:
        req = SchedRemoteShutdown.from_bytes(ctx.guest.read(arg, SchedRemoteShutdown.SIZE))
        if req.domain_id != ctx.domain.domid:
            raise fail(Errno.EPERM, "remote_shutdown of another domain needs privilege")
        return _shutdown(ctx, req.reason)
    if cmd == SchedOp.shutdown_code:
        reason = SchedShutdown.from_bytes(ctx.guest.read(arg, SchedShutdown.SIZE)).reason
        ctx.note(f"shutdown code set to {_reason_name(reason)}")
        return 0
    if cmd == SchedOp.watchdog:
        raise fail(Errno.ENOSYS, "watchdogs are not provided")
    if cmd == SchedOp.pin_override:
        raise fail(Errno.EPERM, "pin_override is for the hardware domain")
    raise fail(Errno.ENOSYS, f"unknown sched_op {cmd}")


@HYPERCALLS.handler(Hc.sched_op_compat, Param("cmd", SchedOp), Param("arg"))
def sched_op_compat(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    """The old form: shutdown takes the reason directly in `arg`."""
    if cmd == SchedOp.shutdown:
        return _shutdown(ctx, arg)
    if cmd in (SchedOp.yield_, SchedOp.block):
        return sched_op(ctx, cmd, arg)
    raise fail(Errno.ENOSYS, f"sched_op_compat {cmd}")
