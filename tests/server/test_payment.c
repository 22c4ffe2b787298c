/*
 * The payment client (demo-server/checkout/payment.c) against a real
 * payment service: tests/services/payment (Go, standard library only),
 * which each test starts for itself on a free port and kills at its end (or
 * when the test process dies: PDEATHSIG). Its binary is $PAYMENT_BIN, or
 * built once per test process with `go build` ($GO, go on PATH, or
 * /usr/local/go/bin/go).
 *
 * Success and idempotent repeats, decline (breaker stays closed), failures
 * opening the breaker and the half-open probe closing it, a taken probe,
 * a hanging service (the deadline), a dying service, URL and argument
 * checking, 8 concurrent threads, JSON escaping, and the metrics page
 * through promtool when it is installed.
 *
 * Without the service (no $PAYMENT_BIN and no Go) every test that needs it
 * reports itself skipped; under CI=true it fails instead.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkout/payment.h"

/* ====================================================================== */
/* Helpers                                                                 */
/* ====================================================================== */

static uint64_t
pay_t_now_ms(void)
{
	return stock_now_ns() / 1000000;
}

static void
pay_t_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static struct {
	pid_t pid;
	int port;
	char bin[512];
	char url[128];
	char built[300]; /* the temp dir of a binary this process built, or "" */
} pay_t_srv;

/* Run @argv to completion (stdout to stderr); true when it exits 0. */
static bool
pay_t_run(char *const argv[])
{
	pid_t pid = fork();
	int st;

	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		dup2(2, 1);
		setenv("GOTOOLCHAIN", "local", 1);
		execv(argv[0], argv);
		_exit(127);
	}
	return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* The service binary: $PAYMENT_BIN, or go build of tests/services/payment. */
static bool
pay_t_find_bin(void)
{
	const char *env = getenv("PAYMENT_BIN"), *go = getenv("GO"), *base = getenv("TMPDIR");
	char gobuf[512] = "", dir[300];

	if (pay_t_srv.bin[0] != '\0')
		return true;
	if (env != NULL && env[0] != '\0') {
		if (access(env, X_OK) != 0)
			return false;
		snprintf(pay_t_srv.bin, sizeof pay_t_srv.bin, "%s", env);
		return true;
	}
	if (go == NULL || access(go, X_OK) != 0) {
		const char *path = getenv("PATH");
		char buf[4096];

		snprintf(buf, sizeof buf, "%s:/usr/local/go/bin", path != NULL ? path : "/usr/bin:/bin");
		for (char *save = NULL, *d = strtok_r(buf, ":", &save); d != NULL;
		     d = strtok_r(NULL, ":", &save)) {
			snprintf(gobuf, sizeof gobuf, "%s/go", d);
			if (access(gobuf, X_OK) == 0)
				break;
			gobuf[0] = '\0';
		}
		if (gobuf[0] == '\0' || access("tests/services/payment/main.go", R_OK) != 0)
			return false;
		go = gobuf;
	}
	snprintf(dir, sizeof dir, "%s/test_payment.XXXXXX", base != NULL ? base : "/tmp");
	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(pay_t_srv.built, sizeof pay_t_srv.built, "%s", dir);
	snprintf(pay_t_srv.bin, sizeof pay_t_srv.bin, "%s/payment", dir);
	{
		char *argv[] = { (char *)go, "build", "-C", "tests/services/payment", "-o", pay_t_srv.bin,
			".", NULL };

		cr_assert(pay_t_run(argv), "go build of tests/services/payment failed");
	}
	return true;
}

/* Skip (or, under CI=true, fail) the calling test without the service. */
#define PAY_T_NEED_SERVICE(name)                                                          \
	do {                                                                              \
		if (!pay_t_find_bin()) {                                                  \
			const char *ci_ = getenv("CI");                                   \
			if (ci_ != NULL && strcmp(ci_, "true") == 0)                      \
				cr_assert_fail("no payment service: no $PAYMENT_BIN, no go (CI=true)"); \
			fprintf(stderr, "SKIPPED (no $PAYMENT_BIN, no go): payment/%s\n", name); \
			cr_skip_test("no payment service");                               \
			return;                                                           \
		}                                                                         \
	} while (0)

