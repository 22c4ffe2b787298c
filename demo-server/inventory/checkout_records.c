/*
 * The checkout book's journal records (checkout_book.h): a hold, an
 * idempotency answer, a buyer's count and a retired SKU are keyed records
 * ("hold/<id>", "idem/<key>", "buyer/<buyer>/<sku>", "retired/<sku>") with
 * BSON values; a change's records and the SKU states it left go to the
 * journal as ONE atomic commit (store_commit), queued under the book's
 * lock. At start-up the records are decoded back into the book; a record
 * that does not decode exactly is skipped with a warning, never half-used.
 */
#include <bson/bson.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/doc.h"
#include "common/util.h"
#include "inventory/checkout_book.h"
#include "log.h"

/* ---- records -------------------------------------------------------------- */

void
record_free(struct commit *c)
{
	for (size_t i = 0; i < c->nk; i++)
		if (c->vals[i] != NULL)
			bson_destroy(c->vals[i]);
	c->nk = c->nd = 0;
}

/* A keyed record "<prefix><name>" with value @v (owned by @c; NULL: delete). */
void
record_kv(struct commit *c, const char *prefix, const char *name, size_t nlen, uint64_t version,
    bson_t *v)
{
	size_t plen = strlen(prefix), i = c->nk++;

	ASSERT(i < COMMIT_MAX && plen + nlen <= STORE_KEY_MAX);
	memcpy(c->keys[i], prefix, plen);
	memcpy(c->keys[i] + plen, name, nlen);
	c->keys[i][plen + nlen] = '\0';
	c->vals[i] = v;
	c->kv[i] = (struct store_kv){ .key = c->keys[i], .key_len = plen + nlen, .version = version,
		.value = v != NULL ? bson_get_data(v) : NULL, .value_len = v != NULL ? v->len : 0 };
}

/* The SKU's state now, as a document of @c (read after the change: a state it had). */
void
record_sku(struct local *l, struct commit *c, struct stock_counter *ctr, const char *sku)
{
	struct stock_level lv;

	for (size_t i = 0; i < c->nd; i++)
		if (strcmp(c->docs[i].sku, sku) == 0)
			c->nd = i; /* re-read: overwrite the older state */
	ASSERT(local_lift(l, stock_counter_read(ctr, &lv), &lv) == 0);
	ASSERT(c->nd < CHECKOUT_ITEMS_MAX + 1);
	local_doc(&c->docs[c->nd++], sku, &lv);
}

static void
append_items(bson_t *b, const char *name, const struct checkout_item *it, size_t n)
{
	bson_t arr, el;
	char idx[16];
	const char *k;

	bson_append_array_begin(b, name, -1, &arr);
	for (size_t i = 0; i < n; i++) {
		bson_uint32_to_string((uint32_t)i, &k, idx, sizeof idx);
		bson_append_document_begin(&arr, k, -1, &el);
		bson_append_utf8(&el, "sku", 3, it[i].sku, -1);
		bson_append_int64(&el, "q", 1, (int64_t)it[i].quantity);
		bson_append_document_end(&arr, &el);
	}
	bson_append_array_end(b, &arr);
}

static bson_t *
hold_value(const struct hold *h)
{
	bson_t *b = bson_new();

	bson_append_utf8(b, "status", 6, hold_status_name(h->status), -1);
	bson_append_int64(b, "expires_at", 10, h->expires_at_ms);
	bson_append_int64(b, "done_at", 7, h->done_at_ms);
	bson_append_utf8(b, "buyer", 5, h->buyer, -1);
	append_items(b, "items", h->items, h->n);
	if (h->status == HOLD_CONFIRMED)
		append_items(b, "confirmed", h->conf, h->nconf);
	return b;
}

void
record_hold(struct checkout_book *b, struct commit *c, struct hold *h)
{
	h->version = next_version(b);
	record_kv(c, "hold/", h->id, strlen(h->id), h->version, hold_value(h));
}

void
record_buyer(struct checkout_book *b, struct commit *c, struct buyer *by)
{
	bson_t *v = bson_new();

	bson_append_int64(v, "count", 5, (int64_t)by->count);
	by->version = next_version(b);
	record_kv(c, "buyer/", by->key, strlen(by->key), by->version, v);
}

