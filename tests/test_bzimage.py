"""bzImage input: setup header, payload location, every decompressor, and Debian's kernel.

Synthetic bzImages are built here the way Linux's build lays them out: setup sectors with
the boot header, then the protected-mode part holding the compressed vmlinux at
payload_offset, the stream followed by the decompressed size as a little-endian u32.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import time

import lz4.block
import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings, strategies as st

from pvdbg.xen.bzimage import (
    Compression,
    MAX_KERNEL_BYTES,
    SetupHeader,
    decompress_payload,
    detect_compression,
    is_bzimage,
    read_bzimage,
    unwrap_kernel,
)
from pvdbg.xen.image import BadGuestImage, load_guest_image

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
VMLINUX = b"\x7fELF\x02\x01\x01" + bytes(9) + b"pvdbg test vmlinux " * 400 + os.urandom(512)


def lz4_legacy(data: bytes, block: int = 8 << 20) -> bytes:
    """LZ4 legacy container (magic, then u32 size + raw block per 8 MiB), as `lz4 -l`."""
    out = bytearray(LZ4_LEGACY_MAGIC)
    for pos in range(0, len(data), block):
        chunk = lz4.block.compress(data[pos:pos + block], store_size=False,
                                   mode="high_compression")
        out += struct.pack("<I", len(chunk)) + chunk
    return bytes(out)


def zstd_stream(data: bytes) -> bytes:
    """A checksummed zstd frame without content size, as `zstd` writes from a pipe."""
    compressor = zstandard.ZstdCompressor(level=19, write_checksum=True).compressobj()
    return compressor.compress(data) + compressor.flush()


COMPRESSORS = {
    Compression.GZIP: lambda data: gzip.compress(data, mtime=0),
    Compression.BZIP2: bz2.compress,
    Compression.LZMA: lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
    Compression.XZ: lambda data: lzma.compress(
        data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
        filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}]),
    Compression.LZ4_LEGACY: lz4_legacy,
    Compression.LZ4_FRAME: lz4.frame.compress,
    Compression.ZSTD: zstd_stream,
    Compression.NONE: lambda data: data,
}


def with_size(stream: bytes, size: int) -> bytes:
    """Linux's size_append: the decompressed size after the stream."""
    return stream + struct.pack("<I", size)


def make_bzimage(payload: bytes, *, setup_sects: int = 3, version: int = 0x020F,
                 payload_offset: int = 0x2CC, boot_flag: int = 0xAA55,
                 payload_length: int | None = None, kernel_version: str = "6.1.0-pvdbg (test)",
                 xloadflags: int = 0x7F) -> bytes:
    setup_size = ((setup_sects or 4) + 1) * 512
    header = SetupHeader(
        setup_sects=setup_sects, syssize=0, boot_flag=boot_flag, header=b"HdrS",
        version=version, kernel_version=0x100, loadflags=1, code32_start=0x100000,
        initrd_addr_max=0x7FFFFFFF, kernel_alignment=0x200000, relocatable_kernel=1,
        min_alignment=21, xloadflags=xloadflags, cmdline_size=2047,
        payload_offset=payload_offset,
        payload_length=len(payload) if payload_length is None else payload_length,
        pref_address=0x1000000, init_size=0x3378000, handover_offset=0,
        kernel_info_offset=0)
    image = bytearray(header.to_bytes()) + bytearray(setup_size - SetupHeader.SIZE)
    text = kernel_version.encode() + b"\0"
    image[0x300:0x300 + len(text)] = text
    return bytes(image) + bytes(payload_offset) + payload + bytes(64)


def bzimage_of(compression: Compression, vmlinux: bytes = VMLINUX, **kwargs) -> bytes:
    return make_bzimage(with_size(COMPRESSORS[compression](vmlinux), len(vmlinux)), **kwargs)


# ----------------------------------------------------------------- header and layout

def test_header_fields_and_payload_location():
    payload = with_size(gzip.compress(VMLINUX), len(VMLINUX))
    data = make_bzimage(payload, setup_sects=27, payload_offset=0x1234)
    image = read_bzimage(data)
    assert image.protocol == (2, 15)
    assert image.setup_size == 28 * 512
    assert image.payload_file_offset == 28 * 512 + 0x1234
    assert image.payload == payload
    assert image.compression == Compression.GZIP
    assert image.kernel_version == "6.1.0-pvdbg (test)"
    assert image.is_64bit
    assert image.header.pref_address == 0x1000000 and image.header.init_size == 0x3378000


