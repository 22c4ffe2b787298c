/*
 * The embedded store's start-up: take data_dir/LOCK, load snapshot.bson
 * (any flaw is damage: it is renamed into place whole), delete the journals
 * it covers and replay the others batch by batch, telling a torn tail (cut
 * back) from a corrupt middle (refused, or skipped with opt.repair) by what
 * follows the bad record. The last journal stays open for appending.
 * docs/store.md, "Start-up".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/util.h"
#include "log.h"
#include "store/internal.h"

#define PATH_BUF 4200

/* ====================================================================== */
/* The lock                                                                */
/* ====================================================================== */

/* LOCK is held by someone else: say by whom (its pid, when it wrote one). */
static int
lock_refused(struct store *s, char *err, size_t errlen)
{
	char pid[32];
	ssize_t r;

	if (errno != EWOULDBLOCK) {
		util_seterr(err, errlen, "%s/%s: flock: %s", s->dir, LOCK_NAME, strerror(errno));
		return STOCK_ESYS;
	}
	r = pread(s->lockfd, pid, sizeof pid - 1, 0);
	pid[r > 0 ? r : 0] = '\0';
	pid[strcspn(pid, "\n")] = '\0';
	util_seterr(err, errlen,
	    "%s/%s: the data directory is in use by another store (pid %s); refusing to open",
	    s->dir, LOCK_NAME, pid[0] != '\0' ? pid : "unknown");
	return STOCK_EBUSY;
}

int
store__recover_lock(struct store *s, char *err, size_t errlen)
{
	char pid[32];
	ssize_t r;

	if (store__io_mkdir_p(s->dir) != 0) {
		util_seterr(err, errlen, "%s: cannot create the data directory: %s", s->dir,
		    strerror(errno));
		return STOCK_ESYS;
	}
	s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		util_seterr(err, errlen, "%s: cannot open the data directory: %s", s->dir,
		    strerror(errno));
		return STOCK_ESYS;
	}
	s->lockfd = openat(s->dirfd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lockfd < 0) {
		util_seterr(err, errlen, "%s/%s: cannot open: %s", s->dir, LOCK_NAME,
		    strerror(errno));
		return STOCK_ESYS;
	}
	if (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0)
		return lock_refused(s, err, errlen);
	r = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
	if (ftruncate(s->lockfd, 0) != 0 || pwrite(s->lockfd, pid, (size_t)r, 0) != r)
		log_warn("store", "%s/%s: cannot record the pid: %s", s->dir, LOCK_NAME,
		    strerror(errno));
	return 0;
}

/* ====================================================================== */
/* The snapshot                                                            */
/* ====================================================================== */

/* Reading snapshot.bson. */
struct snap_load {
	const char *path;
	const uint8_t *p;
	size_t size;
	uint64_t count;      /* records the header announces */
	uint64_t docs;       /* records loaded (SKU documents and keyed records) */
	int version;         /* format_version of the header */
	uint64_t skipped;    /* damaged regions skipped (repair) */
	uint32_t last_flags; /* flags of the last good record */
	bool meta;           /* the header record was read */
};

/* Check and apply the record at @o. REC_OK and its length in *@total, or why not. */
static enum rec_status
snap_load_one(struct store *s, struct snap_load *l, size_t o, uint64_t *jgen, size_t *total,
    const char **why)
{
	struct rec_view v;
	struct rec_item it;
	enum rec_status r = store__rec_check(l->p + o, l->size - o, &v, why);

	if (r == REC_OK && v.batch != 1) {
		r = REC_BAD;
		*why = "bad batch number";
	}
	if (r == REC_OK && o == 0) {
		if (store__rec_snap_meta_decode(&v, &l->count, jgen, &l->version, why))
			l->meta = true;
		else
			r = REC_BAD;
	} else if (r == REC_OK && !store__rec_decode(v.bson, v.len, &it, why)) {
		r = REC_BAD;
	} else if (r == REC_OK && it.is_kv && l->version < SNAP_FORMAT_VERSION) {
		/* Version 1 (or no header read: repair) snapshots hold SKU documents only. */
		r = REC_BAD;
		*why = "keyed record in a format version 1 snapshot";
	}
	if (r != REC_OK)
		return r;
	if (o != 0) {
		if ((it.is_kv ? store__kv_apply_copy(&s->kvx, it.key, it.key_len, it.version,
		                    it.value, it.value_len)
		              : doc_index_apply_all(&s->idx, &it.doc, 1)) != 0) {
			*why = NULL; /* out of memory */
			return REC_BAD;
		}
		l->docs++;
	}
	l->last_flags = v.flags;
	*total = v.total;
	return REC_OK;
}

