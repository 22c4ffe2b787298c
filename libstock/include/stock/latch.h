/*
 * libstock — latch: a boolean flag that threads can wait on (a manual-reset
 * event).
 *
 * A latch is either set or not. stock_latch_set() sets it and wakes every
 * thread waiting for it; it stays set — every later wait returns at once —
 * until stock_latch_clear() puts it back. It is the shape of stop flags
 * ("shutting down"), readiness flags ("catalogue loaded") and "connection
 * up" flags: many threads read or wait, a few set and clear.
 *
 * Reading the flag is one acquire load (stock_latch_is_set() is inline and
 * makes no system call). Waiters sleep on a ck_ec event count with the
 * library's Linux futex ops after a short spin; set() touches the event
 * count only when somebody waits, so setting a latch nobody waits for costs
 * one CAS.
 *
 * Guarantees: no lost wake-up — a wait returns 0 if the latch was set at any
 * instant between its call and its return, so a thread waiting when set()
 * is called is released even if clear() follows immediately; set() and
 * clear() are idempotent; timeouts are honoured. set() is a release and a
 * successful wait an acquire: what the setter wrote before set() is visible
 * to a waiter once it returns 0.
 */
#ifndef STOCK_LATCH_H
#define STOCK_LATCH_H

#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct stock_latch {
	uint32_t state;    /* private: the futex word: sets << 2 | sleepers << 1 | set (latch.c) */
	uint32_t nwaiters; /* private: threads inside a sleeping wait */
};
typedef struct stock_latch stock_latch_t;

#define STOCK_LATCH_INITIALIZER(set) \
	{ .state = (set) ? 1u : 0u, .nwaiters = 0 }

/**
 * stock_latch_init - initialise a latch.
 * @l:   the latch.
 * @set: initial state (true: waits return at once until the first clear).
 *
 * Returns 0, or STOCK_EINVAL if @l is NULL. Not thread-safe against other use
 * of @l. STOCK_LATCH_INITIALIZER(set) is equivalent for static objects.
 */
STOCK_EXTERN int stock_latch_init(struct stock_latch *l, bool set);

/**
 * stock_latch_destroy - release a latch's resources (it owns none).
 *
 * Must not be called while a thread waits on @l. A thread whose wait
 * returned 0 may destroy (or free) the latch at once, even while the set()
 * that released it is still returning: set() does not touch the latch after
 * the instant it is seen set. Safe on NULL.
 */
STOCK_EXTERN void stock_latch_destroy(struct stock_latch *l);

/**
 * stock_latch_set - set the latch and wake every waiter.
 *
 * Idempotent: setting a set latch changes nothing. Costs one CAS when nobody
 * waits, plus one futex wake when somebody may sleep. After the CAS it uses
 * only @l's address, so a released waiter may free the latch at once. A
 * release barrier. Thread-safe; a no-op on NULL.
 */
STOCK_EXTERN void stock_latch_set(struct stock_latch *l);

/**
 * stock_latch_clear - put the latch back to unset.
 *
 * Idempotent. Waiters already released by an earlier set() are not affected;
 * later waits block until the next set(). Thread-safe; a no-op on NULL.
 */
STOCK_EXTERN void stock_latch_clear(struct stock_latch *l);

/**
 * stock_latch_is_set - whether the latch is set now.
 * @l: the latch (not NULL; not checked on this hot path).
 *
 * One acquire load, no system call: if it returns true, what the setter
 * wrote before stock_latch_set() is visible. Thread-safe.
 */
STOCK_INLINE bool
stock_latch_is_set(const struct stock_latch *l)
{
	uint32_t s = ck_pr_load_32(&l->state);

	ck_pr_fence_acquire();
	return (s & 1u) != 0;
}

/**
 * stock_latch_wait - wait until the latch is set.
 * @l:        the latch.
 * @deadline: absolute CLOCK_MONOTONIC deadline, or NULL to wait forever; a
 *            past deadline makes the call a non-blocking check.
 *
 * Returns 0 once the latch is (or was, at some instant during the call) set;
 * STOCK_ETIMEDOUT when @deadline passed first; STOCK_EINVAL if @l is NULL.
 * Consumes nothing: every waiter is released by one set(). Sleeps (futex)
 * after a short spin. Thread-safe; an acquire barrier on success.
 */
STOCK_EXTERN int stock_latch_wait(struct stock_latch *l, const struct timespec *deadline);

/**
 * stock_latch_waiters - threads sleeping in stock_latch_wait() (a racy hint,
 * for metrics and tests; 0 for NULL).
 */
STOCK_EXTERN uint32_t stock_latch_waiters(const struct stock_latch *l);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_LATCH_H */
