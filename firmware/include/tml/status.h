/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file status.h
 * @brief Status codes of every tml_ function: 0 is OK, errors are negative.
 *
 * Protocol refusals (a bad manifest, a corrupt transfer) are not errors of this kind: they are
 * reason codes (reasons.h), positive, shared with the server.
 */
#ifndef TML_STATUS_H
#define TML_STATUS_H

/** @brief Result of a firmware call. */
typedef enum {
    TML_OK = 0,
    TML_ERR_ARG = -1,       /**< an argument is out of its documented range */
    TML_ERR_NOSPACE = -2,   /**< the caller's buffer is too small */
    TML_ERR_MALFORMED = -3, /**< input bytes do not parse */
    TML_ERR_RANGE = -4,     /**< a value is outside what the wire format allows */
    TML_ERR_FLASH = -5,     /**< the platform's flash driver failed */
    TML_ERR_CRC = -6,       /**< a checksum did not match */
    TML_ERR_STATE = -7,     /**< the call is not valid in the object's current state */
    TML_ERR_BUSY = -8,      /**< try again later (e.g. a frame is still unacknowledged) */
    TML_ERR_REFUSED = -9,   /**< refused with a reason code, returned separately */
    TML_ERR_NOT_FOUND = -10 /**< nothing valid where something was expected */
} tml_status_t;

/**
 * @brief Return a short static description of a status code.
 * @param status a tml_status_t value
 * @return a static string; never NULL
 */
const char *tml_status_str(int status);

#endif /* TML_STATUS_H */
