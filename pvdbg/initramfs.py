"""Initramfs archives: the "newc" cpio format Linux unpacks into its rootfs, written and read
in pure Python, optionally gzip-compressed (the form `--initrd` takes).

Format: a 110-byte ASCII header ("070701" then thirteen 8-digit hex fields: ino, mode, uid,
gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check),
the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes; a symlink's data is
its target; the archive ends with the entry "TRAILER!!!".
ABI: Linux init/initramfs.c (do_header, do_name, do_copy, do_symlink, maybe_link: hard
links only for nlink >= 2), Documentation/driver-api/early-userspace/buffer-format.rst.
"""
from __future__ import annotations

import gzip
import re
import stat
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ["CpioEntry", "BadCpio", "newc_archive", "read_newc", "gzip_initramfs",
           "read_initramfs", "renumbered", "TRAILER", "MAX_INITRAMFS_BYTES"]

NEWC_MAGIC = b"070701"
NEWC_CRC_MAGIC = b"070702"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
MAX_INITRAMFS_BYTES = 1 << 30     # refuse to inflate archives past 1 GiB
_PATH_MAX = 4096                  # Linux PATH_MAX, the longest name do_header accepts
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")


class BadCpio(ValueError):
    """An archive this reader (like Linux's unpacker) would not accept; one-line message."""


@dataclass(frozen=True)
class CpioEntry:
    """One archive member.  `name` has no leading "/"; `mode` is the whole st_mode (type and
    permissions); `data` is a file's bytes or a symlink's target; `rdev_*` name a device
    node's major/minor numbers.  `ino` 0 means "number me" when writing."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0
    nlink: int = 0                # 0: 2 for directories, 1 otherwise
    ino: int = 0

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, bytes(data))

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_char_device(self) -> bool:
        return stat.S_ISCHR(self.mode)

    @property
    def target(self) -> str:
        """A symlink's target."""
        return self.data.decode("utf-8", "surrogateescape")


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(fields: dict[str, int]) -> bytes:
    out = bytearray(NEWC_MAGIC)
    for name in _FIELDS:
        value = fields.get(name, 0)
        if not 0 <= value <= 0xFFFFFFFF:
            raise BadCpio(f"cpio field {name} = {value} does not fit 8 hex digits")
        out += b"%08X" % value
    return bytes(out)


def _member(entry: CpioEntry, ino: int) -> bytes:
    name = entry.name.lstrip("/").encode("utf-8", "surrogateescape") + b"\0"
    if len(name) > _PATH_MAX:
        raise BadCpio(f"cpio name {entry.name[:40]!r}... is longer than {_PATH_MAX} bytes")
    if (entry.is_dir or entry.is_char_device or stat.S_ISBLK(entry.mode)) and entry.data:
        raise BadCpio(f"cpio entry {entry.name!r} is not a file or symlink but has data")
    nlink = entry.nlink or (2 if entry.is_dir else 1)
    header = _header({"ino": ino, "mode": entry.mode, "uid": entry.uid, "gid": entry.gid,
                      "nlink": nlink, "mtime": entry.mtime, "filesize": len(entry.data),
                      "rdevmajor": entry.rdev_major, "rdevminor": entry.rdev_minor,
                      "namesize": len(name)})
    return header + name + _pad4(HEADER_SIZE + len(name)) + entry.data + _pad4(len(entry.data))


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """An uncompressed newc archive of `entries`, in order, closed by the trailer.

    Entries with `ino` 0 get distinct numbers from 1 (nlink 1, so Linux makes no hard
    links).  A parent directory should come before what it holds, as Linux creates
    members in archive order.  Raises BadCpio for a value the format cannot hold.
    """
    out = bytearray()
    entries = list(entries)
    used = {entry.ino for entry in entries if entry.ino}
    next_ino = 1
    for entry in entries:
        ino = entry.ino
        if ino == 0:
            while next_ino in used:
                next_ino += 1
            ino = next_ino
        used.add(ino)
        out += _member(entry, ino)
    out += _header({"nlink": 1, "namesize": len(TRAILER) + 1}) + TRAILER.encode() + b"\0"
    out += _pad4(HEADER_SIZE + len(TRAILER) + 1)
    return bytes(out)


