/*
 * Telemetry: striped counters are exact under concurrent adds (and resets
 * lose nothing); ID generators hand out unique IDs, increasing per thread,
 * singly and in blocks; gauges add exactly, keep the true high-water mark
 * and publish with set().
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include <stock.h>

#define TEL_THREADS 8
#define TEL_ADDS 100000

/* Static: stock_stat is cache-line aligned (heap copies need aligned_alloc). */
static struct stock_stat tel_stat = STOCK_STAT_INITIALIZER;
static struct stock_stat tel_drained_stat = STOCK_STAT_INITIALIZER;

Test(telemetry, stat_basics)
{
	struct stock_stat s;

	cr_expect_eq(stock_stat_init(NULL), STOCK_EINVAL);
	cr_assert_eq(stock_stat_init(&s), 0);
	cr_expect_eq(stock_stat_sum(&s), 0);
	stock_stat_inc(&s);
	stock_stat_add(&s, 41);
	cr_expect_eq(stock_stat_sum(&s), 42);
	cr_expect_eq(stock_stat_reset(&s), 42);
	cr_expect_eq(stock_stat_sum(&s), 0);
	cr_expect_eq(stock_stat_sum(NULL), 0);
	cr_expect_eq(stock_stat_reset(NULL), 0);
	cr_expect_geq(stock_stat_thread_slot(), 1);
	cr_expect_leq(stock_stat_thread_slot(), STOCK_STAT_STRIPES);
	cr_expect_eq(sizeof(struct stock_stat_stripe), STOCK_CACHELINE);
	stock_stat_destroy(&s);
}

struct tel_adders {
	struct stock_stat *s;
	unsigned int done; /* ck_pr: threads finished */
};

static void *
tel_adder(void *arg)
{
	struct tel_adders *a = arg;

	for (int i = 0; i < TEL_ADDS; i++) {
		if (i % 2)
			stock_stat_inc(a->s);
		else
			stock_stat_add(a->s, 1);
	}
	ck_pr_inc_uint(&a->done);
	return NULL;
}

Test(telemetry, stat_sum_exact_across_threads)
{
	struct tel_adders a = { &tel_stat, 0 };
	pthread_t th[TEL_THREADS];
	uint64_t last = 0, now;

	cr_assert_eq(stock_stat_init(&tel_stat), 0);
	for (int i = 0; i < TEL_THREADS; i++)
		pthread_create(&th[i], NULL, tel_adder, &a);
	/* Reads while adding: monotonic for an add-only counter. */
	while (ck_pr_load_uint(&a.done) < TEL_THREADS) {
		now = stock_stat_sum(&tel_stat);
		cr_assert_geq(now, last, "sum went backwards");
		cr_assert_leq(now, (uint64_t)TEL_THREADS * TEL_ADDS);
		last = now;
	}
	for (int i = 0; i < TEL_THREADS; i++)
		pthread_join(th[i], NULL);
	cr_expect_eq(stock_stat_sum(&tel_stat), (uint64_t)TEL_THREADS * TEL_ADDS);
}

Test(telemetry, stat_reset_loses_nothing)
{
	struct tel_adders a = { &tel_drained_stat, 0 };
	pthread_t th[TEL_THREADS];
	uint64_t drained = 0;

	cr_assert_eq(stock_stat_init(&tel_drained_stat), 0);
	for (int i = 0; i < TEL_THREADS; i++)
		pthread_create(&th[i], NULL, tel_adder, &a);
	while (ck_pr_load_uint(&a.done) < TEL_THREADS)
		drained += stock_stat_reset(&tel_drained_stat);
	for (int i = 0; i < TEL_THREADS; i++)
		pthread_join(th[i], NULL);
	drained += stock_stat_reset(&tel_drained_stat);
	cr_expect_eq(drained, (uint64_t)TEL_THREADS * TEL_ADDS);
	cr_expect_eq(stock_stat_sum(&tel_drained_stat), 0);
}

/* ---- IDs ------------------------------------------------------------------- */

#define TEL_IDS 20000

struct tel_idrun {
	struct stock_idgen *g;
	uint64_t *out; /* TEL_IDS entries */
	bool blocks;   /* take IDs in blocks of 7 (plus singles) */
	bool ok;       /* strictly increasing within the thread */
};

