/*
 * SKU table: SKU validation, the map contract for every counter strategy,
 * foreach visiting each entry exactly once, entries staying valid inside a
 * read section after a concurrent remove, and concurrent takes and lookups
 * while another thread inserts and removes other SKUs (ASan proves no
 * use-after-free; the final tally proves no lost or duplicated sale).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stock.h>

#define TBL_S(lit) (lit), (sizeof(lit) - 1)

Test(table, sku_validation)
{
	static const struct {
		const char *s;
		size_t len;
		bool ok;
	} cases[] = {
		{ "NVDA", 4, true },
		{ "a", 1, true },
		{ "sku-001_A.b:c", 13, true },
		{ "..", 2, true },  /* '.' is allowed, so ".." is syntactically valid */
		{ ".", 1, true },
		{ "-", 1, true },
		{ "", 0, false },   /* empty */
		{ "a/b", 3, false },
		{ "a b", 3, false },
		{ "a\tb", 3, false },
		{ "a\0b", 3, false }, /* embedded NUL */
		{ "caf\xc3\xa9", 5, false }, /* non-ASCII */
		{ "a+b", 3, false },
		{ "a%2F", 4, false },
		{ "a\"b", 3, false },
	};
	char buf[80];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		cr_expect_eq(stock_sku_valid(cases[i].s, cases[i].len), cases[i].ok, "case %zu", i);
	cr_expect_not(stock_sku_valid(NULL, 3));
	memset(buf, 'X', sizeof buf);
	cr_expect(stock_sku_valid(buf, STOCK_SKU_MAX), "64 bytes is the maximum");
	cr_expect_not(stock_sku_valid(buf, STOCK_SKU_MAX + 1), "65 bytes is too long");
	/* Only @len bytes count: a valid prefix of an invalid string is valid. */
	cr_expect(stock_sku_valid("AMD/x", 3));
}

static void
tbl_contract(enum stock_strategy strategy)
{
	stock_table_t *t;
	struct stock_level lvl;
	char long_sku[STOCK_SKU_MAX + 1];

	cr_assert_eq(stock_table_create(&t, strategy, 4), 0);
	cr_expect_eq(stock_table_strategy(t), strategy);
	cr_expect_eq(stock_table_count(t), 0);

	cr_expect_eq(stock_table_insert(t, TBL_S("NVDA"), 10), 0);
	cr_expect_eq(stock_table_insert(t, TBL_S("NVDA"), 99), STOCK_EEXIST);
	cr_expect_eq(stock_table_insert(t, TBL_S("nvda"), 5), 0, "SKUs are case-sensitive");
	cr_expect_eq(stock_table_insert(t, TBL_S("a/b"), 1), STOCK_EINVAL);
	cr_expect_eq(stock_table_insert(t, "", 0, 1), STOCK_EINVAL);
	memset(long_sku, 'L', sizeof long_sku);
	cr_expect_eq(stock_table_insert(t, long_sku, sizeof long_sku, 1), STOCK_EINVAL);
	cr_expect_eq(stock_table_insert(t, long_sku, STOCK_SKU_MAX, 1), 0);
	cr_expect_eq(stock_table_insert(t, TBL_S("BIG"), STOCK_COUNT_MAX + 1), STOCK_ERANGE);
	cr_expect_eq(stock_table_count(t), 3);

	cr_expect_eq(stock_table_read(t, TBL_S("NVDA"), &lvl), 0);
	cr_expect_eq(lvl.remaining, 10);
	cr_expect_eq(lvl.sold, 0);
	cr_expect_eq(stock_table_take(t, TBL_S("NVDA"), 4), 0);
	cr_expect_eq(stock_table_take(t, TBL_S("NVDA"), 7), STOCK_ESOLDOUT);
	cr_expect_eq(stock_table_take(t, TBL_S("NVDA"), 0), STOCK_EINVAL);
	cr_expect_eq(stock_table_put(t, TBL_S("NVDA"), 1), 0);
	cr_expect_eq(stock_table_put(t, TBL_S("NVDA"), 4), STOCK_EREFUND);
	cr_expect_eq(stock_table_read(t, TBL_S("NVDA"), &lvl), 0);
	cr_expect_eq(lvl.remaining, 7);
	cr_expect_eq(lvl.sold, 3);
	cr_expect_eq(stock_table_set(t, TBL_S("NVDA"), 100), 0);
	cr_expect_eq(stock_table_read(t, TBL_S("NVDA"), &lvl), 0);
	cr_expect_eq(lvl.remaining, 100);
	cr_expect_eq(lvl.sold, 3);
	cr_expect_eq(stock_table_read(t, TBL_S("nvda"), &lvl), 0);
	cr_expect_eq(lvl.remaining, 5, "nvda is a different SKU");

	/* Unknown and invalid SKUs. */
	cr_expect_eq(stock_table_take(t, TBL_S("TSLA"), 1), STOCK_ENOENT);
	cr_expect_eq(stock_table_read(t, TBL_S("TSLA"), &lvl), STOCK_ENOENT);
	cr_expect_eq(stock_table_take(t, TBL_S("NV DA"), 1), STOCK_EINVAL);
	cr_expect_eq(stock_table_read(t, TBL_S("NVDA"), NULL), STOCK_EINVAL);
	cr_expect_eq(stock_table_remove(t, TBL_S("TSLA")), STOCK_ENOENT);

	/* Removed: every operation says ENOENT; the SKU may come back fresh. */
	cr_expect_eq(stock_table_remove(t, TBL_S("NVDA")), 0);
	cr_expect_eq(stock_table_remove(t, TBL_S("NVDA")), STOCK_ENOENT);
	cr_expect_eq(stock_table_take(t, TBL_S("NVDA"), 1), STOCK_ENOENT);
	cr_expect_eq(stock_table_put(t, TBL_S("NVDA"), 1), STOCK_ENOENT);
	cr_expect_eq(stock_table_set(t, TBL_S("NVDA"), 1), STOCK_ENOENT);
	cr_expect_eq(stock_table_read(t, TBL_S("NVDA"), &lvl), STOCK_ENOENT);
	cr_expect_eq(stock_table_count(t), 2);
	cr_expect_eq(stock_table_insert(t, TBL_S("NVDA"), 3), 0);
	cr_expect_eq(stock_table_read(t, TBL_S("NVDA"), &lvl), 0);
	cr_expect_eq(lvl.remaining, 3);
	cr_expect_eq(lvl.sold, 0, "a re-inserted SKU is a new counter");

	stock_table_destroy(t);
}

