/*
 * Shared helpers (common/util.h): FNV-1a, monotonic condition variables,
 * wall-clock milliseconds.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stock.h>

#include "common/util.h"

uint64_t
util_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
	return h;
}

int
util_cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int rc;

	if (pthread_condattr_init(&a) != 0)
		return -1;
	rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC) == 0 && pthread_cond_init(cv, &a) == 0;
	pthread_condattr_destroy(&a);
	return rc ? 0 : -1;
}

void
util_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
	ts.tv_nsec = (long)(deadline_ns % 1000000000ULL);
	pthread_cond_timedwait(cv, mu, &ts);
}

int64_t
util_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *
util_cache_zalloc(size_t size)
{
	size_t rounded = (size + STOCK_CACHELINE - 1) & ~(size_t)(STOCK_CACHELINE - 1);
	void *p = aligned_alloc(STOCK_CACHELINE, rounded);

	if (p != NULL)
		memset(p, 0, rounded);
	return p;
}

int
util_hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
util_pct_decode(const char *src, size_t n, bool plus_is_space, char *out, size_t cap,
    size_t *outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)src[i];

		if (ch == '%') {
			int hi, lo;
			if (n - i < 3)
				return -1;
			hi = util_hexval((unsigned char)src[i + 1]);
			lo = util_hexval((unsigned char)src[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = (unsigned char)(hi << 4 | lo);
			i += 2;
		} else if (ch == '+' && plus_is_space) {
			ch = ' ';
		}
		if (ch == '\0' || o == cap)
			return -1;
		out[o++] = (char)ch;
	}
	*outlen = o;
	return 0;
}

void
util_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}
