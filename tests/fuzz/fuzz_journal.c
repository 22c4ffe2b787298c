/*
 * libFuzzer target: recovery of the embedded store from arbitrary files
 * (store/recovery.c, record.c, index.c; the format is docs/store.md).
 *
 * Input: one flag byte, then the file bytes. Flags:
 *   bits 0-1  what the bytes are: 0 a journal (journal-…01.jnl), 1 a
 *             snapshot (snapshot.bson), 2 a snapshot then journal 1, 3 two
 *             journals (1 and 2); for 2 and 3 the next two bytes (LE) give
 *             the length of the first file (modulo what is left)
 *   bit 2     open with opt.repair
 *   bit 3     reseal: before writing, every record header found walking the
 *             bytes gets the right CRC-32C, so the fuzzer gets past the
 *             checksum into batch numbers, flags and BSON documents
 *   bit 4     the first store_close writes no final snapshot
 *   bit 5     append one durable document (and, in the same store_commit,
 *             one keyed record) after the open
 * The files go into a fresh directory under /dev/shm (tmpfs) and store_open
 * runs on it (no snapshot thread, STORE_NO_DELAY). Properties, beyond "no
 * crash, no leak" under ASan + UBSan:
 *   1. A refusal is STOCK_EINVAL with a non-empty message; with repair the
 *      open never refuses; a clean input (every byte a valid record, batches
 *      in sequence and complete, a whole snapshot) is never refused.
 *   2. Every recovered document (store_foreach) satisfies sku_doc_check, its
 *      SKU is unique, store_get returns the same, and it is (SKU, stock,
 *      sold, held, version) of a record that is in the files with a valid
 *      checksum: recovery never makes up a state. Every recovered keyed
 *      record (store_kv_foreach) has a key of 1..STORE_KEY_MAX bytes of
 *      UTF-8 without NUL, unique, a valid value (docs/store.md: one that
 *      bson_validate accepts, and more), store_kv_get returns the same, and it is
 *      (key, version, value) of a keyed record in the files.
 *   3. Max version wins, checked against a reference reader written here
 *      from docs/store.md (own CRC-32C, own framing and batch rules, own
 *      exact record decoding): every record of a complete batch before the
 *      first damage (of a whole snapshot) is matched or beaten by the
 *      recovered state (SKU: higher version, then sold, stock, held; key:
 *      higher version, then a delete, the longer value, the larger value; a
 *      key absent must have a delete in the files that beats the record);
 *      for a clean input the recovered sets are exactly the live winners.
 *   4. Recovery is idempotent: after store_close, a second open (without
 *      repair) succeeds and yields the same documents and keyed records,
 *      plus the appended ones.
 *
 * Seeds: FUZZ_JOURNAL_SEEDS=DIR build/fuzz/fuzz/fuzz_journal writes journal
 * and snapshot files made by the store itself (and damaged copies) into DIR
 * as inputs, then exits (tests/fuzz/README.md).
 */
#include <bson/bson.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/doc.h"
#include "log.h"
#include "store/store.h"

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_journal: property failed: %s (line %d)\n", #c,    \
			    __LINE__);                                                        \
			cleanup(); /* abort skips atexit: leave nothing in /dev/shm */        \
			abort();                                                              \
		}                                                                             \
	} while (0)

static void cleanup(void);

#define F_MODE 3u
#define F_REPAIR 4u
#define F_RESEAL 8u
#define F_NO_SNAP 16u
#define F_APPEND 32u

#define HDR 20
#define MIN_BSON 5
#define MAX_BSON 16384
#define MAX_DOCS 4096
#define MAX_KV 4096

static char base_dir[256];
static char data_dir[300];
static bool snapshot_failed; /* the log said a repair's snapshot failed */

/* ---- a CRC-32C of our own (reflected 0x82F63B78, init and xorout ~0) ------- */

static uint32_t crc_tab[256];

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_tab[i] = c;
	}
}

