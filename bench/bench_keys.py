"""Key provisioning for fleets (SPEC D12): ``msgin5g keys import`` of N identities into a fresh store
(100,000 and 1,000,000 by default).

Runs the real command line (one process, as an operator would) on a fresh SQLite file — and, with
``--postgres URL``, on a fresh PostgreSQL database too — and reports the wall time and how many
files the server and client sides left (targets: 100,000 identities ≤ 30 s, goal ≤ 10 s, fewer
than 50 files; 1,000,000 ≤ 5 min). Then it checks the bundle: one line per identity, each a
distinct key. The same for a Gateway UE's state database (``--gateway-state``, its constrained
UEs' keys).

    python bench/bench_keys.py [--identities 100000 1000000] [--postgres postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
MSGIN5G = str(BIN / "msgin5g")


def files_under(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def run(db: str, n: int, tmp: Path, where: str = "--db") -> tuple[float, int]:
    ids = tmp / "ids.csv"
    with open(ids, "w") as f:
        f.write("identity\n")
        f.write("admin:ops\n")
        f.writelines(f"ue:urn:gsma:imei:35209900{i:06d}0\n" for i in range(n - 2))
        f.write("gateway:gw1\n")
    bundle = tmp / "fleet.jsonl"
    t0 = time.perf_counter()
    p = subprocess.run(
        [MSGIN5G, "keys", "import", str(ids), where, db, "--out", str(bundle)], capture_output=True
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"keys import failed: {p.stderr.decode()}")
    kids = set()
    with open(bundle) as f:
        for line in f:
            kids.add(json.loads(line)["kid"])
    assert len(kids) == n, (len(kids), n)
    return seconds, files_under(tmp) - 1  # the CSV is the operator's input, not a product


TARGET_S = {100_000: 30.0, 1_000_000: 300.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--postgres", default=None, help="admin URL: a scratch database is created and dropped")
    args = ap.parse_args()
    rows = []
    for n in args.identities:
        with tempfile.TemporaryDirectory(prefix="msgin5g-bench-keys-") as tmp:
            seconds, files = run(f"sqlite:///{tmp}/scm.db", n, Path(tmp))
            rows.append(("SQLite", n, seconds, files))
        with tempfile.TemporaryDirectory(prefix="msgin5g-bench-keys-") as tmp:
            seconds, files = run(f"{tmp}/gateway-state.db", n, Path(tmp), "--gateway-state")
            rows.append(("gateway", n, seconds, files))
        if args.postgres:
            import psycopg

            name = f"msgin5g_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            try:
                with tempfile.TemporaryDirectory(prefix="msgin5g-bench-keys-") as tmp:
                    url = args.postgres.rpartition("/")[0] + "/" + name
                    seconds, files = run(url, n, Path(tmp))
                    rows.append(("PostgreSQL", n, seconds, files))
            finally:
                with psycopg.connect(args.postgres, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("keys import (targets: 100,000 ≤ 30 s, goal ≤ 10 s; 1,000,000 ≤ 5 min; < 50 files)")
    for store, n, seconds, files in rows:
        target = TARGET_S.get(n, 30.0 * n / 100_000)
        verdict = "ok" if seconds <= target and files < 50 else "MISSED"
        print(f"  {store:<10} {n:>9,} {seconds:6.1f} s  {files:3d} files (database, bundle)  {verdict}")


if __name__ == "__main__":
    main()
