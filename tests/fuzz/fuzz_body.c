/*
 * libFuzzer target: request bodies and the query string → quantity and the
 * other fields (common/json.c, http/http.c).
 *
 * Input: one byte choosing the mode (data[0] % 5) — 0 a buy {"quantity"},
 * 1 an admin change {"remaining","restock"}, 2 a tunables change
 * {"gate_wait_ms","max_quantity"}, 3 a query string, 4 a checkout body
 * {"items": JSON_ITEMS max 16, "ttl_ms"} (POST /api/v1/Holds; when
 * (data[0] / 5) is odd, e.g. 0x09, the table has "items" alone, as for
 * POST /api/v1/Orders and /Holds/{id}/Confirm) — then the bytes.
 * Properties of modes 0-3:
 *   1. Whatever the strict reader accepts, libbson's JSON parser (an
 *      independent reference) accepts too, with the same keys and, for
 *      integers that fit an int64, the same values: nothing the reference
 *      would read differently can move stock.
 *   2. An accepted body re-encodes canonically ({"k":v,...}) and parses to
 *      the same values; a refused one comes with a reason.
 *   3. An accepted ?quantity= re-encodes as quantity=<n> with the same n.
 * Properties of mode 4 (JSON_ITEMS):
 *   4. json_object_parse accepts exactly what a strict reference written
 *      here accepts — a generic RFC 8259 value grammar (all value types,
 *      depth-limited), then the schema: one object whose keys are "items"
 *      (an array of 1..16 objects with exactly the keys "sku", a string of
 *      at most 64 decoded bytes, and "quantity", an integer) and "ttl_ms"
 *      (an integer), each at most once; integers without sign, leading
 *      zero, fraction or exponent, at most UINT64_MAX; strings with the
 *      RFC escapes, \u surrogate pairs, well-formed UTF-8 (checked on the
 *      raw bytes against the RFC 3629 table) and no NUL; nothing but white
 *      space after the object; white space alone is an empty object — and
 *      an accepted body has the same decoded values: items found or not,
 *      the count (`len`), every sku's bytes and length (NUL-terminated, no
 *      NUL inside), every quantity, ttl_ms. A refusal has a reason.
 *   5. An accepted items body re-encodes canonically — every sku character
 *      escaped (the 2-character escapes where they exist, else \u00XX;
 *      beyond ASCII \uXXXX, surrogate pairs above U+FFFF; upper- and
 *      lower-case hex on alternate items), quantities and ttl_ms in
 *      decimal — and that text parses, with json_object_parse and with the
 *      reference, to the same values.
 */
#include <bson/bson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "http/http.h"

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_body: property failed: %s (line %d)\n", #c,      \
			    __LINE__);                                                        \
			abort();                                                              \
		}                                                                             \
	} while (0)

static const char *const tables[3][2] = {
	{ "quantity", NULL },
	{ "remaining", "restock" },
	{ "gate_wait_ms", "max_quantity" },
};

static void
check_reference(const uint8_t *data, size_t size, struct json_field *f, size_t nf)
{
	bson_t doc;
	bson_error_t err;
	bson_iter_t it;
	size_t seen = 0, found = 0;

	for (size_t i = 0; i < nf; i++) {
		found += f[i].found;
		if (f[i].found && *f[i].u64 > INT64_MAX)
			return; /* beyond BSON's int64: the reference cannot read it */
	}
	if (found == 0)
		return; /* empty body or {}: nothing to compare */
	if (!bson_init_from_json(&doc, (const char *)data, (ssize_t)size, &err))
		abort(); /* we accepted what the reference refuses */
	if (!bson_iter_init(&it, &doc))
		abort();
	while (bson_iter_next(&it)) {
		size_t i;
		for (i = 0; i < nf; i++)
			if (strcmp(bson_iter_key(&it), f[i].name) == 0)
				break;
		if (i == nf || !f[i].found)
			abort(); /* a key the reference sees and we do not */
		seen++;
		int64_t v = BSON_ITER_HOLDS_INT32(&it) ? bson_iter_int32(&it) :
		    BSON_ITER_HOLDS_INT64(&it) ? bson_iter_int64(&it) : -1;
		if (v < 0 || (uint64_t)v != *f[i].u64)
			abort();
	}
	if (seen != found)
		abort();
	bson_destroy(&doc);
}

