/*
 * The checkout endpoints (docs/server.md "Checkout"): Holds, Confirm,
 * Cancel, Orders, and what every stock-changing POST shares - the
 * Idempotency-Key (a repeat replays the first answer byte for byte) and the
 * X-Buyer-Id a per-buyer limit counts against.
 *
 * A request is parsed and checked first (a 400 is never stored, so a
 * corrected retry may reuse its key); then its key is looked up
 * (inventory_idem_begin); then the inventory runs it, and stores the
 * success answer in the same durable commit as the change (struct
 * idem_answer). A refusal that changed nothing (409, 404, 402, 422) is
 * stored on its own; a 503 is not (the retry runs again).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/json.h"
#include "http/handlers.h"
#include "http/http.h"
#include "log.h"

/* ---- request parts ---------------------------------------------------------- */

/* Header @name at most once: its value (NULL when absent) or -1 when repeated (ambiguous). */
static int
header_once(struct mg_connection *c, const char *name, const char **value)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	int seen = 0;

	*value = NULL;
	for (int i = 0; i < ri->num_headers; i++)
		if (strcasecmp(ri->http_headers[i].name, name) == 0) {
			*value = ri->http_headers[i].value;
			seen++;
		}
	return seen > 1 ? -1 : 0;
}

/* X-Buyer-Id: 0 (*@buyer NULL when absent) or the status sent. */
static int
read_buyer(struct mg_connection *c, char *buf, const char **buyer)
{
	const char *h;
	size_t n;

	*buyer = NULL;
	if (header_once(c, "X-Buyer-Id", &h) != 0)
		return http_error(c, 400, "bad_request", "X-Buyer-Id given more than once");
	if (h == NULL)
		return 0;
	n = strlen(h);
	if (!stock_sku_valid(h, n) || n > BUYER_ID_MAX)
		return http_error(c, 400, "bad_request",
		    "X-Buyer-Id must be 1-64 characters of A-Z a-z 0-9 . _ : -");
	memcpy(buf, h, n + 1);
	*buyer = buf;
	return 0;
}

/*
 * Idempotency-Key: 1..255 visible ASCII (0x21..0x7e). 0 (*@key NULL when
 * absent) or the status sent. civetweb has already refused control bytes
 * and NULs in header values; this checks the rest exactly.
 */
static int
read_key(struct mg_connection *c, const char **key, size_t *klen)
{
	const char *h;

	*key = NULL;
	*klen = 0;
	if (header_once(c, "Idempotency-Key", &h) != 0)
		return http_error(c, 400, "bad_request", "Idempotency-Key given more than once");
	if (h == NULL)
		return 0;
	*klen = strlen(h);
	for (size_t i = 0; i < *klen; i++)
		if ((unsigned char)h[i] < 0x21 || (unsigned char)h[i] > 0x7e)
			*klen = 0;
	if (*klen == 0 || *klen > IDEM_KEY_MAX)
		return http_error(c, 400, "bad_request",
		    "Idempotency-Key must be 1-255 visible ASCII characters");
	*key = h;
	return 0;
}

/* The request an Idempotency-Key names: method, raw path and query, buyer, body. */
static void
fingerprint(struct mg_connection *c, const struct req_body *body, const char *buyer,
    struct buf *out)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *raw = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;

	buf_printf(out, "%s %s?%s\nbuyer:%s\n", ri->request_method, raw ? raw : "",
	    ri->query_string ? ri->query_string : "", buyer ? buyer : "");
	buf_append(out, body->data, body->len);
}

