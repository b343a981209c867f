"""The pure decisions of ``--workers N --http`` (SPEC D14, D15): health, readiness, counter copies,
and the import order prometheus_client's multiprocess mode depends on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from msgin5g.ops.workers import deltas, health, prepare_multiprocess_dir, readiness


def test_health_all_some_none():
    assert health(2, 2) == (200, {"status": "ok", "actor": "scm-s", "workers": {"alive": 2, "expected": 2}})
    status, body = health(1, 2)
    assert status == 200 and body["status"] == "degraded"  # the supervisor is restarting the other
    status, body = health(0, 2)
    assert status == 503 and body["status"] == "down"


def test_readiness():
    assert readiness(2, 2, None) is None
    assert readiness(1, 2, None) is None  # the kernel sends every flow to the workers still bound
    assert readiness(0, 2, None) == "no worker is running (0 of 2); they are being restarted"
    assert readiness(2, 2, "the store does not answer: OperationalError: x") == (
        "the store does not answer: OperationalError: x"
    )
    assert readiness(2, 2, None, stopping=True) == "stopping"


def test_deltas_add_only_what_grew():
    assert deltas({}, {"created": 2}) == {"created": 2}
    assert deltas({"created": 2, "deleted": 1}, {"created": 5, "deleted": 1}) == {"created": 3}
    assert deltas({"created": 5}, {"created": 3}) == {}  # never a negative increment


def test_multiprocess_dir_refused_once_prometheus_client_is_imported():
    import prometheus_client  # noqa: F401  (imported by this test process already)

    with pytest.raises(RuntimeError, match="before prometheus_client is imported"):
        prepare_multiprocess_dir()


def test_command_line_does_not_import_prometheus_client_before_the_server_runs():
    """``msgin5g server --workers N --http``: the option parsing must leave prometheus_client
    unimported, else the workers' series would not be shared."""
    code = (
        "import sys; from msgin5g.cli import main; import msgin5g.server.cli, msgin5g.clicommon; "
        "from msgin5g.clicommon import http_option; "
        "from msgin5g.ops.address import parse_http_address; parse_http_address('127.0.0.1:0'); "
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