static void
check_roundtrip(struct json_field *f, size_t nf)
{
	char canon[256];
	size_t n = 0;
	uint64_t again[2] = { 0, 0 };
	struct json_field g[2];
	const char *why = NULL;

	n += (size_t)snprintf(canon + n, sizeof canon - n, "{");
	for (size_t i = 0; i < nf; i++)
		if (f[i].found)
			n += (size_t)snprintf(canon + n, sizeof canon - n, "%s\"%s\":%llu",
			    n > 1 ? "," : "", f[i].name, (unsigned long long)*f[i].u64);
	n += (size_t)snprintf(canon + n, sizeof canon - n, "}");
	for (size_t i = 0; i < nf; i++)
		g[i] = (struct json_field){ .name = f[i].name, .kind = JSON_U64, .max = f[i].max,
			.u64 = &again[i] };
	if (json_object_parse(canon, n, g, nf, &why) != 0)
		abort();
	for (size_t i = 0; i < nf; i++)
		if (g[i].found != f[i].found || (f[i].found && again[i] != *f[i].u64))
			abort();
}

static void
check_query(const uint8_t *data, size_t size)
{
	char v[32], canon[64];
	size_t vn, n;
	bool found, found2;
	uint64_t q, q2;

	if (http_query_get((const char *)data, size, "quantity", v, sizeof v, &vn, &found) != 0 ||
	    !found || http_u64_parse(v, vn, &q) != 0)
		return;
	n = (size_t)snprintf(canon, sizeof canon, "quantity=%llu", (unsigned long long)q);
	if (http_query_get(canon, n, "quantity", v, sizeof v, &vn, &found2) != 0 || !found2 ||
	    http_u64_parse(v, vn, &q2) != 0 || q2 != q)
		abort();
}

/* ---- mode 4: JSON_ITEMS bodies against a reference --------------------------------- */

#define ITEMS_MAX 16
#define REF_SKU_MAX 64
#define REF_DEPTH 32 /* deeper than the schema's 3 levels: refused either way */

struct ref_item {
	uint8_t sku[REF_SKU_MAX];
	size_t len;
	uint64_t quantity;
};

/* The reference's verdict and values. */
struct ref {
	const uint8_t *p, *end;
	bool bad;     /* a syntax error or a schema violation: refuse */
	bool has_ttl; /* "ttl_ms" is in the table */
	bool items_found, ttl_found;
	uint64_t ttl;
	size_t n;     /* elements of "items" seen (can exceed ITEMS_MAX: then bad) */
	struct ref_item it[ITEMS_MAX];
	struct ref_item *cur; /* the element being read, NULL past ITEMS_MAX */
};

enum role { R_ANY, R_TOP, R_ITEMS, R_ITEM, R_SKU, R_QTY, R_TTL };

static void
ref_ws(struct ref *r)
{
	while (r->p < r->end && (*r->p == 0x20 || *r->p == 0x09 || *r->p == 0x0A || *r->p == 0x0D))
		r->p++;
}

/* One well-formed UTF-8 sequence (RFC 3629 table 4) at r->p; false if not. */
static bool
ref_utf8_seq(struct ref *r, uint8_t *out, size_t cap, size_t *len)
{
	const uint8_t *s = r->p;
	size_t avail = (size_t)(r->end - s), need;
	uint8_t lo = 0x80, hi = 0xBF;

	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		need = 2;
	else if (s[0] == 0xE0)
		need = 3, lo = 0xA0;
	else if ((s[0] >= 0xE1 && s[0] <= 0xEC) || s[0] == 0xEE || s[0] == 0xEF)
		need = 3;
	else if (s[0] == 0xED)
		need = 3, hi = 0x9F;
	else if (s[0] == 0xF0)
		need = 4, lo = 0x90;
	else if (s[0] >= 0xF1 && s[0] <= 0xF3)
		need = 4;
	else if (s[0] == 0xF4)
		need = 4, hi = 0x8F;
	else
		return false;
	if (avail < need || s[1] < lo || s[1] > hi)
		return false;
	for (size_t k = 2; k < need; k++)
		if (s[k] < 0x80 || s[k] > 0xBF)
			return false;
	for (size_t k = 0; k < need; k++, (*len)++)
		if (*len < cap)
			out[*len] = s[k];
	r->p += need;
	return true;
}