static uint32_t
crc_ext(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_tab[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

/* Record framing (docs/store.md): a valid header + BSON at @o, or 0. */
static size_t
ref_frame(const uint8_t *p, size_t size, size_t o, uint32_t *batch, uint32_t *flags)
{
	uint32_t len;

	if (size - o < HDR || memcmp(p + o, "LSJ1", 4) != 0)
		return 0;
	len = le32(p + o + 8);
	if (len < MIN_BSON || len > MAX_BSON || len > size - o - HDR)
		return 0;
	if (crc_ext(crc_ext(0, p + o + HDR, len), p + o + 8, 12) != le32(p + o + 4))
		return 0;
	*batch = le32(p + o + 12);
	*flags = le32(p + o + 16);
	if (*flags & ~1u)
		return 0;
	return HDR + len;
}

/* Give every record header found walking @p the right CRC (flag F_RESEAL). */
static void
reseal(uint8_t *p, size_t size)
{
	size_t o = 0;

	while (o + HDR <= size) {
		uint32_t len = le32(p + o + 8);

		if (memcmp(p + o, "LSJ1", 4) != 0 || len < MIN_BSON || len > MAX_BSON ||
		    len > size - o - HDR) {
			o++;
			continue;
		}
		put_le32(p + o + 4, crc_ext(crc_ext(0, p + o + HDR, len), p + o + 8, 12));
		o += HDR + len;
	}
}

/* A non-negative int32/int64 no larger than @max. */
static bool
ref_count(const bson_iter_t *it, uint64_t max, uint64_t *out)
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

/* A keyed record as the reference reads it (pointers into the input or @own). */
struct kvrec {
	const char *key;
	uint32_t klen;
	uint64_t version;
	const uint8_t *val; /* NULL: a delete */
	uint32_t vlen;
	uint8_t *own;       /* a copy (recovered records), freed with the set */
};

static bool
ref_key(const char *s, uint32_t n)
{
	return n >= 1 && n <= STORE_KEY_MAX && memchr(s, 0, n) == NULL &&
	    bson_utf8_validate(s, n, false);
}

/* docs/store.md's valid value, element by element (with bson_iter; depth counted from 0). */
static bool
ref_elements(bson_iter_t *it, int depth)
{
	while (bson_iter_next(it)) {
		bson_type_t t = bson_iter_type(it);
		bson_iter_t child;

		if (!bson_utf8_validate(bson_iter_key(it), bson_iter_key_len(it), false))
			return false;
		if (t == BSON_TYPE_SYMBOL || t == BSON_TYPE_CODE || t == BSON_TYPE_CODEWSCOPE ||
		    t == BSON_TYPE_REGEX || t == BSON_TYPE_DBPOINTER)
			return false;
		if (t == BSON_TYPE_UTF8) {
			uint32_t len;
			const char *v = bson_iter_utf8(it, &len);

			if (!bson_utf8_validate(v, len, false))
				return false;
		}
		if ((t == BSON_TYPE_DOCUMENT || t == BSON_TYPE_ARRAY) &&
		    (depth >= 32 || !bson_iter_recurse(it, &child) || !ref_elements(&child, depth + 1)))
			return false;
	}
	return it->err_off == 0;
}

/* A valid value: libbson's own validation, and docs/store.md's rule on top. */
static bool
ref_value(const uint8_t *p, uint32_t n)
{
	bson_t b;
	bson_iter_t it;
	size_t eoff;

	return n >= MIN_BSON && n <= STORE_VALUE_MAX && bson_init_static(&b, p, n) &&
	    bson_validate(&b, BSON_VALIDATE_UTF8, &eoff) && bson_iter_init(&it, &b) &&
	    ref_elements(&it, 0);
}

/*
 * A keyed record (docs/store.md), the iterator on its first field "k": a
 * key, then "v" (1..INT64_MAX) and exactly one of "val" (a document) or
 * "del" (true), each once, nothing else.
 */
static bool
ref_kv(bson_iter_t *it, struct kvrec *r)
{
	unsigned seen = 0;
	const char *k;
	uint32_t n;

	memset(r, 0, sizeof *r);
	if (!BSON_ITER_HOLDS_UTF8(it))
		return false;
	k = bson_iter_utf8(it, &n);
	if (!ref_key(k, n))
		return false;
	r->key = k, r->klen = n;
	while (bson_iter_next(it)) {
		const char *f = bson_iter_key(it);

		if (strcmp(f, "v") == 0 && !(seen & 1)) {
			if (!ref_count(it, (uint64_t)INT64_MAX, &r->version) || r->version == 0)
				return false;
			seen |= 1;
		} else if (strcmp(f, "val") == 0 && !(seen & 2)) {
			const uint8_t *p;

			if (!BSON_ITER_HOLDS_DOCUMENT(it))
				return false;
			bson_iter_document(it, &n, &p);
			if (!ref_value(p, n))
				return false;
			r->val = p, r->vlen = n;
			seen |= 2;
		} else if (strcmp(f, "del") == 0 && !(seen & 4)) {
			if (!BSON_ITER_HOLDS_BOOL(it) || !bson_iter_bool(it))
				return false;
			seen |= 4;
		} else {
			return false; /* unknown or repeated */
		}
	}
	return seen == 3 || seen == 5;
}

/*
 * A record's document: the first field decides. "k": a keyed record
 * (ref_kv, *is_kv set). Otherwise a stock document: valid BSON, _id a
 * string of 1..STOCK_SKU_MAX bytes of UTF-8 without NUL, stock/sold/held <=
 * STOCK_COUNT_MAX, version <= INT64_MAX, int32 or int64, held optional
 * (absent: 0); other fields ignored; a repeated _id, stock, sold, version or
 * held makes the document invalid (ambiguous).
 */
static bool
ref_record(const uint8_t *b, uint32_t len, struct sku_doc *d, struct kvrec *kv, bool *is_kv)
{
	bson_t doc;
	bson_iter_t it;
	size_t eoff;
	unsigned seen = 0;

	memset(d, 0, sizeof *d);
	*is_kv = false;
	if (!bson_init_static(&doc, b, len) || !bson_validate(&doc, BSON_VALIDATE_UTF8, &eoff) ||
	    !bson_iter_init(&it, &doc) || !bson_iter_next(&it))
		return false;
	if (strcmp(bson_iter_key(&it), "k") == 0) {
		*is_kv = true;
		return ref_kv(&it, kv);
	}
	do {
		const char *k = bson_iter_key(&it);
		unsigned bit = strcmp(k, "_id") == 0 ? 1 : strcmp(k, "stock") == 0 ? 2 :
		    strcmp(k, "sold") == 0 ? 4 : strcmp(k, "version") == 0 ? 8 :
		    strcmp(k, "held") == 0 ? 16 : 0;

		if (seen & bit)
			return false;
		if (strcmp(k, "_id") == 0) {
			uint32_t n;
			const char *s;

			if (!BSON_ITER_HOLDS_UTF8(&it))
				return false;
			s = bson_iter_utf8(&it, &n);
			/* bson_validate(BSON_VALIDATE_UTF8) of Debian's libbson 1.23 lets
			   invalid UTF-8 through: check the SKU's bytes ourselves. */
			if (n == 0 || n > STOCK_SKU_MAX || memchr(s, 0, n) != NULL ||
			    !bson_utf8_validate(s, n, false))
				return false;
			memset(d->sku, 0, sizeof d->sku);
			memcpy(d->sku, s, n);
			seen |= 1;
		} else if (strcmp(k, "stock") == 0) {
			if (!ref_count(&it, STOCK_COUNT_MAX, &d->stock))
				return false;
			seen |= 2;
		} else if (strcmp(k, "sold") == 0) {
			if (!ref_count(&it, STOCK_COUNT_MAX, &d->sold))
				return false;
			seen |= 4;
		} else if (strcmp(k, "version") == 0) {
			if (!ref_count(&it, (uint64_t)INT64_MAX, &d->version))
				return false;
			seen |= 8;
		} else if (strcmp(k, "held") == 0) {
			if (!ref_count(&it, STOCK_COUNT_MAX, &d->held))
				return false;
			seen |= 16;
		}
	} while (bson_iter_next(&it));
	return (seen & 15) == 15;
}

/* The snapshot header, strictly: each of the four fields exactly once. */
static bool
ref_meta(const uint8_t *b, uint32_t len, uint64_t *count, uint64_t *jgen, int *version)
{
	bson_t doc;
	bson_iter_t it;
	unsigned seen = 0;

	if (!bson_init_static(&doc, b, len) || !bson_iter_init(&it, &doc))
		return false;
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		unsigned bit = strcmp(k, "format") == 0 ? 1 : strcmp(k, "format_version") == 0 ? 2 :
		    strcmp(k, "journal") == 0 ? 4 : strcmp(k, "count") == 0 ? 8 : 0;

		if (bit == 0)
			continue;
		if (seen & bit)
			return false;
		seen |= bit;
		if (bit == 1 && !(BSON_ITER_HOLDS_UTF8(&it) &&
		    strcmp(bson_iter_utf8(&it, NULL), "libstock-snapshot") == 0))
			return false;
		if (bit == 2 && !(BSON_ITER_HOLDS_INT32(&it) &&
		    (bson_iter_int32(&it) == 1 || bson_iter_int32(&it) == 2)))
			return false;
		if (bit == 2)
			*version = bson_iter_int32(&it);
		if (bit == 4 && !ref_count(&it, (uint64_t)INT64_MAX / 2, jgen))
			return false;
		if (bit == 8 && !ref_count(&it, (uint64_t)INT64_MAX, count))
			return false;
	}
	return seen == 15;
}

/* ---- sets of documents and keyed records ------------------------------------- */

struct docs {
	struct sku_doc d[MAX_DOCS];
	size_t n;
	struct kvrec kv[MAX_KV];
	size_t nkv;
};

static struct docs all;      /* every valid record anywhere in the files */
static struct docs bound;    /* records recovery must have applied (in file order) */
static struct docs got, again;

static void
docs_add(struct docs *s, const struct sku_doc *d)
{
	CHECK(s->n < MAX_DOCS);
	s->d[s->n++] = *d;
}

static void
kv_add(struct docs *s, const struct kvrec *r)
{
	CHECK(s->nkv < MAX_KV);
	s->kv[s->nkv++] = *r;
}

/* Forget every record of @s (freeing the copies). */
static void
docs_clear(struct docs *s)
{
	for (size_t i = 0; i < s->nkv; i++)
		free(s->kv[i].own);
	s->n = s->nkv = 0;
}

/* Cut @s back to @n documents and @nkv keyed records (no copies in bound). */
static void
docs_cut(struct docs *s, size_t n, size_t nkv)
{
	s->n = n;
	s->nkv = nkv;
}

static bool
doc_eq(const struct sku_doc *a, const struct sku_doc *b)
{
	return strcmp(a->sku, b->sku) == 0 && a->stock == b->stock && a->sold == b->sold &&
	    a->held == b->held && a->version == b->version;
}

/* Max version wins, written out again: version, then sold, stock, held. */
static bool
ref_newer(const struct sku_doc *a, const struct sku_doc *b)
{
	if (a->version != b->version)
		return a->version > b->version;
	if (a->sold != b->sold)
		return a->sold > b->sold;
	if (a->stock != b->stock)
		return a->stock > b->stock;
	return a->held > b->held;
}

static bool
kv_same_key(const struct kvrec *a, const struct kvrec *b)
{
	return a->klen == b->klen && memcmp(a->key, b->key, a->klen) == 0;
}

static bool
kv_eq(const struct kvrec *a, const struct kvrec *b)
{
	return kv_same_key(a, b) && a->version == b->version && (a->val == NULL) == (b->val == NULL) &&
	    a->vlen == b->vlen && (a->vlen == 0 || memcmp(a->val, b->val, a->vlen) == 0);
}

/* Keyed records: version, then a delete, then the longer value, then the larger. */
static bool
ref_kv_newer(const struct kvrec *a, const struct kvrec *b)
{
	if (a->version != b->version)
		return a->version > b->version;
	if ((a->val == NULL) != (b->val == NULL))
		return a->val == NULL;
	if (a->vlen != b->vlen)
		return a->vlen > b->vlen;
	return a->vlen > 0 && memcmp(a->val, b->val, a->vlen) > 0;
}

static const struct sku_doc *
docs_find(const struct docs *s, const char *sku)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->d[i].sku, sku) == 0)
			return &s->d[i];
	return NULL;
}

