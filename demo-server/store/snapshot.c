/*
 * The embedded store's snapshots: compaction of the journals. Rotate the
 * journal at a batch boundary (the flusher hands over a copy of the
 * indexes: SKU documents, live keyed records), write the copy to
 * snapshot.bson.tmp (SKU documents, then keyed records; tombstones are left
 * out and, once the snapshot is durable, purged from memory), sync, rename,
 * sync the directory, then delete the journals it covers. store_snapshot, the automatic thread
 * and store_close run the same steps, serialized by snap_mu; a failed
 * snapshot leaves everything in place. docs/store.md, "Snapshots and
 * journal rotation".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "log.h"
#include "store/internal.h"

/* Buffered writer of snapshot.bson.tmp. */
struct snap_writer {
	struct store *s;
	int fd;
	uint8_t buf[65536];
	size_t used;
	off_t off;
	const char *what; /* the step that failed, NULL while all is well */
	int err;          /* its errno */
};

static void
snap_fail(struct snap_writer *w, const char *what, int err)
{
	w->what = what;
	w->err = err;
}

static int
snap_flush(struct snap_writer *w)
{
	if (store__io_write_all(w->s, STORE_IO_SNAPSHOT, w->fd, w->buf, w->used, w->off) != 0)
		return -1;
	w->off += (off_t)w->used;
	w->used = 0;
	return 0;
}

/* Make room for one more record of up to REC_ENC_MAX bytes. */
static bool
snap_room(struct snap_writer *w)
{
	if (w->used + REC_ENC_MAX > sizeof w->buf && snap_flush(w) != 0) {
		snap_fail(w, "write", errno);
		return false;
	}
	return true;
}

/*
 * The live keyed records of the rotation's slot copy, counted; each
 * tombstone in it is marked @gen, for store__kv_purge once the snapshot is
 * durable (only the snapshot thread reads or writes purge_gen).
 */
static size_t
snap_count_live(const struct kv_copy *kv, uint64_t gen)
{
	size_t live = 0;

	for (size_t i = 0; i < kv->n; i++) {
		struct kv_entry *e = (struct kv_entry *)kv->e[i];

		if (e == NULL)
			continue;
		if (e->value_len == 0)
			e->purge_gen = gen;
		else
			live++;
	}
	return live;
}

/*
 * Header record, then one record per document, then one per live keyed
 * record (@live of them in @kv's slots), all batch 1, END on the last.
 * Format version 1 when there is no keyed record (as before they existed),
 * else 2.
 */
static void
snap_encode_all(struct snap_writer *w, const struct sku_doc *docs, size_t n,
    const struct kv_copy *kv, size_t live, uint64_t gen)
{
	size_t total = n + live, k = 0, i;
	uint32_t bcrc;
	int len;

	len = store__rec_snap_meta_encode(w->buf,
	    live > 0 ? SNAP_FORMAT_VERSION : SNAP_FORMAT_VERSION_DOCS, gen, total, &bcrc);
	if (len < 0) {
		snap_fail(w, "encode", ENOMEM);
		return;
	}
	store__rec_seal(w->buf, bcrc, 1, total == 0 ? REC_FLAG_END : 0);
	w->used = (size_t)len;
	for (i = 0; i < n; i++, k++) {
		if (!snap_room(w))
			return;
		len = store__rec_encode(&docs[i], w->buf + w->used, &bcrc);
		if (len < 0) {
			snap_fail(w, "encode", ENOMEM);
			return;
		}
		store__rec_seal(w->buf + w->used, bcrc, 1, k + 1 == total ? REC_FLAG_END : 0);
		w->used += (size_t)len;
	}
	for (i = 0; i < kv->n; i++) {
		const struct kv_entry *e = kv->e[i];
		struct store_kv r;

		if (e == NULL || e->value_len == 0)
			continue;
		ASSERT(k < total); /* the slots did not change: the copy is pinned */
		r = (struct store_kv){ store__kv_key(e), e->key_len, e->version,
			e->data + e->key_len, e->value_len };
		if (!snap_room(w))
			return;
		len = store__rec_encode_kv(&r, w->buf + w->used, &bcrc);
		if (len < 0) {
			snap_fail(w, "encode", ENOMEM);
			return;
		}
		store__rec_seal(w->buf + w->used, bcrc, 1, ++k == total ? REC_FLAG_END : 0);
		w->used += (size_t)len;
	}
	ASSERT(k == total);
	if (snap_flush(w) != 0)
		snap_fail(w, "write", errno);
}

