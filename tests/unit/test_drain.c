/*
 * Drain: close never returns 0 while someone is inside, enters after a close
 * are refused, a timed-out close stays closed, the last leave wakes the
 * closer; and the STOCK_ECLOSED error code.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>

#include <stock.h>

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

Test(drain, basics)
{
	struct stock_drain d, s = STOCK_DRAIN_INITIALIZER;
	struct timespec past = { 0, 0 };

	cr_expect_eq(stock_drain_init(NULL), STOCK_EINVAL);
	cr_assert_eq(stock_drain_init(&d), 0);
	cr_expect_eq(stock_drain_inside(&d), 0);
	cr_expect_eq(stock_drain_enter(&d), 0);
	cr_expect_eq(stock_drain_enter(&d), 0);
	cr_expect_eq(stock_drain_inside(&d), 2);
	stock_drain_leave(&d);
	cr_expect_eq(stock_drain_inside(&d), 1);
	stock_drain_leave(&d);
	cr_expect_eq(stock_drain_inside(&d), 0);
	stock_drain_leave(&d); /* unmatched: ignored */
	cr_expect_eq(stock_drain_inside(&d), 0);
	cr_expect_eq(stock_drain_enter(&d), 0, "an unmatched leave must not close");
	stock_drain_leave(&d);

	cr_expect_eq(stock_drain_close(&d, &past), 0, "nobody inside: closes at once");
	cr_expect_eq(stock_drain_enter(&d), STOCK_ECLOSED);
	cr_expect_eq(stock_drain_inside(&d), 0, "a refused enter counts nothing");
	cr_expect_eq(stock_drain_close(&d, NULL), 0, "close is idempotent");
	stock_drain_destroy(&d);

	cr_expect_eq(stock_drain_enter(&s), 0);
	stock_drain_leave(&s);
	cr_expect_eq(stock_drain_close(&s, NULL), 0);

	cr_expect_eq(stock_drain_enter(NULL), STOCK_EINVAL);
	cr_expect_eq(stock_drain_close(NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_drain_inside(NULL), 0);
	stock_drain_leave(NULL);
	stock_drain_destroy(NULL);
}

Test(drain, error_code)
{
	cr_expect_eq(STOCK_ECLOSED, -13);
	cr_expect_str_eq(stock_err_name(STOCK_ECLOSED), "STOCK_ECLOSED");
	cr_expect_str_eq(stock_strerror(STOCK_ECLOSED), "closed: shutting down");
	cr_expect_eq(STOCK__ERR_LAST, STOCK_EHELD - 1);
}

Test(drain, close_times_out_and_stays_closed)
{
	struct stock_drain d = STOCK_DRAIN_INITIALIZER;
	struct timespec dl;
	uint64_t t0;

	cr_assert_eq(stock_drain_enter(&d), 0);
	t0 = stock_now_ns();
	cr_assert_eq(stock_deadline_in(&dl, 30), 0);
	cr_expect_eq(stock_drain_close(&d, &dl), STOCK_ETIMEDOUT);
	cr_expect_geq(stock_now_ns() - t0, 30 * 1000000ULL, "returned before the deadline");
	cr_expect_eq(stock_drain_inside(&d), 1);
	cr_expect_eq(stock_drain_enter(&d), STOCK_ECLOSED, "still closed after a timeout");
	dl.tv_sec = 0;
	dl.tv_nsec = 0;
	cr_expect_eq(stock_drain_close(&d, &dl), STOCK_ETIMEDOUT);
	stock_drain_leave(&d);
	cr_expect_eq(stock_drain_inside(&d), 0);
	cr_expect_eq(stock_drain_close(&d, &dl), 0);
	cr_expect_eq(stock_drain_enter(&d), STOCK_ECLOSED);
}

/* ---- the last leave wakes the closer(s) ---------------------------------- */

struct closer {
	struct stock_drain *d;
	int rc;       /* written by the closer before `done` */
	int done;     /* ck_pr */
};

static void *
close_forever(void *arg)
{
	struct closer *c = arg;

	c->rc = stock_drain_close(c->d, NULL);
	ck_pr_store_int(&c->done, 1);
	return NULL;
}

Test(drain, last_leave_wakes_closers, .timeout = 60)
{
	struct stock_drain d = STOCK_DRAIN_INITIALIZER;
	struct closer c[3] = { { &d, -1, 0 }, { &d, -1, 0 }, { &d, -1, 0 } };
	pthread_t t[3];

	cr_assert_eq(stock_drain_enter(&d), 0);
	cr_assert_eq(stock_drain_enter(&d), 0);
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, close_forever, &c[i]);
	/* Closing has started (by whichever closer ran first): enters fail. */
	for (int i = 0; i < 100000 && stock_drain_enter(&d) == 0; i++) {
		stock_drain_leave(&d);
		sched_yield();
	}
	cr_assert_eq(stock_drain_enter(&d), STOCK_ECLOSED);
	sleep_ms(20);
	stock_drain_leave(&d);
	sleep_ms(20);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(ck_pr_load_int(&c[i].done), 0, "closer %d returned with one inside", i);
	stock_drain_leave(&d);
	for (int i = 0; i < 3; i++) {
		pthread_join(t[i], NULL);
		cr_expect_eq(c[i].rc, 0);
	}
	cr_expect_eq(stock_drain_inside(&d), 0);
}

