/*
 * The cluster inventory (inventory.h, inventory_cluster_open): several
 * instances share stock through MongoDB, the authority (mongo/).
 *
 * OneStock:Db is bought with a conditional update of its document, shared
 * by the buys that arrive together (cluster/batch.c): acknowledged once
 * MongoDB acknowledged it. Every other SKU is sold at memory speed from a
 * lease: a block of units this instance moved out of the document's pool
 * into its own lease (cluster/lease.c), recorded in a kill -9-safe ledger
 * before the reply. Peeks read the lease manager's caches, which learn
 * newer states from our own writes, from the other instances' events on
 * Redis (cluster/bus_redis.c) and from a periodic poll.
 * docs/internals/leases.md has the protocol and what a crash costs.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/batch.h"
#include "cluster/bus.h"
#include "cluster/lease.h"
#include "common/util.h"
#include "common/assert.h"
#include "config.h"
#include "inventory/catalog.h"
#include "inventory/cluster_int.h"
#include "inventory/inventory.h"
#include "log.h"
#include "mongo/mongo.h"

void
peek_level(const struct lease_peek *p, struct stock_level *l)
{
	l->remaining = p->remaining;
	l->held = p->held;
	l->sold = p->sold;
	l->version = p->version;
}

/*
 * The durable buy on MongoDB. A failed round trip is never retried (it may
 * have been applied: at worst a unit is lost, never sold twice); the breaker
 * opens after repeated failures so buyers get a fast 503 while MongoDB is
 * down.
 */
static int
buy_db(struct cluster *c, const char *sku, uint64_t n, struct stock_level *after)
{
	struct durable_pass pass;
	struct sku_doc mine, d;
	int rc;

	/* Known sold out (until a newer state arrives): no round trip. */
	if (lease_soldout(c->leases, sku, n))
		return STOCK_ESOLDOUT;
	if ((rc = durable_enter(&c->guard, &pass)) != 0)
		return rc;
	rc = take_batcher_take(&c->db, n, &mine, &d);
	durable_leave(&c->guard, &pass, rc == STOCK_ESYS);
	/* The cache takes the document's state: a batch's buyers share its
	   version, and only the last of them saw the state it names. */
	if (rc == 0 || rc == STOCK_ESOLDOUT)
		lease_offer(c->leases, sku, d.stock, d.sold, d.version, true);
	if (rc == 0) {
		after->remaining = mine.stock;
		after->held = 0;
		after->sold = mine.sold;
		after->version = mine.version;
	}
	return rc;
}

static int
cluster_buy(inventory_t *inv, const char *sku, uint64_t n, struct stock_level *after)
{
	struct cluster *c = to_cluster(inv);
	const struct catalog_item *it = catalog_one_find(sku);
	struct lease_peek p;
	int rc;

	if (it != NULL && it->durable)
		return buy_db(c, sku, n, after);
	rc = lease_take(c->leases, sku, n, &p);
	if (rc == 0)
		peek_level(&p, after);
	return rc;
}

/* ---- buyer limits (--max-per-buyer) ----------------------------------------
 *
 * What a buyer may still take of a SKU is a SKU-shaped document of its own
 * (mongo.h, MONGO_BUYERS_COLLECTION), created at --max-per-buyer on first
 * use: a purchase first takes its quantity from it with the same
 * conditional update a Db buy uses (successor claims on FerretDB), so
 * concurrent requests of one buyer on any instances never get past the
 * limit together. A purchase refused afterwards gives it back; one whose
 * outcome is unknown does not (the buyer may lose allowance, never exceed
 * it). Every instance must run with the same --max-per-buyer.
 */

/* Take @q of @buyer's allowance for @sku: 0, STOCK_ESOLDOUT (the limit), or a store error. */
static int
allowance_take(struct cluster *c, const char *buyer, const char *sku, uint64_t q)
{
	char key[MONGO_BUYER_KEY_LEN + 1];
	struct durable_pass pass;
	int rc;

	mongo_buyer_key(key, buyer, sku);
	if ((rc = durable_enter(&c->guard, &pass)) != 0)
		return rc;
	rc = mongo_take(c->mongo, key, q, NULL);
	if (rc == STOCK_ENOENT && (rc = mongo_seed(c->mongo, key, c->max_per_buyer)) == 0)
		rc = mongo_take(c->mongo, key, q, NULL);
	durable_leave(&c->guard, &pass, rc == STOCK_ESYS);
	if (rc == STOCK_ESOLDOUT)
		stock_stat_inc(&c->limits);
	return rc;
}

