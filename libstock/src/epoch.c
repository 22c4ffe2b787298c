/*
 * Epoch reclamation domains: ck_epoch with the per-thread records handled by
 * the library (see epoch.h for the design).
 *
 * Record life cycle. A thread's first read through a domain looks in the
 * domain's pthread key, finds nothing, and takes a record: a free one left
 * by a thread that exited (ck_epoch_recycle) or a new one (ck_epoch_register,
 * cache-line aligned). The key's destructor gives the record back when the
 * thread exits (ck_epoch_unregister). The number of records therefore never
 * exceeds the largest number of threads that used the domain at the same
 * time. Records stay on ck_epoch's list until the domain is destroyed, which
 * frees them all; pthread_key_delete() makes sure no later thread exit calls
 * the destructor for a destroyed domain.
 */
#include <errno.h>
#include <stdlib.h>

#include "epoch.h"

CK_STACK_CONTAINER(struct ck_epoch_record, record_next, stock__epoch_record_of)

/* pthread key destructor: the thread is exiting, give its record back. */
static void
stock__epoch_thread_exit(void *p)
{
	ck_epoch_record_t *r = p;

	/* The next owner (after ck_epoch_recycle) acquires this. */
	STOCK__HB_RELEASE(r);
	ck_epoch_unregister(r);
}

static ck_epoch_record_t *
stock__epoch_record_new(struct stock__epoch *d)
{
	void *p;

	if (posix_memalign(&p, CK_MD_CACHELINE, sizeof(ck_epoch_record_t)) != 0)
		return NULL;
	ck_epoch_register(&d->epoch, p, d);
	return p;
}

int
stock__epoch_create(struct stock__epoch **out)
{
	struct stock__epoch *d;
	void *p;
	int err;

	if (posix_memalign(&p, STOCK_CACHELINE, sizeof *d) != 0)
		return STOCK_ENOMEM;
	d = p;
	ck_epoch_init(&d->epoch);
	d->readers = 0;
	d->hb = 0;
	d->defer = d->spare = NULL;
	if ((err = pthread_key_create(&d->key, stock__epoch_thread_exit)) != 0) {
		free(d);
		errno = err;
		return err == ENOMEM ? STOCK_ENOMEM : STOCK_ESYS;
	}
	if (pthread_mutex_init(&d->write_lock, NULL) != 0)
		goto fail_key;
	if (pthread_mutex_init(&d->sync_lock, NULL) != 0)
		goto fail_wlock;
	d->defer = stock__epoch_record_new(d);
	d->spare = stock__epoch_record_new(d);
	if (d->defer == NULL || d->spare == NULL) {
		/* Nothing can be using the domain yet: free them directly. */
		free(d->defer);
		free(d->spare);
		pthread_mutex_destroy(&d->sync_lock);
		pthread_mutex_destroy(&d->write_lock);
		pthread_key_delete(d->key);
		free(d);
		return STOCK_ENOMEM;
	}
	*out = d;
	return 0;

fail_wlock:
	pthread_mutex_destroy(&d->write_lock);
fail_key:
	pthread_key_delete(d->key);
	free(d);
	return STOCK_ESYS;
}

void
stock__epoch_destroy(struct stock__epoch *d)
{
	ck_stack_entry_t *cursor, *next;

	if (d == NULL)
		return;
	/* Nobody reads any more: every pending callback may run now. */
	ck_epoch_reclaim(d->defer);
	ck_epoch_reclaim(d->spare);
	/* No thread exit may call stock__epoch_thread_exit for us from now on. */
	pthread_key_delete(d->key);
	CK_STACK_FOREACH_SAFE(&d->epoch.records, cursor, next)
		free(stock__epoch_record_of(cursor));
	pthread_mutex_destroy(&d->sync_lock);
	pthread_mutex_destroy(&d->write_lock);
	free(d);
}

int
stock__epoch_register(struct stock__epoch *d, ck_epoch_record_t **out)
{
	ck_epoch_record_t *r;
	int err;

	r = ck_epoch_recycle(&d->epoch, d);
	if (r != NULL) {
		/* Pairs with the release in stock__epoch_thread_exit. */
		STOCK__HB_ACQUIRE(r);
	} else {
		r = stock__epoch_record_new(d);
		if (r == NULL)
			return STOCK_ENOMEM;
		ck_pr_inc_uint(&d->readers);
	}
	if ((err = pthread_setspecific(d->key, r)) != 0) {
		stock__epoch_thread_exit(r);
		errno = err;
		return err == ENOMEM ? STOCK_ENOMEM : STOCK_ESYS;
	}
	*out = r;
	return 0;
}

void
stock__epoch_defer(struct stock__epoch *d, ck_epoch_entry_t *e, ck_epoch_cb_t *fn)
{
	/*
	 * The caller's unlinking store must be visible before ck_epoch_call
	 * reads the global epoch (store->load order, which x86-64 does not give
	 * for free): otherwise a reader could enter a newer epoch, still see
	 * the object, and the object would be filed under an epoch that is
	 * reclaimed too early.
	 */
	ck_pr_fence_memory();
	ck_epoch_call(d->defer, e, fn);
}

void
stock__epoch_poll(struct stock__epoch *d)
{
	(void)ck_epoch_poll(d->defer);
}

void
stock__epoch_synchronize(struct stock__epoch *d)
{
	ck_epoch_record_t *old;

	pthread_mutex_lock(&d->sync_lock);
	pthread_mutex_lock(&d->write_lock);
	old = d->defer;
	d->defer = d->spare;
	pthread_mutex_unlock(&d->write_lock);

	/* Everything in `old` was retired before this point. */
	ck_epoch_synchronize(old);
	ck_epoch_reclaim(old);

	d->spare = old;
	pthread_mutex_unlock(&d->sync_lock);
}

unsigned int
stock__epoch_records(const struct stock__epoch *d)
{
	return ck_pr_load_uint(&d->readers);
}

unsigned int
stock__epoch_records_free(const struct stock__epoch *d)
{
	return ck_pr_load_uint(&d->epoch.n_free);
}
