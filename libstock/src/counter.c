/*
 * Stock counters: the out-of-line half of the three strategies.
 *
 * The lock-free counter's take/put/reserve/commit/release/read are inline in
 * stock/counter.h (their correctness argument: docs/internals/counter-held.md);
 * what lives here is its set() and restock() — the operations that change
 * `added` or `written_off` — and the whole of the locked and signaled
 * counters, whose
 * operations are dominated by the lock or the hand-over anyway. All three
 * share one contract (see counter.h) and one torture harness
 * (tests/unit/torture.c). stock_atomic_take_level, the take that reports the
 * level it produced, is inline in counter.h with its proof; the locked and
 * signaled ones below read the state under the same hold as the take.
 */
#include <strings.h>

#include "stock/counter.h"
#include "internal.h"

/* ---------------------------------------------------------------------- */
/* Atomic counter                                                          */
/* ---------------------------------------------------------------------- */

int
stock_atomic_init(struct stock_atomic *c, uint64_t remaining)
{
	if (c == NULL)
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	c->taken = 0;
	c->reserved = 0;
	c->ended = 0;
	c->released = 0;
	c->added = remaining;
	c->refunded = 0;
	c->written_off = 0;
	c->sets = 0;
	c->seq = 0;
	if (pthread_mutex_init(&c->set_lock, NULL) != 0)
		return STOCK_ESYS;
	ck_pr_fence_store();
	return 0;
}

void
stock_atomic_destroy(struct stock_atomic *c)
{
	if (c != NULL)
		pthread_mutex_destroy(&c->set_lock);
}

/*
 * set() must find an instant at which remaining == r (remaining = A + P + L -
 * T). It reads T, P and L (T unchanged around the reads of P and L), then
 * either
 *  - writes off the excess with a CAS on T (racing takes and reserves make
 *    the CAS fail and we retry), and checks P and L did not move meanwhile; or
 *  - raises A by the shortfall and checks none of T, P, L moved across the
 *    store.
 * P and L only grow and were read before the CAS (store) and again after it
 * with the same values, so they held at its instant: remaining was exactly r
 * then. If a concurrent refund or release slipped in, the state is still
 * valid (never oversold: P and L only add, so a write-off never removes more
 * than was there) and we adjust again. Held and sold are untouched: a
 * write-off adds k to T and to W, and sold counts T - W. `seq` is odd
 * throughout so readers never pair A/W with the other words from two
 * different sides of the set.
 */
int
stock_atomic_set(struct stock_atomic *c, uint64_t remaining)
{
	uint64_t t, t2, p, l, a, w, rem, used;
	bool changed = false;
	int rc = 0;

	if (c == NULL)
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	if (pthread_mutex_lock(&c->set_lock) != 0)
		return STOCK_ESYS;
	ck_pr_store_32(&c->seq, c->seq + 1);
	ck_pr_fence_memory();
	for (;;) {
		t = stock__pair_load(c->tr, 0);
		ck_pr_fence_load();
		p = ck_pr_load_64(&c->refunded);
		l = stock__pair_load(c->el, 1);
		ck_pr_fence_load();
		t2 = stock__pair_load(c->tr, 0);
		if (t != t2)
			continue;
		a = ck_pr_load_64(&c->added);
		w = ck_pr_load_64(&c->written_off);
		rem = a + p + l - t;
		used = t - w - p - l; /* sold + held */
		if (!changed && used + remaining > STOCK_COUNT_MAX) {
			rc = STOCK_ERANGE;
			break;
		}
		if (rem == remaining)
			break;
		if (rem > remaining) {
			uint64_t k = rem - remaining;

			if (!stock__pair_cas_first(c->tr, t, t + k, &t2))
				continue;
			ck_pr_store_64(&c->written_off, w + k);
			changed = true;
			ck_pr_fence_memory();
			if (ck_pr_load_64(&c->refunded) == p && stock__pair_load(c->el, 1) == l)
				break;
		} else {
			ck_pr_store_64(&c->added, a + (remaining - rem));
			changed = true;
			ck_pr_fence_memory();
			if (stock__pair_load(c->tr, 0) == t && ck_pr_load_64(&c->refunded) == p &&
			    stock__pair_load(c->el, 1) == l)
				break;
		}
	}
	if (rc == 0)
		ck_pr_store_64(&c->sets, c->sets + 1);
	ck_pr_fence_store();
	ck_pr_store_32(&c->seq, c->seq + 1);
	pthread_mutex_unlock(&c->set_lock);
	return rc;
}

