/*
 * The shared counter torture harness (see torture.h).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
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
	if (!sh->with_sets && lvl.remaining + lvl.held + lvl.sold != sh->initial)
		w->violations++;
	/* These phases never reserve. */
	if (lvl.held != 0 || lvl.remaining > STOCK_COUNT_MAX || lvl.sold > STOCK_COUNT_MAX)
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

/* ---- level phases: what take_level reports (see torture.h) -------------- */

enum lv_kind { LV_TAKES, LV_REFUNDS, LV_RESTOCKS, LV_SETS };
static const char *const lv_names[] = { "takes", "refunds", "restocks", "sets" };

#define LV_RESTOCKS_K 40    /* restocks in the restocks phase... */
#define LV_READS_KEPT 32768 /* read() levels the reader records */

/* One reported level: a successful take of n units, or a read (n == 0). */
struct lv_rec {
	uint64_t n;
	struct stock_level l;
};

struct lv_shared {
	const struct torture_ops *ops;
	void *obj;
	enum lv_kind kind;
	uint64_t initial;
	uint64_t restock_units; /* R: ...of R units each */
	int stop;               /* ck_pr: no more sets/restocks; buyers drain */
	int readers_stop;       /* ck_pr */
};

/* Violations found while checking: how many, and the first one in words. */
struct lv_faults {
	uint64_t count;
	char first[192];
};

struct lv_worker {
	struct lv_shared *sh;
	pthread_t tid;
	unsigned seed;
	struct lv_rec *recs;
	size_t nrecs, cap;
	uint64_t taken_ok, put_ok, put_refused, bad_rc, oom;
	uint64_t last_version; /* this thread's last observed version */
	int have_last;
	struct lv_faults f;
};

static void __attribute__((format(printf, 2, 3)))
lv_fault(struct lv_faults *f, const char *fmt, ...)
{
	va_list ap;

	if (f->count++ == 0) {
		va_start(ap, fmt);
		vsnprintf(f->first, sizeof f->first, fmt, ap);
		va_end(ap);
	}
}

static void
lv_record(struct lv_worker *w, uint64_t n, const struct stock_level *l)
{
	if (w->nrecs == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 1024;
		struct lv_rec *r = realloc(w->recs, cap * sizeof *r);

		if (r == NULL) {
			w->oom++;
			return;
		}
		w->recs = r;
		w->cap = cap;
	}
	w->recs[w->nrecs++] = (struct lv_rec){ n, *l };
}

/* The total a level may show: initial, initial + i*R (i <= K), or anything
   when set() runs. */
static int
lv_total_ok(const struct lv_shared *sh, uint64_t total)
{
	switch (sh->kind) {
	case LV_TAKES:
	case LV_REFUNDS:
		return total == sh->initial;
	case LV_RESTOCKS:
		return total >= sh->initial && (total - sh->initial) % sh->restock_units == 0 &&
		    (total - sh->initial) / sh->restock_units <= LV_RESTOCKS_K;
	case LV_SETS:
		return total <= STOCK_COUNT_MAX;
	}
	return 0;
}

/* Checks one level as the thread that got it sees it: a take's version is
   above everything this thread saw before (its take applied after those
   instants), a read's is not below. */
static void
lv_observe(struct lv_worker *w, uint64_t n, const struct stock_level *l)
{
	if (w->have_last && (n > 0 ? l->version <= w->last_version : l->version < w->last_version))
		lv_fault(&w->f, "%s: version %llu after this thread saw %llu", n > 0 ? "take level" : "read",
		    (unsigned long long)l->version, (unsigned long long)w->last_version);
	w->last_version = l->version;
	w->have_last = 1;
	if (n > 0 && l->sold < n)
		lv_fault(&w->f, "take of %llu reported sold %llu", (unsigned long long)n,
		    (unsigned long long)l->sold);
	if (!lv_total_ok(w->sh, l->remaining + l->held + l->sold) || l->held != 0)
		lv_fault(&w->f, "%s level remaining %llu + held %llu + sold %llu is no total the counter had",
		    n > 0 ? "take" : "read", (unsigned long long)l->remaining, (unsigned long long)l->held,
		    (unsigned long long)l->sold);
	if (n > 0 || w->nrecs < LV_READS_KEPT)
		lv_record(w, n, l);
}

