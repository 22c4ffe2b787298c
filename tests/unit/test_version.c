/*
 * Version (seqlock + monotonic version): a full-speed writer never lets a
 * reader see a torn multi-field record, versions never go backwards on a
 * reader, and the optimistic operations conflict exactly when a write
 * completed after the expected version was read.
 */
#include <criterion/criterion.h>
#include <pthread.h>

#include <stock.h>

/* The record: every consistent state satisfies c == a + b and d == ~a. */
struct ver_record {
	struct stock_version v;
	uint64_t a, b, c, d; /* ck_pr: readers copy them while writers write */
};

static void
ver_write(struct ver_record *r, uint64_t a, uint64_t b)
{
	ck_pr_store_64(&r->a, a);
	ck_pr_store_64(&r->b, b);
	ck_pr_store_64(&r->c, a + b);
	ck_pr_store_64(&r->d, ~a);
}

/* A consistent copy of the record and its version; counts retries. */
static uint64_t
ver_read(struct ver_record *r, uint64_t out[4], unsigned long *retries)
{
	unsigned int t;
	uint64_t seen;

	for (;;) {
		t = stock_version_read_begin(&r->v);
		out[0] = ck_pr_load_64(&r->a);
		out[1] = ck_pr_load_64(&r->b);
		out[2] = ck_pr_load_64(&r->c);
		out[3] = ck_pr_load_64(&r->d);
		seen = stock_version_get(&r->v);
		if (!stock_version_read_retry(&r->v, t))
			return seen;
		(*retries)++;
	}
}

static int
ver_flush_count(void *arg, uint64_t version)
{
	(void)version;
	(*(int *)arg)++;
	return 0;
}

static int
ver_flush_fail(void *arg, uint64_t version)
{
	(void)arg;
	(void)version;
	return STOCK_ESYS;
}

Test(version, single_thread_semantics)
{
	struct stock_version v, s = STOCK_VERSION_INITIALIZER;
	unsigned int t;
	int flushes = 0;

	cr_expect_eq(stock_version_init(NULL), STOCK_EINVAL);
	cr_assert_eq(stock_version_init(&v), 0);
	cr_expect_eq(stock_version_get(&v), 0);
	cr_expect_eq(stock_version_get(&s), 0);

	t = stock_version_read_begin(&v);
	cr_expect_not(stock_version_read_retry(&v, t), "no write, no retry");

	stock_version_write_begin(&v);
	cr_expect_eq(stock_version_write_end(&v), 1);
	cr_expect(stock_version_read_retry(&v, t), "a write happened since read_begin");
	cr_expect_eq(stock_version_get(&v), 1);

	stock_version_write_lock(&v);
	cr_expect_eq(stock_version_write_unlock(&v), 2);

	/* Optimistic write: only from the current version. */
	cr_expect_eq(stock_version_try_write_lock(&v, 1), STOCK_ECONFLICT);
	cr_expect_eq(stock_version_try_write_lock(&v, 3), STOCK_ECONFLICT);
	cr_assert_eq(stock_version_try_write_lock(&v, 2), 0);
	cr_expect_eq(stock_version_write_unlock(&v), 3);
	cr_expect_eq(stock_version_try_write_lock(NULL, 0), STOCK_EINVAL);

	/* Compare-and-flush: flushes, and does not count as a write. */
	cr_expect_eq(stock_version_compare_and_flush(&v, 3, ver_flush_count, &flushes), 0);
	cr_expect_eq(flushes, 1);
	cr_expect_eq(stock_version_get(&v), 3);
	cr_expect_eq(stock_version_compare_and_flush(&v, 3, ver_flush_count, &flushes), 0);
	cr_expect_eq(flushes, 2);
	cr_expect_eq(stock_version_compare_and_flush(&v, 2, ver_flush_count, &flushes),
	    STOCK_ECONFLICT);
	cr_expect_eq(flushes, 2, "flush must not run on a conflict");
	stock_version_write_lock(&v);
	stock_version_write_unlock(&v);
	cr_expect_eq(stock_version_compare_and_flush(&v, 3, ver_flush_count, &flushes),
	    STOCK_ECONFLICT);
	cr_expect_eq(stock_version_compare_and_flush(&v, 4, ver_flush_fail, NULL), STOCK_ESYS,
	    "flush's own result is returned");
	cr_expect_eq(stock_version_compare_and_flush(&v, 4, NULL, NULL), STOCK_EINVAL);
	/* The lock was released on every path: this would block otherwise. */
	cr_assert_eq(stock_version_try_write_lock(&v, 4), 0);
	stock_version_write_unlock(&v);
	stock_version_destroy(&v);
	stock_version_destroy(NULL);
	stock_version_destroy(&s);
}

/* ---- torn reads under a full-speed writer --------------------------- */

#define VER_READERS 4
#define VER_WRITES 200000

struct ver_torture {
	struct ver_record rec;
	int writing;          /* ck_pr: 1 while the writer runs */
	uint64_t good_reads;  /* ck_pr */
	uint64_t retries;     /* ck_pr */
};

static void *
ver_reader(void *p)
{
	struct ver_torture *x = p;
	uint64_t last = 0, reads = 0, f[4];
	unsigned long retries = 0;

	while (ck_pr_load_int(&x->writing)) {
		uint64_t seen = ver_read(&x->rec, f, &retries);

		cr_assert_eq(f[2], f[0] + f[1], "torn record: c != a + b");
		cr_assert_eq(f[3], ~f[0], "torn record: d != ~a");
		cr_assert_eq(f[0], seen, "fields and version from different writes");
		cr_assert_geq(seen, last, "version went backwards");
		last = seen;
		reads++;
	}
	ck_pr_add_64(&x->good_reads, reads);
	ck_pr_add_64(&x->retries, retries);
	return NULL;
}

