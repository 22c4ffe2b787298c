/*
 * One conditional update of our lease and every outcome it can have
 * (lease_int.h): building the next lease from the ledger, the local effects
 * of an update known applied or known not applied, the adoption of a
 * reclaim, and the resolution of an unknown outcome with a fence
 * (docs/internals/leases.md, "The operations" and "Unknown outcomes"). Also the
 * peek cache, which every outcome feeds. Every function here but the cache's
 * runs with the entry's lock held.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cluster/lease_int.h"
#include "common/util.h"
#include "log.h"

/* update_once(): our lease was reclaimed meanwhile; try again to settle it. */
#define LEASE_RETRY 1

/* ---- leases as values ------------------------------------------------------ */

/* Same counts and expiry: the same update (a reclaim only sets the flag). */
static bool
lease_same(const struct mongo_lease *a, const struct mongo_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms;
}

static bool
lease_eq(const struct mongo_lease *a, const struct mongo_lease *b)
{
	return lease_same(a, b) && a->reclaimed == b->reclaimed;
}

/*
 * remaining = pool + what live leases still hold (their unrecorded sales
 * included). A lease whose counts do not fit (a document edited by hand) is
 * left out: the poll reads it, it does not abort for it.
 */
static uint64_t
view_remaining(const struct mongo_view *v)
{
	uint64_t r = v->doc.stock;

	for (size_t i = 0; i < v->nleases; i++) {
		const struct mongo_lease *l = &v->leases[i].lease;

		if (!l->reclaimed && lease_sane(l))
			r += lease_held(l);
	}
	return r;
}

/* ---- peek caches ---------------------------------------------------------------- */

/*
 * Offer a document state. The triple is replaced when its version is newer;
 * an exact sold count replaces an estimated one of the same version;
 * recorded (unknown: UINT64_MAX) only ever grows, and is taken from a view
 * whose version is at most the cache's afterwards, so what it subtracts is
 * never counted twice for long. The pool is replaced by one read at a
 * version at least its own. Returns whether the triple was replaced.
 */
bool
lease__cache_offer(struct peek_cache *c, const struct cache_state *st)
{
	uint64_t sold = st->sold;
	bool newer;

	stock_version_write_lock(&c->seq);
	newer = st->version > stock_gauge_get(&c->version);
	if (newer) {
		uint64_t old_rem = stock_gauge_get(&c->remaining);

		/* A bus event carries no sold count: estimate it from the drop in
		   remaining (exact unless a restock happened; the poll corrects). */
		if (sold == UINT64_MAX)
			sold = stock_gauge_get(&c->sold) +
			    (st->remaining < old_rem ? old_rem - st->remaining : 0);
		stock_gauge_set(&c->remaining, st->remaining);
		stock_gauge_set(&c->sold, sold);
		stock_gauge_set(&c->version, st->version);
		if (st->held != UINT64_MAX)
			stock_gauge_set(&c->held, st->held);
	} else if (sold != UINT64_MAX && st->version == stock_gauge_get(&c->version)) {
		/* The same version read whole (the poll, a round trip): its sold
		   is exact, where a bus event's was an estimate that a restock
		   between two events makes too small. A document has one sold
		   per version, so this only ever corrects. */
		stock_gauge_set(&c->sold, sold);
		if (st->held != UINT64_MAX)
			stock_gauge_set(&c->held, st->held);
	}
	if (st->recorded != UINT64_MAX && st->recorded > stock_gauge_get(&c->recorded))
		stock_gauge_set(&c->recorded, st->recorded);
	/* Only a whole read knows the pool and the retired flag; a bus event
	   about a newer version leaves them as they were (tend re-reads when
	   the two disagree). */
	if (st->pool != UINT64_MAX && st->version >= stock_gauge_get(&c->pool_version)) {
		stock_gauge_set(&c->pool, st->pool);
		stock_gauge_set(&c->retired, st->retired);
		stock_gauge_set(&c->pool_version, st->version);
	}
	stock_version_write_unlock(&c->seq);
	return newer;
}

