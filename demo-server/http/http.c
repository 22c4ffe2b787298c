/*
 * HTTP helpers: JSON replies with correct Content-Length (so keep-alive
 * works), bounded body reads, and the admin bearer token (loaded or
 * generated at start, compared in constant time).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <limits.h>
#include <stdio.h>

#include "common/util.h"
#include "common/buf.h"
#include "http/http.h"
#include "log.h"

static const char *
reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 422: return "Unprocessable Content";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	default: return "Internal Server Error";
	}
}

int
http_reply(struct mg_connection *c, int status, const char *extra_headers, const char *fmt, ...)
{
	char body[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(body, sizeof body - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof body - 1)
		n = snprintf(body, sizeof body, "{\"error\":\"internal\"}");
	body[n++] = '\n';
	return http_send(c, status, "application/json", extra_headers, body, (size_t)n);
}

/*
 * One write per response: headers and body leave in the same segment, so a
 * keep-alive client never waits on Nagle + delayed ACK (~40 ms) for the body.
 */
int
http_send(struct mg_connection *c, int status, const char *type, const char *extra_headers,
    const char *body, size_t len)
{
	const char *conn = mg_get_header(c, "Connection");
	char head[512];
	char small[2048], *buf = small;
	int h = snprintf(head, sizeof head,
	    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	    "Cache-Control: no-store\r\n%s%s\r\n",
	    status, reason(status), type, len, extra_headers ? extra_headers : "",
	    conn != NULL && strcasecmp(conn, "close") == 0 ? "Connection: close\r\n" : "");

	if (h < 0 || (size_t)h >= sizeof head)
		return 500;
	if ((size_t)h + len > sizeof small && (buf = malloc((size_t)h + len)) == NULL) {
		mg_write(c, head, (size_t)h);
		mg_write(c, body, len);
		return status;
	}
	memcpy(buf, head, (size_t)h);
	memcpy(buf + h, body, len);
	mg_write(c, buf, (size_t)h + len);
	if (buf != small)
		free(buf);
	return status;
}

/* @s as the inside of a JSON string: quotes, backslashes and control bytes escaped. */
static void
json_escape(struct buf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			buf_printf(b, "\\%c", ch);
		else if (ch < 0x20)
			buf_printf(b, "\\u%04x", ch);
		else
			buf_append(b, s, 1);
	}
}

void
http_error_body(struct buf *b, const char *code, const char *message)
{
	buf_printf(b, "{\"error\":\"%s\",\"message\":\"", code);
	json_escape(b, message);
	buf_append(b, "\"}\n", 3);
}

int
http_error(struct mg_connection *c, int status, const char *code, const char *message)
{
	const char *extra = status == 503 ? "Retry-After: 1\r\n" :
	    status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL;

	char small[512];
	struct buf b = BUF_ON(small);
	int st;

	/* Codes are fixed identifiers; messages may quote JSON: escaped. */
	http_error_body(&b, code, message);
	st = b.failed ? http_reply(c, 500, NULL, "{\"error\":\"internal\"}") :
	    http_send(c, status, "application/json", extra, b.data, b.len);
	buf_free(&b);
	return st;
}

/*
 * Reads the body into buf (NUL-terminated). Returns 0, 413 when it is larger
 * than @max (read no further), 400 when the connection broke mid-body.
 */
int
http_read_body(struct mg_connection *c, size_t max, char *buf, size_t *len)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	size_t got = 0;
	int n;

	if (ri->content_length > (long long)max)
		return 413;
	while (got <= max) {
		n = mg_read(c, buf + got, max + 1 - got);
		if (n < 0)
			return 400;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	if (got > max)
		return 413;
	if (ri->content_length >= 0 && (long long)got != ri->content_length)
		return 400;
	buf[got] = '\0';
	*len = got;
	return 0;
}

