/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file trusted_keys.h
 * @brief The Ed25519 public keys compiled into a port's image (TRUSTED_KEYS in the Makefile).
 */
#ifndef TML_TRUSTED_KEYS_H
#define TML_TRUSTED_KEYS_H

#include <stddef.h>

#include "tml/config.h"
#include "tml/manifest.h"

/**
 * @brief Return the built-in public keys with their key ids (computed at build time).
 * @param count set to the number of keys (1..TML_MAX_BUILTIN_KEYS)
 * @return a static read-only table, valid for the program's life (pass it as builtin_keys)
 */
const tml_key_t *tml_trusted_keys(size_t *count);

#endif /* TML_TRUSTED_KEYS_H */
