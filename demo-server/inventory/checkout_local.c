/*
 * Checkout in the embedded mode (inventory.h "checkout", local.h): holds,
 * orders, per-buyer counts and idempotency answers, on the libstock
 * counters' held state and the embedded journal.
 *
 * One lock (book->mu) orders every checkout change: under it a change is
 * applied to the counters (reserve, commit, release), its records are
 * built - the SKU states it left, the hold or order, the buyer counts, the
 * idempotency answer - and queued in the journal as ONE atomic commit
 * (store_commit); the lock is dropped before waiting for the disk
 * (store_commit_queued, then store_ticket_wait), so many changes share one
 * fdatasync. Because records are
 * queued in the order the changes were made, the durable journal is a
 * prefix of that order: after a crash, recovery rebuilds exactly the
 * changes that were acknowledged, plus some that were not yet (never
 * fewer). A hold's units come back at start-up by reserving them again
 * from the recovered counters, so held is always the sum of the live
 * holds. Expiry runs on a libstock timing wheel polled by one thread.
 * The records themselves - their encoding, the one commit per change, and
 * their decoding at start-up - are in checkout_records.c.
 * docs/internals/checkout.md has the argument and what a crash can cost.
 */
#include <bson/bson.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/smap.h"
#include "common/util.h"
#include "config.h"
#include "inventory/checkout_book.h"
#include "log.h"

/* ---- timers ---------------------------------------------------------------- */

static uint64_t
mono_deadline(int64_t at_ms)
{
	int64_t now = util_wall_ms(), d = at_ms - now;
	uint64_t mono = stock_now_ns();

	if (d <= 0)
		return mono;
	return mono + (uint64_t)d * 1000000ULL;
}

void
book_arm(struct checkout_book *b, struct stock_wheel_timer *t, int64_t at_ms)
{
	uint64_t dl = mono_deadline(at_ms);

	if (dl > STOCK_WHEEL_DEADLINE_MAX)
		dl = STOCK_WHEEL_DEADLINE_MAX;
	ASSERT(stock_wheel_add(&b->wheel, t, dl) == 0);
}

/* @h left held: keep it retain_ms for GET and repeated confirms/cancels, then forget it. */
static void
hold_finish(struct checkout_book *b, struct hold *h, enum hold_status st)
{
	h->status = st;
	h->done_at_ms = util_wall_ms();
	/* Under the lock a timer is armed or idle, never in the expiry
	   thread's hands (it polls under the lock): re-arm for retention. */
	(void)stock_wheel_cancel(&b->wheel, &h->timer);
	book_arm(b, &h->timer, h->done_at_ms + (int64_t)b->retain_ms);
}

/* ---- lookups --------------------------------------------------------------- */

static struct hold *
hold_find(struct checkout_book *b, const char *id, size_t len)
{
	struct smap_node *x = smap_get(&b->holds, id, len);

	return x == NULL ? NULL : (struct hold *)((char *)x - offsetof(struct hold, node));
}

static struct idem *
idem_find(struct checkout_book *b, const char *key, size_t len)
{
	struct smap_node *x = smap_get(&b->idems, key, len);

	return x == NULL ? NULL : (struct idem *)((char *)x - offsetof(struct idem, node));
}

/* The count of @buyer for @sku, created at 0 when @create. */
static struct buyer *
buyer_find(struct checkout_book *b, const char *buyer, const char *sku, bool create)
{
	char key[sizeof ((struct buyer *)0)->key];
	int n = snprintf(key, sizeof key, "%s/%s", buyer, sku);
	struct smap_node *x;
	struct buyer *by;

	ASSERT(n > 0 && (size_t)n < sizeof key);
	if ((x = smap_get(&b->buyers, key, (size_t)n)) != NULL)
		return (struct buyer *)((char *)x - offsetof(struct buyer, node));
	if (!create || (by = calloc(1, sizeof *by)) == NULL)
		return NULL;
	memcpy(by->key, key, (size_t)n + 1);
	by->node.key = by->key;
	by->node.key_len = (size_t)n;
	(void)smap_put(&b->buyers, &by->node);
	return by;
}

static void
view_hold(const struct hold *h, struct checkout_view *out)
{
	memset(out, 0, sizeof *out);
	memcpy(out->id, h->id, sizeof out->id);
	out->status = h->status;
	out->paying = h->paying;
	out->expires_at_ms = h->expires_at_ms;
	if (h->status == HOLD_CONFIRMED) {
		out->n = h->nconf;
		memcpy(out->items, h->conf, h->nconf * sizeof h->conf[0]);
	} else {
		out->n = h->n;
		memcpy(out->items, h->items, h->n * sizeof h->items[0]);
	}
	memcpy(out->buyer, h->buyer, sizeof out->buyer);
	out->refused = -1;
}

/* ---- the idempotency answer ------------------------------------------------- */

/*
 * Render @ans from @v and record it as the key's answer in @c (the same
 * commit as the change). The in-memory entry is marked done now: a replay
 * waits for the disk first (idem_begin), so no answer is replayed before
 * it is durable.
 */
static int
answer_record(struct local *l, struct commit *c, struct idem_answer *ans,
    const struct checkout_view *v)
{
	struct checkout_book *b = l->co;
	struct idem *e;
	char *body;

	if (ans == NULL)
		return 0;
	e = idem_find(b, ans->key, ans->key_len);
	ASSERT(e != NULL && !e->done); /* idem_begin made it, in flight */
	ans->body = (struct buf)BUF_INIT;
	ans->stored = true;
	if (ans->render(v, &ans->body, ans->arg) != 0 || ans->body.failed ||
	    (body = malloc(ans->body.len + 1)) == NULL)
		return STOCK_ENOMEM;
	memcpy(body, ans->body.data, ans->body.len);
	e->body = body;
	e->body_len = ans->body.len;
	e->status = ans->status;
	e->done = true;
	e->at_ms = util_wall_ms();
	e->version = next_version(b);
	record_kv(c, "idem/", e->key, e->key_len, e->version, record_idem_value(e));
	book_arm(b, &e->timer, e->at_ms + (int64_t)b->ttl_ms);
	return 0;
}

