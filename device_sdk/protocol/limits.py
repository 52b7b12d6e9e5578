"""Size caps of the v1 wire protocol, and the bounded CBOR loader that enforces them.

Every number here crosses a process boundary: the server rejects what exceeds it, the Python
SDK and the C firmware must never produce it. Raise a cap only together with the firmware's
configuration header and the contract test; never lower one without a protocol
version bump, or devices in the field start sending messages the server refuses.
"""

from __future__ import annotations

import io
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, NoReturn

import cbor2

from device_sdk.protocol.reasons import ProtocolError, Reason

# -- generic integer ranges ------------------------------------------------------------------

# Server columns are signed 64-bit (bigint): anything larger cannot be stored, so refuse it here.
MAX_UINT63: Final = 2**63 - 1
MAX_UINT32: Final = 2**32 - 1
# Model versions and packages are database primary keys (signed 32-bit integer columns).
MAX_MODEL_ID: Final = 2**31 - 1
MAX_PACKAGE_ID: Final = 2**31 - 1

# -- events topic: batches and summaries ---------------------------------------------------

MAX_EVENTS_BYTES: Final = 16_384  # payload cap on fleet/v1/{uid}/events, checked before parsing
MAX_EVENTS_PER_BATCH: Final = 1_024
MAX_LABELS: Final = 1_024  # class indices are < MAX_LABELS (covers ImageNet-sized heads)
MAX_SCORE: Final = 255  # scores are the top-1 confidence quantized to a byte
MAX_LATENCY_100US: Final = 600_000  # one minute: a longer inference means a broken clock
MAX_DELTA_MS: Final = 86_400_000  # one day between consecutive events in one batch
MAX_WINDOW_S: Final = 86_400  # a summary covers at most one day
MAX_COUNT: Final = MAX_UINT32  # events of one label in one summary window
# Wall-clock sanity: a device that reports 1970 has not synced its clock (SNTP) yet.
MIN_T0_MS: Final = 1_577_836_800_000  # 2020-01-01T00:00:00Z
MAX_T0_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_PACKED_WIDTH: Final = 32  # bits per value in a bit-packed column

# -- status topic ----------------------------------------------------------------------------

MAX_STATUS_BYTES: Final = 8_192
MAX_STATUS_KEYS: Final = 32  # known keys plus room for fields newer firmware may add
# The same bounds as enrollment's capabilities (fleet/devices/api/serializers.py).
MAX_OPS: Final = 256  # TFLite has fewer than 200 builtin ops
MAX_OP_NAME: Final = 64
MAX_VERSION_TEXT: Final = 64  # firmware_version, tflm_version
MAX_MEMORY_BYTES: Final = 2**31  # arena_bytes, slot_bytes

# -- OTA topics ------------------------------------------------------------------------------

MAX_CHUNK_BYTES: Final = 32_768  # data bytes in one chunk; devices ask for what their RAM holds
MAX_TRANSFER_BYTES: Final = 64 * 1024 * 1024  # offset + length never goes past this
MAX_CHUNK_MSG_BYTES: Final = MAX_CHUNK_BYTES + 32  # [pkg, offset, bytes]: 3 uints + headers
MAX_CHUNK_REQUEST_BYTES: Final = 32  # [pkg, offset, length]
MAX_REPORT_BYTES: Final = 32  # [pkg, state, detail]
MAX_REASON_CODE: Final = 0xFFFF  # detail: unknown codes from newer firmware are kept, not refused
MAX_TRUST_BUNDLE_BYTES: Final = 32_768  # fleet/v1/keys: up to MAX_TRUST_RECORDS records
MAX_TRUST_RECORDS: Final = 64
MAX_WITHDRAW_BYTES: Final = 32  # [pkg, reason]; also [pkg, key] of ota/key (at most 24)
MAX_OFFER_BYTES: Final = 16_384  # the COSE_Sign1 manifest: cose.MAX_MESSAGE_BYTES, the same
# Golden inputs of a model trial (manifest key 15): the device keeps one expected label per
# input in RAM (2 bytes each), so this stays small.
MAX_TRIAL_INPUTS: Final = 8

# -- topics ----------------------------------------------------------------------------------

MAX_UID_CHARS: Final = 64  # matches Device.uid (SlugField max_length=64)

# Deeper nesting than any v1 form needs (2), with room for keys newer firmware adds to the
# status map; it bounds the decoder's recursion, while the schema checks refuse any nesting a
# form does not have.
MAX_DEPTH: Final = 8


class _TagRefused(Exception):
    """Raised inside cbor2 when the input holds a tag: no v1 wire form uses one."""


def _refuse_tag(*_args: object) -> NoReturn:
    raise _TagRefused


class _NoTags(Mapping[int, Any]):
    """Map every tag number to a refusal, so none of cbor2's semantic decoders ever runs.

    The built-in ones (bignums, decimal fractions, datetimes, shared references, sets, regular
    expressions, MIME) would turn untrusted bytes into costly or cyclic Python objects.
    """

    def __getitem__(self, tag: int) -> Any:
        return _refuse_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_NO_TAGS: Final = _NoTags()


