/*
 * The embedded BSON store: an append-only journal with group commit plus
 * periodic snapshots, in one data directory.
 *
 * Appenders encode a document ({_id, stock, sold, version}, libbson) into a
 * framed record and queue it under the store mutex. One flusher thread takes
 * everything queued (up to max_batch records) as a batch, numbers it, writes
 * it with one pwrite() and one fdatasync(), then applies it to the in-memory
 * index (SKU -> highest version) and wakes the durable appenders whose
 * records were in it. While it is in fdatasync, new records pile up for the
 * next batch: that is the group commit. When a write or fdatasync fails,
 * every durable appender of the batch gets STOCK_ESYS, the file is cut back
 * to the end of the last good batch (and that cut is synced) before anything
 * else is written, write-behind records are queued again, and the store
 * reports unhealthy until a batch commits.
 *
 * A snapshot rotates the journal at a batch boundary (the flusher swaps in a
 * new file and hands over a copy of the index, which at that instant is
 * exactly what the old journals hold), writes the copy to snapshot.bson.tmp,
 * syncs it, renames it over snapshot.bson, syncs the directory and only then
 * deletes the journals it covers. Appenders only wait for the index copy.
 *
 * Start-up loads the snapshot (every record must check out), replays the
 * journals it does not cover batch by batch (a batch counts only when its
 * last record, flagged END, is valid), cuts an unfinished last batch (torn
 * tail), and refuses a bad record that a later valid batch follows (corrupt
 * middle: a later batch is only written after the earlier one was synced, so
 * this is damage, not a crash) unless asked to repair. The file format is
 * described in docs/store.md.
 */
#include <bson/bson.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <linux/futex.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "store.h"

/* ====================================================================== */
/* On-disk format                                                          */
/* ====================================================================== */

/*
 * Record = 20-byte header + one BSON document. Integers little-endian.
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
/* Largest record this store writes: _id of STORE_SKU_MAX bytes + 3 int64. */
#define REC_ENC_MAX (REC_HDR + 160)

#define SNAP_NAME "snapshot.bson"
#define SNAP_TMP_NAME "snapshot.bson.tmp"
#define SNAP_FORMAT "libstock-snapshot"
#define SNAP_FORMAT_VERSION 1
#define LOCK_NAME "LOCK"
#define JOURNAL_PREFIX "journal-"
#define JOURNAL_SUFFIX ".jnl"
#define JOURNAL_NAME_LEN (sizeof JOURNAL_PREFIX - 1 + 16 + sizeof JOURNAL_SUFFIX - 1)

#define DEF_MAX_BATCH 1024u
#define DEF_MAX_DELAY_US 100u
#define DEF_QUEUE_LIMIT 4096u
#define BACKOFF_MIN_NS 1000000ULL    /* 1 ms after the first failure ... */
#define BACKOFF_MAX_NS 100000000ULL  /* ... doubling up to 100 ms */
#define SNAP_RETRY_NS 1000000000ULL  /* auto snapshot: pause after a failure */

static void
put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

/* Serial-number order of batch numbers (RFC 1982 style), safe across wrap. */
static bool
batch_after(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) > 0;
}

/* Stamp batch number and flags into an encoded record and seal its CRC. */
static void
rec_seal(uint8_t *rec, uint32_t bson_crc, uint32_t batch, uint32_t flags)
{
	put32(rec + 12, batch);
	put32(rec + 16, flags);
	put32(rec + 4, crc32c(bson_crc, rec + 8, 12));
}

/* ====================================================================== */
/* Documents                                                               */
/* ====================================================================== */

/*
 * Frames the built document @b as a record in @rec (magic, length, BSON;
 * batch and flags are left for rec_seal) and destroys @b. @ok is false when
 * building @b failed. Returns the record length and the CRC of its BSON
 * part, STOCK_ENOMEM, or @too_big when @b does not fit in REC_ENC_MAX.
 */
static int
rec_frame(uint8_t *rec, bson_t *b, bool ok, int too_big, uint32_t *bson_crc)
{
	uint32_t len;

	if (!ok || b->len > REC_ENC_MAX - REC_HDR) {
		bson_destroy(b);
		return ok ? too_big : STOCK_ENOMEM;
	}
	len = b->len;
	memcpy(rec, REC_MAGIC, 4);
	put32(rec + 8, len);
	memcpy(rec + REC_HDR, bson_get_data(b), len);
	bson_destroy(b);
	*bson_crc = crc32c(0, rec + REC_HDR, len);
	return (int)(REC_HDR + len);
}

/*
 * Encode @doc (already checked) as a record into @rec (REC_ENC_MAX bytes),
 * batch and flags left for rec_seal. Returns the record length and the CRC
 * of its BSON part, or STOCK_ENOMEM / STOCK_EINVAL.
 */
static int
rec_encode(const struct store_doc *doc, uint8_t *rec, uint32_t *bson_crc)
{
	bson_t b;
	bool ok;

	bson_init(&b);
	ok = bson_append_utf8(&b, "_id", 3, doc->sku, (int)strlen(doc->sku)) &&
	    bson_append_int64(&b, "stock", 5, (int64_t)doc->stock) &&
	    bson_append_int64(&b, "sold", 4, (int64_t)doc->sold) &&
	    bson_append_int64(&b, "version", 7, (int64_t)doc->version);
	return rec_frame(rec, &b, ok, STOCK_EINVAL, bson_crc);
}

/* A non-negative int32/int64 field no larger than @max; false otherwise. */
static bool
iter_count(const bson_iter_t *it, uint64_t max, uint64_t *out)
{
	int64_t v;

	if (BSON_ITER_HOLDS_INT64(it))
		v = bson_iter_int64(it);
	else if (BSON_ITER_HOLDS_INT32(it))
		v = bson_iter_int32(it);
	else
		return false;
	if (v < 0 || (uint64_t)v > max)
		return false;
	*out = (uint64_t)v;
	return true;
}

/* Decode and type-check one stock document. @why names the first problem. */
static bool
doc_decode(const uint8_t *data, uint32_t len, struct store_doc *out, const char **why)
{
	bson_t b;
	bson_iter_t it;
	size_t eoff;
	unsigned seen = 0;

	memset(out, 0, sizeof *out);
	if (!bson_init_static(&b, data, len) ||
	    !bson_validate(&b, BSON_VALIDATE_UTF8, &eoff) || !bson_iter_init(&it, &b)) {
		*why = "malformed BSON document";
		return false;
	}
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (strcmp(key, "_id") == 0) {
			uint32_t n;
			const char *s;

			if (!BSON_ITER_HOLDS_UTF8(&it)) {
				*why = "_id is not a string";
				return false;
			}
			s = bson_iter_utf8(&it, &n);
			if (n == 0 || n > STORE_SKU_MAX || memchr(s, 0, n) != NULL) {
				*why = "_id is empty, too long or contains NUL";
				return false;
			}
			memcpy(out->sku, s, n);
			seen |= 1;
		} else if (strcmp(key, "stock") == 0) {
			if (!iter_count(&it, STOCK_COUNT_MAX, &out->stock)) {
				*why = "stock is not an integer in range";
				return false;
			}
			seen |= 2;
		} else if (strcmp(key, "sold") == 0) {
			if (!iter_count(&it, STOCK_COUNT_MAX, &out->sold)) {
				*why = "sold is not an integer in range";
				return false;
			}
			seen |= 4;
		} else if (strcmp(key, "version") == 0) {
			if (!iter_count(&it, (uint64_t)INT64_MAX, &out->version)) {
				*why = "version is not a non-negative integer";
				return false;
			}
			seen |= 8;
		}
		/* Other fields are ignored (documents may come from MongoDB). */
	}
	if (seen != 15) {
		*why = "document lacks _id, stock, sold or version";
		return false;
	}
	return true;
}

