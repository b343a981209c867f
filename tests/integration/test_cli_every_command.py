"""``--json`` and ``-q`` on every command (SPEC D15), each run for real against a real server.

The command tree is walked from ``msgin5g --help``'s own group: a command added without ``--json``
and ``-q``, or without a scenario here, fails :func:`test_every_command_has_json_and_quiet`. Each
scenario then runs twice — ``--json``: every line of stdout is JSON; ``-q``: stdout is empty —
and must succeed (exit status 0). Long-running actors are started, found ready through their
``--http`` health check (``-q`` prints nothing to wait for), and stopped with SIGINT.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import click
import pytest

from msgin5g.cli import main

from .procs import MSGIN5G, ServerProcess

WAIT = 60.0  # hang guard only
_n = itertools.count()


def leaf_commands() -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, path: list[str], ctx: click.Context) -> None:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name], ctx)
        else:
            out[" ".join(path)] = cmd

    walk(main, [], click.Context(main))
    return out


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc(uri: str) -> dict:
    return {
        "configName": uri,
        "valServiceDomain": "msgin5g.example",
        "valUeIds": {"uris": [uri]},
        "ueConfigs": [
            {
                "configType": "ON_NETWORK",
                "configData": {"msgin5gServerAddress": "coap://m", "ueServiceId": "e@x"},
            }
        ],
    }


class Env:
    """A running insecure server, its store, a separate key store, and files made on demand."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.db = f"sqlite:///{tmp}/scm.db"
        self.keys_db = f"sqlite:///{tmp}/keys.db"
        self.srv = ServerProcess(self.db)
        self.server = self.srv.api_root

    def file(self, name: str, content) -> str:
        p = self.tmp / f"{next(_n)}-{name}"
        p.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(p)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSGIN5G_")}
        return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=WAIT, env=env)

    def ok_json(self, *args: str):
        p = self.run(*args, "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def new_doc(self) -> str:
        uri = f"urn:every:{next(_n)}"
        (doc_id,) = self.ok_json("config", "import", self.file("d.json", [doc(uri)]), "--server", self.server)
        return doc_id

    def new_profile(self) -> str:
        f = self.file(
            "p.json",
            [
                {
                    "profileInformation": {"profileName": "p", "status": True},
                    "valTgtUe": {"valUeId": "urn:p:1"},
                }
            ],
        )
        (pid,) = self.ok_json("profile", "import", f, "--server", self.server)
        return pid


S = "--server"
#: command → argv after the command words, given the environment (each call: fresh objects)
SCENARIOS = {
    "config import": lambda e: [e.file("i.json", [doc(f"urn:imp:{next(_n)}")]), S, e.server],
    "config apply": lambda e: [e.file("a.json", [doc(f"urn:apply:{next(_n)}")]), S, e.server],
    "config list": lambda e: [S, e.server],
    "config get": lambda e: [e.new_doc(), S, e.server],
    "config update": lambda e: [e.new_doc(), e.file("u.json", doc("urn:upd")), S, e.server],
    "config delete": lambda e: [e.new_doc(), S, e.server],
    "config gateway set": lambda e: [f"gw{next(_n)}", "--all", "--db", e.db],
    "config gateway list": lambda e: ["--db", e.db],
    "config gateway delete": lambda e: [
        e.ok_json("config", "gateway", "set", f"gw{next(_n)}", "--all", "--db", e.db)["gateway"],
        "--db",
        e.db,
    ],
    "keys add": lambda e: [
        f"ue:urn:k:{next(_n)}",
        "--db",
        e.keys_db,
        "--out",
        str(e.tmp / f"k{next(_n)}.json"),
    ],
    "keys cert": lambda e: [f"ue:urn:c:{next(_n)}", "--db", e.keys_db, "--out", str(e.tmp / f"c{next(_n)}")],
    "keys import": lambda e: [
        e.file("ids.csv", f"identity\nue:urn:ki:{next(_n)}\n"),
        "--db",
        e.keys_db,
        "--out",
        str(e.tmp / f"b{next(_n)}.jsonl"),
    ],
    "keys list": lambda e: ["--db", e.keys_db],
    "keys revoke": lambda e: [
        e.ok_json(
            "keys",
            "add",
            f"ue:urn:r:{next(_n)}",
            "--db",
            e.keys_db,
            "--out",
            str(e.tmp / f"r{next(_n)}.json"),
        )["identity"],
        "--db",
        e.keys_db,
    ],
    "profile import": lambda e: [
        e.file(
            "p.json",
            {"profileInformation": {"profileName": "i", "status": True}, "valTgtUe": {"valUeId": "urn:p:2"}},
        ),
        S,
        e.server,
    ],
    "profile list": lambda e: ["--val-tgt-ue", "urn:p:1", S, e.server],
    "profile get": lambda e: [e.new_profile(), S, e.server],
    "profile delete": lambda e: [e.new_profile(), S, e.server],
    "ue get-config": lambda e: [
        "--ue-uri",
        e.ok_json("config", "get", e.new_doc(), S, e.server)["valUeIds"]["uris"][0],
        S,
        e.server,
    ],
    "demo": lambda e: ["--ues", "20", "--insecure"],
}
#: long-running actors: argv given the environment and the --http port
ACTORS = {
    "server": lambda e, h: [
        "--insecure",
        "--port",
        "0",
        "--db",
        f"sqlite:///{e.tmp}/s{h}.db",
        "--http",
        f"127.0.0.1:{h}",
    ],
    "relay": lambda e, h: [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "none",
        S,
        e.server,
        "--http",
        f"127.0.0.1:{h}",
    ],
    "gateway": lambda e, h: [
        "--listen",
        "127.0.0.1:0",
        S,
        e.server,
        "--state",
        str(e.tmp / f"g{h}.db"),
        "--http",
        f"127.0.0.1:{h}",
    ],
    "cm-client": lambda e, h: [
        "--listen",
        f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        S,
        e.server,
        "--http",
        f"127.0.0.1:{h}",
    ],
}


def test_every_command_has_json_and_quiet():
    commands = leaf_commands()
    assert set(commands) == set(SCENARIOS) | set(ACTORS), "a command without a scenario here"
    for name, cmd in commands.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", ())}
        assert {"--json", "-q"} <= opts, f"msgin5g {name} lacks --json or -q"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("every"))
    yield e
    e.srv.stop()


@pytest.mark.parametrize("mode", ["--json", "-q"])
@pytest.mark.parametrize("command", sorted(SCENARIOS))
def test_short_command(env, command, mode):
    argv = SCENARIOS[command](env)
    p = env.run(*command.split(), *argv, mode)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    if mode == "-q":
        assert p.stdout == ""
    else:
        json.loads(p.stdout)  # one JSON document


def _healthy(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("never healthy")


@pytest.mark.parametrize("mode", ["--json", "-q"])
@pytest.mark.parametrize("actor", sorted(ACTORS))
def test_long_running_actor(env, actor, mode):
    port = free_port()
    proc = subprocess.Popen(
        [MSGIN5G, actor, *ACTORS[actor](env, port), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = ""
    try:
        if mode == "-q":  # nothing to read: ask its health check
            _healthy(port, proc)
        else:  # stopped as soon as it says it is ready (as a supervisor may): an orderly stop all the same
            first = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT if mode == "-q" else signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    if mode == "-q":
        assert out == ""
    else:
        lines = [json.loads(line) for line in (first + out).splitlines()]
        assert lines[0]["ready"] and lines[0]["http"] == f"http://127.0.0.1:{port}"
        assert lines[-1]["stopped"] == actor and isinstance(lines[-1]["counters"], dict)