/* Take back what answer_record marked: the key's entry is in flight again (the caller aborts it). */
static void
answer_unrecord(struct checkout_book *b, const struct idem_answer *ans)
{
	struct idem *e;

	if (ans == NULL || (e = idem_find(b, ans->key, ans->key_len)) == NULL || !e->done)
		return;
	(void)stock_wheel_cancel(&b->wheel, &e->timer);
	free(e->body);
	e->body = NULL;
	e->done = false;
}

/* ---- holds ------------------------------------------------------------------ */

/*
 * Check @req against the buyer limit, then reserve every item (all or
 * nothing). Under the book's lock and a table section. 0, or the refusal
 * with out->refused (and out->over_limit).
 */
static int
reserve_all(struct local *l, const struct checkout_req *req, struct stock_counter **ctr,
    struct checkout_view *out)
{
	struct checkout_book *b = l->co;
	size_t i;
	int rc = 0;

	for (i = 0; i < req->n; i++)
		if ((ctr[i] = local_counter(l, req->items[i].sku)) == NULL) {
			out->refused = (int)i;
			return STOCK_ENOENT;
		}
	if (req->buyer != NULL && b->max_per_buyer > 0)
		for (i = 0; i < req->n; i++) {
			struct buyer *by = buyer_find(b, req->buyer, req->items[i].sku, false);
			uint64_t had = by != NULL ? by->count : 0;

			if (req->items[i].quantity > b->max_per_buyer - (had < b->max_per_buyer ? had :
			    b->max_per_buyer)) {
				out->refused = (int)i;
				out->over_limit = true;
				stock_stat_inc(&b->limits);
				return STOCK_ESOLDOUT;
			}
		}
	for (i = 0; i < req->n; i++)
		if ((rc = stock_counter_reserve(ctr[i], req->items[i].quantity)) != 0)
			break;
	if (rc == 0)
		return 0;
	out->refused = (int)i;
	while (i-- > 0)
		ASSERT(stock_counter_release(ctr[i], req->items[i].quantity) == 0);
	return rc;
}

/* Add @d (may be negative) to the buyer's count of each item, recorded in @c. */
static void
buyer_add(struct checkout_book *b, struct commit *c, const char *buyer,
    const struct checkout_item *it, size_t n, bool add)
{
	if (buyer == NULL || buyer[0] == '\0' || b->max_per_buyer == 0)
		return;
	for (size_t i = 0; i < n; i++) {
		struct buyer *by = buyer_find(b, buyer, it[i].sku, add);

		if (by == NULL) {
			if (add)
				log_warn("checkout", "out of memory: buyer %s not counted", buyer);
			continue;
		}
		if (add)
			by->count += it[i].quantity;
		else
			by->count -= by->count < it[i].quantity ? by->count : it[i].quantity;
		record_buyer(b, c, by);
	}
}

/* Wait for the disk after the lock is dropped (once, if queued). */
static int
durable_wait(struct pending *p, int rc)
{
	if (p->queued) {
		int w = store_ticket_wait(&p->t);

		p->queued = false;
		if (rc == 0)
			rc = w;
	}
	return rc;
}

/* durable_wait, bracketed by the durable guard. */
static int
settle(struct local *l, struct durable_pass *pass, int rc, struct pending *p)
{
	rc = durable_wait(p, rc);
	durable_leave(&l->guard, pass, rc == STOCK_ESYS);
	return rc;
}

/*
 * A change whose commit the journal refused (nothing queued): take it back
 * in memory - its units (held ones released, or sold ones put back when
 * @sold), the buyer's counts, the key's answer - as if it had not happened.
 * Under the lock and the section.
 */
static void
undo_change(struct checkout_book *b, struct stock_counter **ctr, const struct checkout_item *it,
    size_t n, const char *buyer, bool sold, const struct idem_answer *ans)
{
	struct commit undo;

	commit_init(&undo);
	for (size_t i = 0; i < n; i++)
		ASSERT((sold ? stock_counter_put(ctr[i], it[i].quantity) :
		    stock_counter_release(ctr[i], it[i].quantity)) == 0);
	buyer_add(b, &undo, buyer, it, n, false);
	record_free(&undo);
	answer_unrecord(b, ans);
}

