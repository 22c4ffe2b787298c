/*
 * libstock — version: a seqlock (ck_sequence) plus a monotonic 64-bit
 * version, for records of several fields that are read far more often than
 * written (an order {price, qty, total}, a stock level with its totals).
 *
 * Readers never block and never write: they copy the fields between
 * stock_version_read_begin() and stock_version_read_retry(), and copy again
 * if a writer got in the way, so they never act on a torn record. Writers
 * bracket their changes with write_begin/write_end (or write_lock/unlock);
 * each completed write increases the version by exactly one.
 *
 * The version also serves optimistic writes ("compare-and-flush"): read the
 * record and its version, work without any lock, then either
 * stock_version_try_write_lock(v, seen) — write only if nobody wrote since —
 * or stock_version_compare_and_flush(v, seen, flush, arg) — run a write-behind
 * (e.g. persist the record) only if nothing changed since it was read, with
 * writers held off while it runs. Both return STOCK_ECONFLICT when the
 * version moved.
 *
 * Data fields shared with readers should be accessed with ck_pr_load_* /
 * ck_pr_store_* (on x86-64 plain moves): C11 treats the racing copy a
 * seqlock reader makes as a data race unless the accesses are atomic, and
 * ThreadSanitizer reports it. The record must stay valid while readers copy
 * it (readers may copy fields of a record being rewritten, never freed).
 *
 * Writers must be serialised: either use the _lock functions (the embedded
 * mutex), or hold a lock of your own around write_begin/write_end. The
 * optimistic functions (try_write_lock, compare_and_flush) exclude only
 * writers that use the embedded lock, so use the _lock functions for every
 * writer of a record that is flushed optimistically.
 */
#ifndef STOCK_VERSION_H
#define STOCK_VERSION_H

/* common.h first: under TSan it adjusts ck_pr before ck_sequence uses it. */
#include "common.h"

#include <ck_pr.h>
#include <ck_sequence.h>
#include <pthread.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct stock_version {
	ck_sequence_t seq;     /* private: odd while a write is in progress */
	uint64_t version;      /* private: completed writes; stock_version_get() */
	pthread_mutex_t lock;  /* private: writer lock of the _lock functions */
};
typedef struct stock_version stock_version_t;

#define STOCK_VERSION_INITIALIZER                                             \
	{                                                                     \
		.seq = CK_SEQUENCE_INITIALIZER, .version = 0,                 \
		.lock = PTHREAD_MUTEX_INITIALIZER                             \
	}

/**
 * stock_version_init - initialise @v at version 0.
 * Returns 0, STOCK_EINVAL (@v NULL) or STOCK_ESYS (mutex creation failed).
 * Not thread-safe against other use of @v. STOCK_VERSION_INITIALIZER
 * initialises statically.
 */
STOCK_EXTERN int stock_version_init(struct stock_version *v);

/**
 * stock_version_destroy - release @v's resources. Safe on NULL. No thread
 * may be using @v.
 */
STOCK_EXTERN void stock_version_destroy(struct stock_version *v);

/**
 * stock_version_read_begin - start a consistent read; returns a token.
 *
 * Waits (spinning, never sleeping) while a write is in progress, so the copy
 * that follows starts from a complete record. Pass the token to
 * stock_version_read_retry(). Lock-free for readers; thread-safe; nests.
 *
 *     do {
 *             t = stock_version_read_begin(&o->v);
 *             price = ck_pr_load_64(&o->price);
 *             qty = ck_pr_load_64(&o->qty);
 *             seen = stock_version_get(&o->v);
 *     } while (stock_version_read_retry(&o->v, t));
 */
STOCK_INLINE unsigned int
stock_version_read_begin(const struct stock_version *v)
{
	return ck_sequence_read_begin(&v->seq);
}

/**
 * stock_version_read_retry - true if a write overlapped the read that
 * started with @token: the copy may be torn, read again. False: everything
 * read since read_begin (stock_version_get() included) is one consistent
 * state. Thread-safe.
 */
STOCK_INLINE bool
stock_version_read_retry(const struct stock_version *v, unsigned int token)
{
	return ck_sequence_read_retry(&v->seq, token);
}

/**
 * stock_version_get - the number of completed writes (acquire).
 *
 * Monotonic. Read between read_begin and a successful read_retry, it is the
 * version of exactly the state that was copied. Thread-safe; lock-free.
 */
STOCK_INLINE uint64_t
stock_version_get(const struct stock_version *v)
{
	uint64_t r = ck_pr_load_64(&v->version);

	ck_pr_fence_load();
	return r;
}

/**
 * stock_version_write_begin - start a write: readers now retry.
 *
 * Calling contract: the caller serialises writers itself (holds its own
 * lock) and does not use the embedded lock; see the file comment. Keep the
 * write short: readers spin while it lasts, and do not start a read of @v
 * on this thread before write_end.
 */
STOCK_INLINE void
stock_version_write_begin(struct stock_version *v)
{
	ck_sequence_write_begin(&v->seq);
}

/**
 * stock_version_write_end - finish the write started by write_begin.
 *
 * Returns the new version (previous + 1). The version changes inside the
 * write, so readers see the new fields and the new version together.
 * Calling contract: as write_begin, and called by the same writer.
 */
STOCK_INLINE uint64_t
stock_version_write_end(struct stock_version *v)
{
	uint64_t next = v->version + 1;

	ck_pr_store_64(&v->version, next);
	ck_sequence_write_end(&v->seq);
	return next;
}

/**
 * stock_version_write_lock - take the embedded writer lock and begin a write.
 * Blocks while another writer (or a compare_and_flush) holds the lock.
 * Thread-safe. Calling contract: do not start a read of @v while holding
 * its write lock (read_begin would spin forever on this thread's own write).
 */
STOCK_EXTERN void stock_version_write_lock(struct stock_version *v);

/**
 * stock_version_write_unlock - finish the write and release the lock.
 * Returns the new version. Called by the thread that holds the lock.
 */
STOCK_EXTERN uint64_t stock_version_write_unlock(struct stock_version *v);

/**
 * stock_version_try_write_lock - begin a write only if the version is still
 * @expected (optimistic write).
 *
 * Takes the writer lock; if the version equals @expected the write has begun
 * and the caller finishes it with stock_version_write_unlock(). Otherwise
 * releases the lock and returns STOCK_ECONFLICT: somebody wrote since the
 * caller read @expected, re-read and decide again.
 * Returns 0, STOCK_ECONFLICT or STOCK_EINVAL (@v NULL). Thread-safe; may
 * block briefly for the lock.
 */
STOCK_EXTERN int stock_version_try_write_lock(struct stock_version *v, uint64_t expected);

/* A write-behind run by stock_version_compare_and_flush; returns 0 or < 0. */
typedef int stock_version_flush_fn(void *arg, uint64_t version);

/**
 * stock_version_compare_and_flush - run @flush only if nothing was written
 * since version @expected.
 *
 * Takes the writer lock, compares, and calls flush(@arg, @expected) with the
 * lock held: writers that use the embedded lock wait until it returns, so the
 * record stays exactly as it was read; readers are not disturbed (no write
 * is begun, the version does not change).
 * Returns @flush's return value, STOCK_ECONFLICT (the version moved; @flush
 * not called) or STOCK_EINVAL (@v or @flush NULL). Thread-safe. @flush must
 * not write @v through the _lock functions (it would deadlock).
 */
STOCK_EXTERN int stock_version_compare_and_flush(struct stock_version *v, uint64_t expected,
    stock_version_flush_fn *flush, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_VERSION_H */
