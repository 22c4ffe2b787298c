/*
 * Hot-reloaded price list: 4 checkout threads quote prices from the current
 * list without taking a lock, while a pricing job publishes a new list 50
 * times. Old lists are freed only when no checkout can still be reading
 * them; every list ever published is freed exactly once.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <stock.h>

#define CHECKOUTS 4
#define RELOADS 50
#define ITEMS 3

struct price_list {
	unsigned revision;
	const char *item[ITEMS];
	unsigned cents[ITEMS];
};

static const char *const names[ITEMS] = { "ticket", "hoodie", "poster" };

struct shop {
	struct stock_snapshot prices;
	int open;          /* ck_pr: checkouts run while 1 */
	unsigned freed;    /* ck_pr: lists handed to free_list */
};

struct checkout {
	struct shop *shop;
	pthread_t tid;
	unsigned long quotes;
	unsigned first_rev, last_rev;
};

static struct price_list *
new_list(unsigned revision)
{
	struct price_list *l = malloc(sizeof *l);

	if (l == NULL)
		abort();
	l->revision = revision;
	for (int i = 0; i < ITEMS; i++) {
		l->item[i] = names[i];
		l->cents[i] = 1000 * (unsigned)(i + 1) + revision; /* prices creep up */
	}
	return l;
}

static void
free_list(void *obj, void *arg)
{
	struct shop *shop = arg;

	free(obj);
	ck_pr_inc_uint(&shop->freed);
}

static void *
run_checkout(void *arg)
{
	struct checkout *c = arg;
	struct stock_snapshot_section sec;
	const struct price_list *l;

	c->first_rev = ~0u;
	while (ck_pr_load_int(&c->shop->open)) {
		l = stock_snapshot_read_begin(&c->shop->prices, &sec);
		if (l == NULL)
			break; /* out of memory registering this thread */
		unsigned total = 0;
		for (int i = 0; i < ITEMS; i++)
			total += l->cents[i]; /* the whole list is one revision */
		if (total != 6000 + 3 * l->revision)
			fprintf(stderr, "torn price list!\n");
		if (c->first_rev == ~0u)
			c->first_rev = l->revision;
		c->last_rev = l->revision;
		stock_snapshot_read_end(&c->shop->prices, &sec);
		c->quotes++;
	}
	return NULL;
}

int
main(void)
{
	struct shop shop = { .open = 1 };
	struct checkout co[CHECKOUTS];
	struct stock_snapshot_section sec;
	const struct price_list *l;

	if (stock_snapshot_init(&shop.prices, new_list(0), free_list, &shop) != 0)
		return 1;
	for (int i = 0; i < CHECKOUTS; i++) {
		co[i] = (struct checkout){ .shop = &shop };
		pthread_create(&co[i].tid, NULL, run_checkout, &co[i]);
	}
	for (unsigned rev = 1; rev <= RELOADS; rev++) {
		struct timespec tick = { 0, 2000000 }; /* a reload every 2 ms */

		nanosleep(&tick, NULL);
		if (stock_snapshot_publish(&shop.prices, new_list(rev)) != 0)
			return 1;
		if (rev % 10 == 0)
			stock_snapshot_synchronize(&shop.prices); /* wait, then free old lists */
	}
	ck_pr_store_int(&shop.open, 0);
	for (int i = 0; i < CHECKOUTS; i++) {
		pthread_join(co[i].tid, NULL);
		printf("checkout %d: %lu quotes, saw revisions %u..%u\n", i, co[i].quotes,
		    co[i].first_rev, co[i].last_rev);
	}

	l = stock_snapshot_read_begin(&shop.prices, &sec);
	printf("current list: revision %u (version %llu), %s %u.%02u\n", l->revision,
	    (unsigned long long)sec.version, l->item[0], l->cents[0] / 100, l->cents[0] % 100);
	stock_snapshot_read_end(&shop.prices, &sec);

	stock_snapshot_destroy(&shop.prices);
	printf("price lists published: %d, freed: %u\n", RELOADS + 1, shop.freed);
	return shop.freed == RELOADS + 1 ? 0 : 1;
}