int
checkout_local_hold(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct stock_counter *ctr[CHECKOUT_ITEMS_MAX];
	struct stock_table_section sec;
	struct durable_pass pass;
	struct commit c;
	struct hold *h;
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	ASSERT(req->n >= 1 && req->n <= CHECKOUT_ITEMS_MAX);
	if ((h = hold_alloc(req->n, req->n)) == NULL)
		return STOCK_ENOMEM;
	/* Everything that does not need the book is done before its lock. */
	h->kind = OBJ_HOLD;
	checkout_new_id(h->id, 'h');
	h->node.key = h->id;
	h->node.key_len = CHECKOUT_ID_LEN;
	h->status = HOLD_HELD;
	if (req->buyer != NULL)
		snprintf(h->buyer, sizeof h->buyer, "%s", req->buyer);
	h->n = req->n;
	memcpy(h->items, req->items, req->n * sizeof req->items[0]);
	stock_wheel_timer_init(&h->timer, h);
	if ((rc = durable_enter(&l->guard, &pass)) != 0) {
		free(h);
		return rc;
	}
	if (stock_table_read_begin(l->many, &sec) != 0) {
		durable_leave(&l->guard, &pass, false);
		free(h);
		return STOCK_ENOMEM;
	}
	pthread_mutex_lock(&b->mu);
	if ((rc = reserve_all(l, req, ctr, out)) != 0) {
		pthread_mutex_unlock(&b->mu);
		stock_table_read_end(l->many, &sec);
		durable_leave(&l->guard, &pass, false);
		free(h);
		return rc;
	}
	while (hold_find(b, h->id, CHECKOUT_ID_LEN) != NULL)
		checkout_new_id(h->id, 'h');
	h->expires_at_ms = util_wall_ms() + (int64_t)req->ttl_ms;
	for (size_t i = 0; i < req->n; i++)
		record_sku(l, &c, ctr[i], req->items[i].sku);
	buyer_add(b, &c, h->buyer, h->items, h->n, true);
	record_hold(b, &c, h);
	view_hold(h, out);
	if ((rc = answer_record(l, &c, ans, out)) == 0)
		rc = record_queue(l, &c, &pend);
	if (rc != 0) {
		record_free(&c);
		undo_change(b, ctr, h->items, h->n, h->buyer, false, ans);
		pthread_mutex_unlock(&b->mu);
		stock_table_read_end(l->many, &sec);
		durable_leave(&l->guard, &pass, false);
		free(h);
		return rc;
	}
	(void)smap_put(&b->holds, &h->node);
	book_arm(b, &h->timer, h->expires_at_ms);
	stock_stat_inc(&b->holds_made);
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	return settle(l, &pass, 0, &pend);
}

int
checkout_local_hold_get(inventory_t *inv, const char *id, size_t len, struct checkout_view *out)
{
	struct checkout_book *b = to_local(inv)->co;
	struct hold *h;

	pthread_mutex_lock(&b->mu);
	if ((h = hold_find(b, id, len)) != NULL)
		view_hold(h, out);
	pthread_mutex_unlock(&b->mu);
	return h != NULL ? 0 : STOCK_ENOENT;
}

/* Which quantities of @h a confirm sells: @part (checked) or everything. */
static int
confirm_amounts(const struct hold *h, const struct checkout_req *part, uint64_t *sell)
{
	for (size_t i = 0; i < h->n; i++)
		sell[i] = part == NULL ? h->items[i].quantity : 0;
	if (part == NULL)
		return 0;
	for (size_t k = 0; k < part->n; k++) {
		size_t i;

		for (i = 0; i < h->n; i++)
			if (strcmp(h->items[i].sku, part->items[k].sku) == 0)
				break;
		if (i == h->n || part->items[k].quantity > h->items[i].quantity || sell[i] != 0)
			return STOCK_EINVAL;
		sell[i] = part->items[k].quantity;
	}
	return 0;
}

static struct retired *retired_find(struct checkout_book *b, const char *sku);

/* Sell @sell[i] of each item of @h, release the rest; record it all in @c. */
static void
settle_hold(struct local *l, struct hold *h, const uint64_t *sell, struct commit *c)
{
	struct checkout_book *b = l->co;
	struct checkout_item back[CHECKOUT_ITEMS_MAX];
	size_t nb = 0;

	h->nconf = 0;
	for (size_t i = 0; i < h->n; i++) {
		struct stock_counter *ctr = local_counter(l, h->items[i].sku);
		uint64_t rel = h->items[i].quantity - sell[i];

		if (ctr == NULL) /* its SKU was retired: the units went with it */
			continue;
		if (sell[i] > 0) {
			ASSERT(stock_counter_commit(ctr, sell[i]) == 0);
			h->conf[h->nconf] = h->items[i];
			h->conf[h->nconf++].quantity = sell[i];
		}
		if (rel > 0) {
			ASSERT(stock_counter_release(ctr, rel) == 0);
			/* Retired while this hold was being paid for: not for sale
			   (a buy at this very instant may take one of them). */
			if (retired_find(b, h->items[i].sku) != NULL)
				ASSERT(stock_counter_set(ctr, 0) == 0);
			back[nb] = h->items[i];
			back[nb++].quantity = rel;
		}
		record_sku(l, c, ctr, h->items[i].sku);
	}
	buyer_add(b, c, h->buyer, back, nb, false);
}

/* The refusal for a hold that is not held (or is being paid for). */
static int
not_held(const struct hold *h, struct checkout_view *out)
{
	view_hold(h, out);
	return STOCK_ECONFLICT;
}

/* Give up a paid-for confirm: clear paying, arm the expiry again (due at once if passed). */
static void
unpay(struct checkout_book *b, struct hold *h)
{
	h->paying = false;
	(void)stock_wheel_cancel(&b->wheel, &h->timer);
	book_arm(b, &h->timer, h->expires_at_ms);
}

/*
 * Confirm's first look, under the book's lock (held on entry, still held on
 * return): 0 to go on (@sell set), 1 when @h is confirmed already (the same
 * answer again, in @out), else the refusal.
 */
static int
confirm_begin(struct hold *h, const struct checkout_req *part, uint64_t *sell,
    struct checkout_view *out)
{
	if (h->status == HOLD_CONFIRMED) {
		view_hold(h, out);
		return 1;
	}
	if (h->status != HOLD_HELD || h->paying)
		return not_held(h, out);
	return confirm_amounts(h, part, sell);
}

