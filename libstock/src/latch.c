/*
 * Latch (stock/latch.h): a manual-reset event on ck_pr and a futex.
 *
 * `state` is also the futex word. It packs the flag, a "sleepers" bit and a
 * generation: bit 0 is 1 while the latch is set, bit 1 while a waiter may
 * sleep on the word, bits 2..31 count the set() calls that found it clear.
 * set() and clear() change it only by CAS; clear() keeps the generation. So
 * a waiter that read state s0 (clear) and later reads another generation, or
 * the flag, knows a set() happened after its first read — the latch was set
 * at some instant during the wait, even if it has been cleared again since —
 * and returns 0. That is what makes set(); clear(); release the threads that
 * were waiting.
 *
 * Sleeping: a waiter sets the sleepers bit by CAS, then sleeps on the word
 * with the value it wrote; the kernel compares the word before sleeping.
 * set()'s CAS clears the bit and learns from the old value whether anybody
 * may sleep; only then does it wake, by the word's address. Either the
 * waiter's CAS comes first (set() sees the bit and wakes) or set()'s does
 * (the waiter's CAS fails, it re-reads and sees the flag). Nobody waiting
 * costs set() nothing but its CAS.
 *
 * After its CAS, set() never touches the latch's memory again (FUTEX_WAKE
 * uses the address as a key only): a waiter may destroy or free the latch
 * as soon as its wait returns. `nwaiters` is statistics, kept by the
 * waiters themselves.
 *
 * The generation wraps after 2^30 sets; a waiter would have to sleep through
 * exactly that many without being scheduled to miss one.
 *
 * TSan: every decision is taken on `state` through ck_pr, so no
 * happens-before edge depends on the uninstrumented futex.
 */
#include "stock/latch.h"
#include "internal.h"

#define STOCK__LATCH_SET 1u
#define STOCK__LATCH_SLEEPERS 2u
#define STOCK__LATCH_GEN 4u
#define STOCK__LATCH_FLAGS (STOCK__LATCH_SET | STOCK__LATCH_SLEEPERS)

int
stock_latch_init(struct stock_latch *l, bool set)
{
	if (l == NULL)
		return STOCK_EINVAL;
	l->state = set ? STOCK__LATCH_SET : 0;
	l->nwaiters = 0;
	ck_pr_fence_store();
	return 0;
}

void
stock_latch_destroy(struct stock_latch *l)
{
	(void)l;
}

void
stock_latch_set(struct stock_latch *l)
{
	uint32_t s;

	if (l == NULL)
		return;
	s = ck_pr_load_32(&l->state);
	do {
		if (s & STOCK__LATCH_SET)
			return; /* already set: idempotent, nobody to wake */
	} while (!ck_pr_cas_32_value(&l->state, s,
	    ((s + STOCK__LATCH_GEN) & ~STOCK__LATCH_SLEEPERS) | STOCK__LATCH_SET, &s));
	/* The last use of *l: only its address from here on. */
	if (s & STOCK__LATCH_SLEEPERS)
		stock__futex_wake(&l->state);
}

void
stock_latch_clear(struct stock_latch *l)
{
	uint32_t s;

	if (l == NULL)
		return;
	s = ck_pr_load_32(&l->state);
	do {
		if (!(s & STOCK__LATCH_SET))
			return;
	} while (!ck_pr_cas_32_value(&l->state, s, s & ~STOCK__LATCH_SET, &s));
}

int
stock_latch_wait(struct stock_latch *l, const struct timespec *deadline)
{
	uint32_t s, gen0;
	int r;

	if (l == NULL)
		return STOCK_EINVAL;
	s = ck_pr_load_32(&l->state);
	if (s & STOCK__LATCH_SET) {
		ck_pr_fence_acquire();
		return 0;
	}
	if (stock__deadline_passed(deadline))
		return STOCK_ETIMEDOUT;
	gen0 = s & ~STOCK__LATCH_FLAGS;
	ck_pr_faa_32(&l->nwaiters, 1);
	for (;;) {
		s = ck_pr_load_32(&l->state);
		if ((s & STOCK__LATCH_SET) || (s & ~STOCK__LATCH_FLAGS) != gen0) {
			r = 0; /* set now, or set and cleared since the first read */
			break;
		}
		if (stock__deadline_passed(deadline)) {
			r = STOCK_ETIMEDOUT;
			break;
		}
		if (!(s & STOCK__LATCH_SLEEPERS) &&
		    !ck_pr_cas_32(&l->state, s, s | STOCK__LATCH_SLEEPERS))
			continue; /* changed meanwhile: look again */
		stock__futex_wait(&l->state, s | STOCK__LATCH_SLEEPERS, deadline);
	}
	ck_pr_faa_32(&l->nwaiters, (uint32_t)-1);
	ck_pr_fence_acquire();
	return r;
}

uint32_t
stock_latch_waiters(const struct stock_latch *l)
{
	return l == NULL ? 0 : ck_pr_load_32(&l->nwaiters);
}
