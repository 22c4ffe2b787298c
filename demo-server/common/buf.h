/*
 * A growable byte buffer for output whose size is not known in advance
 * (/metrics, the Admin stock list): it doubles as needed, and an allocation
 * failure is remembered (buf_failed) so the caller answers 503 instead of
 * sending a truncated body. Also the Prometheus text-format writer on it.
 */
#ifndef DEMO_BUF_H
#define DEMO_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	char *data;
	size_t len, cap;
	bool failed; /* an allocation failed: the content is incomplete */
	char *fixed; /* the caller's storage it started in (BUF_ON), never freed */
};

#define BUF_INIT { NULL, 0, 0, false, NULL }

/* A buffer that starts in the caller's array @arr (no allocation while the
   output fits: a reply on the request path) and moves to the heap beyond it. */
#define BUF_ON(arr) { (arr), 0, sizeof(arr), false, (arr) }

/** buf_append - add @n bytes. On allocation failure sets failed (and adds nothing more). */
void buf_append(struct buf *b, const void *p, size_t n);

/** buf_str - add the C string @s (without its NUL). */
void buf_str(struct buf *b, const char *s);

/** buf_u64 - add @v in decimal: what "%llu" prints, without printf (the request path). */
void buf_u64(struct buf *b, uint64_t v);

/** buf_key_u64 - buf_str(@key) then buf_u64(@v): a JSON member after its key text. */
void buf_key_u64(struct buf *b, const char *key, uint64_t v);

/** buf_i64 - add @v in decimal: what "%lld" prints. */
void buf_i64(struct buf *b, int64_t v);

/** buf_printf - add formatted text, growing as needed. */
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** buf_free - release the memory; @b is empty again. */
void buf_free(struct buf *b);

/*
 * Prometheus text exposition format (version 0.0.4). Every family is
 * announced with HELP and TYPE before its samples (promtool check metrics
 * is part of the HTTP test).
 */

/** prom_family - "# HELP name help" and "# TYPE name type". */
void prom_family(struct buf *b, const char *name, const char *type, const char *help);

/** prom_u64 - one sample: name{labels} value (@labels NULL or "k=\"v\",..."). */
void prom_u64(struct buf *b, const char *name, const char *labels, uint64_t v);

/** prom_f64 - one sample with a floating-point value. */
void prom_f64(struct buf *b, const char *name, const char *labels, double v);

/** prom_gauge_u64 - a whole single-sample gauge family: HELP, TYPE, value. */
void prom_gauge_u64(struct buf *b, const char *name, const char *help, uint64_t v);

/** prom_counter_u64 - a whole single-sample counter family. */
void prom_counter_u64(struct buf *b, const char *name, const char *help, uint64_t v);

#endif /* DEMO_BUF_H */
