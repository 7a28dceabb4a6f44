"""Read and validate a PV guest kernel ELF image, as Xen's domain builder would.

Checks follow Xen's libelf and libxc: xen/common/libelf/libelf-loader.c (elf_init,
elf_parse_binary, elf_phdr_is_loadable), libelf-dominfo.c (elf_xen_parse,
elf_xen_addr_calc_check) and tools/libs/guest/xg_dom_elfloader.c,
xg_dom_core.c (xc_dom_kernel_file: a gzip file is inflated first;
xc_dom_alloc_segment), plus sanity limits of our own (1 GiB image span, no
overlapping segments). Every problem with the input is reported
as BadGuestImage with a one-line message.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntFlag
from collections.abc import Callable
from typing import Union

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile

from pvdbg.symbols import SymbolTable
from pvdbg.xen.bzimage import MAX_KERNEL_BYTES, unwrap_kernel
from pvdbg.xen.elfnotes import (
    PT_LOAD,
    BadElfTable,
    ElfProgramHeader,
    PaeMode,
    XenNotes,
    elf_program_headers,
    elf_section_headers,
    parse_xen_notes,
)

__all__ = [
    "BadGuestImage",
    "SegmentFlags",
    "LoadSegment",
    "GuestImage",
    "EM_386",
    "EM_X86_64",
    "peek_elf_class",
    "load_guest_image",
]

EM_386 = 3
EM_X86_64 = 62
PAGE_SIZE = 4096
MAX_IMAGE_SPAN = 1 << 30   # refuse kernels whose loaded span exceeds 1 GiB

_ELF_MAGIC = b"\x7fELF"
_GZIP_MAGIC = b"\x1f\x8b"
_ELFCLASS32, _ELFCLASS64 = 1, 2
_ELFDATA2LSB = 1
_EHDR_SIZE = {32: 52, 64: 64}
_ADDRESS_LIMIT = {32: 1 << 32, 64: 1 << 64}

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


class BadGuestImage(Exception):
    """A kernel image we can't or won't boot; str() is one line, "<name>: <reason>".

    `elfclass` is 32 or 64 once the ELF identification was read, else None.
    """

    def __init__(self, name: str, reason: str, *, elfclass: int | None = None) -> None:
        self.name = name
        self.reason = " ".join(reason.split())
        self.elfclass = elfclass
        super().__init__(f"{name}: {self.reason}")

    def __reduce__(self):
        return (BadGuestImage, (self.name, self.reason), {"elfclass": self.elfclass})


class SegmentFlags(IntFlag):
    """ELF p_flags."""

    X = 1
    W = 2
    R = 4


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD segment placed in the guest: bytes [guest_va, guest_va + memsz).

    `data` holds the first `filesz` bytes; the rest up to `memsz` is zero (BSS).
    `link_va` is p_vaddr, the address symbols and DWARF refer to.
    """

    guest_va: int
    filesz: int
    memsz: int
    flags: SegmentFlags
    data: bytes = field(repr=False)
    link_va: int = 0

    @property
    def guest_end_va(self) -> int:
        """First guest VA after the segment (exclusive)."""
        return self.guest_va + self.memsz


@dataclass(frozen=True)
class GuestImage:
    """A validated PV kernel: where each segment goes and how to enter it.

    virt_offset = VIRT_BASE - PADDR_OFFSET (libelf): guest_va = p_paddr + virt_offset.
    kernel_start_va/kernel_end_va bound the page-aligned span of all segments.
    """

    path: str
    elfclass: int
    machine: int
    notes: XenNotes
    entry: int
    virt_base: int
    virt_offset: int
    segments: tuple[LoadSegment, ...]
    kernel_start_va: int
    kernel_end_va: int
    hypercall_page_va: int | None
    symbols: SymbolTable = field(repr=False, compare=False)
    has_dwarf: bool
    warnings: tuple[str, ...] = ()

    @property
    def pae(self) -> PaeMode:
        """PAE mode the kernel asked for (libelf parms->pae)."""
        return self.notes.pae

    @property
    def nr_kernel_pages(self) -> int:
        """Pages in [kernel_start_va, kernel_end_va)."""
        return (self.kernel_end_va - self.kernel_start_va) // PAGE_SIZE


