/*
 * The MongoDB store: the store contract on a MongoDB (or MongoDB-compatible,
 * e.g. FerretDB) server through libmongoc, plus the conditional updates of
 * the Db buy and of the lease protocol (store.h, "the MongoDB store").
 *
 * One mongoc_client_pool_t serves every thread: each call pops a client,
 * does its round trips and pushes it back. The URI gets the store's
 * timeouts (server selection, connect and socket all opt->timeout_ms), so a
 * dead server makes a call fail after about timeout_ms instead of hanging;
 * the pool's monitor reconnects by itself once the server is back.
 * Retryable reads and writes are switched off: a findAndModify is not
 * idempotent and must never be sent twice behind the caller's back.
 *
 * Every SKU is one document {_id: sku, stock, sold, version} (plus, for the
 * lease protocol, lost and leases.<host>). store_append writes a full state
 * with one guarded upsert ("max version wins", the filter only matches an
 * older stored state; a duplicate-key error on the upsert means the filter
 * missed because the stored state is not older, see put_doc). Durable
 * appends run on the caller's thread with the write concern chosen at open:
 * {w: "majority", j: true} on a replica set (or mongos), {w: 1, j: true} on a
 * standalone server. Write-behind appends go into a bounded queue that one
 * writer thread drains: it takes everything queued, keeps the newest state
 * per SKU, writes those one by one and requeues what failed (with backoff,
 * logging only when the state changes between failing and working), so a
 * failed write-behind record is retried, never lost, until store_close gives
 * up on an unreachable server after about timeout_ms and counts what it
 * dropped in lost_records.
 *
 * The Db buy (store_mongo_take), seeding, operator adjustments and the lease
 * compare-and-swap are single-document findAndModify/update calls: MongoDB
 * applies each atomically, no transaction needed. When one of them matches
 * nothing, the document is read back to tell the caller why (missing, sold
 * out, lease changed); nothing was applied then, so trying again after such
 * a read can never apply it twice. A network or server error is reported as
 * STOCK_ESYS and never retried: its outcome is unknown.
 *
 * That needs a server that applies a filtered update atomically. FerretDB v1
 * does not (FerretDB#3040: it runs the query, then writes the modified
 * document back in a separate step, so concurrent updates of one document
 * are lost), but its unique _id index is atomic: of concurrent inserts of
 * one _id exactly one succeeds. On FerretDB (or with atomic_mode 2) every
 * write therefore goes through "successor claims" (see "Claims" below):
 * the commit point of a write is the insert of a unique claim document,
 * and the SKU document is only a cache of the latest committed state that
 * every reader brings up to date.
 */
#include <mongoc/mongoc.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

#define DEF_DATABASE "SuperStockStore"
#define DEF_ONE_COLLECTION "OneStock"
#define DEF_MANY_COLLECTION "ManyStock"
#define DEF_TIMEOUT_MS 2000u
#define DEF_QUEUE_LIMIT 4096u
#define ONE_PREFIX "OneStock:"
#define APPNAME "demo-server"

#define E_DUPKEY 11000          /* MongoDB's duplicate-key error code */
#define FAM_DUPKEY 1            /* internal: the upsert hit a duplicate key */
#define RECHECK_TRIES 4         /* no match, re-read says it would match: again */
#define BACKOFF_MIN_NS 10000000ULL    /* write-behind: 10 ms after a failure ... */
#define BACKOFF_MAX_NS 1000000000ULL  /* ... doubling up to 1 s (or timeout_ms) */
#define SKU_STRIPES 64          /* per-SKU write locks, see serialize */

#define CLAIMS_COLLECTION "StockClaims"
#define CLAIM_TRIES 64          /* claims lost in a row before STOCK_ECONFLICT, */
                                /* ... and not before timeout_ms of trying */
#define CLAIM_KEEP 64           /* claims kept behind the pruner's versions */
#define CLAIM_PRUNE_EVERY 128   /* prune after every 128th commit of a process */
#define CLAIM_PRUNE_AGE_MS 3000 /* ... only claims older than this (or 2 */
                                /* timeout_ms + 1 s, if longer) */
#define CLAIM_CACHE_TTL_NS 100000000ULL /* a remembered tip is trusted 100 ms */
#define CLAIM_ANCHOR_NS 1000000000ULL   /* a walk re-reads the document after 1 s */
#define CLAIM_MAX_HOPS 1000000  /* sanity bound of one roll-forward */
#define CLAIM_LOST 2            /* internal: another claim took the version */
#define CLAIM_NOCHANGE 3        /* internal: the write changes nothing */

/* ====================================================================== */
/* The store object                                                        */
/* ====================================================================== */

/*
 * Claims mode: the last state a thread of this process knew to be the tip
 * of a SKU's chain (it committed it, or read it while no successor claim
 * existed), per lock stripe, under that stripe's lock. Only ever used as the
 * base of a claim insert, which fails unless it is still the tip; never to
 * answer a caller. See claim_write.
 */
struct claim_slot {
	bool valid;
	uint64_t at_ns; /* CLOCK_MONOTONIC when it was known to be the tip */
	struct store_mongo_view v;
};

/* A write-behind record: the state and its order of acceptance. */
struct wb_rec {
	struct store_doc doc;
	uint64_t seq;
};

struct store_mongo {
	struct store base;

	/* Set at open, then read-only. */
	char *database, *one_coll, *many_coll;
	unsigned timeout_ms;
	unsigned queue_limit;
	void (*log)(void *log_arg, const char *msg);
	void *log_arg;
	mongoc_uri_t *uri;
	mongoc_client_pool_t *pool;
	bson_t wc;     /* the writeConcern document of every write */
	bool replset;  /* the server is a replica set member or a mongos */
	/*
	 * FerretDB v1 (SQLite backend, checked with v1.24.2) does not apply a
	 * conditional update atomically: it reads the document, evaluates the
	 * filter and writes the result back without a transaction (FerretDB
	 * issue #3040), so two concurrent findAndModify/update calls on one
	 * document both "match" and one change is lost: takes and grants
	 * oversell. @claims: every write goes through successor claims, which
	 * need no atomic update (correct across processes). @serialize: this
	 * process has at most one write per SKU stripe in flight (a mutex held
	 * over the round trips). In claims mode that only reduces contention
	 * (threads of one process do not race each other's claims, and the
	 * stripe remembers the tip, struct claim_slot); with atomic_mode 1
	 * forced on FerretDB it is what keeps one process from overselling
	 * (several processes still can: logged at open).
	 */
	bool ferretdb;
	bool claims;
	bool serialize;
	pthread_mutex_t stripes[SKU_STRIPES];
	struct claim_slot *slots; /* claims mode: SKU_STRIPES of them */
	uint64_t nonce_key;       /* claims: random per store, see claim_nonce */
	int64_t clock_offset_ms;  /* claims: server clock - ours, see server_ms */

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* the writer waits here */
	pthread_cond_t done_cv; /* store_sync waits here */

	/* Under mu. */
	struct wb_rec *q;      /* write-behind records not yet taken by the writer */
	size_t qn, qcap;
	uint64_t next_seq;     /* last sequence number handed out */
	uint64_t done_seq;     /* every record up to here is written or requeued */
	uint64_t fail_count;   /* failed write-behind batches so far */
	uint64_t inflight;     /* write-behind records accepted, not yet written */
	bool closing;          /* no new appends; the writer drains and exits */
	uint64_t close_deadline; /* CLOCK_MONOTONIC ns: give up on a failing server */
	uint64_t records, queue_rejects, lost_records, docs;

	/* Atomics. */
	uint64_t trips;        /* round trips (stats.batches) */
	uint64_t failed_trips; /* failed round trips (stats.fsync_failures) */
	int healthy;
	int warned_leases;     /* "more than STORE_LEASES_MAX leases" logged once */
	uint64_t nonce_ctr;    /* claims: claim nonces handed out */
	uint64_t commits;      /* claims: claims committed (pruning cadence) */
	int apply_failing;     /* claims: applying a committed state failed */

	pthread_t writer;
	bool writer_started;
};

static const struct store_ops mongo_ops;

static struct store_mongo *
to_mongo(store_t *st)
{
	return (struct store_mongo *)st;
}

static void
slog(struct store_mongo *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
slog(struct store_mongo *s, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (s->log != NULL)
		s->log(s->log_arg, msg);
	else
		fprintf(stderr, "store: %s\n", msg);
}

static void
cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
	ts.tv_nsec = (long)(deadline_ns % 1000000000ULL);
	pthread_cond_timedwait(cv, mu, &ts);
}

/*
 * Account for one round trip. @ok: the server answered as the protocol
 * expects (a duplicate-key answer to an upsert counts as ok). The health
 * flag flips with the outcome; only the flips are logged, so a server that
 * stays down does not flood the log.
 */
static void
trip_done(struct store_mongo *s, bool ok, const bson_error_t *e)
{
	__atomic_add_fetch(&s->trips, 1, __ATOMIC_RELAXED);
	if (ok) {
		if (__atomic_exchange_n(&s->healthy, 1, __ATOMIC_ACQ_REL) == 0)
			slog(s, "mongo: round trips succeed again");
		return;
	}
	__atomic_add_fetch(&s->failed_trips, 1, __ATOMIC_RELAXED);
	if (__atomic_exchange_n(&s->healthy, 0, __ATOMIC_ACQ_REL) != 0)
		slog(s, "mongo: round trip failed (%s); unhealthy until one succeeds",
		    e != NULL ? e->message : "no client available");
}

/* The lock stripe of @sku. */
static unsigned
sku_stripe(const char *sku)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	while (*sku != '\0') {
		h ^= (unsigned char)*sku++;
		h *= 1099511628211ULL;
	}
	return (unsigned)(h % SKU_STRIPES);
}

/* The write lock of @sku's stripe, taken (NULL when !serialize: no lock). */
static pthread_mutex_t *
sku_lock(struct store_mongo *s, const char *sku)
{
	pthread_mutex_t *m;

	if (!s->serialize)
		return NULL;
	m = &s->stripes[sku_stripe(sku)];
	pthread_mutex_lock(m);
	return m;
}

static void
sku_unlock(pthread_mutex_t *m)
{
	if (m != NULL)
		pthread_mutex_unlock(m);
}

static bool
is_dupkey(const bson_error_t *e)
{
	return e->code == E_DUPKEY;
}

/* ====================================================================== */
/* Arguments and documents                                                 */
/* ====================================================================== */

/* A SKU: 1..STORE_SKU_MAX bytes of UTF-8, NUL-terminated. */
static int
sku_check(const char *sku)
{
	size_t n;

	if (sku == NULL)
		return STOCK_EINVAL;
	n = strnlen(sku, STORE_SKU_MAX + 1);
	if (n == 0 || n > STORE_SKU_MAX || !bson_utf8_validate(sku, n, false))
		return STOCK_EINVAL;
	return 0;
}

