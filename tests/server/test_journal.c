/*
 * The embedded store (store/store.h): first its contract (what every caller
 * relies on, through the store_* calls only), then its own guarantees (file
 * format, torn tails, corrupt middles, group commit, I/O failures,
 * backpressure, snapshots, crash safety).
 *
 * The own-guarantee part knows the on-disk format (docs/store.md) and
 * injects faults through struct store_io. Every outcome checked here is
 * decided by the code, not by timing: where a test must wait for a
 * background thread it polls a counter with a generous limit, and where it
 * needs a batch of a given shape it holds the flusher inside fdatasync with
 * a gate. The store's log lines (log.h) are captured with log_set_sink.
 */
#include <criterion/criterion.h>

#include <bson/bson.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "store/crc32c.h"
#include "store/store.h"

/* ====================================================================== */
/* Helpers                                                                 */
/* ====================================================================== */

static struct sku_doc
mkdoc(const char *sku, uint64_t stock, uint64_t sold, uint64_t version)
{
	struct sku_doc d;

	memset(&d, 0, sizeof d);
	snprintf(d.sku, sizeof d.sku, "%s", sku);
	d.stock = stock;
	d.sold = sold;
	d.version = version;
	return d;
}

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Poll @expr every millisecond for up to 60 s; true once it holds. */
#define WAIT_FOR(expr)                                                 \
	({                                                             \
		bool ok_ = false;                                      \
		for (int i_ = 0; i_ < 60000 && !(ok_ = (expr)); i_++) \
			sleep_ms(1);                                   \
		ok_;                                                   \
	})

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void
rm_rf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void
make_tmpdir(char *buf, size_t len)
{
	const char *base = getenv("TMPDIR");

	snprintf(buf, len, "%s/test_store.XXXXXX", base != NULL ? base : "/tmp");
	cr_assert_not_null(mkdtemp(buf), "mkdtemp: %s", strerror(errno));
}

/*
 * Log lines of a store, kept for assertions (the store's threads log too).
 * log.h has one sink per process: a test installs its capture before it
 * opens a store and removes it after the last store_close (log_stop).
 */
struct logcap {
	pthread_mutex_t mu;
	char text[16384];
	size_t len;
};

static void
logcap_fn(void *arg, enum log_level level, const char *who, const char *msg)
{
	struct logcap *c = arg;
	int n;

	(void)level;
	pthread_mutex_lock(&c->mu);
	n = snprintf(c->text + c->len, sizeof c->text - c->len, "%s: %s\n", who, msg);
	if (n > 0 && (size_t)n < sizeof c->text - c->len)
		c->len += (size_t)n;
	pthread_mutex_unlock(&c->mu);
}

static void
log_start(struct logcap *c)
{
	pthread_mutex_init(&c->mu, NULL);
	c->text[0] = '\0';
	c->len = 0;
	log_set_sink(logcap_fn, c);
}

static void
log_stop(struct logcap *c)
{
	log_set_sink(NULL, NULL);
	pthread_mutex_destroy(&c->mu);
}

static bool
logcap_has(struct logcap *c, const char *needle)
{
	bool r;

	pthread_mutex_lock(&c->mu);
	r = strstr(c->text, needle) != NULL;
	pthread_mutex_unlock(&c->mu);
	return r;
}

static struct store_stats
stats_of(store_t *st)
{
	struct store_stats s;

	cr_assert_eq(store_stats(st, &s), 0);
	return s;
}

/* ====================================================================== */
/* The contract: a place (an empty data directory) and opens on it          */
/* ====================================================================== */

struct place {
	char dir[256];
	struct logcap log;
};

static struct place *
place_create(void)
{
	struct place *p = calloc(1, sizeof *p);

	cr_assert_not_null(p);
	make_tmpdir(p->dir, sizeof p->dir);
	log_start(&p->log);
	return p;
}

/* Open (or reopen) a store with the default options on @p. */
static store_t *
place_open(struct place *p)
{
	struct store_options o = { 0 };
	store_t *st = NULL;
	char err[512];
	int rc;

	o.data_dir = p->dir;
	rc = store_open(&st, &o, err, sizeof err);
	cr_assert_eq(rc, 0, "store_open: %s: %s", stock_err_name(rc), err);
	cr_assert_not_null(st);
	return st;
}

static void
place_destroy(struct place *p)
{
	log_stop(&p->log);
	rm_rf(p->dir);
	free(p);
}

static void
expect_doc(store_t *st, const char *sku, uint64_t stock, uint64_t sold, uint64_t version)
{
	struct sku_doc d;
	int rc = store_get(st, sku, &d);

	cr_assert_eq(rc, 0, "get(%s): %s", sku, stock_err_name(rc));
	cr_expect_str_eq(d.sku, sku);
	cr_expect_eq(d.stock, stock, "%s: stock %llu, want %llu", sku,
	    (unsigned long long)d.stock, (unsigned long long)stock);
	cr_expect_eq(d.sold, sold, "%s: sold", sku);
	cr_expect_eq(d.version, version, "%s: version %llu, want %llu", sku,
	    (unsigned long long)d.version, (unsigned long long)version);
}

/* --- contract: append, close, reopen -------------------------------------- */

struct collect {
	struct sku_doc docs[64];
	int n;
};

static int
collect_fn(const struct sku_doc *d, void *arg)
{
	struct collect *c = arg;

	if (c->n < 64)
		c->docs[c->n] = *d;
	c->n++;
	return 0;
}

static void
contract_roundtrip(void)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	struct sku_doc a = mkdoc("OneStock", 15000, 0, 1);
	struct sku_doc b = mkdoc("NVDA", 14990, 10, 10);
	struct sku_doc c = mkdoc("ÄÖÜ-utf8-sku", 1, 2, 3);
	struct collect col = { .n = 0 };

	cr_assert_eq(store_append(st, &a, true), 0);
	cr_assert_eq(store_append(st, &b, true), 0);
	cr_assert_eq(store_append(st, &c, true), 0);
	cr_expect(store_healthy(st));
	expect_doc(st, "OneStock", 15000, 0, 1);
	cr_expect_eq(stats_of(st).records, 3);
	store_close(st);

	st = place_open(place);
	expect_doc(st, "OneStock", 15000, 0, 1);
	expect_doc(st, "NVDA", 14990, 10, 10);
	expect_doc(st, "ÄÖÜ-utf8-sku", 1, 2, 3);
	cr_assert_eq(store_foreach(st, collect_fn, &col), 0);
	cr_expect_eq(col.n, 3);
	cr_expect_eq(stats_of(st).docs, 3);
	store_close(st);
	place_destroy(place);
}

static void
contract_max_version_wins(void)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	struct sku_doc d;

	/* Out of order, as concurrent appenders may deliver them. */
	d = mkdoc("TSLA", 100, 9, 9);
	cr_assert_eq(store_append(st, &d, true), 0);
	d = mkdoc("TSLA", 104, 5, 5);
	cr_assert_eq(store_append(st, &d, true), 0);
	d = mkdoc("TSLA", 102, 7, 7);
	cr_assert_eq(store_append(st, &d, false), 0);
	cr_assert_eq(store_sync(st), 0);
	expect_doc(st, "TSLA", 100, 9, 9);
	store_close(st);

	st = place_open(place);
	expect_doc(st, "TSLA", 100, 9, 9);
	d = mkdoc("TSLA", 99, 10, 10);
	cr_assert_eq(store_append(st, &d, true), 0);
	expect_doc(st, "TSLA", 99, 10, 10);
	store_close(st);
	st = place_open(place);
	expect_doc(st, "TSLA", 99, 10, 10);
	store_close(st);
	place_destroy(place);
}

/* --- contract: concurrent durable appends --------------------------------- */

#define CT_THREADS 8
#define CT_APPENDS 250
#define CT_OWN 4

struct ct_arg {
	store_t *st;
	int id;
	uint64_t *shared_version; /* atomic: versions of the shared SKU */
	uint64_t acked[CT_OWN];   /* last acknowledged version per own SKU */
	uint64_t shared_acked;    /* highest acknowledged version of "shared" */
	int failures;
};

static void *
ct_worker(void *p)
{
	struct ct_arg *a = p;

	for (int i = 0; i < CT_APPENDS; i++) {
		char sku[32];
		struct sku_doc d;
		uint64_t v = (uint64_t)i / CT_OWN + 1, sv;

		snprintf(sku, sizeof sku, "t%d-s%d", a->id, i % CT_OWN);
		d = mkdoc(sku, 1000 - v, v, v);
		if (store_append(a->st, &d, true) != 0) {
			a->failures++;
			continue;
		}
		a->acked[i % CT_OWN] = v;
		/* A SKU everyone writes: versions race and arrive out of order. */
		sv = __atomic_add_fetch(a->shared_version, 1, __ATOMIC_RELAXED);
		d = mkdoc("shared", 1000000 - sv, sv, sv);
		if (store_append(a->st, &d, true) != 0) {
			a->failures++;
			continue;
		}
		if (sv > a->shared_acked)
			a->shared_acked = sv;
	}
	return NULL;
}

static void
ct_check(store_t *st, struct ct_arg *args)
{
	uint64_t shared_max = 0;

	for (int t = 0; t < CT_THREADS; t++) {
		for (int k = 0; k < CT_OWN; k++) {
			char sku[32];
			uint64_t v = args[t].acked[k];

			snprintf(sku, sizeof sku, "t%d-s%d", t, k);
			expect_doc(st, sku, 1000 - v, v, v);
		}
		if (args[t].shared_acked > shared_max)
			shared_max = args[t].shared_acked;
	}
	expect_doc(st, "shared", 1000000 - shared_max, shared_max, shared_max);
}

static void
contract_concurrent_durable(void)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	pthread_t th[CT_THREADS];
	struct ct_arg args[CT_THREADS];
	uint64_t shared_version = 0;

	memset(args, 0, sizeof args);
	for (int t = 0; t < CT_THREADS; t++) {
		args[t].st = st;
		args[t].id = t;
		args[t].shared_version = &shared_version;
		cr_assert_eq(pthread_create(&th[t], NULL, ct_worker, &args[t]), 0);
	}
	for (int t = 0; t < CT_THREADS; t++) {
		pthread_join(th[t], NULL);
		cr_assert_eq(args[t].failures, 0, "thread %d: %d appends failed", t,
		    args[t].failures);
	}
	ct_check(st, args);
	cr_expect_eq(stats_of(st).records, (uint64_t)CT_THREADS * CT_APPENDS * 2);
	store_close(st);
	st = place_open(place);
	ct_check(st, args);
	store_close(st);
	place_destroy(place);
}

/* --- contract: arguments, foreach, write-behind ---------------------------- */

static int
stop_at_two(const struct sku_doc *d, void *arg)
{
	(void)d;
	return ++*(int *)arg == 2 ? 42 : 0;
}

