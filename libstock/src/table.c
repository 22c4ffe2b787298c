/*
 * SKU table: ck_hs (single writer, many lock-free readers) of entries that
 * each embed a stock_counter, with ck_epoch reclamation (epoch.c).
 *
 * Entries. ck_hs stores pointers to the `key` member of an entry {counter,
 * key {sku, len, hash}, name[]}; lookups probe with a key on the caller's
 * stack, so the compare callback sees the same type on both sides. The hash
 * is SipHash-1-3 under a per-table random key (SKUs arrive from HTTP, so
 * collisions must not be choosable by clients); it is cached in the key, so
 * ck_hs's own hash callback (used when it regrows) is a field read.
 *
 * Writers (insert/remove) hold the domain's write lock. A removed entry is
 * retired through the domain and freed after its grace period. ck_hs frees
 * its old bucket arrays through ck_malloc's free(ptr, size, defer): with
 * defer == true a reader may still be probing the old array, so it too is
 * retired through the epoch. ck_malloc passes no context, so the allocator
 * learns the table from `stock__table_current`, a thread-local set only while
 * the calling thread holds that table's write lock and cleared before it is
 * released (state per thread and per call, never shared); the allocation
 * header remembers the domain so the free callback does not depend on it.
 *
 * ThreadSanitizer: ck_hs is in libck (not instrumented), so the edge from a
 * writer building an entry to a reader finding it through ck_hs is invisible
 * to TSan. The writer releases &entry->key just before ck_hs_put; a reader
 * acquires it in the compare callback (the first instrumented code that
 * touches the entry) and after ck_hs_get / ck_hs_next_spmc. The grace-period
 * edge for freeing is stated by the domain (epoch.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <ck_hs.h>

#include "stock/table.h"
#include "epoch.h"

struct stock__table_key {
	const char *sku;    /* the entry's name, or the caller's bytes */
	size_t len;
	unsigned long hash; /* SipHash of sku[0..len) under the table's key */
};

struct stock__table_entry {
	struct stock_counter counter;  /* first: it is cache-line aligned */
	struct stock__table_key key;   /* ck_hs stores &key */
	struct stock_table *owner;     /* for the reclaim callback */
	ck_epoch_entry_t retire;       /* links the entry once removed */
	char name[STOCK_SKU_MAX + 1];  /* NUL-terminated copy of the SKU */
};

struct stock_table {
	ck_hs_t hs;                    /* written under the domain's write lock */
	struct ck_malloc alloc;        /* ck_hs's allocator (stock__table_hs_*) */
	struct stock__epoch *epoch;    /* readers' records, deferred frees */
	enum stock_strategy strategy;  /* of every counter */
	uint64_t count;                /* ck_pr: entries */
	size_t map_bytes;              /* write lock: last bucket array size */
	uint64_t k0, k1;               /* SipHash key */
};

/* Header in front of every ck_hs allocation. */
struct stock__table_block {
	ck_epoch_entry_t retire;       /* links the block when freed with defer */
	struct stock__epoch *epoch;    /* the table's domain */
} __attribute__((aligned(16)));

CK_EPOCH_CONTAINER(struct stock__table_entry, retire, stock__table_entry_of_retire)
CK_EPOCH_CONTAINER(struct stock__table_block, retire, stock__table_block_of_retire)

/* The table whose write lock this thread holds (see the file comment). */
static __thread struct stock_table *stock__table_current;

static inline struct stock__table_entry *
stock__table_entry_of_key(const void *key)
{
	return (struct stock__table_entry *)(void *)((char *)(uintptr_t)key -
	    offsetof(struct stock__table_entry, key));
}

/* ---------------------------------------------------------------------- */
/* SKUs and hashing                                                        */
/* ---------------------------------------------------------------------- */

bool
stock_sku_valid(const char *s, size_t len)
{
	if (s == NULL || len == 0 || len > STOCK_SKU_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			continue;
		if (c == '.' || c == '_' || c == ':' || c == '-')
			continue;
		return false;
	}
	return true;
}

#define STOCK__ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define STOCK__SIPROUND                                                      \
	do {                                                                 \
		v0 += v1; v1 = STOCK__ROTL(v1, 13); v1 ^= v0;               \
		v0 = STOCK__ROTL(v0, 32);                                    \
		v2 += v3; v3 = STOCK__ROTL(v3, 16); v3 ^= v2;               \
		v0 += v3; v3 = STOCK__ROTL(v3, 21); v3 ^= v0;               \
		v2 += v1; v1 = STOCK__ROTL(v1, 17); v1 ^= v2;               \
		v2 = STOCK__ROTL(v2, 32);                                    \
	} while (0)

