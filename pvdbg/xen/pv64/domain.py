"""Build and start a 64-bit PV domain for a Session: the builder's options, the initrd
as the start_info module, and the Hypervisor64."""
from __future__ import annotations

from pathlib import Path

from ...trace import TraceLog
from ..builder import BuildError, BuildOptions
from ..image import GuestImage
from .builder import build_domain64
from .hypervisor import Hypervisor64

DEFAULT_MEMORY_MIB_64 = 256       # Debian's kernel alone spans 62 MiB of its mapping


def create_hypervisor64(image: GuestImage, *, memory_mib: int | None, cmdline: str,
                        p2m_seed: int | None, vcpus: int, trace: TraceLog,
                        initrd: str | None = None) -> Hypervisor64:
    """Build the domain as libxc would and put vcpu0 at the kernel entry."""
    module = b""
    if initrd:
        try:
            module = Path(initrd).read_bytes()
        except OSError as exc:
            raise BuildError(f"--initrd {initrd}: {exc.strerror or exc}") from None
    built = build_domain64(image, BuildOptions(
        memory_mib=memory_mib or DEFAULT_MEMORY_MIB_64, cmdline=cmdline, p2m_seed=p2m_seed,
        vcpus=vcpus), initrd=module)
    return Hypervisor64(built, image.symbols, trace, hypercall_page_va=image.hypercall_page_va)
