/*
 * libstock — permits: a permit gate (bulkhead / counting semaphore) whose
 * size can change at run time.
 *
 * A gate has a `limit` and a number of permits `in_use`. acquire(k) succeeds
 * only if in_use + k <= limit; release(k) gives permits back. Both numbers
 * live in ONE 64-bit word changed by CAS, so admission is checked against the
 * limit in force at the very instant of the acquisition:
 *
 *   invariant: an acquisition never makes in_use exceed the current limit.
 *
 * resize(n) may shrink the limit below the permits currently in use; nobody
 * is evicted, but no acquisition succeeds until enough have been released
 * that the new holder fits (in_use + k <= n). Growing the limit wakes
 * waiters.
 *
 * Waiting acquirers sleep on a ck_ec event count (futex) that releases and
 * resizes bump; every waiter wakes and re-tries (no FIFO: a waiter asking for
 * many permits can be overtaken by smaller requests). Releasers skip the
 * bump entirely when nobody waits.
 *
 * Because both halves share one word, limit and in_use are at most
 * STOCK_PERMITS_MAX (2^32 - 1); the API still takes 64-bit counts.
 */
#ifndef STOCK_PERMITS_H
#define STOCK_PERMITS_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest limit, in-use count and acquisition size a gate accepts. */
#define STOCK_PERMITS_MAX ((uint64_t)0xffffffffULL)

struct stock_permits {
	uint64_t word;      /* private: limit << 32 | in_use, the CAS word */
	uint32_t nwaiters;  /* private: threads inside a blocking acquire */
	uint32_t ec;        /* private: a struct ck_ec32 bumped by release/resize */
	/* Statistics, on their own cache line. */
	uint64_t acquired __attribute__((aligned(STOCK_CACHELINE))); /* private: successes */
	uint64_t rejected;  /* private: try_acquire calls refused */
	uint64_t timed_out; /* private: acquire calls that timed out */
	uint64_t peak;      /* private: highest in_use reached */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_permits stock_permits_t;

/* A reading for metrics; each field is exact, but they are read one by one. */
struct stock_permits_stats {
	uint64_t limit;     /* current limit */
	uint64_t in_use;    /* permits currently held */
	uint64_t waiters;   /* threads currently inside stock_permits_acquire */
	uint64_t acquired;  /* successful acquire/try_acquire calls */
	uint64_t rejected;  /* try_acquire calls answered STOCK_EBUSY */
	uint64_t timed_out; /* acquire calls answered STOCK_ETIMEDOUT */
	uint64_t peak;      /* highest in_use ever reached */
};
typedef struct stock_permits_stats stock_permits_stats_t;

/**
 * stock_permits_init - initialise a gate with @n permits, none in use.
 * @p: the gate.
 * @n: the limit, 1 .. STOCK_PERMITS_MAX.
 *
 * Returns 0; STOCK_EINVAL when @p is NULL or @n is 0; STOCK_ERANGE when @n
 * exceeds STOCK_PERMITS_MAX. Not thread-safe against other use of @p.
 */
STOCK_EXTERN int stock_permits_init(struct stock_permits *p, uint64_t n);

/**
 * stock_permits_destroy - release a gate's resources (it owns none).
 *
 * Must not be called while a thread waits in stock_permits_acquire(). Permits
 * still held are simply forgotten. Safe on NULL.
 */
STOCK_EXTERN void stock_permits_destroy(struct stock_permits *p);

/**
 * stock_permits_try_acquire - take @k permits if they are free, never block.
 * @p: the gate.
 * @k: permits wanted, 1 .. STOCK_PERMITS_MAX.
 *
 * Returns 0 when the @k permits are now held by the caller; STOCK_EBUSY when
 * in_use + @k exceeds the limit (nothing changes); STOCK_EINVAL when @p is
 * NULL or @k is 0; STOCK_ERANGE when @k exceeds STOCK_PERMITS_MAX.
 * Lock-free. Thread-safe; an acquire barrier on success.
 */
STOCK_EXTERN int stock_permits_try_acquire(struct stock_permits *p, uint64_t k);

/**
 * stock_permits_acquire - take @k permits, sleeping until they are free.
 * @p:        the gate.
 * @k:        permits wanted, 1 .. STOCK_PERMITS_MAX. May exceed the current
 *            limit: the call then waits for a resize (or the deadline).
 * @deadline: absolute CLOCK_MONOTONIC deadline, NULL to wait forever; a past
 *            deadline makes this a try_acquire.
 *
 * Returns 0 when the permits are held; STOCK_ETIMEDOUT when @deadline passed
 * first (nothing held); STOCK_EINVAL / STOCK_ERANGE as try_acquire. The
 * caller sleeps (futex) while waiting. Thread-safe; an acquire barrier.
 */
STOCK_EXTERN int stock_permits_acquire(struct stock_permits *p, uint64_t k,
    const struct timespec *deadline);

/**
 * stock_permits_release - give back @k permits and wake waiters.
 * @p: the gate.
 * @k: permits to return, 1 .. in_use.
 *
 * Returns 0; STOCK_EINVAL when @p is NULL, @k is 0, or @k exceeds the
 * permits in use (nothing changes then). The gate does not track which thread
 * holds what: callers release what they acquired. Thread-safe; a release
 * barrier.
 */
STOCK_EXTERN int stock_permits_release(struct stock_permits *p, uint64_t k);

/**
 * stock_permits_resize - change the limit at run time.
 * @p:     the gate.
 * @new_n: the new limit, 0 .. STOCK_PERMITS_MAX (0 closes the gate to new
 *         acquisitions until it is resized again).
 *
 * Takes effect atomically: every acquisition after it is checked against
 * @new_n. Shrinking below in_use evicts nobody; new acquisitions wait until
 * in_use + k <= @new_n. Growing wakes waiters. Returns 0; STOCK_EINVAL when
 * @p is NULL; STOCK_ERANGE when @new_n exceeds STOCK_PERMITS_MAX.
 * Thread-safe (concurrent resizes apply in some order).
 */
STOCK_EXTERN int stock_permits_resize(struct stock_permits *p, uint64_t new_n);

/**
 * stock_permits_available - permits that could be acquired right now
 * (limit - in_use, or 0 when in_use >= limit). A racy hint; 0 for NULL.
 */
STOCK_EXTERN uint64_t stock_permits_available(const struct stock_permits *p);

/**
 * stock_permits_stats - read the gate's counters.
 * @p:   the gate.
 * @out: receives the counters. limit and in_use come from one atomic read.
 *
 * Returns 0 or STOCK_EINVAL when @p or @out is NULL. Thread-safe.
 */
STOCK_EXTERN int stock_permits_stats(const struct stock_permits *p,
    struct stock_permits_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_PERMITS_H */