bson_t *
record_idem_value(const struct idem *e)
{
	bson_t *v = bson_new();

	bson_append_binary(v, "req", 3, BSON_SUBTYPE_BINARY, (const uint8_t *)e->req,
	    (uint32_t)e->req_len);
	bson_append_int32(v, "status", 6, e->status);
	bson_append_binary(v, "body", 4, BSON_SUBTYPE_BINARY, (const uint8_t *)e->body,
	    (uint32_t)e->body_len);
	bson_append_int64(v, "at", 2, e->at_ms);
	return v;
}

/*
 * Queue @c as one atomic commit (under the book's lock: the journal's order
 * is the changes' order), durable when @p (wait with settle), else
 * write-behind. Returns 0 or the store's refusal (nothing queued).
 */
int
record_queue(struct local *l, struct commit *c, struct pending *p)
{
	int rc;

	if (p != NULL)
		p->queued = false;
	if (c->nd == 0 && c->nk == 0)
		return 0;
	if (p == NULL) {
		rc = store_commit(l->store, c->docs, c->nd, c->kv, c->nk, false);
	} else {
		rc = store_commit_queued(l->store, c->docs, c->nd, c->kv, c->nk, &p->t);
		p->queued = rc == 0;
	}
	record_free(c);
	return rc;
}

/* ---- decoding, at start-up ------------------------------------------------------------------ */

static bool
read_items(bson_iter_t *it, struct checkout_item *out, size_t *n)
{
	bson_iter_t arr;

	*n = 0;
	if (!BSON_ITER_HOLDS_ARRAY(it) || !bson_iter_recurse(it, &arr))
		return false;
	while (bson_iter_next(&arr)) {
		bson_iter_t el;
		bool have_sku = false, have_q = false;

		if (*n == CHECKOUT_ITEMS_MAX || !BSON_ITER_HOLDS_DOCUMENT(&arr) ||
		    !bson_iter_recurse(&arr, &el))
			return false;
		while (bson_iter_next(&el)) {
			const char *k = bson_iter_key(&el);
			uint32_t len;

			if (strcmp(k, "sku") == 0 && BSON_ITER_HOLDS_UTF8(&el)) {
				const char *s = bson_iter_utf8(&el, &len);
				if (!stock_sku_valid(s, len))
					return false;
				memcpy(out[*n].sku, s, len);
				out[*n].sku[len] = '\0';
				have_sku = true;
			} else if (strcmp(k, "q") == 0 &&
			    doc_iter_count(&el, STOCK_COUNT_MAX, &out[*n].quantity) &&
			    out[*n].quantity > 0) {
				have_q = true;
			} else {
				return false;
			}
		}
		if (!have_sku || !have_q)
			return false;
		(*n)++;
	}
	return *n > 0;
}

static bool
read_str(bson_iter_t *it, char *out, size_t cap)
{
	uint32_t len;
	const char *s;

	if (!BSON_ITER_HOLDS_UTF8(it))
		return false;
	s = bson_iter_utf8(it, &len);
	if (len >= cap || memchr(s, '\0', len) != NULL)
		return false;
	memcpy(out, s, len);
	out[len] = '\0';
	return true;
}

