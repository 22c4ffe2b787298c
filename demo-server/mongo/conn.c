/*
 * The connection to MongoDB (or a MongoDB-compatible server such as
 * FerretDB): one client pool for every thread (each call pops a client and
 * pushes it back), the URI's timeouts and retries, the write concern, open
 * (ping, server clock, FerretDB detection, the backend) and close,
 * round-trip accounting and the health flag, per-SKU locks, libmongoc's log
 * handler. Why retries are off, which write concern and what is logged:
 * docs/mongo.md, "Connection".
 */
#include <mongoc/mongoc.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stock/once.h>

#include "common/assert.h"
#include "common/util.h"
#include "log.h"
#include "mongo/internal.h"

#define DEF_DATABASE "SuperStockStore"
#define DEF_ONE_COLLECTION "OneStock"
#define DEF_MANY_COLLECTION "ManyStock"
#define DEF_TIMEOUT_MS 2000u
#define APPNAME "demo-server"

/* ====================================================================== */
/* Shared helpers                                                          */
/* ====================================================================== */

/*
 * The health flag flips with the outcome; only the flips are logged, so a
 * server that stays down does not flood the log. A flip is a compare (get)
 * then a set: two threads racing one flip may both log it, and concurrent
 * outcomes land in some order; the flag always ends as the last set left it.
 */
void
mongo_trip_done(struct mongo *m, bool ok, const bson_error_t *e)
{
	stock_stat_inc(&m->trips);
	if (ok) {
		if (stock_gauge_get(&m->healthy) == 0) {
			stock_gauge_set(&m->healthy, 1);
			log_info("mongo", "round trips succeed again");
		}
		return;
	}
	stock_stat_inc(&m->failed_trips);
	if (stock_gauge_get(&m->healthy) != 0) {
		stock_gauge_set(&m->healthy, 0);
		log_warn("mongo", "round trip failed (%s); unhealthy until one succeeds",
		    e != NULL ? e->message : "no client available");
	}
}

mongoc_client_t *
mongo_client_pop(struct mongo *m)
{
	mongoc_client_t *c = mongoc_client_pool_pop(m->pool);

	if (c == NULL)
		mongo_trip_done(m, false, NULL);
	return c;
}

void
mongo_client_push(struct mongo *m, mongoc_client_t *c)
{
	mongoc_client_pool_push(m->pool, c);
}

const char *
mongo_coll_of(const struct mongo *m, const char *sku)
{
	if (strncmp(sku, MONGO_BUYER_PREFIX, sizeof MONGO_BUYER_PREFIX - 1) == 0)
		return MONGO_BUYERS_COLLECTION;
	return strncmp(sku, MONGO_ONE_PREFIX, sizeof MONGO_ONE_PREFIX - 1) == 0 ? m->one_coll
	                                                                        : m->many_coll;
}

int
mongo_insert_unique(struct mongo *m, mongoc_client_t *client, const char *name, const bson_t *doc,
    bson_error_t *e)
{
	mongoc_collection_t *coll;
	bson_t opts;
	bool ok;

	mongo_write_opts(m, &opts, false);
	coll = mongoc_client_get_collection(client, m->database, name);
	ok = mongoc_collection_insert_one(coll, doc, &opts, NULL, e);
	mongo_trip_done(m, ok || mongo_is_dupkey(e), e);
	mongoc_collection_destroy(coll);
	bson_destroy(&opts);
	return ok ? 0 : mongo_is_dupkey(e) ? STOCK_EEXIST : STOCK_ESYS;
}

void
mongo_write_opts(const struct mongo *m, bson_t *opts, bool upsert)
{
	bson_init(opts);
	if (upsert)
		BSON_APPEND_BOOL(opts, "upsert", true);
	BSON_APPEND_DOCUMENT(opts, "writeConcern", &m->wc);
}

unsigned
mongo_sku_stripe(const char *sku)
{
	return (unsigned)(util_hash(sku, strlen(sku)) % MONGO_SKU_STRIPES);
}

pthread_mutex_t *
mongo_sku_lock(struct mongo *m, const char *sku)
{
	pthread_mutex_t *lk;

	if (!m->serialize)
		return NULL;
	lk = &m->stripes[mongo_sku_stripe(sku)];
	pthread_mutex_lock(lk);
	return lk;
}

