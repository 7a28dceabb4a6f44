"""Guest image loading and validation (pvdbg.xen.image)."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdbg.symbols import SymbolTable
from pvdbg.xen.elfnotes import PaeMode, XenElfNote as N
from pvdbg.xen.image import (
    BadGuestImage,
    GuestImage,
    SegmentFlags,
    load_guest_image,
    peek_elf_class,
)
from test_elfnotes import (
    LINUX_NOTES,
    PT_LOAD,
    PT_NOTE,
    SHT_PROGBITS,
    Sec,
    Seg,
    asm_block,
    asm_note,
    build_elf,
    gcc_build,
    kernel_segment,
    linux_like,
    note,
    without,
    xen_num,
    xen_str,
)

# --------------------------------------------------------------------------- gcc guests

LINUX_LDS = """
ENTRY(startup_xen)
SECTIONS
{
  . = 0xC0100000;
  .text : AT(ADDR(.text) - 0xC0000000) { *(.text*) }
  .note.Xen : AT(ADDR(.note.Xen) - 0xC0000000) { *(.note.Xen) }
  .data ALIGN(4096) : AT(ADDR(.data) - 0xC0000000) { *(.data*) }
  .bss : AT(ADDR(.bss) - 0xC0000000) { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note.GNU-stack) *(.comment) *(.eh_frame) *(.note.gnu.property) }
}
"""

# vaddr == paddr from {base}: how XTF and GNU Mach link.
FLAT_LDS = """
SECTIONS
{{
  . = {base:#x};
  .text : {{ *(.text*) }}
  .note.Xen : {{ *(.note.Xen) }}
  .data ALIGN(4096) : {{ *(.data*) }}
  .bss : {{ *(.bss*) *(COMMON) }}
  /DISCARD/ : {{ *(.note.GNU-stack) *(.comment) *(.eh_frame) *(.note.gnu.property) }}
}}
"""

LINUX_SOURCE = asm_block(
    asm_note(N.GUEST_OS, '.asciz "linux"'),
    asm_note(N.GUEST_VERSION, '.asciz "2.6"'),
    asm_note(N.XEN_VERSION, '.asciz "xen-3.0"'),
    asm_note(N.LOADER, '.asciz "generic"'),
    asm_note(N.VIRT_BASE, ".long 0xC0000000"),
    asm_note(N.PADDR_OFFSET, ".long 0"),
    asm_note(N.ENTRY, ".long startup_xen"),
    asm_note(N.HYPERCALL_PAGE, ".long hypercall_page"),
    asm_note(N.FEATURES, '.asciz "!writable_page_tables|pae_pgdir_above_4gb"'),
    asm_note(N.SUPPORTED_FEATURES, ".long (1 << 0) | (1 << 11)"),
    asm_note(N.PAE_MODE, '.asciz "yes"'),
    asm_note(N.L1_MFN_VALID, ".quad 1\n.quad 1"),
    asm_note(N.SUSPEND_CANCEL, ".long 1"),
    asm_note(N.MOD_START_PFN, ".long 1"),
    asm_note(N.HV_START_LOW, ".long 0xF5800000"),
) + asm_block(
    ".text\n.globl startup_xen\n.type startup_xen, @function\nstartup_xen:\n"
    "call start_kernel\n1: jmp 1b\n.size startup_xen, . - startup_xen\n"
    ".balign 4096\n.globl hypercall_page\nhypercall_page:\n.fill 4096, 1, 0xcc\n"
) + """
int boot_counter = 7;
unsigned char scratch[8192];

void start_kernel(void)
{
    for (;;)
        boot_counter++;
}
"""

XTF_SOURCE = asm_block(
    asm_note(N.GUEST_OS, '.asciz "XTF"'),
    asm_note(N.GUEST_VERSION, '.asciz "0"'),
    asm_note(N.LOADER, '.asciz "generic"'),
    asm_note(N.XEN_VERSION, '.asciz "xen-3.0"'),
    asm_note(N.HYPERCALL_PAGE, ".long hypercall_page"),
    asm_note(N.FEATURES, '.asciz "!writable_page_tables|pae_pgdir_above_4gb"'),
    asm_note(N.PAE_MODE, '.asciz "yes"'),
) + asm_block(
    ".text\n.globl _elf_start\n_elf_start:\n1: jmp 1b\n"
    ".balign 4096\n.globl hypercall_page\nhypercall_page:\n.fill 4096, 1, 0xcc\n")

# GNU Mach: the ELFNOTE macro leaves the owner "name", so libelf uses __xen_guest.
GNU_MACH_SOURCE = asm_block(
    '.section __xen_guest\n.ascii "GUEST_OS=GNU Mach,GUEST_VERSION=1.3,XEN_VER=xen-3.0"\n'
    '.ascii ",VIRT_BASE=0xC0000000,ELF_PADDR_OFFSET=0xC0000000,HYPERCALL_PAGE=0x2"\n'
    '.ascii ",PAE=yes[extended-cr3],LOADER=generic,FEATURES=!writable_page_tables"\n.byte 0\n',
    asm_note(N.GUEST_OS, '.asciz "GNU Mach"', owner="name"),
    asm_note(N.XEN_VERSION, '.asciz "xen-3.0"', owner="name"),
    asm_note(N.HYPERCALL_PAGE, ".long hypcalls", owner="name"),
) + asm_block(
    ".text\n.globl start\nstart:\n1: jmp 1b\n.org start + 0x2000\n"
    ".globl hypcalls\nhypcalls:\n.org hypcalls + 0x1000\n")

X86_64_SOURCE = asm_block(
    asm_note(N.GUEST_OS, '.asciz "linux"'),
    asm_note(N.XEN_VERSION, '.asciz "xen-3.0"'),
    asm_note(N.LOADER, '.asciz "generic"'),
    asm_note(N.ENTRY, ".quad _start"),
    asm_note(N.HYPERCALL_PAGE, ".quad hypercall_page"),
) + asm_block(
    ".text\n.globl _start\n_start:\n1: jmp 1b\n"
    ".balign 4096\n.globl hypercall_page\nhypercall_page:\n.fill 4096, 1, 0xcc\n")


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("guests")

    def script(name: str, text: str) -> str:
        path = out / name
        path.write_text(text)
        return f"-Wl,-T,{path}"

    return {
        "linux": gcc_build(out, "linux.elf", LINUX_SOURCE, "-g", "-O1",
                           script("linux.lds", LINUX_LDS)),
        "xtf": gcc_build(out, "xtf.elf", XTF_SOURCE,
                         script("xtf.lds", FLAT_LDS.format(base=0x100000)), "-Wl,-e,_elf_start"),
        "gnumach": gcc_build(out, "gnumach.elf", GNU_MACH_SOURCE,
                             script("mach.lds", FLAT_LDS.format(base=0xC0000000)), "-Wl,-e,start"),
        "x86_64": gcc_build(out, "x86_64.elf", X86_64_SOURCE,
                            script("x64.lds", FLAT_LDS.format(base=0x200000)), bits=64),
    }


def test_linux_style_gcc_guest(guests):
    image = load_guest_image(guests["linux"])
    assert isinstance(image, GuestImage)
    assert image.path == str(guests["linux"])
    assert image.elfclass == 32 and image.machine == 3
    assert image.notes.source == "notes" and image.notes.guest_os == "linux"
    assert image.virt_base == 0xC0000000 and image.virt_offset == 0xC0000000
    assert image.pae == PaeMode.EXTCR3
    symbols = image.symbols
    assert image.entry == symbols.address("startup_xen") == 0xC0100000
    assert image.hypercall_page_va == symbols.address("hypercall_page")
    assert image.hypercall_page_va % 4096 == 0
    assert image.kernel_start_va == 0xC0100000
    assert image.kernel_end_va % 4096 == 0
    last = max(s.guest_end_va for s in image.segments)
    assert image.kernel_end_va - 4096 < last <= image.kernel_end_va
    for segment in image.segments:
        assert segment.guest_va == segment.link_va          # AT() places them consistently
        assert len(segment.data) == segment.filesz <= segment.memsz
    data_segment = next(s for s in image.segments if s.flags & SegmentFlags.W)
    assert data_segment.memsz > data_segment.filesz          # .bss (scratch[]) is zero-filled
    assert symbols.lookup(symbols.address("boot_counter")) == ("boot_counter", 0)
    assert image.has_dwarf
    assert image.warnings == ()
    assert image.nr_kernel_pages == (image.kernel_end_va - image.kernel_start_va) // 4096


def test_xtf_style_gcc_guest_defaults(guests):
    image = load_guest_image(guests["xtf"])
    assert image.virt_base == 0 and image.virt_offset == 0
    assert image.entry == image.symbols.address("_elf_start") == 0x100000
    assert image.kernel_start_va == 0x100000
    assert image.hypercall_page_va == 0x101000
    assert not image.has_dwarf


def test_gnu_mach_style_falls_back_to_xen_guest(guests):
    image = load_guest_image(guests["gnumach"])
    assert image.notes.source == "__xen_guest"
    assert image.notes.guest_os == "GNU Mach"
    assert image.virt_base == 0xC0000000 and image.virt_offset == 0
    assert image.hypercall_page_va == 0xC0002000 == image.symbols.address("hypcalls")
    assert image.entry == 0xC0000000
    assert image.pae == PaeMode.EXTCR3


def test_x86_64_refused_unless_allowed(guests):
    path = guests["x86_64"]
    assert peek_elf_class(path) == 64
    with pytest.raises(BadGuestImage) as caught:
        load_guest_image(path)
    assert str(caught.value) == f"{path}: 64-bit (x86-64) PV kernels are not supported yet"
    assert caught.value.elfclass == 64
    image = load_guest_image(path, allow_64bit=True)
    assert image.elfclass == 64 and image.machine == 62
    assert image.entry == image.symbols.address("_start") == 0x200000
    assert image.hypercall_page_va == 0x201000


def test_bytes_and_names(guests):
    data = guests["xtf"].read_bytes()
    assert peek_elf_class(data) == 32
    assert load_guest_image(data).path == "<memory>"
    assert load_guest_image(bytearray(data), name="xtf").path == "xtf"
    with pytest.raises(BadGuestImage, match=r"^guest\.elf: not an ELF file$"):
        load_guest_image(b"MZ\x90\x00" * 20, name="guest.elf")


def test_bad_guest_image_pickles():
    error = BadGuestImage("k.elf", "64-bit (x86-64) PV kernels are not supported yet",
                          elfclass=64)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.elfclass == 64 and copy.reason == error.reason


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.elf"
    with pytest.raises(BadGuestImage, match=r"nope\.elf: cannot read: No such file"):
        load_guest_image(missing)


def test_byte_built_image():
    image = load_guest_image(linux_like())
    (segment,) = image.segments
    assert (segment.guest_va, segment.filesz, segment.memsz) == (0xC0100000, 0x2000, 0x3000)
    assert image.kernel_end_va == 0xC0103000
    assert image.hypercall_page_va == 0xC0101000
    assert len(image.symbols) == 0
    assert not image.has_dwarf


def test_symbols_table_is_empty_without_symtab():
    image = load_guest_image(linux_like())
    assert isinstance(image.symbols, SymbolTable)
    assert image.symbols.format(image.entry) == "0xc0100000"


def grub_xen_like(kernel_size: int = 0x3000, bss_size: int = 0x800,
                  mods_size: int = 0x200) -> bytes:
    """The layout grub-mkimage -O i386-xen writes (util/grub-mkimagexx.c generate_elf).

    Headers in the first page; kernel linked at 0; a PT_GNU_STACK; a PT_LOAD for the
    modules; and last in the file 132 bytes of notes whose final PAE_MODE note
    declares sizeof("yes,bimodal") = 12 desc bytes but holds only "yes\\0".
    """
    header_size = 0x1000
    core = b"\x90" * kernel_size + b"\x01" * mods_size
    notes = (note(b"Xen", N.GUEST_OS, b"GRUB\0") + note(b"Xen", N.LOADER, b"generic\0")
             + note(b"Xen", N.XEN_VERSION, b"xen-3.0\0") + note(b"Xen", N.ENTRY, b"\0" * 4)
             + note(b"Xen", N.VIRT_BASE, b"\0" * 4)
             + struct.pack("<3I", 4, 12, N.PAE_MODE) + b"Xen\0yes\0")
    assert len(notes) == 132
    strings = b"\0.text\0mods\0.xen\0"
    phnum, shnum = 4, 5
    notes_at = header_size + len(core)
    mods_va = (kernel_size + bss_size + 0xFFF) & ~0xFFF
    image = bytearray(header_size) + core + notes
    struct.pack_into("<16s2H5I6H", image, 0, b"\x7fELF\x01\x01\x01", 2, 3, 1, 0, 52,
                     52 + 32 * phnum, 0, 52, 32, phnum, 40, shnum, 1)
    for index, row in enumerate([
            (PT_LOAD, header_size, 0, 0, kernel_size, kernel_size + bss_size, 7, 4),
            (0x6474E551, header_size + kernel_size, 0, 0, 0, 0, 7, 4),          # PT_GNU_STACK
            (PT_LOAD, header_size + kernel_size, mods_va, mods_va, mods_size, mods_size, 7, 4),
            (PT_NOTE, notes_at, 0, 0, len(notes), 0, 4, 4)]):
        struct.pack_into("<8I", image, 52 + 32 * index, *row)
    sections_at = 52 + 32 * phnum
    strings_at = sections_at + 40 * shnum
    image[strings_at:strings_at + len(strings)] = strings
    for index, row in enumerate([
            (0, 3, 0, 0, strings_at, len(strings), 0, 0, 1, 0),
            (1, SHT_PROGBITS, 0, 0, header_size, kernel_size, 0, 0, 4, 0),
            (7, SHT_PROGBITS, 0, kernel_size, header_size + kernel_size, mods_size, 0, 0, 4, 0),
            (12, SHT_PROGBITS, 0, kernel_size, notes_at, len(notes), 0, 0, 4, 0)], start=1):
        struct.pack_into("<10I", image, sections_at + 40 * index, *row)
    return bytes(image)


def test_grub_i386_xen_layout_loads_with_a_warning():
    image = load_guest_image(grub_xen_like(), name="grub-i386-xen.bin")
    assert image.notes.guest_os == "GRUB" and image.notes.source == "notes"
    assert image.entry == 0 and image.virt_base == 0 and image.kernel_start_va == 0
    assert image.hypercall_page_va is None          # GRUB has no HYPERCALL_PAGE note
    assert image.pae == PaeMode.EXTCR3 and image.notes.pae_mode == "yes"
    assert [(s.guest_va, s.filesz, s.memsz) for s in image.segments] == [
        (0, 0x3000, 0x3800), (0x4000, 0x200, 0x200)]
    assert image.kernel_end_va == 0x5000
    assert any("PAE_MODE declares 12 desc bytes but the file ends after 4" in w
               for w in image.warnings)


# --------------------------------------------------------------------------- malformed

def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


PHDR0 = 52          # first program header of a byte-built ELF32
PHDR1 = 52 + 32


def load_error(data: bytes) -> str:
    with pytest.raises(BadGuestImage) as caught:
        load_guest_image(data, name="guest.elf")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("guest.elf: ")
    return message.removeprefix("guest.elf: ")


BAD_IMAGES = {
    "empty": (b"", "not an ELF file"),
    "text": (b"hello world, not an elf at all", "not an ELF file"),
    "bad class": (b"\x7fELF\x03\x01" + b"\0" * 60, "unknown ELF class 3"),
    "big endian": (b"\x7fELF\x01\x02" + b"\0" * 60, "not a little-endian ELF file"),
    "short header": (linux_like()[:40], "ELF header is cut short by the end of the file"),
    "wrong machine": (patched(linux_like(), 18, "<H", 40), "32-bit ELF for machine 40, not i386"),
    "phdrs outside": (patched(linux_like(), 28, "<I", 0x7FFFFF00),
                      "program headers lie outside the file"),
    "too many phdrs": (patched(linux_like(), 44, "<H", 0xFFFF),
                       "program headers lie outside the file"),
    "small phentsize": (patched(linux_like(), 42, "<H", 8),
                        "program header size 8 is smaller than 32"),
    "shdrs outside": (patched(linux_like(), 32, "<I", 0x7FFFFF00),
                      "section headers lie outside the file"),
    "segment outside": (patched(linux_like(), PHDR0 + 4, "<I", 0x7FFFFF00),
                        "program header 0 lies outside the file"),
    "filesz > memsz": (patched(linux_like(), PHDR0 + 20, "<I", 0x1000),
                       "program header 0: p_filesz 0x2000 exceeds p_memsz 0x1000"),
    "huge memsz": (patched(linux_like(), PHDR0 + 20, "<I", 0x50000000),
                   "program header 0: p_memsz 0x50000000 is larger than 1 GiB"),
    "no notes": (build_elf([kernel_segment()]),
                 "no Xen ELF notes and no __xen_guest section: not a PV kernel"),
    "no PT_LOAD": (build_elf([Seg(PT_NOTE, b"".join(LINUX_NOTES), flags=4)]),
                   "no loadable (PT_LOAD) segments"),
    "entry outside": (linux_like([*LINUX_NOTES, xen_num(N.ENTRY, 0xC0200000)]),
                      "entry point 0xc0200000 lies outside the kernel image "
                      "0xc0100000-0xc0103000"),
    "entry below": (linux_like([*LINUX_NOTES, xen_num(N.ENTRY, 0xC00FFFFF)]),
                    "entry point 0xc00fffff lies outside the kernel image 0xc0100000-0xc0103000"),
    "hypercall unaligned": (linux_like([*LINUX_NOTES, xen_num(N.HYPERCALL_PAGE, 0xC0101010)]),
                            "hypercall page 0xc0101010 is not page aligned"),
    "hypercall outside": (linux_like([*LINUX_NOTES, xen_num(N.HYPERCALL_PAGE, 0xC0103000)]),
                          "hypercall page 0xc0103000 lies outside the kernel image "
                          "0xc0100000-0xc0103000"),
    "xen version": (linux_like([*LINUX_NOTES, xen_str(N.XEN_VERSION, "xen-2.0")]),
                    "XEN_VERSION is 'xen-2.0': Xen loads only images built for 'xen-3.0'"),
    "loader": (linux_like([*LINUX_NOTES, xen_str(N.GUEST_OS, "Plan9"), xen_str(N.LOADER, "x")]),
               "LOADER is 'x' and GUEST_OS is 'Plan9': Xen loads only images for the "
               "'generic' loader or Linux"),
    "unknown required feature": (linux_like([*LINUX_NOTES, xen_str(N.FEATURES, "!warp_drive")]),
                                 "FEATURES requires 'warp_drive', a feature Xen does not know"),
    "dom0 only": (linux_like([*LINUX_NOTES, xen_str(N.FEATURES, "!dom0")]),
                  "kernel requires feature 'dom0': it does not run as an unprivileged domain"),
    "no PAE": (linux_like(without(N.PAE_MODE)),
               "32-bit kernel without PAE (PAE_MODE ''): Xen runs 32-bit PV guests only with PAE"),
    "paddr offset alone": (linux_like(without(N.VIRT_BASE)),
                           "PADDR_OFFSET is set but VIRT_BASE is not"),
    "virt base above start": (linux_like([*LINUX_NOTES, xen_num(N.VIRT_BASE, 0xC0200000),
                                          xen_num(N.PADDR_OFFSET, 0xC0200000)]),
                              "VIRT_BASE 0xc0200000 lies above the kernel start 0x100000"),
    "virt base unaligned": (linux_like([*LINUX_NOTES, xen_num(N.VIRT_BASE, 0xC0000010)]),
                            "VIRT_BASE 0xc0000010 is not page aligned"),
    "virt base 64-bit": (linux_like([*LINUX_NOTES, xen_num(N.VIRT_BASE, 1 << 40, 8)]),
                         "VIRT_BASE 0x10000000000 is outside the 32-bit address space"),
    "above 4 GiB": (linux_like([*LINUX_NOTES, xen_num(N.VIRT_BASE, 0xFFF00000)]),
                    "program header 0 (p_paddr 0x100000) maps outside the 32-bit address space"),
    "below 0": (linux_like([*LINUX_NOTES, xen_num(N.PADDR_OFFSET, 0xC0200000)]),
                "program header 0 (p_paddr 0x100000) maps outside the 32-bit address space"),
    "start unaligned": (build_elf([kernel_segment(paddr=0x100010, vaddr=0xC0100010),
                                   Seg(PT_NOTE, b"".join(without(N.ENTRY)), flags=4)],
                                  entry=0xC0100010),
                        "kernel starts at 0xc0100010, which is not page aligned"),
    "overlap": (linux_like(extra_segments=[Seg(PT_LOAD, b"\0" * 16, vaddr=0xC0102000,
                                               paddr=0x102000)]),
                "program headers 0 and 2 overlap at 0xc0102000"),
    "span over 1 GiB": (build_elf([kernel_segment(paddr=0x100000, vaddr=0x100000),
                                   Seg(PT_LOAD, b"\0" * 16, vaddr=0x50000000, paddr=0x50000000),
                                   Seg(PT_NOTE, b"".join(without(N.VIRT_BASE, N.PADDR_OFFSET,
                                                                 N.ENTRY, N.HYPERCALL_PAGE)),
                                       flags=4)], entry=0x100000),
                        "kernel spans 1279 MiB (0x100000-0x50001000); the limit is 1 GiB"),
    "init p2m inside": (linux_like([*LINUX_NOTES, xen_num(N.INIT_P2M, 0xC0101000)]),
                        "INIT_P2M 0xc0101000 lies inside the kernel image 0xc0100000-0xc0103000"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images(case):
    data, expected = BAD_IMAGES[case]
    assert load_error(data) == expected


def test_64bit_class_is_known_before_it_is_refused():
    data = build_elf([kernel_segment(), Seg(PT_NOTE, b"".join(LINUX_NOTES), flags=4)],
                     elfclass=64)
    assert peek_elf_class(data) == 64
    with pytest.raises(BadGuestImage) as caught:
        load_guest_image(data)
    assert caught.value.elfclass == 64
    image = load_guest_image(data, allow_64bit=True)
    assert image.elfclass == 64 and image.entry == 0xC0100000


def test_64bit_image_may_live_above_4gib():
    base = 0xFFFFFFFF80000000
    notes = [*without(N.VIRT_BASE, N.ENTRY, N.HYPERCALL_PAGE), xen_num(N.VIRT_BASE, base, 8),
             xen_num(N.ENTRY, base + 0x100000, 8)]
    data = build_elf([kernel_segment(vaddr=base + 0x100000),
                      Seg(PT_NOTE, b"".join(notes), flags=4)], elfclass=64, entry=base + 0x100000)
    image = load_guest_image(data, allow_64bit=True)
    assert image.kernel_start_va == base + 0x100000


def test_pt_load_without_flags_is_skipped_with_warning():
    data = linux_like(extra_segments=[Seg(PT_LOAD, b"\0" * 16, vaddr=0xC0102000, paddr=0x102000,
                                          flags=0)])
    image = load_guest_image(data)
    assert len(image.segments) == 1
    assert any("without R/W/X" in w for w in image.warnings)


def test_link_address_mismatch_is_a_warning():
    data = build_elf([kernel_segment(vaddr=0xD0100000),
                      Seg(PT_NOTE, b"".join(LINUX_NOTES), flags=4)])
    image = load_guest_image(data)
    assert image.segments[0].guest_va == 0xC0100000
    assert any("linked at 0xd0100000" in w for w in image.warnings)


def test_note_warnings_are_passed_on():
    data = linux_like([*LINUX_NOTES, note(b"Xen", N.HV_START_LOW, b"\1\2\3")])
    image = load_guest_image(data)
    assert any("3 bytes" in w for w in image.warnings)


def test_legacy_byte_image():
    data = build_elf([kernel_segment(paddr=0xC0100000)],
                     [Sec("__xen_guest", SHT_PROGBITS,
                          b"GUEST_OS=Mini,XEN_VER=xen-3.0,LOADER=generic,VIRT_BASE=0xC0000000,"
                          b"HYPERCALL_PAGE=0x101,PAE=yes\0")])
    image = load_guest_image(data)
    assert image.virt_offset == 0
    assert image.hypercall_page_va == 0xC0101000
    assert image.pae == PaeMode.YES


# --------------------------------------------------------------------------- fuzzing

FUZZ_EXAMPLES = int(os.environ.get("PVDBG_FUZZ_EXAMPLES", "200"))


def header_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of ELF32 header, program header, section header and note fields."""
    fields = [(4, 1), (5, 1), (16, 2), (18, 2), (24, 4), (28, 4), (32, 4), (42, 2), (44, 2),
              (46, 2), (48, 2), (50, 2)]
    phoff, shoff = struct.unpack_from("<2I", data, 28)
    phnum, shnum = struct.unpack_from("<H", data, 44)[0], struct.unpack_from("<H", data, 48)[0]
    for index in range(phnum):
        base = phoff + 32 * index
        fields += [(base + 4 * k, 4) for k in range(8)]
        p_type, p_offset = struct.unpack_from("<2I", data, base)
        if p_type == PT_NOTE:
            fields += [(p_offset + 4 * k, 4) for k in range(6)]
    for index in range(shnum):
        fields += [(shoff + 40 * index + 4 * k, 4) for k in range(10)]
    return fields


@pytest.fixture(scope="module")
def fuzz_bases(guests) -> list[tuple[bytes, list[tuple[int, int]]]]:
    bases = [linux_like(), grub_xen_like(), guests["linux"].read_bytes(),
             guests["gnumach"].read_bytes()]
    return [(data, header_fields(data)) for data in bases]


def mutate(draw_data, data: bytes, fields: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    interesting = st.sampled_from([0, 1, 2, 4, 0x1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                   0xFFFF, len(data), len(data) - 1])
    for _ in range(draw_data.draw(st.integers(1, 4), label="mutations")):
        kind = draw_data.draw(st.sampled_from(["flip", "truncate", "field", "field"]))
        if kind == "flip" and out:
            index = draw_data.draw(st.integers(0, len(out) - 1))
            out[index] ^= draw_data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[draw_data.draw(st.integers(0, len(out))):]
        else:
            offset, size = draw_data.draw(st.sampled_from(fields))
            value = draw_data.draw(st.one_of(interesting, st.integers(0, (1 << 32) - 1)))
            chunk = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            out[offset:offset + size] = chunk
            del out[len(data):]
    return bytes(out)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(choice=st.integers(0, 3), draw_data=st.data())
def test_mutated_images_load_or_raise_bad_guest_image(fuzz_bases, choice, draw_data):
    data, fields = fuzz_bases[choice]
    mutated = mutate(draw_data, data, fields)
    try:
        image = load_guest_image(mutated, name="fuzz.elf")
    except BadGuestImage as exc:
        message = str(exc)
        assert message.startswith("fuzz.elf: ") and "\n" not in message
        return
    symbols = image.symbols
    symbols.format(image.entry)
    symbols.names()
    symbols.line_for(image.entry)


def test_unreadable_symbol_table_becomes_a_warning(guests):
    data = bytearray(guests["linux"].read_bytes())
    shoff, = struct.unpack_from("<I", data, 32)
    shentsize, shnum = struct.unpack_from("<2H", data, 46)
    for index in range(shnum):
        sh_type, = struct.unpack_from("<I", data, shoff + index * shentsize + 4)
        if sh_type == 2:                                                    # SHT_SYMTAB
            struct.pack_into("<I", data, shoff + index * shentsize + 8, 0x800)  # SHF_COMPRESSED
    image = load_guest_image(bytes(data))
    assert len(image.symbols) == 0
    assert any(w.startswith("symbol table unreadable") for w in image.warnings)


def test_gzip_compressed_kernel_is_inflated_first(guests):
    """libxc's xc_dom_kernel_file gunzips a kernel file (GNU Mach ships as .gz)."""
    import gzip
    raw = guests["gnumach"].read_bytes()
    packed = gzip.compress(raw)
    assert peek_elf_class(packed) == 32
    assert load_guest_image(packed).notes == load_guest_image(raw).notes


@pytest.mark.parametrize("blob,why", [
    (b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic", "gzip-compressed kernel is corrupt"),
    (None, "ends inside the compressed stream"),
])
def test_bad_gzip_kernels(guests, blob, why):
    import gzip
    if blob is None:
        blob = gzip.compress(guests["gnumach"].read_bytes())[:200]
    with pytest.raises(BadGuestImage, match=why):
        load_guest_image(blob, name="k.gz")
