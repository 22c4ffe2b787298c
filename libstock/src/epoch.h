/*
 * Internal: an epoch-based reclamation domain (ck_epoch) with per-thread
 * reader records managed for the caller. Shared by the snapshot (RCU) and the
 * SKU table; nothing here is public.
 *
 * A domain owns one ck_epoch_t and three kinds of records:
 *
 *   reader records  one per thread that has read through the domain. A
 *                   thread gets its record lazily on first use (looked up
 *                   through a pthread key that belongs to the domain) and
 *                   gives it back when it exits (the key's destructor calls
 *                   ck_epoch_unregister; the next new thread takes it again
 *                   with ck_epoch_recycle). Reader records never hold
 *                   deferred callbacks, so giving one back never loses work.
 *   `defer`         the record every retirement goes to (ck_epoch_call) and
 *                   that writers poll (ck_epoch_poll). Guarded by write_lock,
 *                   which is also the owning module's writer lock.
 *   `spare`         an empty record, guarded by sync_lock. synchronize()
 *                   swaps it with `defer` under write_lock, waits for a grace
 *                   period without holding write_lock, then runs everything
 *                   the old record held: all of it was retired before the
 *                   swap, hence before the grace period began. Writers are
 *                   never blocked behind a grace period, so a reader may
 *                   publish from inside its read section without deadlock.
 *
 * ThreadSanitizer: ck_epoch's grace-period detection is in libck, which is
 * not instrumented. Every reader releases &hb when it leaves a read section
 * (stock__epoch_exit) and every deferred callback acquires &hb before it
 * frees anything (stock__epoch_reclaimed), which states exactly the edge
 * the grace period provides: accesses made inside sections that have ended
 * happen before the reclamation. Accesses inside a section that has not
 * ended are not covered, so a real use-after-free is still reported.
 */
#ifndef STOCK_EPOCH_H
#define STOCK_EPOCH_H

/* internal.h (common.h) first: under TSan it adjusts ck_pr for ck_epoch. */
#include "internal.h"

#include <ck_epoch.h>
#include <pthread.h>

struct stock__epoch {
	ck_epoch_t epoch;            /* the domain; read by every reader */
	pthread_key_t key;           /* thread -> its reader record */
	unsigned int readers;        /* ck_pr: reader records ever allocated */
	int hb;                      /* TSan happens-before token (address only) */
	pthread_mutex_t write_lock   /* the owning module's writer lock */
	    __attribute__((aligned(STOCK_CACHELINE)));
	ck_epoch_record_t *defer;    /* write_lock: retirements go here */
	pthread_mutex_t sync_lock;   /* serialises synchronize() */
	ck_epoch_record_t *spare;    /* sync_lock: always empty outside it */
};

/* Allocates and initialises a domain. Returns 0, STOCK_ENOMEM or STOCK_ESYS. */
int stock__epoch_create(struct stock__epoch **out);

/*
 * Runs every pending callback, then frees the records and the domain. No
 * thread may be using the domain, or exiting after having used it.
 */
void stock__epoch_destroy(struct stock__epoch *d);

/* Slow path of stock__epoch_reader: recycle or allocate, then remember. */
int stock__epoch_register(struct stock__epoch *d, ck_epoch_record_t **out);

/* The calling thread's reader record. Returns 0, STOCK_ENOMEM or STOCK_ESYS. */
static inline int
stock__epoch_reader(struct stock__epoch *d, ck_epoch_record_t **out)
{
	ck_epoch_record_t *r = pthread_getspecific(d->key);

	if (STOCK_LIKELY(r != NULL)) {
		*out = r;
		return 0;
	}
	return stock__epoch_register(d, out);
}

/* Enters a read section (nests). */
static inline void
stock__epoch_enter(ck_epoch_record_t *r)
{
	ck_epoch_begin(r, NULL);
}

/* Leaves a read section; see the TSan note above. */
static inline void
stock__epoch_exit(struct stock__epoch *d, ck_epoch_record_t *r)
{
	STOCK__HB_RELEASE(&d->hb);
	ck_epoch_end(r, NULL);
}

/* First statement of every deferred callback, before it frees anything. */
static inline void
stock__epoch_reclaimed(struct stock__epoch *d)
{
	STOCK__HB_ACQUIRE(&d->hb);
}

static inline void
stock__epoch_lock(struct stock__epoch *d)
{
	pthread_mutex_lock(&d->write_lock);
}

static inline void
stock__epoch_unlock(struct stock__epoch *d)
{
	pthread_mutex_unlock(&d->write_lock);
}

/*
 * Retires @e: @fn runs after a grace period. The caller holds write_lock and
 * has already made the object unreachable for new readers.
 */
void stock__epoch_defer(struct stock__epoch *d, ck_epoch_entry_t *e, ck_epoch_cb_t *fn);

/* Runs the callbacks whose grace period has passed. Caller holds write_lock. */
void stock__epoch_poll(struct stock__epoch *d);

/*
 * Waits for a grace period and runs every callback retired before the call.
 * Must be called outside a read section of @d and without write_lock.
 */
void stock__epoch_synchronize(struct stock__epoch *d);

/* Reader records allocated so far, and how many of them are free for reuse. */
unsigned int stock__epoch_records(const struct stock__epoch *d);
unsigned int stock__epoch_records_free(const struct stock__epoch *d);

#endif /* STOCK_EPOCH_H */
