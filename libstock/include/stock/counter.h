/*
 * libstock — bounded stock counters: one contract, three strategies.
 *
 * A stock counter holds `remaining` units for sale, `held` units reserved
 * (neither for sale nor sold: a basket, a pending payment) and the number
 * `sold`; `remaining + held + sold == total` at every instant, and `total`
 * changes only by an authoritative set() or a restock(). The contract,
 * identical for every strategy:
 *
 *   take(n)  sells n units if remaining >= n, else STOCK_ESOLDOUT and nothing
 *            changes. Never oversells, under any interleaving.
 *   put(n)   refunds n units (sold -= n, remaining += n); more than was sold
 *            is refused with STOCK_EREFUND and nothing changes.
 *   reserve(n) holds n units (remaining -= n, held += n) if remaining >= n,
 *            else STOCK_ESOLDOUT and nothing changes.
 *   commit(n) sells n held units (held -= n, sold += n); more than is held is
 *            refused with STOCK_EHELD and nothing changes.
 *   release(n) returns n held units to sale (held -= n, remaining += n); more
 *            than is held is refused with STOCK_EHELD and nothing changes.
 *   set(r)   authoritative correction: remaining becomes r at one instant
 *            during the call, sold and held are kept, total = sold + held + r.
 *   restock(n) delivery of n new units: remaining += n and total += n at one
 *            instant (unlike a read-then-set, concurrent takes are kept).
 *   read()   a consistent {remaining, held, sold, version} taken at one
 *            instant.
 *   take_level(n, &after)  take(n), and `after` receives the level this take
 *            produced: the sold count including these n units and no later
 *            take, its remaining and held, and this change's version —
 *            exactly, for the locked and signaled strategies; for the atomic
 *            one exactly unless another kind of change races the take (then a
 *            later real state: see stock_atomic_take_level).
 *
 * `version` strictly increases with every successful take, put, reserve,
 * commit, release, set and restock (the step is unspecified: compare
 * versions, do not count them). n == 0 and counts above STOCK_COUNT_MAX are
 * rejected with STOCK_EINVAL by take, put, reserve, commit and release; set()
 * and restock() answer STOCK_ERANGE when a count or the total would exceed
 * STOCK_COUNT_MAX. Nothing changes when an error is returned.
 *
 * Strategies:
 *   stock_atomic_*   lock-free. take and reserve are one CAS when uncontended.
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
#include <stddef.h>

#include "common.h"
#include "signal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A consistent reading of a counter: remaining + held + sold == total. */
struct stock_level {
	uint64_t remaining; /* units still for sale */
	uint64_t held;      /* units reserved: neither for sale nor sold */
	uint64_t sold;      /* units sold and not refunded */
	uint64_t version;   /* strictly increases with every change */
};
typedef struct stock_level stock_level_t;

/* ======================================================================
 * Atomic (lock-free) counter
 *
 * The state is eight monotonic 64-bit words, so that a take or a reserve
 * needs exactly one CAS and readers can check consistency by re-reading:
 *
 *   taken       T  units ever removed from `remaining` (sales, reservations,
 *                  write-offs)
 *   reserved    R  units ever reserved; moves only together with T
 *   ended       E  units ever taken out of `held` (commits and releases)
 *   released    L  units ever released; moves only together with E
 *   added       A  units ever made available (initial + restocks)
 *   refunded    P  units ever refunded
 *   written_off W  units removed by set() that were not sales
 *   sets           number of set() calls
 *
 *   remaining = A + P + L - T     held = R - E
 *   sold = (T - R) - W + (E - L) - P             total = A - W
 *
 * Each quantity that an operation may refuse to lower has exactly one word
 * that lowers it, and every operation that lowers it CASes that word:
 * remaining falls only when T grows (take, reserve, a set() write-off), held
 * only when E grows (commit, release), sold only when P grows (put). Every
 * other word only ever raises the quantity. So an operation reads its CAS
 * word first and the raising words after: they can only understate what is
 * there at the CAS, which fails if the lowering word moved — nothing is ever
 * oversold, overcommitted or overrefunded — and a refusal is true at the
 * instant the CAS word was read.
 *
 *   take(n)    one 64-bit CAS of T, t -> t + n, if A + P + L - t >= n.
 *   reserve(n) one 128-bit CAS (cmpxchg16b) of the pair {T, R}, {t, r} ->
 *              {t + n, r + n}, on the same condition: it excludes takes
 *              because it moves T, and R moves in the same instruction.
 *   commit(n)  one 64-bit CAS of E, e -> e + n, if R - e >= n.
 *   release(n) one 128-bit CAS of {E, L}, {e, l} -> {e + n, l + n}, same test.
 *   put(n)     one 64-bit CAS of P, p -> p + n, if sold (read as below) >= n.
 *
 * Two words that move together are adjacent and 16-byte aligned. Because R
 * (L) changes only in the instruction that changes T (E), a reader that sees
 * T (E) unchanged around its load of R (L) holds a pair of one instant.
 * set() and restock() run under a mutex and mark themselves in `seq` (odd
 * while in progress) so readers and refunds never combine A/W from two sides
 * of them. Arithmetic is modulo 2^64, so the cumulative words may wrap
 * harmlessly. The full argument is docs/internals/counter-held.md.
 * ====================================================================== */

