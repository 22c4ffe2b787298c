/*
 * The demo server's persistence interface.
 *
 * Stock lives in memory (libstock counters); a store keeps the durable copy
 * as documents shaped like the MongoDB collection the multi-instance setup
 * uses: {_id: <sku string>, stock: <int64>, sold: <int64>, version: <int64>}.
 * Every document is a full state of one SKU, and the store keeps, per SKU,
 * the state with the highest version ("max version wins"), so writes may
 * arrive in any order and replaying them twice changes nothing.
 *
 * Two implementations plug into the same vtable (struct store_ops):
 *   - the embedded BSON store (store_bson.c, store_bson_open below): an
 *     append-only journal with group commit plus periodic snapshots;
 *   - the MongoDB store (store_mongo.c, store_mongo_open below), which adds
 *     the conditional updates of the Db buy and of the lease protocol.
 * Callers hold a store_t * and use only the store_* functions; they never
 * look inside. Implementations embed struct store as their first member.
 */
#ifndef DEMO_STORE_H
#define DEMO_STORE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <stock/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest SKU in bytes (UTF-8, no NUL). The MongoDB _id of a document. */
#define STORE_SKU_MAX 64

/*
 * One SKU's full state. @sku is NUL-terminated, 1..STORE_SKU_MAX bytes of
 * valid UTF-8. @stock and @sold are at most STOCK_COUNT_MAX; @version is at
 * most INT64_MAX (BSON int64). A version identifies a state: two documents
 * of one SKU with the same version must carry the same counts (if they do
 * not, the larger sold, then the larger stock, wins, so the outcome still
 * does not depend on order).
 */
struct store_doc {
	char sku[STORE_SKU_MAX + 1];
	uint64_t stock;
	uint64_t sold;
	uint64_t version;
};

/* --- document rules every implementation shares (store.c) -------------- */

/**
 * store_doc_check - 0 when @doc may be stored: a SKU of 1..STORE_SKU_MAX
 * bytes of valid UTF-8, stock and sold at most STOCK_COUNT_MAX, version at
 * most INT64_MAX; STOCK_EINVAL otherwise (also for NULL).
 */
int store_doc_check(const struct store_doc *doc);

/** store_doc_normalize - copy @src into @dst with the bytes after the SKU zeroed. */
void store_doc_normalize(struct store_doc *dst, const struct store_doc *src);

/**
 * store_doc_newer - true when state @a of a SKU wins over @b: the higher
 * version; on a tie the larger sold, then the larger stock.
 */
bool store_doc_newer(const struct store_doc *a, const struct store_doc *b);

/** store_seterr - format an open's error message into @err (NULL: ignored). */
void store_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Buckets of store_stats.batch_hist: records per committed batch. */
#define STORE_BATCH_HIST 8 /* 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64-127, 128+ */

/*
 * Counters of one open store, for /metrics. All are totals since open except
 * the gauges marked so. An implementation leaves at 0 what it does not have.
 */
struct store_stats {
	uint64_t records;        /* documents accepted by store_append */
	uint64_t bytes;          /* journal bytes made durable */
	uint64_t fsyncs;         /* fdatasync calls on the journal (ok or not) */
	uint64_t batches;        /* committed batches (one write + one fdatasync) */
	uint64_t batch_max;      /* largest committed batch, in records */
	uint64_t fsync_failures; /* batches that failed (write, fdatasync, truncate) */
	uint64_t batch_hist[STORE_BATCH_HIST];
	uint64_t queue_rejects;  /* appends refused with STOCK_EBUSY */
	uint64_t queue_depth;    /* gauge: records accepted, not yet durable or failed */
	uint64_t docs;           /* gauge: distinct SKUs in the durable state */
	uint64_t snapshots;      /* snapshots written */
	uint64_t snapshot_failures;
	uint64_t lost_records;   /* non-durable records dropped at close after I/O errors */
	/* What store_bson_open found on disk. */
	uint64_t replayed_records; /* snapshot + journal records read */
	uint64_t torn_bytes_cut;   /* bytes cut from journal tails */
	uint64_t corrupt_skipped;  /* corrupt regions skipped (repair) */
};

typedef struct store store_t;

/* Callback of store_foreach: return 0 to go on, anything else to stop. */
typedef int (*store_foreach_fn)(const struct store_doc *doc, void *arg);

/*
 * The vtable an implementation provides. Every entry is mandatory; the
 * store_* wrappers below have already rejected a NULL store.
 */
