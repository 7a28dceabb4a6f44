/*
 * sched_op (hypercall 29) commands and shutdown reasons.
 * ABI: xen/include/public/sched.h.
 */
#ifndef SEED_XEN_SCHED_H
#define SEED_XEN_SCHED_H

#define SCHEDOP_yield            0
#define SCHEDOP_block            1
#define SCHEDOP_shutdown         2   /* arg: struct sched_shutdown */
#define SCHEDOP_poll             3
#define SCHEDOP_remote_shutdown  4
#define SCHEDOP_shutdown_code    5
#define SCHEDOP_watchdog         6
#define SCHEDOP_pin_override     7

#define SHUTDOWN_poweroff        0
#define SHUTDOWN_reboot          1
#define SHUTDOWN_suspend         2
#define SHUTDOWN_crash           3
#define SHUTDOWN_watchdog        4
#define SHUTDOWN_soft_reset      5

#ifndef __ASSEMBLY__
#include <stdint.h>

/* ABI: xen/include/public/sched.h struct sched_shutdown (4 bytes) */
struct sched_shutdown {
	uint32_t reason;   /* SHUTDOWN_* */
};
#endif /* __ASSEMBLY__ */

#endif /* SEED_XEN_SCHED_H */
