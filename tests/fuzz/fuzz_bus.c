/*
 * libFuzzer target: a Redis bus message → stock-update event
 * (cluster/bus_redis.c bus_event_parse, on common/json.c).
 *
 * Input: the message payload as it comes off the subscribed connection.
 * Properties, beyond "no crash" under ASan + UBSan:
 *   1. An accepted event is valid: host is a host id (host_id_valid), key a
 *      SKU (stock_sku_valid), both NUL-terminated inside their arrays,
 *      value <= STOCK_COUNT_MAX, version <= INT64_MAX; a refusal says why.
 *   2. An accepted event re-encodes in the publisher's format
 *      ({"host":"%s","key":"%s","value":%llu,"version":%llu}, what
 *      event_json writes) to bytes that parse to the same event (memcmp).
 *   3. Whatever bus_event_parse accepts, libbson's JSON parser (an
 *      independent reference) accepts too, as exactly the four members with
 *      the same strings and values: no message that another reader would
 *      understand differently can move a receiver's stock.
 */
#include <bson/bson.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/bus.h"
#include "common/doc.h"

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_bus: property failed: %s (line %d)\n", #c,       \
			    __LINE__);                                                        \
			abort();                                                              \
		}                                                                             \
	} while (0)

static void
check_valid(const struct bus_event *ev)
{
	size_t hl = strnlen(ev->host, sizeof ev->host), kl = strnlen(ev->key, sizeof ev->key);

	CHECK(hl < sizeof ev->host && host_id_valid(ev->host, hl));
	CHECK(kl < sizeof ev->key && stock_sku_valid(ev->key, kl));
	CHECK(ev->value <= STOCK_COUNT_MAX);
	CHECK(ev->version <= (uint64_t)INT64_MAX);
}

static void
check_roundtrip(const struct bus_event *ev)
{
	char canon[512];
	struct bus_event again;
	int n = snprintf(canon, sizeof canon,
	    "{\"host\":\"%s\",\"key\":\"%s\",\"value\":%" PRIu64 ",\"version\":%" PRIu64 "}",
	    ev->host, ev->key, ev->value, ev->version);

	CHECK(n > 0 && (size_t)n < sizeof canon);
	CHECK(bus_event_parse(canon, (size_t)n, &again) == NULL);
	CHECK(memcmp(&again, ev, sizeof again) == 0);
}

static void
check_reference(const uint8_t *data, size_t size, const struct bus_event *ev)
{
	bson_t doc;
	bson_error_t err;
	bson_iter_t it;
	unsigned seen = 0;

	CHECK(bson_init_from_json(&doc, (const char *)data, (ssize_t)size, &err));
	CHECK(bson_iter_init(&it, &doc));
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		unsigned bit = strcmp(k, "host") == 0 ? 1 : strcmp(k, "key") == 0 ? 2 :
		    strcmp(k, "value") == 0 ? 4 : strcmp(k, "version") == 0 ? 8 : 0;

		CHECK(bit != 0 && !(seen & bit)); /* a member we do not see, or twice */
		seen |= bit;
		if (bit <= 2) {
			uint32_t len;
			const char *s;
			const char *ours = bit == 1 ? ev->host : ev->key;

			CHECK(BSON_ITER_HOLDS_UTF8(&it));
			s = bson_iter_utf8(&it, &len);
			CHECK(len == strlen(ours) && memcmp(s, ours, len) == 0);
		} else {
			int64_t v;

			CHECK(BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it));
			v = BSON_ITER_HOLDS_INT32(&it) ? bson_iter_int32(&it) : bson_iter_int64(&it);
			CHECK(v >= 0 && (uint64_t)v == (bit == 4 ? ev->value : ev->version));
		}
	}
	CHECK(seen == 15);
	bson_destroy(&doc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bus_event ev;
	const char *why = bus_event_parse((const char *)data, size, &ev);

	if (why != NULL) {
		CHECK(why[0] != '\0'); /* every refusal says why */
		return 0;
	}
	check_valid(&ev);
	check_roundtrip(&ev);
	check_reference(data, size, &ev);
	return 0;
}