/* Start the service on a free port; its "port N" line tells which. */
static void
pay_t_start(void)
{
	char line[64];
	size_t got = 0;
	int fds[2];
	pid_t parent = getpid(), pid;

	cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(fds[1], 1);
		execl(pay_t_srv.bin, pay_t_srv.bin, "-addr", "127.0.0.1:0", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	pay_t_srv.pid = pid;
	for (uint64_t d = pay_t_now_ms() + 10000; got < sizeof line - 1 && pay_t_now_ms() < d;) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		r = read(fds[0], line + got, sizeof line - 1 - got);
		if (r <= 0)
			break;
		got += (size_t)r;
		line[got] = '\0';
		if (strchr(line, '\n') != NULL)
			break;
	}
	close(fds[0]);
	line[got] = '\0';
	cr_assert_eq(sscanf(line, "port %d", &pay_t_srv.port), 1, "service said \"%s\"", line);
	snprintf(pay_t_srv.url, sizeof pay_t_srv.url, "http://127.0.0.1:%d/charge", pay_t_srv.port);
}

static void
pay_t_fini(void)
{
	if (pay_t_srv.pid > 0) {
		kill(pay_t_srv.pid, SIGKILL);
		waitpid(pay_t_srv.pid, NULL, 0);
		pay_t_srv.pid = 0;
	}
	if (pay_t_srv.built[0] != '\0') {
		unlink(pay_t_srv.bin);
		rmdir(pay_t_srv.built);
		pay_t_srv.built[0] = pay_t_srv.bin[0] = '\0';
	}
}

/* A plain HTTP/1.0 exchange with the service: the status, the body in @out. */
static int
pay_t_http(const char *method, const char *path, const char *body, char *out, size_t cap)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)pay_t_srv.port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 5, 0 };
	char req[512], *p;
	static char ans[65536];
	size_t got = 0;
	ssize_t r;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), status = -1;

	cr_assert_geq(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect: %s", strerror(errno));
	snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", method, path,
	    strlen(body), body);
	cr_assert_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	while (got < sizeof ans - 1 && (r = read(fd, ans + got, sizeof ans - 1 - got)) > 0)
		got += (size_t)r;
	close(fd);
	ans[got] = '\0';
	sscanf(ans, "HTTP/1.%*d %d", &status);
	p = strstr(ans, "\r\n\r\n");
	snprintf(out, cap, "%s", p != NULL ? p + 4 : "");
	return status;
}

static void
pay_t_mode(const char *mode)
{
	char out[64];

	cr_assert_eq(pay_t_http("POST", "/mode", mode, out, sizeof out), 200, "mode %s: %s", mode, out);
}

/*
 * From GET /charges: the number for @hold in section @sec ("calls",
 * "charged", "duplicates"), 0 when absent. Go's encoder writes the sections
 * as flat objects, so the section ends at its first '}'.
 */
static long
pay_t_count(const char *sec, const char *hold)
{
	static char body[65536];
	char key[160], *s, *e, *h;

	cr_assert_eq(pay_t_http("GET", "/charges", "", body, sizeof body), 200);
	snprintf(key, sizeof key, "\"%s\":{", sec);
	cr_assert_not_null(s = strstr(body, key), "no %s in %s", sec, body);
	e = strchr(s, '}');
	snprintf(key, sizeof key, "\"%s\":", hold);
	h = strstr(s, key);
	return h != NULL && h < e ? strtol(h + strlen(key), NULL, 10) : 0;
}

