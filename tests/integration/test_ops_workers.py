"""``msgin5g server --workers 2 --http``: one operations side for every worker (SPEC D14, D15).

A real server process with two workers on loopback. The requests are counted by the test as it
sends them, each from its own UDP source port, so that the kernel (SO_REUSEPORT) spreads them over
both workers; ``/metrics`` (prometheus_client multiprocess mode, served by the supervisor) must sum
them exactly, per worker and in total, and keep them across a worker's restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import aiocoap
import cbor2
from aiocoap import Code, Message

from .conftest import make_doc
from .ops_procs import HttpActor

WAIT = 15.0  # hang guard only
COLLECTION = "/su-uc/v1/val-services/{valServiceId}/ue-configurations"
GET_OK = f'msgin5g_server_requests_total{{code="2.05",method="GET",outcome="ok",path="{COLLECTION}"}}'
POST_OK = f'msgin5g_server_requests_total{{code="2.01",method="POST",outcome="ok",path="{COLLECTION}"}}'


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


async def _gets(uri: str, senders: int, per_sender: int) -> None:
    """``senders`` × ``per_sender`` GETs, each sender on its own source port; every one must be 2.05."""
    for _ in range(senders):
        ctx = await aiocoap.Context.create_client_context()
        try:
            for _ in range(per_sender):
                msg = Message(code=Code.GET, uri=uri, uri_query=["ue-uri=urn:wk:1"])
                got = await asyncio.wait_for(ctx.request(msg).response, WAIT)
                assert got.code == Code.CONTENT
        finally:
            await ctx.shutdown()


def _wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_workers_metrics_sum_health_restart_and_console(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    srv = HttpActor(
        "server",
        "--workers",
        "2",
        "--insecure",
        "--port",
        "0",
        "--db",
        f"sqlite:///{tmp_path}/w.db",
        console=True,
        env={"TMPDIR": str(tmp)},
    )
    try:
        workers = _children(srv.proc.pid)
        assert len(workers) == 2
        assert [p.name for p in tmp.iterdir()] == [next(tmp.iterdir()).name] and next(
            tmp.iterdir()
        ).name.startswith("msgin5g-metrics-")  # the run's directory
        coll = f"{srv.api_root}/su-uc/v1/val-services/msgin5g/ue-configurations"

        ctx = await aiocoap.Context.create_client_context()
        try:
            doc = cbor2.dumps(make_doc(uris=["urn:wk:1"], service_id="wk@x"))
            post = Message(code=Code.POST, uri=coll, payload=doc, content_format=60)
            assert (await asyncio.wait_for(ctx.request(post).response, WAIT)).code == Code.CREATED
        finally:
            await ctx.shutdown()
        await _gets(coll, senders=24, per_sender=2)  # 48 GETs

        m = srv.metrics()
        assert m[POST_OK] == 1
        assert m[GET_OK] == 48  # summed over both workers
        per_worker = [
            m['msgin5g_server_worker_requests_total{worker="0"}'],
            m['msgin5g_server_worker_requests_total{worker="1"}'],
        ]
        assert all(n > 0 for n in per_worker), per_worker  # both workers answered some
        assert sum(per_worker) == 49
        assert m["msgin5g_server_workers"] == 2
        assert m["msgin5g_server_worker_restarts_total"] == 0
        # the service's own counters are copied into the shared files within a second
        created = 'msgin5g_server_service_events_total{event="created"}'
        _wait_for(lambda: srv.metrics().get(created) == 1, "the mirrored service counter")

        status, body = srv.get("/healthz")
        assert status == 200 and json.loads(body) == {
            "status": "ok",
            "actor": "scm-s",
            "workers": {"alive": 2, "expected": 2},
        }
        assert srv.get("/readyz")[0] == 200

        # a worker dies: the supervisor replaces it, and nothing it counted is lost
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(
            lambda: srv.metrics().get("msgin5g_server_worker_restarts_total") == 1, "the worker's restart"
        )
        now = _children(srv.proc.pid)
        assert len(now) == 2 and victim not in now
        status, body = srv.get("/healthz")
        assert status == 200 and json.loads(body)["workers"] == {"alive": 2, "expected": 2}
        await _gets(coll, senders=6, per_sender=1)
        m = srv.metrics()
        assert m[GET_OK] == 54
        assert (
            m['msgin5g_server_worker_requests_total{worker="0"}']
            + m['msgin5g_server_worker_requests_total{worker="1"}']
            == 55
        )

        # the console, served by the supervisor from the shared store
        status, page = srv.get("/console/")
        assert status == 200 and "<html" in page.lower()
        status, body = srv.get("/console/api/docs")
        assert status == 200 and [d["valUeIds"]["uris"] for d in json.loads(body)["docs"]] == [["urn:wk:1"]]
        status, body = srv.get("/console/api/resolve?ue-uri=urn:wk:1")
        assert status == 200, body
        assert json.loads(body)["answer"] == "2.05", body
        assert status == 200, body
    finally:
        out, err = srv.stop()
    assert srv.proc.returncode == 0, err
    summary = out.splitlines()[-1]
    assert summary.startswith("server counters at shutdown: ")
    assert json.loads(summary.split(": ", 1)[1])["created"] == 1  # every worker's counts
    assert "Traceback" not in err
    assert list(tmp.iterdir()) == []  # the metrics directory is removed at exit
