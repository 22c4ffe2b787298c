/*
 * libstock — once: one-time initialisation that may fail and be retried.
 *
 * stock_once_run(&once, fn, arg) runs fn(arg) until it first succeeds:
 *
 *   - exactly one caller runs fn at a time; callers that arrive meanwhile
 *     sleep until it returns;
 *   - when fn returns 0 the once is done for good: that caller and every
 *     caller after it (including the sleepers) return 0 without running fn;
 *   - when fn returns non-zero, that caller gets the value, the once goes
 *     back to "not done", and the next caller — a sleeper woken by the
 *     failure, or a later one — runs fn again.
 *
 * That is pthread_once for initialisation that can fail (open a pool, load a
 * price list, resolve a host): a transient error is reported to the caller
 * that hit it and not cached for everybody. After success a call is one
 * acquire load. Sleepers wait on a ck_ec event count (futex) after a short
 * spin; a finishing runner bumps it only when somebody waits.
 *
 * What fn wrote before returning 0 is visible to every caller that gets 0
 * (release on completion, acquire on the check).
 */
#ifndef STOCK_ONCE_H
#define STOCK_ONCE_H

#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct stock_once {
	uint32_t state;    /* private: 0 not done, 1 running, 2 done */
	uint32_t nwaiters; /* private: callers sleeping while fn runs */
	uint32_t ec;       /* private: a struct ck_ec32, bumped when a run ends */
};
typedef struct stock_once stock_once_t;

/* A zero-filled struct stock_once (static, calloc) is also "not done". */
#define STOCK_ONCE_INITIALIZER \
	{ .state = 0, .nwaiters = 0, .ec = 0 }

/**
 * stock_once_init - initialise @o as "not done".
 *
 * Returns 0, or STOCK_EINVAL if @o is NULL. Not thread-safe against other use
 * of @o; STOCK_ONCE_INITIALIZER is equivalent for static objects.
 */
STOCK_EXTERN int stock_once_init(struct stock_once *o);

/**
 * stock_once_run - run @fn(@arg) unless it already succeeded on @o.
 * @o:   the once.
 * @fn:  the initialiser; returns 0 on success, anything else on failure.
 *       It must not call stock_once_run() on @o (that would wait for itself).
 * @arg: passed to @fn.
 *
 * Returns 0 when the once is done (now or earlier, by this caller or
 * another); the non-zero value @fn returned when this caller ran it and it
 * failed (the once is "not done" again); STOCK_EINVAL if @o or @fn is NULL.
 * Waits, sleeping, while another caller runs @fn. Thread-safe.
 */
STOCK_EXTERN int stock_once_run(struct stock_once *o, int (*fn)(void *arg), void *arg);

/**
 * stock_once_done - whether a run of @fn on @o has succeeded.
 *
 * One acquire load: when it returns true, what @fn wrote is visible. false
 * for NULL. Thread-safe.
 */
STOCK_EXTERN bool stock_once_done(const struct stock_once *o);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_ONCE_H */