/* Give @q back (a purchase that was refused after its allowance_take). Best effort. */
void
allowance_give(struct cluster *c, const char *buyer, const char *sku, uint64_t q)
{
	char key[MONGO_BUYER_KEY_LEN + 1];
	int rc;

	mongo_buyer_key(key, buyer, sku);
	if ((rc = mongo_adjust(c->mongo, key, false, q, NULL)) != 0)
		log_warn("checkout", "a buyer's allowance of %s (%" PRIu64 ") could not be given back: %s",
		    sku, q, stock_strerror(rc));
}

/* Take the allowance of every item (all or nothing): 0, or the refusal with out->refused. */
int
allowance_take_all(struct cluster *c, const struct checkout_req *req, struct checkout_view *out)
{
	size_t i;
	int rc = 0;

	if (req->buyer == NULL || c->max_per_buyer == 0)
		return 0;
	for (i = 0; i < req->n; i++)
		if ((rc = allowance_take(c, req->buyer, req->items[i].sku, req->items[i].quantity)) != 0)
			break;
	if (rc == 0)
		return 0;
	out->refused = (int)i;
	out->over_limit = rc == STOCK_ESOLDOUT;
	while (i-- > 0)
		allowance_give(c, req->buyer, req->items[i].sku, req->items[i].quantity);
	return rc;
}

/* Give back the allowance of every item but @keep (-1: none kept). */
void
allowance_give_all(struct cluster *c, const struct checkout_req *req, int keep)
{
	if (req->buyer == NULL || c->max_per_buyer == 0)
		return;
	for (size_t i = 0; i < req->n; i++)
		if ((int)i != keep)
			allowance_give(c, req->buyer, req->items[i].sku, req->items[i].quantity);
}

/* ---- Idempotency-Key (mongo/keys.c) -----------------------------------------
 *
 * A key is a document of its own, claimed by inserting it (atomic on FerretDB
 * too): the claiming instance runs the request, then stores its answer; any
 * instance replays it. The answer is stored after the change, not with it:
 * a kill -9 in between leaves the key in flight (its repeats answer 409
 * idempotency_in_flight until --idempotency-ttl-s), and the change is never
 * made twice.
 */

static enum idem_state
cluster_idem_begin(inventory_t *inv, const char *key, size_t klen, const char *req, size_t rlen,
    int *status, struct buf *body)
{
	struct cluster *c = to_cluster(inv);
	enum mongo_key_state st;
	int rc = mongo_key_begin(c->mongo, key, klen, req, rlen, c->host, c->idem_ttl_ms, &st,
	    status, body);

	if (rc != 0) {
		buf_free(body);
		return IDEM_IN_FLIGHT; /* MongoDB failed: refuse, retry later */
	}
	switch (st) {
	case MONGO_KEY_NEW: return IDEM_NEW;
	case MONGO_KEY_REPLAY: stock_stat_inc(&c->replays); return IDEM_REPLAY;
	case MONGO_KEY_MISMATCH: return IDEM_MISMATCH;
	case MONGO_KEY_IN_FLIGHT: break;
	}
	return IDEM_IN_FLIGHT;
}

static int
cluster_idem_finish(inventory_t *inv, const char *key, size_t klen, int status, const char *body,
    size_t blen)
{
	struct cluster *c = to_cluster(inv);

	return mongo_key_finish(c->mongo, key, klen, c->host, status, body, blen);
}

static void
cluster_idem_abort(inventory_t *inv, const char *key, size_t klen)
{
	struct cluster *c = to_cluster(inv);
	int rc = mongo_key_abort(c->mongo, key, klen, c->host);

	if (rc != 0)
		log_warn("checkout", "an in-flight Idempotency-Key could not be released (%s): its "
		    "repeats answer 409 until it expires", stock_strerror(rc));
}

