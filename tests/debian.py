"""Debian packages for the tests, fetched by tools/fetch-debian-deb (`apt-get download`
into $PVDBG_DEB_CACHE, default ~/.cache/pvdbg/debs, unpacked with `dpkg-deb -x`; nothing
is installed on the system).  Used for real guests no one here wrote, such as PV GRUB."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FETCH_TOOL = REPO / "tools" / "fetch-debian-deb"

GRUB_XEN_HOST = "grub-xen-host"
GRUB_I386_XEN_BIN = "usr/lib/grub-xen/grub-i386-xen.bin"
GRUB_X86_64_XEN_BIN = "usr/lib/grub-xen/grub-x86_64-xen.bin"


class DebianFetchError(RuntimeError):
    """A package or a file in it could not be had (one line, with the tool's message)."""


def fetch_package(name: str, timeout_s: float = 600.0) -> Path:
    """Directory holding package `name` (NAME or NAME=VERSION) unpacked."""
    try:
        proc = subprocess.run([str(FETCH_TOOL), name], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DebianFetchError(f"fetching {name} took longer than {timeout_s:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise DebianFetchError(f"cannot fetch Debian package {name}: {why[0]}")
    return Path(lines[-1])


def package_file(name: str, relpath: str) -> Path:
    """Path of `relpath` (e.g. usr/lib/...) inside package `name`."""
    path = fetch_package(name) / relpath
    if not path.is_file():
        raise DebianFetchError(f"package {name} has no file /{relpath}")
    return path


def grub_i386_xen() -> Path:
    """Debian's 32-bit PAE PV GRUB image."""
    return package_file(GRUB_XEN_HOST, GRUB_I386_XEN_BIN)