static void *
lv_buyer(void *arg)
{
	struct lv_worker *w = arg;
	struct lv_shared *sh = w->sh;
	const int refunds = sh->kind == LV_REFUNDS || sh->kind == LV_SETS;
	const int dynamic = sh->kind == LV_RESTOCKS || sh->kind == LV_SETS;
	uint64_t held = 0;
	unsigned sold_out_streak = 0;
	int draining = 0;

	for (;;) {
		unsigned r = torture_rand(&w->seed) % 100;
		int stopping = !dynamic || ck_pr_load_int(&sh->stop);
		struct stock_level l;
		int rc;

		if (r < 70 || (!refunds && r < 95)) {
			uint64_t n = 1 + torture_rand(&w->seed) % 4;

			rc = sh->ops->take_level(sh->obj, n, &l);
			if (rc == STOCK_ESOLDOUT) {
				n = 1;
				rc = sh->ops->take_level(sh->obj, n, &l);
			}
			if (rc == 0) {
				w->taken_ok += n;
				held += n;
				sold_out_streak = 0;
				lv_observe(w, n, &l);
			} else if (rc == STOCK_ESOLDOUT) {
				draining |= stopping;
				if (++sold_out_streak > 64 && stopping)
					break;
			} else {
				w->bad_rc++;
			}
		} else if (refunds && r < 78) {
			if (held > 0 && !draining) {
				uint64_t n = 1 + torture_rand(&w->seed) % (held < 3 ? held : 3);

				if (sh->ops->put(sh->obj, n) == 0) {
					w->put_ok += n;
					held -= n;
				} else {
					w->put_refused++;
				}
			}
		} else if (sh->kind == LV_SETS && r < 79 && !stopping) {
			/* 1% of operations, half phase 2's rate: enough to race
			   takes, and spinning readers behind a preempted set()
			   make more very slow on an oversubscribed machine. */
			if (sh->ops->set(sh->obj, torture_rand(&w->seed) % 64) != 0)
				w->bad_rc++;
		} else if (sh->ops->read(sh->obj, &l) != 0) {
			w->bad_rc++;
		} else {
			lv_observe(w, 0, &l);
		}
	}
	return NULL;
}

static void *
lv_reader(void *arg)
{
	struct lv_worker *w = arg;
	struct stock_level l;

	while (!ck_pr_load_int(&w->sh->readers_stop)) {
		if (w->sh->ops->read(w->sh->obj, &l) != 0)
			w->bad_rc++;
		else
			lv_observe(w, 0, &l);
	}
	return NULL;
}

/* K restocks of R units, spread over the buyers' run; then buyers drain. */
static void *
lv_restocker(void *arg)
{
	struct lv_worker *w = arg;

	for (int i = 0; i < LV_RESTOCKS_K; i++) {
		unsigned pause = 1000 + torture_rand(&w->seed) % 8000;

		if (w->sh->ops->restock(w->sh->obj, w->sh->restock_units) != 0)
			w->bad_rc++;
		while (pause--)
			ck_pr_stall();
	}
	ck_pr_store_int(&w->sh->stop, 1);
	return NULL;
}

static int
lv_by_version(const void *x, const void *y)
{
	const struct lv_rec *a = x, *b = y;

	if (a->l.version != b->l.version)
		return a->l.version < b->l.version ? -1 : 1;
	if (a->l.sold != b->l.sold)
		return a->l.sold < b->l.sold ? -1 : 1;
	return a->l.remaining < b->l.remaining ? -1 : a->l.remaining > b->l.remaining;
}

static int
lv_by_sold(const void *x, const void *y)
{
	const struct lv_rec *a = x, *b = y;

	if (a->l.sold != b->l.sold)
		return a->l.sold < b->l.sold ? -1 : 1;
	return a->l.version < b->l.version ? -1 : a->l.version > b->l.version;
}

