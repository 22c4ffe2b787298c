/*
 * The HTTP server (http/server.c): civetweb configured for the crowd.
 */
#ifndef DEMO_HTTP_SERVER_H
#define DEMO_HTTP_SERVER_H

#include <stdint.h>

#include <civetweb.h>

struct app;
struct app_config;

/**
 * http_size - the number of HTTP workers (--threads, or with 0 sized from
 * the process's limits: http/server.c), written to @cfg->threads. The
 * first call decides; http_start serves with it.
 */
uint64_t http_size(struct app_config *cfg);

/**
 * http_start - start civetweb on app->cfg.listen with the route table.
 * Returns the context (mg_stop it, then mg_exit_library) or NULL (logged).
 */
struct mg_context *http_start(struct app *app);

#endif /* DEMO_HTTP_SERVER_H */
