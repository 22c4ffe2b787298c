/*
 * The lease protocol (demo-server/cluster/lease*.c, ledger.c) against a real
 * MongoDB-compatible server on $STOCK_TEST_MONGO_URI (tests/services/run.sh
 * starts FerretDB when no MongoDB is at hand), each test in a database of
 * its own with ledgers in a temp dir.
 *
 * Every test checks the document's conservation law after each step
 * (stock + sold + lost + what live leases hold = what was seeded, and every
 * lease's sold + returned <= granted; docs/internals/leases.md) and that the
 * sales MongoDB ends up with are exactly the buys acknowledged. Covered:
 * grant, record, idle return and peeks; two hosts selling one pool out; a
 * kill -9 (a forked child killed with SIGKILL) recovered from the ledger; a
 * dead host's lease reclaimed into lost and settled when it comes back;
 * ledger locking and validation; MongoDB going away (a TCP proxy) while a
 * refill is needed, and the fence that settles the unknown outcome; a reply
 * lost after the update was applied; a reclaim of a live lease; the
 * group commit of Db buys (batch.c) selling a document out exactly; SKUs
 * added at run time while buyers and peekers run, retired and opened again
 * across two instances, until the ledger is full.
 *
 * Nothing decides an outcome by sleeping: waits poll a condition with a
 * generous limit. Without STOCK_TEST_MONGO_URI every test reports itself
 * skipped (under CI=true it fails).
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <mongoc/mongoc.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <stock/latch.h>

#include "cluster/batch.h"
#include "cluster/lease.h"
#include "log.h"

/* ====================================================================== */
/* Helpers                                                                 */
/* ====================================================================== */

static uint64_t
t_now_ms(void)
{
	return stock_now_ns() / 1000000ULL;
}

static void
t_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Poll @expr every 10 ms for up to @ms; true once it holds. */
#define T_UNTIL(expr, ms)                                                  \
	({                                                                 \
		uint64_t d_ = t_now_ms() + (ms);                           \
		bool ok_;                                                  \
		while (!(ok_ = (expr)) && t_now_ms() < d_)                 \
			t_sleep_ms(10);                                    \
		ok_;                                                       \
	})

/* Log capture: every line, for "the log says" checks. */
static struct {
	pthread_mutex_t mu;
	char text[32768];
	size_t len;
} logcap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };

static void
logcap_sink(void *arg, enum log_level level, const char *who, const char *msg)
{
	int n;

	(void)arg;
	(void)level;
	if (getenv("LEASE_T_VERBOSE") != NULL)
		fprintf(stderr, "log %s: %s\n", who, msg);
	pthread_mutex_lock(&logcap.mu);
	n = snprintf(logcap.text + logcap.len, sizeof logcap.text - logcap.len, "%s: %s\n", who,
	    msg);
	if (n > 0 && (size_t)n < sizeof logcap.text - logcap.len)
		logcap.len += (size_t)n;
	pthread_mutex_unlock(&logcap.mu);
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

static pthread_once_t t_once = PTHREAD_ONCE_INIT;

static void
t_init_once(void)
{
	mongoc_init();
	log_set_sink(logcap_sink, NULL); /* once: log_set_sink is not thread-safe */
}

/* One test's place: a database, a temp dir for ledgers. */
static struct {
	char db[64];
	char dir[256];
	const char *uri;
} t;

/* Skip (CI=true: fail) without a server; else make the test's place. */
static bool
t_begin(const char *name)
{
	static unsigned counter;
	const char *uri = getenv("STOCK_TEST_MONGO_URI"), *ci = getenv("CI");

	if (uri == NULL || uri[0] == '\0') {
		fprintf(stderr, "SKIPPED (no MongoDB): lease/%s\n", name);
		if (ci != NULL && strcmp(ci, "true") == 0)
			cr_assert_fail("no MongoDB (STOCK_TEST_MONGO_URI unset) under CI=true");
		cr_skip_test("no MongoDB");
		return false;
	}
	pthread_once(&t_once, t_init_once);
	pthread_mutex_lock(&logcap.mu);
	logcap.len = 0;
	logcap.text[0] = '\0';
	pthread_mutex_unlock(&logcap.mu);
	t.uri = uri;
	snprintf(t.db, sizeof t.db, "leasetest_%ld_%u", (long)getpid(), ++counter);
	snprintf(t.dir, sizeof t.dir, "%s/test_lease.XXXXXX",
	    getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	cr_assert_not_null(mkdtemp(t.dir), "mkdtemp: %s", strerror(errno));
	return true;
}

/* .fini: drop the database, remove the ledgers. */
static void
t_end(void)
{
	mongoc_client_t *c;
	mongoc_database_t *db;
	char cmd[512];

	if (t.uri == NULL)
		return;
	c = mongoc_client_new(t.uri);
	if (c != NULL) {
		db = mongoc_client_get_database(c, t.db);
		mongoc_database_drop(db, NULL);
		mongoc_database_destroy(db);
		mongoc_client_destroy(c);
	}
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", t.dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", t.dir);
	t.uri = NULL;
}

static mongo_t *
t_mongo_mode(const char *uri, unsigned timeout_ms, enum mongo_atomic_mode mode)
{
	struct mongo_options o = { 0 };
	mongo_t *m = NULL;
	char err[512];
	int rc;

	o.uri = uri;
	o.database = t.db;
	o.timeout_ms = timeout_ms;
	o.atomic_mode = mode;
	rc = mongo_open(&m, &o, err, sizeof err);
	cr_assert_eq(rc, 0, "mongo_open: %s: %s", stock_strerror(rc), err);
	return m;
}

static mongo_t *
t_mongo(const char *uri, unsigned timeout_ms)
{
	return t_mongo_mode(uri, timeout_ms, MONGO_ATOMIC_AUTO);
}

/* An instance: its MongoDB handle, its counter, its manager. */
struct inst {
	mongo_t *mongo;
	struct stock_counter ctr;
	lease_mgr_t *mgr;
	struct lease_options opt;
	char host[HOST_ID_MAX + 1];
	char ledger[300];
};

/* Options for @host with fast timers; the caller may change them before t_open. */
static void
t_inst(struct inst *x, const char *host, mongo_t *mongo)
{
	memset(x, 0, sizeof *x);
	snprintf(x->host, sizeof x->host, "%s", host);
	snprintf(x->ledger, sizeof x->ledger, "%s/ledger-%s.bin", t.dir, host);
	x->mongo = mongo;
	x->opt.mongo = mongo;
	x->opt.host_id = x->host;
	x->opt.ledger_path = x->ledger;
	x->opt.block = 50;
	x->opt.lease_ms = 10000;
	x->opt.record_ms = 50;
	x->opt.poll_ms = 100;
	x->opt.idle_ms = 300;
}

/* lease_open for one leased SKU @sku (and OneStock:Db as a plain one). */
static int
t_open(struct inst *x, const char *sku)
{
	const char *leased[] = { sku }, *plain[] = { "OneStock:Db" };
	struct stock_counter *ctrs[] = { &x->ctr };

	cr_assert_eq(stock_counter_init(&x->ctr, STOCK_STRATEGY_ATOMIC, 0), 0);
	return lease_open(&x->mgr, &x->opt, leased, ctrs, 1, plain, 1);
}

static void
t_close(struct inst *x)
{
	lease_close(x->mgr);
	x->mgr = NULL;
	stock_counter_destroy(&x->ctr);
}

static struct mongo_view
t_view(mongo_t *m, const char *sku)
{
	struct mongo_view v;
	int rc = mongo_view(m, sku, &v);

	cr_assert_eq(rc, 0, "mongo_view(%s): %s", sku, stock_strerror(rc));
	return v;
}

static const struct mongo_lease *
t_lease(const struct mongo_view *v, const char *host)
{
	for (size_t i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

static uint64_t
t_held(const struct mongo_lease *l)
{
	return l == NULL ? 0 : l->granted - l->sold - l->returned;
}

/* The conservation law and sane leases; returns the document. */
static struct mongo_view
t_check(mongo_t *m, const char *sku, uint64_t seeded)
{
	struct mongo_view v = t_view(m, sku);
	uint64_t live = 0;

	for (size_t i = 0; i < v.nleases; i++) {
		const struct mongo_lease *l = &v.leases[i].lease;

		cr_assert_leq(l->sold + l->returned, l->granted, "%s: leases.%s does not fit", sku,
		    v.leases[i].host);
		if (!l->reclaimed)
			live += t_held(l);
	}
	cr_assert_eq(v.doc.stock + v.doc.sold + v.lost + live, seeded,
	    "%s: stock %llu + sold %llu + lost %llu + held %llu != %llu", sku,
	    (unsigned long long)v.doc.stock, (unsigned long long)v.doc.sold,
	    (unsigned long long)v.lost, (unsigned long long)live, (unsigned long long)seeded);
	return v;
}

static bool
t_sold_is(mongo_t *m, const char *sku, uint64_t sold)
{
	struct mongo_view v;

	return mongo_view(m, sku, &v) == 0 && v.doc.sold == sold;
}

static bool
t_held_is(mongo_t *m, const char *sku, const char *host, uint64_t held)
{
	struct mongo_view v;

	return mongo_view(m, sku, &v) == 0 && t_lease(&v, host) != NULL &&
	    t_held(t_lease(&v, host)) == held;
}

/* Buy 1 unit @n times; every buy must succeed. */
static void
t_buy(struct inst *x, const char *sku, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		int rc = lease_take(x->mgr, sku, 1, NULL);

		cr_assert_eq(rc, 0, "buy %u of %s on %s: %s", i, sku, x->host, stock_strerror(rc));
	}
}

/* ====================================================================== */
/* One instance                                                            */
/* ====================================================================== */

Test(lease, grant_record_return_peek, .fini = t_end, .timeout = 120)
{
	struct lease_stats st;
	struct lease_peek p;
	struct mongo_view v;
	struct inst a;

	if (!t_begin("grant_record_return_peek"))
		return;
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	cr_assert_eq(mongo_seed(a.mongo, "NVDA", 10000), 0);
	cr_assert_eq(mongo_seed(a.mongo, "OneStock:Db", 7), 0);
	cr_assert_eq(t_open(&a, "NVDA"), 0);
	cr_expect_eq(lease_take(a.mgr, "OneStock:Db", 1, NULL), STOCK_ENOENT); /* not leased */
	cr_expect_eq(lease_take(a.mgr, "AAPL", 1, NULL), STOCK_ENOENT);
	cr_assert_eq(lease_peek(a.mgr, "OneStock:Db", &p), 0);
	cr_expect_eq(p.remaining, 7);

	t_buy(&a, "NVDA", 250); /* several grants of about 50 */
	cr_assert_eq(lease_peek(a.mgr, "NVDA", &p), 0);
	cr_expect_eq(p.remaining, 9750, "peek remaining %llu", (unsigned long long)p.remaining);
	cr_expect_eq(p.sold, 250, "peek sold %llu", (unsigned long long)p.sold);
	t_check(a.mongo, "NVDA", 10000);

	/* Recorded within a few record periods, then returned once idle. */
	cr_assert(T_UNTIL(t_sold_is(a.mongo, "NVDA", 250), 10000));
	cr_assert(T_UNTIL(t_held_is(a.mongo, "NVDA", "A", 0), 10000));
	v = t_check(a.mongo, "NVDA", 10000);
	cr_expect_eq(v.doc.stock, 9750);
	cr_expect_eq(v.lost, 0);
	lease_stats(a.mgr, &st);
	cr_expect_geq(st.grants, 2);
	cr_expect_geq(st.records, 1);
	/* What the grants brought beyond the 250 sold went back (none when the
	   grants happened to add up to exactly 250). */
	cr_expect_eq(t_lease(&v, "A")->returned, t_lease(&v, "A")->granted - 250);
	cr_expect_eq(st.return_units, t_lease(&v, "A")->returned);
	cr_expect_eq(st.returns > 0, st.return_units > 0);
	cr_expect(T_UNTIL((lease_stats(a.mgr, &st), st.polls >= 1), 5000));
	cr_expect_eq(st.reclaims, 0);

	/* A newer state learnt elsewhere wins the peek; an older one does not. */
	lease_offer(a.mgr, "OneStock:Db", 5, 2, 1000, false);
	cr_assert_eq(lease_peek(a.mgr, "OneStock:Db", &p), 0);
	cr_expect(p.remaining == 5 && p.sold == 2 && p.version == 1000);
	lease_offer(a.mgr, "OneStock:Db", 6, UINT64_MAX, 999, false);
	cr_assert_eq(lease_peek(a.mgr, "OneStock:Db", &p), 0);
	cr_expect_eq(p.remaining, 5);
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.events_applied, 1);
	/* A bus event estimates sold from the drop in remaining, too low when
	   a restock came in between; the same version read whole corrects it
	   (the poll), or the peek would stay behind until the next change. */
	lease_offer(a.mgr, "OneStock:Db", 9, UINT64_MAX, 1001, false); /* +6 restocked, 2 sold */
	cr_assert_eq(lease_peek(a.mgr, "OneStock:Db", &p), 0);
	cr_expect(p.remaining == 9 && p.sold == 2 && p.version == 1001);
	lease_offer(a.mgr, "OneStock:Db", 9, 4, 1001, false);
	cr_assert_eq(lease_peek(a.mgr, "OneStock:Db", &p), 0);
	cr_expect(p.remaining == 9 && p.sold == 4 && p.version == 1001);

	t_buy(&a, "NVDA", 3);
	t_close(&a); /* records and returns everything */
	v = t_check(a.mongo, "NVDA", 10000);
	cr_expect_eq(v.doc.sold, 253);
	cr_expect_eq(t_held(t_lease(&v, "A")), 0);
	mongo_close(a.mongo);
}

/* ====================================================================== */
/* Two instances                                                           */
/* ====================================================================== */

struct buyer {
	struct inst *x;
	uint64_t bought;
	int last_rc;
};

static void *
buyer_main(void *arg)
{
	struct buyer *b = arg;
	int busy = 0;

	for (;;) {
		int rc = lease_take(b->x->mgr, "MSFT", 1, NULL);

		if (rc == 0) {
			b->bought++;
			busy = 0;
			continue;
		}
		if ((rc == STOCK_EBUSY || rc == STOCK_ESYS || rc == STOCK_ECONFLICT) && ++busy < 50) {
			t_sleep_ms(5);
			continue;
		}
		b->last_rc = rc;
		return NULL;
	}
}

Test(lease, two_hosts_sell_one_pool, .fini = t_end, .timeout = 180)
{
	struct buyer by[4];
	pthread_t th[4];
	struct inst a, b;
	struct mongo_view v;
	uint64_t total = 0;

	if (!t_begin("two_hosts_sell_one_pool"))
		return;
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	t_inst(&b, "B", t_mongo(t.uri, 5000));
	a.opt.block = b.opt.block = 20;
	cr_assert_eq(mongo_seed(a.mongo, "MSFT", 600), 0);
	cr_assert_eq(t_open(&a, "MSFT"), 0);
	cr_assert_eq(t_open(&b, "MSFT"), 0);
	for (int i = 0; i < 4; i++) {
		by[i] = (struct buyer){ i < 2 ? &a : &b, 0, 0 };
		cr_assert_eq(pthread_create(&th[i], NULL, buyer_main, &by[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		total += by[i].bought;
		cr_expect_eq(by[i].last_rc, STOCK_ESOLDOUT, "buyer %d ended with %s", i,
		    stock_strerror(by[i].last_rc));
	}
	cr_expect_leq(total, 600);
	t_check(a.mongo, "MSFT", 600);
	t_close(&a);
	t_close(&b);
	v = t_check(a.mongo, "MSFT", 600);
	cr_expect_eq(v.doc.sold, total, "sold %llu, acknowledged %llu",
	    (unsigned long long)v.doc.sold, (unsigned long long)total);
	cr_expect_eq(v.doc.stock, 600 - total);
	cr_expect_eq(v.lost, 0);
	/* Grants shrink with the pool (at most 1/8 of it): little is left unsold. */
	cr_expect_geq(total, 560, "only %llu of 600 sold", (unsigned long long)total);
	mongo_close(a.mongo);
	mongo_close(b.mongo);
}

/* ====================================================================== */
/* The catalog at run time                                                 */
/* ====================================================================== */

/* Buyers of NVDA and peekers of the R* SKUs while entries are added. */
struct adder_race {
	struct inst *x;
	struct stock_latch stop;
	uint64_t bought, found;
};

static void *
race_main(void *arg)
{
	struct adder_race *r = arg;
	char sku[16];
	unsigned i = 0;

	while (!stock_latch_is_set(&r->stop)) {
		struct lease_peek p;

		if (lease_take(r->x->mgr, "NVDA", 1, NULL) == 0)
			r->bought++;
		snprintf(sku, sizeof sku, "R%u", i++ % 24);
		if (lease_peek(r->x->mgr, sku, &p) == 0) {
			cr_assert_eq(p.remaining, 10, "%s half seen: remaining %llu", sku,
			    (unsigned long long)p.remaining);
			r->found++;
		}
	}
	return NULL;
}

/*
 * lease_add while buyers and peekers run (every entry they find is whole),
 * the other instance adding the same SKUs at its poll; a retire seen by
 * both (A learns it, B at its poll): no sale after it, leases given back;
 * a reopen sells again; the ledger's 256 slots, then STOCK_ENOMEM.
 */
Test(lease, runtime_adds_and_retire, .fini = t_end, .timeout = 240)
{
	struct adder_race r[2];
	pthread_t th[2];
	struct lease_peek p;
	struct mongo_view v;
	struct inst a, b;
	char sku[16];
	uint64_t nvda = 0;
	int added = 0, rc;

	if (!t_begin("runtime_adds_and_retire"))
		return;
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	t_inst(&b, "B", t_mongo(t.uri, 5000));
	a.opt.idle_ms = b.opt.idle_ms = 60000;
	cr_assert_eq(mongo_seed(a.mongo, "NVDA", 100000), 0);
	cr_assert_eq(t_open(&a, "NVDA"), 0);
	cr_assert_eq(t_open(&b, "NVDA"), 0);
	for (int i = 0; i < 2; i++) {
		r[i] = (struct adder_race){ .x = &a };
		stock_latch_init(&r[i].stop, false);
		cr_assert_eq(pthread_create(&th[i], NULL, race_main, &r[i]), 0);
	}
	for (unsigned i = 0; i < 20; i++) {
		snprintf(sku, sizeof sku, "R%u", i);
		cr_assert_eq(mongo_sku_create(a.mongo, sku, 10, NULL), 0);
		cr_assert_eq(lease_add(a.mgr, sku), 0, "add %s", sku);
		cr_expect_eq(lease_add(a.mgr, sku), STOCK_EEXIST);
	}
	cr_expect_eq(lease_add(a.mgr, "NOSUCH"), STOCK_ENOENT, "no document: no entry");
	for (int i = 0; i < 2; i++) {
		stock_latch_set(&r[i].stop);
		pthread_join(th[i], NULL);
		nvda += r[i].bought;
		stock_latch_destroy(&r[i].stop);
	}
	cr_expect_gt(r[0].found + r[1].found, 0, "the peekers never found a new SKU");
	t_buy(&a, "R5", 1);
	cr_assert(T_UNTIL(lease_peek(b.mgr, "R19", &p) == 0, 10000), "B never added R19 (poll)");
	t_buy(&b, "R5", 1);

	/* Retire R5: A stops at once; B at its next poll; both give their units back. */
	cr_assert_eq(mongo_sku_retire(a.mongo, "R5", &v), 0);
	lease_learn_view(a.mgr, &v);
	cr_expect_eq(lease_take(a.mgr, "R5", 1, NULL), STOCK_ESOLDOUT);
	cr_assert(T_UNTIL(lease_peek(b.mgr, "R5", &p) == 0 && p.remaining == 0, 10000));
	cr_expect_eq(lease_take(b.mgr, "R5", 1, NULL), STOCK_ESOLDOUT);
	cr_assert(T_UNTIL(t_held_is(a.mongo, "R5", "A", 0) && t_held_is(a.mongo, "R5", "B", 0) &&
	        t_sold_is(a.mongo, "R5", 2), 10000), "the leases of R5 were not given back");
	cr_expect_eq(mongo_adjust(a.mongo, "R5", false, 3, NULL), STOCK_ENOENT);
	/* Open it again: both sell. */
	cr_assert_eq(mongo_sku_create(a.mongo, "R5", 4, &v), 0);
	lease_learn_view(a.mgr, &v);
	t_buy(&a, "R5", 1);
	cr_assert(T_UNTIL(lease_take(b.mgr, "R5", 1, NULL) == 0, 10000), "B never sold R5 again");

	/* The ledger: NVDA and R0..R19 hold 21 of its 256 slots. */
	for (unsigned i = 20; added == 0; i++) {
		snprintf(sku, sizeof sku, "R%u", i);
		cr_assert_eq(mongo_seed(a.mongo, sku, 1), 0);
		rc = lease_add(a.mgr, sku);
		if (rc == STOCK_ENOMEM) {
			cr_expect_eq(i, 255, "full after %u slots", i + 1);
			cr_expect(!lease_has_room(a.mgr, sku));
			cr_expect(lease_has_room(a.mgr, "R7"), "a SKU with a slot has room");
			added = 1;
		} else {
			cr_assert_eq(rc, 0, "add %s: %s", sku, stock_strerror(rc));
			cr_assert_lt(i, 300, "the ledger never filled");
		}
	}
	t_close(&a);
	t_close(&b);
	v = t_check(a.mongo, "NVDA", 100000);
	cr_expect_eq(v.doc.sold, nvda, "NVDA sold %llu, acknowledged %llu",
	    (unsigned long long)v.doc.sold, (unsigned long long)nvda);
	v = t_view(a.mongo, "R5");
	cr_expect_eq(v.doc.sold, 4);
	cr_expect_eq(v.doc.stock, 2, "reopened with 4, 2 sold since");
	cr_expect_eq(t_held(t_lease(&v, "A")) + t_held(t_lease(&v, "B")), 0);
	mongo_close(a.mongo);
	mongo_close(b.mongo);
}

/* ====================================================================== */
/* Crashes                                                                 */
/* ====================================================================== */

/*
 * In a child: open @host on @sku (records only after a minute, lease of
 * @lease_ms), buy @n units, die by SIGKILL: the ledger has the sales,
 * MongoDB does not. Returns once the child is dead.
 */
static void
t_killed(const char *host, const char *sku, unsigned n, unsigned lease_ms)
{
	pid_t pid;
	int st;

	fflush(NULL);
	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct inst x;

		t_inst(&x, host, t_mongo(t.uri, 5000));
		x.opt.block = 1000; /* one grant (125: 1/8 of the pool): no refill records */
		x.opt.record_ms = 60000;
		x.opt.lease_ms = lease_ms;
		x.opt.idle_ms = 60000;
		if (t_open(&x, sku) != 0)
			_exit(2);
		for (unsigned i = 0; i < n; i++)
			if (lease_take(x.mgr, sku, 1, NULL) != 0)
				_exit(3);
		kill(getpid(), SIGKILL);
		_exit(4);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child status %d", st);
}

Test(lease, kill9_recovered_from_ledger, .fini = t_end, .timeout = 120)
{
	const struct mongo_lease *l;
	struct mongo_view v;
	struct lease_stats st;
	struct inst a;
	mongo_t *m;

	if (!t_begin("kill9_recovered_from_ledger"))
		return;
	m = t_mongo(t.uri, 5000);
	cr_assert_eq(mongo_seed(m, "AMZN", 1000), 0);
	mongo_close(m); /* no client threads across the fork */
	t_killed("A", "AMZN", 37, 60000); /* no renewal (lease_ms / 3) records either */

	m = t_mongo(t.uri, 5000);
	v = t_check(m, "AMZN", 1000);
	l = t_lease(&v, "A");
	cr_assert_not_null(l);
	cr_expect_eq(l->sold, 0); /* nothing recorded before the kill */
	cr_expect_eq(t_held(l), 125);

	t_inst(&a, "A", m);
	cr_assert_eq(t_open(&a, "AMZN"), 0); /* reconciles */
	v = t_check(m, "AMZN", 1000);
	cr_expect_eq(v.doc.sold, 37, "sold %llu", (unsigned long long)v.doc.sold);
	cr_expect_eq(v.doc.stock, 1000 - 37);
	cr_expect_eq(t_held(t_lease(&v, "A")), 0);
	cr_expect(logcap_has("recovered lease: 37 sales recorded, 88 units returned"), "%s",
	    logcap.text);
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.settles, 0);

	/* A second manager on the same ledger while it is open: refused. */
	{
		struct inst a2;

		t_inst(&a2, "A", m);
		cr_expect_eq(t_open(&a2, "AMZN"), STOCK_EBUSY);
		stock_counter_destroy(&a2.ctr);
	}
	t_buy(&a, "AMZN", 5);
	t_close(&a);
	v = t_check(m, "AMZN", 1000);
	cr_expect_eq(v.doc.sold, 42);
	mongo_close(m);
}

Test(lease, dead_host_reclaimed_then_settled, .fini = t_end, .timeout = 120)
{
	const struct mongo_lease *l;
	struct lease_stats st;
	struct lease_peek p;
	struct mongo_view v;
	struct inst a, b;
	uint64_t held;
	mongo_t *m;

	if (!t_begin("dead_host_reclaimed_then_settled"))
		return;
	m = t_mongo(t.uri, 5000);
	cr_assert_eq(mongo_seed(m, "TSLA", 1000), 0);
	mongo_close(m);
	t_killed("A", "TSLA", 20, 300); /* A's lease expires 300 ms after its last renewal */

	m = t_mongo(t.uri, 5000);
	v = t_check(m, "TSLA", 1000);
	held = t_held(t_lease(&v, "A"));
	cr_assert_geq(held, 20, "granted %llu sold %llu returned %llu stock %llu",
	    (unsigned long long)t_lease(&v, "A")->granted, (unsigned long long)t_lease(&v, "A")->sold,
	    (unsigned long long)t_lease(&v, "A")->returned, (unsigned long long)v.doc.stock);

	/* B's poll reclaims A's expired lease: its units go to lost, not the pool. */
	t_inst(&b, "B", m);
	cr_assert_eq(t_open(&b, "TSLA"), 0);
	cr_assert(T_UNTIL((lease_stats(b.mgr, &st), st.reclaims == 1), 10000));
	v = t_check(m, "TSLA", 1000);
	l = t_lease(&v, "A");
	cr_assert(l != NULL && l->reclaimed);
	cr_expect_eq(v.lost, held);
	cr_expect_eq(v.doc.stock, 1000 - held);
	cr_assert(T_UNTIL(lease_peek(b.mgr, "TSLA", &p) == 0 && p.remaining == 1000 - held,
	    5000), "peek remaining %llu", (unsigned long long)p.remaining);
	cr_expect(logcap_has("reclaimed the expired lease of A"), "%s", logcap.text);

	/* A comes back: its 20 sales move from lost to sold, the rest to stock. */
	t_inst(&a, "A", m);
	cr_assert_eq(t_open(&a, "TSLA"), 0);
	v = t_check(m, "TSLA", 1000);
	l = t_lease(&v, "A");
	cr_assert_not_null(l);
	cr_expect(!l->reclaimed);
	cr_expect_eq(t_held(l), 0);
	cr_expect_eq(v.lost, 0);
	cr_expect_eq(v.doc.sold, 20);
	cr_expect_eq(v.doc.stock, 980);
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.settles, 1);
	cr_expect(logcap_has("it had been reclaimed: settled"), "%s", logcap.text);
	t_close(&a);
	t_close(&b);
	t_check(m, "TSLA", 1000);
	mongo_close(m);
}

/*
 * A reclaim of a lease whose owner is alive (skewed clocks, a long MongoDB
 * outage), made here by hand as another instance would: the owner keeps
 * selling what it holds, its next update misses, adopts the reclaim and
 * settles it. Nothing is oversold and lost comes back to 0.
 */
Test(lease, live_lease_reclaimed_is_settled, .fini = t_end, .timeout = 120)
{
	struct mongo_lease next;
	struct lease_stats st;
	struct mongo_view v;
	struct inst a;
	uint64_t held;

	if (!t_begin("live_lease_reclaimed_is_settled"))
		return;
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	a.opt.record_ms = 200;
	a.opt.idle_ms = 60000; /* keeps what it holds until closed */
	cr_assert_eq(mongo_seed(a.mongo, "ORCL", 1000), 0);
	cr_assert_eq(t_open(&a, "ORCL"), 0);
	t_buy(&a, "ORCL", 10);
	cr_assert(T_UNTIL(t_sold_is(a.mongo, "ORCL", 10), 10000));

	v = t_check(a.mongo, "ORCL", 1000);
	next = *t_lease(&v, "A");
	held = t_held(&next);
	cr_assert_gt(held, 0, "granted %llu sold %llu returned %llu stock %llu",
	    (unsigned long long)next.granted, (unsigned long long)next.sold,
	    (unsigned long long)next.returned, (unsigned long long)v.doc.stock);
	next.reclaimed = true;
	cr_assert_eq(mongo_lease_cas(a.mongo, "ORCL", "A", t_lease(&v, "A"), &next, 0, 0,
	    (int64_t)held, NULL), 0);
	t_check(a.mongo, "ORCL", 1000);

	t_buy(&a, "ORCL", 5); /* from what A holds: quarantined, not resold */
	cr_assert(T_UNTIL(t_sold_is(a.mongo, "ORCL", 15), 10000));
	v = t_check(a.mongo, "ORCL", 1000);
	cr_expect_eq(v.lost, 0);
	cr_expect(!t_lease(&v, "A")->reclaimed);
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.settles, 1);
	cr_expect(logcap_has("our lease was reclaimed by another instance; settling it"), "%s",
	    logcap.text);
	t_close(&a);
	v = t_check(a.mongo, "ORCL", 1000);
	cr_expect_eq(v.doc.sold, 15);
	cr_expect_eq(v.doc.stock, 985);
	mongo_close(a.mongo);
}

/* ====================================================================== */
/* The ledger file                                                         */
/* ====================================================================== */

static void
t_write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

Test(lease, ledger_checks, .fini = t_end, .timeout = 60)
{
	static char junk[24664];
	struct inst a, b;
	mongo_t *m;

	if (!t_begin("ledger_checks"))
		return;
	m = t_mongo(t.uri, 5000);
	cr_assert_eq(mongo_seed(m, "GOOG", 10), 0);

	t_inst(&a, "A", m);
	cr_assert_eq(t_open(&a, "GOOG"), 0);
	t_close(&a);
	/* A's ledger under another host id: refused, A's data stays A's. */
	t_inst(&b, "B", m);
	snprintf(b.ledger, sizeof b.ledger, "%s", a.ledger);
	cr_expect_eq(t_open(&b, "GOOG"), STOCK_EINVAL);
	stock_counter_destroy(&b.ctr);
	cr_expect(logcap_has("belongs to host id 'A'"), "%s", logcap.text);

	/* Not a ledger: wrong size, or the right size without the magic. */
	t_write_file(b.ledger, "hello", 5);
	cr_expect_eq(t_open(&b, "GOOG"), STOCK_EINVAL);
	stock_counter_destroy(&b.ctr);
	memset(junk, 'x', sizeof junk);
	t_write_file(b.ledger, junk, sizeof junk);
	cr_expect_eq(t_open(&b, "GOOG"), STOCK_EINVAL);
	stock_counter_destroy(&b.ctr);

	/* Bad options. */
	t_inst(&b, "B", m);
	b.opt.host_id = "not valid";
	cr_expect_eq(t_open(&b, "GOOG"), STOCK_EINVAL);
	stock_counter_destroy(&b.ctr);
	b.opt.host_id = b.host;
	b.opt.mongo = NULL;
	cr_expect_eq(t_open(&b, "GOOG"), STOCK_EINVAL);
	stock_counter_destroy(&b.ctr);
	b.opt.mongo = m;
	cr_expect_eq(t_open(&b, "no such sku!"), STOCK_EINVAL);
	stock_counter_destroy(&b.ctr);
	mongo_close(m);
}

/* ====================================================================== */
/* MongoDB going away                                                      */
/* ====================================================================== */

/*
 * A TCP proxy in front of the server: "down" refuses and cuts connections;
 * "muted" forwards requests but drops the replies (the server applies a
 * write whose client never learns it).
 */
#define PROXY_PAIRS 32

struct proxy {
	uint16_t port, upstream;
	int lfd, stop[2];
	pthread_t th;
	int fds[PROXY_PAIRS][2];
	int muted; /* __atomic */
};

static int
proxy_upstream(uint16_t port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static bool
proxy_pump(int from, int to, bool drop)
{
	char buf[16384];
	ssize_t n = read(from, buf, sizeof buf);

	for (ssize_t o = 0; n > 0 && !drop && o < n;) {
		ssize_t w = write(to, buf + o, (size_t)(n - o));

		if (w <= 0)
			return false;
		o += w;
	}
	return n > 0;
}

static void
proxy_accept(struct proxy *p)
{
	int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC), i;

	for (i = 0; i < PROXY_PAIRS && p->fds[i][0] >= 0; i++)
		;
	if (c >= 0 && i < PROXY_PAIRS && (p->fds[i][1] = proxy_upstream(p->upstream)) >= 0)
		p->fds[i][0] = c;
	else if (c >= 0)
		close(c);
}

static void *
proxy_main(void *arg)
{
	struct proxy *p = arg;

	for (;;) {
		struct pollfd pf[2 + 2 * PROXY_PAIRS];
		int map[2 + 2 * PROXY_PAIRS], n = 2;

		pf[0] = (struct pollfd){ .fd = p->stop[0], .events = POLLIN };
		pf[1] = (struct pollfd){ .fd = p->lfd, .events = POLLIN };
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
			proxy_accept(p);
			continue;
		}
		for (int j = 2; j < n; j++) {
			int i = map[j] / 2, k = map[j] % 2;

			if (pf[j].revents == 0 || p->fds[i][0] < 0)
				continue;
			if (!proxy_pump(p->fds[i][k], p->fds[i][1 - k],
			        k == 1 && __atomic_load_n(&p->muted, __ATOMIC_ACQUIRE))) {
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

static void
proxy_up(struct proxy *p)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(p->port) };
	socklen_t len = sizeof sa;
	int one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(p->lfd, 0);
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	cr_assert_eq(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s",
	    strerror(errno));
	cr_assert_eq(listen(p->lfd, 64), 0);
	cr_assert_eq(getsockname(p->lfd, (struct sockaddr *)&sa, &len), 0);
	p->port = ntohs(sa.sin_port);
	cr_assert_eq(pipe2(p->stop, O_CLOEXEC), 0);
	for (int i = 0; i < PROXY_PAIRS; i++)
		p->fds[i][0] = p->fds[i][1] = -1;
	cr_assert_eq(pthread_create(&p->th, NULL, proxy_main, p), 0);
}

static void
proxy_down(struct proxy *p)
{
	cr_assert_eq(write(p->stop[1], "x", 1), 1);
	pthread_join(p->th, NULL);
	close(p->lfd);
	close(p->stop[0]);
	close(p->stop[1]);
}

/*
 * An outage while a refill is needed, after a first grant (@first_buy) or
 * before any lease exists (then the opening grant is the unknown update, and
 * its fence opens an empty lease).
 *   !@mute: MongoDB goes away (the proxy refuses and cuts connections);
 *           nothing reaches it, the update is found not applied (fenced).
 *   @mute:  the replies are dropped while the requests reach the server, with
 *           native findAndModify (one round trip per update; FerretDB's lack
 *           of atomicity does not matter with one writer): the update is
 *           applied, its outcome unknown, and found applied when read back;
 *           its grant is sold, nothing is granted twice.
 * Either way buys resume and the totals are exact.
 */
static void
t_outage(const char *sku, bool first_buy, bool mute)
{
	enum mongo_atomic_mode mode = mute ? MONGO_ATOMIC_NATIVE : MONGO_ATOMIC_AUTO;
	const char *colon = strrchr(t.uri, ':');
	struct proxy px = { 0 };
	struct lease_stats st;
	struct mongo_view v;
	struct inst a;
	uint64_t bought = 0;
	char uri[128];
	mongo_t *direct;
	int rc;

	cr_assert_not_null(colon);
	px.upstream = (uint16_t)atoi(colon + 1);
	proxy_up(&px);
	snprintf(uri, sizeof uri, "mongodb://127.0.0.1:%u/", px.port);
	direct = t_mongo_mode(t.uri, 5000, mode);
	cr_assert_eq(mongo_seed(direct, sku, 1000), 0);
	t_inst(&a, "A", t_mongo_mode(uri, 500, mode));
	a.opt.idle_ms = 60000;
	/* Muted, only refills may talk to MongoDB, one at a time, on a client
	   already connected (a new connection's handshake would fail first, and
	   nothing would be applied). */
	if (mute)
		a.opt.record_ms = a.opt.lease_ms = a.opt.poll_ms = 60000;
	cr_assert_eq(t_open(&a, sku), 0);
	if (first_buy) {
		t_buy(&a, sku, 1);
		bought = 1;
	}
	/* The first poll runs at once: let it finish first. */
	cr_assert(T_UNTIL((lease_stats(a.mgr, &st), st.polls >= 1), 10000));

	/* The lease sells what it holds, then a refill cannot be had. */
	if (mute)
		__atomic_store_n(&px.muted, 1, __ATOMIC_RELEASE);
	else
		proxy_down(&px);
	for (int i = 0; i < 1000 && (rc = lease_take(a.mgr, sku, 1, NULL)) == 0; i++)
		bought++;
	cr_expect_eq(rc, STOCK_ESYS, "%s", stock_strerror(rc));
	t_check(direct, sku, 1000);

	/* Back (same port; muted connections are cut: their streams are lost). */
	if (mute) {
		proxy_down(&px);
		__atomic_store_n(&px.muted, 0, __ATOMIC_RELEASE);
	}
	proxy_up(&px);
	cr_assert(T_UNTIL(lease_take(a.mgr, sku, 1, NULL) == 0, 20000));
	bought++;
	cr_expect(logcap_has(mute ? "the update whose outcome was unknown had been applied" :
	    "the update whose outcome was unknown had"), "%s", logcap.text);
	t_buy(&a, sku, 10);
	bought += 10;
	t_close(&a);
	v = t_check(direct, sku, 1000);
	cr_expect_eq(v.doc.sold, bought, "sold %llu, acknowledged %llu",
	    (unsigned long long)v.doc.sold, (unsigned long long)bought);
	cr_expect_eq(v.doc.stock, 1000 - bought);
	cr_expect_eq(t_held(t_lease(&v, "A")), 0);
	mongo_close(a.mongo);
	proxy_down(&px);
	mongo_close(direct);
}

Test(lease, mongo_down_during_refill, .fini = t_end, .timeout = 120)
{
	if (t_begin("mongo_down_during_refill"))
		t_outage("INTC", true, false);
}

Test(lease, mongo_down_before_first_grant, .fini = t_end, .timeout = 120)
{
	if (t_begin("mongo_down_before_first_grant"))
		t_outage("INTC", false, false);
}

Test(lease, applied_but_reply_lost, .fini = t_end, .timeout = 120)
{
	if (t_begin("applied_but_reply_lost"))
		t_outage("AMD", true, true);
}

/* ====================================================================== */
/* Group commit of Db buys                                                 */
/* ====================================================================== */

/* Every document state the buyers were handed, by version (one per version). */
struct db_states {
	pthread_mutex_t mu;
	uint64_t stock[512]; /* by version; UINT64_MAX: not seen */
	bool one_per_version;
};

struct db_buyer {
	struct take_batcher *b;
	struct db_states *seen;
	uint64_t bought, last_version;
	int last_rc;
	bool versions_ok;
};

static void
db_state_seen(struct db_states *s, const struct sku_doc *doc)
{
	pthread_mutex_lock(&s->mu);
	if (doc->version >= 512 || doc->stock + doc->sold != 150)
		s->one_per_version = false;
	else if (s->stock[doc->version] == UINT64_MAX)
		s->stock[doc->version] = doc->stock;
	else if (s->stock[doc->version] != doc->stock)
		s->one_per_version = false;
	pthread_mutex_unlock(&s->mu);
}

static void *
db_buyer_main(void *arg)
{
	struct db_buyer *x = arg;
	struct sku_doc after, doc;
	int rc;

	x->versions_ok = true;
	while ((rc = take_batcher_take(x->b, 1, &after, &doc)) == 0) {
		x->bought++;
		if (after.version <= x->last_version || after.stock + after.sold != 150 ||
		    after.version != doc.version || doc.stock > after.stock)
			x->versions_ok = false;
		x->last_version = after.version;
		db_state_seen(x->seen, &doc);
	}
	if (rc == STOCK_ESOLDOUT)
		db_state_seen(x->seen, &doc);
	x->last_rc = rc;
	return NULL;
}

Test(lease, batched_db_buys_sell_out_exactly, .fini = t_end, .timeout = 120)
{
	struct take_batcher b;
	struct db_buyer by[6];
	struct db_states seen = { .one_per_version = true };
	pthread_t th[6];
	struct sku_doc after;
	struct mongo_view v;
	uint64_t total = 0;
	mongo_t *m;

	if (!t_begin("batched_db_buys_sell_out_exactly"))
		return;
	pthread_mutex_init(&seen.mu, NULL);
	for (size_t i = 0; i < 512; i++)
		seen.stock[i] = UINT64_MAX;
	m = t_mongo(t.uri, 5000);
	cr_assert_eq(mongo_seed(m, "OneStock:Db", 150), 0);
	cr_assert_eq(take_batcher_init(&b, m, "OneStock:Db", 0), 0);
	cr_expect_eq(take_batcher_take(&b, 0, &after, NULL), STOCK_EINVAL);
	for (int i = 0; i < 6; i++) {
		by[i] = (struct db_buyer){ .b = &b, .seen = &seen };
		cr_assert_eq(pthread_create(&th[i], NULL, db_buyer_main, &by[i]), 0);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		total += by[i].bought;
		cr_expect_eq(by[i].last_rc, STOCK_ESOLDOUT, "buyer %d: %s", i,
		    stock_strerror(by[i].last_rc));
		cr_expect(by[i].versions_ok, "buyer %d saw a state out of order", i);
	}
	cr_expect_eq(total, 150);
	cr_expect_geq(take_batcher_batches(&b), 1);
	/* A cache keyed by version (the Db peek) is fed @doc: one state per
	   version, or a batch's first buyer would leave units showing after
	   the document sold out. */
	cr_expect(seen.one_per_version, "two buyers were handed different documents of one version");
	pthread_mutex_destroy(&seen.mu);
	v = t_view(m, "OneStock:Db");
	cr_assert_lt(v.doc.version, 512);
	cr_expect_eq(seen.stock[v.doc.version], 0, "the sold-out version's document was handed as %llu",
	    (unsigned long long)seen.stock[v.doc.version]);
	cr_expect_eq(v.doc.sold, 150);
	cr_expect_eq(v.doc.stock, 0);
	take_batcher_destroy(&b);
	cr_expect_eq(take_batcher_init(&b, m, "bad sku", 0), STOCK_EINVAL);
	mongo_close(m);
}

/* ====================================================================== */
/* Sold out from memory; the refill bulkhead                               */
/* ====================================================================== */

/*
 * Once the lease and the pool are known short, 409s cost no round trip
 * (failures, grants and records stay put) until a newer version arrives:
 * here a restock written straight to MongoDB, which only the poll sees.
 * Db (read-through) likewise, from its cached document.
 */
/*
 * An order's units (lease_hold_all): every SKU held, or none; a refusal
 * names the short one and leaves every counter as it was; held units are
 * sold (ledger, then MongoDB) or given back.
 */
Test(lease, hold_all_is_all_or_nothing, .fini = t_end, .timeout = 120)
{
	const char *leased[] = { "NVDA", "TSLA" }, *plain[] = { "OneStock:Db" };
	struct stock_counter c2;
	struct stock_counter *ctrs[] = { NULL, &c2 };
	struct lease_holding h;
	struct lease_peek after[2];
	struct stock_level l1, l2;
	uint64_t two[] = { 3, 2 }, big[] = { 1, 41 };
	const char *both[] = { "NVDA", "TSLA" }, *twice[] = { "NVDA", "NVDA" };
	const char *unknown[] = { "NVDA", "AAPL" };
	size_t refused = 99;
	struct inst a;

	if (!t_begin("hold_all_is_all_or_nothing"))
		return;
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	a.opt.idle_ms = 60000;
	cr_assert_eq(mongo_seed(a.mongo, "NVDA", 1000), 0);
	cr_assert_eq(mongo_seed(a.mongo, "TSLA", 40), 0);
	cr_assert_eq(mongo_seed(a.mongo, "OneStock:Db", 0), 0);
	cr_assert_eq(stock_counter_init(&a.ctr, STOCK_STRATEGY_ATOMIC, 0), 0);
	cr_assert_eq(stock_counter_init(&c2, STOCK_STRATEGY_LOCKED, 0), 0);
	ctrs[0] = &a.ctr;
	cr_assert_eq(lease_open(&a.mgr, &a.opt, leased, ctrs, 2, plain, 1), 0);

	cr_expect_eq(lease_hold_all(a.mgr, twice, two, 2, &h, &refused), STOCK_EINVAL);
	cr_expect_eq(lease_hold_all(a.mgr, unknown, two, 2, &h, &refused), STOCK_ENOENT);
	cr_expect_eq(refused, 1);
	/* TSLA has 40: 41 is refused after NVDA was held, which goes back. */
	cr_expect_eq(lease_hold_all(a.mgr, both, big, 2, &h, &refused), STOCK_ESOLDOUT);
	cr_expect_eq(refused, 1);
	stock_counter_read(&a.ctr, &l1);
	cr_expect_eq(l1.held, 0, "NVDA still held after a refusal: %llu", (unsigned long long)l1.held);
	cr_assert_eq(lease_peek(a.mgr, "NVDA", &after[0]), 0);
	cr_expect_eq(after[0].sold, 0, "a refused order sold NVDA");

	cr_assert_eq(lease_hold_all(a.mgr, both, two, 2, &h, &refused), 0);
	lease_release_held(a.mgr, &h);
	stock_counter_read(&a.ctr, &l1);
	stock_counter_read(&c2, &l2);
	cr_expect(l1.held == 0 && l2.held == 0, "held after a release: %llu, %llu",
	    (unsigned long long)l1.held, (unsigned long long)l2.held);

	cr_assert_eq(lease_hold_all(a.mgr, both, two, 2, &h, &refused), 0);
	cr_assert_eq(lease_sell_held(a.mgr, &h, after), 0);
	cr_expect_eq(after[0].sold, 3);
	cr_expect_eq(after[1].sold, 2);
	cr_expect(T_UNTIL(t_sold_is(a.mongo, "NVDA", 3) && t_sold_is(a.mongo, "TSLA", 2), 10000),
	    "the order's sales were not recorded");
	lease_close(a.mgr);
	a.mgr = NULL;
	stock_counter_destroy(&a.ctr);
	stock_counter_destroy(&c2);
	t_check(a.mongo, "NVDA", 1000);
	t_check(a.mongo, "TSLA", 40);
	mongo_close(a.mongo);
}

/*
 * Grants arrive ahead of demand: once the counter is below one grant and
 * sales are recent, the lease thread refills on its own, so the next buyer
 * does not wait. With the threshold at half a grant (before), 49 of 50
 * units left would not have refilled.
 */
Test(lease, refills_ahead_below_one_grant, .fini = t_end, .timeout = 120)
{
	struct lease_stats st;
	struct stock_level l;
	struct inst a;

	if (!t_begin("refills_ahead_below_one_grant"))
		return;
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	a.opt.idle_ms = 60000; /* sales stay recent for the whole test */
	cr_assert_eq(mongo_seed(a.mongo, "NVDA", 100000), 0);
	cr_assert_eq(mongo_seed(a.mongo, "OneStock:Db", 0), 0);
	cr_assert_eq(t_open(&a, "NVDA"), 0);
	cr_assert_eq(lease_take(a.mgr, "NVDA", 1, NULL), 0); /* the first grant: 50, one sold */
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.buyer_refills, 1, "the first buyer waits on the first grant");
	cr_assert(T_UNTIL((lease_stats(a.mgr, &st), st.grants >= 2), 10000),
	    "no grant ahead of demand with 49 of a 50-unit grant left");
	stock_counter_read(&a.ctr, &l);
	cr_expect_geq(l.remaining, 50, "counter %llu after the grant ahead",
	    (unsigned long long)l.remaining);
	for (int i = 0; i < 49; i++)
		cr_assert_eq(lease_take(a.mgr, "NVDA", 1, NULL), 0);
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.buyer_refills, 1, "a buyer waited although a grant came ahead");
	t_close(&a);
	t_check(a.mongo, "NVDA", 100000);
	mongo_close(a.mongo);
}