struct stock_atomic {
	union {                    /* private: the pair {T, R} as one 16-byte word */
		uint64_t tr[2];
		struct {
			uint64_t taken;    /* private: T, the CAS word of take/reserve */
			uint64_t reserved; /* private: R, paired with T */
		};
	};
	union {                    /* private: the pair {E, L} */
		uint64_t el[2];
		struct {
			uint64_t ended;    /* private: E, the CAS word of commit/release */
			uint64_t released; /* private: L, paired with E */
		};
	};
	uint64_t added;            /* private: A, changed only under set_lock */
	uint64_t refunded;         /* private: P, the CAS word of put() */
	uint64_t written_off;      /* private: W, changed only by set() */
	uint64_t sets;             /* private: number of set() calls */
	uint32_t seq;              /* private: odd while set()/restock() runs */
	pthread_mutex_t set_lock;  /* private: serialises set() and restock() */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_atomic stock_atomic_t;

#define STOCK_ATOMIC_INITIALIZER(units)                                   \
	{                                                                     \
		.taken = 0, .reserved = 0, .ended = 0, .released = 0,         \
		.added = (units), .refunded = 0, .written_off = 0,            \
		.sets = 0, .seq = 0, .set_lock = PTHREAD_MUTEX_INITIALIZER    \
	}

/*
 * The pair words. With ck's cmpxchg16b (x86-64; CK_F_PR_CAS_64_2_VALUE) a
 * pair is CASed as one 16-byte word, its halves are loaded and the first half
 * alone CASed with ordinary 64-bit instructions: the hardware makes a locked
 * 16-byte RMW atomic against them. Without it (ThreadSanitizer builds, whose
 * ck_pr are compiler builtins, or another architecture) every access to a
 * pair — loads and first-half CASes included — is a 16-byte __atomic
 * operation, because such runtimes may emulate 16-byte atomics under a lock
 * that a plain 64-bit access would bypass. The algorithm is the same. (A
 * non-TSan build of that kind links 16-byte __atomic calls from libatomic.)
 */
#if defined(CK_F_PR_CAS_64_2_VALUE)
#define STOCK__PAIR_HW 1
#endif

#ifndef __cplusplus
_Static_assert(offsetof(struct stock_atomic, reserved) == offsetof(struct stock_atomic, taken) + 8 &&
    offsetof(struct stock_atomic, taken) % 16 == 0, "{T, R} must be one aligned 16-byte pair");
_Static_assert(offsetof(struct stock_atomic, released) == offsetof(struct stock_atomic, ended) + 8 &&
    offsetof(struct stock_atomic, ended) % 16 == 0, "{E, L} must be one aligned 16-byte pair");
#endif

/* Loads half @i (0: T or E, 1: R or L) of the pair at @pair. */
STOCK_INLINE uint64_t
stock__pair_load(const uint64_t *pair, int i)
{
#ifdef STOCK__PAIR_HW
	return ck_pr_load_64(&pair[i]);
#else
	unsigned __int128 v = __atomic_load_n((const unsigned __int128 *)(const void *)pair,
	    __ATOMIC_ACQUIRE);

	return i == 0 ? (uint64_t)v : (uint64_t)(v >> 64);
#endif
}

/* CASes the first half alone from @old to @new; on failure *@cur receives
   its current value. A full barrier. */
STOCK_INLINE bool
stock__pair_cas_first(uint64_t *pair, uint64_t old, uint64_t new_, uint64_t *cur)
{
#ifdef STOCK__PAIR_HW
	return ck_pr_cas_64_value(&pair[0], old, new_, cur);
#else
	unsigned __int128 *p = (unsigned __int128 *)(void *)pair;
	unsigned __int128 v = __atomic_load_n(p, __ATOMIC_ACQUIRE);

	for (;;) {
		if ((uint64_t)v != old) {
			*cur = (uint64_t)v;
			return false;
		}
		/* Only the second half moved: CAS again with it. */
		if (__atomic_compare_exchange_n(p, &v, (v & ~(unsigned __int128)UINT64_MAX) | new_,
		    false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			return true;
	}
#endif
}

/* CASes the whole pair from {@cur[0], @cur[1]} to {@n0, @n1}; on failure
   @cur receives the current pair. A full barrier. */
STOCK_INLINE bool
stock__pair_cas(uint64_t *pair, uint64_t cur[2], uint64_t n0, uint64_t n1)
{
#ifdef STOCK__PAIR_HW
	uint64_t set[2] = { n0, n1 }, cmp[2] = { cur[0], cur[1] };

	return ck_pr_cas_64_2_value(pair, cmp, set, cur);
#else
	unsigned __int128 e = ((unsigned __int128)cur[1] << 64) | cur[0];
	bool ok = __atomic_compare_exchange_n((unsigned __int128 *)(void *)pair, &e,
	    ((unsigned __int128)n1 << 64) | n0, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);

	cur[0] = (uint64_t)e;
	cur[1] = (uint64_t)(e >> 64);
	return ok;
#endif
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
 * Sold and held are kept; total becomes sold + held + @remaining. Concurrent
 * takes, puts, reserves, commits and releases stay lock-free; concurrent
 * set() calls are serialised.
 * Returns 0, STOCK_EINVAL (NULL), or STOCK_ERANGE if @remaining, or sold +
 * held + @remaining, would exceed STOCK_COUNT_MAX (nothing changes).
 * Thread-safe.
 */
STOCK_EXTERN int stock_atomic_set(struct stock_atomic *c, uint64_t remaining);

/**
 * stock_atomic_restock - add @n new units: remaining += n, total += n.
 *
 * Returns 0, STOCK_EINVAL (@n == 0 or NULL), or STOCK_ERANGE if the total
 * would exceed STOCK_COUNT_MAX (nothing changes). Serialised with set(); the
 * other operations stay lock-free. Thread-safe.
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

/* A, P and L: the words that raise `remaining`, read after T. */
STOCK_INLINE uint64_t
stock__atomic_raised(const struct stock_atomic *c)
{
	return ck_pr_load_64(&c->added) + ck_pr_load_64(&c->refunded) +
	    stock__pair_load(c->el, 1);
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
	t = stock__pair_load(c->tr, 0);
	for (;;) {
		/* A, P, L are read after T: they can only overstate T's era. */
		ck_pr_fence_load();
		avail = stock__atomic_raised(c) - t;
		if (avail < n)
			return STOCK_ESOLDOUT;
		if (STOCK_LIKELY(stock__pair_cas_first(c->tr, t, t + n, &t)))
			return 0;
		stock__backoff(&spins);
	}
}

/**
 * stock_atomic_reserve - hold @n units (remaining -= n, held += n) if at
 * least @n remain.
 *
 * Returns 0, STOCK_ESOLDOUT (fewer than @n remain; nothing changed), or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX). Lock-free: one 16-byte CAS of
 * {T, R} when uncontended, competing with takes on T exactly as they compete
 * with each other. Thread-safe; a successful reserve is a full barrier.
 */
STOCK_INLINE int
stock_atomic_reserve(struct stock_atomic *c, uint64_t n)
{
	unsigned int spins = 4;
	uint64_t tr[2];

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX))
		return STOCK_EINVAL;
	/* No need to load a consistent pair: the CAS compares both halves. */
	tr[0] = stock__pair_load(c->tr, 0);
	tr[1] = stock__pair_load(c->tr, 1);
	for (;;) {
		/* As take: A, P, L read after T understate nothing at the CAS. */
		ck_pr_fence_load();
		if (stock__atomic_raised(c) - tr[0] < n)
			return STOCK_ESOLDOUT;
		if (STOCK_LIKELY(stock__pair_cas(c->tr, tr, tr[0] + n, tr[1] + n)))
			return 0;
		stock__backoff(&spins);
	}
}

/**
 * stock_atomic_commit - sell @n held units (held -= n, sold += n).
 *
 * Returns 0, STOCK_EHELD (fewer than @n held; nothing changed), or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX). Lock-free: one 64-bit CAS of E
 * when uncontended. Thread-safe; a successful commit is a full barrier.
 */
STOCK_INLINE int
stock_atomic_commit(struct stock_atomic *c, uint64_t n)
{
	unsigned int spins = 4;
	uint64_t e;

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX))
		return STOCK_EINVAL;
	e = stock__pair_load(c->el, 0);
	for (;;) {
		/* R only raises held and is read after E. */
		ck_pr_fence_load();
		if (stock__pair_load(c->tr, 1) - e < n)
			return STOCK_EHELD;
		if (STOCK_LIKELY(stock__pair_cas_first(c->el, e, e + n, &e)))
			return 0;
		stock__backoff(&spins);
	}
}

