/*
 * Circuit breaker on one atomic state word (ck_pr) with sleeping waiters
 * (ck_ec).
 *
 * The state word holds everything that must change together:
 *
 *   bits  0..1   state: Closed 0, Open 1, HalfOpen 2
 *   bit   2      isolated (forced Open; only stock_breaker_close clears it)
 *   bits  3..8   backoff level: consecutive re-opens from HalfOpen (0..63)
 *   bits  9..19  probes admitted in this HalfOpen period
 *   bits 20..30  probe successes in this HalfOpen period
 *   bits 32..63  generation, incremented by every transition
 *
 * A transition is one CAS from the word the thread read to a word with the
 * new state and generation + 1. Two threads that read the same word race
 * for one CAS: exactly one wins, and only the winner publishes the side
 * effects (open deadline, fresh Closed counts), bumps the event count and
 * runs on_change. A thread whose CAS fails re-reads the word; seeing a new
 * generation it knows its transition was made (or overtaken) by someone else.
 * Admitting a HalfOpen probe is a CAS on the probe count, so at most K are
 * admitted per HalfOpen period, and the K-th success closes in the same CAS
 * that counts it. The isolate flag is part of the word, so isolate's CAS
 * loop wins against every transition, and every other transition refuses to
 * start from an isolated word.
 *
 * Tokens carry the generation a call was admitted in. Outcomes are applied
 * only when their generation is still current, so a slow call admitted while
 * Closed cannot re-trip a breaker that has since been reset, nor a stale
 * probe close a newer HalfOpen period.
 *
 * Closed-state outcome counting lives in a second word (`counts`: consecutive
 * failures, window calls, window failures) tagged with the low 16 bits of the
 * Closed generation it belongs to. The winner of every transition into Closed
 * installs fresh counts with its tag (by CAS, so that a report of the new
 * period that got there first is kept). A report whose tag does not match
 * re-reads the state word: if its period is still current, the counts are
 * left over from an older one and it starts from zero, otherwise the report
 * is dropped. So counts do not leak between Closed periods and need no lock
 * (a leftover could only be mistaken for current if the word went untouched
 * for an exact multiple of 65536 transitions). The decision to
 * trip is still taken by the CAS on the state word.
 *
 * The open deadline does not fit in the word. The winner of a transition into
 * Open stores `open_until` and then `open_gen` (its generation, with a store
 * fence in between); readers accept open_until only when open_gen matches
 * the generation they read, and any decision they base on it is a CAS on the
 * state word that fails if the generation moved on. Until the winner has
 * published, the period simply counts as not yet over.
 *
 * Waiters sample the event count, then read the word; transitions CAS the
 * word, then bump the event count: a waiter that saw the old word is woken.
 */
#include "stock/breaker.h"
#include "internal.h"

#define STOCK__BR_STATE_MASK 0x3ULL
#define STOCK__BR_ISOLATED (1ULL << 2)
#define STOCK__BR_LEVEL_SHIFT 3
#define STOCK__BR_LEVEL_MASK 0x3fULL
#define STOCK__BR_ADMIT_SHIFT 9
#define STOCK__BR_ADMIT_MASK 0x7ffULL
#define STOCK__BR_OK_SHIFT 20
#define STOCK__BR_OK_MASK 0x7ffULL
#define STOCK__BR_GEN_SHIFT 32

/* The public struct stores the event count as a plain word (so that the
 * header needs no ck_ec.h); it has struct ck_ec32's layout. */
#define STOCK__BR_EC(b) ((struct ck_ec32 *)(void *)&(b)->ec)
_Static_assert(sizeof(struct ck_ec32) == sizeof(uint32_t), "ck_ec32 is one 32-bit word");

#define STOCK__BR_TOK_VALID 1u
#define STOCK__BR_TOK_PROBE 2u

/* Poll interval for open-period expiry when the clock is not CLOCK_MONOTONIC. */
#define STOCK__BR_POLL_NS 1000000ULL

/* ---- word helpers ------------------------------------------------------- */

