/*
 * Leases (lease.h): how several demo-server instances sell one MongoDB stock
 * from memory without overselling.
 *
 * Each leased SKU's units for sale are a block this instance moved out of the
 * document's pool into leases.<host> with one conditional update; buys take
 * from an in-memory libstock counter holding that block and add to the sales
 * ledger (ledger.h) before the reply. One thread per instance records the
 * sales, renews, refills, returns idle leases, polls every document and
 * reclaims the expired leases of other hosts; peeks read a per-SKU cache fed
 * by our own round trips, the poll and the bus.
 *
 * One conditional update of our lease and its possible outcomes are in
 * lease_update.c, the ledger file in ledger.c. The protocol, its invariants
 * and why it never oversells (grants, records, returns, reclaims into
 * `lost`, settling after a restart, unknown outcomes, what a crash costs) are
 * in docs/internals/leases.md; the comments here name the rule each piece
 * implements.
 *
 * Locking: an entry's mutex serialises every round trip on its SKU and
 * guards its lease state; buys take it only to refill. The peek cache is a
 * seqlock (many readers, writers under its embedded lock); the pool, the
 * last sale time and the stats are libstock gauges and stats. Entries are
 * added at open and at run time (lease_add: a SKU created by Admin PUT, here
 * or elsewhere), never removed; adds are serialised by add_mu and published
 * through gauges (lease_int.h), so buyers find them without a lock.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stock.h>
#include <stock/latch.h>

#include "cluster/lease_int.h"
#include "common/util.h"
#include "log.h"

#define TICK_MS 10 /* the lease thread's period */

static uint64_t
ms_ns(unsigned ms)
{
	return (uint64_t)ms * 1000000ULL;
}

/* ---- the index (lease_int.h: entries are published, never removed) ---------------- */

/* Entries published so far: e[0..count) are whole. */
static size_t
count(struct lease_mgr *m)
{
	return (size_t)stock_gauge_get(&m->count);
}

static struct lease_entry *
find(struct lease_mgr *m, const char *sku)
{
	size_t mask = LEASE_INDEX_SLOTS - 1;

	for (size_t i = (size_t)util_hash(sku, strlen(sku)) & mask;; i = (i + 1) & mask) {
		size_t k = (size_t)stock_gauge_get(&m->index[i]);

		if (k == 0)
			return NULL;
		if (strcmp(m->e[k - 1].sku, sku) == 0)
			return &m->e[k - 1];
	}
}

/* Make the whole entry @e findable, then iterable (add_mu held, or open). */
static void
publish(struct lease_mgr *m, struct lease_entry *e)
{
	size_t k = (size_t)(e - m->e), mask = LEASE_INDEX_SLOTS - 1;
	size_t i = (size_t)util_hash(e->sku, strlen(e->sku)) & mask;

	ASSERT(k == count(m) && k < LEASE_ENTRIES_MAX);
	while (stock_gauge_get(&m->index[i]) != 0)
		i = (i + 1) & mask;
	stock_gauge_set(&m->index[i], k + 1);
	stock_gauge_set(&m->count, k + 1);
}

/* ---- the buy path ------------------------------------------------------------------ */

/* The pool as last read, and whether that read is of the newest version known. */
static uint64_t
pool_known(struct lease_entry *e, bool *current)
{
	struct lease_peek p;
	uint64_t recorded, pool, pool_version;

	lease__cache_read(&e->cache, &p, &recorded, &pool, &pool_version);
	*current = pool_version == p.version;
	return pool;
}

/*
 * The pool to size a grant on: the pool as last read, or, when a newer
 * version was learnt since (a bus event, whose remaining counts the pool and
 * every lease's unsold units), that remaining if larger. A restock seen on
 * the bus then gets a grant of its size at once instead of one unit; an
 * estimate that proves too big costs one refused round trip (refill).
 */
static uint64_t
pool_estimate(struct lease_entry *e)
{
	struct lease_peek p;
	uint64_t recorded, pool, pool_version;

	lease__cache_read(&e->cache, &p, &recorded, &pool, &pool_version);
	return pool_version == p.version || p.remaining < pool ? pool : p.remaining;
}

/*
 * Units to ask for: about a second of this instance's recent sales, at least
 * --lease-block, at most 1/8 of the pool (so the last units spread across
 * instances), at least @n. Entry lock held.
 */
static uint64_t
grant_size(struct lease_mgr *m, struct lease_entry *e, uint64_t n)
{
	uint64_t pool = pool_estimate(e);
	uint64_t want = e->rate > m->opt.block ? e->rate : m->opt.block;

	if (want > pool / 8)
		want = pool / 8;
	if (want < 1)
		want = 1;
	if (want < n)
		want = n;
	return want;
}

