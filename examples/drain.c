/*
 * Graceful shutdown: 6 worker threads serve orders against a shared
 * "database connection", entering its drain around each use. After 30 ms
 * the server shuts down: it closes the drain (logging the stragglers if that
 * takes more than 2 s), and only once nobody is inside does it tear the
 * connection down. Workers that try to enter afterwards get STOCK_ECLOSED
 * and stop. A gauge counts the threads using the connection. Exits 1 if the
 * close failed, anybody was using the connection when it was torn down, or
 * anybody used it after.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>

#include <stock.h>

#define WORKERS 6

static struct stock_drain db_drain = STOCK_DRAIN_INITIALIZER;
static struct stock_gauge using_db = STOCK_GAUGE_INITIALIZER(0);
static struct stock_gauge peak_users = STOCK_GAUGE_INITIALIZER(0);
static int db_open = 1;     /* ck_pr: the "connection" */
static int used_closed;     /* ck_pr: uses of a torn-down connection */
static unsigned long served[WORKERS];

static void *
worker(void *arg)
{
	int id = (int)(long)arg;

	while (stock_drain_enter(&db_drain) == 0) {
		stock_gauge_max(&peak_users, stock_gauge_add(&using_db, 1));
		if (!ck_pr_load_int(&db_open))
			ck_pr_inc_int(&used_closed);
		served[id]++;            /* "run the query" */
		if (served[id] % 128 == 0)
			sched_yield();
		stock_gauge_add(&using_db, (uint64_t)-1);
		stock_drain_leave(&db_drain);
	}
	return NULL; /* STOCK_ECLOSED: shutting down */
}

int
main(void)
{
	pthread_t t[WORKERS];
	struct timespec deadline, run = { 0, 30 * 1000 * 1000 };
	unsigned long total = 0;
	uint64_t inside_at_teardown;
	int rc;

	for (long i = 0; i < WORKERS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	nanosleep(&run, NULL);

	printf("shutting down: %llu request(s) in flight\n",
	    (unsigned long long)stock_drain_inside(&db_drain));
	stock_deadline_in(&deadline, 2000);
	rc = stock_drain_close(&db_drain, &deadline);
	if (rc == STOCK_ETIMEDOUT) {
		/* Still closed: log who is late and keep waiting. */
		printf("close: %llu request(s) still running after 2 s, waiting\n",
		    (unsigned long long)stock_drain_inside(&db_drain));
		rc = stock_drain_close(&db_drain, NULL);
	}
	inside_at_teardown = stock_gauge_get(&using_db);
	if (rc == 0)
		ck_pr_store_int(&db_open, 0); /* safe: nobody inside, nobody can enter */
	printf("close: %s, %llu using the connection at teardown\n", stock_strerror(rc),
	    (unsigned long long)inside_at_teardown);

	for (int i = 0; i < WORKERS; i++) {
		pthread_join(t[i], NULL);
		total += served[i];
	}
	printf("%lu requests served, peak %llu concurrent, %d after teardown, late enter: %s\n",
	    total, (unsigned long long)stock_gauge_get(&peak_users), used_closed,
	    stock_err_name(stock_drain_enter(&db_drain)));
	return rc == 0 && inside_at_teardown == 0 && used_closed == 0 && total > 0 &&
	    stock_drain_enter(&db_drain) == STOCK_ECLOSED ? 0 : 1;
}
