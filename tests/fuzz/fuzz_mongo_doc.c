/*
 * libFuzzer target: a SKU document as MongoDB (or FerretDB, or a hand edit)
 * returns it, decoded the way every read does (mongo_view_decode, mongo/docs.c).
 *
 * Input: one flag byte, then the document. Flag bit 0: the rest is BSON
 * bytes as they are (0) or relaxed extended JSON turned into BSON by libbson
 * (1: reaches the nested shapes, leases and holds, with short inputs).
 * Properties, beyond "no crash, no leak" under ASan + UBSan:
 *   1. The decoder accepts exactly the documents a reference written here
 *      from docs/mongo.md ("Documents") accepts: well-formed BSON; _id a
 *      string of 1-64 bytes of UTF-8 without NUL; stock, sold, lost int32 or
 *      int64 in 0..STOCK_COUNT_MAX, version in 0..INT64_MAX; retired a bool;
 *      leases a document of valid host ids, each a document whose granted,
 *      sold, returned are counts, expires an integer, reclaimed a bool;
 *      holds a document of valid hold ids (at most MONGO_HOLDS_MAX) with
 *      counts >= 1 whose sum stays a count; _id, stock, sold and version
 *      present; none of these names twice at one level (nor a host, a hold
 *      id, a lease member); any other field ignored. (A looser decoder
 *      would read one of two values where MongoDB's own tools show the
 *      other; a stricter one would skip good documents.)
 *   2. What it accepted is what the document says: the reference's values,
 *      leases in order (the first MONGO_LEASES_MAX; `extra` iff more),
 *      holds in order, held their sum.
 *   3. Encoding the view (mongo_state_append, with _id) and decoding it
 *      again gives the same view.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bson/bson.h>
#include <stock.h>

#include "common/doc.h"
#include "common/util.h"
#include "log.h"
#include "mongo/internal.h"

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_mongo_doc: property failed: %s (line %d)\n", #c,  \
			    __LINE__);                                                        \
			abort();                                                              \
		}                                                                             \
	} while (0)

/* ---- the reference ----------------------------------------------------------------- */

static bool
ref_int(const bson_iter_t *it, int64_t *out)
{
	if (bson_iter_type(it) == BSON_TYPE_INT32) {
		*out = bson_iter_int32(it);
		return true;
	}
	if (bson_iter_type(it) == BSON_TYPE_INT64) {
		*out = bson_iter_int64(it);
		return true;
	}
	return false;
}

static bool
ref_count(const bson_iter_t *it, uint64_t max, uint64_t *out)
{
	int64_t v;

	if (!ref_int(it, &v) || v < 0 || (uint64_t)v > max)
		return false;
	*out = (uint64_t)v;
	return true;
}

/* 1..64 of [A-Za-z0-9_-] (docs/mongo.md: host ids and hold ids). */
static bool
ref_id(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		        c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* The names of the current level seen so far: true when @key is new. */
struct names {
	const char *k[4096];
	size_t n;
	bool overflow;
};

static bool
names_add(struct names *s, const char *key)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->k[i], key) == 0)
			return false;
	if (s->n == sizeof s->k / sizeof s->k[0])
		s->overflow = true;
	else
		s->k[s->n++] = key;
	return true;
}

struct ref_view {
	char sku[STOCK_SKU_MAX + 1];
	uint64_t stock, sold, version, lost, held;
	bool retired;
	size_t nleases, nall; /* nall: every lease, also beyond MONGO_LEASES_MAX */
	struct {
		char host[HOST_ID_MAX + 1];
		struct mongo_lease l;
	} leases[MONGO_LEASES_MAX];
	size_t nholds;
	struct {
		char id[MONGO_HOLD_ID_MAX + 1];
		uint64_t q;
	} holds[MONGO_HOLDS_MAX];
};

