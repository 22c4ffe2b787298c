/*
 * Thread-scaling fixes for civetweb's thread-per-connection model
 * (threads.c; docs/internals/crowd.md). Linking threads.c also interposes
 * sigaction (outside sanitizer builds): see there.
 */
#ifndef HTTP_THREADS_H
#define HTTP_THREADS_H

#include <stdint.h>

/**
 * threads_futex_hash - give the process a private futex hash with at least
 * one slot per worker (a power of two, 16..65536), so thousands of workers
 * waiting on one futex do not share a bucket with every other lock. Call
 * before the workers start. Returns the slots set, or 0 where the kernel
 * lacks PR_FUTEX_HASH (nothing changed).
 */
unsigned threads_futex_hash(uint64_t workers);

/**
 * threads_nice_self - set the calling thread's nice value (a worker's, from
 * civetweb's init_thread): workers below the accepting thread's priority
 * let it keep up with thousands of connections. 0 or -1 (errno).
 */
int threads_nice_self(int nice);

#endif
