/*
 * The embedded store's keyed-record index (store.h struct store_kv): key ->
 * the winning record (version, value or tombstone), kept in memory as one
 * malloc'd struct kv_entry per key in an open-addressing table at most half
 * full, guarded by the store mutex like the SKU index. Max version wins (a
 * tie: tombstone, then longer value, then bytewise larger value), so the
 * result does not depend on the order records are applied in. The hash is
 * seeded per store: keys (idempotency keys) may be chosen by clients.
 * Copies of entry pointers serve store_kv_foreach and snapshots: while one
 * is pinned, an entry the index drops is kept on a list instead of freed, so
 * the copy stays readable without the lock. Tombstones a durable snapshot
 * left out are purged. Nothing here does I/O.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "store/internal.h"

static uint64_t
kv_hash(const struct kv_index *x, const char *key, size_t n)
{
	uint64_t h = 14695981039346656037ULL ^ x->seed;

	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)key[i];
		h *= 1099511628211ULL;
	}
	/* Final mix (splitmix64), so the low bits used as the slot depend on all. */
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	return h ^ (h >> 31);
}

struct kv_entry *
store__kv_entry_new(const char *key, size_t key_len, uint64_t version, const uint8_t *value,
    size_t value_len)
{
	struct kv_entry *e;

	ASSERT(key_len > 0 && key_len <= STORE_KEY_MAX && value_len <= STORE_VALUE_MAX);
	ASSERT((value == NULL) == (value_len == 0));
	if ((e = malloc(KV_ENTRY_SIZE(key_len, value_len))) == NULL)
		return NULL;
	e->version = version;
	e->purge_gen = 0;
	e->next_dead = NULL;
	e->key_len = (uint32_t)key_len;
	e->value_len = (uint32_t)value_len;
	memcpy(e->data, key, key_len);
	if (value_len > 0)
		memcpy(e->data + key_len, value, value_len);
	return e;
}

/* True when @a wins over @b (same key). */
static bool
kv_newer(const struct kv_entry *a, const struct kv_entry *b)
{
	int c;

	if (a->version != b->version)
		return a->version > b->version;
	if ((a->value_len == 0) != (b->value_len == 0))
		return a->value_len == 0; /* a delete wins a tie */
	if (a->value_len != b->value_len)
		return a->value_len > b->value_len;
	c = memcmp(a->data + a->key_len, b->data + b->key_len, a->value_len);
	return c > 0;
}

void
store__kv_init(struct kv_index *x)
{
	uint64_t seed = 0;

	memset(x, 0, sizeof *x);
	if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
		seed = stock_now_ns() ^ (uint64_t)(uintptr_t)x;
	x->seed = seed;
}

/* The slot of @key: its entry, or the empty slot where it goes. */
static struct kv_entry **
kv_slot(const struct kv_index *x, const char *key, size_t key_len)
{
	size_t mask = x->cap - 1, i;

	ASSERT(x->cap > x->n); /* a full table would make this loop forever */
	for (i = (size_t)kv_hash(x, key, key_len) & mask;; i = (i + 1) & mask) {
		struct kv_entry *e = x->slots[i];

		if (e == NULL || (e->key_len == key_len && memcmp(e->data, key, key_len) == 0))
			return &x->slots[i];
	}
}

/* Rebuild into @cap slots, freeing the tombstones marked @drop_gen (0: none). */
static int
kv_rebuild(struct kv_index *x, size_t cap, uint64_t drop_gen)
{
	struct kv_index nx = *x;
	size_t i;

	nx.slots = calloc(cap, sizeof *nx.slots);
	if (nx.slots == NULL)
		return STOCK_ENOMEM;
	nx.cap = cap;
	nx.n = 0;
	for (i = 0; i < x->cap; i++) {
		struct kv_entry *e = x->slots[i];

		if (e == NULL)
			continue;
		if (drop_gen != 0 && e->value_len == 0 && e->purge_gen == drop_gen) {
			free(e);
			continue;
		}
		*kv_slot(&nx, store__kv_key(e), e->key_len) = e;
		nx.n++;
	}
	free(x->slots);
	*x = nx;
	return 0;
}

int
store__kv_reserve(struct kv_index *x, size_t extra)
{
	size_t cap = x->cap ? x->cap : 64;

	while ((x->n + extra) * 2 > cap)
		cap *= 2;
	if (cap == x->cap)
		return 0;
	return kv_rebuild(x, cap, 0);
}

