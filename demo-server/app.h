/*
 * demo-server — the application state every subsystem shares.
 *
 * One `struct app` lives for the whole process: configuration, the store,
 * the in-memory counters of every strategy, the gate (a libstock breaker that
 * /Util/Close isolates), the store breaker, the Db/Buy bulkhead (permits) and
 * the telemetry counters. Subsystems: config.c (flags/env), http.c (JSON
 * replies, bodies, auth), routes.c (the route table and handlers),
 * metrics.c (Prometheus text), main.c (start-up, signals, drain).
 */
#ifndef DEMO_APP_H
#define DEMO_APP_H

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>

#include <civetweb.h>
#include <stock.h>

#include "batch.h"
#include "bus.h"
#include "lease.h"
#include "store.h"

#define APP_VERSION "0.1.0"

/* ---- configuration (config.c) ---------------------------------------- */

struct app_config {
	char listen[128];        /* --listen, STOCK_LISTEN: host:port */
	char data_dir[PATH_MAX]; /* --data-dir, STOCK_DATA_DIR */
	unsigned threads;        /* --threads, STOCK_THREADS: civetweb workers */
	unsigned gate_wait_ms;   /* --gate-wait-ms, STOCK_GATE_WAIT_MS */
	unsigned max_body;       /* --max-body, bytes */
	uint64_t max_quantity;   /* --max-quantity */
	unsigned db_inflight;    /* --db-inflight: durable buys in flight (bulkhead) */
	uint64_t initial_stock;  /* --initial-stock: seed for every catalog item */
	bool repair;             /* --repair */
	/* multi-instance (docs/server.md "Several instances") */
	char mongo_uri[512];     /* --mongo, STOCK_MONGO_URI: empty = embedded store */
	char mongo_db[64];       /* --mongo-db (SuperStockStore) */
	char mongo_one[64];      /* --mongo-one-collection (OneStock) */
	char mongo_many[64];     /* --mongo-many-collection (ManyStock) */
	unsigned mongo_timeout_ms; /* --mongo-timeout-ms (2000) */
	char redis_url[256];     /* --redis, STOCK_REDIS_URL: empty = no bus */
	char one_channel[64];    /* --one-channel (OneStockUpdateEvent) */
	char many_channel[64];   /* --many-channel (MultiStockUpdateEvent) */
	char host_id[STORE_HOST_MAX + 1]; /* --host-id, STOCK_HOST_ID (hostname) */
	uint64_t lease_block;    /* --lease-block (1000) */
	unsigned lease_ms;       /* --lease-ms (10000) */
	unsigned record_ms;      /* --record-ms (100) */
	unsigned poll_ms;        /* --poll-ms (1000) */
};

/* Returns 0 to run, 1 to exit 0 (help/version printed), -1 on a bad flag. */
int app_config_parse(struct app_config *cfg, int argc, char **argv);
void app_config_usage(FILE *out, const char *argv0);

/* ---- catalog -------------------------------------------------------------- */

/* OneStock: one ticket, one counter per strategy (the seed's four APIs). */
enum app_one {
	APP_ONE_DB,     /* durable: acknowledged after group commit */
	APP_ONE_ATOMIC, /* in-memory caches, journaled write-behind */
	APP_ONE_SIGNAL,
	APP_ONE_LOCK,
	APP_ONE_COUNT
};

struct app_one_item {
	const char *name;      /* "Db", "Atomic", "Signal", "Lock" (the URL part) */
	const char *doc_id;    /* the store document: "OneStock:Atomic", ... */
	struct stock_counter counter;
};

/* ---- telemetry (metrics.c) ------------------------------------------------ */

#define APP_LAT_BUCKETS 12 /* upper bounds in metrics.c */
#define APP_STATUS_SLOTS 8 /* 200 400 401 404 405 409 413 503 (+ other → 500 slot) */

struct app_route_stats {
	struct stock_stat status[APP_STATUS_SLOTS + 1];
	struct stock_stat latency[APP_LAT_BUCKETS + 1]; /* last: +Inf */
	struct stock_stat latency_sum_us;
};

/* ---- run-time tunables (published as an RCU snapshot) -------------------- */

/* Immutable once published; /api/v1/Admin/Config publishes a new copy. */
struct app_tunables {
	unsigned gate_wait_ms;  /* starts as --gate-wait-ms */
	uint64_t max_quantity;  /* starts as --max-quantity */
};

/* ---- the application ------------------------------------------------------- */

struct app {
	struct app_config cfg;
	store_t *store;
	lease_mgr_t *leases;            /* --mongo only: leases, peek caches, poll */
	bus_t *bus;                     /* --redis only */
	struct take_batcher db_batch;   /* --mongo: group commit of Db buys */
	struct app_one_item one[APP_ONE_COUNT];
	stock_table_t *many;            /* ManyStock: SKU -> atomic counter */
	struct stock_breaker gate;      /* isolated by /Util/Close */
	struct stock_breaker store_breaker; /* trips on store failures */
	struct stock_permits db_inflight;
	struct stock_snapshot tunables; /* struct app_tunables, read lock-free per request */
	char token[65];                 /* admin bearer token */
	int ready;                      /* ck_pr: recovery finished, serving */
	struct app_route_stats *route_stats; /* one per route (routes.c) */
	struct stock_stat buys_ok[APP_ONE_COUNT + 1];      /* last: ManyStock */
	struct stock_stat buys_soldout[APP_ONE_COUNT + 1];
	struct stock_stat store_rejects;
};

/* A copy of the current tunables (one lock-free read section). */
void app_tunables_get(struct app *app, struct app_tunables *out);

/* routes.c */
int app_routes_install(struct app *app, struct mg_context *ctx);
size_t app_route_count(void);
const char *app_route_name(size_t i);

/* metrics.c */
int app_metrics_init(struct app *app);
void app_metrics_destroy(struct app *app);
void app_metrics_observe(struct app *app, size_t route, int status, uint64_t micros);
size_t app_metrics_render(struct app *app, char *buf, size_t cap);

/* http.c */
struct mg_connection;
int http_reply(struct mg_connection *c, int status, const char *extra_headers,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int http_error(struct mg_connection *c, int status, const char *code, const char *message);
int http_send(struct mg_connection *c, int status, const char *type, const char *extra_headers,
    const char *body, size_t len);
int http_read_body(struct mg_connection *c, size_t max, char *buf, size_t *len);
bool http_token_ok(const struct app *app, const struct mg_connection *c);
int http_load_token(struct app *app, char *err, size_t errlen);

/* log (main.c): one line per event to stderr, flood-suppressed per call site. */
void app_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* DEMO_APP_H */
