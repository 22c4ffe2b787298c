/*
 * Strict JSON object reader (json.h).
 *
 * A cursor walks the bytes once: white space, '{', then key/value pairs
 * until '}', then only white space to the end. A key is unescaped into a
 * small buffer and looked up in the caller's field table; its value must be
 * of the field's kind. Integers are accumulated with an overflow check
 * before each multiply-add; strings are unescaped (\uXXXX with surrogate
 * pairs) into the caller's buffer, then checked to be UTF-8. No recursion:
 * values are scalars, or (JSON_ITEMS) an array of objects of scalars read
 * by the same object reader one level down, so no input can exhaust the
 * stack.
 */
#include <string.h>

#include "json.h"

struct cur {
	const unsigned char *p, *end;
	const char *why;
};

static int
fail(struct cur *c, const char *why)
{
	if (c->why == NULL)
		c->why = why;
	return -1;
}

static void
ws(struct cur *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static bool
eat(struct cur *c, unsigned char ch)
{
	ws(c);
	if (c->p < c->end && *c->p == ch) {
		c->p++;
		return true;
	}
	return false;
}

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool
json_utf8_valid(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < n) {
		unsigned char b = s[i];
		uint32_t cp;
		size_t need;

		if (b < 0x80) {
			i++;
			continue;
		}
		if (b >= 0xC2 && b <= 0xDF)
			need = 1, cp = b & 0x1F;
		else if (b >= 0xE0 && b <= 0xEF)
			need = 2, cp = b & 0x0F;
		else if (b >= 0xF0 && b <= 0xF4)
			need = 3, cp = b & 0x07;
		else
			return false;
		if (n - i - 1 < need)
			return false;
		for (size_t k = 1; k <= need; k++) {
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3F);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += need + 1;
	}
	return true;
}

static int
hex4(struct cur *c, uint32_t *out)
{
	uint32_t v = 0;

	if (c->end - c->p < 4)
		return fail(c, "body is not valid JSON");
	for (int i = 0; i < 4; i++) {
		unsigned char h = *c->p++;
		int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 :
		    h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
		if (d < 0)
			return fail(c, "body is not valid JSON");
		v = v << 4 | (uint32_t)d;
	}
	*out = v;
	return 0;
}

static int
put(struct cur *c, char *out, size_t cap, size_t *o, uint32_t cp)
{
	unsigned char b[4];
	size_t n;

	if (cp == 0)
		return fail(c, "string contains a NUL character");
	if (cp < 0x80)
		b[0] = (unsigned char)cp, n = 1;
	else if (cp < 0x800)
		b[0] = (unsigned char)(0xC0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 0x3F)), n = 2;
	else if (cp < 0x10000)
		b[0] = (unsigned char)(0xE0 | cp >> 12), b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)),
		b[2] = (unsigned char)(0x80 | (cp & 0x3F)), n = 3;
	else
		b[0] = (unsigned char)(0xF0 | cp >> 18), b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F)),
		b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)), b[3] = (unsigned char)(0x80 | (cp & 0x3F)),
		n = 4;
	if (cap - *o < n)
		return fail(c, "string too long");
	memcpy(out + *o, b, n);
	*o += n;
	return 0;
}

/* A JSON string at the cursor (which is on the opening quote), unescaped. */
static int
string(struct cur *c, char *out, size_t cap, size_t *outlen)
{
	size_t o = 0;

	if (c->p == c->end || *c->p != '"')
		return fail(c, "body is not valid JSON");
	c->p++;
	for (;;) {
		unsigned char ch;

		if (c->p == c->end)
			return fail(c, "body is not valid JSON");
		ch = *c->p++;
		if (ch == '"')
			break;
		if (ch < 0x20)
			return fail(c, "body is not valid JSON");
		if (ch != '\\') {
			if (ch == 0)
				return fail(c, "string contains a NUL character");
			if (o == cap)
				return fail(c, "string too long");
			out[o++] = (char)ch;
			continue;
		}
		if (c->p == c->end)
			return fail(c, "body is not valid JSON");
		ch = *c->p++;
		uint32_t cp;
		switch (ch) {
		case '"': cp = '"'; break;
		case '\\': cp = '\\'; break;
		case '/': cp = '/'; break;
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u':
			if (hex4(c, &cp) != 0)
				return -1;
			if (cp >= 0xDC00 && cp <= 0xDFFF)
				return fail(c, "string is not valid UTF-16");
			if (cp >= 0xD800 && cp <= 0xDBFF) {
				uint32_t lo;
				if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u')
					return fail(c, "string is not valid UTF-16");
				c->p += 2;
				if (hex4(c, &lo) != 0)
					return -1;
				if (lo < 0xDC00 || lo > 0xDFFF)
					return fail(c, "string is not valid UTF-16");
				cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			}
			break;
		default:
			return fail(c, "body is not valid JSON");
		}
		if (put(c, out, cap, &o, cp) != 0)
			return -1;
	}
	if (!json_utf8_valid(out, o))
		return fail(c, "string is not valid UTF-8");
	*outlen = o;
	return 0;
}

