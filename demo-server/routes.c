/*
 * The route table and its handlers.
 *
 * One civetweb handler is registered for "/" and dispatches through
 * `routes[]`: exact paths for the seed's OneStock/Util endpoints, prefixes
 * followed by a SKU for ManyStock. Routing uses the path as sent, decoded
 * here with its length (a %00 is refused, never a shortened path) and not
 * dot-segment-cleaned, so "/x/../Util/Close" does not reach /Util/Close.
 * Every answer is JSON; a bad request never changes stock.
 */
#include <bson/bson.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"

enum route_kind { R_ONE_BUY, R_ONE_PEEK, R_MANY_BUY, R_MANY_PEEK, R_UTIL_OPEN, R_UTIL_CLOSE,
	R_LIVE, R_READY, R_METRICS, R_ADMIN_LIST, R_ADMIN_SET, R_ADMIN_CONFIG_GET,
	R_ADMIN_CONFIG_SET, R_UTIL_PUBLISH };

struct route {
	const char *method;
	const char *path;  /* exact, or prefix when `sku` */
	bool sku;          /* path is a prefix; the rest is a SKU */
	enum route_kind kind;
	int arg;           /* enum app_one for OneStock routes */
	const char *name;  /* metrics label */
};

static const struct route routes[] = {
	{ "POST", "/api/v1/OneStock/Db/Buy", false, R_ONE_BUY, APP_ONE_DB, "OneStock/Db/Buy" },
	{ "POST", "/api/v1/OneStock/Cache/Atomic/Buy", false, R_ONE_BUY, APP_ONE_ATOMIC, "OneStock/Cache/Atomic/Buy" },
	{ "POST", "/api/v1/OneStock/Cache/Signal/Buy", false, R_ONE_BUY, APP_ONE_SIGNAL, "OneStock/Cache/Signal/Buy" },
	{ "POST", "/api/v1/OneStock/Cache/Lock/Buy", false, R_ONE_BUY, APP_ONE_LOCK, "OneStock/Cache/Lock/Buy" },
	{ "GET", "/api/v1/OneStock/Db/Peek", false, R_ONE_PEEK, APP_ONE_DB, "OneStock/Db/Peek" },
	{ "GET", "/api/v1/OneStock/Cache/Atomic/Peek", false, R_ONE_PEEK, APP_ONE_ATOMIC, "OneStock/Cache/Atomic/Peek" },
	{ "GET", "/api/v1/OneStock/Cache/Signal/Peek", false, R_ONE_PEEK, APP_ONE_SIGNAL, "OneStock/Cache/Signal/Peek" },
	{ "GET", "/api/v1/OneStock/Cache/Lock/Peek", false, R_ONE_PEEK, APP_ONE_LOCK, "OneStock/Cache/Lock/Peek" },
	{ "POST", "/api/v1/ManyStock/Cache/BuyFastAtomic/", true, R_MANY_BUY, 0, "ManyStock/Cache/BuyFastAtomic" },
	{ "GET", "/api/v1/ManyStock/Cache/PeekFastAtomic/", true, R_MANY_PEEK, 0, "ManyStock/Cache/PeekFastAtomic" },
	{ "POST", "/api/v1/Util/Open", false, R_UTIL_OPEN, 0, "Util/Open" },
	{ "POST", "/api/v1/Util/Close", false, R_UTIL_CLOSE, 0, "Util/Close" },
	{ "POST", "/api/v1/Util/Publish", false, R_UTIL_PUBLISH, 0, "Util/Publish" },
	{ "GET", "/health/live", false, R_LIVE, 0, "health/live" },
	{ "GET", "/health/ready", false, R_READY, 0, "health/ready" },
	{ "GET", "/metrics", false, R_METRICS, 0, "metrics" },
	{ "GET", "/api/v1/Admin/Stock", false, R_ADMIN_LIST, 0, "Admin/Stock" },
	{ "POST", "/api/v1/Admin/Stock/", true, R_ADMIN_SET, 0, "Admin/Stock/{sku}" },
	{ "GET", "/api/v1/Admin/Config", false, R_ADMIN_CONFIG_GET, 0, "Admin/Config" },
	{ "POST", "/api/v1/Admin/Config", false, R_ADMIN_CONFIG_SET, 0, "Admin/Config" },
};
#define NROUTES (sizeof routes / sizeof routes[0])
#define ROUTE_UNMATCHED NROUTES /* metrics slot for 404/405 */

