"""The gdb target description (stub/*.xml) and the register table derived from it.

The XML files are the single declaration of the registers: `target.xml` includes
one file per feature, and each `<reg>` there gives name, bitsize and (implicitly,
by order) the gdb register number used by g/G/p/P. Format source: gdb manual,
"Target Descriptions" > "Target Description Format" and "i386 Features".
64-bit guests get `amd64-target.xml` as their `target.xml` (x86-64 core, 16 xmm,
fs_base/gs_base, pvdbg's 64-bit Xen feature).
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from pvdbg.stub.rsp import RspProtocolError, int_to_le_hex, le_hex_to_int

TARGET_ANNEX = "target.xml"
TARGET_FILES = {32: "target.xml", 64: "amd64-target.xml"}
"""The packaged file served as gdb's `target.xml`, by guest width in bits."""
_XINCLUDE = "{http://www.w3.org/2001/XInclude}include"


class TargetDescriptionError(Exception):
    """A stub/*.xml file is inconsistent (a pvdbg packaging bug)."""


@dataclass(frozen=True)
class RegisterSpec:
    name: str
    bitsize: int
    regnum: int          # gdb's remote register number (p/P, position in g)
    feature: str

    @property
    def nbytes(self) -> int:
        return self.bitsize // 8

    def to_hex(self, value: int) -> bytes:
        """Little-endian hex, as in g/p replies."""
        return int_to_le_hex(value, self.nbytes)

    def from_hex(self, text: bytes) -> int:
        """Parse this register's little-endian hex; raises RspProtocolError."""
        if len(text) != 2 * self.nbytes:
            raise RspProtocolError(
                f"register {self.name} needs {2 * self.nbytes} hex digits, got {len(text)}")
        return le_hex_to_int(text)

    @property
    def unavailable_hex(self) -> bytes:
        """`xx` per byte: gdb's marker for a register without a value."""
        return b"xx" * self.nbytes


class RegisterTable(Sequence[RegisterSpec]):
    """Registers in gdb number order (which is also g-packet order)."""

    def __init__(self, registers: Sequence[RegisterSpec]) -> None:
        ordered = sorted(registers, key=lambda reg: reg.regnum)
        for expected, reg in enumerate(ordered):
            if reg.regnum != expected:
                raise TargetDescriptionError(f"register numbers not contiguous at {reg.name}")
            if reg.bitsize <= 0 or reg.bitsize % 8:
                raise TargetDescriptionError(f"register {reg.name} bitsize {reg.bitsize}")
        by_name = {reg.name: reg for reg in ordered}
        if len(by_name) != len(ordered):
            raise TargetDescriptionError("duplicate register names")
        self._ordered = tuple(ordered)
        self.by_name: Mapping[str, RegisterSpec] = MappingProxyType(by_name)

    def __getitem__(self, index):  # type: ignore[override]
        return self._ordered[index]

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[RegisterSpec]:
        return iter(self._ordered)

    @property
    def g_packet_hex_length(self) -> int:
        return sum(2 * reg.nbytes for reg in self._ordered)


@dataclass(frozen=True)
class TargetDescription:
    annexes: Mapping[str, bytes]     # qXfer:features:read annex name -> XML bytes
    registers: RegisterTable

    def read(self, annex: str, offset: int, length: int) -> tuple[bytes, bool]:
        """(chunk, is_last) of one annex; raises KeyError for an unknown annex."""
        document = self.annexes[annex]
        chunk = document[offset:offset + length]
        return chunk, offset + len(chunk) >= len(document)


def parse_target_description(annexes: Mapping[str, bytes]) -> TargetDescription:
    """Build the register table from `target.xml` and the features it includes."""
    try:
        root = ET.fromstring(annexes[TARGET_ANNEX])
    except (KeyError, ET.ParseError) as error:
        raise TargetDescriptionError(f"{TARGET_ANNEX}: {error}") from error
    features: list[ET.Element] = []
    for child in root:
        if child.tag == _XINCLUDE:
            href = child.get("href", "")
            try:
                features.append(ET.fromstring(annexes[href]))
            except (KeyError, ET.ParseError) as error:
                raise TargetDescriptionError(f"included {href!r}: {error}") from error
        elif child.tag == "feature":
            features.append(child)
    registers: list[RegisterSpec] = []
    next_regnum = 0
    for feature in features:
        feature_name = feature.get("name", "")
        for reg in feature.iter("reg"):
            try:
                regnum = int(reg.get("regnum", next_regnum))
                bitsize = int(reg.get("bitsize", "0"))
            except ValueError as error:
                raise TargetDescriptionError(f"{feature_name}: {error}") from error
            registers.append(RegisterSpec(reg.get("name", ""), bitsize, regnum, feature_name))
            next_regnum = regnum + 1
    return TargetDescription(MappingProxyType(dict(annexes)), RegisterTable(registers))


def load_target_description(guest_bits: int = 32) -> TargetDescription:
    """The packaged description for a `guest_bits` (32 or 64) guest: i386 for 32-bit
    PAE guests, x86-64 for 64-bit ones, plus every stub/*.xml as an annex (gdb fetches
    only those the target.xml it gets includes). One object per width."""
    return _load_target_description(guest_bits)


@functools.cache
def _load_target_description(guest_bits: int) -> TargetDescription:
    if guest_bits not in TARGET_FILES:
        raise TargetDescriptionError(f"no target description for {guest_bits}-bit guests")
    package = resources.files("pvdbg.stub")
    annexes = {entry.name: entry.read_bytes()
               for entry in package.iterdir() if entry.name.endswith(".xml")}
    annexes[TARGET_ANNEX] = annexes[TARGET_FILES[guest_bits]]
    return parse_target_description(annexes)
