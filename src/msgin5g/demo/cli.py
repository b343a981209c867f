"""``msgin5g demo``: start an SCM-S on embedded SQLite in a temporary directory, provision the
sample fleet through ``msgin5g config import``, configure a handful of UEs and show what each got.

Every actor is a separate process talking real CoAP over loopback; the demo only orchestrates.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..model import imei_urn
from ..ue.client import ScmClient
from ..ue.outcome import Outcome

console = Console()
if not console.is_terminal:  # logs and CI: do not squeeze the tables into 80 columns
    console = Console(width=140)

#: (label, ue-uri, what the provisioning implies)
DEMO_UES = [
    ("sensor (range + placeholders)", imei_urn("35209900", 7), Outcome.CONFIGURED),
    ("sensor (range + placeholders)", imei_urn("35209900", 99_999), Outcome.CONFIGURED),
    ("meter (own document)", imei_urn("35209900", 42), Outcome.CONFIGURED),
    ("phone alice", "sip:alice@operator.example", Outcome.CONFIGURED),
    ("phone bob", "sip:bob@operator.example", Outcome.CONFIGURED),
    ("unknown TAC", imei_urn("86000000", 1), Outcome.NOT_FOUND),
    ("unprovisioned phone", "sip:mallory@operator.example", Outcome.NOT_FOUND),
]


def msgin5g_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "msgin5g.cli", *args]


class ServerProcess:
    """An ``msgin5g server`` child process; its first line names its listeners."""

    def __init__(self, db_url: str):
        self.proc = subprocess.Popen(
            msgin5g_cmd("server", "--insecure", "--port", "0", "--db", db_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.match(r"listening (coap://[^/]+)/", line)
        if not m:
            err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
            self.stop()
            raise click.ClickException(f"the SCM-S did not start: {line.strip()} {err.strip()}")
        self.api_root = m.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def configure(api_root: str) -> list[tuple[str, str, Outcome, object, float]]:
    rows = []
    async with ScmClient(api_root) as client:
        for label, uri, expected in DEMO_UES:
            t0 = time.perf_counter()
            result = await client.get_config(uri)
            rows.append((label, uri, expected, result, (time.perf_counter() - t0) * 1000))
    return rows


@click.command()
@click.option("--db", "db_url", default=None, help="Store URL (default: SQLite in a temporary directory).")
def demo(db_url: str | None) -> None:
    """Run the demo: SCM-S + provisioning + a handful of UEs, then stop everything."""
    with tempfile.TemporaryDirectory(prefix="msgin5g-demo-") as tmp:
        db_url = db_url or f"sqlite:///{Path(tmp) / 'scm-s.db'}"
        console.rule("[bold]msgin5g demo")
        console.print(f"SCM-S store: {db_url}")
        server = ServerProcess(db_url)
        try:
            console.print(f"SCM-S listening on {server.api_root} (UDP and TCP)")
            fleet = resources.files("msgin5g.demo").joinpath("fleet.yaml")
            with resources.as_file(fleet) as path:
                p = subprocess.run(
                    msgin5g_cmd("config", "import", str(path), "--server", server.api_root),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            if p.returncode != 0:
                raise click.ClickException(f"provisioning failed: {p.stderr.strip()}")
            console.print(p.stdout.strip())
            rows = asyncio.run(configure(server.api_root))
        finally:
            server.stop()
    table = Table(title="What each UE got (TS 24.538 6.2.1.2)")
    for col in ("UE", "MSGin5G UE ID", "outcome", "UE Service ID", "segment", "ms"):
        table.add_column(col)
    ok = True
    for label, uri, expected, result, ms in rows:
        good = result.outcome is expected
        ok &= good
        cfg = result.config
        table.add_row(
            label,
            uri,
            f"[{'green' if good else 'red'}]{result.outcome.value}[/]",
            cfg.ue_service_id if cfg else "-",
            str(cfg.segment_size) if cfg else "-",
            f"{ms:.1f}",
        )
    console.print(table)
    verdict = "every UE got what its provisioning implies" if ok else "some UEs got an unexpected outcome"
    console.print(f"[bold {'green' if ok else 'red'}]{verdict}[/]")
    sys.exit(0 if ok else 1)
