/*
 * A flaky payment service guarded by a circuit breaker.
 *
 * The "payment service" is down from 20 ms to 70 ms after start. A checkout
 * loop pays every 2 ms through the breaker: three failures in a row trip it,
 * calls are then rejected without touching the service, a probe is let
 * through after 20 ms (doubling after each failed probe), and two good probes
 * close it again. Every transition is printed by the on_change callback.
 *
 * Then the breaker is used as a gate: the stock manager isolates it while it
 * updates stock, a buyer waits (up to 500 ms) for it to reopen, and the
 * manager closes it 30 ms later.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include <stock.h>

static uint64_t t0;

static double
ms_since_start(void)
{
	return (double)(stock_now_ns() - t0) / 1e6;
}

static void
print_change(void *arg, enum stock_breaker_state from, enum stock_breaker_state to)
{
	unsigned *changes = arg;

	ck_pr_inc_uint(changes);
	printf("  %6.1f ms  breaker %s -> %s\n", ms_since_start(), stock_breaker_state_name(from),
	    stock_breaker_state_name(to));
}

/* The remote payment service: down between 20 and 70 ms. */
static bool
charge_card(void)
{
	double t = ms_since_start();

	return t < 20.0 || t >= 70.0;
}

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void *
buyer(void *arg)
{
	struct stock_breaker *gate = arg;
	struct stock_breaker_token tok;
	struct timespec deadline;
	uint64_t start = stock_now_ns();
	int rc;

	stock_deadline_in(&deadline, 500);
	rc = stock_breaker_allow_wait(gate, &tok, &deadline);
	printf("  buyer waited %.1f ms: %s\n", (double)(stock_now_ns() - start) / 1e6,
	    rc == 0 ? "admitted" : stock_strerror(rc));
	if (rc == 0)
		stock_breaker_success(gate, tok);
	return (void *)(long)rc;
}

int
main(void)
{
	struct stock_breaker_config cfg;
	struct stock_breaker payments;
	struct stock_breaker_stats st;
	struct stock_breaker_token tok;
	unsigned changes = 0, paid = 0, declined = 0, rejected = 0;
	pthread_t t;
	void *buyer_rc;

	stock_breaker_config_default(&cfg);
	cfg.failure_threshold = 3;
	cfg.open_ns = 20 * 1000000ULL;     /* 20 ms ... */
	cfg.backoff_mult = 2;              /* ... doubling per failed probe ... */
	cfg.max_open_ns = 80 * 1000000ULL; /* ... up to 80 ms */
	cfg.half_open_probes = 2;
	cfg.on_change = print_change;
	cfg.on_change_arg = &changes;
	if (stock_breaker_init(&payments, &cfg) != 0)
		return 1;

	printf("checkout loop (service down from 20 to 70 ms):\n");
	t0 = stock_now_ns();
	while (ms_since_start() < 250.0 ||
	    (stock_breaker_state(&payments) != STOCK_BREAKER_CLOSED && ms_since_start() < 900.0)) {
		if (stock_breaker_allow(&payments, &tok) != 0) {
			rejected++; /* fail fast: the service is not even called */
		} else if (charge_card()) {
			paid++;
			stock_breaker_success(&payments, tok);
		} else {
			declined++;
			stock_breaker_failure(&payments, tok);
		}
		sleep_ms(2);
	}
	stock_breaker_stats(&payments, &st);
	printf("paid %u, failed %u, rejected without calling %u; %llu trips, state %s\n", paid,
	    declined, rejected, (unsigned long long)st.opens, stock_breaker_state_name(st.state));

	printf("stock update (breaker used as a gate):\n");
	t0 = stock_now_ns();
	stock_breaker_isolate(&payments); /* /Util/Close */
	pthread_create(&t, NULL, buyer, &payments);
	sleep_ms(30);
	stock_breaker_close(&payments);   /* /Util/Open */
	pthread_join(t, &buyer_rc);

	stock_breaker_stats(&payments, &st);
	stock_breaker_destroy(&payments);
	return st.state == STOCK_BREAKER_CLOSED && st.opens >= 2 && declined >= 3 &&
	    rejected > 0 && buyer_rc == NULL && changes == st.transitions ? 0 : 1;
}
