/*
 * Circuit breaker: every transition, both trip rules, backoff and its cap,
 * bounded HalfOpen probes under contention, exactly one winner (and one
 * callback) per transition, isolation beating concurrent traffic, waiting.
 * Open periods run on a fake clock, so nothing here sleeps for them.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include <stock.h>

/* ---- helpers (br_ prefix: all unit tests link into one binary) ---------- */

struct br_clock {
	uint64_t now; /* ck_pr */
};

static uint64_t
br_clock_now(void *arg)
{
	return ck_pr_load_64(&((struct br_clock *)arg)->now);
}

static void
br_clock_advance(struct br_clock *c, uint64_t ns)
{
	ck_pr_add_64(&c->now, ns);
}

/* Transition callback counts, indexed [from][to]. */
struct br_log {
	uint64_t n[3][3]; /* ck_pr */
};

static void
br_log_change(void *arg, enum stock_breaker_state from, enum stock_breaker_state to)
{
	ck_pr_inc_64(&((struct br_log *)arg)->n[from][to]);
}

static uint64_t
br_log_get(struct br_log *l, enum stock_breaker_state from, enum stock_breaker_state to)
{
	return ck_pr_load_64(&l->n[from][to]);
}

static void
br_config(struct stock_breaker_config *cfg, struct br_clock *clk, struct br_log *log)
{
	cr_assert_eq(stock_breaker_config_default(cfg), 0);
	cfg->failure_threshold = 3;
	cfg->open_ns = 1000;
	cfg->backoff_mult = 2;
	cfg->max_open_ns = 5000;
	cfg->half_open_probes = 1;
	cfg->now_ns = br_clock_now;
	cfg->now_arg = clk;
	cfg->on_change = br_log_change;
	cfg->on_change_arg = log;
}

/* One call through the breaker with the given outcome; returns allow()'s answer. */
static int
br_call(struct stock_breaker *b, bool ok)
{
	struct stock_breaker_token tok;
	int r = stock_breaker_allow(b, &tok);

	if (r == 0)
		cr_assert_eq(ok ? stock_breaker_success(b, tok) : stock_breaker_failure(b, tok), 0);
	return r;
}

static void
br_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Spin-then-start barrier for the concurrency tests. */
struct br_gate {
	unsigned int arrived; /* ck_pr */
	unsigned int go;      /* ck_pr */
};

static void
br_gate_pass(struct br_gate *g)
{
	ck_pr_inc_uint(&g->arrived);
	while (ck_pr_load_uint(&g->go) == 0)
		sched_yield();
}

static void
br_gate_open(struct br_gate *g, unsigned int n)
{
	while (ck_pr_load_uint(&g->arrived) < n)
		sched_yield();
	ck_pr_store_uint(&g->go, 1);
}

/* ---- configuration ------------------------------------------------------ */

