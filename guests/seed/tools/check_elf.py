#!/usr/bin/env python3
"""Static checks of the seed kernel image: Xen notes, load layout, relocations, debug info.

Usage: check_elf.py build/seed.elf --relocs build/seed.relocs.elf

The second image is the same link made with `ld -q`, so it still lists every relocation the
linker applied; each one that lands in a loaded section must resolve to an address at or
above VIRT_BASE. ABI: xen/include/public/elfnote.h; xen/common/libelf (load address =
p_paddr + VIRT_BASE - PADDR_OFFSET).
"""

from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import capstone
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

VIRT_BASE = 0xC000_0000
PAGE_SIZE = 4096
THREAD_SIZE = 8192
BENCH_INSNS_PER_ITERATION = 8

# XEN_ELFNOTE_* type -> (name, expected value); str values are NUL-terminated strings,
# int values are 4-byte numbers, None means "the address of that symbol" (filled in later).
XEN_NOTES: dict[int, tuple[str, str | int | None]] = {
    6: ("GUEST_OS", "pvdbg-seed"),
    7: ("GUEST_VERSION", "1"),
    5: ("XEN_VERSION", "xen-3.0"),
    3: ("VIRT_BASE", VIRT_BASE),
    4: ("PADDR_OFFSET", 0),
    1: ("ENTRY", None),
    2: ("HYPERCALL_PAGE", None),
    10: ("FEATURES", "!writable_page_tables|pae_pgdir_above_4gb"),
    9: ("PAE_MODE", "yes"),
    8: ("LOADER", "generic"),
}
NOTE_SYMBOLS = {1: "startup_xen", 2: "hypercall_page"}

REQUIRED_SYMBOLS = (
    "startup_xen", "hypercall_page", "xen_start_info", "init_thread_union",
    "xen_start_kernel", "start_kernel", "bench_loop", "bench_loop_body", "bench_loop_end",
    "pv_ops", "xen_vcpu", "init_mm",
)
SOURCES = (
    "head.S", "bench.S", "enlighten.c", "paravirt.c", "irq.c", "features.c", "mmu.c",
    "reserve.c", "main.c", "lib.c", "mm_phase.c", "kernel_phase.c", "kernel_entry.S",
)

PT_LOAD, PT_NOTE, PT_DYNAMIC, PT_INTERP = "PT_LOAD", "PT_NOTE", "PT_DYNAMIC", "PT_INTERP"
R_386_32, R_386_PC32, R_386_PLT32 = 1, 2, 4


class CheckError(Exception):
    """One failed property of the image; the message is a single line."""


@dataclass(frozen=True)
class XenNote:
    type: int
    desc: bytes


def parse_notes(data: bytes) -> list[XenNote]:
    """Split a PT_NOTE segment into notes; only notes named "Xen" are allowed here."""
    notes = []
    off = 0
    while off < len(data):
        if off + 12 > len(data):
            raise CheckError(f"truncated note header at offset {off:#x}")
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        name = data[off:off + namesz]
        off += (namesz + 3) & ~3
        desc = data[off:off + descsz]
        off += (descsz + 3) & ~3
        if off > len(data):
            raise CheckError(f"note type {ntype} runs past the segment end")
        if name != b"Xen\0":
            raise CheckError(f"note type {ntype} has name {name!r}, expected b'Xen\\x00'")
        notes.append(XenNote(ntype, desc))
    return notes


def symbol_table(elf: ELFFile) -> dict[str, tuple[int, int]]:
    """Global and local symbols by name -> (value, size)."""
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise CheckError("no .symtab: the image was stripped")
    return {sym.name: (sym["st_value"], sym["st_size"]) for sym in symtab.iter_symbols()
            if sym.name}


def check_header(elf: ELFFile, syms: dict[str, tuple[int, int]]) -> str:
    if elf.elfclass != 32 or elf["e_machine"] != "EM_386" or elf["e_type"] != "ET_EXEC":
        raise CheckError("not a 32-bit i386 ET_EXEC image")
    entry = elf["e_entry"]
    if entry != syms["startup_xen"][0]:
        raise CheckError(f"e_entry {entry:#x} != startup_xen {syms['startup_xen'][0]:#x}")
    if entry != VIRT_BASE:
        raise CheckError(f"startup_xen at {entry:#x}, expected VIRT_BASE {VIRT_BASE:#x}")
    return f"entry {entry:#x} == startup_xen"