static void *
ver_writer(void *p)
{
	struct ver_torture *x = p;

	for (uint64_t i = 1; i <= VER_WRITES; i++) {
		/* Raw API half the time (one writer: serialised trivially). */
		if (i & 1) {
			stock_version_write_lock(&x->rec.v);
			ver_write(&x->rec, i, i * 7 + 3);
			cr_assert_eq(stock_version_write_unlock(&x->rec.v), i);
		} else {
			stock_version_write_begin(&x->rec.v);
			ver_write(&x->rec, i, i * 7 + 3);
			cr_assert_eq(stock_version_write_end(&x->rec.v), i);
		}
	}
	ck_pr_store_int(&x->writing, 0);
	return NULL;
}

Test(version, readers_never_see_a_torn_record, .timeout = 60)
{
	static struct ver_torture x;
	pthread_t r[VER_READERS], w;

	cr_assert_eq(stock_version_init(&x.rec.v), 0);
	ver_write(&x.rec, 0, 3);
	x.writing = 1;
	for (int i = 0; i < VER_READERS; i++)
		cr_assert_eq(pthread_create(&r[i], NULL, ver_reader, &x), 0);
	cr_assert_eq(pthread_create(&w, NULL, ver_writer, &x), 0);
	pthread_join(w, NULL);
	for (int i = 0; i < VER_READERS; i++)
		pthread_join(r[i], NULL);
	cr_expect_eq(stock_version_get(&x.rec.v), VER_WRITES);
	cr_expect_gt(ck_pr_load_64(&x.good_reads), 0);
	cr_log_info("%llu consistent reads, %llu retries",
	    (unsigned long long)x.good_reads, (unsigned long long)x.retries);
	stock_version_destroy(&x.rec.v);
}

/* ---- optimistic writers and flushers -------------------------------- */

#define VER_OPT_THREADS 3
#define VER_OPT_ROUNDS 20000

struct ver_opt {
	struct ver_record rec; /* a counts committed increments */
	uint64_t wins;         /* ck_pr */
	uint64_t conflicts;    /* ck_pr */
	uint64_t flushes;      /* ck_pr */
	uint64_t stale_flushes;/* ck_pr */
};

struct ver_flush_ctx {
	struct ver_opt *x;
	uint64_t copy[4];
};

/* Runs with writers held off: the record must be exactly what was read. */
static int
ver_flush_check(void *arg, uint64_t version)
{
	struct ver_flush_ctx *c = arg;
	struct ver_opt *x = c->x;

	cr_assert_eq(stock_version_get(&x->rec.v), version);
	cr_assert_eq(ck_pr_load_64(&x->rec.a), c->copy[0], "record changed under a flush");
	cr_assert_eq(ck_pr_load_64(&x->rec.b), c->copy[1]);
	ck_pr_inc_64(&x->flushes);
	return 0;
}

static void *
ver_optimist(void *p)
{
	struct ver_opt *x = p;
	struct ver_flush_ctx ctx = { x, { 0 } };
	unsigned long retries = 0;

	for (int i = 0; i < VER_OPT_ROUNDS; i++) {
		uint64_t seen = ver_read(&x->rec, ctx.copy, &retries);
		int rc;

		if (i % 4 == 3) {
			rc = stock_version_compare_and_flush(&x->rec.v, seen, ver_flush_check, &ctx);
			if (rc == STOCK_ECONFLICT) {
				/* Conflicts only if the version really moved. */
				cr_assert_gt(stock_version_get(&x->rec.v), seen);
				ck_pr_inc_64(&x->stale_flushes);
			} else {
				cr_assert_eq(rc, 0);
			}
			continue;
		}
		rc = stock_version_try_write_lock(&x->rec.v, seen);
		if (rc == 0) {
			/* Nobody wrote since the read: increment what we read. */
			ver_write(&x->rec, ctx.copy[0] + 1, ctx.copy[1]);
			cr_assert_eq(stock_version_write_unlock(&x->rec.v), seen + 1);
			ck_pr_inc_64(&x->wins);
		} else {
			cr_assert_eq(rc, STOCK_ECONFLICT);
			cr_assert_gt(stock_version_get(&x->rec.v), seen);
			ck_pr_inc_64(&x->conflicts);
		}
	}
	return NULL;
}

Test(version, optimistic_writes_lose_no_update, .timeout = 60)
{
	static struct ver_opt x;
	pthread_t t[VER_OPT_THREADS];

	cr_assert_eq(stock_version_init(&x.rec.v), 0);
	for (int i = 0; i < VER_OPT_THREADS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, ver_optimist, &x), 0);
	for (int i = 0; i < VER_OPT_THREADS; i++)
		pthread_join(t[i], NULL);
	/* Every successful optimistic write is an increment that was kept. */
	cr_expect_eq(ck_pr_load_64(&x.rec.a), x.wins);
	cr_expect_eq(stock_version_get(&x.rec.v), x.wins);
	cr_expect_eq(x.wins + x.conflicts + x.flushes + x.stale_flushes,
	    (uint64_t)VER_OPT_THREADS * VER_OPT_ROUNDS);
	cr_expect_gt(x.flushes, 0);
	stock_version_destroy(&x.rec.v);
}