static void
contract_invalid(void)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	struct sku_doc d, out;
	char long_sku[STOCK_SKU_MAX + 2];
	int calls = 0;

	d = mkdoc("", 1, 1, 1);
	cr_expect_eq(store_append(st, &d, true), STOCK_EINVAL);
	memset(long_sku, 'x', sizeof long_sku - 1);
	long_sku[sizeof long_sku - 1] = '\0';
	memset(&d, 0, sizeof d);
	memcpy(d.sku, long_sku, sizeof d.sku); /* 65 bytes, no NUL */
	cr_expect_eq(store_append(st, &d, true), STOCK_EINVAL);
	d = mkdoc("bad-utf8-\xff", 1, 1, 1);
	cr_expect_eq(store_append(st, &d, true), STOCK_EINVAL);
	d = mkdoc("big", STOCK_COUNT_MAX + 1, 0, 1);
	cr_expect_eq(store_append(st, &d, true), STOCK_EINVAL);
	d = mkdoc("big", 0, STOCK_COUNT_MAX + 1, 1);
	cr_expect_eq(store_append(st, &d, false), STOCK_EINVAL);
	d = mkdoc("big", 0, 0, (uint64_t)INT64_MAX + 1);
	cr_expect_eq(store_append(st, &d, true), STOCK_EINVAL);
	cr_expect_eq(store_append(st, NULL, true), STOCK_EINVAL);
	cr_expect_eq(store_append(NULL, &d, true), STOCK_EINVAL);
	cr_expect_eq(store_sync(NULL), STOCK_EINVAL);
	cr_expect_eq(store_get(NULL, "x", &out), STOCK_EINVAL);
	cr_expect_eq(store_foreach(NULL, stop_at_two, &calls), STOCK_EINVAL);
	cr_expect_eq(store_snapshot(NULL), STOCK_EINVAL);
	cr_expect_eq(store_stats(NULL, &(struct store_stats){ 0 }), STOCK_EINVAL);
	cr_expect_not(store_healthy(NULL));
	store_close(NULL);
	cr_expect_eq(store_get(st, "nothing", &out), STOCK_ENOENT);
	cr_expect_eq(store_get(st, "", &out), STOCK_EINVAL);
	cr_expect_eq(store_get(st, NULL, &out), STOCK_EINVAL);
	cr_expect_eq(store_foreach(st, NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(store_stats(st, NULL), STOCK_EINVAL);
	cr_expect_eq(stats_of(st).records, 0, "rejected appends must not count");

	/* Limits themselves are fine. */
	d = mkdoc("big", STOCK_COUNT_MAX, STOCK_COUNT_MAX, INT64_MAX);
	cr_expect_eq(store_append(st, &d, true), 0);
	memset(&d, 0, sizeof d);
	memset(d.sku, 'y', STOCK_SKU_MAX);
	cr_expect_eq(store_append(st, &d, true), 0);
	d = mkdoc("third", 0, 0, 0);
	cr_expect_eq(store_append(st, &d, true), 0);
	cr_expect_eq(store_foreach(st, stop_at_two, &calls), 42);
	cr_expect_eq(calls, 2);
	store_close(st);
	st = place_open(place);
	expect_doc(st, "big", STOCK_COUNT_MAX, STOCK_COUNT_MAX, INT64_MAX);
	store_close(st);
	place_destroy(place);
}

static void
contract_write_behind(void)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	char sku[32];

	for (int i = 0; i < 300; i++) {
		struct sku_doc d;

		snprintf(sku, sizeof sku, "wb-%d", i % 30);
		d = mkdoc(sku, 500 - (uint64_t)i, (uint64_t)i, (uint64_t)i + 1);
		cr_assert_eq(store_append(st, &d, false), 0);
	}
	cr_assert_eq(store_sync(st), 0);
	expect_doc(st, "wb-29", 500 - 299, 299, 300);
	expect_doc(st, "wb-0", 500 - 270, 270, 271);
	{
		struct collect col = { .n = 0 };

		/* docs is a gauge of the durable state: the same count foreach walks. */
		cr_assert_eq(store_foreach(st, collect_fn, &col), 0);
		cr_expect_eq(col.n, 30);
	}
	cr_expect_eq(stats_of(st).docs, 30);
	store_close(st);
	st = place_open(place);
	expect_doc(st, "wb-29", 500 - 299, 299, 300);
	store_close(st);
	place_destroy(place);
}

Test(contract, roundtrip) { contract_roundtrip(); }
Test(contract, max_version_wins) { contract_max_version_wins(); }
Test(contract, concurrent_durable_appends_survive_reopen) { contract_concurrent_durable(); }
Test(contract, invalid_arguments) { contract_invalid(); }
Test(contract, write_behind_then_sync) { contract_write_behind(); }

/* ====================================================================== */
/* The journal: fixtures                                                */
/* ====================================================================== */

/* Fault injection: counters armed by the test, a gate that holds fdatasync. */
struct faults {
	int fail_sync;       /* next N journal fdatasyncs fail with EIO */
	int fail_snap_sync;  /* next N snapshot fdatasyncs fail with EIO */
	int short_write;     /* next journal write: all but a byte, then ENOSPC */
	int enospc;          /* internal: the ENOSPC after a short write */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool gate_closed;    /* journal fdatasync waits while true */
	int gate_waiting;
};

static struct faults F = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static bool
take_one(int *counter)
{
	int v = __atomic_load_n(counter, __ATOMIC_ACQUIRE);

	while (v > 0)
		if (__atomic_compare_exchange_n(counter, &v, v - 1, false, __ATOMIC_ACQ_REL,
		        __ATOMIC_ACQUIRE))
			return true;
	return false;
}

static ssize_t
f_pwrite(void *ctx, enum store_io_file f, int fd, const void *buf, size_t n, off_t off)
{
	(void)ctx;
	if (f == STORE_IO_JOURNAL && take_one(&F.enospc)) {
		errno = ENOSPC;
		return -1;
	}
	if (f == STORE_IO_JOURNAL && n > 1 && take_one(&F.short_write)) {
		__atomic_store_n(&F.enospc, 1, __ATOMIC_RELEASE);
		return pwrite(fd, buf, n - 1, off); /* all but the last byte */
	}
	return pwrite(fd, buf, n, off);
}

static int
f_sync(void *ctx, enum store_io_file f, int fd)
{
	(void)ctx;
	if (f == STORE_IO_JOURNAL) {
		pthread_mutex_lock(&F.mu);
		F.gate_waiting++;
		pthread_cond_broadcast(&F.cv);
		while (F.gate_closed)
			pthread_cond_wait(&F.cv, &F.mu);
		F.gate_waiting--;
		pthread_mutex_unlock(&F.mu);
		if (take_one(&F.fail_sync)) {
			errno = EIO;
			return -1;
		}
	}
	if (f == STORE_IO_SNAPSHOT && take_one(&F.fail_snap_sync)) {
		errno = EIO;
		return -1;
	}
	return f == STORE_IO_DIR ? fsync(fd) : fdatasync(fd);
}

static const struct store_io fault_io = { f_pwrite, f_sync, NULL, NULL };

static void
gate_set(bool closed)
{
	pthread_mutex_lock(&F.mu);
	F.gate_closed = closed;
	pthread_cond_broadcast(&F.cv);
	pthread_mutex_unlock(&F.mu);
}

static int
gate_waiting(void)
{
	int n;

	pthread_mutex_lock(&F.mu);
	n = F.gate_waiting;
	pthread_mutex_unlock(&F.mu);
	return n;
}

struct fx {
	char dir[256];
	struct logcap log;
	struct store_options opt;
	char err[1024];
};

static void
fx_init(struct fx *x)
{
	memset(x, 0, sizeof *x);
	make_tmpdir(x->dir, sizeof x->dir);
	log_start(&x->log);
	x->opt.data_dir = x->dir;
	x->opt.io = &fault_io;
	x->opt.no_close_snapshot = true; /* keep the journal to look at */
}

static void
fx_fini(struct fx *x)
{
	log_stop(&x->log);
	rm_rf(x->dir);
}

static int
fx_try_open(struct fx *x, store_t **st)
{
	x->err[0] = '\0';
	return store_open(st, &x->opt, x->err, sizeof x->err);
}

static store_t *
fx_open(struct fx *x)
{
	store_t *st = NULL;
	int rc = fx_try_open(x, &st);

	cr_assert_eq(rc, 0, "open: %s: %s", stock_err_name(rc), x->err);
	return st;
}

/* Append sku-0 .. sku-(n-1), one durable append (one batch) each. */
static void
append_n(store_t *st, int n)
{
	for (int i = 0; i < n; i++) {
		char sku[32];
		struct sku_doc d;

		snprintf(sku, sizeof sku, "sku-%d", i);
		d = mkdoc(sku, 100 + (uint64_t)i, (uint64_t)i, (uint64_t)i + 1);
		cr_assert_eq(store_append(st, &d, true), 0);
	}
}

static void
expect_n(store_t *st, int n, int missing)
{
	for (int i = 0; i < n; i++) {
		char sku[32];
		struct sku_doc d;

		snprintf(sku, sizeof sku, "sku-%d", i);
		if (i == missing)
			cr_expect_eq(store_get(st, sku, &d), STOCK_ENOENT, "%s should be gone", sku);
		else
			expect_doc(st, sku, 100 + (uint64_t)i, (uint64_t)i, (uint64_t)i + 1);
	}
}

/* The only journal file in the directory (asserts there is exactly one). */
static void
journal_path(struct fx *x, char *out, size_t len)
{
	DIR *d = opendir(x->dir);
	struct dirent *e;
	int found = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "journal-", 8) == 0) {
			snprintf(out, len, "%s/%s", x->dir, e->d_name);
			found++;
		}
	}
	closedir(d);
	cr_assert_eq(found, 1, "expected one journal file, found %d", found);
}

static int
count_files(struct fx *x, const char *prefix)
{
	DIR *d = opendir(x->dir);
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)) != NULL)
		n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return n;
}

static bool
file_exists(struct fx *x, const char *name)
{
	char p[512];
	struct stat sb;

	snprintf(p, sizeof p, "%s/%s", x->dir, name);
	return stat(p, &sb) == 0;
}

static off_t
file_size(const char *path)
{
	struct stat sb;

	cr_assert_eq(stat(path, &sb), 0, "%s: %s", path, strerror(errno));
	return sb.st_size;
}

static uint32_t
le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Offsets of the records of a file (header 20 bytes, BSON length at +8). */
static int
record_offsets(const char *path, off_t *offs, int max)
{
	int fd = open(path, O_RDONLY);
	unsigned char hdr[20];
	off_t o = 0;
	int n = 0;

	cr_assert_geq(fd, 0);
	while (n < max && pread(fd, hdr, sizeof hdr, o) == (ssize_t)sizeof hdr) {
		offs[n++] = o;
		o += 20 + le32(hdr + 8);
	}
	close(fd);
	return n;
}

/* N of the "sku-N" document in the record at @off (-1 if it is not one). */
static int
record_sku_index(const char *path, off_t off)
{
	unsigned char buf[256];
	int fd = open(path, O_RDONLY), n = -1;
	bson_t b;
	bson_iter_t it;

	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, buf, sizeof buf, off), (ssize_t)sizeof buf);
	close(fd);
	if (bson_init_static(&b, buf + 20, le32(buf + 8)) && bson_iter_init_find(&it, &b, "_id") &&
	    BSON_ITER_HOLDS_UTF8(&it))
		sscanf(bson_iter_utf8(&it, NULL), "sku-%d", &n);
	return n;
}

static void
flip_byte(const char *path, off_t at)
{
	int fd = open(path, O_RDWR);
	unsigned char c;

	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, &c, 1, at), 1);
	c ^= 0x5a;
	cr_assert_eq(pwrite(fd, &c, 1, at), 1);
	close(fd);
}

/* ====================================================================== */
/* The journal: format                                                  */
/* ====================================================================== */

Test(crc32c, known_vectors)
{
	unsigned char zeros[32] = { 0 }, ones[32];
	const char *s = "123456789";

	memset(ones, 0xff, sizeof ones);
	cr_expect_eq(crc32c(0, s, 9), 0xE3069283u);
	cr_expect_eq(crc32c(0, "", 0), 0u);
	/* RFC 3720 B.4 test patterns. */
	cr_expect_eq(crc32c(0, zeros, 32), 0x8A9136AAu);
	cr_expect_eq(crc32c(0, ones, 32), 0x62A8AB43u);
	/* Incremental == one shot, at every split and alignment. */
	for (size_t k = 0; k <= 9; k++)
		cr_expect_eq(crc32c(crc32c(0, s, k), s + k, 9 - k), 0xE3069283u, "split %zu", k);
	{
		unsigned char buf[100];
		uint32_t whole;

		for (int i = 0; i < 100; i++)
			buf[i] = (unsigned char)(i * 7 + 3);
		whole = crc32c(0, buf + 1, 99);
		for (size_t k = 0; k <= 99; k += 11)
			cr_expect_eq(crc32c(crc32c(0, buf + 1, k), buf + 1 + k, 99 - k), whole);
	}
}

