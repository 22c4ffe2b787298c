/*
 * libstock — table: a SKU -> stock counter map (the seed's
 * ConcurrentDictionary<string, counter>), for catalogues of many products.
 *
 * Lookups are lock-free (ck_hs in single-writer/many-reader mode); inserts
 * and removes are serialised by the table's writer lock and never wait for
 * readers. A removed entry is freed only after every read section that could
 * have found it has ended (ck_epoch), so an entry found inside a read section
 * stays valid until that section ends. The counters use the strategy chosen
 * at creation (stock/counter.h); the convenience operations
 * (stock_table_take, _put, _set, _read) look up and operate inside a read
 * section of their own.
 *
 * SKUs are 1 to STOCK_SKU_MAX bytes from [A-Za-z0-9._:-], compared byte for
 * byte (case-sensitive); they need not be NUL-terminated. Anything else is
 * rejected with STOCK_EINVAL. The check is purely syntactic: ".", ".." or
 * "--" are valid SKUs; a caller that builds file names or URLs from SKUs must
 * apply its own rules.
 *
 * Per-thread ck_epoch records are managed by the library, as for the
 * snapshot: registered on a thread's first read, recycled when it exits. A
 * table uses one pthread key.
 *
 * Linearisation: an operation that overlaps the removal of its SKU may apply
 * to the entry being removed (it then happened before the removal). A
 * removed SKU may be inserted again; it is a new entry with a new counter.
 */
#ifndef STOCK_TABLE_H
#define STOCK_TABLE_H

#include <stdbool.h>

#include "common.h"
#include "counter.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest SKU, in bytes. */
#define STOCK_SKU_MAX 64

/* Opaque: create with stock_table_create, free with stock_table_destroy. */
struct stock_table;
typedef struct stock_table stock_table_t;

/* One read section, on the caller's stack (stock_table_read_begin). */
struct stock_table_section {
	void *record; /* private: the thread's epoch record, NULL if none */
};
typedef struct stock_table_section stock_table_section_t;

/*
 * Visitor for stock_table_foreach: @sku (NUL-terminated, @len bytes) and a
 * consistent reading of its counter. Return 0 to continue, anything else to
 * stop the walk with that value.
 */
typedef int stock_table_foreach_fn(const char *sku, size_t len, const struct stock_level *lvl,
    void *arg);

/**
 * stock_sku_valid - true if @s[0..@len) is a valid SKU: 1..STOCK_SKU_MAX
 * bytes, each in [A-Za-z0-9._:-]. False for a NULL @s. Thread-safe.
 */
STOCK_EXTERN bool stock_sku_valid(const char *s, size_t len);

/**
 * stock_table_create - create an empty table.
 * @out:           receives the table.
 * @strategy:      counter strategy of every entry (STOCK_STRATEGY_*).
 * @capacity_hint: expected number of SKUs (0 for a small default); the
 *                 table grows as needed, this only avoids early regrowth.
 *
 * Returns 0, STOCK_EINVAL (@out NULL or unknown strategy), STOCK_ENOMEM or
 * STOCK_ESYS (no pthread key left). The caller owns the table and frees it
 * with stock_table_destroy(). Thread-safe.
 */
STOCK_EXTERN int stock_table_create(stock_table_t **out, enum stock_strategy strategy,
    size_t capacity_hint);

/**
 * stock_table_destroy - free the table, every entry and every counter.
 *
 * Safe on NULL. No other thread may be using @t, or be exiting after having
 * used it (join such threads first); idle threads that used it may stay
 * alive. Counters obtained from stock_table_lookup() are freed too.
 */
STOCK_EXTERN void stock_table_destroy(stock_table_t *t);

/**
 * stock_table_strategy - the counter strategy @t (not NULL) was created
 * with. Thread-safe.
 */
STOCK_EXTERN enum stock_strategy stock_table_strategy(const stock_table_t *t);

/**
 * stock_table_insert - add @sku with @remaining units.
 *
 * Returns 0, STOCK_EINVAL (NULL @t or invalid SKU), STOCK_ERANGE (@remaining
 * > STOCK_COUNT_MAX), STOCK_EEXIST (already present; unchanged),
 * STOCK_ENOMEM or STOCK_ESYS (counter creation failed). Thread-safe;
 * serialised with other inserts and removes; never waits for readers, so it
 * may be called inside a read section.
 */
STOCK_EXTERN int stock_table_insert(stock_table_t *t, const char *sku, size_t len,
    uint64_t remaining);

