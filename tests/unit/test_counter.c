/*
 * Counter contract tests, run over every strategy, plus the shared torture
 * harness (torture.c) for each strategy.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "torture.h"

static const enum stock_strategy all_strategies[] = {
	STOCK_STRATEGY_ATOMIC, STOCK_STRATEGY_LOCKED, STOCK_STRATEGY_SIGNAL
};
#define FOR_EACH_STRATEGY(s) \
	for (size_t s##_i = 0; s##_i < 3 && ((s) = all_strategies[s##_i], 1); s##_i++)

static void
expect_level(struct stock_counter *c, uint64_t remaining, uint64_t sold)
{
	struct stock_level l;

	cr_assert_eq(stock_counter_read(c, &l), 0);
	cr_expect_eq(l.remaining, remaining, "%s: remaining %llu, want %llu",
	    stock_strategy_name(c->strategy), (unsigned long long)l.remaining,
	    (unsigned long long)remaining);
	cr_expect_eq(l.sold, sold, "%s: sold %llu, want %llu", stock_strategy_name(c->strategy),
	    (unsigned long long)l.sold, (unsigned long long)sold);
}

static uint64_t
version_of(struct stock_counter *c)
{
	struct stock_level l;

	cr_assert_eq(stock_counter_read(c, &l), 0);
	return l.version;
}

Test(counter, take_put_set_contract)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		struct stock_counter c;
		uint64_t v;

		cr_assert_eq(stock_counter_init(&c, s, 10), 0);
		expect_level(&c, 10, 0);
		v = version_of(&c);

		cr_expect_eq(stock_counter_take(&c, 3), 0);
		expect_level(&c, 7, 3);
		cr_expect_gt(version_of(&c), v);
		v = version_of(&c);

		/* More than remains: refused, nothing changes, version kept. */
		cr_expect_eq(stock_counter_take(&c, 8), STOCK_ESOLDOUT);
		expect_level(&c, 7, 3);
		cr_expect_eq(version_of(&c), v);

		cr_expect_eq(stock_counter_take(&c, 7), 0);
		expect_level(&c, 0, 10);
		cr_expect_eq(stock_counter_take(&c, 1), STOCK_ESOLDOUT);

		/* Refunds: never more than sold. */
		cr_expect_eq(stock_counter_put(&c, 11), STOCK_EREFUND);
		expect_level(&c, 0, 10);
		cr_expect_eq(stock_counter_put(&c, 4), 0);
		expect_level(&c, 4, 6);
		v = version_of(&c);

		/* Authoritative set keeps sold, moves total. */
		cr_expect_eq(stock_counter_set(&c, 100), 0);
		expect_level(&c, 100, 6);
		cr_expect_gt(version_of(&c), v);
		v = version_of(&c);
		cr_expect_eq(stock_counter_set(&c, 2), 0);
		expect_level(&c, 2, 6);
		cr_expect_gt(version_of(&c), v);
		v = version_of(&c);
		/* A set to the same value is still a change of version. */
		cr_expect_eq(stock_counter_set(&c, 2), 0);
		expect_level(&c, 2, 6);
		cr_expect_gt(version_of(&c), v);
		cr_expect_eq(stock_counter_put(&c, 6), 0);
		expect_level(&c, 8, 0);
		cr_expect_eq(stock_counter_put(&c, 1), STOCK_EREFUND);
		stock_counter_destroy(&c);
	}
}