/* SipHash-1-3 (one compression round, three finalisation rounds). */
static uint64_t
stock__siphash13(const unsigned char *p, size_t len, uint64_t k0, uint64_t k1)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
	uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
	uint64_t v3 = 0x7465646279746573ULL ^ k1;
	uint64_t m, last = (uint64_t)len << 56;
	size_t i, full = len & ~(size_t)7;

	for (i = 0; i < full; i += 8) {
		m = 0;
		for (int j = 7; j >= 0; j--)
			m = (m << 8) | p[i + (size_t)j]; /* little-endian word */
		v3 ^= m;
		STOCK__SIPROUND;
		v0 ^= m;
	}
	for (int j = 0; i + (size_t)j < len; j++)
		last |= (uint64_t)p[i + (size_t)j] << (8 * j);
	v3 ^= last;
	STOCK__SIPROUND;
	v0 ^= last;
	v2 ^= 0xff;
	STOCK__SIPROUND;
	STOCK__SIPROUND;
	STOCK__SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static unsigned long
stock__table_hash(const struct stock_table *t, const char *sku, size_t len)
{
	return (unsigned long)stock__siphash13((const unsigned char *)sku, len, t->k0, t->k1);
}

/* ck_hs hash callback: only ever called on stored keys (regrowth). */
static unsigned long
stock__table_hs_hash(const void *object, unsigned long seed)
{
	(void)seed;
	return ((const struct stock__table_key *)object)->hash;
}

/* ck_hs compare callback: @stored is in the table, @key is the probe. */
static bool
stock__table_hs_compare(const void *stored, const void *key)
{
	const struct stock__table_key *a = stored, *b = key;

	/* Pairs with the release in stock_table_insert. */
	STOCK__HB_ACQUIRE(stored);
	return a->hash == b->hash && a->len == b->len && memcmp(a->sku, b->sku, a->len) == 0;
}

/* ---------------------------------------------------------------------- */
/* ck_hs allocator: deferred frees go through the epoch                    */
/* ---------------------------------------------------------------------- */

static void *
stock__table_hs_malloc(size_t size)
{
	struct stock__table_block *b;

	/* Zeroed: ck_hs leaves some map statistics uninitialised. */
	b = calloc(1, sizeof *b + size);
	if (b == NULL)
		return NULL;
	b->epoch = stock__table_current->epoch;
	/* ck_hs allocates nothing but bucket arrays here (no ck_hs_gc). */
	stock__table_current->map_bytes = size;
	return b + 1;
}

static void
stock__table_block_reclaim(ck_epoch_entry_t *e)
{
	struct stock__table_block *b = stock__table_block_of_retire(e);

	stock__epoch_reclaimed(b->epoch);
	free(b);
}

static void
stock__table_hs_free(void *p, size_t size, bool defer)
{
	struct stock__table_block *b;

	(void)size;
	if (p == NULL)
		return;
	b = (struct stock__table_block *)p - 1;
	if (!defer) {
		free(b);
		return;
	}
	/* A replaced bucket array: readers may still probe it. */
	stock__epoch_defer(b->epoch, &b->retire, stock__table_block_reclaim);
}

/* Brackets every ck_hs call that may allocate or free. */
static void
stock__table_write_lock(struct stock_table *t)
{
	stock__epoch_lock(t->epoch);
	stock__table_current = t;
}

static void
stock__table_write_unlock(struct stock_table *t)
{
	/* Free what earlier grace periods have released, then let go. */
	stock__epoch_poll(t->epoch);
	stock__table_current = NULL;
	stock__epoch_unlock(t->epoch);
}

/* ---------------------------------------------------------------------- */
/* Life cycle                                                              */
/* ---------------------------------------------------------------------- */

static void
stock__table_seed(struct stock_table *t)
{
	uint64_t k[2];

	if (getrandom(k, sizeof k, GRND_NONBLOCK) != (ssize_t)sizeof k) {
		/* No entropy yet (early boot): still differs per table and run. */
		k[0] = stock_now_ns() ^ (uint64_t)(uintptr_t)t;
		k[1] = stock__siphash13((const unsigned char *)k, sizeof k[0],
		    0x9e3779b97f4a7c15ULL, (uint64_t)(uintptr_t)&k);
	}
	t->k0 = k[0];
	t->k1 = k[1];
}