_Static_assert(LEASE_HOLD_ALL_MAX >= CHECKOUT_ITEMS_MAX, "an order's items fit one holding");

/*
 * An order: every item at once, all or nothing. The buyer's allowances are
 * taken first (with --max-per-buyer); the leased SKUs are then held from
 * this instance's leases (memory, or a refill); OneStock:Db, if named, is
 * bought from its document (buy_db: one round trip); only then are the held
 * units sold, on disk before the answer. A refused Db buy gives the held
 * units back; so does a failed one (STOCK_ESYS, which may have sold the Db
 * unit: lost, never sold twice; out->unknown). An Idempotency-Key's answer
 * is stored after this returns (idem_finish): @ans is not used.
 */
static int
cluster_order(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	const char *skus[CHECKOUT_ITEMS_MAX];
	uint64_t qty[CHECKOUT_ITEMS_MAX];
	size_t at[CHECKOUT_ITEMS_MAX], nl = 0, refused = 0;
	struct lease_holding h;
	struct stock_level lvl;
	int db = -1, rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	ASSERT(req->n >= 1 && req->n <= CHECKOUT_ITEMS_MAX);
	(void)ans; /* the answer is stored after (idem_finish): ans->stored stays false */
	if ((rc = allowance_take_all(c, req, out)) != 0)
		return rc;
	for (size_t i = 0; i < req->n; i++) {
		const struct catalog_item *it = catalog_one_find(req->items[i].sku);

		if (it != NULL && it->durable) {
			db = (int)i;
			continue;
		}
		skus[nl] = req->items[i].sku;
		qty[nl] = req->items[i].quantity;
		at[nl++] = i;
	}
	h.n = 0;
	if (nl > 0 && (rc = lease_hold_all(c->leases, skus, qty, nl, &h, &refused)) != 0) {
		allowance_give_all(c, req, -1);
		out->refused = (int)at[refused];
		return rc;
	}
	if (db >= 0 && (rc = buy_db(c, req->items[db].sku, req->items[db].quantity, &lvl)) != 0) {
		lease_release_held(c->leases, &h);
		/* A failed Db buy may have sold: its allowance stays taken. */
		allowance_give_all(c, req, rc == STOCK_ESYS ? db : -1);
		out->refused = db;
		out->unknown = rc == STOCK_ESYS;
		return rc;
	}
	rc = nl > 0 ? lease_sell_held(c->leases, &h, NULL) : 0;
	out->unknown = rc == STOCK_ESYS; /* sold, not known to be on disk */
	checkout_view_order(out, req);
	return rc;
}

/* A buy with X-Buyer-Id and/or Idempotency-Key (its answer is stored after: idem_finish). */
static int
cluster_buy_as(inventory_t *inv, const char *sku, uint64_t n, const char *buyer,
    struct idem_answer *ans, struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	struct checkout_req req = { .n = 1, .buyer = buyer };
	int rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	(void)ans;
	if (strlen(sku) > STOCK_SKU_MAX)
		return STOCK_ENOENT;
	memcpy(req.items[0].sku, sku, strlen(sku) + 1);
	req.items[0].quantity = n;
	if ((rc = allowance_take_all(c, &req, out)) != 0)
		return rc;
	if ((rc = cluster_buy(inv, sku, n, &out->level)) != 0) {
		/* A Db buy's STOCK_ESYS may have sold (a leased one's never did). */
		const struct catalog_item *it = catalog_one_find(sku);
		bool maybe = rc == STOCK_ESYS && it != NULL && it->durable;

		allowance_give_all(c, &req, maybe ? 0 : -1);
		out->refused = 0;
		out->unknown = maybe;
	}
	return rc;
}

static int
cluster_peek(inventory_t *inv, const char *sku, struct stock_level *out)
{
	struct lease_peek p;
	int rc = lease_peek(to_cluster(inv)->leases, sku, &p);

	if (rc == 0)
		peek_level(&p, out);
	return rc;
}

