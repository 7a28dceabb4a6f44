"""The `xenstore` command (REPL and gdb's `monitor`): look at and change the store as the
toolstack would (dom0), and list the guest's xenstore traffic from the trace.

Paths not starting with "/" are relative to the domain's home, /local/domain/<domid>, as
the guest's own relative paths are.  Changes fire the guest's watches.
"""
from __future__ import annotations

from .monitor import MonitorError, command
from .trace import TraceKind
from .xen.xenstore import XenstoreError

USAGE = "xenstore [ls [PATH] | read PATH | write PATH VALUE | rm PATH | log [N]]"
LOG_DEFAULT = 20


def _store(session):
    devices = getattr(session, "devices", None)
    if devices is None:
        raise MonitorError("this session has no xenstore")
    return devices.xenstore


def _path(session, text: str) -> str:
    if text.startswith("/"):
        return text
    return f"/local/domain/{session.hv.domain.domid}/{text}".rstrip("/")


def _show(value: bytes) -> str:
    text = value.decode("utf-8", "backslashreplace")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _ls(session, args: list[str]) -> str:
    store = _store(session)
    root = _path(session, args[0]) if args else _path(session, "")
    depth0 = root.rstrip("/").count("/")
    lines = []
    for path, value, perms in store.walk(root):
        depth = path.rstrip("/").count("/") - depth0
        name = path if depth == 0 else path.rsplit("/", 1)[1]
        lines.append(f"{'  ' * depth}{name} = \"{_show(value)}\"  ({','.join(perms)})\n")
    return "".join(lines)


def _log(session, args: list[str]) -> str:
    count = LOG_DEFAULT
    if args:
        try:
            count = int(args[0], 0)
        except ValueError:
            raise MonitorError(f"bad record count {args[0]!r}") from None
    records = session.trace.records(TraceKind.xenstore)[-count:] if count > 0 else []
    if not records:
        return "no xenstore traffic in the trace\n"
    return "".join(f"#{r.seq:<6} @{r.icount if r.icount is not None else '-':<12} {r.detail}\n"
                   for r in records)


@command("xenstore", USAGE,
         "the domain's xenstore as dom0 sees it: list, read, write or remove keys "
         "(relative paths are under /local/domain/<domid>); `log` lists the guest's "
         "xenstore requests and replies from the trace",
         aliases=("xs",), complete=("ls", "read", "write", "rm", "log"))
def _xenstore(session, args: list[str]) -> str:
    sub, rest = (args[0], args[1:]) if args else ("ls", [])
    try:
        if sub == "ls" and len(rest) <= 1:
            return _ls(session, rest)
        if sub == "read" and len(rest) == 1:
            return f"\"{_show(_store(session).read(_path(session, rest[0])))}\"\n"
        if sub == "write" and len(rest) >= 2:
            path = _path(session, rest[0])
            _store(session).write(path, " ".join(rest[1:]))
            return f"wrote {path}\n"
        if sub == "rm" and len(rest) == 1:
            path = _path(session, rest[0])
            _store(session).rm(path)
            return f"removed {path}\n"
        if sub == "log" and len(rest) <= 1:
            return _log(session, rest)
    except XenstoreError as err:
        raise MonitorError(f"xenstore: {err}") from None
    raise MonitorError(f"usage: {USAGE}")
