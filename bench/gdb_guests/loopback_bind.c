/*
 * LD_PRELOAD shim for the udbserver child of bench/run_gdb.py.
 *
 * udbserver 0.3.0 listens on 0.0.0.0 and offers no way to choose the address. This
 * shim turns a bind() to the IPv4 or IPv6 wildcard address into one to the loopback
 * address, so the benchmark's stubs are reachable from this machine only. Every other
 * bind() is passed through unchanged.
 *
 * Built at bench time: gcc -shared -fPIC -o loopback_bind.so loopback_bind.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *address, socklen_t length)
{
	static bind_fn real_bind;

	if (real_bind == NULL) {
		real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
		if (real_bind == NULL) {
			errno = ENOSYS;
			return -1;
		}
	}
	if (address != NULL && address->sa_family == AF_INET
	    && length >= (socklen_t)sizeof(struct sockaddr_in)) {
		struct sockaddr_in ipv4;

		memcpy(&ipv4, address, sizeof(ipv4));
		if (ipv4.sin_addr.s_addr == htonl(INADDR_ANY)) {
			ipv4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			return real_bind(fd, (const struct sockaddr *)&ipv4, sizeof(ipv4));
		}
	}
	if (address != NULL && address->sa_family == AF_INET6
	    && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 ipv6;

		memcpy(&ipv6, address, sizeof(ipv6));
		if (memcmp(&ipv6.sin6_addr, &in6addr_any, sizeof(in6addr_any)) == 0) {
			ipv6.sin6_addr = in6addr_loopback;
			return real_bind(fd, (const struct sockaddr *)&ipv6, sizeof(ipv6));
		}
	}
	return real_bind(fd, address, length);
}
