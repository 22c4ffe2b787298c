/*
 * A slow disk for benchmarks and tests, by LD_PRELOAD: every fsync() and
 * fdatasync() sleeps SLOW_FSYNC_MS milliseconds (default 0: no delay)
 * before doing the real call. The embedded store's group commit then waits
 * like it would on a saturated or failing disk, without touching the
 * server's code (tests/bench/bench_http.sh, "noisy neighbour").
 *
 *   LD_PRELOAD=build/release/bench/slow_fsync.so SLOW_FSYNC_MS=50 demo-server ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void
delay(void)
{
	const char *v = getenv("SLOW_FSYNC_MS");
	long ms = v != NULL ? strtol(v, NULL, 10) : 0;
	struct timespec ts;

	if (ms <= 0 || ms > 60000)
		return;
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) != 0)
		;
}

int
fsync(int fd)
{
	static int (*real)(int);

	if (real == NULL)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	delay();
	return real(fd);
}

int
fdatasync(int fd)
{
	static int (*real)(int);

	if (real == NULL)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	delay();
	return real(fd);
}
