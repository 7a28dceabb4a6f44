"""Hostile kernel images at the command line (issue 9 item 4).

Mutated and truncated copies of the bundled seed guest (bad headers, program headers
out of range, overlapping or huge segments, notes with bad sizes, entry outside the
image) go through `pvdbg run`. Every one either stops with exactly one `pvdbg: ...`
line on stderr and exit 2, or still loads and then boots, crashes or hits the
instruction bound cleanly (exit 0, 1, 3, 4 or 5) with no traceback: never exit 70.

Most cases run `pvdbg.cli.main` in-process (milliseconds each); a few run the real
command in a subprocess. Long run: PVDBG_SLOW=1 python -m pytest -m slow
tests/test_elf_fuzz_cli.py (PVDBG_FUZZ_EXAMPLES scales it).
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdbg import cli
from pvdbg.session import bundled_guest_path

CI_EXAMPLES = 200
LONG_EXAMPLES = max(10_000, int(os.environ.get("PVDBG_FUZZ_EXAMPLES", "100000")) // 10)
RUN_ARGS = ["--memory", "16", "--max-insns", "300000", "--timeout", "20"]
CLEAN_EXITS = {0, 1, 3, 4, 5}
PT_LOAD, PT_NOTE = 1, 4


@dataclass(frozen=True)
class Layout:
    """Where the seed ELF keeps the fields worth breaking (offsets into the file)."""

    data: bytes
    phdrs: tuple[int, ...]               # offset of each program header
    loads: tuple[int, ...]               # offsets of the PT_LOAD headers
    notes: tuple[tuple[int, int], ...]   # (offset of a note header, offset of its desc)
    header_fields: tuple[tuple[int, int], ...]   # (offset, size) of every header field


def _layout(data: bytes) -> Layout:
    phoff, shoff = struct.unpack_from("<2I", data, 28)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<4H", data, 42)
    fields = [(4, 1), (5, 1), (6, 1), (16, 2), (18, 2), (20, 4), (24, 4), (28, 4), (32, 4),
              (36, 4), (40, 2), (42, 2), (44, 2), (46, 2), (48, 2), (50, 2)]
    phdrs, loads, notes = [], [], []
    for index in range(phnum):
        base = phoff + phentsize * index
        phdrs.append(base)
        fields += [(base + 4 * k, 4) for k in range(8)]
        p_type, p_offset, _, _, p_filesz = struct.unpack_from("<5I", data, base)
        if p_type == PT_LOAD:
            loads.append(base)
        if p_type == PT_NOTE:
            at = p_offset
            while at + 12 <= p_offset + p_filesz:
                namesz, descsz, _ = struct.unpack_from("<3I", data, at)
                desc = at + 12 + (namesz + 3 & ~3)
                notes.append((at, desc))
                fields += [(at, 4), (at + 4, 4), (at + 8, 4)]
                if descsz == 4:
                    fields.append((desc, 4))
                at = desc + (descsz + 3 & ~3)
    for index in range(shnum):
        fields += [(shoff + shentsize * index + 4 * k, 4) for k in range(10)]
    return Layout(data, tuple(phdrs), tuple(loads), tuple(notes), tuple(fields))


@pytest.fixture(scope="module")
def seed() -> Layout:
    layout = _layout(bundled_guest_path().read_bytes())
    assert len(layout.loads) >= 2 and layout.notes, "the seed guest changed shape"
    return layout


INTERESTING = [0, 1, 2, 3, 4, 0xFFF, 0x1000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0x3FFFFFFF, 0x40000000, 0xBFFFFFFF, 0xC0000000, 0xC0001000, 0xC0400000,
               0xF5800000, 0xFFFFF000]
value32 = st.sampled_from(INTERESTING) | st.integers(0, (1 << 32) - 1)


def _put(out: bytearray, offset: int, size: int, value: int) -> None:
    if 0 <= offset and offset + size <= len(out):
        out[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


@st.composite
def mutated(draw: st.DrawFn, layout: Layout) -> bytes:
    """1-4 mutations: generic (field, flip, truncate) and structural ones."""
    data = layout.data
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "flip", "truncate", "overlap", "huge",
                                     "phdrs_out", "note_size", "entry", "append"]))
        if kind == "field":
            offset, size = draw(st.sampled_from(layout.header_fields))
            _put(out, offset, size, draw(value32))
        elif kind == "flip" and out:
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[draw(st.sampled_from([0, 4, 16, 51, 52, 60, layout.phdrs[-1] + 16])
                         | st.integers(0, len(out))):]
        elif kind == "overlap":                  # second PT_LOAD onto the first one
            first, second = layout.loads[0], layout.loads[1]
            paddr = struct.unpack_from("<I", data, first + 12)[0]
            _put(out, second + 12, 4, paddr + draw(st.integers(0, 0x3000)))
        elif kind == "huge":                     # p_memsz (and maybe p_filesz) huge
            load = draw(st.sampled_from(layout.loads))
            _put(out, load + 20, 4, draw(st.sampled_from([0x3FFFF000, 0x40000000, 0x7FFFFFFF,
                                                          0xFFFFFFFF, 0x10000000]) | value32))
            if draw(st.booleans()):
                _put(out, load + 16, 4, draw(value32))
        elif kind == "phdrs_out":                # e_phoff/e_phnum past the end of the file
            _put(out, 28, 4, len(data) - draw(st.integers(0, 64)))
            if draw(st.booleans()):
                _put(out, 44, 2, draw(st.integers(0, 0xFFFF)))
        elif kind == "note_size":                # namesz/descsz that overrun the note area
            note, _ = draw(st.sampled_from(layout.notes))
            _put(out, note + draw(st.sampled_from([0, 4])), 4,
                 draw(st.sampled_from([0, 1, 3, 5, 0x1000, 0xFFFFFFFF, 0x7FFFFFFF]) | value32))
        elif kind == "entry":                    # e_entry and/or the ENTRY note elsewhere
            target = draw(value32)
            _put(out, 24, 4, target)
            for note, desc in layout.notes:
                if struct.unpack_from("<I", data, note + 8)[0] == 1:     # XEN_ELFNOTE_ENTRY
                    _put(out, desc, 4, target)
        elif kind == "append":
            out += draw(st.binary(min_size=1, max_size=64))
    return bytes(out)


def run_cli(path: Path) -> tuple[int, str, bytes]:
    """`pvdbg run PATH` in this process: (exit status, stderr, console bytes)."""
    console = io.BytesIO()
    stdout = io.TextIOWrapper(console, encoding="utf-8")
    stderr = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(["run", str(path), *RUN_ARGS])
        except SystemExit as leave:          # argparse; never expected here
            code = leave.code if isinstance(leave.code, int) else 99
    stdout.flush()
    return code, stderr.getvalue(), console.getvalue()


def check_outcome(code: int, stderr: str, name: str) -> None:
    assert "Traceback" not in stderr and code != 70, stderr
    if code == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pvdbg: {name}: "), stderr
        assert len(lines[0]) < 400, lines[0]
    else:
        assert code in CLEAN_EXITS, (code, stderr)
        assert "pvdbg: stopped:" in stderr


def _mutated_images_fail_cleanly(seed: Layout, tmp_path_factory, data: st.DataObject) -> None:
    path = tmp_path_factory.getbasetemp() / "mutant.elf"
    path.write_bytes(data.draw(mutated(seed), label="image"))
    code, stderr, _ = run_cli(path)
    check_outcome(code, stderr, str(path))


_fuzz_given = given(data=st.data())
_fuzz_settings = dict(deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.function_scoped_fixture])
test_mutated_images_fail_cleanly = settings(max_examples=CI_EXAMPLES, **_fuzz_settings)(
    _fuzz_given(_mutated_images_fail_cleanly))
test_mutated_images_fail_cleanly_long = pytest.mark.slow(
    settings(max_examples=LONG_EXAMPLES, **_fuzz_settings)(
        _fuzz_given(_mutated_images_fail_cleanly)))


# -- fixed mutations: the classes the issue names, in-process and as a real command -------

def _fixed(layout: Layout, what: str) -> bytes:
    data = layout.data
    out = bytearray(data)
    first, second = layout.loads[0], layout.loads[1]
    if what == "truncated header":
        return data[:40]
    if what == "truncated segment":
        return data[:struct.unpack_from("<I", data, first + 4)[0] + 100]
    if what == "not elf":
        out[1] = ord("X")
    elif what == "64-bit class":
        out[4] = 2
    elif what == "phdrs past end":
        _put(out, 28, 4, len(data) - 8)
    elif what == "phnum huge":
        _put(out, 44, 2, 0xFFFF)
    elif what == "overlapping segments":
        _put(out, second + 12, 4, struct.unpack_from("<I", data, first + 12)[0] + 0x1000)
    elif what == "huge segment":                 # fits the address space, not --memory 16
        _put(out, second + 20, 4, 0x08000000)
    elif what == "segment past 4 GiB":
        _put(out, second + 12, 4, 0x3FFFF000)
        _put(out, second + 20, 4, 0x3FFFF000)
    elif what == "filesz past end":
        _put(out, first + 16, 4, 0x7FFFFFFF)
    elif what == "note descsz huge":
        _put(out, layout.notes[0][0] + 4, 4, 0xFFFFFFF0)
    elif what == "note namesz huge":
        _put(out, layout.notes[0][0], 4, 0x7FFFFFFF)
    elif what == "entry outside":
        for note, desc in layout.notes:
            if struct.unpack_from("<I", data, note + 8)[0] == 1:
                _put(out, desc, 4, 0xF0000000)
    else:
        raise ValueError(what)
    return bytes(out)


FIXED = ["truncated header", "truncated segment", "not elf", "64-bit class", "phdrs past end",
         "phnum huge", "overlapping segments", "huge segment", "segment past 4 GiB",
         "filesz past end", "note descsz huge", "note namesz huge", "entry outside"]


@pytest.mark.parametrize("what", FIXED)
def test_each_class_of_bad_image_is_one_line_and_exit_2(seed: Layout, tmp_path: Path,
                                                         what: str) -> None:
    path = tmp_path / "bad.elf"
    path.write_bytes(_fixed(seed, what))
    code, stderr, console = run_cli(path)
    assert code == 2, (what, code, stderr)
    check_outcome(code, stderr, str(path))
    assert console == b""


@pytest.mark.e2e
@pytest.mark.parametrize("what", ["truncated segment", "overlapping segments",
                                  "note descsz huge", "entry outside", "phdrs past end"])
def test_bad_image_as_a_real_command(seed: Layout, tmp_path: Path, what: str) -> None:
    path = tmp_path / "bad.elf"
    path.write_bytes(_fixed(seed, what))
    done = subprocess.run([sys.executable, "-m", "pvdbg.cli", "run", str(path), *RUN_ARGS],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert done.stdout == ""
    check_outcome(done.returncode, done.stderr, str(path))


@pytest.mark.e2e
def test_mutant_that_still_loads_runs_cleanly_as_a_real_command(seed: Layout,
                                                                tmp_path: Path) -> None:
    """Extra bytes after the image and a wrong e_entry (Xen takes the ENTRY note) still
    boot: the real command powers off and exits 0."""
    out = bytearray(seed.data) + b"\xde\xad" * 7
    _put(out, 24, 4, 0x12345678)
    path = tmp_path / "odd.elf"
    path.write_bytes(bytes(out))
    done = subprocess.run([sys.executable, "-m", "pvdbg.cli", "run", str(path), *RUN_ARGS],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode in CLEAN_EXITS, done
    check_outcome(done.returncode, done.stderr, str(path))


def test_internal_error_is_exit_70_with_one_summary_line(monkeypatch, tmp_path: Path) -> None:
    """Anything unexpected is reported as a pvdbg bug (exit 70), never as a guest crash."""
    def broken(args):
        raise RuntimeError("simulated bug")
    monkeypatch.setitem(cli.COMMANDS, "run", broken)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert cli.main(["run"]) == 70
    assert stderr.getvalue().splitlines()[0] == (
        "pvdbg: internal error: RuntimeError: simulated bug (please report it with the "
        "traceback below)")
