/*
 * Request counting and order numbers: 8 server threads each serve 100000
 * requests, counting them on a striped counter (no shared cache line on the
 * hot path), and place 3 orders each with IDs from one generator. The total
 * must be exact and no order number may repeat.
 */
#include <pthread.h>
#include <stdio.h>

#include <stock.h>

#define SERVERS 8
#define REQUESTS 100000
#define ORDERS 3

static struct stock_stat requests = STOCK_STAT_INITIALIZER;
static struct stock_idgen order_ids = STOCK_IDGEN_INITIALIZER(100000);
static uint64_t placed[SERVERS][ORDERS];

static void *
server(void *arg)
{
	long id = (long)arg;

	for (int i = 0; i < REQUESTS; i++)
		stock_stat_inc(&requests);
	for (int i = 0; i < ORDERS; i++)
		placed[id][i] = stock_idgen_next(&order_ids);
	return NULL;
}

int
main(void)
{
	pthread_t t[SERVERS];
	uint64_t total, first;
	int dup = 0;

	for (long i = 0; i < SERVERS; i++)
		pthread_create(&t[i], NULL, server, (void *)i);
	for (int i = 0; i < SERVERS; i++)
		pthread_join(t[i], NULL);

	total = stock_stat_sum(&requests);
	printf("%llu requests served (expected %d)\n", (unsigned long long)total,
	    SERVERS * REQUESTS);
	for (int i = 0; i < SERVERS; i++) {
		printf("server %d placed orders", i);
		for (int j = 0; j < ORDERS; j++)
			printf(" #%llu", (unsigned long long)placed[i][j]);
		printf("\n");
	}
	/* Order numbers are unique: compare every pair (24 of them). */
	for (int a = 0; a < SERVERS * ORDERS; a++)
		for (int b = a + 1; b < SERVERS * ORDERS; b++)
			dup += placed[a / ORDERS][a % ORDERS] == placed[b / ORDERS][b % ORDERS];
	/* A batch job reserves a block of 50 numbers at once. */
	if (stock_idgen_next_block(&order_ids, 50, &first) != 0)
		return 1;
	printf("batch import got orders #%llu..#%llu; per-interval reset drained %llu\n",
	    (unsigned long long)first, (unsigned long long)(first + 49),
	    (unsigned long long)stock_stat_reset(&requests));
	return total == (uint64_t)SERVERS * REQUESTS && dup == 0 &&
	    first == 100000 + SERVERS * ORDERS ? 0 : 1;
}
