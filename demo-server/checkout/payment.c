/*
 * The payment client (checkout/payment.h, docs/internals/payment.md).
 *
 * Plain non-blocking sockets and poll(): every wait (connect, send, answer)
 * is bounded by one absolute deadline taken when the call is admitted, so a
 * charge never outlives timeout_ms, whatever the service does. The request
 * is built and checked before the breaker is asked, so a bad argument never
 * takes a half-open probe. The answer is read up to the end of its header
 * section (at most PAYMENT_ANSWER_MAX bytes) and its status line and header
 * lines are parsed exactly (RFC 9112); the body is not needed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "checkout/payment.h"
#include "common/util.h"
#include "log.h"

#define PAYMENT_ADDRS_MAX 4
#define PAYMENT_HOST_MAX 253
#define PAYMENT_PATH_MAX 1024

enum { PAY_OK, PAY_DECLINED, PAY_FAILED, PAY_REJECTED, PAY_SLOTS };
static const char *const result_names[PAY_SLOTS] = { "ok", "declined", "failed", "rejected" };

struct payment {
	struct stock_breaker br;
	struct stock_stat calls[PAY_SLOTS];
	uint64_t opened_ns; /* stock_now_ns() of the last transition to Open (atomic) */
	uint64_t open_ns;
	uint64_t timeout_ns;
	struct sockaddr_in addr[PAYMENT_ADDRS_MAX];
	size_t naddr;
	char host[PAYMENT_HOST_MAX + 8]; /* the Host header: name[:port] */
	char path[PAYMENT_PATH_MAX + 1];
};

/* ---- the URL ---------------------------------------------------------------- */

static bool
is_alnum(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* A DNS name: dot-separated labels of 1..63 letters, digits and inner hyphens. */
static bool
valid_name(const char *h, size_t n)
{
	size_t start = 0;

	for (size_t i = 0; i <= n; i++) {
		if (i < n && h[i] != '.') {
			if (!is_alnum(h[i]) && h[i] != '-')
				return false;
			continue;
		}
		if (i == start || i - start > 63 || h[start] == '-' || h[i - 1] == '-')
			return false;
		start = i + 1;
	}
	return true;
}

/* RFC 3986 path and query characters: unreserved, sub-delims, ":@/?", %HH. */
static bool
valid_path(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '%') {
			if (i + 2 >= n || util_hexval(s[i + 1]) < 0 || util_hexval(s[i + 2]) < 0)
				return false;
			i += 2;
		} else if (!is_alnum(c) && strchr("-._~!$&'()*+,;=:@/?", c) == NULL) {
			return false;
		}
	}
	return true;
}

/* Parse @url into @p (host, port, path) and resolve it. */
static int
parse_url(struct payment *p, const char *url)
{
	static const char scheme[] = "http://";
	const char *h, *e;
	size_t hn;
	unsigned long port = 80;
	bool has_port = false, numeric = true;
	char host[PAYMENT_HOST_MAX + 1];

	if (strncmp(url, scheme, sizeof scheme - 1) != 0)
		return STOCK_EINVAL;
	h = url + sizeof scheme - 1;
	for (e = h; *e != '\0' && *e != ':' && *e != '/'; e++)
		;
	hn = (size_t)(e - h);
	if (hn == 0 || hn > PAYMENT_HOST_MAX)
		return STOCK_EINVAL;
	memcpy(host, h, hn);
	host[hn] = '\0';
	if (*e == ':') {
		const char *d = ++e;

		port = 0;
		while (*e >= '0' && *e <= '9' && e - d < 5)
			port = port * 10 + (unsigned long)(*e++ - '0');
		if (e == d || port == 0 || port > 65535 || (*e != '\0' && *e != '/'))
			return STOCK_EINVAL;
		has_port = true;
	}
	if (*e == '\0') {
		strcpy(p->path, "/");
	} else {
		size_t pn = strlen(e);

		if (pn > PAYMENT_PATH_MAX || !valid_path(e, pn))
			return STOCK_EINVAL;
		memcpy(p->path, e, pn + 1);
	}

	/* A host whose last label is numeric must be a dotted IPv4 address. */
	for (size_t i = hn; i > 0 && host[i - 1] != '.'; i--)
		numeric = numeric && host[i - 1] >= '0' && host[i - 1] <= '9';
	if (!valid_name(host, hn))
		return STOCK_EINVAL;
	if (has_port)
		snprintf(p->host, sizeof p->host, "%s:%lu", host, port);
	else
		snprintf(p->host, sizeof p->host, "%s", host);
	if (numeric) {
		struct sockaddr_in *sa = &p->addr[0];

		if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
			return STOCK_EINVAL;
		sa->sin_family = AF_INET;
		sa->sin_port = htons((uint16_t)port);
		p->naddr = 1;
		return 0;
	}

	struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *res, *ai;
	int rc = getaddrinfo(host, NULL, &hints, &res);

	if (rc != 0) {
		log_error("payment", "%s does not resolve: %s", host, gai_strerror(rc));
		return STOCK_ESYS;
	}
	for (ai = res; ai != NULL && p->naddr < PAYMENT_ADDRS_MAX; ai = ai->ai_next) {
		if (ai->ai_family != AF_INET || ai->ai_addrlen != sizeof(struct sockaddr_in))
			continue;
		memcpy(&p->addr[p->naddr], ai->ai_addr, sizeof(struct sockaddr_in));
		p->addr[p->naddr++].sin_port = htons((uint16_t)port);
	}
	freeaddrinfo(res);
	if (p->naddr == 0) {
		log_error("payment", "%s has no IPv4 address", host);
		return STOCK_ESYS;
	}
	return 0;
}

