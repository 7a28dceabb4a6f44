"""physdev_op for an unprivileged PV domain: the virtual IOPL and I/O bitmap the
privileged-instruction emulator checks port accesses against; the interrupt and PCI
operations a domU may make answer as Xen answers a domain without physical devices.
ABI: xen/include/public/physdev.h; xen/arch/x86/physdev.c do_physdev_op;
xen/arch/x86/compat.c do_physdev_op_compat; XEN-PV-ABI.md 3.14.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from .constants import Errno, Hc
from .hypercalls import HYPERCALLS, Param, fail

if TYPE_CHECKING:
    from .hypervisor import HypercallContext

MAX_IO_PORTS = 65536
NR_PIRQS = 256


class PhysdevOp(IntEnum):
    """PHYSDEVOP_*.  ABI: xen/include/public/physdev.h."""
    irq_unmask_notify = 4
    irq_status_query = 5
    set_iopl = 6
    set_iobitmap = 7
    apic_read = 8
    apic_write = 9
    alloc_irq_vector = 10
    free_irq_vector = 11
    eoi = 12
    map_pirq = 13
    unmap_pirq = 14
    manage_pci_add = 15
    manage_pci_remove = 16
    pirq_eoi_gmfn_v1 = 17
    restore_msi = 19
    setup_gsi = 21
    manage_pci_add_ext = 20
    get_free_pirq = 23
    pci_mmcfg_reserved = 24
    pci_device_add = 25
    pci_device_remove = 26
    restore_msi_ext = 27
    pirq_eoi_gmfn_v2 = 28
    dbgp_op = 29
    prepare_msix = 30
    release_msix = 31


PRIVILEGED = frozenset({PhysdevOp.apic_read, PhysdevOp.apic_write, PhysdevOp.alloc_irq_vector,
                        PhysdevOp.free_irq_vector, PhysdevOp.map_pirq, PhysdevOp.unmap_pirq,
                        PhysdevOp.manage_pci_add, PhysdevOp.manage_pci_remove,
                        PhysdevOp.manage_pci_add_ext, PhysdevOp.restore_msi,
                        PhysdevOp.setup_gsi, PhysdevOp.get_free_pirq,
                        PhysdevOp.pci_mmcfg_reserved, PhysdevOp.pci_device_add,
                        PhysdevOp.pci_device_remove, PhysdevOp.restore_msi_ext,
                        PhysdevOp.dbgp_op, PhysdevOp.prepare_msix, PhysdevOp.release_msix})
COMPAT_OPS = frozenset({PhysdevOp.irq_status_query, PhysdevOp.set_iopl, PhysdevOp.set_iobitmap,
                        PhysdevOp.apic_read, PhysdevOp.apic_write, PhysdevOp.alloc_irq_vector})


def physdev(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    pv = ctx.hv.traps.pv(ctx.vcpu)
    g = ctx.guest
    if cmd == PhysdevOp.set_iopl:
        iopl = g.read_u32(arg)
        if iopl > 3:
            raise fail(Errno.EINVAL, f"iopl {iopl} > 3")
        pv.iopl = iopl
        ctx.note(f"virtual IOPL {iopl}")
        return 0
    if cmd == PhysdevOp.set_iobitmap:
        bitmap, nr_ports = struct.unpack("<II", g.read(arg, 8))
        if nr_ports > MAX_IO_PORTS:
            raise fail(Errno.EINVAL, f"nr_ports {nr_ports} > {MAX_IO_PORTS}")
        pv.iobmp_va = bitmap
        pv.iobmp_limit = nr_ports
        ctx.note(f"I/O bitmap at {bitmap:#x} for {nr_ports} ports")
        return 0
    if cmd == PhysdevOp.irq_status_query:
        irq = g.read_u32(arg)
        if irq >= NR_PIRQS:
            raise fail(Errno.EINVAL, f"irq {irq} >= nr_pirqs {NR_PIRQS}")
        g.write_u32(arg + 4, 0)
        return 0
    if cmd == PhysdevOp.eoi:
        raise fail(Errno.EINVAL, "no physical IRQ is bound to this domain")
    if cmd in (PhysdevOp.pirq_eoi_gmfn_v1, PhysdevOp.pirq_eoi_gmfn_v2):
        (gmfn,) = struct.unpack("<I", g.read(arg, 4))
        if not ctx.hv.vcpu_ops.owned_frame(gmfn):
            raise fail(Errno.EINVAL, f"gmfn {gmfn:#x} is not a frame of this domain")
        ctx.note(f"PIRQ EOI bitmap at mfn {gmfn:#x} (no PIRQs will use it)")
        return 0
    if cmd == PhysdevOp.irq_unmask_notify:
        return 0
    if cmd in PRIVILEGED:
        raise fail(Errno.EPERM, f"{PhysdevOp(cmd).name} needs a privileged domain")
    raise fail(Errno.ENOSYS, f"unknown physdev_op {cmd}")


@HYPERCALLS.handler(Hc.physdev_op, Param("cmd", PhysdevOp), Param("arg"))
def physdev_op(ctx: "HypercallContext", cmd: int, arg: int) -> int:
    return physdev(ctx, cmd, arg)


@HYPERCALLS.handler(Hc.physdev_op_compat, Param("op"))
def physdev_op_compat(ctx: "HypercallContext", op: int) -> int:
    """The old form: `op` points at {u32 cmd; union}."""
    cmd = ctx.guest.read_u32(op)
    if cmd not in COMPAT_OPS:
        raise fail(Errno.ENOSYS, f"physdev_op_compat {cmd}")
    return physdev(ctx, cmd, op + 4)