Test(breaker, init_defaults_and_bad_config)
{
	struct stock_breaker b;
	struct stock_breaker_config cfg;
	struct stock_breaker_stats st;
	struct stock_breaker_token tok = { 0, 0 };

	cr_assert_eq(stock_breaker_init(&b, NULL), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	cr_expect_not(stock_breaker_isolated(&b));
	cr_assert_eq(stock_breaker_stats(&b, &st), 0);
	cr_expect_eq(st.transitions, 0);
	cr_expect_eq(st.backoff_level, 0);
	stock_breaker_destroy(&b);

	cr_expect_eq(stock_breaker_init(NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_config_default(NULL), STOCK_EINVAL);

	stock_breaker_config_default(&cfg);
	cfg.half_open_probes = 0;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	cfg.half_open_probes = STOCK_BREAKER_PROBES_MAX + 1;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	stock_breaker_config_default(&cfg);
	cfg.failure_pct = 101;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	cfg.failure_pct = 50;
	cfg.window_calls = 10;
	cfg.min_calls = 11;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	cfg.min_calls = 10;
	cfg.window_calls = 0;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	stock_breaker_config_default(&cfg);
	cfg.failure_threshold = STOCK_BREAKER_COUNT_MAX + 1;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	stock_breaker_config_default(&cfg);
	cfg.open_ns = 10;
	cfg.max_open_ns = 9;
	cr_expect_eq(stock_breaker_init(&b, &cfg), STOCK_EINVAL);
	cfg.max_open_ns = 0; /* no cap: fine */
	cr_expect_eq(stock_breaker_init(&b, &cfg), 0);

	/* NULL arguments and a token allow() never filled. */
	cr_expect_eq(stock_breaker_allow(NULL, &tok), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_allow(&b, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_success(&b, tok), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_failure(&b, tok), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_isolate(NULL), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_close(NULL), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_wait(NULL, NULL), STOCK_EINVAL);
	cr_expect_eq(stock_breaker_stats(&b, NULL), STOCK_EINVAL);
	cr_expect_str_eq(stock_breaker_state_name(STOCK_BREAKER_HALF_OPEN), "half-open");
	cr_expect_str_eq(stock_breaker_state_name((enum stock_breaker_state)7), "unknown");
}

/* ---- transitions --------------------------------------------------------- */

Test(breaker, every_transition)
{
	struct br_clock clk = { 1000000 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_token tok;
	struct stock_breaker_stats st;

	br_config(&cfg, &clk, &log);
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);

	/* Closed: two failures, a success resets the run, then three trip. */
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(br_call(&b, true), 0);
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_CLOSED, STOCK_BREAKER_OPEN), 1);

	/* Open: rejected until open_ns has passed on the breaker's clock. */
	cr_expect_eq(stock_breaker_allow(&b, &tok), STOCK_EOPEN);
	br_clock_advance(&clk, 999);
	cr_expect_eq(stock_breaker_allow(&b, &tok), STOCK_EOPEN);
	br_clock_advance(&clk, 1);

	/* Open -> HalfOpen: this caller is the (only) probe. */
	cr_assert_eq(stock_breaker_allow(&b, &tok), 0);
	cr_expect(stock_breaker_is_probe(tok));
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_HALF_OPEN);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_OPEN, STOCK_BREAKER_HALF_OPEN), 1);
	{
		struct stock_breaker_token t2;
		cr_expect_eq(stock_breaker_allow(&b, &t2), STOCK_EOPEN, "only K=1 probe");
	}

	/* HalfOpen -> Closed on the probe's success. */
	cr_expect_eq(stock_breaker_success(&b, tok), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_HALF_OPEN, STOCK_BREAKER_CLOSED), 1);
	cr_assert_eq(stock_breaker_allow(&b, &tok), 0);
	cr_expect_not(stock_breaker_is_probe(tok));
	cr_expect_eq(stock_breaker_success(&b, tok), 0);

	/* The consecutive count starts over after a close: 2 failures do not trip. */
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	cr_expect_eq(br_call(&b, false), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);

	/* HalfOpen -> Open on the probe's failure. */
	br_clock_advance(&clk, 1000);
	cr_assert_eq(stock_breaker_allow(&b, &tok), 0);
	cr_expect_eq(stock_breaker_failure(&b, tok), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_HALF_OPEN, STOCK_BREAKER_OPEN), 1);

	/* Open -> isolated (no state change, no callback) -> Closed by hand. */
	cr_expect_eq(stock_breaker_isolate(&b), 0);
	cr_expect(stock_breaker_isolated(&b));
	br_clock_advance(&clk, 1000000);
	cr_expect_eq(stock_breaker_allow(&b, &tok), STOCK_EOPEN, "isolation never expires");
	cr_expect_eq(stock_breaker_close(&b), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	cr_expect_not(stock_breaker_isolated(&b));
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_OPEN, STOCK_BREAKER_CLOSED), 1);

	/* Closed -> isolated Open; HalfOpen -> isolated Open. */
	cr_expect_eq(stock_breaker_isolate(&b), 0);
	cr_expect_eq(stock_breaker_isolate(&b), 0); /* idempotent */
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_CLOSED, STOCK_BREAKER_OPEN), 3);
	cr_expect_eq(stock_breaker_close(&b), 0);
	cr_expect_eq(stock_breaker_close(&b), 0); /* closing a closed breaker: no-op */
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_OPEN, STOCK_BREAKER_CLOSED), 2);
	for (int i = 0; i < 3; i++)
		br_call(&b, false);
	br_clock_advance(&clk, 1000);
	cr_assert_eq(stock_breaker_allow(&b, &tok), 0);
	cr_expect_eq(stock_breaker_isolate(&b), 0);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_HALF_OPEN, STOCK_BREAKER_OPEN), 2);
	/* The stranded probe's report is stale: it cannot close the breaker. */
	cr_expect_eq(stock_breaker_success(&b, tok), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
	cr_expect(stock_breaker_isolated(&b));

	cr_assert_eq(stock_breaker_stats(&b, &st), 0);
	cr_expect_eq(st.state, STOCK_BREAKER_OPEN);
	cr_expect(st.isolated);
	cr_expect_eq(st.ignored, 1);
	cr_expect_eq(st.opens, br_log_get(&log, STOCK_BREAKER_CLOSED, STOCK_BREAKER_OPEN) +
	    br_log_get(&log, STOCK_BREAKER_HALF_OPEN, STOCK_BREAKER_OPEN));
	cr_expect_eq(st.half_opens, 3);
	cr_expect_eq(st.closes, 3);
	cr_expect_eq(st.transitions, st.opens + st.half_opens + st.closes);
	cr_expect_eq(st.rejected, 4);
	stock_breaker_destroy(&b);
}

