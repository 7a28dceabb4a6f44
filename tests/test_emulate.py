"""Privileged-instruction emulation on #GP(0), as Xen 4.17 does it for PV guests, and
CPUID (native and forced emulation) with Xen's PV policy."""
from __future__ import annotations

import pytest

from pvasm import session, u32, user_pages
from pvdbg.session import StopReason
from pvdbg.trace import TraceKind
from pvdbg.xen.emulate import InstructionDecoder

GP_GUEST = r"""
.macro TRY insn:vararg
    movl $9f, resume
    \insn
9:
.endm

_start:
    movl $traps, %ebx
    HYPERCALL(HC_set_trap_table)
    jmp body
gp_handler:
    incl gp_count
    movl (%esp), %eax
    movl %eax, gp_ec
    movl 4(%esp), %eax
    movl %eax, gp_eip
    addl $4, %esp
    movl resume, %eax
    movl %eax, (%esp)
    iret
ud_handler:
    incl ud_count
    movl resume, %eax
    movl %eax, (%esp)
    iret
.data
resume: .long 0
gp_count: .long 0
gp_ec: .long 0
gp_eip: .long 0
ud_count: .long 0
traps:
    .byte 13, 0
    .word KCS
    .long gp_handler
    .byte 6, 0
    .word KCS
    .long ud_handler
    .long 0, 0
.text
body:
"""


def run_gp(tmp_path, body, name="emu", **kw):
    s = session(tmp_path, GP_GUEST + body, name=name, **kw)
    stop = s.run(max_insns=200_000)
    assert stop.reason is StopReason.shutdown, (stop, s.crash and s.crash.reason)
    return s


def emulations(s):
    return [r for r in s.trace if r.kind is TraceKind.emulation]


def test_control_registers(tmp_path):
    s = run_gp(tmp_path, r"""
    movl %cr0, %eax
    movl %eax, cr0_v
    movl %cr4, %eax
    movl %eax, cr4_v
    movl %cr3, %eax
    movl %eax, cr3_v
    movl $0x1234000, %eax
    movl %eax, %cr2
    movl %cr2, %eax
    movl %eax, cr2_v
    movl cr0_v, %eax
    orl $8, %eax
    movl %eax, %cr0                   /* TS: allowed */
    movl %cr0, %eax
    movl %eax, cr0_ts
    clts
    movl %cr0, %eax
    movl %eax, cr0_clts
    movl cr0_v, %eax
    xorl $0x20, %eax                  /* NE: not allowed */
    TRY movl %eax, %cr0
    movl gp_count, %eax
    movl %eax, gp_after_cr0
    movl cr3_v, %eax
    movl %eax, %cr3                   /* same L3: new_baseptr succeeds */
    movl $0x00001000, %eax
    TRY movl %eax, %cr3               /* not an L3 of this domain */
    movl $(4 | 8 | 0x80), %eax        /* TSD, DE, PGE */
    movl %eax, %cr4
    movl %cr4, %eax
    movl %eax, cr4_new
    wbinvd
    POWEROFF
.data
cr0_v: .long 0
cr4_v: .long 0
cr3_v: .long 0
cr2_v: .long 0
cr0_ts: .long 0
cr0_clts: .long 0
gp_after_cr0: .long 0
cr4_new: .long 0
""")
    cr0 = u32(s, "cr0_v")
    assert cr0 & 0x80000001 == 0x80000001 and not cr0 & 8
    assert u32(s, "cr4_v") == 0x660
    mfn = s.hv.cr3 >> 12
    assert u32(s, "cr3_v") == (mfn << 12 | mfn >> 20) & 0xFFFFFFFF
    assert u32(s, "cr2_v") == 0x1234000 and s.hv.vcpu_info(0).cr2 == 0x1234000
    assert u32(s, "cr0_ts") & 8 and not u32(s, "cr0_clts") & 8
    assert u32(s, "gp_after_cr0") == 1 and u32(s, "gp_count") == 2
    assert u32(s, "cr4_new") == 0x660 | 4 | 8           # PGE is not the guest's to set
    names = [r.args["insn"] for r in emulations(s)]
    assert "mov eax, cr0" in names and "clts" in names and "wbinvd" in names
    assert all("bytes" in r.args for r in emulations(s))
    refused = [r for r in s.trace if r.kind is TraceKind.trap and r.name == "#GP"]
    assert "mov cr0, eax" in refused[0].detail and "unmodifiable" in refused[0].detail


