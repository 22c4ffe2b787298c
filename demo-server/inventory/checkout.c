/*
 * The checkout vocabulary both modes share (checkout.h): status names and
 * the random ids of holds and orders.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include <stock.h>

#include "inventory/checkout.h"

const char *
hold_status_name(enum hold_status s)
{
	switch (s) {
	case HOLD_HELD: return "held";
	case HOLD_CONFIRMED: return "confirmed";
	case HOLD_CANCELLED: return "cancelled";
	case HOLD_EXPIRED: return "expired";
	}
	return "unknown";
}

/*
 * 16 random bytes for an id. Each thread draws 256 bytes from the kernel at
 * a time (getrandom guarantees a full read up to 256 bytes) and hands them
 * out once each: one system call per 16 ids instead of one per id.
 */
static bool
id_random(uint8_t r[16])
{
	static __thread uint8_t pool[256];
	static __thread size_t left;

	if (left < 16) {
		if (getrandom(pool, sizeof pool, 0) != (ssize_t)sizeof pool)
			return false;
		left = sizeof pool;
	}
	memcpy(r, pool + sizeof pool - left, 16);
	left -= 16;
	return true;
}

void
checkout_new_id(char *out, char prefix)
{
	uint8_t r[16];
	static const char hex[] = "0123456789abcdef";

	if (!id_random(r)) {
		uint64_t a = stock_now_ns(), c = (uint64_t)(uintptr_t)out;

		for (int i = 0; i < 8; i++) {
			r[i] = (uint8_t)(a >> (8 * i));
			r[8 + i] = (uint8_t)(c >> (8 * i));
		}
	}
	out[0] = prefix;
	out[1] = '_';
	for (int i = 0; i < 16; i++) {
		out[2 + 2 * i] = hex[r[i] >> 4];
		out[3 + 2 * i] = hex[r[i] & 15];
	}
	out[CHECKOUT_ID_LEN] = '\0';
}

void
checkout_view_order(struct checkout_view *out, const struct checkout_req *req)
{
	checkout_new_id(out->id, 'o');
	out->status = HOLD_CONFIRMED;
	out->n = req->n;
	memcpy(out->items, req->items, req->n * sizeof req->items[0]);
	if (req->buyer != NULL)
		snprintf(out->buyer, sizeof out->buyer, "%s", req->buyer);
}