void
lease__cache_read(struct peek_cache *c, struct lease_peek *out, uint64_t *recorded,
    uint64_t *pool, uint64_t *pool_version)
{
	unsigned t;

	do {
		t = stock_version_read_begin(&c->seq);
		out->remaining = stock_gauge_get(&c->remaining);
		out->sold = stock_gauge_get(&c->sold);
		out->held = stock_gauge_get(&c->held);
		out->version = stock_gauge_get(&c->version);
		*recorded = stock_gauge_get(&c->recorded);
		*pool = stock_gauge_get(&c->pool);
		*pool_version = stock_gauge_get(&c->pool_version);
		if (stock_gauge_get(&c->retired) != 0)
			out->remaining = 0; /* not for sale, whatever leases still hold */
	} while (stock_version_read_retry(&c->seq, t));
}

/* A view of @e's document we read or wrote: cache it, maybe publish it. */
void
lease__learn(struct lease_mgr *m, struct lease_entry *e, const struct mongo_view *v, bool publish)
{
	const struct mongo_lease *ours = view_lease(v, m->host);
	struct cache_state st = {
		.remaining = v->retired ? 0 : view_remaining(v), /* also on the bus */
		.sold = v->doc.sold,
		.version = v->doc.version,
		.recorded = ours != NULL ? ours->sold : UINT64_MAX,
		.pool = e->leased ? v->doc.stock : UINT64_MAX,
		.held = v->held,
		.retired = v->retired ? 1 : 0,
	};

	if (lease__cache_offer(&e->cache, &st) && publish && m->opt.bus != NULL)
		(void)bus_publish(m->opt.bus, e->sku, st.remaining, st.version);
}

/* ---- local effects (entry lock held) --------------------------------------------- */

/* An update known to be applied: adopt @next, grant its units but @keep to the counter. */
static void
applied(struct lease_entry *e, const struct mongo_lease *next, uint64_t grant, uint64_t keep)
{
	/* No oversell: what we ever sold plus what we gave back fits what we got. */
	ASSERT(lease_sane(next));
	ASSERT(ledger_sold(e->slot) <= next->granted - next->returned);
	e->lease = *next;
	e->have_lease = true;
	e->slot->granted = next->granted;
	e->slot->returned = next->returned;
	e->last_renew_ns = stock_now_ns();
	if (grant > 0) /* a grant is activity: not idle until idle_ms from now */
		stock_gauge_set(&e->last_sale_ns, e->last_renew_ns);
	ASSERT(keep <= grant);
	if (grant > keep && stock_counter_restock(e->ctr, grant - keep) != 0)
		log_error("lease", "%s: could not add %" PRIu64 " granted units to the counter "
		    "(they stay in the lease, unsold)", e->sku, grant - keep);
}

/* An update known NOT to be applied: units taken out for it go back. */
static void
not_applied(struct lease_entry *e, uint64_t putback)
{
	if (putback > 0 && stock_counter_restock(e->ctr, putback) != 0)
		log_error("lease", "%s: could not put %" PRIu64 " units back", e->sku, putback);
}

/* Take every unsold unit out of the counter (for a return). */
uint64_t
lease__drain(struct stock_counter *c)
{
	struct stock_level l;

	for (int i = 0; i < 64; i++) {
		stock_counter_read(c, &l);
		if (l.remaining == 0)
			return 0;
		if (stock_counter_take(c, l.remaining) == 0)
			return l.remaining;
	}
	return 0; /* buyers kept racing us: next tick */
}

/* The stored lease is not ours any more: stop selling from it (docs: "Broken leases"). */
static void
set_broken(struct lease_mgr *m, struct lease_entry *e, const char *why)
{
	uint64_t dropped = lease__drain(e->ctr);

	e->broken = true;
	log_error("lease", "%s: leases.%s %s (another instance with host id '%s'?): no more "
	    "sales of it here; %" PRIu64 " unsold units left in the stored lease", e->sku,
	    m->host, why, m->host, dropped);
}

/* ---- unknown outcomes (entry lock held) ------------------------------------------ */

/* The fence for @u: expect's counts and flag, an expiry neither write has. */
static void
fence_build(struct unsure *u)
{
	int64_t t = u->next.expires_ms;

	if (u->had_expect) {
		u->fence = u->expect;
		if (u->expect.expires_ms > t)
			t = u->expect.expires_ms;
	} else {
		memset(&u->fence, 0, sizeof u->fence);
	}
	u->fence.expires_ms = t + 1;
}

/*
 * One look at the stored lease @l: 1 when the outcome is now known (applied
 * or not, local effects done), 0 to look again, < 0 when it cannot be known
 * yet (STOCK_ESYS) or the lease is someone else's (STOCK_ECONFLICT).
 */