/* Every 100 ms: the smoothed sales rate (units/s). Entry lock held. */
static void
measure_rate(struct lease_entry *e, uint64_t now)
{
	uint64_t sold = ledger_sold(e->slot), dt = now - e->rate_mark_ns;

	ASSERT(now >= e->rate_mark_ns); /* only the lease thread marks, with its clock */
	if (dt < 100000000ULL)
		return;
	if (e->rate_mark_ns != 0) {
		uint64_t r = (sold - e->rate_mark_sold) * 1000000000ULL / dt;

		e->rate = (e->rate + r) / 2;
	}
	e->rate_mark_sold = sold;
	e->rate_mark_ns = now;
}

/*
 * Grant so that @n units can be taken; @keep of them (0 or @n) go to the
 * caller, the rest to the counter. Entry lock held.
 */
static int
refill(struct lease_mgr *m, struct lease_entry *e, uint64_t n, uint64_t keep)
{
	uint64_t want = grant_size(m, e, n);
	int rc;

	if ((rc = lease__resolve(m, e)) < 0)
		return rc;
	/* Each miss re-read a pool that another instance shrank: bounded by
	   the instances racing for the last units. */
	for (int tries = 0; tries < 16; tries++) {
		bool current;
		uint64_t pool;

		rc = lease__update(m, e, want, keep, 0, false);
		if (rc == 0) {
			stock_stat_inc(&m->st.grants);
			stock_stat_add(&m->st.grant_units, want);
			return 0;
		}
		if (rc != STOCK_ESOLDOUT || lease__retired(&e->cache))
			return rc; /* retired: the update's re-read said so */
		/* The pool is smaller than asked (update re-read it): take what is
		   left, if it covers n. */
		pool = pool_known(e, &current);
		if (pool < n)
			return STOCK_ESOLDOUT;
		want = pool < want ? pool : want;
	}
	return STOCK_EBUSY;
}

static void
peek_entry(struct lease_entry *e, struct lease_peek *out)
{
	uint64_t recorded, sold, pool, pool_version;

	lease__cache_read(&e->cache, out, &recorded, &pool, &pool_version);
	if (e->leased) {
		sold = ledger_sold(e->slot);
		if (sold > recorded) { /* our sales not in the document yet */
			uint64_t unrec = sold - recorded;

			out->remaining = out->remaining > unrec ? out->remaining - unrec : 0;
			out->sold += unrec;
		}
	}
}

/*
 * Our counter had fewer than @n: known sold out (the pool, read at the
 * newest version we know, is short too), or wait for the entry (bounded by
 * the SKU's bulkhead) and grant @n units for ourselves. @reserve: the units
 * are to be held in the counter (reserved), not taken; a refill's units go
 * to the caller outside the counter either way (*@kept then true).
 */
static int
take_slow(struct lease_mgr *m, struct lease_entry *e, uint64_t n, bool reserve, bool *kept)
{
	bool current;
	int rc;

	*kept = false;
	if (lease__retired(&e->cache) || (pool_known(e, &current) < n && current)) {
		stock_stat_inc(&m->st.soldout_fast);
		return STOCK_ESOLDOUT;
	}
	if (stock_permits_try_acquire(&e->waiters, 1) != 0) {
		stock_stat_inc(&m->st.busy);
		return STOCK_EBUSY;
	}
	/* This buyer waits on a refill: its own, or one in flight. */
	stock_stat_inc(&m->st.buyer_refills);
	stock_gauge_set(&m->st.buyer_refill_last_ms, (uint64_t)util_wall_ms());
	pthread_mutex_lock(&e->mu);
	/* Whoever held the entry may have refilled, or learnt it is empty. */
	rc = reserve ? stock_counter_reserve(e->ctr, n) : stock_counter_take(e->ctr, n);
	if (rc == STOCK_ESOLDOUT) {
		if (lease__retired(&e->cache) || (pool_known(e, &current) < n && current))
			stock_stat_inc(&m->st.soldout_fast);
		else if ((rc = refill(m, e, n, n)) == 0)
			*kept = true;
	}
	pthread_mutex_unlock(&e->mu);
	stock_permits_release(&e->waiters, 1);
	return rc;
}

/* A sale of @n from @e's lease is final: in the ledger before the reply. */
static void
sold(struct lease_entry *e, uint64_t n, struct lease_peek *after)
{
	ledger_add_sold(e->slot, n); /* a kill -9 cannot lose it */
	stock_gauge_set(&e->last_sale_ns, stock_now_ns());
	if (after != NULL)
		peek_entry(e, after);
}

