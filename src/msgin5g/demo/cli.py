"""``msgin5g demo``: the whole topology on one machine, with live progress and a report.

It starts, each as its own process talking real CoAP over loopback, the SCM-S (on SQLite in a
temporary directory unless ``--db`` is given), the Relay UE, the Gateway UE (and, with
``--cm-client separate``, its configuration management client, SEAL-C: SPEC D10), and the wire
between them (:mod:`.lossy`: counts every leg, loses ``--loss`` of the UDP datagrams). It
provisions a generated fleet through ``msgin5g config import`` and ``msgin5g config gateway
set`` (:mod:`.plan`), then drives the UEs (:mod:`.drivers`): constrained UEs through the relay
and through the gateway, unconstrained UEs directly, and one UE — an ``msgin5g ue get-config
--observe`` process — that observes its document while the demo changes it.

Secured by default (SPEC D12): every identity gets its OSCORE credentials in the temporary
directory (:mod:`.keys`), the SCM-S runs with ``--security``, the Gateway UE with its own key
and a registry of its UEs' keys, and every request of every UE and of the administrator is
protected; ``--insecure`` runs the lab mode instead (identities claimed with the lab option).

Every UE's outcome is checked against what the provisioning implies (:func:`.plan.expected`);
the exit status is 0 only when each UE got exactly that. A child that dies, Ctrl-C, or SIGTERM
stops every process the demo started (:mod:`.procs`) and says what had been done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path as FsPath

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..outcome import Outcome
from ..scmc import ScmClient
from ..store import open_store
from . import drivers
from .drivers import UeRun
from .keys import DemoKeys, done_with, make_keys
from .lossy import raise_fd_limit
from .plan import (
    GATEWAY_ID,
    SENSOR_TAC,
    SERVICE_ID,
    Expectation,
    FleetPlan,
    Path,
    PlannedUe,
    expected,
    make_plan,
    provisioned_documents,
    write_provisioning,
)
from .procs import Child, ChildFailed, Supervisor, msgin5g_argv
from .report import MATPLOTLIB_HINT_MARKUP, TABLE_NOTES, console_table, write_report
from .stats import PathSummary, UuCount, summarize_path, verdict

RELAY_LINKS = 8  # TS 23.304's recommended PC5 link table size: the relay serves 8 UEs at a time
GATEWAY_CONCURRENCY = 1000  # constrained UEs asking the gateway at the same time (fewer if files are scarce)
UE_DEADLINE = 240.0  # s a UE keeps trying before it counts as an error
OBSERVER_CHANGES = 2  # document changes the observing UE must see
OBSERVER_STARTS = 3  # an observer whose first request got no answer is started again
OBSERVER_WAIT = 5.0  # s for a notification before the document is changed once more
EXIT_OK, EXIT_WRONG, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130

LEG_OF = {
    Path.RELAY: "uu-relay",
    Path.GATEWAY: "uu-gateway",
    Path.DIRECT: "uu-direct",
    Path.OBSERVER: "uu-observer",
}
UE_SIDE_LEG = {Path.RELAY: "pc5", Path.GATEWAY: "msgin5g-6"}


@dataclass
class DemoOptions:
    ues: int = 1000
    relay_share: float = 0.2
    relay_mode: str = "l3"
    bulk: bool = True
    max_batch: int = 1000
    max_wait_ms: int = 500
    transport: str = "udp"
    cm_client: str = "collocated"
    loss: float = 0.0
    seed: int = 1
    report: FsPath | None = None
    db: str | None = None
    insecure: bool = False
    console: bool = False  # serve the SCM-S console during the run (SPEC D15)

    def path_label(self, path: Path) -> str:
        return {
            Path.RELAY: f"relay ({self.relay_mode.upper()})",
            Path.GATEWAY: f"gateway ({'bulk' if self.bulk else 'no bulk'}, {self.transport.upper()})",
            Path.DIRECT: "direct",
            Path.OBSERVER: "observer",
        }[path]


def make_console() -> Console:
    """Rich on a terminal; plain, 140 columns wide, without colour codes in logs and pipes."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=140, no_color=True, highlight=False)
    return console


# --------------------------------------------------------------------------------------------
# The wire process


class Wire:
    """Control of the :mod:`.lossy` forwarder process (one line per command, one per reply)."""

    def __init__(self, child: Child):
        self.child = child
        self._lock = asyncio.Lock()
        self.last: dict = {}

    async def _ask(self, line: str) -> str:
        proc = self.child.proc
        async with self._lock:
            proc.stdin.write((line + "\n").encode())
            await proc.stdin.drain()
            reply = (await asyncio.wait_for(proc.stdout.readline(), 10.0)).decode().strip()
        if not reply or reply.startswith("error"):
            raise ChildFailed(self.child, f"refused {line!r}: {reply or 'no reply'}")
        return reply

    async def leg(self, kind: str, name: str, target: tuple[str, int]) -> tuple[str, int]:
        """A new leg towards ``target``; returns where its clients send instead."""
        _, _, host, port = (await self._ask(f"{kind} {name} {target[0]} {target[1]}")).split()
        return host, int(port)

    async def stats(self) -> dict:
        with contextlib.suppress(Exception):
            self.last = json.loads((await self._ask("stats")).partition(" ")[2])
        return self.last


