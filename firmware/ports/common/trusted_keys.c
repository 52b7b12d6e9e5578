/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Built-in trusted keys: a read-only table (flash, not RAM) from a header the Makefile
 * generates from TRUSTED_KEYS with tools/trusted_keys.py, key ids included.
 */
#include "trusted_keys.h"

#include "trusted_keys_data.h"

TML_STATIC_ASSERT(TML_TRUSTED_KEY_COUNT >= 1 && TML_TRUSTED_KEY_COUNT <= TML_MAX_BUILTIN_KEYS,
                  "TRUSTED_KEYS holds 1..TML_MAX_BUILTIN_KEYS keys");

static const tml_key_t keys[TML_TRUSTED_KEY_COUNT] = TML_TRUSTED_KEYS;

const tml_key_t *tml_trusted_keys(size_t *count)
{
    *count = TML_TRUSTED_KEY_COUNT;
    return keys;
}
