/*
 * The handlers (http/handlers.h): parse and check the request, pass the
 * gate, call the inventory, and map its libstock code to the documented
 * HTTP answer in one place (reply_err). A bad request never reaches the
 * inventory, so it never changes stock.
 */
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "http/handlers.h"
#include "http/http.h"
#include "log.h"

/* ---- the edge: libstock codes to HTTP -------------------------------------- */

int
handlers_reply_err(struct mg_connection *c, int rc)
{
	switch (rc) {
	case STOCK_ESOLDOUT:
		return http_error(c, 409, "sold_out", "not enough stock remaining");
	case STOCK_ENOENT:
		return http_error(c, 404, "unknown_sku", "no such SKU");
	case STOCK_ERANGE:
		return http_error(c, 400, "bad_request", "count out of range");
	case STOCK_EBUSY:
		return http_error(c, 503, "busy", "too many requests in flight, retry shortly");
	case STOCK_EOPEN:
		return http_error(c, 503, "store_unavailable", "the store is failing, retry later");
	case STOCK_ESYS:
		return http_error(c, 503, "store_unavailable",
		    "the store did not make the change durable (on MongoDB a buy may have applied)");
	case STOCK_ECONFLICT:
		return http_error(c, 503, "store_unavailable", "this instance's stock is unusable");
	case STOCK_ENOMEM:
		return http_error(c, 503, "busy", "out of memory");
	default:
		return http_error(c, 500, "internal", stock_strerror(rc));
	}
}

#define reply_err handlers_reply_err

/*
 * The end of every level object: remaining, held, sold, version, and the
 * seed's names for the same counts (its k6 script reads remainingStock and
 * soldStock; its OneStock documents are {id, stock}: @one_id).
 */
void
handlers_level_json(struct buf *b, const struct stock_level *l, const char *one_id)
{
	/* No printf: this is every buy's answer. */
	buf_key_u64(b, "\"remaining\":", l->remaining);
	buf_key_u64(b, ",\"held\":", l->held);
	buf_key_u64(b, ",\"sold\":", l->sold);
	buf_key_u64(b, ",\"version\":", l->version);
	buf_key_u64(b, ",\"remainingStock\":", l->remaining);
	buf_key_u64(b, ",\"soldStock\":", l->sold);
	if (one_id != NULL) {
		buf_str(b, ",\"id\":\"");
		buf_str(b, one_id);
		buf_key_u64(b, "\",\"stock\":", l->remaining);
	}
	buf_append(b, "}", 1);
}

static int
reply_level(struct mg_connection *c, const char *sku, const struct stock_level *l)
{
	char small[512];
	struct buf b = BUF_ON(small);
	int st;

	buf_printf(&b, "{\"sku\":\"%s\",", sku);
	handlers_level_json(&b, l, catalog_is_one(sku) ? sku : NULL);
	buf_append(&b, "\n", 1);
	st = b.failed ? reply_err(c, STOCK_ENOMEM) : http_send(c, 200, "application/json", NULL,
	    b.data, b.len);
	buf_free(&b);
	return st;
}

/* A body built into @b (or the error @rc while building it): 200 or the mapped error. */
static int
reply_buf(struct mg_connection *c, const char *type, struct buf *b, int rc)
{
	int status = rc != 0 || b->failed ? reply_err(c, rc != 0 ? rc : STOCK_ENOMEM) :
	    http_send(c, 200, type, NULL, b->data, b->len);

	buf_free(b);
	return status;
}

/* ---- parsing ------------------------------------------------------------ */

int
handlers_read_body(struct app *app, struct mg_connection *c, struct req_body *b)
{
	int rc;

	b->data = b->small;
	b->len = 0;
	if (app->cfg.max_body >= sizeof b->small && (b->data = malloc(app->cfg.max_body + 1)) == NULL)
		return reply_err(c, STOCK_ENOMEM);
	if ((rc = http_read_body(c, app->cfg.max_body, b->data, &b->len)) != 0) {
		handlers_body_free(b);
		return http_error(c, rc, rc == 413 ? "too_large" : "bad_request",
		    rc == 413 ? "request body too large" : "incomplete request body");
	}
	return 0;
}

