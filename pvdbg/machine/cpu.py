"""The x86 CPU: Unicorn in 32-bit protected mode with PAE paging done by its MMU.

No Xen policy lives here.  The CPU reports every exception and software interrupt to
one `InterruptSink` (the hypervisor), counts retired instructions exactly, and works
around two Unicorn 2.1.4 behaviours with self-calibrated, tested fix-ups:

* an exception handled in a UC_HOOK_INTR callback stays "in flight" (QEMU's
  ``old_exception`` is never reset), so the next #GP/#PF would become #DF and then a
  triple fault (unicorn issue 1883).  After every contributory fault or #PF the CPU
  rewrites that field in a saved context and restores it (~6 µs);
* Unicorn only exposes the instruction budget of ``emu_start(count=...)``, not how many
  instructions ran before an ``emu_stop``; the engine's own counter is located once per
  process and read directly, so every trace record carries an exact instruction count.

The CPL cannot be set through the API (it is SS.DPL); ring changes are real far
transfers through hypervisor trampolines (see pvdbg/xen/entry.py).
"""
from __future__ import annotations

import ctypes
import struct
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn import (UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_INSN_INVALID, UC_MODE_32,
                     UC_PROT_ALL, UC_TLB_CPU, Uc, UcError)
from unicorn import x86_const as X

from .memory import MachineMemory

# Vectors whose delivery marks an exception "in flight" in QEMU's check_exception().
_IN_FLIGHT_VECTORS = frozenset({0, 10, 11, 12, 13, 14})
FAULT_VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REGISTERS: dict[str, int] = {
    "eax": X.UC_X86_REG_EAX, "ecx": X.UC_X86_REG_ECX, "edx": X.UC_X86_REG_EDX,
    "ebx": X.UC_X86_REG_EBX, "esp": X.UC_X86_REG_ESP, "ebp": X.UC_X86_REG_EBP,
    "esi": X.UC_X86_REG_ESI, "edi": X.UC_X86_REG_EDI, "eip": X.UC_X86_REG_EIP,
    "eflags": X.UC_X86_REG_EFLAGS, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
    "ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS,
    "gs": X.UC_X86_REG_GS, "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2,
    "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4,
    "dr0": X.UC_X86_REG_DR0, "dr1": X.UC_X86_REG_DR1, "dr2": X.UC_X86_REG_DR2,
    "dr3": X.UC_X86_REG_DR3, "dr6": X.UC_X86_REG_DR6, "dr7": X.UC_X86_REG_DR7,
}
SEGMENT_NAMES = ("cs", "ss", "ds", "es", "fs", "gs")
# The registers a trap frame or crash report needs, read in one batch.
FRAME_REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
              "cs", "ss", "ds", "es", "fs", "gs")
_FRAME_IDS = [REGISTERS[n] for n in FRAME_REGS]

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
MSR_EFER = 0xC0000080
EFER_NXE = 1 << 11
EFLAGS_IF = 1 << 9
EFLAGS_TF = 1 << 8


class CpuError(Exception):
    """The emulated CPU cannot continue (a Unicorn error outside the guest's control)."""


class InterruptSink(Protocol):
    def on_interrupt(self, intno: int) -> None: ...
    def on_invalid_opcode(self) -> bool: ...


@dataclass(frozen=True)
class Calibration:
    """Offsets found by probing this Unicorn build (see module docstring)."""
    exception_in_flight_offset: int | None   # in the uc_context data
    error_code_offset: int | None            # the exception's error code, same context
    emu_counter_offset: int | None           # in the uc_struct


_calibration: Calibration | None = None
_calibration_lock = threading.Lock()

# A fresh Unicorn CPU is in 32-bit protected mode with an empty GDT: loading any
# selector raises #GP.  "mov $0x1234,%ax; mov %ax,%ds" x2, then int3.
_PROBE_GP = bytes.fromhex("8e1d00180000" "8e1d02180000" "cc")   # mov ds,[0x1800]; mov ds,[0x1802]
_PROBE_COUNT = bytes.fromhex("41" "41" "41" "cc")         # inc ecx x3; int3