static struct kvrec *
kv_find(struct docs *s, const struct kvrec *key)
{
	for (size_t i = 0; i < s->nkv; i++)
		if (kv_same_key(&s->kv[i], key))
			return &s->kv[i];
	return NULL;
}

/* Decode the record at @o (framing already checked) into @s. */
static bool
ref_add(struct docs *s, const uint8_t *p, size_t o)
{
	struct sku_doc d;
	struct kvrec r;
	bool is_kv;

	if (!ref_record(p + o + HDR, le32(p + o + 8), &d, &r, &is_kv))
		return false;
	if (is_kv)
		kv_add(s, &r);
	else
		docs_add(s, &d);
	return true;
}

/* Every valid record at any offset (what repair may pick up). */
static void
ref_scan_all(const uint8_t *p, size_t size)
{
	for (size_t o = 0; o + HDR <= size; o++) {
		uint32_t batch, flags;
		size_t t = ref_frame(p, size, o, &batch, &flags);

		if (t != 0)
			(void)ref_add(&all, p, o);
	}
}

/* A journal read front to back; its complete batches go to @bound. Clean: all of it. */
static bool
ref_journal(const uint8_t *p, size_t size)
{
	size_t o = 0, first = bound.n, firstkv = bound.nkv;
	uint32_t last = 0, cur = 0;
	bool in_batch = false;

	while (o < size) {
		uint32_t batch, flags;
		size_t t = ref_frame(p, size, o, &batch, &flags);

		if (t == 0 || batch != (in_batch ? cur : last + 1) || !ref_add(&bound, p, o))
			break;
		in_batch = true;
		cur = batch;
		o += t;
		if (flags & 1) {
			last = cur;
			in_batch = false;
			first = bound.n;
			firstkv = bound.nkv;
		}
	}
	docs_cut(&bound, first, firstkv); /* drop the unfinished batch */
	return o == size && !in_batch;
}