Test(table, contract_atomic) { tbl_contract(STOCK_STRATEGY_ATOMIC); }
Test(table, contract_locked) { tbl_contract(STOCK_STRATEGY_LOCKED); }
Test(table, contract_signal) { tbl_contract(STOCK_STRATEGY_SIGNAL); }

Test(table, create_arguments)
{
	stock_table_t *t;

	cr_expect_eq(stock_table_create(NULL, STOCK_STRATEGY_ATOMIC, 0), STOCK_EINVAL);
	cr_expect_eq(stock_table_create(&t, (enum stock_strategy)7, 0), STOCK_EINVAL);
	cr_expect_eq(stock_table_insert(NULL, TBL_S("A"), 1), STOCK_EINVAL);
	cr_expect_eq(stock_table_take(NULL, TBL_S("A"), 1), STOCK_EINVAL);
	cr_expect_eq(stock_table_count(NULL), 0);
	cr_expect_eq(stock_table_foreach(NULL, NULL, NULL), STOCK_EINVAL);
	stock_table_destroy(NULL);
	/* A large hint; destroy with entries and removed entries pending. */
	cr_assert_eq(stock_table_create(&t, STOCK_STRATEGY_LOCKED, 5000), 0);
	for (int i = 0; i < 100; i++) {
		char sku[16];
		int n = snprintf(sku, sizeof sku, "S%d", i);

		cr_assert_eq(stock_table_insert(t, sku, (size_t)n, 1), 0);
		if (i % 3 == 0)
			cr_assert_eq(stock_table_remove(t, sku, (size_t)n), 0);
	}
	cr_expect_eq(stock_table_count(t), 66);
	stock_table_destroy(t);
}

/* ---- foreach ---------------------------------------------------------- */

#define TBL_MANY 1500

struct tbl_seen {
	unsigned char hits[TBL_MANY];
	int calls;
	int stop_after;
};

static int
tbl_visit(const char *sku, size_t len, const struct stock_level *lvl, void *arg)
{
	struct tbl_seen *s = arg;
	int i;

	cr_assert_eq(strlen(sku), len, "sku is NUL-terminated");
	cr_assert_eq(sscanf(sku, "SKU-%d", &i), 1);
	cr_assert(i >= 0 && i < TBL_MANY);
	cr_expect_eq(lvl->remaining, (uint64_t)i + 1);
	s->hits[i]++;
	s->calls++;
	return s->calls == s->stop_after ? 42 : 0;
}

