"""``msgin5g config import --direct`` killed with -9 leaves no parsing child behind, and the store
stays all-or-nothing (offline bulk provisioning; SPEC D14 store semantics)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from msgin5g.model import imei_urn
from msgin5g.store import open_store

from .procs import MSGIN5G

TAC = "35209900"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(c) for c in path.read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def wait_for(predicate, limit: float = 30.0, step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (or ``limit`` s pass) and return it."""
    end = time.monotonic() + limit
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


def test_kill_9_of_a_direct_import_ends_its_parsing_child(tmp_path):
    rows = [f"{imei_urn(TAC, i % 1_000_000)},ue{i}@x,coap://m.example,1024" for i in range(300_000)]
    csv = tmp_path / "big.csv"
    csv.write_text("ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\n" + "\n".join(rows))
    db = f"sqlite:///{tmp_path}/kill.db"
    proc = subprocess.Popen(
        [MSGIN5G, "config", "import", str(csv), "--direct", "--db", db],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        kids = wait_for(lambda: children(proc.pid))
        assert kids, "the import started no parsing child"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        gone = wait_for(lambda: not any(alive(k) for k in kids))
        leftover = [k for k in kids if alive(k)]
        for k in leftover:  # clean up before failing
            os.kill(k, signal.SIGKILL)
        assert gone and not leftover, f"parsing child {leftover} outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
    store = open_store(db)
    try:
        assert store.count("msgin5g") == 0  # one transaction, never committed
    finally:
        store.close()