# --------------------------------------------------------------------------------------------
# Live progress


class ProgressView:
    """Per-path progress: a rich live display on a terminal, a status line every few seconds
    otherwise (CI logs, pipes)."""

    def __init__(self, console: Console, opts: DemoOptions, totals: dict[Path, int], interval: float = 3.0):
        self.console = console
        self.opts = opts
        self.totals = totals
        self.interval = interval
        self.tally: dict[Path, Counter] = {p: Counter() for p in totals}
        self.uu: dict[Path, int] = dict.fromkeys(totals, 0)
        self.t0 = time.monotonic()
        self._progress: Progress | None = None
        self._tasks: dict[Path, int] = {}
        self._closed = False

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            columns = [TextColumn("{task.description:<22}")]
            if self.console.width >= 120:
                columns.append(BarColumn(bar_width=24))
            columns += [MofNCompleteColumn(), TextColumn("{task.fields[tally]}"), TimeElapsedColumn()]
            self._progress = Progress(*columns, console=self.console)
            self._progress.start()
            for path, n in self.totals.items():
                self._tasks[path] = self._progress.add_task(self.opts.path_label(path), total=n, tally="")
        return self

    def __exit__(self, *exc) -> None:
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
        else:
            self.print_line()

    def _tally_text(self, path: Path) -> str:
        t = self.tally[path]
        text = f"2.05 {t['2.05']:,} · 4.03 {t['4.03']:,} · 4.04 {t['4.04']:,}"
        if t["error"]:
            text += f" · no answer {t['error']:,}"
        if t["wrong"]:
            text += f" · [red]wrong {t['wrong']:,}[/]"
        return text + f" · Uu {self.uu[path]:,}"

    def record(self, run: UeRun) -> None:
        path = run.ue.path
        self.tally[path][run.code if run.outcome is not Outcome.ERROR else "error"] += 1
        self.tally[path]["done"] += 1
        if not run.ok:
            self.tally[path]["wrong"] += 1
        if self._progress is not None:
            self._progress.update(
                self._tasks[path], completed=self.tally[path]["done"], tally=self._tally_text(path)
            )

    def set_uu(self, legs: dict) -> None:
        for path in self.totals:
            self.uu[path] = UuCount.from_leg(legs.get(LEG_OF[path])).messages
        self._refresh()

    def _refresh(self) -> None:
        if self._progress is not None:
            for path, task in self._tasks.items():
                self._progress.update(task, tally=self._tally_text(path))

    def print_line(self) -> None:
        parts = [f"{self.opts.path_label(p)} {self.tally[p]['done']:,}/{n:,}" for p, n in self.totals.items()]
        uu = sum(self.uu.values())
        self.console.print(
            f"  {time.monotonic() - self.t0:6.1f} s  " + " · ".join(parts) + f" | Uu {uu:,} msgs"
        )

    async def ticker(self, wire: Wire) -> None:
        """Refresh the wire's counters; without a terminal, print a status line every few seconds
        while UEs finish, and every 15 s while they wait."""
        last_line, last_done = time.monotonic(), 0
        while True:
            await asyncio.sleep(0.5)
            self.set_uu(await wire.stats())
            if self._progress is not None:
                continue
            done = sum(t["done"] for t in self.tally.values())
            quiet = time.monotonic() - last_line
            if (done != last_done and quiet >= self.interval) or quiet >= 5 * self.interval:
                last_line, last_done = time.monotonic(), done
                self.print_line()


# --------------------------------------------------------------------------------------------
# Helpers


