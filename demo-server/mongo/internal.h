/*
 * Inside the MongoDB part (mongo.h): the object, the backend table and the
 * helpers the files share.
 *
 *   conn.c    the connection: URI and timeouts, the client pool, open and
 *             close, health and round-trip accounting, per-SKU locks,
 *             libmongoc's log handler;
 *   docs.c    BSON encoding and decoding of SKU documents and leases, the
 *             reads every backend shares, and the native backend
 *             (findAndModify with a filter);
 *   claims.c  the successor-claims backend (docs/internals/claims.md);
 *   mongo.c   the public calls: argument checks, then the backend; the
 *             conditions of each write in C (mongo_op_next); buyer keys;
 *   keys.c    idempotency keys (their own collection, claimed by insert).
 *
 * The backend is chosen once in mongo_open (struct mongo_backend); nothing
 * else asks which one is in use.
 */
#ifndef DEMO_MONGO_INTERNAL_H
#define DEMO_MONGO_INTERNAL_H

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <stock.h>

#include "common/util.h"
#include "mongo/mongo.h"

#define MONGO_ONE_PREFIX "OneStock:"
#define MONGO_BUYER_PREFIX "Buyer:"                 /* mongo_buyer_key: in MONGO_BUYERS_COLLECTION */
#define MONGO_CLAIMS_COLLECTION "StockClaims" /* claims backend, <database>.StockClaims */
#define MONGO_E_DUPKEY 11000                  /* MongoDB's duplicate-key error code */
#define MONGO_SKU_STRIPES 64                  /* per-SKU write locks, see serialize */

struct mongo_claims; /* claims.c's state */

enum mongo_op_kind {
	MONGO_OP_TAKE, MONGO_OP_ADJUST, MONGO_OP_LEASE, MONGO_OP_HOLD, MONGO_OP_UNHOLD,
	MONGO_OP_CREATE, MONGO_OP_RETIRE
};

/* One conditional write with its arguments, checked (mongo.c). */
struct mongo_op {
	enum mongo_op_kind kind;
	const char *sku;
	uint64_t n;                       /* take, adjust, create; hold, unhold: the entry's units */
	uint64_t sell;                    /* unhold: of n, sold (the rest back to stock) */
	const char *hold;                 /* hold, unhold: the hold id */
	bool absolute;                    /* adjust */
	const char *host;                 /* lease: */
	const struct mongo_lease *expect; /* NULL: the lease must not exist */
	const struct mongo_lease *next;
	int64_t d_stock, d_sold, d_lost;
};

/* A growing array of decoded documents (view_all). */
struct mongo_view_list {
	struct mongo_view *v;
	size_t n, cap;
};

/* How a backend reads one document (mongo_read_doc, or claims' latest
   state). *@extra (may be NULL): more leases than a view holds. Returns 0,
   STOCK_ENOENT, STOCK_ESYS. */
typedef int (*mongo_read_fn)(struct mongo *m, mongoc_client_t *client, const char *sku,
    struct mongo_view *out, bool *extra);
/* How a backend brings a listed document up to date (NULL: as stored). */
typedef int (*mongo_fix_fn)(struct mongo *m, mongoc_client_t *client, struct mongo_view *v);

/*
 * One implementation of the conditional updates. Every call gets checked
 * arguments (mongo.c) and pops its own clients; the contracts are mongo.h's.
 * The reads (mongo_view, mongo_view_all) are mongo.c's, through @read and
 * @fix.
 */
struct mongo_backend {
	const char *name;
	/* After the connection is up: set m->serialize, allocate own state, log
	   the mode. Returns 0 or a STOCK_* error (message in @err). */
	int (*init)(struct mongo *m, char *err, size_t errlen);
	void (*fini)(struct mongo *m); /* may be NULL */
	int (*seed)(struct mongo *m, const char *sku, uint64_t n);
	/* Apply @op. @out: on 0 the state after it; on mongo_op_next's refusal
	   the state it refused, and on STOCK_ECONFLICT the latest state read. */
	int (*write)(struct mongo *m, const struct mongo_op *op, struct mongo_view *out);
	mongo_read_fn read;
	mongo_fix_fn fix;
};

extern const struct mongo_backend mongo_native_backend; /* docs.c */
extern const struct mongo_backend mongo_claims_backend; /* claims.c */

/*
 * The object. Allocated cache-line aligned (the counters are striped).
 */
