"""What the coaps transports of TS 24.546 C.1.1 cost: single-UE configuration GETs over coaps (DTLS
1.2, PSK), coaps+tcp and coaps+ws (mutual TLS) as ratios to plain coap, in one run.

Loopback only. Two ``msgin5g server`` processes on one SQLite file: one ``--insecure`` (the plain
coap baseline; each UE claims its lab identity) and one secured with ``--dtls-port``,
``--tls-port`` and ``--wss-port``. The same client drives every transport: ``--ues`` UEs, each its
own aiocoap client context with its own credentials (a PSK file from ``keys add --psk``, or a
client certificate from ``keys cert``), one request outstanding per UE, for ``--seconds`` after a
warm-up that includes the handshakes. Every answer must be a 2.05 holding the UE's own UE Service
ID. Printed: requests per second per transport, the ratio to plain coap, and the secured
server's RSS (its DTLS sessions and TLS connections held).

    python bench/bench_coaps.py [--ues 16] [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import aiocoap  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402
from aiocoap.optiontypes import OpaqueOption  # noqa: E402

from loadgen import rss_mib  # noqa: E402
from msgin5g.authz import LAB_IDENTITY_OPTION  # noqa: E402
from msgin5g.coap import aiocoap_tweaks  # noqa: E402
from msgin5g.model import imei_urn  # noqa: E402
from msgin5g.security.dtls import load_psk_credentials  # noqa: E402
from msgin5g.security.tls import client_context  # noqa: E402
from msgin5g.store import open_store  # noqa: E402
from procs import free_port, start_server  # noqa: E402

BIN = Path(sys.executable).parent
TAC = "35209900"
PATH = "/su-uc/v1/val-services/msgin5g/ue-configurations"


def ue(i: int) -> str:
    return imei_urn(TAC, i)


def msgin5g(*args: str) -> None:
    subprocess.run([str(BIN / "msgin5g"), *args], check=True, capture_output=True)


def provision(tmp: Path, db: str, n: int) -> None:
    store = open_store(db)
    try:
        docs = []
        for i in range(n):
            data = {"msgin5gServerAddress": "coap://msgin5g-server.example", "ueServiceId": f"ue{i}@x"}
            docs.append(
                {
                    "valServiceDomain": "msgin5g.example",
                    "valUeIds": {"uris": [ue(i)]},
                    "ueConfigs": [{"configType": "ON_NETWORK", "configData": json.dumps(data)}],
                }
            )
        store.import_docs("msgin5g", docs)
    finally:
        store.close()
    for i in range(n):
        msgin5g("keys", "add", f"ue:{ue(i)}", "--db", db, "--out", str(tmp / f"ue{i}.psk"), "--psk")
        msgin5g("keys", "cert", f"ue:{ue(i)}", "--db", db, "--out", str(tmp / f"ue{i}-tls"))


async def client_for(scheme: str, i: int, tmp: Path) -> aiocoap.Context:
    if scheme == "coaps":
        ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
        ctx.client_credentials = load_psk_credentials(tmp / f"ue{i}.psk").credentials_map()
        return ctx
    transport = {"coap": "udp6", "coaps+tcp": "tlsclient", "coaps+ws": "ws"}[scheme]
    ctx = await aiocoap.Context.create_client_context(transports=[transport])
    if scheme != "coap":
        d = tmp / f"ue{i}-tls"
        ssl_ctx = client_context((d / "ca.pem").read_text(), str(d / "cert.pem"), str(d / "key.pem"))
        aiocoap_tweaks.present_client_certificate(ctx, ssl_ctx)
    return ctx


async def drive(scheme: str, root: str, n: int, seconds: float, tmp: Path) -> float:
    """Requests per second of ``n`` UEs in closed loop over ``scheme``; every answer checked."""
    contexts = [await client_for(scheme, i, tmp) for i in range(n)]
    stop = False
    counts = [0] * n

    async def one(i: int) -> None:
        m = aiocoap.Message(code=Code.GET, uri=f"{root}{PATH}?ue-uri={ue(i)}")
        if scheme == "coap":
            m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, f"ue:{ue(i)}".encode()))
        r = await asyncio.wait_for(contexts[i].request(m).response, 30)
        if r.code != Code.CONTENT or f"ue{i}@x".encode() not in r.payload:
            raise SystemExit(f"{scheme}: UE {i} got {r.code} {r.payload[:80]!r}")

    async def loop(i: int) -> None:
        while not stop:
            await one(i)
            counts[i] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(n)))  # warm-up: handshakes, first contexts
        tasks = [asyncio.ensure_future(loop(i)) for i in range(n)]
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        stop = True
        done = sum(counts)
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        return done / elapsed
    finally:
        for c in contexts:
            await c.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ues", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args, _ = ap.parse_known_args()
    aiocoap_tweaks.install_process_tweaks()
    with tempfile.TemporaryDirectory(prefix="msgin5g-bench-coaps-") as tmp:
        tmp = Path(tmp)
        db = f"sqlite:///{tmp}/scm.db"
        provision(tmp, db, args.ues)
        tls, wss, dtls = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM), free_port()
        plain, plain_port = start_server("--insecure", "--db", db, "--no-tcp")
        secured, _ = start_server(
            "--db", db, "--no-tcp", "--tls-port", str(tls), "--wss-port", str(wss), "--dtls-port", str(dtls)
        )
        roots = {
            "coap": f"coap://127.0.0.1:{plain_port}",
            "coaps": f"coaps://127.0.0.1:{dtls}",
            "coaps+tcp": f"coaps+tcp://127.0.0.1:{tls}",
            "coaps+ws": f"coaps+ws://127.0.0.1:{wss}",
        }
        rates: dict[str, list[float]] = {s: [] for s in roots}
        try:
            for _ in range(args.rounds):
                for scheme, root in roots.items():
                    rates[scheme].append(asyncio.run(drive(scheme, root, args.ues, args.seconds, tmp)))
            rss = rss_mib(secured.pid)
        finally:
            for p in (plain, secured):
                p.terminate()
                p.wait(10)
    best = {s: max(r) for s, r in rates.items()}
    print(f"single-UE GETs, {args.ues} UEs, one request outstanding each, best of {args.rounds} rounds")
    print(f"{'transport':<11} {'req/s':>8} {'vs coap':>8}")
    for scheme, rate in best.items():
        print(f"{scheme:<11} {rate:>8.0f} {rate / best['coap']:>8.2f}")
    print(f"secured server RSS: {rss[0]:.0f} MiB (peak {rss[1]:.0f} MiB)")


if __name__ == "__main__":
    main()
