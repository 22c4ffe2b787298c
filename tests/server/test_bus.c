/*
 * The Redis bus (demo-server/cluster/bus_redis.c) against real redis-server
 * processes that each test starts for itself on a free port in a temp dir
 * (and kills at its end, or when the test process dies: PDEATHSIG).
 *
 * Delivery across hosts and echo suppression, channel routing (checked with
 * a raw hiredis subscriber), coalescing while the publisher cannot get in
 * (an ACL user that only exists once the receiver listens, so the outcome
 * does not depend on who connects first), malformed messages, a Redis
 * restart on the same port, and argument checking. Nothing here decides an
 * outcome by sleeping: every wait polls a condition with a generous limit.
 * Log lines are captured with log_set_sink and attributed to a bus by the
 * host id each bus line starts with.
 *
 * Without redis-server on PATH every test reports itself skipped (on
 * stderr, and to Criterion); under CI=true it fails instead.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster/bus.h"
#include "log.h"

/* ====================================================================== */
/* Helpers                                                                 */
/* ====================================================================== */

static uint64_t
bus_t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
bus_t_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Poll @expr every 10 ms for up to @ms; true once it holds. */
#define BUS_T_UNTIL(expr, ms)                                              \
	({                                                                 \
		uint64_t d_ = bus_t_now_ms() + (ms);                       \
		bool ok_;                                                  \
		while (!(ok_ = (expr)) && bus_t_now_ms() < d_)             \
			bus_t_sleep_ms(10);                                \
		ok_;                                                       \
	})

/* One redis-server child per test (tests run in their own processes). */
static struct {
	pid_t pid;
	int port;
	char dir[256];
	char exe[512];
} bus_t_srv;

/* redis-server's absolute path from PATH, or false. */
static bool
bus_t_find_redis(void)
{
	const char *path = getenv("PATH");
	char buf[4096];

	if (bus_t_srv.exe[0] != '\0')
		return true;
	snprintf(buf, sizeof buf, "%s", path != NULL ? path : "/usr/bin:/bin");
	for (char *save = NULL, *d = strtok_r(buf, ":", &save); d != NULL;
	     d = strtok_r(NULL, ":", &save)) {
		char exe[512];

		snprintf(exe, sizeof exe, "%s/redis-server", d);
		if (access(exe, X_OK) == 0) {
			snprintf(bus_t_srv.exe, sizeof bus_t_srv.exe, "%s", exe);
			return true;
		}
	}
	return false;
}

/* Skip (or, under CI=true, fail) the calling test without redis-server. */
#define BUS_T_NEED_REDIS(name)                                                        \
	do {                                                                          \
		if (!bus_t_find_redis()) {                                            \
			const char *ci_ = getenv("CI");                               \
			if (ci_ != NULL && strcmp(ci_, "true") == 0)                  \
				cr_assert_fail("redis-server not on PATH (CI=true)"); \
			fprintf(stderr, "SKIPPED (no redis-server): bus/%s\n", name); \
			cr_skip_test("no redis-server");                              \
			return;                                                       \
		}                                                                     \
	} while (0)

/* A TCP port nobody listens on right now (bind to 0, read, close). */
static int
bus_t_free_port(void)
{
	struct sockaddr_in sa = { 0 };
	socklen_t len = sizeof sa;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s", strerror(errno));
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

static redisContext *
bus_t_raw(int port)
{
	struct timeval tv = { 1, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);

	if (c != NULL && c->err != 0) {
		redisFree(c);
		return NULL;
	}
	if (c != NULL)
		redisSetTimeout(c, tv);
	return c;
}

static bool
bus_t_ping(int port)
{
	redisContext *c = bus_t_raw(port);
	redisReply *r;
	bool ok;

	if (c == NULL)
		return false;
	r = redisCommand(c, "PING");
	/* PONG, or NOAUTH from a server with a password: either way it is up. */
	ok = r != NULL && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR);
	if (r != NULL)
		freeReplyObject(r);
	redisFree(c);
	return ok;
}