/*
 * A snapshot: whole (every record valid, header, count, END) or nothing.
 * A format 1 snapshot holds no keyed record.
 */
static bool
ref_snapshot(const uint8_t *p, size_t size, uint64_t *jgen)
{
	size_t o = 0, first = bound.n, firstkv = bound.nkv;
	uint64_t count = 0, nrec = 0;
	uint32_t flags = 0;
	int version = 0;

	while (o < size) {
		uint32_t batch;
		size_t t = ref_frame(p, size, o, &batch, &flags);

		if (t == 0 || batch != 1)
			break;
		if (o == 0) {
			if (!ref_meta(p + HDR, le32(p + 8), &count, jgen, &version))
				break;
		} else {
			size_t nkv = bound.nkv;

			if (!ref_add(&bound, p, o) || (version == 1 && bound.nkv != nkv))
				break;
			nrec++;
		}
		o += t;
	}
	if (size > 0 && o == size && nrec == count && (flags & 1))
		return true;
	docs_cut(&bound, first, firstkv);
	return false;
}

/* ---- the directory -------------------------------------------------------------- */

static void
write_file(const char *name, const uint8_t *p, size_t n)
{
	char path[400];
	int fd;

	snprintf(path, sizeof path, "%s/%s", data_dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	CHECK(n == 0 || write(fd, p, n) == (ssize_t)n);
	close(fd);
}

static void
rm_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(dir);
}

static void
cleanup(void)
{
	if (base_dir[0] != '\0') {
		rm_dir(data_dir);
		rmdir(base_dir);
	}
}

static void
sink(void *arg, enum log_level level, const char *who, const char *msg)
{
	(void)arg, (void)level, (void)who;
	if (strstr(msg, "needs repair again") != NULL)
		snapshot_failed = true;
}

static int
collect(const struct sku_doc *d, void *arg)
{
	docs_add(arg, d);
	return 0;
}

