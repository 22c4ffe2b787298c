/*
 * The successor-claims backend: conditional updates on a server whose
 * filtered updates are not atomic (FerretDB v1, FerretDB#3040), chosen at
 * open on FerretDB or with MONGO_ATOMIC_CLAIMS. A SKU's history is a chain
 * of full states: its document as created, then claims {_id: "<sku>#<v>",
 * sku, from: v, op: <nonce>, at: <server ms>, state} in
 * <database>.StockClaims, each "the successor of version v". A write
 * computes its next state in C from the latest state it knows and commits
 * by inserting the claim; the unique _id lets one successor follow each
 * version. The SKU document is a cache every reader rolls forward. The
 * correctness argument and the constants below: docs/internals/claims.md.
 */
#include <mongoc/mongoc.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/util.h"
#include "log.h"
#include "mongo/internal.h"

#define CLAIM_TRIES 64          /* claims lost in a row before STOCK_ECONFLICT, */
                                /* ... and not before timeout_ms of trying */
#define CLAIM_KEEP 64           /* claims kept behind the pruner's versions */
#define CLAIM_PRUNE_EVERY 128   /* prune after every 128th commit of a process */
#define CLAIM_PRUNE_AGE_MS 3000 /* ... only claims older than this (or 2 */
                                /* timeout_ms + 1 s, if longer) */
#define CLAIM_CACHE_TTL_NS 100000000ULL /* a remembered tip is trusted 100 ms */
#define CLAIM_ANCHOR_NS 1000000000ULL   /* a walk re-reads the document after 1 s */
#define CLAIM_MAX_HOPS 1000000  /* sanity bound of one roll-forward */

/* Internal results (never returned to callers; STOCK_* codes are negative). */
#define CLAIM_LOST 2  /* the _id exists: another claim took the version */
#define CLAIM_READY 3 /* claim_base: a base state is ready */

#define CLAIM_ID_MAX (STOCK_SKU_MAX + sizeof "#18446744073709551615")

/*
 * The last state a thread of this process knew to be the tip of a SKU's
 * chain (it committed it, or read it while no successor claim existed), per
 * lock stripe, under that stripe's lock. Only ever the base of a claim
 * insert, which fails unless it is still the tip; never an answer.
 */
struct claim_slot {
	bool valid;
	uint64_t at_ns; /* CLOCK_MONOTONIC when it was known to be the tip */
	struct mongo_view v;
};

struct mongo_claims {
	struct stock_idgen nonces;        /* claim nonces handed out */
	struct stock_idgen commits;       /* claims committed (pruning cadence) */
	struct stock_gauge apply_failing; /* copying into documents fails (logged once) */
	uint64_t nonce_key;               /* random per object, see claim_nonce */
	struct claim_slot slots[MONGO_SKU_STRIPES];
};

/* ====================================================================== */
/* Claims: ids, nonces, encoding                                           */
/* ====================================================================== */

/* A claim nonce: distinct within the object (a bijection of a counter),
 * keyed by a random value per object, so two objects collide with
 * probability 2^-64 (a nonce only tells our claim from another's). */
static int64_t
claim_nonce(struct mongo_claims *cl)
{
	uint64_t z = cl->nonce_key + stock_idgen_next(&cl->nonces) * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return (int64_t)(z ^ (z >> 31));
}

/* "<sku>#<from>": the version after the last '#' is all digits, so a SKU
   that contains '#' cannot produce another SKU's ids. */
static void
claim_id(char *buf, size_t len, const char *sku, uint64_t from)
{
	int n = snprintf(buf, len, "%s#%" PRIu64, sku, from);

	ASSERT(n > 0 && (size_t)n < len);
}

/* Decode claim @b ("<sku>#<from>"): its state and its nonce. */
static bool
claim_decode(struct mongo *m, const bson_t *b, const char *sku, uint64_t from,
    struct mongo_view *state, int64_t *op, const char **why)
{
	bson_iter_t it;
	bool have_state = false, have_op = false, have_from = false, extra = false;
	int64_t f = -1;

