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

/* remaining, held and sold at once. */
static void
expect_held(struct stock_counter *c, uint64_t remaining, uint64_t held, uint64_t sold)
{
	struct stock_level l;

	cr_assert_eq(stock_counter_read(c, &l), 0);
	cr_expect(l.remaining == remaining && l.held == held && l.sold == sold,
	    "%s: remaining/held/sold %llu/%llu/%llu, want %llu/%llu/%llu",
	    stock_strategy_name(c->strategy), (unsigned long long)l.remaining,
	    (unsigned long long)l.held, (unsigned long long)l.sold, (unsigned long long)remaining,
	    (unsigned long long)held, (unsigned long long)sold);
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

Test(counter, take_level_contract)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		const char *name = stock_strategy_name(s);
		struct stock_counter c;
		struct stock_level after, now, untouched = { .remaining = 77, .held = 77, .sold = 77, .version = 77 };
		uint64_t v;

		cr_assert_eq(stock_counter_init(&c, s, 10), 0);
		v = version_of(&c);

		/* The level is the state right after this take: what read() then sees. */
		cr_expect_eq(stock_counter_take_level(&c, 3, &after), 0);
		cr_assert_eq(stock_counter_read(&c, &now), 0);
		cr_expect_eq(after.remaining, 7, "%s", name);
		cr_expect_eq(after.sold, 3, "%s", name);
		cr_expect_gt(after.version, v, "%s", name);
		cr_expect_eq(after.version, now.version, "%s: level %llu, read %llu", name,
		    (unsigned long long)after.version, (unsigned long long)now.version);
		v = after.version;

		cr_expect_eq(stock_counter_take_level(&c, 7, &after), 0);
		cr_expect_eq(after.remaining, 0, "%s", name);
		cr_expect_eq(after.sold, 10, "%s", name);
		cr_expect_gt(after.version, v, "%s", name);
		v = after.version;

		/* Refusals change nothing, not even @after. */
		after = untouched;
		cr_expect_eq(stock_counter_take_level(&c, 1, &after), STOCK_ESOLDOUT, "%s", name);
		cr_expect_eq(stock_counter_take_level(&c, 0, &after), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_take_level(&c, STOCK_COUNT_MAX + 1, &after), STOCK_EINVAL, "%s", name);
		cr_expect(after.remaining == 77 && after.held == 77 && after.sold == 77 && after.version == 77, "%s", name);
		cr_expect_eq(stock_counter_put(&c, 4), 0);
		cr_expect_eq(stock_counter_take_level(&c, 1, NULL), STOCK_EINVAL, "%s", name);
		expect_level(&c, 4, 6); /* the NULL call took nothing */

		/* After a refund and a set, the level still follows the state. */
		cr_expect_eq(stock_counter_set(&c, 50), 0);
		v = version_of(&c);
		cr_expect_eq(stock_counter_take_level(&c, 2, &after), 0);
		cr_expect_eq(after.remaining, 48, "%s", name);
		cr_expect_eq(after.sold, 8, "%s", name);
		cr_expect_gt(after.version, v, "%s", name);
		cr_expect_eq(after.version, version_of(&c), "%s", name);
		cr_expect_eq(stock_counter_restock(&c, 5), 0);
		cr_expect_eq(stock_counter_take_level(&c, 53, &after), 0);
		cr_expect(after.remaining == 0 && after.sold == 61, "%s: %llu/%llu", name,
		    (unsigned long long)after.remaining, (unsigned long long)after.sold);
		stock_counter_destroy(&c);
	}
	{
		struct stock_atomic a = STOCK_ATOMIC_INITIALIZER(2);
		struct stock_locked l = STOCK_LOCKED_INITIALIZER(2);
		struct stock_signaled g;
		struct stock_level lv;

		cr_expect_eq(stock_atomic_take_level(&a, 2, &lv), 0);
		cr_expect(lv.remaining == 0 && lv.sold == 2);
		cr_expect_eq(stock_locked_take_level(&l, 1, &lv), 0);
		cr_expect(lv.remaining == 1 && lv.sold == 1 && lv.version == 1);
		cr_assert_eq(stock_signaled_init(&g, 1), 0);
		cr_expect_eq(stock_signaled_take_level(&g, 1, &lv), 0);
		cr_expect(lv.remaining == 0 && lv.sold == 1 && lv.version == 1);
		cr_expect_eq(stock_signaled_take_level(&g, 1, &lv), STOCK_ESOLDOUT);
		stock_signaled_destroy(&g);
	}
}

