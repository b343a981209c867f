"""Store benchmark: bulk import of per-UE documents and the lookups behind UE and bulk GETs.

SPEC D5 lets one document serve a whole IMEI range, but provisioning may still create one document
per UE; this measures whether the stores cope (SPEC D4 single-UE lookups, SPEC D6 bulk lookups):

- import rate of N per-UE documents through ``import_docs`` (one transaction; document generation
  included, as a provisioning run would pay it),
- single-UE ``candidates()`` lookups per second for random UEs,
- ``candidates_many()`` for 1,000 random UEs (one bulk GET's worth),

for SQLite (a file in a temporary directory) and PostgreSQL (a scratch database, dropped after;
skipped with a message when the server is unreachable). Prints a table and the peak RSS.

    python bench/bench_store.py [--docs N] [--pg-docs N] [--pg-admin URL]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from msgin5g.model import UeIdentity, imei_urn
from msgin5g.store import Store, open_store

SERVICE = "msgin5g-bench"
DOMAIN = "msgin5g.example"
TACS = ["35209900", "35209901", "35209902", "35209903", "35209904"]
CONFIG = '{{"msgin5gServerAddress":"coap://msg.example","ueServiceId":"ue{i}@msgin5g.example"}}'


def ue_of(i: int) -> tuple[str, int]:
    """The i-th provisioned UE: TAC and serial number (up to 5 TACs of a million serials each)."""
    return TACS[i // 1_000_000], i % 1_000_000


def per_ue_docs(n: int) -> Iterator[dict]:
    """n small per-UE UeConfigDocs (TS 24.546 C.3.1.3; SPEC D2 ON_NETWORK configData)."""
    for i in range(n):
        yield {
            "valServiceDomain": DOMAIN,
            "valUeIds": {"uris": [imei_urn(*ue_of(i))]},
            "ueConfigs": [{"configType": "ON_NETWORK", "configData": CONFIG.format(i=i)}],
        }


def shared_docs() -> list[dict]:
    """A few range, TAC-wide and domain-wide documents so lookups exercise every index path."""
    docs: list[dict] = [{"valServiceDomain": DOMAIN}]
    for tac in TACS:
        docs.append({"valServiceDomain": DOMAIN, "valUeIds": {"imeiRanges": [{"tac": tac}]}})
        for low in range(0, 1_000_000, 100_000):
            rng = {"tac": tac, "snrRange": {"low": str(low), "high": str(low + 99_999)}}
            docs.append({"valServiceDomain": DOMAIN, "valUeIds": {"imeiRanges": [rng]}})
    return docs


@dataclass
class Result:
    backend: str
    docs: int
    import_s: float
    lookups_per_s: float
    bulk_ms: float
    candidates_per_ue: float
    size: str


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(backend: str, store: Store, n: int, lookups: int, bulk: int, size: Callable[[], str]) -> Result:
    print(f"[{backend}] importing {n:,} per-UE documents ...", flush=True)
    import_s, _ = timed(lambda: store.import_docs(SERVICE, per_ue_docs(n)))
    store.import_docs(SERVICE, shared_docs())
    print(f"[{backend}] {n / import_s:,.0f} docs/s; lookups ...", flush=True)

    rnd = random.Random(5683)
    ues = [UeIdentity.from_query(uri=imei_urn(*ue_of(rnd.randrange(n)))) for _ in range(lookups)]
    found = 0
    deadline = time.perf_counter() + 20
    t0 = time.perf_counter()
    done = 0
    for ue in ues:
        found += len(store.candidates(SERVICE, ue))
        done += 1
        if time.perf_counter() > deadline:
            break
    lookups_per_s = done / (time.perf_counter() - t0)

    rounds = []
    for _ in range(5):
        batch = [UeIdentity.from_query(uri=imei_urn(*ue_of(rnd.randrange(n)))) for _ in range(bulk)]
        secs, answer = timed(lambda b=batch: store.candidates_many(SERVICE, b))
        rounds.append(secs)
        assert len(answer) == bulk
    return Result(
        backend, n, import_s, lookups_per_s, statistics.median(rounds) * 1000, found / max(done, 1), size()
    )


def bench_sqlite(n: int, lookups: int, bulk: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="msgin5g-bench-") as tmp:
        path = os.path.join(tmp, "bench.db")
        store = open_store(f"sqlite:///{path}")
        try:

            def size() -> str:
                total = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
                return f"{total / 2**20:,.0f} MiB"

            return run("sqlite", store, n, lookups, bulk, size)
        finally:
            store.close()


def bench_postgres(admin_url: str, n: int, lookups: int, bulk: int) -> Result | None:
    import psycopg

    dbname = f"msgin5g_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{dbname}"')
    except psycopg.OperationalError as exc:
        print(f"[postgres] skipped: not reachable at {admin_url}: {str(exc).strip()}", flush=True)
        return None
    url = f"{admin_url.rpartition('/')[0]}/{dbname}"
    try:
        store = open_store(url)
        try:

            def size() -> str:
                with psycopg.connect(url) as conn:
                    (total,) = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                return f"{total / 2**20:,.0f} MiB"

            return run("postgres", store, n, lookups, bulk, size)
        finally:
            store.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--docs", type=int, help="per-UE documents to import (default 1,000,000 SQLite / 200,000 PG)"
    )
    ap.add_argument(
        "--pg-docs", type=int, help="per-UE documents for PostgreSQL (default: --docs or 200,000)"
    )
    ap.add_argument("--lookups", type=int, default=20_000, help="single-UE lookups (at most 20 s)")
    ap.add_argument("--bulk", type=int, default=1_000, help="UEs per candidates_many call")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args(argv)
    n_sqlite = args.docs or 1_000_000
    n_pg = args.pg_docs or args.docs or 200_000
    if max(n_sqlite, n_pg) > 1_000_000 * len(TACS):
        ap.error(f"at most {1_000_000 * len(TACS):,} documents")

    results = [bench_sqlite(n_sqlite, args.lookups, args.bulk)]
    if not args.no_postgres:
        pg = bench_postgres(args.pg_admin, n_pg, args.lookups, args.bulk)
        if pg is not None:
            results.append(pg)

    print()
    head = (
        "backend",
        "docs",
        "import s",
        "import docs/s",
        "lookups/s",
        f"bulk {args.bulk} ms",
        "cand/UE",
        "size",
    )
    rows = [
        (
            r.backend,
            f"{r.docs:,}",
            f"{r.import_s:.1f}",
            f"{r.docs / r.import_s:,.0f}",
            f"{r.lookups_per_s:,.0f}",
            f"{r.bulk_ms:.1f}",
            f"{r.candidates_per_ue:.1f}",
            r.size,
        )
        for r in results
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\npeak RSS: {peak_rss_mib():,.0f} MiB (python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
