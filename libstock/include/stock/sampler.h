/*
 * libstock — sampler: admit at most N events per time window (log sampling).
 *
 * A service that logs every failure of a dependency floods its log the
 * moment the dependency goes down. A sampler admits the first @limit events
 * of each window of @window_ns and refuses the rest, counting them; the next
 * admitted event learns how many were refused since the one before, so the
 * caller can say "(N similar lines dropped)" and nothing disappears
 * silently. One sampler per call site is the usual pattern (a static
 * STOCK_SAMPLER_INITIALIZER inside a logging macro).
 *
 * A window starts with the first event at or after the end of the previous
 * one (windows are not aligned to the clock). Lock-free: a window is opened
 * by the one thread whose CAS on its start time wins; admission is one
 * fetch-and-add. No window admits more than @limit events; an event that
 * races a window switch may be counted against the window that is ending
 * (admitted if that one was not full). Every refused event is reported
 * exactly once by a later admitted one: admitted + reported +
 * stock_sampler_dropped() always equals the number of calls.
 */
#ifndef STOCK_SAMPLER_H
#define STOCK_SAMPLER_H

#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct stock_sampler {
	uint64_t limit;        /* private: events admitted per window */
	uint64_t window_ns;    /* private: window length */
	uint64_t window_start; /* private: start of the current window (0: none yet) */
	uint64_t admitted;     /* private: events counted in the current window
	                          (starts "full": nothing before the first window) */
	uint64_t dropped;      /* private: refused since the last admitted event */
};
typedef struct stock_sampler stock_sampler_t;

#define STOCK_SAMPLER_INITIALIZER(limit, window_ns) \
	{ (limit), (window_ns), 0, (limit), 0 }

/**
 * stock_sampler_init - initialise a sampler.
 * @s:         the sampler.
 * @limit:     events admitted per window (0 admits none, and counts all).
 * @window_ns: window length in nanoseconds (at least 1).
 *
 * Returns 0, or STOCK_EINVAL when @s is NULL or @window_ns is 0. Not
 * thread-safe against other use of @s.
 */
STOCK_EXTERN int stock_sampler_init(struct stock_sampler *s, uint64_t limit, uint64_t window_ns);

/**
 * stock_sampler_admit - decide whether one event at time @now_ns is admitted.
 * @s:       the sampler.
 * @now_ns:  the event's time on a monotonic clock (stock_now_ns()).
 * @dropped: when the event is admitted, receives how many events were
 *           refused since the previous admitted one (0 usually); may be NULL
 *           (then that count is kept for the next admitted event).
 *
 * Returns true when the event is among the first @limit of its window,
 * false when it is refused (and counted). @s must not be NULL (not checked
 * on this hot path). Lock-free, thread-safe.
 */
STOCK_EXTERN bool stock_sampler_admit(struct stock_sampler *s, uint64_t now_ns, uint64_t *dropped);

/**
 * stock_sampler_dropped - events refused and not yet reported (a racy hint;
 * 0 for NULL).
 */
STOCK_EXTERN uint64_t stock_sampler_dropped(const struct stock_sampler *s);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_SAMPLER_H */