def test_setup_sects_zero_means_four():
    data = bzimage_of(Compression.GZIP, setup_sects=0)
    assert read_bzimage(data).setup_size == 5 * 512
    assert unwrap_kernel(data) == VMLINUX


def test_setup_header_offsets_follow_the_boot_protocol():
    # Documentation/arch/x86/boot.rst, "The real-mode kernel header".
    expected = {"setup_sects": 0x1F1, "syssize": 0x1F4, "boot_flag": 0x1FE, "header": 0x202,
                "version": 0x206, "kernel_version": 0x20E, "loadflags": 0x211,
                "code32_start": 0x214, "initrd_addr_max": 0x22C, "kernel_alignment": 0x230,
                "relocatable_kernel": 0x234, "min_alignment": 0x235, "xloadflags": 0x236,
                "cmdline_size": 0x238, "payload_offset": 0x248, "payload_length": 0x24C,
                "pref_address": 0x258, "init_size": 0x260, "handover_offset": 0x264,
                "kernel_info_offset": 0x268}
    assert {name: SetupHeader.offset_of(name) for name in expected} == expected


def test_non_bzimage_input_passes_through_unchanged():
    elf = b"\x7fELF" + bytes(100)
    assert not is_bzimage(elf)
    assert unwrap_kernel(elf) is elf
    assert unwrap_kernel(b"") == b""
    with pytest.raises(BadGuestImage, match=r'^k: not a bzImage \(no "HdrS"'):
        read_bzimage(elf, name="k")


# ----------------------------------------------------------------- each decompressor

@pytest.mark.parametrize("compression", list(COMPRESSORS), ids=lambda c: c.value)
def test_each_format_unwraps_to_the_vmlinux(compression):
    data = bzimage_of(compression)
    image = read_bzimage(data)
    assert image.compression == compression
    assert detect_compression(image.payload) == compression
    assert unwrap_kernel(data, name="k") == VMLINUX


@pytest.mark.parametrize("compression", list(COMPRESSORS), ids=lambda c: c.value)
def test_each_format_without_size_trailer(compression):
    payload = COMPRESSORS[compression](VMLINUX)
    assert decompress_payload(payload) == VMLINUX


def test_lz4_legacy_spans_several_8_mib_blocks():
    big = VMLINUX + bytes(9 << 20) + os.urandom(4096)
    payload = with_size(lz4_legacy(big), len(big))
    first_block = struct.unpack_from("<I", payload, 4)[0]
    assert len(payload) > 8 + first_block + 4                 # a second block follows
    assert decompress_payload(payload) == big


def test_lz4_legacy_concatenated_streams_and_zero_padding():
    first, second = VMLINUX[:1000], VMLINUX[1000:]
    payload = lz4_legacy(first) + lz4_legacy(second) + bytes(8)
    assert decompress_payload(payload) == VMLINUX


def test_lz4_legacy_size_trailer_must_match():
    payload = with_size(lz4_legacy(VMLINUX), len(VMLINUX) + 1)
    with pytest.raises(BadGuestImage, match=r"\(lz4\) is corrupt: size trailer says"):
        decompress_payload(payload, name="k")


def test_lz4_legacy_oversized_block_is_refused():
    payload = LZ4_LEGACY_MAGIC + struct.pack("<I", 9 << 20) + bytes(64)
    with pytest.raises(BadGuestImage, match=r"block 0 claims 9437184 bytes"):
        decompress_payload(payload, name="k")


@pytest.mark.parametrize("compression",
                         [c for c in COMPRESSORS if c != Compression.NONE],
                         ids=lambda c: c.value)
