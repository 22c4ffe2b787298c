/*
 * What makes thousands of civetweb workers cheap (docs/internals/crowd.md):
 * a sigaction interposer so they start in linear time, and a private futex
 * hash as large as the workers. The demo server uses both; so does the bare
 * civetweb reference of the benchmarks, so that its ceiling is measured
 * under the same conditions.
 */
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "http/threads.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

/* --- thousands of workers start in linear time ----------------------------- */

#ifndef SANITIZED
/*
 * Skips civetweb's per-worker sigaction(SIGPIPE, SIG_IGN) when SIGPIPE is
 * already ignored (nothing of it can be pending): setting it walks every
 * thread of the process (docs/internals/crowd.md).
 */
int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

int
sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	struct sigaction cur;

	if (sig == SIGPIPE && act != NULL && act->sa_handler == SIG_IGN &&
	    !(act->sa_flags & SA_SIGINFO) && __sigaction(SIGPIPE, NULL, &cur) == 0 &&
	    cur.sa_handler == SIG_IGN && !(cur.sa_flags & SA_SIGINFO)) {
		if (old != NULL)
			*old = cur;
		return 0;
	}
	return __sigaction(sig, act, old);
}
#endif

/* --- one futex bucket per worker ------------------------------------------- */

#ifndef PR_FUTEX_HASH
#define PR_FUTEX_HASH 78
#define PR_FUTEX_HASH_SET_SLOTS 1
#endif

unsigned
threads_futex_hash(uint64_t workers)
{
	unsigned slots = 16;

	while (slots < workers && slots < 65536)
		slots <<= 1;
	return prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, slots, 0, 0) == 0 ? slots : 0;
}

/* --- workers below the acceptor's priority --------------------------------- */

int
threads_nice_self(int nice)
{
	/* Only this thread: nice is per thread on Linux. Lowering is always allowed. */
	return setpriority(PRIO_PROCESS, (id_t)gettid(), nice);
}
