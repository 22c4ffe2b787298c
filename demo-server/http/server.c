/*
 * The HTTP server: civetweb's options and start. This is where the crowd is
 * met: how many workers, their stacks, timeouts for silent and slow
 * clients, and what civetweb itself answers (docs/server.md "The crowd").
 *
 * The reasoning behind each piece (worker sizing, the accept queue, nice,
 * TCP_DEFER_ACCEPT, the fair hand-over, the interposed sigaction, the futex
 * hash) is in docs/internals/crowd.md.
 *
 * One server per process (the counters below are static).
 */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "app.h"
#include "http/http.h"
#include "http/routes.h"
#include "http/server.h"
#include "http/threads.h"
#include "log.h"

#define FD_RESERVE 256              /* journal, snapshots, MongoDB and Redis, logs, /proc */
#define WORKER_COST (64 * 1024)     /* bytes: ~37 KiB RSS with a connection + kernel stack */
#define WORKERS_MAX 65536           /* civetweb's MAX_WORKER_THREADS */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

#ifdef SANITIZED
#define AUTO_MAX 1024               /* sanitizer builds test correctness (TSan: 8128 threads at most) */
#else
#define AUTO_MAX 16384              /* --threads 0: ~330 MiB idle, ~2 s to start */
#endif
#define WORKERS_MIN 16
#define QUEUE_MIN 20                /* civetweb's default connection_queue */
#define QUEUE_MAX 65536
#define MAX_REQUEST_SIZE 16384      /* request line and headers */

static struct {
	struct stock_gauge workers;     /* running */
	uint64_t handover_ns;           /* 0: never */
	int nice;                       /* of the workers */
	struct stock_gauge nice_failed; /* 1: a worker could not lower its priority */
	struct stock_gauge busy;        /* workers holding a connection */
	struct stock_gauge started;     /* workers that ran init_thread */
	struct stock_gauge stack;       /* a worker's stack size, bytes */
} crowd;

/* The connection this worker thread holds: since when. */
static __thread uint64_t conn_since;

static int
civetweb_log(const struct mg_connection *c, const char *msg)
{
	(void)c;
	log_warn("http", "%s", msg);
	return 1;
}

/* --- civetweb's own errors as JSON --------------------------------------- */

static const char *
error_reason(int status, const char **code)
{
	switch (status) {
	case 400: *code = "bad_request"; return "Bad Request";
	case 405: *code = "method_not_allowed"; return "Method Not Allowed";
	case 411: *code = "length_required"; return "Length Required";
	case 413: *code = "headers_too_large"; return "Request Header Fields Too Large";
	case 417: *code = "expectation_failed"; return "Expectation Failed";
	case 503: *code = "unavailable"; return "Service Unavailable";
	case 505: *code = "http_version_not_supported"; return "HTTP Version Not Supported";
	default: *code = "internal"; return "Internal Server Error";
	}
}

/* civetweb's text, which may quote the client's bytes: printable ASCII, JSON-escaped. */
static void
json_text(char *out, size_t cap, const char *in)
{
	size_t o = 0;

	for (; in != NULL && *in != '\0' && o + 7 < cap; in++) {
		unsigned char ch = (unsigned char)*in;

		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch < 0x20 || ch > 0x7e) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
		} else {
			out[o++] = (char)ch;
		}
	}
	out[o] = '\0';
}

/*
 * civetweb's http_error callback: every error civetweb answers itself (the
 * request never reached routes.c) gets {"error","message"} as JSON. civetweb
 * closes the connection after these (it could not frame the request), so the
 * reply says so. One write, like http_send.
 */
static int
on_http_error(struct mg_connection *c, int status, const char *msg)
{
	char text[200], body[400], out[800];
	const char *code, *reason;
	int blen, n;

	reason = error_reason(status, &code);
	switch (status) {
	case 400:
		/* civetweb says "Malformed message" both for headers that outgrew
		   max_request_size and for headers incomplete at the timeout. */
		if (msg != NULL && strcmp(msg, "Malformed message") == 0) {
			snprintf(text, sizeof text, "request headers larger than %d bytes, or not "
			    "complete within the request timeout", MAX_REQUEST_SIZE);
			break;
		}
		json_text(text, sizeof text, msg != NULL && *msg ? msg : reason);
		break;
	case 411: snprintf(text, sizeof text, "Content-Length must be a non-negative integer"); break;
	case 413: snprintf(text, sizeof text, "request line and headers larger than %d bytes",
	    MAX_REQUEST_SIZE); break;
	default: json_text(text, sizeof text, msg != NULL && *msg ? msg : reason); break;
	}
	blen = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}\n", code, text);
	n = snprintf(out, sizeof out,
	    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
	    "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s",
	    status, reason, blen, body);
	if (n > 0 && (size_t)n < sizeof out)
		mg_write(c, out, (size_t)n);
	/* Should civetweb keep the connection (an error from inside a request it
	   had framed), the request itself now asks for close. */
	if (mg_get_request_info(c)->request_method != NULL)
		http_close_after(c);
	return 0; /* handled: no civetweb page */
}

