/*
 * The shared counter torture harness (see torture.h).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>

#include "torture.h"

#define TORTURE_MAX_THREADS 32

struct torture_shared {
	const struct torture_ops *ops;
	void *obj;
	uint64_t initial;
	int with_sets;
	int stop;             /* ck_pr: readers end; no more sets */
	uint64_t violations;  /* ck_pr: invariant failures seen by readers */
};

struct torture_worker {
	struct torture_shared *sh;
	pthread_t tid;
	unsigned seed;
	uint64_t taken_ok;    /* units this thread took successfully */
	uint64_t put_ok;      /* units this thread refunded successfully */
	uint64_t put_refused; /* refunds of held units that were refused (bug) */
	uint64_t bad_rc;      /* unexpected return codes */
	uint64_t reads;
	uint64_t violations;
};

static unsigned
torture_rand(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return (*s >> 16) & 0x7fff;
}

static void
torture_check_read(struct torture_worker *w, uint64_t *last_version)
{
	struct torture_shared *sh = w->sh;
	struct stock_level lvl;

	if (sh->ops->read(sh->obj, &lvl) != 0) {
		w->bad_rc++;
		return;
	}
	w->reads++;
	if (lvl.version < *last_version)
		w->violations++;
	*last_version = lvl.version;
	if (!sh->with_sets && lvl.remaining + lvl.sold != sh->initial)
		w->violations++;
	if (lvl.remaining > STOCK_COUNT_MAX || lvl.sold > STOCK_COUNT_MAX)
		w->violations++;
}

static void *
torture_buyer(void *arg)
{
	struct torture_worker *w = arg;
	struct torture_shared *sh = w->sh;
	uint64_t held = 0, last_version = 0;
	unsigned sold_out_streak = 0;
	int draining = 0; /* saw it sold out while stopping: no more refunds */

	for (;;) {
		unsigned r = torture_rand(&w->seed) % 100;
		int stopping = !sh->with_sets || ck_pr_load_int(&sh->stop);
		int rc;

		if (r < 70) {
			uint64_t n = 1 + torture_rand(&w->seed) % 4;

			rc = sh->ops->take(sh->obj, n);
			if (rc == STOCK_ESOLDOUT) {
				n = 1;
				rc = sh->ops->take(sh->obj, n);
			}
			if (rc == 0) {
				w->taken_ok += n;
				held += n;
				sold_out_streak = 0;
			} else if (rc == STOCK_ESOLDOUT) {
				/* Done once it stays sold out and nothing restocks. */
				draining |= stopping;
				if (++sold_out_streak > 64 && stopping)
					break;
			} else {
				w->bad_rc++;
			}
		} else if (r < 78) {
			/* Refunds are rarer and smaller than takes, so it sells out. */
			if (held > 0 && !draining) {
				uint64_t n = 1 + torture_rand(&w->seed) % (held < 3 ? held : 3);

				rc = sh->ops->put(sh->obj, n);
				if (rc == 0) {
					w->put_ok += n;
					held -= n;
				} else {
					w->put_refused++;
				}
			}
		} else if (r < 80 && !stopping) {
			if (sh->ops->set(sh->obj, torture_rand(&w->seed) % 64) != 0)
				w->bad_rc++;
		} else {
			torture_check_read(w, &last_version);
		}
	}
	return NULL;
}

static void *
torture_reader(void *arg)
{
	struct torture_worker *w = arg;
	uint64_t last_version = 0;

	while (!ck_pr_load_int(&w->sh->stop))
		torture_check_read(w, &last_version);
	return NULL;
}

static void
torture_phase(const struct torture_ops *ops, int threads, uint64_t initial, int with_sets)
{
	struct torture_shared sh = { .ops = ops, .initial = initial, .with_sets = with_sets };
	struct torture_worker workers[TORTURE_MAX_THREADS + 1];
	struct stock_level end;
	uint64_t taken = 0, put = 0;
	int i;

	cr_assert(threads > 0 && threads <= TORTURE_MAX_THREADS);
	sh.obj = ops->create(initial);
	cr_assert_not_null(sh.obj, "%s: create failed", ops->name);

	for (i = 0; i <= threads; i++) {
		workers[i] = (struct torture_worker){ .sh = &sh, .seed = 0x9e3779b9u * (unsigned)(i + 1) };
		cr_assert_eq(pthread_create(&workers[i].tid, NULL,
		    i == threads ? torture_reader : torture_buyer, &workers[i]), 0);
	}
	if (with_sets) {
		/* Let buyers and sets interleave, then stop setting and drain. */
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		ck_pr_store_int(&sh.stop, 1);
	}
	for (i = 0; i < threads; i++)
		pthread_join(workers[i].tid, NULL);
	ck_pr_store_int(&sh.stop, 1);
	pthread_join(workers[threads].tid, NULL);

	for (i = 0; i <= threads; i++) {
		taken += workers[i].taken_ok;
		put += workers[i].put_ok;
		cr_expect_eq(workers[i].bad_rc, 0, "%s: thread %d got unexpected codes", ops->name, i);
		cr_expect_eq(workers[i].put_refused, 0, "%s: refund of held units refused", ops->name);
		cr_expect_eq(workers[i].violations, 0, "%s: %llu inconsistent reads in thread %d",
		    ops->name, (unsigned long long)workers[i].violations, i);
	}
	cr_assert_eq(ops->read(sh.obj, &end), 0);
	/* Sets never change sold: sold is exactly what buyers kept. */
	cr_expect_eq(end.sold, taken - put, "%s: sold %llu != taken %llu - refunded %llu",
	    ops->name, (unsigned long long)end.sold, (unsigned long long)taken,
	    (unsigned long long)put);
	cr_expect_eq(end.remaining, 0, "%s: ended with %llu remaining", ops->name,
	    (unsigned long long)end.remaining);
	if (!with_sets) {
		/* Everything sold, and never more than existed. */
		cr_expect_eq(taken - put, initial, "%s: oversold or undersold: %llu of %llu",
		    ops->name, (unsigned long long)(taken - put), (unsigned long long)initial);
	}
	ops->destroy(sh.obj);
}

