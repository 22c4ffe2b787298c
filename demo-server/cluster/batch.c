/*
 * Group commit for durable buys on MongoDB.
 *
 * A Db/Buy on MongoDB is one conditional findAndModify (mongo_take). Under load, concurrent buyers of one SKU would each pay
 * a round trip, one after the other on the same document. Instead, the
 * first buyer to arrive becomes the leader: it takes every buy queued so
 * far, sends ONE take of their total quantity, and hands each buyer its own
 * result; buyers arriving meanwhile form the next batch. A batch is all or
 * nothing on the server (one filter stock >= total), so nobody can be
 * oversold; when the total does not fit (the last units), the leader falls
 * back to one take per buyer, in arrival order, so every unit that exists is
 * sold (likewise when the total would not fit a count). A failed round trip
 * (STOCK_ESYS) fails the whole batch: each buyer gets 503 and nothing is
 * retried (the batch may have been applied: units taken, never sold twice) —
 * the same contract as a single take.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/batch.h"
#include "common/assert.h"

struct take_req {
	uint64_t n;
	int rc;
	struct sku_doc after; /* the state just after this buy's own units */
	struct sku_doc doc;   /* the document as the round trip left it */
	bool done;
	struct take_req *next;
};

int
take_batcher_init(struct take_batcher *b, mongo_t *mongo, const char *sku, unsigned max_batch)
{
	memset(b, 0, sizeof *b);
	if (sku == NULL || !stock_sku_valid(sku, strlen(sku)))
		return STOCK_EINVAL;
	b->mongo = mongo;
	snprintf(b->sku, sizeof b->sku, "%s", sku);
	stock_gauge_init(&b->batches, 0);
	b->max_batch = max_batch ? max_batch : 256;
	if (pthread_mutex_init(&b->mu, NULL) != 0)
		return STOCK_ESYS;
	if (pthread_cond_init(&b->cv, NULL) != 0) {
		pthread_mutex_destroy(&b->mu);
		return STOCK_ESYS;
	}
	return 0;
}

void
take_batcher_destroy(struct take_batcher *b)
{
	pthread_cond_destroy(&b->cv);
	pthread_mutex_destroy(&b->mu);
}

uint64_t
take_batcher_batches(struct take_batcher *b)
{
	return stock_gauge_get(&b->batches);
}

/* One take per buyer, in arrival order. */
static void
commit_each(struct take_batcher *b, struct take_req *batch)
{
	for (struct take_req *r = batch; r != NULL; r = r->next) {
		r->rc = mongo_take(b->mongo, b->sku, r->n, &r->after);
		r->doc = r->after;
	}
}

/* One round trip for the whole batch; per-buyer takes if the total does not fit. */
static void
commit(struct take_batcher *b, struct take_req *batch)
{
	struct sku_doc after;
	uint64_t total = 0, later;
	int rc;

	for (struct take_req *r = batch; r != NULL; r = r->next) {
		ASSERT(r->n >= 1 && r->n <= STOCK_COUNT_MAX); /* checked by take_batcher_take */
		if (r->n > STOCK_COUNT_MAX - total) { /* the total would not fit a count */
			commit_each(b, batch);
			return;
		}
		total += r->n;
	}
	memset(&after, 0, sizeof after);
	rc = mongo_take(b->mongo, b->sku, total, &after);
	if (rc == 0) {
		/* Each buyer sees the state just after its own units, in batch
		   order; all of them share one version, which is the document's
		   state `after` only (a cache keyed by version must get that). */
		ASSERT(after.sold >= total);
		later = total;
		for (struct take_req *r = batch; r != NULL; r = r->next) {
			later -= r->n;
			r->rc = 0;
			r->doc = after;
			r->after = after;
			r->after.stock = after.stock + later;
			r->after.sold = after.sold - later;
		}
		stock_gauge_add(&b->batches, 1);
		return;
	}
	if ((rc == STOCK_ESOLDOUT || rc == STOCK_ERANGE) && batch->next != NULL) {
		commit_each(b, batch);
		return;
	}
	for (struct take_req *r = batch; r != NULL; r = r->next) {
		r->rc = rc;
		r->after = after;
		r->doc = after;
	}
}

int
take_batcher_take(struct take_batcher *b, uint64_t n, struct sku_doc *after, struct sku_doc *doc)
{
	struct take_req me = { .n = n };

	if (n == 0 || n > STOCK_COUNT_MAX)
		return STOCK_EINVAL;
	pthread_mutex_lock(&b->mu);
	if (b->tail != NULL)
		b->tail->next = &me;
	else
		b->head = &me;
	b->tail = &me;
	b->queued++;
	while (!me.done) {
		if (!b->leading) {
			/* Lead: take up to max_batch queued buys (ours included). */
			struct take_req *batch = b->head, *last = batch;
			unsigned k = 1;

			while (k < b->max_batch && last->next != NULL) {
				last = last->next;
				k++;
			}
			b->head = last->next;
			if (b->head == NULL)
				b->tail = NULL;
			last->next = NULL;
			b->queued -= k;
			b->leading = true;
			pthread_mutex_unlock(&b->mu);
			commit(b, batch);
			pthread_mutex_lock(&b->mu);
			for (struct take_req *r = batch; r != NULL;) {
				struct take_req *next = r->next;
				r->done = true; /* r may be gone once its owner sees this */
				r = next;
			}
			b->leading = false;
			pthread_cond_broadcast(&b->cv);
		} else {
			pthread_cond_wait(&b->cv, &b->mu);
		}
	}
	pthread_mutex_unlock(&b->mu);
	*after = me.after;
	if (doc != NULL)
		*doc = me.doc;
	return me.rc;
}
