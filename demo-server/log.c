/*
 * The logger (log.h). Each line is formatted into a stack buffer and leaves
 * in one write(2), so lines of concurrent threads never interleave and no
 * lock is taken. The per-site sampler decides whether a line is printed; a
 * printed line first reports how many of its site's lines were dropped
 * since the last one.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static log_sink_fn log_sink;
static void *log_sink_arg;

static const char *const level_names[] = { "error", "warn", "info" };

void
log_set_sink(log_sink_fn fn, void *arg)
{
	log_sink = fn;
	log_sink_arg = arg;
}

void
log_emit(struct stock_sampler *site, enum log_level level, const char *who, const char *fmt, ...)
{
	char line[LOG_LINE_MAX + 64], msg[LOG_LINE_MAX];
	uint64_t dropped = 0;
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n, m;

	if (!stock_sampler_admit(site, stock_now_ns(), &dropped))
		return;
	va_start(ap, fmt);
	m = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = snprintf(msg, sizeof msg, "(unprintable log line)");
	else if ((size_t)m >= sizeof msg)
		memcpy(msg + sizeof msg - 6, "[...]", 6);
	if (log_sink != NULL) {
		log_sink(log_sink_arg, level, who, msg);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
	if (dropped > 0)
		n += snprintf(line + n, sizeof line - (size_t)n,
		    ".%03ldZ demo-server: %s %s: (%llu similar lines dropped) %s\n",
		    ts.tv_nsec / 1000000, level_names[level], who, (unsigned long long)dropped, msg);
	else
		n += snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ demo-server: %s %s: %s\n",
		    ts.tv_nsec / 1000000, level_names[level], who, msg);
	if ((size_t)n >= sizeof line)
		n = (int)sizeof line - 1, line[n - 1] = '\n';
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return; /* nowhere left to report it */
}
