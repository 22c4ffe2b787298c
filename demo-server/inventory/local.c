/*
 * The embedded inventory (inventory.h, inventory_local_open): stock lives in
 * libstock counters, one per OneStock strategy plus a SKU table of atomic
 * counters for ManyStock, and the embedded BSON journal (store/) keeps the
 * durable copy. A durable buy (OneStock:Db) waits for the group commit; a
 * cache buy queues its new state for the next one (write-behind). Why every
 * record is safe to replay: docs/internals/embedded.md.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "common/assert.h"
#include "config.h"
#include "inventory/catalog.h"
#include "inventory/inventory.h"
#include "inventory/local.h"
#include "log.h"
#include "store/store.h"

int
local_lift(const struct local *l, int rc, struct stock_level *lv)
{
	if (rc == 0)
		lv->version += l->vbase;
	return rc;
}
#define lift local_lift

void
local_doc(struct sku_doc *d, const char *sku, const struct stock_level *lv)
{
	memset(d, 0, sizeof *d);
	snprintf(d->sku, sizeof d->sku, "%s", sku);
	d->stock = lv->remaining;
	d->held = lv->held;
	d->sold = lv->sold;
	d->version = lv->version;
}

struct stock_counter *
local_counter(struct local *l, const char *sku)
{
	const struct catalog_item *it = catalog_one_find(sku);

	if (it != NULL)
		return &l->one[it - catalog_one];
	return stock_table_lookup(l->many, sku, strlen(sku));
}

bool
local_durable_sku(const char *sku)
{
	const struct catalog_item *it = catalog_one_find(sku);

	return it != NULL && it->durable;
}

/* The state of @sku after a change, as the journal's document. */
static int
journal(struct local *l, const char *sku, const struct stock_level *lv, bool durable)
{
	struct sku_doc d;

	local_doc(&d, sku, lv);
	return store_append(l->store, &d, durable);
}

/*
 * A durable buy: acknowledged only once its record is on disk. The take and
 * its level come from one call, so the level is a state the counter really
 * had, safe to persist as the SKU's whole state (docs/internals/embedded.md).
 */
static int
buy_durable(struct local *l, struct stock_counter *c, const char *sku, uint64_t n,
    struct stock_level *after)
{
	struct durable_pass pass;
	int rc = durable_enter(&l->guard, &pass), jrc = 0;

	if (rc != 0)
		return rc;
	rc = lift(l, stock_counter_take_level(c, n, after), after);
	if (rc == 0) {
		if ((jrc = journal(l, sku, after, true)) != 0) {
			/* not durable: give the units back */
			ASSERT(stock_counter_put(c, n) == 0);
			rc = jrc;
		}
	}
	if (jrc != 0 && jrc != STOCK_ESYS)
		stock_stat_inc(&l->guard.rejects); /* queue full: not the store's failure */
	durable_leave(&l->guard, &pass, jrc == STOCK_ESYS);
	return rc;
}

/* A cache buy: memory first, the journal behind; the level as buy_durable's. */
static int
buy_cache(struct local *l, struct stock_counter *c, const char *sku, uint64_t n,
    struct stock_level *after)
{
	int rc = lift(l, stock_counter_take_level(c, n, after), after);

	if (rc != 0)
		return rc;
	if (journal(l, sku, after, false) != 0)
		stock_stat_inc(&l->guard.rejects); /* the next record of this SKU carries it */
	return 0;
}

static int
local_buy(inventory_t *inv, const char *sku, uint64_t n, struct stock_level *after)
{
	struct local *l = to_local(inv);
	const struct catalog_item *it = catalog_one_find(sku);
	struct stock_table_section sec;
	struct stock_counter *c;
	int rc;

	if (it != NULL) {
		c = &l->one[it - catalog_one];
		return it->durable ? buy_durable(l, c, sku, n, after) : buy_cache(l, c, sku, n, after);
	}
	if (stock_table_read_begin(l->many, &sec) != 0)
		return STOCK_ENOMEM;
	c = stock_table_lookup(l->many, sku, strlen(sku));
	rc = c == NULL ? STOCK_ENOENT : buy_cache(l, c, sku, n, after);
	stock_table_read_end(l->many, &sec);
	return rc;
}

static int
local_peek(inventory_t *inv, const char *sku, struct stock_level *out)
{
	struct local *l = to_local(inv);
	const struct catalog_item *it = catalog_one_find(sku);

	if (it != NULL)
		return lift(l, stock_counter_read(&l->one[it - catalog_one], out), out);
	return lift(l, stock_table_read(l->many, sku, strlen(sku), out), out);
}

/* An operator change: the checkout path's, without an idempotency answer
   (one code path, ordered with the checkout changes of the same SKUs). */