	if (!bson_iter_init(&it, b)) {
		*why = "malformed BSON document";
		return false;
	}
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (strcmp(key, "from") == 0) {
			have_from = doc_iter_int64(&it, &f);
		} else if (strcmp(key, "op") == 0) {
			have_op = doc_iter_int64(&it, op);
		} else if (strcmp(key, "sku") == 0) {
			if (!BSON_ITER_HOLDS_UTF8(&it) || strcmp(bson_iter_utf8(&it, NULL), sku) != 0) {
				*why = "sku does not match its _id";
				return false;
			}
		} else if (strcmp(key, "state") == 0) {
			const uint8_t *data;
			uint32_t len;
			bson_t sd;

			if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
				*why = "state is not a document";
				return false;
			}
			bson_iter_document(&it, &len, &data);
			if (!bson_init_static(&sd, data, len) ||
			    !mongo_view_decode(m, &sd, sku, state, &extra, why))
				return false;
			have_state = true;
		}
	}
	if (!have_state || !have_op || !have_from || f < 0 || (uint64_t)f != from) {
		*why = "lacks state, op or from, or from does not match its _id";
		return false;
	}
	if (state->doc.version <= from || extra) {
		*why = "its state's version is not above from, or it has too many leases";
		return false;
	}
	return true;
}

/*
 * Look up the successor claim of version @from of @sku. Returns 0 (*@state
 * and *@op filled, each may be NULL), STOCK_ENOENT, or STOCK_ESYS (the read
 * failed, or the claim is corrupt: logged).
 */
static int
claim_find(struct mongo *m, mongoc_client_t *client, const char *sku, uint64_t from,
    struct mongo_view *state, int64_t *op, bson_error_t *e)
{
	mongoc_collection_t *coll;
	mongoc_cursor_t *cur;
	const bson_t *b;
	bson_t *filter, *opts;
	struct mongo_view tmp;
	int64_t optmp;
	char id[CLAIM_ID_MAX];
	const char *why;
	int rc = STOCK_ENOENT;

	claim_id(id, sizeof id, sku, from);
	coll = mongoc_client_get_collection(client, m->database, MONGO_CLAIMS_COLLECTION);
	filter = BCON_NEW("_id", BCON_UTF8(id));
	opts = BCON_NEW("limit", BCON_INT64(1));
	cur = mongoc_collection_find_with_opts(coll, filter, opts, NULL);
	if (mongoc_cursor_next(cur, &b)) {
		if (claim_decode(m, b, sku, from, state != NULL ? state : &tmp,
		        op != NULL ? op : &optmp, &why)) {
			rc = 0;
		} else {
			log_error("mongo", "%s.%s: claim %s is corrupt (%s)", m->database,
			    MONGO_CLAIMS_COLLECTION, id, why);
			bson_set_error(e, 0, 0, "claim %s is corrupt", id);
			rc = STOCK_ESYS;
		}
	}
	rc = mongo_find_done(m, cur, e, rc);
	bson_destroy(opts);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
	return rc;
}

/* mongo_insert_unique, a duplicate being a lost claim. */
static int
claim_insert_unique(struct mongo *m, mongoc_client_t *client, const char *name, const bson_t *doc,
    bson_error_t *e)
{
	int rc = mongo_insert_unique(m, client, name, doc, e);

	return rc == STOCK_EEXIST ? CLAIM_LOST : rc;
}

/* Insert claim "<sku>#<from>" -> @next with nonce @op. Returns 0,
 * CLAIM_LOST (duplicate key) or STOCK_ESYS (outcome unknown). */