/*
 * Charge for what this confirm sells. Entered with the book's lock held,
 * returns without it. While paying: no expiry, cancel or second confirm
 * until the sale is committed or given up. The hold outlives the call: only
 * the expiry thread frees holds, and only finished ones.
 */
static int
confirm_charge(struct checkout_book *b, struct hold *h, const uint64_t *sell, checkout_pay_fn pay,
    void *pay_arg, struct checkout_view *out)
{
	int rc;

	h->paying = true;
	view_hold(h, out);
	out->n = 0;
	for (size_t i = 0; i < h->n; i++)
		if (sell[i] > 0) {
			out->items[out->n] = h->items[i];
			out->items[out->n++].quantity = sell[i];
		}
	pthread_mutex_unlock(&b->mu);
	if ((rc = pay(out, pay_arg)) != 0) {
		pthread_mutex_lock(&b->mu);
		unpay(b, h);
		view_hold(h, out);
		out->pay_failed = true;
		pthread_mutex_unlock(&b->mu);
	}
	return rc;
}

/* Paid, but the sale could not start: a retry charges again with the same key. */
static void
confirm_unpay(struct checkout_book *b, struct hold *h, checkout_pay_fn pay)
{
	if (pay == NULL)
		return;
	pthread_mutex_lock(&b->mu);
	unpay(b, h);
	pthread_mutex_unlock(&b->mu);
}

int
checkout_local_confirm(inventory_t *inv, const char *id, size_t len,
    const struct checkout_req *part, checkout_pay_fn pay, void *pay_arg, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	uint64_t sell[CHECKOUT_ITEMS_MAX];
	struct stock_table_section sec;
	struct durable_pass pass;
	struct commit c;
	struct hold *h;
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	pthread_mutex_lock(&b->mu);
	if ((h = hold_find(b, id, len)) == NULL)
		rc = STOCK_ENOENT;
	else
		rc = confirm_begin(h, part, sell, out);
	if (rc != 0) {
		pthread_mutex_unlock(&b->mu);
		return rc == 1 ? 0 : rc;
	}
	if (pay != NULL) {
		if ((rc = confirm_charge(b, h, sell, pay, pay_arg, out)) != 0)
			return rc;
	} else {
		pthread_mutex_unlock(&b->mu);
	}
	/* Paid (or no payment): now sell, durably. */
	if ((rc = durable_enter(&l->guard, &pass)) != 0) {
		confirm_unpay(b, h, pay);
		return rc;
	}
	if (stock_table_read_begin(l->many, &sec) != 0) {
		durable_leave(&l->guard, &pass, false);
		confirm_unpay(b, h, pay);
		return STOCK_ENOMEM;
	}
	pthread_mutex_lock(&b->mu);
	if (pay == NULL && (h->status != HOLD_HELD || h->paying)) { /* a racing confirm won */
		rc = h->status == HOLD_CONFIRMED ? (view_hold(h, out), 0) : not_held(h, out);
		pthread_mutex_unlock(&b->mu);
		stock_table_read_end(l->many, &sec);
		durable_leave(&l->guard, &pass, false);
		return rc;
	}
	ASSERT(h->status == HOLD_HELD && h->paying == (pay != NULL)); /* ours while paying */
	h->paying = false;
	settle_hold(l, h, sell, &c);
	hold_finish(b, h, HOLD_CONFIRMED);
	record_hold(b, &c, h);
	view_hold(h, out);
	if ((rc = answer_record(l, &c, ans, out)) == 0)
		rc = record_queue(l, &c, &pend);
	record_free(&c);
	/* A refused queue (full, closing) leaves the sale in memory without its
	   records (docs/internals/checkout.md "A refused commit"). */
	stock_stat_inc(&b->confirms);
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	return settle(l, &pass, rc, &pend);
}

int
checkout_local_cancel(inventory_t *inv, const char *id, size_t len, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	uint64_t sell[CHECKOUT_ITEMS_MAX] = { 0 };
	struct stock_table_section sec;
	struct durable_pass pass;
	struct commit c;
	struct hold *h;
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	if ((rc = durable_enter(&l->guard, &pass)) != 0)
		return rc;
	if (stock_table_read_begin(l->many, &sec) != 0) {
		durable_leave(&l->guard, &pass, false);
		return STOCK_ENOMEM;
	}
	pthread_mutex_lock(&b->mu);
	h = hold_find(b, id, len);
	if (h == NULL || h->status != HOLD_HELD || h->paying) {
		rc = h == NULL ? STOCK_ENOENT : h->status == HOLD_CANCELLED ? (view_hold(h, out), 0) :
		    not_held(h, out);
		pthread_mutex_unlock(&b->mu);
		stock_table_read_end(l->many, &sec);
		durable_leave(&l->guard, &pass, false);
		return rc;
	}
	settle_hold(l, h, sell, &c);
	hold_finish(b, h, HOLD_CANCELLED);
	record_hold(b, &c, h);
	view_hold(h, out);
	if ((rc = answer_record(l, &c, ans, out)) == 0)
		rc = record_queue(l, &c, &pend);
	record_free(&c);
	stock_stat_inc(&b->cancels);
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	return settle(l, &pass, rc, &pend);
}

/* ---- orders and buys --------------------------------------------------------- */