size_t
app_route_count(void)
{
	return NROUTES + 1;
}

const char *
app_route_name(size_t i)
{
	return i < NROUTES ? routes[i].name : "unmatched";
}

/* ---- request parsing ---------------------------------------------------- */

/*
 * Does every integer literal in the JSON text fit in an int64? libbson's
 * parser wraps larger ones (2^64+1 arrives as 1), so they are refused here,
 * on the text, before it parses. String contents are skipped.
 */
static bool
json_ints_fit(const char *b, size_t n)
{
	static const char max[] = "9223372036854775807";
	size_t i = 0;

	while (i < n) {
		if (b[i] == '"') {
			for (i++; i < n && b[i] != '"'; i++)
				if (b[i] == '\\')
					i++;
			i++;
		} else if (isdigit((unsigned char)b[i])) {
			size_t s = i;

			while (i < n && isdigit((unsigned char)b[i]))
				i++;
			while (s + 1 < i && b[s] == '0')
				s++;
			if (i - s > sizeof max - 1 ||
			    (i - s == sizeof max - 1 && memcmp(b + s, max, sizeof max - 1) > 0))
				return false;
		} else {
			i++;
		}
	}
	return true;
}

/*
 * The field @key of a JSON object body: absent → *found = false. Only a JSON
 * integer is accepted (no strings, floats, booleans); any other key is an
 * error, so typos are not silently ignored.
 */
static int
json_uint_field(const char *body, size_t len, const char *key, uint64_t *out, bool *found,
    const char **why)
{
	bson_t doc;
	bson_error_t err;
	bson_iter_t it;
	size_t i = 0;

	*found = false;
	while (i < len && isspace((unsigned char)body[i]))
		i++;
	if (i == len)
		return 0; /* empty body */
	if (body[i] != '{') {
		*why = "body must be a JSON object";
		return -1;
	}
	if (!json_ints_fit(body + i, len - i)) {
		*why = "integer out of range";
		return -1;
	}
	if (!bson_init_from_json(&doc, body, (ssize_t)len, &err)) {
		*why = "body is not valid JSON";
		return -1;
	}
	if (!bson_iter_init(&it, &doc)) {
		bson_destroy(&doc);
		*why = "body is not valid JSON";
		return -1;
	}
	while (bson_iter_next(&it)) {
		int64_t v;

		if (strcmp(bson_iter_key(&it), key) != 0 || *found) {
			bson_destroy(&doc);
			*why = "unknown or repeated field in body";
			return -1;
		}
		if (BSON_ITER_HOLDS_INT32(&it))
			v = bson_iter_int32(&it);
		else if (BSON_ITER_HOLDS_INT64(&it))
			v = bson_iter_int64(&it);
		else {
			bson_destroy(&doc);
			*why = "field must be an integer";
			return -1;
		}
		if (v < 0) {
			bson_destroy(&doc);
			*why = "field must not be negative";
			return -1;
		}
		*out = (uint64_t)v;
		*found = true;
	}
	bson_destroy(&doc);
	return 0;
}