static void *
tel_taker(void *arg)
{
	struct tel_idrun *r = arg;
	uint64_t first;
	int n = 0;

	r->ok = true;
	while (n < TEL_IDS) {
		if (r->blocks && n + 7 <= TEL_IDS && n % 3 == 0) {
			if (stock_idgen_next_block(r->g, 7, &first) != 0) {
				r->ok = false;
				return NULL;
			}
			for (int j = 0; j < 7; j++)
				r->out[n++] = first + (uint64_t)j;
		} else {
			r->out[n++] = stock_idgen_next(r->g);
		}
		if (n > 1 && r->out[n - 1] <= r->out[n - 2])
			r->ok = false;
	}
	return NULL;
}

static int
tel_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void
tel_check_ids(bool blocks)
{
	static struct stock_idgen g;
	struct tel_idrun run[TEL_THREADS];
	pthread_t th[TEL_THREADS];
	uint64_t *all = malloc(sizeof(uint64_t) * TEL_THREADS * TEL_IDS);
	const uint64_t start = 1000;

	cr_assert_not_null(all);
	cr_assert_eq(stock_idgen_init(&g, start), 0);
	for (int i = 0; i < TEL_THREADS; i++) {
		run[i] = (struct tel_idrun){ &g, all + (size_t)i * TEL_IDS, blocks, false };
		pthread_create(&th[i], NULL, tel_taker, &run[i]);
	}
	for (int i = 0; i < TEL_THREADS; i++) {
		pthread_join(th[i], NULL);
		cr_expect(run[i].ok, "thread %d: IDs not strictly increasing", i);
	}
	/* No duplicates, and no gaps: exactly [start, start + total). */
	qsort(all, (size_t)TEL_THREADS * TEL_IDS, sizeof(uint64_t), tel_cmp);
	for (size_t i = 0; i < (size_t)TEL_THREADS * TEL_IDS; i++)
		if (all[i] != start + i) {
			cr_expect_fail("ID %zu is %llu, want %llu", i, (unsigned long long)all[i],
			    (unsigned long long)(start + i));
			break;
		}
	cr_expect_eq(stock_idgen_peek(&g), start + (uint64_t)TEL_THREADS * TEL_IDS);
	stock_idgen_destroy(&g);
	free(all);
}

Test(telemetry, ids_unique_and_increasing)
{
	tel_check_ids(false);
}

Test(telemetry, id_blocks_unique_and_increasing)
{
	tel_check_ids(true);
}

