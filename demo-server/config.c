/*
 * Configuration (config.h): the knob table and the one parser that reads it
 * for defaults, the environment and flags alike, so a knob cannot have a
 * flag without an environment variable, a default in two places, or bounds
 * that differ between the two ways of setting it. --help and
 * --help-markdown (the table in docs/server.md) print the same table.
 */
#include <ctype.h>
#include <getopt.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stock.h>

#include "config.h"

enum kind { K_U64, K_STR, K_BOOL, K_HOST };

struct knob {
	const char *flag;  /* without the leading "--" */
	const char *env;
	enum kind kind;
	const char *def;   /* default as text (NULL: empty / false); "@host" = the hostname */
	uint64_t min, max; /* K_U64 bounds; K_STR/K_HOST: max = capacity */
	size_t off;
	const char *help;
};

#define U64(f, e, d, lo, hi, field, h) \
	{ f, e, K_U64, d, lo, hi, offsetof(struct app_config, field), h }
#define STR(f, e, d, field, h) \
	{ f, e, K_STR, d, 0, sizeof(((struct app_config *)0)->field), offsetof(struct app_config, field), h }

static const struct knob knobs[] = {
	STR("listen", "STOCK_LISTEN", "127.0.0.1:5059", listen, "address to serve on (host:port)"),
	STR("data-dir", "STOCK_DATA_DIR", "./data", data_dir,
	    "embedded journal and snapshot; the sales ledger in cluster mode"),
	U64("threads", "STOCK_THREADS", "0", 0, 65536, threads,
	    "HTTP worker threads, one per open connection (0: sized from the fd, pid and memory limits, at most 16384)"),
	U64("request-timeout-ms", "STOCK_REQUEST_TIMEOUT_MS", "5000", 100, 600000, request_timeout_ms,
	    "a connection's first request headers (and any body) must arrive within this"),
	U64("idle-timeout-ms", "STOCK_IDLE_TIMEOUT_MS", "5000", 100, 600000, idle_timeout_ms,
	    "a keep-alive connection waiting this long for its next request is closed"),
	U64("handover-ms", "STOCK_HANDOVER_MS", "1000", 0, 600000, handover_ms,
	    "when every worker holds a connection, one older than this is answered Connection: close (0: never)"),
	U64("worker-nice", "STOCK_WORKER_NICE", "10", 0, 19, worker_nice,
	    "nice of the HTTP workers: the accepting thread and the store's threads keep priority over them"),
	U64("defer-accept-s", "STOCK_DEFER_ACCEPT_S", "5", 0, 600, defer_accept_s,
	    "TCP_DEFER_ACCEPT: a connection reaches a worker only once it has sent data (0: off)"),
	U64("gate-wait-ms", "STOCK_GATE_WAIT_MS", "2000", 0, 600000, gate_wait_ms,
	    "how long a buyer waits at a closed gate before 503"),
	U64("max-body", "STOCK_MAX_BODY", "4096", 64, 1 << 20, max_body,
	    "largest request body in bytes (more: 413)"),
	U64("max-quantity", "STOCK_MAX_QUANTITY", "1000", 1, STOCK_COUNT_MAX, max_quantity,
	    "largest quantity of one buy"),
	U64("db-inflight", "STOCK_DB_INFLIGHT", "0", 0, 1 << 20, db_inflight,
	    "durable buys in flight before 503 with Retry-After (bulkhead; 0: half the workers)"),
	U64("initial-stock", "STOCK_INITIAL_STOCK", "15000", 0, STOCK_COUNT_MAX, initial_stock,
	    "stock of each catalog item seeded on first start"),
	{ "repair", "STOCK_REPAIR", K_BOOL, NULL, 0, 1, offsetof(struct app_config, repair),
	    "start even if the journal has a corrupt middle (skips it)" },
	STR("mongo", "STOCK_MONGO_URI", NULL, mongo_uri,
	    "MongoDB URI: cluster mode (MongoDB is the authority) instead of the embedded journal"),
	STR("mongo-db", "STOCK_MONGO_DB", "SuperStockStore", mongo_db, "database"),
	STR("mongo-one-collection", "STOCK_MONGO_ONE_COLLECTION", "OneStock", mongo_one,
	    "the ticket's collection"),
	STR("mongo-many-collection", "STOCK_MONGO_MANY_COLLECTION", "ManyStock", mongo_many,
	    "the products' collection"),
	U64("mongo-timeout-ms", "STOCK_MONGO_TIMEOUT_MS", "2000", 50, 600000, mongo_timeout_ms,
	    "bound on every MongoDB round trip"),
	STR("redis", "STOCK_REDIS_URL", NULL, redis_url,
	    "redis://host:port: publish and subscribe stock events (needs --mongo)"),
	STR("one-channel", "STOCK_ONE_CHANNEL", "OneStockUpdateEvent", one_channel,
	    "channel of OneStock events"),
	STR("many-channel", "STOCK_MANY_CHANNEL", "MultiStockUpdateEvent", many_channel,
	    "channel of ManyStock events"),
	{ "host-id", "STOCK_HOST_ID", K_HOST, "@host", 0, HOST_ID_MAX + 1,
	    offsetof(struct app_config, host_id),
	    "this instance's name in leases and events ([A-Za-z0-9_-]; default: the hostname)" },
	U64("lease-block", "STOCK_LEASE_BLOCK", "1000", 1, STOCK_COUNT_MAX, lease_block,
	    "smallest lease grant in units (grants grow to about 1 s of sales)"),
	U64("lease-ms", "STOCK_LEASE_MS", "10000", 100, 3600000, lease_ms,
	    "a lease not renewed for this long may be reclaimed by another instance"),
	U64("record-ms", "STOCK_RECORD_MS", "100", 1, 60000, record_ms,
	    "sales are recorded in MongoDB at least this often"),
	U64("poll-ms", "STOCK_POLL_MS", "1000", 10, 3600000, poll_ms,
	    "every document is re-read this often (catches missed events)"),
	U64("lease-waiters", "STOCK_LEASE_WAITERS", "0", 0, 1 << 20, lease_waiters,
	    "buyers of one SKU that may wait for its lease refill; more get 503 with Retry-After (0: a quarter of the workers)"),
	U64("hold-ttl-ms", "STOCK_HOLD_TTL_MS", "30000", 1, 86400000, hold_ttl_ms,
	    "life of a hold whose request gives no ttl_ms"),
	U64("max-hold-ms", "STOCK_MAX_HOLD_MS", "600000", 1, 86400000, max_hold_ms,
	    "longest ttl_ms a hold may ask for (more: 400)"),
	U64("max-per-buyer", "STOCK_MAX_PER_BUYER", "0", 0, STOCK_COUNT_MAX, max_per_buyer,
	    "units of one SKU one X-Buyer-Id may hold plus buy (0: no limit)"),
	U64("idempotency-ttl-s", "STOCK_IDEMPOTENCY_TTL_S", "86400", 1, 31536000, idem_ttl_s,
	    "Idempotency-Key answers are kept this long"),
	U64("hold-retain-s", "STOCK_HOLD_RETAIN_S", "3600", 1, 31536000, hold_retain_s,
	    "finished holds (confirmed, cancelled, expired) stay readable this long, then are forgotten"),
	STR("payment-url", "STOCK_PAYMENT_URL", NULL, payment_url,
	    "http://host:port/path of the payment service Confirm charges first (empty: no payment)"),
	U64("payment-timeout-ms", "STOCK_PAYMENT_TIMEOUT_MS", "2000", 10, 600000, payment_timeout_ms,
	    "bound on one payment call (connect, send, answer)"),
};
#define NKNOBS (sizeof knobs / sizeof knobs[0])