/* Quantity from the JSON body or ?quantity=; default 1. 0 or an HTTP status. */
static int
parse_quantity(struct app *app, struct mg_connection *c, uint64_t max_quantity, uint64_t *qty,
    const char **why)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	char small[4097], *body = small;
	char qs[32];
	size_t len = 0;
	bool found = false;
	int rc;

	/* Bodies up to 4 KiB (the default limit) need no allocation. */
	if (app->cfg.max_body > sizeof small - 1 && (body = malloc(app->cfg.max_body + 1)) == NULL) {
		*why = "out of memory";
		return 503;
	}
	rc = http_read_body(c, app->cfg.max_body, body, &len);
	if (rc != 0)
		*why = rc == 413 ? "request body too large" : "incomplete request body";
	else if (json_uint_field(body, len, "quantity", qty, &found, why) != 0)
		rc = 400;
	if (body != small)
		free(body);
	if (rc != 0)
		return rc;
	if (ri->query_string != NULL) {
		int n = mg_get_var(ri->query_string, strlen(ri->query_string), "quantity", qs, sizeof qs);
		if (n == -2 || (n >= 0 && found)) {
			*why = n == -2 ? "quantity out of range" : "quantity given twice";
			return 400;
		}
		if (n >= 0) {
			char *end;
			if (n == 0 || !isdigit((unsigned char)qs[0])) {
				*why = "quantity must be a positive integer";
				return 400;
			}
			/* n is the decoded length: a %00 inside the value would end
			 * the C string early, so the number must span all n bytes. */
			errno = 0;
			*qty = strtoull(qs, &end, 10);
			if (end != qs + n || errno != 0) {
				*why = "quantity must be a positive integer";
				return 400;
			}
			found = true;
		}
	}
	if (!found)
		*qty = 1;
	if (*qty == 0 || *qty > max_quantity) {
		*why = "quantity must be between 1 and the configured maximum";
		return 400;
	}
	return 0;
}

/* ---- handlers ------------------------------------------------------------ */

static int
reply_level(struct mg_connection *c, const char *sku, const struct stock_level *l)
{
	return http_reply(c, 200, NULL,
	    "{\"sku\":\"%s\",\"remaining\":%llu,\"sold\":%llu,\"version\":%llu}", sku,
	    (unsigned long long)l->remaining, (unsigned long long)l->sold,
	    (unsigned long long)l->version);
}

static int
reply_bought(struct mg_connection *c, const char *sku, uint64_t qty, const struct stock_level *l)
{
	return http_reply(c, 200, NULL,
	    "{\"ok\":true,\"sku\":\"%s\",\"quantity\":%llu,\"remaining\":%llu,\"sold\":%llu,"
	    "\"version\":%llu}",
	    sku, (unsigned long long)qty, (unsigned long long)l->remaining,
	    (unsigned long long)l->sold, (unsigned long long)l->version);
}

/* Buyers wait (bounded) while the gate is closed. 0 or 503. */
static int
pass_gate(struct app *app, unsigned wait_ms)
{
	struct timespec dl;

	if (stock_breaker_state(&app->gate) == STOCK_BREAKER_CLOSED)
		return 0;
	stock_deadline_in(&dl, wait_ms);
	return stock_breaker_wait(&app->gate, &dl) == 0 ? 0 : 503;
}

static void
to_doc(struct store_doc *d, const char *id, const struct stock_level *l)
{
	snprintf(d->sku, sizeof d->sku, "%s", id);
	d->stock = l->remaining;
	d->sold = l->sold;
	d->version = l->version;
}

/* Journals a level as the SKU's new state; durable waits for the group commit. */
static int
journal(struct app *app, const char *id, const struct stock_level *l, bool durable)
{
	struct store_doc d;

	to_doc(&d, id, l);
	return store_append(app->store, &d, durable);
}

/*
 * What every buy does before touching stock: parse the quantity, pass the
 * gate. Returns 0, or the status of the error reply it already sent.
 */
static int
buy_admit(struct app *app, struct mg_connection *c, uint64_t *qty)
{
	struct app_tunables tun;
	const char *why = NULL;
	int status;

	app_tunables_get(app, &tun);
	if ((status = parse_quantity(app, c, tun.max_quantity, qty, &why)) != 0)
		return http_error(c, status, status == 413 ? "too_large" :
		    status == 503 ? "busy" : "bad_request", why);
	if (pass_gate(app, tun.gate_wait_ms) != 0)
		return http_error(c, 503, "gate_closed", "stock is being updated, retry shortly");
	return 0;
}

/*
 * A cache buy: take from memory, then queue the new state for the next group
 * commit (write-behind). @l receives the level after the take.
 */
static int
buy_cache(struct app *app, struct stock_counter *ctr, const char *id, uint64_t qty,
    struct stock_level *l)
{
	int rc = stock_counter_take(ctr, qty);

	if (rc != 0)
		return rc;
	stock_counter_read(ctr, l);
	if (journal(app, id, l, false) != 0)
		stock_stat_inc(&app->store_rejects);
	return 0;
}

