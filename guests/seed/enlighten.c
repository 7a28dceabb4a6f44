/*
 * Phase 1: the first C code (Linux arch/x86/xen/enlighten_pv.c xen_start_kernel).
 * Checks start_info, prints the banner, installs the Xen pv_ops, reads the feature
 * bitmap, then runs the later phases in order.
 * ABI: xen/include/public/xen.h struct start_info; XEN-PV-ABI.md 2.3, 3.13.
 */
#include <hypercall.h>
#include <irq.h>
#include <lib.h>
#include <paravirt.h>
#include <setup.h>

struct start_info *xen_start_info;

/* start_info.magic must begin with this for any 3.0-compatible hypervisor. */
static const char xen_magic_prefix[] = "xen-3.0";

void xen_reboot(unsigned int reason)
{
	struct sched_shutdown shutdown = { .reason = reason };

	for (;;)
		HYPERVISOR_sched_op(SCHEDOP_shutdown, &shutdown);
}

/* cpuid through Xen's forced-emulation prefix, so Xen can mask what a PV guest sees. */
static void xen_cpuid(unsigned int *ax, unsigned int *bx, unsigned int *cx, unsigned int *dx)
{
	asm volatile (XEN_EMULATE_PREFIX "cpuid"
		      : "=a" (*ax), "=b" (*bx), "=c" (*cx), "=d" (*dx)
		      : "0" (*ax), "2" (*cx));
}

/*
 * Load a one-page GDT that lies in the 1:1 kernel mapping: Xen requires the frame to
 * have no writable mapping, so remap it read-only, then hand its MFN to set_gdt.
 */
static void xen_load_gdt(const struct desc_ptr *dtr)
{
	unsigned long va = dtr->address;
	unsigned int size = dtr->size + 1u;
	unsigned long frames[1];
	pte_t pte;
	long rc;

	if ((va & ~PAGE_MASK) || size > PAGE_SIZE)
		panic("load_gdt: GDT at %p (%u bytes) is not one aligned page", (void *)va, size);
	frames[0] = pfn_to_mfn(virt_to_pfn(va));
	if (va < VIRT_BASE || frames[0] == INVALID_P2M_ENTRY)
		panic("load_gdt: GDT at %p is not in the kernel mapping", (void *)va);

	pte = mfn_pte(frames[0], PAGE_KERNEL_RO);
	rc = HYPERVISOR_update_va_mapping(va, pte.pte, UVMF_INVLPG);
	if (rc)
		panic("load_gdt: remapping %p read-only failed: %d", (void *)va, (int)rc);
	rc = HYPERVISOR_set_gdt(frames, size / 8);
	if (rc)
		panic("load_gdt: set_gdt failed: %d", (int)rc);
}

static void xen_load_sp0(unsigned long sp0)
{
	long rc = HYPERVISOR_stack_switch(FLAT_KERNEL_SS, sp0);

	if (rc)
		panic("stack_switch to %p failed: %d", (void *)sp0, (int)rc);
}

static void xen_set_debugreg(int reg, unsigned long value)
{
	long rc = HYPERVISOR_set_debugreg(reg, value);

	if (rc)
		panic("set_debugreg(%d, 0x%x) failed: %d", reg, (unsigned int)value, (int)rc);
}

static unsigned long xen_get_debugreg(int reg)
{
	return HYPERVISOR_get_debugreg(reg);
}

const struct pv_cpu_ops xen_cpu_ops = {
	.cpuid = xen_cpuid,
	.load_gdt = xen_load_gdt,
	.load_sp0 = xen_load_sp0,
	.set_debugreg = xen_set_debugreg,
	.get_debugreg = xen_get_debugreg,
};

static void xen_banner(void)
{
	char magic[sizeof(xen_start_info->magic) + 1];
	long version = HYPERVISOR_xen_version(XENVER_version, NULL);

	memcpy(magic, xen_start_info->magic, sizeof(xen_start_info->magic));
	magic[sizeof(xen_start_info->magic)] = '\0';
	printk("seed: pvdbg-seed 1 booting on Xen %u.%u (%s)\n",
	       (unsigned int)(version >> 16) & 0xffff, (unsigned int)version & 0xffff, magic);
}

void xen_start_kernel(void)
{
	unsigned int submap0 = 0;
	long rc;

	if (!xen_start_info)
		panic("no start_info (ESI was 0 at entry)");
	if (memcmp(xen_start_info->magic, xen_magic_prefix, sizeof(xen_magic_prefix) - 1))
		panic("start_info magic does not start with %s", xen_magic_prefix);

	xen_banner();

	xen_init_paravirt();
	arch_local_irq_disable();
	printk("seed: pv_ops %s installed, save_fl 0x%x, vcpu_info %s\n", pv_info.name,
	       (unsigned int)arch_local_save_flags(), xen_vcpu ? "mapped" : "not mapped");

	rc = xen_setup_features(&submap0);
	if (rc)
		printk("seed: XENVER_get_features failed: %d\n", (int)rc);
	else
		printk("seed: xen features submap[0] 0x%x\n", submap0);

	xen_adopt_boot_pagetables();
	xen_reserve_top();
	start_kernel();
}