def check_segments(elf: ELFFile) -> str:
    loads = [seg for seg in elf.iter_segments() if seg["p_type"] == PT_LOAD]
    if not loads:
        raise CheckError("no PT_LOAD segment")
    for seg in elf.iter_segments():
        if seg["p_type"] in (PT_DYNAMIC, PT_INTERP):
            raise CheckError(f"unexpected {seg['p_type']} segment")
    for seg in loads:
        vaddr, paddr = seg["p_vaddr"], seg["p_paddr"]
        if vaddr != paddr + VIRT_BASE:
            raise CheckError(f"PT_LOAD p_vaddr {vaddr:#x} != p_paddr {paddr:#x} + VIRT_BASE")
        if seg["p_flags"] & 3 == 3:
            raise CheckError(f"PT_LOAD at {vaddr:#x} is both writable and executable")
    first = min(loads, key=lambda seg: seg["p_paddr"])
    if first["p_paddr"] != 0 or first["p_vaddr"] != VIRT_BASE:
        raise CheckError(f"first PT_LOAD is at paddr {first['p_paddr']:#x}, expected 0")
    return f"{len(loads)} PT_LOAD segments, p_vaddr == p_paddr + {VIRT_BASE:#x}, first at paddr 0"


def check_notes(elf: ELFFile, syms: dict[str, tuple[int, int]]) -> str:
    note_segs = [seg for seg in elf.iter_segments() if seg["p_type"] == PT_NOTE]
    if len(note_segs) != 1:
        raise CheckError(f"expected exactly one PT_NOTE segment, found {len(note_segs)}")
    notes = parse_notes(note_segs[0].data())
    seen: dict[int, XenNote] = {}
    for note in notes:
        if note.type in seen:
            raise CheckError(f"duplicate Xen note type {note.type}")
        seen[note.type] = note
    for ntype, (name, expected) in XEN_NOTES.items():
        note = seen.get(ntype)
        if note is None:
            raise CheckError(f"missing XEN_ELFNOTE_{name} ({ntype})")
        if expected is None:
            expected = syms[NOTE_SYMBOLS[ntype]][0]
        if isinstance(expected, str):
            if note.desc != expected.encode() + b"\0":
                raise CheckError(f"XEN_ELFNOTE_{name} is {note.desc!r}, expected {expected!r}")
        else:
            if len(note.desc) != 4:
                raise CheckError(f"XEN_ELFNOTE_{name} has {len(note.desc)} bytes, expected 4")
            value = struct.unpack("<I", note.desc)[0]
            if value != expected:
                raise CheckError(f"XEN_ELFNOTE_{name} is {value:#x}, expected {expected:#x}")
    extra = sorted(set(seen) - set(XEN_NOTES))
    if extra:
        raise CheckError(f"unexpected Xen note types {extra}")
    return f"{len(notes)} Xen notes in PT_NOTE, all as specified"


def check_alignment(syms: dict[str, tuple[int, int]]) -> str:
    page, size = syms["hypercall_page"]
    if page % PAGE_SIZE or size != PAGE_SIZE:
        raise CheckError(f"hypercall_page {page:#x} size {size} is not one aligned page")
    stack, stack_size = syms["init_thread_union"]
    if stack % THREAD_SIZE or stack_size != THREAD_SIZE:
        raise CheckError(f"init_thread_union {stack:#x} size {stack_size} is not THREAD_SIZE")
    for name in REQUIRED_SYMBOLS:
        if syms[name][0] < VIRT_BASE:
            raise CheckError(f"symbol {name} at {syms[name][0]:#x} is below VIRT_BASE")
    return f"hypercall_page {page:#x} (4 KiB aligned), init stack {stack:#x}"


def check_no_relocations(elf: ELFFile) -> str:
    for sec in elf.iter_sections():
        if sec["sh_type"] in ("SHT_REL", "SHT_RELA", "SHT_DYNAMIC"):
            raise CheckError(f"section {sec.name} left in the final image")
    return "no relocation or dynamic sections"


