"""gdb-side commands for pvdbg (loaded by `source gdbscripts/pvdbg.py` or `pvdbg gdb`).

Runs inside gdb's Python and never imports pvdbg: everything comes from the stub through
`monitor` (qRcmd), including the ABI layouts the pretty-printers decode (`monitor abi`),
so structures stay declared once, in pvdbg/xen/abi.py.
"""
import json
import struct

import gdb  # noqa: F401  (provided by gdb)

_ABI_CACHE = {}


def _monitor(command):
    return gdb.execute("monitor " + command, to_string=True)


class XenPrefix(gdb.Command):
    """Hypervisor views from pvdbg: xen hypercalls|vcpu|events|pt|frames|gdt|ldt|traps|catch|console."""

    def __init__(self):
        super().__init__("xen", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)


class XenMonitorCommand(gdb.Command):
    def __init__(self, name, monitor_name, doc):
        self.__doc__ = doc
        self._monitor_name = monitor_name
        super().__init__("xen " + name, gdb.COMMAND_DATA)

    def invoke(self, argument, from_tty):
        gdb.write(_monitor(f"{self._monitor_name} {argument}".strip()))


_COMMANDS = [
    ("hypercalls", "hypercalls", "Show the hypercall trace: xen hypercalls [N] [FILTER]."),
    ("vcpu", "vcpu", "Show a vcpu's event mask, pending bits, ring and cr3: xen vcpu [ID]."),
    ("events", "events", "Show the event channels: port, type, binding, masked, pending."),
    ("pt", "pt", "Walk the pagetables for an address: xen pt ADDRESS."),
    ("frames", "frames", "Show pagetable and descriptor frames with type, counts and pinning."),
    ("gdt", "gdt", "Show the decoded GDT with Xen's reserved entries."),
    ("ldt", "ldt", "Show the decoded LDT."),
    ("traps", "traps", "Show the virtual trap table with symbols."),
    ("console", "console", "Show the guest's console output: xen console [N]."),
    ("catchpoints", "catchpoints", "List pvdbg catchpoints."),
]


class XenCatch(gdb.Command):
    """Stop on a hypervisor event: xen catch hypercall NAME | trap VECTOR | upcall [PORT] |
pagetype [MFN] | shutdown | crash."""

    def __init__(self):
        super().__init__("xen catch", gdb.COMMAND_BREAKPOINTS)

    def invoke(self, argument, from_tty):
        gdb.write(_monitor("catch " + argument))


class XenUpcallMask(gdb.Function):
    """$xen_upcall_mask([VCPU]) - the vcpu's evtchn_upcall_mask (from the stub)."""

    def __init__(self, name="xen_upcall_mask", register="upcall_mask"):
        super().__init__(name)
        self._register = register

    def invoke(self, vcpu=None):
        if vcpu is not None:
            text = _monitor(f"vcpu {int(vcpu)}")
            key = "upcall_mask=" if self._register == "upcall_mask" else "upcall_pending="
            return int(text.split(key, 1)[1].split()[0])
        return gdb.parse_and_eval("$" + self._register)


def _abi(name):
    if name not in _ABI_CACHE:
        _ABI_CACHE[name] = json.loads(_monitor(f"abi {name}"))
    return _ABI_CACHE[name]


class AbiPrinter:
    """Decode a guest structure with the layout pvdbg declares for it."""

    def __init__(self, value, abi_name):
        self._value = value
        self._abi_name = abi_name

    def to_string(self):
        layout = _abi(self._abi_name)
        size = layout["size"]
        address = self._value.address
        if address is None:
            return f"<{self._abi_name}: not in memory>"
        data = bytes(gdb.selected_inferior().read_memory(int(address), size))
        parts = []
        for field in layout["fields"]:
            raw = struct.unpack_from("<" + field["format"], data, field["offset"])[0]
            if isinstance(raw, bytes):
                text = raw.split(b"\0", 1)[0].decode("latin-1")
                shown = f'"{text}"' if len(text) < 64 else f'"{text[:61]}..."'
                if len(raw) > 64 and not text:
                    continue
            else:
                shown = hex(raw) if raw > 9 else str(raw)
            parts.append(f"{field['name']} = {shown}")
        return f"{self._abi_name} {{" + ", ".join(parts) + "}"


_PRINTED_TYPES = {"start_info": "StartInfo32", "vcpu_info": "VcpuInfo32",
                  "shared_info": "SharedInfo32", "vcpu_time_info": "VcpuTimeInfo",
                  "trap_info": "TrapInfo32", "multicall_entry": "MulticallEntry32",
                  "mmu_update": "MmuUpdate", "mmuext_op": "MmuextOp32"}


def _lookup_printer(value):
    t = value.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_STRUCT and t.tag in _PRINTED_TYPES:
        return AbiPrinter(value, _PRINTED_TYPES[t.tag])
    return None


def register():
    XenPrefix()
    for name, monitor_name, doc in _COMMANDS:
        XenMonitorCommand(name, monitor_name, doc)
    XenCatch()
    XenUpcallMask()
    XenUpcallMask("xen_upcall_pending", "upcall_pending")
    gdb.pretty_printers.append(_lookup_printer)


register()