/* The buyer recorded for @hold, as Go re-encodes it (with its quotes), in @out. */
static void
pay_t_buyer(const char *hold, char *out, size_t cap)
{
	static char body[65536];
	char key[160], *s;
	size_t n = 0;

	cr_assert_eq(pay_t_http("GET", "/charges", "", body, sizeof body), 200);
	cr_assert_not_null(s = strstr(body, "\"buyers\":{"));
	snprintf(key, sizeof key, "\"%s\":", hold);
	cr_assert_not_null(s = strstr(s, key), "no buyer for %s in %s", hold, body);
	s += strlen(key);
	if (strncmp(s, "null", 4) == 0) {
		snprintf(out, cap, "null");
		return;
	}
	/* A JSON string: up to the first quote not escaped. */
	for (size_t i = 0; s[i] != '\0' && n < cap - 1; i++) {
		out[n++] = s[i];
		if (i > 0 && s[i] == '"')
			break;
		if (s[i] == '\\' && s[i + 1] != '\0' && n < cap - 1)
			out[n++] = s[++i];
	}
	out[n] = '\0';
}

static payment_t *
pay_t_open(unsigned timeout_ms, unsigned failures, unsigned open_ms)
{
	struct payment_options o = { .url = pay_t_srv.url, .timeout_ms = timeout_ms,
		.failures = failures, .open_ms = open_ms };
	payment_t *p = NULL;

	cr_assert_eq(payment_open(&p, &o), 0, "payment_open %s", pay_t_srv.url);
	return p;
}

static const struct payment_item pay_t_items[] = { { "NVDA", 2 }, { "AAPL", 1 } };

static int
pay_t_charge(payment_t *p, const char *hold, unsigned *ra)
{
	return payment_charge(p, hold, pay_t_items, 2, "buyer-1", ra);
}

/* The value of the metrics line starting with @prefix ("name{labels} "). */
static long
pay_t_metric(payment_t *p, const char *prefix)
{
	struct buf b = BUF_INIT;
	long v = -1;
	char *s;

	payment_metrics(p, &b);
	cr_assert(!b.failed);
	for (s = b.data; (s = strstr(s, prefix)) != NULL; s++)
		if (s == b.data || s[-1] == '\n') {
			v = strtol(s + strlen(prefix), NULL, 10);
			break;
		}
	buf_free(&b);
	return v;
}

#define PAY_T_STATE(p) pay_t_metric((p), "stock_payment_breaker_state ")

/* ====================================================================== */
/* Tests                                                                   */
/* ====================================================================== */

Test(payment, success_and_idempotent_repeat, .fini = pay_t_fini, .timeout = 60)
{
	payment_t *p;

	PAY_T_NEED_SERVICE("success_and_idempotent_repeat");
	pay_t_start();
	p = pay_t_open(2000, 5, 1000);
	cr_assert_eq(pay_t_charge(p, "hold-1", NULL), 0);
	cr_assert_eq(pay_t_count("charged", "hold-1"), 1);
	/* The retry a Confirm makes after an unknown outcome: paid once. */
	cr_assert_eq(pay_t_charge(p, "hold-1", NULL), 0);
	cr_assert_eq(pay_t_count("calls", "hold-1"), 2);
	cr_assert_eq(pay_t_count("charged", "hold-1"), 1);
	cr_assert_eq(pay_t_count("duplicates", "hold-1"), 1);
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"ok\"} "), 2);
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"failed\"} "), 0);
	cr_assert_eq(PAY_T_STATE(p), 0);
	payment_close(p);
}

