"""The command line as an operator meets it (SPEC D15): real ``msgin5g`` processes.

Every network or store failure is one line on stderr that says what to do, never a traceback;
exit status 2 for a usage error or a precondition not met, 3 for 4.01/4.03, 4 for 4.04, 130 for
Ctrl-C; ``config update`` / ``config apply`` / configData as an object; environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

from .procs import MSGIN5G, ServerProcess

DOC = {
    "configName": "ops-a",
    "valServiceDomain": "msgin5g.example",
    "valUeIds": {"uris": ["urn:ops:1"]},
    "ueConfigs": [
        {
            "configType": "ON_NETWORK",
            "configData": {"msgin5gServerAddress": "coap://m.example", "ueServiceId": "a@x"},
        }
    ],
}


def run(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MSGIN5G_")}
    full_env.update(env or {})
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, p.stderr
    for n in needles:
        assert n in errors[0], p.stderr


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def srv(tmp_path):
    s = ServerProcess(f"sqlite:///{tmp_path}/ops.db")
    yield s
    s.stop()


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
def test_unreachable_server_is_one_line_exit_2(scheme):
    uri = f"{scheme}://127.0.0.1:{dead_port()}"
    for cmd in (
        ["config", "list"],
        ["config", "get", "x"],
        ["config", "delete", "x"],
        ["profile", "get", "x"],
        ["profile", "list", "--val-tgt-ue", "urn:x:1"],
    ):
        p = run(*cmd, "--server", uri)
        assert p.returncode == 2, (cmd, p.stderr)
        one_line_error(p, f"cannot reach {uri}", "msgin5g server")


def test_unreachable_server_for_a_ue_says_what_to_do():
    """A UE without an answer has an outcome (exit status 1: error, TS 24.538 6.2.1.2), and its line
    says where it asked and what to check."""
    uri = f"coap://127.0.0.1:{dead_port()}"
    p = run("ue", "get-config", "--server", uri, "--ue-uri", "urn:x:1", "--timeout", "3")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"no response from {uri} — is `msgin5g server` running there?" in p.stdout, p.stdout


@pytest.mark.parametrize(
    "value,needle",
    [
        ("127.0.0.1:5690", "has no scheme"),
        ("coaps+tcp://127.0.0.1:5690", "does not present TLS client certificates"),
        ("coaps+ws://127.0.0.1:5690", "does not present TLS client certificates"),
        ("http://127.0.0.1:5690", "scheme 'http' is not supported"),
    ],
)
def test_server_uri_is_validated(value, needle):
    for cmd in (["config", "list"], ["ue", "get-config", "--ue-uri", "urn:x:1"], ["profile", "get", "x"]):
        p = run(*cmd, "--server", value)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert needle in p.stderr, p.stderr
    # the actors check it before they start
    for cmd in (["relay"], ["gateway"], ["cm-client"]):
        p = run(*cmd, "--server", value, timeout=30)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (cmd, p.stderr)
        assert value in p.stderr and "coap://HOST[:PORT]" in p.stderr, p.stderr


def test_coaps_without_a_psk_file_is_one_line():
    for cmd in (["config", "list"], ["ue", "get-config", "--ue-uri", "urn:x:1"]):
        p = run(*cmd, "--server", "coaps://127.0.0.1:5690")
        assert p.returncode != 0 and "Traceback" not in p.stderr
        one_line_error(p, "a coaps:// server takes a PSK file as --credentials", "keys add IDENTITY --psk")


def test_store_failures_are_one_line_exit_2(tmp_path):
    cases = [
        ("foo://x", "unsupported database URL"),
        (f"sqlite:///{tmp_path}/no/such/dir/x.db", "does its directory exist"),
        ("postgresql://127.0.0.1:5432/msgin5g_ops_no_such_db", "createdb msgin5g_ops_no_such_db"),
        (f"postgresql://127.0.0.1:{dead_port()}/x", "cannot reach PostgreSQL"),
    ]
    for url, needle in cases:
        for cmd in (["config", "gateway", "list"], ["keys", "list"], ["server", "--insecure", "--port", "0"]):
            p = run(*cmd, "--db", url, timeout=30)
            assert p.returncode == 2, (url, cmd, p.stderr)
            one_line_error(p, needle)


def test_missing_file_is_a_usage_error_exit_2(tmp_path):
    """A FILE that does not exist is a usage error (exit 2, one line naming it) for every command
    that reads one — before any store or server is touched."""
    missing = str(tmp_path / "nope.json")
    for cmd in (
        ["config", "import", missing],
        ["config", "import", missing, "--direct", "--db", f"sqlite:///{tmp_path}/x.db"],
        ["config", "apply", missing],
        ["config", "update", "doc-1", missing],
        ["profile", "import", missing],
        ["keys", "import", missing, "--db", f"sqlite:///{tmp_path}/x.db", "--out", str(tmp_path / "b.jsonl")],
    ):
        p = run(*cmd, timeout=30)
        assert p.returncode == 2, (cmd, p.stderr)
        one_line_error(p, "nope.json", "does not exist")
    assert not (tmp_path / "x.db").exists()


def test_exit_4_on_404_and_3_on_403(srv):
    p = run("config", "get", "nope", "--server", srv.api_root)
    assert p.returncode == 4
    one_line_error(p, "4.04")
    p = run("config", "delete", "nope", "--server", srv.api_root)
    assert p.returncode == 4
    p = run("config", "list", "--server", srv.api_root, "--identity", "ue:urn:x:1")
    assert p.returncode == 3
    one_line_error(p, "4.03")
    for cmd in ("get", "delete"):  # user profiles (su-up) alike
        p = run("profile", cmd, "nope", "--server", srv.api_root)
        assert p.returncode == 4, p.stderr
        one_line_error(p, "4.04")


def test_update_apply_and_configdata_as_object(srv, tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([DOC]))
    p = run("config", "apply", str(f), "--server", srv.api_root, "--json")
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)
    assert len(first["created"]) == 1 and first["updated"] == [] and first["unchanged"] == []
    doc_id = first["created"][0]
    # idempotent: the second run changes nothing
    p = run("config", "apply", str(f), "--server", srv.api_root, "--json")
    assert json.loads(p.stdout) == {"created": [], "updated": [], "unchanged": [doc_id]}
    # configData is an object in JSON output, and the output is accepted back by update
    p = run("config", "get", doc_id, "--server", srv.api_root)
    got = json.loads(p.stdout)
    assert got["ueConfigs"][0]["configData"] == {
        "msgin5gServerAddress": "coap://m.example",
        "ueServiceId": "a@x",
    }
    got["ueConfigs"][0]["configData"]["ueServiceId"] = "b@x"
    g = tmp_path / "b.json"
    g.write_text(json.dumps(got))
    p = run("config", "update", doc_id, str(g), "--server", srv.api_root, "-q")
    assert p.returncode == 0 and p.stdout == "", p.stderr
    p = run("config", "list", "--server", srv.api_root, "--json")
    docs = json.loads(p.stdout)
    assert [d["ueConfigs"][0]["configData"]["ueServiceId"] for d in docs] == ["b@x"]
    # apply matches by configName: the file's version comes back, nothing is duplicated
    p = run("config", "apply", str(f), "--server", srv.api_root, "--json")
    assert json.loads(p.stdout) == {"created": [], "updated": [doc_id], "unchanged": []}
    # a refused update changes nothing and says why (4.00 from the server's validation)
    bad = dict(DOC, valUeIds={"uris": []})
    g.write_text(json.dumps(bad))
    p = run("config", "update", doc_id, str(g), "--server", srv.api_root)
    assert p.returncode != 0 and "Traceback" not in p.stderr


def test_environment_variables(srv, tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([DOC]))
    env = {"MSGIN5G_SERVER": srv.api_root, "MSGIN5G_DB": f"sqlite:///{tmp_path}/reg.db"}
    assert run("config", "import", str(f), env=env).returncode == 0
    p = run("config", "list", "--json", env=env)
    assert [d["configName"] for d in json.loads(p.stdout)] == ["ops-a"]
    p = run("config", "gateway", "set", "gw9", "--all", env=env)
    assert p.returncode == 0 and f"written to sqlite:///{tmp_path}/reg.db" in p.stdout
    p = run("config", "gateway", "list", "--json", env=env)
    assert json.loads(p.stdout) == {"gw9": {"all": True}}
    p = run("config", "gateway", "delete", "gw-none", env=env)
    assert p.returncode == 4 and "no gateway gw-none" in p.stderr


def test_gateway_registry_without_db_says_which_store(tmp_path):
    p = run("config", "gateway", "set", "gw1", "--all", env={"XDG_DATA_HOME": str(tmp_path)})
    assert p.returncode == 0
    assert f"{tmp_path}/msgin5g/scm-s.db" in p.stdout and "no --db" in p.stderr


def _count_docs(api_root: str) -> int:
    p = run("config", "list", "--server", api_root, "--json")
    return len(json.loads(p.stdout))


def _stored_docs(db: str) -> int:
    """Documents in the SCM-S's SQLite store, read beside the running server (WAL: readers do not block)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM docs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_ctrl_c_during_coap_import_leaves_nothing(srv, tmp_path):
    docs = [dict(DOC, configName=f"n{i}", valUeIds={"uris": [f"urn:ops:{i}"]}) for i in range(3000)]
    f = tmp_path / "many.json"
    f.write_text(json.dumps(docs))
    proc = subprocess.Popen(
        [MSGIN5G, "config", "import", str(f), "--server", srv.api_root],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = srv.db.removeprefix("sqlite:///")
    try:
        # until the import is under way: read the store itself (a `config list` takes long enough on
        # a loaded machine for all 3,000 to be created in the meantime, and then nothing is undone)
        for _ in range(1200):
            if _stored_docs(db) > 0:
                break
            time.sleep(0.025)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rolled back" in err
    assert _count_docs(srv.api_root) == 0


def test_ctrl_c_in_observe_exits_130(srv, tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([DOC]))
    run("config", "import", str(f), "--server", srv.api_root)
    proc = subprocess.Popen(
        [MSGIN5G, "ue", "get-config", "--server", srv.api_root, "--ue-uri", "urn:ops:1", "--observe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "configured" in line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err and "Aborted" not in err
