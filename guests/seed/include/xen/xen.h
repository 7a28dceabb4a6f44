/*
 * Core Xen PV interface for a 32-bit PAE guest: hypercall numbers, selectors, memory
 * management commands and the start_info / shared_info layouts.
 * ABI: xen/include/public/xen.h, xen/include/public/arch-x86/xen.h,
 *      xen/include/public/arch-x86/xen-x86_32.h.
 * The numbers are usable from assembly; the structures only from C.
 */
#ifndef SEED_XEN_XEN_H
#define SEED_XEN_XEN_H

/* Hypercall numbers (xen.h __HYPERVISOR_*). Stub n lives at hypercall_page + n * 32. */
#define __HYPERVISOR_set_trap_table                  0
#define __HYPERVISOR_mmu_update                      1
#define __HYPERVISOR_set_gdt                         2
#define __HYPERVISOR_stack_switch                    3
#define __HYPERVISOR_set_callbacks                   4
#define __HYPERVISOR_fpu_taskswitch                  5
#define __HYPERVISOR_sched_op_compat                 6
#define __HYPERVISOR_platform_op                     7
#define __HYPERVISOR_set_debugreg                    8
#define __HYPERVISOR_get_debugreg                    9
#define __HYPERVISOR_update_descriptor               10
#define __HYPERVISOR_memory_op                       12
#define __HYPERVISOR_multicall                       13
#define __HYPERVISOR_update_va_mapping               14
#define __HYPERVISOR_set_timer_op                    15
#define __HYPERVISOR_event_channel_op_compat         16
#define __HYPERVISOR_xen_version                     17
#define __HYPERVISOR_console_io                      18
#define __HYPERVISOR_physdev_op_compat               19
#define __HYPERVISOR_grant_table_op                  20
#define __HYPERVISOR_vm_assist                       21
#define __HYPERVISOR_update_va_mapping_otherdomain   22
#define __HYPERVISOR_iret                            23   /* jumped to, not called */
#define __HYPERVISOR_vcpu_op                         24
#define __HYPERVISOR_set_segment_base                25   /* x86-64 only */
#define __HYPERVISOR_mmuext_op                       26
#define __HYPERVISOR_xsm_op                          27
#define __HYPERVISOR_nmi_op                          28
#define __HYPERVISOR_sched_op                        29
#define __HYPERVISOR_callback_op                     30
#define __HYPERVISOR_xenoprof_op                     31
#define __HYPERVISOR_event_channel_op                32
#define __HYPERVISOR_physdev_op                      33
#define __HYPERVISOR_hvm_op                          34
#define __HYPERVISOR_sysctl                          35
#define __HYPERVISOR_domctl                          36
#define __HYPERVISOR_kexec_op                        37
#define __HYPERVISOR_tmem_op                         38
#define __HYPERVISOR_argo_op                         39
#define __HYPERVISOR_xenpmu_op                       40
#define __HYPERVISOR_dm_op                           41
#define __HYPERVISOR_hypfs_op                        42
#define __HYPERVISOR_arch_0                          48   /* x86: mca */
#define __HYPERVISOR_arch_1                          49   /* x86: paging_domctl_cont */

#define HYPERCALL_STUB_SIZE          32     /* bytes per stub in the hypercall page */

/* Start of the hypervisor hole for a PAE guest (arch-x86/xen-x86_32.h). */
#define HYPERVISOR_VIRT_START_PAE    0xF5800000

/* Flat selectors in Xen's reserved GDT page (arch-x86/xen-x86_32.h). */
#define FLAT_RING1_CS                0xe019
#define FLAT_RING1_DS                0xe021
#define FLAT_RING1_SS                0xe021
#define FLAT_RING3_CS                0xe02b
#define FLAT_RING3_DS                0xe033
#define FLAT_RING3_SS                0xe033
#define FLAT_KERNEL_CS               FLAT_RING1_CS
#define FLAT_KERNEL_DS               FLAT_RING1_DS
#define FLAT_KERNEL_SS               FLAT_RING1_SS

/* console_io commands. */
#define CONSOLEIO_write              0
#define CONSOLEIO_read               1

/* mmu_update commands: the low 3 bits of mmu_update.ptr. */
#define MMU_NORMAL_PT_UPDATE         0
#define MMU_MACHPHYS_UPDATE          1
#define MMU_PT_UPDATE_PRESERVE_AD    2
#define MMU_PT_UPDATE_NO_TRANSLATE   3

