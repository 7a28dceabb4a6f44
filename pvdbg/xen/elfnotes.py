"""Xen ELF notes and the legacy ``__xen_guest`` string of a PV kernel image.

ABI: xen/include/public/elfnote.h (note numbers), xen/include/public/features.h
(XENFEAT names). Behaviour follows Xen's libelf, xen/common/libelf/libelf-dominfo.c:
elf_xen_parse (where notes are looked for), elf_xen_parse_note (what each note
means), elf_xen_parse_guest_info (the legacy string), elf_xen_parse_features,
elf_xen_note_check (which images Xen refuses) and the defaults of
elf_xen_addr_calc_check. Malformed input never raises here: it becomes a warning,
or an entry in ``XenNotes.errors`` when libelf would refuse the image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

__all__ = [
    "XenElfNote",
    "PaeMode",
    "XENFEAT_BY_NAME",
    "XenNotes",
    "ElfProgramHeader",
    "ElfSectionHeader",
    "BadElfTable",
    "PT_LOAD",
    "PT_NOTE",
    "SHT_NOTE",
    "SHT_NOBITS",
    "parse_xen_notes",
    "elf_program_headers",
    "elf_section_headers",
]


class XenElfNote(IntEnum):
    """XEN_ELFNOTE_* note types. ABI: xen/include/public/elfnote.h."""

    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18
    PHYS32_RELOC = 19  # Xen 4.19+, PVH only; not read by Xen 4.17's libelf
    CRASH_INFO = 0x1000001
    CRASH_REGS = 0x1000002
    DUMPCORE_NONE = 0x2000000
    DUMPCORE_HEADER = 0x2000001
    DUMPCORE_XEN_VERSION = 0x2000002
    DUMPCORE_FORMAT_VERSION = 0x2000003


class PaeMode(IntEnum):
    """libelf's parms->pae (XEN_PAE_*), set from PAE_MODE or the legacy PAE key."""

    NO = 0
    YES = 1
    EXTCR3 = 2  # PAE with extended-cr3: the L3 may live above 4 GiB
    BIMODAL = 3


# ELF constants used here (System V gABI).
PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7
SHT_NOBITS = 8
_SHN_XINDEX = 0xFFFF

# Note types whose desc is a NUL-terminated string (elf_xen_parse_note's table,
# plus INFO, which libelf ignores but which is a string by elfnote.h).
_STRING_NOTES = frozenset({
    XenElfNote.INFO, XenElfNote.XEN_VERSION, XenElfNote.GUEST_OS,
    XenElfNote.GUEST_VERSION, XenElfNote.LOADER, XenElfNote.PAE_MODE,
    XenElfNote.FEATURES, XenElfNote.BSD_SYMTAB,
})
# Note types whose desc is one number of 1, 2, 4 or 8 bytes (elf_note_numeric).
_NUMERIC_NOTES = frozenset({
    XenElfNote.ENTRY, XenElfNote.HYPERCALL_PAGE, XenElfNote.VIRT_BASE,
    XenElfNote.PADDR_OFFSET, XenElfNote.HV_START_LOW, XenElfNote.SUSPEND_CANCEL,
    XenElfNote.INIT_P2M, XenElfNote.MOD_START_PFN, XenElfNote.PHYS32_ENTRY,
})

# Feature names libelf understands in FEATURES strings, by XENFEAT bit
# (elf_xen_feature_names in libelf-dominfo.c; bit numbers from features.h).
XENFEAT_BY_NAME: dict[str, int] = {
    "writable_page_tables": 0,
    "writable_descriptor_tables": 1,
    "auto_translated_physmap": 2,
    "supervisor_mode_kernel": 3,
    "pae_pgdir_above_4gb": 4,
    "hvm_callback_vector": 8,
    "dom0": 11,
}

# Legacy __xen_guest keys and the note each stands for (elf_xen_parse_guest_info).
_LEGACY_KEYS: dict[str, XenElfNote] = {
    "VIRT_ENTRY": XenElfNote.ENTRY,
    "HYPERCALL_PAGE": XenElfNote.HYPERCALL_PAGE,
    "VIRT_BASE": XenElfNote.VIRT_BASE,
    "ELF_PADDR_OFFSET": XenElfNote.PADDR_OFFSET,
    "XEN_VER": XenElfNote.XEN_VERSION,
    "GUEST_OS": XenElfNote.GUEST_OS,
    "GUEST_VER": XenElfNote.GUEST_VERSION,
    "LOADER": XenElfNote.LOADER,
    "PAE": XenElfNote.PAE_MODE,
    "FEATURES": XenElfNote.FEATURES,
    "BSD_SYMTAB": XenElfNote.BSD_SYMTAB,
}
_LEGACY_NUMERIC_KEYS = frozenset({"VIRT_ENTRY", "HYPERCALL_PAGE", "VIRT_BASE", "ELF_PADDR_OFFSET"})