/**
 * stock_table_remove - remove @sku.
 *
 * The entry disappears for lookups that start afterwards; its counter is
 * freed after the read sections that may still use it have ended.
 * Returns 0, STOCK_EINVAL (NULL @t or invalid SKU) or STOCK_ENOENT.
 * Thread-safe; serialised with inserts and removes; never waits for readers.
 */
STOCK_EXTERN int stock_table_remove(stock_table_t *t, const char *sku, size_t len);

/**
 * stock_table_take - sell @n units of @sku (stock_counter_take).
 *
 * Returns 0, STOCK_ESOLDOUT, STOCK_EINVAL (NULL @t, invalid SKU, @n == 0 or
 * > STOCK_COUNT_MAX), STOCK_ENOENT (no such SKU) or STOCK_ENOMEM (the thread
 * could not be registered). Thread-safe; the lookup is lock-free, the take
 * follows the table's strategy (a signal-strategy take may sleep).
 */
STOCK_EXTERN int stock_table_take(stock_table_t *t, const char *sku, size_t len, uint64_t n);

/**
 * stock_table_put - refund @n units of @sku (stock_counter_put).
 * Returns 0, STOCK_EREFUND, STOCK_EINVAL, STOCK_ENOENT or STOCK_ENOMEM.
 * Thread-safe, as stock_table_take.
 */
STOCK_EXTERN int stock_table_put(stock_table_t *t, const char *sku, size_t len, uint64_t n);

/**
 * stock_table_set - authoritative correction of @sku (stock_counter_set).
 * Returns 0, STOCK_ERANGE, STOCK_EINVAL, STOCK_ENOENT or STOCK_ENOMEM.
 * Thread-safe, as stock_table_take.
 */
STOCK_EXTERN int stock_table_set(stock_table_t *t, const char *sku, size_t len,
    uint64_t remaining);

/**
 * stock_table_read - a consistent {remaining, sold, version} of @sku.
 * Returns 0, STOCK_EINVAL (NULL argument or invalid SKU), STOCK_ENOENT or
 * STOCK_ENOMEM. Thread-safe, as stock_table_take.
 */
STOCK_EXTERN int stock_table_read(stock_table_t *t, const char *sku, size_t len,
    struct stock_level *out);

/**
 * stock_table_count - number of SKUs in the table (a snapshot; it may change
 * as soon as it is returned). 0 for NULL. Thread-safe; lock-free.
 */
STOCK_EXTERN size_t stock_table_count(const stock_table_t *t);

/**
 * stock_table_foreach - call @fn for every entry, inside one read section.
 *
 * With no concurrent inserts or removes every entry is visited exactly once.
 * With concurrent writers, entries present during the whole walk are
 * visited exactly once; entries inserted or removed during it may or may not
 * be. The order is unspecified. @fn may call any table function except
 * stock_table_destroy (writers do not wait for readers), and should be short:
 * memory of removed entries is held until the walk ends.
 * Returns 0 when every entry was visited, the first non-zero value @fn
 * returned (the walk stops there), or, before any call to @fn, STOCK_EINVAL
 * (NULL @t or @fn) or STOCK_ENOMEM. Thread-safe.
 */
STOCK_EXTERN int stock_table_foreach(stock_table_t *t, stock_table_foreach_fn *fn, void *arg);

/**
 * stock_table_read_begin - open a read section, for stock_table_lookup().
 *
 * Never blocks. Sections nest (each with its own @sec). Returns 0,
 * STOCK_EINVAL or STOCK_ENOMEM (the thread could not be registered; no
 * section is open and read_end(@t, @sec) is a no-op). The section belongs to
 * the calling thread.
 */
STOCK_EXTERN int stock_table_read_begin(stock_table_t *t, struct stock_table_section *sec);

/**
 * stock_table_read_end - close the section opened with @sec. Counters
 * looked up inside it must not be used afterwards. Never blocks; must be
 * called on the thread that opened the section.
 */
STOCK_EXTERN void stock_table_read_end(stock_table_t *t, struct stock_table_section *sec);

/**
 * stock_table_lookup - the counter of @sku, or NULL if absent or invalid.
 *
 * Calling contract: must be called inside a read section of @t opened by the
 * calling thread; the counter stays valid (even if @sku is removed
 * meanwhile) until that section ends. Use the stock_counter_* operations on
 * it; never destroy it. Lock-free; thread-safe.
 */
STOCK_EXTERN struct stock_counter *stock_table_lookup(stock_table_t *t, const char *sku,
    size_t len);

#ifdef __cplusplus
}
#endif

#endif /* STOCK_TABLE_H */