/* Every record of the snapshot into the index; damage refused or (repair) skipped. */
static int
snap_load_records(struct store *s, struct snap_load *l, uint64_t *jgen, char *err, size_t errlen)
{
	size_t o = 0, total = 0;

	while (o < l->size) {
		struct rec_view nv;
		const char *why;
		size_t q;

		if (snap_load_one(s, l, o, jgen, &total, &why) == REC_OK) {
			o += total;
			continue;
		}
		if (why == NULL) {
			util_seterr(err, errlen, "%s: out of memory", l->path);
			return STOCK_ENOMEM;
		}
		if (!s->opt.repair) {
			util_seterr(err, errlen,
			    "%s: corrupt record at offset %zu (%s); a snapshot is renamed into place "
			    "whole, so this is damage, not a torn write: refusing to open (restore the "
			    "file, or open with repair to load its readable documents)",
			    l->path, o, why);
			return STOCK_EINVAL;
		}
		q = store__rec_scan_valid(l->p, l->size, o + 1, true, 0, &nv);
		ASSERT(q > o);
		log_warn("store", "%s: repair: skipped %zu unreadable bytes at offset %zu (%s)",
		    l->path, q - o, o, why);
		s->st.corrupt_skipped++;
		s->repaired = true;
		l->skipped++;
		o = q;
	}
	return 0;
}

/* A snapshot without damage must also be whole: header, count, END. */
static int
snap_check_whole(struct store *s, struct snap_load *l, char *err, size_t errlen)
{
	if (l->skipped > 0 || (l->meta && l->docs == l->count && (l->last_flags & REC_FLAG_END)))
		return 0;
	if (!s->opt.repair) {
		util_seterr(err, errlen,
		    "%s: incomplete snapshot: %" PRIu64 " documents of %" PRIu64
		    " announced, %zu bytes%s; refusing to open (restore the file, or open "
		    "with repair)",
		    l->path, l->docs, l->count, l->size, l->meta ? "" : ", no header");
		return STOCK_EINVAL;
	}
	log_warn("store", "%s: repair: incomplete snapshot (%" PRIu64 " of %" PRIu64
	                  " documents); loaded what is there",
	    l->path, l->docs, l->count);
	s->st.corrupt_skipped++;
	s->repaired = true;
	l->skipped++;
	return 0;
}

/* Load snapshot.bson into the index; *jgen: first journal it does not cover. */
static int
load_snapshot(struct store *s, uint64_t *jgen, char *err, size_t errlen)
{
	char path[PATH_BUF];
	struct snap_load l;
	int fd, rc;

	*jgen = 0;
	memset(&l, 0, sizeof l);
	snprintf(path, sizeof path, "%s/%s", s->dir, SNAP_NAME);
	l.path = path;
	fd = openat(s->dirfd, SNAP_NAME, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		util_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return STOCK_ESYS;
	}
	if (store__io_map(fd, &l.p, &l.size) != 0) {
		util_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		close(fd);
		return STOCK_ESYS;
	}
	rc = snap_load_records(s, &l, jgen, err, errlen);
	if (rc == 0)
		rc = snap_check_whole(s, &l, err, errlen);
	if (l.p != NULL)
		munmap((void *)l.p, l.size);
	close(fd);
	if (rc == 0) {
		s->have_snapshot = true;
		s->st.replayed_records += l.docs;
		if (l.skipped > 0 && !l.meta)
			*jgen = 0; /* unknown: replay every journal there is */
	}
	return rc;
}

