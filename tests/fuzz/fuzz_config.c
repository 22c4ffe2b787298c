/*
 * libFuzzer target: flags and environment values → struct app_config
 * (demo-server/config.c, config_parse with getopt_long).
 *
 * Input: one byte choosing a STOCK_* environment variable (or none), then
 * NUL-separated strings: with a variable chosen the first is its value (set
 * for this run only), the rest are argv[1..] (argv[0] is "demo-server").
 * config_parse's stdout and stderr go to memory buffers. Properties, beyond
 * "no crash" under ASan + UBSan:
 *   1. It returns -1, 0 or 1 only; -1 has printed why on stderr, 1 (help,
 *      version) has printed on stdout.
 *   2. When 0: every numeric field is within the bounds of the knob table
 *      (the table below, checked at start-up against the one config.c
 *      prints with --help-markdown), every string is NUL-terminated inside
 *      its array and non-empty unless it is off by default (--mongo,
 *      --redis), host_id satisfies host_id_valid, repair is 0 or 1, and
 *      --redis without --mongo was refused.
 *   3. The same argv and environment parsed again give the same result and
 *      the same struct (memcmp).
 *   4. When 0, the struct re-encodes as canonical flags (--knob=value for
 *      every knob, no environment) that parse to the same values (strings
 *      compared up to their NUL).
 * getopt_long keeps state between calls (the position inside a cluster of
 * short options, the permutation bounds) and config_parse resets it with
 * optind = 1; glibc re-initializes everything only for optind = 0, so before
 * each call this target runs getopt_long once with optind = 0 on an argv of
 * its own, and no state can leak from one input (or one call) to the next.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stock.h>

#include "config.h"

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_config: property failed: %s (line %d)\n", #c,     \
			    __LINE__);                                                        \
			abort();                                                              \
		}                                                                             \
	} while (0)

enum kind { K_U64, K_STR, K_BOOL, K_HOST };

struct knob {
	const char *flag, *env;
	enum kind kind;
	size_t off, size;
	uint64_t min, max;
	bool may_be_empty;
};

#define F(field) offsetof(struct app_config, field), sizeof(((struct app_config *)0)->field)
#define U(flag, env, field, lo, hi) { flag, env, K_U64, F(field), lo, hi, false }
#define S(flag, env, field, empty) { flag, env, K_STR, F(field), 0, 0, empty }

/* The knob table as docs/server.md "Flags and environment" documents it. */
static const struct knob knobs[] = {
	S("listen", "STOCK_LISTEN", listen, false),
	S("data-dir", "STOCK_DATA_DIR", data_dir, false),
	U("threads", "STOCK_THREADS", threads, 0, 65536),
	U("request-timeout-ms", "STOCK_REQUEST_TIMEOUT_MS", request_timeout_ms, 100, 600000),
	U("idle-timeout-ms", "STOCK_IDLE_TIMEOUT_MS", idle_timeout_ms, 100, 600000),
	U("handover-ms", "STOCK_HANDOVER_MS", handover_ms, 0, 600000),
	U("worker-nice", "STOCK_WORKER_NICE", worker_nice, 0, 19),
	U("defer-accept-s", "STOCK_DEFER_ACCEPT_S", defer_accept_s, 0, 600),
	U("gate-wait-ms", "STOCK_GATE_WAIT_MS", gate_wait_ms, 0, 600000),
	U("max-body", "STOCK_MAX_BODY", max_body, 64, 1 << 20),
	U("max-quantity", "STOCK_MAX_QUANTITY", max_quantity, 1, STOCK_COUNT_MAX),
	U("db-inflight", "STOCK_DB_INFLIGHT", db_inflight, 0, 1 << 20),
	U("initial-stock", "STOCK_INITIAL_STOCK", initial_stock, 0, STOCK_COUNT_MAX),
	{ "repair", "STOCK_REPAIR", K_BOOL, F(repair), 0, 1, false },
	S("mongo", "STOCK_MONGO_URI", mongo_uri, true),
	S("mongo-db", "STOCK_MONGO_DB", mongo_db, false),
	S("mongo-one-collection", "STOCK_MONGO_ONE_COLLECTION", mongo_one, false),
	S("mongo-many-collection", "STOCK_MONGO_MANY_COLLECTION", mongo_many, false),
	U("mongo-timeout-ms", "STOCK_MONGO_TIMEOUT_MS", mongo_timeout_ms, 50, 600000),
	S("redis", "STOCK_REDIS_URL", redis_url, true),
	S("one-channel", "STOCK_ONE_CHANNEL", one_channel, false),
	S("many-channel", "STOCK_MANY_CHANNEL", many_channel, false),
	{ "host-id", "STOCK_HOST_ID", K_HOST, F(host_id), 0, 0, false },
	U("lease-block", "STOCK_LEASE_BLOCK", lease_block, 1, STOCK_COUNT_MAX),
	U("lease-ms", "STOCK_LEASE_MS", lease_ms, 100, 3600000),
	U("record-ms", "STOCK_RECORD_MS", record_ms, 1, 60000),
	U("poll-ms", "STOCK_POLL_MS", poll_ms, 10, 3600000),
	U("lease-waiters", "STOCK_LEASE_WAITERS", lease_waiters, 0, 1 << 20),
	U("hold-ttl-ms", "STOCK_HOLD_TTL_MS", hold_ttl_ms, 1, 86400000),
	U("max-hold-ms", "STOCK_MAX_HOLD_MS", max_hold_ms, 1, 86400000),
	U("max-per-buyer", "STOCK_MAX_PER_BUYER", max_per_buyer, 0, STOCK_COUNT_MAX),
	U("idempotency-ttl-s", "STOCK_IDEMPOTENCY_TTL_S", idem_ttl_s, 1, 31536000),
	U("hold-retain-s", "STOCK_HOLD_RETAIN_S", hold_retain_s, 1, 31536000),
	S("payment-url", "STOCK_PAYMENT_URL", payment_url, true),
	U("payment-timeout-ms", "STOCK_PAYMENT_TIMEOUT_MS", payment_timeout_ms, 10, 600000),
};
#define NKNOBS (sizeof knobs / sizeof knobs[0])
#define MAX_ARGS 64