/* Items from a JSON_ITEMS field: checked SKUs, quantities 1..@max, distinct. */
static int
take_items(struct mg_connection *c, const struct json_item *in, size_t n, uint64_t max,
    struct checkout_req *req)
{
	req->n = n;
	for (size_t i = 0; i < n; i++) {
		if (!stock_sku_valid(in[i].sku, in[i].sku_len))
			return http_error(c, 400, "bad_sku",
			    "SKU must be 1-64 characters of A-Z a-z 0-9 . _ : -");
		if (in[i].quantity == 0 || in[i].quantity > max)
			return http_error(c, 400, "bad_request",
			    "quantity must be between 1 and the configured maximum");
		for (size_t k = 0; k < i; k++)
			if (strcmp(in[k].sku, in[i].sku) == 0)
				return http_error(c, 400, "bad_request", "a SKU appears twice in items");
		memcpy(req->items[i].sku, in[i].sku, in[i].sku_len + 1);
		req->items[i].quantity = in[i].quantity;
	}
	return 0;
}

/* ---- answers ------------------------------------------------------------------ */

static void
items_json(struct buf *b, const struct checkout_item *it, size_t n)
{
	buf_append(b, "[", 1);
	for (size_t i = 0; i < n; i++) {
		buf_str(b, i ? ",{\"sku\":\"" : "{\"sku\":\"");
		buf_str(b, it[i].sku);
		buf_key_u64(b, "\",\"quantity\":", it[i].quantity);
		buf_append(b, "}", 1);
	}
	buf_append(b, "]", 1);
}

/* ,"buyer":"<id>" when there is one (ids are [A-Za-z0-9._:-]: nothing to escape). */
static void
buyer_json(struct buf *b, const char *buyer)
{
	if (buyer[0] == '\0')
		return;
	buf_str(b, "\"buyer\":\"");
	buf_str(b, buyer);
	buf_str(b, "\",");
}

static int
render_hold(const struct checkout_view *v, struct buf *b, void *arg)
{
	(void)arg;
	buf_str(b, "{\"hold_id\":\"");
	buf_str(b, v->id);
	buf_str(b, "\",\"status\":\"");
	buf_str(b, hold_status_name(v->status));
	buf_str(b, "\",\"expires_at\":");
	buf_i64(b, v->expires_at_ms);
	buf_append(b, ",", 1);
	buyer_json(b, v->buyer);
	buf_str(b, "\"items\":");
	items_json(b, v->items, v->n);
	buf_append(b, "}\n", 2);
	return b->failed ? STOCK_ENOMEM : 0;
}

static int
render_order(const struct checkout_view *v, struct buf *b, void *arg)
{
	(void)arg;
	buf_str(b, "{\"order_id\":\"");
	buf_str(b, v->id);
	buf_str(b, "\",\"status\":\"confirmed\",");
	buyer_json(b, v->buyer);
	buf_str(b, "\"items\":");
	items_json(b, v->items, v->n);
	buf_append(b, "}\n", 2);
	return b->failed ? STOCK_ENOMEM : 0;
}

int
checkout_render_buy(const struct checkout_view *v, struct buf *b, void *arg)
{
	const struct checkout_item *it = arg;

	buf_str(b, "{\"ok\":true,\"sku\":\"");
	buf_str(b, it->sku);
	buf_key_u64(b, "\",\"quantity\":", it->quantity);
	buf_append(b, ",", 1);
	handlers_level_json(b, &v->level, NULL);
	buf_append(b, "\n", 1);
	return b->failed ? STOCK_ENOMEM : 0;
}

/* A refusal of the checkout operations: its status, code and message. */
struct refusal {
	int status;
	const char *code, *message;
	const char *sku; /* named in the body ("sku") */
	unsigned retry_after_s;
};

