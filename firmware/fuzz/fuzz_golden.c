/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The golden-input trial record, manifest key 15 (src/manifest.c trial_field), and the label
 * rule of src/golden.c. Input: the CBOR value of key 15; the harness puts it into an otherwise
 * valid manifest payload, signs it with the test key and checks it. An accepted trial must be
 * within golden.h's bounds, and the device's judging of it (golden inputs, labels) must agree
 * with a reference label rule written here.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/cbor.h"
#include "tml/golden.h"
#include "tml/protocol.h"

static uint8_t payload[TML_MAX_OFFER_BYTES], cose[TML_MAX_OFFER_BYTES + 256];

/* Reference: index of the first maximum, comparing the bytes as int8 or uint8. */
static uint32_t ref_label(const uint8_t *out, size_t len, uint8_t type)
{
    uint32_t best = 0;
    for (size_t i = 1; i < len; i++) {
        int a = type == TML_GOLDEN_OUTPUT_INT8 ? (int)(int8_t)out[i] : (int)out[i];
        int b = type == TML_GOLDEN_OUTPUT_INT8 ? (int)(int8_t)out[best] : (int)out[best];
        if (a > b) {
            best = (uint32_t)i;
        }
    }
    return best;
}

/* A valid raw manifest payload (keys 1..14 but 11, in canonical order) plus key 15 = value. */
static size_t build_payload(const uint8_t *value, size_t len)
{
    static const uint8_t digest[32] = {7};
    tml_cbor_writer_t w;
    size_t n = 0;
    tml_cbor_writer_init(&w, payload, sizeof(payload));
    tml_cbor_put_head(&w, TML_CBOR_MAP, 14);
    tml_cbor_put_uint(&w, TML_K_VERSION), tml_cbor_put_uint(&w, 1);
    tml_cbor_put_uint(&w, TML_K_SEQUENCE), tml_cbor_put_uint(&w, 5);
    tml_cbor_put_uint(&w, TML_K_MODEL_NAME), tml_cbor_put_text(&w, "kws");
    tml_cbor_put_uint(&w, TML_K_MODEL_VERSION), tml_cbor_put_text(&w, "1.0");
    tml_cbor_put_uint(&w, TML_K_HARDWARE), tml_cbor_put_text(&w, "mps2-an385");
    tml_cbor_put_uint(&w, TML_K_MODEL_SHA256), tml_cbor_put_bytes(&w, digest, 32);
    tml_cbor_put_uint(&w, TML_K_MODEL_SIZE), tml_cbor_put_uint(&w, 1000);
    tml_cbor_put_uint(&w, TML_K_ENCODING), tml_cbor_put_uint(&w, TML_ENCODING_RAW);
    tml_cbor_put_uint(&w, TML_K_TRANSFER_SHA256), tml_cbor_put_bytes(&w, digest, 32);
    tml_cbor_put_uint(&w, TML_K_TRANSFER_SIZE), tml_cbor_put_uint(&w, 1000);
    tml_cbor_put_uint(&w, TML_K_ARENA_BYTES), tml_cbor_put_uint(&w, 8000);
    tml_cbor_put_uint(&w, TML_K_EXPIRES_AT), tml_cbor_put_uint(&w, 4000000000ULL);
    tml_cbor_put_uint(&w, TML_K_PACKAGE_ID), tml_cbor_put_uint(&w, 3);
    tml_cbor_put_uint(&w, TML_K_TRIAL), tml_cbor_put_raw(&w, value, len);
    return tml_cbor_finish(&w, &n) == TML_OK ? n : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t in[300], out[300];
    /* The label rule on the raw input, both output types. */
    for (uint8_t type = 0; type < 2; type++) {
        uint32_t label = tml_golden_label(data, size, type);
        FUZZ_CHECK(label == ref_label(data, size, type));
        FUZZ_CHECK(size == 0 ? label == 0 : label < size);
    }
    if (size > 4096) {
        return 0;
    }
    size_t plen = build_payload(data, size);
    size_t clen = plen ? fuzz_sign1(payload, plen, cose, sizeof(cose)) : 0;
    if (!clen) {
        return 0;
    }
    tml_manifest_policy_t policy = {.keyring = fuzz_keyring(), .hardware_profile = "mps2-an385",
                                    .now = 1800000000ULL};
    tml_manifest_t m;
    if (tml_manifest_check(cose, clen, &policy, &m) != TML_REASON_OK) {
        return 0;
    }
    FUZZ_CHECK(m.trial_n >= 1 && m.trial_n <= TML_MAX_TRIAL_INPUTS);
    FUZZ_CHECK(m.trial_max_mismatches <= m.trial_n && m.trial_output_type <= 1);
    /* Judge the trial as device.c does, with each golden input as its own output. */
    size_t in_len = 1 + m.trial_labels[0] % sizeof(in);
    unsigned mismatches = 0;
    for (uint8_t i = 0; i < m.trial_n; i++) {
        FUZZ_CHECK(m.trial_labels[i] < TML_MAX_LABELS);
        tml_golden_input(m.model_sha256, i, in, in_len);
        memcpy(out, in, in_len);
        uint32_t label = tml_golden_label(out, in_len, m.trial_output_type);
        FUZZ_CHECK(label < in_len && label == ref_label(out, in_len, m.trial_output_type));
        mismatches += label != m.trial_labels[i];
    }
    FUZZ_CHECK(mismatches <= m.trial_n);
    return 0;
}