/* Fork + exec redis-server on @port; false when it exited at once. */
static bool
bus_t_spawn(int port, const char *extra1, const char *extra2)
{
	char portstr[16], logfile[300];
	const char *argv[20];
	int n = 0;
	pid_t parent = getpid(), pid;

	snprintf(portstr, sizeof portstr, "%d", port);
	snprintf(logfile, sizeof logfile, "%s/redis.log", bus_t_srv.dir);
	argv[n++] = bus_t_srv.exe;
	argv[n++] = "--port";
	argv[n++] = portstr;
	argv[n++] = "--bind";
	argv[n++] = "127.0.0.1";
	argv[n++] = "--save";
	argv[n++] = "";
	argv[n++] = "--appendonly";
	argv[n++] = "no";
	argv[n++] = "--daemonize";
	argv[n++] = "no";
	argv[n++] = "--dir";
	argv[n++] = bus_t_srv.dir;
	argv[n++] = "--logfile";
	argv[n++] = logfile;
	if (extra1 != NULL) {
		argv[n++] = extra1;
		argv[n++] = extra2;
	}
	argv[n] = NULL;

	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
		}
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execv(bus_t_srv.exe, (char *const *)argv);
		_exit(127);
	}
	bus_t_srv.pid = pid;
	bus_t_srv.port = port;
	for (uint64_t d = bus_t_now_ms() + 10000; bus_t_now_ms() < d;) {
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid) {
			bus_t_srv.pid = 0;
			return false;
		}
		if (bus_t_ping(port))
			return true;
		bus_t_sleep_ms(20);
	}
	cr_assert_fail("redis-server on port %d does not answer PING", port);
	return false;
}

/*
 * Start redis-server: on @port (0: a free one, retried if it was taken
 * meanwhile). @extra1/@extra2: one more option and its value, or NULL.
 * Returns the port.
 */
static int
bus_t_start(int port, const char *extra1, const char *extra2)
{
	if (bus_t_srv.dir[0] == '\0') {
		const char *base = getenv("TMPDIR");

		snprintf(bus_t_srv.dir, sizeof bus_t_srv.dir, "%s/test_bus.XXXXXX",
		    base != NULL ? base : "/tmp");
		cr_assert_not_null(mkdtemp(bus_t_srv.dir), "mkdtemp: %s", strerror(errno));
	}
	for (int tries = 0; tries < 5; tries++) {
		int p = port != 0 ? port : bus_t_free_port();

		if (bus_t_spawn(p, extra1, extra2))
			return p;
	}
	cr_assert_fail("redis-server does not start (port %d)", port);
	return -1;
}

static void
bus_t_kill(void)
{
	if (bus_t_srv.pid > 0) {
		kill(bus_t_srv.pid, SIGKILL);
		waitpid(bus_t_srv.pid, NULL, 0);
		bus_t_srv.pid = 0;
	}
}

static void bus_t_recs_reset(void);

/* .fini of every test: the server goes even when an assertion failed. */
static void
bus_t_fini(void)
{
	char logfile[300];

	bus_t_recs_reset();
	bus_t_kill();
	if (bus_t_srv.dir[0] != '\0') {
		snprintf(logfile, sizeof logfile, "%s/redis.log", bus_t_srv.dir);
		unlink(logfile);
		rmdir(bus_t_srv.dir);
		bus_t_srv.dir[0] = '\0';
	}
}

/* What a bus's callback saw, and what it logged. */
struct bus_t_rec {
	pthread_mutex_t mu;
	char host[HOST_ID_MAX + 1]; /* the bus whose log lines land here */
	struct bus_event ev[64];
	size_t n;     /* callbacks (ev keeps the first 64) */
	char log[8192];
	size_t loglen;
	unsigned lines;
};

/* Which record gets a "bus" line: by the host id it starts with. */
static struct {
	pthread_mutex_t mu;
	struct bus_t_rec *rec[8];
	size_t n;
} bus_t_recs = { PTHREAD_MUTEX_INITIALIZER, { NULL }, 0 };

static void
bus_t_log(struct bus_t_rec *r, const char *msg)
{
	int n;

	pthread_mutex_lock(&r->mu);
	r->lines++;
	n = snprintf(r->log + r->loglen, sizeof r->log - r->loglen, "%s\n", msg);
	if (n > 0 && (size_t)n < sizeof r->log - r->loglen)
		r->loglen += (size_t)n;
	pthread_mutex_unlock(&r->mu);
}

/* The log sink (set once per process: log_set_sink is not thread-safe). */
static void
bus_t_sink(void *arg, enum log_level level, const char *who, const char *msg)
{
	(void)arg;
	(void)level;
	if (getenv("BUS_T_VERBOSE") != NULL)
		fprintf(stderr, "log %s: %s\n", who, msg);
	if (strcmp(who, "bus") != 0)
		return;
	pthread_mutex_lock(&bus_t_recs.mu);
	for (size_t i = 0; i < bus_t_recs.n; i++) {
		struct bus_t_rec *r = bus_t_recs.rec[i];
		size_t hl = strlen(r->host);

		if (strncmp(msg, r->host, hl) == 0 && msg[hl] == ' ') {
			bus_t_log(r, msg + hl + 1);
			break;
		}
	}
	pthread_mutex_unlock(&bus_t_recs.mu);
}

static pthread_once_t bus_t_sink_once = PTHREAD_ONCE_INIT;

