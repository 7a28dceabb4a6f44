"""Xen 4.17's PV CPUID policy for 32- and 64-bit guests (pvdbg/xen/cpuid.py) and the
XENVER_get_features submap (pvdbg/xen/xenfeatures.py): one case per table row, named by
the bit and its source, plus the hypervisor leaves and the 64-bit calling helpers run on
a scratch 64-bit Unicorn."""
from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_MODE_64, Uc
from unicorn import x86_const as X

from pvdbg.xen.constants import Vmasst, XenFeat
from pvdbg.xen.cpuid import (FORCED_CPUID, HV_BASE, PV_FEATURE_BITS, XEN_SIGNATURE,
                             BadCpuidAbi, PvCpuidPolicy, cpuid_result_registers,
                             forced_cpuid_at, native_leaves)
from pvdbg.xen.version import feature_submap
from pvdbg.xen.xenfeatures import (XENVER_FEATURES, BadFeatureAbi, When, domu_feature_submap,
                                   feature_names)

ALL_ONES = 0xFFFFFFFF
REG_INDEX = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}


def everything_cpu() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """A CPU claiming every feature bit, max basic leaf 0xd and extended 0x80000008."""
    native = {(leaf, sub): (ALL_ONES,) * 4 for leaf in range(0xE) for sub in range(4)}
    native[(0, 0)] = (0xD, 0x756E6547, 0x6C65746E, 0x49656E69)           # GenuineIntel
    for leaf in range(0x80000000, 0x80000009):
        native[(leaf, 0)] = (ALL_ONES,) * 4
    native[(0x80000000, 0)] = (0x80000008, 0, 0, 0)
    return native


POLICIES = {bits: PvCpuidPolicy(bits, everything_cpu()) for bits in (32, 64)}


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("feature", PV_FEATURE_BITS,
                         ids=[f"{f.name}:{f.pvdbg or f.source}" for f in PV_FEATURE_BITS])
def test_each_feature_bit_follows_its_source(feature, bits):
    leaf, sub, register = feature.word
    values = POLICIES[bits].leaf(leaf, sub)
    seen = bool(values[REG_INDEX[register]] >> feature.bit & 1)
    assert seen == (feature.pv64 if bits == 64 else feature.pv32), feature


@pytest.mark.parametrize("name", ["PSE", "PGE", "MTRR", "VME", "PSE36", "X2APIC", "SMEP", "SMAP",
                                  "PCID", "INVPCID", "PAGE1GB", "VMX", "SVM", "MONITOR", "APIC",
                                  "TSC_DEADLINE", "PKU", "RTM"])
def test_features_xen_keeps_from_pv_guests_are_hidden_for_both_widths(name):
    feature = next(f for f in PV_FEATURE_BITS if f.name == name)
    assert not feature.pv32 and not feature.pv64


def test_long_mode_features():
    """64-bit PV keeps LM and SYSCALL; 32-bit loses both on Intel (recalculate_cpuid_policy);
    NX and LAHF_LM stay for both."""
    for bits, want in ((64, {"LM", "SYSCALL", "NX", "LAHF_LM"}), (32, {"NX", "LAHF_LM"})):
        _, _, ecx, edx = POLICIES[bits].leaf(0x80000001)
        seen = {name for name, value, bit in (("LM", edx, 29), ("SYSCALL", edx, 11),
                                              ("NX", edx, 20), ("LAHF_LM", ecx, 0))
                if value >> bit & 1}
        assert seen == want, bits


def test_emulated_cpu_under_each_policy():
    """Unicorn's Haswell-like CPU: exact words a guest reads, 32-bit ones as the seed's
    golden trace has them."""
    p32, p64 = PvCpuidPolicy(32), PvCpuidPolicy(64)
    assert p32.leaf(1)[2:] == (0xC2D82203, 0x0789C9F5)
    assert p64.leaf(1) == p32.leaf(1)
    assert p32.leaf(0x80000001) == (0, 0, 0x21, 0x00100000)          # LAHF ABM; NX
    assert p64.leaf(0x80000001) == (0, 0, 0x21, 0x20100800)          # + SYSCALL, LM
    assert p32.leaf(0x80000008)[0] == 0x2028                         # 40-bit phys, 32 lin
    assert p64.leaf(0x80000008)[0] == 0x3028                         # 48-bit linear
    assert p64.leaf(7)[1] == 0x308                                   # BMI1 BMI2 ERMS only
    assert p64.leaf(0) == (0xD, 0x756E6547, 0x6C65746E, 0x49656E69)
    assert native_leaves()[(0x80000001, 0)][3] == 0x28100800         # RDTSCP hidden


