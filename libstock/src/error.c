/*
 * Error table, version string and time helpers.
 *
 * The status codes live in one X-macro (STOCK_ERRNO_MAP in stock/common.h);
 * this file turns it into the name and message lookups so that adding a code
 * is a one-line change. The deadline helpers convert between the relative
 * timeouts callers think in and the absolute CLOCK_MONOTONIC deadlines every
 * blocking call takes.
 */
#include <errno.h>
#include <time.h>

#include "internal.h"

#define STOCK__STR2(x) #x
#define STOCK__STR(x) STOCK__STR2(x)

const char *
stock_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
#define STOCK__ERR_MSG(name, value, msg) \
	case STOCK_##name:               \
		return msg;
		STOCK_ERRNO_MAP(STOCK__ERR_MSG)
#undef STOCK__ERR_MSG
	default:
		return "unknown error";
	}
}

const char *
stock_err_name(int err)
{
	switch (err) {
	case 0:
		return "STOCK_OK";
#define STOCK__ERR_NAME(name, value, msg) \
	case STOCK_##name:                \
		return "STOCK_" #name;
		STOCK_ERRNO_MAP(STOCK__ERR_NAME)
#undef STOCK__ERR_NAME
	default:
		return "STOCK_EUNKNOWN";
	}
}

const char *
stock_library_version(void)
{
	return STOCK__STR(STOCK_VERSION_MAJOR) "." STOCK__STR(
	    STOCK_VERSION_MINOR) "." STOCK__STR(STOCK_VERSION_PATCH);
}

uint64_t
stock_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int
stock_deadline_in(struct timespec *out, uint64_t ms)
{
	uint64_t ns;

	if (out == NULL)
		return STOCK_EINVAL;
	/* Clamp to ~292 years so the arithmetic below cannot wrap. */
	if (ms > (UINT64_MAX / 1000000ULL) / 2)
		ms = (UINT64_MAX / 1000000ULL) / 2;
	ns = stock_now_ns() + ms * 1000000ULL;
	out->tv_sec = (time_t)(ns / 1000000000ULL);
	out->tv_nsec = (long)(ns % 1000000000ULL);
	return 0;
}

bool
stock__deadline_passed(const struct timespec *deadline)
{
	uint64_t d;

	if (deadline == NULL)
		return false;
	d = (uint64_t)deadline->tv_sec * 1000000000ULL + (uint64_t)deadline->tv_nsec;
	return stock_now_ns() >= d;
}
