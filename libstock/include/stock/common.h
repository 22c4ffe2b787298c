/*
 * libstock — common definitions: version, export macro, error codes,
 * count limits and deadline helpers shared by every primitive.
 */
#ifndef STOCK_COMMON_H
#define STOCK_COMMON_H

#include <stdint.h>
#include <stddef.h>
#include <time.h>

#include <ck_pr.h>

/*
 * ThreadSanitizer builds compile ck_pr with CK_USE_CC_BUILTINS=1, whose loads
 * and stores are plain volatile accesses that TSan treats as data races
 * against atomic read-modify-writes. Map them to acquire loads and release
 * stores: that is exactly x86-64's memory model (TSO), the one ck_pr's
 * assembly relies on, so TSan checks the ordering the hardware really gives.
 * This must come before any other ck header so their inline code uses it.
 */
#if defined(__SANITIZE_THREAD__) && defined(CK_USE_CC_BUILTINS) && CK_USE_CC_BUILTINS
#undef CK_PR_LOAD_SAFE
#undef CK_PR_STORE_SAFE
#undef CK_PR_LOAD_PTR_SAFE
#undef CK_PR_STORE_PTR_SAFE
#define CK_PR_LOAD_SAFE(SRC, TYPE) __atomic_load_n((SRC), __ATOMIC_ACQUIRE)
#define CK_PR_STORE_SAFE(DST, VAL, TYPE) __atomic_store_n((DST), (VAL), __ATOMIC_RELEASE)
#define CK_PR_LOAD_PTR_SAFE(SRC) \
	((void *)__atomic_load_n((void *const *)(const void *)(SRC), __ATOMIC_ACQUIRE))
#define CK_PR_STORE_PTR_SAFE(DST, VAL) \
	__atomic_store_n((void **)(void *)(DST), (void *)(VAL), __ATOMIC_RELEASE)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Library version. The Makefile reads these three lines. */
#define STOCK_VERSION_MAJOR 0
#define STOCK_VERSION_MINOR 2
#define STOCK_VERSION_PATCH 0

#define STOCK_VERSION_HEX \
	((STOCK_VERSION_MAJOR << 16) | (STOCK_VERSION_MINOR << 8) | STOCK_VERSION_PATCH)

/* Symbols marked STOCK_EXTERN are the public ABI; everything else is hidden. */
#if defined(__GNUC__)
#define STOCK_EXTERN __attribute__((visibility("default")))
#else
#define STOCK_EXTERN
#endif

#if defined(__GNUC__)
#define STOCK_INLINE static inline __attribute__((always_inline))
#define STOCK_LIKELY(x) __builtin_expect(!!(x), 1)
#define STOCK_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define STOCK_INLINE static inline
#define STOCK_LIKELY(x) (x)
#define STOCK_UNLIKELY(x) (x)
#endif

/* Size used to keep independently written words on separate cache lines. */
#define STOCK_CACHELINE 64

/*
 * Largest count any primitive accepts (remaining, sold, quantity, permits).
 * 2^62 - 1 leaves head room so that sums of two valid counts never wrap.
 */
#define STOCK_COUNT_MAX ((uint64_t)0x3fffffffffffffffULL)

/*
 * Error codes. Every function that can fail returns 0 on success or one of
 * these negative values. The table is the single source for the names and
 * the messages returned by stock_err_name() and stock_strerror().
 *
 *   STOCK_EINVAL    an argument is invalid (n == 0, NULL, out of range)
 *   STOCK_ESOLDOUT  a take asked for more units than remain; nothing changed
 *   STOCK_EREFUND   a put would refund more units than were sold; nothing changed
 *   STOCK_ETIMEDOUT the deadline passed before the operation could complete
 *   STOCK_EBUSY     a non-blocking acquire found nothing available
 *   STOCK_EOPEN     the circuit breaker is open (or isolated); call rejected
 *   STOCK_ENOMEM    memory allocation failed; nothing changed
 *   STOCK_EEXIST    the key is already present
 *   STOCK_ENOENT    the key is not present
 *   STOCK_ERANGE    a count would exceed STOCK_COUNT_MAX
 *   STOCK_ECONFLICT an optimistic write lost: the version changed meanwhile
 *   STOCK_ESYS      a system call failed unexpectedly (errno is preserved)
 *   STOCK_ECLOSED   the object is closed (shutting down); nothing changed
 *   STOCK_EHELD     a commit or release asked for more units than are held;
 *                   nothing changed
 */
#define STOCK_ERRNO_MAP(X)                                                    \
	X(EINVAL, -1, "invalid argument")                                     \
	X(ESOLDOUT, -2, "not enough stock remaining")                         \
	X(EREFUND, -3, "refund exceeds units sold")                           \
	X(ETIMEDOUT, -4, "deadline passed")                                   \
	X(EBUSY, -5, "nothing available without waiting")                    \
	X(EOPEN, -6, "circuit breaker is open")                               \
	X(ENOMEM, -7, "out of memory")                                        \
	X(EEXIST, -8, "key already exists")                                   \
	X(ENOENT, -9, "no such key")                                          \
	X(ERANGE, -10, "count out of range")                                  \
	X(ECONFLICT, -11, "version changed since it was read")                \
	X(ESYS, -12, "system call failed")                                    \
	X(ECLOSED, -13, "closed: shutting down")                              \
	X(EHELD, -14, "commit or release exceeds units held")

enum stock_errno {
#define STOCK__ERR_ENUM(name, value, msg) STOCK_##name = (value),
	STOCK_ERRNO_MAP(STOCK__ERR_ENUM)
#undef STOCK__ERR_ENUM
	STOCK__ERR_LAST = -15
};

/**
 * stock_strerror - human-readable message for a libstock status code.
 * @err: 0 or a negative STOCK_E* code.
 *
 * Returns a static string ("success" for 0, "unknown error" for a value not in
 * the table). Thread-safe; never returns NULL.
 */
STOCK_EXTERN const char *stock_strerror(int err);

/**
 * stock_err_name - symbolic name of a status code ("STOCK_ESOLDOUT").
 * @err: 0 or a negative STOCK_E* code.
 *
 * Returns a static string ("STOCK_OK" for 0, "STOCK_EUNKNOWN" otherwise).
 * Thread-safe; never returns NULL.
 */
STOCK_EXTERN const char *stock_err_name(int err);

/**
 * stock_library_version - the library's version as "MAJOR.MINOR.PATCH".
 *
 * Returns the version the shared object was built as, which may differ from
 * the STOCK_VERSION_* macros a program was compiled against.
 */
STOCK_EXTERN const char *stock_library_version(void);

/*
 * Deadlines. Every blocking call takes `const struct timespec *deadline`: an
 * absolute time on CLOCK_MONOTONIC, or NULL to wait without limit. A deadline
 * already in the past makes the call a non-blocking attempt.
 */

/**
 * stock_deadline_in - compute the absolute deadline @ms milliseconds from now.
 * @out: receives the deadline (CLOCK_MONOTONIC).
 * @ms:  relative timeout in milliseconds.
 *
 * Returns 0, or STOCK_EINVAL when @out is NULL. Thread-safe.
 */
STOCK_EXTERN int stock_deadline_in(struct timespec *out, uint64_t ms);

/**
 * stock_now_ns - CLOCK_MONOTONIC in nanoseconds. Thread-safe.
 */
STOCK_EXTERN uint64_t stock_now_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_COMMON_H */