void
http_close_after(struct mg_connection *c)
{
	struct mg_request_info *ri = (struct mg_request_info *)mg_get_request_info(c);
	int i;

	/* civetweb keeps a connection alive only while the request's own
	   Connection header allows it (should_keep_alive), and offers no other
	   way for a handler to end it: so the request is made to say "close". */
	for (i = 0; i < ri->num_headers; i++)
		if (strcasecmp(ri->http_headers[i].name, "Connection") == 0) {
			ri->http_headers[i].value = "close";
			return;
		}
	if (i < (int)(sizeof ri->http_headers / sizeof ri->http_headers[0])) {
		ri->http_headers[i].name = "Connection";
		ri->http_headers[i].value = "close";
		ri->num_headers = i + 1;
	}
}

int
http_framing_check(const struct mg_connection *c)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	int cl = 0, te = 0;

	for (int i = 0; i < ri->num_headers; i++) {
		if (strcasecmp(ri->http_headers[i].name, "Content-Length") == 0)
			cl++;
		else if (strcasecmp(ri->http_headers[i].name, "Transfer-Encoding") == 0)
			te++;
	}
	return cl > 1 || te > 1 || (cl && te) ? -1 : 0;
}

int
http_u64_parse(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > 20)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned char)s[i] - '0';
		if (d > 9 || v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

int
http_query_get(const char *qs, size_t n, const char *name, char *out, size_t cap,
    size_t *outlen, bool *found)
{
	size_t want = strlen(name), i = 0;

	*found = false;
	while (i < n) {
		const char *part = qs + i, *amp = memchr(part, '&', n - i), *eq;
		size_t plen = amp ? (size_t)(amp - part) : n - i, klen;
		char key[64];

		i += plen + 1;
		if (plen == 0)
			continue;
		eq = memchr(part, '=', plen);
		if (util_pct_decode(part, eq ? (size_t)(eq - part) : plen, true, key, sizeof key,
		    &klen) != 0)
			return -1;
		if (klen != want || memcmp(key, name, want) != 0)
			continue;
		if (*found) /* a repeated parameter is ambiguous */
			return -1;
		*found = true;
		if (eq == NULL)
			*outlen = 0;
		else if (util_pct_decode(eq + 1, plen - (size_t)(eq + 1 - part), true, out, cap,
		    outlen) != 0)
			return -1;
	}
	return 0;
}

bool
http_token_ok(const char *token, const struct mg_connection *c)
{
	const char *h = mg_get_header(c, "Authorization");
	size_t want = strlen(token), got;
	unsigned char diff = 0;

	if (h == NULL || strncmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	got = strlen(h);
	/* Constant time in the token's length: compare every byte. */
	for (size_t i = 0; i < want; i++)
		diff |= (unsigned char)(token[i] ^ (i < got ? h[i] : 0));
	return diff == 0 && got == want;
}

int
http_load_token(char *token, const char *data_dir, char *err, size_t errlen)
{
	const char *env = getenv("STOCK_ADMIN_TOKEN");
	char path[PATH_MAX + 32];
	unsigned char raw[24];
	int fd;
	ssize_t n;

	if (env != NULL && *env != '\0') {
		if (strlen(env) < 16 || strlen(env) > 64) {
			snprintf(err, errlen, "STOCK_ADMIN_TOKEN must be 16..64 characters");
			return -1;
		}
		strcpy(token, env);
		return 0;
	}
	snprintf(path, sizeof path, "%s/admin.token", data_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, token, 64);
		close(fd);
		if (n < 16) {
			snprintf(err, errlen, "%s: too short or unreadable", path);
			return -1;
		}
		token[n] = '\0';
		token[strcspn(token, "\r\n")] = '\0';
		log_info("admin", "token: %s", path);
		return 0;
	}
	if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
		snprintf(err, errlen, "getrandom: %s", strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < sizeof raw; i++)
		sprintf(token + 2 * i, "%02x", raw[i]);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, token, strlen(token)) != (ssize_t)strlen(token) ||
	    fsync(fd) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	log_info("admin", "token generated: %s (mode 0600)", path);
	return 0;
}
