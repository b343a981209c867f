"""Payload codec for UeConfigDoc and arrays of them (TS 24.546 C.3.1.5; SPEC D1).

CBOR (Content-Format 60) is the wire default; JSON (50) is served and accepted for debugging.
Decoding is strict about well-formedness (trailing bytes, tags, non-text keys are errors) and
lenient about content (unknown keys are kept).
"""

from __future__ import annotations

import io
import json
import math
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


#: Deepest nesting of maps and arrays a body may have (documents need four levels).
MAX_DEPTH = 32
#: The integers of CBOR major types 0 and 1 (RFC 8949 §3.1): no bignum tags (§3.4.3).
INT_MIN, INT_MAX = -(2**64), 2**64 - 1


def _text_ok(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(f"{what} is not valid Unicode (lone surrogate)") from None


def check_value(value: Any, depth: int = 0, *, model: bool = True) -> None:
    """Admit only values of the data model: what has an RFC 8949 §4.2 deterministic encoding
    without tags *and* a JSON form (RFC 8949 §6.1; the media type's JSON mapping, SPEC D1).

    That is: maps with text keys, arrays, text strings of Unicode scalar values, integers of
    major types 0/1 (-2**64 .. 2**64-1; no bignums), finite floats, true, false and null, at
    most :data:`MAX_DEPTH` levels deep. Refused (CodecError → 4.00): tags, undefined and other
    simple values, byte strings, NaN and infinities, lone surrogates, bignums, deeper nesting.
    A stored document therefore always has a CBOR *and* a JSON representation.

    ``model=False`` checks only the structure every body of the project has (text map keys, no
    tags or undefined, bounded nesting) and leaves the values to the caller — for messages that are
    not UeConfigDocs (SEAL-C outcomes carry byte strings; su-up checks its own values).
    """
    if depth >= MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if model:
            _text_ok(value, "a text string")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if model and not INT_MIN <= value <= INT_MAX:
            raise CodecError("an integer outside -2**64 .. 2**64-1 (no bignums; RFC 8949 §3.4.3)")
    elif isinstance(value, float):
        if model and (math.isnan(value) or math.isinf(value)):
            raise CodecError("NaN and infinities have no JSON representation")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CodecError(f"map key {k!r} is not a text string")
            if model:
                _text_ok(k, "a map key")
            check_value(v, depth + 1, model=model)
    elif isinstance(value, list):
        for v in value:
            check_value(v, depth + 1, model=model)
    elif isinstance(value, bytes):
        if not model:
            return
        raise CodecError("byte strings have no place in the data model (not JSON-representable)")
    else:
        raise CodecError(f"unsupported CBOR item {type(value).__name__}")


def _no_constant(name: str) -> Any:
    raise CodecError(f"{name} is not JSON (RFC 8259)")


def loads_json(text: str | bytes, *, model: bool = True) -> Any:
    """JSON whose nesting beyond the parser's recursion limit is a CodecError like any other
    malformation; with ``model`` strict RFC 8259 (no NaN/Infinity) and values checked with
    :func:`check_value`."""
    try:
        value = json.loads(text, parse_constant=_no_constant) if model else json.loads(text)
    except RecursionError:
        raise CodecError(f"malformed JSON: nesting deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, CodecError):
            raise
        raise CodecError(f"malformed JSON: {e}") from None
    check_value(value, model=model)
    return value


def decode_cbor_item(payload: bytes) -> Any:
    """Exactly one well-formed CBOR data item (no trailing bytes), whatever it contains;
    raises CodecError otherwise. The one place that turns bytes into CBOR values."""
    if not payload:
        raise CodecError("empty CBOR body")
    fp = io.BytesIO(payload)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except RecursionError:
        raise CodecError(f"malformed CBOR: nesting deeper than {MAX_DEPTH} levels") from None
    except Exception as e:  # cbor2 raises several types; all mean "malformed"
        raise CodecError(f"malformed CBOR: {e}") from None
    if fp.tell() != len(payload):
        raise CodecError(f"{len(payload) - fp.tell()} bytes after the CBOR data item")
    return value


def decode(payload: bytes, content_format: int = CF_CBOR, *, model: bool = False) -> Any:
    """Decode one data item; raises CodecError on anything malformed. With ``model``, also on
    anything outside the data model (:func:`check_value`) — what a UeConfigDoc body must meet."""
    if content_format == CF_CBOR:
        value = decode_cbor_item(payload)
    elif content_format == CF_JSON:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(f"malformed JSON: {e}") from None
        return loads_json(text, model=model)
    else:
        raise CodecError(f"unsupported content format {content_format}")
    check_value(value, model=model)
    return value
