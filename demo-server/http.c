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
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"

static const char *
reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
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
	char head[512];
	char small[2048], *buf = small;
	int h = snprintf(head, sizeof head,
	    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	    "Cache-Control: no-store\r\n%s\r\n",
	    status, reason(status), type, len, extra_headers ? extra_headers : "");

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

int
http_error(struct mg_connection *c, int status, const char *code, const char *message)
{
	const char *extra = status == 503 ? "Retry-After: 1\r\n" :
	    status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL;

	/* Messages are fixed strings from the handlers: no JSON escaping needed. */
	return http_reply(c, status, extra, "{\"error\":\"%s\",\"message\":\"%s\"}", code, message);
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

bool
http_token_ok(const struct app *app, const struct mg_connection *c)
{
	const char *h = mg_get_header(c, "Authorization");
	size_t want = strlen(app->token), got;
	unsigned char diff = 0;

	if (h == NULL || strncmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	got = strlen(h);
	/* Constant time in the token's length: compare every byte. */
	for (size_t i = 0; i < want; i++)
		diff |= (unsigned char)(app->token[i] ^ (i < got ? h[i] : 0));
	return diff == 0 && got == want;
}

int
http_load_token(struct app *app, char *err, size_t errlen)
{
	const char *env = getenv("STOCK_ADMIN_TOKEN");
	char path[PATH_MAX + 32];
	unsigned char raw[24];
	int fd;
	ssize_t n;

	if (env != NULL && *env != '\0') {
		if (strlen(env) < 16 || strlen(env) >= sizeof app->token) {
			snprintf(err, errlen, "STOCK_ADMIN_TOKEN must be 16..64 characters");
			return -1;
		}
		strcpy(app->token, env);
		return 0;
	}
	snprintf(path, sizeof path, "%s/admin.token", app->cfg.data_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, app->token, sizeof app->token - 1);
		close(fd);
		if (n < 16) {
			snprintf(err, errlen, "%s: too short or unreadable", path);
			return -1;
		}
		app->token[n] = '\0';
		app->token[strcspn(app->token, "\r\n")] = '\0';
		app_log("admin token: %s", path);
		return 0;
	}
	if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
		snprintf(err, errlen, "getrandom: %s", strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < sizeof raw; i++)
		sprintf(app->token + 2 * i, "%02x", raw[i]);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, app->token, strlen(app->token)) != (ssize_t)strlen(app->token) ||
	    fsync(fd) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	app_log("admin token generated: %s (mode 0600)", path);
	return 0;
}
