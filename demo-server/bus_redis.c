/*
 * The stock-update bus on Redis pub/sub (hiredis, blocking contexts).
 *
 * bus_publish stores the newest event per SKU in a small open-addressing map
 * under the bus mutex (coalescing: a queued event of the same SKU with a
 * lower or equal version is replaced, a newer queued one wins) and wakes the
 * publisher thread. The publisher owns one Redis connection: it swaps the
 * whole pending map out for an empty one, sends one PUBLISH per event,
 * pipelined in chunks, and wakes bus_flush waiters once the batch is out.
 * When a send fails, the events not yet confirmed go back into the pending
 * map (where a newer event of the same SKU queued meanwhile wins), the
 * connection is dropped and the thread backs off (100 ms doubling to 5 s,
 * reset once a connection is up again). While idle it checks every 200 ms
 * that the server has not closed the connection, so the connected gauge
 * follows Redis even when nothing is published.
 *
 * The subscriber owns a second connection, subscribed to the one and the
 * many channel. It polls the socket with a 200 ms timeout (a quiet channel
 * is not an error; the timeout only lets it notice bus_close), parses every
 * message strictly (a flat JSON object; required members host, key, value,
 * version; unknown members with scalar values are ignored for forward
 * compatibility), drops our own echoes and calls the receive callback, on
 * its own thread and without any bus lock held, for everything else.
 *
 * Both threads log a lost connection once and its recovery once ("reconnected
 * after N attempts"); failed attempts in between are silent.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <stock/table.h>

#include "bus.h"

#define DEF_ONE_CHANNEL "OneStockUpdateEvent"
#define DEF_MANY_CHANNEL "MultiStockUpdateEvent"
#define ONE_PREFIX "OneStock:"
#define CHANNEL_MAX 128          /* longest channel name accepted */
#define HOSTNAME_MAX 255         /* longest Redis host name in a URL */
#define SECRET_MAX 256           /* longest user name or password in a URL */
#define DB_MAX 1000000           /* largest database number in a URL */
#define DEF_PORT 6379
#define CONNECT_TIMEOUT_MS 1000
#define COMMAND_TIMEOUT_MS 1000
#define READ_POLL_MS 200         /* subscriber: how often it looks at the stop flag */
#define IDLE_CHECK_MS 200        /* publisher: liveness check of an idle connection */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CLOSE_SEND_MS 500        /* bus_close: time left to send what is queued */
#define PIPELINE_MAX 256         /* PUBLISH commands in flight at once */
#define MSG_MAX 4096             /* longest message payload parsed */
/* {"host":"<64>","key":"<64>","value":<20>,"version":<20>} */
#define JSON_MAX (64 + STORE_HOST_MAX + STORE_SKU_MAX + 2 * 20)
#define MAP_MIN_CAP 16

/* ====================================================================== */
/* Pending events: SKU -> newest event                                     */
/* ====================================================================== */

struct pend {
	bool used;
	bool sent; /* publisher: confirmed by Redis */
	uint64_t value;
	uint64_t version;
	char key[STORE_SKU_MAX + 1];
};

struct pend_map {
	struct pend *slots; /* cap slots, cap a power of two */
	size_t cap;
	size_t count;
};

/* FNV-1a of a NUL-terminated key. */
static uint64_t
key_hash(const char *k)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *k != '\0'; k++)
		h = (h ^ (uint8_t)*k) * 1099511628211ULL;
	return h;
}

/* The slot holding @key, or the empty slot where it belongs. */
static struct pend *
map_slot(struct pend_map *m, const char *key)
{
	size_t i = (size_t)key_hash(key) & (m->cap - 1);

	while (m->slots[i].used && strcmp(m->slots[i].key, key) != 0)
		i = (i + 1) & (m->cap - 1);
	return &m->slots[i];
}

static int
map_init(struct pend_map *m)
{
	m->slots = calloc(MAP_MIN_CAP, sizeof *m->slots);
	m->cap = MAP_MIN_CAP;
	m->count = 0;
	return m->slots == NULL ? STOCK_ENOMEM : 0;
}

static void
map_free(struct pend_map *m)
{
	free(m->slots);
	m->slots = NULL;
	m->cap = m->count = 0;
}

/* Empty @m, shrinking it back when a burst made it large. */
static void
map_clear(struct pend_map *m)
{
	if (m->cap > 1024) {
		struct pend *s = calloc(MAP_MIN_CAP, sizeof *s);

		if (s != NULL) {
			free(m->slots);
			m->slots = s;
			m->cap = MAP_MIN_CAP;
			m->count = 0;
			return;
		}
	}
	memset(m->slots, 0, m->cap * sizeof *m->slots);
	m->count = 0;
}

/* Double the capacity of @m (load stays at most one half). */
static int
map_grow(struct pend_map *m)
{
	struct pend_map n = { calloc(m->cap * 2, sizeof *m->slots), m->cap * 2, 0 };

	if (n.slots == NULL)
		return STOCK_ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		if (m->slots[i].used) {
			*map_slot(&n, m->slots[i].key) = m->slots[i];
			n.count++;
		}
	}
	free(m->slots);
	*m = n;
	return 0;
}

