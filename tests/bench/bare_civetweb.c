/*
 * The reference for `make bench-http`: a bare civetweb server whose one
 * handler does the same floor-checked atomic decrement as Cache/Atomic/Buy,
 * without libstock, routing, parsing, metrics or journaling, and answers a
 * JSON body of similar size in one write (same civetweb options as the demo
 * server). What the demo server costs is its ratio to this. It links the
 * demo server's thread-scaling fixes (demo-server/http/threads.c), so that
 * with thousands of workers (make bench-crowd's ceiling rows) it measures
 * civetweb's thread-per-connection model, not a slow start-up.
 *
 *   bare_civetweb PORT THREADS [WORKER_NICE]
 */
#include <civetweb.h>
#include <ck_pr.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http/threads.h"

static uint64_t remaining = UINT64_MAX / 2;
static volatile sig_atomic_t stop;

static int
buy(struct mg_connection *c, void *arg)
{
	char resp[256];
	uint64_t cur = ck_pr_load_64(&remaining);
	int n, status = 200;

	(void)arg;
	do {
		if (cur < 1) {
			status = 409;
			break;
		}
	} while (!ck_pr_cas_64_value(&remaining, cur, cur - 1, &cur));
	char body[128];
	int b = snprintf(body, sizeof body,
	    "{\"ok\":true,\"sku\":\"bare\",\"quantity\":1,\"remaining\":%llu,\"sold\":0,\"version\":0}\n",
	    (unsigned long long)(cur - 1));
	n = snprintf(resp, sizeof resp,
	    "HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
	    "Cache-Control: no-store\r\n\r\n%s",
	    status, b, body);
	mg_write(c, resp, (size_t)n);
	return status;
}

static int worker_nice;

static void *
init_thread(const struct mg_context *ctx, int type)
{
	(void)ctx;
	if (type == 1 && worker_nice != 0) /* 1: a worker */
		(void)threads_nice_self(worker_nice);
	return NULL;
}

/* As the server (routes.c): no per-request passwords-file lookup. */
static int
authorize_all(struct mg_connection *c, void *arg)
{
	(void)c;
	(void)arg;
	return 1;
}

static void
on_signal(int s)
{
	(void)s;
	stop = 1;
}

int
main(int argc, char **argv)
{
	char ports[64];
	struct mg_context *ctx;

	struct mg_callbacks cb = { .init_thread = init_thread };

	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s PORT THREADS [WORKER_NICE]\n", argv[0]);
		return 2;
	}
	snprintf(ports, sizeof ports, "127.0.0.1:%s", argv[1]);
	const char *opts[] = { "listening_ports", ports, "num_threads", argv[2],
		"enable_keep_alive", "yes", "keep_alive_timeout_ms", "5000",
		"request_timeout_ms", "10000", "tcp_nodelay", "1", NULL };
	worker_nice = argc == 4 ? atoi(argv[3]) : 0;
	signal(SIGPIPE, SIG_IGN); /* before the workers: threads.c then skips their sigaction */
	(void)threads_futex_hash(strtoull(argv[2], NULL, 10));
	mg_init_library(0);
	if ((ctx = mg_start(&cb, NULL, opts)) == NULL) {
		fprintf(stderr, "bare_civetweb: cannot listen on %s\n", ports);
		return 1;
	}
	mg_set_auth_handler(ctx, "/", authorize_all, NULL);
	mg_set_request_handler(ctx, "/buy", buy, NULL);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	fprintf(stderr, "bare_civetweb: listening on %s\n", ports);
	while (!stop)
		usleep(100000);
	mg_stop(ctx);
	return 0;
}
