"""Symbol and line lookup (pvdbg.symbols), checked against nm and addr2line."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pvdbg.symbols import LineRow, Symbol, SymbolKind, SymbolTable
from test_elfnotes import gcc_build

SOURCE = """
int counter = 1;
const int table[4] = {1, 2, 3, 4};
static int scratch[16];

int add_one(int x)
{
    return x + 1;
}

__attribute__((aligned(64))) static int twice(int x)
{
    scratch[0] = x;
    return x * 2;
}

void start(void)
{
    counter = add_one(counter);
    counter = twice(counter);
    for (;;)
        counter++;
}
"""

LDS = """
ENTRY(start)
SECTIONS
{
  . = 0x100000;
  .text : { *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note.GNU-stack) *(.comment) *(.eh_frame) *(.note.gnu.property) }
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("symbols")
    script = out / "flat.lds"
    script.write_text(LDS)
    link = f"-Wl,-T,{script}"
    return {
        "dwarf5": gcc_build(out, "dwarf5.elf", SOURCE, "-O0", "-gdwarf-5", link),
        "dwarf4": gcc_build(out, "dwarf4.elf", SOURCE, "-O0", "-gdwarf-4", link),
        "nodebug": gcc_build(out, "nodebug.elf", SOURCE, "-O0", "-g0", link),
        "x86_64": gcc_build(out, "x86_64.elf", SOURCE, "-O0", "-g", link, bits=64),
    }


def table_of(path: Path) -> SymbolTable:
    return SymbolTable.from_elf(ELFFile(io.BytesIO(path.read_bytes())))


