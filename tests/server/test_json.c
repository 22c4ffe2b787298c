/*
 * The strict JSON reader's JSON_ITEMS kind (demo-server/common/json.c):
 * an array of 1..max flat objects {"sku": string, "quantity": integer}, as
 * in the checkout bodies {"items": [...], "ttl_ms": n} (POST /api/v1/Holds)
 * and {"items": [...]} (POST /api/v1/Orders, /Holds/{id}/Confirm).
 *
 * Accepted forms and their decoded values (escapes, surrogate pairs, white
 * space, either key order, 2^64-1), the `len` output, the outer object's
 * other fields alongside it, and every refusal with its reason string.
 * The alphabet of a SKU, quantity 0 and duplicate SKUs are the HTTP layer's
 * business (http/checkout.c), so the reader accepts them.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/json.h"

#define MAX_ITEMS 16

/* The checkout table: "items" (max @max) and, when @with_ttl, "ttl_ms". */
struct body {
	struct json_item items[MAX_ITEMS + 1];
	size_t n;
	uint64_t ttl;
	struct json_field f[2];
	const char *why;
	int rc;
};

static void
parse_n(struct body *b, const char *s, size_t len, size_t max, bool with_ttl)
{
	memset(b, 0, sizeof *b);
	b->n = 12345; /* a sentinel: written only once the whole array is read */
	b->f[0] = (struct json_field){ .name = "items", .kind = JSON_ITEMS, .max = max,
		.items = b->items, .len = &b->n };
	b->f[1] = (struct json_field){ .name = "ttl_ms", .kind = JSON_U64, .max = UINT64_MAX,
		.u64 = &b->ttl };
	b->rc = json_object_parse(s, len, b->f, with_ttl ? 2 : 1, &b->why);
}

static void
parse(struct body *b, const char *s)
{
	parse_n(b, s, strlen(s), MAX_ITEMS, true);
}

static void
accepted(const struct body *b, const char *s)
{
	cr_assert_eq(b->rc, 0, "refused %s: %s", s, b->why ? b->why : "(no reason)");
}

static void
refused(const char *s, const char *reason)
{
	struct body b;

	parse(&b, s);
	cr_assert_eq(b.rc, -1, "accepted %s", s);
	cr_assert_not_null(b.why, "no reason for %s", s);
	cr_assert_str_eq(b.why, reason, "%s", s);
	/* (on -1 the outputs of fields already read may be set: json.h) */
}

static void
item_is(const struct json_item *it, const char *sku, size_t sku_len, uint64_t q)
{
	cr_assert_eq(it->sku_len, sku_len);
	cr_assert_eq(memcmp(it->sku, sku, sku_len), 0);
	cr_assert_eq(it->sku[sku_len], '\0', "sku is NUL-terminated");
	cr_assert_eq(it->quantity, q);
}

Test(json_items, two_items_and_ttl)
{
	struct body b;
	const char *s = "{\"items\":[{\"sku\":\"NVDA\",\"quantity\":2},{\"sku\":\"AMD\",\"quantity\":1}],"
			"\"ttl_ms\":30000}";

	parse(&b, s);
	accepted(&b, s);
	cr_assert(b.f[0].found && b.f[1].found);
	cr_assert_eq(b.n, 2);
	item_is(&b.items[0], "NVDA", 4, 2);
	item_is(&b.items[1], "AMD", 3, 1);
	cr_assert_eq(b.ttl, 30000);
}

Test(json_items, ttl_before_items_white_space_key_order)
{
	struct body b;
	const char *s = " \r\n\t{ \"ttl_ms\" : 5 ,\n \"items\" : [ { \"quantity\" : 3 , \"sku\" : "
			"\"a.b_c:d-E\" } , {\"sku\":\"Z\",\"quantity\":0}\t] }\n ";

	parse(&b, s);
	accepted(&b, s);
	cr_assert_eq(b.n, 2);
	item_is(&b.items[0], "a.b_c:d-E", 9, 3);
	item_is(&b.items[1], "Z", 1, 0); /* 0: the caller bounds quantities */
	cr_assert(b.f[1].found);
	cr_assert_eq(b.ttl, 5);
}

Test(json_items, without_ttl_field_table)
{
	struct body b;
	const char *s = "{\"items\":[{\"sku\":\"NVDA\",\"quantity\":7}]}";

	parse_n(&b, s, strlen(s), MAX_ITEMS, false);
	accepted(&b, s);
	cr_assert_eq(b.n, 1);
	item_is(&b.items[0], "NVDA", 4, 7);
	/* the Orders table has no ttl_ms */
	s = "{\"items\":[{\"sku\":\"NVDA\",\"quantity\":7}],\"ttl_ms\":1}";
	parse_n(&b, s, strlen(s), MAX_ITEMS, false);
	cr_assert_eq(b.rc, -1);
	cr_assert_str_eq(b.why, "unknown or repeated field in body");
}

