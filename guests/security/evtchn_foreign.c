/*
 * Event-channel operations on ports the domain does not own: closed ports, ports beyond
 * the 2-level ABI, ports of dom0, and domains that do not exist.  Xen 4.17 answers
 * -EINVAL for a port that is not valid or not in the right state, -ENOENT for a vcpu
 * that does not exist, -EPERM (XSM) for another domain's channels, -ESRCH for no domain.
 * ABI: xen/common/event_channel.c evtchn_send, evtchn_close, evtchn_unmask,
 * evtchn_bind_vcpu, evtchn_status, evtchn_alloc_unbound, evtchn_bind_interdomain;
 * xen/include/public/event_channel.h.
 */
#include "sec.h"

#define EVTCHNOP_bind_interdomain 0
#define EVTCHNOP_close            3
#define EVTCHNOP_send             4
#define EVTCHNOP_status           5
#define EVTCHNOP_alloc_unbound    6
#define EVTCHNOP_bind_vcpu        8
#define EVTCHNOP_unmask           9

#define CLOSED_PORT     50              /* inside the first bucket, never bound */
#define BEYOND_PORT     5000            /* beyond the 1024 ports of the 2-level ABI */

static long evtchn(uint32_t cmd, const void *arg)
{
	return hc(__HYPERVISOR_event_channel_op, cmd, (uint32_t)arg, 0, 0, 0);
}

static long port_op(uint32_t cmd, uint32_t port)
{
	uint32_t arg = port;

	return evtchn(cmd, &arg);
}

void attempt(void)
{
	struct { uint32_t port, vcpu; } bind_vcpu;
	struct { uint16_t dom; uint16_t pad; uint32_t port; uint32_t out[4]; } status;
	struct { uint16_t dom, remote_dom; uint32_t port; } alloc;
	struct { uint16_t remote_dom, pad; uint32_t remote_port, local_port; } inter;

	result("send_closed", port_op(EVTCHNOP_send, CLOSED_PORT));
	result("send_beyond", port_op(EVTCHNOP_send, BEYOND_PORT));
	result("close_closed", port_op(EVTCHNOP_close, CLOSED_PORT));
	result("close_beyond", port_op(EVTCHNOP_close, BEYOND_PORT));
	result("unmask_beyond", port_op(EVTCHNOP_unmask, BEYOND_PORT));
	bind_vcpu.port = CLOSED_PORT;
	bind_vcpu.vcpu = 0;
	result("bind_vcpu_closed", evtchn(EVTCHNOP_bind_vcpu, &bind_vcpu));
	bind_vcpu.port = BEYOND_PORT;
	result("bind_vcpu_beyond", evtchn(EVTCHNOP_bind_vcpu, &bind_vcpu));
	bind_vcpu.port = xen_start_info->store_evtchn;
	bind_vcpu.vcpu = 7;
	result("bind_vcpu_no_vcpu", evtchn(EVTCHNOP_bind_vcpu, &bind_vcpu));
	status.dom = 0;
	status.port = 1;
	result("status_dom0", evtchn(EVTCHNOP_status, &status));
	status.dom = 5;
	result("status_no_domain", evtchn(EVTCHNOP_status, &status));
	status.dom = DOMID_SELF;
	status.port = BEYOND_PORT;
	result("status_beyond", evtchn(EVTCHNOP_status, &status));
	alloc.dom = 0;
	alloc.remote_dom = DOMID_SELF;
	result("alloc_unbound_for_dom0", evtchn(EVTCHNOP_alloc_unbound, &alloc));
	inter.remote_dom = 0;
	inter.remote_port = 1;
	result("bind_dom0_port", evtchn(EVTCHNOP_bind_interdomain, &inter));
	inter.remote_dom = 5;
	result("bind_no_domain", evtchn(EVTCHNOP_bind_interdomain, &inter));
}
