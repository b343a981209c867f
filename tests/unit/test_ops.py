"""Pure pieces of the operations side (SPEC D15): labels, adapters, configData views, apply plans,
failure messages. Expected values are written from the rules, not computed by the code."""

from __future__ import annotations

import sqlite3
from collections import Counter

import click
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from msgin5g.api import ApiUriError
from msgin5g.clicommon import TARGET, explain
from msgin5g.ops.http import parse_http_address
from msgin5g.ops.metrics import (
    EventCounters,
    SnapshotCollector,
    cached,
    code_text,
    is_bulk,
    outcome_of,
    path_template,
)
from msgin5g.provisioning.cli import plan_apply
from msgin5g.provisioning.docjson import for_people, for_wire, same_content


def test_path_template_never_carries_identifiers():
    base = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    assert path_template(base) == "/su-uc/v1/val-services/{valServiceId}/ue-configurations"
    assert (
        path_template((*base, "doc-123")) == "/su-uc/v1/val-services/{valServiceId}/ue-configurations/{docId}"
    )
    up = ("su-up", "v1", "val-services", "s", "user-profiles", "p1")
    assert path_template(up) == "/su-up/v1/val-services/{valServiceId}/user-profiles/{docId}"
    assert path_template(("seal", "cm", *base), ("seal", "cm")).endswith("/ue-configurations")
    assert path_template((".well-known", "core")) == "/.well-known/core"
    assert path_template(("urn:gsma:imei:1", "x")) == "other"
    assert path_template((*base, "a", "b")) == "other"


def test_codes_and_outcomes():
    assert code_text(0x45) == "2.05" and code_text(0x84) == "4.04" and code_text(0xA0) == "5.00"
    assert [outcome_of(c) for c in (0x41, 0x45, 0x81, 0x83, 0x84, 0x80, 0x8D, 0xA3)] == [
        "ok",
        "ok",
        "unauthenticated",
        "forbidden",
        "not_found",
        "client_error",
        "client_error",
        "server_error",
    ]


def test_bulk_detection_counts_ues():
    assert is_bulk(["bulk-conf-flag=1", "ue-uri=a", "ue-uri=b", "ue-type=35209900"]) == (True, 2)
    assert is_bulk(["bulkConfFlag=x", "ue-uri=a"]) == (True, 1)
    assert is_bulk(["ue-uri=a"]) == (False, 1)


def _exposition(*collectors) -> str:
    reg = CollectorRegistry()
    for c in collectors:
        reg.register(c)
    return generate_latest(reg).decode()


def test_snapshot_collector_reads_the_actors_own_counters():
    counters = {"relayed_up": 3, "answered": Counter({"5.05": 2}), "mode": "l3", "flag": True}
    text = _exposition(SnapshotCollector("relay", lambda: counters, labels={"answered": "code"}))
    assert "msgin5g_relay_relayed_up_total 3.0" in text
    assert 'msgin5g_relay_answered_total{code="5.05"} 2.0' in text
    assert "mode" not in text and "flag" not in text
    counters["relayed_up"] = 4  # read at scrape time: no second copy to drift
    assert "msgin5g_relay_relayed_up_total 4.0" in _exposition(SnapshotCollector("relay", lambda: counters))


def test_event_counters_one_family_with_an_event_label():
    text = _exposition(EventCounters("gateway_events_total", "x", lambda: {"flush-full": 2, "requests": 7}))
    assert 'msgin5g_gateway_events_total{event="flush-full"} 2.0' in text
    assert 'msgin5g_gateway_events_total{event="requests"} 7.0' in text


def test_cached_gauge_is_recomputed_only_after_its_ttl():
    now = [0.0]
    calls = []

    def count():
        calls.append(1)
        return float(len(calls))

    get = cached(count, 10.0, clock=lambda: now[0])
    assert get() == 1.0
    now[0] = 9.9
    assert get() == 1.0
    now[0] = 10.0
    assert get() == 2.0


def test_http_address():
    assert parse_http_address("9100") == ("127.0.0.1", 9100)
    assert parse_http_address(":9100") == ("127.0.0.1", 9100)
    assert parse_http_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_http_address("[::1]:9100") == ("::1", 9100)
    with pytest.raises(ApiUriError):
        parse_http_address("host:port")


