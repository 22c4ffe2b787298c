/*
 * libstock — signal: an auto-reset event (the seed's AutoResetEvent).
 *
 * A signal is either set or not. stock_signal_set() sets it; a waiter that
 * finds it set consumes it (it resets automatically) and proceeds. When
 * threads are waiting, set() wakes exactly one of them — the one at the head
 * of a FIFO wait queue — instead of every sleeper, so a hand-over costs one
 * futex wake however many threads queue up. Sleeping is done on a per-waiter
 * ck_ec event count with the library's Linux futex ops; a waiter spins
 * briefly and then sleeps, it never busy-waits for long.
 *
 * Guarantees: no lost wake-up (a set() that happens while a thread is
 * registering as a waiter either lets that thread consume it or wakes a
 * queued waiter); several set() calls with nobody consuming in between
 * coalesce into one (it is an event, not a semaphore); timeouts are honoured
 * and a waiter that times out consumes nothing.
 */
#ifndef STOCK_SIGNAL_H
#define STOCK_SIGNAL_H

#include <pthread.h>
#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct stock__signal_waiter;

struct stock_signal {
	uint32_t signaled;                  /* private: 1 while set */
	uint32_t nwaiters;                  /* private: queued waiters */
	pthread_mutex_t lock;               /* private: guards the queue */
	struct stock__signal_waiter *head;  /* private: FIFO of sleepers */
	struct stock__signal_waiter *tail;  /* private */
};
typedef struct stock_signal stock_signal_t;

#define STOCK_SIGNAL_INITIALIZER(set)                                      \
	{                                                                  \
		.signaled = (set) ? 1u : 0u, .nwaiters = 0,                \
		.lock = PTHREAD_MUTEX_INITIALIZER, .head = NULL, .tail = NULL \
	}

/**
 * stock_signal_init - initialise an auto-reset event.
 * @s:   the event.
 * @set: initial state (true: the first waiter passes immediately).
 *
 * Returns 0, STOCK_EINVAL if @s is NULL, or STOCK_ESYS if the queue lock
 * cannot be created. Not thread-safe against other use of @s.
 */
STOCK_EXTERN int stock_signal_init(struct stock_signal *s, bool set);

/**
 * stock_signal_destroy - release an event's resources.
 *
 * Must not be called while any thread waits on @s. Safe on a NULL pointer.
 */
STOCK_EXTERN void stock_signal_destroy(struct stock_signal *s);

/**
 * stock_signal_wait - wait until the event is set, then consume it.
 * @s:        the event.
 * @deadline: absolute CLOCK_MONOTONIC deadline, or NULL to wait forever.
 *
 * Returns 0 when this thread consumed the signal (the event is now reset),
 * STOCK_ETIMEDOUT when @deadline passed first (nothing consumed), or
 * STOCK_EINVAL if @s is NULL. Thread-safe. Acts as an acquire barrier: writes
 * made before the matching stock_signal_set() are visible after return.
 */
STOCK_EXTERN int stock_signal_wait(struct stock_signal *s, const struct timespec *deadline);

/**
 * stock_signal_try_wait - consume the signal if it is set, never block.
 *
 * Returns 0 when consumed, STOCK_EBUSY when not set, STOCK_EINVAL if @s is
 * NULL. Thread-safe.
 */
STOCK_EXTERN int stock_signal_try_wait(struct stock_signal *s);

/**
 * stock_signal_set - set the event, waking exactly one waiter if any.
 *
 * If the event is already set, nothing changes (sets coalesce). Returns 0 or
 * STOCK_EINVAL if @s is NULL. Thread-safe; a release barrier.
 */
STOCK_EXTERN int stock_signal_set(struct stock_signal *s);

/**
 * stock_signal_is_set - whether the event is currently set (a racy hint).
 */
STOCK_EXTERN bool stock_signal_is_set(const struct stock_signal *s);

/**
 * stock_signal_waiters - how many threads are queued (a racy hint, for metrics).
 */
STOCK_EXTERN uint32_t stock_signal_waiters(const struct stock_signal *s);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_SIGNAL_H */
