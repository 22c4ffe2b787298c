/*
 * libstock — drain: shutdown reference counting.
 *
 * Code that uses a shared resource (a connection pool, a store, a worker
 * queue) enters its drain first and leaves it afterwards; shutdown closes
 * the drain, which refuses every new entry and waits until the last thread
 * inside has left. After a successful close nobody is inside and nobody can
 * get in, so the resource can be torn down.
 *
 *   if (stock_drain_enter(&pool_drain) != 0)
 *           return reply_503();            // shutting down
 *   use_pool();
 *   stock_drain_leave(&pool_drain);
 *
 *   // shutdown
 *   stock_drain_close(&pool_drain, &deadline);   // 0: nobody inside
 *
 * The closed flag and the number inside share one 64-bit word changed only
 * by CAS, so an enter either counts before the close (and the close waits
 * for its leave) or is refused — never both, never neither. Enter and leave
 * are lock-free, one CAS each when uncontended. The closer sleeps on a ck_ec
 * event count (futex); only the last leave after a close, and only when a
 * closer is actually waiting, bumps it.
 *
 * A close that times out leaves the drain closed; calling close again waits
 * again. There is no re-open: initialise a new drain.
 */
#ifndef STOCK_DRAIN_H
#define STOCK_DRAIN_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct stock_drain {
	uint64_t word;     /* private: closed flag (bit 63) | threads inside */
	uint32_t nwaiters; /* private: threads waiting in stock_drain_close */
	uint32_t ec;       /* private: a struct ck_ec32, bumped by the last leave */
};
typedef struct stock_drain stock_drain_t;

#define STOCK_DRAIN_INITIALIZER \
	{ .word = 0, .nwaiters = 0, .ec = 0 }

/**
 * stock_drain_init - initialise an open drain with nobody inside.
 *
 * Returns 0, or STOCK_EINVAL if @d is NULL. Not thread-safe against other use
 * of @d. STOCK_DRAIN_INITIALIZER is equivalent for static objects.
 */
STOCK_EXTERN int stock_drain_init(struct stock_drain *d);

/**
 * stock_drain_destroy - release a drain's resources (it owns none).
 *
 * Must not be called while a thread is inside, entering or closing. Safe on
 * NULL.
 */
STOCK_EXTERN void stock_drain_destroy(struct stock_drain *d);

/**
 * stock_drain_enter - count the caller inside, unless closing has started.
 *
 * Returns 0 (the caller is inside and must call stock_drain_leave() once),
 * STOCK_ECLOSED once stock_drain_close() has been called (nothing counted),
 * STOCK_ERANGE if 2^63 - 1 threads are already inside, or STOCK_EINVAL if @d
 * is NULL. Lock-free: one CAS when uncontended. Thread-safe.
 */
STOCK_EXTERN int stock_drain_enter(struct stock_drain *d);

/**
 * stock_drain_leave - leave after a successful stock_drain_enter().
 *
 * The last leave after a close wakes the closer(s). A release barrier: what
 * the caller did inside is visible to a closer that returns 0. A leave with
 * nobody inside is ignored. Lock-free; thread-safe; a no-op on NULL.
 */
STOCK_EXTERN void stock_drain_leave(struct stock_drain *d);

/**
 * stock_drain_close - refuse new entries and wait until nobody is inside.
 * @d:        the drain.
 * @deadline: absolute CLOCK_MONOTONIC deadline, or NULL to wait forever; a
 *            past deadline closes and checks without waiting.
 *
 * Returns 0 once nobody is inside (and nobody can enter again);
 * STOCK_ETIMEDOUT when @deadline passed first — the drain stays closed and
 * close may be called again; STOCK_EINVAL if @d is NULL. Several threads may
 * close at once; each returns 0 when the last one inside leaves. Must not be
 * called by a thread that is itself inside @d (it would wait for itself).
 * Sleeps (futex); an acquire barrier on success. Thread-safe.
 */
STOCK_EXTERN int stock_drain_close(struct stock_drain *d, const struct timespec *deadline);

/**
 * stock_drain_inside - how many threads are inside (a racy count, for
 * metrics and shutdown logs; 0 for NULL).
 */
STOCK_EXTERN uint64_t stock_drain_inside(const struct stock_drain *d);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_DRAIN_H */