enum { OPT_HELP = 1000, OPT_VERSION, OPT_MARKDOWN };

static int
bad(const struct knob *k, const char *v, const char *from)
{
	if (k->kind == K_U64)
		fprintf(stderr, "invalid %s '%s' (%s): expected an integer in [%llu, %llu]\n", k->flag,
		    v, from, (unsigned long long)k->min, (unsigned long long)k->max);
	else if (k->kind == K_HOST)
		fprintf(stderr, "invalid %s '%s' (%s): 1-%d characters of A-Z a-z 0-9 _ -\n", k->flag,
		    v, from, HOST_ID_MAX);
	else
		fprintf(stderr, "invalid %s (%s): empty or longer than %llu bytes\n", k->flag, from,
		    (unsigned long long)k->max - 1);
	return -1;
}

/* A decimal integer: digits only, no sign, no overflow (argv and environ are C strings). */
static int
parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		unsigned d = (unsigned)(unsigned char)*s - '0';
		if (d > 9 || v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static int
apply(struct app_config *cfg, const struct knob *k, const char *v, const char *from)
{
	char *field = (char *)cfg + k->off;
	size_t n = strlen(v);
	uint64_t u;

	switch (k->kind) {
	case K_U64:
		if (parse_u64(v, &u) != 0 || u < k->min || u > k->max)
			return bad(k, v, from);
		memcpy(field, &u, sizeof u);
		return 0;
	case K_BOOL:
		if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0)
			*(bool *)field = true;
		else if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "no") == 0)
			*(bool *)field = false;
		else {
			fprintf(stderr, "invalid %s '%s' (%s): expected 1/0, true/false or yes/no\n",
			    k->flag, v, from);
			return -1;
		}
		return 0;
	case K_HOST:
	case K_STR:
		if (k->kind == K_HOST ? !host_id_valid(v, n) : n == 0 || n >= k->max)
			return bad(k, v, from);
		memcpy(field, v, n + 1);
		return 0;
	}
	return -1;
}

