/*
 * Leases: how several demo-server instances sell one MongoDB stock from
 * memory without overselling.
 *
 * A SKU's document holds the unleased pool (`stock`), the recorded sales
 * (`sold`), units quarantined from dead instances (`lost`) and one lease per
 * instance, leases.<host> = {granted, sold, returned, expires, reclaimed},
 * three cumulative counts whose difference (held = granted - sold -
 * returned) is what the instance may still sell. Every change is ONE
 * findAndModify on that one document (store_mongo_lease_cas), guarded by the
 * exact lease it expects, so it applies once or not at all and needs no
 * transaction:
 *   grant   stock -= b, granted += b      only if stock >= b (never oversells)
 *   record  sold += k (doc and lease)      the sales made since the last record
 *   return  stock += u, returned += u      unsold units back to the pool
 *   reclaim lost += held, reclaimed = true another instance, once the lease
 *                                          expired (its owner stopped renewing)
 *   settle  the owner of a reclaimed lease records its sales and moves the
 *           rest out of lost again (reclaimed = false)
 * A reclaim quarantines units, it never returns them to the pool: the dead
 * instance may have sold some of them without recording it, so resale could
 * oversell. When the instance comes back it settles and the totals are exact
 * again; if it never does, `lost` is the bound on what its death cost (its
 * unrecorded sales plus its unsold remainder), for an operator to release.
 *
 * The sales ledger makes "comes back" exact even after kill -9: a MAP_SHARED
 * file in the data directory holds, per SKU, the cumulative units sold from
 * leases. A buy adds to it (one atomic add on a page-cache page) BEFORE the
 * reply is sent, so a process kill never loses an acknowledged buy: at the
 * next start the ledger minus the lease's recorded `sold` is exactly what was
 * sold but not recorded. (A power loss can lose what the kernel had not
 * written back; the ledger is msync'ed after each record.)
 *
 * After a round trip with an unknown outcome (timeout, connection lost) the
 * SKU is "unsure": nothing else is sent for it until a re-read tells whether
 * the stored lease is the one we expected (not applied) or the one we sent
 * (applied), which is why every update must change the lease.
 *
 * One thread per instance records sales every record_ms, renews leases,
 * refills active leases before they run dry, returns idle ones, re-reads
 * every document each poll_ms (peek caches; DB-side corrections; lost bus
 * events) and reclaims expired leases of other hosts. Peek caches hold the
 * newest {remaining, sold, version} by document version, fed by our own
 * round trips, the poll and the bus; every update we make is published.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lease.h"

/* ---- the ledger file ---------------------------------------------------- */

#define LEDGER_MAGIC "STKLDG01"
#define LEDGER_SLOTS 256

struct ledger_slot {
	char sku[72];
	uint64_t granted;  /* == the lease's granted once a grant is known applied */
	uint64_t sold;     /* cumulative units sold from leases (atomic add per buy) */
	uint64_t returned; /* == the lease's returned once known applied */
};

struct ledger {
	char magic[8];
	char host[72];
	uint32_t nslots;
	uint32_t pad;
	struct ledger_slot slot[LEDGER_SLOTS];
};

/* ---- the manager -------------------------------------------------------- */

struct peek_cache {
	struct stock_version seq; /* seqlock around the three values */
	uint64_t remaining, sold, version;
};

struct lease_entry {
	char sku[STORE_SKU_MAX + 1];
	bool leased;
	struct peek_cache cache;
	/* leased entries only: */
	struct stock_counter *ctr;  /* our unsold units */
	struct ledger_slot *slot;
	pthread_mutex_t mu;         /* serializes round trips on this SKU */
	struct store_lease lease;   /* last known stored lease (under mu) */
	bool have_lease;            /* leases.<host> exists (under mu) */
	bool unsure;                /* last round trip's outcome unknown (under mu) */
	struct store_lease unsure_next;
	uint64_t unsure_grant, unsure_return;
	bool broken;                /* the stored lease is not ours any more: stop */
	uint64_t recorded_sold;     /* atomic copy of lease.sold, for peeks */
	uint64_t pool;              /* atomic: last seen stock of the document */
	uint64_t last_sale_ns;      /* atomic */
	uint64_t last_renew_ns;     /* under mu */
	uint64_t rate;              /* under mu: units sold per second (smoothed) */
	uint64_t rate_mark_sold, rate_mark_ns; /* under mu */
};

