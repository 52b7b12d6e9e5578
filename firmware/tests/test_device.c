/* SPDX-License-Identifier: Apache-2.0 */
/* Slots metadata, the update chain end to end, and power cuts at every flash write. */
#include <stdlib.h>
#include <string.h>

#include "posix_port.h"
#include "sim.h"
#include "tml/platform.h"
#include "tml/sha.h"
#include "tml_test.h"

static sim_update_t updates[4];
static size_t update_count;

void suite_slots(void)
{
    tml_slots_t s;
    sim_flash_fresh();
    tml_case("slots", "fresh_flash_is_factory_state");
    CHECK(tml_slots_load(&s) == TML_OK);
    CHECK_EQ(s.meta.active, TML_SLOT_NONE);
    CHECK_EQ(tml_slots_floor(&s), 0);
    tml_case("slots", "save_alternates_copies_and_newest_wins");
    s.meta.floor_sequence = 7;
    CHECK(tml_slots_save(&s) == TML_OK);
    CHECK_EQ(s.copy, 0);
    s.meta.floor_sequence = 8;
    CHECK(tml_slots_save(&s) == TML_OK);
    CHECK_EQ(s.copy, 1);
    CHECK(tml_slots_load(&s) == TML_OK);
    CHECK_EQ(s.meta.floor_sequence, 8);
    tml_case("slots", "corrupt_newest_copy_falls_back_to_the_other");
    {
        uint8_t junk[4] = {0, 0, 0, 0};
        CHECK(tml_platform_flash_write(TML_AREA_META, 1024 + 4, junk, sizeof(junk)) == TML_OK);
        CHECK(tml_slots_load(&s) == TML_OK);
        CHECK_EQ(s.meta.floor_sequence, 7);
        CHECK_EQ(s.copy, 0);
    }
    tml_case("slots", "torn_save_keeps_the_previous_record");
    s.meta.floor_sequence = 9;
    tml_posix_flash_cut_after(1); /* the erase lands, the write is torn */
    CHECK(tml_slots_save(&s) != TML_OK);
    sim_flash_reopen();
    CHECK(tml_slots_load(&s) == TML_OK);
    CHECK_EQ(s.meta.floor_sequence, 7);
}

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

void suite_device(void)
{
    update_count = sim_load_updates(updates, 4);
    tml_case("device", "ota_vectors_loaded");
    CHECK_EQ(update_count, 4);
    if (update_count != 4) {
        return;
    }
    sim_flash_fresh();
    tml_case("device", "boots_without_a_model_and_says_hello");
    CHECK(sim_boot() == TML_OK);
    sim_run(NULL, 20);
    CHECK_EQ(sim_seen.hellos, 1);
    CHECK_EQ(sim_seen.statuses, 1);
    CHECK_EQ(sim_device.running, TML_SLOT_NONE);
    for (size_t i = 0; i < update_count; i++) {
        const sim_update_t *u = &updates[i];
        tml_case("device", u->name);
        sim_update(u);
        CHECK_EQ(sim_seen.last_pkg, u->package_id);
        CHECK_EQ(sim_seen.last_state, u->state);
        CHECK_EQ(sim_seen.last_detail, u->reason);
        if (u->state == TML_STATE_CONFIRMED) {
            CHECK(running_is(u->model_sha256));
        } else {
            CHECK(running_is(updates[i - 1].model_sha256)); /* reverted to the previous */
        }
    }
    tml_case("device", "replayed_offer_is_refused_with_its_reason");
    sim_update(&updates[1]);
    CHECK_EQ(sim_seen.last_state, TML_STATE_FAILED);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_MANIFEST_SEQUENCE_REPLAY);
    CHECK(running_is(updates[2].model_sha256));

    tml_case("device", "reboot_runs_the_confirmed_model");
    sim_flash_reopen();
    CHECK(sim_boot() == TML_OK);
    CHECK(running_is(updates[2].model_sha256));
    CHECK_EQ(tml_slots_floor(&sim_device.slots), 103);

    tml_case("device", "events_flow_after_time_sync");
    {
        sim_send_time(SIM_TIME_MS + 1000);
        for (int i = 0; i < 400; i++) {
            sim_run(NULL, 1);
            tml_posix_clock_advance(100);
        }
        CHECK(sim_seen.events >= 1);
        CHECK(sim_device.time_synced);
    }
    tml_case("device", "fallback_boot_never_erases_the_running_model");
    {
        /* b runs in one slot, a (the previous) in the other; damage b's slot */
        sim_flash_fresh();
        sim_boot();
        sim_update(&updates[0]);
        sim_update(&updates[1]);
        uint8_t damaged = sim_device.slots.meta.active, zero = 0;
        CHECK(running_is(updates[1].model_sha256));
        CHECK(tml_platform_flash_write(TML_AREA_SLOT0 + damaged, 0, &zero, 1) == TML_OK);
        sim_flash_reopen();
        CHECK(sim_boot() == TML_OK);
        CHECK(running_is(updates[0].model_sha256)); /* the other slot runs */
        CHECK_EQ(sim_device.slots.meta.active, sim_device.running);
        CHECK(tml_slots_inactive(&sim_device.slots) != sim_device.running);
        /* a failing trial afterwards: the offer writes the damaged slot, the revert keeps a */
        sim_update(&updates[3]);
        CHECK_EQ(sim_seen.last_state, TML_STATE_ROLLED_BACK);
        CHECK(running_is(updates[0].model_sha256));
        CHECK(sim_device.slots.meta.slot[sim_device.running].valid);
        sim_flash_reopen();
        CHECK(sim_boot() == TML_OK);
        CHECK(running_is(updates[0].model_sha256));
    }
    tml_case("device", "status_request_is_answered");
    {
        uint32_t before = sim_seen.statuses;
        sim_send(TML_LINK_STATUS_REQUEST, NULL, 0);
        sim_run(NULL, 20);
        CHECK_EQ(sim_seen.statuses, before + 1);
    }
}

