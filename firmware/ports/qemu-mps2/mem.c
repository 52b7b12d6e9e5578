/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memcpy, memmove, memset, memcmp and strlen for this port, written for size: newlib-nano's
 * are tuned for speed (word-at-a-time, an assembly memcpy: 836 bytes of the image). The
 * firmware copies a few hundred bytes at a time (a chunk, a SHA block, a frame); the largest
 * job, clearing an emulated 4 KB sector, costs well under a millisecond byte by byte.
 * Compiled with -fno-builtin -fno-tree-loop-distribute-patterns so the compiler does not turn
 * these loops back into calls to themselves. Reentrant; safe from interrupts.
 */
#include <stddef.h>
#include <string.h>

void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d <= s) {
        for (size_t i = 0; i < n; i++) {
            d[i] = s[i];
        }
    } else {
        while (n--) { /* the destination above the source: copy from the end */
            d[n] = s[n];
        }
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--) {
        *d++ = (unsigned char)c;
    }
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++) {
        if (*p != *q) {
            return *p - *q;
        }
    }
    return 0;
}

size_t strlen(const char *s)
{
    const char *p = s;
    while (*p) {
        p++;
    }
    return (size_t)(p - s);
}
