/*
 * Internal helpers shared by the library's .c files. Nothing here is part of
 * the public API; every symbol is hidden (stock__ prefix, no STOCK_EXTERN).
 */
#ifndef STOCK_INTERNAL_H
#define STOCK_INTERNAL_H

#include <ck_ec.h>
#include <stdbool.h>

#include "stock/common.h"

/*
 * The Linux futex operations that ck_ec needs (gettime on CLOCK_MONOTONIC,
 * wait32/wait64 with an absolute deadline, wake32/wake64 waking everyone).
 * stock__ec_mp is the multi-producer mode every primitive uses.
 */
extern const struct ck_ec_ops stock__ec_ops;
extern const struct ck_ec_mode stock__ec_mp;

/*
 * Waits while @ec still holds @old, until @deadline (absolute
 * CLOCK_MONOTONIC, NULL = forever). Unlike a bare ck_ec32_wait it never
 * sleeps past the deadline. Returns 0 when the count changed, -1 on deadline.
 */
int stock__ec32_wait(struct ck_ec32 *ec, uint32_t old, const struct timespec *deadline);

/* Sleep while *@addr == @expected, until @deadline (absolute, CLOCK_MONOTONIC;
   NULL: none); spurious returns happen. Wake every sleeper on @addr: the
   address is a key only, its memory is not touched (ec.c). */
void stock__futex_wait(const uint32_t *addr, uint32_t expected, const struct timespec *deadline);
void stock__futex_wake(const uint32_t *addr);

/*
 * ThreadSanitizer annotations. ConcurrencyKit's out-of-line parts (ck_epoch
 * grace periods, ck_hs, ck_ec slow paths) come from the system libck, which is
 * not instrumented, so TSan cannot see the happens-before edges they create.
 * The primitives that rely on those edges state them explicitly with these
 * macros; they compile to nothing outside `make check-tsan`.
 */
#if defined(__SANITIZE_THREAD__)
#define STOCK__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define STOCK__TSAN 1
#endif
#endif

#ifdef STOCK__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define STOCK__HB_RELEASE(addr) __tsan_release((void *)(addr))
#define STOCK__HB_ACQUIRE(addr) __tsan_acquire((void *)(addr))
#else
#define STOCK__HB_RELEASE(addr) ((void)(addr))
#define STOCK__HB_ACQUIRE(addr) ((void)(addr))
#endif

/*
 * Under TSan, ck_pr is built from compiler builtins (see stock/common.h). Its
 * generic fallbacks for operations GCC has no builtin for (ck_pr_fas_*,
 * ck_pr_bts_*, ...) read with plain volatile loads that TSan reports; the
 * library uses CAS loops instead of those.
 */

/* Returns true when @deadline (CLOCK_MONOTONIC, may be NULL) has passed. */
bool stock__deadline_passed(const struct timespec *deadline);

#endif /* STOCK_INTERNAL_H */
