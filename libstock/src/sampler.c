/*
 * Sampler (stock/sampler.h): at most N admitted events per window.
 *
 * Every admission is decided by one fetch-and-add on `admitted` against the
 * count of the window current at that instant: a window's count begins at
 * the store that resets it to 0, so no window admits more than `limit`.
 * The count starts at `limit` ("full") so that events racing the opening of
 * the very first window are refused rather than admitted against no window.
 *
 * A window is opened in three steps: a CAS moves window_start to a
 * "switching" marker (exactly one thread wins it), the winner resets the
 * count, then it publishes the new start. While the marker is up nobody else
 * can open a window, so a winner that is preempted between its CAS and its
 * reset only makes the previous window last a little longer; its reset can
 * never land in, and wipe the count of, a later window. (Resetting after
 * publishing the start would let a stalled thread reset a window another
 * thread opened meanwhile, and that window would admit up to 2 * limit.)
 *
 * `dropped` is only ever added to, or taken whole by an admitted event with
 * a CAS loop, so every refused event is reported exactly once.
 */
#include <ck_pr.h>

#include "stock/sampler.h"

/* window_start values that are not times: none opened yet, one being opened. */
#define STOCK__SAMPLER_NONE 0
#define STOCK__SAMPLER_SWITCHING UINT64_MAX

int
stock_sampler_init(struct stock_sampler *s, uint64_t limit, uint64_t window_ns)
{
	if (s == NULL || window_ns == 0)
		return STOCK_EINVAL;
	s->limit = limit;
	s->window_ns = window_ns;
	s->window_start = STOCK__SAMPLER_NONE;
	s->admitted = limit;
	s->dropped = 0;
	ck_pr_fence_store();
	return 0;
}

bool
stock_sampler_admit(struct stock_sampler *s, uint64_t now_ns, uint64_t *dropped)
{
	uint64_t start, d;

	/* Keep clock values clear of the two markers. */
	if (now_ns == STOCK__SAMPLER_NONE)
		now_ns = 1;
	else if (now_ns == STOCK__SAMPLER_SWITCHING)
		now_ns--;
	/* A new window when none was opened or the current one is over; a
	   clock value older than the window (another thread's newer now) is in
	   it, and so is every event while a window is being opened. */
	start = ck_pr_load_64(&s->window_start);
	if (start == STOCK__SAMPLER_NONE ||
	    (start != STOCK__SAMPLER_SWITCHING && now_ns > start && now_ns - start >= s->window_ns)) {
		if (ck_pr_cas_64(&s->window_start, start, STOCK__SAMPLER_SWITCHING)) {
			ck_pr_store_64(&s->admitted, 0);
			ck_pr_fence_store();
			ck_pr_store_64(&s->window_start, now_ns);
		}
	}
	if (ck_pr_faa_64(&s->admitted, 1) >= s->limit) {
		ck_pr_inc_64(&s->dropped);
		return false;
	}
	if (dropped != NULL) {
		do
			d = ck_pr_load_64(&s->dropped);
		while (d != 0 && !ck_pr_cas_64(&s->dropped, d, 0));
		*dropped = d;
	}
	return true;
}

uint64_t
stock_sampler_dropped(const struct stock_sampler *s)
{
	return s == NULL ? 0 : ck_pr_load_64(&s->dropped);
}