/* ====================================================================== */
/* Journal replay                                                          */
/* ====================================================================== */

/* Replaying one journal file. */
struct replay {
	const char *path;
	const uint8_t *p;
	size_t size;
	size_t o;           /* next record */
	size_t batch_start; /* end of the last whole batch */
	size_t cut;         /* where to cut the file (SIZE_MAX: nothing to cut) */
	size_t bad_at;      /* the record that made it a torn tail */
	const char *cut_why;
	struct rec_item *bd; /* readable records of the unfinished batch (pointers into p) */
	size_t bn, bcap;
	uint32_t last;      /* number of the last whole batch */
	uint32_t cur;       /* number of the batch being read */
	bool in_batch;
	uint64_t applied;   /* records applied to the index */
};

/* Apply the readable records of the current batch. 0 or STOCK_ENOMEM. */
static int
replay_apply(struct store *s, struct replay *r, char *err, size_t errlen)
{
	for (size_t i = 0; i < r->bn; i++) {
		const struct rec_item *it = &r->bd[i];

		if ((it->is_kv ? store__kv_apply_copy(&s->kvx, it->key, it->key_len, it->version,
		                     it->value, it->value_len)
		               : doc_index_apply_all(&s->idx, &it->doc, 1)) != 0) {
			util_seterr(err, errlen, "%s: out of memory", r->path);
			return STOCK_ENOMEM;
		}
	}
	r->applied += r->bn;
	r->bn = 0;
	return 0;
}

/* A good record of the expected batch: keep it; its batch is applied at END. */
static int
replay_good(struct store *s, struct replay *r, const struct rec_view *v,
    const struct rec_item *doc, char *err, size_t errlen)
{
	if (r->bn == r->bcap) {
		size_t cap = r->bcap ? r->bcap * 2 : 64;
		struct rec_item *nd = realloc(r->bd, cap * sizeof *nd);

		if (nd == NULL) {
			util_seterr(err, errlen, "%s: out of memory", r->path);
			return STOCK_ENOMEM;
		}
		r->bd = nd;
		r->bcap = cap;
	}
	r->bd[r->bn++] = *doc;
	r->in_batch = true;
	r->cur = v->batch;
	r->o += v->total;
	if (v->flags & REC_FLAG_END) {
		int rc = replay_apply(s, r, err, errlen);

		if (rc != 0)
			return rc;
		r->last = r->cur;
		r->in_batch = false;
		r->batch_start = r->o;
	}
	return 0;
}

/*
 * A bad record at r->o, part of batch @expect. Batches are written one after
 * the other, each only once the previous one is synced: a valid record of a
 * later batch means this one was complete on disk and has been damaged since.
 * Nothing later: a torn tail. Returns 0 to go on (repaired), 1 for a torn
 * tail (r->cut set), STOCK_EINVAL (corrupt middle) or STOCK_ENOMEM.
 */
