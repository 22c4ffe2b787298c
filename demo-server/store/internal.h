/*
 * Inside the embedded store (the files in store/ only; callers use store.h).
 *
 * The store is split by concern, all sharing struct store below:
 *   record.c    the on-disk format: record framing, document encode/decode,
 *               checksums, scanning for valid records, file names;
 *   io.c        system calls through the fault-injection hooks, file mapping;
 *   journal.c   the public calls: open/close, append/commit/sync,
 *               get/foreach (SKU documents and keyed records), the queue of
 *               records waiting for the disk;
 *   kv.c        the keyed-record index (key -> version, value);
 *   flusher.c   the group-commit thread;
 *   snapshot.c  snapshot writing, journal rotation, the snapshot thread;
 *   recovery.c  start-up: lock, load the snapshot, replay the journals (torn
 *               tail, corrupt middle, repair).
 * The in-memory index (SKU -> durable document, max version wins) is a
 * struct doc_index (common/doc.h), the keyed records' one a struct
 * kv_index (kv.c), both guarded by mu. Only the flusher changes them once
 * the threads run (besides the snapshot's purge, under mu, which never runs
 * during a journal switch), so the flusher may read them without mu: it
 * copies them for a snapshot's switch unlocked, and frees the entries a
 * batch replaced after dropping mu.
 * Functions shared between files are named store__<file>_<what> (store__rec_,
 * store__io_, store__queue_, store__kv_, store__flusher_, store__snap_,
 * store__recover_).
 *
 * Locking: snap_mu (snapshots, serialized) is taken before mu (everything
 * else that is shared); no I/O is done under mu except by the flusher's
 * cut-back of a failed batch before a rotation.
 */
#ifndef DEMO_STORE_INTERNAL_H
#define DEMO_STORE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <stock.h>

#include "common/util.h"
#include "common/assert.h"
#include "common/doc.h"
#include "store/store.h"

/* ====================================================================== */
/* On-disk format (record.c; docs/store.md "Record format")                */
/* ====================================================================== */

/*
 * Record = 20-byte header + one BSON document. Integers little-endian.
 * The document is a SKU document {_id, stock, sold, version[, held]} or a
 * keyed record {k: <key>, v: <version>, val: <document>} / {k, v, del: true};
 * its first field decides which ("k": keyed).
 *   0  magic  "LSJ1"
 *   4  crc    CRC-32C of the BSON bytes followed by header bytes 8..19
 *   8  len    BSON length (REC_MIN_BSON..REC_MAX_BSON)
 *   12 batch  batch number within the file (1, 2, ...; wraps)
 *   16 flags  bit 0: last record of its batch (END); other bits zero
 */
#define REC_MAGIC "LSJ1"
#define REC_HDR 20
#define REC_MIN_BSON 5
#define REC_MAX_BSON 16384
#define REC_FLAG_END 1u
/* Largest SKU record this store writes: _id of STOCK_SKU_MAX bytes + 4 int64
   (139 BSON bytes). */
#define REC_DOC_ENC_MAX (REC_HDR + 160)
/* Largest keyed record's BSON: length, "k" (type, name, length, key, NUL),
   "v" (type, name, int64), "val" (type, name, the value), terminator:
   12637 bytes, within REC_MAX_BSON. */
#define REC_KV_BSON_MAX \
	(4 + (1 + 2 + 4 + STORE_KEY_MAX + 1) + (1 + 2 + 8) + (1 + 4 + STORE_VALUE_MAX) + 1)
/* Largest record this store writes. */
#define REC_ENC_MAX (REC_HDR + REC_KV_BSON_MAX)
_Static_assert(REC_KV_BSON_MAX <= REC_MAX_BSON, "a keyed record must fit in a record");
_Static_assert(REC_DOC_ENC_MAX <= REC_ENC_MAX, "REC_ENC_MAX covers every record");

