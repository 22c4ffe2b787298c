/*
 * Permit gate (bulkhead) with a run-time resizable limit, on ck_pr and ck_ec.
 *
 * The whole admission state is one 64-bit word, limit in the high half and
 * in_use in the low half. Every change is a CAS on that word, so an acquire
 * compares against exactly the limit that is in force when it commits, and a
 * resize takes effect at one instant: there is no window in which a thread
 * could be admitted against a stale, larger limit.
 *
 * Sleeping: a blocked acquirer announces itself in `nwaiters` (a full
 * barrier), samples the event count, re-tries, and sleeps on the event count
 * only if that sample is still current. Releasers and growing resizes change
 * the word by CAS (a full barrier) and then read `nwaiters`: by the usual
 * Dekker argument either the waiter's re-try sees the release or the
 * releaser sees the waiter and bumps the event count (ck_ec then wakes every
 * sleeper through the futex). Nobody waiting costs a releaser nothing extra.
 *
 * TSan: all shared state is accessed through ck_pr (compiler builtins in the
 * TSan build), and every waiter re-reads the word after waking, so no
 * happens-before edge depends on libck's uninstrumented futex slow path.
 */
#include "stock/permits.h"
#include "internal.h"

/* The public struct stores the event count as a plain word; it has struct
 * ck_ec32's layout (the header does not include ck_ec.h). */
#define STOCK__PM_EC(p) ((struct ck_ec32 *)(void *)&(p)->ec)
_Static_assert(sizeof(struct ck_ec32) == sizeof(uint32_t), "ck_ec32 is one 32-bit word");

#define STOCK__PM_LIMIT(w) ((w) >> 32)
#define STOCK__PM_INUSE(w) ((w)&0xffffffffULL)
#define STOCK__PM_WORD(limit, inuse) (((uint64_t)(limit) << 32) | (uint64_t)(inuse))

int
stock_permits_init(struct stock_permits *p, uint64_t n)
{
	if (p == NULL || n == 0)
		return STOCK_EINVAL;
	if (n > STOCK_PERMITS_MAX)
		return STOCK_ERANGE;
	p->word = STOCK__PM_WORD(n, 0);
	p->nwaiters = 0;
	ck_ec32_init(STOCK__PM_EC(p), 0);
	p->acquired = p->rejected = p->timed_out = p->peak = 0;
	ck_pr_fence_store();
	return 0;
}

void
stock_permits_destroy(struct stock_permits *p)
{
	(void)p;
}

static int
stock__permits_check(const struct stock_permits *p, uint64_t k)
{
	if (p == NULL || k == 0)
		return STOCK_EINVAL;
	if (k > STOCK_PERMITS_MAX)
		return STOCK_ERANGE;
	return 0;
}

/* Raises the recorded peak to @inuse (a CAS-max; usually just one load). */
static void
stock__permits_peak(struct stock_permits *p, uint64_t inuse)
{
	uint64_t cur = ck_pr_load_64(&p->peak);

	while (inuse > cur) {
		if (ck_pr_cas_64_value(&p->peak, cur, inuse, &cur))
			break;
	}
}

/* One admission attempt: 0, or STOCK_EBUSY when the k permits do not fit. */
static int
stock__permits_take(struct stock_permits *p, uint64_t k)
{
	uint64_t w = ck_pr_load_64(&p->word), inuse;

	for (;;) {
		inuse = STOCK__PM_INUSE(w);
		if (inuse + k > STOCK__PM_LIMIT(w))
			return STOCK_EBUSY;
		if (ck_pr_cas_64_value(&p->word, w, w + k, &w))
			break;
		ck_pr_stall();
	}
	ck_pr_inc_64(&p->acquired);
	stock__permits_peak(p, inuse + k);
	return 0;
}

/* Wakes sleeping acquirers, if there are any (see the Dekker note above). */
static void
stock__permits_wake(struct stock_permits *p)
{
	if (ck_pr_load_32(&p->nwaiters) != 0)
		ck_ec32_inc(STOCK__PM_EC(p), &stock__ec_mp);
}

int
stock_permits_try_acquire(struct stock_permits *p, uint64_t k)
{
	int r = stock__permits_check(p, k);

	if (r != 0)
		return r;
	r = stock__permits_take(p, k);
	if (r != 0)
		ck_pr_inc_64(&p->rejected);
	return r;
}

int
stock_permits_acquire(struct stock_permits *p, uint64_t k, const struct timespec *deadline)
{
	uint32_t seq;
	int r = stock__permits_check(p, k);

	if (r != 0)
		return r;
	if (stock__permits_take(p, k) == 0)
		return 0;
	if (stock__deadline_passed(deadline)) {
		ck_pr_inc_64(&p->timed_out);
		return STOCK_ETIMEDOUT;
	}

	/* Announce ourselves (full barrier), then sample, re-try and sleep. */
	ck_pr_faa_32(&p->nwaiters, 1);
	for (;;) {
		seq = ck_ec32_value(STOCK__PM_EC(p));
		if (stock__permits_take(p, k) == 0) {
			r = 0;
			break;
		}
		if (stock__deadline_passed(deadline)) {
			r = STOCK_ETIMEDOUT;
			break;
		}
		stock__ec32_wait(STOCK__PM_EC(p), seq, deadline);
	}
	ck_pr_faa_32(&p->nwaiters, (uint32_t)-1);
	if (r != 0)
		ck_pr_inc_64(&p->timed_out);
	return r;
}

int
stock_permits_release(struct stock_permits *p, uint64_t k)
{
	uint64_t w;

	if (p == NULL || k == 0)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&p->word);
	for (;;) {
		if (k > STOCK__PM_INUSE(w))
			return STOCK_EINVAL;
		if (ck_pr_cas_64_value(&p->word, w, w - k, &w))
			break;
		ck_pr_stall();
	}
	stock__permits_wake(p);
	return 0;
}

int
stock_permits_resize(struct stock_permits *p, uint64_t new_n)
{
	uint64_t w;

	if (p == NULL)
		return STOCK_EINVAL;
	if (new_n > STOCK_PERMITS_MAX)
		return STOCK_ERANGE;
	w = ck_pr_load_64(&p->word);
	while (!ck_pr_cas_64_value(&p->word, w, STOCK__PM_WORD(new_n, STOCK__PM_INUSE(w)), &w))
		ck_pr_stall();
	if (new_n > STOCK__PM_LIMIT(w))
		stock__permits_wake(p);
	return 0;
}

uint64_t
stock_permits_available(const struct stock_permits *p)
{
	uint64_t w;

	if (p == NULL)
		return 0;
	w = ck_pr_load_64(&p->word);
	return STOCK__PM_INUSE(w) >= STOCK__PM_LIMIT(w) ? 0 : STOCK__PM_LIMIT(w) - STOCK__PM_INUSE(w);
}

int
stock_permits_stats(const struct stock_permits *p, struct stock_permits_stats *out)
{
	uint64_t w;

	if (p == NULL || out == NULL)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&p->word);
	out->limit = STOCK__PM_LIMIT(w);
	out->in_use = STOCK__PM_INUSE(w);
	out->waiters = ck_pr_load_32(&p->nwaiters);
	out->acquired = ck_pr_load_64(&p->acquired);
	out->rejected = ck_pr_load_64(&p->rejected);
	out->timed_out = ck_pr_load_64(&p->timed_out);
	out->peak = ck_pr_load_64(&p->peak);
	return 0;
}
