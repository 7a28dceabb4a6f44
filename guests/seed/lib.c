/*
 * Freestanding support code: Xen console output, a small printf, string functions,
 * panic and command-line parsing.
 */
#include <stdint.h>
#include <hypercall.h>
#include <lib.h>
#include <setup.h>

void xen_console_write(const char *text, size_t len)
{
	HYPERVISOR_console_io(CONSOLEIO_write, len, text);
}

/* Output cursor for vsnprintf: keeps counting past the end so truncation is detectable. */
struct out {
	char *buf;
	size_t size;
	size_t len;
};

static void out_char(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void out_str(struct out *o, const char *s)
{
	while (*s)
		out_char(o, *s++);
}

/* Unsigned value in base 10 or 16, at least min_digits digits (zero-padded). */
static void out_uint(struct out *o, uint32_t value, unsigned int base, int min_digits)
{
	static const char digits[] = "0123456789abcdef";
	char tmp[10];
	int n = 0;

	do {
		tmp[n++] = digits[value % base];
		value /= base;
	} while (value);
	while (n < min_digits && n < (int)sizeof(tmp))
		tmp[n++] = '0';
	while (n)
		out_char(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };
	const char *s;
	int32_t sv;

	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			out_char(&o, *fmt);
			continue;
		}
		switch (*++fmt) {
		case 's':
			s = va_arg(ap, const char *);
			out_str(&o, s ? s : "(null)");
			break;
		case 'x':
			out_uint(&o, va_arg(ap, uint32_t), 16, 1);
			break;
		case 'u':
			out_uint(&o, va_arg(ap, uint32_t), 10, 1);
			break;
		case 'd':
			sv = va_arg(ap, int32_t);
			if (sv < 0) {
				out_char(&o, '-');
				out_uint(&o, -(uint32_t)sv, 10, 1);
			} else {
				out_uint(&o, (uint32_t)sv, 10, 1);
			}
			break;
		case 'p':
			out_str(&o, "0x");
			out_uint(&o, (uint32_t)(uintptr_t)va_arg(ap, void *), 16, 8);
			break;
		case '%':
			out_char(&o, '%');
			break;
		case '\0':
			/* A lone '%' at the end is printed as is. */
			out_char(&o, '%');
			fmt--;
			break;
		default:
			/* Unknown conversion: print it literally so the mistake shows. */
			out_char(&o, '%');
			out_char(&o, *fmt);
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len < size ? (int)o.len : (int)(size ? size - 1 : 0);
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int len;

	va_start(ap, fmt);
	len = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return len;
}

/* One buffer: the kernel runs on one vCPU with events masked while it prints. */
static char printk_buf[PRINTK_MAX];

int printk(const char *fmt, ...)
{
	va_list ap;
	int len;

	va_start(ap, fmt);
	len = vsnprintf(printk_buf, sizeof(printk_buf), fmt, ap);
	va_end(ap);
	xen_console_write(printk_buf, len);
	return len;
}

void panic(const char *fmt, ...)
{
	static const char prefix[] = "seed: panic: ";
	va_list ap;
	int len;

	memcpy(printk_buf, prefix, sizeof(prefix) - 1);
	va_start(ap, fmt);
	len = sizeof(prefix) - 1;
	len += vsnprintf(printk_buf + len, sizeof(printk_buf) - len - 1, fmt, ap);
	va_end(ap);
	printk_buf[len++] = '\n';
	xen_console_write(printk_buf, len);
	xen_reboot(SHUTDOWN_crash);
}

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;

	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

size_t strnlen(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n])
		n++;
	return n;
}

size_t strlcpy(char *dst, const char *src, size_t size)
{
	size_t len = strlen(src);

	if (size) {
		size_t n = len < size - 1 ? len : size - 1;

		memcpy(dst, src, n);
		dst[n] = '\0';
	}
	return len;
}

/* True if the token at p is "key=" (never reads past the end of p). */
static int token_has_key(const char *p, const char *key, size_t key_len)
{
	size_t i;

	for (i = 0; i < key_len; i++)
		if (p[i] != key[i])
			return 0;
	return p[key_len] == '=';
}

enum cmdline_lookup cmdline_get_uint(const char *cmdline, const char *key, unsigned int *value)
{
	size_t key_len = strlen(key);
	const char *p = cmdline;

	while (*p) {
		while (*p == ' ')
			p++;
		if (token_has_key(p, key, key_len)) {
			uint32_t n = 0;
			int digits = 0;

			for (p += key_len + 1; *p >= '0' && *p <= '9'; p++, digits++) {
				uint32_t d = (uint32_t)(*p - '0');

				if (n > (UINT32_MAX - d) / 10)
					return CMDLINE_MALFORMED;
				n = n * 10 + d;
			}
			if (!digits || (*p && *p != ' '))
				return CMDLINE_MALFORMED;
			*value = n;
			return CMDLINE_FOUND;
		}
		while (*p && *p != ' ')
			p++;
	}
	return CMDLINE_ABSENT;
}
