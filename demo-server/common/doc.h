/*
 * The SKU document: one SKU's full state, shaped like the MongoDB collection
 * ({_id: sku, stock, sold, version}), shared by the embedded journal, the
 * MongoDB documents, the lease protocol and the Redis bus. Also the rules
 * every part applies to it (what is valid, which of two states wins) and to
 * the names that travel with it (host ids), and the SKU -> document index
 * the embedded store and the bus's pending events are kept in.
 */
#ifndef DEMO_DOC_H
#define DEMO_DOC_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stock.h>

/* Longest host id (--host-id, STOCK_HOST_ID): [A-Za-z0-9_-], used as a MongoDB
   field name and in Redis events. */
#define HOST_ID_MAX 64

/*
 * One SKU's full state. @sku is NUL-terminated, 1..STOCK_SKU_MAX bytes of
 * valid UTF-8. @stock, @sold and @held are at most STOCK_COUNT_MAX; @version
 * is at most INT64_MAX (BSON int64). @held is the units reserved by live
 * holds (embedded store only: MongoDB documents never carry it, it is 0
 * there). A version identifies a state: two documents of one SKU with the
 * same version must carry the same counts (if they do not, the larger sold,
 * then the larger stock, then the larger held wins, so the outcome still
 * does not depend on order).
 */
struct sku_doc {
	char sku[STOCK_SKU_MAX + 1];
	uint64_t stock;
	uint64_t sold;
	uint64_t held;
	uint64_t version;
};

/* Bits of the *seen mask of sku_doc_decode_field(s). */
#define SKU_DOC_F_ID 1u
#define SKU_DOC_F_STOCK 2u
#define SKU_DOC_F_SOLD 4u
#define SKU_DOC_F_VERSION 8u
#define SKU_DOC_F_REQUIRED 15u /* the four mandatory fields */
#define SKU_DOC_F_HELD 16u     /* optional; absent: 0 */

/**
 * sku_doc_check - 0 when @doc may be stored: a SKU of 1..STOCK_SKU_MAX bytes
 * of valid UTF-8, stock, sold and held each at most STOCK_COUNT_MAX, version
 * at most INT64_MAX; STOCK_EINVAL otherwise (also for NULL). (No check of
 * stock + held + sold: callers store stock and sold of STOCK_COUNT_MAX each.)
 */
int sku_doc_check(const struct sku_doc *doc);

/** doc_iter_int64 - BSON int32 or int64 @it into *@out: the one integer rule (no doubles). */
bool doc_iter_int64(const bson_iter_t *it, int64_t *out);

/** doc_iter_count - an integer (doc_iter_int64) in 0..@max into *@out. */
bool doc_iter_count(const bson_iter_t *it, uint64_t max, uint64_t *out);

/**
 * sku_doc_decode_fields - decode BSON field @it into @doc if it is one of the
 * document's own fields named in @want (SKU_DOC_F_* bits): _id (a string of
 * 1..STOCK_SKU_MAX bytes of UTF-8 without NUL), stock, sold, held (counts)
 * or version (0..INT64_MAX). Its bit is added to *@seen (the four mandatory
 * ones: SKU_DOC_F_REQUIRED, so callers test (*@seen & 15) == 15, or
 * *@seen == 15 when held is not in @want); other fields are left alone and
 * true is returned. False when it is bad, or (@once) repeated: @why says
 * which. The one reading of the document's fields: store records and MongoDB.
 */
bool sku_doc_decode_fields(const bson_iter_t *it, unsigned want, bool once, struct sku_doc *doc,
    unsigned *seen, const char **why);

/**
 * sku_doc_decode_field - sku_doc_decode_fields with want = stock, sold,
 * version, and _id when @want_id: held is NOT decoded (a "held" field is
 * left alone like any other), so *@seen is at most 15. MongoDB documents.
 */
bool sku_doc_decode_field(const bson_iter_t *it, bool want_id, bool once, struct sku_doc *doc,
    unsigned *seen, const char **why);

/** sku_doc_normalize - copy @src into @dst with the bytes after the SKU zeroed. */
void sku_doc_normalize(struct sku_doc *dst, const struct sku_doc *src);

/**
 * sku_doc_newer - true when state @a of a SKU wins over @b: the higher
 * version; on a tie the larger sold, then the larger stock, then the larger
 * held.
 */
bool sku_doc_newer(const struct sku_doc *a, const struct sku_doc *b);

/*
 * SKU -> document, open addressing, at most half full (the store's index,
 * the bus's pending events). Zeroed is empty; reserve before the first
 * slot. Not thread-safe: the owner's lock guards it.
 */
struct doc_index {
	struct sku_doc *slots; /* cap slots, a power of two; sku[0] == '\0': empty */
	size_t cap, n;
};

/** doc_index_slot - the slot of @sku: its document, or the empty slot where it goes. */
struct sku_doc *doc_index_slot(const struct doc_index *x, const char *sku);

/** doc_index_reserve - make room for @extra more SKUs. 0 or STOCK_ENOMEM. */
int doc_index_reserve(struct doc_index *x, size_t extra);

/** doc_index_apply - apply @doc (sku_doc_newer wins); room must have been reserved. */
void doc_index_apply(struct doc_index *x, const struct sku_doc *doc);

/** doc_index_apply_all - apply @n documents, growing as needed. 0 or STOCK_ENOMEM. */
int doc_index_apply_all(struct doc_index *x, const struct sku_doc *docs, size_t n);

/**
 * doc_index_copy - a packed copy of the documents (the caller frees *@out).
 * NULL with *@n == 0 when empty. 0 or STOCK_ENOMEM.
 */
int doc_index_copy(const struct doc_index *x, struct sku_doc **out, size_t *n);

/** host_id_valid - true when @s[0..@n) is 1..HOST_ID_MAX bytes of [A-Za-z0-9_-]. */
bool host_id_valid(const char *s, size_t n);

#endif /* DEMO_DOC_H */
