/*
 * The embedded store: the demo server's durable copy of the stock when it
 * runs on its own (no --mongo), kept in one data directory.
 *
 * Stock lives in memory (libstock counters); the store keeps the durable copy
 * as SKU documents (common/doc.h, shaped like the MongoDB collection:
 * {_id: <sku string>, stock: <int64>, sold: <int64>, version: <int64>}, plus
 * held: <int64> when non-zero). Every document is a full state of one SKU,
 * and the store keeps, per SKU, the state with the highest version ("max
 * version wins", sku_doc_newer), so writes may arrive in any order and
 * replaying them twice changes nothing.
 *
 * Next to them it keeps keyed records (struct store_kv: holds, orders,
 * idempotency answers, one BSON document per key, max version wins too),
 * and store_commit writes SKU states and keyed records as one atomic unit.
 *
 * On disk it is an append-only journal with group commit plus periodic
 * snapshots (store/journal.c and its neighbours; the format is in
 * docs/store.md). Callers hold a store_t * and use only the store_*
 * functions below; they never look inside.
 */
#ifndef DEMO_STORE_H
#define DEMO_STORE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <stock/common.h>

#include "common/doc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Buckets of store_stats.batch_hist: records per committed batch. */
#define STORE_BATCH_HIST 8 /* 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64-127, 128+ */

/*
 * Counters of one open store, for /metrics. All are totals since open except
 * the gauges marked so.
 */
struct store_stats {
	uint64_t records;        /* records (SKU documents and keyed records) accepted */
	uint64_t bytes;          /* journal bytes made durable */
	uint64_t fsyncs;         /* fdatasync calls on the journal (ok or not) */
	uint64_t batches;        /* committed batches (one write + one fdatasync) */
	uint64_t batch_max;      /* largest committed batch, in records */
	uint64_t fsync_failures; /* batches that failed (write, fdatasync, truncate) */
	uint64_t batch_hist[STORE_BATCH_HIST];
	uint64_t queue_rejects;  /* appends refused with STOCK_EBUSY */
	uint64_t queue_depth;    /* gauge: records accepted, not yet durable or failed */
	uint64_t docs;           /* gauge: distinct SKUs in the durable state */
	uint64_t kv;             /* gauge: live (not deleted) durable keyed records */
	uint64_t snapshots;      /* snapshots written */
	uint64_t snapshot_failures;
	uint64_t lost_records;   /* non-durable records dropped at close after I/O errors */
	/* What store_open found on disk. */
	uint64_t replayed_records; /* snapshot + journal records read */
	uint64_t torn_bytes_cut;   /* bytes cut from journal tails */
	uint64_t corrupt_skipped;  /* corrupt regions skipped (repair) */
};

typedef struct store store_t;

#define STORE_KEY_MAX 320     /* bytes of a key */
#define STORE_VALUE_MAX 12288 /* bytes of a value (one BSON document) */
#define STORE_COMMIT_MAX 64   /* records in one store_commit */

/*
 * A keyed record: one BSON document stored under a key (valid UTF-8, no NUL,
 * 1..STORE_KEY_MAX bytes), e.g. "hold/h_1f3a...", "idem/<key>". Like SKU
 * documents, the highest version per key wins, so replay order and replays
 * twice do not matter (on a version tie a delete wins, then the longer
 * value, then the bytewise larger one). A record with value == NULL
 * (value_len 0) deletes the key (a tombstone; it wins over lower versions;
 * snapshots drop tombstones, and so does the in-memory index once a
 * snapshot is durable: a lower version written after that is accepted).
 * Keys live in their own namespace (a key equal to a SKU is a different record).
 */
struct store_kv {
	const char *key;
	size_t key_len;
	uint64_t version;       /* 1..INT64_MAX */
	const uint8_t *value;   /* a valid BSON document (bson_validate), or NULL: delete */
	size_t value_len;       /* 5..STORE_VALUE_MAX, or 0 with value == NULL */
};

/* Callback of store_foreach: return 0 to go on, anything else to stop. */
typedef int (*store_foreach_fn)(const struct sku_doc *doc, void *arg);

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

/* store_options.max_delay_us: write each batch as soon as possible. */
#define STORE_NO_DELAY UINT_MAX

