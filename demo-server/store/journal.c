/*
 * The embedded store's public calls (store.h): an append-only journal with
 * group commit plus periodic snapshots, in one data directory. Appenders
 * encode their records (record.c) and queue them under the store mutex, the
 * records of one store_commit back to back as a unit the flusher never
 * splits; a durable appender then sleeps on its own latch until the flusher
 * (flusher.c) has synced its batch and applied it to the indexes (SKU
 * documents, keyed records: kv.c), which store_get, store_foreach,
 * store_kv_get and store_kv_foreach read, so they see exactly what is
 * durable. This file also
 * owns the store object's life: open (options, recovery, threads) and close
 * (drain, final snapshot, stop, free). docs/store.md.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "log.h"
#include "store/internal.h"

/* --- the queue of records waiting for the disk -------------------------- */

int
store__queue_push(struct qbuf *q, const uint8_t *rec, const struct rec_meta *m)
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
	/* Sequence numbers only grow along the queue (batches are its prefixes). */
	ASSERT(q->n == 0 || q->meta[q->n - 1].seq < m->seq);
	memcpy(q->bytes + q->nbytes, rec, m->len);
	q->nbytes += m->len;
	q->meta[q->n++] = *m;
	return 0;
}

static void
queue_free(struct qbuf *q)
{
	for (size_t i = 0; i < q->n; i++)
		free(q->meta[i].kv); /* settled records own none; this is for failed opens */
	free(q->bytes);
	free(q->meta);
	memset(q, 0, sizeof *q);
}

/* --- the contract ------------------------------------------------------- */

/*
 * Take mu for a short append. The flusher holds mu only for short moments
 * (taking a batch, settling one); an appender that sleeps on the futex
 * instead of waiting those few microseconds out pays a whole scheduling
 * delay when it wakes (hundreds of microseconds on a busy machine), and a
 * checkout appender does so while holding its book's lock, stalling every
 * checkout behind it. So try for a bounded while (about 20 us) first.
 */
#define MU_SPIN_NS 20000ULL

static void
store__mu_lock_spin(struct store *s)
{
	uint64_t until = 0;

	for (unsigned i = 0;; i++) {
		if (pthread_mutex_trylock(&s->mu) == 0)
			return;
		if ((i & 63) == 63) { /* the clock every 64 tries: the spin is bounded in time */
			uint64_t now = stock_now_ns();

			if (until == 0)
				until = now + MU_SPIN_NS;
			else if (now >= until)
				break;
		}
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
	pthread_mutex_lock(&s->mu);
}

/*
 * Queue the @n records of one unit, back to back in @rec, with their
 * metadata @m (mu not held): all of them or none. 0, STOCK_EINVAL (closing),
 * STOCK_EBUSY, STOCK_ENOMEM.
 */
static int
append_queue(struct store *s, const uint8_t *rec, struct rec_meta *m, size_t n)
{
	struct qbuf *q = &s->pending;
	size_t n0, nbytes0, off = 0, i;
	bool wake;
	int rc = 0;

	store__mu_lock_spin(s);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		return STOCK_EINVAL;
	}
	/* Room for all of them; a unit above the limit only into an empty queue. */
	if (s->inflight + n > s->opt.queue_limit && s->inflight > 0) {
		s->st.queue_rejects++;
		pthread_mutex_unlock(&s->mu);
		return STOCK_EBUSY;
	}
	n0 = q->n;
	nbytes0 = q->nbytes;
	for (i = 0; i < n && rc == 0; off += m[i].len, i++) {
		m[i].seq = s->next_seq + 1 + i;
		m[i].unit_end = i + 1 == n;
		rc = store__queue_push(q, rec + off, &m[i]);
	}
	if (rc != 0) {
		q->n = n0; /* take the unit's first records back out */
		q->nbytes = nbytes0;
		pthread_mutex_unlock(&s->mu);
		return rc;
	}
	s->next_seq += n;
	s->inflight += n;
	s->st.records += n;
	wake = s->flusher_idle && q->n >= s->want;
	if (wake)
		s->flusher_idle = false; /* one signal is enough; the flusher sets it again */
	pthread_mutex_unlock(&s->mu);
	/* Signal outside mu: the woken flusher does not run straight into it. */
	if (wake)
		pthread_cond_signal(&s->work_cv);
	return 0;
}

/*
 * Queue the unit; with @w (durable) every record points at the waiter,
 * which the flusher sets once the batch is settled. *@queued: whether it
 * was queued (then the queue owns its keyed entries).
 */
static int
commit_queue(struct store *s, const uint8_t *rec, struct rec_meta *m, size_t n,
    struct store_ticket *w, bool *queued)
{
	int rc;