/* A host id: 1..STORE_HOST_MAX characters of [A-Za-z0-9_-]. */
static bool
host_valid(const char *host, size_t n)
{
	size_t i;

	if (n == 0 || n > STORE_HOST_MAX)
		return false;
	for (i = 0; i < n; i++) {
		char c = host[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		        c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* The collection of @sku. */
static const char *
coll_of(const struct store_mongo *s, const char *sku)
{
	return strncmp(sku, ONE_PREFIX, sizeof ONE_PREFIX - 1) == 0 ? s->one_coll : s->many_coll;
}

/*
 * An integral number: int32, int64, or a double with an integral value in
 * int64's range (the mongo shell and some drivers store numbers that way).
 */
static bool
iter_int(const bson_iter_t *it, int64_t *out)
{
	if (BSON_ITER_HOLDS_INT64(it)) {
		*out = bson_iter_int64(it);
	} else if (BSON_ITER_HOLDS_INT32(it)) {
		*out = bson_iter_int32(it);
	} else if (BSON_ITER_HOLDS_DOUBLE(it)) {
		double d = bson_iter_double(it);

		if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) ||
		    (double)(int64_t)d != d)
			return false;
		*out = (int64_t)d;
	} else {
		return false;
	}
	return true;
}

/* A non-negative integral number no larger than @max. */
static bool
iter_count(const bson_iter_t *it, uint64_t max, uint64_t *out)
{
	int64_t v;

	if (!iter_int(it, &v) || v < 0 || (uint64_t)v > max)
		return false;
	*out = (uint64_t)v;
	return true;
}

/* Decode one lease sub-document; missing members are 0 / false. */
static bool
lease_decode(bson_iter_t *it, struct store_lease *l, const char **why)
{
	bson_iter_t sub;

	memset(l, 0, sizeof *l);
	if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &sub)) {
		*why = "a lease is not a document";
		return false;
	}
	while (bson_iter_next(&sub)) {
		const char *key = bson_iter_key(&sub);
		bool ok = true;

		if (strcmp(key, "granted") == 0)
			ok = iter_count(&sub, STOCK_COUNT_MAX, &l->granted);
		else if (strcmp(key, "sold") == 0)
			ok = iter_count(&sub, STOCK_COUNT_MAX, &l->sold);
		else if (strcmp(key, "returned") == 0)
			ok = iter_count(&sub, STOCK_COUNT_MAX, &l->returned);
		else if (strcmp(key, "expires") == 0)
			ok = iter_int(&sub, &l->expires_ms);
		else if (strcmp(key, "reclaimed") == 0 && (ok = BSON_ITER_HOLDS_BOOL(&sub)))
			l->reclaimed = bson_iter_bool(&sub);
		if (!ok) {
			*why = "a lease member is not a count in range (or reclaimed not a bool)";
			return false;
		}
	}
	return true;
}

/*
 * Decode a whole SKU document into @v. @why names the first problem. Leases
 * beyond STORE_LEASES_MAX are ignored (logged once per store) and reported
 * in *@extra (when not NULL). @sku NULL: the SKU is the document's _id;
 * otherwise @b is a claim's state (no _id) of @sku.
 */
static bool
view_decode_ex(struct store_mongo *s, const bson_t *b, const char *sku,
    struct store_mongo_view *v, bool *extra, const char **why)
{
	bson_iter_t it;
	unsigned seen = 0;

	memset(v, 0, sizeof *v);
	if (extra != NULL)
		*extra = false;
	if (!bson_iter_init(&it, b)) {
		*why = "malformed BSON document";
		return false;
	}
	if (sku != NULL) {
		snprintf(v->doc.sku, sizeof v->doc.sku, "%s", sku);
		seen |= 1;
	}
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (sku == NULL && strcmp(key, "_id") == 0) {
			uint32_t n;
			const char *str;

			if (!BSON_ITER_HOLDS_UTF8(&it)) {
				*why = "_id is not a string";
				return false;
			}
			str = bson_iter_utf8(&it, &n);
			if (n == 0 || n > STORE_SKU_MAX || memchr(str, 0, n) != NULL ||
			    !bson_utf8_validate(str, n, false)) {
				*why = "_id is empty, too long, not UTF-8 or contains NUL";
				return false;
			}
			memcpy(v->doc.sku, str, n);
			seen |= 1;
		} else if (strcmp(key, "stock") == 0) {
			if (!iter_count(&it, STOCK_COUNT_MAX, &v->doc.stock)) {
				*why = "stock is not an integer in range";
				return false;
			}
			seen |= 2;
		} else if (strcmp(key, "sold") == 0) {
			if (!iter_count(&it, STOCK_COUNT_MAX, &v->doc.sold)) {
				*why = "sold is not an integer in range";
				return false;
			}
			seen |= 4;
		} else if (strcmp(key, "version") == 0) {
			if (!iter_count(&it, (uint64_t)INT64_MAX, &v->doc.version)) {
				*why = "version is not a non-negative integer";
				return false;
			}
			seen |= 8;
		} else if (strcmp(key, "lost") == 0) {
			if (!iter_count(&it, STOCK_COUNT_MAX, &v->lost)) {
				*why = "lost is not an integer in range";
				return false;
			}
		} else if (strcmp(key, "leases") == 0) {
			bson_iter_t ls;

			if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &ls)) {
				*why = "leases is not a document";
				return false;
			}
			while (bson_iter_next(&ls)) {
				const char *host = bson_iter_key(&ls);
				size_t hn = strlen(host);
				struct store_lease l;

				if (!host_valid(host, hn)) {
					*why = "a lease has an invalid host id";
					return false;
				}
				if (!lease_decode(&ls, &l, why))
					return false;
				if (v->nleases == STORE_LEASES_MAX) {
					if (extra != NULL)
						*extra = true;
					if (__atomic_exchange_n(&s->warned_leases, 1, __ATOMIC_ACQ_REL) == 0)
						slog(s, "mongo: a document has more than %d leases; the extra "
						        "ones are ignored (logged once)",
						    STORE_LEASES_MAX);
					continue;
				}
				memcpy(v->leases[v->nleases].host, host, hn + 1);
				v->leases[v->nleases].lease = l;
				v->nleases++;
			}
		}
		/* Other fields are ignored. */
	}
	if (seen != 15) {
		*why = "document lacks _id, stock, sold or version";
		return false;
	}
	return true;
}

static bool
view_decode(struct store_mongo *s, const bson_t *b, struct store_mongo_view *v, const char **why)
{
	return view_decode_ex(s, b, NULL, v, NULL, why);
}

static bool
lease_eq(const struct store_lease *a, const struct store_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms && a->reclaimed == b->reclaimed;
}

