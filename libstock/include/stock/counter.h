/*
 * libstock — bounded stock counters: one contract, three strategies.
 *
 * A stock counter holds `remaining` units for sale and the number `sold`;
 * `remaining + sold == total` at every instant, and `total` changes only by
 * an authoritative set(). The contract, identical for every strategy:
 *
 *   take(n)  sells n units if remaining >= n, else STOCK_ESOLDOUT and nothing
 *            changes. Never oversells, under any interleaving.
 *   put(n)   refunds n units (sold -= n, remaining += n); more than was sold
 *            is refused with STOCK_EREFUND and nothing changes.
 *   set(r)   authoritative correction: remaining becomes r at one instant
 *            during the call, sold is kept, total = sold + r.
 *   restock(n) delivery of n new units: remaining += n and total += n at one
 *            instant (unlike a read-then-set, concurrent takes are kept).
 *   read()   a consistent {remaining, sold, version} taken at one instant.
 *
 * `version` strictly increases with every successful take, put and set (the
 * step is unspecified: compare versions, do not count them). n == 0 and
 * counts above STOCK_COUNT_MAX are rejected with STOCK_EINVAL / STOCK_ERANGE.
 *
 * Strategies:
 *   stock_atomic_*   lock-free. take is one ck_pr CAS when uncontended.
 *   stock_locked_*   a pthread mutex (it degrades gracefully when threads far
 *                    outnumber cores, unlike ticket/MCS spinlocks).
 *   stock_signaled_* the turn is handed over by an auto-reset event
 *                    (stock_signal); waiters sleep.
 *   stock_counter_*  a tagged union of the three, for code that picks the
 *                    strategy at run time (the SKU table, the demo server).
 */
#ifndef STOCK_COUNTER_H
#define STOCK_COUNTER_H

#include <ck_pr.h>
#include <pthread.h>
#include <stdbool.h>

#include "common.h"
#include "signal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A consistent reading of a counter. */
struct stock_level {
	uint64_t remaining; /* units still for sale */
	uint64_t sold;      /* units sold and not refunded */
	uint64_t version;   /* strictly increases with every change */
};
typedef struct stock_level stock_level_t;

/* ======================================================================
 * Atomic (lock-free) counter
 *
 * The state is four monotonic 64-bit words, so that a take needs exactly one
 * CAS on one word and readers can check consistency by re-reading:
 *
 *   added       A  units ever made available (initial + restocks)
 *   taken       T  units ever removed from `remaining` (sales + write-offs)
 *   refunded    P  units ever refunded
 *   written_off W  units removed by set() that were not sales
 *
 *   remaining = A + P - T      sold = T - W - P      total = A - W
 *
 * take(n) reads T, then A and P, and CASes T from t to t+n if A + P - t >= n.
 * A and P only grow, so values read after T can only understate what is left:
 * a take can never oversell. put(n) CASes P the same way against T - W.
 * set() is rare; it runs under a mutex and marks itself in `seq` (odd while in
 * progress) so readers and refunds never combine A/W from two sides of it.
 * Arithmetic is modulo 2^64, so the cumulative words may wrap harmlessly.
 * ====================================================================== */