int
checkout_local_order(inventory_t *inv, const struct checkout_req *req, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct stock_counter *ctr[CHECKOUT_ITEMS_MAX];
	struct stock_table_section sec;
	struct durable_pass pass;
	struct commit c;
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	if ((rc = durable_enter(&l->guard, &pass)) != 0)
		return rc;
	if (stock_table_read_begin(l->many, &sec) != 0) {
		durable_leave(&l->guard, &pass, false);
		return STOCK_ENOMEM;
	}
	pthread_mutex_lock(&b->mu);
	/* Reserve every item, then commit every item: all or nothing, and no
	   one ever sees a partial order as sold. */
	if ((rc = reserve_all(l, req, ctr, out)) != 0) {
		pthread_mutex_unlock(&b->mu);
		stock_table_read_end(l->many, &sec);
		durable_leave(&l->guard, &pass, false);
		return rc;
	}
	for (size_t i = 0; i < req->n; i++) {
		ASSERT(stock_counter_commit(ctr[i], req->items[i].quantity) == 0);
		record_sku(l, &c, ctr[i], req->items[i].sku);
	}
	buyer_add(b, &c, req->buyer, req->items, req->n, true);
	checkout_view_order(out, req);
	if ((rc = answer_record(l, &c, ans, out)) == 0)
		rc = record_queue(l, &c, &pend);
	record_free(&c);
	if (rc != 0)
		undo_change(b, ctr, req->items, req->n, req->buyer, true, ans);
	else
		stock_stat_inc(&b->orders);
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	return settle(l, &pass, rc, &pend);
}

int
checkout_local_buy_as(inventory_t *inv, const char *sku, uint64_t n, const char *buyer,
    struct idem_answer *ans, struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct checkout_req req = { .n = 1, .buyer = buyer };
	bool durable = local_durable_sku(sku);
	struct stock_counter *ctr;
	struct stock_table_section sec;
	struct durable_pass pass;
	struct commit c;
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	snprintf(req.items[0].sku, sizeof req.items[0].sku, "%s", sku);
	req.items[0].quantity = n;
	if (durable && (rc = durable_enter(&l->guard, &pass)) != 0)
		return rc;
	if (stock_table_read_begin(l->many, &sec) != 0) {
		if (durable)
			durable_leave(&l->guard, &pass, false);
		return STOCK_ENOMEM;
	}
	pthread_mutex_lock(&b->mu);
	if ((rc = reserve_all(l, &req, &ctr, out)) == 0) {
		ASSERT(stock_counter_commit(ctr, n) == 0);
		record_sku(l, &c, ctr, sku);
		out->level.remaining = c.docs[0].stock;
		out->level.held = c.docs[0].held;
		out->level.sold = c.docs[0].sold;
		out->level.version = c.docs[0].version;
		buyer_add(b, &c, buyer, req.items, 1, true);
		/* A cache SKU's records are write-behind: no ticket, since nobody
		   waits for one (a queued ticket must be waited for: the flusher
		   writes into it). */
		if ((rc = answer_record(l, &c, ans, out)) == 0)
			rc = record_queue(l, &c, durable ? &pend : NULL);
		record_free(&c);
		if (rc != 0 && !durable)
			rc = 0; /* write-behind, as any cache buy: the next record carries it */
		else if (rc != 0)
			undo_change(b, &ctr, req.items, req.n, req.buyer, true, ans);
	}
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	if (!durable)
		return rc;
	if (rc == STOCK_ESOLDOUT || rc == STOCK_ENOENT) {
		durable_leave(&l->guard, &pass, false);
		return rc;
	}
	return settle(l, &pass, rc, &pend);
}

/* ---- the catalog at run time ------------------------------------------------------ */

static struct retired *
retired_find(struct checkout_book *b, const char *sku)
{
	struct smap_node *x = smap_get(&b->retired, sku, strlen(sku));

	return x == NULL ? NULL : (struct retired *)((char *)x - offsetof(struct retired, node));
}

int
checkout_local_sku_create(inventory_t *inv, const char *sku, uint64_t remaining,
    struct idem_answer *ans, struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct stock_table_section sec;
	struct commit c;
	struct stock_counter *ctr;
	struct retired *r;
	size_t len = strlen(sku);
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	if (catalog_is_one(sku))
		return STOCK_EEXIST; /* the OneStock documents are fixed */
	if (stock_table_read_begin(l->many, &sec) != 0)
		return STOCK_ENOMEM;
	pthread_mutex_lock(&b->mu);
	r = retired_find(b, sku);
	ctr = stock_table_lookup(l->many, sku, len);
	if (ctr != NULL && r == NULL) {
		rc = STOCK_EEXIST;
	} else if (ctr != NULL) { /* a retired SKU opens again with new stock */
		rc = stock_counter_set(ctr, remaining);
	} else {
		rc = stock_table_insert(l->many, sku, len, remaining);
		ctr = rc == 0 ? stock_table_lookup(l->many, sku, len) : NULL;
		ASSERT(rc != 0 || ctr != NULL);
	}
	if (rc == 0) {
		record_sku(l, &c, ctr, sku);
		out->level.remaining = c.docs[0].stock;
		out->level.held = c.docs[0].held;
		out->level.sold = c.docs[0].sold;
		out->level.version = c.docs[0].version;
		if (r != NULL) {
			smap_del(&b->retired, &r->node);
			free(r);
			record_kv(&c, "retired/", sku, len, next_version(b), NULL);
		}
		if ((rc = answer_record(l, &c, ans, out)) == 0)
			rc = record_queue(l, &c, &pend);
		record_free(&c);
	}
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	if (rc == 0)
		rc = durable_wait(&pend, rc);
	if (rc == 0)
		log_info("admin", "%s created with %" PRIu64 " units", sku, remaining);
	return rc;
}

struct retire_ctx {
	struct local *l;
	const char *sku;
	struct commit *c;
	unsigned released;
};