Test(breaker, stale_closed_outcomes_ignored)
{
	struct br_clock clk = { 1 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_token old[3];
	struct stock_breaker_stats st;

	br_config(&cfg, &clk, &log);
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(stock_breaker_allow(&b, &old[i]), 0);
	/* Reset while the calls are in flight: their failures belong to the old
	 * Closed period and must not trip the new one. */
	stock_breaker_isolate(&b);
	stock_breaker_close(&b);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(stock_breaker_failure(&b, old[i]), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	stock_breaker_stats(&b, &st);
	cr_expect_eq(st.ignored, 3);
	cr_expect_eq(st.failures, 3);
}

Test(breaker, counts_reset_across_many_generations)
{
	struct br_clock clk = { 1 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_stats st;

	br_config(&cfg, &clk, &log);
	cfg.on_change = NULL;
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	br_call(&b, false);
	br_call(&b, false); /* 2 of 3 */
	/* More isolate/close cycles than the 16-bit tag of the counts can tell
	 * apart, with no traffic in between. */
	for (int i = 0; i < 40000; i++) {
		stock_breaker_isolate(&b);
		stock_breaker_close(&b);
	}
	stock_breaker_stats(&b, &st);
	cr_expect_eq(st.generation, 80000);
	br_call(&b, false);
	br_call(&b, false);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED, "old failures leaked");
	br_call(&b, false);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN, "new failures not counted");
}

Test(breaker, ratio_trip_needs_min_calls)
{
	struct br_clock clk = { 1 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;

	br_config(&cfg, &clk, &log);
	cfg.failure_threshold = 0; /* ratio rule only */
	cfg.failure_pct = 50;
	cfg.window_calls = 10;
	cfg.min_calls = 6;
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);

	/* 5 calls, 4 failures (80%): below min_calls, no trip. */
	br_call(&b, false);
	br_call(&b, false);
	br_call(&b, false);
	br_call(&b, false);
	br_call(&b, true);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	/* 6th call a success: 4/6 fails but only failures trip. */
	br_call(&b, true);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	/* 7th a failure: 5/7 >= 50% with 7 >= 6 calls: trip. */
	br_call(&b, false);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_CLOSED, STOCK_BREAKER_OPEN), 1);

	/* The window starts over every 10 calls: after 9 successes and a
	 * failure (1/10) the counts reset, so the next failure is 1/1, below
	 * min_calls, and after four successes the window holds 1/5. */
	stock_breaker_close(&b);
	for (int i = 0; i < 9; i++)
		br_call(&b, true);
	br_call(&b, false); /* 10th call: 1/10, window resets */
	br_call(&b, false); /* new window: 1/1, below min_calls */
	for (int i = 0; i < 4; i++)
		br_call(&b, true);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	br_call(&b, false);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED, "2/6 < 50%%");
	br_call(&b, false);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED, "3/7 < 50%%");
	br_call(&b, false);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN, "4/8 >= 50%%");
}

