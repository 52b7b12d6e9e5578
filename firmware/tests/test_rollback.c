/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The anti-rollback rule shared with the Python SDK (tests/vectors/rollback.vec, made by the
 * SDK's slot store): the floor rises at confirm, never at install; a failed or interrupted
 * trial keeps it; an offer passes only above it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"
#include "tml/slots.h"
#include "tml_test.h"

#define MAX_OPS 32

static void run_op(tml_slots_t *s, const char *op, uint64_t *accept)
{
    tml_manifest_t m;
    uint8_t run;
    *accept = 2;
    if (!strncmp(op, "offer ", 6)) {
        *accept = strtoull(op + 6, NULL, 10) > tml_slots_floor(s) ? 1 : 0;
    } else if (!strncmp(op, "install ", 8)) {
        uint8_t slot = tml_slots_inactive(s);
        memset(&m, 0, sizeof(m));
        m.sequence = strtoull(op + 8, NULL, 10);
        m.package_id = m.sequence;
        m.model_size = 64;
        CHECK(tml_slots_begin_write(s, slot, m.model_size) == TML_OK);
        CHECK(tml_slots_install(s, slot, &m) == TML_OK);
    } else if (!strcmp(op, "confirm")) {
        CHECK(tml_slots_confirm(s) == TML_OK);
    } else if (!strcmp(op, "fail")) {
        CHECK(tml_slots_revert(s) == TML_OK);
    } else if (!strcmp(op, "reboot")) {
        CHECK(tml_slots_load(s) == TML_OK);
        CHECK(tml_slots_boot(s, &run) == TML_OK);
    } else {
        CHECK(!"unknown op");
    }
}

void suite_rollback(void)
{
    vec_file_t f;
    vec_record_t r;
    tml_case("rollback", "vectors_open");
    CHECK(vec_open(&f, "rollback.vec"));
    int scenarios = 0;
    while (vec_next(&f, &r)) {
        uint64_t floors[MAX_OPS], accepts[MAX_OPS];
        char ops[512];
        tml_slots_t s;
        tml_case("rollback", vec_get(&r, "name"));
        size_t n = vec_list(&r, "floors", floors, MAX_OPS);
        CHECK_EQ(vec_list(&r, "accepts", accepts, MAX_OPS), n);
        snprintf(ops, sizeof(ops), "%s", vec_get(&r, "ops"));
        sim_flash_fresh();
        CHECK(tml_slots_load(&s) == TML_OK);
        size_t i = 0;
        for (char *op = strtok(ops, ","); op && i < n; op = strtok(NULL, ","), i++) {
            uint64_t accept;
            run_op(&s, op, &accept);
            CHECK_EQ(tml_slots_floor(&s), floors[i]);
            CHECK_EQ(accept, accepts[i]);
        }
        CHECK_EQ(i, n);
        scenarios++;
    }
    vec_close(&f);
    tml_case("rollback", "every_scenario_ran");
    CHECK(scenarios >= 5);
}
