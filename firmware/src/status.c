/* SPDX-License-Identifier: Apache-2.0 */
/* Names of status and reason codes, for logs and tests. */
#include "tml/reasons.h"
#include "tml/status.h"

const char *tml_status_str(int status)
{
    switch (status) {
    case TML_OK: return "ok";
    case TML_ERR_ARG: return "bad argument";
    case TML_ERR_NOSPACE: return "buffer too small";
    case TML_ERR_MALFORMED: return "malformed input";
    case TML_ERR_RANGE: return "value out of range";
    case TML_ERR_FLASH: return "flash error";
    case TML_ERR_CRC: return "checksum mismatch";
    case TML_ERR_STATE: return "wrong state";
    case TML_ERR_BUSY: return "busy";
    case TML_ERR_REFUSED: return "refused";
    case TML_ERR_NOT_FOUND: return "not found";
    default: return "unknown status";
    }
}

const char *tml_reason_str(int reason)
{
    switch (reason) {
#define R(name) case TML_REASON_##name: return #name;
    R(OK) R(MANIFEST_MALFORMED) R(MANIFEST_UNSUPPORTED_VERSION) R(MANIFEST_BAD_ALGORITHM)
    R(MANIFEST_UNKNOWN_KEY) R(MANIFEST_BAD_SIGNATURE) R(MANIFEST_SEQUENCE_REPLAY)
    R(MANIFEST_EXPIRED) R(MANIFEST_WRONG_HARDWARE) R(MANIFEST_TOO_LARGE)
    R(MANIFEST_ARENA_TOO_SMALL) R(MANIFEST_BAD_ROTATION) R(TRANSFER_OVERFLOW)
    R(TRANSFER_TRUNCATED) R(TRANSFER_DIGEST_MISMATCH) R(MODEL_DIGEST_MISMATCH)
    R(DELTA_BASE_MISMATCH) R(DECODE_ERROR) R(CHUNK_OUT_OF_ORDER) R(PACKAGE_NOT_OFFERED)
    R(FLASH_ERROR) R(TRIAL_FAILED) R(TRIAL_INTERRUPTED) R(MODEL_LOAD_FAILED) R(TIMEOUT)
    R(ABORTED) R(TRIAL_OUTPUT_MISMATCH) R(PAYLOAD_TOO_LARGE) R(CBOR_MALFORMED) R(SCHEMA_MISMATCH)
    R(VALUE_OUT_OF_RANGE) R(UNKNOWN_DEVICE) R(UNKNOWN_MODEL)
#undef R
    default: return "UNKNOWN";
    }
}