/*
 * An operator change goes to the SKU's document (its unleased pool:
 * `stock`); every instance sees it through the bus and its next poll.
 */
static int
cluster_adjust(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct stock_level *after)
{
	struct cluster *c = to_cluster(inv);
	struct lease_peek p;
	int rc;

	/* Only a SKU with a document (the adjust is an upsert): one created
	   elsewhere that we have not heard of yet is added now. */
	if (lease_peek(c->leases, sku, &p) != 0 && lease_add(c->leases, sku) != 0)
		return STOCK_ENOENT;
	rc = mongo_adjust(c->mongo, sku, absolute, n, NULL); /* retired: STOCK_ENOENT */
	if (rc == STOCK_ECONFLICT)
		rc = STOCK_ESYS;
	if (rc != 0)
		return rc;
	lease_refresh(c->leases, sku);
	lease_peek(c->leases, sku, &p);
	peek_level(&p, after);
	log_info("admin", "%s %s %llu (MongoDB pool)", sku,
	    absolute ? "pool corrected to" : "restocked by", (unsigned long long)n);
	return 0;
}

/* ---- the catalog at run time (Admin PUT / DELETE Stock/{sku}) -------------------
 *
 * A SKU is its document: PUT inserts it (or opens a retired one again) with
 * one conditional update, and this instance sells it from a lease at once;
 * the others add it when they hear of it (the bus: an event for a SKU they
 * do not know makes them poll) or at their next poll. DELETE marks the
 * document retired with stock 0: from that update on MongoDB refuses every
 * grant, hold and restock of it, this instance stops selling and gives its
 * lease back, and its live holds are cancelled; the others stop within the
 * bus latency and one read (--poll-ms without Redis), selling meanwhile only
 * units their leases already held (docs/server.md, "Retiring a SKU").
 */

/* A OneStock document is fixed; the lease manager must have room to sell a new SKU. */
static int
cluster_sku_create(inventory_t *inv, const char *sku, uint64_t remaining,
    struct idem_answer *ans, struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	struct mongo_view v;
	struct lease_peek p;
	int rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	(void)ans; /* the answer is stored after (idem_finish) */
	if (catalog_is_one(sku))
		return STOCK_EEXIST;
	if (!lease_has_room(c->leases, sku)) {
		log_warn("admin", "%s not created: the ledger is full", sku);
		return STOCK_ENOMEM;
	}
	if ((rc = mongo_sku_create(c->mongo, sku, remaining, &v)) == STOCK_ECONFLICT)
		rc = STOCK_ESYS;
	if (rc != 0)
		return rc;
	/* The others learn of it now, not at their poll: opened again, our
	   entry learns it and publishes; new, it is published here. */
	rc = lease_add(c->leases, sku);
	if (rc == STOCK_EEXIST)
		lease_learn_view(c->leases, &v);
	else if (c->bus != NULL)
		(void)bus_publish(c->bus, sku, v.doc.stock, v.doc.version);
	if (rc != 0 && rc != STOCK_EEXIST)
		log_warn("admin", "%s created, but not sold here yet (%s): the poll adds it", sku,
		    stock_strerror(rc));
	if (lease_peek(c->leases, sku, &p) == 0 && p.version >= v.doc.version) {
		peek_level(&p, &out->level);
	} else {
		out->level.remaining = v.doc.stock;
		out->level.sold = v.doc.sold;
		out->level.version = v.doc.version;
	}
	log_info("admin", "%s created with %" PRIu64 " units (MongoDB)", sku, remaining);
	return 0;
}

