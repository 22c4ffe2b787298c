/*
 * Snapshot: RCU publication of an immutable object on ck_epoch.
 *
 * The current object is reached through a small node {obj, version, epoch
 * entry} so that a reader gets the object and its version from one pointer
 * load, and so that retiring an object needs no allocation: the node already
 * carries the ck_epoch_entry that ck_epoch_call links into its list.
 *
 * Readers: the thread's epoch record (epoch.c), ck_epoch_begin, one acquire
 * load of `current`. Writers: serialised by the domain's write lock; publish
 * stores the new node (release: its contents are visible before the
 * pointer), retires the old node through the domain and polls, so older
 * objects are destroyed as their grace periods pass. synchronize waits for a
 * grace period without holding the write lock (see epoch.h).
 *
 * Every object is destroyed exactly once: a node is retired exactly once
 * (by the publish that replaced it) and its callback frees it; the current
 * node is destroyed by stock_snapshot_destroy, after all pending ones.
 */
#include <stdlib.h>

#include "stock/snapshot.h"
#include "epoch.h"

struct stock__snapshot_node {
	void *obj;                     /* the user's immutable object */
	uint64_t version;              /* 0 for the initial object */
	struct stock_snapshot *owner;  /* for the destructor and counters */
	ck_epoch_entry_t entry;        /* links the node while it is retired */
};

CK_EPOCH_CONTAINER(struct stock__snapshot_node, entry, stock__snapshot_node_of)

static void
stock__snapshot_free_node(struct stock__snapshot_node *n)
{
	struct stock_snapshot *s = n->owner;

	if (s->destroy != NULL)
		s->destroy(n->obj, s->arg);
	free(n);
}

/* ck_epoch callback: the node's grace period has passed. */
static void
stock__snapshot_reclaim(ck_epoch_entry_t *e)
{
	struct stock__snapshot_node *n = stock__snapshot_node_of(e);
	struct stock_snapshot *s = n->owner;

	stock__epoch_reclaimed(s->epoch);
	stock__snapshot_free_node(n);
	ck_pr_inc_64(&s->reclaimed);
}

int
stock_snapshot_init(struct stock_snapshot *s, void *initial,
    stock_snapshot_destroy_fn *destroy, void *arg)
{
	struct stock__snapshot_node *n;
	int err;

	if (s == NULL || initial == NULL)
		return STOCK_EINVAL;
	n = malloc(sizeof *n);
	if (n == NULL)
		return STOCK_ENOMEM;
	if ((err = stock__epoch_create(&s->epoch)) != 0) {
		free(n);
		return err;
	}
	n->obj = initial;
	n->version = 0;
	n->owner = s;
	s->version = 0;
	s->retired = 0;
	s->reclaimed = 0;
	s->destroy = destroy;
	s->arg = arg;
	ck_pr_store_ptr(&s->current, n);
	return 0;
}

void
stock_snapshot_destroy(struct stock_snapshot *s)
{
	if (s == NULL || s->epoch == NULL)
		return;
	/* Retired objects first, then the current one. */
	stock__epoch_destroy(s->epoch);
	s->epoch = NULL;
	stock__snapshot_free_node(s->current);
	s->current = NULL;
}

int
stock_snapshot_register(struct stock_snapshot *s)
{
	ck_epoch_record_t *r;

	if (s == NULL || s->epoch == NULL)
		return STOCK_EINVAL;
	return stock__epoch_reader(s->epoch, &r);
}

const void *
stock_snapshot_read_begin(struct stock_snapshot *s, struct stock_snapshot_section *sec)
{
	const struct stock__snapshot_node *n;
	ck_epoch_record_t *r;

	if (sec == NULL)
		return NULL;
	sec->record = NULL;
	if (STOCK_UNLIKELY(s == NULL) || stock__epoch_reader(s->epoch, &r) != 0)
		return NULL;
	/* ck_epoch_begin is a full barrier before the load below. */
	stock__epoch_enter(r);
	n = ck_pr_load_ptr(&s->current);
	sec->record = r;
	sec->version = n->version;
	return n->obj;
}

void
stock_snapshot_read_end(struct stock_snapshot *s, struct stock_snapshot_section *sec)
{
	if (sec == NULL || sec->record == NULL || s == NULL)
		return;
	stock__epoch_exit(s->epoch, sec->record);
	sec->record = NULL;
}

int
stock_snapshot_publish(struct stock_snapshot *s, void *obj)
{
	struct stock__snapshot_node *n, *old;

	if (s == NULL || obj == NULL || s->epoch == NULL)
		return STOCK_EINVAL;
	n = malloc(sizeof *n);
	if (n == NULL)
		return STOCK_ENOMEM;
	n->obj = obj;
	n->owner = s;

	stock__epoch_lock(s->epoch);
	old = s->current;
	n->version = old->version + 1;
	/* Release: the node's fields are visible before the pointer. */
	ck_pr_store_ptr(&s->current, n);
	/* After `current`: whoever sees version v then reads a node >= v. */
	ck_pr_store_64(&s->version, n->version);
	ck_pr_inc_64(&s->retired);
	stock__epoch_defer(s->epoch, &old->entry, stock__snapshot_reclaim);
	stock__epoch_poll(s->epoch);
	stock__epoch_unlock(s->epoch);
	return 0;
}

int
stock_snapshot_synchronize(struct stock_snapshot *s)
{
	if (s == NULL || s->epoch == NULL)
		return STOCK_EINVAL;
	stock__epoch_synchronize(s->epoch);
	return 0;
}

int
stock_snapshot_stats(const struct stock_snapshot *s, struct stock_snapshot_stats *out)
{
	if (s == NULL || out == NULL || s->epoch == NULL)
		return STOCK_EINVAL;
	out->version = ck_pr_load_64(&s->version);
	out->retired = ck_pr_load_64(&s->retired);
	out->reclaimed = ck_pr_load_64(&s->reclaimed);
	out->records = stock__epoch_records(s->epoch);
	out->records_free = stock__epoch_records_free(s->epoch);
	return 0;
}