static int
claim_insert(struct mongo *m, mongoc_client_t *client, const char *sku, uint64_t from, int64_t op,
    const struct mongo_view *next, bson_error_t *e)
{
	bson_t doc, state;
	char id[CLAIM_ID_MAX];
	int rc;

	claim_id(id, sizeof id, sku, from);
	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", id);
	BSON_APPEND_UTF8(&doc, "sku", sku);
	BSON_APPEND_INT64(&doc, "from", (int64_t)from);
	BSON_APPEND_INT64(&doc, "op", op);
	BSON_APPEND_INT64(&doc, "at", mongo_server_ms(m));
	BSON_APPEND_DOCUMENT_BEGIN(&doc, "state", &state);
	mongo_state_append(&state, next);
	bson_append_document_end(&doc, &state);
	rc = claim_insert_unique(m, client, MONGO_CLAIMS_COLLECTION, &doc, e);
	bson_destroy(&doc);
	return rc;
}

/*
 * Commit @next as the successor of version @from: the claim insert, with an
 * unknown outcome settled by looking the claim up (our nonce: committed;
 * another's: lost; none: inserted once more with the same nonce, and a
 * duplicate key then is looked up too). Returns 0 (committed), CLAIM_LOST
 * or STOCK_ESYS (outcome unknown).
 */
static int
claim_commit(struct mongo *m, mongoc_client_t *client, const char *sku, uint64_t from,
    const struct mongo_view *next, bson_error_t *e)
{
	int64_t op = claim_nonce(m->claims), found;
	bool uncertain = false, resent = false;
	int rc;

	ASSERT(next->doc.version > from);
	rc = claim_insert(m, client, sku, from, op, next, e);
	for (;;) {
		int lrc;

		if (rc == 0)
			return 0;
		if (rc == CLAIM_LOST && !uncertain)
			return CLAIM_LOST; /* nothing of ours was ever in flight */
		/* Unknown, or a duplicate while an insert of ours may have landed. */
		uncertain = true;
		lrc = claim_find(m, client, sku, from, NULL, &found, e);
		if (lrc == 0)
			return found == op ? 0 : CLAIM_LOST;
		if (lrc != STOCK_ENOENT || resent)
			return STOCK_ESYS;
		resent = true;
		rc = claim_insert(m, client, sku, from, op, next, e);
	}
}

/* ====================================================================== */
/* The chain: documents, roll-forward, pruning                             */
/* ====================================================================== */

/*
 * Copy claimed state @v into its SKU document unless the document holds a
 * newer one. Best effort (the claim is the commit): failures are logged
 * once until a copy succeeds again.
 */
static void
state_apply(struct mongo *m, mongoc_client_t *client, const struct mongo_view *v)
{
	struct mongo_claims *cl = m->claims;
	mongoc_collection_t *coll;
	bson_t *filter, update, set, opts;
	bson_error_t e;
	bool ok;

	coll = mongoc_client_get_collection(client, m->database, mongo_coll_of(m, v->doc.sku));
	filter = BCON_NEW("_id", BCON_UTF8(v->doc.sku), "version", "{", "$lt",
	    BCON_INT64((int64_t)v->doc.version), "}");
	bson_init(&update);
	BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
	mongo_state_append(&set, v);
	bson_append_document_end(&update, &set);
	mongo_write_opts(m, &opts, false);
	ok = mongoc_collection_update_one(coll, filter, &update, &opts, NULL, &e);
	mongo_trip_done(m, ok, &e);
	if (!ok && stock_gauge_get(&cl->apply_failing) == 0) {
		stock_gauge_set(&cl->apply_failing, 1);
		log_warn("mongo", "claims: copying %s version %" PRIu64 " into its document failed "
		                  "(%s); the write is committed by its claim and readers roll it "
		                  "forward (logged once until a copy succeeds)",
		    v->doc.sku, v->doc.version, e.message);
	} else if (ok && stock_gauge_get(&cl->apply_failing) != 0) {
		stock_gauge_set(&cl->apply_failing, 0);
		log_info("mongo", "claims: copying claimed states into documents works again");
	}
	bson_destroy(&opts);
	bson_destroy(&update);
	bson_destroy(filter);
	mongoc_collection_destroy(coll);
}

/*
 * Roll @v (a chain state of its SKU) forward to the last state of the
 * chain; @apply: copy that into the document when it moved. Returns 0 or
 * STOCK_ESYS.
 */