static int
collect_kv(const char *key, size_t klen, uint64_t version, const uint8_t *val, size_t vlen,
    void *arg)
{
	struct kvrec r = { 0 };

	CHECK(klen <= STORE_KEY_MAX && vlen <= STORE_VALUE_MAX);
	r.own = malloc(klen + vlen + 1);
	CHECK(r.own != NULL);
	memcpy(r.own, key, klen);
	memcpy(r.own + klen, val, vlen);
	r.key = (const char *)r.own, r.klen = (uint32_t)klen;
	r.val = r.own + klen, r.vlen = (uint32_t)vlen;
	r.version = version;
	kv_add(arg, &r);
	return 0;
}

/* store_foreach and store_kv_foreach into @out, with the checks of property 2. */
static void
recovered(store_t *st, struct docs *out)
{
	static uint8_t buf[STORE_VALUE_MAX];

	docs_clear(out);
	CHECK(store_foreach(st, collect, out) == 0);
	for (size_t i = 0; i < out->n; i++) {
		struct sku_doc g;

		if (sku_doc_check(&out->d[i]) != 0)
			fprintf(stderr, "fuzz_journal: recovered an invalid document (_id \"%s\")\n",
			    out->d[i].sku);
		CHECK(sku_doc_check(&out->d[i]) == 0);
		for (size_t k = 0; k < i; k++)
			CHECK(strcmp(out->d[k].sku, out->d[i].sku) != 0);
		CHECK(store_get(st, out->d[i].sku, &g) == 0 && doc_eq(&g, &out->d[i]));
	}
	CHECK(store_kv_foreach(st, NULL, 0, collect_kv, out) == 0);
	for (size_t i = 0; i < out->nkv; i++) {
		const struct kvrec *r = &out->kv[i];
		size_t len = 0;
		uint64_t v = 0;

		CHECK(ref_key(r->key, r->klen));
		CHECK(r->val != NULL && ref_value(r->val, r->vlen));
		CHECK(r->version >= 1 && r->version <= (uint64_t)INT64_MAX);
		for (size_t k = 0; k < i; k++)
			CHECK(!kv_same_key(&out->kv[k], r));
		CHECK(store_kv_get(st, r->key, r->klen, buf, sizeof buf, &len, &v) == 0);
		CHECK(v == r->version && len == r->vlen && memcmp(buf, r->val, len) == 0);
	}
}

static bool
same_set(struct docs *a, struct docs *b)
{
	if (a->n != b->n || a->nkv != b->nkv)
		return false;
	for (size_t i = 0; i < a->n; i++) {
		const struct sku_doc *o = docs_find(b, a->d[i].sku);
		if (o == NULL || !doc_eq(o, &a->d[i]))
			return false;
	}
	for (size_t i = 0; i < a->nkv; i++) {
		const struct kvrec *o = kv_find(b, &a->kv[i]);
		if (o == NULL || !kv_eq(o, &a->kv[i]))
			return false;
	}
	return true;
}

/* Property 3 for keyed records: @got against the records @bound must reflect. */
static void
check_kv_bound(bool clean)
{
	for (size_t i = 0; i < bound.nkv; i++) {
		const struct kvrec *b = &bound.kv[i];
		const struct kvrec *g = kv_find(&got, b);

		if (g != NULL) {
			CHECK(!ref_kv_newer(b, g)); /* beaten or matched */
			CHECK(b->val != NULL || g->version > b->version);
			continue;
		}
		/* Absent: a delete in the files beats it (or is it). */
		{
			bool del = false;

			for (size_t k = 0; k < all.nkv && !del; k++)
				del = all.kv[k].val == NULL && kv_same_key(&all.kv[k], b) &&
				    (kv_eq(&all.kv[k], b) || ref_kv_newer(&all.kv[k], b));
			CHECK(del);
		}
	}
	if (!clean)
		return;
	/* Clean: exactly the live winners of the bound records. */
	for (size_t i = 0; i < bound.nkv; i++) {
		const struct kvrec *w = &bound.kv[i];

		for (size_t k = 0; k < bound.nkv; k++)
			if (kv_same_key(&bound.kv[k], w) && ref_kv_newer(&bound.kv[k], w))
				w = &bound.kv[k];
		if (w->val == NULL)
			CHECK(kv_find(&got, w) == NULL);
		else
			CHECK(kv_find(&got, w) != NULL && kv_eq(kv_find(&got, w), w));
	}
	for (size_t i = 0; i < got.nkv; i++)
		CHECK(kv_find(&bound, &got.kv[i]) != NULL);
}

