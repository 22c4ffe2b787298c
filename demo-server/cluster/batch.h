/*
 * Group commit for durable buys on MongoDB (batch.c): concurrent Db buys of
 * one SKU share one conditional findAndModify (mongo_take).
 */
#ifndef DEMO_BATCH_H
#define DEMO_BATCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <stock.h>

#include "common/doc.h"
#include "mongo/mongo.h"

struct take_req;

struct take_batcher {
	mongo_t *mongo;
	char sku[STOCK_SKU_MAX + 1];
	unsigned max_batch;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct take_req *head, *tail; /* buys waiting for the next batch */
	unsigned queued;
	bool leading;                 /* a leader's round trip is in flight */
	struct stock_gauge batches;   /* batches committed whole (take_batcher_batches) */
};

/**
 * take_batcher_init - a batcher for @sku on @mongo.
 * @max_batch: most buys per round trip (0: 256).
 * Returns 0, STOCK_EINVAL (not a valid SKU) or STOCK_ESYS.
 */
int take_batcher_init(struct take_batcher *b, mongo_t *mongo, const char *sku, unsigned max_batch);

/** take_batcher_destroy - no take may be running. */
void take_batcher_destroy(struct take_batcher *b);

/**
 * take_batcher_take - buy @n units: mongo_take's contract (0,
 * STOCK_ESOLDOUT, STOCK_ENOENT, STOCK_ESYS, STOCK_ERANGE, STOCK_ECONFLICT,
 * STOCK_EINVAL; @after = the document just after this buy's units on 0, the
 * current document on STOCK_ESOLDOUT), committed together with the buys
 * that queued meanwhile. @doc (may be NULL) receives the document as the
 * round trip left it: on 0 that is the state after the whole batch, which
 * shares @after's version but not, in general, its counts; anything that
 * caches states by version must take @doc, never @after. Blocks for about
 * one round trip (two under load). Thread-safe.
 */
int take_batcher_take(struct take_batcher *b, uint64_t n, struct sku_doc *after,
    struct sku_doc *doc);

/** take_batcher_batches - batches committed whole so far. Thread-safe. */
uint64_t take_batcher_batches(struct take_batcher *b);

#endif /* DEMO_BATCH_H */
