"""Xen ELF note parsing (pvdbg.xen.elfnotes), against libelf-dominfo.c behaviour.

Also home of the ELF builders used by test_image.py and test_symbols.py: a byte-level
ELF writer for malformed cases and a gcc -m32 wrapper for real linked images.
"""

from __future__ import annotations

import io
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pvdbg.xen.elfnotes import (
    PaeMode,
    XenElfNote,
    XenNotes,
    elf_program_headers,
    elf_section_headers,
    parse_xen_notes,
)

N = XenElfNote
PT_LOAD, PT_NOTE = 1, 4
SHT_PROGBITS, SHT_NOTE = 1, 7


# --------------------------------------------------------------------------- builders

def pad4(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def note(owner: bytes, note_type: int, desc: bytes, *, namesz: int | None = None,
         descsz: int | None = None) -> bytes:
    """One ELF note; namesz/descsz override the declared sizes (to lie about them)."""
    name = owner + b"\0"
    return (struct.pack("<3I", len(name) if namesz is None else namesz,
                        len(desc) if descsz is None else descsz, note_type)
            + pad4(name) + pad4(desc))


def xen_str(note_type: int, text: str) -> bytes:
    return note(b"Xen", note_type, text.encode() + b"\0")


def xen_num(note_type: int, value: int, size: int = 4) -> bytes:
    return note(b"Xen", note_type, value.to_bytes(size, "little"))


@dataclass
class Seg:
    """A program header and its bytes; offset is chosen by build_elf unless given."""

    p_type: int
    data: bytes
    vaddr: int = 0
    paddr: int = 0
    memsz: int | None = None
    flags: int = 7
    offset: int | None = None
    filesz: int | None = None


@dataclass
class Sec:
    name: str
    sh_type: int
    data: bytes


def build_elf(segments: list[Seg], sections: list[Sec] = (), *, entry: int = 0xC0100000,
              elfclass: int = 32, machine: int | None = None) -> bytes:
    """A little-endian ELF executable with these segments and sections."""
    if machine is None:
        machine = 3 if elfclass == 32 else 62
    ehsize, phentsize, shentsize = (52, 32, 40) if elfclass == 32 else (64, 56, 64)
    phoff = ehsize
    out = bytearray(ehsize + phentsize * len(segments))
    placed = []
    for seg in segments:
        out += b"\0" * (-len(out) % 16)
        placed.append(len(out) if seg.offset is None else seg.offset)
        out += seg.data
    shstrtab = b"\0"
    section_rows = []
    for sec in list(sections):
        out += b"\0" * (-len(out) % 4)
        section_rows.append((len(shstrtab), sec.sh_type, len(out), len(sec.data)))
        shstrtab += sec.name.encode() + b"\0"
        out += sec.data
    shstrtab_name = len(shstrtab)
    shstrtab += b".shstrtab\0"
    section_rows.append((shstrtab_name, 3, len(out), len(shstrtab)))
    out += shstrtab
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    shnum = len(section_rows) + 1
    out += b"\0" * shentsize
    for name, sh_type, offset, size in section_rows:
        if elfclass == 32:
            out += struct.pack("<10I", name, sh_type, 0, 0, offset, size, 0, 0, 1, 0)
        else:
            out += struct.pack("<2I4Q2I2Q", name, sh_type, 0, 0, offset, size, 0, 0, 1, 0)
    for index, (seg, offset) in enumerate(zip(segments, placed)):
        filesz = len(seg.data) if seg.filesz is None else seg.filesz
        memsz = filesz if seg.memsz is None else seg.memsz
        if elfclass == 32:
            row = struct.pack("<8I", seg.p_type, offset, seg.vaddr, seg.paddr, filesz, memsz,
                              seg.flags, 4)
        else:
            row = struct.pack("<2I6Q", seg.p_type, seg.flags, offset, seg.vaddr, seg.paddr,
                              filesz, memsz, 4)
        out[phoff + index * phentsize:phoff + (index + 1) * phentsize] = row
    ident = b"\x7fELF" + bytes([1 if elfclass == 32 else 2, 1, 1]) + b"\0" * 9
    if elfclass == 32:
        header = ident + struct.pack("<2H5I6H", 2, machine, 1, entry, phoff, shoff, 0, ehsize,
                                     phentsize, len(segments), shentsize, shnum, shnum - 1)
    else:
        header = ident + struct.pack("<2HI3QI6H", 2, machine, 1, entry, phoff, shoff, 0, ehsize,
                                     phentsize, len(segments), shentsize, shnum, shnum - 1)
    out[:ehsize] = header
    return bytes(out)


LINUX_NOTES = [
    xen_str(N.GUEST_OS, "linux"),
    xen_str(N.GUEST_VERSION, "2.6"),
    xen_str(N.XEN_VERSION, "xen-3.0"),
    xen_num(N.VIRT_BASE, 0xC0000000),
    xen_num(N.PADDR_OFFSET, 0),
    xen_num(N.ENTRY, 0xC0100000),
    xen_num(N.HYPERCALL_PAGE, 0xC0101000),
    xen_str(N.FEATURES, "!writable_page_tables|pae_pgdir_above_4gb"),
    xen_num(N.SUPPORTED_FEATURES, (1 << 0) | (1 << 11)),
    xen_str(N.PAE_MODE, "yes"),
    xen_str(N.LOADER, "generic"),
    note(b"Xen", N.L1_MFN_VALID, struct.pack("<2Q", 1, 1)),
    xen_num(N.SUSPEND_CANCEL, 1),
    xen_num(N.MOD_START_PFN, 1),
    xen_num(N.HV_START_LOW, 0xF5800000),
]


def kernel_segment(size: int = 0x2000, memsz: int = 0x3000, paddr: int = 0x100000,
                   vaddr: int = 0xC0100000) -> Seg:
    return Seg(PT_LOAD, b"\x90" * size, vaddr=vaddr, paddr=paddr, memsz=memsz)


def linux_like(notes: list[bytes] = LINUX_NOTES, *, extra_segments: list[Seg] = (),
               sections: list[Sec] = (), entry: int = 0xC0100000) -> bytes:
    """A byte-built image shaped like a 32-bit Linux PV kernel (xen-head.S notes)."""
    return build_elf([kernel_segment(), Seg(PT_NOTE, b"".join(notes), flags=4),
                      *extra_segments], list(sections), entry=entry)


def without(*types: int) -> list[bytes]:
    """LINUX_NOTES minus the notes of these types."""
    return [n for n in LINUX_NOTES if struct.unpack_from("<I", n, 8)[0] not in types]


def notes_of(data: bytes) -> XenNotes:
    return parse_xen_notes(ELFFile(io.BytesIO(data)), data)


GCC_FLAGS = ["-ffreestanding", "-fno-pic", "-no-pie", "-fno-asynchronous-unwind-tables",
             "-fno-stack-protector", "-nostdlib", "-static", "-Wl,--build-id=none",
             "-Wl,--no-warn-rwx-segments"]


def gcc_build(out_dir: Path, name: str, source: str, *flags: str, bits: int = 32) -> Path:
    """Compile and link `source` with gcc into out_dir/name; fails the test on error."""
    src = out_dir / f"{name}.c"
    src.write_text(source)
    out = out_dir / name
    result = subprocess.run(["gcc", f"-m{bits}", *GCC_FLAGS, *flags, "-o", str(out), str(src)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def asm_note(note_type: int, directive: str, *, owner: str = "Xen",
             section: str = '.note.Xen, "a", @note') -> str:
    """Inline-asm text for one note, the way Linux's ELFNOTE macro lays it out."""
    return (f".pushsection {section}\n.balign 4\n"
            f".long 2f - 1f, 4f - 3f, {note_type}\n"
            f'1: .asciz "{owner}"\n2: .balign 4\n3: {directive}\n4: .balign 4\n.popsection\n')


def asm_block(*parts: str) -> str:
    body = "".join(parts).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'__asm__("{body}");\n'


# --------------------------------------------------------------------------- tests

def test_note_numbers_match_elfnote_h():
    assert [int(n) for n in XenElfNote][:20] == list(range(20))
    assert N.PHYS32_ENTRY == 18
    assert N.CRASH_INFO == 0x1000001 and N.CRASH_REGS == 0x1000002
    assert (N.DUMPCORE_NONE, N.DUMPCORE_HEADER, N.DUMPCORE_XEN_VERSION,
            N.DUMPCORE_FORMAT_VERSION) == (0x2000000, 0x2000001, 0x2000002, 0x2000003)


def test_linux_style_notes():
    notes = notes_of(linux_like())
    assert notes.source == "notes"
    assert notes.errors == () and notes.warnings == () and notes.bootable
    assert notes.guest_os == "linux" and notes.guest_version == "2.6"
    assert notes.xen_version == "xen-3.0" and notes.loader == "generic"
    assert notes.virt_base == 0xC0000000 and notes.paddr_offset == 0
    assert notes.entry == 0xC0100000 and notes.hypercall_page == 0xC0101000
    assert notes.features == ("writable_page_tables", "pae_pgdir_above_4gb")
    assert notes.required_features == ("writable_page_tables",)
    assert notes.required_mask == 1 << 0
    assert notes.supported_mask == (1 << 0) | (1 << 4) | (1 << 11)
    assert notes.supported_features == (1 << 0) | (1 << 11)
    assert notes.pae_mode == "yes" and notes.pae == PaeMode.EXTCR3
    assert notes.l1_mfn_valid == ((1, 1),)
    assert notes.suspend_cancel and notes.mod_start_pfn
    assert notes.hv_start_low == 0xF5800000
    assert notes.init_p2m is None and notes.phys32_entry is None and not notes.bsd_symtab
    assert [(t, name) for t, name, _ in notes.notes][:3] == [
        (6, "GUEST_OS"), (7, "GUEST_VERSION"), (5, "XEN_VERSION")]
    assert (N.VIRT_BASE, "VIRT_BASE", 0xC0000000) in notes.notes


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_numeric_desc_sizes(size):
    value = {1: 0x5A, 2: 0x1234, 4: 0xC0100000, 8: 0xC0100000}[size]
    notes = notes_of(linux_like([*LINUX_NOTES, xen_num(N.ENTRY, value, size)]))
    assert notes.entry == value
    assert notes.warnings == ()


def test_numeric_desc_of_odd_size_reads_as_zero_with_warning():
    notes = notes_of(linux_like([*LINUX_NOTES, note(b"Xen", N.HV_START_LOW, b"\1\2\3")]))
    assert notes.hv_start_low == 0
    assert any("3 bytes" in w for w in notes.warnings)


def test_later_note_wins():
    notes = notes_of(linux_like([*LINUX_NOTES, xen_num(N.ENTRY, 0xC0100010)]))
    assert notes.entry == 0xC0100010


def test_entry_defaults_to_e_entry_and_paddr_offset_to_zero():
    notes = notes_of(linux_like(without(N.ENTRY, N.PADDR_OFFSET), entry=0xC0100040))
    assert notes.entry == 0xC0100040
    assert notes.paddr_offset == 0


def test_virt_base_defaults_to_zero():
    notes = notes_of(linux_like(without(N.VIRT_BASE, N.PADDR_OFFSET)))
    assert notes.virt_base == 0 and notes.paddr_offset == 0 and notes.errors == ()


def test_paddr_offset_without_virt_base_is_an_error():
    notes = notes_of(linux_like(without(N.VIRT_BASE)))
    assert notes.errors == ("PADDR_OFFSET is set but VIRT_BASE is not",)


def test_xen_version_must_start_with_xen_3_0():
    notes = notes_of(linux_like([*LINUX_NOTES, xen_str(N.XEN_VERSION, "xen-4.0")]))
    assert not notes.bootable
    assert "XEN_VERSION is 'xen-4.0'" in notes.errors[0]


def test_loader_must_be_generic_unless_linux():
    as_linux = notes_of(linux_like([*LINUX_NOTES, xen_str(N.LOADER, "grub")]))
    assert as_linux.errors == ()
    other = notes_of(linux_like([*LINUX_NOTES, xen_str(N.LOADER, "grub"),
                                 xen_str(N.GUEST_OS, "Mini-OS")]))
    assert "LOADER is 'grub' and GUEST_OS is 'Mini-OS'" in other.errors[0]


def test_unknown_required_feature_is_an_error_unknown_optional_a_warning():
    notes = notes_of(linux_like([*LINUX_NOTES, xen_str(N.FEATURES, "frobnicate|!teleport")]))
    assert notes.errors == ("FEATURES requires 'teleport', a feature Xen does not know",)
    assert any("'frobnicate'" in w for w in notes.warnings)


@pytest.mark.parametrize("text, pae", [
    ("yes", PaeMode.EXTCR3), ("yes,bimodal", PaeMode.BIMODAL), ("bimodal", PaeMode.BIMODAL),
    ("no", PaeMode.NO),
    # libelf: in the note form only exactly "yes" means PAE (GNU Mach's note says this).
    ("yes[extended-cr3]", PaeMode.NO),
])
def test_pae_mode(text, pae):
    assert notes_of(linux_like([*without(N.PAE_MODE), xen_str(N.PAE_MODE, text)])).pae == pae


def test_pae_is_never_cleared_by_a_later_note():
    # libelf only ever sets parms->pae, so "yes" then "no" stays PAE.
    notes = notes_of(linux_like([*LINUX_NOTES, xen_str(N.PAE_MODE, "no")]))
    assert notes.pae == PaeMode.EXTCR3 and notes.pae_mode == "no"


def test_bsd_symtab_init_p2m_phys32_entry():
    notes = notes_of(linux_like([*LINUX_NOTES, xen_str(N.BSD_SYMTAB, "yes"),
                                 xen_num(N.INIT_P2M, 0xDEAD0000),
                                 xen_num(N.PHYS32_ENTRY, 0x100040)]))
    assert notes.bsd_symtab and notes.init_p2m == 0xDEAD0000 and notes.phys32_entry == 0x100040


def test_unknown_and_crash_notes_are_listed_not_interpreted():
    notes = notes_of(linux_like([*LINUX_NOTES, note(b"Xen", 0x77, b"abcd"),
                                 note(b"Xen", N.CRASH_INFO, b"\1\2\3\4")]))
    assert (0x77, "UNKNOWN_0x77", b"abcd") in notes.notes
    assert (N.CRASH_INFO, "CRASH_INFO", b"\1\2\3\4") in notes.notes
    assert notes.errors == ()


def test_string_without_nul_gives_warning():
    raw = struct.pack("<3I", 4, 4, N.GUEST_VERSION) + b"Xen\0" + b"3.14"
    notes = notes_of(linux_like([*LINUX_NOTES, raw]))
    assert notes.guest_version == "3.14"
    assert any("not NUL-terminated" in w for w in notes.warnings)


def test_other_owners_are_ignored():
    notes = notes_of(linux_like([note(b"GNU", 3, b"\xaa" * 20), *LINUX_NOTES,
                                 note(b"Xenophobe", N.ENTRY, b"\0\0\0\0")]))
    assert notes.entry == 0xC0100000
    assert notes.warnings == ()


def test_pt_note_with_offset_zero_is_skipped():
    data = build_elf([kernel_segment(), Seg(PT_NOTE, b"".join(LINUX_NOTES), flags=4, offset=0)],
                     [])
    notes = notes_of(data)
    assert notes.source is None
    assert any("p_offset 0" in w for w in notes.warnings)


def test_sections_used_only_when_segments_have_no_xen_notes():
    segment_notes = [*LINUX_NOTES, xen_num(N.ENTRY, 0xC0100010)]
    section_notes = [*LINUX_NOTES, xen_num(N.ENTRY, 0xC0100020)]
    both = linux_like(segment_notes, sections=[Sec(".note.Xen", SHT_NOTE, b"".join(section_notes))])
    assert notes_of(both).entry == 0xC0100010
    only_gnu_segment = build_elf(
        [kernel_segment(), Seg(PT_NOTE, note(b"GNU", 3, b"\1" * 20), flags=4)],
        [Sec(".note.Xen", SHT_NOTE, b"".join(section_notes))])
    notes = notes_of(only_gnu_segment)
    assert notes.source == "notes" and notes.entry == 0xC0100020


def test_xen_note_of_unknown_type_still_counts_as_notes():
    # libelf counts every "Xen" note, so a segment with only unknown ones blocks the fallbacks.
    data = build_elf([kernel_segment(), Seg(PT_NOTE, note(b"Xen", 0x55, b""), flags=4)],
                     [Sec("__xen_guest", SHT_PROGBITS, b"GUEST_OS=linux,XEN_VER=xen-3.0\0")])
    notes = notes_of(data)
    assert notes.source == "notes"
    assert notes.guest_os == ""
    assert not notes.bootable


def test_no_notes_and_no_legacy_section():
    notes = notes_of(build_elf([kernel_segment()], []))
    assert notes.source is None
    assert notes.errors == ("no Xen ELF notes and no __xen_guest section: not a PV kernel",)


GNU_MACH_GUEST = (b"GUEST_OS=GNU Mach,GUEST_VERSION=1.3,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,"
                  b"ELF_PADDR_OFFSET=0xC0000000,HYPERCALL_PAGE=0x2,PAE=yes[extended-cr3],"
                  b"LOADER=generic,FEATURES=!auto_translated_physmap|!writable_page_tables\0")


def test_legacy_xen_guest_gnu_mach():
    # GNU Mach's ELFNOTE macro writes the owner "name", so libelf falls back.
    misowned = b"".join(note(b"name", t, d) for t, d in [
        (N.GUEST_OS, b"GNU Mach\0"), (N.XEN_VERSION, b"xen-3.0\0"), (N.ENTRY, b"\0\0\0\0")])
    data = build_elf([kernel_segment(paddr=0xC0100000), Seg(PT_NOTE, misowned, flags=4)],
                     [Sec("__xen_guest", SHT_PROGBITS, GNU_MACH_GUEST)], entry=0xC0100000)
    notes = notes_of(data)
    assert notes.source == "__xen_guest"
    assert notes.errors == ()
    assert notes.guest_os == "GNU Mach" and notes.guest_version == ""   # GUEST_VERSION: not a key
    assert notes.xen_version == "xen-3.0" and notes.loader == "generic"
    assert notes.virt_base == 0xC0000000 and notes.paddr_offset == 0xC0000000
    assert notes.hypercall_page == 0xC0000000 + (2 << 12)
    assert notes.pae == PaeMode.EXTCR3 and notes.pae_mode == "yes[extended-cr3]"
    assert notes.required_features == ("auto_translated_physmap", "writable_page_tables")
    assert notes.entry == 0xC0100000
    assert (None, "GUEST_VERSION", "1.3") in notes.notes
    assert (N.HYPERCALL_PAGE, "HYPERCALL_PAGE", 2) in notes.notes


def legacy(text: bytes) -> XenNotes:
    return notes_of(build_elf([kernel_segment()], [Sec("__xen_guest", SHT_PROGBITS, text)]))


def test_legacy_paddr_offset_defaults_to_virt_base():
    notes = legacy(b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000\0")
    assert notes.paddr_offset == 0xC0000000


def test_legacy_pae_yes_and_bsd_symtab_presence():
    notes = legacy(b"LOADER=generic,XEN_VER=xen-3.0,PAE=yes,BSD_SYMTAB\0")
    assert notes.pae == PaeMode.YES and notes.bsd_symtab


def test_legacy_hypercall_page_without_virt_base_is_pfn_shifted_only():
    notes = legacy(b"LOADER=generic,XEN_VER=xen-3.0,HYPERCALL_PAGE=0x101\0")
    assert notes.hypercall_page == 0x101000 and notes.virt_base == 0


@pytest.mark.parametrize("text, value", [
    ("0x10", 0x10), ("16", 16), ("010", 8), ("  0x1fz", 0x1F), ("junk", 0), ("", 0),
    ("0x", 0), ("-1", (1 << 64) - 1), ("99999999999999999999999", (1 << 64) - 1),
])
def test_legacy_numbers_follow_strtoull(text, value):
    notes = legacy(f"LOADER=generic,XEN_VER=xen-3.0,VIRT_ENTRY={text}\0".encode())
    assert notes.entry == value


def test_legacy_overlong_names_and_values_are_cut_like_libelf():
    long_value = "x" * 200
    notes = legacy(f"LOADER=generic,XEN_VER=xen-3.0,GUEST_OS={long_value}\0".encode())
    assert notes.guest_os == "x" * 127
    # The rest of the value starts a new item named by its first 31 characters.
    assert (None, "x" * 31, "") in notes.notes
    long_name = "N" * 40
    notes = legacy(f"{long_name}=1,LOADER=generic,XEN_VER=xen-3.0\0".encode())
    assert (None, "N" * 31, "") in notes.notes
    assert notes.loader == "generic"


def test_legacy_string_without_nul():
    notes = legacy(b"LOADER=generic,XEN_VER=xen-3.0")
    assert notes.loader == "generic" and notes.xen_version == "xen-3.0"
    assert any("not NUL-terminated" in w for w in notes.warnings)


def notes_at_end_of_file(blob: bytes) -> bytes:
    """linux_like() with no notes of its own and a PT_NOTE over `blob`, the file's last bytes."""
    data = bytearray(build_elf([kernel_segment(), Seg(PT_NOTE, b"", flags=4)], []))
    phdr = 52 + 32   # second program header of an ELF32 image
    struct.pack_into("<I", data, phdr + 4, len(data))          # p_offset
    struct.pack_into("<I", data, phdr + 16, len(blob))         # p_filesz
    return bytes(data) + blob


def test_grub_style_note_running_past_end_of_file():
    # Debian's grub-i386-xen.bin: PAE_MODE declares 12 desc bytes, holds "yes", file ends.
    blob = b"".join(LINUX_NOTES[:-4]) + struct.pack("<3I", 4, 12, N.PAE_MODE) + b"Xen\0yes\0"
    notes = notes_of(notes_at_end_of_file(blob))
    assert notes.pae_mode == "yes" and notes.pae == PaeMode.EXTCR3
    assert notes.entry == 0xC0100000
    assert any("declares 12 desc bytes but the file ends after 4" in w for w in notes.warnings)


@pytest.mark.parametrize("blob", [
    struct.pack("<3I", 4, 4, N.ENTRY) + b"Xe",                       # header fine, name cut
    struct.pack("<2I", 4, 4),                                          # header cut
    struct.pack("<3I", 0xFFFFFFFF, 4, N.ENTRY) + b"Xen\0\0\0\0\0",     # absurd namesz
    struct.pack("<3I", 4, 0xFFFFFFF0, N.ENTRY) + b"Xen\0\1\2",         # absurd descsz
    struct.pack("<3I", 4, 16, N.L1_MFN_VALID) + b"Xen\0" + b"\1" * 6,  # pairs cut
    struct.pack("<3I", 4, 6, N.SUPPORTED_FEATURES) + b"Xen\0" + b"\1" * 8,
    struct.pack("<3I", 4, 3, N.GUEST_OS) + b"Xen\0" + b"\xff\xfe\x80\0",
])
def test_malformed_notes_never_raise(blob):
    inside = build_elf([kernel_segment(), Seg(PT_NOTE, blob, flags=4)], [])
    for data in (inside, notes_at_end_of_file(blob), notes_at_end_of_file(blob)[:-1]):
        assert isinstance(notes_of(data), XenNotes)


def test_note_segment_past_end_of_file():
    data = build_elf([kernel_segment(), Seg(PT_NOTE, b"".join(LINUX_NOTES), flags=4,
                                            filesz=0x100000)], [])
    notes = notes_of(data)
    assert notes.entry == 0xC0100000
    assert any("past the end of the file" in w for w in notes.warnings)


def test_too_many_notes_stops_reading():
    blob = struct.pack("<3I", 0, 0, 0) * 65600 + b"".join(LINUX_NOTES)
    notes = notes_of(build_elf([kernel_segment(), Seg(PT_NOTE, blob, flags=4)], []))
    assert any("more than 65536 notes" in w for w in notes.warnings)
    assert notes.source is None


def test_header_tables_outside_file_are_warnings_here():
    data = bytearray(linux_like())
    struct.pack_into("<I", data, 32, len(data) + 100)   # e_shoff past the end
    notes = notes_of(bytes(data))
    assert notes.entry == 0xC0100000
    assert any("section headers lie outside the file" in w for w in notes.warnings)
    elffile = ELFFile(io.BytesIO(bytes(data)))
    assert len(elf_program_headers(elffile, bytes(data))) == 2
    with pytest.raises(ValueError, match="section headers lie outside"):
        elf_section_headers(elffile, bytes(data))


# --------------------------------------------------------------------------- gcc-built

GCC_SOURCE = asm_block(
    asm_note(N.GUEST_OS, '.asciz "linux"'),
    asm_note(N.XEN_VERSION, '.asciz "xen-3.0"'),
    asm_note(N.LOADER, '.asciz "generic"'),
    asm_note(N.ENTRY, ".long startup_xen"),
    asm_note(N.HYPERCALL_PAGE, ".long hypercall_page"),
    asm_note(N.FEATURES, '.asciz "!writable_page_tables|pae_pgdir_above_4gb"'),
    asm_note(N.PAE_MODE, '.asciz "yes"'),
    asm_note(N.L1_MFN_VALID, ".quad 1\n.quad 1"),
) + asm_block(
    ".text\n.globl startup_xen\nstartup_xen:\n1: jmp 1b\n"
    ".balign 4096\n.globl hypercall_page\nhypercall_page:\n.fill 4096, 1, 0xcc\n")


def test_gcc_built_notes_in_pt_note(tmp_path):
    path = gcc_build(tmp_path, "guest", GCC_SOURCE, "-Wl,-Ttext=0x100000")
    data = path.read_bytes()
    elffile = ELFFile(io.BytesIO(data))
    assert any(p.p_type == PT_NOTE for p in elf_program_headers(elffile, data))
    notes = parse_xen_notes(elffile, data)
    assert notes.source == "notes" and notes.errors == ()
    symbols = {s.name: s for s in elffile.get_section_by_name(".symtab").iter_symbols()}
    assert notes.entry == symbols["startup_xen"]["st_value"]
    assert notes.hypercall_page == symbols["hypercall_page"]["st_value"]
    assert notes.virt_base == 0 and notes.l1_mfn_valid == ((1, 1),)


def test_gcc_built_notes_only_in_a_non_alloc_section(tmp_path):
    source = asm_block(*(asm_note(t, d, section='.note.Xen, "", @note') for t, d in [
        (N.GUEST_OS, '.asciz "XTF"'), (N.XEN_VERSION, '.asciz "xen-3.0"'),
        (N.LOADER, '.asciz "generic"'), (N.PAE_MODE, '.asciz "yes"')])) + \
        asm_block(".text\n.globl _start\n_start:\n1: jmp 1b\n")
    path = gcc_build(tmp_path, "xtf", source, "-Wl,-Ttext=0x100000")
    data = path.read_bytes()
    elffile = ELFFile(io.BytesIO(data))
    assert not any(p.p_type == PT_NOTE for p in elf_program_headers(elffile, data))
    notes = parse_xen_notes(elffile, data)
    assert notes.source == "notes" and notes.guest_os == "XTF"
    assert notes.entry == elffile.header["e_entry"]


# A 64-bit image shaped like Linux 6.1's xen-head.S: quad-sized addresses, INIT_P2M,
# PHYS32_ENTRY and no HYPERCALL_PAGE (gone since the XSA-466 backports).
LINUX64_NOTES = [
    xen_str(N.GUEST_OS, "linux"),
    xen_str(N.GUEST_VERSION, "2.6"),
    xen_str(N.XEN_VERSION, "xen-3.0"),
    xen_num(N.VIRT_BASE, 0xFFFFFFFF80000000, 8),
    xen_num(N.INIT_P2M, 1 << 39, 8),
    xen_num(N.ENTRY, 0xFFFFFFFF81001000, 8),
    note(b"Xen", N.FEATURES, b"!writable_page_tables|pae_pgdir_above_4gb"),
    xen_num(N.SUPPORTED_FEATURES, (1 << 0) | (1 << 11) | (1 << 15)),
    xen_str(N.PAE_MODE, "yes"),
    xen_str(N.LOADER, "generic"),
    note(b"Xen", N.L1_MFN_VALID, struct.pack("<2Q", 1, 1)),
    xen_num(N.SUSPEND_CANCEL, 1),
    xen_num(N.MOD_START_PFN, 1),
    xen_num(N.HV_START_LOW, 0xFFFF800000000000, 8),
    xen_num(N.PADDR_OFFSET, 0, 8),
    xen_num(N.PHYS32_ENTRY, 0x1000850),
]


def test_linux_6_1_x86_64_notes():
    data = build_elf([kernel_segment(paddr=0x1000000, vaddr=0xFFFFFFFF81000000),
                      Seg(PT_NOTE, b"".join(LINUX64_NOTES), flags=4)], elfclass=64,
                     entry=0x1000000)
    notes = notes_of(data)
    assert notes.source == "notes" and notes.bootable
    assert notes.virt_base == 0xFFFFFFFF80000000 and notes.paddr_offset == 0
    assert notes.entry == 0xFFFFFFFF81001000 and notes.hypercall_page is None
    assert notes.init_p2m == 1 << 39 and notes.hv_start_low == 0xFFFF800000000000
    assert notes.phys32_entry == 0x1000850
    assert notes.supported_features == 0x8801
    assert notes.supported_mask == 0x8801 | (1 << 4)       # plus FEATURES' names
    assert notes.required_mask == 1 and notes.required_features == ("writable_page_tables",)
    assert notes.l1_mfn_valid == ((1, 1),) and notes.suspend_cancel and notes.mod_start_pfn
    assert notes.pae == PaeMode.EXTCR3
    # FEATURES is .ascii: the padding ends the string, with a warning.
    assert notes.features == ("writable_page_tables", "pae_pgdir_above_4gb")
    assert [w for w in notes.warnings if "FEATURES" in w]
    assert [name for _, name, _ in notes.notes] == [
        "GUEST_OS", "GUEST_VERSION", "XEN_VERSION", "VIRT_BASE", "INIT_P2M", "ENTRY",
        "FEATURES", "SUPPORTED_FEATURES", "PAE_MODE", "LOADER", "L1_MFN_VALID",
        "SUSPEND_CANCEL", "MOD_START_PFN", "HV_START_LOW", "PADDR_OFFSET", "PHYS32_ENTRY"]


def test_other_owners_are_listed_once_each():
    notes = notes_of(linux_like([note(b"GNU", 3, b"\xaa" * 20), *LINUX_NOTES,
                                 note(b"GNU", 1, b"\0" * 16), note(b"Linux", 6, b"x\0")]))
    assert notes.other_owners == ("GNU", "Linux")
    assert notes_of(linux_like()).other_owners == ()


def test_legacy_hypercall_page_gets_virt_base_whatever_the_order():
    # libelf adds VIRT_BASE after reading every item, so it may come later in the string.
    notes = legacy(b"GUEST_OS=GNU Mach,XEN_VER=xen-3.0,LOADER=generic,HYPERCALL_PAGE=0x2,"
                   b"VIRT_BASE=0x40000000\0")
    assert notes.hypercall_page == 0x40002000 and notes.paddr_offset == 0x40000000