def read_newc(data: bytes) -> list[CpioEntry]:
    """The members of a newc (or newc-with-CRC) archive up to its trailer.

    Zero padding between archives is skipped and further archives read on, as Linux
    unpacks concatenated archives.  Raises BadCpio for anything malformed.
    """
    entries: list[CpioEntry] = []
    position = 0
    seen_trailer = False
    while position < len(data):
        if data[position] == 0:          # padding between concatenated archives
            position += 1
            continue
        magic = data[position:position + 6]
        if magic == b"070707":
            raise BadCpio(f"old binary/odc cpio member at offset {position:#x}; "
                          "Linux needs newc (cpio -H newc)")
        if magic not in (NEWC_MAGIC, NEWC_CRC_MAGIC):
            raise BadCpio(f"no newc cpio header at offset {position:#x} "
                          f"(starts {data[position:position + 6]!r})")
        if position + HEADER_SIZE > len(data):
            raise BadCpio(f"cpio header at offset {position:#x} is cut short")
        fields = {}
        for index, name in enumerate(_FIELDS):
            text = bytes(data[position + 6 + 8 * index:position + 14 + 8 * index])
            if not _HEX8.fullmatch(text):      # int() would take signs, spaces and '_'
                raise BadCpio(f"cpio field {name} at offset {position:#x} is not hex: "
                              f"{text!r}")
            fields[name] = int(text, 16)
        name_start = position + HEADER_SIZE
        name_end = name_start + fields["namesize"]
        if fields["namesize"] == 0 or fields["namesize"] > _PATH_MAX:
            raise BadCpio(f"cpio name size {fields['namesize']} at offset {position:#x}")
        if name_end > len(data) or data[name_end - 1] != 0:
            raise BadCpio(f"cpio name at offset {name_start:#x} is cut short or unterminated")
        name = data[name_start:name_end - 1].decode("utf-8", "surrogateescape")
        data_start = name_end + (-(name_end - position) % 4)
        data_end = data_start + fields["filesize"]
        if data_end > len(data):
            raise BadCpio(f"cpio member {name!r} is cut short by the end of the archive")
        position = data_end + (-data_end % 4)
        if name == TRAILER:
            seen_trailer = True
            continue
        seen_trailer = False
        entries.append(CpioEntry(
            name=name, mode=fields["mode"], data=bytes(data[data_start:data_end]),
            uid=fields["uid"], gid=fields["gid"], mtime=fields["mtime"],
            rdev_major=fields["rdevmajor"], rdev_minor=fields["rdevminor"],
            nlink=fields["nlink"], ino=fields["ino"]))
    if not seen_trailer:
        raise BadCpio("cpio archive has no TRAILER!!! at its end")
    return entries


def gzip_initramfs(entries: Iterable[CpioEntry], *, level: int = 9) -> bytes:
    """A gzip-compressed newc archive, byte-identical for the same entries (mtime 0)."""
    return gzip.compress(newc_archive(entries), compresslevel=level, mtime=0)


def read_initramfs(data: bytes) -> list[CpioEntry]:
    """The members of an initramfs image: gzip-compressed or plain newc."""
    if data[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(data, MAX_INITRAMFS_BYTES + 1)
        except zlib.error as exc:
            raise BadCpio(f"gzip-compressed initramfs is corrupt: {exc}") from exc
        if len(raw) > MAX_INITRAMFS_BYTES:
            raise BadCpio(f"initramfs inflates to more than {MAX_INITRAMFS_BYTES} bytes")
        if not inflater.eof:
            raise BadCpio("gzip-compressed initramfs ends inside the compressed stream")
        data = raw
    return read_newc(data)


def renumbered(entries: Iterable[CpioEntry]) -> list[CpioEntry]:
    """`entries` with inode numbers cleared (for comparing archives member by member)."""
    return [replace(entry, ino=0) for entry in entries]
