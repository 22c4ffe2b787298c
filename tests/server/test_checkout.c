/*
 * Checkout in the embedded inventory (inventory/checkout_local.c), in
 * process, through the inventory seam: threads racing holds, confirms
 * (whole and partial), cancels, expiries, orders and buys on the same SKUs
 * must leave remaining + held + sold == total with every confirmed unit
 * counted; one buyer racing their own limit ends exactly at it; a restart
 * recovers live holds (same deadline), releases expired ones, and replays
 * idempotency answers. Runs under TSan and ASan like every unit test.
 */
#include <criterion/criterion.h>

#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "inventory/inventory.h"

#define INITIAL 300

static int
rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

static void
cfg_init(struct app_config *cfg, const char *dir, uint64_t per_buyer)
{
	memset(cfg, 0, sizeof *cfg);
	snprintf(cfg->data_dir, sizeof cfg->data_dir, "%s", dir);
	cfg->initial_stock = INITIAL;
	cfg->db_inflight = 1024;
	cfg->hold_ttl_ms = 30000;
	cfg->max_hold_ms = 600000;
	cfg->max_per_buyer = per_buyer;
	cfg->idem_ttl_s = 86400;
	cfg->hold_retain_s = 3600;
}

static char *
tmpdir(void)
{
	char *d = strdup("/tmp/test_checkout.XXXXXX");

	cr_assert(d != NULL && mkdtemp(d) != NULL);
	return d;
}

static void
level(inventory_t *inv, const char *sku, struct stock_level *l)
{
	cr_assert_eq(inventory_peek(inv, sku, l), 0);
}

static struct checkout_req
one(const char *sku, uint64_t q, const char *buyer, uint64_t ttl)
{
	struct checkout_req r = { .n = 1, .buyer = buyer, .ttl_ms = ttl };

	snprintf(r.items[0].sku, sizeof r.items[0].sku, "%s", sku);
	r.items[0].quantity = q;
	return r;
}

/* ---- the race --------------------------------------------------------------- */

struct racer {
	inventory_t *inv;
	unsigned seed;
	uint64_t sold[2]; /* units this thread saw confirmed, ordered or bought: TSLA, NVDA */
	unsigned ops[6];
};

static const char *const race_skus[2] = { "TSLA", "NVDA" };

static void
count(struct racer *r, const struct checkout_view *v)
{
	for (size_t i = 0; i < v->n; i++)
		r->sold[strcmp(v->items[i].sku, "TSLA") == 0 ? 0 : 1] += v->items[i].quantity;
}

static void *
race_main(void *arg)
{
	struct racer *r = arg;
	char held[8][CHECKOUT_ID_LEN + 1];
	int nheld = 0;

	for (int k = 0; k < 1500; k++) {
		unsigned op = (unsigned)rand_r(&r->seed) % 6;
		struct checkout_view v;
		struct checkout_req req = { .n = 1 + (unsigned)rand_r(&r->seed) % 2,
			.ttl_ms = 5 + (unsigned)rand_r(&r->seed) % 40 };

		for (size_t i = 0; i < req.n; i++) {
			snprintf(req.items[i].sku, sizeof req.items[i].sku, "%s", race_skus[i]);
			req.items[i].quantity = 1 + (unsigned)rand_r(&r->seed) % 3;
		}
		if (op <= 1 || nheld == 0) { /* hold */
			if (nheld < 8 && inventory_hold(r->inv, &req, NULL, &v) == 0)
				memcpy(held[nheld++], v.id, sizeof held[0]);
			r->ops[0]++;
		} else if (op == 2 || op == 3) { /* confirm, sometimes less */
			struct checkout_req part = { .n = 1 };
			int i = (int)((unsigned)rand_r(&r->seed) % (unsigned)nheld);
			bool partial = rand_r(&r->seed) % 2;

			snprintf(part.items[0].sku, sizeof part.items[0].sku, "TSLA");
			part.items[0].quantity = 1;
			if (inventory_confirm(r->inv, held[i], CHECKOUT_ID_LEN, partial ? &part : NULL, NULL,
			    NULL, NULL, &v) == 0)
				count(r, &v);
			memcpy(held[i], held[--nheld], sizeof held[0]); /* never confirmed twice */
			r->ops[1]++;
		} else if (op == 4) { /* cancel */
			int i = (int)((unsigned)rand_r(&r->seed) % (unsigned)nheld);

			(void)inventory_cancel(r->inv, held[i], CHECKOUT_ID_LEN, NULL, &v);
			memcpy(held[i], held[--nheld], sizeof held[0]);
			r->ops[2]++;
		} else if (rand_r(&r->seed) % 2) { /* order */
			if (inventory_order(r->inv, &req, NULL, &v) == 0)
				count(r, &v);
			r->ops[3]++;
		} else { /* a buy through the checkout path */
			if (inventory_buy_as(r->inv, "NVDA", 1, NULL, NULL, &v) == 0)
				r->sold[1]++;
			r->ops[4]++;
		}
	}
	return NULL;
}

