/*
 * Holds in the cluster mode (--mongo): a hold created on any instance can be
 * read, confirmed or cancelled on any other, and expires exactly once.
 *
 * The units of a hold leave the SKU's pool into an entry of the SKU's own
 * document, holds.<hold id>: q (mongo_hold_take, one conditional update), so
 * no instance's lease or memory holds them and a kill -9 of the instance that
 * made the hold costs nothing. The hold's record, its decision and its
 * payment lock are documents of MONGO_HOLDS_COLLECTION, each written by one
 * insert: the first decision inserted (confirmed, cancelled, expired, or
 * aborted by a creation that failed half way) is the hold's fate. Applying
 * it ends every entry (mongo_hold_end: sold, or back to the pool), an
 * idempotent step any instance may repeat; the sweeper thread of every
 * instance applies decisions left half done and decides expiries. The
 * correctness argument and what each crash costs:
 * docs/internals/checkout.md, "Several instances".
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/util.h"
#include "config.h"
#include "inventory/catalog.h"
#include "inventory/cluster_int.h"
#include "log.h"

#define SWEEP_MS 200      /* expiries are decided within this of expires_at (plus round trips) */
#define ORPHANS_EVERY 25  /* every 25th sweep also ends entries of finished holds */

_Static_assert(MONGO_HOLD_ITEMS_MAX == CHECKOUT_ITEMS_MAX, "a hold's items fit its record");
_Static_assert(MONGO_HOLD_BUYER_MAX == BUYER_ID_MAX, "a buyer id fits the record");
_Static_assert(MONGO_HOLD_ID_MAX >= CHECKOUT_ID_LEN, "a hold id fits an entry");

/* ---- views ------------------------------------------------------------------------ */

/* What GET shows of @h at @now (an undecided hold past its deadline is expired:
   nothing can confirm it any more, and the sweeper is about to decide so). */
static void
view_of(const struct mongo_hold *h, int64_t now, struct checkout_view *out)
{
	static const enum hold_status status[] = {
		[MONGO_HOLD_OPEN] = HOLD_HELD, [MONGO_HOLD_CONFIRMED] = HOLD_CONFIRMED,
		[MONGO_HOLD_CANCELLED] = HOLD_CANCELLED, [MONGO_HOLD_EXPIRED] = HOLD_EXPIRED,
		[MONGO_HOLD_ABORTED] = HOLD_CANCELLED,
	};

	memcpy(out->id, h->id, strlen(h->id) + 1);
	out->status = status[h->end];
	if (h->end == MONGO_HOLD_OPEN && now >= h->expires_ms)
		out->status = HOLD_EXPIRED;
	out->paying = h->end == MONGO_HOLD_OPEN && h->lock_until_ms > now;
	out->expires_at_ms = h->expires_ms;
	memcpy(out->buyer, h->buyer, strlen(h->buyer) + 1);
	out->n = 0;
	for (size_t i = 0; i < h->n; i++) {
		uint64_t q = h->end == MONGO_HOLD_CONFIRMED ? h->items[i].sell : h->items[i].q;

		if (q == 0)
			continue;
		memcpy(out->items[out->n].sku, h->items[i].sku, strlen(h->items[i].sku) + 1);
		out->items[out->n++].quantity = q;
	}
}

/* ---- applying a decision ------------------------------------------------------------ */

/* End every entry of decided @h, then mark it done: 0, or the first failure
   (the sweeper goes again). */
static int
hold_apply(struct cluster *c, const struct mongo_hold *h)
{
	int rc = 0;

	ASSERT(h->end != MONGO_HOLD_OPEN);
	for (size_t i = 0; i < h->n; i++) {
		uint64_t sell = h->end == MONGO_HOLD_CONFIRMED ? h->items[i].sell : 0;
		struct mongo_view after;
		int r = mongo_hold_end(c->mongo, h->items[i].sku, h->id, h->items[i].q, sell, &after);

		if (r == 0)
			lease_learn_view(c->leases, &after);
		else if (r != STOCK_ENOENT && rc == 0) /* ENOENT: ended before, or never taken */
			rc = r;
	}
	if (rc == 0)
		rc = mongo_hold_finished(c->mongo, h->id);
	return rc;
}

/*
 * Decide @h as @end. The instance whose decision lands gives the buyer back
 * the allowance of every unit not sold (once: only one decision lands) and
 * applies it; one that finds another decision helps apply that one.
 * Returns 0 (ours), STOCK_EEXIST (h->end: the decision before ours),
 * STOCK_ESYS (unknown).
 */