/* The lease of @host in @v, or NULL. */
static const struct store_lease *
view_lease(const struct store_mongo_view *v, const char *host)
{
	size_t i;

	for (i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

/* ====================================================================== */
/* Round trips                                                             */
/* ====================================================================== */

/* A client from the pool (NULL when none came within the wait-queue timeout). */
static mongoc_client_t *
client_pop(struct store_mongo *s)
{
	mongoc_client_t *c = mongoc_client_pool_pop(s->pool);

	if (c == NULL)
		trip_done(s, false, NULL);
	return c;
}

/* Append {upsert: @upsert, writeConcern: <the store's>} to @opts. */
static void
write_opts(struct store_mongo *s, bson_t *opts, bool upsert)
{
	bson_init(opts);
	if (upsert)
		BSON_APPEND_BOOL(opts, "upsert", true);
	BSON_APPEND_DOCUMENT(opts, "writeConcern", &s->wc);
}

static int claims_put(struct store_mongo *s, mongoc_client_t *client, const struct store_doc *d,
    bson_error_t *e);

/*
 * The guarded write of store_append: {$set: state} where the stored state is
 * older, upserting a missing document. A duplicate-key error means the
 * filter missed and the insert found the _id taken: either the stored state
 * is not older (it wins: done), or another upsert inserted the document
 * between our filter and our insert (a race on a new SKU: that state may be
 * older than ours). One more try tells them apart: the document exists now,
 * so the filter either matches (we write) or misses again because the stored
 * state is not older. The write is idempotent, so trying it again is safe.
 * Claims mode: the same rule through a claim (claims_put).
 * Returns 0 or STOCK_ESYS (message in @e).
 */
static int
put_doc(struct store_mongo *s, mongoc_client_t *client, const struct store_doc *d,
    bson_error_t *e)
{
	mongoc_collection_t *coll = mongoc_client_get_collection(client, s->database,
	    coll_of(s, d->sku));
	int64_t stock = (int64_t)d->stock, sold = (int64_t)d->sold, ver = (int64_t)d->version;
	bson_t *filter, *update, opts;
	pthread_mutex_t *lk;
	int rc = STOCK_ESYS;

	if (s->claims) {
		mongoc_collection_destroy(coll);
		return claims_put(s, client, d, e);
	}
	filter = BCON_NEW("_id", BCON_UTF8(d->sku), "$or", "[",
	    "{", "version", "{", "$lt", BCON_INT64(ver), "}", "}",
	    "{", "version", BCON_INT64(ver), "sold", "{", "$lt", BCON_INT64(sold), "}", "}",
	    "{", "version", BCON_INT64(ver), "sold", BCON_INT64(sold),
	         "stock", "{", "$lt", BCON_INT64(stock), "}", "}",
	    "]");
	update = BCON_NEW("$set", "{", "stock", BCON_INT64(stock), "sold", BCON_INT64(sold),
	    "version", BCON_INT64(ver), "}");
	write_opts(s, &opts, true);
	lk = sku_lock(s, d->sku);
	for (int attempt = 0; attempt < 2; attempt++) {
		bool ok = mongoc_collection_update_one(coll, filter, update, &opts, NULL, e);

		trip_done(s, ok || is_dupkey(e), e);
		if (ok || is_dupkey(e)) {
			rc = 0;
			if (ok)
				break;
			continue; /* see above: once more, the document exists now */
		}
		rc = STOCK_ESYS;
		break;
	}
	sku_unlock(lk);
	bson_destroy(&opts);
	bson_destroy(update);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	return rc;
}

/*
 * Read @sku's document into @out with @client (no roll-forward: see
 * read_latest). *@extra (may be NULL): it has more leases than a view holds.
 * Returns 0, STOCK_ENOENT, or STOCK_ESYS (the read failed, or the document
 * is corrupt: logged).
 */
static int
read_doc(struct store_mongo *s, mongoc_client_t *client, const char *sku,
    struct store_mongo_view *out, bool *extra)
{
	mongoc_collection_t *coll;
	mongoc_cursor_t *cur;
	const bson_t *b;
	bson_t *filter, *opts;
	bson_error_t e;
	const char *why;
	int rc = STOCK_ENOENT;

	coll = mongoc_client_get_collection(client, s->database, coll_of(s, sku));
	filter = BCON_NEW("_id", BCON_UTF8(sku));
	opts = BCON_NEW("limit", BCON_INT64(1));
	cur = mongoc_collection_find_with_opts(coll, filter, opts, NULL);
	if (mongoc_cursor_next(cur, &b)) {
		if (view_decode_ex(s, b, NULL, out, extra, &why)) {
			rc = 0;
		} else {
			slog(s, "mongo: %s.%s: document %s is corrupt (%s)", s->database,
			    coll_of(s, sku), sku, why);
			rc = STOCK_ESYS;
		}
	}
	if (mongoc_cursor_error(cur, &e)) {
		trip_done(s, false, &e);
		rc = STOCK_ESYS;
	} else {
		trip_done(s, true, NULL);
	}
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	return rc;
}

static int read_latest(struct store_mongo *s, mongoc_client_t *client, const char *sku,
    struct store_mongo_view *out, bool *extra);
static int chain_forward(struct store_mongo *s, mongoc_client_t *client,
    struct store_mongo_view *v, bool apply);

/*
 * The latest state of @sku (claims mode: the document rolled forward).
 * Returns 0, STOCK_ENOENT or STOCK_ESYS.
 */
static int
read_view(struct store_mongo *s, const char *sku, struct store_mongo_view *out)
{
	mongoc_client_t *client;
	int rc;

	if ((client = client_pop(s)) == NULL)
		return STOCK_ESYS;
	rc = read_latest(s, client, sku, out, NULL);
	mongoc_client_pool_push(s->pool, client);
	return rc;
}

/*
 * One findAndModify on @sku's document, returning the new document.
 * Returns 0 with *@found (and @out filled when found), FAM_DUPKEY when an
 * upsert found the _id taken (nothing was applied), or STOCK_ESYS (the
 * outcome is unknown; never retried here).
 */
static int
fam_run(struct store_mongo *s, const char *sku, const bson_t *query, const bson_t *update,
    bool upsert, bool *found, struct store_mongo_view *out)
{
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	mongoc_find_and_modify_opts_t *fo;
	pthread_mutex_t *lk;
	bson_t reply, extra;
	bson_iter_t it;
	bson_error_t e;
	bool ok;
	int rc = 0;

	*found = false;
	if ((client = client_pop(s)) == NULL)
		return STOCK_ESYS;
	coll = mongoc_client_get_collection(client, s->database, coll_of(s, sku));
	fo = mongoc_find_and_modify_opts_new();
	mongoc_find_and_modify_opts_set_update(fo, update);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_RETURN_NEW |
	        (upsert ? MONGOC_FIND_AND_MODIFY_UPSERT : MONGOC_FIND_AND_MODIFY_NONE));
	write_opts(s, &extra, false);
	mongoc_find_and_modify_opts_append(fo, &extra);
	lk = sku_lock(s, sku);
	ok = mongoc_collection_find_and_modify_with_opts(coll, query, fo, &reply, &e);
	sku_unlock(lk);
	trip_done(s, ok || (upsert && is_dupkey(&e)), &e);
	if (!ok) {
		rc = upsert && is_dupkey(&e) ? FAM_DUPKEY : STOCK_ESYS;
	} else if (bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
		const uint8_t *data;
		uint32_t len;
		bson_t doc;
		const char *why = "malformed BSON document";

		bson_iter_document(&it, &len, &data);
		if (bson_init_static(&doc, data, len) && view_decode(s, &doc, out, &why)) {
			*found = true;
		} else {
			slog(s, "mongo: %s.%s: %s was updated but is corrupt (%s)", s->database,
			    coll_of(s, sku), sku, why);
			rc = STOCK_ESYS;
		}
	}
	bson_destroy(&reply);
	bson_destroy(&extra);
	mongoc_find_and_modify_opts_destroy(fo);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(s->pool, client);
	return rc;
}

/* Array of decoded documents (for foreach and view_all). */
struct view_list {
	struct store_mongo_view *v;
	size_t n, cap;
};

/*
 * Read every document of both collections into @l (corrupt ones are logged
 * and skipped). Returns 0, STOCK_ESYS or STOCK_ENOMEM.
 */
static int
read_all(struct store_mongo *s, struct view_list *l)
{
	const char *colls[2] = { s->one_coll, s->many_coll };
	mongoc_client_t *client;
	int rc = 0;

	memset(l, 0, sizeof *l);
	if ((client = client_pop(s)) == NULL)
		return STOCK_ESYS;
	for (int i = 0; i < 2 && rc == 0; i++) {
		mongoc_collection_t *coll;
		mongoc_cursor_t *cur;
		const bson_t *b;
		bson_t filter = BSON_INITIALIZER;
		bson_error_t e;

		if (i == 1 && strcmp(colls[0], colls[1]) == 0)
			break; /* one collection for both kinds: read it once */
		coll = mongoc_client_get_collection(client, s->database, colls[i]);
		cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
		while (rc == 0 && mongoc_cursor_next(cur, &b)) {
			const char *why;

			if (l->n == l->cap) {
				size_t cap = l->cap ? l->cap * 2 : 64;
				struct store_mongo_view *nv = realloc(l->v, cap * sizeof *nv);

				if (nv == NULL) {
					rc = STOCK_ENOMEM;
					break;
				}
				l->v = nv;
				l->cap = cap;
			}
			if (view_decode(s, b, &l->v[l->n], &why))
				l->n++;
			else
				slog(s, "mongo: %s.%s: skipped a corrupt document (%s)", s->database,
				    colls[i], why);
		}
		if (rc == 0 && mongoc_cursor_error(cur, &e)) {
			trip_done(s, false, &e);
			rc = STOCK_ESYS;
		} else if (rc == 0) {
			trip_done(s, true, NULL);
		}
		mongoc_cursor_destroy(cur);
		mongoc_collection_destroy(coll);
	}
	/* Claims mode: each document's latest state (one claim lookup each). */
	for (size_t i = 0; s->claims && rc == 0 && i < l->n; i++)
		rc = chain_forward(s, client, &l->v[i], true);
	mongoc_client_pool_push(s->pool, client);
	if (rc != 0) {
		free(l->v);
		memset(l, 0, sizeof *l);
	} else {
		pthread_mutex_lock(&s->mu);
		s->docs = l->n;
		pthread_mutex_unlock(&s->mu);
	}
	return rc;
}

/* ====================================================================== */
/* Claims: compare-and-set from unique inserts                             */
/* ====================================================================== */

/*
 * Claims mode (FerretDB, or atomic_mode 2). Its filtered updates not being
 * atomic, the only atomic step FerretDB offers is the insert of a unique
 * _id. Every SKU's history is therefore kept as a chain of full states with
 * strictly increasing versions:
 *
 *   - the first state is the SKU document as created: one plain insert
 *     (seed, or adjust/append of a missing SKU); the unique _id lets exactly
 *     one creator win, the others see a duplicate key, re-read and go on;
 *   - every later state is a claim in <database>.StockClaims,
 *       {_id: "<sku>#<v>", sku, from: v, op: <nonce>, at: <server ms>,
 *        state: {stock, sold, version: v' > v, lost, leases}},
 *     "the successor of version v of <sku> is this state". The _id is
 *     unique, so a version has at most one successor: the chain never
 *     branches. (The version after the last '#' is all digits, so a SKU
 *     that contains '#' cannot produce another SKU's ids.)
 *
 * A write (claim_write) takes a chain state V of version d (the document
 * rolled forward, or the state this process knew to be the last a moment
 * ago: struct claim_slot), computes the next state from V in C (the op's
 * condition: stock >= n, the lease as expected, ...; or it answers from V
 * without writing), and inserts claim "<sku>#<d>". That insert is the
 * commit point: it succeeds only if d had no successor, i.e. V was the last
 * state, and then the new state follows it, exactly as a compare-and-set of
 * the version would have. A duplicate key means d already has a successor:
 * nothing was written; roll forward and try again (CLAIM_TRIES claims lost
 * in a row and timeout_ms spent: STOCK_ECONFLICT, nothing applied). A
 * network error leaves the insert's outcome unknown: the claim is looked
 * up by _id; our nonce in it:
 * committed; another's: lost; none: inserted once more with the same nonce
 * (and a duplicate key then is looked up too: our first insert may have
 * landed late); a lookup that fails: STOCK_ESYS (unknown).
 *
 * After the commit the new state is copied into the SKU document with
 * update {_id, version: {$lt: v'}} {$set: every member}. That is best
 * effort: a failure costs readers a lookup, never the write (logged once
 * until an apply works again). Reads that decide or report (store_get,
 * store_mongo_view, view_all, foreach, the read before a write) roll
 * forward: from the document's version d, look up "<sku>#<d>", follow the
 * successors until there is none, and copy the last one into the document.
 * A read linearizes at its last lookup: then, that state had no successor.
 *
 * The document is only a cache of the chain and may lag, or even go back:
 * FerretDB's update reads the document, then writes it, so an update
 * carrying an older state can land after a newer one (a regression). That
 * never breaks anything, because
 *   (a) the document only ever holds chain states: it is created as the
 *       first one and written only with claimed states, and a claim is only
 *       ever inserted on top of a chain state (by induction: V came from the
 *       document, a claim, or the slot, all chain states), so every claimed
 *       state is on the chain;
 *   (b) from any chain state, following the claims reaches the last state;
 *   (c) a claim based on a chain state that is not the last one fails: its
 *       successor claim exists. So a write based on a lagging or regressed
 *       document (or a stale slot) cannot commit; it rolls forward and
 *       tries again (and the next read repairs the document).
 * Hence the versions of one SKU form one sequence of committed states, each
 * computed from its predecessor, each the result of exactly one write: no
 * lost update, no oversell, whatever the document shows in between.
 *
 * What this needs: the successor claim of any state that a write may still
 * base itself on must exist. Pruning (after every CLAIM_PRUNE_EVERY-th
 * commit of a process) deletes only claims that are both
 *   (i) more than CLAIM_KEEP versions behind the version it just replaced
 *       AND behind the version the SKU document holds (read just before the
 *       delete: a lagging or regressed document keeps all the claims it
 *       needs to roll forward), and
 *   (ii) older than CLAIM_PRUNE_AGE_MS (or 2 timeout_ms + 1 s, if longer) by
 *       their stamp "at": the server's clock (the offset to it is measured
 *       at open from hello's localTime, so hosts need not agree).
 * (ii) covers what (i) cannot see. Every claim a write looks at or builds
 * on was created after its "anchor", the moment the write (or its slot)
 * last saw the chain's last state; a slot is trusted for CLAIM_CACHE_TTL_NS
 * after that, and a loser's walk goes back to the document once its anchor
 * is CLAIM_ANCHOR_NS old, so those claims are younger than that plus one
 * round trip (at most timeout_ms). And an update that will regress the
 * document was sent when its state was the last (a committer's, or a
 * reader's that had just found no successor), so it lands within about a
 * round trip of that state's successor claim's creation. The residual
 * assumption: no FerretDB handler sits for seconds between its read and its
 * write.
 *
 * Cost. A write: its claim insert and its copy into the document (two
 * round trips, both writes); a remembered tip saves the read before it,
 * otherwise add the document read and one claim lookup; a lost claim costs
 * one lookup per version walked. FerretDB v1's SQLite backend looks _id up
 * without its index (the pushed-down expression differs from the index's),
 * so every lookup scans StockClaims (about 5 us per claim; the unique insert
 * does use the index): pruning keeps it to about (write rate x prune age)
 * plus CLAIM_KEEP per SKU, and a prune (a scanning delete) runs only every
 * CLAIM_PRUNE_EVERY commits.
 *
 * Versions: a claimed state's version is v + 1, or the appended version
 * (store_append jumps). An append whose version is not above the stored one
 * changes nothing; for an equal version with other counts (a caller
 * breaking store_doc's rule) the stored state stays, unlike the native
 * tie-break, because a chain cannot hold two states of one version.
 *
 * Every process on a database must use claims (a native findAndModify
 * would bypass the chain), and a SKU document must never be deleted while
 * its claims remain.
 */

#define CLAIM_ID_MAX (STORE_SKU_MAX + sizeof "#18446744073709551615")

static uint64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The server's clock as this process estimates it (claims' "at"). */
static int64_t
server_ms(const struct store_mongo *s)
{
	return (int64_t)wall_ms() + s->clock_offset_ms;
}

/* A claim nonce: distinct within the store (a bijection of a counter),
 * keyed by a random value per store, so two stores collide with
 * probability 2^-64 (a nonce only tells our claim from another's). */
static int64_t
claim_nonce(struct store_mongo *s)
{
	uint64_t z = s->nonce_key +
	    __atomic_add_fetch(&s->nonce_ctr, 1, __ATOMIC_RELAXED) * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return (int64_t)(z ^ (z >> 31));
}

static void
claim_id(char *buf, size_t len, const char *sku, uint64_t from)
{
	snprintf(buf, len, "%s#%" PRIu64, sku, from);
}