def nm_symbols(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) for text/data/bss/rodata symbols, as nm -S reports them."""
    output = subprocess.run(["nm", "-S", str(path)], capture_output=True, text=True,
                            check=True).stdout
    symbols = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2].lower() in "tdbr":
            symbols[fields[3]] = (int(fields[0], 16), int(fields[1], 16))
        elif len(fields) == 3 and fields[1].lower() in "tdbr":
            symbols[fields[2]] = (int(fields[0], 16), 0)
    return symbols


def addr2line(path: Path, addresses: list[int]) -> list[tuple[str, int] | None]:
    output = subprocess.run(["addr2line", "-e", str(path), *(hex(a) for a in addresses)],
                            capture_output=True, text=True, check=True).stdout
    results = []
    for line in output.splitlines():
        location = line.split(" (discriminator")[0]
        file_name, _, number = location.rpartition(":")
        results.append(None if file_name == "??" or number in ("?", "0") else
                       (file_name, int(number)))
    return results


@pytest.mark.parametrize("build", ["dwarf5", "nodebug", "x86_64"])
def test_symbols_match_nm(built, build):
    symbols = table_of(built[build])
    expected = nm_symbols(built[build])
    assert set(expected) <= set(symbols.names())
    for name, (address, _size) in expected.items():
        assert symbols.address(name) == address, name
    assert {"add_one", "twice", "start", "counter", "table", "scratch"} <= set(symbols.names())
    assert "dwarf5.elf.c" not in symbols.names()     # STT_FILE symbols are left out
    assert all(name for name in symbols.names())     # and so are (nameless) section symbols


def test_lookup_and_format(built):
    symbols = table_of(built["dwarf5"])
    add_one = symbols.address("add_one")
    assert symbols.lookup(add_one) == ("add_one", 0)
    assert symbols.lookup(add_one + 3) == ("add_one", 3)
    assert symbols.format(add_one) == "add_one"
    assert symbols.format(add_one + 0x12 - 0x10) == "add_one+0x2"
    assert symbols.lookup(0x1000) is None
    assert symbols.format(0x1000) == "0x1000"
    table = symbols.address("table")
    assert symbols.format(table + 8) == "table+0x8"
    kinds = {s.name: s.kind for s in symbols}
    assert kinds["add_one"] == SymbolKind.FUNC and kinds["table"] == SymbolKind.OBJECT
    assert not next(s for s in symbols if s.name == "twice").is_global


def test_sized_symbol_does_not_cover_the_padding_after_it(built):
    symbols = table_of(built["dwarf5"])
    add_one = next(s for s in symbols if s.name == "add_one")
    twice = symbols.address("twice")
    assert add_one.size > 0
    gap = add_one.address + add_one.size
    assert gap < twice, "aligned(64) should leave padding after add_one"
    assert symbols.lookup(gap - 1) == ("add_one", add_one.size - 1)
    assert symbols.lookup(gap) is None
    assert symbols.format(gap) == f"{gap:#x}"


@pytest.mark.parametrize("build", ["dwarf5", "dwarf4", "x86_64"])
def test_line_for_matches_addr2line(built, build):
    path = built[build]
    symbols = table_of(path)
    start = symbols.address("add_one")
    function = next(s for s in symbols if s.name == "start")
    addresses = list(range(start - 2, function.address + function.size + 2))
    expected = addr2line(path, addresses)
    assert [symbols.line_for(a) for a in addresses] == expected
    # gcc puts a function's first row on the line of its opening brace.
    file_name, line = symbols.line_for(function.address)
    assert file_name == str(path) + ".c"
    assert SOURCE.splitlines()[line - 2:line] == ["void start(void)", "{"]


def test_no_dwarf_gives_no_lines(built):
    symbols = table_of(built["nodebug"])
    assert symbols.line_for(symbols.address("start")) is None
    assert symbols.line_error is None


def corrupt_section(path: Path, name: str, filler: bytes) -> bytes:
    data = bytearray(path.read_bytes())
    section = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(name)
    start, size = section["sh_offset"], section["sh_size"]
    data[start:start + size] = (filler * size)[:size]
    return bytes(data)


@pytest.mark.parametrize("section, filler", [
    (".debug_line", b"\xff"),
    (".debug_line", b"\x00"),
    (".debug_info", b"\xff"),
    (".debug_abbrev", b"\x07"),
    (".debug_line_str", b"\xff"),
])
def test_broken_dwarf_gives_none_not_an_exception(built, section, filler):
    data = corrupt_section(built["dwarf5"], section, filler)
    symbols = SymbolTable.from_elf(ELFFile(io.BytesIO(data)))
    start = symbols.address("start")
    assert start is not None
    result = symbols.line_for(start)
    assert result is None or isinstance(result, tuple)
    assert symbols.line_for(start) == result        # built once, answers stay the same


def test_garbage_symtab_gives_empty_table(built):
    data = corrupt_section(built["dwarf5"], ".symtab", b"\xff")
    symbols = SymbolTable.from_elf(ELFFile(io.BytesIO(data)))
    assert len(symbols) == 0 and symbols.lookup(0x100000) is None


def test_unreadable_symtab_is_reported_not_raised(built):
    data = bytearray(built["dwarf5"].read_bytes())
    elffile = ELFFile(io.BytesIO(bytes(data)))
    index = elffile.get_section_index(".symtab")
    flags_at = elffile["e_shoff"] + index * elffile["e_shentsize"] + 8   # Elf32_Shdr.sh_flags
    data[flags_at:flags_at + 4] = (0x800).to_bytes(4, "little")        # SHF_COMPRESSED
    symbols = SymbolTable.from_elf(ELFFile(io.BytesIO(bytes(data))))
    assert len(symbols) == 0
    assert symbols.load_error.startswith("symbol table unreadable")


# --------------------------------------------------------------------------- constructed tables

def sym(name: str, address: int, size: int = 0, kind: SymbolKind = SymbolKind.FUNC,
        is_global: bool = True) -> Symbol:
    return Symbol(name, address, size, kind, is_global)


def test_empty_table():
    symbols = SymbolTable.empty()
    assert len(symbols) == 0 and list(symbols) == []
    assert symbols.lookup(0x1234) is None
    assert symbols.format(0x1234) == "0x1234"
    assert symbols.address("start") is None
    assert symbols.names() == ()
    assert symbols.line_for(0x1234) is None


def test_best_symbol_at_an_address_wins():
    symbols = SymbolTable([
        sym("label", 0x1000, kind=SymbolKind.NOTYPE, is_global=False),
        sym("local_func", 0x1000, 0x10, is_global=False),
        sym("func", 0x1000, 0x10),
        sym("next", 0x2000),
    ])
    assert symbols.lookup(0x1004) == ("func", 4)
    # Past the sized symbols' end the unsized label still covers the address.
    assert symbols.lookup(0x1800) == ("label", 0x800)
    assert symbols.lookup(0x2345) == ("next", 0x345)
    assert symbols.lookup(0xFFF) is None


def test_address_prefers_global_and_names_are_unique_sorted():
    symbols = SymbolTable([sym("dup", 0x3000, is_global=False), sym("dup", 0x1000),
                           sym("alpha", 0x2000), sym("dup", 0x4000, is_global=False)])
    assert symbols.address("dup") == 0x1000
    assert symbols.names() == ("alpha", "dup")
    assert [s.address for s in symbols] == [0x1000, 0x2000, 0x3000, 0x4000]


def test_many_symbols_bisect():
    symbols = SymbolTable(sym(f"f{i}", 0x100000 + 16 * i, 8) for i in range(100_000))
    for i in range(0, 100_000, 997):
        assert symbols.lookup(0x100000 + 16 * i + 5) == (f"f{i}", 5)
        assert symbols.lookup(0x100000 + 16 * i + 9) is None


def test_line_rows_read_lazily_once_and_sorted():
    calls = []

    def rows():
        calls.append(1)
        return [LineRow(0x1010, "a.c", 12), LineRow(0x1000, "a.c", 10),
                LineRow(0x1020, "", None), LineRow(0x1020, "b.c", 3), LineRow(0x1030, "", None),
                LineRow(0x1040, "c.c", 0), LineRow(0x1044, "", None)]

    symbols = SymbolTable([], line_rows=rows)
    assert calls == []
    assert symbols.line_for(0xFFF) is None
    assert symbols.line_for(0x1000) == ("a.c", 10)
    assert symbols.line_for(0x100F) == ("a.c", 10)
    assert symbols.line_for(0x1010) == ("a.c", 12)
    assert symbols.line_for(0x1020) == ("b.c", 3)     # a sequence starts where one ended
    assert symbols.line_for(0x1030) is None
    assert symbols.line_for(0x1042) is None            # line 0: no source line
    assert calls == [1]


def test_line_rows_failure_means_no_lines():
    def rows():
        raise ValueError("corrupt")

    symbols = SymbolTable([], line_rows=rows)
    assert symbols.line_for(0x1000) is None
    assert "ValueError: corrupt" in symbols.line_error


def test_line_table_built_once_across_threads():
    calls = []
    gate = threading.Event()

    def rows():
        calls.append(1)
        gate.wait(1)
        return [LineRow(0x1000, "a.c", 1)]

    symbols = SymbolTable([], line_rows=rows)
    results = []
    threads = [threading.Thread(target=lambda: results.append(symbols.line_for(0x1000)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert results == [("a.c", 1)] * 8


# --------------------------------------------------------------------------- 64-bit, lazy lines

def without_aranges(path: Path) -> bytes:
    """The ELF with .debug_aranges renamed, so only the read-everything path is left."""
    data = bytearray(path.read_bytes())
    elffile = ELFFile(io.BytesIO(bytes(data)))
    names = elffile.get_section(elffile["e_shstrndx"])
    section = elffile.get_section_by_name(".debug_aranges")
    at = names["sh_offset"] + section["sh_name"]
    assert data[at:at + 14] == b".debug_aranges"
    data[at:at + 14] = b".debug_arangez"
    return bytes(data)


@pytest.mark.parametrize("build", ["dwarf5", "dwarf4", "x86_64"])
def test_unit_index_and_full_read_agree(built, build):
    indexed = table_of(built[build])
    assert indexed._line_index is not None                 # gcc emits .debug_aranges
    full = SymbolTable.from_elf(ELFFile(io.BytesIO(without_aranges(built[build]))))
    assert full._line_index is None
    first = indexed.address("add_one")
    last = next(s for s in indexed if s.name == "start")
    for address in range(first - 4, last.address + last.size + 4):
        assert indexed.line_for(address) == full.line_for(address), hex(address)


def test_x86_64_symbols_and_lines_from_path(built):
    path = built["x86_64"]
    symbols = SymbolTable.from_path(path)
    start = next(s for s in symbols if s.name == "start")
    assert start.kind == SymbolKind.FUNC and start.size > 0 and start.is_global
    assert symbols.format(start.address + 1) == "start+0x1"
    assert symbols.line_for(start.address) == addr2line(path, [start.address])[0]
    assert symbols.line_for(0x10) is None                  # outside every unit's aranges


def test_from_path_problems_are_reported_not_raised(tmp_path):
    missing = SymbolTable.from_path(tmp_path / "nope")
    assert len(missing) == 0 and missing.load_error.startswith("cannot read")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf at all" * 4)
    table = SymbolTable.from_path(junk)
    assert len(table) == 0 and "no readable ELF" in table.load_error
    assert table.line_for(0x1000) is None


def test_relocatable_object_lines_are_relocated(tmp_path):
    """An ET_REL object's DWARF needs its relocations applied (a linked kernel's does not)."""
    source = tmp_path / "obj.c"
    source.write_text(SOURCE)
    obj = tmp_path / "obj.o"
    subprocess.run(["gcc", "-m64", "-O0", "-g", "-ffreestanding", "-c", "-o", str(obj),
                    str(source)], check=True, capture_output=True)
    symbols = SymbolTable.from_path(obj)
    start = symbols.address("start")
    file_name, line = symbols.line_for(start)
    assert file_name.endswith("obj.c")
    assert SOURCE.splitlines()[line - 2:line] == ["void start(void)", "{"]


@pytest.mark.slow
def test_debian_vmlinux_symbols_and_lines():
    """Debian's DWARF vmlinux (the -dbg package, ~600 MB): symbols in well under a
    second, the first line lookup in a few seconds, later ones in the same unit at once.
    Run with PVDBG_SLOW=1 (downloads ~270 MiB once)."""
    import time
    from debian_kernel import fetch_debian_vmlinux_dbg
    path = fetch_debian_vmlinux_dbg().path
    began = time.monotonic()
    symbols = SymbolTable.from_path(path)
    loaded = time.monotonic() - began
    assert len(symbols) > 100_000 and loaded < 5
    start_kernel = symbols.address("xen_start_kernel")
    startup = symbols.address("startup_xen")
    assert start_kernel >> 32 == 0xFFFFFFFF and startup >> 32 == 0xFFFFFFFF
    began = time.monotonic()
    file_name, line = symbols.line_for(start_kernel)
    first = time.monotonic() - began
    assert file_name.endswith("arch/x86/xen/enlighten_pv.c") and line > 0 and first < 20
    began = time.monotonic()
    assert symbols.line_for(start_kernel + 4) is not None
    assert time.monotonic() - began < 0.1
    asm_file, _ = symbols.line_for(startup)        # head_64.S includes xen-head.S
    assert os.path.normpath(asm_file).endswith("arch/x86/xen/xen-head.S")
    print(f"vmlinux {path.stat().st_size >> 20} MiB: {len(symbols)} symbols in {loaded:.2f} s, "
          f"first line lookup {first:.2f} s")
