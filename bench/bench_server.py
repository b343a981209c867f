"""SCM-S single-UE configuration GET throughput with 1,000,000 per-UE documents in SQLite.

Load comes from many source endpoints (raw UDP, confirmable GETs, one outstanding per endpoint),
against (a) a bare aiocoap resource with a payload of the same size and (b) the real
``msgin5g server`` process; both measured in this run, alternately, and reported as a ratio.
Also: direct import rate (file → store, and store insert alone) and the server's RSS.

    python bench/bench_server.py [--docs 1000000] [--endpoints 64] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import LoadGenerator, rss_mib  # noqa: E402
from msgin5g.model import imei_urn  # noqa: E402

BIN = Path(sys.executable).parent
TAC = "35209900"
PATH = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")


def write_csv(path: Path, n: int) -> None:
    with path.open("w") as f:
        f.write("ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n")
        for i in range(n):
            f.write(
                f"{imei_urn(TAC, i % 1_000_000)}{'' if i < 1_000_000 else f'-{i}'},"
                f"ue{i}@msgin5g.example,coap://msgin5g-server.example,1024\n"
            )


def start(cmd: list[str], ready: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if ready not in line:
        p.kill()
        raise SystemExit(f"{cmd[0]} did not start: {line!r}")
    return p, line


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(port: int, n_docs: int, endpoints: int, seconds: float, missing_share: float = 0.0):
    rnd = random.Random(1)

    def make(i: int):
        if missing_share and rnd.random() < missing_share:
            return PATH, ("ue-uri=urn:nobody:" + str(i),)
        return PATH, (f"ue-uri={imei_urn(TAC, rnd.randrange(min(n_docs, 1_000_000)))}",)

    async with LoadGenerator("127.0.0.1", port, endpoints=endpoints) as gen:
        await gen.run(make, 1.0)  # warm-up
        return await gen.run(make, seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--endpoints", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="msgin5g-bench-") as tmp:
        tmp = Path(tmp)
        csv = tmp / "fleet.csv"
        write_csv(csv, args.docs)
        db = f"sqlite:///{tmp / 'bench.db'}"
        t0 = time.perf_counter()
        p = subprocess.run(
            [str(BIN / "msgin5g"), "config", "import", str(csv), "--direct", "--db", db],
            capture_output=True,
            text=True,
            check=True,
        )
        total = time.perf_counter() - t0
        m = re.search(r"in ([\d.]+) s \(([\d,]+) docs/s", p.stdout)
        print(f"direct import of {args.docs:,} per-UE documents (CSV → SQLite, one transaction):")
        if m:
            print(f"  {m.group(2)} docs/s from file to store (parsing and validation in a child process)")
        print(f"  {args.docs / total:,.0f} docs/s including process start-up ({total:.1f} s)")

        payload_size = 260  # bytes of a typical per-UE answer
        base = [sys.executable, str(HERE / "baseline_server.py")]
        baselines = {
            # stock aiocoap, and aiocoap with the option-copy speed-up the SCM-S itself installs
            # (msgin5g.coap.aiocoap_tweaks): the second is the like-for-like comparison
            "bare": start([*base, str(free_port()), str(payload_size)], "ready"),
            "bare+speedup": start([*base, str(free_port()), str(payload_size), "--speedups"], "ready"),
        }
        server, line = start(
            [str(BIN / "msgin5g"), "server", "--insecure", "--port", "0", "--db", db], "listening"
        )
        procs = [server, *(p for p, _ in baselines.values())]
        targets = {name: int(ready.split()[1]) for name, (_, ready) in baselines.items()}
        targets["scm-s"] = int(re.search(r":(\d+)/", line).group(1))
        idle_rss, _ = rss_mib(server.pid)
        try:
            rates: dict[str, list[float]] = {name: [] for name in targets}
            results = {}
            for _ in range(args.rounds):
                for name, port in targets.items():
                    r = asyncio.run(measure(port, args.docs, args.endpoints, args.seconds))
                    rates[name].append(r.rate)
                    results[name] = r
            cur, peak = rss_mib(server.pid)
            mean = {name: sum(v) / len(v) for name, v in rates.items()}
            print(
                f"\nsingle-UE configuration GET, {args.endpoints} source endpoints, "
                f"{args.rounds}×{args.seconds:.0f} s each, 1 outstanding CON per endpoint:"
            )
            print(f"  {'':13} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'timeouts':>9}  codes")
            for name, r in results.items():
                print(
                    f"  {name:13} {mean[name]:9,.0f} {r.percentile(50) * 1e3:8.2f} "
                    f"{r.percentile(99) * 1e3:8.2f} {r.timeouts:9d}  {r.codes}"
                )
            s = mean["scm-s"]
            print(
                f"  ratio scm-s / bare aiocoap resource = {s / mean['bare']:.2f}; "
                f"against the same aiocoap with the option-copy speed-up = {s / mean['bare+speedup']:.2f}"
                "  (target ≥ 0.8, goal 1.0)"
            )
            print(
                f"  SCM-S RSS with {args.docs:,} documents: {idle_rss:.0f} MiB idle after start, "
                f"{cur:.0f} MiB after the load, {peak:.0f} MiB peak (target ≤ 150 MB);\n"
                f"  the growth under load is the duplicate-detection cache, one entry per answered CON "
                f"for EXCHANGE_LIFETIME (247 s)"
            )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
