"""Debian packages for the tests, fetched by tools/fetch-debian-deb (`apt-get download`
into $PVDBG_DEB_CACHE, default ~/.cache/pvdbg/debs, unpacked with `dpkg-deb -x`; nothing
is installed on the system).  Used for real guests no one here wrote (PV GRUB, GNU Mach)
and for the busybox an initramfs is built from."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FETCH_TOOL = REPO / "tools" / "fetch-debian-deb"

GRUB_XEN_HOST = "grub-xen-host"
GRUB_I386_XEN_BIN = "usr/lib/grub-xen/grub-i386-xen.bin"
GRUB_X86_64_XEN_BIN = "usr/lib/grub-xen/grub-x86_64-xen.bin"
GNUMACH_XEN = "gnumach-image-1.8-xen-486"
GNUMACH_XEN_IMAGE = "boot/gnumach-1.8-xen-486.gz"
BUSYBOX_STATIC = "busybox-static"
BUSYBOX_BIN = "bin/busybox"


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


def grub_x86_64_xen() -> Path:
    """Debian's 64-bit PV GRUB image."""
    return package_file(GRUB_XEN_HOST, GRUB_X86_64_XEN_BIN)


def gnumach_xen() -> Path:
    """GNU Mach's Xen image (gzip-compressed; an x86-64 ELF despite the package name)."""
    return package_file(GNUMACH_XEN, GNUMACH_XEN_IMAGE)


def busybox_static() -> Path:
    """Debian's statically linked x86-64 busybox."""
    return package_file(BUSYBOX_STATIC, BUSYBOX_BIN)