static int
retire_hold(struct smap_node *n, void *arg)
{
	struct retire_ctx *x = arg;
	struct hold *h = (struct hold *)((char *)n - offsetof(struct hold, node));
	uint64_t none[CHECKOUT_ITEMS_MAX] = { 0 };

	if (h->status != HOLD_HELD || h->paying)
		return 0;
	for (size_t i = 0; i < h->n; i++)
		if (strcmp(h->items[i].sku, x->sku) == 0) {
			/* The commit has room for one hold: the caller loops. */
			if (x->released > 0)
				return 1;
			settle_hold(x->l, h, none, x->c);
			hold_finish(x->l->co, h, HOLD_CANCELLED);
			record_hold(x->l->co, x->c, h);
			x->released++;
			return 0;
		}
	return 0;
}

int
checkout_local_sku_retire(inventory_t *inv, const char *sku, struct idem_answer *ans,
    struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct stock_table_section sec;
	struct stock_counter *ctr;
	struct retired *r = NULL;
	unsigned holds = 0;
	bson_t *v;
	int rc = 0, more;

	memset(out, 0, sizeof *out);
	out->refused = -1;
	if (catalog_is_one(sku))
		return STOCK_EEXIST;
	if (stock_table_read_begin(l->many, &sec) != 0)
		return STOCK_ENOMEM;
	pthread_mutex_lock(&b->mu);
	if ((ctr = stock_table_lookup(l->many, sku, strlen(sku))) == NULL) {
		rc = STOCK_ENOENT;
		goto out;
	}
	if (retired_find(b, sku) == NULL) {
		if ((r = calloc(1, sizeof *r)) == NULL) {
			rc = STOCK_ENOMEM;
			goto out;
		}
		snprintf(r->sku, sizeof r->sku, "%s", sku);
		r->node.key = r->sku;
		r->node.key_len = strlen(r->sku);
	}
	/* Release its live holds, one commit each (each hold's records are
	   its own unit), then the SKU itself, at 0, and the marker. */
	do {
		struct commit c;
		struct retire_ctx x = { l, sku, &c, 0 };

		commit_init(&c);
		more = smap_foreach(&b->holds, retire_hold, &x);
		holds += x.released;
		if ((rc = record_queue(l, &c, NULL)) != 0)
			goto out;
	} while (more);
	{
		struct commit c;

		commit_init(&c);
		ASSERT(stock_counter_set(ctr, 0) == 0);
		record_sku(l, &c, ctr, sku);
		out->level.remaining = c.docs[0].stock;
		out->level.held = c.docs[0].held;
		out->level.sold = c.docs[0].sold;
		out->level.version = c.docs[0].version;
		v = bson_new();
		bson_append_int64(v, "at", 2, util_wall_ms());
		record_kv(&c, "retired/", sku, strlen(sku), next_version(b), v);
		if ((rc = answer_record(l, &c, ans, out)) == 0)
			rc = record_queue(l, &c, &pend);
		record_free(&c);
	}
	if (rc == 0 && r != NULL) {
		(void)smap_put(&b->retired, &r->node);
		r = NULL;
	}
out:
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	free(r);
	if (rc == 0)
		rc = durable_wait(&pend, rc);
	if (rc == 0)
		log_info("admin", "%s retired (%u live holds released)", sku, holds);
	return rc;
}

int
checkout_local_adjust_as(inventory_t *inv, const char *sku, bool absolute, uint64_t n,
    struct idem_answer *ans, struct checkout_view *out)
{
	struct pending pend = { .queued = false };
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct stock_table_section sec;
	struct commit c;
	struct stock_counter *ctr;
	int rc;

	commit_init(&c);
	memset(out, 0, sizeof *out);
	out->refused = -1;
	if (stock_table_read_begin(l->many, &sec) != 0)
		return STOCK_ENOMEM;
	pthread_mutex_lock(&b->mu);
	if ((ctr = local_counter(l, sku)) == NULL || retired_find(b, sku) != NULL) {
		rc = STOCK_ENOENT; /* retired: not for sale until PUT */
	} else if ((rc = absolute ? stock_counter_set(ctr, n) : stock_counter_restock(ctr, n)) == 0) {
		record_sku(l, &c, ctr, sku);
		out->level.remaining = c.docs[0].stock;
		out->level.held = c.docs[0].held;
		out->level.sold = c.docs[0].sold;
		out->level.version = c.docs[0].version;
		if ((rc = answer_record(l, &c, ans, out)) == 0)
			rc = record_queue(l, &c, &pend);
		record_free(&c);
	}
	pthread_mutex_unlock(&b->mu);
	stock_table_read_end(l->many, &sec);
	if (rc == 0)
		rc = durable_wait(&pend, rc);
	if (rc == 0)
		log_info("admin", "%s %s %" PRIu64, sku, absolute ? "corrected to remaining" : "restocked by",
		    n);
	return rc == STOCK_EBUSY ? STOCK_ESYS : rc;
}

/* ---- idempotency -------------------------------------------------------------- */