Test(telemetry, idgen_bad_arguments_and_range)
{
	struct stock_idgen g = STOCK_IDGEN_INITIALIZER(5);
	uint64_t first = 0;

	cr_expect_eq(stock_idgen_next(&g), 5);
	cr_expect_eq(stock_idgen_next(&g), 6);
	cr_expect_eq(stock_idgen_next_block(&g, 10, &first), 0);
	cr_expect_eq(first, 7);
	cr_expect_eq(stock_idgen_next(&g), 17);
	cr_expect_eq(stock_idgen_init(NULL, 0), STOCK_EINVAL);
	cr_expect_eq(stock_idgen_init(&g, STOCK_COUNT_MAX + 1), STOCK_ERANGE);
	cr_expect_eq(stock_idgen_next_block(NULL, 1, &first), STOCK_EINVAL);
	cr_expect_eq(stock_idgen_next_block(&g, 0, &first), STOCK_EINVAL);
	cr_expect_eq(stock_idgen_next_block(&g, 1, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_idgen_next_block(&g, STOCK_COUNT_MAX + 1, &first), STOCK_ERANGE);
	/* Near the end of the space a block that would wrap is refused. */
	cr_assert_eq(stock_idgen_init(&g, STOCK_COUNT_MAX), 0);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(stock_idgen_next_block(&g, STOCK_COUNT_MAX, &first), 0);
	cr_expect_eq(stock_idgen_peek(&g), 4 * STOCK_COUNT_MAX);
	cr_expect_eq(stock_idgen_next_block(&g, 4, &first), STOCK_ERANGE);
	cr_expect_eq(stock_idgen_peek(&g), 4 * STOCK_COUNT_MAX, "nothing reserved");
	cr_expect_eq(stock_idgen_next_block(&g, 3, &first), 0);
	cr_expect_eq(first, 4 * STOCK_COUNT_MAX);
	cr_expect_eq(stock_idgen_peek(&g), UINT64_MAX);
}

/* ---- gauges ----------------------------------------------------------------- */

Test(telemetry, gauge_basics)
{
	struct stock_gauge g, s = STOCK_GAUGE_INITIALIZER(7);

	cr_expect_eq(stock_gauge_get(&s), 7);
	stock_gauge_init(&g, 3);
	cr_expect_eq(stock_gauge_get(&g), 3);
	stock_gauge_set(&g, 10);
	cr_expect_eq(stock_gauge_get(&g), 10);
	cr_expect_eq(stock_gauge_add(&g, 5), 15);
	cr_expect_eq(stock_gauge_add(&g, (uint64_t)-15), 0, "adding -n subtracts");
	cr_expect_eq(stock_gauge_add(&g, (uint64_t)-1), UINT64_MAX, "wraps");
	cr_expect_eq(stock_gauge_add(&g, 1), 0);
	cr_expect_eq(stock_gauge_max(&g, 4), 4);
	cr_expect_eq(stock_gauge_max(&g, 2), 4, "a lower value leaves the mark");
	cr_expect_eq(stock_gauge_get(&g), 4);
	cr_expect_eq(stock_gauge_max(&g, 4), 4);
	cr_expect_eq(stock_gauge_max(&g, UINT64_MAX), UINT64_MAX);
	cr_expect_eq(stock_gauge_get(&g), UINT64_MAX);
}

#define GAUGE_OPS 50000

struct tel_gauges {
	struct stock_gauge sum;  /* every thread adds 1, GAUGE_OPS times */
	struct stock_gauge high; /* every thread raises it to values it draws */
	struct stock_gauge depth; /* +1 / -1 pairs: back to 0 */
	uint64_t best[TEL_THREADS];
	int bad;                 /* ck_pr: max returned less than its argument */
};

struct tel_gauge_arg {
	struct tel_gauges *g;
	int id;
};

static void *
tel_gauge_worker(void *arg)
{
	struct tel_gauge_arg *a = arg;
	struct tel_gauges *g = a->g;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(a->id + 1), best = 0;

	for (int i = 0; i < GAUGE_OPS; i++) {
		uint64_t v, r;

		stock_gauge_add(&g->sum, 1);
		stock_gauge_add(&g->depth, 1);
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		v = x >> 4;
		if (v > best)
			best = v;
		r = stock_gauge_max(&g->high, v);
		if (r < v)
			ck_pr_inc_int(&g->bad);
		stock_gauge_add(&g->depth, (uint64_t)-1);
	}
	g->best[a->id] = best;
	return NULL;
}

Test(telemetry, gauge_add_and_max_across_threads, .timeout = 60)
{
	static struct tel_gauges g;
	struct tel_gauge_arg args[TEL_THREADS];
	pthread_t th[TEL_THREADS];
	uint64_t best = 0;

	stock_gauge_init(&g.sum, 0);
	stock_gauge_init(&g.high, 0);
	stock_gauge_init(&g.depth, 0);
	for (int i = 0; i < TEL_THREADS; i++) {
		args[i] = (struct tel_gauge_arg){ &g, i };
		pthread_create(&th[i], NULL, tel_gauge_worker, &args[i]);
	}
	for (int i = 0; i < TEL_THREADS; i++) {
		pthread_join(th[i], NULL);
		if (g.best[i] > best)
			best = g.best[i];
	}
	cr_expect_eq(stock_gauge_get(&g.sum), (uint64_t)TEL_THREADS * GAUGE_OPS);
	cr_expect_eq(stock_gauge_get(&g.depth), 0);
	cr_expect_eq(stock_gauge_get(&g.high), best, "the high-water mark lost a raise");
	cr_expect_eq(g.bad, 0);
}

/* set() is a release and get() an acquire: a reader that sees the new value
 * sees what the writer wrote before it (TSan checks the edge). */
struct tel_gauge_msg {
	struct stock_gauge ready;
	uint64_t payload[8]; /* plain */
};

static void *
tel_gauge_reader(void *arg)
{
	struct tel_gauge_msg *m = arg;
	uint64_t sum = 0;

	while (stock_gauge_get(&m->ready) == 0)
		sched_yield();
	for (int i = 0; i < 8; i++)
		sum += m->payload[i];
	return (void *)(uintptr_t)sum;
}

Test(telemetry, gauge_set_publishes, .timeout = 60)
{
	for (int round = 0; round < 100; round++) {
		struct tel_gauge_msg m = { STOCK_GAUGE_INITIALIZER(0), { 0 } };
		pthread_t th[2];
		void *res;

		for (int i = 0; i < 2; i++)
			pthread_create(&th[i], NULL, tel_gauge_reader, &m);
		for (int i = 0; i < 8; i++)
			m.payload[i] = (uint64_t)(round + i);
		stock_gauge_set(&m.ready, 1);
		for (int i = 0; i < 2; i++) {
			pthread_join(th[i], &res);
			cr_expect_eq((uint64_t)(uintptr_t)res, (uint64_t)(8 * round + 28));
		}
	}
}
