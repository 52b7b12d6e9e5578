/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file tml_test.h
 * @brief A tiny test runner and the reader of the .vec files in tests/vectors (see generate.py).
 *
 * Every test case (a function, or one vector record) counts once; the runner ends with the
 * line "N passed, N failed".
 */
#ifndef TML_TEST_H
#define TML_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** @brief Start a case named name (ends at the next tml_case or tml_case_end). */
void tml_case(const char *suite, const char *name);
/** @brief End the current case, counting it passed unless a check failed in it. */
void tml_case_end(void);
/** @brief Record a failed check in the current case. */
void tml_fail(const char *file, int line, const char *what);

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            tml_fail(__FILE__, __LINE__, #cond);                                               \
        }                                                                                      \
    } while (0)

#define CHECK_EQ(a, b)                                                                         \
    do {                                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                                    \
        if (a_ != b_) {                                                                        \
            char m_[160];                                                                      \
            snprintf(m_, sizeof(m_), "%s == %s (%lld != %lld)", #a, #b, a_, b_);               \
            tml_fail(__FILE__, __LINE__, m_);                                                  \
        }                                                                                      \
    } while (0)

/** @brief Directory of the vectors and path of a scratch flash image (set by main). */
extern const char *tml_vectors_dir;
extern const char *tml_flash_path;

/** @brief One record: up to 40 key/value pairs pointing into the file buffer. */
typedef struct {
    const char *key[40];
    const char *val[40];
    int n;
} vec_record_t;

/** @brief An open .vec file. */
typedef struct {
    char *buf;
    char *p;
} vec_file_t;

bool vec_open(vec_file_t *f, const char *name);
bool vec_next(vec_file_t *f, vec_record_t *r);
void vec_close(vec_file_t *f);
const char *vec_get(const vec_record_t *r, const char *key);
uint64_t vec_u64(const vec_record_t *r, const char *key);
int64_t vec_i64(const vec_record_t *r, const char *key);
size_t vec_hex(const vec_record_t *r, const char *key, uint8_t *out, size_t cap);
size_t vec_list(const vec_record_t *r, const char *key, uint64_t *out, size_t cap);
/** @brief Read a file below the vectors directory; returns its length (0 if missing). */
size_t vec_file(const char *rel, uint8_t *out, size_t cap);
/** @brief Parse hex text into bytes; returns the count. */
size_t vec_parse_hex(const char *hex, uint8_t *out, size_t cap);

#include <stdio.h>

#endif /* TML_TEST_H */
