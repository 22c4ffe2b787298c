/*
 * The demo server's stock-update bus: Redis pub/sub (hiredis).
 *
 * Every instance publishes an event when it learns a newer state of a SKU
 * and subscribes to the same channels to learn what the others did. An event
 * is the seed's JSON {host, key, value} plus version:
 *   {"host":"SuperPrimary","key":"OneStock:Db","value":14990,"version":11}
 * (key = the SKU; value = the SKU's remaining stock as the publisher knows
 * it; version = the SKU document's version in MongoDB). Events of SKUs that
 * start with "OneStock:" go to the one channel ("OneStockUpdateEvent"),
 * every other SKU's to the many channel ("MultiStockUpdateEvent"). A
 * receiver accepts exactly these four members (anything else is counted as
 * malformed and dropped).
 *
 * Pub/sub is fire-and-forget: an event published while a subscriber is
 * disconnected is lost for it; the server's periodic poll of MongoDB repairs
 * that. Publishing never blocks a request: bus_publish stores the newest
 * event per SKU (coalescing) and a publisher thread sends them; the
 * subscriber thread calls the receive callback for every event whose host is
 * not ours (our own echo is dropped). Both threads reconnect with backoff
 * (100 ms doubling to 5 s) when Redis goes away. Logs through log.h
 * ("bus"), each line starting with our host id.
 */
#ifndef DEMO_BUS_H
#define DEMO_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/doc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bus bus_t;

/* One stock-update event. */
struct bus_event {
	char host[HOST_ID_MAX + 1];  /* host_id_valid */
	char key[STOCK_SKU_MAX + 1]; /* stock_sku_valid */
	uint64_t value;
	uint64_t version;
};

/**
 * bus_event_parse - parse one received message (@len bytes, not
 * NUL-terminated) into @ev: a JSON object with exactly the members host (a
 * host id), key (a SKU), value (<= STOCK_COUNT_MAX) and version (<=
 * INT64_MAX), each once (common/json.h). Returns NULL when it is a valid
 * event, else why not (a fixed string, for the log); @ev is zeroed first.
 * Thread-safe (no state). The subscriber uses it; exported for
 * tests/fuzz/fuzz_bus.c.
 */
const char *bus_event_parse(const char *msg, size_t len, struct bus_event *ev);

/* Called on the subscriber thread for each event of another host. */
typedef void (*bus_receive_fn)(const struct bus_event *ev, void *arg);

struct bus_options {
	const char *url;          /* required: redis://[:password@]host[:port][/db] */
	const char *host_id;      /* required: [A-Za-z0-9_-], 1..HOST_ID_MAX */
	const char *one_channel;  /* default "OneStockUpdateEvent" */
	const char *many_channel; /* default "MultiStockUpdateEvent" */
	bus_receive_fn receive;   /* may be NULL (publish only) */
	void *receive_arg;
};

/* Counters for /metrics. */
struct bus_stats {
	uint64_t published;     /* events sent */
	uint64_t coalesced;     /* events replaced by a newer one before sending */
	uint64_t received;      /* events of other hosts delivered to the callback */
	uint64_t echoes;        /* own events dropped */
	uint64_t malformed;     /* messages that were not a valid event */
	uint64_t reconnects;    /* successful reconnections (both threads) */
	bool connected;         /* gauge: both connections are up */
};

/**
 * bus_open - validate options and start the publisher and subscriber
 * threads. Does not wait for Redis: if it is down, the threads keep trying.
 * Returns 0, STOCK_EINVAL (bad URL, host id or channel), STOCK_ENOMEM,
 * STOCK_ESYS (thread creation).
 */
int bus_open(bus_t **out, const struct bus_options *opt);

/**
 * bus_publish - queue @ev for publishing (its host is replaced by ours). A
 * queued event of the same key with a lower or equal version is replaced
 * (counted as coalesced); a newer queued one makes this call a no-op.
 * Never blocks on the network. Returns 0, STOCK_EINVAL, STOCK_ENOMEM.
 */
int bus_publish(bus_t *b, const char *key, uint64_t value, uint64_t version);

/**
 * bus_flush - wait up to @timeout_ms until every queued event was sent.
 * Returns 0, STOCK_ETIMEDOUT.
 */
int bus_flush(bus_t *b, unsigned timeout_ms);

/** bus_stats - copy the counters. */
void bus_stats(bus_t *b, struct bus_stats *out);

/**
 * bus_close - stop both threads (sending what is queued if Redis is up, for
 * at most 500 ms) and free @b. NULL is a no-op.
 */
void bus_close(bus_t *b);

#ifdef __cplusplus
}
#endif

#endif /* DEMO_BUS_H */