Test(table, foreach_visits_every_entry_once)
{
	struct tbl_seen *seen = calloc(1, sizeof *seen);
	stock_table_t *t;
	char sku[32];
	int n;

	cr_assert_not_null(seen);
	cr_assert_eq(stock_table_create(&t, STOCK_STRATEGY_ATOMIC, 0), 0); /* grows many times */
	for (int i = 0; i < TBL_MANY; i++) {
		n = snprintf(sku, sizeof sku, "SKU-%d", i);
		cr_assert_eq(stock_table_insert(t, sku, (size_t)n, (uint64_t)i + 1), 0);
	}
	/* Remove and re-insert a third: tombstones and rebuilds on the way. */
	for (int i = 0; i < TBL_MANY; i += 3) {
		n = snprintf(sku, sizeof sku, "SKU-%d", i);
		cr_assert_eq(stock_table_remove(t, sku, (size_t)n), 0);
	}
	for (int i = 0; i < TBL_MANY; i += 3) {
		n = snprintf(sku, sizeof sku, "SKU-%d", i);
		cr_assert_eq(stock_table_insert(t, sku, (size_t)n, (uint64_t)i + 1), 0);
	}
	cr_expect_eq(stock_table_count(t), TBL_MANY);

	cr_expect_eq(stock_table_foreach(t, tbl_visit, seen), 0);
	cr_expect_eq(seen->calls, TBL_MANY);
	for (int i = 0; i < TBL_MANY; i++)
		cr_expect_eq(seen->hits[i], 1, "SKU-%d visited %d times", i, seen->hits[i]);

	memset(seen, 0, sizeof *seen);
	seen->stop_after = 10;
	cr_expect_eq(stock_table_foreach(t, tbl_visit, seen), 42, "stops with fn's value");
	cr_expect_eq(seen->calls, 10);
	stock_table_destroy(t);
	free(seen);
}

/* ---- an entry found in a section outlives a concurrent remove -------- */

static void *
tbl_remove_and_churn(void *p)
{
	stock_table_t *t = p;
	char sku[32];

	cr_assert_eq(stock_table_remove(t, TBL_S("HELD")), 0);
	/* Many writes: each polls the epoch, trying to free HELD. */
	for (int i = 0; i < 2000; i++) {
		int n = snprintf(sku, sizeof sku, "CHURN-%d", i % 50);

		if (stock_table_insert(t, sku, (size_t)n, 1) == STOCK_EEXIST)
			cr_assert_eq(stock_table_remove(t, sku, (size_t)n), 0);
	}
	return NULL;
}

Test(table, lookup_stays_valid_until_section_end)
{
	struct stock_table_section sec;
	struct stock_counter *c;
	struct stock_level lvl;
	stock_table_t *t;
	pthread_t w;

	cr_assert_eq(stock_table_create(&t, STOCK_STRATEGY_LOCKED, 0), 0);
	cr_assert_eq(stock_table_insert(t, TBL_S("HELD"), 10), 0);
	cr_assert_eq(stock_table_read_begin(t, &sec), 0);
	c = stock_table_lookup(t, TBL_S("HELD"));
	cr_assert_not_null(c);
	cr_expect_null(stock_table_lookup(t, TBL_S("NOPE")));
	cr_assert_eq(pthread_create(&w, NULL, tbl_remove_and_churn, t), 0);
	cr_assert_eq(pthread_join(w, NULL), 0, "writers never wait for readers");
	cr_expect_null(stock_table_lookup(t, TBL_S("HELD")), "removed for new lookups");
	/* Still ours until read_end (ASan would report a freed counter). */
	cr_expect_eq(stock_counter_take(c, 3), 0);
	cr_expect_eq(stock_counter_read(c, &lvl), 0);
	cr_expect_eq(lvl.remaining, 7);
	stock_table_read_end(t, &sec);
	cr_expect_eq(stock_table_take(t, TBL_S("HELD"), 1), STOCK_ENOENT);
	stock_table_destroy(t);
}

/* ---- concurrent buyers while another thread inserts and removes ------- */

#define TBL_BUYERS 4
#define TBL_HOT 8
#define TBL_UNITS 3000 /* per hot SKU */
#define TBL_CHURN_SKUS 64

struct tbl_shop {
	stock_table_t *t;
	int churning;      /* ck_pr: 1 while the churn thread runs */
	uint64_t bought;   /* ck_pr: successful takes of 1 on hot SKUs */
	uint64_t churn_ok; /* ck_pr: successful takes on churned SKUs */
	uint64_t churn_enoent;
};

