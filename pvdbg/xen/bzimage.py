"""bzImage input: the compressed vmlinux ELF inside a Linux x86 boot image.

A bzImage starts with the real-mode setup (boot sector and setup code, `setup_sects`+1
sectors of 512 bytes) whose header, at file offset 0x1F1, is the x86 boot protocol's
setup header. From protocol 2.08 the header locates the compressed kernel: it lies
`payload_offset` bytes into the protected-mode part and is `payload_length` bytes long.
Xen's domain builder unwraps bzImages the same way and then loads the ELF inside
(tools/libs/guest/xg_dom_bzimageloader.c). The payload's format is told by its first
bytes; Linux's build appends the decompressed size as a little-endian u32 after the
stream. Bytes after a stream's end are ignored, except that LZ4 legacy, which has neither
end marker nor checksum, checks that size against what its blocks decoded to.

ABI: Linux Documentation/arch/x86/boot.rst ("The real-mode kernel header").
Decompressors: gzip, bzip2, lzma and xz from the standard library; LZ4 (legacy and
frame format) from the `lz4` package and zstd from `zstandard`. LZO is refused.
Every problem with the input raises pvdbg.xen.image.BadGuestImage with one line.
"""
from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .abi import abi_struct, at

__all__ = [
    "Compression",
    "SetupHeader",
    "BzImage",
    "MAX_KERNEL_BYTES",
    "is_bzimage",
    "read_bzimage",
    "detect_compression",
    "decompress_payload",
    "unwrap_kernel",
]

MAX_KERNEL_BYTES = 1 << 30          # refuse payloads that decompress to more than 1 GiB
SECTOR = 512
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_PROTOCOL = 0x0208               # first protocol with payload_offset/payload_length
XLF_KERNEL_64 = 1 << 0              # xloadflags: has the 64-bit entry at +0x200
_ELF_MAGIC = b"\x7fELF"

_OUTPUT_STEP = 8 << 20              # bytes of output per decompressor call
_ZSTD_INPUT_STEP = 4 << 10          # zstd input per call (bounds one call's output)
_LZ4_LEGACY_BLOCK = 8 << 20         # every legacy block but the last decodes to 8 MiB
_LZ4_LEGACY_MAX_CHUNK = _LZ4_LEGACY_BLOCK + _LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_COMPRESSBOUND
_LZ4_LEGACY_MAGIC = 0x184C2102


def _bad(name: str, reason: str) -> Exception:
    """pvdbg.xen.image.BadGuestImage, imported here because image.py imports this module."""
    from .image import BadGuestImage
    return BadGuestImage(name, reason)


@abi_struct(size=0x26C, source="Documentation/arch/x86/boot.rst struct setup_header "
                               "(offsets from the start of the image)")
class SetupHeader:
    setup_sects: int = at(0x1F1, "B")      # 0 means 4
    syssize: int = at(0x1F4, "I")          # protected-mode code, 16-byte paragraphs
    boot_flag: int = at(0x1FE, "H")        # 0xAA55
    header: bytes = at(0x202, "4s")        # "HdrS"
    version: int = at(0x206, "H")          # protocol major << 8 | minor
    kernel_version: int = at(0x20E, "H")   # version string at this + 0x200, 0 = none
    loadflags: int = at(0x211, "B")
    code32_start: int = at(0x214, "I")
    initrd_addr_max: int = at(0x22C, "I")
    kernel_alignment: int = at(0x230, "I")
    relocatable_kernel: int = at(0x234, "B")
    min_alignment: int = at(0x235, "B")    # log2
    xloadflags: int = at(0x236, "H")
    cmdline_size: int = at(0x238, "I")
    payload_offset: int = at(0x248, "I")   # from the start of the protected-mode code
    payload_length: int = at(0x24C, "I")
    pref_address: int = at(0x258, "Q")
    init_size: int = at(0x260, "I")        # bytes the kernel needs from its load address
    handover_offset: int = at(0x264, "I")
    kernel_info_offset: int = at(0x268, "I")


class Compression(Enum):
    """How a bzImage payload is packed; the value is the kernel's name for it."""

    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    LZMA = "lzma"
    XZ = "xz"
    LZO = "lzo"
    LZ4_LEGACY = "lz4"
    LZ4_FRAME = "lz4-frame"
    ZSTD = "zstd"


# Leading bytes of each format, longest first where one is a prefix of another.
_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x89LZO", Compression.LZO),
    (b"\x02\x21\x4c\x18", Compression.LZ4_LEGACY),
    (b"\x04\x22\x4d\x18", Compression.LZ4_FRAME),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x7fELF", Compression.NONE),
    (b"\x5d\x00\x00", Compression.LZMA),
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
)


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: its setup header and where its compressed kernel lies.

    `payload_file_offset` is the payload's byte offset in the file; `protocol` is
    (major, minor); `kernel_version` is the header's version string, "" if none.
    """

    header: SetupHeader
    protocol: tuple[int, int]
    setup_size: int
    payload_file_offset: int
    payload: bytes
    compression: Compression | None
    kernel_version: str

    @property
    def is_64bit(self) -> bool:
        """True when the kernel has a 64-bit entry point (xloadflags XLF_KERNEL_64)."""
        return bool(self.header.xloadflags & XLF_KERNEL_64)


def is_bzimage(data: bytes) -> bool:
    """True when `data` carries the boot protocol's "HdrS" magic at 0x202."""
    return data[0x202:0x206] == HDRS_MAGIC