/* ---- open / close ----------------------------------------------------------- */

static void
on_change(void *arg, enum stock_breaker_state from, enum stock_breaker_state to)
{
	struct payment *p = arg;

	if (to == STOCK_BREAKER_OPEN)
		ck_pr_store_64(&p->opened_ns, stock_now_ns());
	log_warn("payment", "breaker %s -> %s", stock_breaker_state_name(from),
	    stock_breaker_state_name(to));
}

int
payment_open(payment_t **out, const struct payment_options *opt)
{
	struct stock_breaker_config cfg = STOCK_BREAKER_CONFIG_DEFAULT;
	struct payment *p;
	int rc;

	if (out != NULL)
		*out = NULL;
	if (out == NULL || opt == NULL || opt->url == NULL || opt->failures > STOCK_BREAKER_COUNT_MAX)
		return STOCK_EINVAL;
	if ((p = util_cache_zalloc(sizeof *p)) == NULL)
		return STOCK_ENOMEM;
	if ((rc = parse_url(p, opt->url)) != 0) {
		free(p);
		return rc;
	}
	p->timeout_ns = (uint64_t)(opt->timeout_ms != 0 ? opt->timeout_ms : 2000) * 1000000ULL;
	p->open_ns = (uint64_t)(opt->open_ms != 0 ? opt->open_ms : 1000) * 1000000ULL;
	cfg.failure_threshold = opt->failures != 0 ? opt->failures : 5;
	cfg.failure_pct = 0;
	cfg.half_open_probes = 1;
	cfg.backoff_mult = 1;
	cfg.open_ns = p->open_ns;
	cfg.max_open_ns = 0;
	cfg.on_change = on_change;
	cfg.on_change_arg = p;
	if ((rc = stock_breaker_init(&p->br, &cfg)) != 0) {
		free(p);
		return rc;
	}
	*out = p;
	return 0;
}

void
payment_close(payment_t *p)
{
	if (p == NULL)
		return;
	stock_breaker_destroy(&p->br);
	free(p);
}

/* ---- the request ------------------------------------------------------------ */

/* Append @s as a JSON string; false when it is not valid UTF-8 (RFC 3629). */
static bool
json_string(struct buf *b, const char *s)
{
	const unsigned char *u = (const unsigned char *)s;

	buf_append(b, "\"", 1);
	while (*u != '\0') {
		unsigned char c = *u;
		size_t k = 0;

		if (c < 0x80) {
			static const char hex[] = "0123456789abcdef";
			char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

			if (c == '"' || c == '\\')
				buf_append(b, (char[]){ '\\', (char)c }, 2);
			else if (c < 0x20 || c == 0x7f)
				buf_append(b, esc, sizeof esc);
			else
				buf_append(b, u, 1);
			u++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			k = 1;
		else if (c >= 0xe0 && c <= 0xef)
			k = 2;
		else if (c >= 0xf0 && c <= 0xf4)
			k = 3;
		else
			return false;
		for (size_t i = 1; i <= k; i++)
			if ((u[i] & 0xc0) != 0x80)
				return false;
		if ((c == 0xe0 && u[1] < 0xa0) || (c == 0xed && u[1] > 0x9f) ||
		    (c == 0xf0 && u[1] < 0x90) || (c == 0xf4 && u[1] > 0x8f))
			return false; /* overlong, surrogate, or above U+10FFFF */
		buf_append(b, u, k + 1);
		u += k + 1;
	}
	buf_append(b, "\"", 1);
	return true;
}

static bool
valid_hold(const char *h)
{
	size_t n = strlen(h);

	if (n == 0 || n > PAYMENT_HOLD_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] >= 0x7f)
			return false;
	return true;
}