static int
resolve_step(struct lease_mgr *m, struct lease_entry *e, const struct mongo_lease *l,
    bool *was_applied)
{
	struct unsure *u = &e->u;
	int rc;

	if (l != NULL && lease_same(l, &u->next)) { /* applied (maybe reclaimed since) */
		applied(e, &u->next, u->grant, u->keep);
		e->lease = *l;
		*was_applied = true;
		return 1;
	}
	if (l != NULL && (lease_same(l, &u->fence) ||
	        (u->had_expect && lease_same(l, &u->expect) && l->reclaimed && !u->expect.reclaimed))) {
		/* A fence, or a reclaim, replaced what it expected: it can never apply. */
		not_applied(e, u->putback);
		e->lease = *l;
		e->have_lease = true;
		return 1;
	}
	if (!(u->had_expect ? l != NULL && lease_eq(l, &u->expect) : l == NULL)) {
		set_broken(m, e, "is neither what we expected nor what we wrote");
		return STOCK_ECONFLICT;
	}
	/* Still what it expected: it may yet land. Fence it off. */
	rc = mongo_lease_cas(m->opt.mongo, e->sku, m->host, u->had_expect ? &u->expect : NULL,
	    &u->fence, 0, 0, 0, NULL);
	if (rc == 0) {
		not_applied(e, u->putback);
		e->lease = u->fence;
		e->have_lease = true;
		e->last_renew_ns = stock_now_ns();
		return 1;
	}
	if (rc != STOCK_ECONFLICT && rc != STOCK_ESYS)
		log_warn("lease", "%s: the fence of an update with an unknown outcome was refused "
		    "(%s); the SKU waits", e->sku, stock_strerror(rc));
	return rc == STOCK_ECONFLICT ? 0 : STOCK_ESYS;
}

/*
 * Learn the outcome of the pending update (re-read; fence when needed).
 * Returns 0 (known: not applied), RESOLVED_APPLIED, STOCK_ESYS (still
 * unknown: nothing else may be sent for this SKU), STOCK_ECONFLICT (broken).
 */
int
lease__resolve(struct lease_mgr *m, struct lease_entry *e)
{
	bool was_applied = false;
	int rc = 0;

	if (!e->u.pending)
		return 0;
	for (int tries = 0; tries < 3 && rc == 0; tries++) {
		struct mongo_view v;

		if (mongo_view(m->opt.mongo, e->sku, &v) != 0)
			return STOCK_ESYS;
		lease__learn(m, e, &v, false);
		rc = resolve_step(m, e, view_lease(&v, m->host), &was_applied);
	}
	if (rc == 0 || rc == STOCK_ESYS)
		return STOCK_ESYS; /* still pending: the next tick looks again */
	e->u.pending = false;
	if (rc < 0)
		return rc; /* broken */
	log_info("lease", "%s: the update whose outcome was unknown had %sbeen applied", e->sku,
	    was_applied ? "" : "not ");
	return was_applied ? RESOLVED_APPLIED : 0;
}

/* ---- one update of our lease (entry lock held) ------------------------------------ */

/* The lease after granting @grant, returning @ret and recording the ledger. */
static void
next_lease(struct lease_mgr *m, struct lease_entry *e, uint64_t grant, uint64_t ret,
    struct mongo_lease *next, int64_t *d_sold, int64_t *d_lost)
{
	const struct mongo_lease *expect = e->have_lease ? &e->lease : NULL;
	uint64_t sold = ledger_sold(e->slot);

	*d_lost = 0;
	if (expect != NULL) {
		ASSERT(lease_sane(expect));
		ASSERT(sold >= expect->sold); /* reconciled at open: the ledger is never behind */
		*next = *expect;
		if (expect->reclaimed) /* settle: its held units come back out of lost */
			*d_lost = -(int64_t)lease_held(expect);
		*d_sold = (int64_t)(sold - expect->sold);
	} else {
		ASSERT(sold == 0); /* no lease: nothing was sold from one */
		memset(next, 0, sizeof *next);
		*d_sold = 0;
	}
	next->granted += grant;
	next->sold = sold;
	next->returned += ret;
	next->reclaimed = false;
	next->expires_ms = util_wall_ms() + m->opt.lease_ms;
	if (expect != NULL && next->expires_ms == expect->expires_ms)
		next->expires_ms++; /* next must differ from expect */
	ASSERT(lease_sane(next));
}