Test(counter, nonsense_rejected)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		struct stock_counter c;
		uint64_t v;

		cr_assert_eq(stock_counter_init(&c, s, 5), 0);
		v = version_of(&c);
		cr_expect_eq(stock_counter_take(&c, 0), STOCK_EINVAL);
		cr_expect_eq(stock_counter_put(&c, 0), STOCK_EINVAL);
		cr_expect_eq(stock_counter_take(&c, STOCK_COUNT_MAX + 1), STOCK_EINVAL);
		cr_expect_eq(stock_counter_take(&c, UINT64_MAX), STOCK_EINVAL);
		cr_expect_eq(stock_counter_put(&c, UINT64_MAX), STOCK_EINVAL);
		cr_expect_eq(stock_counter_set(&c, STOCK_COUNT_MAX + 1), STOCK_ERANGE);
		cr_expect_eq(stock_counter_read(&c, NULL), STOCK_EINVAL);
		expect_level(&c, 5, 0);
		cr_expect_eq(version_of(&c), v);

		/* sold + remaining may not exceed STOCK_COUNT_MAX. */
		cr_expect_eq(stock_counter_take(&c, 5), 0);
		cr_expect_eq(stock_counter_set(&c, STOCK_COUNT_MAX), STOCK_ERANGE);
		expect_level(&c, 0, 5);
		cr_expect_eq(stock_counter_set(&c, STOCK_COUNT_MAX - 5), 0);
		expect_level(&c, STOCK_COUNT_MAX - 5, 5);
		cr_expect_eq(stock_counter_take(&c, STOCK_COUNT_MAX - 5), 0);
		expect_level(&c, 0, STOCK_COUNT_MAX);
		stock_counter_destroy(&c);
	}
	{
		struct stock_counter c;
		cr_expect_eq(stock_counter_init(&c, STOCK_STRATEGY_ATOMIC, STOCK_COUNT_MAX + 1), STOCK_ERANGE);
		cr_expect_eq(stock_counter_init(&c, (enum stock_strategy)7, 1), STOCK_EINVAL);
		cr_expect_eq(stock_counter_init(NULL, STOCK_STRATEGY_ATOMIC, 1), STOCK_EINVAL);
	}
}

Test(counter, static_initializers)
{
	struct stock_atomic a = STOCK_ATOMIC_INITIALIZER(3);
	struct stock_locked l = STOCK_LOCKED_INITIALIZER(3);
	struct stock_level lvl;

	cr_expect_eq(stock_atomic_take(&a, 2), 0);
	cr_expect_eq(stock_atomic_take(&a, 2), STOCK_ESOLDOUT);
	cr_assert_eq(stock_atomic_read(&a, &lvl), 0);
	cr_expect_eq(lvl.remaining, 1);
	cr_expect_eq(lvl.sold, 2);
	cr_expect_eq(stock_locked_take(&l, 3), 0);
	cr_assert_eq(stock_locked_read(&l, &lvl), 0);
	cr_expect_eq(lvl.remaining, 0);
	cr_expect_eq(lvl.sold, 3);
}

Test(counter, strategy_names)
{
	enum stock_strategy s;

	cr_expect_str_eq(stock_strategy_name(STOCK_STRATEGY_ATOMIC), "atomic");
	cr_expect_str_eq(stock_strategy_name(STOCK_STRATEGY_LOCKED), "locked");
	cr_expect_str_eq(stock_strategy_name(STOCK_STRATEGY_SIGNAL), "signal");
	cr_expect_null(stock_strategy_name((enum stock_strategy)3));
	cr_expect_eq(stock_strategy_parse("Atomic", &s), 0);
	cr_expect_eq(s, STOCK_STRATEGY_ATOMIC);
	cr_expect_eq(stock_strategy_parse("lock", &s), 0);
	cr_expect_eq(s, STOCK_STRATEGY_LOCKED);
	cr_expect_eq(stock_strategy_parse("signal", &s), 0);
	cr_expect_eq(s, STOCK_STRATEGY_SIGNAL);
	cr_expect_eq(stock_strategy_parse("mutex", &s), STOCK_EINVAL);
	cr_expect_eq(stock_strategy_parse(NULL, &s), STOCK_EINVAL);
}

Test(errors, names_and_messages)
{
	cr_expect_str_eq(stock_err_name(0), "STOCK_OK");
	cr_expect_str_eq(stock_err_name(STOCK_ESOLDOUT), "STOCK_ESOLDOUT");
	cr_expect_str_eq(stock_strerror(STOCK_ESOLDOUT), "not enough stock remaining");
	cr_expect_str_eq(stock_err_name(-999), "STOCK_EUNKNOWN");
	cr_expect_str_eq(stock_strerror(-999), "unknown error");
	for (int e = -1; e > STOCK__ERR_LAST; e--) {
		cr_expect_str_neq(stock_err_name(e), "STOCK_EUNKNOWN", "code %d has no name", e);
		cr_expect_str_neq(stock_strerror(e), "unknown error", "code %d has no message", e);
	}
	cr_expect_not_null(stock_library_version());
}