static int
replay_bad(struct store *s, struct replay *r, uint32_t expect, const char *why, char *err,
    size_t errlen)
{
	struct rec_view nv;
	size_t q;
	int rc;

	for (q = r->o + 1;; q++) {
		q = store__rec_scan_valid(r->p, r->size, q, true, 0, &nv);
		if (q == r->size || store__batch_after(nv.batch, expect))
			break;
	}
	if (q == r->size) {
		ASSERT(r->batch_start <= r->o);
		r->cut = r->batch_start;
		r->bad_at = r->o;
		r->cut_why = why;
		return 1;
	}
	if (!s->opt.repair) {
		util_seterr(err, errlen,
		    "%s: corrupt record at offset %zu (%s), followed by valid records (batch "
		    "%" PRIu32 " at offset %zu): the journal is damaged in the middle; refusing "
		    "to open (restore the file, or open with repair to skip the damage)",
		    r->path, r->o, why, nv.batch, q);
		return STOCK_EINVAL;
	}
	/* Repair: the damaged batch was committed; keep what is readable of it. */
	if ((rc = replay_apply(s, r, err, errlen)) != 0)
		return rc;
	q = store__rec_scan_valid(r->p, r->size, r->o + 1, false, expect, &nv);
	ASSERT(q > r->o && q < r->size); /* the later batch found above qualifies */
	log_warn("store", "%s: repair: skipped %zu unreadable bytes at offset %zu (%s)", r->path,
	    q - r->o, r->o, why);
	s->st.corrupt_skipped++;
	s->repaired = true;
	r->o = q;
	r->in_batch = true;
	r->cur = nv.batch;
	return 0;
}

/* Every record of the journal, in order. 0 (r->cut set for a torn tail) or an error. */
static int
replay_records(struct store *s, struct replay *r, char *err, size_t errlen)
{
	while (r->o < r->size) {
		struct rec_view v;
		struct rec_item doc;
		const char *why;
		uint32_t expect = r->in_batch ? r->cur : r->last + 1;
		enum rec_status st = store__rec_check(r->p + r->o, r->size - r->o, &v, &why);
		int rc;

		if (st == REC_OK && !store__rec_decode(v.bson, v.len, &doc, &why))
			st = REC_BAD;
		if (st == REC_OK && v.batch != expect) {
			st = REC_BAD;
			why = "batch number out of sequence";
		}
		if (st == REC_OK)
			rc = replay_good(s, r, &v, &doc, err, errlen);
		else
			rc = replay_bad(s, r, expect, why, err, errlen);
		if (rc == 1)
			return 0; /* torn tail */
		if (rc != 0)
			return rc;
	}
	if (r->in_batch) {
		r->cut = r->batch_start;
		r->bad_at = r->size;
		r->cut_why = "the last batch has no END record";
	}
	return 0;
}

/*
 * Replay one journal file into the index, batch by batch. Cuts a torn tail;
 * refuses (or, with repair, skips) a corrupt middle. @keep: this is the last
 * journal, which stays open for appending.
 */
static int
replay_journal(struct store *s, uint64_t gen, bool keep, char *err, size_t errlen)
{
	char name[JOURNAL_NAME_MAX], path[PATH_BUF];
	struct replay r;
	int fd, rc;

	memset(&r, 0, sizeof r);
	r.cut = SIZE_MAX;
	store__rec_journal_name(name, sizeof name, gen);
	snprintf(path, sizeof path, "%s/%s", s->dir, name);
	r.path = path;
	fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0 || store__io_map(fd, &r.p, &r.size) != 0) {
		util_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return STOCK_ESYS;
	}
	rc = replay_records(s, &r, err, errlen);
	if (rc == 0 && r.cut != SIZE_MAX) {
		ASSERT(r.cut <= r.size);
		log_warn("store", "%s: torn tail at offset %zu (%s): cut %zu bytes from offset %zu "
		                  "(an unfinished batch, never acknowledged; %zu readable records dropped)",
		    path, r.bad_at, r.cut_why, r.size - r.cut, r.cut, r.bn);
		s->st.torn_bytes_cut += r.size - r.cut;
	}
	free(r.bd);
	if (r.p != NULL)
		munmap((void *)r.p, r.size);
	if (rc == 0 && r.cut != SIZE_MAX &&
	    (store__io_ftruncate(s, STORE_IO_JOURNAL, fd, (off_t)r.cut) != 0 ||
	        store__io_sync(s, STORE_IO_JOURNAL, fd) != 0)) {
		util_seterr(err, errlen, "%s: cannot cut the torn tail at offset %zu: %s", path,
		    r.cut, strerror(errno));
		rc = STOCK_ESYS;
	}
	if (rc != 0 || !keep) {
		close(fd);
	} else {
		s->jfd = fd;
		s->joff = (off_t)(r.cut != SIZE_MAX ? r.cut : r.size);
		s->jbatch = r.last;
		s->gen = gen;
	}
	if (rc == 0) {
		s->st.replayed_records += r.applied;
		s->since_snap += r.applied;
	}
	return rc;
}

