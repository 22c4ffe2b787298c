/*
 * Sampler: exactly `limit` admitted per window with a fake clock, refused
 * events reported once to the next admitted one, nothing lost or counted
 * twice under threads.
 */
#include <criterion/criterion.h>
#include <pthread.h>

#include <stock.h>

Test(sampler, init_and_initializer)
{
	struct stock_sampler s = STOCK_SAMPLER_INITIALIZER(2, 1000);
	uint64_t d = 99;

	cr_expect_eq(stock_sampler_init(NULL, 1, 1), STOCK_EINVAL);
	cr_expect_eq(stock_sampler_init(&s, 1, 0), STOCK_EINVAL);
	cr_expect_eq(stock_sampler_dropped(NULL), 0);

	/* The static initializer behaves like init. */
	s = (struct stock_sampler)STOCK_SAMPLER_INITIALIZER(2, 1000);
	cr_expect(stock_sampler_admit(&s, 5, &d));
	cr_expect_eq(d, 0);
	cr_expect(stock_sampler_admit(&s, 6, NULL));
	cr_expect_not(stock_sampler_admit(&s, 7, &d));
	cr_expect_eq(stock_sampler_dropped(&s), 1);
}

Test(sampler, exactly_limit_per_window_fake_clock)
{
	struct stock_sampler s;
	const uint64_t limit = 3, window = 1000, per_window = 50;
	uint64_t admitted = 0, reported = 0;

	cr_assert_eq(stock_sampler_init(&s, limit, window), 0);
	for (uint64_t w = 0; w < 100; w++) {
		uint64_t t0 = 1000000 + w * window, in_window = 0;

		/* per_window events spread over [t0, t0 + window). */
		for (uint64_t i = 0; i < per_window; i++) {
			uint64_t d = 12345;

			if (stock_sampler_admit(&s, t0 + i * (window / per_window), &d)) {
				/* The first admitted of a window reports the previous one's refusals. */
				cr_expect_eq(d, (in_window == 0 && w > 0) ? per_window - limit : 0,
				    "window %llu admit %llu reported %llu", (unsigned long long)w,
				    (unsigned long long)in_window, (unsigned long long)d);
				reported += d;
				in_window++;
			}
		}
		cr_expect_eq(in_window, limit, "window %llu admitted %llu", (unsigned long long)w,
		    (unsigned long long)in_window);
		admitted += in_window;
		cr_expect_eq(stock_sampler_dropped(&s), per_window - limit);
	}
	cr_expect_eq(admitted + reported + stock_sampler_dropped(&s), 100 * per_window);
}

Test(sampler, window_boundaries)
{
	struct stock_sampler s;
	uint64_t d;

	cr_assert_eq(stock_sampler_init(&s, 1, 100), 0);
	cr_expect(stock_sampler_admit(&s, 1000, &d));
	cr_expect_not(stock_sampler_admit(&s, 1099, &d), "still inside [1000, 1100)");
	cr_expect_not(stock_sampler_admit(&s, 900, &d), "an older clock value is in the window");
	cr_expect(stock_sampler_admit(&s, 1100, &d), "a new window at start + window");
	cr_expect_eq(d, 2);
	/* Windows start at the first event after the previous one ended. */
	cr_expect(stock_sampler_admit(&s, 5000, &d));
	cr_expect_eq(d, 0);
	cr_expect_not(stock_sampler_admit(&s, 5099, &d));

	/* Clock value 0 (and the top value) are ordinary times. */
	cr_assert_eq(stock_sampler_init(&s, 1, 100), 0);
	cr_expect(stock_sampler_admit(&s, 0, &d));
	cr_expect_not(stock_sampler_admit(&s, 0, &d));
	cr_expect(stock_sampler_admit(&s, UINT64_MAX, &d));
	cr_expect_eq(d, 1);
	cr_expect_not(stock_sampler_admit(&s, UINT64_MAX, &d));
}

