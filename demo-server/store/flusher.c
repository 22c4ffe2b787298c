/*
 * The embedded store's flusher thread: group commit. It takes what is
 * queued as a batch (never splitting the records of one store_commit, even
 * past max_batch), writes it with one pwrite() and one fdatasync(), applies
 * it to the indexes and wakes exactly the durable appenders of that batch; after a failure it cuts the journal back before anything else is
 * written and backs off. Between two batches it performs the journal switch
 * a snapshot asks for (snapshot.c). docs/store.md, "Group commit" and
 * "Failures".
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "log.h"
#include "store/internal.h"

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

/* After a failure: the next retry waits 1 ms, doubling up to 100 ms (mu held). */
static void
backoff_bump(struct store *s)
{
	s->backoff_ns = s->backoff_ns ? s->backoff_ns * 2 : BACKOFF_MIN_NS;
	if (s->backoff_ns > BACKOFF_MAX_NS)
		s->backoff_ns = BACKOFF_MAX_NS;
	s->backoff_until = stock_now_ns() + s->backoff_ns;
}

/* Cut the journal back to the last committed batch and make the cut durable. */
static int
journal_cut(struct store *s, uint64_t *fsyncs)
{
	if (store__io_ftruncate(s, STORE_IO_JOURNAL, s->jfd, s->joff) != 0)
		return -1;
	(*fsyncs)++;
	if (store__io_sync(s, STORE_IO_JOURNAL, s->jfd) != 0)
		return -1;
	s->needs_truncate = false;
	return 0;
}

