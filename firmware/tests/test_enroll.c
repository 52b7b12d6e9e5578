/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The MCU's identity (enroll.vec): its HELLO with the public key of its seed, the enroll-message
 * it builds from an ENROLL_CHALLENGE and its Ed25519 signature, byte for byte; refused
 * challenges; the device loop answering a challenge over the link; the posix seed file.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "posix_port.h"
#include "sim.h"
#include "tml/ed25519.h"
#include "tml/enroll.h"
#include "tml/platform.h"
#include "tml_test.h"
#include "trusted_keys.h"

/* A device and a gateway link of our own, wired back to back. */
static tml_device_t dev;
static tml_link_t gw;
static uint8_t to_dev[4096], to_gw[4096], hello[256], proof[256];
static size_t to_dev_len, to_gw_len, hello_len, proof_len;
static unsigned hellos, proofs;
static uint8_t gw_seq;

static void append(uint8_t *buf, size_t *len, size_t cap, const uint8_t *data, size_t n)
{
    if (*len + n <= cap) {
        memcpy(buf + *len, data, n);
        *len += n;
    }
}

static void dev_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    append(to_gw, &to_gw_len, sizeof(to_gw), data, len);
}

static void gw_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    append(to_dev, &to_dev_len, sizeof(to_dev), data, len);
}

static void gw_send(uint8_t kind, const uint8_t *payload, size_t len)
{
    uint8_t frame[600];
    size_t n;
    if (tml_link_build(kind, gw_seq++, 0, payload, len, frame, sizeof(frame), &n) == TML_OK) {
        gw_write(NULL, frame, n);
    }
}

static void pump(int steps)
{
    static uint8_t copy[sizeof(to_gw)];
    for (int i = 0; i < steps; i++) {
        tml_device_poll(&dev);
        size_t n = to_gw_len, off = 0;
        memcpy(copy, to_gw, n);
        to_gw_len = 0;
        while (off < n) {
            size_t used = 0;
            tml_link_frame_t f;
            if (tml_link_receive(&gw, copy + off, n - off, &used, &f, 0)) {
                if (f.kind == TML_LINK_HELLO && f.len <= sizeof(hello)) {
                    hellos++;
                    memcpy(hello, f.payload, f.len);
                    hello_len = f.len;
                } else if (f.kind == TML_LINK_ENROLL_PROOF && f.len <= sizeof(proof)) {
                    proofs++;
                    memcpy(proof, f.payload, f.len);
                    proof_len = f.len;
                }
            }
            off += used;
        }
        if (to_dev_len) {
            uint8_t in[sizeof(to_dev)];
            size_t m = to_dev_len;
            memcpy(in, to_dev, m);
            to_dev_len = 0;
            tml_device_input(&dev, in, m);
        } else {
            tml_posix_clock_advance(50);
        }
    }
}

static void boot(const uint8_t *seed)
{
    size_t n;
    const tml_key_t *keys = tml_trusted_keys(&n);
    tml_device_config_t cfg = {"mcu-0001", "qemu-mps2-an385", tml_runner_test_source(), keys, n,
                               64};
    tml_posix_seed_set(seed);
    tml_posix_clock_manual(true);
    sim_flash_fresh();
    to_dev_len = to_gw_len = hello_len = proof_len = 0;
    hellos = proofs = 0;
    tml_link_init(&gw, gw_write, NULL);
    CHECK(tml_device_init(&dev, &cfg, dev_write, NULL) == TML_OK);
    pump(20);
}

