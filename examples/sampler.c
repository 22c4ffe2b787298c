/*
 * Log sampling: the warehouse goes down for 5 seconds and every one of
 * 10000 failed calls wants to log a line. One sampler per call site admits
 * 3 lines per second; each admitted line says how many similar lines were
 * dropped since the previous one, so nothing vanishes silently. The clock
 * is simulated (the sampler takes the time as an argument), so the run is
 * instant and exact. Exits 1 unless exactly 3 lines per second were logged
 * and logged + reported-dropped + still-pending == 10000.
 */
#include <stdio.h>

#include <stock.h>

#define FAILURES 10000
#define SECOND 1000000000ULL

static struct stock_sampler warehouse_errors = STOCK_SAMPLER_INITIALIZER(3, SECOND);

int
main(void)
{
	uint64_t start = 1000 * SECOND, logged = 0, reported = 0, dropped;

	for (uint64_t i = 0; i < FAILURES; i++) {
		/* 2000 failures per simulated second, 5 seconds. */
		uint64_t now = start + i * (5 * SECOND / FAILURES);

		if (!stock_sampler_admit(&warehouse_errors, now, &dropped))
			continue;
		logged++;
		reported += dropped;
		if (dropped != 0)
			printf("t=%.3fs warehouse: connection refused (%llu similar lines dropped)\n",
			    (double)(now - start) / 1e9, (unsigned long long)dropped);
		else
			printf("t=%.3fs warehouse: connection refused\n", (double)(now - start) / 1e9);
	}
	printf("%d failures: %llu logged, %llu reported dropped, %llu pending\n", FAILURES,
	    (unsigned long long)logged, (unsigned long long)reported,
	    (unsigned long long)stock_sampler_dropped(&warehouse_errors));
	return logged == 15 && logged + reported + stock_sampler_dropped(&warehouse_errors) == FAILURES
	    ? 0 : 1;
}
