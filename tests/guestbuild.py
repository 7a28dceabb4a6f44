"""Build tiny 32-bit PV test guests from assembly with the machine's gcc."""
from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).parent

_NOTE_LIST = [(6, ".asciz", '"pvdbg-test"'), (5, ".asciz", '"xen-3.0"'), (3, ".long", "0xC0000000"),
              (4, ".long", "0"), (1, ".long", "_start"), (2, ".long", "hypercall_page"),
              (8, ".asciz", '"generic"'), (9, ".asciz", '"yes"')]


def _note(index: int, kind: int, directive: str, value: str) -> str:
    return (f'.pushsection .note.Xen, "a", @note\n.balign 4\n.long 4\n.long 2{index}f - 1{index}f\n'
            f'.long {kind}\n.asciz "Xen"\n.balign 4\n1{index}: {directive} {value}\n2{index}: .balign 4\n'
            '.popsection\n')


NOTES = "".join(_note(i, *n) for i, n in enumerate(_NOTE_LIST)) + """
.text
.balign 4096
hypercall_page: .skip 4096
"""


def build_asm_guest(tmp: Path, body: str, name: str = "guest") -> Path:
    """Assemble `body` (AT&T, 32-bit; must define _start) into a PV ELF; return its path."""
    src = tmp / f"{name}.S"
    src.write_text(NOTES + "\n.text\n" + body + "\n")
    out = tmp / f"{name}.elf"
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-fno-pic", "-no-pie",
                    "-Wl,--build-id=none", "-T", str(HERE / "guests" / "mini.lds"),
                    str(src), "-o", str(out)], check=True, capture_output=True)
    return out
