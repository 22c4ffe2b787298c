/*
 * Metrics in the Prometheus text format (GET /metrics).
 *
 * Hot-path counts are libstock striped counters (stock_stat): a request adds
 * to its own thread's stripe, and only a scrape sums them. Per route: requests
 * by status and a latency histogram; per strategy: buys ok / sold out; plus
 * the store's group-commit statistics, the gate and store breakers, and the
 * durable-buy bulkhead.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"

static const int status_codes[APP_STATUS_SLOTS] = { 200, 400, 401, 404, 405, 409, 413, 503 };
static const uint64_t lat_bounds_us[APP_LAT_BUCKETS] = { 50, 100, 250, 500, 1000, 2500, 5000,
	10000, 25000, 100000, 500000, 2500000 };
static const char *const strategy_labels[APP_ONE_COUNT + 1] = { "db", "atomic", "signal", "lock",
	"many_atomic" };

int
app_metrics_init(struct app *app)
{
	app->route_stats = aligned_alloc(STOCK_CACHELINE,
	    ((sizeof *app->route_stats * app_route_count()) + STOCK_CACHELINE - 1) /
	    STOCK_CACHELINE * STOCK_CACHELINE);
	if (app->route_stats == NULL)
		return -1;
	for (size_t r = 0; r < app_route_count(); r++) {
		struct app_route_stats *rs = &app->route_stats[r];
		for (int i = 0; i <= APP_STATUS_SLOTS; i++)
			stock_stat_init(&rs->status[i]);
		for (int i = 0; i <= APP_LAT_BUCKETS; i++)
			stock_stat_init(&rs->latency[i]);
		stock_stat_init(&rs->latency_sum_us);
	}
	for (int i = 0; i <= APP_ONE_COUNT; i++) {
		stock_stat_init(&app->buys_ok[i]);
		stock_stat_init(&app->buys_soldout[i]);
	}
	stock_stat_init(&app->store_rejects);
	return 0;
}

void
app_metrics_destroy(struct app *app)
{
	free(app->route_stats);
	app->route_stats = NULL;
}

void
app_metrics_observe(struct app *app, size_t route, int status, uint64_t micros)
{
	struct app_route_stats *rs = &app->route_stats[route];
	int s = APP_STATUS_SLOTS, b = 0;

	for (int i = 0; i < APP_STATUS_SLOTS; i++)
		if (status_codes[i] == status)
			s = i;
	while (b < APP_LAT_BUCKETS && micros > lat_bounds_us[b])
		b++;
	stock_stat_inc(&rs->status[s]);
	stock_stat_inc(&rs->latency[b]);
	stock_stat_add(&rs->latency_sum_us, micros);
}

struct out {
	char *buf;
	size_t cap, len;
};

static void __attribute__((format(printf, 2, 3)))
emit(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->len >= o->cap)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len = (size_t)n < o->cap - o->len ? o->len + (size_t)n : o->cap;
}

size_t
app_metrics_render(struct app *app, char *buf, size_t cap)
{
	struct out o = { buf, cap, 0 };
	struct store_stats ss;
	struct stock_breaker_stats bs;
	struct stock_permits_stats ps;

	emit(&o, "# HELP stock_http_requests_total HTTP requests by route and status.\n"
		 "# TYPE stock_http_requests_total counter\n");
	for (size_t r = 0; r < app_route_count(); r++)
		for (int i = 0; i <= APP_STATUS_SLOTS; i++) {
			uint64_t v = stock_stat_sum(&app->route_stats[r].status[i]);
			if (v)
				emit(&o, "stock_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
				    app_route_name(r), i < APP_STATUS_SLOTS ? status_codes[i] : 500,
				    (unsigned long long)v);
		}
	emit(&o, "# HELP stock_http_request_duration_seconds Handler latency.\n"
		 "# TYPE stock_http_request_duration_seconds histogram\n");
	for (size_t r = 0; r < app_route_count(); r++) {
		struct app_route_stats *rs = &app->route_stats[r];
		uint64_t cum = 0;
		for (int b = 0; b <= APP_LAT_BUCKETS; b++) {
			cum += stock_stat_sum(&rs->latency[b]);
			if (b < APP_LAT_BUCKETS)
				emit(&o, "stock_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
				    app_route_name(r), lat_bounds_us[b] / 1e6, (unsigned long long)cum);
			else
				emit(&o, "stock_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
				    app_route_name(r), (unsigned long long)cum);
		}
		emit(&o, "stock_http_request_duration_seconds_sum{route=\"%s\"} %g\n"
			 "stock_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
		    app_route_name(r), stock_stat_sum(&rs->latency_sum_us) / 1e6, app_route_name(r),
		    (unsigned long long)cum);
	}
	emit(&o, "# HELP stock_buys_total Buy outcomes by strategy.\n# TYPE stock_buys_total counter\n");
	for (int i = 0; i <= APP_ONE_COUNT; i++)
		emit(&o, "stock_buys_total{strategy=\"%s\",result=\"ok\"} %llu\n"
			 "stock_buys_total{strategy=\"%s\",result=\"sold_out\"} %llu\n",
		    strategy_labels[i], (unsigned long long)stock_stat_sum(&app->buys_ok[i]),
		    strategy_labels[i], (unsigned long long)stock_stat_sum(&app->buys_soldout[i]));
	if (store_stats(app->store, &ss) == 0) {
		emit(&o, "# TYPE stock_store_fsyncs_total counter\nstock_store_fsyncs_total %llu\n"
			 "# TYPE stock_store_fsync_failures_total counter\nstock_store_fsync_failures_total %llu\n"
			 "# TYPE stock_store_records_total counter\nstock_store_records_total %llu\n"
			 "# TYPE stock_store_queue_depth gauge\nstock_store_queue_depth %llu\n"
			 "# TYPE stock_store_rejects_total counter\nstock_store_rejects_total %llu\n",
		    (unsigned long long)ss.fsyncs, (unsigned long long)ss.fsync_failures,
		    (unsigned long long)ss.records, (unsigned long long)ss.queue_depth,
		    (unsigned long long)stock_stat_sum(&app->store_rejects));
		emit(&o, "# HELP stock_store_batch_size Records per group commit (fdatasync).\n"
			 "# TYPE stock_store_batch_size histogram\n");
		uint64_t cum = 0;
		for (int i = 0; i < STORE_BATCH_HIST; i++) {
			cum += ss.batch_hist[i];
			if (i < STORE_BATCH_HIST - 1)
				emit(&o, "stock_store_batch_size_bucket{le=\"%d\"} %llu\n", (2 << i) - 1,
				    (unsigned long long)cum);
		}
		emit(&o, "stock_store_batch_size_bucket{le=\"+Inf\"} %llu\nstock_store_batch_size_count %llu\n",
		    (unsigned long long)cum, (unsigned long long)ss.batches);
	}
	emit(&o, "# HELP stock_gate_state 0 closed (buyers pass), 1 open, 2 half-open.\n"
		 "# TYPE stock_gate_state gauge\nstock_gate_state %d\n",
	    (int)stock_breaker_state(&app->gate));
	if (stock_breaker_stats(&app->store_breaker, &bs) == 0)
		emit(&o, "# TYPE stock_store_breaker_state gauge\nstock_store_breaker_state %d\n",
		    (int)stock_breaker_state(&app->store_breaker));
	if (stock_permits_stats(&app->db_inflight, &ps) == 0)
		emit(&o, "# TYPE stock_db_inflight gauge\nstock_db_inflight %llu\n"
			 "# TYPE stock_db_inflight_peak gauge\nstock_db_inflight_peak %llu\n",
		    (unsigned long long)ps.in_use, (unsigned long long)ps.peak);
	if (app->leases != NULL) {
		struct lease_stats ls;
		lease_stats(app->leases, &ls);
		emit(&o, "# HELP stock_lease_ops_total Lease protocol round trips that applied, by kind.\n"
			 "# TYPE stock_lease_ops_total counter\n"
			 "stock_lease_ops_total{op=\"grant\"} %llu\nstock_lease_ops_total{op=\"record\"} %llu\n"
			 "stock_lease_ops_total{op=\"return\"} %llu\nstock_lease_ops_total{op=\"reclaim\"} %llu\n"
			 "stock_lease_ops_total{op=\"settle\"} %llu\n"
			 "# TYPE stock_lease_units_total counter\n"
			 "stock_lease_units_total{op=\"grant\"} %llu\nstock_lease_units_total{op=\"return\"} %llu\n"
			 "# TYPE stock_lease_failures_total counter\nstock_lease_failures_total %llu\n"
			 "# TYPE stock_lease_polls_total counter\nstock_lease_polls_total %llu\n"
			 "# TYPE stock_peer_events_applied_total counter\nstock_peer_events_applied_total %llu\n",
		    (unsigned long long)ls.grants, (unsigned long long)ls.records,
		    (unsigned long long)ls.returns, (unsigned long long)ls.reclaims,
		    (unsigned long long)ls.settles, (unsigned long long)ls.grant_units,
		    (unsigned long long)ls.return_units, (unsigned long long)ls.failures,
		    (unsigned long long)ls.polls, (unsigned long long)ls.events_applied);
	}
	if (app->bus != NULL) {
		struct bus_stats b;
		bus_stats(app->bus, &b);
		emit(&o, "# HELP stock_bus_events_total Redis pub/sub stock events.\n"
			 "# TYPE stock_bus_events_total counter\n"
			 "stock_bus_events_total{dir=\"published\"} %llu\nstock_bus_events_total{dir=\"coalesced\"} %llu\n"
			 "stock_bus_events_total{dir=\"received\"} %llu\nstock_bus_events_total{dir=\"echo\"} %llu\n"
			 "stock_bus_events_total{dir=\"malformed\"} %llu\n"
			 "# TYPE stock_bus_reconnects_total counter\nstock_bus_reconnects_total %llu\n"
			 "# TYPE stock_bus_connected gauge\nstock_bus_connected %d\n",
		    (unsigned long long)b.published, (unsigned long long)b.coalesced,
		    (unsigned long long)b.received, (unsigned long long)b.echoes,
		    (unsigned long long)b.malformed, (unsigned long long)b.reconnects, b.connected ? 1 : 0);
	}
	return o.len;
}
