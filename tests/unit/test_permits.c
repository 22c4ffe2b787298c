/*
 * Permit gate: never more holders than the limit (also while the limit is
 * resized under load), try_acquire semantics, timeouts, wake-ups on release
 * and growth, shrinking below the permits in use, bad arguments.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <stock.h>

/* ---- helpers (pm_ prefix: all unit tests link into one binary) ---------- */

static void
pm_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void
pm_max(uint64_t *peak, uint64_t v)
{
	uint64_t cur = ck_pr_load_64(peak);

	while (v > cur && !ck_pr_cas_64_value(peak, cur, v, &cur))
		;
}

/* ---- single-threaded semantics ------------------------------------------- */

Test(permits, bad_arguments)
{
	struct stock_permits p;
	struct stock_permits_stats st;

	cr_expect_eq(stock_permits_init(NULL, 1), STOCK_EINVAL);
	cr_expect_eq(stock_permits_init(&p, 0), STOCK_EINVAL);
	cr_expect_eq(stock_permits_init(&p, STOCK_PERMITS_MAX + 1), STOCK_ERANGE);
	cr_assert_eq(stock_permits_init(&p, STOCK_PERMITS_MAX), 0);
	cr_assert_eq(stock_permits_init(&p, 3), 0);
	cr_expect_eq(stock_permits_try_acquire(NULL, 1), STOCK_EINVAL);
	cr_expect_eq(stock_permits_try_acquire(&p, 0), STOCK_EINVAL);
	cr_expect_eq(stock_permits_try_acquire(&p, STOCK_PERMITS_MAX + 1), STOCK_ERANGE);
	cr_expect_eq(stock_permits_acquire(&p, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_permits_acquire(NULL, 1, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_permits_release(NULL, 1), STOCK_EINVAL);
	cr_expect_eq(stock_permits_release(&p, 0), STOCK_EINVAL);
	cr_expect_eq(stock_permits_resize(NULL, 1), STOCK_EINVAL);
	cr_expect_eq(stock_permits_resize(&p, STOCK_PERMITS_MAX + 1), STOCK_ERANGE);
	cr_expect_eq(stock_permits_stats(&p, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_permits_stats(NULL, &st), STOCK_EINVAL);
	cr_expect_eq(stock_permits_available(NULL), 0);

	/* Releasing more than is held is refused and changes nothing. */
	cr_expect_eq(stock_permits_release(&p, 1), STOCK_EINVAL);
	cr_assert_eq(stock_permits_try_acquire(&p, 2), 0);
	cr_expect_eq(stock_permits_release(&p, 3), STOCK_EINVAL);
	stock_permits_stats(&p, &st);
	cr_expect_eq(st.in_use, 2);
	cr_expect_eq(st.limit, 3);
	cr_expect_eq(stock_permits_release(&p, 2), 0);
	cr_expect_eq(stock_permits_release(&p, 1), STOCK_EINVAL);
	stock_permits_destroy(&p);
}

Test(permits, try_acquire_semantics)
{
	struct stock_permits p;
	struct stock_permits_stats st;

	cr_assert_eq(stock_permits_init(&p, 4), 0);
	cr_expect_eq(stock_permits_available(&p), 4);
	cr_expect_eq(stock_permits_try_acquire(&p, 3), 0);
	cr_expect_eq(stock_permits_try_acquire(&p, 2), STOCK_EBUSY, "3 + 2 > 4");
	cr_expect_eq(stock_permits_try_acquire(&p, 1), 0);
	cr_expect_eq(stock_permits_try_acquire(&p, 1), STOCK_EBUSY);
	cr_expect_eq(stock_permits_try_acquire(&p, 5), STOCK_EBUSY, "more than the limit");
	cr_expect_eq(stock_permits_available(&p), 0);
	cr_expect_eq(stock_permits_release(&p, 2), 0);
	cr_expect_eq(stock_permits_try_acquire(&p, 2), 0);
	/* A past deadline makes acquire a try. */
	cr_expect_eq(stock_permits_acquire(&p, 1, &(struct timespec){ 0, 0 }), STOCK_ETIMEDOUT);
	cr_expect_eq(stock_permits_release(&p, 4), 0);
	cr_expect_eq(stock_permits_acquire(&p, 4, &(struct timespec){ 0, 0 }), 0);

	cr_assert_eq(stock_permits_stats(&p, &st), 0);
	cr_expect_eq(st.limit, 4);
	cr_expect_eq(st.in_use, 4);
	cr_expect_eq(st.acquired, 4);
	cr_expect_eq(st.rejected, 3);
	cr_expect_eq(st.timed_out, 1);
	cr_expect_eq(st.peak, 4);
	cr_expect_eq(st.waiters, 0);
}

Test(permits, shrink_below_in_use_then_grow)
{
	struct stock_permits p;
	struct stock_permits_stats st;

	cr_assert_eq(stock_permits_init(&p, 8), 0);
	cr_assert_eq(stock_permits_try_acquire(&p, 5), 0);
	cr_expect_eq(stock_permits_resize(&p, 3), 0);
	stock_permits_stats(&p, &st);
	cr_expect_eq(st.limit, 3);
	cr_expect_eq(st.in_use, 5, "nobody is evicted");
	cr_expect_eq(stock_permits_available(&p), 0);
	cr_expect_eq(stock_permits_try_acquire(&p, 1), STOCK_EBUSY);
	cr_expect_eq(stock_permits_release(&p, 2), 0); /* 3 in use, limit 3 */
	cr_expect_eq(stock_permits_try_acquire(&p, 1), STOCK_EBUSY);
	cr_expect_eq(stock_permits_release(&p, 1), 0); /* 2 in use */
	cr_expect_eq(stock_permits_try_acquire(&p, 2), STOCK_EBUSY);
	cr_expect_eq(stock_permits_try_acquire(&p, 1), 0);
	/* Resize to 0 closes the gate; growing reopens it. */
	cr_expect_eq(stock_permits_resize(&p, 0), 0);
	cr_expect_eq(stock_permits_try_acquire(&p, 1), STOCK_EBUSY);
	cr_expect_eq(stock_permits_resize(&p, 10), 0);
	cr_expect_eq(stock_permits_try_acquire(&p, 7), 0);
	cr_expect_eq(stock_permits_available(&p), 0);
	stock_permits_stats(&p, &st);
	cr_expect_eq(st.peak, 10);
}

Test(permits, acquire_times_out)
{
	struct stock_permits p;
	struct timespec dl;
	uint64_t t0;

	cr_assert_eq(stock_permits_init(&p, 1), 0);
	cr_assert_eq(stock_permits_acquire(&p, 1, NULL), 0);
	cr_assert_eq(stock_deadline_in(&dl, 30), 0);
	t0 = stock_now_ns();
	cr_expect_eq(stock_permits_acquire(&p, 1, &dl), STOCK_ETIMEDOUT);
	cr_expect_geq(stock_now_ns() - t0, 30 * 1000000ULL, "returned before the deadline");
	cr_expect_eq(stock_permits_available(&p), 0, "a timeout takes nothing");
	cr_expect_eq(stock_permits_release(&p, 1), 0);
	cr_expect_eq(stock_permits_acquire(&p, 1, &dl), 0, "free: a past deadline still succeeds");
}

/* ---- waking ----------------------------------------------------------------- */

struct pm_waiter {
	struct stock_permits *p;
	uint64_t k;
	unsigned int started; /* ck_pr */
	int result;           /* ck_pr; 1 until the call returns */
};

static void *
pm_wait_thread(void *arg)
{
	struct pm_waiter *w = arg;
	struct timespec dl;

	stock_deadline_in(&dl, 20000); /* generous: never reached */
	ck_pr_store_uint(&w->started, 1);
	ck_pr_store_int(&w->result, stock_permits_acquire(w->p, w->k, &dl));
	return NULL;
}

static void
pm_wait_queued(struct stock_permits *p, uint64_t n)
{
	struct stock_permits_stats st;

	for (int spins = 0; spins < 20000; spins++) {
		stock_permits_stats(p, &st);
		if (st.waiters >= n)
			return;
		pm_sleep_ms(1);
	}
	cr_assert_fail("waiters did not queue");
}

Test(permits, release_and_grow_wake_waiters)
{
	struct stock_permits p;
	struct pm_waiter w[3];
	pthread_t th[3];

	cr_assert_eq(stock_permits_init(&p, 2), 0);
	cr_assert_eq(stock_permits_try_acquire(&p, 2), 0);
	w[0] = (struct pm_waiter){ &p, 1, 0, 1 };
	w[1] = (struct pm_waiter){ &p, 1, 0, 1 };
	w[2] = (struct pm_waiter){ &p, 3, 0, 1 }; /* needs a bigger limit */
	for (int i = 0; i < 3; i++)
		pthread_create(&th[i], NULL, pm_wait_thread, &w[i]);
	pm_wait_queued(&p, 3);
	pm_sleep_ms(10);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(ck_pr_load_int(&w[i].result), 1, "acquired while full");

	/* One release: exactly one of the two small waiters gets in. */
	cr_expect_eq(stock_permits_release(&p, 1), 0);
	for (int spins = 0; spins < 20000; spins++) {
		if (ck_pr_load_int(&w[0].result) == 0 || ck_pr_load_int(&w[1].result) == 0)
			break;
		pm_sleep_ms(1);
	}
	cr_expect_eq((ck_pr_load_int(&w[0].result) == 0) + (ck_pr_load_int(&w[1].result) == 0), 1);
	/* Release our last one: the second small waiter gets in. */
	cr_expect_eq(stock_permits_release(&p, 1), 0);
	pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	cr_expect_eq(w[0].result, 0);
	cr_expect_eq(w[1].result, 0);
	cr_expect_eq(ck_pr_load_int(&w[2].result), 1, "3 permits cannot fit a limit of 2");
	/* Growing the limit wakes the big waiter (2 in use + 3 <= 5). */
	cr_expect_eq(stock_permits_resize(&p, 5), 0);
	pthread_join(th[2], NULL);
	cr_expect_eq(w[2].result, 0);
	cr_expect_eq(stock_permits_available(&p), 0);
}

/* ---- the invariant under load ---------------------------------------------- */

#define PM_THREADS 8
#define PM_ROUNDS 3000

struct pm_load {
	struct stock_permits *p;
	uint64_t holders;      /* ck_pr: our own count of concurrent holders */
	uint64_t peak;         /* ck_pr: max of holders */
	uint64_t max_limit;    /* highest limit ever in effect */
	unsigned int rounds;   /* per worker; 0 = until stop */
	unsigned int stop;     /* ck_pr */
	unsigned int finished; /* ck_pr: worker threads done */
	uint64_t ok;           /* ck_pr: successful acquisitions */
};

static void *
pm_worker(void *arg)
{
	struct pm_load *l = arg;
	struct timespec dl;
	uint64_t k, h;

	for (unsigned i = 0; l->rounds == 0 ? ck_pr_load_uint(&l->stop) == 0 : i < l->rounds; i++) {
		k = 1 + (i % 2);
		if (i % 3 == 0) {
			if (stock_permits_try_acquire(l->p, k) != 0)
				continue;
		} else {
			stock_deadline_in(&dl, 50);
			if (stock_permits_acquire(l->p, k, &dl) != 0)
				continue;
		}
		h = ck_pr_faa_64(&l->holders, k) + k;
		pm_max(&l->peak, h);
		ck_pr_inc_64(&l->ok);
		if (i % 16 == 0)
			sched_yield(); /* hold for a while now and then */
		ck_pr_faa_64(&l->holders, (uint64_t)-(int64_t)k);
		cr_assert_eq(stock_permits_release(l->p, k), 0);
	}
	ck_pr_inc_uint(&l->finished);
	return NULL;
}

Test(permits, never_more_holders_than_limit)
{
	struct stock_permits p;
	struct stock_permits_stats st;
	struct pm_load l = { .p = &p, .max_limit = 3, .rounds = PM_ROUNDS };
	pthread_t th[PM_THREADS];

	cr_assert_eq(stock_permits_init(&p, 3), 0);
	for (int i = 0; i < PM_THREADS; i++)
		pthread_create(&th[i], NULL, pm_worker, &l);
	for (int i = 0; i < PM_THREADS; i++)
		pthread_join(th[i], NULL);
	cr_expect_leq(ck_pr_load_64(&l.peak), 3, "peak %llu holders",
	    (unsigned long long)l.peak);
	cr_expect_gt(ck_pr_load_64(&l.ok), 0);
	stock_permits_stats(&p, &st);
	cr_expect_eq(st.in_use, 0);
	cr_expect_leq(st.peak, 3);
	cr_expect_eq(st.acquired, ck_pr_load_64(&l.ok));
	cr_expect_eq(st.waiters, 0);
}

Test(permits, never_more_holders_than_limit_while_resizing)
{
	struct stock_permits p;
	struct stock_permits_stats st;
	struct pm_load l = { .p = &p, .max_limit = 6, .rounds = 0 };
	const uint64_t sizes[] = { 1, 4, 2, 6, 3, 1, 5 };
	pthread_t th[PM_THREADS];
	unsigned i = 0;

	cr_assert_eq(stock_permits_init(&p, 2), 0);
	for (int t = 0; t < PM_THREADS; t++)
		pthread_create(&th[t], NULL, pm_worker, &l);
	/* Resize up and down under load until enough traffic went through. */
	while (i < 500 || ck_pr_load_64(&l.ok) < 5000) {
		cr_assert_eq(stock_permits_resize(&p, sizes[i++ % 7]), 0);
		for (int y = 0; y < 4; y++)
			sched_yield();
	}
	ck_pr_store_uint(&l.stop, 1);
	for (int t = 0; t < PM_THREADS; t++)
		pthread_join(th[t], NULL);
	cr_expect_leq(ck_pr_load_64(&l.peak), l.max_limit, "peak %llu holders",
	    (unsigned long long)l.peak);
	stock_permits_stats(&p, &st);
	cr_expect_eq(st.in_use, 0);
	cr_expect_leq(st.peak, l.max_limit);
}

/* After a shrink returns, admissions respect the new limit at once. */
struct pm_shrink {
	struct stock_permits *p;
	unsigned int stop; /* ck_pr */
};

static void *
pm_shrink_worker(void *arg)
{
	struct pm_shrink *s = arg;

	while (ck_pr_load_uint(&s->stop) == 0) {
		if (stock_permits_try_acquire(s->p, 1) == 0) {
			sched_yield();
			cr_assert_eq(stock_permits_release(s->p, 1), 0);
		}
		sched_yield();
	}
	return NULL;
}

Test(permits, shrink_takes_effect_immediately)
{
	struct stock_permits p;
	struct stock_permits_stats st;
	struct pm_shrink s = { &p, 0 };
	pthread_t th[4];
	int spins;

	/* Hold 3 of 4 and let traffic fight over the last one; shrink to 2. */
	cr_assert_eq(stock_permits_init(&p, 4), 0);
	cr_assert_eq(stock_permits_try_acquire(&p, 3), 0);
	for (int t = 0; t < 4; t++)
		pthread_create(&th[t], NULL, pm_shrink_worker, &s);
	pm_sleep_ms(5);
	cr_assert_eq(stock_permits_resize(&p, 2), 0);
	/* The traffic may still hold the spare permit it had before the shrink;
	 * once it is back, nobody is admitted again: in_use stays exactly 3. */
	for (spins = 0; spins < 20000; spins++) {
		stock_permits_stats(&p, &st);
		if (st.in_use == 3)
			break;
		cr_assert_eq(st.in_use, 4);
		sched_yield();
	}
	for (int i = 0; i < 20; i++) {
		stock_permits_stats(&p, &st);
		cr_assert_eq(st.in_use, 3, "admitted above the shrunk limit");
		pm_sleep_ms(1);
	}
	/* Down to 1 in use: the traffic may use the one free permit again. */
	cr_expect_eq(stock_permits_release(&p, 2), 0);
	for (int i = 0; i < 20; i++) {
		stock_permits_stats(&p, &st);
		cr_assert_leq(st.in_use, 2);
		sched_yield();
	}
	ck_pr_store_uint(&s.stop, 1);
	for (int t = 0; t < 4; t++)
		pthread_join(th[t], NULL);
	cr_expect_eq(stock_permits_release(&p, 1), 0);
	cr_expect_eq(stock_permits_available(&p), 2);
	stock_permits_stats(&p, &st);
	cr_expect_leq(st.peak, 4);
}
