"""What the GDB stub needs from a debuggee: the `Target` protocol and its data types.

The stub speaks in vcpu ids (gdb thread N+1 is vcpu N), register names from
`tdesc.py` (`eax`, `eip`, `st0`, `xmm0`, `cr3`, `upcall_mask`, ...) and guest
virtual addresses. Implementations raise the `TargetError` subclasses below; the
stub turns them into RSP `E` replies.

Optional, for speed (the stub looks them up with getattr; engine.SessionTarget has
them): `g_packet(vcpu) -> bytes | None`, the whole `g` reply in the packaged target
description's order (None: use read_register); `resume_is_quick(actions) -> bool`, the
resume ends at once (a single step), so the connection loop runs it without a thread;
`inline_resumes: bool`, any resume may run in the loop's own thread while it watches
the connection for ^C; `stop_registers(vcpu) -> dict[str, int] | None`, at least the
registers a stop reply carries (commands.EXPEDITED_REGISTERS the description has), read
in one batch (None: use read_register).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Protocol, runtime_checkable


class TargetError(Exception):
    """The target refused or could not do what gdb asked."""


class MemoryAccessError(TargetError):
    """Guest virtual address `guest_va` is not mapped (or not writable) for this vcpu."""

    def __init__(self, guest_va: int, message: str = "") -> None:
        super().__init__(message or f"cannot access guest memory at {guest_va:#x}")
        self.guest_va = guest_va


class UnsupportedBreakpoint(TargetError):
    """This breakpoint/watchpoint kind, length or count cannot be provided."""


class RegisterUnavailable(TargetError):
    """The register exists in the description but has no value now (sent as `xx`)."""


class BreakpointKind(Enum):
    """Z/z packet types 0..4 (gdb manual, "Packets" > `Z type,addr,kind`)."""

    SW = 0
    HW = 1
    WRITE = 2
    READ = 3
    ACCESS = 4


class StopReason(Enum):
    BREAKPOINT_SW = "breakpoint_sw"
    BREAKPOINT_HW = "breakpoint_hw"
    WATCH = "watch"          # write watchpoint; StopEvent.address = data address
    RWATCH = "rwatch"        # read watchpoint
    AWATCH = "awatch"        # access watchpoint
    STEP = "step"            # single step or range step finished
    INTERRUPT = "interrupt"  # request_stop() honoured (gdb's ^C)
    CATCH = "catch"          # a pvdbg catchpoint (hypercall, trap, ...); message says which
    SHUTDOWN = "shutdown"    # the domain shut down; exit_code is its SHUTDOWN_* reason
    CRASH = "crash"          # the domain is about to die; the guest is still inspectable


class GdbSignal(IntEnum):
    """gdb's target-independent signal numbers (gdb/include/gdb/signals.def)."""

    INT = 2
    TRAP = 5
    SEGV = 11


_WATCH_REASONS = frozenset({StopReason.WATCH, StopReason.RWATCH, StopReason.AWATCH})


@dataclass(frozen=True)
class StopEvent:
    """Why and where the guest stopped; every vcpu is stopped when this is returned."""

    vcpu: int
    reason: StopReason
    signal: int | None = None       # gdb signal; None -> SIGINT for INTERRUPT, else SIGTRAP
    address: int | None = None      # data guest VA, required for WATCH/RWATCH/AWATCH
    message: str = ""               # shown to the gdb user before the stop is reported
    exit_code: int = 0              # SHUTDOWN only, 0..255

    def __post_init__(self) -> None:
        if self.vcpu < 0:
            raise ValueError(f"StopEvent vcpu must be >= 0, not {self.vcpu}")
        if self.reason in _WATCH_REASONS and self.address is None:
            raise ValueError(f"StopEvent {self.reason.value} needs the data address")
        if not 0 <= self.exit_code <= 0xFF:
            raise ValueError(f"StopEvent exit_code must be 0..255, not {self.exit_code}")

    @property
    def gdb_signal(self) -> int:
        if self.signal is not None:
            return self.signal
        return GdbSignal.INT if self.reason is StopReason.INTERRUPT else GdbSignal.TRAP


class ResumeKind(Enum):
    CONTINUE = "continue"
    STEP = "step"                # one instruction
    RANGE_STEP = "range_step"    # step while range_start <= eip < range_end
    STOP = "stop"                # leave this vcpu stopped


@dataclass(frozen=True)
class ResumeAction:
    kind: ResumeKind
    range_start: int = 0         # guest VA, RANGE_STEP only
    range_end: int = 0           # guest VA, exclusive, RANGE_STEP only


CONTINUE = ResumeAction(ResumeKind.CONTINUE)
STEP = ResumeAction(ResumeKind.STEP)
STAY_STOPPED = ResumeAction(ResumeKind.STOP)


@dataclass(frozen=True)
class ResumeActions:
    """One resume request: an action per named vcpu and one for all the others."""

    per_vcpu: Mapping[int, ResumeAction] = field(default_factory=dict)
    default: ResumeAction = STAY_STOPPED

    def action_for(self, vcpu: int) -> ResumeAction:
        return self.per_vcpu.get(vcpu, self.default)

    def runs_any(self, vcpu_ids: Sequence[int]) -> bool:
        return any(self.action_for(vcpu).kind is not ResumeKind.STOP for vcpu in vcpu_ids)


@runtime_checkable
class Target(Protocol):
    """The debuggee as the GDB stub sees it. All methods are called from one thread,
    except `request_stop`, which may be called from another while `resume` blocks."""

    def vcpu_ids(self) -> Sequence[int]:
        """Ids of the guest's vcpus, ascending, from 0."""
        ...

    def describe_vcpu(self, vcpu: int) -> str:
        """One line for `info threads`, e.g. "vcpu0 ring1 upcall_mask=1 pending=0"."""
        ...

    def read_register(self, vcpu: int, name: str) -> int:
        """Unsigned value; st0..st7 as 80-bit ints, xmm0..xmm7 as 128-bit ints.
        Raises RegisterUnavailable."""
        ...

    def write_register(self, vcpu: int, name: str, value: int) -> None:
        """`value` fits the register's bitsize. Raises RegisterUnavailable."""
        ...

    def read_memory(self, vcpu: int, guest_va: int, length: int) -> bytes:
        """Exactly `length` bytes through `vcpu`'s page tables; raises MemoryAccessError
        whose guest_va is the first unreadable address."""
        ...

    def write_memory(self, vcpu: int, guest_va: int, data: bytes) -> None:
        """Raises MemoryAccessError (nothing need be written then)."""
        ...

    def insert_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        """`length` is gdb's kind (1 for x86 code) or the watched byte count.
        A sw breakpoint stop must leave eip at `guest_va`. Raises UnsupportedBreakpoint,
        MemoryAccessError."""
        ...

    def remove_breakpoint(self, kind: BreakpointKind, guest_va: int, length: int) -> None:
        """Removing one that is not inserted is not an error."""
        ...

    def resume(self, actions: ResumeActions) -> StopEvent:
        """Run until something stops the guest; blocks. All vcpus are stopped on return."""
        ...

    def request_stop(self) -> None:
        """Thread-safe: make a blocking `resume` return soon (StopReason.INTERRUPT)."""
        ...

    def stop_state(self) -> StopEvent:
        """Why the guest is stopped now (answer to gdb's `?`)."""
        ...

    def monitor(self, command: str) -> str:
        """Run a `monitor` command; returns its output text."""
        ...

    def kill(self) -> None:
        """gdb's `kill`: end the guest."""
        ...

    def detach(self) -> None:
        """gdb left (detach or dropped connection): drop all breakpoints and watchpoints."""
        ...