static void
run(const uint8_t *data, size_t size)
{
	uint8_t flags = data[0], *buf;
	size_t split = 0;
	unsigned mode = flags & F_MODE;
	const uint8_t *f1, *f2 = NULL;
	size_t n1, n2 = 0;
	bool clean = true, refuse_ok;
	uint64_t jgen = 0;
	struct store_options opt = { 0 };
	store_t *st;
	char err[1024];
	int rc;

	data++, size--;
	if (mode >= 2) {
		if (size < 2)
			return;
		split = (size_t)data[0] | (size_t)data[1] << 8;
		data += 2, size -= 2;
		split %= size + 1;
	} else {
		split = size;
	}
	buf = malloc(size + 1);
	CHECK(buf != NULL);
	memcpy(buf, data, size);
	f1 = buf, n1 = split;
	if (mode >= 2)
		f2 = buf + split, n2 = size - split;
	if (flags & F_RESEAL) {
		reseal(buf, n1);
		reseal(buf + split, size - split);
	}
	docs_cut(&all, 0, 0);
	docs_cut(&bound, 0, 0);
	ref_scan_all(f1, n1);
	if (f2 != NULL)
		ref_scan_all(f2, n2);

	CHECK(mkdir(data_dir, 0700) == 0);
	switch (mode) {
	case 0: /* one journal */
		write_file("journal-0000000000000001.jnl", f1, n1);
		clean = ref_journal(f1, n1);
		break;
	case 1: /* one snapshot */
		write_file("snapshot.bson", f1, n1);
		clean = ref_snapshot(f1, n1, &jgen);
		break;
	case 2: /* a snapshot, then journal 1 (deleted when the snapshot covers it) */
		write_file("snapshot.bson", f1, n1);
		write_file("journal-0000000000000001.jnl", f2, n2);
		clean = ref_snapshot(f1, n1, &jgen);
		if (clean && jgen <= 1)
			clean = ref_journal(f2, n2);
		break;
	case 3: /* journals 1 and 2, replayed in order */
		write_file("journal-0000000000000001.jnl", f1, n1);
		write_file("journal-0000000000000002.jnl", f2, n2);
		clean = ref_journal(f1, n1);
		clean = ref_journal(f2, n2) && clean;
		break;
	}

	opt.data_dir = data_dir;
	opt.repair = (flags & F_REPAIR) != 0;
	opt.no_close_snapshot = (flags & F_NO_SNAP) != 0;
	opt.max_delay_us = STORE_NO_DELAY;
	opt.snapshot_every = 0;
	snapshot_failed = false;
	err[0] = '\0';
	rc = store_open(&st, &opt, err, sizeof err);
	/* 1: refused only for damage, with a message; never with repair or when clean. */
	refuse_ok = !opt.repair && !clean;
	if (rc != 0) {
		if (rc != STOCK_EINVAL || err[0] == '\0' || !refuse_ok)
			fprintf(stderr, "fuzz_journal: store_open: %d (%s): %s\n", rc,
			    stock_strerror(rc), err);
		CHECK(st == NULL);
		CHECK(rc == STOCK_EINVAL && err[0] != '\0');
		CHECK(refuse_ok);
		goto out;
	}
	/* 2: valid, unique, readable, and made of records that are in the files. */
	recovered(st, &got);
	for (size_t i = 0; i < got.n; i++) {
		bool found = false;
		for (size_t k = 0; k < all.n && !found; k++)
			found = doc_eq(&all.d[k], &got.d[i]);
		if (!found)
			fprintf(stderr, "fuzz_journal: recovered {_id: \"%s\", stock: %" PRIu64
			    ", sold: %" PRIu64 ", version: %" PRIu64 "} is in no record\n",
			    got.d[i].sku, got.d[i].stock, got.d[i].sold, got.d[i].version);
		CHECK(found);
	}
	/* 3: max version wins. */
	for (size_t i = 0; i < bound.n; i++) {
		const struct sku_doc *g = docs_find(&got, bound.d[i].sku);
		CHECK(g != NULL && !ref_newer(&bound.d[i], g));
	}
	if (clean) {
		for (size_t i = 0; i < got.n; i++) {
			bool won = false;
			for (size_t k = 0; k < bound.n && !won; k++)
				won = doc_eq(&bound.d[k], &got.d[i]);
			CHECK(won);
		}
	}
	/* 2 for keyed records: each is one in the files. */
	for (size_t i = 0; i < got.nkv; i++) {
		bool found = false;
		for (size_t k = 0; k < all.nkv && !found; k++)
			found = kv_eq(&all.kv[k], &got.kv[i]);
		CHECK(found);
	}
	check_kv_bound(clean);
	if (flags & F_APPEND) {
		struct sku_doc a = { .stock = 7, .sold = 3, .version = 1 }, want;
		struct sku_doc *e = got.n > 0 ? &got.d[0] : NULL;
		static const uint8_t val[] = { 12, 0, 0, 0, 0x10, 'n', 0, 1, 0, 0, 0, 0 };
		char key[STORE_KEY_MAX];
		struct store_kv kv = { key, 11, 1, val, sizeof val };
		struct kvrec mine = { 0 };
		bool must = false;
		const struct kvrec *r;

		memcpy(key, "fuzz/append", 11);
		if (e != NULL && e->version < (uint64_t)INT64_MAX) {
			a = *e;
			a.version++;
		} else {
			snprintf(a.sku, sizeof a.sku, "fuzz:append");
			e = (struct sku_doc *)docs_find(&got, a.sku);
		}
		want = e == NULL || ref_newer(&a, e) ? a : *e;
		if (got.nkv > 0 && got.kv[0].version < (uint64_t)INT64_MAX) {
			/* A live key: one version up must win. */
			memcpy(key, got.kv[0].key, got.kv[0].klen);
			kv.key_len = got.kv[0].klen;
			kv.version = got.kv[0].version + 1;
			must = true;
		}
		CHECK(store_commit(st, &a, 1, &kv, 1, true) == 0);
		mine.key = key, mine.klen = (uint32_t)kv.key_len, mine.version = kv.version;
		mine.val = val, mine.vlen = sizeof val;
		recovered(st, &got);
		CHECK(docs_find(&got, a.sku) != NULL && doc_eq(docs_find(&got, a.sku), &want));
		r = kv_find(&got, &mine);
		/* A fresh key may have lost to a delete in the files. */
		CHECK(must ? r != NULL && kv_eq(r, &mine) : r == NULL || kv_eq(r, &mine) ||
		    ref_kv_newer(r, &mine));
	}
	store_close(st);

	/* 4: the second open sees the same state, cleanly. */
	opt.repair = snapshot_failed;
	opt.no_close_snapshot = true;
	rc = store_open(&st, &opt, err, sizeof err);
	if (rc != 0)
		fprintf(stderr, "fuzz_journal: second store_open: %d: %s\n", rc, err);
	CHECK(rc == 0);
	recovered(st, &again);
	CHECK(same_set(&got, &again));
	store_close(st);
out:
	rm_dir(data_dir);
	docs_clear(&got);
	docs_clear(&again);
	free(buf);
}