/* Replies to a buy's outcome and counts it under metrics slot @slot. */
static int
buy_reply(struct app *app, struct mg_connection *c, int slot, int rc, const char *sku,
    uint64_t qty, const struct stock_level *l)
{
	if (rc == STOCK_ESOLDOUT) {
		stock_stat_inc(&app->buys_soldout[slot]);
		return http_error(c, 409, "sold_out", "not enough stock remaining");
	}
	if (rc != 0)
		return http_error(c, 400, "bad_request", stock_strerror(rc));
	stock_stat_inc(&app->buys_ok[slot]);
	return reply_bought(c, sku, qty, l);
}

/* Durable buy: acknowledged only after the record is on disk. */
static int
buy_durable(struct app *app, struct mg_connection *c, struct app_one_item *it, uint64_t qty,
    struct stock_level *l)
{
	struct stock_breaker_token tok;
	int rc;

	if (stock_permits_try_acquire(&app->db_inflight, 1) != 0)
		return http_error(c, 503, "busy", "too many durable buys in flight");
	if (stock_breaker_allow(&app->store_breaker, &tok) != 0) {
		stock_permits_release(&app->db_inflight, 1);
		return http_error(c, 503, "store_unavailable", "the store is failing, retry later");
	}
	rc = stock_counter_take(&it->counter, qty);
	if (rc == 0) {
		stock_counter_read(&it->counter, l);
		rc = journal(app, it->doc_id, l, true);
		if (rc != 0) {
			/* Not durable: give the units back, and report it. */
			stock_counter_put(&it->counter, qty);
			stock_stat_inc(&app->store_rejects);
			if (rc == STOCK_ESYS)
				stock_breaker_failure(&app->store_breaker, tok);
			else
				stock_breaker_success(&app->store_breaker, tok);
			stock_permits_release(&app->db_inflight, 1);
			return http_error(c, 503, "store_unavailable",
			    rc == STOCK_EBUSY ? "the store queue is full, retry later" :
			    "the store could not make the buy durable");
		}
	}
	stock_breaker_success(&app->store_breaker, tok);
	stock_permits_release(&app->db_inflight, 1);
	return buy_reply(app, c, APP_ONE_DB, rc, it->doc_id, qty, l);
}

/* ---- --mongo: MongoDB is the authority ----------------------------------- */

static void
peek_to_level(const struct lease_peek *p, struct stock_level *l)
{
	l->remaining = p->remaining;
	l->sold = p->sold;
	l->version = p->version;
}

/*
 * Durable buy on MongoDB: one findAndModify {stock >= n} → $inc, shared by
 * the buys that arrive together (batch.c). A failed round trip is never
 * retried (it may have been applied), the breaker opens after repeated
 * failures so buyers get a fast 503 while MongoDB is down.
 */
static int
buy_mongo_db(struct app *app, struct mg_connection *c, struct app_one_item *it, uint64_t qty)
{
	struct stock_breaker_token tok;
	struct store_doc after;
	struct stock_level l;
	int rc;

	if (stock_permits_try_acquire(&app->db_inflight, 1) != 0)
		return http_error(c, 503, "busy", "too many durable buys in flight");
	if (stock_breaker_allow(&app->store_breaker, &tok) != 0) {
		stock_permits_release(&app->db_inflight, 1);
		return http_error(c, 503, "store_unavailable", "MongoDB is failing, retry later");
	}
	rc = take_batcher_take(&app->db_batch, qty, &after);
	if (rc == STOCK_ESYS) {
		stock_breaker_failure(&app->store_breaker, tok);
		stock_permits_release(&app->db_inflight, 1);
		stock_stat_inc(&app->store_rejects);
		return http_error(c, 503, "store_unavailable",
		    "MongoDB did not answer; the buy may or may not have been applied");
	}
	stock_breaker_success(&app->store_breaker, tok);
	stock_permits_release(&app->db_inflight, 1);
	if (rc == 0 || rc == STOCK_ESOLDOUT)
		lease_offer(app->leases, it->doc_id, after.stock, after.sold, after.version, true);
	l.remaining = after.stock;
	l.sold = after.sold;
	l.version = after.version;
	if (rc == STOCK_ENOENT)
		return http_error(c, 404, "unknown_sku", "no such SKU");
	return buy_reply(app, c, APP_ONE_DB, rc, it->doc_id, qty, &l);
}