def test_truncated_streams_are_refused(compression):
    stream = COMPRESSORS[compression](VMLINUX)
    cut = stream[:len(stream) * 2 // 3]
    with pytest.raises(BadGuestImage) as info:
        decompress_payload(cut, name="vmlinuz")
    message = str(info.value)
    assert message.startswith("vmlinuz: bzImage payload")
    assert "\n" not in message
    assert "ends inside the compressed stream" in message or "corrupt" in message


@pytest.mark.parametrize("compression",
                         [c for c in COMPRESSORS if c != Compression.NONE],
                         ids=lambda c: c.value)
def test_corrupt_streams_are_refused(compression):
    stream = bytearray(COMPRESSORS[compression](VMLINUX))
    for pos in range(len(stream) // 3, len(stream) // 3 + 24):
        stream[pos] ^= 0x5A
    try:
        out = decompress_payload(bytes(stream), name="k")
    except BadGuestImage as exc:
        assert str(exc).startswith("k: bzImage payload")
    else:
        # LZ4 carries no checksum: a flipped literal may still decode, but not to the original.
        assert compression in (Compression.LZ4_LEGACY, Compression.LZ4_FRAME)
        assert out != VMLINUX


@pytest.mark.parametrize("compression", list(COMPRESSORS), ids=lambda c: c.value)
def test_output_limit(compression):
    payload = COMPRESSORS[compression](VMLINUX)
    with pytest.raises(BadGuestImage, match=rf"decompresses to more than {len(VMLINUX) - 1} bytes"):
        decompress_payload(payload, name="k", limit=len(VMLINUX) - 1)
    assert decompress_payload(payload, limit=len(VMLINUX)) == VMLINUX
    assert MAX_KERNEL_BYTES == 1 << 30


def test_zstd_bomb_stops_at_the_limit():
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    bomb = compressor.compress(bytes(64 << 20)) + compressor.flush()
    assert len(bomb) < 64 << 10
    with pytest.raises(BadGuestImage, match="decompresses to more than"):
        decompress_payload(bomb, limit=1 << 20)


# ----------------------------------------------------------------- malformed input

@pytest.mark.parametrize("kwargs,message", [
    (dict(version=0x0207), r"boot protocol 2\.07 is older than 2\.08"),
    (dict(boot_flag=0x1234), r"boot_flag is 0x1234, not 0xaa55"),
    (dict(payload_length=0), r"payload_length is 0"),
    (dict(payload_length=1 << 24), r"payload 0xacc-0x1000acc runs past the end of the file"),
], ids=["old-protocol", "boot-flag", "empty-payload", "payload-past-eof"])
def test_malformed_headers(kwargs, message):
    data = bzimage_of(Compression.GZIP, **kwargs)
    with pytest.raises(BadGuestImage, match=rf"^vmlinuz: bzImage {message}"):
        unwrap_kernel(data, name="vmlinuz")


def test_setup_sectors_past_the_end():
    data = bytearray(bzimage_of(Compression.GZIP))
    data[0x1F1] = 200
    with pytest.raises(BadGuestImage, match=r"setup code \(200 sectors\) runs past the end "
                                            r"of the file \(\d+ bytes\)$"):
        unwrap_kernel(bytes(data), name="k")


def test_header_cut_short():
    data = bzimage_of(Compression.GZIP)[:0x240]
    with pytest.raises(BadGuestImage, match=r"bzImage of 576 bytes ends inside its setup header"):
        unwrap_kernel(data, name="k")


def test_unknown_and_unsupported_formats():
    with pytest.raises(BadGuestImage, match=r"no known compression magic \(starts 00 11 22"):
        unwrap_kernel(make_bzimage(b"\x00\x11\x22\x33\x44\x55\x66"), name="k")
    with pytest.raises(BadGuestImage, match=r"LZO-compressed, which pvdbg can't decompress"):
        unwrap_kernel(make_bzimage(b"\x89LZO\x00\r\n\x1a\n" + bytes(32)), name="k")


def test_payload_that_is_no_elf():
    data = bzimage_of(Compression.XZ, vmlinux=b"MZ not an ELF" * 100)
    with pytest.raises(BadGuestImage, match=r"payload \(xz\) holds no ELF image \(starts 4d 5a"):
        unwrap_kernel(data, name="k")


SMALL_IMAGES = {compression: bzimage_of(compression, vmlinux=VMLINUX[:3000])
                for compression in COMPRESSORS}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(compression=st.sampled_from(list(COMPRESSORS)),
       edits=st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 16),
                                st.integers(min_value=0, max_value=255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 16)))
def test_mangled_bzimages_unwrap_or_raise_bad_guest_image(compression, edits, cut):
    data = bytearray(SMALL_IMAGES[compression])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut]
    try:
        result = unwrap_kernel(bytes(data), name="k")
    except BadGuestImage as exc:
        assert str(exc).startswith("k: ") and "\n" not in str(exc)
    else:
        assert isinstance(result, bytes)


