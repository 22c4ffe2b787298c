/*
 * The catalog both modes serve, defined once: the seed's OneStock ticket,
 * one document per synchronization strategy (the four OneStock APIs), and
 * the ManyStock products seeded on first start. More ManyStock SKUs may
 * exist in a recovered store; the OneStock ones are exactly these.
 */
#ifndef DEMO_CATALOG_H
#define DEMO_CATALOG_H

#include <stdbool.h>
#include <stddef.h>

#include <stock.h>

enum catalog_one {
	CATALOG_ONE_DB,     /* durable: acknowledged after it is durable */
	CATALOG_ONE_ATOMIC, /* in-memory counters, journaled behind */
	CATALOG_ONE_SIGNAL,
	CATALOG_ONE_LOCK,
	CATALOG_ONE_COUNT
};

struct catalog_item {
	const char *sku;     /* the document: "OneStock:Db", ... */
	const char *label;   /* metrics label: "db", "atomic", ... */
	enum stock_strategy strategy;
	bool durable;
};

/* The OneStock items, indexed by enum catalog_one. */
extern const struct catalog_item catalog_one[CATALOG_ONE_COUNT];

/* ManyStock SKUs seeded on first start (the seed's NVDA, TSLA, AMD). */
extern const char *const catalog_many_seed[];
extern const size_t catalog_many_seed_count;

/* The prefix of every OneStock document id; ManyStock routes refuse it. */
#define CATALOG_ONE_PREFIX "OneStock:"

/** catalog_one_find - the OneStock item whose document is @sku, or NULL. */
const struct catalog_item *catalog_one_find(const char *sku);

/** catalog_is_one - true when @sku is in the OneStock namespace. */
bool catalog_is_one(const char *sku);

#endif /* DEMO_CATALOG_H */