/*
 * Stress: workers enter, bump a gauge of threads inside, touch the
 * resource, drop the gauge and leave, until enter is refused. The closer
 * asserts that the moment close returns 0 nobody is inside — by the gauge,
 * by the drain's count, and by workers that would find the resource gone —
 * and that no enter succeeds afterwards. Some closes use a short deadline
 * first and retry.
 */
#define DRAIN_WORKERS 8
#define DRAIN_ROUNDS 150

struct resource {
	struct stock_drain drain;
	struct stock_gauge inside;  /* workers between enter and leave */
	struct stock_gauge peak;    /* high-water mark of `inside` */
	struct stock_latch go;
	uint64_t uses;              /* ck_pr: successful enters */
	int torn_down;              /* ck_pr: set once close returned 0 */
	int used_after_close;       /* ck_pr */
	uint64_t plain;             /* plain, written inside; read by the closer */
};

static void *
drain_worker(void *arg)
{
	struct resource *r = arg;

	cr_assert_eq(stock_latch_wait(&r->go, NULL), 0);
	for (;;) {
		int rc = stock_drain_enter(&r->drain);

		if (rc == STOCK_ECLOSED)
			break;
		cr_assert_eq(rc, 0);
		stock_gauge_max(&r->peak, stock_gauge_add(&r->inside, 1));
		if (ck_pr_load_int(&r->torn_down))
			ck_pr_inc_int(&r->used_after_close);
		ck_pr_inc_64(&r->uses);
		if ((ck_pr_load_64(&r->uses) & 63) == 0)
			sched_yield(); /* now and then, stay inside across a reschedule */
		stock_gauge_add(&r->inside, (uint64_t)-1);
		stock_drain_leave(&r->drain);
	}
	return NULL;
}

static void
drain_round(int round)
{
	struct resource r = { .drain = STOCK_DRAIN_INITIALIZER, .inside = STOCK_GAUGE_INITIALIZER(0),
		.peak = STOCK_GAUGE_INITIALIZER(0), .go = STOCK_LATCH_INITIALIZER(false) };
	pthread_t t[DRAIN_WORKERS];
	struct timespec dl;
	int rc;

	for (int i = 0; i < DRAIN_WORKERS; i++)
		pthread_create(&t[i], NULL, drain_worker, &r);
	stock_latch_set(&r.go);
	while (ck_pr_load_64(&r.uses) < 200)
		sched_yield();

	if (round % 2) {
		/* A deadline that may or may not be long enough. */
		dl.tv_sec = 0;
		dl.tv_nsec = 0;
		rc = stock_drain_close(&r.drain, round % 4 == 1 ? &dl : NULL);
		if (rc == STOCK_ETIMEDOUT) {
			cr_assert_eq(stock_drain_enter(&r.drain), STOCK_ECLOSED);
			rc = stock_drain_close(&r.drain, NULL);
		}
	} else {
		do {
			stock_deadline_in(&dl, 1);
			rc = stock_drain_close(&r.drain, &dl);
		} while (rc == STOCK_ETIMEDOUT);
	}
	cr_assert_eq(rc, 0);
	cr_assert_eq(stock_gauge_get(&r.inside), 0, "close returned 0 with %llu inside",
	    (unsigned long long)stock_gauge_get(&r.inside));
	cr_assert_eq(stock_drain_inside(&r.drain), 0);
	ck_pr_store_int(&r.torn_down, 1);
	cr_assert_eq(stock_drain_enter(&r.drain), STOCK_ECLOSED);

	for (int i = 0; i < DRAIN_WORKERS; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(r.used_after_close, 0, "an enter succeeded after close returned 0");
	cr_assert_eq(stock_gauge_get(&r.inside), 0);
	cr_assert_leq(stock_gauge_get(&r.peak), DRAIN_WORKERS);
	cr_assert_geq(stock_gauge_get(&r.peak), 1);
}

Test(drain, close_waits_for_everyone_inside, .timeout = 120)
{
	for (int round = 0; round < DRAIN_ROUNDS; round++)
		drain_round(round);
}

/* What a thread did inside is visible to the closer once close returns 0. */
struct publisher {
	struct stock_drain *d;
	uint64_t *slot; /* plain */
};

static void *
publish_inside(void *arg)
{
	struct publisher *p = arg;

	*p->slot = 7;
	stock_drain_leave(p->d);
	return NULL;
}

Test(drain, leave_publishes_to_closer, .timeout = 60)
{
	for (int i = 0; i < 200; i++) {
		struct stock_drain d = STOCK_DRAIN_INITIALIZER;
		uint64_t slot[4] = { 0 };
		struct publisher p[4];
		pthread_t t[4];

		for (int k = 0; k < 4; k++) {
			cr_assert_eq(stock_drain_enter(&d), 0); /* entered on their behalf */
			p[k].d = &d;
			p[k].slot = &slot[k];
			pthread_create(&t[k], NULL, publish_inside, &p[k]);
		}
		cr_assert_eq(stock_drain_close(&d, NULL), 0);
		for (int k = 0; k < 4; k++)
			cr_assert_eq(slot[k], 7, "write made inside not visible after close");
		for (int k = 0; k < 4; k++)
			pthread_join(t[k], NULL);
	}
}
