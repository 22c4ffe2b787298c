/*
 * The on-disk format of the embedded store (docs/store.md "Record format"):
 * one framing for journal and snapshot records (a 20-byte header with magic,
 * CRC-32C, length, batch number and flags, then one BSON document), the
 * encoding and exact type checks of the two kinds of document (a SKU's
 * state, a keyed record), the snapshot header document,
 * the scan for the next valid record that recovery uses to tell a torn tail
 * from a corrupt middle, and the journal file names. Nothing here touches a
 * file or the store object: every function works on bytes in memory.
 */
#include <bson/bson.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/crc32c.h"
#include "store/internal.h"

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

void
store__rec_seal(uint8_t *rec, uint32_t bson_crc, uint32_t batch, uint32_t flags)
{
	ASSERT((flags & ~REC_FLAG_END) == 0);
	put32(rec + 12, batch);
	put32(rec + 16, flags);
	put32(rec + 4, crc32c(bson_crc, rec + 8, 12));
}

/*
 * Frames the built document @b as a record in @rec (magic, length, BSON;
 * batch and flags are left for store__rec_seal) and destroys @b. @ok is
 * false when building @b failed. Returns the record length and the CRC of
 * its BSON part, STOCK_ENOMEM, or @too_big when @b does not fit in @max
 * record bytes.
 */
static int
rec_frame(uint8_t *rec, size_t max, bson_t *b, bool ok, int too_big, uint32_t *bson_crc)
{
	uint32_t len;

	if (!ok || b->len > max - REC_HDR) {
		bson_destroy(b);
		return ok ? too_big : STOCK_ENOMEM;
	}
	len = b->len;
	ASSERT(len >= REC_MIN_BSON && len <= REC_MAX_BSON);
	memcpy(rec, REC_MAGIC, 4);
	put32(rec + 8, len);
	memcpy(rec + REC_HDR, bson_get_data(b), len);
	bson_destroy(b);
	*bson_crc = crc32c(0, rec + REC_HDR, len);
	return (int)(REC_HDR + len);
}

int
store__rec_encode(const struct sku_doc *doc, uint8_t *rec, uint32_t *bson_crc)
{
	bson_t b;
	bool ok;

	bson_init(&b);
	ok = bson_append_utf8(&b, "_id", 3, doc->sku, (int)strlen(doc->sku)) &&
	    bson_append_int64(&b, "stock", 5, (int64_t)doc->stock) &&
	    bson_append_int64(&b, "sold", 4, (int64_t)doc->sold) &&
	    bson_append_int64(&b, "version", 7, (int64_t)doc->version);
	/* Only when non-zero: a store without holds writes what it always wrote. */
	if (ok && doc->held != 0)
		ok = bson_append_int64(&b, "held", 4, (int64_t)doc->held);
	return rec_frame(rec, REC_DOC_ENC_MAX, &b, ok, STOCK_EINVAL, bson_crc);
}

/*
 * @s[0..@n) is UTF-8 without NUL. ASCII, the common case, is checked eight
 * bytes at a time; from the first other byte on, libbson decides (a valid
 * prefix of ASCII characters ends on a character boundary).
 */
static bool
utf8_valid(const char *s, size_t n)
{
	const uint64_t high = 0x8080808080808080ULL, ones = 0x0101010101010101ULL;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t w;

		memcpy(&w, s + i, 8);
		if ((w & high) != 0 || ((w - ones) & ~w & high) != 0)
			break; /* a byte >= 0x80, or a NUL */
	}
	for (; i < n; i++) {
		if (s[i] == '\0')
			return false;
		if ((unsigned char)s[i] >= 0x80)
			return bson_utf8_validate(s + i, n - i, false);
	}
	return true;
}

/* @s[0..@n) is a key: 1..STORE_KEY_MAX bytes of UTF-8 without NUL. */
static bool
key_valid(const char *s, size_t n)
{
	return s != NULL && n > 0 && n <= STORE_KEY_MAX && utf8_valid(s, n);
}

#define VALUE_DEPTH_MAX 32 /* nesting of documents and arrays in a value */

/*
 * Every element @it has left is well formed: keys and strings UTF-8 without
 * NUL, documents and arrays recursively so, no type that carries code or a
 * legacy string (symbol, code, code with scope, regex, DBPointer: nothing
 * here writes them). bson_iter_next checks each element's bounds and type;
 * it stops with err_off set on the first bad one.
 */
