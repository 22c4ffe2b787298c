/*
 * The stock-update bus on Redis pub/sub (bus.h; hiredis, blocking contexts).
 *
 * bus_publish merges the event into the pending index (common/doc.h: SKU ->
 * newest event, stock holding the value) under the bus mutex and wakes the
 * publisher thread, which takes the whole index, PUBLISHes it pipelined and
 * puts back what a failed connection left unsent. The subscriber thread owns
 * a second connection subscribed to both channels and polls it so that it
 * notices bus_close. Events are written with snprintf: host ids and SKUs
 * need no JSON escaping. Both threads log a lost connection and its recovery
 * once each, every line starting with our host id and the thread. The design
 * (coalescing ties, liveness checks, backoff) is docs/internals/bus.md.
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

#include <stock.h>
#include <stock/latch.h>

#include "cluster/bus.h"
#include "cluster/redis_url.h"
#include "common/assert.h"
#include "common/json.h"
#include "common/util.h"
#include "log.h"

#define DEF_ONE_CHANNEL "OneStockUpdateEvent"
#define DEF_MANY_CHANNEL "MultiStockUpdateEvent"
#define ONE_PREFIX "OneStock:"
#define CHANNEL_MAX 128          /* longest channel name accepted */
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
#define JSON_MAX (64 + HOST_ID_MAX + STOCK_SKU_MAX + 2 * 20)
#define MS 1000000ULL            /* nanoseconds */

/* Our lines: "<host> <thread>: ..." under "bus". */
#define BUS_ERROR(b, fmt, ...) log_error("bus", "%s " fmt, (b)->host_id, __VA_ARGS__)
#define BUS_WARN(b, fmt, ...) log_warn("bus", "%s " fmt, (b)->host_id, __VA_ARGS__)
#define BUS_INFO(b, fmt, ...) log_info("bus", "%s " fmt, (b)->host_id, __VA_ARGS__)

/* ====================================================================== */
/* The bus                                                                 */
/* ====================================================================== */

/* One thread's connection and its reconnect state. */
struct link {
	const char *name;         /* "publisher", "subscriber" */
	redisContext *ctx;        /* NULL while down */
	struct stock_latch *up;   /* the bus's flag of this connection */
	bool was_up;              /* connected at least once: a later connect is a reconnect */
	bool down_logged;         /* this outage has been logged */
	unsigned attempts;        /* failed attempts in this outage */
	unsigned backoff_ms;
};

struct bus_counters {
	struct stock_stat published, coalesced, received, echoes, malformed, reconnects;
};

struct bus {
	struct bus_counters st;   /* first: cache-line aligned (aligned_alloc) */

	/* Set by bus_open, read-only afterwards. */
	struct redis_addr addr;
	char host_id[HOST_ID_MAX + 1];
	char one_channel[CHANNEL_MAX + 1];
	char many_channel[CHANNEL_MAX + 1];
	bus_receive_fn receive;   /* NULL: no subscriber thread */
	void *receive_arg;

	pthread_mutex_t mu;
	pthread_cond_t pub_cv;      /* publisher: work, stop */
	pthread_cond_t idle_cv;     /* bus_flush: a batch was sent or put back */
	struct doc_index pending;   /* under mu: SKU -> newest event (stock = value) */
	size_t inflight;            /* under mu: events of the batch being sent */
	struct stock_latch stop;    /* set under mu (waiters on the cvs re-check it) */
	uint64_t close_deadline_ns; /* under mu */

	pthread_t pub_thread, sub_thread;
	struct stock_latch pub_up, sub_up; /* each connection is up */
	uint64_t refused; /* publisher thread only: PUBLISH answered with an error */
};

static struct timeval
ms_tv(uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	return tv;
}

