/*
 * Idempotency keys on MongoDB (mongo.h, "Idempotency keys"): one document
 * per key in MONGO_KEYS_COLLECTION,
 *   {_id: key, req: <bytes>, host, state: "in_flight" | "done", at: <ms>,
 *    status, body: <bytes>}
 * The one atomic step is the insert of a new _id (it is on FerretDB too):
 * the instance whose insert lands owns the key and is its only writer
 * afterwards (finish, abort: updates and deletes filtered on host and
 * state), so FerretDB's non-atomic filtered writes cannot race another
 * writer. Everyone else only reads it. A key older than the caller's TTL is
 * deleted (filtered on its `at`, so a fresh one is never) and claimed anew.
 * docs/internals/checkout.md, "Several instances".
 */
#include <string.h>
#include <sys/random.h>

#include <bson/bson.h>

#include "common/assert.h"
#include "log.h"
#include "mongo/internal.h"

#define KEY_PRUNE_EVERY 1024 /* delete expired keys after every 1024th new key */

/* The key's document, if any: 0 (filled), STOCK_ENOENT, STOCK_ESYS. */
struct key_doc {
	int64_t op; /* the nonce of the begin that inserted it */
	bool done;
	int status;
	int64_t at;
	const uint8_t *req, *body; /* into @b */
	uint32_t req_len, body_len;
};

static bool
key_decode(const bson_t *b, struct key_doc *k)
{
	bson_iter_t it;
	bson_subtype_t sub;
	bool have_req = false, have_state = false, have_at = false;

	memset(k, 0, sizeof *k);
	if (!bson_iter_init(&it, b))
		return false;
	while (bson_iter_next(&it)) {
		const char *f = bson_iter_key(&it);

		if (strcmp(f, "req") == 0 && BSON_ITER_HOLDS_BINARY(&it)) {
			bson_iter_binary(&it, &sub, &k->req_len, &k->req);
			have_req = true;
		} else if (strcmp(f, "body") == 0 && BSON_ITER_HOLDS_BINARY(&it)) {
			bson_iter_binary(&it, &sub, &k->body_len, &k->body);
		} else if (strcmp(f, "state") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
			k->done = strcmp(bson_iter_utf8(&it, NULL), "done") == 0;
			have_state = true;
		} else if (strcmp(f, "status") == 0 && BSON_ITER_HOLDS_INT32(&it)) {
			k->status = bson_iter_int32(&it);
		} else if (strcmp(f, "op") == 0 && BSON_ITER_HOLDS_INT64(&it)) {
			k->op = bson_iter_int64(&it);
		} else if (strcmp(f, "at") == 0 && BSON_ITER_HOLDS_INT64(&it)) {
			k->at = bson_iter_int64(&it);
			have_at = true;
		}
	}
	return have_req && have_state && have_at && (!k->done || (k->status >= 100 && k->status <= 599));
}

static mongoc_collection_t *
keys_coll(struct mongo *m, mongoc_client_t *client)
{
	return mongoc_client_get_collection(client, m->database, MONGO_KEYS_COLLECTION);
}

/* Insert the in-flight document: 0, STOCK_EEXIST (the key exists), STOCK_ESYS (outcome unknown). */
static int
key_insert(struct mongo *m, mongoc_client_t *client, const char *key, size_t klen,
    const char *req, size_t rlen, const char *host, int64_t now, int64_t op)
{
	bson_t doc;
	bson_error_t e;
	int rc;

	bson_init(&doc);
	bson_append_utf8(&doc, "_id", 3, key, (int)klen);
	bson_append_binary(&doc, "req", 3, BSON_SUBTYPE_BINARY, (const uint8_t *)req, (uint32_t)rlen);
	BSON_APPEND_UTF8(&doc, "host", host);
	BSON_APPEND_UTF8(&doc, "state", "in_flight");
	BSON_APPEND_INT64(&doc, "at", now);
	BSON_APPEND_INT64(&doc, "op", op);
	rc = mongo_insert_unique(m, client, MONGO_KEYS_COLLECTION, &doc, &e);
	bson_destroy(&doc);
	return rc;
}