int
lease_take(lease_mgr_t *m, const char *sku, uint64_t n, struct lease_peek *after)
{
	struct lease_entry *e = find(m, sku);
	bool kept;
	int rc;

	if (e == NULL || !e->leased)
		return STOCK_ENOENT;
	/* Retired (Admin DELETE, as last read): the lease's units go back. */
	if (lease__retired(&e->cache)) {
		stock_stat_inc(&m->st.soldout_fast);
		return STOCK_ESOLDOUT;
	}
	rc = stock_counter_take(e->ctr, n);
	if (rc == STOCK_ESOLDOUT)
		rc = take_slow(m, e, n, false, &kept);
	if (rc != 0)
		return rc;
	sold(e, n, after);
	return 0;
}

int
lease_hold_all(lease_mgr_t *m, const char *const *skus, const uint64_t *n, size_t count,
    struct lease_holding *h, size_t *refused)
{
	size_t i;
	int rc = 0;

	h->n = 0;
	if (count == 0 || count > LEASE_HOLD_ALL_MAX)
		return STOCK_EINVAL;
	for (i = 0; i < count; i++) {
		struct lease_entry *e = find(m, skus[i]);

		if (e == NULL || !e->leased) {
			rc = STOCK_ENOENT;
			break;
		}
		for (size_t j = 0; j < i; j++)
			if (h->e[j] == e)
				rc = STOCK_EINVAL; /* a SKU twice */
		if (rc != 0)
			break;
		h->e[i] = e;
		h->q[i] = n[i];
		h->kept[i] = false;
		if (lease__retired(&e->cache)) {
			rc = STOCK_ESOLDOUT;
			break;
		}
		/* Held in the counter, or kept out of it by a refill. */
		rc = stock_counter_reserve(e->ctr, n[i]);
		if (rc == STOCK_ESOLDOUT)
			rc = take_slow(m, e, n[i], true, &h->kept[i]);
		if (rc != 0)
			break;
		h->n = i + 1;
	}
	if (rc != 0) {
		*refused = i;
		lease_release_held(m, h);
	}
	return rc;
}

void
lease_release_held(lease_mgr_t *m, struct lease_holding *h)
{
	(void)m;
	for (size_t i = h->n; i-- > 0;)
		ASSERT((h->kept[i] ? stock_counter_restock(h->e[i]->ctr, h->q[i]) :
		    stock_counter_release(h->e[i]->ctr, h->q[i])) == 0);
	h->n = 0;
}

int
lease_sell_held(lease_mgr_t *m, struct lease_holding *h, struct lease_peek *after)
{
	for (size_t i = 0; i < h->n; i++) {
		if (!h->kept[i])
			ASSERT(stock_counter_commit(h->e[i]->ctr, h->q[i]) == 0);
		sold(h->e[i], h->q[i], after != NULL ? &after[i] : NULL);
	}
	h->n = 0;
	return ledger_sync(m->ledger); /* STOCK_ESYS: sold, not known to be on disk */
}

bool
lease_soldout(lease_mgr_t *m, const char *sku, uint64_t n)
{
	struct lease_entry *e = find(m, sku);
	struct lease_peek p;

	if (e == NULL || e->leased)
		return false;
	peek_entry(e, &p);
	if (p.version == 0 || p.remaining >= n)
		return false;
	stock_stat_inc(&m->st.soldout_fast);
	return true;
}

int
lease_peek(lease_mgr_t *m, const char *sku, struct lease_peek *out)
{
	struct lease_entry *e = find(m, sku);

	if (e == NULL)
		return STOCK_ENOENT;
	peek_entry(e, out);
	return 0;
}

bool
lease_offer(lease_mgr_t *m, const char *sku, uint64_t remaining, uint64_t sold, uint64_t version,
    bool publish)
{
	struct lease_entry *e = find(m, sku);
	struct cache_state st = { remaining, sold, version, UINT64_MAX, UINT64_MAX, UINT64_MAX,
		UINT64_MAX };

	if (e == NULL)
		return false;
	if (lease__cache_offer(&e->cache, &st)) {
		if (!publish)
			stock_stat_inc(&m->st.events_applied);
		else if (m->opt.bus != NULL)
			(void)bus_publish(m->opt.bus, sku, remaining, version);
	}
	return true;
}

static void tend_return(struct lease_mgr *m, struct lease_entry *e);
static void poll_add(struct lease_mgr *m, const char *sku);

void
lease_learn_view(lease_mgr_t *m, const struct mongo_view *v)
{
	struct lease_entry *e = find(m, v->doc.sku);

	if (e != NULL)
		lease__learn(m, e, v, true);
}