Test(sampler, dropped_kept_until_reported)
{
	struct stock_sampler s;
	uint64_t d = 77;

	cr_assert_eq(stock_sampler_init(&s, 2, 10), 0);
	cr_expect(stock_sampler_admit(&s, 100, NULL));
	cr_expect(stock_sampler_admit(&s, 101, NULL));
	for (int i = 0; i < 5; i++)
		cr_expect_not(stock_sampler_admit(&s, 102, &d));
	cr_expect_eq(d, 77, "a refused event leaves *dropped alone");
	cr_expect_eq(stock_sampler_dropped(&s), 5);
	/* Admitted with NULL: the count is kept for the next one. */
	cr_expect(stock_sampler_admit(&s, 200, NULL));
	cr_expect_eq(stock_sampler_dropped(&s), 5);
	cr_expect(stock_sampler_admit(&s, 201, &d));
	cr_expect_eq(d, 5);
	cr_expect_eq(stock_sampler_dropped(&s), 0);
}

Test(sampler, limit_zero_admits_nothing)
{
	struct stock_sampler s;

	cr_assert_eq(stock_sampler_init(&s, 0, 10), 0);
	for (uint64_t t = 1; t <= 1000; t++)
		cr_expect_not(stock_sampler_admit(&s, t, NULL));
	cr_expect_eq(stock_sampler_dropped(&s), 1000);
}

/* ---- threads ------------------------------------------------------------- */

#define SAMPLER_THREADS 8
#define SAMPLER_EVENTS 50000

struct sampled {
	struct stock_sampler s;
	uint64_t admitted; /* ck_pr */
	uint64_t reported; /* ck_pr: sum of *dropped over admitted events */
	uint64_t now;      /* ck_pr: a fake clock, 0 = use stock_now_ns() */
};

static void *
sample_worker(void *arg)
{
	struct sampled *x = arg;
	uint64_t admitted = 0, reported = 0, d;

	for (int i = 0; i < SAMPLER_EVENTS; i++) {
		uint64_t now = ck_pr_load_64(&x->now);

		if (stock_sampler_admit(&x->s, now != 0 ? now : stock_now_ns(), i % 4 ? &d : NULL)) {
			admitted++;
			if (i % 4)
				reported += d;
		}
	}
	ck_pr_add_64(&x->admitted, admitted);
	ck_pr_add_64(&x->reported, reported);
	return NULL;
}

static void
run_sampled(struct sampled *x)
{
	pthread_t t[SAMPLER_THREADS];

	for (int i = 0; i < SAMPLER_THREADS; i++)
		pthread_create(&t[i], NULL, sample_worker, x);
	for (int i = 0; i < SAMPLER_THREADS; i++)
		pthread_join(t[i], NULL);
}

Test(sampler, threads_account_for_every_event, .timeout = 120)
{
	static struct sampled x;
	uint64_t total = (uint64_t)SAMPLER_THREADS * SAMPLER_EVENTS, d;

	/* Real clock, 50 us windows: many window switches race admissions. */
	cr_assert_eq(stock_sampler_init(&x.s, 5, 50000), 0);
	run_sampled(&x);
	cr_expect_gt(x.admitted, 0);
	cr_expect_lt(x.admitted, total);
	cr_expect_eq(x.admitted + x.reported + stock_sampler_dropped(&x.s), total);
	/* One more admitted event, in a fresh window, reports the rest. */
	cr_assert(stock_sampler_admit(&x.s, stock_now_ns() + 1000000000ULL, &d));
	cr_expect_eq(x.admitted + x.reported + d, total);
	cr_expect_eq(stock_sampler_dropped(&x.s), 0);
}

Test(sampler, threads_one_window_exact, .timeout = 120)
{
	static struct sampled x;
	uint64_t total = (uint64_t)SAMPLER_THREADS * SAMPLER_EVENTS;

	/* One fake instant for every event: one window, opened by a race.
	   Events racing its opening are refused, never admitted twice over. */
	cr_assert_eq(stock_sampler_init(&x.s, 100, 1000), 0);
	x.now = 424242;
	run_sampled(&x);
	cr_expect_eq(x.admitted, 100, "admitted %llu in one window", (unsigned long long)x.admitted);
	cr_expect_eq(x.admitted + x.reported + stock_sampler_dropped(&x.s), total);
}
