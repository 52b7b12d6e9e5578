/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file golden.h
 * @brief Golden inputs and the top-1 label rule of a model trial (device_sdk/protocol/golden.py).
 *
 * Input i of a model is SHA-256(model_sha256 || "golden" || u32le(i) || u32le(block)) for
 * block = 0, 1, 2, ... concatenated and truncated to input tensor 0's byte length. The label of
 * an output is the index of the first maximum of output tensor 0's bytes, read as int8 or
 * uint8. Reentrant, no global state; not for interrupts (SHA-256 over the whole input).
 */
#ifndef TML_GOLDEN_H
#define TML_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

#include "tml/manifest.h"
#include "tml/runner.h"

/** @brief How output bytes compare (manifest key 15 output_type). Wire values: never renumber. */
typedef enum {
    TML_GOLDEN_OUTPUT_INT8 = 0, /**< signed */
    TML_GOLDEN_OUTPUT_UINT8 = 1 /**< unsigned */
} tml_golden_output_t;

/**
 * @brief Write golden input index of a model into out, 32 bytes of SHA-256 at a time (no
 *        buffer besides out and one digest on the stack).
 * @param model_sha256 the installed model's SHA-256 (manifest key 6)
 * @param index input number
 * @param out receives len bytes (owned by the caller: input tensor 0's size)
 * @param len input tensor 0's byte length
 */
void tml_golden_input(const uint8_t model_sha256[32], uint32_t index, uint8_t *out, size_t len);

/**
 * @brief Return the index of the first maximum of an output.
 * @param output output tensor 0's raw bytes
 * @param len their count (0 gives 0)
 * @param output_type a tml_golden_output_t
 * @return the top-1 label
 */
uint32_t tml_golden_label(const uint8_t *output, size_t len, uint8_t output_type);

/**
 * @brief Run the trial of manifest key 15: golden inputs 0..n-1 through the runner's
 *        invoke_raw, labels and the outputs digest against the manifest's. The device lends
 *        the idle transfer decoder's 4 KB as scratch: the input (input tensor 0's size) and,
 *        after it, the output; a model whose input leaves no room there fails its trial.
 * @param r the runner, with the installed model loaded (input_bytes and invoke_raw set)
 * @param m the manifest (trial_n > 0)
 * @param scratch memory for one input and one output (owned by the caller)
 * @param cap its size
 * @return TML_REASON_OK, TRIAL_FAILED (cannot run) or TRIAL_OUTPUT_MISMATCH
 */
tml_reason_t tml_golden_trial(tml_model_runner_t *r, const tml_manifest_t *m, uint8_t *scratch,
                              size_t cap);

#endif /* TML_GOLDEN_H */
