/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Figures of the core's RAM layout for tools/size_report.py, compiled with the image's flags
 * and never linked into it. Each figure is the size of an array, so `nm -S` reads it.
 */
#include "tml/device.h"

/** The OTA buffer: the link's receive frame (it holds a chunk) plus the flash staging buffer. */
const uint8_t tml_layout_ota_buffer[sizeof(((tml_link_t *)0)->rx) +
                                    sizeof(((tml_ota_t *)0)->stage)] = {0};

/** The transfer decoder (window, probabilities, lookahead, delta scratch, two SHA-256). */
const uint8_t tml_layout_transfer[sizeof(tml_transfer_t)] = {0};

/** All of the core's state. */
const uint8_t tml_layout_device[sizeof(tml_device_t)] = {0};