static int
cluster_sku_retire(inventory_t *inv, const char *sku, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	struct mongo_view v;
	struct lease_peek p;
	unsigned cancelled = 0, kept = 0;
	int rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	(void)ans;
	if (catalog_is_one(sku))
		return STOCK_EEXIST;
	if ((rc = mongo_sku_retire(c->mongo, sku, &v)) == STOCK_ECONFLICT)
		rc = STOCK_ESYS;
	if (rc != 0)
		return rc;
	if (lease_peek(c->leases, sku, &p) == STOCK_ENOENT)
		(void)lease_add(c->leases, sku); /* one we had not heard of: peeks show it */
	lease_learn_view(c->leases, &v); /* our buys stop; published: the others' too */
	(void)lease_give_back(c->leases, sku);
	/* Its live holds: cancelled (every item of each). One being paid for,
	   or expired and not swept yet, decides on its own. */
	for (size_t i = 0; i < v.nholds; i++) {
		struct checkout_view cv;

		if (cluster_cancel(inv, v.holds[i].id, strlen(v.holds[i].id), NULL, &cv) == 0)
			cancelled++;
		else
			kept++;
	}
	/* Every write above taught the cache its document: no re-read. */
	if (lease_peek(c->leases, sku, &p) == 0) {
		peek_level(&p, &out->level);
	} else {
		out->level.sold = v.doc.sold;
		out->level.version = v.doc.version;
	}
	log_info("admin", "%s retired (MongoDB): %u live holds cancelled, %u left to decide "
	    "(being paid, or expired)", sku, cancelled, kept);
	return 0;
}

struct list_ctx {
	inventory_list_fn fn;
	void *arg;
};

static int
list_one(const char *sku, const struct lease_peek *p, void *arg)
{
	struct list_ctx *x = arg;
	struct stock_level l;

	peek_level(p, &l);
	return x->fn(sku, &l, x->arg);
}

/* Every SKU the lease manager knows: the catalog at open, and those added since. */
static int
cluster_list(inventory_t *inv, inventory_list_fn fn, void *arg)
{
	struct list_ctx x = { fn, arg };

	return lease_list(to_cluster(inv)->leases, list_one, &x);
}

static int
cluster_publish(inventory_t *inv)
{
	struct cluster *c = to_cluster(inv);

	if (c->bus == NULL)
		return STOCK_ENOENT;
	return lease_publish_all(c->leases);
}

static bool
cluster_healthy(inventory_t *inv)
{
	return mongo_healthy(to_cluster(inv)->mongo);
}

static void
lease_metrics(struct cluster *c, struct buf *out)
{
	struct lease_stats ls;

	lease_stats(c->leases, &ls);
	prom_family(out, "stock_lease_ops_total", "counter",
	    "Lease protocol round trips that applied, by kind.");
	prom_u64(out, "stock_lease_ops_total", "op=\"grant\"", ls.grants);
	prom_u64(out, "stock_lease_ops_total", "op=\"record\"", ls.records);
	prom_u64(out, "stock_lease_ops_total", "op=\"return\"", ls.returns);
	prom_u64(out, "stock_lease_ops_total", "op=\"reclaim\"", ls.reclaims);
	prom_u64(out, "stock_lease_ops_total", "op=\"settle\"", ls.settles);
	prom_family(out, "stock_lease_units_total", "counter", "Units moved by lease grants and returns.");
	prom_u64(out, "stock_lease_units_total", "op=\"grant\"", ls.grant_units);
	prom_u64(out, "stock_lease_units_total", "op=\"return\"", ls.return_units);
	prom_counter_u64(out, "stock_lease_failures_total", "Lease protocol round trips that failed.",
	    ls.failures);
	prom_counter_u64(out, "stock_lease_polls_total", "Polls of every document.", ls.polls);
	prom_counter_u64(out, "stock_peer_events_applied_total",
	    "Newer states learnt from other instances' events.", ls.events_applied);
	prom_counter_u64(out, "stock_soldout_fast_total",
	    "Sold-out answers from memory: the newest known state is short (no MongoDB round trip).",
	    ls.soldout_fast);
	prom_counter_u64(out, "stock_lease_buyer_refills_total",
	    "Buyers that found the lease empty and waited on a refill, theirs or one in flight (steady state: grants arrive ahead of demand).",
	    ls.buyer_refills);
	prom_family(out, "stock_lease_buyer_refill_last_timestamp_seconds", "gauge",
	    "Unix time a buyer last waited on a refill; 0: none yet.");
	buf_printf(out, "stock_lease_buyer_refill_last_timestamp_seconds %llu.%03llu\n",
	    (unsigned long long)(ls.buyer_refill_last_ms / 1000),
	    (unsigned long long)(ls.buyer_refill_last_ms % 1000));
	prom_counter_u64(out, "stock_lease_waiters_full_total",
	    "Buys refused with 503: the SKU's refill bulkhead (--lease-waiters) was full.", ls.busy);
}