/* A buy from this instance's lease (refilled from MongoDB when it runs dry). */
static int
buy_leased(struct app *app, struct mg_connection *c, int slot, const char *sku, uint64_t qty)
{
	struct lease_peek p = { 0 };
	struct stock_level l;
	int rc = lease_take(app->leases, sku, qty, &p);

	if (rc == STOCK_ESYS) {
		stock_stat_inc(&app->store_rejects);
		return http_error(c, 503, "store_unavailable",
		    "this instance's lease is empty and MongoDB did not answer");
	}
	if (rc == STOCK_EBUSY)
		return http_error(c, 503, "busy", "stock is being refilled, retry shortly");
	if (rc == STOCK_ECONFLICT)
		return http_error(c, 503, "store_unavailable", "this instance's lease is unusable");
	if (rc == STOCK_ENOENT)
		return http_error(c, 404, "unknown_sku", "no such SKU");
	peek_to_level(&p, &l);
	return buy_reply(app, c, slot, rc, sku, qty, &l);
}

static int
one_buy(struct app *app, struct mg_connection *c, int idx)
{
	struct app_one_item *it = &app->one[idx];
	struct stock_level l;
	uint64_t qty;
	int status;

	if ((status = buy_admit(app, c, &qty)) != 0)
		return status;
	if (app->leases != NULL)
		return idx == APP_ONE_DB ? buy_mongo_db(app, c, it, qty) :
		    buy_leased(app, c, idx, it->doc_id, qty);
	if (idx == APP_ONE_DB)
		return buy_durable(app, c, it, qty, &l);
	return buy_reply(app, c, idx, buy_cache(app, &it->counter, it->doc_id, qty, &l),
	    it->doc_id, qty, &l);
}

static int
many_buy(struct app *app, struct mg_connection *c, const char *sku)
{
	struct stock_table_section sec;
	struct stock_counter *ctr;
	struct stock_level l;
	uint64_t qty;
	int rc, status;

	if ((status = buy_admit(app, c, &qty)) != 0)
		return status;
	if (app->leases != NULL)
		return buy_leased(app, c, APP_ONE_COUNT, sku, qty);
	if (stock_table_read_begin(app->many, &sec) != 0)
		return http_error(c, 503, "busy", "out of memory");
	ctr = stock_table_lookup(app->many, sku, strlen(sku));
	rc = ctr == NULL ? STOCK_ENOENT : buy_cache(app, ctr, sku, qty, &l);
	stock_table_read_end(app->many, &sec);
	if (rc == STOCK_ENOENT)
		return http_error(c, 404, "unknown_sku", "no such SKU");
	return buy_reply(app, c, APP_ONE_COUNT, rc, sku, qty, &l);
}

static int
many_peek(struct app *app, struct mg_connection *c, const char *sku)
{
	struct stock_level l;

	if (app->leases != NULL) {
		struct lease_peek p;
		if (lease_peek(app->leases, sku, &p) != 0)
			return http_error(c, 404, "unknown_sku", "no such SKU");
		peek_to_level(&p, &l);
		return reply_level(c, sku, &l);
	}
	if (stock_table_read(app->many, sku, strlen(sku), &l) != 0)
		return http_error(c, 404, "unknown_sku", "no such SKU");
	return reply_level(c, sku, &l);
}

struct list_ctx {
	char *buf;
	size_t cap, len;
	struct app *app;
};

static int
list_one(const char *sku, size_t len, const struct stock_level *l, void *arg)
{
	struct list_ctx *x = arg;
	struct stock_level ml;
	struct lease_peek p;
	char id[STORE_SKU_MAX + 1];
	int n;

	/* --mongo: the shared view, not this instance's lease counter. */
	snprintf(id, sizeof id, "%.*s", (int)len, sku);
	if (x->app->leases != NULL && lease_peek(x->app->leases, id, &p) == 0) {
		peek_to_level(&p, &ml);
		l = &ml;
	}
	n = snprintf(x->buf + x->len, x->cap - x->len,
	    "%s{\"sku\":\"%.*s\",\"remaining\":%llu,\"sold\":%llu,\"version\":%llu}",
	    x->len > 1 ? "," : "", (int)len, sku, (unsigned long long)l->remaining,
	    (unsigned long long)l->sold, (unsigned long long)l->version);
	if (n < 0 || (size_t)n >= x->cap - x->len)
		return 1;
	x->len += (size_t)n;
	return 0;
}