static int
hold_decide(struct cluster *c, struct mongo_hold *h, enum mongo_hold_end end, const uint64_t *sell)
{
	int rc = mongo_hold_decide(c->mongo, h, end, sell);

	if (rc != 0 && rc != STOCK_EEXIST)
		return rc;
	if (rc == 0) {
		struct stock_stat *st[] = { [MONGO_HOLD_CONFIRMED] = &c->holds_confirmed,
			[MONGO_HOLD_CANCELLED] = &c->holds_cancelled,
			[MONGO_HOLD_EXPIRED] = &c->holds_expired };

		if (end != MONGO_HOLD_ABORTED)
			stock_stat_inc(st[end]);
		for (size_t i = 0; h->buyer[0] != '\0' && c->max_per_buyer > 0 && i < h->n; i++)
			if (h->items[i].q > h->items[i].sell)
				allowance_give(c, h->buyer, h->items[i].sku, h->items[i].q - h->items[i].sell);
	}
	if (hold_apply(c, h) != 0)
		log_warn("checkout", "hold %s: %s, not applied everywhere yet (the sweeper goes on)",
		    h->id, rc == 0 ? "decided" : "found decided");
	return rc;
}

/*
 * A cancel or an expiry takes the payment lock first (with --payment-url), so
 * that it never ends a hold a confirm is charging for. Returns 0 (go on: ours,
 * or a lock past its `until`, under which nobody charges any more),
 * STOCK_ECONFLICT (a payment is in progress), STOCK_ESYS.
 */
static int
lock_for_decision(struct cluster *c, struct mongo_hold *h, int64_t now)
{
	char id[MONGO_HOLD_ID_MAX + 1];
	int64_t token;
	int rc;

	if (c->lock_ms == 0)
		return 0;

	rc = mongo_hold_lock(c->mongo, h->id, now + c->lock_ms, &token);
	if (rc != STOCK_EEXIST)
		return rc;
	memcpy(id, h->id, sizeof id); /* mongo_hold_read clears *h first */
	if ((rc = mongo_hold_read(c->mongo, id, h)) != 0)
		return rc == STOCK_ENOENT ? STOCK_ESYS : rc;
	return h->lock_until_ms > now ? STOCK_ECONFLICT : 0;
}

/* Expire undecided @h, past its deadline at @now. Returns hold_decide's code or the lock's. */
static int
expire(struct cluster *c, struct mongo_hold *h, int64_t now)
{
	int rc;

	ASSERT(h->end == MONGO_HOLD_OPEN && now >= h->expires_ms);
	if ((rc = lock_for_decision(c, h, now)) != 0)
		return rc;
	if (h->end != MONGO_HOLD_OPEN) /* decided while we looked at the lock */
		return hold_apply(c, h) == 0 ? STOCK_EEXIST : STOCK_ESYS;
	return hold_decide(c, h, MONGO_HOLD_EXPIRED, NULL);
}

/* ---- the inventory calls --------------------------------------------------------------- */

/* Hold @id[0..@len) as read: 0, STOCK_ENOENT (no such hold, or one never answered), STOCK_ESYS. */
static int
hold_load(struct cluster *c, const char *id, size_t len, struct mongo_hold *h)
{
	char hid[MONGO_HOLD_ID_MAX + 1];
	int rc;

	if (len == 0 || len > MONGO_HOLD_ID_MAX || !host_id_valid(id, len))
		return STOCK_ENOENT;
	memcpy(hid, id, len);
	hid[len] = '\0';
	rc = mongo_hold_read(c->mongo, hid, h);
	if (rc == STOCK_EINVAL || (rc == 0 && h->end == MONGO_HOLD_ABORTED))
		return STOCK_ENOENT;
	return rc;
}

/* One item's units out of the pool into the hold's entry; a short pool first
   gets this instance's unsold lease units back. */
static int
take_one(struct cluster *c, const char *sku, const char *id, uint64_t q)
{
	struct durable_pass pass;
	struct mongo_view after;
	int rc;

	if ((rc = durable_enter(&c->guard, &pass)) != 0)
		return rc;
	rc = mongo_hold_take(c->mongo, sku, id, q, &after);
	if (rc == STOCK_ESOLDOUT && lease_give_back(c->leases, sku) == 0)
		rc = mongo_hold_take(c->mongo, sku, id, q, &after);
	durable_leave(&c->guard, &pass, rc == STOCK_ESYS);
	if (rc == 0 || rc == STOCK_ESOLDOUT)
		lease_learn_view(c->leases, &after);
	return rc;
}

