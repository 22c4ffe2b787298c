/*
 * The route table and the router.
 *
 * One civetweb handler is registered for "/" and dispatches through
 * `routes[]`: exact paths for the seed's OneStock/Util endpoints, prefixes
 * followed by a SKU for ManyStock and Admin/Stock. civetweb runs with
 * decode_url=no, so the router decodes the raw path itself, with explicit
 * lengths: a %00 or a malformed escape is a 400, never a shortened path,
 * and dot segments are not resolved ("/x/../Util/Close" matches nothing).
 * Flags say what must hold before the handler runs: NEED_READY (recovery
 * finished) and NEED_TOKEN (the admin bearer token). Every answer is JSON.
 */
#include <string.h>

#include "common/assert.h"
#include "common/util.h"
#include "http/handlers.h"
#include "http/http.h"
#include "http/routes.h"

enum { NEED_READY = 1, NEED_TOKEN = 2, ADMIN = NEED_READY | NEED_TOKEN, HOLD_ID = 4 };

struct route {
	const char *method;
	const char *path; /* exact, or the prefix of a {sku} route */
	bool sku;         /* the rest of the path is a SKU (or a hold id) ... */
	const char *suffix; /* ... followed by this ("" for none) */
	handler_fn fn;
	int flags;
	int arg;          /* passed to the handler (a catalog_one index; Util/Close: 1) */
	const char *name; /* metrics label */
};

/* /api/v1/@p, labelled @p; a {sku} route: /api/v1/@p/<sku>, labelled @p @label. */
#define API(m, p, fn, flags, arg) { m, "/api/v1/" p, false, "", fn, flags, arg, p }
#define SKU(m, p, label, fn, flags) { m, "/api/v1/" p "/", true, "", fn, flags, 0, p label }
/* /api/v1/@p/<id>@sfx, labelled @p/{id}@sfx: a hold id takes the SKU's place. */
#define ID(m, p, sfx, fn) { m, "/api/v1/" p "/", true, sfx, fn, NEED_READY | HOLD_ID, 0, p "/{id}" sfx }
#define ONE(m, suffix, fn, i) API(m, "OneStock/" suffix, fn, NEED_READY, i)

static const struct route routes[] = {
	ONE("POST", "Db/Buy", handle_one_buy, CATALOG_ONE_DB),
	ONE("POST", "Cache/Atomic/Buy", handle_one_buy, CATALOG_ONE_ATOMIC),
	ONE("POST", "Cache/Signal/Buy", handle_one_buy, CATALOG_ONE_SIGNAL),
	ONE("POST", "Cache/Lock/Buy", handle_one_buy, CATALOG_ONE_LOCK),
	ONE("GET", "Db/Peek", handle_one_peek, CATALOG_ONE_DB),
	ONE("GET", "Cache/Atomic/Peek", handle_one_peek, CATALOG_ONE_ATOMIC),
	ONE("GET", "Cache/Signal/Peek", handle_one_peek, CATALOG_ONE_SIGNAL),
	ONE("GET", "Cache/Lock/Peek", handle_one_peek, CATALOG_ONE_LOCK),
	SKU("POST", "ManyStock/Cache/BuyFastAtomic", "", handle_many_buy, NEED_READY),
	SKU("GET", "ManyStock/Cache/PeekFastAtomic", "", handle_many_peek, NEED_READY),
	API("POST", "Util/Open", handle_gate, ADMIN, 0),
	API("POST", "Util/Close", handle_gate, ADMIN, 1),
	API("POST", "Util/Publish", handle_publish, ADMIN, 0),
	{ "GET", "/health/live", false, "", handle_live, 0, 0, "health/live" },
	{ "GET", "/health/ready", false, "", handle_ready, 0, 0, "health/ready" },
	{ "GET", "/metrics", false, "", handle_metrics, 0, 0, "metrics" },
	API("GET", "Admin/Stock", handle_stock_list, ADMIN, 0),
	SKU("POST", "Admin/Stock", "/{sku}", handle_stock_set, ADMIN),
	SKU("PUT", "Admin/Stock", "/{sku} PUT", handle_sku_create, ADMIN),
	SKU("DELETE", "Admin/Stock", "/{sku} DELETE", handle_sku_retire, ADMIN),
	API("GET", "Admin/Config", handle_config_get, ADMIN, 0),
	API("POST", "Admin/Config", handle_config_set, ADMIN, 0),
	API("POST", "Holds", handle_hold_create, NEED_READY, 0),
	ID("POST", "Holds", "/Confirm", handle_hold_confirm),
	ID("POST", "Holds", "/Cancel", handle_hold_cancel),
	ID("GET", "Holds", "", handle_hold_get),
	API("POST", "Orders", handle_order, NEED_READY, 0),
};
#define NROUTES (sizeof routes / sizeof routes[0])
#define ROUTE_UNMATCHED NROUTES /* metrics slot of 400/404/405 before routing */

size_t
routes_count(void)
{
	return NROUTES + 1;
}

const char *
routes_name(size_t i)
{
	return i < NROUTES ? routes[i].name : "unmatched";
}

const char *
routes_path(size_t i, bool *has_sku)
{
	*has_sku = i < NROUTES && routes[i].sku;
	return i < NROUTES ? routes[i].path : NULL;
}