/* --- workers and the fair hand-over --------------------------------------- */

static void *
on_init_thread(const struct mg_context *ctx, int type)
{
	pthread_attr_t a;
	size_t size;

	(void)ctx;
	if (type != 1) /* 1: a worker */
		return NULL;
	if (crowd.nice != 0 && threads_nice_self(crowd.nice) != 0)
		stock_gauge_set(&crowd.nice_failed, 1);
	if (stock_gauge_add(&crowd.started, 1) == 1 && pthread_getattr_np(pthread_self(), &a) == 0) {
		if (pthread_attr_getstacksize(&a, &size) == 0)
			stock_gauge_set(&crowd.stack, size);
		pthread_attr_destroy(&a);
	}
	return NULL;
}

static int
on_init_connection(const struct mg_connection *c, void **data)
{
	(void)c;
	*data = NULL;
	conn_since = stock_now_ns();
	stock_gauge_add(&crowd.busy, 1);
	return 0;
}

static void
on_connection_close(const struct mg_connection *c)
{
	(void)c;
	stock_gauge_add(&crowd.busy, UINT64_MAX); /* - 1 */
}

/*
 * Before every request: while every worker holds a connection (others may
 * be waiting in the accept queue, unserved), a connection that has had its
 * share (--handover-ms) is answered with Connection: close; its client
 * reconnects at the back of the queue.
 */
static int
on_begin_request(struct mg_connection *c)
{
	if (crowd.handover_ns != 0 &&
	    stock_gauge_get(&crowd.busy) >= stock_gauge_get(&crowd.workers) &&
	    stock_now_ns() - conn_since >= crowd.handover_ns) {
		http_close_after(c);
	}
	return 0; /* civetweb goes on to routes.c */
}

/* --- sizing from the limits ----------------------------------------------- */

/*
 * The number of the first line of @path that @fmt (one %llu) matches, or
 * @dflt: "max" (cgroup) matches no number.
 */
static uint64_t
read_u64(const char *path, const char *fmt, uint64_t dflt)
{
	char line[256];
	unsigned long long v;
	FILE *f = fopen(path, "re");

	if (f == NULL)
		return dflt;
	while (fgets(line, sizeof line, f) != NULL)
		if (sscanf(line, fmt, &v) == 1) {
			dflt = v;
			break;
		}
	fclose(f);
	return dflt;
}

/* Lines of /proc/self/maps: the mappings this process has. */
static uint64_t
maps_now(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	uint64_t n = 0;
	int ch;

	if (f == NULL)
		return 0;
	while ((ch = getc(f)) != EOF)
		n += ch == '\n';
	fclose(f);
	return n;
}

static uint64_t
min64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* The soft RLIMIT_NOFILE raised to the hard one; returns the soft limit in effect. */
static uint64_t
nofile_raise(void)
{
	struct rlimit rl;
	rlim_t was;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 1024;
	was = rl.rlim_cur;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			rl.rlim_cur = was;
		else
			log_info("http", "file descriptors: soft limit raised from %llu to %llu",
			    (unsigned long long)was, (unsigned long long)rl.rlim_cur);
	}
	return rl.rlim_cur == RLIM_INFINITY ? (uint64_t)1 << 20 : (uint64_t)rl.rlim_cur;
}

struct plan {
	uint64_t fds;     /* descriptors for connections */
	uint64_t pids;    /* half the threads the machine (cgroup) has left */
	uint64_t memory;  /* a quarter of the available memory / WORKER_COST */
	uint64_t maps;    /* two mappings per thread stack */
	uint64_t workers; /* in effect */
	uint64_t queue;   /* civetweb's connection_queue */
	uint64_t backlog; /* the kernel's, somaxconn */
	bool automatic;
};

