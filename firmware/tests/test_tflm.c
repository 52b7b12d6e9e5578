/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The posix port with TFLM (build/host-tflm/tml-tests-tflm, make test-tflm): the real runner
 * (src/tflm_adapter.cc on TFLM's host tree, the kernels of ops.h) on real int8 models, through
 * the update chain and power cuts at every flash write and erase. The vectors are made by
 * tools/tflm_updates.py into build/host-tflm/vectors/ (the first argument).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "posix_port.h"
#include "sim.h"
#include "tml/golden.h"
#include "tml/platform.h"
#include "tml/sha.h"
#include "tml_test.h"

static sim_update_t updates[4];
static size_t update_count;
static uint8_t model[16384];

static bool running_is(const uint8_t sha[32])
{
    uint8_t d[32];
    uint8_t slot = sim_device.running;
    if (slot == TML_SLOT_NONE) {
        return false;
    }
    const tml_slot_info_t *info = &sim_device.slots.meta.slot[slot];
    tml_sha256(tml_platform_flash_map(TML_AREA_SLOT0 + slot), info->size, d);
    return memcmp(d, sha, 32) == 0 && memcmp(info->sha256, sha, 32) == 0;
}

/* The running model is loaded in TFLM and an inference on the sensor runs. */
static bool runs_in_tflm(void)
{
    tml_inference_t out;
    return sim_device.running != TML_SLOT_NONE && sim_runner->input_bytes(sim_runner) == 1024 &&
           sim_runner->infer(sim_runner, &out) == TML_OK && out.label < 4;
}

void suite_tflm(void)
{
    tml_model_runner_t *r = tml_runner_tflm();
    sim_runner = r;
    tml_case("tflm", "runner_reports_tflm_and_the_arena");
    CHECK(!strcmp(r->name, "tflm"));
    CHECK(!strncmp(r->tflm_version, "tflite-micro@", 13));
    CHECK_EQ(r->arena_bytes, 32768);

    tml_case("tflm", "demo_cnn_loads_and_runs_on_the_sensor");
    size_t len = vec_file("tflm_v1_raw.tflite", model, sizeof(model));
    CHECK(len > 4000);
    CHECK_EQ(r->load(r, model, len), TML_OK);
    CHECK_EQ(r->input_bytes(r), 1024);
    tml_inference_t inf;
    CHECK_EQ(r->infer(r, &inf), TML_OK);
    CHECK(inf.label < 4 && inf.score >= 63); /* top-1 of a 4-class softmax */

    tml_case("tflm", "golden_outputs_are_bit_identical_to_the_wheels_tflm");
    {
        uint8_t digest[32], in[1024], out[16];
        vec_file_t f;
        vec_record_t rec;
        int n = 0;
        tml_sha256(model, len, digest);
        if (vec_open(&f, "golden.vec")) {
            while (vec_next(&f, &rec)) {
                uint8_t want[16];
                size_t want_len = vec_hex(&rec, "output", want, sizeof(want)), got = 0;
                tml_golden_input(digest, (uint32_t)vec_u64(&rec, "index"), in, sizeof(in));
                CHECK_EQ(r->invoke_raw(r, in, sizeof(in), out, sizeof(out), &got), TML_OK);
                CHECK(got == want_len && memcmp(out, want, got) == 0);
                n++;
            }
            vec_close(&f);
        }
        CHECK_EQ(n, 8);
    }
    tml_case("tflm", "model_needing_more_than_the_arena_is_refused_at_load");
    r->unload(r); /* the interpreter reads its model when it goes */
    len = vec_file("big_arena.tflite", model, sizeof(model));
    CHECK(len > 4000);
    CHECK_EQ(r->load(r, model, len), TML_ERR_MALFORMED);
    CHECK_EQ(r->input_bytes(r), 0);
}

void suite_tflm_device(void)
{
    sim_runner = tml_runner_tflm();
    update_count = sim_load_update_file("tflm.vec", updates, 4);
    tml_case("tflm_device", "updates_loaded");
    CHECK_EQ(update_count, 4);
    if (update_count != 4) {
        return;
    }
    sim_flash_fresh();
    CHECK(sim_boot() == TML_OK);
    for (size_t i = 0; i < update_count; i++) {
        const sim_update_t *u = &updates[i];
        tml_case("tflm_device", u->name);
        sim_update(u);
        CHECK_EQ(sim_seen.last_pkg, u->package_id);
        CHECK_EQ(sim_seen.last_state, u->state);
        CHECK_EQ(sim_seen.last_detail, u->reason);
        CHECK(running_is(u->state == TML_STATE_CONFIRMED ? u->model_sha256
                                                         : updates[1].model_sha256));
        CHECK(runs_in_tflm());
    }
    tml_case("tflm_device", "reboot_runs_v2_in_tflm");
    sim_flash_reopen();
    CHECK(sim_boot() == TML_OK);
    CHECK(running_is(updates[1].model_sha256));
    CHECK(runs_in_tflm());
}

/* Cut the power at every flash write and erase of each update (torn: half of it lands); after
 * every cut the device boots the old or the new model, loaded and running in TFLM, and the
 * update still completes afterwards. */
void suite_tflm_powercut(void)
{
    char name[160];
    static uint8_t snapshot[2 * 1024 + 2 * 64 * 1024];
    long points = 0, new_after_cut = 0, completed = 0;
    if (update_count != 4) {
        return;
    }
    for (size_t step = 0; step < update_count; step++) {
        const sim_update_t *u = &updates[step];
        const uint8_t *old = step == 0 ? NULL : step == 1 ? updates[0].model_sha256
                                                          : updates[1].model_sha256;
        const uint8_t *final = u->state == TML_STATE_CONFIRMED ? u->model_sha256 : old;
        sim_flash_fresh();
        sim_boot();
        for (size_t k = 0; k < step; k++) {
            if (k < 2) { /* the failing ones leave nothing behind */
                sim_update(&updates[k]);
            }
        }
        memcpy(snapshot, tml_platform_flash_map(TML_AREA_META), sizeof(snapshot));
        long before = tml_posix_flash_ops();
        sim_boot();
        sim_update(u);
        long total = tml_posix_flash_ops() - before;
        snprintf(name, sizeof(name), "%.40s_has_flash_operations", u->name);
        tml_case("tflm_powercut", name);
        CHECK(total > 10);
        for (long cut = 0; cut < total; cut++) {
            sim_flash_fresh();
            tml_platform_flash_erase(TML_AREA_META, 0, 2 * 1024);
            FILE *fp = fopen(tml_flash_path, "r+b");
            fwrite(snapshot, 1, sizeof(snapshot), fp);
            fclose(fp);
            sim_flash_reopen();
            sim_boot();
            tml_posix_flash_cut_after(cut);
            sim_update(u);
            sim_flash_reopen(); /* power comes back */
            snprintf(name, sizeof(name), "%.40s_cut_at_%ld_boots_old_or_new_in_tflm", u->name,
                     cut);
            tml_case("tflm_powercut", name);
            CHECK(sim_boot() == TML_OK);
            bool is_old = old ? running_is(old) : sim_device.running == TML_SLOT_NONE;
            bool is_new = running_is(u->model_sha256);
            CHECK(is_old || is_new);
            if (old || is_new) {
                CHECK(runs_in_tflm());
            }
            new_after_cut += is_new;
            points++;
            snprintf(name, sizeof(name), "%.40s_cut_at_%ld_then_update_completes", u->name, cut);
            tml_case("tflm_powercut", name);
            if (!is_new) {
                sim_update(u);
                CHECK_EQ(sim_seen.last_state, u->state);
                CHECK_EQ(sim_seen.last_detail, u->reason);
            }
            CHECK(running_is(final));
            CHECK(runs_in_tflm());
            completed++;
        }
    }
    tml_case("tflm_powercut", "every_cut_point_of_four_real_model_updates");
    printf("power cuts simulated with TFLM: %ld (new model survived %ld, update completed "
           "after %ld)\n", points, new_after_cut, completed);
    CHECK(points >= 150);
}