#define SNAP_NAME "snapshot.bson"
#define SNAP_TMP_NAME "snapshot.bson.tmp"
#define SNAP_FORMAT "libstock-snapshot"
/* Snapshot header format_version: 1 = SKU documents only (written when there
   is no keyed record, byte for byte as before keyed records existed); 2 = SKU
   documents then keyed records, count covering both. Both are read. */
#define SNAP_FORMAT_VERSION 2
#define SNAP_FORMAT_VERSION_DOCS 1
#define LOCK_NAME "LOCK"
#define JOURNAL_PREFIX "journal-"
#define JOURNAL_SUFFIX ".jnl"
#define JOURNAL_NAME_LEN (sizeof JOURNAL_PREFIX - 1 + 16 + sizeof JOURNAL_SUFFIX - 1)
#define JOURNAL_NAME_MAX 64 /* buffer for store__rec_journal_name */
/* Highest journal generation accepted from disk: every snapshot rotates to
   the next one, so this leaves 2^62 rotations before the INT64_MAX a
   snapshot header can hold (a crafted header of INT64_MAX made the store
   write a snapshot its next open refused: found by tests/fuzz/fuzz_journal). */
#define JOURNAL_GEN_MAX ((uint64_t)INT64_MAX / 2)

/* Tuning defaults and retry pacing. */
#define DEF_MAX_BATCH 1024u
#define DEF_MAX_DELAY_US 100u
#define DEF_QUEUE_LIMIT 4096u
#define BACKOFF_MIN_NS 1000000ULL    /* 1 ms after the first failure ... */
#define BACKOFF_MAX_NS 100000000ULL  /* ... doubling up to 100 ms */
#define SNAP_RETRY_NS 1000000000ULL  /* auto snapshot: pause after a failure */

/* Serial-number order of batch numbers (RFC 1982 style), safe across wrap. */
static inline bool
store__batch_after(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) > 0;
}

enum rec_status { REC_OK, REC_SHORT, REC_BAD };

/* A record whose framing and checksum were checked (store__rec_check). */
struct rec_view {
	const uint8_t *bson;
	uint32_t len;   /* BSON bytes */
	uint32_t batch;
	uint32_t flags;
	size_t total;   /* header + BSON */
};

/** Stamp batch number and flags into an encoded record and seal its CRC. */
void store__rec_seal(uint8_t *rec, uint32_t bson_crc, uint32_t batch, uint32_t flags);

/**
 * Encode @doc (already checked) as a record into @rec (REC_DOC_ENC_MAX bytes),
 * batch and flags left for store__rec_seal; "held" only when non-zero.
 * Returns the record length and the CRC of its BSON part, or STOCK_ENOMEM /
 * STOCK_EINVAL.
 */
int store__rec_encode(const struct sku_doc *doc, uint8_t *rec, uint32_t *bson_crc);

/**
 * Encode keyed record @kv (already checked, store__rec_kv_check) into @rec
 * (REC_ENC_MAX bytes) like store__rec_encode.
 */
int store__rec_encode_kv(const struct store_kv *kv, uint8_t *rec, uint32_t *bson_crc);

/** 0 when @kv is a keyed record store_commit accepts, STOCK_EINVAL otherwise. */
int store__rec_kv_check(const struct store_kv *kv);

/** A decoded record: a SKU document or a keyed record (pointers into the record). */
struct rec_item {
	bool is_kv;
	struct sku_doc doc;      /* !is_kv */
	const char *key;         /* is_kv: not NUL-terminated */
	uint32_t key_len;
	uint64_t version;
	const uint8_t *value;    /* NULL: a delete */
	uint32_t value_len;
};

/**
 * Decode and type-check one record's document, exactly (docs/store.md
 * "Record format"). @why names the first problem.
 */
bool store__rec_decode(const uint8_t *data, uint32_t len, struct rec_item *out, const char **why);

/** Check framing and checksum of the record at @p (@avail bytes to EOF). */
enum rec_status store__rec_check(const uint8_t *p, size_t avail, struct rec_view *v,
    const char **why);

