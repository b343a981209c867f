"""A secured SCM-S serving a fleet: keys of 100,000 (and 1,000,000) UEs in its store (SPEC D12).

One run, loopback only, two ``msgin5g server`` processes on the same SQLite file (one with
``--insecure``, one secured by the store's keys), measured alternately for ``--rounds`` rounds:

* **single-UE configuration GETs, a random UE per request**: ``--endpoints`` UDP source endpoints
  (one confirmable request outstanding each, NSTART) send GETs, each for a UE drawn at random from
  ``--keys`` UEs, each protected with that UE's own key — so the server meets keys it has not seen
  yet, or dropped from its bounded cache, all the time (its row read, its context derived, its
  replay window claimed in the store). Secured requests are protected before the measurement
  starts (the load generator must not be what is measured); every answer must be a protected 2.04,
  a sample is verified and decoded (inner 2.05, the UE's own UE Service ID). The insecure server
  gets the same random queries. Printed: both rates and their ratio (target ≥ 0.6).
* **memory with 1,000,000 keys** (``--million``): a store with a million UE keys, the secured
  server under the same random-UE load, its resident memory afterwards (target ≤ 200 MB: keys are
  read lazily and at most ``--max-open-contexts`` contexts stay in memory).

    python bench/bench_security_fleet.py [--keys 100000] [--endpoints 64] [--seconds 6] [--rounds 2]
                                         [--million | --no-million]
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
from msgin5g.authz import Identity, Role  # noqa: E402
from msgin5g.coap.aiocoap_tweaks import LeasedSecurityContext, install_process_tweaks  # noqa: E402
from msgin5g.model import imei_urn  # noqa: E402
from msgin5g.security.endpoint import ClientProtection  # noqa: E402
from msgin5g.security.keys import SERVER_SENDER_ID, kid_for  # noqa: E402
from msgin5g.security.storekeys import new_keys, utc_now  # noqa: E402
from msgin5g.store import open_store  # noqa: E402
from procs import start_server  # noqa: E402

BIN = Path(sys.executable).parent
TAC = "35209900"
PATH = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
DOMAIN = "msgin5g.example"
CHUNK = 100_000  # keys per insert transaction


def ue(i: int) -> str:
    return imei_urn(TAC, i)


def provision(db: str, n_keys: int, keep: set[int]) -> dict[int, tuple[bytes, bytes, bytes]]:
    """One document for every UE of the TAC (its UE Service ID names the serial number), and a key
    per UE ``0..n_keys-1``; returns (kid, secret, salt) of the UEs in ``keep`` (the client side)."""
    store = open_store(db)
    kept = {}
    try:
        data = {"msgin5gServerAddress": "coap://msgin5g-server.example", "ueServiceId": "fleet@x"}
        store.import_docs(
            "msgin5g",
            [
                {
                    "valServiceDomain": DOMAIN,
                    "valUeIds": {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "999999"}}]},
                    "ueConfigs": [{"configType": "ON_NETWORK", "configData": json.dumps(data)}],
                }
            ],
        )
        for lo in range(0, n_keys, CHUNK):
            hi = min(n_keys, lo + CHUNK)
            keys = new_keys(Identity(Role.UE, ue(i)) for i in range(lo, hi))
            numbers = store.add_keys(keys, utc_now())
            for i, n, k in zip(range(lo, hi), numbers, keys, strict=True):
                if i in keep:
                    kept[i] = (kid_for(n, k.algorithm), k.secret, k.salt)
    finally:
        store.close()
    return kept


class _Lease:
    """The client's sequence numbers for a fresh key of this run: counted in memory (the key is
    never used again, so nothing needs persisting)."""

    def __init__(self):
        self.mark = 0

    def __call__(self, n: int) -> tuple[int, int]:
        self.mark += n
        return self.mark - n, self.mark


def protect_requests(
    kept: dict, count: int, rng: random.Random, contexts: dict[int, ClientProtection]
) -> list[tuple[int, Message, object]]:
    """``count`` protected GETs, each for a random UE of ``kept`` with that UE's own key (its
    context in ``contexts``, kept across rounds: a key's sequence numbers never repeat)."""
    ues = list(kept)
    out = []
    for _ in range(count):
        i = rng.choice(ues)
        prot = contexts.get(i)
        if prot is None:
            kid, secret, salt = kept[i]
            ctx = LeasedSecurityContext(
                sender_id=kid,
                recipient_id=SERVER_SENDER_ID,
                secret=secret,
                salt=salt,
                algorithm="AES-CCM-16-64-128",
                lease=_Lease(),
            )
            prot = contexts[i] = ClientProtection(ctx)
        outer, binding = prot.protect(Message(code=Code.GET, uri_path=PATH, uri_query=(f"ue-uri={ue(i)}",)))
        out.append((i, outer, (prot, binding)))
    return out