static inline enum stock_breaker_state
stock__br_state(uint64_t w)
{
	return (enum stock_breaker_state)(w & STOCK__BR_STATE_MASK);
}

static inline bool
stock__br_isolated(uint64_t w)
{
	return (w & STOCK__BR_ISOLATED) != 0;
}

static inline uint32_t
stock__br_level(uint64_t w)
{
	return (uint32_t)((w >> STOCK__BR_LEVEL_SHIFT) & STOCK__BR_LEVEL_MASK);
}

static inline uint32_t
stock__br_admitted(uint64_t w)
{
	return (uint32_t)((w >> STOCK__BR_ADMIT_SHIFT) & STOCK__BR_ADMIT_MASK);
}

static inline uint32_t
stock__br_oks(uint64_t w)
{
	return (uint32_t)((w >> STOCK__BR_OK_SHIFT) & STOCK__BR_OK_MASK);
}

static inline uint32_t
stock__br_gen(uint64_t w)
{
	return (uint32_t)(w >> STOCK__BR_GEN_SHIFT);
}

/* A word for the period after @w: new state, generation + 1, no probes. */
static inline uint64_t
stock__br_next(uint64_t w, enum stock_breaker_state st, bool isolated, uint32_t level)
{
	uint32_t gen = stock__br_gen(w) + 1;

	return ((uint64_t)gen << STOCK__BR_GEN_SHIFT) |
	    ((uint64_t)(level & STOCK__BR_LEVEL_MASK) << STOCK__BR_LEVEL_SHIFT) |
	    (isolated ? STOCK__BR_ISOLATED : 0) | (uint64_t)st;
}

/* ---- closed-state counts word --------------------------------------------
 *   bits 0..15 window failures, 16..31 window calls, 32..47 consecutive
 *   failures, 48..63 low 16 bits of the Closed generation they belong to.
 */
#define STOCK__BR_C_FAILS(c) ((uint32_t)((c)&0xffff))
#define STOCK__BR_C_CALLS(c) ((uint32_t)(((c) >> 16) & 0xffff))
#define STOCK__BR_C_CONSEC(c) ((uint32_t)(((c) >> 32) & 0xffff))
#define STOCK__BR_C_TAG(c) ((uint16_t)((c) >> 48))

static inline uint64_t
stock__br_counts(uint16_t tag, uint32_t consec, uint32_t calls, uint32_t fails)
{
	return ((uint64_t)tag << 48) | ((uint64_t)consec << 32) | ((uint64_t)calls << 16) |
	    (uint64_t)fails;
}

/* ---- time ----------------------------------------------------------------- */

static inline uint64_t
stock__br_now(const struct stock_breaker *b)
{
	return b->cfg.now_ns != NULL ? b->cfg.now_ns(b->cfg.now_arg) : stock_now_ns();
}

/* open_ns * backoff_mult^level, saturating, capped at max_open_ns. */
static uint64_t
stock__br_open_duration(const struct stock_breaker *b, uint32_t level)
{
	uint64_t cap = b->cfg.max_open_ns != 0 ? b->cfg.max_open_ns : UINT64_MAX;
	uint64_t d = b->cfg.open_ns;
	uint32_t i;

	if (b->cfg.backoff_mult > 1) {
		for (i = 0; i < level && d < cap; i++) {
			if (d > cap / b->cfg.backoff_mult) {
				d = cap;
				break;
			}
			d *= b->cfg.backoff_mult;
		}
	}
	return d < cap ? d : cap;
}

/*
 * Whether the open period of word @w (Open, not isolated) is over. False
 * while the winner of that transition has not published its deadline yet.
 */
static bool
stock__br_open_expired(const struct stock_breaker *b, uint64_t w, uint64_t *until)
{
	if (ck_pr_load_64(&b->open_gen) != stock__br_gen(w))
		return false;
	ck_pr_fence_load();
	*until = ck_pr_load_64(&b->open_until);
	return stock__br_now(b) >= *until;
}

/* ---- transitions -------------------------------------------------------- */

