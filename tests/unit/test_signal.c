/*
 * Auto-reset event: no lost wake-ups, exactly one waiter per set, timeouts.
 */
#include <criterion/criterion.h>
#include <pthread.h>

#include <stock.h>

Test(signal, set_then_wait_and_coalescing)
{
	struct stock_signal s;

	cr_assert_eq(stock_signal_init(&s, false), 0);
	cr_expect_eq(stock_signal_try_wait(&s), STOCK_EBUSY);
	cr_expect_eq(stock_signal_set(&s), 0);
	cr_expect_eq(stock_signal_set(&s), 0); /* coalesces */
	cr_expect(stock_signal_is_set(&s));
	cr_expect_eq(stock_signal_wait(&s, NULL), 0);
	cr_expect_not(stock_signal_is_set(&s)); /* auto-reset */
	cr_expect_eq(stock_signal_try_wait(&s), STOCK_EBUSY);
	cr_expect_eq(stock_signal_wait(NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_signal_set(NULL), STOCK_EINVAL);
	stock_signal_destroy(&s);
}

Test(signal, timeout_honoured)
{
	struct stock_signal s = STOCK_SIGNAL_INITIALIZER(false);
	struct timespec dl;
	uint64_t t0 = stock_now_ns();

	cr_assert_eq(stock_deadline_in(&dl, 30), 0);
	cr_expect_eq(stock_signal_wait(&s, &dl), STOCK_ETIMEDOUT);
	cr_expect_geq(stock_now_ns() - t0, 30 * 1000000ULL, "returned before the deadline");
	cr_expect_eq(stock_signal_waiters(&s), 0);
	/* A past deadline is a non-blocking attempt. */
	dl.tv_sec = 0;
	dl.tv_nsec = 0;
	cr_expect_eq(stock_signal_wait(&s, &dl), STOCK_ETIMEDOUT);
	stock_signal_set(&s);
	cr_expect_eq(stock_signal_wait(&s, &dl), 0);
}

struct one_waiter {
	struct stock_signal *s;
	int done; /* ck_pr */
};

static void *
wait_forever(void *arg)
{
	struct one_waiter *w = arg;

	cr_assert_eq(stock_signal_wait(w->s, NULL), 0);
	ck_pr_inc_int(&w->done);
	return NULL;
}

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

Test(signal, set_wakes_exactly_one)
{
	struct stock_signal s = STOCK_SIGNAL_INITIALIZER(false);
	struct one_waiter w = { &s, 0 };
	pthread_t t[4];
	int i, spins;

	for (i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, wait_forever, &w);
	for (spins = 0; stock_signal_waiters(&s) < 4 && spins < 5000; spins++)
		sleep_ms(1);
	cr_assert_eq(stock_signal_waiters(&s), 4, "waiters did not queue");
	for (i = 1; i <= 4; i++) {
		stock_signal_set(&s);
		for (spins = 0; ck_pr_load_int(&w.done) < i && spins < 5000; spins++)
			sleep_ms(1);
		/* Give a wrongly woken second waiter time to show up. */
		sleep_ms(20);
		cr_expect_eq(ck_pr_load_int(&w.done), i, "set #%d released %d waiters", i,
		    ck_pr_load_int(&w.done));
	}
	for (i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	cr_expect_not(stock_signal_is_set(&s));
}

/* Ping-pong: two events, two threads, N round trips. A lost wake-up hangs. */
struct pingpong {
	struct stock_signal ping, pong;
	int rounds;
};

static void *
ponger(void *arg)
{
	struct pingpong *p = arg;

	for (int i = 0; i < p->rounds; i++) {
		cr_assert_eq(stock_signal_wait(&p->ping, NULL), 0);
		stock_signal_set(&p->pong);
	}
	return NULL;
}

Test(signal, no_lost_wakeups_pingpong, .timeout = 60)
{
	struct pingpong p = { STOCK_SIGNAL_INITIALIZER(false), STOCK_SIGNAL_INITIALIZER(false), 20000 };
	pthread_t t;

	pthread_create(&t, NULL, ponger, &p);
	for (int i = 0; i < p.rounds; i++) {
		stock_signal_set(&p.ping);
		cr_assert_eq(stock_signal_wait(&p.pong, NULL), 0);
	}
	pthread_join(t, NULL);
}

/* Mutual exclusion built from the event: 8 threads, plain increments. */
struct turnstile {
	struct stock_signal turn;
	uint64_t plain;  /* guarded by turn */
	int inside;      /* ck_pr: threads inside the critical section */
	int overlap;     /* ck_pr */
};

static void *
turnstile_worker(void *arg)
{
	struct turnstile *ts = arg;

	for (int i = 0; i < 5000; i++) {
		struct timespec dl;

		/* Mix of deadline and unbounded waits; retry on timeout. */
		if (i % 3 == 0) {
			stock_deadline_in(&dl, 1);
			if (stock_signal_wait(&ts->turn, &dl) != 0) {
				i--;
				continue;
			}
		} else {
			cr_assert_eq(stock_signal_wait(&ts->turn, NULL), 0);
		}
		if (ck_pr_faa_int(&ts->inside, 1) != 0)
			ck_pr_inc_int(&ts->overlap);
		ts->plain++;
		ck_pr_dec_int(&ts->inside);
		stock_signal_set(&ts->turn);
	}
	return NULL;
}

Test(signal, mutual_exclusion_with_timeouts, .timeout = 120)
{
	struct turnstile ts = { STOCK_SIGNAL_INITIALIZER(true), 0, 0, 0 };
	pthread_t t[8];

	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, turnstile_worker, &ts);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	cr_expect_eq(ts.overlap, 0);
	cr_expect_eq(ts.plain, 8 * 5000);
	cr_expect(stock_signal_is_set(&ts.turn), "the turn was lost");
	cr_expect_eq(stock_signal_waiters(&ts.turn), 0);
}
