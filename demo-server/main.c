/*
 * demo-server: start-up, signals and drain.
 *
 * Start-up order: parse flags → lock and recover the embedded store (load
 * snapshot, replay journal) → build the in-memory counters from the recovered
 * documents, seeding the catalog on first start → start civetweb → mark
 * ready. SIGINT/SIGTERM: stop accepting, let in-flight requests finish
 * (mg_stop joins the workers), flush and snapshot the store, exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mongoc/mongoc.h>

#include "app.h"

/* ---- logging: one line per event, flood-suppressed ---------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t log_window_start, log_in_window, log_suppressed;
#define LOG_MAX_PER_SEC 50

void
app_log(const char *fmt, ...)
{
	uint64_t now = stock_now_ns();
	struct timespec ts;
	struct tm tm;
	char when[32];
	va_list ap;

	pthread_mutex_lock(&log_lock);
	if (now - log_window_start >= 1000000000ULL) {
		if (log_suppressed)
			fprintf(stderr, "demo-server: %llu log lines suppressed\n",
			    (unsigned long long)log_suppressed);
		log_window_start = now;
		log_in_window = log_suppressed = 0;
	}
	if (++log_in_window > LOG_MAX_PER_SEC) {
		log_suppressed++;
		pthread_mutex_unlock(&log_lock);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ldZ demo-server: ", when, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&log_lock);
}

static void
store_log(void *arg, const char *msg)
{
	(void)arg;
	app_log("store: %s", msg);
}

/* ---- catalog -------------------------------------------------------------- */

static const char *const many_seed[] = { "NVDA", "TSLA", "AMD" };

struct load_ctx {
	struct app *app;
	bool seen_one[APP_ONE_COUNT];
	int errors;
};

/* A recovered document becomes a counter: remaining = stock, sold = sold. */
static int
counter_from_doc(struct stock_counter *c, enum stock_strategy s, const struct store_doc *d)
{
	int rc = stock_counter_init(c, s, d->stock + d->sold);

	if (rc == 0 && d->sold > 0)
		rc = stock_counter_take(c, d->sold);
	return rc;
}

static int
load_doc(const struct store_doc *d, void *arg)
{
	struct load_ctx *x = arg;
	struct app *app = x->app;

	for (int i = 0; i < APP_ONE_COUNT; i++)
		if (strcmp(d->sku, app->one[i].doc_id) == 0) {
			stock_counter_destroy(&app->one[i].counter);
			x->errors += counter_from_doc(&app->one[i].counter,
			    i == APP_ONE_SIGNAL ? STOCK_STRATEGY_SIGNAL :
			    i == APP_ONE_LOCK ? STOCK_STRATEGY_LOCKED : STOCK_STRATEGY_ATOMIC, d) != 0;
			x->seen_one[i] = true;
			return 0;
		}
	if (!stock_sku_valid(d->sku, strlen(d->sku))) {
		app_log("catalog: ignoring document with invalid SKU");
		return 0;
	}
	if (stock_table_insert(app->many, d->sku, strlen(d->sku), d->stock + d->sold) != 0 ||
	    (d->sold > 0 && stock_table_take(app->many, d->sku, strlen(d->sku), d->sold) != 0))
		x->errors++;
	return 0;
}

static int
build_catalog(struct app *app)
{
	static const char *const names[APP_ONE_COUNT] = { "Db", "Atomic", "Signal", "Lock" };
	static const char *const ids[APP_ONE_COUNT] = { "OneStock:Db", "OneStock:Atomic",
		"OneStock:Signal", "OneStock:Lock" };
	static const enum stock_strategy strat[APP_ONE_COUNT] = { STOCK_STRATEGY_ATOMIC,
		STOCK_STRATEGY_ATOMIC, STOCK_STRATEGY_SIGNAL, STOCK_STRATEGY_LOCKED };
	struct load_ctx x = { .app = app };
	uint64_t initial = app->cfg.initial_stock;
	bool fresh;

	for (int i = 0; i < APP_ONE_COUNT; i++) {
		app->one[i].name = names[i];
		app->one[i].doc_id = ids[i];
		if (stock_counter_init(&app->one[i].counter, strat[i], 0) != 0)
			return -1;
	}
	if (stock_table_create(&app->many, STOCK_STRATEGY_ATOMIC, 64) != 0)
		return -1;
	store_foreach(app->store, load_doc, &x);
	if (x.errors) {
		app_log("catalog: %d recovered documents could not be loaded", x.errors);
		return -1;
	}
	fresh = stock_table_count(app->many) == 0;
	for (int i = 0; i < APP_ONE_COUNT; i++)
		fresh = fresh && !x.seen_one[i];
	if (!fresh)
		return 0;
	/* First start: the seed's catalog, made durable before serving. */
	for (int i = 0; i < APP_ONE_COUNT; i++) {
		struct store_doc d = { .stock = initial };
		stock_counter_set(&app->one[i].counter, initial);
		snprintf(d.sku, sizeof d.sku, "%s", ids[i]);
		if (store_append(app->store, &d, true) != 0)
			return -1;
	}
	for (size_t i = 0; i < sizeof many_seed / sizeof many_seed[0]; i++) {
		struct store_doc d = { .stock = initial };
		snprintf(d.sku, sizeof d.sku, "%s", many_seed[i]);
		if (stock_table_insert(app->many, many_seed[i], strlen(many_seed[i]), initial) != 0 ||
		    store_append(app->store, &d, true) != 0)
			return -1;
	}
	app_log("catalog seeded: OneStock (Db, Atomic, Signal, Lock) and NVDA, TSLA, AMD with %llu each",
	    (unsigned long long)initial);
	return 0;
}