/* The winner's duties after its CAS from @old to @new succeeded. */
static void
stock__br_won(struct stock_breaker *b, uint64_t old, uint64_t new)
{
	enum stock_breaker_state from = stock__br_state(old), to = stock__br_state(new);
	uint64_t now, d, until;

	if (to == STOCK_BREAKER_OPEN && !stock__br_isolated(new)) {
		now = stock__br_now(b);
		d = stock__br_open_duration(b, stock__br_level(new));
		until = now > UINT64_MAX - d ? UINT64_MAX : now + d;
		ck_pr_store_64(&b->open_until, until);
		ck_pr_fence_store();
		ck_pr_store_64(&b->open_gen, stock__br_gen(new));
	}
	if (to == STOCK_BREAKER_CLOSED) {
		/* Fresh counts for the new period, unless a report of this period
		 * already started them (then its count must not be wiped). */
		uint16_t tag = (uint16_t)stock__br_gen(new);
		uint64_t c = ck_pr_load_64(&b->counts);

		while (STOCK__BR_C_TAG(c) != tag &&
		    !ck_pr_cas_64_value(&b->counts, c, stock__br_counts(tag, 0, 0, 0), &c))
			ck_pr_stall();
	}
	if (from != to) {
		if (to == STOCK_BREAKER_OPEN)
			ck_pr_inc_64(&b->opens);
		else if (to == STOCK_BREAKER_HALF_OPEN)
			ck_pr_inc_64(&b->half_opens);
		else
			ck_pr_inc_64(&b->closes);
	}
	/* After the CAS (a full barrier): a waiter that read @old wakes. */
	ck_ec32_inc(STOCK__BR_EC(b), &stock__ec_mp);
	if (from != to && b->cfg.on_change != NULL)
		b->cfg.on_change(b->cfg.on_change_arg, from, to);
}

/* Tries the transition @old -> @new; true if this thread won it. */
static bool
stock__br_transition(struct stock_breaker *b, uint64_t old, uint64_t new)
{
	if (!ck_pr_cas_64(&b->word, old, new))
		return false;
	stock__br_won(b, old, new);
	return true;
}

/* ---- configuration ------------------------------------------------------ */

int
stock_breaker_config_default(struct stock_breaker_config *cfg)
{
	static const struct stock_breaker_config def = STOCK_BREAKER_CONFIG_DEFAULT;

	if (cfg == NULL)
		return STOCK_EINVAL;
	*cfg = def;
	return 0;
}

static int
stock__br_validate(const struct stock_breaker_config *c)
{
	if (c->failure_threshold > STOCK_BREAKER_COUNT_MAX)
		return STOCK_EINVAL;
	if (c->failure_pct > 100)
		return STOCK_EINVAL;
	if (c->failure_pct != 0 &&
	    (c->window_calls == 0 || c->window_calls > STOCK_BREAKER_COUNT_MAX ||
		c->min_calls > c->window_calls))
		return STOCK_EINVAL;
	if (c->half_open_probes == 0 || c->half_open_probes > STOCK_BREAKER_PROBES_MAX)
		return STOCK_EINVAL;
	if (c->max_open_ns != 0 && c->max_open_ns < c->open_ns)
		return STOCK_EINVAL;
	return 0;
}

int
stock_breaker_init(struct stock_breaker *b, const struct stock_breaker_config *cfg)
{
	int r;

	if (b == NULL)
		return STOCK_EINVAL;
	if (cfg == NULL)
		stock_breaker_config_default(&b->cfg);
	else if ((r = stock__br_validate(cfg)) != 0)
		return r;
	else
		b->cfg = *cfg;
	b->word = (uint64_t)STOCK_BREAKER_CLOSED;
	b->open_until = 0;
	b->open_gen = UINT64_MAX; /* matches no 32-bit generation */
	ck_ec32_init(STOCK__BR_EC(b), 0);
	b->counts = stock__br_counts(0, 0, 0, 0);
	b->allowed = b->rejected = b->successes = b->failures = b->ignored = 0;
	b->opens = b->half_opens = b->closes = 0;
	ck_pr_fence_store();
	return 0;
}