void
handlers_body_free(struct req_body *b)
{
	if (b->data != b->small)
		free(b->data);
	b->data = b->small;
	b->len = 0;
}

/* @body as a JSON object of @fields: 0, or the status of the error already sent. */
static int
body_parse(struct mg_connection *c, const struct req_body *body, struct json_field *f, size_t n)
{
	const char *why = NULL;

	if (json_object_parse(body->data, body->len, f, n, &why) != 0)
		return http_error(c, 400, "bad_request", why);
	return 0;
}

/* The body (at most --max-body bytes) as a JSON object of @fields: 0 or the status sent. */
static int
body_fields(struct app *app, struct mg_connection *c, struct json_field *f, size_t n)
{
	struct req_body body;
	int rc;

	if ((rc = handlers_read_body(app, c, &body)) != 0)
		return rc;
	rc = body_parse(c, &body, f, n);
	handlers_body_free(&body);
	return rc;
}

/*
 * The quantity of a buy: from a JSON body {"quantity": n} or ?quantity=n
 * (not both), default 1, at most the max_quantity tunable. 0 or the status
 * of the error already sent.
 */
static int
parse_quantity(struct mg_connection *c, const struct req_body *body, uint64_t max, uint64_t *qty)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	struct json_field f = { .name = "quantity", .kind = JSON_U64, .max = UINT64_MAX, .u64 = qty };
	char qs[32];
	size_t qn;
	bool qfound = false;
	int rc;

	if ((rc = body_parse(c, body, &f, 1)) != 0)
		return rc;
	if (ri->query_string != NULL &&
	    http_query_get(ri->query_string, strlen(ri->query_string), "quantity", qs, sizeof qs, &qn,
	    &qfound) != 0)
		return http_error(c, 400, "bad_request", "malformed or repeated query parameter");
	if (qfound && f.found)
		return http_error(c, 400, "bad_request", "quantity given twice");
	if (qfound && http_u64_parse(qs, qn, qty) != 0)
		return http_error(c, 400, "bad_request", "quantity must be a positive integer");
	if (!qfound && !f.found)
		*qty = 1;
	if (*qty == 0 || *qty > max)
		return http_error(c, 400, "bad_request",
		    "quantity must be between 1 and the configured maximum");
	return 0;
}

/* ---- buys and peeks -------------------------------------------------------- */

/* Buyers wait (bounded) while the gate is closed. */
static bool
pass_gate(struct app *app, uint64_t wait_ms)
{
	struct timespec dl;

	if (stock_breaker_state(&app->gate) == STOCK_BREAKER_CLOSED)
		return true;
	stock_deadline_in(&dl, wait_ms);
	return stock_breaker_wait(&app->gate, &dl) == 0;
}

/* Every buy: quantity, gate, inventory, reply; counted under metrics slot @slot. */
static int
buy(struct app *app, struct mg_connection *c, const char *sku, int slot)
{
	struct app_tunables tun;
	struct checkout_view v;
	struct checkout_item it;
	struct req_body body;
	char small[512];
	struct buf b = BUF_ON(small);
	bool handled;
	uint64_t qty;
	int rc, st;

	app_tunables_get(app, &tun);
	if ((rc = handlers_read_body(app, c, &body)) != 0)
		return rc;
	if ((rc = parse_quantity(c, &body, tun.max_quantity, &qty)) != 0) {
		handlers_body_free(&body);
		return rc;
	}
	if (!pass_gate(app, tun.gate_wait_ms)) {
		handlers_body_free(&body);
		return http_error(c, 503, "gate_closed", "stock is being updated, retry shortly");
	}
	/* With X-Buyer-Id or Idempotency-Key: the checkout path (http/checkout.c). */
	st = checkout_buy(app, c, sku, qty, &body, &handled, &rc);
	handlers_body_free(&body);
	if (handled) {
		if (rc == 0 || rc == STOCK_ESOLDOUT)
			metrics_buy(&app->metrics, slot, rc == 0);
		return st;
	}
	rc = inventory_buy(app->inv, sku, qty, &v.level);
	if (rc == 0 || rc == STOCK_ESOLDOUT)
		metrics_buy(&app->metrics, slot, rc == 0);
	if (rc != 0)
		return reply_err(c, rc);
	snprintf(it.sku, sizeof it.sku, "%s", sku);
	it.quantity = qty;
	st = checkout_render_buy(&v, &b, &it) != 0 ? reply_err(c, STOCK_ENOMEM) :
	    http_send(c, 200, "application/json", NULL, b.data, b.len);
	buf_free(&b);
	return st;
}