struct store_ops {
	const char *name; /* "bson", "mongo" */
	int (*append)(store_t *st, const struct store_doc *doc, bool durable);
	int (*sync)(store_t *st);
	int (*get)(store_t *st, const char *sku, struct store_doc *out);
	int (*foreach)(store_t *st, store_foreach_fn fn, void *arg);
	int (*snapshot)(store_t *st);
	int (*stats)(store_t *st, struct store_stats *out);
	bool (*healthy)(store_t *st);
	void (*close)(store_t *st);
};

/* Implementations embed this as their first member; callers never touch it. */
struct store {
	const struct store_ops *ops; /* private */
};

/* --- the contract (every implementation) ------------------------------- */

/**
 * store_append - record one SKU's new full state.
 * @st:      the store.
 * @doc:     the state; copied before the call returns.
 * @durable: true: return only once the record is durable (group commit: one
 *           fdatasync covers many concurrent appends); false: return as soon
 *           as the record is queued (write-behind, see store_sync).
 *
 * Returns 0; STOCK_EBUSY when the queue of records waiting for the disk is
 * full (nothing was queued: answer 503 and retry later); STOCK_ESYS when the
 * write or fdatasync of the record's batch failed: the record is NOT durable
 * and will not reappear, the caller must roll its in-memory change back;
 * STOCK_ENOMEM; STOCK_EINVAL for a NULL argument, a SKU that is empty, too
 * long or not UTF-8, a count above STOCK_COUNT_MAX, a version above
 * INT64_MAX, or a store that is closing.
 * Thread-safe; blocks (durable) for about one fdatasync.
 */
static inline int
store_append(store_t *st, const struct store_doc *doc, bool durable)
{
	return st == NULL ? STOCK_EINVAL : st->ops->append(st, doc, durable);
}

/**
 * store_sync - wait until every record appended before the call has reached
 * the disk (or failed).
 *
 * Returns 0 when all of them are durable, STOCK_ESYS when a write failed
 * meanwhile (non-durable records of a failed batch are retried; call again),
 * STOCK_EINVAL for a NULL store. Thread-safe.
 */
static inline int
store_sync(store_t *st)
{
	return st == NULL ? STOCK_EINVAL : st->ops->sync(st);
}

/**
 * store_get - the durable state of one SKU.
 * @out: receives the document with the highest version.
 *
 * Returns 0, STOCK_ENOENT when the SKU has no durable document, STOCK_EINVAL
 * for NULL arguments, STOCK_ESYS when the read failed (MongoDB store: server
 * unreachable or the document corrupt). Sees a non-durable append only once
 * it is written (store_sync). Thread-safe.
 */
static inline int
store_get(store_t *st, const char *sku, struct store_doc *out)
{
	return st == NULL ? STOCK_EINVAL : st->ops->get(st, sku, out);
}

/**
 * store_foreach - call @fn on the durable state of every SKU (the highest
 * version of each), e.g. to build the in-memory counters at start-up.
 *
 * @fn runs on the caller's thread on a copy taken at the start, with no
 * store lock held: it may call store_append. Order is unspecified.
 * Returns 0 after the last document, the first non-zero value @fn returned
 * (the walk stops there), STOCK_ENOMEM, STOCK_ESYS (MongoDB store: the read
 * failed; corrupt documents are logged and skipped), or STOCK_EINVAL for
 * NULL arguments. Thread-safe.
 */
static inline int
store_foreach(store_t *st, store_foreach_fn fn, void *arg)
{
	return st == NULL ? STOCK_EINVAL : st->ops->foreach(st, fn, arg);
}

/**
 * store_snapshot - compact: persist the current durable state as a snapshot
 * and drop the journal records it covers. Appenders are held up only for the
 * copy of the in-memory index, not for the snapshot's I/O.
 *
 * Returns 0, STOCK_ESYS (the previous snapshot and the journal stay valid),
 * STOCK_ENOMEM, STOCK_EINVAL for a NULL store. Thread-safe; concurrent calls
 * are serialized. The MongoDB store has nothing to compact and returns 0.
 */
static inline int
store_snapshot(store_t *st)
{
	return st == NULL ? STOCK_EINVAL : st->ops->snapshot(st);
}

/**
 * store_stats - copy the counters into @out. Returns 0 or STOCK_EINVAL.
 * Thread-safe.
 */
static inline int
store_stats(store_t *st, struct store_stats *out)
{
	return st == NULL || out == NULL ? STOCK_EINVAL : st->ops->stats(st, out);
}

/**
 * store_healthy - false after a write or fdatasync failed, until a later
 * one succeeds (readiness probe, breaker input). Thread-safe, lock-free.
 */
