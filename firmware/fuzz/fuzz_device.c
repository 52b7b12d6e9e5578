/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The device as a whole (src/device.c) on the posix port with the test-source runner: a
 * sequence of steps from the gateway's side, each followed by the exchange a gateway makes
 * (the device polls, its frames are acknowledged). Input: steps, each an opcode byte and its
 * operands:
 *   0 FRAME  kind, len (u16 le), payload: a well-formed frame (CRC and seq right) for any kind
 *   1 RAW    len (u8), bytes: wire bytes as they are (noise, broken frames)
 *   2 TICK   n: n * 64 ms pass
 *   3 REBOOT a power cycle: RAM is lost, flash stays, the device boots again
 *   4 CUT    n: the power goes at the n-th next flash write or erase (torn); the flash fails
 *            from then on, until a REBOOT
 * Each run starts from erased flash. The device must never break its own invariants.
 */
#include "fuzz.h"
#include "posix_port.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t i = 0;
    fuzz_device_fresh();
    while (i < size) {
        uint8_t op = data[i++] % 5;
        if (op == 0 && size - i >= 3) { /* FRAME */
            uint8_t kind = data[i];
            size_t len = (size_t)data[i + 1] | (size_t)data[i + 2] << 8;
            i += 3;
            len %= TML_LINK_MAX_PAYLOAD + 1;
            if (len > size - i) {
                len = size - i;
            }
            fuzz_device_frame(kind, data + i, len);
            i += len;
        } else if (op == 1 && i < size) { /* RAW */
            size_t len = data[i++];
            if (len > size - i) {
                len = size - i;
            }
            tml_device_input(&fuzz_dev, data + i, len);
            i += len;
        } else if (op == 2 && i < size) { /* TICK */
            tml_posix_clock_advance(64u * data[i++]);
        } else if (op == 3) { /* REBOOT */
            fuzz_device_power_cycle();
        } else if (op == 4 && i < size) { /* CUT */
            tml_posix_flash_cut_after(data[i++] % 8);
        }
        fuzz_device_exchange();
    }
    return 0;
}