Test(breaker, backoff_grows_and_is_capped)
{
	struct br_clock clk = { 5 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_token tok;
	struct stock_breaker_stats st;
	/* open 1000, x2 per re-open, cap 5000 */
	const uint64_t expect[] = { 1000, 2000, 4000, 5000, 5000 };

	br_config(&cfg, &clk, &log);
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	for (int i = 0; i < 3; i++)
		br_call(&b, false);
	for (unsigned i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
		cr_assert_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
		stock_breaker_stats(&b, &st);
		cr_expect_eq(st.backoff_level, i);
		br_clock_advance(&clk, expect[i] - 1);
		cr_expect_eq(stock_breaker_allow(&b, &tok), STOCK_EOPEN, "step %u opened early", i);
		br_clock_advance(&clk, 1);
		cr_assert_eq(stock_breaker_allow(&b, &tok), 0, "step %u still open", i);
		cr_expect_eq(stock_breaker_failure(&b, tok), 0); /* re-open, next step */
	}
	/* A successful probe closes and resets the backoff. */
	br_clock_advance(&clk, 5000);
	cr_assert_eq(stock_breaker_allow(&b, &tok), 0);
	cr_expect_eq(stock_breaker_success(&b, tok), 0);
	stock_breaker_stats(&b, &st);
	cr_expect_eq(st.backoff_level, 0);
	for (int i = 0; i < 3; i++)
		br_call(&b, false);
	br_clock_advance(&clk, 999);
	cr_expect_eq(stock_breaker_allow(&b, &tok), STOCK_EOPEN);
	br_clock_advance(&clk, 1);
	cr_expect_eq(stock_breaker_allow(&b, &tok), 0, "back to the base duration");
}

Test(breaker, k_probes_all_must_succeed)
{
	struct br_clock clk = { 5 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_token t[4];

	br_config(&cfg, &clk, &log);
	cfg.half_open_probes = 3;
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	for (int i = 0; i < 3; i++)
		br_call(&b, false);
	br_clock_advance(&clk, 1000);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(stock_breaker_allow(&b, &t[i]), 0);
		cr_expect(stock_breaker_is_probe(t[i]));
	}
	cr_expect_eq(stock_breaker_allow(&b, &t[3]), STOCK_EOPEN);
	cr_expect_eq(stock_breaker_wait(&b, &(struct timespec){ 0, 0 }), STOCK_ETIMEDOUT,
	    "no free probe slot: not admissible");
	stock_breaker_success(&b, t[0]);
	stock_breaker_success(&b, t[1]);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_HALF_OPEN);
	stock_breaker_success(&b, t[2]);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
	cr_expect_eq(br_log_get(&log, STOCK_BREAKER_HALF_OPEN, STOCK_BREAKER_CLOSED), 1);
}

/* ---- concurrency --------------------------------------------------------- */

#define BR_THREADS 8

struct br_probe_arg {
	struct stock_breaker *b;
	struct br_gate *gate;
	uint64_t admitted; /* ck_pr */
	uint64_t probes;   /* ck_pr */
};

static void *
br_probe_storm(void *arg)
{
	struct br_probe_arg *a = arg;
	struct stock_breaker_token tok;

	br_gate_pass(a->gate);
	for (int i = 0; i < 2000; i++) {
		if (stock_breaker_allow(a->b, &tok) == 0) {
			ck_pr_inc_64(&a->admitted);
			if (stock_breaker_is_probe(tok))
				ck_pr_inc_64(&a->probes);
		}
	}
	return NULL;
}