/* A record's BSON is the MongoDB document: _id string, three int64. */
static void
expect_mongo_shape(const unsigned char *bsonp, uint32_t len, const char *sku, int64_t stock,
    int64_t sold, int64_t version)
{
	bson_t b;
	bson_iter_t it;

	cr_assert(bson_init_static(&b, bsonp, len));
	cr_assert(bson_iter_init_find(&it, &b, "_id"));
	cr_assert(BSON_ITER_HOLDS_UTF8(&it));
	cr_expect_str_eq(bson_iter_utf8(&it, NULL), sku);
	cr_assert(bson_iter_init_find(&it, &b, "stock") && BSON_ITER_HOLDS_INT64(&it));
	cr_expect_eq(bson_iter_int64(&it), stock);
	cr_assert(bson_iter_init_find(&it, &b, "sold") && BSON_ITER_HOLDS_INT64(&it));
	cr_expect_eq(bson_iter_int64(&it), sold);
	cr_assert(bson_iter_init_find(&it, &b, "version") && BSON_ITER_HOLDS_INT64(&it));
	cr_expect_eq(bson_iter_int64(&it), version);
	cr_expect_eq(bson_count_keys(&b), 4);
}

Test(journal, journal_records_are_mongo_documents)
{
	struct fx x;
	store_t *st;
	char jp[512];
	unsigned char buf[512];
	struct sku_doc d = mkdoc("NVDA", 15000, 3, 7);
	int fd;
	ssize_t n;

	fx_init(&x);
	st = fx_open(&x);
	cr_assert_eq(store_append(st, &d, true), 0);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	fd = open(jp, O_RDONLY);
	n = read(fd, buf, sizeof buf);
	close(fd);
	cr_assert_gt(n, 20);
	cr_expect_eq(memcmp(buf, "LSJ1", 4), 0);
	cr_assert_eq((size_t)n, 20 + le32(buf + 8), "exactly one record");
	cr_expect_eq(le32(buf + 12), 1u, "first batch of the file");
	cr_expect_eq(le32(buf + 16), 1u, "END flag on a one-record batch");
	cr_expect_eq(le32(buf + 4), crc32c(crc32c(0, buf + 20, le32(buf + 8)), buf + 8, 12));
	expect_mongo_shape(buf + 20, le32(buf + 8), "NVDA", 15000, 3, 7);
	fx_fini(&x);
}

/* ====================================================================== */
/* The journal: torn tails and corrupt middles                          */
/* ====================================================================== */

Test(journal, torn_tail_mid_record_is_cut)
{
	struct fx x;
	store_t *st;
	char jp[512];
	off_t offs[16];

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 10);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_offsets(jp, offs, 16), 10);
	cr_assert_eq(truncate(jp, offs[9] + 30), 0); /* inside the last record's BSON */

	st = fx_open(&x);
	expect_n(st, 10, 9);
	cr_expect_eq(stats_of(st).torn_bytes_cut, 30);
	cr_expect(logcap_has(&x.log, "torn tail"), "log: %s", x.log.text);
	cr_expect_eq(file_size(jp), offs[9], "the tail is cut on disk");
	/* Appending continues cleanly after the cut. */
	append_n(st, 10);
	store_close(st);
	st = fx_open(&x);
	expect_n(st, 10, -1);
	cr_expect_eq(stats_of(st).torn_bytes_cut, 0);
	store_close(st);
	fx_fini(&x);
}

Test(journal, torn_tail_garbage_is_cut)
{
	struct fx x;
	store_t *st;
	char jp[512];
	const char *junk = "LSJ1 and then not a record at all"; /* a magic, then junk */
	off_t size;
	FILE *f;

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 10);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	size = file_size(jp);
	f = fopen(jp, "a");
	fputs(junk, f);
	fclose(f);

	st = fx_open(&x);
	expect_n(st, 10, -1);
	cr_expect_eq(stats_of(st).torn_bytes_cut, strlen(junk));
	cr_expect_eq(file_size(jp), size);
	store_close(st);
	fx_fini(&x);
}

Test(journal, bad_last_record_is_a_torn_tail)
{
	struct fx x;
	store_t *st;
	char jp[512];
	off_t offs[16], size;

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 10);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_offsets(jp, offs, 16), 10);
	size = file_size(jp);
	flip_byte(jp, offs[9] + 25);

	st = fx_open(&x);
	expect_n(st, 10, 9);
	cr_expect_eq(stats_of(st).torn_bytes_cut, (uint64_t)(size - offs[9]));
	store_close(st);
	fx_fini(&x);
}

Test(journal, corrupt_middle_is_refused_then_repaired)
{
	struct fx x;
	store_t *st = NULL;
	char jp[512], want[600];
	off_t offs[16];
	const char *base;

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 10);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_offsets(jp, offs, 16), 10);
	flip_byte(jp, offs[3] + 30);

	cr_expect_eq(fx_try_open(&x, &st), STOCK_EINVAL);
	cr_expect_null(st);
	base = strrchr(jp, '/') + 1;
	cr_expect_not_null(strstr(x.err, base), "message names the file: %s", x.err);
	snprintf(want, sizeof want, "offset %lld", (long long)offs[3]);
	cr_expect_not_null(strstr(x.err, want), "message names the offset (%s): %s", want, x.err);
	cr_expect_not_null(strstr(x.err, "repair"), "message says how to proceed: %s", x.err);
	/* The refusal changed nothing: the damaged file is still all there. */
	cr_expect_eq(record_offsets(jp, offs, 16), 10);

	x.opt.repair = true;
	st = fx_open(&x);
	expect_n(st, 10, 3);
	cr_expect_eq(stats_of(st).corrupt_skipped, 1);
	cr_expect(logcap_has(&x.log, "repair"), "log: %s", x.log.text);
	store_close(st);

	/* The repair wrote a snapshot: a plain open works from now on. */
	x.opt.repair = false;
	st = fx_open(&x);
	expect_n(st, 10, 3);
	cr_expect_eq(stats_of(st).corrupt_skipped, 0);
	store_close(st);
	fx_fini(&x);
}

Test(journal, replay_is_idempotent)
{
	struct fx x;
	store_t *st;
	char jp[512], copy[600];
	char cmd[1400];

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 10);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	/* The same records again in a later journal: nothing changes. */
	snprintf(copy, sizeof copy, "%s/journal-0000000000000007.jnl", x.dir);
	snprintf(cmd, sizeof cmd, "cp '%s' '%s'", jp, copy);
	cr_assert_eq(system(cmd), 0);
	st = fx_open(&x);
	expect_n(st, 10, -1);
	cr_expect_eq(stats_of(st).docs, 10);
	cr_expect_eq(stats_of(st).replayed_records, 20);
	store_close(st);
	fx_fini(&x);
}

/* ====================================================================== */
/* The journal: lock file                                               */
/* ====================================================================== */

Test(journal, second_open_of_a_directory_fails)
{
	struct fx x;
	store_t *a, *b = NULL;

	fx_init(&x);
	a = fx_open(&x);
	cr_expect_eq(fx_try_open(&x, &b), STOCK_EBUSY);
	cr_expect_null(b);
	cr_expect_not_null(strstr(x.err, "LOCK"), "%s", x.err);
	cr_expect_not_null(strstr(x.err, "in use"), "%s", x.err);
	store_close(a);
	b = fx_open(&x);
	store_close(b);
	fx_fini(&x);
}

/* ====================================================================== */
/* The journal: group commit, failures, backpressure                    */
/* ====================================================================== */

struct one_append {
	store_t *st;
	struct sku_doc doc;
	bool durable;
	int rc;
};

static void *
one_append_fn(void *p)
{
	struct one_append *a = p;

	a->rc = store_append(a->st, &a->doc, a->durable);
	return NULL;
}

static uint64_t
queue_depth(store_t *st)
{
	return stats_of(st).queue_depth;
}

/*
 * Hold the flusher in the fdatasync of a first one-record batch while eight
 * more durable appends queue up: they must then share one batch.
 */
static void
run_gated_batches(struct fx *x, store_t *st)
{
	pthread_t th[9];
	struct one_append a[9];

	(void)x;
	gate_set(true);
	for (int i = 0; i < 9; i++) {
		char sku[32];

		snprintf(sku, sizeof sku, "g-%d", i);
		a[i].st = st;
		a[i].doc = mkdoc(sku, 10, (uint64_t)i, 1);
		a[i].durable = true;
		a[i].rc = -100;
		cr_assert_eq(pthread_create(&th[i], NULL, one_append_fn, &a[i]), 0);
		if (i == 0)
			cr_assert(WAIT_FOR(gate_waiting() == 1), "the flusher never synced");
	}
	cr_assert(WAIT_FOR(queue_depth(st) == 9));
	gate_set(false);
	for (int i = 0; i < 9; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].rc, 0, "append %d: %s", i, stock_err_name(a[i].rc));
	}
}

Test(journal, group_commit_shares_one_fdatasync)
{
	struct fx x;
	store_t *st;
	struct store_stats s;

	fx_init(&x);
	st = fx_open(&x);
	run_gated_batches(&x, st);
	s = stats_of(st);
	cr_expect_eq(s.batches, 2);
	cr_expect_eq(s.fsyncs, 2, "nine durable appends, two fdatasyncs");
	cr_expect_eq(s.batch_max, 8);
	cr_expect_eq(s.batch_hist[0], 1);
	cr_expect_eq(s.batch_hist[3], 1, "one batch of 8-15");
	cr_expect_eq(s.queue_depth, 0);
	store_close(st);
	fx_fini(&x);
}

Test(journal, unfinished_batch_is_all_or_nothing)
{
	struct fx x;
	store_t *st;
	char jp[512];
	off_t offs[16];
	struct sku_doc d;

	fx_init(&x);
	st = fx_open(&x);
	run_gated_batches(&x, st); /* batch 1: g-0; batch 2: g-1 .. g-8 */
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_offsets(jp, offs, 16), 9);
	/* A crash mid-batch: four whole records of batch 2 made it, no END. */
	cr_assert_eq(truncate(jp, offs[5] + 10), 0);

	st = fx_open(&x);
	cr_expect_eq(store_get(st, "g-0", &d), 0);
	cr_expect_eq(stats_of(st).docs, 1, "none of the unfinished batch is replayed");
	cr_expect_eq(file_size(jp), offs[1]);
	store_close(st);
	fx_fini(&x);
}

#define FAILED_SKU "failed-and-rolled-back-by-the-caller-0123456789"

Test(journal, fdatasync_eio_fails_the_batch_then_recovers)
{
	struct fx x;
	store_t *st;
	struct sku_doc d;
	struct store_stats s;
	char jp[512];
	off_t offs[8];

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 2);
	cr_expect(store_healthy(st));

	__atomic_store_n(&F.fail_sync, 1, __ATOMIC_RELEASE);
	/* Longer than the next record, so leftovers would show past it. */
	d = mkdoc(FAILED_SKU, 1, 1, 1);
	cr_expect_eq(store_append(st, &d, true), STOCK_ESYS);
	cr_expect_not(store_healthy(st));
	s = stats_of(st);
	cr_expect_eq(s.fsync_failures, 1);
	cr_expect_eq(s.queue_depth, 0);
	cr_expect_eq(store_get(st, FAILED_SKU, &d), STOCK_ENOENT, "a failed record is not applied");
	cr_expect(logcap_has(&x.log, "fdatasync failed"), "log: %s", x.log.text);
	/* Idle, the flusher cuts the failed bytes away and syncs: healthy again. */
	cr_expect(WAIT_FOR(store_healthy(st)), "no recovery without traffic");

	d = mkdoc("after", 2, 2, 2);
	cr_expect_eq(store_append(st, &d, true), 0);
	cr_expect(store_healthy(st), "a committed batch makes it healthy again");
	store_close(st);

	journal_path(&x, jp, sizeof jp);
	cr_expect_eq(record_offsets(jp, offs, 8), 3, "the failed record was cut away");
	st = fx_open(&x);
	cr_expect_eq(store_get(st, FAILED_SKU, &d), STOCK_ENOENT);
	expect_doc(st, "after", 2, 2, 2);
	expect_n(st, 2, -1);
	cr_expect_eq(stats_of(st).torn_bytes_cut, 0);
	store_close(st);
	fx_fini(&x);
}