static int
peek(struct app *app, struct mg_connection *c, const char *sku)
{
	struct stock_level l;
	int rc = inventory_peek(app->inv, sku, &l);

	return rc == 0 ? reply_level(c, sku, &l) : reply_err(c, rc);
}

int
handle_one_buy(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return buy(app, c, catalog_one[r->arg].sku, r->arg);
}

int
handle_one_peek(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return peek(app, c, catalog_one[r->arg].sku);
}

/* ManyStock routes serve the products, not the OneStock documents. */
int
handle_many_buy(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	if (catalog_is_one(r->sku))
		return reply_err(c, STOCK_ENOENT);
	return buy(app, c, r->sku, CATALOG_ONE_COUNT);
}

int
handle_many_peek(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return catalog_is_one(r->sku) ? reply_err(c, STOCK_ENOENT) : peek(app, c, r->sku);
}

/* ---- health and metrics ---------------------------------------------------- */

int
handle_live(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	(void)app, (void)r;
	return http_reply(c, 200, NULL, "{\"status\":\"live\"}");
}

int
handle_ready(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	(void)r;
	if (!stock_latch_is_set(&app->ready))
		return http_error(c, 503, "not_ready", "recovery in progress");
	return http_reply(c, 200, NULL, "{\"status\":\"ready\",\"store\":\"%s\"}",
	    inventory_healthy(app->inv) ? "healthy" : "failing");
}

int
handle_metrics(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	struct buf b = BUF_INIT;

	(void)r;
	metrics_render(app, &b);
	return reply_buf(c, "text/plain; version=0.0.4", &b, 0);
}

/* ---- operator endpoints (admin token) ------------------------------------- */

/* Util/Open (@r->arg 0) lets buyers pass; Util/Close (1) holds them at the gate. */
int
handle_gate(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	if (r->arg)
		stock_breaker_isolate(&app->gate);
	else
		stock_breaker_close(&app->gate);
	log_info("admin", "gate %s", r->arg ? "closed" : "opened");
	return http_reply(c, 200, NULL, "{\"gate\":\"%s\"}", r->arg ? "closed" : "open");
}

int
handle_publish(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	int rc = inventory_publish(app->inv);

	(void)r;
	if (rc == STOCK_ENOENT)
		return http_error(c, 503, "bus_unavailable", "no Redis bus configured (--redis)");
	if (rc != 0)
		return reply_err(c, rc);
	log_info("admin", "published every SKU on demand");
	return http_reply(c, 200, NULL, "{\"published\":true}");
}

static int
list_one(const char *sku, const struct stock_level *l, void *arg)
{
	struct buf *b = arg;

	buf_printf(b, "%s{\"sku\":\"%s\",", b->len > 1 ? "," : "", sku);
	handlers_level_json(b, l, NULL);
	return b->failed ? STOCK_ENOMEM : 0;
}

