/*
 * Group commit for durable buys on MongoDB (batch.c): concurrent Db buys of
 * one SKU share one conditional findAndModify.
 */
#ifndef DEMO_BATCH_H
#define DEMO_BATCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "store.h"

struct take_req;

struct take_batcher {
	store_t *store;
	char sku[STORE_SKU_MAX + 1];
	unsigned max_batch;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct take_req *head, *tail; /* buys waiting for the next batch */
	unsigned queued;
	bool leading;                 /* a leader's round trip is in flight */
	uint64_t batches;             /* atomic: batches committed whole */
};

/**
 * take_batcher_init - a batcher for @sku on the MongoDB store @st.
 * @max_batch: most buys per round trip (0: 256).
 * Returns 0 or STOCK_ESYS.
 */
int take_batcher_init(struct take_batcher *b, store_t *st, const char *sku, unsigned max_batch);

/** take_batcher_destroy - no take may be running. */
void take_batcher_destroy(struct take_batcher *b);

/**
 * take_batcher_take - buy @n units: store_mongo_take's contract (0,
 * STOCK_ESOLDOUT, STOCK_ENOENT, STOCK_ESYS; @after = the document just after
 * this buy's units), committed together with the buys that queued meanwhile.
 * Blocks for about one round trip (two under load). Thread-safe.
 */
int take_batcher_take(struct take_batcher *b, uint64_t n, struct store_doc *after);

#endif /* DEMO_BATCH_H */