/*
 * The checks over every level of the phase (see torture.h). @all holds the
 * take and read levels; @takes only the takes'. @end is the final read,
 * @refunded the units refunded in all.
 */
static void
lv_check_levels(const struct lv_shared *sh, struct lv_rec *all, size_t nall, struct lv_rec *takes,
    size_t ntakes, const struct stock_level *end, uint64_t refunded, struct lv_faults *f)
{
	const int exact = sh->kind == LV_TAKES || sh->ops->exact_levels;
	uint64_t next;
	size_t i;

	/* Levels are states the counter had, ordered by version: equal versions
	   are one state; without refunds or sets, sold and total never go down
	   along versions (and with takes alone every change raises sold). */
	qsort(all, nall, sizeof *all, lv_by_version);
	for (i = 1; i < nall; i++) {
		const struct stock_level *a = &all[i - 1].l, *b = &all[i].l;

		if (a->version == b->version) {
			if (a->sold != b->sold || a->remaining != b->remaining)
				lv_fault(f, "version %llu reported as sold %llu/remaining %llu and as %llu/%llu",
				    (unsigned long long)a->version, (unsigned long long)a->sold,
				    (unsigned long long)a->remaining, (unsigned long long)b->sold,
				    (unsigned long long)b->remaining);
			continue;
		}
		if (sh->kind != LV_TAKES && sh->kind != LV_RESTOCKS)
			continue;
		if (b->sold < a->sold || b->sold + b->remaining < a->sold + a->remaining ||
		    (sh->kind == LV_TAKES && b->sold == a->sold))
			lv_fault(f, "version %llu (sold %llu, total %llu) after version %llu (sold %llu, total %llu)",
			    (unsigned long long)b->version, (unsigned long long)b->sold,
			    (unsigned long long)(b->sold + b->remaining), (unsigned long long)a->version,
			    (unsigned long long)a->sold, (unsigned long long)(a->sold + a->remaining));
	}
	if (!exact)
		return;
	if (sh->kind == LV_TAKES || sh->kind == LV_RESTOCKS) {
		/* Sold ranges [sold-n+1, sold] tile [1, end->sold]; versions rise with sold. */
		qsort(takes, ntakes, sizeof *takes, lv_by_sold);
		next = 1;
		for (i = 0; i < ntakes; i++) {
			const struct lv_rec *r = &takes[i];

			if (r->l.sold - r->n + 1 != next)
				lv_fault(f, "take of %llu reported sold %llu: its range [%llu, %llu] %s",
				    (unsigned long long)r->n, (unsigned long long)r->l.sold,
				    (unsigned long long)(r->l.sold - r->n + 1), (unsigned long long)r->l.sold,
				    r->l.sold - r->n + 1 < next ? "overlaps the previous take's" :
				    "leaves a gap");
			if (i > 0 && r->l.version <= takes[i - 1].l.version)
				lv_fault(f, "sold %llu has version %llu, sold %llu had %llu",
				    (unsigned long long)r->l.sold, (unsigned long long)r->l.version,
				    (unsigned long long)takes[i - 1].l.sold,
				    (unsigned long long)takes[i - 1].l.version);
			next = r->l.sold + 1;
		}
		if (next - 1 != end->sold)
			lv_fault(f, "take ranges end at %llu, the counter sold %llu",
			    (unsigned long long)(next - 1), (unsigned long long)end->sold);
		return;
	}
	/* With refunds (and sets, which keep sold): in version order the takes
	   are a sequential history: distinct versions, the first take sells
	   from 0, and from one take to the next sold moves by +n minus the
	   units refunded in between, never a negative number of them. */
	qsort(takes, ntakes, sizeof *takes, lv_by_version);
	for (i = 0; i < ntakes; i++) {
		const struct lv_rec *r = &takes[i];
		uint64_t before = i == 0 ? 0 : takes[i - 1].l.sold;

		if (i > 0 && r->l.version == takes[i - 1].l.version)
			lv_fault(f, "two takes reported version %llu", (unsigned long long)r->l.version);
		if (before + r->n < r->l.sold)
			lv_fault(f, "take of %llu reported sold %llu, the previous take (in version order) %llu",
			    (unsigned long long)r->n, (unsigned long long)r->l.sold,
			    (unsigned long long)before);
		else if (before + r->n - r->l.sold > refunded)
			lv_fault(f, "between two takes sold fell by more than was ever refunded");
	}
	if (ntakes > 0 && takes[ntakes - 1].l.sold < end->sold)
		lv_fault(f, "the last take reported sold %llu, the counter ended with %llu",
		    (unsigned long long)takes[ntakes - 1].l.sold, (unsigned long long)end->sold);
}