/* A hold record decoded into a hold sized for its items; NULL when it does not decode exactly. */
static struct hold *
parse_hold(const char *id, size_t idlen, uint64_t version, const uint8_t *val, size_t vlen)
{
	char status[16] = "";
	bson_iter_t it;
	struct hold *h, *full;
	bson_t v;

	/* Parsed into a hold with room for the most items, then moved into
	   one sized for what it holds. */
	if (idlen != CHECKOUT_ID_LEN || !bson_init_static(&v, val, vlen) || !bson_iter_init(&it, &v) ||
	    (h = hold_alloc(CHECKOUT_ITEMS_MAX, CHECKOUT_ITEMS_MAX)) == NULL)
		return NULL;
	h->kind = OBJ_HOLD;
	memcpy(h->id, id, idlen);
	h->version = version;
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		int64_t x;
		bool ok = false;

		if (strcmp(k, "status") == 0)
			ok = read_str(&it, status, sizeof status);
		else if (strcmp(k, "expires_at") == 0 && doc_iter_int64(&it, &x))
			ok = (h->expires_at_ms = x, true);
		else if (strcmp(k, "done_at") == 0 && doc_iter_int64(&it, &x))
			ok = (h->done_at_ms = x, true);
		else if (strcmp(k, "buyer") == 0)
			ok = read_str(&it, h->buyer, sizeof h->buyer);
		else if (strcmp(k, "items") == 0)
			ok = read_items(&it, h->items, &h->n);
		else if (strcmp(k, "confirmed") == 0)
			ok = read_items(&it, h->conf, &h->nconf);
		if (!ok) {
			free(h);
			return NULL;
		}
	}
	if (h->n == 0) {
		free(h);
		return NULL;
	}
	h->status = strcmp(status, "held") == 0 ? HOLD_HELD :
	    strcmp(status, "confirmed") == 0 ? HOLD_CONFIRMED :
	    strcmp(status, "cancelled") == 0 ? HOLD_CANCELLED : HOLD_EXPIRED;
	if (strcmp(status, hold_status_name(h->status)) != 0) {
		free(h);
		return NULL;
	}
	full = h;
	if ((h = hold_alloc(full->n, full->nconf > full->n ? full->nconf : full->n)) == NULL) {
		free(full);
		return NULL;
	}
	{
		struct checkout_item *items = h->items, *conf = h->conf;

		*h = *full;
		h->items = items;
		h->conf = conf;
		memcpy(h->items, full->items, full->n * sizeof full->items[0]);
		memcpy(h->conf, full->conf, full->nconf * sizeof full->conf[0]);
		free(full);
	}
	h->node.key = h->id;
	h->node.key_len = CHECKOUT_ID_LEN;
	stock_wheel_timer_init(&h->timer, h);
	return h;
}

/* A hold record back in memory: a live one reserves its units again. */
static int
load_hold(struct local *l, const char *id, size_t idlen, uint64_t version, const uint8_t *val,
    size_t vlen, int64_t now)
{
	struct checkout_book *b = l->co;
	struct commit c;
	struct hold *h = parse_hold(id, idlen, version, val, vlen);

	commit_init(&c);
	if (h == NULL)
		return -1;
	if (h->status == HOLD_HELD) {
		for (size_t i = 0; i < h->n; i++) {
			struct stock_counter *ctr = local_counter(l, h->items[i].sku);

			if (ctr == NULL || stock_counter_reserve(ctr, h->items[i].quantity) != 0) {
				/* Its units are not there: the state it was reserved from
				   was not durable. Expire it, give back what was taken. */
				log_warn("checkout", "hold %s: %s has no %" PRIu64 " units to hold again: "
				    "expired", h->id, h->items[i].sku, h->items[i].quantity);
				while (i-- > 0)
					ASSERT(stock_counter_release(local_counter(l, h->items[i].sku),
					    h->items[i].quantity) == 0);
				h->status = HOLD_EXPIRED;
				h->done_at_ms = now;
				record_hold(b, &c, h);
				(void)record_queue(l, &c, NULL);
				break;
			}
		}
	}
	(void)smap_put(&b->holds, &h->node);
	/* Expired while we were down: the expiry thread releases it at once. */
	book_arm(b, &h->timer, h->status == HOLD_HELD ? h->expires_at_ms : h->done_at_ms + (int64_t)b->retain_ms);
	return 0;
}

