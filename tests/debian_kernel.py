"""Debian's 64-bit cloud kernel (a Xen PV-capable bzImage) and its DWARF vmlinux, cached.

The kernel is the package linux-image-cloud-amd64 depends on, in its -unsigned flavour
(the same bzImage without the Secure Boot signature), fetched and unpacked by
tools/fetch-debian-deb (tests/debian.py) into ~/.cache/pvdbg/debs ($PVDBG_DEB_CACHE).
The matching -dbg package (~270 MiB .deb, ~1.7 GiB unpacked) is downloaded with
`apt-get download` into the same cache and only its vmlinux is extracted. Every step is
skipped when its result is already cached; failures raise DebianFetchError (one line).

`python3 tests/debian_kernel.py [--dbg]` (or tools/fetch-debian-kernel) fetches by hand and
prints sizes and timings.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian import DebianFetchError, fetch_package  # noqa: E402

META_PACKAGE = "linux-image-cloud-amd64"
MAX_DBG_DOWNLOAD = 1 << 30     # never download a -dbg .deb larger than 1 GiB


def cache_dir() -> Path:
    """$PVDBG_DEB_CACHE or ~/.cache/pvdbg/debs (the cache tools/fetch-debian-deb uses)."""
    path = Path(os.environ.get("PVDBG_DEB_CACHE") or Path.home() / ".cache/pvdbg/debs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(args: list[str], *, cwd: Path | None = None, timeout: float = 900,
         stdin=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout, stdin=stdin)
    except FileNotFoundError as exc:
        raise DebianFetchError(f"{args[0]} is not installed (apt and dpkg are needed)") from exc
    except subprocess.TimeoutExpired as exc:
        raise DebianFetchError(f"{' '.join(args[:3])} timed out after {timeout:.0f} s") from exc


def _why(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


@dataclass(frozen=True)
class PackageInfo:
    """An archive package as apt-cache shows it (candidate version); .deb size in bytes."""

    name: str
    version: str
    size: int
    installed_size_kib: int

    @property
    def deb_name(self) -> str:
        """The file name apt-get download gives the .deb."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_amd64.deb"


def _apt_cache(*args: str) -> subprocess.CompletedProcess:
    result = _run(["apt-cache", *args])
    if result.returncode == 0 and result.stdout.strip():
        return result
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    update = _run(prefix + ["apt-get", "update", "-qq"])
    if update.returncode != 0:
        raise DebianFetchError(f"apt-get update failed: {_why(update)}")
    return _run(["apt-cache", *args])


@functools.lru_cache(maxsize=None)
def package_info(name: str) -> PackageInfo:
    """apt-cache's record of `name`; runs apt-get update once if apt doesn't know it."""
    result = _apt_cache("show", "--no-all-versions", name)
    fields: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" ") and key not in fields:
            fields[key] = value.strip()
    try:
        return PackageInfo(name, fields["Version"], int(fields["Size"]),
                           int(fields.get("Installed-Size", "0")))
    except (KeyError, ValueError):
        raise DebianFetchError(f"apt knows no package {name}") from None


@functools.lru_cache(maxsize=None)
def kernel_package() -> str:
    """The versioned package the cloud meta-package depends on, e.g. linux-image-6.1.0-56-cloud-amd64."""
    result = _apt_cache("depends", META_PACKAGE)
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "Depends" and value.startswith("linux-image-"):
            return value.strip()
    raise DebianFetchError(f"{META_PACKAGE} depends on no linux-image package")


def kernel_release(package: str) -> str:
    """`uname -r` of a kernel package name: linux-image-<release>[-unsigned|-dbg]."""
    return package.removeprefix("linux-image-").removesuffix("-unsigned").removesuffix("-dbg")


@dataclass(frozen=True)
class Fetched:
    """A fetched file, its package, and the seconds the fetch took (0 when cached)."""

    path: Path
    package: PackageInfo
    seconds: float


