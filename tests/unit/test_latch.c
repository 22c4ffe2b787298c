/*
 * Latch: set releases every waiter (even when cleared straight away), no
 * lost wake-up over many set/clear rounds, timeouts honoured, set publishes
 * what was written before it.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include <stock.h>

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Polls until @l has @n sleeping waiters; false after ~10 s. */
static bool
await_waiters(const struct stock_latch *l, uint32_t n)
{
	for (int i = 0; i < 1000000 && stock_latch_waiters(l) < n; i++) {
		if (i < 1000)
			sched_yield();
		else
			sleep_ms(1);
	}
	return stock_latch_waiters(l) >= n;
}

Test(latch, basics)
{
	struct stock_latch l, s = STOCK_LATCH_INITIALIZER(true), c = STOCK_LATCH_INITIALIZER(false);
	struct timespec past = { 0, 0 };

	cr_expect_eq(stock_latch_init(NULL, false), STOCK_EINVAL);
	cr_assert_eq(stock_latch_init(&l, false), 0);
	cr_expect_not(stock_latch_is_set(&l));
	cr_expect_eq(stock_latch_wait(&l, &past), STOCK_ETIMEDOUT, "a past deadline is a check");
	stock_latch_set(&l);
	cr_expect(stock_latch_is_set(&l));
	stock_latch_set(&l); /* idempotent */
	cr_expect(stock_latch_is_set(&l));
	cr_expect_eq(stock_latch_wait(&l, NULL), 0);
	cr_expect_eq(stock_latch_wait(&l, &past), 0);
	cr_expect(stock_latch_is_set(&l), "a wait consumes nothing");
	stock_latch_clear(&l);
	cr_expect_not(stock_latch_is_set(&l));
	stock_latch_clear(&l); /* idempotent */
	cr_expect_not(stock_latch_is_set(&l));
	cr_expect_eq(stock_latch_wait(&l, &past), STOCK_ETIMEDOUT);
	cr_expect_eq(stock_latch_waiters(&l), 0);
	stock_latch_destroy(&l);

	cr_expect(stock_latch_is_set(&s));
	cr_expect_eq(stock_latch_wait(&s, NULL), 0);
	cr_expect_not(stock_latch_is_set(&c));
	cr_assert_eq(stock_latch_init(&l, true), 0);
	cr_expect(stock_latch_is_set(&l));

	cr_expect_eq(stock_latch_wait(NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_latch_waiters(NULL), 0);
	stock_latch_set(NULL);
	stock_latch_clear(NULL);
	stock_latch_destroy(NULL);
}

Test(latch, timeout_honoured)
{
	struct stock_latch l = STOCK_LATCH_INITIALIZER(false);
	struct timespec dl;
	uint64_t t0 = stock_now_ns();

	cr_assert_eq(stock_deadline_in(&dl, 30), 0);
	cr_expect_eq(stock_latch_wait(&l, &dl), STOCK_ETIMEDOUT);
	cr_expect_geq(stock_now_ns() - t0, 30 * 1000000ULL, "returned before the deadline");
	cr_expect_eq(stock_latch_waiters(&l), 0);
	stock_latch_set(&l);
	cr_assert_eq(stock_deadline_in(&dl, 30), 0);
	cr_expect_eq(stock_latch_wait(&l, &dl), 0);
}

/* ---- set wakes everyone, and publishes what was written before it -------- */

#define LATCH_WAITERS 8

struct wake_all {
	struct stock_latch go;
	uint64_t payload; /* plain: written before set, read after wait */
	int ok;           /* ck_pr: waiters that saw the payload */
};

static void *
wait_payload(void *arg)
{
	struct wake_all *w = arg;

	cr_assert_eq(stock_latch_wait(&w->go, NULL), 0);
	if (w->payload == 0x5ca1ab1e)
		ck_pr_inc_int(&w->ok);
	return NULL;
}

Test(latch, set_wakes_every_waiter, .timeout = 60)
{
	struct wake_all w = { STOCK_LATCH_INITIALIZER(false), 0, 0 };
	pthread_t t[LATCH_WAITERS];

	for (int i = 0; i < LATCH_WAITERS; i++)
		pthread_create(&t[i], NULL, wait_payload, &w);
	cr_assert(await_waiters(&w.go, LATCH_WAITERS), "waiters did not sleep");
	w.payload = 0x5ca1ab1e;
	stock_latch_set(&w.go);
	for (int i = 0; i < LATCH_WAITERS; i++)
		pthread_join(t[i], NULL);
	cr_expect_eq(w.ok, LATCH_WAITERS);
	cr_expect_eq(stock_latch_waiters(&w.go), 0);
	cr_expect(stock_latch_is_set(&w.go));
}

/*
 * Pulses: every round, all waiters are asleep, then set() is followed at
 * once by clear(). Each of them must still return 0 (it was waiting when the
 * latch was set); an implementation that only re-reads the flag after
 * waking would leave them asleep and hang the test.
 */
#define PULSE_WAITERS 4
#define PULSE_ROUNDS 1000

struct pulse {
	struct stock_latch l;    /* pulsed */
	struct stock_latch back; /* set by the last waiter of a round */
	int passed;              /* ck_pr: waits that returned 0 */
	int bad;                 /* ck_pr: waits that returned anything else */
	int round;               /* ck_pr: the round main is in */
};

static void *
pulse_waiter(void *arg)
{
	struct pulse *p = arg;

	for (int r = 0; r < PULSE_ROUNDS; r++) {
		/* Wait on l only once main has cleared it after the last pulse. */
		while (ck_pr_load_int(&p->round) != r)
			sched_yield();
		if (stock_latch_wait(&p->l, NULL) != 0)
			ck_pr_inc_int(&p->bad);
		if (ck_pr_faa_int(&p->passed, 1) + 1 == PULSE_WAITERS * (r + 1))
			stock_latch_set(&p->back);
	}
	return NULL;
}

Test(latch, set_then_clear_releases_sleepers, .timeout = 120)
{
	struct pulse p = { STOCK_LATCH_INITIALIZER(false), STOCK_LATCH_INITIALIZER(false), 0, 0, 0 };
	pthread_t t[PULSE_WAITERS];

	for (int i = 0; i < PULSE_WAITERS; i++)
		pthread_create(&t[i], NULL, pulse_waiter, &p);
	for (int r = 0; r < PULSE_ROUNDS; r++) {
		cr_assert(await_waiters(&p.l, PULSE_WAITERS), "round %d: waiters did not sleep", r);
		stock_latch_set(&p.l);
		stock_latch_clear(&p.l);
		cr_assert_eq(stock_latch_wait(&p.back, NULL), 0);
		stock_latch_clear(&p.back);
		cr_assert_eq(ck_pr_load_int(&p.passed), PULSE_WAITERS * (r + 1), "round %d", r);
		ck_pr_store_int(&p.round, r + 1);
	}
	for (int i = 0; i < PULSE_WAITERS; i++)
		pthread_join(t[i], NULL);
	cr_expect_eq(p.bad, 0);
	cr_expect_not(stock_latch_is_set(&p.l));
}

/*
 * Phases: a sense-reversing barrier built from latches, with no sleeping
 * guaranteed — waiters arrive while main is setting, clearing and waiting, so
 * every interleaving of fast path, registration and sleep gets exercised.
 * Some waits use short deadlines and retry; a timed-out wait must have
 * passed its deadline. A lost wake-up hangs the test.
 */
#define PHASE_WAITERS 4
#define PHASE_ROUNDS 3000

struct phases {
	struct stock_latch go[2];
	struct stock_latch back;
	int arrived;   /* ck_pr */
	int early;     /* ck_pr: returned 0 though the round had not started */
	int early_to;  /* ck_pr: ETIMEDOUT before the deadline */
	int round;     /* ck_pr: the round main has started */
};

static void *
phase_waiter(void *arg)
{
	struct phases *p = arg;

	for (int r = 0; r < PHASE_ROUNDS; r++) {
		struct stock_latch *go = &p->go[r & 1];
		int rc;

		if (r % 3 == 0) {
			struct timespec dl;

			do {
				stock_deadline_in(&dl, 1);
				rc = stock_latch_wait(go, &dl);
				if (rc == STOCK_ETIMEDOUT &&
				    stock_now_ns() < (uint64_t)dl.tv_sec * 1000000000ULL + (uint64_t)dl.tv_nsec)
					ck_pr_inc_int(&p->early_to);
			} while (rc == STOCK_ETIMEDOUT);
		} else {
			rc = stock_latch_wait(go, NULL);
		}
		cr_assert_eq(rc, 0);
		if (ck_pr_load_int(&p->round) != r)
			ck_pr_inc_int(&p->early);
		if (ck_pr_faa_int(&p->arrived, 1) + 1 == PHASE_WAITERS * (r + 1))
			stock_latch_set(&p->back);
	}
	return NULL;
}

Test(latch, no_lost_wakeups_phases, .timeout = 120)
{
	struct phases p = {
		{ STOCK_LATCH_INITIALIZER(false), STOCK_LATCH_INITIALIZER(false) },
		STOCK_LATCH_INITIALIZER(false), 0, 0, 0, -1
	};
	pthread_t t[PHASE_WAITERS];

	for (int i = 0; i < PHASE_WAITERS; i++)
		pthread_create(&t[i], NULL, phase_waiter, &p);
	for (int r = 0; r < PHASE_ROUNDS; r++) {
		ck_pr_store_int(&p.round, r);
		stock_latch_set(&p.go[r & 1]);
		cr_assert_eq(stock_latch_wait(&p.back, NULL), 0);
		stock_latch_clear(&p.back);
		/* Nobody waits on go[r & 1] again before round r + 2 starts. */
		stock_latch_clear(&p.go[r & 1]);
	}
	for (int i = 0; i < PHASE_WAITERS; i++)
		pthread_join(t[i], NULL);
	cr_expect_eq(p.arrived, PHASE_WAITERS * PHASE_ROUNDS);
	cr_expect_eq(p.early, 0, "a wait returned before its round was set");
	cr_expect_eq(p.early_to, 0, "a wait timed out before its deadline");
}

/* A stop flag: workers poll is_set() on their hot path and sleep between
 * batches with a deadline; a set() mid-sleep ends every one of them. */
struct stopper {
	struct stock_latch stop;
	int stopped; /* ck_pr */
};

static void *
stop_worker(void *arg)
{
	struct stopper *s = arg;
	struct timespec dl;

	while (!stock_latch_is_set(&s->stop)) {
		stock_deadline_in(&dl, 50);
		if (stock_latch_wait(&s->stop, &dl) == 0)
			break;
	}
	ck_pr_inc_int(&s->stopped);
	return NULL;
}

Test(latch, stop_flag_with_deadlines, .timeout = 60)
{
	struct stopper s = { STOCK_LATCH_INITIALIZER(false), 0 };
	pthread_t t[4];

	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, stop_worker, &s);
	sleep_ms(120); /* a few deadlines pass while nothing is set */
	cr_expect_eq(ck_pr_load_int(&s.stopped), 0, "a worker stopped before the flag was set");
	stock_latch_set(&s.stop);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	cr_expect_eq(s.stopped, 4);
}