Test(json_items, largest_quantity)
{
	struct body b;
	const char *s = "{\"items\":[{\"sku\":\"X\",\"quantity\":18446744073709551615}]}";

	parse(&b, s);
	accepted(&b, s);
	item_is(&b.items[0], "X", 1, UINT64_MAX);
}

Test(json_items, escapes_in_sku_and_keys)
{
	struct body b;
	const char *s = "{\"\\u0069tems\":[{\"\\u0073ku\":\"N\\u0056DA\",\"quantit\\u0079\":1},"
			"{\"sku\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\",\"quantity\":2}]}";

	parse(&b, s);
	accepted(&b, s);
	cr_assert_eq(b.n, 2);
	item_is(&b.items[0], "NVDA", 4, 1);
	item_is(&b.items[1], "\"\\/\b\f\n\r\t", 8, 2);
}

Test(json_items, utf8_and_surrogate_pairs)
{
	struct body b;
	const char *s = "{\"items\":[{\"sku\":\"\\ud83d\\ude00\\u00e9\\u20AC\",\"quantity\":1},"
			"{\"sku\":\"caf\xc3\xa9\",\"quantity\":2}]}";

	parse(&b, s);
	accepted(&b, s);
	item_is(&b.items[0], "\xf0\x9f\x98\x80\xc3\xa9\xe2\x82\xac", 9, 1);
	item_is(&b.items[1], "caf\xc3\xa9", 5, 2);
}

Test(json_items, sku_of_64_bytes_and_the_len_output)
{
	char s[4096], sku[65];
	size_t o = 0;
	struct body b;

	memset(sku, 'A', 64);
	sku[64] = '\0';
	/* the first sku is 62 'A' + "00": 64 bytes, the longest; then "A01".."A15" */
	o += (size_t)snprintf(s + o, sizeof s - o, "{\"items\":[");
	for (int i = 0; i < MAX_ITEMS; i++)
		o += (size_t)snprintf(s + o, sizeof s - o, "%s{\"sku\":\"%.*s%02d\",\"quantity\":%d}",
		    i ? "," : "", i == 0 ? 62 : 1, sku, i, i + 1);
	o += (size_t)snprintf(s + o, sizeof s - o, "]}");
	parse_n(&b, s, o, MAX_ITEMS, true);
	accepted(&b, s);
	cr_assert_eq(b.n, MAX_ITEMS, "len is the number of elements");
	cr_assert_eq(b.items[0].sku_len, 64);
	cr_assert_eq(strlen(b.items[0].sku), 64);
	for (int i = 1; i < MAX_ITEMS; i++) {
		char want[16];
		snprintf(want, sizeof want, "A%02d", i);
		item_is(&b.items[i], want, 3, (uint64_t)i + 1);
	}
	/* the same 16 against max 15: too many */
	parse_n(&b, s, o, MAX_ITEMS - 1, true);
	cr_assert_eq(b.rc, -1);
	cr_assert_str_eq(b.why, "too many items");
	/* len for one element */
	parse(&b, "{\"items\":[{\"sku\":\"A\",\"quantity\":1}]}");
	cr_assert_eq(b.rc, 0);
	cr_assert_eq(b.n, 1);
}

Test(json_items, max_one)
{
	struct body b;

	parse_n(&b, "{\"items\":[{\"sku\":\"A\",\"quantity\":1}]}", 36, 1, true);
	cr_assert_eq(b.rc, 0, "%s", b.why ? b.why : "");
	cr_assert_eq(b.n, 1);
	const char *two = "{\"items\":[{\"sku\":\"A\",\"quantity\":1},{\"sku\":\"B\",\"quantity\":1}]}";
	parse_n(&b, two, strlen(two), 1, true);
	cr_assert_eq(b.rc, -1);
	cr_assert_str_eq(b.why, "too many items");
}

Test(json_items, seventeen_items)
{
	char s[2048];
	size_t o = 0;

	o += (size_t)snprintf(s + o, sizeof s - o, "{\"items\":[");
	for (int i = 0; i < MAX_ITEMS + 1; i++)
		o += (size_t)snprintf(s + o, sizeof s - o, "%s{\"sku\":\"S%d\",\"quantity\":1}",
		    i ? "," : "", i);
	snprintf(s + o, sizeof s - o, "]}");
	refused(s, "too many items");
}

