/*
 * Hold expiry: a hierarchical timing wheel (see stock/wheel.h for the model).
 *
 * A timer's tick is x = ceil(deadline / tick_ns). The wheel's `cur` is the
 * first tick not yet processed: every tick below it has been reached (the
 * caller's now was at least tick * tick_ns). A timer with x < cur is due and
 * sits on the `due` list. Otherwise it sits in one slot:
 *
 *   level 0, slot x & 63                 if x - cur < 64;
 *   else the lowest level k >= 1 with (x >> 6k) - (cur >> 6k) < 64,
 *        slot (x >> 6k) & 63.
 *
 * Processing tick j: if j is a multiple of 64^k (k = 1, 2, ... while it is),
 * the level-k slot (j >> 6k) & 63 is cascaded — its timers are re-inserted
 * relative to cur = j — and then level 0's slot j & 63 moves to `due`.
 *
 * Why this is exact (no timer fires early or is skipped). Level 0 holds
 * ticks cur .. cur + 63 in distinct slots, each processed at its own tick. A
 * timer placed at level k >= 1 when cur was c has block B = x >> 6k with
 * 1 <= B - (c >> 6k) <= 63 (it is > 0 because level k - 1 did not fit it), so
 * the first tick after c at which its slot is cascaded is B << 6k, the start
 * of its own block: at most x, and from there x lies within 64^k ticks, so
 * it goes strictly lower. A timer therefore reaches level 0 before its tick
 * and moves to `due` exactly when tick x is processed, i.e. at the first
 * poll with now >= x * tick_ns. Re-inserted timers never land in the slot
 * being cascaded nor in a lower level's slot already processed: at level
 * k' >= 1 their block is ahead of cur's by 1..63, at level 0 their tick is
 * >= cur.
 *
 * Skipping: poll does not walk every tick. The bitmaps give, per level, the
 * next non-empty slot after cur (a rotate and a count of trailing zeros), so
 * the next tick with work is the minimum over levels of "level 0's next
 * non-empty tick" and "the start of level k's next non-empty block"; every
 * tick in between would cascade or expire an empty slot.
 */
#include <stdlib.h>

#include "stock/wheel.h"
#include "internal.h"

#define STOCK__WHEEL_BITS 6
#define STOCK__WHEEL_SLOTS 64u
#define STOCK__WHEEL_DUE UINT32_MAX /* `where` of a timer on the due list */

/* --- lists ------------------------------------------------------------ */

static inline void
stock__link_init(struct stock_wheel_link *h)
{
	h->next = h;
	h->prev = h;
}

static inline bool
stock__link_empty(const struct stock_wheel_link *h)
{
	return h->next == h;
}

static inline void
stock__link_append(struct stock_wheel_link *h, struct stock_wheel_link *l)
{
	l->prev = h->prev;
	l->next = h;
	h->prev->next = l;
	h->prev = l;
}

static inline void
stock__link_unlink(struct stock_wheel_link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	l->next = NULL;
	l->prev = NULL;
}

static inline struct stock_wheel_timer *
stock__timer_of(struct stock_wheel_link *l)
{
	return (struct stock_wheel_timer *)(void *)l; /* link is the first member */
}

/* --- placement -------------------------------------------------------- */

static inline struct stock_wheel_link *
stock__slot(struct stock_wheel *w, unsigned level, unsigned slot)
{
	return &w->slots[level * STOCK__WHEEL_SLOTS + slot];
}

