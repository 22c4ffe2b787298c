/*
 * The catalog (inventory/catalog.h): the one table of OneStock items and
 * the ManyStock seed list, shared by both inventory modes, the routes and
 * the metrics labels.
 */
#include <string.h>

#include "inventory/catalog.h"

const struct catalog_item catalog_one[CATALOG_ONE_COUNT] = {
	[CATALOG_ONE_DB] = { "OneStock:Db", "db", STOCK_STRATEGY_ATOMIC, true },
	[CATALOG_ONE_ATOMIC] = { "OneStock:Atomic", "atomic", STOCK_STRATEGY_ATOMIC, false },
	[CATALOG_ONE_SIGNAL] = { "OneStock:Signal", "signal", STOCK_STRATEGY_SIGNAL, false },
	[CATALOG_ONE_LOCK] = { "OneStock:Lock", "lock", STOCK_STRATEGY_LOCKED, false },
};

const char *const catalog_many_seed[] = { "NVDA", "TSLA", "AMD" };
const size_t catalog_many_seed_count = sizeof catalog_many_seed / sizeof catalog_many_seed[0];

const struct catalog_item *
catalog_one_find(const char *sku)
{
	for (int i = 0; i < CATALOG_ONE_COUNT; i++)
		if (strcmp(sku, catalog_one[i].sku) == 0)
			return &catalog_one[i];
	return NULL;
}

bool
catalog_is_one(const char *sku)
{
	return strncmp(sku, CATALOG_ONE_PREFIX, sizeof CATALOG_ONE_PREFIX - 1) == 0;
}
