/*
 * An order record {price, qty, total} that a repricing job keeps rewriting
 * while 3 dashboard threads display it: every reading they make is
 * consistent (total == price * qty), never half old and half new. Then a
 * write-behind persists the order only if nothing changed since it was
 * read ("compare-and-flush"), and an optimistic edit loses against a newer
 * write instead of overwriting it.
 */
#include <pthread.h>
#include <stdio.h>

#include <stock.h>

#define DASHBOARDS 3
#define REPRICES 20000

struct order {
	struct stock_version v;
	uint64_t price_cents, qty, total_cents; /* ck_pr: read while rewritten */
};

struct reading {
	uint64_t price_cents, qty, total_cents, version;
};

static struct order order = { .v = STOCK_VERSION_INITIALIZER };
static int open_for_business = 1; /* ck_pr */

static struct reading
read_order(void)
{
	struct reading r;
	unsigned int t;

	do {
		t = stock_version_read_begin(&order.v);
		r.price_cents = ck_pr_load_64(&order.price_cents);
		r.qty = ck_pr_load_64(&order.qty);
		r.total_cents = ck_pr_load_64(&order.total_cents);
		r.version = stock_version_get(&order.v);
	} while (stock_version_read_retry(&order.v, t));
	return r;
}

static void
reprice(uint64_t price_cents, uint64_t qty)
{
	stock_version_write_lock(&order.v);
	ck_pr_store_64(&order.price_cents, price_cents);
	ck_pr_store_64(&order.qty, qty);
	ck_pr_store_64(&order.total_cents, price_cents * qty);
	stock_version_write_unlock(&order.v);
}

static void *
dashboard(void *arg)
{
	unsigned long *torn = arg;

	while (ck_pr_load_int(&open_for_business)) {
		struct reading r = read_order();

		if (r.total_cents != r.price_cents * r.qty)
			(*torn)++;
	}
	return NULL;
}

static int
persist(void *arg, uint64_t version)
{
	const struct reading *r = arg;

	printf("persisted order v%llu: %llu x %llu.%02llu = %llu.%02llu\n",
	    (unsigned long long)version, (unsigned long long)r->qty,
	    (unsigned long long)(r->price_cents / 100), (unsigned long long)(r->price_cents % 100),
	    (unsigned long long)(r->total_cents / 100), (unsigned long long)(r->total_cents % 100));
	return 0;
}

int
main(void)
{
	pthread_t tid[DASHBOARDS];
	unsigned long torn[DASHBOARDS] = { 0 };
	struct reading r;
	int rc;

	reprice(19999, 2);
	for (int i = 0; i < DASHBOARDS; i++)
		pthread_create(&tid[i], NULL, dashboard, &torn[i]);
	for (uint64_t i = 1; i <= REPRICES; i++)
		reprice(19999 + i % 100, 2 + i % 7);
	ck_pr_store_int(&open_for_business, 0);
	for (int i = 0; i < DASHBOARDS; i++) {
		pthread_join(tid[i], NULL);
		printf("dashboard %d: %lu torn readings\n", i, torn[i]);
	}

	/* Write-behind: flush what was read, if it is still what is stored. */
	r = read_order();
	rc = stock_version_compare_and_flush(&order.v, r.version, persist, &r);
	printf("flush at v%llu: %s\n", (unsigned long long)r.version, stock_err_name(rc));

	/* An optimistic edit based on that reading, after someone else wrote. */
	reprice(25000, 1);
	rc = stock_version_try_write_lock(&order.v, r.version);
	printf("edit based on v%llu after a newer write: %s\n", (unsigned long long)r.version,
	    stock_err_name(rc));
	rc = stock_version_compare_and_flush(&order.v, r.version, persist, &r);
	printf("stale flush: %s (now at v%llu)\n", stock_err_name(rc),
	    (unsigned long long)stock_version_get(&order.v));

	stock_version_destroy(&order.v);
	return torn[0] + torn[1] + torn[2] == 0 ? 0 : 1;
}
