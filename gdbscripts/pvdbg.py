# gdb: source gdbscripts/pvdbg.py   (adds `xen ...` commands, $xen_upcall_mask(), printers)
# The script itself ships inside the pvdbg package (pvdbg/gdbscript.py), so `pvdbg gdb`
# and `pvdbg gdb-init` find it in an installed copy too; this file loads it by path.
import os

exec(compile(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pvdbg",
                               "gdbscript.py")).read(), "pvdbg/gdbscript.py", "exec"))