static void
plan_make(struct plan *p, uint64_t threads)
{
	uint64_t nofile = nofile_raise();
	uint64_t pid_max = read_u64("/proc/sys/kernel/pid_max", "%llu", 32768);
	uint64_t thr_max = read_u64("/proc/sys/kernel/threads-max", "%llu", pid_max);
	uint64_t cg_max = read_u64("/sys/fs/cgroup/pids.max", "%llu", UINT64_MAX);
	uint64_t cg_cur = read_u64("/sys/fs/cgroup/pids.current", "%llu", 0);
	/* the threads running on the machine now: "... running/total ..." */
	uint64_t used = read_u64("/proc/loadavg", "%*f %*f %*f %*u/%llu", 0);
	uint64_t lim = min64(pid_max, thr_max);
	uint64_t mem = read_u64("/proc/meminfo", "MemAvailable: %llu kB", 0) * 1024;
	uint64_t cg_mem = read_u64("/sys/fs/cgroup/memory.max", "%llu", UINT64_MAX);
	uint64_t cg_mem_cur = read_u64("/sys/fs/cgroup/memory.current", "%llu", 0);
	uint64_t map_max = read_u64("/proc/sys/vm/max_map_count", "%llu", 65530), maps = maps_now();
	struct rlimit np;

	p->fds = nofile > FD_RESERVE + WORKERS_MIN ? nofile - FD_RESERVE : WORKERS_MIN;
	p->pids = lim > used ? (lim - used) / 2 : WORKERS_MIN;
	if (cg_max != UINT64_MAX)
		p->pids = min64(p->pids, cg_max > cg_cur ? (cg_max - cg_cur) / 2 : WORKERS_MIN);
	if (geteuid() != 0 && getrlimit(RLIMIT_NPROC, &np) == 0 && np.rlim_cur != RLIM_INFINITY)
		p->pids = min64(p->pids, (uint64_t)np.rlim_cur / 2);
	if (cg_mem != UINT64_MAX && cg_mem > cg_mem_cur)
		mem = mem == 0 ? cg_mem - cg_mem_cur : min64(mem, cg_mem - cg_mem_cur);
	p->memory = mem == 0 ? WORKERS_MIN : mem / 4 / WORKER_COST;
	p->maps = map_max > maps + 4096 ? (map_max - maps - 4096) / 2 : WORKERS_MIN;
	p->automatic = threads == 0;
	if (p->automatic) {
		threads = min64(min64(p->fds, p->pids), min64(p->memory, p->maps));
		threads = min64(threads, AUTO_MAX);
		if (threads < WORKERS_MIN)
			threads = WORKERS_MIN;
	}
	p->workers = threads;
	/* What the workers cannot hold waits in civetweb's queue, as far as
	   descriptors go: never accept more than can be kept open. */
	p->queue = p->fds > threads ? min64(p->fds - threads, QUEUE_MAX) : 0;
	if (p->queue < QUEUE_MIN)
		p->queue = QUEUE_MIN;
	p->backlog = read_u64("/proc/sys/net/core/somaxconn", "%llu", 4096);
	if (p->backlog < 128)
		p->backlog = 128;
	if (p->backlog > 65535)
		p->backlog = 65535;
	if (threads > p->fds)
		log_warn("http", "%llu workers but descriptors for %llu connections (RLIMIT_NOFILE)",
		    (unsigned long long)threads, (unsigned long long)p->fds);
}

/* --- the listening socket ------------------------------------------------- */

static bool
port_is_ours(int fd, const struct mg_server_port *ports, int nports)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	int on = 0, port;
	socklen_t olen = sizeof on;

	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) != 0 || !on ||
	    getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return false;
	if (ss.ss_family == AF_INET)
		port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	else if (ss.ss_family == AF_INET6)
		port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	else
		return false;
	for (int i = 0; i < nports; i++)
		if (ports[i].port == port)
			return true;
	return false;
}

/*
 * civetweb does not hand out its listening sockets: find them (listening,
 * on one of its ports) among our descriptors and set TCP_DEFER_ACCEPT.
 * Returns how many were set.
 */
static int
listen_defer(struct mg_context *ctx, uint64_t secs)
{
	struct mg_server_port ports[8];
	int nports = mg_get_server_ports(ctx, 8, ports), set = 0;
	DIR *d;
	struct dirent *e;

	if (nports <= 0 || (d = opendir("/proc/self/fd")) == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		int fd = atoi(e->d_name), v = (int)secs;

		if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d) ||
		    !port_is_ours(fd, ports, nports))
			continue;
		if (setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &v, sizeof v) == 0)
			set++;
		else
			log_warn("http", "TCP_DEFER_ACCEPT: %s", strerror(errno));
	}
	closedir(d);
	return set;
}

static struct plan planned;
static bool is_planned;

uint64_t
http_size(struct app_config *cfg)
{
	if (!is_planned) {
		plan_make(&planned, cfg->threads);
		is_planned = true;
	}
	cfg->threads = planned.workers;
	return planned.workers;
}

