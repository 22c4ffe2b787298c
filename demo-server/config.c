/*
 * Configuration: defaults, then environment variables, then flags.
 *
 * Every knob has a flag and an environment variable (documented in
 * docs/server.md and in --help). Values are validated here, once, so the rest
 * of the server can trust them: a bad value is a clear message and exit 2.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"

void
app_config_usage(FILE *out, const char *argv0)
{
	fprintf(out,
	    "usage: %s [options]\n"
	    "  --listen HOST:PORT    address to serve on (STOCK_LISTEN, default 127.0.0.1:5059)\n"
	    "  --data-dir DIR        embedded store directory (STOCK_DATA_DIR, default ./data)\n"
	    "  --threads N           HTTP worker threads (STOCK_THREADS, default 64). civetweb\n"
	    "                        serves one keep-alive connection per thread: keep N at\n"
	    "                        least the number of concurrent keep-alive clients\n"
	    "  --gate-wait-ms MS     how long buyers wait while the gate is closed before 503\n"
	    "                        (STOCK_GATE_WAIT_MS, default 2000)\n"
	    "  --max-body BYTES      largest request body (default 4096; more: 413)\n"
	    "  --max-quantity N      largest quantity per buy (default 1000)\n"
	    "  --db-inflight N       durable buys in flight before 503 (default 4096)\n"
	    "  --initial-stock N     stock of each catalog item seeded on first start (default 15000)\n"
	    "  --repair              start even if the journal has a corrupt middle (skips it)\n"
	    "Several instances (docs/server.md):\n"
	    "  --mongo URI           MongoDB store instead of the embedded one (STOCK_MONGO_URI)\n"
	    "  --mongo-db NAME       database (default SuperStockStore)\n"
	    "  --mongo-one-collection NAME   the ticket's collection (default OneStock)\n"
	    "  --mongo-many-collection NAME  the products' collection (default ManyStock)\n"
	    "  --mongo-timeout-ms MS bound on every MongoDB round trip (default 2000)\n"
	    "  --redis URL           publish/subscribe stock events (STOCK_REDIS_URL), redis://host:port\n"
	    "  --one-channel NAME    (default OneStockUpdateEvent)\n"
	    "  --many-channel NAME   (default MultiStockUpdateEvent)\n"
	    "  --host-id ID          this instance's name (STOCK_HOST_ID, default: hostname)\n"
	    "  --lease-block N       units per lease grant (1000; under load about 1 s of sales)\n"
	    "  --lease-ms MS         a lease not renewed for MS may be reclaimed (10000)\n"
	    "  --record-ms MS        sales are recorded in MongoDB at least this often (100)\n"
	    "  --poll-ms MS          every document is re-read this often (1000)\n"
	    "  --help, --version\n"
	    "Environment: STOCK_ADMIN_TOKEN (admin/Util bearer token; default: generated\n"
	    "into DATA_DIR/admin.token on first start).\n",
	    argv0);
}

static int
parse_u64(const char *name, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
		goto bad;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		goto bad;
	*out = v;
	return 0;
bad:
	fprintf(stderr, "invalid %s '%s': expected an integer in [%llu, %llu]\n", name,
	    s ? s : "", (unsigned long long)lo, (unsigned long long)hi);
	return -1;
}

static int
set_str(char *dst, size_t cap, const char *name, const char *v)
{
	if (v == NULL || *v == '\0' || strlen(v) >= cap) {
		fprintf(stderr, "invalid %s: empty or longer than %zu bytes\n", name, cap - 1);
		return -1;
	}
	memcpy(dst, v, strlen(v) + 1);
	return 0;
}

enum { O_LISTEN = 256, O_DATA, O_THREADS, O_GATE, O_BODY, O_QTY, O_INFLIGHT, O_INITIAL,
	O_REPAIR, O_HELP, O_VERSION, O_MONGO, O_MONGO_DB, O_MONGO_ONE, O_MONGO_MANY, O_MONGO_TMO,
	O_REDIS, O_ONE_CH, O_MANY_CH, O_HOST, O_LEASE_BLOCK, O_LEASE_MS, O_RECORD_MS, O_POLL_MS };

/* Host ids become MongoDB field names and Redis payload: keep them plain. */
static int
set_host_id(struct app_config *cfg, const char *v)
{
	size_t n = v ? strlen(v) : 0;

	if (n == 0 || n > STORE_HOST_MAX || strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_-") != n) {
		fprintf(stderr, "invalid host id '%s': 1-%d characters of A-Z a-z 0-9 _ -\n",
		    v ? v : "", STORE_HOST_MAX);
		return -1;
	}
	memcpy(cfg->host_id, v, n + 1);
	return 0;
}