/*
 * Merge one event into @m. @later: the event is more recent than what @m
 * holds (bus_publish), so an equal version replaces the queued one; false
 * when a failed batch is put back, where what was queued meanwhile wins a
 * tie. Sets *@dropped when one of the two events was discarded (coalesced).
 * Returns 0 or STOCK_ENOMEM (nothing changed).
 */
static int
map_put(struct pend_map *m, const char *key, uint64_t value, uint64_t version, bool later,
    bool *dropped)
{
	struct pend *p = map_slot(m, key);

	*dropped = false;
	if (p->used) {
		*dropped = true;
		if (p->version < version || (later && p->version == version)) {
			p->value = value;
			p->version = version;
		}
		return 0;
	}
	if ((m->count + 1) * 2 > m->cap) {
		if (map_grow(m) != 0)
			return STOCK_ENOMEM;
		p = map_slot(m, key);
	}
	memset(p, 0, sizeof *p);
	p->used = true;
	snprintf(p->key, sizeof p->key, "%s", key);
	p->value = value;
	p->version = version;
	m->count++;
	return 0;
}

/* ====================================================================== */
/* The bus                                                                 */
/* ====================================================================== */

/* Where and how to connect, from the URL. */
struct redis_addr {
	char host[HOSTNAME_MAX + 1];
	int port;
	int db;
	char user[SECRET_MAX + 1]; /* empty: AUTH with the password only */
	char pass[SECRET_MAX + 1]; /* empty: no AUTH */
};

/* One thread's connection and its reconnect state. */
struct link {
	const char *name;   /* "publisher", "subscriber" */
	redisContext *ctx;  /* NULL while down */
	int *up;            /* the bus's gauge of this connection (atomic) */
	bool was_up;        /* connected at least once: a later connect is a reconnect */
	bool down_logged;   /* this outage has been logged */
	unsigned attempts;  /* failed attempts in this outage */
	unsigned backoff_ms;
};

struct bus {
	/* Set by bus_open, read-only afterwards. */
	struct redis_addr addr;
	char host_id[STORE_HOST_MAX + 1];
	char one_channel[CHANNEL_MAX + 1];
	char many_channel[CHANNEL_MAX + 1];
	bus_receive_fn receive;
	void *receive_arg;
	void (*log)(void *log_arg, const char *msg);
	void *log_arg;
	bool have_sub;

	pthread_mutex_t mu;
	pthread_cond_t pub_cv;  /* publisher: work, stop, backoff */
	pthread_cond_t sub_cv;  /* subscriber: stop, backoff */
	pthread_cond_t idle_cv; /* bus_flush: a batch was sent or put back */
	struct pend_map pending; /* under mu */
	size_t inflight;         /* under mu: events of the batch being sent */
	int stop;                /* written under mu, read atomically */
	uint64_t close_deadline_ns; /* under mu */

	pthread_t pub_thread, sub_thread;

	/* Counters (atomics). */
	uint64_t published, coalesced, received, echoes, malformed, reconnects;
	int pub_up, sub_up;
	uint64_t refused; /* publisher thread only: PUBLISH answered with an error */
};

static void
blog(struct bus *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
blog(struct bus *b, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (b->log != NULL)
		b->log(b->log_arg, msg);
	else
		fprintf(stderr, "bus: %s\n", msg);
}

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void
cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
	ts.tv_nsec = (long)(deadline_ns % 1000000000ULL);
	pthread_cond_timedwait(cv, mu, &ts);
}

static struct timeval
ms_tv(uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	return tv;
}

static bool
stopping(struct bus *b)
{
	return __atomic_load_n(&b->stop, __ATOMIC_ACQUIRE) != 0;
}

static void
ctr_add(uint64_t *ctr, uint64_t n)
{
	__atomic_fetch_add(ctr, n, __ATOMIC_RELAXED);
}

/* True for 1, 10, 100, ...: which occurrences of a repeated problem to log. */
static bool
log_due(uint64_t n)
{
	uint64_t p = 1;

	while (p < n && p <= UINT64_MAX / 10)
		p *= 10;
	return p == n;
}

/* ====================================================================== */
/* Validation and URL parsing                                              */
/* ====================================================================== */

static bool
host_id_valid(const char *s, size_t n)
{
	if (n == 0 || n > STORE_HOST_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '_' || c == '-'))
			return false;
	}
	return true;
}

static bool
channel_valid(const char *s)
{
	size_t n = strnlen(s, CHANNEL_MAX + 1);

	if (n == 0 || n > CHANNEL_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s[0..n) into @out (cap bytes with the NUL). No NUL bytes. */
static bool
url_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];

		if (c == '%') {
			int h, l;

			if (i + 2 >= n)
				return false;
			h = hexval(s[i + 1]);
			l = hexval(s[i + 2]);
			if (h < 0 || l < 0 || (h | l) == 0)
				return false;
			c = h << 4 | l;
			i += 2;
		} else if (c <= 0x20 || c >= 0x7f) {
			return false;
		}
		if (o + 1 >= cap)
			return false;
		out[o++] = (char)c;
	}
	out[o] = '\0';
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