def detect_compression(payload: bytes) -> Compression | None:
    """The payload's format by its leading bytes, or None when no known magic matches."""
    for magic, compression in _MAGICS:
        if payload.startswith(magic):
            return compression
    return None


def _version_string(data: bytes, header: SetupHeader, setup_size: int) -> str:
    if header.kernel_version == 0:
        return ""
    start = header.kernel_version + 0x200
    if start >= setup_size:
        return ""
    end = data.find(b"\x00", start, setup_size)
    raw = data[start:end if end >= 0 else setup_size]
    return raw.decode("ascii", "replace")[:256]


def read_bzimage(data: bytes, *, name: str = "<memory>") -> BzImage:
    """Parse a bzImage's setup header and locate its payload (not yet decompressed)."""
    def bad(reason: str) -> Exception:
        return _bad(name, reason)

    if not is_bzimage(data):
        raise bad('not a bzImage (no "HdrS" boot header at 0x202)')
    if len(data) < SetupHeader.SIZE:
        raise bad(f"bzImage of {len(data)} bytes ends inside its setup header")
    header = SetupHeader.from_bytes(data)
    protocol = (header.version >> 8, header.version & 0xFF)
    if header.version < MIN_PROTOCOL:
        raise bad(f"bzImage boot protocol {protocol[0]}.{protocol[1]:02d} is older than 2.08,"
                  " which has no payload_offset/payload_length")
    if header.boot_flag != BOOT_FLAG:
        raise bad(f"bzImage boot_flag is {header.boot_flag:#06x}, not 0xaa55")
    setup_size = ((header.setup_sects or 4) + 1) * SECTOR
    if setup_size > len(data):
        raise bad(f"bzImage setup code ({header.setup_sects} sectors) runs past the end of "
                  f"the file ({len(data)} bytes)")
    start = setup_size + header.payload_offset
    end = start + header.payload_length
    if header.payload_length == 0:
        raise bad("bzImage payload_length is 0")
    if end > len(data):
        raise bad(f"bzImage payload {start:#x}-{end:#x} runs past the end of the file "
                  f"({len(data):#x} bytes)")
    payload = data[start:end]
    return BzImage(
        header=header,
        protocol=protocol,
        setup_size=setup_size,
        payload_file_offset=start,
        payload=payload,
        compression=detect_compression(payload),
        kernel_version=_version_string(data, header, setup_size),
    )


class _Truncated(Exception):
    """The compressed stream ended before its end marker."""


class _TooLarge(Exception):
    """The output grew past the limit."""


class _Output:
    """Collects decompressed chunks and enforces the size limit."""

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise _TooLarge
        self.chunks.append(chunk)

    def joined(self) -> bytes:
        return b"".join(self.chunks)


def _drain_stream(decompressor, payload: bytes, out: _Output) -> None:
    """Feed a bz2/lzma/lz4.frame-style decompressor, `max_length` bytes at a time."""
    out.add(decompressor.decompress(payload, _OUTPUT_STEP))
    while not decompressor.eof:
        if decompressor.needs_input:
            raise _Truncated
        out.add(decompressor.decompress(b"", _OUTPUT_STEP))


def _gzip(payload: bytes, out: _Output) -> None:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)     # gzip wrapper only
    out.add(inflater.decompress(payload, _OUTPUT_STEP))
    while not inflater.eof:
        chunk = inflater.decompress(inflater.unconsumed_tail, _OUTPUT_STEP)
        if not chunk and not inflater.unconsumed_tail:
            raise _Truncated
        out.add(chunk)


def _bzip2(payload: bytes, out: _Output) -> None:
    _drain_stream(bz2.BZ2Decompressor(), payload, out)


def _lzma(payload: bytes, out: _Output) -> None:
    _drain_stream(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), payload, out)


def _xz(payload: bytes, out: _Output) -> None:
    _drain_stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), payload, out)


def _lz4_frame(payload: bytes, out: _Output) -> None:
    import lz4.frame
    _drain_stream(lz4.frame.LZ4FrameDecompressor(), payload, out)