/* ====================================================================== */
/* Record scanning                                                         */
/* ====================================================================== */

enum rec_status { REC_OK, REC_SHORT, REC_BAD };

struct rec_view {
	const uint8_t *bson;
	uint32_t len;   /* BSON bytes */
	uint32_t batch;
	uint32_t flags;
	size_t total;   /* header + BSON */
};

/* Check framing and checksum of the record at @p (@avail bytes to EOF). */
static enum rec_status
rec_check(const uint8_t *p, size_t avail, struct rec_view *v, const char **why)
{
	uint32_t len;

	if (avail < REC_HDR) {
		*why = "incomplete record header";
		return memcmp(p, REC_MAGIC, avail < 4 ? avail : 4) == 0 ? REC_SHORT : REC_BAD;
	}
	if (memcmp(p, REC_MAGIC, 4) != 0) {
		*why = "bad record magic";
		return REC_BAD;
	}
	len = get32(p + 8);
	if (len < REC_MIN_BSON || len > REC_MAX_BSON) {
		*why = "bad record length";
		return REC_BAD;
	}
	if ((size_t)len > avail - REC_HDR) {
		*why = "record extends past the end of the file";
		return REC_SHORT;
	}
	if (crc32c(crc32c(0, p + REC_HDR, len), p + 8, 12) != get32(p + 4)) {
		*why = "checksum mismatch";
		return REC_BAD;
	}
	v->bson = p + REC_HDR;
	v->len = len;
	v->batch = get32(p + 12);
	v->flags = get32(p + 16);
	v->total = REC_HDR + (size_t)len;
	if ((v->flags & ~REC_FLAG_END) != 0) {
		*why = "unknown record flags";
		return REC_BAD;
	}
	return REC_OK;
}

/* A record that checks out and holds a valid stock document. */
static bool
rec_valid_doc(const uint8_t *p, size_t avail, struct rec_view *v, struct store_doc *doc)
{
	const char *why;

	return rec_check(p, avail, v, &why) == REC_OK && doc_decode(v->bson, v->len, doc, &why);
}

/*
 * The first valid record at or after @from whose batch is not before @batch
 * (or any batch when @any); returns its offset, or @size when there is none.
 */
static size_t
scan_valid(const uint8_t *p, size_t size, size_t from, bool any, uint32_t batch,
    struct rec_view *v)
{
	struct store_doc doc;

	while (from < size) {
		const uint8_t *m = memmem(p + from, size - from, REC_MAGIC, 4);

		if (m == NULL)
			break;
		from = (size_t)(m - p);
		if (rec_valid_doc(m, size - from, v, &doc) &&
		    (any || !batch_after(batch, v->batch)))
			return from;
		from++;
	}
	return size;
}

/* ====================================================================== */
/* The store object                                                        */
/* ====================================================================== */

/*
 * A durable appender waiting for its batch (lives on the appender's stack).
 * It sleeps on @done with a futex, outside the store mutex: the flusher wakes
 * exactly the appenders of the batch it finished, one by one, so a commit
 * does not stampede every waiting thread onto the mutex. @result is written
 * before @done is set (release) and read after it is seen (acquire).
 */
struct waiter {
	int result;
	uint32_t done; /* atomic; futex word */
};

struct rec_meta {
	struct waiter *w;      /* NULL: write-behind */
	uint32_t len;          /* record bytes */
	uint32_t bson_crc;     /* CRC-32C of the BSON part */
	uint64_t seq;          /* order of acceptance */
	struct store_doc doc;  /* applied to the index once durable */
};

/* Records back to back plus their metadata. */
struct qbuf {
	uint8_t *bytes;
	size_t nbytes, capbytes;
	struct rec_meta *meta;
	size_t n, cap;
};

/* SKU -> durable document with the highest version; open addressing. */
struct index {
	struct store_doc *slots; /* sku[0] == '\0': empty */
	size_t cap, n;
};

enum rot_state { ROT_NONE, ROT_REQ, ROT_DONE, ROT_FAIL };

struct store_bson {
	struct store base;

	/* Set at open, then read-only. */
	char *dir;
	int dirfd;
	int lockfd;
	struct store_bson_options opt;
	struct store_io io;
	bool have_io;

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* the flusher waits here */
	pthread_cond_t done_cv; /* appenders, sync, close and snapshots wait here */

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
	struct index idx;
	struct store_stats st;
	uint64_t since_snap;  /* journal records the last snapshot does not cover */
	uint64_t gen;         /* journal generation being appended to */
	bool have_snapshot;
	enum rot_state rot;   /* rotation handshake with a snapshot */
	int rot_fd, rot_old_fd, rot_err;
	uint64_t rot_gen;
	struct store_doc *rot_docs;
	size_t rot_n;
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

	int healthy;         /* atomic */
	pthread_t flusher, snapper;
	bool flusher_started, snapper_started;
};

static struct store_bson *
to_bson(store_t *st)
{
	return (struct store_bson *)st;
}

