/*
 * The sales ledger (ledger.c): a small file in the data directory, mapped
 * MAP_SHARED, holding per leased SKU the cumulative units this instance sold
 * from its leases, plus the lease's granted and returned counts as last known
 * applied. A buy adds to its SKU's `sold` before the reply is sent; the page
 * cache keeps that store when the process is killed (kill -9), so the next
 * start knows exactly what was sold but not yet recorded in MongoDB
 * (docs/internals/leases.md, "The ledger").
 *
 * One process at a time: ledger_open takes an exclusive flock on the file,
 * released when the process closes it or dies.
 */
#ifndef DEMO_CLUSTER_LEDGER_H
#define DEMO_CLUSTER_LEDGER_H

#include <stdbool.h>
#include <stdint.h>

/* SKUs one ledger can hold (a full ledger refuses new SKUs). */
#define LEDGER_SLOTS 256

struct ledger;

/*
 * One SKU's counts. The file format: do not reorder (ledger.c, "Format").
 * @granted and @returned are written by the lease thread only (under the
 * SKU's entry lock); @sold through ledger_add_sold / read with ledger_sold.
 */
struct ledger_slot {
	char sku[72];      /* NUL-terminated; empty: a free slot */
	uint64_t granted;  /* == the lease's granted once a grant is known applied */
	uint64_t sold;     /* cumulative units sold from leases: atomic, see ledger.c */
	uint64_t returned; /* == the lease's returned once a return is known applied */
};

/**
 * ledger_open - open or create the ledger at @path for host id @host, lock it
 * and map it. A new file is written whole and synced. An existing one must be
 * a ledger (magic, size, slot count, every slot a valid SKU or empty, no SKU
 * twice) of the same host. Returns 0; STOCK_EBUSY (another process holds it);
 * STOCK_EINVAL (not a ledger, damaged, or another host's); STOCK_ESYS (I/O);
 * STOCK_ENOMEM. Logs why.
 */
int ledger_open(struct ledger **out, const char *path, const char *host);

/** ledger_close - sync, unmap, unlock and free @l. NULL is a no-op. */
void ledger_close(struct ledger *l);

/**
 * ledger_slot - the slot of @sku, claiming a free one (zeroed) when @sku has
 * none. NULL when the ledger is full. Callers serialise calls (the lease
 * manager: at open, then under its add lock); buys on other slots may run.
 */
struct ledger_slot *ledger_slot(struct ledger *l, const char *sku);

/** ledger_has_room - whether ledger_slot(@l, @sku) would find (or claim) a slot. */
bool ledger_has_room(struct ledger *l, const char *sku);

/** ledger_add_sold - add @n units sold to @s (one atomic add). Thread-safe. */
void ledger_add_sold(struct ledger_slot *s, uint64_t n);

/** ledger_sold - @s's cumulative sold (one atomic load). Thread-safe. */
uint64_t ledger_sold(const struct ledger_slot *s);

/**
 * ledger_set_sold - overwrite @s's sold (reconciliation at open, before any
 * buy: when the ledger is behind what MongoDB recorded).
 */
void ledger_set_sold(struct ledger_slot *s, uint64_t sold);

/**
 * ledger_sync - write the mapping back and wait until it is on disk (msync
 * MS_SYNC). Without it the kernel writes dirty pages back on its own
 * schedule (up to ~30 s later), which matters only for a power loss: a killed
 * process loses nothing either way. Returns 0 or STOCK_ESYS (logged).
 */
int ledger_sync(struct ledger *l);

#endif /* DEMO_CLUSTER_LEDGER_H */