def _handle_of(uc: Uc) -> int:
    h = uc._uch
    return h.value if hasattr(h, "value") else int(h)


def _context_ptr(ctx) -> int:
    p = ctx._context
    return p.value if hasattr(p, "value") else int(p)


def calibrate() -> Calibration:
    """Locate the in-flight exception field and the instruction counter (once per process)."""
    global _calibration
    with _calibration_lock:
        if _calibration is None:
            _calibration = Calibration(*_probe_in_flight(), _probe_counter())
        return _calibration


def _probe_in_flight() -> tuple[int | None, int | None]:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x2000)
    uc.mem_write(0x1000, _PROBE_GP)
    uc.mem_write(0x1800, struct.pack("<HH", 0x1234, 0x5678))
    seen: list[bytes] = []
    vectors: list[int] = []

    def hook(uc_: Uc, intno: int, _data) -> None:
        vectors.append(intno)
        ctx = uc_.context_save()
        seen.append(ctypes.string_at(_context_ptr(ctx), ctx.size))
        uc_.emu_stop()

    before = uc.context_save()
    raw_before = ctypes.string_at(_context_ptr(before), before.size)
    uc.hook_add(UC_HOOK_INTR, hook)
    uc.emu_start(0x1000, 0, count=2)
    if vectors != [13]:
        return None, None
    after = seen[0]
    size = min(len(raw_before), len(after))
    minus_one, gp = b"\xff\xff\xff\xff", struct.pack("<i", 13)
    candidates = [off for off in range(0, size - 3, 4)
                  if raw_before[off:off + 4] == minus_one and after[off:off + 4] == gp]
    code_candidates = [off for off in range(0, size - 3, 4)
                       if after[off:off + 4] == struct.pack("<I", 0x1234)
                       and raw_before[off:off + 4] != after[off:off + 4]]
    for off in candidates:
        # Verify: reset the field, fault again, and the CPU must report #GP, not #DF.
        ctx = uc.context_save()
        ctypes.memmove(_context_ptr(ctx) + off, minus_one, 4)
        uc.context_restore(ctx)
        vectors.clear()
        seen.clear()
        uc.emu_start(0x1000 + 6, 0, count=2)
        if vectors == [13]:
            second = seen[0]
            code = next((c for c in code_candidates
                         if second[c:c + 4] == struct.pack("<I", 0x5678)), None)
            return off, code
    return None, None


def _probe_counter() -> int | None:
    found: list[int] = []
    for incs, expected in ((3, 4), (7, 8)):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, 0x2000)
        uc.mem_write(0x1000, b"\x41" * incs + b"\xcc")
        snap: list[bytes] = []
        handle = _handle_of(uc)

        def hook(uc_: Uc, intno: int, _data, snap=snap, handle=handle) -> None:
            snap.append(ctypes.string_at(handle, 4096))
            uc_.emu_stop()

        uc.hook_add(UC_HOOK_INTR, hook)
        uc.emu_start(0x1000, 0, count=1000)
        raw = snap[0]
        offs = {off for off in range(0, len(raw) - 16, 8)
                if struct.unpack_from("<QQ", raw, off) == (expected, 1000)}
        found.append(offs)
    common = found[0] & found[1]
    return min(common) if common else None