/* ---- the shared torture harness over every strategy ---------------------- */

Test(torture, atomic_8_threads, .timeout = 120) { torture_run(torture_counter_ops(STOCK_STRATEGY_ATOMIC), 8, 20000); }
Test(torture, locked_8_threads, .timeout = 120) { torture_run(torture_counter_ops(STOCK_STRATEGY_LOCKED), 8, 20000); }
Test(torture, signal_8_threads, .timeout = 120) { torture_run(torture_counter_ops(STOCK_STRATEGY_SIGNAL), 8, 20000); }
Test(torture, atomic_16_threads_small_stock, .timeout = 120) { torture_run(torture_counter_ops(STOCK_STRATEGY_ATOMIC), 16, 100); }
Test(torture, signal_16_threads_small_stock, .timeout = 120) { torture_run(torture_counter_ops(STOCK_STRATEGY_SIGNAL), 16, 100); }
Test(torture, table_sku_8_threads, .timeout = 120) { torture_run(torture_table_ops(), 8, 20000); }

Test(counter, restock_contract)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		struct stock_counter c;
		uint64_t v;

		cr_assert_eq(stock_counter_init(&c, s, 3), 0);
		cr_expect_eq(stock_counter_take(&c, 3), 0);
		v = version_of(&c);
		cr_expect_eq(stock_counter_restock(&c, 10), 0);
		expect_level(&c, 10, 3);
		cr_expect_gt(version_of(&c), v);
		v = version_of(&c);
		cr_expect_eq(stock_counter_restock(&c, 0), STOCK_EINVAL);
		cr_expect_eq(stock_counter_restock(&c, STOCK_COUNT_MAX), STOCK_ERANGE);
		cr_expect_eq(stock_counter_restock(&c, STOCK_COUNT_MAX - 13 + 1), STOCK_ERANGE);
		expect_level(&c, 10, 3);
		cr_expect_eq(version_of(&c), v);
		cr_expect_eq(stock_counter_restock(&c, STOCK_COUNT_MAX - 13), 0);
		expect_level(&c, STOCK_COUNT_MAX - 3, 3);
		stock_counter_destroy(&c);
	}
}

/* Restocks racing takes: nothing a take kept is undone, nothing is invented. */
struct restock_race {
	struct stock_counter c;
	uint64_t taken;   /* ck_pr */
	int stop;         /* ck_pr */
};

static void *
restock_taker(void *arg)
{
	struct restock_race *r = arg;

	for (;;) {
		if (stock_counter_take(&r->c, 1) == 0)
			ck_pr_inc_64(&r->taken);
		else if (ck_pr_load_int(&r->stop))
			break; /* sold out after the last restock: drained */
	}
	return NULL;
}

Test(counter, restock_races_takes, .timeout = 60)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		struct restock_race r = { .taken = 0, .stop = 0 };
		struct stock_level l;
		pthread_t t[4];

		cr_assert_eq(stock_counter_init(&r.c, s, 100), 0);
		for (int i = 0; i < 4; i++)
			pthread_create(&t[i], NULL, restock_taker, &r);
		for (int k = 0; k < 200; k++)
			cr_assert_eq(stock_counter_restock(&r.c, 50), 0);
		ck_pr_store_int(&r.stop, 1);
		for (int i = 0; i < 4; i++)
			pthread_join(t[i], NULL);
		cr_assert_eq(stock_counter_read(&r.c, &l), 0);
		cr_expect_eq(l.sold + l.remaining, 100 + 200 * 50, "%s: total %llu",
		    stock_strategy_name(s), (unsigned long long)(l.sold + l.remaining));
		cr_expect_eq(l.sold, r.taken, "%s: sold %llu, takers kept %llu",
		    stock_strategy_name(s), (unsigned long long)l.sold, (unsigned long long)r.taken);
		cr_expect_eq(l.remaining, 0, "%s: takers stopped with %llu left",
		    stock_strategy_name(s), (unsigned long long)l.remaining);
		stock_counter_destroy(&r.c);
	}
}
