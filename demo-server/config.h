/*
 * Configuration: one table (config.c) of every knob — flag, environment
 * variable, default, bounds, help — drives parsing, the environment,
 * --help and the flags table of docs/server.md (--help-markdown prints it).
 * Precedence: default, then environment, then flag. Values are validated
 * once, here: the rest of the server trusts them.
 */
#ifndef DEMO_CONFIG_H
#define DEMO_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/doc.h"

#define APP_VERSION "0.2.0"

struct app_config {
	char listen[128];         /* host:port */
	char data_dir[PATH_MAX];  /* embedded journal; the ledger in cluster mode */
	uint64_t threads;         /* civetweb workers; 0: sized at start (http/server.c) */
	uint64_t request_timeout_ms; /* first request's headers, and bodies */
	uint64_t idle_timeout_ms; /* keep-alive wait for the next request */
	uint64_t handover_ms;     /* Connection: close after this when workers run out; 0: never */
	uint64_t defer_accept_s;  /* TCP_DEFER_ACCEPT; 0: off */
	uint64_t worker_nice;     /* nice of the HTTP workers (the acceptor stays at 0) */
	uint64_t gate_wait_ms;    /* buyers wait this long at a closed gate */
	uint64_t max_body;        /* bytes */
	uint64_t max_quantity;    /* per buy */
	uint64_t db_inflight;     /* durable buys in flight (bulkhead); 0: config_size */
	uint64_t initial_stock;   /* each catalog item on first start */
	bool repair;              /* start past a corrupt journal middle */
	char mongo_uri[512];      /* empty: embedded mode */
	char mongo_db[64];
	char mongo_one[64];
	char mongo_many[64];
	uint64_t mongo_timeout_ms;
	char redis_url[256];      /* empty: no bus */
	char one_channel[64];
	char many_channel[64];
	char host_id[HOST_ID_MAX + 1];
	uint64_t lease_block;
	uint64_t lease_ms;
	uint64_t record_ms;
	uint64_t poll_ms;
	uint64_t lease_waiters;   /* per SKU (bulkhead); 0: config_size */
	uint64_t hold_ttl_ms;     /* a hold's life when the request names none */
	uint64_t max_hold_ms;     /* longest ttl_ms a hold may ask for */
	uint64_t max_per_buyer;   /* units of one SKU per X-Buyer-Id; 0: no limit */
	uint64_t idem_ttl_s;      /* how long Idempotency-Key answers are kept */
	uint64_t hold_retain_s;   /* how long finished holds stay readable */
	char payment_url[256];    /* empty: Confirm needs no payment */
	uint64_t payment_timeout_ms;
};

/**
 * config_parse - defaults, then STOCK_* environment variables, then flags.
 * Returns 0 to run, 1 when --help / --version / --help-markdown printed and
 * the process should exit 0, -1 after printing why a value is bad (exit 2).
 */
int config_parse(struct app_config *cfg, int argc, char **argv);

/**
 * config_size - resolve the knobs whose default is a share of the @workers
 * HTTP workers (0 in the table): --db-inflight half of them, --lease-waiters
 * a quarter, each at least 4 (or all of them, if fewer), so one slow path
 * never holds every worker.
 */
void config_size(struct app_config *cfg, uint64_t workers);

#endif /* DEMO_CONFIG_H */