int
handle_stock_list(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	struct buf b = BUF_INIT;
	int rc;

	(void)r;
	buf_append(&b, "[", 1);
	rc = inventory_list(app->inv, list_one, &b);
	buf_append(&b, "]\n", 2);
	return reply_buf(c, "application/json", &b, rc);
}

/*
 * Admin change of one SKU: {"remaining": n} is an authoritative correction,
 * applied with the gate closed (the seed's phase 3); {"restock": n} adds n
 * new units atomically while buys keep going. Both are made durable.
 */
int
handle_stock_set(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	uint64_t remaining = 0, restock = 0;
	struct json_field f[2] = {
		{ .name = "remaining", .kind = JSON_U64, .max = STOCK_COUNT_MAX, .u64 = &remaining },
		{ .name = "restock", .kind = JSON_U64, .max = STOCK_COUNT_MAX, .u64 = &restock },
	};
	struct req_body body;
	struct stock_level l;
	int rc;

	if ((rc = handlers_read_body(app, c, &body)) != 0)
		return rc;
	if ((rc = body_parse(c, &body, f, 2)) != 0)
		goto out;
	if (f[0].found == f[1].found) {
		rc = http_error(c, 400, "bad_request",
		    "body must be {\"remaining\": <integer>} or {\"restock\": <integer>}");
		goto out;
	}
	if (f[1].found && restock == 0) {
		rc = http_error(c, 400, "bad_request", "count out of range");
		goto out;
	}
	if (f[0].found)
		stock_breaker_isolate(&app->gate);
	if (mg_get_header(c, "Idempotency-Key") != NULL) /* the change and its answer, one commit */
		rc = checkout_adjust(app, c, r->sku, f[0].found, f[0].found ? remaining : restock, &body);
	else if ((rc = inventory_adjust(app->inv, r->sku, f[0].found, f[0].found ? remaining : restock,
	    &l)) == 0)
		rc = reply_level(c, r->sku, &l);
	else
		rc = reply_err(c, rc);
	if (f[0].found)
		stock_breaker_close(&app->gate);
out:
	handlers_body_free(&body);
	return rc;
}

static int
reply_config(struct mg_connection *c, const struct app_tunables *t)
{
	return http_reply(c, 200, NULL, "{\"gate_wait_ms\":%llu,\"max_quantity\":%llu}",
	    (unsigned long long)t->gate_wait_ms, (unsigned long long)t->max_quantity);
}

int
handle_config_get(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	struct app_tunables t;

	(void)r;
	app_tunables_get(app, &t);
	return reply_config(c, &t);
}

/*
 * Run-time tunables: {"gate_wait_ms": n} and/or {"max_quantity": n}. A new
 * immutable copy is published (RCU); requests already reading the old one
 * finish with it, it is freed after a grace period.
 */
int
handle_config_set(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	struct app_tunables t;
	uint64_t gate = 0, qty = 0;
	struct json_field f[2] = {
		{ .name = "gate_wait_ms", .kind = JSON_U64, .max = 600000, .u64 = &gate },
		{ .name = "max_quantity", .kind = JSON_U64, .max = STOCK_COUNT_MAX, .u64 = &qty },
	};
	int rc;

	(void)r;
	if ((rc = body_fields(app, c, f, 2)) != 0)
		return rc;
	if (!f[0].found && !f[1].found)
		return http_error(c, 400, "bad_request",
		    "body must be {\"gate_wait_ms\": n} or {\"max_quantity\": n}");
	if (f[1].found && qty == 0)
		return http_error(c, 400, "bad_request", "value out of range");
	app_tunables_get(app, &t);
	if (f[0].found)
		t.gate_wait_ms = gate;
	if (f[1].found)
		t.max_quantity = qty;
	if (app_tunables_set(app, &t) != 0)
		return http_error(c, 503, "busy", "could not publish");
	log_info("admin", "tunables set: gate_wait_ms %llu, max_quantity %llu",
	    (unsigned long long)t.gate_wait_ms, (unsigned long long)t.max_quantity);
	return reply_config(c, &t);
}