static void *
tbl_buyer(void *p)
{
	struct tbl_shop *s = p;
	uint64_t bought = 0, ok = 0, enoent = 0;
	unsigned seed = (unsigned)(uintptr_t)&bought;
	int sold_out = 0;
	char sku[32];

	while (sold_out < TBL_HOT || ck_pr_load_int(&s->churning)) {
		int n, rc;

		seed = seed * 1103515245u + 12345u;
		if ((seed >> 16) % 4 == 0) {
			/* A churned SKU: present, absent, or removed under us. */
			n = snprintf(sku, sizeof sku, "TMP-%u", (seed >> 8) % TBL_CHURN_SKUS);
			rc = stock_table_take(s->t, sku, (size_t)n, 1);
			cr_assert(rc == 0 || rc == STOCK_ENOENT || rc == STOCK_ESOLDOUT,
			    "take(%s) = %s", sku, stock_err_name(rc));
			ok += rc == 0;
			enoent += rc == STOCK_ENOENT;
			continue;
		}
		n = snprintf(sku, sizeof sku, "HOT-%u", (seed >> 8) % TBL_HOT);
		rc = stock_table_take(s->t, sku, (size_t)n, 1);
		if (rc == 0) {
			bought++;
		} else {
			cr_assert_eq(rc, STOCK_ESOLDOUT, "take(%s) = %s", sku, stock_err_name(rc));
			/* Count distinct sold-out SKUs cheaply: re-check all. */
			sold_out = 0;
			for (int i = 0; i < TBL_HOT; i++) {
				struct stock_level lvl;

				n = snprintf(sku, sizeof sku, "HOT-%d", i);
				cr_assert_eq(stock_table_read(s->t, sku, (size_t)n, &lvl), 0);
				sold_out += lvl.remaining == 0;
			}
		}
	}
	ck_pr_add_64(&s->bought, bought);
	ck_pr_add_64(&s->churn_ok, ok);
	ck_pr_add_64(&s->churn_enoent, enoent);
	return NULL;
}

static int
tbl_count_visit(const char *sku, size_t len, const struct stock_level *lvl, void *arg)
{
	(void)sku;
	(void)len;
	cr_assert_leq(lvl->sold, TBL_UNITS);
	(*(int *)arg)++;
	return 0;
}

static void *
tbl_churner(void *p)
{
	struct tbl_shop *s = p;
	char sku[32];

	for (int round = 0; round < 150; round++) {
		for (int i = 0; i < TBL_CHURN_SKUS; i++) {
			int n = snprintf(sku, sizeof sku, "TMP-%d", i);

			cr_assert_eq(stock_table_insert(s->t, sku, (size_t)n, 5), 0);
		}
		if (round % 8 == 0) {
			int visited = 0;

			cr_assert_eq(stock_table_foreach(s->t, tbl_count_visit, &visited), 0);
			cr_assert_geq(visited, TBL_HOT, "hot SKUs are always there");
		}
		for (int i = 0; i < TBL_CHURN_SKUS; i++) {
			int n = snprintf(sku, sizeof sku, "TMP-%d", i);

			cr_assert_eq(stock_table_remove(s->t, sku, (size_t)n), 0);
		}
	}
	ck_pr_store_int(&s->churning, 0);
	return NULL;
}

static void
tbl_concurrent(enum stock_strategy strategy)
{
	struct tbl_shop s = { .churning = 1 };
	pthread_t b[TBL_BUYERS], w;
	char sku[32];

	cr_assert_eq(stock_table_create(&s.t, strategy, 0), 0);
	for (int i = 0; i < TBL_HOT; i++) {
		int n = snprintf(sku, sizeof sku, "HOT-%d", i);

		cr_assert_eq(stock_table_insert(s.t, sku, (size_t)n, TBL_UNITS), 0);
	}
	cr_assert_eq(pthread_create(&w, NULL, tbl_churner, &s), 0);
	for (int i = 0; i < TBL_BUYERS; i++)
		cr_assert_eq(pthread_create(&b[i], NULL, tbl_buyer, &s), 0);
	pthread_join(w, NULL);
	for (int i = 0; i < TBL_BUYERS; i++)
		pthread_join(b[i], NULL);

	/* Every hot unit sold exactly once, never more. */
	cr_expect_eq(s.bought, (uint64_t)TBL_HOT * TBL_UNITS);
	for (int i = 0; i < TBL_HOT; i++) {
		struct stock_level lvl;
		int n = snprintf(sku, sizeof sku, "HOT-%d", i);

		cr_assert_eq(stock_table_read(s.t, sku, (size_t)n, &lvl), 0);
		cr_expect_eq(lvl.remaining, 0);
		cr_expect_eq(lvl.sold, TBL_UNITS);
	}
	cr_expect_eq(stock_table_count(s.t), TBL_HOT);
	cr_log_info("churned SKUs: %llu takes, %llu ENOENT", (unsigned long long)s.churn_ok,
	    (unsigned long long)s.churn_enoent);
	stock_table_destroy(s.t);
}

Test(table, concurrent_takes_with_insert_remove_atomic, .timeout = 60)
{
	tbl_concurrent(STOCK_STRATEGY_ATOMIC);
}

Test(table, concurrent_takes_with_insert_remove_locked, .timeout = 60)
{
	tbl_concurrent(STOCK_STRATEGY_LOCKED);
}
