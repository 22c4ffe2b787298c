/*
 * The route table (http/routes.c): method, path, handler and the flags the
 * router checks before a handler runs (ready, admin token).
 */
#ifndef DEMO_HTTP_ROUTES_H
#define DEMO_HTTP_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

#include <stock.h>

#include <civetweb.h>

struct app;

/** routes_count - number of metric route names (the table's, plus "unmatched"). */
size_t routes_count(void);

/** routes_name - the metrics label of route name @i. */
const char *routes_name(size_t i);

/** routes_path - the path (or {sku} prefix) of route @i, NULL past the table. */
const char *routes_path(size_t i, bool *has_sku);

/** routes_is_id - route @i takes a hold id (one path segment, no '/') where others take a SKU. */
bool routes_is_id(size_t i);

/** routes_suffix - what follows the {sku} (or {id}) of route @i: "" or e.g. "/Confirm". */
const char *routes_suffix(size_t i);

/* What routes_match found. */
struct route_match {
	size_t route;                   /* index into the table (routes_count() - 1: none) */
	char sku[STOCK_SKU_MAX + 1];    /* the decoded SKU of a {sku} route */
	size_t sku_len;
};

/**
 * routes_match - route a request from its method and raw (undecoded) path
 * @raw[0..@rawlen). The path is percent-decoded with explicit lengths.
 * Returns 0 (m->route set; m->sku for a {sku} route), 400 (malformed path:
 * bad escape, %00, too long; or, with m->route set, an invalid SKU), 404,
 * or 405 (m->route unmatched). A pure function: the fuzz target checks it.
 */
int routes_match(const char *method, const char *raw, size_t rawlen, struct route_match *m);

/** routes_install - serve every route of the table on @ctx. */
void routes_install(struct app *app, struct mg_context *ctx);

#endif /* DEMO_HTTP_ROUTES_H */