/* Append stock, sold, version, lost and leases of @v to @b. */
static void
state_append(bson_t *b, const struct store_mongo_view *v)
{
	bson_t ls, l;

	BSON_APPEND_INT64(b, "stock", (int64_t)v->doc.stock);
	BSON_APPEND_INT64(b, "sold", (int64_t)v->doc.sold);
	BSON_APPEND_INT64(b, "version", (int64_t)v->doc.version);
	BSON_APPEND_INT64(b, "lost", (int64_t)v->lost);
	BSON_APPEND_DOCUMENT_BEGIN(b, "leases", &ls);
	for (size_t i = 0; i < v->nleases; i++) {
		const struct store_lease *x = &v->leases[i].lease;

		BSON_APPEND_DOCUMENT_BEGIN(&ls, v->leases[i].host, &l);
		BSON_APPEND_INT64(&l, "granted", (int64_t)x->granted);
		BSON_APPEND_INT64(&l, "sold", (int64_t)x->sold);
		BSON_APPEND_INT64(&l, "returned", (int64_t)x->returned);
		BSON_APPEND_INT64(&l, "expires", x->expires_ms);
		BSON_APPEND_BOOL(&l, "reclaimed", x->reclaimed);
		bson_append_document_end(&ls, &l);
	}
	bson_append_document_end(b, &ls);
}

/* Decode claim @b ("<sku>#<from>"): its state and its nonce. */
static bool
claim_decode(struct store_mongo *s, const bson_t *b, const char *sku, uint64_t from,
    struct store_mongo_view *state, int64_t *op, const char **why)
{
	bson_iter_t it;
	bool have_state = false, have_op = false, have_from = false, extra = false;
	int64_t f = -1;

	if (!bson_iter_init(&it, b)) {
		*why = "malformed BSON document";
		return false;
	}
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (strcmp(key, "from") == 0) {
			have_from = iter_int(&it, &f);
		} else if (strcmp(key, "op") == 0) {
			have_op = iter_int(&it, op);
		} else if (strcmp(key, "sku") == 0) {
			if (!BSON_ITER_HOLDS_UTF8(&it) || strcmp(bson_iter_utf8(&it, NULL), sku) != 0) {
				*why = "sku does not match its _id";
				return false;
			}
		} else if (strcmp(key, "state") == 0) {
			const uint8_t *data;
			uint32_t len;
			bson_t sd;

			if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
				*why = "state is not a document";
				return false;
			}
			bson_iter_document(&it, &len, &data);
			if (!bson_init_static(&sd, data, len) ||
			    !view_decode_ex(s, &sd, sku, state, &extra, why))
				return false;
			have_state = true;
		}
	}
	if (!have_state || !have_op || !have_from || f < 0 || (uint64_t)f != from) {
		*why = "lacks state, op or from, or from does not match its _id";
		return false;
	}
	if (state->doc.version <= from || extra) {
		*why = "its state's version is not above from, or it has too many leases";
		return false;
	}
	return true;
}

/*
 * Look up the successor claim of version @from of @sku. Returns 0 (*@state
 * and *@op filled, each may be NULL), STOCK_ENOENT, or STOCK_ESYS (the read
 * failed, or the claim is corrupt: logged).
 */
static int
claim_find(struct store_mongo *s, mongoc_client_t *client, const char *sku, uint64_t from,
    struct store_mongo_view *state, int64_t *op, bson_error_t *e)
{
	mongoc_collection_t *coll;
	mongoc_cursor_t *cur;
	const bson_t *b;
	bson_t *filter, *opts;
	struct store_mongo_view tmp;
	int64_t optmp;
	char id[CLAIM_ID_MAX];
	const char *why;
	int rc = STOCK_ENOENT;

	claim_id(id, sizeof id, sku, from);
	coll = mongoc_client_get_collection(client, s->database, CLAIMS_COLLECTION);
	filter = BCON_NEW("_id", BCON_UTF8(id));
	opts = BCON_NEW("limit", BCON_INT64(1));
	cur = mongoc_collection_find_with_opts(coll, filter, opts, NULL);
	if (mongoc_cursor_next(cur, &b)) {
		if (claim_decode(s, b, sku, from, state != NULL ? state : &tmp,
		        op != NULL ? op : &optmp, &why)) {
			rc = 0;
		} else {
			slog(s, "mongo: %s.%s: claim %s is corrupt (%s)", s->database,
			    CLAIMS_COLLECTION, id, why);
			bson_set_error(e, 0, 0, "claim %s is corrupt", id);
			rc = STOCK_ESYS;
		}
	}
	if (mongoc_cursor_error(cur, e)) {
		trip_done(s, false, e);
		rc = STOCK_ESYS;
	} else {
		trip_done(s, true, NULL);
	}
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	return rc;
}

/*
 * Insert @doc into collection @name: the one atomic step claims rely on.
 * Returns 0, CLAIM_LOST (duplicate _id) or STOCK_ESYS (outcome unknown).
 */
static int
insert_unique(struct store_mongo *s, mongoc_client_t *client, const char *name,
    const bson_t *doc, bson_error_t *e)
{
	mongoc_collection_t *coll;
	bson_t opts;
	bool ok;

	write_opts(s, &opts, false);
	coll = mongoc_client_get_collection(client, s->database, name);
	ok = mongoc_collection_insert_one(coll, doc, &opts, NULL, e);
	trip_done(s, ok || is_dupkey(e), e);
	mongoc_collection_destroy(coll);
	bson_destroy(&opts);
	return ok ? 0 : is_dupkey(e) ? CLAIM_LOST : STOCK_ESYS;
}

/* Insert claim "<sku>#<from>" -> @next. Returns 0, CLAIM_LOST (duplicate
 * key) or STOCK_ESYS (outcome unknown). */
static int
claim_insert(struct store_mongo *s, mongoc_client_t *client, const char *sku, uint64_t from,
    int64_t op, const struct store_mongo_view *next, bson_error_t *e)
{
	bson_t doc, state;
	char id[CLAIM_ID_MAX];
	int rc;

	claim_id(id, sizeof id, sku, from);
	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", id);
	BSON_APPEND_UTF8(&doc, "sku", sku);
	BSON_APPEND_INT64(&doc, "from", (int64_t)from);
	BSON_APPEND_INT64(&doc, "op", op);
	BSON_APPEND_INT64(&doc, "at", server_ms(s));
	BSON_APPEND_DOCUMENT_BEGIN(&doc, "state", &state);
	state_append(&state, next);
	bson_append_document_end(&doc, &state);
	rc = insert_unique(s, client, CLAIMS_COLLECTION, &doc, e);
	bson_destroy(&doc);
	return rc;
}

/*
 * Commit @next as the successor of version @from: the claim insert, with
 * an unknown outcome resolved by looking the claim up (see above).
 * Returns 0 (committed), CLAIM_LOST or STOCK_ESYS (outcome unknown).
 */
static int
claim_commit(struct store_mongo *s, mongoc_client_t *client, const char *sku, uint64_t from,
    const struct store_mongo_view *next, bson_error_t *e)
{
	int64_t op = claim_nonce(s), found;
	bool uncertain = false, resent = false;
	int rc = claim_insert(s, client, sku, from, op, next, e);

	for (;;) {
		int lrc;

		if (rc == 0)
			return 0;
		if (rc == CLAIM_LOST && !uncertain)
			return CLAIM_LOST; /* nothing of ours was ever in flight */
		/* Unknown, or a duplicate while an insert of ours may have landed. */
		uncertain = true;
		lrc = claim_find(s, client, sku, from, NULL, &found, e);
		if (lrc == 0)
			return found == op ? 0 : CLAIM_LOST;
		if (lrc != STOCK_ENOENT || resent)
			return STOCK_ESYS;
		resent = true;
		rc = claim_insert(s, client, sku, from, op, next, e);
	}
}

/*
 * Copy claimed state @v into its SKU document unless the document holds a
 * newer one. Best effort (the claim is the commit): failures are logged
 * once until an apply succeeds again.
 */
static void
state_apply(struct store_mongo *s, mongoc_client_t *client, const struct store_mongo_view *v)
{
	mongoc_collection_t *coll;
	bson_t *filter, update, set, opts;
	bson_error_t e;
	bool ok;

	coll = mongoc_client_get_collection(client, s->database, coll_of(s, v->doc.sku));
	filter = BCON_NEW("_id", BCON_UTF8(v->doc.sku), "version", "{", "$lt",
	    BCON_INT64((int64_t)v->doc.version), "}");
	bson_init(&update);
	BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
	state_append(&set, v);
	bson_append_document_end(&update, &set);
	write_opts(s, &opts, false);
	ok = mongoc_collection_update_one(coll, filter, &update, &opts, NULL, &e);
	trip_done(s, ok, &e);
	if (!ok) {
		if (__atomic_exchange_n(&s->apply_failing, 1, __ATOMIC_ACQ_REL) == 0)
			slog(s, "mongo: claims: copying %s version %" PRIu64 " into its document "
			        "failed (%s); the write is committed by its claim and readers roll "
			        "it forward (logged once until a copy succeeds)",
			    v->doc.sku, v->doc.version, e.message);
	} else if (__atomic_load_n(&s->apply_failing, __ATOMIC_RELAXED) != 0 &&
	    __atomic_exchange_n(&s->apply_failing, 0, __ATOMIC_ACQ_REL) != 0) {
		slog(s, "mongo: claims: copying claimed states into documents works again");
	}
	bson_destroy(&opts);
	bson_destroy(&update);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
}

/*
 * Roll @v (a chain state of its SKU) forward to the last state of the
 * chain; @apply: copy that into the document when it moved. Returns 0 or
 * STOCK_ESYS.
 */
static int
chain_forward(struct store_mongo *s, mongoc_client_t *client, struct store_mongo_view *v,
    bool apply)
{
	uint64_t start = v->doc.version;
	struct store_mongo_view next;
	bson_error_t e;

	for (unsigned hops = 0;; hops++) {
		int rc;

		if (hops == CLAIM_MAX_HOPS) {
			slog(s, "mongo: claims: %s: more than %d successor claims from version %" PRIu64,
			    v->doc.sku, CLAIM_MAX_HOPS, start);
			return STOCK_ESYS;
		}
		rc = claim_find(s, client, v->doc.sku, v->doc.version, &next, NULL, &e);
		if (rc == STOCK_ENOENT)
			break;
		if (rc != 0)
			return rc;
		*v = next;
	}
	if (apply && v->doc.version != start)
		state_apply(s, client, v);
	return 0;
}

/*
 * The latest state of @sku: its document, rolled forward in claims mode.
 * *@extra (may be NULL): the state has more leases than a view holds.
 * Returns 0, STOCK_ENOENT or STOCK_ESYS.
 */
static int
read_latest(struct store_mongo *s, mongoc_client_t *client, const char *sku,
    struct store_mongo_view *out, bool *extra)
{
	uint64_t v0;
	int rc = read_doc(s, client, sku, out, extra);

	if (rc != 0 || !s->claims)
		return rc;
	v0 = out->doc.version;
	if ((rc = chain_forward(s, client, out, true)) == 0 && extra != NULL &&
	    out->doc.version != v0)
		*extra = false; /* a claimed state never has more */
	return rc;
}

/*
 * Create @v's SKU document (the first state of its chain): a plain insert.
 * Returns 0, CLAIM_LOST (it exists) or STOCK_ESYS.
 */
static int
doc_create(struct store_mongo *s, mongoc_client_t *client, const struct store_mongo_view *v,
    bson_error_t *e)
{
	bson_t doc;
	int rc;

	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", v->doc.sku);
	BSON_APPEND_INT64(&doc, "stock", (int64_t)v->doc.stock);
	BSON_APPEND_INT64(&doc, "sold", (int64_t)v->doc.sold);
	BSON_APPEND_INT64(&doc, "version", (int64_t)v->doc.version);
	rc = insert_unique(s, client, coll_of(s, v->doc.sku), &doc, e);
	bson_destroy(&doc);
	return rc;
}

/*
 * Delete @sku's old claims (see (i) and (ii) above); @from: the version the
 * caller's commit replaced. Best effort.
 */