static int
load_idem(struct local *l, const char *key, size_t klen, uint64_t version, const uint8_t *val,
    size_t vlen)
{
	struct checkout_book *b = l->co;
	bson_iter_t it;
	struct idem *e;
	bson_t v;
	unsigned seen = 0;

	if (klen < 1 || klen > IDEM_KEY_MAX || !bson_init_static(&v, val, vlen) ||
	    !bson_iter_init(&it, &v) || (e = calloc(1, sizeof *e)) == NULL)
		return -1;
	e->kind = OBJ_IDEM;
	memcpy(e->key, key, klen);
	e->key_len = klen;
	e->version = version;
	e->done = true;
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		const uint8_t *bin;
		uint32_t blen;
		bson_subtype_t sub;
		int64_t x;

		if ((strcmp(k, "req") == 0 || strcmp(k, "body") == 0) && BSON_ITER_HOLDS_BINARY(&it)) {
			char **dst = k[0] == 'r' ? &e->req : &e->body;
			bson_iter_binary(&it, &sub, &blen, &bin);
			if (*dst != NULL || (*dst = malloc(blen + 1)) == NULL)
				goto bad;
			memcpy(*dst, bin, blen);
			*(k[0] == 'r' ? &e->req_len : &e->body_len) = blen;
			seen |= k[0] == 'r' ? 1 : 2;
		} else if (strcmp(k, "status") == 0 && BSON_ITER_HOLDS_INT32(&it)) {
			e->status = bson_iter_int32(&it);
			seen |= 4;
		} else if (strcmp(k, "at") == 0 && doc_iter_int64(&it, &x)) {
			e->at_ms = x;
			seen |= 8;
		} else {
			goto bad;
		}
	}
	if (seen != 15 || e->status < 100 || e->status > 599)
		goto bad;
	e->node.key = e->key;
	e->node.key_len = klen;
	stock_wheel_timer_init(&e->timer, e);
	(void)smap_put(&b->idems, &e->node);
	book_arm(b, &e->timer, e->at_ms + (int64_t)b->ttl_ms);
	return 0;
bad:
	book_idem_free(e);
	return -1;
}

static int
load_buyer(struct local *l, const char *key, size_t klen, uint64_t version, const uint8_t *val,
    size_t vlen)
{
	struct checkout_book *b = l->co;
	bson_iter_t it;
	struct buyer *by;
	bson_t v;
	uint64_t count = 0;
	bool have = false;

	if (klen >= sizeof by->key || !bson_init_static(&v, val, vlen) || !bson_iter_init(&it, &v))
		return -1;
	while (bson_iter_next(&it))
		if (strcmp(bson_iter_key(&it), "count") != 0 ||
		    !doc_iter_count(&it, STOCK_COUNT_MAX, &count) || have)
			return -1;
		else
			have = true;
	if (!have || (by = calloc(1, sizeof *by)) == NULL)
		return -1;
	memcpy(by->key, key, klen);
	by->key[klen] = '\0';
	by->node.key = by->key;
	by->node.key_len = klen;
	by->count = count;
	by->version = version;
	(void)smap_put(&b->buyers, &by->node);
	return 0;
}

static int
load_retired(struct local *l, const char *sku, size_t len)
{
	struct retired *r;

	if (!stock_sku_valid(sku, len) || (r = calloc(1, sizeof *r)) == NULL)
		return -1;
	memcpy(r->sku, sku, len);
	r->node.key = r->sku;
	r->node.key_len = len;
	(void)smap_put(&l->co->retired, &r->node);
	return 0;
}

struct load_ctx {
	struct local *l;
	int64_t now;
	unsigned bad;
};

static int
load_kv(const char *key, size_t klen, uint64_t version, const uint8_t *val, size_t vlen, void *arg)
{
	struct load_ctx *x = arg;
	struct checkout_book *b = x->l->co;
	int rc = 0;

	if (version > b->seq)
		b->seq = version;
	if (klen > 5 && memcmp(key, "hold/", 5) == 0)
		rc = load_hold(x->l, key + 5, klen - 5, version, val, vlen, x->now);
	else if (klen > 5 && memcmp(key, "idem/", 5) == 0)
		rc = load_idem(x->l, key + 5, klen - 5, version, val, vlen);
	else if (klen > 6 && memcmp(key, "buyer/", 6) == 0)
		rc = load_buyer(x->l, key + 6, klen - 6, version, val, vlen);
	else if (klen > 8 && memcmp(key, "retired/", 8) == 0)
		rc = load_retired(x->l, key + 8, klen - 8);
	else
		rc = -1;
	if (rc != 0 && x->bad++ < 8)
		log_warn("checkout", "ignoring a recovered record that does not fit: %.*s",
		    (int)(klen > 80 ? 80 : klen), key);
	return 0;
}

void
record_load_all(struct local *l)
{
	struct load_ctx x = { .l = l, .now = util_wall_ms() };

	(void)store_kv_foreach(l->store, "", 0, load_kv, &x);
}
