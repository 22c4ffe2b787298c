/*
 * A map from byte strings to the caller's objects, for keys an attacker
 * chooses (hold ids, idempotency keys, buyer ids): chained buckets hashed
 * with SipHash-1-3 under a per-map random key, so no input makes the
 * chains long. Nodes are intrusive: the caller embeds struct smap_node in
 * its object and owns the memory. Not thread-safe: the owner's lock
 * guards it.
 */
#ifndef DEMO_SMAP_H
#define DEMO_SMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct smap_node {
	struct smap_node *next; /* private */
	uint64_t hash;          /* private */
	const char *key;        /* the caller's bytes; must stay valid while linked */
	size_t key_len;
};

struct smap {
	struct smap_node **buckets; /* private: cap heads, a power of two */
	size_t cap, n;
	uint64_t k0, k1;            /* private: the SipHash key */
};

/** smap_init - an empty map with a random hash key: 0 or STOCK_ENOMEM. */
int smap_init(struct smap *m);

/** smap_destroy - free the buckets (not the nodes: they are the caller's). */
void smap_destroy(struct smap *m);

/** smap_get - the node whose key is @key[0..@len), or NULL. */
struct smap_node *smap_get(const struct smap *m, const char *key, size_t len);

/**
 * smap_put - link @node (its key set by the caller, not present yet: check
 * with smap_get). Grows the table when it is full; 0 or STOCK_ENOMEM (the
 * node is linked anyway, the chains are only longer).
 */
int smap_put(struct smap *m, struct smap_node *node);

/** smap_del - unlink @node, which is linked in @m. */
void smap_del(struct smap *m, struct smap_node *node);

/**
 * smap_foreach - call @fn on every node; stops on non-zero. @fn may not
 * link or unlink nodes, but may free the node it is given when the map is
 * being destroyed (nothing reads it afterwards).
 */
int smap_foreach(const struct smap *m, int (*fn)(struct smap_node *node, void *arg), void *arg);

/** smap_count - the nodes linked. */
static inline size_t
smap_count(const struct smap *m)
{
	return m->n;
}

#endif /* DEMO_SMAP_H */
