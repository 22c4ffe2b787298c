/*
 * The inventory: the one seam the HTTP handlers call.
 *
 * Handlers ask for a buy, a peek, an operator adjustment, the list of SKUs,
 * a re-publish, the health and the metrics of whatever holds the stock;
 * they never know where the stock lives. That is decided once, at start-up,
 * by which constructor main.c calls:
 *   - inventory_local_open (inventory/local.c): the embedded mode — libstock
 *     counters in memory, the BSON journal (store/) for durability;
 *   - inventory_cluster_open (inventory/cluster.c): --mongo — MongoDB is the
 *     authority (mongo/), Db buys are group-committed conditional updates
 *     (cluster/batch.c), every other SKU is sold from a lease (cluster/lease.c),
 *     stock events travel on Redis (cluster/bus_redis.c).
 * Both serve the catalog of inventory/catalog.h. Errors are libstock codes
 * (STOCK_E*); the HTTP edge maps them to statuses (http/handlers.c).
 */
#ifndef DEMO_INVENTORY_H
#define DEMO_INVENTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stock.h>

#include "common/buf.h"
#include "inventory/checkout.h"

struct app_config;
typedef struct inventory inventory_t;

/* Callback of inventory_list: 0 goes on, anything else stops. */
typedef int (*inventory_list_fn)(const char *sku, const struct stock_level *level, void *arg);

/* What an implementation provides (every entry mandatory). */
struct inventory_ops {
	const char *name; /* "embedded", "mongo" */
	int (*buy)(inventory_t *inv, const char *sku, uint64_t n, struct stock_level *after);
	int (*peek)(inventory_t *inv, const char *sku, struct stock_level *out);
	int (*adjust)(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
	    struct stock_level *after);
	int (*list)(inventory_t *inv, inventory_list_fn fn, void *arg);
	int (*publish)(inventory_t *inv);
	bool (*healthy)(inventory_t *inv);
	void (*metrics)(inventory_t *inv, struct buf *out);
	void (*close)(inventory_t *inv);
	/* Checkout (inventory/checkout.h). NULL in a mode without it: then
	   inventory_has_checkout is false and the handlers answer 501. A mode
	   may serve some without the rest (see inventory_has_catalog,
	   _orders, _buyers, _keys). */
	int (*hold)(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
	    struct checkout_view *out);
	int (*hold_get)(inventory_t *inv, const char *id, size_t len, struct checkout_view *out);
	int (*confirm)(inventory_t *inv, const char *id, size_t len, const struct checkout_req *part,
	    checkout_pay_fn pay, void *pay_arg, struct idem_answer *ans, struct checkout_view *out);
	int (*cancel)(inventory_t *inv, const char *id, size_t len, struct idem_answer *ans,
	    struct checkout_view *out);
	int (*order)(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
	    struct checkout_view *out);
	int (*buy_as)(inventory_t *inv, const char *sku, uint64_t n, const char *buyer,
	    struct idem_answer *ans, struct checkout_view *out);
	enum idem_state (*idem_begin)(inventory_t *inv, const char *key, size_t klen, const char *req,
	    size_t rlen, int *status, struct buf *body);
	int (*idem_finish)(inventory_t *inv, const char *key, size_t klen, int status,
	    const char *body, size_t blen);
	void (*idem_abort)(inventory_t *inv, const char *key, size_t klen);
	int (*sku_create)(inventory_t *inv, const char *sku, uint64_t remaining,
	    struct idem_answer *ans, struct checkout_view *out);
	int (*sku_retire)(inventory_t *inv, const char *sku, struct idem_answer *ans,
	    struct checkout_view *out);
	int (*adjust_as)(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
	    struct idem_answer *ans, struct checkout_view *out);
};

/* Implementations embed this first; callers never look inside. */
struct inventory {
	const struct inventory_ops *ops;
};

/**
 * inventory_local_open - the embedded mode: recover the journal in
 * cfg->data_dir, build the counters, seed the catalog on first start
 * (durably, before returning). Returns 0 or a STOCK_E* code (logged).
 */
int inventory_local_open(inventory_t **out, const struct app_config *cfg);

/**
 * inventory_cluster_open - the --mongo mode: connect, seed missing catalog
 * documents, start the bus (--redis) and the lease manager, which reconciles
 * this instance's ledger. Returns 0 or a STOCK_E* code (logged).
 */
int inventory_cluster_open(inventory_t **out, const struct app_config *cfg);

/**
 * inventory_buy - sell @n units of @sku. Durable SKUs (the catalog's) answer
 * only once the sale is durable; the others once it is in memory (journaled
 * behind, or recorded from the instance's lease).
 * Returns 0 (@after: the level just after this buy), STOCK_ESOLDOUT (fewer
 * than @n remain; nothing changed), STOCK_ENOENT (no such SKU), STOCK_EBUSY
 * (a queue or bulkhead is full: retry shortly), STOCK_EOPEN (the store's
 * breaker is open: failing fast), STOCK_ESYS (the store failed; for a
 * durable SKU the outcome may be unknown on MongoDB), STOCK_ECONFLICT (this
 * instance's lease is unusable). Thread-safe.
 */
