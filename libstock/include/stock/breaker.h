/*
 * libstock — breaker: a circuit breaker (Closed / Open / HalfOpen) that can
 * also be isolated by hand and waited on.
 *
 * Closed     calls flow; outcomes are counted. The breaker trips (opens)
 *            after `failure_threshold` consecutive failures, or when, within
 *            a window of `window_calls` calls (a counting window that starts
 *            over every window_calls calls), at least `min_calls` calls were
 *            made and at least `failure_pct` percent of them failed.
 * Open       calls are rejected with STOCK_EOPEN for the open duration:
 *            `open_ns`, multiplied by `backoff_mult` for every consecutive
 *            re-open from HalfOpen, capped at `max_open_ns`.
 * HalfOpen   after the open duration, the next allow() moves the breaker to
 *            HalfOpen; exactly `half_open_probes` calls (K) are admitted as
 *            probes. When all K probes have succeeded the breaker closes
 *            (and the backoff resets); the first probe failure re-opens it
 *            with the next backoff step.
 * Isolated   stock_breaker_isolate() forces Open until stock_breaker_close():
 *            no timer, probe or outcome can leave it. (In the demo server
 *            this is the "gate" that /Util/Close shuts while stock is being
 *            updated; buyers wait for it with stock_breaker_wait().)
 *
 * The state, the isolate flag, the backoff step, the probe counts and a
 * generation number live in ONE 64-bit word; every transition is a CAS on it
 * that also bumps the generation, so exactly one thread wins each transition
 * and only that thread runs the on_change callback. Every admitted call gets
 * a token carrying the generation it was admitted in; an outcome reported
 * for an older generation is counted in the statistics but cannot move the
 * breaker. Waiters sleep on a ck_ec event count bumped on every transition.
 *
 * Contract: every call admitted by allow() must report exactly one outcome
 * with stock_breaker_success() or stock_breaker_failure(), passing its token.
 * A probe that never reports keeps its HalfOpen slot until the breaker is
 * closed or isolated by hand.
 */
#ifndef STOCK_BREAKER_H
#define STOCK_BREAKER_H

#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

enum stock_breaker_state {
	STOCK_BREAKER_CLOSED = 0,    /* calls flow */
	STOCK_BREAKER_OPEN = 1,      /* calls rejected (tripped or isolated) */
	STOCK_BREAKER_HALF_OPEN = 2  /* a bounded number of probes admitted */
};

/* Largest half_open_probes, failure_threshold and window_calls accepted. */
#define STOCK_BREAKER_PROBES_MAX 1024u
#define STOCK_BREAKER_COUNT_MAX 65535u

/*
 * Configuration, copied by stock_breaker_init(). Start from
 * STOCK_BREAKER_CONFIG_DEFAULT (or stock_breaker_config_default()) and change
 * fields: a zero means what it says (0 ns open, trip rule off), it is not
 * replaced by a default. All fields public.
 */
struct stock_breaker_config {
	/* Trip after this many consecutive failures (1..65535); 0 = rule off. */
	uint32_t failure_threshold;
	/* Trip when >= failure_pct percent of the window's calls failed (1..100);
	 * 0 = rule off. */
	uint32_t failure_pct;
	/* Ratio window: counting restarts every window_calls calls (1..65535). */
	uint32_t window_calls;
	/* The ratio rule needs at least this many calls in the window (0..window). */
	uint32_t min_calls;
	/* HalfOpen probes K (1..STOCK_BREAKER_PROBES_MAX). */
	uint32_t half_open_probes;
	/* Open duration multiplier per consecutive re-open; 0 or 1 = constant. */
	uint32_t backoff_mult;
	/* Base open duration in ns. */
	uint64_t open_ns;
	/* Cap on the open duration in ns (>= open_ns); 0 = no cap. */
	uint64_t max_open_ns;
	/* Called exactly once per state change, by the thread that made it,
	 * after the change is visible; may be NULL. See stock_breaker_init(). */
	void (*on_change)(void *arg, enum stock_breaker_state from, enum stock_breaker_state to);
	void *on_change_arg;
	/* Clock in ns for the open duration; NULL = stock_now_ns(). Tests pass a
	 * fake clock to step time deterministically. Must never go backwards. */
	uint64_t (*now_ns)(void *arg);
	void *now_arg;
};
typedef struct stock_breaker_config stock_breaker_config_t;

/* 5 consecutive failures trip; open 5 s, doubling up to 60 s; 1 probe. */
#define STOCK_BREAKER_CONFIG_DEFAULT                                                   \
	{                                                                              \
		.failure_threshold = 5, .failure_pct = 0, .window_calls = 100,         \
		.min_calls = 20, .half_open_probes = 1, .backoff_mult = 2,             \
		.open_ns = 5000000000ULL, .max_open_ns = 60000000000ULL,               \
		.on_change = NULL, .on_change_arg = NULL, .now_ns = NULL, .now_arg = NULL \
	}