static void
bus_t_sink_install(void)
{
	log_set_sink(bus_t_sink, NULL);
}

/* Start capturing the log lines of the bus of host @host into @r. */
static void
bus_t_rec_init(struct bus_t_rec *r, const char *host)
{
	pthread_once(&bus_t_sink_once, bus_t_sink_install);
	memset(r, 0, sizeof *r);
	pthread_mutex_init(&r->mu, NULL);
	snprintf(r->host, sizeof r->host, "%s", host);
	pthread_mutex_lock(&bus_t_recs.mu);
	cr_assert_lt(bus_t_recs.n, sizeof bus_t_recs.rec / sizeof bus_t_recs.rec[0]);
	bus_t_recs.rec[bus_t_recs.n++] = r;
	pthread_mutex_unlock(&bus_t_recs.mu);
}

/* Forget every record (their tests' buses are closed). */
static void
bus_t_recs_reset(void)
{
	pthread_mutex_lock(&bus_t_recs.mu);
	bus_t_recs.n = 0;
	pthread_mutex_unlock(&bus_t_recs.mu);
}

static void
bus_t_receive(const struct bus_event *ev, void *arg)
{
	struct bus_t_rec *r = arg;

	pthread_mutex_lock(&r->mu);
	if (r->n < sizeof r->ev / sizeof r->ev[0])
		r->ev[r->n] = *ev;
	r->n++;
	pthread_mutex_unlock(&r->mu);
}

static size_t
bus_t_count(struct bus_t_rec *r)
{
	size_t n;

	pthread_mutex_lock(&r->mu);
	n = r->n;
	pthread_mutex_unlock(&r->mu);
	return n;
}