@pytest.mark.parametrize("bits", [32, 64])
def test_leaf1_identity_fields(bits):
    eax, ebx, _, _ = PvCpuidPolicy(bits, everything_cpu()).leaf(1)
    assert eax == 0x0FFF0FFF and ebx == 0x00FFFFFF        # processor type, APIC ID cleared


@pytest.mark.parametrize("bits", [32, 64])
def test_osxsave_follows_the_vcpu_cr4(bits):
    policy = POLICIES[bits]
    assert not policy.leaf(1)[2] >> 27 & 1
    assert policy.leaf(1, cr4=1 << 18)[2] >> 27 & 1


@pytest.mark.parametrize("leaf,sub", [
    (3, 0), (5, 0), (6, 0), (0xB, 0), (0xD, 0), (0xD, 1), (7, 1), (0xE, 0), (0x14, 0),
    (0x80000005, 0), (0x80000009, 0), (0x8000001F, 0), (0x20000000, 0), (0xC0000000, 0),
    (HV_BASE + 4, 0), (HV_BASE + 6, 0), (HV_BASE + 0x100, 0), (HV_BASE + 0x1FF, 0),
])
def test_hidden_and_out_of_range_leaves_read_as_zero(leaf, sub):
    for policy in POLICIES.values():
        assert policy.leaf(leaf, sub) == (0, 0, 0, 0)


@pytest.mark.parametrize("bits", [32, 64])
def test_hypervisor_leaves(bits):
    policy = PvCpuidPolicy(bits)
    assert policy.leaf(HV_BASE) == (HV_BASE + 5,) + XEN_SIGNATURE
    assert b"".join(v.to_bytes(4, "little") for v in XEN_SIGNATURE) == b"XenVMMXenVMM"
    assert policy.leaf(HV_BASE + 1)[0] == 0x00040011
    assert policy.leaf(HV_BASE + 2) == (1, 0x40000000, 1, 0)     # 1 page, MSR, PRESERVE_AD
    assert policy.leaf(HV_BASE + 3, 0)[:2] == (1, 1)              # vtsc, always_emulate
    assert policy.leaf(HV_BASE + 5, 0, max_mfn=(1 << 18) - 1)[1] == 30
    assert policy.leaf(HV_BASE + 5, 1, max_mfn=(1 << 18) - 1) == (0, 0, 0, 0)


def test_cache_leaf_keeps_valid_subleaves_only():
    native = everything_cpu()
    native[(4, 0)] = (0x1C004121, 1, 2, 0xFF)     # data cache: reserved bits cleared
    native[(4, 1)] = (0, 0, 0, 0)                 # type 0: no more caches
    policy = PvCpuidPolicy(64, native)
    assert policy.leaf(4, 0) == (0x1C004121 & 0xFFFFC3FF, 1, 2, 7)
    assert policy.leaf(4, 1) == (0, 0, 0, 0)


def test_bad_abi_is_a_typed_error():
    with pytest.raises(BadCpuidAbi, match="16-bit"):
        PvCpuidPolicy(16)
    with pytest.raises(BadCpuidAbi):
        cpuid_result_registers((0, 0, 0, 0), 8)
    with pytest.raises(BadFeatureAbi):
        domu_feature_submap(16, 0)


def test_result_registers_and_forced_prefix():
    assert FORCED_CPUID == bytes.fromhex("0f0b78656e0fa2")
    assert forced_cpuid_at(FORCED_CPUID + b"\x90") and not forced_cpuid_at(FORCED_CPUID[:6])
    assert not forced_cpuid_at(bytes.fromhex("0f0b78656e90"))
    assert cpuid_result_registers((1, 2, 3, 4), 64) == {"rax": 1, "rbx": 2, "rcx": 3, "rdx": 4}
    policy = PvCpuidPolicy(64)
    wide = policy.registers_after({"rax": 0xFFFFFFFF_40000000, "rcx": 0})
    assert wide["rax"] == HV_BASE + 5 and set(wide) == {"rax", "rbx", "rcx", "rdx"}
    assert PvCpuidPolicy(32).registers_after({"eax": 0, "ecx": 0})["eax"] == 0xD