Test(breaker, half_open_admits_exactly_k_concurrently)
{
	struct br_clock clk = { 5 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	pthread_t th[BR_THREADS];

	br_config(&cfg, &clk, &log);
	cfg.half_open_probes = 5;
	for (int round = 0; round < 20; round++) {
		struct br_gate gate = { 0, 0 };
		struct br_probe_arg a = { &b, &gate, 0, 0 };

		memset(&log, 0, sizeof(log));
		cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
		for (int i = 0; i < 3; i++)
			br_call(&b, false);
		br_clock_advance(&clk, 1000); /* expired: the storm races Open -> HalfOpen */
		for (int i = 0; i < BR_THREADS; i++)
			pthread_create(&th[i], NULL, br_probe_storm, &a);
		br_gate_open(&gate, BR_THREADS);
		for (int i = 0; i < BR_THREADS; i++)
			pthread_join(th[i], NULL);
		cr_assert_eq(ck_pr_load_64(&a.admitted), 5, "round %d: %llu admitted", round,
		    (unsigned long long)a.admitted);
		cr_assert_eq(ck_pr_load_64(&a.probes), 5);
		cr_assert_eq(br_log_get(&log, STOCK_BREAKER_OPEN, STOCK_BREAKER_HALF_OPEN), 1);
		cr_assert_eq(stock_breaker_state(&b), STOCK_BREAKER_HALF_OPEN);
		stock_breaker_destroy(&b);
	}
}

struct br_fail_arg {
	struct stock_breaker *b;
	struct br_gate *gate;
	bool ok; /* outcome to report */
	struct stock_breaker_token tok[BR_THREADS];
	uint64_t next; /* ck_pr: index of the next token */
};

static void *
br_fail_storm(void *arg)
{
	struct br_fail_arg *a = arg;
	struct stock_breaker_token tok;

	if (stock_breaker_allow(a->b, &tok) != 0)
		return NULL;
	br_gate_pass(a->gate);
	/* Everyone reports at once; several cross the threshold together. */
	for (int i = 0; i < 4; i++) {
		if (a->ok)
			stock_breaker_success(a->b, tok);
		else
			stock_breaker_failure(a->b, tok);
	}
	return NULL;
}

Test(breaker, exactly_one_thread_wins_closed_to_open)
{
	struct br_clock clk = { 5 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_stats st;
	pthread_t th[BR_THREADS];

	br_config(&cfg, &clk, &log);
	cfg.failure_threshold = 2;
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	for (int round = 1; round <= 50; round++) {
		struct br_gate gate = { 0, 0 };
		struct br_fail_arg a = { .b = &b, .gate = &gate, .ok = false };

		for (int i = 0; i < BR_THREADS; i++)
			pthread_create(&th[i], NULL, br_fail_storm, &a);
		br_gate_open(&gate, BR_THREADS);
		for (int i = 0; i < BR_THREADS; i++)
			pthread_join(th[i], NULL);
		cr_assert_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
		cr_assert_eq(br_log_get(&log, STOCK_BREAKER_CLOSED, STOCK_BREAKER_OPEN),
		    (uint64_t)round, "round %d: more than one winner", round);
		stock_breaker_close(&b);
	}
	stock_breaker_stats(&b, &st);
	cr_expect_eq(st.opens, 50);
	cr_expect_eq(st.closes, 50);
}

static void *
br_probe_report(void *arg)
{
	struct br_fail_arg *a = arg;
	uint64_t i = ck_pr_faa_64(&a->next, 1);

	br_gate_pass(a->gate);
	if (a->ok)
		stock_breaker_success(a->b, a->tok[i]);
	else
		stock_breaker_failure(a->b, a->tok[i]);
	return NULL;
}

Test(breaker, exactly_one_thread_wins_half_open_outcome)
{
	struct br_clock clk = { 5 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	pthread_t th[BR_THREADS];

	br_config(&cfg, &clk, &log);
	cfg.half_open_probes = BR_THREADS;
	cfg.max_open_ns = 0;
	cfg.backoff_mult = 1;
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	for (int round = 1; round <= 40; round++) {
		struct br_gate gate = { 0, 0 };
		struct br_fail_arg a = { .b = &b, .gate = &gate, .ok = (round % 2) == 0 };
		enum stock_breaker_state to = a.ok ? STOCK_BREAKER_CLOSED : STOCK_BREAKER_OPEN;
		uint64_t before = br_log_get(&log, STOCK_BREAKER_HALF_OPEN, to);

		if (stock_breaker_state(&b) == STOCK_BREAKER_CLOSED)
			for (int i = 0; i < 3; i++)
				br_call(&b, false);
		br_clock_advance(&clk, 1000);
		for (int i = 0; i < BR_THREADS; i++)
			cr_assert_eq(stock_breaker_allow(&b, &a.tok[i]), 0);
		for (int i = 0; i < BR_THREADS; i++)
			pthread_create(&th[i], NULL, br_probe_report, &a);
		br_gate_open(&gate, BR_THREADS);
		for (int i = 0; i < BR_THREADS; i++)
			pthread_join(th[i], NULL);
		cr_assert_eq(stock_breaker_state(&b), to);
		cr_assert_eq(br_log_get(&log, STOCK_BREAKER_HALF_OPEN, to), before + 1,
		    "round %d: not exactly one winner", round);
	}
}

struct br_traffic_arg {
	struct stock_breaker *b;
	struct br_gate *gate;
	unsigned int stop; /* ck_pr */
	uint64_t calls;    /* ck_pr */
};

static void *
br_traffic(void *arg)
{
	struct br_traffic_arg *a = arg;
	struct stock_breaker_token tok;
	unsigned int i = 0;

	br_gate_pass(a->gate);
	while (ck_pr_load_uint(&a->stop) == 0) {
		if (stock_breaker_allow(a->b, &tok) == 0) {
			/* Mostly successes, the odd failure, and a close now and then. */
			if (++i % 7 == 0)
				stock_breaker_failure(a->b, tok);
			else
				stock_breaker_success(a->b, tok);
			ck_pr_inc_64(&a->calls);
		}
		if (i % 64 == 0)
			sched_yield();
	}
	return NULL;
}

Test(breaker, isolate_beats_concurrent_traffic)
{
	struct br_clock clk = { 5 };
	struct br_log log = { { { 0 } } };
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_token tok;
	pthread_t th[BR_THREADS];

	br_config(&cfg, &clk, &log);
	cfg.failure_threshold = 2;
	cfg.open_ns = 0; /* trips re-probe at once: every state is visited */
	cfg.max_open_ns = 0;
	cfg.backoff_mult = 1;
	cfg.half_open_probes = 2;
	for (int round = 0; round < 10; round++) {
		struct br_gate gate = { 0, 0 };
		struct br_traffic_arg a = { &b, &gate, 0, 0 };
		uint64_t seen;

		cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
		for (int i = 0; i < BR_THREADS; i++)
			pthread_create(&th[i], NULL, br_traffic, &a);
		br_gate_open(&gate, BR_THREADS);
		while (ck_pr_load_64(&a.calls) < 2000)
			sched_yield();
		cr_assert_eq(stock_breaker_isolate(&b), 0);
		/* Once isolate returns, nothing the traffic does may undo it. */
		cr_assert_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
		cr_assert(stock_breaker_isolated(&b));
		seen = ck_pr_load_64(&a.calls);
		br_sleep_ms(5);
		cr_assert_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
		cr_assert(stock_breaker_isolated(&b));
		cr_expect_eq(stock_breaker_allow(&b, &tok), STOCK_EOPEN);
		ck_pr_store_uint(&a.stop, 1);
		for (int i = 0; i < BR_THREADS; i++)
			pthread_join(th[i], NULL);
		/* Calls admitted before the isolation may still have completed;
		 * none can have been admitted long after it. */
		cr_assert_leq(ck_pr_load_64(&a.calls), seen + BR_THREADS);
		cr_assert(stock_breaker_isolated(&b));
		stock_breaker_destroy(&b);
	}
}

/* ---- waiting --------------------------------------------------------------- */

struct br_waiter_arg {
	struct stock_breaker *b;
	const struct timespec *deadline;
	unsigned int started; /* ck_pr */
	int result;           /* ck_pr */
	bool allow;           /* use allow_wait instead of wait */
};

static void *
br_waiter(void *arg)
{
	struct br_waiter_arg *a = arg;
	struct stock_breaker_token tok;
	int r;

	ck_pr_store_uint(&a->started, 1);
	if (a->allow) {
		r = stock_breaker_allow_wait(a->b, &tok, a->deadline);
		if (r == 0)
			stock_breaker_success(a->b, tok);
	} else {
		r = stock_breaker_wait(a->b, a->deadline);
	}
	ck_pr_store_int(&a->result, r);
	return NULL;
}

Test(breaker, wait_wakes_on_close)
{
	struct stock_breaker b;
	struct timespec dl;
	pthread_t th[2];
	struct br_waiter_arg a[2];

	cr_assert_eq(stock_breaker_init(&b, NULL), 0);
	cr_expect_eq(stock_breaker_wait(&b, NULL), 0, "closed: returns at once");
	stock_breaker_isolate(&b);
	cr_assert_eq(stock_deadline_in(&dl, 20000), 0); /* generous: never reached */
	for (int i = 0; i < 2; i++) {
		a[i] = (struct br_waiter_arg){ &b, i == 0 ? NULL : &dl, 0, 1, i == 1 };
		pthread_create(&th[i], NULL, br_waiter, &a[i]);
	}
	for (int i = 0; i < 2; i++)
		while (ck_pr_load_uint(&a[i].started) == 0)
			sched_yield();
	br_sleep_ms(20);
	cr_expect_eq(ck_pr_load_int(&a[0].result), 1, "waiter returned while isolated");
	cr_expect_eq(ck_pr_load_int(&a[1].result), 1, "waiter returned while isolated");
	stock_breaker_close(&b);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].result, 0);
	}
	stock_breaker_destroy(&b);
}