void
mongo_sku_unlock(pthread_mutex_t *lk)
{
	if (lk != NULL)
		pthread_mutex_unlock(lk);
}

bool
mongo_is_dupkey(const bson_error_t *e)
{
	return e->code == MONGO_E_DUPKEY;
}

int64_t
mongo_server_ms(const struct mongo *m)
{
	return util_wall_ms() + m->clock_offset_ms;
}

bool
mongo_healthy(mongo_t *m)
{
	return m != NULL && stock_gauge_get(&m->healthy) != 0;
}

void
mongo_stats(mongo_t *m, struct mongo_stats *out)
{
	memset(out, 0, sizeof *out);
	if (m == NULL)
		return;
	out->trips = stock_stat_sum(&m->trips);
	out->failed_trips = stock_stat_sum(&m->failed_trips);
	out->claims = m->be == &mongo_claims_backend;
}

/* ====================================================================== */
/* libmongoc, once per process                                             */
/* ====================================================================== */

static void
mongoc_log_to_ours(mongoc_log_level_t level, const char *domain, const char *msg, void *arg)
{
	(void)arg;
	/* FerretDB v1 has no endSessions: libmongoc warns at every pool's end. */
	if (level > MONGOC_LOG_LEVEL_WARNING || strstr(msg, "endSessions") != NULL)
		return;
	if (level == MONGOC_LOG_LEVEL_WARNING)
		log_warn("mongo", "libmongoc %s: %s", domain, msg);
	else
		log_error("mongo", "libmongoc %s: %s", domain, msg);
}

static int
mongoc_global_init(void *arg)
{
	(void)arg;
	/* Process-wide; mongoc_cleanup() is never called (other users may exist). */
	mongoc_init();
	mongoc_log_set_handler(mongoc_log_to_ours, NULL);
	return 0;
}

static struct stock_once mongoc_once = STOCK_ONCE_INITIALIZER;

#if defined(__SANITIZE_THREAD__)
/*
 * TSan builds: libmongoc and libbson are not instrumented, so the hand-over
 * of topology data between the pool's monitor and the callers through their
 * own atomics is reported as races, every frame inside those libraries.
 * Weak: a program that defines its own suppressions wins.
 */
__attribute__((weak)) const char *__tsan_default_suppressions(void);

__attribute__((weak)) const char *
__tsan_default_suppressions(void)
{
	return "race:libbson-1.0.so\n"
	       "race:libmongoc-1.0.so\n";
}
#endif

/* ====================================================================== */
/* Open and close                                                          */
/* ====================================================================== */

/* "host:port,host:port" of @uri, for messages (never the credentials). */
static void
uri_hosts(const mongoc_uri_t *uri, char *buf, size_t len)
{
	const mongoc_host_list_t *h;
	size_t o = 0;

	buf[0] = '\0';
	for (h = mongoc_uri_get_hosts(uri); h != NULL && o < len; h = h->next) {
		int n = snprintf(buf + o, len - o, "%s%s", o ? "," : "", h->host_and_port);

		if (n < 0)
			break;
		o += (size_t)n;
	}
	if (buf[0] == '\0')
		snprintf(buf, len, "%s", "(SRV or unix socket)");
}