_NOTE_HEADER = 12          # Elf32_Nhdr and Elf64_Nhdr: namesz, descsz, type (u32 each)
_MAX_TOTAL_NOTES = 65536   # libelf ELF_MAX_TOTAL_NOTE_COUNT
_LEGACY_NAME_MAX = 31      # libelf: char name[32], NUL included
_LEGACY_VALUE_MAX = 127    # libelf: char value[128], NUL included
_FEATURE_NAME_MAX = 63     # libelf: char feature[64], NUL included
_U64 = (1 << 64) - 1
_PAGE_SIZE = 4096

NoteValue = Union[int, str, bytes, tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class XenNotes:
    """What a PV kernel tells its domain builder, with libelf's defaults applied.

    Addresses are guest virtual addresses except `paddr_offset` (an offset) and
    `phys32_entry` (guest physical, PVH only). `notes` lists what was found, in
    order, as (type, type_name, value); for the legacy form `type` is the
    XenElfNote the key stands for, or None for keys libelf ignores. `errors` are
    reasons Xen would refuse to build the image; empty means bootable as far as
    the notes go.
    """

    source: str | None  # "notes" | "__xen_guest" | None
    entry: int
    hypercall_page: int | None
    virt_base: int
    paddr_offset: int
    xen_version: str
    guest_os: str
    guest_version: str
    loader: str
    pae_mode: str          # raw PAE_MODE (or legacy PAE) string, "" when absent
    pae: PaeMode
    features: tuple[str, ...]           # every name in FEATURES, without '!'
    required_features: tuple[str, ...]  # the names that carried a '!'
    supported_mask: int    # libelf f_supported[0]: FEATURES names | SUPPORTED_FEATURES
    required_mask: int     # libelf f_required[0]
    bsd_symtab: bool
    hv_start_low: int | None
    l1_mfn_valid: tuple[tuple[int, int], ...]  # (mask, value) pairs
    suspend_cancel: bool
    init_p2m: int | None
    mod_start_pfn: bool
    supported_features: int  # the SUPPORTED_FEATURES note alone (XENFEAT bitmap)
    phys32_entry: int | None
    notes: tuple[tuple[int | None, str, NoteValue], ...]
    warnings: tuple[str, ...]
    errors: tuple[str, ...]
    # Owners of the other notes in the areas read ("GNU", GNU Mach's "name", ...), each
    # once: libelf skips every note whose owner is not "Xen".
    other_owners: tuple[str, ...] = ()

    @property
    def bootable(self) -> bool:
        """True when libelf's note checks pass (the image may still fail later)."""
        return not self.errors


class BadElfTable(ValueError):
    """An ELF program or section header table that does not fit the file."""


@dataclass(frozen=True)
class ElfProgramHeader:
    """One Elf32_Phdr/Elf64_Phdr; offsets and sizes in bytes."""

    index: int
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


@dataclass(frozen=True)
class ElfSectionHeader:
    """One Elf32_Shdr/Elf64_Shdr; `name` is "" when the name can't be read."""

    index: int
    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int


def _byte_order(elffile: ELFFile) -> str:
    return "<" if elffile.little_endian else ">"


def elf_program_headers(elffile: ELFFile, data: bytes) -> tuple[ElfProgramHeader, ...]:
    """All program headers of `data` (the bytes `elffile` was opened on).

    Raises BadElfTable when the table does not fit in the file (libelf elf_init).
    """
    hdr = elffile.header
    count, offset, stride = hdr["e_phnum"], hdr["e_phoff"], hdr["e_phentsize"]
    if count == 0:
        return ()
    if elffile.elfclass == 32:
        layout = struct.Struct(_byte_order(elffile) + "8I")
    else:
        layout = struct.Struct(_byte_order(elffile) + "2I6Q")
    if stride < layout.size:
        raise BadElfTable(f"program header size {stride} is smaller than {layout.size}")
    if offset + stride * count > len(data):
        raise BadElfTable("program headers lie outside the file")
    headers = []
    for index in range(count):
        fields = layout.unpack_from(data, offset + index * stride)
        if elffile.elfclass == 32:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = fields
        else:
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = fields
        headers.append(ElfProgramHeader(index, p_type, p_flags, p_offset, p_vaddr,
                                        p_paddr, p_filesz, p_memsz, p_align))
    return tuple(headers)


def elf_section_headers(elffile: ELFFile, data: bytes) -> tuple[ElfSectionHeader, ...]:
    """All section headers of `data`, with names from the section name table.

    Uses e_shnum as is (no extended numbering, like libelf). Raises BadElfTable
    when the table does not fit in the file (libelf elf_init).
    """
    hdr = elffile.header
    count, offset, stride = hdr["e_shnum"], hdr["e_shoff"], hdr["e_shentsize"]
    if count == 0:
        return ()
    if elffile.elfclass == 32:
        layout = struct.Struct(_byte_order(elffile) + "10I")
    else:
        layout = struct.Struct(_byte_order(elffile) + "2I4Q2I2Q")
    if stride < layout.size:
        raise BadElfTable(f"section header size {stride} is smaller than {layout.size}")
    if offset + stride * count > len(data):
        raise BadElfTable("section headers lie outside the file")
    raw = [layout.unpack_from(data, offset + index * stride) for index in range(count)]
    # (name, type, flags, addr, offset, size, link, ...) in both classes.
    names_start = names_end = 0
    strndx = hdr["e_shstrndx"]
    if strndx != _SHN_XINDEX and strndx < count:
        names_start = raw[strndx][4]
        names_end = min(names_start + raw[strndx][5], len(data))
    headers = []
    for index, fields in enumerate(raw):
        name = ""
        if names_start < names_end and names_start + fields[0] < names_end:
            name = _cstring(data, names_start + fields[0], names_end)[0]
        headers.append(ElfSectionHeader(index, name, fields[1], fields[2], fields[3],
                                        fields[4], fields[5], fields[6]))
    return tuple(headers)


def _cstring(data: bytes, start: int, end: int) -> tuple[str, bool]:
    """The string at data[start:end] up to its NUL, and whether a NUL was found."""
    chunk = data[start:end]
    nul = chunk.find(b"\0")
    if nul >= 0:
        chunk = chunk[:nul]
    return chunk.decode("ascii", "backslashreplace"), nul >= 0


def _strtoull(text: str) -> int:
    """C strtoull(text, NULL, 0): base from the prefix, stop at the first bad digit."""
    s = text.lstrip(" \t\n\v\f\r")
    negative = s[:1] == "-"
    if s[:1] in ("+", "-"):
        s = s[1:]
    if s[:2].lower() == "0x" and s[2:3] and s[2:3] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    else:
        base = 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    end = 0
    while end < len(s) and s[end].lower() in digits:
        end += 1
    value = min(int(s[:end], base), _U64) if end else 0
    return (-value) & _U64 if negative else value


def _known_note(note_type: int) -> XenElfNote | None:
    return XenElfNote(note_type) if note_type in XenElfNote._value2member_map_ else None


def _type_name(note_type: int) -> str:
    kind = _known_note(note_type)
    return kind.name if kind is not None else f"UNKNOWN_{note_type:#x}"


class _Collector:
    """Mutable state while reading notes; frozen into XenNotes at the end."""

    def __init__(self) -> None:
        self.values: dict[XenElfNote, object] = {}
        self.features: list[str] = []
        self.required: list[str] = []
        self.supported_mask = 0
        self.required_mask = 0
        self.supported_features = 0
        self.l1_mfn_valid: tuple[tuple[int, int], ...] = ()
        self.pae = PaeMode.NO
        self.bsd_symtab = False
        self.notes: list[tuple[int | None, str, NoteValue]] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.total_notes = 0
        self.other_owners: list[str] = []

    def add_features(self, text: str) -> None:
        """elf_xen_parse_features: '|'-separated names, '!' marks a required one."""
        for token in text.split("|"):
            name = token[:_FEATURE_NAME_MAX]
            required = name.startswith("!")
            if required:
                name = name[1:]
            if not name:
                continue
            if name not in self.features:
                self.features.append(name)
            if required and name not in self.required:
                self.required.append(name)
            bit = XENFEAT_BY_NAME.get(name)
            if bit is None:
                if required:
                    self.errors.append(f"FEATURES requires '{name}', a feature Xen does not know")
                else:
                    self.warnings.append(f"FEATURES names unknown feature '{name}' (ignored)")
                continue
            self.supported_mask |= 1 << bit
            if required:
                self.required_mask |= 1 << bit


def _read_numeric(desc: bytes, declared: int, order: str, what: str, warnings: list[str]) -> int:
    """elf_note_numeric: 1, 2, 4 or 8 bytes; any other size reads as 0."""
    if declared not in (1, 2, 4, 8):
        warnings.append(f"{what}: numeric desc of {declared} bytes (want 1, 2, 4 or 8); using 0")
        return 0
    return int.from_bytes(desc.ljust(declared, b"\0"), "little" if order == "<" else "big")


def _read_l1_mfn_valid(desc: bytes, order: str, what: str,
                       warnings: list[str]) -> tuple[tuple[int, int], ...]:
    """Pairs of maddr_t (8 bytes for PAE/64-bit, 4 for non-PAE) mask/value numbers."""
    unit = 8 if len(desc) % 16 == 0 else 4
    if not desc or len(desc) % (2 * unit):
        warnings.append(f"{what}: {len(desc)} desc bytes are not whole mask/value pairs")
        return ()
    count = len(desc) // unit
    numbers = struct.unpack(f"{order}{count}{'Q' if unit == 8 else 'I'}", desc)
    return tuple(zip(numbers[0::2], numbers[1::2]))


def _parse_one_note(col: _Collector, note_type: int, desc: bytes, declared: int,
                    order: str, where: str) -> None:
    """Record one Xen note (elf_xen_parse_note)."""
    name = _type_name(note_type)
    what = f"{where}: note {name}"
    value: NoteValue
    if note_type in _STRING_NOTES:
        value, terminated = _cstring(desc, 0, len(desc))
        if not terminated:
            col.warnings.append(f"{what}: string is not NUL-terminated")
    elif note_type in _NUMERIC_NOTES:
        value = _read_numeric(desc, declared, order, what, col.warnings)
    elif note_type == XenElfNote.SUPPORTED_FEATURES:
        # elf_note_numeric_array(note, 4, 0): the first 32-bit word, if whole words.
        if declared >= 4 and declared % 4 == 0:
            value = int.from_bytes(desc[:4].ljust(4, b"\0"), "little" if order == "<" else "big")
        else:
            col.warnings.append(f"{what}: desc of {declared} bytes is not 32-bit words; using 0")
            value = 0
    elif note_type == XenElfNote.L1_MFN_VALID:
        value = _read_l1_mfn_valid(desc, order, what, col.warnings)
    else:
        value = desc
    col.notes.append((note_type, name, value))

    kind = _known_note(note_type)
    if kind is None:
        return
    if kind == XenElfNote.PAE_MODE:
        assert isinstance(value, str)
        col.values[kind] = value
        if value == "yes":
            col.pae = PaeMode.EXTCR3
        if "bimodal" in value:
            col.pae = PaeMode.BIMODAL
    elif kind == XenElfNote.BSD_SYMTAB:
        col.bsd_symtab = value == "yes"
    elif kind == XenElfNote.FEATURES:
        assert isinstance(value, str)
        col.add_features(value)
    elif kind == XenElfNote.SUPPORTED_FEATURES:
        assert isinstance(value, int)
        col.supported_features |= value
        col.supported_mask |= value
    elif kind == XenElfNote.L1_MFN_VALID:
        assert isinstance(value, tuple)
        col.l1_mfn_valid = value
    else:
        col.values[kind] = value


def _scan_notes(col: _Collector, data: bytes, start: int, end: int, order: str,
                where: str) -> int:
    """Read the notes in data[start:end]; return how many have owner "Xen".

    Like libelf's elf_xen_parse_notes, a note may spill past `end` (it is read
    from the file); what spills past the end of the file is cut, with a warning.
    """
    if end > len(data):
        col.warnings.append(f"{where}: runs past the end of the file; reading what is there")
        end = len(data)
    xen_notes = 0
    position = start
    while position < end:
        if col.total_notes >= _MAX_TOTAL_NOTES:
            col.warnings.append(f"{where}: more than {_MAX_TOTAL_NOTES} notes; stopped reading")
            break
        col.total_notes += 1
        if position + _NOTE_HEADER > len(data):
            col.warnings.append(f"{where}: note header at file offset {position:#x} "
                                "is cut short by the end of the file")
            break
        namesz, descsz, note_type = struct.unpack_from(order + "3I", data, position)
        name_start = position + _NOTE_HEADER
        desc_start = name_start + ((namesz + 3) & ~3)
        following = desc_start + ((descsz + 3) & ~3)
        owner, _ = _cstring(data, name_start, min(desc_start, len(data)))
        if owner == "Xen":
            xen_notes += 1
            desc = data[desc_start:desc_start + descsz]
            if len(desc) < descsz:
                col.warnings.append(
                    f"{where}: note {_type_name(note_type)} declares {descsz} desc bytes "
                    f"but the file ends after {len(desc)}; using what is there")
            elif desc_start + descsz > end:
                col.warnings.append(f"{where}: note {_type_name(note_type)} runs past "
                                    "the end of its notes area")
            _parse_one_note(col, note_type, desc, descsz, order, where)
        elif owner not in col.other_owners:
            col.other_owners.append(owner)
        position = following
    return xen_notes


def _legacy_items(text: str) -> list[tuple[str, str]]:
    """Split the __xen_guest string into (NAME, VALUE) items as libelf does.

    elf_xen_parse_guest_info: items end at ',' or NUL, a name ends at '=', and
    names (values) longer than 31 (127) characters are cut, the rest starting a
    new item or being dropped exactly as libelf's fixed buffers do.
    """
    items = []
    position = 0
    while position < len(text):
        name_chars: list[str] = []
        value_chars: list[str] = []
        while len(name_chars) < _LEGACY_NAME_MAX and position < len(text):
            char = text[position]
            position += 1
            if char == ",":
                break
            if char == "=":
                while len(value_chars) < _LEGACY_VALUE_MAX and position < len(text):
                    char = text[position]
                    position += 1
                    if char == ",":
                        break
                    value_chars.append(char)
                break
            name_chars.append(char)
        items.append(("".join(name_chars), "".join(value_chars)))
    return items


def _parse_legacy(col: _Collector, text: str) -> None:
    """Record the items of a __xen_guest string (elf_xen_parse_guest_info)."""
    for key, raw_value in _legacy_items(text):
        kind = _LEGACY_KEYS.get(key)
        value: NoteValue = _strtoull(raw_value) if key in _LEGACY_NUMERIC_KEYS else raw_value
        col.notes.append((kind, key, value))
        if kind is None:
            continue
        if kind == XenElfNote.HYPERCALL_PAGE:
            assert isinstance(value, int)
            col.values[kind] = (value << 12) & _U64   # a PFN; VIRT_BASE is added later
        elif kind == XenElfNote.PAE_MODE:
            col.values[kind] = raw_value
            if raw_value == "yes[extended-cr3]":
                col.pae = PaeMode.EXTCR3
            elif raw_value.startswith("yes"):
                col.pae = PaeMode.YES
        elif kind == XenElfNote.BSD_SYMTAB:
            col.bsd_symtab = True      # the key's presence alone counts
        elif kind == XenElfNote.FEATURES:
            col.add_features(raw_value)
        else:
            col.values[kind] = value
    if XenElfNote.VIRT_BASE in col.values and XenElfNote.HYPERCALL_PAGE in col.values:
        base = col.values[XenElfNote.VIRT_BASE]
        page = col.values[XenElfNote.HYPERCALL_PAGE]
        assert isinstance(base, int) and isinstance(page, int)
        col.values[XenElfNote.HYPERCALL_PAGE] = (page + base) & _U64


def _check_notes(col: _Collector, source: str | None) -> None:
    """elf_xen_note_check, plus the PADDR_OFFSET rule of elf_xen_addr_calc_check."""
    if source is None:
        col.errors.append("no Xen ELF notes and no __xen_guest section: not a PV kernel")
        return
    loader = str(col.values.get(XenElfNote.LOADER, ""))
    guest_os = str(col.values.get(XenElfNote.GUEST_OS, ""))
    xen_version = str(col.values.get(XenElfNote.XEN_VERSION, ""))
    if not loader.startswith("generic") and not guest_os.startswith("linux"):
        col.errors.append(f"LOADER is '{loader}' and GUEST_OS is '{guest_os}': Xen loads only "
                          "images for the 'generic' loader or Linux")
    if not xen_version.startswith("xen-3.0"):
        col.errors.append(f"XEN_VERSION is '{xen_version}': Xen loads only images built "
                          "for 'xen-3.0'")
    if XenElfNote.PADDR_OFFSET in col.values and XenElfNote.VIRT_BASE not in col.values:
        col.errors.append("PADDR_OFFSET is set but VIRT_BASE is not")


def _optional_int(col: _Collector, kind: XenElfNote) -> int | None:
    value = col.values.get(kind)
    return value if isinstance(value, int) else None


def parse_xen_notes(elffile: ELFFile, data: bytes) -> XenNotes:
    """Read the Xen notes (or the legacy __xen_guest string) of a PV kernel.

    `elffile` is a pyelftools ELFFile opened on `data`. Never raises for
    malformed notes or header tables: problems become `warnings`, and reasons
    Xen would refuse the image become `errors`.
    ABI: xen/common/libelf/libelf-dominfo.c elf_xen_parse.
    """
    col = _Collector()
    order = _byte_order(elffile)
    try:
        program_headers = elf_program_headers(elffile, data)
    except BadElfTable as exc:
        col.warnings.append(f"{exc}; PT_NOTE segments not read")
        program_headers = ()
    try:
        section_headers = elf_section_headers(elffile, data)
    except BadElfTable as exc:
        col.warnings.append(f"{exc}; note and __xen_guest sections not read")
        section_headers = ()

    xen_notes = 0
    for phdr in program_headers:
        if phdr.p_type != PT_NOTE:
            continue
        if phdr.p_offset == 0:
            # Some binutils leave p_offset 0 on note segments; libelf skips them.
            col.warnings.append(f"PT_NOTE program header {phdr.index} has p_offset 0; skipped")
            continue
        xen_notes += _scan_notes(col, data, phdr.p_offset, phdr.p_offset + phdr.p_filesz,
                                 order, f"PT_NOTE program header {phdr.index}")
    if xen_notes == 0:
        for shdr in section_headers[1:]:
            if shdr.sh_type == SHT_NOTE:
                xen_notes += _scan_notes(col, data, shdr.sh_offset, shdr.sh_offset + shdr.sh_size,
                                         order, f"section {shdr.name or shdr.index}")

    source: str | None = "notes" if xen_notes else None
    if xen_notes == 0:
        guest_info = next((s for s in section_headers if s.name == "__xen_guest"), None)
        if guest_info is not None:
            source = "__xen_guest"
            if guest_info.sh_type == SHT_NOBITS:
                text, terminated = "", True
            else:
                end = guest_info.sh_offset + guest_info.sh_size
                if end > len(data):
                    col.warnings.append("__xen_guest section runs past the end of the file")
                text, terminated = _cstring(data, guest_info.sh_offset, min(end, len(data)))
            if not terminated:
                col.warnings.append("__xen_guest string is not NUL-terminated")
            _parse_legacy(col, text)

    _check_notes(col, source)

    # Defaults of elf_xen_addr_calc_check (PV).
    virt_base = _optional_int(col, XenElfNote.VIRT_BASE)
    paddr_offset = _optional_int(col, XenElfNote.PADDR_OFFSET)
    if virt_base is None:
        virt_base = 0
    if paddr_offset is None:
        paddr_offset = 0 if source == "notes" else virt_base
    entry = _optional_int(col, XenElfNote.ENTRY)
    if entry is None:
        entry = elffile.header["e_entry"]

    def string_value(kind: XenElfNote) -> str:
        return str(col.values.get(kind, ""))

    return XenNotes(
        source=source,
        entry=entry,
        hypercall_page=_optional_int(col, XenElfNote.HYPERCALL_PAGE),
        virt_base=virt_base,
        paddr_offset=paddr_offset,
        xen_version=string_value(XenElfNote.XEN_VERSION),
        guest_os=string_value(XenElfNote.GUEST_OS),
        guest_version=string_value(XenElfNote.GUEST_VERSION),
        loader=string_value(XenElfNote.LOADER),
        pae_mode=string_value(XenElfNote.PAE_MODE),
        pae=col.pae,
        features=tuple(col.features),
        required_features=tuple(col.required),
        supported_mask=col.supported_mask,
        required_mask=col.required_mask,
        bsd_symtab=col.bsd_symtab,
        hv_start_low=_optional_int(col, XenElfNote.HV_START_LOW),
        l1_mfn_valid=col.l1_mfn_valid,
        suspend_cancel=bool(col.values.get(XenElfNote.SUSPEND_CANCEL, 0)),
        init_p2m=_optional_int(col, XenElfNote.INIT_P2M),
        mod_start_pfn=bool(col.values.get(XenElfNote.MOD_START_PFN, 0)),
        supported_features=col.supported_features,
        phys32_entry=_optional_int(col, XenElfNote.PHYS32_ENTRY),
        notes=tuple(col.notes),
        warnings=tuple(col.warnings),
        errors=tuple(col.errors),
        other_owners=tuple(col.other_owners),
    )