Test(journal, short_write_then_enospc_leaves_no_trace)
{
	struct fx x;
	store_t *st;
	struct sku_doc d;
	char jp[512];
	off_t offs[8];

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 2);
	__atomic_store_n(&F.short_write, 1, __ATOMIC_RELEASE);
	__atomic_store_n(&F.fail_sync, 3, __ATOMIC_RELEASE); /* the idle probes fail too */
	d = mkdoc(FAILED_SKU, 1, 1, 1);
	cr_expect_eq(store_append(st, &d, true), STOCK_ESYS);
	cr_expect_not(store_healthy(st));
	cr_expect(WAIT_FOR(stats_of(st).fsync_failures >= 4), "the batch and three probes");
	cr_expect_eq(__atomic_load_n(&F.fail_sync, __ATOMIC_ACQUIRE), 0);
	d = mkdoc("after", 2, 2, 2);
	cr_expect_eq(store_append(st, &d, true), 0);
	cr_expect(store_healthy(st));
	store_close(st);

	journal_path(&x, jp, sizeof jp);
	cr_expect_eq(record_offsets(jp, offs, 8), 3);
	st = fx_open(&x);
	cr_expect_eq(store_get(st, FAILED_SKU, &d), STOCK_ENOENT);
	expect_doc(st, "after", 2, 2, 2);
	cr_expect_eq(stats_of(st).torn_bytes_cut, 0, "the half record was cut before the retry");
	store_close(st);
	fx_fini(&x);
}

Test(journal, write_behind_survives_a_failed_batch)
{
	struct fx x;
	store_t *st;
	struct sku_doc d;
	int rc = -1;

	fx_init(&x);
	st = fx_open(&x);
	__atomic_store_n(&F.fail_sync, 1, __ATOMIC_RELEASE);
	d = mkdoc("wb", 5, 5, 5);
	cr_assert_eq(store_append(st, &d, false), 0);
	for (int i = 0; i < 10 && (rc = store_sync(st)) != 0; i++)
		cr_expect_eq(rc, STOCK_ESYS);
	cr_assert_eq(rc, 0);
	cr_expect_eq(stats_of(st).fsync_failures, 1);
	expect_doc(st, "wb", 5, 5, 5);
	cr_expect(store_healthy(st));
	store_close(st);
	st = fx_open(&x);
	expect_doc(st, "wb", 5, 5, 5);
	store_close(st);
	fx_fini(&x);
}

Test(journal, queue_limit_gives_backpressure)
{
	struct fx x;
	store_t *st;
	pthread_t th[2];
	struct one_append a[2];
	struct sku_doc d = mkdoc("third", 1, 1, 1);

	fx_init(&x);
	x.opt.queue_limit = 2;
	st = fx_open(&x);
	gate_set(true);
	for (int i = 0; i < 2; i++) {
		a[i].st = st;
		a[i].doc = mkdoc(i ? "second" : "first", 1, 1, 1);
		a[i].durable = true;
		cr_assert_eq(pthread_create(&th[i], NULL, one_append_fn, &a[i]), 0);
		cr_assert(WAIT_FOR(queue_depth(st) == (uint64_t)i + 1));
	}
	cr_expect_eq(store_append(st, &d, true), STOCK_EBUSY);
	cr_expect_eq(store_append(st, &d, false), STOCK_EBUSY);
	cr_expect_eq(stats_of(st).queue_rejects, 2);
	cr_expect_eq(stats_of(st).records, 2, "nothing was queued");
	gate_set(false);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].rc, 0);
	}
	cr_expect_eq(store_append(st, &d, true), 0, "room again");
	cr_expect_eq(store_get(st, "third", &d), 0);
	store_close(st);
	fx_fini(&x);
}

/* ====================================================================== */
/* The journal: snapshots                                               */
/* ====================================================================== */

Test(journal, snapshot_rotates_the_journal)
{
	struct fx x;
	store_t *st;
	char jp[512], sp[600];
	off_t offs[16];
	unsigned char buf[256];
	struct sku_doc d;
	int fd;

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 10);
	d = mkdoc("sku-0", 100, 0, 1); /* a duplicate of a state already there */
	cr_assert_eq(store_append(st, &d, true), 0);
	cr_assert_eq(store_snapshot(st), 0);
	cr_expect_eq(stats_of(st).snapshots, 1);
	cr_expect(file_exists(&x, "snapshot.bson"));
	cr_expect_not(file_exists(&x, "snapshot.bson.tmp"));
	cr_expect_not(file_exists(&x, "journal-0000000000000001.jnl"), "old journal deleted");
	journal_path(&x, jp, sizeof jp);
	cr_expect_not_null(strstr(jp, "journal-0000000000000002.jnl"), "%s", jp);
	cr_expect_eq(file_size(jp), 0);
	cr_expect_eq(store_snapshot(st), 0, "nothing new: a no-op");
	cr_expect_eq(stats_of(st).snapshots, 1);

	/* The snapshot: a header record, then the documents, same framing. */
	snprintf(sp, sizeof sp, "%s/snapshot.bson", x.dir);
	cr_assert_eq(record_offsets(sp, offs, 16), 11);
	fd = open(sp, O_RDONLY);
	cr_assert_eq(pread(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
	{
		bson_t b;
		bson_iter_t it;

		cr_assert(bson_init_static(&b, buf + 20, le32(buf + 8)));
		cr_assert(bson_iter_init_find(&it, &b, "format"));
		cr_expect_str_eq(bson_iter_utf8(&it, NULL), "libstock-snapshot");
		cr_assert(bson_iter_init_find(&it, &b, "count"));
		cr_expect_eq(bson_iter_int64(&it), 10);
		cr_assert(bson_iter_init_find(&it, &b, "journal"));
		cr_expect_eq(bson_iter_int64(&it), 2);
	}
	cr_assert_eq(pread(fd, buf, sizeof buf, offs[1]), (ssize_t)sizeof buf);
	close(fd);
	{
		bson_t b;
		bson_iter_t it;

		cr_assert(bson_init_static(&b, buf + 20, le32(buf + 8)));
		cr_assert(bson_iter_init_find(&it, &b, "_id") && BSON_ITER_HOLDS_UTF8(&it));
		cr_assert(bson_iter_init_find(&it, &b, "version") && BSON_ITER_HOLDS_INT64(&it));
	}

	d = mkdoc("late", 7, 7, 7);
	cr_assert_eq(store_append(st, &d, true), 0);
	cr_expect_gt(file_size(jp), 0);
	store_close(st);

	st = fx_open(&x);
	expect_n(st, 10, -1);
	expect_doc(st, "late", 7, 7, 7);
	cr_expect_eq(stats_of(st).replayed_records, 11, "10 from the snapshot, 1 from the journal");
	store_close(st);

	/* With the final snapshot on close, the journal ends up empty. */
	x.opt.no_close_snapshot = false;
	st = fx_open(&x);
	store_close(st);
	cr_expect_eq(count_files(&x, "journal-"), 1);
	journal_path(&x, jp, sizeof jp);
	cr_expect_eq(file_size(jp), 0);
	st = fx_open(&x);
	expect_doc(st, "late", 7, 7, 7);
	cr_expect_eq(stats_of(st).docs, 11);
	store_close(st);
	fx_fini(&x);
}

Test(journal, automatic_snapshots)
{
	struct fx x;
	store_t *st;

	fx_init(&x);
	x.opt.snapshot_every = 10;
	st = fx_open(&x);
	append_n(st, 35);
	cr_assert(WAIT_FOR(stats_of(st).snapshots >= 1));
	store_close(st);
	cr_expect(file_exists(&x, "snapshot.bson"));
	cr_expect_not(file_exists(&x, "journal-0000000000000001.jnl"));
	st = fx_open(&x);
	expect_n(st, 35, -1);
	store_close(st);
	fx_fini(&x);
}

struct snap_race {
	store_t *st;
	int id;
	uint64_t acked;
	int failures;
};

static void *
snap_race_worker(void *p)
{
	struct snap_race *a = p;

	for (uint64_t v = 1; v <= 400; v++) {
		char sku[32];
		struct sku_doc d;

		snprintf(sku, sizeof sku, "r-%d-%d", a->id, (int)(v % 3));
		d = mkdoc(sku, 1000 - v, v, v);
		if (store_append(a->st, &d, true) == 0)
			__atomic_store_n(&a->acked, v, __ATOMIC_RELAXED); /* main polls it */
		else
			a->failures++;
	}
	return NULL;
}

/*
 * Four @worker threads (ids 0..3) commit to @st while this thread takes
 * snapshots back to back until each has acknowledged its @last commit.
 * Every commit must succeed. Returns the number of snapshots taken.
 */
static int
snapshot_while_committing(store_t *st, void *(*worker)(void *), uint64_t last)
{
	pthread_t th[4];
	struct snap_race a[4];
	int snaps = 0, done;

	memset(a, 0, sizeof a);
	for (int i = 0; i < 4; i++) {
		a[i].st = st;
		a[i].id = i;
		cr_assert_eq(pthread_create(&th[i], NULL, worker, &a[i]), 0);
	}
	do {
		cr_assert_eq(store_snapshot(st), 0);
		snaps++;
		done = 0;
		for (int i = 0; i < 4; i++)
			done += __atomic_load_n(&a[i].acked, __ATOMIC_RELAXED) == last;
	} while (done < 4 && snaps < 100000);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].failures, 0);
	}
	return snaps;
}

Test(journal, snapshots_during_appends_lose_nothing)
{
	struct fx x;
	store_t *st;

	fx_init(&x);
	st = fx_open(&x);
	(void)snapshot_while_committing(st, snap_race_worker, 400);
	cr_assert_eq(store_snapshot(st), 0);
	store_close(st);
	cr_expect_eq(count_files(&x, "journal-"), 1);
	st = fx_open(&x);
	for (int i = 0; i < 4; i++) {
		for (uint64_t v = 398; v <= 400; v++) {
			char sku[32];

			snprintf(sku, sizeof sku, "r-%d-%d", i, (int)(v % 3));
			expect_doc(st, sku, 1000 - v, v, v);
		}
	}
	store_close(st);
	fx_fini(&x);
}

Test(journal, failed_snapshot_keeps_the_journal)
{
	struct fx x;
	store_t *st;

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 5);
	__atomic_store_n(&F.fail_snap_sync, 1, __ATOMIC_RELEASE);
	cr_expect_eq(store_snapshot(st), STOCK_ESYS);
	cr_expect_eq(stats_of(st).snapshot_failures, 1);
	cr_expect(store_healthy(st), "the journal is fine; only compaction failed");
	cr_expect_not(file_exists(&x, "snapshot.bson"));
	cr_expect_not(file_exists(&x, "snapshot.bson.tmp"));
	cr_expect(file_exists(&x, "journal-0000000000000001.jnl"));
	append_n(st, 5);
	store_close(st);
	st = fx_open(&x);
	expect_n(st, 5, -1);
	cr_expect_eq(store_snapshot(st), 0);
	store_close(st);
	cr_expect_eq(count_files(&x, "journal-"), 1);
	st = fx_open(&x);
	expect_n(st, 5, -1);
	store_close(st);
	fx_fini(&x);
}

Test(journal, corrupt_snapshot_is_refused)
{
	struct fx x;
	store_t *st = NULL;
	char sp[600];
	off_t offs[16];
	int victim;

	fx_init(&x);
	x.opt.no_close_snapshot = false;
	st = fx_open(&x);
	append_n(st, 5);
	store_close(st);
	snprintf(sp, sizeof sp, "%s/snapshot.bson", x.dir);
	cr_assert_eq(record_offsets(sp, offs, 16), 6);
	victim = record_sku_index(sp, offs[3]);
	cr_assert_geq(victim, 0);
	flip_byte(sp, offs[3] + 25);

	cr_expect_eq(fx_try_open(&x, &st), STOCK_EINVAL);
	cr_expect_not_null(strstr(x.err, "snapshot.bson"), "%s", x.err);
	{
		char want[64];

		snprintf(want, sizeof want, "offset %lld", (long long)offs[3]);
		cr_expect_not_null(strstr(x.err, want), "%s", x.err);
	}
	x.opt.repair = true;
	st = fx_open(&x);
	expect_n(st, 5, victim);
	store_close(st);
	x.opt.repair = false;
	st = fx_open(&x);
	expect_n(st, 5, victim);
	store_close(st);
	fx_fini(&x);
}

