"""What a fresh clone must hold (SPEC D15, issue "Operations" item 5): the licence, documents the
README links to, a libcoap command line that works, the matplotlib hint intact, and a systemd
unit whose command line the server accepts."""

from __future__ import annotations

import io
import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

from .procs import MSGIN5G

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_licence_is_apache_2_as_pyproject_says():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_every_relative_link_of_the_readme_and_docs_resolves_in_the_repository():
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(md.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path = (md.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{md.name} links outside the repository: {target}"
            assert path.exists(), f"{md.name} links to a missing file: {target}"


def test_readme_libcoap_examples_give_the_proxy_a_scheme():
    """libcoap 4.3.1's coap-client takes ``-P coap://HOST:PORT``; a bare HOST:PORT fails."""
    lines = [x for x in (ROOT / "README.md").read_text().splitlines() if "coap-client" in x and " -P " in x]
    assert lines
    for line in lines:
        assert re.search(r" -P coap://", line), line


def test_matplotlib_hint_keeps_its_extra_through_rich():
    from rich.console import Console

    from msgin5g.demo.report import MATPLOTLIB_HINT_MARKUP

    out = io.StringIO()
    Console(file=out, width=200).print(f"--report: the chart needs matplotlib: {MATPLOTLIB_HINT_MARKUP}")
    assert "pip install 'msgin5g[report]'" in out.getvalue()


def _exec_start(unit: str) -> list[str]:
    text = unit.replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_unit_runs_the_server_it_describes(tmp_path):
    """The unit's ExecStart, with this machine's binary, a free port, a SQLite store and a token
    file in a temporary directory, starts a secured server that serves the health checks."""
    unit = (ROOT / "docs" / "msgin5g-server.service").read_text()
    assert "RestartPreventExitStatus=2" in unit
    argv = _exec_start(unit)
    assert argv[0].endswith("/msgin5g") and argv[1] == "server"
    opts = argv[2:]
    assert opts[opts.index("--http") + 1].startswith("127.0.0.1:")  # metrics and console on loopback
    swap = {"--port": "0", "--http": "127.0.0.1:0", "--console-token-file": str(tmp_path / "console.token")}
    for opt, value in swap.items():
        opts[opts.index(opt) + 1] = value
    opts[opts.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen(
        [MSGIN5G, "server", *opts, "--db", f"sqlite:///{tmp_path}/scm.db", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] == "scm-s" and ready["http"].startswith("http://127.0.0.1:")
        assert "#token=" not in ready["console"]  # the token stays in its file, out of the journal
        assert (tmp_path / "console.token").stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for line in err.splitlines():  # --log-format json: one JSON object per line
        assert {"ts", "level", "logger", "msg"} <= set(json.loads(line))
