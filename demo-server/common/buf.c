/*
 * Growable buffer and Prometheus text writer (common/buf.h). A buffer may
 * start in the caller's storage (BUF_ON) and move to the heap when it grows.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

static bool
reserve(struct buf *b, size_t extra)
{
	size_t cap;
	char *p;

	if (b->failed)
		return false;
	if (b->cap - b->len > extra)
		return true;
	cap = b->cap ? b->cap : 4096;
	while (cap - b->len <= extra) {
		if (cap > SIZE_MAX / 2) {
			b->failed = true;
			return false;
		}
		cap *= 2;
	}
	if ((p = realloc(b->data == b->fixed ? NULL : b->data, cap)) == NULL) {
		b->failed = true;
		return false;
	}
	if (b->data == b->fixed && b->len > 0)
		memcpy(p, b->fixed, b->len); /* leaving the caller's storage */
	b->data = p;
	b->cap = cap;
	return true;
}

void
buf_append(struct buf *b, const void *p, size_t n)
{
	if (!reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
buf_str(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void
buf_u64(struct buf *b, uint64_t v)
{
	char d[20]; /* UINT64_MAX has 20 digits */
	size_t i = sizeof d;

	do {
		d[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	buf_append(b, d + i, sizeof d - i);
}

void
buf_key_u64(struct buf *b, const char *key, uint64_t v)
{
	buf_str(b, key);
	buf_u64(b, v);
}

void
buf_i64(struct buf *b, int64_t v)
{
	if (v < 0) {
		buf_append(b, "-", 1);
		buf_u64(b, (uint64_t)0 - (uint64_t)v); /* INT64_MIN too */
		return;
	}
	buf_u64(b, (uint64_t)v);
}

void
buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!reserve(b, 256))
		return;
	va_start(ap, fmt);
	n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->failed = true;
		return;
	}
	if ((size_t)n >= b->cap - b->len) {
		if (!reserve(b, (size_t)n))
			return;
		va_start(ap, fmt);
		vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

void
buf_free(struct buf *b)
{
	if (b->data != b->fixed)
		free(b->data);
	*b = (struct buf)BUF_INIT;
}

void
prom_family(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
prom_u64(struct buf *b, const char *name, const char *labels, uint64_t v)
{
	if (labels != NULL)
		buf_printf(b, "%s{%s} %llu\n", name, labels, (unsigned long long)v);
	else
		buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

void
prom_f64(struct buf *b, const char *name, const char *labels, double v)
{
	if (labels != NULL)
		buf_printf(b, "%s{%s} %.9g\n", name, labels, v);
	else
		buf_printf(b, "%s %.9g\n", name, v);
}

void
prom_gauge_u64(struct buf *b, const char *name, const char *help, uint64_t v)
{
	prom_family(b, name, "gauge", help);
	prom_u64(b, name, NULL, v);
}

void
prom_counter_u64(struct buf *b, const char *name, const char *help, uint64_t v)
{
	prom_family(b, name, "counter", help);
	prom_u64(b, name, NULL, v);
}