/*
 * Create: the buyer's allowances, the record, then each item's entry. A
 * refusal (or a failure) on the way decides the hold aborted, which gives
 * the allowance back and ends the entries already made. The record is
 * written before any entry, so every entry belongs to a record that a
 * sweeper can decide (a record whose insert's outcome was unknown expires).
 */
int
cluster_hold(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	struct mongo_hold h;
	struct lease_peek p;
	size_t i;
	int rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	(void)ans; /* the answer is stored after (idem_finish) */
	ASSERT(req->n >= 1 && req->n <= CHECKOUT_ITEMS_MAX);
	for (i = 0; i < req->n; i++)
		if (lease_peek(c->leases, req->items[i].sku, &p) != 0) {
			out->refused = (int)i;
			return STOCK_ENOENT;
		}
	if ((rc = allowance_take_all(c, req, out)) != 0)
		return rc;
	memset(&h, 0, sizeof h);
	checkout_new_id(h.id, 'h');
	h.n = req->n;
	for (i = 0; i < req->n; i++) {
		memcpy(h.items[i].sku, req->items[i].sku, strlen(req->items[i].sku) + 1);
		h.items[i].q = req->items[i].quantity;
	}
	h.expires_ms = util_wall_ms() + (int64_t)req->ttl_ms;
	if (req->buyer != NULL && c->max_per_buyer > 0)
		memcpy(h.buyer, req->buyer, strlen(req->buyer) + 1);
	if ((rc = mongo_hold_create(c->mongo, &h)) != 0) {
		/* STOCK_ESYS: the record may land, empty; its expiry gives the allowance back. */
		if (rc != STOCK_ESYS)
			allowance_give_all(c, req, -1);
		return rc;
	}
	for (i = 0; i < h.n; i++)
		if ((rc = take_one(c, h.items[i].sku, h.id, h.items[i].q)) != 0)
			break;
	if (rc == 0) {
		stock_stat_inc(&c->holds_made);
		view_of(&h, util_wall_ms(), out);
		out->status = HOLD_HELD;
		return 0;
	}
	out->refused = (int)i;
	if (hold_decide(c, &h, MONGO_HOLD_ABORTED, NULL) != 0)
		log_warn("checkout", "hold %s: could not be aborted now; it expires at its deadline", h.id);
	return rc;
}

int
cluster_hold_get(inventory_t *inv, const char *id, size_t len, struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	struct mongo_hold h;
	int rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	if ((rc = hold_load(c, id, len, &h)) == 0)
		view_of(&h, util_wall_ms(), out);
	return rc;
}

/* The units a confirm sells of each item: all, or @part's (a subset, each at most held). */
static int
confirm_amounts(const struct mongo_hold *h, const struct checkout_req *part, uint64_t *sell)
{
	for (size_t i = 0; i < h->n; i++)
		sell[i] = part == NULL ? h->items[i].q : 0;
	for (size_t k = 0; part != NULL && k < part->n; k++) {
		size_t i;

		for (i = 0; i < h->n && strcmp(h->items[i].sku, part->items[k].sku) != 0; i++)
			;
		if (i == h->n || part->items[k].quantity > h->items[i].q || sell[i] != 0)
			return STOCK_EINVAL;
		sell[i] = part->items[k].quantity;
	}
	return 0;
}

/*
 * The start of Confirm and Cancel: @out cleared, hold @id[0..@len) read into
 * @h, and expired first if its deadline (*@now) has passed (h->end then says
 * whether the expiry was decided; if not, view_of still shows it expired).
 * Returns hold_load's code.
 */
static int
settle_begin(struct cluster *c, const char *id, size_t len, struct mongo_hold *h,
    struct checkout_view *out, int64_t *now)
{
	int rc;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	if ((rc = hold_load(c, id, len, h)) != 0)
		return rc;
	*now = util_wall_ms();
	if (h->end == MONGO_HOLD_OPEN && *now >= h->expires_ms)
		(void)expire(c, h, *now);
	return 0;
}

/*
 * Confirm: with a payment service, the lock first (a second confirm, a
 * cancel or an expiry meanwhile sees it and stays away), then the charge
 * (idempotent on the hold id), then the decision. The lock lives
 * c->lock_ms: the payment deadline plus two MongoDB round trips and a
 * second, so a live confirmer always decides before anyone may treat its
 * lock as abandoned (clocks of the instances within that second).
 */
