"""Lossy radio links: ``msgin5g demo`` with ``--loss`` on every PC5, MSGin5G-6 and Uu leg (SPEC D13).

Two tables, each run being the real command (every actor its own process, secured with OSCORE,
the counting, seeded lossy wire on every leg) with ``--report`` into a scratch directory:

1. **Paths under loss**: ``--ues N --loss 0.2`` with the relay in layer-3 and in layer-2 mode,
   and ``--loss 0.3`` (bulk over UDP): wall time of the command, UEs correct, and the
   configuration latency p50/p95/p99 of every path (relay, gateway, direct). Targets of the
   lossy-links work: every UE correct; at 0.2 wall ≤ 60 s and gateway p99 ≤ 30 s (goal ≤ 30 s
   wall); at 0.3 ≤ 120 s.
2. **Uu messages per configured UE** on the gateway path at loss 0, 0.2 and 0.3, bulk against
   per-UE (``--no-bulk``), over UDP and TCP (a TCP leg loses nothing: TCP makes good its own
   losses, so there only the PC5/MSGin5G-6 and the other Uu legs lose).

Each path run is made twice: with the RFC 7252 defaults the UEs use (ACK_TIMEOUT 2 s; SPEC D13)
and the relays' default link table (8 PC5 links each, SPEC D8; ``--relays auto``: enough Relay UEs
for every remote UE to have its link at once, 25 for 200 remote UEs) — **rfc** — and with the UEs'
ACK_TIMEOUT set for the emulated link (0.5 s, RFC 7252 §4.8.1 allows it) and link tables of 64
(so 4 Relay UEs for 200) — **tuned** (``--profile rfc|tuned|both``). ``--profile one-relay`` runs
the defaults with a single Relay UE of 8 links for the 200 remote UEs (the demo before
``--relays``). The Uu table uses ``--uu-ues`` UEs (default ``--ues``) with the rfc profile.

The issue's third figure — bulk over UDP at no loss with Q-Block2 against per-UE, datagrams and
bytes — is ``bench/bench_qblock.py`` (the message layer's Q-Block2 client against the SCM-S); the
Uu table here shows what the gateway's own Uu leg does at loss 0.

A run that does not finish within ``--timeout`` is stopped (SIGTERM: the demo stops its
children) and reported as such; a run in which some UE got a wrong answer is reported with its
count. The benchmark exits 1 if any run was not all correct — these are the figures to improve.

Usage: ``python bench/bench_loss.py [--ues 1000] [--uu-ues N] [--timeout 900] [--part paths|uu|all]
[--profile rfc|tuned|one-relay|both] [--json]``
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")
PATHS = ("relay", "gateway", "direct")
#: demo options of the profiles (see the module docstring)
PROFILES = {
    "rfc": (),
    "tuned": ("--ue-ack-timeout", "0.5", "--relay-links", "64"),
    "one-relay": ("--relays", "1"),
}


def run_demo(
    ues: int, loss: float, *, relay_mode="l2", bulk=True, transport="udp", profile="rfc", timeout=900.0
) -> dict:
    """One demo run; its settings, wall time, exit status and (if it wrote one) its summary."""
    settings = {"ues": ues, "loss": loss, "relay_mode": relay_mode, "bulk": bulk, "transport": transport}
    settings["profile"] = profile
    with tempfile.TemporaryDirectory(prefix="bench-loss-") as tmp:
        report = Path(tmp) / "report"
        args = [MSGIN5G, "demo", "--ues", str(ues), "--loss", str(loss), "--relay-mode", relay_mode]
        args += ["--bulk" if bulk else "--no-bulk", "--transport", transport, "--report", str(report)]
        args += PROFILES[profile]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the demo stops every child it started
            out, _ = proc.communicate()
            status = "timeout"
        wall = time.perf_counter() - t0
        summary_file = report / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    result = {**settings, "wall_s": wall, "status": status, "paths": {}, "tail": out[-1500:]}
    if summary is not None:
        result["paths"] = {r["path"]: r for r in summary["paths"]}
        result["verdict"] = summary["verdict"]["text"]
    return result


def cell_s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}"


def status_text(r: dict) -> str:
    if r["status"] == "timeout":
        return "timeout"
    wrong = sum(p["unexpected"] for p in r["paths"].values())
    total = sum(p["ues"] for p in r["paths"].values())
    return "all correct" if r["status"] == 0 else f"exit {r['status']}: {wrong:,}/{total:,} wrong"


def print_paths(runs: list[dict]) -> None:
    print("demo under loss, secured, bulk over UDP: wall time; p50 / p95 / p99 per path, seconds\n")
    head = f"{'run':<30} {'wall s':>7}  " + "  ".join(f"{p + ' p50/p95/p99':>24}" for p in PATHS) + "  result"
    print(head)
    print("-" * len(head))
    for r in runs:
        name = f"{r['profile']}: loss {r['loss']:g}, relay {r['relay_mode'].upper()}"
        cells = []
        for p in PATHS:
            row = r["paths"].get(p)
            pct = "/".join(cell_s(row and row[k]) for k in ("p50_ms", "p95_ms", "p99_ms")) if row else "-"
            cells.append(f"{pct:>24}")
        print(f"{name:<30} {r['wall_s']:7.1f}  " + "  ".join(cells) + f"  {status_text(r)}")


def print_uu(runs: list[dict]) -> None:
    n = runs[0]["ues"] if runs else 0
    print(f"\ngateway path, {n:,} UEs: Uu messages per configured UE (both directions, on the wire)\n")
    losses = sorted({r["loss"] for r in runs})
    head = f"{'gateway':<16}" + "".join(f"{'loss ' + format(x, 'g'):>12}" for x in losses)
    print(head)
    print("-" * len(head))
    for transport in ("udp", "tcp"):
        for bulk in (True, False):
            line = f"{('bulk' if bulk else 'per-UE') + ', ' + transport.upper():<16}"
            for loss in losses:
                r = next(
                    (x for x in runs if (x["loss"], x["bulk"], x["transport"]) == (loss, bulk, transport)),
                    None,
                )
                gw = r and r["paths"].get("gateway")
                value = gw["uu_per_configured"] if gw and gw["uu_per_configured"] is not None else None
                mark = "" if r is None or r["status"] == 0 else "*"
                line += f"{'-' if value is None else f'{value:.2f}{mark}':>12}"
            print(line)
    print("  * the run was not all correct (see below)")
    for transport in ("udp", "tcp"):
        for loss in losses:
            pair = [
                next(
                    (x for x in runs if (x["loss"], x["bulk"], x["transport"]) == (loss, b, transport)), None
                )
                for b in (True, False)
            ]
            gws = [r and r["paths"].get("gateway") for r in pair]
            if all(g and g["uu_messages"] for g in gws):
                bulk, single = gws
                msgs = single["uu_messages"] / bulk["uu_messages"]
                octets = single["uu_bytes"] / max(1, bulk["uu_bytes"])
                print(
                    f"  {transport.upper()}, loss {loss:g}: per-UE sends {msgs:.1f}× the Uu messages of bulk "
                    f"({octets:.2f}× the bytes)"
                )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ues", type=int, default=1000)
    ap.add_argument("--uu-ues", type=int, default=None, help="UEs of the Uu table's runs (default --ues)")
    ap.add_argument("--profile", choices=["rfc", "tuned", "one-relay", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per demo run")
    ap.add_argument("--part", choices=["paths", "uu", "all"], default="all")
    ap.add_argument("--json", action="store_true", help="print only the JSON report")
    args, _ = ap.parse_known_args(argv)  # make bench passes the same options to every benchmark
    done: dict[tuple, dict] = {}

    def run(
        loss: float, relay_mode: str, bulk: bool = True, transport: str = "udp", profile="rfc", ues=None
    ) -> dict:
        kw = {"relay_mode": relay_mode, "bulk": bulk, "transport": transport, "profile": profile}
        ues = ues or args.ues
        key = (ues, loss, relay_mode, bulk, transport, profile)
        if key not in done:
            done[key] = run_demo(ues, loss, timeout=args.timeout, **kw)
            r = done[key]
            print(
                f"  ran loss {loss:g}, {kw}: {r['wall_s']:.1f} s, {status_text(r)}",
                file=sys.stderr,
                flush=True,
            )
        return done[key]

    paths_runs, uu_runs = [], []
    profiles = ("rfc", "tuned") if args.profile == "both" else (args.profile,)
    if args.part in ("paths", "all"):
        paths_runs = [
            run(loss, relay_mode=mode, profile=profile)
            for profile in profiles
            for loss, mode in ((0.2, "l3"), (0.2, "l2"), (0.3, "l3"), (0.3, "l2"))
        ]
    if args.part in ("uu", "all"):
        uu_runs = [
            run(loss, relay_mode="l2", bulk=bulk, transport=transport, ues=args.uu_ues)
            for transport in ("udp", "tcp")
            for bulk in (True, False)
            for loss in (0.0, 0.2, 0.3)
        ]
    every = list(done.values())
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "tail"} for r in every], indent=1))
    else:
        print(f"msgin5g demo --ues {args.ues:,}: every UE checked against its provisioning in every run\n")
        if paths_runs:
            print_paths(paths_runs)
        if uu_runs:
            print_uu(uu_runs)
        for r in every:
            if r["status"] != 0:
                what = f"loss {r['loss']:g}, relay {r['relay_mode']}, bulk {r['bulk']}, {r['transport']}"
                print(f"\nnot all correct: {what} — last output:")
                print(r["tail"][-600:])
    return 0 if all(r["status"] == 0 for r in every) else 1


if __name__ == "__main__":
    sys.exit(main())
