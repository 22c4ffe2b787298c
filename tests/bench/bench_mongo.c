/*
 * bench_mongo - the reference for Db/Buy on the MongoDB store: a raw
 * libmongoc loop of the same findAndModify ({_id, stock >= 1} → $inc
 * {stock: -1, sold: 1, version: 1}) from N threads, each with its own client
 * from one pool, against the same server, for S seconds. Prints ops/s and
 * the p50/p99 round trip in ms, one line:  "<ops/s> <p50 ms> <p99 ms>".
 *
 *   bench_mongo URI DB THREADS SECONDS
 */
#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAXLAT 1000000

static mongoc_client_pool_t *pool;
static const char *dbname;
static volatile int stop;
static uint64_t *lat;
static size_t nlat;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int
cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void *
worker(void *arg)
{
	mongoc_client_t *c = mongoc_client_pool_pop(pool);
	mongoc_collection_t *col = mongoc_client_get_collection(c, dbname, "bench");
	bson_t *q = BCON_NEW("_id", "bench", "stock", "{", "$gte", BCON_INT64(1), "}");
	bson_t *u = BCON_NEW("$inc", "{", "stock", BCON_INT64(-1), "sold", BCON_INT64(1), "version",
	    BCON_INT64(1), "}");
	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		bson_t reply;
		bson_error_t err;
		uint64_t t0 = now_ns();
		bool ok = mongoc_collection_find_and_modify(col, q, NULL, u, NULL, false, false, true,
		    &reply, &err);
		uint64_t dt = now_ns() - t0;
		bson_destroy(&reply);
		if (!ok) {
			fprintf(stderr, "bench_mongo: %s\n", err.message);
			break;
		}
		pthread_mutex_lock(&mu);
		if (nlat < MAXLAT)
			lat[nlat++] = dt;
		pthread_mutex_unlock(&mu);
	}
	bson_destroy(q);
	bson_destroy(u);
	mongoc_collection_destroy(col);
	mongoc_client_pool_push(pool, c);
	return NULL;
}

int
main(int argc, char **argv)
{
	int threads, secs;
	pthread_t t[256];
	mongoc_uri_t *uri;
	mongoc_client_t *c;
	mongoc_collection_t *col;
	bson_t *doc;
	bson_error_t err;
	uint64_t t0, t1;

	if (argc != 5 || (threads = atoi(argv[3])) < 1 || threads > 256 || (secs = atoi(argv[4])) < 1) {
		fprintf(stderr, "usage: %s URI DB THREADS(1-256) SECONDS\n", argv[0]);
		return 2;
	}
	dbname = argv[2];
	mongoc_init();
	mongoc_log_set_handler(NULL, NULL);
	uri = mongoc_uri_new(argv[1]);
	if (uri == NULL)
		return 2;
	mongoc_uri_set_option_as_bool(uri, MONGOC_URI_RETRYWRITES, false);
	pool = mongoc_client_pool_new(uri);
	mongoc_client_pool_max_size(pool, (uint32_t)threads + 1);
	lat = malloc(sizeof *lat * MAXLAT);
	c = mongoc_client_pool_pop(pool);
	col = mongoc_client_get_collection(c, dbname, "bench");
	mongoc_collection_delete_many(col, &(bson_t)BSON_INITIALIZER, NULL, NULL, NULL);
	doc = BCON_NEW("_id", "bench", "stock", BCON_INT64(4000000000000LL), "sold", BCON_INT64(0),
	    "version", BCON_INT64(1));
	if (!mongoc_collection_insert_one(col, doc, NULL, NULL, &err)) {
		fprintf(stderr, "bench_mongo: %s\n", err.message);
		return 1;
	}
	bson_destroy(doc);
	mongoc_collection_destroy(col);
	mongoc_client_pool_push(pool, c);
	t0 = now_ns();
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	struct timespec d = { secs, 0 };
	nanosleep(&d, NULL);
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	t1 = now_ns();
	qsort(lat, nlat, sizeof *lat, cmp);
	printf("%.0f %.2f %.2f\n", nlat / ((t1 - t0) / 1e9), nlat ? lat[nlat / 2] / 1e6 : 0.0,
	    nlat ? lat[nlat * 99 / 100] / 1e6 : 0.0);
	mongoc_client_pool_destroy(pool);
	mongoc_uri_destroy(uri);
	mongoc_cleanup();
	return 0;
}
