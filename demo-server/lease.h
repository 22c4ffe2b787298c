/*
 * Multi-instance stock on MongoDB: leases, the kill -9-safe sales ledger, the
 * peek caches, the poll and the Redis bus glue (lease.c).
 *
 * With --mongo, MongoDB is the authority. OneStock:Db is bought with one
 * conditional findAndModify per buy (store_mongo_take). Every other SKU is
 * sold from a lease: a block of units this instance moved out of the SKU's
 * `stock` into `leases.<host>` of the same document with one conditional
 * update (store_mongo_lease_cas), and sells from an in-memory libstock
 * counter at memory speed.
 */
#ifndef DEMO_LEASE_H
#define DEMO_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#include <stock.h>

#include "bus.h"
#include "store.h"

typedef struct lease_mgr lease_mgr_t;

struct lease_options {
	store_t *store;          /* a store_mongo_open store */
	bus_t *bus;              /* may be NULL (no Redis) */
	const char *host_id;     /* this instance's lease name */
	const char *ledger_path; /* the mmap'd sales ledger (data dir) */
	uint64_t block;          /* units per grant (upper bound; default 1000) */
	unsigned lease_ms;       /* a silent lease may be reclaimed after this (default 10000) */
	unsigned record_ms;      /* sales are recorded at least this often (default 100) */
	unsigned poll_ms;        /* every document is re-read this often (default 1000) */
	unsigned idle_ms;        /* an unsold lease is returned after this long without sales
	                            (default 2000) */
	void (*log)(const char *msg); /* one line per event */
};

/* One SKU the manager knows: either sold from a lease or (Db) read-through. */
struct lease_peek {
	uint64_t remaining; /* pool + every live lease's unrecorded units, minus our
	                       sales not yet recorded */
	uint64_t sold;
	uint64_t version; /* the document's version */
};

struct lease_stats {
	uint64_t grants, grant_units, records, returns, return_units, reclaims, settles;
	uint64_t failures; /* failed protocol round trips */
	uint64_t polls, events_applied;
};

/**
 * lease_open - reconcile the ledger with MongoDB and start the lease thread.
 * @leased:  the SKUs sold from leases, each with the counter it sells from
 *           (any strategy; must start empty); @nleased of them.
 * @plain:   SKUs that are only cached for peeks (OneStock:Db); @nplain.
 * Reconciliation: for every leased SKU, the sales the ledger holds that
 * MongoDB has not recorded are recorded, and whatever is left of the lease
 * is returned to the pool (a lease reclaimed meanwhile by another instance
 * is settled: its units come back out of `lost`). Returns 0 or a libstock
 * error (message logged).
 */
int lease_open(lease_mgr_t **out, const struct lease_options *opt, const char *const *leased,
    struct stock_counter *const *counters, size_t nleased, const char *const *plain,
    size_t nplain);

/**
 * lease_take - buy @n units of @sku from this instance's lease, refilling it
 * from the pool (one round trip) when it runs dry. Records the sale in the
 * ledger before returning 0. Returns 0 (@after: the peek after the buy),
 * STOCK_ESOLDOUT (lease and pool cannot cover @n), STOCK_ENOENT (not a
 * leased SKU), STOCK_ESYS (MongoDB unreachable while a refill was needed).
 */
int lease_take(lease_mgr_t *m, const char *sku, uint64_t n, struct lease_peek *after);

/**
 * lease_peek - the cached view of @sku. Returns 0 or STOCK_ENOENT.
 */
int lease_peek(lease_mgr_t *m, const char *sku, struct lease_peek *out);

/**
 * lease_offer - a newer document state learnt elsewhere (a Db buy, an admin
 * change, a bus event with @sold unknown = UINT64_MAX). Applied when
 * @version is higher than the cached one; republished on the bus when
 * @publish.
 */
void lease_offer(lease_mgr_t *m, const char *sku, uint64_t remaining, uint64_t sold,
    uint64_t version, bool publish);

/**
 * lease_refresh - re-read @sku's document now (after an admin change),
 * update the cache and publish it. Returns 0 or a libstock error.
 */
int lease_refresh(lease_mgr_t *m, const char *sku);

/** lease_publish_all - publish every cached SKU on the bus (Util/Publish). */
int lease_publish_all(lease_mgr_t *m);

/** lease_stats - copy the counters. */
void lease_stats(lease_mgr_t *m, struct lease_stats *out);

/**
 * lease_close - stop the thread, record every sale, return every unsold unit
 * to the pool (best effort if MongoDB is down: the ledger keeps them for the
 * next start) and free @m. Call after the HTTP server stopped.
 */
void lease_close(lease_mgr_t *m);

#endif /* DEMO_LEASE_H */
