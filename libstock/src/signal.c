/*
 * Auto-reset event with single-waiter wake-up, on ck_ec.
 *
 * `signaled` is the event's state (0/1), changed only by atomic RMW. Threads
 * that find it clear queue up in a FIFO guarded by a mutex, each sleeping on
 * its own ck_ec32 event count that lives on its stack. set() flips the state
 * and, if anybody is queued, dequeues the head and bumps that waiter's event
 * count: exactly one futex wake per set, however many threads wait.
 *
 * No lost wake-up (a Dekker-style handshake): a waiter publishes itself
 * (nwaiters++, a full barrier) before re-checking `signaled`; set() makes
 * `signaled` 1 (a full barrier) before reading `nwaiters`. So either the
 * waiter sees the event set, or set() sees the waiter and wakes someone.
 *
 * A woken waiter competes for the event with threads arriving on the fast
 * path (barging, as with a futex mutex): if it loses, it queues again. This
 * keeps the hand-over off the critical path when threads outnumber cores.
 *
 * Waiter nodes live on the waiter's stack, so a waiter never returns while a
 * setter may still touch its node: the setter publishes `released` after its
 * last access and a dequeued waiter waits for it.
 */
#include <sched.h>

#include "stock/signal.h"
#include "internal.h"

struct stock__signal_waiter {
	struct ck_ec32 ec;                  /* bumped once by the dequeuing setter */
	uint32_t released;                  /* setter no longer touches the node */
	bool queued;                        /* guarded by the signal's lock */
	struct stock__signal_waiter *next;  /* guarded by the signal's lock */
	struct stock__signal_waiter *prev;  /* guarded by the signal's lock */
};

int
stock_signal_init(struct stock_signal *s, bool set)
{
	if (s == NULL)
		return STOCK_EINVAL;
	s->signaled = set ? 1 : 0;
	s->nwaiters = 0;
	s->head = s->tail = NULL;
	if (pthread_mutex_init(&s->lock, NULL) != 0)
		return STOCK_ESYS;
	return 0;
}

void
stock_signal_destroy(struct stock_signal *s)
{
	if (s != NULL)
		pthread_mutex_destroy(&s->lock);
}

/* ---- queue, all under s->lock ---------------------------------------- */

static void
stock__signal_enqueue(struct stock_signal *s, struct stock__signal_waiter *w)
{
	w->next = NULL;
	w->prev = s->tail;
	if (s->tail != NULL)
		s->tail->next = w;
	else
		s->head = w;
	s->tail = w;
	w->queued = true;
	ck_pr_inc_32(&s->nwaiters);
}

static void
stock__signal_unlink(struct stock_signal *s, struct stock__signal_waiter *w)
{
	if (w->prev != NULL)
		w->prev->next = w->next;
	else
		s->head = w->next;
	if (w->next != NULL)
		w->next->prev = w->prev;
	else
		s->tail = w->prev;
	w->queued = false;
	ck_pr_dec_32(&s->nwaiters);
}

/* Removes @w if it is still queued; false if a setter dequeued it first. */
static bool
stock__signal_leave(struct stock_signal *s, struct stock__signal_waiter *w)
{
	bool was;

	pthread_mutex_lock(&s->lock);
	was = w->queued;
	if (was)
		stock__signal_unlink(s, w);
	pthread_mutex_unlock(&s->lock);
	return was;
}

/* A setter dequeued @w: wait for its bump and for it to let go of the node. */
static void
stock__signal_await_release(struct stock__signal_waiter *w)
{
	unsigned int i;

	ck_ec32_wait(&w->ec, &stock__ec_mp, 0, NULL);
	for (i = 0; ck_pr_load_32(&w->released) == 0; i++) {
		if (i < 128)
			ck_pr_stall();
		else
			sched_yield();
	}
}

/* ---- public operations ------------------------------------------------ */

int
stock_signal_try_wait(struct stock_signal *s)
{
	if (s == NULL)
		return STOCK_EINVAL;
	if (ck_pr_load_32(&s->signaled) != 0 && ck_pr_cas_32(&s->signaled, 1, 0))
		return 0;
	return STOCK_EBUSY;
}

int
stock_signal_wait(struct stock_signal *s, const struct timespec *deadline)
{
	struct stock__signal_waiter w;

	if (s == NULL)
		return STOCK_EINVAL;
	if (stock_signal_try_wait(s) == 0)
		return 0;

	for (;;) {
		ck_ec32_init(&w.ec, 0);
		w.released = 0;
		pthread_mutex_lock(&s->lock);
		stock__signal_enqueue(s, &w);
		pthread_mutex_unlock(&s->lock);
		ck_pr_fence_memory();

		/* Registered: a set() from now on will see us. Re-check. */
		if (ck_pr_cas_32(&s->signaled, 1, 0)) {
			if (!stock__signal_leave(s, &w))
				stock__signal_await_release(&w);
			return 0;
		}

		if (stock__ec32_wait(&w.ec, 0, deadline) == 0) {
			/* Dequeued and woken by a setter. */
			stock__signal_await_release(&w);
		} else if (stock__signal_leave(s, &w)) {
			return STOCK_ETIMEDOUT;
		} else {
			/* A setter dequeued us just as the deadline passed. */
			stock__signal_await_release(&w);
		}
		if (ck_pr_cas_32(&s->signaled, 1, 0))
			return 0;
		/* A thread on the fast path took it first; queue again. */
		if (stock__deadline_passed(deadline))
			return STOCK_ETIMEDOUT;
	}
}

int
stock_signal_set(struct stock_signal *s)
{
	struct stock__signal_waiter *w;

	if (s == NULL)
		return STOCK_EINVAL;
	/* Already set: sets coalesce, and any registered waiter re-checks.
	 * The CAS is a full barrier before reading nwaiters (Dekker). */
	if (ck_pr_load_32(&s->signaled) != 0 || !ck_pr_cas_32(&s->signaled, 0, 1))
		return 0;
	if (ck_pr_load_32(&s->nwaiters) == 0)
		return 0;

	pthread_mutex_lock(&s->lock);
	w = s->head;
	if (w != NULL)
		stock__signal_unlink(s, w);
	pthread_mutex_unlock(&s->lock);
	if (w != NULL) {
		ck_ec32_inc(&w->ec, &stock__ec_mp);
		ck_pr_store_32(&w->released, 1);
	}
	return 0;
}

bool
stock_signal_is_set(const struct stock_signal *s)
{
	return s != NULL && ck_pr_load_32(&s->signaled) != 0;
}

uint32_t
stock_signal_waiters(const struct stock_signal *s)
{
	return s == NULL ? 0 : ck_pr_load_32(&s->nwaiters);
}
