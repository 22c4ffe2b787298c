/*
 * The store: a contract every implementation must meet, then the embedded
 * BSON store's own guarantees (file format, torn tails, corrupt middles,
 * group commit, I/O failures, backpressure, snapshots, crash safety).
 *
 * The contract part uses only store.h's store_* calls through a small
 * harness (create an empty place, open a store on it, destroy it), so the
 * MongoDB store runs the same functions with a harness of its own (a fresh
 * database on $STOCK_TEST_MONGO_URI), followed by its own calls (seed, take,
 * adjust, the lease compare-and-swap, whole-document views). Without that
 * variable the MongoDB tests report themselves SKIPPED, loudly; with
 * CI=true they fail instead. The
 * embedded part knows the on-disk format (docs/store.md) and injects faults
 * through struct store_io. Every outcome checked here is decided by the code,
 * not by timing: where a test must wait for a background thread it polls a
 * counter with a generous limit, and where it needs a batch of a given shape
 * it holds the flusher inside fdatasync with a gate.
 */
#include <criterion/criterion.h>

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "store.h"

/* ====================================================================== */
/* Helpers                                                                 */
/* ====================================================================== */

static struct store_doc
mkdoc(const char *sku, uint64_t stock, uint64_t sold, uint64_t version)
{
	struct store_doc d;

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

/* Log lines of a store, kept for assertions (the store's threads log too). */
struct logcap {
	pthread_mutex_t mu;
	char text[16384];
	size_t len;
};

static void
logcap_fn(void *arg, const char *msg)
{
	struct logcap *c = arg;
	int n;

	pthread_mutex_lock(&c->mu);
	n = snprintf(c->text + c->len, sizeof c->text - c->len, "%s\n", msg);
	if (n > 0 && (size_t)n < sizeof c->text - c->len)
		c->len += (size_t)n;
	pthread_mutex_unlock(&c->mu);
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
/* The contract harness                                                    */
/* ====================================================================== */

struct harness {
	const char *name;
	void *(*create)(void);                 /* a fresh, empty place */
	int (*open)(void *place, store_t **out); /* open (or reopen) a store on it */
	void (*destroy)(void *place);
};

struct bson_place {
	char dir[256];
	struct logcap log;
};

static void *
bson_create(void)
{
	struct bson_place *p = calloc(1, sizeof *p);

	cr_assert_not_null(p);
	pthread_mutex_init(&p->log.mu, NULL);
	make_tmpdir(p->dir, sizeof p->dir);
	return p;
}

static int
bson_open(void *place, store_t **out)
{
	struct bson_place *p = place;
	struct store_bson_options o = { 0 };
	char err[512];
	int rc;

	o.data_dir = p->dir;
	o.log = logcap_fn;
	o.log_arg = &p->log;
	rc = store_bson_open(out, &o, err, sizeof err);
	cr_expect_eq(rc, 0, "store_bson_open: %s", err);
	return rc;
}

static void
bson_destroy_place(void *place)
{
	struct bson_place *p = place;

	rm_rf(p->dir);
	pthread_mutex_destroy(&p->log.mu);
	free(p);
}

static const struct harness bson_harness = {
	"bson", bson_create, bson_open, bson_destroy_place,
};

static store_t *
h_open(const struct harness *h, void *place)
{
	store_t *st = NULL;

	cr_assert_eq(h->open(place, &st), 0, "%s: open failed", h->name);
	cr_assert_not_null(st);
	return st;
}

static void
expect_doc(store_t *st, const char *sku, uint64_t stock, uint64_t sold, uint64_t version)
{
	struct store_doc d;
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
	struct store_doc docs[64];
	int n;
};

static int
collect_fn(const struct store_doc *d, void *arg)
{
	struct collect *c = arg;

	if (c->n < 64)
		c->docs[c->n] = *d;
	c->n++;
	return 0;
}

static void
contract_roundtrip(const struct harness *h)
{
	void *place = h->create();
	store_t *st = h_open(h, place);
	struct store_doc a = mkdoc("OneStock", 15000, 0, 1);
	struct store_doc b = mkdoc("NVDA", 14990, 10, 10);
	struct store_doc c = mkdoc("ÄÖÜ-utf8-sku", 1, 2, 3);
	struct collect col = { .n = 0 };

	cr_assert_eq(store_append(st, &a, true), 0);
	cr_assert_eq(store_append(st, &b, true), 0);
	cr_assert_eq(store_append(st, &c, true), 0);
	cr_expect(store_healthy(st));
	expect_doc(st, "OneStock", 15000, 0, 1);
	cr_expect_eq(stats_of(st).records, 3);
	store_close(st);

	st = h_open(h, place);
	expect_doc(st, "OneStock", 15000, 0, 1);
	expect_doc(st, "NVDA", 14990, 10, 10);
	expect_doc(st, "ÄÖÜ-utf8-sku", 1, 2, 3);
	cr_assert_eq(store_foreach(st, collect_fn, &col), 0);
	cr_expect_eq(col.n, 3);
	cr_expect_eq(stats_of(st).docs, 3);
	store_close(st);
	h->destroy(place);
}

static void
contract_max_version_wins(const struct harness *h)
{
	void *place = h->create();
	store_t *st = h_open(h, place);
	struct store_doc d;

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

	st = h_open(h, place);
	expect_doc(st, "TSLA", 100, 9, 9);
	d = mkdoc("TSLA", 99, 10, 10);
	cr_assert_eq(store_append(st, &d, true), 0);
	expect_doc(st, "TSLA", 99, 10, 10);
	store_close(st);
	st = h_open(h, place);
	expect_doc(st, "TSLA", 99, 10, 10);
	store_close(st);
	h->destroy(place);
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
		struct store_doc d;
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
contract_concurrent_durable(const struct harness *h)
{
	void *place = h->create();
	store_t *st = h_open(h, place);
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
	st = h_open(h, place);
	ct_check(st, args);
	store_close(st);
	h->destroy(place);
}

/* --- contract: arguments, foreach, write-behind ---------------------------- */

static int
stop_at_two(const struct store_doc *d, void *arg)
{
	(void)d;
	return ++*(int *)arg == 2 ? 42 : 0;
}

static void
contract_invalid(const struct harness *h)
{
	void *place = h->create();
	store_t *st = h_open(h, place);
	struct store_doc d, out;
	char long_sku[STORE_SKU_MAX + 2];
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
	memset(d.sku, 'y', STORE_SKU_MAX);
	cr_expect_eq(store_append(st, &d, true), 0);
	d = mkdoc("third", 0, 0, 0);
	cr_expect_eq(store_append(st, &d, true), 0);
	cr_expect_eq(store_foreach(st, stop_at_two, &calls), 42);
	cr_expect_eq(calls, 2);
	store_close(st);
	st = h_open(h, place);
	expect_doc(st, "big", STOCK_COUNT_MAX, STOCK_COUNT_MAX, INT64_MAX);
	store_close(st);
	h->destroy(place);
}

static void
contract_write_behind(const struct harness *h)
{
	void *place = h->create();
	store_t *st = h_open(h, place);
	char sku[32];

	for (int i = 0; i < 300; i++) {
		struct store_doc d;

		snprintf(sku, sizeof sku, "wb-%d", i % 30);
		d = mkdoc(sku, 500 - (uint64_t)i, (uint64_t)i, (uint64_t)i + 1);
		cr_assert_eq(store_append(st, &d, false), 0);
	}
	cr_assert_eq(store_sync(st), 0);
	expect_doc(st, "wb-29", 500 - 299, 299, 300);
	expect_doc(st, "wb-0", 500 - 270, 270, 271);
	{
		struct collect col = { .n = 0 };

		/* docs is a gauge of the durable state; a remote store learns it by reading. */
		cr_assert_eq(store_foreach(st, collect_fn, &col), 0);
		cr_expect_eq(col.n, 30);
	}
	cr_expect_eq(stats_of(st).docs, 30);
	store_close(st);
	st = h_open(h, place);
	expect_doc(st, "wb-29", 500 - 299, 299, 300);
	store_close(st);
	h->destroy(place);
}

Test(contract_bson, roundtrip) { contract_roundtrip(&bson_harness); }
Test(contract_bson, max_version_wins) { contract_max_version_wins(&bson_harness); }
Test(contract_bson, concurrent_durable_appends_survive_reopen)
{
	contract_concurrent_durable(&bson_harness);
}
Test(contract_bson, invalid_arguments) { contract_invalid(&bson_harness); }
Test(contract_bson, write_behind_then_sync) { contract_write_behind(&bson_harness); }

/* ====================================================================== */
/* Embedded store: fixtures                                                */
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
	struct store_bson_options opt;
	char err[1024];
};

static void
fx_init(struct fx *x)
{
	memset(x, 0, sizeof *x);
	pthread_mutex_init(&x->log.mu, NULL);
	make_tmpdir(x->dir, sizeof x->dir);
	x->opt.data_dir = x->dir;
	x->opt.log = logcap_fn;
	x->opt.log_arg = &x->log;
	x->opt.io = &fault_io;
	x->opt.no_close_snapshot = true; /* keep the journal to look at */
}

static void
fx_fini(struct fx *x)
{
	rm_rf(x->dir);
	pthread_mutex_destroy(&x->log.mu);
}

static int
fx_try_open(struct fx *x, store_t **st)
{
	x->err[0] = '\0';
	return store_bson_open(st, &x->opt, x->err, sizeof x->err);
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
		struct store_doc d;

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
		struct store_doc d;

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
/* Embedded store: format                                                  */
/* ====================================================================== */

Test(store_crc32c, known_vectors)
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

Test(store_bson, journal_records_are_mongo_documents)
{
	struct fx x;
	store_t *st;
	char jp[512];
	unsigned char buf[512];
	struct store_doc d = mkdoc("NVDA", 15000, 3, 7);
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
/* Embedded store: torn tails and corrupt middles                          */
/* ====================================================================== */

Test(store_bson, torn_tail_mid_record_is_cut)
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

Test(store_bson, torn_tail_garbage_is_cut)
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

Test(store_bson, bad_last_record_is_a_torn_tail)
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

Test(store_bson, corrupt_middle_is_refused_then_repaired)
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

Test(store_bson, replay_is_idempotent)
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
/* Embedded store: lock file                                               */
/* ====================================================================== */

Test(store_bson, second_open_of_a_directory_fails)
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
/* Embedded store: group commit, failures, backpressure                    */
/* ====================================================================== */

struct one_append {
	store_t *st;
	struct store_doc doc;
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

Test(store_bson, group_commit_shares_one_fdatasync)
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

Test(store_bson, unfinished_batch_is_all_or_nothing)
{
	struct fx x;
	store_t *st;
	char jp[512];
	off_t offs[16];
	struct store_doc d;

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

Test(store_bson, fdatasync_eio_fails_the_batch_then_recovers)
{
	struct fx x;
	store_t *st;
	struct store_doc d;
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

Test(store_bson, short_write_then_enospc_leaves_no_trace)
{
	struct fx x;
	store_t *st;
	struct store_doc d;
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

Test(store_bson, write_behind_survives_a_failed_batch)
{
	struct fx x;
	store_t *st;
	struct store_doc d;
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

Test(store_bson, queue_limit_gives_backpressure)
{
	struct fx x;
	store_t *st;
	pthread_t th[2];
	struct one_append a[2];
	struct store_doc d = mkdoc("third", 1, 1, 1);

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
/* Embedded store: snapshots                                               */
/* ====================================================================== */

Test(store_bson, snapshot_rotates_the_journal)
{
	struct fx x;
	store_t *st;
	char jp[512], sp[600];
	off_t offs[16];
	unsigned char buf[256];
	struct store_doc d;
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

Test(store_bson, automatic_snapshots)
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
		struct store_doc d;

		snprintf(sku, sizeof sku, "r-%d-%d", a->id, (int)(v % 3));
		d = mkdoc(sku, 1000 - v, v, v);
		if (store_append(a->st, &d, true) == 0)
			__atomic_store_n(&a->acked, v, __ATOMIC_RELAXED); /* main polls it */
		else
			a->failures++;
	}
	return NULL;
}

Test(store_bson, snapshots_during_appends_lose_nothing)
{
	struct fx x;
	store_t *st;
	pthread_t th[4];
	struct snap_race a[4];
	int snaps = 0, done;

	fx_init(&x);
	st = fx_open(&x);
	memset(a, 0, sizeof a);
	for (int i = 0; i < 4; i++) {
		a[i].st = st;
		a[i].id = i;
		cr_assert_eq(pthread_create(&th[i], NULL, snap_race_worker, &a[i]), 0);
	}
	do {
		cr_assert_eq(store_snapshot(st), 0);
		snaps++;
		done = 0;
		for (int i = 0; i < 4; i++)
			done += __atomic_load_n(&a[i].acked, __ATOMIC_RELAXED) == 400;
	} while (done < 4 && snaps < 100000);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].failures, 0);
	}
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

Test(store_bson, failed_snapshot_keeps_the_journal)
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

Test(store_bson, corrupt_snapshot_is_refused)
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

Test(store_bson, journal_covered_by_the_snapshot_is_removed)
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

Test(store_bson, leftover_temp_snapshot_is_removed)
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
/* Embedded store: a real crash                                            */
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
		struct store_doc d;

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

Test(store_bson, sigkill_loses_no_acknowledged_append)
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

		if (store_bson_open(&st, &x.opt, NULL, 0) != 0) {
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
		struct store_doc d;
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
/* MongoDB store: the harness                                              */
/* ====================================================================== */

/*
 * Every MongoDB test starts with need_mongo(): without STOCK_TEST_MONGO_URI
 * it prints a loud SKIPPED line and skips, or under CI=true fails.
 * MONGO_TEST(suite, name) is Test(suite, name) with that check in front.
 */
static const char *
need_mongo(const char *suite, const char *name)
{
	const char *uri = getenv("STOCK_TEST_MONGO_URI");
	const char *ci = getenv("CI");

	if (uri != NULL && uri[0] != '\0')
		return uri;
	fprintf(stderr, "SKIPPED (no MongoDB): %s/%s\n", suite, name);
	if (ci != NULL && strcmp(ci, "true") == 0)
		cr_assert_fail("no MongoDB (STOCK_TEST_MONGO_URI unset) under CI=true: %s/%s", suite,
		    name);
	cr_skip_test("SKIPPED (no MongoDB): %s/%s", suite, name);
	return NULL;
}

#define MONGO_TEST(suite, name)                             \
	static void mongo_body_##suite##_##name(void);      \
	Test(suite, name)                                   \
	{                                                   \
		need_mongo(#suite, #name);                  \
		mongo_body_##suite##_##name();              \
	}                                                   \
	static void mongo_body_##suite##_##name(void)

static pthread_once_t test_mongo_once = PTHREAD_ONCE_INIT;

/* libmongoc's own chatter (monitor DEBUG lines, FerretDB's missing endSessions). */
static void
quiet_mongoc_log(mongoc_log_level_t level, const char *domain, const char *msg, void *arg)
{
	(void)arg;
	if (level <= MONGOC_LOG_LEVEL_ERROR)
		fprintf(stderr, "mongoc: %s: %s\n", domain, msg);
}

static void
test_mongo_init(void)
{
	mongoc_init();
	mongoc_log_set_handler(quiet_mongoc_log, NULL);
}

struct mongo_place {
	char db[64];
	struct logcap log;
	unsigned timeout_ms;
	unsigned queue_limit;
	int atomic_mode; /* store_mongo_options.atomic_mode */
};

static void *
mongo_create(void)
{
	static unsigned counter;
	struct mongo_place *p = calloc(1, sizeof *p);

	pthread_once(&test_mongo_once, test_mongo_init);
	cr_assert_not_null(p);
	pthread_mutex_init(&p->log.mu, NULL);
	snprintf(p->db, sizeof p->db, "stocktest_%ld_%u", (long)getpid(),
	    __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
	return p;
}

static int
mongo_open(void *place, store_t **out)
{
	struct mongo_place *p = place;
	struct store_mongo_options o = { 0 };
	char err[512];
	int rc;

	o.uri = getenv("STOCK_TEST_MONGO_URI");
	o.database = p->db;
	o.timeout_ms = p->timeout_ms ? p->timeout_ms : 5000;
	o.queue_limit = p->queue_limit;
	o.atomic_mode = p->atomic_mode;
	o.log = logcap_fn;
	o.log_arg = &p->log;
	rc = store_mongo_open(out, &o, err, sizeof err);
	cr_expect_eq(rc, 0, "store_mongo_open: %s", err);
	return rc;
}

/* A plain client of the test's own, to look at and plant raw documents. */
static mongoc_client_t *
raw_client(void)
{
	mongoc_client_t *c;

	pthread_once(&test_mongo_once, test_mongo_init);
	c = mongoc_client_new(getenv("STOCK_TEST_MONGO_URI"));
	cr_assert_not_null(c);
	mongoc_client_set_error_api(c, MONGOC_ERROR_API_VERSION_2);
	return c;
}

static void
mongo_destroy_place(void *place)
{
	struct mongo_place *p = place;
	mongoc_client_t *c = raw_client();
	mongoc_database_t *db = mongoc_client_get_database(c, p->db);
	bson_error_t e;

	cr_expect(mongoc_database_drop(db, &e), "drop %s: %s", p->db, e.message);
	mongoc_database_destroy(db);
	mongoc_client_destroy(c);
	pthread_mutex_destroy(&p->log.mu);
	free(p);
}

static void *
mongo_create_mode(int mode)
{
	struct mongo_place *p = mongo_create();

	p->atomic_mode = mode;
	return p;
}

static void *
mongo_create_native(void)
{
	return mongo_create_mode(1);
}

static void *
mongo_create_claims(void)
{
	return mongo_create_mode(2);
}

/*
 * Three ways to run the MongoDB store: auto (atomic_mode 0: native on
 * MongoDB, claims on FerretDB), native forced (1; on FerretDB that is only
 * correct within one process, which is all these tests use) and claims
 * forced (2). Whatever the test server, both write paths get tested.
 */
static const struct harness mongo_harness = {
	"mongo", mongo_create, mongo_open, mongo_destroy_place,
};
static const struct harness mongo_native_harness = {
	"mongo-native", mongo_create_native, mongo_open, mongo_destroy_place,
};
static const struct harness mongo_claims_harness = {
	"mongo-claims", mongo_create_claims, mongo_open, mongo_destroy_place,
};

#define MONGO_CONTRACT(suite, h)                                                  \
	MONGO_TEST(suite, roundtrip) { contract_roundtrip(h); }                   \
	MONGO_TEST(suite, max_version_wins) { contract_max_version_wins(h); }     \
	MONGO_TEST(suite, concurrent_durable_appends_survive_reopen)              \
	{                                                                         \
		contract_concurrent_durable(h);                                   \
	}                                                                         \
	MONGO_TEST(suite, invalid_arguments) { contract_invalid(h); }             \
	MONGO_TEST(suite, write_behind_then_sync) { contract_write_behind(h); }

MONGO_CONTRACT(contract_mongo, &mongo_harness)
MONGO_CONTRACT(contract_mongo_native, &mongo_native_harness)
MONGO_CONTRACT(contract_mongo_claims, &mongo_claims_harness)

/* t_<name>(mode) as store_mongo/<name> (auto), store_mongo_native/<name>
 * and store_mongo_claims/<name>. */
#define MONGO_MODES(name)                                        \
	MONGO_TEST(store_mongo, name) { t_##name(0); }           \
	MONGO_TEST(store_mongo_native, name) { t_##name(1); }    \
	MONGO_TEST(store_mongo_claims, name) { t_##name(2); }

/* ====================================================================== */
/* MongoDB store: its own calls                                            */
/* ====================================================================== */

/* A fresh database and a store on it. */
struct mfx {
	struct mongo_place *p;
	store_t *st;
};

static void
mfx_init_mode(struct mfx *x, int mode)
{
	x->p = mongo_create_mode(mode);
	x->st = h_open(&mongo_harness, x->p);
}

static void
mfx_fini(struct mfx *x)
{
	store_close(x->st);
	mongo_destroy_place(x->p);
}

/* Insert a raw document (JSON) into @coll of the fixture's database. */
static void
raw_insert(struct mfx *x, const char *coll, const char *json)
{
	mongoc_client_t *c = raw_client();
	mongoc_collection_t *col = mongoc_client_get_collection(c, x->p->db, coll);
	bson_error_t e;
	bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &e);

	cr_assert_not_null(b, "json: %s", e.message);
	cr_assert(mongoc_collection_insert_one(col, b, NULL, NULL, &e), "insert: %s", e.message);
	bson_destroy(b);
	mongoc_collection_destroy(col);
	mongoc_client_destroy(c);
}

/* Documents in @coll of the fixture's database. */
static int64_t
raw_count(struct mfx *x, const char *coll)
{
	mongoc_client_t *c = raw_client();
	mongoc_collection_t *col = mongoc_client_get_collection(c, x->p->db, coll);
	bson_error_t e;
	bson_t filter = BSON_INITIALIZER;
	int64_t n = mongoc_collection_count_documents(col, &filter, NULL, NULL, NULL, &e);

	cr_expect_geq(n, 0, "count: %s", e.message);
	mongoc_collection_destroy(col);
	mongoc_client_destroy(c);
	return n;
}

static struct store_mongo_view
view_of(store_t *st, const char *sku)
{
	struct store_mongo_view v;
	int rc = store_mongo_view(st, sku, &v);

	cr_assert_eq(rc, 0, "view(%s): %s", sku, stock_err_name(rc));
	return v;
}

static const struct store_lease *
lease_of(const struct store_mongo_view *v, const char *host)
{
	for (size_t i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

static bool
lease_same(const struct store_lease *a, const struct store_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms && a->reclaimed == b->reclaimed;
}

static struct store_lease
mklease(uint64_t granted, uint64_t sold, uint64_t returned, int64_t expires, bool reclaimed)
{
	struct store_lease l = { granted, sold, returned, expires, reclaimed };

	return l;
}

static void
t_seed_is_idempotent_and_routes_by_prefix(int mode)
{
	struct mfx x;
	struct collect col = { .n = 0 };

	mfx_init_mode(&x, mode);
	cr_expect(store_is_mongo(x.st));
	cr_assert_eq(store_mongo_seed(x.st, "NVDA", 100), 0);
	expect_doc(x.st, "NVDA", 100, 0, 1);
	cr_assert_eq(store_mongo_seed(x.st, "NVDA", 5), 0, "already there: fine");
	expect_doc(x.st, "NVDA", 100, 0, 1);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:ticket", 7), 0);
	expect_doc(x.st, "OneStock:ticket", 7, 0, 1);
	cr_expect_eq(raw_count(&x, "OneStock"), 1);
	cr_expect_eq(raw_count(&x, "ManyStock"), 1);
	cr_assert_eq(store_foreach(x.st, collect_fn, &col), 0);
	cr_expect_eq(col.n, 2, "foreach reads both collections");
	cr_expect_eq(store_mongo_seed(x.st, "", 1), STOCK_EINVAL);
	cr_expect_eq(store_mongo_seed(x.st, "x", STOCK_COUNT_MAX + 1), STOCK_EINVAL);
	cr_expect_eq(store_mongo_seed(NULL, "x", 1), STOCK_EINVAL);
	cr_expect(store_healthy(x.st));
	cr_expect_gt(stats_of(x.st).batches, 0, "round trips are counted");
	cr_expect_eq(stats_of(x.st).fsync_failures, 0);
	mfx_fini(&x);
}
MONGO_MODES(seed_is_idempotent_and_routes_by_prefix)

static void
t_take(int mode)
{
	struct mfx x;
	struct store_doc d, before;

	mfx_init_mode(&x, mode);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:t", 10), 0);
	cr_assert_eq(store_mongo_take(x.st, "OneStock:t", 3, &d), 0);
	cr_expect_str_eq(d.sku, "OneStock:t");
	cr_expect_eq(d.stock, 7);
	cr_expect_eq(d.sold, 3);
	cr_expect_eq(d.version, 2);

	cr_assert_eq(store_get(x.st, "OneStock:t", &before), 0);
	memset(&d, 0, sizeof d);
	cr_expect_eq(store_mongo_take(x.st, "OneStock:t", 8, &d), STOCK_ESOLDOUT);
	cr_expect_eq(d.stock, 7, "@after is the current state");
	cr_expect_eq(d.version, 2);
	expect_doc(x.st, "OneStock:t", before.stock, before.sold, before.version);

	cr_expect_eq(store_mongo_take(x.st, "OneStock:nope", 1, &d), STOCK_ENOENT);
	cr_expect_eq(store_mongo_take(x.st, "OneStock:t", 0, &d), STOCK_EINVAL);
	cr_expect_eq(store_mongo_take(x.st, "", 1, &d), STOCK_EINVAL);
	cr_expect_eq(store_mongo_take(x.st, "OneStock:t", STOCK_COUNT_MAX + 1, &d), STOCK_EINVAL);
	cr_assert_eq(store_mongo_take(x.st, "OneStock:t", 7, NULL), 0, "@after may be NULL");
	expect_doc(x.st, "OneStock:t", 0, 10, 3);
	cr_expect_eq(store_mongo_take(x.st, "OneStock:t", 1, &d), STOCK_ESOLDOUT);
	mfx_fini(&x);
}
MONGO_MODES(take)

/*
 * Native mode on MongoDB: these check the server's single-document
 * atomicity; native mode forced on FerretDB v1, whose conditional updates
 * are not atomic (FerretDB#3040): the store's in-process per-SKU
 * serialization; claims mode (auto on FerretDB): the successor claims. The
 * claims that several processes race for are tested further down
 * (store_mongo_multi).
 */
#define TAKERS 8
#define TAKE_STOCK 400

struct taker {
	store_t *st;
	const char *sku;
	uint64_t n;     /* units per take */
	uint64_t units; /* units this thread bought */
	int errors;
	int last_rc;    /* what ended it */
};

static void *
taker_fn(void *arg)
{
	struct taker *t = arg;
	struct store_doc d;
	int rc;

	while ((rc = store_mongo_take(t->st, t->sku, t->n, &d)) == 0 || rc == STOCK_ESOLDOUT) {
		if (rc == 0) {
			t->units += t->n;
			continue;
		}
		if (t->n == 1)
			break;
		t->n = 1; /* the last few units, one at a time */
	}
	if (rc != STOCK_ESOLDOUT)
		t->errors++;
	t->last_rc = rc;
	return NULL;
}

static void
t_concurrent_takes_never_oversell(int mode)
{
	struct mfx x;
	pthread_t th[TAKERS];
	struct taker t[TAKERS];
	uint64_t units = 0;

	mfx_init_mode(&x, mode);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:race", TAKE_STOCK), 0);
	for (int i = 0; i < TAKERS; i++) {
		t[i] = (struct taker){ x.st, "OneStock:race", (uint64_t)(i % 3) + 1, 0, 0, 0 };
		cr_assert_eq(pthread_create(&th[i], NULL, taker_fn, &t[i]), 0);
	}
	for (int i = 0; i < TAKERS; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(t[i].errors, 0, "taker %d ended on an error", i);
		units += t[i].units;
	}
	cr_expect_eq(units, TAKE_STOCK, "units bought: %llu", (unsigned long long)units);
	{
		struct store_doc d;

		cr_assert_eq(store_get(x.st, "OneStock:race", &d), 0);
		cr_expect_eq(d.stock, 0);
		cr_expect_eq(d.sold, TAKE_STOCK, "sold %llu, exactly the initial stock",
		    (unsigned long long)d.sold);
	}
	mfx_fini(&x);
}
MONGO_MODES(concurrent_takes_never_oversell)

static void
t_adjust(int mode)
{
	struct mfx x;
	struct store_doc d;

	mfx_init_mode(&x, mode);
	cr_assert_eq(store_mongo_adjust(x.st, "new-abs", true, 50, &d), 0, "creates it");
	cr_expect_eq(d.stock, 50);
	cr_expect_eq(d.sold, 0);
	cr_expect_eq(d.version, 1);
	cr_assert_eq(store_mongo_adjust(x.st, "new-rel", false, 25, NULL), 0, "creates it");
	expect_doc(x.st, "new-rel", 25, 0, 1);

	cr_assert_eq(store_mongo_seed(x.st, "a", 10), 0);
	cr_assert_eq(store_mongo_take(x.st, "a", 4, NULL), 0);
	cr_assert_eq(store_mongo_adjust(x.st, "a", false, 20, &d), 0);
	cr_expect_eq(d.stock, 26);
	cr_expect_eq(d.sold, 4, "sold is kept");
	cr_expect_eq(d.version, 3);
	cr_assert_eq(store_mongo_adjust(x.st, "a", true, 5, &d), 0);
	expect_doc(x.st, "a", 5, 4, 4);
	cr_expect_eq(store_mongo_adjust(x.st, "a", false, STOCK_COUNT_MAX, &d), STOCK_ERANGE);
	expect_doc(x.st, "a", 5, 4, 4);
	cr_assert_eq(store_mongo_adjust(x.st, "a", false, STOCK_COUNT_MAX - 5, NULL), 0,
	    "exactly the limit");
	expect_doc(x.st, "a", STOCK_COUNT_MAX, 4, 5);
	cr_expect_eq(store_mongo_adjust(x.st, "a", true, STOCK_COUNT_MAX + 1, NULL), STOCK_EINVAL);
	cr_expect_eq(store_mongo_adjust(x.st, "", true, 1, NULL), STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(adjust)

static void
t_lease_cas(int mode)
{
	struct mfx x;
	struct store_mongo_view v;
	struct store_lease l0 = mklease(0, 0, 0, 1000, false), l1, l2, l3, l4;
	const struct store_lease *got;
	const char *sku = "OneStock:lease";

	mfx_init_mode(&x, mode);
	cr_assert_eq(store_mongo_seed(x.st, sku, 100), 0);
	cr_expect_eq(store_mongo_lease_cas(x.st, "OneStock:none", "hostA", NULL, &l0, 0, 0, 0, &v),
	    STOCK_ENOENT);

	/* Open. */
	cr_assert_eq(store_mongo_lease_cas(x.st, sku, "hostA", NULL, &l0, 0, 0, 0, &v), 0);
	cr_expect_eq(v.doc.version, 2);
	cr_assert_not_null(got = lease_of(&v, "hostA"));
	cr_expect(lease_same(got, &l0));
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", NULL, &l0, 0, 0, 0, &v),
	    STOCK_ECONFLICT, "a second open conflicts");

	/* Grant 30 units from stock. */
	l1 = mklease(30, 0, 0, 2000, false);
	cr_assert_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l1, -30, 0, 0, &v), 0);
	cr_expect_eq(v.doc.stock, 70);
	cr_expect_eq(v.doc.version, 3);
	cr_expect_eq(lease_of(&v, "hostA")->granted, 30);

	/* Record 10 sold through the lease. */
	l2 = mklease(30, 10, 0, 2000, false);
	cr_assert_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l1, &l2, 0, 10, 0, &v), 0);
	cr_expect_eq(v.doc.sold, 10);
	cr_expect_eq(v.doc.stock, 70);

	/* A stale expectation conflicts and changes nothing. */
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l1, &l2, 0, 10, 0, &v),
	    STOCK_ECONFLICT);
	cr_expect_eq(v.doc.sold, 10, "@after: the current state");
	cr_expect_eq(view_of(x.st, sku).doc.version, 4);

	/* A grant beyond the stock: sold out, nothing changed. */
	l3 = mklease(1030, 10, 0, 2000, false);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l2, &l3, -1000, 0, 0, &v),
	    STOCK_ESOLDOUT);
	v = view_of(x.st, sku);
	cr_expect_eq(v.doc.stock, 70);
	cr_expect_eq(lease_of(&v, "hostA")->granted, 30);

	/* Return 5, then another host reclaims the 15 outstanding into lost. */
	l3 = mklease(30, 10, 5, 2000, false);
	cr_assert_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l2, &l3, 5, 0, 0, &v), 0);
	cr_expect_eq(v.doc.stock, 75);
	l4 = mklease(30, 10, 20, 2000, true);
	cr_assert_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l3, &l4, 0, 0, 15, &v), 0);
	cr_expect_eq(v.lost, 15);
	got = lease_of(&v, "hostA");
	cr_assert_not_null(got);
	cr_expect(got->reclaimed);
	cr_expect_eq(got->returned, 20);
	cr_expect_eq(v.doc.version, 6);
	/* Units leave lost only as far as it holds them (here: back to stock). */
	l0 = mklease(30, 10, 20, 3000, true);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l4, &l0, 16, 0, -16, &v),
	    STOCK_ESOLDOUT, "lost would go negative");
	cr_assert_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l4, &l0, 4, 0, -4, &v), 0);
	cr_expect_eq(v.lost, 11);
	cr_expect_eq(v.doc.stock, 79);
	cr_expect_eq(v.doc.sold, 10);

	/* Arguments. */
	l1 = mklease(1, 0, 0, 0, false);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "a.b", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "$x", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, NULL, NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	{
		char longhost[STORE_HOST_MAX + 2];

		memset(longhost, 'h', sizeof longhost - 1);
		longhost[sizeof longhost - 1] = '\0';
		cr_expect_eq(store_mongo_lease_cas(x.st, sku, longhost, NULL, &l1, 0, 0, 0, NULL),
		    STOCK_EINVAL);
		longhost[STORE_HOST_MAX] = '\0';
		cr_expect_eq(store_mongo_lease_cas(x.st, sku, longhost, NULL, &l1, -1, 0, 0, NULL), 0,
		    "64 characters are fine");
	}
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostB", NULL, NULL, 0, 0, 0, NULL),
	    STOCK_EINVAL);
	cr_expect_eq(store_mongo_lease_cas(x.st, NULL, "hostB", NULL, &l1, 0, 0, 0, NULL),
	    STOCK_EINVAL);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l0, 0, 0, 0, NULL),
	    STOCK_EINVAL, "next == expect: the outcome of an ESYS could not be told");
	l2 = mklease(29, 9, 20, 3000, true);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l2, 0, 0, 0, NULL),
	    STOCK_EINVAL, "granted must not decrease");
	l2 = mklease(30, 9, 20, 3000, true);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l2, 0, 0, 0, NULL),
	    STOCK_EINVAL, "sold must not decrease");
	l2 = mklease(30, 11, 20, 3000, true);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l2, 0, 1, 0, NULL),
	    STOCK_EINVAL, "sold + returned > granted");
	l2 = mklease(30, 10, 20, 4000, true);
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l2, 0, -1, 0, NULL),
	    STOCK_EINVAL, "sold is cumulative");
	cr_expect_eq(store_mongo_lease_cas(x.st, sku, "hostA", &l0, &l2, -(int64_t)STOCK_COUNT_MAX - 1,
	                 0, 0, NULL),
	    STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(lease_cas)

#define GRANTERS 8
#define GRANT_STOCK 60

struct granter {
	store_t *st;
	char host[32];
	uint64_t granted;
	uint64_t writes; /* successful CASes, the open included */
	int errors;
	int last_rc;
};

static void *
granter_fn(void *arg)
{
	struct granter *g = arg;
	struct store_lease cur = mklease(0, 0, 0, 1, false), next;
	uint64_t k = 3;
	int rc;

	if (store_mongo_lease_cas(g->st, "OneStock:grants", g->host, NULL, &cur, 0, 0, 0, NULL) != 0) {
		g->errors++;
		return NULL;
	}
	g->writes++;
	for (;;) {
		next = cur;
		next.granted += k;
		rc = store_mongo_lease_cas(g->st, "OneStock:grants", g->host, &cur, &next,
		    -(int64_t)k, 0, 0, NULL);
		if (rc == 0) {
			cur = next;
			g->granted += k;
			g->writes++;
		} else if (rc == STOCK_ESOLDOUT && k > 1) {
			k = 1;
		} else {
			if (rc != STOCK_ESOLDOUT)
				g->errors++;
			g->last_rc = rc;
			break;
		}
	}
	return NULL;
}

static void
t_concurrent_grants_never_oversell(int mode)
{
	struct mfx x;
	pthread_t th[GRANTERS];
	struct granter g[GRANTERS];
	struct store_mongo_view v;
	uint64_t total = 0, in_doc = 0;

	mfx_init_mode(&x, mode);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:grants", GRANT_STOCK), 0);
	for (int i = 0; i < GRANTERS; i++) {
		memset(&g[i], 0, sizeof g[i]);
		g[i].st = x.st;
		snprintf(g[i].host, sizeof g[i].host, "host-%d", i);
		cr_assert_eq(pthread_create(&th[i], NULL, granter_fn, &g[i]), 0);
	}
	for (int i = 0; i < GRANTERS; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(g[i].errors, 0, "granter %d ended on an error", i);
		total += g[i].granted;
	}
	cr_expect_eq(total, GRANT_STOCK, "granted %llu", (unsigned long long)total);
	v = view_of(x.st, "OneStock:grants");
	cr_expect_eq(v.doc.stock, 0);
	cr_expect_eq(v.nleases, GRANTERS);
	for (size_t i = 0; i < v.nleases; i++)
		in_doc += v.leases[i].lease.granted;
	cr_expect_eq(in_doc, GRANT_STOCK, "the leases hold exactly the initial stock");
	mfx_fini(&x);
}
MONGO_MODES(concurrent_grants_never_oversell)

static int
count_views(const struct store_mongo_view *v, void *arg)
{
	(void)v;
	++*(int *)arg;
	return 0;
}

static void
t_views_parse_leases_lost_and_number_types(int mode)
{
	struct mfx x;
	struct store_mongo_view v;
	const struct store_lease *l;
	char json[4096];
	size_t o;
	int n = 0;

	mfx_init_mode(&x, mode);
	/* int32 and integral doubles, as the mongo shell writes them. */
	raw_insert(&x, "OneStock",
	    "{\"_id\": \"OneStock:raw\", \"stock\": 5, \"sold\": 2.0, \"version\": {\"$numberLong\": "
	    "\"9\"}, \"lost\": 3, \"extra\": \"ignored\", \"leases\": {\"h1\": {\"granted\": 10, "
	    "\"sold\": 4, \"returned\": 1, \"expires\": {\"$numberLong\": \"1700000000000\"}, "
	    "\"reclaimed\": false}, \"h-2_x\": {\"granted\": 2, \"sold\": 0, \"returned\": 2, "
	    "\"expires\": 0, \"reclaimed\": true}}}");
	v = view_of(x.st, "OneStock:raw");
	cr_expect_str_eq(v.doc.sku, "OneStock:raw");
	cr_expect_eq(v.doc.stock, 5);
	cr_expect_eq(v.doc.sold, 2);
	cr_expect_eq(v.doc.version, 9);
	cr_expect_eq(v.lost, 3);
	cr_expect_eq(v.nleases, 2);
	cr_assert_not_null(l = lease_of(&v, "h1"));
	cr_expect_eq(l->granted, 10);
	cr_expect_eq(l->sold, 4);
	cr_expect_eq(l->returned, 1);
	cr_expect_eq(l->expires_ms, 1700000000000LL);
	cr_expect_not(l->reclaimed);
	cr_assert_not_null(l = lease_of(&v, "h-2_x"));
	cr_expect(l->reclaimed);
	expect_doc(x.st, "OneStock:raw", 5, 2, 9);

	/* No lost, no leases: zeros. */
	raw_insert(&x, "ManyStock", "{\"_id\": \"plain\", \"stock\": 1, \"sold\": 0, \"version\": 1}");
	v = view_of(x.st, "plain");
	cr_expect_eq(v.lost, 0);
	cr_expect_eq(v.nleases, 0);

	/* More leases than a view holds: the extra ones are ignored, logged once. */
	o = (size_t)snprintf(json, sizeof json,
	    "{\"_id\": \"many-leases\", \"stock\": 1, \"sold\": 0, \"version\": 1, \"leases\": {");
	for (int i = 0; i < STORE_LEASES_MAX + 2; i++)
		o += (size_t)snprintf(json + o, sizeof json - o,
		    "%s\"h%d\": {\"granted\": 1, \"sold\": 0, \"returned\": 0, \"expires\": 5, "
		    "\"reclaimed\": false}",
		    i ? ", " : "", i);
	snprintf(json + o, sizeof json - o, "}}");
	raw_insert(&x, "ManyStock", json);
	v = view_of(x.st, "many-leases");
	cr_expect_eq(v.nleases, STORE_LEASES_MAX);
	v = view_of(x.st, "many-leases");
	cr_expect(logcap_has(&x.p->log, "more than 16 leases"), "log: %s", x.p->log.text);

	/* Negative counts are corrupt: the view fails, the walks skip it. */
	raw_insert(&x, "ManyStock", "{\"_id\": \"neg\", \"stock\": -1, \"sold\": 0, \"version\": 1}");
	raw_insert(&x, "ManyStock",
	    "{\"_id\": \"negl\", \"stock\": 1, \"sold\": 0, \"version\": 1, \"lost\": -2}");
	cr_expect_eq(store_mongo_view(x.st, "neg", &v), STOCK_ESYS);
	cr_expect(logcap_has(&x.p->log, "corrupt"), "log: %s", x.p->log.text);
	cr_expect_eq(store_mongo_view(x.st, "negl", &v), STOCK_ESYS);
	cr_assert_eq(store_mongo_view_all(x.st, count_views, &n), 0);
	cr_expect_eq(n, 3, "raw, plain and many-leases; the negative ones skipped");
	cr_expect_eq(store_mongo_view(x.st, "absent", &v), STOCK_ENOENT);
	cr_expect_eq(store_mongo_view(x.st, "", &v), STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(views_parse_leases_lost_and_number_types)

static void
t_append_keeps_leases_and_lost(int mode)
{
	struct mfx x;
	struct store_mongo_view v;
	struct store_lease l0 = mklease(0, 0, 0, 7, false), l1 = mklease(10, 0, 0, 7, false);
	struct store_lease l2 = mklease(10, 0, 4, 7, true);
	struct store_doc d;

	mfx_init_mode(&x, mode);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:k", 50), 0);
	cr_assert_eq(store_mongo_lease_cas(x.st, "OneStock:k", "h", NULL, &l0, 0, 0, 0, NULL), 0);
	cr_assert_eq(store_mongo_lease_cas(x.st, "OneStock:k", "h", &l0, &l1, -10, 0, 0, NULL), 0);
	cr_assert_eq(store_mongo_lease_cas(x.st, "OneStock:k", "h", &l1, &l2, 0, 0, 6, &v), 0);
	cr_expect_eq(v.doc.version, 4);
	d = mkdoc("OneStock:k", 33, 7, 10);
	cr_assert_eq(store_append(x.st, &d, true), 0);
	v = view_of(x.st, "OneStock:k");
	cr_expect_eq(v.doc.stock, 33);
	cr_expect_eq(v.doc.sold, 7);
	cr_expect_eq(v.doc.version, 10);
	cr_expect_eq(v.lost, 6, "lost survives an append");
	cr_assert_eq(v.nleases, 1, "the lease survives an append");
	cr_expect(lease_same(&v.leases[0].lease, &l2));
	d = mkdoc("OneStock:k", 1, 1, 9);
	cr_assert_eq(store_append(x.st, &d, false), 0);
	cr_assert_eq(store_sync(x.st), 0);
	v = view_of(x.st, "OneStock:k");
	cr_expect_eq(v.doc.version, 10, "an older write-behind state loses");
	cr_expect_eq(v.nleases, 1);
	mfx_fini(&x);
}
MONGO_MODES(append_keeps_leases_and_lost)

/* ====================================================================== */
/* MongoDB store: successor claims                                         */
/* ====================================================================== */

/* A raw collection of database @db (caller destroys both). */
static mongoc_collection_t *
raw_coll(mongoc_client_t **c, const char *db, const char *coll)
{
	*c = raw_client();
	return mongoc_client_get_collection(*c, db, coll);
}

static bson_t *
json_bson(const char *json)
{
	bson_error_t e;
	bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &e);

	cr_assert_not_null(b, "json %s: %s", json, e.message);
	return b;
}

/* Documents of @db.@coll matching @filter (JSON). */
static int64_t
raw_count_where(const char *db, const char *coll, const char *filter)
{
	mongoc_client_t *c;
	mongoc_collection_t *col = raw_coll(&c, db, coll);
	bson_t *f = json_bson(filter);
	bson_error_t e;
	int64_t n = mongoc_collection_count_documents(col, f, NULL, NULL, NULL, &e);

	cr_expect_geq(n, 0, "count: %s", e.message);
	bson_destroy(f);
	mongoc_collection_destroy(col);
	mongoc_client_destroy(c);
	return n;
}

/* update_many(@filter, @update) on @db.@coll (JSON both). */
static void
raw_update(const char *db, const char *coll, const char *filter, const char *update)
{
	mongoc_client_t *c;
	mongoc_collection_t *col = raw_coll(&c, db, coll);
	bson_t *f = json_bson(filter), *u = json_bson(update);
	bson_error_t e;

	cr_assert(mongoc_collection_update_many(col, f, u, NULL, NULL, &e), "update: %s",
	    e.message);
	bson_destroy(u);
	bson_destroy(f);
	mongoc_collection_destroy(col);
	mongoc_client_destroy(c);
}

/* The int64 at dotted @path of the first document of @db.@coll matching
 * {<key>: <value>} in the order of @sort (JSON, may be NULL); -1 when none. */
static int64_t
raw_int(const char *db, const char *coll, const char *key, const char *value, const char *sort,
    const char *path)
{
	mongoc_client_t *c;
	mongoc_collection_t *col = raw_coll(&c, db, coll);
	bson_t *f = BCON_NEW(key, BCON_UTF8(value)), *opts;
	mongoc_cursor_t *cur;
	const bson_t *b;
	bson_iter_t it, sub;
	bson_error_t e;
	int64_t r = -1;

	if (sort != NULL) {
		bson_t *s = json_bson(sort);

		opts = BCON_NEW("sort", BCON_DOCUMENT(s), "limit", BCON_INT64(1));
		bson_destroy(s);
	} else {
		opts = BCON_NEW("limit", BCON_INT64(1));
	}
	cur = mongoc_collection_find_with_opts(col, f, opts, NULL);
	if (mongoc_cursor_next(cur, &b) && bson_iter_init(&it, b) &&
	    bson_iter_find_descendant(&it, path, &sub) && BSON_ITER_HOLDS_INT64(&sub))
		r = bson_iter_int64(&sub);
	cr_expect_not(mongoc_cursor_error(cur, &e), "find: %s", e.message);
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	bson_destroy(f);
	mongoc_collection_destroy(col);
	mongoc_client_destroy(c);
	return r;
}

/* The version in @sku's raw document (no roll-forward). */
static int64_t
raw_doc_version(const char *db, const char *sku)
{
	return raw_int(db, strncmp(sku, "OneStock:", 9) == 0 ? "OneStock" : "ManyStock", "_id", sku,
	    NULL, "version");
}

/* The state version of @sku's newest claim; -1 when it has none. */
static int64_t
raw_last_claim_version(const char *db, const char *sku)
{
	return raw_int(db, "StockClaims", "sku", sku, "{\"from\": -1}", "state.version");
}

static int64_t
raw_claims_of(const char *db, const char *sku)
{
	char f[160];

	snprintf(f, sizeof f, "{\"sku\": \"%s\"}", sku);
	return raw_count_where(db, "StockClaims", f);
}

static bool
server_is_ferretdb(void)
{
	mongoc_client_t *c = raw_client();
	bson_t *cmd = BCON_NEW("buildInfo", BCON_INT32(1)), reply;
	bson_error_t e;
	bson_iter_t it;
	bool r;

	cr_assert(mongoc_client_command_simple(c, "admin", cmd, NULL, &reply, &e), "%s", e.message);
	r = bson_iter_init_find(&it, &reply, "ferretdbVersion");
	bson_destroy(&reply);
	bson_destroy(cmd);
	mongoc_client_destroy(c);
	return r;
}

MONGO_TEST(store_mongo_claims, open_logs_the_mode)
{
	bool ferret = server_is_ferretdb();
	struct mfx x;

	mfx_init_mode(&x, 2);
	cr_expect(logcap_has(&x.p->log, "conditional updates go through successor claims"),
	    "log: %s", x.p->log.text);
	mfx_fini(&x);

	mfx_init_mode(&x, 0);
	if (ferret)
		cr_expect(logcap_has(&x.p->log, "mongo: FerretDB detected: conditional updates go "
		                                "through successor claims (FerretDB#3040)"),
		    "log: %s", x.p->log.text);
	else
		cr_expect_not(logcap_has(&x.p->log, "successor claims"), "log: %s", x.p->log.text);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:m", 5), 0);
	cr_assert_eq(store_mongo_take(x.st, "OneStock:m", 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, "OneStock:m"), ferret ? 1 : 0,
	    "auto mode uses claims exactly on FerretDB");
	mfx_fini(&x);

	mfx_init_mode(&x, 1);
	if (ferret)
		cr_expect(logcap_has(&x.p->log, "FerretDB with atomic_mode 1"), "log: %s",
		    x.p->log.text);
	cr_assert_eq(store_mongo_seed(x.st, "OneStock:m", 5), 0);
	cr_assert_eq(store_mongo_take(x.st, "OneStock:m", 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, "OneStock:m"), 0, "native mode writes no claims");
	mfx_fini(&x);
}

/*
 * Every committed write is exactly one claim; a document that lags or went
 * back to an older chain state (what FerretDB's non-atomic update can do)
 * is rolled forward by every read and never becomes the base of a write; a
 * second store's stale remembered tip cannot commit either.
 */
MONGO_TEST(store_mongo_claims, regressed_document_is_rolled_forward)
{
	const char *sku = "OneStock:reg";
	struct mfx x;
	struct store_doc d;
	struct store_mongo_view v;
	struct collect col = { .n = 0 };
	struct mongo_place *p2;
	store_t *st2;
	char filter[96];
	int n = 0;

	mfx_init_mode(&x, 2);
	cr_assert_eq(store_mongo_seed(x.st, sku, 50), 0);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(store_mongo_take(x.st, sku, 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 10, "one claim per write");
	cr_expect_eq(raw_doc_version(x.p->db, sku), 11);
	cr_expect_eq(raw_last_claim_version(x.p->db, sku), 11);

	/* Back to version 4 (stock 47, sold 3): every read sees version 11. */
	snprintf(filter, sizeof filter, "{\"_id\": \"%s\"}", sku);
	raw_update(x.p->db, "OneStock", filter,
	    "{\"$set\": {\"stock\": {\"$numberLong\": \"47\"}, \"sold\": {\"$numberLong\": \"3\"}, "
	    "\"version\": {\"$numberLong\": \"4\"}}}");
	cr_assert_eq(raw_doc_version(x.p->db, sku), 4);
	expect_doc(x.st, sku, 40, 10, 11);
	cr_expect_eq(raw_doc_version(x.p->db, sku), 11, "the read repaired the document");

	raw_update(x.p->db, "OneStock", filter,
	    "{\"$set\": {\"stock\": {\"$numberLong\": \"47\"}, \"sold\": {\"$numberLong\": \"3\"}, "
	    "\"version\": {\"$numberLong\": \"4\"}}}");
	v = view_of(x.st, sku);
	cr_expect_eq(v.doc.version, 11);
	cr_expect_eq(v.doc.stock, 40);
	raw_update(x.p->db, "OneStock", filter,
	    "{\"$set\": {\"stock\": {\"$numberLong\": \"47\"}, \"sold\": {\"$numberLong\": \"3\"}, "
	    "\"version\": {\"$numberLong\": \"4\"}}}");
	cr_assert_eq(store_foreach(x.st, collect_fn, &col), 0);
	cr_assert_eq(col.n, 1);
	cr_expect_eq(col.docs[0].version, 11, "foreach rolls forward");
	raw_update(x.p->db, "OneStock", filter,
	    "{\"$set\": {\"stock\": {\"$numberLong\": \"47\"}, \"sold\": {\"$numberLong\": \"3\"}, "
	    "\"version\": {\"$numberLong\": \"4\"}}}");
	cr_assert_eq(store_mongo_view_all(x.st, count_views, &n), 0);
	cr_expect_eq(raw_doc_version(x.p->db, sku), 11, "view_all rolls forward");

	/* A write on a regressed document builds on the latest state. */
	raw_update(x.p->db, "OneStock", filter,
	    "{\"$set\": {\"stock\": {\"$numberLong\": \"47\"}, \"sold\": {\"$numberLong\": \"3\"}, "
	    "\"version\": {\"$numberLong\": \"4\"}}}");
	p2 = mongo_create_mode(2);
	snprintf(p2->db, sizeof p2->db, "%s", x.p->db);
	st2 = h_open(&mongo_harness, p2);
	cr_assert_eq(store_mongo_take(st2, sku, 2, &d), 0);
	cr_expect_eq(d.version, 12);
	cr_expect_eq(d.stock, 38);
	cr_expect_eq(d.sold, 12);

	/* x.st may still remember version 11 as the last: that claim must fail. */
	cr_assert_eq(store_mongo_take(x.st, sku, 1, &d), 0);
	cr_expect_eq(d.version, 13);
	cr_expect_eq(d.stock, 37);
	cr_expect_eq(d.sold, 13);
	cr_assert_eq(store_mongo_adjust(st2, sku, false, 3, &d), 0);
	cr_expect_eq(d.stock, 40);
	cr_assert_eq(store_mongo_take(x.st, sku, 40, &d), 0, "saw the restock");
	cr_expect_eq(store_mongo_take(x.st, sku, 1, &d), STOCK_ESOLDOUT);
	cr_expect_eq(d.version, 15);
	d = mkdoc(sku, 5, 53, 20);
	cr_assert_eq(store_append(st2, &d, true), 0, "append jumps versions");
	d = mkdoc(sku, 9, 49, 19);
	cr_assert_eq(store_append(x.st, &d, true), 0, "an older append changes nothing");
	expect_doc(x.st, sku, 5, 53, 20);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 15);
	cr_expect_eq(raw_last_claim_version(x.p->db, sku), 20);
	cr_expect_eq(raw_doc_version(x.p->db, sku), 20);
	store_close(st2);
	pthread_mutex_destroy(&p2->log.mu);
	free(p2);
	mfx_fini(&x);
}

/*
 * Pruning deletes only claims both far behind (CLAIM_KEEP = 64 versions)
 * and old (5 s by their stamp; the test ages them by hand), after every
 * 128th commit of a store.
 */
MONGO_TEST(store_mongo_claims, old_claims_are_pruned)
{
	const char *sku = "prune";
	struct mfx x;

	mfx_init_mode(&x, 2);
	cr_assert_eq(store_mongo_seed(x.st, sku, 1000), 0);
	for (int i = 0; i < 250; i++)
		cr_assert_eq(store_mongo_take(x.st, sku, 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 250, "the 128th commit kept young claims");
	{
		int64_t at = raw_int(x.p->db, "StockClaims", "sku", sku, NULL, "at");
		int64_t now = (int64_t)time(NULL) * 1000;

		cr_expect(at > now - 10000 && at < now + 10000, "claim stamp %lld, now %lld",
		    (long long)at, (long long)now);
	}
	raw_update(x.p->db, "StockClaims", "{}", "{\"$set\": {\"at\": {\"$numberLong\": \"0\"}}}");
	for (int i = 0; i < 6; i++)
		cr_assert_eq(store_mongo_take(x.st, sku, 1, NULL), 0);
	/* The 256th commit (version 256 -> 257) pruned old ones from < 256 - 64. */
	cr_expect_eq(raw_count_where(x.p->db, "StockClaims",
	                 "{\"sku\": \"prune\", \"from\": {\"$lt\": 192}}"),
	    0);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 256 - 191, "old but recent versions stay");
	expect_doc(x.st, sku, 1000 - 256, 256, 257);
	cr_assert_eq(store_mongo_take(x.st, sku, 1, NULL), 0);
	expect_doc(x.st, sku, 1000 - 257, 257, 258);
	mfx_fini(&x);
}

/* --- several processes on one database ----------------------------------- */

/*
 * Three child processes, each with a store (and client pool) of its own on
 * the same database, race for one SKU; they report what they got through a
 * pipe. Nothing may be sold twice across processes: that is what claims
 * are for (native mode on FerretDB would fail here). fork() happens while
 * the test process has no store open (no thread of ours is alive), which
 * also keeps it working under the TSan build's in-process runner.
 */
#define MP_PROCS 3
#define MP_TAKERS 4
#define MP_TAKE_STOCK 300
#define MP_GRANTERS 2
#define MP_GRANT_STOCK 120

struct mp_report {
	uint64_t units;  /* units taken or granted */
	uint64_t writes; /* successful takes / lease CASes (opens included) */
	int errors;
	char err[256];
};

static void
mp_log(void *arg, const char *msg)
{
	(void)arg;
	if (strstr(msg, "successor claims") == NULL) /* the open's line: expected */
		fprintf(stderr, "child %ld: %s\n", (long)getpid(), msg);
}

static store_t *
mp_open(const char *db, int mode, struct mp_report *r)
{
	struct store_mongo_options o = { 0 };
	store_t *st = NULL;

	o.uri = getenv("STOCK_TEST_MONGO_URI");
	o.database = db;
	o.timeout_ms = 5000;
	o.atomic_mode = mode;
	o.log = mp_log;
	if (store_mongo_open(&st, &o, r->err, sizeof r->err) != 0) {
		r->errors++;
		return NULL;
	}
	return st;
}

/* A child: run the race, fill @r. */
typedef void (*mp_child_fn)(const char *db, int mode, int id, struct mp_report *r);

static void
mp_child_takes(const char *db, int mode, int id, struct mp_report *r)
{
	struct taker t[MP_TAKERS];
	pthread_t th[MP_TAKERS];
	store_t *st;

	(void)id;
	if ((st = mp_open(db, mode, r)) == NULL)
		return;
	for (int i = 0; i < MP_TAKERS; i++) {
		t[i] = (struct taker){ st, "OneStock:mp", 1, 0, 0, 0 };
		if (pthread_create(&th[i], NULL, taker_fn, &t[i]) != 0)
			abort();
	}
	for (int i = 0; i < MP_TAKERS; i++) {
		pthread_join(th[i], NULL);
		r->units += t[i].units;
		r->writes += t[i].units; /* one unit per take */
		r->errors += t[i].errors;
		if (t[i].errors != 0)
			snprintf(r->err, sizeof r->err, "a taker ended on %s",
			    stock_err_name(t[i].last_rc));
	}
	store_close(st);
}

static void
mp_child_grants(const char *db, int mode, int id, struct mp_report *r)
{
	struct granter g[MP_GRANTERS];
	pthread_t th[MP_GRANTERS];
	store_t *st;

	if ((st = mp_open(db, mode, r)) == NULL)
		return;
	for (int i = 0; i < MP_GRANTERS; i++) {
		memset(&g[i], 0, sizeof g[i]);
		g[i].st = st;
		snprintf(g[i].host, sizeof g[i].host, "p%d-h%d", id, i); /* distinct hosts */
		if (pthread_create(&th[i], NULL, granter_fn, &g[i]) != 0)
			abort();
	}
	for (int i = 0; i < MP_GRANTERS; i++) {
		pthread_join(th[i], NULL);
		r->units += g[i].granted;
		r->writes += g[i].writes;
		r->errors += g[i].errors;
		if (g[i].errors != 0)
			snprintf(r->err, sizeof r->err, "a granter ended on %s",
			    stock_err_name(g[i].last_rc));
	}
	store_close(st);
}

/*
 * Fork MP_PROCS children running @child; sum their reports into @total.
 * Returns once all have exited.
 */
static void
mp_run(const char *db, int mode, mp_child_fn child, struct mp_report *total)
{
	pid_t pids[MP_PROCS];
	int fds[2];

	memset(total, 0, sizeof *total);
	cr_assert_eq(pipe(fds), 0);
	fflush(NULL);
	for (int i = 0; i < MP_PROCS; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0, "fork: %s", strerror(errno));
		if (pids[i] == 0) {
			struct mp_report r;
			size_t o = 0;

			close(fds[0]);
			memset(&r, 0, sizeof r);
			child(db, mode, i, &r);
			while (o < sizeof r) {
				ssize_t w = write(fds[1], (char *)&r + o, sizeof r - o);

				if (w <= 0)
					_exit(3);
				o += (size_t)w;
			}
			_exit(0);
		}
	}
	close(fds[1]);
	for (int i = 0; i < MP_PROCS; i++) {
		struct mp_report r;
		size_t o = 0;

		while (o < sizeof r) {
			ssize_t n = read(fds[0], (char *)&r + o, sizeof r - o);

			cr_assert_gt(n, 0, "child %d sent no report", i);
			o += (size_t)n;
		}
		total->units += r.units;
		total->writes += r.writes;
		total->errors += r.errors;
		if (r.err[0] != '\0')
			snprintf(total->err, sizeof total->err, "%s", r.err);
	}
	close(fds[0]);
	for (int i = 0; i < MP_PROCS; i++) {
		int status;

		cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
		cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %#x", i,
		    status);
	}
}

