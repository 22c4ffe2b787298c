/*
 * libFuzzer target: the request path → route + SKU (http/routes.c).
 *
 * Input: one byte choosing the method, then the raw (undecoded) path.
 * Properties, beyond "no crash" under ASan + UBSan:
 *   1. routes_match agrees with a strict reference written here
 *      independently: decode %XX (refusing a malformed escape and %00),
 *      then an exact path or a {sku} prefix followed by a valid SKU.
 *   2. An accepted request re-encodes: the route's own path (and its SKU,
 *      every byte as %XX, then the route's suffix such as "/Confirm")
 *      routes to the same route and SKU again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/routes.h"

static const char *const methods[] = { "GET", "POST", "PUT", "DELETE" };

static int
hexv(int c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	    c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The reference decoder: -1 on a bad escape or a NUL, else the length. */
static long
ref_decode(const uint8_t *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int ch = s[i];
		if (ch == '%') {
			if (n - i < 3)
				return -1;
			int hi = hexv(s[i + 1]), lo = hexv(s[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = hi * 16 + lo;
			i += 2;
		}
		if (ch == 0 || o == cap)
			return -1;
		out[o++] = (char)ch;
	}
	return (long)o;
}

/* The reference router's first question: does any route have this path? */
static bool
ref_path_known(const char *path, size_t plen)
{
	for (size_t i = 0; i + 1 < routes_count(); i++) {
		bool has_sku;
		const char *rp = routes_path(i, &has_sku), *sfx = routes_suffix(i);
		size_t rl = strlen(rp), sl = strlen(sfx);

		if (has_sku ? plen >= rl + sl && memcmp(path, rp, rl) == 0 &&
		    memcmp(path + plen - sl, sfx, sl) == 0 &&
		    (!routes_is_id(i) || memchr(path + rl, '/', plen - rl - sl) == NULL) :
		    plen == rl && memcmp(path, rp, rl) == 0)
			return true;
	}
	return false;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct route_match m, again;
	char dec[512], canon[4096];
	const char *method;
	long dl;
	int st;

	if (size < 1)
		return 0;
	method = methods[data[0] & 3];
	st = routes_match(method, (const char *)data + 1, size - 1, &m);
	dl = ref_decode(data + 1, size - 1, dec, sizeof dec);
	if (dl < 0) {
		/* 1: the reference refuses the bytes: so must the router. */
		if (st != 400 || m.route != routes_count() - 1)
			abort();
		return 0;
	}
	if (ref_path_known(dec, (size_t)dl) != (st != 404))
		abort();
	if (st != 0)
		return 0;
	/* 2: re-encode the meaning and route it again. */
	bool has_sku;
	const char *rp = routes_path(m.route, &has_sku), *sfx = routes_suffix(m.route);
	size_t n = (size_t)snprintf(canon, sizeof canon, "%s", rp);
	if (has_sku) {
		if (!stock_sku_valid(m.sku, m.sku_len) || strlen(m.sku) != m.sku_len)
			abort();
		for (size_t i = 0; i < m.sku_len; i++)
			n += (size_t)snprintf(canon + n, sizeof canon - n, "%%%02X",
			    (unsigned char)m.sku[i]);
		n += (size_t)snprintf(canon + n, sizeof canon - n, "%s", sfx);
	}
	if (routes_match(method, canon, n, &again) != 0 || again.route != m.route ||
	    again.sku_len != m.sku_len || memcmp(again.sku, m.sku, m.sku_len) != 0)
		abort();
	/* The decoded path is exactly the route's path (+ the SKU + its suffix). */
	if ((size_t)dl != strlen(rp) + m.sku_len + strlen(sfx) || memcmp(dec, rp, strlen(rp)) != 0 ||
	    memcmp(dec + strlen(rp), m.sku, m.sku_len) != 0 ||
	    memcmp(dec + strlen(rp) + m.sku_len, sfx, strlen(sfx)) != 0)
		abort();
	return 0;
}