/* The hostname with anything outside [A-Za-z0-9_-] as '-', at most HOST_ID_MAX. */
static void
default_host(char *out)
{
	char hn[256] = "";

	gethostname(hn, sizeof hn - 1);
	for (char *p = hn; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
			*p = '-';
	if (hn[0] == '\0')
		strcpy(hn, "demo-server");
	hn[HOST_ID_MAX] = '\0'; /* at most HOST_ID_MAX bytes */
	memcpy(out, hn, strlen(hn) + 1);
}

static void
usage(FILE *out, const char *argv0)
{
	fprintf(out, "usage: %s [options]   (every option also reads its environment variable)\n",
	    argv0);
	for (size_t i = 0; i < NKNOBS; i++) {
		const struct knob *k = &knobs[i];
		char left[64];

		snprintf(left, sizeof left, "--%s%s", k->flag, k->kind == K_BOOL ? "" : " V");
		fprintf(out, "  %-26s %s (%s", left, k->help, k->env);
		if (k->def != NULL)
			fprintf(out, ", default %s", strcmp(k->def, "@host") == 0 ? "the hostname" : k->def);
		fprintf(out, ")\n");
	}
	fprintf(out, "  %-26s print this, or the version\n"
		     "  %-26s the option table in Markdown (docs/server.md)\n"
		     "STOCK_ADMIN_TOKEN: the admin bearer token (default: generated into DATA_DIR/admin.token).\n",
	    "--help, --version", "--help-markdown");
}

static void
markdown(FILE *out)
{
	fprintf(out, "| flag | environment | default | range | meaning |\n|---|---|---|---|---|\n");
	for (size_t i = 0; i < NKNOBS; i++) {
		const struct knob *k = &knobs[i];

		fprintf(out, "| `--%s` | `%s` | %s | ", k->flag, k->env,
		    k->def == NULL ? "(off)" : strcmp(k->def, "@host") == 0 ? "hostname" : k->def);
		if (k->kind == K_U64)
			fprintf(out, "%llu – %llu", (unsigned long long)k->min, (unsigned long long)k->max);
		else if (k->kind == K_BOOL)
			fprintf(out, "flag");
		else
			fprintf(out, "≤ %llu bytes", (unsigned long long)k->max - 1);
		fprintf(out, " | %s |\n", k->help);
	}
}

int
config_parse(struct app_config *cfg, int argc, char **argv)
{
	struct option opts[NKNOBS + 4];
	int opt;

	memset(cfg, 0, sizeof *cfg);
	for (size_t i = 0; i < NKNOBS; i++) {
		const struct knob *k = &knobs[i];
		const char *env = getenv(k->env);

		if (k->def != NULL && strcmp(k->def, "@host") == 0)
			default_host((char *)cfg + k->off);
		else if (k->def != NULL && apply(cfg, k, k->def, "default") != 0)
			return -1;
		if (env != NULL && apply(cfg, k, env, k->env) != 0)
			return -1;
		opts[i] = (struct option){ k->flag, k->kind == K_BOOL ? no_argument : required_argument,
			NULL, (int)i };
	}
	opts[NKNOBS] = (struct option){ "help", no_argument, NULL, OPT_HELP };
	opts[NKNOBS + 1] = (struct option){ "version", no_argument, NULL, OPT_VERSION };
	opts[NKNOBS + 2] = (struct option){ "help-markdown", no_argument, NULL, OPT_MARKDOWN };
	opts[NKNOBS + 3] = (struct option){ NULL, 0, NULL, 0 };
	optind = 1;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (opt == OPT_HELP) {
			usage(stdout, argv[0]);
			return 1;
		}
		if (opt == OPT_VERSION) {
			printf("demo-server %s (libstock %s)\n", APP_VERSION, stock_library_version());
			return 1;
		}
		if (opt == OPT_MARKDOWN) {
			markdown(stdout);
			return 1;
		}
		if (opt < 0 || (size_t)opt >= NKNOBS) {
			usage(stderr, argv[0]);
			return -1;
		}
		if (apply(cfg, &knobs[opt], knobs[opt].kind == K_BOOL ? "1" : optarg, "flag") != 0)
			return -1;
	}
	if (optind != argc) {
		fprintf(stderr, "unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (cfg->redis_url[0] != '\0' && cfg->mongo_uri[0] == '\0') {
		fprintf(stderr, "--redis needs --mongo: instances share stock through MongoDB\n");
		return -1;
	}
	return 0;
}

static uint64_t
share(uint64_t workers, uint64_t div)
{
	uint64_t n = workers / div;

	if (n < 4)
		n = workers < 4 ? workers : 4;
	return n > 0 ? n : 1;
}

void
config_size(struct app_config *cfg, uint64_t workers)
{
	if (cfg->db_inflight == 0)
		cfg->db_inflight = share(workers, 2);
	if (cfg->lease_waiters == 0)
		cfg->lease_waiters = share(workers, 4);
}