static int
chain_forward(struct mongo *m, mongoc_client_t *client, struct mongo_view *v, bool apply)
{
	uint64_t start = v->doc.version;
	struct mongo_view next;
	bson_error_t e;

	for (unsigned hops = 0;; hops++) {
		int rc;

		if (hops == CLAIM_MAX_HOPS) {
			log_error("mongo", "claims: %s: more than %d successor claims from version %" PRIu64,
			    v->doc.sku, CLAIM_MAX_HOPS, start);
			return STOCK_ESYS;
		}
		rc = claim_find(m, client, v->doc.sku, v->doc.version, &next, NULL, &e);
		if (rc == STOCK_ENOENT)
			break;
		if (rc != 0)
			return rc;
		ASSERT(next.doc.version > v->doc.version); /* claim_decode checked it */
		*v = next;
	}
	if (apply && v->doc.version != start)
		state_apply(m, client, v);
	return 0;
}

/*
 * The latest state of @sku: its document, rolled forward (and repaired).
 * *@extra (may be NULL): the state has more leases than a view holds.
 * Returns 0, STOCK_ENOENT or STOCK_ESYS.
 */
static int
read_latest(struct mongo *m, mongoc_client_t *client, const char *sku, struct mongo_view *out,
    bool *extra)
{
	uint64_t v0;
	int rc = mongo_read_doc(m, client, sku, out, extra);

	if (rc != 0)
		return rc;
	v0 = out->doc.version;
	if ((rc = chain_forward(m, client, out, true)) == 0 && extra != NULL &&
	    out->doc.version != v0)
		*extra = false; /* a claimed state never has more */
	return rc;
}

/*
 * Create @v's SKU document (the first state of its chain): a plain insert.
 * Returns 0, CLAIM_LOST (it exists) or STOCK_ESYS.
 */
static int
doc_create(struct mongo *m, mongoc_client_t *client, const struct mongo_view *v, bson_error_t *e)
{
	bson_t doc;
	int rc;

	bson_init(&doc);
	BSON_APPEND_UTF8(&doc, "_id", v->doc.sku);
	BSON_APPEND_INT64(&doc, "stock", (int64_t)v->doc.stock);
	BSON_APPEND_INT64(&doc, "sold", (int64_t)v->doc.sold);
	BSON_APPEND_INT64(&doc, "version", (int64_t)v->doc.version);
	rc = claim_insert_unique(m, client, mongo_coll_of(m, v->doc.sku), &doc, e);
	bson_destroy(&doc);
	return rc;
}

/*
 * Delete @sku's old claims: those more than CLAIM_KEEP versions behind both
 * @from (the version the caller's commit replaced) and the document's
 * version, and older than the prune age by their stamp. Best effort.
 */
static void
claim_prune(struct mongo *m, mongoc_client_t *client, const char *sku, uint64_t from)
{
	struct mongo_view v;
	mongoc_collection_t *coll;
	bson_t *filter, opts;
	bson_error_t e;
	uint64_t low = from;
	int64_t age;
	bool ok;

	if (mongo_read_doc(m, client, sku, &v, NULL) != 0)
		return;
	if (v.doc.version < low)
		low = v.doc.version;
	if (low <= CLAIM_KEEP)
		return;
	age = (int64_t)m->timeout_ms * 2 + (int64_t)(CLAIM_ANCHOR_NS / 1000000u);
	if (age < CLAIM_PRUNE_AGE_MS)
		age = CLAIM_PRUNE_AGE_MS;
	filter = BCON_NEW("sku", BCON_UTF8(sku), "from", "{", "$lt",
	    BCON_INT64((int64_t)(low - CLAIM_KEEP)), "}", "at", "{", "$lt",
	    BCON_INT64(mongo_server_ms(m) - age), "}");
	mongo_write_opts(m, &opts, false);
	coll = mongoc_client_get_collection(client, m->database, MONGO_CLAIMS_COLLECTION);
	ok = mongoc_collection_delete_many(coll, filter, &opts, NULL, &e);
	mongo_trip_done(m, ok, &e);
	mongoc_collection_destroy(coll);
	bson_destroy(&opts);
	bson_destroy(filter);
}