/* Read the key's document into a copy (@out, bson_destroy it): 0, STOCK_ENOENT, STOCK_ESYS. */
static int
key_read(struct mongo *m, mongoc_client_t *client, const char *key, size_t klen, bson_t *out)
{
	mongoc_collection_t *coll = keys_coll(m, client);
	mongoc_cursor_t *cur;
	const bson_t *b;
	bson_t filter, *opts;
	bson_error_t e;
	int rc = STOCK_ENOENT;

	bson_init(&filter);
	bson_append_utf8(&filter, "_id", 3, key, (int)klen);
	opts = BCON_NEW("limit", BCON_INT64(1));
	cur = mongoc_collection_find_with_opts(coll, &filter, opts, NULL);
	if (mongoc_cursor_next(cur, &b)) {
		bson_copy_to(b, out);
		rc = 0;
	}
	if (mongo_find_done(m, cur, &e, rc) == STOCK_ESYS) {
		if (rc == 0)
			bson_destroy(out); /* copied, then the cursor failed */
		rc = STOCK_ESYS;
	}
	bson_destroy(opts);
	bson_destroy(&filter);
	mongoc_collection_destroy(coll);
	return rc;
}

/* Delete the key's document if it is still the one stamped @at (an expired key). */
static int
key_delete_expired(struct mongo *m, mongoc_client_t *client, const char *key, size_t klen,
    int64_t at)
{
	mongoc_collection_t *coll = keys_coll(m, client);
	bson_t filter, opts;
	bson_error_t e;
	bool ok;

	bson_init(&filter);
	bson_append_utf8(&filter, "_id", 3, key, (int)klen);
	BSON_APPEND_INT64(&filter, "at", at);
	mongo_write_opts(m, &opts, false);
	ok = mongoc_collection_delete_one(coll, &filter, &opts, NULL, &e);
	mongo_trip_done(m, ok, &e);
	bson_destroy(&opts);
	bson_destroy(&filter);
	mongoc_collection_destroy(coll);
	return ok ? 0 : STOCK_ESYS;
}

/* Delete every key older than @ttl_ms. Best effort. */
static void
keys_prune(struct mongo *m, mongoc_client_t *client, int64_t now, int64_t ttl_ms)
{
	mongoc_collection_t *coll = keys_coll(m, client);
	bson_t *filter = BCON_NEW("at", "{", "$lt", BCON_INT64(now - ttl_ms), "}");
	bson_t opts;
	bson_error_t e;
	bool ok;

	mongo_write_opts(m, &opts, false);
	ok = mongoc_collection_delete_many(coll, filter, &opts, NULL, &e);
	mongo_trip_done(m, ok, &e);
	bson_destroy(&opts);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
}

/* What an existing key says to a request @req. */
static int
key_answer(const struct key_doc *k, const char *req, size_t rlen, enum mongo_key_state *st,
    int *status, struct buf *body)
{
	if (!k->done) {
		*st = MONGO_KEY_IN_FLIGHT;
		return 0;
	}
	if (k->req_len != rlen || memcmp(k->req, req, rlen) != 0) {
		*st = MONGO_KEY_MISMATCH;
		return 0;
	}
	*st = MONGO_KEY_REPLAY;
	*status = k->status;
	buf_append(body, (const char *)k->body, k->body_len);
	return body->failed ? STOCK_ENOMEM : 0;
}

