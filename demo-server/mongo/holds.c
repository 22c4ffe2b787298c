/*
 * Hold records on MongoDB (mongo.h, "holds"): the record, the decision and
 * the payment lock of each hold, as three documents of MONGO_HOLDS_COLLECTION.
 * Each is written by one insert of a new _id, the one step that is atomic on
 * FerretDB too, so a hold's fate is decided exactly once whichever instance
 * asks first (a confirm, a cancel, an expiry). Afterwards only `done` is set
 * (an unconditional update) and a failed payment's lock deleted (filtered on
 * its nonce: only its taker deletes it). The units live in the SKU
 * documents (mongo_hold_take / mongo_hold_end). docs/internals/checkout.md,
 * "Several instances".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <bson/bson.h>

#include "common/assert.h"
#include "log.h"
#include "mongo/internal.h"

#define DOC_ID_MAX (MONGO_HOLD_ID_MAX + sizeof "/end")

static const char *const end_names[] = { "open", "confirmed", "cancelled", "expired", "aborted" };

static bool
id_ok(const char *id)
{
	return id != NULL && strnlen(id, MONGO_HOLD_ID_MAX + 1) <= MONGO_HOLD_ID_MAX &&
	    host_id_valid(id, strlen(id));
}

static void
doc_id(char *out, const char *id, const char *suffix)
{
	int n = snprintf(out, DOC_ID_MAX, "%s%s", id, suffix);

	ASSERT(n > 0 && (size_t)n < DOC_ID_MAX);
}

static int64_t
nonce(void)
{
	int64_t op;

	if (getrandom(&op, sizeof op, 0) != (ssize_t)sizeof op)
		op = util_wall_ms() ^ (int64_t)stock_now_ns();
	return op;
}

static int
insert(mongo_t *m, const bson_t *doc)
{
	mongoc_client_t *client;
	bson_error_t e;
	int rc;

	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	rc = mongo_insert_unique(m, client, MONGO_HOLDS_COLLECTION, doc, &e);
	mongo_client_push(m, client);
	return rc;
}

int
mongo_hold_create(mongo_t *m, const struct mongo_hold *h)
{
	bson_t doc, items, it;
	char key[24];
	int rc;

	if (m == NULL || h == NULL || !id_ok(h->id) || h->n == 0 || h->n > MONGO_HOLD_ITEMS_MAX)
		return STOCK_EINVAL;
	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", h->id);
	BSON_APPEND_UTF8(&doc, "kind", "hold");
	BSON_APPEND_ARRAY_BEGIN(&doc, "items", &items);
	for (size_t i = 0; i < h->n; i++) {
		snprintf(key, sizeof key, "%zu", i);
		BSON_APPEND_DOCUMENT_BEGIN(&items, key, &it);
		BSON_APPEND_UTF8(&it, "sku", h->items[i].sku);
		BSON_APPEND_INT64(&it, "q", (int64_t)h->items[i].q);
		bson_append_document_end(&items, &it);
	}
	bson_append_array_end(&doc, &items);
	BSON_APPEND_INT64(&doc, "expires", h->expires_ms);
	BSON_APPEND_UTF8(&doc, "buyer", h->buyer);
	BSON_APPEND_INT64(&doc, "at", util_wall_ms());
	BSON_APPEND_BOOL(&doc, "done", false);
	rc = insert(m, &doc);
	bson_destroy(&doc);
	return rc;
}

/* ---- decoding ------------------------------------------------------------------ */

static bool
items_decode(bson_iter_t *it, struct mongo_hold *h)
{
	bson_iter_t arr, sub;

	if (!BSON_ITER_HOLDS_ARRAY(it) || !bson_iter_recurse(it, &arr))
		return false;
	while (bson_iter_next(&arr)) {
		const char *sku = NULL;
		uint32_t len = 0;
		uint64_t q = 0;

		if (h->n == MONGO_HOLD_ITEMS_MAX || !BSON_ITER_HOLDS_DOCUMENT(&arr) ||
		    !bson_iter_recurse(&arr, &sub))
			return false;
		while (bson_iter_next(&sub)) {
			if (strcmp(bson_iter_key(&sub), "sku") == 0 && BSON_ITER_HOLDS_UTF8(&sub))
				sku = bson_iter_utf8(&sub, &len);
			else if (strcmp(bson_iter_key(&sub), "q") == 0 &&
			    !doc_iter_count(&sub, STOCK_COUNT_MAX, &q))
				return false;
		}
		if (sku == NULL || len == 0 || len > STOCK_SKU_MAX || strlen(sku) != len || q == 0)
			return false;
		memcpy(h->items[h->n].sku, sku, len + 1);
		h->items[h->n++].q = q;
	}
	return h->n > 0;
}