Test(payment, metrics_pass_promtool, .timeout = 60)
{
	struct payment_options o = { .url = "http://127.0.0.1:1/charge" };
	struct buf b = BUF_INIT;
	payment_t *p;
	FILE *f;

	if (access("/usr/bin/promtool", X_OK) != 0) {
		fprintf(stderr, "SKIPPED (no promtool): payment/metrics_pass_promtool\n");
		cr_skip_test("no promtool");
		return;
	}
	cr_assert_eq(payment_open(&p, &o), 0);
	cr_assert_eq(payment_charge(p, "h", pay_t_items, 1, NULL, NULL), STOCK_ESYS);
	payment_metrics(p, &b);
	cr_assert_not_null(f = popen("/usr/bin/promtool check metrics >&2", "w"));
	fwrite(b.data, 1, b.len, f);
	cr_assert_eq(pclose(f), 0, "promtool check metrics refused:\n%s", b.data);
	cr_assert_not_null(strstr(b.data, "# TYPE stock_payment_calls_total counter\n"));
	cr_assert_not_null(strstr(b.data, "# TYPE stock_payment_breaker_state gauge\n"));
	cr_assert_not_null(strstr(b.data, "stock_payment_calls_total{result=\"rejected\"} 0\n"));
	buf_free(&b);
	payment_close(p);
}

Test(payment, decline_keeps_breaker_closed, .fini = pay_t_fini, .timeout = 60)
{
	payment_t *p;

	PAY_T_NEED_SERVICE("decline_keeps_breaker_closed");
	pay_t_start();
	p = pay_t_open(2000, 3, 1000);
	pay_t_mode("decline");
	for (int i = 0; i < 10; i++)
		cr_assert_eq(pay_t_charge(p, "hold-d", NULL), PAYMENT_EDECLINED, "call %d", i);
	cr_assert_eq(PAY_T_STATE(p), 0);
	cr_assert_eq(pay_t_count("calls", "hold-d"), 10, "every decline reached the service");
	cr_assert_eq(pay_t_count("charged", "hold-d"), 0);
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"declined\"} "), 10);
	payment_close(p);
}

Test(payment, failures_open_then_probe_closes, .fini = pay_t_fini, .timeout = 60)
{
	unsigned ra = 0;
	uint64_t t0, dt;
	payment_t *p;

	PAY_T_NEED_SERVICE("failures_open_then_probe_closes");
	pay_t_start();
	p = pay_t_open(2000, 3, 1000);
	pay_t_mode("fail");
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pay_t_charge(p, "hold-f", NULL), STOCK_ESYS, "call %d", i);
	cr_assert_eq(PAY_T_STATE(p), 1);
	t0 = pay_t_now_ms();
	cr_assert_eq(pay_t_charge(p, "hold-f", &ra), STOCK_EOPEN);
	dt = pay_t_now_ms() - t0;
	cr_assert_lt(dt, 50, "EOPEN took %llu ms", (unsigned long long)dt);
	cr_assert_geq(ra, 1);
	cr_assert_leq(ra, 1, "open 1 s: Retry-After 1, got %u", ra);
	cr_assert_eq(pay_t_count("calls", "hold-f"), 3, "the rejected call never reached the service");
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"rejected\"} "), 1);
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"failed\"} "), 3);

	pay_t_mode("succeed");
	pay_t_sleep_ms(1100);
	cr_assert_eq(pay_t_charge(p, "hold-f", NULL), 0, "the half-open probe");
	cr_assert_eq(PAY_T_STATE(p), 0, "the probe closed the breaker");
	cr_assert_eq(pay_t_charge(p, "hold-g", NULL), 0);
	cr_assert_eq(pay_t_count("charged", "hold-f"), 1);
	payment_close(p);
}

struct pay_t_call {
	payment_t *p;
	const char *hold;
	int rc;
	uint64_t ms;
};

static void *
pay_t_call_main(void *arg)
{
	struct pay_t_call *c = arg;
	uint64_t t0 = pay_t_now_ms();

	c->rc = pay_t_charge(c->p, c->hold, NULL);
	c->ms = pay_t_now_ms() - t0;
	return NULL;
}

