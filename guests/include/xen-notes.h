/*
 * The Xen ELF notes of pvdbg's 32-bit PAE PV test guests, as assembler macros (include
 * from a .S file; every guest's head.S and the bench guests use it).
 *
 * Each note is one ELF note named "Xen": namesz, descsz, type, the name and the value,
 * each padded to 4 bytes.  Type numbers are XEN_ELFNOTE_*.  The linker scripts put
 * .note.Xen in its own PT_NOTE segment.
 * ABI: xen/include/public/elfnote.h; XEN-PV-ABI.md 2.1.
 */
#ifndef PVDBG_XEN_NOTES_H
#define PVDBG_XEN_NOTES_H

/* One note whose value is a NUL-terminated string. */
.macro XEN_NOTE_STRING type:req, value:req
	.balign	4
	.long	2f - 1f
	.long	4f - 3f
	.long	\type
1:	.asciz	"Xen"
2:	.balign	4
3:	.asciz	"\value"
4:	.balign	4
.endm

/* One note whose value is a 32-bit number or address. */
.macro XEN_NOTE_LONG type:req, value:req
	.balign	4
	.long	2f - 1f
	.long	4f - 3f
	.long	\type
1:	.asciz	"Xen"
2:	.balign	4
3:	.long	\value
4:	.balign	4
.endm

/*
 * The notes of a 32-bit PAE PV kernel, in .note.Xen:
 *   guest_os        GUEST_OS (6) string
 *   entry           ENTRY (1): the symbol Xen starts vcpu0 at
 *   virt_base       VIRT_BASE (3) and paddr_offset PADDR_OFFSET (4)
 *   guest_version   GUEST_VERSION (7) string, left out when blank
 *   features        FEATURES (10) string, left out when blank
 * plus XEN_VERSION (5) "xen-3.0", HYPERCALL_PAGE (2) hypercall_page, PAE_MODE (9) "yes"
 * and LOADER (8) "generic".
 */
.macro XEN_PV32_NOTES guest_os:req, entry:req, virt_base:req, paddr_offset:req, guest_version, features
	.pushsection .note.Xen, "a", @note
	XEN_NOTE_STRING 6, \guest_os
	.ifnb \guest_version
	XEN_NOTE_STRING 7, \guest_version
	.endif
	XEN_NOTE_STRING 5, xen-3.0
	XEN_NOTE_LONG   3, \virt_base
	XEN_NOTE_LONG   4, \paddr_offset
	XEN_NOTE_LONG   1, \entry
	XEN_NOTE_LONG   2, hypercall_page
	.ifnb \features
	XEN_NOTE_STRING 10, \features
	.endif
	XEN_NOTE_STRING 9, yes
	XEN_NOTE_STRING 8, generic
	.popsection
.endm

/* The features every pvdbg test kernel declares. */
#define PVDBG_GUEST_FEATURES "!writable_page_tables|pae_pgdir_above_4gb"

#endif /* PVDBG_XEN_NOTES_H */
