/*
 * demo-server — the state the HTTP side shares: one `struct app` for the
 * whole process, built by main.c.
 *
 * The stock itself is behind `inv`, the inventory seam (inventory/
 * inventory.h): handlers never know whether it is the embedded journal or
 * the MongoDB cluster. Everything else here is HTTP policy: the gate that
 * /Util/Close isolates (buyers wait at it, bounded), the run-time tunables
 * (an RCU snapshot read lock-free per request), the admin token, readiness
 * and the request metrics.
 */
#ifndef DEMO_APP_H
#define DEMO_APP_H

#include <stock.h>

#include "checkout/payment.h"
#include "config.h"
#include "http/metrics.h"
#include "inventory/inventory.h"

/* Immutable once published; /api/v1/Admin/Config publishes a new copy. */
struct app_tunables {
	uint64_t gate_wait_ms; /* starts as --gate-wait-ms */
	uint64_t max_quantity; /* starts as --max-quantity */
};

struct app {
	struct http_metrics metrics;    /* first: cache-line aligned members */
	struct app_config cfg;
	inventory_t *inv;
	struct stock_breaker gate;      /* isolated by /Util/Close */
	struct stock_snapshot tunables; /* struct app_tunables */
	struct stock_latch ready;       /* set once serving; cleared when draining */
	char token[65];                 /* admin bearer token */
	payment_t *payment;             /* --payment-url: Confirm charges first; else NULL */
};

/** app_tunables_init - publish the start-up tunables from cfg. 0 or STOCK_ENOMEM. */
int app_tunables_init(struct app *app);

/** app_tunables_get - a copy of the current tunables (one lock-free read section). */
void app_tunables_get(struct app *app, struct app_tunables *out);

/** app_tunables_set - publish @t as the new tunables (RCU). 0 or STOCK_ENOMEM. */
int app_tunables_set(struct app *app, const struct app_tunables *t);

#endif /* DEMO_APP_H */