int
lease_give_back(lease_mgr_t *m, const char *sku)
{
	struct lease_entry *e = find(m, sku);
	struct stock_level l;
	int rc = 0;

	if (e == NULL || !e->leased)
		return STOCK_ENOENT;
	pthread_mutex_lock(&e->mu);
	stock_counter_read(e->ctr, &l);
	if (lease__resolve(m, e) < 0 || e->broken)
		rc = STOCK_ESYS;
	else if (l.remaining == 0)
		rc = STOCK_ESOLDOUT;
	else
		tend_return(m, e);
	pthread_mutex_unlock(&e->mu);
	return rc;
}

int
lease_refresh(lease_mgr_t *m, const char *sku)
{
	struct lease_entry *e = find(m, sku);
	struct mongo_view v;
	int rc;

	if (e == NULL)
		return STOCK_ENOENT;
	if ((rc = mongo_view(m->opt.mongo, sku, &v)) != 0)
		return rc;
	lease__learn(m, e, &v, true);
	return 0;
}

int
lease_publish_all(lease_mgr_t *m)
{
	struct lease_peek p;
	uint64_t recorded, pool, pool_version;
	int rc = 0;

	if (m->opt.bus == NULL)
		return STOCK_EINVAL;
	for (size_t i = 0, n = count(m); i < n; i++) {
		lease__cache_read(&m->e[i].cache, &p, &recorded, &pool, &pool_version);
		if (bus_publish(m->opt.bus, m->e[i].sku, p.remaining, p.version) != 0)
			rc = STOCK_ENOMEM;
	}
	return rc;
}

void
lease_stats(lease_mgr_t *m, struct lease_stats *out)
{
	const struct lease_counters *c = &m->st;

	out->grants = stock_stat_sum(&c->grants);
	out->grant_units = stock_stat_sum(&c->grant_units);
	out->records = stock_stat_sum(&c->records);
	out->returns = stock_stat_sum(&c->returns);
	out->return_units = stock_stat_sum(&c->return_units);
	out->reclaims = stock_stat_sum(&c->reclaims);
	out->settles = stock_stat_sum(&c->settles);
	out->failures = stock_stat_sum(&c->failures);
	out->polls = stock_stat_sum(&c->polls);
	out->events_applied = stock_stat_sum(&c->events_applied);
	out->soldout_fast = stock_stat_sum(&c->soldout_fast);
	out->busy = stock_stat_sum(&c->busy);
	out->buyer_refills = stock_stat_sum(&c->buyer_refills);
	out->buyer_refill_last_ms = stock_gauge_get(&c->buyer_refill_last_ms);
}

/* ---- the lease thread --------------------------------------------------------------- */

/* Idle (or closing): record, and give the unsold units back. */
static void
tend_return(struct lease_mgr *m, struct lease_entry *e)
{
	uint64_t ret = lease__drain(e->ctr);
	int rc;

	if (ret == 0 && !(e->have_lease && (ledger_sold(e->slot) > e->lease.sold ||
	        e->lease.reclaimed)))
		return;
	if ((rc = lease__update(m, e, 0, 0, ret, true)) != 0)
		return; /* not applied: the units are back in the counter, or pending */
	stock_stat_inc(&m->st.records);
	if (ret > 0) {
		stock_stat_inc(&m->st.returns);
		stock_stat_add(&m->st.return_units, ret);
	}
}

/* Record (every record_ms while selling), settle, or renew (every lease_ms / 3). */
static void
tend_record(struct lease_mgr *m, struct lease_entry *e, uint64_t now)
{
	uint64_t since = now > e->last_renew_ns ? now - e->last_renew_ns : 0;
	int rc;

	if (!e->have_lease)
		return;
	if (!((ledger_sold(e->slot) > e->lease.sold && since >= ms_ns(m->opt.record_ms)) ||
	        e->lease.reclaimed || (lease_held(&e->lease) > 0 && since >= ms_ns(m->opt.lease_ms / 3))))
		return;
	if ((rc = lease__update(m, e, 0, 0, 0, false)) != 0)
		return;
	stock_stat_inc(&m->st.records);
}

/*
 * Active and below one grant (about a second of sales): refill ahead of the
 * buyers, before recording (a grant records the sales too), so that buyers
 * never wait behind a record. A round trip can take a second when the store
 * stalls; the counter then still holds about a second of sales. Returns
 * whether a grant was made (a failure is retried next tick; buyers refill
 * too). Entry lock held.
 */
static bool
refill_ahead(struct lease_mgr *m, struct lease_entry *e, const struct stock_level *l,
    uint64_t last_sale, uint64_t idle_for)
{
	bool current;

	if (last_sale == 0 || idle_for >= ms_ns(m->opt.idle_ms) ||
	    l->remaining >= grant_size(m, e, 1) || pool_known(e, &current) == 0)
		return false;
	return refill(m, e, 1, 0) == 0;
}