/* Move the first @take pending records into the (empty) flusher batch. */
static void
take_batch(struct store *s, size_t take)
{
	struct qbuf *p = &s->pending, *b = &s->batch, t;
	size_t bytes = 0, i;

	ASSERT(take > 0 && take <= p->n);
	ASSERT(b->n == 0 && b->nbytes == 0); /* the previous batch was settled */
	if (take == p->n)
		goto swap;
	for (i = 0; i < take; i++)
		bytes += p->meta[i].len;
	ASSERT(bytes < p->nbytes);
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

/* The batch is durable (mu held): advance the file, index it, count it. */
static void
batch_committed(struct store *s, uint32_t batch_no)
{
	struct qbuf *b = &s->batch;
	size_t i, n = b->n;

	ASSERT(batch_no == s->jbatch + 1); /* batch numbers go up by one per commit */
	ASSERT(s->inflight >= n);          /* the queue depth never goes negative */
	s->joff += (off_t)b->nbytes;
	s->jbatch = batch_no;
	stock_gauge_set(&s->healthy, 1);
	s->st.batches++;
	s->st.bytes += b->nbytes;
	if (n > s->st.batch_max)
		s->st.batch_max = n;
	s->st.batch_hist[hist_bucket(n)]++;
	for (i = 0; i < n; i++) {
		struct rec_meta *m = &b->meta[i];

		if (m->kv != NULL) {
			/* The index owns it now; the entry it beat is freed after mu
			   is dropped (batch_free_losers). */
			m->kv = store__kv_apply_keep(&s->kvx, m->kv);
		} else {
			doc_index_apply(&s->idx, &m->doc);
		}
	}
	s->inflight -= n;
	s->since_snap += n;
	s->last_batch_n = n;
	s->backoff_ns = 0;
	s->backoff_until = 0;
	/* At least as many records as the last snapshot wrote: a snapshot's
	   cost, O(live records), is paid at most once per journal record. */
	if (s->opt.snapshot_every > 0 && s->since_snap >= s->opt.snapshot_every &&
	    s->since_snap >= s->snap_live && !s->snap_req) {
		s->snap_req = true;
		pthread_cond_signal(&s->snap_cv);
	}
}

/*
 * Give up on the @n records of one unit starting at batch record @i (mu
 * held): not durable, their keyed entries freed; @lost: write-behind ones
 * dropped (counted).
 */
static void
unit_drop(struct store *s, size_t i, size_t n, bool lost)
{
	for (size_t k = i; k < i + n; k++) {
		struct rec_meta *m = &s->batch.meta[k];

		ASSERT(s->inflight > 0); /* the queue depth never goes negative */
		s->inflight--;
		s->st.lost_records += lost;
		free(m->kv);
		m->kv = NULL;
	}
}

/*
 * Queue a failed write-behind unit (@n records from batch record @i, bytes
 * at @off) again, with new places in line, whole or not at all (mu held).
 */
static bool
unit_requeue(struct store *s, size_t i, size_t n, size_t off)
{
	struct qbuf *b = &s->batch, *p = &s->pending;
	size_t n0 = p->n, nbytes0 = p->nbytes, k;
	uint64_t seq0 = s->next_seq;

	for (k = i; k < i + n; off += b->meta[k].len, k++) {
		struct rec_meta again = b->meta[k];

		again.seq = s->next_seq + 1;
		if (store__queue_push(p, b->bytes + off, &again) != 0) {
			p->n = n0; /* take the unit's first records back out */
			p->nbytes = nbytes0;
			s->next_seq = seq0;
			return false;
		}
		s->next_seq++;
	}
	for (k = i; k < i + n; k++)
		b->meta[k].kv = NULL; /* the requeued copies own the entries */
	return true;
}

/* The batch failed (mu held): unhealthy, requeue write-behind, back off. */
static void
batch_failed(struct store *s)
{
	struct qbuf *b = &s->batch;
	size_t i, j, k, n = b->n, off = 0, uoff;

	stock_gauge_set(&s->healthy, 0);
	s->st.fsync_failures++;
	s->fail_count++;
	for (i = 0; i < n; i = j + 1) {
		for (j = i; !b->meta[j].unit_end; j++)
			ASSERT(j + 1 < n); /* batches hold whole units */
		for (uoff = off, k = i; k <= j; k++)
			off += b->meta[k].len;
		if (b->meta[i].w != NULL)
			unit_drop(s, i, j + 1 - i, false); /* wake_batch tells the appender */
		else if (s->closing || !unit_requeue(s, i, j + 1 - i, uoff))
			unit_drop(s, i, j + 1 - i, true);
	}
	backoff_bump(s);
}

/* Settle the batch after its I/O (mu held); wake_batch follows. */
static void
complete_batch(struct store *s, int rc, uint32_t batch_no)
{
	struct qbuf *b = &s->batch;
	size_t n = b->n;

	/* Batches are prefixes of a queue ordered by seq, never empty. */
	ASSERT(n > 0 && b->meta[n - 1].seq > s->done_seq);
	if (rc == 0)
		batch_committed(s, batch_no);
	else
		batch_failed(s);
	s->done_seq = b->meta[n - 1].seq;
	pthread_cond_broadcast(&s->done_cv); /* store_sync, close, snapshots */
}

/*
 * Tell the durable appenders of the settled batch (flusher, mu not held).
 * Once a waiter's latch is set the appender may return and its stack frame
 * (where the waiter lives) be gone: the set is the last access to it.
 */
static void
wake_batch(struct store *s, int rc)
{
	struct qbuf *b = &s->batch;
	size_t i;

	for (i = 0; i < b->n; i++) {
		struct store_ticket *w = b->meta[i].w;

		if (w == NULL || !b->meta[i].unit_end)
			continue; /* one wake per unit: its last record */
		w->result = rc;
		stock_latch_set(&w->done); /* the last access to *w */
	}
	b->n = 0;
	b->nbytes = 0;
}

/*
 * Free what the settled batch left in its records (mu not held): the keyed
 * entries batch_committed replaced in the index. The batch is the flusher's
 * own; the count is taken before wake_batch empties it.
 */
static void
batch_free_losers(struct store *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(s->batch.meta[i].kv);
		s->batch.meta[i].kv = NULL;
	}
}

