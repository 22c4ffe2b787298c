/*
 * Internals of the lease manager shared by lease.c (the API, the buy path,
 * the lease thread, open/close) and lease_update.c (one conditional update of
 * our lease and the outcomes it can have). Not for use outside cluster/.
 */
#ifndef DEMO_CLUSTER_LEASE_INT_H
#define DEMO_CLUSTER_LEASE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <stock.h>
#include <stock/latch.h>

#include "cluster/lease.h"
#include "cluster/ledger.h"
#include "common/assert.h"

/*
 * The newest document state we know, by version (docs: "Peeks"), and the
 * pool (the document's unleased `stock`) with the version it was read at:
 * while no newer version is known, a pool smaller than a buy is a 409 from
 * memory (docs/server.md, "What a 409 promises").
 */
struct peek_cache {
	struct stock_version seq;     /* seqlock over the values */
	struct stock_gauge remaining; /* stock + what live leases hold */
	struct stock_gauge sold;
	struct stock_gauge held;      /* units held for holds (holds.<id>), as last read */
	struct stock_gauge version;   /* the document's version */
	struct stock_gauge recorded;  /* leases.<host>.sold in the newest view of it */
	/* From the newest whole read (a leased SKU's: our round trips, the
	   poll), at pool_version: */
	struct stock_gauge pool;      /* the document's stock */
	struct stock_gauge retired;   /* 1: retired (Admin DELETE) */
	struct stock_gauge pool_version;
};

/* An update whose outcome is unknown (docs: "Unknown outcomes"). */
struct unsure {
	bool pending;
	bool had_expect;           /* false: it opened the lease (expect = none) */
	struct mongo_lease expect; /* what it expected */
	struct mongo_lease next;   /* what it wrote */
	struct mongo_lease fence;  /* what a fence writes over expect: neither of the two */
	uint64_t grant;            /* units it granted */
	uint64_t keep;             /* of which the caller sells, if known applied in its call */
	uint64_t putback;          /* units to give the counter back if not applied */
};

struct lease_entry {
	char sku[STOCK_SKU_MAX + 1];
	bool leased;
	struct peek_cache cache;
	/* leased entries only: */
	struct stock_counter *ctr;      /* our unsold units: the caller's, or `own` */
	struct stock_counter own;       /* the counter of an entry added at run time */
	bool owns_ctr;
	struct ledger_slot *slot;
	struct stock_permits waiters;   /* the bulkhead: buyers waiting for a refill */
	struct stock_gauge last_sale_ns;
	pthread_mutex_t mu;             /* serialises round trips; guards what follows */
	struct mongo_lease lease;       /* the stored lease as last known */
	bool have_lease;                /* leases.<host> exists */
	struct unsure u;
	bool broken;                    /* the stored lease is not ours any more: no sales */
	uint64_t last_renew_ns;
	uint64_t rate;                  /* units sold per second, smoothed */
	uint64_t rate_mark_sold, rate_mark_ns;
};

struct lease_counters {
	struct stock_stat grants, grant_units, records, returns, return_units, reclaims, settles;
	struct stock_stat failures, polls, events_applied;
	struct stock_stat soldout_fast, busy, buyer_refills;
	struct stock_gauge buyer_refill_last_ms; /* wall clock of the last one */
};

/* Entries one manager holds: every ledger slot, plus the plain (read-through) SKUs. */
#define LEASE_ENTRIES_MAX (LEDGER_SLOTS + 8)
#define LEASE_INDEX_SLOTS 1024 /* a power of two, at least 2 x LEASE_ENTRIES_MAX */
_Static_assert(LEASE_INDEX_SLOTS >= 2 * LEASE_ENTRIES_MAX, "the index stays at most half full");