Test(breaker, wait_times_out)
{
	struct stock_breaker b;
	struct stock_breaker_token tok;
	struct stock_breaker_stats st;
	struct timespec dl;
	uint64_t t0;

	cr_assert_eq(stock_breaker_init(&b, NULL), 0);
	stock_breaker_isolate(&b);
	cr_assert_eq(stock_deadline_in(&dl, 30), 0);
	t0 = stock_now_ns();
	cr_expect_eq(stock_breaker_wait(&b, &dl), STOCK_ETIMEDOUT);
	cr_expect_geq(stock_now_ns() - t0, 30 * 1000000ULL, "returned before the deadline");
	cr_assert_eq(stock_deadline_in(&dl, 20), 0);
	t0 = stock_now_ns();
	cr_expect_eq(stock_breaker_allow_wait(&b, &tok, &dl), STOCK_ETIMEDOUT);
	cr_expect_geq(stock_now_ns() - t0, 20 * 1000000ULL);
	stock_breaker_stats(&b, &st);
	cr_expect_eq(st.rejected, 1);
	/* A past deadline polls. */
	cr_expect_eq(stock_breaker_wait(&b, &(struct timespec){ 0, 0 }), STOCK_ETIMEDOUT);
	stock_breaker_close(&b);
	cr_expect_eq(stock_breaker_wait(&b, &(struct timespec){ 0, 0 }), 0);
}

