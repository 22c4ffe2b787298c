/*
 * demo-server: start-up order, signals and drain.
 *
 * Start-up: parse the configuration → open the inventory of the chosen mode
 * (embedded: lock and recover the journal, build the counters, seed the
 * catalog on first start; --mongo: connect, seed missing documents, start
 * the bus and the lease manager) → load the admin token → start civetweb →
 * mark ready. SIGINT/SIGTERM: unready, stop accepting and let in-flight
 * requests finish (mg_stop joins the workers), then close the inventory
 * (flush and snapshot the journal; or record sales and return leases), exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "http/http.h"
#include "http/routes.h"
#include "http/server.h"
#include "log.h"

/* Set by SIGINT/SIGTERM; main waits on it. */
static struct stock_latch stop_requested = STOCK_LATCH_INITIALIZER(false);

static void
on_signal(int sig)
{
	(void)sig;
	stock_latch_set(&stop_requested); /* async-signal-safe: an atomic store and a futex wake */
}

int
main(int argc, char **argv)
{
	static struct app app;
	struct mg_context *ctx;
	char err[512];
	int rc;

	if ((rc = config_parse(&app.cfg, argc, argv)) != 0)
		return rc > 0 ? 0 : 2;
	signal(SIGPIPE, SIG_IGN);
	if (mkdir(app.cfg.data_dir, 0700) != 0 && errno != EEXIST) {
		log_error("main", "cannot create %s: %s", app.cfg.data_dir, strerror(errno));
		return 1;
	}
	if (http_load_token(app.token, app.cfg.data_dir, err, sizeof err) != 0) {
		log_error("admin", "token: %s", err);
		return 1;
	}
	if (stock_breaker_init(&app.gate, NULL) != 0 || stock_latch_init(&app.ready, false) != 0 ||
	    app_tunables_init(&app) != 0 || metrics_init(&app.metrics, routes_count()) != 0) {
		log_error("main", "start-up failed: out of memory");
		return 1;
	}
	if (app.cfg.payment_url[0] != '\0') {
		struct payment_options po = { .url = app.cfg.payment_url,
			.timeout_ms = (unsigned)app.cfg.payment_timeout_ms };

		if ((rc = payment_open(&app.payment, &po)) != 0) {
			log_error("main", "--payment-url %s: %s", app.cfg.payment_url,
			    rc == STOCK_EINVAL ? "not http://host[:port][/path]" : stock_strerror(rc));
			return 2;
		}
	}
	/* The workers first: the bulkheads are shares of them. */
	config_size(&app.cfg, http_size(&app.cfg));
	/* The one place the mode is chosen. */
	rc = app.cfg.mongo_uri[0] != '\0' ? inventory_cluster_open(&app.inv, &app.cfg) :
	    inventory_local_open(&app.inv, &app.cfg);
	if (rc != 0) {
		log_error("main", "start-up failed: %s", stock_strerror(rc));
		return 1;
	}
	if ((ctx = http_start(&app)) == NULL) {
		inventory_close(app.inv);
		return 1;
	}
	stock_latch_set(&app.ready);
	log_info("main", "listening on %s (%llu threads), data in %s, store %s", app.cfg.listen,
	    (unsigned long long)app.cfg.threads, app.cfg.data_dir, app.inv->ops->name);

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	while (stock_latch_wait(&stop_requested, NULL) != 0)
		;

	log_info("main", "stopping: draining in-flight requests");
	stock_latch_clear(&app.ready);
	mg_stop(ctx);
	mg_exit_library();
	inventory_close(app.inv);
	payment_close(app.payment);
	metrics_destroy(&app.metrics);
	stock_snapshot_destroy(&app.tunables);
	log_info("main", "stopped cleanly");
	return 0;
}
