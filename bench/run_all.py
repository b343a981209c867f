"""Run every benchmark in turn (``make bench``). Each prints its own table, ratios and memory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "bench_server.py",
    "bench_store.py",
    "bench_relay.py",
    "bench_gateway.py",
    "bench_qblock.py",
    "bench_security.py",
    "bench_coaps.py",
    "bench_security_fleet.py",
    "bench_keys.py",
    "bench_demo.py",
    "bench_loss.py",
    "bench_ops.py",
    "bench_scale.py",
]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / name), *sys.argv[1:]])
        print(f"----- {name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