Test(json_items, absent_items)
{
	struct body b;

	parse(&b, "{}");
	cr_assert_eq(b.rc, 0);
	cr_assert(!b.f[0].found && !b.f[1].found);
	cr_assert_eq(b.n, 12345, "len untouched when items is absent");
	parse(&b, "{\"ttl_ms\":9}");
	cr_assert_eq(b.rc, 0);
	cr_assert(!b.f[0].found && b.f[1].found);
	cr_assert_eq(b.ttl, 9);
	parse(&b, " \n");
	cr_assert_eq(b.rc, 0, "white space alone is an empty object");
	cr_assert(!b.f[0].found);
	parse_n(&b, "", 0, MAX_ITEMS, true);
	cr_assert_eq(b.rc, 0);
	cr_assert(!b.f[0].found);
}

Test(json_items, other_field_kinds_alongside)
{
	char name[16];
	size_t name_len = 0, n = 0;
	uint64_t limit = 0;
	struct json_item items[4];
	const char *why = NULL;
	struct json_field f[3] = {
		{ .name = "name", .kind = JSON_STR, .str = name, .cap = sizeof name - 1, .len = &name_len },
		{ .name = "items", .kind = JSON_ITEMS, .max = 4, .items = items, .len = &n },
		{ .name = "limit", .kind = JSON_U64, .max = 100, .u64 = &limit },
	};
	const char *s = "{\"name\":\"b\\u00e9\",\"items\":[{\"sku\":\"A\",\"quantity\":1},"
			"{\"quantity\":2,\"sku\":\"B\"}],\"limit\":100}";

	cr_assert_eq(json_object_parse(s, strlen(s), f, 3, &why), 0, "%s", why ? why : "");
	cr_assert(f[0].found && f[1].found && f[2].found);
	cr_assert_str_eq(name, "b\xc3\xa9");
	cr_assert_eq(name_len, 3);
	cr_assert_eq(n, 2);
	item_is(&items[0], "A", 1, 1);
	item_is(&items[1], "B", 1, 2);
	cr_assert_eq(limit, 100);
	/* an outer field's own bound still applies after the array */
	s = "{\"items\":[{\"sku\":\"A\",\"quantity\":1}],\"limit\":101}";
	cr_assert_eq(json_object_parse(s, strlen(s), f, 3, &why), -1);
	cr_assert_str_eq(why, "field out of range");
	/* a quantity is not bounded by an outer field's max */
	why = NULL;
	s = "{\"limit\":1,\"items\":[{\"sku\":\"A\",\"quantity\":1000}]}";
	cr_assert_eq(json_object_parse(s, strlen(s), f, 3, &why), 0, "%s", why ? why : "");
	cr_assert_eq(items[0].quantity, 1000);
	/* the outer keys are not item keys, and the other way round */
	s = "{\"items\":[{\"sku\":\"A\",\"quantity\":1,\"limit\":1}]}";
	cr_assert_eq(json_object_parse(s, strlen(s), f, 3, &why), -1);
	cr_assert_str_eq(why, "unknown or repeated field in body");
	s = "{\"sku\":\"A\"}";
	cr_assert_eq(json_object_parse(s, strlen(s), f, 3, &why), -1);
	cr_assert_str_eq(why, "unknown or repeated field in body");
}

Test(json_items, refusals_of_the_array)
{
	refused("{\"items\":1}", "items must be an array");
	refused("{\"items\":\"NVDA\"}", "items must be an array");
	refused("{\"items\":{\"sku\":\"A\",\"quantity\":1}}", "items must be an array");
	refused("{\"items\":null}", "items must be an array");
	refused("{\"items\":[]}", "items must not be empty");
	refused("{\"items\":[ \n ]}", "items must not be empty");
	refused("{\"items\":[1]}", "every item must be an object");
	refused("{\"items\":[\"A\"]}", "every item must be an object");
	refused("{\"items\":[[{\"sku\":\"A\",\"quantity\":1}]]}", "every item must be an object");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1},]}", "every item must be an object");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1} {\"sku\":\"B\",\"quantity\":1}]}",
	    "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}", "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}]", "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}]} x", "trailing bytes after the JSON object");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}],\"items\":[{\"sku\":\"B\",\"quantity\":1}]}",
	    "unknown or repeated field in body");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}],\"ttl_ms\":1,\"ttl_ms\":2}",
	    "unknown or repeated field in body");
	refused("[{\"sku\":\"A\",\"quantity\":1}]", "body must be a JSON object");
}