static void
claim_prune(struct store_mongo *s, mongoc_client_t *client, const char *sku, uint64_t from)
{
	struct store_mongo_view v;
	mongoc_collection_t *coll;
	bson_t *filter, opts;
	bson_error_t e;
	uint64_t low = from;
	int64_t age;
	bool ok;

	if (read_doc(s, client, sku, &v, NULL) != 0)
		return;
	if (v.doc.version < low)
		low = v.doc.version;
	if (low <= CLAIM_KEEP)
		return;
	age = (int64_t)s->timeout_ms * 2 + (int64_t)(CLAIM_ANCHOR_NS / 1000000u);
	if (age < CLAIM_PRUNE_AGE_MS)
		age = CLAIM_PRUNE_AGE_MS;
	filter = BCON_NEW("sku", BCON_UTF8(sku), "from", "{", "$lt",
	    BCON_INT64((int64_t)(low - CLAIM_KEEP)), "}", "at", "{", "$lt",
	    BCON_INT64(server_ms(s) - age), "}");
	write_opts(s, &opts, false);
	coll = mongoc_client_get_collection(client, s->database, CLAIMS_COLLECTION);
	ok = mongoc_collection_delete_many(coll, filter, &opts, NULL, &e);
	trip_done(s, ok, &e);
	mongoc_collection_destroy(coll);
	bson_destroy(&opts);
	bson_destroy(filter);
}

/*
 * The op of a claimed write: from the latest state @cur (NULL: the SKU has
 * no document; @next then holds just the SKU) compute the next full state
 * into @next. Returns 0 (write @next), CLAIM_NOCHANGE (nothing to write:
 * success with @cur), or a STOCK_* error (the answer, with @cur). Errors
 * are only answered from the document read and rolled forward during this
 * call; CLAIM_NOCHANGE may be answered from an older chain state (a
 * remembered or a walked-to one), so it must hold for every later state
 * too (append's "not newer" does: versions only grow along a chain).
 */
typedef int (*claim_fn)(const struct store_mongo_view *cur, struct store_mongo_view *next,
    void *ctx);

/*
 * One write of @sku in claims mode (see above). @out: on 0 the state after
 * the write; on an error of @fn the state it answered from. Returns 0,
 * @fn's error, STOCK_ECONFLICT (CLAIM_TRIES claims lost in a row and
 * timeout_ms spent: nothing applied), or STOCK_ESYS (a read failed: nothing
 * applied; or a claim's outcome stayed unknown; message in @e).
 *
 * The base state is the stripe's remembered tip when it is fresh, else the
 * document rolled forward. After a lost claim the loser walks the claims
 * from its base to the last state (lookups by _id, one round trip each,
 * until there is no successor) and builds on that: the winner needs two
 * round trips per write (its claim, its copy), a walk one per version, so
 * a loser catches up instead of trailing a process that keeps winning with
 * its remembered tip. That is a race, not a queue: the processes of one
 * SKU get no fair turns (a process that keeps winning keeps its head start),
 * hence the time bound before STOCK_ECONFLICT. An answer other than "write
 * this" (sold out, conflict, ...) is only given from the document read and
 * rolled forward (and repaired) during this call, never from a remembered
 * or walked-to state: the answer is the latest state's, and a caller that
 * ends on such an answer (every taker ends on sold out) leaves the document
 * repaired, so a late regression is not the document's final word once
 * everyone has stopped.
 */
static int
claim_write(struct store_mongo *s, mongoc_client_t *client, const char *sku, claim_fn fn,
    void *ctx, struct store_mongo_view *out, bson_error_t *e)
{
	struct claim_slot *slot = &s->slots[sku_stripe(sku)];
	struct store_mongo_view cur, next;
	pthread_mutex_t *lk;
	uint64_t pruned_from = 0;
	uint64_t read_at = 0; /* cur was read (rolled forward) at; 0: not read */
	uint64_t anchor = 0;  /* when cur's chain position was last seen as the last */
	uint64_t give_up = stock_now_ns() + (uint64_t)s->timeout_ms * 1000000ULL;
	bool have = false, prune = false;
	int rc = STOCK_ECONFLICT, lost = 0;

	memset(&cur, 0, sizeof cur);
	/* Contention reducer, see serialize; also guards the stripe's slot. */
	lk = sku_lock(s, sku);
	while (lost < CLAIM_TRIES || stock_now_ns() < give_up) {
		uint64_t t0 = stock_now_ns();

		if (!have && slot->valid && strcmp(slot->v.doc.sku, sku) == 0 &&
		    t0 - slot->at_ns < CLAIM_CACHE_TTL_NS) {
			cur = slot->v; /* (c): if it is no longer the last, the claim fails */
			read_at = 0;
			anchor = slot->at_ns;
			have = true;
		} else if (!have) {
			bool extra = false;

			slot->valid = false;
			rc = read_latest(s, client, sku, &cur, &extra);
			if (rc == STOCK_ENOENT) {
				memset(&next, 0, sizeof next);
				memcpy(next.doc.sku, sku, strlen(sku) + 1);
				if ((rc = fn(NULL, &next, ctx)) != 0) {
					if (rc == CLAIM_NOCHANGE)
						rc = STOCK_ENOENT;
					break;
				}
				if ((rc = doc_create(s, client, &next, e)) == CLAIM_LOST) {
					lost++; /* someone created it meanwhile: build on theirs */
					continue;
				}
				if (rc == 0) {
					*out = next;
					slot->v = next;
					slot->at_ns = t0;
					slot->valid = true;
				}
				break;
			}
			if (rc != 0)
				break;
			if (extra) {
				slog(s, "mongo: claims: %s has more than %d leases; claims mode "
				        "cannot rewrite it",
				    sku, STORE_LEASES_MAX);
				bson_set_error(e, 0, 0, "%s has more than %d leases", sku,
				    STORE_LEASES_MAX);
				rc = STOCK_ESYS;
				break;
			}
			read_at = anchor = t0;
			have = true;
		}
		if ((rc = fn(&cur, &next, ctx)) != 0) {
			if (read_at == 0 && rc != CLAIM_NOCHANGE) {
				/* Answer only from the latest state, read for this call. */
				have = false;
				slot->valid = false;
				rc = CLAIM_LOST; /* should the loop end here */
				continue;
			}
			if (read_at != 0) {
				slot->v = cur;
				slot->at_ns = read_at;
				slot->valid = true;
			}
			*out = cur;
			if (rc == CLAIM_NOCHANGE)
				rc = 0;
			break;
		}
		rc = claim_commit(s, client, sku, cur.doc.version, &next, e);
		if (rc == 0) {
			state_apply(s, client, &next);
			slot->v = next;
			slot->at_ns = t0; /* its successor can only come after our commit */
			slot->valid = true;
			*out = next;
			prune = __atomic_add_fetch(&s->commits, 1, __ATOMIC_RELAXED) %
			        CLAIM_PRUNE_EVERY ==
			    0;
			pruned_from = cur.doc.version;
			break;
		}
		slot->valid = false;
		if (rc != CLAIM_LOST)
			break; /* STOCK_ESYS: unknown */
		lost++;
		rc = CLAIM_LOST;
		read_at = 0;
		if (stock_now_ns() - anchor >= CLAIM_ANCHOR_NS) {
			have = false; /* too long behind: from the document again */
			continue;
		}
		/* Walk to the last state from ours (a chain state: (a)); what it
		 * ends on was the last after the walk began: the new anchor. */
		t0 = stock_now_ns();
		if ((rc = chain_forward(s, client, &cur, false)) != 0)
			break;
		anchor = t0;
		rc = CLAIM_LOST;
	}
	sku_unlock(lk);
	if (rc == CLAIM_LOST) {
		bson_set_error(e, 0, 0, "%s: %d claims lost in a row to concurrent writers", sku,
		    lost);
		if (read_latest(s, client, sku, out, NULL) != 0)
			*out = cur; /* the callers' @after: as current as can be had */
		rc = STOCK_ECONFLICT;
	}
	if (prune)
		claim_prune(s, client, sku, pruned_from);
	return rc;
}

/* claim_write with a client of the pool. */
static int
claims_run(struct store_mongo *s, const char *sku, claim_fn fn, void *ctx,
    struct store_mongo_view *out)
{
	mongoc_client_t *client;
	bson_error_t e;
	int rc;

	if ((client = client_pop(s)) == NULL)
		return STOCK_ESYS;
	memset(&e, 0, sizeof e);
	rc = claim_write(s, client, sku, fn, ctx, out, &e);
	mongoc_client_pool_push(s->pool, client);
	return rc;
}

/* --- the ops ------------------------------------------------------------- */

/* store_append: max version wins (see "Versions" above). */
static int
append_fn(const struct store_mongo_view *cur, struct store_mongo_view *next, void *ctx)
{
	const struct store_doc *d = ctx;

	if (cur == NULL) {
		next->doc = *d;
		return 0;
	}
	if (d->version <= cur->doc.version)
		return CLAIM_NOCHANGE;
	*next = *cur;
	next->doc.stock = d->stock;
	next->doc.sold = d->sold;
	next->doc.version = d->version;
	return 0;
}

/* put_doc in claims mode. Returns 0 or STOCK_ESYS (message in @e). */
static int
claims_put(struct store_mongo *s, mongoc_client_t *client, const struct store_doc *d,
    bson_error_t *e)
{
	struct store_mongo_view v;
	int rc;

	memset(e, 0, sizeof *e);
	rc = claim_write(s, client, d->sku, append_fn, (void *)d, &v, e);
	if (rc == 0)
		return 0;
	if (e->message[0] == '\0')
		bson_set_error(e, 0, 0, "claimed write of %s failed (%s)", d->sku, stock_err_name(rc));
	return STOCK_ESYS;
}