static bool
ref_lease(const bson_iter_t *it, struct mongo_lease *l)
{
	struct names seen = { .n = 0 };
	bson_iter_t sub;

	memset(l, 0, sizeof *l);
	if (bson_iter_type(it) != BSON_TYPE_DOCUMENT || !bson_iter_recurse(it, &sub))
		return false;
	while (bson_iter_next(&sub)) {
		const char *k = bson_iter_key(&sub);
		bool known = strcmp(k, "granted") == 0 || strcmp(k, "sold") == 0 ||
		    strcmp(k, "returned") == 0 || strcmp(k, "expires") == 0 ||
		    strcmp(k, "reclaimed") == 0;

		if (!known)
			continue;
		if (!names_add(&seen, k))
			return false;
		if (strcmp(k, "granted") == 0 && !ref_count(&sub, STOCK_COUNT_MAX, &l->granted))
			return false;
		if (strcmp(k, "sold") == 0 && !ref_count(&sub, STOCK_COUNT_MAX, &l->sold))
			return false;
		if (strcmp(k, "returned") == 0 && !ref_count(&sub, STOCK_COUNT_MAX, &l->returned))
			return false;
		if (strcmp(k, "expires") == 0 && !ref_int(&sub, &l->expires_ms))
			return false;
		if (strcmp(k, "reclaimed") == 0) {
			if (bson_iter_type(&sub) != BSON_TYPE_BOOL)
				return false;
			l->reclaimed = bson_iter_bool(&sub);
		}
	}
	return true;
}

static bool
ref_leases(const bson_iter_t *it, struct ref_view *r)
{
	static struct names hosts;
	bson_iter_t sub;

	hosts.n = 0;
	hosts.overflow = false;
	if (bson_iter_type(it) != BSON_TYPE_DOCUMENT || !bson_iter_recurse(it, &sub))
		return false;
	while (bson_iter_next(&sub)) {
		const char *h = bson_iter_key(&sub);
		struct mongo_lease l;

		if (!ref_id(h, HOST_ID_MAX) || !ref_lease(&sub, &l) || !names_add(&hosts, h))
			return false;
		r->nall++;
		if (r->nleases < MONGO_LEASES_MAX) {
			snprintf(r->leases[r->nleases].host, sizeof r->leases[0].host, "%s", h);
			r->leases[r->nleases++].l = l;
		}
	}
	return !hosts.overflow;
}

static bool
ref_holds(const bson_iter_t *it, struct ref_view *r)
{
	struct names ids = { .n = 0 };
	bson_iter_t sub;

	if (bson_iter_type(it) != BSON_TYPE_DOCUMENT || !bson_iter_recurse(it, &sub))
		return false;
	while (bson_iter_next(&sub)) {
		const char *id = bson_iter_key(&sub);
		uint64_t q;

		if (!ref_id(id, MONGO_HOLD_ID_MAX) || !ref_count(&sub, STOCK_COUNT_MAX, &q) || q == 0 ||
		    r->held > STOCK_COUNT_MAX - q || r->nholds == MONGO_HOLDS_MAX ||
		    !names_add(&ids, id))
			return false;
		snprintf(r->holds[r->nholds].id, sizeof r->holds[0].id, "%s", id);
		r->holds[r->nholds++].q = q;
		r->held += q;
	}
	return true;
}

/* Property 1's reference: whether @b is a valid SKU document, and its values. */
static bool
ref_decode(const bson_t *b, struct ref_view *r)
{
	struct names top = { .n = 0 };
	bool id = false, stock = false, sold = false, version = false;
	bson_iter_t it;

	memset(r, 0, sizeof *r);
	if (!bson_validate(b, BSON_VALIDATE_NONE, NULL) || !bson_iter_init(&it, b))
		return false;
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		bool known = strcmp(k, "_id") == 0 || strcmp(k, "stock") == 0 ||
		    strcmp(k, "sold") == 0 || strcmp(k, "version") == 0 || strcmp(k, "lost") == 0 ||
		    strcmp(k, "retired") == 0 || strcmp(k, "leases") == 0 ||
		    strcmp(k, "holds") == 0 || strcmp(k, "nholds") == 0;
		uint32_t n;
		const char *s;

		if (!known)
			continue;
		if (!names_add(&top, k))
			return false;
		if (strcmp(k, "_id") == 0) {
			if (bson_iter_type(&it) != BSON_TYPE_UTF8)
				return false;
			s = bson_iter_utf8(&it, &n);
			if (n == 0 || n > STOCK_SKU_MAX || memchr(s, 0, n) != NULL ||
			    !bson_utf8_validate(s, n, false))
				return false;
			memcpy(r->sku, s, n);
			id = true;
		} else if (strcmp(k, "stock") == 0) {
			if (!(stock = ref_count(&it, STOCK_COUNT_MAX, &r->stock)))
				return false;
		} else if (strcmp(k, "sold") == 0) {
			if (!(sold = ref_count(&it, STOCK_COUNT_MAX, &r->sold)))
				return false;
		} else if (strcmp(k, "version") == 0) {
			if (!(version = ref_count(&it, (uint64_t)INT64_MAX, &r->version)))
				return false;
		} else if (strcmp(k, "lost") == 0) {
			if (!ref_count(&it, STOCK_COUNT_MAX, &r->lost))
				return false;
		} else if (strcmp(k, "retired") == 0) {
			if (bson_iter_type(&it) != BSON_TYPE_BOOL)
				return false;
			r->retired = bson_iter_bool(&it);
		} else if (strcmp(k, "leases") == 0) {
			if (!ref_leases(&it, r))
				return false;
		} else if (strcmp(k, "holds") == 0) {
			if (!ref_holds(&it, r))
				return false;
		} /* nholds: any value, once */
	}
	return id && stock && sold && version;
}