/* The whole request into @req: 0, STOCK_EINVAL or STOCK_ENOMEM. */
static int
build_request(struct payment *p, struct buf *req, const char *hold_id,
    const struct payment_item *items, size_t n, const char *buyer)
{
	struct buf body = BUF_INIT;
	int rc = STOCK_EINVAL;

	if (!valid_hold(hold_id) || items == NULL || n == 0 || n > PAYMENT_ITEMS_MAX ||
	    (buyer != NULL && strlen(buyer) > PAYMENT_STR_MAX))
		return STOCK_EINVAL;
	buf_append(&body, "{\"hold_id\":", 11);
	json_string(&body, hold_id);
	buf_append(&body, ",\"items\":[", 10);
	for (size_t i = 0; i < n; i++) {
		const struct payment_item *it = &items[i];

		if (it->sku == NULL || it->sku[0] == '\0' || strlen(it->sku) > PAYMENT_STR_MAX ||
		    it->quantity == 0 || it->quantity > STOCK_COUNT_MAX)
			goto out;
		buf_append(&body, i == 0 ? "{\"sku\":" : ",{\"sku\":", i == 0 ? 7 : 8);
		if (!json_string(&body, it->sku))
			goto out;
		buf_printf(&body, ",\"quantity\":%llu}", (unsigned long long)it->quantity);
	}
	buf_append(&body, "],\"buyer\":", 10);
	if (buyer == NULL)
		buf_append(&body, "null", 4);
	else if (!json_string(&body, buyer))
		goto out;
	buf_append(&body, "}", 1);
	buf_printf(req,
	    "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
	    "Content-Length: %zu\r\nIdempotency-Key: %s\r\nConnection: close\r\n\r\n",
	    p->path, p->host, body.len, hold_id);
	buf_append(req, body.data, body.len);
	rc = body.failed || req->failed ? STOCK_ENOMEM : 0;
out:
	buf_free(&body);
	return rc;
}

/* ---- the call --------------------------------------------------------------- */

/* Wait for @events on @fd until @deadline (stock_now_ns): true when ready. */
static bool
wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = events };
		uint64_t now = stock_now_ns(), ms;
		int rc;

		if (now >= deadline)
			return false;
		/* At most 1 s a wait, so any timeout_ms fits poll()'s int. */
		ms = (deadline - now + 999999) / 1000000;
		rc = poll(&pfd, 1, ms > 1000 ? 1000 : (int)ms);
		if (rc > 0)
			return true; /* ready, or an error the next call reports */
		if (rc < 0 && errno != EINTR)
			return false;
	}
}

/* A connected non-blocking socket to one of the addresses, or -1. */
static int
dial(struct payment *p, uint64_t deadline, const char **why)
{
	*why = "connect failed";
	for (size_t i = 0; i < p->naddr; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), err = 0, one = 1;
		socklen_t len = sizeof err;

		if (fd < 0) {
			*why = "socket failed";
			return -1;
		}
		if (connect(fd, (struct sockaddr *)&p->addr[i], sizeof p->addr[i]) == 0)
			goto ok;
		if (errno == EINPROGRESS) {
			if (!wait_fd(fd, POLLOUT, deadline)) {
				*why = "connect timed out";
				close(fd);
				return -1;
			}
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
				goto ok;
		}
		close(fd);
		continue;
ok:
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		return fd;
	}
	return -1;
}

