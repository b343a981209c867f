"""``--http``: Prometheus metrics, health checks, logs and console access (SPEC D15), on real
processes over loopback. Expected values are counted from the requests each test makes."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest

from .ops_procs import HttpActor
from .procs import MSGIN5G

COLLECTION = "/su-uc/v1/val-services/{valServiceId}/ue-configurations"
DOC = {
    "configName": "h",
    "valServiceDomain": "msgin5g.example",
    "valUeIds": {"uris": ["urn:ops:h1"]},
    "ueConfigs": [
        {"configType": "ON_NETWORK", "configData": {"msgin5gServerAddress": "coap://m", "ueServiceId": "h@x"}}
    ],
}


def series(name: str, **labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if labels else name


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def doc_file(tmp_path):
    f = tmp_path / "doc.json"
    f.write_text(json.dumps([DOC]))
    return f


def test_server_metrics_health_and_logs(tmp_path, doc_file):
    srv = HttpActor("server", "--insecure", "--port", "0", "--db", f"sqlite:///{tmp_path}/m.db")
    try:
        assert cli("config", "import", str(doc_file), "--server", srv.api_root).returncode == 0
        assert cli("ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:ops:h1").returncode == 0
        assert cli("ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:ops:none").returncode == 4
        p = cli(
            "ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:ops:h1", "--identity", "ue:urn:o:2"
        )
        assert p.returncode == 3
        m = srv.metrics()
        req = "msgin5g_server_requests_total"
        assert m[series(req, code="2.01", method="POST", outcome="ok", path=COLLECTION)] == 1
        assert m[series(req, code="2.05", method="GET", outcome="ok", path=COLLECTION)] == 1
        assert m[series(req, code="4.04", method="GET", outcome="not_found", path=COLLECTION)] == 1
        assert m[series(req, code="4.03", method="GET", outcome="forbidden", path=COLLECTION)] == 1
        assert m[series("msgin5g_server_request_duration_seconds_count", path=COLLECTION)] == 4
        assert m["msgin5g_server_stored_documents"] == 1
        assert m[series("msgin5g_server_service_events_total", event="created")] == 1
        assert m[series("msgin5g_server_service_events_total", event="scoped-ok")] == 1
        _, text = srv.get("/metrics")
        assert "urn:" not in text  # no per-UE label anywhere
        status, body = srv.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = srv.get("/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
    finally:
        out, err = srv.stop()
    assert "Traceback" not in err
    refused = [line for line in err.splitlines() if "msgin5g.refused" in line]
    assert len(refused) == 1 and "refused 4.03 GET" in refused[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING msgin5g.refused", refused[0])
    assert "msgin5g.access" not in err  # the access log needs -v
    assert "server counters at shutdown" in out


def test_access_log_and_json_log_format(tmp_path):
    srv = HttpActor(
        "server",
        "--insecure",
        "--port",
        "0",
        "--db",
        f"sqlite:///{tmp_path}/j.db",
        "-v",
        "--log-format",
        "json",
    )
    try:
        cli("ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:ops:j")
    finally:
        _, err = srv.stop()
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "msgin5g.access"]
    assert len(access) == 1 and f"GET {COLLECTION} 4.04" in access[0]["msg"]
    assert all(r["level"] in ("INFO", "WARNING") for r in records)


def test_insecure_console_only_on_loopback(tmp_path):
    p = subprocess.run(
        [
            MSGIN5G,
            "server",
            "--insecure",
            "--port",
            "0",
            "--db",
            f"sqlite:///{tmp_path}/x.db",
            "--http",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and "loopback only" in p.stderr and "Traceback" not in p.stderr


def _opener():
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))


def _call(opener, method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_secured_console_needs_the_token_and_unauthenticated_coap_is_logged(tmp_path, doc_file):
    db = f"sqlite:///{tmp_path}/s.db"  # the OSCORE keys live in the store (SPEC D12)
    assert cli("keys", "add", "admin", "--db", db, "--out", str(tmp_path / "admin.json")).returncode == 0
    srv = HttpActor("server", "--port", "0", "--db", db, console=True)
    try:
        token = srv.console_url.split("#token=", 1)[1]
        api = srv.base + "/console/api/"
        o = _opener()
        assert _call(o, "GET", api + "docs")[0] == 401
        assert _call(o, "POST", api + "login", {"token": "wrong-token-xxxxxxxx"})[0] == 401
        assert _call(o, "POST", api + "login", {"token": token})[0] == 200
        assert _call(o, "GET", api + "docs") == (200, {"total": 0, "docs": []})
        # a state change without the console's header is refused (no cross-site forgery)
        assert _call(o, "POST", api + "docs", DOC)[0] == 403
        status, created = _call(o, "POST", api + "docs", DOC, {"X-Msgin5g-Console": "1"})
        assert status == 201 and created["configName"] == "h"
        # the same validation message as over CoAP (msgin5g config)
        status, bad = _call(
            o, "POST", api + "docs", {**DOC, "valUeIds": {"uris": []}}, {"X-Msgin5g-Console": "1"}
        )
        assert status == 400 and bad["code"] == "4.00" and "valUeIds/uris" in bad["error"]
        status, keys = _call(o, "GET", api + "keys")
        assert status == 200 and [k["role"] for k in keys["keys"]] == ["admin"]
        # CoAP without OSCORE on a secured server: 4.01, counted and logged
        p = cli("config", "list", "--server", srv.api_root)
        assert p.returncode == 3
        assert srv.metrics()["msgin5g_server_unauthenticated_requests_total"] == 1
    finally:
        _, err = srv.stop()
    assert "refused console login" in err and "refused 4.01" in err


def test_console_resolution_says_why(tmp_path):
    srv = HttpActor("server", "--insecure", "--port", "0", "--db", f"sqlite:///{tmp_path}/r.db", console=True)
    try:
        api = srv.base + "/console/api/"
        o = _opener()
        h = {"X-Msgin5g-Console": "1"}
        uri_doc = {**DOC, "configName": "by-uri", "valUeIds": {"uris": ["urn:gsma:imei:35209900-176148-1"]}}
        tac_doc = {**DOC, "configName": "by-tac", "valUeIds": {"imeiRanges": [{"tac": "35209900"}]}}
        dom_doc = {k: v for k, v in DOC.items() if k != "valUeIds"} | {"configName": "domain"}
        for d in (tac_doc, dom_doc, uri_doc):
            assert _call(o, "POST", api + "docs", d, h)[0] == 201
        q = "resolve?ue-uri=urn:gsma:imei:35209900-176148-1&ue-type=35209900&ue-snr=176148"
        status, res = _call(o, "GET", api + q)
        assert status == 200 and res["answer"] == "2.05"
        assert [(d["configName"], d["match"]) for d in res["documents"]] == [
            ("by-uri", "uri"),
            ("by-tac", "tac"),
            ("domain", "domain"),
        ]
        assert res["documents"][0]["applied"] is True
        status, res = _call(o, "GET", api + "resolve?ue-uri=urn:other:1")
        assert res["answer"] == "2.05" and [d["configName"] for d in res["documents"]] == ["domain"]
    finally:
        srv.stop()


def test_relay_gateway_and_cm_client_serve_their_counters(tmp_path):
    scm = HttpActor("server", "--insecure", "--port", "0", "--db", f"sqlite:///{tmp_path}/g.db")
    actors = []
    try:
        relay = HttpActor("relay", "--listen", "127.0.0.1:0", "--server", scm.api_root, "--admin", "none")
        actors.append(relay)
        m = relay.metrics()
        assert m["msgin5g_relay_pc5_links"] == 0 and m["msgin5g_relay_pc5_links_max"] == 8
        assert m["msgin5g_relay_relayed_up_total"] == 0
        assert relay.get("/healthz")[0] == 200
        gw = HttpActor(
            "gateway", "--listen", "127.0.0.1:0", "--server", scm.api_root, "--state", str(tmp_path / "gw.db")
        )
        actors.append(gw)
        m = gw.metrics()
        assert m["msgin5g_gateway_stored_requests"] == 0
        assert m[series("msgin5g_gateway_events_total", event="requests")] == 0
        assert m[series("msgin5g_cmclient_events_total", event="bulk-gets")] == 0
        cm = HttpActor("cm-client", "--listen", "127.0.0.1:0", "--server", scm.api_root)
        actors.append(cm)
        assert cm.metrics()[series("msgin5g_cmclient_events_total", event="single-gets")] == 0
    finally:
        outs = [a.stop()[0] for a in actors]
        scm.stop()
    for name, out in zip(("relay", "gateway", "cm-client"), outs, strict=False):
        line = next(x for x in out.splitlines() if x.startswith(f"{name} counters at shutdown: "))
        assert isinstance(json.loads(line.split(": ", 1)[1]), dict)


def test_demo_console_prints_its_url_and_precondition_exits_2(tmp_path):
    p = subprocess.run(
        [MSGIN5G, "demo", "--ues", "20", "--insecure", "--console"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout[-2000:]
    assert re.search(
        r"console of the SCM-S \(up during the run\):\s+http://127\.0\.0\.1:\d+/console/", p.stdout
    )
    p = subprocess.run(  # --json: the URL as a JSON line as soon as it is up, then the summary
        [MSGIN5G, "demo", "--ues", "20", "--insecure", "--console", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    first, summary = (json.loads(x) for x in p.stdout.splitlines())
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/console/", first["console"])
    assert summary["console"] == first["console"] and summary["ok"] is True and summary["exit"] == 0
    p = subprocess.run(
        [MSGIN5G, "demo", "--ues", "20", "--db", f"sqlite:///{tmp_path}/missing/dir/x.db"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_multiprocess_mode_aggregates_from_files(tmp_path):
    """prometheus_client's multiprocess mode (for --workers): values live in PROMETHEUS_MULTIPROC_DIR."""
    mp = tmp_path / "prom"
    mp.mkdir()
    srv = HttpActor(
        "server",
        "--insecure",
        "--port",
        "0",
        "--db",
        f"sqlite:///{tmp_path}/mp.db",
        env={"PROMETHEUS_MULTIPROC_DIR": str(mp)},
    )
    try:
        assert cli("ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:ops:mp").returncode == 4
        m = srv.metrics()
        assert (
            m[
                series(
                    "msgin5g_server_requests_total",
                    code="4.04",
                    method="GET",
                    outcome="not_found",
                    path=COLLECTION,
                )
            ]
            == 1
        )
        assert m["msgin5g_server_stored_documents"] == 0
        assert m[series("msgin5g_server_service_events_total", event="scoped-not-found")] == 1
        assert any(f.name.startswith("counter_") for f in mp.iterdir())
    finally:
        srv.stop()