void
stock_breaker_destroy(struct stock_breaker *b)
{
	(void)b;
}

/* ---- admission ------------------------------------------------------------ */

/* One admission attempt without statistics: 0 or STOCK_EOPEN. */
static int
stock__br_try(struct stock_breaker *b, struct stock_breaker_token *tok)
{
	uint64_t w = ck_pr_load_64(&b->word), until = 0;

	for (;;) {
		switch (stock__br_state(w)) {
		case STOCK_BREAKER_CLOSED:
			tok->gen = stock__br_gen(w);
			tok->flags = STOCK__BR_TOK_VALID;
			return 0;
		case STOCK_BREAKER_HALF_OPEN:
			if (stock__br_admitted(w) >= b->cfg.half_open_probes)
				return STOCK_EOPEN;
			if (ck_pr_cas_64_value(&b->word, w, w + (1ULL << STOCK__BR_ADMIT_SHIFT), &w)) {
				tok->gen = stock__br_gen(w);
				tok->flags = STOCK__BR_TOK_VALID | STOCK__BR_TOK_PROBE;
				return 0;
			}
			break;
		default: {
			uint64_t n;

			if (stock__br_isolated(w) || !stock__br_open_expired(b, w, &until))
				return STOCK_EOPEN;
			/* Open period over: move to HalfOpen as its first probe. */
			n = stock__br_next(w, STOCK_BREAKER_HALF_OPEN, false, stock__br_level(w)) |
			    (1ULL << STOCK__BR_ADMIT_SHIFT);
			if (stock__br_transition(b, w, n)) {
				tok->gen = stock__br_gen(n);
				tok->flags = STOCK__BR_TOK_VALID | STOCK__BR_TOK_PROBE;
				return 0;
			}
			w = ck_pr_load_64(&b->word);
			break;
		}
		}
		ck_pr_stall();
	}
}

int
stock_breaker_allow(struct stock_breaker *b, struct stock_breaker_token *tok)
{
	int r;

	if (b == NULL || tok == NULL)
		return STOCK_EINVAL;
	r = stock__br_try(b, tok);
	ck_pr_inc_64(r == 0 ? &b->allowed : &b->rejected);
	return r;
}

bool
stock_breaker_is_probe(struct stock_breaker_token tok)
{
	return (tok.flags & STOCK__BR_TOK_PROBE) != 0;
}

/* ---- outcomes ------------------------------------------------------------- */

/*
 * Counts a Closed-state outcome of generation @gen. Returns true when the
 * trip rules say the breaker should open.
 */
static bool
stock__br_count(struct stock_breaker *b, uint32_t gen, bool failed)
{
	const struct stock_breaker_config *cfg = &b->cfg;
	uint16_t tag = (uint16_t)gen;
	uint64_t c = ck_pr_load_64(&b->counts), n;
	uint32_t consec, calls, fails;
	bool trip;

	for (;;) {
		if (STOCK__BR_C_TAG(c) == tag) {
			consec = STOCK__BR_C_CONSEC(c);
			calls = STOCK__BR_C_CALLS(c);
			fails = STOCK__BR_C_FAILS(c);
		} else {
			/* Counts of another period: an older one if ours is still
			 * current (start from zero), else ours is over (drop). If the
			 * period ends after this check, the new one's winner replaces
			 * the counts and our CAS below fails and re-checks. */
			uint64_t w = ck_pr_load_64(&b->word);

			if (stock__br_gen(w) != gen || stock__br_state(w) != STOCK_BREAKER_CLOSED)
				return false;
			consec = calls = fails = 0;
		}
		trip = false;
		if (failed) {
			if (consec < STOCK_BREAKER_COUNT_MAX)
				consec++;
		} else {
			consec = 0;
		}
		if (cfg->failure_pct != 0) {
			calls++;
			if (failed)
				fails++;
		}
		if (failed) {
			if (cfg->failure_threshold != 0 && consec >= cfg->failure_threshold)
				trip = true;
			if (cfg->failure_pct != 0 && calls >= cfg->min_calls &&
			    (uint64_t)fails * 100 >= (uint64_t)cfg->failure_pct * calls)
				trip = true;
		}
		if (cfg->failure_pct != 0 && calls >= cfg->window_calls && !trip)
			calls = fails = 0; /* the window starts over */
		n = stock__br_counts(tag, consec, calls, fails);
		if (n == c || ck_pr_cas_64_value(&b->counts, c, n, &c))
			return trip;
		ck_pr_stall();
	}
}