/* Cut the power at every flash operation of each update; the device must boot old or new. */
void suite_powercut(void)
{
    char name[160];
    if (update_count != 4) {
        return;
    }
    long points = 0, new_after_cut = 0;
    for (size_t step = 0; step < update_count; step++) {
        const sim_update_t *u = &updates[step];
        const uint8_t *old = step ? updates[step - 1].model_sha256 : NULL;
        if (step == 3) {
            old = updates[2].model_sha256; /* the failing trial reverts to c */
        }
        /* Reference run: a device that went through the updates before this one. */
        sim_flash_fresh();
        sim_boot();
        for (size_t k = 0; k < step; k++) {
            sim_update(&updates[k]);
        }
        static uint8_t snapshot[2 * 1024 + 2 * 64 * 1024];
        memcpy(snapshot, tml_platform_flash_map(TML_AREA_META), sizeof(snapshot));
        long before = tml_posix_flash_ops();
        sim_boot();
        sim_update(u);
        long total = tml_posix_flash_ops() - before;
        snprintf(name, sizeof(name), "%.40s_has_flash_operations", u->name);
        tml_case("powercut", name);
        CHECK(total > 10);
        for (long cut = 0; cut < total; cut++) {
            /* restore the image as it was before this update, then boot and update */
            sim_flash_fresh();
            tml_platform_flash_erase(TML_AREA_META, 0, 2 * 1024); /* reopen keeps the file */
            FILE *fp = fopen(tml_flash_path, "r+b");
            fwrite(snapshot, 1, sizeof(snapshot), fp);
            fclose(fp);
            sim_flash_reopen();
            sim_boot();
            tml_posix_flash_cut_after(cut);
            sim_update(u);
            sim_flash_reopen(); /* power comes back */
            snprintf(name, sizeof(name), "%.40s_cut_at_%ld_boots_old_or_new", u->name, cut);
            tml_case("powercut", name);
            CHECK(sim_boot() == TML_OK);
            bool is_old = old ? running_is(old) : sim_device.running == TML_SLOT_NONE;
            bool is_new = running_is(u->model_sha256);
            CHECK(is_old || is_new);
            new_after_cut += is_new;
            points++;
            if (cut % 8 == 0) { /* and the update still goes through afterwards */
                snprintf(name, sizeof(name), "%.40s_cut_at_%ld_then_update_completes", u->name,
                         cut);
                tml_case("powercut", name);
                if (!is_new) {
                    sim_update(u);
                    CHECK_EQ(sim_seen.last_state, u->state);
                }
                CHECK(u->state == TML_STATE_CONFIRMED ? running_is(u->model_sha256)
                                                      : running_is(old));
            }
        }
    }
    tml_case("powercut", "hundreds_of_cut_points");
    printf("power cuts simulated: %ld (new model survived %ld)\n", points, new_after_cut);
    CHECK(points >= 200);
}
