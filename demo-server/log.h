/*
 * The server's one logger: a line per event on stderr,
 *   2026-12-01T19:52:24.123Z demo-server: warn lease: refill of NVDA failed: ...
 * with a level, the part that speaks ("store", "lease", "bus", "http"), and
 * rate-limited repeats: each call site may print LOG_SITE_PER_SEC lines a
 * second (a libstock sampler per site); what it drops is counted and said on
 * its next line, so a failing dependency cannot flood the log and nothing is
 * dropped silently.
 */
#ifndef DEMO_LOG_H
#define DEMO_LOG_H

#include <stock.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO };

#define LOG_SITE_PER_SEC 20
#define LOG_LINE_MAX 1024 /* longer lines end with "[...]" */

/* A test's sink: receives every line the site's rate admits (without the
   time stamp and newline) instead of stderr. */
typedef void (*log_sink_fn)(void *arg, enum log_level level, const char *who, const char *msg);

/** log_set_sink - route lines to @fn (NULL: back to stderr). Not thread-safe. */
void log_set_sink(log_sink_fn fn, void *arg);

/** log_emit - the macros' target: print one line unless @site says to drop it. */
void log_emit(struct stock_sampler *site, enum log_level level, const char *who, const char *fmt,
    ...) __attribute__((format(printf, 4, 5)));

#define LOG__AT(level, who, ...)                                                          \
	do {                                                                              \
		static struct stock_sampler log__site =                                   \
		    STOCK_SAMPLER_INITIALIZER(LOG_SITE_PER_SEC, 1000000000ULL);           \
		log_emit(&log__site, (level), (who), __VA_ARGS__);                        \
	} while (0)

#define log_error(who, ...) LOG__AT(LOG_ERROR, who, __VA_ARGS__)
#define log_warn(who, ...)  LOG__AT(LOG_WARN, who, __VA_ARGS__)
#define log_info(who, ...)  LOG__AT(LOG_INFO, who, __VA_ARGS__)

#endif /* DEMO_LOG_H */