	if (w != NULL) {
		w->result = 0;
		stock_latch_init(&w->done, false);
		for (size_t i = 0; i < n; i++)
			m[i].w = w;
	}
	rc = append_queue(s, rec, m, n);
	*queued = rc == 0;
	if (rc != 0 && w != NULL)
		stock_latch_destroy(&w->done);
	return rc;
}

int
store_ticket_wait(struct store_ticket *w)
{
	int rc;

	/* Sleep until the flusher settled our batch; its set was its last
	   touch of w, so the caller's frame may end now. */
	rc = stock_latch_wait(&w->done, NULL);
	ASSERT(rc == 0); /* no deadline: it can only return once set */
	rc = w->result;
	stock_latch_destroy(&w->done);
	return rc;
}

int
store_append(store_t *s, const struct sku_doc *doc, bool durable)
{
	uint8_t rec[REC_DOC_ENC_MAX];
	struct rec_meta m;
	struct store_ticket w;
	bool queued;
	int rc, len;

	if (s == NULL)
		return STOCK_EINVAL;
	if ((rc = sku_doc_check(doc)) != 0)
		return rc;
	/* store_commit(s, doc, 1, NULL, 0, durable), without its heap buffer. */
	memset(&m, 0, sizeof m);
	sku_doc_normalize(&m.doc, doc);
	if ((len = store__rec_encode(&m.doc, rec, &m.bson_crc)) < 0)
		return len;
	m.len = (uint32_t)len;
	rc = commit_queue(s, rec, &m, 1, durable ? &w : NULL, &queued);
	return rc == 0 && durable ? store_ticket_wait(&w) : rc;
}

#define COMMIT_STACK_RECS 8

static int
commit(store_t *s, const struct sku_doc *docs, size_t ndocs, const struct store_kv *kv,
    size_t nkv, struct store_ticket *w)
{
	struct rec_meta m_stack[COMMIT_STACK_RECS], *m = NULL;
	uint8_t rec_stack[4096], *rec = NULL;
	size_t n = ndocs + nkv, cap = 0, off = 0, i;
	bool queued = false;
	int rc = 0, len;

	if (s == NULL || n == 0 || ndocs > STORE_COMMIT_MAX || nkv > STORE_COMMIT_MAX ||
	    n > STORE_COMMIT_MAX || (ndocs > 0 && docs == NULL) || (nkv > 0 && kv == NULL))
		return STOCK_EINVAL;
	/* Check everything before anything is allocated or queued. */
	for (i = 0; i < ndocs; i++)
		if (sku_doc_check(&docs[i]) != 0)
			return STOCK_EINVAL;
	for (i = 0; i < nkv; i++) {
		if (store__rec_kv_check(&kv[i]) != 0)
			return STOCK_EINVAL;
		/* REC_KV_BSON_MAX for this key and value; + 1 for {del: true}. */
		cap += REC_HDR + REC_KV_BSON_MAX - STORE_KEY_MAX - STORE_VALUE_MAX + kv[i].key_len +
		    kv[i].value_len + 1;
	}
	cap += ndocs * REC_DOC_ENC_MAX;
	/* A small unit (the usual one) is encoded on the stack: no allocator
	   call, whose arena lock may be held by a descheduled thread, while a
	   caller (checkout) holds its own lock around this. */
	if (n <= COMMIT_STACK_RECS) {
		memset(m_stack, 0, n * sizeof *m);
		m = m_stack;
	} else {
		m = calloc(n, sizeof *m);
	}
	rec = cap <= sizeof rec_stack ? rec_stack : malloc(cap);
	if (m == NULL || rec == NULL) {
		rc = STOCK_ENOMEM;
		goto out;
	}
	for (i = 0; i < n && rc == 0; i++) {
		if (i < ndocs) {
			sku_doc_normalize(&m[i].doc, &docs[i]);
			len = store__rec_encode(&m[i].doc, rec + off, &m[i].bson_crc);
		} else {
			const struct store_kv *k = &kv[i - ndocs];

			len = store__rec_encode_kv(k, rec + off, &m[i].bson_crc);
			if (len >= 0 && (m[i].kv = store__kv_entry_new(k->key, k->key_len, k->version,
			                     k->value, k->value_len)) == NULL)
				len = STOCK_ENOMEM;
		}
		if (len < 0) {
			rc = len;
			break;
		}
		ASSERT(off + (size_t)len <= cap); /* the bound above covers every record */
		m[i].len = (uint32_t)len;
		off += (size_t)len;
	}
	if (rc == 0)
		rc = commit_queue(s, rec, m, n, w, &queued);
	/* Once queued, the queue owns the entries (applied or freed when settled). */
	if (!queued)
		for (i = 0; i < n; i++)
			free(m[i].kv);
out:
	if (m != m_stack)
		free(m);
	if (rec != rec_stack)
		free(rec);
	return rc;
}