/* ====================================================================== */
/* One claimed write                                                       */
/* ====================================================================== */

/*
 * A write in progress (claim_write): its base is the stripe's remembered tip
 * when fresh, else the document rolled forward; after a lost claim, the
 * state walked to. Answers come only from a state read in this call.
 * docs/internals/claims.md, "A write", "Answers" and "Progress".
 */
struct claim_run {
	struct mongo *m;
	mongoc_client_t *client;
	const char *sku;
	const struct mongo_op *op;
	struct claim_slot *slot; /* guarded by the SKU's stripe lock, held */
	struct mongo_view cur;   /* the base: a state of the chain */
	struct mongo_view next;  /* what fn computed from cur */
	bool have;               /* cur holds a base */
	bool verify;             /* the next base is read and rolled forward (an answer needs it) */
	uint64_t read_at;        /* cur was read (rolled forward) then; 0: remembered, walked to
	                            or read without rolling forward */
	uint64_t anchor;         /* when cur's chain position was last seen as the last */
	int lost;                /* claims lost in a row */
	bool prune;              /* this commit is a CLAIM_PRUNE_EVERY-th one */
	uint64_t pruned_from;    /* the version it replaced */
	bson_error_t e;
};

static void
slot_set(struct claim_slot *s, const struct mongo_view *v, uint64_t at_ns)
{
	s->v = *v;
	s->at_ns = at_ns;
	s->valid = true;
}

/* The SKU has no document: create it as mongo_op_next(NULL) says. Returns 0 (created:
   @out), CLAIM_LOST (another creator won: go again) or fn's / the insert's
   error. */
static int
claim_create(struct claim_run *r, uint64_t t0, struct mongo_view *out)
{
	int rc;

	memset(&r->next, 0, sizeof r->next);
	memcpy(r->next.doc.sku, r->sku, strlen(r->sku) + 1);
	if ((rc = mongo_op_next(r->op, NULL, &r->next)) != 0)
		return rc;
	if ((rc = doc_create(r->m, r->client, &r->next, &r->e)) == CLAIM_LOST) {
		r->lost++; /* someone created it meanwhile: build on theirs */
		return CLAIM_LOST;
	}
	if (rc == 0) {
		*out = r->next;
		slot_set(r->slot, &r->next, t0);
	}
	return rc;
}

/* Get a base into r->cur. Returns CLAIM_READY, CLAIM_LOST (go again) or
   the write's final result (the document was created, or an error). */
static int
claim_base(struct claim_run *r, struct mongo_view *out)
{
	struct claim_slot *s = r->slot;
	uint64_t t0 = stock_now_ns();
	bool extra = false;
	int rc;

	if (s->valid && strcmp(s->v.doc.sku, r->sku) == 0 && t0 - s->at_ns < CLAIM_CACHE_TTL_NS) {
		r->cur = s->v; /* if it is no longer the last, the claim fails */
		r->read_at = 0;
		r->anchor = s->at_ns;
		r->have = true;
		return CLAIM_READY;
	}
	s->valid = false;
	/* Optimistic: the document is usually the last state (every commit
	   copies itself into it), so claim on it as read and save the lookup
	   that would prove it; a claim on a lagging document just loses. Only
	   an answer needs the proof (r->verify, claim_answer). */
	if (r->verify)
		rc = read_latest(r->m, r->client, r->sku, &r->cur, &extra);
	else
		rc = mongo_read_doc(r->m, r->client, r->sku, &r->cur, &extra);
	if (rc == STOCK_ENOENT)
		return claim_create(r, t0, out);
	if (rc != 0)
		return rc;
	if (extra) {
		log_error("mongo", "claims: %s has more than %d leases; claims mode cannot rewrite it",
		    r->sku, MONGO_LEASES_MAX);
		return STOCK_ESYS;
	}
	r->read_at = r->verify ? t0 : 0;
	r->anchor = t0;
	r->have = true;
	return CLAIM_READY;
}