/* mmuext_op commands. */
#define MMUEXT_PIN_L1_TABLE          0
#define MMUEXT_PIN_L2_TABLE          1
#define MMUEXT_PIN_L3_TABLE          2
#define MMUEXT_PIN_L4_TABLE          3
#define MMUEXT_UNPIN_TABLE           4
#define MMUEXT_NEW_BASEPTR           5
#define MMUEXT_TLB_FLUSH_LOCAL       6
#define MMUEXT_INVLPG_LOCAL          7
#define MMUEXT_TLB_FLUSH_MULTI       8
#define MMUEXT_INVLPG_MULTI          9
#define MMUEXT_TLB_FLUSH_ALL         10
#define MMUEXT_INVLPG_ALL            11
#define MMUEXT_FLUSH_CACHE           12
#define MMUEXT_SET_LDT               13
#define MMUEXT_NEW_USER_BASEPTR      15
#define MMUEXT_CLEAR_PAGE            16
#define MMUEXT_COPY_PAGE             17
#define MMUEXT_FLUSH_CACHE_GLOBAL    18
#define MMUEXT_MARK_SUPER            19
#define MMUEXT_UNMARK_SUPER          20

/* update_va_mapping flags. */
#define UVMF_NONE                    0
#define UVMF_TLB_FLUSH               1
#define UVMF_INVLPG                  2
#define UVMF_FLUSHTYPE_MASK          3
#define UVMF_LOCAL                   0
#define UVMF_ALL                     4

/* vm_assist commands and types. */
#define VMASST_CMD_enable                  0
#define VMASST_CMD_disable                 1
#define VMASST_TYPE_4gb_segments           0
#define VMASST_TYPE_4gb_segments_notify    1
#define VMASST_TYPE_writable_pagetables    2
#define VMASST_TYPE_pae_extended_cr3       3
#define VMASST_TYPE_architectural_iopl     4
#define VMASST_TYPE_runstate_update_flag   5

/* Domain ids for foreigndom arguments. */
#define DOMID_SELF                   0x7FF0
#define DOMID_IO                     0x7FF1
#define DOMID_XEN                    0x7FF2

/* start_info.flags. */
#define SIF_PRIVILEGED               (1 << 0)
#define SIF_INITDOMAIN               (1 << 1)
#define SIF_MULTIBOOT_MOD            (1 << 2)
#define SIF_MOD_START_PFN            (1 << 3)
#define SIF_VIRT_P2M_4TOOLS          (1 << 4)

#define MAX_GUEST_CMDLINE            1024
#define XEN_LEGACY_MAX_VCPUS         32

/*
 * Forced emulation: "ud2; .ascii \"xen\"" before an instruction makes Xen emulate it
 * (arch-x86/xen.h XEN_EMULATE_PREFIX). Used for a virtualised cpuid.
 */
#define XEN_EMULATE_PREFIX           ".byte 0x0f,0x0b,0x78,0x65,0x6e ; "

#ifndef __ASSEMBLY__
#include <stdint.h>

typedef uint16_t domid_t;

/* CR3 <-> MFN folding for 32-bit PV (arch-x86/xen-x86_32.h): bits 31:12 then 11:0 of the MFN. */
static inline unsigned long xen_pfn_to_cr3(unsigned long mfn)
{
	return (mfn << 12) | (mfn >> 20);
}

static inline unsigned long xen_cr3_to_pfn(unsigned long cr3)
{
	return (cr3 >> 12) | (cr3 << 20);
}

/* ABI: xen.h struct mmu_update (16 bytes). */
struct mmu_update {
	uint64_t ptr;   /* machine address of the PTE, command in bits 2:0 */
	uint64_t val;   /* new PTE contents */
};

/* ABI: xen.h struct mmuext_op, 32-bit layout (12 bytes). */
struct mmuext_op {
	uint32_t cmd;                    /* MMUEXT_* */
	union {
		uint32_t mfn;            /* pin/unpin, NEW_BASEPTR, CLEAR/COPY_PAGE */
		uint32_t linear_addr;    /* INVLPG_*, SET_LDT */
	} arg1;
	union {
		uint32_t nr_ents;        /* SET_LDT */
		uint32_t vcpumask;       /* guest VA of a vCPU bitmap, *_MULTI */
		uint32_t src_mfn;        /* COPY_PAGE */
	} arg2;
};

/* ABI: arch-x86/xen.h struct trap_info, 32-bit layout (8 bytes). */
struct trap_info {
	uint8_t vector;
	uint8_t flags;     /* bits 1:0 = DPL for `int n`; bit 2 = mask events on entry */
	uint16_t cs;
	unsigned long address;
};

