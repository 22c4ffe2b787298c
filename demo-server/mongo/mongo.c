/*
 * The public calls of mongo.h except open, close, health and stats
 * (conn.c): each checks its arguments as mongo.h states them, then hands
 * over to the backend chosen at open (m->be: native in docs.c, successor
 * claims in claims.c); the reads go through the backend's read and fix.
 * Also each write's conditions in C (mongo_op_next), which claims checks
 * every write with and native explains a miss with. Nothing here depends on
 * which backend it is.
 */
#include <stdlib.h>
#include <string.h>

#include <bson/bson.h>
#include <openssl/evp.h>

#include "common/assert.h"
#include "mongo/internal.h"

/* A SKU: 1..STOCK_SKU_MAX bytes of UTF-8, NUL-terminated. */
static int
sku_check(const char *sku)
{
	size_t n;

	if (sku == NULL)
		return STOCK_EINVAL;
	n = strnlen(sku, STOCK_SKU_MAX + 1);
	if (n == 0 || n > STOCK_SKU_MAX || !bson_utf8_validate(sku, n, false))
		return STOCK_EINVAL;
	return 0;
}

int
mongo_seed(mongo_t *m, const char *sku, uint64_t n)
{
	if (m == NULL || sku_check(sku) != 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	return m->be->seed(m, sku, n);
}

int
mongo_take(mongo_t *m, const char *sku, uint64_t n, struct sku_doc *after)
{
	struct mongo_op op = { .kind = MONGO_OP_TAKE, .sku = sku, .n = n };
	struct mongo_view v;
	int rc;

	if (m == NULL || sku_check(sku) != 0 || n == 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	rc = m->be->write(m, &op, &v);
	if ((rc == 0 || rc == STOCK_ESOLDOUT) && after != NULL)
		*after = v.doc;
	return rc;
}

int
mongo_adjust(mongo_t *m, const char *sku, bool absolute, uint64_t n, struct sku_doc *after)
{
	struct mongo_op op = { .kind = MONGO_OP_ADJUST, .sku = sku, .n = n, .absolute = absolute };
	struct mongo_view v;
	int rc;

	if (m == NULL || sku_check(sku) != 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	rc = m->be->write(m, &op, &v);
	if (rc == 0 && after != NULL)
		*after = v.doc;
	return rc;
}

/* Create and retire: every refusal and success answers the document in @after. */
static int
catalog_write(mongo_t *m, const struct mongo_op *op, struct mongo_view *after)
{
	struct mongo_view v;
	int rc;

	if (m == NULL || sku_check(op->sku) != 0 || op->n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	rc = m->be->write(m, op, &v);
	if ((rc == 0 || rc == STOCK_EEXIST) && after != NULL)
		*after = v;
	return rc;
}

int
mongo_sku_create(mongo_t *m, const char *sku, uint64_t n, struct mongo_view *after)
{
	struct mongo_op op = { .kind = MONGO_OP_CREATE, .sku = sku, .n = n };

	return catalog_write(m, &op, after);
}

int
mongo_sku_retire(mongo_t *m, const char *sku, struct mongo_view *after)
{
	struct mongo_op op = { .kind = MONGO_OP_RETIRE, .sku = sku };

	return catalog_write(m, &op, after);
}

int
mongo_view(mongo_t *m, const char *sku, struct mongo_view *out)
{
	mongoc_client_t *client;
	int rc;

	if (m == NULL || sku_check(sku) != 0 || out == NULL)
		return STOCK_EINVAL;
	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	rc = m->be->read(m, client, sku, out, NULL);
	mongo_client_push(m, client);
	return rc;
}

/* Both collections as stored, then each document through the backend's fix. */
int
mongo_view_all(mongo_t *m, mongo_view_fn fn, void *arg)
{
	struct mongo_view_list l;
	mongoc_client_t *client;
	int rc;

	if (m == NULL || fn == NULL)
		return STOCK_EINVAL;
	if ((client = mongo_client_pop(m)) == NULL)
		return STOCK_ESYS;
	rc = mongo_read_all(m, client, &l);
	for (size_t i = 0; rc == 0 && m->be->fix != NULL && i < l.n; i++)
		rc = m->be->fix(m, client, &l.v[i]);
	mongo_client_push(m, client);
	ASSERT(l.n <= l.cap);
	for (size_t i = 0; rc == 0 && i < l.n; i++)
		rc = fn(&l.v[i], arg);
	free(l.v);
	return rc;
}

/* ====================================================================== */
/* The conditions of the writes, in C (mongo_op_next)                      */
/* ====================================================================== */

static int
take_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	uint64_t n = op->n;

	if (cur == NULL)
		return STOCK_ENOENT;
	if (cur->retired || cur->doc.stock < n)
		return STOCK_ESOLDOUT;
	if (cur->doc.sold > STOCK_COUNT_MAX - n || cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.stock -= n;
	next->doc.sold += n;
	next->doc.version++;
	ASSERT(next->doc.stock + next->doc.sold == cur->doc.stock + cur->doc.sold);
	return 0;
}

static int
adjust_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	if (cur == NULL) { /* as the native upsert creates it */
		next->doc.stock = op->n;
		next->doc.sold = 0;
		next->doc.version = 1;
		return 0;
	}
	if (cur->retired)
		return STOCK_ENOENT; /* not for sale: created again first */
	if ((!op->absolute && cur->doc.stock > STOCK_COUNT_MAX - op->n) ||
	    cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.stock = op->absolute ? op->n : cur->doc.stock + op->n;
	next->doc.version++;
	return 0;
}

/* *@x += @d within 0..STOCK_COUNT_MAX (|d| <= STOCK_COUNT_MAX). */
static bool
add_delta(uint64_t *x, int64_t d)
{
	if (d < 0) {
		if (*x < (uint64_t)-d)
			return false;
		*x -= (uint64_t)-d;
	} else {
		if (*x > STOCK_COUNT_MAX - (uint64_t)d)
			return false;
		*x += (uint64_t)d;
	}
	return true;
}

static int
lease_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	const struct mongo_lease *l;
	size_t i;

	if (cur == NULL)
		return STOCK_ENOENT;
	l = mongo_view_lease(cur, op->host);
	if (op->expect == NULL ? l != NULL : l == NULL || !mongo_lease_eq(l, op->expect))
		return STOCK_ECONFLICT;
	if ((op->d_stock < 0 && (cur->retired || cur->doc.stock < (uint64_t)-op->d_stock)) ||
	    (op->d_lost < 0 && cur->lost < (uint64_t)-op->d_lost))
		return STOCK_ESOLDOUT;
	if (cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	if (!add_delta(&next->doc.stock, op->d_stock) || !add_delta(&next->doc.sold, op->d_sold) ||
	    !add_delta(&next->lost, op->d_lost))
		return STOCK_ERANGE;
	next->doc.version++;
	for (i = 0; i < next->nleases && strcmp(next->leases[i].host, op->host) != 0; i++)
		;
	if (i == next->nleases) {
		if (i == MONGO_LEASES_MAX)
			return STOCK_ERANGE;
		memcpy(next->leases[i].host, op->host, strlen(op->host) + 1);
		next->nleases++;
	}
	next->leases[i].lease = *op->next;
	return 0;
}

/* The index of hold @id's entry in @v, or v->nholds. */
static size_t
hold_find(const struct mongo_view *v, const char *id)
{
	size_t i;

	for (i = 0; i < v->nholds && strcmp(v->holds[i].id, id) != 0; i++)
		;
	return i;
}

static int
hold_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	size_t i;

	if (cur == NULL)
		return STOCK_ENOENT;
	if (hold_find(cur, op->hold) < cur->nholds)
		return STOCK_EEXIST;
	if (cur->retired || cur->doc.stock < op->n)
		return STOCK_ESOLDOUT;
	if (cur->nholds == MONGO_HOLDS_MAX)
		return STOCK_EBUSY;
	if (cur->doc.version >= (uint64_t)INT64_MAX || cur->held > STOCK_COUNT_MAX - op->n)
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.stock -= op->n;
	next->held += op->n;
	next->doc.version++;
	i = next->nholds++;
	memcpy(next->holds[i].id, op->hold, strlen(op->hold) + 1);
	next->holds[i].q = op->n;
	return 0;
}

static int
unhold_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	size_t i;

	if (cur == NULL || (i = hold_find(cur, op->hold)) == cur->nholds)
		return STOCK_ENOENT;
	if (cur->holds[i].q != op->n)
		return STOCK_ECONFLICT;
	ASSERT(op->sell <= op->n && cur->held >= op->n);
	if (cur->doc.version >= (uint64_t)INT64_MAX || cur->doc.sold > STOCK_COUNT_MAX - op->sell ||
	    cur->doc.stock > STOCK_COUNT_MAX - (op->n - op->sell))
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.sold += op->sell;
	next->doc.stock += op->n - op->sell;
	next->held -= op->n;
	next->doc.version++;
	next->holds[i] = next->holds[--next->nholds];
	return 0;
}

/* Create: a new document, or a retired one opened again; retire: closed at 0. */
static int
catalog_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	if (cur == NULL) {
		if (op->kind == MONGO_OP_RETIRE)
			return STOCK_ENOENT;
		next->doc.stock = op->n; /* as the native upsert creates it */
		next->doc.sold = 0;
		next->doc.version = 1;
		next->retired = false;
		return 0;
	}
	if (op->kind == MONGO_OP_CREATE && !cur->retired)
		return STOCK_EEXIST;
	if (cur->doc.version >= (uint64_t)INT64_MAX)
		return STOCK_ERANGE;
	*next = *cur;
	next->doc.stock = op->kind == MONGO_OP_CREATE ? op->n : 0;
	next->retired = op->kind == MONGO_OP_RETIRE;
	next->doc.version++;
	return 0;
}

int
mongo_op_next(const struct mongo_op *op, const struct mongo_view *cur, struct mongo_view *next)
{
	switch (op->kind) {
	case MONGO_OP_CREATE:
	case MONGO_OP_RETIRE:
		return catalog_next(op, cur, next);
	case MONGO_OP_HOLD:
		return hold_next(op, cur, next);
	case MONGO_OP_UNHOLD:
		return unhold_next(op, cur, next);
	case MONGO_OP_TAKE:
		return take_next(op, cur, next);
	case MONGO_OP_ADJUST:
		return adjust_next(op, cur, next);
	case MONGO_OP_LEASE:
		return lease_next(op, cur, next);
	}
	ASSERT(!"unknown mongo_op kind");
	return STOCK_EINVAL;
}

/* A delta of a count: |d| <= STOCK_COUNT_MAX. */
static bool
delta_ok(int64_t d)
{
	return d >= -(int64_t)STOCK_COUNT_MAX && d <= (int64_t)STOCK_COUNT_MAX;
}

static bool
lease_counts_ok(const struct mongo_lease *l)
{
	return l->granted <= STOCK_COUNT_MAX && l->sold <= STOCK_COUNT_MAX &&
	    l->returned <= STOCK_COUNT_MAX && l->sold + l->returned <= l->granted;
}

/* The arguments of mongo_lease_cas; see there. */
static int
lease_op_check(const struct mongo_op *op)
{
	const struct mongo_lease *x = op->expect, *n = op->next;

	if (sku_check(op->sku) != 0 || op->host == NULL || n == NULL ||
	    !host_id_valid(op->host, strnlen(op->host, HOST_ID_MAX + 1)))
		return STOCK_EINVAL;
	if (!lease_counts_ok(n) || !delta_ok(op->d_stock) || !delta_ok(op->d_sold) ||
	    !delta_ok(op->d_lost) || op->d_sold < 0)
		return STOCK_EINVAL;
	if (x != NULL &&
	    (!lease_counts_ok(x) || n->granted < x->granted || n->sold < x->sold ||
	        n->returned < x->returned || mongo_lease_eq(n, x)))
		return STOCK_EINVAL;
	return 0;
}

int
mongo_lease_cas(mongo_t *m, const char *sku, const char *host, const struct mongo_lease *expect,
    const struct mongo_lease *next, int64_t d_stock, int64_t d_sold, int64_t d_lost,
    struct mongo_view *after)
{
	struct mongo_op op = { .kind = MONGO_OP_LEASE, .sku = sku, .host = host, .expect = expect,
		.next = next, .d_stock = d_stock, .d_sold = d_sold, .d_lost = d_lost };
	struct mongo_view v;
	int rc;

	if (m == NULL || lease_op_check(&op) != 0)
		return STOCK_EINVAL;
	rc = m->be->write(m, &op, &v);
	if ((rc == 0 || rc == STOCK_ECONFLICT || rc == STOCK_ESOLDOUT) && after != NULL)
		*after = v;
	return rc;
}

/* A hold id: 1..MONGO_HOLD_ID_MAX of [A-Za-z0-9_-] (a field name as is). */
static bool
hold_id_ok(const char *id)
{
	return id != NULL && strnlen(id, MONGO_HOLD_ID_MAX + 1) <= MONGO_HOLD_ID_MAX &&
	    host_id_valid(id, strlen(id));
}

int
mongo_hold_take(mongo_t *m, const char *sku, const char *id, uint64_t q, struct mongo_view *after)
{
	struct mongo_op op = { .kind = MONGO_OP_HOLD, .sku = sku, .hold = id, .n = q };
	struct mongo_view v;
	int rc;

	if (m == NULL || sku_check(sku) != 0 || !hold_id_ok(id) || q == 0 || q > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	rc = m->be->write(m, &op, &v);
	if ((rc == 0 || rc == STOCK_ESOLDOUT) && after != NULL)
		*after = v;
	return rc;
}

int
mongo_hold_end(mongo_t *m, const char *sku, const char *id, uint64_t q, uint64_t sell,
    struct mongo_view *after)
{
	struct mongo_op op = { .kind = MONGO_OP_UNHOLD, .sku = sku, .hold = id, .n = q, .sell = sell };
	struct mongo_view v;
	int rc;

	if (m == NULL || sku_check(sku) != 0 || !hold_id_ok(id) || q == 0 || q > STOCK_COUNT_MAX ||
	    sell > q)
		return STOCK_EINVAL;
	rc = m->be->write(m, &op, &v);
	if (rc == 0 && after != NULL)
		*after = v;
	return rc;
}

void
mongo_buyer_key(char *out, const char *buyer, const char *sku)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t p = sizeof MONGO_BUYER_PREFIX - 1;

	/* An allocation failure of OpenSSL's: no id to give is no limit to
	   enforce, so fail loudly instead. */
	ASSERT(ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(ctx, buyer, strlen(buyer)) == 1 && EVP_DigestUpdate(ctx, "/", 1) == 1 &&
	    EVP_DigestUpdate(ctx, sku, strlen(sku)) == 1 && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 &&
	    mdlen >= 16);
	EVP_MD_CTX_free(ctx);
	memcpy(out, MONGO_BUYER_PREFIX, p);
	for (int i = 0; i < 16; i++) {
		out[p + 2 * (size_t)i] = hex[md[i] >> 4];
		out[p + 2 * (size_t)i + 1] = hex[md[i] & 15];
	}
	out[p + 32] = '\0';
}

_Static_assert(sizeof MONGO_BUYER_PREFIX - 1 + 32 == MONGO_BUYER_KEY_LEN, "a buyer key's length");
_Static_assert(MONGO_BUYER_KEY_LEN <= STOCK_SKU_MAX, "a buyer key is SKU-shaped");
