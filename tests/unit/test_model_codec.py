"""Data model checks (TS 24.546 C.3.1.3, digest §10), UE identities (SPEC D3), codec (SPEC D1)."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgin5g.codec import CF_CBOR, CF_JSON, CodecError, decode, encode
from msgin5g.model import ModelError, UeIdentity, imei_urn, on_network_config, validate_doc
from msgin5g.problem import Problem, decode_problem


def test_imei_urn_luhn():
    # the example IMEI of RFC 7254 / digest: 35209900-176148-1
    assert imei_urn("35209900", 176148) == "urn:gsma:imei:35209900-176148-1"


def test_identity_from_imei_urn_gives_tac_and_snr():
    ue = UeIdentity.from_query(uri="urn:gsma:imei:35209900-176148-1")
    assert (ue.tac, ue.snr, ue.snr_text) == ("35209900", 176148, "176148")
    assert (
        UeIdentity.from_query(uri="urn:gsma:imei:35209900-176148-1", tac="35209900", snr="176148").snr
        == 176148
    )
    with pytest.raises(ModelError) as e:
        UeIdentity.from_query(uri="urn:gsma:imei:35209900-176148-1", snr="1")
    assert e.value.cause == "IDENTITY_MISMATCH"


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [
        ({"tac": "1234567"}, "INVALID_TAC"),
        ({"tac": "123456789"}, "INVALID_TAC"),
        ({"snr": ""}, "INVALID_SNR"),
        ({"snr": "1234567"}, "INVALID_SNR"),
        ({"snr": "-1"}, "INVALID_SNR"),
        ({"uri": "no scheme"}, "INVALID_URI"),
        ({"vendor": ""}, "INVALID_VENDOR"),
    ],
)
def test_identity_rejects_bad_values(kwargs, cause):
    with pytest.raises(ModelError) as e:
        UeIdentity.from_query(**kwargs)
    assert e.value.cause == cause


def test_snr_leading_zeros_compare_numerically():
    assert UeIdentity.from_query(snr="000042").snr == UeIdentity.from_query(snr="42").snr == 42


GOOD = {
    "valServiceDomain": "d",
    "valUeIds": {
        "uris": ["urn:a:b"],
        "imeiRanges": [{"tac": "12345678", "snrs": ["1"], "snrRange": {"low": "1", "high": "2"}, "x": 1}],
    },
    "ueConfigs": [
        {"configType": "ON_NETWORK", "configData": "{}"},
        {"configType": "COMMON", "configData": "x"},
    ],
    "unknown": {"kept": True},
}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("valServiceDomain"), "valServiceDomain"),
        (lambda d: d.update(valServiceDomain=""), "valServiceDomain"),
        (lambda d: d.update(configName=3), "configName"),
        (lambda d: d.update(valUeIds=[]), "valUeIds"),
        (lambda d: d["valUeIds"].update(uris=[]), "valUeIds/uris"),
        (lambda d: d["valUeIds"].update(uris=["x y"]), "valUeIds/uris/0"),
        (lambda d: d["valUeIds"]["imeiRanges"][0].pop("tac"), "valUeIds/imeiRanges/0/tac"),
        (lambda d: d["valUeIds"]["imeiRanges"][0].update(snrs=[]), "valUeIds/imeiRanges/0/snrs"),
        (
            lambda d: d["valUeIds"]["imeiRanges"][0].update(snrRange={"low": "5"}),
            "valUeIds/imeiRanges/0/snrRange/high",
        ),
        (
            lambda d: d["valUeIds"]["imeiRanges"][0].update(snrRange={"low": "5", "high": "4"}),
            "valUeIds/imeiRanges/0/snrRange",
        ),
        (lambda d: d.update(ueConfigs=[]), "ueConfigs"),
        (lambda d: d["ueConfigs"][0].pop("configData"), "ueConfigs/0/configData"),
        (lambda d: d["ueConfigs"][0].update(configData=b"x"), "ueConfigs/0/configData"),
        (lambda d: d["ueConfigs"][1].update(configType="ON_NETWORK"), "ueConfigs/1/configType"),
    ],
)
def test_validate_doc_names_the_field(mutate, field):
    doc = json.loads(json.dumps(GOOD))
    validate_doc(doc)
    mutate(doc)
    with pytest.raises(ModelError) as e:
        validate_doc(doc)
    assert e.value.field == field


def test_validate_doc_keeps_unknown_keys_and_folds_cddl_id_spelling():
    doc = dict(GOOD, UeConfigDocId="abc")
    out = validate_doc(doc)
    assert out["ueConfigDocId"] == "abc" and "UeConfigDocId" not in out and out["unknown"] == {"kept": True}
    assert on_network_config(out)["configData"] == "{}"


# -- codec ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_codec_roundtrip_both_formats(value):
    assert decode(encode(value, CF_CBOR), CF_CBOR) == value
    assert decode(encode(value, CF_JSON), CF_JSON) == value


@given(st.binary(max_size=64))
def test_codec_never_crashes_on_garbage(data):
    try:
        decode(data, CF_CBOR)
    except CodecError:
        pass
    try:
        decode(data, CF_JSON)
    except CodecError:
        pass


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xa1",
        cbor2.dumps({"a": 1}) + b"\x01",
        cbor2.dumps({1: 2}),
        cbor2.dumps(cbor2.CBORTag(99, 1)),
        cbor2.dumps(cbor2.undefined),
    ],
)
def test_codec_rejects_malformed_or_out_of_model_cbor(payload):
    with pytest.raises(CodecError):
        decode(payload, CF_CBOR)


def test_codec_rejects_deep_nesting():
    v: list = []
    for _ in range(40):
        v = [v]
    with pytest.raises(CodecError):
        decode(cbor2.dumps(v), CF_CBOR)


def test_codec_unknown_format():
    with pytest.raises(CodecError):
        encode({}, 0)
    with pytest.raises(CodecError):
        decode(b"{}", 0)


# -- problem details (RFC 9290) ---------------------------------------------------------------------------


@given(st.sampled_from([0x80, 0x83, 0x84, 0x8D, 0xA0, 0xA5]), st.text(), st.none() | st.text())
def test_problem_roundtrip(code, detail, cause):
    p = Problem(code, detail, cause)
    m = cbor2.loads(p.encode())
    assert m[-4] == code and m[-2] == detail and m[-1] == p.title
    assert decode_problem(p.encode()) == Problem(code, detail, cause)


def test_problem_accepts_text_keys():
    assert decode_problem(cbor2.dumps({"detail": "d", "cause": "C"}), 0x83) == Problem(0x83, "d", "C")
    with pytest.raises(ValueError):
        decode_problem(cbor2.dumps([1]))