static char outbuf[1 << 16], errbuf[1 << 16];
static size_t outlen, errlen;

/* Make glibc's getopt forget everything (see the top). */
static void
getopt_reset(void)
{
	static const struct option none[] = { { NULL, 0, NULL, 0 } };
	char arg0[] = "demo-server", *av[] = { arg0, NULL };

	optind = 0;
	while (getopt_long(1, av, "", none, NULL) != -1)
		;
}

/* config_parse on a fresh copy of the pointer array (getopt permutes it). */
static int
parse(struct app_config *cfg, int argc, char *const *argv)
{
	char *av[MAX_ARGS + 2];
	FILE *so = stdout, *se = stderr, *mo, *me;
	int rc;

	memcpy(av, argv, (size_t)argc * sizeof *av);
	av[argc] = NULL;
	mo = fmemopen(outbuf, sizeof outbuf, "w");
	me = fmemopen(errbuf, sizeof errbuf, "w");
	CHECK(mo != NULL && me != NULL);
	getopt_reset();
	stdout = mo, stderr = me;
	rc = config_parse(cfg, argc, av);
	stdout = so, stderr = se;
	fflush(mo), fflush(me);
	outlen = (size_t)ftell(mo);
	errlen = (size_t)ftell(me);
	fclose(mo), fclose(me);
	return rc;
}

static void
check_fields(const struct app_config *c)
{
	for (size_t i = 0; i < NKNOBS; i++) {
		const struct knob *k = &knobs[i];
		const char *p = (const char *)c + k->off;
		uint64_t v;
		size_t n;

		switch (k->kind) {
		case K_U64:
			memcpy(&v, p, sizeof v);
			if (v < k->min || v > k->max)
				fprintf(stderr, "fuzz_config: --%s = %llu\n", k->flag,
				    (unsigned long long)v);
			CHECK(v >= k->min && v <= k->max);
			break;
		case K_BOOL:
			CHECK(*(const unsigned char *)p <= 1);
			break;
		case K_STR:
			CHECK(memchr(p, 0, k->size) != NULL);
			CHECK(k->may_be_empty || p[0] != '\0');
			break;
		case K_HOST:
			n = strnlen(p, k->size);
			CHECK(n < k->size && host_id_valid(p, n));
			break;
		}
	}
	CHECK(c->redis_url[0] == '\0' || c->mongo_uri[0] != '\0');
}

/*
 * Field by field: numbers and flags equal, strings equal up to their NUL (a
 * longer value set earlier may leave bytes after it: not part of the value).
 */
static bool
same_values(const struct app_config *a, const struct app_config *b)
{
	for (size_t i = 0; i < NKNOBS; i++) {
		const struct knob *k = &knobs[i];
		const char *p = (const char *)a + k->off, *q = (const char *)b + k->off;

		if (k->kind == K_STR || k->kind == K_HOST ? strcmp(p, q) != 0 :
		    memcmp(p, q, k->size) != 0) {
			fprintf(stderr, "fuzz_config: --%s differs after re-encoding\n", k->flag);
			return false;
		}
	}
	return true;
}