static void vectors(void)
{
    static uint8_t buf[512], want[512], challenge[512];
    uint8_t seed[32], pk[32], sig[64], got_sig[64];
    vec_file_t f;
    vec_record_t r;
    if (!vec_open(&f, "enroll.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        const char *kind = vec_get(&r, "kind");
        const char *uid = vec_get(&r, "uid"), *hardware = vec_get(&r, "hardware");
        size_t len = 0, cn = vec_hex(&r, "challenge", challenge, sizeof(challenge));
        tml_case("enroll", vec_get(&r, "name"));
        if (vec_hex(&r, "seed", seed, sizeof(seed)) == 32) {
            tml_posix_seed_set(seed);
            tml_ed25519_public_key(pk, seed);
            CHECK_EQ(vec_hex(&r, "public_key", want, sizeof(want)), 32);
            CHECK(memcmp(pk, want, 32) == 0);
        }
        if (!strcmp(kind, "hello")) {
            size_t wn = vec_hex(&r, "expect", want, sizeof(want));
            CHECK(tml_enroll_hello(uid, hardware, (uint32_t)vec_u64(&r, "mtu"), buf, sizeof(buf),
                                   &len) == TML_OK);
            CHECK(len == wn && memcmp(buf, want, wn) == 0);
            CHECK(tml_enroll_hello(uid, hardware, 544, buf, wn - 1, &len) == TML_ERR_NOSPACE);
        } else if (!strcmp(kind, "challenge")) {
            size_t wn = vec_hex(&r, "message", want, sizeof(want));
            CHECK(tml_enroll_message(challenge, cn, uid, hardware, buf, sizeof(buf), &len) ==
                  TML_OK);
            CHECK(len == wn && memcmp(buf, want, wn) == 0);
            CHECK(tml_enroll_message(challenge, cn, uid, hardware, buf, wn - 1, &len) ==
                  TML_ERR_NOSPACE);
            vec_hex(&r, "signature", sig, sizeof(sig));
            CHECK(tml_enroll_prove(challenge, cn, uid, hardware, got_sig) == TML_OK);
            CHECK(memcmp(got_sig, sig, 64) == 0);
            CHECK(tml_ed25519_verify(got_sig, pk, want, wn));
            tml_posix_seed_set(NULL); /* no key: no proof */
            CHECK(tml_enroll_prove(challenge, cn, uid, hardware, got_sig) != TML_OK);
        } else if (!strcmp(kind, "bad_challenge")) {
            tml_posix_seed_set(seed);
            CHECK(tml_enroll_message(challenge, cn, "mcu-0001", "hw", buf, sizeof(buf), &len) ==
                  TML_ERR_MALFORMED);
            CHECK(tml_enroll_prove(challenge, cn, "mcu-0001", "hw", got_sig) ==
                  TML_ERR_MALFORMED);
        }
    }
    vec_close(&f);
}

static bool find(const char *name, vec_record_t *out, vec_file_t *f)
{
    if (!vec_open(f, "enroll.vec")) {
        return false;
    }
    while (vec_next(f, out)) {
        if (!strcmp(vec_get(out, "name"), name)) {
            return true;
        }
    }
    return false;
}

static void device_loop(void)
{
    static uint8_t want[512], challenge[512];
    uint8_t seed[32];
    vec_file_t fh, fc;
    vec_record_t h, c;
    if (!find("hello_with_key", &h, &fh) || !find("challenge_gateway", &c, &fc)) {
        CHECK(false);
        return;
    }
    vec_hex(&h, "seed", seed, sizeof(seed));
    size_t cn = vec_hex(&c, "challenge", challenge, sizeof(challenge));

    tml_case("enroll", "device_hello_announces_its_key_and_hardware");
    boot(seed);
    size_t wn = vec_hex(&h, "expect", want, sizeof(want));
    CHECK_EQ(hellos, 1);
    CHECK(hello_len == wn && memcmp(hello, want, wn) == 0);

    tml_case("enroll", "device_answers_a_challenge_with_its_signature");
    gw_send(TML_LINK_ENROLL_CHALLENGE, challenge, cn);
    pump(20);
    wn = vec_hex(&c, "proof", want, sizeof(want));
    CHECK_EQ(proofs, 1);
    CHECK(proof_len == wn && memcmp(proof, want, wn) == 0);

    tml_case("enroll", "device_ignores_a_malformed_challenge");
    gw_send(TML_LINK_ENROLL_CHALLENGE, challenge, cn - 1);
    pump(20);
    CHECK_EQ(proofs, 1);

    tml_case("enroll", "device_ignores_a_challenge_during_a_download");
    dev.ota.state = TML_OTA_DOWNLOADING; /* the proof's memory is the decoder's */
    gw_send(TML_LINK_ENROLL_CHALLENGE, challenge, cn);
    pump(1);
    CHECK(!dev.proof_due);
    dev.ota.state = TML_OTA_IDLE;
    pump(20);
    CHECK_EQ(proofs, 1);

    tml_case("enroll", "an_offer_cancels_a_pending_proof");
    static const uint8_t junk_offer[] = {0x84, 0x40, 0xa0, 0x40, 0x40};
    gw_send(TML_LINK_ENROLL_CHALLENGE, challenge, cn);
    gw_send(TML_LINK_OFFER, junk_offer, sizeof(junk_offer)); /* both arrive before a poll */
    tml_device_input(&dev, to_dev, to_dev_len);
    to_dev_len = 0;
    CHECK(!dev.proof_due);
    pump(20);
    CHECK_EQ(proofs, 1);

    tml_case("enroll", "device_without_a_key_says_the_v1_hello_and_signs_nothing");
    boot(NULL);
    static const uint8_t v1[] = {0xa3, 0x63, 'm', 't', 'u', 0x19, 0x02, 0x20, 0x63, 'u', 'i', 'd',
                                 0x68, 'm', 'c', 'u', '-', '0', '0', '0', '1', 0x64, 'l', 'i',
                                 'n', 'k', 0x01};
    CHECK_EQ(hellos, 1);
    CHECK(hello_len == sizeof(v1) && memcmp(hello, v1, sizeof(v1)) == 0);
    gw_send(TML_LINK_ENROLL_CHALLENGE, challenge, cn);
    pump(20);
    CHECK_EQ(proofs, 0);
    vec_close(&fh);
    vec_close(&fc);
}

static void seed_file(void)
{
    char path[600];
    uint8_t a[32], b[32], zero[32] = {0};
    struct stat st;
    snprintf(path, sizeof(path), "%s.seed", tml_flash_path);
    unlink(path);
    tml_posix_seed_set(NULL);
    tml_case("enroll", "posix_seed_file_made_once_private_then_kept");
    tml_posix_seed_file(path);
    CHECK(tml_platform_device_seed(a) == TML_OK);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_size == 32);
    CHECK(tml_platform_device_seed(b) == TML_OK);
    CHECK(memcmp(a, b, 32) == 0 && memcmp(a, zero, 32) != 0);
    tml_posix_seed_file(NULL);
    CHECK(tml_platform_device_seed(b) != TML_OK);
    unlink(path);
}

void suite_enroll(void)
{
    vectors();
    device_loop();
    seed_file();
    tml_posix_seed_set(NULL);
}
