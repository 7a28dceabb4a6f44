"""Small PV test guests in assembly for the trap/event/time tests: common definitions,
a builder that returns a ready Session, and helpers to inspect the result."""
from __future__ import annotations

import struct
from pathlib import Path

from guestbuild import build_asm_guest

from pvdbg.session import Session, SessionOptions
from pvdbg.xen.image import load_guest_image

PRELUDE = r"""
#define HYPERCALL(n) call hypercall_page + (n) * 32
#define HC_set_trap_table 0
#define HC_mmu_update 1
#define HC_stack_switch 3
#define HC_set_callbacks 4
#define HC_fpu_taskswitch 5
#define HC_set_debugreg 8
#define HC_get_debugreg 9
#define HC_multicall 13
#define HC_update_va_mapping 14
#define HC_set_timer_op 15
#define HC_event_channel_op_compat 16
#define HC_xen_version 17
#define HC_console_io 18
#define HC_iret 23
#define HC_vcpu_op 24
#define HC_callback_op 30
#define HC_sched_op 29
#define HC_event_channel_op 32
#define HC_physdev_op 33
#define KCS 0xe019
#define KDS 0xe021
#define UCS 0xe02b
#define UDS 0xe033

.macro POWEROFF
    movl $2, %ebx
    movl $shutdown_reason, %ecx
    HYPERCALL(HC_sched_op)
.endm

/* Map shared_info at `shinfo` (a page of .data) with update_va_mapping; ESI must
   still hold start_info's address (as at _start). */
.macro MAP_SHARED_INFO
    movl %esi, start_info_ptr
    movl 36(%esi), %ecx
    orl $0x63, %ecx
    movl $shinfo, %ebx
    xorl %edx, %edx
    movl $2, %esi
    HYPERCALL(HC_update_va_mapping)
    movl %eax, map_rc
    movl start_info_ptr, %esi
.endm

.pushsection .data
.balign 4
shutdown_reason: .long 0
start_info_ptr: .long 0
map_rc: .long 0
.balign 4096
shinfo: .fill 4096, 1, 0
.popsection
"""


def build(tmp: Path, body: str, name: str = "guest") -> Path:
    return build_asm_guest(tmp, PRELUDE + body, name)


def session(tmp: Path, body: str, name: str = "guest", **options) -> Session:
    return Session(load_guest_image(str(build(tmp, body, name))), SessionOptions(**options))


def user_pages(s: Session, va: int, length: int = 4096) -> None:
    """Set the U bit on the L1 entries mapping [va, va+length) (the builder maps the
    kernel supervisor-only); for tests that run code or data in ring 3."""
    page = va & ~0xFFF
    while page < va + length:
        walk = s.hv.guest.translate(page)
        pte = s.hv.memory.read_u64(walk.l1_entry_maddr)
        s.hv.memory.write_u64(walk.l1_entry_maddr, pte | 4)
        page += 0x1000
    s.cpu.flush_tlb()


def words(s: Session, va: int, count: int) -> list[int]:
    return list(struct.unpack(f"<{count}I", s.read_memory(va, 4 * count)))


def u32(s: Session, symbol: str) -> int:
    return words(s, s.symbol(symbol), 1)[0]