static void
bus_metrics(struct cluster *c, struct buf *out)
{
	struct bus_stats b;

	bus_stats(c->bus, &b);
	prom_family(out, "stock_bus_events_total", "counter", "Redis pub/sub stock events, by direction.");
	prom_u64(out, "stock_bus_events_total", "dir=\"published\"", b.published);
	prom_u64(out, "stock_bus_events_total", "dir=\"coalesced\"", b.coalesced);
	prom_u64(out, "stock_bus_events_total", "dir=\"received\"", b.received);
	prom_u64(out, "stock_bus_events_total", "dir=\"echo\"", b.echoes);
	prom_u64(out, "stock_bus_events_total", "dir=\"malformed\"", b.malformed);
	prom_counter_u64(out, "stock_bus_reconnects_total", "Successful reconnections to Redis.",
	    b.reconnects);
	prom_gauge_u64(out, "stock_bus_connected", "1 while both Redis connections are up.",
	    b.connected ? 1 : 0);
}

static void
cluster_metrics(inventory_t *inv, struct buf *out)
{
	struct cluster *c = to_cluster(inv);
	struct mongo_stats ms;

	durable_guard_metrics(&c->guard, out);
	mongo_stats(c->mongo, &ms);
	prom_counter_u64(out, "stock_mongo_round_trips_total", "MongoDB round trips.", ms.trips);
	prom_counter_u64(out, "stock_mongo_failed_round_trips_total",
	    "MongoDB round trips that failed or timed out.", ms.failed_trips);
	prom_gauge_u64(out, "stock_mongo_claims", "1 when writes commit through successor claims (FerretDB).",
	    ms.claims ? 1 : 0);
	prom_counter_u64(out, "stock_buyer_limit_refusals_total",
	    "Requests refused by --max-per-buyer.", stock_stat_sum(&c->limits));
	prom_counter_u64(out, "stock_idempotent_replays_total",
	    "Requests answered with a stored Idempotency-Key answer.", stock_stat_sum(&c->replays));
	cluster_holds_metrics(c, out);
	lease_metrics(c, out);
	if (c->bus != NULL)
		bus_metrics(c, out);
}

/* Also the clean-up of a failed open: every member may still be unset. */
static void
cluster_close(inventory_t *inv)
{
	struct cluster *c = to_cluster(inv);

	cluster_holds_stop(c); /* the sweeper uses the lease manager too */
	/* The bus thread must be out of the lease manager before it goes. */
	stock_drain_close(&c->bus_users, NULL);
	if (c->leases != NULL)
		lease_close(c->leases); /* records sales, returns unsold units (publishes them) */
	if (c->bus != NULL && bus_flush(c->bus, 500) != 0)
		log_warn("bus", "some events were not published before exit");
	bus_close(c->bus);
	if (c->db_ready)
		take_batcher_destroy(&c->db);
	mongo_close(c->mongo);
	for (size_t i = 0; i < c->ncounters; i++)
		stock_counter_destroy(&c->counters[i]);
	free(c->skus);
	free(c->counters);
	stock_drain_destroy(&c->bus_users);
	stock_latch_destroy(&c->leases_ready);
	stock_stat_destroy(&c->replays);
	stock_stat_destroy(&c->limits);
	durable_guard_destroy(&c->guard);
	free(c);
}

static const struct inventory_ops cluster_ops = {
	.name = "mongo",
	.buy = cluster_buy,
	.peek = cluster_peek,
	.adjust = cluster_adjust,
	.list = cluster_list,
	.publish = cluster_publish,
	.healthy = cluster_healthy,
	.metrics = cluster_metrics,
	.close = cluster_close,
	.hold = cluster_hold,
	.hold_get = cluster_hold_get,
	.confirm = cluster_confirm,
	.cancel = cluster_cancel,
	.order = cluster_order,
	.buy_as = cluster_buy_as,
	.adjust_as = cluster_adjust_as,
	.sku_create = cluster_sku_create,
	.sku_retire = cluster_sku_retire,
	.idem_begin = cluster_idem_begin,
	.idem_finish = cluster_idem_finish,
	.idem_abort = cluster_idem_abort,
};