/* ---- seeds: files the store writes itself ------------------------------------ */

static uint8_t *
slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *p;
	long sz;

	CHECK(f != NULL);
	fseek(f, 0, SEEK_END);
	sz = ftell(f);
	fseek(f, 0, SEEK_SET);
	p = malloc((size_t)sz + 1);
	CHECK(p != NULL && fread(p, 1, (size_t)sz, f) == (size_t)sz);
	fclose(f);
	*n = (size_t)sz;
	return p;
}

static void
seed(const char *out, const char *name, uint8_t flags, const uint8_t *a, size_t na,
    const uint8_t *b, size_t nb)
{
	char path[4200];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", out, name);
	f = fopen(path, "wb");
	CHECK(f != NULL);
	fputc(flags, f);
	if ((flags & F_MODE) >= 2) {
		fputc((int)(na & 0xff), f);
		fputc((int)(na >> 8 & 0xff), f);
	}
	fwrite(a, 1, na, f);
	if (b != NULL)
		fwrite(b, 1, nb, f);
	fclose(f);
}

/* Fill a store the ordinary way; leaves a journal (and a snapshot when @snap). */
static void
make_store(int ndocs, bool snap)
{
	struct store_options opt = { .data_dir = data_dir, .max_delay_us = STORE_NO_DELAY,
		.no_close_snapshot = !snap };
	store_t *st;
	char err[512];
	static const char *const skus[] = { "OneStock:Db", "NVDA", "TSLA", "AMD",
		"\xc3\xa9t\xc3\xa9", "a.b_c:d-e" };

	CHECK(store_open(&st, &opt, err, sizeof err) == 0);
	for (int i = 0; i < ndocs; i++) {
		struct sku_doc d = { .stock = 15000 - (uint64_t)i, .sold = (uint64_t)i,
			.version = (uint64_t)i + 1 };

		snprintf(d.sku, sizeof d.sku, "%s", skus[i % 6]);
		/* Write-behind for some, so batches hold several records. */
		CHECK(store_append(st, &d, i % 3 == 0) == 0);
	}
	CHECK(store_sync(st) == 0);
	store_close(st);
}

/* A store with keyed records too: units of SKU states + keys, a delete. */
static void
make_kv_store(bool snap)
{
	struct store_options opt = { .data_dir = data_dir, .max_delay_us = STORE_NO_DELAY,
		.no_close_snapshot = !snap };
	store_t *st;
	char err[512];
	bson_t v;

	CHECK(store_open(&st, &opt, err, sizeof err) == 0);
	for (int i = 0; i < 6; i++) {
		char key[32];
		struct sku_doc d = { .stock = 100 - (uint64_t)i, .sold = (uint64_t)i,
			.held = (uint64_t)i % 3, .version = (uint64_t)i + 1 };
		struct store_kv kv[2];

		snprintf(d.sku, sizeof d.sku, "%s", i % 2 ? "NVDA" : "OneStock:Db");
		snprintf(key, sizeof key, "hold/h_%d", i % 4);
		bson_init(&v);
		bson_append_int64(&v, "qty", 3, i + 1);
		bson_append_utf8(&v, "sku", 3, d.sku, -1);
		kv[0] = (struct store_kv){ key, strlen(key), (uint64_t)i + 1, bson_get_data(&v), v.len };
		kv[1] = (struct store_kv){ "idem/abc", 8, (uint64_t)i + 1, NULL, 0 };
		if (i % 2 == 0) {
			kv[1].value = bson_get_data(&v);
			kv[1].value_len = v.len;
		}
		CHECK(store_commit(st, &d, 1, kv, i == 5 ? 1 : 2, i % 3 != 1) == 0);
		bson_destroy(&v);
	}
	CHECK(store_sync(st) == 0);
	store_close(st);
}

