/*
 * The growable buffer (common/buf.h): a buffer that starts in the caller's
 * storage (BUF_ON) writes there while the output fits, and keeps every
 * byte when it moves to the heap; one on the heap from the start (BUF_INIT)
 * grows as before. Run under ASan, leaks and stray frees show.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/buf.h"

Test(buf, on_caller_storage_until_it_grows)
{
	char small[512];
	struct buf b = BUF_ON(small);
	char want[2048];

	buf_printf(&b, "{\"sku\":\"%s\",", "NVDA");
	buf_append(&b, "}", 1);
	cr_expect(b.data == small && !b.failed);
	cr_expect(b.len == 15 && strcmp(b.data, "{\"sku\":\"NVDA\",}") == 0);
	/* Past 512 bytes: on the heap, nothing lost. */
	memcpy(want, b.data, b.len);
	for (size_t i = b.len; i < 1500; i++) {
		buf_append(&b, "x", 1);
		want[i] = 'x';
	}
	cr_expect(b.data != small && !b.failed);
	cr_expect(b.len == 1500 && memcmp(b.data, want, 1500) == 0 && b.data[1500] == '\0');
	buf_free(&b);
	cr_expect(b.data == NULL && b.len == 0);
}

Test(buf, heap_from_the_start)
{
	struct buf b = BUF_INIT;

	buf_printf(&b, "%d", 42);
	cr_expect(b.data != NULL && strcmp(b.data, "42") == 0);
	buf_free(&b);
	buf_free(&b); /* empty again: a second free is a no-op */
}

/* buf_u64 / buf_i64 print what printf's %llu / %lld print, edges included. */
Test(buf, integers_as_printf_prints_them)
{
	static const uint64_t u[] = { 0, 1, 9, 10, 99, 100, 4000000000000ULL, UINT64_MAX - 1, UINT64_MAX };
	static const int64_t s[] = { 0, -1, 1, -10, INT64_MAX, INT64_MIN, INT64_MIN + 1 };
	char small[64], want[32];

	for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
		struct buf b = BUF_ON(small);

		buf_u64(&b, u[i]);
		snprintf(want, sizeof want, "%llu", (unsigned long long)u[i]);
		cr_expect(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "%s", want);
		buf_free(&b);
	}
	for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
		struct buf b = BUF_ON(small);

		buf_i64(&b, s[i]);
		snprintf(want, sizeof want, "%lld", (long long)s[i]);
		cr_expect(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "%s", want);
		buf_free(&b);
	}
	{
		struct buf b = BUF_ON(small);

		buf_str(&b, "sku:");
		buf_u64(&b, 7);
		buf_key_u64(&b, ",n:", UINT64_MAX);
		cr_expect(strcmp(b.data, "sku:7,n:18446744073709551615") == 0, "%s", b.data);
		buf_free(&b);
	}
}
