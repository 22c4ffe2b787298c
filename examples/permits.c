/*
 * Bulkhead: 10 order threads share a warehouse API that must never see more
 * than 3 concurrent calls. Each order takes a permit (waiting up to 1 s),
 * makes a 2 ms "warehouse call", and gives the permit back. The threads
 * count concurrent callers themselves; the peak must be 3 at most. Halfway
 * through, the operator shrinks the bulkhead to 2, then restores 3.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include <stock.h>

#define ORDER_THREADS 10
#define CALLS_EACH 4

static struct stock_permits warehouse;
static unsigned in_call, peak, done; /* ck_pr */

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void *
order_thread(void *arg)
{
	struct timespec deadline;
	unsigned now, seen;

	(void)arg;
	for (int i = 0; i < CALLS_EACH; i++) {
		stock_deadline_in(&deadline, 1000);
		if (stock_permits_acquire(&warehouse, 1, &deadline) != 0)
			continue; /* the warehouse is too busy: give up on this call */
		now = ck_pr_faa_uint(&in_call, 1) + 1;
		for (seen = ck_pr_load_uint(&peak); now > seen;)
			if (ck_pr_cas_uint_value(&peak, seen, now, &seen))
				break;
		sleep_ms(2); /* the warehouse call */
		ck_pr_dec_uint(&in_call);
		ck_pr_inc_uint(&done);
		stock_permits_release(&warehouse, 1);
	}
	return NULL;
}

int
main(void)
{
	struct stock_permits_stats st;
	pthread_t t[ORDER_THREADS];

	if (stock_permits_init(&warehouse, 3) != 0)
		return 1;
	for (int i = 0; i < ORDER_THREADS; i++)
		pthread_create(&t[i], NULL, order_thread, NULL);
	sleep_ms(5);
	stock_permits_resize(&warehouse, 2); /* operator: ease off the warehouse */
	sleep_ms(5);
	stock_permits_resize(&warehouse, 3);
	for (int i = 0; i < ORDER_THREADS; i++)
		pthread_join(t[i], NULL);

	stock_permits_stats(&warehouse, &st);
	printf("%u warehouse calls by %d threads, at most %u at once (limit %llu)\n", done,
	    ORDER_THREADS, peak, (unsigned long long)st.limit);
	printf("permits: acquired %llu, timed out %llu, peak in use %llu, in use now %llu\n",
	    (unsigned long long)st.acquired, (unsigned long long)st.timed_out,
	    (unsigned long long)st.peak, (unsigned long long)st.in_use);
	stock_permits_destroy(&warehouse);
	return peak <= 3 && st.peak <= 3 && st.in_use == 0 && done == st.acquired ? 0 : 1;
}
