/*
 * The MongoDB part (mongo.h) against a real MongoDB-compatible server
 * ($STOCK_TEST_MONGO_URI; tests/services/run.sh starts FerretDB or mongod
 * for it): seeding, the Db buy (take), operator adjustments, the lease
 * compare-and-swap, whole-document views, the successor claims (a document
 * that lags or goes back, pruning), several processes racing on one
 * database, a dead server, and the atomicity probe. Almost every test runs
 * in all three atomic modes: auto (claims on FerretDB, native otherwise),
 * native forced and claims forced, so both backends are tested whatever the
 * server. Without the variable the tests report themselves SKIPPED, loudly;
 * with CI=true they fail instead. Every outcome checked here is decided by
 * the code, not by timing.
 */
#include <criterion/criterion.h>

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "mongo/mongo.h"

/* ====================================================================== */
/* Helpers                                                                 */
/* ====================================================================== */

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * The log lines of this process ("who: message", the part's threads log
 * too), kept for assertions: log.h's sink, installed once per process and
 * emptied by every fixture.
 */
static struct {
	pthread_mutex_t mu;
	char text[65536];
	size_t len;
	bool installed;
} logcap = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void
logcap_sink(void *arg, enum log_level level, const char *who, const char *msg)
{
	int n;

	(void)arg;
	(void)level;
	pthread_mutex_lock(&logcap.mu);
	n = snprintf(logcap.text + logcap.len, sizeof logcap.text - logcap.len, "%s: %s\n", who, msg);
	if (n > 0 && (size_t)n < sizeof logcap.text - logcap.len)
		logcap.len += (size_t)n;
	pthread_mutex_unlock(&logcap.mu);
}

static void
logcap_reset(void)
{
	pthread_mutex_lock(&logcap.mu);
	logcap.text[0] = '\0';
	logcap.len = 0;
	pthread_mutex_unlock(&logcap.mu);
	if (!logcap.installed) { /* once: log_set_sink is not thread-safe */
		log_set_sink(logcap_sink, NULL);
		logcap.installed = true;
	}
}

static bool
logcap_has(const char *needle)
{
	bool r;

	pthread_mutex_lock(&logcap.mu);
	r = strstr(logcap.text, needle) != NULL;
	pthread_mutex_unlock(&logcap.mu);
	return r;
}

/* ====================================================================== */
/* The harness                                                             */
/* ====================================================================== */

/*
 * Every test that needs a server starts with need_mongo(): without
 * STOCK_TEST_MONGO_URI it prints a loud SKIPPED line and skips, or under
 * CI=true fails. MONGO_TEST(suite, name) is Test(suite, name) with that
 * check in front.
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

/* t_<name>(mode) as mongo/<name> (auto), mongo_native/<name> and
 * mongo_claims/<name>. */
