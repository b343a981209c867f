"""MSGin5G configData: JSON Schema validation and placeholder expansion (SPEC D2, D5) — pure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgin5g.configdata import (
    ExpansionError,
    expand_doc,
    schema,
    validate_config_data,
    validate_doc_config_data,
)
from msgin5g.model import ModelError, UeIdentity, imei_urn


def cd(**kw) -> str:
    return json.dumps({"msgin5gServerAddress": "coap://msg.example", "ueServiceId": "u@x"} | kw)


def test_schema_ships_with_the_package_and_is_valid():
    s = schema()
    assert s["required"] == ["msgin5gServerAddress", "ueServiceId"]


def test_valid_config_data():
    assert validate_config_data(cd(segmentSize=1024))["segmentSize"] == 1024
    assert validate_config_data(cd(extra="kept"))["extra"] == "kept"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("not json", "configData"),
        ("[]", "configData"),
        (json.dumps({"ueServiceId": "u"}), "configData/msgin5gServerAddress"),
        (json.dumps({"msgin5gServerAddress": "coap://x"}), "configData/ueServiceId"),
        (cd(msgin5gServerAddress="not a uri"), "configData/msgin5gServerAddress"),
        (cd(ueServiceId=""), "configData/ueServiceId"),
        (cd(segmentSize="2048"), "configData/segmentSize"),
        (cd(segmentSize=10), "configData/segmentSize"),
        (cd(segmentSize=10**6), "configData/segmentSize"),
    ],
)
def test_invalid_config_data_names_the_field(data, field):
    with pytest.raises(ModelError) as e:
        validate_config_data(data)
    assert e.value.field == field and e.value.cause == "INVALID_CONFIG_DATA"


def test_only_on_network_config_data_is_validated():
    doc = {"valServiceDomain": "d", "ueConfigs": [{"configType": "COMMON", "configData": "opaque <xml/>"}]}
    validate_doc_config_data(doc)
    doc["ueConfigs"].append({"configType": "ON_NETWORK", "configData": "{}"})
    with pytest.raises(ModelError) as e:
        validate_doc_config_data(doc)
    assert e.value.field.startswith("ueConfigs/1/configData")


def doc_with(service_id: str, common: str | None = None) -> dict:
    d = {
        "valServiceDomain": "d",
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": cd(ueServiceId=service_id)}],
    }
    if common is not None:
        d["ueConfigs"].append({"configType": "COMMON", "configData": common})
    return d


def test_expansion_per_ue():
    ue = UeIdentity.from_query(uri=imei_urn("35209900", 42))
    out = expand_doc(doc_with("sensor-{tac}-{snr}@msgin5g.example", common="uri={ueUri}"), ue)
    assert (
        json.loads(out["ueConfigs"][0]["configData"])["ueServiceId"]
        == "sensor-35209900-000042@msgin5g.example"
    )
    assert out["ueConfigs"][1]["configData"] == f"uri={ue.uri}"


def test_expansion_leaves_the_stored_document_alone_and_skips_plain_docs():
    d = doc_with("{ueUri}")
    before = json.dumps(d)
    expand_doc(d, UeIdentity(uri="urn:x:1"))
    assert json.dumps(d) == before
    plain = doc_with("fixed")
    assert expand_doc(plain, UeIdentity(uri="urn:x:1")) is plain


def test_expansion_missing_value_is_an_error():
    with pytest.raises(ExpansionError):
        expand_doc(doc_with("{snr}"), UeIdentity(uri="sip:a@b"))


@given(st.text(min_size=1, max_size=30).filter(lambda s: " " not in s))
def test_expansion_cannot_break_json(weird):
    """A UE URI full of quotes and backslashes still yields valid JSON with the exact value."""
    ue = UeIdentity(uri="urn:x:" + weird)
    out = expand_doc(doc_with("id-{ueUri}"), ue)
    assert json.loads(out["ueConfigs"][0]["configData"])["ueServiceId"] == "id-" + ue.uri


@given(st.integers(0, 999_999), st.integers(0, 999_999))
def test_expansion_gives_unique_stable_service_ids(a, b):
    """D5: one range document, every UE its own stable UE Service ID."""
    d = doc_with("s-{tac}-{snr}")

    def sid(n):
        return json.loads(
            expand_doc(d, UeIdentity.from_query(uri=imei_urn("35209900", n)))["ueConfigs"][0]["configData"]
        )["ueServiceId"]

    assert (sid(a) == sid(b)) == (a == b)