/* True once @r got @key at @version from @host (copied to *@out if set). */
static bool
bus_t_got(struct bus_t_rec *r, const char *host, const char *key, uint64_t version,
    struct bus_event *out)
{
	bool found = false;

	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->n && i < sizeof r->ev / sizeof r->ev[0]; i++) {
		if (strcmp(r->ev[i].host, host) == 0 && strcmp(r->ev[i].key, key) == 0 &&
		    r->ev[i].version == version) {
			if (out != NULL)
				*out = r->ev[i];
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return found;
}

/* Log lines of @r that contain @needle. */
static unsigned
bus_t_log_count(struct bus_t_rec *r, const char *needle)
{
	unsigned n = 0;

	pthread_mutex_lock(&r->mu);
	for (const char *p = r->log; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	pthread_mutex_unlock(&r->mu);
	return n;
}

/*
 * @want lines containing @needle in @rec's log, written by a bus's two
 * threads (one line each). One fewer is tolerated: when both threads are the
 * first in the process to log at one call site at the same instant, the
 * logger's sampler (stock_sampler) refuses the event racing the opening of
 * its very first window and only counts it as dropped. More would be a
 * flood.
 */
#define BUS_T_EXPECT_LINES(rec, needle, want)                                          \
	do {                                                                           \
		unsigned n_ = bus_t_log_count((rec), (needle));                        \
		cr_expect(n_ == (want) || n_ + 1 == (want),                            \
		    "%u lines with \"%s\", want %u:\n%s", n_, (needle), (unsigned)(want), \
		    (rec)->log);                                                       \
	} while (0)

static struct bus_stats
bus_t_stats(bus_t *b)
{
	struct bus_stats s;

	bus_stats(b, &s);
	return s;
}

static bool
bus_t_connected(bus_t *b)
{
	return bus_t_stats(b).connected;
}

/* Open a bus on @url as @host; @rec receives (unless !@receive); logs go to
   the record of @host. */
static bus_t *
bus_t_open(const char *url, const char *host, struct bus_t_rec *rec, bool receive)
{
	struct bus_options o = { 0 };
	bus_t *b = NULL;
	int rc;

	o.url = url;
	o.host_id = host;
	o.receive = receive ? bus_t_receive : NULL;
	o.receive_arg = rec;
	rc = bus_open(&b, &o);
	cr_assert_eq(rc, 0, "bus_open(%s, %s): %d", url, host, rc);
	cr_assert_not_null(b);
	return b;
}

static void
bus_t_url(char *buf, size_t len, int port)
{
	snprintf(buf, len, "redis://127.0.0.1:%d", port);
}

/* PUBLISH raw bytes on a raw connection. */
static void
bus_t_raw_publish(redisContext *c, const char *channel, const char *msg, size_t len)
{
	redisReply *r = redisCommand(c, "PUBLISH %s %b", channel, msg, len);

	cr_assert_not_null(r, "PUBLISH: %s", c->errstr);
	cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
	freeReplyObject(r);
}

/* ====================================================================== */
/* Tests                                                                   */
/* ====================================================================== */

Test(bus, deliver_and_drop_echo, .fini = bus_t_fini, .timeout = 60)
{
	struct bus_t_rec ra, rb;
	struct bus_event ev;
	char url[64];
	bus_t *a, *b;

	BUS_T_NEED_REDIS("deliver_and_drop_echo");
	bus_t_url(url, sizeof url, bus_t_start(0, NULL, NULL));
	bus_t_rec_init(&ra, "A");
	bus_t_rec_init(&rb, "B");
	a = bus_t_open(url, "A", &ra, true);
	b = bus_t_open(url, "B", &rb, true);
	cr_assert(BUS_T_UNTIL(bus_t_connected(a) && bus_t_connected(b), 5000));

	cr_assert_eq(bus_publish(a, "NVDA", 42, 7), 0);
	cr_assert(BUS_T_UNTIL(bus_t_got(&rb, "A", "NVDA", 7, &ev), 5000));
	cr_expect_eq(ev.value, 42);
	cr_assert(BUS_T_UNTIL(bus_t_stats(a).echoes >= 1, 5000));
	cr_assert_eq(bus_flush(a, 5000), 0);

	cr_assert_eq(bus_publish(b, "OneStock:Db", 14990, 11), 0);
	cr_assert(BUS_T_UNTIL(bus_t_got(&ra, "B", "OneStock:Db", 11, &ev), 5000));
	cr_expect_eq(ev.value, 14990);
	cr_assert(BUS_T_UNTIL(bus_t_stats(b).echoes >= 1, 5000));

	/* Each saw exactly the other's event, never its own echo. */
	cr_expect_eq(bus_t_count(&ra), 1);
	cr_expect_eq(bus_t_count(&rb), 1);
	cr_expect_eq(bus_t_stats(a).published, 1);
	cr_expect_eq(bus_t_stats(a).received, 1);
	cr_expect_eq(bus_t_stats(a).malformed, 0);
	cr_expect_eq(bus_t_stats(b).received, 1);
	cr_expect_eq(bus_t_stats(a).reconnects, 0);
	bus_close(a);
	bus_close(b);
}

/* Read the next message of a raw subscriber: channel and payload. */
static bool
bus_t_next_msg(redisContext *c, char *channel, size_t clen, char *msg, size_t mlen)
{
	for (;;) {
		redisReply *r = NULL;
		bool is_msg;

		if (redisGetReply(c, (void **)&r) != REDIS_OK || r == NULL)
			return false;
		is_msg = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
		    strcmp(r->element[0]->str, "message") == 0;
		if (is_msg) {
			snprintf(channel, clen, "%s", r->element[1]->str);
			snprintf(msg, mlen, "%.*s", (int)r->element[2]->len, r->element[2]->str);
		}
		freeReplyObject(r);
		if (is_msg)
			return true;
	}
}

static redisContext *
bus_t_raw_subscribe(int port, const char *ch1, const char *ch2, const char *ch3, const char *ch4)
{
	redisContext *c = bus_t_raw(port);
	struct timeval tv = { 5, 0 };
	redisReply *r;

	cr_assert_not_null(c);
	redisSetTimeout(c, tv);
	r = redisCommand(c, "SUBSCRIBE %s %s %s %s", ch1, ch2, ch3, ch4);
	cr_assert_not_null(r);
	freeReplyObject(r);
	for (int i = 1; i < 4; i++) {
		cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
		freeReplyObject(r);
	}
	return c;
}

Test(bus, channel_routing, .fini = bus_t_fini, .timeout = 60)
{
	struct bus_t_rec ra, rc;
	struct bus_options o = { 0 };
	char url[64], ch[64], msg[256];
	bool one = false, many = false, cone = false, cmany = false;
	redisContext *sub;
	bus_t *a, *c = NULL;
	int port;

	BUS_T_NEED_REDIS("channel_routing");
	port = bus_t_start(0, NULL, NULL);
	bus_t_url(url, sizeof url, port);
	sub = bus_t_raw_subscribe(port, "OneStockUpdateEvent", "MultiStockUpdateEvent", "t.one",
	    "t.many");
	bus_t_rec_init(&ra, "A");
	bus_t_rec_init(&rc, "C");
	a = bus_t_open(url, "A", &ra, false); /* publish only */
	o.url = url;
	o.host_id = "C";
	o.one_channel = "t.one";
	o.many_channel = "t.many";
	cr_assert_eq(bus_open(&c, &o), 0);
	cr_assert(BUS_T_UNTIL(bus_t_connected(a) && bus_t_connected(c), 5000));

	cr_assert_eq(bus_publish(a, "OneStock:Db", 1, 2), 0);
	cr_assert_eq(bus_publish(a, "NVDA", 3, 4), 0);
	cr_assert_eq(bus_publish(c, "OneStock:X", 5, 6), 0);
	cr_assert_eq(bus_publish(c, "OneStock", 7, 8), 0); /* no colon: many */
	for (int i = 0; i < 4; i++) {
		cr_assert(bus_t_next_msg(sub, ch, sizeof ch, msg, sizeof msg), "message %d", i);
		if (strstr(msg, "\"key\":\"OneStock:Db\"") != NULL) {
			cr_expect_str_eq(ch, "OneStockUpdateEvent");
			cr_expect_str_eq(msg,
			    "{\"host\":\"A\",\"key\":\"OneStock:Db\",\"value\":1,\"version\":2}");
			one = true;
		} else if (strstr(msg, "\"key\":\"NVDA\"") != NULL) {
			cr_expect_str_eq(ch, "MultiStockUpdateEvent");
			cr_expect_str_eq(msg,
			    "{\"host\":\"A\",\"key\":\"NVDA\",\"value\":3,\"version\":4}");
			many = true;
		} else if (strstr(msg, "\"key\":\"OneStock:X\"") != NULL) {
			cr_expect_str_eq(ch, "t.one");
			cone = true;
		} else if (strstr(msg, "\"key\":\"OneStock\"") != NULL) {
			cr_expect_str_eq(ch, "t.many");
			cmany = true;
		} else {
			cr_expect_fail("unexpected message on %s: %s", ch, msg);
		}
	}
	cr_expect(one && many && cone && cmany);
	cr_assert_eq(bus_flush(a, 5000), 0); /* the counter follows Redis's reply */
	cr_expect_eq(bus_t_stats(a).published, 2);
	cr_expect_eq(bus_t_stats(a).echoes, 0); /* publish only: no subscriber */
	redisFree(sub);
	bus_close(a);
	bus_close(c);
}

Test(bus, coalescing_before_connect, .fini = bus_t_fini, .timeout = 60)
{
	struct bus_t_rec ra, rb;
	struct bus_stats s;
	struct bus_event ev;
	char url_a[128], url_b[128];
	redisContext *adm;
	redisReply *r;
	bus_t *a, *b;
	int port;

	BUS_T_NEED_REDIS("coalescing_before_connect");
	/* A's user does not exist yet: A cannot get in until we create it. */
	port = bus_t_start(0, "--requirepass", "bpass");
	snprintf(url_b, sizeof url_b, "redis://:bpass@127.0.0.1:%d", port);
	snprintf(url_a, sizeof url_a, "redis://usera:p%%40ss@127.0.0.1:%d/0", port);
	bus_t_rec_init(&ra, "A");
	bus_t_rec_init(&rb, "B");
	b = bus_t_open(url_b, "B", &rb, true);
	a = bus_t_open(url_a, "A", &ra, true);
	cr_assert(BUS_T_UNTIL(bus_t_connected(b), 5000));

	for (uint64_t v = 1; v <= 100; v++)
		cr_assert_eq(bus_publish(a, "SKU-1", 1000 - v, v), 0);
	cr_assert_eq(bus_publish(a, "SKU-1", 1, 50), 0); /* older: a no-op */
	s = bus_t_stats(a);
	cr_expect_eq(s.coalesced, 100, "coalesced %llu", (unsigned long long)s.coalesced);
	cr_expect_eq(s.published, 0);
	cr_expect_not(s.connected);
	cr_expect_eq(bus_flush(a, 20), STOCK_ETIMEDOUT);
	cr_expect(BUS_T_UNTIL(bus_t_log_count(&ra, "cannot connect") >= 1, 5000));

	/* Let A in: its next attempt connects and sends the pending map. */
	adm = bus_t_raw(port);
	cr_assert_not_null(adm);
	r = redisCommand(adm, "AUTH bpass");
	cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
	r = redisCommand(adm, "ACL SETUSER usera on >p@ss ~* &* +@all");
	cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS, "ACL SETUSER: %s",
	    r != NULL ? r->str : adm->errstr);
	freeReplyObject(r);
	redisFree(adm);

	cr_assert(BUS_T_UNTIL(bus_t_got(&rb, "A", "SKU-1", 100, &ev), 10000));
	cr_expect_eq(ev.value, 900);
	cr_assert_eq(bus_flush(a, 5000), 0);
	s = bus_t_stats(a);
	cr_expect_eq(s.published, 1);
	cr_expect_eq(s.coalesced, 100);
	cr_expect_eq(bus_t_count(&rb), 1); /* only the newest went out */
	cr_assert(BUS_T_UNTIL(bus_t_connected(a), 10000)); /* A's subscriber too */
	BUS_T_EXPECT_LINES(&ra, "cannot connect", 2); /* pub + sub */
	BUS_T_EXPECT_LINES(&ra, "connected to redis", 2);
	bus_close(a);
	bus_close(b);
}

Test(bus, malformed_messages, .fini = bus_t_fini, .timeout = 60)
{
	static const char *const bad[] = {
		"not json",
		"",
		"{}",
		"[1,2]",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"version\":1}",
		"{\"key\":\"NVDA\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":-1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":-5}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1.5,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1e3,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":01,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":\"1\",\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":18446744073709551616,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":9223372036854775808}",
		"{\"host\":\"X\",\"key\":\"bad sku\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NV\\u00e9DA\",\"value\":1,\"version\":1}",
		"{\"host\":\"X Y\",\"key\":\"NVDA\",\"value\":1,\"version\":1}",
		"{\"host\":1,\"key\":\"NVDA\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,\"value\":2}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,\"n\":{}}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1} x",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1",
		"{\"host\":\"X\",\"key\":\"NVDA\" \"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":true,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":null,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NV\\qDA\",\"value\":1,\"version\":1}",
		/* Unknown members, even scalar ones: exactly the four are accepted. */
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,\"t\":true}",
		"{\"v2\":null,\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,\"note\":\"a\"}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,\"m\":-1.5e3}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1,\"host\":\"Y\"}",
		"{\"host\":\"X\",\"HOST\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1}",
		"{\"host\":\"\",\"key\":\"NVDA\",\"value\":1,\"version\":1}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":1}{}",
		"{\"host\":\"X\",\"key\":\"NVDA\",\"value\":1,\"version\":9223372036854775807}"
		"x",
	};
	static const char nul_msg[] = "{\"host\":\"X\",\"key\":\"NV\0DA\",\"value\":1,\"version\":1}";
	static const char head[] = "{\"host\":\"X\",\"key\":\"";
	static const char tail[] = "\",\"value\":1,\"version\":1}";
	struct bus_t_rec rb;
	struct bus_event ev;
	char url[64], m[256], *huge;
	size_t nbad = 0, hlen = 1 << 20;
	redisContext *raw;
	bus_t *b;
	int port;

	BUS_T_NEED_REDIS("malformed_messages");
	port = bus_t_start(0, NULL, NULL);
	bus_t_url(url, sizeof url, port);
	bus_t_rec_init(&rb, "B");
	b = bus_t_open(url, "B", &rb, true);
	cr_assert(BUS_T_UNTIL(bus_t_connected(b), 5000));
	raw = bus_t_raw(port);
	cr_assert_not_null(raw);

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++, nbad++)
		bus_t_raw_publish(raw, i % 2 ? "OneStockUpdateEvent" : "MultiStockUpdateEvent",
		    bad[i], strlen(bad[i]));
	bus_t_raw_publish(raw, "MultiStockUpdateEvent", nul_msg, sizeof nul_msg - 1);
	nbad++;
	/* A 1 MiB message: one huge key, then one blob of non-JSON. */
	huge = malloc(hlen);
	cr_assert_not_null(huge);
	memset(huge, 'A', hlen);
	memcpy(huge, head, strlen(head));
	memcpy(huge + hlen - strlen(tail), tail, strlen(tail));
	bus_t_raw_publish(raw, "MultiStockUpdateEvent", huge, hlen);
	nbad++;
	memset(huge, 0xff, hlen);
	bus_t_raw_publish(raw, "OneStockUpdateEvent", huge, hlen);
	nbad++;
	free(huge);
	/* A key one byte too long. */
	snprintf(m, sizeof m, "%s%065d%s", head, 0, tail);
	bus_t_raw_publish(raw, "MultiStockUpdateEvent", m, strlen(m));
	nbad++;
	/* A nested unknown member is refused; then a valid event (white space,
	   members in another order, an escape) arrives. */
	{
		static const char nested[] = " { \"version\" : 3 , \"extra\": [\"x\"] } ";
		static const char good[] =
		    " {\t\"version\" : 3 ,\"host\":\"X\",\r\n"
		    "\"key\":\"NV\\u0044A\",\"value\":0 } ";

		bus_t_raw_publish(raw, "MultiStockUpdateEvent", nested, sizeof nested - 1);
		nbad++;
		bus_t_raw_publish(raw, "MultiStockUpdateEvent", good, sizeof good - 1);
	}
	cr_assert(BUS_T_UNTIL(bus_t_count(&rb) >= 1, 5000));
	cr_assert(BUS_T_UNTIL(bus_t_stats(b).malformed >= nbad, 5000));
	cr_expect_eq(bus_t_count(&rb), 1);
	cr_assert(bus_t_got(&rb, "X", "NVDA", 3, &ev));
	cr_expect_eq(ev.value, 0);
	cr_expect_eq(bus_t_stats(b).malformed, nbad);
	cr_expect_eq(bus_t_stats(b).received, 1);
	/* Logged the 1st and the 10th malformed message, not all of them. */
	cr_expect_eq(bus_t_log_count(&rb, "malformed"), 2, "%s", rb.log);
	cr_expect(bus_t_connected(b));
	redisFree(raw);
	bus_close(b);
}

