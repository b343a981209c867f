"""Scale-out of the SCM-S (SPEC D14), measured side by side in one run.

* single-UE GET rate (100,000 per-UE documents, a random UE per request, raw CON load from many
  source endpoints): ``--workers 1`` vs ``--workers 2`` on SQLite; PostgreSQL vs SQLite with one
  worker; two nodes (two processes on their own ports) on one PostgreSQL database, load split
  across them; against a bare aiocoap resource and libcoap's ``coap-server-notls`` in the same run;
* Observe across nodes: an observer at node A, a PUT through node B, the time from B's 2.04 to A's
  notification (p50/p99), on PostgreSQL (LISTEN/NOTIFY) and on one SQLite file (polled feed);
* RSS of every worker after the load.

The load generator runs on the same two cores as the servers, so ratios above one process are
bounded by what is left for the servers; the figures say so rather than hide it.

    python bench/bench_scale.py [--docs 100000] [--endpoints 32] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiocoap
import cbor2
import psycopg
from aiocoap import Code, Message

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_server import PATH, TAC, free_port, measure, write_csv  # noqa: E402
from loadgen import LoadGenerator, rss_mib  # noqa: E402
from msgin5g.model import imei_urn  # noqa: E402
from procs import start_server, stop  # noqa: E402

BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("MSGIN5G_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def worker_rss(p: subprocess.Popen) -> list[float]:
    out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return [rss_mib(int(pid))[0] for pid in out] or [rss_mib(p.pid)[0]]


async def split_load(ports: list[int], n_docs: int, endpoints: int, seconds: float) -> float:
    """Combined rate of the same load spread over several servers (one generator per server)."""
    rnd = random.Random(2)

    def make(i: int):
        return PATH, (f"ue-uri={imei_urn(TAC, rnd.randrange(n_docs))}",)

    async def one(port: int):
        async with LoadGenerator("127.0.0.1", port, endpoints=endpoints // len(ports)) as gen:
            await gen.run(make, 1.0)
            return await gen.run(make, seconds)

    results = await asyncio.gather(*(one(p) for p in ports))
    return sum(r.rate for r in results)


async def notify_latency(port_a: int, port_b: int, rounds: int) -> list[float]:
    """Seconds from node B's 2.04 to node A's notification, ``rounds`` times."""
    ctx = await aiocoap.Context.create_client_context()
    base = "/".join(PATH)
    try:
        doc = {"valServiceDomain": "msgin5g.example", "valUeIds": {"uris": ["urn:bench:observed"]}}
        made = await ctx.request(
            Message(
                code=Code.POST,
                uri=f"coap://127.0.0.1:{port_a}/{base}",
                payload=cbor2.dumps(doc),
                content_format=60,
            )
        ).response
        doc_id = made.opt.location_path[-1]
        req = ctx.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{port_a}/{base}/{doc_id}", observe=0))
        await req.response
        it = req.observation.__aiter__()
        out = []
        for i in range(rounds):
            doc["configName"] = f"round {i}"
            put = Message(
                code=Code.PUT,
                uri=f"coap://127.0.0.1:{port_b}/{base}/{doc_id}",
                payload=cbor2.dumps(doc),
                content_format=60,
            )
            await ctx.request(put).response
            t0 = time.perf_counter()
            await asyncio.wait_for(it.__anext__(), 10)
            out.append(time.perf_counter() - t0)
        req.observation.cancel()
        return out
    finally:
        await ctx.shutdown()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--endpoints", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--notify-rounds", type=int, default=50)
    args = ap.parse_args()
    rate = lambda port: asyncio.run(measure(port, args.docs, args.endpoints, args.seconds)).rate  # noqa: E731

    pg_db = f"msgin5g_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{pg_db}"')
    pg_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_db
    try:
        with tempfile.TemporaryDirectory(prefix="msgin5g-bench-scale-") as tmp:
            tmp = Path(tmp)
            csv = tmp / "fleet.csv"
            write_csv(csv, args.docs)
            sqlite = f"sqlite:///{tmp / 'scale.db'}"
            for db in (sqlite, pg_url):
                subprocess.run(
                    [str(BIN / "msgin5g"), "config", "import", str(csv), "--direct", "--db", db],
                    check=True,
                    capture_output=True,
                )
            rows: dict[str, float] = {}
            rss: dict[str, list[float]] = {}

            bare = subprocess.Popen(
                [sys.executable, str(HERE / "baseline_server.py"), str(free_port()), "260"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            bare_port = int(bare.stdout.readline().split()[1])
            rows["bare aiocoap resource"] = rate(bare_port)
            stop(bare)
            if shutil.which("coap-server-notls"):
                port = free_port()
                lib = subprocess.Popen(
                    ["coap-server-notls", "-A", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(0.5)
                rows["libcoap coap-server-notls"] = asyncio.run(_libcoap_rate(port, args))
                stop(lib)

            for label, db, extra in (
                ("SCM-S SQLite, --workers 1", sqlite, ()),
                ("SCM-S SQLite, --workers 2", sqlite, ("--workers", "2")),
                ("SCM-S PostgreSQL, --workers 1", pg_url, ()),
                ("SCM-S PostgreSQL, --workers 2", pg_url, ("--workers", "2")),
            ):
                p, port = start_server("--insecure", "--db", db, *extra)
                try:
                    rows[label] = rate(port)
                    rss[label] = worker_rss(p)
                finally:
                    stop(p)

            a, pa = start_server("--insecure", "--db", pg_url)
            b, pb = start_server("--insecure", "--db", pg_url)
            try:
                rows["two nodes on one PostgreSQL (combined)"] = asyncio.run(
                    split_load([pa, pb], args.docs, args.endpoints, args.seconds)
                )
                pg_lat = asyncio.run(notify_latency(pa, pb, args.notify_rounds))
            finally:
                stop(a)
                stop(b)
            a, pa = start_server("--insecure", "--db", sqlite)
            b, pb = start_server("--insecure", "--db", sqlite)
            try:
                sq_lat = asyncio.run(notify_latency(pa, pb, args.notify_rounds))
            finally:
                stop(a)
                stop(b)

        one = rows["SCM-S SQLite, --workers 1"]
        print(
            f"single-UE GET, {args.docs:,} per-UE documents, {args.endpoints} source endpoints, "
            f"{args.seconds:.0f} s each (load generator on the same 2 cores):"
        )
        for label, value in rows.items():
            print(f"  {label:42} {value:9,.0f} req/s   {value / one:5.2f}× SQLite 1 worker")
        print(
            f"  --workers 2 / --workers 1 (SQLite): "
            f"{rows['SCM-S SQLite, --workers 2'] / one:.2f}  (target ≥ 1.7)"
        )
        print(
            f"  PostgreSQL / SQLite, one worker:    "
            f"{rows['SCM-S PostgreSQL, --workers 1'] / one:.2f}  (target ≥ 0.9)"
        )
        for label, values in rss.items():
            print(f"  RSS after the load, {label}: " + ", ".join(f"{v:.0f} MiB" for v in values))
        for name, lat in (("PostgreSQL LISTEN/NOTIFY", pg_lat), ("SQLite polled feed", sq_lat)):
            print(
                f"Observe across nodes ({name}), {len(lat)} PUTs at B: notification at A "
                f"p50 {pct(lat, 50) * 1e3:.1f} ms, p99 {pct(lat, 99) * 1e3:.1f} ms (target ≤ 200 ms)"
            )
        print(json.dumps({"rates": rows}, indent=None))
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')


async def _libcoap_rate(port: int, args) -> float:
    """libcoap's example server answering GET / (its index text) — the C baseline."""
    async with LoadGenerator("127.0.0.1", port, endpoints=args.endpoints) as gen:
        await gen.run(lambda i: ((), ()), 1.0)
        return (await gen.run(lambda i: ((), ()), args.seconds)).rate


if __name__ == "__main__":
    main()
