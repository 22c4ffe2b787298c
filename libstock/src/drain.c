/*
 * Shutdown reference counting (stock/drain.h) on ck_pr and ck_ec.
 *
 * `word` holds the closed flag in bit 63 and the number of threads inside
 * in bits 0..62, and changes only by CAS: enter adds one if the flag is
 * clear, leave subtracts one, close sets the flag. Because the check and the
 * count are one word, an enter that commits before the close is counted (and
 * waited for) and one that comes after is refused; after the close the
 * count only goes down.
 *
 * Sleeping: a closer announces itself in `nwaiters` (a full barrier),
 * samples the event count, re-reads `word`, and sleeps on the event count
 * only while the sample is current and somebody is still inside. The leave
 * that takes the count of a closed drain to zero reads `nwaiters` after its
 * CAS (a full barrier) and bumps the event count when somebody waits: by the
 * Dekker argument either the closer's re-read sees zero or the leaver sees
 * the closer. Leaves before the close, and leaves that do not empty it,
 * never touch the event count.
 *
 * TSan: the closer's decision is taken on `word`, read through ck_pr after
 * waking, so no happens-before edge depends on libck's uninstrumented futex
 * slow path.
 */
#include "stock/drain.h"
#include "internal.h"

/* The public struct stores the event count as a plain word; it has struct
 * ck_ec32's layout (the header does not include ck_ec.h). */
#define STOCK__DRAIN_EC(d) ((struct ck_ec32 *)(void *)&(d)->ec)
_Static_assert(sizeof(struct ck_ec32) == sizeof(uint32_t), "ck_ec32 is one 32-bit word");

#define STOCK__DRAIN_CLOSED (1ULL << 63)
#define STOCK__DRAIN_COUNT(w) ((w) & ~STOCK__DRAIN_CLOSED)

int
stock_drain_init(struct stock_drain *d)
{
	if (d == NULL)
		return STOCK_EINVAL;
	d->word = 0;
	d->nwaiters = 0;
	ck_ec32_init(STOCK__DRAIN_EC(d), 0);
	ck_pr_fence_store();
	return 0;
}

void
stock_drain_destroy(struct stock_drain *d)
{
	(void)d;
}

int
stock_drain_enter(struct stock_drain *d)
{
	uint64_t w;

	if (d == NULL)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&d->word);
	for (;;) {
		if (w & STOCK__DRAIN_CLOSED)
			return STOCK_ECLOSED;
		if (w == ~STOCK__DRAIN_CLOSED)
			return STOCK_ERANGE;
		if (ck_pr_cas_64_value(&d->word, w, w + 1, &w))
			return 0;
		ck_pr_stall();
	}
}

void
stock_drain_leave(struct stock_drain *d)
{
	uint64_t w;

	if (d == NULL)
		return;
	w = ck_pr_load_64(&d->word);
	for (;;) {
		if (STOCK__DRAIN_COUNT(w) == 0)
			return; /* nobody inside: an unmatched leave is ignored */
		if (ck_pr_cas_64_value(&d->word, w, w - 1, &w))
			break;
		ck_pr_stall();
	}
	/* The last one out of a closed drain wakes the closer(s), if any. */
	if (w - 1 == STOCK__DRAIN_CLOSED && ck_pr_load_32(&d->nwaiters) != 0)
		ck_ec32_inc(STOCK__DRAIN_EC(d), &stock__ec_mp);
}

int
stock_drain_close(struct stock_drain *d, const struct timespec *deadline)
{
	uint64_t w;
	uint32_t seq;
	int r;

	if (d == NULL)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&d->word);
	while (!(w & STOCK__DRAIN_CLOSED) &&
	    !ck_pr_cas_64_value(&d->word, w, w | STOCK__DRAIN_CLOSED, &w))
		ck_pr_stall();
	/* Closed (by us or earlier): from now on the count only goes down. */
	if (STOCK__DRAIN_COUNT(ck_pr_load_64(&d->word)) == 0) {
		ck_pr_fence_acquire();
		return 0;
	}
	if (stock__deadline_passed(deadline))
		return STOCK_ETIMEDOUT;

	/* Announce ourselves (full barrier), then sample, re-check and sleep. */
	ck_pr_faa_32(&d->nwaiters, 1);
	for (;;) {
		seq = ck_ec32_value(STOCK__DRAIN_EC(d));
		if (STOCK__DRAIN_COUNT(ck_pr_load_64(&d->word)) == 0) {
			r = 0;
			break;
		}
		if (stock__deadline_passed(deadline)) {
			r = STOCK_ETIMEDOUT;
			break;
		}
		stock__ec32_wait(STOCK__DRAIN_EC(d), seq, deadline);
	}
	ck_pr_faa_32(&d->nwaiters, (uint32_t)-1);
	ck_pr_fence_acquire();
	return r;
}

uint64_t
stock_drain_inside(const struct stock_drain *d)
{
	return d == NULL ? 0 : STOCK__DRAIN_COUNT(ck_pr_load_64(&d->word));
}