Test(payment, probe_taken_rejects_at_once, .fini = pay_t_fini, .timeout = 60)
{
	struct pay_t_call probe = { .hold = "hold-p" };
	pthread_t th;
	unsigned ra = 0;
	uint64_t t0;
	payment_t *p;

	PAY_T_NEED_SERVICE("probe_taken_rejects_at_once");
	pay_t_start();
	probe.p = p = pay_t_open(1500, 1, 200);
	pay_t_mode("fail");
	cr_assert_eq(pay_t_charge(p, "hold-p", NULL), STOCK_ESYS);
	cr_assert_eq(PAY_T_STATE(p), 1);
	pay_t_mode("hang");
	pay_t_sleep_ms(300);
	cr_assert_eq(pthread_create(&th, NULL, pay_t_call_main, &probe), 0);
	cr_assert(({
		uint64_t d_ = pay_t_now_ms() + 5000;
		while (pay_t_count("calls", "hold-p") < 2 && pay_t_now_ms() < d_)
			pay_t_sleep_ms(10);
		pay_t_count("calls", "hold-p") == 2;
	}), "the probe reached the service");
	cr_assert_eq(PAY_T_STATE(p), 2);
	t0 = pay_t_now_ms();
	cr_assert_eq(pay_t_charge(p, "hold-q", &ra), STOCK_EOPEN, "the one probe is out");
	cr_assert_lt(pay_t_now_ms() - t0, 50);
	cr_assert_geq(ra, 1);
	pthread_join(th, NULL);
	cr_assert_eq(probe.rc, STOCK_ESYS, "the hanging probe times out");
	cr_assert_eq(PAY_T_STATE(p), 1, "a failed probe re-opens");
	payment_close(p);
}

Test(payment, hang_ends_at_the_deadline, .fini = pay_t_fini, .timeout = 60)
{
	uint64_t t0, dt;
	payment_t *p;

	PAY_T_NEED_SERVICE("hang_ends_at_the_deadline");
	pay_t_start();
	p = pay_t_open(300, 5, 1000);
	pay_t_mode("hang");
	t0 = pay_t_now_ms();
	cr_assert_eq(pay_t_charge(p, "hold-h", NULL), STOCK_ESYS);
	dt = pay_t_now_ms() - t0;
	cr_assert_geq(dt, 295, "returned after %llu ms, before the deadline", (unsigned long long)dt);
	cr_assert_lt(dt, 300 + 400, "returned after %llu ms", (unsigned long long)dt);
	cr_assert_eq(pay_t_count("calls", "hold-h"), 1);
	payment_close(p);
}

Test(payment, service_dies, .fini = pay_t_fini, .timeout = 60)
{
	uint64_t t0;
	payment_t *p;
	int st;

	PAY_T_NEED_SERVICE("service_dies");
	pay_t_start();
	p = pay_t_open(2000, 5, 1000);
	pay_t_mode("die");
	t0 = pay_t_now_ms();
	cr_assert_eq(pay_t_charge(p, "hold-x", NULL), STOCK_ESYS);
	cr_assert_lt(pay_t_now_ms() - t0, 1500, "the closed connection is seen at once");
	cr_assert_eq(waitpid(pay_t_srv.pid, &st, 0), pay_t_srv.pid);
	pay_t_srv.pid = 0;
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3);
	/* Nobody listens now: connection refused, at once. */
	t0 = pay_t_now_ms();
	cr_assert_eq(pay_t_charge(p, "hold-x", NULL), STOCK_ESYS);
	cr_assert_lt(pay_t_now_ms() - t0, 500);
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"failed\"} "), 2);
	payment_close(p);
}