/* batch_free_losers while a copy of the index is pinned (mu held): kept until the last unpin. */
static void
batch_retire_losers(struct store *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		store__kv_retire(&s->kvx, s->batch.meta[i].kv);
		s->batch.meta[i].kv = NULL;
	}
}

/* Swap in the journal a snapshot prepared (mu held, no batch in flight). */
static void
flusher_rotate(struct store *s)
{
	uint64_t fsyncs = 0;
	int rc = 0;

	ASSERT(!s->batch_busy && s->batch.n == 0);
	if (s->needs_truncate) {
		/* The old file must end at a committed batch before it is left. */
		pthread_mutex_unlock(&s->mu);
		rc = journal_cut(s, &fsyncs) == 0 ? 0 : STOCK_ESYS;
		pthread_mutex_lock(&s->mu);
	}
	if (rc == 0) {
		/* Copy the indexes without mu: only this thread changes them
		   (batches are applied here, and the snapshot's purge waits for
		   this switch), so they stay as of the switch while appenders go
		   on queueing; readers only read. The keyed index is copied as
		   its slot array (pointers), pinned below: the snapshot thread
		   reads the entries, and marks the tombstones, after the switch. */
		pthread_mutex_unlock(&s->mu);
		rc = doc_index_copy(&s->idx, &s->rot_docs, &s->rot_n);
		if (rc == 0 && (rc = store__kv_copy_slots(&s->kvx, &s->rot_kv)) != 0) {
			free(s->rot_docs);
			s->rot_docs = NULL;
		}
		pthread_mutex_lock(&s->mu);
		if (rc == 0)
			store__kv_pin(&s->kvx); /* until the snapshot is written */
	}
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
	s->st.fsyncs += fsyncs;
	pthread_cond_broadcast(&s->done_cv);
}

/*
 * Idle after a failure (mu held): cut the failed bytes away and sync, with
 * backoff, so the store turns healthy again (readiness probe) without
 * waiting for traffic.
 */
static void
flusher_idle_recover(struct store *s)
{
	uint64_t fsyncs = 0;
	int err;

	if (stock_now_ns() < s->backoff_until) {
		util_cond_wait_until(&s->work_cv, &s->mu, s->backoff_until);
		return;
	}
	pthread_mutex_unlock(&s->mu);
	err = journal_cut(s, &fsyncs);
	pthread_mutex_lock(&s->mu);
	s->st.fsyncs += fsyncs;
	if (err == 0) {
		stock_gauge_set(&s->healthy, 1);
		s->backoff_ns = 0;
		s->backoff_until = 0;
	} else {
		s->st.fsync_failures++;
		backoff_bump(s);
	}
}

/*
 * Let the batch grow to the size of the previous one, for at most
 * max_delay_us (mu held): right after a commit the woken appenders are still
 * on their way back. A lone appender (previous batch of 1) never waits.
 * False when a rotation request cut the wait short.
 */
static bool
flusher_let_batch_grow(struct store *s)
{
	size_t target = s->last_batch_n < s->opt.max_batch ? s->last_batch_n : s->opt.max_batch;
	uint64_t deadline;

	if (s->opt.max_delay_us == 0 || s->pending.n >= target || s->closing)
		return true;
	deadline = stock_now_ns() + (uint64_t)s->opt.max_delay_us * 1000ULL;
	s->flusher_idle = true;
	s->want = target;
	while (s->pending.n < target && !s->closing && s->rot != ROT_REQ &&
	    stock_now_ns() < deadline)
		util_cond_wait_until(&s->work_cv, &s->mu, deadline);
	s->flusher_idle = false;
	return s->rot != ROT_REQ;
}