Test(journal, journal_covered_by_the_snapshot_is_removed)
{
	struct fx x;
	store_t *st;
	char old[600], cmd[1400];

	/* A crash between the snapshot's rename and the journal's deletion. */
	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 5);
	store_close(st);
	snprintf(old, sizeof old, "%s/journal-0000000000000001.jnl", x.dir);
	snprintf(cmd, sizeof cmd, "cp '%s' '%s.keep'", old, old);
	cr_assert_eq(system(cmd), 0);
	st = fx_open(&x);
	cr_assert_eq(store_snapshot(st), 0);
	store_close(st);
	cr_expect_not(file_exists(&x, "journal-0000000000000001.jnl"));
	snprintf(cmd, sizeof cmd, "mv '%s.keep' '%s'", old, old);
	cr_assert_eq(system(cmd), 0);
	st = fx_open(&x);
	cr_expect_not(file_exists(&x, "journal-0000000000000001.jnl"));
	cr_expect(logcap_has(&x.log, "covered by the snapshot"), "log: %s", x.log.text);
	expect_n(st, 5, -1);
	cr_expect_eq(stats_of(st).replayed_records, 5, "only the snapshot was read");
	store_close(st);
	fx_fini(&x);
}

Test(journal, leftover_temp_snapshot_is_removed)
{
	struct fx x;
	store_t *st;
	char p[600];
	FILE *f;

	fx_init(&x);
	snprintf(p, sizeof p, "%s/snapshot.bson.tmp", x.dir);
	f = fopen(p, "w");
	fputs("half a snapshot", f);
	fclose(f);
	st = fx_open(&x);
	cr_expect_not(file_exists(&x, "snapshot.bson.tmp"));
	cr_expect(logcap_has(&x.log, "unfinished snapshot"), "log: %s", x.log.text);
	store_close(st);
	fx_fini(&x);
}

/* ====================================================================== */
/* The journal: a real crash                                            */
/* ====================================================================== */

struct crash_shared {
	uint64_t acked[4];
	int open_failed;
};

struct crash_arg {
	store_t *st;
	struct crash_shared *sh;
	int id;
};

static void *
crash_worker(void *p)
{
	struct crash_arg *a = p;

	for (uint64_t v = 1;; v++) {
		char sku[32];
		struct sku_doc d;

		snprintf(sku, sizeof sku, "c-%d", a->id);
		d = mkdoc(sku, 1000000 - v, v, v);
		if (store_append(a->st, &d, true) == 0)
			__atomic_store_n(&a->sh->acked[a->id], v, __ATOMIC_RELEASE);
	}
	return NULL;
}

static uint64_t
crash_total(struct crash_shared *sh)
{
	uint64_t t = 0;

	for (int i = 0; i < 4; i++)
		t += __atomic_load_n(&sh->acked[i], __ATOMIC_ACQUIRE);
	return t;
}

Test(journal, sigkill_loses_no_acknowledged_append)
{
	struct fx x;
	struct crash_shared *sh;
	store_t *st;
	pid_t pid;
	int status;

	fx_init(&x);
	x.opt.snapshot_every = 100; /* crash in any phase, snapshots included */
	x.opt.io = NULL;
	sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(sh, MAP_FAILED);
	memset(sh, 0, sizeof *sh);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		pthread_t th[4];
		struct crash_arg a[4];

		if (store_open(&st, &x.opt, NULL, 0) != 0) {
			sh->open_failed = 1;
			_exit(1);
		}
		for (int i = 0; i < 4; i++) {
			a[i] = (struct crash_arg){ st, sh, i };
			pthread_create(&th[i], NULL, crash_worker, &a[i]);
		}
		for (;;)
			pause();
	}
	cr_assert(WAIT_FOR(crash_total(sh) >= 600 || sh->open_failed));
	kill(pid, SIGKILL);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert_eq(sh->open_failed, 0);

	st = fx_open(&x);
	for (int i = 0; i < 4; i++) {
		char sku[32];
		struct sku_doc d;
		uint64_t acked = sh->acked[i];

		snprintf(sku, sizeof sku, "c-%d", i);
		if (acked == 0)
			continue;
		cr_assert_eq(store_get(st, sku, &d), 0, "%s lost", sku);
		cr_expect_geq(d.version, acked, "%s: version %llu on disk, %llu acknowledged", sku,
		    (unsigned long long)d.version, (unsigned long long)acked);
		cr_expect_eq(d.sold, d.version);
	}
	store_close(st);
	munmap(sh, sizeof *sh);
	fx_fini(&x);
}

/* ====================================================================== */
/* Keyed records, held, store_commit                                      */
/* ====================================================================== */

/* A small BSON value {"n": @n, "s": @s} in @b (bson_destroy after use). */
static void
mkval(bson_t *b, int64_t n, const char *s)
{
	bson_init(b);
	bson_append_int64(b, "n", 1, n);
	bson_append_utf8(b, "s", 1, s, -1);
}

static struct store_kv
mkkv(const char *key, uint64_t version, const bson_t *val)
{
	struct store_kv kv = { key, strlen(key), version, NULL, 0 };

	if (val != NULL) {
		kv.value = bson_get_data(val);
		kv.value_len = val->len;
	}
	return kv;
}

static int
put_kv(store_t *st, const char *key, uint64_t version, const bson_t *val)
{
	struct store_kv kv = mkkv(key, version, val);

	return store_commit(st, NULL, 0, &kv, 1, true);
}

/* The live value of @key: its version and field "n", or ENOENT. */
static int
get_kv(store_t *st, const char *key, uint64_t *version, int64_t *n)
{
	uint8_t buf[STORE_VALUE_MAX];
	size_t len = 0;
	bson_t b;
	bson_iter_t it;
	int rc = store_kv_get(st, key, strlen(key), buf, sizeof buf, &len, version);

	if (rc != 0)
		return rc;
	cr_assert(bson_init_static(&b, buf, len), "%s: the value is a document", key);
	*n = bson_iter_init_find(&it, &b, "n") ? bson_iter_int64(&it) : -1;
	return 0;
}

static void
expect_kv(store_t *st, const char *key, uint64_t version, int64_t n)
{
	uint64_t v = 0;
	int64_t got = 0;
	int rc = get_kv(st, key, &v, &got);

	cr_assert_eq(rc, 0, "kv_get(%s): %s", key, stock_err_name(rc));
	cr_expect_eq(v, version, "%s: version %llu, want %llu", key, (unsigned long long)v,
	    (unsigned long long)version);
	cr_expect_eq(got, n, "%s: n %lld, want %lld", key, (long long)got, (long long)n);
}

static void
expect_no_kv(store_t *st, const char *key)
{
	uint64_t v;
	int64_t n;

	cr_expect_eq(get_kv(st, key, &v, &n), STOCK_ENOENT, "%s should be absent", key);
}

static void
expect_held(store_t *st, const char *sku, uint64_t held)
{
	struct sku_doc d;

	cr_assert_eq(store_get(st, sku, &d), 0, "get(%s)", sku);
	cr_expect_eq(d.held, held, "%s: held %llu, want %llu", sku, (unsigned long long)d.held,
	    (unsigned long long)held);
}

Test(kv, put_overwrite_lower_version_and_delete)
{
	struct fx x;
	store_t *st;
	bson_t v1, v2, v3;

	fx_init(&x);
	mkval(&v1, 1, "one");
	mkval(&v2, 2, "two");
	mkval(&v3, 3, "three");
	st = fx_open(&x);
	cr_assert_eq(put_kv(st, "hold/h_1", 1, &v1), 0);
	expect_kv(st, "hold/h_1", 1, 1);
	cr_assert_eq(put_kv(st, "hold/h_1", 3, &v3), 0);
	expect_kv(st, "hold/h_1", 3, 3);
	cr_assert_eq(put_kv(st, "hold/h_1", 2, &v2), 0, "a lower version is accepted ...");
	expect_kv(st, "hold/h_1", 3, 3); /* ... and loses */
	cr_assert_eq(put_kv(st, "hold/h_2", 1, &v2), 0);
	cr_expect_eq(stats_of(st).kv, 2);
	cr_expect_eq(stats_of(st).docs, 0, "keys are not SKUs");
	/* A key equal to a SKU is a different record. */
	{
		struct sku_doc d = mkdoc("hold/h_1", 9, 9, 9), g;

		cr_assert_eq(store_append(st, &d, true), 0);
		cr_assert_eq(store_get(st, "hold/h_1", &g), 0);
		expect_kv(st, "hold/h_1", 3, 3);
	}
	/* Delete: a tombstone of a higher version. */
	cr_assert_eq(put_kv(st, "hold/h_1", 4, NULL), 0);
	expect_no_kv(st, "hold/h_1");
	cr_expect_eq(stats_of(st).kv, 1);
	cr_assert_eq(put_kv(st, "hold/h_1", 4, &v2), 0);
	expect_no_kv(st, "hold/h_1"); /* the delete wins a tie */
	store_close(st);

	st = fx_open(&x);
	expect_no_kv(st, "hold/h_1");
	expect_kv(st, "hold/h_2", 1, 2);
	cr_expect_eq(stats_of(st).kv, 1);
	cr_assert_eq(put_kv(st, "hold/h_1", 5, &v1), 0, "a newer put revives it");
	expect_kv(st, "hold/h_1", 5, 1);
	store_close(st);
	st = fx_open(&x);
	expect_kv(st, "hold/h_1", 5, 1);
	store_close(st);
	bson_destroy(&v1);
	bson_destroy(&v2);
	bson_destroy(&v3);
	fx_fini(&x);
}

Test(kv, tombstone_survives_reopen_then_a_snapshot_drops_it)
{
	struct fx x;
	store_t *st;
	bson_t v;
	char sp[600];
	off_t offs[8];

	fx_init(&x);
	mkval(&v, 7, "x");
	st = fx_open(&x);
	cr_assert_eq(put_kv(st, "idem/k", 5, &v), 0);
	cr_assert_eq(put_kv(st, "idem/k", 6, NULL), 0);
	store_close(st);

	st = fx_open(&x); /* journal only: the tombstone is replayed */
	expect_no_kv(st, "idem/k");
	cr_assert_eq(put_kv(st, "idem/k", 4, &v), 0);
	expect_no_kv(st, "idem/k"); /* version 6 deleted it: 4 loses */
	cr_assert_eq(store_snapshot(st), 0);
	/* The snapshot holds no tombstone and the index dropped it: a lower
	   version is now a fresh record, in memory and after a reopen alike. */
	snprintf(sp, sizeof sp, "%s/snapshot.bson", x.dir);
	cr_expect_eq(record_offsets(sp, offs, 8), 1, "only the header");
	cr_assert_eq(put_kv(st, "idem/k", 3, &v), 0);
	expect_kv(st, "idem/k", 3, 7);
	store_close(st);
	st = fx_open(&x);
	expect_kv(st, "idem/k", 3, 7);
	store_close(st);
	bson_destroy(&v);
	fx_fini(&x);
}

/* Snapshot header field @name as an integer (-1: absent). */
static int64_t
snap_header_int(const char *path, const char *name)
{
	unsigned char buf[256];
	int fd = open(path, O_RDONLY);
	bson_t b;
	bson_iter_t it;
	int64_t r = -1;

	cr_assert_geq(fd, 0);
	cr_assert_gt(pread(fd, buf, sizeof buf, 0), 20);
	close(fd);
	cr_assert(bson_init_static(&b, buf + 20, le32(buf + 8)));
	if (bson_iter_init_find(&it, &b, name))
		r = BSON_ITER_HOLDS_INT32(&it) ? bson_iter_int32(&it) : bson_iter_int64(&it);
	return r;
}

