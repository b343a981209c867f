"""``msgin5g profile`` against a real ``msgin5g server`` process (TS 24.546 C.2; SPEC D16): import
(YAML and JSON, all or nothing), list by val-tgt-ue, get, delete, and one clear line for every
mistake — never a traceback. Exit statuses as for every command (docs/operations.md): 3 for
4.01/4.03, 4 for 4.04, 1 for another refusal, 2 for a usage error."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .procs import MSGIN5G, ServerProcess

UE = "urn:gsma:imei:35209900-000001-8"
ALICE = "sip:alice@msgin5g.example"

YAML = f"""
- profileInformation:
    profileName: alice-default
    status: true
    isDefault: true
    profileConfigs:
      - configType: COMMON
        configData: {{segmentSize: 512}}
  valTgtUe: {{valUserId: "{ALICE}"}}
- profileInformation: {{profileName: ue-one, status: false}}
  valTgtUe: {{valUeId: "{UE}"}}
"""


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(f"sqlite:///{tmp_path}/scm.db")
    yield srv
    srv.stop()


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # the table's width, whatever the terminal
    return subprocess.run([MSGIN5G, "profile", *args], capture_output=True, text=True, timeout=60, env=env)


def listed(srv, target: str, *extra: str) -> list[dict]:
    p = run("list", "--val-tgt-ue", target, "--server", srv.api_root, "--json", *extra)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_import_list_get_delete(server, tmp_path):
    f = tmp_path / "profiles.yaml"
    f.write_text(YAML)
    p = run("import", str(f), "--server", server.api_root)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("imported 2 user profiles into msgin5g")
    alice_id, ue_id = p.stdout.split()[-2:]

    (alice,) = listed(server, ALICE)
    assert alice["profileDocId"] == alice_id
    assert alice["profileInformation"]["profileConfigs"][0]["configData"] == '{"segmentSize":512}'
    assert alice["valTgtUe"] == {"valUserId": ALICE}
    assert [d["profileDocId"] for d in listed(server, f"valUeId:{UE}")] == [ue_id]
    assert listed(server, f"valUserId:{UE}") == []

    p = run("list", "--val-tgt-ue", ALICE, "--server", server.api_root)
    assert p.returncode == 0 and "alice-default" in p.stdout and "enabled" in p.stdout

    p = run("get", ue_id, "--server", server.api_root)
    assert p.returncode == 0 and json.loads(p.stdout)["profileInformation"]["profileName"] == "ue-one"
    p = run("delete", ue_id, "--server", server.api_root)
    assert p.returncode == 0 and p.stdout.strip() == f"deleted {ue_id}"
    p = run("get", ue_id, "--server", server.api_root)
    assert p.returncode == 4 and "4.04" in p.stderr and "NO_SUCH_PROFILE" in p.stderr
    assert "Traceback" not in p.stderr


def test_lab_identity_lists_only_its_own(server, tmp_path):
    f = tmp_path / "profiles.json"
    f.write_text(json.dumps([{"profileInformation": {"status": True}, "valTgtUe": {"valUeId": UE}}]))
    assert run("import", str(f), "--server", server.api_root).returncode == 0
    assert len(listed(server, UE, "--identity", f"ue:{UE}")) == 1
    p = run("list", "--val-tgt-ue", ALICE, "--server", server.api_root, "--identity", f"ue:{UE}")
    assert p.returncode == 3 and "4.03" in p.stderr and "NOT_AUTHORIZED" in p.stderr


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("- valTgtUe: {valUeId: x}\n", ".yaml", "entry 0, field profileInformation"),
        (
            '[{"profileInformation":{"status":true},"valTgtUe":{"valUeId":"a"}},'
            '{"profileInformation":{"status":"yes"},"valTgtUe":{"valUeId":"b"}}]',
            ".json",
            "entry 1, field profileInformation/status",
        ),
        ('[{"profileInformation":{"status":true},"valTgtUe":{}}]', ".json", "field valTgtUe"),
        (
            '{"profileDocId":"p1","profileInformation":{"status":true},"valTgtUe":{"valUeId":"a"}}',
            ".json",
            "field profileDocId: assigned by the SCM-S",
        ),
        ("{not json", ".json", "parse: not JSON"),
        ("a: [", ".yaml", "parse: not YAML"),
        ("x,y\n", ".csv", "unknown format"),
    ],
)
def test_bad_files_import_nothing_and_say_why(server, tmp_path, content, suffix, message):
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    p = run("import", str(f), "--server", server.api_root)
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert listed(server, "a") == [] and listed(server, "x") == []


def test_a_refused_entry_rolls_back_the_import(server, tmp_path):
    """The second entry is refused by the server (a non-administrator may not write): the first
    one, created already, is deleted again."""
    f = tmp_path / "profiles.yaml"
    f.write_text(YAML)
    p = run("import", str(f), "--server", server.api_root, "--service-id", "unknown-service")
    assert (
        p.returncode == 4 and "entry 0: the server refused it" in p.stderr and "UNKNOWN_SERVICE" in p.stderr
    )
    p = run("import", str(f), "--server", server.api_root, "--identity", f"ue:{UE}")
    assert p.returncode == 3 and "ADMIN_ONLY" in p.stderr
    assert listed(server, ALICE) == [] and listed(server, UE) == []


def test_usage_errors(server):
    p = run("list", "--server", server.api_root)
    assert p.returncode == 2 and "--val-tgt-ue" in p.stderr
    p = run("list", "--val-tgt-ue", "", "--server", server.api_root)
    assert p.returncode == 1 and "INVALID_VAL_TGT_UE" in p.stderr and "Traceback" not in p.stderr