async def run_command(args: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run ``msgin5g ARGS`` to completion (output captured); killed if the demo is stopped."""
    proc = await asyncio.create_subprocess_exec(
        *msgin5g_argv(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace").strip()


def uri(addr: tuple[str, int], scheme: str = "coap") -> str:
    return f"{scheme}://{_hostport(addr)}"


def _hostport(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _json_after(text: str, marker: str) -> dict | None:
    """The JSON document printed after ``marker`` in a child's log (its counters at shutdown)."""
    i = text.rfind(marker)
    if i < 0:
        return None
    with contextlib.suppress(ValueError):
        return json.JSONDecoder().raw_decode(text[i + len(marker) :].lstrip())[0]
    return None


def _json_lines(child: Child) -> list[dict]:
    """The JSON lines an ``msgin5g ue get-config --json`` child has printed so far."""
    out = []
    for line in child.log_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


@dataclass
class ObserverResult:
    run: UeRun
    latencies: list[float]  # change (PUT) → notification seen, s
    seen: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.run.ok and self.seen == OBSERVER_CHANGES


# --------------------------------------------------------------------------------------------
# The run


class Demo:
    def __init__(self, opts: DemoOptions, console: Console, workdir: FsPath):
        self.opts = opts
        self.console = console
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.sup = Supervisor(self.logs)
        self.plan: FleetPlan = make_plan(opts.ues, opts.relay_share, opts.seed)
        self.db_url = opts.db or f"sqlite:///{workdir / 'scm-s.db'}"
        self.done: list[str] = []  # what has been done, for the report after a failure
        self.runs: list[UeRun] = []
        self.view: ProgressView | None = None
        self.times: dict[str, float] = {}
        self.provision_files: list[FsPath] = []
        self.aborted = False
        self.keys: DemoKeys | None = None  # None: the insecure lab mode

    def say(self, text: str) -> None:
        self.console.print(text)

    # -- phases ----------------------------------------------------------------------------------
    def check_store(self) -> None:
        """A given store must be empty: the expectations are computed from this run's provisioning."""
        try:
            store = open_store(self.db_url)
        except Exception as e:
            raise click.ClickException(f"cannot open the store {self.opts.db}: {e}") from None
        try:
            n = store.count(SERVICE_ID)
        finally:
            store.close()
        if n:
            raise click.ClickException(
                f"the store {self.opts.db} already holds {n} configuration documents for '{SERVICE_ID}'; "
                "the demo provisions its own fleet and needs an empty store (e.g. a fresh database: "
                "createdb -h 127.0.0.1 -U postgres msgin5g_demo)"
            )

    async def start_actors(self) -> dict:
        """The SCM-S and the wire, then the relay and the gateway behind their legs."""
        o = self.opts
        security = ["--security", str(self.keys.scm_registry)] if self.keys else ["--insecure"]
        server_task = self.sup.start(
            "server",
            "the SCM-S",
            [
                "server",
                *security,
                "--port",
                "0",
                "--db",
                self.db_url,
                *(["--http", "0"] if o.console else []),
            ],
            r"listening coap://([\d.]+):(\d+)/su-uc/v1\s+listening coap\+tcp://",
        )
        wire_task = self.sup.start(
            "wire",
            "the wire (lossy forwarder)",
            [sys.executable, "-m", "msgin5g.demo.lossy", "--loss", str(o.loss), "--seed", str(o.seed)],
            "",
            stdin_pipe=True,
            stdout_pipe=True,
        )
        server, wire_child = await asyncio.gather(server_task, wire_task)
        scm = (server.ready_match.group(1), int(server.ready_match.group(2)))
        self.say(
            f"  started {server.label} (pid {server.pid}): {uri(scm)}/su-uc/v1 (UDP and TCP), "
            f"store {self.db_url}" + ("" if self.keys else ", INSECURE lab mode")
        )
        if o.console and (m := re.search(r"^console (\S+)", server.log_text(), re.M)):
            c = self.console  # one line, never wrapped: the URL is copied from it
            c.print(f"  console of the SCM-S (up during the run): {m.group(1)}", soft_wrap=True, markup=False)
        self.wire = Wire(wire_child)
        loss = f"loses {o.loss:.0%} of the UDP datagrams" if o.loss else "loses nothing"
        self.say(f"  started {wire_child.label} (pid {wire_child.pid}): counts every leg, {loss}")
        ep: dict = {"scm": scm}
        for leg in ("uu-relay", "uu-direct", "uu-observer"):
            ep[leg] = await self.wire.leg("udp", leg, scm)
        ep["uu-gateway"] = await self.wire.leg(o.transport, "uu-gateway", scm)
        gw_scheme = "coap+tcp" if o.transport == "tcp" else "coap"

        async def relay() -> Child:
            return await self.sup.start(
                "relay",
                "the Relay UE",
                [
                    "relay",
                    "--listen",
                    "127.0.0.1:0",
                    "--server",
                    uri(ep["uu-relay"]),
                    "--mode",
                    o.relay_mode,
                    "--max-links",
                    str(RELAY_LINKS),
                    "--admin",
                    "127.0.0.1:0",
                ],
                r"listening on ([\d.]+):(\d+) \(PC5\)",
            )

        async def gateway() -> tuple[Child, Child | None]:
            cm = None
            # secured: its own key towards the SCM-S, and its UEs' keys on MSGin5G-6 (SPEC D12)
            if self.keys is not None:
                uu_identity = ["--credentials", str(self.keys.gateway.path)]
            else:
                uu_identity = ["--gateway-id", GATEWAY_ID]
            args = [
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--state",
                str(self.workdir / "gateway-state.db"),
                *(
                    [
                        "--security",
                        str(self.keys.gateway_registry),
                        # every UE's context stays loaded: no release and reload between request and answer
                        "--max-open-contexts",
                        str(max(1024, min(len(self.keys.at_gateway), self.fd_limit // 2))),
                    ]
                    if self.keys
                    else []
                ),
                "--bulk" if o.bulk else "--no-bulk",
                "--max-batch",
                str(o.max_batch),
                "--max-wait-ms",
                str(o.max_wait_ms),
            ]
            if o.cm_client == "separate":
                cm = await self.sup.start(
                    "cm-client",
                    "the CM client (SEAL-C)",
                    [
                        "cm-client",
                        "--listen",
                        "127.0.0.1:0",
                        "--server",
                        uri(ep["uu-gateway"], gw_scheme),
                        *uu_identity,
                    ],
                    r"cm-client listening on ([\d.]+):(\d+)",
                )
                args += ["--cm-client", uri((cm.ready_match.group(1), int(cm.ready_match.group(2))))]
            else:
                args += ["--server", uri(ep["uu-gateway"], gw_scheme), *uu_identity]
            gw = await self.sup.start(
                "gateway", "the Gateway UE", args, r"gateway listening on ([\d.]+):(\d+)"
            )
            return gw, cm

        relay_child, (gw_child, cm_child) = await asyncio.gather(relay(), gateway())
        ep["relay"] = (relay_child.ready_match.group(1), int(relay_child.ready_match.group(2)))
        ep["gateway"] = (gw_child.ready_match.group(1), int(gw_child.ready_match.group(2)))
        ep["pc5"] = await self.wire.leg("udp", "pc5", ep["relay"])
        ep["msgin5g-6"] = await self.wire.leg("udp", "msgin5g-6", ep["gateway"])
        self.say(
            f"  started {relay_child.label} (pid {relay_child.pid}): PC5 {_hostport(ep['relay'])}, "
            f"{o.relay_mode.upper()} mode, {RELAY_LINKS} PC5 links"
        )
        if cm_child is not None:
            cm_at = f"{cm_child.ready_match.group(1)}:{cm_child.ready_match.group(2)}"
            self.say(f"  started {cm_child.label} (pid {cm_child.pid}): SEAL-C {cm_at}")
        where = "CM client separate" if cm_child else "CM client collocated"
        self.say(
            f"  started {gw_child.label} (pid {gw_child.pid}): MSGin5G-6 {_hostport(ep['gateway'])}, "
            f"{where}, Uu over {o.transport.upper()}"
        )
        self.say(
            "  ports: every process picked a free port on 127.0.0.1; every PC5, MSGin5G-6 and Uu leg "
            "goes through the wire"
        )
        self.done.append("started the SCM-S, the wire, the Relay UE and the Gateway UE")
        return ep

    async def provision(self, ep: dict) -> None:
        """``msgin5g config import`` over CoAP (as administrator) and the gateway registry."""
        self.provision_files = write_provisioning(self.plan, self.workdir)
        api = uri(ep["scm"])
        counts: dict[str, int] = {}
        admin = ["--credentials", str(self.keys.admin.path)] if self.keys else []
        for f in self.provision_files:
            rc, out = await run_command(["config", "import", str(f), "--server", api, *admin])
            if rc != 0:
                raise click.ClickException(f"provisioning {f.name} failed: {out}")
            imported = re.search(r"imported (\d+)", out)
            counts[f.name] = int(imported.group(1)) if imported else 0
        rc, out = await run_command(
            ["config", "gateway", "set", GATEWAY_ID, *self.plan.gateway_set_args(), "--db", self.db_url]
        )
        if rc != 0:
            raise click.ClickException(f"registering the gateway failed: {out}")
        out = self.plan.outside_gateway
        self.say(
            f"  provisioned {sum(counts.values()):,} documents with 'msgin5g config import' "
            f"({', '.join(f'{name}: {n}' for name, n in counts.items())})"
        )
        self.say(
            f"  registered gateway {GATEWAY_ID} with 'msgin5g config gateway set': TAC {SENSOR_TAC} "
            f"except SNR {out.start}-{out.stop - 1}"
        )
        self.done.append(f"provisioned {sum(counts.values()):,} documents and the gateway registry")

    def expectations(self) -> dict[PlannedUe, Expectation]:
        docs = provisioned_documents(self.provision_files)
        return {u: expected(u, docs, self.plan.gateway_coverage) for u in self.plan.ues}

    async def drive(self, ep: dict, exp: dict[PlannedUe, Expectation]) -> list[UeRun]:
        """Every UE at once: relay (8 links at a time), gateway, direct."""
        o = self.opts
        loop = asyncio.get_running_loop()
        relay_slots = asyncio.Semaphore(RELAY_LINKS)
        # each UE waiting on the gateway holds a socket here and one in the wire process
        gateway_slots = asyncio.Semaphore(max(16, min(GATEWAY_CONCURRENCY, self.fd_limit // 3)))
        gw_timeout = max(drivers.ATTEMPT_TIMEOUT, 3 * o.max_wait_ms / 1000 + 30)
        scm_via_relay = uri(ep["uu-relay"])

        keys = self.keys

        def creds(ue: PlannedUe):
            if keys is None:
                return None
            return (keys.at_gateway if ue.path is Path.GATEWAY else keys.at_scm)[ue.device]

        async def one(ue: PlannedUe) -> UeRun:
            if ue.path is Path.RELAY:
                async with relay_slots:
                    run = await drivers.configure_via_relay(
                        ep["pc5"], scm_via_relay, ue, exp[ue], loop.time() + UE_DEADLINE, creds(ue)
                    )
            elif ue.path is Path.GATEWAY:
                async with gateway_slots:
                    run = await drivers.configure_via_gateway(
                        ep["msgin5g-6"], ue, exp[ue], loop.time() + UE_DEADLINE, gw_timeout, creds(ue)
                    )
            else:
                run = await drivers.configure_direct(
                    uri(ep["uu-direct"]), ue, exp[ue], loop.time() + UE_DEADLINE, creds(ue)
                )
            self.runs.append(run)
            self.view.record(run)
            return run

        return list(await asyncio.gather(*(one(u) for u in self.plan.ues if u.path is not Path.OBSERVER)))

    async def observe(self, ep: dict, exp: Expectation) -> ObserverResult:
        """An ``msgin5g ue get-config --observe`` process watches its document (RFC 7641) while the
        administrator changes it (PUT, TS 24.546 C.3.1.2.3.3.2); every change must reach it.

        A notification lost on the wire is made good by the next change; an observer whose own
        first request got no answer (``--loss``) is started again, as a device would retry."""
        ue = self.plan.observer
        t0 = time.monotonic()
        child, first = None, {}
        for attempt in range(1, OBSERVER_STARTS + 1):
            child = await self.sup.start(
                "observer" if attempt == 1 else f"observer-{attempt}",
                "the observing UE",
                [
                    "ue",
                    "get-config",
                    "--server",
                    uri(ep["uu-observer"]),
                    "--ue-uri",
                    ue.asks_for,
                    *(
                        ["--credentials", str(self.keys.at_scm[ue.device].path)]
                        if self.keys
                        else ["--identity", ue.identity]
                    ),
                    "--observe",
                    "--json",
                    "--timeout",
                    str(drivers.ATTEMPT_TIMEOUT),
                ],
                r"\{.*\"outcome\"",
                timeout=2 * drivers.ATTEMPT_TIMEOUT,
                may_exit=True,
            )
            first = _json_lines(child)[0]
            if first.get("outcome") != Outcome.ERROR.value:
                break
            await self.sup.stop(child)
        outcome = Outcome(first["outcome"])
        cfg = first.get("config") or {}
        run = UeRun(
            ue, exp, outcome, first.get("code") or "-", cfg.get("ueServiceId"), time.monotonic() - t0, attempt
        )
        self.view.record(run)
        doc_id = first.get("ueConfigDocId")
        latencies: list[float] = []
        note = ""
        if outcome is Outcome.CONFIGURED and doc_id:
            admin_creds = self.keys.admin if self.keys else None
            try:
                async with ScmClient(
                    uri(ep["scm"]), SERVICE_ID, credentials=admin_creds
                ) as admin:  # the administrator is not on a radio leg
                    for change in range(1, OBSERVER_CHANGES + 1):
                        latency = await self._change_and_wait(admin, child, doc_id, 1024 + 256 * change)
                        if latency is None:
                            note = f"change {change} never arrived"
                            break
                        latencies.append(latency)
            finally:
                done_with(admin_creds)
        else:
            note = f"its first answer was {first.get('code')} {first.get('outcome')}"
        await self.sup.stop(child)
        return ObserverResult(run, latencies, len(latencies), note)

    @staticmethod
    async def _change_and_wait(admin: ScmClient, child: Child, doc_id: str, segment: int) -> float | None:
        """PUT the document with a new segment size until the observer prints it (5 tries);
        the time from the PUT to the notification, or None."""
        for _ in range(5):
            doc = await admin.get_doc(doc_id)
            for c in doc["ueConfigs"]:
                if c["configType"] == "ON_NETWORK":
                    data = json.loads(c["configData"])
                    data["segmentSize"] = segment
                    c["configData"] = json.dumps(data)
            t_put = time.monotonic()
            await admin.replace(doc_id, doc)
            while time.monotonic() - t_put < OBSERVER_WAIT:
                if any((ln.get("config") or {}).get("segmentSize") == segment for ln in _json_lines(child)):
                    return time.monotonic() - t_put
                await asyncio.sleep(0.02)
        return None

    # -- the whole run ---------------------------------------------------------------------------
    async def run(self) -> int:
        o = self.opts
        plan = self.plan
        t_start = time.monotonic()
        c = self.console
        n_relay, n_gw, n_direct = (len(plan.on(p)) for p in (Path.RELAY, Path.GATEWAY, Path.DIRECT))
        c.rule("[bold]msgin5g demo")
        bulk = f"bulk ≤{o.max_batch:,} UEs / {o.max_wait_ms} ms" if o.bulk else "no bulk"
        self.say(
            f"fleet: {o.ues:,} constrained UEs — {n_relay:,} via the Relay UE, {n_gw:,} via the Gateway UE — "
            f"plus {n_direct} UEs directly and 1 observing its document"
        )
        self.say(
            f"       relay {o.relay_mode.upper()}; gateway {bulk}, Uu over {o.transport.upper()}, CM client "
            f"{o.cm_client}; loss {o.loss:g}; seed {o.seed}"
        )
        if o.db:
            try:
                self.check_store()
            except click.ClickException as e:
                e.exit_code = EXIT_FAILED  # a precondition, not "some UE wrong" (exit 1)
                raise
        if not o.insecure:
            t_keys = time.monotonic()
            self.keys = make_keys(plan, self.workdir)
            self.say(
                f"       secured: {self.keys.count:,} OSCORE keys ({time.monotonic() - t_keys:.1f} s) — "
                "administrator, Gateway UE, each UE with the SCM-S (end to end) or the Gateway UE"
            )
        else:
            self.say(
                "       [bold red]INSECURE lab mode[/]: no keys; identities are claimed with the lab option"
            )
        self.fd_limit = raise_fd_limit()  # before the children start: they inherit it
        watch = asyncio.ensure_future(self.sup.watch())
        try:
            ep = await self._with_watch(watch, self.start_actors())
            await self._with_watch(watch, self.provision(ep))
            self.times["start"] = time.monotonic() - t_start
            exp = self.expectations()
            totals = {p: len(plan.on(p)) for p in (Path.RELAY, Path.GATEWAY, Path.DIRECT, Path.OBSERVER)}
            totals = {p: n for p, n in totals.items() if n}
            self.say(f"configuring {sum(totals.values()):,} UEs …")
            t_ues = time.monotonic()
            with ProgressView(c, o, totals) as self.view:
                ticker = asyncio.ensure_future(self.view.ticker(self.wire))
                try:
                    _, observer = await self._with_watch(
                        watch, asyncio.gather(self.drive(ep, exp), self.observe(ep, exp[plan.observer]))
                    )
                finally:
                    ticker.cancel()
                self.view.set_uu(await self.wire.stats())
            self.times["ues"] = time.monotonic() - t_ues
            legs = await self.wire.stats()
            for child in self.sup.children:
                child.sample_rss()
        except ChildFailed as e:
            return await self._abort(f"{e}", e.child)
        except click.ClickException as e:
            return await self._abort(e.format_message(), None)
        except asyncio.CancelledError:
            await self._abort("interrupted", None)
            raise
        finally:
            watch.cancel()
            await self._stop_everything()
        self.times["total"] = time.monotonic() - t_start
        return self.finish(legs, observer)

    async def _with_watch(self, watch: asyncio.Future, coro):
        """Await ``coro`` unless a child dies first (then :class:`ChildFailed` is raised)."""
        task = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)  # the UEs stop at once (no goodbyes when cancelled)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: it is the interruption that is reported
            raise
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        watch.result()  # raises ChildFailed
        raise RuntimeError("the watch ended")  # pragma: no cover

    async def _stop_everything(self) -> None:
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        ended = await self.sup.stop_all()
        self.stopped = ended

    async def _abort(self, why: str, failed: Child | None) -> int:
        """A child died, the user interrupted, or a step failed: stop all, say what was done."""
        self.aborted = True
        if self.view is not None:
            with contextlib.suppress(Exception):
                self.view.__exit__(None, None, None)
        await self._stop_everything()
        c = self.console
        c.print(f"[bold red]demo stopped: {why}[/]")
        if failed is not None:
            tail = failed.log_tail()
            if tail:
                c.print(f"last output of {failed.label}:")
                c.print(tail, markup=False, highlight=False)
        if self.done:
            c.print("done before that: " + "; ".join(self.done))
        if self.runs:
            per = Counter(r.ue.path.value for r in self.runs)
            c.print("UEs answered before that: " + ", ".join(f"{p} {n:,}" for p, n in per.items()))
        c.print("stopped every process it had started; no process or port is left behind:")
        for ch, how in self.stopped:
            c.print(f"  {ch.label} (pid {ch.pid}): {how}")
        if self.opts.report is not None:
            self._copy_artifacts()
            c.print(f"logs: {self.opts.report / 'logs'}")
        return EXIT_FAILED

    def _copy_artifacts(self) -> None:
        dest = self.opts.report
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.provision_files:
            shutil.copy(f, dest / f.name)
        shutil.copytree(self.logs, dest / "logs", dirs_exist_ok=True)

    def finish(self, legs: dict, observer: ObserverResult) -> int:
        o = self.opts
        c = self.console
        rows: list[PathSummary] = []
        latencies: dict[str, list[float]] = {}
        for path in (Path.RELAY, Path.GATEWAY, Path.DIRECT):
            runs = [r for r in self.runs if r.ue.path is path]
            if not runs:
                continue
            side = UE_SIDE_LEG.get(path)
            rows.append(
                summarize_path(
                    path,
                    o.path_label(path),
                    runs,
                    UuCount.from_leg(legs.get(LEG_OF[path])),
                    UuCount.from_leg(legs.get(side)) if side else None,
                )
            )
            latencies[path.value] = [r.latency for r in runs]
        rows.append(
            summarize_path(
                Path.OBSERVER,
                o.path_label(Path.OBSERVER),
                [observer.run],
                UuCount.from_leg(legs.get(LEG_OF[Path.OBSERVER])),
                latencies=observer.latencies,
            )
        )
        latencies[Path.OBSERVER.value] = observer.latencies
        v = verdict(rows, observer.ok, observer.note)
        n = sum(r.ues for r in rows)
        c.print()
        title = f"What {n:,} UEs got — UE phase {self.times['ues']:.1f} s, total {self.times['total']:.1f} s"
        c.print(console_table(rows, title, c.width))
        for note in TABLE_NOTES:
            c.print(f"  {note}", style="dim")
        counters = self._child_counters()
        for line in self._counter_lines(counters, observer):
            c.print(line)
        demo_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c.print(
            "peak memory: "
            + ", ".join(
                f"{ch.label.removeprefix('the ')} {_mib(ch.peak_rss_kib)}" for ch in self.sup.children
            )
            + f", this demo process {_mib(demo_kib)}"
        )
        wrong = [r for r in self.runs if not r.ok]
        for r in wrong[:10]:
            c.print(
                f"  [red]{r.ue.device} ({r.ue.path.value}, {r.ue.role}) expected {r.expected.code} "
                f"{r.expected.ue_service_id or ''}, got {r.code} {r.ue_service_id or ''} {r.detail}[/]"
            )
        c.print(f"[bold {'green' if v.ok else 'red'}]{v.text}[/]")
        if o.report is not None:
            summary = {
                "settings": {k: (str(val) if isinstance(val, FsPath) else val) for k, val in vars(o).items()},
                "times_s": self.times,
                "paths": [r.as_dict() for r in rows],
                "observer": {"seen": observer.seen, "latencies_s": observer.latencies, "note": observer.note},
                "legs": legs,
                "counters": counters,
                "processes": [
                    {"name": ch.name, "pid": ch.pid, "peak_rss_kib": ch.peak_rss_kib}
                    for ch in self.sup.children
                ]
                + [{"name": "demo", "pid": None, "peak_rss_kib": demo_kib}],
                "verdict": {"ok": v.ok, "text": v.text},
            }
            self._copy_artifacts()
            extra = ["## Counters of the actors at shutdown", ""]
            extra += [f"- {line}" for line in self._counter_lines(counters, observer)]
            extra += ["", "## Peak memory (VmHWM)", "", "| process | peak RSS |", "|---|---:|"]
            extra += [f"| {p['name']} | {_mib(p['peak_rss_kib'])} |" for p in summary["processes"]]
            notes = write_report(
                o.report,
                rows=rows,
                runs=[*self.runs, observer.run],
                latencies=latencies,
                summary=summary,
                verdict_text=v.text,
                settings_line=self._settings_line(),
                chart_title=(
                    f"msgin5g demo — {o.ues:,} constrained UEs; relay {o.relay_mode.upper()}; gateway "
                    f"{'bulk' if o.bulk else 'no bulk'} over {o.transport.upper()}; loss {o.loss:g}"
                ),
                extra_md=extra,
            )
            for note in notes:
                c.print(f"[yellow]{note}[/]")
            c.print(f"report: {o.report / 'report.md'} (chart.png, results.csv, summary.json, logs/)")
        return EXIT_OK if v.ok else EXIT_WRONG

    def _settings_line(self) -> str:
        o = self.opts
        return (
            f"`msgin5g demo --ues {o.ues} --relay-share {o.relay_share:g} --relay-mode {o.relay_mode} "
            f"--{'bulk' if o.bulk else 'no-bulk'} --max-batch {o.max_batch} --max-wait-ms {o.max_wait_ms} "
            f"--transport {o.transport} --cm-client {o.cm_client} --loss {o.loss:g} --seed {o.seed}"
            f"{' --insecure' if o.insecure else ''}` — "
            f"UE phase {self.times.get('ues', 0):.1f} s, total {self.times.get('total', 0):.1f} s"
        )

    def _child_counters(self) -> dict:
        """The counters the relay, the gateway and the CM client print when they stop."""
        out = {}
        for ch in self.sup.children:
            marker = {
                "relay": "relay counters at shutdown:",
                "gateway": "gateway counters at shutdown:",
                "cm-client": "cm-client counters at shutdown:",
            }.get(ch.name)
            if marker:
                value = _json_after(ch.log_text(), marker)
                if value is not None:
                    out[ch.name] = value
        return out

    def _counter_lines(self, counters: dict, observer: ObserverResult) -> list[str]:
        lines = []
        gw = counters.get("gateway")
        if gw:
            cm = counters.get("cm-client") or {
                k.removeprefix("cm-"): v for k, v in gw.items() if k.startswith("cm-")
            }
            g, m = Counter(gw), Counter(cm)
            lines.append(
                f"gateway: {g['stored']:,} stored, {g['bulk-operations']:,} bulk flushes → "
                f"{m['bulk-gets']:,} bulk GETs + {m['block2-followups']:,} Block2 follow-ups; "
                f"{m['single-gets']:,} single GETs; {g['answers']:,} answers, {g['retransmissions']:,} "
                f"retransmitted, {g['cache-hits']:,} cached"
            )
        relay = counters.get("relay")
        if relay:
            r = Counter({k: v for k, v in relay.items() if isinstance(v, int)})
            discarded = sum((relay.get("discarded") or {}).values())
            lines.append(
                f"relay: {r['links_established']:,} PC5 links; {r['relayed_up']:,} requests up, "
                f"{r['relayed_down']:,} answers down, {r['retransmitted_up']:,} retransmissions up, "
                f"{discarded:,} discarded"
            )
        lat = ", ".join(f"{1000 * t:.0f} ms" for t in observer.latencies)
        lines.append(
            f"observer: {observer.seen} of {OBSERVER_CHANGES} document changes notified ({lat or '-'})"
        )
        return lines


# --------------------------------------------------------------------------------------------
# The command


@click.command()
@click.option(
    "--ues", default=1000, show_default=True, type=click.IntRange(20, 1_000_000), help="Constrained UEs."
)
@click.option(
    "--relay-share",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Share of the constrained UEs behind the Relay UE; the rest use the Gateway UE.",
)
@click.option("--relay-mode", type=click.Choice(["l3", "l2"]), default="l3", show_default=True)
@click.option("--bulk/--no-bulk", default=True, show_default=True, help="The gateway's service policy.")
@click.option(
    "--max-batch", default=1000, show_default=True, type=click.IntRange(1, 1_000_000), help="UEs per bulk."
)
@click.option("--max-wait-ms", default=500, show_default=True, type=click.IntRange(0, 3_600_000))
@click.option(
    "--transport",
    type=click.Choice(["udp", "tcp"]),
    default="udp",
    show_default=True,
    help="The gateway's Uu transport (coap or coap+tcp); the relay's Uu side is UDP.",
)
@click.option(
    "--cm-client", type=click.Choice(["collocated", "separate"]), default="collocated", show_default=True
)
@click.option(
    "--loss",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 0.9),
    help="Share of UDP datagrams lost on the PC5, MSGin5G-6 and Uu legs.",
)
@click.option("--seed", default=1, show_default=True, help="Fleet layout and loss pattern.")
@click.option(
    "--report",
    "report",
    default=None,
    type=click.Path(file_okay=False, path_type=FsPath),
    help="Write report.md, chart.png, results.csv, summary.json and logs here.",
)
@click.option(
    "--db", default=None, help="Store URL (default: SQLite in a temporary directory); must be empty."
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Lab mode: no OSCORE keys; the SCM-S runs --insecure and UEs claim their identities.",
)
@click.option("--console", "web_console", is_flag=True, help="Serve the SCM-S web console during the run.")
def demo(
    ues,
    relay_share,
    relay_mode,
    bulk,
    max_batch,
    max_wait_ms,
    transport,
    cm_client,
    loss,
    seed,
    report,
    db,
    insecure,
    web_console,
):
    """Run the whole topology on this machine and check that every UE gets what its provisioning
    implies: SCM-S, Relay UE, Gateway UE (bulk), constrained and unconstrained UEs — secured with
    OSCORE keys generated for the run, unless --insecure."""
    opts = DemoOptions(
        ues, relay_share, relay_mode, bulk, max_batch, max_wait_ms, transport, cm_client, loss, seed
    )
    opts.report, opts.db, opts.insecure, opts.console = report, db, insecure, web_console
    console = make_console()
    if report is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            console.print(f"[yellow]--report: the chart needs matplotlib: {MATPLOTLIB_HINT_MARKUP}[/]")
    with tempfile.TemporaryDirectory(prefix="msgin5g-demo-") as tmp:
        code = _run(Demo(opts, console, FsPath(tmp)))
    sys.exit(code)


def _run(demo_run: Demo) -> int:
    """Run the demo's event loop; SIGTERM behaves like Ctrl-C (orderly stop of every child)."""

    async def main() -> int:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await demo_run.run()

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        if not demo_run.aborted:
            demo_run.console.print("[bold red]interrupted[/]")
        return EXIT_INTERRUPTED