/*
 * Claims mode: exactly one claim per successful write, and the document
 * holds the last claimed state (nobody's copy was left behind or undone).
 */
static void
mp_check_chain(const char *db, const char *sku, int mode, uint64_t writes)
{
	int64_t claims = raw_claims_of(db, sku);

	if (mode != 2 && claims == 0)
		return; /* auto mode on MongoDB: native */
	cr_expect_eq(claims, (int64_t)writes, "%lld claims for %llu writes", (long long)claims,
	    (unsigned long long)writes);
	cr_expect_eq(raw_last_claim_version(db, sku), (int64_t)writes + 1);
	cr_expect_eq(raw_doc_version(db, sku), (int64_t)writes + 1,
	    "the document holds the last claimed state");
}

static void
t_mp_takes(int mode)
{
	struct mongo_place *p = mongo_create_mode(mode);
	struct mp_report tot;
	store_t *st;

	st = h_open(&mongo_harness, p);
	cr_assert_eq(store_mongo_seed(st, "OneStock:mp", MP_TAKE_STOCK), 0);
	store_close(st); /* no store (no threads) in this process across fork */

	mp_run(p->db, mode, mp_child_takes, &tot);
	cr_expect_eq(tot.errors, 0, "children ended on errors (%s)", tot.err);
	cr_expect_eq(tot.units, MP_TAKE_STOCK, "units bought: %llu of %d",
	    (unsigned long long)tot.units, MP_TAKE_STOCK);
	mp_check_chain(p->db, "OneStock:mp", mode, tot.writes);
	st = h_open(&mongo_harness, p);
	expect_doc(st, "OneStock:mp", 0, MP_TAKE_STOCK, (uint64_t)MP_TAKE_STOCK + 1);
	store_close(st);
	mongo_destroy_place(p);
}