/* Puts an armed-to-be timer in its slot relative to w->cur, or on `due`. */
static void
stock__wheel_place(struct stock_wheel *w, struct stock_wheel_timer *t)
{
	uint64_t x = t->tick;
	unsigned k, slot;

	if (x < w->cur) {
		t->where = STOCK__WHEEL_DUE;
		stock__link_append(&w->due, &t->link);
		w->due_count++;
		return;
	}
	if (x - w->cur < STOCK__WHEEL_SLOTS) {
		k = 0;
		slot = (unsigned)(x & (STOCK__WHEEL_SLOTS - 1));
	} else {
		/* The top level always fits: x and cur are below 64^levels. */
		for (k = 1; k < w->levels - 1; k++)
			if ((x >> (STOCK__WHEEL_BITS * k)) - (w->cur >> (STOCK__WHEEL_BITS * k)) <
			    STOCK__WHEEL_SLOTS)
				break;
		slot = (unsigned)((x >> (STOCK__WHEEL_BITS * k)) & (STOCK__WHEEL_SLOTS - 1));
	}
	t->where = k * STOCK__WHEEL_SLOTS + slot;
	stock__link_append(stock__slot(w, k, slot), &t->link);
	w->bitmap[k] |= 1ull << slot;
	w->queued++;
}

/* Removes an armed timer from wherever it is (slot or due). */
static void
stock__wheel_remove(struct stock_wheel *w, struct stock_wheel_timer *t)
{
	uint32_t where = t->where;

	stock__link_unlink(&t->link);
	if (where == STOCK__WHEEL_DUE) {
		w->due_count--;
	} else {
		unsigned k = where / STOCK__WHEEL_SLOTS, slot = where % STOCK__WHEEL_SLOTS;

		if (stock__link_empty(stock__slot(w, k, slot)))
			w->bitmap[k] &= ~(1ull << slot);
		w->queued--;
	}
}

/* --- advancing -------------------------------------------------------- */

/* Distance from bit @from to the next set bit of @bm, circularly; -1 if none. */
static inline int
stock__next_bit(uint64_t bm, unsigned from)
{
	uint64_t r;

	if (bm == 0)
		return -1;
	r = from == 0 ? bm : (bm >> from) | (bm << (64 - from));
	return __builtin_ctzll(r);
}

/* The next tick >= cur at which a slot has work; UINT64_MAX if none. */
static uint64_t
stock__wheel_next_tick(const struct stock_wheel *w)
{
	uint64_t best = UINT64_MAX;
	int d;

	if ((d = stock__next_bit(w->bitmap[0], (unsigned)(w->cur & (STOCK__WHEEL_SLOTS - 1)))) >= 0)
		best = w->cur + (uint64_t)d;
	for (unsigned k = 1; k < w->levels; k++) {
		unsigned shift = STOCK__WHEEL_BITS * k;
		uint64_t c = w->cur >> shift, ev;

		if ((d = stock__next_bit(w->bitmap[k], (unsigned)(c & (STOCK__WHEEL_SLOTS - 1)))) < 0)
			continue;
		/* d == 0 only for the block cur starts, not yet cascaded (see top). */
		ev = (c + (uint64_t)d) << shift;
		if (ev < w->cur)
			abort(); /* broken invariant: a slot missed its cascade */
		if (ev < best)
			best = ev;
	}
	return best;
}

/* Re-inserts every timer of level @k, slot @slot relative to cur. */
static void
stock__wheel_cascade(struct stock_wheel *w, unsigned k, unsigned slot)
{
	struct stock_wheel_link *h = stock__slot(w, k, slot), list;

	if (stock__link_empty(h))
		return;
	/* Detach the whole list first: re-inserting never targets it, but the
	   walk must not see the slot change under it. */
	list.next = h->next;
	list.prev = h->prev;
	list.next->prev = &list;
	list.prev->next = &list;
	stock__link_init(h);
	w->bitmap[k] &= ~(1ull << slot);
	while (!stock__link_empty(&list)) {
		struct stock_wheel_timer *t = stock__timer_of(list.next);

		stock__link_unlink(&t->link);
		w->queued--;
		stock__wheel_place(w, t);
	}
}

