/*
 * MongoDB documents (libmongoc, one client pool): the authoritative stock of
 * the cluster mode (--mongo).
 *
 * A SKU's document lives in database opt->database; SKUs that start with
 * "OneStock:" in collection opt->one_collection, every other SKU in
 * opt->many_collection:
 *   {_id: sku, stock, sold, version, lost,
 *    leases: {<host>: {granted, sold, returned, expires, reclaimed}}}
 * (int64 counts; reclaimed a bool). Every change is one conditional update
 * of one document (single-document atomicity; no transactions):
 *   - mongo_seed inserts the catalog ($setOnInsert);
 *   - mongo_take is the durable Db buy (stock >= n);
 *   - mongo_adjust is an operator restock / correction;
 *   - mongo_lease_cas moves units between the pool and one instance's lease;
 *   - mongo_hold_take / mongo_hold_end move units between the pool and one
 *     hold's entry (holds.<hold id>: q), and from that entry to sold;
 *   - mongo_sku_create / mongo_sku_retire are the catalog at run time
 *     (Admin PUT / DELETE): a retired document ({retired: true}) keeps its
 *     sold count and leases, and refuses grants, holds and restocks until
 *     it is created again.
 * Every round trip is bounded by opt->timeout_ms; retryWrites is off, so a
 * conditional update is never sent twice.
 *
 * Two backends implement these calls, chosen once at open (atomic_mode):
 * native (docs.c: findAndModify with a filter, MongoDB) and successor claims
 * (claims.c: FerretDB v1, whose filtered updates are not atomic;
 * docs/internals/claims.md). The contracts below hold for both; differences
 * are noted per call.
 */
#ifndef DEMO_MONGO_H
#define DEMO_MONGO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/doc.h"

typedef struct mongo mongo_t;

/* Buyer limits (--max-per-buyer): one document per buyer and SKU, id
   mongo_buyer_key, in this collection of the database, shaped and written
   like a SKU's: stock is what the buyer may still take of that SKU. */
#define MONGO_BUYERS_COLLECTION "BuyerLimits"
#define MONGO_BUYER_KEY_LEN 38 /* "Buyer:" + 32 hex digits */

/* Leases kept per document (one per instance). */
#define MONGO_LEASES_MAX 16

/* Live holds per SKU document (holds.<id>: units held for that hold), and
   the longest hold id (1..MONGO_HOLD_ID_MAX of [A-Za-z0-9_-]). A view is
   copied by value and lives on HTTP workers' stacks (civetweb's: 100 KiB),
   which is what bounds MONGO_HOLDS_MAX; a hold beyond it is STOCK_EBUSY. */
#define MONGO_HOLDS_MAX 64
#define MONGO_HOLD_ID_MAX 34

enum mongo_atomic_mode {
	MONGO_ATOMIC_AUTO = 0,   /* claims on FerretDB (buildInfo.ferretdbVersion), native otherwise */
	MONGO_ATOMIC_NATIVE = 1, /* findAndModify with a filter (MongoDB) */
	MONGO_ATOMIC_CLAIMS = 2  /* successor claims in <database>.StockClaims */
};

struct mongo_options {
	const char *uri;             /* required: mongodb://host:port/... */
	const char *database;        /* default "SuperStockStore" */
	const char *one_collection;  /* default "OneStock" */
	const char *many_collection; /* default "ManyStock" */
	unsigned timeout_ms;         /* per round trip (default 2000) */
	/* Every process sharing a database must use the same mode. In claims
	   mode a SKU document must not be deleted (its claims would outlive it). */
	enum mongo_atomic_mode atomic_mode;
};

/* One instance's lease inside a SKU document (all counts cumulative). */
struct mongo_lease {
	uint64_t granted;   /* units ever moved from stock into the lease */
	uint64_t sold;      /* units recorded as sold through it */
	uint64_t returned;  /* units moved back (to stock, or to lost when reclaimed) */
	int64_t expires_ms; /* CLOCK_REALTIME ms after which others may reclaim it */
	bool reclaimed;     /* another instance moved granted-sold-returned to lost */
};

