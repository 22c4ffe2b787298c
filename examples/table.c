/*
 * Product catalogue (the seed's ManyStock): NVDA, TSLA and AMD with 15000
 * shares each, 8 buyer threads buying random products until everything is
 * sold out, while the catalogue also lists and delists a promotional item.
 * The tally must add up to exactly 45000 — not one share more.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include <stock.h>

#define BUYERS 8
#define SHARES 15000
#define PRODUCTS 3

static const char *const catalogue[PRODUCTS] = { "NVDA", "TSLA", "AMD" };
static pthread_barrier_t opening_bell; /* buyers and the catalogue start together */

struct buyer {
	stock_table_t *table;
	pthread_t tid;
	unsigned seed;
	unsigned long bought[PRODUCTS];
	unsigned long promo;
};

static void *
buy_until_sold_out(void *arg)
{
	struct buyer *b = arg;
	int sold_out[PRODUCTS] = { 0 }, left = PRODUCTS;

	pthread_barrier_wait(&opening_bell);
	while (left > 0) {
		int p;

		b->seed = b->seed * 1103515245u + 12345u;
		p = (int)((b->seed >> 16) % PRODUCTS);
		if (sold_out[p])
			continue;
		switch (stock_table_take(b->table, catalogue[p], strlen(catalogue[p]), 1)) {
		case 0:
			b->bought[p]++;
			sched_yield(); /* check out, then come back for more */
			break;
		case STOCK_ESOLDOUT:
			sold_out[p] = 1;
			left--;
			break;
		default:
			return NULL;
		}
		/* Now and then, try the promotion (it may not be listed). */
		if ((b->seed & 0xff) == 0 && stock_table_take(b->table, "PROMO-1", 7, 1) == 0)
			b->promo++;
	}
	return NULL;
}

static int
print_line(const char *sku, size_t len, const struct stock_level *lvl, void *arg)
{
	(void)arg;
	printf("  %-6.*s remaining %5llu  sold %5llu\n", (int)len, sku,
	    (unsigned long long)lvl->remaining, (unsigned long long)lvl->sold);
	return 0;
}

int
main(void)
{
	stock_table_t *table;
	struct buyer buyers[BUYERS];
	unsigned long total = 0, promo = 0;

	if (stock_table_create(&table, STOCK_STRATEGY_ATOMIC, PRODUCTS) != 0)
		return 1;
	for (int p = 0; p < PRODUCTS; p++)
		if (stock_table_insert(table, catalogue[p], strlen(catalogue[p]), SHARES) != 0)
			return 1;
	pthread_barrier_init(&opening_bell, NULL, BUYERS + 1);
	for (int i = 0; i < BUYERS; i++) {
		buyers[i] = (struct buyer){ .table = table, .seed = (unsigned)i * 7919u + 1 };
		pthread_create(&buyers[i].tid, NULL, buy_until_sold_out, &buyers[i]);
	}
	/* Meanwhile the catalogue changes: a promotion comes and goes. */
	pthread_barrier_wait(&opening_bell);
	for (int round = 0; round < 200; round++) {
		stock_table_insert(table, "PROMO-1", 7, 10);
		sched_yield();
		stock_table_remove(table, "PROMO-1", 7);
	}
	for (int i = 0; i < BUYERS; i++) {
		pthread_join(buyers[i].tid, NULL);
		printf("buyer %d:", i);
		for (int p = 0; p < PRODUCTS; p++) {
			printf(" %s %5lu", catalogue[p], buyers[i].bought[p]);
			total += buyers[i].bought[p];
		}
		printf("\n");
		promo += buyers[i].promo;
	}
	printf("catalogue (%zu products):\n", stock_table_count(table));
	stock_table_foreach(table, print_line, NULL);
	printf("total sold: %lu of %d (promotional items: %lu)\n", total, PRODUCTS * SHARES, promo);
	stock_table_destroy(table);
	pthread_barrier_destroy(&opening_bell);
	return total == PRODUCTS * SHARES ? 0 : 1;
}