/* Processes every tick up to floor(@now_ns / tick_ns). Under the lock. */
static void
stock__wheel_run(struct stock_wheel *w, uint64_t now_ns)
{
	/* At the end of time every deadline has passed, even one whose tick
	   (rounded up) lies beyond it. */
	uint64_t target = now_ns >= STOCK_WHEEL_DEADLINE_MAX ?
	    STOCK_WHEEL_DEADLINE_MAX / w->tick_ns + 1 : now_ns / w->tick_ns;

	while (w->cur <= target) {
		uint64_t j = w->queued == 0 ? UINT64_MAX : stock__wheel_next_tick(w);
		struct stock_wheel_link *h;
		unsigned slot;

		if (j > target) {
			w->cur = target + 1;
			break;
		}
		w->cur = j;
		for (unsigned k = 1; k < w->levels; k++) {
			unsigned shift = STOCK__WHEEL_BITS * k;

			if ((j & ((1ull << shift) - 1)) != 0)
				break;
			stock__wheel_cascade(w, k, (unsigned)((j >> shift) & (STOCK__WHEEL_SLOTS - 1)));
		}
		slot = (unsigned)(j & (STOCK__WHEEL_SLOTS - 1));
		h = stock__slot(w, 0, slot);
		while (!stock__link_empty(h)) {
			struct stock_wheel_timer *t = stock__timer_of(h->next);

			stock__link_unlink(&t->link);
			t->where = STOCK__WHEEL_DUE;
			stock__link_append(&w->due, &t->link);
			w->queued--;
			w->due_count++;
		}
		w->bitmap[0] &= ~(1ull << slot);
		w->cur = j + 1;
	}
}

/* Pops up to @max timers of the due list @from into @out, disarmed. Under
   the lock. */
static size_t
stock__wheel_pop(struct stock_wheel *w, struct stock_wheel_link *from,
    struct stock_wheel_timer **out, size_t max)
{
	size_t n = 0;

	while (n < max && !stock__link_empty(from)) {
		struct stock_wheel_timer *t = stock__timer_of(from->next);

		stock__link_unlink(&t->link);
		w->due_count--;
		out[n++] = t;
	}
	ck_pr_store_64(&w->armed, w->armed - n);
	return n;
}

/* --- API -------------------------------------------------------------- */

int
stock_wheel_init(struct stock_wheel *w, uint64_t tick_ns, uint64_t now_ns)
{
	uint64_t max_tick;
	unsigned levels = 1;

	if (w == NULL || tick_ns == 0)
		return STOCK_EINVAL;
	if (tick_ns > STOCK_WHEEL_DEADLINE_MAX || now_ns > STOCK_WHEEL_DEADLINE_MAX)
		return STOCK_ERANGE;
	/* Enough levels that every tick of a valid deadline is below 64^levels. */
	max_tick = STOCK_WHEEL_DEADLINE_MAX / tick_ns + 1;
	while (levels < STOCK__WHEEL_MAX_LEVELS && (max_tick >> (STOCK__WHEEL_BITS * levels)) != 0)
		levels++;
	w->slots = malloc(sizeof *w->slots * STOCK__WHEEL_SLOTS * levels);
	if (w->slots == NULL)
		return STOCK_ENOMEM;
	if (pthread_mutex_init(&w->lock, NULL) != 0) {
		free(w->slots);
		w->slots = NULL;
		return STOCK_ESYS;
	}
	for (unsigned i = 0; i < STOCK__WHEEL_SLOTS * levels; i++)
		stock__link_init(&w->slots[i]);
	for (unsigned k = 0; k < STOCK__WHEEL_MAX_LEVELS; k++)
		w->bitmap[k] = 0;
	stock__link_init(&w->due);
	w->tick_ns = tick_ns;
	w->cur = now_ns / tick_ns + 1;
	w->armed = 0;
	w->queued = 0;
	w->due_count = 0;
	w->levels = levels;
	return 0;
}

void
stock_wheel_destroy(struct stock_wheel *w)
{
	if (w == NULL)
		return;
	pthread_mutex_destroy(&w->lock);
	free(w->slots);
	w->slots = NULL;
}

void
stock_wheel_timer_init(struct stock_wheel_timer *t, void *arg)
{
	if (t != NULL)
		*t = (struct stock_wheel_timer)STOCK_WHEEL_TIMER_INITIALIZER(arg);
}

