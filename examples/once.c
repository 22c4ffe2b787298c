/*
 * Lazy initialisation that may fail: 8 checkout threads need the price list
 * on their first order and call stock_once_run() to load it. The warehouse
 * is flaky — the first load fails with STOCK_ETIMEDOUT — so exactly one
 * thread sees that error (and retries), the next run succeeds, and nobody
 * ever loads twice after that. Exits 1 unless the loader ran exactly twice
 * (one failure, one success), exactly one caller saw the failure, and every
 * thread priced its orders from the loaded list.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include <stock.h>

#define CHECKOUTS 8
#define ORDERS 1000

struct price_list {
	unsigned nvda, tsla, amd; /* cents */
};

static struct stock_once prices_loaded = STOCK_ONCE_INITIALIZER;
static struct price_list prices;    /* written once, by the successful load */
static int loads, load_errors;      /* ck_pr */
static unsigned long long revenue[CHECKOUTS];

static int
load_prices(void *arg)
{
	struct price_list *p = arg;
	struct timespec rtt = { 0, 2 * 1000 * 1000 };

	nanosleep(&rtt, NULL); /* a round trip to the warehouse */
	if (ck_pr_faa_int(&loads, 1) == 0)
		return STOCK_ETIMEDOUT; /* the first attempt times out */
	p->nvda = 12050;
	p->tsla = 24900;
	p->amd = 15375;
	return 0;
}

static void *
checkout(void *arg)
{
	int id = (int)(long)arg, rc;

	while ((rc = stock_once_run(&prices_loaded, load_prices, &prices)) != 0) {
		printf("checkout %d: price list not loaded (%s), retrying\n", id, stock_strerror(rc));
		ck_pr_inc_int(&load_errors);
	}
	for (int i = 0; i < ORDERS; i++)
		revenue[id] += prices.nvda + prices.tsla + prices.amd;
	return NULL;
}

int
main(void)
{
	pthread_t t[CHECKOUTS];
	int priced = 0;

	for (long i = 0; i < CHECKOUTS; i++)
		pthread_create(&t[i], NULL, checkout, (void *)i);
	for (int i = 0; i < CHECKOUTS; i++) {
		pthread_join(t[i], NULL);
		priced += revenue[i] == (unsigned long long)ORDERS * (12050 + 24900 + 15375);
	}
	printf("loader ran %d times, %d caller(s) saw an error, %d/%d checkouts priced every order\n",
	    loads, load_errors, priced, CHECKOUTS);
	/* Done for good: the loader never runs again. */
	stock_once_run(&prices_loaded, load_prices, &prices);
	return loads == 2 && load_errors == 1 && priced == CHECKOUTS &&
	    stock_once_done(&prices_loaded) ? 0 : 1;
}
