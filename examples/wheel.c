/*
 * Holds that expire: 4 shoppers reserve 1..3 units of a 300-unit drop, each
 * hold with a 2 ms deadline on a timing wheel. A shopper then pays — or
 * dawdles past the deadline. Paying cancels the hold's timer and, if that
 * succeeded, commits; a thread that polls the wheel releases every hold
 * whose deadline passed. Cancel and expiry never both win: each hold is
 * either sold or back on sale, never both, never neither.
 *
 * Exits 1 unless, at the end, nothing is held, sold equals the units the
 * shoppers paid for, remaining equals what expired plus what was never
 * reserved, and every expiry fired at or after its deadline.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <stock.h>

#define SHOPPERS 4
#define UNITS 300
#define ORDERS 120             /* per shopper */
#define HOLD_NS (2 * 1000000ull)

struct hold {
	struct stock_wheel_timer timer; /* its arg points back at the hold */
	uint64_t units;
};

static struct stock_counter drop;
static struct stock_wheel holds;
static struct hold orders[SHOPPERS][ORDERS];
static uint64_t paid, expired, lost, early; /* ck_pr: units; early: expiries */
static int shopping;                          /* ck_pr: shoppers still running */

static void
sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };

	nanosleep(&ts, NULL);
}

/* Runs on the expiry thread: the deadline passed before the shopper paid. */
static void
expire_hold(struct stock_wheel_timer *t, void *arg)
{
	struct hold *h = t->arg;

	(void)arg;
	if (stock_now_ns() < t->deadline)
		ck_pr_inc_64(&early);
	if (stock_counter_release(&drop, h->units) == 0)
		ck_pr_add_64(&expired, h->units);
}

static void *
expirer(void *arg)
{
	(void)arg;
	while (ck_pr_load_int(&shopping) > 0 || stock_wheel_count(&holds) > 0) {
		stock_wheel_advance(&holds, stock_now_ns(), expire_hold, NULL);
		sleep_ns(200 * 1000); /* a fifth of a tick */
	}
	return NULL;
}

static void *
shopper(void *arg)
{
	struct hold *mine = arg;
	unsigned seed = (unsigned)(mine - &orders[0][0]) + 1;

	for (int i = 0; i < ORDERS; i++) {
		struct hold *h = &mine[i];

		h->units = 1 + (uint64_t)(rand_r(&seed) % 3);
		if (stock_counter_reserve(&drop, h->units) != 0)
			continue; /* sold out (for now: expiring holds come back) */
		stock_wheel_timer_init(&h->timer, h);
		if (stock_wheel_add(&holds, &h->timer, stock_now_ns() + HOLD_NS) != 0)
			abort();
		/* Checkout takes 0..4 ms: about half the shoppers are too slow. */
		sleep_ns((uint64_t)(rand_r(&seed) % 4000) * 1000);
		if (stock_wheel_cancel(&holds, &h->timer) == 0) {
			/* The timer will not fire: the hold is ours to commit. */
			if (stock_counter_commit(&drop, h->units) != 0)
				abort();
			ck_pr_add_64(&paid, h->units);
		} else {
			ck_pr_add_64(&lost, h->units); /* expired: released by the wheel */
		}
	}
	ck_pr_dec_int(&shopping);
	return NULL;
}

int
main(void)
{
	pthread_t shoppers[SHOPPERS], exp;
	struct stock_level end;
	int ok;

	if (stock_counter_init(&drop, STOCK_STRATEGY_ATOMIC, UNITS) != 0 ||
	    stock_wheel_init(&holds, 1000000 /* 1 ms ticks */, stock_now_ns()) != 0)
		return 1;
	shopping = SHOPPERS;
	pthread_create(&exp, NULL, expirer, NULL);
	for (int i = 0; i < SHOPPERS; i++)
		pthread_create(&shoppers[i], NULL, shopper, orders[i]);
	for (int i = 0; i < SHOPPERS; i++)
		pthread_join(shoppers[i], NULL);
	pthread_join(exp, NULL);

	stock_counter_read(&drop, &end);
	printf("sold %llu, expired holds released %llu units (shoppers lost %llu), remaining %llu, "
	    "held %llu\n", (unsigned long long)end.sold, (unsigned long long)expired,
	    (unsigned long long)lost, (unsigned long long)end.remaining, (unsigned long long)end.held);
	ok = end.held == 0 && end.sold == paid && expired == lost && early == 0 &&
	    end.remaining + end.sold == UNITS && paid > 0 && expired > 0;
	printf("every hold sold or released exactly once, none expired early: %s\n", ok ? "yes" : "NO");
	stock_wheel_destroy(&holds);
	stock_counter_destroy(&drop);
	return ok ? 0 : 1;
}