enum idem_state
checkout_local_idem_begin(inventory_t *inv, const char *key, size_t klen, const char *req,
    size_t rlen, int *status, struct buf *body)
{
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct idem *e;

	ASSERT(klen >= 1 && klen <= IDEM_KEY_MAX);
	pthread_mutex_lock(&b->mu);
	if ((e = idem_find(b, key, klen)) != NULL) {
		enum idem_state st = !e->done ? IDEM_IN_FLIGHT :
		    e->req_len != rlen || memcmp(e->req, req, rlen) != 0 ? IDEM_MISMATCH : IDEM_REPLAY;

		if (st == IDEM_REPLAY) {
			*status = e->status;
			buf_append(body, e->body, e->body_len);
			stock_stat_inc(&b->replays);
		}
		pthread_mutex_unlock(&b->mu);
		/* Replay only what is on disk (its commit may still be queued). */
		if (st == IDEM_REPLAY && store_sync(l->store) != 0) {
			buf_free(body);
			return IDEM_IN_FLIGHT;
		}
		return st;
	}
	if ((e = calloc(1, sizeof *e)) == NULL || (e->req = malloc(rlen + 1)) == NULL) {
		free(e);
		pthread_mutex_unlock(&b->mu);
		return IDEM_IN_FLIGHT; /* out of memory: refuse, retry later */
	}
	e->kind = OBJ_IDEM;
	memcpy(e->key, key, klen);
	e->key_len = klen;
	e->node.key = e->key;
	e->node.key_len = klen;
	memcpy(e->req, req, rlen);
	e->req_len = rlen;
	stock_wheel_timer_init(&e->timer, e);
	(void)smap_put(&b->idems, &e->node);
	pthread_mutex_unlock(&b->mu);
	return IDEM_NEW;
}

void
book_idem_free(struct idem *e)
{
	free(e->req);
	free(e->body);
	free(e);
}

int
checkout_local_idem_finish(inventory_t *inv, const char *key, size_t klen, int status,
    const char *body, size_t blen)
{
	struct local *l = to_local(inv);
	struct checkout_book *b = l->co;
	struct commit c;
	struct idem *e;
	int rc;

	commit_init(&c);
	pthread_mutex_lock(&b->mu);
	e = idem_find(b, key, klen);
	ASSERT(e != NULL && !e->done);
	if ((e->body = malloc(blen + 1)) == NULL) {
		smap_del(&b->idems, &e->node);
		pthread_mutex_unlock(&b->mu);
		book_idem_free(e);
		return STOCK_ENOMEM;
	}
	memcpy(e->body, body, blen);
	e->body_len = blen;
	e->status = status;
	e->done = true;
	e->at_ms = util_wall_ms();
	e->version = next_version(b);
	record_kv(&c, "idem/", e->key, e->key_len, e->version, record_idem_value(e));
	book_arm(b, &e->timer, e->at_ms + (int64_t)b->ttl_ms);
	{
		struct pending pend;

		rc = record_queue(l, &c, &pend);
		pthread_mutex_unlock(&b->mu);
		return durable_wait(&pend, rc);
	}
}

void
checkout_local_idem_abort(inventory_t *inv, const char *key, size_t klen)
{
	struct checkout_book *b = to_local(inv)->co;
	struct idem *e;

	pthread_mutex_lock(&b->mu);
	e = idem_find(b, key, klen);
	if (e != NULL && !e->done)
		smap_del(&b->idems, &e->node);
	else
		e = NULL;
	pthread_mutex_unlock(&b->mu);
	if (e != NULL)
		book_idem_free(e);
}

/* ---- expiry ------------------------------------------------------------------ */

/* A hold's deadline passed (or its retention ended); under the lock. */
static void
hold_timer(struct local *l, struct hold *h, struct commit *c)
{
	struct checkout_book *b = l->co;

	if (h->status != HOLD_HELD) {
		if (h->done_at_ms + (int64_t)b->retain_ms > util_wall_ms()) {
			book_arm(b, &h->timer, h->done_at_ms + (int64_t)b->retain_ms); /* finished meanwhile */
			return;
		}
		smap_del(&b->holds, &h->node);
		record_kv(c, "hold/", h->id, CHECKOUT_ID_LEN, next_version(b), NULL);
		free(h);
		return;
	}
	if (h->paying)
		return; /* confirm re-arms it if the payment fails */
	if (h->expires_at_ms > util_wall_ms()) {
		book_arm(b, &h->timer, h->expires_at_ms); /* woke early: wall clock stepped */
		return;
	}
	{
		uint64_t none[CHECKOUT_ITEMS_MAX] = { 0 };

		settle_hold(l, h, none, c);
	}
	h->status = HOLD_EXPIRED;
	h->done_at_ms = util_wall_ms();
	book_arm(b, &h->timer, h->done_at_ms + (int64_t)b->retain_ms);
	record_hold(b, c, h);
	stock_stat_inc(&b->expiries);
}

static void
idem_timer(struct local *l, struct idem *e, struct commit *c)
{
	struct checkout_book *b = l->co;

	smap_del(&b->idems, &e->node);
	record_kv(c, "idem/", e->key, e->key_len, next_version(b), NULL);
	book_idem_free(e);
}

static void *
expiry_main(void *arg)
{
	struct local *l = arg;
	struct checkout_book *b = l->co;

	for (;;) {
		struct stock_wheel_timer *due[64];
		struct timespec dl;
		size_t n;

		stock_deadline_in(&dl, POLL_MS);
		if (stock_latch_wait(&b->stop, &dl) == 0)
			return NULL;
		for (;;) {
			struct stock_table_section sec;

			if (stock_table_read_begin(l->many, &sec) != 0)
				break;
			/* Poll under the lock: outside it every timer is armed or idle. */
			pthread_mutex_lock(&b->mu);
			n = stock_wheel_poll(&b->wheel, stock_now_ns(), due, 64);
			for (size_t i = 0; i < n; i++) {
				struct commit c;
				int kind = *(int *)due[i]->arg;

				commit_init(&c);
				if (kind == OBJ_HOLD)
					hold_timer(l, due[i]->arg, &c);
				else
					idem_timer(l, due[i]->arg, &c);
				if (record_queue(l, &c, NULL) != 0)
					log_warn("checkout", "an expiry record was refused by the journal "
					    "(its state is written with the next change, or recovered as expired)");
			}
			pthread_mutex_unlock(&b->mu);
			stock_table_read_end(l->many, &sec);
			if (n < 64)
				break;
		}
	}
}