/* A whole SKU document as the lease protocol sees it. */
struct mongo_view {
	struct sku_doc doc; /* _id, stock (the unleased pool), sold, version */
	uint64_t lost;      /* units quarantined by reclaims */
	size_t nleases;
	struct {
		char host[HOST_ID_MAX + 1];
		struct mongo_lease lease;
	} leases[MONGO_LEASES_MAX];
	uint64_t held; /* the sum of holds[].q: units out of the pool, held for holds */
	bool retired;  /* Admin DELETE: not for sale until mongo_sku_create */
	size_t nholds;
	struct {
		char id[MONGO_HOLD_ID_MAX + 1];
		uint64_t q;
	} holds[MONGO_HOLDS_MAX];
};

/* Round-trip counters, for /metrics. */
struct mongo_stats {
	uint64_t trips;        /* round trips */
	uint64_t failed_trips; /* round trips that failed or timed out */
	bool claims;           /* the claims backend is in use */
};

/**
 * mongo_open - connect (one ping must succeed within opt->timeout_ms) and
 * choose the backend. Creates nothing: the caller seeds with mongo_seed.
 * Returns 0, STOCK_EINVAL (bad URI or options; message in @err), STOCK_ESYS
 * (server unreachable; message in @err), STOCK_ENOMEM.
 */
int mongo_open(mongo_t **out, const struct mongo_options *opt, char *err, size_t errlen);

/** mongo_close - release the pool and free @m. NULL is a no-op. */
void mongo_close(mongo_t *m);

/** mongo_healthy - false after a failed round trip until one succeeds. Lock-free. */
bool mongo_healthy(mongo_t *m);

/** mongo_stats - copy the counters. */
void mongo_stats(mongo_t *m, struct mongo_stats *out);

/**
 * mongo_seed - insert {_id: sku, stock: n, sold: 0, version: 1} unless a
 * document with that _id exists (native: an upsert with $setOnInsert;
 * claims: a plain insert, a duplicate key meaning it is there), like the
 * seed does on first start. Returns 0 (inserted or already there),
 * STOCK_ESYS, STOCK_EINVAL.
 */
int mongo_seed(mongo_t *m, const char *sku, uint64_t n);

/**
 * mongo_take - the durable Db buy: one findAndModify with filter
 * {_id: sku, stock: {$gte: n}, sold: {$lte: STOCK_COUNT_MAX - n}} and update
 * {$inc: {stock: -n, sold: n, version: 1}}, returning the new document.
 * Returns 0 (@after = the document after the buy); STOCK_ESOLDOUT (the
 * document exists with stock < n; @after = its current state, re-read);
 * STOCK_ENOENT (no such document); STOCK_ESYS (MongoDB failed or timed out:
 * the outcome is unknown, the buy may or may not have been applied; it is
 * never retried, so it is never applied twice); STOCK_ERANGE (sold would
 * exceed STOCK_COUNT_MAX); STOCK_ECONFLICT (the document kept changing
 * between the findAndModify and the re-read that explains a miss; nothing
 * was applied); STOCK_EINVAL (also n == 0).
 * Claims: STOCK_ESYS only when a read failed (nothing applied) or the claim
 * insert's outcome could not be learned by looking it up; STOCK_ECONFLICT
 * when the claim kept losing to other writers for timeout_ms (nothing
 * applied).
 */
int mongo_take(mongo_t *m, const char *sku, uint64_t n, struct sku_doc *after);

/**
 * mongo_adjust - operator change of a SKU's pool: @absolute sets stock to
 * @n, otherwise adds @n (restock); version + 1. Creates the document when
 * missing. Returns 0 (@after may be NULL), STOCK_ERANGE, STOCK_ESYS,
 * STOCK_ECONFLICT (kept racing with concurrent creations; nothing applied),
 * STOCK_EINVAL.
 */
int mongo_adjust(mongo_t *m, const char *sku, bool absolute, uint64_t n, struct sku_doc *after);

/**
 * mongo_view - read one SKU's whole document (claims: the latest committed
 * state, even when the document itself lags).
 * Returns 0, STOCK_ENOENT, STOCK_ESYS, STOCK_EINVAL.
 */
int mongo_view(mongo_t *m, const char *sku, struct mongo_view *out);