void
torture_run(const struct torture_ops *ops, int threads, uint64_t initial)
{
	torture_phase(ops, threads, initial, 0);
	torture_phase(ops, threads, initial, 1);
}

/* ---- ops for stock_counter ---------------------------------------------- */

#define TORTURE_COUNTER_OPS(tag, strategy)                                         \
	static void *torture_create_##tag(uint64_t remaining)                    \
	{                                                                        \
		struct stock_counter *c = aligned_alloc(STOCK_CACHELINE,         \
		    (sizeof(*c) + STOCK_CACHELINE - 1) / STOCK_CACHELINE * STOCK_CACHELINE); \
		if (c == NULL || stock_counter_init(c, strategy, remaining) != 0) { \
			free(c);                                                 \
			return NULL;                                             \
		}                                                                \
		return c;                                                        \
	}                                                                        \
	static const struct torture_ops torture_ops_##tag = {                   \
		#tag, torture_create_##tag, torture_counter_destroy,             \
		torture_counter_take, torture_counter_put, torture_counter_set,  \
		torture_counter_read                                             \
	};

static void torture_counter_destroy(void *o) { stock_counter_destroy(o); free(o); }
static int torture_counter_take(void *o, uint64_t n) { return stock_counter_take(o, n); }
static int torture_counter_put(void *o, uint64_t n) { return stock_counter_put(o, n); }
static int torture_counter_set(void *o, uint64_t r) { return stock_counter_set(o, r); }
static int torture_counter_read(void *o, struct stock_level *l) { return stock_counter_read(o, l); }

TORTURE_COUNTER_OPS(atomic, STOCK_STRATEGY_ATOMIC)
TORTURE_COUNTER_OPS(locked, STOCK_STRATEGY_LOCKED)
TORTURE_COUNTER_OPS(signal, STOCK_STRATEGY_SIGNAL)

const struct torture_ops *
torture_counter_ops(enum stock_strategy s)
{
	switch (s) {
	case STOCK_STRATEGY_ATOMIC:
		return &torture_ops_atomic;
	case STOCK_STRATEGY_LOCKED:
		return &torture_ops_locked;
	case STOCK_STRATEGY_SIGNAL:
		return &torture_ops_signal;
	}
	return NULL;
}

/* ---- ops for a SKU in a stock_table: the same harness through lookups ---- */

struct torture_table {
	stock_table_t *table;
};

#define TORTURE_SKU "NVDA"
#define TORTURE_SKU_LEN 4

static void *
torture_table_create(uint64_t remaining)
{
	struct torture_table *t = calloc(1, sizeof *t);

	if (t == NULL || stock_table_create(&t->table, STOCK_STRATEGY_ATOMIC, 4) != 0)
		goto fail;
	/* Neighbours in the same table, so lookups really hash and probe. */
	if (stock_table_insert(t->table, "TSLA", 4, 1) != 0 ||
	    stock_table_insert(t->table, TORTURE_SKU, TORTURE_SKU_LEN, remaining) != 0 ||
	    stock_table_insert(t->table, "AMD", 3, 1) != 0)
		goto fail;
	return t;
fail:
	if (t != NULL && t->table != NULL)
		stock_table_destroy(t->table);
	free(t);
	return NULL;
}

static void
torture_table_destroy(void *o)
{
	struct torture_table *t = o;

	stock_table_destroy(t->table);
	free(t);
}

static int torture_table_take(void *o, uint64_t n) { return stock_table_take(((struct torture_table *)o)->table, TORTURE_SKU, TORTURE_SKU_LEN, n); }
static int torture_table_put(void *o, uint64_t n) { return stock_table_put(((struct torture_table *)o)->table, TORTURE_SKU, TORTURE_SKU_LEN, n); }
static int torture_table_set(void *o, uint64_t r) { return stock_table_set(((struct torture_table *)o)->table, TORTURE_SKU, TORTURE_SKU_LEN, r); }
static int torture_table_read(void *o, struct stock_level *l) { return stock_table_read(((struct torture_table *)o)->table, TORTURE_SKU, TORTURE_SKU_LEN, l); }

static const struct torture_ops torture_ops_table = {
	"table", torture_table_create, torture_table_destroy, torture_table_take,
	torture_table_put, torture_table_set, torture_table_read
};

const struct torture_ops *
torture_table_ops(void)
{
	return &torture_ops_table;
}
