/*
 * A small unit-test harness: TEST(name) { ... } registers a test at load
 * time; CHECK* record a failure (file:line and the values) and carry on;
 * REQUIRE* return from the test on failure; SKIP("why") marks it skipped.
 * tests/unit/main.c runs them and closes with "unit: N passed, N failed,
 * N skipped".  Tests find shared data through test_shared_dir() (env
 * MOED_SHARED, default ../shared) and write scratch files under
 * test_tmp_dir() (env MOED_TEST_TMP, default build/test-tmp).
 */
#ifndef MOED_TESTS_HARNESS_H
#define MOED_TESTS_HARNESS_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

void test_register(const char *name, const char *file, void (*fn)(void));
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void test_skip(const char *why);
bool test_failed_now(void);
const char *test_shared_dir(void);
const char *test_tmp_dir(void);
/* Read a whole file (NUL-terminated, *len excludes the NUL); NULL on error. */
char *test_read_file(const char *path, size_t *len);

#define TEST(name)                                                          \
    static void test_fn_##name(void);                                       \
    __attribute__((constructor)) static void test_reg_##name(void)          \
    {                                                                       \
        test_register(#name, __FILE__, test_fn_##name);                     \
    }                                                                       \
    static void test_fn_##name(void)

#define CHECK(c)                                                            \
    do {                                                                    \
        if (!(c))                                                           \
            test_fail(__FILE__, __LINE__, "CHECK(%s)", #c);                 \
    } while (0)

#define CHECK_MSG(c, ...)                                                   \
    do {                                                                    \
        if (!(c))                                                           \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                     \
    } while (0)

#define CHECK_EQ(a, b)                                                      \
    do {                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ != b_)                                                       \
            test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, \
                      a_, b_);                                              \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                               \
    do {                                                                    \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);      \
        if (!(fabs(a_ - b_) <= t_))                                         \
            test_fail(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %g)", \
                      #a, #b, a_, b_, t_);                                  \
    } while (0)

#define REQUIRE(c)                                                          \
    do {                                                                    \
        if (!(c)) {                                                         \
            test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #c);               \
            return;                                                         \
        }                                                                   \
    } while (0)

#define SKIP(why)                                                           \
    do {                                                                    \
        test_skip(why);                                                     \
        return;                                                             \
    } while (0)

#endif