static void
lv_phase(const struct torture_ops *ops, int threads, uint64_t initial, enum lv_kind kind)
{
	struct lv_shared sh = { .ops = ops, .kind = kind, .initial = initial,
		.restock_units = initial / LV_RESTOCKS_K + 1 };
	struct lv_worker workers[TORTURE_MAX_THREADS + 2];
	const int reader = threads, restocker = threads + 1;
	const int nworkers = threads + 1 + (kind == LV_RESTOCKS);
	const char *phase = lv_names[kind];
	struct lv_rec *all, *takes;
	size_t nall = 0, ntakes = 0;
	struct stock_level end;
	struct lv_faults f = { 0 };
	uint64_t taken = 0, put = 0;
	int i;

	cr_assert(threads > 0 && threads <= TORTURE_MAX_THREADS);
	cr_assert_not_null(ops->take_level);
	sh.obj = ops->create(initial);
	cr_assert_not_null(sh.obj, "%s: create failed", ops->name);
	for (i = 0; i < nworkers; i++) {
		workers[i] = (struct lv_worker){ .sh = &sh, .seed = 0x85ebca6bu * (unsigned)(i + 1) };
		cr_assert_eq(pthread_create(&workers[i].tid, NULL,
		    i < threads ? lv_buyer : i == reader ? lv_reader : lv_restocker, &workers[i]), 0);
	}
	if (kind == LV_SETS) {
		struct timespec ts = { 0, 30 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		ck_pr_store_int(&sh.stop, 1);
	}
	if (kind == LV_RESTOCKS)
		pthread_join(workers[restocker].tid, NULL);
	for (i = 0; i < threads; i++)
		pthread_join(workers[i].tid, NULL);
	ck_pr_store_int(&sh.readers_stop, 1);
	pthread_join(workers[reader].tid, NULL);

	for (i = 0; i < nworkers; i++) {
		struct lv_worker *w = &workers[i];

		taken += w->taken_ok;
		put += w->put_ok;
		nall += w->nrecs;
		cr_expect_eq(w->bad_rc, 0, "%s/%s: thread %d got unexpected codes", ops->name, phase, i);
		cr_expect_eq(w->put_refused, 0, "%s/%s: refund of held units refused", ops->name, phase);
		cr_expect_eq(w->oom, 0, "%s/%s: out of memory recording levels", ops->name, phase);
		cr_expect_eq(w->f.count, 0, "%s/%s: thread %d: %llu bad levels, first: %s", ops->name,
		    phase, i, (unsigned long long)w->f.count, w->f.first);
	}
	cr_assert_eq(ops->read(sh.obj, &end), 0);
	cr_expect_eq(end.sold, taken - put, "%s/%s: sold %llu != taken %llu - refunded %llu", ops->name,
	    phase, (unsigned long long)end.sold, (unsigned long long)taken, (unsigned long long)put);
	cr_expect_eq(end.remaining, 0, "%s/%s: ended with %llu remaining", ops->name, phase,
	    (unsigned long long)end.remaining);
	if (kind == LV_TAKES || kind == LV_REFUNDS)
		cr_expect_eq(taken - put, initial, "%s/%s: sold %llu of %llu", ops->name, phase,
		    (unsigned long long)(taken - put), (unsigned long long)initial);
	if (kind == LV_RESTOCKS)
		cr_expect_eq(taken, initial + LV_RESTOCKS_K * sh.restock_units,
		    "%s/%s: sold %llu of %llu + %d restocks of %llu", ops->name, phase,
		    (unsigned long long)taken, (unsigned long long)initial, LV_RESTOCKS_K,
		    (unsigned long long)sh.restock_units);

	all = malloc((nall ? nall : 1) * sizeof *all);
	takes = malloc((nall ? nall : 1) * sizeof *takes);
	cr_assert(all != NULL && takes != NULL);
	nall = 0;
	for (i = 0; i < nworkers; i++) {
		for (size_t k = 0; k < workers[i].nrecs; k++) {
			all[nall++] = workers[i].recs[k];
			if (workers[i].recs[k].n > 0)
				takes[ntakes++] = workers[i].recs[k];
		}
		free(workers[i].recs);
	}
	lv_check_levels(&sh, all, nall, takes, ntakes, &end, put, &f);
	cr_expect_eq(f.count, 0, "%s/%s: %llu bad levels among %zu takes and %zu reads, first: %s",
	    ops->name, phase, (unsigned long long)f.count, ntakes, nall - ntakes, f.first);
	free(all);
	free(takes);
	ops->destroy(sh.obj);
}

/* ---- holds phase: reserve, commit and release among the rest (torture.h) -- */

#define HD_RESTOCKS_K 40

struct hd_shared {
	const struct torture_ops *ops;
	void *obj;
	uint64_t initial;
	uint64_t restock_units; /* R */
	int stop;               /* ck_pr: restocks done; buyers drain */
	int readers_stop;       /* ck_pr */
};

struct hd_worker {
	struct hd_shared *sh;
	pthread_t tid;
	unsigned seed;
	uint64_t taken, put, reserved, committed, released; /* units, successful ops */
	uint64_t refused;    /* put/commit/release of units this thread had, refused */
	uint64_t bad_rc;
	uint64_t reads;
	uint64_t last_version;
	int changed;         /* an own op succeeded since the last read */
	struct lv_faults f;
};

static void
hd_check_read(struct hd_worker *w)
{
	const struct hd_shared *sh = w->sh;
	struct stock_level l;
	uint64_t total;

	if (sh->ops->read(sh->obj, &l) != 0) {
		w->bad_rc++;
		return;
	}
	w->reads++;
	total = l.remaining + l.held + l.sold;
	if (l.remaining > STOCK_COUNT_MAX || l.held > STOCK_COUNT_MAX || l.sold > STOCK_COUNT_MAX)
		lv_fault(&w->f, "read remaining %llu held %llu sold %llu: a field out of range",
		    (unsigned long long)l.remaining, (unsigned long long)l.held, (unsigned long long)l.sold);
	else if (total < sh->initial || (total - sh->initial) % sh->restock_units != 0 ||
	    (total - sh->initial) / sh->restock_units > HD_RESTOCKS_K)
		lv_fault(&w->f, "read remaining %llu + held %llu + sold %llu = %llu: no total the counter had",
		    (unsigned long long)l.remaining, (unsigned long long)l.held, (unsigned long long)l.sold,
		    (unsigned long long)total);
	if (w->reads > 1 && (w->changed ? l.version <= w->last_version : l.version < w->last_version))
		lv_fault(&w->f, "version %llu after %llu%s", (unsigned long long)l.version,
		    (unsigned long long)w->last_version, w->changed ? " and an own change" : "");
	w->last_version = l.version;
	w->changed = 0;
}

/* 1..4 units, at most @cap (> 0). */
static uint64_t
hd_amount(struct hd_worker *w, uint64_t cap)
{
	uint64_t n = 1 + torture_rand(&w->seed) % 4;

	return n < cap ? n : cap;
}

static void *
hd_buyer(void *arg)
{
	struct hd_worker *w = arg;
	struct hd_shared *sh = w->sh;
	uint64_t held = 0, sold = 0; /* this thread's own */
	unsigned sold_out_streak = 0;
	int draining = 0;

	for (;;) {
		unsigned r = torture_rand(&w->seed) % 100;
		int stopping = ck_pr_load_int(&sh->stop);
		uint64_t n;
		int rc;

		if (r < 50) {
			/* Take (r < 25) or reserve: on sold out, try one unit. */
			int (*op)(void *, uint64_t) = r < 25 ? sh->ops->take : sh->ops->reserve;

			n = hd_amount(w, 4);
			if ((rc = op(sh->obj, n)) == STOCK_ESOLDOUT)
				rc = op(sh->obj, n = 1);
			if (rc == 0) {
				if (r < 25) {
					w->taken += n;
					sold += n;
				} else {
					w->reserved += n;
					held += n;
				}
				w->changed = 1;
				sold_out_streak = 0;
			} else if (rc == STOCK_ESOLDOUT) {
				draining |= stopping;
				if (++sold_out_streak > 64 && stopping)
					break;
			} else {
				w->bad_rc++;
			}
		} else if (r < 62) {
			if (held > 0) {
				n = hd_amount(w, held);
				if ((rc = sh->ops->commit(sh->obj, n)) == 0) {
					w->committed += n;
					held -= n;
					sold += n;
					w->changed = 1;
				} else {
					w->refused += rc == STOCK_EHELD;
					w->bad_rc += rc != STOCK_EHELD;
				}
			}
		} else if (r < 72) {
			/* Releases and refunds are rarer than takes and reserves,
			   and stop while draining, so the counter sells out. */
			if (held > 0 && !draining) {
				n = hd_amount(w, held);
				if ((rc = sh->ops->release(sh->obj, n)) == 0) {
					w->released += n;
					held -= n;
					w->changed = 1;
				} else {
					w->refused += rc == STOCK_EHELD;
					w->bad_rc += rc != STOCK_EHELD;
				}
			}
		} else if (r < 78) {
			if (sold > 0 && !draining) {
				n = hd_amount(w, sold);
				if ((rc = sh->ops->put(sh->obj, n)) == 0) {
					w->put += n;
					sold -= n;
					w->changed = 1;
				} else {
					w->refused += rc == STOCK_EREFUND;
					w->bad_rc += rc != STOCK_EREFUND;
				}
			}
		} else {
			hd_check_read(w);
		}
	}
	return NULL;
}

static void *
hd_reader(void *arg)
{
	struct hd_worker *w = arg;

	while (!ck_pr_load_int(&w->sh->readers_stop))
		hd_check_read(w);
	return NULL;
}

static void *
hd_restocker(void *arg)
{
	struct hd_worker *w = arg;

	for (int i = 0; i < HD_RESTOCKS_K; i++) {
		unsigned pause = 1000 + torture_rand(&w->seed) % 8000;

		if (w->sh->ops->restock(w->sh->obj, w->sh->restock_units) != 0)
			w->bad_rc++;
		while (pause--)
			ck_pr_stall();
	}
	ck_pr_store_int(&w->sh->stop, 1);
	return NULL;
}

static void
hd_phase(const struct torture_ops *ops, int threads, uint64_t initial)
{
	struct hd_shared sh = { .ops = ops, .initial = initial,
		.restock_units = initial / HD_RESTOCKS_K + 1 };
	struct hd_worker workers[TORTURE_MAX_THREADS + 2];
	const int reader = threads, restocker = threads + 1, nworkers = threads + 2;
	uint64_t taken = 0, put = 0, reserved = 0, committed = 0, released = 0, reads = 0;
	struct stock_level end;
	int i;

	cr_assert(threads > 0 && threads <= TORTURE_MAX_THREADS);
	cr_assert(ops->reserve != NULL && ops->commit != NULL && ops->release != NULL);
	sh.obj = ops->create(initial);
	cr_assert_not_null(sh.obj, "%s: create failed", ops->name);
	for (i = 0; i < nworkers; i++) {
		workers[i] = (struct hd_worker){ .sh = &sh, .seed = 0xc2b2ae35u * (unsigned)(i + 1) };
		cr_assert_eq(pthread_create(&workers[i].tid, NULL,
		    i < threads ? hd_buyer : i == reader ? hd_reader : hd_restocker, &workers[i]), 0);
	}
	pthread_join(workers[restocker].tid, NULL);
	for (i = 0; i < threads; i++)
		pthread_join(workers[i].tid, NULL);
	ck_pr_store_int(&sh.readers_stop, 1);
	pthread_join(workers[reader].tid, NULL);

	for (i = 0; i < nworkers; i++) {
		struct hd_worker *w = &workers[i];

		taken += w->taken;
		put += w->put;
		reserved += w->reserved;
		committed += w->committed;
		released += w->released;
		reads += w->reads;
		cr_expect_eq(w->bad_rc, 0, "%s/holds: thread %d got unexpected codes", ops->name, i);
		cr_expect_eq(w->refused, 0, "%s/holds: thread %d: %llu puts/commits/releases of its own units refused",
		    ops->name, i, (unsigned long long)w->refused);
		cr_expect_eq(w->f.count, 0, "%s/holds: thread %d: %llu bad reads, first: %s", ops->name, i,
		    (unsigned long long)w->f.count, w->f.first);
	}
	cr_assert_eq(ops->read(sh.obj, &end), 0);
	cr_expect_eq(end.remaining, 0, "%s/holds: ended with %llu remaining", ops->name,
	    (unsigned long long)end.remaining);
	cr_expect_eq(end.held, reserved - committed - released,
	    "%s/holds: held %llu != reserved %llu - committed %llu - released %llu", ops->name,
	    (unsigned long long)end.held, (unsigned long long)reserved, (unsigned long long)committed,
	    (unsigned long long)released);
	cr_expect_eq(end.sold, taken + committed - put,
	    "%s/holds: sold %llu != taken %llu + committed %llu - refunded %llu", ops->name,
	    (unsigned long long)end.sold, (unsigned long long)taken, (unsigned long long)committed,
	    (unsigned long long)put);
	cr_expect_eq(end.remaining + end.held + end.sold, initial + HD_RESTOCKS_K * sh.restock_units,
	    "%s/holds: total %llu, want %llu + %d restocks of %llu", ops->name,
	    (unsigned long long)(end.remaining + end.held + end.sold), (unsigned long long)initial,
	    HD_RESTOCKS_K, (unsigned long long)sh.restock_units);
	/* The mix really happened: every operation succeeded at least once. */
	cr_expect(taken > 0 && put > 0 && reserved > 0 && committed > 0 && released > 0 && reads > 0,
	    "%s/holds: an operation never succeeded (take %llu put %llu reserve %llu commit %llu "
	    "release %llu reads %llu)", ops->name, (unsigned long long)taken, (unsigned long long)put,
	    (unsigned long long)reserved, (unsigned long long)committed, (unsigned long long)released,
	    (unsigned long long)reads);
	ops->destroy(sh.obj);
}

void
torture_run(const struct torture_ops *ops, int threads, uint64_t initial)
{
	torture_phase(ops, threads, initial, 0);
	torture_phase(ops, threads, initial, 1);
	lv_phase(ops, threads, initial, LV_TAKES);
	lv_phase(ops, threads, initial, LV_REFUNDS);
	lv_phase(ops, threads, initial, LV_RESTOCKS);
	lv_phase(ops, threads, initial, LV_SETS);
	hd_phase(ops, threads, initial);
}

/* ---- ops for stock_counter ---------------------------------------------- */

#define TORTURE_COUNTER_OPS(tag, strategy, exact)                                  \
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
		torture_counter_read, torture_counter_take_level,                \
		torture_counter_restock, torture_counter_reserve,                \
		torture_counter_commit, torture_counter_release, exact           \
	};

