"""The x86-64 CPU: Unicorn in long mode with 4-level paging done by its MMU.

Same engine as the 32-bit CPU (cpu.py: exact instruction counts, the in-flight exception
fix-up, batched register access); what differs is the register file (64-bit names and
values) and one more way into the hypervisor: ``syscall``, which a 64-bit PV guest uses
for hypercalls from kernel mode and for system calls from user mode.  Unicorn replaces a
hooked ``syscall`` by the hook: RCX/R11 are not written, and a RIP written inside the hook
is advanced by the instruction's 2 bytes when emulation resumes (measured; see
tests/test_pv64_cpu.py), which `set_rip_in_syscall_hook` compensates.
"""
from __future__ import annotations

from typing import Protocol

from unicorn import UC_HOOK_INSN, UC_MODE_64
from unicorn import x86_const as X

from .cpu import X86Cpu
from .memory import MachineMemory

GPR64_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
REGISTERS64: dict[str, int] = {
    **{name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPR64_NAMES},
    "rip": X.UC_X86_REG_RIP, "rflags": X.UC_X86_REG_RFLAGS,
    "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS,
    "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
    "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE,
    "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3,
    "cr4": X.UC_X86_REG_CR4,
    "dr0": X.UC_X86_REG_DR0, "dr1": X.UC_X86_REG_DR1, "dr2": X.UC_X86_REG_DR2,
    "dr3": X.UC_X86_REG_DR3, "dr6": X.UC_X86_REG_DR6, "dr7": X.UC_X86_REG_DR7,
    # The names shared code uses for "the instruction pointer", "the stack pointer",
    # "the flags" and "the result register" mean the full 64-bit registers here.
    "eip": X.UC_X86_REG_RIP, "esp": X.UC_X86_REG_RSP, "eflags": X.UC_X86_REG_RFLAGS,
    **{f"e{name[1:]}": getattr(X, f"UC_X86_REG_{name.upper()}")
       for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp")},
}
FRAME_REGS64 = GPR64_NAMES + ("rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs",
                              "fs_base", "gs_base", "eip", "esp", "eflags",
                              "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")
HYPERCALL_REGS64 = ("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9", "rip", "rsp")
SYSCALL_INSN_LEN = 2

MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10


class SyscallSink(Protocol):
    def on_interrupt(self, intno: int) -> None: ...
    def on_invalid_opcode(self) -> bool: ...
    def on_syscall(self) -> None: ...


class X64Cpu(X86Cpu):
    """One Unicorn CPU in long mode over `memory`.  Hooks go to `sink`, `syscall` too."""

    UC_MODE = UC_MODE_64
    REGISTER_IDS = REGISTERS64
    VALUE_MASK = 0xFFFF_FFFF_FFFF_FFFF
    FRAME_REGS = FRAME_REGS64

    def __init__(self, memory: MachineMemory, sink: SyscallSink) -> None:
        super().__init__(memory, sink)
        self._hc64_batch = self._new_batch(HYPERCALL_REGS64)
        self._syscall_resume_rip: int | None = None
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)

    def _on_syscall(self, uc, _data) -> None:
        self._syscall_resume_rip = None
        self.in_syscall_hook = True
        try:
            self._sink.on_syscall()
        finally:
            self.in_syscall_hook = False
        if self.stop_at_event:
            self.uc.emu_stop()

    in_syscall_hook = False

    def syscall_return_rip(self) -> int:
        """Inside the syscall hook: the address after the ``syscall`` instruction."""
        return self.read("rip") + SYSCALL_INSN_LEN

    def set_rip_in_syscall_hook(self, rip: int) -> None:
        """Resume at `rip` after the syscall hook returns (Unicorn adds the insn length)."""
        self._syscall_resume_rip = rip & self.VALUE_MASK
        self.write("rip", (rip - SYSCALL_INSN_LEN) & self.VALUE_MASK)

    def resume_rip(self) -> int:
        """Where the guest continues when the current hook returns."""
        if self.in_syscall_hook:
            if self._syscall_resume_rip is not None:
                return self._syscall_resume_rip
            return self.syscall_return_rip()
        return self.read("rip")

    def set_rip(self, rip: int) -> None:
        """Set where the guest resumes, from any hook (syscall or interrupt)."""
        if self.in_syscall_hook:
            self.set_rip_in_syscall_hook(rip)
        else:
            self.write("rip", rip)

    def hypercall_registers64(self) -> list[int]:
        """[rax, rdi, rsi, rdx, r10, r8, r9, rip, rsp] in one raw batch."""
        return self._hc64_batch.read()

    def write_eax(self, value: int) -> None:
        """A hypercall's result: RAX, sign-extended from the handler's int."""
        self.write("rax", value & self.VALUE_MASK)

    def set_gdtr(self, base: int, limit: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, base, limit, 0))

    def set_task_register(self, selector: int, base: int, limit: int) -> None:
        """Load TR's hidden part: an available 64-bit TSS."""
        self.uc.reg_write(X.UC_X86_REG_TR, (selector, base, limit, 0x8900))