/*
 * Options of store_open. Zero means the default for every member.
 * Start-up findings (torn tail cut, records skipped) and I/O errors go to
 * the server's log (log.h, part "store"), one line each.
 */
struct store_options {
	const char *data_dir;   /* required; created (0700) when missing */
	bool repair;            /* skip corrupt middle records instead of refusing */
	bool no_close_snapshot; /* store_close does not write a final snapshot */
	unsigned max_batch;     /* records per write + fdatasync (default 1024) */
	unsigned max_delay_us;  /* how long the flusher may wait for a batch to grow
	                           when the previous batch was larger (default 100;
	                           never waits when appends come one at a time;
	                           STORE_NO_DELAY: never waits) */
	unsigned queue_limit;   /* records accepted but not yet durable (durable
	                           waiters plus write-behind); more: STOCK_EBUSY
	                           (default 4096) */
	uint64_t snapshot_every; /* journal records between automatic snapshots
	                           (0: only store_snapshot and store_close) */
	const struct store_io *io; /* NULL: real system calls */
};

/**
 * store_open - open (or create) the store in a data directory.
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
int store_open(store_t **out, const struct store_options *opt, char *err, size_t errlen);

/**
 * store_append - record one SKU's new full state.
 * @st:      the store.
 * @doc:     the state; copied before the call returns.
 * @durable: true: return only once the record is durable (group commit: one
 *           fdatasync covers many concurrent appends); false: return as soon
 *           as the record is queued (write-behind, see store_sync).
 *
 * store_commit(st, doc, 1, NULL, 0, durable).
 *
 * Returns 0; STOCK_EBUSY when the queue of records waiting for the disk is
 * full (nothing was queued: answer 503 and retry later); STOCK_ESYS when the
 * write or fdatasync of the record's batch failed: the record is NOT durable
 * and will not reappear, the caller must roll its in-memory change back;
 * STOCK_ENOMEM; STOCK_EINVAL for a NULL argument, a SKU that is empty, too
 * long or not UTF-8, a count above STOCK_COUNT_MAX, a version above
 * INT64_MAX (sku_doc_check), or a store that is closing.
 * Thread-safe; blocks (durable) for about one fdatasync.
 */
int store_append(store_t *st, const struct sku_doc *doc, bool durable);

/**
 * store_commit - append @ndocs SKU states and @nkv keyed records as ONE atomic
 * unit: they are written in one batch, so after a crash (kill -9, torn tail)
 * recovery sees all of them or none. 1 <= ndocs + nkv <= STORE_COMMIT_MAX.
 * @durable as store_append (true: returns once durable; false: write-behind).
 * Every record is checked (sku_doc_check; struct store_kv's rules) and
 * copied before anything is queued.
 *
 * Returns as store_append: 0; STOCK_EBUSY when the queue has no room for all
 * of them (queue_limit counts records; a unit larger than the limit is
 * accepted only into an empty queue): nothing queued; STOCK_ESYS: none
 * durable; STOCK_EINVAL for a bad record or count (nothing queued) or a
 * closing store; STOCK_ENOMEM. Records appended by one thread keep their
 * order relative to that thread's earlier appends/commits. Thread-safe.
 */
int store_commit(store_t *st, const struct sku_doc *docs, size_t ndocs,
    const struct store_kv *kv, size_t nkv, bool durable);

/*
 * A queued durable commit (store_commit_queued), waited for once with
 * store_ticket_wait. Lives in the caller's memory until then.
 */
struct store_ticket {
	int result;              /* private: the flusher's verdict */
	struct stock_latch done; /* private: set once result is written */
};

/**
 * store_commit_queued - store_commit(..., durable = true) split in two: queue
 * the unit and return at once; store_ticket_wait(@t) then waits for its
 * batch. So a caller may queue under its own lock (the journal then holds
 * its units in its order) and wait for the disk after dropping it, sharing
 * one fdatasync with everyone queued meanwhile. Returns 0 (queued: call
 * store_ticket_wait exactly once) or store_commit's refusals (nothing
 * queued; do not wait). Thread-safe.
 */
int store_commit_queued(store_t *st, const struct sku_doc *docs, size_t ndocs,
    const struct store_kv *kv, size_t nkv, struct store_ticket *t);

