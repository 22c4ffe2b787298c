/*
 * Linux futex operations for ConcurrencyKit event counts (ck_ec).
 *
 * ck_ec leaves the OS-specific parts to the caller: reading the clock and
 * sleeping on / waking an address. Every blocking primitive in libstock
 * (signal, breaker, permits, the signal counter) sleeps through ck_ec with the
 * ops defined here, so there is exactly one place that talks to the kernel.
 * Deadlines are absolute CLOCK_MONOTONIC times, as everywhere in the API.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static int
stock__ec_gettime(const struct ck_ec_ops *ops, struct timespec *out)
{
	(void)ops;
	return clock_gettime(CLOCK_MONOTONIC, out);
}

/*
 * FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, which is what
 * ck_ec hands us; plain FUTEX_WAIT would want a relative one.
 */
void
stock__futex_wait(const uint32_t *addr, uint32_t expected, const struct timespec *deadline)
{
	int saved = errno;

	syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected,
	    deadline, NULL, FUTEX_BITSET_MATCH_ANY);
	errno = saved;
}

void
stock__futex_wake(const uint32_t *addr)
{
	int saved = errno;

	syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, NULL, NULL, 0);
	errno = saved;
}

static void
stock__ec_wait32(const struct ck_ec_wait_state *state, const uint32_t *addr,
    uint32_t expected, const struct timespec *deadline)
{
	(void)state;
	stock__futex_wait(addr, expected, deadline);
}

/* The futex word of a 64-bit event count is its low half (x86-64 is little endian). */
static void
stock__ec_wait64(const struct ck_ec_wait_state *state, const uint64_t *addr,
    uint64_t expected, const struct timespec *deadline)
{
	(void)state;
	stock__futex_wait((const uint32_t *)addr, (uint32_t)expected, deadline);
}

static void
stock__ec_wake32(const struct ck_ec_ops *ops, const uint32_t *addr)
{
	(void)ops;
	stock__futex_wake(addr);
}

static void
stock__ec_wake64(const struct ck_ec_ops *ops, const uint64_t *addr)
{
	(void)ops;
	stock__futex_wake((const uint32_t *)addr);
}

const struct ck_ec_ops stock__ec_ops = {
	.gettime = stock__ec_gettime,
	.wait32 = stock__ec_wait32,
	.wait64 = stock__ec_wait64,
	.wake32 = stock__ec_wake32,
	.wake64 = stock__ec_wake64,
	/* Short spin before sleeping: a hand-over usually lands within it. */
	.busy_loop_iter = 64,
};

const struct ck_ec_mode stock__ec_mp = {
	.ops = &stock__ec_ops,
	.single_producer = false,
};

/*
 * ck_ec's sleeping path (libck's exponential_backoff) sleeps in steps ending
 * 2 ms, 16 ms, 128 ms and 1 s after it started, without clamping a step to
 * the caller's deadline, so a 30 ms deadline would sleep until 128 ms. The
 * predicate hook may rewrite each step's deadline: clamp it to ours.
 */
static int
stock__ec_clamp(const struct ck_ec_wait_state *st, struct timespec *partial)
{
	const struct timespec *dl = st->data;

	if (dl != NULL && (dl->tv_sec < partial->tv_sec ||
	    (dl->tv_sec == partial->tv_sec && dl->tv_nsec < partial->tv_nsec)))
		*partial = *dl;
	return 0;
}

int
stock__ec32_wait(struct ck_ec32 *ec, uint32_t old, const struct timespec *deadline)
{
	return ck_ec32_wait_pred(ec, &stock__ec_mp, old, stock__ec_clamp,
	    (void *)(uintptr_t)deadline, deadline);
}
