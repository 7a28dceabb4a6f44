"""The PV console backend: what xenconsoled does with a domU's console page.

Guest output is taken from out[] (advancing out_cons) and handed to `on_output`; input
queued with `feed` is copied into in[] (advancing in_prod) as space allows.  Each side
that moves an index notifies the guest on the console event channel, as xenconsoled
does after every ring update.  Pure: it sees only machine memory and the console MFN,
and the caller decides when to `pump` (after the guest kicks the port, and between
execution slices, since guests such as PV GRUB poll in[] without any hypercall).
ABI: xen/include/public/io/console.h; tools/console/daemon/io.c (buffer_append,
handle_tty_read).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..machine.memory import PAGE_SHIFT, MachineMemory
from .abi import XenconsInterface

IN_RING_SIZE = 1024
OUT_RING_SIZE = 2048
_IN = XenconsInterface.offset_of("in_ring")
_OUT = XenconsInterface.offset_of("out_ring")
_IN_CONS = XenconsInterface.offset_of("in_cons")
_IN_PROD = XenconsInterface.offset_of("in_prod")
_OUT_CONS = XenconsInterface.offset_of("out_cons")
_OUT_PROD = XenconsInterface.offset_of("out_prod")
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class PumpResult:
    """What one pump moved: guest output taken, input delivered, and ring faults seen."""
    output: bytes = b""
    input_delivered: int = 0
    out_ring_corrupt: bool = False
    in_ring_corrupt: bool = False

    @property
    def moved(self) -> bool:
        return bool(self.output) or self.input_delivered > 0


class ConsoleRing:
    """xenconsoled's end of one xencons_interface page at machine frame `mfn`.

    `on_output(data)` receives guest output in ring order; `notify()` raises the console
    event channel towards the guest.
    """

    def __init__(self, memory: MachineMemory, mfn: int, *, on_output: Callable[[bytes], None],
                 notify: Callable[[], None]) -> None:
        if not memory.frame_valid(mfn):
            raise ValueError(f"console frame {mfn:#x} is outside machine memory")
        self.memory = memory
        self.mfn = mfn
        self.base = mfn << PAGE_SHIFT
        self.on_output = on_output
        self.notify = notify
        self.pending_input = bytearray()
        self.total_output = 0
        self.total_input = 0
        self.corrupt_reports = 0

    def reset_page(self) -> None:
        """Zero the page, as the domain builder leaves it (xc_dom_console_init)."""
        self.memory.zero_frame(self.mfn)

    def feed(self, data: bytes) -> None:
        """Queue keyboard input; it reaches in[] on the next pump with room for it."""
        self.pending_input += data

    def pump(self) -> PumpResult:
        """Take guest output and deliver queued input; notify the guest if anything moved."""
        output, out_bad = self._take_output()
        delivered, in_bad = self._deliver_input()
        if output:
            self.total_output += len(output)
            self.on_output(output)
        if out_bad or in_bad:
            self.corrupt_reports += 1
        result = PumpResult(output, delivered, out_bad, in_bad)
        if result.moved:
            self.notify()
        return result

    # -- rings --------------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return self.memory.read_u32(self.base + off)

    def _take_output(self) -> tuple[bytes, bool]:
        cons = self._u32(_OUT_CONS)
        prod = self._u32(_OUT_PROD)
        size = (prod - cons) & U32
        if size == 0:
            return b"", False
        if size > OUT_RING_SIZE:
            return b"", True             # xenconsoled ignores a corrupt ring
        start = cons % OUT_RING_SIZE
        first = min(size, OUT_RING_SIZE - start)
        data = self.memory.read(self.base + _OUT + start, first)
        if first < size:
            data += self.memory.read(self.base + _OUT, size - first)
        self.memory.write_u32(self.base + _OUT_CONS, prod)
        return data, False

    def _deliver_input(self) -> tuple[int, bool]:
        if not self.pending_input:
            return 0, False
        cons = self._u32(_IN_CONS)
        prod = self._u32(_IN_PROD)
        used = (prod - cons) & U32
        if used > IN_RING_SIZE:
            return 0, True
        count = min(IN_RING_SIZE - used, len(self.pending_input))
        if count == 0:
            return 0, False
        data = bytes(self.pending_input[:count])
        start = prod % IN_RING_SIZE
        first = min(count, IN_RING_SIZE - start)
        self.memory.write(self.base + _IN + start, data[:first])
        if first < count:
            self.memory.write(self.base + _IN, data[first:])
        del self.pending_input[:count]
        self.memory.write_u32(self.base + _IN_PROD, (prod + count) & U32)
        self.total_input += count
        return count, False

    # -- inspection (views, tests) ------------------------------------------------
    def indices(self) -> dict[str, int]:
        """The four ring indices as the guest sees them."""
        return {"in_cons": self._u32(_IN_CONS), "in_prod": self._u32(_IN_PROD),
                "out_cons": self._u32(_OUT_CONS), "out_prod": self._u32(_OUT_PROD)}