static int
admin_list(struct app *app, struct mg_connection *c)
{
	enum { CAP = 256 * 1024 };
	char *buf = malloc(CAP);
	struct list_ctx x = { buf, CAP - 2, 1, app };
	struct stock_level l;

	if (buf == NULL)
		return http_error(c, 503, "busy", "out of memory");
	buf[0] = '[';
	for (int i = 0; i < APP_ONE_COUNT; i++) {
		stock_counter_read(&app->one[i].counter, &l);
		list_one(app->one[i].doc_id, strlen(app->one[i].doc_id), &l, &x);
	}
	stock_table_foreach(app->many, list_one, &x);
	buf[x.len++] = ']';
	buf[x.len++] = '\n';
	http_send(c, 200, "application/json", NULL, buf, x.len);
	free(buf);
	return 200;
}

/*
 * --mongo: the change goes to the SKU's document (its unleased pool:
 * `stock`); a correction closes the gate while it applies. Every instance
 * sees it through the bus and its next poll.
 */
static int
admin_set_mongo(struct app *app, struct mg_connection *c, const char *sku, bool correction,
    uint64_t n)
{
	struct lease_peek p;
	struct stock_level l;
	int rc;

	if (lease_peek(app->leases, sku, &p) != 0)
		return http_error(c, 404, "unknown_sku", "no such SKU");
	if (correction)
		stock_breaker_isolate(&app->gate);
	rc = store_mongo_adjust(app->store, sku, correction, n, NULL);
	if (rc == 0)
		lease_refresh(app->leases, sku);
	if (correction)
		stock_breaker_close(&app->gate);
	if (rc == STOCK_ERANGE)
		return http_error(c, 400, "bad_request", "stock out of range");
	if (rc != 0)
		return http_error(c, 503, "store_unavailable", "MongoDB did not apply the change");
	app_log("admin: %s %s %llu (MongoDB pool)", sku,
	    correction ? "pool corrected to" : "restocked by", (unsigned long long)n);
	lease_peek(app->leases, sku, &p);
	peek_to_level(&p, &l);
	return reply_level(c, sku, &l);
}

/*
 * Admin change of one SKU: {"remaining": n} is an authoritative correction,
 * applied with the gate closed (the seed's phase 3); {"restock": n} adds n
 * new units atomically, concurrent buys keep going. Both are made durable.
 */
static int
admin_set(struct app *app, struct mg_connection *c, const char *sku)
{
	char body[4096];
	size_t len;
	uint64_t n = 0;
	bool correction = false, restock = false;
	const char *why = "body must be {\"remaining\": <integer>} or {\"restock\": <integer>}";
	struct stock_counter *ctr = NULL;
	struct stock_table_section sec;
	struct stock_level l;
	int rc, i;

	if ((rc = http_read_body(c, sizeof body - 1, body, &len)) != 0)
		return http_error(c, rc, rc == 413 ? "too_large" : "bad_request", "bad body");
	if (json_uint_field(body, len, "remaining", &n, &correction, &why) != 0 &&
	    json_uint_field(body, len, "restock", &n, &restock, &why) != 0)
		return http_error(c, 400, "bad_request", why);
	if (!correction && !restock)
		return http_error(c, 400, "bad_request", why);
	if (n > STOCK_COUNT_MAX || (restock && n == 0))
		return http_error(c, 400, "bad_request", "count out of range");
	if (app->leases != NULL)
		return admin_set_mongo(app, c, sku, correction, n);
	if (stock_table_read_begin(app->many, &sec) != 0)
		return http_error(c, 503, "busy", "out of memory");
	for (i = 0; i < APP_ONE_COUNT && ctr == NULL; i++)
		if (strcmp(sku, app->one[i].doc_id) == 0)
			ctr = &app->one[i].counter;
	if (ctr == NULL)
		ctr = stock_table_lookup(app->many, sku, strlen(sku));
	if (ctr == NULL) {
		stock_table_read_end(app->many, &sec);
		return http_error(c, 404, "unknown_sku", "no such SKU");
	}
	if (correction) {
		stock_breaker_isolate(&app->gate);
		rc = stock_counter_set(ctr, n);
	} else {
		rc = stock_counter_restock(ctr, n);
	}
	stock_counter_read(ctr, &l);
	if (rc == 0)
		rc = journal(app, sku, &l, true);
	stock_table_read_end(app->many, &sec);
	if (correction)
		stock_breaker_close(&app->gate);
	if (rc == STOCK_ERANGE)
		return http_error(c, 400, "bad_request", "sold + remaining out of range");
	if (rc != 0)
		return http_error(c, 503, "store_unavailable", "applied in memory, not durable");
	app_log("admin: %s %s %llu", sku, correction ? "corrected to remaining" : "restocked by",
	    (unsigned long long)n);
	return reply_level(c, sku, &l);
}