static int
stock__br_report(struct stock_breaker *b, struct stock_breaker_token tok, bool failed)
{
	uint64_t w, n;

	if (b == NULL || (tok.flags & STOCK__BR_TOK_VALID) == 0)
		return STOCK_EINVAL;
	ck_pr_inc_64(failed ? &b->failures : &b->successes);
	w = ck_pr_load_64(&b->word);

	if ((tok.flags & STOCK__BR_TOK_PROBE) == 0) {
		if (stock__br_gen(w) != tok.gen || stock__br_state(w) != STOCK_BREAKER_CLOSED)
			goto stale;
		if (!stock__br_count(b, tok.gen, failed))
			return 0;
		/* Trip. In Closed only a transition changes the word, so one CAS
		 * decides: if it fails, someone else made the transition. */
		n = stock__br_next(w, STOCK_BREAKER_OPEN, false, 0);
		(void)stock__br_transition(b, w, n);
		return 0;
	}

	/* A HalfOpen probe. The word also changes as probes are admitted and
	 * succeed, so retry until the generation moves on. */
	for (;;) {
		if (stock__br_gen(w) != tok.gen || stock__br_state(w) != STOCK_BREAKER_HALF_OPEN)
			goto stale;
		if (failed) {
			uint32_t level = stock__br_level(w);

			if (level < STOCK__BR_LEVEL_MASK)
				level++;
			n = stock__br_next(w, STOCK_BREAKER_OPEN, false, level);
			if (stock__br_transition(b, w, n))
				return 0;
		} else if (stock__br_oks(w) + 1 >= b->cfg.half_open_probes) {
			n = stock__br_next(w, STOCK_BREAKER_CLOSED, false, 0);
			if (stock__br_transition(b, w, n))
				return 0;
		} else if (ck_pr_cas_64(&b->word, w, w + (1ULL << STOCK__BR_OK_SHIFT))) {
			return 0;
		}
		ck_pr_stall();
		w = ck_pr_load_64(&b->word);
	}
stale:
	ck_pr_inc_64(&b->ignored);
	return 0;
}

int
stock_breaker_success(struct stock_breaker *b, struct stock_breaker_token tok)
{
	return stock__br_report(b, tok, false);
}

int
stock_breaker_failure(struct stock_breaker *b, struct stock_breaker_token tok)
{
	return stock__br_report(b, tok, true);
}

/* ---- manual control ------------------------------------------------------- */

int
stock_breaker_isolate(struct stock_breaker *b)
{
	uint64_t w;

	if (b == NULL)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&b->word);
	while (!stock__br_isolated(w)) {
		if (stock__br_transition(b, w,
			stock__br_next(w, STOCK_BREAKER_OPEN, true, stock__br_level(w))))
			break;
		ck_pr_stall();
		w = ck_pr_load_64(&b->word);
	}
	return 0;
}

int
stock_breaker_close(struct stock_breaker *b)
{
	uint64_t w;

	if (b == NULL)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&b->word);
	while (stock__br_state(w) != STOCK_BREAKER_CLOSED || stock__br_isolated(w)) {
		if (stock__br_transition(b, w, stock__br_next(w, STOCK_BREAKER_CLOSED, false, 0)))
			break;
		ck_pr_stall();
		w = ck_pr_load_64(&b->word);
	}
	return 0;
}

/* ---- waiting -------------------------------------------------------------- */

static void
stock__br_ns_to_ts(uint64_t ns, struct timespec *ts)
{
	ts->tv_sec = (time_t)(ns / 1000000000ULL);
	ts->tv_nsec = (long)(ns % 1000000000ULL);
}