struct lease_mgr {
	struct lease_options opt;
	char host[STORE_HOST_MAX + 1];
	struct lease_entry *e;
	size_t n;
	size_t *index, index_cap; /* open addressing over e[], built at open, then read-only */
	struct ledger *ledger;
	int ledger_fd;
	pthread_t thread;
	pthread_mutex_t stop_mu;
	pthread_cond_t stop_cv;
	bool stop;
	struct lease_stats st; /* atomics */
};

static void
lg(struct lease_mgr *m, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (m->opt.log != NULL)
		m->opt.log(buf);
	else
		fprintf(stderr, "lease: %s\n", buf);
}

/* update(): our lease was reclaimed meanwhile; call again to settle it. */
#define LEASE_RETRY 1

#define STAT_ADD(m, f, v) __atomic_add_fetch(&(m)->st.f, (v), __ATOMIC_RELAXED)

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t
ms_ns(unsigned ms)
{
	return (uint64_t)ms * 1000000ULL;
}

/* Same counts and expiry: the same update (a reclaim only sets the flag). */
static bool
lease_same(const struct store_lease *a, const struct store_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms;
}

static bool
lease_eq(const struct store_lease *a, const struct store_lease *b)
{
	return lease_same(a, b) && a->reclaimed == b->reclaimed;
}

static const struct store_lease *
view_lease(const struct store_mongo_view *v, const char *host)
{
	for (size_t i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

/* remaining = pool + what live leases still hold (their unrecorded sales included). */
static uint64_t
view_remaining(const struct store_mongo_view *v)
{
	uint64_t r = v->doc.stock;

	for (size_t i = 0; i < v->nleases; i++) {
		const struct store_lease *l = &v->leases[i].lease;
		if (!l->reclaimed && l->granted >= l->sold + l->returned)
			r += l->granted - l->sold - l->returned;
	}
	return r;
}

static size_t
sku_hash(const char *sku)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *sku; sku++)
		h = (h ^ (unsigned char)*sku) * 1099511628211ULL;
	return (size_t)h;
}

/* The entry of @sku (a buy's lookup: no lock, the index never changes after open). */
static struct lease_entry *
find(struct lease_mgr *m, const char *sku)
{
	for (size_t i = sku_hash(sku) & (m->index_cap - 1);; i = (i + 1) & (m->index_cap - 1)) {
		size_t k = m->index[i];
		if (k == 0)
			return NULL;
		if (strcmp(m->e[k - 1].sku, sku) == 0)
			return &m->e[k - 1];
	}
}

static int
index_build(struct lease_mgr *m)
{
	m->index_cap = 16;
	while (m->index_cap < 2 * m->n)
		m->index_cap *= 2;
	if ((m->index = calloc(m->index_cap, sizeof *m->index)) == NULL)
		return STOCK_ENOMEM;
	for (size_t k = 0; k < m->n; k++) {
		size_t i = sku_hash(m->e[k].sku) & (m->index_cap - 1);
		while (m->index[i] != 0)
			i = (i + 1) & (m->index_cap - 1);
		m->index[i] = k + 1; /* 0 = empty */
	}
	return 0;
}

/* ---- peek caches -------------------------------------------------------- */

static bool
cache_offer(struct peek_cache *c, uint64_t remaining, uint64_t sold, uint64_t version)
{
	bool newer;

	stock_version_write_lock(&c->seq);
	newer = version > c->version;
	if (newer) {
		/* A bus event carries no sold count: estimate it from the drop in
		   remaining (exact unless a restock happened; the poll corrects). */
		if (sold == UINT64_MAX)
			sold = c->sold + (remaining < c->remaining ? c->remaining - remaining : 0);
		ck_pr_store_64(&c->remaining, remaining);
		ck_pr_store_64(&c->sold, sold);
		ck_pr_store_64(&c->version, version);
	}
	stock_version_write_unlock(&c->seq);
	return newer;
}

static void
cache_read(struct peek_cache *c, struct lease_peek *out)
{
	uint64_t t;

	do {
		t = stock_version_read_begin(&c->seq);
		out->remaining = ck_pr_load_64(&c->remaining);
		out->sold = ck_pr_load_64(&c->sold);
		out->version = ck_pr_load_64(&c->version);
	} while (stock_version_read_retry(&c->seq, t));
}

