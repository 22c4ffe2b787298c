/*
 * The store contract's document rules, shared by every implementation
 * (store_bson.c, store_mongo.c): what a valid document is, its canonical
 * in-memory form, and which of two states of one SKU wins.
 */
#include <bson/bson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "store.h"

int
store_doc_check(const struct store_doc *doc)
{
	size_t n;

	if (doc == NULL)
		return STOCK_EINVAL;
	n = strnlen(doc->sku, sizeof doc->sku);
	if (n == 0 || n > STORE_SKU_MAX || !bson_utf8_validate(doc->sku, n, false))
		return STOCK_EINVAL;
	if (doc->stock > STOCK_COUNT_MAX || doc->sold > STOCK_COUNT_MAX ||
	    doc->version > (uint64_t)INT64_MAX)
		return STOCK_EINVAL;
	return 0;
}

void
store_doc_normalize(struct store_doc *dst, const struct store_doc *src)
{
	size_t n = strnlen(src->sku, STORE_SKU_MAX);

	memset(dst, 0, sizeof *dst);
	memcpy(dst->sku, src->sku, n);
	dst->stock = src->stock;
	dst->sold = src->sold;
	dst->version = src->version;
}

bool
store_doc_newer(const struct store_doc *a, const struct store_doc *b)
{
	if (a->version != b->version)
		return a->version > b->version;
	if (a->sold != b->sold)
		return a->sold > b->sold;
	return a->stock > b->stock;
}

void
store_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}
