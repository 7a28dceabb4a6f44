"""Golden check: pvdbg's ABI layouts against Xen 4.17's real public headers.

Every structure declared with `abi_struct` in pvdbg.xen.abi and pvdbg.xen.abi64 whose
SOURCE names a public header ("xen/include/public/<header> struct <tag> (<abi>)") is
compiled with gcc: `-m32` for "(compat)"/"(x86_32)" layouts, `-m64` for "(x86_64)" ones,
both for layouts without a tag. sizeof, and each field's offset, size and signedness
must match. Fields named differently from the C member are mapped in MEMBER_NAMES.
libxen-dev is installed on demand (tests/xen_headers.py); if that is impossible the tests
fail with one line saying what to install.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import pytest

import xen_headers
from pvdbg.xen import abi, abi64
from xen_headers import Probe

MODULES = (abi, abi64)
PUBLIC = "xen/include/public/"

# Layouts Xen writes word by word rather than declaring in a header: unit-tested instead
# (tests/test_abi64.py).
NOT_IN_HEADERS = {"BounceFrame64", "BounceFrameErrorCode64", "FailsafeFrame64"}

# Declared as the whole shared page the structure sits in, not as its sizeof.
PAGE_SIZED = {"XenconsInterface": 4096}

_ARCH_FIELDS = ("max_pfn", "pfn_to_mfn_frame_list_list", "nmi_reason", "p2m_cr3",
                "p2m_vaddr", "p2m_generation")
_CONSOLE = {"console_mfn": "console.domU.mfn", "console_evtchn": "console.domU.evtchn"}

# Python field -> C member designator, where they differ.
MEMBER_NAMES: dict[str, dict[str, str]] = {
    "StartInfo32": _CONSOLE,
    "StartInfo64": _CONSOLE,
    "VcpuInfo32": {"cr2": "arch.cr2"},
    "VcpuInfo64": {"cr2": "arch.cr2"},
    "SharedInfo32": {name: f"arch.{name}" for name in _ARCH_FIELDS + ("wc_sec_hi",)},
    "SharedInfo64": {name: f"arch.{name}" for name in _ARCH_FIELDS},
    "XenconsInterface": {"in_ring": "in", "out_ring": "out"},
    "GnttabCopy64": {f"{side}_{name}": f"{side}.{member}" for side in ("source", "dest")
                     for name, member in (("ref", "u.gmfn"), ("domid", "domid"),
                                          ("offset", "offset"))},
}

_SOURCE = re.compile(r"^xen/include/public/(?P<header>\S+\.h) "
                     r"(?P<ctype>struct \w+|\w+_t)(?: \((?P<abi>compat|x86_32|x86_64)\))?$")
_INT_FORMATS = set("bBhHiIlLqQ")

_SIGNED = "_Generic(({e}), signed char: 1, short: 1, int: 1, long: 1, long long: 1, " \
          "char: ((char)-1 < 0), default: 0)"
_INTEGER = "_Generic(({e}), char: 1, signed char: 1, unsigned char: 1, short: 1, " \
           "unsigned short: 1, int: 1, unsigned int: 1, long: 1, unsigned long: 1, " \
           "long long: 1, unsigned long long: 1, default: 0)"


@dataclass(frozen=True)
class Layout:
    """One abi_struct class and the C type it must match."""

    cls: type
    header: str
    ctype: str
    bits: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.cls.__name__

    def member(self, field_name: str) -> str:
        return MEMBER_NAMES.get(self.name, {}).get(field_name, field_name)

    def probes(self) -> list[Probe]:
        probes = [Probe(f"{self.name}.SIZE", f"sizeof({self.ctype})")]
        for field_name, _, _ in self.cls._layout:
            lvalue = f"((({self.ctype} *)0)->{self.member(field_name)})"
            key = f"{self.name}.{field_name}"
            probes += [
                Probe(f"{key}.off", f"__builtin_offsetof({self.ctype}, {self.member(field_name)})"),
                Probe(f"{key}.size", f"sizeof({lvalue})"),
                Probe(f"{key}.signed", _SIGNED.format(e=lvalue)),
                Probe(f"{key}.integer", _INTEGER.format(e=lvalue)),
            ]
        return probes


def _declared_structs() -> list[type]:
    found = []
    for module in MODULES:
        for obj in vars(module).values():
            if (isinstance(obj, type) and hasattr(obj, "_layout")
                    and obj.__module__ == module.__name__):
                found.append(obj)
    return found


def _layouts() -> list[Layout]:
    layouts = []
    for cls in _declared_structs():
        if not cls.SOURCE.startswith(PUBLIC):
            continue
        match = _SOURCE.match(cls.SOURCE)
        assert match, f"{cls.__name__}: SOURCE {cls.SOURCE!r} doesn't name a header and type"
        header, tag = match["header"], match["abi"]
        if tag in ("compat", "x86_32") or "x86_32" in header:
            bits = (32,)
        elif tag == "x86_64" or "x86_64" in header:
            bits = (64,)
        else:
            bits = (32, 64)
        layouts.append(Layout(cls, header, match["ctype"], bits))
    return layouts


LAYOUTS = _layouts()
CASES = [(layout, bits) for layout in LAYOUTS for bits in layout.bits]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[int, dict[str, int]]:
    """Every probe's value, per gcc -m32/-m64, over the installed public headers."""
    try:
        xen_headers.ensure_xen_headers()
    except xen_headers.XenHeadersUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    workdir = tmp_path_factory.mktemp("abi_golden")
    values = {}
    for bits in (32, 64):
        probes = [probe for layout, b in CASES if b == bits for probe in layout.probes()]
        try:
            values[bits] = xen_headers.measure_layouts(probes, bits, workdir)
        except subprocess.CalledProcessError:
            failures = xen_headers.failing_probes(probes, bits, workdir)
            reasons = {probe.key.rsplit(".", 1)[0]: error.split(" error: ")[-1]
                       for probe, error in failures}
            pytest.fail(f"gcc -m{bits} can't compile: " + "; ".join(
                f"{key}: {error}" for key, error in reasons.items()), pytrace=False)
    return values