Test(bus, redis_restart, .fini = bus_t_fini, .timeout = 60)
{
	struct bus_t_rec ra, rb;
	struct bus_stats sa, sb;
	char url[64];
	bus_t *a, *b;
	int port;

	BUS_T_NEED_REDIS("redis_restart");
	port = bus_t_start(0, NULL, NULL);
	bus_t_url(url, sizeof url, port);
	bus_t_rec_init(&ra, "A");
	bus_t_rec_init(&rb, "B");
	a = bus_t_open(url, "A", &ra, true);
	b = bus_t_open(url, "B", &rb, true);
	cr_assert(BUS_T_UNTIL(bus_t_connected(a) && bus_t_connected(b), 5000));
	cr_assert_eq(bus_publish(a, "K", 10, 1), 0);
	cr_assert(BUS_T_UNTIL(bus_t_got(&rb, "A", "K", 1, NULL), 5000));

	bus_t_kill();
	cr_assert(BUS_T_UNTIL(!bus_t_connected(a) && !bus_t_connected(b), 5000));
	cr_assert_eq(bus_publish(a, "K", 9, 2), 0); /* queued while down */
	cr_expect_eq(bus_flush(a, 20), STOCK_ETIMEDOUT);

	cr_assert_eq(bus_t_start(port, NULL, NULL), port);
	cr_assert(BUS_T_UNTIL(bus_t_stats(a).reconnects >= 2 && bus_t_stats(b).reconnects >= 2,
	    10000));
	cr_assert(BUS_T_UNTIL(bus_t_connected(a) && bus_t_connected(b), 10000));
	sa = bus_t_stats(a);
	sb = bus_t_stats(b);
	cr_expect_eq(sa.reconnects, 2, "A reconnects %llu", (unsigned long long)sa.reconnects);
	cr_expect_eq(sb.reconnects, 2, "B reconnects %llu", (unsigned long long)sb.reconnects);
	cr_assert_eq(bus_flush(a, 5000), 0); /* version 2 went out after the reconnect */

	cr_assert_eq(bus_publish(a, "K", 8, 3), 0);
	cr_assert(BUS_T_UNTIL(bus_t_got(&rb, "A", "K", 3, NULL), 5000));
	/* One line per lost connection and one per recovery: no flood. */
	BUS_T_EXPECT_LINES(&ra, "lost connection", 2);
	BUS_T_EXPECT_LINES(&ra, "reconnected to redis", 2);
	BUS_T_EXPECT_LINES(&rb, "reconnected to redis", 2);
	cr_expect_leq(ra.lines, 6, "%s", ra.log);
	cr_expect_leq(rb.lines, 6, "%s", rb.log);
	bus_close(a);
	bus_close(b);
}

