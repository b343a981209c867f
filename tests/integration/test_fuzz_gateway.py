"""Bounded, seeded fuzzing of the Gateway UE's MSGin5G-6 side over a real UDP socket (SPEC D9; issue
of hardening: bad input gets a clear answer, never a traceback, crash or hang).

A few thousand mutated datagrams of valid constrained-UE configuration requests
(:mod:`msgin5g.testing.fuzz`, fixed seed) go to a real ``msgin5g gateway`` process in front of a
real SCM-S; between bursts, and after the flood, a constrained UE asks through the gateway and must
get exactly the configuration provisioned for it; the gateway's log must hold no traceback.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from msgin5g.outcome import Outcome
from msgin5g.testing.fuzz import Mutator, scm_corpus
from msgin5g.ue.via_gateway import get_config_via_gateway

from .conftest import free_port, make_doc

SEED = 20261129
DATAGRAMS = 3000
UE = "urn:gsma:imei:35209900-000001-8"


async def _configured(port: int) -> None:
    result = await get_config_via_gateway("127.0.0.1", port, ue_uri=UE, timeout=60)
    assert result.outcome is Outcome.CONFIGURED, result
    assert result.config.ue_service_id == "after-fuzz@x"


async def test_fuzzed_gateway_still_configures_its_ues_without_tracebacks(scm_server, tmp_path):
    scm_server.store.create("msgin5g", make_doc(uris=[UE], service_id="after-fuzz@x"))
    scm_server.store.set_gateway("gw1", {"all": True})  # the registry lets the gateway read for its UEs
    port = free_port()
    cmd = [
        sys.executable, "-m", "msgin5g.cli", "gateway", "--listen", f"127.0.0.1:{port}",
        "--server", scm_server.base_uri(), "--state", str(tmp_path / "gw.db"), "--max-wait-ms", "20",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            for _ in range(200):  # until it listens
                if "listening" in log_path.read_text() or proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert proc.poll() is None, log_path.read_text()
            fuzzer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            fuzzer.setblocking(False)
            stream = Mutator(SEED).stream(scm_corpus())
            for i in range(DATAGRAMS):
                try:
                    fuzzer.sendto(next(stream), ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                if i % 500 == 499:  # a real UE between bursts: configured, and it paces the flood
                    await _configured(port)
            fuzzer.close()
            assert proc.poll() is None, "the gateway died"
            await _configured(port)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
