"""The whole demo at scale: ``msgin5g demo --ues N`` with bulk configuration and with ``--no-bulk``.

Each configuration runs the real command (every actor its own process, the counting wire on every
leg) with ``--report`` into a scratch directory, then reads its ``summary.json``: wall time of the
command, time of the UE phase, the gateway path's Uu messages and bytes and latency, and the peak
resident memory (VmHWM) of every process. Bulk is set against ``--no-bulk`` measured in the same
run — the baseline is per-UE configuration through the same gateway, on the same wire. Secured (the
default, SPEC D12) is also set against ``--insecure`` (bulk over UDP, target ≤ 1.5× the wall
time). Every UE's outcome is checked by the demo itself; a run that is not OK fails the benchmark.

Usage: ``python bench/bench_demo.py [--ues 10000] [--transports udp tcp] [--json]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")
PROCESSES = ["server", "wire", "relay", "gateway", "observer", "demo"]


def run_once(ues: int, transport: str, bulk: bool, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        report = Path(tmp) / "report"
        args = [
            MSGIN5G,
            "demo",
            "--ues",
            str(ues),
            "--transport",
            transport,
            "--bulk" if bulk else "--no-bulk",
        ]
        args += ["--report", str(report), *extra]
        t0 = time.perf_counter()
        p = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"demo failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
        summary = json.loads((report / "summary.json").read_text())
    gateway = next(r for r in summary["paths"] if r["path"] == "gateway")
    return {
        "transport": transport,
        "bulk": bulk,
        "wall_s": wall,
        "ue_phase_s": summary["times_s"]["ues"],
        "gateway": gateway,
        "rss_kib": {p["name"]: p["peak_rss_kib"] for p in summary["processes"]},
        "verdict": summary["verdict"]["text"],
    }


def mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / 1024:.0f}"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ues", type=int, default=10_000)
    ap.add_argument("--transports", nargs="+", default=["udp", "tcp"], choices=["udp", "tcp"])
    ap.add_argument("--json", action="store_true", help="print only the JSON report")
    ap.add_argument("extra", nargs="*", help="further demo options, after --")
    args = ap.parse_args(argv)
    runs = [run_once(args.ues, t, bulk, args.extra) for t in args.transports for bulk in (True, False)]
    secured = next((r for r in runs if r["transport"] == "udp" and r["bulk"]), None)
    insecure = None
    if secured is not None and "--insecure" not in args.extra:
        insecure = run_once(args.ues, "udp", True, [*args.extra, "--insecure"])
    if args.json:
        print(json.dumps({"runs": runs, "insecure": insecure}, indent=1))
        return 0
    print(f"msgin5g demo --ues {args.ues:,}: every UE checked against its provisioning in every run\n")
    head = (
        f"{'gateway':<16} {'wall s':>7} {'UEs s':>6} {'gw p50 ms':>9} {'gw p95 ms':>9} {'Uu msgs':>8} "
        f"{'Uu bytes':>10} | peak RSS MiB: " + " ".join(f"{n:>8}" for n in PROCESSES)
    )
    print(head)
    print("-" * len(head))
    for r in runs:
        g = r["gateway"]
        name = f"{'bulk' if r['bulk'] else 'no bulk'}, {r['transport'].upper()}"
        print(
            f"{name:<16} {r['wall_s']:7.1f} {r['ue_phase_s']:6.1f} {ms(g['p50_ms']):>9} {ms(g['p95_ms']):>9} "
            f"{g['uu_messages']:8,} {g['uu_bytes']:10,} |               "
            + " ".join(f"{mib(r['rss_kib'].get(n)):>8}" for n in PROCESSES)
        )
    print()
    for t in args.transports:
        bulk, single = (
            next(r for r in runs if r["transport"] == t and r["bulk"] is b) for b in (True, False)
        )
        b, s = bulk["gateway"], single["gateway"]
        print(
            f"{t.upper()}: bulk sends {b['uu_messages'] / s['uu_messages']:.3f}× the Uu messages and "
            f"{b['uu_bytes'] / s['uu_bytes']:.2f}× the Uu bytes of --no-bulk for {b['ues']:,} gateway UEs; "
            f"wall time {bulk['wall_s'] / single['wall_s']:.2f}×"
        )
    if insecure is not None:
        print(
            f"secured vs --insecure (bulk, UDP): {secured['wall_s']:.1f} s vs {insecure['wall_s']:.1f} s "
            f"wall = {secured['wall_s'] / insecure['wall_s']:.2f}× (target ≤ 1.5×); UE phase "
            f"{secured['ue_phase_s']:.1f} s vs {insecure['ue_phase_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
