/*
 * SKU documents in BSON, the reads both backends share, and the native
 * backend. Encoding writes every count as int64; decoding accepts only BSON
 * int32 or int64 (common/doc.h): a double, a negative count or one
 * above STOCK_COUNT_MAX makes the document corrupt (docs/mongo.md,
 * "Documents"). Native: one findAndModify with the condition in its filter;
 * a miss is explained by re-reading the document (nothing was applied, so
 * going again is safe, at most RECHECK_TRIES times); STOCK_ESYS (outcome
 * unknown) is never retried. docs/mongo.md, "Backends".
 */
#include <mongoc/mongoc.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "log.h"
#include "mongo/internal.h"

#define FAM_DUPKEY 1    /* internal: the upsert hit a duplicate key */
#define RECHECK_TRIES 4 /* no match, re-read says it would match: again */

/* ====================================================================== */
/* Decoding                                                                */
/* ====================================================================== */

/* Decode one lease sub-document; missing members are 0 / false, a repeated one is refused. */
static bool
lease_decode(bson_iter_t *it, struct mongo_lease *l, const char **why)
{
	static const char *const members[] = { "granted", "sold", "returned", "expires", "reclaimed" };
	bson_iter_t sub;
	unsigned seen = 0;

	memset(l, 0, sizeof *l);
	if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &sub)) {
		*why = "a lease is not a document";
		return false;
	}
	while (bson_iter_next(&sub)) {
		const char *key = bson_iter_key(&sub);
		unsigned k = 0;
		bool ok = true;

		while (k < 5 && strcmp(key, members[k]) != 0)
			k++;
		if (k == 5)
			continue; /* not ours: ignored */
		if (seen & (1u << k)) {
			*why = "a lease member is repeated";
			return false;
		}
		seen |= 1u << k;
		if (k == 0)
			ok = doc_iter_count(&sub, STOCK_COUNT_MAX, &l->granted);
		else if (k == 1)
			ok = doc_iter_count(&sub, STOCK_COUNT_MAX, &l->sold);
		else if (k == 2)
			ok = doc_iter_count(&sub, STOCK_COUNT_MAX, &l->returned);
		else if (k == 3)
			ok = doc_iter_int64(&sub, &l->expires_ms);
		else if ((ok = BSON_ITER_HOLDS_BOOL(&sub)))
			l->reclaimed = bson_iter_bool(&sub);
		if (!ok) {
			*why = "a lease member is not an integer in range (or reclaimed not a bool)";
			return false;
		}
	}
	return true;
}

/* Whether the key at @at, inside the sub-document at @parent, came before. */
static bool
key_repeated(const bson_iter_t *parent, bson_iter_t *at)
{
	const char *key = bson_iter_key(at);
	uint32_t off = bson_iter_offset(at);
	bson_iter_t scan;

	if (!bson_iter_recurse(parent, &scan))
		return false;
	while (bson_iter_next(&scan) && bson_iter_offset(&scan) < off)
		if (strcmp(bson_iter_key(&scan), key) == 0)
			return true;
	return false;
}

/* The leases sub-document into @v (at most MONGO_LEASES_MAX; see view_decode). */
static bool
leases_decode(struct mongo *m, bson_iter_t *it, struct mongo_view *v, bool *extra,
    const char **why)
{
	bson_iter_t ls;

	if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &ls)) {
		*why = "leases is not a document";
		return false;
	}
	while (bson_iter_next(&ls)) {
		const char *host = bson_iter_key(&ls);
		size_t hn = strlen(host);
		struct mongo_lease l;

		if (!host_id_valid(host, hn)) {
			*why = "a lease has an invalid host id";
			return false;
		}
		if (!lease_decode(&ls, &l, why))
			return false;
		if (key_repeated(it, &ls)) {
			*why = "a host has two leases";
			return false;
		}
		if (v->nleases == MONGO_LEASES_MAX) {
			*extra = true;
			if (stock_gauge_get(&m->warned_leases) == 0) {
				stock_gauge_set(&m->warned_leases, 1);
				log_warn("mongo", "a document has more than %d leases; the extra ones "
				                  "are ignored (logged once)",
				    MONGO_LEASES_MAX);
			}
			continue;
		}
		ASSERT(hn <= HOST_ID_MAX);
		memcpy(v->leases[v->nleases].host, host, hn + 1);
		v->leases[v->nleases].lease = l;
		v->nleases++;
	}
	return true;
}

