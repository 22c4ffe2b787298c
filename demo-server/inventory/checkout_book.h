/*
 * The checkout book's insides, shared by checkout_local.c (the operations,
 * expiry) and checkout_records.c (their journal records: encoding, queuing
 * one commit per change, decoding at start-up). Nothing outside
 * demo-server/inventory/ includes this; the seam is inventory.h.
 */
#ifndef INVENTORY_CHECKOUT_BOOK_H
#define INVENTORY_CHECKOUT_BOOK_H

#include <bson/bson.h>
#include <pthread.h>
#include <stdlib.h>

#include "common/smap.h"
#include "inventory/local.h"

#define TICK_NS 10000000ULL     /* wheel precision: 10 ms */
#define POLL_MS 50              /* the expiry thread's longest sleep */
#define COMMIT_MAX (2 * CHECKOUT_ITEMS_MAX + 2)

enum obj_kind { OBJ_HOLD = 1, OBJ_IDEM };

struct hold {
	int kind; /* OBJ_HOLD: first, for the timer's dispatch */
	struct smap_node node;
	char id[CHECKOUT_ID_LEN + 1];
	enum hold_status status;
	bool paying;
	int64_t expires_at_ms; /* unix ms */
	int64_t done_at_ms;    /* when it left held (kept ttl_s after) */
	uint64_t version;      /* of its record */
	char buyer[BUYER_ID_MAX + 1];
	size_t n;
	struct checkout_item *items; /* as held: n, in room[] */
	size_t nconf;
	struct checkout_item *conf;  /* as confirmed: room for n, after items */
	struct stock_wheel_timer timer; /* expiry, then retention */
	struct checkout_item room[]; /* items, then conf (sized at hold_alloc) */
};

struct idem {
	int kind; /* OBJ_IDEM */
	struct smap_node node;
	char key[IDEM_KEY_MAX + 1];
	size_t key_len;
	bool done;
	int status;
	char *req, *body;
	size_t req_len, body_len;
	int64_t at_ms;
	uint64_t version;
	struct stock_wheel_timer timer; /* retention */
};

/* What one buyer took of one SKU (held + bought). Key: "<buyer>/<sku>". */
struct buyer {
	struct smap_node node;
	char key[BUYER_ID_MAX + 1 + STOCK_SKU_MAX + 1];
	uint64_t count, version;
};

/* A retired SKU (DELETE Admin/Stock): its counter stays, at 0, for peeks. */
struct retired {
	struct smap_node node;
	char sku[STOCK_SKU_MAX + 1];
};

struct checkout_book {
	pthread_mutex_t mu;
	struct smap holds, idems, buyers, retired;
	struct stock_wheel wheel;
	struct stock_latch stop;
	pthread_t thread;
	bool started;
	uint64_t hold_ttl_ms, max_hold_ms, max_per_buyer;
	uint64_t ttl_ms;    /* idempotency answers are kept this long */
	uint64_t retain_ms; /* finished holds are kept this long */
	uint64_t seq; /* record versions: one rising sequence for every key */
	struct stock_stat holds_made, confirms, cancels, expiries, orders, replays, limits;
};

/* A zeroed hold with room for @n items and @nconf confirmed ones (NULL: no memory). */
static inline struct hold *
hold_alloc(size_t n, size_t nconf)
{
	struct hold *h = calloc(1, sizeof *h + (n + nconf) * sizeof h->room[0]);

	if (h != NULL) {
		h->items = h->room;
		h->conf = h->room + n;
	}
	return h;
}

/* The records of one change, committed together. */
struct commit {
	struct sku_doc docs[CHECKOUT_ITEMS_MAX + 1];
	size_t nd;
	struct store_kv kv[COMMIT_MAX];
	char keys[COMMIT_MAX][STORE_KEY_MAX + 1];
	bson_t *vals[COMMIT_MAX];
	size_t nk;
};

/*
 * Make @c empty. Only the counts: every array slot is written before it is
 * read, and zeroing the whole struct (~14 KiB, most of it keys[]) was the
 * largest single cost of a checkout change (callgrind).
 */
static inline void
commit_init(struct commit *c)
{
	c->nd = 0;
	c->nk = 0;
}

/* A commit queued durably: waited for (settle) after the lock is dropped. */
struct pending {
	struct store_ticket t;
	bool queued;
};

static inline uint64_t
next_version(struct checkout_book *b)
{
	return ++b->seq;
}

/* checkout_local.c */

/** book_arm - put @t on the book's wheel for the wall-clock time @at_ms. */
void book_arm(struct checkout_book *b, struct stock_wheel_timer *t, int64_t at_ms);
/** book_idem_free - free an idempotency entry and its stored request and answer. */
void book_idem_free(struct idem *e);

/* checkout_records.c */

/** record_free - drop the values of @c's records, leaving it empty. */
void record_free(struct commit *c);
/** record_kv - add keyed record "<prefix><name>" with value @v (owned by @c; NULL deletes). */
void record_kv(struct commit *c, const char *prefix, const char *name, size_t nlen,
    uint64_t version, bson_t *v);
/** record_sku - add the state @ctr is in now as @sku's document. */
void record_sku(struct local *l, struct commit *c, struct stock_counter *ctr, const char *sku);
/** record_hold - give @h a new version and add its record. */
void record_hold(struct checkout_book *b, struct commit *c, struct hold *h);
/** record_buyer - give @by a new version and add its record. */
void record_buyer(struct checkout_book *b, struct commit *c, struct buyer *by);
/** record_idem_value - @e's stored request and answer as a record value. */
bson_t *record_idem_value(const struct idem *e);
/**
 * record_queue - queue @c as one atomic commit, durable when @p (then wait
 * with settle), else write-behind. Called under the book's lock: the
 * journal's order is the changes' order. 0 or the store's refusal (nothing
 * queued); @c is emptied either way.
 */
int record_queue(struct local *l, struct commit *c, struct pending *p);
/**
 * record_load_all - rebuild the book from the journal's keyed records (at
 * open, under the book's lock): live holds reserve their units again,
 * expired ones are released by the expiry thread. A record that does not
 * fit is logged and skipped.
 */
void record_load_all(struct local *l);

#endif
