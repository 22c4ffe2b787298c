/*
 * Inside the embedded inventory (inventory/local.c and its checkout,
 * inventory/checkout_local.c): the object both files share and the few
 * helpers they both use. Nothing outside inventory/ includes this.
 */
#ifndef DEMO_INVENTORY_LOCAL_H
#define DEMO_INVENTORY_LOCAL_H

#include <stock.h>

#include "inventory/catalog.h"
#include "inventory/inventory.h"
#include "store/store.h"

struct app_config;
struct checkout_book;

struct local {
	struct inventory base;
	struct durable_guard guard; /* first after base: cache-line aligned members */
	store_t *store;
	struct stock_counter one[CATALOG_ONE_COUNT];
	stock_table_t *many;
	/* The highest version recovered: every level that leaves a counter is
	   lifted by it, so versions keep rising across restarts
	   (docs/internals/embedded.md). */
	uint64_t vbase;
	struct checkout_book *co; /* holds, orders, buyer counts, idempotency */
};

static inline struct local *
to_local(inventory_t *inv)
{
	return (struct local *)inv;
}

/** local_lift - a counter's level as the inventory's (see vbase); passes @rc through. */
int local_lift(const struct local *l, int rc, struct stock_level *lv);

/** local_doc - the journal document of @sku at level @lv. */
void local_doc(struct sku_doc *d, const char *sku, const struct stock_level *lv);

/**
 * local_counter - the counter of @sku (OneStock or ManyStock), or NULL. A
 * ManyStock counter is valid only inside the table read section @sec, which
 * the caller opened (stock_table_read_begin) and closes.
 */
struct stock_counter *local_counter(struct local *l, const char *sku);

/** local_durable_sku - true for the SKUs whose buys are durable before the answer. */
bool local_durable_sku(const char *sku);

/* ---- checkout_local.c -------------------------------------------------- */

/** checkout_local_open - recover holds, buyer counts and keys; start expiry. 0 or STOCK_E*. */
int checkout_local_open(struct local *l, const struct app_config *cfg);

/** checkout_local_close - stop expiry, free everything (before the store closes). */
void checkout_local_close(struct local *l);

/** checkout_local_metrics - the checkout families. */
void checkout_local_metrics(struct local *l, struct buf *out);

int checkout_local_hold(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out);
int checkout_local_hold_get(inventory_t *inv, const char *id, size_t len, struct checkout_view *out);
int checkout_local_confirm(inventory_t *inv, const char *id, size_t len,
    const struct checkout_req *part, checkout_pay_fn pay, void *pay_arg, struct idem_answer *ans,
    struct checkout_view *out);
int checkout_local_cancel(inventory_t *inv, const char *id, size_t len, struct idem_answer *ans,
    struct checkout_view *out);
int checkout_local_order(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out);
int checkout_local_buy_as(inventory_t *inv, const char *sku, uint64_t n, const char *buyer,
    struct idem_answer *ans, struct checkout_view *out);
enum idem_state checkout_local_idem_begin(inventory_t *inv, const char *key, size_t klen,
    const char *req, size_t rlen, int *status, struct buf *body);
int checkout_local_idem_finish(inventory_t *inv, const char *key, size_t klen, int status,
    const char *body, size_t blen);
void checkout_local_idem_abort(inventory_t *inv, const char *key, size_t klen);
int checkout_local_sku_create(inventory_t *inv, const char *sku, uint64_t remaining,
    struct idem_answer *ans, struct checkout_view *out);
int checkout_local_sku_retire(inventory_t *inv, const char *sku, struct idem_answer *ans,
    struct checkout_view *out);
int checkout_local_adjust_as(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct idem_answer *ans, struct checkout_view *out);

#endif /* DEMO_INVENTORY_LOCAL_H */
