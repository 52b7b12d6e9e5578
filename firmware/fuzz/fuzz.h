/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file fuzz.h
 * @brief Shared pieces of the fuzz harnesses (firmware/fuzz/README.md).
 *
 * Each harness defines LLVMFuzzerTestOneInput(): libFuzzer drives it in `make fuzz`, and
 * regress_main.c replays stored inputs through it in `make fuzz-regress` (no libFuzzer). A
 * broken contract is a crash: FUZZ_CHECK aborts, so both drivers report it like a sanitizer
 * finding.
 */
#ifndef TML_FUZZ_H
#define TML_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "tml/device.h"
#include "tml/manifest.h"

/** @brief Abort with the failed condition when a decoder breaks its documented contract. */
#define FUZZ_CHECK(cond)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fuzz_fail(__FILE__, __LINE__, #cond);                                              \
        }                                                                                      \
    } while (0)

/** @brief Print where a check failed and abort. */
void fuzz_fail(const char *file, int line, const char *what);

/** @brief The entry point of every harness (libFuzzer's name). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/** @brief The device's built-in keys as a keyring (tests/vectors/keys/trusted_public.hex). */
const tml_keyring_t *fuzz_keyring(void);

/**
 * @brief Wrap payload in a tagged COSE_Sign1 signed with the vectors' test signing key 1 (its
 *        seed is SHA-256 of its label, as tests/vectors/generate.py derives it; never a fleet's
 *        key). This lets the fuzzer reach the payload decoders, which run only after the
 *        signature verified.
 * @param payload the payload bytes (any bytes)
 * @param len their count
 * @param out destination
 * @param cap its size
 * @return the COSE length, 0 when it does not fit
 */
size_t fuzz_sign1(const uint8_t *payload, size_t len, uint8_t *out, size_t cap);

/**
 * @brief Read a signed-message harness's input: a mode byte, then a whole COSE_Sign1 (mode
 *        bit 0 clear) or a payload that fuzz_sign1 signs into @p cose (bit 0 set).
 * @param data, size the fuzzer's input
 * @param cose scratch for the signed message, TML_MAX_OFFER_BYTES + 256 bytes
 * @param mode out: the mode byte
 * @param msg out: the message to check
 * @return its length, 0 when the input is to be skipped
 */
size_t fuzz_signed_input(const uint8_t *data, size_t size, uint8_t *cose, uint8_t *mode,
                         const uint8_t **msg);

/** @brief Size of the delta base the harnesses read from. */
#define FUZZ_BASE_BYTES 9000
/** @brief That base: tests/vectors/transfers/delta.base.bin, compiled in (build/fuzz/gen). */
extern const uint8_t fuzz_delta_base[FUZZ_BASE_BYTES];

/** @brief A bounded output, as a model slot: refuses bytes past cap (TRANSFER_OVERFLOW). */
typedef struct {
    uint8_t *buf;
    size_t cap, len;
    int overflowed;
} fuzz_out_t;

/** @brief A tml_sink_fn writing into a fuzz_out_t. */
tml_reason_t fuzz_out_sink(void *ctx, const uint8_t *data, size_t len);

/** @brief A tml_base_read_fn over fuzz_delta_base, refusing reads past its end as the device. */
tml_reason_t fuzz_base_read(void *ctx, uint32_t offset, uint8_t *buf, size_t len);

/** @brief Chunk sizes from a seed: how the bytes of one input are split into calls. */
typedef struct {
    uint32_t state;
    uint32_t max;
} fuzz_split_t;

/** @brief Start a splitter: seed 0 gives one call for everything. */
void fuzz_split_init(fuzz_split_t *s, uint8_t seed);

/** @brief Return the next call's size (0..left; 0 only as an empty call before the end). */
size_t fuzz_split_next(fuzz_split_t *s, size_t left);

/*
 * A device on the posix port with the test-source runner and the built-in test keys, and the
 * gateway's end of its link (device_session.c). Flash: 64 KB slots, 1 KB sectors, an image file
 * in /dev/shm (else $TMPDIR).
 */

/** @brief The device under test. */
extern tml_device_t fuzz_dev;

/** @brief Erase the flash, reset the clock to 0 and the gateway, boot, exchange. */
void fuzz_device_fresh(void);

/** @brief A power cycle: RAM lost, flash kept (and working again), boot. */
void fuzz_device_power_cycle(void);

/** @brief Send the device one well-formed frame (right CRC, the gateway's next seq). */
void fuzz_device_frame(uint8_t kind, const uint8_t *payload, size_t len);

/** @brief The gateway's turn: the device polls, its frames are acknowledged, then checked. */
void fuzz_device_exchange(void);

/** @brief Check the device's invariants (bounded queues, keyring, slots, download). */
void fuzz_device_check(void);

#endif /* TML_FUZZ_H */