static int
local_adjust(inventory_t *inv, const char *sku, bool absolute, uint64_t n, struct stock_level *after)
{
	struct checkout_view v;
	int rc = checkout_local_adjust_as(inv, sku, absolute, n, NULL, &v);

	if (rc == 0)
		*after = v.level;
	return rc;
}

struct list_ctx {
	const struct local *l;
	inventory_list_fn fn;
	void *arg;
};

static int
list_table(const char *sku, size_t len, const struct stock_level *lv, void *arg)
{
	struct list_ctx *x = arg;
	struct stock_level lifted = *lv;
	char id[STOCK_SKU_MAX + 1];

	ASSERT(len <= STOCK_SKU_MAX);
	memcpy(id, sku, len);
	id[len] = '\0';
	lift(x->l, 0, &lifted);
	return x->fn(id, &lifted, x->arg);
}

static int
local_list(inventory_t *inv, inventory_list_fn fn, void *arg)
{
	struct local *l = to_local(inv);
	struct list_ctx x = { l, fn, arg };
	struct stock_level lv;
	int rc;

	for (int i = 0; i < CATALOG_ONE_COUNT; i++) {
		lift(l, stock_counter_read(&l->one[i], &lv), &lv);
		if ((rc = fn(catalog_one[i].sku, &lv, arg)) != 0)
			return rc;
	}
	return stock_table_foreach(l->many, list_table, &x);
}

static int
local_publish(inventory_t *inv)
{
	(void)inv;
	return STOCK_ENOENT; /* no bus in the embedded mode */
}

static bool
local_healthy(inventory_t *inv)
{
	return store_healthy(to_local(inv)->store);
}

static void
local_metrics(inventory_t *inv, struct buf *out)
{
	struct local *l = to_local(inv);
	struct store_stats ss;
	uint64_t cum = 0;

	durable_guard_metrics(&l->guard, out);
	checkout_local_metrics(l, out);
	if (store_stats(l->store, &ss) != 0)
		return;
	prom_counter_u64(out, "stock_store_fsyncs_total", "fdatasync calls on the journal.", ss.fsyncs);
	prom_counter_u64(out, "stock_store_fsync_failures_total",
	    "Journal batches whose write or fdatasync failed.", ss.fsync_failures);
	prom_counter_u64(out, "stock_store_records_total", "Records accepted by the journal.",
	    ss.records);
	prom_gauge_u64(out, "stock_store_queue_depth",
	    "Records accepted by the journal, not yet durable.", ss.queue_depth);
	prom_counter_u64(out, "stock_store_snapshots_total", "Snapshots written.", ss.snapshots);
	prom_family(out, "stock_store_batch_size", "histogram", "Records per group commit (fdatasync).");
	for (int i = 0; i < STORE_BATCH_HIST; i++) {
		char le[32];

		cum += ss.batch_hist[i];
		if (i == STORE_BATCH_HIST - 1)
			break;
		snprintf(le, sizeof le, "le=\"%d\"", (2 << i) - 1);
		prom_u64(out, "stock_store_batch_size_bucket", le, cum);
	}
	prom_u64(out, "stock_store_batch_size_bucket", "le=\"+Inf\"", cum);
	prom_u64(out, "stock_store_batch_size_sum", NULL, ss.records);
	prom_u64(out, "stock_store_batch_size_count", NULL, cum);
}

static void
local_close(inventory_t *inv)
{
	struct local *l = to_local(inv);

	checkout_local_close(l);
	store_close(l->store);
	for (int i = 0; i < CATALOG_ONE_COUNT; i++)
		stock_counter_destroy(&l->one[i]);
	stock_table_destroy(l->many);
	durable_guard_destroy(&l->guard);
	free(l);
}

static const struct inventory_ops local_ops = {
	.name = "embedded",
	.buy = local_buy,
	.peek = local_peek,
	.adjust = local_adjust,
	.list = local_list,
	.publish = local_publish,
	.healthy = local_healthy,
	.metrics = local_metrics,
	.close = local_close,
	.hold = checkout_local_hold,
	.hold_get = checkout_local_hold_get,
	.confirm = checkout_local_confirm,
	.cancel = checkout_local_cancel,
	.order = checkout_local_order,
	.buy_as = checkout_local_buy_as,
	.idem_begin = checkout_local_idem_begin,
	.idem_finish = checkout_local_idem_finish,
	.idem_abort = checkout_local_idem_abort,
	.sku_create = checkout_local_sku_create,
	.sku_retire = checkout_local_sku_retire,
	.adjust_as = checkout_local_adjust_as,
};

/* ---- open: recovery and the catalog ----------------------------------- */

struct load_ctx {
	struct local *l;
	bool seen_one[CATALOG_ONE_COUNT];
	int errors;
	uint64_t vmax; /* highest recovered version */
};

