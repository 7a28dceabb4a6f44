"""Attach the PV machinery to a Hypervisor: traps, callbacks, event channels, time,
scheduler, vcpu operations, multicall, privileged-instruction emulation, CPUID and
debug registers, as `hv.traps`, `hv.callbacks`, `hv.events`, `hv.time`, `hv.scheduler`,
`hv.vcpu_ops`, `hv.multicalls`, `hv.emulator`, `hv.cpuid` and `hv.debugregs`.
Importing this module registers their hypercalls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import physdev  # noqa: F401  (registers physdev_op, physdev_op_compat)
from .callbacks import Callbacks
from .cpuid import CpuidPolicy
from .debugregs import DebugRegisters
from .emulate import PrivOpEmulator
from .events import EventChannels
from .multicall import MulticallState
from .schedule import Scheduler
from .time import TimeKeeper
from .traps import Traps
from .vcpu_op import VcpuOps

if TYPE_CHECKING:
    from .hypervisor import Hypervisor


def attach_pv(hv: "Hypervisor") -> None:
    """Create the PV subsystems of `hv` (after vcpu0 has booted)."""
    no_io_bitmap(hv)
    hv.traps = Traps(hv)
    hv.callbacks = Callbacks(hv)
    hv.debugregs = DebugRegisters(hv)
    hv.emulator = PrivOpEmulator(hv)
    hv.cpuid = CpuidPolicy(hv)
    hv.multicalls = MulticallState(len(hv.vcpus))
    hv.time = TimeKeeper(hv)
    hv.events = EventChannels(hv)
    hv.scheduler = Scheduler(hv)
    hv.vcpu_ops = VcpuOps(hv)


TSS_IOMAP_BASE = 0x66


def no_io_bitmap(hv: "Hypervisor") -> None:
    """Xen's TSS has no I/O permission bitmap (its offset lies past the TSS limit), so
    every port access from ring 1 or 3 with IOPL 0 raises #GP and reaches the emulator,
    which applies the virtual IOPL and the guest's own bitmap."""
    from ..machine.memory import PAGE_SHIFT
    from .entry import TSS_SIZE, TSS_VA, tss_va
    area = hv.area
    for vcpu in hv.vcpus:
        base = (area.tss_mfn << PAGE_SHIFT) + (tss_va(vcpu.vcpu_id) - TSS_VA)
        hv.memory.write(base + TSS_IOMAP_BASE, TSS_SIZE.to_bytes(2, "little"))
