"""Numbers of the Xen PV ABI, by their Xen names.  ABI: xen/include/public/*.h (4.17)."""
from __future__ import annotations

from enum import IntEnum, IntFlag


class Hc(IntEnum):
    """__HYPERVISOR_* hypercall numbers.  ABI: xen/include/public/xen.h."""
    set_trap_table = 0
    mmu_update = 1
    set_gdt = 2
    stack_switch = 3
    set_callbacks = 4
    fpu_taskswitch = 5
    sched_op_compat = 6
    platform_op = 7
    set_debugreg = 8
    get_debugreg = 9
    update_descriptor = 10
    memory_op = 12
    multicall = 13
    update_va_mapping = 14
    set_timer_op = 15
    event_channel_op_compat = 16
    xen_version = 17
    console_io = 18
    physdev_op_compat = 19
    grant_table_op = 20
    vm_assist = 21
    update_va_mapping_otherdomain = 22
    iret = 23
    vcpu_op = 24
    set_segment_base = 25
    mmuext_op = 26
    xsm_op = 27
    nmi_op = 28
    sched_op = 29
    callback_op = 30
    xenoprof_op = 31
    event_channel_op = 32
    physdev_op = 33
    hvm_op = 34
    sysctl = 35
    domctl = 36
    kexec_op = 37
    tmem_op = 38
    argo_op = 39
    xenpmu_op = 40
    dm_op = 41
    hypfs_op = 42
    mca = 48
    arch_1 = 49


class Errno(IntEnum):
    """Xen errno values (returned negated).  ABI: xen/include/public/errno.h."""
    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOSPC = 28
    EROFS = 30
    EMLINK = 31
    EDOM = 33
    ERANGE = 34
    EDEADLK = 35
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    ENODATA = 61
    ETIME = 62
    EBADMSG = 74
    EOVERFLOW = 75
    EILSEQ = 84
    ERESTART = 85
    ENOTSOCK = 88
    EOPNOTSUPP = 95
    EADDRINUSE = 98
    EADDRNOTAVAIL = 99
    ENOBUFS = 105
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    ECONNREFUSED = 111


def errno_name(result: int) -> str | None:
    """'-EINVAL' for a negative errno result, else None."""
    if -200 < result < 0:
        try:
            return "-" + Errno(-result).name
        except ValueError:
            return None
    return None


class XenVer(IntEnum):
    """XENVER_* commands.  ABI: xen/include/public/version.h."""
    version = 0
    extraversion = 1
    compile_info = 2
    capabilities = 3
    changeset = 4
    platform_parameters = 5
    get_features = 6
    pagesize = 7
    guest_handle = 8
    commandline = 9
    build_id = 10


class SchedOp(IntEnum):
    """SCHEDOP_* commands.  ABI: xen/include/public/sched.h."""
    yield_ = 0
    block = 1
    shutdown = 2
    poll = 3
    remote_shutdown = 4
    shutdown_code = 5
    watchdog = 6
    pin_override = 7


class ShutdownReason(IntEnum):
    """SHUTDOWN_* reasons.  ABI: xen/include/public/sched.h."""
    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4
    soft_reset = 5


class ConsoleIO(IntEnum):
    """CONSOLEIO_* commands.  ABI: xen/include/public/xen.h."""
    write = 0
    read = 1


class XenFeat(IntEnum):
    """XENFEAT_* bit numbers.  ABI: xen/include/public/features.h."""
    writable_page_tables = 0
    writable_descriptor_tables = 1
    auto_translated_physmap = 2
    supervisor_mode_kernel = 3
    pae_pgdir_above_4gb = 4
    mmu_pt_update_preserve_ad = 5
    highmem_assist = 6
    gnttab_map_avail_bits = 7
    hvm_callback_vector = 8
    hvm_safe_pvclock = 9
    hvm_pirqs = 10
    dom0 = 11
    memory_op_vnode_supported = 13
    ARM_SMCCC_supported = 14
    linux_rsdp_unrestricted = 15
    not_direct_mapped = 16
    direct_mapped = 17


