/*
 * ELF note types the Xen domain builder reads from a "Xen" note.
 * ABI: xen/include/public/elfnote.h (parsed by xen/common/libelf/libelf-dominfo.c).
 * Safe to include from assembly and from the linker script.
 */
#ifndef SEED_XEN_ELFNOTE_H
#define SEED_XEN_ELFNOTE_H

#define XEN_ELFNOTE_INFO                0   /* string, ignored */
#define XEN_ELFNOTE_ENTRY               1   /* number: virtual entry point */
#define XEN_ELFNOTE_HYPERCALL_PAGE      2   /* number: VA of the hypercall stub page */
#define XEN_ELFNOTE_VIRT_BASE           3   /* number: VA of pseudo-physical address 0 */
#define XEN_ELFNOTE_PADDR_OFFSET        4   /* number: subtracted from p_paddr */
#define XEN_ELFNOTE_XEN_VERSION         5   /* string: must start with "xen-3.0" */
#define XEN_ELFNOTE_GUEST_OS            6   /* string */
#define XEN_ELFNOTE_GUEST_VERSION       7   /* string */
#define XEN_ELFNOTE_LOADER              8   /* string: "generic" */
#define XEN_ELFNOTE_PAE_MODE            9   /* string: "yes" = PAE with extended-cr3 */
#define XEN_ELFNOTE_FEATURES            10  /* string: XENFEAT names joined by '|' */
#define XEN_ELFNOTE_BSD_SYMTAB          11  /* string */
#define XEN_ELFNOTE_HV_START_LOW        12  /* number: dom0 only */
#define XEN_ELFNOTE_L1_MFN_VALID        13  /* number pairs */
#define XEN_ELFNOTE_SUSPEND_CANCEL      14  /* number */
#define XEN_ELFNOTE_INIT_P2M            15  /* number: x86-64 only */
#define XEN_ELFNOTE_MOD_START_PFN       16  /* number */
#define XEN_ELFNOTE_SUPPORTED_FEATURES  17  /* number: XENFEAT bitmap */
#define XEN_ELFNOTE_PHYS32_ENTRY        18  /* number: PVH only */

#endif /* SEED_XEN_ELFNOTE_H */