/* A non-negative JSON integer at the cursor, exactly. */
static int
integer(struct cur *c, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	const unsigned char *start = c->p;

	if (c->p < c->end && *c->p == '-')
		return fail(c, "field must not be negative");
	if (c->p == c->end || *c->p < '0' || *c->p > '9')
		return fail(c, "field must be an integer");
	while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
		unsigned d = (unsigned)(*c->p - '0');
		if (v > (UINT64_MAX - d) / 10) {
			c->p++;
			while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
				c->p++;
			return fail(c, "field out of range");
		}
		v = v * 10 + d;
		c->p++;
	}
	if (*start == '0' && c->p - start > 1)
		return fail(c, "body is not valid JSON"); /* leading zero */
	if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
		return fail(c, "field must be an integer");
	if (v > max)
		return fail(c, "field out of range");
	*out = v;
	return 0;
}

static int object(struct cur *c, struct json_field *fields, size_t n, bool nested);

/* [{"sku": s, "quantity": q}, ...]: 1..f->max elements. */
static int
items(struct cur *c, struct json_field *f)
{
	size_t k = 0;

	if (!eat(c, '['))
		return fail(c, "items must be an array");
	if (eat(c, ']'))
		return fail(c, "items must not be empty");
	for (;;) {
		if (k == f->max)
			return fail(c, "too many items");

		struct json_item *it = &f->items[k];
		struct json_field ef[2] = {
			{ .name = "sku", .kind = JSON_STR, .str = it->sku, .cap = JSON_ITEM_SKU_MAX,
			    .len = &it->sku_len },
			{ .name = "quantity", .kind = JSON_U64, .max = UINT64_MAX, .u64 = &it->quantity },
		};

		ws(c);
		if (object(c, ef, 2, true) != 0)
			return -1;
		if (!ef[0].found || !ef[1].found)
			return fail(c, "every item needs \"sku\" and \"quantity\"");
		k++;
		if (eat(c, ','))
			continue;
		if (eat(c, ']'))
			break;
		return fail(c, "body is not valid JSON");
	}
	if (f->len != NULL)
		*f->len = k;
	return 0;
}

static int
value(struct cur *c, struct json_field *f, bool nested)
{
	ws(c);
	if (f->kind == JSON_U64)
		return integer(c, f->max, f->u64);
	if (f->kind == JSON_ITEMS)
		return nested ? fail(c, "body is not valid JSON") : items(c, f);
	if (c->p == c->end || *c->p != '"')
		return fail(c, "field must be a string");
	size_t n;
	if (string(c, f->str, f->cap, &n) != 0)
		return -1;
	f->str[n] = '\0';
	if (f->len != NULL)
		*f->len = n;
	return 0;
}

/* One object at the cursor ('{' ... '}'), its keys all in @fields, once each. */
static int
object(struct cur *c, struct json_field *fields, size_t n, bool nested)
{
	for (size_t i = 0; i < n; i++)
		fields[i].found = false;
	if (!eat(c, '{'))
		return fail(c, nested ? "every item must be an object" : "body must be a JSON object");
	if (eat(c, '}'))
		return 0;
	for (;;) {
		char key[64];
		size_t klen, i;

		ws(c);
		if (c->p == c->end || *c->p != '"')
			return fail(c, "body is not valid JSON");
		if (string(c, key, sizeof key - 1, &klen) != 0) {
			c->why = "unknown or repeated field in body";
			return -1;
		}
		for (i = 0; i < n; i++)
			if (strlen(fields[i].name) == klen && memcmp(fields[i].name, key, klen) == 0)
				break;
		if (i == n || fields[i].found)
			return fail(c, "unknown or repeated field in body");
		if (!eat(c, ':'))
			return fail(c, "body is not valid JSON");
		if (value(c, &fields[i], nested) != 0)
			return -1;
		fields[i].found = true;
		if (eat(c, ','))
			continue;
		if (eat(c, '}'))
			return 0;
		return fail(c, "body is not valid JSON");
	}
}

int
json_object_parse(const char *buf, size_t len, struct json_field *fields, size_t n,
    const char **why)
{
	struct cur c = { (const unsigned char *)buf, (const unsigned char *)buf + len, NULL };

	for (size_t i = 0; i < n; i++)
		fields[i].found = false;
	ws(&c);
	if (c.p == c.end)
		return 0;
	if (object(&c, fields, n, false) != 0)
		goto bad;
	ws(&c);
	if (c.p != c.end) {
		fail(&c, "trailing bytes after the JSON object");
		goto bad;
	}
	return 0;
bad:
	*why = c.why;
	return -1;
}
