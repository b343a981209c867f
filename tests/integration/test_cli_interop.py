"""The ``msgin5g`` command line against a real server process, and interop with independent CoAP
peers: libcoap's ``coap-client-notls`` and aiocoap's ``aiocoap-client`` (TS 24.546 clause 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from msgin5g.model import imei_urn

from .conftest import make_doc
from .procs import ServerProcess

BIN = Path(sys.executable).parent
MSGIN5G = str(BIN / "msgin5g")
TAC = "35209900"


def run(*args, timeout=60, check=False, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


@pytest.fixture
def server_proc(tmp_path):
    srv = ServerProcess(f"sqlite:///{tmp_path}/cli.db")
    yield srv
    srv.stop()


@pytest.fixture
def fleet_files(tmp_path):
    docs = [
        {
            "configName": "range",
            "valServiceDomain": "msgin5g.example",
            "valUeIds": {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "99"}}]},
            "ueConfigs": [
                {
                    "configType": "ON_NETWORK",
                    "configData": {"msgin5gServerAddress": "coap://msg.example", "ueServiceId": "s-{snr}@x"},
                }
            ],
        }
    ]
    (tmp_path / "fleet.json").write_text(json.dumps(docs))
    (tmp_path / "fleet.yaml").write_text(
        "- valServiceDomain: msgin5g.example\n"
        "  valUeIds: {uris: ['urn:dev:yaml-1']}\n"
        "  ueConfigs:\n"
        "    - configType: ON_NETWORK\n"
        "      configData:\n"
        "        {msgin5gServerAddress: 'coap://m.example', ueServiceId: yaml-1, segmentSize: 512}\n"
    )
    (tmp_path / "fleet.csv").write_text(
        "ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n"
        "urn:dev:csv-1,csv-1@x,coap://m.example,1024\n"
        "urn:dev:csv-2,csv-2@x,coap://m.example,\n"
    )
    return tmp_path


def test_server_without_insecure_is_secured(tmp_path):
    """Secured is the default (SPEC D12): the keys are the store's, and a client without
    credentials is told to pass --credentials."""
    srv = ServerProcess(f"sqlite:///{tmp_path}/x.db", insecure=False)
    try:
        fleet = tmp_path / "fleet.json"
        fleet.write_text(json.dumps([make_doc(uris=[imei_urn("35209900", 1)])]))
        p = run(MSGIN5G, "config", "import", str(fleet), "--server", f"coap://127.0.0.1:{srv.port}")
        assert p.returncode != 0 and "4.01" in p.stderr and "--credentials" in p.stderr
    finally:
        err = srv.stop()
    assert "no active key" in err


def test_server_refuses_insecure_on_non_loopback(tmp_path):
    p = run(
        MSGIN5G,
        "server",
        "--insecure",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--db",
        f"sqlite:///{tmp_path}/x.db",
    )
    assert p.returncode != 0 and "--insecure-anywhere" in p.stderr


def test_port_already_taken_gives_a_clear_message(server_proc, tmp_path):
    p = run(
        MSGIN5G, "server", "--insecure", "--port", str(server_proc.port), "--db", f"sqlite:///{tmp_path}/y.db"
    )
    assert p.returncode != 0
    assert f"port {server_proc.port}" in p.stderr and "already in use" in p.stderr


def test_server_prints_counters_on_shutdown(tmp_path):
    srv = ServerProcess(f"sqlite:///{tmp_path}/z.db")
    run(MSGIN5G, "ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:x:1")
    srv.proc.send_signal(signal.SIGINT)
    out, _ = srv.proc.communicate(timeout=10)
    # one summary line, JSON, like every actor's (SPEC D15)
    line = next(x for x in out.splitlines() if x.startswith("server counters at shutdown: "))
    assert srv.proc.returncode == 0
    assert json.loads(line.split(": ", 1)[1]) == {"scoped-not-found": 1}


def test_config_import_list_get_delete_and_ue_get_config(server_proc, fleet_files):
    srv = server_proc
    for name in ("fleet.json", "fleet.yaml", "fleet.csv"):
        p = run(MSGIN5G, "config", "import", str(fleet_files / name), "--server", srv.api_root, check=True)
        assert "imported" in p.stdout
    p = run(MSGIN5G, "config", "list", "--server", srv.api_root, "--json", check=True)
    docs = json.loads(p.stdout)
    assert len(docs) == 4
    doc_id = next(d["ueConfigDocId"] for d in docs if d.get("configName") == "range")
    p = run(MSGIN5G, "config", "get", doc_id, "--server", srv.api_root, check=True)
    assert json.loads(p.stdout)["ueConfigDocId"] == doc_id
    assert "4 UE configuration documents" in run(MSGIN5G, "config", "list", "--server", srv.api_root).stdout

    ue = imei_urn(TAC, 42)
    p = run(MSGIN5G, "ue", "get-config", "--server", srv.api_root, "--ue-uri", ue, "--json")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert out["outcome"] == "configured" and out["config"]["ueServiceId"] == "s-000042@x"
    p = run(MSGIN5G, "ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:dev:csv-2", "--json")
    assert json.loads(p.stdout)["config"] == {
        "msgin5gServerAddress": "coap://m.example",
        "ueServiceId": "csv-2@x",
        "segmentSize": 2048,
    }
    # 4.04 → exit 4; 4.03 → exit 3 (a UE asking for another UE's configuration)
    p = run(MSGIN5G, "ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:dev:nobody")
    assert p.returncode == 4 and "not-found" in p.stdout
    p = run(
        MSGIN5G,
        "ue",
        "get-config",
        "--server",
        srv.api_root,
        "--ue-uri",
        ue,
        "--identity",
        "ue:urn:dev:csv-1",
    )
    assert p.returncode == 3 and "forbidden" in p.stdout
    p = run(MSGIN5G, "ue", "get-config", "--server", "coap://127.0.0.1:9", "--ue-uri", ue, "--timeout", "2")
    assert p.returncode == 1

    p = run(MSGIN5G, "config", "delete", doc_id, "--server", srv.api_root, check=True)
    p = run(MSGIN5G, "config", "get", doc_id, "--server", srv.api_root)
    assert p.returncode != 0 and "4.04" in p.stderr


def test_preconfigured_fallback(server_proc, tmp_path):
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"msgin5gServerAddress": "coap://fallback.example", "ueServiceId": "pre@x"}))
    p = run(
        MSGIN5G,
        "ue",
        "get-config",
        "--server",
        server_proc.api_root,
        "--ue-uri",
        "urn:dev:nobody",
        "--preconfigured",
        str(pre),
        "--json",
    )
    out = json.loads(p.stdout)
    assert p.returncode == 1  # not a real configuration: scripts can tell
    assert out["outcome"] == "not-found" and out["preconfigured"] is True
    assert out["config"]["ueServiceId"] == "pre@x"


BAD_FILES = [
    ("bad.json", "[{]", "bad.json, parse"),
    ("bad.yaml", "- valServiceDomain: [unclosed", "bad.yaml, parse"),
    ("missing.json", json.dumps([{"configName": "x"}]), "missing.json, entry 0, field valServiceDomain"),
    (
        "second.json",
        json.dumps(
            [
                {"valServiceDomain": "d"},
                {"valServiceDomain": "d", "valUeIds": {"imeiRanges": [{"tac": "12"}]}},
            ]
        ),
        "second.json, entry 1, field valUeIds/imeiRanges/0/tac",
    ),
    (
        "cfg.yaml",
        "- valServiceDomain: d\n  ueConfigs: [{configType: ON_NETWORK, configData: {ueServiceId: a}}]\n",
        "cfg.yaml, entry 0, field ueConfigs/0/configData/msgin5gServerAddress",
    ),
    (
        "rows.csv",
        "ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\nurn:a:1,a,coap://x,\nbad uri,b,coap://x,\n",
        "rows.csv, line 3, field valUeIds/uris/0",
    ),
    ("hdr.csv", "uri,id\n", "hdr.csv, line 1"),
    (
        "seg.csv",
        "ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\nurn:a:1,a,coap://x,huge\n",
        "seg.csv, line 2, field ueConfigs/0/configData/segmentSize",
    ),
    ("x.txt", "hello", "x.txt, name"),
    ("bin.json", b"\xff\xfe\x00", "bin.json, read"),
]


@pytest.mark.parametrize(("name", "content", "where"), BAD_FILES)
def test_bad_import_files_name_the_place_and_import_nothing(server_proc, tmp_path, name, content, where):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    p = run(MSGIN5G, "config", "import", str(f), "--server", server_proc.api_root)
    assert p.returncode != 0
    assert where in p.stderr, p.stderr
    p = run(MSGIN5G, "config", "list", "--server", server_proc.api_root, "--json", check=True)
    assert json.loads(p.stdout) == []


def test_import_missing_file(tmp_path):
    p = run(
        MSGIN5G,
        "config",
        "import",
        str(tmp_path / "nope.json"),
        "--direct",
        "--db",
        f"sqlite:///{tmp_path}/d.db",
    )
    assert p.returncode == 2 and "nope.json" in p.stderr and "does not exist" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "d.db").exists()


def test_direct_import_and_gateway_registry(tmp_path, fleet_files):
    db = f"sqlite:///{tmp_path}/direct.db"
    p = run(MSGIN5G, "config", "import", str(fleet_files / "fleet.csv"), "--direct", "--db", db, check=True)
    assert "imported 2 documents" in p.stdout and "docs/s" in p.stdout
    run(
        MSGIN5G,
        "config",
        "gateway",
        "set",
        "gw1",
        "--tac",
        f"{TAC}:0-99",
        "--uri",
        "urn:dev:csv-1",
        "--db",
        db,
        check=True,
    )
    run(MSGIN5G, "config", "gateway", "set", "gw2", "--all", "--db", db, check=True)
    p = run(MSGIN5G, "config", "gateway", "list", "--db", db, check=True)
    assert "gw1" in p.stdout and '"all": true' in p.stdout and "urn:dev:csv-1" in p.stdout
    p = run(MSGIN5G, "config", "gateway", "set", "gw3", "--tac", "123", "--db", db)
    assert p.returncode != 0 and "tac" in p.stderr
    run(MSGIN5G, "config", "gateway", "delete", "gw2", "--db", db, check=True)
    # not found: exit 4, as for a 4.04 everywhere (docs/operations.md)
    assert run(MSGIN5G, "config", "gateway", "delete", "gw2", "--db", db).returncode == 4
    srv = ServerProcess(db)
    try:
        p = run(
            MSGIN5G, "ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:dev:csv-1", check=True
        )
        assert "csv-1@x" in p.stdout
    finally:
        srv.stop()


# -- independent CoAP peers ---------------------------------------------------------------------------

needs_libcoap = pytest.mark.skipif(
    shutil.which("coap-client-notls") is None and not os.environ.get("CI"),
    reason="libcoap3-bin not installed (CI installs it)",
)


@needs_libcoap
@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
def test_libcoap_client_interop(server_proc, fleet_files, tmp_path, scheme):
    srv = server_proc
    coll = srv.collection.replace("coap://", f"{scheme}://")
    body = tmp_path / "doc.cbor"
    body.write_bytes(
        cbor2.dumps(
            {
                "valServiceDomain": "msgin5g.example",
                "valUeIds": {"uris": ["urn:dev:libcoap"]},
                "ueConfigs": [
                    {
                        "configType": "ON_NETWORK",
                        "configData": json.dumps({"msgin5gServerAddress": "coap://m", "ueServiceId": "lc@x"}),
                    }
                ],
            }
        )
    )
    run("coap-client-notls", "-m", "post", "-t", "60", "-f", str(body), "-B", "10", coll, check=True)
    out = tmp_path / "out.cbor"
    run(
        "coap-client-notls",
        "-m",
        "get",
        "-A",
        "60",
        "-B",
        "10",
        "-o",
        str(out),
        f"{coll}?ue-uri=urn:dev:libcoap",
        check=True,
    )
    docs = cbor2.loads(out.read_bytes())
    assert json.loads(docs[0]["ueConfigs"][0]["configData"])["ueServiceId"] == "lc@x"
    # an error is answered with concise problem details libcoap can read too
    p = run("coap-client-notls", "-m", "get", "-B", "10", f"{coll}?ue-type=12")
    assert "4.00" in p.stdout + p.stderr


@needs_libcoap
def test_libcoap_block_wise_listing(tmp_path):
    """A large admin listing fetched by libcoap with its own Block2 implementation (RFC 7959)."""
    db = f"sqlite:///{tmp_path}/big.db"
    rows = "\n".join(f"{imei_urn(TAC, i)},ue{i}@x,coap://m.example," for i in range(500))
    (tmp_path / "big.csv").write_text("ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n" + rows + "\n")
    run(MSGIN5G, "config", "import", str(tmp_path / "big.csv"), "--direct", "--db", db, check=True)
    srv = ServerProcess(db)
    try:
        out = tmp_path / "all.cbor"
        run(
            "coap-client-notls",
            "-m",
            "get",
            "-b",
            "64",
            "-B",
            "30",
            "-o",
            str(out),
            srv.collection,
            check=True,
        )
        assert len(cbor2.loads(out.read_bytes())) == 500
    finally:
        srv.stop()


def test_aiocoap_client_interop(server_proc, fleet_files):
    srv = server_proc
    run(MSGIN5G, "config", "import", str(fleet_files / "fleet.json"), "--server", srv.api_root, check=True)
    p = run(
        str(BIN / "aiocoap-client"),
        "--accept",
        "application/json",
        f"{srv.collection}?ue-uri={imei_urn(TAC, 7)}",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["valUeIds"]["uris"] == [imei_urn(TAC, 7)]


def test_direct_import_streams_and_rolls_back_on_a_late_bad_row(tmp_path):
    """The direct import streams parsed rows into one transaction; a bad row far into the file
    (after several chunks were written) still leaves the store empty, and is named."""
    db = f"sqlite:///{tmp_path}/late.db"
    rows = [f"{imei_urn(TAC, i)},ue{i}@x,coap://m.example,1024" for i in range(12_000)]
    rows.insert(11_000, "urn:ok:1,ok@x,coap://m.example,huge")
    (tmp_path / "late.csv").write_text(
        "ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n" + "\n".join(rows)
    )
    p = run(MSGIN5G, "config", "import", str(tmp_path / "late.csv"), "--direct", "--db", db)
    assert p.returncode != 0
    assert "late.csv, line 11002, field ueConfigs/0/configData/segmentSize" in p.stderr
    from msgin5g.store import open_store

    store = open_store(db)
    try:
        assert store.count("msgin5g") == 0
    finally:
        store.close()
    del rows[11_000]
    (tmp_path / "late.csv").write_text(
        "ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n" + "\n".join(rows)
    )
    p = run(MSGIN5G, "config", "import", str(tmp_path / "late.csv"), "--direct", "--db", db, check=True)
    assert "imported 12000 documents" in p.stdout
