/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The events sequence survives a reboot: the device persists a floor in its metadata (a
 * reservation, one save per TML_SEQ_RESERVE_MS of sequences) and numbers batches above it
 * after a restart, whatever its clock says, so the server never sees a seq twice.
 */
#include <string.h>

#include "posix_port.h"
#include "sim.h"
#include "tml_test.h"

static sim_update_t first[1];

/* The gateway sets the clock (the same instant after the reboot: a gateway whose clock was
 * reset, or a device that ran ahead), then 40 s of inferences pass. */
static void run_synced(void)
{
    sim_send_time(SIM_TIME_MS);
    for (int i = 0; i < 400; i++) {
        sim_run(NULL, 1);
        tml_posix_clock_advance(100);
    }
}

void suite_seqfloor(void)
{
    tml_case("seqfloor", "a_model_to_run");
    CHECK_EQ(sim_load_updates(first, 1), 1);
    sim_flash_fresh();
    CHECK(sim_boot() == TML_OK);
    CHECK_EQ(tml_slots_seq_floor(&sim_device.slots), 0);
    sim_update(&first[0]);
    CHECK(sim_device.running != TML_SLOT_NONE);

    tml_case("seqfloor", "a_sent_batch_is_covered_by_the_persisted_floor");
    uint32_t events_before = sim_seen.events;
    run_synced();
    CHECK(sim_seen.events > events_before);
    uint64_t sent = sim_device.last_seq;
    CHECK(sent > 0);
    CHECK(tml_slots_seq_floor(&sim_device.slots) > sent);

    tml_case("seqfloor", "batches_within_a_reservation_cost_no_flash_write");
    uint32_t generation = sim_device.slots.meta.generation;
    uint32_t events_mid = sim_seen.events;
    for (int i = 0; i < 400; i++) {
        sim_run(NULL, 1);
        tml_posix_clock_advance(100);
    }
    CHECK(sim_seen.events > events_mid);
    CHECK_EQ(sim_device.slots.meta.generation, generation);
    sent = sim_device.last_seq;

    tml_case("seqfloor", "after_a_reboot_seqs_go_on_above_every_one_sent");
    sim_flash_reopen(); /* power cycle: RAM is gone, the clock starts over */
    CHECK(sim_boot() == TML_OK);
    CHECK(sim_device.last_seq >= sent);
    events_mid = sim_seen.events;
    run_synced();
    CHECK(sim_seen.events > events_mid);
    CHECK(sim_device.last_seq > sent);
}