/* The holds sub-document {<hold id>: q} into @v (see mongo.h). */
static bool
holds_decode(bson_iter_t *it, struct mongo_view *v, const char **why)
{
	bson_iter_t hs;

	if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &hs)) {
		*why = "holds is not a document";
		return false;
	}
	while (bson_iter_next(&hs)) {
		const char *id = bson_iter_key(&hs);
		size_t n = strlen(id);
		uint64_t q;

		if (n > MONGO_HOLD_ID_MAX || !host_id_valid(id, n)) {
			*why = "a hold entry has an invalid id";
			return false;
		}
		if (!doc_iter_count(&hs, STOCK_COUNT_MAX, &q) || q == 0 ||
		    v->held > STOCK_COUNT_MAX - q) {
			*why = "a hold entry is not a count in range";
			return false;
		}
		if (v->nholds == MONGO_HOLDS_MAX) {
			*why = "more than MONGO_HOLDS_MAX hold entries";
			return false;
		}
		for (size_t i = 0; i < v->nholds; i++)
			if (strcmp(v->holds[i].id, id) == 0) {
				*why = "a hold entry is repeated";
				return false;
			}
		memcpy(v->holds[v->nholds].id, id, n + 1);
		v->holds[v->nholds++].q = q;
		v->held += q;
	}
	return true;
}

/* Our top-level fields beyond the SKU document's own (their bits above SKU_DOC_F_*). */
enum view_field { VF_LOST, VF_LEASES, VF_HOLDS, VF_RETIRED, VF_NHOLDS, VF_NONE };
static const char *const view_fields[VF_NONE] = { "lost", "leases", "holds", "retired", "nholds" };
#define VIEW_F_SHIFT 8
_Static_assert((SKU_DOC_F_REQUIRED | SKU_DOC_F_HELD) < (1u << VIEW_F_SHIFT), "bits apart");

/* One top-level field of a document: the SKU document's own (common/doc.h;
   *@seen gets their bits), lost, leases, holds or retired. Unknown fields are
   ignored; a known one twice is refused (which of the two would be meant?). */
static bool
field_decode(struct mongo *m, bson_iter_t *it, bool want_id, struct mongo_view *v,
    unsigned *seen, bool *extra, const char **why)
{
	const char *key = bson_iter_key(it);
	unsigned k = 0;

	while (k < VF_NONE && strcmp(key, view_fields[k]) != 0)
		k++;
	if (k == VF_NONE)
		return sku_doc_decode_field(it, want_id, true, &v->doc, seen, why);
	if (*seen & (1u << (VIEW_F_SHIFT + k))) {
		*why = "repeated field";
		return false;
	}
	*seen |= 1u << (VIEW_F_SHIFT + k);
	switch ((enum view_field)k) {
	case VF_LOST:
		*why = "lost is not an integer in range";
		return doc_iter_count(it, STOCK_COUNT_MAX, &v->lost);
	case VF_LEASES:
		return leases_decode(m, it, v, extra, why);
	case VF_HOLDS:
		return holds_decode(it, v, why);
	case VF_RETIRED:
		*why = "retired is not a bool";
		if (!BSON_ITER_HOLDS_BOOL(it))
			return false;
		v->retired = bson_iter_bool(it);
		return true;
	case VF_NHOLDS:
	case VF_NONE:
		break;
	}
	return true; /* nholds: native's count of holds (native_query); the map is the truth */
}

bool
mongo_view_decode(struct mongo *m, const bson_t *b, const char *sku, struct mongo_view *v,
    bool *extra, const char **why)
{
	bson_iter_t it;
	unsigned seen = 0;
	bool more = false;

	memset(v, 0, sizeof *v);
	if (extra != NULL)
		*extra = false;
	/* Whole before read: an iterator stops quietly at a damaged element,
	   which would leave the fields after it unread. */
	if (!bson_validate(b, BSON_VALIDATE_NONE, NULL) || !bson_iter_init(&it, b)) {
		*why = "malformed BSON document";
		return false;
	}
	if (sku != NULL) {
		ASSERT(strlen(sku) <= STOCK_SKU_MAX);
		memcpy(v->doc.sku, sku, strlen(sku) + 1);
		seen |= 1;
	}
	while (bson_iter_next(&it))
		if (!field_decode(m, &it, sku == NULL, v, &seen, &more, why))
			return false;
	if (extra != NULL)
		*extra = more;
	if ((seen & SKU_DOC_F_REQUIRED) != SKU_DOC_F_REQUIRED) {
		*why = "document lacks _id, stock, sold or version";
		return false;
	}
	return true;
}

