"""Several SCM-S processes on one store (SPEC D14), on SQLite and on PostgreSQL.

Real ``msgin5g server`` processes on loopback: two processes sharing one database (two "nodes"),
and one server with ``--workers 2``. What is checked:

* Observe across processes: an observer registered at process A is notified of a PUT made through
  process B — once, with the new document — and of a DELETE made through B with 4.04 (RFC 7641;
  TS 24.546 C.3.1.2.3.1). A PUT through A itself is notified once, not twice.
* Bulk answers across processes: the Block2 follow-ups of a bulk GET answered by A, naming only the
  bulk-conf-flag (SPEC D7 b), are served by B from the answer kept in the store.
* ``--workers 2``: one port, answers from every worker, a killed worker is replaced, SIGINT stops all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import aiocoap
import cbor2
import pytest
from aiocoap import Code, Message
from aiocoap.optiontypes import BlockOption

from .conftest import make_doc
from .procs import ServerProcess

WAIT = 15.0  # hang guard only: a correct server answers within milliseconds


async def _request(ctx, code, uri, payload=b"", **opts):
    msg = Message(code=code, uri=uri, payload=payload)
    if payload:
        msg.opt.content_format = 60
    for name, value in opts.items():
        setattr(msg.opt, name, value)
    return await asyncio.wait_for(ctx.request(msg).response, WAIT)


def _service_id(doc_payload: bytes) -> str:
    doc = cbor2.loads(doc_payload)
    return json.loads(doc["ueConfigs"][0]["configData"])["ueServiceId"]


@pytest.fixture
def two_processes(store_url):
    a = ServerProcess(store_url)
    b = ServerProcess(store_url)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
async def ctx():
    c = await aiocoap.Context.create_client_context()
    yield c
    await c.shutdown()


async def test_an_observer_at_one_process_is_notified_of_changes_made_through_another(two_processes, ctx):
    a, b = two_processes
    created = await _request(
        ctx, Code.POST, a.collection, cbor2.dumps(make_doc(uris=["urn:x:1"], service_id="v1"))
    )
    assert created.code == Code.CREATED
    doc_id = created.opt.location_path[-1]
    at_a, at_b = f"{a.collection}/{doc_id}", f"{b.collection}/{doc_id}"

    obs_req = Message(code=Code.GET, uri=at_a, observe=0)
    request = ctx.request(obs_req)
    first = await asyncio.wait_for(request.response, WAIT)
    assert first.code == Code.CONTENT and first.opt.observe is not None
    assert _service_id(first.payload) == "v1"
    notifications = request.observation.__aiter__()

    async def next_notification():
        return await asyncio.wait_for(notifications.__anext__(), WAIT)

    # a PUT through B reaches the observer at A, with the new document
    put = await _request(ctx, Code.PUT, at_b, cbor2.dumps(make_doc(uris=["urn:x:1"], service_id="v2")))
    assert put.code == Code.CHANGED
    n1 = await next_notification()
    assert n1.code == Code.CONTENT and _service_id(n1.payload) == "v2"

    # a PUT through A itself is notified once (not once by A and again by its change feed)
    put = await _request(ctx, Code.PUT, at_a, cbor2.dumps(make_doc(uris=["urn:x:1"], service_id="v3")))
    assert put.code == Code.CHANGED
    n2 = await next_notification()
    assert _service_id(n2.payload) == "v3"

    put = await _request(ctx, Code.PUT, at_b, cbor2.dumps(make_doc(uris=["urn:x:1"], service_id="v4")))
    n3 = await next_notification()
    assert _service_id(n3.payload) == "v4"  # the next one is B's change: nothing in between

    # a DELETE through B ends the observation at A with 4.04
    gone = await _request(ctx, Code.DELETE, at_b)
    assert gone.code == Code.DELETED
    try:
        final = await next_notification()
    except StopAsyncIteration:  # aiocoap may report the final error notification only as the end
        pass
    else:
        assert final.code == Code.NOT_FOUND and final.opt.content_format == 257
        assert cbor2.loads(final.payload)["cause"] == "DOCUMENT_DELETED"
    assert (await _request(ctx, Code.GET, at_a)).code == Code.NOT_FOUND


def _bulk(flag: str, uris: list[str], num: int, uri: str, followup: bool) -> Message:
    msg = Message(code=Code.GET, uri=uri)
    query = [f"bulk-conf-flag={flag}"] + ([] if followup else [f"ue-uri={u}" for u in uris])
    msg.opt.uri_query = query
    msg.opt.block2 = BlockOption.BlockwiseTuple(num, False, 6)
    return msg


async def test_bulk_follow_ups_are_served_by_any_process(two_processes, ctx):
    a, b = two_processes
    uris = [f"urn:dev:{i:03d}" for i in range(20)]
    for i, u in enumerate(uris):
        r = await _request(
            ctx, Code.POST, a.collection, cbor2.dumps(make_doc(uris=[u], service_id=f"s{i}@x"))
        )
        assert r.code == Code.CREATED

    async def block(server, num, followup):
        m = _bulk("flag-1", uris, num, server.collection, followup)
        return await asyncio.wait_for(ctx.request(m, handle_blockwise=False).response, WAIT)

    first = await block(a, 0, followup=False)
    assert first.code == Code.CONTENT and first.opt.block2.more
    body, etag, num = bytearray(first.payload), first.opt.etag, 1
    servers = [b, a]
    while True:
        part = await block(servers[num % 2], num, followup=True)  # B first: not the process that rendered it
        assert part.code == Code.CONTENT, part.payload
        assert part.opt.etag == etag
        body += part.payload
        if not part.opt.block2.more:
            break
        num += 1
    assert num >= 2  # the answer really took several blocks, some served by B
    entries = cbor2.loads(bytes(body))
    assert [e["valUeIds"]["uris"] for e in entries] == [[u] for u in uris]  # one per UE, request order
    got = [json.loads(e["ueConfigs"][0]["configData"])["ueServiceId"] for e in entries]
    assert got == [f"s{i}@x" for i in range(20)]


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


async def test_workers_share_one_port_replace_a_dead_worker_and_stop_together(tmp_path):
    srv = ServerProcess(f"sqlite:///{tmp_path}/w.db", "--workers", "2")
    try:
        workers = _children(srv.proc.pid)
        assert len(workers) == 2
        contexts = [await aiocoap.Context.create_client_context() for _ in range(6)]  # 6 source ports
        try:
            doc = cbor2.dumps(make_doc(uris=["urn:w:1"], service_id="w1@x"))
            assert (await _request(contexts[0], Code.POST, srv.collection, doc)).code == Code.CREATED
            for c in contexts:
                got = await _request(c, Code.GET, srv.collection, uri_query=["ue-uri=urn:w:1"])
                assert (
                    got.code == Code.CONTENT
                    and _service_id(cbor2.dumps(cbor2.loads(got.payload)[0])) == "w1@x"
                )

            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                now = _children(srv.proc.pid)
                if len(now) == 2 and victim not in now:
                    break
                await asyncio.sleep(0.1)
            assert len(now) == 2 and victim not in now  # replaced
            for c in contexts:
                got = await _request(c, Code.GET, srv.collection, uri_query=["ue-uri=urn:w:1"])
                assert got.code == Code.CONTENT
        finally:
            for c in contexts:
                await c.shutdown()
        survivors = _children(srv.proc.pid)
    finally:
        err = srv.stop()
    assert srv.proc.returncode == 0, err
    assert "Traceback" not in err
    for pid in survivors:  # every worker is gone (or a zombie about to be reaped)
        assert (
            not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


async def test_a_user_profile_observer_is_notified_of_a_change_made_through_another_process(
    two_processes, ctx
):
    """su-up (TS 24.546 C.2.1.2.3; SPEC D16) shares the change feed with su-uc."""
    a, b = two_processes
    coll = lambda srv: f"{srv.api_root}/su-up/v1/val-services/msgin5g/user-profiles"  # noqa: E731

    def profile(name: str) -> bytes:
        return cbor2.dumps(
            {
                "profileInformation": {
                    "profileName": name,
                    "status": True,
                    "profileConfigs": [{"configType": "COMMON", "configData": "x"}],
                },
                "valTgtUe": {"valUeId": "urn:x:p1"},
            }
        )

    made = await _request(ctx, Code.POST, coll(a), profile("one"))
    assert made.code == Code.CREATED
    pid = made.opt.location_path[-1]
    request = ctx.request(Message(code=Code.GET, uri=f"{coll(a)}/{pid}", observe=0))
    first = await asyncio.wait_for(request.response, WAIT)
    assert cbor2.loads(first.payload)["profileInformation"]["profileName"] == "one"
    it = request.observation.__aiter__()
    assert (await _request(ctx, Code.PUT, f"{coll(b)}/{pid}", profile("two"))).code == Code.CHANGED
    n = await asyncio.wait_for(it.__anext__(), WAIT)
    assert cbor2.loads(n.payload)["profileInformation"]["profileName"] == "two"