static bool
elements_valid(bson_iter_t *it, int depth)
{
	while (bson_iter_next(it)) {
		bson_iter_t child;
		uint32_t len;
		const char *str;

		if (!utf8_valid(bson_iter_key(it), bson_iter_key_len(it)))
			return false;
		switch (bson_iter_type(it)) {
		case BSON_TYPE_UTF8:
			str = bson_iter_utf8(it, &len);
			if (str == NULL || !utf8_valid(str, len))
				return false;
			break;
		case BSON_TYPE_DOCUMENT:
		case BSON_TYPE_ARRAY:
			if (depth >= VALUE_DEPTH_MAX || !bson_iter_recurse(it, &child) ||
			    !elements_valid(&child, depth + 1))
				return false;
			break;
		case BSON_TYPE_SYMBOL:
		case BSON_TYPE_CODE:
		case BSON_TYPE_CODEWSCOPE:
		case BSON_TYPE_REGEX:
		case BSON_TYPE_DBPOINTER:
			return false;
		default:
			break;
		}
	}
	return it->err_off == 0;
}

/* @p[0..@n) is a value: one whole BSON document of 5..STORE_VALUE_MAX bytes (elements_valid). */
static bool
value_valid(const uint8_t *p, size_t n)
{
	bson_t b;
	bson_iter_t it;

	return n >= REC_MIN_BSON && n <= STORE_VALUE_MAX && bson_init_static(&b, p, n) &&
	    bson_iter_init(&it, &b) && elements_valid(&it, 0);
}

int
store__rec_kv_check(const struct store_kv *kv)
{
	if (kv == NULL || !key_valid(kv->key, kv->key_len) || kv->version == 0 ||
	    kv->version > (uint64_t)INT64_MAX)
		return STOCK_EINVAL;
	if (kv->value == NULL)
		return kv->value_len == 0 ? 0 : STOCK_EINVAL;
	return value_valid(kv->value, kv->value_len) ? 0 : STOCK_EINVAL;
}

int
store__rec_encode_kv(const struct store_kv *kv, uint8_t *rec, uint32_t *bson_crc)
{
	bson_t b, val;
	bool ok;

	bson_init(&b);
	ok = bson_append_utf8(&b, "k", 1, kv->key, (int)kv->key_len) &&
	    bson_append_int64(&b, "v", 1, (int64_t)kv->version);
	if (ok && kv->value == NULL)
		ok = bson_append_bool(&b, "del", 3, true);
	else if (ok)
		ok = bson_init_static(&val, kv->value, kv->value_len) &&
		    bson_append_document(&b, "val", 3, &val);
	return rec_frame(rec, REC_ENC_MAX, &b, ok, STOCK_EINVAL, bson_crc);
}

/* A SKU document: the four fields once each, held at most once; others ignored. */
static bool
decode_doc(bson_iter_t *it, struct sku_doc *out, const char **why)
{
	unsigned seen = 0;

	/* A repeated field is ambiguous and refused; other fields are ignored
	   (documents may come from MongoDB). The iterator is on the first field. */
	do {
		if (!sku_doc_decode_fields(it, SKU_DOC_F_REQUIRED | SKU_DOC_F_HELD, true, out, &seen,
		        why))
			return false;
	} while (bson_iter_next(it));
	if ((seen & SKU_DOC_F_REQUIRED) != SKU_DOC_F_REQUIRED) {
		*why = "document lacks _id, stock, sold or version";
		return false;
	}
	return true;
}

/* A keyed record, exactly: k first, then v and one of val / del, nothing else. */
static bool
decode_kv(bson_iter_t *it, struct rec_item *out, const char **why)
{
	unsigned seen = 0;
	uint32_t n;
	const char *k;

	if (!BSON_ITER_HOLDS_UTF8(it) || (k = bson_iter_utf8(it, &n), !key_valid(k, n))) {
		*why = "keyed record: k is not a key (1..320 bytes of UTF-8 without NUL)";
		return false;
	}
	out->key = k;
	out->key_len = n;
	while (bson_iter_next(it)) {
		const char *f = bson_iter_key(it);
		unsigned bit = strcmp(f, "v") == 0 ? 1 : strcmp(f, "val") == 0 ? 2 :
		    strcmp(f, "del") == 0 ? 4 : 0;

		if (bit == 0) {
			*why = "keyed record: unknown field";
			return false;
		}
		if (seen & bit) {
			*why = "keyed record: repeated field";
			return false;
		}
		seen |= bit;
		if (bit == 1 && !(doc_iter_count(it, (uint64_t)INT64_MAX, &out->version) &&
		        out->version > 0)) {
			*why = "keyed record: v is not a version (1..INT64_MAX)";
			return false;
		}
		if (bit == 2) {
			const uint8_t *p;

			if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
				*why = "keyed record: val is not a document";
				return false;
			}
			bson_iter_document(it, &n, &p);
			if (!value_valid(p, n)) {
				*why = "keyed record: val is too large or not a valid document";
				return false;
			}
			out->value = p;
			out->value_len = n;
		}
		if (bit == 4 && !(BSON_ITER_HOLDS_BOOL(it) && bson_iter_bool(it))) {
			*why = "keyed record: del is not true";
			return false;
		}
	}
	if (seen != 3 && seen != 5) {
		*why = "keyed record: needs v and exactly one of val, del";
		return false;
	}
	return true;
}