/* Property 4: the struct as canonical flags, parsed with no environment. */
static void
check_canonical(const struct app_config *c)
{
	static char bufs[NKNOBS][PATH_MAX + 64];
	char arg0[] = "demo-server", *av[MAX_ARGS + 2];
	struct app_config again;
	int ac = 0;

	av[ac++] = arg0;
	for (size_t i = 0; i < NKNOBS; i++) {
		const struct knob *k = &knobs[i];
		const char *p = (const char *)c + k->off;
		uint64_t v;

		switch (k->kind) {
		case K_U64:
			memcpy(&v, p, sizeof v);
			snprintf(bufs[i], sizeof bufs[i], "--%s=%llu", k->flag, (unsigned long long)v);
			break;
		case K_BOOL:
			if (!*(const bool *)p)
				continue;
			snprintf(bufs[i], sizeof bufs[i], "--%s", k->flag);
			break;
		default:
			if (p[0] == '\0')
				continue;
			snprintf(bufs[i], sizeof bufs[i], "--%s=%s", k->flag, p);
			break;
		}
		av[ac++] = bufs[i];
	}
	CHECK(parse(&again, ac, av) == 0);
	CHECK(same_values(&again, c));
}

/*
 * The table above must be the one config.c has: every row of
 * --help-markdown ("| `--flag` | `ENV` | default | range | meaning |") is
 * matched by flag, environment variable and bounds, and nothing is missing.
 */
static void
check_table(void)
{
	char arg0[] = "demo-server", arg1[] = "--help-markdown", *av[] = { arg0, arg1, NULL };
	struct app_config c;
	size_t rows = 0;
	char *line, *save = NULL;

	CHECK(parse(&c, 2, av) == 1 && outlen > 0 && outlen < sizeof outbuf);
	outbuf[outlen] = '\0';
	for (line = strtok_r(outbuf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		char flag[64], env[64], range[128];
		unsigned long long lo, hi;
		const struct knob *k = NULL;

		if (sscanf(line, "| `--%63[^`]` | `%63[^`]` | %*[^|]| %127[^|]|", flag, env, range) != 3)
			continue;
		for (size_t i = 0; i < NKNOBS && k == NULL; i++)
			if (strcmp(knobs[i].flag, flag) == 0)
				k = &knobs[i];
		if (k == NULL || strcmp(k->env, env) != 0)
			fprintf(stderr, "fuzz_config: --help-markdown row '%s' is not in the table\n",
			    line);
		CHECK(k != NULL && strcmp(k->env, env) == 0);
		if (k->kind == K_U64) {
			CHECK(sscanf(range, "%llu \xe2\x80\x93 %llu", &lo, &hi) == 2);
			CHECK(lo == k->min && hi == k->max);
		} else if (k->kind == K_BOOL) {
			CHECK(strncmp(range, "flag", 4) == 0);
		} else {
			CHECK(sscanf(range, "\xe2\x89\xa4 %llu bytes", &hi) == 1 && hi == k->size - 1);
		}
		rows++;
	}
	CHECK(rows == NKNOBS);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	for (size_t i = 0; i < NKNOBS; i++)
		unsetenv(knobs[i].env);
	unsetenv("POSIXLY_CORRECT");
	check_table();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char buf[1 << 16];
	char arg0[] = "demo-server", *av[MAX_ARGS + 2];
	const struct knob *envk = NULL;
	const char *envval = NULL;
	struct app_config c1, c2;
	int ac = 0, rc, rc2;
	size_t o;

	if (size < 1 || size >= sizeof buf)
		return 0;
	if (data[0] % (NKNOBS + 1) < NKNOBS)
		envk = &knobs[data[0] % (NKNOBS + 1)];
	memcpy(buf, data + 1, size - 1);
	buf[size - 1] = '\0';
	av[ac++] = arg0;
	o = 0;
	if (envk != NULL) {
		envval = buf;
		o = strlen(buf) + 1;
	}
	while (o + 1 < size && ac < MAX_ARGS) { /* buf[size - 1] ends the last string */
		av[ac++] = buf + o;
		o += strlen(buf + o) + 1;
	}
	if (envk != NULL)
		CHECK(setenv(envk->env, envval, 1) == 0);

	/* 1 */
	rc = parse(&c1, ac, av);
	CHECK(rc == -1 || rc == 0 || rc == 1);
	CHECK(rc != -1 || errlen > 0);
	CHECK(rc != 1 || outlen > 0);
	/* 3 */
	rc2 = parse(&c2, ac, av);
	CHECK(rc2 == rc);
	if (rc == 0)
		CHECK(memcmp(&c1, &c2, sizeof c1) == 0);
	if (envk != NULL)
		unsetenv(envk->env);
	if (rc != 0)
		return 0;
	/* 2, 4 */
	check_fields(&c1);
	check_canonical(&c1);
	return 0;
}