int
store_commit(store_t *s, const struct sku_doc *docs, size_t ndocs, const struct store_kv *kv,
    size_t nkv, bool durable)
{
	struct store_ticket w;
	int rc = commit(s, docs, ndocs, kv, nkv, durable ? &w : NULL);

	return rc == 0 && durable ? store_ticket_wait(&w) : rc;
}

int
store_commit_queued(store_t *s, const struct sku_doc *docs, size_t ndocs,
    const struct store_kv *kv, size_t nkv, struct store_ticket *t)
{
	return t == NULL ? STOCK_EINVAL : commit(s, docs, ndocs, kv, nkv, t);
}

int
store_sync(store_t *s)
{
	uint64_t target, fails;
	int rc;

	if (s == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	target = s->next_seq;
	fails = s->fail_count;
	while (s->done_seq < target && s->fail_count == fails)
		pthread_cond_wait(&s->done_cv, &s->mu);
	rc = s->fail_count == fails ? 0 : STOCK_ESYS;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int
store_get(store_t *s, const char *sku, struct sku_doc *out)
{
	struct sku_doc *slot;
	size_t n;
	int rc = STOCK_ENOENT;

	if (s == NULL || sku == NULL || out == NULL)
		return STOCK_EINVAL;
	n = strnlen(sku, STOCK_SKU_MAX + 1);
	if (n == 0 || n > STOCK_SKU_MAX)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	slot = doc_index_slot(&s->idx, sku);
	if (slot->sku[0] != '\0') {
		*out = *slot;
		rc = 0;
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int
store_foreach(store_t *s, store_foreach_fn fn, void *arg)
{
	struct sku_doc *docs;
	size_t n, i;
	int rc;

	if (s == NULL || fn == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	rc = doc_index_copy(&s->idx, &docs, &n);
	pthread_mutex_unlock(&s->mu);
	for (i = 0; rc == 0 && i < n; i++)
		rc = fn(&docs[i], arg);
	free(docs);
	return rc;
}

int
store_kv_get(store_t *s, const char *key, size_t key_len, uint8_t *buf, size_t cap, size_t *len,
    uint64_t *version)
{
	const struct kv_entry *e;
	int rc = STOCK_ENOENT;

	if (s == NULL || key == NULL || key_len == 0 || key_len > STORE_KEY_MAX || len == NULL ||
	    version == NULL || (buf == NULL && cap > 0))
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	e = store__kv_find(&s->kvx, key, key_len);
	if (e != NULL && e->value_len != 0) {
		*len = e->value_len;
		*version = e->version;
		rc = STOCK_ERANGE;
		if (cap >= e->value_len) {
			memcpy(buf, e->data + e->key_len, e->value_len);
			rc = 0;
		}
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int
store_kv_foreach(store_t *s, const char *prefix, size_t plen, store_kv_fn fn, void *arg)
{
	struct kv_copy c = { NULL, 0, 0 };
	struct kv_entry *dead;
	bool pinned;
	int rc;

	if (s == NULL || fn == NULL || (prefix == NULL && plen > 0) || plen > STORE_KEY_MAX)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	if ((pinned = (rc = store__kv_copy(&s->kvx, prefix, plen, &c)) == 0))
		store__kv_pin(&s->kvx); /* @fn may commit: what it replaces stays readable */
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; rc == 0 && i < c.n; i++) {
		const struct kv_entry *e = c.e[i];

		rc = fn(store__kv_key(e), e->key_len, e->version, e->data + e->key_len,
		    e->value_len, arg);
	}
	if (pinned) {
		pthread_mutex_lock(&s->mu);
		dead = store__kv_unpin(&s->kvx);
		pthread_mutex_unlock(&s->mu);
		store__kv_free_list(dead);
	}
	store__kv_copy_free(&c);
	return rc;
}

int
store_snapshot(store_t *s)
{
	return s == NULL ? STOCK_EINVAL : store__snap_run(s, false);
}

int
store_stats(store_t *s, struct store_stats *out)
{
	if (s == NULL || out == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&s->mu);
	*out = s->st;
	out->queue_depth = s->inflight;
	out->docs = s->idx.n;
	out->kv = s->kvx.live;
	pthread_mutex_unlock(&s->mu);
	return 0;
}

bool
store_healthy(store_t *s)
{
	return s != NULL && stock_gauge_get(&s->healthy) != 0;
}

/* --- open and close ----------------------------------------------------- */

/* Release everything; the threads are not running. */
static void
store_free(struct store *s)
{
	if (s->jfd >= 0)
		close(s->jfd);
	if (s->rot_old_fd >= 0)
		close(s->rot_old_fd);
	if (s->dirfd >= 0)
		close(s->dirfd);
	if (s->lockfd >= 0)
		close(s->lockfd); /* releases the flock */
	queue_free(&s->pending);
	queue_free(&s->batch);
	free(s->idx.slots);
	store__kv_free(&s->kvx);
	free(s->rot_docs);
	store__kv_copy_free(&s->rot_kv);
	free(s->dir);
	pthread_cond_destroy(&s->work_cv);
	pthread_cond_destroy(&s->done_cv);
	pthread_cond_destroy(&s->snap_cv);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->snap_mu);
	free(s);
}

void
store_close(store_t *s)
{
	int rc;

	if (s == NULL)
		return;
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
	/* Nothing can be accepted any more and the queue is empty: every record
	   is settled (durable, failed and told, or lost and counted). */
	ASSERT(s->inflight == 0);
	pthread_mutex_unlock(&s->mu);
	if (!s->opt.no_close_snapshot && (rc = store__snap_run(s, false)) != 0)
		log_warn("store", "%s: final snapshot failed (%s); the journal keeps everything",
		    s->dir, stock_strerror(rc));
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_cond_signal(&s->work_cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->flusher, NULL);
	if (s->st.lost_records > 0)
		log_error("store", "%s: %" PRIu64 " write-behind records were lost to I/O errors",
		    s->dir, s->st.lost_records);
	store_free(s);
}

/* Allocate the store and fill in the options with their defaults. */
static int
store_new(struct store **out, const struct store_options *opt)
{
	struct store *s = calloc(1, sizeof *s);

	*out = s;
	if (s == NULL)
		return STOCK_ENOMEM;
	s->dirfd = s->lockfd = s->jfd = s->rot_fd = s->rot_old_fd = -1;
	s->opt = *opt;
	s->opt.data_dir = NULL; /* the caller's string; s->dir is ours */
	if (s->opt.max_batch == 0)
		s->opt.max_batch = DEF_MAX_BATCH;
	if (s->opt.max_delay_us == 0)
		s->opt.max_delay_us = DEF_MAX_DELAY_US;
	else if (s->opt.max_delay_us == STORE_NO_DELAY)
		s->opt.max_delay_us = 0;
	if (s->opt.queue_limit == 0)
		s->opt.queue_limit = DEF_QUEUE_LIMIT;
	if (opt->io != NULL) {
		s->io = *opt->io;
		s->have_io = true;
	}
	s->opt.io = NULL;
	stock_gauge_init(&s->healthy, 1);
	store__kv_init(&s->kvx);
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->snap_mu, NULL);
	/* A condvar that failed to initialise is still all zeroes (calloc), which
	   glibc's pthread_cond_destroy in store_free accepts. */
	if (util_cond_init(&s->work_cv) != 0 || util_cond_init(&s->done_cv) != 0 ||
	    util_cond_init(&s->snap_cv) != 0)
		return STOCK_ENOMEM;
	if ((s->dir = strdup(opt->data_dir)) == NULL)
		return STOCK_ENOMEM;
	return 0;
}

/* Start the flusher (required) and the snapshot thread (optional). */
static int
store_start_threads(struct store *s, char *err, size_t errlen)
{
	if (pthread_create(&s->flusher, NULL, store__flusher_main, s) != 0) {
		util_seterr(err, errlen, "%s: cannot start the flusher thread", s->dir);
		return STOCK_ESYS;
	}
	s->flusher_started = true;
	if (s->opt.snapshot_every > 0) {
		if (pthread_create(&s->snapper, NULL, store__snap_thread_main, s) != 0)
			log_warn("store", "%s: cannot start the snapshot thread; snapshots only on close",
			    s->dir);
		else
			s->snapper_started = true;
	}
	return 0;
}

int
store_open(store_t **out, const struct store_options *opt, char *err, size_t errlen)
{
	struct store *s;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (out == NULL || opt == NULL || opt->data_dir == NULL || opt->data_dir[0] == '\0') {
		util_seterr(err, errlen, "store: a data directory is required");
		return STOCK_EINVAL;
	}
	if ((rc = store_new(&s, opt)) != 0) {
		if (s != NULL)
			store_free(s);
		return rc;
	}
	if ((rc = store__recover_lock(s, err, errlen)) == 0 &&
	    (rc = store__recover_load(s, err, errlen)) == 0) {
		/* What a snapshot written now would hold: the first automatic
		   one waits for as many journal records (snapshot_every at least). */
		s->snap_live = s->idx.n + s->kvx.live;
		rc = store_start_threads(s, err, errlen);
	}
	if (rc != 0) {
		store_free(s);
		return rc;
	}
	if (s->repaired) {
		rc = store__snap_run(s, true);
		log_warn("store", "%s: repaired; %s", s->dir,
		    rc == 0 ? "a fresh snapshot now covers the damaged journal"
		            : "the fresh snapshot failed, the next open needs repair again");
	}
	*out = s;
	return 0;
}
