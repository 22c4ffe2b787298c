/*
 * Timing wheel tests: the expiry contract (never early, at most one tick
 * late, each add fires exactly once unless cancelled) over random deadlines
 * from the next tick to weeks ahead (cascading through every level), cancel
 * and re-add, the callback form, concurrent adders/cancellers against a
 * poller, and a million live timers.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>

#include <stock.h>

static uint64_t
rnd64(uint64_t *s)
{
	/* splitmix64 */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The time at which a deadline's tick is reached: ceil(d / tick) * tick. */
static uint64_t
fire_at(uint64_t d, uint64_t tick)
{
	return (d / tick + (d % tick != 0)) * tick;
}

Test(wheel, init_and_argument_errors)
{
	struct stock_wheel w;
	struct stock_wheel_timer t = STOCK_WHEEL_TIMER_INITIALIZER(NULL), *out[1];
	uint64_t at = 7;

	cr_expect_eq(stock_wheel_init(NULL, 1, 0), STOCK_EINVAL);
	cr_expect_eq(stock_wheel_init(&w, 0, 0), STOCK_EINVAL);
	cr_expect_eq(stock_wheel_init(&w, 1, STOCK_WHEEL_DEADLINE_MAX + 1), STOCK_ERANGE);
	cr_expect_eq(stock_wheel_init(&w, STOCK_WHEEL_DEADLINE_MAX + 1, 0), STOCK_ERANGE);
	cr_assert_eq(stock_wheel_init(&w, 1000, 5000), 0);
	cr_expect_eq(stock_wheel_add(NULL, &t, 1), STOCK_EINVAL);
	cr_expect_eq(stock_wheel_add(&w, NULL, 1), STOCK_EINVAL);
	cr_expect_eq(stock_wheel_add(&w, &t, STOCK_WHEEL_DEADLINE_MAX + 1), STOCK_ERANGE);
	cr_expect_eq(stock_wheel_cancel(&w, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_wheel_cancel(&w, &t), STOCK_ENOENT, "never added");
	cr_expect_eq(stock_wheel_next(&w, &at), STOCK_ENOENT);
	cr_expect_eq(at, 7);
	cr_expect_eq(stock_wheel_next(&w, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_wheel_poll(&w, 1 << 20, NULL, 1), 0);
	cr_expect_eq(stock_wheel_poll(&w, 1 << 20, out, 0), 0);
	cr_expect_eq(stock_wheel_advance(&w, 1 << 20, NULL, NULL), 0);
	cr_expect_eq(stock_wheel_count(NULL), 0);
	cr_expect_eq(stock_wheel_count(&w), 0);
	/* The largest deadline is accepted, and expires at the end of time. */
	cr_expect_eq(stock_wheel_add(&w, &t, STOCK_WHEEL_DEADLINE_MAX), 0);
	cr_expect_eq(stock_wheel_poll(&w, STOCK_WHEEL_DEADLINE_MAX - 1000, out, 1), 0);
	cr_expect_eq(stock_wheel_poll(&w, UINT64_MAX, out, 1), 1);
	stock_wheel_destroy(&w);
	stock_wheel_destroy(NULL);
}

Test(wheel, fires_within_one_tick_never_before)
{
	struct stock_wheel w;
	struct stock_wheel_timer t[4], *out[4];
	uint64_t at;

	cr_assert_eq(stock_wheel_init(&w, 1000, 10000), 0);
	for (int i = 0; i < 4; i++)
		stock_wheel_timer_init(&t[i], &t[i]);
	cr_expect_eq(stock_wheel_add(&w, &t[0], 12001), 0); /* tick 13: fires at 13000 */
	cr_expect_eq(stock_wheel_add(&w, &t[1], 12000), 0); /* tick 12: exactly on it */
	cr_expect_eq(stock_wheel_add(&w, &t[2], 9000), 0);  /* in the past: due now */
	cr_expect_eq(stock_wheel_add(&w, &t[2], 9000), STOCK_EEXIST);
	cr_expect_eq(stock_wheel_count(&w), 3);
	cr_expect_eq(stock_wheel_next(&w, &at), 0);
	cr_expect_leq(at, 10000);

	cr_assert_eq(stock_wheel_poll(&w, 10000, out, 4), 1);
	cr_expect_eq(out[0], &t[2]);
	cr_expect_eq(out[0]->arg, &t[2]);
	cr_expect_eq(stock_wheel_next(&w, &at), 0);
	cr_expect_eq(at, 12000);
	cr_expect_eq(stock_wheel_poll(&w, 11999, out, 4), 0, "fired before its deadline");
	cr_assert_eq(stock_wheel_poll(&w, 12000, out, 4), 1);
	cr_expect_eq(out[0], &t[1]);
	cr_expect_eq(stock_wheel_poll(&w, 12999, out, 4), 0, "t0's deadline passed but its tick did not");
	cr_assert_eq(stock_wheel_poll(&w, 13000, out, 4), 1);
	cr_expect_eq(out[0], &t[0]);
	cr_expect_eq(out[0]->deadline, 12001);
	cr_expect_eq(stock_wheel_count(&w), 0);
	/* Returned timers are disarmed: cancel finds nothing, re-add works. */
	cr_expect_eq(stock_wheel_cancel(&w, &t[0]), STOCK_ENOENT);
	cr_expect_eq(stock_wheel_add(&w, &t[0], 20000), 0);
	/* Time never goes back: an older now is the wheel's time. */
	cr_expect_eq(stock_wheel_poll(&w, 1000, out, 4), 0);
	cr_expect_eq(stock_wheel_poll(&w, 19999, out, 4), 0);
	cr_expect_eq(stock_wheel_poll(&w, 20000, out, 4), 1);
	stock_wheel_destroy(&w);
}

Test(wheel, cancel_and_readd)
{
	struct stock_wheel w;
	struct stock_wheel_timer t[3], *out[3];

	cr_assert_eq(stock_wheel_init(&w, 1, 0), 0);
	for (int i = 0; i < 3; i++)
		stock_wheel_timer_init(&t[i], NULL);
	cr_expect_eq(stock_wheel_add(&w, &t[0], 100), 0);
	cr_expect_eq(stock_wheel_add(&w, &t[1], 100), 0);       /* same slot */
	cr_expect_eq(stock_wheel_add(&w, &t[2], 1000000), 0);   /* a higher level */
	cr_expect_eq(stock_wheel_cancel(&w, &t[0]), 0);
	cr_expect_eq(stock_wheel_cancel(&w, &t[0]), STOCK_ENOENT, "cancelled twice");
	cr_expect_eq(stock_wheel_cancel(&w, &t[2]), 0);
	cr_expect_eq(stock_wheel_count(&w), 1);
	cr_assert_eq(stock_wheel_poll(&w, 2000000, out, 3), 1);
	cr_expect_eq(out[0], &t[1], "a cancelled timer fired");
	/* Re-add a cancelled one at another deadline: fires there, once. */
	cr_expect_eq(stock_wheel_add(&w, &t[2], 3000000), 0);
	cr_expect_eq(stock_wheel_poll(&w, 2999999, out, 3), 0);
	cr_expect_eq(stock_wheel_poll(&w, 3000000, out, 3), 1);
	cr_expect_eq(stock_wheel_poll(&w, 9000000, out, 3), 0);
	/* A due timer (not yet polled) can still be cancelled. */
	cr_expect_eq(stock_wheel_add(&w, &t[0], 1), 0);
	cr_expect_eq(stock_wheel_cancel(&w, &t[0]), 0);
	cr_expect_eq(stock_wheel_poll(&w, 9000001, out, 3), 0);
	cr_expect_eq(stock_wheel_count(&w), 0);
	stock_wheel_destroy(&w);
}

/*
 * The property over @n random timers: deadlines from the past to
 * 2^@span_bits ns ahead (log-uniform, so every level holds some), a
 * fraction cancelled, the clock moved by random steps from sub-tick to
 * huge. Each timer not cancelled is returned exactly once, by the first poll
 * whose now reaches fire_at(deadline) — never before the deadline, never by
 * a later poll — and, since all were added before polling, in tick order.
 */
static void
wheel_property(size_t n, uint64_t tick, unsigned span_bits, uint64_t seed, size_t batch)
{
	struct stock_wheel w;
	struct stock_wheel_timer *t = calloc(n, sizeof *t), **out = calloc(batch, sizeof *out);
	unsigned char *fired = calloc(n, 1), *cancelled = calloc(n, 1);
	const uint64_t start = 1000000007ull;
	uint64_t now = start, prev = 0, last_tick = 0, expected = 0, got = 0, early = 0, late = 0,
		 twice = 0, unordered = 0, polls = 0;

	cr_assert(t != NULL && out != NULL && fired != NULL && cancelled != NULL);
	cr_assert_eq(stock_wheel_init(&w, tick, start), 0);
	for (size_t i = 0; i < n; i++) {
		uint64_t span = rnd64(&seed) >> (64 - 1 - rnd64(&seed) % span_bits);
		uint64_t d = rnd64(&seed) % 16 == 0 ? start - rnd64(&seed) % start : start + span;

		stock_wheel_timer_init(&t[i], (void *)(uintptr_t)i);
		cr_assert_eq(stock_wheel_add(&w, &t[i], d), 0);
	}
	for (size_t i = 0; i < n; i++) {
		if (rnd64(&seed) % 8 == 0) {
			cr_assert_eq(stock_wheel_cancel(&w, &t[i]), 0);
			cancelled[i] = 1;
		} else {
			expected++;
		}
	}
	cr_expect_eq(stock_wheel_count(&w), expected);
	while (stock_wheel_count(&w) > 0) {
		uint64_t r = rnd64(&seed), step;
		uint64_t at, gap;
		size_t k;

		/* Around the next expiry that next() reports: just before it,
		   on it, a random way past it, or a few ticks; rarely a jump
		   of up to 2^span_bits ns. */
		cr_assert_eq(stock_wheel_next(&w, &at), 0);
		gap = at > now ? at - now : 0;
		switch (r % 512 == 0 ? 4 : r % 4) {
		case 0:
			step = gap > 0 ? gap - 1 : 0;
			break;
		case 1:
			step = gap;
			break;
		case 2:
			step = rnd64(&seed) % (2 * gap + 2);
			break;
		case 3:
			step = rnd64(&seed) % (3 * tick + 1);
			break;
		default:
			step = rnd64(&seed) >> (64 - 1 - rnd64(&seed) % span_bits);
			break;
		}
		now += step;
		polls++;
		do {
			k = stock_wheel_poll(&w, now, out, batch);
			for (size_t j = 0; j < k; j++) {
				size_t i = (size_t)(uintptr_t)out[j]->arg;
				uint64_t x = fire_at(out[j]->deadline, tick);

				twice += fired[i] || cancelled[i];
				fired[i] = 1;
				got++;
				early += out[j]->deadline > now || x > now;
				/* Due at the previous poll already: it fired late (a
				   timer added in the past is due at the first poll). */
				late += x <= prev && out[j]->deadline >= start;
				unordered += out[j]->tick < last_tick && out[j]->deadline >= start;
				if (out[j]->deadline >= start)
					last_tick = out[j]->tick;
			}
		} while (k == batch);
		prev = now;
	}
	cr_expect_eq(got, expected, "%llu of %llu timers fired", (unsigned long long)got,
	    (unsigned long long)expected);
	cr_expect_eq(twice, 0, "%llu fired twice or after a cancel", (unsigned long long)twice);
	cr_expect_eq(early, 0, "%llu fired before their tick", (unsigned long long)early);
	cr_expect_eq(late, 0, "%llu fired a poll late", (unsigned long long)late);
	cr_expect_eq(unordered, 0, "%llu out of tick order", (unsigned long long)unordered);
	cr_expect_gt(polls, 1000, "only %llu polls: too few to mean anything", (unsigned long long)polls);
	stock_wheel_destroy(&w);
	free(t);
	free(out);
	free(fired);
	free(cancelled);
}

Test(wheel, random_deadlines_1ns_tick, .timeout = 120) { wheel_property(20000, 1, 50, 1, 7); }
Test(wheel, random_deadlines_1us_tick_far_future, .timeout = 120) { wheel_property(20000, 1000, 61, 2, 64); }
Test(wheel, random_deadlines_odd_tick, .timeout = 120) { wheel_property(20000, 999983, 55, 3, 1000); }

/* A million live timers, 1 ms ticks, up to 2^45 ns (about 10 hours) ahead:
   each fires exactly once, never early, never a poll late. */
Test(wheel, million_timers, .timeout = 300) { wheel_property(1000000, 1000000, 45, 4, 4096); }

/* ---- the callback form -------------------------------------------------- */

struct rearm {
	struct stock_wheel *w;
	uint64_t calls;
	uint64_t again_at;
};

static void
rearm_cb(struct stock_wheel_timer *t, void *arg)
{
	struct rearm *r = arg;

	r->calls++;
	/* Re-arm with a deadline already passed: due, but not in this call. */
	cr_expect_eq(stock_wheel_add(r->w, t, r->again_at), 0);
}

Test(wheel, advance_callbacks_may_rearm)
{
	struct stock_wheel w;
	struct stock_wheel_timer t[200];
	struct rearm r = { .w = &w, .again_at = 5 };

	cr_assert_eq(stock_wheel_init(&w, 10, 0), 0);
	for (int i = 0; i < 200; i++) {
		stock_wheel_timer_init(&t[i], NULL);
		cr_assert_eq(stock_wheel_add(&w, &t[i], 100 + (uint64_t)i), 0);
	}
	cr_expect_eq(stock_wheel_advance(&w, 150, rearm_cb, &r), 51); /* 100..150 */
	cr_expect_eq(r.calls, 51);
	cr_expect_eq(stock_wheel_count(&w), 200);
	/* The 51 re-armed are due now; the rest come with their ticks. */
	cr_expect_eq(stock_wheel_advance(&w, 150, rearm_cb, &r), 51);
	cr_expect_eq(stock_wheel_advance(&w, 10000, rearm_cb, &r), 200);
	cr_expect_eq(r.calls, 302);
	for (int i = 0; i < 200; i++)
		cr_expect_eq(stock_wheel_cancel(&w, &t[i]), 0);
	cr_expect_eq(stock_wheel_advance(&w, 20000, rearm_cb, &r), 0);
	stock_wheel_destroy(&w);
}

/* ---- concurrency ---------------------------------------------------------- */

#define CC_THREADS 3
#define CC_TIMERS 2000
#define CC_ROUNDS 20000

struct cc_shared {
	struct stock_wheel w;
	uint64_t clock;   /* ck_pr: the fake clock the poller moves */
	int stop;         /* ck_pr */
	uint32_t fired[CC_THREADS][CC_TIMERS]; /* ck_pr: per timer */
};

struct cc_adder {
	struct cc_shared *sh;
	pthread_t tid;
	int idx;
	struct stock_wheel_timer t[CC_TIMERS];
	uint64_t adds[CC_TIMERS], cancels[CC_TIMERS];
	uint64_t errors;
};

static void *
cc_adder(void *arg)
{
	struct cc_adder *a = arg;
	uint64_t seed = 77 + (uint64_t)a->idx;

	for (int round = 0; round < CC_ROUNDS; round++) {
		size_t i = rnd64(&seed) % CC_TIMERS;
		uint64_t now = ck_pr_load_64(&a->sh->clock);
		int rc;

		if (rnd64(&seed) % 3 == 0) {
			if ((rc = stock_wheel_cancel(&a->sh->w, &a->t[i])) == 0)
				a->cancels[i]++;
			else if (rc != STOCK_ENOENT)
				a->errors++;
		} else {
			/* Re-adding an armed timer is refused; one that fired or
			   was cancelled is armed again. */
			rc = stock_wheel_add(&a->sh->w, &a->t[i], now + rnd64(&seed) % 100000);
			if (rc == 0)
				a->adds[i]++;
			else if (rc != STOCK_EEXIST)
				a->errors++;
		}
	}
	return NULL;
}

static void
cc_fire(struct stock_wheel_timer *t, void *arg)
{
	struct cc_shared *sh = arg;
	uintptr_t id = (uintptr_t)t->arg;

	ck_pr_inc_32(&sh->fired[id / CC_TIMERS][id % CC_TIMERS]);
}

static void *
cc_poller(void *arg)
{
	struct cc_shared *sh = arg;

	while (!ck_pr_load_int(&sh->stop)) {
		uint64_t now = ck_pr_load_64(&sh->clock) + 997;

		ck_pr_store_64(&sh->clock, now);
		stock_wheel_advance(&sh->w, now, cc_fire, sh);
	}
	return NULL;
}

Test(wheel, concurrent_add_cancel_poll, .timeout = 120)
{
	struct cc_shared *sh = calloc(1, sizeof *sh);
	struct cc_adder *a = calloc(CC_THREADS, sizeof *a);
	pthread_t poller;
	uint64_t bad = 0, fires = 0;

	cr_assert(sh != NULL && a != NULL);
	cr_assert_eq(stock_wheel_init(&sh->w, 1000, 0), 0);
	for (int k = 0; k < CC_THREADS; k++) {
		a[k].sh = sh;
		a[k].idx = k;
		for (int i = 0; i < CC_TIMERS; i++)
			stock_wheel_timer_init(&a[k].t[i], (void *)(uintptr_t)(k * CC_TIMERS + i));
	}
	cr_assert_eq(pthread_create(&poller, NULL, cc_poller, sh), 0);
	for (int k = 0; k < CC_THREADS; k++)
		cr_assert_eq(pthread_create(&a[k].tid, NULL, cc_adder, &a[k]), 0);
	for (int k = 0; k < CC_THREADS; k++)
		pthread_join(a[k].tid, NULL);
	ck_pr_store_int(&sh->stop, 1);
	pthread_join(poller, NULL);
	/* Everything still armed fires by the end of time. */
	stock_wheel_advance(&sh->w, STOCK_WHEEL_DEADLINE_MAX, cc_fire, sh);
	cr_expect_eq(stock_wheel_count(&sh->w), 0);
	for (int k = 0; k < CC_THREADS; k++) {
		cr_expect_eq(a[k].errors, 0, "adder %d got unexpected codes", k);
		for (int i = 0; i < CC_TIMERS; i++) {
			/* Each add ends in exactly one of: a cancel, a fire. */
			bad += a[k].adds[i] != a[k].cancels[i] + sh->fired[k][i];
			fires += sh->fired[k][i];
		}
	}
	cr_expect_eq(bad, 0, "%llu timers: adds != cancels + fires", (unsigned long long)bad);
	cr_expect_gt(fires, 1000, "the poller fired only %llu timers", (unsigned long long)fires);
	stock_wheel_destroy(&sh->w);
	free(a);
	free(sh);
}
