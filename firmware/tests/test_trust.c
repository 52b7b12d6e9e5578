/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trust chain shared with the SDK (tests/vectors/trust.vec, manifest.py TrustState):
 * rotation and policy records applied in order to one device state, offers against that
 * state, the whole fleet/v1/keys bundle, the withdrawal message and the status's "keys".
 */
#define _GNU_SOURCE /* memmem */
#include <string.h>

#include "tml/cbor.h"
#include "tml/link.h"
#include "tml/messages.h"
#include "tml/runner.h"
#include "tml/trust.h"
#include "posix_port.h"
#include "sim.h"
#include "tml_test.h"

size_t load_keys(tml_key_t *keys, size_t cap); /* test_manifest.c: trusted_public.hex */

static tml_key_t builtin[4];
static size_t builtin_count;
static tml_meta_t meta;
static const tml_key_t *ring_keys[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
static tml_keyring_t ring;

static void fresh_state(void)
{
    memset(&meta, 0, sizeof(meta));
    tml_trust_keyring(&meta, builtin, builtin_count, ring_keys, &ring);
}

static tml_reason_t apply(const uint8_t *cose, size_t len)
{
    tml_reason_t why = tml_trust_apply(&meta, &ring, builtin, builtin_count, cose, len);
    tml_trust_keyring(&meta, builtin, builtin_count, ring_keys, &ring);
    return why;
}

/* Parse "a,b,c" of 16-hex-digit key ids; returns the count. */
static size_t kids(const vec_record_t *r, const char *key, uint8_t out[][8], size_t cap)
{
    const char *p = vec_get(r, key);
    size_t n = 0;
    while (p && *p && *p != '-' && n < cap) {
        char one[17] = {0};
        memcpy(one, p, 16);
        if (vec_parse_hex(one, out[n], 8) != 8) {
            break;
        }
        n++;
        p += p[16] == ',' ? 17 : 16;
    }
    return n;
}

static bool is_retired(const uint8_t kid[8])
{
    for (size_t i = 0; i < builtin_count; i++) {
        if ((meta.retired_builtin & (1U << i)) && !memcmp(builtin[i].kid, kid, 8)) {
            return true;
        }
    }
    for (size_t i = 0; i < meta.retired_count; i++) {
        if (!memcmp(meta.retired[i], kid, 8)) {
            return true;
        }
    }
    return false;
}

/* The state after a step: keys in trust order, retired ids, sequences, revoked packages. */
static void expect_state(const vec_record_t *r)
{
    uint8_t want[8][8];
    uint64_t revoked[TML_MAX_REVOKED_PACKAGES + 1];
    size_t n = kids(r, "trusted", want, 8);
    CHECK_EQ(ring.count, n);
    for (size_t i = 0; i < n && i < ring.count; i++) {
        CHECK(memcmp(ring.keys[i]->kid, want[i], 8) == 0);
    }
    n = kids(r, "retired", want, 8);
    CHECK_EQ(meta.retired_count + (size_t)__builtin_popcount(meta.retired_builtin), n);
    for (size_t i = 0; i < n; i++) {
        CHECK(is_retired(want[i]));
    }
    CHECK_EQ(meta.rotation_sequence, vec_u64(r, "record_sequence"));
    CHECK_EQ(meta.min_sequence, vec_u64(r, "min_sequence"));
    n = strcmp(vec_get(r, "revoked"), "-") ? vec_list(r, "revoked", revoked, 9) : 0;
    CHECK_EQ(meta.revoked_count, n);
    for (size_t i = 0; i < n && i < meta.revoked_count; i++) {
        CHECK_EQ(meta.revoked[i], revoked[i]);
    }
}

static void offer(const vec_record_t *r, const uint8_t *cose, size_t len)
{
    tml_manifest_t m;
    uint64_t floor = vec_u64(r, "current_sequence");
    tml_manifest_policy_t p = {
        .keyring = &ring,
        .current_sequence = meta.min_sequence > floor ? meta.min_sequence : floor,
        .hardware_profile = vec_get(r, "hardware_profile"),
        .now = vec_u64(r, "now"),
        .revoked = meta.revoked,
        .revoked_count = meta.revoked_count,
    };
    CHECK_EQ(tml_manifest_check(cose, len, &p, &m), vec_u64(r, "reason"));
}

/* Apply every record of a bundle (TrustState.apply_bundle): count the refusals other than
 * replays, which are records the device already has. */
static void bundle(const vec_record_t *r, const uint8_t *payload, size_t len)
{
    tml_cbor_reader_t rd;
    tml_cbor_item_t arr, rec;
    size_t refused = 0;
    fresh_state();
    tml_cbor_reader_init(&rd, payload, len);
    CHECK(tml_cbor_expect(&rd, TML_CBOR_ARRAY, &arr) == TML_OK);
    CHECK_EQ(arr.arg, vec_u64(r, "records"));
    for (uint64_t i = 0; i < arr.arg; i++) {
        CHECK(tml_cbor_expect(&rd, TML_CBOR_BYTES, &rec) == TML_OK);
        tml_reason_t why = apply(rec.data, (size_t)rec.arg);
        refused += why != TML_REASON_OK && why != TML_REASON_MANIFEST_SEQUENCE_REPLAY;
    }
    CHECK_EQ(refused, vec_u64(r, "refused"));
    expect_state(r);
}

void suite_trust(void)
{
    static uint8_t bytes[8192];
    vec_file_t f;
    vec_record_t r;
    builtin_count = load_keys(builtin, 4);
    fresh_state();
    tml_case("trust", "vectors_open");
    CHECK(vec_open(&f, "trust.vec"));
    int steps = 0;
    while (vec_next(&f, &r)) {
        const char *step = vec_get(&r, "step");
        size_t n = vec_hex(&r, strcmp(step, "record") && strcmp(step, "offer") ? "payload" : "cose",
                           bytes, sizeof(bytes));
        tml_case("trust", vec_get(&r, "name"));
        if (!strcmp(step, "record")) {
            CHECK_EQ(apply(bytes, n), vec_u64(&r, "reason"));
            expect_state(&r);
        } else if (!strcmp(step, "offer")) {
            offer(&r, bytes, n);
        } else if (!strcmp(step, "bundle")) {
            bundle(&r, bytes, n);
        } else if (!strcmp(step, "withdraw")) {
            uint32_t pkg = 0;
            uint16_t reason = 0;
            CHECK(tml_withdraw_decode(bytes, n, &pkg, &reason) == TML_OK);
            CHECK_EQ(pkg, vec_u64(&r, "pkg"));
            CHECK_EQ(reason, vec_u64(&r, "reason"));
        } else if (!strcmp(step, "status")) {
            /* The C status carries the capabilities too: its "keys" entry is the SDK's. */
            uint8_t want[8][8], out[512];
            size_t count = kids(&r, "keys", want, 8), len = 0;
            tml_key_t ks[8];
            const tml_key_t *refs[8];
            for (size_t i = 0; i < count; i++) {
                memcpy(ks[i].kid, want[i], 8);
                refs[i] = &ks[i];
            }
            tml_keyring_t kr = {refs, count};
            tml_status_msg_t s = {.firmware_version = "x", .tflm_version = "y",
                                  .pointer_bits = 32, .keys = &kr};
            CHECK(tml_status_encode(&s, out, sizeof(out), &len) == TML_OK);
            const uint8_t *entry = memmem(bytes, n, "\x64keys", 5);
            CHECK(entry != NULL);
            size_t entry_len = 5 + 1 + 9 * count;
            CHECK(entry && memmem(out, len, entry, entry_len) != NULL);
            /* canonical place: after "seq" and its value, before "slot" */
            const uint8_t *k = memmem(out, len, "\x64keys", 5), *slot = memmem(out, len, "\x64slot", 5);
            CHECK(k && slot && k < slot && k > (const uint8_t *)memmem(out, len, "\x63seq", 4));
        }
        steps++;
    }
    vec_close(&f);
    tml_case("trust", "the_largest_status_with_every_key_fits_the_link");
    {
        static uint8_t out[TML_LINK_TX_MAX_PAYLOAD];
        tml_key_t ks[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
        const tml_key_t *refs[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
        for (size_t i = 0; i < TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS; i++) {
            memset(ks[i].kid, 0xA0 + (int)i, 8);
            refs[i] = &ks[i];
        }
        tml_keyring_t kr = {refs, TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS};
        size_t len = 0;
        tml_status_msg_t s = {.has_model = true, .model = TML_MAX_MODEL_ID, .slot = 1,
                              .uptime_s = INT64_MAX, .free_ram = INT64_MAX, .seq = INT64_MAX,
                              .firmware_version = TML_FIRMWARE_VERSION,
                              .tflm_version = "tflite-micro@90b983c2b3f1",
                              .ops = tml_registered_ops, .op_count = tml_registered_op_count,
                              .arena_bytes = UINT32_MAX, .slot_bytes = UINT32_MAX,
                              .pointer_bits = 64, .keys = &kr};
        CHECK(tml_status_encode(&s, out, sizeof(out), &len) == TML_OK);
        printf("largest status: %zu of %d bytes\n", len, TML_LINK_TX_MAX_PAYLOAD);
    }
    tml_case("trust", "every_step_ran");
    CHECK(steps >= 20);
}

/* Load the cose of the named record of a vector file into out; returns its length (0: none). */
static size_t vector_cose(const char *file, const char *name, uint8_t *out, size_t cap)
{
    vec_file_t f;
    vec_record_t r;
    size_t n = 0;
    if (!vec_open(&f, file)) {
        return 0;
    }
    while (!n && vec_next(&f, &r)) {
        if (!strcmp(vec_get(&r, "name"), name)) {
            n = vec_hex(&r, "cose", out, cap);
        }
    }
    vec_close(&f);
    return n;
}

/* The device end to end over the link: trust records as ROTATION frames stop a download the
 * policy forbids, change the keys in the status and refuse what they revoke; WITHDRAW stops a
 * download; TIME never goes back; a refused offer names only an authenticated package. */
void suite_trust_device(void)
{
    static uint8_t cose[4096];
    vec_file_t f;
    vec_record_t r;
    size_t n;
    sim_flash_fresh();
    CHECK(sim_boot() == TML_OK);

    tml_case("trust_device", "offer_before_time_is_refused_as_not_provably_unexpired");
    n = vector_cose("manifests.vec", "valid_raw", cose, sizeof(cose)); /* pkg 77, seq 10 */
    sim_send(TML_LINK_OFFER, cose, n); /* before the device's HELLO brought the gateway's TIME */
    sim_run(NULL, 40);
    CHECK_EQ(sim_seen.last_pkg, 77); /* signature verified: the id is authenticated */
    CHECK_EQ(sim_seen.last_state, TML_STATE_FAILED);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_MANIFEST_EXPIRED);

    tml_case("trust_device", "time_going_backwards_is_refused");
    CHECK(sim_device.time_synced); /* the sim gateway answered HELLO with SIM_TIME_MS */
    sim_send_time(SIM_TIME_MS - 86400000ULL);
    sim_run(NULL, 10);
    CHECK(tml_device_unix_ms(&sim_device) >= SIM_TIME_MS);
    sim_send_time(1800000000000ULL); /* the manifest vectors' "now": forwards is fine */
    sim_run(NULL, 10);
    CHECK(tml_device_unix_ms(&sim_device) >= 1800000000000ULL);

    tml_case("trust_device", "tampered_offer_is_reported_under_no_package");
    cose[n - 70] ^= 1; /* a payload byte: the signature fails */
    sim_send(TML_LINK_OFFER, cose, n);
    sim_run(NULL, 40);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_MANIFEST_BAD_SIGNATURE);
    CHECK_EQ(sim_seen.last_pkg, 0);
    cose[n - 70] ^= 1;

    tml_case("trust_device", "policy_record_stops_a_download_below_the_new_minimum");
    sim_send(TML_LINK_OFFER, cose, n);
    sim_run(NULL, 40); /* no chunk comes: the download waits */
    CHECK_EQ(sim_seen.last_state, TML_STATE_DOWNLOADING);
    CHECK_EQ(sim_device.ota.state, TML_OTA_DOWNLOADING);
    CHECK(vec_open(&f, "trust.vec"));
    while (vec_next(&f, &r)) { /* every record, in order, as the bridge forwards the bundle */
        if (!strcmp(vec_get(&r, "step"), "record")) {
            size_t len = vec_hex(&r, "cose", cose, sizeof(cose));
            sim_send(TML_LINK_ROTATION, cose, len);
            sim_run(NULL, 40);
        }
    }
    vec_close(&f);
    CHECK_EQ(sim_device.ota.state, TML_OTA_IDLE);
    CHECK_EQ(sim_seen.last_pkg, 77); /* revoke_and_raise_floor: min 12, revoked 77 and 78 */
    CHECK_EQ(sim_seen.last_state, TML_STATE_FAILED);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_ABORTED);

    tml_case("trust_device", "status_names_the_keys_trusted_now");
    sim_send(TML_LINK_STATUS_REQUEST, NULL, 0);
    sim_run(NULL, 20);
    {
        static const uint8_t keys[] = {0x64, 'k', 'e', 'y', 's', 0x81, 0x48, 0x75, 0xfe,
                                       0x18, 0x72, 0x20, 0x04, 0x73, 0x7a};
        CHECK(memmem(sim_seen.last_status, sim_seen.last_status_len, keys, sizeof(keys)));
    }

    tml_case("trust_device", "package_signed_by_a_retired_key_is_refused");
    n = vector_cose("manifests.vec", "valid_raw", cose, sizeof(cose));
    sim_send(TML_LINK_OFFER, cose, n);
    sim_run(NULL, 40);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_MANIFEST_UNKNOWN_KEY);
    CHECK_EQ(sim_seen.last_pkg, 0);

    tml_case("trust_device", "revoked_package_is_refused_aborted");
    n = vector_cose("trust.vec", "offer_revoked_package", cose, sizeof(cose));
    sim_send(TML_LINK_OFFER, cose, n);
    sim_run(NULL, 40);
    CHECK_EQ(sim_seen.last_state, TML_STATE_FAILED);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_ABORTED);

    tml_case("trust_device", "offer_at_the_minimum_is_a_replay");
    n = vector_cose("trust.vec", "offer_at_the_floor", cose, sizeof(cose));
    sim_send(TML_LINK_OFFER, cose, n);
    sim_run(NULL, 40);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_MANIFEST_SEQUENCE_REPLAY);

    tml_case("trust_device", "withdraw_stops_the_download_of_its_package");
    n = vector_cose("trust.vec", "offer_above_the_floor", cose, sizeof(cose));
    sim_send(TML_LINK_OFFER, cose, n);
    sim_run(NULL, 40);
    CHECK_EQ(sim_seen.last_state, TML_STATE_DOWNLOADING);
    uint32_t pkg = sim_seen.last_pkg;
    {
        uint8_t other[4] = {0x82, 0x01, 0x18, 0x23}; /* [1, 35]: another package, ignored */
        sim_send(TML_LINK_WITHDRAW, other, sizeof(other));
        sim_run(NULL, 20);
        CHECK_EQ(sim_device.ota.state, TML_OTA_DOWNLOADING);
        uint8_t w[6] = {0x82, 0x18, (uint8_t)pkg, 0x18, 0x23}; /* [pkg, 35] */
        sim_send(TML_LINK_WITHDRAW, w, 5);
        sim_run(NULL, 20);
    }
    CHECK(pkg >= 24 && pkg < 256);
    CHECK_EQ(sim_device.ota.state, TML_OTA_IDLE);
    CHECK_EQ(sim_seen.last_pkg, pkg);
    CHECK_EQ(sim_seen.last_state, TML_STATE_FAILED);
    CHECK_EQ(sim_seen.last_detail, TML_REASON_ABORTED);

    tml_case("trust_device", "trust_state_and_clock_floor_survive_a_reboot");
    sim_flash_reopen();
    CHECK(sim_boot() == TML_OK);
    CHECK_EQ(sim_device.keyring.count, 1);
    CHECK_EQ(sim_device.slots.meta.min_sequence, 12);
    CHECK_EQ(sim_device.slots.meta.revoked_count, 2);
    CHECK(sim_device.slots.meta.time_floor >= 1800000000UL); /* a day past the build: saved */
    sim_run(NULL, 20); /* the sim gateway's HELLO answer, SIM_TIME_MS, is below the floor */
    CHECK(!sim_device.time_synced);
}