/* Our view of a document we just read or wrote: cache it, note the pool, publish. */
static void
learn(struct lease_mgr *m, struct lease_entry *e, const struct store_mongo_view *v, bool publish)
{
	uint64_t rem = view_remaining(v);

	if (e->leased)
		ck_pr_store_64(&e->pool, v->doc.stock);
	if (cache_offer(&e->cache, rem, v->doc.sold, v->doc.version) && publish && m->opt.bus)
		bus_publish(m->opt.bus, e->sku, rem, v->doc.version);
}

/* ---- the lease protocol (entry lock held) ------------------------------- */

/* The local effects of an update known to be applied. */
static void
applied(struct lease_mgr *m, struct lease_entry *e, const struct store_lease *next,
    uint64_t grant)
{
	e->lease = *next;
	e->have_lease = true;
	e->slot->granted = next->granted;
	e->slot->returned = next->returned;
	ck_pr_store_64(&e->recorded_sold, next->sold);
	e->last_renew_ns = stock_now_ns();
	if (grant > 0) /* a grant is activity: not idle until idle_ms from now */
		ck_pr_store_64(&e->last_sale_ns, e->last_renew_ns);
	if (grant > 0 && stock_counter_restock(e->ctr, grant) != 0)
		lg(m, "%s: could not add %llu granted units to the counter", e->sku,
		    (unsigned long long)grant);
}

/* The local effects of an update known NOT to be applied. */
static void
not_applied(struct lease_mgr *m, struct lease_entry *e, uint64_t ret)
{
	if (ret > 0 && stock_counter_restock(e->ctr, ret) != 0)
		lg(m, "%s: could not put %llu units back", e->sku, (unsigned long long)ret);
}

/*
 * After a round trip whose outcome is unknown: re-read the lease to learn
 * it. 0 when settled (either way), STOCK_ESYS when MongoDB still cannot say.
 */
static int
resolve(struct lease_mgr *m, struct lease_entry *e)
{
	struct store_mongo_view v;
	const struct store_lease *l;

	if (!e->unsure)
		return 0;
	if (store_mongo_view(m->opt.store, e->sku, &v) != 0)
		return STOCK_ESYS;
	learn(m, e, &v, false);
	l = view_lease(&v, m->host);
	e->unsure = false;
	/* Applied: the stored lease carries our counts and expiry (a reclaim since
	   would only have set its flag, which the next record settles). */
	if (l != NULL && lease_same(l, &e->unsure_next)) {
		applied(m, e, &e->unsure_next, e->unsure_grant);
		e->lease = *l;
		lg(m, "%s: the update whose outcome was unknown had been applied", e->sku);
		return 0;
	}
	not_applied(m, e, e->unsure_return);
	if (l != NULL && !lease_eq(l, &e->lease)) {
		/* Reclaimed meanwhile: adopt it (the next record settles it). */
		e->lease = *l;
		e->have_lease = true;
	}
	return 0;
}

/*
 * One update of our lease: @grant units from the pool, @ret units back to it
 * (already taken out of the counter), the ledger's sales recorded, renewed.
 */
