/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The device as a host process: its UART is stdin/stdout, or a TCP port it listens on
 * (--listen PORT); its flash is an image file (--flash PATH). Usage:
 *   tml-device [--flash PATH] [--listen PORT] [--uid UID] [--profile NAME]
 *              [--factory MODEL.tflite [--factory-package ID]]
 * It runs models in TFLite Micro (src/tflm_adapter.cc on TFLM's host build, the runner of the
 * Cortex-M images) on the port's synthetic sensor (runner_posix.c); the test-source runner is
 * only the host unit tests' fake. --factory puts a model in slot 0 at first boot, as the
 * Cortex-M images' factory model. Its Ed25519 identity key is the seed file PATH.seed next to
 * the flash image (made at first boot from /dev/urandom).
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "posix_port.h"
#include "tml/device.h"
#include "tml/platform.h"
#include "trusted_keys.h"

static tml_device_t device;

static void uart_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    tml_platform_uart_write(data, len);
}

static int listen_once(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 1)) {
        perror("listen");
        exit(2);
    }
    int c = accept(s, NULL, NULL);
    close(s);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return c;
}

int main(int argc, char **argv)
{
    const char *flash = "tml-flash.bin", *uid = TML_DEVICE_UID, *profile = TML_HARDWARE_PROFILE;
    const char *factory = NULL;
    unsigned long factory_package = 0;
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--flash")) {
            flash = argv[i + 1];
        } else if (!strcmp(argv[i], "--listen")) {
            port = atoi(argv[i + 1]);
        } else if (!strcmp(argv[i], "--uid")) {
            uid = argv[i + 1];
        } else if (!strcmp(argv[i], "--profile")) {
            profile = argv[i + 1];
        } else if (!strcmp(argv[i], "--factory")) {
            factory = argv[i + 1];
        } else if (!strcmp(argv[i], "--factory-package")) {
            factory_package = strtoul(argv[i + 1], NULL, 10);
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (tml_posix_flash_open(flash, 64 * 1024, 1024) != TML_OK) {
        fprintf(stderr, "cannot open flash image %s\n", flash);
        return 2;
    }
    if (factory != NULL && tml_posix_factory_adopt(factory, (uint32_t)factory_package) != TML_OK) {
        fprintf(stderr, "cannot install factory model %s\n", factory);
        return 2;
    }
    static char seed[4096];
    snprintf(seed, sizeof(seed), "%s.seed", flash);
    tml_posix_seed_file(seed);
    if (port) {
        int c = listen_once(port);
        tml_posix_uart_fds(c, c);
    }
    size_t nkeys;
    const tml_key_t *keys = tml_trusted_keys(&nkeys);
    tml_device_config_t cfg = {uid, profile, tml_runner_tflm(), keys, nkeys, 64};
    if (tml_device_init(&device, &cfg, uart_write, NULL) != TML_OK) {
        fprintf(stderr, "boot failed: flash error\n");
        return 2;
    }
    for (;;) {
        uint8_t buf[256];
        size_t n;
        while ((n = tml_platform_uart_read(buf, sizeof(buf))) > 0) {
            tml_device_input(&device, buf, n);
        }
        tml_device_poll(&device);
        tml_platform_wait(tml_device_next_ms(&device));
    }
}
