"""MMUEXT_SET_LDT for a 64-bit PV guest (pv64/ldt.py): the LDT page is typed seg_desc and
mapped read-only into the vcpu's LDT window, LDTR points there, and the guest loads a
selector from it; clearing the LDT drops the type; bad arguments are -EINVAL."""
from __future__ import annotations

from guestbuild64 import build_asm_guest64
from test_pv64_engine import DATA, MACROS
from pvdbg.machine.memory import PAGE_SHIFT
from pvdbg.xen.abi64 import MmuextOp64
from pvdbg.xen.builder import BuildOptions
from pvdbg.xen.constants import DOMID_SELF, Errno, Hc, MmuextCmd
from pvdbg.xen.entry import segment_descriptor
from pvdbg.xen.hypervisor import HypercallContext
from pvdbg.xen.image import load_guest_image
from pvdbg.xen.pv64.builder import build_domain64
from pvdbg.xen.pv64.hypervisor import Hypervisor64
from pvdbg.xen.pv64.ldt import ldt_window_va
from pvdbg.xen.pv64.mm import PageType
from pvdbg.xen.pv64.paging import walk_4level

# Waits for `go`, then loads LDT selector 0x0f (index 1, TI, RPL 3) into %fs and powers off.
GUEST = MACROS + r"""
.globl _start
_start:
1:  cmpl $0, go(%rip)
    je 1b
    mov $0x0f, %eax
    mov %eax, %fs
    mov %fs, %ebx
    POWEROFF
.data
go: .long 0
.balign 4096
ldt_page: .skip 4096
""" + DATA
PTE_P, PTE_A = 1, 0x20


def boot(tmp_path) -> tuple[Hypervisor64, int]:
    path = build_asm_guest64(tmp_path, GUEST)
    image = load_guest_image(str(path), allow_64bit=True)
    hv = Hypervisor64(build_domain64(image, BuildOptions(memory_mib=16)), image.symbols)
    return hv, _symbol(image.symbols, "ldt_page")


def _symbol(symbols, name: str) -> int:
    return next(sym.address for sym in symbols if sym.name == name)


def hypercall(hv, number: int, *args: int) -> int:
    raw = tuple(args) + (0,) * (6 - len(args))
    return hv.dispatch_hypercall(HypercallContext(hv, hv.current), number, raw)[2]


def set_ldt(hv, scratch: int, base: int, ents: int) -> int:
    hv.guest.write(scratch, MmuextOp64(cmd=MmuextCmd.set_ldt, arg1=base, arg2=ents).to_bytes())
    return hypercall(hv, Hc.mmuext_op, scratch, 1, 0, DOMID_SELF)


def test_set_ldt_maps_the_page_and_the_guest_loads_a_selector(tmp_path):
    hv, ldt_va = boot(tmp_path)
    scratch = hv.layout.stack_va
    ldt_mfn = walk_4level(hv.memory, hv.cr3, ldt_va).mfn
    hv.memory.write_u64((ldt_mfn << PAGE_SHIFT) + 8, segment_descriptor(0, 0xFFFFF, 0xF3))
    # The LDT page must not be writable-mapped: map it read-only first.
    assert hypercall(hv, Hc.update_va_mapping, ldt_va, (ldt_mfn << PAGE_SHIFT) | PTE_P | PTE_A,
                     0) == 0
    assert set_ldt(hv, scratch, ldt_va, 2) == 0
    vcpu = hv.current
    assert (vcpu.ldt_base, vcpu.ldt_ents, vcpu.ldt_frames) == (ldt_va, 2, [ldt_mfn])
    assert hv.mm.type[ldt_mfn] == PageType.seg_desc
    window = walk_4level(hv.memory, hv.cr3, ldt_window_va(0))
    assert window.mfn == ldt_mfn and not window.writable and not window.user
    # The guest's RW remapping of a descriptor page is now refused.
    assert hypercall(hv, Hc.update_va_mapping, ldt_va,
                     (ldt_mfn << PAGE_SHIFT) | PTE_P | PTE_A | 2, 0) == -Errno.EINVAL
    go = _symbol(hv.symbols, "go")
    hv.guest.write(go, b"\x01\x00\x00\x00")
    hv.cpu.run(10_000)
    assert hv.domain.crash is None and hv.domain.shutdown_reason is not None
    assert hv.cpu.read("rbx") & 0xFFFF == 0x0F
    assert set_ldt(hv, scratch, 0, 0) == 0
    assert hv.current.ldt_frames == [] and hv.mm.count[ldt_mfn] == 0


def test_bad_set_ldt_arguments_are_einval(tmp_path):
    hv, ldt_va = boot(tmp_path)
    scratch = hv.layout.stack_va
    assert set_ldt(hv, scratch, ldt_va + 8, 1) == -Errno.EINVAL           # misaligned
    assert set_ldt(hv, scratch, ldt_va, 8193) == -Errno.EINVAL            # too many
    assert set_ldt(hv, scratch, 0xFFFF_8000_0000_0000, 1) == -Errno.EINVAL  # Xen's slots
    # An unmapped LDT page shows the zero page in the window.
    assert set_ldt(hv, scratch, 0x1000, 1) == 0
    assert hv.current.ldt_frames == []
    assert walk_4level(hv.memory, hv.cr3, ldt_window_va(0)).mfn == hv.area.zero_mfn
