/*
 * Runner for the Criterion shim (see criterion/criterion.h): runs every
 * registered test in-process, in registration order, and prints a summary.
 * A fatal assertion ends the whole run (it may fire on any thread, so there is
 * no safe way to unwind just one test); expectations are counted.
 */
#include <fnmatch.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "criterion/criterion.h"

static struct shim_test *shim_head, **shim_tail = &shim_head;
static int shim_failures; /* failures in the current test */
static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shim_test *shim_current;

void
shim_register(struct shim_test *t)
{
	*shim_tail = t;
	shim_tail = &t->next;
}

void
shim_check(int ok, int fatal, const char *file, int line, const char *expr, const char *fmt, ...)
{
	va_list ap;

	if (ok)
		return;
	pthread_mutex_lock(&shim_lock);
	shim_failures++;
	fprintf(stderr, "[----] %s:%d: %s failed: %s", file, line,
	    fatal ? "Assertion" : "Expectation", expr);
	if (fmt[0] != '\0') {
		fputs(" -- ", stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
	}
	fputc('\n', stderr);
	pthread_mutex_unlock(&shim_lock);
	if (fatal) {
		fprintf(stderr, "[FAIL] %s::%s (fatal assertion)\n", shim_current->suite,
		    shim_current->name);
		fprintf(stdout, "shim: 0 passed, 1 failed\n");
		fflush(NULL);
		_exit(1);
	}
}

void
shim_skip(const char *fmt, ...)
{
	(void)fmt;
	fprintf(stderr, "[SKIP] skip requested, treated as failure under the shim\n");
	shim_check(0, 1, __FILE__, __LINE__, "cr_skip_test", "%s", "skips are not silent");
}

int
main(int argc, char **argv)
{
	const char *filter = NULL;
	int passed = 0, failed = 0;
	struct shim_test *t;

	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
			filter = argv[++i];

	for (t = shim_head; t != NULL; t = t->next) {
		char full[256];
		struct timespec a, b;

		snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
		if (t->opts.disabled || (filter != NULL && fnmatch(filter, full, 0) != 0))
			continue;
		shim_current = t;
		shim_failures = 0;
		clock_gettime(CLOCK_MONOTONIC, &a);
		if (t->opts.init)
			t->opts.init();
		t->fn();
		if (t->opts.fini)
			t->opts.fini();
		clock_gettime(CLOCK_MONOTONIC, &b);
		fprintf(stderr, "[%s] %s::%s: (%.2fs)\n", shim_failures ? "FAIL" : "PASS", t->suite,
		    t->name, (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
		if (shim_failures)
			failed++;
		else
			passed++;
	}
	fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: 0\n",
	    passed + failed, passed, failed);
	printf("shim: %d passed, %d failed\n", passed, failed);
	return failed == 0 && passed > 0 ? 0 : 1;
}