def test_not_emulated_instructions_get_gp(tmp_path):
    s = run_gp(tmp_path, r"""
    TRY hlt
    TRY invd
    TRY lmsw %ax
    TRY lgdt gdt_desc
    TRY invlpg (0x1000)
    POWEROFF
.data
gdt_desc: .word 0
    .long 0
""")
    assert u32(s, "gp_count") == 5
    details = [r.detail for r in s.trace if r.kind is TraceKind.trap and r.name == "#GP"]
    assert "hlt" in details[0] and "emulates no 'hlt'" in details[0]
    assert "invd" in details[1] and "lmsw" in details[2]


def test_msrs(tmp_path):
    s = run_gp(tmp_path, r"""
    movl $0x1b, %ecx
    rdmsr
    movl %eax, apic
    movl $0xc0000080, %ecx
    rdmsr
    movl %eax, efer
    wrmsr                              /* same value: accepted */
    movl $0x277, %ecx
    rdmsr
    movl %eax, pat_lo
    movl %edx, pat_hi
    movl $0x12345678, %ecx             /* unknown */
    TRY rdmsr
    movl $0xc0000080, %ecx
    movl $0x901, %eax
    xorl %edx, %edx
    TRY wrmsr                          /* EFER change: #GP */
    POWEROFF
.data
apic: .long 0
efer: .long 0
pat_lo: .long 0
pat_hi: .long 0
""")
    assert u32(s, "apic") == 0xFEE00900
    assert u32(s, "efer") == 0x800
    assert (u32(s, "pat_hi") << 32 | u32(s, "pat_lo")) == 0x0000050100070406
    assert u32(s, "gp_count") == 2
    rd = [r for r in emulations(s) if r.name == "rdmsr"][0]
    assert rd.args["msr"] == 0x1B and rd.args["value"] == 0xFEE00900


def test_unknown_rdmsr_without_gp_handler_reads_zero(tmp_path):
    s = session(tmp_path, r"""
_start:
    movl $0x3a, %ecx                  /* FEATURE_CONTROL: exists, not emulated */
    movl $0x55, %eax
    rdmsr
    movl %eax, val
    POWEROFF
.data
val: .long 0xff
""", name="fakemsr")
    assert s.run(max_insns=1000).reason is StopReason.shutdown
    assert u32(s, "val") == 0


def test_port_io_under_iopl_and_bitmap(tmp_path):
    s = run_gp(tmp_path, r"""
    TRY inb $0x80, %al                /* IOPL 0: #GP */
    TRY cli
    movl $6, %ebx                     /* PHYSDEVOP_set_iopl */
    movl $iopl, %ecx
    HYPERCALL(HC_physdev_op)
    movl $0xffffffff, %eax
    inb $0x80, %al                    /* reads all ones, upper bits kept */
    movl %eax, in80
    movb $0xb6, %al
    outb %al, $0x43
    movb $0x34, %al
    outb %al, $0x42
    inb $0x42, %al
    movl %eax, pit
    movw $0x70, %dx
    movb $0x0a, %al
    outb %al, %dx
    inb %dx, %al
    movl %eax, cmos
    cli
    sti
    movl $6, %ebx                     /* back to IOPL 0, bitmap allows port 0x61 only */
    movl $iopl0, %ecx
    HYPERCALL(HC_physdev_op)
    movl $7, %ebx
    movl $bitmap_arg, %ecx
    HYPERCALL(HC_physdev_op)
    inb $0x61, %al
    TRY inb $0x62, %al
    POWEROFF
.data
iopl: .long 1
iopl0: .long 0
bitmap_arg: .long bitmap, 0x100
bitmap: .fill 12, 1, 0xff
    .byte 0xfd                         /* port 0x61 allowed (bit clear) */
    .fill 19, 1, 0xff
in80: .long 0
pit: .long 0
cmos: .long 0
""")
    assert u32(s, "gp_count") == 3
    assert u32(s, "in80") == 0xFFFFFFFF
    assert u32(s, "pit") & 0xFF == 0x34
    assert u32(s, "cmos") & 0xFF == 0x0A
    io = [r for r in emulations(s) if r.name in ("in", "out")]
    assert io[0].args["port"] == 0x80 and io[0].args["value"] == 0xFF


