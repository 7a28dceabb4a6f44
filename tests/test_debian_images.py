"""Real 64-bit PV images from Debian's archive through the image reader, checked against
what Xen 4.17's libelf/libxc would make of them: GNU Mach's Xen image (notes whose owner
is not "Xen", so the legacy __xen_guest string rules), the x86_64 PV GRUB, and the cloud
kernel's bzImage with every XEN_ELFNOTE Linux 6.1 sets."""
from __future__ import annotations

import gzip

import pytest

from debian import gnumach_xen, grub_x86_64_xen
from pvdbg.xen.elfnotes import PaeMode, XenElfNote
from pvdbg.xen.image import EM_X86_64, BadGuestImage, load_guest_image, peek_elf_class

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gnumach():
    return gnumach_xen()


def test_gnumach_is_a_gzipped_x86_64_elf(gnumach):
    assert gnumach.read_bytes()[:2] == b"\x1f\x8b"
    assert peek_elf_class(gnumach) == 64
    with pytest.raises(BadGuestImage, match="64-bit"):
        load_guest_image(gnumach)


def test_gnumach_notes_are_ignored_and_the_legacy_string_used(gnumach):
    image = load_guest_image(gnumach, allow_64bit=True)
    notes = image.notes
    # .note.Xen holds notes owned by "name": libelf counts only owner "Xen".
    assert notes.other_owners == ("name",)
    assert notes.source == "__xen_guest"
    assert notes.guest_os == "GNU Mach" and notes.loader == "generic"
    assert notes.xen_version == "xen-3.0"
    assert notes.guest_version == ""               # GUEST_VERSION is not a libelf key
    assert (None, "GUEST_VERSION", "1.3") in notes.notes
    assert notes.virt_base == 0x40000000 and notes.paddr_offset == 0x40000000
    assert (XenElfNote.HYPERCALL_PAGE, "HYPERCALL_PAGE", 2) in notes.notes  # a page index
    assert notes.hypercall_page == 0x40002000      # (2 << 12) + VIRT_BASE
    assert notes.entry == 0x40000000               # no VIRT_ENTRY: e_entry
    assert notes.pae is PaeMode.NO and notes.features == () and not notes.errors
    assert image.elfclass == 64 and image.machine == EM_X86_64
    assert image.virt_offset == 0 and image.hypercall_page_va == 0x40002000
    assert image.kernel_start_va == 0x40000000 and image.entry == 0x40000000
    assert [(s.guest_va, s.memsz) for s in image.segments] == [(0x40000000, 0x77CFC),
                                                              (0x40079000, 0x289F0)]
    assert image.kernel_start_va <= image.hypercall_page_va < image.kernel_end_va
    assert image.warnings == ()


def test_gnumach_with_xen_owned_notes_would_use_them(gnumach):
    """The same bytes with the owner renamed "Xen": libelf then reads the notes, proving
    the owner alone sends Xen to the legacy string."""
    data = bytearray(gzip.decompress(gnumach.read_bytes()))
    count = 0
    at = data.find(b"\x05\x00\x00\x00")
    while at >= 0:
        if data[at + 12:at + 17] == b"name\0":
            data[at + 12:at + 17] = b"Xen\0\0"
            count += 1
        at = data.find(b"\x05\x00\x00\x00", at + 1)
    assert count == 9
    notes = load_guest_image(bytes(data), allow_64bit=True, name="mach-xen-notes").notes
    assert notes.source == "notes" and notes.other_owners == ()
    assert notes.guest_os == "GNU Mach" and notes.guest_version == "1.3"
    assert notes.hypercall_page == 0x40002000 and notes.paddr_offset == 0x40000000


def test_grub_x86_64_xen_loads():
    image = load_guest_image(grub_x86_64_xen(), allow_64bit=True)
    notes = image.notes
    assert notes.source == "notes" and notes.guest_os == "GRUB"
    assert notes.loader == "generic" and notes.xen_version == "xen-3.0"
    assert notes.entry == 0 and notes.virt_base == 0 and notes.hypercall_page is None
    assert image.elfclass == 64 and image.entry == 0 and image.kernel_start_va == 0
    assert image.segments[0].guest_va == 0 and image.segments[0].memsz > image.segments[0].filesz
    assert image.kernel_end_va % 4096 == 0 and not notes.errors
    # No HYPERCALL_PAGE note: GRUB issues `syscall` itself, e.g. sched_op (29) as
    # mov $29, %rax; syscall; ret.
    assert bytes.fromhex("48c7c01d0000000f05c3") in image.segments[0].data


def test_debian_kernel_notes_linux_6_1():
    from debian_kernel import debian_vmlinuz
    image = load_guest_image(debian_vmlinuz(), allow_64bit=True)
    notes = image.notes
    found = {name for _, name, _ in notes.notes}
    assert found >= {"GUEST_OS", "GUEST_VERSION", "XEN_VERSION", "VIRT_BASE", "INIT_P2M",
                     "ENTRY", "FEATURES", "SUPPORTED_FEATURES", "PAE_MODE", "LOADER",
                     "L1_MFN_VALID", "SUSPEND_CANCEL", "MOD_START_PFN", "HV_START_LOW",
                     "PADDR_OFFSET", "PHYS32_ENTRY"}
    assert notes.source == "notes" and notes.guest_os == "linux" and notes.loader == "generic"
    assert notes.virt_base == 0xFFFFFFFF80000000 and notes.paddr_offset == 0
    assert notes.init_p2m == 1 << 39                       # PUD_SIZE * PTRS_PER_PUD
    assert notes.hv_start_low == 0xFFFF800000000000
    assert notes.required_features == ("writable_page_tables",)
    assert notes.supported_features == (1 << 0) | (1 << 11) | (1 << 15)
    assert notes.l1_mfn_valid == ((1, 1),)                 # _PAGE_PRESENT
    assert notes.suspend_cancel and notes.mod_start_pfn and notes.pae is PaeMode.EXTCR3
    assert notes.phys32_entry is not None and notes.phys32_entry < 1 << 32
    # Since the XSA-466 backports (6.1.119) Linux has no hypercall page: it issues
    # `syscall` itself, so the builder fills no page.
    assert notes.hypercall_page is None
    assert image.kernel_start_va <= image.entry < image.kernel_end_va
    assert not (image.kernel_start_va <= notes.init_p2m < image.kernel_end_va)