class Vmasst(IntEnum):
    """VMASST_TYPE_*.  ABI: xen/include/public/xen.h."""
    _4gb_segments = 0
    _4gb_segments_notify = 1
    writable_pagetables = 2
    pae_extended_cr3 = 3
    architectural_iopl = 4
    runstate_update_flag = 5
    m2p_strict = 32


class VmasstCmd(IntEnum):
    """VMASST_CMD_*.  ABI: xen/include/public/xen.h."""
    enable = 0
    disable = 1


class MmuCmd(IntEnum):
    """mmu_update commands in ptr bits 2:0 (MMU_*).  ABI: xen/include/public/xen.h."""
    normal_pt_update = 0
    machphys_update = 1
    pt_update_preserve_ad = 2
    pt_update_no_translate = 3


class MmuextCmd(IntEnum):
    """MMUEXT_* commands.  ABI: xen/include/public/xen.h."""
    pin_l1_table = 0
    pin_l2_table = 1
    pin_l3_table = 2
    pin_l4_table = 3
    unpin_table = 4
    new_baseptr = 5
    tlb_flush_local = 6
    invlpg_local = 7
    tlb_flush_multi = 8
    invlpg_multi = 9
    tlb_flush_all = 10
    invlpg_all = 11
    flush_cache = 12
    set_ldt = 13
    new_user_baseptr = 15
    clear_page = 16
    copy_page = 17
    flush_cache_global = 18
    mark_super = 19
    unmark_super = 20


class Uvmf(IntEnum):
    """update_va_mapping flags: bits 1:0 the flush, the rest UVMF_ALL or a vcpu-mask
    pointer (UVMF_LOCAL is 0).  ABI: xen/include/public/xen.h."""
    none = 0
    tlb_flush = 1
    invlpg = 2
    flushtype_mask = 3
    all = 4


UVMF_LOCAL = 0


class XenMem(IntEnum):
    """XENMEM_* memory_op commands.  ABI: xen/include/public/memory.h."""
    increase_reservation = 0
    decrease_reservation = 1
    maximum_ram_page = 2
    current_reservation = 3
    maximum_reservation = 4
    machphys_mfn_list = 5
    populate_physmap = 6
    add_to_physmap = 7
    memory_map = 9
    machine_memory_map = 10
    exchange = 11
    machphys_mapping = 12
    set_memory_map = 13
    maximum_gpfn = 14
    add_to_physmap_batch = 23
    claim_pages = 24
    machphys_compat_mfn_list = 25
    get_vnumainfo = 26
    reserved_device_memory_map = 27
    acquire_resource = 28


class StartInfoFlags(IntFlag):
    """SIF_* flags.  ABI: xen/include/public/xen.h."""
    PRIVILEGED = 1
    INITDOMAIN = 2
    MULTIBOOT_MOD = 4
    MOD_START_PFN = 8
    VIRT_P2M_4TOOLS = 16


# Address space of a 32-bit PAE guest on Xen 4.17 (xen/include/public/arch-x86/xen-x86_32.h,
# xen/arch/x86/include/asm/config.h).
HYPERVISOR_VIRT_START_PAE = 0xF5800000
MACH2PHYS_COMPAT_VIRT_END = 0xFFE00000
XEN_FIRST_L2_SLOT = HYPERVISOR_VIRT_START_PAE >> 21 & 0x1FF   # 428 in the slot-3 L2

# Flat selectors in Xen's reserved GDT page (xen-x86_32.h).
FLAT_RING1_CS = 0xE019
FLAT_RING1_DS = 0xE021
FLAT_RING1_SS = 0xE021
FLAT_RING3_CS = 0xE02B
FLAT_RING3_DS = 0xE033
FLAT_RING3_SS = 0xE033
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_BYTE = FIRST_RESERVED_GDT_PAGE * 4096
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8

XEN_VERSION_MAJOR = 4
XEN_VERSION_MINOR = 17
XEN_EXTRAVERSION = ".7-pvdbg"
XEN_CAPABILITIES = "xen-3.0-x86_64 xen-3.0-x86_32p"
XEN_CHANGESET = "pvdbg emulated Xen"
XEN_COMPILER = "pvdbg (Python)"
XEN_COMPILE_BY = "pvdbg"
XEN_COMPILE_DOMAIN = "localdomain"
XEN_COMPILE_DATE = "emulated"

DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
