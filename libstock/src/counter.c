/*
 * Stock counters: the out-of-line half of the three strategies.
 *
 * The lock-free counter's take/put/read are inline in stock/counter.h; what
 * lives here is its set() — the one operation that changes `added` or
 * `written_off` — and the whole of the locked and signaled counters, whose
 * operations are dominated by the lock or the hand-over anyway. All three
 * share one contract (see counter.h) and one torture test
 * (tests/unit/test_torture.c).
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
 * set() must find an instant at which remaining == r. It reads (T, P) as a
 * consistent pair (T unchanged around the read of P), then either
 *  - writes off the excess with a CAS on T (racing takes make the CAS fail
 *    and we retry), and checks P did not move meanwhile; or
 *  - raises A by the shortfall and checks neither T nor P moved across the
 *    store.
 * If a concurrent take or refund slipped in, the state is still valid (never
 * oversold: a write-off never removes more than was there) and we adjust
 * again. `seq` is odd throughout so readers never pair A/W with T/P from two
 * different sides of the set.
 */
int
stock_atomic_set(struct stock_atomic *c, uint64_t remaining)
{
	uint64_t t, t2, p, a, w, rem, sold;
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
		t = ck_pr_load_64(&c->taken);
		ck_pr_fence_load();
		p = ck_pr_load_64(&c->refunded);
		ck_pr_fence_load();
		t2 = ck_pr_load_64(&c->taken);
		if (t != t2)
			continue;
		a = ck_pr_load_64(&c->added);
		w = ck_pr_load_64(&c->written_off);
		rem = a + p - t;
		sold = t - w - p;
		if (!changed && sold + remaining > STOCK_COUNT_MAX) {
			rc = STOCK_ERANGE;
			break;
		}
		if (rem == remaining)
			break;
		if (rem > remaining) {
			uint64_t k = rem - remaining;

			if (!ck_pr_cas_64(&c->taken, t, t + k))
				continue;
			ck_pr_store_64(&c->written_off, w + k);
			changed = true;
			ck_pr_fence_memory();
			if (ck_pr_load_64(&c->refunded) == p)
				break;
		} else {
			ck_pr_store_64(&c->added, a + (remaining - rem));
			changed = true;
			ck_pr_fence_memory();
			if (ck_pr_load_64(&c->taken) == t && ck_pr_load_64(&c->refunded) == p)
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
	uint64_t *remaining, *sold, *version;
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
stock__plain_set(struct stock__plain s, uint64_t remaining)
{
	if (*s.sold + remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	*s.remaining = remaining;
	(*s.version)++;
	return 0;
}

static int
stock__plain_restock(struct stock__plain s, uint64_t n)
{
	if (*s.sold + *s.remaining + n > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	*s.remaining += n;
	(*s.version)++;
	return 0;
}

static void
stock__plain_read(struct stock__plain s, struct stock_level *out)
{
	out->remaining = *s.remaining;
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
	((struct stock__plain){ &(c)->remaining, &(c)->sold, &(c)->version })

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
	((struct stock__plain){ &(c)->remaining, &(c)->sold, &(c)->version })

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