static void torture_counter_destroy(void *o) { stock_counter_destroy(o); free(o); }
static int torture_counter_take(void *o, uint64_t n) { return stock_counter_take(o, n); }
static int torture_counter_put(void *o, uint64_t n) { return stock_counter_put(o, n); }
static int torture_counter_set(void *o, uint64_t r) { return stock_counter_set(o, r); }
static int torture_counter_read(void *o, struct stock_level *l) { return stock_counter_read(o, l); }
static int torture_counter_take_level(void *o, uint64_t n, struct stock_level *l) { return stock_counter_take_level(o, n, l); }
static int torture_counter_restock(void *o, uint64_t n) { return stock_counter_restock(o, n); }
static int torture_counter_reserve(void *o, uint64_t n) { return stock_counter_reserve(o, n); }
static int torture_counter_commit(void *o, uint64_t n) { return stock_counter_commit(o, n); }
static int torture_counter_release(void *o, uint64_t n) { return stock_counter_release(o, n); }

/* Exact levels under any concurrency: locked and signal (see torture.h). */
TORTURE_COUNTER_OPS(atomic, STOCK_STRATEGY_ATOMIC, 0)
TORTURE_COUNTER_OPS(locked, STOCK_STRATEGY_LOCKED, 1)
TORTURE_COUNTER_OPS(signal, STOCK_STRATEGY_SIGNAL, 1)

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