static inline bool
store_healthy(store_t *st)
{
	return st != NULL && st->ops->healthy(st);
}

/**
 * store_close - flush everything queued, write a final snapshot (unless the
 * implementation was told not to), stop the background threads, release the
 * data directory and free @st. NULL is a no-op. No other call on @st may run
 * concurrently or follow.
 */
static inline void
store_close(store_t *st)
{
	if (st != NULL)
		st->ops->close(st);
}

/* --- the embedded BSON store ------------------------------------------- */

/* Which file an I/O hook call is about. */
enum store_io_file {
	STORE_IO_JOURNAL,  /* the journal being appended to */
	STORE_IO_SNAPSHOT, /* snapshot.bson.tmp */
	STORE_IO_DIR       /* the data directory (fsync after create/rename) */
};

/*
 * I/O hooks, for fault injection in tests. Each hook has the system call's
 * contract (return -1 and set errno on failure; pwrite may write short). A
 * NULL member, or a NULL struct store_io *, means the real system call.
 * sync is fdatasync for files and fsync for the directory.
 */
struct store_io {
	ssize_t (*pwrite)(void *ctx, enum store_io_file f, int fd, const void *buf, size_t n,
	    off_t off);
	int (*sync)(void *ctx, enum store_io_file f, int fd);
	int (*ftruncate)(void *ctx, enum store_io_file f, int fd, off_t len);
	void *ctx;
};

/* store_bson_options.max_delay_us: write each batch as soon as possible. */
#define STORE_BSON_NO_DELAY UINT_MAX

/* Options of store_bson_open. Zero means the default for every member. */
struct store_bson_options {
	const char *data_dir;   /* required; created (0700) when missing */
	bool repair;            /* skip corrupt middle records instead of refusing */
	bool no_close_snapshot; /* store_close does not write a final snapshot */
	unsigned max_batch;     /* records per write + fdatasync (default 1024) */
	unsigned max_delay_us;  /* how long the flusher may wait for a batch to grow
	                           when the previous batch was larger (default 100;
	                           never waits when appends come one at a time;
	                           STORE_BSON_NO_DELAY: never waits) */
	unsigned queue_limit;   /* records accepted but not yet durable (durable
	                           waiters plus write-behind); more: STOCK_EBUSY
	                           (default 4096) */
	uint64_t snapshot_every; /* journal records between automatic snapshots
	                           (0: only store_snapshot and store_close) */
	const struct store_io *io; /* NULL: real system calls */
	/* Start-up findings (torn tail cut, records skipped) and I/O errors are
	   reported here, one line each without newline; NULL: stderr. Called
	   from store_bson_open and from the store's threads. */
	void (*log)(void *log_arg, const char *msg);
	void *log_arg;
};

/**
 * store_bson_open - open (or create) the embedded store in a data directory.
 * @out:    receives the store; NULL on failure.
 * @opt:    options; opt->data_dir is required.
 * @err:    receives a one-line message naming the file and byte offset when
 *          the open is refused; may be NULL.
 * @errlen: size of @err.
 *
 * Takes data_dir/LOCK (flock), loads snapshot.bson (must be whole: every
 * record checksummed, count as announced), replays the journal files it does
 * not cover, cuts a torn tail (an unfinished last batch) and reports it,
 * refuses a corrupt record followed by later valid batches ("corrupt middle")
 * unless opt->repair, then starts the flusher thread (and the snapshot
 * thread when opt->snapshot_every > 0). After a repair it writes a snapshot
 * at once so the next open is clean.
 *
 * Returns 0; STOCK_EBUSY when another store holds the directory; STOCK_EINVAL
 * for bad options or corrupt data (message in @err); STOCK_ESYS for an I/O
 * error; STOCK_ENOMEM. Thread-safe (distinct directories).
 */
int store_bson_open(store_t **out, const struct store_bson_options *opt, char *err,
    size_t errlen);


/* --- the MongoDB store (store_mongo.c) --------------------------------- */

