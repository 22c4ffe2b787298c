/*
 * Multi-instance stock on MongoDB: leases, the kill -9-safe sales ledger
 * (ledger.h), the peek caches, the poll and the Redis bus glue (lease.c).
 *
 * With --mongo, MongoDB is the authority. OneStock:Db is bought with one
 * conditional findAndModify per buy (mongo_take, batch.h). Every other SKU is
 * sold from a lease: a block of units this instance moved out of the SKU's
 * `stock` into `leases.<host>` of the same document with one conditional
 * update (mongo_lease_cas), and sells from an in-memory libstock counter at
 * memory speed. docs/internals/leases.md has the protocol and why it never
 * oversells. Logs through log.h ("lease").
 */
#ifndef DEMO_LEASE_H
#define DEMO_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#include <stock.h>

#include "cluster/bus.h"
#include "mongo/mongo.h"

typedef struct lease_mgr lease_mgr_t;

struct lease_options {
	mongo_t *mongo;          /* required (mongo_open) */
	bus_t *bus;              /* may be NULL (no Redis) */
	const char *host_id;     /* this instance's lease name (host_id_valid) */
	const char *ledger_path; /* the mmap'd sales ledger (data dir) */
	uint64_t block;          /* units per grant (upper bound; default 1000) */
	unsigned lease_ms;       /* a silent lease may be reclaimed after this (default 10000) */
	unsigned record_ms;      /* sales are recorded at least this often (default 100) */
	unsigned poll_ms;        /* every document is re-read this often (default 1000) */
	unsigned idle_ms;        /* an unsold lease is returned after this long without sales
	                            (default 2000) */
	unsigned waiters;        /* buyers of one SKU that may wait for its refill; more are
	                            refused with STOCK_EBUSY (default 64) */
	const char *reserved_prefix; /* documents named so that are not known at open are
	                                never added by the poll (NULL: none) */
};

/* One SKU the manager knows: either sold from a lease or (Db) read-through. */
struct lease_peek {
	uint64_t remaining; /* pool + every live lease's unrecorded units, minus our
	                       sales not yet recorded */
	uint64_t sold;
	uint64_t held;    /* units held for holds (holds.<id>) in the newest full read */
	uint64_t version; /* the document's version */
};

struct lease_stats {
	uint64_t grants, grant_units, records, returns, return_units, reclaims, settles;
	uint64_t failures; /* failed protocol round trips */
	uint64_t polls, events_applied;
	uint64_t soldout_fast; /* sold-out answers from memory */
	uint64_t busy;         /* buyers refused: the SKU's refill bulkhead was full */
	uint64_t buyer_refills; /* buyers that found the lease empty and waited on a refill */
	uint64_t buyer_refill_last_ms; /* unix ms of the last of them; 0: none */
};

/**
 * lease_open - reconcile the ledger with MongoDB and start the lease thread.
 * @leased:  the SKUs sold from leases, each with the counter it sells from
 *           (any strategy; must start empty, and be taken from only through
 *           lease_take: the lease thread fills and drains it); @nleased of
 *           them, at most LEDGER_SLOTS (256), no SKU twice.
 * @plain:   SKUs that are only cached for peeks (OneStock:Db); @nplain.
 * Reconciliation: for every leased SKU, the sales the ledger holds that
 * MongoDB has not recorded are recorded, and whatever is left of the lease
 * is returned to the pool (a lease reclaimed meanwhile by another instance
 * is settled: its units come back out of `lost`). Returns 0 or a libstock
 * error (message logged): STOCK_EINVAL (options, a SKU, a counter that is
 * not empty, a ledger of another host or damaged, a stored lease whose
 * counts do not fit), STOCK_ENOENT (a leased SKU has no document: seed
 * first), STOCK_EBUSY (the ledger is in use), STOCK_ENOMEM (also: the ledger
 * is full), STOCK_ESYS (MongoDB or the ledger file failed, or the outcome of
 * the reconciling update is unknown), STOCK_ECONFLICT (a lease could not be
 * reconciled: changed by another process under our host id), STOCK_ESOLDOUT
 * (a settle found less in `lost` than the lease had: `lost` was edited). On
 * failure the counters are left as given (empty).
 */
int lease_open(lease_mgr_t **out, const struct lease_options *opt, const char *const *leased,
    struct stock_counter *const *counters, size_t nleased, const char *const *plain,
    size_t nplain);

/**
 * lease_take - buy @n units of @sku from this instance's lease, refilling it
 * from the pool (one round trip, which the refilling buyer sells from
 * first) when it runs dry. Once the lease and the pool, read at the newest
 * document version known, are both short of @n, the answer is
 * STOCK_ESOLDOUT from memory until a newer version is learnt (our own round
 * trips, the bus, the poll). At most opt->waiters buyers of one SKU wait for
 * its refill. Records the sale in the ledger before returning 0. Returns 0
 * (@after: the peek after the buy), STOCK_ESOLDOUT (lease and pool each
 * short of @n, or the SKU retired as last read), STOCK_ENOENT (not a
 * leased SKU), STOCK_ESYS (MongoDB
 * unreachable, or the outcome of the last update of this lease is still
 * unknown, while a refill was needed), STOCK_EBUSY (the SKU's refill
 * bulkhead is full, or instances kept racing for the last units: retry),
 * STOCK_ECONFLICT (the stored lease was changed by someone else: this
 * instance no longer sells @sku), STOCK_EINVAL (@n is 0 or too large).
 */