static int
ref_hex(uint8_t h)
{
	if (h >= '0' && h <= '9')
		return h - '0';
	h |= 0x20;
	return h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
}

static bool
ref_u4(struct ref *r, unsigned *v)
{
	if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u')
		return false;
	*v = 0;
	for (int k = 2; k < 6; k++) {
		int d = ref_hex(r->p[k]);
		if (d < 0)
			return false;
		*v = *v * 16 + (unsigned)d;
	}
	r->p += 6;
	return true;
}

/*
 * A string at r->p (on the quote): its decoded bytes, the first @cap of them
 * into @out, their number into *@len. False on anything RFC 8259 refuses, a
 * lone surrogate, ill-formed UTF-8 or a NUL.
 */
static bool
ref_string(struct ref *r, uint8_t *out, size_t cap, size_t *len)
{
	static const char two[] = "\"\"\\\\//b\bf\fn\nr\rt\t";

	*len = 0;
	r->p++;
	for (;;) {
		if (r->p == r->end)
			return false;
		uint8_t ch = *r->p;
		if (ch == '"') {
			r->p++;
			return true;
		}
		if (ch < 0x20)
			return false;
		if (ch >= 0x80) {
			if (!ref_utf8_seq(r, out, cap, len))
				return false;
			continue;
		}
		if (ch != '\\') {
			if (*len < cap)
				out[*len] = ch;
			(*len)++, r->p++;
			continue;
		}
		if (r->end - r->p < 2)
			return false;
		unsigned cp;
		if (r->p[1] == 'u') {
			if (!ref_u4(r, &cp))
				return false;
			if (cp >= 0xD800 && cp <= 0xDBFF) {
				unsigned lo;
				if (!ref_u4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF)
					return false;
				cp = ((cp & 0x3FF) << 10 | (lo & 0x3FF)) + 0x10000;
			} else if (cp >= 0xDC00 && cp <= 0xDFFF) {
				return false;
			}
		} else {
			const char *e = NULL;
			for (size_t k = 0; k + 1 < sizeof two; k += 2)
				if ((uint8_t)two[k] == r->p[1])
					e = &two[k + 1];
			if (e == NULL)
				return false;
			cp = (uint8_t)*e;
			r->p += 2;
		}
		if (cp == 0)
			return false;
		uint8_t b[4];
		size_t nb;
		if (cp <= 0x7F)
			b[0] = (uint8_t)cp, nb = 1;
		else if (cp <= 0x7FF)
			b[0] = (uint8_t)(0xC0 + (cp >> 6)), b[1] = (uint8_t)(0x80 + (cp & 63)), nb = 2;
		else if (cp <= 0xFFFF)
			b[0] = (uint8_t)(0xE0 + (cp >> 12)), b[1] = (uint8_t)(0x80 + (cp >> 6 & 63)),
			b[2] = (uint8_t)(0x80 + (cp & 63)), nb = 3;
		else
			b[0] = (uint8_t)(0xF0 + (cp >> 18)), b[1] = (uint8_t)(0x80 + (cp >> 12 & 63)),
			b[2] = (uint8_t)(0x80 + (cp >> 6 & 63)), b[3] = (uint8_t)(0x80 + (cp & 63)), nb = 4;
		for (size_t k = 0; k < nb; k++, (*len)++)
			if (*len < cap)
				out[*len] = b[k];
	}
}

/* An RFC 8259 number; *@plain when it has no '-', fraction or exponent and fits. */
static bool
ref_number(struct ref *r, bool *plain, uint64_t *v)
{
	bool ovf = false, neg = false, frac = false, ex = false;

	*v = 0;
	if (*r->p == '-')
		neg = true, r->p++;
	if (r->p == r->end || *r->p < '0' || *r->p > '9')
		return false;
	if (*r->p == '0') {
		r->p++;
	} else {
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
			if (__builtin_mul_overflow(*v, 10, v) ||
			    __builtin_add_overflow(*v, (uint64_t)(*r->p - '0'), v))
				ovf = true;
			r->p++;
		}
	}
	if (r->p < r->end && *r->p == '.') {
		frac = true, r->p++;
		if (r->p == r->end || *r->p < '0' || *r->p > '9')
			return false;
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
			r->p++;
	}
	if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
		ex = true, r->p++;
		if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
			r->p++;
		if (r->p == r->end || *r->p < '0' || *r->p > '9')
			return false;
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
			r->p++;
	}
	*plain = !neg && !frac && !ex && !ovf;
	return true;
}