CFG = '{"msgin5gServerAddress":"coap://m","ueServiceId":"a@x"}'


def test_config_data_views():
    doc = {
        "ueConfigs": [
            {"configType": "ON_NETWORK", "configData": CFG},
            {"configType": "X", "configData": "opaque"},
        ]
    }
    people = for_people(doc)
    assert people["ueConfigs"][0]["configData"] == {"msgin5gServerAddress": "coap://m", "ueServiceId": "a@x"}
    assert people["ueConfigs"][1]["configData"] == "opaque"
    assert doc["ueConfigs"][0]["configData"] == CFG  # copies, the input is left alone
    assert for_wire(people)["ueConfigs"][0]["configData"] == CFG
    spaced = {
        "ueConfigs": [
            {
                "configType": "ON_NETWORK",
                "configData": '{"ueServiceId": "a@x", "msgin5gServerAddress": "coap://m"}',
            }
        ]
    }
    assert same_content({**spaced, "ueConfigDocId": "d1"}, {"ueConfigs": doc["ueConfigs"][:1]})


def _doc(name, sid="a@x", doc_id=None):
    d = {
        "configName": name,
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": f'{{"ueServiceId":"{sid}"}}'}],
    }
    if doc_id:
        d["ueConfigDocId"] = doc_id
    return d


def test_apply_plan_matches_by_id_then_name():
    existing = [_doc("a", doc_id="d1"), _doc("b", doc_id="d2"), _doc("c", doc_id="d3")]
    wanted = [_doc("a"), _doc("b", sid="changed@x"), _doc("new"), _doc("renamed", doc_id="d3")]
    plan = [
        (action, cur["ueConfigDocId"] if cur else None) for action, _, cur in plan_apply(wanted, existing)
    ]
    assert plan == [("unchanged", "d1"), ("update", "d2"), ("create", None), ("update", "d3")]


def test_apply_plan_refuses_what_it_cannot_match():
    with pytest.raises(click.ClickException, match="appears twice"):
        plan_apply([_doc("a"), _doc("a")], [])
    with pytest.raises(click.ClickException, match="names 2 documents"):
        plan_apply([_doc("a")], [_doc("a", doc_id="d1"), _doc("a", doc_id="d2")])
    with pytest.raises(click.ClickException, match="no document 'zz'"):
        plan_apply([_doc("a", doc_id="zz")], [])
    with pytest.raises(click.UsageError, match="neither ueConfigDocId nor configName"):
        plan_apply([{"ueConfigs": []}], [])


def test_explain_store_and_network_failures():
    import aiocoap.error

    TARGET.update(server="coap://127.0.0.1:5690", db="sqlite:////x/y.db")
    line, code = explain(aiocoap.error.NetworkError("[Errno 111] Connection refused"))
    assert line.startswith("cannot reach coap://127.0.0.1:5690 — is `msgin5g server` running") and code == 2
    line, code = explain(sqlite3.OperationalError("unable to open database file"))
    assert "sqlite:////x/y.db" in line and "directory" in line and code == 2
    assert explain(RuntimeError("something else")) is None


def test_banner_lines_name_metrics_health_and_the_console():
    from msgin5g.ops.http import banner_lines

    url = "http://127.0.0.1:9100"
    assert banner_lines(url, False, "t", None) == (
        None,
        ["metrics http://127.0.0.1:9100/metrics (health http://127.0.0.1:9100/healthz)"],
    )
    # a token kept in a file is not printed; one made for this run goes in the fragment
    assert banner_lines(url, True, "t", "/etc/tok")[0] == "http://127.0.0.1:9100/console/"
    console, lines = banner_lines(url, True, "s3cret", None)
    assert console == "http://127.0.0.1:9100/console/#token=s3cret"
    assert lines[-1] == "console http://127.0.0.1:9100/console/#token=s3cret" and len(lines) == 2
    assert banner_lines(url, True, None, None)[0] == "http://127.0.0.1:9100/console/"  # insecure: no token