static int
update(struct lease_mgr *m, struct lease_entry *e, uint64_t grant, uint64_t ret)
{
	struct store_mongo_view after;
	struct store_lease next;
	const struct store_lease *expect = e->have_lease ? &e->lease : NULL;
	uint64_t sold = ck_pr_load_64(&e->slot->sold);
	int64_t d_lost = 0;
	int rc;

	if (e->broken) {
		not_applied(m, e, ret);
		return STOCK_ECONFLICT;
	}
	if (expect != NULL) {
		next = *expect;
		if (sold < expect->sold)
			sold = expect->sold; /* never un-record */
		if (expect->reclaimed)
			d_lost = -(int64_t)(expect->granted - expect->sold - expect->returned);
	} else {
		memset(&next, 0, sizeof next);
		sold = 0;
	}
	next.granted += grant;
	next.sold = sold;
	next.returned += ret;
	next.reclaimed = false;
	next.expires_ms = wall_ms() + m->opt.lease_ms;
	if (expect != NULL && next.expires_ms == expect->expires_ms)
		next.expires_ms++; /* next must differ from expect */
	rc = store_mongo_lease_cas(m->opt.store, e->sku, m->host, expect, &next,
	    (int64_t)ret - (int64_t)grant, (int64_t)(sold - (expect ? expect->sold : 0)), d_lost,
	    &after);
	if (rc == 0) {
		applied(m, e, &next, grant);
		learn(m, e, &after, true);
		return 0;
	}
	STAT_ADD(m, failures, 1);
	if (rc == STOCK_ESYS) {
		e->unsure = true;
		e->unsure_next = next;
		e->unsure_grant = grant;
		e->unsure_return = ret;
		(void)resolve(m, e);
		if (!e->unsure && e->have_lease && lease_same(&e->lease, &next))
			return 0; /* it had been applied */
		return STOCK_ESYS;
	}
	if (rc == STOCK_ECONFLICT) {
		struct store_mongo_view v;
		const struct store_lease *l;

		if (store_mongo_view(m->opt.store, e->sku, &v) == 0) {
			learn(m, e, &v, false);
			l = view_lease(&v, m->host);
			if (l != NULL && expect != NULL && l->reclaimed && !expect->reclaimed &&
			    l->granted == expect->granted && l->sold == expect->sold &&
			    l->returned == expect->returned) {
				lg(m, "%s: our lease was reclaimed by another instance; settling it",
				    e->sku);
				e->lease = *l;
				return LEASE_RETRY; /* @ret stays out of the counter for the retry */
			}
			e->broken = true;
			lg(m, "%s: leases.%s was changed by someone else (another instance with host "
			      "id '%s'?): no more sales from this lease", e->sku, m->host, m->host);
		}
	}
	not_applied(m, e, ret);
	return rc;
}

/* ---- the buy path -------------------------------------------------------- */

/*
 * Units to ask for: about a second of this instance's recent sales, at least
 * --lease-block, at most 1/8 of the pool (so the last units spread across
 * instances), at least @n. Entry lock held.
 */
static uint64_t
grant_size(struct lease_mgr *m, struct lease_entry *e, uint64_t n)
{
	uint64_t pool = ck_pr_load_64(&e->pool);
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
	uint64_t sold = ck_pr_load_64(&e->slot->sold), dt = now - e->rate_mark_ns;

	if (dt < 100000000ULL)
		return;
	if (e->rate_mark_ns != 0) {
		uint64_t r = (sold - e->rate_mark_sold) * 1000000000ULL / dt;
		e->rate = (e->rate + r) / 2;
	}
	e->rate_mark_sold = sold;
	e->rate_mark_ns = now;
}

/* Refill so that @n units can be taken. Entry lock held. */
static int
refill(struct lease_mgr *m, struct lease_entry *e, uint64_t n)
{
	uint64_t want = grant_size(m, e, n);
	int rc, tries = 0;

	if (e->unsure && resolve(m, e) != 0)
		return STOCK_ESYS;
	for (;;) {
		rc = update(m, e, want, 0);
		if (rc == LEASE_RETRY && ++tries < 3)
			continue;
		if (rc == 0) {
			STAT_ADD(m, grants, 1);
			STAT_ADD(m, grant_units, want);
			return 0;
		}
		if (rc != STOCK_ESOLDOUT || ++tries > 4)
			return rc == LEASE_RETRY ? STOCK_ESYS : rc;
		/* The pool is smaller than asked: take what is left, if it covers n. */
		{
			struct store_mongo_view v;
			uint64_t pool;

			if (store_mongo_view(m->opt.store, e->sku, &v) != 0)
				return STOCK_ESYS;
			learn(m, e, &v, false);
			pool = v.doc.stock;
			if (pool < n)
				return STOCK_ESOLDOUT;
			want = pool < want ? pool : want;
		}
	}
}

static void
peek_entry(struct lease_entry *e, struct lease_peek *out)
{
	cache_read(&e->cache, out);
	if (e->leased) {
		uint64_t unrec = ck_pr_load_64(&e->slot->sold) - ck_pr_load_64(&e->recorded_sold);
		out->remaining = out->remaining > unrec ? out->remaining - unrec : 0;
		out->sold += unrec;
	}
}