Test(bus, open_validation, .timeout = 60)
{
	static const char *const bad_urls[] = {
		"",
		"http://127.0.0.1:6379",
		"REDIS://127.0.0.1",
		"redis://",
		"redis://:6379",
		"redis://host:0",
		"redis://host:65536",
		"redis://host:12a",
		"redis://host:",
		"redis://host:-1",
		"redis://host/abc",
		"redis://host/1/2",
		"redis://host/-1",
		"redis://host/01",
		"redis://host?db=1",
		"redis://user@host",
		"redis://:@host",
		"redis://u:@host",
		"redis://ho st",
		"redis://[::1",
		"redis://[]:1",
		"redis://[::1]x",
		"redis://:p%zz@host",
		"redis://:p%00@host",
		"redis://:p w@host",
		"redis://host:6379 ",
	};
	static const char *const good_urls[] = {
		"redis://127.0.0.1:1",
		"redis://localhost:1",
		"redis://redis_1:1",
		"redis://:pw@127.0.0.1:1/3",
		"redis://u:p%40ss@127.0.0.1:1/",
		"redis://u:p/ss@127.0.0.1:1/2",
		"redis://[::1]:1/0",
	};
	static const char *const bad_hosts[] = {
		"", "a b", "a.b", "a:b", "h\xc3\xa9",
		"12345678901234567890123456789012345678901234567890123456789012345",
	};
	struct bus_t_rec rec;
	struct bus_options o = { 0 };
	bus_t *b = NULL;

	bus_t_recs_reset();
	bus_t_rec_init(&rec, "A");
	o.host_id = "A";
	cr_expect_eq(bus_open(NULL, &o), STOCK_EINVAL);
	cr_expect_eq(bus_open(&b, NULL), STOCK_EINVAL);
	o.url = NULL;
	cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL);
	for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
		o.url = bad_urls[i];
		b = (bus_t *)&o;
		cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL, "url %s", bad_urls[i]);
		cr_expect_null(b, "url %s", bad_urls[i]);
	}
	o.url = "redis://127.0.0.1:1";
	o.host_id = NULL;
	cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL);
	for (size_t i = 0; i < sizeof bad_hosts / sizeof bad_hosts[0]; i++) {
		o.host_id = bad_hosts[i];
		cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL, "host %s", bad_hosts[i]);
	}
	o.host_id = "A";
	o.one_channel = "";
	cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL);
	o.one_channel = "has space";
	cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL);
	o.one_channel = NULL;
	o.many_channel = "tab\there";
	cr_expect_eq(bus_open(&b, &o), STOCK_EINVAL);
	o.many_channel = NULL;

	/* Accepted forms: open (nothing listens on port 1) and close at once. */
	o.receive = bus_t_receive;
	o.receive_arg = &rec;
	o.host_id = "1234567890123456789012345678901234567890123456789012345678901234";
	for (size_t i = 0; i < sizeof good_urls / sizeof good_urls[0]; i++) {
		o.url = good_urls[i];
		b = NULL;
		cr_expect_eq(bus_open(&b, &o), 0, "url %s", good_urls[i]);
		if (b != NULL) {
			cr_expect_not(bus_t_connected(b));
			bus_close(b);
		}
	}

	/* bus_publish checks its arguments. */
	o.url = "redis://127.0.0.1:1";
	o.host_id = "A_b-1";
	cr_assert_eq(bus_open(&b, &o), 0);
	cr_expect_eq(bus_publish(NULL, "K", 1, 1), STOCK_EINVAL);
	cr_expect_eq(bus_publish(b, NULL, 1, 1), STOCK_EINVAL);
	cr_expect_eq(bus_publish(b, "", 1, 1), STOCK_EINVAL);
	cr_expect_eq(bus_publish(b, "a b", 1, 1), STOCK_EINVAL);
	cr_expect_eq(bus_publish(b,
	    "12345678901234567890123456789012345678901234567890123456789012345", 1, 1),
	    STOCK_EINVAL);
	cr_expect_eq(bus_publish(b, "K", STOCK_COUNT_MAX + 1, 1), STOCK_EINVAL);
	cr_expect_eq(bus_publish(b, "K", 1, (uint64_t)INT64_MAX + 1), STOCK_EINVAL);
	cr_expect_eq(bus_publish(b, "K", STOCK_COUNT_MAX, (uint64_t)INT64_MAX), 0);
	cr_expect_eq(bus_flush(b, 0), STOCK_ETIMEDOUT);
	bus_close(b); /* Redis down: the queued event is dropped, close is quick */
	bus_close(NULL);
	bus_t_recs_reset();
}

