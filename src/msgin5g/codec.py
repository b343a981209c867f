"""Payload codec for UeConfigDoc and arrays of them (TS 24.546 C.3.1.5; SPEC D1).

CBOR (Content-Format 60) is the wire default; JSON (50) is served and accepted for debugging.
Decoding is strict about well-formedness (trailing bytes, tags, non-text keys are errors) and
lenient about content (unknown keys are kept).
"""

from __future__ import annotations

import io
import json
from typing import Any

import cbor2

CF_JSON = 50
CF_CBOR = 60
SUPPORTED_FORMATS = (CF_CBOR, CF_JSON)


class CodecError(ValueError):
    """The body is not well-formed in its declared format."""


def encode(value: Any, content_format: int = CF_CBOR) -> bytes:
    if content_format == CF_CBOR:
        return cbor2.dumps(value)
    if content_format == CF_JSON:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    raise CodecError(f"unsupported content format {content_format}")


def _check_plain(value: Any, depth: int = 0) -> None:
    """Reject CBOR values that have no place in the data model (tags, undefined, byte maps)."""
    if depth > 32:
        raise CodecError("nesting deeper than 32 levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CodecError(f"map key {k!r} is not a text string")
            _check_plain(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v, depth + 1)
    elif value is None or isinstance(value, str | int | float | bool | bytes):
        return
    else:
        raise CodecError(f"unsupported CBOR item {type(value).__name__}")


def decode_cbor_item(payload: bytes) -> Any:
    """Exactly one well-formed CBOR data item (no trailing bytes), whatever it contains;
    raises CodecError otherwise. The one place that turns bytes into CBOR values."""
    if not payload:
        raise CodecError("empty CBOR body")
    fp = io.BytesIO(payload)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception as e:  # cbor2 raises several types; all mean "malformed"
        raise CodecError(f"malformed CBOR: {e}") from None
    if fp.tell() != len(payload):
        raise CodecError(f"{len(payload) - fp.tell()} bytes after the CBOR data item")
    return value


def decode(payload: bytes, content_format: int = CF_CBOR) -> Any:
    """Decode one data item of the data model; raises CodecError on anything malformed."""
    if content_format == CF_CBOR:
        value = decode_cbor_item(payload)
    elif content_format == CF_JSON:
        try:
            value = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CodecError(f"malformed JSON: {e}") from None
    else:
        raise CodecError(f"unsupported content format {content_format}")
    _check_plain(value)
    return value