/*
 * The atomic take_level's slow path, made deterministic (white box: the
 * stress test reaches it a few times in a million takes). We play a
 * restock by hand, exactly as stock_atomic_restock does it but holding seq
 * odd as long as we like: the take must still apply (it is lock-free), its
 * level must wait for the restock to finish and then be the real state
 * after both, with a version that orders it after the restock.
 */
struct slow_level {
	struct stock_atomic a;
	struct stock_level after;
	int rc;
	int done; /* ck_pr */
};

static void *
slow_level_taker(void *arg)
{
	struct slow_level *r = arg;

	r->rc = stock_atomic_take_level(&r->a, 2, &r->after);
	ck_pr_store_int(&r->done, 1);
	return NULL;
}

Test(counter, atomic_take_level_raced_by_restock, .timeout = 30)
{
	struct slow_level r = { .done = 0 };
	struct stock_level before, now;
	struct timespec ms = { 0, 1000 * 1000 };
	pthread_t tid;
	int spins = 0;

	cr_assert_eq(stock_atomic_init(&r.a, 10), 0);
	cr_assert_eq(stock_atomic_read(&r.a, &before), 0);
	/* stock_atomic_restock, first half: seq odd. */
	cr_assert_eq(pthread_mutex_lock(&r.a.set_lock), 0);
	ck_pr_store_32(&r.a.seq, r.a.seq + 1);
	ck_pr_fence_store();
	cr_assert_eq(pthread_create(&tid, NULL, slow_level_taker, &r), 0);
	/* The take applies while the restock is in progress... */
	while (ck_pr_load_64(&r.a.taken) != 2 && spins++ < 10000)
		nanosleep(&ms, NULL);
	cr_expect_eq(ck_pr_load_64(&r.a.taken), 2, "the take did not apply during a restock");
	/* ...but its level cannot be known until the restock ends. */
	nanosleep(&ms, NULL);
	cr_expect_eq(ck_pr_load_int(&r.done), 0, "take_level returned a level mid-restock");
	/* Second half: A += 5, seq even. */
	ck_pr_store_64(&r.a.added, r.a.added + 5);
	ck_pr_fence_store();
	ck_pr_store_32(&r.a.seq, r.a.seq + 1);
	pthread_mutex_unlock(&r.a.set_lock);
	pthread_join(tid, NULL);

	cr_expect_eq(r.rc, 0);
	cr_assert_eq(stock_atomic_read(&r.a, &now), 0);
	/* A real state after both: includes the take and the restock. */
	cr_expect_eq(r.after.sold, 2);
	cr_expect_eq(r.after.remaining, 13);
	cr_expect_eq(r.after.version, now.version);
	cr_expect_gt(r.after.version, before.version + 5);
	stock_atomic_destroy(&r.a);
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

/* ---- held state: reserve, commit, release -------------------------------- */

Test(counter, reserve_commit_release_contract)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		const char *name = stock_strategy_name(s);
		struct stock_counter c;
		uint64_t v;

		cr_assert_eq(stock_counter_init(&c, s, 10), 0);
		expect_held(&c, 10, 0, 0);
		v = version_of(&c);

		/* reserve: remaining -> held, version up. */
		cr_expect_eq(stock_counter_reserve(&c, 4), 0, "%s", name);
		expect_held(&c, 6, 4, 0);
		cr_expect_gt(version_of(&c), v, "%s", name);
		v = version_of(&c);

		/* Sold out: more than remains is refused, nothing changes. */
		cr_expect_eq(stock_counter_reserve(&c, 7), STOCK_ESOLDOUT, "%s", name);
		expect_held(&c, 6, 4, 0);
		cr_expect_eq(version_of(&c), v, "%s", name);
		/* Held units are not for sale: take sees only remaining. */
		cr_expect_eq(stock_counter_take(&c, 7), STOCK_ESOLDOUT, "%s", name);
		cr_expect_eq(stock_counter_take(&c, 2), 0, "%s", name);
		expect_held(&c, 4, 4, 2);
		v = version_of(&c);

		/* commit: held -> sold; over-commit refused. */
		cr_expect_eq(stock_counter_commit(&c, 5), STOCK_EHELD, "%s", name);
		expect_held(&c, 4, 4, 2);
		cr_expect_eq(version_of(&c), v, "%s", name);
		cr_expect_eq(stock_counter_commit(&c, 3), 0, "%s", name);
		expect_held(&c, 4, 1, 5);
		cr_expect_gt(version_of(&c), v, "%s", name);
		v = version_of(&c);

		/* release: held -> remaining; over-release refused. */
		cr_expect_eq(stock_counter_release(&c, 2), STOCK_EHELD, "%s", name);
		expect_held(&c, 4, 1, 5);
		cr_expect_eq(version_of(&c), v, "%s", name);
		cr_expect_eq(stock_counter_release(&c, 1), 0, "%s", name);
		expect_held(&c, 5, 0, 5);
		cr_expect_gt(version_of(&c), v, "%s", name);
		v = version_of(&c);
		cr_expect_eq(stock_counter_commit(&c, 1), STOCK_EHELD, "%s", name);
		cr_expect_eq(stock_counter_release(&c, 1), STOCK_EHELD, "%s", name);
		cr_expect_eq(version_of(&c), v, "%s", name);

		/* Held units cannot be refunded: put counts only sold. */
		cr_expect_eq(stock_counter_reserve(&c, 5), 0, "%s", name);
		expect_held(&c, 0, 5, 5);
		cr_expect_eq(stock_counter_put(&c, 6), STOCK_EREFUND, "%s", name);
		cr_expect_eq(stock_counter_reserve(&c, 1), STOCK_ESOLDOUT, "%s", name);
		cr_expect_eq(stock_counter_put(&c, 5), 0, "%s", name);
		expect_held(&c, 5, 5, 0);
		cr_expect_eq(stock_counter_put(&c, 1), STOCK_EREFUND, "%s", name);

		/* set changes remaining only; restock too; held is kept. */
		v = version_of(&c);
		cr_expect_eq(stock_counter_set(&c, 2), 0, "%s", name);
		expect_held(&c, 2, 5, 0);
		cr_expect_gt(version_of(&c), v, "%s", name);
		cr_expect_eq(stock_counter_set(&c, 20), 0, "%s", name);
		expect_held(&c, 20, 5, 0);
		cr_expect_eq(stock_counter_restock(&c, 3), 0, "%s", name);
		expect_held(&c, 23, 5, 0);
		cr_expect_eq(stock_counter_commit(&c, 5), 0, "%s", name);
		expect_held(&c, 23, 0, 5);
		stock_counter_destroy(&c);
	}
}