int lease_take(lease_mgr_t *m, const char *sku, uint64_t n, struct lease_peek *after);

/* Items of one lease_hold_all (an order's distinct SKUs). */
#define LEASE_HOLD_ALL_MAX 16

/* Units held for one all-or-nothing sale (lease_hold_all); callers never look inside. */
struct lease_holding {
	size_t n;
	struct lease_entry *e[LEASE_HOLD_ALL_MAX];
	uint64_t q[LEASE_HOLD_ALL_MAX];
	bool kept[LEASE_HOLD_ALL_MAX]; /* a refill's units, held outside the counter */
};

/**
 * lease_hold_all - hold @n[i] units of each of the @count distinct leased
 * SKUs @skus[i] (reserved in its counter, refilling as lease_take does),
 * all or nothing: 0 with everything in @h, to be sold (lease_sell_held) or
 * given back (lease_release_held) without delay, or the first refusal with
 * *@refused its index and nothing held: lease_take's codes, STOCK_EINVAL
 * (@count 0 or above LEASE_HOLD_ALL_MAX, or a SKU twice). Thread-safe.
 */
int lease_hold_all(lease_mgr_t *m, const char *const *skus, const uint64_t *n, size_t count,
    struct lease_holding *h, size_t *refused);

/**
 * lease_sell_held - sell everything @h holds: recorded in the ledger, and
 * the ledger written to disk (msync), before returning 0 (@after[i], may be
 * NULL: each SKU's peek after). A kill -9 between two of the records sells
 * part of a sale that was never answered: units lost, never sold twice.
 * STOCK_ESYS: sold, but the ledger could not be written to disk (a power
 * loss could undo it).
 */
int lease_sell_held(lease_mgr_t *m, struct lease_holding *h, struct lease_peek *after);

/** lease_release_held - give back everything @h holds: nothing was sold. */
void lease_release_held(lease_mgr_t *m, struct lease_holding *h);

/**
 * lease_soldout - true when @sku is a read-through (not leased) SKU whose
 * newest known state has fewer than @n units: a buy would be refused (a
 * restock reaches the cache through our round trips, the bus or the poll).
 * Counted in lease_stats.soldout_fast. Lock-free.
 */
bool lease_soldout(lease_mgr_t *m, const char *sku, uint64_t n);

/**
 * lease_peek - the cached view of @sku (remaining 0 while the newest whole
 * read says retired). Returns 0 or STOCK_ENOENT.
 */
int lease_peek(lease_mgr_t *m, const char *sku, struct lease_peek *out);

/**
 * lease_offer - a newer document state learnt elsewhere (a Db buy, an admin
 * change, a bus event with @sold unknown = UINT64_MAX). Applied when
 * @version is higher than the cached one; republished on the bus when
 * @publish. Returns false when @sku has no entry (nothing applied).
 */
bool lease_offer(lease_mgr_t *m, const char *sku, uint64_t remaining, uint64_t sold,
    uint64_t version, bool publish);

/**
 * lease_learn_view - a whole document state written or read elsewhere (a
 * hold's take or end): cached when newer, and published on the bus.
 */
void lease_learn_view(lease_mgr_t *m, const struct mongo_view *v);

/**
 * lease_give_back - return every unsold unit of @sku's counter to the pool
 * now (a hold, which takes from the pool, found it short). Returns 0 (a
 * return was tried), STOCK_ESOLDOUT (the counter is empty), STOCK_ENOENT
 * (not leased), STOCK_ESYS (an update's outcome is still unknown).
 */
int lease_give_back(lease_mgr_t *m, const char *sku);

/**
 * lease_refresh - re-read @sku's document now (after an admin change),
 * update the cache and publish it. Returns 0 or a libstock error.
 */
int lease_refresh(lease_mgr_t *m, const char *sku);

/**
 * lease_add - sell @sku from leases from now on (a document created at run
 * time: Admin PUT here, or found by the poll or heard of on the bus): an
 * entry with a counter of its own and a ledger slot, reconciled like one of
 * lease_open's, then findable. Thread-safe. Returns 0, STOCK_EEXIST (it has
 * an entry), STOCK_ENOMEM (the ledger or the manager is full), STOCK_EINVAL
 * (not a SKU), or reconcile's errors (lease_open; STOCK_ENOENT: no document).
 */
int lease_add(lease_mgr_t *m, const char *sku);

/** lease_has_room - whether @sku has an entry or lease_add would find room for it. */
bool lease_has_room(lease_mgr_t *m, const char *sku);

/**
 * lease_discover - a SKU we have no entry for was heard of (the bus): the
 * lease thread polls at its next tick, and adds every new document.
 * Lock-free.
 */
void lease_discover(lease_mgr_t *m);

/* Callback of lease_list: 0 goes on, anything else stops. */
typedef int (*lease_list_fn)(const char *sku, const struct lease_peek *p, void *arg);

/** lease_list - call @fn on every SKU's peek, in the order they were added. */
int lease_list(lease_mgr_t *m, lease_list_fn fn, void *arg);

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