Test(payment, bad_urls_and_arguments, .timeout = 60)
{
	static const char *const bad[] = { "https://127.0.0.1:80/x", "HTTP://127.0.0.1/x", "http://",
		"http:///x", "http://:80/x", "ftp://127.0.0.1/", "http://127.0.0.1:0/x",
		"http://127.0.0.1:65536/x", "http://127.0.0.1:/x", "http://127.0.0.1:80x/x",
		"http://127.0.0.1:123456/x", "http://user@127.0.0.1/x", "http://[::1]:80/x",
		"http://1.2.3/x", "http://256.1.1.1/x", "http://1.2.3.4.5/x", "http://host.123/x",
		"http://-host/x", "http://host-/x", "http://ho_st/x", "http://a..b/x", "http://host./x",
		"http://127.0.0.1/a b", "http://127.0.0.1/x#frag", "http://127.0.0.1/%zz",
		"http://127.0.0.1/%4", "http://127.0.0.1?x=1", "http://127.0.0.1/\x01",
		" http://127.0.0.1/x", "http://127.0.0.1/x\r\nX-Injected: 1" };
	static const char *const good[] = { "http://127.0.0.1:1/charge", "http://127.0.0.1",
		"http://localhost:8080/v1/charge?x=1&y=%2F", "http://127.0.0.1:65535/" };
	struct payment_options o = { 0 };
	struct payment_item it[] = { { "A", 1 } }, zero[] = { { "A", 0 } }, nosku[] = { { NULL, 1 } };
	payment_t *p = (payment_t *)1;

	cr_assert_eq(payment_open(&p, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_open(NULL, &o), STOCK_EINVAL);
	cr_assert_eq(payment_open(&p, &o), STOCK_EINVAL, "no url");
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		o.url = bad[i];
		cr_assert_eq(payment_open(&p, &o), STOCK_EINVAL, "accepted \"%s\"", bad[i]);
		cr_assert_null(p);
	}
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		o.url = good[i];
		cr_assert_eq(payment_open(&p, &o), 0, "refused \"%s\"", good[i]);
		payment_close(p);
	}
	o.url = good[0];
	o.failures = 65536;
	cr_assert_eq(payment_open(&p, &o), STOCK_EINVAL);
	o.failures = 1;
	cr_assert_eq(payment_open(&p, &o), 0);

	/* Bad arguments never reach the network nor the breaker (failures = 1). */
	cr_assert_eq(payment_charge(NULL, "h", it, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, NULL, it, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "", it, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "a b", it, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h\r\nX: y", it, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", NULL, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", it, 0, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", zero, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", nosku, 1, NULL, NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", it, 1, "\xff", NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", it, 1, "\xc0\xaf", NULL), STOCK_EINVAL, "overlong");
	cr_assert_eq(payment_charge(p, "h", it, 1, "\xed\xa0\x80", NULL), STOCK_EINVAL, "surrogate");
	cr_assert_eq(payment_charge(p, "h", it, 1, "\xf4\x90\x80\x80", NULL), STOCK_EINVAL);
	cr_assert_eq(payment_charge(p, "h", it, 1, "\xe2\x82", NULL), STOCK_EINVAL, "truncated");
	cr_assert_eq(PAY_T_STATE(p), 0);
	cr_assert_eq(pay_t_metric(p, "stock_payment_calls_total{result=\"failed\"} "), 0);
	/* Port 1: refused, one failure, open. */
	cr_assert_eq(payment_charge(p, "h", it, 1, NULL, NULL), STOCK_ESYS);
	cr_assert_eq(PAY_T_STATE(p), 1);
	payment_close(p);
	payment_close(NULL);
}

#define PAY_T_THREADS 8
#define PAY_T_PER_THREAD 25

static payment_t *pay_t_shared;

static void *
pay_t_worker(void *arg)
{
	long t = (long)arg, bad = 0;
	char hold[48];

	for (int i = 0; i < PAY_T_PER_THREAD; i++) {
		snprintf(hold, sizeof hold, "c-%ld-%d", t, i);
		bad += pay_t_charge(pay_t_shared, hold, NULL) != 0;
		bad += pay_t_charge(pay_t_shared, "c-same", NULL) != 0;
	}
	return (void *)bad;
}

Test(payment, concurrent_charges, .fini = pay_t_fini, .timeout = 60)
{
	pthread_t th[PAY_T_THREADS];
	char hold[48];

	PAY_T_NEED_SERVICE("concurrent_charges");
	pay_t_start();
	pay_t_shared = pay_t_open(5000, 5, 1000);
	for (long t = 0; t < PAY_T_THREADS; t++)
		cr_assert_eq(pthread_create(&th[t], NULL, pay_t_worker, (void *)t), 0);
	for (long t = 0; t < PAY_T_THREADS; t++) {
		void *bad;

		pthread_join(th[t], &bad);
		cr_assert_eq((long)bad, 0, "thread %ld: %ld charges failed", t, (long)bad);
	}
	for (long t = 0; t < PAY_T_THREADS; t++)
		for (int i = 0; i < PAY_T_PER_THREAD; i++) {
			snprintf(hold, sizeof hold, "c-%ld-%d", t, i);
			cr_assert_eq(pay_t_count("charged", hold), 1, "%s", hold);
		}
	/* One hold id charged by every thread at once: paid once. */
	cr_assert_eq(pay_t_count("calls", "c-same"), PAY_T_THREADS * PAY_T_PER_THREAD);
	cr_assert_eq(pay_t_count("charged", "c-same"), 1);
	cr_assert_eq(pay_t_count("duplicates", "c-same"), PAY_T_THREADS * PAY_T_PER_THREAD - 1);
	cr_assert_eq(pay_t_metric(pay_t_shared, "stock_payment_calls_total{result=\"ok\"} "),
	    2 * PAY_T_THREADS * PAY_T_PER_THREAD);
	payment_close(pay_t_shared);
}

Test(payment, json_escaping, .fini = pay_t_fini, .timeout = 60)
{
	struct payment_item items[] = { { "SKU \"quoted\" \\ back", 1 }, { "caf\xc3\xa9", 3 } };
	char got[256];
	payment_t *p;

	PAY_T_NEED_SERVICE("json_escaping");
	pay_t_start();
	p = pay_t_open(2000, 5, 1000);
	/* The service answers 400 to a body it cannot parse as the strict object. */
	cr_assert_eq(payment_charge(p, "hold-j", items, 2, "a\"b\\c\n\t\x01 \xc3\xa9\xf0\x9f\x98\x80 /",
	    NULL), 0);
	pay_t_buyer("hold-j", got, sizeof got);
	/* Go re-encodes the decoded string: the same characters came through. */
	cr_assert_str_eq(got, "\"a\\\"b\\\\c\\n\\t\\u0001 \xc3\xa9\xf0\x9f\x98\x80 /\"");
	cr_assert_eq(payment_charge(p, "hold-\"j\\", items, 1, NULL, NULL), 0, "quote in a hold id");
	cr_assert_eq(pay_t_count("charged", "hold-\\\"j\\\\"), 1);
	cr_assert_eq(payment_charge(p, "hold-n", items, 1, NULL, NULL), 0);
	pay_t_buyer("hold-n", got, sizeof got);
	cr_assert_str_eq(got, "null");
	payment_close(p);
}

/* ---- exact parsing of the answer: a canned server on a raw socket ---------- */

static const struct {
	const char *answer;
	int rc;
} pay_t_canned[] = {
	{ "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0 },
	{ "HTTP/1.0 201 Created\r\n\r\n", 0 },
	{ "HTTP/1.1 204 \r\n\r\n", 0 },
	{ "HTTP/1.1 404 Not Found\r\nX-A: b\r\n\r\n", PAYMENT_EDECLINED },
	{ "HTTP/1.1 429 Too Many Requests\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 409 Conflict\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 100 Continue\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 503 Unavailable\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 200\r\n\r\n", STOCK_ESYS },
	{ "HTTP/2 200 OK\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 20 OK\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 2000 OK\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 600 Odd\r\n\r\n", STOCK_ESYS },
	{ "http/1.1 200 OK\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 200 OK\nX: y\n\n", STOCK_ESYS },
	{ "HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", STOCK_ESYS },
	{ "HTTP/1.1 200 OK\r\nX: y", STOCK_ESYS },
	{ "", STOCK_ESYS },
	{ NULL, STOCK_ESYS }, /* a header section longer than PAYMENT_ANSWER_MAX */
};
#define PAY_T_CANNED (sizeof pay_t_canned / sizeof pay_t_canned[0])

static struct {
	int lfd;
	char first[8192]; /* the first request, as received */
} pay_t_raw;

static void *
pay_t_raw_main(void *arg)
{
	(void)arg;
	for (size_t i = 0; i < PAY_T_CANNED; i++) {
		char req[8192], *eoh;
		size_t got = 0, need = 0;
		int fd = accept(pay_t_raw.lfd, NULL, NULL);
		ssize_t r;

		if (fd < 0)
			return NULL;
		while (got < sizeof req - 1 && (r = read(fd, req + got, sizeof req - 1 - got)) > 0) {
			got += (size_t)r;
			req[got] = '\0';
			if ((eoh = strstr(req, "\r\n\r\n")) != NULL) {
				char *cl = strstr(req, "Content-Length: ");

				need = (size_t)(eoh + 4 - req) + (cl != NULL ? strtoul(cl + 16, NULL, 10) : 0);
				if (got >= need)
					break;
			}
		}
		req[got] = '\0';
		if (i == 0)
			snprintf(pay_t_raw.first, sizeof pay_t_raw.first, "%s", req);
		if (pay_t_canned[i].answer != NULL) {
			(void)!write(fd, pay_t_canned[i].answer, strlen(pay_t_canned[i].answer));
		} else {
			char big[PAYMENT_ANSWER_MAX + 512];

			memset(big, 'a', sizeof big);
			memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
			(void)!write(fd, big, sizeof big);
		}
		close(fd);
	}
	return NULL;
}

Test(payment, exact_answer_parsing_and_request, .timeout = 60)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof sa;
	struct payment_options o = { .failures = 65535, .timeout_ms = 2000 };
	char url[64], host[64], hdr[64];
	pthread_t th;
	payment_t *p;

	pay_t_raw.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(pay_t_raw.lfd, 0);
	cr_assert_eq(bind(pay_t_raw.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	cr_assert_eq(getsockname(pay_t_raw.lfd, (struct sockaddr *)&sa, &len), 0);
	cr_assert_eq(listen(pay_t_raw.lfd, 16), 0);
	snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/charge?x=1", ntohs(sa.sin_port));
	o.url = url;
	cr_assert_eq(payment_open(&p, &o), 0);
	cr_assert_eq(pthread_create(&th, NULL, pay_t_raw_main, NULL), 0);
	for (size_t i = 0; i < PAY_T_CANNED; i++)
		cr_assert_eq(payment_charge(p, "h-1", pay_t_items, 1, NULL, NULL), pay_t_canned[i].rc,
		    "answer %zu \"%s\"", i, pay_t_canned[i].answer ? pay_t_canned[i].answer : "(long)");
	pthread_join(th, NULL);
	close(pay_t_raw.lfd);
	snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", ntohs(sa.sin_port));
	snprintf(hdr, sizeof hdr, "\r\nIdempotency-Key: h-1\r\n");
	cr_assert(strncmp(pay_t_raw.first, "POST /v1/charge?x=1 HTTP/1.1\r\n", 30) == 0, "%s",
	    pay_t_raw.first);
	cr_assert_not_null(strstr(pay_t_raw.first, host), "%s", pay_t_raw.first);
	cr_assert_not_null(strstr(pay_t_raw.first, hdr), "%s", pay_t_raw.first);
	cr_assert_not_null(strstr(pay_t_raw.first,
	    "\r\n\r\n{\"hold_id\":\"h-1\",\"items\":[{\"sku\":\"NVDA\",\"quantity\":2}],\"buyer\":null}"),
	    "%s", pay_t_raw.first);
	cr_assert_eq(PAY_T_STATE(p), 0, "failures = 65535: still closed");
	payment_close(p);
}