static int
take_fn(const struct store_mongo_view *cur, struct store_mongo_view *next, void *ctx)
{
	uint64_t n = *(const uint64_t *)ctx;

	if (cur == NULL)
		return STOCK_ENOENT;
	if (cur->doc.stock < n)
		return STOCK_ESOLDOUT;
	if (cur->doc.sold > STOCK_COUNT_MAX - n || cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.stock -= n;
	next->doc.sold += n;
	next->doc.version++;
	return 0;
}

struct adjust_ctx {
	bool absolute;
	uint64_t n;
};

static int
adjust_fn(const struct store_mongo_view *cur, struct store_mongo_view *next, void *ctx)
{
	const struct adjust_ctx *a = ctx;

	if (cur == NULL) { /* as the native upsert creates it */
		next->doc.stock = a->n;
		next->doc.sold = 0;
		next->doc.version = 1;
		return 0;
	}
	if ((!a->absolute && cur->doc.stock > STOCK_COUNT_MAX - a->n) ||
	    cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.stock = a->absolute ? a->n : cur->doc.stock + a->n;
	next->doc.version++;
	return 0;
}

struct lease_ctx {
	const char *host;
	const struct store_lease *expect, *next;
	int64_t d_stock, d_sold, d_lost;
};

/* *@x += @d within 0..STOCK_COUNT_MAX (|d| <= STOCK_COUNT_MAX). */
static bool
add_delta(uint64_t *x, int64_t d)
{
	if (d < 0) {
		if (*x < (uint64_t)-d)
			return false;
		*x -= (uint64_t)-d;
	} else {
		if (*x > STOCK_COUNT_MAX - (uint64_t)d)
			return false;
		*x += (uint64_t)d;
	}
	return true;
}

/* The conditions of the native filter (store.h), checked in C. */
static int
lease_fn(const struct store_mongo_view *cur, struct store_mongo_view *next, void *ctx)
{
	const struct lease_ctx *c = ctx;
	const struct store_lease *l;
	size_t i;

	if (cur == NULL)
		return STOCK_ENOENT;
	l = view_lease(cur, c->host);
	if (c->expect == NULL ? l != NULL : l == NULL || !lease_eq(l, c->expect))
		return STOCK_ECONFLICT;
	if ((c->d_stock < 0 && cur->doc.stock < (uint64_t)-c->d_stock) ||
	    (c->d_lost < 0 && cur->lost < (uint64_t)-c->d_lost))
		return STOCK_ESOLDOUT;
	if (cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	if (!add_delta(&next->doc.stock, c->d_stock) || !add_delta(&next->doc.sold, c->d_sold) ||
	    !add_delta(&next->lost, c->d_lost))
		return STOCK_ERANGE;
	next->doc.version++;
	for (i = 0; i < next->nleases && strcmp(next->leases[i].host, c->host) != 0; i++)
		;
	if (i == next->nleases) {
		if (i == STORE_LEASES_MAX)
			return STOCK_ERANGE;
		memcpy(next->leases[i].host, c->host, strlen(c->host) + 1);
		next->nleases++;
	}
	next->leases[i].lease = *c->next;
	return 0;
}

/* ====================================================================== */
/* The write-behind writer                                                 */
/* ====================================================================== */

static int
rec_cmp(const void *a, const void *b)
{
	const struct wb_rec *x = a, *y = b;
	int c = strcmp(x->doc.sku, y->doc.sku);

	if (c != 0)
		return c;
	/* The newest state of a SKU first. */
	return store_doc_newer(&x->doc, &y->doc) ? -1 : store_doc_newer(&y->doc, &x->doc) ? 1 : 0;
}

/* Keep the newest state per SKU; returns the number kept (at the front). */
static size_t
coalesce(struct wb_rec *r, size_t n)
{
	size_t i, m = 0;

	if (n > 1)
		qsort(r, n, sizeof *r, rec_cmp);
	for (i = 0; i < n; i++)
		if (m == 0 || strcmp(r[m - 1].doc.sku, r[i].doc.sku) != 0)
			r[m++] = r[i];
	return m;
}

/* Append @r to the queue (under mu). */
static int
q_push(struct store_mongo *s, const struct wb_rec *r)
{
	if (s->qn == s->qcap) {
		size_t cap = s->qcap ? s->qcap * 2 : 128;
		struct wb_rec *nq = realloc(s->q, cap * sizeof *nq);

		if (nq == NULL)
			return STOCK_ENOMEM;
		s->q = nq;
		s->qcap = cap;
	}
	s->q[s->qn++] = *r;
	return 0;
}

/*
 * The writer thread: takes everything queued, writes the newest state per
 * SKU, stops at the first failure (a server that is down would fail every
 * record after a full timeout each) and requeues the rest with fresh
 * sequence numbers, so a store_sync issued later waits for them again.
 */
static void *
writer_main(void *arg)
{
	struct store_mongo *s = arg;
	struct wb_rec *batch = NULL;
	size_t bcap = 0;
	uint64_t backoff_ns = 0, backoff_until = 0, streak = 0;
	bson_error_t e;

	memset(&e, 0, sizeof e);

	pthread_mutex_lock(&s->mu);
	for (;;) {
		uint64_t now, top;
		size_t bn, m, i, written;
		struct wb_rec *t;
		mongoc_client_t *client;
		int rc = 0;

		if (s->qn == 0) {
			if (s->closing)
				break;
			pthread_cond_wait(&s->work_cv, &s->mu);
			continue;
		}
		now = stock_now_ns();
		if (s->closing && streak > 0 && now >= s->close_deadline) {
			/* MongoDB stays unreachable: give up what is left. */
			s->lost_records += s->qn;
			s->inflight -= s->qn;
			slog(s, "mongo: close: dropped %zu write-behind records (MongoDB unreachable: %s)",
			    s->qn, e.message);
			s->qn = 0;
			s->fail_count++;
			pthread_cond_broadcast(&s->done_cv);
			break;
		}
		if (now < backoff_until) {
			cond_wait_until(&s->work_cv, &s->mu,
			    s->closing && s->close_deadline < backoff_until ? s->close_deadline
			                                                    : backoff_until);
			continue;
		}
		/* Take everything: swap the queue with the spare array. */
		t = s->q;
		s->q = batch;
		batch = t;
		bn = s->qn;
		t = NULL;
		{
			size_t c = s->qcap;

			s->qcap = bcap;
			bcap = c;
		}
		s->qn = 0;
		top = s->next_seq;
		pthread_mutex_unlock(&s->mu);

		m = coalesce(batch, bn);
		written = 0;
		if ((client = client_pop(s)) == NULL) {
			rc = STOCK_ESYS;
			bson_set_error(&e, 0, 0, "no MongoDB client available");
		}
		for (i = 0; rc == 0 && i < m; i++) {
			if ((rc = put_doc(s, client, &batch[i].doc, &e)) == 0)
				written++;
		}
		if (client != NULL)
			mongoc_client_pool_push(s->pool, client);

		pthread_mutex_lock(&s->mu);
		s->inflight -= bn;
		for (i = written; i < m; i++) {
			struct wb_rec r = batch[i];

			r.seq = ++s->next_seq;
			if (q_push(s, &r) != 0) {
				s->lost_records++;
				slog(s, "mongo: out of memory: a write-behind record of %s was dropped",
				    r.doc.sku);
				continue;
			}
			s->inflight++;
		}
		s->done_seq = top;
		if (rc != 0) {
			s->fail_count++;
			if (streak++ == 0)
				slog(s, "mongo: write-behind write failed (%s); %zu records stay queued and "
				        "are retried with backoff",
				    e.message, m - written);
			backoff_ns = backoff_ns == 0 ? BACKOFF_MIN_NS : backoff_ns * 2;
			if (backoff_ns > BACKOFF_MAX_NS)
				backoff_ns = BACKOFF_MAX_NS;
			if (backoff_ns > (uint64_t)s->timeout_ms * 1000000ULL)
				backoff_ns = (uint64_t)s->timeout_ms * 1000000ULL;
			backoff_until = stock_now_ns() + backoff_ns;
		} else {
			if (streak > 0)
				slog(s, "mongo: write-behind writes succeed again after %" PRIu64
				        " failed attempts",
				    streak);
			streak = 0;
			backoff_ns = 0;
			backoff_until = 0;
		}
		pthread_cond_broadcast(&s->done_cv);
	}
	pthread_mutex_unlock(&s->mu);
	free(batch);
	return NULL;
}

/* ====================================================================== */
/* The vtable                                                              */
/* ====================================================================== */

static int
mg_append(store_t *st, const struct store_doc *doc, bool durable)
{
	struct store_mongo *s = to_mongo(st);
	struct wb_rec r;
	mongoc_client_t *client;
	bson_error_t e;
	int rc;

	if ((rc = store_doc_check(doc)) != 0)
		return rc;
	store_doc_normalize(&r.doc, doc);
	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		return STOCK_EINVAL;
	}
	if (durable) {
		s->records++;
		pthread_mutex_unlock(&s->mu);
		if ((client = client_pop(s)) == NULL)
			return STOCK_ESYS;
		rc = put_doc(s, client, &r.doc, &e);
		mongoc_client_pool_push(s->pool, client);
		return rc;
	}
	if (s->inflight >= s->queue_limit) {
		s->queue_rejects++;
		pthread_mutex_unlock(&s->mu);
		return STOCK_EBUSY;
	}
	r.seq = s->next_seq + 1;
	if ((rc = q_push(s, &r)) != 0) {
		pthread_mutex_unlock(&s->mu);
		return rc;
	}
	s->next_seq++;
	s->inflight++;
	s->records++;
	pthread_cond_signal(&s->work_cv);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static int
mg_sync(store_t *st)
{
	struct store_mongo *s = to_mongo(st);
	uint64_t target, fails;
	int rc;

	pthread_mutex_lock(&s->mu);
	target = s->next_seq;
	fails = s->fail_count;
	while (s->done_seq < target && s->fail_count == fails)
		pthread_cond_wait(&s->done_cv, &s->mu);
	rc = s->fail_count == fails ? 0 : STOCK_ESYS;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int
mg_get(store_t *st, const char *sku, struct store_doc *out)
{
	struct store_mongo_view v;
	int rc;

	if (sku_check(sku) != 0 || out == NULL)
		return STOCK_EINVAL;
	if ((rc = read_view(to_mongo(st), sku, &v)) == 0)
		*out = v.doc;
	return rc;
}

static int
mg_foreach(store_t *st, store_foreach_fn fn, void *arg)
{
	struct view_list l;
	size_t i;
	int rc;

	if (fn == NULL)
		return STOCK_EINVAL;
	if ((rc = read_all(to_mongo(st), &l)) != 0)
		return rc;
	for (i = 0; rc == 0 && i < l.n; i++)
		rc = fn(&l.v[i].doc, arg);
	free(l.v);
	return rc;
}

static int
mg_snapshot(store_t *st)
{
	(void)st;
	return 0; /* nothing to compact */
}

static int
mg_stats(store_t *st, struct store_stats *out)
{
	struct store_mongo *s = to_mongo(st);

	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&s->mu);
	out->records = s->records;
	out->queue_rejects = s->queue_rejects;
	out->queue_depth = s->inflight;
	out->lost_records = s->lost_records;
	out->docs = s->docs;
	pthread_mutex_unlock(&s->mu);
	out->batches = __atomic_load_n(&s->trips, __ATOMIC_RELAXED);
	out->fsync_failures = __atomic_load_n(&s->failed_trips, __ATOMIC_RELAXED);
	return 0;
}

static bool
mg_healthy(store_t *st)
{
	return __atomic_load_n(&to_mongo(st)->healthy, __ATOMIC_ACQUIRE) != 0;
}

/* Release everything; the writer is not running. */
static void
store_free(struct store_mongo *s)
{
	if (s->pool != NULL)
		mongoc_client_pool_destroy(s->pool);
	if (s->uri != NULL)
		mongoc_uri_destroy(s->uri);
	bson_destroy(&s->wc);
	free(s->q);
	free(s->database);
	free(s->one_coll);
	free(s->many_coll);
	pthread_cond_destroy(&s->work_cv);
	pthread_cond_destroy(&s->done_cv);
	pthread_mutex_destroy(&s->mu);
	for (int i = 0; i < SKU_STRIPES; i++)
		pthread_mutex_destroy(&s->stripes[i]);
	free(s->slots);
	free(s);
}

static void
mg_close(store_t *st)
{
	struct store_mongo *s = to_mongo(st);

	/*
	 * Drain: the writer keeps going while writes succeed; once they fail it
	 * retries until about timeout_ms from now, then drops what is left
	 * (lost_records). One attempt in flight may add another timeout_ms.
	 */
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	s->close_deadline = stock_now_ns() + (uint64_t)s->timeout_ms * 1000000ULL;
	pthread_cond_signal(&s->work_cv);
	pthread_mutex_unlock(&s->mu);
	if (s->writer_started)
		pthread_join(s->writer, NULL);
	if (s->lost_records > 0)
		slog(s, "mongo: %" PRIu64 " write-behind records were lost (MongoDB unreachable at close)",
		    s->lost_records);
	store_free(s);
}

static const struct store_ops mongo_ops = {
	.name = "mongo",
	.append = mg_append,
	.sync = mg_sync,
	.get = mg_get,
	.foreach = mg_foreach,
	.snapshot = mg_snapshot,
	.stats = mg_stats,
	.healthy = mg_healthy,
	.close = mg_close,
};

/* ====================================================================== */
/* Open                                                                    */
/* ====================================================================== */

#if defined(__SANITIZE_THREAD__)
/*
 * ThreadSanitizer builds only. libmongoc and libbson are not instrumented:
 * the pool's monitor threads and the callers' threads hand topology data to
 * each other through libmongoc's own atomics (reference counts, lazily
 * built handshake documents), which TSan cannot see, so it reports the
 * monitor thread's bson_destroy() of data a caller read earlier inside
 * libmongoc as a race (seen at store_mongo_open's first round trip). Every
 * frame of those reports lies in libbson/libmongoc, none in this project's
 * code. Weak: a program that defines its own suppressions wins.
 */
__attribute__((weak)) const char *__tsan_default_suppressions(void);

__attribute__((weak)) const char *
__tsan_default_suppressions(void)
{
	return "race:libbson-1.0.so\n"
	       "race:libmongoc-1.0.so\n";
}
#endif

static pthread_once_t mongo_once = PTHREAD_ONCE_INIT;

static void
mongo_init_once(void)
{
	/* Process-wide; mongoc_cleanup() is never called (other users may exist). */
	mongoc_init();
}

/* "host:port,host:port" of @uri, for messages (never the credentials). */
static void
uri_hosts(const mongoc_uri_t *uri, char *buf, size_t len)
{
	const mongoc_host_list_t *h;
	size_t o = 0;

	buf[0] = '\0';
	for (h = mongoc_uri_get_hosts(uri); h != NULL && o < len; h = h->next) {
		int n = snprintf(buf + o, len - o, "%s%s", o ? "," : "", h->host_and_port);

		if (n < 0)
			break;
		o += (size_t)n;
	}
	if (buf[0] == '\0')
		snprintf(buf, len, "%s", "(SRV or unix socket)");
}

static char *
dup_or(const char *v, const char *def)
{
	return strdup(v != NULL && v[0] != '\0' ? v : def);
}

/*
 * Connect and ping, pick the write concern from the server type. Returns 0,
 * STOCK_EINVAL or STOCK_ESYS (message in @err).
 */
static int
connect_pool(struct store_mongo *s, const char *uri_str, char *err, size_t errlen)
{
	mongoc_client_t *client;
	mongoc_server_description_t *sd;
	bson_error_t e;
	bson_t *ping, reply;
	char hosts[256];
	int32_t t = s->timeout_ms > INT32_MAX ? INT32_MAX : (int32_t)s->timeout_ms;
	bool ok;

	if ((s->uri = mongoc_uri_new_with_error(uri_str, &e)) == NULL) {
		store_seterr(err, errlen, "mongo: bad URI: %s", e.message);
		return STOCK_EINVAL;
	}
	if (!mongoc_uri_set_option_as_int32(s->uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_int32(s->uri, MONGOC_URI_CONNECTTIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_int32(s->uri, MONGOC_URI_SOCKETTIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_int32(s->uri, MONGOC_URI_WAITQUEUETIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_bool(s->uri, MONGOC_URI_RETRYWRITES, false) ||
	    !mongoc_uri_set_option_as_bool(s->uri, MONGOC_URI_RETRYREADS, false) ||
	    !mongoc_uri_set_appname(s->uri, APPNAME)) {
		store_seterr(err, errlen, "mongo: cannot set the URI options (timeouts, retries, appname)");
		return STOCK_EINVAL;
	}
	uri_hosts(s->uri, hosts, sizeof hosts);
	if ((s->pool = mongoc_client_pool_new_with_error(s->uri, &e)) == NULL) {
		store_seterr(err, errlen, "mongo: %s: cannot create the client pool: %s", hosts, e.message);
		return STOCK_EINVAL;
	}
	mongoc_client_pool_set_error_api(s->pool, MONGOC_ERROR_API_VERSION_2);
	if ((client = mongoc_client_pool_pop(s->pool)) == NULL) {
		store_seterr(err, errlen, "mongo: %s: no client available", hosts);
		return STOCK_ESYS;
	}
	ping = BCON_NEW("ping", BCON_INT32(1));
	ok = mongoc_client_command_simple(client, "admin", ping, NULL, NULL, &e);
	bson_destroy(ping);
	sd = ok ? mongoc_client_select_server(client, true, NULL, &e) : NULL;
	if (sd == NULL) {
		mongoc_client_pool_push(s->pool, client);
		store_seterr(err, errlen, "mongo: %s: server unreachable within %u ms: %s", hosts,
		    s->timeout_ms, e.message);
		return STOCK_ESYS;
	}
	s->replset = strcmp(mongoc_server_description_type(sd), "RSPrimary") == 0 ||
	    strcmp(mongoc_server_description_type(sd), "Mongos") == 0;
	mongoc_server_description_destroy(sd);

	/* The server's clock (hello's localTime), for the claims' stamps. */
	ping = BCON_NEW("hello", BCON_INT32(1));
	{
		uint64_t t0 = wall_ms();

		if (mongoc_client_command_simple(client, "admin", ping, NULL, &reply, &e)) {
			bson_iter_t it;

			if (bson_iter_init_find(&it, &reply, "localTime") &&
			    BSON_ITER_HOLDS_DATE_TIME(&it))
				s->clock_offset_ms = bson_iter_date_time(&it) -
				    (int64_t)((t0 + wall_ms()) / 2);
		}
		bson_destroy(&reply);
	}
	bson_destroy(ping);

	/* FerretDB tells itself apart in buildInfo (see claims, serialize). */
	ping = BCON_NEW("buildInfo", BCON_INT32(1));
	if (mongoc_client_command_simple(client, "admin", ping, NULL, &reply, &e)) {
		bson_iter_t it;

		s->ferretdb = bson_iter_init_find(&it, &reply, "ferretdbVersion");
	}
	bson_destroy(&reply);
	bson_destroy(ping);
	mongoc_client_pool_push(s->pool, client);

	/*
	 * {w: "majority", j: true} on a replica set, {w: 1, j: true} otherwise.
	 * FerretDB v1 (a standalone as far as the driver can tell) accepts j
	 * (checked against v1.24.2), so no fallback to a bare w: 1 is needed.
	 * wtimeout bounds the wait for replication like every other round trip.
	 */
	if (s->replset)
		BSON_APPEND_UTF8(&s->wc, "w", "majority");
	else
		BSON_APPEND_INT32(&s->wc, "w", 1);
	BSON_APPEND_BOOL(&s->wc, "j", true);
	BSON_APPEND_INT64(&s->wc, "wtimeout", (int64_t)s->timeout_ms);
	return 0;
}

int
store_mongo_open(store_t **out, const struct store_mongo_options *opt, char *err, size_t errlen)
{
	struct store_mongo *s;
	pthread_condattr_t ca;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (out == NULL || opt == NULL || opt->uri == NULL || opt->uri[0] == '\0') {
		store_seterr(err, errlen, "mongo: a MongoDB URI is required");
		return STOCK_EINVAL;
	}
	if (opt->atomic_mode < 0 || opt->atomic_mode > 2) {
		store_seterr(err, errlen, "mongo: atomic_mode must be 0 (auto), 1 (native) or 2 (claims)");
		return STOCK_EINVAL;
	}
	pthread_once(&mongo_once, mongo_init_once);
	if ((s = calloc(1, sizeof *s)) == NULL)
		return STOCK_ENOMEM;
	s->base.ops = &mongo_ops;
	bson_init(&s->wc);
	s->timeout_ms = opt->timeout_ms ? opt->timeout_ms : DEF_TIMEOUT_MS;
	s->queue_limit = opt->queue_limit ? opt->queue_limit : DEF_QUEUE_LIMIT;
	s->log = opt->log;
	s->log_arg = opt->log_arg;
	s->healthy = 1;
	pthread_mutex_init(&s->mu, NULL);
	for (int i = 0; i < SKU_STRIPES; i++)
		pthread_mutex_init(&s->stripes[i], NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->work_cv, &ca);
	pthread_cond_init(&s->done_cv, &ca);
	pthread_condattr_destroy(&ca);
	s->database = dup_or(opt->database, DEF_DATABASE);
	s->one_coll = dup_or(opt->one_collection, DEF_ONE_COLLECTION);
	s->many_coll = dup_or(opt->many_collection, DEF_MANY_COLLECTION);
	if (s->database == NULL || s->one_coll == NULL || s->many_coll == NULL) {
		store_free(s);
		return STOCK_ENOMEM;
	}
	if ((rc = connect_pool(s, opt->uri, err, errlen)) != 0) {
		store_free(s);
		return rc;
	}
	s->claims = opt->atomic_mode == 2 || (opt->atomic_mode == 0 && s->ferretdb);
	s->serialize = s->claims || s->ferretdb;
	if (s->claims) {
		if (strcmp(s->one_coll, CLAIMS_COLLECTION) == 0 ||
		    strcmp(s->many_coll, CLAIMS_COLLECTION) == 0) {
			store_seterr(err, errlen, "mongo: collection name %s is reserved for claims",
			    CLAIMS_COLLECTION);
			store_free(s);
			return STOCK_EINVAL;
		}
		if ((s->slots = calloc(SKU_STRIPES, sizeof *s->slots)) == NULL) {
			store_free(s);
			return STOCK_ENOMEM;
		}
		if (getrandom(&s->nonce_key, sizeof s->nonce_key, 0) != (ssize_t)sizeof s->nonce_key)
			s->nonce_key = stock_now_ns() ^ wall_ms() << 20 ^ (uint64_t)getpid() << 40 ^
			    (uint64_t)(uintptr_t)s;
		if (s->ferretdb)
			slog(s, "mongo: FerretDB detected: conditional updates go through successor "
			        "claims (FerretDB#3040)");
		else
			slog(s, "mongo: atomic_mode 2: conditional updates go through successor claims");
	} else if (s->ferretdb) {
		slog(s, "mongo: FerretDB with atomic_mode 1: its conditional updates are not atomic "
		        "(FerretDB#3040); this process serializes its writes per SKU, but several "
		        "processes on one FerretDB can oversell");
	}
	if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
		store_seterr(err, errlen, "mongo: cannot start the write-behind thread");
		store_free(s);
		return STOCK_ESYS;
	}
	s->writer_started = true;
	*out = &s->base;
	return 0;
}

bool
store_is_mongo(const store_t *st)
{
	return st != NULL && st->ops == &mongo_ops;
}

/* ====================================================================== */
/* The MongoDB-only calls                                                  */
/* ====================================================================== */

int
store_mongo_seed(store_t *st, const char *sku, uint64_t n)
{
	struct store_mongo *s;
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	bson_t *filter, *update, opts;
	pthread_mutex_t *lk;
	bson_error_t e;
	bool ok;

	if (!store_is_mongo(st) || sku_check(sku) != 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	s = to_mongo(st);
	if ((client = client_pop(s)) == NULL)
		return STOCK_ESYS;
	if (s->claims) {
		/* Insert-if-missing is atomic by itself (the first state of the chain). */
		struct store_mongo_view v;
		int rc;

		memset(&v, 0, sizeof v);
		memcpy(v.doc.sku, sku, strlen(sku) + 1);
		v.doc.stock = n;
		v.doc.version = 1;
		rc = doc_create(s, client, &v, &e);
		if (rc == STOCK_ESYS && read_doc(s, client, sku, &v, NULL) == 0)
			rc = 0; /* the insert's outcome was unknown, but it is there */
		mongoc_client_pool_push(s->pool, client);
		return rc == STOCK_ESYS ? STOCK_ESYS : 0;
	}
	coll = mongoc_client_get_collection(client, s->database, coll_of(s, sku));
	filter = BCON_NEW("_id", BCON_UTF8(sku));
	update = BCON_NEW("$setOnInsert", "{", "stock", BCON_INT64((int64_t)n), "sold",
	    BCON_INT64(0), "version", BCON_INT64(1), "}");
	write_opts(s, &opts, true);
	lk = sku_lock(s, sku);
	ok = mongoc_collection_update_one(coll, filter, update, &opts, NULL, &e);
	sku_unlock(lk);
	/* A duplicate key: a concurrent seed inserted it first. */
	ok = ok || is_dupkey(&e);
	trip_done(s, ok, &e);
	bson_destroy(&opts);
	bson_destroy(update);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(s->pool, client);
	return ok ? 0 : STOCK_ESYS;
}

int
store_mongo_take(store_t *st, const char *sku, uint64_t n, struct store_doc *after)
{
	struct store_mongo *s;
	struct store_mongo_view v;
	bson_t *query, *update;
	bool found;
	int rc = STOCK_ECONFLICT;

	if (!store_is_mongo(st) || sku_check(sku) != 0 || n == 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	s = to_mongo(st);
	if (s->claims) {
		rc = claims_run(s, sku, take_fn, &n, &v);
		if ((rc == 0 || rc == STOCK_ESOLDOUT) && after != NULL)
			*after = v.doc;
		return rc;
	}
	query = BCON_NEW("_id", BCON_UTF8(sku), "stock", "{", "$gte", BCON_INT64((int64_t)n), "}",
	    "sold", "{", "$lte", BCON_INT64((int64_t)(STOCK_COUNT_MAX - n)), "}");
	update = BCON_NEW("$inc", "{", "stock", BCON_INT64(-(int64_t)n), "sold",
	    BCON_INT64((int64_t)n), "version", BCON_INT64(1), "}");
	for (int attempt = 0; attempt < RECHECK_TRIES; attempt++) {
		if ((rc = fam_run(s, sku, query, update, false, &found, &v)) != 0)
			break; /* STOCK_ESYS: unknown outcome, never retried */
		if (found) {
			if (after != NULL)
				*after = v.doc;
			break;
		}
		/* Nothing matched, nothing was applied: find out why. */
		if ((rc = read_view(s, sku, &v)) != 0)
			break;
		if (v.doc.stock < n) {
			if (after != NULL)
				*after = v.doc;
			rc = STOCK_ESOLDOUT;
			break;
		}
		if (v.doc.sold > STOCK_COUNT_MAX - n) {
			rc = STOCK_ERANGE;
			break;
		}
		rc = STOCK_ECONFLICT; /* restocked between the two: it would match now */
	}
	bson_destroy(update);
	bson_destroy(query);
	return rc;
}

int
store_mongo_adjust(store_t *st, const char *sku, bool absolute, uint64_t n,
    struct store_doc *after)
{
	struct store_mongo *s;
	struct store_mongo_view v;
	bson_t *query, *update;
	bool found;
	int rc = STOCK_ECONFLICT;

	if (!store_is_mongo(st) || sku_check(sku) != 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	s = to_mongo(st);
	if (s->claims) {
		struct adjust_ctx a = { absolute, n };

		rc = claims_run(s, sku, adjust_fn, &a, &v);
		if (rc == 0 && after != NULL)
			*after = v.doc;
		return rc;
	}
	if (absolute) {
		query = BCON_NEW("_id", BCON_UTF8(sku));
		update = BCON_NEW("$set", "{", "stock", BCON_INT64((int64_t)n), "}",
		    "$inc", "{", "version", BCON_INT64(1), "}",
		    "$setOnInsert", "{", "sold", BCON_INT64(0), "}");
	} else {
		/* The filter keeps the result within STOCK_COUNT_MAX. */
		query = BCON_NEW("_id", BCON_UTF8(sku), "stock", "{", "$lte",
		    BCON_INT64((int64_t)(STOCK_COUNT_MAX - n)), "}");
		update = BCON_NEW("$inc", "{", "stock", BCON_INT64((int64_t)n), "version",
		    BCON_INT64(1), "}", "$setOnInsert", "{", "sold", BCON_INT64(0), "}");
	}
	for (int attempt = 0; attempt < RECHECK_TRIES; attempt++) {
		rc = fam_run(s, sku, query, update, true, &found, &v);
		if (rc == 0 && found) {
			if (after != NULL)
				*after = v.doc;
			break;
		}
		if (rc == STOCK_ESYS)
			break;
		if (rc == 0) { /* an upsert that neither matched nor inserted */
			rc = STOCK_ESYS;
			break;
		}
		/*
		 * A duplicate key: nothing was applied. Either the document is
		 * there with stock too high for the restock, or a concurrent
		 * upsert created it between our filter and our insert.
		 */
		if ((rc = read_view(s, sku, &v)) == STOCK_ENOENT) {
			rc = STOCK_ECONFLICT; /* created and deleted meanwhile: again */
			continue;
		}
		if (rc != 0)
			break;
		rc = STOCK_ECONFLICT;
		if (!absolute && v.doc.stock > STOCK_COUNT_MAX - n) {
			rc = STOCK_ERANGE;
			break;
		}
	}
	bson_destroy(update);
	bson_destroy(query);
	return rc;
}

int
store_mongo_view(store_t *st, const char *sku, struct store_mongo_view *out)
{
	if (!store_is_mongo(st) || sku_check(sku) != 0 || out == NULL)
		return STOCK_EINVAL;
	return read_view(to_mongo(st), sku, out);
}

int
store_mongo_view_all(store_t *st, store_mongo_view_fn fn, void *arg)
{
	struct view_list l;
	size_t i;
	int rc;

	if (!store_is_mongo(st) || fn == NULL)
		return STOCK_EINVAL;
	if ((rc = read_all(to_mongo(st), &l)) != 0)
		return rc;
	for (i = 0; rc == 0 && i < l.n; i++)
		rc = fn(&l.v[i], arg);
	free(l.v);
	return rc;
}

/* A delta of a count: |d| <= STOCK_COUNT_MAX. */
static bool
delta_ok(int64_t d)
{
	return d >= -(int64_t)STOCK_COUNT_MAX && d <= (int64_t)STOCK_COUNT_MAX;
}

static bool
lease_counts_ok(const struct store_lease *l)
{
	return l->granted <= STOCK_COUNT_MAX && l->sold <= STOCK_COUNT_MAX &&
	    l->returned <= STOCK_COUNT_MAX && l->sold + l->returned <= l->granted;
}

/* Arguments of store_mongo_lease_cas; see there. */
static int
lease_args_check(const char *sku, const char *host, const struct store_lease *expect,
    const struct store_lease *next, int64_t d_stock, int64_t d_sold, int64_t d_lost)
{
	if (sku_check(sku) != 0 || host == NULL || next == NULL ||
	    !host_valid(host, strnlen(host, STORE_HOST_MAX + 1)))
		return STOCK_EINVAL;
	if (!lease_counts_ok(next) || !delta_ok(d_stock) || !delta_ok(d_sold) || !delta_ok(d_lost) ||
	    d_sold < 0)
		return STOCK_EINVAL;
	if (expect != NULL &&
	    (!lease_counts_ok(expect) || next->granted < expect->granted ||
	        next->sold < expect->sold || next->returned < expect->returned ||
	        lease_eq(next, expect)))
		return STOCK_EINVAL;
	return 0;
}

int
store_mongo_lease_cas(store_t *st, const char *sku, const char *host,
    const struct store_lease *expect, const struct store_lease *next, int64_t d_stock,
    int64_t d_sold, int64_t d_lost, struct store_mongo_view *after)
{
	struct store_mongo *s;
	struct store_mongo_view v;
	char key[sizeof "leases." + STORE_HOST_MAX + sizeof ".reclaimed"];
	size_t kl;
	bson_t query, update, child, lease;
	bool found;
	int rc;

	if (!store_is_mongo(st) ||
	    lease_args_check(sku, host, expect, next, d_stock, d_sold, d_lost) != 0)
		return STOCK_EINVAL;
	s = to_mongo(st);
	if (s->claims) {
		struct lease_ctx c = { host, expect, next, d_stock, d_sold, d_lost };

		rc = claims_run(s, sku, lease_fn, &c, &v);
		if ((rc == 0 || rc == STOCK_ECONFLICT || rc == STOCK_ESOLDOUT) && after != NULL)
			*after = v;
		return rc;
	}
	kl = (size_t)snprintf(key, sizeof key, "leases.%s", host);

	/* {_id, leases.<host>: {$exists: false}} or every member of it equal. */
	bson_init(&query);
	BSON_APPEND_UTF8(&query, "_id", sku);
	if (expect == NULL) {
		BSON_APPEND_DOCUMENT_BEGIN(&query, key, &child);
		BSON_APPEND_BOOL(&child, "$exists", false);
		bson_append_document_end(&query, &child);
	} else {
		snprintf(key + kl, sizeof key - kl, ".granted");
		BSON_APPEND_INT64(&query, key, (int64_t)expect->granted);
		snprintf(key + kl, sizeof key - kl, ".sold");
		BSON_APPEND_INT64(&query, key, (int64_t)expect->sold);
		snprintf(key + kl, sizeof key - kl, ".returned");
		BSON_APPEND_INT64(&query, key, (int64_t)expect->returned);
		snprintf(key + kl, sizeof key - kl, ".expires");
		BSON_APPEND_INT64(&query, key, expect->expires_ms);
		snprintf(key + kl, sizeof key - kl, ".reclaimed");
		BSON_APPEND_BOOL(&query, key, expect->reclaimed);
		key[kl] = '\0';
	}
	if (d_stock < 0) {
		BSON_APPEND_DOCUMENT_BEGIN(&query, "stock", &child);
		BSON_APPEND_INT64(&child, "$gte", -d_stock);
		bson_append_document_end(&query, &child);
	}
	if (d_lost < 0) {
		BSON_APPEND_DOCUMENT_BEGIN(&query, "lost", &child);
		BSON_APPEND_INT64(&child, "$gte", -d_lost);
		bson_append_document_end(&query, &child);
	}

	/* {$set: {leases.<host>: next}, $inc: {the non-zero deltas, version: 1}} */
	bson_init(&update);
	BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &child);
	BSON_APPEND_DOCUMENT_BEGIN(&child, key, &lease);
	BSON_APPEND_INT64(&lease, "granted", (int64_t)next->granted);
	BSON_APPEND_INT64(&lease, "sold", (int64_t)next->sold);
	BSON_APPEND_INT64(&lease, "returned", (int64_t)next->returned);
	BSON_APPEND_INT64(&lease, "expires", next->expires_ms);
	BSON_APPEND_BOOL(&lease, "reclaimed", next->reclaimed);
	bson_append_document_end(&child, &lease);
	bson_append_document_end(&update, &child);
	BSON_APPEND_DOCUMENT_BEGIN(&update, "$inc", &child);
	if (d_stock != 0)
		BSON_APPEND_INT64(&child, "stock", d_stock);
	if (d_sold != 0)
		BSON_APPEND_INT64(&child, "sold", d_sold);
	if (d_lost != 0)
		BSON_APPEND_INT64(&child, "lost", d_lost);
	BSON_APPEND_INT64(&child, "version", 1);
	bson_append_document_end(&update, &child);

	rc = STOCK_ECONFLICT;
	for (int attempt = 0; attempt < RECHECK_TRIES; attempt++) {
		const struct store_lease *cur;

		if ((rc = fam_run(s, sku, &query, &update, false, &found, &v)) != 0)
			break; /* STOCK_ESYS: the caller re-reads to learn the outcome */
		if (found) {
			if (after != NULL)
				*after = v;
			break;
		}
		/* Nothing matched, nothing was applied: find out why. */
		if ((rc = read_view(s, sku, &v)) != 0)
			break;
		if (after != NULL)
			*after = v;
		cur = view_lease(&v, host);
		if (expect == NULL ? cur != NULL : cur == NULL || !lease_eq(cur, expect)) {
			rc = STOCK_ECONFLICT;
			break;
		}
		if ((d_stock < 0 && v.doc.stock < (uint64_t)-d_stock) ||
		    (d_lost < 0 && v.lost < (uint64_t)-d_lost)) {
			rc = STOCK_ESOLDOUT;
			break;
		}
		rc = STOCK_ECONFLICT; /* it changed between the two: it would match now */
	}
	bson_destroy(&update);
	bson_destroy(&query);
	return rc;
}