def fetch_debian_vmlinuz() -> Fetched:
    """Debian's cloud-amd64 bzImage, boot/vmlinuz-<release>."""
    name = kernel_package()
    try:
        info = package_info(f"{name}-unsigned")
    except DebianFetchError:
        info = package_info(name)
    start = time.monotonic()
    root = fetch_package(f"{info.name}={info.version}")
    path = root / "boot" / f"vmlinuz-{kernel_release(name)}"
    if not path.is_file():
        raise DebianFetchError(f"package {info.name} has no file /boot/{path.name}")
    return Fetched(path, info, time.monotonic() - start)


def debian_vmlinuz() -> Path:
    """Path of Debian's cloud-amd64 bzImage (fetched on first use)."""
    return fetch_debian_vmlinuz().path


def dbg_package() -> PackageInfo:
    """The -dbg package matching the cloud kernel (vmlinux with DWARF, and modules')."""
    return package_info(f"{kernel_package()}-dbg")


def _download(info: PackageInfo) -> Path:
    deb = cache_dir() / info.deb_name
    if deb.is_file() and deb.stat().st_size == info.size:
        return deb
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    result = _run(["apt-get", "download", "-qq", *sandbox, f"{info.name}={info.version}"],
                  cwd=cache_dir(), timeout=3600)
    if result.returncode != 0 or not deb.is_file():
        raise DebianFetchError(f"apt-get download {info.name} failed: {_why(result)}")
    if deb.stat().st_size != info.size:
        raise DebianFetchError(f"{deb.name} has {deb.stat().st_size} bytes, the archive "
                               f"says {info.size}")
    return deb


def _extract_member(deb: Path, member: str) -> Path:
    """`member` (./path) of `deb`, alone, under cache/partial/<deb stem>/."""
    root = cache_dir() / "partial" / deb.name.removesuffix(".deb")
    path = root / member.removeprefix("./")
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tarball = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    partial = root / ".extracting"
    partial.mkdir(exist_ok=True)
    result = _run(["tar", "-x", "-C", str(partial), member], stdin=tarball.stdout,
                  timeout=1800)
    tarball.stdout.close()
    tarball.wait()
    extracted = partial / member.removeprefix("./")
    if result.returncode != 0 or not extracted.is_file():
        raise DebianFetchError(f"extracting {member} from {deb.name} failed: {_why(result)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    extracted.rename(path)
    return path


def fetch_debian_vmlinux_dbg() -> Fetched:
    """The DWARF vmlinux (usr/lib/debug/boot/vmlinux-<release>) of the -dbg package.

    Refuses with DebianFetchError when the .deb is larger than MAX_DBG_DOWNLOAD.
    """
    info = dbg_package()
    if info.size > MAX_DBG_DOWNLOAD:
        raise DebianFetchError(f"{info.name} is {info.size >> 20} MiB, over the "
                               f"{MAX_DBG_DOWNLOAD >> 20} MiB download limit")
    start = time.monotonic()
    deb = _download(info)
    path = _extract_member(deb, f"./usr/lib/debug/boot/vmlinux-{kernel_release(info.name)}")
    return Fetched(path, info, time.monotonic() - start)


def main(argv: list[str]) -> int:
    try:
        fetches = [fetch_debian_vmlinuz()]
        if "--dbg" in argv:
            fetches.append(fetch_debian_vmlinux_dbg())
        for fetched in fetches:
            print(f"{fetched.path}  ({fetched.package.name} {fetched.package.version}, "
                  f".deb {fetched.package.size / 2**20:.1f} MiB, {fetched.seconds:.1f} s)")
        if "--dbg" not in argv:
            dbg = dbg_package()
            print(f"debug symbols: {dbg.name} {dbg.version}, .deb {dbg.size / 2**20:.1f} MiB, "
                  f"unpacked {dbg.installed_size_kib / 2**10:.0f} MiB (fetch with --dbg)")
    except DebianFetchError as exc:
        print(f"fetch-debian-kernel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
