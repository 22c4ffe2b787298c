/*
 * A strict JSON object reader (RFC 8259) for untrusted bytes: request bodies
 * and Redis bus events.
 *
 * It decides on the bytes and their length, never on a C string: integers are
 * read digit by digit with an overflow check (2^64+1 is "out of range", not
 * 1), strings are unescaped and checked to be UTF-8 with no NUL, and every
 * ambiguity is an error: an unknown or repeated key, a float where an integer
 * is wanted, trailing bytes after the object. The caller describes the object
 * it accepts as a table of fields; nothing else is accepted.
 */
#ifndef DEMO_JSON_H
#define DEMO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_kind {
	JSON_U64,  /* a non-negative integer, no fraction or exponent, <= max */
	JSON_STR,  /* a string: decoded UTF-8 without NUL, at most cap bytes */
	JSON_ITEMS /* an array of 1..max objects {"sku": string, "quantity": integer} */
};

/* Longest "sku" of a JSON_ITEMS element (the caller checks its alphabet). */
#define JSON_ITEM_SKU_MAX 64

/* One element of a JSON_ITEMS array: both keys required, nothing else. */
struct json_item {
	char sku[JSON_ITEM_SKU_MAX + 1]; /* NUL-terminated */
	size_t sku_len;
	uint64_t quantity;               /* 0..UINT64_MAX: the caller bounds it */
};

/* One accepted key. The parser sets `found` and the output member. */
struct json_field {
	const char *name;    /* the key, compared byte for byte after unescaping */
	enum json_kind kind;
	uint64_t max;        /* JSON_U64: largest accepted value */
	uint64_t *u64;       /* JSON_U64: receives the value */
	char *str;           /* JSON_STR: receives the bytes (NUL-terminated) */
	size_t cap;          /* JSON_STR: most bytes accepted (str has cap + 1) */
	size_t *len;         /* JSON_STR: receives the length; may be NULL;
	                        JSON_ITEMS: receives the number of elements */
	struct json_item *items; /* JSON_ITEMS: receives up to max elements */
	bool found;
};

/**
 * json_object_parse - read @buf[0..@len) as one JSON object whose keys are
 * all in @fields (@n of them), each at most once. A JSON_ITEMS value is the
 * only nesting: an array of flat objects, one level deep.
 *
 * An input of only white space is accepted as an empty object (no field
 * found): callers decide whether a body may be empty. Returns 0, or -1 with
 * a fixed English reason in *@why ("unknown or repeated field", "field out
 * of range", ...); on -1 the outputs of fields already read may be set.
 * Reads nothing past @buf + @len. Thread-safe (no state).
 */
int json_object_parse(const char *buf, size_t len, struct json_field *fields, size_t n,
    const char **why);

#endif /* DEMO_JSON_H */
