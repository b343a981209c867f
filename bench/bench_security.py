"""What authenticated identities cost: a secured SCM-S (OSCORE, SPEC D12) against an insecure one.

One run, loopback only, two ``msgin5g server`` processes on the same SQLite file (one with
``--insecure``, one secured by the store's keys), measured alternately for ``--rounds`` rounds:

* **single-UE configuration GETs**: ``--endpoints`` UDP source endpoints, each a UE with its own
  key, one confirmable request outstanding per endpoint (NSTART), each asking for its own
  configuration. Secured requests are protected before the measurement starts (the load
  generator must not be what is measured); every answer must be a protected 2.04 carrying the
  answer, and a sample of them per endpoint is verified and decoded (inner 2.05, the UE's own
  UE Service ID). Insecure requests carry the same query.
* **bulk configuration**: the Gateway UE's configuration management client (the real
  :class:`msgin5g.gateway.upstream.UpstreamScmc`) fetches ``--bulk-ues`` UEs with bulk GETs over UDP
  (packed per datagram, block-wise answers with follow-ups naming only the flag, SPEC D7) and
  over TCP (one GET per ``--max-ues-per-get`` UEs) — with the gateway's OSCORE key, or claiming
  the gateway's lab identity on the insecure server. Every entry is checked. Over TCP with the
  default AES-CCM-16-64-128 key one protected message holds at most 64 KiB, so a larger answer
  still comes block-wise; a gateway key using A128GCM has no such limit (both are measured).

Printed: rates of both, the ratio secured / insecure (goal: ≥ 0.6 for single GETs, ≥ 0.9 for
bulk), and the secured server's RSS.

    python bench/bench_security.py [--ues 10000] [--endpoints 64] [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aiocoap import ACK, CON, Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402

from loadgen import LoadGenerator, LoadResult, rss_mib  # noqa: E402
from msgin5g.authz import parse_identity  # noqa: E402
from msgin5g.bulk import BulkItem, decode_answer  # noqa: E402
from msgin5g.gateway.upstream import UpstreamScmc  # noqa: E402
from msgin5g.model import imei_urn  # noqa: E402
from msgin5g.security.credentials import load_bundle, load_key  # noqa: E402
from msgin5g.security.endpoint import ClientProtection  # noqa: E402
from msgin5g.security.storekeys import add_keys  # noqa: E402
from msgin5g.store import open_store  # noqa: E402
from procs import start_server  # noqa: E402

BIN = Path(sys.executable).parent
TAC = "35209900"
PATH = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
DOMAIN = "msgin5g.example"


def ue(i: int) -> str:
    return imei_urn(TAC, i)


def provision(db: str, n: int) -> None:
    """Every UE its own document (like bench_server.py), and gateways gw1 and gw2 covering all."""
    store = open_store(db)
    try:
        docs = []
        for i in range(n):
            data = {"msgin5gServerAddress": "coap://msgin5g-server.example", "ueServiceId": f"ue{i}@x"}
            docs.append(
                {
                    "valServiceDomain": DOMAIN,
                    "valUeIds": {"uris": [ue(i)]},
                    "ueConfigs": [{"configType": "ON_NETWORK", "configData": json.dumps(data)}],
                }
            )
        store.import_docs("msgin5g", docs)
        store.set_gateway("gw1", {"all": True})
        store.set_gateway("gw2", {"all": True})
    finally:
        store.close()


# -- single-UE GETs ---------------------------------------------------------------------------------


class _SecureEndpoint(asyncio.DatagramProtocol):
    """One UE: pre-protected requests sent one at a time (closed loop, NSTART = 1)."""

    def __init__(self, prot: ClientProtection, protected: list, samples: set[int]):
        self.prot, self.protected, self.samples = prot, protected, samples
        self.transport = None
        self.mid = random.randrange(0x10000)
        self.future: asyncio.Future | None = None
        self.token = b""
        self.next = 0
        self.checked: list[Message] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            m = Message.decode(data)
        except Exception:
            return
        if m.mtype == CON:  # a separate response (RFC 7252 §5.2.2): acknowledge it
            ack = Message(code=Code.EMPTY)
            ack.mtype, ack.mid = ACK, m.mid
            self.transport.sendto(ack.encode())
        if m.code == Code.EMPTY or m.token != self.token:
            return  # the empty ACK of a request answered later, or not ours
        if self.future is not None and not self.future.done():
            self.future.set_result(m)

    async def one(self, timeout: float) -> Message | None:
        outer, binding = self.protected[self.next]
        index = self.next
        self.next += 1
        self.mid = (self.mid + 1) & 0xFFFF
        self.token = os.urandom(4)
        outer.mtype, outer.mid, outer.token = CON, self.mid, self.token
        self.future = asyncio.get_running_loop().create_future()
        self.transport.sendto(outer.encode())
        try:
            m = await asyncio.wait_for(self.future, timeout)
        except TimeoutError:
            return None
        if index in self.samples:
            self.checked.append(self.prot.verify(m, binding))
        return m


async def secured_gets(port: int, creds, seconds: float, per_endpoint: int) -> tuple[LoadResult, list]:
    loop = asyncio.get_running_loop()
    endpoints = []
    for i, c in enumerate(creds):
        prot = ClientProtection(c.security_context())
        protected = []
        for _ in range(per_endpoint):
            plain = Message(code=Code.GET, uri_path=PATH, uri_query=(f"ue-uri={ue(i)}",))
            protected.append(prot.protect(plain))
        samples = {0, 1, per_endpoint // 2}
        _, ep = await loop.create_datagram_endpoint(
            lambda prot=prot, protected=protected, samples=samples: _SecureEndpoint(prot, protected, samples),
            remote_addr=("127.0.0.1", port),
            family=socket.AF_INET,
        )
        endpoints.append(ep)
    res = LoadResult()
    stop_at = time.perf_counter() + seconds

    async def worker(ep: _SecureEndpoint) -> None:
        while time.perf_counter() < stop_at and ep.next < per_endpoint:
            t0 = time.perf_counter()
            res.requests += 1
            m = await ep.one(5.0)
            if m is None:
                res.timeouts += 1
                continue
            res.answers += 1
            res.latencies.append(time.perf_counter() - t0)
            code = str(m.code) + (" protected" if m.opt.oscore is not None else "")
            res.codes[code] = res.codes.get(code, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(ep) for ep in endpoints))
    res.seconds = time.perf_counter() - t0
    checked = [m for ep in endpoints for m in ep.checked]
    exhausted = sum(ep.next >= per_endpoint for ep in endpoints)
    for ep in endpoints:
        ep.transport.close()
    if exhausted:
        print(f"  note: {exhausted} endpoints used up their {per_endpoint} pre-protected requests")
    return res, checked


async def insecure_gets(port: int, n_endpoints: int, seconds: float) -> LoadResult:
    async with LoadGenerator("127.0.0.1", port, endpoints=n_endpoints) as gen:
        # the same UEs as the secured run, round robin
        counter = iter(range(10**12))
        return await gen.run(lambda _i: (PATH, (f"ue-uri={ue(next(counter) % n_endpoints)}",)), seconds)


# -- bulk ------------------------------------------------------------------------------------------


async def bulk_run(server: str, n: int, rounds: int, credentials=None, max_ues=None) -> tuple[float, int]:
    """UEs configured per second by bulk GETs (the best of ``rounds``), and the GETs per round."""
    cm = UpstreamScmc(server, gateway_id="gw1", credentials=credentials, max_ues=max_ues)
    items = [BulkItem(ue(i)) for i in range(n)]
    best, gets = 0.0, 0
    try:
        await cm.bulk_configure("msgin5g", items[:50])  # warm-up (connections, contexts)
        for _ in range(rounds):
            t0 = time.perf_counter()
            outcomes = await cm.bulk_configure("msgin5g", items)
            dt = time.perf_counter() - t0
            entries = []
            for o in outcomes:
                assert o.code == 0x45, (o.code, o.detail)
                entries += decode_answer(o.payload)
            assert len(entries) == n
            for i in (0, n // 2, n - 1):
                assert f"ue{i}@x" in entries[i]["ueConfigs"][0]["configData"], entries[i]
            best = max(best, n / dt)
            gets = len(outcomes)
    finally:
        await cm.close()
    return best, gets


# -- main ------------------------------------------------------------------------------------------


def single_gets(args, insecure_port: int, secured_port: int, creds) -> None:
    """Alternating rounds of insecure and secured single-UE GETs; the mean rate of each."""
    runs: dict[str, list[LoadResult]] = {"insecure": [], "secured": []}
    checked: list = []
    for _ in range(args.rounds):
        asyncio.run(insecure_gets(insecure_port, args.endpoints, 1.0))  # warm-up
        runs["insecure"].append(asyncio.run(insecure_gets(insecure_port, args.endpoints, args.seconds)))
        asyncio.run(secured_gets(secured_port, creds, 1.0, 60))  # warm-up: contexts loaded
        result, sample = asyncio.run(secured_gets(secured_port, creds, args.seconds, args.per_endpoint))
        runs["secured"].append(result)
        checked += sample
    bad = [m for m in checked if m.code != Code.CONTENT]
    assert checked and not bad, bad[:3]
    print(
        f"single-UE configuration GET over UDP: {args.endpoints} UEs, one CON outstanding each, "
        f"{args.rounds}×{args.seconds:.0f} s, {args.ues:,} per-UE documents"
    )
    print(f"  {'':9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'timeouts':>9}  codes")
    rate = {}
    for name, results in runs.items():
        rate[name] = sum(r.rate for r in results) / len(results)
        r = results[-1]
        print(
            f"  {name:9} {rate[name]:9,.0f} {r.percentile(50) * 1e3:8.2f} "
            f"{r.percentile(99) * 1e3:8.2f} {r.timeouts:9d}  {r.codes}"
        )
    print(
        f"  ratio secured / insecure = {rate['secured'] / rate['insecure']:.2f}  (goal ≥ 0.6); "
        f"{len(checked)} sampled answers verified and decoded: every one the UE's own 2.05"
    )


def bulk(args, insecure_port: int, secured_port: int, gw_ccm, gw_gcm) -> None:
    print(f"\nbulk configuration of {args.bulk_ues:,} UEs by the gateway's CM client, best of {args.rounds}:")
    print(f"  {'':30} {'insecure UE/s':>14} {'secured UE/s':>13} {'GETs':>5}  ratio")
    cases = (
        ("coap", "AES-CCM-16-64-128", gw_ccm, None),
        ("coap+tcp", "AES-CCM-16-64-128", gw_ccm, args.max_ues_per_get),
        ("coap+tcp", "A128GCM", gw_gcm, args.max_ues_per_get),
    )
    for scheme, alg, gw_creds, max_ues in cases:
        best = {"insecure": 0.0, "secured": 0.0}
        for _ in range(args.rounds):
            for name, port, creds in (("insecure", insecure_port, None), ("secured", secured_port, gw_creds)):
                uri = f"{scheme}://127.0.0.1:{port}"
                rate, gets = asyncio.run(bulk_run(uri, args.bulk_ues, 1, creds, max_ues))
                best[name] = max(best[name], rate)
        a, b = best["insecure"], best["secured"]
        label = f"{scheme}, key {alg}"
        print(f"  {label:30} {a:14,.0f} {b:13,.0f} {gets:5d}  {b / a:.2f}  (goal ≥ 0.9)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ues", type=int, default=10_000, help="UEs provisioned (one document each)")
    ap.add_argument("--endpoints", type=int, default=64, help="UEs sending single GETs at once")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-endpoint", type=int, default=2500, help="pre-protected requests per UE")
    ap.add_argument("--bulk-ues", type=int, default=5000)
    ap.add_argument("--max-ues-per-get", type=int, default=1000, help="per bulk GET over TCP")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="msgin5g-bench-sec-") as tmp:
        tmp = Path(tmp)
        db = f"sqlite:///{tmp / 'scm.db'}"
        provision(db, args.ues)
        store = open_store(db)  # the keys: rows in the same store (SPEC D12)
        try:
            add_keys(store, [parse_identity(f"ue:{ue(i)}") for i in range(args.endpoints)], tmp / "ues.jsonl")
            add_keys(store, [parse_identity("gateway:gw1")], tmp / "gw1.json")
            add_keys(store, [parse_identity("gateway:gw2")], tmp / "gw2.json", "A128GCM")
        finally:
            store.close()
        bundle = load_bundle(tmp / "ues.jsonl")
        creds = [bundle[f"ue:{ue(i)}"] for i in range(args.endpoints)]
        gw_ccm, gw_gcm = load_key(tmp / "gw1.json"), load_key(tmp / "gw2.json")
        insecure, insecure_port = start_server("--insecure", "--db", db)
        secured, secured_port = start_server("--db", db)
        try:
            single_gets(args, insecure_port, secured_port, creds)
            bulk(args, insecure_port, secured_port, gw_ccm, gw_gcm)
            print("\nRSS after the load (peak):", end="")
            for name, proc in (("insecure", insecure), ("secured", secured)):
                cur, peak = rss_mib(proc.pid)
                print(
                    f" {name} SCM-S {cur:.0f} MiB ({peak:.0f} MiB)", end=";" if name == "insecure" else "\n"
                )
        finally:
            for p in (insecure, secured):
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
