/*
 * Snapshot (RCU): readers never touch a destroyed object (the destructor
 * poisons and frees, so ASan reports any late access), versions never go
 * backwards on a reader, every object is destroyed exactly once, grace
 * periods really wait for open sections, and per-thread epoch records are
 * recycled when threads exit.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stock.h>

#define SNAP_WORDS 8

/* An immutable published object: seq plus a payload derived from it. */
struct snap_obj {
	uint64_t seq;
	uint64_t word[SNAP_WORDS];
	uint64_t magic;
};

#define SNAP_MAGIC 0x5eed5eed5eed5eedULL

struct snap_counts {
	uint64_t destroyed; /* ck_pr */
};

static struct snap_obj *
snap_obj_new(uint64_t seq)
{
	struct snap_obj *o = malloc(sizeof *o);

	cr_assert_not_null(o);
	o->seq = seq;
	for (int i = 0; i < SNAP_WORDS; i++)
		o->word[i] = seq * 31 + (uint64_t)i;
	o->magic = SNAP_MAGIC;
	return o;
}

static void
snap_obj_check(const struct snap_obj *o)
{
	cr_assert_eq(o->magic, SNAP_MAGIC, "object destroyed under a reader");
	for (int i = 0; i < SNAP_WORDS; i++)
		cr_assert_eq(o->word[i], o->seq * 31 + (uint64_t)i, "torn object");
}

static void
snap_obj_destroy(void *obj, void *arg)
{
	struct snap_obj *o = obj;
	struct snap_counts *c = arg;

	cr_assert_eq(o->magic, SNAP_MAGIC, "object destroyed twice");
	memset(o, 0xdd, sizeof *o); /* poison, then free: ASan sees late use */
	free(o);
	ck_pr_inc_64(&c->destroyed);
}

static void
snap_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

Test(snapshot, init_read_publish_destroy)
{
	struct snap_counts c = { 0 };
	struct stock_snapshot s;
	struct stock_snapshot_section sec;
	struct stock_snapshot_stats st;
	const struct snap_obj *o;

	cr_expect_eq(stock_snapshot_init(NULL, &c, NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_snapshot_init(&s, NULL, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(stock_snapshot_init(&s, snap_obj_new(0), snap_obj_destroy, &c), 0);
	cr_expect_eq(stock_snapshot_version(&s), 0);

	o = stock_snapshot_read_begin(&s, &sec);
	cr_assert_not_null(o);
	cr_expect_eq(o->seq, 0);
	cr_expect_eq(sec.version, 0);
	stock_snapshot_read_end(&s, &sec);

	cr_expect_eq(stock_snapshot_publish(&s, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_snapshot_publish(NULL, &c), STOCK_EINVAL);
	for (uint64_t v = 1; v <= 5; v++) {
		cr_assert_eq(stock_snapshot_publish(&s, snap_obj_new(v)), 0);
		cr_expect_eq(stock_snapshot_version(&s), v);
		o = stock_snapshot_read_begin(&s, &sec);
		cr_expect_eq(o->seq, v);
		cr_expect_eq(sec.version, v);
		stock_snapshot_read_end(&s, &sec);
	}
	cr_expect_eq(stock_snapshot_synchronize(&s), 0);
	cr_assert_eq(stock_snapshot_stats(&s, &st), 0);
	cr_expect_eq(st.version, 5);
	cr_expect_eq(st.retired, 5);
	cr_expect_eq(st.reclaimed, 5, "synchronize destroys everything retired before it");
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 5);
	cr_expect_eq(st.records, 1);

	stock_snapshot_destroy(&s);
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 6, "the current object too");
	stock_snapshot_destroy(&s); /* idempotent */
	stock_snapshot_destroy(NULL);
	cr_expect_eq(stock_snapshot_synchronize(NULL), STOCK_EINVAL);
	cr_expect_null(stock_snapshot_read_begin(&s, NULL));
}

Test(snapshot, destroy_runs_pending_and_null_destructor)
{
	static int statics[4];
	struct snap_counts c = { 0 };
	struct stock_snapshot s;

	/* Pending retired objects are destroyed by destroy(). */
	cr_assert_eq(stock_snapshot_init(&s, snap_obj_new(0), snap_obj_destroy, &c), 0);
	for (uint64_t v = 1; v <= 100; v++)
		cr_assert_eq(stock_snapshot_publish(&s, snap_obj_new(v)), 0);
	stock_snapshot_destroy(&s);
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 101);

	/* Objects the snapshot does not own: no destructor. */
	cr_assert_eq(stock_snapshot_init(&s, &statics[0], NULL, NULL), 0);
	for (int i = 1; i < 4; i++)
		cr_assert_eq(stock_snapshot_publish(&s, &statics[i]), 0);
	cr_expect_eq(stock_snapshot_register(&s), 0);
	stock_snapshot_destroy(&s);
}

Test(snapshot, nested_sections_and_publish_inside_a_section)
{
	struct snap_counts c = { 0 };
	struct stock_snapshot s;
	struct stock_snapshot_section outer, inner;
	const struct snap_obj *o1, *o2;

	cr_assert_eq(stock_snapshot_init(&s, snap_obj_new(0), snap_obj_destroy, &c), 0);
	o1 = stock_snapshot_read_begin(&s, &outer);
	/* A reader may publish: it never waits for readers, itself included. */
	for (uint64_t v = 1; v <= 50; v++)
		cr_assert_eq(stock_snapshot_publish(&s, snap_obj_new(v)), 0);
	o2 = stock_snapshot_read_begin(&s, &inner);
	cr_expect_eq(o2->seq, 50);
	cr_expect_eq(inner.version, 50);
	stock_snapshot_read_end(&s, &inner);
	/* Still inside `outer`: its object is intact and not yet destroyed. */
	snap_obj_check(o1);
	cr_expect_eq(o1->seq, 0);
	stock_snapshot_read_end(&s, &outer);
	stock_snapshot_synchronize(&s);
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 50);
	stock_snapshot_destroy(&s);
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 51);
}