/**
 * store_ticket_wait - wait until the unit of @t is settled: 0 (durable) or
 * STOCK_ESYS (its batch failed: not durable, never reappears), as
 * store_commit(durable) returns.
 */
int store_ticket_wait(struct store_ticket *t);

/* Callback of store_kv_foreach: 0 goes on, anything else stops the walk. */
typedef int (*store_kv_fn)(const char *key, size_t key_len, uint64_t version,
    const uint8_t *value, size_t value_len, void *arg);

/**
 * store_kv_foreach - call @fn on every live (not deleted) durable keyed record
 * whose key starts with @prefix[0..@plen) (plen 0: all; @prefix may then be
 * NULL), on a copy taken at the start with no lock held (fn may call
 * store_commit). @key is not NUL-terminated; the pointers are valid during
 * the call only. Order unspecified.
 * Returns 0, fn's first non-zero value, STOCK_ENOMEM, STOCK_EINVAL.
 */
int store_kv_foreach(store_t *st, const char *prefix, size_t plen, store_kv_fn fn, void *arg);

/**
 * store_kv_get - the live durable value of @key copied into @buf (@cap bytes;
 * @buf may be NULL when @cap is 0): 0 (*@len, *@version set), STOCK_ENOENT
 * (absent or deleted), STOCK_ERANGE (cap too small; *@len = needed,
 * *@version set), STOCK_EINVAL (NULL arguments, a key that is not 1..
 * STORE_KEY_MAX bytes). Sees a non-durable commit only once it is written.
 * Thread-safe.
 */
int store_kv_get(store_t *st, const char *key, size_t key_len, uint8_t *buf, size_t cap,
    size_t *len, uint64_t *version);

/**
 * store_sync - wait until every record appended before the call has reached
 * the disk (or failed).
 *
 * Returns 0 when all of them are durable, STOCK_ESYS when a write failed
 * meanwhile (non-durable records of a failed batch are retried; call again),
 * STOCK_EINVAL for a NULL store. Thread-safe.
 */
int store_sync(store_t *st);

/**
 * store_get - the durable state of one SKU.
 * @out: receives the document with the highest version.
 *
 * Returns 0, STOCK_ENOENT when the SKU has no durable document, STOCK_EINVAL
 * for NULL arguments or a SKU that is empty or longer than STOCK_SKU_MAX.
 * Sees a non-durable append only once it is written (store_sync).
 * Thread-safe.
 */
int store_get(store_t *st, const char *sku, struct sku_doc *out);

/**
 * store_foreach - call @fn on the durable state of every SKU (the highest
 * version of each), e.g. to build the in-memory counters at start-up.
 *
 * @fn runs on the caller's thread on a copy taken at the start, with no
 * store lock held: it may call store_append. Order is unspecified.
 * Returns 0 after the last document, the first non-zero value @fn returned
 * (the walk stops there), STOCK_ENOMEM, or STOCK_EINVAL for NULL arguments.
 * Thread-safe.
 */
int store_foreach(store_t *st, store_foreach_fn fn, void *arg);

/**
 * store_snapshot - compact: persist the current durable state as a snapshot
 * and drop the journal records it covers. Appenders are held up only for the
 * copy of the in-memory index, not for the snapshot's I/O. A no-op (0) when
 * nothing changed since the last snapshot.
 *
 * Returns 0, STOCK_ESYS (the previous snapshot and the journal stay valid),
 * STOCK_ENOMEM, STOCK_EINVAL for a NULL store. Thread-safe; concurrent calls
 * are serialized.
 */
int store_snapshot(store_t *st);

/**
 * store_stats - copy the counters into @out. Returns 0 or STOCK_EINVAL.
 * Thread-safe.
 */
int store_stats(store_t *st, struct store_stats *out);

/**
 * store_healthy - false after a write or fdatasync failed, until a later
 * one succeeds (readiness probe, breaker input); false for NULL.
 * Thread-safe, lock-free.
 */
bool store_healthy(store_t *st);

/**
 * store_close - flush everything queued, write a final snapshot (unless
 * opt->no_close_snapshot), stop the background threads, release the data
 * directory and free @st. NULL is a no-op. No other call on @st may run
 * concurrently or follow.
 */
void store_close(store_t *st);

#ifdef __cplusplus
}
#endif

#endif /* DEMO_STORE_H */