class _Endpoint(asyncio.DatagramProtocol):
    """One source endpoint: sends the next pre-protected request when its answer came (NSTART 1)."""

    def __init__(self):
        self.transport = None
        self.mid = random.randrange(0x10000)
        self.token = b""
        self.future: asyncio.Future | None = None

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
            return
        if self.future is not None and not self.future.done():
            self.future.set_result(m)

    async def one(self, outer: Message, timeout: float) -> Message | None:
        self.mid = (self.mid + 1) & 0xFFFF
        self.token = os.urandom(4)
        outer.mtype, outer.mid, outer.token = CON, self.mid, self.token
        self.future = asyncio.get_running_loop().create_future()
        self.transport.sendto(outer.encode())
        try:
            return await asyncio.wait_for(self.future, timeout)
        except TimeoutError:
            return None


async def secured_gets(port: int, requests: list, n_endpoints: int, seconds: float) -> tuple[LoadResult, int]:
    """Send ``requests`` in order from ``n_endpoints`` endpoints for ``seconds``; (result, verified)."""
    loop = asyncio.get_running_loop()
    eps = []
    for _ in range(n_endpoints):
        _, ep = await loop.create_datagram_endpoint(
            _Endpoint, remote_addr=("127.0.0.1", port), family=socket.AF_INET
        )
        eps.append(ep)
    res = LoadResult()
    it = iter(requests)
    stop_at = time.perf_counter() + seconds
    verified = 0

    async def worker(ep: _Endpoint, k: int) -> None:
        nonlocal verified
        n = 0
        while time.perf_counter() < stop_at:
            item = next(it, None)
            if item is None:
                return
            _i, outer, (prot, binding) = item
            t0 = time.perf_counter()
            res.requests += 1
            m = await ep.one(outer, 5.0)
            if m is None:
                res.timeouts += 1
                continue
            res.answers += 1
            res.latencies.append(time.perf_counter() - t0)
            code = str(m.code) + (" protected" if m.opt.oscore is not None else "")
            res.codes[code] = res.codes.get(code, 0) + 1
            n += 1
            if n % 50 == 1 and m.opt.oscore is not None:  # a sample: the UE's own, readable only by it
                plain = prot.verify(m, binding)
                assert plain.code == Code.CONTENT, plain
                verified += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(ep, k) for k, ep in enumerate(eps)))
    res.seconds = time.perf_counter() - t0
    for ep in eps:
        ep.transport.close()
    return res, verified


async def insecure_gets(port: int, n_endpoints: int, n_keys: int, seconds: float, seed: int) -> LoadResult:
    rng = random.Random(seed)
    async with LoadGenerator("127.0.0.1", port, endpoints=n_endpoints) as gen:
        return await gen.run(lambda _i: (PATH, (f"ue-uri={ue(rng.randrange(n_keys))}",)), seconds)


