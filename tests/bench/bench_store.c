/*
 * Group-commit benchmark of the embedded store (store/store.h).
 *
 * First measures the reference on the same file system in the same run: one
 * thread doing write(64 bytes) + fdatasync in a loop, the cost of a durable
 * append without group commit. Then, for each thread count, opens a fresh
 * store and lets that many threads do durable appends (each its own SKU,
 * increasing versions) for the given time, and prints appends/s, fdatasyncs/s,
 * the mean batch, the mean append latency and the ratio to the reference.
 *
 *   bench_store [-d DIR] [-s SECONDS] [-t 1,8,64] [-D max_delay_us] [-B max_batch]
 *
 * DIR (default: the current directory) must be on the disk you care about:
 * on tmpfs fdatasync does nothing and the numbers mean nothing. The program
 * creates DIR/bench_store.XXXXXX and removes it afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <stock.h>

#include "store/store.h"

static unsigned opt_delay_us, opt_max_batch; /* 0: the store's defaults */

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* One thread, write(64) + fdatasync: what a durable append costs alone. */
static double
reference(const char *dir, double secs)
{
	char path[4200], rec[64];
	double t0, t;
	long n = 0;
	int fd;

	if (snprintf(path, sizeof path, "%s/reference.dat", dir) >= (int)sizeof path) {
		fprintf(stderr, "%s: path too long\n", dir);
		exit(1);
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	memset(rec, 'r', sizeof rec);
	t0 = now_s();
	do {
		if (write(fd, rec, sizeof rec) != (ssize_t)sizeof rec || fdatasync(fd) != 0) {
			perror("reference write");
			exit(1);
		}
		n++;
	} while ((t = now_s()) - t0 < secs);
	close(fd);
	unlink(path);
	return (double)n / (t - t0);
}

struct worker {
	store_t *st;
	int id;
	struct stock_latch *stop;
	unsigned long appends, failures;
};

static void *
worker_main(void *p)
{
	struct worker *w = p;
	struct sku_doc d;
	uint64_t v = 0;

	memset(&d, 0, sizeof d);
	snprintf(d.sku, sizeof d.sku, "bench-%d", w->id);
	while (!stock_latch_is_set(w->stop)) {
		v++;
		d.stock = 1000000000 - v;
		d.sold = v;
		d.version = v;
		if (store_append(w->st, &d, true) == 0)
			w->appends++;
		else
			w->failures++;
	}
	return NULL;
}

static void
run(const char *dir, int threads, double secs, double ref)
{
	char sub[4200], err[512];
	struct store_options o = { 0 };
	struct store_stats s0, s1;
	struct worker *w = calloc((size_t)threads, sizeof *w);
	pthread_t *th = calloc((size_t)threads, sizeof *th);
	struct stock_latch stop;
	unsigned long appends = 0, failures = 0;
	store_t *st;
	double t0, t;
	uint64_t fsyncs, batches, records;

	if (snprintf(sub, sizeof sub, "%s/t%d", dir, threads) >= (int)sizeof sub) {
		fprintf(stderr, "%s: path too long\n", dir);
		exit(1);
	}
	o.data_dir = sub;
	o.queue_limit = 65536;
	o.max_delay_us = opt_delay_us;
	o.max_batch = opt_max_batch;
	if (store_open(&st, &o, err, sizeof err) != 0) {
		fprintf(stderr, "open: %s\n", err);
		exit(1);
	}
	store_stats(st, &s0);
	stock_latch_init(&stop, false);
	t0 = now_s();
	for (int i = 0; i < threads; i++) {
		w[i] = (struct worker){ st, i, &stop, 0, 0 };
		if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0) {
			perror("pthread_create");
			exit(1);
		}
	}
	while (now_s() - t0 < secs)
		usleep(10000);
	stock_latch_set(&stop);
	for (int i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		appends += w[i].appends;
		failures += w[i].failures;
	}
	t = now_s() - t0;
	store_stats(st, &s1);
	store_close(st);
	stock_latch_destroy(&stop);
	fsyncs = s1.fsyncs - s0.fsyncs;
	batches = s1.batches - s0.batches;
	records = s1.records - s0.records;
	printf("%7d %12.0f %11.0f %10.1f %9zu %12.1f %8.1fx%s\n", threads, (double)appends / t,
	    (double)fsyncs / t, batches ? (double)records / (double)batches : 0.0,
	    (size_t)s1.batch_max, appends ? (double)threads * t * 1e6 / (double)appends : 0.0,
	    ref > 0 ? (double)appends / t / ref : 0.0, failures ? "  (failures!)" : "");
	free(w);
	free(th);
}

int
main(int argc, char **argv)
{
	const char *base = ".", *list = "1,8,64";
	char dir[4096], *copy, *tok, *save = NULL;
	double secs = 2.0, ref;
	int opt;

	while ((opt = getopt(argc, argv, "d:s:t:D:B:h")) != -1) {
		switch (opt) {
		case 'd':
			base = optarg;
			break;
		case 's':
			secs = atof(optarg);
			break;
		case 't':
			list = optarg;
			break;
		case 'D':
			opt_delay_us = (unsigned)atoi(optarg);
			break;
		case 'B':
			opt_max_batch = (unsigned)atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: %s [-d DIR] [-s SECONDS] [-t 1,8,64] [-D max_delay_us] [-B max_batch]\n", argv[0]);
			return opt == 'h' ? 0 : 2;
		}
	}
	if (secs <= 0)
		secs = 2.0;
	if (snprintf(dir, sizeof dir, "%s/bench_store.XXXXXX", base) >= (int)sizeof dir ||
	    mkdtemp(dir) == NULL) {
		perror(dir);
		return 1;
	}
	ref = reference(dir, secs);
	printf("bench_store: durable appends through group commit, %.1f s per row, in %s\n", secs,
	    dir);
	printf("reference: one thread, write(64 B) + fdatasync: %.0f /s\n\n", ref);
	printf("%7s %12s %11s %10s %9s %12s %9s\n", "threads", "appends/s", "fsyncs/s",
	    "mean batch", "max batch", "latency us", "vs ref");
	copy = strdup(list);
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		int n = atoi(tok);

		if (n > 0)
			run(dir, n, secs, ref);
	}
	free(copy);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