/*
 * redis://[[user]:password@]host[:port][/db] -> @a. host is a name or an
 * IPv4 address ([A-Za-z0-9._-]) or an IPv6 address in brackets; user and
 * password may be percent-encoded; the password must not be empty.
 */
static int
url_parse(const char *url, struct redis_addr *a)
{
	const char *s, *at, *hp, *hend, *path, *colon;
	long v;

	memset(a, 0, sizeof *a);
	a->port = DEF_PORT;
	if (url == NULL || strncmp(url, "redis://", 8) != 0)
		return STOCK_EINVAL;
	s = url + 8;
	path = strchr(s, '/');
	at = strrchr(s, '@');
	if (at != NULL && path != NULL && path < at)
		path = strchr(at, '/'); /* a '/' in the password */
	if (at != NULL) {
		colon = memchr(s, ':', (size_t)(at - s));
		if (colon == NULL || colon + 1 == at)
			return STOCK_EINVAL; /* "user@" or an empty password */
		if (!url_decode(s, (size_t)(colon - s), a->user, sizeof a->user) ||
		    !url_decode(colon + 1, (size_t)(at - colon - 1), a->pass, sizeof a->pass))
			return STOCK_EINVAL;
		hp = at + 1;
	} else {
		hp = s;
	}
	hend = path != NULL ? path : hp + strlen(hp);
	if (hp < hend && *hp == '[') {
		const char *rb = memchr(hp, ']', (size_t)(hend - hp));
		size_t n;

		if (rb == NULL)
			return STOCK_EINVAL;
		n = (size_t)(rb - hp - 1);
		if (n == 0 || n > HOSTNAME_MAX)
			return STOCK_EINVAL;
		for (size_t i = 1; i <= n; i++)
			if (hexval(hp[i]) < 0 && hp[i] != ':' && hp[i] != '.')
				return STOCK_EINVAL;
		memcpy(a->host, hp + 1, n);
		a->host[n] = '\0';
		colon = rb + 1 < hend ? rb + 1 : NULL;
		if (colon != NULL && *colon != ':')
			return STOCK_EINVAL;
	} else {
		size_t n;

		colon = memchr(hp, ':', (size_t)(hend - hp));
		n = (size_t)((colon != NULL ? colon : hend) - hp);
		if (n == 0 || n > HOSTNAME_MAX)
			return STOCK_EINVAL;
		for (size_t i = 0; i < n; i++) {
			char c = hp[i];

			if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			    (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
				return STOCK_EINVAL;
		}
		memcpy(a->host, hp, n);
		a->host[n] = '\0';
	}
	if (colon != NULL) {
		if (!parse_dec(colon + 1, (size_t)(hend - colon - 1), 1, 65535, &v))
			return STOCK_EINVAL;
		a->port = (int)v;
	}
	if (path != NULL && path[1] != '\0') {
		if (!parse_dec(path + 1, strlen(path + 1), 0, DB_MAX, &v))
			return STOCK_EINVAL;
		a->db = (int)v;
	}
	return 0;
}

/* ====================================================================== */
/* Events as JSON                                                          */
/* ====================================================================== */

static const char *
channel_of(struct bus *b, const char *key)
{
	return strncmp(key, ONE_PREFIX, sizeof ONE_PREFIX - 1) == 0 ? b->one_channel
	                                                             : b->many_channel;
}

/* The event's JSON into @buf (JSON_MAX bytes). Returns its length. */
static size_t
event_json(struct bus *b, const struct pend *p, char *buf)
{
	int n = snprintf(buf, JSON_MAX, "{\"host\":\"%s\",\"key\":\"%s\",\"value\":%" PRIu64
	    ",\"version\":%" PRIu64 "}", b->host_id, p->key, p->value, p->version);

	return n < 0 ? 0 : (size_t)n;
}

/* A strict reader of one flat JSON object. */
struct jp {
	const char *p, *end;
};

static void
jp_ws(struct jp *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static bool
jp_eat(struct jp *j, char c)
{
	jp_ws(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return true;
	}
	return false;
}

/*
 * A string into @out (cap bytes with the NUL; NULL: skip it). An escape
 * that stands for a character outside ASCII, or NUL, decodes to 0x7f, which
 * no host id or SKU accepts. False on bad syntax or overflow.
 */
static bool
jp_string(struct jp *j, char *out, size_t cap)
{
	size_t o = 0;

	if (!jp_eat(j, '"'))
		return false;
	while (j->p < j->end) {
		unsigned char c = (unsigned char)*j->p++;

		if (c == '"') {
			if (out != NULL)
				out[o] = '\0';
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			if (j->p >= j->end)
				return false;
			c = (unsigned char)*j->p++;
			switch (c) {
			case '"': case '\\': case '/': break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case 'u': {
				unsigned u = 0;

				if (j->end - j->p < 4)
					return false;
				for (int i = 0; i < 4; i++) {
					int h = hexval(j->p[i]);

					if (h < 0)
						return false;
					u = u << 4 | (unsigned)h;
				}
				j->p += 4;
				c = u == 0 || u >= 0x80 ? 0x7f : (unsigned char)u;
				break;
			}
			default:
				return false;
			}
		}
		if (out != NULL) {
			if (o + 1 >= cap)
				return false;
			out[o++] = (char)c;
		}
	}
	return false;
}

/* A JSON integer >= 0 (no sign, fraction, exponent or leading zero), <= @max. */
static bool
jp_uint(struct jp *j, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	const char *s;

	jp_ws(j);
	s = j->p;
	while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
		unsigned d = (unsigned)(*j->p - '0');

		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
		j->p++;
	}
	if (j->p == s || (j->p - s > 1 && *s == '0'))
		return false;
	if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
		return false;
	*out = v;
	return true;
}

/* Skip a scalar value of an unknown member: string, number, true, false, null. */
static bool
jp_skip(struct jp *j)
{
	static const char *const lits[] = { "true", "false", "null" };
	const char *s;

	jp_ws(j);
	if (j->p >= j->end)
		return false;
	if (*j->p == '"')
		return jp_string(j, NULL, 0);
	for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++) {
		size_t n = strlen(lits[i]);

		if ((size_t)(j->end - j->p) >= n && memcmp(j->p, lits[i], n) == 0) {
			j->p += n;
			return true;
		}
	}
	if (*j->p == '-')
		j->p++;
	s = j->p;
	while (j->p < j->end && ((*j->p >= '0' && *j->p <= '9') || *j->p == '.' || *j->p == 'e' ||
	    *j->p == 'E' || *j->p == '+' || *j->p == '-'))
		j->p++;
	return j->p > s && *s >= '0' && *s <= '9';
}