struct snap_sync_arg {
	struct stock_snapshot *s;
	int done; /* ck_pr */
};

static void *
snap_synchronizer(void *p)
{
	struct snap_sync_arg *a = p;

	cr_assert_eq(stock_snapshot_synchronize(a->s), 0);
	ck_pr_store_int(&a->done, 1);
	return NULL;
}

Test(snapshot, synchronize_waits_for_open_sections)
{
	struct snap_counts c = { 0 };
	struct stock_snapshot s;
	struct stock_snapshot_section sec;
	struct snap_sync_arg a = { &s, 0 };
	const struct snap_obj *o;
	pthread_t t;

	cr_assert_eq(stock_snapshot_init(&s, snap_obj_new(0), snap_obj_destroy, &c), 0);
	o = stock_snapshot_read_begin(&s, &sec);
	cr_assert_eq(stock_snapshot_publish(&s, snap_obj_new(1)), 0);
	cr_assert_eq(pthread_create(&t, NULL, snap_synchronizer, &a), 0);
	snap_sleep_ms(50);
	cr_expect_eq(ck_pr_load_int(&a.done), 0, "grace period ended with a section open");
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 0);
	snap_obj_check(o);
	stock_snapshot_read_end(&s, &sec);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_expect_eq(ck_pr_load_int(&a.done), 1);
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 1);
	stock_snapshot_destroy(&s);
	cr_expect_eq(ck_pr_load_64(&c.destroyed), 2);
}

/* ---- hammer: 4 readers, 2 publishers -------------------------------- */

#define SNAP_READERS 4
#define SNAP_PUBLISHERS 2
#define SNAP_PUBLISHES 3000 /* per publisher */

/*
 * Publishers run concurrently with no lock of their own. Object seq is
 * (publisher << 32 | n), n counting that publisher's publishes, so a reader
 * can check both the snapshot's version order and, per publisher, that it
 * never sees an object older than one it has already seen.
 */
struct snap_hammer {
	struct stock_snapshot s;
	struct snap_counts c;
	int publishers_left; /* ck_pr */
	uint64_t reads;      /* ck_pr */
};

struct snap_publisher {
	struct snap_hammer *h;
	uint64_t id;
};

static void *
snap_hammer_reader(void *p)
{
	struct snap_hammer *h = p;
	uint64_t last_version = 0, reads = 0;
	uint64_t last_n[SNAP_PUBLISHERS + 1] = { 0 };

	while (ck_pr_load_int(&h->publishers_left) > 0) {
		struct stock_snapshot_section outer, inner;
		const struct snap_obj *o, *o2;

		o = stock_snapshot_read_begin(&h->s, &outer);
		cr_assert_not_null(o);
		snap_obj_check(o);
		cr_assert_geq(outer.version, last_version, "a reader went back in time");
		last_version = outer.version;
		cr_assert_leq(o->seq >> 32, SNAP_PUBLISHERS);
		cr_assert_geq(o->seq & 0xffffffffu, last_n[o->seq >> 32], "older object seen");
		last_n[o->seq >> 32] = o->seq & 0xffffffffu;
		if ((reads & 7) == 0) {
			/* Nested section: never older than the outer one. */
			o2 = stock_snapshot_read_begin(&h->s, &inner);
			cr_assert_geq(inner.version, outer.version);
			last_version = inner.version;
			snap_obj_check(o2);
			stock_snapshot_read_end(&h->s, &inner);
		}
		snap_obj_check(o); /* still intact after publishes meanwhile */
		stock_snapshot_read_end(&h->s, &outer);
		reads++;
	}
	ck_pr_add_64(&h->reads, reads);
	return NULL;
}

