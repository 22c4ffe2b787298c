/*
 * A minimal Criterion-compatible runner, used only for `make check-tsan`.
 *
 * Criterion's BoxFort sandbox cannot map its inheritable arena under
 * ThreadSanitizer (Snaipe/Criterion#274, open), so the TSan build compiles the
 * very same test files against this header instead: Test() registers the test
 * in a constructor, the cr_assert / cr_expect family records failures, and
 * shim_main.c runs every test in-process, one after another, and prints
 * "N passed, N failed". Only the subset of Criterion's API the suite uses is
 * provided; an unsupported macro is a compile error, never a silent pass.
 */
#ifndef STOCK_TEST_SHIM_CRITERION_H
#define STOCK_TEST_SHIM_CRITERION_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct shim_test_opts {
	int dummy_;
	double timeout;
	bool disabled;
	const char *description;
	void (*init)(void);
	void (*fini)(void);
	int exit_code;
	int signal;
};

struct shim_test {
	const char *suite, *name;
	void (*fn)(void);
	struct shim_test_opts opts;
	struct shim_test *next;
};

void shim_register(struct shim_test *t);
void shim_check(int ok, int fatal, const char *file, int line, const char *expr,
    const char *fmt, ...);
void shim_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define Test(suite, name, ...)                                                     \
	static void shim_fn_##suite##_##name(void);                                \
	static struct shim_test shim_t_##suite##_##name = {                        \
		#suite, #name, shim_fn_##suite##_##name,                           \
		{ 0, __VA_ARGS__ }, NULL                                           \
	};                                                                         \
	__attribute__((constructor)) static void shim_reg_##suite##_##name(void) \
	{                                                                          \
		shim_register(&shim_t_##suite##_##name);                           \
	}                                                                          \
	static void shim_fn_##suite##_##name(void)

#define SHIM_CHECK(fatal, cond, expr, ...) \
	shim_check(!!(cond), fatal, __FILE__, __LINE__, expr, "" __VA_ARGS__)

#define cr_assert(c, ...) SHIM_CHECK(1, (c), #c, __VA_ARGS__)
#define cr_expect(c, ...) SHIM_CHECK(0, (c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...) SHIM_CHECK(1, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...) SHIM_CHECK(0, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_fail(...) SHIM_CHECK(1, 0, "cr_assert_fail", __VA_ARGS__)
#define cr_expect_fail(...) SHIM_CHECK(0, 0, "cr_expect_fail", __VA_ARGS__)

#define SHIM_CMP(fatal, a, op, b, ...) SHIM_CHECK(fatal, (a)op(b), #a " " #op " " #b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) SHIM_CMP(1, a, ==, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) SHIM_CMP(1, a, !=, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) SHIM_CMP(1, a, <, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) SHIM_CMP(1, a, <=, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) SHIM_CMP(1, a, >, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) SHIM_CMP(1, a, >=, b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...) SHIM_CMP(0, a, ==, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) SHIM_CMP(0, a, !=, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...) SHIM_CMP(0, a, <, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) SHIM_CMP(0, a, <=, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...) SHIM_CMP(0, a, >, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) SHIM_CMP(0, a, >=, b, __VA_ARGS__)

#define cr_assert_null(p, ...) SHIM_CHECK(1, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) SHIM_CHECK(1, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_null(p, ...) SHIM_CHECK(0, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) SHIM_CHECK(0, (p) != NULL, #p " != NULL", __VA_ARGS__)

#define SHIM_STR(fatal, a, op, b, ...) \
	SHIM_CHECK(fatal, strcmp((a), (b)) op 0, "strcmp(" #a ", " #b ") " #op " 0", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) SHIM_STR(1, a, ==, b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) SHIM_STR(1, a, !=, b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) SHIM_STR(0, a, ==, b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...) SHIM_STR(0, a, !=, b, __VA_ARGS__)
#define cr_assert_str_empty(a, ...) SHIM_CHECK(1, (a)[0] == '\0', #a " is empty", __VA_ARGS__)
#define cr_expect_str_empty(a, ...) SHIM_CHECK(0, (a)[0] == '\0', #a " is empty", __VA_ARGS__)

#define cr_log_info(...) ((void)0)
#define cr_log_warn(...) ((void)0)
#define cr_skip_test(...) shim_skip("" __VA_ARGS__)

#endif