struct mongo {
	/* Set at open, then read-only. */
	const struct mongo_backend *be;
	char *database, *one_coll, *many_coll;
	unsigned timeout_ms;
	mongoc_uri_t *uri;
	mongoc_client_pool_t *pool;
	bson_t wc;               /* the writeConcern document of every write */
	bool replset;            /* a replica set member or a mongos */
	bool ferretdb;           /* buildInfo has ferretdbVersion */
	int64_t clock_offset_ms; /* server clock - ours (hello's localTime) */
	/*
	 * @serialize (set by the backend's init): this process has at most one
	 * write per SKU stripe in flight (a mutex held over the round trips).
	 * Claims: only reduces contention (threads of one process do not race
	 * each other's claims) and guards the stripe's remembered tip. Native
	 * on FerretDB: what keeps one process from overselling on a server
	 * whose filtered updates are not atomic (several processes still can).
	 */
	bool serialize;
	pthread_mutex_t stripes[MONGO_SKU_STRIPES];
	struct mongo_claims *claims; /* the claims backend's state; NULL otherwise */

	/* Thread-safe without a lock. */
	struct stock_idgen keys_made;   /* idempotency keys claimed (keys.c: pruning cadence) */
	struct stock_stat trips;        /* round trips */
	struct stock_stat failed_trips; /* round trips that failed */
	struct stock_gauge healthy;     /* 1 until a round trip fails, again after one works */
	struct stock_gauge warned_leases; /* "more than MONGO_LEASES_MAX leases" logged */
};

/* --- conn.c --------------------------------------------------------------- */

/* Account for one round trip (@ok: the server answered as the protocol
   expects; @e: the error otherwise, may be NULL). */
void mongo_trip_done(struct mongo *m, bool ok, const bson_error_t *e);

/* A client from the pool, NULL (counted as a failed trip) when none came
   within the wait-queue timeout. */
mongoc_client_t *mongo_client_pop(struct mongo *m);
void mongo_client_push(struct mongo *m, mongoc_client_t *c);

/* The collection of @sku (OneStock:* or every other SKU). */
const char *mongo_coll_of(const struct mongo *m, const char *sku);

/* @opts = {upsert: @upsert (only when true), writeConcern: the object's}. */
void mongo_write_opts(const struct mongo *m, bson_t *opts, bool upsert);

/* The write lock of @sku's stripe, taken; NULL (nothing taken) unless
   m->serialize. */
pthread_mutex_t *mongo_sku_lock(struct mongo *m, const char *sku);
void mongo_sku_unlock(pthread_mutex_t *lk);
unsigned mongo_sku_stripe(const char *sku);

bool mongo_is_dupkey(const bson_error_t *e);

/* Insert @doc into collection @name of the database: the one atomic step
   (a unique _id) that claims and idempotency keys rely on. Returns 0,
   STOCK_EEXIST (duplicate _id) or STOCK_ESYS (outcome unknown; @e). */
int mongo_insert_unique(struct mongo *m, mongoc_client_t *client, const char *name,
    const bson_t *doc, bson_error_t *e);

/* The server's clock as this process estimates it, in ms. */
int64_t mongo_server_ms(const struct mongo *m);


/* --- mongo.c -------------------------------------------------------------- */

/*
 * The conditions of @op, in C: from the current state @cur (NULL: the SKU
 * has no document; @next then holds just the SKU) compute the next full
 * state into @next. Returns 0 (write @next) or a STOCK_* error (the answer).
 * Claims checks every write with it; native explains a miss of its filter
 * with it (0 then: it would match now, so again).
 */
int mongo_op_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next);

/* --- docs.c --------------------------------------------------------------- */

/*
 * Decode a SKU document (@sku NULL: the SKU is its _id) or a claim's state
 * (@sku given: no _id) into @v. Leases beyond MONGO_LEASES_MAX are dropped
 * (logged once) and reported in *@extra (may be NULL). @why names the first
 * problem.
 */
bool mongo_view_decode(struct mongo *m, const bson_t *b, const char *sku, struct mongo_view *v,
    bool *extra, const char **why);

/* Append stock, sold, version, lost and leases of @v to @b. */
void mongo_state_append(bson_t *b, const struct mongo_view *v);

bool mongo_lease_eq(const struct mongo_lease *a, const struct mongo_lease *b);

/* The lease of @host in @v, or NULL. */
const struct mongo_lease *mongo_view_lease(const struct mongo_view *v, const char *host);

/*
 * Read @sku's document as stored. *@extra (may be NULL): it has more leases
 * than a view holds. Returns 0, STOCK_ENOENT, STOCK_ESYS (the read failed,
 * or the document is corrupt: logged).
 */
int mongo_read_doc(struct mongo *m, mongoc_client_t *client, const char *sku,
    struct mongo_view *out, bool *extra);

/* Every valid document of both collections, as stored (corrupt ones logged
   and skipped). Returns 0, STOCK_ESYS, STOCK_ENOMEM (@l empty then). */
int mongo_read_all(struct mongo *m, mongoc_client_t *client, struct mongo_view_list *l);

/* Ends a find: counts the round trip and frees @cur. Returns @rc, or STOCK_ESYS
   (and *@e) when the cursor failed. */
int mongo_find_done(struct mongo *m, mongoc_cursor_t *cur, bson_error_t *e, int rc);

#endif /* DEMO_MONGO_INTERNAL_H */
