"""The three Unicorn 2.1.4 facts the CPU core must survive, proven on the real core."""
from __future__ import annotations

from pvdbg.machine.cpu import calibrate
from pvdbg.session import Session, SessionOptions, StopReason
from pvdbg.xen.constants import FLAT_RING1_SS, FLAT_RING3_CS, FLAT_RING3_SS
from pvdbg.xen.image import load_guest_image

from guestbuild import build_asm_guest


def test_calibration_finds_both_offsets():
    cal = calibrate()
    assert cal.exception_in_flight_offset is not None
    assert cal.emu_counter_offset is not None


def _session(path, **kw) -> Session:
    return Session(load_guest_image(str(path)), SessionOptions(**kw))


def test_ten_thousand_faults_without_double_fault(tmp_path):
    """(a): #GP and #PF handled in the hook never escalate to #DF / triple fault."""
    guest = build_asm_guest(tmp_path, """
_start:
    xor %esi, %esi
1:  hlt                      /* #GP at ring 1 */
    movl (0x500000), %eax    /* #PF: unmapped */
    mov %eax, %cr3           /* #GP: privileged */
    inc %esi
    cmp $10000, %esi
    jne 1b
    int $0x83
""")
    s = _session(guest)
    seen = {}

    def exception(vector):
        seen[vector] = seen.get(vector, 0) + 1
        eip = s.cpu.read("eip")
        if vector == 0x83:
            s.hv.shutdown(__import__("pvdbg.xen.constants", fromlist=["x"]).ShutdownReason.poweroff)
            return
        length = {13: 1 if s.read_memory(eip, 1) == b"\xf4" else 3, 14: 5}[vector]
        s.cpu.write("eip", eip + length)

    s.hv.guest_exception = exception
    stop = s.run(max_insns=1_000_000)
    assert stop.reason is StopReason.shutdown, stop
    assert seen == {13: 20000, 14: 10000, 0x83: 1}
    assert 8 not in seen
    assert s.cpu.read("esi") == 10000


def test_ring1_ring3_round_trips(tmp_path):
    """(b): the CPL changes only by real far transfers: iret out, call gate in."""
    guest = build_asm_guest(tmp_path, """
_start:
    xor %edi, %edi
kloop:
    int $0x83                /* ask the test hypervisor to drop to ring 3 */
back_in_ring1:
    cmp $1000, %edi
    jne kloop
    int $0x84
user_code:
    inc %edi
    int $0x80                /* from ring 3: back to ring 1 */
""")
    s = _session(guest)
    img = s.image.symbols
    user_va, back_va = img.address("user_code"), img.address("back_in_ring1")
    # Make the page holding user_code user-accessible (the builder maps no U pages).
    walk = s.hv.guest.translate(user_va)
    pte_maddr = walk.l1_entry_maddr
    s.hv.memory.write_u64(pte_maddr, s.hv.memory.read_u64(pte_maddr) | 4)
    s.cpu.flush_tlb()
    rings = []
    kernel_esp = s.cpu.read("esp")

    def exception(vector):
        if vector == 0x83:
            assert s.cpu.cpl == 1
            s.hv.iret_to_outer_ring(user_va, FLAT_RING3_CS, 0x202, 0x0, FLAT_RING3_SS)
        elif vector == 0x80:
            rings.append(s.cpu.cpl)

            def landed(saved):
                assert s.cpu.cpl == 1
                assert saved["cs"] & 3 == 3
                s.cpu.write_many({"eip": back_va, "esp": kernel_esp, "ss": FLAT_RING1_SS})
            s.hv.switch_to_ring1(landed)
        elif vector == 0x84:
            from pvdbg.xen.constants import ShutdownReason
            s.hv.shutdown(ShutdownReason.poweroff)
        else:
            raise AssertionError(f"unexpected vector {vector:#x} at {s.cpu.read('eip'):#x}")

    s.hv.guest_exception = exception
    stop = s.run(max_insns=1_000_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    assert rings == [3] * 1000
    assert s.cpu.read("edi") == 1000


def test_int_reaches_hook_past_instruction_fault_at_instruction(tmp_path):
    """(c): `int N` arrives with EIP after it, a fault with EIP at the faulting instruction."""
    guest = build_asm_guest(tmp_path, """
_start:
    int $0x85
int_done:
fault_here:
    hlt
""")
    s = _session(guest)
    eips = []

    def exception(vector):
        eips.append((vector, s.cpu.read("eip")))
        from pvdbg.xen.constants import ShutdownReason
        if vector == 13:
            s.hv.shutdown(ShutdownReason.poweroff)

    s.hv.guest_exception = exception
    s.run(max_insns=100)
    sym = s.image.symbols
    assert eips == [(0x85, sym.address("int_done")), (13, sym.address("fault_here"))]


def test_instruction_count_is_exact(tmp_path):
    guest = build_asm_guest(tmp_path, """
_start:
    nop
    nop
    nop
    int $0x86
""")
    s = _session(guest)
    counts = []

    def exception(vector):
        counts.append(s.cpu.icount)
        from pvdbg.xen.constants import ShutdownReason
        s.hv.shutdown(ShutdownReason.poweroff)

    s.hv.guest_exception = exception
    s.run(max_insns=100)
    assert counts == [4]



def test_exception_error_codes(tmp_path):
    """The error codes of #GP and #PF reach the hypervisor (calibrated context field)."""
    from pvdbg.xen.constants import ShutdownReason
    guest = build_asm_guest(tmp_path, """
_start:
    mov $0x1234, %ax
    mov %ax, %ds             /* #GP(0x1234): selector in the (absent) LDT */
write_l3:
    movl $1, (%ebx)          /* #PF(P|W): EBX points at the read-only L3 */
""")
    s = _session(guest)
    codes = []

    def exception(vector):
        codes.append((vector, s.cpu.exception_error_code()))
        if vector == 13:
            s.cpu.write_many({"eip": s.image.symbols.address("write_l3"),
                              "ebx": s.hv.layout.pt_base_va})
        else:
            s.hv.shutdown(ShutdownReason.poweroff)

    s.hv.guest_exception = exception
    s.run(max_insns=100)
    assert codes == [(13, 0x1234), (14, 3)]


def test_stop_requests_never_replay_a_store(tmp_path):
    """Unicorn replays the interrupted store after an asynchronous emu_stop (issues
    1105/1355); with the default clock every stop is exact, however often it comes."""
    import threading
    from pvdbg.session import StopReason
    guest = build_asm_guest(tmp_path, """
_start:
    xor %ecx, %ecx
1:  incl counter
    inc %ecx
    jmp 1b
.data
counter: .long 0
""")
    s = _session(guest)
    counter = s.image.symbols.address("counter")
    for _ in range(20):
        timer = threading.Timer(0.01, s.request_stop)
        timer.start()
        stop = s.run(timeout=10)
        timer.join()
        assert stop.reason is StopReason.interrupt
        memory = int.from_bytes(s.read_memory(counter, 4), "little")
        ecx = s.cpu.read("ecx")
        assert memory in (ecx, ecx + 1)        # stopped between incl and inc at most
    assert s.cpu.async_stops == 0