static int
reply_config(struct mg_connection *c, const struct app_tunables *t)
{
	return http_reply(c, 200, NULL, "{\"gate_wait_ms\":%u,\"max_quantity\":%llu}",
	    t->gate_wait_ms, (unsigned long long)t->max_quantity);
}

/*
 * Run-time tunables: {"gate_wait_ms": n} or {"max_quantity": n}. A new
 * immutable copy is published (RCU); requests already reading the old one
 * finish with it, it is freed after a grace period.
 */
static int
admin_config(struct app *app, struct mg_connection *c)
{
	char body[1024];
	size_t len;
	uint64_t v = 0;
	bool gate = false, qty = false;
	const char *why = "body must be {\"gate_wait_ms\": n} or {\"max_quantity\": n}";
	struct app_tunables *t, now;
	int rc;

	if ((rc = http_read_body(c, sizeof body - 1, body, &len)) != 0)
		return http_error(c, rc, rc == 413 ? "too_large" : "bad_request", "bad body");
	if (json_uint_field(body, len, "gate_wait_ms", &v, &gate, &why) != 0 &&
	    json_uint_field(body, len, "max_quantity", &v, &qty, &why) != 0)
		return http_error(c, 400, "bad_request", why);
	if (!gate && !qty)
		return http_error(c, 400, "bad_request", why);
	if ((gate && v > 600000) || (qty && (v == 0 || v > STOCK_COUNT_MAX)))
		return http_error(c, 400, "bad_request", "value out of range");
	if ((t = malloc(sizeof *t)) == NULL)
		return http_error(c, 503, "busy", "out of memory");
	app_tunables_get(app, t);
	if (gate)
		t->gate_wait_ms = (unsigned)v;
	else
		t->max_quantity = v;
	now = *t; /* once published, t may be retired by a later publish */
	if (stock_snapshot_publish(&app->tunables, t) != 0) {
		free(t);
		return http_error(c, 503, "busy", "could not publish");
	}
	app_log("admin: %s set to %llu", gate ? "gate_wait_ms" : "max_quantity", (unsigned long long)v);
	return reply_config(c, &now);
}

/* ---- dispatch ------------------------------------------------------------ */

