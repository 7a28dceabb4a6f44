"""console_io: the Xen emergency console.  ABI: xen/include/public/xen.h CONSOLEIO_*,
xen/drivers/char/console.c (domU output: printable characters, '\\n' and '\\t' only)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..trace import TraceKind, TraceRecord
from .constants import ConsoleIO, Errno, Hc
from .hypercalls import HYPERCALLS, Param, fail

if TYPE_CHECKING:
    from .hypervisor import HypercallContext

CONSOLE_WRITE_CHUNK = 4096


def _printable(data: bytes) -> bytes:
    return bytes(b for b in data if 0x20 <= b < 0x7F or b in (0x0A, 0x09))


@HYPERCALLS.handler(Hc.console_io, Param("cmd", ConsoleIO), Param("count", "int"), Param("buffer"))
def console_io(ctx: "HypercallContext", cmd: int, count: int, buffer: int) -> int:
    """CONSOLEIO_write copies `count` bytes at guest VA `buffer`; CONSOLEIO_read reads input."""
    if cmd == ConsoleIO.write:
        if count & 0x80000000:
            raise fail(Errno.EFAULT, "negative count")
        done = 0
        while done < count:
            chunk = min(CONSOLE_WRITE_CHUNK, count - done)
            data = _printable(ctx.guest.read(buffer + done, chunk))
            ctx.hv.console_output(data, source="console_io")
            done += chunk
        return 0
    if cmd == ConsoleIO.read:
        if count > 0x7FFFFFFF:
            raise fail(Errno.E2BIG, "count above INT_MAX")
        data = ctx.hv.console_input_take(count)
        if data:
            ctx.guest.write(buffer, data)
        return len(data)
    raise fail(Errno.ENOSYS, f"unknown console_io command {cmd}")


def console_record(hv, data: bytes, source: str) -> TraceRecord:
    return TraceRecord(seq=hv.trace.next_seq(), kind=TraceKind.console, icount=hv.cpu.icount,
                       vcpu=hv.current.vcpu_id, eip=hv.cpu.read("eip"), name=source,
                       detail=data.decode("latin-1"), parent=hv.current_hypercall_seq)
