/*
 * Request metrics and the /metrics page (http/metrics.h).
 *
 * The page is written into a growable buffer (common/buf.h): however many
 * routes, SKUs or families there are, it is never cut short; if memory runs
 * out the scrape answers 503 instead of a partial page. Every family has
 * HELP and TYPE (tests/server/http_test.sh runs promtool check metrics).
 */
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "common/util.h"
#include "common/assert.h"
#include "http/routes.h"

static const int status_codes[METRICS_STATUS_SLOTS] = { 200, 201, 400, 401, 402, 404, 405, 409, 413,
	422, 501, 503 };
static const uint64_t lat_bounds_us[METRICS_LAT_BUCKETS] = { 50, 100, 250, 500, 1000, 2500, 5000,
	10000, 25000, 100000, 500000, 2500000 };

int
metrics_init(struct http_metrics *m, size_t nroutes)
{
	/* Zeroed memory is STOCK_STAT_INITIALIZER's state: no stock_stat_init. */
	m->routes = util_cache_zalloc(sizeof *m->routes * nroutes);
	if (m->routes == NULL)
		return STOCK_ENOMEM;
	m->nroutes = nroutes;
	return 0;
}

void
metrics_destroy(struct http_metrics *m)
{
	free(m->routes);
	m->routes = NULL;
}

void
metrics_observe(struct http_metrics *m, size_t route, int status, uint64_t micros)
{
	struct route_stats *rs;
	int s = METRICS_STATUS_SLOTS, b = 0;

	ASSERT(route < m->nroutes);
	rs = &m->routes[route];
	for (int i = 0; i < METRICS_STATUS_SLOTS; i++)
		if (status_codes[i] == status)
			s = i;
	while (b < METRICS_LAT_BUCKETS && micros > lat_bounds_us[b])
		b++;
	stock_stat_inc(&rs->status[s]);
	stock_stat_inc(&rs->latency[b]);
	stock_stat_add(&rs->latency_sum_us, micros);
}

void
metrics_buy(struct http_metrics *m, int slot, bool ok)
{
	ASSERT(slot >= 0 && slot < METRICS_BUY_SLOTS);
	stock_stat_inc(ok ? &m->buys_ok[slot] : &m->buys_soldout[slot]);
}

static void
render_requests(struct http_metrics *m, struct buf *out)
{
	char labels[160];

	prom_family(out, "stock_http_requests_total", "counter", "HTTP requests by route and status.");
	for (size_t r = 0; r < m->nroutes; r++)
		for (int i = 0; i <= METRICS_STATUS_SLOTS; i++) {
			uint64_t v = stock_stat_sum(&m->routes[r].status[i]);
			if (v == 0)
				continue;
			snprintf(labels, sizeof labels, "route=\"%s\",status=\"%d\"", routes_name(r),
			    i < METRICS_STATUS_SLOTS ? status_codes[i] : 500);
			prom_u64(out, "stock_http_requests_total", labels, v);
		}
	prom_family(out, "stock_http_request_duration_seconds", "histogram",
	    "Handler latency by route.");
	for (size_t r = 0; r < m->nroutes; r++) {
		struct route_stats *rs = &m->routes[r];
		uint64_t cum = 0;

		for (int b = 0; b <= METRICS_LAT_BUCKETS; b++) {
			cum += stock_stat_sum(&rs->latency[b]);
			if (b < METRICS_LAT_BUCKETS)
				snprintf(labels, sizeof labels, "route=\"%s\",le=\"%g\"", routes_name(r),
				    lat_bounds_us[b] / 1e6);
			else
				snprintf(labels, sizeof labels, "route=\"%s\",le=\"+Inf\"", routes_name(r));
			prom_u64(out, "stock_http_request_duration_seconds_bucket", labels, cum);
		}
		snprintf(labels, sizeof labels, "route=\"%s\"", routes_name(r));
		prom_f64(out, "stock_http_request_duration_seconds_sum", labels,
		    stock_stat_sum(&rs->latency_sum_us) / 1e6);
		prom_u64(out, "stock_http_request_duration_seconds_count", labels, cum);
	}
}

void
metrics_render(struct app *app, struct buf *out)
{
	struct http_metrics *m = &app->metrics;
	char labels[96];

	render_requests(m, out);
	prom_family(out, "stock_buys_total", "counter", "Buy outcomes by strategy.");
	for (int i = 0; i < METRICS_BUY_SLOTS; i++) {
		const char *s = i < CATALOG_ONE_COUNT ? catalog_one[i].label : "many_atomic";

		snprintf(labels, sizeof labels, "strategy=\"%s\",result=\"ok\"", s);
		prom_u64(out, "stock_buys_total", labels, stock_stat_sum(&m->buys_ok[i]));
		snprintf(labels, sizeof labels, "strategy=\"%s\",result=\"sold_out\"", s);
		prom_u64(out, "stock_buys_total", labels, stock_stat_sum(&m->buys_soldout[i]));
	}
	prom_gauge_u64(out, "stock_gate_state", "Gate: 0 closed (buyers pass), 1 open, 2 half-open.",
	    (uint64_t)stock_breaker_state(&app->gate));
	prom_gauge_u64(out, "stock_ready", "1 once recovery finished and the server serves.",
	    stock_latch_is_set(&app->ready) ? 1 : 0);
	inventory_metrics(app->inv, out);
	if (app->payment != NULL)
		payment_metrics(app->payment, out);
}