struct mg_context *
http_start(struct app *app)
{
	struct app_config *cfg = &app->cfg;
	char threads[24], queue[24], backlog[24], req_to[24], idle_to[24], reqsize[24];
	const char *options[] = {
		"listening_ports", cfg->listen,
		"num_threads", threads,
		"connection_queue", queue,
		"listen_backlog", backlog,
		"enable_keep_alive", "yes",
		"keep_alive_timeout_ms", idle_to,
		"request_timeout_ms", req_to,
		"max_request_size", reqsize,
		"tcp_nodelay", "1",
		"decode_url", "no", /* http/routes.c decodes the path with explicit lengths */
		NULL,
	};
	struct mg_callbacks cb = { 0 };
	struct mg_context *ctx;
	struct plan p;
	int deferred = 0;
	unsigned slots;
	uint64_t t0 = stock_now_ns();

	http_size(cfg); /* main.c logs cfg->threads */
	p = planned;
	stock_gauge_set(&crowd.workers, p.workers);
	crowd.handover_ns = cfg->handover_ms * 1000000;
	crowd.nice = (int)cfg->worker_nice;
	snprintf(threads, sizeof threads, "%llu", (unsigned long long)p.workers);
	snprintf(queue, sizeof queue, "%llu", (unsigned long long)p.queue);
	snprintf(backlog, sizeof backlog, "%llu", (unsigned long long)p.backlog);
	snprintf(req_to, sizeof req_to, "%llu", (unsigned long long)cfg->request_timeout_ms);
	snprintf(idle_to, sizeof idle_to, "%llu", (unsigned long long)cfg->idle_timeout_ms);
	snprintf(reqsize, sizeof reqsize, "%d", MAX_REQUEST_SIZE);
	cb.log_message = civetweb_log;
	cb.http_error = on_http_error;
	cb.init_thread = on_init_thread;
	cb.init_connection = on_init_connection;
	cb.connection_close = on_connection_close;
	cb.begin_request = on_begin_request;
	slots = threads_futex_hash(p.workers);
	mg_init_library(0);
	if ((ctx = mg_start(&cb, NULL, options)) == NULL) {
		log_error("http", "cannot listen on %s (in use, or not host:port)", cfg->listen);
		mg_exit_library();
		return NULL;
	}
	/* Routes at once: a request arriving while the workers start gets the
	   router (503 not_ready until main.c sets ready), never civetweb's 404. */
	routes_install(app, ctx);
	if (cfg->defer_accept_s != 0 && (deferred = listen_defer(ctx, cfg->defer_accept_s)) == 0)
		log_warn("http", "TCP_DEFER_ACCEPT not set: listening socket not found");
	/* The workers start on their own: wait (bounded) to report what runs. */
	for (int i = 0; i < 200 && stock_gauge_get(&crowd.started) < p.workers; i++)
		usleep(10000);
	if (stock_gauge_get(&crowd.started) < p.workers) {
		log_warn("http", "%llu of %llu workers started", (unsigned long long)stock_gauge_get(&crowd.started),
		    (unsigned long long)p.workers);
		stock_gauge_set(&crowd.workers, stock_gauge_get(&crowd.started)); /* the hand-over counts what runs */
	}
	if (stock_gauge_get(&crowd.nice_failed))
		log_warn("http", "workers: setpriority(%d) failed", crowd.nice);
	log_info("http",
	    "crowd: %llu workers%s (fds %llu, pids %llu, memory %llu, maps %llu), nice %d, stack %llu KiB, "
	    "accept queue %llu kernel + %llu civetweb, request timeout %llu ms, idle timeout %llu ms, "
	    "defer accept %llu s%s, hand-over %llu ms, futex hash %u, started in %llu ms",
	    (unsigned long long)p.workers, p.automatic ? " (auto)" : " (--threads)",
	    (unsigned long long)p.fds, (unsigned long long)p.pids, (unsigned long long)p.memory,
	    (unsigned long long)p.maps, crowd.nice, (unsigned long long)stock_gauge_get(&crowd.stack) / 1024,
	    (unsigned long long)p.backlog, (unsigned long long)p.queue,
	    (unsigned long long)cfg->request_timeout_ms, (unsigned long long)cfg->idle_timeout_ms,
	    (unsigned long long)(deferred ? cfg->defer_accept_s : 0), deferred ? "" : " (off)",
	    (unsigned long long)cfg->handover_ms, slots,
	    (unsigned long long)((stock_now_ns() - t0) / 1000000));
	return ctx;
}
