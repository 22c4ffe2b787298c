/*
 * HTTP helpers on civetweb: replies with a correct Content-Length in one
 * write (keep-alive works, no Nagle stall), the JSON error shape every
 * error uses, bounded body reads, exact decoding of the path and query
 * (bytes with lengths: a %00 is refused, never a cut), and the admin token.
 */
#ifndef DEMO_HTTP_H
#define DEMO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <civetweb.h>

/** http_send - status line, headers and @body in one write. Returns @status. */
int http_send(struct mg_connection *c, int status, const char *type, const char *extra_headers,
    const char *body, size_t len);

/** http_reply - a JSON body from a format (at most 1 KiB; more is a 500). Returns @status. */
int http_reply(struct mg_connection *c, int status, const char *extra_headers, const char *fmt,
    ...) __attribute__((format(printf, 4, 5)));

/**
 * http_error - {"error": @code, "message": @message}, with Retry-After on a
 * 503 and WWW-Authenticate on a 401. @code is a fixed identifier; @message
 * is JSON-escaped. Returns @status.
 */
int http_error(struct mg_connection *c, int status, const char *code, const char *message);

struct buf;
/** http_error_body - the body http_error sends, appended to @b (to store or send later). */
void http_error_body(struct buf *b, const char *code, const char *message);

/**
 * http_read_body - the request body into @buf (NUL-terminated, @max bytes at
 * most). Returns 0, 413 when larger than @max (reads no further), 400 when
 * the connection broke mid-body.
 */
int http_read_body(struct mg_connection *c, size_t max, char *buf, size_t *len);

/*
 * http_u64_parse - @s[0..@n) as a decimal integer: only digits, at least
 * one, no sign, no overflow. Returns 0 (*@out set) or -1.
 */
int http_u64_parse(const char *s, size_t n, uint64_t *out);

/*
 * http_query_get - the value of parameter @name in the raw query string
 * @qs[0..@n): decoded into @out (length *@outlen), *@found set when present.
 * Returns -1 when the query is malformed (bad escape, NUL) or @name is
 * given more than once (ambiguous), 0 otherwise.
 */
int http_query_get(const char *qs, size_t n, const char *name, char *out, size_t cap,
    size_t *outlen, bool *found);

/**
 * http_close_after - end the connection once this request is answered: the
 * reply says "Connection: close" and civetweb closes instead of reading the
 * next request (a request behind it on the wire is never served).
 */
void http_close_after(struct mg_connection *c);

/**
 * http_framing_check - -1 when the request's framing is ambiguous: more than
 * one Content-Length, more than one Transfer-Encoding, or both (RFC 9112
 * §6.1, the request-smuggling pattern); 0 otherwise.
 */
int http_framing_check(const struct mg_connection *c);

/** http_token_ok - the request carries "Authorization: Bearer @token" (constant time). */
bool http_token_ok(const char *token, const struct mg_connection *c);

/**
 * http_load_token - the admin token: STOCK_ADMIN_TOKEN (16..64 characters),
 * else @data_dir/admin.token, else a new random one written there (0600).
 * @token has 65 bytes. Returns 0 or -1 with a message in @err.
 */
int http_load_token(char *token, const char *data_dir, char *err, size_t errlen);

#endif /* DEMO_HTTP_H */
