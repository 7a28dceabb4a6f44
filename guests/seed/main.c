/*
 * Phase 4: start_kernel(). The seed kernel ends here: it reports the command line, runs
 * the optional benchmark loop (bench=N) and powers the domain off.
 */
#include <hypercall.h>
#include <lib.h>
#include <setup.h>

char boot_command_line[MAX_GUEST_CMDLINE];

static void run_bench(const char *cmdline)
{
	unsigned int iterations;

	switch (cmdline_get_uint(cmdline, "bench", &iterations)) {
	case CMDLINE_FOUND:
		printk("seed: bench_loop(%u) = 0x%x\n", iterations, bench_loop(iterations));
		break;
	case CMDLINE_MALFORMED:
		printk("seed: bench= needs a decimal count below 2^32, skipped\n");
		break;
	case CMDLINE_ABSENT:
		break;
	}
}

void start_kernel(void)
{
	/* start_info.cmd_line need not be NUL-terminated: copy at most its 1024 bytes. */
	size_t len = strnlen(xen_start_info->cmd_line, sizeof(boot_command_line) - 1);

	memcpy(boot_command_line, xen_start_info->cmd_line, len);
	boot_command_line[len] = '\0';
	printk("seed: command line \"%s\"\n", boot_command_line);

	xen_memory_phase();
	xen_kernel_phase();

	run_bench(boot_command_line);

	printk("seed: powering off\n");
	xen_reboot(SHUTDOWN_poweroff);
}
