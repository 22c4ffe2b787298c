/*
 * libstock — hold expiry: a hierarchical timing wheel for deadlines.
 *
 * A reservation (stock_counter_reserve) should not hold stock forever: each
 * hold gets a deadline, and when it passes the hold is released. With
 * millions of holds the deadlines must be cheap to add and to cancel (most
 * holds are committed or released long before they expire), and expiring
 * them must cost time proportional to what actually expires, not to what is
 * armed. That is the hierarchical timing wheel of Varghese & Lauck (scheme 7,
 * "Hashed and Hierarchical Timing Wheels", 1987), as in the Linux kernel's
 * pre-4.8 timer wheel and Kafka's purgatory:
 *
 *   - time is cut into ticks of tick_ns; level 0 has 64 slots, one per tick
 *     of the next 64; level k has 64 slots of 64^k ticks each. A timer sits
 *     in the slot of the lowest level whose span reaches its tick. Far-future
 *     deadlines sit high and cascade down a level each time the wheel enters
 *     their slot, until level 0 expires them: every timer is moved at most
 *     once per level.
 *   - a timer is an intrusive node the caller embeds in its own object
 *     (struct stock_wheel_timer): add and cancel are O(1) list operations,
 *     and the wheel's memory is its slot heads (64 per level, about 8 KB for
 *     1 ms ticks) plus nothing per timer.
 *   - empty stretches are skipped with a 64-bit bitmap of non-empty slots per
 *     level: advancing by hours of idle time costs a few bit scans.
 *
 * Precision: a timer with deadline d expires at tick x = ceil(d / tick_ns);
 * stock_wheel_poll(now) returns it once now >= x * tick_ns, so never before
 * its deadline and at most tick_ns - 1 ns after it (plus however late the
 * caller polls). Cascading keeps this one-tick bound at every level.
 *
 * Thread-safety: one mutex per wheel. Any number of threads may add and
 * cancel while one (or more) polls; every operation holds the mutex for O(1)
 * work, except a poll, which also moves what expires or cascades in the
 * ticks it crosses.
 */
#ifndef STOCK_WHEEL_H
#define STOCK_WHEEL_H

#include <pthread.h>
#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest deadline (and `now`) the wheel accepts, in ns: about 146 years of
   CLOCK_MONOTONIC. */
#define STOCK_WHEEL_DEADLINE_MAX STOCK_COUNT_MAX

/* Slot heads and the links of a timer: a circular doubly linked list. */
struct stock_wheel_link {
	struct stock_wheel_link *next; /* private: NULL while the timer is not armed */
	struct stock_wheel_link *prev; /* private */
};

/*
 * A timer, embedded by the caller in the object it times out (recover the
 * object with offsetof, or keep a pointer in @arg). It is armed from a
 * successful stock_wheel_add until it is cancelled or returned by a poll;
 * while armed the wheel owns its links and the caller must not move, free or
 * re-initialise it.
 */
struct stock_wheel_timer {
	struct stock_wheel_link link; /* private: must stay the first member */
	uint64_t tick;                /* private: the expiry tick */
	uint64_t deadline;            /* read-only: the deadline of the last add, ns */
	void *arg;                    /* public: the caller's; the wheel never reads it */
	uint32_t where;               /* private: level * 64 + slot, or due */
};
typedef struct stock_wheel_timer stock_wheel_timer_t;

#define STOCK_WHEEL_TIMER_INITIALIZER(user_arg)                           \
	{                                                                     \
		.link = { NULL, NULL }, .tick = 0, .deadline = 0,             \
		.arg = (user_arg), .where = 0                                 \
	}

#define STOCK__WHEEL_MAX_LEVELS 11 /* 64^11 > 2^62 ticks of 1 ns */

struct stock_wheel {
	pthread_mutex_t lock;      /* private */
	uint64_t tick_ns;          /* read-only */
	uint64_t cur;              /* private: the first tick not yet processed */
	uint64_t armed;            /* private: armed timers (ck_pr: stock_wheel_count) */
	uint64_t queued;           /* private: armed timers in the levels (not due) */
	uint64_t due_count;        /* private: timers expired and not yet returned */
	unsigned levels;           /* private: levels in use for this tick */
	uint64_t bitmap[STOCK__WHEEL_MAX_LEVELS]; /* private: non-empty slots */
	struct stock_wheel_link *slots;           /* private: levels * 64 heads */
	struct stock_wheel_link due;              /* private: expired, in tick order */
};
typedef struct stock_wheel stock_wheel_t;

/* A poll callback: @t has expired and is no longer armed (re-add it, free it). */
typedef void stock_wheel_fn(struct stock_wheel_timer *t, void *arg);

