/*
 * Byte-string map (smap.h): chained buckets, SipHash-1-3 with a random key
 * per map (getrandom), doubling when there are as many nodes as buckets.
 * Keys chosen by clients cannot be made to collide without the key, so a
 * lookup stays O(1) whatever the input.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <stock.h>

#include "common/assert.h"
#include "common/smap.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                   \
	do {                                                                       \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);           \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                              \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                              \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);           \
	} while (0)

/* SipHash-1-3 (Aumasson & Bernstein; one compression, three finalization rounds). */
static uint64_t
siphash13(const unsigned char *p, size_t len, uint64_t k0, uint64_t k1)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	uint64_t b = (uint64_t)len << 56, m;
	size_t i, tail = len & 7;

	for (i = 0; i + 8 <= len; i += 8) {
		memcpy(&m, p + i, 8); /* little-endian machines only (x86-64, arm64) */
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t k = 0; k < tail; k++)
		b |= (uint64_t)p[i + k] << (8 * k);
	v3 ^= b;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

int
smap_init(struct smap *m)
{
	uint64_t k[2] = { 0x0123456789abcdefULL, 0xfedcba9876543210ULL };

	memset(m, 0, sizeof *m);
	if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) {
		/* no entropy yet: still correct, only predictable */
		k[0] ^= (uint64_t)(uintptr_t)m;
		k[1] ^= stock_now_ns();
	}
	m->k0 = k[0];
	m->k1 = k[1];
	m->cap = 64;
	m->buckets = calloc(m->cap, sizeof *m->buckets);
	return m->buckets == NULL ? STOCK_ENOMEM : 0;
}

void
smap_destroy(struct smap *m)
{
	free(m->buckets);
	m->buckets = NULL;
	m->cap = m->n = 0;
}

static uint64_t
hash(const struct smap *m, const char *key, size_t len)
{
	return siphash13((const unsigned char *)key, len, m->k0, m->k1);
}

struct smap_node *
smap_get(const struct smap *m, const char *key, size_t len)
{
	uint64_t h = hash(m, key, len);

	for (struct smap_node *x = m->buckets[h & (m->cap - 1)]; x != NULL; x = x->next)
		if (x->hash == h && x->key_len == len && memcmp(x->key, key, len) == 0)
			return x;
	return NULL;
}

static int
grow(struct smap *m)
{
	size_t cap = m->cap * 2;
	struct smap_node **b = calloc(cap, sizeof *b);

	if (b == NULL)
		return STOCK_ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		struct smap_node *x = m->buckets[i], *next;

		for (; x != NULL; x = next) {
			next = x->next;
			x->next = b[x->hash & (cap - 1)];
			b[x->hash & (cap - 1)] = x;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->cap = cap;
	return 0;
}

int
smap_put(struct smap *m, struct smap_node *node)
{
	struct smap_node **head;

	node->hash = hash(m, node->key, node->key_len);
	head = &m->buckets[node->hash & (m->cap - 1)];
	node->next = *head;
	*head = node;
	m->n++;
	return m->n > m->cap ? grow(m) : 0;
}

void
smap_del(struct smap *m, struct smap_node *node)
{
	struct smap_node **p = &m->buckets[node->hash & (m->cap - 1)];

	while (*p != node) {
		ASSERT(*p != NULL);
		p = &(*p)->next;
	}
	*p = node->next;
	node->next = NULL;
	m->n--;
}

int
smap_foreach(const struct smap *m, int (*fn)(struct smap_node *node, void *arg), void *arg)
{
	for (size_t i = 0; i < m->cap; i++)
		for (struct smap_node *x = m->buckets[i], *next; x != NULL; x = next) {
			int rc;

			next = x->next; /* @fn may free @x (a map being torn down) */
			if ((rc = fn(x, arg)) != 0)
				return rc;
		}
	return 0;
}