/**
 * stock_atomic_release - return @n held units to sale (held -= n,
 * remaining += n).
 *
 * Returns 0, STOCK_EHELD (fewer than @n held; nothing changed), or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX). Lock-free: one 16-byte CAS of
 * {E, L} when uncontended. Thread-safe; a successful release is a full
 * barrier.
 */
STOCK_INLINE int
stock_atomic_release(struct stock_atomic *c, uint64_t n)
{
	unsigned int spins = 4;
	uint64_t el[2];

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX))
		return STOCK_EINVAL;
	el[0] = stock__pair_load(c->el, 0);
	el[1] = stock__pair_load(c->el, 1);
	for (;;) {
		ck_pr_fence_load();
		if (stock__pair_load(c->tr, 1) - el[0] < n)
			return STOCK_EHELD;
		if (STOCK_LIKELY(stock__pair_cas(c->el, el, el[0] + n, el[1] + n)))
			return 0;
		stock__backoff(&spins);
	}
}

/* Waits until no set()/restock() is in progress; returns the (even) sequence. */
STOCK_INLINE uint32_t
stock__atomic_seq_begin(const struct stock_atomic *c)
{
	uint32_t s;

	while ((s = ck_pr_load_32(&c->seq)) & 1u)
		ck_pr_stall();
	ck_pr_fence_load();
	return s;
}