int
cluster_confirm(inventory_t *inv, const char *id, size_t len, const struct checkout_req *part,
    checkout_pay_fn pay, void *pay_arg, struct idem_answer *ans, struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	uint64_t sell[MONGO_HOLD_ITEMS_MAX];
	struct mongo_hold h;
	int64_t now, token;
	int rc;

	(void)ans;
	if ((rc = settle_begin(c, id, len, &h, out, &now)) != 0)
		return rc;
	view_of(&h, now, out);
	if (h.end == MONGO_HOLD_CONFIRMED)
		return 0;
	if (out->status != HOLD_HELD || out->paying)
		return STOCK_ECONFLICT;
	if ((rc = confirm_amounts(&h, part, sell)) != 0)
		return rc;
	if (pay != NULL) {
		if ((rc = mongo_hold_lock(c->mongo, h.id, now + c->lock_ms, &token)) != 0) {
			out->paying = rc == STOCK_EEXIST;
			return rc == STOCK_EEXIST ? STOCK_ECONFLICT : rc;
		}
		for (size_t i = 0; i < h.n; i++)
			h.items[i].sell = sell[i];
		h.end = MONGO_HOLD_CONFIRMED; /* the view of what is charged */
		view_of(&h, now, out);
		out->status = HOLD_HELD;
		h.end = MONGO_HOLD_OPEN;
		if ((rc = pay(out, pay_arg)) != 0) {
			if (mongo_hold_unlock(c->mongo, h.id, token) != 0)
				log_warn("checkout", "hold %s: its payment lock could not be released; "
				    "confirms answer 409 until it lapses", h.id);
			view_of(&h, now, out);
			out->pay_failed = true;
			return rc;
		}
	}
	rc = hold_decide(c, &h, MONGO_HOLD_CONFIRMED, sell);
	view_of(&h, util_wall_ms(), out);
	if (rc == STOCK_ESYS)
		out->unknown = true;
	else if (rc == STOCK_EEXIST)
		rc = h.end == MONGO_HOLD_CONFIRMED ? 0 : STOCK_ECONFLICT;
	return rc;
}

int
cluster_cancel(inventory_t *inv, const char *id, size_t len, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct cluster *c = to_cluster(inv);
	struct mongo_hold h;
	int64_t now;
	int rc;

	(void)ans;
	if ((rc = settle_begin(c, id, len, &h, out, &now)) != 0)
		return rc;
	if (h.end == MONGO_HOLD_OPEN && now >= h.expires_ms) {
		view_of(&h, now, out); /* expired, decided or about to be */
		return STOCK_ECONFLICT;
	}
	if (h.end == MONGO_HOLD_OPEN && (rc = lock_for_decision(c, &h, now)) != 0) {
		view_of(&h, now, out);
		out->paying = rc == STOCK_ECONFLICT;
		return rc;
	}
	if (h.end == MONGO_HOLD_OPEN) {
		rc = hold_decide(c, &h, MONGO_HOLD_CANCELLED, NULL);
		if (rc == STOCK_ESYS) {
			view_of(&h, now, out);
			out->unknown = true;
			return rc;
		}
	}
	view_of(&h, util_wall_ms(), out);
	return h.end == MONGO_HOLD_CANCELLED ? 0 : STOCK_ECONFLICT;
}

/* Admin POST Stock with an Idempotency-Key: the change, then the handler stores the answer. */
int
cluster_adjust_as(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct idem_answer *ans, struct checkout_view *out)
{
	memset(out, 0, sizeof *out);
	out->refused = -1;
	(void)ans;
	return inv->ops->adjust(inv, sku, absolute, n, &out->level);
}

/* ---- the sweeper ------------------------------------------------------------------------ */

struct sweep {
	struct cluster *c;
	int64_t now;
	char (*open)[MONGO_HOLD_ID_MAX + 1]; /* ids of the holds not done */
	size_t nopen, cap;
};

static int
sweep_one(const struct mongo_hold *listed, void *arg)
{
	struct sweep *s = arg;
	struct mongo_hold h = *listed;

	if (s->nopen == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		void *p = realloc(s->open, cap * sizeof *s->open);

		if (p == NULL)
			return STOCK_ENOMEM;
		s->open = p;
		s->cap = cap;
	}
	memcpy(s->open[s->nopen++], h.id, strlen(h.id) + 1);
	if (h.end != MONGO_HOLD_OPEN)
		(void)hold_apply(s->c, &h);
	else if (s->now >= h.expires_ms)
		(void)expire(s->c, &h, s->now);
	return stock_latch_is_set(&s->c->sweep_stop) ? 1 : 0;
}

