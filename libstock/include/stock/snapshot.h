/*
 * libstock — snapshot: read-copy-update publication of an immutable object.
 *
 * A snapshot holds one current object (a price list, a configuration, a
 * catalogue). Readers open a read section, get the current object and use it
 * without taking any lock; they never block and never see a half-built
 * object. A writer builds a new object and publishes it: readers that start
 * afterwards see the new one, readers already in a section keep the old one,
 * and the old one is handed to the user's destructor once every section that
 * could still see it has ended (a grace period, detected with ck_epoch).
 *
 * Guarantees:
 *   - a reader sees the old object or the new one, never anything else, and
 *     the object it got stays valid until its section ends;
 *   - on one thread, a section never returns an older version than one an
 *     earlier section of that thread returned;
 *   - every object ever published (including the initial one) is passed to
 *     the destructor exactly once: after its grace period, or by
 *     stock_snapshot_destroy().
 *
 * Per-thread ck_epoch records are managed by the library: a thread is
 * registered on its first read of a given snapshot and its record is
 * recycled when it exits. Each snapshot uses one pthread key (a process has
 * at least 128 of them, 1024 on glibc).
 */
#ifndef STOCK_SNAPSHOT_H
#define STOCK_SNAPSHOT_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct stock__snapshot_node;
struct stock__epoch;

/* Destructor for published objects: called once per object, see above. */
typedef void stock_snapshot_destroy_fn(void *obj, void *arg);

struct stock_snapshot {
	struct stock__snapshot_node *current; /* private: published node (ck_pr) */
	uint64_t version;                     /* private: use stock_snapshot_version() */
	uint64_t retired;                     /* private: objects replaced (ck_pr) */
	uint64_t reclaimed;                   /* private: objects destroyed (ck_pr) */
	stock_snapshot_destroy_fn *destroy;   /* private: the user's destructor */
	void *arg;                            /* private: its second argument */
	struct stock__epoch *epoch;           /* private: reclamation domain */
};
typedef struct stock_snapshot stock_snapshot_t;

/* One read section, on the caller's stack. */
struct stock_snapshot_section {
	void *record;     /* private: the thread's epoch record, NULL if none */
	uint64_t version; /* read-only: version of the object read_begin returned */
};
typedef struct stock_snapshot_section stock_snapshot_section_t;

/* Counters for monitoring and tests (stock_snapshot_stats). */
struct stock_snapshot_stats {
	uint64_t version;          /* objects published by stock_snapshot_publish */
	uint64_t retired;          /* objects replaced (waiting or destroyed) */
	uint64_t reclaimed;        /* retired objects already destroyed */
	unsigned int records;      /* per-thread epoch records allocated so far */
	unsigned int records_free; /* of those, free for the next new thread */
};
typedef struct stock_snapshot_stats stock_snapshot_stats_t;

/**
 * stock_snapshot_init - initialise a snapshot with its first object.
 * @s:       the snapshot.
 * @initial: the first current object (version 0); must not be NULL.
 * @destroy: called as destroy(obj, @arg) for every object once no reader can
 *           see it any more; NULL if objects need no clean-up. It may run on
 *           any thread that publishes, synchronizes or destroys, possibly on
 *           two threads at once for two different objects; it must not call
 *           publish/synchronize/destroy on @s.
 * @arg:     second argument for @destroy.
 *
 * Returns 0, STOCK_EINVAL (@s or @initial NULL), STOCK_ENOMEM or STOCK_ESYS
 * (no pthread key left; errno tells why). On error nothing is owned: the
 * caller still owns @initial. Not thread-safe against other use of @s.
 */
STOCK_EXTERN int stock_snapshot_init(struct stock_snapshot *s, void *initial,
    stock_snapshot_destroy_fn *destroy, void *arg);