/* Sync, close and rename the written temp file into place, sync the directory. */
static void
snap_publish(struct snap_writer *w)
{
	struct store *s = w->s;

	if (store__io_sync(s, STORE_IO_SNAPSHOT, w->fd) != 0) {
		snap_fail(w, "fdatasync", errno);
	} else if (close(w->fd) != 0) {
		w->fd = -1;
		snap_fail(w, "close", errno);
	} else if ((w->fd = -1, renameat(s->dirfd, SNAP_TMP_NAME, s->dirfd, SNAP_NAME)) != 0) {
		snap_fail(w, "rename", errno);
	} else if (store__io_sync(s, STORE_IO_DIR, s->dirfd) != 0) {
		/* The rename may or may not survive a crash: either snapshot is
		   consistent with the journals, which are still all there. */
		snap_fail(w, "fsync of the directory", errno);
	}
}

/* Write @docs and @kv as snapshot.bson: temp file, fdatasync, rename, directory fsync. */
static int
snapshot_write(struct store *s, const struct sku_doc *docs, size_t n, const struct kv_copy *kv,
    size_t live, uint64_t gen)
{
	struct snap_writer *w;
	int rc;

	if ((w = malloc(sizeof *w)) == NULL)
		return STOCK_ENOMEM;
	w->s = s;
	w->used = 0;
	w->off = 0;
	w->what = NULL;
	w->err = 0;
	w->fd = openat(s->dirfd, SNAP_TMP_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (w->fd < 0)
		snap_fail(w, "create", errno);
	if (w->what == NULL)
		snap_encode_all(w, docs, n, kv, live, gen);
	if (w->what == NULL)
		snap_publish(w);
	if (w->fd >= 0)
		close(w->fd);
	if (w->what != NULL) {
		log_warn("store", "%s/%s: snapshot %s failed: %s; the journal keeps everything", s->dir,
		    SNAP_TMP_NAME, w->what, strerror(w->err));
		unlinkat(s->dirfd, SNAP_TMP_NAME, 0);
	}
	rc = w->what == NULL ? 0 : STOCK_ESYS;
	free(w);
	return rc;
}

/* Create journal @gen and make its name durable. The fd, or -1 (logged). */
static int
snap_new_journal(struct store *s, uint64_t gen)
{
	char name[JOURNAL_NAME_MAX];
	int fd;

	store__rec_journal_name(name, sizeof name, gen);
	fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || store__io_sync(s, STORE_IO_DIR, s->dirfd) != 0) {
		log_warn("store", "%s/%s: cannot start a new journal: %s", s->dir, name,
		    strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlinkat(s->dirfd, name, 0);
		}
		return -1;
	}
	return fd;
}

/*
 * Hand journal @fd (generation @gen) to the flusher and wait until it has
 * switched to it between two batches (mu not held). On success *docs and *n are
 * the index as of the switch and *kv its live keyed records (caller frees
 * both) and the old journal is closed; on failure @fd is closed and removed.
 */
static int
snap_rotate(struct store *s, int fd, uint64_t gen, struct sku_doc **docs, size_t *n)
{
	int old_fd, rc;

	pthread_mutex_lock(&s->mu);
	ASSERT(s->rot == ROT_NONE); /* snap_mu serializes rotations */
	s->rot_fd = fd;
	s->rot_gen = gen;
	s->rot = ROT_REQ;
	pthread_cond_signal(&s->work_cv);
	while (s->rot == ROT_REQ)
		pthread_cond_wait(&s->done_cv, &s->mu);
	ASSERT(s->rot == ROT_DONE || s->rot == ROT_FAIL);
	if (s->rot == ROT_FAIL) {
		char name[JOURNAL_NAME_MAX];

		rc = s->rot_err;
		s->rot = ROT_NONE;
		pthread_mutex_unlock(&s->mu);
		close(fd);
		store__rec_journal_name(name, sizeof name, gen);
		unlinkat(s->dirfd, name, 0);
		return rc;
	}
	ASSERT(s->gen == gen && s->jfd == fd && s->rot_old_fd >= 0);
	*docs = s->rot_docs;
	*n = s->rot_n;
	old_fd = s->rot_old_fd;
	s->rot_docs = NULL;
	s->rot_old_fd = -1;
	s->rot = ROT_NONE;
	pthread_mutex_unlock(&s->mu);
	close(old_fd);
	return 0;
}