bool
mongo_lease_eq(const struct mongo_lease *a, const struct mongo_lease *b)
{
	return a->granted == b->granted && a->sold == b->sold && a->returned == b->returned &&
	    a->expires_ms == b->expires_ms && a->reclaimed == b->reclaimed;
}

const struct mongo_lease *
mongo_view_lease(const struct mongo_view *v, const char *host)
{
	for (size_t i = 0; i < v->nleases; i++)
		if (strcmp(v->leases[i].host, host) == 0)
			return &v->leases[i].lease;
	return NULL;
}

/* ====================================================================== */
/* Encoding                                                                */
/* ====================================================================== */

/* Append lease @l as sub-document @key of @b. */
static void
lease_append(bson_t *b, const char *key, const struct mongo_lease *l)
{
	bson_t sub;

	BSON_APPEND_DOCUMENT_BEGIN(b, key, &sub);
	BSON_APPEND_INT64(&sub, "granted", (int64_t)l->granted);
	BSON_APPEND_INT64(&sub, "sold", (int64_t)l->sold);
	BSON_APPEND_INT64(&sub, "returned", (int64_t)l->returned);
	BSON_APPEND_INT64(&sub, "expires", l->expires_ms);
	BSON_APPEND_BOOL(&sub, "reclaimed", l->reclaimed);
	bson_append_document_end(b, &sub);
}

void
mongo_state_append(bson_t *b, const struct mongo_view *v)
{
	bson_t ls;

	ASSERT(v->nleases <= MONGO_LEASES_MAX);
	BSON_APPEND_INT64(b, "stock", (int64_t)v->doc.stock);
	BSON_APPEND_INT64(b, "sold", (int64_t)v->doc.sold);
	BSON_APPEND_INT64(b, "version", (int64_t)v->doc.version);
	BSON_APPEND_INT64(b, "lost", (int64_t)v->lost);
	BSON_APPEND_BOOL(b, "retired", v->retired);
	BSON_APPEND_DOCUMENT_BEGIN(b, "leases", &ls);
	for (size_t i = 0; i < v->nleases; i++)
		lease_append(&ls, v->leases[i].host, &v->leases[i].lease);
	bson_append_document_end(b, &ls);
	ASSERT(v->nholds <= MONGO_HOLDS_MAX);
	BSON_APPEND_INT64(b, "nholds", (int64_t)v->nholds);
	BSON_APPEND_DOCUMENT_BEGIN(b, "holds", &ls);
	for (size_t i = 0; i < v->nholds; i++)
		BSON_APPEND_INT64(&ls, v->holds[i].id, (int64_t)v->holds[i].q);
	bson_append_document_end(b, &ls);
}

/* ====================================================================== */
/* Reads                                                                   */
/* ====================================================================== */

int
mongo_find_done(struct mongo *m, mongoc_cursor_t *cur, bson_error_t *e, int rc)
{
	if (mongoc_cursor_error(cur, e)) {
		mongo_trip_done(m, false, e);
		rc = STOCK_ESYS;
	} else {
		mongo_trip_done(m, true, NULL);
	}
	mongoc_cursor_destroy(cur);
	return rc;
}

int
mongo_read_doc(struct mongo *m, mongoc_client_t *client, const char *sku,
    struct mongo_view *out, bool *extra)
{
	mongoc_collection_t *coll;
	mongoc_cursor_t *cur;
	const bson_t *b;
	bson_t *filter, *opts;
	bson_error_t e;
	const char *why;
	int rc = STOCK_ENOENT;