/* ABI: xen.h struct multicall_entry, 32-bit layout (32 bytes). */
struct multicall_entry {
	unsigned long op;
	unsigned long result;
	unsigned long args[6];
};

/* ABI: xen.h struct vcpu_time_info (32 bytes). */
struct vcpu_time_info {
	uint32_t version;            /* odd while Xen updates the record */
	uint32_t pad0;
	uint64_t tsc_timestamp;      /* TSC at the last update */
	uint64_t system_time;        /* ns since Xen booted, at tsc_timestamp */
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad1[2];
};

/* ABI: arch-x86/xen-x86_32.h struct arch_vcpu_info (24 bytes). */
struct arch_vcpu_info {
	unsigned long cr2;           /* faulting VA of the last #PF delivered */
	unsigned long pad[5];
};

/* ABI: xen.h struct vcpu_info, 32-bit layout (64 bytes). */
struct vcpu_info {
	uint8_t evtchn_upcall_pending;
	uint8_t evtchn_upcall_mask;      /* 1 = event upcalls masked ("interrupts off") */
	uint8_t pad0[2];
	unsigned long evtchn_pending_sel;
	struct arch_vcpu_info arch;
	struct vcpu_time_info time;
};

/* ABI: arch-x86/xen.h struct arch_shared_info, 32-bit layout (28 bytes). */
struct arch_shared_info {
	unsigned long max_pfn;
	unsigned long pfn_to_mfn_frame_list_list;
	unsigned long nmi_reason;
	unsigned long p2m_cr3;
	unsigned long p2m_vaddr;
	unsigned long p2m_generation;
	uint32_t wc_sec_hi;
};

/* ABI: xen.h struct shared_info, 32-bit layout (2344 bytes). */
struct shared_info {
	struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
	unsigned long evtchn_pending[32];
	unsigned long evtchn_mask[32];
	uint32_t wc_version;
	uint32_t wc_sec;
	uint32_t wc_nsec;
	struct arch_shared_info arch;
};

/* ABI: xen.h struct start_info, 32-bit layout (1112 bytes). */
struct start_info {
	char magic[32];                  /* "xen-3.0-x86_32p" */
	unsigned long nr_pages;          /* pseudo-physical pages given to the domain */
	unsigned long shared_info;       /* machine address of the shared_info page */
	uint32_t flags;                  /* SIF_* */
	unsigned long store_mfn;
	uint32_t store_evtchn;
	union {
		struct {
			unsigned long mfn;
			uint32_t evtchn;
		} domU;
		struct {
			uint32_t info_off;
			uint32_t info_size;
		} dom0;
	} console;
	unsigned long pt_base;           /* VA of the initial L3 (pgd) */
	unsigned long nr_pt_frames;      /* frames of initial page tables */
	unsigned long mfn_list;          /* VA of the p2m: one u32 MFN per PFN */
	unsigned long mod_start;
	unsigned long mod_len;
	char cmd_line[MAX_GUEST_CMDLINE];
	unsigned long first_p2m_pfn;
	unsigned long nr_p2m_frames;
};

_Static_assert(sizeof(struct mmu_update) == 16, "mmu_update layout");
_Static_assert(sizeof(struct mmuext_op) == 12, "mmuext_op layout");
_Static_assert(sizeof(struct trap_info) == 8, "trap_info layout");
_Static_assert(sizeof(struct multicall_entry) == 32, "multicall_entry layout");
_Static_assert(sizeof(struct vcpu_time_info) == 32, "vcpu_time_info layout");
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info layout");
_Static_assert(__builtin_offsetof(struct vcpu_info, time) == 32, "vcpu_info.time offset");
_Static_assert(sizeof(struct shared_info) == 2344, "shared_info layout");
_Static_assert(__builtin_offsetof(struct shared_info, evtchn_pending) == 2048, "evtchn_pending offset");
_Static_assert(__builtin_offsetof(struct shared_info, arch) == 2316, "arch_shared_info offset");
_Static_assert(sizeof(struct start_info) == 1112, "start_info layout");
_Static_assert(__builtin_offsetof(struct start_info, pt_base) == 60, "start_info.pt_base offset");
_Static_assert(__builtin_offsetof(struct start_info, cmd_line) == 80, "start_info.cmd_line offset");
_Static_assert(__builtin_offsetof(struct start_info, first_p2m_pfn) == 1104, "first_p2m_pfn offset");

#endif /* __ASSEMBLY__ */

#endif /* SEED_XEN_XEN_H */