/*
 * Parse a message into @ev. Returns NULL when it is a valid event, else why
 * not (for the log).
 */
static const char *
event_parse(const char *msg, size_t len, struct bus_event *ev)
{
	enum { F_HOST = 1, F_KEY = 2, F_VALUE = 4, F_VERSION = 8, F_ALL = 15 };
	struct jp j = { msg, msg + len };
	unsigned seen = 0;

	memset(ev, 0, sizeof *ev);
	if (len > MSG_MAX)
		return "too long";
	if (!jp_eat(&j, '{'))
		return "not a JSON object";
	if (!jp_eat(&j, '}')) {
		do {
			const char *start = j.p;
			char name[16];
			unsigned f = 0;
			bool ok;

			if (!jp_string(&j, name, sizeof name)) {
				/* A longer name is an unknown member: skip it. */
				j.p = start;
				if (!jp_string(&j, NULL, 0))
					return "bad member name";
				name[0] = '\0';
			}
			if (!jp_eat(&j, ':'))
				return "bad JSON";
			if (strcmp(name, "host") == 0) {
				f = F_HOST;
				ok = jp_string(&j, ev->host, sizeof ev->host) &&
				    host_id_valid(ev->host, strlen(ev->host));
			} else if (strcmp(name, "key") == 0) {
				f = F_KEY;
				ok = jp_string(&j, ev->key, sizeof ev->key) &&
				    stock_sku_valid(ev->key, strlen(ev->key));
			} else if (strcmp(name, "value") == 0) {
				f = F_VALUE;
				ok = jp_uint(&j, STOCK_COUNT_MAX, &ev->value);
			} else if (strcmp(name, "version") == 0) {
				f = F_VERSION;
				ok = jp_uint(&j, (uint64_t)INT64_MAX, &ev->version);
			} else {
				ok = jp_skip(&j);
			}
			if (!ok)
				return f != 0 ? "bad host, key, value or version" : "bad JSON";
			if (seen & f)
				return "duplicate member";
			seen |= f;
		} while (jp_eat(&j, ','));
		if (!jp_eat(&j, '}'))
			return "bad JSON";
	}
	jp_ws(&j);
	if (j.p != j.end)
		return "trailing bytes";
	if (seen != F_ALL)
		return "missing host, key, value or version";
	return NULL;
}

/* ====================================================================== */
/* Connections                                                             */
/* ====================================================================== */

/* Run one command that must answer +OK (AUTH, SELECT). */
static bool
cmd_ok(redisContext *c, char *why, size_t whylen, const char *what, const char *fmt, ...)
{
	redisReply *r;
	va_list ap;
	bool ok;

	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
	if (r == NULL) {
		snprintf(why, whylen, "%s: %s", what, c->errstr);
		return false;
	}
	ok = r->type == REDIS_REPLY_STATUS;
	if (!ok)
		snprintf(why, whylen, "%s refused: %.*s", what, r->type == REDIS_REPLY_ERROR ?
		    (int)r->len : 0, r->type == REDIS_REPLY_ERROR ? r->str : "");
	freeReplyObject(r);
	return ok;
}

