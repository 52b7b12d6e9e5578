/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file trusted_keys.h
 * @brief The Ed25519 public keys compiled into a port's image (TRUSTED_KEYS in the Makefile).
 */
#ifndef TML_TRUSTED_KEYS_H
#define TML_TRUSTED_KEYS_H

#include <stddef.h>

#include "tml/manifest.h"

/**
 * @brief Fill keys with the built-in public keys and their key ids.
 * @param keys destination (owned by the caller)
 * @param cap its capacity
 * @return number of keys written
 */
size_t tml_trusted_keys(tml_key_t *keys, size_t cap);

#endif /* TML_TRUSTED_KEYS_H */