def measure(args, n_keys: int, tmp: Path, label: str, baseline: bool) -> dict:
    db = f"sqlite:///{tmp / f'fleet-{n_keys}.db'}"
    rng = random.Random(n_keys)
    budget = args.budget  # pre-protected requests per round: more than the server answers in it
    sample = set(rng.sample(range(n_keys), min(n_keys, args.client_keys)))
    t0 = time.perf_counter()
    kept = provision(db, n_keys, sample)
    print(f"{label}: {n_keys:,} UE keys in the store ({time.perf_counter() - t0:.1f} s)", flush=True)
    insecure = insecure_port = None
    if baseline:
        insecure, insecure_port = start_server("--insecure", "--db", db)
    secured, secured_port = start_server("--db", db, "--max-open-contexts", str(args.max_open_contexts))
    rates: dict[str, list[float]] = {"insecure": [], "secured": []}
    last: dict[str, LoadResult] = {}
    verified = 0
    contexts: dict[int, ClientProtection] = {}
    try:
        for r in range(args.rounds):
            if baseline:
                asyncio.run(insecure_gets(insecure_port, args.endpoints, n_keys, 1.0, r))  # warm-up
                res = asyncio.run(insecure_gets(insecure_port, args.endpoints, n_keys, args.seconds, r))
                rates["insecure"].append(res.rate)
                last["insecure"] = res
            reqs = protect_requests(kept, budget, rng, contexts)
            res, v = asyncio.run(secured_gets(secured_port, reqs, args.endpoints, args.seconds))
            if res.requests >= budget:
                print(f"  note: all {budget:,} pre-protected requests were used (raise --budget)")
            rates["secured"].append(res.rate)
            last["secured"] = res
            verified += v
        cur, peak = rss_mib(secured.pid)
    finally:
        for p in (insecure, secured):
            if p is not None:
                p.terminate()
                p.wait(10)
    print(f"  {'':9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'timeouts':>9}  codes")
    mean = {}
    for name, rs in rates.items():
        if not rs:
            continue
        mean[name] = sum(rs) / len(rs)
        r = last[name]
        print(
            f"  {name:9} {mean[name]:9,.0f} {r.percentile(50) * 1e3:8.2f} "
            f"{r.percentile(99) * 1e3:8.2f} {r.timeouts:9d}  {r.codes}"
        )
    assert verified > 0
    out = {"keys": n_keys, "secured_rps": mean["secured"], "rss_mib": cur, "peak_rss_mib": peak}
    if "insecure" in mean:
        out["ratio"] = mean["secured"] / mean["insecure"]
        print(
            f"  ratio secured / insecure = {out['ratio']:.2f}  (target ≥ 0.6); "
            f"{verified} sampled answers verified: each the UE's own 2.05"
        )
    print(
        f"  secured SCM-S memory after the load: RSS {cur:.0f} MiB, peak {peak:.0f} MiB "
        f"(--max-open-contexts {args.max_open_contexts:,}; target ≤ 200 MB)",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000, help="UE keys in the store")
    ap.add_argument("--endpoints", type=int, default=64, help="source endpoints (≥ 32)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=int, default=30_000, help="pre-protected requests per round")
    ap.add_argument("--client-keys", type=int, default=30_000, help="UEs the load generator acts as")
    ap.add_argument("--max-open-contexts", type=int, default=65_536)
    ap.add_argument("--million", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    install_process_tweaks()
    print(
        f"single-UE configuration GETs over UDP, a random UE per request: {args.endpoints} endpoints, "
        f"one CON outstanding each, {args.rounds}×{args.seconds:.0f} s per server"
    )
    with tempfile.TemporaryDirectory(prefix="msgin5g-bench-fleet-") as tmp:
        measure(args, args.keys, Path(tmp), f"{args.keys:,} keys", baseline=True)
        if args.million:
            measure(args, 1_000_000, Path(tmp), "1,000,000 keys", baseline=False)


if __name__ == "__main__":
    main()