/**
 * stock_snapshot_destroy - destroy every remaining object and free @s's
 * resources.
 *
 * Calls the destructor for each object still waiting for its grace period,
 * then for the current one. Safe on NULL and on a destroyed
 * snapshot. No other thread may be using @s, or be exiting after having used
 * it (join such threads first); idle threads that used it may stay alive.
 */
STOCK_EXTERN void stock_snapshot_destroy(struct stock_snapshot *s);

/**
 * stock_snapshot_register - register the calling thread as a reader now.
 *
 * Optional: read_begin registers a thread on its first use anyway. Calling
 * this first lets a thread handle the (rare) allocation failure up front;
 * afterwards stock_snapshot_read_begin() on this thread cannot fail.
 * Returns 0, STOCK_EINVAL, STOCK_ENOMEM or STOCK_ESYS. Thread-safe.
 */
STOCK_EXTERN int stock_snapshot_register(struct stock_snapshot *s);

/**
 * stock_snapshot_read_begin - open a read section and get the current object.
 * @s:   the snapshot.
 * @sec: section state on the caller's stack; pass it to read_end.
 *
 * Returns the current object, valid (and unchanged, it is immutable) until
 * stock_snapshot_read_end(@s, @sec); @sec->version is its version. Never
 * blocks, takes no lock. Sections nest (each with its own @sec). Returns NULL
 * only if the thread could not be registered (out of memory) or an argument
 * is NULL; no section is open then, and read_end(@s, @sec) is a no-op.
 * Thread-safe; the section belongs to the calling thread.
 */
STOCK_EXTERN const void *stock_snapshot_read_begin(struct stock_snapshot *s,
    struct stock_snapshot_section *sec);

/**
 * stock_snapshot_read_end - close the read section opened with @sec.
 *
 * After it returns, the object read_begin returned must not be used. Must be
 * called on the thread that opened the section. Never blocks.
 */
STOCK_EXTERN void stock_snapshot_read_end(struct stock_snapshot *s,
    struct stock_snapshot_section *sec);

/**
 * stock_snapshot_publish - make @obj the current object.
 * @obj: the new object, not NULL. Once published it must not be modified;
 *       the snapshot owns it and destroys it after it has been replaced.
 *
 * The previous object is retired: the destructor runs once no section can
 * still see it. publish also destroys older retired objects whose grace
 * period has passed (non-blocking poll), so memory stays bounded without
 * calling synchronize. Concurrent publishers are serialised; the version
 * increases by one per publish.
 * Returns 0, STOCK_EINVAL, or STOCK_ENOMEM (nothing changed; the caller
 * still owns @obj). Thread-safe; may be called inside a read section (the
 * object that section holds stays valid); never waits for readers.
 */
STOCK_EXTERN int stock_snapshot_publish(struct stock_snapshot *s, void *obj);

/**
 * stock_snapshot_synchronize - wait for a grace period, then destroy every
 * object retired before the call.
 *
 * Blocks until every read section open at the time of the call has ended.
 * Returns 0 or STOCK_EINVAL. Thread-safe. Must be called outside any read
 * section of @s (it would wait for itself forever).
 */
STOCK_EXTERN int stock_snapshot_synchronize(struct stock_snapshot *s);

/**
 * stock_snapshot_stats - fill @out with counters (see the struct).
 * Returns 0 or STOCK_EINVAL. Thread-safe; the fields are read one by one.
 */
STOCK_EXTERN int stock_snapshot_stats(const struct stock_snapshot *s,
    struct stock_snapshot_stats *out);

/**
 * stock_snapshot_version - number of publishes so far (0 after init).
 *
 * Monotonic. A section opened after this returns v gets an object of
 * version >= v. Lock-free; thread-safe.
 */
STOCK_INLINE uint64_t
stock_snapshot_version(const struct stock_snapshot *s)
{
	return ck_pr_load_64(&s->version);
}

#ifdef __cplusplus
}
#endif

#endif /* STOCK_SNAPSHOT_H */
