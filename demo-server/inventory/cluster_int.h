/*
 * Inside the cluster inventory: the object cluster.c (buys, orders, keys,
 * buyer limits, open and close) and cluster_holds.c (holds and their
 * sweeper) share. Not for use outside inventory/.
 */
#ifndef DEMO_INVENTORY_CLUSTER_INT_H
#define DEMO_INVENTORY_CLUSTER_INT_H

#include <pthread.h>

#include <stock.h>
#include <stock/latch.h>

#include "cluster/batch.h"
#include "cluster/bus.h"
#include "cluster/lease.h"
#include "common/doc.h"
#include "inventory/inventory.h"
#include "mongo/mongo.h"

struct cluster {
	struct inventory base;
	struct durable_guard guard; /* first after base: cache-line aligned members */
	mongo_t *mongo;
	bus_t *bus;                  /* NULL without --redis */
	lease_mgr_t *leases;
	struct take_batcher db;      /* OneStock:Db */
	bool db_ready;
	/* The bus thread delivers events from bus_open on; it may use `leases`
	   only once `leases_ready` is set, and only inside `bus_users`, which
	   close drains before the lease manager goes. */
	struct stock_latch leases_ready;
	struct stock_drain bus_users;
	/* Every SKU of the catalog (for list) and the counters leases sell from. */
	char (*skus)[STOCK_SKU_MAX + 1];
	struct stock_counter *counters;
	size_t nskus, cap, ncounters; /* counters[0..ncounters) are initialised */
	uint64_t max_per_buyer;       /* --max-per-buyer; 0: no limit */
	struct stock_stat limits;     /* requests refused at a buyer's limit */
	struct stock_stat replays;    /* answers replayed for an Idempotency-Key */
	int64_t idem_ttl_ms;          /* --idempotency-ttl-s */
	char host[HOST_ID_MAX + 1];   /* --host-id: the owner of the keys this instance claims */
	/* Holds (cluster_holds.c). */
	int64_t lock_ms;              /* a payment lock's life: payment deadline + margins */
	struct stock_latch sweep_stop;
	pthread_t sweeper;
	bool sweeper_started;
	struct stock_stat holds_made, holds_confirmed, holds_cancelled, holds_expired;
};


static inline struct cluster *
to_cluster(inventory_t *inv)
{
	return (struct cluster *)inv;
}

/* cluster.c */
void peek_level(const struct lease_peek *p, struct stock_level *l);
int allowance_take_all(struct cluster *c, const struct checkout_req *req, struct checkout_view *out);
void allowance_give(struct cluster *c, const char *buyer, const char *sku, uint64_t q);
void allowance_give_all(struct cluster *c, const struct checkout_req *req, int keep);

/* cluster_holds.c: the inventory_ops of holds, and the sweeper. */
int cluster_hold(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out);
int cluster_hold_get(inventory_t *inv, const char *id, size_t len, struct checkout_view *out);
int cluster_confirm(inventory_t *inv, const char *id, size_t len, const struct checkout_req *part,
    checkout_pay_fn pay, void *pay_arg, struct idem_answer *ans, struct checkout_view *out);
int cluster_cancel(inventory_t *inv, const char *id, size_t len, struct idem_answer *ans,
    struct checkout_view *out);
int cluster_adjust_as(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct idem_answer *ans, struct checkout_view *out);
/** cluster_holds_start - init the hold counters and start the sweeper: 0 or a STOCK_E* code. */
int cluster_holds_start(struct cluster *c, const struct app_config *cfg);
/** cluster_holds_stop - stop the sweeper (if started), free the counters. Idempotent. */
void cluster_holds_stop(struct cluster *c);
/** cluster_holds_metrics - the hold families. */
void cluster_holds_metrics(struct cluster *c, struct buf *out);

#endif /* DEMO_INVENTORY_CLUSTER_INT_H */