#define MONGO_MODES(name)                                                   \
	MONGO_TEST(mongo, name) { t_##name(MONGO_ATOMIC_AUTO); }            \
	MONGO_TEST(mongo_native, name) { t_##name(MONGO_ATOMIC_NATIVE); }   \
	MONGO_TEST(mongo_claims, name) { t_##name(MONGO_ATOMIC_CLAIMS); }

static pthread_once_t test_mongoc_once = PTHREAD_ONCE_INIT;

/* The test's own clients: libmongoc's errors only (mongo_open installs the
   part's handler once; whichever comes last stays). */
static void
quiet_mongoc_log(mongoc_log_level_t level, const char *domain, const char *msg, void *arg)
{
	(void)arg;
	if (level <= MONGOC_LOG_LEVEL_ERROR)
		fprintf(stderr, "mongoc: %s: %s\n", domain, msg);
}

static void
test_mongoc_init(void)
{
	mongoc_init();
	mongoc_log_set_handler(quiet_mongoc_log, NULL);
}

/* A plain client of the test's own, to look at and plant raw documents. */
static mongoc_client_t *
raw_client(void)
{
	mongoc_client_t *c;

	pthread_once(&test_mongoc_once, test_mongoc_init);
	c = mongoc_client_new(getenv("STOCK_TEST_MONGO_URI"));
	cr_assert_not_null(c);
	mongoc_client_set_error_api(c, MONGOC_ERROR_API_VERSION_2);
	return c;
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

/* A fresh database name and the options to open on it. */
struct place {
	char db[64];
	enum mongo_atomic_mode mode;
	unsigned timeout_ms;
};

static struct place *
place_new(enum mongo_atomic_mode mode)
{
	static unsigned counter; /* places are made by the test's main thread only */
	struct place *p = calloc(1, sizeof *p);

	cr_assert_not_null(p);
	pthread_once(&test_mongoc_once, test_mongoc_init);
	logcap_reset();
	snprintf(p->db, sizeof p->db, "stocktest_%ld_%u", (long)getpid(), ++counter);
	p->mode = mode;
	p->timeout_ms = 5000;
	return p;
}

static mongo_t *
place_open(const struct place *p)
{
	struct mongo_options o = { 0 };
	mongo_t *m = NULL;
	char err[512];
	int rc;

	o.uri = getenv("STOCK_TEST_MONGO_URI");
	o.database = p->db;
	o.timeout_ms = p->timeout_ms;
	o.atomic_mode = p->mode;
	rc = mongo_open(&m, &o, err, sizeof err);
	cr_assert_eq(rc, 0, "mongo_open: %s: %s", stock_err_name(rc), err);
	cr_assert_not_null(m);
	return m;
}

/* Drop the place's database and free it. */
static void
place_drop(struct place *p)
{
	mongoc_client_t *c = raw_client();
	mongoc_database_t *db = mongoc_client_get_database(c, p->db);
	bson_error_t e;

	cr_expect(mongoc_database_drop(db, &e), "drop %s: %s", p->db, e.message);
	mongoc_database_destroy(db);
	mongoc_client_destroy(c);
	free(p);
}

/* A fresh database and an object on it. */
struct mfx {
	struct place *p;
	mongo_t *m;
};

static void
mfx_init_mode(struct mfx *x, enum mongo_atomic_mode mode)
{
	x->p = place_new(mode);
	x->m = place_open(x->p);
}

static void
mfx_fini(struct mfx *x)
{
	mongo_close(x->m);
	place_drop(x->p);
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

static struct mongo_view
view_of(mongo_t *m, const char *sku)
{
	struct mongo_view v;
	int rc = mongo_view(m, sku, &v);

	cr_assert_eq(rc, 0, "view(%s): %s", sku, stock_err_name(rc));
	return v;
}

static void
expect_doc(mongo_t *m, const char *sku, uint64_t stock, uint64_t sold, uint64_t version)
{
	struct mongo_view v = view_of(m, sku);

	cr_expect_str_eq(v.doc.sku, sku);
	cr_expect_eq(v.doc.stock, stock, "%s: stock %llu, want %llu", sku,
	    (unsigned long long)v.doc.stock, (unsigned long long)stock);
	cr_expect_eq(v.doc.sold, sold, "%s: sold %llu, want %llu", sku,
	    (unsigned long long)v.doc.sold, (unsigned long long)sold);
	cr_expect_eq(v.doc.version, version, "%s: version %llu, want %llu", sku,
	    (unsigned long long)v.doc.version, (unsigned long long)version);
}

static struct mongo_stats
stats_of(mongo_t *m)
{
	struct mongo_stats s;

	mongo_stats(m, &s);
	return s;
}

static const struct mongo_lease *
lease_of(const struct mongo_view *v, const char *host)
{
	for (size_t i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

static bool
lease_same(const struct mongo_lease *a, const struct mongo_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms && a->reclaimed == b->reclaimed;
}

static struct mongo_lease
mklease(uint64_t granted, uint64_t sold, uint64_t returned, int64_t expires, bool reclaimed)
{
	struct mongo_lease l = { granted, sold, returned, expires, reclaimed };

	return l;
}

static int
count_views(const struct mongo_view *v, void *arg)
{
	(void)v;
	++*(int *)arg;
	return 0;
}

static int
stop_at_two(const struct mongo_view *v, void *arg)
{
	(void)v;
	return ++*(int *)arg == 2 ? 42 : 0;
}

/* ====================================================================== */
/* Seed, take, adjust                                                      */
/* ====================================================================== */

static void
t_seed_is_idempotent_and_routes_by_prefix(enum mongo_atomic_mode mode)
{
	bool claims = mode == MONGO_ATOMIC_CLAIMS || (mode == MONGO_ATOMIC_AUTO && server_is_ferretdb());
	struct mfx x;
	int n = 0;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "NVDA", 100), 0);
	expect_doc(x.m, "NVDA", 100, 0, 1);
	cr_assert_eq(mongo_seed(x.m, "NVDA", 5), 0, "already there: fine");
	expect_doc(x.m, "NVDA", 100, 0, 1);
	cr_assert_eq(mongo_seed(x.m, "OneStock:ticket", 7), 0);
	expect_doc(x.m, "OneStock:ticket", 7, 0, 1);
	cr_expect_eq(raw_count(&x, "OneStock"), 1);
	cr_expect_eq(raw_count(&x, "ManyStock"), 1);
	cr_assert_eq(mongo_view_all(x.m, count_views, &n), 0);
	cr_expect_eq(n, 2, "view_all reads both collections");
	cr_expect_eq(mongo_seed(x.m, "", 1), STOCK_EINVAL);
	cr_expect_eq(mongo_seed(x.m, "x", STOCK_COUNT_MAX + 1), STOCK_EINVAL);
	cr_expect_eq(mongo_seed(NULL, "x", 1), STOCK_EINVAL);
	cr_expect(mongo_healthy(x.m));
	cr_expect_gt(stats_of(x.m).trips, 0, "round trips are counted");
	cr_expect_eq(stats_of(x.m).failed_trips, 0);
	cr_expect_eq(stats_of(x.m).claims, claims, "stats say which backend is in use");
	mfx_fini(&x);
}
MONGO_MODES(seed_is_idempotent_and_routes_by_prefix)

static void
t_take(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct sku_doc d;
	struct mongo_view before;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "OneStock:t", 10), 0);
	cr_assert_eq(mongo_take(x.m, "OneStock:t", 3, &d), 0);
	cr_expect_str_eq(d.sku, "OneStock:t");
	cr_expect_eq(d.stock, 7);
	cr_expect_eq(d.sold, 3);
	cr_expect_eq(d.version, 2);

	before = view_of(x.m, "OneStock:t");
	memset(&d, 0, sizeof d);
	cr_expect_eq(mongo_take(x.m, "OneStock:t", 8, &d), STOCK_ESOLDOUT);
	cr_expect_eq(d.stock, 7, "@after is the current state");
	cr_expect_eq(d.version, 2);
	expect_doc(x.m, "OneStock:t", before.doc.stock, before.doc.sold, before.doc.version);

	cr_expect_eq(mongo_take(x.m, "OneStock:nope", 1, &d), STOCK_ENOENT);
	cr_expect_eq(mongo_take(x.m, "OneStock:t", 0, &d), STOCK_EINVAL);
	cr_expect_eq(mongo_take(x.m, "", 1, &d), STOCK_EINVAL);
	cr_expect_eq(mongo_take(x.m, "OneStock:t", STOCK_COUNT_MAX + 1, &d), STOCK_EINVAL);
	cr_assert_eq(mongo_take(x.m, "OneStock:t", 7, NULL), 0, "@after may be NULL");
	expect_doc(x.m, "OneStock:t", 0, 10, 3);
	cr_expect_eq(mongo_take(x.m, "OneStock:t", 1, &d), STOCK_ESOLDOUT);
	mfx_fini(&x);
}
MONGO_MODES(take)

/*
 * Native mode on MongoDB: these check the server's single-document
 * atomicity; native mode forced on FerretDB v1, whose conditional updates
 * are not atomic (FerretDB#3040): the in-process per-SKU serialization;
 * claims mode (auto on FerretDB): the successor claims. The claims that
 * several processes race for are tested further down (mongo_multi).
 */
#define TAKERS 8
#define TAKE_STOCK 400

struct taker {
	mongo_t *m;
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
	struct sku_doc d;
	int rc;

	while ((rc = mongo_take(t->m, t->sku, t->n, &d)) == 0 || rc == STOCK_ESOLDOUT) {
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
t_concurrent_takes_never_oversell(enum mongo_atomic_mode mode)
{
	struct mfx x;
	pthread_t th[TAKERS];
	struct taker t[TAKERS];
	uint64_t units = 0;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "OneStock:race", TAKE_STOCK), 0);
	for (int i = 0; i < TAKERS; i++) {
		t[i] = (struct taker){ x.m, "OneStock:race", (uint64_t)(i % 3) + 1, 0, 0, 0 };
		cr_assert_eq(pthread_create(&th[i], NULL, taker_fn, &t[i]), 0);
	}
	for (int i = 0; i < TAKERS; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(t[i].errors, 0, "taker %d ended on %s", i, stock_err_name(t[i].last_rc));
		units += t[i].units;
	}
	cr_expect_eq(units, TAKE_STOCK, "units bought: %llu", (unsigned long long)units);
	{
		struct mongo_view v = view_of(x.m, "OneStock:race");

		cr_expect_eq(v.doc.stock, 0);
		cr_expect_eq(v.doc.sold, TAKE_STOCK, "sold %llu, exactly the initial stock",
		    (unsigned long long)v.doc.sold);
	}
	mfx_fini(&x);
}
MONGO_MODES(concurrent_takes_never_oversell)

static void
t_adjust(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct sku_doc d;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_adjust(x.m, "new-abs", true, 50, &d), 0, "creates it");
	cr_expect_eq(d.stock, 50);
	cr_expect_eq(d.sold, 0);
	cr_expect_eq(d.version, 1);
	cr_assert_eq(mongo_adjust(x.m, "new-rel", false, 25, NULL), 0, "creates it");
	expect_doc(x.m, "new-rel", 25, 0, 1);

	cr_assert_eq(mongo_seed(x.m, "a", 10), 0);
	cr_assert_eq(mongo_take(x.m, "a", 4, NULL), 0);
	cr_assert_eq(mongo_adjust(x.m, "a", false, 20, &d), 0);
	cr_expect_eq(d.stock, 26);
	cr_expect_eq(d.sold, 4, "sold is kept");
	cr_expect_eq(d.version, 3);
	cr_assert_eq(mongo_adjust(x.m, "a", true, 5, &d), 0);
	expect_doc(x.m, "a", 5, 4, 4);
	cr_expect_eq(mongo_adjust(x.m, "a", false, STOCK_COUNT_MAX, &d), STOCK_ERANGE);
	expect_doc(x.m, "a", 5, 4, 4);
	cr_assert_eq(mongo_adjust(x.m, "a", false, STOCK_COUNT_MAX - 5, NULL), 0,
	    "exactly the limit");
	expect_doc(x.m, "a", STOCK_COUNT_MAX, 4, 5);
	cr_expect_eq(mongo_adjust(x.m, "a", true, STOCK_COUNT_MAX + 1, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_adjust(x.m, "", true, 1, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_adjust(NULL, "a", true, 1, NULL), STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(adjust)

/* stock + sold + held is what was seeded, and held is the sum of the entries. */
static void
expect_holds(mongo_t *m, const char *sku, uint64_t stock, uint64_t sold, uint64_t held,
    size_t nholds)
{
	struct mongo_view v = view_of(m, sku);
	uint64_t sum = 0;

	for (size_t i = 0; i < v.nholds; i++)
		sum += v.holds[i].q;
	cr_expect_eq(v.doc.stock, stock, "%s stock %llu", sku, (unsigned long long)v.doc.stock);
	cr_expect_eq(v.doc.sold, sold, "%s sold %llu", sku, (unsigned long long)v.doc.sold);
	cr_expect_eq(v.held, held, "%s held %llu", sku, (unsigned long long)v.held);
	cr_expect_eq(sum, v.held, "held is the sum of the entries");
	cr_expect_eq(v.nholds, nholds, "%s entries %zu", sku, v.nholds);
}

/* holds.<id> entries: take, refuse, end (sell part, release the rest), idempotent end. */
static void
t_hold_entries(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct mongo_view after;
	struct mongo_lease l = { .granted = 2, .expires_ms = 1 };
	char id[16];

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "h", 10), 0);
	cr_assert_eq(mongo_hold_take(x.m, "h", "h_1", 3, &after), 0);
	cr_expect_eq(after.doc.stock, 7);
	cr_expect_eq(after.held, 3);
	expect_holds(x.m, "h", 7, 0, 3, 1);
	cr_expect_eq(mongo_hold_take(x.m, "h", "h_1", 1, NULL), STOCK_EEXIST, "one entry per hold");
	cr_expect_eq(mongo_hold_take(x.m, "h", "h_2", 8, &after), STOCK_ESOLDOUT);
	cr_expect_eq(after.doc.stock, 7, "the refusal's state");
	cr_expect_eq(mongo_hold_take(x.m, "nope", "h_2", 1, NULL), STOCK_ENOENT);
	cr_expect_eq(mongo_hold_take(x.m, "h", "h.2", 1, NULL), STOCK_EINVAL, "not a field name");
	cr_expect_eq(mongo_hold_take(x.m, "h", "h_2", 0, NULL), STOCK_EINVAL);
	/* A lease write keeps the entries (claims copy whole states). */
	cr_assert_eq(mongo_lease_cas(x.m, "h", "inst1", NULL, &l, -2, 0, 0, NULL), 0);
	expect_holds(x.m, "h", 5, 0, 3, 1);
	cr_assert_eq(mongo_hold_take(x.m, "h", "h_2", 5, NULL), 0);
	expect_holds(x.m, "h", 0, 0, 8, 2);
	cr_expect_eq(mongo_hold_end(x.m, "h", "h_1", 2, 0, NULL), STOCK_ECONFLICT, "the entry holds 3");
	cr_expect_eq(mongo_hold_end(x.m, "h", "h_1", 3, 4, NULL), STOCK_EINVAL, "sell <= q");
	cr_assert_eq(mongo_hold_end(x.m, "h", "h_1", 3, 2, &after), 0);
	cr_expect_eq(after.doc.sold, 2);
	expect_holds(x.m, "h", 1, 2, 5, 1);
	cr_expect_eq(mongo_hold_end(x.m, "h", "h_1", 3, 2, NULL), STOCK_ENOENT, "ended: nothing twice");
	expect_holds(x.m, "h", 1, 2, 5, 1);
	cr_assert_eq(mongo_hold_end(x.m, "h", "h_2", 5, 0, NULL), 0);
	expect_holds(x.m, "h", 6, 2, 0, 0);
	/* MONGO_HOLDS_MAX live entries, then STOCK_EBUSY. */
	cr_assert_eq(mongo_adjust(x.m, "h", true, MONGO_HOLDS_MAX + 1, NULL), 0);
	for (int i = 0; i < MONGO_HOLDS_MAX; i++) {
		snprintf(id, sizeof id, "b_%d", i);
		cr_assert_eq(mongo_hold_take(x.m, "h", id, 1, NULL), 0, "entry %d", i);
	}
	cr_expect_eq(mongo_hold_take(x.m, "h", "b_x", 1, NULL), STOCK_EBUSY);
	expect_holds(x.m, "h", 1, 2, MONGO_HOLDS_MAX, MONGO_HOLDS_MAX);
	mfx_fini(&x);
}
MONGO_MODES(hold_entries)

/*
 * The catalog at run time: create inserts or opens a retired document again
 * (never a live one); retire closes it at 0 with sold, leases and holds
 * kept, and from then on grants, holds and restocks are refused while
 * records, returns and the end of holds still apply.
 */
static void
t_sku_create_and_retire(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct mongo_view v;
	struct mongo_lease l = { .granted = 4, .expires_ms = 1 }, l2;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_sku_create(x.m, "cat", 10, &v), 0);
	cr_expect_eq(v.doc.stock, 10);
	cr_expect_eq(v.doc.sold, 0);
	cr_expect_eq(v.doc.version, 1);
	cr_expect(!v.retired);
	cr_expect_eq(mongo_sku_create(x.m, "cat", 99, &v), STOCK_EEXIST, "a live one is not replaced");
	cr_expect_eq(v.doc.stock, 10, "the refusal's state");
	expect_doc(x.m, "cat", 10, 0, 1);
	cr_assert_eq(mongo_take(x.m, "cat", 3, NULL), 0);
	cr_assert_eq(mongo_lease_cas(x.m, "cat", "inst1", NULL, &l, -4, 0, 0, NULL), 0);
	cr_assert_eq(mongo_hold_take(x.m, "cat", "h_1", 2, NULL), 0);
	cr_expect_eq(mongo_sku_retire(x.m, "nope", NULL), STOCK_ENOENT);
	cr_assert_eq(mongo_sku_retire(x.m, "cat", &v), 0);
	cr_expect(v.retired);
	cr_expect_eq(v.doc.stock, 0);
	cr_expect_eq(v.doc.sold, 3, "sold is kept");
	cr_expect_eq(v.held, 2, "holds are kept (the server cancels them)");
	cr_expect_eq(v.nleases, 1, "leases are kept (their owners return them)");
	cr_expect(view_of(x.m, "cat").retired, "stored");
	/* Refused while retired: takes, grants, holds, restocks. */
	cr_expect_eq(mongo_take(x.m, "cat", 1, NULL), STOCK_ESOLDOUT);
	cr_expect_eq(mongo_adjust(x.m, "cat", false, 5, NULL), STOCK_ENOENT);
	cr_expect_eq(mongo_adjust(x.m, "cat", true, 5, NULL), STOCK_ENOENT);
	cr_expect(view_of(x.m, "cat").retired, "a refused restock does not reopen it");
	cr_expect_eq(mongo_hold_take(x.m, "cat", "h_2", 1, NULL), STOCK_ESOLDOUT);
	/* The lease sells 1 and returns 3: applies; then a grant does not. */
	l2 = l;
	l2.sold = 1;
	l2.returned = 3;
	cr_assert_eq(mongo_lease_cas(x.m, "cat", "inst1", &l, &l2, 3, 1, 0, &v), 0, "a return applies");
	cr_expect_eq(v.doc.stock, 3);
	cr_expect_eq(v.doc.sold, 4);
	cr_expect_eq(mongo_take(x.m, "cat", 1, NULL), STOCK_ESOLDOUT, "stock 3, but retired");
	l = l2;
	l2.granted = 5;
	cr_expect_eq(mongo_lease_cas(x.m, "cat", "inst1", &l, &l2, -1, 0, 0, NULL), STOCK_ESOLDOUT,
	    "no grant from a retired document, although its stock is 3");
	cr_assert_eq(mongo_hold_end(x.m, "cat", "h_1", 2, 0, &v), 0, "the end of a hold applies");
	cr_expect_eq(v.doc.stock, 5);
	cr_expect_eq(v.held, 0);
	cr_assert_eq(mongo_sku_retire(x.m, "cat", &v), 0, "again: idempotent");
	cr_expect_eq(v.doc.stock, 0);
	/* Created again: new stock, the same sold; sells again. */
	cr_assert_eq(mongo_sku_create(x.m, "cat", 7, &v), 0, "a retired one opens again");
	cr_expect(!v.retired);
	cr_expect_eq(v.doc.stock, 7);
	cr_expect_eq(v.doc.sold, 4);
	cr_assert_eq(mongo_take(x.m, "cat", 7, NULL), 0);
	cr_assert_eq(mongo_adjust(x.m, "cat", false, 2, NULL), 0);
	expect_doc(x.m, "cat", 2, 11, v.doc.version + 2);
	cr_expect_eq(mongo_sku_create(x.m, "", 1, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_sku_create(x.m, "cat2", STOCK_COUNT_MAX + 1, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_sku_retire(NULL, "cat", NULL), STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(sku_create_and_retire)

#define HOLDERS 8
#define HOLD_STOCK 40

struct holder {
	mongo_t *m;
	int idx, got, errors, last_rc;
};

static void *
holder_fn(void *arg)
{
	struct holder *t = arg;
	char id[24];
	int rc;

	for (int k = 0;; k++) {
		snprintf(id, sizeof id, "r%d_%d", t->idx, k);
		if ((rc = mongo_hold_take(t->m, "OneStock:hrace", id, 1, NULL)) != 0)
			break;
		t->got++;
	}
	if (rc != STOCK_ESOLDOUT)
		t->errors++;
	t->last_rc = rc;
	return NULL;
}

/* Threads racing 1-unit holds never hold more than the stock, and hold all of it. */
static void
t_concurrent_holds_never_overhold(enum mongo_atomic_mode mode)
{
	struct holder t[HOLDERS];
	pthread_t th[HOLDERS];
	struct mfx x;
	int got = 0;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "OneStock:hrace", HOLD_STOCK), 0);
	for (int i = 0; i < HOLDERS; i++) {
		t[i] = (struct holder){ x.m, i, 0, 0, 0 };
		cr_assert_eq(pthread_create(&th[i], NULL, holder_fn, &t[i]), 0);
	}
	for (int i = 0; i < HOLDERS; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(t[i].errors, 0, "holder %d ended on %s", i, stock_err_name(t[i].last_rc));
		got += t[i].got;
	}
	cr_expect_eq(got, HOLD_STOCK, "held %d", got);
	expect_holds(x.m, "OneStock:hrace", 0, 0, HOLD_STOCK, HOLD_STOCK);
	mfx_fini(&x);
}
MONGO_MODES(concurrent_holds_never_overhold)

struct hold_list {
	int n;
	bool saw_decided;
};

static int
hold_listed(const struct mongo_hold *h, void *arg)
{
	struct hold_list *l = arg;

	l->n++;
	if (h->end != MONGO_HOLD_OPEN)
		l->saw_decided = true;
	return 0;
}

/* Hold records: one decision wins, locks exclude, done ones leave the open list. */
MONGO_TEST(mongo, hold_records)
{
	struct mongo_hold h = { .id = "h_rec1", .n = 2, .expires_ms = 1234, .buyer = "alice" }, r, r2;
	uint64_t sell[2] = { 1, 0 };
	struct hold_list l = { 0 };
	int64_t tok, tok2;
	struct mfx x;

	mfx_init_mode(&x, MONGO_ATOMIC_AUTO);
	snprintf(h.items[0].sku, sizeof h.items[0].sku, "NVDA");
	h.items[0].q = 2;
	snprintf(h.items[1].sku, sizeof h.items[1].sku, "AMD");
	h.items[1].q = 1;
	cr_assert_eq(mongo_hold_create(x.m, &h), 0);
	cr_expect_eq(mongo_hold_create(x.m, &h), STOCK_EEXIST);
	cr_expect_eq(mongo_hold_read(x.m, "h_none", &r), STOCK_ENOENT);
	cr_assert_eq(mongo_hold_read(x.m, "h_rec1", &r), 0);
	cr_expect_eq(r.n, 2);
	cr_expect_str_eq(r.items[1].sku, "AMD");
	cr_expect_eq(r.items[0].q, 2);
	cr_expect_eq(r.expires_ms, 1234);
	cr_expect_str_eq(r.buyer, "alice");
	cr_expect_eq(r.end, MONGO_HOLD_OPEN);
	cr_expect_eq(r.lock_until_ms, 0);

	cr_assert_eq(mongo_hold_lock(x.m, "h_rec1", 99999, &tok), 0);
	cr_expect_eq(mongo_hold_lock(x.m, "h_rec1", 99999, &tok2), STOCK_EEXIST, "one lock");
	cr_assert_eq(mongo_hold_read(x.m, "h_rec1", &r), 0);
	cr_expect_eq(r.lock_until_ms, 99999);
	cr_expect_eq(mongo_hold_unlock(x.m, "h_rec1", tok2), 0, "another's token deletes nothing");
	cr_expect_eq(mongo_hold_lock(x.m, "h_rec1", 1, &tok2), STOCK_EEXIST);
	cr_expect_eq(mongo_hold_unlock(x.m, "h_rec1", tok), 0);
	cr_assert_eq(mongo_hold_read(x.m, "h_rec1", &r), 0);
	cr_expect_eq(r.lock_until_ms, 0, "the taker's token deletes it");

	cr_assert_eq(mongo_hold_list_open(x.m, hold_listed, &l), 0);
	cr_expect_eq(l.n, 1);
	cr_expect(!l.saw_decided);
	r2 = r;
	cr_assert_eq(mongo_hold_decide(x.m, &r, MONGO_HOLD_CONFIRMED, sell), 0);
	cr_expect_eq(r.end, MONGO_HOLD_CONFIRMED);
	cr_expect_eq(mongo_hold_decide(x.m, &r2, MONGO_HOLD_EXPIRED, NULL), STOCK_EEXIST,
	    "the first decision stays");
	cr_expect_eq(r2.end, MONGO_HOLD_CONFIRMED, "and is reported to the loser");
	cr_expect_eq(r2.items[0].sell, 1);
	cr_expect_eq(r2.items[1].sell, 0);
	cr_expect_eq(mongo_hold_decide(x.m, &r2, MONGO_HOLD_CONFIRMED, NULL), STOCK_EINVAL);
	l = (struct hold_list){ 0 };
	cr_assert_eq(mongo_hold_list_open(x.m, hold_listed, &l), 0);
	cr_expect(l.n == 1 && l.saw_decided, "listed with its decision");
	cr_assert_eq(mongo_hold_finished(x.m, "h_rec1"), 0);
	l = (struct hold_list){ 0 };
	cr_assert_eq(mongo_hold_list_open(x.m, hold_listed, &l), 0);
	cr_expect_eq(l.n, 0, "done: not open any more");
	cr_assert_eq(mongo_hold_read(x.m, "h_rec1", &r), 0);
	cr_expect(r.done && r.end == MONGO_HOLD_CONFIRMED && r.items[0].sell == 1);
	mfx_fini(&x);
}

/*
 * What every call refuses, the limits that are fine, and that the documents
 * are the server's (a second object, after the first is closed, sees them).
 */
static void
t_arguments_and_limits(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct mongo_view v;
	char sku[STOCK_SKU_MAX + 2];
	int calls = 0;

	mfx_init_mode(&x, mode);
	memset(sku, 'x', sizeof sku - 1);
	sku[sizeof sku - 1] = '\0'; /* 65 bytes */
	cr_expect_eq(mongo_seed(x.m, sku, 1), STOCK_EINVAL);
	cr_expect_eq(mongo_take(x.m, sku, 1, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_view(x.m, sku, &v), STOCK_EINVAL);
	cr_expect_eq(mongo_seed(x.m, "bad-utf8-\xff", 1), STOCK_EINVAL);
	cr_expect_eq(mongo_view(x.m, NULL, &v), STOCK_EINVAL);
	cr_expect_eq(mongo_view(x.m, "x", NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_view(NULL, "x", &v), STOCK_EINVAL);
	cr_expect_eq(mongo_view_all(x.m, NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_view_all(NULL, count_views, &calls), STOCK_EINVAL);
	cr_expect_not(mongo_healthy(NULL));
	mongo_close(NULL);

	sku[STOCK_SKU_MAX] = '\0'; /* 64 bytes: the limit */
	cr_assert_eq(mongo_seed(x.m, sku, STOCK_COUNT_MAX), 0);
	cr_assert_eq(mongo_seed(x.m, "ÄÖÜ-utf8-sku", 3), 0);
	cr_assert_eq(mongo_seed(x.m, "third", 0), 0);
	cr_expect_eq(mongo_view_all(x.m, stop_at_two, &calls), 42, "fn's value stops it");
	cr_expect_eq(calls, 2);
	mongo_close(x.m);

	x.m = place_open(x.p);
	expect_doc(x.m, sku, STOCK_COUNT_MAX, 0, 1);
	expect_doc(x.m, "ÄÖÜ-utf8-sku", 3, 0, 1);
	cr_expect_eq(mongo_take(x.m, "third", 1, NULL), STOCK_ESOLDOUT);
	cr_expect_eq(mongo_view(x.m, "nothing", &v), STOCK_ENOENT);
	mfx_fini(&x);
}
MONGO_MODES(arguments_and_limits)

/* ====================================================================== */
/* The lease compare-and-swap and views                                    */
/* ====================================================================== */

static void
t_lease_cas(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct mongo_view v;
	struct mongo_lease l0 = mklease(0, 0, 0, 1000, false), l1, l2, l3, l4;
	const struct mongo_lease *got;
	const char *sku = "OneStock:lease";

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, sku, 100), 0);
	cr_expect_eq(mongo_lease_cas(x.m, "OneStock:none", "hostA", NULL, &l0, 0, 0, 0, &v),
	    STOCK_ENOENT);

	/* Open. */
	cr_assert_eq(mongo_lease_cas(x.m, sku, "hostA", NULL, &l0, 0, 0, 0, &v), 0);
	cr_expect_eq(v.doc.version, 2);
	cr_assert_not_null(got = lease_of(&v, "hostA"));
	cr_expect(lease_same(got, &l0));
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", NULL, &l0, 0, 0, 0, &v), STOCK_ECONFLICT,
	    "a second open conflicts");

	/* Grant 30 units from stock. */
	l1 = mklease(30, 0, 0, 2000, false);
	cr_assert_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l1, -30, 0, 0, &v), 0);
	cr_expect_eq(v.doc.stock, 70);
	cr_expect_eq(v.doc.version, 3);
	cr_expect_eq(lease_of(&v, "hostA")->granted, 30);

	/* Record 10 sold through the lease. */
	l2 = mklease(30, 10, 0, 2000, false);
	cr_assert_eq(mongo_lease_cas(x.m, sku, "hostA", &l1, &l2, 0, 10, 0, &v), 0);
	cr_expect_eq(v.doc.sold, 10);
	cr_expect_eq(v.doc.stock, 70);

	/* A stale expectation conflicts and changes nothing. */
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l1, &l2, 0, 10, 0, &v), STOCK_ECONFLICT);
	cr_expect_eq(v.doc.sold, 10, "@after: the current state");
	cr_expect_eq(view_of(x.m, sku).doc.version, 4);

	/* A grant beyond the stock: sold out, nothing changed. */
	l3 = mklease(1030, 10, 0, 2000, false);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l2, &l3, -1000, 0, 0, &v), STOCK_ESOLDOUT);
	v = view_of(x.m, sku);
	cr_expect_eq(v.doc.stock, 70);
	cr_expect_eq(lease_of(&v, "hostA")->granted, 30);

	/* Return 5, then another host reclaims the 15 outstanding into lost. */
	l3 = mklease(30, 10, 5, 2000, false);
	cr_assert_eq(mongo_lease_cas(x.m, sku, "hostA", &l2, &l3, 5, 0, 0, &v), 0);
	cr_expect_eq(v.doc.stock, 75);
	l4 = mklease(30, 10, 20, 2000, true);
	cr_assert_eq(mongo_lease_cas(x.m, sku, "hostA", &l3, &l4, 0, 0, 15, &v), 0);
	cr_expect_eq(v.lost, 15);
	got = lease_of(&v, "hostA");
	cr_assert_not_null(got);
	cr_expect(got->reclaimed);
	cr_expect_eq(got->returned, 20);
	cr_expect_eq(v.doc.version, 6);
	/* Units leave lost only as far as it holds them (here: back to stock). */
	l0 = mklease(30, 10, 20, 3000, true);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l4, &l0, 16, 0, -16, &v), STOCK_ESOLDOUT,
	    "lost would go negative");
	cr_assert_eq(mongo_lease_cas(x.m, sku, "hostA", &l4, &l0, 4, 0, -4, &v), 0);
	cr_expect_eq(v.lost, 11);
	cr_expect_eq(v.doc.stock, 79);
	cr_expect_eq(v.doc.sold, 10);

	/* Arguments. */
	l1 = mklease(1, 0, 0, 0, false);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "a.b", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "$x", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_lease_cas(x.m, sku, NULL, NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_lease_cas(NULL, sku, "hostB", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	{
		char longhost[HOST_ID_MAX + 2];

		memset(longhost, 'h', sizeof longhost - 1);
		longhost[sizeof longhost - 1] = '\0';
		cr_expect_eq(mongo_lease_cas(x.m, sku, longhost, NULL, &l1, 0, 0, 0, NULL),
		    STOCK_EINVAL);
		longhost[HOST_ID_MAX] = '\0';
		cr_expect_eq(mongo_lease_cas(x.m, sku, longhost, NULL, &l1, -1, 0, 0, NULL), 0,
		    "64 characters are fine");
	}
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostB", NULL, NULL, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_lease_cas(x.m, NULL, "hostB", NULL, &l1, 0, 0, 0, NULL), STOCK_EINVAL);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l0, 0, 0, 0, NULL), STOCK_EINVAL,
	    "next == expect: the outcome of an ESYS could not be told");
	l2 = mklease(29, 9, 20, 3000, true);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l2, 0, 0, 0, NULL), STOCK_EINVAL,
	    "granted must not decrease");
	l2 = mklease(30, 9, 20, 3000, true);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l2, 0, 0, 0, NULL), STOCK_EINVAL,
	    "sold must not decrease");
	l2 = mklease(30, 11, 20, 3000, true);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l2, 0, 1, 0, NULL), STOCK_EINVAL,
	    "sold + returned > granted");
	l2 = mklease(30, 10, 20, 4000, true);
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l2, 0, -1, 0, NULL), STOCK_EINVAL,
	    "sold is cumulative");
	cr_expect_eq(mongo_lease_cas(x.m, sku, "hostA", &l0, &l2, -(int64_t)STOCK_COUNT_MAX - 1, 0,
	                 0, NULL),
	    STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(lease_cas)

#define GRANTERS 8
#define GRANT_STOCK 60

struct granter {
	mongo_t *m;
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
	struct mongo_lease cur = mklease(0, 0, 0, 1, false), next;
	uint64_t k = 3;
	int rc;

	if ((rc = mongo_lease_cas(g->m, "OneStock:grants", g->host, NULL, &cur, 0, 0, 0, NULL)) != 0) {
		g->errors++;
		g->last_rc = rc;
		return NULL;
	}
	g->writes++;
	for (;;) {
		next = cur;
		next.granted += k;
		rc = mongo_lease_cas(g->m, "OneStock:grants", g->host, &cur, &next, -(int64_t)k, 0, 0,
		    NULL);
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
t_concurrent_grants_never_oversell(enum mongo_atomic_mode mode)
{
	struct mfx x;
	pthread_t th[GRANTERS];
	struct granter g[GRANTERS];
	struct mongo_view v;
	uint64_t total = 0, in_doc = 0;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "OneStock:grants", GRANT_STOCK), 0);
	for (int i = 0; i < GRANTERS; i++) {
		memset(&g[i], 0, sizeof g[i]);
		g[i].m = x.m;
		snprintf(g[i].host, sizeof g[i].host, "host-%d", i);
		cr_assert_eq(pthread_create(&th[i], NULL, granter_fn, &g[i]), 0);
	}
	for (int i = 0; i < GRANTERS; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(g[i].errors, 0, "granter %d ended on %s", i, stock_err_name(g[i].last_rc));
		total += g[i].granted;
	}
	cr_expect_eq(total, GRANT_STOCK, "granted %llu", (unsigned long long)total);
	v = view_of(x.m, "OneStock:grants");
	cr_expect_eq(v.doc.stock, 0);
	cr_expect_eq(v.nleases, GRANTERS);
	for (size_t i = 0; i < v.nleases; i++)
		in_doc += v.leases[i].lease.granted;
	cr_expect_eq(in_doc, GRANT_STOCK, "the leases hold exactly the initial stock");
	mfx_fini(&x);
}
MONGO_MODES(concurrent_grants_never_oversell)

/*
 * Decoding: int32 and int64 are integers, nothing else is (a double, even
 * an integral one, makes the document corrupt); missing lost and leases are
 * zeros; extra leases beyond MONGO_LEASES_MAX are ignored and logged once;
 * corrupt documents fail a view and are skipped by view_all.
 */
static void
t_views_parse_leases_lost_and_integers(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct mongo_view v;
	const struct mongo_lease *l;
	char json[4096];
	size_t o;
	int n = 0;

	mfx_init_mode(&x, mode);
	raw_insert(&x, "OneStock",
	    "{\"_id\": \"OneStock:raw\", \"stock\": 5, \"sold\": 2, \"version\": {\"$numberLong\": "
	    "\"9\"}, \"lost\": 3, \"extra\": \"ignored\", \"leases\": {\"h1\": {\"granted\": 10, "
	    "\"sold\": 4, \"returned\": 1, \"expires\": {\"$numberLong\": \"1700000000000\"}, "
	    "\"reclaimed\": false}, \"h-2_x\": {\"granted\": 2, \"sold\": 0, \"returned\": 2, "
	    "\"expires\": 0, \"reclaimed\": true}}}");
	v = view_of(x.m, "OneStock:raw");
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
	expect_doc(x.m, "OneStock:raw", 5, 2, 9);

	/* No lost, no leases: zeros. */
	raw_insert(&x, "ManyStock", "{\"_id\": \"plain\", \"stock\": 1, \"sold\": 0, \"version\": 1}");
	v = view_of(x.m, "plain");
	cr_expect_eq(v.lost, 0);
	cr_expect_eq(v.nleases, 0);

	/* More leases than a view holds: the extra ones are ignored, logged once. */
	o = (size_t)snprintf(json, sizeof json,
	    "{\"_id\": \"many-leases\", \"stock\": 1, \"sold\": 0, \"version\": 1, \"leases\": {");
	for (int i = 0; i < MONGO_LEASES_MAX + 2; i++)
		o += (size_t)snprintf(json + o, sizeof json - o,
		    "%s\"h%d\": {\"granted\": 1, \"sold\": 0, \"returned\": 0, \"expires\": 5, "
		    "\"reclaimed\": false}",
		    i ? ", " : "", i);
	snprintf(json + o, sizeof json - o, "}}");
	raw_insert(&x, "ManyStock", json);
	v = view_of(x.m, "many-leases");
	cr_expect_eq(v.nleases, MONGO_LEASES_MAX);
	v = view_of(x.m, "many-leases");
	cr_expect(logcap_has("more than 16 leases"), "log: %s", logcap.text);

	/* Negative counts and doubles are corrupt: the view fails, view_all skips them. */
	raw_insert(&x, "ManyStock", "{\"_id\": \"neg\", \"stock\": -1, \"sold\": 0, \"version\": 1}");
	raw_insert(&x, "ManyStock",
	    "{\"_id\": \"negl\", \"stock\": 1, \"sold\": 0, \"version\": 1, \"lost\": -2}");
	raw_insert(&x, "ManyStock", "{\"_id\": \"dbl\", \"stock\": 5, \"sold\": 2.0, \"version\": 1}");
	raw_insert(&x, "ManyStock",
	    "{\"_id\": \"dbl-lease\", \"stock\": 5, \"sold\": 0, \"version\": 1, \"leases\": "
	    "{\"h\": {\"granted\": 1.0, \"sold\": 0, \"returned\": 0, \"expires\": 5, "
	    "\"reclaimed\": false}}}");
	cr_expect_eq(mongo_view(x.m, "neg", &v), STOCK_ESYS);
	cr_expect(logcap_has("corrupt"), "log: %s", logcap.text);
	cr_expect_eq(mongo_view(x.m, "negl", &v), STOCK_ESYS);
	cr_expect_eq(mongo_view(x.m, "dbl", &v), STOCK_ESYS, "a double is not a count");
	cr_expect(logcap_has("document dbl is corrupt (sold is not an integer in range)"), "log: %s",
	    logcap.text);
	cr_expect_eq(mongo_view(x.m, "dbl-lease", &v), STOCK_ESYS, "nor in a lease");
	cr_assert_eq(mongo_view_all(x.m, count_views, &n), 0);
	cr_expect_eq(n, 3, "raw, plain and many-leases; the corrupt ones skipped");
	cr_expect_eq(mongo_view(x.m, "absent", &v), STOCK_ENOENT);
	cr_expect_eq(mongo_view(x.m, "", &v), STOCK_EINVAL);
	mfx_fini(&x);
}
MONGO_MODES(views_parse_leases_lost_and_integers)

/* Takes and adjustments change the pool; leases and lost stay as they are. */
static void
t_pool_writes_keep_leases_and_lost(enum mongo_atomic_mode mode)
{
	struct mfx x;
	struct mongo_view v;
	struct mongo_lease l0 = mklease(0, 0, 0, 7, false), l1 = mklease(10, 0, 0, 7, false);
	struct mongo_lease l2 = mklease(10, 0, 4, 7, true);
	struct sku_doc d;

	mfx_init_mode(&x, mode);
	cr_assert_eq(mongo_seed(x.m, "OneStock:k", 50), 0);
	cr_assert_eq(mongo_lease_cas(x.m, "OneStock:k", "h", NULL, &l0, 0, 0, 0, NULL), 0);
	cr_assert_eq(mongo_lease_cas(x.m, "OneStock:k", "h", &l0, &l1, -10, 0, 0, NULL), 0);
	cr_assert_eq(mongo_lease_cas(x.m, "OneStock:k", "h", &l1, &l2, 0, 0, 6, &v), 0);
	cr_expect_eq(v.doc.version, 4);
	cr_assert_eq(mongo_take(x.m, "OneStock:k", 3, &d), 0);
	cr_expect_eq(d.stock, 37);
	cr_assert_eq(mongo_adjust(x.m, "OneStock:k", false, 5, NULL), 0);
	v = view_of(x.m, "OneStock:k");
	cr_expect_eq(v.doc.stock, 42);
	cr_expect_eq(v.doc.sold, 3);
	cr_expect_eq(v.doc.version, 6);
	cr_expect_eq(v.lost, 6, "lost survives take and adjust");
	cr_assert_eq(v.nleases, 1, "the lease survives take and adjust");
	cr_expect(lease_same(&v.leases[0].lease, &l2));
	cr_assert_eq(mongo_adjust(x.m, "OneStock:k", true, 1, &d), 0);
	cr_expect_eq(d.version, 7);
	v = view_of(x.m, "OneStock:k");
	cr_expect_eq(v.doc.stock, 1);
	cr_expect_eq(v.lost, 6);
	cr_expect_eq(v.nleases, 1);
	mfx_fini(&x);
}
MONGO_MODES(pool_writes_keep_leases_and_lost)

/* ====================================================================== */
/* Successor claims                                                        */
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


/*
 * Idempotency keys (keys.c): claimed once, in flight until answered,
 * replayed byte for byte, refused for another request, released by an
 * abort, claimed anew once expired; only the claiming host settles it.
 */
MONGO_TEST(mongo, idempotency_keys)
{
	struct mfx x;
	struct buf body = BUF_INIT;
	enum mongo_key_state st;
	int status = 0;

	mfx_init_mode(&x, MONGO_ATOMIC_AUTO);
	cr_assert_eq(mongo_key_begin(x.m, "k1", 2, "POST /a", 7, "hostA", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_NEW);
	cr_assert_eq(mongo_key_begin(x.m, "k1", 2, "POST /a", 7, "hostB", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_IN_FLIGHT);
	cr_expect_eq(mongo_key_finish(x.m, "k1", 2, "hostB", 200, "{}", 2), 0); /* not B's: no effect */
	cr_assert_eq(mongo_key_begin(x.m, "k1", 2, "POST /a", 7, "hostB", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_IN_FLIGHT, "another host finished a key it does not own");
	cr_assert_eq(mongo_key_finish(x.m, "k1", 2, "hostA", 201, "{\"id\":1}\n", 9), 0);
	cr_assert_eq(mongo_key_begin(x.m, "k1", 2, "POST /a", 7, "hostB", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_REPLAY);
	cr_expect_eq(status, 201);
	cr_expect(body.len == 9 && memcmp(body.data, "{\"id\":1}\n", 9) == 0, "replayed body");
	buf_free(&body);
	cr_assert_eq(mongo_key_begin(x.m, "k1", 2, "POST /b", 7, "hostB", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_MISMATCH);

	cr_assert_eq(mongo_key_begin(x.m, "k2", 2, "r", 1, "hostA", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_NEW);
	cr_expect_eq(mongo_key_abort(x.m, "k2", 2, "hostA"), 0);
	cr_assert_eq(mongo_key_begin(x.m, "k2", 2, "r", 1, "hostB", 60000, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_NEW, "an aborted key runs again");

	/* Expired (ttl 1 ms): claimed anew, even for another request. */
	sleep_ms(5);
	cr_assert_eq(mongo_key_begin(x.m, "k1", 2, "POST /c", 7, "hostC", 1, &st, &status, &body), 0);
	cr_expect_eq(st, MONGO_KEY_NEW);
	cr_expect_eq(mongo_key_begin(x.m, "", 0, "r", 1, "hostA", 60000, &st, &status, &body), STOCK_EINVAL);
	cr_expect_eq(mongo_key_begin(x.m, "k3", 2, "r", 1, "bad host", 60000, &st, &status, &body),
	    STOCK_EINVAL);
	buf_free(&body);
	mfx_fini(&x);
}

MONGO_TEST(mongo_claims, open_logs_the_mode)
{
	bool ferret = server_is_ferretdb();
	struct mfx x;

	mfx_init_mode(&x, MONGO_ATOMIC_CLAIMS);
	cr_expect(logcap_has("conditional updates go through successor claims"), "log: %s",
	    logcap.text);
	mfx_fini(&x);

	mfx_init_mode(&x, MONGO_ATOMIC_AUTO);
	if (ferret)
		cr_expect(logcap_has("mongo: FerretDB detected: conditional updates go through "
		                     "successor claims (FerretDB#3040)"),
		    "log: %s", logcap.text);
	else
		cr_expect_not(logcap_has("successor claims"), "log: %s", logcap.text);
	cr_assert_eq(mongo_seed(x.m, "OneStock:m", 5), 0);
	cr_assert_eq(mongo_take(x.m, "OneStock:m", 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, "OneStock:m"), ferret ? 1 : 0,
	    "auto mode uses claims exactly on FerretDB");
	cr_expect_eq(stats_of(x.m).claims, ferret);
	mfx_fini(&x);

	mfx_init_mode(&x, MONGO_ATOMIC_NATIVE);
	if (ferret)
		cr_expect(logcap_has("mongo: FerretDB with atomic_mode 1"), "log: %s", logcap.text);
	cr_assert_eq(mongo_seed(x.m, "OneStock:m", 5), 0);
	cr_assert_eq(mongo_take(x.m, "OneStock:m", 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, "OneStock:m"), 0, "native mode writes no claims");
	cr_expect_not(stats_of(x.m).claims);
	mfx_fini(&x);
}

/*
 * Every committed write is exactly one claim; a document that lags or went
 * back to an older chain state (what FerretDB's non-atomic update can do)
 * is rolled forward by every read and never becomes the base of a write; a
 * second object's stale remembered tip cannot commit either.
 */
#define REGRESS_TO_4                                                                          \
	"{\"$set\": {\"stock\": {\"$numberLong\": \"47\"}, \"sold\": {\"$numberLong\": \"3\"}, " \
	"\"version\": {\"$numberLong\": \"4\"}}}"

#define REGRESS_TO_4_EMPTY                                                                    \
	"{\"$set\": {\"stock\": {\"$numberLong\": \"0\"}, \"sold\": {\"$numberLong\": \"3\"}, "  \
	"\"version\": {\"$numberLong\": \"4\"}}}"

static int
note_version(const struct mongo_view *v, void *arg)
{
	*(uint64_t *)arg = v->doc.version;
	return 0;
}

MONGO_TEST(mongo_claims, regressed_document_is_rolled_forward)
{
	const char *sku = "OneStock:reg";
	struct mfx x;
	struct sku_doc d;
	struct mongo_view v;
	struct place *p2;
	mongo_t *m2;
	char filter[96];
	uint64_t seen = 0;

	mfx_init_mode(&x, MONGO_ATOMIC_CLAIMS);
	cr_assert_eq(mongo_seed(x.m, sku, 50), 0);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(mongo_take(x.m, sku, 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 10, "one claim per write");
	cr_expect_eq(raw_doc_version(x.p->db, sku), 11);
	cr_expect_eq(raw_last_claim_version(x.p->db, sku), 11);

	/* Back to version 4 (stock 47, sold 3): every read sees version 11. */
	snprintf(filter, sizeof filter, "{\"_id\": \"%s\"}", sku);
	raw_update(x.p->db, "OneStock", filter, REGRESS_TO_4);
	cr_assert_eq(raw_doc_version(x.p->db, sku), 4);
	expect_doc(x.m, sku, 40, 10, 11);
	cr_expect_eq(raw_doc_version(x.p->db, sku), 11, "the read repaired the document");

	raw_update(x.p->db, "OneStock", filter, REGRESS_TO_4);
	v = view_of(x.m, sku);
	cr_expect_eq(v.doc.version, 11);
	cr_expect_eq(v.doc.stock, 40);
	raw_update(x.p->db, "OneStock", filter, REGRESS_TO_4);
	cr_assert_eq(mongo_view_all(x.m, note_version, &seen), 0);
	cr_expect_eq(seen, 11, "view_all rolls forward");
	cr_expect_eq(raw_doc_version(x.p->db, sku), 11, "and repairs");

	/* A write on a regressed document builds on the latest state. */
	raw_update(x.p->db, "OneStock", filter, REGRESS_TO_4);
	p2 = place_new(MONGO_ATOMIC_CLAIMS);
	snprintf(p2->db, sizeof p2->db, "%s", x.p->db);
	m2 = place_open(p2);
	cr_assert_eq(mongo_take(m2, sku, 2, &d), 0);
	cr_expect_eq(d.version, 12);
	cr_expect_eq(d.stock, 38);
	cr_expect_eq(d.sold, 12);

	/* x.m may still remember version 11 as the last: that claim must fail. */
	cr_assert_eq(mongo_take(x.m, sku, 1, &d), 0);
	cr_expect_eq(d.version, 13);
	cr_expect_eq(d.stock, 37);
	cr_expect_eq(d.sold, 13);
	cr_assert_eq(mongo_adjust(m2, sku, false, 3, &d), 0);
	cr_expect_eq(d.stock, 40);
	cr_assert_eq(mongo_take(x.m, sku, 40, &d), 0, "saw the restock");
	cr_expect_eq(mongo_take(x.m, sku, 1, &d), STOCK_ESOLDOUT);
	cr_expect_eq(d.version, 15);
	expect_doc(m2, sku, 0, 53, 15);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 14, "one claim per write, none for sold out");
	cr_expect_eq(raw_last_claim_version(x.p->db, sku), 15);
	cr_expect_eq(raw_doc_version(x.p->db, sku), 15);

	/* A base read from the document is not proven the last: a write that
	   would refuse on it (stock 0 at version 4) decides on the latest
	   state instead (stock 5 after a restock), read for the purpose. */
	cr_assert_eq(mongo_adjust(m2, sku, false, 5, &d), 0);
	cr_expect_eq(d.version, 16);
	raw_update(x.p->db, "OneStock", filter, REGRESS_TO_4_EMPTY);
	mongo_close(m2);
	m2 = place_open(p2); /* nothing remembered */
	cr_assert_eq(mongo_take(m2, sku, 1, &d), 0, "refused on a lagging document");
	cr_expect_eq(d.version, 17);
	cr_expect_eq(d.stock, 4);
	cr_expect_eq(d.sold, 54);
	mongo_close(m2);
	free(p2); /* the same database: dropped with x */
	mfx_fini(&x);
}

/*
 * Pruning deletes only claims both far behind (CLAIM_KEEP = 64 versions)
 * and old (by their stamp; the test ages them by hand), after every 128th
 * commit of an object.
 */
MONGO_TEST(mongo_claims, old_claims_are_pruned)
{
	const char *sku = "prune";
	struct mfx x;

	mfx_init_mode(&x, MONGO_ATOMIC_CLAIMS);
	cr_assert_eq(mongo_seed(x.m, sku, 1000), 0);
	for (int i = 0; i < 250; i++)
		cr_assert_eq(mongo_take(x.m, sku, 1, NULL), 0);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 250, "the 128th commit kept young claims");
	{
		int64_t at = raw_int(x.p->db, "StockClaims", "sku", sku, NULL, "at");
		int64_t now = (int64_t)time(NULL) * 1000;

		cr_expect(at > now - 10000 && at < now + 10000, "claim stamp %lld, now %lld",
		    (long long)at, (long long)now);
	}
	raw_update(x.p->db, "StockClaims", "{}", "{\"$set\": {\"at\": {\"$numberLong\": \"0\"}}}");
	for (int i = 0; i < 6; i++)
		cr_assert_eq(mongo_take(x.m, sku, 1, NULL), 0);
	/* The 256th commit (version 256 -> 257) pruned old ones from < 256 - 64. */
	cr_expect_eq(raw_count_where(x.p->db, "StockClaims",
	                 "{\"sku\": \"prune\", \"from\": {\"$lt\": 192}}"),
	    0);
	cr_expect_eq(raw_claims_of(x.p->db, sku), 256 - 191, "old but recent versions stay");
	expect_doc(x.m, sku, 1000 - 256, 256, 257);
	cr_assert_eq(mongo_take(x.m, sku, 1, NULL), 0);
	expect_doc(x.m, sku, 1000 - 257, 257, 258);
	mfx_fini(&x);
}

/* --- several processes on one database ----------------------------------- */

/*
 * Three child processes, each with an object (and client pool) of its own on
 * the same database, race for one SKU; they report what they got through a
 * pipe. Nothing may be sold twice across processes: that is what claims
 * are for (native mode on FerretDB would fail here). fork() happens while
 * the test process has no object open (no thread of ours is alive), which
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

/* A child's log sink: everything but the open's expected line, to stderr. */
static void
mp_log(void *arg, enum log_level level, const char *who, const char *msg)
{
	(void)arg;
	(void)level;
	if (strstr(msg, "successor claims") == NULL)
		fprintf(stderr, "child %ld: %s: %s\n", (long)getpid(), who, msg);
}

static mongo_t *
mp_open(const char *db, enum mongo_atomic_mode mode, struct mp_report *r)
{
	struct mongo_options o = { 0 };
	mongo_t *m = NULL;

	o.uri = getenv("STOCK_TEST_MONGO_URI");
	o.database = db;
	o.timeout_ms = 5000;
	o.atomic_mode = mode;
	log_set_sink(mp_log, NULL); /* this process is a fresh child: no thread logs yet */
	if (mongo_open(&m, &o, r->err, sizeof r->err) != 0) {
		r->errors++;
		return NULL;
	}
	return m;
}

/* A child: run the race, fill @r. */
typedef void (*mp_child_fn)(const char *db, enum mongo_atomic_mode mode, int id, struct mp_report *r);

static void
mp_child_takes(const char *db, enum mongo_atomic_mode mode, int id, struct mp_report *r)
{
	struct taker t[MP_TAKERS];
	pthread_t th[MP_TAKERS];
	mongo_t *m;

	(void)id;
	if ((m = mp_open(db, mode, r)) == NULL)
		return;
	for (int i = 0; i < MP_TAKERS; i++) {
		t[i] = (struct taker){ m, "OneStock:mp", 1, 0, 0, 0 };
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
	mongo_close(m);
}

static void
mp_child_grants(const char *db, enum mongo_atomic_mode mode, int id, struct mp_report *r)
{
	struct granter g[MP_GRANTERS];
	pthread_t th[MP_GRANTERS];
	mongo_t *m;

	if ((m = mp_open(db, mode, r)) == NULL)
		return;
	for (int i = 0; i < MP_GRANTERS; i++) {
		memset(&g[i], 0, sizeof g[i]);
		g[i].m = m;
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
	mongo_close(m);
}

/*
 * Fork MP_PROCS children running @child; sum their reports into @total.
 * Returns once all have exited.
 */
static void
mp_run(const char *db, enum mongo_atomic_mode mode, mp_child_fn child, struct mp_report *total)
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
mp_check_chain(const char *db, const char *sku, enum mongo_atomic_mode mode, uint64_t writes)
{
	int64_t claims = raw_claims_of(db, sku);

	if (mode != MONGO_ATOMIC_CLAIMS && claims == 0)
		return; /* auto mode on MongoDB: native */
	cr_expect_eq(claims, (int64_t)writes, "%lld claims for %llu writes", (long long)claims,
	    (unsigned long long)writes);
	cr_expect_eq(raw_last_claim_version(db, sku), (int64_t)writes + 1);
	cr_expect_eq(raw_doc_version(db, sku), (int64_t)writes + 1,
	    "the document holds the last claimed state");
}

static void
t_mp_takes(enum mongo_atomic_mode mode)
{
	struct place *p = place_new(mode);
	struct mp_report tot;
	mongo_t *m;

	m = place_open(p);
	cr_assert_eq(mongo_seed(m, "OneStock:mp", MP_TAKE_STOCK), 0);
	mongo_close(m); /* no object (no threads) in this process across fork */

	mp_run(p->db, mode, mp_child_takes, &tot);
	cr_expect_eq(tot.errors, 0, "children ended on errors (%s)", tot.err);
	cr_expect_eq(tot.units, MP_TAKE_STOCK, "units bought: %llu of %d",
	    (unsigned long long)tot.units, MP_TAKE_STOCK);
	mp_check_chain(p->db, "OneStock:mp", mode, tot.writes);
	m = place_open(p);
	expect_doc(m, "OneStock:mp", 0, MP_TAKE_STOCK, (uint64_t)MP_TAKE_STOCK + 1);
	mongo_close(m);
	place_drop(p);
}

static void
t_mp_grants(enum mongo_atomic_mode mode)
{
	struct place *p = place_new(mode);
	struct mongo_view v;
	struct mp_report tot;
	uint64_t in_doc = 0;
	mongo_t *m;

	m = place_open(p);
	cr_assert_eq(mongo_seed(m, "OneStock:grants", MP_GRANT_STOCK), 0);
	mongo_close(m);

	mp_run(p->db, mode, mp_child_grants, &tot);
	cr_expect_eq(tot.errors, 0, "children ended on errors (%s)", tot.err);
	cr_expect_eq(tot.units, MP_GRANT_STOCK, "granted %llu of %d", (unsigned long long)tot.units,
	    MP_GRANT_STOCK);
	mp_check_chain(p->db, "OneStock:grants", mode, tot.writes);
	m = place_open(p);
	cr_assert_eq(mongo_view(m, "OneStock:grants", &v), 0);
	cr_expect_eq(v.doc.stock, 0);
	cr_expect_eq(v.nleases, MP_PROCS * MP_GRANTERS);
	for (size_t i = 0; i < v.nleases; i++)
		in_doc += v.leases[i].lease.granted;
	cr_expect_eq(in_doc, MP_GRANT_STOCK, "the leases hold exactly the initial stock");
	cr_expect_eq(v.doc.version, tot.writes + 1);
	mongo_close(m);
	place_drop(p);
}

MONGO_TEST(mongo_multi, takes_from_three_processes_never_oversell_claims)
{
	t_mp_takes(MONGO_ATOMIC_CLAIMS);
}

MONGO_TEST(mongo_multi, takes_from_three_processes_never_oversell_auto)
{
	t_mp_takes(MONGO_ATOMIC_AUTO);
}

MONGO_TEST(mongo_multi, grants_from_three_processes_never_oversell_claims)
{
	t_mp_grants(MONGO_ATOMIC_CLAIMS);
}

MONGO_TEST(mongo_multi, grants_from_three_processes_never_oversell_auto)
{
	t_mp_grants(MONGO_ATOMIC_AUTO);
}

/* Needs no MongoDB: nobody listens on port 1. */
Test(mongo, open_fails_fast_on_a_dead_server)
{
	struct mongo_options o = { 0 };
	mongo_t *m = (mongo_t *)&o;
	char err[512];
	uint64_t t0, ms;
	int rc;

	o.uri = "mongodb://127.0.0.1:1/";
	o.timeout_ms = 300;
	t0 = stock_now_ns();
	rc = mongo_open(&m, &o, err, sizeof err);
	ms = (stock_now_ns() - t0) / 1000000;
	cr_expect_eq(rc, STOCK_ESYS, "%s", stock_err_name(rc));
	cr_expect_null(m);
	cr_expect_lt(ms, 3000, "took %llu ms", (unsigned long long)ms);
	cr_expect_not_null(strstr(err, "127.0.0.1:1"), "%s", err);
	cr_expect_not_null(strstr(err, "unreachable"), "%s", err);

	o.atomic_mode = (enum mongo_atomic_mode)3;
	cr_expect_eq(mongo_open(&m, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_not_null(strstr(err, "atomic_mode"), "%s", err);
	o.atomic_mode = MONGO_ATOMIC_AUTO;
	o.uri = "http://not-a-mongodb-uri";
	cr_expect_eq(mongo_open(&m, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_not_null(strstr(err, "bad URI"), "%s", err);
	o.uri = NULL;
	cr_expect_eq(mongo_open(&m, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_eq(mongo_open(NULL, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_eq(mongo_open(&m, NULL, err, sizeof err), STOCK_EINVAL);
}

MONGO_TEST(mongo_claims, claims_collection_name_is_reserved)
{
	struct mongo_options o = { 0 };
	mongo_t *m = NULL;
	char err[512];

	logcap_reset();
	o.uri = getenv("STOCK_TEST_MONGO_URI");
	o.database = "stocktest_reserved";
	o.one_collection = "StockClaims";
	o.atomic_mode = MONGO_ATOMIC_CLAIMS;
	cr_expect_eq(mongo_open(&m, &o, err, sizeof err), STOCK_EINVAL);
	cr_expect_null(m);
	cr_expect_not_null(strstr(err, "reserved"), "%s", err);
	o.atomic_mode = MONGO_ATOMIC_NATIVE;
	cr_assert_eq(mongo_open(&m, &o, err, sizeof err), 0, "%s", err);
	mongo_close(m);
}

/* ====================================================================== */
/* A server that goes away and comes back                                  */
/* ====================================================================== */

/*
 * A TCP proxy in front of the test server, on a port of its own: "down"
 * closes the listener and every connection (new ones are refused), "up"
 * listens on the same port again. The object under test only knows the
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
t_dead_server_fails_fast_then_recovers(enum mongo_atomic_mode mode)
{
	struct place *place = place_new(mode);
	struct mongo_options o = { 0 };
	struct proxy px;
	struct mongo_view v;
	mongo_t *m;
	char uri[128], err[512];
	uint64_t t0;
	int rc;

	proxy_init(&px);
	snprintf(uri, sizeof uri, "mongodb://127.0.0.1:%u/", px.port);
	o.uri = uri;
	o.database = place->db;
	o.atomic_mode = place->mode;
	o.timeout_ms = 500;
	cr_assert_eq(mongo_open(&m, &o, err, sizeof err), 0, "%s", err);
	cr_assert_eq(mongo_seed(m, "OneStock:dead", 10), 0);
	cr_expect(mongo_healthy(m));

	/* Down: every call fails within about timeout_ms, nothing hangs. */
	proxy_down(&px);
	t0 = stock_now_ns();
	cr_expect_eq(mongo_take(m, "OneStock:dead", 1, NULL), STOCK_ESYS);
	cr_expect_lt(ms_since(t0), 3000, "take took %llu ms", (unsigned long long)ms_since(t0));
	cr_expect_not(mongo_healthy(m));
	t0 = stock_now_ns();
	cr_expect_eq(mongo_view(m, "OneStock:dead", &v), STOCK_ESYS);
	cr_expect_eq(mongo_seed(m, "OneStock:x", 1), STOCK_ESYS);
	cr_expect_eq(mongo_adjust(m, "OneStock:dead", false, 1, NULL), STOCK_ESYS);
	cr_expect_lt(ms_since(t0), 6000, "three calls took %llu ms",
	    (unsigned long long)ms_since(t0));
	cr_expect_gt(stats_of(m).failed_trips, 0);
	cr_expect(logcap_has("unhealthy until one succeeds"), "log: %s", logcap.text);

	/* Back: the pool reconnects by itself. The failed calls never reached
	   the server (the proxy refused them), so nothing of them is applied. */
	proxy_up(&px);
	rc = -1;
	for (int i = 0; i < 100 && (rc = mongo_take(m, "OneStock:dead", 1, NULL)) != 0; i++)
		sleep_ms(50);
	cr_expect_eq(rc, 0, "%s", stock_err_name(rc));
	expect_doc(m, "OneStock:dead", 9, 1, 2);
	cr_expect(mongo_healthy(m));
	cr_expect(logcap_has("round trips succeed again"), "log: %s", logcap.text);

	/* Close with the server gone: bounded. */
	proxy_down(&px);
	t0 = stock_now_ns();
	mongo_close(m);
	cr_expect_lt(ms_since(t0), 5000, "close took %llu ms", (unsigned long long)ms_since(t0));
	place_drop(place);
}
MONGO_MODES(dead_server_fails_fast_then_recovers)

/* ====================================================================== */
/* The atomicity probe                                                     */
/* ====================================================================== */

/*
 * Does the server apply a filtered findAndModify atomically? A measurement,
 * not a test of this code: PROBE_THREADS threads, each with its own client
 * of one pool (no serialization of ours), run the native Db buy,
 * findAndModify {_id, stock >= 1} -> $inc {stock: -1, sold: 1}, on one
 * document of PROBE_STOCK until it matches nothing. Atomic exactly when the
 * units handed out total PROBE_STOCK. Runs only with
 * STOCK_TEST_ATOMICITY_PROBE=<rounds> (else it passes without doing
 * anything, saying so: the shim treats a skip as a failure), against
 * STOCK_TEST_MONGO_URI; prints one line per round. On a server that is not
 * FerretDB a non-atomic round fails the test (MongoDB must be atomic).
 *
 *   STOCK_TEST_ATOMICITY_PROBE=5 STOCK_TEST_MONGO_URI=mongodb://127.0.0.1:PORT/ \
 *       build/release/tests/server/test_mongo --filter 'mongo_probe/...'
 * (the filter: the suite name mongo_probe, a slash, a star).
 */
#define PROBE_THREADS 8
#define PROBE_STOCK 400

struct probe_arg {
	mongoc_client_pool_t *pool;
	const char *db;
	uint64_t units;
	int errors;
	char err[512];
};

static void *
probe_taker(void *arg)
{
	struct probe_arg *a = arg;
	mongoc_client_t *c = mongoc_client_pool_pop(a->pool);
	mongoc_collection_t *col = mongoc_client_get_collection(c, a->db, "probe");
	bson_t *q = BCON_NEW("_id", "probe", "stock", "{", "$gte", BCON_INT64(1), "}");
	bson_t *u = BCON_NEW("$inc", "{", "stock", BCON_INT64(-1), "sold", BCON_INT64(1), "}");
	mongoc_find_and_modify_opts_t *fo = mongoc_find_and_modify_opts_new();

	mongoc_find_and_modify_opts_set_update(fo, u);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	for (;;) {
		bson_t reply;
		bson_error_t e;
		bson_iter_t it;
		bool took;

		if (!mongoc_collection_find_and_modify_with_opts(col, q, fo, &reply, &e)) {
			a->errors++;
			snprintf(a->err, sizeof a->err, "%s", e.message);
			bson_destroy(&reply);
			break;
		}
		took = bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it);
		bson_destroy(&reply);
		if (!took)
			break; /* sold out */
		a->units++;
	}
	mongoc_find_and_modify_opts_destroy(fo);
	bson_destroy(u);
	bson_destroy(q);
	mongoc_collection_destroy(col);
	mongoc_client_pool_push(a->pool, c);
	return NULL;
}

/* The int64 @key of the probe document (-1 when missing). */
static int64_t
probe_field(mongoc_client_pool_t *pool, const char *db, const char *key)
{
	int64_t r = -1;
	mongoc_client_t *c = mongoc_client_pool_pop(pool);
	mongoc_collection_t *col = mongoc_client_get_collection(c, db, "probe");
	bson_t *f = BCON_NEW("_id", "probe");
	mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, f, NULL, NULL);
	const bson_t *b;
	bson_iter_t it;

	if (mongoc_cursor_next(cur, &b) && bson_iter_init_find(&it, b, key) &&
	    BSON_ITER_HOLDS_INT64(&it))
		r = bson_iter_int64(&it);
	mongoc_cursor_destroy(cur);
	bson_destroy(f);
	mongoc_collection_destroy(col);
	mongoc_client_pool_push(pool, c);
	return r;
}

/* One round: a fresh document, the race; returns the units handed out. */
static uint64_t
probe_round(mongoc_client_pool_t *pool, const char *db, int round, bool ferret)
{
	struct probe_arg a[PROBE_THREADS];
	pthread_t th[PROBE_THREADS];
	mongoc_client_t *c = mongoc_client_pool_pop(pool);
	mongoc_collection_t *col = mongoc_client_get_collection(c, db, "probe");
	bson_t *doc = BCON_NEW("_id", "probe", "stock", BCON_INT64(PROBE_STOCK), "sold",
	    BCON_INT64(0));
	bson_t *f = BCON_NEW("_id", "probe");
	bson_error_t e;
	uint64_t units = 0, t0;
	int errors = 0;

	mongoc_collection_delete_many(col, f, NULL, NULL, &e);
	cr_assert(mongoc_collection_insert_one(col, doc, NULL, NULL, &e), "%s", e.message);
	mongoc_collection_destroy(col);
	mongoc_client_pool_push(pool, c);
	t0 = stock_now_ns();
	for (int i = 0; i < PROBE_THREADS; i++) {
		memset(&a[i], 0, sizeof a[i]);
		a[i].pool = pool;
		a[i].db = db;
		cr_assert_eq(pthread_create(&th[i], NULL, probe_taker, &a[i]), 0);
	}
	for (int i = 0; i < PROBE_THREADS; i++) {
		pthread_join(th[i], NULL);
		units += a[i].units;
		errors += a[i].errors;
		if (a[i].errors != 0)
			fprintf(stderr, "probe: thread %d: %s\n", i, a[i].err);
	}
	fprintf(stderr,
	    "probe: %s round %d: %d threads took %llu units of %d (%s); document: stock %lld, "
	    "sold %lld; %d errors; %llu ms\n",
	    ferret ? "FerretDB" : "server", round, PROBE_THREADS, (unsigned long long)units,
	    PROBE_STOCK, units == PROBE_STOCK ? "atomic" : "NOT atomic",
	    (long long)probe_field(pool, db, "stock"), (long long)probe_field(pool, db, "sold"),
	    errors, (unsigned long long)ms_since(t0));
	bson_destroy(f);
	bson_destroy(doc);
	return units;
}

MONGO_TEST(mongo_probe, filtered_find_and_modify_atomicity)
{
	const char *env = getenv("STOCK_TEST_ATOMICITY_PROBE");
	int rounds = env != NULL ? atoi(env) : 0;
	bool ferret;
	mongoc_uri_t *uri;
	mongoc_client_pool_t *pool;
	struct place *p;
	int atomic = 0;

	if (rounds <= 0) { /* a measurement on request, not a skipped check */
		fprintf(stderr, "probe: not run (STOCK_TEST_ATOMICITY_PROBE=<rounds> runs it)\n");
		return;
	}
	ferret = server_is_ferretdb();
	p = place_new(MONGO_ATOMIC_NATIVE);
	uri = mongoc_uri_new(getenv("STOCK_TEST_MONGO_URI"));
	cr_assert_not_null(uri);
	mongoc_uri_set_option_as_bool(uri, MONGOC_URI_RETRYWRITES, false);
	pool = mongoc_client_pool_new(uri);
	cr_assert_not_null(pool);
	mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
	mongoc_client_pool_max_size(pool, PROBE_THREADS + 1);
	for (int r = 1; r <= rounds; r++) {
		uint64_t units = probe_round(pool, p->db, r, ferret);

		atomic += units == PROBE_STOCK;
		if (!ferret)
			cr_expect_eq(units, PROBE_STOCK, "a MongoDB that is not atomic");
	}
	fprintf(stderr, "probe: %d of %d rounds atomic\n", atomic, rounds);
	mongoc_client_pool_destroy(pool);
	mongoc_uri_destroy(uri);
	place_drop(p);
}