static inline int
inventory_buy(inventory_t *inv, const char *sku, uint64_t n, struct stock_level *after)
{
	return inv->ops->buy(inv, sku, n, after);
}

/** inventory_peek - the level of @sku: 0 or STOCK_ENOENT. Thread-safe, no I/O. */
static inline int
inventory_peek(inventory_t *inv, const char *sku, struct stock_level *out)
{
	return inv->ops->peek(inv, sku, out);
}

/**
 * inventory_adjust - an operator change: @absolute sets the remaining stock
 * to @n (a correction), otherwise adds @n units (a restock). Durable before
 * it returns. Returns 0 (@after), STOCK_ENOENT, STOCK_ERANGE (the counts
 * would leave 0..STOCK_COUNT_MAX), STOCK_ESYS (not made durable). Thread-safe.
 */
static inline int
inventory_adjust(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct stock_level *after)
{
	return inv->ops->adjust(inv, sku, absolute, n, after);
}

/** inventory_list - call @fn on every SKU with its level. Returns 0, @fn's value, STOCK_ENOMEM. */
static inline int
inventory_list(inventory_t *inv, inventory_list_fn fn, void *arg)
{
	return inv->ops->list(inv, fn, arg);
}

/** inventory_publish - re-publish every SKU on the bus: 0, or STOCK_ENOENT when there is no bus. */
static inline int
inventory_publish(inventory_t *inv)
{
	return inv->ops->publish(inv);
}

/** inventory_healthy - false while the store (journal or MongoDB) is failing. Lock-free. */
static inline bool
inventory_healthy(inventory_t *inv)
{
	return inv->ops->healthy(inv);
}

/** inventory_metrics - append the inventory's metric families (Prometheus text) to @out. */
static inline void
inventory_metrics(inventory_t *inv, struct buf *out)
{
	inv->ops->metrics(inv, out);
}

/** inventory_close - flush, make everything durable, stop threads, free. NULL is a no-op. */
static inline void
inventory_close(inventory_t *inv)
{
	if (inv != NULL)
		inv->ops->close(inv);
}

/* ---- checkout (inventory/checkout.h; docs/internals/checkout.md) ----------
 *
 * Every operation below is durable before it returns 0 (embedded: one
 * atomic commit of the SKU states, the hold or order, the buyer counts and,
 * with @ans, the idempotency answer rendered by ans->render; the cluster
 * leaves ans->stored false, and the handler stores the answer after, with
 * inventory_idem_finish). Refusals change nothing:
 *   STOCK_ESOLDOUT  an item is short (out->refused is its index), or with
 *                   out->over_limit the buyer's limit (--max-per-buyer) is
 *                   reached for it
 *   STOCK_ENOENT    unknown SKU (out->refused) or unknown hold
 *   STOCK_ECONFLICT the hold is not in a state that allows it: out->status
 *                   (or out->paying) says which
 *   STOCK_EINVAL    a partial confirm names a SKU or quantity not held
 *   STOCK_EBUSY / STOCK_EOPEN / STOCK_ESYS as for buys (ESYS: the change is
 *                   in memory and its commit is retried: outcome unknown;
 *                   out->unknown when it may have applied and its answer was
 *                   not stored with it: the key keeps the 503)
 */

/** inventory_has_checkout - whether this mode serves holds, orders, keys and buyer limits. */
static inline bool
inventory_has_checkout(const inventory_t *inv)
{
	return inv->ops->hold != NULL;
}

/** inventory_has_catalog - whether this mode creates and retires SKUs at run time (Admin PUT / DELETE). */
static inline bool
inventory_has_catalog(const inventory_t *inv)
{
	return inv->ops->sku_create != NULL;
}

/** inventory_has_orders - whether this mode serves POST Orders. */
static inline bool
inventory_has_orders(const inventory_t *inv)
{
	return inv->ops->order != NULL;
}

/** inventory_has_buyers - whether this mode takes X-Buyer-Id (buyer limits) on buys and orders. */
static inline bool
inventory_has_buyers(const inventory_t *inv)
{
	return inv->ops->buy_as != NULL;
}

/** inventory_has_keys - whether this mode keeps Idempotency-Key answers. */
static inline bool
inventory_has_keys(const inventory_t *inv)
{
	return inv->ops->idem_begin != NULL;
}

/** inventory_hold - hold every item (all or nothing) for req->ttl_ms: 0 (@out: the new hold). */
static inline int
inventory_hold(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out)
{
	return inv->ops->hold(inv, req, ans, out);
}

/** inventory_hold_get - the hold @id[0..@len): 0, STOCK_ENOENT (embedded: no I/O; the cluster reads MongoDB: STOCK_ESYS too). */
static inline int
inventory_hold_get(inventory_t *inv, const char *id, size_t len, struct checkout_view *out)
{
	return inv->ops->hold_get(inv, id, len, out);
}

/**
 * inventory_confirm - sell a held hold (@part NULL: all of it; else those
 * items and quantities, the rest released). @pay (may be NULL) runs first,
 * outside every lock, while the hold is marked paying (no expiry, cancel or
 * second confirm meanwhile); its non-zero code is returned with the hold
 * left held. Confirming a confirmed hold returns 0 and the same view.
 */