def _lz4_legacy(payload: bytes, out: _Output) -> None:
    """LZ4 legacy format: a magic, then blocks of (u32 compressed size, LZ4 block).

    The format has no end marker and no checksum. It ends with the input, at a zero
    block size (padding), or at the u32 size trailer Linux appends, which must then
    equal the decoded size.
    """
    import lz4.block
    pos, blocks = 4, 0
    while pos < len(payload):
        remaining = len(payload) - pos
        if remaining < 4:
            raise _Truncated
        chunk_size = struct.unpack_from("<I", payload, pos)[0]
        if remaining == 4:
            if chunk_size != out.size:
                raise ValueError(f"size trailer says {chunk_size} bytes, the blocks "
                                 f"decoded to {out.size}")
            break
        pos += 4
        if chunk_size == _LZ4_LEGACY_MAGIC:     # another stream concatenated
            continue
        if chunk_size == 0:
            break
        if chunk_size > _LZ4_LEGACY_MAX_CHUNK:
            raise ValueError(f"block {blocks} claims {chunk_size} bytes, more than the "
                             f"legacy format's {_LZ4_LEGACY_MAX_CHUNK}")
        if pos + chunk_size > len(payload):
            raise _Truncated
        out.add(lz4.block.decompress(payload[pos:pos + chunk_size],
                                     uncompressed_size=_LZ4_LEGACY_BLOCK))
        pos += chunk_size
        blocks += 1
    if blocks == 0:
        raise _Truncated


def _zstd(payload: bytes, out: _Output) -> None:
    import zstandard
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    for pos in range(0, len(payload), _ZSTD_INPUT_STEP):
        out.add(decompressor.decompress(payload[pos:pos + _ZSTD_INPUT_STEP]))
        if decompressor.eof:
            return
    raise _Truncated


def _none(payload: bytes, out: _Output) -> None:
    """An uncompressed ELF, without the size trailer when one follows it."""
    if len(payload) >= 4 and struct.unpack_from("<I", payload, len(payload) - 4)[0] == \
            len(payload) - 4:
        payload = payload[:-4]
    out.add(payload)


_DECOMPRESSORS: dict[Compression, tuple[Callable[[bytes, _Output], None], str | None]] = {
    Compression.NONE: (_none, None),
    Compression.GZIP: (_gzip, None),
    Compression.BZIP2: (_bzip2, None),
    Compression.LZMA: (_lzma, None),
    Compression.XZ: (_xz, None),
    Compression.LZ4_LEGACY: (_lz4_legacy, "lz4"),
    Compression.LZ4_FRAME: (_lz4_frame, "lz4"),
    Compression.ZSTD: (_zstd, "zstandard"),
}


def _library_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [zlib.error, lzma.LZMAError, OSError, EOFError,
                                         ValueError, RuntimeError, MemoryError]
    try:
        import zstandard
        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    try:
        import lz4.block
        errors.append(lz4.block.LZ4BlockError)
    except ImportError:
        pass
    return tuple(errors)


def decompress_payload(payload: bytes, compression: Compression | None = None, *,
                       name: str = "<memory>", limit: int = MAX_KERNEL_BYTES) -> bytes:
    """Decompress a bzImage payload (format from its magic unless `compression` is given).

    Output is capped at `limit` bytes. Bytes after the end of the compressed stream (the
    size Linux appends) are ignored.
    """
    def bad(reason: str) -> Exception:
        return _bad(name, reason)

    if compression is None:
        compression = detect_compression(payload)
    if compression is None:
        raise bad(f"bzImage payload has no known compression magic "
                  f"(starts {payload[:6].hex(' ')})")
    if compression == Compression.LZO:
        raise bad("bzImage payload is LZO-compressed, which pvdbg can't decompress "
                  "(supported: gzip, bzip2, lzma, xz, lz4, zstd)")
    decode, package = _DECOMPRESSORS[compression]
    out = _Output(limit)
    try:
        decode(payload, out)
    except ImportError as exc:
        raise bad(f"bzImage payload is {compression.value}-compressed and needs the Python "
                  f"package '{package}' (pip install {package})") from exc
    except _Truncated as exc:
        raise bad(f"bzImage payload ({compression.value}) ends inside the compressed "
                  "stream") from exc
    except _TooLarge as exc:
        raise bad(f"bzImage payload ({compression.value}) decompresses to more than "
                  f"{limit} bytes") from exc
    except _library_errors() as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise bad(f"bzImage payload ({compression.value}) is corrupt: {detail}") from exc
    return out.joined()


def unwrap_kernel(data: bytes, *, name: str = "<memory>") -> bytes:
    """The vmlinux ELF inside a bzImage; any other input is returned unchanged.

    The ELF may be followed by the kernel's relocation table (CONFIG_RELOCATABLE), as it
    is in the payload; ELF readers ignore it. Raises BadGuestImage for a malformed
    bzImage or a payload that is not an ELF file.
    """
    if not is_bzimage(data):
        return data
    image = read_bzimage(data, name=name)
    vmlinux = decompress_payload(image.payload, image.compression, name=name)
    if not vmlinux.startswith(_ELF_MAGIC):
        raise _bad(name, f"bzImage payload ({image.compression.value}) holds no ELF image "
                         f"(starts {vmlinux[:4].hex(' ')})")
    return vmlinux