struct lease_mgr {
	struct lease_counters st; /* first: cache-line aligned (aligned_alloc) */
	struct lease_options opt;
	char host[HOST_ID_MAX + 1];
	/*
	 * Entries are added (at open, or at run time: lease_add) and never
	 * removed: e[] has room for LEASE_ENTRIES_MAX and does not move. An
	 * entry is whole before it is published: its index slot (e[] index + 1,
	 * 0: free) is set with release, then `count` is raised, so find (an
	 * acquire load per probe) and the loops over e[0..count) see only whole
	 * entries. Adds are serialised by add_mu.
	 */
	struct lease_entry *e;
	struct stock_gauge count;
	struct stock_gauge index[LEASE_INDEX_SLOTS];
	pthread_mutex_t add_mu;
	struct stock_gauge discover; /* 1: poll at the next tick (an unknown SKU was heard of) */
	bool full_logged;            /* the "ledger full" warning of the poll, once */
	struct ledger *ledger;
	struct stock_latch stop;
	pthread_t thread;
	bool thread_started;
};

/* resolve(): the unknown update had been applied. */
#define RESOLVED_APPLIED 1

/* ---- leases as values ---------------------------------------------------- */

/* Counts that fit: sold + returned <= granted. */
static inline bool
lease_sane(const struct mongo_lease *l)
{
	return l->sold <= l->granted && l->returned <= l->granted - l->sold;
}

/* What a lease still holds (its owner may sell it). */
static inline uint64_t
lease_held(const struct mongo_lease *l)
{
	ASSERT(lease_sane(l));
	return l->granted - l->sold - l->returned;
}

static inline const struct mongo_lease *
view_lease(const struct mongo_view *v, const char *host)
{
	for (size_t i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

/* ---- lease_update.c ------------------------------------------------------- */

/* A document state offered to a peek cache; UINT64_MAX: not known. */
struct cache_state {
	uint64_t remaining, sold, version;
	uint64_t recorded; /* our lease's sold in it */
	uint64_t pool;     /* its stock (leased SKUs' whole reads) */
	uint64_t held;     /* units held for holds (bus events: not known) */
	uint64_t retired;  /* 1 or 0, with pool */
};

/** lease__cache_offer - offer @st to @c (see lease_update.c). True when it was newer. */
bool lease__cache_offer(struct peek_cache *c, const struct cache_state *st);

/**
 * lease__cache_read - a consistent copy of @c: the peek (remaining 0 while
 * retired), recorded sold, pool and its version.
 */
void lease__cache_read(struct peek_cache *c, struct lease_peek *out, uint64_t *recorded,
    uint64_t *pool, uint64_t *pool_version);

/** lease__retired - whether the newest whole read of @c's document says retired. */
static inline bool
lease__retired(const struct peek_cache *c)
{
	return stock_gauge_get(&c->retired) != 0;
}

/** lease__learn - cache a view of @e's document, note the pool, maybe publish it. */
void lease__learn(struct lease_mgr *m, struct lease_entry *e, const struct mongo_view *v,
    bool publish);

/** lease__drain - take every unsold unit out of @c; returns how many. */
uint64_t lease__drain(struct stock_counter *c);

/**
 * lease__resolve - learn the outcome of @e's pending update (entry lock
 * held). 0 (none pending, or known not applied), RESOLVED_APPLIED,
 * STOCK_ESYS (still unknown), STOCK_ECONFLICT (the lease is not ours).
 */
int lease__resolve(struct lease_mgr *m, struct lease_entry *e);

/**
 * lease__update - one update of our lease (entry lock held, nothing
 * pending): @grant units from the pool, @ret back to it, the ledger's sales
 * recorded, renewed. @keep of the granted units are handed to the caller
 * (who sells them) instead of the counter, when this call learns that the
 * grant applied. @ret_from_counter: the @ret units were taken out of the
 * counter and go back in if it does not apply. A reclaim found on the way is
 * adopted and settled in the same call. Returns 0, or a libstock error:
 * nothing applied (STOCK_ESOLDOUT: the pool is smaller than @grant, and the
 * pool gauge was refreshed; STOCK_ECONFLICT: broken), or STOCK_ESYS (maybe
 * applied: pending, resolved by lease__resolve).
 */
int lease__update(struct lease_mgr *m, struct lease_entry *e, uint64_t grant, uint64_t keep,
    uint64_t ret, bool ret_from_counter);

#endif /* DEMO_CLUSTER_LEASE_INT_H */