/* Parse @uri_str and set the timeouts, retries and appname. */
static int
uri_setup(struct mongo *m, const char *uri_str, char *err, size_t errlen)
{
	int32_t t = m->timeout_ms > INT32_MAX ? INT32_MAX : (int32_t)m->timeout_ms;
	bson_error_t e;

	if ((m->uri = mongoc_uri_new_with_error(uri_str, &e)) == NULL) {
		util_seterr(err, errlen, "mongo: bad URI: %s", e.message);
		return STOCK_EINVAL;
	}
	if (!mongoc_uri_set_option_as_int32(m->uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_int32(m->uri, MONGOC_URI_CONNECTTIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_int32(m->uri, MONGOC_URI_SOCKETTIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_int32(m->uri, MONGOC_URI_WAITQUEUETIMEOUTMS, t) ||
	    !mongoc_uri_set_option_as_bool(m->uri, MONGOC_URI_RETRYWRITES, false) ||
	    !mongoc_uri_set_option_as_bool(m->uri, MONGOC_URI_RETRYREADS, false) ||
	    !mongoc_uri_set_appname(m->uri, APPNAME)) {
		util_seterr(err, errlen, "mongo: cannot set the URI options (timeouts, retries, appname)");
		return STOCK_EINVAL;
	}
	return 0;
}

/*
 * What the server is: hello's localTime gives the clock offset (claims'
 * stamps, so hosts need not agree on the time), buildInfo's ferretdbVersion
 * tells FerretDB apart. Neither is required: a server that answers neither
 * is taken for a MongoDB with our clock.
 */
static void
server_probe(struct mongo *m, mongoc_client_t *client)
{
	bson_t *cmd, reply;
	bson_error_t e;
	bson_iter_t it;
	int64_t t0 = util_wall_ms();

	cmd = BCON_NEW("hello", BCON_INT32(1));
	if (mongoc_client_command_simple(client, "admin", cmd, NULL, &reply, &e) &&
	    bson_iter_init_find(&it, &reply, "localTime") && BSON_ITER_HOLDS_DATE_TIME(&it))
		m->clock_offset_ms = bson_iter_date_time(&it) - (t0 + util_wall_ms()) / 2;
	bson_destroy(&reply);
	bson_destroy(cmd);

	cmd = BCON_NEW("buildInfo", BCON_INT32(1));
	if (mongoc_client_command_simple(client, "admin", cmd, NULL, &reply, &e))
		m->ferretdb = bson_iter_init_find(&it, &reply, "ferretdbVersion");
	bson_destroy(&reply);
	bson_destroy(cmd);
}

/*
 * Create the pool, ping, learn the server type and pick the write concern.
 * Returns 0, STOCK_EINVAL or STOCK_ESYS (message in @err).
 */
static int
connect_pool(struct mongo *m, const char *uri_str, char *err, size_t errlen)
{
	mongoc_client_t *client;
	mongoc_server_description_t *sd;
	bson_error_t e;
	bson_t *ping;
	char hosts[256];
	const char *type;
	int rc;
	bool ok;

	if ((rc = uri_setup(m, uri_str, err, errlen)) != 0)
		return rc;
	uri_hosts(m->uri, hosts, sizeof hosts);
	if ((m->pool = mongoc_client_pool_new_with_error(m->uri, &e)) == NULL) {
		util_seterr(err, errlen, "mongo: %s: cannot create the client pool: %s", hosts,
		    e.message);
		return STOCK_EINVAL;
	}
	mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
	if ((client = mongoc_client_pool_pop(m->pool)) == NULL) {
		util_seterr(err, errlen, "mongo: %s: no client available", hosts);
		return STOCK_ESYS;
	}
	ping = BCON_NEW("ping", BCON_INT32(1));
	ok = mongoc_client_command_simple(client, "admin", ping, NULL, NULL, &e);
	bson_destroy(ping);
	sd = ok ? mongoc_client_select_server(client, true, NULL, &e) : NULL;
	if (sd == NULL) {
		mongoc_client_pool_push(m->pool, client);
		util_seterr(err, errlen, "mongo: %s: server unreachable within %u ms: %s", hosts,
		    m->timeout_ms, e.message);
		return STOCK_ESYS;
	}
	type = mongoc_server_description_type(sd);
	m->replset = strcmp(type, "RSPrimary") == 0 || strcmp(type, "Mongos") == 0;
	mongoc_server_description_destroy(sd);
	server_probe(m, client);
	mongoc_client_pool_push(m->pool, client);

	/*
	 * FerretDB v1 (a standalone as far as the driver can tell) accepts j
	 * (checked against v1.24.2), so no fallback to a bare w: 1 is needed.
	 * wtimeout bounds the wait for replication like every other round trip.
	 */
	if (m->replset)
		BSON_APPEND_UTF8(&m->wc, "w", "majority");
	else
		BSON_APPEND_INT32(&m->wc, "w", 1);
	BSON_APPEND_BOOL(&m->wc, "j", true);
	BSON_APPEND_INT64(&m->wc, "wtimeout", (int64_t)m->timeout_ms);
	return 0;
}

static char *
dup_or(const char *v, const char *def)
{
	return strdup(v != NULL && v[0] != '\0' ? v : def);
}

/* Everything of @m that exists; the backend's fini has run (or init did not). */
static void
mongo_free(struct mongo *m)
{
	if (m->pool != NULL)
		mongoc_client_pool_destroy(m->pool);
	if (m->uri != NULL)
		mongoc_uri_destroy(m->uri);
	bson_destroy(&m->wc);
	free(m->database);
	free(m->one_coll);
	free(m->many_coll);
	for (int i = 0; i < MONGO_SKU_STRIPES; i++)
		pthread_mutex_destroy(&m->stripes[i]);
	free(m);
}

/* A zeroed, cache-line aligned object with its defaults (the counters are
   striped: see stock_stat). NULL when out of memory. */
static struct mongo *
mongo_alloc(const struct mongo_options *opt)
{
	struct mongo *m;

	if (posix_memalign((void **)&m, STOCK_CACHELINE, sizeof *m) != 0)
		return NULL;
	memset(m, 0, sizeof *m);
	bson_init(&m->wc);
	for (int i = 0; i < MONGO_SKU_STRIPES; i++)
		pthread_mutex_init(&m->stripes[i], NULL);
	stock_idgen_init(&m->keys_made, 1);
	stock_stat_init(&m->trips);
	stock_stat_init(&m->failed_trips);
	stock_gauge_init(&m->healthy, 1);
	stock_gauge_init(&m->warned_leases, 0);
	m->timeout_ms = opt->timeout_ms ? opt->timeout_ms : DEF_TIMEOUT_MS;
	m->database = dup_or(opt->database, DEF_DATABASE);
	m->one_coll = dup_or(opt->one_collection, DEF_ONE_COLLECTION);
	m->many_coll = dup_or(opt->many_collection, DEF_MANY_COLLECTION);
	if (m->database == NULL || m->one_coll == NULL || m->many_coll == NULL) {
		mongo_free(m);
		return NULL;
	}
	return m;
}

int
mongo_open(mongo_t **out, const struct mongo_options *opt, char *err, size_t errlen)
{
	struct mongo *m;
	int rc;

	util_seterr(err, errlen, "%s", "");
	if (out != NULL)
		*out = NULL;
	if (out == NULL || opt == NULL || opt->uri == NULL || opt->uri[0] == '\0') {
		util_seterr(err, errlen, "mongo: a MongoDB URI is required");
		return STOCK_EINVAL;
	}
	if (opt->atomic_mode != MONGO_ATOMIC_AUTO && opt->atomic_mode != MONGO_ATOMIC_NATIVE &&
	    opt->atomic_mode != MONGO_ATOMIC_CLAIMS) {
		util_seterr(err, errlen, "mongo: atomic_mode must be 0 (auto), 1 (native) or 2 (claims)");
		return STOCK_EINVAL;
	}
	if ((rc = stock_once_run(&mongoc_once, mongoc_global_init, NULL)) != 0) {
		util_seterr(err, errlen, "mongo: libmongoc initialisation failed");
		return rc;
	}
	if ((m = mongo_alloc(opt)) == NULL)
		return STOCK_ENOMEM;
	if (strcmp(m->one_coll, MONGO_BUYERS_COLLECTION) == 0 ||
	    strcmp(m->many_coll, MONGO_BUYERS_COLLECTION) == 0 ||
	    strcmp(m->one_coll, MONGO_KEYS_COLLECTION) == 0 ||
	    strcmp(m->many_coll, MONGO_KEYS_COLLECTION) == 0) {
		util_seterr(err, errlen, "mongo: collection names %s and %s are reserved",
		    MONGO_BUYERS_COLLECTION, MONGO_KEYS_COLLECTION);
		mongo_free(m);
		return STOCK_EINVAL;
	}
	if ((rc = connect_pool(m, opt->uri, err, errlen)) != 0) {
		mongo_free(m);
		return rc;
	}
	/* The one place that tells the backends apart. */
	if (opt->atomic_mode == MONGO_ATOMIC_CLAIMS ||
	    (opt->atomic_mode == MONGO_ATOMIC_AUTO && m->ferretdb))
		m->be = &mongo_claims_backend;
	else
		m->be = &mongo_native_backend;
	if ((rc = m->be->init(m, err, errlen)) != 0) {
		mongo_free(m);
		return rc;
	}
	*out = m;
	return 0;
}

void
mongo_close(mongo_t *m)
{
	if (m == NULL)
		return;
	if (m->be->fini != NULL)
		m->be->fini(m);
	mongo_free(m);
}
