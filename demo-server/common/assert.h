/*
 * Invariant checks that stay on in release builds.
 *
 * ASSERT(cond) is for cheap invariants whose failure means the process's
 * state can no longer be trusted (a count that would oversell, a lock-order
 * slip): it prints the condition and where, then aborts, so a supervisor
 * restarts the instance from its durable state instead of letting it sell
 * from a broken one. ASSERT_DEBUG(cond) is for checks too costly for the hot
 * path; it compiles to nothing unless DEMO_DEBUG is defined (the TSan and
 * ASan builds define it).
 */
#ifndef DEMO_ASSERT_H
#define DEMO_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define ASSERT(cond)                                                                   \
	do {                                                                           \
		if (__builtin_expect(!(cond), 0)) {                                    \
			fprintf(stderr, "demo-server: assertion failed: %s (%s:%d, %s)\n", \
			    #cond, __FILE__, __LINE__, __func__);                      \
			abort();                                                       \
		}                                                                      \
	} while (0)

#ifdef DEMO_DEBUG
#define ASSERT_DEBUG(cond) ASSERT(cond)
#else
#define ASSERT_DEBUG(cond) ((void)0)
#endif

#endif /* DEMO_ASSERT_H */