Test(checkout, race_holds_confirms_cancels_expiries_orders, .timeout = 120)
{
	char *dir = tmpdir();
	struct app_config cfg;
	struct racer rs[8];
	pthread_t th[8];
	inventory_t *inv;
	uint64_t sold[2] = { 0, 0 };

	cfg_init(&cfg, dir, 0);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	for (int i = 0; i < 8; i++) {
		memset(&rs[i], 0, sizeof rs[i]);
		rs[i].inv = inv;
		rs[i].seed = 1234u + (unsigned)i;
		cr_assert_eq(pthread_create(&th[i], NULL, race_main, &rs[i]), 0);
	}
	/* Meanwhile: the invariant holds at every instant we look. */
	for (int k = 0; k < 200; k++) {
		struct stock_level l;

		for (int s = 0; s < 2; s++) {
			level(inv, race_skus[s], &l);
			cr_assert_eq(l.remaining + l.held + l.sold, INITIAL, "%s: %llu + %llu + %llu",
			    race_skus[s], (unsigned long long)l.remaining, (unsigned long long)l.held,
			    (unsigned long long)l.sold);
		}
		usleep(500);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		sold[0] += rs[i].sold[0];
		sold[1] += rs[i].sold[1];
	}
	cr_expect(sold[0] > 0 && sold[1] > 0);
	/* Every hold left expires within its ttl (<= 45 ms) plus the wheel's delay. */
	for (int s = 0; s < 2; s++) {
		struct stock_level l;
		int waited = 0;

		do {
			usleep(10000);
			level(inv, race_skus[s], &l);
		} while (l.held > 0 && (waited += 10) < 5000);
		cr_expect_eq(l.held, 0, "%s: %llu still held", race_skus[s], (unsigned long long)l.held);
		cr_expect_eq(l.sold, sold[s], "%s: sold %llu, confirmed/ordered/bought %llu", race_skus[s],
		    (unsigned long long)l.sold, (unsigned long long)sold[s]);
		cr_expect_eq(l.remaining + l.held + l.sold, INITIAL);
	}
	/* The same state after a restart: every acknowledged change was durable. */
	inventory_close(inv);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	for (int s = 0; s < 2; s++) {
		struct stock_level l;

		level(inv, race_skus[s], &l);
		cr_expect_eq(l.sold, sold[s]);
		cr_expect_eq(l.held, 0);
		cr_expect_eq(l.remaining, INITIAL - sold[s]);
	}
	inventory_close(inv);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

/* ---- one buyer racing their own limit ------------------------------------------- */

struct limiter {
	inventory_t *inv;
	atomic_int *ok;
};

static void *
limit_main(void *arg)
{
	struct limiter *x = arg;
	struct checkout_req r = one("AMD", 1, "alice", 60000);
	struct checkout_view v;

	for (int k = 0; k < 4; k++) {
		int rc = k % 2 ? inventory_hold(x->inv, &r, NULL, &v) : inventory_order(x->inv, &r, NULL, &v);

		if (rc == 0)
			atomic_fetch_add(x->ok, 1);
		else
			cr_expect(rc == STOCK_ESOLDOUT && v.over_limit, "rc %d", rc);
	}
	return NULL;
}

Test(checkout, one_buyer_racing_their_limit_ends_exactly_at_it, .timeout = 60)
{
	char *dir = tmpdir();
	struct app_config cfg;
	struct checkout_view v;
	struct checkout_req r;
	struct stock_level l;
	struct limiter x[16];
	pthread_t th[16];
	atomic_int ok = 0;
	inventory_t *inv;

	cfg_init(&cfg, dir, 5);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	for (int i = 0; i < 16; i++) {
		x[i] = (struct limiter){ inv, &ok };
		cr_assert_eq(pthread_create(&th[i], NULL, limit_main, &x[i]), 0);
	}
	for (int i = 0; i < 16; i++)
		pthread_join(th[i], NULL);
	cr_expect_eq(atomic_load(&ok), 5);
	level(inv, "AMD", &l);
	cr_expect_eq(l.held + l.sold, 5);
	/* Another buyer, and an anonymous one, are not limited by alice. */
	r = one("AMD", 3, "bob", 60000);
	cr_expect_eq(inventory_order(inv, &r, NULL, &v), 0);
	r = one("AMD", 7, NULL, 60000);
	cr_expect_eq(inventory_order(inv, &r, NULL, &v), 0);
	/* bob: 3 + 3 > 5, refused and nothing changed. */
	r = one("AMD", 3, "bob", 60000);
	level(inv, "AMD", &l);
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), STOCK_ESOLDOUT);
	cr_expect(v.over_limit);
	{
		struct stock_level after;
		level(inv, "AMD", &after);
		cr_expect(after.remaining == l.remaining && after.held == l.held && after.sold == l.sold);
	}
	/* The limit holds across a restart (the counts are durable). */
	inventory_close(inv);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	r = one("AMD", 1, "alice", 60000);
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), STOCK_ESOLDOUT);
	inventory_close(inv);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