	coll = mongoc_client_get_collection(client, m->database, mongo_coll_of(m, sku));
	filter = BCON_NEW("_id", BCON_UTF8(sku));
	opts = BCON_NEW("limit", BCON_INT64(1));
	cur = mongoc_collection_find_with_opts(coll, filter, opts, NULL);
	if (mongoc_cursor_next(cur, &b)) {
		if (mongo_view_decode(m, b, NULL, out, extra, &why)) {
			rc = 0;
		} else {
			log_error("mongo", "%s.%s: document %s is corrupt (%s)", m->database,
			    mongo_coll_of(m, sku), sku, why);
			rc = STOCK_ESYS;
		}
	}
	rc = mongo_find_done(m, cur, &e, rc);
	bson_destroy(opts);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	return rc;
}

/* Room for one more view in @l. */
static int
list_grow(struct mongo_view_list *l)
{
	size_t cap;
	struct mongo_view *nv;

	if (l->n < l->cap)
		return 0;
	cap = l->cap ? l->cap * 2 : 64;
	if ((nv = realloc(l->v, cap * sizeof *nv)) == NULL)
		return STOCK_ENOMEM;
	l->v = nv;
	l->cap = cap;
	return 0;
}

/* Every document of collection @name into @l. */
static int
read_coll(struct mongo *m, mongoc_client_t *client, const char *name, struct mongo_view_list *l)
{
	mongoc_collection_t *coll = mongoc_client_get_collection(client, m->database, name);
	bson_t filter = BSON_INITIALIZER;
	mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
	const bson_t *b;
	bson_error_t e;
	int rc = 0;

	while (rc == 0 && mongoc_cursor_next(cur, &b)) {
		const char *why;

		if ((rc = list_grow(l)) != 0)
			break;
		if (mongo_view_decode(m, b, NULL, &l->v[l->n], NULL, &why))
			l->n++;
		else
			log_warn("mongo", "%s.%s: skipped a corrupt document (%s)", m->database, name,
			    why);
	}
	rc = mongo_find_done(m, cur, &e, rc);
	mongoc_collection_destroy(coll);
	return rc;
}

int
mongo_read_all(struct mongo *m, mongoc_client_t *client, struct mongo_view_list *l)
{
	int rc;

	memset(l, 0, sizeof *l);
	rc = read_coll(m, client, m->one_coll, l);
	/* One collection for both kinds: read it once. */
	if (rc == 0 && strcmp(m->one_coll, m->many_coll) != 0)
		rc = read_coll(m, client, m->many_coll, l);
	if (rc != 0) {
		free(l->v);
		memset(l, 0, sizeof *l);
	}
	return rc;
}

/* ====================================================================== */
/* The native backend                                                      */
/* ====================================================================== */

static int
native_init(struct mongo *m, char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	m->serialize = m->ferretdb;
	if (m->ferretdb)
		log_warn("mongo", "FerretDB with atomic_mode 1: its conditional updates are not "
		                  "atomic (FerretDB#3040); this process serializes its writes per "
		                  "SKU, but several processes on one FerretDB can oversell");
	return 0;
}

/* The new document of a findAndModify @reply into @out; *@found. */
static int
fam_reply(struct mongo *m, const char *sku, const bson_t *reply, bool *found,
    struct mongo_view *out)
{
	const uint8_t *data;
	uint32_t len;
	bson_iter_t it;
	bson_t doc;
	const char *why = "malformed BSON document";

	if (!bson_iter_init_find(&it, reply, "value") || !BSON_ITER_HOLDS_DOCUMENT(&it))
		return 0; /* null: nothing matched */
	bson_iter_document(&it, &len, &data);
	if (bson_init_static(&doc, data, len) && mongo_view_decode(m, &doc, NULL, out, NULL, &why)) {
		*found = true;
		return 0;
	}
	log_error("mongo", "%s.%s: %s was updated but is corrupt (%s)", m->database,
	    mongo_coll_of(m, sku), sku, why);
	return STOCK_ESYS;
}

/*
 * One findAndModify on @sku's document, returning the new document.
 * Returns 0 with *@found (and @out filled when found), FAM_DUPKEY when an
 * upsert found the _id taken (nothing was applied), or STOCK_ESYS (the
 * outcome is unknown; never retried here).
 */
