"""Initramfs writer/reader (pvdbg/initramfs.py) and the milestone-B busybox image
(tests/initramfs.py), cross-checked with busybox's and (where installed) GNU cpio."""
from __future__ import annotations

import gzip
import shutil
import stat
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initramfs import APPLETS, INIT_BANNER, INIT_SCRIPT, build_busybox_initramfs, busybox_entries
from pvdbg.initramfs import (TRAILER, BadCpio, CpioEntry, gzip_initramfs, newc_archive,
                             read_initramfs, read_newc)

SAMPLE = [
    CpioEntry.directory("bin"),
    CpioEntry.file("bin/hello", b"hello, world\n", 0o755),
    CpioEntry.symlink("bin/sh", "hello"),
    CpioEntry.directory("dev"),
    CpioEntry.char_device("dev/console", 5, 1),
    CpioEntry.file("empty", b""),
]


def shape(entries):
    return [(e.name, e.mode, e.data, e.rdev_major, e.rdev_minor) for e in entries]


def test_round_trip_keeps_every_member():
    back = read_newc(newc_archive(SAMPLE))
    assert shape(back) == shape(SAMPLE)
    assert [e.ino for e in back] == [1, 2, 3, 4, 5, 6]
    assert [e.nlink for e in back] == [2, 1, 1, 2, 1, 1]          # no hard links
    assert back[2].is_symlink and back[2].target == "hello"
    assert back[4].is_char_device and (back[4].rdev_major, back[4].rdev_minor) == (5, 1)


def test_exact_bytes_of_a_symlink_member():
    archive = newc_archive([CpioEntry.symlink("bin/sh", "busybox")])
    header = (b"070701" + b"00000001" + b"0000A1FF" + b"00000000" * 2 + b"00000001"
              + b"00000000" + b"00000007" + b"00000000" * 4 + b"00000007" + b"00000000")
    assert archive.startswith(header + b"bin/sh\0")
    member_end = 128                 # 110 + 7 name bytes pad to 120; 7 target bytes to 128
    assert archive[117:120] == b"\0" * 3 and archive[120:127] == b"busybox"
    assert archive[member_end:member_end + 6] == b"070701"
    assert archive[member_end + 110:member_end + 121] == TRAILER.encode() + b"\0"
    assert len(archive) % 4 == 0


def test_members_start_on_4_byte_boundaries():
    archive = newc_archive(SAMPLE)
    starts = [i for i in range(0, len(archive), 4) if archive[i:i + 6] == b"070701"]
    assert len(starts) == len(SAMPLE) + 1


def test_leading_slash_is_dropped_and_given_inodes_are_kept():
    back = read_newc(newc_archive([CpioEntry.file("/init", b"x", 0o755),
                                   CpioEntry("etc", stat.S_IFDIR | 0o755, ino=1)]))
    assert [e.name for e in back] == ["init", "etc"]
    assert {e.ino for e in back} == {1, 2}


def test_gzip_image_is_deterministic_and_readable():
    first, second = gzip_initramfs(SAMPLE), gzip_initramfs(SAMPLE)
    assert first == second and first[:2] == b"\x1f\x8b"
    assert shape(read_initramfs(first)) == shape(SAMPLE)
    assert shape(read_initramfs(newc_archive(SAMPLE))) == shape(SAMPLE)


def test_concatenated_archives_read_on():
    joined = newc_archive(SAMPLE[:2]) + b"\0" * 8 + newc_archive(SAMPLE[2:])
    assert shape(read_newc(joined)) == shape(SAMPLE)


