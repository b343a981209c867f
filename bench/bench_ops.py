"""SCM-S single-UE GET rate with ``--http`` serving metrics, as a ratio to the same server without
it, measured in one run (SPEC D15; target ≥ 0.95).

Two ``msgin5g server`` processes on the same SQLite store (per-UE documents, imported directly);
the load of bench_server.py (raw UDP, confirmable GETs, one outstanding per source endpoint) goes
to each in turn, alternating over several rounds (ABBA order); while the ``--http`` one is loaded, /metrics is
scraped once a second, as Prometheus would.

    python bench/bench_ops.py [--docs 100000] [--endpoints 64] [--seconds 4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_server import BIN, measure, write_csv  # noqa: E402
from procs import cpu_seconds  # noqa: E402


class Scraper(threading.Thread):
    """GET /metrics once a second; keeps how long each scrape took and how large it was."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.active = threading.Event()
        self.stop = threading.Event()
        self.times: list[float] = []
        self.size = 0

    def run(self) -> None:
        while not self.stop.is_set():
            if self.active.is_set():
                t0 = time.perf_counter()
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.size = len(r.read())
                self.times.append(time.perf_counter() - t0)
            self.stop.wait(1.0)


def start_server(db: str, *extra: str) -> tuple[subprocess.Popen, int, str | None]:
    p = subprocess.Popen(
        [str(BIN / "msgin5g"), "server", "--insecure", "--port", "0", "--db", db, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port, metrics = None, None
    for _ in range(6):
        line = p.stdout.readline()
        if m := re.match(r"listening coap://127\.0\.0\.1:(\d+)/", line):
            port = int(m.group(1))
        if m := re.match(r"metrics (\S+/metrics)", line):
            metrics = m.group(1)
        if port and (metrics or not extra):
            return p, port, metrics
    p.kill()
    raise SystemExit(f"server did not start: {extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--endpoints", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=6)
    args, _ = ap.parse_known_args()

    with tempfile.TemporaryDirectory(prefix="msgin5g-bench-ops-") as tmp:
        tmp = Path(tmp)
        csv = tmp / "fleet.csv"
        write_csv(csv, args.docs)
        db = f"sqlite:///{tmp / 'ops.db'}"
        subprocess.run(
            [str(BIN / "msgin5g"), "config", "import", str(csv), "--direct", "--db", db, "-q"], check=True
        )
        plain, plain_port, _ = start_server(db)
        http, http_port, metrics_url = start_server(db, "--http", "127.0.0.1:0")
        scraper = Scraper(metrics_url)
        scraper.start()
        rates: dict[str, list[float]] = {"without --http": [], "with --http": []}
        # CPU per answered request: what the machine's other load cannot blur the way it blurs rates
        cpu: dict[str, list[float]] = {"without --http": [], "with --http": []}
        try:
            for i in range(args.rounds):
                # ABBA order: whichever goes second in a round is not always the same server
                order = ("without --http", "with --http") if i % 2 == 0 else ("with --http", "without --http")
                for name in order:
                    if name == "with --http":
                        scraper.active.set()
                    port, pid = (http_port, http.pid) if name == "with --http" else (plain_port, plain.pid)
                    c0 = cpu_seconds(pid)
                    r = asyncio.run(measure(port, args.docs, args.endpoints, args.seconds))
                    scraper.active.clear()
                    rates[name].append(r.rate)
                    cpu[name].append((cpu_seconds(pid) - c0) / max(1, r.answers))
        finally:
            scraper.stop.set()
            for p in (plain, http):
                p.terminate()
                p.wait(10)
        mean = {k: sum(v) / len(v) for k, v in rates.items()}
        print(
            f"SCM-S single-UE GET, {args.docs:,} per-UE documents, {args.endpoints} source endpoints, "
            f"{args.rounds}×{args.seconds:.0f} s each, alternating:"
        )
        for k, v in rates.items():
            print(f"  {k:15} {mean[k]:9,.0f} req/s  (rounds: {', '.join(f'{x:,.0f}' for x in v)})")
        if scraper.times:
            t = sorted(scraper.times)
            print(
                f"  /metrics scraped {len(t)} times, {scraper.size:,} bytes, "
                f"median {t[len(t) // 2] * 1e3:.1f} ms, max {t[-1] * 1e3:.1f} ms"
            )
        ratio = mean["with --http"] / mean["without --http"]
        per = {k: 1e6 * sum(v) / len(v) for k, v in cpu.items()}
        print(
            f"  server CPU per answered GET: without {per['without --http']:.0f} µs, "
            f"with {per['with --http']:.0f} µs (includes the warm-up second and the scrapes)"
        )
        print(f"  ratio with / without --http = {ratio:.3f} by rate (target ≥ 0.95); ", end="")
        print(f"{per['without --http'] / per['with --http']:.3f} by server CPU per request")


if __name__ == "__main__":
    main()