Test(kv, keyed_records_survive_snapshot_and_reopen)
{
	struct fx x;
	store_t *st;
	bson_t v;
	char sp[600];
	off_t offs[16];

	fx_init(&x);
	st = fx_open(&x);
	append_n(st, 3);
	cr_assert_eq(store_snapshot(st), 0);
	snprintf(sp, sizeof sp, "%s/snapshot.bson", x.dir);
	cr_expect_eq(snap_header_int(sp, "format_version"), 1, "no keyed record: format 1");
	for (int i = 0; i < 5; i++) {
		char key[32];

		snprintf(key, sizeof key, "order/o_%d", i);
		mkval(&v, i, key);
		cr_assert_eq(put_kv(st, key, (uint64_t)i + 1, &v), 0);
		bson_destroy(&v);
	}
	cr_assert_eq(put_kv(st, "order/o_4", 9, NULL), 0);
	cr_assert_eq(store_snapshot(st), 0);
	cr_expect_eq(snap_header_int(sp, "format_version"), 2);
	cr_expect_eq(snap_header_int(sp, "count"), 3 + 4, "SKU documents + live keyed records");
	cr_expect_eq(record_offsets(sp, offs, 16), 1 + 3 + 4);
	store_close(st);

	st = fx_open(&x);
	expect_n(st, 3, -1);
	for (int i = 0; i < 4; i++) {
		char key[32];

		snprintf(key, sizeof key, "order/o_%d", i);
		expect_kv(st, key, (uint64_t)i + 1, i);
	}
	expect_no_kv(st, "order/o_4");
	cr_expect_eq(stats_of(st).kv, 4);
	cr_expect_eq(stats_of(st).replayed_records, 7, "all from the snapshot");
	store_close(st);
	fx_fini(&x);
}

struct kv_walk {
	store_t *st;
	int n;
	int stop_at;
	char keys[8][64];
};

static int
kv_walk_fn(const char *key, size_t key_len, uint64_t version, const uint8_t *value,
    size_t value_len, void *arg)
{
	struct kv_walk *w = arg;
	bson_t b;

	cr_expect(bson_init_static(&b, value, value_len));
	cr_expect_gt(version, 0);
	if (w->n < 8)
		snprintf(w->keys[w->n], sizeof w->keys[0], "%.*s", (int)key_len, key);
	if (w->st != NULL) {
		/* No lock is held: the callback may commit. */
		struct sku_doc d = mkdoc("from-the-walk", 1, 1, (uint64_t)w->n + 1);

		cr_expect_eq(store_commit(w->st, &d, 1, NULL, 0, true), 0);
	}
	return ++w->n == w->stop_at ? 42 : 0;
}

static bool
walk_has(const struct kv_walk *w, const char *key)
{
	for (int i = 0; i < w->n && i < 8; i++)
		if (strcmp(w->keys[i], key) == 0)
			return true;
	return false;
}

Test(kv, prefix_foreach)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	bson_t v;
	struct kv_walk w;
	static const char *const keys[] = { "hold/a", "hold/b", "holdx", "idem/hold/a", "hold/" };

	mkval(&v, 1, "v");
	for (int i = 0; i < 5; i++)
		cr_assert_eq(put_kv(st, keys[i], 1, &v), 0);
	cr_assert_eq(put_kv(st, "hold/dead", 1, &v), 0);
	cr_assert_eq(put_kv(st, "hold/dead", 2, NULL), 0);

	memset(&w, 0, sizeof w);
	cr_assert_eq(store_kv_foreach(st, "hold/", 5, kv_walk_fn, &w), 0);
	cr_expect_eq(w.n, 3, "hold/a, hold/b, hold/ (deleted ones are not live)");
	cr_expect(walk_has(&w, "hold/a") && walk_has(&w, "hold/b") && walk_has(&w, "hold/"));
	memset(&w, 0, sizeof w);
	cr_assert_eq(store_kv_foreach(st, NULL, 0, kv_walk_fn, &w), 0);
	cr_expect_eq(w.n, 5);
	memset(&w, 0, sizeof w);
	cr_assert_eq(store_kv_foreach(st, "nothing", 7, kv_walk_fn, &w), 0);
	cr_expect_eq(w.n, 0);
	memset(&w, 0, sizeof w);
	w.stop_at = 2;
	w.st = st;
	cr_expect_eq(store_kv_foreach(st, "", 0, kv_walk_fn, &w), 42);
	cr_expect_eq(w.n, 2);
	expect_doc(st, "from-the-walk", 1, 1, 2);
	cr_expect_eq(store_kv_foreach(NULL, "", 0, kv_walk_fn, &w), STOCK_EINVAL);
	cr_expect_eq(store_kv_foreach(st, "", 0, NULL, &w), STOCK_EINVAL);
	cr_expect_eq(store_kv_foreach(st, NULL, 3, kv_walk_fn, &w), STOCK_EINVAL);
	store_close(st);
	bson_destroy(&v);
	place_destroy(place);
}

/* A walk whose callback replaces each record it is shown, and one it was not shown yet. */
struct kv_rewrite {
	store_t *st;
	int seen, wrong;
};

static int
kv_rewrite_fn(const char *key, size_t klen, uint64_t version, const uint8_t *val, size_t vlen,
    void *arg)
{
	struct kv_rewrite *w = arg;
	char k[64];
	bson_t b, v;
	bson_iter_t it;
	int64_t n = -1;

	cr_assert(klen < sizeof k);
	memcpy(k, key, klen);
	k[klen] = '\0';
	if (bson_init_static(&b, val, vlen) && bson_iter_init_find(&it, &b, "n"))
		n = bson_iter_int64(&it);
	/* What the walk was shown is the record as of the copy: version 1, n = 1. */
	w->wrong += version != 1 || n != 1;
	w->seen++;
	mkval(&v, 2, "replaced while it was being read");
	cr_assert_eq(put_kv(w->st, k, 2, &v), 0);
	k[strlen(k) - 1] = k[strlen(k) - 1] == 'z' ? 'a' : (char)(k[strlen(k) - 1] + 1);
	cr_assert_eq(put_kv(w->st, k, 3, &v), 0); /* the next key, before it is shown */
	bson_destroy(&v);
	return 0;
}

/* The walk reads pointers to the index's entries without the lock: an entry
   replaced meanwhile must stay readable (AddressSanitizer checks it too). */
Test(kv, foreach_callback_may_replace_what_it_reads)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	struct kv_rewrite w = { st, 0, 0 };
	bson_t v;
	char key[16];

	mkval(&v, 1, "v");
	for (char c = 'a'; c <= 'z'; c++) {
		snprintf(key, sizeof key, "walk/%c", c);
		cr_assert_eq(put_kv(st, key, 1, &v), 0);
	}
	cr_assert_eq(store_kv_foreach(st, "walk/", 5, kv_rewrite_fn, &w), 0);
	cr_expect_eq(w.seen, 26);
	cr_expect_eq(w.wrong, 0, "%d records were not as of the copy", w.wrong);
	for (char c = 'a'; c <= 'z'; c++) {
		snprintf(key, sizeof key, "walk/%c", c);
		expect_kv(st, key, 3, 2);
	}
	store_close(st);
	bson_destroy(&v);
	place_destroy(place);
}

static void *
kv_race_worker(void *p)
{
	struct snap_race *a = p;

	for (uint64_t v = 1; v <= 300; v++) {
		char key[32];
		bson_t val;

		snprintf(key, sizeof key, "race/%d/%d", a->id, (int)(v % 5));
		mkval(&val, (int64_t)v, "race");
		if (put_kv(a->st, key, v, &val) == 0)
			__atomic_store_n(&a->acked, v, __ATOMIC_RELAXED); /* main polls it */
		else
			a->failures++;
		bson_destroy(&val);
	}
	return NULL;
}

/* Snapshots copy the keyed index as pointers and write it while records
   replace it: every acknowledged record survives, nothing is read freed. */
Test(kv, snapshots_during_keyed_commits_lose_nothing)
{
	struct fx x;
	store_t *st;

	fx_init(&x);
	st = fx_open(&x);
	cr_expect_gt(snapshot_while_committing(st, kv_race_worker, 300), 1);
	store_close(st);
	st = fx_open(&x);
	for (int i = 0; i < 4; i++)
		for (uint64_t v = 296; v <= 300; v++) {
			char key[32];

			snprintf(key, sizeof key, "race/%d/%d", i, (int)(v % 5));
			expect_kv(st, key, v, (int64_t)v);
		}
	store_close(st);
	fx_fini(&x);
}

/* An automatic snapshot waits for at least as many journal records as a
   snapshot would write (the live records at open, then the last snapshot's):
   its cost, O(live records), is paid at most once per journal record. */
Test(kv, automatic_snapshots_wait_as_long_as_the_last_was_large)
{
	struct fx x;
	store_t *st;
	bson_t v;
	char key[32];

	fx_init(&x);
	st = fx_open(&x); /* snapshot_every 0: no automatic snapshot yet */
	mkval(&v, 1, "v");
	for (int i = 0; i < 300; i++) {
		snprintf(key, sizeof key, "live/%d", i);
		cr_assert_eq(put_kv(st, key, 1, &v), 0);
	}
	cr_assert_eq(store_snapshot(st), 0);
	store_close(st);
	x.opt.snapshot_every = 10;
	st = fx_open(&x); /* 300 live records */
	for (int i = 0; i < 200; i++) {
		snprintf(key, sizeof key, "live/%d", i);
		cr_assert_eq(put_kv(st, key, 2, &v), 0);
	}
	/* 200 < 300: none was asked for (the decision is made before a durable
	   commit returns; give a wrong request time to run). */
	sleep_ms(200);
	cr_expect_eq(stats_of(st).snapshots, 0, "a snapshot after 200 records with 300 live");
	for (int i = 200; i < 300; i++) {
		snprintf(key, sizeof key, "live/%d", i);
		cr_assert_eq(put_kv(st, key, 2, &v), 0);
	}
	cr_expect(WAIT_FOR(stats_of(st).snapshots == 1), "no snapshot after 300 records");
	/* That one wrote 300 too: again none before 300 more. */
	for (int i = 0; i < 250; i++) {
		snprintf(key, sizeof key, "live/%d", i);
		cr_assert_eq(put_kv(st, key, 3, &v), 0);
	}
	sleep_ms(200);
	cr_expect_eq(stats_of(st).snapshots, 1, "a second snapshot after 250 records");
	store_close(st);
	bson_destroy(&v);
	fx_fini(&x);
}

Test(kv, get_with_a_small_buffer)
{
	struct place *place = place_create();
	store_t *st = place_open(place);
	bson_t v;
	uint8_t buf[STORE_VALUE_MAX];
	size_t len = 0;
	uint64_t ver = 0;

	mkval(&v, 5, "a value of some length");
	cr_assert_eq(put_kv(st, "k", 8, &v), 0);
	cr_expect_eq(store_kv_get(st, "k", 1, buf, 4, &len, &ver), STOCK_ERANGE);
	cr_expect_eq(len, v.len, "the size needed");
	cr_expect_eq(ver, 8);
	len = 0;
	cr_expect_eq(store_kv_get(st, "k", 1, NULL, 0, &len, &ver), STOCK_ERANGE);
	cr_expect_eq(len, v.len);
	cr_expect_eq(store_kv_get(st, "k", 1, buf, v.len, &len, &ver), 0, "exactly enough");
	cr_expect_eq(memcmp(buf, bson_get_data(&v), v.len), 0);
	cr_expect_eq(store_kv_get(st, "kk", 2, buf, sizeof buf, &len, &ver), STOCK_ENOENT);
	cr_expect_eq(store_kv_get(st, "", 0, buf, sizeof buf, &len, &ver), STOCK_EINVAL);
	cr_expect_eq(store_kv_get(st, NULL, 1, buf, sizeof buf, &len, &ver), STOCK_EINVAL);
	cr_expect_eq(store_kv_get(st, "k", 1, NULL, 5, &len, &ver), STOCK_EINVAL);
	cr_expect_eq(store_kv_get(st, "k", 1, buf, 5, NULL, &ver), STOCK_EINVAL);
	cr_expect_eq(store_kv_get(st, "k", 1, buf, 5, &len, NULL), STOCK_EINVAL);
	cr_expect_eq(store_kv_get(NULL, "k", 1, buf, 5, &len, &ver), STOCK_EINVAL);
	cr_expect_eq(store_kv_get(st, "k", STORE_KEY_MAX + 1, buf, 5, &len, &ver), STOCK_EINVAL);
	store_close(st);
	bson_destroy(&v);
	place_destroy(place);
}