/* ---- open ------------------------------------------------------------------ */

/* A stock event of another instance: newer versions refresh our caches. */
static void
bus_receive(const struct bus_event *ev, void *arg)
{
	struct cluster *c = arg;

	if (stock_drain_enter(&c->bus_users) != 0)
		return; /* closing */
	if (stock_latch_is_set(&c->leases_ready) &&
	    !lease_offer(c->leases, ev->key, ev->value, UINT64_MAX, ev->version, false) &&
	    !catalog_is_one(ev->key))
		lease_discover(c->leases); /* created elsewhere: the poll adds it */
	stock_drain_leave(&c->bus_users);
}

static int
add_sku(struct cluster *c, const char *sku)
{
	for (size_t i = 0; i < c->nskus; i++)
		if (strcmp(c->skus[i], sku) == 0)
			return 0;
	if (c->nskus == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 16;
		void *s = realloc(c->skus, cap * sizeof *c->skus);
		if (s == NULL)
			return STOCK_ENOMEM;
		c->skus = s;
		if ((s = realloc(c->counters, cap * sizeof *c->counters)) == NULL)
			return STOCK_ENOMEM;
		c->counters = s;
		c->cap = cap;
	}
	snprintf(c->skus[c->nskus], sizeof c->skus[0], "%s", sku);
	c->nskus++;
	return 0;
}

static int
collect(const struct mongo_view *v, void *arg)
{
	struct cluster *c = arg;

	if (catalog_is_one(v->doc.sku))
		return 0; /* exactly the catalog's, added first */
	if (!stock_sku_valid(v->doc.sku, strlen(v->doc.sku))) {
		log_warn("catalog", "ignoring a document with an invalid SKU");
		return 0;
	}
	return add_sku(c, v->doc.sku);
}

/* Seed missing documents like the seed service, then list every SKU. */
static int
build_catalog(struct cluster *c, uint64_t initial)
{
	int rc;

	for (int i = 0; i < CATALOG_ONE_COUNT; i++)
		if ((rc = mongo_seed(c->mongo, catalog_one[i].sku, initial)) != 0 ||
		    (rc = add_sku(c, catalog_one[i].sku)) != 0)
			return rc;
	for (size_t i = 0; i < catalog_many_seed_count; i++)
		if ((rc = mongo_seed(c->mongo, catalog_many_seed[i], initial)) != 0)
			return rc;
	if ((rc = mongo_view_all(c->mongo, collect, c)) != 0)
		return rc;
	for (size_t i = 0; i < c->nskus; i++) {
		const struct catalog_item *it = catalog_one_find(c->skus[i]);
		if (stock_counter_init(&c->counters[i], it ? it->strategy : STOCK_STRATEGY_ATOMIC, 0) != 0)
			return STOCK_ENOMEM;
		c->ncounters = i + 1;
	}
	return 0;
}

static int
open_bus(struct cluster *c, const struct app_config *cfg)
{
	struct bus_options bo = { 0 };

	if (cfg->redis_url[0] == '\0')
		return 0;
	bo.url = cfg->redis_url;
	bo.host_id = cfg->host_id;
	bo.one_channel = cfg->one_channel;
	bo.many_channel = cfg->many_channel;
	bo.receive = bus_receive;
	bo.receive_arg = c;
	return bus_open(&c->bus, &bo);
}