/* Seal, write and sync the batch (mu not held). 0 or STOCK_ESYS (logged). */
static int
write_batch(struct store *s, uint32_t batch_no, uint64_t *fsyncs)
{
	struct qbuf *b = &s->batch;
	const char *what = NULL;
	size_t i, off;
	int err = 0;

	for (i = 0, off = 0; i < b->n; off += b->meta[i].len, i++)
		store__rec_seal(b->bytes + off, b->meta[i].bson_crc, batch_no,
		    i + 1 == b->n ? REC_FLAG_END : 0);
	ASSERT(off == b->nbytes);
	if (s->needs_truncate && journal_cut(s, fsyncs) != 0) {
		what = "cutting back the failed batch";
		err = errno;
	}
	if (what == NULL &&
	    store__io_write_all(s, STORE_IO_JOURNAL, s->jfd, b->bytes, b->nbytes, s->joff) != 0) {
		what = "write";
		err = errno;
		s->needs_truncate = true;
	}
	if (what == NULL) {
		(*fsyncs)++;
		if (store__io_sync(s, STORE_IO_JOURNAL, s->jfd) != 0) {
			what = "fdatasync";
			err = errno;
			s->needs_truncate = true;
		}
	}
	if (what == NULL)
		return 0;
	{
		char name[JOURNAL_NAME_MAX];

		store__rec_journal_name(name, sizeof name, s->gen);
		log_error("store",
		    "%s/%s: %s failed at offset %lld: %s; a batch of %zu records is not durable",
		    s->dir, name, what, (long long)s->joff, strerror(err), b->n);
	}
	return STOCK_ESYS;
}

/* Take the next batch, write it, settle it, wake its appenders (mu held). */
static void
flusher_commit_one(struct store *s)
{
	uint64_t fsyncs = 0;
	uint32_t batch_no;
	int rc;
	size_t take = s->pending.n < s->opt.max_batch ? s->pending.n : s->opt.max_batch, i, nkv = 0, n;

	/* Never split a unit (store_commit): the batch may grow past max_batch. */
	while (!s->pending.meta[take - 1].unit_end) {
		ASSERT(take < s->pending.n); /* units are queued whole */
		take++;
	}
	take_batch(s, take);
	for (i = 0; i < s->batch.n; i++)
		nkv += s->batch.meta[i].kv != NULL;
	if (doc_index_reserve(&s->idx, s->batch.n - nkv) != 0 ||
	    store__kv_reserve(&s->kvx, nkv) != 0) {
		/* Could not index it once durable: do not write it at all. */
		complete_batch(s, STOCK_ENOMEM, 0);
		pthread_mutex_unlock(&s->mu);
		wake_batch(s, STOCK_ENOMEM);
		pthread_mutex_lock(&s->mu);
		return;
	}
	batch_no = s->jbatch + 1;
	s->batch_busy = true;
	pthread_mutex_unlock(&s->mu);

	rc = write_batch(s, batch_no, &fsyncs);

	pthread_mutex_lock(&s->mu);
	s->st.fsyncs += fsyncs;
	s->batch_busy = false;
	complete_batch(s, rc, batch_no);
	n = s->batch.n;
	if (s->kvx.pins > 0)
		batch_retire_losers(s, n); /* a copy may point at them */
	pthread_mutex_unlock(&s->mu);
	wake_batch(s, rc);
	batch_free_losers(s, n);
	pthread_mutex_lock(&s->mu);
}

void *
store__flusher_main(void *arg)
{
	struct store *s = arg;

	pthread_mutex_lock(&s->mu);
	for (;;) {
		if (s->rot == ROT_REQ) {
			flusher_rotate(s);
			continue;
		}
		if (s->pending.n == 0) {
			if (s->stop)
				break;
			if (s->needs_truncate && !s->closing) {
				flusher_idle_recover(s);
				continue;
			}
			s->flusher_idle = true;
			s->want = 1;
			pthread_cond_wait(&s->work_cv, &s->mu);
			s->flusher_idle = false;
			continue;
		}
		if (s->backoff_until != 0 && !s->closing && stock_now_ns() < s->backoff_until) {
			util_cond_wait_until(&s->work_cv, &s->mu, s->backoff_until);
			continue;
		}
		if (!flusher_let_batch_grow(s))
			continue;
		flusher_commit_one(s);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}