/*
 * Loads the two pairs, each as it was at one instant: T and E before and
 * after R and L. Returns false if T or E moved in between (retry). T - R and
 * E - L never decrease outside a set()'s write-off (a reserve moves T and R
 * alike, a release E and L alike).
 */
STOCK_INLINE bool
stock__atomic_pairs(const struct stock_atomic *c, uint64_t *t, uint64_t *r, uint64_t *e,
    uint64_t *l)
{
	*t = stock__pair_load(c->tr, 0);
	*e = stock__pair_load(c->el, 0);
	ck_pr_fence_load();
	*r = stock__pair_load(c->tr, 1);
	*l = stock__pair_load(c->el, 1);
	ck_pr_fence_load();
	return stock__pair_load(c->tr, 0) == *t && stock__pair_load(c->el, 0) == *e;
}

/**
 * stock_atomic_put - refund @n units (sold -= n, remaining += n).
 *
 * Returns 0, STOCK_EREFUND (fewer than @n sold; nothing changed), or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX). Held units are not sold: they
 * cannot be refunded (release them). Lock-free against take, reserve, commit,
 * release and read; waits out a concurrent set()/restock(). Thread-safe.
 */
STOCK_INLINE int
stock_atomic_put(struct stock_atomic *c, uint64_t n)
{
	unsigned int spins = 4;
	uint64_t p, t, r, e, l, w;
	uint32_t s;

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX))
		return STOCK_EINVAL;
	p = ck_pr_load_64(&c->refunded);
	for (;;) {
		s = stock__atomic_seq_begin(c);
		w = ck_pr_load_64(&c->written_off);
		if (!stock__atomic_pairs(c, &t, &r, &e, &l))
			continue;
		ck_pr_fence_load();
		if (ck_pr_load_32(&c->seq) != s)
			continue;
		/* P read before the pairs, whose differences only grow: the sold
		 * count computed can only overstate what is sold now if P moved,
		 * and then the CAS below fails. */
		if ((t - r) - w + (e - l) - p < n)
			return STOCK_EREFUND;
		if (ck_pr_cas_64_value(&c->refunded, p, p + n, &p))
			return 0;
		stock__backoff(&spins);
	}
}