Test(lease, soldout_from_memory_until_restock, .fini = t_end, .timeout = 120)
{
	struct lease_stats before, after;
	struct inst a;
	mongo_t *direct;
	unsigned bought = 0;
	int rc;

	if (!t_begin("soldout_from_memory_until_restock"))
		return;
	direct = t_mongo(t.uri, 5000);
	cr_assert_eq(mongo_seed(direct, "NVDA", 30), 0);
	cr_assert_eq(mongo_seed(direct, "OneStock:Db", 0), 0);
	t_inst(&a, "A", t_mongo(t.uri, 5000));
	a.opt.idle_ms = 60000;  /* no return: the document changes only by grants */
	a.opt.poll_ms = 60000;  /* only the initial poll, for now */
	cr_assert_eq(t_open(&a, "NVDA"), 0);
	while ((rc = lease_take(a.mgr, "NVDA", 1, NULL)) == 0)
		bought++;
	cr_assert_eq(rc, STOCK_ESOLDOUT, "%s", stock_strerror(rc));
	cr_expect_eq(bought, 30);
	cr_assert(T_UNTIL(t_sold_is(direct, "NVDA", 30), 10000)); /* recorded */
	t_sleep_ms(200); /* let the record's tick end */
	lease_stats(a.mgr, &before);
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(lease_take(a.mgr, "NVDA", 1, NULL), STOCK_ESOLDOUT);
	cr_expect_eq(lease_take(a.mgr, "NVDA", 2, NULL), STOCK_ESOLDOUT);
	lease_stats(a.mgr, &after);
	cr_expect_geq(after.soldout_fast - before.soldout_fast, 1001);
	cr_expect_eq(after.failures, before.failures, "a 409 tried a grant");
	cr_expect_eq(after.grants, before.grants);
	/* Db: its document (stock 0) is cached from the open. */
	cr_expect(lease_soldout(a.mgr, "OneStock:Db", 1));
	cr_expect(!lease_soldout(a.mgr, "NVDA", 1), "only read-through SKUs");

	/* A restock nobody announces: still 409 (the promise is "as of the
	   newest version known"), until the poll learns the newer version. */
	cr_assert_eq(mongo_adjust(direct, "NVDA", false, 5, NULL), 0);
	cr_assert_eq(mongo_adjust(direct, "OneStock:Db", false, 5, NULL), 0);
	cr_expect_eq(lease_take(a.mgr, "NVDA", 1, NULL), STOCK_ESOLDOUT);
	/* An event of a newer version (what the bus delivers) ends it. */
	{
		struct mongo_view v = t_view(direct, "NVDA");
		struct mongo_view d = t_view(direct, "OneStock:Db");

		lease_offer(a.mgr, "NVDA", v.doc.stock, UINT64_MAX, v.doc.version, false);
		lease_offer(a.mgr, "OneStock:Db", d.doc.stock, UINT64_MAX, d.doc.version, false);
	}
	cr_expect(!lease_soldout(a.mgr, "OneStock:Db", 1));
	cr_expect(lease_soldout(a.mgr, "OneStock:Db", 6));
	for (int i = 0; i < 5; i++) {
		rc = lease_take(a.mgr, "NVDA", 1, NULL);
		cr_assert_eq(rc, 0, "after the restock, buy %d: %s", i, stock_strerror(rc));
	}
	cr_expect_eq(lease_take(a.mgr, "NVDA", 1, NULL), STOCK_ESOLDOUT);
	t_close(&a);
	{
		struct mongo_view v = t_check(direct, "NVDA", 35);

		cr_expect_eq(v.doc.sold, 35);
	}
	mongo_close(a.mongo);
	mongo_close(direct);
}