const char *
routes_suffix(size_t i)
{
	return i < NROUTES ? routes[i].suffix : "";
}

bool
routes_is_id(size_t i)
{
	return i < NROUTES && (routes[i].flags & HOLD_ID);
}

/*
 * Whether @path[0..@plen) is route @r's: exact, or prefix + token + suffix.
 * A hold id is one path segment: with a '/' in it the path is another
 * route's (".../Confirm") or none.
 */
static bool
path_is(const struct route *r, const char *path, size_t plen)
{
	size_t rl = strlen(r->path), sl = strlen(r->suffix);

	if (!r->sku)
		return plen == rl && memcmp(path, r->path, rl) == 0;
	return plen >= rl + sl && memcmp(path, r->path, rl) == 0 &&
	    memcmp(path + plen - sl, r->suffix, sl) == 0 &&
	    (!(r->flags & HOLD_ID) || memchr(path + rl, '/', plen - rl - sl) == NULL);
}

/* The route for (@method, @path[0..@plen)), or NROUTES; *@path_known when only the method differs. */
static size_t
route_find(const char *method, const char *path, size_t plen, bool *path_known)
{
	*path_known = false;
	for (size_t i = 0; i < NROUTES; i++) {
		const struct route *r = &routes[i];

		if (!path_is(r, path, plen))
			continue;
		*path_known = true;
		if (strcmp(method, r->method) == 0)
			return i;
	}
	return NROUTES;
}

int
routes_match(const char *method, const char *raw, size_t rawlen, struct route_match *m)
{
	char path[512];
	bool path_known;
	size_t plen, i;

	m->route = ROUTE_UNMATCHED;
	m->sku[0] = '\0';
	m->sku_len = 0;
	if (util_pct_decode(raw, rawlen, false, path, sizeof path, &plen) != 0)
		return 400;
	i = route_find(method, path, plen, &path_known);
	if (i == NROUTES)
		return path_known ? 405 : 404;
	m->route = i;
	if (routes[i].sku) {
		size_t rl = strlen(routes[i].path), sl = plen - rl - strlen(routes[i].suffix);

		if (!stock_sku_valid(path + rl, sl))
			return 400;
		ASSERT(sl <= STOCK_SKU_MAX);
		memcpy(m->sku, path + rl, sl);
		m->sku[sl] = '\0';
		m->sku_len = sl;
	}
	return 0;
}

static int
dispatch(struct app *app, struct mg_connection *c, size_t *route_out)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *raw = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
	struct route_match m;
	struct route_req req;
	const struct route *r;
	int st = raw == NULL ? 400 : routes_match(ri->request_method, raw, strlen(raw), &m);

	*route_out = raw == NULL ? ROUTE_UNMATCHED : m.route;
	if (http_framing_check(c) != 0) {
		/* Where this body ends is ambiguous: answer, then close, so no
		   byte after it is read as another request. */
		http_close_after(c);
		return http_error(c, 400, "bad_request",
		    "ambiguous framing: repeated Content-Length or Transfer-Encoding, or both");
	}
	switch (st) {
	case 0:
		break;
	case 404:
		return http_error(c, 404, "not_found", "no such route");
	case 405:
		return http_error(c, 405, "method_not_allowed", "wrong method for this path");
	default:
		if (*route_out != ROUTE_UNMATCHED && (routes[*route_out].flags & HOLD_ID))
			return http_error(c, 400, "bad_request", "malformed hold id");
		if (*route_out != ROUTE_UNMATCHED)
			return http_error(c, 400, "bad_sku",
			    "SKU must be 1-64 characters of A-Z a-z 0-9 . _ : -");
		return http_error(c, 400, "bad_request", "malformed request path");
	}
	r = &routes[m.route];
	req.sku = r->sku ? m.sku : NULL;
	req.arg = r->arg;
	if ((r->flags & NEED_READY) && !stock_latch_is_set(&app->ready))
		return http_error(c, 503, "not_ready", "recovery in progress");
	if ((r->flags & NEED_TOKEN) && !http_token_ok(app->token, c))
		return http_error(c, 401, "unauthorized", "missing or wrong bearer token");
	return r->fn(app, c, &req);
}

static int
handle(struct mg_connection *c, void *arg)
{
	struct app *app = arg;
	uint64_t t0 = stock_now_ns();
	size_t route;
	int status = dispatch(app, c, &route);

	metrics_observe(&app->metrics, route, status, (stock_now_ns() - t0) / 1000);
	return status;
}

/*
 * Authorization is the routes' own (NEED_TOKEN above). Without a handler of
 * its own civetweb checks a passwords file for every request instead: a
 * stat of "<document root>/.htpasswd", here "/.htpasswd" - a file system
 * call per request, and a file that, if someone created it, would put
 * digest authentication in front of every route.
 */
static int
authorize_all(struct mg_connection *c, void *arg)
{
	(void)c;
	(void)arg;
	return 1;
}

void
routes_install(struct app *app, struct mg_context *ctx)
{
	mg_set_auth_handler(ctx, "/", authorize_all, NULL);
	mg_set_request_handler(ctx, "/", handle, app);
}