/* Connect, AUTH and SELECT. NULL with @why filled on failure. */
static redisContext *
redis_open(struct bus *b, char *why, size_t whylen)
{
	const struct redis_addr *a = &b->addr;
	redisContext *c = redisConnectWithTimeout(a->host, a->port, ms_tv(CONNECT_TIMEOUT_MS));

	if (c == NULL) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	if (c->err != 0) {
		snprintf(why, whylen, "%s", c->errstr);
		goto fail;
	}
	if (redisSetTimeout(c, ms_tv(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
		snprintf(why, whylen, "cannot set the socket timeout");
		goto fail;
	}
	if (a->pass[0] != '\0') {
		bool ok = a->user[0] != '\0' ?
		    cmd_ok(c, why, whylen, "AUTH", "AUTH %s %s", a->user, a->pass) :
		    cmd_ok(c, why, whylen, "AUTH", "AUTH %s", a->pass);

		if (!ok)
			goto fail;
	}
	if (a->db != 0 && !cmd_ok(c, why, whylen, "SELECT", "SELECT %d", a->db))
		goto fail;
	/* A server that accepts and then refuses (maxclients, loading) fails here,
	   before the connection counts as up. */
	if (!cmd_ok(c, why, whylen, "PING", "PING"))
		goto fail;
	return c;
fail:
	redisFree(c);
	return NULL;
}

/* Wait for the link's backoff (or bus_close), then double it. */
static void
link_backoff(struct bus *b, struct link *lk, pthread_cond_t *cv)
{
	uint64_t until = mono_ns() + (uint64_t)lk->backoff_ms * 1000000ULL;

	pthread_mutex_lock(&b->mu);
	while (!b->stop && mono_ns() < until)
		cond_wait_until(cv, &b->mu, until);
	pthread_mutex_unlock(&b->mu);
	lk->backoff_ms = lk->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : lk->backoff_ms * 2;
}

/* A connect attempt failed: log the first failure of an outage only. */
static void
link_failed(struct bus *b, struct link *lk, const char *why)
{
	lk->attempts++;
	if (!lk->down_logged) {
		blog(b, "%s: cannot connect to redis %s:%d: %s (retrying)", lk->name, b->addr.host,
		    b->addr.port, why);
		lk->down_logged = true;
	}
}

/* A connect attempt succeeded: gauge, counters, one log line after an outage. */
static void
link_up(struct bus *b, struct link *lk, redisContext *c)
{
	lk->ctx = c;
	if (lk->was_up) {
		blog(b, "%s: reconnected to redis %s:%d after %u attempt(s)", lk->name, b->addr.host,
		    b->addr.port, lk->attempts + 1);
		ctr_add(&b->reconnects, 1);
	} else if (lk->attempts > 0) {
		blog(b, "%s: connected to redis %s:%d after %u attempt(s)", lk->name, b->addr.host,
		    b->addr.port, lk->attempts + 1);
	}
	lk->was_up = true;
	lk->down_logged = false;
	lk->attempts = 0;
	lk->backoff_ms = BACKOFF_MIN_MS;
	__atomic_store_n(lk->up, 1, __ATOMIC_RELEASE);
}

/* The connection broke: drop it, log once. The caller backs off next. */
static void
link_lost(struct bus *b, struct link *lk, const char *why)
{
	__atomic_store_n(lk->up, 0, __ATOMIC_RELEASE);
	if (lk->ctx != NULL) {
		if (!stopping(b))
			blog(b, "%s: lost connection to redis %s:%d: %s", lk->name, b->addr.host,
			    b->addr.port, why);
		lk->down_logged = true;
		redisFree(lk->ctx);
		lk->ctx = NULL;
	}
}

/* ====================================================================== */
/* Publisher                                                               */
/* ====================================================================== */

/* An idle connection must have nothing to read: readable means closed. */
static bool
idle_alive(redisContext *c)
{
	struct pollfd pfd = { c->fd, POLLIN, 0 };

	return poll(&pfd, 1, 0) == 0;
}

/*
 * PUBLISH every event of @batch, PIPELINE_MAX at a time; marks the confirmed
 * ones sent. An event Redis answers with an error (ACL, ...) is dropped and
 * logged: resending it would fail the same way. Returns false when the
 * connection failed (the unsent events stay unmarked).
 */
static bool
pub_send(struct bus *b, struct link *lk, struct pend_map *batch, const char **why)
{
	struct pend *chunk[PIPELINE_MAX];
	size_t i = 0;

	while (i < batch->cap) {
		size_t n = 0;
		char json[JSON_MAX];

		for (; i < batch->cap && n < PIPELINE_MAX; i++) {
			struct pend *p = &batch->slots[i];
			size_t len;

			if (!p->used || p->sent)
				continue;
			len = event_json(b, p, json);
			if (redisAppendCommand(lk->ctx, "PUBLISH %s %b", channel_of(b, p->key), json,
			    len) != REDIS_OK) {
				*why = lk->ctx->errstr;
				return false;
			}
			chunk[n++] = p;
		}
		for (size_t k = 0; k < n; k++) {
			redisReply *r = NULL;

			if (redisGetReply(lk->ctx, (void **)&r) != REDIS_OK || r == NULL) {
				*why = lk->ctx->errstr;
				return false;
			}
			if (r->type == REDIS_REPLY_ERROR) {
				if (log_due(++b->refused))
					blog(b, "publisher: PUBLISH of %s refused: %.*s (event "
					    "dropped; %" PRIu64 " so far)", chunk[k]->key, (int)r->len,
					    r->str, b->refused);
			} else {
				ctr_add(&b->published, 1);
			}
			chunk[k]->sent = true;
			freeReplyObject(r);
		}
	}
	return true;
}

/* Put the unsent events of a failed batch back (a newer queued one wins). */
static void
pub_requeue(struct bus *b, struct pend_map *batch)
{
	size_t lost = 0;

	for (size_t i = 0; i < batch->cap; i++) {
		struct pend *p = &batch->slots[i];
		bool dropped;

		if (!p->used || p->sent)
			continue;
		if (map_put(&b->pending, p->key, p->value, p->version, false, &dropped) != 0)
			lost++;
		else if (dropped)
			ctr_add(&b->coalesced, 1);
	}
	if (lost > 0)
		blog(b, "publisher: out of memory: %zu unsent events dropped", lost);
}

static void *
pub_main(void *arg)
{
	struct bus *b = arg;
	struct link lk = { "publisher", NULL, &b->pub_up, false, false, 0, BACKOFF_MIN_MS };
	struct pend_map batch;
	char why[256];

	if (map_init(&batch) != 0) {
		blog(b, "publisher: out of memory; not publishing");
		return NULL;
	}
	for (;;) {
		const char *err = "";
		bool ok, closing;

		if (lk.ctx == NULL) {
			redisContext *c;

			if (stopping(b))
				break;
			c = redis_open(b, why, sizeof why);
			if (c == NULL) {
				link_failed(b, &lk, why);
				link_backoff(b, &lk, &b->pub_cv);
				continue;
			}
			link_up(b, &lk, c);
		}

		pthread_mutex_lock(&b->mu);
		if (!b->stop && b->pending.count == 0)
			cond_wait_until(&b->pub_cv, &b->mu, mono_ns() + IDLE_CHECK_MS * 1000000ULL);
		if (b->pending.count == 0 || (b->stop && mono_ns() >= b->close_deadline_ns)) {
			closing = b->stop;
			pthread_mutex_unlock(&b->mu);
			if (closing)
				break;
			if (!idle_alive(lk.ctx)) {
				link_lost(b, &lk, "closed by the server");
				link_backoff(b, &lk, &b->pub_cv);
			}
			continue;
		}
		{
			struct pend_map t = b->pending;

			b->pending = batch;
			batch = t;
		}
		b->inflight = batch.count;
		closing = b->stop;
		if (closing) {
			uint64_t now = mono_ns();
			uint64_t left = b->close_deadline_ns > now ? b->close_deadline_ns - now : 1;

			redisSetTimeout(lk.ctx, ms_tv(left / 1000000ULL + 1));
		}
		pthread_mutex_unlock(&b->mu);

		ok = pub_send(b, &lk, &batch, &err);
		if (!ok)
			snprintf(why, sizeof why, "%s", err[0] != '\0' ? err : "I/O error");

		pthread_mutex_lock(&b->mu);
		if (!ok)
			pub_requeue(b, &batch);
		b->inflight = 0;
		map_clear(&batch);
		pthread_cond_broadcast(&b->idle_cv);
		pthread_mutex_unlock(&b->mu);
		if (!ok) {
			link_lost(b, &lk, why);
			link_backoff(b, &lk, &b->pub_cv);
		}
	}
	link_lost(b, &lk, "closing");
	map_free(&batch);
	return NULL;
}

/* ====================================================================== */
/* Subscriber                                                              */
/* ====================================================================== */

static void
sub_malformed(struct bus *b, const char *why)
{
	uint64_t n = __atomic_add_fetch(&b->malformed, 1, __ATOMIC_RELAXED);

	/* The 1st, 10th, 100th, ...: enough to notice, never a flood. */
	if (log_due(n))
		blog(b, "subscriber: dropped a malformed message (%s); %" PRIu64 " so far", why, n);
}

/* One reply on the subscribed connection. */
static void
sub_handle(struct bus *b, const redisReply *r)
{
	const redisReply *payload;
	struct bus_event ev;
	const char *bad;

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len != 7 ||
	    memcmp(r->element[0]->str, "message", 7) != 0)
		return; /* subscribe confirmations and the like */
	payload = r->element[2];
	if (payload->type != REDIS_REPLY_STRING) {
		sub_malformed(b, "not a string");
		return;
	}
	bad = event_parse(payload->str, payload->len, &ev);
	if (bad != NULL) {
		sub_malformed(b, bad);
		return;
	}
	if (strcmp(ev.host, b->host_id) == 0) {
		ctr_add(&b->echoes, 1);
		return;
	}
	ctr_add(&b->received, 1);
	b->receive(&ev, b->receive_arg);
}

/* Connect and SUBSCRIBE; returns once Redis confirmed every channel. */
static redisContext *
sub_open(struct bus *b, char *why, size_t whylen)
{
	redisContext *c = redis_open(b, why, whylen);
	bool same = strcmp(b->one_channel, b->many_channel) == 0;
	long long want = same ? 1 : 2, got = 0;
	int rc;

	if (c == NULL)
		return NULL;
	rc = same ? redisAppendCommand(c, "SUBSCRIBE %s", b->one_channel) :
	    redisAppendCommand(c, "SUBSCRIBE %s %s", b->one_channel, b->many_channel);
	if (rc != REDIS_OK)
		goto io;
	while (got < want) {
		redisReply *r = NULL;

		if (redisGetReply(c, (void **)&r) != REDIS_OK || r == NULL)
			goto io;
		if (r->type == REDIS_REPLY_ERROR) {
			snprintf(why, whylen, "SUBSCRIBE refused: %.*s", (int)r->len, r->str);
			freeReplyObject(r);
			redisFree(c);
			return NULL;
		}
		if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
		    r->element[0]->type == REDIS_REPLY_STRING &&
		    strcmp(r->element[0]->str, "subscribe") == 0 &&
		    r->element[2]->type == REDIS_REPLY_INTEGER)
			got = r->element[2]->integer;
		else
			sub_handle(b, r);
		freeReplyObject(r);
	}
	return c;
io:
	snprintf(why, whylen, "SUBSCRIBE: %s", c->errstr[0] != '\0' ? c->errstr : "I/O error");
	redisFree(c);
	return NULL;
}