int
lease_take(lease_mgr_t *m, const char *sku, uint64_t n, struct lease_peek *after)
{
	struct lease_entry *e = find(m, sku);
	struct stock_level l;
	int rc;

	if (e == NULL || !e->leased)
		return STOCK_ENOENT;
	for (int tries = 0; tries < 16; tries++) {
		rc = stock_counter_take(e->ctr, n);
		if (rc == 0) {
			/* In the ledger before the reply: a kill -9 cannot lose it. */
			__atomic_add_fetch(&e->slot->sold, n, __ATOMIC_RELEASE);
			ck_pr_store_64(&e->last_sale_ns, stock_now_ns());
			if (after != NULL)
				peek_entry(e, after);
			return 0;
		}
		if (rc != STOCK_ESOLDOUT)
			return rc;
		pthread_mutex_lock(&e->mu);
		stock_counter_read(e->ctr, &l);
		rc = l.remaining >= n ? 0 : refill(m, e, n);
		pthread_mutex_unlock(&e->mu);
		if (rc != 0)
			return rc;
	}
	return STOCK_EBUSY; /* others drained every refill first: retry later */
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

void
lease_offer(lease_mgr_t *m, const char *sku, uint64_t remaining, uint64_t sold, uint64_t version,
    bool publish)
{
	struct lease_entry *e = find(m, sku);

	if (e == NULL)
		return;
	if (cache_offer(&e->cache, remaining, sold, version)) {
		if (!publish)
			STAT_ADD(m, events_applied, 1);
		else if (m->opt.bus != NULL)
			bus_publish(m->opt.bus, sku, remaining, version);
	}
}

int
lease_refresh(lease_mgr_t *m, const char *sku)
{
	struct lease_entry *e = find(m, sku);
	struct store_mongo_view v;
	int rc;

	if (e == NULL)
		return STOCK_ENOENT;
	if ((rc = store_mongo_view(m->opt.store, sku, &v)) != 0)
		return rc;
	learn(m, e, &v, true);
	return 0;
}

int
lease_publish_all(lease_mgr_t *m)
{
	struct lease_peek p;
	int rc = 0;

	if (m->opt.bus == NULL)
		return STOCK_EINVAL;
	for (size_t i = 0; i < m->n; i++) {
		cache_read(&m->e[i].cache, &p);
		if (bus_publish(m->opt.bus, m->e[i].sku, p.remaining, p.version) != 0)
			rc = STOCK_ENOMEM;
	}
	return rc;
}

void
lease_stats(lease_mgr_t *m, struct lease_stats *out)
{
	uint64_t *dst = (uint64_t *)out, *src = (uint64_t *)&m->st;

	for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

/* ---- the background thread ---------------------------------------------- */

/* Take every unsold unit out of the counter (for a return). */
static uint64_t
drain_counter(struct stock_counter *c)
{
	struct stock_level l;
	uint64_t got = 0;

	for (int i = 0; i < 64; i++) {
		stock_counter_read(c, &l);
		if (l.remaining == 0)
			break;
		if (stock_counter_take(c, l.remaining) == 0) {
			got += l.remaining;
			break;
		}
	}
	return got;
}

static void
tend(struct lease_mgr *m, struct lease_entry *e, bool closing)
{
	uint64_t now = stock_now_ns(), sold, last_sale;
	struct stock_level l;
	int rc;

	pthread_mutex_lock(&e->mu);
	if ((e->unsure && resolve(m, e) != 0) || e->broken) {
		pthread_mutex_unlock(&e->mu);
		return;
	}
	measure_rate(e, now);
	sold = ck_pr_load_64(&e->slot->sold);
	last_sale = ck_pr_load_64(&e->last_sale_ns);
	stock_counter_read(e->ctr, &l);
	if (closing || (l.remaining > 0 && now - last_sale >= ms_ns(m->opt.idle_ms))) {
		/* Idle (or shutting down): give the unsold units back to the pool. */
		uint64_t ret = drain_counter(e->ctr);
		if (ret > 0 || (e->have_lease && sold > e->lease.sold) ||
		    (e->have_lease && e->lease.reclaimed)) {
			do
				rc = update(m, e, 0, ret);
			while (rc == LEASE_RETRY);
			if (rc == 0) {
				STAT_ADD(m, records, 1);
				if (ret > 0) {
					STAT_ADD(m, returns, 1);
					STAT_ADD(m, return_units, ret);
				}
			}
		}
	} else if (e->have_lease &&
	    ((sold > e->lease.sold && now - e->last_renew_ns >= ms_ns(m->opt.record_ms)) ||
		e->lease.reclaimed ||
		(e->lease.granted > e->lease.sold + e->lease.returned &&
		    now - e->last_renew_ns >= ms_ns(m->opt.lease_ms / 3)))) {
		do
			rc = update(m, e, 0, 0);
		while (rc == LEASE_RETRY);
		if (rc == 0)
			STAT_ADD(m, records, 1);
	}
	/* Active and running low: refill ahead of the buyers. */
	stock_counter_read(e->ctr, &l);
	if (!closing && !e->unsure && !e->broken && now - last_sale < ms_ns(m->opt.idle_ms) &&
	    last_sale != 0 && l.remaining < grant_size(m, e, 1) / 2 + 1 &&
	    ck_pr_load_64(&e->pool) > 0)
		(void)refill(m, e, 1); /* a failure is retried next tick; buyers refill too */
	pthread_mutex_unlock(&e->mu);
}

/* Poll: re-read every document; reclaim the expired leases of other hosts. */
struct poll_ctx {
	struct lease_mgr *m;
	int64_t now_ms;
};

static int
poll_one(const struct store_mongo_view *v, void *arg)
{
	struct poll_ctx *x = arg;
	struct lease_mgr *m = x->m;
	struct lease_entry *e = find(m, v->doc.sku);

	if (e == NULL)
		return 0;
	(void)cache_offer(&e->cache, view_remaining(v), v->doc.sold, v->doc.version);
	if (e->leased)
		ck_pr_store_64(&e->pool, v->doc.stock);
	for (size_t i = 0; i < v->nleases; i++) {
		const struct store_lease *l = &v->leases[i].lease;
		struct store_lease next;
		uint64_t held;
		int rc;

		if (strcmp(v->leases[i].host, m->host) == 0 || l->reclaimed ||
		    l->expires_ms >= x->now_ms || l->granted < l->sold + l->returned)
			continue;
		held = l->granted - l->sold - l->returned;
		if (held == 0)
			continue;
		next = *l;
		next.reclaimed = true;
		rc = store_mongo_lease_cas(m->opt.store, v->doc.sku, v->leases[i].host, l, &next, 0,
		    0, (int64_t)held, NULL);
		if (rc == 0) {
			STAT_ADD(m, reclaims, 1);
			lg(m, "%s: reclaimed the expired lease of %s: %llu units quarantined in lost "
			      "until it comes back", v->doc.sku, v->leases[i].host,
			    (unsigned long long)held);
		}
	}
	return 0;
}

static void *
run(void *arg)
{
	struct lease_mgr *m = arg;
	uint64_t last_poll = 0;

	pthread_mutex_lock(&m->stop_mu);
	while (!m->stop) {
		struct timespec dl;
		uint64_t now;

		pthread_mutex_unlock(&m->stop_mu);
		now = stock_now_ns();
		for (size_t i = 0; i < m->n; i++)
			if (m->e[i].leased)
				tend(m, &m->e[i], false);
		if (now - last_poll >= ms_ns(m->opt.poll_ms)) {
			struct poll_ctx x = { m, wall_ms() };
			last_poll = now;
			if (store_mongo_view_all(m->opt.store, poll_one, &x) == 0)
				STAT_ADD(m, polls, 1);
			/* Re-learn every document after a poll: publish what changed. */
		}
		msync(m->ledger, sizeof *m->ledger, MS_ASYNC);
		stock_deadline_in(&dl, 10);
		pthread_mutex_lock(&m->stop_mu);
		if (!m->stop)
			pthread_cond_timedwait(&m->stop_cv, &m->stop_mu, &dl);
	}
	pthread_mutex_unlock(&m->stop_mu);
	return NULL;
}

/* ---- open / close --------------------------------------------------------- */

static int
ledger_open(struct lease_mgr *m)
{
	struct stat sb;
	int fd = open(m->opt.ledger_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0) {
		lg(m, "cannot open %s: %s", m->opt.ledger_path, strerror(errno));
		return STOCK_ESYS;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		lg(m, "%s is in use by another server", m->opt.ledger_path);
		close(fd);
		return STOCK_EBUSY;
	}
	if (fstat(fd, &sb) != 0 || (sb.st_size != 0 && (size_t)sb.st_size != sizeof *m->ledger) ||
	    (sb.st_size == 0 && ftruncate(fd, sizeof *m->ledger) != 0)) {
		lg(m, "%s: unexpected size or I/O error", m->opt.ledger_path);
		close(fd);
		return STOCK_ESYS;
	}
	m->ledger = mmap(NULL, sizeof *m->ledger, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m->ledger == MAP_FAILED) {
		m->ledger = NULL;
		close(fd);
		return STOCK_ESYS;
	}
	m->ledger_fd = fd;
	if (sb.st_size == 0) {
		memcpy(m->ledger->magic, LEDGER_MAGIC, 8);
		snprintf(m->ledger->host, sizeof m->ledger->host, "%s", m->host);
		m->ledger->nslots = LEDGER_SLOTS;
		msync(m->ledger, sizeof *m->ledger, MS_SYNC);
		fsync(fd);
	} else if (memcmp(m->ledger->magic, LEDGER_MAGIC, 8) != 0 ||
	    m->ledger->nslots != LEDGER_SLOTS) {
		lg(m, "%s is not a sales ledger", m->opt.ledger_path);
		return STOCK_EINVAL;
	} else if (strcmp(m->ledger->host, m->host) != 0) {
		lg(m, "%s belongs to host id '%s', not '%s': use that host id or another data dir",
		    m->opt.ledger_path, m->ledger->host, m->host);
		return STOCK_EINVAL;
	}
	return 0;
}

static struct ledger_slot *
ledger_slot(struct lease_mgr *m, const char *sku)
{
	struct ledger_slot *free_slot = NULL;

	for (size_t i = 0; i < LEDGER_SLOTS; i++) {
		struct ledger_slot *s = &m->ledger->slot[i];
		if (s->sku[0] == '\0') {
			if (free_slot == NULL)
				free_slot = s;
		} else if (strcmp(s->sku, sku) == 0) {
			return s;
		}
	}
	if (free_slot != NULL) {
		memset(free_slot, 0, sizeof *free_slot);
		snprintf(free_slot->sku, sizeof free_slot->sku, "%s", sku);
	}
	return free_slot;
}

/*
 * Start-up: make MongoDB agree with the ledger. The ledger's sales beyond
 * the lease's recorded sold are recorded; the rest of the lease goes back to
 * the pool (a reclaimed lease is settled the same way).
 */
static int
reconcile(struct lease_mgr *m, struct lease_entry *e)
{
	struct store_mongo_view v;
	const struct store_lease *l;
	int rc;

	for (int tries = 0; tries < 5; tries++) {
		if ((rc = store_mongo_view(m->opt.store, e->sku, &v)) != 0) {
			lg(m, "%s: cannot read the document: %s", e->sku, stock_strerror(rc));
			return rc;
		}
		learn(m, e, &v, false);
		l = view_lease(&v, m->host);
		if (l == NULL) {
			if (e->slot->granted != 0 || e->slot->sold != 0)
				lg(m, "%s: the ledger knows a lease MongoDB does not (another database?); "
				      "starting a new ledger for it", e->sku);
			e->slot->granted = e->slot->sold = e->slot->returned = 0;
			e->have_lease = false;
			return 0;
		}
		e->lease = *l;
		e->have_lease = true;
		ck_pr_store_64(&e->recorded_sold, l->sold);
		if (e->slot->sold < l->sold || l->granted < l->returned + e->slot->sold) {
			lg(m, "%s: ledger (sold %llu) does not fit leases.%s (granted %llu, sold %llu, "
			      "returned %llu); trusting MongoDB", e->sku,
			    (unsigned long long)e->slot->sold, m->host, (unsigned long long)l->granted,
			    (unsigned long long)l->sold, (unsigned long long)l->returned);
			e->slot->sold = l->sold;
		}
		e->slot->granted = l->granted;
		e->slot->returned = l->returned;
		if (l->granted - l->returned - l->sold == 0 && !l->reclaimed)
			return 0; /* nothing held, nothing unrecorded */
		{
			uint64_t unsold = l->granted - l->returned - e->slot->sold;
			uint64_t unrec = e->slot->sold - l->sold;

			rc = update(m, e, 0, unsold);
			if (rc == LEASE_RETRY)
				continue;
			if (rc == 0) {
				lg(m, "%s: recovered lease: %llu sales recorded, %llu units returned%s",
				    e->sku, (unsigned long long)unrec, (unsigned long long)unsold,
				    l->reclaimed ? " (it had been reclaimed: settled)" : "");
				if (l->reclaimed)
					STAT_ADD(m, settles, 1);
			}
			/* update() took nothing out of the counter (it is empty): undo
			   not_applied's put-back by construction of drain below. */
			return rc;
		}
	}
	return STOCK_ECONFLICT;
}

static void
lease_close_free(struct lease_mgr *m)
{
	for (size_t i = 0; i < m->n; i++) {
		stock_version_destroy(&m->e[i].cache.seq);
		pthread_mutex_destroy(&m->e[i].mu);
	}
	if (m->ledger != NULL) {
		msync(m->ledger, sizeof *m->ledger, MS_SYNC);
		munmap(m->ledger, sizeof *m->ledger);
	}
	if (m->ledger_fd >= 0)
		close(m->ledger_fd); /* releases the flock */
	pthread_mutex_destroy(&m->stop_mu);
	pthread_cond_destroy(&m->stop_cv);
	free(m->index);
	free(m->e);
	free(m);
}

void
lease_close(lease_mgr_t *m)
{
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->stop_mu);
	m->stop = true;
	pthread_cond_signal(&m->stop_cv);
	pthread_mutex_unlock(&m->stop_mu);
	pthread_join(m->thread, NULL);
	/* Record every sale and hand every unsold unit back. */
	for (size_t i = 0; i < m->n; i++)
		if (m->e[i].leased)
			tend(m, &m->e[i], true);
	lease_close_free(m);
}

int
lease_open(lease_mgr_t **out, const struct lease_options *opt, const char *const *leased,
    struct stock_counter *const *counters, size_t nleased, const char *const *plain,
    size_t nplain)
{
	struct lease_mgr *m;
	int rc;

	*out = NULL;
	if (opt == NULL || opt->store == NULL || !store_is_mongo(opt->store) ||
	    opt->host_id == NULL || opt->ledger_path == NULL ||
	    strlen(opt->host_id) > STORE_HOST_MAX)
		return STOCK_EINVAL;
	if ((m = calloc(1, sizeof *m)) == NULL ||
	    (m->e = calloc(nleased + nplain, sizeof *m->e)) == NULL) {
		free(m);
		return STOCK_ENOMEM;
	}
	m->opt = *opt;
	if (m->opt.block == 0) m->opt.block = 1000;
	if (m->opt.lease_ms == 0) m->opt.lease_ms = 10000;
	if (m->opt.record_ms == 0) m->opt.record_ms = 100;
	if (m->opt.poll_ms == 0) m->opt.poll_ms = 1000;
	if (m->opt.idle_ms == 0) m->opt.idle_ms = 2000;
	snprintf(m->host, sizeof m->host, "%s", opt->host_id);
	m->ledger_fd = -1;
	pthread_mutex_init(&m->stop_mu, NULL);
	pthread_cond_init(&m->stop_cv, NULL);
	if ((rc = ledger_open(m)) != 0)
		goto fail;
	for (size_t i = 0; i < nleased + nplain; i++) {
		struct lease_entry *e = &m->e[m->n];
		const char *sku = i < nleased ? leased[i] : plain[i - nleased];

		snprintf(e->sku, sizeof e->sku, "%s", sku);
		stock_version_init(&e->cache.seq);
		pthread_mutex_init(&e->mu, NULL);
		m->n++;
		if (i < nleased) {
			e->leased = true;
			e->ctr = counters[i];
			if ((e->slot = ledger_slot(m, sku)) == NULL) {
				lg(m, "the ledger is full (%d SKUs)", LEDGER_SLOTS);
				rc = STOCK_ENOMEM;
				goto fail;
			}
			if ((rc = reconcile(m, e)) != 0)
				goto fail;
		} else {
			struct store_mongo_view v;
			if ((rc = store_mongo_view(opt->store, sku, &v)) == 0)
				learn(m, e, &v, false);
			else if (rc != STOCK_ENOENT)
				goto fail;
		}
	}
	msync(m->ledger, sizeof *m->ledger, MS_SYNC);
	if ((rc = index_build(m)) != 0)
		goto fail;
	if (pthread_create(&m->thread, NULL, run, m) != 0) {
		rc = STOCK_ESYS;
		goto fail;
	}
	*out = m;
	return 0;
fail:
	m->stop = true; /* no thread: lease_close only frees */
	lease_close_free(m);
	return rc;
}
