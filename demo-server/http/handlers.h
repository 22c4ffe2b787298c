/*
 * The handlers behind the route table (http/handlers.c). Each answers one
 * request completely and returns the status it sent. They reach the stock
 * only through the inventory seam.
 */
#ifndef DEMO_HTTP_HANDLERS_H
#define DEMO_HTTP_HANDLERS_H

#include <civetweb.h>

#include "app.h"

/* What the router learnt about a request. */
struct route_req {
	const char *sku; /* decoded, validated SKU of a {sku} route; else NULL */
	int arg;         /* the route's argument (a catalog_one index; Util/Close: 1) */
};

typedef int (*handler_fn)(struct app *app, struct mg_connection *c, const struct route_req *r);

/* A request body read once (handlers_read_body), at most --max-body bytes. */
struct req_body {
	char *data; /* small, or malloc'd when --max-body is larger */
	size_t len;
	char small[4097];
};

/** handlers_read_body - read the body: 0, or the status of the error sent (nothing to free). */
int handlers_read_body(struct app *app, struct mg_connection *c, struct req_body *b);

/** handlers_body_free - free what handlers_read_body allocated. */
void handlers_body_free(struct req_body *b);

/** handlers_reply_err - the documented HTTP answer of a libstock code; returns the status. */
int handlers_reply_err(struct mg_connection *c, int rc);

/** handlers_level_json - the level fields of a stock object, then "}" (@one_id: OneStock's {id, stock}). */
void handlers_level_json(struct buf *b, const struct stock_level *l, const char *one_id);

/* ---- http/checkout.c ---- */

/** checkout_render_buy - the body of a successful buy of @arg (a struct checkout_item). */
int checkout_render_buy(const struct checkout_view *v, struct buf *b, void *arg);

/**
 * checkout_buy - a buy that carries X-Buyer-Id or Idempotency-Key goes
 * through checkout (*@handled true, *@rc the inventory's code, returns the
 * status sent); otherwise *@handled is false and nothing was sent.
 */
int checkout_buy(struct app *app, struct mg_connection *c, const char *sku, uint64_t qty,
    const struct req_body *body, bool *handled, int *rc);

int handle_hold_create(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_hold_get(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_hold_confirm(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_hold_cancel(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_order(struct app *app, struct mg_connection *c, const struct route_req *r);
/** checkout_adjust - Admin POST Stock/{sku} carrying an Idempotency-Key. */
int checkout_adjust(struct app *app, struct mg_connection *c, const char *sku, bool absolute,
    uint64_t n, const struct req_body *body);

int handle_sku_create(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_sku_retire(struct app *app, struct mg_connection *c, const struct route_req *r);

int handle_one_buy(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_one_peek(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_many_buy(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_many_peek(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_live(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_ready(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_metrics(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_gate(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_publish(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_stock_list(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_stock_set(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_config_get(struct app *app, struct mg_connection *c, const struct route_req *r);
int handle_config_set(struct app *app, struct mg_connection *c, const struct route_req *r);

#endif /* DEMO_HTTP_HANDLERS_H */