static void
slog(struct store_bson *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
slog(struct store_bson *s, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (s->opt.log != NULL)
		s->opt.log(s->opt.log_arg, msg);
	else
		fprintf(stderr, "store: %s\n", msg);
}

static void
futex_wait(uint32_t *word, uint32_t val)
{
	syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

/*
 * Wake a waiter whose @done was just set. The waiter may already have seen
 * the flag and returned, so the word may be dead stack by now: FUTEX_WAKE
 * only uses the address as a key and never touches the memory; at worst
 * another futex sleeper at that address gets a spurious wake-up, which every
 * futex wait tolerates.
 */
static void
futex_wake_one(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void
cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
	ts.tv_nsec = (long)(deadline_ns % 1000000000ULL);
	pthread_cond_timedwait(cv, mu, &ts);
}

static void
journal_name(char *buf, size_t len, uint64_t gen)
{
	snprintf(buf, len, JOURNAL_PREFIX "%016" PRIx64 JOURNAL_SUFFIX, gen);
}

/* --- I/O through the hooks --------------------------------------------- */

static ssize_t
io_pwrite(struct store_bson *s, enum store_io_file f, int fd, const void *buf, size_t n,
    off_t off)
{
	if (s->have_io && s->io.pwrite != NULL)
		return s->io.pwrite(s->io.ctx, f, fd, buf, n, off);
	return pwrite(fd, buf, n, off);
}

static int
io_sync(struct store_bson *s, enum store_io_file f, int fd)
{
	if (s->have_io && s->io.sync != NULL)
		return s->io.sync(s->io.ctx, f, fd);
	return f == STORE_IO_DIR ? fsync(fd) : fdatasync(fd);
}

static int
io_ftruncate(struct store_bson *s, enum store_io_file f, int fd, off_t len)
{
	if (s->have_io && s->io.ftruncate != NULL)
		return s->io.ftruncate(s->io.ctx, f, fd, len);
	return ftruncate(fd, len);
}

/* Write all @n bytes at @off; -1 with errno on failure (a short write is retried). */
static int
io_write_all(struct store_bson *s, enum store_io_file f, int fd, const uint8_t *buf,
    size_t n, off_t off)
{
	while (n > 0) {
		ssize_t w = io_pwrite(s, f, fd, buf, n, off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = ENOSPC;
			return -1;
		}
		buf += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

/* --- queue buffers ----------------------------------------------------- */

static int
qbuf_push(struct qbuf *q, const uint8_t *rec, const struct rec_meta *m)
{
	if (q->nbytes + m->len > q->capbytes) {
		size_t cap = q->capbytes ? q->capbytes * 2 : 16384;
		uint8_t *p;

		while (cap < q->nbytes + m->len)
			cap *= 2;
		if ((p = realloc(q->bytes, cap)) == NULL)
			return STOCK_ENOMEM;
		q->bytes = p;
		q->capbytes = cap;
	}
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 128;
		struct rec_meta *p = realloc(q->meta, cap * sizeof *p);

		if (p == NULL)
			return STOCK_ENOMEM;
		q->meta = p;
		q->cap = cap;
	}
	memcpy(q->bytes + q->nbytes, rec, m->len);
	q->nbytes += m->len;
	q->meta[q->n++] = *m;
	return 0;
}

static void
qbuf_free(struct qbuf *q)
{
	free(q->bytes);
	free(q->meta);
	memset(q, 0, sizeof *q);
}

/* --- the index --------------------------------------------------------- */

static uint64_t
sku_hash(const char *sku)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	while (*sku != '\0') {
		h ^= (unsigned char)*sku++;
		h *= 1099511628211ULL;
	}
	return h;
}

static struct store_doc *
idx_slot(const struct index *x, const char *sku)
{
	size_t mask = x->cap - 1, i;

	for (i = (size_t)sku_hash(sku) & mask;; i = (i + 1) & mask)
		if (x->slots[i].sku[0] == '\0' || strcmp(x->slots[i].sku, sku) == 0)
			return &x->slots[i];
}

/* Make room for @extra more SKUs (load factor at most 1/2). */
static int
idx_reserve(struct index *x, size_t extra)
{
	struct index nx;
	size_t cap = x->cap ? x->cap : 64, i;

	while ((x->n + extra) * 2 > cap)
		cap *= 2;
	if (cap == x->cap)
		return 0;
	nx.slots = calloc(cap, sizeof *nx.slots);
	if (nx.slots == NULL)
		return STOCK_ENOMEM;
	nx.cap = cap;
	nx.n = x->n;
	for (i = 0; i < x->cap; i++)
		if (x->slots[i].sku[0] != '\0')
			*idx_slot(&nx, x->slots[i].sku) = x->slots[i];
	free(x->slots);
	*x = nx;
	return 0;
}

/* Apply one document (max version wins); room must have been reserved. */
static void
idx_apply(struct index *x, const struct store_doc *doc)
{
	struct store_doc *slot = idx_slot(x, doc->sku);

	if (slot->sku[0] == '\0') {
		store_doc_normalize(slot, doc);
		x->n++;
	} else if (store_doc_newer(doc, slot)) {
		store_doc_normalize(slot, doc);
	}
}

static int
idx_apply_grow(struct index *x, const struct store_doc *doc)
{
	int rc = idx_reserve(x, 1);

	if (rc == 0)
		idx_apply(x, doc);
	return rc;
}

/* Applies a whole replayed batch; -1 when the index cannot grow. */
static int
idx_apply_all(struct index *x, const struct store_doc *docs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (idx_apply_grow(x, &docs[i]) != 0)
			return -1;
	return 0;
}

/* A packed copy of the index (caller frees). NULL with *n == 0 when empty. */
static int
idx_copy(const struct index *x, struct store_doc **out, size_t *n)
{
	size_t i, k = 0;

	*out = NULL;
	*n = 0;
	if (x->n == 0)
		return 0;
	if ((*out = malloc(x->n * sizeof **out)) == NULL)
		return STOCK_ENOMEM;
	for (i = 0; i < x->cap; i++)
		if (x->slots[i].sku[0] != '\0')
			(*out)[k++] = x->slots[i];
	*n = k;
	return 0;
}

/* ====================================================================== */
/* The flusher: group commit                                               */
/* ====================================================================== */

static unsigned
hist_bucket(size_t n)
{
	unsigned b = 0;

	while (n > 1 && b < STORE_BATCH_HIST - 1) {
		n >>= 1;
		b++;
	}
	return b;
}

/* Cut the journal back to the last committed batch and make the cut durable. */
static int
journal_recover(struct store_bson *s, uint64_t *fsyncs)
{
	if (io_ftruncate(s, STORE_IO_JOURNAL, s->jfd, s->joff) != 0)
		return -1;
	(*fsyncs)++;
	if (io_sync(s, STORE_IO_JOURNAL, s->jfd) != 0)
		return -1;
	s->needs_truncate = false;
	return 0;
}

/* Move the first @take pending records into the (empty) flusher batch. */
static void
take_batch(struct store_bson *s, size_t take)
{
	struct qbuf *p = &s->pending, *b = &s->batch, t;
	size_t bytes = 0, i;

	if (take == p->n)
		goto swap;
	for (i = 0; i < take; i++)
		bytes += p->meta[i].len;
	/* The batch buffers were sized by earlier swaps; grow them if needed. */
	if (b->capbytes < bytes) {
		uint8_t *nb = realloc(b->bytes, bytes);

		if (nb == NULL)
			goto swap; /* a batch above max_batch beats no progress */
		b->bytes = nb;
		b->capbytes = bytes;
	}
	if (b->cap < take) {
		struct rec_meta *nm = realloc(b->meta, take * sizeof *nm);

		if (nm == NULL)
			goto swap;
		b->meta = nm;
		b->cap = take;
	}
	memcpy(b->bytes, p->bytes, bytes);
	memcpy(b->meta, p->meta, take * sizeof *b->meta);
	b->nbytes = bytes;
	b->n = take;
	memmove(p->bytes, p->bytes + bytes, p->nbytes - bytes);
	memmove(p->meta, p->meta + take, (p->n - take) * sizeof *p->meta);
	p->nbytes -= bytes;
	p->n -= take;
	return;
swap:
	t = *b;
	*b = *p;
	*p = t;
}

/* Settle the batch after its I/O (mu held); wake_batch follows. */
static void
complete_batch(struct store_bson *s, int rc, uint32_t batch_no)
{
	struct qbuf *b = &s->batch;
	size_t i, n = b->n;

	if (rc == 0) {
		s->joff += (off_t)b->nbytes;
		s->jbatch = batch_no;
		__atomic_store_n(&s->healthy, 1, __ATOMIC_RELEASE);
		s->st.batches++;
		s->st.bytes += b->nbytes;
		if (n > s->st.batch_max)
			s->st.batch_max = n;
		s->st.batch_hist[hist_bucket(n)]++;
		for (i = 0; i < n; i++)
			idx_apply(&s->idx, &b->meta[i].doc);
		s->inflight -= n;
		s->since_snap += n;
		s->last_batch_n = n;
		s->backoff_ns = 0;
		s->backoff_until = 0;
		if (s->opt.snapshot_every > 0 && s->since_snap >= s->opt.snapshot_every &&
		    !s->snap_req) {
			s->snap_req = true;
			pthread_cond_signal(&s->snap_cv);
		}
	} else {
		size_t off = 0;

		__atomic_store_n(&s->healthy, 0, __ATOMIC_RELEASE);
		s->st.fsync_failures++;
		s->fail_count++;
		for (i = 0; i < n; off += b->meta[i].len, i++) {
			struct rec_meta *m = &b->meta[i];

			if (m->w != NULL) {
				s->inflight--; /* wake_batch tells the appender */
				continue;
			}
			/* Write-behind: try again in a later batch, with a new place in line. */
			if (!s->closing) {
				struct rec_meta again = *m;

				again.seq = ++s->next_seq;
				if (qbuf_push(&s->pending, b->bytes + off, &again) == 0)
					continue;
			}
			s->inflight--;
			s->st.lost_records++;
		}
		s->backoff_ns = s->backoff_ns ? s->backoff_ns * 2 : BACKOFF_MIN_NS;
		if (s->backoff_ns > BACKOFF_MAX_NS)
			s->backoff_ns = BACKOFF_MAX_NS;
		s->backoff_until = stock_now_ns() + s->backoff_ns;
	}
	if (n > 0 && b->meta[n - 1].seq > s->done_seq)
		s->done_seq = b->meta[n - 1].seq;
	pthread_cond_broadcast(&s->done_cv); /* store_sync, close, snapshots */
}

/* Tell the durable appenders of the settled batch (flusher, mu not held). */
static void
wake_batch(struct store_bson *s, int rc)
{
	struct qbuf *b = &s->batch;
	size_t i;

	for (i = 0; i < b->n; i++) {
		struct waiter *w = b->meta[i].w;

		if (w == NULL)
			continue;
		w->result = rc;
		__atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
		futex_wake_one(&w->done);
	}
	b->n = 0;
	b->nbytes = 0;
}

/* Swap in the journal a snapshot prepared (mu held, no batch in flight). */
static void
flusher_rotate(struct store_bson *s, uint64_t *fsyncs)
{
	int rc = 0;

	if (s->needs_truncate) {
		/* The old file must end at a committed batch before it is left. */
		pthread_mutex_unlock(&s->mu);
		rc = journal_recover(s, fsyncs) == 0 ? 0 : STOCK_ESYS;
		pthread_mutex_lock(&s->mu);
	}
	if (rc == 0)
		rc = idx_copy(&s->idx, &s->rot_docs, &s->rot_n);
	if (rc != 0) {
		s->rot_err = rc;
		s->rot = ROT_FAIL;
	} else {
		s->rot_old_fd = s->jfd;
		s->jfd = s->rot_fd;
		s->gen = s->rot_gen;
		s->joff = 0;
		s->jbatch = 0;
		s->since_snap = 0;
		s->rot = ROT_DONE;
	}
	pthread_cond_broadcast(&s->done_cv);
}

static void *
flusher_main(void *arg)
{
	struct store_bson *s = arg;

	pthread_mutex_lock(&s->mu);
	for (;;) {
		uint64_t fsyncs = 0;
		size_t take, target, off, i;
		uint32_t batch_no;
		const char *what = NULL;
		int err = 0;

		if (s->rot == ROT_REQ) {
			flusher_rotate(s, &fsyncs);
			s->st.fsyncs += fsyncs;
			continue;
		}
		if (s->pending.n == 0) {
			if (s->stop)
				break;
			if (s->needs_truncate && !s->closing) {
				/*
				 * Idle after a failure: cut the failed bytes away and
				 * sync, with backoff, so the store turns healthy again
				 * (readiness probe) without waiting for traffic.
				 */
				if (stock_now_ns() < s->backoff_until) {
					cond_wait_until(&s->work_cv, &s->mu, s->backoff_until);
					continue;
				}
				pthread_mutex_unlock(&s->mu);
				err = journal_recover(s, &fsyncs);
				pthread_mutex_lock(&s->mu);
				s->st.fsyncs += fsyncs;
				if (err == 0) {
					__atomic_store_n(&s->healthy, 1, __ATOMIC_RELEASE);
					s->backoff_ns = 0;
					s->backoff_until = 0;
				} else {
					s->st.fsync_failures++;
					s->backoff_ns = s->backoff_ns * 2 > BACKOFF_MAX_NS
					    ? BACKOFF_MAX_NS
					    : (s->backoff_ns ? s->backoff_ns * 2 : BACKOFF_MIN_NS);
					s->backoff_until = stock_now_ns() + s->backoff_ns;
				}
				continue;
			}
			s->flusher_idle = true;
			s->want = 1;
			pthread_cond_wait(&s->work_cv, &s->mu);
			s->flusher_idle = false;
			continue;
		}
		if (s->backoff_until != 0 && !s->closing && stock_now_ns() < s->backoff_until) {
			cond_wait_until(&s->work_cv, &s->mu, s->backoff_until);
			continue;
		}
		/*
		 * Let the batch grow to the size of the previous one, for at most
		 * max_delay_us: right after a commit the woken appenders are still
		 * on their way back. A lone appender (previous batch of 1) never
		 * waits.
		 */
		target = s->last_batch_n < s->opt.max_batch ? s->last_batch_n : s->opt.max_batch;
		if (s->opt.max_delay_us > 0 && s->pending.n < target && !s->closing) {
			uint64_t deadline = stock_now_ns() + (uint64_t)s->opt.max_delay_us * 1000ULL;

			s->flusher_idle = true;
			s->want = target;
			while (s->pending.n < target && !s->closing && s->rot != ROT_REQ &&
			    stock_now_ns() < deadline)
				cond_wait_until(&s->work_cv, &s->mu, deadline);
			s->flusher_idle = false;
			if (s->rot == ROT_REQ)
				continue;
		}
		take = s->pending.n < s->opt.max_batch ? s->pending.n : s->opt.max_batch;
		take_batch(s, take);
		if (idx_reserve(&s->idx, s->batch.n) != 0) {
			/* Could not index it once durable: do not write it at all. */
			complete_batch(s, STOCK_ENOMEM, 0);
			pthread_mutex_unlock(&s->mu);
			wake_batch(s, STOCK_ENOMEM);
			pthread_mutex_lock(&s->mu);
			continue;
		}
		batch_no = s->jbatch + 1;
		s->batch_busy = true;
		pthread_mutex_unlock(&s->mu);

		for (i = 0, off = 0; i < s->batch.n; off += s->batch.meta[i].len, i++)
			rec_seal(s->batch.bytes + off, s->batch.meta[i].bson_crc, batch_no,
			    i + 1 == s->batch.n ? REC_FLAG_END : 0);
		if (s->needs_truncate && journal_recover(s, &fsyncs) != 0) {
			what = "cutting back the failed batch";
			err = errno;
		}
		if (what == NULL && io_write_all(s, STORE_IO_JOURNAL, s->jfd, s->batch.bytes,
		                        s->batch.nbytes, s->joff) != 0) {
			what = "write";
			err = errno;
			s->needs_truncate = true;
		}
		if (what == NULL) {
			fsyncs++;
			if (io_sync(s, STORE_IO_JOURNAL, s->jfd) != 0) {
				what = "fdatasync";
				err = errno;
				s->needs_truncate = true;
			}
		}
		if (what != NULL) {
			char name[64];

			journal_name(name, sizeof name, s->gen);
			slog(s, "%s/%s: %s failed at offset %lld: %s; a batch of %zu records is not durable",
			    s->dir, name, what, (long long)s->joff, strerror(err), s->batch.n);
		}

		pthread_mutex_lock(&s->mu);
		s->st.fsyncs += fsyncs;
		s->batch_busy = false;
		complete_batch(s, what == NULL ? 0 : STOCK_ESYS, batch_no);
		pthread_mutex_unlock(&s->mu);
		wake_batch(s, what == NULL ? 0 : STOCK_ESYS);
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* ====================================================================== */
/* Snapshots                                                               */
/* ====================================================================== */

struct snap_writer {
	struct store_bson *s;
	int fd;
	uint8_t buf[65536];
	size_t used;
	off_t off;
};

static int
snap_flush(struct snap_writer *w)
{
	if (io_write_all(w->s, STORE_IO_SNAPSHOT, w->fd, w->buf, w->used, w->off) != 0)
		return -1;
	w->off += (off_t)w->used;
	w->used = 0;
	return 0;
}

/* Encode the snapshot header document into @rec; returns the record length. */
static int
snap_meta_encode(uint8_t *rec, uint64_t gen, uint64_t count, uint32_t *bson_crc)
{
	bson_t b;
	bool ok;

	bson_init(&b);
	ok = bson_append_utf8(&b, "format", 6, SNAP_FORMAT, -1) &&
	    bson_append_int32(&b, "format_version", 14, SNAP_FORMAT_VERSION) &&
	    bson_append_int64(&b, "journal", 7, (int64_t)gen) &&
	    bson_append_int64(&b, "count", 5, (int64_t)count);
	return rec_frame(rec, &b, ok, STOCK_ENOMEM, bson_crc);
}

/* Write @docs as snapshot.bson: temp file, fdatasync, rename, directory fsync. */
static int
snapshot_write(struct store_bson *s, const struct store_doc *docs, size_t n, uint64_t gen)
{
	struct snap_writer *w;
	const char *what = NULL;
	uint32_t bcrc;
	size_t i;
	int len, err = 0;

	if ((w = malloc(sizeof *w)) == NULL)
		return STOCK_ENOMEM;
	w->s = s;
	w->used = 0;
	w->off = 0;
	w->fd = openat(s->dirfd, SNAP_TMP_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (w->fd < 0) {
		what = "create";
		err = errno;
		goto out;
	}
	len = snap_meta_encode(w->buf, gen, n, &bcrc);
	if (len < 0) {
		what = "encode";
		err = ENOMEM;
		goto out;
	}
	rec_seal(w->buf, bcrc, 1, n == 0 ? REC_FLAG_END : 0);
	w->used = (size_t)len;
	for (i = 0; i < n; i++) {
		if (w->used + REC_ENC_MAX > sizeof w->buf && snap_flush(w) != 0) {
			what = "write";
			err = errno;
			goto out;
		}
		len = rec_encode(&docs[i], w->buf + w->used, &bcrc);
		if (len < 0) {
			what = "encode";
			err = ENOMEM;
			goto out;
		}
		rec_seal(w->buf + w->used, bcrc, 1, i + 1 == n ? REC_FLAG_END : 0);
		w->used += (size_t)len;
	}
	if (snap_flush(w) != 0) {
		what = "write";
		err = errno;
	} else if (io_sync(s, STORE_IO_SNAPSHOT, w->fd) != 0) {
		what = "fdatasync";
		err = errno;
	} else if (close(w->fd) != 0) {
		w->fd = -1;
		what = "close";
		err = errno;
	} else if ((w->fd = -1, renameat(s->dirfd, SNAP_TMP_NAME, s->dirfd, SNAP_NAME)) != 0) {
		what = "rename";
		err = errno;
	} else if (io_sync(s, STORE_IO_DIR, s->dirfd) != 0) {
		/* The rename may or may not survive a crash: either snapshot is
		   consistent with the journals, which are still all there. */
		what = "fsync of the directory";
		err = errno;
	}
out:
	if (w->fd >= 0)
		close(w->fd);
	if (what != NULL) {
		slog(s, "%s/%s: snapshot %s failed: %s; the journal keeps everything", s->dir,
		    SNAP_TMP_NAME, what, strerror(err));
		unlinkat(s->dirfd, SNAP_TMP_NAME, 0);
	}
	free(w);
	return what == NULL ? 0 : STOCK_ESYS;
}

/*
 * Take a snapshot: start journal gen+1, have the flusher switch to it at a
 * batch boundary and hand over the index, write that, then delete the
 * journals it covers. @force: even when nothing changed since the last one.
 */
static int
snap_run(struct store_bson *s, bool force)
{
	char name[64];
	struct store_doc *docs;
	size_t n;
	uint64_t gen_new, g;
	int fd, old_fd, rc;

	pthread_mutex_lock(&s->snap_mu);
	pthread_mutex_lock(&s->mu);
	if (!force && s->since_snap == 0 && s->have_snapshot && s->first_gen == s->gen) {
		pthread_mutex_unlock(&s->mu);
		pthread_mutex_unlock(&s->snap_mu);
		return 0;
	}
	gen_new = s->gen + 1;
	pthread_mutex_unlock(&s->mu);

	journal_name(name, sizeof name, gen_new);
	fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || io_sync(s, STORE_IO_DIR, s->dirfd) != 0) {
		slog(s, "%s/%s: cannot start a new journal: %s", s->dir, name, strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlinkat(s->dirfd, name, 0);
		}
		rc = STOCK_ESYS;
		goto fail;
	}

	pthread_mutex_lock(&s->mu);
	s->rot_fd = fd;
	s->rot_gen = gen_new;
	s->rot = ROT_REQ;
	pthread_cond_signal(&s->work_cv);
	while (s->rot == ROT_REQ)
		pthread_cond_wait(&s->done_cv, &s->mu);
	if (s->rot == ROT_FAIL) {
		rc = s->rot_err;
		s->rot = ROT_NONE;
		pthread_mutex_unlock(&s->mu);
		close(fd);
		unlinkat(s->dirfd, name, 0);
		goto fail;
	}
	docs = s->rot_docs;
	n = s->rot_n;
	old_fd = s->rot_old_fd;
	s->rot_docs = NULL;
	s->rot_old_fd = -1;
	s->rot = ROT_NONE;
	pthread_mutex_unlock(&s->mu);
	close(old_fd);

	rc = snapshot_write(s, docs, n, gen_new);
	free(docs);
	if (rc != 0)
		goto fail;
	/* The snapshot is durable: the journals before gen_new are redundant. */
	for (g = s->first_gen; g < gen_new; g++) {
		journal_name(name, sizeof name, g);
		if (unlinkat(s->dirfd, name, 0) != 0 && errno != ENOENT)
			slog(s, "%s/%s: cannot delete: %s", s->dir, name, strerror(errno));
	}
	(void)io_sync(s, STORE_IO_DIR, s->dirfd); /* if lost, open deletes them */
	s->first_gen = gen_new;
	pthread_mutex_lock(&s->mu);
	s->have_snapshot = true;
	s->st.snapshots++;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->snap_mu);
	return 0;
fail:
	pthread_mutex_lock(&s->mu);
	s->st.snapshot_failures++;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->snap_mu);
	return rc;
}

/* Background snapshots every opt.snapshot_every records. */
static void *
snapper_main(void *arg)
{
	struct store_bson *s = arg;

	pthread_mutex_lock(&s->mu);
	for (;;) {
		int rc;

		while (!s->snap_req && !s->snap_stop)
			pthread_cond_wait(&s->snap_cv, &s->mu);
		if (s->snap_stop)
			break;
		pthread_mutex_unlock(&s->mu);
		rc = snap_run(s, false);
		pthread_mutex_lock(&s->mu);
		if (rc != 0) {
			uint64_t until = stock_now_ns() + SNAP_RETRY_NS;

			while (!s->snap_stop && stock_now_ns() < until)
				cond_wait_until(&s->snap_cv, &s->mu, until);
		}
		s->snap_req = false;
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* ====================================================================== */
/* Start-up: lock, snapshot, journal replay                                */
/* ====================================================================== */

static int
mkdir_p(const char *path)
{
	char *p = strdup(path), *q;
	int rc = 0;

	if (p == NULL)
		return -1;
	for (q = p + 1; *q != '\0'; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		if (mkdir(p, 0700) != 0 && errno != EEXIST)
			rc = -1;
		*q = '/';
	}
	if (mkdir(p, 0700) == 0 || errno == EEXIST)
		rc = 0;
	else
		rc = -1;
	free(p);
	return rc;
}

static int
open_dir_and_lock(struct store_bson *s, char *err, size_t errlen)
{
	char pid[32];
	ssize_t r;

	if (mkdir_p(s->dir) != 0) {
		store_seterr(err, errlen, "%s: cannot create the data directory: %s", s->dir,
		    strerror(errno));
		return STOCK_ESYS;
	}
	s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		store_seterr(err, errlen, "%s: cannot open the data directory: %s", s->dir,
		    strerror(errno));
		return STOCK_ESYS;
	}
	s->lockfd = openat(s->dirfd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lockfd < 0) {
		store_seterr(err, errlen, "%s/%s: cannot open: %s", s->dir, LOCK_NAME, strerror(errno));
		return STOCK_ESYS;
	}
	if (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
		if (errno != EWOULDBLOCK) {
			store_seterr(err, errlen, "%s/%s: flock: %s", s->dir, LOCK_NAME, strerror(errno));
			return STOCK_ESYS;
		}
		r = pread(s->lockfd, pid, sizeof pid - 1, 0);
		pid[r > 0 ? r : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		store_seterr(err, errlen,
		    "%s/%s: the data directory is in use by another store (pid %s); refusing to open",
		    s->dir, LOCK_NAME, pid[0] != '\0' ? pid : "unknown");
		return STOCK_EBUSY;
	}
	r = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
	if (ftruncate(s->lockfd, 0) != 0 || pwrite(s->lockfd, pid, (size_t)r, 0) != r)
		slog(s, "%s/%s: cannot record the pid: %s", s->dir, LOCK_NAME, strerror(errno));
	return 0;
}

/* Map a whole file read-only (NULL for an empty one). */
static int
map_file(int fd, const uint8_t **p, size_t *size)
{
	struct stat sb;
	void *m;

	*p = NULL;
	*size = 0;
	if (fstat(fd, &sb) != 0)
		return -1;
	if (sb.st_size == 0)
		return 0;
	m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return -1;
	*p = m;
	*size = (size_t)sb.st_size;
	return 0;
}

static bool
snap_meta_decode(const struct rec_view *v, uint64_t *count, uint64_t *gen, const char **why)
{
	bson_t b;
	bson_iter_t it;
	unsigned seen = 0;

	*why = "bad snapshot header";
	if (!bson_init_static(&b, v->bson, v->len) || !bson_iter_init(&it, &b))
		return false;
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (strcmp(key, "format") == 0 && BSON_ITER_HOLDS_UTF8(&it) &&
		    strcmp(bson_iter_utf8(&it, NULL), SNAP_FORMAT) == 0)
			seen |= 1;
		else if (strcmp(key, "format_version") == 0 && BSON_ITER_HOLDS_INT32(&it)) {
			if (bson_iter_int32(&it) != SNAP_FORMAT_VERSION) {
				*why = "unsupported snapshot format version";
				return false;
			}
			seen |= 2;
		} else if (strcmp(key, "journal") == 0 && iter_count(&it, INT64_MAX, gen))
			seen |= 4;
		else if (strcmp(key, "count") == 0 && iter_count(&it, INT64_MAX, count))
			seen |= 8;
	}
	return seen == 15;
}

/* Load snapshot.bson into the index; *jgen: first journal it does not cover. */
static int
load_snapshot(struct store_bson *s, uint64_t *jgen, char *err, size_t errlen)
{
	char path[4200];
	const uint8_t *p;
	size_t size, o = 0;
	uint64_t count = 0, docs = 0, skipped = 0;
	uint32_t last_flags = 0;
	bool meta = false;
	int fd, rc = 0;

	*jgen = 0;
	snprintf(path, sizeof path, "%s/%s", s->dir, SNAP_NAME);
	fd = openat(s->dirfd, SNAP_NAME, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		store_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return STOCK_ESYS;
	}
	if (map_file(fd, &p, &size) != 0) {
		store_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		close(fd);
		return STOCK_ESYS;
	}
	while (o < size) {
		struct rec_view v;
		struct store_doc doc;
		const char *why;
		enum rec_status r = rec_check(p + o, size - o, &v, &why);

		if (r == REC_OK && v.batch != 1) {
			r = REC_BAD;
			why = "bad batch number";
		}
		if (r == REC_OK && o == 0) {
			if (snap_meta_decode(&v, &count, jgen, &why))
				meta = true;
			else
				r = REC_BAD;
		} else if (r == REC_OK && !doc_decode(v.bson, v.len, &doc, &why)) {
			r = REC_BAD;
		}
		if (r == REC_OK) {
			if (o != 0) {
				if (idx_apply_grow(&s->idx, &doc) != 0) {
					store_seterr(err, errlen, "%s: out of memory", path);
					rc = STOCK_ENOMEM;
					break;
				}
				docs++;
			}
			last_flags = v.flags;
			o += v.total;
			continue;
		}
		if (!s->opt.repair) {
			store_seterr(err, errlen,
			    "%s: corrupt record at offset %zu (%s); a snapshot is renamed into place "
			    "whole, so this is damage, not a torn write: refusing to open (restore the "
			    "file, or open with repair to load its readable documents)",
			    path, o, why);
			rc = STOCK_EINVAL;
			break;
		}
		{
			struct rec_view nv;
			size_t q = scan_valid(p, size, o + 1, true, 0, &nv);

			slog(s, "%s: repair: skipped %zu unreadable bytes at offset %zu (%s)", path,
			    q - o, o, why);
			s->st.corrupt_skipped++;
			s->repaired = true;
			skipped++;
			o = q;
		}
	}
	if (rc == 0 && skipped == 0 && (!meta || docs != count || !(last_flags & REC_FLAG_END))) {
		if (!s->opt.repair) {
			store_seterr(err, errlen,
			    "%s: incomplete snapshot: %" PRIu64 " documents of %" PRIu64
			    " announced, %zu bytes%s; refusing to open (restore the file, or open "
			    "with repair)",
			    path, docs, count, size, meta ? "" : ", no header");
			rc = STOCK_EINVAL;
		} else {
			slog(s, "%s: repair: incomplete snapshot (%" PRIu64 " of %" PRIu64
			        " documents); loaded what is there",
			    path, docs, count);
			s->st.corrupt_skipped++;
			s->repaired = true;
			skipped++;
		}
	}
	if (p != NULL)
		munmap((void *)p, size);
	close(fd);
	if (rc == 0) {
		s->have_snapshot = true;
		s->st.replayed_records += docs;
		if (skipped > 0 && !meta)
			*jgen = 0; /* unknown: replay every journal there is */
	}
	return rc;
}

/*
 * Replay one journal file into the index, batch by batch. Cuts a torn tail;
 * refuses (or, with repair, skips) a corrupt middle. @keep: this is the last
 * journal, which stays open for appending.
 */
static int
replay_journal(struct store_bson *s, uint64_t gen, bool keep, char *err, size_t errlen)
{
	char name[64], path[4200];
	const uint8_t *p = NULL;
	size_t size = 0, o = 0, batch_start = 0, cut = SIZE_MAX, bad_at = 0, bn = 0, bcap = 0;
	struct store_doc *bd = NULL; /* readable records of the unfinished batch */
	const char *cut_why = NULL;
	uint32_t last = 0, cur = 0;
	bool in_batch = false;
	uint64_t applied = 0;
	int fd, rc = 0;

	journal_name(name, sizeof name, gen);
	snprintf(path, sizeof path, "%s/%s", s->dir, name);
	fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0 || map_file(fd, &p, &size) != 0) {
		store_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return STOCK_ESYS;
	}
	while (o < size) {
		struct rec_view v, nv;
		struct store_doc doc;
		const char *why;
		uint32_t expect = in_batch ? cur : last + 1;
		enum rec_status r = rec_check(p + o, size - o, &v, &why);
		size_t q;

		if (r == REC_OK && !doc_decode(v.bson, v.len, &doc, &why))
			r = REC_BAD;
		if (r == REC_OK && v.batch != expect) {
			r = REC_BAD;
			why = "batch number out of sequence";
		}
		if (r == REC_OK) {
			if (bn == bcap) {
				struct store_doc *nd;

				bcap = bcap ? bcap * 2 : 64;
				if ((nd = realloc(bd, bcap * sizeof *nd)) == NULL) {
					store_seterr(err, errlen, "%s: out of memory", path);
					rc = STOCK_ENOMEM;
					goto out;
				}
				bd = nd;
			}
			bd[bn++] = doc;
			in_batch = true;
			cur = v.batch;
			o += v.total;
			if (v.flags & REC_FLAG_END) {
				if (idx_apply_all(&s->idx, bd, bn) != 0) {
					store_seterr(err, errlen, "%s: out of memory", path);
					rc = STOCK_ENOMEM;
					goto out;
				}
				applied += bn;
				bn = 0;
				last = cur;
				in_batch = false;
				batch_start = o;
			}
			continue;
		}
		/*
		 * A bad record at o, part of batch `expect`. Batches are written
		 * one after the other, each only once the previous one is synced:
		 * a valid record of a later batch means this one was complete on
		 * disk and has been damaged since. Nothing later: a torn tail.
		 */
		for (q = o + 1;; q++) {
			q = scan_valid(p, size, q, true, 0, &nv);
			if (q == size || batch_after(nv.batch, expect))
				break;
		}
		if (q == size) {
			cut = batch_start;
			bad_at = o;
			cut_why = why;
			break;
		}
		if (!s->opt.repair) {
			store_seterr(err, errlen,
			    "%s: corrupt record at offset %zu (%s), followed by valid records (batch "
			    "%" PRIu32 " at offset %zu): the journal is damaged in the middle; refusing "
			    "to open (restore the file, or open with repair to skip the damage)",
			    path, o, why, nv.batch, q);
			rc = STOCK_EINVAL;
			goto out;
		}
		/* Repair: the damaged batch was committed; keep what is readable of it. */
		if (idx_apply_all(&s->idx, bd, bn) != 0) {
			store_seterr(err, errlen, "%s: out of memory", path);
			rc = STOCK_ENOMEM;
			goto out;
		}
		applied += bn;
		bn = 0;
		q = scan_valid(p, size, o + 1, false, expect, &nv);
		slog(s, "%s: repair: skipped %zu unreadable bytes at offset %zu (%s)", path, q - o, o,
		    why);
		s->st.corrupt_skipped++;
		s->repaired = true;
		o = q;
		in_batch = true;
		cur = nv.batch;
	}
	if (cut == SIZE_MAX && in_batch) {
		cut = batch_start;
		bad_at = size;
		cut_why = "the last batch has no END record";
	}
	if (cut != SIZE_MAX) {
		slog(s, "%s: torn tail at offset %zu (%s): cut %zu bytes from offset %zu "
		        "(an unfinished batch, never acknowledged; %zu readable records dropped)",
		    path, bad_at, cut_why, size - cut, cut, bn);
		s->st.torn_bytes_cut += size - cut;
	}
out:
	free(bd);
	if (p != NULL)
		munmap((void *)p, size);
	if (rc == 0 && cut != SIZE_MAX &&
	    (io_ftruncate(s, STORE_IO_JOURNAL, fd, (off_t)cut) != 0 ||
	        io_sync(s, STORE_IO_JOURNAL, fd) != 0)) {
		store_seterr(err, errlen, "%s: cannot cut the torn tail at offset %zu: %s", path, cut,
		    strerror(errno));
		rc = STOCK_ESYS;
	}
	if (rc != 0 || !keep) {
		close(fd);
	} else {
		s->jfd = fd;
		s->joff = (off_t)(cut != SIZE_MAX ? cut : size);
		s->jbatch = last;
		s->gen = gen;
	}
	if (rc == 0) {
		s->st.replayed_records += applied;
		s->since_snap += applied;
	}
	return rc;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Generations of the journal files in the directory, ascending. */
static int
list_journals(struct store_bson *s, uint64_t **out, size_t *n)
{
	DIR *d = opendir(s->dir);
	struct dirent *e;
	size_t cap = 0;

	*out = NULL;
	*n = 0;
	if (d == NULL)
		return STOCK_ESYS;
	while ((e = readdir(d)) != NULL) {
		const char *nm = e->d_name, *hex = nm + sizeof JOURNAL_PREFIX - 1;
		size_t k;

		if (strlen(nm) != JOURNAL_NAME_LEN || strncmp(nm, JOURNAL_PREFIX, 8) != 0 ||
		    strcmp(hex + 16, JOURNAL_SUFFIX) != 0)
			continue;
		for (k = 0; k < 16; k++)
			if (!((hex[k] >= '0' && hex[k] <= '9') || (hex[k] >= 'a' && hex[k] <= 'f')))
				break;
		if (k != 16)
			continue;
		if (*n == cap) {
			uint64_t *ng;

			cap = cap ? cap * 2 : 8;
			if ((ng = realloc(*out, cap * sizeof *ng)) == NULL) {
				closedir(d);
				free(*out);
				*out = NULL;
				return STOCK_ENOMEM;
			}
			*out = ng;
		}
		(*out)[(*n)++] = strtoull(hex, NULL, 16);
	}
	closedir(d);
	if (*n > 1)
		qsort(*out, *n, sizeof **out, cmp_u64);
	return 0;
}

static int
recover(struct store_bson *s, char *err, size_t errlen)
{
	uint64_t snap_gen, *gens, gen;
	size_t n, i;
	char name[64];
	int rc;

	if (unlinkat(s->dirfd, SNAP_TMP_NAME, 0) == 0)
		slog(s, "%s/%s: removed an unfinished snapshot", s->dir, SNAP_TMP_NAME);
	if ((rc = idx_reserve(&s->idx, 0)) != 0)
		return rc;
	if ((rc = load_snapshot(s, &snap_gen, err, errlen)) != 0)
		return rc;
	if ((rc = list_journals(s, &gens, &n)) != 0) {
		store_seterr(err, errlen, "%s: cannot list the journals", s->dir);
		return rc;
	}
	s->first_gen = 0;
	for (i = 0; i < n; i++) {
		if (s->have_snapshot && gens[i] < snap_gen) {
			journal_name(name, sizeof name, gens[i]);
			if (unlinkat(s->dirfd, name, 0) == 0)
				slog(s, "%s/%s: removed: covered by the snapshot", s->dir, name);
			continue;
		}
		if ((rc = replay_journal(s, gens[i], i + 1 == n, err, errlen)) != 0) {
			free(gens);
			return rc;
		}
		if (s->first_gen == 0)
			s->first_gen = gens[i];
	}
	if (s->jfd < 0) {
		gen = n > 0 && gens[n - 1] + 1 > snap_gen ? gens[n - 1] + 1 : snap_gen;
		if (gen == 0)
			gen = 1;
		journal_name(name, sizeof name, gen);
		s->jfd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (s->jfd < 0 || io_sync(s, STORE_IO_DIR, s->dirfd) != 0) {
			store_seterr(err, errlen, "%s/%s: cannot create the journal: %s", s->dir, name,
			    strerror(errno));
			free(gens);
			return STOCK_ESYS;
		}
		s->gen = gen;
		s->joff = 0;
		s->jbatch = 0;
		s->first_gen = gen;
	}
	free(gens);
	return 0;
}

/* ====================================================================== */
/* The vtable                                                              */
/* ====================================================================== */

static int
bs_append(store_t *st, const struct store_doc *doc, bool durable)
{
	struct store_bson *s = to_bson(st);
	uint8_t rec[REC_ENC_MAX];
	struct waiter w = { 0, 0 };
	struct rec_meta m;
	int rc, len;

	if ((rc = store_doc_check(doc)) != 0)
		return rc;
	store_doc_normalize(&m.doc, doc);
	if ((len = rec_encode(&m.doc, rec, &m.bson_crc)) < 0)
		return len;
	m.len = (uint32_t)len;
	m.w = durable ? &w : NULL;

	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		return STOCK_EINVAL;
	}
	if (s->inflight >= s->opt.queue_limit) {
		s->st.queue_rejects++;
		pthread_mutex_unlock(&s->mu);
		return STOCK_EBUSY;
	}
	m.seq = s->next_seq + 1;
	if ((rc = qbuf_push(&s->pending, rec, &m)) != 0) {
		pthread_mutex_unlock(&s->mu);
		return rc;
	}
	s->next_seq++;
	s->inflight++;
	s->st.records++;
	if (s->flusher_idle && s->pending.n >= s->want)
		pthread_cond_signal(&s->work_cv);
	pthread_mutex_unlock(&s->mu);
	if (!durable)
		return 0;
	while (__atomic_load_n(&w.done, __ATOMIC_ACQUIRE) == 0)
		futex_wait(&w.done, 0);
	return w.result;
}

static int
bs_sync(store_t *st)
{
	struct store_bson *s = to_bson(st);
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
bs_get(store_t *st, const char *sku, struct store_doc *out)
{
	struct store_bson *s = to_bson(st);
	struct store_doc *slot;
	size_t n;
	int rc = STOCK_ENOENT;

	if (sku == NULL || out == NULL)
		return STOCK_EINVAL;
	n = strnlen(sku, STORE_SKU_MAX + 1);
	if (n == 0 || n > STORE_SKU_MAX)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	slot = idx_slot(&s->idx, sku);
	if (slot->sku[0] != '\0') {
		*out = *slot;
		rc = 0;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int
bs_foreach(store_t *st, store_foreach_fn fn, void *arg)
{
	struct store_bson *s = to_bson(st);
	struct store_doc *docs;
	size_t n, i;
	int rc;

	if (fn == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	rc = idx_copy(&s->idx, &docs, &n);
	pthread_mutex_unlock(&s->mu);
	for (i = 0; rc == 0 && i < n; i++)
		rc = fn(&docs[i], arg);
	free(docs);
	return rc;
}

static int
bs_snapshot(store_t *st)
{
	return snap_run(to_bson(st), false);
}

static int
bs_stats(store_t *st, struct store_stats *out)
{
	struct store_bson *s = to_bson(st);

	pthread_mutex_lock(&s->mu);
	*out = s->st;
	out->queue_depth = s->inflight;
	out->docs = s->idx.n;
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static bool
bs_healthy(store_t *st)
{
	return __atomic_load_n(&to_bson(st)->healthy, __ATOMIC_ACQUIRE) != 0;
}

/* Release everything; the threads are not running. */
static void
store_free(struct store_bson *s)
{
	if (s->jfd >= 0)
		close(s->jfd);
	if (s->rot_old_fd >= 0)
		close(s->rot_old_fd);
	if (s->dirfd >= 0)
		close(s->dirfd);
	if (s->lockfd >= 0)
		close(s->lockfd); /* releases the flock */
	qbuf_free(&s->pending);
	qbuf_free(&s->batch);
	free(s->idx.slots);
	free(s->rot_docs);
	free(s->dir);
	pthread_cond_destroy(&s->work_cv);
	pthread_cond_destroy(&s->done_cv);
	pthread_cond_destroy(&s->snap_cv);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->snap_mu);
	free(s);
}

static void
bs_close(store_t *st)
{
	struct store_bson *s = to_bson(st);
	int rc;

	if (s->snapper_started) {
		pthread_mutex_lock(&s->mu);
		s->snap_stop = true;
		pthread_cond_signal(&s->snap_cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->snapper, NULL);
	}
	/* Drain: with closing set, a failed batch drops write-behind records. */
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	pthread_cond_signal(&s->work_cv);
	while (s->pending.n > 0 || s->batch_busy)
		pthread_cond_wait(&s->done_cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	if (!s->opt.no_close_snapshot && (rc = snap_run(s, false)) != 0)
		slog(s, "%s: final snapshot failed (%s); the journal keeps everything", s->dir,
		    stock_strerror(rc));
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_cond_signal(&s->work_cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->flusher, NULL);
	if (s->st.lost_records > 0)
		slog(s, "%s: %" PRIu64 " write-behind records were lost to I/O errors", s->dir,
		    s->st.lost_records);
	store_free(s);
}

static const struct store_ops bson_ops = {
	.name = "bson",
	.append = bs_append,
	.sync = bs_sync,
	.get = bs_get,
	.foreach = bs_foreach,
	.snapshot = bs_snapshot,
	.stats = bs_stats,
	.healthy = bs_healthy,
	.close = bs_close,
};

int
store_bson_open(store_t **out, const struct store_bson_options *opt, char *err, size_t errlen)
{
	struct store_bson *s;
	pthread_condattr_t ca;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (out == NULL || opt == NULL || opt->data_dir == NULL || opt->data_dir[0] == '\0') {
		store_seterr(err, errlen, "store: a data directory is required");
		return STOCK_EINVAL;
	}
	if ((s = calloc(1, sizeof *s)) == NULL)
		return STOCK_ENOMEM;
	s->base.ops = &bson_ops;
	s->dirfd = s->lockfd = s->jfd = s->rot_fd = s->rot_old_fd = -1;
	s->opt = *opt;
	s->opt.data_dir = NULL; /* the caller's string; s->dir is ours */
	if (s->opt.max_batch == 0)
		s->opt.max_batch = DEF_MAX_BATCH;
	if (s->opt.max_delay_us == 0)
		s->opt.max_delay_us = DEF_MAX_DELAY_US;
	else if (s->opt.max_delay_us == STORE_BSON_NO_DELAY)
		s->opt.max_delay_us = 0;
	if (s->opt.queue_limit == 0)
		s->opt.queue_limit = DEF_QUEUE_LIMIT;
	if (opt->io != NULL) {
		s->io = *opt->io;
		s->have_io = true;
	}
	s->opt.io = NULL;
	s->healthy = 1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->snap_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->work_cv, &ca);
	pthread_cond_init(&s->done_cv, &ca);
	pthread_cond_init(&s->snap_cv, &ca);
	pthread_condattr_destroy(&ca);
	if ((s->dir = strdup(opt->data_dir)) == NULL) {
		store_free(s);
		return STOCK_ENOMEM;
	}
	if ((rc = open_dir_and_lock(s, err, errlen)) != 0 || (rc = recover(s, err, errlen)) != 0) {
		store_free(s);
		return rc;
	}
	if (pthread_create(&s->flusher, NULL, flusher_main, s) != 0) {
		store_seterr(err, errlen, "%s: cannot start the flusher thread", s->dir);
		store_free(s);
		return STOCK_ESYS;
	}
	s->flusher_started = true;
	if (s->opt.snapshot_every > 0) {
		if (pthread_create(&s->snapper, NULL, snapper_main, s) != 0)
			slog(s, "%s: cannot start the snapshot thread; snapshots only on close",
			    s->dir);
		else
			s->snapper_started = true;
	}
	if (s->repaired) {
		rc = snap_run(s, true);
		slog(s, "%s: repaired; %s", s->dir,
		    rc == 0 ? "a fresh snapshot now covers the damaged journal"
		            : "the fresh snapshot failed, the next open needs repair again");
	}
	*out = &s->base;
	return 0;
}