# ----------------------------------------------------------------- Debian's kernel

@pytest.fixture(scope="module")
def debian_kernel():
    from debian_kernel import fetch_debian_vmlinuz
    return fetch_debian_vmlinuz()


@pytest.mark.e2e
def test_debian_cloud_kernel_unwraps_to_a_64bit_pv_elf(debian_kernel):
    from debian_kernel import kernel_release
    data = debian_kernel.path.read_bytes()
    image = read_bzimage(data, name=debian_kernel.path.name)
    assert image.protocol >= (2, 8) and image.is_64bit
    assert image.compression == Compression.LZ4_LEGACY        # CONFIG_KERNEL_LZ4=y
    release = kernel_release(debian_kernel.package.name)
    assert image.kernel_version.startswith(release + " ")

    start = time.perf_counter()
    vmlinux = unwrap_kernel(data, name=debian_kernel.path.name)
    elapsed = time.perf_counter() - start
    assert vmlinux[:5] == b"\x7fELF\x02"                      # ELFCLASS64
    assert elapsed < 10, f"unwrapping took {elapsed:.1f} s"
    assert struct.unpack_from("<I", image.payload, len(image.payload) - 4)[0] == len(vmlinux)

    guest = load_guest_image(vmlinux, allow_64bit=True, name=debian_kernel.path.name)
    assert guest.elfclass == 64
    notes = guest.notes
    assert notes.source == "notes" and notes.bootable
    found = {type_name for _, type_name, _ in notes.notes}
    assert {"ENTRY", "VIRT_BASE", "PADDR_OFFSET", "INIT_P2M", "HV_START_LOW",
            "SUPPORTED_FEATURES", "PHYS32_ENTRY", "MOD_START_PFN", "FEATURES", "PAE_MODE",
            "XEN_VERSION", "GUEST_OS", "LOADER", "L1_MFN_VALID", "SUSPEND_CANCEL"} <= found
    # Linux dropped its hypercall page (XSA-466): no HYPERCALL_PAGE note; the kernel
    # issues `syscall` itself.
    assert "HYPERCALL_PAGE" not in found and guest.hypercall_page_va is None
    assert notes.guest_os == "linux" and notes.xen_version == "xen-3.0"
    assert notes.loader == "generic" and notes.pae_mode == "yes"
    assert notes.virt_base == 0xFFFF_FFFF_8000_0000 and notes.paddr_offset == 0
    assert notes.hv_start_low == 0xFFFF_8000_0000_0000
    assert notes.init_p2m == 0x80_0000_0000
    assert notes.mod_start_pfn and notes.suspend_cancel
    assert notes.required_features == ("writable_page_tables",)
    assert "pae_pgdir_above_4gb" in notes.features
    assert notes.supported_features & 1                       # XENFEAT_writable_page_tables
    assert notes.l1_mfn_valid == ((1, 1),)
    assert guest.kernel_start_va == 0xFFFF_FFFF_8100_0000     # paddr 16 MiB + VIRT_BASE
    assert guest.kernel_start_va <= guest.entry < guest.kernel_end_va
    assert notes.phys32_entry is not None and notes.phys32_entry < 1 << 32


@pytest.mark.e2e
def test_debian_debug_symbols_package_is_in_the_archive():
    from debian_kernel import MAX_DBG_DOWNLOAD, dbg_package, kernel_package
    dbg = dbg_package()
    assert dbg.name == kernel_package() + "-dbg"
    assert 0 < dbg.size <= MAX_DBG_DOWNLOAD


@pytest.mark.e2e
@pytest.mark.slow
def test_debian_debug_vmlinux_matches_the_bzimage(debian_kernel):
    from debian_kernel import fetch_debian_vmlinux_dbg
    from elftools.elf.elffile import ELFFile

    def build_id(elffile: ELFFile) -> str:
        for section in elffile.iter_sections():
            if section.header["sh_type"] == "SHT_NOTE":
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
        raise AssertionError("no GNU build-id")

    import io
    vmlinux = unwrap_kernel(debian_kernel.path.read_bytes())
    with fetch_debian_vmlinux_dbg().path.open("rb") as dbg_file:
        dbg = ELFFile(dbg_file)
        assert dbg.has_dwarf_info()
        assert build_id(dbg) == build_id(ELFFile(io.BytesIO(vmlinux)))