/* libmongoc's own log: warnings and errors as our log lines; its debug chatter
   (one line per failed heartbeat while MongoDB is down) is dropped, and so is
   the harmless "endSessions" warning servers without sessions cause at exit. */
static void
app_mongoc_log(mongoc_log_level_t level, const char *domain, const char *msg, void *arg)
{
	(void)arg;
	if (level > MONGOC_LOG_LEVEL_WARNING || strstr(msg, "endSessions") != NULL)
		return;
	app_log("libmongoc %s: %s", domain, msg);
}

/* ---- catalog on MongoDB (--mongo) ----------------------------------------- */

static const char *const one_ids[APP_ONE_COUNT] = { "OneStock:Db", "OneStock:Atomic",
	"OneStock:Signal", "OneStock:Lock" };

static int
collect_many(const struct store_mongo_view *v, void *arg)
{
	struct app *app = arg;
	int rc;

	if (strncmp(v->doc.sku, "OneStock:", 9) == 0)
		return 0;
	if (!stock_sku_valid(v->doc.sku, strlen(v->doc.sku))) {
		app_log("catalog: ignoring document with invalid SKU");
		return 0;
	}
	rc = stock_table_insert(app->many, v->doc.sku, strlen(v->doc.sku), 0);
	return rc == 0 || rc == STOCK_EEXIST ? 0 : -1;
}

struct many_list {
	const char **skus;
	struct stock_counter **ctrs;
	size_t n, cap;
	struct app *app;
};

static int
list_many(const char *sku, size_t len, const struct stock_level *l, void *arg)
{
	struct many_list *x = arg;
	char *copy;

	(void)l;
	if (x->n == x->cap || (copy = strndup(sku, len)) == NULL)
		return 1;
	x->skus[x->n] = copy;
	x->ctrs[x->n] = stock_table_lookup(x->app->many, copy, len);
	x->n++;
	return 0;
}

static void
lease_log(const char *msg)
{
	app_log("lease: %s", msg);
}

static void
bus_log(void *arg, const char *msg)
{
	(void)arg;
	app_log("bus: %s", msg);
}

/* Guards app->leases against the bus thread while it is set and torn down. */
static pthread_mutex_t leases_mu = PTHREAD_MUTEX_INITIALIZER;

/* A stock event of another instance: newer versions refresh our peek cache. */
static void
bus_receive(const struct bus_event *ev, void *arg)
{
	struct app *app = arg;

	pthread_mutex_lock(&leases_mu);
	if (app->leases != NULL)
		lease_offer(app->leases, ev->key, ev->value, UINT64_MAX, ev->version, false);
	pthread_mutex_unlock(&leases_mu);
}

/*
 * --mongo: seed the catalog like the seed service (only missing documents),
 * build empty counters (they fill from leases), start the bus and the lease
 * manager, which reconciles this instance's ledger with MongoDB.
 */