/* Callback of mongo_view_all: 0 goes on, anything else stops. */
typedef int (*mongo_view_fn)(const struct mongo_view *v, void *arg);

/**
 * mongo_view_all - read every document of both collections (one find each)
 * and call @fn on each (corrupt documents are logged and skipped).
 * Returns 0, @fn's non-zero value, STOCK_ESYS.
 */
int mongo_view_all(mongo_t *m, mongo_view_fn fn, void *arg);

/**
 * mongo_lease_cas - the one conditional update of the lease protocol:
 * compare leases.<host> with @expect and replace it with @next, adding
 * @d_stock to stock, @d_sold to sold and @d_lost to lost, version + 1, in
 * one update of the SKU's document.
 * @expect: NULL means leases.<host> must not exist (opening a lease);
 *          otherwise every member must equal the stored one.
 * @d_stock < 0 adds the condition stock >= -d_stock (a grant never
 *          oversells); likewise @d_lost < 0 adds lost >= -d_lost. @d_sold
 *          must be >= 0.
 * @after:  receives the document after the update (may be NULL); on
 *          STOCK_ECONFLICT / STOCK_ESOLDOUT the current document, re-read.
 * Returns 0 (applied); STOCK_ECONFLICT (the lease is not as expected);
 * STOCK_ESOLDOUT (the lease matched but stock < -d_stock, or lost <
 * -d_lost); STOCK_ENOENT (no document); STOCK_ESYS (failed or timed out:
 * outcome unknown; callers re-read with mongo_view to learn whether it
 * applied — @next is distinct from @expect, so the stored lease tells);
 * STOCK_EINVAL (bad host id, NULL sku/next, a result that would go negative
 * or above STOCK_COUNT_MAX as far as the arguments show: a lease counter of
 * @next below @expect's, next->sold + next->returned > next->granted,
 * |delta| > STOCK_COUNT_MAX, or @next equal to @expect in every member).
 * Claims: also STOCK_ERANGE when the stored counts would leave
 * 0..STOCK_COUNT_MAX or a new lease would exceed MONGO_LEASES_MAX (nothing
 * applied; native: only when that explains a miss of its filter), and
 * STOCK_ESYS for a document with more than MONGO_LEASES_MAX leases;
 * STOCK_ECONFLICT also as for take.
 */
int mongo_lease_cas(mongo_t *m, const char *sku, const char *host, const struct mongo_lease *expect,
    const struct mongo_lease *next, int64_t d_stock, int64_t d_sold, int64_t d_lost,
    struct mongo_view *after);

/**
 * mongo_hold_take - hold @q units of @sku's pool for hold @id: one update
 * with the condition stock >= q, holds.<id> absent and fewer than
 * MONGO_HOLDS_MAX entries; it does stock -= q, holds.<id> = q, version + 1.
 * Returns 0 (@after, may be NULL: the document after), STOCK_ESOLDOUT
 * (stock < q; @after: the document as read), STOCK_EEXIST (the entry exists:
 * this take, or another, applied before), STOCK_EBUSY (MONGO_HOLDS_MAX live
 * holds), STOCK_ENOENT (no document), STOCK_ESYS (outcome unknown, as for
 * mongo_take: never retried), STOCK_ECONFLICT, STOCK_ERANGE, STOCK_EINVAL
 * (bad id, q 0 or above STOCK_COUNT_MAX).
 */
int mongo_hold_take(mongo_t *m, const char *sku, const char *id, uint64_t q,
    struct mongo_view *after);

/**
 * mongo_hold_end - end hold @id's entry in @sku's document, which must hold
 * exactly @q: @sell of them are sold, q - sell go back to the pool, the
 * entry is removed, version + 1. Idempotent: once the entry is gone it
 * answers STOCK_ENOENT and applies nothing, so any instance may end a hold
 * again after a crash or an unknown outcome. Returns 0 (@after, may be
 * NULL), STOCK_ENOENT (no such entry, or no document), STOCK_ECONFLICT (the entry holds another
 * quantity, or the document kept changing), STOCK_ESYS (unknown: calling
 * again is safe), STOCK_ERANGE, STOCK_EINVAL (@sell > @q, bad id).
 */