static bool
refuse(int rc, const struct checkout_view *v, struct refusal *r)
{
	memset(r, 0, sizeof *r);
	if (v->refused >= 0 && (size_t)v->refused < CHECKOUT_ITEMS_MAX)
		r->sku = v->items[v->refused].sku[0] != '\0' ? v->items[v->refused].sku : NULL;
	if (v->pay_failed) {
		if (rc != PAYMENT_EDECLINED)
			return false; /* settle() answers 503 payment_unavailable */
		*r = (struct refusal){ 402, "payment_declined", "the payment service declined the charge",
			NULL, 0 };
		return true;
	}
	switch (rc) {
	case STOCK_ESOLDOUT:
		*r = v->over_limit ?
		    (struct refusal){ 409, "buyer_limit", "this buyer's limit for the SKU is reached", r->sku, 0 } :
		    (struct refusal){ 409, "sold_out", "not enough stock remaining", r->sku, 0 };
		return true;
	case STOCK_ENOENT:
		*r = v->refused >= 0 ? (struct refusal){ 404, "unknown_sku", "no such SKU", r->sku, 0 } :
		    (struct refusal){ 404, "unknown_hold", "no such hold", NULL, 0 };
		return true;
	case STOCK_ECONFLICT:
		if (v->paying)
			*r = (struct refusal){ 409, "payment_in_progress",
				"a Confirm of this hold is waiting for the payment service", NULL, 0 };
		else if (v->status == HOLD_EXPIRED)
			*r = (struct refusal){ 409, "hold_expired", "the hold has expired", NULL, 0 };
		else if (v->status == HOLD_CANCELLED)
			*r = (struct refusal){ 409, "hold_cancelled", "the hold was cancelled", NULL, 0 };
		else
			*r = (struct refusal){ 409, "hold_confirmed", "the hold was confirmed", NULL, 0 };
		return true;
	case STOCK_EEXIST:
		*r = (struct refusal){ 409, "sku_exists",
			"the SKU exists (OneStock documents are fixed; correct stock with POST)", r->sku, 0 };
		return true;
	case STOCK_EINVAL:
		*r = (struct refusal){ 400, "bad_request",
			"confirm items must be SKUs of the hold, each at most its held quantity", NULL, 0 };
		return true;
	default:
		return false; /* 503s and the rest: handlers_reply_err */
	}
}

static void
refusal_body(const struct refusal *r, struct buf *b)
{
	if (r->sku == NULL) {
		http_error_body(b, r->code, r->message);
		return;
	}
	buf_printf(b, "{\"error\":\"%s\",\"message\":\"%s\",\"sku\":\"%s\"}\n", r->code,
	    r->message, r->sku);
}

/* ---- idempotency around an operation ------------------------------------------ */

struct keyed {
	const char *key;
	size_t klen;
	struct buf req;
	struct idem_answer ans;
	bool active;
};

/* Look the key up: 0 to run the request (k->active when keyed), or the status sent. */
static int
keyed_begin(struct app *app, struct mg_connection *c, const struct req_body *body,
    const char *buyer, struct keyed *k, int status,
    int (*render)(const struct checkout_view *, struct buf *, void *), void *rarg)
{
	struct buf stored = BUF_INIT;
	int st = 0, rc;

	memset(k, 0, sizeof *k);
	if ((rc = read_key(c, &k->key, &k->klen)) != 0 || k->key == NULL)
		return rc;
	if (!inventory_has_keys(app->inv))
		return http_error(c, 501, "not_supported",
		    "Idempotency-Key needs the embedded store in this version");
	fingerprint(c, body, buyer, &k->req);
	if (k->req.failed) {
		buf_free(&k->req);
		return handlers_reply_err(c, STOCK_ENOMEM);
	}
	switch (inventory_idem_begin(app->inv, k->key, k->klen, k->req.data, k->req.len, &st,
	    &stored)) {
	case IDEM_NEW:
		k->active = true;
		k->ans = (struct idem_answer){ .key = k->key, .key_len = k->klen, .req = k->req.data,
			.req_len = k->req.len, .status = status, .render = render, .arg = rarg };
		return 0;
	case IDEM_REPLAY:
		buf_free(&k->req);
		rc = http_send(c, st, "application/json", "Idempotent-Replayed: true\r\n",
		    stored.data != NULL ? stored.data : "", stored.len);
		buf_free(&stored);
		return rc;
	case IDEM_MISMATCH:
		buf_free(&k->req);
		return http_error(c, 422, "idempotency_key_reused",
		    "this Idempotency-Key was used for a different request");
	case IDEM_IN_FLIGHT:
	default:
		buf_free(&k->req);
		return http_error(c, 409, "idempotency_in_flight",
		    "a request with this Idempotency-Key is still running");
	}
}