/*
 * The same contract on MongoDB (libmongoc, one client pool). Documents live
 * in database opt->database; SKUs that start with "OneStock:" in collection
 * opt->one_collection, every other SKU in opt->many_collection. A document
 * is {_id: sku, stock, sold, version} plus, in multi-instance use,
 * {lost: <int64>, leases: {<host>: {granted, sold, returned, expires,
 * reclaimed}}} (all int64 but reclaimed, a bool). store_get/store_foreach
 * report _id, stock, sold, version and ignore the rest.
 *
 * store_append(doc) writes the state guarded by version: stock, sold and
 * version are set ($set: lost and leases stay) only when the stored state is
 * older (same tie-break as the embedded store), so it never overwrites a
 * newer state. durable=true
 * returns after MongoDB acknowledged the write (write concern "majority"
 * with journal when the server is a replica set, otherwise {w:1, j:true});
 * durable=false queues it for a background writer (STOCK_EBUSY when the
 * queue is full). store_sync waits for that queue. store_snapshot is a
 * no-op. store_healthy is false after a failed round trip until one
 * succeeds. Every round trip is bounded by opt->timeout_ms.
 *
 * Claims mode (atomic_mode below; automatic on FerretDB, whose filtered
 * updates are not atomic): the conditional calls below check their
 * conditions in C on the latest state and commit by inserting a unique
 * claim document into <database>.StockClaims; the SKU document is brought
 * up to date after each write and by every read (store_get, foreach and the
 * views return the latest committed state even when the document lags).
 * Their contracts stay as described; the differences are noted per call.
 * store_append's equal-version tie-break does not apply there (the stored
 * state stays). Correct across processes.
 */

/* Longest host id (STOCK_HOST_ID): [A-Za-z0-9_-], used as a field name. */
#define STORE_HOST_MAX 64
/* Leases kept per document (one per instance). */
#define STORE_LEASES_MAX 16

struct store_mongo_options {
	const char *uri;             /* required: mongodb://host:port/... */
	const char *database;        /* default "SuperStockStore" */
	const char *one_collection;  /* default "OneStock" */
	const char *many_collection; /* default "ManyStock" */
	unsigned timeout_ms;         /* per round trip (default 2000) */
	unsigned queue_limit;        /* write-behind queue (default 4096) */
	void (*log)(void *log_arg, const char *msg); /* NULL: stderr */
	void *log_arg;
	/*
	 * How conditional writes are made atomic:
	 *   0 auto: successor claims on FerretDB (detected by buildInfo's
	 *     ferretdbVersion: its filtered updates are not atomic, FerretDB#3040),
	 *     native findAndModify/update otherwise;
	 *   1 native findAndModify/update with a filter (needs a server that
	 *     applies them atomically: MongoDB);
	 *   2 claims: every write of a SKU document is committed by inserting a
	 *     unique "successor claim" into <database>.StockClaims (only the
	 *     unique _id index has to be atomic), see store_mongo.c.
	 * Every process sharing a database must use the same mode. In claims
	 * mode a SKU document must not be deleted (its claims would outlive it).
	 */
	int atomic_mode;
};

/**
 * store_mongo_open - connect (one ping must succeed within opt->timeout_ms)
 * and start the write-behind thread. Creates nothing: the server seeds the
 * catalog with store_mongo_seed.
 * Returns 0, STOCK_EINVAL (bad URI or options; message in @err), STOCK_ESYS
 * (server unreachable; message in @err), STOCK_ENOMEM.
 */
int store_mongo_open(store_t **out, const struct store_mongo_options *opt, char *err,
    size_t errlen);

/** store_is_mongo - true when @st was opened by store_mongo_open. */
bool store_is_mongo(const store_t *st);

/**
 * store_mongo_seed - insert {_id: sku, stock: n, sold: 0, version: 1} unless
 * a document with that _id exists (upsert with $setOnInsert), like the seed
 * does on first start. Returns 0 (inserted or already there), STOCK_ESYS,
 * STOCK_EINVAL.
 */
int store_mongo_seed(store_t *st, const char *sku, uint64_t n);

/**
 * store_mongo_take - the durable Db buy: one findAndModify with filter
 * {_id: sku, stock: {$gte: n}, sold: {$lte: STOCK_COUNT_MAX - n}} and update
 * {$inc: {stock: -n, sold: n, version: 1}}, returning the new document.
 * Returns 0 (@after = the document after the buy); STOCK_ESOLDOUT (the
 * document exists with stock < n; @after = its current state, re-read);
 * STOCK_ENOENT (no such document); STOCK_ESYS (MongoDB failed or timed out:
 * the outcome is unknown, the buy may or may not have been applied; it is
 * never retried, so it is never applied twice); STOCK_ERANGE (sold would
 * exceed STOCK_COUNT_MAX); STOCK_ECONFLICT (the document kept changing
 * between the findAndModify and the re-read that explains a miss; nothing
 * was applied); STOCK_EINVAL (also n == 0).
 * Claims mode: STOCK_ESYS only when a read failed (nothing applied) or the
 * claim insert's outcome could not be learned by looking it up;
 * STOCK_ECONFLICT when the claim kept losing to other writers for
 * timeout_ms (nothing applied).
 */
