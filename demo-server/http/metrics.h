/*
 * Request metrics and the /metrics page (Prometheus text format, lint-clean:
 * every family has HELP and TYPE).
 *
 * Hot-path counts are libstock striped counters (stock_stat): a request adds
 * to its own thread's stripe and only a scrape sums them. Per route:
 * requests by status and a latency histogram; per strategy: buys ok / sold
 * out. The inventory adds its own families (store, MongoDB, leases, bus).
 */
#ifndef DEMO_HTTP_METRICS_H
#define DEMO_HTTP_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stock.h>

#include "common/buf.h"
#include "inventory/catalog.h"

#define METRICS_LAT_BUCKETS 12  /* upper bounds in metrics.c, then +Inf */
#define METRICS_STATUS_SLOTS 12 /* 200 201 400 401 402 404 405 409 413 422 501 503, then 500 (any other) */
#define METRICS_BUY_SLOTS (CATALOG_ONE_COUNT + 1) /* the OneStock items, then ManyStock */

struct route_stats {
	struct stock_stat status[METRICS_STATUS_SLOTS + 1];
	struct stock_stat latency[METRICS_LAT_BUCKETS + 1];
	struct stock_stat latency_sum_us;
};

struct http_metrics {
	struct stock_stat buys_ok[METRICS_BUY_SLOTS];
	struct stock_stat buys_soldout[METRICS_BUY_SLOTS];
	struct route_stats *routes; /* one per route name, plus "unmatched" */
	size_t nroutes;
};

struct app;

/**
 * metrics_init - allocate per-route stats for @nroutes names; @m starts
 * zeroed (struct app is static). 0 or STOCK_ENOMEM.
 */
int metrics_init(struct http_metrics *m, size_t nroutes);

/** metrics_destroy - free what metrics_init allocated. */
void metrics_destroy(struct http_metrics *m);

/** metrics_observe - count one answered request of route @route. Lock-free. */
void metrics_observe(struct http_metrics *m, size_t route, int status, uint64_t micros);

/** metrics_buy - count one buy outcome under slot @slot (0 ok, else sold out). */
void metrics_buy(struct http_metrics *m, int slot, bool ok);

/** metrics_render - the whole /metrics page into @out. */
void metrics_render(struct app *app, struct buf *out);

#endif /* DEMO_HTTP_METRICS_H */