/* fn refused to write (@rc): the answer, if cur was read for this call. */
static int
claim_answer(struct claim_run *r, int rc, struct mongo_view *out)
{
	if (r->read_at == 0) {
		/* Answer only from the latest state, read for this call. */
		r->have = false;
		r->verify = true;
		r->slot->valid = false;
		return CLAIM_LOST; /* not counted as lost: the next round reads */
	}
	slot_set(r->slot, &r->cur, r->read_at);
	*out = r->cur;
	return rc;
}

/* One round on base r->cur: compute, commit. Returns 0 (committed: @out),
   CLAIM_LOST (go again) or the final error. */
static int
claim_try(struct claim_run *r, struct mongo_view *out)
{
	uint64_t t0 = stock_now_ns();
	int rc;

	if ((rc = mongo_op_next(r->op, &r->cur, &r->next)) != 0)
		return claim_answer(r, rc, out);
	rc = claim_commit(r->m, r->client, r->sku, r->cur.doc.version, &r->next, &r->e);
	if (rc == 0) {
		state_apply(r->m, r->client, &r->next);
		slot_set(r->slot, &r->next, t0); /* its successor can only come after our commit */
		*out = r->next;
		r->prune = stock_idgen_next(&r->m->claims->commits) % CLAIM_PRUNE_EVERY == 0;
		r->pruned_from = r->cur.doc.version;
		return 0;
	}
	r->slot->valid = false;
	if (rc != CLAIM_LOST)
		return rc; /* STOCK_ESYS: unknown */
	r->lost++;
	r->read_at = 0;
	if (stock_now_ns() - r->anchor >= CLAIM_ANCHOR_NS) {
		r->have = false; /* too long behind: from the document again */
		return CLAIM_LOST;
	}
	t0 = stock_now_ns();
	if (r->lost == 1) {
		/* First loss: one writer got in between, most likely. Hop to its
		   state (it exists: our insert met its claim) and claim on that,
		   without the lookup that would prove it the last: if it is not,
		   this claim loses too and the next loss walks. */
		rc = claim_find(r->m, r->client, r->sku, r->cur.doc.version, &r->cur, NULL, &r->e);
		if (rc == STOCK_ENOENT)
			r->have = false; /* pruned meanwhile (far behind): read again */
		else if (rc != 0)
			return rc;
		return CLAIM_LOST;
	}
	/* Walk to the last state from ours (a chain state); what it ends on was
	   the last after the walk began: the new anchor. */
	if ((rc = chain_forward(r->m, r->client, &r->cur, false)) != 0)
		return rc;
	r->anchor = t0;
	return CLAIM_LOST;
}

/*
 * One write (see struct claim_run). @out: on 0 the state after the write; on
 * a refusal of mongo_op_next the state it answered from; on STOCK_ECONFLICT
 * the latest state that could be read. Returns 0, mongo_op_next's error,
 * STOCK_ECONFLICT (CLAIM_TRIES claims lost in a row and timeout_ms spent:
 * nothing applied), or STOCK_ESYS (a read failed: nothing applied; or a
 * claim's outcome stayed unknown).
 */
static int
claim_write(struct mongo *m, mongoc_client_t *client, const struct mongo_op *op,
    struct mongo_view *out)
{
	const char *sku = op->sku;
	struct claim_run *r = malloc(sizeof *r); /* two views: too big for a worker's stack */
	uint64_t give_up = stock_now_ns() + (uint64_t)m->timeout_ms * 1000000ULL;
	pthread_mutex_t *lk;
	int rc = STOCK_ECONFLICT;

