/*
 * Small helpers several parts of the server share: a string hash for the
 * open-addressing indexes, condition variables on CLOCK_MONOTONIC (so a
 * deadline from stock_now_ns() can be waited for), wall-clock milliseconds
 * (lease expiries: times other processes read), percent-decoding with
 * explicit lengths (request paths, Redis URLs) and error messages.
 */
#ifndef DEMO_UTIL_H
#define DEMO_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** util_hash - FNV-1a of @s[0..@n) (not for untrusted keys chosen to collide). */
uint64_t util_hash(const char *s, size_t n);

/** util_cond_init - a condition variable whose timed waits use CLOCK_MONOTONIC. 0 or -1. */
int util_cond_init(pthread_cond_t *cv);

/**
 * util_cond_wait_until - wait on @cv (with @mu held) until signalled or until
 * @deadline_ns on the stock_now_ns() clock. Spurious wake-ups happen:
 * callers re-check their condition.
 */
void util_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns);

/** util_wall_ms - CLOCK_REALTIME in milliseconds since the epoch. */
int64_t util_wall_ms(void);

/**
 * util_cache_zalloc - @size zeroed bytes aligned to a cache line (for
 * structs that embed libstock stats, gauges or padded counters), freed with
 * free(). NULL when out of memory.
 */
void *util_cache_zalloc(size_t size);

/** util_hexval - the value of hex digit @c, or -1. */
int util_hexval(int c);

/*
 * util_pct_decode - percent-decode @n bytes of @src into @out (at most @cap
 * bytes; '+' becomes a space when @plus_is_space). Returns 0 with the decoded
 * length in *@outlen, or -1 for a malformed escape, a decoded NUL byte, or
 * output longer than @cap. Never reads past @src[@n).
 */
int util_pct_decode(const char *src, size_t n, bool plus_is_space, char *out, size_t cap,
    size_t *outlen);

/** util_seterr - format a one-line error message into @err (NULL or 0 size: ignored). */
void util_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif /* DEMO_UTIL_H */