static int
fam_run(struct mongo *m, const char *sku, const bson_t *query, const bson_t *update, bool upsert,
    bool *found, struct mongo_view *out)
{
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	mongoc_find_and_modify_opts_t *fo;
	pthread_mutex_t *lk;
	bson_t reply, extra;
	bson_error_t e;
	bool ok;
	int rc;

	*found = false;
	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	coll = mongoc_client_get_collection(client, m->database, mongo_coll_of(m, sku));
	fo = mongoc_find_and_modify_opts_new();
	mongoc_find_and_modify_opts_set_update(fo, update);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_RETURN_NEW |
	        (upsert ? MONGOC_FIND_AND_MODIFY_UPSERT : MONGOC_FIND_AND_MODIFY_NONE));
	mongo_write_opts(m, &extra, false);
	mongoc_find_and_modify_opts_append(fo, &extra);
	lk = mongo_sku_lock(m, sku);
	ok = mongoc_collection_find_and_modify_with_opts(coll, query, fo, &reply, &e);
	mongo_sku_unlock(lk);
	mongo_trip_done(m, ok || (upsert && mongo_is_dupkey(&e)), &e);
	if (!ok)
		rc = upsert && mongo_is_dupkey(&e) ? FAM_DUPKEY : STOCK_ESYS;
	else
		rc = fam_reply(m, sku, &reply, found, out);
	bson_destroy(&reply);
	bson_destroy(&extra);
	mongoc_find_and_modify_opts_destroy(fo);
	mongoc_collection_destroy(coll);
	mongo_client_push(m, client);
	return rc;
}

/* Upsert with $setOnInsert: a duplicate key is a concurrent seed that won. */
static int
native_seed(struct mongo *m, const char *sku, uint64_t n)
{
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	bson_t *filter, *update, opts;
	pthread_mutex_t *lk;
	bson_error_t e;
	bool ok;

	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	coll = mongoc_client_get_collection(client, m->database, mongo_coll_of(m, sku));
	filter = BCON_NEW("_id", BCON_UTF8(sku));
	update = BCON_NEW("$setOnInsert", "{", "stock", BCON_INT64((int64_t)n), "sold",
	    BCON_INT64(0), "version", BCON_INT64(1), "}");
	mongo_write_opts(m, &opts, true);
	lk = mongo_sku_lock(m, sku);
	ok = mongoc_collection_update_one(coll, filter, update, &opts, NULL, &e);
	mongo_sku_unlock(lk);
	ok = ok || mongo_is_dupkey(&e);
	mongo_trip_done(m, ok, &e);
	bson_destroy(&opts);
	bson_destroy(update);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	mongo_client_push(m, client);
	return ok ? 0 : STOCK_ESYS;
}

/* {_id, leases.<host>: {$exists: false}} or every member of it equal, plus
   stock >= -d_stock and lost >= -d_lost when those are negative. */
static void
lease_query(bson_t *q, const struct mongo_op *op)
{
	char key[sizeof "leases." + HOST_ID_MAX + sizeof ".reclaimed"];
	bson_t child;
	int kl = snprintf(key, sizeof key, "leases.%s", op->host);

	ASSERT(kl > 0 && (size_t)kl + sizeof ".reclaimed" <= sizeof key);
	BSON_APPEND_UTF8(q, "_id", op->sku);
	if (op->expect == NULL) {
		BSON_APPEND_DOCUMENT_BEGIN(q, key, &child);
		BSON_APPEND_BOOL(&child, "$exists", false);
		bson_append_document_end(q, &child);
	} else {
		snprintf(key + kl, sizeof key - (size_t)kl, ".granted");
		BSON_APPEND_INT64(q, key, (int64_t)op->expect->granted);
		snprintf(key + kl, sizeof key - (size_t)kl, ".sold");
		BSON_APPEND_INT64(q, key, (int64_t)op->expect->sold);
		snprintf(key + kl, sizeof key - (size_t)kl, ".returned");
		BSON_APPEND_INT64(q, key, (int64_t)op->expect->returned);
		snprintf(key + kl, sizeof key - (size_t)kl, ".expires");
		BSON_APPEND_INT64(q, key, op->expect->expires_ms);
		snprintf(key + kl, sizeof key - (size_t)kl, ".reclaimed");
		BSON_APPEND_BOOL(q, key, op->expect->reclaimed);
	}
	if (op->d_stock < 0) { /* a grant: never from a retired document */
		BSON_APPEND_DOCUMENT_BEGIN(q, "stock", &child);
		BSON_APPEND_INT64(&child, "$gte", -op->d_stock);
		bson_append_document_end(q, &child);
		BCON_APPEND(q, "retired", "{", "$ne", BCON_BOOL(true), "}");
	}
	if (op->d_lost < 0) {
		BSON_APPEND_DOCUMENT_BEGIN(q, "lost", &child);
		BSON_APPEND_INT64(&child, "$gte", -op->d_lost);
		bson_append_document_end(q, &child);
	}
}