Test(checkout, cancel_and_expiry_give_the_allowance_back, .timeout = 60)
{
	char *dir = tmpdir();
	struct app_config cfg;
	struct checkout_view v, h1, h2;
	struct checkout_req r;
	inventory_t *inv;

	cfg_init(&cfg, dir, 2);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	r = one("NVDA", 1, "carol", 60000);
	cr_assert_eq(inventory_hold(inv, &r, NULL, &h1), 0);
	r = one("NVDA", 1, "carol", 50);
	cr_assert_eq(inventory_hold(inv, &r, NULL, &h2), 0);
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), STOCK_ESOLDOUT);
	cr_assert_eq(inventory_cancel(inv, h1.id, CHECKOUT_ID_LEN, NULL, &v), 0);
	cr_expect_eq(v.status, HOLD_CANCELLED);
	r = one("NVDA", 1, "carol", 60000);
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), 0);
	usleep(300000); /* h2 expires */
	cr_assert_eq(inventory_hold_get(inv, h2.id, CHECKOUT_ID_LEN, &v), 0);
	cr_expect_eq(v.status, HOLD_EXPIRED);
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), 0);
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), STOCK_ESOLDOUT);
	inventory_close(inv);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

/* ---- states and restarts ---------------------------------------------------------- */

Test(checkout, hold_states_and_restart, .timeout = 60)
{
	char *dir = tmpdir();
	struct app_config cfg;
	struct checkout_view live, soon, conf, canc, v;
	struct checkout_req r, part = one("NVDA", 1, NULL, 0);
	struct stock_level l;
	inventory_t *inv;

	cfg_init(&cfg, dir, 0);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	r = (struct checkout_req){ .n = 2, .ttl_ms = 60000 };
	snprintf(r.items[0].sku, sizeof r.items[0].sku, "NVDA");
	r.items[0].quantity = 2;
	snprintf(r.items[1].sku, sizeof r.items[1].sku, "AMD");
	r.items[1].quantity = 1;
	cr_assert_eq(inventory_hold(inv, &r, NULL, &live), 0);
	cr_assert_eq(inventory_hold(inv, &r, NULL, &conf), 0);
	cr_assert_eq(inventory_hold(inv, &r, NULL, &canc), 0);
	r.ttl_ms = 200;
	cr_assert_eq(inventory_hold(inv, &r, NULL, &soon), 0);
	level(inv, "NVDA", &l);
	cr_expect(l.held == 8 && l.remaining == INITIAL - 8);
	/* All or nothing: AMD short -> nothing held, the refused item named. */
	r.items[1].quantity = INITIAL;
	cr_expect_eq(inventory_hold(inv, &r, NULL, &v), STOCK_ESOLDOUT);
	cr_expect_eq(v.refused, 1);
	level(inv, "NVDA", &l);
	cr_expect_eq(l.held, 8);
	/* Partial confirm: 1 NVDA sold, the other NVDA and the AMD released. */
	cr_assert_eq(inventory_confirm(inv, conf.id, CHECKOUT_ID_LEN, &part, NULL, NULL, NULL, &v), 0);
	cr_expect(v.status == HOLD_CONFIRMED && v.n == 1 && v.items[0].quantity == 1);
	cr_expect_eq(inventory_confirm(inv, conf.id, CHECKOUT_ID_LEN, NULL, NULL, NULL, NULL, &v), 0);
	cr_expect_eq(inventory_cancel(inv, conf.id, CHECKOUT_ID_LEN, NULL, &v), STOCK_ECONFLICT);
	cr_expect_eq(v.status, HOLD_CONFIRMED);
	/* A partial confirm naming a SKU or quantity not held: refused. */
	part.items[0].quantity = 3;
	cr_expect_eq(inventory_confirm(inv, live.id, CHECKOUT_ID_LEN, &part, NULL, NULL, NULL, &v),
	    STOCK_EINVAL);
	cr_assert_eq(inventory_cancel(inv, canc.id, CHECKOUT_ID_LEN, NULL, &v), 0);
	cr_expect_eq(inventory_cancel(inv, canc.id, CHECKOUT_ID_LEN, NULL, &v), 0);
	cr_expect_eq(inventory_confirm(inv, canc.id, CHECKOUT_ID_LEN, NULL, NULL, NULL, NULL, &v),
	    STOCK_ECONFLICT);
	cr_expect_eq(v.status, HOLD_CANCELLED);
	cr_expect_eq(inventory_hold_get(inv, "h_0000", 6, &v), STOCK_ENOENT);
	level(inv, "NVDA", &l);
	cr_expect(l.held == 4 && l.sold == 1 && l.remaining == INITIAL - 5);
	/* Close while "soon" is live; it expires while we are down. */
	inventory_close(inv);
	usleep(400000);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	cr_assert_eq(inventory_hold_get(inv, live.id, CHECKOUT_ID_LEN, &v), 0);
	cr_expect(v.status == HOLD_HELD && v.expires_at_ms == live.expires_at_ms);
	for (int i = 0; i < 100; i++) { /* released at start-up, by the expiry thread */
		cr_assert_eq(inventory_hold_get(inv, soon.id, CHECKOUT_ID_LEN, &v), 0);
		if (v.status == HOLD_EXPIRED)
			break;
		usleep(10000);
	}
	cr_expect_eq(v.status, HOLD_EXPIRED);
	cr_assert_eq(inventory_hold_get(inv, conf.id, CHECKOUT_ID_LEN, &v), 0);
	cr_expect(v.status == HOLD_CONFIRMED && v.n == 1);
	level(inv, "NVDA", &l);
	cr_expect(l.held == 2 && l.sold == 1 && l.remaining == INITIAL - 3, "%llu %llu %llu",
	    (unsigned long long)l.remaining, (unsigned long long)l.held, (unsigned long long)l.sold);
	level(inv, "AMD", &l);
	cr_expect(l.held == 1 && l.sold == 0);
	inventory_close(inv);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

/* ---- idempotency ------------------------------------------------------------------- */

static int
render_id(const struct checkout_view *v, struct buf *b, void *arg)
{
	(void)arg;
	buf_printf(b, "{\"id\":\"%s\"}", v->id);
	return 0;
}

Test(checkout, idempotency_replay_reuse_in_flight_restart, .timeout = 60)
{
	char *dir = tmpdir();
	struct app_config cfg;
	struct checkout_view v;
	struct checkout_req r = one("TSLA", 2, NULL, 60000);
	struct stock_level l;
	struct buf body = BUF_INIT;
	inventory_t *inv;
	char first[128];
	int status = 0;

	cfg_init(&cfg, dir, 0);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	cr_assert_eq(inventory_idem_begin(inv, "k1", 2, "req-a", 5, &status, &body), IDEM_NEW);
	cr_expect_eq(inventory_idem_begin(inv, "k1", 2, "req-a", 5, &status, &body), IDEM_IN_FLIGHT);
	{
		struct idem_answer ans = { .key = "k1", .key_len = 2, .req = "req-a", .req_len = 5,
			.status = 201, .render = render_id };
		cr_assert_eq(inventory_order(inv, &r, &ans, &v), 0);
		cr_assert(ans.body.len < sizeof first);
		memcpy(first, ans.body.data, ans.body.len);
		first[ans.body.len] = '\0';
		buf_free(&ans.body);
	}
	cr_assert_eq(inventory_idem_begin(inv, "k1", 2, "req-a", 5, &status, &body), IDEM_REPLAY);
	cr_expect_eq(status, 201);
	cr_expect(body.len == strlen(first) && memcmp(body.data, first, body.len) == 0);
	buf_free(&body);
	cr_expect_eq(inventory_idem_begin(inv, "k1", 2, "req-b", 5, &status, &body), IDEM_MISMATCH);
	/* A refusal stored on its own; an aborted key runs again. */
	cr_assert_eq(inventory_idem_begin(inv, "k2", 2, "x", 1, &status, &body), IDEM_NEW);
	cr_assert_eq(inventory_idem_finish(inv, "k2", 2, 409, "{\"error\":\"sold_out\"}", 20), 0);
	cr_assert_eq(inventory_idem_begin(inv, "k3", 2, "x", 1, &status, &body), IDEM_NEW);
	inventory_idem_abort(inv, "k3", 2);
	cr_expect_eq(inventory_idem_begin(inv, "k3", 2, "x", 1, &status, &body), IDEM_NEW);
	inventory_idem_abort(inv, "k3", 2);
	/* After a restart: the same answers, byte for byte; the sale happened once. */
	inventory_close(inv);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	cr_assert_eq(inventory_idem_begin(inv, "k1", 2, "req-a", 5, &status, &body), IDEM_REPLAY);
	cr_expect(status == 201 && body.len == strlen(first) && memcmp(body.data, first, body.len) == 0);
	buf_free(&body);
	cr_assert_eq(inventory_idem_begin(inv, "k2", 2, "x", 1, &status, &body), IDEM_REPLAY);
	cr_expect(status == 409 && body.len == 20);
	buf_free(&body);
	cr_expect_eq(inventory_idem_begin(inv, "k3", 2, "x", 1, &status, &body), IDEM_NEW);
	inventory_idem_abort(inv, "k3", 2);
	level(inv, "TSLA", &l);
	cr_expect_eq(l.sold, 2);
	inventory_close(inv);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

/* ---- payment before confirm ------------------------------------------------------- */

struct payer {
	inventory_t *inv;
	int answer;               /* what the payment step returns */
	unsigned sleep_ms;
	atomic_int calls;
	uint64_t charged_units;
	struct checkout_view during; /* a Cancel and a second Confirm tried while paying */
	int cancel_rc, confirm_rc;
};

static int
pay_cb(const struct checkout_view *h, void *arg)
{
	struct payer *p = arg;
	struct checkout_view v;

	atomic_fetch_add(&p->calls, 1);
	p->charged_units = 0;
	for (size_t i = 0; i < h->n; i++)
		p->charged_units += h->items[i].quantity;
	p->cancel_rc = inventory_cancel(p->inv, h->id, CHECKOUT_ID_LEN, NULL, &p->during);
	p->confirm_rc = inventory_confirm(p->inv, h->id, CHECKOUT_ID_LEN, NULL, NULL, NULL, NULL, &v);
	usleep(p->sleep_ms * 1000);
	return p->answer;
}

Test(checkout, payment_gates_confirm, .timeout = 60)
{
	char *dir = tmpdir();
	struct app_config cfg;
	struct checkout_view h, v;
	struct checkout_req r = one("TSLA", 3, NULL, 100);
	struct checkout_req part = one("TSLA", 2, NULL, 0);
	struct stock_level l;
	struct payer p = { 0 };
	inventory_t *inv;

	cfg_init(&cfg, dir, 0);
	cr_assert_eq(inventory_local_open(&inv, &cfg), 0);
	p.inv = inv;
	/* The payment fails and takes longer than the hold's ttl: the hold is
	   neither cancelled, confirmed twice, nor expired under it; then it
	   expires at once. */
	cr_assert_eq(inventory_hold(inv, &r, NULL, &h), 0);
	p.answer = STOCK_ESYS;
	p.sleep_ms = 300;
	cr_expect_eq(inventory_confirm(inv, h.id, CHECKOUT_ID_LEN, NULL, pay_cb, &p, NULL, &v), STOCK_ESYS);
	cr_expect(v.pay_failed && v.status == HOLD_HELD);
	cr_expect(p.cancel_rc == STOCK_ECONFLICT && p.during.paying);
	cr_expect_eq(p.confirm_rc, STOCK_ECONFLICT);
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(inventory_hold_get(inv, h.id, CHECKOUT_ID_LEN, &v), 0);
		if (v.status == HOLD_EXPIRED)
			break;
		usleep(10000);
	}
	cr_expect_eq(v.status, HOLD_EXPIRED);
	level(inv, "TSLA", &l);
	cr_expect(l.held == 0 && l.sold == 0);
	/* Success: charged for what is sold (a partial confirm: 2 of 3), sold once. */
	r.ttl_ms = 60000;
	cr_assert_eq(inventory_hold(inv, &r, NULL, &h), 0);
	p.answer = 0;
	p.sleep_ms = 0;
	cr_expect_eq(inventory_confirm(inv, h.id, CHECKOUT_ID_LEN, &part, pay_cb, &p, NULL, &v), 0);
	cr_expect(v.status == HOLD_CONFIRMED && !v.pay_failed);
	cr_expect_eq(p.charged_units, 2);
	cr_expect_eq(atomic_load(&p.calls), 2);
	/* Confirmed already: no second charge. */
	cr_expect_eq(inventory_confirm(inv, h.id, CHECKOUT_ID_LEN, NULL, pay_cb, &p, NULL, &v), 0);
	cr_expect_eq(atomic_load(&p.calls), 2);
	level(inv, "TSLA", &l);
	cr_expect(l.held == 0 && l.sold == 2 && l.remaining == INITIAL - 2);
	inventory_close(inv);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}
