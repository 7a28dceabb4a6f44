"""Symbol and source-line lookup for a guest kernel image (32- or 64-bit ELF).

Symbols come from the ELF .symtab (or .dynsym when there is no .symtab) and use
link-time virtual addresses. Source lines come from DWARF .debug_line, read lazily:
when the ELF has .debug_aranges (gcc emits it; Debian's vmlinux has it), `line_for`
finds the one compile unit covering the address there and parses only that unit's line
program, cached per unit, so a 600 MB vmlinux answers its first lookup in about a
second; without aranges every line program is read on the first `line_for`. DWARF
relocations are applied only for relocatable objects (ET_REL): a linked kernel keeps
.rela.debug_* sections (--emit-relocs) whose targets are already resolved. Broken or
missing tables give an empty answer, never an exception.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

__all__ = ["SymbolKind", "Symbol", "LineRow", "SymbolTable"]

_ET_REL = "ET_REL"

log = logging.getLogger(__name__)

# ELF symbol constants (System V gABI).
_STT_NOTYPE, _STT_OBJECT, _STT_FUNC, _STT_GNU_IFUNC = 0, 1, 2, 10
_STB_LOCAL = 0
_SHN_UNDEF, _SHN_ABS = 0, 0xFFF1
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11


class SymbolKind(IntEnum):
    """What a symbol names; lower values win when symbols share an address."""

    FUNC = 0
    OBJECT = 1
    NOTYPE = 2   # assembler labels without .type


@dataclass(frozen=True)
class Symbol:
    """One symbol: `address` is a guest virtual address, `size` in bytes (0 = unknown)."""

    name: str
    address: int
    size: int
    kind: SymbolKind
    is_global: bool

    def covers(self, address: int) -> bool:
        """Whether `address` is inside the symbol (always, from its start, if unsized)."""
        return address >= self.address and (self.size == 0 or address < self.address + self.size)


@dataclass(frozen=True)
class LineRow:
    """One row of a DWARF line table; `line` None marks an end of sequence."""

    address: int
    file: str
    line: int | None


def _rank(symbol: Symbol) -> tuple[int, int, int]:
    return (0 if symbol.size else 1, 0 if symbol.is_global else 1, int(symbol.kind))


class SymbolTable:
    """Address <-> name lookup over a fixed set of symbols, plus lazy line lookup.

    `line_rows` is called at most once, on the first `line_for`; it returns the
    DWARF line rows (any order) and may raise, which is taken as "no line info".
    """

    def __init__(self, symbols: Iterable[Symbol] = (),
                 line_rows: Callable[[], Iterable[LineRow]] | None = None,
                 *, load_error: str | None = None,
                 line_index: _DwarfLineIndex | None = None) -> None:
        self.load_error = load_error          # why the symbols could not be read, if so
        self.line_error: str | None = None    # why the line table could not be read, if so
        ordered = sorted(symbols, key=lambda s: (s.address, _rank(s)))
        self._symbols = tuple(ordered)
        # Distinct start addresses, each with its symbols best-first.
        self._starts: list[int] = []
        self._groups: list[list[Symbol]] = []
        for symbol in ordered:
            if self._starts and self._starts[-1] == symbol.address:
                self._groups[-1].append(symbol)
            else:
                self._starts.append(symbol.address)
                self._groups.append([symbol])
        self._by_name: dict[str, Symbol] = {}
        for symbol in ordered:
            known = self._by_name.get(symbol.name)
            if known is None or (symbol.is_global and not known.is_global):
                self._by_name[symbol.name] = symbol
        self._line_rows_source = line_rows
        self._line_lock = threading.Lock()
        self._line_addresses: list[int] | None = None
        self._line_rows: list[LineRow] = []
        self._line_index = line_index

    @classmethod
    def empty(cls) -> SymbolTable:
        """A table with no symbols and no line information."""
        return cls()

    @classmethod
    def from_elf(cls, elffile: ELFFile) -> SymbolTable:
        """Function, object and label symbols of `elffile`; DWARF lines read lazily.

        A broken symbol table gives an empty table (logged), never an exception.
        """
        try:
            symbols = _read_elf_symbols(elffile)
            load_error = None
        except Exception as exc:  # pyelftools raises many types on corrupt input
            load_error = f"symbol table unreadable ({type(exc).__name__}: {exc})"
            log.info("%s", load_error)
            symbols = []
        line_index = None
        try:
            if elffile.get_section_by_name(".debug_aranges") is not None:
                line_index = _DwarfLineIndex(elffile)
        except Exception:  # unreadable section names: fall back to reading every row
            line_index = None
        return cls(symbols, line_rows=lambda: _read_dwarf_line_rows(elffile),
                   load_error=load_error, line_index=line_index)

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> SymbolTable:
        """Symbols of the ELF file at `path` (e.g. a -dbg vmlinux), lines read lazily.

        The file stays open for the line lookups (read in place, never loaded whole).
        A file that is no ELF gives an empty table with `load_error` set.
        """
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        try:
            stream = open(path, "rb")
        except OSError as exc:
            return cls(load_error=f"cannot read {os.fspath(path)}: {exc.strerror or exc}")
        try:
            elffile = ELFFile(stream)
        except (ELFError, ValueError, OSError, EOFError) as exc:
            stream.close()
            return cls(load_error=f"{os.fspath(path)} is no readable ELF file ({exc})")
        return cls.from_elf(elffile)

    def __len__(self) -> int:
        return len(self._symbols)

    def __iter__(self) -> Iterator[Symbol]:
        """Symbols in address order."""
        return iter(self._symbols)

    def symbol_for(self, address: int) -> Symbol | None:
        """The symbol containing `address`: the nearest one at or below it that covers it."""
        index = bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        for symbol in self._groups[index]:
            if symbol.covers(address):
                return symbol
        return None

    def lookup(self, address: int) -> tuple[str, int] | None:
        """(name, offset in bytes) of the symbol containing `address`, or None."""
        symbol = self.symbol_for(address)
        return None if symbol is None else (symbol.name, address - symbol.address)

    def format(self, address: int) -> str:
        """"name+0x12", "name" at offset 0, or the address in hex when unknown."""
        found = self.lookup(address)
        if found is None:
            return f"{address:#x}"
        name, offset = found
        return f"{name}+{offset:#x}" if offset else name

    def address(self, name: str) -> int | None:
        """Address of the symbol called `name` (a global one if names clash)."""
        symbol = self._by_name.get(name)
        return None if symbol is None else symbol.address

    def names(self) -> tuple[str, ...]:
        """All symbol names, sorted, each once."""
        return tuple(sorted(self._by_name))

    def line_for(self, address: int) -> tuple[str, int] | None:
        """(source file, line) for `address` from DWARF .debug_line, or None."""
        if self._line_index is not None:
            with self._line_lock:
                table = self._line_index.table_for(address)
                if self._line_index.error is not None and self.line_error is None:
                    self.line_error = self._line_index.error
                    log.info("%s", self.line_error)
            if table is None:
                return None
            addresses, rows = table
        else:
            addresses = self._line_table()
            rows = self._line_rows
        index = bisect_right(addresses, address) - 1
        if index < 0:
            return None
        row = rows[index]
        if row.line is None or row.line == 0:
            return None
        return row.file, row.line

    def _line_table(self) -> list[int]:
        with self._line_lock:
            if self._line_addresses is None:
                rows: list[LineRow] = []
                if self._line_rows_source is not None:
                    try:
                        rows = list(self._line_rows_source())
                    except Exception as exc:  # broken DWARF: no line info, not a crash
                        self.line_error = (f"DWARF line table unreadable "
                                           f"({type(exc).__name__}: {exc})")
                        log.info("%s", self.line_error)
                        rows = []
                # At one address an end of sequence comes before a row that starts
                # there, so the row that applies from that address on sorts last.
                rows.sort(key=lambda r: (r.address, r.line is not None))
                self._line_rows = rows
                self._line_addresses = [r.address for r in rows]
            return self._line_addresses


def _read_elf_symbols(elffile: ELFFile) -> list[Symbol]:
    """Symbols of the first SHT_SYMTAB section (else SHT_DYNSYM), parsed with struct."""
    tables: dict[int, int] = {}
    for index in range(elffile.num_sections()):
        try:
            sh_type = elffile.get_section(index)["sh_type"]
        except Exception:  # one corrupt section header must not hide the others
            continue
        kind = {"SHT_SYMTAB": _SHT_SYMTAB, "SHT_DYNSYM": _SHT_DYNSYM}.get(sh_type)
        if kind is not None and kind not in tables:
            tables[kind] = index
    index = tables.get(_SHT_SYMTAB, tables.get(_SHT_DYNSYM))
    if index is None:
        return []
    section = elffile.get_section(index)
    strings = elffile.get_section(section["sh_link"]).data()
    raw = section.data()
    order = "<" if elffile.little_endian else ">"
    if elffile.elfclass == 32:
        layout = struct.Struct(order + "IIIBBH")   # name, value, size, info, other, shndx
    else:
        layout = struct.Struct(order + "IBBHQQ")   # name, info, other, shndx, value, size
    usable = len(raw) - len(raw) % layout.size
    symbols = []
    for fields in layout.iter_unpack(raw[:usable]):
        if elffile.elfclass == 32:
            st_name, st_value, st_size, st_info, _other, st_shndx = fields
        else:
            st_name, st_info, _other, st_shndx, st_value, st_size = fields
        st_type, st_bind = st_info & 0xF, st_info >> 4
        if st_type in (_STT_FUNC, _STT_GNU_IFUNC):
            kind = SymbolKind.FUNC
        elif st_type == _STT_OBJECT:
            kind = SymbolKind.OBJECT
        elif st_type == _STT_NOTYPE and st_shndx != _SHN_ABS:
            kind = SymbolKind.NOTYPE
        else:
            continue   # sections, files, TLS, common, and absolute untyped values
        if st_shndx == _SHN_UNDEF or st_name >= len(strings):
            continue
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end if end >= 0 else len(strings)].decode("utf-8", "replace")
        if not name or name.startswith(".L"):
            continue
        symbols.append(Symbol(name, st_value, st_size, kind, st_bind != _STB_LOCAL))
    return symbols


def _dwarf_info(elffile: ELFFile):
    """pyelftools' DWARFInfo, relocating the debug sections only for ET_REL objects."""
    return elffile.get_dwarf_info(relocate_dwarf_sections=elffile["e_type"] == _ET_REL)


