/*
 * Freestanding helpers: console output, string functions, panic, command-line parsing (lib.c).
 */
#ifndef SEED_LIB_H
#define SEED_LIB_H

#include <stdarg.h>
#include <stddef.h>

#define ARRAY_SIZE(a)  (sizeof(a) / sizeof((a)[0]))

/* Write len bytes to the Xen console with CONSOLEIO_write. */
void xen_console_write(const char *text, size_t len);

/*
 * Format into buf (always NUL-terminated when size > 0) and return the length written.
 * Conversions: %s %x %u %d %p and %%; arguments are 32-bit. %p prints 0x + 8 hex digits.
 */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Format and write one message to the Xen console (at most PRINTK_MAX bytes). */
#define PRINTK_MAX  1280
int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print "seed: panic: <message>" and shut the domain down with SHUTDOWN_crash. */
void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
/* Copy at most size - 1 bytes and NUL-terminate; returns strlen(src). */
size_t strlcpy(char *dst, const char *src, size_t size);

/* Result of cmdline_get_uint(). */
enum cmdline_lookup {
	CMDLINE_FOUND = 0,        /* key=N present, *value set */
	CMDLINE_ABSENT = -1,      /* no key= token */
	CMDLINE_MALFORMED = -2,   /* key= present but N is not a decimal u32 */
};

/* Look for a space-separated token "key=N" (N decimal, fits in 32 bits). */
enum cmdline_lookup cmdline_get_uint(const char *cmdline, const char *key, unsigned int *value);

#endif /* SEED_LIB_H */
