"""tools/fetch-debian-deb: download and unpack a real Debian package without installing it."""
from __future__ import annotations

import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from debian import (FETCH_TOOL, GRUB_XEN_HOST, DebianFetchError, fetch_package, grub_i386_xen,
                    package_file)


@pytest.mark.e2e
def test_grub_xen_host_gives_a_32bit_pv_elf():
    path = grub_i386_xen()
    with path.open("rb") as f:
        assert f.read(4) == b"\x7fELF"
        f.seek(0)
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf["e_machine"] == "EM_386"
        notes = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE"]
        assert notes, "no PT_NOTE segment"
        f.seek(notes[0]["p_offset"])
        assert b"Xen\0" in f.read(notes[0]["p_filesz"])      # Xen ELF notes: a PV kernel
    # A second fetch is served from the cache and lands on the same file.
    assert package_file(GRUB_XEN_HOST, "usr/lib/grub-xen/grub-i386-xen.bin") == path


@pytest.mark.e2e
def test_errors_are_one_line():
    with pytest.raises(DebianFetchError, match="apt knows no package"):
        fetch_package("pvdbg-no-such-package")
    with pytest.raises(DebianFetchError, match="has no file"):
        package_file(GRUB_XEN_HOST, "usr/lib/grub-xen/no-such-file.bin")


def test_tool_rejects_bad_names_without_touching_apt():
    proc = subprocess.run([str(FETCH_TOOL), "Bad;name"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == "fetch-debian-deb: bad package name: Bad;name"
    proc = subprocess.run([str(FETCH_TOOL)], capture_output=True, text=True)
    assert proc.returncode == 1 and "usage" in proc.stderr