struct kv_entry *
store__kv_apply_keep(struct kv_index *x, struct kv_entry *e)
{
	struct kv_entry **slot = kv_slot(x, store__kv_key(e), e->key_len), *loser = NULL;

	if (*slot == NULL) {
		/* A new key: store__kv_reserve must have made room for it. */
		ASSERT((x->n + 1) * 2 <= x->cap);
		*slot = e;
		x->n++;
		x->live += e->value_len != 0;
	} else if (kv_newer(e, *slot)) {
		x->live -= (*slot)->value_len != 0;
		x->live += e->value_len != 0;
		loser = *slot;
		*slot = e;
	} else {
		loser = e;
	}
	ASSERT(x->live <= x->n);
	return loser;
}

void
store__kv_apply(struct kv_index *x, struct kv_entry *e)
{
	store__kv_retire(x, store__kv_apply_keep(x, e));
}

int
store__kv_apply_copy(struct kv_index *x, const char *key, size_t key_len, uint64_t version,
    const uint8_t *value, size_t value_len)
{
	struct kv_entry *e;

	if (store__kv_reserve(x, 1) != 0)
		return STOCK_ENOMEM;
	if ((e = store__kv_entry_new(key, key_len, version, value, value_len)) == NULL)
		return STOCK_ENOMEM;
	store__kv_apply(x, e);
	return 0;
}

const struct kv_entry *
store__kv_find(const struct kv_index *x, const char *key, size_t key_len)
{
	if (x->cap == 0)
		return NULL;
	return *kv_slot(x, key, key_len);
}

static bool
kv_match(const struct kv_entry *e, const char *prefix, size_t plen)
{
	return e->value_len != 0 && e->key_len >= plen &&
	    (plen == 0 || memcmp(e->data, prefix, plen) == 0);
}

int
store__kv_copy_reserve(struct kv_copy *c, size_t cap)
{
	const struct kv_entry **e;

	if (cap <= c->cap)
		return 0;
	if ((e = realloc(c->e, cap * sizeof *e)) == NULL)
		return STOCK_ENOMEM;
	memset(e + c->cap, 0, (cap - c->cap) * sizeof *e);
	c->e = e;
	c->cap = cap;
	return 0;
}

int
store__kv_copy(const struct kv_index *x, const char *prefix, size_t plen, struct kv_copy *out)
{
	size_t i, n = 0;

	for (i = 0; i < x->cap; i++)
		n += x->slots[i] != NULL && kv_match(x->slots[i], prefix, plen);
	if (store__kv_copy_reserve(out, n) != 0)
		return STOCK_ENOMEM;
	out->n = 0;
	for (i = 0; i < x->cap; i++)
		if (x->slots[i] != NULL && kv_match(x->slots[i], prefix, plen))
			out->e[out->n++] = x->slots[i];
	ASSERT(out->n == n); /* the index did not change under its lock */
	return 0;
}

int
store__kv_copy_slots(const struct kv_index *x, struct kv_copy *out)
{
	if (store__kv_copy_reserve(out, x->cap) != 0)
		return STOCK_ENOMEM;
	if (x->cap > 0)
		memcpy(out->e, x->slots, x->cap * sizeof *x->slots);
	out->n = x->cap;
	return 0;
}

void
store__kv_copy_free(struct kv_copy *c)
{
	free(c->e);
	memset(c, 0, sizeof *c);
}

void
store__kv_pin(struct kv_index *x)
{
	x->pins++;
	ASSERT(x->pins != 0);
}

struct kv_entry *
store__kv_unpin(struct kv_index *x)
{
	struct kv_entry *dead;

	ASSERT(x->pins > 0);
	if (--x->pins > 0)
		return NULL;
	dead = x->dead;
	x->dead = NULL;
	return dead;
}

void
store__kv_retire(struct kv_index *x, struct kv_entry *e)
{
	if (e == NULL)
		return;
	if (x->pins == 0) {
		free(e);
		return;
	}
	e->next_dead = x->dead;
	x->dead = e;
}

void
store__kv_free_list(struct kv_entry *e)
{
	while (e != NULL) {
		struct kv_entry *next = e->next_dead;

		free(e);
		e = next;
	}
}

void
store__kv_purge(struct kv_index *x, uint64_t gen)
{
	size_t i, drop = 0;

	for (i = 0; i < x->cap; i++)
		drop += x->slots[i] != NULL && x->slots[i]->value_len == 0 &&
		    x->slots[i]->purge_gen == gen;
	if (drop > 0)
		(void)kv_rebuild(x, x->cap, gen); /* without memory the tombstones just stay */
}

void
store__kv_free(struct kv_index *x)
{
	ASSERT(x->pins == 0); /* no copy outlives the index */
	for (size_t i = 0; i < x->cap; i++)
		free(x->slots[i]);
	free(x->slots);
	memset(x, 0, sizeof *x);
}