Test(bus, open_while_redis_down, .fini = bus_t_fini, .timeout = 60)
{
	struct bus_t_rec ra, rb;
	char url[64];
	bus_t *a, *b;
	int port;

	BUS_T_NEED_REDIS("open_while_redis_down");
	port = bus_t_free_port();
	bus_t_url(url, sizeof url, port);
	bus_t_rec_init(&ra, "A");
	bus_t_rec_init(&rb, "B");
	a = bus_t_open(url, "A", &ra, true);
	b = bus_t_open(url, "B", &rb, true);
	cr_expect_not(bus_t_connected(a));
	cr_expect_not(bus_t_connected(b));
	/* Both of A's threads tried (a line may be dropped: BUS_T_EXPECT_LINES). */
	(void)BUS_T_UNTIL(bus_t_log_count(&ra, "cannot connect") >= 2, 3000);

	cr_assert_eq(bus_t_start(port, NULL, NULL), port);
	cr_assert(BUS_T_UNTIL(bus_t_connected(a) && bus_t_connected(b), 10000));
	cr_expect_eq(bus_t_stats(a).reconnects, 0); /* a first connection is no reconnect */
	cr_assert_eq(bus_publish(a, "OneStock:Db", 5, 1), 0);
	cr_assert(BUS_T_UNTIL(bus_t_got(&rb, "A", "OneStock:Db", 1, NULL), 5000));
	BUS_T_EXPECT_LINES(&ra, "cannot connect", 2);
	BUS_T_EXPECT_LINES(&ra, "connected to redis", 2);
	bus_close(a);
	bus_close(b);
}