def test_user_mode_privileged_and_tsd(tmp_path):
    s = session(tmp_path, GP_GUEST + r"""
    movl $KDS, %ebx
    movl $kstack_top, %ecx
    HYPERCALL(HC_stack_switch)
    movl %cr4, %eax
    orl $4, %eax                       /* the guest's own CR4.TSD */
    movl %eax, %cr4
    pushl $UDS
    pushl $ustack_top
    pushl $0x202
    pushl $UCS
    pushl $user
    jmp hypercall_page + HC_iret * 32
.balign 4096
user:
    movl $1f, resume
    movl %cr0, %eax                    /* ring 3: #GP */
1:  movl $2f, resume
    rdtsc                              /* TSD set: #GP in user mode */
2:  movl $3, %ebx                      /* ring 3 cannot make hypercalls: #GP(0x412) */
    movl $3f, resume
    int $0x82
3:  jmp 3b
.data
.balign 4096
ustack: .fill 1024, 4, 0
ustack_top:
kstack: .fill 1024, 4, 0
kstack_top:
""", name="user")
    user_pages(s, s.symbol("user"))
    user_pages(s, s.symbol("ustack"))
    user_pages(s, s.symbol("resume"))
    stop = s.run(max_insns=100_000)
    assert u32(s, "gp_count") == 3
    assert u32(s, "gp_ec") == 0x412
    assert stop.reason is StopReason.limit


def test_cpuid_policy_native_and_forced(tmp_path):
    s = run_gp(tmp_path, r"""
    movl $0x40000000, %eax
    cpuid
    movl %eax, hv_max
    movl %ebx, sig0
    movl %ecx, sig1
    movl %edx, sig2
    movl $1, %eax
    .byte 0x0f, 0x0b, 0x78, 0x65, 0x6e   /* ud2; "xen" */
    cpuid
    movl %ecx, l1_ecx
    movl %edx, l1_edx
    movl $0x40000001, %eax
    cpuid
    movl %eax, xen_version
    TRY .byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x90   /* prefix before nop: #UD */
    POWEROFF
.data
hv_max: .long 0
sig0: .long 0
sig1: .long 0
sig2: .long 0
l1_ecx: .long 0
l1_edx: .long 0
xen_version: .long 0
""", name="cpuid")
    assert u32(s, "hv_max") == 0x40000005
    sig = b"".join(u32(s, n).to_bytes(4, "little") for n in ("sig0", "sig1", "sig2"))
    assert sig == b"XenVMMXenVMM"
    assert u32(s, "l1_ecx") >> 31 == 1                   # hypervisor present
    edx = u32(s, "l1_edx")
    assert not edx & (1 << 9) and not edx & (1 << 22)    # no APIC, no ACPI
    assert not edx & (1 << 12) and not edx & (1 << 13)   # no MTRR, no PGE
    assert edx & 1 and edx & (1 << 4)                    # FPU, TSC
    assert u32(s, "xen_version") == 0x00040011
    assert u32(s, "ud_count") == 1
    how = [r.detail for r in emulations(s) if r.name == "cpuid"]
    assert how[0].startswith("cpuid") and how[1].startswith("forced emulation")


@pytest.mark.parametrize("code,text", [
    ("0f20d8", "mov eax, cr3"), ("0f22c0", "mov cr0, eax"), ("0f21f8", "mov eax, dr7"),
    ("0f23c0", "mov dr0, eax"), ("66ed", "in ax, dx"), ("e460", "in al, 0x60"),
    ("ee", "out dx, al"), ("f36d", "rep insd dword ptr es:[edi], dx"), ("0f32", "rdmsr"),
    ("0f30", "wrmsr"), ("0f31", "rdtsc"), ("0f01f9", "rdtscp"), ("0f06", "clts"),
    ("0f09", "wbinvd"), ("fa", "cli"), ("fb", "sti"), ("f4", "hlt"), ("0f08", "invd"),
    ("0f01f0", "lmsw ax"), ("0f01d1", "xsetbv"),
])
def test_decoder(code, text):
    d = InstructionDecoder().decode(bytes.fromhex(code) + b"\x90" * 8)
    assert d is not None and d.text == text and d.length == len(code) // 2
