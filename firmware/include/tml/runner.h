/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file runner.h
 * @brief The model-runner interface the device loop drives, and the two runners.
 *
 * tml_runner_tflm() (src/tflm_adapter.cc) wraps tflite::MicroInterpreter: the Cortex-M images
 * run it, on the model in the active slot and the port's sensor samples. tml_runner_test_source()
 * (src/runner_test_source.c) is a unit-test fake: it runs no model and produces deterministic
 * synthetic inferences and bytes, for the host tests and the OTA test-vector image. Both report
 * the op list of ops.h. Not for interrupts.
 */
#ifndef TML_RUNNER_H
#define TML_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/status.h"

/** @brief One inference's result. */
typedef struct {
    uint16_t label;         /**< top-1 class index */
    uint8_t score;          /**< top-1 confidence, 0..255 */
    uint32_t latency_100us; /**< how long it took */
} tml_inference_t;

/** @brief A model runner: a table of functions over one model at a time. */
typedef struct tml_model_runner {
    const char *name;         /**< "tflm" or "test-source" */
    const char *tflm_version; /**< reported in the capabilities */
    uint32_t arena_bytes;     /**< tensor arena compiled in */
    const char *const *ops;   /**< registered op names */
    size_t op_count;
    /**
     * @brief Load a model that stays mapped (in flash) while loaded.
     * @return TML_OK, or TML_ERR_MALFORMED when the interpreter refuses it
     */
    tml_status_t (*load)(struct tml_model_runner *r, const uint8_t *model, size_t len);
    /**
     * @brief Run one inference on the runner's next input.
     * @return TML_OK, or an error (a trial counts it as a failure)
     */
    tml_status_t (*infer)(struct tml_model_runner *r, tml_inference_t *out);
    /** @brief Forget the loaded model. */
    void (*unload)(struct tml_model_runner *r);
    /** @brief Byte size of the loaded model's input tensor 0 (0 when nothing is loaded). */
    size_t (*input_bytes)(struct tml_model_runner *r);
    /**
     * @brief Run the loaded model once on input tensor 0's raw bytes (input_bytes() long) and
     *        copy output tensor 0's raw bytes into output (capacity cap), its length to *out_len.
     *        The golden-input trial (manifest key 15, golden.h) drives it.
     * @return TML_OK, TML_ERR_STATE when nothing is loaded, TML_ERR_MALFORMED on a size mismatch
     */
    tml_status_t (*invoke_raw)(struct tml_model_runner *r, const uint8_t *input, size_t len,
                               uint8_t *output, size_t cap, size_t *out_len);
    void *ctx;
} tml_model_runner_t;

/** @brief The op names of ops.h, for either runner. */
extern const char *const tml_registered_ops[];
/** @brief How many entries tml_registered_ops has. */
extern const size_t tml_registered_op_count;

/**
 * @brief Return the test source runner (deterministic synthetic inferences, no TFLM).
 * @return a static runner
 */
tml_model_runner_t *tml_runner_test_source(void);

/**
 * @brief Return the TFLM runner (src/tflm_adapter.cc; linked in the Cortex-M images). Its
 *        infer() fills input tensor 0 from tml_platform_sensor_read() and times Invoke() with
 *        tml_platform_micros().
 * @return a static runner
 */
tml_model_runner_t *tml_runner_tflm(void);

#endif /* TML_RUNNER_H */