int mongo_hold_end(mongo_t *m, const char *sku, const char *id, uint64_t q, uint64_t sell,
    struct mongo_view *after);

/**
 * mongo_sku_create - Admin PUT: insert {_id: sku, stock: n, sold: 0,
 * version: 1}, or open a retired document again (stock = n, retired
 * cleared, version + 1; sold, lost, leases and holds kept). Returns 0
 * (@after, may be NULL: the document after), STOCK_EEXIST (a document that
 * is not retired exists: nothing applied; @after: it), STOCK_ESYS (outcome
 * unknown: calling again answers 0 or STOCK_EEXIST), STOCK_ECONFLICT,
 * STOCK_ERANGE, STOCK_EINVAL.
 */
int mongo_sku_create(mongo_t *m, const char *sku, uint64_t n, struct mongo_view *after);

/**
 * mongo_sku_retire - Admin DELETE: stock = 0 and retired = true, version + 1
 * (again on a retired one: idempotent but for the version). From then on
 * grants (mongo_lease_cas with d_stock < 0), holds (mongo_hold_take) and
 * restocks (mongo_adjust: STOCK_ENOENT) are refused; records, returns,
 * reclaims and the end of holds still apply. Returns 0 (@after, may be
 * NULL), STOCK_ENOENT (no document), STOCK_ESYS (unknown: calling again is
 * safe), STOCK_ECONFLICT, STOCK_ERANGE, STOCK_EINVAL.
 */
int mongo_sku_retire(mongo_t *m, const char *sku, struct mongo_view *after);

/* ---- idempotency keys (keys.c) ------------------------------------------ */

#define MONGO_KEYS_COLLECTION "IdempotencyKeys" /* reserved, like MONGO_BUYERS_COLLECTION */

enum mongo_key_state {
	MONGO_KEY_NEW,       /* this call claimed the key: the caller now owns it (finish or abort) */
	MONGO_KEY_REPLAY,    /* answered before: *status and the body */
	MONGO_KEY_MISMATCH,  /* used for another request */
	MONGO_KEY_IN_FLIGHT  /* claimed, not answered yet (or its owner died before answering) */
};

/**
 * mongo_key_begin - claim Idempotency-Key @key[0..@klen) (1..255 bytes) for
 * request @req[0..@rlen) on behalf of instance @host: one insert of a new
 * document, atomic on FerretDB too. A key older than @ttl_ms is deleted and
 * claimed anew. Returns 0 (*@st; for MONGO_KEY_REPLAY *@status and @body
 * appended), STOCK_ESYS (MongoDB failed, or the claim's outcome is unknown:
 * nothing to run), STOCK_EINVAL, STOCK_ENOMEM.
 */
int mongo_key_begin(mongo_t *m, const char *key, size_t klen, const char *req, size_t rlen,
    const char *host, int64_t ttl_ms, enum mongo_key_state *st, int *status, struct buf *body);

/** mongo_key_finish - store the answer of @host's in-flight @key: 0, STOCK_ESYS, STOCK_EINVAL. */
int mongo_key_finish(mongo_t *m, const char *key, size_t klen, const char *host, int status,
    const char *body, size_t blen);

/** mongo_key_abort - forget @host's in-flight @key (a retry runs again): 0, STOCK_ESYS, STOCK_EINVAL. */
int mongo_key_abort(mongo_t *m, const char *key, size_t klen, const char *host);

/* ---- holds (holds.c) ------------------------------------------------------
 *
 * A hold's record lives in MONGO_HOLDS_COLLECTION; its units in the holds.<id>
 * entries of its SKUs' documents (mongo_hold_take / mongo_hold_end). Three
 * documents per hold, each written by one insert (atomic on FerretDB too):
 *   {_id: id, kind: "hold", items: [{sku, q}], expires, buyer, at, done}
 *   {_id: id + "/end", kind: "end", hold: id, end, sell: [n], op, done}
 *       the decision, made once: whoever inserts it first decides;
 *   {_id: id + "/pay", kind: "lock", hold: id, until, op}
 *       a payment (or a cancel / expiry) in progress until `until`.
 * `done` (set by mongo_hold_finished) says every entry has been ended.
 */