/* A hold record into @h (its end fields untouched). */
static bool
record_decode(const bson_t *b, struct mongo_hold *h)
{
	bson_iter_t it;
	bool have_items = false, have_exp = false;

	if (!bson_iter_init(&it, b))
		return false;
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		uint32_t len;

		if (strcmp(k, "_id") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
			const char *id = bson_iter_utf8(&it, &len);

			if (!id_ok(id))
				return false;
			memcpy(h->id, id, len + 1);
		} else if (strcmp(k, "items") == 0) {
			if (!(have_items = items_decode(&it, h)))
				return false;
		} else if (strcmp(k, "expires") == 0) {
			have_exp = doc_iter_int64(&it, &h->expires_ms);
		} else if (strcmp(k, "buyer") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
			const char *by = bson_iter_utf8(&it, &len);

			if (len > MONGO_HOLD_BUYER_MAX || strlen(by) != len)
				return false;
			memcpy(h->buyer, by, len + 1);
		} else if (strcmp(k, "done") == 0 && BSON_ITER_HOLDS_BOOL(&it)) {
			h->done = bson_iter_bool(&it);
		}
	}
	return have_items && have_exp && h->id[0] != '\0';
}

/* A decision into @h->end and the sells (@h's items decoded first); *@op its nonce. */
static bool
end_decode(const bson_t *b, struct mongo_hold *h, int64_t *op)
{
	bson_iter_t it, arr;
	enum mongo_hold_end end = MONGO_HOLD_OPEN;
	uint64_t sell[MONGO_HOLD_ITEMS_MAX] = { 0 };
	size_t ns = 0;

	if (!bson_iter_init(&it, b))
		return false;
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);

		if (strcmp(k, "end") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
			const char *name = bson_iter_utf8(&it, NULL);

			for (int e = MONGO_HOLD_CONFIRMED; e <= MONGO_HOLD_ABORTED; e++)
				if (strcmp(name, end_names[e]) == 0)
					end = (enum mongo_hold_end)e;
		} else if (strcmp(k, "sell") == 0 && BSON_ITER_HOLDS_ARRAY(&it) &&
		    bson_iter_recurse(&it, &arr)) {
			while (bson_iter_next(&arr))
				if (ns == MONGO_HOLD_ITEMS_MAX ||
				    !doc_iter_count(&arr, STOCK_COUNT_MAX, &sell[ns++]))
					return false;
		} else if (strcmp(k, "op") == 0 && BSON_ITER_HOLDS_INT64(&it)) {
			*op = bson_iter_int64(&it);
		}
	}
	if (end == MONGO_HOLD_OPEN || (end == MONGO_HOLD_CONFIRMED && ns != h->n))
		return false;
	h->end = end;
	for (size_t i = 0; i < h->n; i++) {
		h->items[i].sell = end == MONGO_HOLD_CONFIRMED ? sell[i] : 0;
		if (h->items[i].sell > h->items[i].q)
			return false;
	}
	return true;
}

/* A document's kind and, for a decision or a lock, the hold it belongs to. */
static const char *
doc_kind(const bson_t *b, const char **hold)
{
	bson_iter_t it;
	const char *kind = "";

	*hold = NULL;
	if (!bson_iter_init(&it, b))
		return kind;
	while (bson_iter_next(&it)) {
		if (strcmp(bson_iter_key(&it), "kind") == 0 && BSON_ITER_HOLDS_UTF8(&it))
			kind = bson_iter_utf8(&it, NULL);
		else if (strcmp(bson_iter_key(&it), "hold") == 0 && BSON_ITER_HOLDS_UTF8(&it))
			*hold = bson_iter_utf8(&it, NULL);
	}
	return kind;
}

static int64_t
lock_until(const bson_t *b, int64_t *op)
{
	bson_iter_t it;
	int64_t until = 0;

	if (bson_iter_init_find(&it, b, "until"))
		(void)doc_iter_int64(&it, &until);
	if (op != NULL && bson_iter_init_find(&it, b, "op") && BSON_ITER_HOLDS_INT64(&it))
		*op = bson_iter_int64(&it);
	return until;
}

static void
corrupt(const mongo_t *m, const char *id)
{
	log_error("mongo", "%s.%s: a document of hold %s is corrupt", m->database,
	    MONGO_HOLDS_COLLECTION, id);
}

/* ---- reads ---------------------------------------------------------------------- */

