/*
 * Configuration: defaults, then environment variables, then flags.
 *
 * Every knob has a flag and an environment variable (documented in
 * docs/server.md and in --help). Values are validated here, once, so the rest
 * of the server can trust them: a bad value is a clear message and exit 2.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

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
	O_REPAIR, O_HELP, O_VERSION };

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
		{ "help", no_argument, NULL, O_HELP },
		{ "version", no_argument, NULL, O_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	static const struct { const char *env; int opt; } envs[] = {
		{ "STOCK_LISTEN", O_LISTEN }, { "STOCK_DATA_DIR", O_DATA },
		{ "STOCK_THREADS", O_THREADS }, { "STOCK_GATE_WAIT_MS", O_GATE },
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
	return 0;
}