def test_every_declared_struct_is_checked():
    checked = {layout.name for layout in LAYOUTS}
    unchecked = {cls.__name__ for cls in _declared_structs()} - checked
    assert unchecked == NOT_IN_HEADERS
    assert {"StartInfo64", "SharedInfo64", "VcpuInfo64", "ArchVcpuInfo64", "MulticallEntry64",
            "MmuextOp64", "TrapInfo64", "CallbackRegister64", "VcpuGuestContext64",
            "CpuUserRegs64", "IretContext64", "VcpuTimeInfo", "StartInfo32"} <= checked


@pytest.mark.parametrize("layout,bits", CASES,
                         ids=[f"{layout.name}-m{bits}" for layout, bits in CASES])
def test_layout_matches_xen_headers(layout: Layout, bits: int, measured):
    values = measured[bits]
    where = f"{layout.name} vs {layout.ctype} (gcc -m{bits}, xen/{layout.header})"
    if layout.name in PAGE_SIZED:
        assert layout.cls.SIZE == PAGE_SIZED[layout.name], f"{where}: no longer page-sized"
        assert values[f"{layout.name}.SIZE"] <= layout.cls.SIZE, f"{where}: sizeof"
    else:
        assert layout.cls.SIZE == values[f"{layout.name}.SIZE"], f"{where}: sizeof"
    for field_name, offset, st in layout.cls._layout:
        key = f"{layout.name}.{field_name}"
        member = layout.member(field_name)
        assert offset == values[f"{key}.off"], f"{where}: offsetof({member})"
        assert st.size == values[f"{key}.size"], f"{where}: sizeof({member})"
        code = st.format[-1]
        if code in _INT_FORMATS and values[f"{key}.integer"]:
            assert code.islower() == bool(values[f"{key}.signed"]), \
                f"{where}: signedness of {member}"


@pytest.mark.parametrize("cls", _declared_structs(), ids=lambda cls: cls.__name__)
def test_fields_do_not_overlap(cls):
    spans = sorted((offset, offset + st.size, name) for name, offset, st in cls._layout)
    for (_, end, name), (start, _, next_name) in zip(spans, spans[1:]):
        assert end <= start, f"{cls.__name__}: {name} overlaps {next_name}"


def test_sizes_from_the_abi_digest():
    # XEN-PV-ABI.md section 7 ("Sizes [cc]") for the 64-bit ABI.
    assert {cls.__name__: cls.SIZE for cls in (
        abi64.StartInfo64, abi64.SharedInfo64, abi64.MulticallEntry64, abi64.MmuextOp64,
        abi64.TrapInfo64, abi64.CallbackRegister64, abi64.VcpuGuestContext64)} == {
        "StartInfo64": 1168, "SharedInfo64": 3136, "MulticallEntry64": 64,
        "MmuextOp64": 24, "TrapInfo64": 16, "CallbackRegister64": 16,
        "VcpuGuestContext64": 5168}
    assert abi64.StartInfo64.offset_of("pt_base") == 88
    assert abi64.StartInfo64.offset_of("mfn_list") == 104
    assert abi64.StartInfo64.offset_of("cmd_line") == 128
    assert abi64.SharedInfo64.offset_of("evtchn_mask") == 2560
    assert abi64.SharedInfo64.offset_of("wc_version") == 3072
    assert abi64.SharedInfo64.offset_of("wc_sec_hi") == 3084
    assert abi64.VcpuInfo64.offset_of("evtchn_pending_sel") == 8
    assert abi64.VcpuInfo64.offset_of("cr2") == 16