	if (r == NULL)
		return STOCK_ENOMEM;
	memset(r, 0, sizeof *r);
	r->m = m;
	r->client = client;
	r->sku = sku;
	r->op = op;
	r->slot = &m->claims->slots[mongo_sku_stripe(sku)];
	lk = mongo_sku_lock(m, sku);
	ASSERT(lk != NULL); /* claims_init set serialize: the slot needs the lock */
	while (r->lost < CLAIM_TRIES || stock_now_ns() < give_up) {
		if (!r->have && (rc = claim_base(r, out)) != CLAIM_READY) {
			if (rc == CLAIM_LOST)
				continue;
			break;
		}
		if ((rc = claim_try(r, out)) != CLAIM_LOST)
			break;
	}
	mongo_sku_unlock(lk);
	if (rc == CLAIM_LOST) {
		if (read_latest(m, client, sku, out, NULL) != 0)
			*out = r->cur; /* the callers' @after: as current as can be had */
		rc = STOCK_ECONFLICT;
	}
	if (r->prune)
		claim_prune(m, client, sku, r->pruned_from);
	free(r);
	return rc;
}

/* claim_write with a client of the pool. */
static int
claims_write(struct mongo *m, const struct mongo_op *op, struct mongo_view *out)
{
	mongoc_client_t *client;
	int rc;

	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	rc = claim_write(m, client, op, out);
	mongo_client_push(m, client);
	return rc;
}

/* ====================================================================== */
/* The backend                                                             */
/* ====================================================================== */

static int
claims_init(struct mongo *m, char *err, size_t errlen)
{
	struct mongo_claims *cl;

	if (strcmp(m->one_coll, MONGO_CLAIMS_COLLECTION) == 0 ||
	    strcmp(m->many_coll, MONGO_CLAIMS_COLLECTION) == 0) {
		util_seterr(err, errlen, "mongo: collection name %s is reserved for claims",
		    MONGO_CLAIMS_COLLECTION);
		return STOCK_EINVAL;
	}
	/* Aligned: the generators are cache-line aligned (stock_idgen). */
	if (posix_memalign((void **)&cl, STOCK_CACHELINE, sizeof *cl) != 0)
		return STOCK_ENOMEM;
	memset(cl, 0, sizeof *cl);
	stock_idgen_init(&cl->nonces, 1);
	stock_idgen_init(&cl->commits, 1); /* the 128th commit returns 128 */
	stock_gauge_init(&cl->apply_failing, 0);
	if (getrandom(&cl->nonce_key, sizeof cl->nonce_key, 0) != (ssize_t)sizeof cl->nonce_key)
		cl->nonce_key = stock_now_ns() ^ (uint64_t)util_wall_ms() << 20 ^
		    (uint64_t)getpid() << 40 ^ (uint64_t)(uintptr_t)cl;
	m->claims = cl;
	m->serialize = true;
	if (m->ferretdb)
		log_info("mongo", "FerretDB detected: conditional updates go through successor "
		                  "claims (FerretDB#3040)");
	else
		log_info("mongo", "atomic_mode 2: conditional updates go through successor claims");
	return 0;
}

static void
claims_fini(struct mongo *m)
{
	free(m->claims);
	m->claims = NULL;
}

/* Insert-if-missing is atomic by itself (the first state of the chain). */
static int
claims_seed(struct mongo *m, const char *sku, uint64_t n)
{
	mongoc_client_t *client;
	struct mongo_view v;
	bson_error_t e;
	int rc;

	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	memset(&v, 0, sizeof v);
	memcpy(v.doc.sku, sku, strlen(sku) + 1);
	v.doc.stock = n;
	v.doc.version = 1;
	rc = doc_create(m, client, &v, &e);
	if (rc == STOCK_ESYS && mongo_read_doc(m, client, sku, &v, NULL) == 0)
		rc = 0; /* the insert's outcome was unknown, but it is there */
	mongo_client_push(m, client);
	return rc == STOCK_ESYS ? STOCK_ESYS : 0; /* CLAIM_LOST: it was there */
}

/* Each listed document forwarded along its claims to its latest state
   (one lookup each). */
static int
forward_listed(struct mongo *m, mongoc_client_t *client, struct mongo_view *v)
{
	return chain_forward(m, client, v, true);
}

const struct mongo_backend mongo_claims_backend = {
	.name = "claims",
	.init = claims_init,
	.fini = claims_fini,
	.seed = claims_seed,
	.write = claims_write,
	.read = read_latest,
	.fix = forward_listed,
};