Test(breaker, wait_wakes_when_open_period_ends)
{
	struct stock_breaker_config cfg;
	struct stock_breaker b;
	struct stock_breaker_token tok;
	struct timespec dl;
	uint64_t t0;

	/* Real clock: open for 20 ms; nobody calls allow() meanwhile, so only
	 * the timed wake-up can end the wait. */
	stock_breaker_config_default(&cfg);
	cfg.failure_threshold = 1;
	cfg.open_ns = 20 * 1000000ULL;
	cr_assert_eq(stock_breaker_init(&b, &cfg), 0);
	cr_assert_eq(stock_breaker_allow(&b, &tok), 0);
	t0 = stock_now_ns();
	stock_breaker_failure(&b, tok);
	cr_assert_eq(stock_breaker_state(&b), STOCK_BREAKER_OPEN);
	cr_assert_eq(stock_deadline_in(&dl, 20000), 0);
	cr_expect_eq(stock_breaker_wait(&b, &dl), 0);
	cr_expect_geq(stock_now_ns() - t0, 20 * 1000000ULL, "woke before the period ended");
	cr_expect_eq(stock_breaker_allow_wait(&b, &tok, &dl), 0);
	cr_expect(stock_breaker_is_probe(tok));
	cr_expect_eq(stock_breaker_success(&b, tok), 0);
	cr_expect_eq(stock_breaker_state(&b), STOCK_BREAKER_CLOSED);
}