/*
 * A recovered document becomes a counter: remaining = stock + held, sold =
 * sold. The held units come back as remaining: the live holds recovered
 * after it (inventory/checkout_local.c) reserve theirs again, so held ends
 * exactly at what the durable holds hold.
 */
static int
counter_from_doc(struct stock_counter *c, enum stock_strategy s, const struct sku_doc *d)
{
	int rc = stock_counter_init(c, s, d->stock + d->held + d->sold);

	if (rc == 0 && d->sold > 0)
		rc = stock_counter_take(c, d->sold);
	return rc;
}

static int
load_doc(const struct sku_doc *d, void *arg)
{
	struct load_ctx *x = arg;
	const struct catalog_item *it = catalog_one_find(d->sku);
	size_t n = strlen(d->sku);

	if (d->version > x->vmax)
		x->vmax = d->version;
	if (it != NULL) {
		size_t i = (size_t)(it - catalog_one);
		stock_counter_destroy(&x->l->one[i]);
		x->errors += counter_from_doc(&x->l->one[i], it->strategy, d) != 0;
		x->seen_one[i] = true;
		return 0;
	}
	if (!stock_sku_valid(d->sku, n)) {
		log_warn("catalog", "ignoring a recovered document with an invalid SKU");
		return 0;
	}
	if (stock_table_insert(x->l->many, d->sku, n, d->stock + d->held + d->sold) != 0 ||
	    (d->sold > 0 && stock_table_take(x->l->many, d->sku, n, d->sold) != 0))
		x->errors++;
	return 0;
}

/* First start: the seed's catalog, made durable before serving. */
static int
seed(struct local *l, uint64_t initial)
{
	struct stock_level lv = { .remaining = initial };

	for (int i = 0; i < CATALOG_ONE_COUNT; i++)
		if (stock_counter_set(&l->one[i], initial) != 0 ||
		    stock_counter_read(&l->one[i], &lv) != 0 || journal(l, catalog_one[i].sku, &lv, true) != 0)
			return STOCK_ESYS;
	for (size_t i = 0; i < catalog_many_seed_count; i++) {
		const char *sku = catalog_many_seed[i];
		if (stock_table_insert(l->many, sku, strlen(sku), initial) != 0 ||
		    stock_table_read(l->many, sku, strlen(sku), &lv) != 0 || journal(l, sku, &lv, true) != 0)
			return STOCK_ESYS;
	}
	log_info("catalog", "seeded: OneStock (Db, Atomic, Signal, Lock) and NVDA, TSLA, AMD with %llu each",
	    (unsigned long long)initial);
	return 0;
}

static int
build_catalog(struct local *l, uint64_t initial)
{
	struct load_ctx x = { .l = l };
	bool fresh;

	for (int i = 0; i < CATALOG_ONE_COUNT; i++)
		if (stock_counter_init(&l->one[i], catalog_one[i].strategy, 0) != 0)
			return STOCK_ENOMEM;
	if (stock_table_create(&l->many, STOCK_STRATEGY_ATOMIC, 64) != 0)
		return STOCK_ENOMEM;
	store_foreach(l->store, load_doc, &x);
	if (x.errors) {
		log_error("catalog", "%d recovered documents could not be loaded", x.errors);
		return STOCK_EINVAL;
	}
	l->vbase = x.vmax;
	fresh = stock_table_count(l->many) == 0;
	for (int i = 0; i < CATALOG_ONE_COUNT; i++)
		fresh = fresh && !x.seen_one[i];
	return fresh ? seed(l, initial) : 0;
}

int
inventory_local_open(inventory_t **out, const struct app_config *cfg)
{
	struct store_options so = { 0 };
	char err[512];
	struct local *l;
	int rc;

	*out = NULL;
	if ((l = util_cache_zalloc(sizeof *l)) == NULL)
		return STOCK_ENOMEM;
	l->base.ops = &local_ops;
	if ((rc = durable_guard_init(&l->guard, (unsigned)cfg->db_inflight)) != 0) {
		free(l);
		return rc;
	}
	so.data_dir = cfg->data_dir;
	so.repair = cfg->repair;
	so.snapshot_every = 100000;
	/* A group commit may wait up to 300 us to grow (measured: 46k -> 50k durable
	   buys/s at 64 connections against 100 us; 1 ms is worse). */
	so.max_delay_us = 300;
	if ((rc = store_open(&l->store, &so, err, sizeof err)) != 0) {
		log_error("store", "cannot open the store: %s", err);
		durable_guard_destroy(&l->guard);
		free(l);
		return rc;
	}
	if ((rc = build_catalog(l, cfg->initial_stock)) != 0 ||
	    (rc = checkout_local_open(l, cfg)) != 0) {
		local_close(&l->base);
		return rc;
	}
	*out = &l->base;
	return 0;
}