static bool
is_tchar(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Field-value and reason-phrase bytes: HTAB, SP, VCHAR, obs-text. */
static bool
is_text(unsigned char c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/*
 * The status of the answer in @a[0..@n) (which ends with the first CRLFCRLF),
 * or -1 when the status line or a header line is malformed.
 */
static int
parse_answer(const char *a, size_t n)
{
	const unsigned char *s = (const unsigned char *)a, *end = s + n - 2, *l;
	int status;

	if (n < 17 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ' ||
	    s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
	    s[12] != ' ')
		return -1;
	status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
	for (l = s + 13; *l != '\r'; l++)
		if (!is_text(*l))
			return -1;
	if (l[1] != '\n')
		return -1;
	/* Header lines: token ":" value CRLF, up to the empty line at @end. */
	for (l += 2; l < end;) {
		const unsigned char *c = l;

		while (is_tchar(*c))
			c++;
		if (c == l || *c != ':')
			return -1;
		for (c++; *c != '\r'; c++)
			if (!is_text(*c))
				return -1;
		if (c[1] != '\n')
			return -1;
		l = c + 2;
	}
	return l == end ? status : -1;
}

/* One exchange: the HTTP status, or -1 (*@why says what went wrong). */
static int
exchange(struct payment *p, const struct buf *req, uint64_t deadline, const char **why)
{
	char a[PAYMENT_ANSWER_MAX + 1];
	size_t sent = 0, got = 0;
	int fd = dial(p, deadline, why), status = -1;

	if (fd < 0)
		return -1;
	while (sent < req->len) {
		ssize_t w = send(fd, req->data + sent, req->len - sent, MSG_NOSIGNAL);

		if (w > 0) {
			sent += (size_t)w;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!wait_fd(fd, POLLOUT, deadline)) {
				*why = "send timed out";
				goto out;
			}
		} else {
			*why = "send failed";
			goto out;
		}
	}
	for (;;) {
		ssize_t r;
		char *eoh;

		if (!wait_fd(fd, POLLIN, deadline)) {
			*why = "no answer in time";
			goto out;
		}
		r = recv(fd, a + got, PAYMENT_ANSWER_MAX - got, 0);
		if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (r <= 0) {
			*why = r == 0 ? "connection closed before the answer" : "recv failed";
			goto out;
		}
		got += (size_t)r;
		a[got] = '\0';
		if ((eoh = memmem(a, got, "\r\n\r\n", 4)) != NULL) {
			status = parse_answer(a, (size_t)(eoh - a) + 4);
			if (status < 0)
				*why = "malformed answer";
			goto out;
		}
		if (got == PAYMENT_ANSWER_MAX) {
			*why = "answer header too long";
			goto out;
		}
	}
out:
	close(fd);
	return status;
}

/* Seconds until the breaker may admit a call again (>= 1). */
static unsigned
retry_after(struct payment *p)
{
	uint64_t now = stock_now_ns(), until, left;

	if (stock_breaker_state(&p->br) == STOCK_BREAKER_HALF_OPEN)
		left = p->timeout_ns; /* the probe answers within its deadline */
	else {
		until = ck_pr_load_64(&p->opened_ns) + p->open_ns;
		left = until > now ? until - now : 0;
	}
	left = (left + 999999999ULL) / 1000000000ULL;
	return left < 1 ? 1 : left > 86400 ? 86400 : (unsigned)left;
}

int
payment_charge(payment_t *p, const char *hold_id, const struct payment_item *items, size_t n,
    const char *buyer, unsigned *retry_after_s)
{
	struct buf req = BUF_INIT;
	struct stock_breaker_token tok;
	const char *why = "";
	int rc, status;

	if (p == NULL || hold_id == NULL)
		return STOCK_EINVAL;
	if ((rc = build_request(p, &req, hold_id, items, n, buyer)) != 0) {
		buf_free(&req);
		return rc;
	}
	if (stock_breaker_allow(&p->br, &tok) != 0) {
		buf_free(&req);
		stock_stat_inc(&p->calls[PAY_REJECTED]);
		if (retry_after_s != NULL)
			*retry_after_s = retry_after(p);
		return STOCK_EOPEN;
	}
	status = exchange(p, &req, stock_now_ns() + p->timeout_ns, &why);
	buf_free(&req);
	if (status >= 200 && status <= 299) {
		stock_breaker_success(&p->br, tok);
		stock_stat_inc(&p->calls[PAY_OK]);
		return 0;
	}
	if (status >= 400 && status <= 499 && status != 408 && status != 409 && status != 429) {
		stock_breaker_success(&p->br, tok); /* declined: the service is healthy */
		stock_stat_inc(&p->calls[PAY_DECLINED]);
		return PAYMENT_EDECLINED;
	}
	stock_breaker_failure(&p->br, tok);
	stock_stat_inc(&p->calls[PAY_FAILED]);
	if (status >= 0)
		log_warn("payment", "charge %s: the service answered %d", hold_id, status);
	else
		log_warn("payment", "charge %s: %s", hold_id, why);
	return STOCK_ESYS;
}

void
payment_metrics(payment_t *p, struct buf *out)
{
	char labels[32];

	prom_family(out, "stock_payment_calls_total", "counter",
	    "Payment charges by result: ok, declined (4xx), failed (no answer, 5xx), rejected (breaker open).");
	for (int i = 0; i < PAY_SLOTS; i++) {
		snprintf(labels, sizeof labels, "result=\"%s\"", result_names[i]);
		prom_u64(out, "stock_payment_calls_total", labels, stock_stat_sum(&p->calls[i]));
	}
	prom_gauge_u64(out, "stock_payment_breaker_state",
	    "Payment breaker: 0 closed, 1 open, 2 half-open.", (uint64_t)stock_breaker_state(&p->br));
}