/* ====================================================================== */
/* The directory                                                           */
/* ====================================================================== */

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Generations of the journal files in the directory, ascending. */
static int
list_journals(struct store *s, uint64_t **out, size_t *n)
{
	DIR *d = opendir(s->dir);
	struct dirent *e;
	size_t cap = 0;

	*out = NULL;
	*n = 0;
	if (d == NULL)
		return STOCK_ESYS;
	while ((e = readdir(d)) != NULL) {
		uint64_t gen;

		if (!store__rec_journal_parse(e->d_name, &gen))
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
		(*out)[(*n)++] = gen;
	}
	closedir(d);
	if (*n > 1)
		qsort(*out, *n, sizeof **out, cmp_u64);
	return 0;
}

/* No journal left to append to: create the one after everything seen. */
static int
create_journal(struct store *s, uint64_t after_gen, uint64_t snap_gen, char *err, size_t errlen)
{
	char name[JOURNAL_NAME_MAX];
	uint64_t gen = after_gen + 1 > snap_gen ? after_gen + 1 : snap_gen;

	if (gen == 0)
		gen = 1;
	store__rec_journal_name(name, sizeof name, gen);
	s->jfd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (s->jfd < 0 || store__io_sync(s, STORE_IO_DIR, s->dirfd) != 0) {
		util_seterr(err, errlen, "%s/%s: cannot create the journal: %s", s->dir, name,
		    strerror(errno));
		return STOCK_ESYS;
	}
	s->gen = gen;
	s->joff = 0;
	s->jbatch = 0;
	s->first_gen = gen;
	return 0;
}

int
store__recover_load(struct store *s, char *err, size_t errlen)
{
	uint64_t snap_gen, *gens;
	size_t n, i;
	char name[JOURNAL_NAME_MAX];
	int rc;

	if (unlinkat(s->dirfd, SNAP_TMP_NAME, 0) == 0)
		log_info("store", "%s/%s: removed an unfinished snapshot", s->dir, SNAP_TMP_NAME);
	if ((rc = doc_index_reserve(&s->idx, 0)) != 0 || (rc = store__kv_reserve(&s->kvx, 0)) != 0)
		return rc;
	if ((rc = load_snapshot(s, &snap_gen, err, errlen)) != 0)
		return rc;
	if ((rc = list_journals(s, &gens, &n)) != 0) {
		util_seterr(err, errlen, "%s: cannot list the journals", s->dir);
		return rc;
	}
	s->first_gen = 0;
	for (i = 0; i < n; i++) {
		ASSERT(i == 0 || gens[i] > gens[i - 1]); /* distinct names, sorted */
		if (s->have_snapshot && gens[i] < snap_gen) {
			store__rec_journal_name(name, sizeof name, gens[i]);
			if (unlinkat(s->dirfd, name, 0) == 0)
				log_info("store", "%s/%s: removed: covered by the snapshot", s->dir, name);
			continue;
		}
		if ((rc = replay_journal(s, gens[i], i + 1 == n, err, errlen)) != 0) {
			free(gens);
			return rc;
		}
		if (s->first_gen == 0)
			s->first_gen = gens[i];
	}
	if (s->jfd < 0)
		rc = create_journal(s, n > 0 ? gens[n - 1] : 0, snap_gen, err, errlen);
	free(gens);
	return rc;
}