def test_both_ways_in_on_a_64bit_cpu():
    """What the 64-bit engine does with these helpers: native cpuid through an instruction
    hook, the forced-emulation #UD (here Unicorn's invalid-instruction hook, as this bare
    CPU has no IDT) emulated by skipping all 7 bytes."""
    policy = PvCpuidPolicy(64)
    code = (bytes.fromhex("48c7c001000080") + b"\x0f\xa2"          # mov rax, 0x80000001; cpuid
            + bytes.fromhex("4989d0")                                 # mov r8, rdx
            + bytes.fromhex("48c7c000000040") + FORCED_CPUID          # mov rax, 0x40000000
            + bytes.fromhex("4989d9") + b"\xf4")                      # mov r9, rbx; hlt
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x400000, 0x1000)
    uc.mem_write(0x400000, code)
    names = {"rax": X.UC_X86_REG_RAX, "rbx": X.UC_X86_REG_RBX, "rcx": X.UC_X86_REG_RCX,
             "rdx": X.UC_X86_REG_RDX}
    seen = []

    def write(values):
        for name, value in values.items():
            uc.reg_write(names[name], value)

    def on_cpuid(uc_, _data):
        seen.append("native")
        write(policy.registers_after({"rax": uc.reg_read(X.UC_X86_REG_RAX),
                                      "rcx": uc.reg_read(X.UC_X86_REG_RCX)}))
        return 1

    def on_invalid(uc_, _data):
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        if not forced_cpuid_at(bytes(uc.mem_read(rip, len(FORCED_CPUID)))):
            return False
        seen.append("forced")
        write(policy.registers_after({"rax": uc.reg_read(X.UC_X86_REG_RAX),
                                      "rcx": uc.reg_read(X.UC_X86_REG_RCX)}))
        uc.reg_write(X.UC_X86_REG_RIP, rip + len(FORCED_CPUID))
        return True

    uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
    uc.hook_add(UC_HOOK_INSN_INVALID, on_invalid)
    uc.emu_start(0x400000, 0x400000 + len(code) - 1)
    assert seen == ["native", "forced"]
    assert uc.reg_read(X.UC_X86_REG_R8) == 0x20100800
    assert uc.reg_read(X.UC_X86_REG_R9) == XEN_SIGNATURE[0]


# -- XENVER_get_features ---------------------------------------------------------------------

@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("feature", XENVER_FEATURES,
                         ids=[f"{f.bit.name}:{f.source}" for f in XENVER_FEATURES])
def test_each_xenver_feature_follows_its_rule(feature, bits):
    when = feature.pv64 if bits == 64 else feature.pv32
    for vm_assist, hardware_domain in ((0, False), (1 << Vmasst.pae_extended_cr3, False),
                                       (0, True)):
        submap = domu_feature_submap(bits, vm_assist, hardware_domain=hardware_domain)
        expected = (when is When.ALWAYS
                    or (when is When.PAE_EXTENDED_CR3 and vm_assist != 0)
                    or (when is When.HARDWARE_DOMAIN and hardware_domain))
        assert bool(submap >> feature.bit & 1) == expected


def test_xenver_submaps_linux_sees():
    # 64-bit Linux 6.1 never turns on pae_extended_cr3; 32-bit Linux does.
    linux64 = domu_feature_submap(64, 1 << Vmasst.writable_pagetables)
    assert linux64 == 0x000220E0
    assert feature_names(linux64) == ("mmu_pt_update_preserve_ad", "highmem_assist",
                                      "gnttab_map_avail_bits", "memory_op_vnode_supported",
                                      "direct_mapped")
    assert not linux64 >> XenFeat.auto_translated_physmap & 1     # PV keeps its own p2m
    linux32 = domu_feature_submap(32, 1 << Vmasst.pae_extended_cr3)
    assert linux32 == 0x000220F0                       # XEN-PV-ABI.md 3.13's typical value
    assert feature_submap(1 << Vmasst.pae_extended_cr3) == linux32
    assert feature_submap(0, 64) == linux64
    assert {f.bit for f in XENVER_FEATURES} == set(XenFeat)