struct waiter {
	struct inst *x;
	pthread_barrier_t *go;
	int rc;
	uint64_t ms;
};

static void *
waiter_main(void *arg)
{
	struct waiter *w = arg;
	uint64_t t0;

	pthread_barrier_wait(w->go);
	t0 = t_now_ms();
	w->rc = lease_take(w->x->mgr, "TSLA", 1, NULL);
	w->ms = t_now_ms() - t0;
	return NULL;
}

/*
 * MongoDB stops answering (a muted proxy) while 8 buyers need a refill of
 * one SKU: 2 (opt.waiters) wait for it, the other 6 are refused at once
 * with STOCK_EBUSY instead of holding a thread each.
 */
Test(lease, refill_bulkhead_bounds_waiters, .fini = t_end, .timeout = 120)
{
	const char *colon;
	struct proxy px = { 0 };
	struct waiter w[8];
	pthread_t th[8];
	pthread_barrier_t go;
	struct lease_stats st;
	struct inst a;
	char uri[128];
	mongo_t *direct;
	int busy = 0, waited = 0;

	if (!t_begin("refill_bulkhead_bounds_waiters"))
		return;
	colon = strrchr(t.uri, ':');
	cr_assert_not_null(colon);
	px.upstream = (uint16_t)atoi(colon + 1);
	proxy_up(&px);
	snprintf(uri, sizeof uri, "mongodb://127.0.0.1:%u/", px.port);
	direct = t_mongo_mode(t.uri, 5000, MONGO_ATOMIC_NATIVE);
	cr_assert_eq(mongo_seed(direct, "TSLA", 1000), 0);
	t_inst(&a, "A", t_mongo_mode(uri, 3000, MONGO_ATOMIC_NATIVE));
	a.opt.record_ms = a.opt.lease_ms = a.opt.poll_ms = a.opt.idle_ms = 60000;
	a.opt.waiters = 2;
	cr_assert_eq(t_open(&a, "TSLA"), 0);
	cr_assert(T_UNTIL((lease_stats(a.mgr, &st), st.polls >= 1), 10000));
	__atomic_store_n(&px.muted, 1, __ATOMIC_RELEASE);
	pthread_barrier_init(&go, NULL, 8);
	for (int i = 0; i < 8; i++) {
		w[i] = (struct waiter){ .x = &a, .go = &go };
		cr_assert_eq(pthread_create(&th[i], NULL, waiter_main, &w[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		if (w[i].rc == STOCK_EBUSY)
			busy++;
		else
			waited++;
	}
	cr_expect_eq(busy, 6, "%d refused, %d waited", busy, waited);
	lease_stats(a.mgr, &st);
	cr_expect_eq(st.busy, (uint64_t)busy);
	pthread_barrier_destroy(&go);
	proxy_down(&px);
	__atomic_store_n(&px.muted, 0, __ATOMIC_RELEASE);
	proxy_up(&px);
	cr_assert(T_UNTIL(lease_take(a.mgr, "TSLA", 1, NULL) == 0, 20000));
	t_close(&a);
	t_check(direct, "TSLA", 1000);
	mongo_close(a.mongo);
	proxy_down(&px);
	mongo_close(direct);
}