struct stock_atomic {
	uint64_t taken;            /* private: T, the CAS word of take() */
	uint64_t added;            /* private: A, changed only by set() */
	uint64_t refunded;         /* private: P, the CAS word of put() */
	uint64_t written_off;      /* private: W, changed only by set() */
	uint64_t sets;             /* private: number of set() calls */
	uint32_t seq;              /* private: odd while set() runs */
	pthread_mutex_t set_lock;  /* private: serialises set() */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_atomic stock_atomic_t;

#define STOCK_ATOMIC_INITIALIZER(units)                                   \
	{                                                                     \
		.taken = 0, .added = (units), .refunded = 0,              \
		.written_off = 0, .sets = 0, .seq = 0,                        \
		.set_lock = PTHREAD_MUTEX_INITIALIZER                         \
	}

/**
 * stock_atomic_init - initialise a lock-free counter with @remaining units.
 *
 * Returns 0, STOCK_EINVAL if @c is NULL, STOCK_ERANGE if @remaining exceeds
 * STOCK_COUNT_MAX. Not thread-safe against other use of @c.
 */
STOCK_EXTERN int stock_atomic_init(struct stock_atomic *c, uint64_t remaining);

/**
 * stock_atomic_destroy - release the counter's resources. Safe on NULL.
 * Must not race with other operations on @c.
 */
STOCK_EXTERN void stock_atomic_destroy(struct stock_atomic *c);

/**
 * stock_atomic_set - authoritative correction: make remaining @remaining.
 *
 * Sold is kept; total becomes sold + @remaining. Concurrent takes and puts
 * stay lock-free; concurrent set() calls are serialised.
 * Returns 0, STOCK_EINVAL (NULL), or STOCK_ERANGE if @remaining, or sold +
 * @remaining, would exceed STOCK_COUNT_MAX (nothing changes). Thread-safe.
 */
STOCK_EXTERN int stock_atomic_set(struct stock_atomic *c, uint64_t remaining);

/**
 * stock_atomic_restock - add @n new units: remaining += n, total += n.
 *
 * Returns 0, STOCK_EINVAL (@n == 0 or NULL), or STOCK_ERANGE if the total
 * would exceed STOCK_COUNT_MAX (nothing changes). Serialised with set();
 * takes and puts stay lock-free. Thread-safe.
 */
STOCK_EXTERN int stock_atomic_restock(struct stock_atomic *c, uint64_t n);

/*
 * Bounded exponential back-off after a failed CAS (pause, not sleep): 4, 8,
 * then 16 pauses. A larger cap lets one core keep the line for long runs of
 * takes (more throughput, but threads starve: measured fairness 0.05 at cap
 * 1024 vs 0.36, the bare CAS loop's own, at 16 — see docs/benchmarks.md).
 */
STOCK_INLINE void
stock__backoff(unsigned int *spins)
{
	unsigned int i;

	for (i = 0; i < *spins; i++)
		ck_pr_stall();
	if (*spins < 16)
		*spins <<= 1;
}

/**
 * stock_atomic_take - sell @n units if at least @n remain.
 *
 * Returns 0, STOCK_ESOLDOUT (fewer than @n remain; nothing changed), or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX). Lock-free; thread-safe; a
 * successful take is a full barrier.
 */
STOCK_INLINE int
stock_atomic_take(struct stock_atomic *c, uint64_t n)
{
	unsigned int spins = 4;
	uint64_t t, avail;

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX))
		return STOCK_EINVAL;
	t = ck_pr_load_64(&c->taken);
	for (;;) {
		/* A and P are read after T: they can only overstate T's era. */
		ck_pr_fence_load();
		avail = ck_pr_load_64(&c->added) + ck_pr_load_64(&c->refunded) - t;
		if (avail < n)
			return STOCK_ESOLDOUT;
		if (STOCK_LIKELY(ck_pr_cas_64_value(&c->taken, t, t + n, &t)))
			return 0;
		stock__backoff(&spins);
	}
}

/* Waits until no set() is in progress; returns the (even) sequence. */
STOCK_INLINE uint32_t
stock__atomic_seq_begin(const struct stock_atomic *c)
{
	uint32_t s;

	while ((s = ck_pr_load_32(&c->seq)) & 1u)
		ck_pr_stall();
	ck_pr_fence_load();
	return s;
}

/**
 * stock_atomic_put - refund @n units (sold -= n, remaining += n).
 *
 * Returns 0, STOCK_EREFUND (fewer than @n sold; nothing changed), or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX). Lock-free against take and
 * read; waits out a concurrent set(). Thread-safe.
 */
STOCK_INLINE int
stock_atomic_put(struct stock_atomic *c, uint64_t n)
{
	unsigned int spins = 4;
	uint64_t p, t, w;
	uint32_t s;

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX))
		return STOCK_EINVAL;
	p = ck_pr_load_64(&c->refunded);
	for (;;) {
		s = stock__atomic_seq_begin(c);
		w = ck_pr_load_64(&c->written_off);
		t = ck_pr_load_64(&c->taken);
		ck_pr_fence_load();
		if (ck_pr_load_32(&c->seq) != s)
			continue;
		/* P read before T: t - w - p can only overstate what is sold now
		 * if P moved, and then the CAS below fails. */
		if (t - w - p < n)
			return STOCK_EREFUND;
		if (ck_pr_cas_64_value(&c->refunded, p, p + n, &p))
			return 0;
		stock__backoff(&spins);
	}
}