/* Leases for every SKU but the durable Db, which MongoDB sells directly. */
static int
open_leases(struct cluster *c, const struct app_config *cfg)
{
	const char **leased = calloc(c->nskus, sizeof *leased);
	struct stock_counter **ctrs = calloc(c->nskus, sizeof *ctrs);
	const char *plain[1] = { catalog_one[CATALOG_ONE_DB].sku };
	struct lease_options lo = { 0 };
	char ledger[PATH_MAX + 16];
	size_t n = 0;
	int rc = STOCK_ENOMEM;

	if (leased == NULL || ctrs == NULL)
		goto out;
	for (size_t i = 0; i < c->nskus; i++) {
		const struct catalog_item *it = catalog_one_find(c->skus[i]);
		if (it != NULL && it->durable)
			continue;
		leased[n] = c->skus[i];
		ctrs[n++] = &c->counters[i];
	}
	snprintf(ledger, sizeof ledger, "%s/ledger.bin", cfg->data_dir);
	lo.mongo = c->mongo;
	lo.bus = c->bus;
	lo.host_id = cfg->host_id;
	lo.ledger_path = ledger;
	lo.block = cfg->lease_block;
	lo.lease_ms = (unsigned)cfg->lease_ms;
	lo.record_ms = (unsigned)cfg->record_ms;
	lo.poll_ms = (unsigned)cfg->poll_ms;
	lo.waiters = (unsigned)cfg->lease_waiters;
	lo.reserved_prefix = CATALOG_ONE_PREFIX; /* the OneStock documents are fixed */
	rc = lease_open(&c->leases, &lo, leased, ctrs, n, plain, 1);
out:
	free(leased);
	free(ctrs);
	return rc;
}

int
inventory_cluster_open(inventory_t **out, const struct app_config *cfg)
{
	struct mongo_options mo = { 0 };
	char err[512];
	struct cluster *c;
	int rc;

	*out = NULL;
	if ((c = util_cache_zalloc(sizeof *c)) == NULL)
		return STOCK_ENOMEM;
	c->base.ops = &cluster_ops;
	if ((rc = durable_guard_init(&c->guard, (unsigned)cfg->db_inflight)) != 0) {
		free(c);
		return rc;
	}
	if ((rc = stock_stat_init(&c->limits)) != 0 || (rc = stock_stat_init(&c->replays)) != 0) {
		stock_stat_destroy(&c->limits);
		durable_guard_destroy(&c->guard);
		free(c);
		return rc;
	}
	c->idem_ttl_ms = (int64_t)cfg->idem_ttl_s * 1000;
	snprintf(c->host, sizeof c->host, "%s", cfg->host_id);
	stock_latch_init(&c->leases_ready, false);
	stock_drain_init(&c->bus_users);
	c->max_per_buyer = cfg->max_per_buyer;
	mo.uri = cfg->mongo_uri;
	mo.database = cfg->mongo_db;
	mo.one_collection = cfg->mongo_one;
	mo.many_collection = cfg->mongo_many;
	mo.timeout_ms = (unsigned)cfg->mongo_timeout_ms;
	if ((rc = mongo_open(&c->mongo, &mo, err, sizeof err)) != 0) {
		log_error("mongo", "cannot open MongoDB: %s", err);
		goto fail;
	}
	if ((rc = build_catalog(c, cfg->initial_stock)) != 0) {
		log_error("catalog", "cannot build the MongoDB catalog: %s", stock_strerror(rc));
		goto fail;
	}
	if ((rc = take_batcher_init(&c->db, c->mongo, catalog_one[CATALOG_ONE_DB].sku, 256)) != 0)
		goto fail;
	c->db_ready = true;
	if ((rc = open_bus(c, cfg)) != 0) {
		log_error("bus", "cannot start the Redis bus: %s", stock_strerror(rc));
		goto fail;
	}
	if ((rc = open_leases(c, cfg)) != 0) {
		log_error("lease", "cannot start the lease manager: %s", stock_strerror(rc));
		goto fail;
	}
	stock_latch_set(&c->leases_ready);
	if ((rc = cluster_holds_start(c, cfg)) != 0) {
		log_error("checkout", "cannot start the hold sweeper: %s", stock_strerror(rc));
		goto fail;
	}
	log_info("catalog", "MongoDB catalog: OneStock (Db, Atomic, Signal, Lock) and %zu ManyStock SKUs; "
	    "host id %s", c->nskus - CATALOG_ONE_COUNT, cfg->host_id);
	*out = &c->base;
	return 0;
fail:
	cluster_close(&c->base);
	return rc;
}