/*
 * Answer an operation's outcome @rc (view @v): the success body the
 * inventory rendered, or the refusal - stored for the key when it is
 * final, forgotten when it is a 503 (a retry runs again).
 */
static int
keyed_end(struct app *app, struct mg_connection *c, struct keyed *k, int rc,
    const struct checkout_view *v, int ok_status,
    int (*render)(const struct checkout_view *, struct buf *, void *), void *rarg)
{
	struct refusal r;
	char small[1024]; /* a one-item answer fits: no allocation on the request path */
	struct buf b = BUF_ON(small);
	int st;

	if (rc == 0) {
		if (k->active && k->ans.stored) {
			st = http_send(c, ok_status, "application/json", NULL, k->ans.body.data,
			    k->ans.body.len);
			buf_free(&k->ans.body);
		} else if (render(v, &b, rarg) != 0 || b.failed) {
			if (k->active)
				inventory_idem_abort(app->inv, k->key, k->klen);
			st = handlers_reply_err(c, STOCK_ENOMEM);
		} else {
			/* A success that changed nothing (a repeated Confirm or Cancel):
			   its answer is stored on its own, as a refusal's is. */
			if (k->active && inventory_idem_finish(app->inv, k->key, k->klen, ok_status, b.data,
			    b.len) != 0)
				log_warn("checkout", "an Idempotency-Key answer (%d) could not be stored", ok_status);
			st = http_send(c, ok_status, "application/json", NULL, b.data, b.len);
		}
		buf_free(&b);
		buf_free(&k->req);
		return st;
	}
	buf_free(&k->ans.body);
	if (!refuse(rc, v, &r)) {
		if (!(k->active && rc == STOCK_ESYS && v->unknown && !k->ans.stored)) {
			if (k->active)
				inventory_idem_abort(app->inv, k->key, k->klen); /* no-op if stored */
			buf_free(&k->req);
			return handlers_reply_err(c, rc);
		}
		/* It may have applied: a retry with this key must not run it again. */
		r = (struct refusal){ 503, "store_unavailable",
			"the store did not confirm the change; it may have applied, and this "
			"Idempotency-Key will not run it again", NULL, 0 };
	}
	refusal_body(&r, &b);
	if (b.failed) {
		buf_free(&b);
		buf_free(&k->req);
		return handlers_reply_err(c, STOCK_ENOMEM);
	}
	if (k->active && inventory_idem_finish(app->inv, k->key, k->klen, r.status, b.data, b.len) != 0)
		log_warn("checkout", "an Idempotency-Key answer (%d) could not be stored", r.status);
	st = http_send(c, r.status, "application/json", NULL, b.data, b.len);
	buf_free(&b);
	buf_free(&k->req);
	return st;
}

/* ---- handlers -------------------------------------------------------------------- */

static int
no_checkout(struct mg_connection *c)
{
	return http_error(c, 501, "not_supported",
	    "holds and Idempotency-Key need the embedded store in this version");
}

/* Body {"items": [...], "ttl_ms": n} (ttl when @with_ttl). 0 or the status sent. */
static int
parse_items_body(struct app *app, struct mg_connection *c, const struct req_body *body,
    bool with_ttl, bool required, struct checkout_req *req, bool *found)
{
	struct json_item items[CHECKOUT_ITEMS_MAX];
	struct app_tunables tun;
	uint64_t ttl = 0;
	size_t n = 0;
	struct json_field f[2] = {
		{ .name = "items", .kind = JSON_ITEMS, .max = CHECKOUT_ITEMS_MAX, .items = items, .len = &n },
		{ .name = "ttl_ms", .kind = JSON_U64, .max = UINT64_MAX, .u64 = &ttl },
	};
	const char *why = NULL;
	int rc;

	memset(req, 0, sizeof *req);
	if (json_object_parse(body->data, body->len, f, with_ttl ? 2 : 1, &why) != 0)
		return http_error(c, 400, "bad_request", why);
	*found = f[0].found;
	if (!f[0].found)
		return required ? http_error(c, 400, "bad_request",
		    "body must be {\"items\": [{\"sku\": s, \"quantity\": n}, ...]}") : 0;
	app_tunables_get(app, &tun);
	if ((rc = take_items(c, items, n, tun.max_quantity, req)) != 0)
		return rc;
	if (with_ttl) {
		req->ttl_ms = f[1].found ? ttl : app->cfg.hold_ttl_ms;
		if (req->ttl_ms == 0 || req->ttl_ms > app->cfg.max_hold_ms)
			return http_error(c, 400, "bad_request",
			    "ttl_ms must be between 1 and --max-hold-ms");
	}
	return 0;
}

