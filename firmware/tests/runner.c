/* SPDX-License-Identifier: Apache-2.0 */
/* Test runner: cases, failures, the closing line; and the .vec reader. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tml_test.h"

const char *tml_vectors_dir = "../tests/vectors";
const char *tml_flash_path = "build/host/test-flash.bin";

static int passed, failed, case_failures;
static const char *case_suite, *case_name;
static bool in_case;

void tml_case(const char *suite, const char *name)
{
    tml_case_end();
    case_suite = suite;
    case_name = name;
    case_failures = 0;
    in_case = true;
}

void tml_case_end(void)
{
    if (!in_case) {
        return;
    }
    in_case = false;
    if (case_failures) {
        failed++;
    } else {
        passed++;
    }
}

void tml_fail(const char *file, int line, const char *what)
{
    if (case_failures < 5) {
        printf("FAIL %s/%s: %s:%d: %s\n", case_suite ? case_suite : "?",
               case_name ? case_name : "?", file, line, what);
    }
    case_failures++;
    if (!in_case) {
        failed++;
    }
}

bool vec_open(vec_file_t *f, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tml_vectors_dir, name);
    FILE *fp = fopen(path, "rb");
    f->buf = NULL;
    if (!fp) {
        printf("FAIL cannot open %s\n", path);
        failed++;
        return false;
    }
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->buf = malloc((size_t)size + 1);
    if (!f->buf || fread(f->buf, 1, (size_t)size, fp) != (size_t)size) {
        fclose(fp);
        return false;
    }
    f->buf[size] = 0;
    f->p = f->buf;
    fclose(fp);
    return true;
}

bool vec_next(vec_file_t *f, vec_record_t *r)
{
    r->n = 0;
    while (*f->p) {
        char *line = f->p, *nl = strchr(line, '\n');
        if (nl) {
            *nl = 0;
            f->p = nl + 1;
        } else {
            f->p = line + strlen(line);
        }
        if (line[0] == '#') {
            continue;
        }
        if (!line[0]) {
            if (r->n) {
                return true;
            }
            continue;
        }
        char *colon = strstr(line, ": ");
        if (!colon) {
            colon = strchr(line, ':');
            if (!colon) {
                continue;
            }
            *colon = 0;
            r->val[r->n] = colon + 1;
        } else {
            *colon = 0;
            r->val[r->n] = colon + 2;
        }
        r->key[r->n] = line;
        if (r->n < 39) {
            r->n++;
        }
    }
    return r->n > 0;
}

void vec_close(vec_file_t *f)
{
    free(f->buf);
    f->buf = NULL;
}

const char *vec_get(const vec_record_t *r, const char *key)
{
    for (int i = 0; i < r->n; i++) {
        if (!strcmp(r->key[i], key)) {
            return r->val[i];
        }
    }
    return NULL;
}

uint64_t vec_u64(const vec_record_t *r, const char *key)
{
    const char *v = vec_get(r, key);
    return v ? strtoull(v, NULL, 10) : 0;
}

int64_t vec_i64(const vec_record_t *r, const char *key)
{
    const char *v = vec_get(r, key);
    return v ? strtoll(v, NULL, 10) : 0;
}

size_t vec_parse_hex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (isxdigit((unsigned char)hex[0]) && isxdigit((unsigned char)hex[1]) && n < cap) {
        char b[3] = {hex[0], hex[1], 0};
        out[n++] = (uint8_t)strtoul(b, NULL, 16);
        hex += 2;
    }
    return n;
}

size_t vec_hex(const vec_record_t *r, const char *key, uint8_t *out, size_t cap)
{
    const char *v = vec_get(r, key);
    return v ? vec_parse_hex(v, out, cap) : 0;
}

size_t vec_list(const vec_record_t *r, const char *key, uint64_t *out, size_t cap)
{
    const char *v = vec_get(r, key);
    size_t n = 0;
    while (v && *v && n < cap) {
        char *end;
        out[n++] = strtoull(v, &end, 10);
        v = *end == ',' ? end + 1 : end;
        if (end == v && *v != ',') {
            break;
        }
    }
    return n;
}

size_t vec_file(const char *rel, uint8_t *out, size_t cap)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tml_vectors_dir, rel);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        return 0;
    }
    size_t n = fread(out, 1, cap, fp);
    fclose(fp);
    return n;
}

#ifdef TML_TEST_TFLM /* build/host-tflm/tml-tests-tflm: the posix port with TFLM (test_tflm.c) */
#define SUITES(X) X(tflm) X(tflm_device) X(tflm_powercut)
#else
#define SUITES(X)                                                                              \
    X(crypto) X(cbor) X(events) X(messages) X(manifest) X(transfer) X(link) X(slots) X(runner) \
    X(device) X(powercut) X(golden) X(enroll) X(rollback) X(seqfloor) X(trust) X(trust_device) X(trust_powercut) \
    X(trust_limits)
#endif
#define DECLARE(s) void suite_##s(void);
SUITES(DECLARE)

int main(int argc, char **argv)
{
    if (argc > 1) {
        tml_vectors_dir = argv[1];
    }
    if (argc > 2) {
        tml_flash_path = argv[2];
    }
    const char *only = getenv("TML_SUITE");
#define RUN(s)                                                                                 \
    if (!only || !strcmp(only, #s)) {                                                          \
        suite_##s();                                                                           \
        tml_case_end();                                                                        \
        printf("suite %-9s %d passed, %d failed so far\n", #s, passed, failed);                \
    }
    SUITES(RUN)
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
