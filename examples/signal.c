/*
 * Auto-reset event as a hand-off: a restocker thread signals a waiting
 * packer each time a pallet arrives; exactly one packer wakes per pallet.
 * A packer that waits longer than 200 ms without a pallet clocks off.
 */
#include <pthread.h>
#include <stdio.h>
#include <sched.h>
#include <time.h>

#include <stock.h>

#define PACKERS 3
#define PALLETS 9

static struct stock_signal pallet_arrived = STOCK_SIGNAL_INITIALIZER(false);
static int packed[PACKERS];

static void *
packer(void *arg)
{
	int id = (int)(long)arg;
	struct timespec deadline;

	for (;;) {
		stock_deadline_in(&deadline, 200);
		if (stock_signal_wait(&pallet_arrived, &deadline) == STOCK_ETIMEDOUT)
			break; /* no pallet for 200 ms: clock off */
		packed[id]++;
	}
	return NULL;
}

int
main(void)
{
	pthread_t t[PACKERS];
	int total = 0;

	for (long i = 0; i < PACKERS; i++)
		pthread_create(&t[i], NULL, packer, (void *)i);
	for (int p = 0; p < PALLETS; p++) {
		struct timespec gap = { 0, 5 * 1000 * 1000 };

		while (stock_signal_waiters(&pallet_arrived) == 0)
			sched_yield(); /* let a packer get to the dock */
		stock_signal_set(&pallet_arrived);
		nanosleep(&gap, NULL);
	}
	for (int i = 0; i < PACKERS; i++) {
		pthread_join(t[i], NULL);
		printf("packer %d packed %d pallets\n", i, packed[i]);
		total += packed[i];
	}
	printf("%d pallets arrived, %d packed\n", PALLETS, total);
	return total == PALLETS ? 0 : 1;
}