static inline int
inventory_confirm(inventory_t *inv, const char *id, size_t len, const struct checkout_req *part,
    checkout_pay_fn pay, void *pay_arg, struct idem_answer *ans, struct checkout_view *out)
{
	return inv->ops->confirm(inv, id, len, part, pay, pay_arg, ans, out);
}

/** inventory_cancel - release a held hold; cancelling a cancelled one returns 0. */
static inline int
inventory_cancel(inventory_t *inv, const char *id, size_t len, struct idem_answer *ans,
    struct checkout_view *out)
{
	return inv->ops->cancel(inv, id, len, ans, out);
}

/** inventory_order - buy every item at once, all or nothing: 0 (@out: the order). */
static inline int
inventory_order(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out)
{
	return inv->ops->order(inv, req, ans, out);
}

/**
 * inventory_buy_as - inventory_buy for a buyer (@buyer, may be NULL: no
 * limit) and/or with an idempotency answer (@ans, may be NULL); durable as
 * the SKU's buys are. out->level is the level after.
 */
static inline int
inventory_buy_as(inventory_t *inv, const char *sku, uint64_t n, const char *buyer,
    struct idem_answer *ans, struct checkout_view *out)
{
	return inv->ops->buy_as(inv, sku, n, buyer, ans, out);
}

/**
 * inventory_idem_begin - what is known of Idempotency-Key @key for request
 * @req (method, path and body): IDEM_NEW (now in flight: the request runs,
 * then its operation stores the answer through an idem_answer, or the
 * caller calls inventory_idem_finish or inventory_idem_abort), IDEM_REPLAY
 * (*@status and @body: the stored answer, durable), IDEM_MISMATCH,
 * IDEM_IN_FLIGHT.
 */
static inline enum idem_state
inventory_idem_begin(inventory_t *inv, const char *key, size_t klen, const char *req,
    size_t rlen, int *status, struct buf *body)
{
	return inv->ops->idem_begin(inv, key, klen, req, rlen, status, body);
}

/** inventory_idem_finish - store the answer of an in-flight key whose request changed nothing (durable). */
static inline int
inventory_idem_finish(inventory_t *inv, const char *key, size_t klen, int status,
    const char *body, size_t blen)
{
	return inv->ops->idem_finish(inv, key, klen, status, body, blen);
}

/** inventory_idem_abort - forget an in-flight key without an answer (a retry runs again). */
static inline void
inventory_idem_abort(inventory_t *inv, const char *key, size_t klen)
{
	inv->ops->idem_abort(inv, key, klen);
}

/**
 * inventory_sku_create - a new ManyStock SKU with @remaining units (or a
 * retired one opened again), durable: 0 (out->level), STOCK_EEXIST (it
 * exists and sells, or is a OneStock document), STOCK_ESYS.
 */
static inline int
inventory_sku_create(inventory_t *inv, const char *sku, uint64_t remaining,
    struct idem_answer *ans, struct checkout_view *out)
{
	return inv->ops->sku_create(inv, sku, remaining, ans, out);
}

/**
 * inventory_sku_retire - stop selling @sku: its live holds are cancelled,
 * its remaining set to 0; its sold count stays (peeks, Admin/Stock). Durable:
 * 0 (out->level), STOCK_ENOENT, STOCK_EEXIST (a OneStock document), STOCK_ESYS.
 */
static inline int
inventory_sku_retire(inventory_t *inv, const char *sku, struct idem_answer *ans,
    struct checkout_view *out)
{
	return inv->ops->sku_retire(inv, sku, ans, out);
}

/** inventory_adjust_as - inventory_adjust whose answer @ans is stored with it (Idempotency-Key). */
static inline int
inventory_adjust_as(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct idem_answer *ans, struct checkout_view *out)
{
	return inv->ops->adjust_as(inv, sku, absolute, n, ans, out);
}

/* ---- shared by the implementations (inventory/guard.c) ------------------ */

/*
 * The durable path's guard: a bulkhead of --db-inflight permits and the
 * store breaker (3 failures in a row open it for 500 ms, doubling to 10 s).
 * Both modes wrap every durable write in it.
 */
struct durable_guard {
	struct stock_permits inflight;
	struct stock_breaker breaker;
	struct stock_stat rejects; /* durable or write-behind writes the store refused */
};

struct durable_pass {
	struct stock_breaker_token tok;
};

int durable_guard_init(struct durable_guard *g, unsigned inflight);
void durable_guard_destroy(struct durable_guard *g);

/** durable_enter - 0, STOCK_EBUSY (no permit) or STOCK_EOPEN (breaker open). */
int durable_enter(struct durable_guard *g, struct durable_pass *p);

/** durable_leave - after the write: @store_failed counts against the breaker. */
void durable_leave(struct durable_guard *g, struct durable_pass *p, bool store_failed);

/** durable_guard_metrics - the bulkhead and breaker families. */
void durable_guard_metrics(struct durable_guard *g, struct buf *out);

#endif /* DEMO_INVENTORY_H */
