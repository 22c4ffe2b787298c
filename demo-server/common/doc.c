/*
 * The SKU document's rules (common/doc.h), shared by the embedded journal,
 * the MongoDB documents and the bus: what a valid document is, its canonical
 * in-memory form, which of two states of one SKU wins, what a host id is;
 * and the index of documents by SKU.
 */
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/doc.h"
#include "common/util.h"

int
sku_doc_check(const struct sku_doc *doc)
{
	size_t n;

	if (doc == NULL)
		return STOCK_EINVAL;
	n = strnlen(doc->sku, sizeof doc->sku);
	if (n == 0 || n > STOCK_SKU_MAX || !bson_utf8_validate(doc->sku, n, false))
		return STOCK_EINVAL;
	if (doc->stock > STOCK_COUNT_MAX || doc->sold > STOCK_COUNT_MAX ||
	    doc->held > STOCK_COUNT_MAX || doc->version > (uint64_t)INT64_MAX)
		return STOCK_EINVAL;
	return 0;
}

bool
doc_iter_int64(const bson_iter_t *it, int64_t *out)
{
	if (BSON_ITER_HOLDS_INT64(it))
		*out = bson_iter_int64(it);
	else if (BSON_ITER_HOLDS_INT32(it))
		*out = bson_iter_int32(it);
	else
		return false;
	return true;
}

bool
doc_iter_count(const bson_iter_t *it, uint64_t max, uint64_t *out)
{
	int64_t v;

	if (!doc_iter_int64(it, &v) || v < 0 || (uint64_t)v > max)
		return false;
	*out = (uint64_t)v;
	return true;
}

/* _id: libbson's bson_validate(BSON_VALIDATE_UTF8) lets invalid UTF-8
   through (found by tests/fuzz/fuzz_journal), so the bytes are checked here. */
static bool
iter_sku(const bson_iter_t *it, char *out, const char **why)
{
	uint32_t n;
	const char *s;

	if (!BSON_ITER_HOLDS_UTF8(it)) {
		*why = "_id is not a string";
		return false;
	}
	s = bson_iter_utf8(it, &n);
	if (n == 0 || n > STOCK_SKU_MAX || memchr(s, 0, n) != NULL || !bson_utf8_validate(s, n, false)) {
		*why = "_id is empty, too long, not UTF-8 or contains NUL";
		return false;
	}
	memcpy(out, s, n);
	out[n] = '\0';
	return true;
}

bool
sku_doc_decode_fields(const bson_iter_t *it, unsigned want, bool once, struct sku_doc *doc,
    unsigned *seen, const char **why)
{
	const char *key = bson_iter_key(it);
	unsigned bit = strcmp(key, "_id") == 0 ? SKU_DOC_F_ID :
	    strcmp(key, "stock") == 0          ? SKU_DOC_F_STOCK :
	    strcmp(key, "sold") == 0           ? SKU_DOC_F_SOLD :
	    strcmp(key, "version") == 0        ? SKU_DOC_F_VERSION :
	    strcmp(key, "held") == 0           ? SKU_DOC_F_HELD : 0;
	bool ok = true;

	bit &= want;
	if (once && (bit & *seen)) {
		*why = "repeated field";
		return false;
	}
	*seen |= bit;
	if (bit == SKU_DOC_F_ID)
		return iter_sku(it, doc->sku, why);
	if (bit == SKU_DOC_F_STOCK && !(ok = doc_iter_count(it, STOCK_COUNT_MAX, &doc->stock)))
		*why = "stock is not an integer in range";
	else if (bit == SKU_DOC_F_SOLD && !(ok = doc_iter_count(it, STOCK_COUNT_MAX, &doc->sold)))
		*why = "sold is not an integer in range";
	else if (bit == SKU_DOC_F_HELD && !(ok = doc_iter_count(it, STOCK_COUNT_MAX, &doc->held)))
		*why = "held is not an integer in range";
	else if (bit == SKU_DOC_F_VERSION &&
	    !(ok = doc_iter_count(it, (uint64_t)INT64_MAX, &doc->version)))
		*why = "version is not a non-negative integer";
	return ok;
}

bool
sku_doc_decode_field(const bson_iter_t *it, bool want_id, bool once, struct sku_doc *doc,
    unsigned *seen, const char **why)
{
	unsigned want = SKU_DOC_F_STOCK | SKU_DOC_F_SOLD | SKU_DOC_F_VERSION;

	return sku_doc_decode_fields(it, want_id ? want | SKU_DOC_F_ID : want, once, doc, seen, why);
}

void
sku_doc_normalize(struct sku_doc *dst, const struct sku_doc *src)
{
	size_t n = strnlen(src->sku, STOCK_SKU_MAX);

	memset(dst, 0, sizeof *dst);
	memcpy(dst->sku, src->sku, n);
	dst->stock = src->stock;
	dst->sold = src->sold;
	dst->held = src->held;
	dst->version = src->version;
}

bool
sku_doc_newer(const struct sku_doc *a, const struct sku_doc *b)
{
	if (a->version != b->version)
		return a->version > b->version;
	if (a->sold != b->sold)
		return a->sold > b->sold;
	if (a->stock != b->stock)
		return a->stock > b->stock;
	return a->held > b->held;
}

struct sku_doc *
doc_index_slot(const struct doc_index *x, const char *sku)
{
	size_t mask = x->cap - 1, i;

	ASSERT(x->cap > x->n); /* a full table would make this loop forever */
	for (i = (size_t)util_hash(sku, strlen(sku)) & mask;; i = (i + 1) & mask)
		if (x->slots[i].sku[0] == '\0' || strcmp(x->slots[i].sku, sku) == 0)
			return &x->slots[i];
}

int
doc_index_reserve(struct doc_index *x, size_t extra)
{
	struct doc_index nx;
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
			*doc_index_slot(&nx, x->slots[i].sku) = x->slots[i];
	free(x->slots);
	*x = nx;
	return 0;
}

void
doc_index_apply(struct doc_index *x, const struct sku_doc *doc)
{
	struct sku_doc *slot = doc_index_slot(x, doc->sku);

	if (slot->sku[0] == '\0') {
		/* A new SKU: doc_index_reserve must have made room for it. */
		ASSERT((x->n + 1) * 2 <= x->cap);
		sku_doc_normalize(slot, doc);
		x->n++;
	} else if (sku_doc_newer(doc, slot)) {
		sku_doc_normalize(slot, doc);
	}
}

int
doc_index_apply_all(struct doc_index *x, const struct sku_doc *docs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int rc = doc_index_reserve(x, 1);

		if (rc != 0)
			return rc;
		doc_index_apply(x, &docs[i]);
	}
	return 0;
}

int
doc_index_copy(const struct doc_index *x, struct sku_doc **out, size_t *n)
{
	size_t i, k = 0;

	*out = NULL;
	*n = 0;
	if (x->n == 0)
		return 0;
	if ((*out = malloc(x->n * sizeof **out)) == NULL)
		return STOCK_ENOMEM;
	for (i = 0; i < x->cap; i++)
		if (x->slots[i].sku[0] != '\0') {
			ASSERT(k < x->n); /* more occupied slots than the count says */
			(*out)[k++] = x->slots[i];
		}
	ASSERT(k == x->n);
	*n = k;
	return 0;
}

bool
host_id_valid(const char *s, size_t n)
{
	if (s == NULL || n == 0 || n > HOST_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '_' || c == '-'))
			return false;
	}
	return true;
}