/**
 * The first valid record (framing, checksum and document) at or after @from
 * whose batch is not before @batch (or any batch when @any); returns its
 * offset, or @size when there is none.
 */
size_t store__rec_scan_valid(const uint8_t *p, size_t size, size_t from, bool any,
    uint32_t batch, struct rec_view *v);

/** Encode the snapshot header document (format @version) into @rec; returns the record length. */
int store__rec_snap_meta_encode(uint8_t *rec, int version, uint64_t gen, uint64_t count,
    uint32_t *bson_crc);

/**
 * Decode the snapshot header record: announced @count, first uncovered @gen,
 * format *@version (1 or 2).
 */
bool store__rec_snap_meta_decode(const struct rec_view *v, uint64_t *count, uint64_t *gen,
    int *version, const char **why);

/** journal-<gen as 16 hex digits>.jnl into @buf (JOURNAL_NAME_MAX bytes). */
void store__rec_journal_name(char *buf, size_t len, uint64_t gen);

/** True when @name is a journal file name; its generation in *@gen. */
bool store__rec_journal_parse(const char *name, uint64_t *gen);

/* ====================================================================== */
/* The store object                                                        */
/* ====================================================================== */

/*
 * A durable appender waiting for its batch (lives on the appender's stack),
 * asleep on its own latch. The flusher's stock_latch_set is its last access
 * (set() touches no latch memory after the instant it shows as set), so the
 * appender returns as soon as its wait does: docs/store.md, "Group commit".
 */
/* struct store_ticket (store.h) is the durable appender's waiter: the
   flusher writes result, then sets done. */

/* A keyed record in memory (kv.c): immutable once made; owned by one place. */
struct kv_entry {
	uint64_t version;
	uint64_t purge_gen; /* a tombstone the snapshot of this generation dropped */
	struct kv_entry *next_dead; /* out of the index while a copy was pinned (kv_index.dead) */
	uint32_t key_len;
	uint32_t value_len; /* 0: a tombstone */
	uint8_t data[];     /* key bytes, then value bytes */
};

struct rec_meta {
	struct store_ticket *w; /* NULL: write-behind; set on every record of a
	                            durable unit, woken once, at its last record */
	uint32_t len;            /* record bytes */
	uint32_t bson_crc;       /* CRC-32C of the BSON part */
	uint64_t seq;            /* order of acceptance */
	bool unit_end;           /* last record of its store_commit (batches end at one) */
	struct kv_entry *kv;     /* keyed record (owned; the index takes it once durable),
	                            or NULL: a SKU document */
	struct sku_doc doc;      /* applied to the index once durable (kv == NULL) */
};

/*
 * Key -> struct kv_entry *, open addressing, at most half full, with a
 * per-store hash seed (keys may come from clients). Zeroed is empty;
 * reserve before the first apply. Holds tombstones too (they win over lower
 * versions) until a durable snapshot drops them (store__kv_purge).
 */
struct kv_index {
	struct kv_entry **slots; /* cap slots, a power of two; NULL: empty */
	size_t cap, n;
	size_t live;             /* entries that are not tombstones */
	uint64_t seed;
	unsigned pins;           /* copies in use: entries leaving the index wait in dead */
	struct kv_entry *dead;   /* list (next_dead) freed when the last pin goes */
};

/*
 * Pointers to entries of the index as of one moment (store__kv_copy,
 * store__kv_copy_slots), valid while the copy is pinned: an entry the index
 * drops meanwhile is kept until the last pin goes (store__kv_retire).
 */
struct kv_copy {
	const struct kv_entry **e;
	size_t n, cap;
};

#define KV_ENTRY_SIZE(klen, vlen) \
	((sizeof(struct kv_entry) + (size_t)(klen) + (size_t)(vlen) + 7) & ~(size_t)7)

/* Records back to back plus their metadata, in acceptance (seq) order. */
struct qbuf {
	uint8_t *bytes;
	size_t nbytes, capbytes;
	struct rec_meta *meta;
	size_t n, cap;
};