/* The three documents of @id; *@end_op: the decision's nonce (0: none). */
static int
hold_read(mongo_t *m, const char *id, struct mongo_hold *out, int64_t *end_op)
{
	char eid[DOC_ID_MAX], pid[DOC_ID_MAX];
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	mongoc_cursor_t *cur;
	bson_t *filter, end;
	const bson_t *b;
	bson_error_t e;
	bool have_rec = false, have_end = false, bad = false;
	int rc;

	memset(out, 0, sizeof *out);
	*end_op = 0;
	doc_id(eid, id, "/end");
	doc_id(pid, id, "/pay");
	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	coll = mongoc_client_get_collection(client, m->database, MONGO_HOLDS_COLLECTION);
	filter = BCON_NEW("_id", "{", "$in", "[", BCON_UTF8(id), BCON_UTF8(eid), BCON_UTF8(pid), "]",
	    "}");
	cur = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
	bson_init(&end);
	while (mongoc_cursor_next(cur, &b)) {
		const char *hold, *kind = doc_kind(b, &hold);

		if (strcmp(kind, "hold") == 0) {
			have_rec = record_decode(b, out);
			bad = !have_rec;
		} else if (strcmp(kind, "end") == 0) {
			have_end = true;
			bson_concat(&end, b); /* decoded once the record gave the items */
		} else if (strcmp(kind, "lock") == 0) {
			out->lock_until_ms = lock_until(b, NULL);
		}
	}
	rc = mongo_find_done(m, cur, &e, 0);
	if (rc == 0 && (bad || (have_end && !have_rec)))
		rc = STOCK_ESYS;
	else if (rc == 0 && !have_rec)
		rc = STOCK_ENOENT;
	else if (rc == 0 && have_end && !end_decode(&end, out, end_op))
		rc = STOCK_ESYS;
	if (rc == STOCK_ESYS && (bad || have_end))
		corrupt(m, id);
	bson_destroy(&end);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	mongo_client_push(m, client);
	return rc;
}

int
mongo_hold_read(mongo_t *m, const char *id, struct mongo_hold *out)
{
	int64_t op;

	if (m == NULL || !id_ok(id) || out == NULL)
		return STOCK_EINVAL;
	/* *out is cleared first: @id must not point into it. */
	ASSERT((uintptr_t)id + strlen(id) < (uintptr_t)out->id ||
	    (uintptr_t)id >= (uintptr_t)(out->id + sizeof out->id));
	return hold_read(m, id, out, &op);
}

/* ---- writes ----------------------------------------------------------------------- */

int
mongo_hold_decide(mongo_t *m, struct mongo_hold *h, enum mongo_hold_end end, const uint64_t *sell)
{
	char eid[DOC_ID_MAX], key[24];
	struct mongo_hold now;
	int64_t op = nonce(), got;
	bson_t doc, arr;
	int rc;

	if (m == NULL || h == NULL || !id_ok(h->id) || end == MONGO_HOLD_OPEN ||
	    end > MONGO_HOLD_ABORTED || (end == MONGO_HOLD_CONFIRMED && sell == NULL))
		return STOCK_EINVAL;
	for (size_t i = 0; end == MONGO_HOLD_CONFIRMED && i < h->n; i++)
		if (sell[i] > h->items[i].q)
			return STOCK_EINVAL;
	doc_id(eid, h->id, "/end");
	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", eid);
	BSON_APPEND_UTF8(&doc, "kind", "end");
	BSON_APPEND_UTF8(&doc, "hold", h->id);
	BSON_APPEND_UTF8(&doc, "end", end_names[end]);
	BSON_APPEND_ARRAY_BEGIN(&doc, "sell", &arr);
	for (size_t i = 0; i < h->n; i++) {
		snprintf(key, sizeof key, "%zu", i);
		BSON_APPEND_INT64(&arr, key, end == MONGO_HOLD_CONFIRMED ? (int64_t)sell[i] : 0);
	}
	bson_append_array_end(&doc, &arr);
	BSON_APPEND_INT64(&doc, "op", op);
	BSON_APPEND_INT64(&doc, "at", util_wall_ms());
	BSON_APPEND_BOOL(&doc, "done", false);
	rc = insert(m, &doc);
	bson_destroy(&doc);
	if (rc == 0) {
		h->end = end;
		for (size_t i = 0; i < h->n; i++)
			h->items[i].sell = end == MONGO_HOLD_CONFIRMED ? sell[i] : 0;
		return 0;
	}
	/* Taken, or unknown: the stored decision tells (our nonce: ours landed). */
	if (hold_read(m, h->id, &now, &got) != 0 || now.end == MONGO_HOLD_OPEN)
		return STOCK_ESYS;
	h->end = now.end;
	for (size_t i = 0; i < h->n && i < now.n; i++)
		h->items[i].sell = now.items[i].sell;
	return got == op ? 0 : STOCK_EEXIST;
}

int
mongo_hold_lock(mongo_t *m, const char *id, int64_t until_ms, int64_t *token)
{
	char pid[DOC_ID_MAX];
	bson_t doc;
	int rc;

	if (m == NULL || !id_ok(id) || token == NULL)
		return STOCK_EINVAL;
	*token = nonce();
	doc_id(pid, id, "/pay");
	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", pid);
	BSON_APPEND_UTF8(&doc, "kind", "lock");
	BSON_APPEND_UTF8(&doc, "hold", id);
	BSON_APPEND_INT64(&doc, "until", until_ms);
	BSON_APPEND_INT64(&doc, "op", *token);
	rc = insert(m, &doc);
	bson_destroy(&doc);
	return rc;
}