#define MONGO_HOLDS_COLLECTION "Holds" /* reserved, like MONGO_BUYERS_COLLECTION */
#define MONGO_HOLD_ITEMS_MAX 16
#define MONGO_HOLD_BUYER_MAX 64

enum mongo_hold_end {
	MONGO_HOLD_OPEN = 0,  /* not decided yet */
	MONGO_HOLD_CONFIRMED, /* sell[] of each item sold, the rest released */
	MONGO_HOLD_CANCELLED,
	MONGO_HOLD_EXPIRED,
	MONGO_HOLD_ABORTED    /* its creation failed half way: never answered 201 */
};

struct mongo_hold {
	char id[MONGO_HOLD_ID_MAX + 1];
	size_t n;
	struct {
		char sku[STOCK_SKU_MAX + 1];
		uint64_t q;    /* held */
		uint64_t sell; /* confirmed (MONGO_HOLD_CONFIRMED only) */
	} items[MONGO_HOLD_ITEMS_MAX];
	int64_t expires_ms;                   /* unix ms */
	char buyer[MONGO_HOLD_BUYER_MAX + 1]; /* "" when anonymous */
	enum mongo_hold_end end;
	bool done;
	int64_t lock_until_ms; /* the lock's `until` (mongo_hold_read only); 0: no lock */
};

/** mongo_hold_create - insert @h's record (its end, done and lock ignored): 0, STOCK_EEXIST, STOCK_ESYS (unknown), STOCK_EINVAL. */
int mongo_hold_create(mongo_t *m, const struct mongo_hold *h);

/** mongo_hold_read - hold @id with its decision and lock: 0, STOCK_ENOENT, STOCK_ESYS, STOCK_EINVAL. */
int mongo_hold_read(mongo_t *m, const char *id, struct mongo_hold *out);

/**
 * mongo_hold_decide - decide @h (read before): @end, with @sell[i] (may be
 * NULL unless confirming) the units sold of item i. Returns 0 (this call
 * decided: h->end = @end, sells set), STOCK_EEXIST (decided before: h->end
 * and sells are the decision), STOCK_ESYS (unknown: the decision may land;
 * h unchanged), STOCK_EINVAL.
 */
int mongo_hold_decide(mongo_t *m, struct mongo_hold *h, enum mongo_hold_end end, const uint64_t *sell);

/**
 * mongo_hold_lock - take hold @id's lock until @until_ms: 0 (*@token: this
 * lock), STOCK_EEXIST (someone holds or held it: mongo_hold_read tells
 * until when), STOCK_ESYS (unknown), STOCK_EINVAL.
 */
int mongo_hold_lock(mongo_t *m, const char *id, int64_t until_ms, int64_t *token);

/** mongo_hold_unlock - delete the lock @token took (a failed payment): 0, STOCK_ESYS. */
int mongo_hold_unlock(mongo_t *m, const char *id, int64_t token);

/** mongo_hold_finished - mark @id's record and decision done (every entry ended): 0, STOCK_ESYS. */
int mongo_hold_finished(mongo_t *m, const char *id);

/* Callback of mongo_hold_list_open: 0 goes on, anything else stops. */
typedef int (*mongo_hold_fn)(const struct mongo_hold *h, void *arg);

/**
 * mongo_hold_list_open - every hold not done, with its decision (lock not
 * read), in one find. Returns 0, @fn's value, STOCK_ESYS, STOCK_ENOMEM.
 */
int mongo_hold_list_open(mongo_t *m, mongo_hold_fn fn, void *arg);

/**
 * mongo_buyer_key - the id of @buyer's allowance document for @sku into @out
 * (MONGO_BUYER_KEY_LEN + 1 bytes): "Buyer:" and the first 128 bits of
 * SHA-256(buyer "/" sku) in hex. A SKU-shaped id (mongo_take, mongo_seed and
 * mongo_adjust take it), whatever the lengths; both parts are client-chosen,
 * so the hash is one nobody can make collide.
 */
void mongo_buyer_key(char *out, const char *buyer, const char *sku);

#endif /* DEMO_MONGO_H */