static bool
stock__br_ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

int
stock_breaker_wait(struct stock_breaker *b, const struct timespec *deadline)
{
	struct timespec wake;
	const struct timespec *sleep_until;
	uint64_t w, until = 0;
	uint32_t seq;

	if (b == NULL)
		return STOCK_EINVAL;
	for (;;) {
		seq = ck_ec32_value(STOCK__BR_EC(b));
		w = ck_pr_load_64(&b->word);
		switch (stock__br_state(w)) {
		case STOCK_BREAKER_CLOSED:
			return 0;
		case STOCK_BREAKER_HALF_OPEN:
			if (stock__br_admitted(w) < b->cfg.half_open_probes)
				return 0;
			break;
		default:
			break;
		}
		sleep_until = deadline;
		if (stock__br_state(w) == STOCK_BREAKER_OPEN && !stock__br_isolated(w) &&
		    ck_pr_load_64(&b->open_gen) == stock__br_gen(w)) {
			if (stock__br_open_expired(b, w, &until))
				return 0;
			/* Also wake when the open period ends. */
			if (b->cfg.now_ns == NULL)
				stock__br_ns_to_ts(until, &wake);
			else
				stock__br_ns_to_ts(stock_now_ns() + STOCK__BR_POLL_NS, &wake);
			if (deadline == NULL || stock__br_ts_before(&wake, deadline))
				sleep_until = &wake;
		}
		if (stock__deadline_passed(deadline))
			return STOCK_ETIMEDOUT;
		stock__ec32_wait(STOCK__BR_EC(b), seq, sleep_until);
	}
}

int
stock_breaker_allow_wait(struct stock_breaker *b, struct stock_breaker_token *tok,
    const struct timespec *deadline)
{
	if (b == NULL || tok == NULL)
		return STOCK_EINVAL;
	for (;;) {
		if (stock__br_try(b, tok) == 0) {
			ck_pr_inc_64(&b->allowed);
			return 0;
		}
		if (stock_breaker_wait(b, deadline) != 0) {
			ck_pr_inc_64(&b->rejected);
			return STOCK_ETIMEDOUT;
		}
	}
}

/* ---- inspection ----------------------------------------------------------- */

enum stock_breaker_state
stock_breaker_state(const struct stock_breaker *b)
{
	return b == NULL ? STOCK_BREAKER_CLOSED : stock__br_state(ck_pr_load_64(&b->word));
}

bool
stock_breaker_isolated(const struct stock_breaker *b)
{
	return b != NULL && stock__br_isolated(ck_pr_load_64(&b->word));
}

const char *
stock_breaker_state_name(enum stock_breaker_state s)
{
	switch (s) {
	case STOCK_BREAKER_CLOSED:
		return "closed";
	case STOCK_BREAKER_OPEN:
		return "open";
	case STOCK_BREAKER_HALF_OPEN:
		return "half-open";
	default:
		return "unknown";
	}
}

int
stock_breaker_stats(const struct stock_breaker *b, struct stock_breaker_stats *out)
{
	uint64_t w;

	if (b == NULL || out == NULL)
		return STOCK_EINVAL;
	w = ck_pr_load_64(&b->word);
	out->state = stock__br_state(w);
	out->isolated = stock__br_isolated(w);
	out->backoff_level = stock__br_level(w);
	out->generation = stock__br_gen(w);
	out->allowed = ck_pr_load_64(&b->allowed);
	out->rejected = ck_pr_load_64(&b->rejected);
	out->successes = ck_pr_load_64(&b->successes);
	out->failures = ck_pr_load_64(&b->failures);
	out->ignored = ck_pr_load_64(&b->ignored);
	out->opens = ck_pr_load_64(&b->opens);
	out->half_opens = ck_pr_load_64(&b->half_opens);
	out->closes = ck_pr_load_64(&b->closes);
	out->transitions = out->opens + out->half_opens + out->closes;
	return 0;
}