static void
write_seeds(const char *out)
{
	char path[400];
	uint8_t *j, *s, *j2, *bad;
	size_t nj, ns, nj2;

	/* A journal of 12 records in a few batches. */
	make_store(12, false);
	snprintf(path, sizeof path, "%s/journal-0000000000000001.jnl", data_dir);
	j = slurp(path, &nj);
	rm_dir(data_dir);
	CHECK(mkdir(data_dir, 0700) == 0);
	/* A snapshot (closing writes it) and the next, empty journal. */
	make_store(8, true);
	snprintf(path, sizeof path, "%s/snapshot.bson", data_dir);
	s = slurp(path, &ns);
	rm_dir(data_dir);
	CHECK(mkdir(data_dir, 0700) == 0);
	make_store(5, false);
	snprintf(path, sizeof path, "%s/journal-0000000000000001.jnl", data_dir);
	j2 = slurp(path, &nj2);
	rm_dir(data_dir);

	seed(out, "journal", 0, j, nj, NULL, 0);
	seed(out, "journal_repair_append", F_REPAIR | F_APPEND, j, nj, NULL, 0);
	seed(out, "journal_torn", 0, j, nj - 7, NULL, 0);
	seed(out, "journal_torn_reseal", F_RESEAL | F_NO_SNAP, j, nj - 7, NULL, 0);
	bad = malloc(nj + 16);
	memcpy(bad, j, nj);
	bad[nj / 2] ^= 0x40; /* corrupt middle */
	seed(out, "journal_corrupt_middle", 0, bad, nj, NULL, 0);
	seed(out, "journal_corrupt_middle_repair", F_REPAIR, bad, nj, NULL, 0);
	seed(out, "journal_corrupt_middle_reseal", F_RESEAL, bad, nj, NULL, 0);
	memcpy(bad, j, nj);
	memcpy(bad + nj, "LSJ1garbage-tail", 16);
	seed(out, "journal_garbage", F_APPEND, bad, nj + 16, NULL, 0);
	free(bad);
	seed(out, "journal_twice", 3, j, nj, j, nj);
	seed(out, "journals_two", 3 | F_APPEND, j2, nj2, j, nj);
	seed(out, "snapshot", 1, s, ns, NULL, 0);
	seed(out, "snapshot_truncated", 1, s, ns - 30, NULL, 0);
	seed(out, "snapshot_truncated_repair", 1 | F_REPAIR, s, ns - 30, NULL, 0);
	seed(out, "snapshot_reseal", 1 | F_RESEAL, s, ns, NULL, 0);
	seed(out, "snapshot_journal", 2 | F_APPEND, s, ns, j2, nj2);
	seed(out, "snapshot_journal_reseal", 2 | F_RESEAL | F_NO_SNAP, s, ns, j, nj);
	seed(out, "empty_journal", 0, NULL, 0, NULL, 0);
	seed(out, "empty_snapshot", 1, NULL, 0, NULL, 0);
	seed(out, "garbage", 0, (const uint8_t *)"LSJ1\0\0\0\0\xff\xff\xff\xff", 12, NULL, 0);
	free(j), free(s), free(j2);

	/* Keyed records: a journal of units, a format 2 snapshot. */
	CHECK(mkdir(data_dir, 0700) == 0);
	make_kv_store(false);
	snprintf(path, sizeof path, "%s/journal-0000000000000001.jnl", data_dir);
	j = slurp(path, &nj);
	rm_dir(data_dir);
	CHECK(mkdir(data_dir, 0700) == 0);
	make_kv_store(true);
	snprintf(path, sizeof path, "%s/snapshot.bson", data_dir);
	s = slurp(path, &ns);
	rm_dir(data_dir);
	CHECK(mkdir(data_dir, 0700) == 0);
	seed(out, "kv_journal", F_APPEND, j, nj, NULL, 0);
	seed(out, "kv_journal_torn_unit", 0, j, nj - 40, NULL, 0);
	seed(out, "kv_journal_reseal_repair", F_RESEAL | F_REPAIR, j, nj, NULL, 0);
	seed(out, "kv_snapshot", 1 | F_APPEND, s, ns, NULL, 0);
	seed(out, "kv_snapshot_journal", 2 | F_NO_SNAP, s, ns, j, nj);
	free(j), free(s);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
	const char *seeds = getenv("FUZZ_JOURNAL_SEEDS");

	(void)argc, (void)argv;
	crc_init();
	log_set_sink(sink, NULL);
	snprintf(base_dir, sizeof base_dir, "%s/fuzz_journal.XXXXXX", tmp != NULL ? tmp : "/tmp");
	CHECK(mkdtemp(base_dir) != NULL);
	snprintf(data_dir, sizeof data_dir, "%s/data", base_dir);
	atexit(cleanup);
	if (seeds != NULL) {
		CHECK(mkdir(data_dir, 0700) == 0);
		write_seeds(seeds);
		exit(0);
	}
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 65536)
		return 0; /* larger inputs would overflow the reference's fixed sets */
	run(data, size);
	return 0;
}