/* A power cut while a trust record is saved leaves the state before it or after it: the
 * record is one metadata save (erase, then write, of the copy not in use). */
void suite_trust_powercut(void)
{
    static uint8_t cose[4096];
    size_t n = vector_cose("trust.vec", "rotate_in_key3", cose, sizeof(cose));
    for (long cut = 0; cut < 3; cut++) {
        tml_case("trust_powercut", cut == 0 ? "cut_at_the_erase" : cut == 1 ? "cut_in_the_write"
                                                                            : "no_cut");
        sim_flash_fresh();
        CHECK(sim_boot() == TML_OK);
        sim_run(NULL, 20);
        if (cut < 2) {
            tml_posix_flash_cut_after(cut);
        }
        sim_send(TML_LINK_ROTATION, cose, n);
        sim_run(NULL, 20);
        sim_flash_reopen(); /* power comes back */
        CHECK(sim_boot() == TML_OK);
        /* torn: the state before (2 built-in keys); whole: after it (+ key 3) */
        CHECK_EQ(sim_device.keyring.count, cut < 2 ? 2 : 3);
        CHECK_EQ(sim_device.slots.meta.rotation_sequence, cut < 2 ? 0 : 1);
        sim_run(NULL, 20);
        sim_send(TML_LINK_ROTATION, cose, n); /* the gateway sends the bundle again */
        sim_run(NULL, 20);
        CHECK_EQ(sim_device.keyring.count, 3);
    }
}
