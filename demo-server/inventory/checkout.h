/*
 * The checkout vocabulary the inventory seam speaks (inventory.h): holds
 * (reservations with a deadline: held -> confirmed, cancelled or expired),
 * all-or-nothing orders, per-buyer limits and the idempotency records that
 * make a retried request replay its first answer. Semantics and what a
 * crash can cost: docs/internals/checkout.md.
 */
#ifndef DEMO_CHECKOUT_H
#define DEMO_CHECKOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stock.h>

#include "common/buf.h"

#define CHECKOUT_ITEMS_MAX 16 /* distinct SKUs per hold or order */
#define CHECKOUT_ID_LEN 34    /* "h_" or "o_" + 32 hex digits */
#define BUYER_ID_MAX 64       /* X-Buyer-Id: 1..64 of [A-Za-z0-9._:-] */
#define IDEM_KEY_MAX 255      /* Idempotency-Key: 1..255 visible ASCII */

struct checkout_item {
	char sku[STOCK_SKU_MAX + 1];
	uint64_t quantity;
};

enum hold_status { HOLD_HELD, HOLD_CONFIRMED, HOLD_CANCELLED, HOLD_EXPIRED };

/** hold_status_name - "held", "confirmed", "cancelled", "expired". */
const char *hold_status_name(enum hold_status s);

/** checkout_new_id - a fresh random id "<prefix>_<32 hex digits>" into @out (CHECKOUT_ID_LEN + 1 bytes). */
void checkout_new_id(char *out, char prefix);

/* What a checkout operation did, or why it refused. */
struct checkout_view {
	char id[CHECKOUT_ID_LEN + 1];   /* hold or order id */
	enum hold_status status;
	bool paying;                    /* a Confirm is waiting for the payment service */
	bool pay_failed;                /* the code returned is the payment step's */
	int64_t expires_at_ms;          /* holds: unix ms */
	size_t n;
	struct checkout_item items[CHECKOUT_ITEMS_MAX]; /* held, or confirmed once confirmed */
	char buyer[BUYER_ID_MAX + 1];   /* "" when anonymous */
	int refused;                    /* on a refusal: the index of the item refused, or -1 */
	bool over_limit;                /* STOCK_ESOLDOUT: the buyer's limit, not the stock */
	bool unknown;                   /* STOCK_ESYS that may have applied, its answer not
	                                   stored with it: the key keeps the 503 (never re-run) */
	struct stock_level level;       /* buys: the level just after */
};

/* What a request asks of checkout (holds, orders, buys). */
struct checkout_req {
	size_t n;
	struct checkout_item items[CHECKOUT_ITEMS_MAX]; /* distinct SKUs, quantity >= 1 */
	const char *buyer;  /* NULL: anonymous (no limit applies) */
	uint64_t ttl_ms;    /* holds */
};

/*
 * The answer an idempotent request stores with its change, in the same
 * atomic commit (so a crash keeps both or neither). @render writes the
 * success body from the operation's view; it runs under the inventory's
 * checkout lock and must not block.
 */
struct idem_answer {
	const char *key;            /* the Idempotency-Key */
	size_t key_len;
	const char *req;            /* the request it answers: method, path, body */
	size_t req_len;
	int status;                 /* the success status (200, 201) */
	int (*render)(const struct checkout_view *v, struct buf *body, void *arg);
	void *arg;
	struct buf body;            /* out: the rendered body (the caller frees it) */
	bool stored;                /* out: the change stored it (false: it changed
	                               nothing, e.g. a repeated Confirm; the caller
	                               stores its answer with inventory_idem_finish) */
};

/* What idempotency knows of a key when a request arrives. */
enum idem_state {
	IDEM_NEW,       /* first use: now in flight, finish or abort it */
	IDEM_REPLAY,    /* answered before: replay status and body */
	IDEM_MISMATCH,  /* used before for another request: 422 */
	IDEM_IN_FLIGHT  /* the first request is still running: 409 */
};

/* Payment before a confirm: 0 paid, else a STOCK_E* code the caller maps. */
typedef int (*checkout_pay_fn)(const struct checkout_view *hold, void *arg);

/** checkout_view_order - fill @out as the confirmed order of @req, with a fresh order id. */
void checkout_view_order(struct checkout_view *out, const struct checkout_req *req);

#endif /* DEMO_CHECKOUT_H */