/* ---- the properties ----------------------------------------------------------------- */

static bool
lease_same(const struct mongo_lease *a, const struct mongo_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms && a->reclaimed == b->reclaimed;
}

static void
check_same(const struct mongo_view *v, const struct ref_view *r)
{
	uint64_t sum = 0;

	CHECK(strcmp(v->doc.sku, r->sku) == 0);
	CHECK(v->doc.stock == r->stock && v->doc.sold == r->sold && v->doc.version == r->version);
	CHECK(v->lost == r->lost && v->retired == r->retired);
	CHECK(v->nleases == r->nleases);
	for (size_t i = 0; i < v->nleases; i++) {
		CHECK(strcmp(v->leases[i].host, r->leases[i].host) == 0);
		CHECK(lease_same(&v->leases[i].lease, &r->leases[i].l));
	}
	CHECK(v->nholds == r->nholds);
	for (size_t i = 0; i < v->nholds; i++) {
		CHECK(strcmp(v->holds[i].id, r->holds[i].id) == 0 && v->holds[i].q == r->holds[i].q);
		sum += v->holds[i].q;
	}
	CHECK(v->held == r->held && v->held == sum);
}

static void
views_equal(const struct mongo_view *a, const struct mongo_view *b)
{
	CHECK(strcmp(a->doc.sku, b->doc.sku) == 0);
	CHECK(a->doc.stock == b->doc.stock && a->doc.sold == b->doc.sold &&
	    a->doc.version == b->doc.version && a->lost == b->lost && a->retired == b->retired);
	CHECK(a->nleases == b->nleases && a->nholds == b->nholds && a->held == b->held);
	for (size_t i = 0; i < a->nleases; i++)
		CHECK(strcmp(a->leases[i].host, b->leases[i].host) == 0 &&
		    lease_same(&a->leases[i].lease, &b->leases[i].lease));
	for (size_t i = 0; i < a->nholds; i++)
		CHECK(strcmp(a->holds[i].id, b->holds[i].id) == 0 && a->holds[i].q == b->holds[i].q);
}

static struct mongo fake; /* for the "more than 16 leases" warning, once */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
sink(void *arg, enum log_level level, const char *who, const char *msg)
{
	(void)arg;
	(void)level;
	(void)who;
	(void)msg; /* "more than 16 leases" is expected */
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_sink(sink, NULL);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mongo_view v, w;
	static struct ref_view r;
	bson_t *b = NULL, stat, enc;
	const bson_t *doc;
	const char *why = NULL;
	bool extra, ok, want;

	if (size < 1)
		return 0;
	if (data[0] & 1) {
		b = bson_new_from_json(data + 1, (ssize_t)(size - 1), NULL);
		if (b == NULL)
			return 0;
	} else if (!bson_init_static(&stat, data + 1, size - 1)) {
		return 0;
	}
	doc = b != NULL ? b : &stat;

	ok = mongo_view_decode(&fake, doc, NULL, &v, &extra, &why);
	want = ref_decode(doc, &r);
	if (ok != want)
		fprintf(stderr, "fuzz_mongo_doc: decoder %s, reference %s (%s)\n",
		    ok ? "accepts" : "refuses", want ? "accepts" : "refuses", ok ? "-" : why);
	CHECK(ok == want);                                          /* property 1 */
	if (ok) {
		check_same(&v, &r);                                 /* property 2 */
		CHECK(extra == (r.nall > MONGO_LEASES_MAX));
		bson_init(&enc);                                    /* property 3 */
		BSON_APPEND_UTF8(&enc, "_id", v.doc.sku);
		mongo_state_append(&enc, &v);
		CHECK(mongo_view_decode(&fake, &enc, NULL, &w, &extra, &why));
		CHECK(!extra);
		views_equal(&v, &w);
		bson_destroy(&enc);
	}
	if (b != NULL)
		bson_destroy(b);
	return 0;
}