enum rot_state { ROT_NONE, ROT_REQ, ROT_DONE, ROT_FAIL };

struct store {
	/* Set at open, then read-only. */
	char *dir;
	int dirfd;
	int lockfd;
	struct store_options opt;
	struct store_io io;
	bool have_io;

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* the flusher waits here */
	pthread_cond_t done_cv; /* sync, close and snapshots wait here */

	/* Under mu. */
	struct qbuf pending;
	uint64_t next_seq;   /* last sequence number handed out */
	uint64_t done_seq;   /* every record up to here is durable, failed or requeued */
	uint64_t fail_count; /* failed batches so far */
	uint64_t inflight;   /* accepted, not yet settled (the queue_limit gauge) */
	bool flusher_idle;   /* the flusher sleeps until pending.n >= want */
	size_t want;
	bool batch_busy;     /* the flusher holds a batch */
	bool closing;        /* no new appends; failed write-behind is dropped */
	bool stop;           /* the flusher exits once idle */
	uint64_t backoff_ns, backoff_until;
	size_t last_batch_n;
	struct doc_index idx;
	struct kv_index kvx;
	struct store_stats st;
	uint64_t since_snap;  /* journal records the last snapshot does not cover */
	uint64_t gen;         /* journal generation being appended to */
	bool have_snapshot;
	enum rot_state rot;   /* rotation handshake with a snapshot */
	int rot_fd, rot_old_fd, rot_err;
	uint64_t rot_gen;
	struct sku_doc *rot_docs;
	size_t rot_n;
	struct kv_copy rot_kv; /* the keyed index's slots as of the switch (pinned
	                          until the snapshot is written); kept between
	                          snapshots so a rotation takes no page fault */
	uint64_t snap_live;   /* records the last snapshot wrote: the next one waits
	                          for at least as many journal records */
	bool snap_req, snap_stop;
	pthread_cond_t snap_cv;
	bool repaired;        /* open skipped damage: snapshot at once */

	/* Owned by the flusher thread (by open before it starts). */
	struct qbuf batch;
	int jfd;
	off_t joff;          /* end of the last committed batch */
	uint32_t jbatch;     /* number of the last committed batch in this file */
	bool needs_truncate; /* bytes past joff may exist: cut before writing */

	/* Snapshot side, under snap_mu. */
	pthread_mutex_t snap_mu;
	uint64_t first_gen;  /* oldest journal still on disk */

	struct stock_gauge healthy; /* 1 or 0; set by the flusher, read lock-free */
	pthread_t flusher, snapper;
	bool flusher_started, snapper_started;
};

/* ====================================================================== */
/* Shared internal functions                                               */
/* ====================================================================== */

/* journal.c */


/** Append a record and its metadata to @q. 0 or STOCK_ENOMEM. */
int store__queue_push(struct qbuf *q, const uint8_t *rec, const struct rec_meta *m);

/* kv.c */

/** A new entry holding copies of the key and value (@value NULL: tombstone); NULL: no memory. */
struct kv_entry *store__kv_entry_new(const char *key, size_t key_len, uint64_t version,
    const uint8_t *value, size_t value_len);

/** Key bytes of @e (value bytes follow at + key_len). */
static inline const char *
store__kv_key(const struct kv_entry *e)
{
	return (const char *)e->data;
}

/** The hash seed of a new index (random). */
void store__kv_init(struct kv_index *x);

/** Make room for @extra more keys. 0 or STOCK_ENOMEM. */
int store__kv_reserve(struct kv_index *x, size_t extra);

/**
 * Apply @e (max version wins; on a tie a tombstone, then the longer value,
 * then the bytewise larger one); room must have been reserved. Takes
 * ownership of @e: the loser of the two is freed.
 */
void store__kv_apply(struct kv_index *x, struct kv_entry *e);

/** store__kv_apply, except that the loser is returned (NULL: none) for the caller to free. */
struct kv_entry *store__kv_apply_keep(struct kv_index *x, struct kv_entry *e);

