/*
 * libstock — telemetry: striped hot-path counters and monotonic IDs.
 *
 * stock_stat is a counter for metrics that many threads bump on their hot
 * path (requests served, units sold). A single shared word would bounce its
 * cache line between cores on every increment; a stat instead keeps
 * STOCK_STAT_STRIPES words, each on its own cache line, and a thread always
 * adds to "its" stripe: the stripe index is derived once per thread from the
 * kernel thread id (threads created one after another get different
 * stripes) and cached in a thread-local. Adds are atomic, so two threads
 * that happen to share a stripe stay exact. Reading sums the stripes.
 *
 * stock_idgen hands out unique, increasing 64-bit IDs (order numbers,
 * request ids) with one ck_pr_faa_64 per ID, or a block of n IDs at once.
 *
 * Neither allocates; both are plain structs that may be static, on the
 * stack, or embedded. Cache-line aligned: heap copies need aligned_alloc().
 */
#ifndef STOCK_TELEMETRY_H
#define STOCK_TELEMETRY_H

#include <ck_pr.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================
 * Striped counter
 * ====================================================================== */

/* Number of stripes in a stock_stat (a power of two). */
#define STOCK_STAT_STRIPES 16

struct stock_stat_stripe {
	uint64_t value; /* private: this stripe's share of the total */
	char pad[STOCK_CACHELINE - sizeof(uint64_t)]; /* private */
} __attribute__((aligned(STOCK_CACHELINE)));

struct stock_stat {
	struct stock_stat_stripe stripe[STOCK_STAT_STRIPES]; /* private */
};
typedef struct stock_stat stock_stat_t;

#define STOCK_STAT_INITIALIZER \
	{                      \
		{ { 0, { 0 } } } \
	}

/**
 * stock_stat_init - initialise a striped counter to zero.
 * @s: the counter.
 *
 * Returns 0, or STOCK_EINVAL when @s is NULL. Not thread-safe against other
 * use of @s. STOCK_STAT_INITIALIZER is equivalent for static objects.
 */
STOCK_EXTERN int stock_stat_init(struct stock_stat *s);

/**
 * stock_stat_destroy - release a striped counter (it owns nothing).
 *
 * Safe on NULL. Must not race with other use of @s.
 */
STOCK_EXTERN void stock_stat_destroy(struct stock_stat *s);

/**
 * stock_stat_thread_slot - the calling thread's stripe index plus one.
 *
 * Derived from the kernel thread id, so it is the same in every translation
 * unit and needs no global state. Called once per thread by stock_stat_add();
 * exported only for that inline fast path. Thread-safe.
 */
STOCK_EXTERN uint32_t stock_stat_thread_slot(void);

/* Per translation unit cache of stock_stat_thread_slot() (0: not yet known). */
static __thread uint32_t stock__stat_slot __attribute__((unused));

/**
 * stock_stat_add - add @delta to the counter on the caller's stripe.
 * @s:     the counter.
 * @delta: amount to add.
 *
 * One uncontended atomic add on a cache line the calling thread (usually)
 * owns alone. Never fails, never blocks. Thread-safe; no ordering with other
 * memory is implied (metrics only). @s must not be NULL.
 */
STOCK_INLINE void
stock_stat_add(struct stock_stat *s, uint64_t delta)
{
	uint32_t slot = stock__stat_slot;

	if (STOCK_UNLIKELY(slot == 0))
		stock__stat_slot = slot = stock_stat_thread_slot();
	ck_pr_add_64(&s->stripe[(slot - 1) & (STOCK_STAT_STRIPES - 1)].value, delta);
}

/**
 * stock_stat_inc - stock_stat_add(@s, 1).
 */
STOCK_INLINE void
stock_stat_inc(struct stock_stat *s)
{
	stock_stat_add(s, 1);
}

/**
 * stock_stat_sum - the counter's total.
 * @s: the counter (NULL reads as 0).
 *
 * Sums the stripes one by one, so with concurrent adds the result is some
 * value between the total before and after the call, not a snapshot; for an
 * add-only counter, successive sums by one thread never decrease. Totals wrap
 * modulo 2^64. Thread-safe.
 */
STOCK_EXTERN uint64_t stock_stat_sum(const struct stock_stat *s);

/**
 * stock_stat_reset - set the counter to zero and return what it held.
 * @s: the counter (NULL returns 0).
 *
 * Each stripe is swapped to zero atomically, so every concurrent add is
 * counted exactly once: either in the returned total or in the counter
 * afterwards (never lost, never twice). Useful for per-interval rates.
 * Thread-safe.
 */
STOCK_EXTERN uint64_t stock_stat_reset(struct stock_stat *s);

/* ======================================================================
 * Monotonic ID generator
 * ====================================================================== */