/*
 * The CAS missed: our lease is not as we knew it. If the only change is a
 * reclaim, adopt it and ask for a retry (which settles); anything else means
 * another process writes our lease.
 */
static int
on_conflict(struct lease_mgr *m, struct lease_entry *e, const struct mongo_view *now,
    uint64_t putback)
{
	const struct mongo_lease *l = view_lease(now, m->host);
	const struct mongo_lease *expect = e->have_lease ? &e->lease : NULL;

	if (l != NULL && expect != NULL && l->reclaimed && !expect->reclaimed &&
	    l->granted == expect->granted && l->sold == expect->sold &&
	    l->returned == expect->returned) {
		log_warn("lease", "%s: our lease was reclaimed by another instance; settling it",
		    e->sku);
		e->lease = *l;
		return LEASE_RETRY; /* the caller keeps what it took out for the retry */
	}
	not_applied(e, putback);
	set_broken(m, e, "was changed by someone else");
	return STOCK_ECONFLICT;
}

/*
 * One attempt: 0, LEASE_RETRY (the lease was reclaimed and is adopted:
 * @putback is still out of the counter), or a libstock error (nothing
 * applied and @putback back in the counter, or STOCK_ESYS: maybe applied,
 * pending).
 */
static int
update_once(struct lease_mgr *m, struct lease_entry *e, uint64_t grant, uint64_t keep,
    uint64_t ret, uint64_t putback)
{
	struct mongo_view after;
	struct mongo_lease next;
	bool settling = e->have_lease && e->lease.reclaimed;
	int64_t d_sold, d_lost;
	int rc;

	ASSERT(!e->u.pending); /* callers resolve first */
	if (e->broken) {
		not_applied(e, putback);
		return STOCK_ECONFLICT;
	}
	next_lease(m, e, grant, ret, &next, &d_sold, &d_lost);
	after.doc.sku[0] = '\0';
	rc = mongo_lease_cas(m->opt.mongo, e->sku, m->host, e->have_lease ? &e->lease : NULL,
	    &next, (int64_t)ret - (int64_t)grant, d_sold, d_lost, &after);
	if (rc == 0) {
		applied(e, &next, grant, keep);
		lease__learn(m, e, &after, true);
		if (settling)
			stock_stat_inc(&m->st.settles);
		return 0;
	}
	stock_stat_inc(&m->st.failures);
	if (rc == STOCK_ECONFLICT || rc == STOCK_ESOLDOUT) {
		/* mongo_lease_cas re-read the current document into @after. */
		if (after.doc.sku[0] == '\0' && mongo_view(m->opt.mongo, e->sku, &after) != 0) {
			not_applied(e, putback);
			return rc; /* nothing applied; the next update looks again */
		}
		lease__learn(m, e, &after, false);
	}
	if (rc == STOCK_ECONFLICT)
		return on_conflict(m, e, &after, putback);
	if (rc != STOCK_ESYS) {
		not_applied(e, putback);
		return rc;
	}
	e->u = (struct unsure){ .pending = true, .had_expect = e->have_lease, .expect = e->lease,
		.next = next, .grant = grant, .keep = keep, .putback = putback };
	fence_build(&e->u);
	rc = lease__resolve(m, e);
	/* Resolved later, by another call, the whole grant goes to the counter:
	   this caller has answered by then. */
	e->u.keep = 0;
	return rc == RESOLVED_APPLIED ? 0 : rc == 0 ? STOCK_ESYS : rc;
}

int
lease__update(struct lease_mgr *m, struct lease_entry *e, uint64_t grant, uint64_t keep,
    uint64_t ret, bool ret_from_counter)
{
	uint64_t putback = ret_from_counter ? ret : 0;

	/* A reclaim is adopted by the first attempt; the second settles it. A
	   third reclaim in a row cannot happen (a reclaimed lease is not
	   reclaimed again), but is bounded all the same. */
	for (int tries = 0; tries < 3; tries++) {
		int rc = update_once(m, e, grant, keep, ret, putback);

		if (rc != LEASE_RETRY)
			return rc;
	}
	not_applied(e, putback);
	return STOCK_ECONFLICT;
}