/* What allow() hands out; pass it back to success()/failure(). All private. */
struct stock_breaker_token {
	uint32_t gen;   /* private: generation the call was admitted in */
	uint32_t flags; /* private: valid / probe bits */
};
typedef struct stock_breaker_token stock_breaker_token_t;

struct stock_breaker {
	/* Read on every call, written only on transitions. */
	uint64_t word;       /* private: state | isolated | backoff | probes | gen */
	uint64_t open_until; /* private: end of the current open period (clock ns) */
	uint64_t open_gen;   /* private: generation open_until belongs to */
	uint32_t ec;         /* private: a struct ck_ec32, bumped on every transition */
	struct stock_breaker_config cfg; /* private: copy of the configuration */
	/* Written by outcome reports while Closed. */
	uint64_t counts __attribute__((aligned(STOCK_CACHELINE))); /* private: gen-tagged window */
	/* Statistics, see stock_breaker_stats(). */
	uint64_t allowed __attribute__((aligned(STOCK_CACHELINE))); /* private */
	uint64_t rejected;   /* private */
	uint64_t successes;  /* private */
	uint64_t failures;   /* private */
	uint64_t ignored;    /* private */
	uint64_t opens;      /* private */
	uint64_t half_opens; /* private */
	uint64_t closes;     /* private */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_breaker stock_breaker_t;

/* Counters for metrics. Each is exact; they are read one after another. */
struct stock_breaker_stats {
	enum stock_breaker_state state; /* current state */
	bool isolated;                  /* forced open by stock_breaker_isolate */
	uint32_t backoff_level;         /* consecutive re-opens (0 after a close) */
	uint64_t generation;            /* transitions so far (incl. isolations) */
	uint64_t allowed;               /* calls admitted (incl. probes) */
	uint64_t rejected;              /* calls refused with STOCK_EOPEN / timed out */
	uint64_t successes;             /* successes reported */
	uint64_t failures;              /* failures reported */
	uint64_t ignored;               /* outcomes from an older generation */
	uint64_t opens;                 /* transitions into Open (trips + isolations) */
	uint64_t half_opens;            /* transitions into HalfOpen */
	uint64_t closes;                /* transitions into Closed */
	uint64_t transitions;           /* opens + half_opens + closes */
};
typedef struct stock_breaker_stats stock_breaker_stats_t;

/**
 * stock_breaker_config_default - fill @cfg with STOCK_BREAKER_CONFIG_DEFAULT.
 *
 * Returns 0 or STOCK_EINVAL when @cfg is NULL. Thread-safe.
 */
STOCK_EXTERN int stock_breaker_config_default(struct stock_breaker_config *cfg);

/**
 * stock_breaker_init - initialise a closed breaker.
 * @b:   the breaker.
 * @cfg: configuration (copied), or NULL for STOCK_BREAKER_CONFIG_DEFAULT.
 *
 * Returns 0; STOCK_EINVAL when @b is NULL or @cfg is invalid: a count out of
 * the ranges documented in struct stock_breaker_config, min_calls above
 * window_calls, or a non-zero max_open_ns below open_ns. Not thread-safe
 * against other use of @b.
 *
 * on_change runs on the thread that won the transition, with no lock held;
 * it may call any stock_breaker_* function, but callbacks for consecutive
 * transitions may run concurrently on different threads and may complete
 * out of order. It should be quick: the winner runs it inside its call.
 */
STOCK_EXTERN int stock_breaker_init(struct stock_breaker *b, const struct stock_breaker_config *cfg);

/**
 * stock_breaker_destroy - release a breaker (it owns nothing).
 *
 * Must not be called while a thread waits on @b. Safe on NULL.
 */
STOCK_EXTERN void stock_breaker_destroy(struct stock_breaker *b);

/**
 * stock_breaker_allow - ask whether a call may proceed now; never blocks.
 * @b:   the breaker.
 * @tok: receives the token to report the outcome with.
 *
 * Returns 0 when the call may proceed: the breaker is Closed, or the caller
 * was admitted as one of the K HalfOpen probes (possibly by moving an expired
 * Open breaker to HalfOpen itself); the caller must then report the outcome
 * with @tok. Returns STOCK_EOPEN when the breaker is Open (or isolated), or
 * HalfOpen with all K probe slots taken; STOCK_EINVAL when @b or @tok is
 * NULL. Lock-free; Closed costs one atomic load plus a statistics add.
 * Thread-safe.
 */
STOCK_EXTERN int stock_breaker_allow(struct stock_breaker *b, struct stock_breaker_token *tok);

/**
 * stock_breaker_allow_wait - like stock_breaker_allow(), but wait until the
 * call is admitted or @deadline passes.
 * @b:        the breaker.
 * @tok:      receives the token.
 * @deadline: absolute CLOCK_MONOTONIC deadline, NULL = forever, past = try.
 *
 * Returns 0 (admitted; report the outcome), STOCK_ETIMEDOUT (counted once as
 * rejected), or STOCK_EINVAL. Sleeps between attempts (see
 * stock_breaker_wait). Thread-safe.
 */
STOCK_EXTERN int stock_breaker_allow_wait(struct stock_breaker *b, struct stock_breaker_token *tok,
    const struct timespec *deadline);

/**
 * stock_breaker_is_probe - whether @tok was admitted as a HalfOpen probe.
 */
STOCK_EXTERN bool stock_breaker_is_probe(struct stock_breaker_token tok);

/**
 * stock_breaker_success - report that the call admitted with @tok succeeded.
 * @b:   the breaker.
 * @tok: the token allow() returned (by value; report it once).
 *
 * Closed: clears the consecutive-failure count and counts the call in the
 * window. HalfOpen probe: the K-th success closes the breaker. Outcomes from
 * an older generation are only counted (stats.ignored). Returns 0, or
 * STOCK_EINVAL when @b is NULL or @tok was not filled by allow(). Lock-free;
 * thread-safe.
 */
STOCK_EXTERN int stock_breaker_success(struct stock_breaker *b, struct stock_breaker_token tok);

/**
 * stock_breaker_failure - report that the call admitted with @tok failed.
 * @b:   the breaker.
 * @tok: the token allow() returned.
 *
 * Closed: may trip the breaker (Closed -> Open, backoff step 0). HalfOpen
 * probe: re-opens it with the next backoff step. Exactly one of any number of
 * concurrent reporters performs a transition. Returns 0, or STOCK_EINVAL as
 * stock_breaker_success(). Lock-free; thread-safe.
 */
STOCK_EXTERN int stock_breaker_failure(struct stock_breaker *b, struct stock_breaker_token tok);

/**
 * stock_breaker_isolate - force the breaker open until stock_breaker_close().
 * @b: the breaker.
 *
 * Wins against every concurrent transition: when it returns the breaker is
 * Open and isolated, and nothing but stock_breaker_close() changes that. A
 * Closed or HalfOpen breaker reports a transition to Open (on_change);
 * isolating an Open breaker changes no state (no callback). Idempotent.
 * Returns 0 or STOCK_EINVAL. Lock-free; thread-safe.
 */
STOCK_EXTERN int stock_breaker_isolate(struct stock_breaker *b);

/**
 * stock_breaker_close - close the breaker by hand (reset).
 * @b: the breaker.
 *
 * From any state, including isolated: the breaker becomes Closed with clean
 * counts and no backoff, and waiters wake. Closing a Closed breaker changes
 * nothing. Returns 0 or STOCK_EINVAL. Lock-free; thread-safe.
 */
STOCK_EXTERN int stock_breaker_close(struct stock_breaker *b);

/**
 * stock_breaker_wait - wait until calls would be admitted.
 * @b:        the breaker.
 * @deadline: absolute CLOCK_MONOTONIC deadline, NULL = forever, past = poll.
 *
 * Returns 0 as soon as the breaker is Closed, HalfOpen with a free probe
 * slot, or Open (not isolated) with its open period over; STOCK_ETIMEDOUT if
 * @deadline passes first; STOCK_EINVAL when @b is NULL. A 0 is a hint, not a
 * reservation: call stock_breaker_allow() next (or use allow_wait). Sleeps on
 * the breaker's event count (futex), woken by every transition and by the end
 * of the open period. Thread-safe; an acquire barrier (what a thread did
 * before the close that released us is visible).
 */
STOCK_EXTERN int stock_breaker_wait(struct stock_breaker *b, const struct timespec *deadline);

/**
 * stock_breaker_state - the current state (a racy hint; Closed for NULL).
 */
STOCK_EXTERN enum stock_breaker_state stock_breaker_state(const struct stock_breaker *b);

/**
 * stock_breaker_isolated - whether the breaker is isolated (a racy hint).
 */
STOCK_EXTERN bool stock_breaker_isolated(const struct stock_breaker *b);

/**
 * stock_breaker_state_name - "closed", "open", "half-open" ("unknown" for a
 * value outside the enum). Thread-safe; never NULL.
 */
STOCK_EXTERN const char *stock_breaker_state_name(enum stock_breaker_state s);

/**
 * stock_breaker_stats - read the breaker's counters.
 * @b:   the breaker.
 * @out: receives the counters; state, isolated, backoff_level and generation
 *       come from one atomic read.
 *
 * Returns 0 or STOCK_EINVAL when @b or @out is NULL. Thread-safe.
 */
STOCK_EXTERN int stock_breaker_stats(const struct stock_breaker *b, struct stock_breaker_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_BREAKER_H */
