"""The demo's supervisor: a child is ready when it prints its JSON ready line — not before, whatever
else it prints — and one that dies first is reported, never waited for."""

from __future__ import annotations

import sys

import pytest

from msgin5g.demo.procs import ChildFailed, Supervisor

CHILD = """
import json, sys, time
print("listening coap://127.0.0.1:1/su-uc/v1  (a banner: not the ready line)", flush=True)
print('{"ready": "other", "listen": {}}', flush=True)
time.sleep(0.3)
listen = {"coap": "coap://127.0.0.1:4242/su-uc/v1", "pc5": ["127.0.0.1", 4243]}
print(json.dumps({"ready": "scm-s", "listen": listen}), flush=True)
time.sleep(60)
"""


async def test_ready_line_and_its_addresses(tmp_path):
    sup = Supervisor(tmp_path)
    try:
        child = await sup.start(
            "server", "the test child", [sys.executable, "-c", CHILD], "scm-s", timeout=20
        )
        assert child.ready["listen"]["coap"] == "coap://127.0.0.1:4242/su-uc/v1"
        assert child.listen("pc5") == ("127.0.0.1", 4243)
    finally:
        stopped = await sup.stop_all()
    assert [how for _, how in stopped] == ["stopped"]


async def test_child_that_dies_before_it_is_ready(tmp_path):
    sup = Supervisor(tmp_path)
    argv = [sys.executable, "-c", "import sys; print('cannot bind', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(ChildFailed, match=r"did not start \(exit status 3\)") as e:
        await sup.start("relay", "the Relay UE", argv, "relay", timeout=20)
    assert "cannot bind" in e.value.child.log_tail()


async def test_child_that_never_says_it_is_ready(tmp_path):
    sup = Supervisor(tmp_path)
    argv = [
        sys.executable,
        "-c",
        "import time; print('listening on 127.0.0.1:1', flush=True); time.sleep(60)",
    ]
    try:
        with pytest.raises(ChildFailed, match="did not report ready within 1 s"):
            await sup.start("gateway", "the Gateway UE", argv, "gateway", timeout=1.0)
    finally:
        await sup.stop_all()
