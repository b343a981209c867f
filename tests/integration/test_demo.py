"""``msgin5g demo`` (the README's first command) end to end, as a user runs it.

Real processes on loopback and random free ports: the SCM-S, the Relay UE, the Gateway UE (and
its separate CM client), the lossy wire, the observing UE. Each run checks its exit status, the
per-path counts it reports against what the provisioning implies (the pure oracle of
:mod:`msgin5g.demo.oracle`), and its report files. Other runs kill a child mid-run, interrupt the
demo, or hand it a store that is not empty — and check that nothing is left behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from msgin5g.demo.oracle import expected
from msgin5g.demo.plan import Path as UePath
from msgin5g.demo.plan import make_plan
from msgin5g.outcome import Outcome

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_demo(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, "demo", *args], capture_output=True, text=True, timeout=timeout)


def implied_counts(n: int, share: float, seed: int, tmp_path: Path) -> dict[str, Counter]:
    """Per path, how many UEs the provisioning says get 2.05 / 4.03 / 4.04 (the SPEC's oracle,
    :mod:`msgin5g.demo.oracle`, which shares no code with the server)."""
    plan = make_plan(n, share, seed)
    docs = plan.all_documents()
    out: dict[str, Counter] = {}
    for ue in plan.ues:
        out.setdefault(ue.path.value, Counter())[expected(ue, docs, plan.gateway_coverage).outcome] += 1
    return out


def check_paths(summary: dict, implied: dict[str, Counter]) -> None:
    rows = {row["path"]: row for row in summary["paths"]}
    assert set(rows) == set(implied)
    for path, want in implied.items():
        row = rows[path]
        got = (row["configured"], row["forbidden"], row["not_found"], row["errors"], row["unexpected"])
        assert got == (want[Outcome.CONFIGURED], want[Outcome.FORBIDDEN], want[Outcome.NOT_FOUND], 0, 0), path
        assert row["uu_messages"] > 0 and row["uu_bytes"] > 0
    for path in (UePath.RELAY.value, UePath.GATEWAY.value, UePath.DIRECT.value):
        assert min(rows[path]["configured"], rows[path]["forbidden"], rows[path]["not_found"]) >= 1, path


def check_report(report: Path, n_ues: int) -> dict:
    summary = json.loads((report / "summary.json").read_text())
    with (report / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_ues
    assert len({r["ue_uri"] for r in rows}) == n_ues
    assert {r["ok"] for r in rows} == {"yes"}
    assert all(float(r["latency_ms"]) >= 0 and int(r["attempts"]) >= 1 for r in rows)
    png = (report / "chart.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 800 and height > 300
    import matplotlib.image

    assert matplotlib.image.imread(report / "chart.png").shape[:2] == (height, width)
    md = (report / "report.md").read_text()
    assert "| path | UEs | 2.05 | 4.03 | 4.04 |" in md and "](chart.png)" in md
    assert (report / "fleet.yaml").is_file() and (report / "meters.csv").is_file()
    assert (report / "logs" / "server.log").is_file()
    return summary


def test_demo_small_fleet_every_outcome_and_report(tmp_path):
    """60 constrained UEs, defaults otherwise (L3 relay, bulk over UDP, collocated CM client)."""
    report = tmp_path / "report"
    p = run_demo("--ues", "60", "--report", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK: all 66 UEs got exactly the outcome their provisioning implies" in p.stdout
    assert "2.05, 4.03 and 4.04 on every path" in p.stdout
    assert "observer: 2 of 2 document changes notified" in p.stdout
    assert re.search(r"gateway \(bulk, UDP\)\s+\d+\s+\d+\s+\d+\s+\d+\s+0\s+0\s", p.stdout)
    summary = check_report(report, 66)
    check_paths(summary, implied_counts(60, 0.2, 1, tmp_path))
    gateway = next(r for r in summary["paths"] if r["path"] == "gateway")
    assert gateway["saved_by_bulk"] > 0  # fewer Uu messages than one exchange per UE
    assert summary["counters"]["gateway"]["bulk-operations"] >= 1
    assert summary["counters"]["relay"]["relayed_down"] == summary["paths"][0]["ues"]
    assert all(p["peak_rss_kib"] for p in summary["processes"])


def test_demo_with_datagram_loss(tmp_path):
    """20 % of the UDP datagrams lost on every PC5, MSGin5G-6 and Uu leg: every UE still gets exactly
    its outcome. (Layer-2 relay mode: in layer 3 every relayed request waits behind each lost one.)"""
    report = tmp_path / "report"
    p = run_demo("--ues", "40", "--loss", "0.2", "--relay-mode", "l2", "--seed", "3", "--report", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    summary = check_report(report, 46)
    check_paths(summary, implied_counts(40, 0.2, 3, tmp_path))
    lost = {name: leg["up"][2] + leg["down"][2] for name, leg in summary["legs"].items()}
    assert lost["pc5"] > 0 and lost["msgin5g-6"] > 0 and lost["uu-gateway"] + lost["uu-relay"] > 0


def test_demo_at_30_percent_loss_with_ue_timers_for_the_link(tmp_path):
    """30 % loss on every leg, the UEs' ACK_TIMEOUT set for the emulated link (RFC 7252 §4.8.1) and
    a relay link table of 16: every UE still gets exactly its outcome, and the report names both."""
    report = tmp_path / "report"
    args = ("--ues", "40", "--loss", "0.3", "--seed", "4", "--ue-ack-timeout", "0.5", "--relay-links", "16")
    p = run_demo(*args, "--report", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    summary = check_report(report, 46)
    check_paths(summary, implied_counts(40, 0.2, 4, tmp_path))
    assert "--relay-links 16 --ue-ack-timeout 0.5" in (report / "report.md").read_text()
    assert "16 PC5 links" in p.stdout


@pytest.mark.parametrize(
    ("args", "label"),
    [
        (["--cm-client", "separate", "--transport", "tcp", "--relay-share", "0.3"], "gateway (bulk, TCP)"),
        (["--no-bulk", "--relay-mode", "l2", "--max-batch", "10"], "gateway (no bulk, UDP)"),
    ],
)
def test_demo_other_topologies(args, label, tmp_path):
    report = tmp_path / "report"
    p = run_demo("--ues", "40", "--seed", "5", *args, "--report", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    assert label in p.stdout
    share = 0.3 if "--relay-share" in args else 0.2
    summary = check_report(report, 46)
    check_paths(summary, implied_counts(40, share, 5, tmp_path))
    counters = summary["counters"]
    if "--no-bulk" in args:
        assert counters["gateway"]["single-forwards"] > 0 and counters["gateway"]["bulk-operations"] == 0
    else:
        assert counters["cm-client"]["bulk-gets"] >= 1  # issued by the separate process (SEAL-C)
        assert summary["legs"]["uu-gateway"]["up"][0] <= 4  # one bulk GET over TCP (+ CSM, probe)


def test_demo_with_several_relays_at_seeded_loss(tmp_path):
    """Three Relay UEs of 2 PC5 links each (SPEC D8) at 20 % loss on every leg: each remote UE
    goes through the relay it selected, every relay serves some, and every UE still gets exactly
    the outcome its provisioning implies; the per-relay PC5 legs and counters add up."""
    report = tmp_path / "report"
    args = ("--ues", "40", "--loss", "0.2", "--seed", "6", "--relays", "3", "--relay-links", "2")
    p = run_demo(*args, "--report", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"started 3 Relay UEs \(pids \d+, \d+, \d+\), each L3 mode, 2 PC5 links", p.stdout)
    summary = check_report(report, 46)
    implied = implied_counts(40, 0.2, 6, tmp_path)
    check_paths(summary, implied)
    remote = sum(implied["relay"].values())
    pc5 = {name: leg for name, leg in summary["legs"].items() if name.startswith("pc5")}
    assert set(pc5) == {"pc5", "pc5-2", "pc5-3"}
    assert all(leg["up"][0] > 0 and leg["down"][0] > 0 for leg in pc5.values())  # each relay served UEs
    per_relay = []
    for log in ("relay.log", "relay-2.log", "relay-3.log"):
        text = (report / "logs" / log).read_text()
        after = text[text.rindex("relay counters at shutdown:") :].partition(":")[2].lstrip()
        per_relay.append(json.JSONDecoder().raw_decode(after)[0])
    assert all(c["links_established"] >= 1 and c["relayed_down"] >= 1 for c in per_relay)
    total = summary["counters"]["relay"]
    assert total["links_established"] == sum(c["links_established"] for c in per_relay) >= remote
    assert total["relayed_down"] == sum(c["relayed_down"] for c in per_relay) >= remote
    assert "--relays 3 --relay-links 2" in (report / "report.md").read_text()


def test_demo_relays_option_is_checked():
    p = run_demo("--ues", "20", "--relays", "none", timeout=60)
    assert p.returncode == 2
    assert "'auto' or a number of Relay UEs from 1 to 256, not 'none'" in p.stderr
    assert "Traceback" not in p.stdout + p.stderr and "started" not in p.stdout


# -- stopping ---------------------------------------------------------------------------------------
def start_demo_and_wait_for(
    line_pattern: str, *args: str
) -> tuple[subprocess.Popen, list[str], dict[str, int]]:
    """Start the demo with its output on a pipe; return once a line matches, with the lines so far
    and the pid of every child it reported starting."""
    proc = subprocess.Popen(
        [MSGIN5G, "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    pids: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"started the (.+?) \(pid (\d+)\)", line)
        if m:
            pids[m.group(1)] = int(m.group(2))
        m = re.search(r"started \d+ Relay UEs \(pids ([\d, ]+)\)", line)
        if m:  # several Relay UEs (--relays)
            pids.update({f"Relay UE {k}": int(pid) for k, pid in enumerate(m.group(1).split(", "), 1)})
        if re.search(line_pattern, line):
            return proc, lines, pids
    proc.kill()
    pytest.fail("the demo never printed " + line_pattern + ":\n" + "".join(lines))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead; it is reaped by its parent (or init once the demo is gone)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def finish(proc: subprocess.Popen, lines: list[str]) -> str:
    rest, _ = proc.communicate(timeout=60)
    return "".join(lines) + rest


def assert_nothing_left(pids: dict[str, int], output: str) -> None:
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, pid in pids.items() if alive(pid)], output
    ports = [int(m) for m in re.findall(r"127\.0\.0\.1:(\d+)", output)]
    assert ports and all(port_free(port) for port in ports), output


def test_killed_child_stops_everything_and_says_so():
    """The gateway holds its batch for a minute; it is killed while its UEs wait."""
    proc, lines, pids = start_demo_and_wait_for(
        r"configuring \d+ UEs", "--ues", "60", "--max-wait-ms", "60000"
    )
    assert {"SCM-S", "wire (lossy forwarder)", "Relay UE 1", "Relay UE 2", "Gateway UE"} <= set(pids)
    os.kill(pids["Gateway UE"], signal.SIGKILL)
    out = finish(proc, lines)
    assert proc.returncode == 2, out
    assert (
        f"demo stopped: the Gateway UE (pid {pids['Gateway UE']}) exited unexpectedly (killed by SIGKILL)"
        in out
    )
    assert "done before that: started the SCM-S" in out and "provisioned" in out
    assert "stopped every process it had started; no process or port is left behind:" in out
    assert f"the SCM-S (pid {pids['SCM-S']}): stopped" in out
    assert f"the Gateway UE (pid {pids['Gateway UE']}): killed by SIGKILL" in out
    assert_nothing_left(pids, out)


def test_interrupt_stops_everything():
    """Ctrl-C (SIGINT to the demo alone: its children run in sessions of their own)."""
    proc, lines, pids = start_demo_and_wait_for(
        r"configuring \d+ UEs", "--ues", "60", "--max-wait-ms", "60000"
    )
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = finish(proc, lines)
    assert proc.returncode == 130, out
    assert "demo stopped: interrupted" in out
    assert "stopped every process it had started" in out
    assert_nothing_left(pids, out)


def test_store_that_is_not_empty_is_refused(tmp_path):
    db = f"sqlite:///{tmp_path / 'used.db'}"
    fleet = tmp_path / "one.csv"
    fleet.write_text(
        "ue-uri,ueServiceId,msgin5gServerAddress,segmentSize\nsip:x@example,x@example,coap://m.example\n"
    )
    imp = subprocess.run(
        [MSGIN5G, "config", "import", str(fleet), "--direct", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imp.returncode == 0, imp.stderr
    p = run_demo("--ues", "20", "--db", db, timeout=60)
    assert p.returncode == 2  # could not run (1 would mean: some UE got the wrong answer)
    assert "already holds 1 configuration documents" in p.stdout + p.stderr
    assert "started" not in p.stdout


def test_demo_on_a_given_store(store_url):
    """``--db``: the SCM-S and the gateway registry on the given SQLite file or PostgreSQL database."""
    p = run_demo("--ues", "20", "--db", store_url, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"store {store_url}" in p.stdout.replace("\n", "")
    assert "OK: all 26 UEs got exactly the outcome their provisioning implies" in p.stdout
