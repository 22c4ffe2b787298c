/*
 * Flash sale: 8 buyer threads race for 1000 tickets on each counter strategy.
 * Every buyer keeps buying one ticket at a time until it is told "sold out";
 * the tally at the end must add up to exactly 1000 — never one more.
 *
 * Each buy is a stock_counter_take_level(): the level it reports is the state
 * this very take produced, so its `sold` is the buyer's ticket number. Every
 * number from 1 to 1000 must be issued exactly once (a take followed by a
 * read could hand two buyers the same number: another take lands between).
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>

#include <stock.h>

#define BUYERS 8
#define TICKETS 1000

static pthread_barrier_t start_line; /* the sale opens for everyone at once */
static unsigned issued[TICKETS];     /* ck_pr: how often each number was issued */

struct buyer {
	struct stock_counter *counter;
	pthread_t tid;
	unsigned long bought;
};

static void *
buy_until_sold_out(void *arg)
{
	struct buyer *b = arg;
	struct stock_level after;
	int rc;

	pthread_barrier_wait(&start_line);
	while ((rc = stock_counter_take_level(b->counter, 1, &after)) == 0) {
		b->bought++;
		if (after.sold >= 1 && after.sold <= TICKETS)
			ck_pr_inc_uint(&issued[after.sold - 1]); /* ticket number after.sold */
		sched_yield(); /* check out, then come back for another */
	}
	if (rc != STOCK_ESOLDOUT)
		fprintf(stderr, "unexpected: %s\n", stock_strerror(rc));
	return NULL;
}

int
main(void)
{
	enum stock_strategy s;

	pthread_barrier_init(&start_line, NULL, BUYERS);
	for (s = STOCK_STRATEGY_ATOMIC; s <= STOCK_STRATEGY_SIGNAL; s++) {
		struct stock_counter tickets;
		struct buyer buyers[BUYERS];
		struct stock_level end;
		unsigned long total = 0;
		int numbers_ok = 1;

		if (stock_counter_init(&tickets, s, TICKETS) != 0)
			return 1;
		for (int i = 0; i < TICKETS; i++)
			issued[i] = 0;
		for (int i = 0; i < BUYERS; i++) {
			buyers[i] = (struct buyer){ .counter = &tickets };
			pthread_create(&buyers[i].tid, NULL, buy_until_sold_out, &buyers[i]);
		}
		printf("%-6s:", stock_strategy_name(s));
		for (int i = 0; i < BUYERS; i++) {
			pthread_join(buyers[i].tid, NULL);
			printf(" %4lu", buyers[i].bought);
			total += buyers[i].bought;
		}
		stock_counter_read(&tickets, &end);
		for (int i = 0; i < TICKETS; i++)
			numbers_ok &= issued[i] == 1;
		printf("  => sold %lu of %d, remaining %llu, ticket numbers 1..%d each issued once: %s\n",
		    total, TICKETS, (unsigned long long)end.remaining, TICKETS, numbers_ok ? "yes" : "NO");
		stock_counter_destroy(&tickets);
		if (total != TICKETS || end.sold != TICKETS || end.remaining != 0 || !numbers_ok)
			return 1;
	}
	return 0;
}