static int
build_catalog_mongo(struct app *app)
{
	static const char *const names[APP_ONE_COUNT] = { "Db", "Atomic", "Signal", "Lock" };
	static const enum stock_strategy strat[APP_ONE_COUNT] = { STOCK_STRATEGY_ATOMIC,
		STOCK_STRATEGY_ATOMIC, STOCK_STRATEGY_SIGNAL, STOCK_STRATEGY_LOCKED };
	enum { MAXLEASED = 200 };
	const char *skus[MAXLEASED];
	struct stock_counter *ctrs[MAXLEASED];
	struct many_list ml = { skus + 3, ctrs + 3, 0, MAXLEASED - 3, app };
	struct lease_options lo = { 0 };
	char ledger[PATH_MAX + 16];
	const char *plain[1] = { one_ids[APP_ONE_DB] };
	int rc;

	for (int i = 0; i < APP_ONE_COUNT; i++) {
		app->one[i].name = names[i];
		app->one[i].doc_id = one_ids[i];
		if (stock_counter_init(&app->one[i].counter, strat[i], 0) != 0 ||
		    store_mongo_seed(app->store, one_ids[i], app->cfg.initial_stock) != 0)
			return -1;
	}
	for (size_t i = 0; i < sizeof many_seed / sizeof many_seed[0]; i++)
		if (store_mongo_seed(app->store, many_seed[i], app->cfg.initial_stock) != 0)
			return -1;
	if (take_batcher_init(&app->db_batch, app->store, one_ids[APP_ONE_DB], 256) != 0)
		return -1;
	if (stock_table_create(&app->many, STOCK_STRATEGY_ATOMIC, 64) != 0 ||
	    store_mongo_view_all(app->store, collect_many, app) != 0)
		return -1;
	for (int i = APP_ONE_ATOMIC; i < APP_ONE_COUNT; i++) {
		skus[i - 1] = one_ids[i];
		ctrs[i - 1] = &app->one[i].counter;
	}
	stock_table_foreach(app->many, list_many, &ml);
	if (app->cfg.redis_url[0] != '\0') {
		struct bus_options bo = { 0 };
		bo.url = app->cfg.redis_url;
		bo.host_id = app->cfg.host_id;
		bo.one_channel = app->cfg.one_channel;
		bo.many_channel = app->cfg.many_channel;
		bo.receive = bus_receive;
		bo.receive_arg = app;
		bo.log = bus_log;
		if ((rc = bus_open(&app->bus, &bo)) != 0) {
			app_log("cannot start the Redis bus: %s", stock_strerror(rc));
			goto out;
		}
	}
	snprintf(ledger, sizeof ledger, "%s/ledger.bin", app->cfg.data_dir);
	lo.store = app->store;
	lo.bus = app->bus;
	lo.host_id = app->cfg.host_id;
	lo.ledger_path = ledger;
	lo.block = app->cfg.lease_block;
	lo.lease_ms = app->cfg.lease_ms;
	lo.record_ms = app->cfg.record_ms;
	lo.poll_ms = app->cfg.poll_ms;
	lo.log = lease_log;
	{
		lease_mgr_t *m;
		rc = lease_open(&m, &lo, skus, ctrs, 3 + ml.n, plain, 1);
		pthread_mutex_lock(&leases_mu);
		app->leases = rc == 0 ? m : NULL;
		pthread_mutex_unlock(&leases_mu);
	}
	if (rc != 0)
		app_log("cannot start the lease manager: %s", stock_strerror(rc));
	else
		app_log("MongoDB catalog: OneStock (Db, Atomic, Signal, Lock) and %zu ManyStock SKUs; "
		    "host id %s", ml.n, app->cfg.host_id);
out:
	for (size_t i = 0; i < ml.n; i++)
		free((char *)ml.skus[i]);
	return rc == 0 ? 0 : -1;
}

/* ---- tunables ------------------------------------------------------------ */

void
app_tunables_get(struct app *app, struct app_tunables *out)
{
	struct stock_snapshot_section sec;
	const struct app_tunables *t = stock_snapshot_read_begin(&app->tunables, &sec);

	if (t == NULL) { /* out of memory registering this thread: the start-up values */
		out->gate_wait_ms = app->cfg.gate_wait_ms;
		out->max_quantity = app->cfg.max_quantity;
		return;
	}
	*out = *t;
	stock_snapshot_read_end(&app->tunables, &sec);
}

static void
tunables_free(void *obj, void *arg)
{
	(void)arg;
	free(obj);
}

static int
tunables_init(struct app *app)
{
	struct app_tunables *t = malloc(sizeof *t);

	if (t == NULL)
		return -1;
	t->gate_wait_ms = app->cfg.gate_wait_ms;
	t->max_quantity = app->cfg.max_quantity;
	if (stock_snapshot_init(&app->tunables, t, tunables_free, NULL) != 0) {
		free(t);
		return -1;
	}
	return 0;
}

/* ---- main ------------------------------------------------------------------ */

static int
civetweb_log(const struct mg_connection *c, const char *msg)
{
	(void)c;
	app_log("http: %s", msg);
	return 1;
}

static volatile sig_atomic_t stop_requested;

static void
on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