/*
 * A bus event told of a version newer than our last whole read, and what it
 * says does not fit a document that sells: fewer units than our counter
 * holds (a retire, or our lease reclaimed), or a change while retired (a
 * create that opens it again). Re-read it (the event carries no retired
 * flag). At most once per such event. Entry lock held.
 */
static void
reread_if_told(struct lease_mgr *m, struct lease_entry *e)
{
	struct peek_cache *c = &e->cache;
	struct stock_level l;
	struct mongo_view v;

	if (stock_gauge_get(&c->version) == stock_gauge_get(&c->pool_version))
		return;
	stock_counter_read(e->ctr, &l);
	if (!lease__retired(c) && stock_gauge_get(&c->remaining) >= l.remaining)
		return;
	if (mongo_view(m->opt.mongo, e->sku, &v) == 0)
		lease__learn(m, e, &v, false);
}

/* One SKU's round trips for this tick. */
static void
tend(struct lease_mgr *m, struct lease_entry *e, bool closing)
{
	uint64_t now, last_sale, idle_for;
	struct stock_level l;

	pthread_mutex_lock(&e->mu);
	if (lease__resolve(m, e) < 0 || e->broken) {
		pthread_mutex_unlock(&e->mu);
		return;
	}
	reread_if_told(m, e);
	if (lease__retired(&e->cache)) { /* no sales: record, give the units back */
		tend_return(m, e);
		pthread_mutex_unlock(&e->mu);
		return;
	}
	/* Read the clock after the last sale: a buy may land at any moment,
	   and a sale "after now" must not look like ages of idleness. */
	last_sale = stock_gauge_get(&e->last_sale_ns);
	now = stock_now_ns();
	idle_for = now > last_sale ? now - last_sale : 0;
	measure_rate(e, now);
	stock_counter_read(e->ctr, &l);
	if (closing || (l.remaining > 0 && idle_for >= ms_ns(m->opt.idle_ms))) {
		tend_return(m, e);
	} else if (!refill_ahead(m, e, &l, last_sale, idle_for)) {
		tend_record(m, e, now);
	}
	pthread_mutex_unlock(&e->mu);
}

/* Documents one poll adds at most (created at run time elsewhere); the next poll adds more. */
#define POLL_ADDS 8

/* Poll: re-read every document; reclaim the expired leases of other hosts. */
struct poll_ctx {
	struct lease_mgr *m;
	int64_t now_ms;
	size_t nnew;
	char fresh[POLL_ADDS][STOCK_SKU_MAX + 1]; /* SKUs we have no entry for */
};

/* Quarantine the expired lease @i of another host in lost (docs: "Reclaims into `lost`"). */
static void
reclaim(struct lease_mgr *m, struct lease_entry *e, const struct mongo_view *v, size_t i)
{
	const struct mongo_lease *l = &v->leases[i].lease;
	struct mongo_lease next = *l;
	struct mongo_view after;
	uint64_t held = lease_held(l);

	next.reclaimed = true;
	if (mongo_lease_cas(m->opt.mongo, v->doc.sku, v->leases[i].host, l, &next, 0, 0,
	        (int64_t)held, &after) != 0)
		return; /* changed meanwhile, or MongoDB failed: the next poll looks again */
	stock_stat_inc(&m->st.reclaims);
	log_warn("lease", "%s: reclaimed the expired lease of %s: %" PRIu64 " units quarantined "
	    "in lost until it comes back", v->doc.sku, v->leases[i].host, held);
	lease__learn(m, e, &after, true); /* remaining dropped by @held: tell the others */
}

static int
poll_one(const struct mongo_view *v, void *arg)
{
	struct poll_ctx *x = arg;
	struct lease_mgr *m = x->m;
	struct lease_entry *e = find(m, v->doc.sku);
	const char *pre = m->opt.reserved_prefix;

	if (e == NULL) { /* created after our open: added after the poll */
		if (x->nnew < POLL_ADDS && stock_sku_valid(v->doc.sku, strlen(v->doc.sku)) &&
		    (pre == NULL || strncmp(v->doc.sku, pre, strlen(pre)) != 0))
			snprintf(x->fresh[x->nnew++], sizeof x->fresh[0], "%s", v->doc.sku);
		return 0;
	}
	/* Not published: every instance polls, and whoever changed the
	   document published that change already. */
	lease__learn(m, e, v, false);
	for (size_t i = 0; i < v->nleases; i++) {
		const struct mongo_lease *l = &v->leases[i].lease;

		if (strcmp(v->leases[i].host, m->host) == 0 || l->reclaimed ||
		    l->expires_ms >= x->now_ms)
			continue;
		if (!lease_sane(l)) {
			log_warn("lease", "%s: leases.%s does not fit (granted %" PRIu64 ", sold %"
			    PRIu64 ", returned %" PRIu64 "): not reclaimed", v->doc.sku,
			    v->leases[i].host, l->granted, l->sold, l->returned);
			continue;
		}
		if (lease_held(l) > 0)
			reclaim(m, e, v, i);
	}
	return 0;
}

