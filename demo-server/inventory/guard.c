/*
 * The durable path's guard (inventory.h): a permit bulkhead bounds the
 * durable writes in flight, and a breaker fails fast while the store keeps
 * failing. Shared by the embedded and the cluster inventory, so both answer
 * a failing store the same way.
 */
#include "inventory/inventory.h"

int
durable_guard_init(struct durable_guard *g, unsigned inflight)
{
	struct stock_breaker_config bc;

	/* 3 failed durable writes in a row open the breaker; it stays open
	   500 ms, doubling up to 10 s while probes keep failing. */
	stock_breaker_config_default(&bc);
	bc.failure_threshold = 3;
	bc.open_ns = 500ULL * 1000 * 1000;
	bc.max_open_ns = 10ULL * 1000 * 1000 * 1000;
	bc.backoff_mult = 2;
	if (stock_permits_init(&g->inflight, inflight) != 0)
		return STOCK_EINVAL;
	if (stock_breaker_init(&g->breaker, &bc) != 0) {
		stock_permits_destroy(&g->inflight);
		return STOCK_EINVAL;
	}
	stock_stat_init(&g->rejects);
	return 0;
}

void
durable_guard_destroy(struct durable_guard *g)
{
	stock_breaker_destroy(&g->breaker);
	stock_permits_destroy(&g->inflight);
}

int
durable_enter(struct durable_guard *g, struct durable_pass *p)
{
	if (stock_permits_try_acquire(&g->inflight, 1) != 0)
		return STOCK_EBUSY;
	if (stock_breaker_allow(&g->breaker, &p->tok) != 0) {
		stock_permits_release(&g->inflight, 1);
		return STOCK_EOPEN;
	}
	return 0;
}

void
durable_leave(struct durable_guard *g, struct durable_pass *p, bool store_failed)
{
	if (store_failed) {
		stock_breaker_failure(&g->breaker, p->tok);
		stock_stat_inc(&g->rejects);
	} else {
		stock_breaker_success(&g->breaker, p->tok);
	}
	stock_permits_release(&g->inflight, 1);
}

void
durable_guard_metrics(struct durable_guard *g, struct buf *out)
{
	struct stock_permits_stats ps;

	prom_gauge_u64(out, "stock_store_breaker_state",
	    "Store breaker: 0 closed (writes pass), 1 open, 2 half-open.",
	    (uint64_t)stock_breaker_state(&g->breaker));
	prom_counter_u64(out, "stock_store_rejects_total",
	    "Writes the store refused or failed (durable buys answered 503, write-behind records dropped).",
	    stock_stat_sum(&g->rejects));
	if (stock_permits_stats(&g->inflight, &ps) == 0) {
		prom_gauge_u64(out, "stock_db_inflight", "Durable buys in flight.", ps.in_use);
		prom_gauge_u64(out, "stock_db_inflight_peak", "Most durable buys ever in flight at once.",
		    ps.peak);
	}
}