class X86Cpu:
    """One Unicorn CPU over `memory`.  Hooks go to `sink`."""

    UC_MODE = UC_MODE_32             # the 64-bit CPU (cpu64.py) overrides these four
    REGISTER_IDS = REGISTERS
    VALUE_MASK = 0xFFFFFFFF
    FRAME_REGS = FRAME_REGS

    def __init__(self, memory: MachineMemory, sink: InterruptSink) -> None:
        self.calibration = calibrate()
        self.memory = memory
        self.uc = Uc(UC_ARCH_X86, self.UC_MODE)
        self.uc.ctl_set_tlb_mode(UC_TLB_CPU)
        # emu_start's `until` address is an exit: a block starting there runs nothing
        # (so a guest whose entry or jump target is that address would stop dead), and
        # its zero-size block makes the translator probe the page below it (a spurious
        # #PF at until-0x1000 when that page is unmapped).  An empty exit set has no
        # such address; runs end only on the count, a timeout or emu_stop.
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.host_address)
        self._sink = sink
        self._handle = _handle_of(self.uc)
        self._fix_ctx = self.uc.context_save()
        self._fix_ptr = _context_ptr(self._fix_ctx)
        self.retired = 0                 # instructions retired by completed run() calls
        self.counting = True             # False: run at full speed, counts unknown
        self.exact = True                # every instruction so far was counted
        self._slice_fault_adjust = 0     # faulting instructions counted but not retired
        self.in_run = False
        self.stop_requested = False
        self.stop_at_event = False           # any thread: stop at the next hook (exact)
        self.event_deadline: float | None = None   # monotonic; uncounted slices end at the
                                                   # first hook after it
        self.async_stops = 0
        self._translated_uncounted = False   # blocks cached without Unicorn's count hook
        self._stepped_since_uncounted = False   # a step retranslated its block since then
        self._hc_batch = self._new_batch(_HC_NAMES)
        self._frame_batch = self._new_batch(self.FRAME_REGS)
        self._read_batches: dict[tuple[str, ...], _RawBatch] = {}
        self._write_batches: dict[tuple[str, ...], _RawBatch] = {}
        from unicorn.unicorn_py3.unicorn import uclib
        self._reg_write = uclib.uc_reg_write
        self._handle_obj = self.uc._uch
        self._eax_value = ctypes.c_uint32(0)
        self.tlb_listeners: list = []      # callables run on every TLB flush
        self.uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)

    # -- hooks -------------------------------------------------------------------
    def _on_intr(self, uc: Uc, intno: int, _data) -> None:
        if intno in _IN_FLIGHT_VECTORS:
            self.clear_exception_in_flight()
        elif intno in FAULT_VECTORS_WITH_ERROR_CODE:
            self.uc.context_update(self._fix_ctx)
        if intno < 32 and intno not in (3, 4):
            self._slice_fault_adjust += 1
        self._sink.on_interrupt(intno)
        if self.stop_at_event or (self.event_deadline is not None
                                  and time.monotonic() >= self.event_deadline):
            self.uc.emu_stop()

    def _on_invalid(self, uc: Uc, _data) -> bool:
        self._slice_fault_adjust += 1
        return self._sink.on_invalid_opcode()

    def exception_error_code(self) -> int:
        """Error code of the exception being handled (valid inside the hook for vectors
        that push one; read from the context saved on entry to the hook)."""
        off = self.calibration.error_code_offset
        if off is None:
            return 0
        return ctypes.c_uint32.from_address(self._fix_ptr + off).value

    def uncount_current(self) -> None:
        """The instruction being hooked will not retire now (a debugger stop before it)."""
        self._slice_fault_adjust += 1

    def clear_exception_in_flight(self) -> None:
        """Reset QEMU's in-flight exception marker (unicorn issue 1883)."""
        off = self.calibration.exception_in_flight_offset
        if off is None:
            return
        self.uc.context_update(self._fix_ctx)
        ctypes.memmove(self._fix_ptr + off, b"\xff\xff\xff\xff", 4)
        self.uc.context_restore(self._fix_ctx)

    # -- execution ---------------------------------------------------------------
    def _engine_counter(self) -> int | None:
        off = self.calibration.emu_counter_offset
        if off is None:
            return None
        return ctypes.c_uint64.from_address(self._handle + off).value

    @property
    def icount(self) -> int | None:
        """Instructions retired so far, exact inside hooks too; None once the CPU has run
        uncounted (``counting`` off: Unicorn's counter costs ~30x on tight loops)."""
        if not self.exact:
            return None
        if not self.in_run:
            return self.retired
        counted = self._engine_counter()
        if counted is None:
            return self.retired
        return self.retired + max(0, counted - self._slice_fault_adjust)

    def run(self, max_insns: int, *, timeout_us: int = 0, counted: bool = True) -> int:
        """Run up to `max_insns` instructions from the current EIP; return how many retired.

        With counted=False the CPU runs at full speed with no instruction budget until a
        hook stops it (`stop`, `stop_at_event`, `event_deadline`); the count is unknown
        (returns 0).  `timeout_us` is kept for callers and ignored: Unicorn's own timeout
        stops asynchronously (see `stop_asynchronously`)."""
        eip = self.read("eip")   # RIP on the 64-bit CPU
        self._slice_fault_adjust = 0
        if not counted:
            self.exact = False
            self._translated_uncounted = True
            self._stepped_since_uncounted = False
            self.in_run = True
            try:
                self.uc.emu_start(eip, 0, count=0)
            except UcError as exc:
                raise CpuError(f"Unicorn stopped: {exc}") from None
            finally:
                self.in_run = False
            return 0
        if self._translated_uncounted:
            # Unicorn adds its count hook without retranslating: blocks cached by an
            # uncounted run would ignore count= (a step would run on to the next hook).
            # The first single step after such a run, when its instruction does not end
            # its block, retranslates just that block: the count stops the step at the
            # block's next instruction (a debugger's step off a breakpoint, a watchpoint's
            # re-execution; measured: the full flush costs ~100 us of retranslation).
            if max_insns == 1 and not self._stepped_since_uncounted and self._block_goes_on(eip):
                self.uc.ctl_remove_cache(eip, eip + 1)
                self._stepped_since_uncounted = True
            else:
                self.uc.ctl_flush_tb()
                self._translated_uncounted = False
        self.in_run = True
        try:
            self.uc.emu_start(eip, 0, count=max_insns)
        except UcError as exc:
            raise CpuError(f"Unicorn stopped: {exc}") from None
        finally:
            counted = self._engine_counter()
            self.in_run = False
        if counted is None:
            done = max_insns
        else:
            done = max(0, min(counted, max_insns) - self._slice_fault_adjust)
        self.retired += done
        return done

    def _block_goes_on(self, eip: int) -> bool:
        """True when the translated block starting at `eip` holds more than the one
        instruction there. Translating it is an instruction fetch: if that faulted
        (CR2 moved), CR2 and the in-flight exception are put back and False returned."""
        cr2 = self.read("cr2")
        try:
            instructions = self.uc.ctl_request_cache(eip)[1]      # (pc, icount, size)
        except UcError:
            instructions = 0
        if self.read("cr2") != cr2:
            self.clear_exception_in_flight()
            self.write("cr2", cr2)
            return False
        return instructions >= 2

    def stop(self) -> None:
        """From inside a hook: stop the current run() after this hook (exact)."""
        self.stop_requested = True
        self.uc.emu_stop()

    def stop_asynchronously(self) -> None:
        """From another thread, as a last resort.  Unicorn notices such a stop inside a
        memory access, after a store but before the instruction retires, and resumes at
        that instruction: its store happens twice (unicorn issues 1105 and 1355; measured
        here: one replayed `incl` per stop).  Counted runs never need this: their slices
        end exactly on the instruction budget, and hooks stop exactly."""
        self.async_stops += 1
        self.uc.emu_stop()

    # -- registers ---------------------------------------------------------------
    def read(self, name: str) -> int:
        batch = self._read_batches.get((name,))
        if batch is None:
            batch = self._read_batches[(name,)] = self._new_batch((name,))
        return batch.read()[0]

    def write(self, name: str, value: int) -> None:
        self.uc.reg_write(self.REGISTER_IDS[name], value)

    def _new_batch(self, names: tuple[str, ...]) -> "_RawBatch":
        return _RawBatch(self.uc, names, self.REGISTER_IDS, self.VALUE_MASK)

    def read_many(self, names: tuple[str, ...] | list[str]) -> dict[str, int]:
        key = tuple(names)
        batch = self._read_batches.get(key)
        if batch is None:
            batch = self._read_batches[key] = self._new_batch(key)
        return dict(zip(key, batch.read()))

    def write_many(self, values: dict[str, int]) -> None:
        """One raw uc_reg_write_batch (32-bit registers, segments, CRs, DRs)."""
        key = tuple(values)
        batch = self._write_batches.get(key)
        if batch is None:
            batch = self._write_batches[key] = self._new_batch(key)
        batch.write(values.values())

    def frame_registers(self) -> dict[str, int]:
        return dict(zip(self.FRAME_REGS, self._frame_batch.read()))

    def hypercall_registers(self) -> list[int]:
        """[eax, ebx, ecx, edx, esi, edi, ebp, eip, esp] in one raw batch."""
        return self._hc_batch.read()

    def write_eax(self, value: int) -> None:
        self._eax_value.value = value & 0xFFFFFFFF
        if self._reg_write(self._handle_obj, X.UC_X86_REG_EAX, ctypes.byref(self._eax_value)) != 0:
            raise CpuError("uc_reg_write failed")

    @property
    def cpl(self) -> int:
        return self.read("cs") & 3

    def set_gdtr(self, base: int, limit: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, base, limit, 0))

    def gdtr(self) -> tuple[int, int]:
        _sel, base, limit, _flags = self.uc.reg_read(X.UC_X86_REG_GDTR)
        return base, limit

    def set_ldtr(self, selector: int, base: int, limit: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_LDTR, (selector, base, limit, 0x8200 if limit else 0))

    def set_task_register(self, selector: int, base: int, limit: int) -> None:
        """Load TR's hidden part: an available 32-bit TSS (QEMU checks the type)."""
        self.uc.reg_write(X.UC_X86_REG_TR, (selector, base, limit, 0x8900))

    def write_msr(self, msr: int, value: int) -> None:
        self.uc.msr_write(msr, value)

    def read_msr(self, msr: int) -> int:
        return self.uc.msr_read(msr)

    # -- caches ------------------------------------------------------------------
    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        for listener in self.tlb_listeners:
            listener()

    def invalidate_code(self, start: int, end: int) -> None:
        """Drop translated code for guest VAs [start, end) after an external write."""
        cr2 = self.read("cr2")
        self.uc.ctl_remove_cache(start, end)
        # Unicorn translates `start` as an instruction fetch: a VA that cannot be fetched
        # (not present, NX) sets CR2 and leaves a #PF in flight, so the guest's next fault
        # would become #DF (unicorn issue 1883).  Undo both.
        self.clear_exception_in_flight()
        self.write("cr2", cr2)

    # -- state -------------------------------------------------------------------
    def save_context(self):
        return self.uc.context_save()

    def restore_context(self, ctx) -> None:
        self.uc.context_restore(ctx)
        self.flush_tlb()


