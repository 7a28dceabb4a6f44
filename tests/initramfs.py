"""The milestone-B initramfs: Debian's static busybox in a gzip-compressed newc cpio, built
in Python (pvdbg/initramfs.py) and cached next to the packages.

Layout: /init is a script run by busybox sh (`#!/bin/busybox sh`; a symlink named init
would make busybox run its `init` applet instead) that puts /bin on PATH, prints
INIT_BANNER and execs an interactive busybox sh on the console, whose prompt is
busybox's default "\\w \\$ ", i.e. "/ # ".  /bin holds busybox and one symlink per applet in
APPLETS (uname among them, for `uname -a`); /dev/console (char 5:1) and /dev/null (1:3)
are nodes in the archive, as the kernel's own default list has /dev/console.

`python3 tests/initramfs.py` builds (or finds) the image and prints its path and size.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from debian import BUSYBOX_BIN, BUSYBOX_STATIC, DebianFetchError, fetch_package  # noqa: E402
from debian_kernel import cache_dir  # noqa: E402
from pvdbg.initramfs import CpioEntry, gzip_initramfs  # noqa: E402

INIT_BANNER = "pvdbg initramfs: /init is busybox sh"
SHELL_PROMPT = "/ # "
APPLETS = ("sh", "ash", "uname", "ls", "cat", "echo", "mount", "umount", "mkdir", "dmesg",
           "ps", "sleep", "true", "false", "poweroff", "reboot")
INIT_SCRIPT = f"""#!/bin/busybox sh
export PATH=/bin
echo '{INIT_BANNER}'
exec /bin/busybox sh
"""


def busybox_entries(busybox: bytes, *, applets: tuple[str, ...] = APPLETS,
                    init_script: str = INIT_SCRIPT) -> list[CpioEntry]:
    """The archive members, parents first (Linux creates them in archive order)."""
    return [
        CpioEntry.directory("bin"),
        CpioEntry.directory("dev"),
        CpioEntry.char_device("dev/console", 5, 1, 0o600),
        CpioEntry.char_device("dev/null", 1, 3, 0o666),
        CpioEntry.directory("proc", 0o555),
        CpioEntry.directory("sys", 0o555),
        CpioEntry.directory("tmp", 0o1777),
        CpioEntry.directory("root", 0o700),
        CpioEntry.file("bin/busybox", busybox, 0o755),
        *(CpioEntry.symlink(f"bin/{applet}", "busybox") for applet in applets),
        CpioEntry.file("init", init_script.encode(), 0o755),
    ]


@dataclass(frozen=True)
class Initramfs:
    """A built image: its path, the busybox package directory it came from, its size."""

    path: Path
    busybox_package: Path
    size: int


def busybox_binary() -> Path:
    """Debian's static x86-64 busybox (package busybox-static, fetched on first use)."""
    path = fetch_package(BUSYBOX_STATIC) / BUSYBOX_BIN
    if not path.is_file():
        raise DebianFetchError(f"package {BUSYBOX_STATIC} has no file /{BUSYBOX_BIN}")
    return path


def build_busybox_initramfs() -> Initramfs:
    """The gzip-compressed image, built once per busybox and script (cached by content)."""
    busybox = busybox_binary()
    data = busybox.read_bytes()
    key = hashlib.sha256(data + INIT_SCRIPT.encode() + " ".join(APPLETS).encode()).hexdigest()
    path = cache_dir() / f"initramfs-busybox-{key[:16]}.cpio.gz"
    if not path.is_file():
        image = gzip_initramfs(busybox_entries(data))
        partial = path.with_suffix(".partial")
        partial.write_bytes(image)
        partial.rename(path)
    return Initramfs(path, busybox.parent.parent, path.stat().st_size)


def main() -> int:
    try:
        built = build_busybox_initramfs()
    except DebianFetchError as exc:
        print(f"initramfs: {exc}", file=sys.stderr)
        return 1
    print(f"{built.path}  ({built.size / 2**20:.2f} MiB, "
          f"busybox from {built.busybox_package.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