/**
 * stock_atomic_read - a consistent {remaining, held, sold, version}.
 *
 * Retries while an operation lands in its few-instruction window or a
 * set()/restock() is in progress. Returns 0 or STOCK_EINVAL (NULL argument).
 * Thread-safe.
 */
STOCK_INLINE int
stock_atomic_read(const struct stock_atomic *c, struct stock_level *out)
{
	uint64_t t, r, e, l, p1, p2, a, w, n;
	uint32_t s;

	if (STOCK_UNLIKELY(c == NULL || out == NULL))
		return STOCK_EINVAL;
	for (;;) {
		s = stock__atomic_seq_begin(c);
		p1 = ck_pr_load_64(&c->refunded);
		ck_pr_fence_load();
		a = ck_pr_load_64(&c->added);
		w = ck_pr_load_64(&c->written_off);
		n = ck_pr_load_64(&c->sets);
		if (stock__atomic_pairs(c, &t, &r, &e, &l)) {
			ck_pr_fence_load();
			p2 = ck_pr_load_64(&c->refunded);
			/* T, E and P each unchanged across an interval that
			   contains the loads of R and L: all at one instant. */
			if (p1 == p2 && ck_pr_load_32(&c->seq) == s)
				break;
		}
		ck_pr_stall();
	}
	out->remaining = a + p1 + l - t;
	out->held = r - e;
	out->sold = (t - r) - w + (e - l) - p1;
	out->version = t + r + e + l + a + p1 + w + n;
	return 0;
}

/**
 * stock_atomic_take_level - stock_atomic_take, and @after receives the level
 * this take produced.
 *
 * Returns what stock_atomic_take returns, or STOCK_EINVAL if @after is NULL
 * (nothing taken); @after is written only on success. The take itself is
 * stock_atomic_take's: the same success condition, lock-free, one CAS when
 * uncontended (plus a few loads of the same cache lines around it). The level:
 *
 *  (a) is always a state the counter really had, at an instant after this
 *      take applied and before the call returns: it includes these n units,
 *      remaining + held + sold is the total at that instant, and its version
 *      orders it against every level that read() and take_level() report for
 *      @c — a lower version is an earlier state (it contains a subset of the
 *      changes of the higher one), an equal version is the same state.
 *      Persisting levels and keeping the highest version therefore always
 *      keeps the newest state.
 *  (b) is exact — the state right after this take: sold counts these n units
 *      and every earlier take and no later one, version is this change's —
 *      unless a put(), commit(), release(), set() or restock() changed the
 *      counter inside the take's window (the few instructions between its
 *      load of the state and its CAS), or a set()/restock() was in progress
 *      when it loaded. Then the level is a stock_atomic_read() made after the
 *      take (waiting out a set() in progress, as read() does): it also
 *      contains what landed after the take and before that read — possibly
 *      later takes. (A reserve moves T, so one that lands in the window fails
 *      the take's CAS, which retries: it never makes the level inexact.)
 *
 * So while only takes, reserves and reads run, the levels are exactly those
 * of the locked strategy: the successful takes report disjoint sold ranges
 * [sold - n + 1, sold] tiling the units sold, and versions that strictly
 * increase in the order the takes applied. While the other operations run, a
 * take they race reports a later real state — never an earlier or an
 * invented one — so two takes may then report overlapping sold ranges (a
 * refund makes that legitimate anyway: sold goes down). Exact levels under
 * racing refunds would need the CAS on T to fail when P, E or A move; it does
 * not, by design, and after the CAS their values at its instant cannot be
 * recovered.
 *
 * Proof that the fast path is exact. Let the CAS replace t by t + n at instant
 * C; S is the load of seq before it (value s), Z the load after (value s2).
 *  1. T == t from the load that produced t until C: T only grows (takes,
 *     reserves and write-offs add to it) and the CAS found t there. R moves
 *     only in the instruction that moves T, so the r loaded after t held
 *     throughout that interval, which ends at C.
 *  2. s is even and s2 == s, so no set()/restock() was in progress at any
 *     instant of [S, Z]: each makes seq odd and then even again, and one that
 *     completed inside [S, Z] would have moved it by 2. A, W and sets are only
 *     written while seq is odd, so the a, w and k loaded inside [S, Z] held
 *     throughout [S, Z], which contains C.
 *  3. W agrees with t: a write-off counted in t was CASed into T, before t was
 *     loaded, by a set() then in progress; at S (after that load, with a load
 *     fence between) seq was even, so that set() had finished and its store
 *     of W precedes S, and w includes it. A write-off CASed after t was loaded
 *     would have moved T and failed our CAS.
 *  4. P and E only grow; each was loaded before C and again after C with the
 *     same value: P == p and E == e at C. L moves only with E, and l was
 *     loaded between the two loads of E: L == l at C.
 * Hence at C the words were exactly T = t + n, R = r, E = e, L = l, A = a,
 * P = p, W = w, sets = k: the level computed is the state at C, i.e. (b). For
 * (a): every level any operation reports is then the state at one instant (C
 * here; read()'s own instant otherwise, read() is consistent by its re-checks),
 * and version = T + R + E + L + A + P + W + sets is a sum of words that never
 * decrease, one of which grows with every change: along time it never
 * decreases and it moves exactly when the state does. So V(x) < V(y) implies
 * x before y, and V(x) == V(y) implies no change between x and y. (Modulo
 * 2^64, like every cumulative word: far beyond any real run.)
 */