Test(counter, held_ops_reject_nonsense)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		const char *name = stock_strategy_name(s);
		struct stock_counter c;
		uint64_t v;

		cr_assert_eq(stock_counter_init(&c, s, 5), 0);
		cr_expect_eq(stock_counter_reserve(&c, 2), 0, "%s", name);
		v = version_of(&c);
		cr_expect_eq(stock_counter_reserve(&c, 0), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_commit(&c, 0), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_release(&c, 0), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_reserve(&c, STOCK_COUNT_MAX + 1), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_commit(&c, STOCK_COUNT_MAX + 1), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_release(&c, STOCK_COUNT_MAX + 1), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_reserve(&c, UINT64_MAX), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_commit(&c, UINT64_MAX), STOCK_EINVAL, "%s", name);
		cr_expect_eq(stock_counter_release(&c, UINT64_MAX), STOCK_EINVAL, "%s", name);
		/* Large but valid counts are refused for the contract's reasons. */
		cr_expect_eq(stock_counter_reserve(&c, STOCK_COUNT_MAX), STOCK_ESOLDOUT, "%s", name);
		cr_expect_eq(stock_counter_commit(&c, STOCK_COUNT_MAX), STOCK_EHELD, "%s", name);
		cr_expect_eq(stock_counter_release(&c, STOCK_COUNT_MAX), STOCK_EHELD, "%s", name);
		expect_held(&c, 3, 2, 0);
		cr_expect_eq(version_of(&c), v, "%s", name);

		/* The total counts held units: sold + held + remaining <= MAX. */
		cr_expect_eq(stock_counter_set(&c, STOCK_COUNT_MAX - 1), STOCK_ERANGE, "%s", name);
		cr_expect_eq(stock_counter_restock(&c, STOCK_COUNT_MAX - 4), STOCK_ERANGE, "%s", name);
		expect_held(&c, 3, 2, 0);
		cr_expect_eq(stock_counter_set(&c, STOCK_COUNT_MAX - 2), 0, "%s", name);
		expect_held(&c, STOCK_COUNT_MAX - 2, 2, 0);
		cr_expect_eq(stock_counter_reserve(&c, STOCK_COUNT_MAX - 2), 0, "%s", name);
		expect_held(&c, 0, STOCK_COUNT_MAX, 0);
		cr_expect_eq(stock_counter_commit(&c, STOCK_COUNT_MAX - 1), 0, "%s", name);
		cr_expect_eq(stock_counter_release(&c, 1), 0, "%s", name);
		expect_held(&c, 1, 0, STOCK_COUNT_MAX - 1);
		cr_expect_eq(stock_counter_restock(&c, 1), STOCK_ERANGE, "%s", name);
		stock_counter_destroy(&c);
	}
	{
		/* Each strategy's own entry points, and its static initializer. */
		struct stock_atomic a = STOCK_ATOMIC_INITIALIZER(3);
		struct stock_locked l = STOCK_LOCKED_INITIALIZER(3);
		struct stock_signaled g;
		struct stock_level lv;

		cr_expect_eq(stock_atomic_reserve(&a, 3), 0);
		cr_expect_eq(stock_atomic_reserve(&a, 1), STOCK_ESOLDOUT);
		cr_expect_eq(stock_atomic_commit(&a, 2), 0);
		cr_expect_eq(stock_atomic_release(&a, 2), STOCK_EHELD);
		cr_expect_eq(stock_atomic_release(&a, 1), 0);
		cr_assert_eq(stock_atomic_read(&a, &lv), 0);
		cr_expect(lv.remaining == 1 && lv.held == 0 && lv.sold == 2, "atomic %llu/%llu/%llu",
		    (unsigned long long)lv.remaining, (unsigned long long)lv.held, (unsigned long long)lv.sold);
		cr_expect_eq(stock_locked_reserve(&l, 3), 0);
		cr_expect_eq(stock_locked_commit(&l, 4), STOCK_EHELD);
		cr_expect_eq(stock_locked_commit(&l, 1), 0);
		cr_expect_eq(stock_locked_release(&l, 2), 0);
		cr_assert_eq(stock_locked_read(&l, &lv), 0);
		cr_expect(lv.remaining == 2 && lv.held == 0 && lv.sold == 1 && lv.version == 3);
		cr_assert_eq(stock_signaled_init(&g, 3), 0);
		cr_expect_eq(stock_signaled_reserve(&g, 4), STOCK_ESOLDOUT);
		cr_expect_eq(stock_signaled_reserve(&g, 3), 0);
		cr_expect_eq(stock_signaled_release(&g, 1), 0);
		cr_expect_eq(stock_signaled_commit(&g, 2), 0);
		cr_expect_eq(stock_signaled_commit(&g, 1), STOCK_EHELD);
		cr_assert_eq(stock_signaled_read(&g, &lv), 0);
		cr_expect(lv.remaining == 1 && lv.held == 0 && lv.sold == 2 && lv.version == 3);
		stock_signaled_destroy(&g);
	}
	cr_expect_str_eq(stock_err_name(STOCK_EHELD), "STOCK_EHELD");
	cr_expect_str_eq(stock_strerror(STOCK_EHELD), "commit or release exceeds units held");
}