static bool
stopping(struct bus *b)
{
	return stock_latch_is_set(&b->stop);
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

/*
 * Merge event @ev into the pending index. @later: it is more recent than
 * what is queued (bus_publish), so an equal version replaces the queued one;
 * false when a failed batch is put back, where what was queued meanwhile
 * wins a tie. When the SKU was queued, one of the two is discarded (counted
 * as coalesced). Under mu. Returns 0 or STOCK_ENOMEM (nothing changed).
 */
static int
pend_put(struct bus *b, const struct sku_doc *ev, bool later)
{
	struct sku_doc *p;

	if (doc_index_reserve(&b->pending, 1) != 0)
		return STOCK_ENOMEM;
	p = doc_index_slot(&b->pending, ev->sku);
	if (p->sku[0] == '\0') {
		*p = *ev;
		b->pending.n++;
		return 0;
	}
	stock_stat_inc(&b->st.coalesced);
	if (p->version < ev->version || (later && p->version == ev->version))
		*p = *ev;
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
event_json(struct bus *b, const struct sku_doc *p, char *buf)
{
	int n = snprintf(buf, JSON_MAX, "{\"host\":\"%s\",\"key\":\"%s\",\"value\":%" PRIu64
	    ",\"version\":%" PRIu64 "}", b->host_id, p->sku, p->stock, p->version);

	/* Validated host and key: the longest event fits. */
	ASSERT(n > 0 && n < JSON_MAX);
	return (size_t)n;
}

/* bus_event_parse (bus.h): the subscriber's parser, exported for the fuzz target. */
const char *
bus_event_parse(const char *msg, size_t len, struct bus_event *ev)
{
	size_t hlen = 0, klen = 0;
	struct json_field f[] = {
		{ .name = "host", .kind = JSON_STR, .str = ev->host, .cap = HOST_ID_MAX, .len = &hlen },
		{ .name = "key", .kind = JSON_STR, .str = ev->key, .cap = STOCK_SKU_MAX, .len = &klen },
		{ .name = "value", .kind = JSON_U64, .max = STOCK_COUNT_MAX, .u64 = &ev->value },
		{ .name = "version", .kind = JSON_U64, .max = (uint64_t)INT64_MAX,
		    .u64 = &ev->version },
	};
	const char *why = "bad JSON";

	memset(ev, 0, sizeof *ev);
	if (len > MSG_MAX)
		return "too long";
	if (json_object_parse(msg, len, f, sizeof f / sizeof f[0], &why) != 0)
		return why;
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		if (!f[i].found)
			return "missing host, key, value or version";
	if (!host_id_valid(ev->host, hlen))
		return "bad host";
	if (!stock_sku_valid(ev->key, klen))
		return "bad key";
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
link_backoff(struct bus *b, struct link *lk)
{
	struct timespec until;

	stock_deadline_in(&until, lk->backoff_ms);
	(void)stock_latch_wait(&b->stop, &until);
	lk->backoff_ms = lk->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : lk->backoff_ms * 2;
}

/* A connect attempt failed: log the first failure of an outage only. */
static void
link_failed(struct bus *b, struct link *lk, const char *why)
{
	lk->attempts++;
	if (!lk->down_logged) {
		BUS_WARN(b, "%s: cannot connect to redis %s:%d: %s (retrying)", lk->name, b->addr.host,
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
		BUS_INFO(b, "%s: reconnected to redis %s:%d after %u attempt(s)", lk->name,
		    b->addr.host, b->addr.port, lk->attempts + 1);
		stock_stat_inc(&b->st.reconnects);
	} else if (lk->attempts > 0) {
		BUS_INFO(b, "%s: connected to redis %s:%d after %u attempt(s)", lk->name, b->addr.host,
		    b->addr.port, lk->attempts + 1);
	}
	lk->was_up = true;
	lk->down_logged = false;
	lk->attempts = 0;
	lk->backoff_ms = BACKOFF_MIN_MS;
	stock_latch_set(lk->up);
}

/* The connection broke: drop it, log once. The caller backs off next. */
static void
link_lost(struct bus *b, struct link *lk, const char *why)
{
	stock_latch_clear(lk->up);
	if (lk->ctx != NULL) {
		if (!stopping(b))
			BUS_WARN(b, "%s: lost connection to redis %s:%d: %s", lk->name, b->addr.host,
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
 * PUBLISH every event of @batch, PIPELINE_MAX at a time; empties the slots
 * of the confirmed ones (the batch is never looked up, only walked). An
 * event Redis answers with an error (ACL, ...) is dropped and logged:
 * resending it would fail the same way. Returns false when the connection
 * failed (the unsent events stay in their slots).
 */
static bool
pub_send(struct bus *b, struct link *lk, struct doc_index *batch, const char **why)
{
	struct sku_doc *chunk[PIPELINE_MAX];
	size_t i = 0;

	while (i < batch->cap) {
		size_t n = 0;
		char json[JSON_MAX];

		for (; i < batch->cap && n < PIPELINE_MAX; i++) {
			struct sku_doc *p = &batch->slots[i];
			size_t len;

			if (p->sku[0] == '\0')
				continue;
			len = event_json(b, p, json);
			if (redisAppendCommand(lk->ctx, "PUBLISH %s %b", channel_of(b, p->sku), json,
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
					BUS_WARN(b, "publisher: PUBLISH of %s refused: %.*s (event "
					    "dropped; %" PRIu64 " so far)", chunk[k]->sku, (int)r->len,
					    r->str, b->refused);
			} else {
				stock_stat_inc(&b->st.published);
			}
			chunk[k]->sku[0] = '\0'; /* sent */
			freeReplyObject(r);
		}
	}
	return true;
}

/* Put the unsent events of a failed batch back (a newer queued one wins). */
static void
pub_requeue(struct bus *b, struct doc_index *batch)
{
	size_t lost = 0;

	for (size_t i = 0; i < batch->cap; i++)
		if (batch->slots[i].sku[0] != '\0' && pend_put(b, &batch->slots[i], false) != 0)
			lost++;
	if (lost > 0)
		BUS_ERROR(b, "publisher: out of memory: %zu unsent events dropped", lost);
}

/*
 * Wait (up to IDLE_CHECK_MS) for events and take the pending index as
 * @batch (pending starts empty again). Returns 1 with a batch to send, 0
 * when there is none (the idle connection was checked), -1 when closing.
 */
static int
pub_take_batch(struct bus *b, struct link *lk, struct doc_index *batch)
{
	pthread_mutex_lock(&b->mu);
	if (!stopping(b) && b->pending.n == 0)
		util_cond_wait_until(&b->pub_cv, &b->mu, stock_now_ns() + IDLE_CHECK_MS * MS);
	if (b->pending.n == 0 || (stopping(b) && stock_now_ns() >= b->close_deadline_ns)) {
		bool closing = stopping(b);

		pthread_mutex_unlock(&b->mu);
		if (closing)
			return -1;
		if (!idle_alive(lk->ctx)) {
			link_lost(b, lk, "closed by the server");
			link_backoff(b, lk);
		}
		return 0;
	}
	*batch = b->pending;
	memset(&b->pending, 0, sizeof b->pending);
	b->inflight = batch->n;
	if (stopping(b)) { /* send within what is left of the close deadline */
		uint64_t now = stock_now_ns();
		uint64_t left = b->close_deadline_ns > now ? b->close_deadline_ns - now : 1;

		redisSetTimeout(lk->ctx, ms_tv(left / MS + 1));
	}
	pthread_mutex_unlock(&b->mu);
	return 1;
}

static void *
pub_main(void *arg)
{
	struct bus *b = arg;
	struct link lk = { "publisher", NULL, &b->pub_up, false, false, 0, BACKOFF_MIN_MS };
	struct doc_index batch;
	char why[256];

	for (;;) {
		const char *err = "";
		bool ok;
		int got;

		if (lk.ctx == NULL) {
			redisContext *c;

			if (stopping(b))
				break;
			if ((c = redis_open(b, why, sizeof why)) == NULL) {
				link_failed(b, &lk, why);
				link_backoff(b, &lk);
				continue;
			}
			link_up(b, &lk, c);
		}
		if ((got = pub_take_batch(b, &lk, &batch)) < 0)
			break;
		if (got == 0)
			continue;
		ok = pub_send(b, &lk, &batch, &err);
		if (!ok)
			snprintf(why, sizeof why, "%s", err[0] != '\0' ? err : "I/O error");
		pthread_mutex_lock(&b->mu);
		if (!ok)
			pub_requeue(b, &batch);
		b->inflight = 0;
		free(batch.slots);
		pthread_cond_broadcast(&b->idle_cv);
		pthread_mutex_unlock(&b->mu);
		if (!ok) {
			link_lost(b, &lk, why);
			link_backoff(b, &lk);
		}
	}
	link_lost(b, &lk, "closing");
	return NULL;
}

/* ====================================================================== */
/* Subscriber                                                              */
/* ====================================================================== */

static void
sub_malformed(struct bus *b, const char *why)
{
	uint64_t n;

	/* This thread is the only writer: the sum is exact. */
	stock_stat_inc(&b->st.malformed);
	n = stock_stat_sum(&b->st.malformed);
	/* The 1st, 10th, 100th, ...: enough to notice, never a flood. */
	if (log_due(n))
		BUS_WARN(b, "subscriber: dropped a malformed message (%s); %" PRIu64 " so far", why,
		    n);
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
	bad = bus_event_parse(payload->str, payload->len, &ev);
	if (bad != NULL) {
		sub_malformed(b, bad);
		return;
	}
	if (strcmp(ev.host, b->host_id) == 0) {
		stock_stat_inc(&b->st.echoes);
		return;
	}
	stock_stat_inc(&b->st.received);
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
				link_backoff(b, &lk);
				continue;
			}
			link_up(b, &lk, c);
		}
		if (redisGetReplyFromReader(lk.ctx, (void **)&r) != REDIS_OK) {
			link_lost(b, &lk, lk.ctx->errstr);
			link_backoff(b, &lk);
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
				link_backoff(b, &lk);
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
	free(b->pending.slots);
	pthread_cond_destroy(&b->pub_cv);
	pthread_cond_destroy(&b->idle_cv);
	pthread_mutex_destroy(&b->mu);
	stock_latch_destroy(&b->stop);
	stock_latch_destroy(&b->pub_up);
	stock_latch_destroy(&b->sub_up);
	free(b);
}

/* Set the stop flag with @send_ms left to send what is queued; wake everyone. */
static void
bus_stop(struct bus *b, uint64_t send_ms)
{
	pthread_mutex_lock(&b->mu);
	b->close_deadline_ns = stock_now_ns() + send_ms * MS;
	stock_latch_set(&b->stop); /* under mu: a publisher about to wait sees it */
	pthread_cond_broadcast(&b->pub_cv);
	pthread_cond_broadcast(&b->idle_cv);
	pthread_mutex_unlock(&b->mu);
}

/* A bus from checked options, threads not started. NULL: out of memory. */
static struct bus *
bus_new(const struct bus_options *opt, const struct redis_addr *addr, const char *one,
    const char *many)
{
	struct bus *b = util_cache_zalloc(sizeof *b);

	if (b == NULL)
		return NULL;
	b->addr = *addr;
	snprintf(b->host_id, sizeof b->host_id, "%s", opt->host_id);
	snprintf(b->one_channel, sizeof b->one_channel, "%s", one);
	snprintf(b->many_channel, sizeof b->many_channel, "%s", many);
	b->receive = opt->receive;
	b->receive_arg = opt->receive_arg;
	pthread_mutex_init(&b->mu, NULL);
	if (util_cond_init(&b->pub_cv) != 0 || util_cond_init(&b->idle_cv) != 0)
		abort(); /* cannot fail on Linux for CLOCK_MONOTONIC */
	stock_latch_init(&b->stop, false);
	stock_latch_init(&b->pub_up, false);
	stock_latch_init(&b->sub_up, false);
	return b;
}

/**
 * bus_open - parse and check the options, then start the threads; see
 * bus.h. The subscriber thread runs only when @opt->receive is set; without
 * it the connected flag follows the publisher's connection alone.
 */
int
bus_open(bus_t **out, const struct bus_options *opt)
{
	struct redis_addr addr;
	const char *one, *many;
	struct bus *b;
	int rc;

	if (out == NULL)
		return STOCK_EINVAL;
	*out = NULL;
	if (opt == NULL || opt->host_id == NULL ||
	    !host_id_valid(opt->host_id, strnlen(opt->host_id, HOST_ID_MAX + 1)))
		return STOCK_EINVAL;
	one = opt->one_channel != NULL ? opt->one_channel : DEF_ONE_CHANNEL;
	many = opt->many_channel != NULL ? opt->many_channel : DEF_MANY_CHANNEL;
	if (!channel_valid(one) || !channel_valid(many) || redis_url_parse(opt->url, &addr) != 0)
		return STOCK_EINVAL;
	if ((b = bus_new(opt, &addr, one, many)) == NULL)
		return STOCK_ENOMEM;
	rc = pthread_create(&b->pub_thread, NULL, pub_main, b);
	if (rc != 0) {
		bus_free(b);
		errno = rc;
		return STOCK_ESYS;
	}
	if (b->receive != NULL && (rc = pthread_create(&b->sub_thread, NULL, sub_main, b)) != 0) {
		bus_stop(b, 0);
		pthread_join(b->pub_thread, NULL);
		bus_free(b);
		errno = rc;
		return STOCK_ESYS;
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
	struct sku_doc ev = { .stock = value, .version = version };
	bool was_empty;
	int rc;

	if (b == NULL || key == NULL || !stock_sku_valid(key, strnlen(key, STOCK_SKU_MAX + 1)) ||
	    value > STOCK_COUNT_MAX || version > (uint64_t)INT64_MAX)
		return STOCK_EINVAL;
	memcpy(ev.sku, key, strlen(key) + 1);
	pthread_mutex_lock(&b->mu);
	if (stopping(b)) {
		pthread_mutex_unlock(&b->mu);
		return STOCK_EINVAL;
	}
	was_empty = b->pending.n == 0;
	rc = pend_put(b, &ev, true);
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
	uint64_t deadline = stock_now_ns() + (uint64_t)timeout_ms * MS;
	int rc = 0;

	if (b == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&b->mu);
	while (b->pending.n > 0 || b->inflight > 0) {
		if (stock_now_ns() >= deadline) {
			rc = STOCK_ETIMEDOUT;
			break;
		}
		util_cond_wait_until(&b->idle_cv, &b->mu, deadline);
	}
	pthread_mutex_unlock(&b->mu);
	return rc;
}

/** bus_stats - read the counters (each exactly; together, a near snapshot). */
void
bus_stats(bus_t *b, struct bus_stats *out)
{
	if (b == NULL || out == NULL) {
		if (out != NULL)
			memset(out, 0, sizeof *out);
		return;
	}
	out->published = stock_stat_sum(&b->st.published);
	out->coalesced = stock_stat_sum(&b->st.coalesced);
	out->received = stock_stat_sum(&b->st.received);
	out->echoes = stock_stat_sum(&b->st.echoes);
	out->malformed = stock_stat_sum(&b->st.malformed);
	out->reconnects = stock_stat_sum(&b->st.reconnects);
	out->connected = stock_latch_is_set(&b->pub_up) &&
	    (b->receive == NULL || stock_latch_is_set(&b->sub_up));
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
	bus_stop(b, CLOSE_SEND_MS);
	pthread_join(b->pub_thread, NULL);
	if (b->receive != NULL)
		pthread_join(b->sub_thread, NULL);
	bus_free(b);
}