STOCK_INLINE int
stock_atomic_take_level(struct stock_atomic *c, uint64_t n, struct stock_level *after)
{
	unsigned int spins = 4;
	uint64_t t, r, e, e2, l, a, p, p2, w, k;
	uint32_t s;

	if (STOCK_UNLIKELY(n == 0 || n > STOCK_COUNT_MAX || after == NULL))
		return STOCK_EINVAL;
	t = stock__pair_load(c->tr, 0);
	for (;;) {
		/* As stock_atomic_take, with seq loaded first (step 2, 3). */
		ck_pr_fence_load();
		s = ck_pr_load_32(&c->seq);
		ck_pr_fence_load();
		a = ck_pr_load_64(&c->added);
		p = ck_pr_load_64(&c->refunded);
		e = stock__pair_load(c->el, 0);
		ck_pr_fence_load();
		l = stock__pair_load(c->el, 1);
		r = stock__pair_load(c->tr, 1);
		if (a + p + l - t < n)
			return STOCK_ESOLDOUT;
		ck_pr_fence_load_atomic();
		if (STOCK_LIKELY(stock__pair_cas_first(c->tr, t, t + n, &t)))
			break;
		stock__backoff(&spins);
	}
	/* t is the value the CAS replaced. W and sets may be loaded after C:
	   by step 2 they did not move across it. */
	ck_pr_fence_atomic_load();
	w = ck_pr_load_64(&c->written_off);
	k = ck_pr_load_64(&c->sets);
	p2 = ck_pr_load_64(&c->refunded);
	e2 = stock__pair_load(c->el, 0);
	ck_pr_fence_load();
	if (STOCK_LIKELY((s & 1u) == 0 && p2 == p && e2 == e && ck_pr_load_32(&c->seq) == s)) {
		t += n;
		after->remaining = a + p + l - t;
		after->held = r - e;
		after->sold = (t - r) - w + (e - l) - p;
		after->version = t + r + e + l + a + p + w + k;
		return 0;
	}
	/* Raced by a put/commit/release/set/restock: the state at C is gone. */
	return stock_atomic_read(c, after);
}

/* ======================================================================
 * Locked counter: the same contract under a pthread mutex.
 * ====================================================================== */

struct stock_locked {
	pthread_mutex_t lock; /* private */
	uint64_t remaining;   /* private: guarded by lock */
	uint64_t held;        /* private: guarded by lock */
	uint64_t sold;        /* private: guarded by lock */
	uint64_t version;     /* private: guarded by lock */
} __attribute__((aligned(STOCK_CACHELINE)));
typedef struct stock_locked stock_locked_t;