int
mongo_key_begin(mongo_t *m, const char *key, size_t klen, const char *req, size_t rlen,
    const char *host, int64_t ttl_ms, enum mongo_key_state *st, int *status, struct buf *body)
{
	mongoc_client_t *client;
	int rc = STOCK_ESYS;

	if (key == NULL || klen == 0 || klen > 255 || req == NULL || rlen > UINT32_MAX / 2 ||
	    (host == NULL || !host_id_valid(host, strlen(host))) || ttl_ms <= 0)
		return STOCK_EINVAL;
	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	for (int round = 0; round < 2; round++) {
		int64_t now = util_wall_ms(), op;
		struct key_doc k;
		bson_t doc;
		int ins;

		if (getrandom(&op, sizeof op, 0) != (ssize_t)sizeof op)
			op = now ^ (int64_t)stock_now_ns();
		if ((ins = key_insert(m, client, key, klen, req, rlen, host, now, op)) == 0) {
			*st = MONGO_KEY_NEW;
			rc = 0;
			if (stock_idgen_next(&m->keys_made) % KEY_PRUNE_EVERY == 0)
				keys_prune(m, client, now, ttl_ms);
			break;
		}
		/* A duplicate, or an unknown outcome: the document tells (our
		   nonce in it: our insert landed). */
		if ((rc = key_read(m, client, key, klen, &doc)) == STOCK_ENOENT) {
			rc = STOCK_ESYS;
			if (ins == STOCK_ESYS)
				break; /* not landed (yet): unknown, the caller answers 503 */
			continue; /* deleted meanwhile (expired): claim it again */
		}
		if (rc != 0)
			break;
		if (!key_decode(&doc, &k)) {
			log_error("mongo", "%s.%s: the document of an idempotency key is corrupt",
			    m->database, MONGO_KEYS_COLLECTION);
			bson_destroy(&doc);
			rc = STOCK_ESYS;
			break;
		}
		if (ins == STOCK_ESYS && k.op == op && !k.done) {
			*st = MONGO_KEY_NEW;
			bson_destroy(&doc);
			rc = 0;
			break;
		}
		if (now - k.at >= ttl_ms && round == 0) {
			rc = key_delete_expired(m, client, key, klen, k.at);
			bson_destroy(&doc);
			if (rc != 0)
				break;
			continue;
		}
		rc = key_answer(&k, req, rlen, st, status, body);
		bson_destroy(&doc);
		break;
	}
	mongo_client_push(m, client);
	return rc;
}

/* Update or delete the in-flight key @key of @host. */
static int
key_settle(mongo_t *m, const char *key, size_t klen, const char *host, const bson_t *set)
{
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	bson_t filter, opts;
	bson_error_t e;
	bool ok;

	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	coll = keys_coll(m, client);
	bson_init(&filter);
	bson_append_utf8(&filter, "_id", 3, key, (int)klen);
	BSON_APPEND_UTF8(&filter, "host", host);
	BSON_APPEND_UTF8(&filter, "state", "in_flight");
	mongo_write_opts(m, &opts, false);
	ok = set != NULL ? mongoc_collection_update_one(coll, &filter, set, &opts, NULL, &e) :
	    mongoc_collection_delete_one(coll, &filter, &opts, NULL, &e);
	mongo_trip_done(m, ok, &e);
	bson_destroy(&opts);
	bson_destroy(&filter);
	mongoc_collection_destroy(coll);
	mongo_client_push(m, client);
	return ok ? 0 : STOCK_ESYS;
}

int
mongo_key_finish(mongo_t *m, const char *key, size_t klen, const char *host, int status,
    const char *body, size_t blen)
{
	bson_t set, fields;
	int rc;

	if (key == NULL || klen == 0 || klen > 255 || (host == NULL || !host_id_valid(host, strlen(host))) || status < 100 ||
	    status > 599 || (body == NULL && blen > 0) || blen > UINT32_MAX / 2)
		return STOCK_EINVAL;
	bson_init(&set);
	BSON_APPEND_DOCUMENT_BEGIN(&set, "$set", &fields);
	BSON_APPEND_UTF8(&fields, "state", "done");
	BSON_APPEND_INT32(&fields, "status", status);
	bson_append_binary(&fields, "body", 4, BSON_SUBTYPE_BINARY, (const uint8_t *)(body ? body : ""),
	    (uint32_t)blen);
	bson_append_document_end(&set, &fields);
	rc = key_settle(m, key, klen, host, &set);
	bson_destroy(&set);
	return rc;
}

int
mongo_key_abort(mongo_t *m, const char *key, size_t klen, const char *host)
{
	if (key == NULL || klen == 0 || klen > 255 || (host == NULL || !host_id_valid(host, strlen(host))))
		return STOCK_EINVAL;
	return key_settle(m, key, klen, host, NULL);
}