/*
 * Restock only raises A, which takes read as a lower bound anyway; it runs
 * under the set lock with `seq` odd so readers never pair the new A with a
 * (T, P) read before it.
 */
int
stock_atomic_restock(struct stock_atomic *c, uint64_t n)
{
	int rc = 0;

	if (c == NULL || n == 0 || n > STOCK_COUNT_MAX)
		return c == NULL || n == 0 ? STOCK_EINVAL : STOCK_ERANGE;
	if (pthread_mutex_lock(&c->set_lock) != 0)
		return STOCK_ESYS;
	/* total = A - W, and both only change under this lock. */
	if (c->added - c->written_off + n > STOCK_COUNT_MAX) {
		rc = STOCK_ERANGE;
	} else {
		ck_pr_store_32(&c->seq, c->seq + 1);
		ck_pr_fence_store();
		ck_pr_store_64(&c->added, c->added + n);
		ck_pr_fence_store();
		ck_pr_store_32(&c->seq, c->seq + 1);
	}
	pthread_mutex_unlock(&c->set_lock);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* Plain-state operations shared by the locked and signaled counters.     */
/* The caller holds the strategy's mutual exclusion.                      */
/* ---------------------------------------------------------------------- */

struct stock__plain {
	uint64_t *remaining, *held, *sold, *version;
};

static int
stock__plain_take(struct stock__plain s, uint64_t n)
{
	if (*s.remaining < n)
		return STOCK_ESOLDOUT;
	*s.remaining -= n;
	*s.sold += n;
	(*s.version)++;
	return 0;
}

static int
stock__plain_put(struct stock__plain s, uint64_t n)
{
	if (*s.sold < n)
		return STOCK_EREFUND;
	*s.sold -= n;
	*s.remaining += n;
	(*s.version)++;
	return 0;
}

static int
stock__plain_reserve(struct stock__plain s, uint64_t n)
{
	if (*s.remaining < n)
		return STOCK_ESOLDOUT;
	*s.remaining -= n;
	*s.held += n;
	(*s.version)++;
	return 0;
}

static int
stock__plain_commit(struct stock__plain s, uint64_t n)
{
	if (*s.held < n)
		return STOCK_EHELD;
	*s.held -= n;
	*s.sold += n;
	(*s.version)++;
	return 0;
}

static int
stock__plain_release(struct stock__plain s, uint64_t n)
{
	if (*s.held < n)
		return STOCK_EHELD;
	*s.held -= n;
	*s.remaining += n;
	(*s.version)++;
	return 0;
}

static int
stock__plain_set(struct stock__plain s, uint64_t remaining)
{
	if (*s.sold + *s.held + remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	*s.remaining = remaining;
	(*s.version)++;
	return 0;
}

static int
stock__plain_restock(struct stock__plain s, uint64_t n)
{
	if (*s.sold + *s.held + *s.remaining + n > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	*s.remaining += n;
	(*s.version)++;
	return 0;
}

static void
stock__plain_read(struct stock__plain s, struct stock_level *out)
{
	out->remaining = *s.remaining;
	out->held = *s.held;
	out->sold = *s.sold;
	out->version = *s.version;
}

static int
stock__check_count(uint64_t n)
{
	return (n == 0 || n > STOCK_COUNT_MAX) ? STOCK_EINVAL : 0;
}

/* ---------------------------------------------------------------------- */
/* Locked counter                                                          */
/* ---------------------------------------------------------------------- */

#define STOCK__LOCKED_PLAIN(c) \
	((struct stock__plain){ &(c)->remaining, &(c)->held, &(c)->sold, &(c)->version })

int
stock_locked_init(struct stock_locked *c, uint64_t remaining)
{
	if (c == NULL)
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	if (pthread_mutex_init(&c->lock, NULL) != 0)
		return STOCK_ESYS;
	c->remaining = remaining;
	c->held = 0;
	c->sold = 0;
	c->version = 0;
	return 0;
}

void
stock_locked_destroy(struct stock_locked *c)
{
	if (c != NULL)
		pthread_mutex_destroy(&c->lock);
}

int
stock_locked_take(struct stock_locked *c, uint64_t n)
{
	int rc;

	if ((rc = stock__check_count(n)) != 0)
		return rc;
	pthread_mutex_lock(&c->lock);
	rc = stock__plain_take(STOCK__LOCKED_PLAIN(c), n);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* The take and the read of the state it produced under one hold: exact. */
int
stock_locked_take_level(struct stock_locked *c, uint64_t n, struct stock_level *after)
{
	int rc;

	if ((rc = stock__check_count(n)) != 0)
		return rc;
	if (after == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&c->lock);
	if ((rc = stock__plain_take(STOCK__LOCKED_PLAIN(c), n)) == 0)
		stock__plain_read(STOCK__LOCKED_PLAIN(c), after);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int
stock_locked_put(struct stock_locked *c, uint64_t n)
{
	int rc;

	if ((rc = stock__check_count(n)) != 0)
		return rc;
	pthread_mutex_lock(&c->lock);
	rc = stock__plain_put(STOCK__LOCKED_PLAIN(c), n);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* Reserve, commit and release: one plain operation under the mutex. */
static int
stock__locked_op(struct stock_locked *c, uint64_t n, int (*op)(struct stock__plain, uint64_t))
{
	int rc;

	if ((rc = stock__check_count(n)) != 0)
		return rc;
	pthread_mutex_lock(&c->lock);
	rc = op(STOCK__LOCKED_PLAIN(c), n);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int
stock_locked_reserve(struct stock_locked *c, uint64_t n)
{
	return stock__locked_op(c, n, stock__plain_reserve);
}

int
stock_locked_commit(struct stock_locked *c, uint64_t n)
{
	return stock__locked_op(c, n, stock__plain_commit);
}

int
stock_locked_release(struct stock_locked *c, uint64_t n)
{
	return stock__locked_op(c, n, stock__plain_release);
}

int
stock_locked_set(struct stock_locked *c, uint64_t remaining)
{
	int rc;

	if (c == NULL)
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	pthread_mutex_lock(&c->lock);
	rc = stock__plain_set(STOCK__LOCKED_PLAIN(c), remaining);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int
stock_locked_restock(struct stock_locked *c, uint64_t n)
{
	int rc;

	if (c == NULL || n == 0)
		return STOCK_EINVAL;
	if (n > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	pthread_mutex_lock(&c->lock);
	rc = stock__plain_restock(STOCK__LOCKED_PLAIN(c), n);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int
stock_locked_read(struct stock_locked *c, struct stock_level *out)
{
	if (c == NULL || out == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&c->lock);
	stock__plain_read(STOCK__LOCKED_PLAIN(c), out);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Signaled counter                                                        */
/* ---------------------------------------------------------------------- */

#define STOCK__SIGNALED_PLAIN(c) \
	((struct stock__plain){ &(c)->remaining, &(c)->held, &(c)->sold, &(c)->version })

int
stock_signaled_init(struct stock_signaled *c, uint64_t remaining)
{
	int rc;

	if (c == NULL)
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	/* The turn starts "set": the first caller proceeds at once. */
	if ((rc = stock_signal_init(&c->turn, true)) != 0)
		return rc;
	c->remaining = remaining;
	c->held = 0;
	c->sold = 0;
	c->version = 0;
	return 0;
}

void
stock_signaled_destroy(struct stock_signaled *c)
{
	if (c != NULL)
		stock_signal_destroy(&c->turn);
}

/* Waits for the turn without a deadline; only fails on a broken event. */
static int
stock__turn_begin(struct stock_signaled *c)
{
	return stock_signal_wait(&c->turn, NULL) == 0 ? 0 : STOCK_ESYS;
}

static void
stock__turn_end(struct stock_signaled *c)
{
	stock_signal_set(&c->turn);
}

int
stock_signaled_take(struct stock_signaled *c, uint64_t n)
{
	int rc;

	if ((rc = stock__check_count(n)) != 0 || (rc = stock__turn_begin(c)) != 0)
		return rc;
	rc = stock__plain_take(STOCK__SIGNALED_PLAIN(c), n);
	stock__turn_end(c);
	return rc;
}

/* The take and the read of the state it produced in one turn: exact. */
int
stock_signaled_take_level(struct stock_signaled *c, uint64_t n, struct stock_level *after)
{
	int rc;

	if ((rc = stock__check_count(n)) != 0)
		return rc;
	if (after == NULL)
		return STOCK_EINVAL;
	if ((rc = stock__turn_begin(c)) != 0)
		return rc;
	if ((rc = stock__plain_take(STOCK__SIGNALED_PLAIN(c), n)) == 0)
		stock__plain_read(STOCK__SIGNALED_PLAIN(c), after);
	stock__turn_end(c);
	return rc;
}

int
stock_signaled_put(struct stock_signaled *c, uint64_t n)
{
	int rc;

	if ((rc = stock__check_count(n)) != 0 || (rc = stock__turn_begin(c)) != 0)
		return rc;
	rc = stock__plain_put(STOCK__SIGNALED_PLAIN(c), n);
	stock__turn_end(c);
	return rc;
}

/* Reserve, commit and release: one plain operation in one turn. */
static int
stock__signaled_op(struct stock_signaled *c, uint64_t n,
    int (*op)(struct stock__plain, uint64_t))
{
	int rc;

	if ((rc = stock__check_count(n)) != 0 || (rc = stock__turn_begin(c)) != 0)
		return rc;
	rc = op(STOCK__SIGNALED_PLAIN(c), n);
	stock__turn_end(c);
	return rc;
}

int
stock_signaled_reserve(struct stock_signaled *c, uint64_t n)
{
	return stock__signaled_op(c, n, stock__plain_reserve);
}

int
stock_signaled_commit(struct stock_signaled *c, uint64_t n)
{
	return stock__signaled_op(c, n, stock__plain_commit);
}

int
stock_signaled_release(struct stock_signaled *c, uint64_t n)
{
	return stock__signaled_op(c, n, stock__plain_release);
}

int
stock_signaled_set(struct stock_signaled *c, uint64_t remaining)
{
	int rc;

	if (c == NULL)
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	if ((rc = stock__turn_begin(c)) != 0)
		return rc;
	rc = stock__plain_set(STOCK__SIGNALED_PLAIN(c), remaining);
	stock__turn_end(c);
	return rc;
}

int
stock_signaled_restock(struct stock_signaled *c, uint64_t n)
{
	int rc;

	if (c == NULL || n == 0)
		return STOCK_EINVAL;
	if (n > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	if ((rc = stock__turn_begin(c)) != 0)
		return rc;
	rc = stock__plain_restock(STOCK__SIGNALED_PLAIN(c), n);
	stock__turn_end(c);
	return rc;
}

int
stock_signaled_read(struct stock_signaled *c, struct stock_level *out)
{
	int rc;

	if (c == NULL || out == NULL)
		return STOCK_EINVAL;
	if ((rc = stock__turn_begin(c)) != 0)
		return rc;
	stock__plain_read(STOCK__SIGNALED_PLAIN(c), out);
	stock__turn_end(c);
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Strategy-agnostic counter                                               */
/* ---------------------------------------------------------------------- */

static const char *const stock__strategy_names[STOCK_STRATEGY_COUNT] = {
	[STOCK_STRATEGY_ATOMIC] = "atomic",
	[STOCK_STRATEGY_LOCKED] = "locked",
	[STOCK_STRATEGY_SIGNAL] = "signal",
};

const char *
stock_strategy_name(enum stock_strategy s)
{
	if ((unsigned)s >= STOCK_STRATEGY_COUNT)
		return NULL;
	return stock__strategy_names[s];
}

int
stock_strategy_parse(const char *name, enum stock_strategy *out)
{
	unsigned i;

	if (name == NULL || out == NULL)
		return STOCK_EINVAL;
	for (i = 0; i < STOCK_STRATEGY_COUNT; i++) {
		if (strcasecmp(name, stock__strategy_names[i]) == 0) {
			*out = (enum stock_strategy)i;
			return 0;
		}
	}
	if (strcasecmp(name, "lock") == 0) {
		*out = STOCK_STRATEGY_LOCKED;
		return 0;
	}
	return STOCK_EINVAL;
}

int
stock_counter_init(struct stock_counter *c, enum stock_strategy s, uint64_t remaining)
{
	if (c == NULL)
		return STOCK_EINVAL;
	c->strategy = s;
	switch (s) {
	case STOCK_STRATEGY_ATOMIC:
		return stock_atomic_init(&c->u.atomic, remaining);
	case STOCK_STRATEGY_LOCKED:
		return stock_locked_init(&c->u.locked, remaining);
	case STOCK_STRATEGY_SIGNAL:
		return stock_signaled_init(&c->u.signaled, remaining);
	}
	return STOCK_EINVAL;
}

void
stock_counter_destroy(struct stock_counter *c)
{
	if (c == NULL)
		return;
	switch (c->strategy) {
	case STOCK_STRATEGY_ATOMIC:
		stock_atomic_destroy(&c->u.atomic);
		break;
	case STOCK_STRATEGY_LOCKED:
		stock_locked_destroy(&c->u.locked);
		break;
	case STOCK_STRATEGY_SIGNAL:
		stock_signaled_destroy(&c->u.signaled);
		break;
	}
}