/* Holds and Orders: POST {"items": [...]} */
static int
create(struct app *app, struct mg_connection *c, bool hold)
{
	char buyer_buf[BUYER_ID_MAX + 1];
	struct req_body body;
	struct checkout_req req;
	struct checkout_view v;
	struct keyed k;
	bool found;
	int rc;
	int (*render)(const struct checkout_view *, struct buf *, void *) =
	    hold ? render_hold : render_order;

	if (hold ? !inventory_has_checkout(app->inv) : !inventory_has_orders(app->inv))
		return no_checkout(c);
	if ((rc = handlers_read_body(app, c, &body)) != 0)
		return rc;
	/* The body first (it clears @req), then the buyer into it. */
	if ((rc = parse_items_body(app, c, &body, hold, true, &req, &found)) != 0 ||
	    (rc = read_buyer(c, buyer_buf, &req.buyer)) != 0) {
		handlers_body_free(&body);
		return rc;
	}
	if (req.buyer != NULL && !inventory_has_buyers(app->inv)) {
		handlers_body_free(&body);
		return no_checkout(c);
	}
	if ((rc = keyed_begin(app, c, &body, req.buyer, &k, 201, render, NULL)) != 0 ||
	    (k.key != NULL && !k.active)) {
		handlers_body_free(&body);
		return rc;
	}
	handlers_body_free(&body);
	rc = hold ? inventory_hold(app->inv, &req, k.active ? &k.ans : NULL, &v) :
	    inventory_order(app->inv, &req, k.active ? &k.ans : NULL, &v);
	if (rc != 0 && v.refused >= 0 && (size_t)v.refused < req.n)
		memcpy(&v.items[v.refused], &req.items[v.refused], sizeof v.items[0]);
	return keyed_end(app, c, &k, rc, &v, 201, render, NULL);
}

int
handle_hold_create(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	(void)r;
	return create(app, c, true);
}

int
handle_order(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	(void)r;
	return create(app, c, false);
}

int
handle_hold_get(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	struct checkout_view v;
	char small[1024];
	struct buf b = BUF_ON(small);
	int st;

	if (!inventory_has_checkout(app->inv))
		return no_checkout(c);
	if ((st = inventory_hold_get(app->inv, r->sku, strlen(r->sku), &v)) == STOCK_ENOENT)
		return http_error(c, 404, "unknown_hold", "no such hold");
	if (st != 0)
		return handlers_reply_err(c, st);
	if (render_hold(&v, &b, NULL) != 0)
		st = handlers_reply_err(c, STOCK_ENOMEM);
	else
		st = http_send(c, 200, "application/json", NULL, b.data, b.len);
	buf_free(&b);
	return st;
}

/* The payment step of a confirm: charge the hold through app->payment. */
struct pay_ctx {
	struct app *app;
	unsigned retry_after_s;
};

static int
pay_hold(const struct checkout_view *h, void *arg)
{
	struct pay_ctx *p = arg;
	struct payment_item items[CHECKOUT_ITEMS_MAX];

	for (size_t i = 0; i < h->n; i++)
		items[i] = (struct payment_item){ h->items[i].sku, h->items[i].quantity };
	return payment_charge(p->app->payment, h->id, items, h->n, h->buyer[0] ? h->buyer : NULL,
	    &p->retry_after_s);
}