/* Units sold from every lease so far (the ledger's sum). */
static uint64_t
ledger_total(struct lease_mgr *m)
{
	uint64_t sum = 0;

	for (size_t i = 0, n = count(m); i < n; i++)
		if (m->e[i].leased)
			sum += ledger_sold(m->e[i].slot);
	return sum;
}

static void *
run(void *arg)
{
	struct lease_mgr *m = arg;
	uint64_t last_poll = 0, last_sync = 0, synced_total = ledger_total(m);

	while (!stock_latch_is_set(&m->stop)) {
		uint64_t now = stock_now_ns(), total;
		struct timespec dl;

		for (size_t i = 0, n = count(m); i < n; i++)
			if (m->e[i].leased)
				tend(m, &m->e[i], false);
		/* The ledger on disk at most about one record period behind the
		   sales, MongoDB up or not: what a power loss can cost. */
		total = ledger_total(m);
		if (total != synced_total && now - last_sync >= ms_ns(m->opt.record_ms)) {
			(void)ledger_sync(m->ledger);
			synced_total = total;
			last_sync = now;
		}
		if (now - last_poll >= ms_ns(m->opt.poll_ms) || stock_gauge_get(&m->discover) != 0) {
			struct poll_ctx x = { .m = m, .now_ms = util_wall_ms() };

			last_poll = now;
			stock_gauge_set(&m->discover, 0);
			if (mongo_view_all(m->opt.mongo, poll_one, &x) == 0)
				stock_stat_inc(&m->st.polls);
			for (size_t i = 0; i < x.nnew; i++)
				poll_add(m, x.fresh[i]);
		}
		stock_deadline_in(&dl, TICK_MS);
		(void)stock_latch_wait(&m->stop, &dl);
	}
	return NULL;
}

/* ---- open / close ---------------------------------------------------------------------- */

/* Start-up with the lease @l as stored: record the ledger's sales, return the rest. */
static int
reconcile_lease(struct lease_mgr *m, struct lease_entry *e, const struct mongo_lease *l)
{
	uint64_t sold = ledger_sold(e->slot), unsold, unrec, settles;
	int rc;

	e->lease = *l;
	e->have_lease = true;
	if (sold < l->sold || sold > l->granted - l->returned) {
		log_warn("lease", "%s: ledger (sold %" PRIu64 ") does not fit leases.%s (granted %"
		    PRIu64 ", sold %" PRIu64 ", returned %" PRIu64 "); trusting MongoDB", e->sku,
		    sold, m->host, l->granted, l->sold, l->returned);
		ledger_set_sold(e->slot, sold = l->sold);
	}
	e->slot->granted = l->granted;
	e->slot->returned = l->returned;
	if (lease_held(l) == 0 && !l->reclaimed)
		return 0; /* nothing held, nothing unrecorded */
	unsold = l->granted - l->returned - sold;
	unrec = sold - l->sold;
	settles = stock_stat_sum(&m->st.settles); /* one thread at open: exact */
	/* The unsold units are in the stored lease, not in the (empty) counter:
	   if the return does not apply, nothing goes into the counter. */
	rc = lease__update(m, e, 0, 0, unsold, false);
	if (rc == 0)
		log_info("lease", "%s: recovered lease: %" PRIu64 " sales recorded, %" PRIu64
		    " units returned%s", e->sku, unrec, unsold,
		    stock_stat_sum(&m->st.settles) > settles ? " (it had been reclaimed: settled)" :
		    "");
	return rc;
}

/*
 * Start-up: make MongoDB agree with the ledger (docs: "Settling after a
 * restart"). The ledger's sales beyond the lease's recorded sold are
 * recorded; the rest of the lease goes back to the pool (a reclaimed lease
 * is settled the same way).
 */