/**
 * stock_wheel_init - initialise an empty wheel of @tick_ns ticks whose time
 * is @now_ns (CLOCK_MONOTONIC ns, e.g. stock_now_ns(); any clock the caller
 * keeps using works).
 *
 * @tick_ns is the precision (timers fire less than one tick late); any value
 * from 1 ns works, 1 ms (1000000) suits reservation holds. Returns 0,
 * STOCK_EINVAL (@w NULL, @tick_ns 0), STOCK_ERANGE (@tick_ns or @now_ns above
 * STOCK_WHEEL_DEADLINE_MAX), STOCK_ENOMEM or STOCK_ESYS. Allocates the slot
 * heads (64 per level: 8 levels, 8 KB, for 1 ms ticks). Not thread-safe
 * against other use of @w.
 */
STOCK_EXTERN int stock_wheel_init(struct stock_wheel *w, uint64_t tick_ns, uint64_t now_ns);

/**
 * stock_wheel_destroy - free the slot heads. Safe on NULL; no concurrent use.
 *
 * Timers still armed are forgotten, not touched: they are the caller's memory
 * (stock_wheel_timer_init them before adding them to another wheel).
 */
STOCK_EXTERN void stock_wheel_destroy(struct stock_wheel *w);

/**
 * stock_wheel_timer_init - make @t a timer that is not armed, with user
 * pointer @arg. STOCK_WHEEL_TIMER_INITIALIZER(arg) is equivalent for static
 * or aggregate initialisation. Safe on NULL. Must not be called while @t is
 * armed.
 */
STOCK_EXTERN void stock_wheel_timer_init(struct stock_wheel_timer *t, void *arg);

/**
 * stock_wheel_add - arm @t to expire at @deadline_ns.
 *
 * O(1). A deadline at or before the wheel's time (the latest now it was
 * polled or initialised with) makes @t due at once: the next poll returns it.
 * @t must not be armed in another wheel. Returns 0, STOCK_EINVAL (@w or @t
 * NULL), STOCK_EEXIST (@t is already armed: cancel it first; nothing
 * changes) or STOCK_ERANGE (@deadline_ns above STOCK_WHEEL_DEADLINE_MAX).
 * Thread-safe.
 */
STOCK_EXTERN int stock_wheel_add(struct stock_wheel *w, struct stock_wheel_timer *t,
    uint64_t deadline_ns);

/**
 * stock_wheel_cancel - disarm @t, armed in @w, so that no poll returns it.
 *
 * O(1). Returns 0 (it was armed; now it is not and will not fire),
 * STOCK_ENOENT (it was not armed: never added, cancelled already, or already
 * returned by a poll — which may be running its callback right now) or
 * STOCK_EINVAL (NULL). Exactly one of "cancel returns 0" and "a poll returns
 * @t" happens for each add. Thread-safe.
 */
STOCK_EXTERN int stock_wheel_cancel(struct stock_wheel *w, struct stock_wheel_timer *t);

/**
 * stock_wheel_poll - advance the wheel's time to @now_ns and take up to @max
 * expired timers.
 *
 * Every timer whose expiry tick has been reached (ceil(deadline / tick_ns) *
 * tick_ns <= @now_ns) is due; up to @max of them are disarmed and stored in
 * @out, in order of expiry tick (timers added when already due queue behind
 * those due before them); the rest stay due — armed, cancellable — for the
 * next call. A @now_ns below the wheel's time is the wheel's time (time never
 * goes back); a @now_ns of STOCK_WHEEL_DEADLINE_MAX or more makes every
 * armed timer due. Returns the number stored (0 if @w or @out is NULL or @max is
 * 0). Thread-safe; the cost is O(1) per timer that expires or cascades in the
 * ticks crossed, plus O(levels) per non-empty slot reached.
 */
STOCK_EXTERN size_t stock_wheel_poll(struct stock_wheel *w, uint64_t now_ns,
    struct stock_wheel_timer **out, size_t max);

/**
 * stock_wheel_advance - advance to @now_ns and call @fn(t, @arg) for every
 * timer due then.
 *
 * The callbacks run on the calling thread without the wheel's mutex, so they
 * may add (re-arm @t, or others) and cancel; a timer they re-arm with a
 * deadline already passed is due at the next call, not fired again by this
 * one. Returns the number of callbacks made (0 if @w or @fn is NULL).
 * Thread-safe, but timers due at once are only split among concurrent
 * callers, never fired twice.
 */
STOCK_EXTERN size_t stock_wheel_advance(struct stock_wheel *w, uint64_t now_ns, stock_wheel_fn *fn,
    void *arg);

/**
 * stock_wheel_next - when to poll next: *@at_ns receives a time no later
 * than the earliest expiry tick of any armed timer (a due timer makes it the
 * wheel's time). Polling at *@at_ns makes progress; it may find only a
 * cascade to do (then ask again). Returns 0, STOCK_ENOENT (no timer armed;
 * *@at_ns untouched) or STOCK_EINVAL (NULL). Thread-safe.
 */
STOCK_EXTERN int stock_wheel_next(struct stock_wheel *w, uint64_t *at_ns);

/**
 * stock_wheel_count - timers armed now (due ones included). A racy hint for
 * metrics and tests; 0 for NULL. Thread-safe.
 */
STOCK_EXTERN uint64_t stock_wheel_count(const struct stock_wheel *w);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_WHEEL_H */
