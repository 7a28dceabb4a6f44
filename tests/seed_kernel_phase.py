"""What the seed's kernel phase (guests/seed/kernel_phase.c) prints and which hypercalls
it makes, for the boot tests (tests/test_seed_boot.py, tests/test_seed_kernel_phase.py)."""
from __future__ import annotations

from pvdbg.session import Session
from pvdbg.testing import hc

_WRITE = hc("console_io", cmd="write", result=0)


def _ok(name: str, **args):
    return hc(name, result=0, **args)


_BLOCK_TICK = [_ok("sched_op", cmd="block"), hc("iret")]

# In order: see guests/seed/README.md "Kernel phase".
KERNEL_PHASE_CALLS = [
    _ok("set_trap_table"), _ok("callback_op", cmd="register"),
    _ok("callback_op", cmd="register"), _WRITE,
    _WRITE,                                                   # cpuid (forced emulation)
    _ok("event_channel_op", cmd="bind_virq"), _ok("vcpu_op", cmd="set_periodic_timer"),
    *_BLOCK_TICK * 3,
    _ok("vcpu_op", cmd="stop_periodic_timer"), _WRITE,
    _ok("set_timer_op"), *_BLOCK_TICK, _WRITE,
    _WRITE,                                                   # rdmsr (emulated)
    _ok("update_va_mapping"), _ok("set_gdt"),                 # kernel GDT
    _ok("update_va_mapping"), _ok("update_va_mapping"), _ok("update_va_mapping"),
    _ok("mmuext_op"), _ok("update_va_mapping"), _ok("mmu_update"), _ok("mmuext_op"),
    _ok("multicall", nr_calls=3), _ok("mmuext_op", multicall=True),
    _ok("update_descriptor", multicall=True), _ok("stack_switch", multicall=True),
    _WRITE,
    _ok("update_va_mapping"), _ok("update_va_mapping"), _ok("update_va_mapping"),
    hc("iret"), _WRITE, hc("iret"),                           # failsafe, then ring 3
    _WRITE, _WRITE,                                           # write(), exit()
    _ok("multicall", nr_calls=3), _ok("mmuext_op", multicall=True),
    _ok("update_descriptor", multicall=True), _ok("stack_switch", multicall=True),
    _ok("vcpu_op", cmd="stop_singleshot_timer"), _WRITE,
]


def kernel_phase_lines(s: Session) -> list[str]:
    """The kernel phase's console lines, from the image's symbols."""
    sym = s.image.symbols.address
    return [
        "seed: traps: set_trap_table 19 vectors, int 0x80 DPL 3; callbacks event "
        f"{sym('xen_hypervisor_callback'):#010x} failsafe {sym('xen_failsafe_callback'):#010x}",
        'seed: cpuid: hypervisor "XenVMMXenVMM" leaves to 0x40000005, leaf 1 apic 0 acpi 0 '
        "hypervisor 1",
        "seed: events: VIRQ_TIMER on port 3, 3 ticks of the 1 ms periodic timer, 3 upcalls",
        "seed: set_timer_op one-shot fired after 2 ms (tick 4)",
        "seed: rdmsr APIC_BASE trapped and emulated by Xen: 0xfee00900",
        "seed: task B: own pgd, private page 0xb2b2b2b2, TLS %gs:0 0xb1b1b1b1, switched in by "
        "one multicall of 3 entries",
        "seed: failsafe callback: iret to ring 3 faulted on ss 0x3b (ds 0xe021 es 0xe021 fs 0x0 "
        f"gs 0x33, eip {sym('user_task'):#010x}); retrying with FLAT_USER_SS",
        "seed: user task (ring 3) says: hello from ring 3 via int $0x80",
        "seed: user task exited with 7 after 2 system calls",
        "seed: back in task A: private page 0xa2a2a2a2, TLS %gs:0 0xa1a1a1a1",
    ]
