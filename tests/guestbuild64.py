"""Build tiny 64-bit PV test guests from assembly with the machine's gcc (-m64)."""
from __future__ import annotations

import subprocess
from pathlib import Path

VIRT_BASE = 0xFFFFFFFF80000000
KERNEL_VA = 0xFFFFFFFF80100000

_NOTE_LIST = [(6, ".asciz", '"pvdbg-test64"'), (5, ".asciz", '"xen-3.0"'),
              (3, ".quad", f"{VIRT_BASE:#x}"), (4, ".quad", "0"), (1, ".quad", "_start"),
              (8, ".asciz", '"generic"')]


def _note(index: int, kind: int, directive: str, value: str) -> str:
    return (f'.pushsection .note.Xen, "a", @note\n.balign 4\n.long 4\n.long 2{index}f - 1{index}f\n'
            f'.long {kind}\n.asciz "Xen"\n.balign 4\n1{index}: {directive} {value}\n2{index}: .balign 4\n'
            '.popsection\n')


HYPERCALL_PAGE_NOTE = _note(9, 2, ".quad", "hypercall_page") + """
.text
.balign 4096
hypercall_page: .skip 4096
"""

LINKER_SCRIPT = f"""ENTRY(_start)
SECTIONS
{{
  . = {KERNEL_VA:#x};
  .text : AT(ADDR(.text) - {VIRT_BASE:#x}) {{ *(.note.Xen) *(.text*) }}
  . = ALIGN(4096);
  .data : AT(ADDR(.data) - {VIRT_BASE:#x}) {{ *(.data*) *(.bss*) }}
}}
"""


def build_asm_guest64(tmp: Path, body: str, name: str = "guest64", *,
                      hypercall_page: bool = False) -> Path:
    """Assemble `body` (AT&T, 64-bit; must define _start) into a 64-bit PV ELF."""
    notes = "".join(_note(i, *n) for i, n in enumerate(_NOTE_LIST))
    if hypercall_page:
        notes += HYPERCALL_PAGE_NOTE
    src = tmp / f"{name}.S"
    src.write_text(notes + "\n.text\n" + body + "\n")
    lds = tmp / f"{name}.lds"
    lds.write_text(LINKER_SCRIPT)
    out = tmp / f"{name}.elf"
    subprocess.run(["gcc", "-m64", "-nostdlib", "-static", "-fno-pic", "-no-pie",
                    "-mcmodel=kernel", "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096",
                    "-T", str(lds), str(src), "-o", str(out)], check=True, capture_output=True)
    return out