/**
 * stock_atomic_read - a consistent {remaining, sold, version}.
 *
 * Retries while a take/put lands in its few-instruction window or a set() is
 * in progress. Returns 0 or STOCK_EINVAL (NULL argument). Thread-safe.
 */
STOCK_INLINE int
stock_atomic_read(const struct stock_atomic *c, struct stock_level *out)
{
	uint64_t t1, t2, a, p, w, n;
	uint32_t s;

	if (STOCK_UNLIKELY(c == NULL || out == NULL))
		return STOCK_EINVAL;
	for (;;) {
		s = stock__atomic_seq_begin(c);
		t1 = ck_pr_load_64(&c->taken);
		ck_pr_fence_load();
		p = ck_pr_load_64(&c->refunded);
		a = ck_pr_load_64(&c->added);
		w = ck_pr_load_64(&c->written_off);
		n = ck_pr_load_64(&c->sets);
		ck_pr_fence_load();
		t2 = ck_pr_load_64(&c->taken);
		/* T unchanged around the read of P: (T, P) held at that instant. */
		if (t1 == t2 && ck_pr_load_32(&c->seq) == s)
			break;
		ck_pr_stall();
	}
	out->remaining = a + p - t1;
	out->sold = t1 - w - p;
	out->version = t1 + p + a + w + n;
	return 0;
}

/* ======================================================================
 * Locked counter: the same contract under a pthread mutex.
 * ====================================================================== */

