/*
 * Redis URLs for the bus (redis_url.c): redis://[[user]:password@]host[:port][/db].
 */
#ifndef DEMO_CLUSTER_REDIS_URL_H
#define DEMO_CLUSTER_REDIS_URL_H

#define REDIS_HOSTNAME_MAX 255 /* longest Redis host name in a URL */
#define REDIS_SECRET_MAX 256   /* longest user name or password in a URL */
#define REDIS_DB_MAX 1000000   /* largest database number in a URL */
#define REDIS_DEF_PORT 6379

/* Where and how to connect, from the URL. */
struct redis_addr {
	char host[REDIS_HOSTNAME_MAX + 1];
	int port;
	int db;
	char user[REDIS_SECRET_MAX + 1]; /* empty: AUTH with the password only */
	char pass[REDIS_SECRET_MAX + 1]; /* empty: no AUTH */
};

/**
 * redis_url_parse - @url into @a. host is a name or an IPv4 address
 * ([A-Za-z0-9._-]) or an IPv6 address in brackets; user and password may be
 * percent-encoded (no %00); the password must not be empty; the port is
 * 1..65535 (default 6379), the db 0..REDIS_DB_MAX, both without sign or
 * leading zeros. Returns 0 or STOCK_EINVAL (also for NULL).
 */
int redis_url_parse(const char *url, struct redis_addr *a);

#endif /* DEMO_CLUSTER_REDIS_URL_H */
