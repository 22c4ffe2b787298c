/*
 * Version (seqlock + monotonic version): the out-of-line half.
 *
 * Reading, stock_version_get and the raw write_begin/write_end are inline in
 * stock/version.h (ck_sequence is header-only). What lives here is the
 * embedded writer lock and the two optimistic operations built on it:
 * try_write_lock (write only if the version is still the one the caller
 * read) and compare_and_flush (run a write-behind only if nothing changed,
 * holding writers off while it runs). The version is only ever changed under
 * a write section, so comparing it under the writer lock is exact: a
 * conflict is reported if and only if a write completed after the caller
 * read @expected.
 */
#include "stock/version.h"
#include "internal.h"

int
stock_version_init(struct stock_version *v)
{
	if (v == NULL)
		return STOCK_EINVAL;
	ck_sequence_init(&v->seq);
	v->version = 0;
	if (pthread_mutex_init(&v->lock, NULL) != 0)
		return STOCK_ESYS;
	ck_pr_fence_store();
	return 0;
}

void
stock_version_destroy(struct stock_version *v)
{
	if (v == NULL)
		return;
	pthread_mutex_destroy(&v->lock);
}

void
stock_version_write_lock(struct stock_version *v)
{
	pthread_mutex_lock(&v->lock);
	stock_version_write_begin(v);
}

uint64_t
stock_version_write_unlock(struct stock_version *v)
{
	uint64_t next = stock_version_write_end(v);

	pthread_mutex_unlock(&v->lock);
	return next;
}

int
stock_version_try_write_lock(struct stock_version *v, uint64_t expected)
{
	if (v == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&v->lock);
	/* Writers of this version change it only under the lock we hold. */
	if (ck_pr_load_64(&v->version) != expected) {
		pthread_mutex_unlock(&v->lock);
		return STOCK_ECONFLICT;
	}
	stock_version_write_begin(v);
	return 0;
}

int
stock_version_compare_and_flush(struct stock_version *v, uint64_t expected,
    stock_version_flush_fn *flush, void *arg)
{
	int rc;

	if (v == NULL || flush == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&v->lock);
	if (ck_pr_load_64(&v->version) != expected) {
		pthread_mutex_unlock(&v->lock);
		return STOCK_ECONFLICT;
	}
	rc = flush(arg, expected);
	pthread_mutex_unlock(&v->lock);
	return rc;
}