static int
reconcile(struct lease_mgr *m, struct lease_entry *e, const struct mongo_view *v)
{
	const struct mongo_lease *l;

	lease__learn(m, e, v, false);
	if ((l = view_lease(v, m->host)) == NULL) {
		if (e->slot->granted != 0 || ledger_sold(e->slot) != 0)
			log_warn("lease", "%s: the ledger knows a lease MongoDB does not (another "
			    "database?); starting a new ledger for it", e->sku);
		e->slot->granted = e->slot->returned = 0;
		ledger_set_sold(e->slot, 0);
		e->have_lease = false;
		return 0;
	}
	if (!lease_sane(l)) {
		log_error("lease", "%s: leases.%s does not fit (granted %" PRIu64 ", sold %" PRIu64
		    ", returned %" PRIu64 "): fix the document", e->sku, m->host, l->granted,
		    l->sold, l->returned);
		return STOCK_EINVAL;
	}
	return reconcile_lease(m, e, l);
}

/* Undo entry_build: an entry never published, or at free. */
static void
entry_destroy(struct lease_entry *e)
{
	stock_version_destroy(&e->cache.seq);
	pthread_mutex_destroy(&e->mu);
	if (e->leased)
		stock_permits_destroy(&e->waiters);
	if (e->owns_ctr)
		stock_counter_destroy(&e->own);
	memset(e, 0, sizeof *e);
}

static void
mgr_free(struct lease_mgr *m)
{
	for (size_t i = 0, n = count(m); i < n; i++)
		entry_destroy(&m->e[i]);
	ledger_close(m->ledger);
	stock_latch_destroy(&m->stop);
	pthread_mutex_destroy(&m->add_mu);
	free(m->e);
	free(m);
}

void
lease_close(lease_mgr_t *m)
{
	if (m == NULL)
		return;
	stock_latch_set(&m->stop);
	if (m->thread_started)
		pthread_join(m->thread, NULL);
	/* Record every sale and hand every unsold unit back. */
	for (size_t i = 0, n = count(m); i < n; i++)
		if (m->e[i].leased)
			tend(m, &m->e[i], true);
	mgr_free(m);
}

/* The manager with room for every entry and the options' defaults. */
static struct lease_mgr *
mgr_new(const struct lease_options *opt)
{
	struct lease_mgr *m = util_cache_zalloc(sizeof *m);

	if (m == NULL)
		return NULL;
	if ((m->e = calloc(LEASE_ENTRIES_MAX, sizeof *m->e)) == NULL) {
		free(m);
		return NULL;
	}
	m->opt = *opt;
	if (m->opt.block == 0)
		m->opt.block = 1000;
	if (m->opt.lease_ms == 0)
		m->opt.lease_ms = 10000;
	if (m->opt.record_ms == 0)
		m->opt.record_ms = 100;
	if (m->opt.poll_ms == 0)
		m->opt.poll_ms = 1000;
	if (m->opt.idle_ms == 0)
		m->opt.idle_ms = 2000;
	if (m->opt.waiters == 0)
		m->opt.waiters = 64;
	snprintf(m->host, sizeof m->host, "%s", opt->host_id);
	stock_latch_init(&m->stop, false);
	pthread_mutex_init(&m->add_mu, NULL);
	return m;
}

/*
 * Build the entry of @sku in the first free e[] place (not yet published):
 * leased when @ctr is set (NULL with @own: a counter of its own), brought up
 * to date with the document; a leased one reconciled with the ledger. Open,
 * or add_mu held. On failure nothing is left of it (a claimed ledger slot
 * stays: the next try finds it by name).
 */
static int
entry_build(struct lease_mgr *m, const char *sku, struct stock_counter *ctr, bool own,
    struct lease_entry **out)
{
	size_t k = count(m);
	struct lease_entry *e = &m->e[k];
	struct mongo_view v;
	int rc;

	if (!stock_sku_valid(sku, strlen(sku)))
		return STOCK_EINVAL;
	if (find(m, sku) != NULL)
		return STOCK_EEXIST;
	if (k == LEASE_ENTRIES_MAX)
		return STOCK_ENOMEM;
	if (ctr != NULL) {
		struct stock_level l;

		if (stock_counter_read(ctr, &l) != 0 || l.remaining != 0) {
			log_error("lease", "%s: its counter must start empty", sku);
			return STOCK_EINVAL;
		}
	}
	/* Read first: no ledger slot for a name without a document (lease_add's
	   callers say why they asked). A read-through SKU without one is a miss
	   later. */
	rc = mongo_view(m->opt.mongo, sku, &v);
	if (rc != 0 && (ctr != NULL || own || rc != STOCK_ENOENT)) {
		if (!own)
			log_error("lease", "%s: cannot read the document: %s", sku,
			    stock_strerror(rc));
		return rc;
	}
	if (own && stock_counter_init(&e->own, STOCK_STRATEGY_ATOMIC, 0) != 0)
		return STOCK_ENOMEM;
	if (stock_version_init(&e->cache.seq) != 0) {
		if (own)
			stock_counter_destroy(&e->own);
		return STOCK_ESYS;
	}
	pthread_mutex_init(&e->mu, NULL);
	e->owns_ctr = own;
	snprintf(e->sku, sizeof e->sku, "%s", sku);
	if (ctr == NULL && !own) { /* read-through */
		if (rc == 0)
			lease__learn(m, e, &v, false);
		rc = 0;
		goto out;
	}
	if (stock_permits_init(&e->waiters, m->opt.waiters) != 0) {
		rc = STOCK_EINVAL;
		goto out;
	}
	e->leased = true;
	e->ctr = own ? &e->own : ctr;
	if ((e->slot = ledger_slot(m->ledger, sku)) == NULL) {
		log_error("lease", "%s: the ledger is full (%d SKUs)", sku, LEDGER_SLOTS);
		rc = STOCK_ENOMEM;
		goto out;
	}
	rc = reconcile(m, e, &v);
out:
	if (rc != 0)
		entry_destroy(e);
	else
		*out = e;
	return rc;
}

