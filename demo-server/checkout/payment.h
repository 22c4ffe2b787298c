/*
 * The payment client Confirm calls (docs/internals/payment.md): one HTTP
 * POST per charge to a payment service (PSP), through a libstock circuit
 * breaker, with a hard deadline on the whole call.
 *
 * Each charge is one new connection (Connection: close) and at most one
 * request: the client never retries, so a charge is attempted at most once
 * per payment_charge(). The hold id is sent as the Idempotency-Key, so the
 * caller may retry a charge whose outcome it does not know (STOCK_ESYS)
 * with the same hold id without charging twice.
 *
 * The URL's host name is resolved once, by payment_open(): no charge waits
 * for DNS, so a charge never blocks beyond timeout_ms.
 */
#ifndef DEMO_PAYMENT_H
#define DEMO_PAYMENT_H

#include <stddef.h>
#include <stdint.h>

#include <stock.h>

#include "common/buf.h"

typedef struct payment payment_t;

/*
 * libstock has no STOCK_EPERM: a declined charge is STOCK_ECONFLICT ("the
 * service and we disagree about this charge"), a code payment_charge()
 * returns for nothing else. Callers should write PAYMENT_EDECLINED.
 */
#define PAYMENT_EDECLINED STOCK_ECONFLICT

/* Limits payment_charge() checks (STOCK_EINVAL beyond them, no call). */
#define PAYMENT_HOLD_MAX 128    /* hold id: 1..128 bytes of printable ASCII, no space */
#define PAYMENT_STR_MAX 256     /* sku and buyer: at most 256 bytes of UTF-8 */
#define PAYMENT_ITEMS_MAX 256   /* items per charge: 1..256 */
#define PAYMENT_ANSWER_MAX 4096 /* status line + headers read at most */

struct payment_item {
	const char *sku;   /* UTF-8, 1..PAYMENT_STR_MAX bytes */
	uint64_t quantity; /* 1..STOCK_COUNT_MAX */
};

struct payment_options {
	/* http://host[:port][/path[?query]]: only http; host a DNS name or a
	 * dotted IPv4 address; no user info, no fragment; port 1..65535
	 * (default 80); path "/" when absent. */
	const char *url;
	unsigned timeout_ms; /* whole-call deadline (connect + send + answer); 0 = 2000 */
	unsigned failures;   /* consecutive failures that open the breaker (1..65535); 0 = 5 */
	unsigned open_ms;    /* open period before one half-open probe; 0 = 1000 */
};

/**
 * payment_open - parse the URL, resolve its host, make a closed breaker.
 *
 * Returns 0 (*@out set); STOCK_EINVAL for a NULL argument, a URL that is not
 * exactly the form above, or failures above 65535; STOCK_ESYS when the host
 * name does not resolve to an IPv4 address; STOCK_ENOMEM. Blocks for the
 * name resolution only.
 */
int payment_open(payment_t **out, const struct payment_options *opt);

/**
 * payment_charge - charge hold @hold_id for @items[0..@n) on behalf of
 * @buyer (NULL: no buyer).
 *
 * POSTs {"hold_id":"...","items":[{"sku":"...","quantity":n},...],
 * "buyer":"..."|null} with the header Idempotency-Key: <hold_id>, at most
 * once, through the breaker.
 *
 * Returns
 *   0                  the service answered 2xx: the hold is paid;
 *   PAYMENT_EDECLINED  it answered 4xx (except 408, 409, 429): payment
 *                      declined; the service is healthy, the breaker counts
 *                      a success;
 *   STOCK_ESYS         no answer in time, connect failure, a malformed
 *                      answer, 5xx, 408, 409, 429 or any other status:
 *                      counted against the breaker; the charge MAY have been
 *                      made (retry with the same hold id to find out);
 *   STOCK_EOPEN        at once, without a call: the breaker is open or its
 *                      probe is out; *@retry_after_s (if not NULL) gets the
 *                      seconds until a call may be admitted again, >= 1;
 *   STOCK_EINVAL       bad arguments (limits above, invalid UTF-8): no call;
 *   STOCK_ENOMEM       the request could not be built: no call.
 * Never blocks longer than timeout_ms. Thread-safe; any number of
 * concurrent charges.
 */
int payment_charge(payment_t *p, const char *hold_id, const struct payment_item *items, size_t n,
    const char *buyer, unsigned *retry_after_s);

/**
 * payment_metrics - append the Prometheus families
 * stock_payment_calls_total{result="ok|declined|failed|rejected"} and
 * stock_payment_breaker_state (0 closed, 1 open, 2 half-open) to @out.
 * Thread-safe.
 */
void payment_metrics(payment_t *p, struct buf *out);

/** payment_close - free @p (NULL is fine). No charge may be running. */
void payment_close(payment_t *p);

#endif /* DEMO_PAYMENT_H */
