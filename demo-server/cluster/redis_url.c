/*
 * Parsing of the bus's Redis URL (redis_url.h), strictly: every byte of the
 * URL is accounted for, so a typo is an error at start-up rather than a
 * connection to the wrong place. Percent-decoding of user and password;
 * decimal port and database with range checks.
 */
#include <stdbool.h>
#include <string.h>

#include <stock.h>

#include "cluster/redis_url.h"
#include "common/util.h"

/*
 * Percent-decode s[0..n) into @out (cap bytes with the NUL). The raw bytes
 * must be visible ASCII; no escape may decode to NUL.
 */
static bool
url_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t len;

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	if (cap == 0 || util_pct_decode(s, n, false, out, cap - 1, &len) != 0)
		return false;
	out[len] = '\0';
	return true;
}

/* Decimal s[0..n) in [lo, hi], no sign, no leading zeros. */
static bool
parse_dec(const char *s, size_t n, long lo, long hi, long *out)
{
	long v = 0;

	if (n == 0 || n > 9 || (n > 1 && s[0] == '0'))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	if (v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/* [user]:password before the '@' at @at (s..at). */
static int
url_userinfo(const char *s, const char *at, struct redis_addr *a)
{
	const char *colon = memchr(s, ':', (size_t)(at - s));

	if (colon == NULL || colon + 1 == at)
		return STOCK_EINVAL; /* "user@" or an empty password */
	if (!url_decode(s, (size_t)(colon - s), a->user, sizeof a->user) ||
	    !url_decode(colon + 1, (size_t)(at - colon - 1), a->pass, sizeof a->pass))
		return STOCK_EINVAL;
	return 0;
}

/* "[v6]" or a name at hp..hend into a->host; *@colon: the port's ':' or NULL. */
static int
url_host(const char *hp, const char *hend, struct redis_addr *a, const char **colon)
{
	size_t n;

	if (hp < hend && *hp == '[') {
		const char *rb = memchr(hp, ']', (size_t)(hend - hp));

		if (rb == NULL)
			return STOCK_EINVAL;
		n = (size_t)(rb - hp - 1);
		if (n == 0 || n > REDIS_HOSTNAME_MAX)
			return STOCK_EINVAL;
		for (size_t i = 1; i <= n; i++)
			if (util_hexval((unsigned char)hp[i]) < 0 && hp[i] != ':' && hp[i] != '.')
				return STOCK_EINVAL;
		memcpy(a->host, hp + 1, n);
		a->host[n] = '\0';
		*colon = rb + 1 < hend ? rb + 1 : NULL;
		return *colon != NULL && **colon != ':' ? STOCK_EINVAL : 0;
	}
	*colon = memchr(hp, ':', (size_t)(hend - hp));
	n = (size_t)((*colon != NULL ? *colon : hend) - hp);
	if (n == 0 || n > REDIS_HOSTNAME_MAX)
		return STOCK_EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = hp[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '-' || c == '_'))
			return STOCK_EINVAL;
	}
	memcpy(a->host, hp, n);
	a->host[n] = '\0';
	return 0;
}

int
redis_url_parse(const char *url, struct redis_addr *a)
{
	const char *s, *at, *hp, *hend, *path, *colon;
	long v;

	memset(a, 0, sizeof *a);
	a->port = REDIS_DEF_PORT;
	if (url == NULL || strncmp(url, "redis://", 8) != 0)
		return STOCK_EINVAL;
	s = url + 8;
	path = strchr(s, '/');
	at = strrchr(s, '@');
	if (at != NULL && path != NULL && path < at)
		path = strchr(at, '/'); /* a '/' in the password */
	if (at != NULL && url_userinfo(s, at, a) != 0)
		return STOCK_EINVAL;
	hp = at != NULL ? at + 1 : s;
	hend = path != NULL ? path : hp + strlen(hp);
	if (url_host(hp, hend, a, &colon) != 0)
		return STOCK_EINVAL;
	if (colon != NULL) {
		if (!parse_dec(colon + 1, (size_t)(hend - colon - 1), 1, 65535, &v))
			return STOCK_EINVAL;
		a->port = (int)v;
	}
	if (path != NULL && path[1] != '\0') {
		if (!parse_dec(path + 1, strlen(path + 1), 0, REDIS_DB_MAX, &v))
			return STOCK_EINVAL;
		a->db = (int)v;
	}
	return 0;
}
