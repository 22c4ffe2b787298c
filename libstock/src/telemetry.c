/*
 * Telemetry: striped counters and monotonic ID generators.
 *
 * A stock_stat spreads one logical counter over STOCK_STAT_STRIPES
 * cache-line-sized stripes. The hot path (stock_stat_add, inline in the
 * header) adds to the stripe picked by the calling thread's kernel thread id,
 * cached in a thread-local; using the tid rather than a global "next slot"
 * counter keeps the library free of global mutable state and gives every
 * translation unit the same answer. Reading walks the stripes; resetting
 * swaps each stripe to zero with a CAS loop so no concurrent add is lost or
 * counted twice (ck_pr_fas_64 is avoided: its generic fallback under the TSan
 * build is a plain read, see internal.h).
 *
 * A stock_idgen is a single 64-bit word advanced by fetch-and-add; blocks
 * are reserved with a CAS loop so that a reservation that would wrap the ID
 * space can be refused without changing anything.
 */
#include <sys/syscall.h>
#include <unistd.h>

#include "stock/telemetry.h"
#include "internal.h"

/* ---- striped counter ---------------------------------------------------- */

int
stock_stat_init(struct stock_stat *s)
{
	unsigned int i;

	if (s == NULL)
		return STOCK_EINVAL;
	for (i = 0; i < STOCK_STAT_STRIPES; i++)
		ck_pr_store_64(&s->stripe[i].value, 0);
	return 0;
}

void
stock_stat_destroy(struct stock_stat *s)
{
	(void)s;
}

uint32_t
stock_stat_thread_slot(void)
{
	long tid = syscall(SYS_gettid);

	if (tid < 0)
		tid = 0;
	return (uint32_t)((unsigned long)tid % STOCK_STAT_STRIPES) + 1;
}

uint64_t
stock_stat_sum(const struct stock_stat *s)
{
	uint64_t sum = 0;
	unsigned int i;

	if (s == NULL)
		return 0;
	for (i = 0; i < STOCK_STAT_STRIPES; i++)
		sum += ck_pr_load_64(&s->stripe[i].value);
	return sum;
}

uint64_t
stock_stat_reset(struct stock_stat *s)
{
	uint64_t sum = 0, v;
	unsigned int i;

	if (s == NULL)
		return 0;
	for (i = 0; i < STOCK_STAT_STRIPES; i++) {
		v = ck_pr_load_64(&s->stripe[i].value);
		while (!ck_pr_cas_64_value(&s->stripe[i].value, v, 0, &v))
			ck_pr_stall();
		sum += v;
	}
	return sum;
}

/* ---- monotonic IDs ------------------------------------------------------ */

int
stock_idgen_init(struct stock_idgen *g, uint64_t start)
{
	if (g == NULL)
		return STOCK_EINVAL;
	if (start > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	ck_pr_store_64(&g->next, start);
	return 0;
}

void
stock_idgen_destroy(struct stock_idgen *g)
{
	(void)g;
}

int
stock_idgen_next_block(struct stock_idgen *g, uint64_t n, uint64_t *first)
{
	uint64_t cur;

	if (g == NULL || first == NULL || n == 0)
		return STOCK_EINVAL;
	if (n > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	cur = ck_pr_load_64(&g->next);
	for (;;) {
		if (cur > UINT64_MAX - n)
			return STOCK_ERANGE;
		if (ck_pr_cas_64_value(&g->next, cur, cur + n, &cur))
			break;
		ck_pr_stall();
	}
	*first = cur;
	return 0;
}

uint64_t
stock_idgen_peek(const struct stock_idgen *g)
{
	return g == NULL ? 0 : ck_pr_load_64(&g->next);
}