/* deleteOne or updateMany on the holds collection. */
static int
hold_write(mongo_t *m, const bson_t *filter, const bson_t *update)
{
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	bson_t opts;
	bson_error_t e;
	bool ok;

	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	coll = mongoc_client_get_collection(client, m->database, MONGO_HOLDS_COLLECTION);
	mongo_write_opts(m, &opts, false);
	ok = update != NULL ? mongoc_collection_update_many(coll, filter, update, &opts, NULL, &e) :
	    mongoc_collection_delete_one(coll, filter, &opts, NULL, &e);
	mongo_trip_done(m, ok, &e);
	bson_destroy(&opts);
	mongoc_collection_destroy(coll);
	mongo_client_push(m, client);
	return ok ? 0 : STOCK_ESYS;
}

int
mongo_hold_unlock(mongo_t *m, const char *id, int64_t token)
{
	char pid[DOC_ID_MAX];
	bson_t *filter;
	int rc;

	if (m == NULL || !id_ok(id))
		return STOCK_EINVAL;
	doc_id(pid, id, "/pay");
	filter = BCON_NEW("_id", BCON_UTF8(pid), "op", BCON_INT64(token));
	rc = hold_write(m, filter, NULL);
	bson_destroy(filter);
	return rc;
}

int
mongo_hold_finished(mongo_t *m, const char *id)
{
	char eid[DOC_ID_MAX];
	bson_t *filter, *update;
	int rc;

	if (m == NULL || !id_ok(id))
		return STOCK_EINVAL;
	doc_id(eid, id, "/end");
	filter = BCON_NEW("_id", "{", "$in", "[", BCON_UTF8(id), BCON_UTF8(eid), "]", "}");
	update = BCON_NEW("$set", "{", "done", BCON_BOOL(true), "}");
	rc = hold_write(m, filter, update);
	bson_destroy(update);
	bson_destroy(filter);
	return rc;
}

/* ---- the open holds -------------------------------------------------------------- */

struct open_list {
	struct mongo_hold *h;
	size_t n, cap;
};

static int
list_add(struct open_list *l, const bson_t *b)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		struct mongo_hold *h = realloc(l->h, cap * sizeof *h);

		if (h == NULL)
			return STOCK_ENOMEM;
		l->h = h;
		l->cap = cap;
	}
	memset(&l->h[l->n], 0, sizeof l->h[l->n]);
	if (record_decode(b, &l->h[l->n]))
		l->n++;
	return 0;
}

int
mongo_hold_list_open(mongo_t *m, mongo_hold_fn fn, void *arg)
{
	struct open_list l = { 0 };
	bson_t ends = BSON_INITIALIZER;
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	mongoc_cursor_t *cur;
	bson_t *filter;
	const bson_t *b;
	bson_error_t e;
	uint32_t nends = 0;
	int rc = 0;

	if (m == NULL || fn == NULL)
		return STOCK_EINVAL;
	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	coll = mongoc_client_get_collection(client, m->database, MONGO_HOLDS_COLLECTION);
	filter = BCON_NEW("done", BCON_BOOL(false));
	cur = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
	while (rc == 0 && mongoc_cursor_next(cur, &b)) {
		const char *hold, *kind = doc_kind(b, &hold);
		char key[24];

		if (strcmp(kind, "hold") == 0) {
			rc = list_add(&l, b);
		} else if (strcmp(kind, "end") == 0 && hold != NULL) {
			snprintf(key, sizeof key, "%u", nends++);
			BSON_APPEND_DOCUMENT(&ends, key, b);
		}
	}
	rc = mongo_find_done(m, cur, &e, rc);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	mongo_client_push(m, client);
	/* Join: each decision to its record (decisions of done records are skipped). */
	if (rc == 0) {
		bson_iter_t it;

		for (bson_iter_init(&it, &ends); bson_iter_next(&it);) {
			const uint8_t *data;
			uint32_t len;
			const char *hold;
			bson_t d;
			int64_t op;

			bson_iter_document(&it, &len, &data);
			if (!bson_init_static(&d, data, len))
				continue;
			(void)doc_kind(&d, &hold);
			for (size_t i = 0; i < l.n; i++)
				if (strcmp(l.h[i].id, hold) == 0 && !end_decode(&d, &l.h[i], &op))
					corrupt(m, hold);
		}
		for (size_t i = 0; i < l.n && rc == 0; i++)
			rc = fn(&l.h[i], arg);
	}
	bson_destroy(&ends);
	free(l.h);
	return rc;
}