static bool ref_value(struct ref *r, enum role role, int depth);

static bool
key_is(const uint8_t *k, size_t n, const char *name)
{
	return n == strlen(name) && memcmp(k, name, n) == 0;
}

/* An object at r->p (on '{'); @role R_TOP, R_ITEM or R_ANY. */
static bool
ref_object(struct ref *r, enum role role, int depth)
{
	bool seen[2] = { false, false };
	struct ref_item *me = NULL;

	if (role == R_ITEM) {
		me = r->n < ITEMS_MAX ? &r->it[r->n] : NULL;
		if (me == NULL)
			r->bad = true; /* a 17th element */
		r->cur = me;
	}
	r->p++;
	ref_ws(r);
	if (r->p < r->end && *r->p == '}') {
		r->p++;
		goto done;
	}
	for (;;) {
		uint8_t key[16];
		size_t klen;
		enum role vr = R_ANY;

		ref_ws(r);
		if (r->p == r->end || *r->p != '"' || !ref_string(r, key, sizeof key, &klen))
			return false;
		if (klen > sizeof key)
			klen = sizeof key + 1; /* longer than any known key */
		if (role == R_TOP && key_is(key, klen, "items") && !seen[0])
			vr = R_ITEMS, seen[0] = true;
		else if (role == R_TOP && r->has_ttl && key_is(key, klen, "ttl_ms") && !seen[1])
			vr = R_TTL, seen[1] = true;
		else if (role == R_ITEM && key_is(key, klen, "sku") && !seen[0])
			vr = R_SKU, seen[0] = true;
		else if (role == R_ITEM && key_is(key, klen, "quantity") && !seen[1])
			vr = R_QTY, seen[1] = true;
		else
			r->bad = true; /* unknown or repeated (R_ANY: no key is known) */
		ref_ws(r);
		if (r->p == r->end || *r->p != ':')
			return false;
		r->p++;
		if (role == R_ITEM)
			r->cur = me; /* a nested value may have moved it */
		if (!ref_value(r, vr, depth + 1))
			return false;
		ref_ws(r);
		if (r->p < r->end && *r->p == ',') {
			r->p++;
			continue;
		}
		if (r->p < r->end && *r->p == '}') {
			r->p++;
			break;
		}
		return false;
	}
done:
	if (role == R_TOP)
		r->items_found = seen[0], r->ttl_found = seen[1];
	if (role == R_ITEM) {
		if (!seen[0] || !seen[1])
			r->bad = true;
		r->n++;
	}
	return true;
}

static bool
ref_value(struct ref *r, enum role role, int depth)
{
	if (depth > REF_DEPTH)
		return false;
	ref_ws(r);
	if (r->p == r->end)
		return false;
	switch (*r->p) {
	case '{':
		if (role != R_TOP && role != R_ITEM && role != R_ANY)
			r->bad = true;
		return ref_object(r, role == R_TOP || role == R_ITEM ? role : R_ANY, depth);
	case '[': {
		size_t count = 0;
		if (role != R_ITEMS && role != R_ANY)
			r->bad = true;
		enum role er = role == R_ITEMS ? R_ITEM : R_ANY;
		r->p++;
		ref_ws(r);
		if (r->p < r->end && *r->p == ']') {
			r->p++;
		} else {
			for (;;) {
				ref_ws(r);
				if (er == R_ITEM && (r->p == r->end || *r->p != '{'))
					r->bad = true; /* an element that is not an object */
				if (!ref_value(r, er == R_ITEM && r->p < r->end && *r->p == '{' ? R_ITEM :
					R_ANY, depth + 1))
					return false;
				count++;
				ref_ws(r);
				if (r->p < r->end && *r->p == ',') {
					r->p++;
					continue;
				}
				if (r->p < r->end && *r->p == ']') {
					r->p++;
					break;
				}
				return false;
			}
		}
		if (role == R_ITEMS && (count == 0 || count > ITEMS_MAX))
			r->bad = true;
		return true;
	}
	case '"': {
		uint8_t tmp[REF_SKU_MAX];
		size_t len;
		if (!ref_string(r, role == R_SKU && r->cur ? r->cur->sku : tmp, REF_SKU_MAX, &len))
			return false;
		if (role != R_SKU && role != R_ANY)
			r->bad = true;
		if (role == R_SKU) {
			if (len > REF_SKU_MAX)
				r->bad = true;
			if (r->cur)
				r->cur->len = len;
		}
		return true;
	}
	case 't': case 'f': case 'n': {
		static const char *const lit[] = { "true", "false", "null" };
		for (size_t k = 0; k < 3; k++) {
			size_t l = strlen(lit[k]);
			if ((size_t)(r->end - r->p) >= l && memcmp(r->p, lit[k], l) == 0) {
				r->p += l;
				if (role != R_ANY)
					r->bad = true;
				return true;
			}
		}
		return false;
	}
	default: {
		bool plain;
		uint64_t v;
		if (*r->p != '-' && (*r->p < '0' || *r->p > '9'))
			return false;
		if (!ref_number(r, &plain, &v))
			return false;
		if ((role != R_QTY && role != R_TTL) || !plain)
			r->bad = true;
		if (role == R_QTY && r->cur)
			r->cur->quantity = v;
		if (role == R_TTL)
			r->ttl = v;
		return true;
	}
	}
}

