"""Xen's real public headers (Debian libxen-dev) compiled with gcc, for golden ABI checks.

`ensure_xen_headers()` installs libxen-dev with apt-get when /usr/include/xen/xen.h is
missing (as root, or through passwordless sudo) and raises XenHeadersUnavailable with one
line saying what to do when it can't. `measure_layouts()` compiles one C file with
`gcc -m32` or `-m64 -ffreestanding -S` (no libc, nothing linked or run) and reads the
offsetof/sizeof values gcc wrote into the assembly as `.ascii` markers.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

XEN_INCLUDE = Path("/usr/include/xen")
XEN_H = XEN_INCLUDE / "xen.h"
PACKAGE = "libxen-dev"

# Every header a layout may come from; all of them are included in each probe.
HEADERS = (
    "xen.h", "version.h", "sched.h", "memory.h", "vcpu.h", "callback.h", "nmi.h",
    "event_channel.h", "grant_table.h", "physdev.h", "io/console.h", "io/xs_wire.h",
)


class XenHeadersUnavailable(RuntimeError):
    """libxen-dev is missing and could not be installed; str() says how to fix it."""


def _apt_prefix() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") is None:
        raise XenHeadersUnavailable(
            f"{XEN_H} is missing and installing {PACKAGE} needs root; run as root: "
            f"apt-get install -y {PACKAGE}")
    return ["sudo", "-n"]


def _run_apt(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(_apt_prefix() + args, capture_output=True, text=True, env=env,
                          timeout=900)


def ensure_xen_headers() -> Path:
    """/usr/include/xen with Xen's public headers, installing libxen-dev if needed."""
    if XEN_H.is_file():
        return XEN_INCLUDE
    if shutil.which("apt-get") is None:
        raise XenHeadersUnavailable(
            f"{XEN_H} is missing and there is no apt-get to install {PACKAGE}; install "
            "Xen 4.17's public headers so that xen/xen.h is in /usr/include")
    result = _run_apt(["apt-get", "install", "-y", "-qq", PACKAGE])
    if result.returncode != 0:
        _run_apt(["apt-get", "update", "-qq"])
        result = _run_apt(["apt-get", "install", "-y", "-qq", PACKAGE])
    if result.returncode != 0 or not XEN_H.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise XenHeadersUnavailable(f"apt-get install {PACKAGE} failed: {last}")
    return XEN_INCLUDE


@dataclass(frozen=True)
class Probe:
    """One value to measure: `key` names it, `expr` is a C integer constant expression."""

    key: str
    expr: str


_MARKER = re.compile(r"@@(\S+) (-?\d+)")


def _source(probes: list[Probe]) -> str:
    lines = ["#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__",
             "#include <stdint.h>"]
    lines += [f"#include <xen/{header}>" for header in HEADERS]
    lines += ["#include <stddef.h>", "void pvdbg_layout_probe(void)", "{"]
    for probe in probes:
        lines.append(f'    __asm__ volatile (".ascii \\"@@{probe.key} %c0\\\\n\\""'
                     f' :: "i" ((long)({probe.expr})));')
    lines.append("}")
    return "\n".join(lines) + "\n"


def measure_layouts(probes: list[Probe], bits: int, workdir: Path) -> dict[str, int]:
    """Values of `probes` as gcc -m`bits` computes them over Xen's public headers.

    Raises subprocess.CalledProcessError (with gcc's stderr) when a probe doesn't compile.
    """
    ensure_xen_headers()
    source = workdir / f"layout{bits}.c"
    source.write_text(_source(probes))
    result = subprocess.run(
        ["gcc", f"-m{bits}", "-ffreestanding", "-O0", "-S", "-o", "-", str(source)],
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args,
                                            result.stdout, result.stderr)
    return {key: int(value) for key, value in _MARKER.findall(result.stdout)}


def failing_probes(probes: list[Probe], bits: int, workdir: Path) -> list[tuple[Probe, str]]:
    """The probes that don't compile on their own, each with gcc's first error line."""
    failures = []
    for probe in probes:
        try:
            measure_layouts([probe], bits, workdir)
        except subprocess.CalledProcessError as exc:
            errors = [line for line in exc.stderr.splitlines() if "error" in line]
            failures.append((probe, (errors or ["gcc failed"])[0]))
    return failures
