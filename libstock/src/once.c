/*
 * One-time initialisation with retry on failure (stock/once.h).
 *
 * `state` is NOT_DONE, RUNNING or DONE, changed only by CAS. A caller that
 * CASes NOT_DONE -> RUNNING owns the run; when fn returns it CASes RUNNING
 * -> DONE or back to NOT_DONE (a full barrier that also publishes fn's
 * writes) and, if anybody sleeps, bumps the event count. DONE is final.
 *
 * Sleeping: a caller that finds RUNNING announces itself in `nwaiters` (a
 * full barrier), samples the event count, re-reads `state`, and sleeps on
 * the event count only while the sample is current and the state is still
 * RUNNING. The runner's CAS comes before its read of `nwaiters`, so either
 * the sleeper sees the run ended or the runner sees the sleeper (Dekker).
 * Every sleeper wakes, re-reads the state and either returns (DONE) or races
 * the others to run fn again (NOT_DONE).
 *
 * TSan: decisions are taken on `state`, read through ck_pr after waking, so
 * no happens-before edge depends on libck's uninstrumented futex slow path.
 */
#include "stock/once.h"
#include "internal.h"

/* The public struct stores the event count as a plain word; it has struct
 * ck_ec32's layout (the header does not include ck_ec.h). */
#define STOCK__ONCE_EC(o) ((struct ck_ec32 *)(void *)&(o)->ec)
_Static_assert(sizeof(struct ck_ec32) == sizeof(uint32_t), "ck_ec32 is one 32-bit word");

enum {
	STOCK__ONCE_NOT_DONE = 0,
	STOCK__ONCE_RUNNING = 1,
	STOCK__ONCE_DONE = 2
};

int
stock_once_init(struct stock_once *o)
{
	if (o == NULL)
		return STOCK_EINVAL;
	o->state = STOCK__ONCE_NOT_DONE;
	o->nwaiters = 0;
	ck_ec32_init(STOCK__ONCE_EC(o), 0);
	ck_pr_fence_store();
	return 0;
}

/* Sleeps until the run in progress (if still in progress) ends. */
static void
stock__once_wait(struct stock_once *o)
{
	uint32_t seq;

	ck_pr_faa_32(&o->nwaiters, 1);
	for (;;) {
		seq = ck_ec32_value(STOCK__ONCE_EC(o));
		if (ck_pr_load_32(&o->state) != STOCK__ONCE_RUNNING)
			break;
		stock__ec32_wait(STOCK__ONCE_EC(o), seq, NULL);
	}
	ck_pr_faa_32(&o->nwaiters, (uint32_t)-1);
}

int
stock_once_run(struct stock_once *o, int (*fn)(void *arg), void *arg)
{
	uint32_t s;
	int r;

	if (o == NULL || fn == NULL)
		return STOCK_EINVAL;
	/* Fast path: one acquire load once done. */
	s = ck_pr_load_32(&o->state);
	ck_pr_fence_acquire();
	if (STOCK_LIKELY(s == STOCK__ONCE_DONE))
		return 0;

	for (;;) {
		if (s == STOCK__ONCE_DONE) {
			ck_pr_fence_acquire();
			return 0;
		}
		if (s == STOCK__ONCE_RUNNING) {
			stock__once_wait(o);
		} else if (ck_pr_cas_32(&o->state, STOCK__ONCE_NOT_DONE, STOCK__ONCE_RUNNING)) {
			r = fn(arg);
			/* Full barrier: publishes fn's writes, then read nwaiters. */
			ck_pr_cas_32(&o->state, STOCK__ONCE_RUNNING,
			    r == 0 ? STOCK__ONCE_DONE : STOCK__ONCE_NOT_DONE);
			if (ck_pr_load_32(&o->nwaiters) != 0)
				ck_ec32_inc(STOCK__ONCE_EC(o), &stock__ec_mp);
			return r;
		}
		s = ck_pr_load_32(&o->state);
	}
}

bool
stock_once_done(const struct stock_once *o)
{
	uint32_t s;

	if (o == NULL)
		return false;
	s = ck_pr_load_32(&o->state);
	ck_pr_fence_acquire();
	return s == STOCK__ONCE_DONE;
}