static int
dispatch(struct app *app, struct mg_connection *c, size_t *route_out)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *raw = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
	char path[2048];
	int plen;
	bool path_matched = false;
	const char *sku = NULL;
	size_t i;

	*route_out = ROUTE_UNMATCHED;
	/* civetweb runs with decode_url=no: decoding into a C string would turn
	 * "NVDA%00X" into "NVDA" and sell NVDA. Decode here with the length and
	 * refuse a path whose decoded bytes hold a NUL. */
	plen = raw == NULL ? -1 : mg_url_decode(raw, (int)strlen(raw), path, (int)sizeof path, 0);
	if (plen < 0 || (size_t)plen >= sizeof path - 1 || memchr(path, '\0', (size_t)plen) != NULL)
		return http_error(c, 400, "bad_request", "malformed request path");
	for (i = 0; i < NROUTES; i++) {
		const struct route *r = &routes[i];
		size_t pl = strlen(r->path);

		if (r->sku ? strncmp(path, r->path, pl) != 0 : strcmp(path, r->path) != 0)
			continue;
		path_matched = true;
		if (strcmp(ri->request_method, r->method) == 0)
			break;
	}
	if (i == NROUTES) {
		if (path_matched)
			return http_reply(c, 405, NULL,
			    "{\"error\":\"method_not_allowed\",\"message\":\"wrong method for this path\"}");
		return http_error(c, 404, "not_found", "no such route");
	}
	*route_out = i;
	if (routes[i].sku) {
		sku = path + strlen(routes[i].path);
		if (!stock_sku_valid(sku, strlen(sku)))
			return http_error(c, 400, "bad_sku",
			    "SKU must be 1-64 characters of A-Z a-z 0-9 . _ : -");
	}
	switch (routes[i].kind) {
	case R_LIVE:
		return http_reply(c, 200, NULL, "{\"status\":\"live\"}");
	case R_READY:
		if (!ck_pr_load_int(&app->ready))
			return http_error(c, 503, "not_ready", "recovery in progress");
		return http_reply(c, 200, NULL, "{\"status\":\"ready\",\"store\":\"%s\"}",
		    store_healthy(app->store) ? "healthy" : "failing");
	case R_METRICS: {
		enum { CAP = 256 * 1024 };
		char *buf = malloc(CAP);
		size_t n;

		if (buf == NULL)
			return http_error(c, 503, "busy", "out of memory");
		n = app_metrics_render(app, buf, CAP);
		http_send(c, 200, "text/plain; version=0.0.4", NULL, buf, n);
		free(buf);
		return 200;
	}
	default:
		break;
	}
	if (!ck_pr_load_int(&app->ready))
		return http_error(c, 503, "not_ready", "recovery in progress");
	switch (routes[i].kind) {
	case R_ONE_BUY:
		return one_buy(app, c, routes[i].arg);
	case R_ONE_PEEK: {
		struct stock_level l;
		struct lease_peek p;
		if (app->leases != NULL && lease_peek(app->leases, app->one[routes[i].arg].doc_id, &p) == 0)
			peek_to_level(&p, &l);
		else
			stock_counter_read(&app->one[routes[i].arg].counter, &l);
		return reply_level(c, app->one[routes[i].arg].doc_id, &l);
	}
	case R_MANY_BUY:
		return many_buy(app, c, sku);
	case R_MANY_PEEK:
		return many_peek(app, c, sku);
	default:
		break;
	}
	/* Everything below needs the admin token. */
	if (!http_token_ok(app, c))
		return http_error(c, 401, "unauthorized", "missing or wrong bearer token");
	switch (routes[i].kind) {
	case R_UTIL_OPEN:
		stock_breaker_close(&app->gate);
		app_log("gate opened");
		return http_reply(c, 200, NULL, "{\"gate\":\"open\"}");
	case R_UTIL_CLOSE:
		stock_breaker_isolate(&app->gate);
		app_log("gate closed");
		return http_reply(c, 200, NULL, "{\"gate\":\"closed\"}");
	case R_UTIL_PUBLISH:
		if (app->leases == NULL || app->bus == NULL)
			return http_error(c, 503, "bus_unavailable", "no Redis bus configured (--redis)");
		if (lease_publish_all(app->leases) != 0)
			return http_error(c, 503, "busy", "out of memory");
		app_log("published every SKU on demand");
		return http_reply(c, 200, NULL, "{\"published\":true}");
	case R_ADMIN_LIST:
		return admin_list(app, c);
	case R_ADMIN_SET:
		return admin_set(app, c, sku);
	case R_ADMIN_CONFIG_GET: {
		struct app_tunables t;
		app_tunables_get(app, &t);
		return reply_config(c, &t);
	}
	case R_ADMIN_CONFIG_SET:
		return admin_config(app, c);
	default:
		return http_error(c, 404, "not_found", "no such route");
	}
}

static int
handle(struct mg_connection *c, void *arg)
{
	struct app *app = arg;
	uint64_t t0 = stock_now_ns();
	size_t route;
	int status = dispatch(app, c, &route);

	app_metrics_observe(app, route, status, (stock_now_ns() - t0) / 1000);
	return status;
}

int
app_routes_install(struct app *app, struct mg_context *ctx)
{
	mg_set_request_handler(ctx, "/", handle, app);
	return 0;
}