static void *
sub_main(void *arg)
{
	struct bus *b = arg;
	struct link lk = { "subscriber", NULL, &b->sub_up, false, false, 0, BACKOFF_MIN_MS };
	char why[256];

	while (!stopping(b)) {
		redisReply *r = NULL;

		if (lk.ctx == NULL) {
			redisContext *c = sub_open(b, why, sizeof why);

			if (c == NULL) {
				link_failed(b, &lk, why);
				link_backoff(b, &lk, &b->sub_cv);
				continue;
			}
			link_up(b, &lk, c);
		}
		if (redisGetReplyFromReader(lk.ctx, (void **)&r) != REDIS_OK) {
			link_lost(b, &lk, lk.ctx->errstr);
			link_backoff(b, &lk, &b->sub_cv);
			continue;
		}
		if (r == NULL) {
			struct pollfd pfd = { lk.ctx->fd, POLLIN, 0 };
			int n = poll(&pfd, 1, READ_POLL_MS);

			if (n == 0 || (n < 0 && errno == EINTR))
				continue; /* quiet channel: look at the stop flag */
			if (n < 0 || redisBufferRead(lk.ctx) != REDIS_OK) {
				snprintf(why, sizeof why, "%s", n < 0 ? strerror(errno) :
				    lk.ctx->errstr);
				link_lost(b, &lk, why);
				link_backoff(b, &lk, &b->sub_cv);
			}
			continue;
		}
		sub_handle(b, r);
		freeReplyObject(r);
	}
	link_lost(b, &lk, "closing");
	return NULL;
}

