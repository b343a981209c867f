"""What the data model admits, and whose UE information a query may use — pure, without sockets
(RFC 8949 §4.2, §6.1; RFC 8259; TS 24.546 C.3.1.3; SPEC D1, D2, D3; docs/hardening.md).
"""

from __future__ import annotations

import json
import math

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgin5g.authz import ADMIN, Identity, Role, requested_ue
from msgin5g.codec import CF_CBOR, CF_JSON, CodecError, check_value, decode, encode
from msgin5g.configdata import validate_config_data
from msgin5g.model import ModelError, UeIdentity, check_tac, check_uri, imei_urn, snr_value, validate_doc

TAC = "35209900"


@pytest.mark.parametrize(
    "value",
    [10**5000, 2**64, -(2**64) - 1, math.nan, math.inf, -math.inf, b"x", "\ud800", {"\udc00": 1}, {1: 2}],
    ids=["bignum", "2^64", "-2^64-1", "nan", "inf", "-inf", "bytes", "surrogate", "surrogate-key", "int-key"],
)
def test_values_without_a_json_form_or_a_tag_free_encoding_are_refused(value):
    with pytest.raises(CodecError):
        check_value({"valServiceDomain": "d", "ext": value})


@pytest.mark.parametrize("value", [2**64 - 1, -(2**64), 1.5, -0.0, "ü€𝄞", None, True, [], {}])
def test_values_of_the_data_model_are_admitted(value):
    check_value({"ext": value})


def test_bodies_that_are_not_documents_may_carry_bytes_and_bignums():
    """SEAL-C outcomes carry raw CoAP payloads: only the structure is checked for them."""
    value = {"outcomes": [{"payload": b"\x01", "n": 10**30, "f": math.nan}]}
    assert decode(cbor2.dumps(value), CF_CBOR)["outcomes"][0]["payload"] == b"\x01"
    with pytest.raises(CodecError):
        decode(cbor2.dumps(value), CF_CBOR, model=True)
    with pytest.raises(CodecError):
        decode(cbor2.dumps({1: 2}), CF_CBOR)


def test_nesting_is_bounded_also_for_json_beyond_the_parsers_recursion_limit():
    with pytest.raises(CodecError):
        decode(b"[" * 10_000 + b"]" * 10_000, CF_JSON)
    with pytest.raises(CodecError):
        decode(cbor2.dumps(json.loads("[" * 33 + "]" * 33)), CF_CBOR)
    with pytest.raises(CodecError):
        decode(b"[NaN]", CF_JSON, model=True)  # not JSON (RFC 8259)
    decode(b"[" * 30 + b"]" * 30, CF_JSON)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.text(alphabet=st.characters(codec=None), max_size=4)
        | st.binary(max_size=3),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=8,
    )
)
def test_whatever_cbor_decoding_admits_has_a_json_representation(value):
    try:
        payload = cbor2.dumps(value)
    except (ValueError, UnicodeEncodeError):
        return  # cbor2 itself cannot encode lone surrogates
    try:
        admitted = decode(payload, CF_CBOR, model=True)
    except CodecError:
        return
    assert decode(encode(admitted, CF_JSON), CF_JSON) == admitted


@pytest.mark.parametrize(
    "check,value",
    [
        (check_tac, f"{TAC}\n"),
        (snr_value, "1\n"),
        (check_uri, "urn:dev:x\n"),
        (check_uri, "urn:dev:x\x00y"),
    ],
)
def test_patterns_end_at_the_end_of_the_string(check, value):
    with pytest.raises(ModelError):
        check(value)


def test_an_imei_urn_with_a_trailing_newline_is_no_imei_urn():
    with pytest.raises(ModelError):
        UeIdentity.from_query(imei_urn(TAC, 1) + "\n")


@pytest.mark.parametrize("ids", [{}, {"foo": ["x"]}])
def test_val_ue_ids_naming_no_ue_is_refused(ids):
    with pytest.raises(ModelError) as e:
        validate_doc({"valServiceDomain": "d", "valUeIds": ids})
    assert e.value.cause == "EMPTY_VAL_UE_IDS"


@pytest.mark.parametrize(
    "data",
    [
        '{"msgin5gServerAddress":"coap://a\\n","ueServiceId":"x"}',
        '{"msgin5gServerAddress":"coap://a","ueServiceId":"x","segmentSize":NaN}',
        '{"msgin5gServerAddress":"coap://a","ueServiceId":"x\\ud800"}',
        '{"msgin5gServerAddress":"coap://a","ueServiceId":"a\\u0007b"}',
        '{"msgin5gServerAddress":"coap://a","ueServiceId":"x\\n"}',
        '{"msgin5gServerAddress":"coap://a","ueServiceId":"x","n":' + "[" * 5000 + "]" * 5000 + "}",
    ],
)
def test_config_data_refusals(data):
    with pytest.raises(ModelError) as e:
        validate_config_data(data)
    assert e.value.cause == "INVALID_CONFIG_DATA"


def test_config_data_with_placeholders_still_passes():
    validate_config_data('{"msgin5gServerAddress":"coap://a","ueServiceId":"sensor-{tac}-{snr}@x"}')


# -- SPEC D3 -----------------------------------------------------------------------------------------------
ME = imei_urn(TAC, 1)
PLAIN = "urn:dev:plain"
UE_ME, UE_PLAIN, GW = Identity(Role.UE, ME), Identity(Role.UE, PLAIN), Identity(Role.GATEWAY, "gw")


@pytest.mark.parametrize("requester", [UE_ME, UE_PLAIN, GW])
def test_claims_never_give_a_non_imei_ue_a_tac_or_serial(requester):
    ue = requested_ue(requester, PLAIN, TAC, "000043", "acme")
    assert (ue.uri, ue.tac, ue.snr, ue.vendor) == (PLAIN, None, None, "acme")


@pytest.mark.parametrize("requester", [UE_ME, GW])
def test_an_imei_ue_has_the_tac_and_serial_of_its_urn_and_claims_must_agree(requester):
    assert requested_ue(requester, ME, TAC, "000001") == UeIdentity(ME, TAC, 1)
    assert requested_ue(requester, ME) == UeIdentity(ME, TAC, 1)
    with pytest.raises(ModelError) as e:
        requested_ue(requester, ME, TAC, "43")
    assert e.value.cause == "IDENTITY_MISMATCH"
    with pytest.raises(ModelError):
        requested_ue(requester, ME, "86000000")


def test_an_administrators_claims_are_taken_as_given():
    assert requested_ue(ADMIN, PLAIN, TAC, "43") == UeIdentity(PLAIN, TAC, 43)
