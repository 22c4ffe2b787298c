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
	int (*take_level)(void *obj, uint64_t n, struct stock_level *after);
	int (*restock)(void *obj, uint64_t n);
	int (*reserve)(void *obj, uint64_t n);
	int (*commit)(void *obj, uint64_t n);
	int (*release)(void *obj, uint64_t n);
	/* 1: take_level's level is exact under any concurrency (locked, signal).
	   0: exact only while no put/set/restock races the take, else a real
	   state after it (atomic: stock_atomic_take_level in stock/counter.h). */
	int exact_levels;
};

/* Ops for a stock_counter of the given strategy. */
const struct torture_ops *torture_counter_ops(enum stock_strategy s);

/* Ops for one SKU of a stock_table (atomic strategy) among neighbours. */
const struct torture_ops *torture_table_ops(void);

/*
 * Phase 1: @threads threads race to sell @initial units with random takes of
 * 1..4 and refunds of 1..3 units they hold; a reader checks remaining + held +
 * sold == initial (held == 0) and monotonic versions on every read. Ends sold out: successful
 * takes minus refunds must equal @initial exactly, never more.
 * Phase 2: the same with concurrent authoritative set() calls: sold must still
 * equal takes minus refunds exactly, reads stay consistent.
 *
 * Then four level phases, where every take is a take_level() and every
 * successful one records (n, after), and a reader records read() levels:
 *   takes     only takes. Every strategy: the sold ranges [sold-n+1, sold]
 *             are disjoint and tile [1, initial] exactly, remaining + sold ==
 *             initial, versions are distinct and increase with sold, and
 *             read() levels interleave consistently (a higher version never
 *             has a lower sold; equal versions are identical levels).
 *   refunds   takes and refunds. Every strategy (levels are real states):
 *             remaining + sold == initial, sold >= n, equal versions are
 *             identical levels, each thread's versions strictly increase
 *             take after take. Exact strategies also: in version order the
 *             take levels form a valid sequential history (versions distinct;
 *             between two takes sold moves by +n minus the refunds between,
 *             which are >= 0).
 *   restocks  takes and a concurrent restocker (K restocks of R units).
 *             Every strategy: remaining + sold is initial + i*R for some
 *             i <= K, in version order sold and total never go down, equal
 *             versions are identical. Exact strategies also tile [1, sold].
 *   sets      takes, refunds and set() (1% of operations): sold >= n,
 *             equal versions identical, per-thread increasing versions;
 *             exact strategies also the sequential-history check (set keeps
 *             sold).
 *
 * Then the holds phase: every thread mixes take, put, reserve, commit and
 * release (each of 1..4 units, put/commit/release never more than the thread
 * itself has sold/holds) while a restocker delivers K lots of R units and a
 * reader reads. Every read: remaining + held + sold is initial + i*R for some
 * i <= K, no field above STOCK_COUNT_MAX, versions never go down, and a
 * thread's read after one of its own successful operations shows a higher
 * version than its read before it. A refused put/commit/release of units the
 * thread has is a failure. After the restocker, threads drain (no more puts
 * or releases) until sold out; then the final read must be exact: remaining
 * 0, held == sum over threads of reserved - committed - released, sold ==
 * sum of taken + committed - refunded, total == initial + K*R.
 * Fails the current Criterion test on any violation.
 */
void torture_run(const struct torture_ops *ops, int threads, uint64_t initial);

#endif