/* ====================================================================== */
/* API                                                                     */
/* ====================================================================== */

static void
bus_free(struct bus *b)
{
	map_free(&b->pending);
	pthread_cond_destroy(&b->pub_cv);
	pthread_cond_destroy(&b->sub_cv);
	pthread_cond_destroy(&b->idle_cv);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

/**
 * bus_open - parse and check the options, then start the threads; see
 * bus.h. The subscriber thread runs only when @opt->receive is set; without
 * it the connected gauge follows the publisher's connection alone.
 */
int
bus_open(bus_t **out, const struct bus_options *opt)
{
	const char *one, *many;
	pthread_condattr_t ca;
	struct bus *b;
	int rc;

	if (out == NULL)
		return STOCK_EINVAL;
	*out = NULL;
	if (opt == NULL || opt->host_id == NULL ||
	    !host_id_valid(opt->host_id, strnlen(opt->host_id, STORE_HOST_MAX + 1)))
		return STOCK_EINVAL;
	one = opt->one_channel != NULL ? opt->one_channel : DEF_ONE_CHANNEL;
	many = opt->many_channel != NULL ? opt->many_channel : DEF_MANY_CHANNEL;
	if (!channel_valid(one) || !channel_valid(many))
		return STOCK_EINVAL;
	b = calloc(1, sizeof *b);
	if (b == NULL)
		return STOCK_ENOMEM;
	if (url_parse(opt->url, &b->addr) != 0) {
		free(b);
		return STOCK_EINVAL;
	}
	snprintf(b->host_id, sizeof b->host_id, "%s", opt->host_id);
	snprintf(b->one_channel, sizeof b->one_channel, "%s", one);
	snprintf(b->many_channel, sizeof b->many_channel, "%s", many);
	b->receive = opt->receive;
	b->receive_arg = opt->receive_arg;
	b->log = opt->log;
	b->log_arg = opt->log_arg;
	b->have_sub = opt->receive != NULL;
	if (map_init(&b->pending) != 0) {
		free(b);
		return STOCK_ENOMEM;
	}
	pthread_mutex_init(&b->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->pub_cv, &ca);
	pthread_cond_init(&b->sub_cv, &ca);
	pthread_cond_init(&b->idle_cv, &ca);
	pthread_condattr_destroy(&ca);

	rc = pthread_create(&b->pub_thread, NULL, pub_main, b);
	if (rc != 0) {
		bus_free(b);
		errno = rc;
		return STOCK_ESYS;
	}
	if (b->have_sub) {
		rc = pthread_create(&b->sub_thread, NULL, sub_main, b);
		if (rc != 0) {
			pthread_mutex_lock(&b->mu);
			__atomic_store_n(&b->stop, 1, __ATOMIC_RELEASE);
			b->close_deadline_ns = mono_ns();
			pthread_cond_broadcast(&b->pub_cv);
			pthread_mutex_unlock(&b->mu);
			pthread_join(b->pub_thread, NULL);
			bus_free(b);
			errno = rc;
			return STOCK_ESYS;
		}
	}
	*out = b;
	return 0;
}

/**
 * bus_publish - merge the event into the pending map under the mutex and
 * wake the publisher when the map was empty; see bus.h. @key must be a
 * valid SKU, @value at most STOCK_COUNT_MAX, @version at most INT64_MAX.
 * An event dropped because a newer one of its SKU was already queued counts
 * as coalesced, like the queued event a newer one replaces.
 */
int
bus_publish(bus_t *b, const char *key, uint64_t value, uint64_t version)
{
	bool dropped, was_empty;
	int rc;

	if (b == NULL || key == NULL || !stock_sku_valid(key, strnlen(key, STORE_SKU_MAX + 1)) ||
	    value > STOCK_COUNT_MAX || version > (uint64_t)INT64_MAX)
		return STOCK_EINVAL;
	pthread_mutex_lock(&b->mu);
	if (b->stop) {
		pthread_mutex_unlock(&b->mu);
		return STOCK_EINVAL;
	}
	was_empty = b->pending.count == 0;
	rc = map_put(&b->pending, key, value, version, true, &dropped);
	if (rc == 0 && dropped)
		ctr_add(&b->coalesced, 1);
	if (rc == 0 && was_empty)
		pthread_cond_signal(&b->pub_cv);
	pthread_mutex_unlock(&b->mu);
	return rc;
}

/**
 * bus_flush - wait on the idle condition until nothing is pending and no
 * batch is in flight; see bus.h. STOCK_EINVAL for a NULL bus.
 */
int
bus_flush(bus_t *b, unsigned timeout_ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)timeout_ms * 1000000ULL;
	int rc = 0;

	if (b == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&b->mu);
	while (b->pending.count > 0 || b->inflight > 0) {
		if (mono_ns() >= deadline) {
			rc = STOCK_ETIMEDOUT;
			break;
		}
		cond_wait_until(&b->idle_cv, &b->mu, deadline);
	}
	pthread_mutex_unlock(&b->mu);
	return rc;
}