int
main(int argc, char **argv)
{
	static struct app app;
	struct store_bson_options so = { 0 };
	struct stock_breaker_config bc;
	struct mg_context *ctx;
	struct mg_callbacks cb = { 0 };
	char err[512], threads[16], ports[160];
	struct mg_server_port sp[4];
	int rc, n;

	rc = app_config_parse(&app.cfg, argc, argv);
	if (rc != 0)
		return rc > 0 ? 0 : 2;
	signal(SIGPIPE, SIG_IGN);

	if (mkdir(app.cfg.data_dir, 0700) != 0 && errno != EEXIST) {
		app_log("cannot create %s: %s", app.cfg.data_dir, strerror(errno));
		return 1;
	}
	if (app.cfg.mongo_uri[0] != '\0') {
		struct store_mongo_options mo = { 0 };
		mo.uri = app.cfg.mongo_uri;
		mo.database = app.cfg.mongo_db;
		mo.one_collection = app.cfg.mongo_one;
		mo.many_collection = app.cfg.mongo_many;
		mo.timeout_ms = app.cfg.mongo_timeout_ms;
		mo.log = store_log;
		mongoc_log_set_handler(app_mongoc_log, NULL);
		if ((rc = store_mongo_open(&app.store, &mo, err, sizeof err)) != 0) {
			app_log("cannot open the MongoDB store: %s", err);
			return 1;
		}
	} else {
		so.data_dir = app.cfg.data_dir;
		so.repair = app.cfg.repair;
		so.snapshot_every = 100000;
		/* Let a group commit wait up to 300 us to grow (measured: 46k -> 50k durable
		 * buys/s at 64 connections vs 100 us; 1 ms is worse). */
		so.max_delay_us = 300;
		so.log = store_log;
		if ((rc = store_bson_open(&app.store, &so, err, sizeof err)) != 0) {
			app_log("cannot open the store: %s", err);
			return 1;
		}
	}
	if (http_load_token(&app, err, sizeof err) != 0) {
		app_log("admin token: %s", err);
		return 1;
	}
	/* Store breaker: 3 failed durable writes in a row open it; it stays open
	 * 500 ms, doubling up to 10 s while probes keep failing. */
	stock_breaker_config_default(&bc);
	bc.failure_threshold = 3;
	bc.open_ns = 500ULL * 1000 * 1000;
	bc.max_open_ns = 10ULL * 1000 * 1000 * 1000;
	bc.backoff_mult = 2;
	if (stock_breaker_init(&app.gate, NULL) != 0 || stock_breaker_init(&app.store_breaker, &bc) != 0 ||
	    stock_permits_init(&app.db_inflight, app.cfg.db_inflight) != 0 ||
	    tunables_init(&app) != 0 || app_metrics_init(&app) != 0 ||
	    (app.cfg.mongo_uri[0] != '\0' ? build_catalog_mongo(&app) : build_catalog(&app)) != 0) {
		app_log("start-up failed");
		return 1;
	}

	snprintf(threads, sizeof threads, "%u", app.cfg.threads);
	snprintf(ports, sizeof ports, "%s", app.cfg.listen);
	const char *options[] = {
		"listening_ports", ports,
		"num_threads", threads,
		"enable_keep_alive", "yes",
		"keep_alive_timeout_ms", "5000",
		"request_timeout_ms", "10000",
		"max_request_size", "16384",
		"tcp_nodelay", "1",
		"decode_url", "no", /* routes.c decodes the path with its length */
		NULL,
	};
	cb.log_message = civetweb_log;
	mg_init_library(0);
	ctx = mg_start(&cb, NULL, options);
	if (ctx == NULL) {
		app_log("cannot listen on %s (in use, or not host:port)", app.cfg.listen);
		store_close(app.store);
		return 1;
	}
	app_routes_install(&app, ctx);
	n = mg_get_server_ports(ctx, 4, sp);
	ck_pr_store_int(&app.ready, 1);
	app_log("listening on %s (%d port%s, %u threads), data in %s, store %s", app.cfg.listen, n,
	    n == 1 ? "" : "s", app.cfg.threads, app.cfg.data_dir,
	    app.cfg.mongo_uri[0] ? "mongo" : "embedded");

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	while (!stop_requested) {
		struct timespec tick = { 0, 100 * 1000 * 1000 };
		nanosleep(&tick, NULL); /* (pause() would race with the flag) */
	}

	app_log("stopping: draining in-flight requests");
	ck_pr_store_int(&app.ready, 0);
	mg_stop(ctx);
	mg_exit_library();
	{
		lease_mgr_t *m;
		pthread_mutex_lock(&leases_mu);
		m = app.leases;
		app.leases = NULL;
		pthread_mutex_unlock(&leases_mu);
		lease_close(m); /* records sales, returns unsold units (publishes them) */
	}
	if (app.bus != NULL && bus_flush(app.bus, 500) != 0)
		app_log("bus: some events were not published before exit");
	bus_close(app.bus);
	store_close(app.store);
	app_log("stopped cleanly");
	return 0;
}