int store_mongo_take(store_t *st, const char *sku, uint64_t n, struct store_doc *after);

/**
 * store_mongo_adjust - operator change of a SKU's pool: @absolute sets
 * stock to @n, otherwise adds @n (restock); version + 1. Creates the
 * document when missing. Returns 0 (@after may be NULL), STOCK_ERANGE,
 * STOCK_ESYS, STOCK_ECONFLICT (kept racing with concurrent creations; nothing
 * applied), STOCK_EINVAL.
 */
int store_mongo_adjust(store_t *st, const char *sku, bool absolute, uint64_t n,
    struct store_doc *after);

/* One instance's lease inside a SKU document (all counts cumulative). */
struct store_lease {
	uint64_t granted;   /* units ever moved from stock into the lease */
	uint64_t sold;      /* units recorded as sold through it */
	uint64_t returned;  /* units moved back (to stock, or to lost when reclaimed) */
	int64_t expires_ms; /* CLOCK_REALTIME ms after which others may reclaim it */
	bool reclaimed;     /* another instance moved granted-sold-returned to lost */
};

/* A whole SKU document as the lease protocol sees it. */
struct store_mongo_view {
	struct store_doc doc; /* _id, stock (the unleased pool), sold, version */
	uint64_t lost;        /* units quarantined by reclaims */
	size_t nleases;
	struct {
		char host[STORE_HOST_MAX + 1];
		struct store_lease lease;
	} leases[STORE_LEASES_MAX];
};

/**
 * store_mongo_view - read one SKU's whole document.
 * Returns 0, STOCK_ENOENT, STOCK_ESYS, STOCK_EINVAL.
 */
int store_mongo_view(store_t *st, const char *sku, struct store_mongo_view *out);

/* Callback of store_mongo_view_all: 0 goes on, anything else stops. */
typedef int (*store_mongo_view_fn)(const struct store_mongo_view *v, void *arg);

/**
 * store_mongo_view_all - read every document of both collections (one find
 * each) and call @fn on each. Returns 0, @fn's non-zero value, STOCK_ESYS.
 */
int store_mongo_view_all(store_t *st, store_mongo_view_fn fn, void *arg);

/**
 * store_mongo_lease_cas - the one conditional update of the lease protocol:
 * compare leases.<host> with @expect and replace it with @next, adding
 * @d_stock to stock, @d_sold to sold and @d_lost to lost, version + 1, in
 * one findAndModify on the SKU's document (single-document atomicity: no
 * transaction needed).
 * @expect: NULL means leases.<host> must not exist (opening a lease);
 *          otherwise every member must equal the stored one.
 * @d_stock < 0 adds the filter stock >= -d_stock (a grant never oversells);
 *          likewise @d_lost < 0 adds lost >= -d_lost. @d_sold must be >= 0.
 * @after:  receives the document after the update (may be NULL); on
 *          STOCK_ECONFLICT / STOCK_ESOLDOUT the current document, re-read.
 * Returns 0 (applied); STOCK_ECONFLICT (the lease is not as expected);
 * STOCK_ESOLDOUT (the lease matched but stock < -d_stock, or lost <
 * -d_lost); STOCK_ENOENT (no
 * document); STOCK_ESYS (failed or timed out: outcome unknown; callers
 * re-read with store_mongo_view to learn whether it applied — @next is
 * distinct from @expect, so the stored lease tells); STOCK_EINVAL (bad
 * host id, NULL sku/next, a result that would go negative or above
 * STOCK_COUNT_MAX as far as the caller's arguments show: a lease counter
 * of @next below @expect's, next->sold + next->returned > next->granted,
 * |delta| > STOCK_COUNT_MAX, or @next equal to @expect in every member).
 * Claims mode: also STOCK_ERANGE when the stored counts would leave
 * 0..STOCK_COUNT_MAX or a new lease would exceed STORE_LEASES_MAX (nothing
 * applied), and STOCK_ESYS for a document with more than STORE_LEASES_MAX
 * leases (it cannot be rewritten whole); STOCK_ECONFLICT also as for take.
 */
int store_mongo_lease_cas(store_t *st, const char *sku, const char *host,
    const struct store_lease *expect, const struct store_lease *next, int64_t d_stock,
    int64_t d_sold, int64_t d_lost, struct store_mongo_view *after);

#ifdef __cplusplus
}
#endif

#endif /* DEMO_STORE_H */