/* Confirm (@confirm) or Cancel of hold r->sku. */
static int
settle(struct app *app, struct mg_connection *c, const struct route_req *r, bool confirm)
{
	struct req_body body;
	struct checkout_req part;
	struct checkout_view v;
	struct pay_ctx pay = { app, 0 };
	struct keyed k;
	bool found = false;
	int rc;

	if (!inventory_has_checkout(app->inv))
		return no_checkout(c);
	if ((rc = handlers_read_body(app, c, &body)) != 0)
		return rc;
	if ((confirm && (rc = parse_items_body(app, c, &body, false, false, &part, &found)) != 0) ||
	    (!confirm && body.len > 0 && (rc = parse_items_body(app, c, &body, false, false, &part,
	    &found)) != 0) || (rc = keyed_begin(app, c, &body, NULL, &k, 200, render_hold, NULL)) != 0 ||
	    (k.key != NULL && !k.active)) {
		handlers_body_free(&body);
		return rc;
	}
	handlers_body_free(&body);
	if (!confirm && found) {
		buf_free(&k.req);
		if (k.active)
			inventory_idem_abort(app->inv, k.key, k.klen);
		return http_error(c, 400, "bad_request", "Cancel takes no body");
	}
	if (confirm)
		rc = inventory_confirm(app->inv, r->sku, strlen(r->sku), found ? &part : NULL,
		    app->payment != NULL ? pay_hold : NULL, &pay, k.active ? &k.ans : NULL, &v);
	else
		rc = inventory_cancel(app->inv, r->sku, strlen(r->sku), k.active ? &k.ans : NULL, &v);
	if (rc != 0 && v.pay_failed) {
		/* The payment step failed: the hold stays held. A decline is
		   final (402, stored for the key); the rest is a 503. */
		if (rc != PAYMENT_EDECLINED) {
			char ra[64];

			if (k.active)
				inventory_idem_abort(app->inv, k.key, k.klen);
			buf_free(&k.req);
			snprintf(ra, sizeof ra, "Retry-After: %u\r\n", pay.retry_after_s ? pay.retry_after_s : 1);
			return http_reply(c, 503, ra, "{\"error\":\"payment_unavailable\",\"message\":\"%s\"}",
			    rc == STOCK_EOPEN ? "the payment service is failing, retry later" :
			    "the payment service did not answer in time; the hold is still held");
		}
	}
	return keyed_end(app, c, &k, rc, &v, 200, render_hold, NULL);
}

int
handle_hold_confirm(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return settle(app, c, r, true);
}

int
handle_hold_cancel(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return settle(app, c, r, false);
}

/*
 * A buy with X-Buyer-Id or Idempotency-Key (handlers.c sends the others
 * the fast way): through the inventory's checkout path, which counts the
 * buyer and stores the answer with the sale. 0 when neither header is
 * there (*@handled false), else the status sent.
 */
int
checkout_buy(struct app *app, struct mg_connection *c, const char *sku, uint64_t qty,
    const struct req_body *body, bool *handled, int *rc_out)
{
	char buyer_buf[BUYER_ID_MAX + 1];
	struct checkout_item it;
	struct checkout_view v;
	const char *buyer;
	struct keyed k;
	int rc;

	*handled = false;
	*rc_out = 0;
	if (mg_get_header(c, "X-Buyer-Id") == NULL && mg_get_header(c, "Idempotency-Key") == NULL)
		return 0;
	*handled = true;
	if (!inventory_has_buyers(app->inv))
		return no_checkout(c);
	snprintf(it.sku, sizeof it.sku, "%s", sku);
	it.quantity = qty;
	if ((rc = read_buyer(c, buyer_buf, &buyer)) != 0 ||
	    (rc = keyed_begin(app, c, body, buyer, &k, 200, checkout_render_buy, &it)) != 0 ||
	    (k.key != NULL && !k.active))
		return rc;
	rc = inventory_buy_as(app->inv, sku, qty, buyer, k.active ? &k.ans : NULL, &v);
	*rc_out = rc;
	if (rc != 0 && v.refused == 0)
		v.items[0] = it;
	if (rc == STOCK_ENOENT)
		v.refused = 0, v.items[0] = it;
	return keyed_end(app, c, &k, rc, &v, 200, checkout_render_buy, &it);
}

