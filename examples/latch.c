/*
 * Flags threads wait on: 6 buyer threads queue at the doors of a flash sale
 * and sleep on a "doors open" latch; the operator loads the price, opens the
 * doors, and every buyer is released at once to race for 500 tickets. A
 * reporter thread prints the stock every 20 ms until a "stop" latch is set.
 * Then the doors close again (clear) and a latecomer who waits 50 ms at
 * most is turned away. Exits 1 if a ticket is oversold or lost, a buyer saw
 * no price, the latecomer got in, or the reporter did not stop.
 */
#include <pthread.h>
#include <stdio.h>

#include <stock.h>

#define BUYERS 6
#define TICKETS 500

static struct stock_latch doors_open = STOCK_LATCH_INITIALIZER(false);
static struct stock_latch stop = STOCK_LATCH_INITIALIZER(false);
static struct stock_atomic tickets = STOCK_ATOMIC_INITIALIZER(TICKETS);
static unsigned price_cents; /* written before the doors open */
static int bought[BUYERS], saw_price[BUYERS];

static void *
buyer(void *arg)
{
	int id = (int)(long)arg;

	if (stock_latch_wait(&doors_open, NULL) != 0)
		return NULL;
	saw_price[id] = price_cents == 4999;
	while (stock_atomic_take(&tickets, 1) == 0)
		bought[id]++;
	return NULL;
}

static void *
reporter(void *arg)
{
	struct stock_level lvl;
	struct timespec deadline;
	int *reports = arg;

	for (;;) {
		stock_deadline_in(&deadline, 20);
		if (stock_latch_wait(&stop, &deadline) == 0)
			return NULL; /* stop is set: finish at once */
		stock_atomic_read(&tickets, &lvl);
		printf("report: %llu left, %llu sold\n", (unsigned long long)lvl.remaining,
		    (unsigned long long)lvl.sold);
		(*reports)++;
	}
}

int
main(void)
{
	pthread_t t[BUYERS], rep;
	struct timespec deadline;
	int total = 0, priced = 0, reports = 0, late;

	pthread_create(&rep, NULL, reporter, &reports);
	for (long i = 0; i < BUYERS; i++)
		pthread_create(&t[i], NULL, buyer, (void *)i);

	price_cents = 4999;              /* visible to every buyer the latch releases */
	stock_latch_set(&doors_open);
	for (int i = 0; i < BUYERS; i++) {
		pthread_join(t[i], NULL);
		printf("buyer %d bought %d tickets\n", i, bought[i]);
		total += bought[i];
		priced += saw_price[i];
	}

	stock_latch_clear(&doors_open);  /* sold out: doors close */
	stock_deadline_in(&deadline, 50);
	late = stock_latch_wait(&doors_open, &deadline);
	printf("latecomer: %s\n", late == STOCK_ETIMEDOUT ? "doors closed, turned away" : "got in");

	stock_latch_set(&stop);
	pthread_join(rep, NULL);
	printf("%d tickets, %d sold, %d buyers saw the price, reporter stopped after %d reports\n",
	    TICKETS, total, priced, reports);
	return total == TICKETS && priced == BUYERS && late == STOCK_ETIMEDOUT &&
	    stock_latch_is_set(&stop) ? 0 : 1;
}