/* The table has no take_level/restock/reserve/commit/release of its own: the
   SKU's counter, looked up inside a read section, as the demo server's
   ManyStock buy does. */
static int
torture_table_take_level(void *o, uint64_t n, struct stock_level *l)
{
	stock_table_t *t = ((struct torture_table *)o)->table;
	struct stock_table_section sec;
	struct stock_counter *c;
	int rc;

	if ((rc = stock_table_read_begin(t, &sec)) != 0)
		return rc;
	c = stock_table_lookup(t, TORTURE_SKU, TORTURE_SKU_LEN);
	rc = c == NULL ? STOCK_ENOENT : stock_counter_take_level(c, n, l);
	stock_table_read_end(t, &sec);
	return rc;
}

/* An operation on the SKU's counter, looked up inside a read section. */
static int
torture_table_counter_op(void *o, uint64_t n, int (*op)(struct stock_counter *, uint64_t))
{
	stock_table_t *t = ((struct torture_table *)o)->table;
	struct stock_table_section sec;
	struct stock_counter *c;
	int rc;

	if ((rc = stock_table_read_begin(t, &sec)) != 0)
		return rc;
	c = stock_table_lookup(t, TORTURE_SKU, TORTURE_SKU_LEN);
	rc = c == NULL ? STOCK_ENOENT : op(c, n);
	stock_table_read_end(t, &sec);
	return rc;
}

static int op_restock(struct stock_counter *c, uint64_t n) { return stock_counter_restock(c, n); }
static int op_reserve(struct stock_counter *c, uint64_t n) { return stock_counter_reserve(c, n); }
static int op_commit(struct stock_counter *c, uint64_t n) { return stock_counter_commit(c, n); }
static int op_release(struct stock_counter *c, uint64_t n) { return stock_counter_release(c, n); }
static int torture_table_restock(void *o, uint64_t n) { return torture_table_counter_op(o, n, op_restock); }
static int torture_table_reserve(void *o, uint64_t n) { return torture_table_counter_op(o, n, op_reserve); }
static int torture_table_commit(void *o, uint64_t n) { return torture_table_counter_op(o, n, op_commit); }
static int torture_table_release(void *o, uint64_t n) { return torture_table_counter_op(o, n, op_release); }

static const struct torture_ops torture_ops_table = {
	"table", torture_table_create, torture_table_destroy, torture_table_take,
	torture_table_put, torture_table_set, torture_table_read, torture_table_take_level,
	torture_table_restock, torture_table_reserve, torture_table_commit, torture_table_release, 0
};

const struct torture_ops *
torture_table_ops(void)
{
	return &torture_ops_table;
}