/* {$set: {leases.<host>: next}, $inc: {the non-zero deltas, version: 1}} */
static void
lease_update(bson_t *u, const struct mongo_op *op)
{
	char key[sizeof "leases." + HOST_ID_MAX];
	bson_t child;
	int kl = snprintf(key, sizeof key, "leases.%s", op->host);

	ASSERT(kl > 0 && (size_t)kl < sizeof key);
	BSON_APPEND_DOCUMENT_BEGIN(u, "$set", &child);
	lease_append(&child, key, op->next);
	bson_append_document_end(u, &child);
	BSON_APPEND_DOCUMENT_BEGIN(u, "$inc", &child);
	if (op->d_stock != 0)
		BSON_APPEND_INT64(&child, "stock", op->d_stock);
	if (op->d_sold != 0)
		BSON_APPEND_INT64(&child, "sold", op->d_sold);
	if (op->d_lost != 0)
		BSON_APPEND_INT64(&child, "lost", op->d_lost);
	BSON_APPEND_INT64(&child, "version", 1);
	bson_append_document_end(u, &child);
}

/*
 * Hold: {_id, stock >= n, holds.<id> absent, nholds < MONGO_HOLDS_MAX (a
 * missing nholds is 0)}, then stock -= n, nholds + 1, holds.<id> = n.
 * Unhold: {_id, holds.<id>: n}, then sold += sell, stock += n - sell,
 * nholds - 1, holds.<id> removed.
 */
static void
hold_query(const struct mongo_op *op, bson_t *q, bson_t *u)
{
	char key[sizeof "holds." + MONGO_HOLD_ID_MAX];
	int64_t n = (int64_t)op->n, sell = (int64_t)op->sell;
	int kl = snprintf(key, sizeof key, "holds.%s", op->hold);

	ASSERT(kl > 0 && (size_t)kl < sizeof key);
	if (op->kind == MONGO_OP_HOLD) {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku), "stock", "{", "$gte", BCON_INT64(n), "}",
		    key, "{", "$exists", BCON_BOOL(false), "}", "nholds", "{", "$not", "{", "$gte",
		    BCON_INT64(MONGO_HOLDS_MAX), "}", "}", "retired", "{", "$ne", BCON_BOOL(true), "}");
		BCON_APPEND(u, "$inc", "{", "stock", BCON_INT64(-n), "nholds", BCON_INT64(1),
		    "version", BCON_INT64(1), "}", "$set", "{", key, BCON_INT64(n), "}");
	} else {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku), key, BCON_INT64(n));
		BCON_APPEND(u, "$inc", "{", "sold", BCON_INT64(sell), "stock", BCON_INT64(n - sell),
		    "nholds", BCON_INT64(-1), "version", BCON_INT64(1), "}", "$unset", "{", key,
		    BCON_UTF8(""), "}");
	}
}

/*
 * Create: an upsert of {_id, retired: true} (a live document is a duplicate
 * key: nothing applied, and the re-read says STOCK_EEXIST); on insert the
 * filter's retired is overwritten and version counts from 0 to 1. Retire:
 * {_id}, $set stock 0 and retired.
 */
static void
catalog_query(const struct mongo_op *op, bson_t *q, bson_t *u)
{
	if (op->kind == MONGO_OP_CREATE) {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku), "retired", BCON_BOOL(true));
		BCON_APPEND(u, "$set", "{", "stock", BCON_INT64((int64_t)op->n), "retired",
		    BCON_BOOL(false), "}", "$inc", "{", "version", BCON_INT64(1), "}",
		    "$setOnInsert", "{", "sold", BCON_INT64(0), "}");
	} else {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku));
		BCON_APPEND(u, "$set", "{", "stock", BCON_INT64(0), "retired", BCON_BOOL(true), "}",
		    "$inc", "{", "version", BCON_INT64(1), "}");
	}
}