Test(kv, bad_records_are_refused_and_nothing_is_written)
{
	struct fx x;
	store_t *st;
	bson_t v, big;
	char key[STORE_KEY_MAX + 2], jp[512];
	uint8_t raw[64], *bigbuf;
	struct store_kv kv[STORE_COMMIT_MAX + 1];
	struct sku_doc docs[STORE_COMMIT_MAX + 1], bad = mkdoc("bad", STOCK_COUNT_MAX + 1, 0, 1);
	struct sku_doc badheld = mkdoc("bad", 0, 0, 1);

	fx_init(&x);
	st = fx_open(&x);
	mkval(&v, 1, "ok");
	memset(key, 'k', sizeof key);
	key[sizeof key - 1] = '\0'; /* STORE_KEY_MAX + 1 bytes */
#define BAD(...) cr_expect_eq(store_commit(__VA_ARGS__), STOCK_EINVAL, "%s", #__VA_ARGS__)
	kv[0] = mkkv("", 1, &v);
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv(key, 1, &v);
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv("nul", 1, &v);
	kv[0].key_len = 4; /* includes the NUL */
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv("bad-\xff", 1, &v);
	BAD(st, NULL, 0, kv, 1, false);
	kv[0] = mkkv("k", 0, &v);
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv("k", (uint64_t)INT64_MAX + 1, &v);
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv("k", 1, NULL);
	kv[0].value_len = 5; /* NULL value, non-zero length */
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv("k", 1, &v);
	kv[0].value_len = 4;
	BAD(st, NULL, 0, kv, 1, true);
	kv[0] = mkkv("k", 1, &v);
	kv[0].value_len = v.len + 1; /* does not match the document's own length */
	BAD(st, NULL, 0, kv, 1, true);
	memcpy(raw, bson_get_data(&v), v.len);
	raw[4] = 0x77; /* an unknown element type */
	kv[0] = mkkv("k", 1, NULL);
	kv[0].value = raw;
	kv[0].value_len = v.len;
	BAD(st, NULL, 0, kv, 1, true);
	/* Keys are UTF-8 too (libbson 1.23's bson_validate lets this through). */
	{
		bson_t odd;

		bson_init(&odd);
		bson_append_int64(&odd, "bad-\xff", 5, 1);
		kv[0] = mkkv("k", 1, &odd);
		BAD(st, NULL, 0, kv, 1, true);
		bson_destroy(&odd);
		/* A legacy type that carries a string: nothing writes one. */
		bson_init(&odd);
		bson_append_regex(&odd, "r", 1, "^a", "i");
		kv[0] = mkkv("k", 1, &odd);
		BAD(st, NULL, 0, kv, 1, true);
		bson_destroy(&odd);
	}
	/* One byte over the value limit. */
	bigbuf = calloc(1, STORE_VALUE_MAX + 1);
	bson_init(&big);
	bson_append_binary(&big, "b", 1, BSON_SUBTYPE_BINARY, bigbuf, STORE_VALUE_MAX + 1 - 13);
	cr_assert_eq(big.len, STORE_VALUE_MAX + 1);
	kv[0] = mkkv("k", 1, &big);
	BAD(st, NULL, 0, kv, 1, true);
	bson_destroy(&big);
	/* Counts, and one bad record among good ones. */
	BAD(st, NULL, 0, NULL, 0, true);
	BAD(st, NULL, 0, NULL, 1, true);
	BAD(st, NULL, 1, NULL, 0, true);
	for (int i = 0; i <= STORE_COMMIT_MAX; i++) {
		char sku[16];

		snprintf(sku, sizeof sku, "s%d", i);
		docs[i] = mkdoc(sku, 1, 1, 1);
		kv[i] = mkkv("fine", 1, &v);
	}
	BAD(st, docs, STORE_COMMIT_MAX + 1, NULL, 0, true);
	BAD(st, docs, 1, kv, STORE_COMMIT_MAX, true);
	BAD(st, NULL, 0, kv, STORE_COMMIT_MAX + 1, true);
	docs[3] = bad;
	BAD(st, docs, 4, kv, 2, true);
	kv[1] = mkkv("", 1, &v);
	BAD(st, docs, 2, kv, 2, true);
	badheld.held = STOCK_COUNT_MAX + 1;
	BAD(st, &badheld, 1, NULL, 0, true);
	cr_expect_eq(store_append(st, &badheld, true), STOCK_EINVAL);
	BAD(NULL, docs, 1, NULL, 0, true);
#undef BAD
	cr_expect_eq(stats_of(st).records, 0, "nothing was queued");
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_expect_eq(file_size(jp), 0, "nothing was written");

	/* The limits themselves are fine: the largest key and value, 64 records. */
	st = fx_open(&x);
	bson_init(&big);
	bson_append_binary(&big, "b", 1, BSON_SUBTYPE_BINARY, bigbuf, STORE_VALUE_MAX - 13);
	cr_assert_eq(big.len, STORE_VALUE_MAX);
	key[STORE_KEY_MAX] = '\0';
	kv[0] = mkkv(key, INT64_MAX, &big);
	cr_expect_eq(store_commit(st, NULL, 0, kv, 1, true), 0);
	for (int i = 0; i < STORE_COMMIT_MAX; i++)
		docs[i] = mkdoc("same", 1, 1, (uint64_t)i + 1);
	cr_expect_eq(store_commit(st, docs, STORE_COMMIT_MAX, NULL, 0, true), 0);
	expect_doc(st, "same", 1, 1, STORE_COMMIT_MAX);
	cr_assert_eq(store_snapshot(st), 0);
	store_close(st);
	st = fx_open(&x);
	{
		size_t len;
		uint64_t ver;
		uint8_t *out = malloc(STORE_VALUE_MAX);

		cr_assert_eq(store_kv_get(st, key, STORE_KEY_MAX, out, STORE_VALUE_MAX, &len, &ver), 0);
		cr_expect_eq(len, STORE_VALUE_MAX);
		cr_expect_eq(ver, (uint64_t)INT64_MAX);
		cr_expect_eq(memcmp(out, bson_get_data(&big), len), 0);
		free(out);
	}
	store_close(st);
	bson_destroy(&big);
	bson_destroy(&v);
	free(bigbuf);
	fx_fini(&x);
}

/* The BSON keys of the record at @off, comma-separated, into @out. */
static void
record_keys(const char *path, off_t off, char *out, size_t len)
{
	unsigned char buf[512];
	int fd = open(path, O_RDONLY);
	bson_t b;
	bson_iter_t it;
	size_t used = 0;
	ssize_t n;

	cr_assert_geq(fd, 0);
	n = pread(fd, buf, sizeof buf, off);
	close(fd);
	cr_assert_gt(n, 20);
	out[0] = '\0';
	cr_assert(bson_init_static(&b, buf + 20, le32(buf + 8)));
	cr_assert(bson_iter_init(&it, &b));
	while (bson_iter_next(&it))
		used += (size_t)snprintf(out + used, len - used, "%s%s", used ? "," : "",
		    bson_iter_key(&it));
}

Test(kv, held_roundtrips_through_journal_and_snapshot)
{
	struct fx x;
	store_t *st;
	struct sku_doc a = mkdoc("H", 10, 2, 1), b = mkdoc("noheld", 5, 0, 1);
	char jp[512], sp[600], keys[128];
	off_t offs[8];

	a.held = 3;
	fx_init(&x);
	st = fx_open(&x);
	cr_assert_eq(store_append(st, &a, true), 0);
	cr_assert_eq(store_append(st, &b, true), 0);
	expect_held(st, "H", 3);
	expect_held(st, "noheld", 0);
	/* A tie on version, stock and sold: the larger held wins, in any order. */
	a.held = 2;
	cr_assert_eq(store_append(st, &a, true), 0);
	expect_held(st, "H", 3);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_offsets(jp, offs, 8), 3);
	record_keys(jp, offs[0], keys, sizeof keys);
	cr_expect_str_eq(keys, "_id,stock,sold,version,held");
	record_keys(jp, offs[1], keys, sizeof keys);
	cr_expect_str_eq(keys, "_id,stock,sold,version", "held 0 is not written");

	st = fx_open(&x);
	expect_held(st, "H", 3);
	expect_doc(st, "H", 10, 2, 1);
	expect_held(st, "noheld", 0);
	cr_assert_eq(store_snapshot(st), 0);
	store_close(st);
	snprintf(sp, sizeof sp, "%s/snapshot.bson", x.dir);
	cr_expect_eq(snap_header_int(sp, "format_version"), 1);
	st = fx_open(&x);
	expect_held(st, "H", 3);
	expect_held(st, "noheld", 0);
	store_close(st);
	fx_fini(&x);
}

/* Write a journal of one batch holding the documents @docs (END on the last). */
static void
write_raw_journal(const char *path, bson_t *const *docs, int n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	cr_assert_geq(fd, 0);
	for (int i = 0; i < n; i++) {
		unsigned char hdr[20];
		uint32_t len = docs[i]->len, fl = i + 1 == n;

		memcpy(hdr, "LSJ1", 4);
		for (int k = 0; k < 4; k++) {
			hdr[8 + k] = (unsigned char)(len >> (8 * k));
			hdr[12 + k] = (unsigned char)(1u >> (8 * k));
			hdr[16 + k] = (unsigned char)(fl >> (8 * k));
		}
		{
			uint32_t crc = crc32c(crc32c(0, bson_get_data(docs[i]), len), hdr + 8, 12);

			for (int k = 0; k < 4; k++)
				hdr[4 + k] = (unsigned char)(crc >> (8 * k));
		}
		cr_assert_eq(write(fd, hdr, 20), 20);
		cr_assert_eq(write(fd, bson_get_data(docs[i]), len), (ssize_t)len);
	}
	close(fd);
}