static bool
is_open(const struct sweep *s, const char *id)
{
	for (size_t i = 0; i < s->nopen; i++)
		if (strcmp(s->open[i], id) == 0)
			return true;
	return false;
}

/* A document's entries of holds that are done: a take that landed after its
   hold was aborted and finished. End them as decided. */
static int
orphans_one(const struct mongo_view *v, void *arg)
{
	struct sweep *s = arg;

	for (size_t i = 0; i < v->nholds; i++) {
		struct mongo_hold h;
		uint64_t sell = 0;

		if (is_open(s, v->holds[i].id) || mongo_hold_read(s->c->mongo, v->holds[i].id, &h) != 0 ||
		    h.end == MONGO_HOLD_OPEN || !h.done)
			continue;
		for (size_t k = 0; h.end == MONGO_HOLD_CONFIRMED && k < h.n; k++)
			if (strcmp(h.items[k].sku, v->doc.sku) == 0)
				sell = h.items[k].sell;
		if (sell > v->holds[i].q)
			continue;
		log_warn("checkout", "%s: ending the entry of finished hold %s (%s)", v->doc.sku,
		    h.id, sell > 0 ? "sold" : "released");
		(void)mongo_hold_end(s->c->mongo, v->doc.sku, h.id, v->holds[i].q, sell, NULL);
	}
	return 0;
}

static void *
sweeper_main(void *arg)
{
	struct cluster *c = arg;
	struct sweep s = { .c = c };
	unsigned round = 0;

	while (!stock_latch_is_set(&c->sweep_stop)) {
		struct timespec dl;

		s.now = util_wall_ms();
		s.nopen = 0;
		if (mongo_hold_list_open(c->mongo, sweep_one, &s) == 0 && ++round % ORPHANS_EVERY == 0)
			(void)mongo_view_all(c->mongo, orphans_one, &s);
		stock_deadline_in(&dl, SWEEP_MS);
		(void)stock_latch_wait(&c->sweep_stop, &dl);
	}
	free(s.open);
	return NULL;
}

int
cluster_holds_start(struct cluster *c, const struct app_config *cfg)
{
	int rc;

	if ((rc = stock_stat_init(&c->holds_made)) != 0 ||
	    (rc = stock_stat_init(&c->holds_confirmed)) != 0 ||
	    (rc = stock_stat_init(&c->holds_cancelled)) != 0 ||
	    (rc = stock_stat_init(&c->holds_expired)) != 0)
		return rc;
	c->lock_ms = cfg->payment_url[0] == '\0' ? 0 :
	    (int64_t)(cfg->payment_timeout_ms + 2 * cfg->mongo_timeout_ms + 1000);
	stock_latch_init(&c->sweep_stop, false);
	if (pthread_create(&c->sweeper, NULL, sweeper_main, c) != 0) {
		stock_latch_destroy(&c->sweep_stop);
		return STOCK_ESYS;
	}
	c->sweeper_started = true;
	return 0;
}

void
cluster_holds_stop(struct cluster *c)
{
	if (c->sweeper_started) {
		stock_latch_set(&c->sweep_stop);
		pthread_join(c->sweeper, NULL);
		stock_latch_destroy(&c->sweep_stop);
		c->sweeper_started = false;
	}
	stock_stat_destroy(&c->holds_expired);
	stock_stat_destroy(&c->holds_cancelled);
	stock_stat_destroy(&c->holds_confirmed);
	stock_stat_destroy(&c->holds_made);
}

void
cluster_holds_metrics(struct cluster *c, struct buf *out)
{
	prom_counter_u64(out, "stock_holds_created_total", "Holds created.",
	    stock_stat_sum(&c->holds_made));
	prom_counter_u64(out, "stock_holds_confirmed_total", "Holds confirmed (decided here).",
	    stock_stat_sum(&c->holds_confirmed));
	prom_counter_u64(out, "stock_holds_cancelled_total", "Holds cancelled (decided here).",
	    stock_stat_sum(&c->holds_cancelled));
	prom_counter_u64(out, "stock_holds_expired_total", "Holds released by expiry (decided here).",
	    stock_stat_sum(&c->holds_expired));
}