/* A take level reports held units too; a reserve never makes it inexact. */
Test(counter, take_level_sees_held)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		const char *name = stock_strategy_name(s);
		struct stock_counter c;
		struct stock_level after, now;

		cr_assert_eq(stock_counter_init(&c, s, 10), 0);
		cr_expect_eq(stock_counter_reserve(&c, 3), 0, "%s", name);
		cr_expect_eq(stock_counter_commit(&c, 1), 0, "%s", name);
		cr_expect_eq(stock_counter_take_level(&c, 2, &after), 0, "%s", name);
		cr_assert_eq(stock_counter_read(&c, &now), 0);
		cr_expect(after.remaining == 5 && after.held == 2 && after.sold == 3, "%s: %llu/%llu/%llu",
		    name, (unsigned long long)after.remaining, (unsigned long long)after.held,
		    (unsigned long long)after.sold);
		cr_expect_eq(after.version, now.version, "%s", name);
		cr_expect_eq(stock_counter_release(&c, 2), 0, "%s", name);
		cr_expect_eq(stock_counter_take_level(&c, 7, &after), 0, "%s", name);
		cr_expect(after.remaining == 0 && after.held == 0 && after.sold == 10, "%s", name);
		stock_counter_destroy(&c);
	}
}

/*
 * Last units: reservers and takers race for 1000 units one at a time; every
 * unit goes to exactly one of them (held + sold == 1000, the successes add
 * up), and concurrent committers/releasers never drive held below zero.
 */
