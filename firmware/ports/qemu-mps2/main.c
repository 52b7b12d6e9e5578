/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The device on an emulated Cortex-M3 or M4: the core loop over UART0, sleeping in wfi. The
 * hardware profile and device id come from the Makefile (HARDWARE_PROFILE, DEVICE_UID); the
 * model runner is TFLM (TML_RUNNER_TFLM) or, in the OTA test-vector image, the test source.
 */
#include "mps2.h"
#include "tml/device.h"
#include "tml/platform.h"
#include "trusted_keys.h"

static tml_device_t device;

static void uart_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    tml_platform_uart_write(data, len);
}

int main(void)
{
    size_t nkeys;
    const tml_key_t *keys = tml_trusted_keys(&nkeys);
    tml_mps2_init();
#ifdef TML_FACTORY_MODEL
    tml_mps2_factory_adopt();
#endif
#if defined(TML_RUNNER_TFLM)
    tml_model_runner_t *runner = tml_runner_tflm();
#elif defined(TML_RUNNER_TEST_SOURCE)
    tml_model_runner_t *runner = tml_runner_test_source(); /* the OTA-vector image only */
#else
#error "pick the model runner: TML_RUNNER_TFLM (shipped images) or TML_RUNNER_TEST_SOURCE"
#endif
    tml_device_config_t cfg = {TML_DEVICE_UID, TML_HARDWARE_PROFILE, runner, keys, nkeys, 32};
    if (tml_device_init(&device, &cfg, uart_write, NULL) != TML_OK) {
        tml_mps2_exit(2);
    }
    for (;;) {
        uint8_t buf[64];
        size_t n;
        while ((n = tml_platform_uart_read(buf, sizeof(buf))) > 0) {
            tml_device_input(&device, buf, n);
        }
        tml_device_poll(&device);
        tml_platform_wait(tml_device_next_ms(&device));
    }
}