static int
set_ms(const char *name, const char *v, uint64_t lo, uint64_t hi, unsigned *out)
{
	uint64_t u;

	if (parse_u64(name, v, lo, hi, &u))
		return -1;
	*out = (unsigned)u;
	return 0;
}

static int
apply(struct app_config *cfg, int opt, const char *v)
{
	uint64_t u;

	switch (opt) {
	case O_LISTEN: return set_str(cfg->listen, sizeof cfg->listen, "--listen", v);
	case O_DATA: return set_str(cfg->data_dir, sizeof cfg->data_dir, "--data-dir", v);
	case O_THREADS:
		if (parse_u64("--threads", v, 1, 4096, &u)) return -1;
		cfg->threads = (unsigned)u; return 0;
	case O_GATE:
		if (parse_u64("--gate-wait-ms", v, 0, 600000, &u)) return -1;
		cfg->gate_wait_ms = (unsigned)u; return 0;
	case O_BODY:
		if (parse_u64("--max-body", v, 64, 1 << 20, &u)) return -1;
		cfg->max_body = (unsigned)u; return 0;
	case O_QTY:
		return parse_u64("--max-quantity", v, 1, STOCK_COUNT_MAX, &cfg->max_quantity);
	case O_INFLIGHT:
		if (parse_u64("--db-inflight", v, 1, 1u << 20, &u)) return -1;
		cfg->db_inflight = (unsigned)u; return 0;
	case O_INITIAL:
		return parse_u64("--initial-stock", v, 0, STOCK_COUNT_MAX, &cfg->initial_stock);
	case O_REPAIR: cfg->repair = true; return 0;
	case O_MONGO: return set_str(cfg->mongo_uri, sizeof cfg->mongo_uri, "--mongo", v);
	case O_MONGO_DB: return set_str(cfg->mongo_db, sizeof cfg->mongo_db, "--mongo-db", v);
	case O_MONGO_ONE: return set_str(cfg->mongo_one, sizeof cfg->mongo_one, "--mongo-one-collection", v);
	case O_MONGO_MANY: return set_str(cfg->mongo_many, sizeof cfg->mongo_many, "--mongo-many-collection", v);
	case O_MONGO_TMO: return set_ms("--mongo-timeout-ms", v, 50, 600000, &cfg->mongo_timeout_ms);
	case O_REDIS: return set_str(cfg->redis_url, sizeof cfg->redis_url, "--redis", v);
	case O_ONE_CH: return set_str(cfg->one_channel, sizeof cfg->one_channel, "--one-channel", v);
	case O_MANY_CH: return set_str(cfg->many_channel, sizeof cfg->many_channel, "--many-channel", v);
	case O_HOST: return set_host_id(cfg, v);
	case O_LEASE_BLOCK: return parse_u64("--lease-block", v, 1, STOCK_COUNT_MAX, &cfg->lease_block);
	case O_LEASE_MS: return set_ms("--lease-ms", v, 100, 3600000, &cfg->lease_ms);
	case O_RECORD_MS: return set_ms("--record-ms", v, 1, 60000, &cfg->record_ms);
	case O_POLL_MS: return set_ms("--poll-ms", v, 10, 3600000, &cfg->poll_ms);
	}
	return -1;
}