/*
 * The filter and update of @op: its conditions (mongo_op_next) as a
 * findAndModify. Take: {_id, stock >= n, sold <= STOCK_COUNT_MAX - n,
 * retired not true}, $inc.
 * Adjust: an upsert, $set (absolute) or $inc with stock <= STOCK_COUNT_MAX
 * - n in the filter, so the result stays in range, and retired not true (a
 * retired document is a duplicate key: refused). Lease: lease_query,
 * lease_update. Create, retire: catalog_query.
 */
static void
native_query(const struct mongo_op *op, bson_t *q, bson_t *u, bool *upsert)
{
	int64_t n = (int64_t)op->n;

	bson_init(q);
	bson_init(u);
	*upsert = op->kind == MONGO_OP_ADJUST || op->kind == MONGO_OP_CREATE;
	if (op->kind == MONGO_OP_CREATE || op->kind == MONGO_OP_RETIRE) {
		catalog_query(op, q, u);
	} else if (op->kind == MONGO_OP_TAKE) {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku), "stock", "{", "$gte", BCON_INT64(n), "}",
		    "sold", "{", "$lte", BCON_INT64((int64_t)STOCK_COUNT_MAX - n), "}",
		    "retired", "{", "$ne", BCON_BOOL(true), "}");
		BCON_APPEND(u, "$inc", "{", "stock", BCON_INT64(-n), "sold", BCON_INT64(n), "version",
		    BCON_INT64(1), "}");
	} else if (op->kind == MONGO_OP_ADJUST && op->absolute) {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku), "retired", "{", "$ne", BCON_BOOL(true), "}");
		BCON_APPEND(u, "$set", "{", "stock", BCON_INT64(n), "}", "$inc", "{", "version",
		    BCON_INT64(1), "}", "$setOnInsert", "{", "sold", BCON_INT64(0), "}");
	} else if (op->kind == MONGO_OP_ADJUST) {
		BCON_APPEND(q, "_id", BCON_UTF8(op->sku), "stock", "{", "$lte",
		    BCON_INT64((int64_t)STOCK_COUNT_MAX - n), "}", "retired", "{", "$ne",
		    BCON_BOOL(true), "}");
		BCON_APPEND(u, "$inc", "{", "stock", BCON_INT64(n), "version", BCON_INT64(1), "}",
		    "$setOnInsert", "{", "sold", BCON_INT64(0), "}");
	} else if (op->kind == MONGO_OP_HOLD || op->kind == MONGO_OP_UNHOLD) {
		hold_query(op, q, u);
	} else {
		lease_query(q, op);
		lease_update(u, op);
	}
}

/*
 * @op as one findAndModify. When it matches nothing (or the adjust's upsert
 * hits a duplicate key) nothing was applied: the document is read back and
 * mongo_op_next tells why; if it would match now, again (RECHECK_TRIES
 * times, then STOCK_ECONFLICT). STOCK_ESYS (outcome unknown) is never
 * retried: for a lease the caller re-reads to learn it.
 */
static int
native_write(struct mongo *m, const struct mongo_op *op, struct mongo_view *out)
{
	struct mongo_view next;
	bson_t query, update;
	bool upsert, found;
	int rc = STOCK_ECONFLICT;

	native_query(op, &query, &update, &upsert);
	for (int attempt = 0; attempt < RECHECK_TRIES; attempt++) {
		rc = fam_run(m, op->sku, &query, &update, upsert, &found, out);
		if (rc == STOCK_ESYS || (rc == 0 && found))
			break;
		if (rc == 0 && upsert) { /* an upsert that neither matched nor inserted */
			rc = STOCK_ESYS;
			break;
		}
		if ((rc = mongo_view(m, op->sku, out)) == STOCK_ENOENT && upsert) {
			rc = STOCK_ECONFLICT; /* created and deleted meanwhile: again */
			continue;
		}
		if (rc != 0 || (rc = mongo_op_next(op, out, &next)) != 0)
			break;
		rc = STOCK_ECONFLICT; /* it changed between the two: it would match now */
	}
	bson_destroy(&update);
	bson_destroy(&query);
	return rc;
}

const struct mongo_backend mongo_native_backend = {
	.name = "native",
	.init = native_init,
	.fini = NULL,
	.seed = native_seed,
	.write = native_write,
	.read = mongo_read_doc,
	.fix = NULL,
};