int
lease_add(lease_mgr_t *m, const char *sku)
{
	struct lease_entry *e;
	int rc;

	pthread_mutex_lock(&m->add_mu);
	rc = entry_build(m, sku, NULL, true, &e);
	if (rc == 0) {
		(void)ledger_sync(m->ledger); /* the slot's claim on disk */
		publish(m, e);
	}
	pthread_mutex_unlock(&m->add_mu);
	if (rc == 0)
		log_info("lease", "%s: now sold here (created at run time)", sku);
	return rc;
}

bool
lease_has_room(lease_mgr_t *m, const char *sku)
{
	bool room;

	pthread_mutex_lock(&m->add_mu); /* slots are claimed under it */
	room = find(m, sku) != NULL ||
	    (count(m) < LEASE_ENTRIES_MAX && ledger_has_room(m->ledger, sku));
	pthread_mutex_unlock(&m->add_mu);
	return room;
}

/* A document the poll found that we have no entry for: add it (lease thread). */
static void
poll_add(struct lease_mgr *m, const char *sku)
{
	int rc = lease_add(m, sku);

	if (rc == STOCK_ENOMEM && !m->full_logged) {
		m->full_logged = true;
		log_warn("lease", "%s (and maybe more): not sold here, the ledger is full (%d SKUs)",
		    sku, LEDGER_SLOTS);
	} else if (rc != 0 && rc != STOCK_EEXIST && rc != STOCK_ENOMEM) {
		log_warn("lease", "%s: cannot start selling it: %s (the next poll tries again)", sku,
		    stock_strerror(rc));
	}
}

void
lease_discover(lease_mgr_t *m)
{
	stock_gauge_set(&m->discover, 1);
}

int
lease_list(lease_mgr_t *m, lease_list_fn fn, void *arg)
{
	for (size_t i = 0, n = count(m); i < n; i++) {
		struct lease_peek p;
		int rc;

		peek_entry(&m->e[i], &p);
		if ((rc = fn(m->e[i].sku, &p, arg)) != 0)
			return rc;
	}
	return 0;
}

int
lease_open(lease_mgr_t **out, const struct lease_options *opt, const char *const *leased,
    struct stock_counter *const *counters, size_t nleased, const char *const *plain,
    size_t nplain)
{
	struct lease_mgr *m;
	int rc;

	*out = NULL;
	if (opt == NULL || opt->mongo == NULL || opt->host_id == NULL || opt->ledger_path == NULL ||
	    !host_id_valid(opt->host_id, strlen(opt->host_id)) ||
	    nleased + nplain > LEASE_ENTRIES_MAX)
		return STOCK_EINVAL;
	if ((m = mgr_new(opt)) == NULL)
		return STOCK_ENOMEM;
	if ((rc = ledger_open(&m->ledger, opt->ledger_path, m->host)) != 0)
		goto fail;
	for (size_t i = 0; i < nleased + nplain; i++) {
		const char *sku = i < nleased ? leased[i] : plain[i - nleased];
		struct lease_entry *e;

		rc = entry_build(m, sku, i < nleased ? counters[i] : NULL, false, &e);
		if (rc == STOCK_EEXIST) {
			log_error("lease", "%s is listed twice", sku);
			rc = STOCK_EINVAL;
		}
		if (rc != 0)
			goto fail;
		publish(m, e);
	}
	(void)ledger_sync(m->ledger);
	if (pthread_create(&m->thread, NULL, run, m) != 0) {
		rc = STOCK_ESYS;
		goto fail;
	}
	m->thread_started = true;
	*out = m;
	return 0;
fail:
	mgr_free(m); /* no thread, and no sales: nothing to record or return */
	return rc;
}