struct stock_idgen {
	uint64_t next; /* private: the next ID to hand out */
	char pad[STOCK_CACHELINE - sizeof(uint64_t)]; /* private */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_idgen stock_idgen_t;

#define STOCK_IDGEN_INITIALIZER(start) \
	{                              \
		(start), { 0 }         \
	}

/**
 * stock_idgen_init - initialise an ID generator.
 * @g:     the generator.
 * @start: the first ID to hand out (at most STOCK_COUNT_MAX).
 *
 * Returns 0, STOCK_EINVAL when @g is NULL, or STOCK_ERANGE when @start is
 * above STOCK_COUNT_MAX. Not thread-safe against other use of @g.
 */
STOCK_EXTERN int stock_idgen_init(struct stock_idgen *g, uint64_t start);

/**
 * stock_idgen_destroy - release an ID generator (it owns nothing). Safe on NULL.
 */
STOCK_EXTERN void stock_idgen_destroy(struct stock_idgen *g);

/**
 * stock_idgen_next - hand out the next ID.
 * @g: the generator (not NULL).
 *
 * Returns an ID no other call on @g returns. IDs follow one global order
 * (the order of the underlying fetch-and-add), so the IDs one thread obtains
 * strictly increase. With start <= STOCK_COUNT_MAX at least 3 * 2^62 IDs can
 * be issued before the space is exhausted. Lock-free, one atomic
 * fetch-and-add. Thread-safe.
 */
STOCK_INLINE uint64_t
stock_idgen_next(struct stock_idgen *g)
{
	return ck_pr_faa_64(&g->next, 1);
}

/**
 * stock_idgen_next_block - reserve @n consecutive IDs at once.
 * @g:     the generator.
 * @n:     how many IDs (1 .. STOCK_COUNT_MAX).
 * @first: receives the first of them; the block is [*first, *first + n).
 *
 * Returns 0; STOCK_EINVAL when @g or @first is NULL or @n is 0; STOCK_ERANGE
 * when @n exceeds STOCK_COUNT_MAX or the block would run past the end of the
 * 64-bit ID space (nothing is reserved then). Lock-free; thread-safe with
 * stock_idgen_next() and other blocks.
 */
STOCK_EXTERN int stock_idgen_next_block(struct stock_idgen *g, uint64_t n, uint64_t *first);

/**
 * stock_idgen_peek - the ID the next call would return (a racy hint).
 */
STOCK_EXTERN uint64_t stock_idgen_peek(const struct stock_idgen *g);

/* ======================================================================
 * Gauge
 * ====================================================================== */

/*
 * A gauge is one 64-bit value that one or more threads set and others read
 * (a queue depth, a pool size, the time of the last sale, a "connected"
 * flag): every access is one atomic load or store, so readers never see a
 * torn value. A store is a release and a load an acquire, so what a writer
 * did before storing is visible to a reader that sees the value. Unlike a
 * stock_stat it is a single word: right for values that are set, not for
 * counts bumped on a hot path by many threads. Every function is inline and
 * takes a gauge that must not be NULL (not checked).
 */
struct stock_gauge {
	uint64_t value; /* private */
};
typedef struct stock_gauge stock_gauge_t;

#define STOCK_GAUGE_INITIALIZER(v) \
	{ (v) }

/** stock_gauge_init - set @g to @v (not thread-safe against other use of @g). */
STOCK_INLINE void
stock_gauge_init(struct stock_gauge *g, uint64_t v)
{
	g->value = v;
}

/** stock_gauge_set - store @v (release). Thread-safe. */
STOCK_INLINE void
stock_gauge_set(struct stock_gauge *g, uint64_t v)
{
	/* A release orders earlier loads too, not only stores. */
	ck_pr_fence_release();
	ck_pr_store_64(&g->value, v);
}

/** stock_gauge_get - the current value (acquire). Thread-safe. */
STOCK_INLINE uint64_t
stock_gauge_get(const struct stock_gauge *g)
{
	uint64_t v = ck_pr_load_64(&g->value);

	/* An acquire orders later stores too, not only loads. */
	ck_pr_fence_acquire();
	return v;
}

/** stock_gauge_add - add @d (wrapping) and return the new value. Thread-safe. */
STOCK_INLINE uint64_t
stock_gauge_add(struct stock_gauge *g, uint64_t d)
{
	return ck_pr_faa_64(&g->value, d) + d;
}

/**
 * stock_gauge_max - raise @g to @v if @v is larger (a high-water mark);
 * returns the value after the call. Lock-free, thread-safe.
 */
STOCK_INLINE uint64_t
stock_gauge_max(struct stock_gauge *g, uint64_t v)
{
	uint64_t cur = ck_pr_load_64(&g->value);

	while (cur < v && !ck_pr_cas_64_value(&g->value, cur, v, &cur))
		;
	return cur < v ? v : cur;
}

#ifdef __cplusplus
}
#endif

#endif /* STOCK_TELEMETRY_H */