int
stock_table_create(stock_table_t **out, enum stock_strategy strategy, size_t capacity_hint)
{
	struct stock_table *t;
	unsigned long capacity;
	bool ok;
	int err;

	if (out == NULL || stock_strategy_name(strategy) == NULL)
		return STOCK_EINVAL;
	t = calloc(1, sizeof *t);
	if (t == NULL)
		return STOCK_ENOMEM;
	if ((err = stock__epoch_create(&t->epoch)) != 0) {
		free(t);
		return err;
	}
	t->strategy = strategy;
	t->alloc.malloc = stock__table_hs_malloc;
	t->alloc.realloc = NULL; /* ck_hs never reallocates */
	t->alloc.free = stock__table_hs_free;
	stock__table_seed(t);

	/* ck_hs grows at half full: room for the hint without regrowing. */
	if (capacity_hint > (size_t)1 << 40)
		capacity_hint = (size_t)1 << 40;
	capacity = capacity_hint < 8 ? 16 : (unsigned long)capacity_hint * 2;

	stock__table_write_lock(t);
	ok = ck_hs_init(&t->hs, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT | CK_HS_MODE_DELETE,
	    stock__table_hs_hash, stock__table_hs_compare, &t->alloc, capacity, t->k0);
	stock__table_write_unlock(t);
	if (!ok) {
		stock__epoch_destroy(t->epoch);
		free(t);
		return STOCK_ENOMEM;
	}
	*out = t;
	return 0;
}

static void
stock__table_entry_free(struct stock__table_entry *e)
{
	stock_counter_destroy(&e->counter);
	free(e);
}

/* ck_epoch callback: a removed entry's grace period has passed. */
static void
stock__table_entry_reclaim(ck_epoch_entry_t *r)
{
	struct stock__table_entry *e = stock__table_entry_of_retire(r);

	stock__epoch_reclaimed(e->owner->epoch);
	stock__table_entry_free(e);
}

void
stock_table_destroy(stock_table_t *t)
{
	ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
	void *obj;

	if (t == NULL)
		return;
	while (ck_hs_next(&t->hs, &it, &obj))
		stock__table_entry_free(stock__table_entry_of_key(obj));
	ck_hs_destroy(&t->hs); /* frees the bucket array at once (defer false) */
	/* Removed entries and replaced bucket arrays still waiting. */
	stock__epoch_destroy(t->epoch);
	free(t);
}

enum stock_strategy
stock_table_strategy(const stock_table_t *t)
{
	return t->strategy;
}

/* ---------------------------------------------------------------------- */
/* Writers                                                                 */
/* ---------------------------------------------------------------------- */

int
stock_table_insert(stock_table_t *t, const char *sku, size_t len, uint64_t remaining)
{
	struct stock__table_entry *e;
	void *p;
	int err;

	if (t == NULL || !stock_sku_valid(sku, len))
		return STOCK_EINVAL;
	if (remaining > STOCK_COUNT_MAX)
		return STOCK_ERANGE;
	if (posix_memalign(&p, STOCK_CACHELINE, sizeof *e) != 0)
		return STOCK_ENOMEM;
	e = p;
	if ((err = stock_counter_init(&e->counter, t->strategy, remaining)) != 0) {
		free(e);
		return err;
	}
	memcpy(e->name, sku, len);
	e->name[len] = '\0';
	e->key.sku = e->name;
	e->key.len = len;
	e->key.hash = stock__table_hash(t, sku, len);
	e->owner = t;

	stock__table_write_lock(t);
	if (ck_hs_get(&t->hs, e->key.hash, &e->key) != NULL) {
		err = STOCK_EEXIST;
	} else {
		/* Everything above happens before a reader finds the entry. */
		STOCK__HB_RELEASE(&e->key);
		if (ck_hs_put(&t->hs, e->key.hash, &e->key))
			ck_pr_store_64(&t->count, t->count + 1);
		else
			err = STOCK_ENOMEM; /* regrowth failed; nothing changed */
	}
	stock__table_write_unlock(t);
	if (err != 0)
		stock__table_entry_free(e);
	return err;
}

