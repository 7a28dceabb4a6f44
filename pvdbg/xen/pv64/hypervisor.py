"""The emulated Xen for one 64-bit PV domain: the same engine as the 32-bit Hypervisor
(trace records, console, crash reports, hypercall dispatch through a typed table) with
the 64-bit CPU, 4-level memory management and the 64-bit entry paths.

``syscall`` in guest kernel mode is a hypercall (RAX = number; RDI, RSI, RDX, R10, R8);
Xen returns with RCX = the address after the syscall and R11 = RFLAGS, as sysret leaves
them.  ``syscall`` in guest user mode enters the kernel's syscall callback.  Every other
way in (exceptions, ``int N``) goes through traps.py.
ABI: xen/arch/x86/x86_64/entry.S (lstar_enter, test_all_events), xen/arch/x86/pv/
hypercall.c, xen/arch/x86/mm.c (new_guest_cr3), xen/arch/x86/pv/descriptor-tables.c.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from ...machine.cpu import (CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR,
                            CR4_OSXMMEXCPT, CR4_PAE, EFER_NXE, MSR_EFER)
from ...machine.cpu64 import EFER_LMA, EFER_LME, EFER_SCE, X64Cpu
from ...machine.memory import PAGE_SHIFT, PAGE_SIZE
from ...symbols import SymbolTable
from ...trace import TraceKind, TraceLog, TraceRecord
from ..abi64 import SharedInfo64, StartInfo64, VcpuInfo64
from ..constants import Errno, errno_name
from ..guestmem import GuestFault
from ..hypercalls import fail
from ..hypervisor import DomainState, HypercallContext, Hypervisor
from ..time import TimeKeeper
from .area import GDT_LIMIT, TRAMP_IRETQ, TRAMPOLINE_VA, gdt_window_va
from .builder import BuiltDomain64
from .guestmem import GuestMemory64
from .hypercalls import lookup64
from .layout import FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, HYPERVISOR_CS64, HYPERVISOR_DS
from .mm import MemoryManager64, PageType
from .ptwr import Ptwr64
from .events import EventChannels64, Scheduler64
from .traps import EFLAGS_IF, GuestCrash, PvState64, Traps64



@dataclass
class Vcpu64:
    """Per-vcpu hypervisor state of a 64-bit PV vcpu."""
    vcpu_id: int
    online: bool = False
    blocked: bool = False
    pv: PvState64 = field(default_factory=PvState64)
    gdt_frames: list[int] = field(default_factory=list)
    gdt_entries: int = 0
    block_reason: str = ""
    ldt_base: int = 0                      # MMUEXT_SET_LDT (ldt.py)
    ldt_ents: int = 0
    ldt_frames: list[int] = field(default_factory=list)    # typed seg_desc, in the window


class Hypervisor64(Hypervisor):
    """Xen for a 64-bit PV domain built by pv64/builder.py."""

    SHARED_INFO_LAYOUT = SharedInfo64
    START_INFO_LAYOUT = StartInfo64
    guest_bits = 64

    def __init__(self, built: BuiltDomain64, symbols: SymbolTable | None = None,
                 trace: TraceLog | None = None, hypercall_page_va: int | None = None) -> None:
        self.built = built
        self.hypercall_page_va = hypercall_page_va
        self.memory = built.memory
        self.layout = built.layout
        self.symbols = symbols if symbols is not None else SymbolTable.empty()
        self.trace = trace if trace is not None else TraceLog()
        self.domain = DomainState()
        self.cpu = X64Cpu(self.memory, self)
        self._cr3 = built.l4_mfn << PAGE_SHIFT
        self.guest = GuestMemory64(self.memory, self._current_cr3)
        self.cpu.tlb_listeners.append(self.guest.flush)
        self.vcpus = [Vcpu64(i) for i in range(len(built.private_area.reserved_gdt_mfns))]
        self.current = self.vcpus[0]
        self.area = built.private_area
        self.listeners: list[Any] = []
        self.console_sinks: list[Any] = []
        self.console_input = bytearray()
        self.vcpu_info_moved: dict[int, int] = {}
        self.in_multicall = False
        self.runstate_areas: dict[int, int] = {}   # VCPUOP_register_runstate_memory_area
        self._disasm = Cs(CS_ARCH_X86, CS_MODE_64)
        self.mm = MemoryManager64(self)
        self.mm.boot(built.l4_mfn)
        self.traps = Traps64(self)
        self.ptwr = Ptwr64(self)
        self.scheduler = Scheduler64(self)
        self._boot_vcpu0()
        self.time = TimeKeeper(self)
        self.events = EventChannels64(self)
        from unicorn import UC_HOOK_INSN
        from unicorn import x86_const as X
        self.cpu.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)

    # -- state helpers ---------------------------------------------------------------
    def vcpu_info(self, vcpu_id: int) -> VcpuInfo64:
        return VcpuInfo64.from_bytes(self.memory.read(self.vcpu_info_maddr(vcpu_id),
                                                      VcpuInfo64.SIZE))

    def shared_info(self) -> SharedInfo64:
        return SharedInfo64.from_bytes(self.memory.read(self.shared_info_maddr(),
                                                        SharedInfo64.SIZE))

    def nr_guest_pages(self) -> int:
        return int(sum(self.mm.owned))

    def fixup_page_fault(self, cr2: int, error_code: int) -> bool:
        """Xen's fixup_page_fault: a write to a read-only mapped L1 table is emulated
        (writable pagetables, ptwr.py); anything else goes to the guest."""
        return self.ptwr.fixup(cr2, error_code)

    def flush_guest_tlb(self) -> None:
        self.cpu.flush_tlb()

    def set_m2p(self, mfn: int, pfn: int) -> None:
        """MMU_MACHPHYS_UPDATE: M2P[mfn] = pfn (8-byte entries)."""
        index = mfn * 8
        frame = self.built.m2p_mfns[index // PAGE_SIZE]
        self.memory.write_u64((frame << PAGE_SHIFT) + index % PAGE_SIZE, pfn)

    # -- pagetable bases -------------------------------------------------------------
    def load_pagetable(self, vcpu: Vcpu64) -> None:
        """CR3 for the vcpu's mode: the kernel table, or the user table in user mode."""
        pv = vcpu.pv
        mfn = pv.kernel_table_mfn if pv.kernel_mode else pv.user_table_mfn
        if vcpu is self.current and mfn:
            self.set_cr3(mfn << PAGE_SHIFT)

    def new_baseptr(self, vcpu: Vcpu64, mfn: int) -> None:
        """MMUEXT_NEW_BASEPTR (new_guest_cr3): the kernel pagetable becomes `mfn`."""
        pv = vcpu.pv
        if not pv.kernel_mode:
            raise fail(Errno.EINVAL, "NEW_BASEPTR from user mode")
        self.mm.get_page_type(mfn, PageType.l4)
        old, pv.kernel_table_mfn = pv.kernel_table_mfn, mfn
        self.load_pagetable(vcpu)
        if old:
            self.mm.put_page_type(old)

    def new_user_baseptr(self, vcpu: Vcpu64, mfn: int) -> None:
        """MMUEXT_NEW_USER_BASEPTR: the user-mode pagetable (0: none)."""
        pv = vcpu.pv
        if mfn:
            self.mm.get_page_type(mfn, PageType.l4)
        old, pv.user_table_mfn = pv.user_table_mfn, mfn
        if old:
            self.mm.put_page_type(old)

    def install_gdt(self, vcpu: Vcpu64, frames: list[int], entries: int) -> None:
        """set_gdt: map `frames` (typed seg_desc by the caller) into the vcpu's window."""
        for mfn in vcpu.gdt_frames:
            self.mm.put_page_type(mfn)
        vcpu.gdt_frames, vcpu.gdt_entries = list(frames), entries
        for page in range(14):
            self.area.set_gdt_frame(vcpu.vcpu_id, page, frames[page] if page < len(frames)
                                    else None)
        self.flush_guest_tlb()

    # -- boot ------------------------------------------------------------------------
    def _boot_vcpu0(self) -> None:
        """Put vcpu0 in kernel mode at CPL 3 at the entry point, RSI = start_info, as
        Xen's domain builder leaves it; one ``iretq`` from Xen's trampoline."""
        cpu = self.cpu
        vcpu = self.vcpus[0]
        vcpu.online = True
        vcpu.pv.kernel_table_mfn = self.built.l4_mfn
        vcpu.pv.kernel_sp = self.layout.initial_esp
        cpu.set_gdtr(gdt_window_va(0), GDT_LIMIT)
        cpu.write_many({"cr3": self._cr3, "cr4": CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT})
        cpu.write_msr(MSR_EFER, EFER_NXE | EFER_LME | EFER_LMA | EFER_SCE)
        cpu.write("cr0", CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
        cpu.write_many({"cs": HYPERVISOR_CS64, "ss": HYPERVISOR_DS})
        frame = self.area.write_stack_frame([self.layout.entry, FLAT_KERNEL_CS64, EFLAGS_IF | 2,
                                             self.layout.initial_esp, FLAT_KERNEL_SS64])
        regs = {name: 0 for name in ("rax", "rbx", "rcx", "rdx", "rdi", "rbp", "r8", "r9",
                                     "r10", "r11", "r12", "r13", "r14", "r15")}
        regs.update(rsp=frame, rip=TRAMPOLINE_VA + TRAMP_IRETQ, rsi=self.layout.start_info_va)
        cpu.write_many(regs)
        cpu.write_many({"ds": 0, "es": 0, "fs": 0, "gs": 0})
        cpu.run(1)
        cpu.retired = 0
        cpu.write_many({"dr6": 0xFFFF0FF0, "dr7": 0x400})
        if cpu.cpl != 3 or cpu.read("rip") != self.layout.entry:
            raise RuntimeError("could not enter the 64-bit guest at CPL 3")

    # -- CPU callbacks ----------------------------------------------------------------
    def on_interrupt(self, intno: int) -> None:
        try:
            self.guest_exception(intno)
        except Exception as exc:       # a pvdbg bug must not kill the process mid-hook
            self.crash_domain(f"internal hypervisor error: {type(exc).__name__}: {exc}")
            self.internal_error = exc

    def on_syscall(self) -> None:
        try:
            if self.current.pv.kernel_mode:
                self.hypercall()
            else:
                self.traps.user_syscall()
        except Exception as exc:       # a pvdbg bug must not kill the process mid-hook
            self.crash_domain(f"internal hypervisor error: {type(exc).__name__}: {exc}")
            self.internal_error = exc

    def _on_cpuid(self, uc, _data) -> int:
        try:
            self.traps.native_cpuid()
        except Exception as exc:       # a pvdbg bug must not kill the process mid-hook
            self.crash_domain(f"internal hypervisor error: {type(exc).__name__}: {exc}")
            self.internal_error = exc
        return 1

    def guest_exception(self, vector: int) -> None:
        self.traps.exception(vector)

    # -- hypercalls --------------------------------------------------------------------
    def hypercall(self) -> None:
        cpu = self.cpu
        rax, rdi, rsi, rdx, r10, r8, _r9, rip, rsp = cpu.hypercall_registers64()
        rflags = cpu.read("rflags")
        vcpu = self.current
        ctx = HypercallContext(self, vcpu)
        record_seq = self.trace.next_seq()
        self.current_hypercall_seq = record_seq
        icount = cpu.icount
        after = rip + 2
        name, args, result = self.dispatch_hypercall(ctx, rax, (rdi, rsi, rdx, r10, r8, 0))
        self.current_hypercall_seq = None
        if name != "iret":
            cpu.write_many({"rcx": after, "r11": rflags})
        if result is not None:
            cpu.write_eax(result)
        record = TraceRecord(
            seq=record_seq, kind=TraceKind.hypercall, icount=icount, vcpu=vcpu.vcpu_id,
            eip=rip, name=name, args=args, result=result, error=errno_name(result or 0),
            symbol=self._caller_symbol(rip, rsp), detail="; ".join(ctx.details))
        self.emit(record)
        self.deliver_events()

    def dispatch_hypercall(self, ctx: HypercallContext, number: int,
                           raw: tuple[int, ...]) -> tuple[str, dict[str, Any], int | None]:
        spec = lookup64(number)
        if spec is None:
            ctx.note("not implemented for 64-bit PV guests by pvdbg" if number <= 63
                     else "no such hypercall for this guest")
            return (self._hc_name(number),
                    {f"arg{i + 1}": raw[i] for i in range(5)}, -Errno.ENOSYS)
        return self.run_handler(ctx, spec, raw)

    @staticmethod
    def _hc_name(number: int) -> str:
        from ..hypercalls import HypercallTable
        return HypercallTable.name_of(number)

    def _caller_symbol(self, caller: int, esp: int) -> str | None:
        """Through the hypercall page: the stub's return address (above RCX and R11)."""
        hp = self.hypercall_page_va
        if hp is not None and hp <= caller < hp + PAGE_SIZE:
            try:
                ret = self.guest.read_u64(esp + 16)
                return self.symbolize(ret - 5) or f"{ret - 5:#x}"
            except GuestFault:
                return None
        return self.symbolize(caller)

    # -- blocking ---------------------------------------------------------------------
    def block_vcpu(self, vcpu: Vcpu64) -> None:
        self.memory.view[self.vcpu_info_maddr(vcpu.vcpu_id) + 1] = 0
        self.scheduler.block(vcpu, "SCHEDOP_block")

    def poll_vcpu(self, vcpu: Vcpu64, ports: list[int], timeout_ns: int) -> int:
        return self.scheduler.poll(vcpu, ports, timeout_ns)

    def deliver_events(self) -> None:
        """test_all_events on the way back to the guest: an upcall if one is
        deliverable (pending and unmasked) on the current vcpu."""
        vcpu = self.current
        if vcpu.blocked or self.domain.is_dying or not self.events.deliverable(vcpu):
            return
        try:
            self.events.upcall64(vcpu)
        except GuestCrash as crash:
            self.crash_domain(str(crash))

    def _disassemble_at(self, eip: int) -> tuple[bytes, str]:
        try:
            code = self.guest.read(eip, 16)
        except GuestFault as fault:
            return b"", f"<instruction not readable: {fault.reason}>"
        insn = next(self._disasm.disasm(code, eip, 1), None)
        if insn is None:
            return code[:1], "(bad)"
        return bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()