def _read_dwarf_line_rows(elffile: ELFFile) -> list[LineRow]:
    """Every row of every line program in .debug_line, with file names resolved."""
    if not elffile.has_dwarf_info():
        return []
    dwarf = _dwarf_info(elffile)
    rows: list[LineRow] = []
    for unit in dwarf.iter_CUs():
        rows.extend(_unit_line_rows(dwarf, unit))
    return rows


def _unit_line_rows(dwarf, unit) -> list[LineRow]:
    """The rows of one compile unit's line program (none when it has no program)."""
    program = dwarf.line_program_for_CU(unit)
    if program is None:
        return []
    file_names = _line_program_file_names(program, _compilation_directory(unit))
    first_index = 0 if program["version"] >= 5 else 1
    rows: list[LineRow] = []
    for entry in program.get_entries():
        state = entry.state
        if state is None:
            continue
        if state.end_sequence:
            rows.append(LineRow(state.address, "", None))
            continue
        slot = state.file - first_index
        file_name = file_names[slot] if 0 <= slot < len(file_names) else "??"
        rows.append(LineRow(state.address, file_name, state.line))
    return rows


class _DwarfLineIndex:
    """Line tables of one ELF, a compile unit at a time: .debug_aranges names the unit
    covering an address, whose line program is parsed on first use and kept.  The caller
    serialises calls.  `error` holds the first failure (the failing unit answers None)."""

    def __init__(self, elffile: ELFFile) -> None:
        self._elffile = elffile
        self._dwarf = None
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, int]] = []     # (begin, end, unit offset)
        self._opened = False
        self._tables: dict[int, tuple[list[int], list[LineRow]] | None] = {}
        self.error: str | None = None

    def _open(self) -> None:
        self._opened = True
        try:
            self._dwarf = _dwarf_info(self._elffile)
            aranges = self._dwarf.get_aranges()
            entries = [] if aranges is None else aranges.entries
            ranges = sorted((e.begin_addr, e.begin_addr + e.length, e.info_offset)
                            for e in entries if e.length > 0)
        except Exception as exc:  # broken DWARF: no line info, not a crash
            self._dwarf = None
            self.error = f"DWARF line table unreadable ({type(exc).__name__}: {exc})"
            return
        self._ranges = ranges
        self._starts = [begin for begin, _, _ in ranges]

    def unit_offset(self, address: int) -> int | None:
        """The .debug_info offset of the compile unit whose aranges cover `address`."""
        if not self._opened:
            self._open()
        index = bisect_right(self._starts, address) - 1
        # A zero-length or nested range may hide the one before it: look back one.
        for candidate in (index, index - 1):
            if candidate >= 0:
                begin, end, offset = self._ranges[candidate]
                if begin <= address < end:
                    return offset
        return None

    def table_for(self, address: int) -> tuple[list[int], list[LineRow]] | None:
        """(row addresses, rows) of the unit covering `address`, sorted, or None."""
        offset = self.unit_offset(address)
        if offset is None or self._dwarf is None:
            return None
        if offset not in self._tables:
            try:
                rows = _unit_line_rows(self._dwarf, self._dwarf.get_CU_at(offset))
            except Exception as exc:  # one broken unit costs its own lines only
                if self.error is None:
                    self.error = (f"DWARF line table of the unit at {offset:#x} unreadable "
                                  f"({type(exc).__name__}: {exc})")
                self._tables[offset] = None
                return None
            rows.sort(key=lambda r: (r.address, r.line is not None))
            self._tables[offset] = ([r.address for r in rows], rows)
        return self._tables[offset]


def _compilation_directory(unit) -> str:
    """DW_AT_comp_dir of a compile unit, or "" when it has none."""
    attribute = unit.get_top_DIE().attributes.get("DW_AT_comp_dir")
    if attribute is None:
        return ""
    value = attribute.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _line_program_file_names(program, comp_dir: str) -> list[str]:
    """Paths of a line program's files, as addr2line prints them.

    DWARF < 5 numbers include directories from 1, and 0 means the compilation
    directory; DWARF 5 numbers them from 0, entry 0 being the compilation
    directory. Relative paths are taken relative to the compilation directory.
    """
    version = program["version"]
    directories = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d)
                   for d in program["include_directory"]]
    if version < 5:
        directories.insert(0, comp_dir)
    names = []
    for file_entry in program["file_entry"]:
        name = file_entry.name
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        dir_index = file_entry.dir_index
        directory = directories[dir_index] if 0 <= dir_index < len(directories) else ""
        path = os.path.join(directory, name)
        if comp_dir and not os.path.isabs(path):
            path = os.path.join(comp_dir, path)
        names.append(path)
    return names
