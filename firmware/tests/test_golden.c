/* SPDX-License-Identifier: Apache-2.0 */
/* The golden-input rule (golden.vec) and updates judged by golden-input trials (trial.vec). */
#include <string.h>

#include "sim.h"
#include "tml/golden.h"
#include "tml/platform.h"
#include "tml/sha.h"
#include "tml_test.h"

static void golden_rule(void)
{
    static uint8_t want[2048], got[2048 + 1];
    uint8_t digest[32], sha[32];
    vec_file_t f;
    vec_record_t r;
    if (!vec_open(&f, "golden.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        const char *kind = vec_get(&r, "kind");
        tml_case("golden", vec_get(&r, "name"));
        if (!strcmp(kind, "input")) {
            size_t len = (size_t)vec_u64(&r, "length");
            CHECK_EQ(vec_hex(&r, "bytes", want, sizeof(want)), len);
            vec_hex(&r, "model_sha256", sha, 32);
            got[len] = 0xA5; /* a guard: nothing is written past the input's length */
            tml_golden_input(sha, (uint32_t)vec_u64(&r, "index"), got, len);
            CHECK(memcmp(got, want, len) == 0);
            CHECK_EQ(got[len], 0xA5);
        } else if (!strcmp(kind, "label")) {
            size_t len = vec_hex(&r, "output", want, sizeof(want));
            CHECK_EQ(tml_golden_label(want, len, (uint8_t)vec_u64(&r, "output_type")),
                     vec_u64(&r, "label"));
        } else if (!strcmp(kind, "digest")) {
            size_t len = vec_hex(&r, "outputs", want, sizeof(want));
            vec_hex(&r, "digest", digest, 32);
            tml_sha256(want, len, sha);
            CHECK(memcmp(sha, digest, 32) == 0);
        } else {
            CHECK(!"unknown kind");
        }
    }
    vec_close(&f);
}

static sim_update_t trial_updates[8];

static bool running_is(const uint8_t sha[32])
{
    uint8_t slot = sim_device.running;
    return slot != TML_SLOT_NONE && memcmp(sim_device.slots.meta.slot[slot].sha256, sha, 32) == 0;
}

static void golden_trials(void)
{
    size_t n = sim_load_update_file("trial.vec", trial_updates, 8);
    const uint8_t *confirmed = NULL;
    tml_case("golden", "trial_vectors_loaded");
    CHECK(n >= 5);
    sim_flash_fresh();
    CHECK(sim_boot() == TML_OK);
    sim_run(NULL, 20);
    for (size_t i = 0; i < n; i++) {
        const sim_update_t *u = &trial_updates[i];
        tml_case("golden_trial", u->name);
        sim_update(u);
        CHECK_EQ(sim_seen.last_pkg, u->package_id);
        CHECK_EQ(sim_seen.last_state, u->state);
        CHECK_EQ(sim_seen.last_detail, u->reason);
        if (u->state == TML_STATE_CONFIRMED) {
            confirmed = u->model_sha256;
        }
        CHECK(confirmed && running_is(confirmed)); /* a mismatch reverts to the last good one */
    }
    tml_case("golden", "runner_refuses_a_wrong_input_size");
    {
        tml_model_runner_t *r = sim_device.cfg.runner;
        uint8_t in[128] = {0}, out[16];
        size_t out_len = 0, len = r->input_bytes(r);
        CHECK(len >= 24 && len < 96);
        CHECK(r->invoke_raw(r, in, len + 1, out, sizeof(out), &out_len) == TML_ERR_MALFORMED);
        CHECK(r->invoke_raw(r, in, len, out, 2, &out_len) == TML_ERR_MALFORMED);
        CHECK(r->invoke_raw(r, in, len, out, sizeof(out), &out_len) == TML_OK);
        CHECK(out_len >= 4 && out_len <= 10);
        r->unload(r);
        CHECK_EQ(r->input_bytes(r), 0);
        CHECK(r->invoke_raw(r, in, len, out, sizeof(out), &out_len) == TML_ERR_STATE);
    }
}

void suite_golden(void)
{
    golden_rule();
    golden_trials();
}