/* ---- the catalog at run time (Admin, token) ---------------------------------------- */

static int
render_sku(const struct checkout_view *v, struct buf *b, void *arg)
{
	const struct checkout_item *it = arg; /* quantity 1: retired */

	buf_printf(b, "{\"sku\":\"%s\",\"retired\":%s,", it->sku, it->quantity ? "true" : "false");
	handlers_level_json(b, &v->level, NULL);
	buf_append(b, "\n", 1);
	return b->failed ? STOCK_ENOMEM : 0;
}

/* PUT (@create: {"remaining": n}) or DELETE Admin/Stock/{sku}. */
static int
catalog_change(struct app *app, struct mg_connection *c, const struct route_req *r, bool create)
{
	struct checkout_item it = { .quantity = create ? 0 : 1 };
	uint64_t remaining = 0;
	struct json_field f = { .name = "remaining", .kind = JSON_U64, .max = STOCK_COUNT_MAX,
		.u64 = &remaining };
	struct req_body body;
	struct checkout_view v;
	const char *why = NULL;
	struct keyed k;
	int rc;

	if (!inventory_has_catalog(app->inv))
		return http_error(c, 501, "not_supported",
		    "creating and retiring SKUs at run time needs the embedded store in this version");
	snprintf(it.sku, sizeof it.sku, "%s", r->sku);
	if ((rc = handlers_read_body(app, c, &body)) != 0)
		return rc;
	if (create && (json_object_parse(body.data, body.len, &f, 1, &why) != 0 || !f.found)) {
		handlers_body_free(&body);
		return http_error(c, 400, "bad_request", why != NULL ? why :
		    "body must be {\"remaining\": <integer>}");
	}
	if (!create && body.len > 0) {
		handlers_body_free(&body);
		return http_error(c, 400, "bad_request", "DELETE takes no body");
	}
	rc = keyed_begin(app, c, &body, NULL, &k, create ? 201 : 200, render_sku, &it);
	handlers_body_free(&body);
	if (rc != 0 || (k.key != NULL && !k.active))
		return rc;
	rc = create ? inventory_sku_create(app->inv, r->sku, remaining, k.active ? &k.ans : NULL, &v) :
	    inventory_sku_retire(app->inv, r->sku, k.active ? &k.ans : NULL, &v);
	if (rc == STOCK_ENOENT || rc == STOCK_EEXIST) {
		v.refused = 0;
		v.items[0] = it;
	}
	return keyed_end(app, c, &k, rc, &v, create ? 201 : 200, render_sku, &it);
}

int
handle_sku_create(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return catalog_change(app, c, r, true);
}

int
handle_sku_retire(struct app *app, struct mg_connection *c, const struct route_req *r)
{
	return catalog_change(app, c, r, false);
}

/*
 * Admin POST Stock/{sku} with an Idempotency-Key (handlers.c parsed the
 * body; the gate is its business): the change and its answer in one commit.
 */
int
checkout_adjust(struct app *app, struct mg_connection *c, const char *sku, bool absolute,
    uint64_t n, const struct req_body *body)
{
	struct checkout_item it = { .quantity = 0 };
	struct checkout_view v;
	struct keyed k;
	int rc;

	if (!inventory_has_checkout(app->inv))
		return no_checkout(c);
	snprintf(it.sku, sizeof it.sku, "%s", sku);
	if ((rc = keyed_begin(app, c, body, NULL, &k, 200, render_sku, &it)) != 0 ||
	    (k.key != NULL && !k.active))
		return rc;
	rc = inventory_adjust_as(app->inv, sku, absolute, n, k.active ? &k.ans : NULL, &v);
	if (rc == STOCK_ENOENT) {
		v.refused = 0;
		v.items[0] = it;
	}
	return keyed_end(app, c, &k, rc, &v, 200, render_sku, &it);
}