static void
t_mp_grants(int mode)
{
	struct mongo_place *p = mongo_create_mode(mode);
	struct store_mongo_view v;
	struct mp_report tot;
	uint64_t in_doc = 0;
	store_t *st;

	st = h_open(&mongo_harness, p);
	cr_assert_eq(store_mongo_seed(st, "OneStock:grants", MP_GRANT_STOCK), 0);
	store_close(st);

	mp_run(p->db, mode, mp_child_grants, &tot);
	cr_expect_eq(tot.errors, 0, "children ended on errors (%s)", tot.err);
	cr_expect_eq(tot.units, MP_GRANT_STOCK, "granted %llu of %d", (unsigned long long)tot.units,
	    MP_GRANT_STOCK);
	mp_check_chain(p->db, "OneStock:grants", mode, tot.writes);
	st = h_open(&mongo_harness, p);
	cr_assert_eq(store_mongo_view(st, "OneStock:grants", &v), 0);
	cr_expect_eq(v.doc.stock, 0);
	cr_expect_eq(v.nleases, MP_PROCS * MP_GRANTERS);
	for (size_t i = 0; i < v.nleases; i++)
		in_doc += v.leases[i].lease.granted;
	cr_expect_eq(in_doc, MP_GRANT_STOCK, "the leases hold exactly the initial stock");
	cr_expect_eq(v.doc.version, tot.writes + 1);
	store_close(st);
	mongo_destroy_place(p);
}