#define STOCK_LOCKED_INITIALIZER(units)                                   \
	{                                                                     \
		.lock = PTHREAD_MUTEX_INITIALIZER, .remaining = (units),      \
		.held = 0, .sold = 0, .version = 0                            \
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
/**
 * stock_locked_take_level - stock_locked_take, and @after receives the state
 * right after this take, read under the same hold of the mutex: always exact
 * (no later take, this change's version). Returns as stock_locked_take, or
 * STOCK_EINVAL if @after is NULL; @after is written only on success. Blocking.
 */
STOCK_EXTERN int stock_locked_take_level(struct stock_locked *c, uint64_t n,
    struct stock_level *after);
/** stock_locked_put - as stock_atomic_put, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_put(struct stock_locked *c, uint64_t n);
/** stock_locked_reserve - as stock_atomic_reserve, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_reserve(struct stock_locked *c, uint64_t n);
/** stock_locked_commit - as stock_atomic_commit, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_commit(struct stock_locked *c, uint64_t n);
/** stock_locked_release - as stock_atomic_release, under the mutex. Blocking. */
STOCK_EXTERN int stock_locked_release(struct stock_locked *c, uint64_t n);
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
	uint64_t held;            /* private: guarded by turn */
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
/**
 * stock_signaled_take_level - stock_signaled_take, and @after receives the
 * state right after this take, read in the same turn: always exact. Returns as
 * stock_signaled_take, or STOCK_EINVAL if @after is NULL; @after is written
 * only on success. Waits (sleeping) for the turn.
 */
STOCK_EXTERN int stock_signaled_take_level(struct stock_signaled *c, uint64_t n,
    struct stock_level *after);
/** stock_signaled_put - as stock_atomic_put; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_put(struct stock_signaled *c, uint64_t n);
/** stock_signaled_reserve - as stock_atomic_reserve; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_reserve(struct stock_signaled *c, uint64_t n);
/** stock_signaled_commit - as stock_atomic_commit; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_commit(struct stock_signaled *c, uint64_t n);
/** stock_signaled_release - as stock_atomic_release; waits (sleeping) for the turn. */
STOCK_EXTERN int stock_signaled_release(struct stock_signaled *c, uint64_t n);
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

/**
 * stock_counter_take_level - stock_counter_take, and @after receives the level
 * at the instant this take applied: after->sold is the sold count including
 * these n units and no later take, after->remaining likewise, after->version
 * this change's version. Exact for the locked and signaled strategies; for the
 * atomic one exact unless a put/commit/release/set/restock races the take, and
 * then a real state after it (stock_atomic_take_level states the guarantee). In every
 * strategy the level is a state the counter really had, and its version
 * orders it against every read() and take_level() level of @c.
 * Returns as stock_counter_take, or STOCK_EINVAL if @after is NULL; @after is
 * written only on success.
 */
STOCK_INLINE int
stock_counter_take_level(struct stock_counter *c, uint64_t n, struct stock_level *after)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_take_level(&c->u.atomic, n, after);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_take_level(&c->u.locked, n, after);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_take_level(&c->u.signaled, n, after);
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

/**
 * stock_counter_reserve - the strategy's reserve: hold @n units (remaining ->
 * held). Returns 0, STOCK_ESOLDOUT (fewer than @n remain) or STOCK_EINVAL
 * (@n == 0 or > STOCK_COUNT_MAX); nothing changes on an error. Thread-safe.
 */
STOCK_INLINE int
stock_counter_reserve(struct stock_counter *c, uint64_t n)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_reserve(&c->u.atomic, n);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_reserve(&c->u.locked, n);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_reserve(&c->u.signaled, n);
	}
	return STOCK_EINVAL;
}

/**
 * stock_counter_commit - the strategy's commit: sell @n held units (held ->
 * sold). Returns 0, STOCK_EHELD (fewer than @n held) or STOCK_EINVAL (@n == 0
 * or > STOCK_COUNT_MAX); nothing changes on an error. Thread-safe.
 */
STOCK_INLINE int
stock_counter_commit(struct stock_counter *c, uint64_t n)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_commit(&c->u.atomic, n);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_commit(&c->u.locked, n);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_commit(&c->u.signaled, n);
	}
	return STOCK_EINVAL;
}

/**
 * stock_counter_release - the strategy's release: return @n held units to
 * sale (held -> remaining). Returns 0, STOCK_EHELD (fewer than @n held) or
 * STOCK_EINVAL (@n == 0 or > STOCK_COUNT_MAX); nothing changes on an error.
 * Thread-safe.
 */
STOCK_INLINE int
stock_counter_release(struct stock_counter *c, uint64_t n)
{
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_release(&c->u.atomic, n);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_release(&c->u.locked, n);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_release(&c->u.signaled, n);
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