def _read_source(source: Source, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<memory>"
    label = name or os.fspath(source)
    if isinstance(label, bytes):
        label = label.decode("utf-8", "replace")
    try:
        with open(source, "rb") as image_file:
            return image_file.read(), label
    except OSError as exc:
        raise BadGuestImage(label, f"cannot read: {exc.strerror or exc}") from exc


def _gunzip_kernel(data: bytes, name: str) -> bytes:
    """A gzip-compressed kernel file inflated, as libxc's xc_dom_kernel_file does before
    looking at it (GNU Mach's Xen image ships as .gz); anything else unchanged."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_KERNEL_BYTES + 1)
    except zlib.error as exc:
        raise BadGuestImage(name, f"gzip-compressed kernel is corrupt: {exc}") from exc
    if len(out) > MAX_KERNEL_BYTES:
        raise BadGuestImage(name, f"gzip-compressed kernel inflates to more than "
                                  f"{MAX_KERNEL_BYTES} bytes")
    if not inflater.eof:
        raise BadGuestImage(name, "gzip-compressed kernel ends inside the compressed stream")
    return out


def _identify(data: bytes, name: str) -> int:
    """ELF class (32/64) of `data`; BadGuestImage if it is no x86-usable ELF."""
    if len(data) < 16 or data[:4] != _ELF_MAGIC:
        raise BadGuestImage(name, "not an ELF file")
    ei_class = data[4]
    if ei_class not in (_ELFCLASS32, _ELFCLASS64):
        raise BadGuestImage(name, f"unknown ELF class {ei_class}")
    elfclass = 32 if ei_class == _ELFCLASS32 else 64
    if data[5] != _ELFDATA2LSB:
        raise BadGuestImage(name, "not a little-endian ELF file", elfclass=elfclass)
    if len(data) < _EHDR_SIZE[elfclass]:
        raise BadGuestImage(name, "ELF header is cut short by the end of the file",
                            elfclass=elfclass)
    return elfclass


def peek_elf_class(source: Source, *, name: str | None = None) -> int:
    """32 or 64: the ELF class of a kernel image, without validating the rest.

    Raises BadGuestImage when the file can't be read or is no little-endian ELF.
    """
    data, label = _read_source(source, name)
    return _identify(unwrap_kernel(_gunzip_kernel(data, label), name=label), label)


def load_guest_image(source: Source, *, allow_64bit: bool = False,
                     name: str | None = None) -> GuestImage:
    """Read, parse and validate a PV kernel image from a path or bytes.

    `name` labels error messages (default: the path, or "<memory>"). 64-bit
    kernels are refused unless `allow_64bit`; the refusal carries
    `elfclass=64`, and peek_elf_class() tells the class beforehand.
    Raises BadGuestImage for anything wrong with the input.
    """
    data, label = _read_source(source, name)
    data = unwrap_kernel(_gunzip_kernel(data, label), name=label)
    elfclass = _identify(data, label)
    try:
        return _load(data, label, elfclass, allow_64bit)
    except BadGuestImage:
        raise
    except (ELFError, DWARFError, BadElfTable, struct.error, IndexError, ValueError,
            KeyError, OverflowError, EOFError) as exc:
        # Whatever slipped past the explicit checks is still bad input.
        raise BadGuestImage(label, f"malformed ELF ({type(exc).__name__}: {exc})",
                            elfclass=elfclass) from exc


def _page_up(va: int) -> int:
    return (va + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _load(data: bytes, name: str, elfclass: int, allow_64bit: bool) -> GuestImage:
    def bad(reason: str) -> BadGuestImage:
        return BadGuestImage(name, reason, elfclass=elfclass)

    elffile = ELFFile(io.BytesIO(data))
    machine = struct.unpack_from("<H", data, 18)[0]
    expected_machine = EM_386 if elfclass == 32 else EM_X86_64
    if machine != expected_machine:
        raise bad(f"{elfclass}-bit ELF for machine {machine}, not "
                  f"{'i386' if elfclass == 32 else 'x86-64'}")
    if elfclass == 64 and not allow_64bit:
        raise bad("64-bit (x86-64) PV kernels are not supported yet")

    try:
        program_headers = elf_program_headers(elffile, data)
        elf_section_headers(elffile, data)   # libelf elf_init refuses a table past EOF
    except BadElfTable as exc:
        raise bad(str(exc)) from exc

    notes = parse_xen_notes(elffile, data)
    if notes.errors:
        raise bad(notes.errors[0])
    warnings = list(notes.warnings)

    if "dom0" in notes.required_features:
        # xg_dom_elfloader.c xc_dom_parse_elf_kernel
        raise bad("kernel requires feature 'dom0': it does not run as an unprivileged domain")
    if elfclass == 32 and notes.pae == PaeMode.NO:
        # A 64-bit Xen runs 32-bit PV guests only in PAE mode (xen-3.0-x86_32p).
        raise bad(f"32-bit kernel without PAE (PAE_MODE '{notes.pae_mode}'): "
                  "Xen runs 32-bit PV guests only with PAE")

    limit = _ADDRESS_LIMIT[elfclass]
    virt_base = notes.virt_base
    virt_offset = virt_base - notes.paddr_offset
    if virt_base >= limit:
        raise bad(f"VIRT_BASE {virt_base:#x} is outside the {elfclass}-bit address space")
    if virt_base % PAGE_SIZE:
        raise bad(f"VIRT_BASE {virt_base:#x} is not page aligned")

    segments = _load_segments(data, program_headers, virt_offset, limit, elfclass, bad,
                              warnings)

    # elf_parse_binary: the span of all loadable segments, moved by virt_offset.
    start_va = min(s.guest_va for s in segments)
    end_va = max(s.guest_end_va for s in segments)
    if start_va % PAGE_SIZE:
        # xg_dom_core.c xc_dom_alloc_segment: "segment start isn't page aligned"
        raise bad(f"kernel starts at {start_va:#x}, which is not page aligned")
    kernel_start_va = start_va
    kernel_end_va = _page_up(end_va)
    if kernel_end_va - kernel_start_va > MAX_IMAGE_SPAN:
        raise bad(f"kernel spans {(kernel_end_va - kernel_start_va) >> 20} MiB "
                  f"({kernel_start_va:#x}-{kernel_end_va:#x}); the limit is 1 GiB")
    if virt_base > kernel_start_va:
        raise bad(f"VIRT_BASE {virt_base:#x} lies above the kernel start {kernel_start_va:#x}")

    span = f"{kernel_start_va:#x}-{kernel_end_va:#x}"
    entry = notes.entry
    if not kernel_start_va <= entry < kernel_end_va:
        raise bad(f"entry point {entry:#x} lies outside the kernel image {span}")

    hypercall_page_va = notes.hypercall_page
    if hypercall_page_va is not None:
        if hypercall_page_va % PAGE_SIZE:
            raise bad(f"hypercall page {hypercall_page_va:#x} is not page aligned")
        if not kernel_start_va <= hypercall_page_va < kernel_end_va:
            raise bad(f"hypercall page {hypercall_page_va:#x} lies outside the kernel "
                      f"image {span}")

    if notes.init_p2m is not None and kernel_start_va <= notes.init_p2m < end_va:
        # elf_xen_addr_calc_check: "P->M table base is out of bounds"
        raise bad(f"INIT_P2M {notes.init_p2m:#x} lies inside the kernel image {span}")

    symbols = SymbolTable.from_elf(elffile)
    if symbols.load_error:
        warnings.append(symbols.load_error)
    try:
        has_dwarf = elffile.has_dwarf_info()
    except Exception:  # a corrupt section name table only costs us the DWARF flag
        has_dwarf = False
        warnings.append("section names unreadable; DWARF not looked for")

    return GuestImage(
        path=name,
        elfclass=elfclass,
        machine=machine,
        notes=notes,
        entry=entry,
        virt_base=virt_base,
        virt_offset=virt_offset,
        segments=segments,
        kernel_start_va=kernel_start_va,
        kernel_end_va=kernel_end_va,
        hypercall_page_va=hypercall_page_va,
        symbols=symbols,
        has_dwarf=has_dwarf,
        warnings=tuple(warnings),
    )


def _load_segments(data: bytes, program_headers: tuple[ElfProgramHeader, ...],
                   virt_offset: int, limit: int, elfclass: int,
                   bad: Callable[[str], BadGuestImage],
                   warnings: list[str]) -> tuple[LoadSegment, ...]:
    """PT_LOAD segments libelf would load (elf_phdr_is_loadable), checked and placed."""
    segments: list[tuple[int, LoadSegment]] = []
    for phdr in program_headers:
        if phdr.p_type != PT_LOAD:
            continue
        where = f"program header {phdr.index}"
        if not phdr.p_flags & (SegmentFlags.R | SegmentFlags.W | SegmentFlags.X):
            warnings.append(f"{where}: PT_LOAD without R/W/X flags is not loaded")
            continue
        if phdr.p_offset + phdr.p_filesz > len(data):
            raise bad(f"{where} lies outside the file")
        if phdr.p_filesz > phdr.p_memsz:
            raise bad(f"{where}: p_filesz {phdr.p_filesz:#x} exceeds p_memsz {phdr.p_memsz:#x}")
        if phdr.p_memsz == 0:
            warnings.append(f"{where}: empty PT_LOAD ignored")
            continue
        if phdr.p_memsz > MAX_IMAGE_SPAN:
            raise bad(f"{where}: p_memsz {phdr.p_memsz:#x} is larger than 1 GiB")
        guest_va = phdr.p_paddr + virt_offset
        if guest_va < 0 or guest_va + phdr.p_memsz > limit:
            raise bad(f"{where} (p_paddr {phdr.p_paddr:#x}) maps outside the "
                      f"{elfclass}-bit address space")
        if guest_va != phdr.p_vaddr:
            warnings.append(f"{where} loads at {guest_va:#x} but is linked at "
                            f"{phdr.p_vaddr:#x}; symbols use link addresses")
        segment = LoadSegment(
            guest_va=guest_va,
            filesz=phdr.p_filesz,
            memsz=phdr.p_memsz,
            flags=SegmentFlags(phdr.p_flags & 7),
            data=data[phdr.p_offset:phdr.p_offset + phdr.p_filesz],
            link_va=phdr.p_vaddr,
        )
        segments.append((phdr.index, segment))
    if not segments:
        raise bad("no loadable (PT_LOAD) segments")
    ordered = sorted(segments, key=lambda item: item[1].guest_va)
    for (index_a, a), (index_b, b) in zip(ordered, ordered[1:]):
        if b.guest_va < a.guest_end_va:
            raise bad(f"program headers {index_a} and {index_b} overlap at {b.guest_va:#x}")
    return tuple(segment for _, segment in segments)