/*
 * A released waiter frees the latch at once, while the set() that released
 * it may still be returning (the store's durable appenders keep theirs on
 * the stack). Under ASan a set() that touched the latch after its CAS is a
 * heap-use-after-free here; plain, the poison pattern written over the freed
 * latch's successor must survive.
 */
struct handoff {
	struct stock_latch *slot;  /* published by the waiter (ck_pr) */
	struct stock_latch ready;          /* the waiter published a new slot */
};

static void *
handoff_setter(void *arg)
{
	struct handoff *h = arg;

	for (int i = 0; i < 20000; i++) {
		struct stock_latch *l;

		while (stock_latch_wait(&h->ready, NULL) != 0)
			;
		stock_latch_clear(&h->ready);
		l = ck_pr_load_ptr(&h->slot);
		stock_latch_set(l); /* the waiter may free l from here on */
	}
	return NULL;
}

Test(latch, free_right_after_wait, .timeout = 120)
{
	struct handoff h = { NULL, STOCK_LATCH_INITIALIZER(false) };
	pthread_t t;

	cr_assert_eq(pthread_create(&t, NULL, handoff_setter, &h), 0);
	for (int i = 0; i < 20000; i++) {
		struct stock_latch *l = malloc(sizeof *l);

		cr_assert_not_null(l);
		cr_assert_eq(stock_latch_init(l, false), 0);
		ck_pr_store_ptr(&h.slot, l);
		stock_latch_set(&h.ready);
		cr_assert_eq(stock_latch_wait(l, NULL), 0);
		stock_latch_destroy(l);
		memset(l, 0xa5, sizeof *l); /* what a reuse of the memory would write */
		free(l);
	}
	pthread_join(t, NULL);
}
