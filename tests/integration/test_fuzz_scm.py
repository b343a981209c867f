"""Bounded, seeded fuzzing of the SCM-S over a real UDP socket (RFC 7252 §3, §4.2; SPEC §2: bad
input gets a clear answer, never a traceback, crash or hang).

A few thousand mutated datagrams of valid SU_UeConfig requests (:mod:`msgin5g.testing.fuzz`, fixed
seed) go to a real ``msgin5g server`` process with a provisioned document; then the server must
still be alive, answer a valid request with exactly the configuration provisioned, and its log must
hold no traceback or error line. ``bench/fuzz.py`` runs the same for a million datagrams.
"""

from __future__ import annotations

import json

import cbor2

from msgin5g.store import open_store
from msgin5g.testing.fuzz import GET, Mutator, request, scm_corpus

from .scm_wire import COLLECTION, LoggedServer, UdpClient, no_tracebacks

UE = "urn:gsma:imei:35209900-000001-8"
SEED = 20261129
DATAGRAMS = 4000


def drain(sock_client: UdpClient) -> None:
    try:
        while sock_client.sock.recv(65536):
            pass
    except BlockingIOError:
        pass


def assert_configured(cli: UdpClient, n: int) -> None:
    """The provisioned UE gets exactly its configuration (CON, retransmitted as RFC 7252 §4.2 says:
    a burst may have filled the server's socket buffer, which the kernel then drops from)."""
    datagram = request(
        GET, COLLECTION, mid=n & 0xFFFF, token=b"ok" + n.to_bytes(4, "big"), query=[f"ue-uri={UE}"]
    )
    m = cli.exchange(datagram, timeout=2, retransmit=4)
    assert int(m.code) == 0x45, m
    (doc,) = cbor2.loads(m.payload)
    assert json.loads(doc["ueConfigs"][0]["configData"])["ueServiceId"] == "svc-fuzz"


def test_fuzzed_scm_s_still_answers_correctly_without_tracebacks(tmp_path):
    url = f"sqlite:///{tmp_path}/fuzz.db"
    store = open_store(url)
    data = json.dumps({"msgin5gServerAddress": "coap://m.example", "ueServiceId": "svc-fuzz"})
    store.import_docs(
        "msgin5g",
        [
            {
                "valServiceDomain": "d",
                "valUeIds": {"uris": [UE]},
                "ueConfigs": [{"configType": "ON_NETWORK", "configData": data}],
            }
        ],
    )
    store.close()
    srv = LoggedServer(tmp_path, db=url)
    try:
        fuzzer = UdpClient(srv.addr)
        fuzzer.sock.setblocking(False)
        stream = Mutator(SEED).stream(scm_corpus())
        cli = UdpClient(srv.addr)
        for i in range(DATAGRAMS):
            fuzzer.send(next(stream))
            if i % 100 == 99:  # a valid request between bursts: answered, and it paces the burst
                drain(fuzzer)
                assert_configured(cli, i)
        fuzzer.close()
        assert srv.proc.poll() is None, "the server died"
        assert_configured(cli, DATAGRAMS)
        cli.close()
    finally:
        log = srv.stop()
    no_tracebacks(log)