int
app_config_parse(struct app_config *cfg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "data-dir", required_argument, NULL, O_DATA },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "gate-wait-ms", required_argument, NULL, O_GATE },
		{ "max-body", required_argument, NULL, O_BODY },
		{ "max-quantity", required_argument, NULL, O_QTY },
		{ "db-inflight", required_argument, NULL, O_INFLIGHT },
		{ "initial-stock", required_argument, NULL, O_INITIAL },
		{ "repair", no_argument, NULL, O_REPAIR },
		{ "mongo", required_argument, NULL, O_MONGO },
		{ "mongo-db", required_argument, NULL, O_MONGO_DB },
		{ "mongo-one-collection", required_argument, NULL, O_MONGO_ONE },
		{ "mongo-many-collection", required_argument, NULL, O_MONGO_MANY },
		{ "mongo-timeout-ms", required_argument, NULL, O_MONGO_TMO },
		{ "redis", required_argument, NULL, O_REDIS },
		{ "one-channel", required_argument, NULL, O_ONE_CH },
		{ "many-channel", required_argument, NULL, O_MANY_CH },
		{ "host-id", required_argument, NULL, O_HOST },
		{ "lease-block", required_argument, NULL, O_LEASE_BLOCK },
		{ "lease-ms", required_argument, NULL, O_LEASE_MS },
		{ "record-ms", required_argument, NULL, O_RECORD_MS },
		{ "poll-ms", required_argument, NULL, O_POLL_MS },
		{ "help", no_argument, NULL, O_HELP },
		{ "version", no_argument, NULL, O_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	static const struct { const char *env; int opt; } envs[] = {
		{ "STOCK_LISTEN", O_LISTEN }, { "STOCK_DATA_DIR", O_DATA },
		{ "STOCK_THREADS", O_THREADS }, { "STOCK_GATE_WAIT_MS", O_GATE },
		{ "STOCK_MONGO_URI", O_MONGO }, { "STOCK_REDIS_URL", O_REDIS },
		{ "STOCK_HOST_ID", O_HOST },
	};
	int opt;

	memset(cfg, 0, sizeof *cfg);
	strcpy(cfg->listen, "127.0.0.1:5059");
	strcpy(cfg->data_dir, "./data");
	cfg->threads = 64;
	cfg->gate_wait_ms = 2000;
	cfg->max_body = 4096;
	cfg->max_quantity = 1000;
	cfg->db_inflight = 4096;
	cfg->initial_stock = 15000;
	strcpy(cfg->mongo_db, "SuperStockStore");
	strcpy(cfg->mongo_one, "OneStock");
	strcpy(cfg->mongo_many, "ManyStock");
	cfg->mongo_timeout_ms = 2000;
	strcpy(cfg->one_channel, "OneStockUpdateEvent");
	strcpy(cfg->many_channel, "MultiStockUpdateEvent");
	cfg->lease_block = 1000;
	cfg->lease_ms = 10000;
	cfg->record_ms = 100;
	cfg->poll_ms = 1000;
	{
		/* Default host id: the hostname, with anything outside [A-Za-z0-9_-] as '-'. */
		char hn[256] = "";
		gethostname(hn, sizeof hn - 1);
		for (char *p = hn; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
				*p = '-';
		snprintf(cfg->host_id, sizeof cfg->host_id, "%.64s", hn[0] ? hn : "demo-server");
	}

	for (size_t i = 0; i < sizeof envs / sizeof envs[0]; i++) {
		const char *v = getenv(envs[i].env);
		if (v != NULL && apply(cfg, envs[i].opt, v) != 0) {
			fprintf(stderr, "(from %s)\n", envs[i].env);
			return -1;
		}
	}
	optind = 1;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (opt == O_HELP) {
			app_config_usage(stdout, argv[0]);
			return 1;
		}
		if (opt == O_VERSION) {
			printf("demo-server %s (libstock %s)\n", APP_VERSION, stock_library_version());
			return 1;
		}
		if (opt == '?' || apply(cfg, opt, optarg) != 0) {
			app_config_usage(stderr, argv[0]);
			return -1;
		}
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
