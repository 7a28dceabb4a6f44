/*
 * Link map of the seed kernel (preprocessed with cpp into $(O)/seed.lds).
 *
 * Xen's loader (xen/common/libelf) puts each PT_LOAD segment at
 * p_paddr + (VIRT_BASE - PADDR_OFFSET) = p_paddr + VIRT_BASE, so every loaded section
 * has LMA = VMA - VIRT_BASE and the image starts at p_paddr 0 / VA VIRT_BASE.
 */
#include <page.h>

OUTPUT_FORMAT("elf32-i386", "elf32-i386", "elf32-i386")
OUTPUT_ARCH(i386)
ENTRY(startup_xen)

PHDRS
{
	text PT_LOAD FLAGS(5);      /* R X */
	data PT_LOAD FLAGS(6);      /* R W */
	note PT_NOTE FLAGS(4);      /* the Xen notes, read by the domain builder */
}

SECTIONS
{
	. = VIRT_BASE;
	_text = .;

	.text : AT(ADDR(.text) - VIRT_BASE) {
		KEEP(*(.head.text))     /* startup_xen at VIRT_BASE */
		*(.text .text.*)
	} :text

	.rodata : AT(ADDR(.rodata) - VIRT_BASE) {
		*(.rodata .rodata.*)
	} :text

	.note.Xen : AT(ADDR(.note.Xen) - VIRT_BASE) {
		KEEP(*(.note.Xen))
	} :text :note
	_etext = .;

	. = ALIGN(PAGE_SIZE);
	.data : AT(ADDR(.data) - VIRT_BASE) {
		_sdata = .;
		*(.data .data.*)
		_edata = .;
	} :data

	/*
	 * Linker-generated GOT/PLT/dynamic-relocation sections: a non-PIC static kernel
	 * must not need any, so they are placed here only to prove they are empty.
	 */
	.got : { *(.got) *(.igot.*) }
	.plt : { *(.plt) *(.plt.*) *(.iplt) }
	.rel.dyn : { *(.rel.*) *(.rel_*) }
	.got.plt (INFO) : { *(.got.plt) }

	.bss : AT(ADDR(.bss) - VIRT_BASE) {
		__bss_start = .;
		*(.bss .bss.*)
		*(COMMON)
		__bss_stop = .;
	} :data
	. = ALIGN(PAGE_SIZE);
	_end = .;

	/* DWARF, kept unloaded for gdb. */
	.debug_aranges     0 : { *(.debug_aranges) }
	.debug_info        0 : { *(.debug_info) }
	.debug_abbrev      0 : { *(.debug_abbrev) }
	.debug_line        0 : { *(.debug_line) }
	.debug_line_str    0 : { *(.debug_line_str) }
	.debug_frame       0 : { *(.debug_frame) }
	.debug_str         0 : { *(.debug_str) }
	.debug_str_offsets 0 : { *(.debug_str_offsets) }
	.debug_loc         0 : { *(.debug_loc) }
	.debug_loclists    0 : { *(.debug_loclists) }
	.debug_ranges      0 : { *(.debug_ranges) }
	.debug_rnglists    0 : { *(.debug_rnglists) }
	.debug_addr        0 : { *(.debug_addr) }
	.debug_macro       0 : { *(.debug_macro) }
	.comment           0 : { *(.comment) }

	/DISCARD/ : {
		*(.note.GNU-stack)
		*(.note.gnu.property)
		*(.note.gnu.build-id)
		*(.eh_frame)
	}
}

ASSERT(SIZEOF(.got) == 0, "unexpected GOT entries")
ASSERT(SIZEOF(.plt) == 0, "unexpected PLT entries")
ASSERT(SIZEOF(.rel.dyn) == 0, "unexpected run-time relocations")
ASSERT(SIZEOF(.got.plt) == 0, "unexpected .got.plt entries")
ASSERT(startup_xen == VIRT_BASE, "startup_xen must be the first byte of the image")
ASSERT((hypercall_page & (PAGE_SIZE - 1)) == 0, "hypercall_page must be page-aligned")
ASSERT((init_thread_union & (THREAD_SIZE - 1)) == 0, "init stack must be THREAD_SIZE-aligned")