/* The snapshot covering everything before @gen_new is durable: drop those journals. */
static void
snap_drop_journals(struct store *s, uint64_t gen_new)
{
	char name[JOURNAL_NAME_MAX];

	ASSERT(s->first_gen < gen_new);
	for (uint64_t g = s->first_gen; g < gen_new; g++) {
		store__rec_journal_name(name, sizeof name, g);
		if (unlinkat(s->dirfd, name, 0) != 0 && errno != ENOENT)
			log_warn("store", "%s/%s: cannot delete: %s", s->dir, name, strerror(errno));
	}
	(void)store__io_sync(s, STORE_IO_DIR, s->dirfd); /* if lost, open deletes them */
	s->first_gen = gen_new;
}

int
store__snap_run(struct store *s, bool force)
{
	struct sku_doc *docs = NULL;
	struct kv_entry *dead = NULL;
	size_t n = 0, live = 0, slots;
	uint64_t gen_new;
	int fd, rc;

	pthread_mutex_lock(&s->snap_mu);
	pthread_mutex_lock(&s->mu);
	if (!force && s->since_snap == 0 && s->have_snapshot && s->first_gen == s->gen) {
		pthread_mutex_unlock(&s->mu);
		pthread_mutex_unlock(&s->snap_mu);
		return 0;
	}
	gen_new = s->gen + 1;
	slots = s->kvx.cap;
	pthread_mutex_unlock(&s->mu);
	/* The rotation copies the slots into rot_kv (only this thread and the
	   rotation it asks for touch it, snap_mu held): room made here, page
	   faults included, is room the flusher does not stall for. Best effort:
	   without it the flusher allocates. */
	(void)store__kv_copy_reserve(&s->rot_kv, slots + slots / 4);

	if ((fd = snap_new_journal(s, gen_new)) < 0)
		rc = STOCK_ESYS;
	else if ((rc = snap_rotate(s, fd, gen_new, &docs, &n)) == 0) {
		live = snap_count_live(&s->rot_kv, gen_new);
		rc = snapshot_write(s, docs, n, &s->rot_kv, live, gen_new);
		free(docs);
		pthread_mutex_lock(&s->mu);
		dead = store__kv_unpin(&s->kvx); /* the rotation pinned it */
		pthread_mutex_unlock(&s->mu);
	}
	if (rc == 0)
		snap_drop_journals(s, gen_new);
	pthread_mutex_lock(&s->mu);
	if (rc == 0) {
		/* The tombstones the rotation saw are in no file any more. */
		store__kv_purge(&s->kvx, gen_new);
		s->have_snapshot = true;
		s->snap_live = n + live;
		s->st.snapshots++;
	} else {
		s->st.snapshot_failures++;
	}
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->snap_mu);
	store__kv_free_list(dead);
	return rc;
}

void *
store__snap_thread_main(void *arg)
{
	struct store *s = arg;

	pthread_mutex_lock(&s->mu);
	for (;;) {
		int rc;

		while (!s->snap_req && !s->snap_stop)
			pthread_cond_wait(&s->snap_cv, &s->mu);
		if (s->snap_stop)
			break;
		pthread_mutex_unlock(&s->mu);
		rc = store__snap_run(s, false);
		pthread_mutex_lock(&s->mu);
		if (rc != 0) {
			uint64_t until = stock_now_ns() + SNAP_RETRY_NS;

			while (!s->snap_stop && stock_now_ns() < until)
				util_cond_wait_until(&s->snap_cv, &s->mu, until);
		}
		s->snap_req = false;
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}