bool
store__rec_decode(const uint8_t *data, uint32_t len, struct rec_item *out, const char **why)
{
	bson_t b;
	bson_iter_t it;
	size_t eoff;

	memset(out, 0, sizeof *out);
	if (!bson_init_static(&b, data, len) ||
	    !bson_validate(&b, BSON_VALIDATE_UTF8, &eoff) || !bson_iter_init(&it, &b)) {
		*why = "malformed BSON document";
		return false;
	}
	if (!bson_iter_next(&it)) {
		*why = "empty document";
		return false;
	}
	/* The first field decides the kind. */
	if (strcmp(bson_iter_key(&it), "k") == 0) {
		out->is_kv = true;
		return decode_kv(&it, out, why);
	}
	return decode_doc(&it, &out->doc, why);
}

enum rec_status
store__rec_check(const uint8_t *p, size_t avail, struct rec_view *v, const char **why)
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

/* A record that checks out and holds a valid document of either kind. */
static bool
rec_valid_doc(const uint8_t *p, size_t avail, struct rec_view *v, struct rec_item *item)
{
	const char *why;

	return store__rec_check(p, avail, v, &why) == REC_OK &&
	    store__rec_decode(v->bson, v->len, item, &why);
}

size_t
store__rec_scan_valid(const uint8_t *p, size_t size, size_t from, bool any, uint32_t batch,
    struct rec_view *v)
{
	struct rec_item doc;

	while (from < size) {
		const uint8_t *m = memmem(p + from, size - from, REC_MAGIC, 4);

		if (m == NULL)
			break;
		from = (size_t)(m - p);
		if (rec_valid_doc(m, size - from, v, &doc) &&
		    (any || !store__batch_after(batch, v->batch)))
			return from;
		from++;
	}
	return size;
}

int
store__rec_snap_meta_encode(uint8_t *rec, int version, uint64_t gen, uint64_t count,
    uint32_t *bson_crc)
{
	bson_t b;
	bool ok;

	bson_init(&b);
	ok = bson_append_utf8(&b, "format", 6, SNAP_FORMAT, -1) &&
	    bson_append_int32(&b, "format_version", 14, version) &&
	    bson_append_int64(&b, "journal", 7, (int64_t)gen) &&
	    bson_append_int64(&b, "count", 5, (int64_t)count);
	return rec_frame(rec, REC_ENC_MAX, &b, ok, STOCK_ENOMEM, bson_crc);
}

bool
store__rec_snap_meta_decode(const struct rec_view *v, uint64_t *count, uint64_t *gen,
    int *version, const char **why)
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
			int32_t fv = bson_iter_int32(&it);

			if (fv != SNAP_FORMAT_VERSION_DOCS && fv != SNAP_FORMAT_VERSION) {
				*why = "unsupported snapshot format version";
				return false;
			}
			*version = fv;
			seen |= 2;
		} else if (strcmp(key, "journal") == 0 && doc_iter_count(&it, JOURNAL_GEN_MAX, gen))
			seen |= 4;
		else if (strcmp(key, "count") == 0 && doc_iter_count(&it, INT64_MAX, count))
			seen |= 8;
	}
	return seen == 15;
}

void
store__rec_journal_name(char *buf, size_t len, uint64_t gen)
{
	snprintf(buf, len, JOURNAL_PREFIX "%016" PRIx64 JOURNAL_SUFFIX, gen);
}

bool
store__rec_journal_parse(const char *name, uint64_t *gen)
{
	const char *hex = name + sizeof JOURNAL_PREFIX - 1;
	size_t k;

	if (strlen(name) != JOURNAL_NAME_LEN ||
	    strncmp(name, JOURNAL_PREFIX, sizeof JOURNAL_PREFIX - 1) != 0 ||
	    strcmp(hex + 16, JOURNAL_SUFFIX) != 0)
		return false;
	for (k = 0; k < 16; k++)
		if (!((hex[k] >= '0' && hex[k] <= '9') || (hex[k] >= 'a' && hex[k] <= 'f')))
			return false;
	*gen = strtoull(hex, NULL, 16);
	return *gen <= JOURNAL_GEN_MAX;
}