struct stock_locked {
	pthread_mutex_t lock; /* private */
	uint64_t remaining;   /* private: guarded by lock */
	uint64_t sold;        /* private: guarded by lock */
	uint64_t version;     /* private: guarded by lock */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_locked stock_locked_t;

#define STOCK_LOCKED_INITIALIZER(units)                                   \
	{                                                                     \
		.lock = PTHREAD_MUTEX_INITIALIZER, .remaining = (units),      \
		.sold = 0, .version = 0                                       \
	}

/**
 * stock_locked_init - initialise a mutex-guarded counter with @remaining.
 * Returns 0, STOCK_EINVAL (NULL), STOCK_ERANGE (> STOCK_COUNT_MAX) or
 * STOCK_ESYS (mutex creation failed).
 */
STOCK_EXTERN int stock_locked_init(struct stock_locked *c, uint64_t remaining);
/** stock_locked_destroy - release the mutex. Safe on NULL; no concurrent use. */
STOCK_EXTERN void stock_locked_destroy(struct stock_locked *c);
/** stock_locked_take - as stock_atomic_take, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_take(struct stock_locked *c, uint64_t n);
/** stock_locked_put - as stock_atomic_put, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_put(struct stock_locked *c, uint64_t n);
/** stock_locked_set - as stock_atomic_set, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_set(struct stock_locked *c, uint64_t remaining);
/** stock_locked_restock - as stock_atomic_restock, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_restock(struct stock_locked *c, uint64_t n);
/** stock_locked_read - as stock_atomic_read, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_read(struct stock_locked *c, struct stock_level *out);

/* ======================================================================
 * Signaled counter: the turn to touch the state is an auto-reset event,
 * like the seed's `AutoResetEvent.WaitOne(); stock--; Set();`.
 * ====================================================================== */

struct stock_signaled {
	struct stock_signal turn; /* private: set while nobody holds the turn */
	uint64_t remaining;       /* private: guarded by turn */
	uint64_t sold;            /* private: guarded by turn */
	uint64_t version;         /* private: guarded by turn */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_signaled stock_signaled_t;

/**
 * stock_signaled_init - initialise an event-handover counter with @remaining.
 * Returns 0, STOCK_EINVAL (NULL), STOCK_ERANGE (> STOCK_COUNT_MAX) or
 * STOCK_ESYS.
 */
STOCK_EXTERN int stock_signaled_init(struct stock_signaled *c, uint64_t remaining);
/** stock_signaled_destroy - release resources. Safe on NULL; no concurrent use. */
STOCK_EXTERN void stock_signaled_destroy(struct stock_signaled *c);
/** stock_signaled_take - as stock_atomic_take; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_take(struct stock_signaled *c, uint64_t n);
/** stock_signaled_put - as stock_atomic_put; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_put(struct stock_signaled *c, uint64_t n);
/** stock_signaled_set - as stock_atomic_set; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_set(struct stock_signaled *c, uint64_t remaining);
/** stock_signaled_restock - as stock_atomic_restock; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_restock(struct stock_signaled *c, uint64_t n);
/** stock_signaled_read - as stock_atomic_read; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_read(struct stock_signaled *c, struct stock_level *out);

/* ======================================================================
 * Strategy-agnostic counter: one of the three, chosen at init.
 * ====================================================================== */

enum stock_strategy {
	STOCK_STRATEGY_ATOMIC = 0,
	STOCK_STRATEGY_LOCKED = 1,
	STOCK_STRATEGY_SIGNAL = 2
};
#define STOCK_STRATEGY_COUNT 3

struct stock_counter {
	union {
		struct stock_atomic atomic;
		struct stock_locked locked;
		struct stock_signaled signaled;
	} u;                          /* private */
	enum stock_strategy strategy; /* read-only */
};
typedef struct stock_counter stock_counter_t;

/**
 * stock_strategy_name - "atomic", "locked" or "signal"; NULL if invalid.
 */
STOCK_EXTERN const char *stock_strategy_name(enum stock_strategy s);

/**
 * stock_strategy_parse - parse a strategy name (case-insensitive; "lock" is
 * accepted for "locked"). Returns 0 and sets *@out, or STOCK_EINVAL.
 */
STOCK_EXTERN int stock_strategy_parse(const char *name, enum stock_strategy *out);

/**
 * stock_counter_init - initialise a counter of strategy @s with @remaining.
 * Returns 0, STOCK_EINVAL (NULL or unknown strategy), STOCK_ERANGE or
 * STOCK_ESYS. Not thread-safe against other use of @c.
 */
STOCK_EXTERN int stock_counter_init(struct stock_counter *c, enum stock_strategy s,
    uint64_t remaining);

/** stock_counter_destroy - release resources. Safe on NULL; no concurrent use. */
STOCK_EXTERN void stock_counter_destroy(struct stock_counter *c);

/** stock_counter_take - the strategy's take (see the contract above). */
STOCK_INLINE int
stock_counter_take(struct stock_counter *c, uint64_t n)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_take(&c->u.atomic, n);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_take(&c->u.locked, n);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_take(&c->u.signaled, n);
	}
	return STOCK_EINVAL;
}

/** stock_counter_put - the strategy's put (refund). */
STOCK_INLINE int
stock_counter_put(struct stock_counter *c, uint64_t n)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_put(&c->u.atomic, n);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_put(&c->u.locked, n);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_put(&c->u.signaled, n);
	}
	return STOCK_EINVAL;
}

/** stock_counter_set - the strategy's authoritative set. */
STOCK_INLINE int
stock_counter_set(struct stock_counter *c, uint64_t remaining)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_set(&c->u.atomic, remaining);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_set(&c->u.locked, remaining);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_set(&c->u.signaled, remaining);
	}
	return STOCK_EINVAL;
}

/** stock_counter_restock - the strategy's restock (remaining and total += n). */
STOCK_INLINE int
stock_counter_restock(struct stock_counter *c, uint64_t n)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_restock(&c->u.atomic, n);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_restock(&c->u.locked, n);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_restock(&c->u.signaled, n);
	}
	return STOCK_EINVAL;
}

/** stock_counter_read - the strategy's consistent read. */
STOCK_INLINE int
stock_counter_read(struct stock_counter *c, struct stock_level *out)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_read(&c->u.atomic, out);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_read(&c->u.locked, out);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_read(&c->u.signaled, out);
	}
	return STOCK_EINVAL;
}

#ifdef __cplusplus
}
#endif

#endif /* STOCK_COUNTER_H */