MONGO_TEST(store_mongo_multi, takes_from_three_processes_never_oversell_claims)
{
	t_mp_takes(2);
}

MONGO_TEST(store_mongo_multi, takes_from_three_processes_never_oversell_auto)
{
	t_mp_takes(0);
}

MONGO_TEST(store_mongo_multi, grants_from_three_processes_never_oversell_claims)
{
	t_mp_grants(2);
}

MONGO_TEST(store_mongo_multi, grants_from_three_processes_never_oversell_auto)
{
	t_mp_grants(0);
}

/* Needs no MongoDB: nobody listens on port 1. */
Test(store_mongo, open_fails_fast_on_a_dead_server)
{
	struct store_mongo_options o = { 0 };
	store_t *st = (store_t *)&o;
	char err[512];
	uint64_t t0, ms;
	int rc;

	pthread_once(&test_mongo_once, test_mongo_init);
	o.uri = "mongodb://127.0.0.1:1/";
	o.timeout_ms = 300;
	t0 = stock_now_ns();
	rc = store_mongo_open(&st, &o, err, sizeof err);
	ms = (stock_now_ns() - t0) / 1000000;
	cr_expect_eq(rc, STOCK_ESYS, "%s", stock_err_name(rc));
	cr_expect_null(st);
	cr_expect_lt(ms, 3000, "took %llu ms", (unsigned long long)ms);
	cr_expect_not_null(strstr(err, "127.0.0.1:1"), "%s", err);
	cr_expect_not_null(strstr(err, "unreachable"), "%s", err);

	o.atomic_mode = 3;
	cr_expect_eq(store_mongo_open(&st, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_not_null(strstr(err, "atomic_mode"), "%s", err);
	o.atomic_mode = 0;
	o.uri = "http://not-a-mongodb-uri";
	cr_expect_eq(store_mongo_open(&st, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_not_null(strstr(err, "bad URI"), "%s", err);
	o.uri = NULL;
	cr_expect_eq(store_mongo_open(&st, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_eq(store_mongo_open(NULL, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_not(store_is_mongo(NULL));
}

/* ====================================================================== */
/* MongoDB store: a server that goes away and comes back                   */
/* ====================================================================== */

/*
 * A TCP proxy in front of the test server, on a port of its own: "down"
 * closes the listener and every connection (new ones are refused), "up"
 * listens on the same port again. The store under test only knows the
 * proxy, so this is a dead server as far as it can tell.
 */
#define PROXY_PAIRS 32

struct proxy {
	uint16_t port, upstream;
	int lfd;
	int stop[2];
	pthread_t th;
	int fds[PROXY_PAIRS][2]; /* client side, server side; -1: free */
};

static int
proxy_connect_upstream(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static bool
proxy_pump(int from, int to)
{
	char buf[16384];
	ssize_t n = read(from, buf, sizeof buf);

	for (ssize_t o = 0; n > 0 && o < n;) {
		ssize_t w = write(to, buf + o, (size_t)(n - o));

		if (w <= 0)
			return false;
		o += w;
	}
	return n > 0;
}

static void *
proxy_main(void *arg)
{
	struct proxy *p = arg;

	for (;;) {
		struct pollfd pf[2 + 2 * PROXY_PAIRS];
		int map[2 + 2 * PROXY_PAIRS], n = 0;

		pf[n] = (struct pollfd){ .fd = p->stop[0], .events = POLLIN };
		map[n++] = -1;
		pf[n] = (struct pollfd){ .fd = p->lfd, .events = POLLIN };
		map[n++] = -2;
		for (int i = 0; i < PROXY_PAIRS; i++)
			for (int k = 0; k < 2 && p->fds[i][0] >= 0; k++) {
				pf[n] = (struct pollfd){ .fd = p->fds[i][k], .events = POLLIN };
				map[n++] = i * 2 + k;
			}
		if (poll(pf, (nfds_t)n, -1) < 0)
			continue;
		if (pf[0].revents)
			break;
		if (pf[1].revents & POLLIN) {
			int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC), u = -1, i;

			for (i = 0; i < PROXY_PAIRS && p->fds[i][0] >= 0; i++)
				;
			if (c >= 0 && i < PROXY_PAIRS && (u = proxy_connect_upstream(p->upstream)) >= 0) {
				p->fds[i][0] = c;
				p->fds[i][1] = u;
			} else if (c >= 0) {
				close(c);
			}
			continue; /* the poll set changed */
		}
		for (int j = 2; j < n; j++) {
			int i = map[j] / 2, k = map[j] % 2;

			if (pf[j].revents == 0 || p->fds[i][0] < 0)
				continue;
			if (!proxy_pump(p->fds[i][k], p->fds[i][1 - k])) {
				close(p->fds[i][0]);
				close(p->fds[i][1]);
				p->fds[i][0] = p->fds[i][1] = -1;
			}
		}
	}
	for (int i = 0; i < PROXY_PAIRS; i++)
		if (p->fds[i][0] >= 0) {
			close(p->fds[i][0]);
			close(p->fds[i][1]);
			p->fds[i][0] = p->fds[i][1] = -1;
		}
	return NULL;
}

/* Listen (on p->port, or a fresh port when 0) and start forwarding. */
static void
proxy_up(struct proxy *p)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(p->port) };
	socklen_t len = sizeof a;
	int one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(p->lfd, 0);
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	cr_assert_eq(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(p->lfd, 64), 0);
	cr_assert_eq(getsockname(p->lfd, (struct sockaddr *)&a, &len), 0);
	p->port = ntohs(a.sin_port);
	cr_assert_eq(pipe2(p->stop, O_CLOEXEC), 0);
	for (int i = 0; i < PROXY_PAIRS; i++)
		p->fds[i][0] = p->fds[i][1] = -1;
	cr_assert_eq(pthread_create(&p->th, NULL, proxy_main, p), 0);
}

/* Refuse new connections and cut the open ones. */
static void
proxy_down(struct proxy *p)
{
	cr_assert_eq(write(p->stop[1], "x", 1), 1);
	pthread_join(p->th, NULL);
	close(p->lfd);
	close(p->stop[0]);
	close(p->stop[1]);
}

static void
proxy_init(struct proxy *p)
{
	const char *uri = getenv("STOCK_TEST_MONGO_URI");
	const char *colon = uri != NULL ? strrchr(uri, ':') : NULL;

	memset(p, 0, sizeof *p);
	cr_assert_not_null(colon, "%s", uri);
	p->upstream = (uint16_t)atoi(colon + 1);
	cr_assert_gt(p->upstream, 0, "cannot find the port in %s (the proxy needs host:port)", uri);
	proxy_up(p);
}

static uint64_t
ms_since(uint64_t t0)
{
	return (stock_now_ns() - t0) / 1000000;
}

static void
t_dead_server_fails_fast_then_recovers(int mode)
{
	struct mongo_place *place = mongo_create_mode(mode);
	struct store_mongo_options o = { 0 };
	struct proxy px;
	store_t *st;
	struct store_doc d;
	struct store_stats s;
	char uri[128], err[512];
	uint64_t t0;
	int rc;

	proxy_init(&px);
	snprintf(uri, sizeof uri, "mongodb://127.0.0.1:%u/", px.port);
	o.uri = uri;
	o.database = place->db;
	o.atomic_mode = place->atomic_mode;
	o.timeout_ms = 500;
	o.log = logcap_fn;
	o.log_arg = &place->log;
	cr_assert_eq(store_mongo_open(&st, &o, err, sizeof err), 0, "%s", err);
	d = mkdoc("OneStock:dead", 10, 0, 1);
	cr_assert_eq(store_append(st, &d, true), 0);
	cr_expect(store_healthy(st));

	proxy_down(&px);
	d = mkdoc("OneStock:dead", 9, 1, 2);
	t0 = stock_now_ns();
	cr_expect_eq(store_append(st, &d, true), STOCK_ESYS);
	cr_expect_lt(ms_since(t0), 3000, "durable append took %llu ms",
	    (unsigned long long)ms_since(t0));
	cr_expect_not(store_healthy(st));
	t0 = stock_now_ns();
	cr_expect_eq(store_mongo_take(st, "OneStock:dead", 1, NULL), STOCK_ESYS);
	cr_expect_eq(store_get(st, "OneStock:dead", &d), STOCK_ESYS);
	cr_expect_eq(store_mongo_seed(st, "OneStock:x", 1), STOCK_ESYS);
	cr_expect_lt(ms_since(t0), 6000, "three calls took %llu ms",
	    (unsigned long long)ms_since(t0));

	/* Write-behind: sync reports the failure, the record stays queued. */
	d = mkdoc("OneStock:dead", 8, 2, 3);
	cr_assert_eq(store_append(st, &d, false), 0);
	cr_expect_eq(store_sync(st), STOCK_ESYS);
	s = stats_of(st);
	cr_expect_eq(s.queue_depth, 1, "the failed record stays queued");
	cr_expect_gt(s.fsync_failures, 0);
	cr_expect(WAIT_FOR(logcap_has(&place->log, "write-behind write failed")), "log: %s",
	    place->log.text);

	/* Back: the pool reconnects by itself, the queue drains. */
	proxy_up(&px);
	rc = -1;
	for (int i = 0; i < 100 && (rc = store_sync(st)) != 0; i++)
		sleep_ms(50);
	cr_expect_eq(rc, 0);
	cr_expect_eq(stats_of(st).queue_depth, 0);
	expect_doc(st, "OneStock:dead", 8, 2, 3);
	cr_expect(store_healthy(st));
	cr_expect(logcap_has(&place->log, "succeed again"), "log: %s", place->log.text);

	/* Close with the server gone: bounded, and what it drops is counted. */
	d = mkdoc("OneStock:dead", 7, 3, 4);
	proxy_down(&px);
	cr_assert_eq(store_append(st, &d, false), 0);
	t0 = stock_now_ns();
	store_close(st);
	cr_expect_lt(ms_since(t0), 5000, "close took %llu ms", (unsigned long long)ms_since(t0));
	cr_expect(logcap_has(&place->log, "dropped 1 write-behind"), "log: %s", place->log.text);
	mongo_destroy_place(place);
}
MONGO_MODES(dead_server_fails_fast_then_recovers)