static void *
snap_hammer_publisher(void *p)
{
	struct snap_publisher *pub = p;
	struct snap_hammer *h = pub->h;

	for (uint64_t n = 1; n <= SNAP_PUBLISHES; n++) {
		cr_assert_eq(stock_snapshot_publish(&h->s, snap_obj_new(pub->id << 32 | n)), 0);
		if (n % 500 == 0)
			cr_assert_eq(stock_snapshot_synchronize(&h->s), 0);
	}
	ck_pr_dec_int(&h->publishers_left);
	return NULL;
}

Test(snapshot, hammer_readers_never_see_freed_or_older, .timeout = 60)
{
	struct snap_hammer *h = calloc(1, sizeof *h);
	struct snap_publisher pubs[SNAP_PUBLISHERS];
	pthread_t r[SNAP_READERS], w[SNAP_PUBLISHERS];
	struct stock_snapshot_stats st;

	cr_assert_not_null(h);
	h->publishers_left = SNAP_PUBLISHERS;
	cr_assert_eq(stock_snapshot_init(&h->s, snap_obj_new(0), snap_obj_destroy, &h->c), 0);
	for (int i = 0; i < SNAP_READERS; i++)
		cr_assert_eq(pthread_create(&r[i], NULL, snap_hammer_reader, h), 0);
	for (int i = 0; i < SNAP_PUBLISHERS; i++) {
		pubs[i] = (struct snap_publisher){ h, (uint64_t)i + 1 };
		cr_assert_eq(pthread_create(&w[i], NULL, snap_hammer_publisher, &pubs[i]), 0);
	}
	for (int i = 0; i < SNAP_PUBLISHERS; i++)
		pthread_join(w[i], NULL);
	for (int i = 0; i < SNAP_READERS; i++)
		pthread_join(r[i], NULL);

	cr_assert_eq(stock_snapshot_stats(&h->s, &st), 0);
	cr_expect_eq(st.version, SNAP_PUBLISHERS * SNAP_PUBLISHES);
	cr_expect_eq(st.retired, st.version);
	cr_expect_leq(st.reclaimed, st.retired);
	cr_expect_eq(ck_pr_load_64(&h->c.destroyed), st.reclaimed);
	cr_expect_leq(st.records, SNAP_READERS);
	cr_expect_eq(stock_snapshot_synchronize(&h->s), 0);
	cr_assert_eq(stock_snapshot_stats(&h->s, &st), 0);
	cr_expect_eq(st.reclaimed, st.retired, "all retired objects destroyed after a grace period");
	stock_snapshot_destroy(&h->s);
	cr_expect_eq(ck_pr_load_64(&h->c.destroyed), SNAP_PUBLISHERS * SNAP_PUBLISHES + 1,
	    "every published object destroyed exactly once");
	cr_expect_gt(ck_pr_load_64(&h->reads), 0);
	free(h);
}

/* ---- record recycling ----------------------------------------------- */

#define SNAP_ROUNDS 25
#define SNAP_WIDTH 4

static void *
snap_short_lived(void *p)
{
	struct stock_snapshot *two = p; /* two snapshots: one record in each */
	struct stock_snapshot_section a, b;

	cr_assert_not_null(stock_snapshot_read_begin(&two[0], &a));
	cr_assert_not_null(stock_snapshot_read_begin(&two[1], &b));
	stock_snapshot_read_end(&two[1], &b);
	stock_snapshot_read_end(&two[0], &a);
	return NULL;
}

Test(snapshot, exiting_threads_recycle_their_records)
{
	static int objs[2];
	struct stock_snapshot two[2];
	struct stock_snapshot_stats st;
	pthread_t t[SNAP_WIDTH];

	for (int i = 0; i < 2; i++)
		cr_assert_eq(stock_snapshot_init(&two[i], &objs[i], NULL, NULL), 0);
	for (int round = 0; round < SNAP_ROUNDS; round++) {
		for (int i = 0; i < SNAP_WIDTH; i++)
			cr_assert_eq(pthread_create(&t[i], NULL, snap_short_lived, two), 0);
		for (int i = 0; i < SNAP_WIDTH; i++)
			pthread_join(t[i], NULL);
	}
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(stock_snapshot_stats(&two[i], &st), 0);
		cr_expect_leq(st.records, SNAP_WIDTH, "records: %u after %d threads", st.records,
		    SNAP_ROUNDS * SNAP_WIDTH);
		cr_expect_geq(st.records, 1);
		cr_expect_eq(st.records_free, st.records, "joined threads gave their records back");
		stock_snapshot_destroy(&two[i]);
	}
}