Test(kv, old_and_hand_made_records_decode_exactly)
{
	struct fx x;
	store_t *st;
	char jp[600];
	bson_t d0, d1, k0, k1, val, *docs[4];

	fx_init(&x);
	snprintf(jp, sizeof jp, "%s/journal-0000000000000001.jnl", x.dir);
	/* Today's SKU record (no held, int32 counts) and a keyed record. */
	bson_init(&d0);
	bson_append_utf8(&d0, "_id", 3, "old", -1);
	bson_append_int32(&d0, "stock", 5, 4);
	bson_append_int64(&d0, "sold", 4, 1);
	bson_append_int64(&d0, "version", 7, 2);
	bson_append_utf8(&d0, "note", 4, "from mongo", -1); /* ignored, as ever */
	mkval(&val, 11, "v");
	bson_init(&k0);
	bson_append_utf8(&k0, "k", 1, "idem/a", -1);
	bson_append_int64(&k0, "v", 1, 3);
	bson_append_document(&k0, "val", 3, &val);
	docs[0] = &d0;
	docs[1] = &k0;
	write_raw_journal(jp, docs, 2);
	st = fx_open(&x);
	expect_doc(st, "old", 4, 1, 2);
	expect_held(st, "old", 0);
	expect_kv(st, "idem/a", 3, 11);
	cr_expect_eq(stats_of(st).torn_bytes_cut, 0);
	store_close(st);

	/* A keyed record with an unknown field is refused: a corrupt (here last,
	   so torn) record, and its whole batch goes with it. */
	bson_init(&k1);
	bson_append_utf8(&k1, "k", 1, "idem/b", -1);
	bson_append_int64(&k1, "v", 1, 3);
	bson_append_bool(&k1, "del", 3, true);
	bson_append_int64(&k1, "extra", 5, 1);
	bson_init(&d1);
	bson_append_utf8(&d1, "_id", 3, "new", -1);
	bson_append_int64(&d1, "stock", 5, 4);
	bson_append_int64(&d1, "sold", 4, 1);
	bson_append_int64(&d1, "version", 7, 2);
	docs[0] = &d1;
	docs[1] = &k1;
	rm_rf(x.dir);
	cr_assert_eq(mkdir(x.dir, 0700), 0);
	write_raw_journal(jp, docs, 2);
	st = fx_open(&x);
	cr_expect_eq(store_get(st, "new", &(struct sku_doc){ 0 }), STOCK_ENOENT);
	cr_expect_gt(stats_of(st).torn_bytes_cut, 0);
	store_close(st);

	/* held out of range, repeated held, a del that is not true: refused too. */
	{
		static const char *const what[] = { "held range", "held twice", "del false",
			"v is a string", "val and del" };

		for (int c = 0; c < 5; c++) {
			bson_t r;

			bson_init(&r);
			if (c < 2) {
				bson_append_utf8(&r, "_id", 3, "x", -1);
				bson_append_int64(&r, "stock", 5, 1);
				bson_append_int64(&r, "sold", 4, 1);
				bson_append_int64(&r, "version", 7, 1);
				bson_append_int64(&r, "held", 4, c == 0 ? (int64_t)STOCK_COUNT_MAX + 1 : 1);
				if (c == 1)
					bson_append_int64(&r, "held", 4, 1);
			} else {
				bson_append_utf8(&r, "k", 1, "x", -1);
				if (c == 3)
					bson_append_utf8(&r, "v", 1, "1", -1);
				else
					bson_append_int64(&r, "v", 1, 1);
				if (c == 4)
					bson_append_document(&r, "val", 3, &val);
				bson_append_bool(&r, "del", 3, c != 2);
			}
			docs[0] = &d1;
			docs[1] = &r;
			rm_rf(x.dir);
			cr_assert_eq(mkdir(x.dir, 0700), 0);
			write_raw_journal(jp, docs, 2);
			st = fx_open(&x);
			cr_expect_eq(store_get(st, "new", &(struct sku_doc){ 0 }), STOCK_ENOENT,
			    "%s", what[c]);
			cr_expect_eq(store_get(st, "x", &(struct sku_doc){ 0 }), STOCK_ENOENT, "%s",
			    what[c]);
			cr_expect_eq(stats_of(st).kv, 0, "%s", what[c]);
			store_close(st);
			bson_destroy(&r);
		}
	}
	bson_destroy(&d0);
	bson_destroy(&d1);
	bson_destroy(&k0);
	bson_destroy(&k1);
	bson_destroy(&val);
	fx_fini(&x);
}

/* One durable commit of 2 SKU states + 3 keyed records: one batch of 5. */
static void
commit_five(store_t *st)
{
	struct sku_doc d[2] = { mkdoc("A", 9, 1, 1), mkdoc("B", 8, 2, 1) };
	struct store_kv kv[3];
	bson_t v;

	d[0].held = 1;
	mkval(&v, 42, "hold");
	kv[0] = mkkv("hold/1", 1, &v);
	kv[1] = mkkv("hold/2", 1, &v);
	kv[2] = mkkv("idem/x", 1, &v);
	cr_assert_eq(store_commit(st, d, 2, kv, 3, true), 0);
	bson_destroy(&v);
}

Test(commit, a_whole_unit_is_recovered)
{
	struct fx x;
	store_t *st;
	char jp[512];
	off_t offs[8];
	unsigned char hdr[20];
	int fd;

	fx_init(&x);
	st = fx_open(&x);
	commit_five(st);
	cr_expect_eq(stats_of(st).records, 5);
	cr_expect_eq(stats_of(st).batches, 1);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_offsets(jp, offs, 8), 5);
	fd = open(jp, O_RDONLY);
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(pread(fd, hdr, 20, offs[i]), 20);
		cr_expect_eq(le32(hdr + 12), 1u, "record %d in batch 1", i);
		cr_expect_eq(le32(hdr + 16), i == 4 ? 1u : 0u, "END only on the last");
	}
	close(fd);
	st = fx_open(&x);
	expect_doc(st, "A", 9, 1, 1);
	expect_held(st, "A", 1);
	expect_doc(st, "B", 8, 2, 1);
	expect_kv(st, "hold/1", 1, 42);
	expect_kv(st, "hold/2", 1, 42);
	expect_kv(st, "idem/x", 1, 42);
	store_close(st);
	fx_fini(&x);
}

Test(commit, a_unit_cut_in_the_middle_is_recovered_not_at_all)
{
	struct fx x;
	store_t *st;
	char jp[512];
	off_t offs[8];

	for (int cut = 1; cut < 5; cut++) {
		fx_init(&x);
		st = fx_open(&x);
		append_n(st, 1); /* batch 1: sku-0, before the unit */
		commit_five(st); /* batch 2 */
		store_close(st);
		journal_path(&x, jp, sizeof jp);
		cr_assert_eq(record_offsets(jp, offs, 8), 6);
		/* A crash mid-batch: @cut whole records of the unit, then part of one. */
		cr_assert_eq(truncate(jp, offs[1 + cut] + 7), 0);
		st = fx_open(&x);
		expect_n(st, 1, -1);
		cr_expect_eq(stats_of(st).docs, 1, "cut %d: no SKU state of the unit", cut);
		cr_expect_eq(stats_of(st).kv, 0, "cut %d: no keyed record of the unit", cut);
		expect_no_kv(st, "hold/1");
		cr_expect_gt(stats_of(st).torn_bytes_cut, 0);
		cr_expect_eq(file_size(jp), offs[1]);
		store_close(st);
		fx_fini(&x);
	}
}

struct one_commit {
	store_t *st;
	int nrec;
	bool durable;
	int rc;
};

static void *
one_commit_fn(void *p)
{
	struct one_commit *c = p;
	struct sku_doc d[8];

	for (int i = 0; i < c->nrec; i++) {
		char sku[16];

		snprintf(sku, sizeof sku, "u-%d", i);
		d[i] = mkdoc(sku, 1, 1, 1);
	}
	c->rc = store_commit(c->st, d, (size_t)c->nrec, NULL, 0, c->durable);
	return NULL;
}

/* Batch numbers of the records of @path, in order. */
static int
record_batches(const char *path, uint32_t *out, int max)
{
	off_t offs[32];
	unsigned char hdr[20];
	int n = record_offsets(path, offs, max < 32 ? max : 32), fd = open(path, O_RDONLY);

	for (int i = 0; i < n; i++) {
		cr_assert_eq(pread(fd, hdr, 20, offs[i]), 20);
		out[i] = le32(hdr + 12);
	}
	close(fd);
	return n;
}

Test(commit, the_flusher_never_splits_a_unit)
{
	struct fx x;
	store_t *st;
	pthread_t th[2];
	struct one_append a = { 0 };
	struct one_commit c = { 0 };
	struct sku_doc tail = mkdoc("tail", 1, 1, 1);
	char jp[512];
	uint32_t b[16];

	fx_init(&x);
	x.opt.max_batch = 2;
	st = fx_open(&x);
	gate_set(true);
	a.st = st;
	a.doc = mkdoc("first", 1, 1, 1);
	a.durable = true;
	cr_assert_eq(pthread_create(&th[0], NULL, one_append_fn, &a), 0);
	cr_assert(WAIT_FOR(gate_waiting() == 1));
	c.st = st;
	c.nrec = 5;
	c.durable = true;
	cr_assert_eq(pthread_create(&th[1], NULL, one_commit_fn, &c), 0);
	cr_assert(WAIT_FOR(queue_depth(st) == 6));
	cr_assert_eq(store_append(st, &tail, false), 0);
	gate_set(false);
	pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	cr_expect_eq(a.rc, 0);
	cr_expect_eq(c.rc, 0);
	cr_assert_eq(store_sync(st), 0);
	cr_expect_eq(stats_of(st).batch_max, 5, "the unit stays whole past max_batch");
	cr_expect_eq(stats_of(st).batches, 3);
	store_close(st);
	journal_path(&x, jp, sizeof jp);
	cr_assert_eq(record_batches(jp, b, 16), 7);
	cr_expect_eq(b[0], 1u);
	for (int i = 1; i <= 5; i++)
		cr_expect_eq(b[i], 2u, "record %d", i);
	cr_expect_eq(b[6], 3u);
	fx_fini(&x);
}

Test(commit, queue_limit_counts_records)
{
	struct fx x;
	store_t *st;
	pthread_t th;
	struct one_append a = { 0 };
	struct one_commit c = { 0 };
	struct sku_doc d[4] = { mkdoc("a", 1, 1, 1), mkdoc("b", 1, 1, 1), mkdoc("c", 1, 1, 1),
		mkdoc("d", 1, 1, 1) };

	fx_init(&x);
	x.opt.queue_limit = 4;
	st = fx_open(&x);
	gate_set(true);
	a.st = st;
	a.doc = mkdoc("first", 1, 1, 1);
	a.durable = true;
	cr_assert_eq(pthread_create(&th, NULL, one_append_fn, &a), 0);
	cr_assert(WAIT_FOR(gate_waiting() == 1 && queue_depth(st) == 1));
	cr_expect_eq(store_commit(st, d, 4, NULL, 0, false), STOCK_EBUSY, "1 + 4 > 4");
	cr_expect_eq(stats_of(st).records, 1, "nothing of it was queued");
	cr_expect_eq(store_commit(st, d, 3, NULL, 0, false), 0, "1 + 3 fits");
	cr_expect_eq(store_append(st, &d[3], false), STOCK_EBUSY);
	gate_set(false);
	pthread_join(th, NULL);
	cr_expect_eq(a.rc, 0);
	cr_assert_eq(store_sync(st), 0);
	store_close(st);

	/* A unit larger than the limit goes into an empty queue. */
	x.opt.queue_limit = 2;
	st = fx_open(&x);
	c.st = st;
	c.nrec = 5;
	c.durable = true;
	one_commit_fn(&c);
	cr_expect_eq(c.rc, 0);
	expect_doc(st, "u-4", 1, 1, 1);
	store_close(st);
	fx_fini(&x);
}

Test(commit, failed_units_are_all_or_nothing)
{
	struct fx x;
	store_t *st;
	struct sku_doc d[2] = { mkdoc("A", 1, 1, 1), mkdoc("B", 1, 1, 1) };
	struct store_kv kv;
	bson_t v;
	int rc = -1;

	fx_init(&x);
	mkval(&v, 1, "v");
	kv = mkkv("hold/x", 1, &v);
	st = fx_open(&x);
	/* Durable: STOCK_ESYS and none of it applied. */
	__atomic_store_n(&F.fail_sync, 1, __ATOMIC_RELEASE);
	cr_expect_eq(store_commit(st, d, 2, &kv, 1, true), STOCK_ESYS);
	cr_expect_eq(store_get(st, "A", &(struct sku_doc){ 0 }), STOCK_ENOENT);
	expect_no_kv(st, "hold/x");
	cr_expect_eq(stats_of(st).queue_depth, 0);
	/* Write-behind: the unit is queued again whole and lands. */
	__atomic_store_n(&F.fail_sync, 1, __ATOMIC_RELEASE);
	cr_assert_eq(store_commit(st, d, 2, &kv, 1, false), 0);
	for (int i = 0; i < 10 && (rc = store_sync(st)) != 0; i++)
		cr_expect_eq(rc, STOCK_ESYS);
	cr_assert_eq(rc, 0);
	expect_doc(st, "A", 1, 1, 1);
	expect_doc(st, "B", 1, 1, 1);
	expect_kv(st, "hold/x", 1, 1);
	store_close(st);
	st = fx_open(&x);
	expect_doc(st, "B", 1, 1, 1);
	expect_kv(st, "hold/x", 1, 1);
	store_close(st);
	bson_destroy(&v);
	fx_fini(&x);
}