def check_relocation_targets(relocs_elf: ELFFile) -> str:
    """Every relocation applied to a loaded section must resolve to >= VIRT_BASE."""
    count = 0
    for rel_sec in relocs_elf.iter_sections():
        if not isinstance(rel_sec, RelocationSection):
            continue
        target = relocs_elf.get_section(rel_sec["sh_info"])
        if not target["sh_flags"] & SH_FLAGS.SHF_ALLOC:
            continue
        data = target.data() if target["sh_type"] != "SHT_NOBITS" else b""
        base = target["sh_addr"]
        for rel in rel_sec.iter_relocations():
            place = rel["r_offset"]
            word = struct.unpack_from("<I", data, place - base)[0]
            rtype = rel["r_info_type"]
            if rtype == R_386_32:
                resolved = word
            elif rtype in (R_386_PC32, R_386_PLT32):
                resolved = (word + place + 4) & 0xFFFF_FFFF
            else:
                raise CheckError(f"relocation type {rtype} at {place:#x} in {target.name}")
            if resolved < VIRT_BASE:
                raise CheckError(f"reference at {place:#x} in {target.name} resolves to "
                                 f"{resolved:#x}, below VIRT_BASE")
            count += 1
    if count == 0:
        raise CheckError("the -q image lists no relocations in loaded sections")
    return f"{count} absolute/relative references, all >= {VIRT_BASE:#x}"


def check_debug_info(elf: ELFFile) -> str:
    for name in (".debug_info", ".debug_line", ".debug_frame"):
        if elf.get_section_by_name(name) is None:
            raise CheckError(f"missing {name}")
    dwarf = elf.get_dwarf_info()
    units = {Path(cu.get_top_DIE().get_full_path()).name for cu in dwarf.iter_CUs()}
    missing = [src for src in SOURCES if src not in units]
    if missing:
        raise CheckError(f"no DWARF compile unit for {', '.join(missing)}")
    return f"DWARF for {len(units)} compile units, .debug_frame present"


def text_bytes(elf: ELFFile, start: int, end: int) -> bytes:
    for sec in elf.iter_sections():
        lo = sec["sh_addr"]
        if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and lo <= start and end <= lo + sec["sh_size"]:
            return sec.data()[start - lo:end - lo]
    raise CheckError(f"{start:#x}..{end:#x} is not inside one executable section")


def check_bench_loop(elf: ELFFile, syms: dict[str, tuple[int, int]]) -> str:
    body, end = syms["bench_loop_body"][0], syms["bench_loop_end"][0]
    func, func_size = syms["bench_loop"]
    if not func <= body < end <= func + func_size:
        raise CheckError("bench_loop_body/bench_loop_end are not inside bench_loop")
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    md.detail = True
    insns = list(md.disasm(text_bytes(elf, body, end), body))
    if sum(insn.size for insn in insns) != end - body:
        raise CheckError("bench loop body does not disassemble cleanly")
    if len(insns) != BENCH_INSNS_PER_ITERATION:
        raise CheckError(f"bench loop has {len(insns)} instructions per iteration, "
                         f"expected {BENCH_INSNS_PER_ITERATION}")
    for insn in insns:
        if any(op.type == capstone.x86.X86_OP_MEM for op in insn.operands) \
                or insn.mnemonic in ("call", "push", "pop", "ret"):
            raise CheckError(f"bench loop touches memory: {insn.mnemonic} {insn.op_str}")
    last = insns[-1]
    if last.mnemonic != "jne" or int(last.op_str, 16) != body:
        raise CheckError("bench loop does not end with a branch back to bench_loop_body")
    return f"bench loop: {len(insns)} register-only instructions at {body:#x}..{end:#x}"


def run_checks(image: Path, relocs_image: Path | None) -> list[str]:
    with image.open("rb") as fh:
        elf = ELFFile(fh)
        syms = symbol_table(elf)
        missing = [name for name in REQUIRED_SYMBOLS if name not in syms]
        if missing:
            raise CheckError(f"missing symbols: {', '.join(missing)}")
        results = [
            check_header(elf, syms),
            check_segments(elf),
            check_notes(elf, syms),
            check_alignment(syms),
            check_no_relocations(elf),
            check_debug_info(elf),
            check_bench_loop(elf, syms),
        ]
    if relocs_image is not None:
        with relocs_image.open("rb") as fh:
            results.append(check_relocation_targets(ELFFile(fh)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--relocs", type=Path, help="the same link made with ld -q")
    args = parser.parse_args(argv)
    try:
        results = run_checks(args.image, args.relocs)
    except (CheckError, OSError) as exc:
        print(f"check_elf: FAIL: {exc}", file=sys.stderr)
        return 1
    for line in results:
        print(f"check_elf: ok: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