Test(json_items, refusals_of_an_item)
{
	refused("{\"items\":[{}]}", "every item needs \"sku\" and \"quantity\"");
	refused("{\"items\":[{\"sku\":\"A\"}]}", "every item needs \"sku\" and \"quantity\"");
	refused("{\"items\":[{\"quantity\":1}]}", "every item needs \"sku\" and \"quantity\"");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1},{\"sku\":\"B\"}]}",
	    "every item needs \"sku\" and \"quantity\"");
	refused("{\"items\":[{\"sku\":\"A\",\"sku\":\"B\",\"quantity\":1}]}",
	    "unknown or repeated field in body");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1,\"quantity\":1}]}",
	    "unknown or repeated field in body");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1,\"price\":3}]}",
	    "unknown or repeated field in body");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1,\"items\":[{\"sku\":\"B\",\"quantity\":1}]}]}",
	    "unknown or repeated field in body");
	refused("{\"items\":[{\"items\":[{\"sku\":\"B\",\"quantity\":1}],\"sku\":\"A\",\"quantity\":1}]}",
	    "unknown or repeated field in body");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1,}]}", "body is not valid JSON");
	refused("{\"items\":[{\"sku\" \"A\",\"quantity\":1}]}", "body is not valid JSON");
}

Test(json_items, refusals_of_a_quantity)
{
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":18446744073709551616}]}", "field out of range");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":18446744073709551617}]}", "field out of range");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":99999999999999999999999}]}",
	    "field out of range");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1.0}]}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1e2}]}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1E2}]}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":\"2\"}]}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":true}]}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":null}]}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":-1}]}", "field must not be negative");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":-0}]}", "field must not be negative");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":01}]}", "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}],\"ttl_ms\":1.5}", "field must be an integer");
	refused("{\"items\":[{\"sku\":\"A\",\"quantity\":1}],\"ttl_ms\":18446744073709551616}",
	    "field out of range");
}

Test(json_items, refusals_of_a_sku)
{
	char s[256];

	refused("{\"items\":[{\"sku\":5,\"quantity\":1}]}", "field must be a string");
	refused("{\"items\":[{\"sku\":null,\"quantity\":1}]}", "field must be a string");
	refused("{\"items\":[{\"sku\":[\"A\"],\"quantity\":1}]}", "field must be a string");
	snprintf(s, sizeof s, "{\"items\":[{\"sku\":\"%065d\",\"quantity\":1}]}", 0);
	refused(s, "string too long");
	refused("{\"items\":[{\"sku\":\"N\\u0000DA\",\"quantity\":1}]}", "string contains a NUL character");
	refused("{\"items\":[{\"sku\":\"\\ud83d\",\"quantity\":1}]}", "string is not valid UTF-16");
	refused("{\"items\":[{\"sku\":\"\\ud83dx\",\"quantity\":1}]}", "string is not valid UTF-16");
	refused("{\"items\":[{\"sku\":\"\\ude00\",\"quantity\":1}]}", "string is not valid UTF-16");
	refused("{\"items\":[{\"sku\":\"\\ud83d\\u0041\",\"quantity\":1}]}", "string is not valid UTF-16");
	refused("{\"items\":[{\"sku\":\"\xff\",\"quantity\":1}]}", "string is not valid UTF-8");
	refused("{\"items\":[{\"sku\":\"\xc0\xaf\",\"quantity\":1}]}", "string is not valid UTF-8");
	refused("{\"items\":[{\"sku\":\"\xed\xa0\x80\",\"quantity\":1}]}", "string is not valid UTF-8");
	refused("{\"items\":[{\"sku\":\"A\nB\",\"quantity\":1}]}", "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"\\x41\",\"quantity\":1}]}", "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"\\u00G1\",\"quantity\":1}]}", "body is not valid JSON");
	refused("{\"items\":[{\"sku\":\"A", "body is not valid JSON");
}

Test(json_items, raw_nul_byte)
{
	static const char s[] = "{\"items\":[{\"sku\":\"A\0B\",\"quantity\":1}]}";
	struct body b;

	parse_n(&b, s, sizeof s - 1, MAX_ITEMS, true);
	cr_assert_eq(b.rc, -1);
	cr_assert_str_eq(b.why, "body is not valid JSON");
	/* the length decides, not a NUL: a body cut inside the array is refused */
	parse_n(&b, s, 20, MAX_ITEMS, true);
	cr_assert_eq(b.rc, -1);
	cr_assert_str_eq(b.why, "body is not valid JSON");
}
