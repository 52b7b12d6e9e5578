/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A plain main for `make fuzz-regress`: replays every file named on the command line (or found
 * in a named directory) through the harness's LLVMFuzzerTestOneInput, without libFuzzer. A
 * crash or a failed FUZZ_CHECK aborts, and the sanitizers (when built with them) report it.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static size_t replayed;

static void replay(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* An exact-size heap copy: ASan then catches a read one byte past the input. */
    uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    if (getenv("FUZZ_REGRESS_VERBOSE")) {
        fprintf(stderr, "replay %s (%ld bytes)\n", path, size);
    }
    LLVMFuzzerTestOneInput(buf, (size_t)size);
    free(buf);
    replayed++;
}

static void walk(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        return; /* a harness without stored inputs yet */
    }
    if (!S_ISDIR(st.st_mode)) {
        replay(path);
        return;
    }
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char child[4096];
        snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
        walk(child);
    }
    if (d) {
        closedir(d);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        walk(argv[i]);
    }
    printf("%s: %zu inputs replayed\n", argv[0], replayed);
    return 0;
}