int
stock_table_remove(stock_table_t *t, const char *sku, size_t len)
{
	struct stock__table_key key;
	struct stock__table_entry *e;
	struct ck_hs_stat st;
	size_t slots;
	void *obj;

	if (t == NULL || !stock_sku_valid(sku, len))
		return STOCK_EINVAL;
	key.sku = sku;
	key.len = len;
	key.hash = stock__table_hash(t, sku, len);

	stock__table_write_lock(t);
	obj = ck_hs_remove(&t->hs, key.hash, &key);
	if (obj == NULL) {
		stock__table_write_unlock(t);
		return STOCK_ENOENT;
	}
	e = stock__table_entry_of_key(obj);
	ck_pr_store_64(&t->count, t->count - 1);
	stock__epoch_defer(t->epoch, &e->retire, stock__table_entry_reclaim);
	/*
	 * Tombstones lengthen probes and, left alone, make ck_hs grow under
	 * insert/remove churn. Once they fill a quarter of the slots, rebuild:
	 * a fresh array of the same size (the old one is retired like an
	 * entry). The cost, O(slots), is paid once per slots/4 removes. If the
	 * rebuild cannot allocate, the table simply stays as it is.
	 */
	ck_hs_stat(&t->hs, &st);
	slots = t->map_bytes / (sizeof(void *) + 1); /* pointer + probe bound */
	if (st.tombstones > 64 && st.tombstones > slots / 4)
		(void)ck_hs_rebuild(&t->hs);
	stock__table_write_unlock(t);
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Readers                                                                 */
/* ---------------------------------------------------------------------- */

int
stock_table_read_begin(stock_table_t *t, struct stock_table_section *sec)
{
	ck_epoch_record_t *r;
	int err;

	if (sec == NULL)
		return STOCK_EINVAL;
	sec->record = NULL;
	if (t == NULL)
		return STOCK_EINVAL;
	if ((err = stock__epoch_reader(t->epoch, &r)) != 0)
		return err;
	stock__epoch_enter(r);
	sec->record = r;
	return 0;
}

void
stock_table_read_end(stock_table_t *t, struct stock_table_section *sec)
{
	if (t == NULL || sec == NULL || sec->record == NULL)
		return;
	stock__epoch_exit(t->epoch, sec->record);
	sec->record = NULL;
}

struct stock_counter *
stock_table_lookup(stock_table_t *t, const char *sku, size_t len)
{
	struct stock__table_key key;
	void *obj;

	if (t == NULL || !stock_sku_valid(sku, len))
		return NULL;
	key.sku = sku;
	key.len = len;
	key.hash = stock__table_hash(t, sku, len);
	obj = ck_hs_get(&t->hs, key.hash, &key);
	if (obj == NULL)
		return NULL;
	STOCK__HB_ACQUIRE(obj);
	return &stock__table_entry_of_key(obj)->counter;
}

enum stock__table_op { STOCK__TAKE, STOCK__PUT, STOCK__SET, STOCK__READ };

/* Lookup + one counter operation inside a read section of its own. */
static int
stock__table_op(stock_table_t *t, const char *sku, size_t len, enum stock__table_op op,
    uint64_t n, struct stock_level *lvl)
{
	struct stock_table_section sec;
	struct stock_counter *c;
	int rc;

	if (t == NULL || !stock_sku_valid(sku, len))
		return STOCK_EINVAL;
	if ((rc = stock_table_read_begin(t, &sec)) != 0)
		return rc;
	c = stock_table_lookup(t, sku, len);
	if (c == NULL) {
		rc = STOCK_ENOENT;
	} else {
		switch (op) {
		case STOCK__TAKE:
			rc = stock_counter_take(c, n);
			break;
		case STOCK__PUT:
			rc = stock_counter_put(c, n);
			break;
		case STOCK__SET:
			rc = stock_counter_set(c, n);
			break;
		case STOCK__READ:
			rc = stock_counter_read(c, lvl);
			break;
		}
	}
	stock_table_read_end(t, &sec);
	return rc;
}

int
stock_table_take(stock_table_t *t, const char *sku, size_t len, uint64_t n)
{
	return stock__table_op(t, sku, len, STOCK__TAKE, n, NULL);
}

int
stock_table_put(stock_table_t *t, const char *sku, size_t len, uint64_t n)
{
	return stock__table_op(t, sku, len, STOCK__PUT, n, NULL);
}

int
stock_table_set(stock_table_t *t, const char *sku, size_t len, uint64_t remaining)
{
	return stock__table_op(t, sku, len, STOCK__SET, remaining, NULL);
}

int
stock_table_read(stock_table_t *t, const char *sku, size_t len, struct stock_level *out)
{
	if (out == NULL)
		return STOCK_EINVAL;
	return stock__table_op(t, sku, len, STOCK__READ, 0, out);
}

size_t
stock_table_count(const stock_table_t *t)
{
	return t == NULL ? 0 : (size_t)ck_pr_load_64(&t->count);
}

int
stock_table_foreach(stock_table_t *t, stock_table_foreach_fn *fn, void *arg)
{
	ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
	struct stock_table_section sec;
	struct stock_level lvl;
	void *obj;
	int rc;

	if (t == NULL || fn == NULL)
		return STOCK_EINVAL;
	if ((rc = stock_table_read_begin(t, &sec)) != 0)
		return rc;
	/* One bucket array for the whole walk; it stays valid in the section. */
	while (ck_hs_next_spmc(&t->hs, &it, &obj)) {
		struct stock__table_entry *e = stock__table_entry_of_key(obj);

		STOCK__HB_ACQUIRE(obj);
		if (stock_counter_read(&e->counter, &lvl) != 0)
			continue;
		if ((rc = fn(e->name, e->key.len, &lvl, arg)) != 0)
			break;
	}
	stock_table_read_end(t, &sec);
	return rc;
}
