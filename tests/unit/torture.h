/*
 * One torture harness, many counter variants (after ck's
 * regressions/ck_spinlock/validate): every strategy that claims the stock
 * counter contract is driven through the same ops table by the same threads.
 */
#ifndef STOCK_TEST_TORTURE_H
#define STOCK_TEST_TORTURE_H

#include <stock.h>

struct torture_ops {
	const char *name;
	void *(*create)(uint64_t remaining);
	void (*destroy)(void *obj);
	int (*take)(void *obj, uint64_t n);
	int (*put)(void *obj, uint64_t n);
	int (*set)(void *obj, uint64_t remaining);
	int (*read)(void *obj, struct stock_level *out);
};

/* Ops for a stock_counter of the given strategy. */
const struct torture_ops *torture_counter_ops(enum stock_strategy s);

/* Ops for one SKU of a stock_table (atomic strategy) among neighbours. */
const struct torture_ops *torture_table_ops(void);

/*
 * Phase 1: @threads threads race to sell @initial units with random takes of
 * 1..4 and refunds of 1..3 units they hold; a reader checks remaining + sold ==
 * initial and monotonic versions on every read. Ends sold out: successful
 * takes minus refunds must equal @initial exactly, never more.
 * Phase 2: the same with concurrent authoritative set() calls: sold must still
 * equal takes minus refunds exactly, reads stay consistent.
 * Fails the current Criterion test on any violation.
 */
void torture_run(const struct torture_ops *ops, int threads, uint64_t initial);

#endif
