"""Xen PV ABI structures, each declared once with its offsets and its header.

A structure is a frozen dataclass whose fields carry (offset, struct format).  The
decorator checks that every field fits, and adds SIZE, SOURCE, from_bytes, to_bytes,
offset_of and field_format.  32-bit (compat) layouts carry the suffix ``32``.
Offsets were checked against Xen 4.17's public headers compiled with ``gcc -m32``
(tests/test_abi.py repeats that check when the headers are installed).
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


def at(offset: int, fmt: str, default: Any = 0) -> Any:
    """A field at byte `offset` with little-endian struct format `fmt`."""
    if default == 0 and fmt.endswith("s"):
        default = b""
    return field(default=default, metadata={"off": offset, "st": struct.Struct("<" + fmt)})


def abi_struct(*, size: int, source: str):
    """Class decorator: a frozen dataclass laid out as the C structure `source`."""
    def wrap(cls: type[T]) -> type[T]:
        cls = dataclass(frozen=True)(cls)
        layout = []
        for f in dataclasses.fields(cls):
            off, st = f.metadata["off"], f.metadata["st"]
            assert off + st.size <= size, f"{cls.__name__}.{f.name} overflows {size}"
            layout.append((f.name, off, st))
        cls.SIZE = size
        cls.SOURCE = source
        cls._layout = tuple(layout)

        def from_bytes(klass, data: bytes, offset: int = 0):
            if len(data) - offset < size:
                raise ValueError(f"{klass.__name__} needs {size} bytes")
            return klass(**{name: st.unpack_from(data, offset + off)[0]
                            for name, off, st in klass._layout})

        def to_bytes(self) -> bytes:
            buf = bytearray(size)
            for name, off, st in self._layout:
                st.pack_into(buf, off, getattr(self, name))
            return bytes(buf)

        def offset_of(klass, name: str) -> int:
            for fname, off, _ in klass._layout:
                if fname == name:
                    return off
            raise KeyError(name)

        def field_format(klass, name: str) -> struct.Struct:
            for fname, _, st in klass._layout:
                if fname == name:
                    return st
            raise KeyError(name)

        cls.from_bytes = classmethod(from_bytes)
        cls.to_bytes = to_bytes
        cls.offset_of = classmethod(offset_of)
        cls.field_format = classmethod(field_format)
        return cls
    return wrap


@abi_struct(size=1112, source="xen/include/public/xen.h struct start_info (x86_32)")
class StartInfo32:
    magic: bytes = at(0, "32s")
    nr_pages: int = at(32, "I")
    shared_info: int = at(36, "I")          # machine address
    flags: int = at(40, "I")                # SIF_*
    store_mfn: int = at(44, "I")
    store_evtchn: int = at(48, "I")
    console_mfn: int = at(52, "I")          # console.domU.mfn
    console_evtchn: int = at(56, "I")       # console.domU.evtchn
    pt_base: int = at(60, "I")              # VA of the L3
    nr_pt_frames: int = at(64, "I")
    mfn_list: int = at(68, "I")             # VA of the p2m
    mod_start: int = at(72, "I")
    mod_len: int = at(76, "I")
    cmd_line: bytes = at(80, "1024s")
    first_p2m_pfn: int = at(1104, "I")
    nr_p2m_frames: int = at(1108, "I")


@abi_struct(size=32, source="xen/include/public/xen.h struct vcpu_time_info")
class VcpuTimeInfo:
    version: int = at(0, "I")               # odd while Xen updates
    tsc_timestamp: int = at(8, "Q")
    system_time: int = at(16, "Q")          # ns since boot
    tsc_to_system_mul: int = at(24, "I")
    tsc_shift: int = at(28, "b")
    flags: int = at(29, "B")


@abi_struct(size=64, source="xen/include/public/xen.h struct vcpu_info (x86_32)")
class VcpuInfo32:
    evtchn_upcall_pending: int = at(0, "B")
    evtchn_upcall_mask: int = at(1, "B")
    evtchn_pending_sel: int = at(4, "I")    # one bit per evtchn_pending word
    cr2: int = at(8, "I")                   # arch_vcpu_info.cr2
    time: bytes = at(32, "32s")             # vcpu_time_info


@abi_struct(size=2344, source="xen/include/public/xen.h struct shared_info (x86_32)")
class SharedInfo32:
    vcpu_info: bytes = at(0, "2048s")       # 32 x vcpu_info
    evtchn_pending: bytes = at(2048, "128s")  # 32 x u32: 1024 ports
    evtchn_mask: bytes = at(2176, "128s")
    wc_version: int = at(2304, "I")
    wc_sec: int = at(2308, "I")
    wc_nsec: int = at(2312, "I")
    max_pfn: int = at(2316, "I")            # arch.max_pfn
    pfn_to_mfn_frame_list_list: int = at(2320, "I")
    nmi_reason: int = at(2324, "I")
    p2m_cr3: int = at(2328, "I")
    p2m_vaddr: int = at(2332, "I")
    p2m_generation: int = at(2336, "I")
    wc_sec_hi: int = at(2340, "I")

    NR_VCPU_INFO: ClassVar[int] = 32


@abi_struct(size=4, source="xen/include/public/version.h xen_platform_parameters_t (compat)")
class PlatformParameters32:
    virt_start: int = at(0, "I")


@abi_struct(size=8, source="xen/include/public/version.h xen_feature_info_t")
class FeatureInfo:
    submap_idx: int = at(0, "I")
    submap: int = at(4, "I")


@abi_struct(size=4, source="xen/include/public/sched.h struct sched_shutdown")
class SchedShutdown:
    reason: int = at(0, "I")


@abi_struct(size=16, source="xen/include/public/sched.h struct sched_poll (compat)")
class SchedPoll32:
    ports: int = at(0, "I")                 # guest VA of evtchn_port_t[]
    nr_ports: int = at(4, "I")
    timeout: int = at(8, "Q")               # absolute ns, 0 = none


@abi_struct(size=8, source="xen/include/public/sched.h struct sched_remote_shutdown")
class SchedRemoteShutdown:
    domain_id: int = at(0, "H")
    reason: int = at(4, "I")


@abi_struct(size=8, source="xen/include/public/arch-x86/xen.h struct trap_info (compat)")
class TrapInfo32:
    vector: int = at(0, "B")
    flags: int = at(1, "B")                 # bits 1:0 DPL, bit 2 mask events
    cs: int = at(2, "H")
    address: int = at(4, "I")


@abi_struct(size=32, source="xen/include/public/xen.h struct multicall_entry (compat)")
class MulticallEntry32:
    op: int = at(0, "I")
    result: int = at(4, "I")
    args: bytes = at(8, "24s")              # 6 x u32


@abi_struct(size=16, source="xen/include/public/xen.h struct mmu_update")
class MmuUpdate:
    ptr: int = at(0, "Q")                   # machine address | MMU_* command in bits 2:0
    val: int = at(8, "Q")


@abi_struct(size=12, source="xen/include/public/xen.h struct mmuext_op (compat)")
class MmuextOp32:
    cmd: int = at(0, "I")
    arg1: int = at(4, "I")                  # mfn or linear address
    arg2: int = at(8, "I")                  # nr_ents, vcpumask pointer or src_mfn


@abi_struct(size=4096, source="xen/include/public/io/console.h struct xencons_interface")
class XenconsInterface:
    in_ring: bytes = at(0, "1024s")
    out_ring: bytes = at(1024, "2048s")
    in_cons: int = at(3072, "I")
    in_prod: int = at(3076, "I")
    out_cons: int = at(3080, "I")
    out_prod: int = at(3084, "I")


@abi_struct(size=12, source="xen/include/public/memory.h struct xen_machphys_mapping (compat)")
class MachphysMapping32:
    v_start: int = at(0, "I")
    v_end: int = at(4, "I")
    max_mfn: int = at(8, "I")