/** bus_stats - read the counters (each atomically; together, a near snapshot). */
void
bus_stats(bus_t *b, struct bus_stats *out)
{
	if (b == NULL || out == NULL) {
		if (out != NULL)
			memset(out, 0, sizeof *out);
		return;
	}
	out->published = __atomic_load_n(&b->published, __ATOMIC_RELAXED);
	out->coalesced = __atomic_load_n(&b->coalesced, __ATOMIC_RELAXED);
	out->received = __atomic_load_n(&b->received, __ATOMIC_RELAXED);
	out->echoes = __atomic_load_n(&b->echoes, __ATOMIC_RELAXED);
	out->malformed = __atomic_load_n(&b->malformed, __ATOMIC_RELAXED);
	out->reconnects = __atomic_load_n(&b->reconnects, __ATOMIC_RELAXED);
	out->connected = __atomic_load_n(&b->pub_up, __ATOMIC_ACQUIRE) != 0 &&
	    (!b->have_sub || __atomic_load_n(&b->sub_up, __ATOMIC_ACQUIRE) != 0);
}

/**
 * bus_close - set the stop flag with a deadline CLOSE_SEND_MS away, wake
 * both threads and join them: the publisher sends what is queued while its
 * connection is up and the deadline has not passed, the subscriber notices
 * within READ_POLL_MS. Then free everything; see bus.h.
 */
void
bus_close(bus_t *b)
{
	if (b == NULL)
		return;
	pthread_mutex_lock(&b->mu);
	__atomic_store_n(&b->stop, 1, __ATOMIC_RELEASE);
	b->close_deadline_ns = mono_ns() + CLOSE_SEND_MS * 1000000ULL;
	pthread_cond_broadcast(&b->pub_cv);
	pthread_cond_broadcast(&b->sub_cv);
	pthread_cond_broadcast(&b->idle_cv);
	pthread_mutex_unlock(&b->mu);
	pthread_join(b->pub_thread, NULL);
	if (b->have_sub)
		pthread_join(b->sub_thread, NULL);
	bus_free(b);
}