int
stock_wheel_add(struct stock_wheel *w, struct stock_wheel_timer *t, uint64_t deadline_ns)
{
	int rc = 0;

	if (w == NULL || t == NULL)
		return STOCK_EINVAL;
	if (deadline_ns > STOCK_WHEEL_DEADLINE_MAX)
		return STOCK_ERANGE;
	pthread_mutex_lock(&w->lock);
	if (t->link.next != NULL) {
		rc = STOCK_EEXIST;
	} else {
		t->deadline = deadline_ns;
		t->tick = deadline_ns / w->tick_ns + (deadline_ns % w->tick_ns != 0);
		stock__wheel_place(w, t);
		ck_pr_store_64(&w->armed, w->armed + 1);
	}
	pthread_mutex_unlock(&w->lock);
	return rc;
}

int
stock_wheel_cancel(struct stock_wheel *w, struct stock_wheel_timer *t)
{
	int rc = 0;

	if (w == NULL || t == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&w->lock);
	if (t->link.next == NULL) {
		rc = STOCK_ENOENT;
	} else {
		stock__wheel_remove(w, t);
		ck_pr_store_64(&w->armed, w->armed - 1);
	}
	pthread_mutex_unlock(&w->lock);
	return rc;
}

size_t
stock_wheel_poll(struct stock_wheel *w, uint64_t now_ns, struct stock_wheel_timer **out, size_t max)
{
	size_t n;

	if (w == NULL || out == NULL || max == 0)
		return 0;
	if (now_ns > STOCK_WHEEL_DEADLINE_MAX)
		now_ns = STOCK_WHEEL_DEADLINE_MAX;
	pthread_mutex_lock(&w->lock);
	stock__wheel_run(w, now_ns);
	n = stock__wheel_pop(w, &w->due, out, max);
	pthread_mutex_unlock(&w->lock);
	return n;
}

#define STOCK__WHEEL_BATCH 64

size_t
stock_wheel_advance(struct stock_wheel *w, uint64_t now_ns, stock_wheel_fn *fn, void *arg)
{
	struct stock_wheel_timer *batch[STOCK__WHEEL_BATCH];
	struct stock_wheel_link mine;
	size_t total = 0, n;

	if (w == NULL || fn == NULL)
		return 0;
	if (now_ns > STOCK_WHEEL_DEADLINE_MAX)
		now_ns = STOCK_WHEEL_DEADLINE_MAX;
	pthread_mutex_lock(&w->lock);
	stock__wheel_run(w, now_ns);
	/*
	 * Take what is due now onto a list of our own. Its timers stay armed
	 * and due (a cancel unlinks them from it, under the lock, as from the
	 * due list; an add of one finds it armed), but timers that become due
	 * later — a callback re-arming one with a past deadline — go to the
	 * wheel's list and wait for the next call, and a concurrent caller
	 * cannot fire ours.
	 */
	stock__link_init(&mine);
	if (!stock__link_empty(&w->due)) {
		mine.next = w->due.next;
		mine.prev = w->due.prev;
		mine.next->prev = &mine;
		mine.prev->next = &mine;
		stock__link_init(&w->due);
	}
	for (;;) {
		n = stock__wheel_pop(w, &mine, batch, STOCK__WHEEL_BATCH);
		pthread_mutex_unlock(&w->lock);
		for (size_t i = 0; i < n; i++)
			fn(batch[i], arg);
		total += n;
		if (n < STOCK__WHEEL_BATCH)
			return total;
		pthread_mutex_lock(&w->lock);
	}
}

int
stock_wheel_next(struct stock_wheel *w, uint64_t *at_ns)
{
	int rc = 0;

	if (w == NULL || at_ns == NULL)
		return STOCK_EINVAL;
	pthread_mutex_lock(&w->lock);
	if (w->armed == 0)
		rc = STOCK_ENOENT;
	else if (w->due_count > 0)
		*at_ns = (w->cur - 1) * w->tick_ns;
	else
		*at_ns = stock__wheel_next_tick(w) * w->tick_ns;
	pthread_mutex_unlock(&w->lock);
	return rc;
}

uint64_t
stock_wheel_count(const struct stock_wheel *w)
{
	return w == NULL ? 0 : ck_pr_load_64(&w->armed);
}