/* The reference's decision on @data: true to accept (values in *@r). */
static bool
ref_parse(const uint8_t *data, size_t size, bool has_ttl, struct ref *r)
{
	memset(r, 0, sizeof *r);
	r->p = data, r->end = data + size, r->has_ttl = has_ttl;
	ref_ws(r);
	if (r->p == r->end)
		return true; /* white space alone: an empty object */
	if (*r->p != '{')
		return false;
	if (!ref_value(r, R_TOP, 0))
		return false;
	ref_ws(r);
	return r->p == r->end && !r->bad;
}

/* The parser's values (@f: items, ttl_ms) equal the reference's. */
static void
same_values(const struct ref *r, const struct json_field *f, size_t nf,
    const struct json_item *items, size_t n, uint64_t ttl)
{
	CHECK(f[0].found == r->items_found);
	if (nf == 2) {
		CHECK(f[1].found == r->ttl_found);
		CHECK(!f[1].found || ttl == r->ttl);
	}
	if (!f[0].found)
		return;
	CHECK(n >= 1 && n <= ITEMS_MAX && n == r->n);
	for (size_t i = 0; i < n; i++) {
		CHECK(items[i].sku_len == r->it[i].len && items[i].sku_len <= JSON_ITEM_SKU_MAX);
		CHECK(memcmp(items[i].sku, r->it[i].sku, r->it[i].len) == 0);
		CHECK(items[i].sku[items[i].sku_len] == '\0' && strlen(items[i].sku) == items[i].sku_len);
		CHECK(items[i].quantity == r->it[i].quantity);
	}
}

static void
put_u(char *out, size_t *o, unsigned v, bool upper)
{
	*o += (size_t)sprintf(out + *o, upper ? "\\u%04X" : "\\u%04x", v);
}

/* Every character of @s escaped, into @out at *@o (@s is well-formed UTF-8). */
static void
escape_sku(const char *s, size_t len, char *out, size_t *o, bool upper)
{
	const unsigned char *u = (const unsigned char *)s;

	for (size_t i = 0; i < len;) {
		unsigned cp, nb = u[i] < 0x80 ? 1 : u[i] < 0xE0 ? 2 : u[i] < 0xF0 ? 3 : 4;
		static const char *const two = "\"\\/\b\f\n\r\t", *const letter = "\"\\/bfnrt";
		const char *e;

		cp = nb == 1 ? u[i] : u[i] & (0x7F >> nb);
		for (unsigned k = 1; k < nb; k++)
			cp = cp << 6 | (u[i + k] & 0x3F);
		i += nb;
		if (cp < 0x80 && (e = strchr(two, (int)cp)) != NULL) {
			out[(*o)++] = '\\';
			out[(*o)++] = letter[e - two];
		} else if (cp >= 0x10000) {
			put_u(out, o, 0xD800 + ((cp - 0x10000) >> 10), upper);
			put_u(out, o, 0xDC00 + ((cp - 0x10000) & 0x3FF), upper);
		} else {
			put_u(out, o, cp, upper);
		}
	}
}