def check_size(payload: object, cap: int) -> bytes:
    """Return ``payload`` as bytes, refusing anything over ``cap`` bytes before it is parsed."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(Reason.CBOR_MALFORMED, f"payload is {type(payload).__name__}")
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if size > cap:
        raise ProtocolError(Reason.PAYLOAD_TOO_LARGE, f"{size} bytes > {cap}")
    return bytes(payload)


def loads_bounded(payload: object, *, cap: int) -> Any:
    """Decode exactly one well-formed CBOR item of at most ``cap`` bytes.

    Refuse, as ProtocolError and never as anything else: oversize payloads (PAYLOAD_TOO_LARGE,
    before any parsing), malformed or truncated CBOR, trailing bytes, indefinite lengths,
    duplicate map keys and nesting beyond MAX_DEPTH (CBOR_MALFORMED), and tags
    (SCHEMA_MISMATCH: well-formed, but no v1 form has one). The result holds only ints,
    floats, bytes, str, bool, None, lists/tuples, dicts (whose keys may be any of these) and
    cbor2's simple values: callers still check every type.
    """
    data = check_size(payload, cap)
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            semantic_decoders=_NO_TAGS,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        value = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        if isinstance(exc.__cause__, _TagRefused):
            raise ProtocolError(Reason.SCHEMA_MISMATCH, "CBOR tags are not allowed") from None
        raise ProtocolError(Reason.CBOR_MALFORMED, str(exc)[:120]) from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: whatever cbor2 raises is our refusal
        # RecursionError and MemoryError included: the worker must keep going.
        raise ProtocolError(Reason.CBOR_MALFORMED, type(exc).__name__) from None
    if fp.tell() != len(data):
        raise ProtocolError(Reason.CBOR_MALFORMED, f"{len(data) - fp.tell()} trailing bytes")
    return value


# -- schema checks shared by the decoders ----------------------------------------------------
# Decoders are strict about types (bool is not an int, a float is not an int); encoders accept
# anything with __index__ (numpy integers from the interpreter) but range-check it the same way.


def wire_uint(value: object, field: str, maximum: int, *, minimum: int = 0) -> int:
    """Return a decoded CBOR unsigned integer, refusing other types and values out of range."""
    if type(value) is not int:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected uint")
    if not minimum <= value <= maximum:
        raise ProtocolError(
            Reason.VALUE_OUT_OF_RANGE, f"{field}: {value} not in {minimum}..{maximum}"
        )
    return value


def coerce_int(value: object, field: str) -> int:
    """Return ``value`` as a plain int to encode, refusing bools and non-integers."""
    if isinstance(value, bool):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected int, got bool")
    try:
        return operator.index(value)  # type: ignore[call-overload]
    except TypeError:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected int") from None


def coerce_uint(value: object, field: str, maximum: int, *, minimum: int = 0) -> int:
    """Return ``value`` as an int to encode, refusing non-integers and values out of range."""
    return wire_uint(coerce_int(value, field), field, maximum, minimum=minimum)


def wire_array(
    value: object, field: str, *, length: int | None = None, max_length: int | None = None
) -> Sequence[object]:
    """Return a decoded CBOR array (a list or a tuple: cbor2 releases differ), checking its length.

    A fixed arity that does not match is a schema mismatch; a variable array longer than
    ``max_length`` is a value out of range.
    """
    if not isinstance(value, list | tuple):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected array")
    if length is not None and len(value) != length:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: {len(value)} items, not {length}")
    if max_length is not None and len(value) > max_length:
        raise ProtocolError(
            Reason.VALUE_OUT_OF_RANGE, f"{field}: {len(value)} items > {max_length}"
        )
    return value


def wire_bytes(value: object, field: str, max_length: int) -> bytes:
    """Return a decoded CBOR byte string of at most ``max_length`` bytes."""
    if not isinstance(value, bytes):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected bstr")
    if len(value) > max_length:
        raise ProtocolError(
            Reason.VALUE_OUT_OF_RANGE, f"{field}: {len(value)} bytes > {max_length}"
        )
    return value


def wire_text(value: object, field: str, max_length: int, *, min_length: int = 0) -> str:
    """Return a decoded CBOR text string of printable characters, ``min_length``..``max_length``
    UTF-8 bytes long (bytes, as the firmware counts them).
    """
    if not isinstance(value, str):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, f"{field}: expected tstr")
    # isprintable() first: it refuses lone surrogates, which UTF-8 cannot encode.
    if not value.isprintable():
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: control characters")
    if not min_length <= len(value.encode()) <= max_length:
        raise ProtocolError(
            Reason.VALUE_OUT_OF_RANGE, f"{field}: not {min_length}..{max_length} bytes"
        )
    return value
