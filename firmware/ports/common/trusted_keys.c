/* SPDX-License-Identifier: Apache-2.0 */
/* Built-in trusted keys: the bytes come from a header the Makefile generates (TRUSTED_KEYS). */
#include "trusted_keys.h"

#include <string.h>

#include "trusted_keys_data.h"

static const uint8_t public_keys[][32] = TML_TRUSTED_KEY_BYTES;

size_t tml_trusted_keys(tml_key_t *keys, size_t cap)
{
    size_t n = sizeof(public_keys) / sizeof(public_keys[0]);
    n = n < cap ? n : cap;
    for (size_t i = 0; i < n; i++) {
        memcpy(keys[i].public_key, public_keys[i], 32);
        tml_key_id(keys[i].public_key, keys[i].kid);
    }
    return n;
}
