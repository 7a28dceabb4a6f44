"""64-bit (x86_64) PV guests: the parts of Xen that differ from the 32-bit PAE ABI.

layout.py (Xen's address-space layout and selectors), paging.py (4-level walks),
guestmem.py (copy_from/to_guest), area.py (Xen's private area), builder.py (the libxc
x86_64 domU layout), mm.py (frame types L1..L4, pin, baseptr switches), traps.py (bounce
frames, the iret hypercall, kernel/user mode), hypercalls.py (the 64-bit argument layouts)
and hypervisor.py (the Hypervisor for a 64-bit domain).
"""