@pytest.mark.parametrize("data,why", [
    (b"070707" + b"0" * 200, "Linux needs newc"),
    (b"hello world", "no newc cpio header"),
    (newc_archive(SAMPLE)[:100], "cut short"),
    (newc_archive(SAMPLE)[:-124], "no TRAILER"),
    (b"070701" + b"zz" * 52, "not hex"),
    (b"070701" + b"00000000" * 11 + b"-0000005" + b"00000000", "not hex"),   # no signs,
    (b"070701" + b"00000000" * 11 + b"0000_005" + b"00000000", "not hex"),   # no '_'
    (b"070701" + b"00000000" * 11 + b" 0000005" + b"00000000", "not hex"),   # no spaces
    (b"070701" + b"00000000" * 11 + b"00000000" + b"00000000", "name size 0"),
    (newc_archive([CpioEntry.file("a", b"x" * 64)])[:140], "cut short"),
    (gzip.compress(newc_archive(SAMPLE))[:40], "ends inside"),
    (b"\x1f\x8b\x08\x00not-deflate-data", "corrupt"),
])
def test_bad_archives_raise_one_line_bad_cpio(data, why):
    with pytest.raises(BadCpio, match=why) as caught:
        read_initramfs(data)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("entry,why", [
    (CpioEntry("dev/x", stat.S_IFCHR | 0o600, b"data"), "has data"),
    (CpioEntry("big", stat.S_IFREG | 0o644, uid=1 << 32), "does not fit"),
    (CpioEntry("n" * 5000, stat.S_IFREG | 0o644), "longer than"),
])
def test_unwritable_entries_raise_bad_cpio(entry, why):
    with pytest.raises(BadCpio, match=why):
        newc_archive([entry])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 600))
def test_mutated_archives_parse_or_raise_bad_cpio(noise, at):
    base = bytearray(newc_archive(SAMPLE))
    base[at:at + len(noise)] = noise
    try:
        read_initramfs(bytes(base))
    except BadCpio:
        pass


def test_busybox_layout():
    entries = {e.name: e for e in busybox_entries(b"\x7fELF-busybox")}
    init = entries["init"]
    assert init.is_file and init.mode & 0o111 and init.data.startswith(b"#!/bin/busybox sh\n")
    assert b"exec /bin/busybox sh" in init.data and INIT_BANNER.encode() in init.data
    assert entries["bin/busybox"].data == b"\x7fELF-busybox"
    assert entries["bin/busybox"].mode == stat.S_IFREG | 0o755
    assert {"sh", "uname"} <= set(APPLETS)
    assert all(entries[f"bin/{a}"].target == "busybox" for a in APPLETS)
    console = entries["dev/console"]
    assert console.is_char_device and (console.rdev_major, console.rdev_minor) == (5, 1)
    names = [e.name for e in busybox_entries(b"")]
    assert names.index("bin") < names.index("bin/busybox") and names.index("dev") < names.index(
        "dev/console")


@pytest.mark.e2e
def test_debian_busybox_initramfs(tmp_path):
    built = build_busybox_initramfs()
    image = built.path.read_bytes()
    assert image[:2] == b"\x1f\x8b" and built.size == len(image)
    members = {e.name: e for e in read_initramfs(image)}
    busybox = members["bin/busybox"].data
    assert busybox[:4] == b"\x7fELF" and busybox[4] == 2          # the x86-64 static build
    assert members["init"].data == INIT_SCRIPT.encode()
    assert build_busybox_initramfs().path == built.path           # cached
    raw = gzip.decompress(image)
    busybox_cli = built.busybox_package / "bin" / "busybox"
    tools = [[str(busybox_cli), "cpio"]]
    if shutil.which("cpio"):
        tools.append(["cpio"])                                  # GNU cpio, where installed
    for tool in tools:
        listing = subprocess.run([*tool, "-t"], input=raw, capture_output=True, check=True)
        assert listing.stdout.decode().split() == list(members), tool
    out = tmp_path / "root"
    out.mkdir()
    subprocess.run([str(busybox_cli), "cpio", "-i", "-d", "-m"], input=raw, cwd=out,
                   capture_output=True)
    assert (out / "bin" / "busybox").read_bytes() == busybox
    assert (out / "bin" / "uname").readlink().as_posix() == "busybox"
    uname = subprocess.run([str(out / "bin" / "uname"), "-s"], capture_output=True, text=True,
                           check=True)
    assert uname.stdout.strip() == "Linux"                     # the applet link works