struct held_race {
	struct stock_counter c;
	uint64_t took, reserved, committed, released; /* ck_pr */
	uint64_t errors;                              /* ck_pr: unexpected codes */
};

static void *
held_racer(void *arg)
{
	struct held_race *r = arg;
	uint64_t mine = 0;
	unsigned k = 0;

	for (;;) {
		int rc = (k++ & 1) ? stock_counter_take(&r->c, 1) : stock_counter_reserve(&r->c, 1);

		if (rc == STOCK_ESOLDOUT)
			break;
		if (rc != 0) {
			ck_pr_inc_64(&r->errors);
			break;
		}
		if (k & 1) {
			ck_pr_inc_64(&r->reserved);
			mine++;
		} else {
			ck_pr_inc_64(&r->took);
		}
		/* Settle every other hold at once, half commits, half releases:
		   a release puts a unit back for the others. */
		if (mine > 0 && (k & 3) == 1) {
			if ((k & 4) ? stock_counter_commit(&r->c, 1) == 0 : stock_counter_release(&r->c, 1) == 0) {
				ck_pr_inc_64((k & 4) ? &r->committed : &r->released);
				mine--;
			} else {
				ck_pr_inc_64(&r->errors); /* an own hold refused */
			}
		}
	}
	return NULL;
}

Test(counter, held_race_last_units, .timeout = 60)
{
	enum stock_strategy s;

	FOR_EACH_STRATEGY(s) {
		struct held_race r = { .took = 0 };
		struct stock_level l;
		pthread_t t[4];

		cr_assert_eq(stock_counter_init(&r.c, s, 1000), 0);
		for (int i = 0; i < 4; i++)
			pthread_create(&t[i], NULL, held_racer, &r);
		for (int i = 0; i < 4; i++)
			pthread_join(t[i], NULL);
		cr_assert_eq(stock_counter_read(&r.c, &l), 0);
		cr_expect_eq(r.errors, 0, "%s: unexpected codes", stock_strategy_name(s));
		cr_expect_eq(l.remaining, 0, "%s", stock_strategy_name(s));
		cr_expect_eq(l.held, r.reserved - r.committed - r.released, "%s: held %llu",
		    stock_strategy_name(s), (unsigned long long)l.held);
		cr_expect_eq(l.sold, r.took + r.committed, "%s: sold %llu", stock_strategy_name(s),
		    (unsigned long long)l.sold);
		cr_expect_eq(l.held + l.sold, 1000, "%s", stock_strategy_name(s));
		cr_expect_eq(r.took + r.reserved - r.released, 1000, "%s", stock_strategy_name(s));
		stock_counter_destroy(&r.c);
	}
}