/** store__kv_reserve + store__kv_entry_new + store__kv_apply. 0 or STOCK_ENOMEM. */
int store__kv_apply_copy(struct kv_index *x, const char *key, size_t key_len, uint64_t version,
    const uint8_t *value, size_t value_len);

/** The entry of @key (a tombstone too), or NULL. */
const struct kv_entry *store__kv_find(const struct kv_index *x, const char *key, size_t key_len);

/**
 * Pointers to the live entries whose key starts with @prefix[0..@plen) into
 * *@out (grown as needed; store__kv_copy_free). The caller pins the index
 * (store__kv_pin) before it drops the lock that guards it. 0 or STOCK_ENOMEM.
 */
int store__kv_copy(const struct kv_index *x, const char *prefix, size_t plen, struct kv_copy *out);

/**
 * The index's slots as they are, NULLs and tombstones included, into *@out
 * (grown to x->cap if needed): a memcpy, no entry is read, so a snapshot's
 * rotation stalls the flusher for as little as it can. 0 or STOCK_ENOMEM.
 */
int store__kv_copy_slots(const struct kv_index *x, struct kv_copy *out);

/** Make room for @cap pointers in @c and touch it (so a later copy takes no page fault). */
int store__kv_copy_reserve(struct kv_copy *c, size_t cap);

/** Free @c's array. */
void store__kv_copy_free(struct kv_copy *c);

/** One more copy in use (under the lock that guards @x). */
void store__kv_pin(struct kv_index *x);

/**
 * One copy fewer (under the lock). When it was the last: the entries kept
 * for the copies, as a list for store__kv_free_list (outside the lock);
 * else NULL.
 */
struct kv_entry *store__kv_unpin(struct kv_index *x);

/** Free an entry that left the index now, or when the last pin goes (under the lock). */
void store__kv_retire(struct kv_index *x, struct kv_entry *e);

/** Free a list store__kv_unpin returned. */
void store__kv_free_list(struct kv_entry *e);

/**
 * Drop the tombstones marked with @gen (the snapshot that left them out is
 * durable). Best effort: nothing happens without memory.
 */
void store__kv_purge(struct kv_index *x, uint64_t gen);

/** Free every entry and the table. */
void store__kv_free(struct kv_index *x);

/* io.c */

/** Write all @n bytes at @off; -1 with errno on failure (short writes retried). */
int store__io_write_all(struct store *s, enum store_io_file f, int fd, const uint8_t *buf,
    size_t n, off_t off);

/** fdatasync (files) or fsync (the directory), through the hook. */
int store__io_sync(struct store *s, enum store_io_file f, int fd);

/** ftruncate through the hook. */
int store__io_ftruncate(struct store *s, enum store_io_file f, int fd, off_t len);

/** Map a whole file read-only (NULL for an empty one); -1 with errno. */
int store__io_map(int fd, const uint8_t **p, size_t *size);

/** mkdir -p with mode 0700; -1 with errno. */
int store__io_mkdir_p(const char *path);

/* flusher.c */

/** The group-commit thread (started by store_open). */
void *store__flusher_main(void *arg);

/* snapshot.c */

/**
 * Take a snapshot: start journal gen+1, have the flusher switch to it at a
 * batch boundary and hand over the index, write that, then delete the
 * journals it covers. @force: even when nothing changed since the last one.
 * 0, STOCK_ESYS or STOCK_ENOMEM.
 */
int store__snap_run(struct store *s, bool force);

/** The automatic snapshot thread (opt.snapshot_every > 0). */
void *store__snap_thread_main(void *arg);

/* recovery.c */

/** Create the data directory if needed, open it and take LOCK. */
int store__recover_lock(struct store *s, char *err, size_t errlen);

/**
 * Load the snapshot and replay the journals into the index; leaves the last
 * journal open for appending (or creates the first one).
 */
int store__recover_load(struct store *s, char *err, size_t errlen);

#endif /* DEMO_STORE_INTERNAL_H */