static void
fuzz_items(const uint8_t *data, size_t size, bool has_ttl)
{
	struct json_item items[ITEMS_MAX], again[ITEMS_MAX];
	uint64_t ttl = 0, ttl2 = 0;
	size_t n = 0, n2 = 0, nf = has_ttl ? 2 : 1;
	struct json_field f[2] = {
		{ .name = "items", .kind = JSON_ITEMS, .max = ITEMS_MAX, .items = items, .len = &n },
		{ .name = "ttl_ms", .kind = JSON_U64, .max = UINT64_MAX, .u64 = &ttl },
	};
	struct json_field g[2] = {
		{ .name = "items", .kind = JSON_ITEMS, .max = ITEMS_MAX, .items = again, .len = &n2 },
		{ .name = "ttl_ms", .kind = JSON_U64, .max = UINT64_MAX, .u64 = &ttl2 },
	};
	static struct ref r, r2; /* large: not on the stack */
	static char canon[ITEMS_MAX * (JSON_ITEM_SKU_MAX * 6 + 64) + 64];
	const char *why = NULL;
	bool ok;
	size_t o = 0;

	memset(items, 0xAA, sizeof items); /* no stale NUL to hide a missing terminator */
	ok = json_object_parse((const char *)data, size, f, nf, &why) == 0;
	if (!ok)
		CHECK(why != NULL && why[0] != '\0'); /* every refusal says why */
	/* 4: the same decision and the same values as the reference. */
	CHECK(ref_parse(data, size, has_ttl, &r) == ok);
	if (!ok)
		return;
	same_values(&r, f, nf, items, n, ttl);
	/* 5: the canonical re-encoding reads back the same. */
	o += (size_t)sprintf(canon + o, "{");
	if (f[0].found) {
		o += (size_t)sprintf(canon + o, "\"items\":[");
		for (size_t i = 0; i < n; i++) {
			o += (size_t)sprintf(canon + o, "%s{\"sku\":\"", i ? "," : "");
			escape_sku(items[i].sku, items[i].sku_len, canon, &o, i % 2 == 0);
			o += (size_t)sprintf(canon + o, "\",\"quantity\":%llu}",
			    (unsigned long long)items[i].quantity);
		}
		o += (size_t)sprintf(canon + o, "]");
	}
	if (nf == 2 && f[1].found)
		o += (size_t)sprintf(canon + o, "%s\"ttl_ms\":%llu", f[0].found ? "," : "",
		    (unsigned long long)ttl);
	o += (size_t)sprintf(canon + o, "}");
	CHECK(o < sizeof canon);
	why = NULL;
	CHECK(json_object_parse(canon, o, g, nf, &why) == 0);
	CHECK(g[0].found == f[0].found && (nf == 1 || g[1].found == f[1].found));
	CHECK(!f[0].found || n2 == n);
	CHECK(nf == 1 || !f[1].found || ttl2 == ttl);
	for (size_t i = 0; f[0].found && i < n; i++)
		CHECK(again[i].sku_len == items[i].sku_len &&
		    memcmp(again[i].sku, items[i].sku, items[i].sku_len + 1) == 0 &&
		    again[i].quantity == items[i].quantity);
	CHECK(ref_parse((const uint8_t *)canon, o, has_ttl, &r2));
	same_values(&r2, g, nf, again, n2, ttl2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t vals[2] = { 0, 0 };
	struct json_field f[2];
	const char *why = NULL;
	size_t nf, t;

	if (size < 1)
		return 0;
	t = data[0] % 5;
	if (t == 4) {
		fuzz_items(data + 1, size - 1, (data[0] / 5) % 2 == 0);
		return 0;
	}
	data++, size--;
	if (t == 3) {
		check_query(data, size);
		return 0;
	}
	nf = tables[t][1] ? 2 : 1;
	for (size_t i = 0; i < nf; i++)
		f[i] = (struct json_field){ .name = tables[t][i], .kind = JSON_U64,
			.max = t == 2 && i == 0 ? 600000 : UINT64_MAX, .u64 = &vals[i] };
	if (json_object_parse((const char *)data, size, f, nf, &why) != 0) {
		if (why == NULL)
			abort(); /* every refusal says why */
		return 0;
	}
	check_reference(data, size, f, nf);
	check_roundtrip(f, nf);
	return 0;
}