_HC_NAMES = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "eip", "esp")


class _RawBatch:
    """A preallocated uc_reg_read_batch over fixed registers, skipping the binding's
    per-register type lookup (the binding costs ~15 µs for a 9-register batch)."""

    def __init__(self, uc: Uc, names: tuple[str, ...], registers: dict[str, int] = REGISTERS,
                 mask: int = 0xFFFFFFFF) -> None:
        from unicorn.unicorn_py3.unicorn import uclib
        self._fn = uclib.uc_reg_read_batch
        self._write = uclib.uc_reg_write_batch
        self._handle = uc._uch
        n = len(names)
        self._ids = (ctypes.c_int * n)(*(registers[x] for x in names))
        self._mask = mask
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        self._n = n

    def read(self) -> list[int]:
        if self._fn(self._handle, self._ids, self._ptrs, self._n) != 0:
            raise CpuError("uc_reg_read_batch failed")
        mask = self._mask
        return [v & mask for v in self._vals]

    def write(self, values) -> None:
        """uc_reg_write_batch of `values`, in the order of the batch's registers."""
        vals = self._vals
        for i, v in enumerate(values):
            vals[i] = v & 0xFFFFFFFFFFFFFFFF
        if self._write(self._handle, self._ids, self._ptrs, self._n) != 0:
            raise CpuError("uc_reg_write_batch failed")