int
checkout_local_open(struct local *l, const struct app_config *cfg)
{
	struct checkout_book *b;

	if ((b = calloc(1, sizeof *b)) == NULL)
		return STOCK_ENOMEM;
	l->co = b;
	pthread_mutex_init(&b->mu, NULL);
	b->hold_ttl_ms = cfg->hold_ttl_ms;
	b->max_hold_ms = cfg->max_hold_ms;
	b->max_per_buyer = cfg->max_per_buyer;
	b->ttl_ms = cfg->idem_ttl_s * 1000;
	b->retain_ms = cfg->hold_retain_s * 1000;
	if (smap_init(&b->holds) != 0 || smap_init(&b->idems) != 0 || smap_init(&b->buyers) != 0 ||
	    smap_init(&b->retired) != 0 ||
	    stock_wheel_init(&b->wheel, TICK_NS, stock_now_ns()) != 0 ||
	    stock_latch_init(&b->stop, false) != 0 || stock_stat_init(&b->holds_made) != 0 ||
	    stock_stat_init(&b->confirms) != 0 || stock_stat_init(&b->cancels) != 0 ||
	    stock_stat_init(&b->expiries) != 0 || stock_stat_init(&b->orders) != 0 ||
	    stock_stat_init(&b->replays) != 0 || stock_stat_init(&b->limits) != 0)
		return STOCK_ENOMEM;
	pthread_mutex_lock(&b->mu);
	record_load_all(l);
	pthread_mutex_unlock(&b->mu);
	if (smap_count(&b->holds) > 0 || smap_count(&b->idems) > 0)
		log_info("checkout", "recovered %zu holds, %zu idempotency answers, %zu buyer counts",
		    smap_count(&b->holds), smap_count(&b->idems), smap_count(&b->buyers));
	if (pthread_create(&b->thread, NULL, expiry_main, l) != 0)
		return STOCK_ESYS;
	b->started = true;
	return 0;
}

/* Free the object whose smap node sits @arg (a size_t *) bytes into it. */
static int
free_at(struct smap_node *n, void *arg)
{
	free((char *)n - *(const size_t *)arg);
	return 0;
}

static int
free_idem(struct smap_node *n, void *arg)
{
	(void)arg;
	book_idem_free((struct idem *)((char *)n - offsetof(struct idem, node)));
	return 0;
}

void
checkout_local_close(struct local *l)
{
	struct checkout_book *b = l->co;

	if (b == NULL)
		return;
	if (b->started) {
		stock_latch_set(&b->stop);
		pthread_join(b->thread, NULL);
	}
	size_t off_hold = offsetof(struct hold, node), off_buyer = offsetof(struct buyer, node),
	    off_retired = offsetof(struct retired, node);

	if (b->holds.buckets != NULL)
		smap_foreach(&b->holds, free_at, &off_hold);
	if (b->idems.buckets != NULL)
		smap_foreach(&b->idems, free_idem, NULL);
	if (b->buyers.buckets != NULL)
		smap_foreach(&b->buyers, free_at, &off_buyer);
	if (b->retired.buckets != NULL)
		smap_foreach(&b->retired, free_at, &off_retired);
	smap_destroy(&b->holds);
	smap_destroy(&b->idems);
	smap_destroy(&b->buyers);
	smap_destroy(&b->retired);
	stock_wheel_destroy(&b->wheel);
	stock_latch_destroy(&b->stop);
	stock_stat_destroy(&b->holds_made);
	stock_stat_destroy(&b->confirms);
	stock_stat_destroy(&b->cancels);
	stock_stat_destroy(&b->expiries);
	stock_stat_destroy(&b->orders);
	stock_stat_destroy(&b->replays);
	stock_stat_destroy(&b->limits);
	pthread_mutex_destroy(&b->mu);
	free(b);
	l->co = NULL;
}

void
checkout_local_metrics(struct local *l, struct buf *out)
{
	struct checkout_book *b = l->co;
	size_t holds, idems;

	if (b == NULL)
		return;
	pthread_mutex_lock(&b->mu);
	holds = smap_count(&b->holds);
	idems = smap_count(&b->idems);
	pthread_mutex_unlock(&b->mu);
	prom_counter_u64(out, "stock_holds_created_total", "Holds created.", stock_stat_sum(&b->holds_made));
	prom_counter_u64(out, "stock_holds_confirmed_total", "Holds confirmed.", stock_stat_sum(&b->confirms));
	prom_counter_u64(out, "stock_holds_cancelled_total", "Holds cancelled.", stock_stat_sum(&b->cancels));
	prom_counter_u64(out, "stock_holds_expired_total", "Holds released by expiry.",
	    stock_stat_sum(&b->expiries));
	prom_counter_u64(out, "stock_orders_total", "Orders placed.", stock_stat_sum(&b->orders));
	prom_counter_u64(out, "stock_idempotent_replays_total",
	    "Requests answered with a stored Idempotency-Key answer.", stock_stat_sum(&b->replays));
	prom_counter_u64(out, "stock_buyer_limit_refusals_total",
	    "Requests refused by --max-per-buyer.", stock_stat_sum(&b->limits));
	prom_gauge_u64(out, "stock_holds_kept", "Holds in memory (live and finished, until retention ends).",
	    holds);
	prom_gauge_u64(out, "stock_idempotency_keys_kept", "Idempotency-Key answers kept.", idems);
}
