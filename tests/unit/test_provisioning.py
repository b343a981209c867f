"""Provisioning files: the CSV fast path gives the same verdict as full document validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgin5g.configdata import validate_doc_config_data
from msgin5g.model import ModelError, validate_doc
from msgin5g.provisioning.files import ProvisioningError, csv_doc, load

uris = st.sampled_from(["urn:a:1", "sip:x@y", "bad uri", "", "urn:gsma:imei:35209900-000001-9"])
sids = st.sampled_from(["u@x", "", "x" * 300, "sensor-{tac}"])
addrs = st.sampled_from(["coap://m.example", "no-scheme", "", "coap+tcp://[::1]:5683"])
segs = st.sampled_from(["", "1024", "63", "65535", "70000", "big", "0"])


def full_verdict(doc: dict) -> bool:
    try:
        validate_doc(doc)
        validate_doc_config_data(doc)
    except ModelError:
        return False
    return True


@given(uris, sids, addrs, segs)
def test_csv_fast_path_agrees_with_full_validation(uri, sid, addr, seg):
    data = {"msgin5gServerAddress": addr, "ueServiceId": sid}
    if seg:
        data["segmentSize"] = int(seg) if seg.isdigit() else seg
    reference = {
        "valServiceDomain": "d",
        "valUeIds": {"uris": [uri]},
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": json.dumps(data)}],
    }
    try:
        doc = csv_doc(uri, sid, addr, seg, "d")
    except ModelError:
        assert not full_verdict(reference)
    else:
        assert full_verdict(reference) and full_verdict(doc)
        assert json.loads(doc["ueConfigs"][0]["configData"]) == data


def test_json_configdata_object_is_serialised(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(
        json.dumps(
            [
                {
                    "valServiceDomain": "d",
                    "ueConfigs": [
                        {
                            "configType": "ON_NETWORK",
                            "configData": {"msgin5gServerAddress": "coap://m", "ueServiceId": "u"},
                        }
                    ],
                }
            ]
        )
    )
    doc = load(f).docs[0]
    assert json.loads(doc["ueConfigs"][0]["configData"]) == {
        "msgin5gServerAddress": "coap://m",
        "ueServiceId": "u",
    }


def test_single_document_file_and_wrong_top_level(tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text("valServiceDomain: d\n")
    assert len(load(f).docs) == 1
    f.write_text("42\n")
    with pytest.raises(ProvisioningError) as e:
        load(f)
    assert e.value.where == "top level"


def test_worker_yields_what_load_returns_and_raises_the_same_error(tmp_path):
    from msgin5g.provisioning.files import iter_docs_in_worker

    f = tmp_path / "w.csv"
    rows = [f"urn:w:{i},w{i}@x,coap://m.example,{64 + i}" for i in range(23)]
    f.write_text("ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n" + "\n".join(rows) + "\n")
    assert list(iter_docs_in_worker(f, chunk=5)) == load(f).docs
    f.write_text(f.read_text() + "bad uri,x,coap://m.example,\n")
    with pytest.raises(ProvisioningError) as direct:
        load(f)
    with pytest.raises(ProvisioningError) as worker:
        list(iter_docs_in_worker(f, chunk=5))
    assert str(worker.value) == str(direct.value) and worker.value.where == "line 25"
    with pytest.raises(ProvisioningError) as missing:
        list(iter_docs_in_worker(tmp_path / "nope.csv"))
    assert missing.value.where == "open"
