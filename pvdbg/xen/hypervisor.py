"""The emulated Xen: one PV domain on one emulated CPU.

The CPU reports every exception and software interrupt here (`on_interrupt`, called
inside Unicorn's hook).  ``int $0x82`` from ring 1 is a hypercall, dispatched through
the table in hypercalls.py and traced; ``int $0xf0`` at the landing pad completes a
ring 3 -> ring 1 transition (entry.py); anything else is a guest exception, which
traps.py delivers or turns into a domain crash.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..machine.cpu import (CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR,
                           CR4_OSXMMEXCPT, CR4_PAE, EFER_NXE, MSR_EFER, X86Cpu)
from ..machine.memory import PAGE_SHIFT
from ..symbols import SymbolTable
from ..trace import TraceKind, TraceLog, TraceRecord
from .abi import SharedInfo32, VcpuInfo32
from .builder import BuiltDomain
from .constants import FLAT_RING1_CS, FLAT_RING1_DS, Errno, ShutdownReason, errno_name
from .entry import (GDT_LIMIT, LANDING_VECTOR, RING0_CS, RING0_DS, TRAMP_IRET, TRAMP_TO_RING1,
                    TRAMPOLINE_VA, TSS_SEL, TSS_SIZE, gdt_window_va, tss_va)
from .guestmem import GuestFault, GuestMemory
from .hypercalls import HYPERCALLS, HypercallError
from . import console, sched, version  # noqa: F401  (register their hypercalls)
from . import descriptors, mmu, ptwr  # noqa: F401  (memory management, descriptor tables)
from .pv import attach_pv  # traps, events, time, multicall, emulation (registers hypercalls)

HYPERCALL_VECTOR = 0x82
EFLAGS_TF = 1 << 8
TRAP_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
              8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
              17: "#AC", 18: "#MC", 19: "#XM"}


def trap_name(vector: int) -> str:
    return TRAP_NAMES.get(vector, f"int {vector:#x}")


@dataclass
class Vcpu:
    """Per-vcpu hypervisor state (struct vcpu / arch_vcpu in Xen)."""
    vcpu_id: int
    online: bool = False
    blocked: bool = False
    kernel_ss: int = FLAT_RING1_DS
    kernel_sp: int = 0
    saved_context: Any = None           # Unicorn context while not on the CPU
    ring3_return: dict[str, int] | None = None   # pending 3 -> 1 transition state
    after_landing: Any = None


@dataclass
class CrashReport:
    """Why the domain died, with the state to show (registers, instruction, last calls)."""
    reason: str
    vcpu: int
    registers: dict[str, int]
    cr2: int
    cr3: int
    instruction: str
    instruction_bytes: bytes
    symbol: str | None
    last_records: list[TraceRecord] = field(default_factory=list)


@dataclass
class DomainState:
    domid: int = 1
    name: str = "guest"
    shutdown_reason: ShutdownReason | None = None
    crash: CrashReport | None = None
    console: bytearray = field(default_factory=bytearray)
    vm_assist: int = 0

    @property
    def is_dying(self) -> bool:
        return self.shutdown_reason is not None


class HypercallContext:
    """What a hypercall handler may touch: the caller, its memory, the domain."""

    def __init__(self, hv: "Hypervisor", vcpu: Vcpu) -> None:
        self.hv = hv
        self.vcpu = vcpu
        self.guest = hv.guest
        self.domain = hv.domain
        self.details: list[str] = []
        self.extra: dict[str, Any] = {}

    def note(self, text: str) -> None:
        self.details.append(text)


class Hypervisor:
    def __init__(self, built: BuiltDomain, symbols: SymbolTable | None = None,
                 trace: TraceLog | None = None, hypercall_page_va: int | None = None) -> None:
        self.built = built
        self.hypercall_page_va = hypercall_page_va
        self.memory = built.memory
        self.layout = built.layout
        self.symbols = symbols if symbols is not None else SymbolTable.empty()
        self.trace = trace if trace is not None else TraceLog()
        self.domain = DomainState()
        self.cpu = X86Cpu(self.memory, self)
        self.guest = GuestMemory(self.memory, self._current_cr3)
        self.cpu.tlb_listeners.append(self.guest.flush)
        self.vcpus = [Vcpu(i) for i in range(len(built.private_area.reserved_gdt_mfns))]
        self.current = self.vcpus[0]
        self.area = built.private_area
        self._cr3 = built.l3_mfn << PAGE_SHIFT
        self.listeners: list[Any] = []      # objects with on_trace(record) (catchpoints)
        self.console_sinks: list[Any] = []  # callables(bytes) fed with guest console output
        self.console_input = bytearray()
        self.vcpu_info_moved: dict[int, int] = {}   # VCPUOP_register_vcpu_info: vcpu -> maddr
        self.mm = mmu.create_memory_manager(self)          # frame table (mm.py)
        self.descriptors = descriptors.DescriptorTables(self)
        self.mm.boot(built.l3_mfn)                         # libxc pins the L3; it is vcpu0's CR3
        self._boot_vcpu0()
        attach_pv(self)

    # -- state helpers -----------------------------------------------------------
    def _current_cr3(self) -> int:
        return self._cr3

    @property
    def cr3(self) -> int:
        return self._cr3

    def set_cr3(self, maddr: int) -> None:
        """Load a new pagetable base on the current vcpu (Xen already took its references)."""
        self._cr3 = maddr
        self.cpu.write("cr3", maddr)
        self.cpu.flush_tlb()

    def fixup_page_fault(self, cr2: int, error_code: int) -> bool:
        """Xen's fixup_page_fault (ptwr.py): True if the #PF was handled inside Xen."""
        return ptwr.fixup_page_fault(self, self.current, cr2, error_code)

    def shared_info_maddr(self) -> int:
        return self.built.shared_info_mfn << PAGE_SHIFT

    def vcpu_info_maddr(self, vcpu_id: int) -> int:
        moved = self.vcpu_info_moved.get(vcpu_id)
        if moved is not None:
            return moved
        return self.shared_info_maddr() + vcpu_id * VcpuInfo32.SIZE

    def vcpu_info(self, vcpu_id: int) -> VcpuInfo32:
        return VcpuInfo32.from_bytes(self.memory.read(self.vcpu_info_maddr(vcpu_id), VcpuInfo32.SIZE))

    def shared_info(self) -> SharedInfo32:
        return SharedInfo32.from_bytes(self.memory.read(self.shared_info_maddr(), SharedInfo32.SIZE))

    def symbolize(self, va: int) -> str | None:
        hit = self.symbols.lookup(va)
        if hit is None:
            return None
        name, off = hit
        return f"{name}+{off:#x}" if off else name

    # -- boot --------------------------------------------------------------------
    def _boot_vcpu0(self) -> None:
        """Put vcpu0 at ring 1 at the kernel entry, as Xen's domain builder leaves it."""
        cpu = self.cpu
        vcpu = self.vcpus[0]
        vcpu.online = True
        vcpu.kernel_sp = self.layout.initial_esp
        cpu.set_gdtr(gdt_window_va(0), GDT_LIMIT)
        cpu.write_many({"cr3": self._cr3, "cr4": CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT})
        cpu.write("cr0", CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
        cpu.write_msr(MSR_EFER, EFER_NXE)
        cpu.set_task_register(TSS_SEL, tss_va(0), TSS_SIZE - 1)
        self.area.set_ring1_stack(0, FLAT_RING1_DS, self.area.ring1_stack_top)
        cpu.write_many({"cs": RING0_CS, "ss": RING0_DS, "ds": FLAT_RING1_DS, "es": FLAT_RING1_DS,
                        "fs": FLAT_RING1_DS, "gs": FLAT_RING1_DS})
        frame = self.area.write_stack_frame([self.layout.entry, FLAT_RING1_CS, 0x200,
                                             self.layout.initial_esp, FLAT_RING1_DS])
        cpu.write_many({"esp": frame, "eip": TRAMPOLINE_VA + TRAMP_IRET, "eax": 0, "ebx": 0,
                        "ecx": 0, "edx": 0, "esi": self.layout.start_info_va, "edi": 0, "ebp": 0})
        cpu.run(1)                   # the iret: ring 0 -> ring 1 at the entry point
        cpu.retired = 0
        cpu.write_many({"dr6": 0xFFFF0FF0, "dr7": 0x400})

    # -- CPU callbacks (inside Unicorn's hook) ------------------------------------
    def on_interrupt(self, intno: int) -> None:
        try:
            if intno == HYPERCALL_VECTOR and self.cpu.cpl == 1:
                self.hypercall()
            elif intno == LANDING_VECTOR and self.current.ring3_return is not None:
                self._landed_in_ring1()
            else:
                self.guest_exception(intno)
        except Exception as exc:       # a pvdbg bug must not kill the process mid-hook
            self.crash_domain(f"internal hypervisor error: {type(exc).__name__}: {exc}")
            self.internal_error = exc

    def on_invalid_opcode(self) -> bool:
        """#UD through Unicorn's invalid-instruction hook: forced-emulation CPUID, or the
        guest's #UD handler (traps.py)."""
        try:
            self.guest_exception(6)
        except Exception as exc:       # a pvdbg bug must not kill the process mid-hook
            self.crash_domain(f"internal hypervisor error: {type(exc).__name__}: {exc}")
            self.internal_error = exc
        return True

    internal_error: Exception | None = None
    current_hypercall_seq: int | None = None

    # -- hypercalls --------------------------------------------------------------
    def hypercall(self) -> None:
        cpu = self.cpu
        eax, ebx, ecx, edx, esi, edi, ebp, eip, esp = cpu.hypercall_registers()
        caller = eip - 2
        vcpu = self.current
        ctx = HypercallContext(self, vcpu)
        record_seq = self.trace.next_seq()
        self.current_hypercall_seq = record_seq
        icount = cpu.icount
        name, args, result = self.dispatch_hypercall(ctx, eax, (ebx, ecx, edx, esi, edi, ebp))
        self.current_hypercall_seq = None
        if result is not None:
            cpu.write_eax(result)
        record = TraceRecord(
            seq=record_seq, kind=TraceKind.hypercall, icount=icount, vcpu=vcpu.vcpu_id,
            eip=caller, name=name, args=args, result=result, error=errno_name(result or 0),
            symbol=self._caller_symbol(caller, esp), detail="; ".join(ctx.details))
        self.emit(record)
        self.traps.hypercall_return()

    def dispatch_hypercall(self, ctx: HypercallContext, number: int,
                           raw: tuple[int, ...]) -> tuple[str, dict[str, Any], int | None]:
        """Run hypercall `number` with register arguments `raw` (also each multicall
        entry); returns (name, decoded arguments, result or None)."""
        spec = HYPERCALLS.get(number)
        if spec is None:
            ctx.note("not implemented by Xen for 32-bit PV guests" if number > 63
                     else "no such hypercall for this guest")
            return (HYPERCALLS.name_of(number),
                    {"arg1": raw[0], "arg2": raw[1], "arg3": raw[2], "arg4": raw[3],
                     "arg5": raw[4]}, -Errno.ENOSYS)
        return self.run_handler(ctx, spec, raw)

    @staticmethod
    def run_handler(ctx: HypercallContext, spec, raw: tuple[int, ...]
                    ) -> tuple[str, dict[str, Any], int | None]:
        """Call `spec`'s handler with the raw arguments it takes: a refusal becomes
        -errno and a bad guest buffer -EFAULT, each with its reason noted."""
        args = spec.decode_args(raw)
        try:
            result = spec.fn(ctx, *raw[:len(spec.params)])
        except HypercallError as err:
            result = -err.errno
            if err.why:
                ctx.note(err.why)
        except GuestFault as fault:
            result = -Errno.EFAULT
            ctx.note(f"bad guest buffer: {fault}")
        return spec.name, args, result

    def _caller_symbol(self, caller: int, esp: int) -> str | None:
        """The hypercall stub's caller: the return address on the stack when via the page."""
        hp = self.hypercall_page_va
        if hp is not None and hp <= caller < hp + 4096:
            try:
                ret = self.guest.read_u32(esp)
                return self.symbolize(ret - 5) or f"{ret - 5:#x}"
            except GuestFault:
                return None
        return self.symbolize(caller)

    def emit(self, record: TraceRecord) -> None:
        self.trace.append(record)
        for listener in self.listeners:
            listener.on_trace(record)

    # -- exceptions --------------------------------------------------------------
    def guest_exception(self, vector: int) -> None:
        """A guest fault or software interrupt: Xen's handling and delivery (traps.py;
        for #PF, fixup_page_fault first)."""
        self.traps.exception(vector)

    # -- ring transitions (entry.py) --------------------------------------------
    def iret_to_outer_ring(self, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        """From ring 1, resume at CS:EIP in ring 2/3 with a real iret from Xen's stack."""
        frame = self.area.write_stack_frame([eip, cs, eflags, esp, ss])
        self.area.transit_open()               # the trampoline and Xen's stack (entry.py)
        # Xen runs with TF clear (its entry gates clear it): a TF left by the guest must not
        # single-step the trampoline's iret.
        self.cpu.write_many({"esp": frame, "eip": TRAMPOLINE_VA + TRAMP_IRET,
                             "eflags": self.cpu.read("eflags") & ~EFLAGS_TF})

    def switch_to_ring1(self, then: Callable[[dict[str, int]], None]) -> None:
        """From ring 3, enter ring 1 through the call gate; `then(saved_ring3_regs)` runs
        at the landing pad, with the CPU at ring 1 on Xen's stack."""
        vcpu = self.current
        vcpu.ring3_return = regs = self.cpu.frame_registers()
        vcpu.after_landing = then
        self.area.transit_open(ring3_lcall=True)
        # Xen enters from ring 3 through an interrupt gate, which clears TF; the call gate
        # does not, so a TF set by the guest would trap inside the trampoline.
        self.cpu.write_many({"eip": TRAMPOLINE_VA + TRAMP_TO_RING1,
                             "eflags": regs["eflags"] & ~EFLAGS_TF})

    def _landed_in_ring1(self) -> None:
        vcpu = self.current
        saved, then = vcpu.ring3_return, vcpu.after_landing
        vcpu.ring3_return = None
        vcpu.after_landing = None
        self.traps.close_transit()          # back to guest code in ring 1 (entry.py)
        then(saved)

    # -- death -------------------------------------------------------------------
    def shutdown(self, reason: ShutdownReason, detail: str = "") -> None:
        if self.domain.shutdown_reason is None:
            self.domain.shutdown_reason = reason
            regs = self.cpu.frame_registers()
            self.emit(TraceRecord(seq=self.trace.next_seq(), kind=TraceKind.shutdown,
                                  icount=self.cpu.icount, vcpu=self.current.vcpu_id,
                                  eip=regs["eip"], name=reason.name,
                                  symbol=self.symbolize(regs["eip"]), detail=detail,
                                  parent=self.current_hypercall_seq))
        self.cpu.stop()

    def crash_domain(self, why: str, vector: int | None = None) -> None:
        """Xen's domain_crash(): keep the state for the report and stop the machine."""
        if self.domain.crash is None:
            regs = self.cpu.frame_registers()
            eip = regs["eip"]
            if vector is not None and (vector >= 32 or vector in (3, 4)):
                eip -= 2
            insn_bytes, insn_text = self._disassemble_at(eip)
            self.domain.crash = CrashReport(
                reason=why, vcpu=self.current.vcpu_id, registers=regs,
                cr2=self.cpu.read("cr2"), cr3=self._cr3, instruction=insn_text,
                instruction_bytes=insn_bytes, symbol=self.symbolize(eip),
                last_records=self.trace.last(8))
            self.emit(TraceRecord(seq=self.trace.next_seq(), kind=TraceKind.crash,
                                  icount=self.cpu.icount, vcpu=self.current.vcpu_id, eip=eip,
                                  name="domain_crash", symbol=self.symbolize(eip), detail=why))
        self.shutdown(ShutdownReason.crash, why)

    def _disassemble_at(self, eip: int) -> tuple[bytes, str]:
        try:
            code = self.guest.read(eip, 16)
        except GuestFault as fault:
            return b"", f"<instruction not readable: {fault.reason}>"
        from ..disasm import disassemble_one
        return disassemble_one(code, eip)

    # -- console -----------------------------------------------------------------
    def console_output(self, data: bytes, source: str) -> None:
        if not data:
            return
        self.domain.console += data
        from .console import console_record
        self.emit(console_record(self, data, source))
        for sink in self.console_sinks:
            sink(data)

    def console_input_take(self, count: int) -> bytes:
        data = bytes(self.console_input[:count])
        del self.console_input[:count]
        return data

    # -- scheduling --------------------------------------------------------------
    def block_vcpu(self, vcpu: Vcpu) -> None:
        """SCHEDOP_block: enable event delivery, then sleep unless an event is deliverable
        (woken by an event or a timer; schedule.py)."""
        self.scheduler.block(vcpu)

    def port_pending(self, port: int) -> bool:
        if not 0 <= port < 1024:
            return False
        word = self.memory.read_u32(self.shared_info_maddr() + SharedInfo32.offset_of("evtchn_pending")
                                    + (port // 32) * 4)
        return bool(word >> (port % 32) & 1)

    def poll_vcpu(self, vcpu: Vcpu, ports: list[int], timeout_ns: int) -> int:
        """SCHEDOP_poll: 0 at once if an event is deliverable or a port pending, else sleep
        until a port fires or the absolute `timeout_ns` passes (schedule.py)."""
        return self.scheduler.poll(vcpu, ports, timeout_ns)
