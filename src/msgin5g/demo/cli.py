"""``msgin5g demo``: the whole topology on one machine, with live progress and a report.

It starts (:mod:`.topology`), each as its own process talking real CoAP over loopback, the
SCM-S (on SQLite in a temporary directory unless ``--db`` is given), the Relay UEs
(``--relays``), the Gateway UE (and, with ``--cm-client separate``, its configuration
management client, SEAL-C: SPEC D10), and the wire between them (:mod:`.lossy`: counts every
leg, loses ``--loss`` of the UDP datagrams). It provisions a generated fleet through ``msgin5g
config import`` and ``msgin5g config gateway set`` (:mod:`.plan`), then drives the UEs
(:mod:`.drive`): constrained UEs through the relay each selected and through the gateway,
unconstrained UEs directly, and one UE — an ``msgin5g ue get-config
--observe`` process — that observes its document while the demo changes it.

Secured by default (SPEC D12): every identity gets its OSCORE credentials in the temporary
directory and store (:mod:`.keys`), the SCM-S is secured by them, the Gateway UE with its own key
and a registry of its UEs' keys, and every request of every UE and of the administrator is
protected; ``--insecure`` runs the lab mode instead (identities claimed with the lab option).

Every UE's outcome is checked against what the provisioning implies (:mod:`.oracle`, written
from the SPEC, independent of the server's code); the exit status is 0 only when each UE got
exactly that, 1 when some UE did not, 2 when the run could not be carried out. A child that
dies, Ctrl-C, or SIGTERM stops every process the demo started (:mod:`.procs`) and says what had
been done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path as FsPath

import click
from rich.console import Console

from ..clicommon import output_options
from .drive import OBSERVER_CHANGES, ObserverResult, UeRun, drive_fleet, observe, reask_policy
from .keys import DemoKeys, make_keys
from .lossy import raise_fd_limit
from .oracle import expected
from .plan import MAX_AUTO_RELAYS, FleetPlan, Path, assign_relays, make_plan
from .procs import Child, ChildFailed, Supervisor
from .progress import ProgressView
from .report import MATPLOTLIB_HINT_MARKUP, TABLE_NOTES, console_table, write_report
from .stats import PathSummary, UuCount, summarize_path, verdict
from .topology import (
    LEG_OF,
    RELAY_LINKS,
    UE_SIDE_LEG,
    DemoOptions,
    Topology,
    actor_counters,
    check_store_empty,
    leg_total,
    provision,
    start_topology,
)

EXIT_OK, EXIT_WRONG, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_RELAYS = 256  # --relays N: each is a process


def make_console(quiet: bool = False) -> Console:
    """Rich on a terminal; plain, 140 columns wide, without colour codes in logs and pipes; silent
    with ``-q`` and ``--json`` (which prints one JSON summary instead)."""
    if quiet:
        return Console(quiet=True)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=140, no_color=True, highlight=False)
    return console


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def _peak_memory(children: list[Child]) -> list[str]:
    """Each child's peak RSS; several Relay UEs as one entry (how many, the largest)."""
    relays = [ch for ch in children if ch.name == "relay" or ch.name.startswith("relay-")]
    out = [f"{ch.label.removeprefix('the ')} {_mib(ch.peak_rss_kib)}" for ch in children if ch not in relays]
    if len(relays) > 1:
        peak = max((ch.peak_rss_kib or 0 for ch in relays), default=0)
        out.insert(1, f"{len(relays)} Relay UEs up to {_mib(peak or None)} each")
    elif relays:
        out.insert(1, f"Relay UE {_mib(relays[0].peak_rss_kib)}")
    return out


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
        #: what ``--json`` prints at the end (the same as the report's summary.json), or why it stopped
        self.summary: dict = {}
        self.console_url: str | None = None
        self.json_lines = False  # --json: the console's URL as a JSON line as soon as it is up

    def say(self, text: str) -> None:
        self.console.print(text)

    def _record(self, run: UeRun) -> None:
        self.runs.append(run)
        self.view.record(run)

    # -- the whole run ---------------------------------------------------------------------------
    async def run(self) -> int:
        o = self.opts
        plan = self.plan
        t_start = time.monotonic()
        c = self.console
        n_relay, n_gw, n_direct = (len(plan.on(p)) for p in (Path.RELAY, Path.GATEWAY, Path.DIRECT))
        c.rule("[bold]msgin5g demo")
        bulk = f"bulk ≤{o.max_batch:,} UEs / {o.max_wait_ms} ms" if o.bulk else "no bulk"
        n_relays = o.relay_count(n_relay)
        relays = "the Relay UE" if n_relays == 1 else f"{n_relays} Relay UEs"
        self.say(
            f"fleet: {o.ues:,} constrained UEs — {n_relay:,} via {relays}, {n_gw:,} via the Gateway UE — "
            f"plus {n_direct} UEs directly and 1 observing its document"
        )
        self.say(
            f"       relay {o.relay_mode.upper()}, {o.relay_links} PC5 links each; gateway {bulk}, Uu over "
            f"{o.transport.upper()}, CM client {o.cm_client}; loss {o.loss:g}; seed {o.seed}; UE ACK_TIMEOUT "
            f"{o.ue_ack_timeout:g} s"
        )
        if o.db:
            check_store_empty(self.db_url)
        if not o.insecure:
            t_keys = time.monotonic()
            self.keys = make_keys(plan, self.workdir, self.db_url)
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
            topo: Topology = await self._with_watch(
                watch,
                start_topology(
                    self.sup, o, self.keys, self.workdir, self.db_url, self.fd_limit, self.say, n_relay
                ),
            )
            self.done.append("started the SCM-S, the wire, the Relay UE and the Gateway UE")
            self.console_url = topo.server.ready.get("console")
            if self.json_lines and self.console_url:
                click.echo(json.dumps({"console": self.console_url}), nl=True)
            self.wire, ep = topo.wire, topo.ep
            self.provision_files = await self._with_watch(
                watch, provision(plan, ep["scm"], self.db_url, self.keys, self.workdir, self.say)
            )
            self.done.append("provisioned the documents and the gateway registry")
            self.times["start"] = time.monotonic() - t_start
            docs = plan.all_documents()
            exp = {u: expected(u, docs, plan.gateway_coverage) for u in plan.ues}
            totals = {p: len(plan.on(p)) for p in (Path.RELAY, Path.GATEWAY, Path.DIRECT, Path.OBSERVER)}
            totals = {p: n for p, n in totals.items() if n}
            self.say(f"configuring {sum(totals.values()):,} UEs …")
            t_ues = time.monotonic()
            with ProgressView(c, o, totals) as self.view:
                ticker = asyncio.ensure_future(self.view.ticker(self.wire))
                try:
                    fleet = [u for u in plan.ues if u.path is not Path.OBSERVER]
                    _, observer = await self._with_watch(
                        watch,
                        asyncio.gather(
                            drive_fleet(
                                fleet,
                                ep,
                                exp,
                                keys=self.keys,
                                fd_limit=self.fd_limit,
                                max_wait_ms=o.max_wait_ms,
                                record=self._record,
                                relay_links=o.relay_links,
                                reask=reask_policy(o.ue_ack_timeout),
                                relays=topo.relay_pc5,
                                relay_of=assign_relays(plan.ues, len(topo.relays)),
                            ),
                            observe(
                                self.sup, plan.observer, exp[plan.observer], ep, self.keys, self.view.record
                            ),
                        ),
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
        self.summary = {"ok": False, "error": why, "done": list(self.done)}
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
                    UuCount.from_leg(leg_total(legs, side)) if side else None,
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
        counters = actor_counters(self.sup.children)
        for line in self._counter_lines(counters, observer):
            c.print(line)
        demo_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c.print(
            "peak memory: "
            + ", ".join(_peak_memory(self.sup.children))
            + f", this demo process {_mib(demo_kib)}"
        )
        wrong = [r for r in self.runs if not r.ok]
        for r in wrong[:10]:
            c.print(
                f"  [red]{r.ue.device} ({r.ue.path.value}, {r.ue.role}) expected {r.expected.code} "
                f"{r.expected.ue_service_id or ''}, got {r.code} {r.ue_service_id or ''} {r.detail}[/]"
            )
        c.print(f"[bold {'green' if v.ok else 'red'}]{v.text}[/]")
        summary = {
            "settings": {k: (str(val) if isinstance(val, FsPath) else val) for k, val in vars(o).items()},
            "times_s": self.times,
            "paths": [r.as_dict() for r in rows],
            "observer": {"seen": observer.seen, "latencies_s": observer.latencies, "note": observer.note},
            "legs": legs,
            "counters": counters,
            "processes": [
                {"name": ch.name, "pid": ch.pid, "peak_rss_kib": ch.peak_rss_kib} for ch in self.sup.children
            ]
            + [{"name": "demo", "pid": None, "peak_rss_kib": demo_kib}],
            "verdict": {"ok": v.ok, "text": v.text},
        }
        self.summary = {"ok": v.ok, **summary}
        if o.report is not None:
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
            f"--transport {o.transport} --cm-client {o.cm_client} --loss {o.loss:g} --seed {o.seed} "
            f"--relays {o.relays or 'auto'} --relay-links {o.relay_links} "
            f"--ue-ack-timeout {o.ue_ack_timeout:g}"
            f"{' --insecure' if o.insecure else ''}` — "
            f"UE phase {self.times.get('ues', 0):.1f} s, total {self.times.get('total', 0):.1f} s"
        )

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
            gave_up = (relay.get("gave_up") or {}).get("uu", 0)
            lines.append(
                f"relay: {r['links_established']:,} PC5 links; {r['relayed_up']:,} requests up, "
                f"{r['relayed_down']:,} answers down, {r['retransmitted_up']:,} retransmissions up, "
                f"{r['duplicates_absorbed']:,} UE retransmissions answered by the relay, "
                f"{r['retransmitted_down']:,} answers retransmitted down, {gave_up:,} × 5.04, "
                f"{discarded:,} discarded"
            )
        lat = ", ".join(f"{1000 * t:.0f} ms" for t in observer.latencies)
        lines.append(
            f"observer: {observer.seen} of {OBSERVER_CHANGES} document changes notified ({lat or '-'})"
            + (f"; {observer.note}" if observer.note else "")
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
    help="Share of UDP datagrams lost on every PC5, MSGin5G-6 and Uu leg, each way (seeded by --seed).",
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
@click.option(
    "--relay-links",
    default=RELAY_LINKS,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="The Relay UE's PC5 link table (its --max-links): UEs it serves at a time.",
)
@click.option(
    "--relays",
    default="auto",
    show_default=True,
    callback=lambda _ctx, _param, value: _relays_option(value),
    help="Relay UEs to start, each a 'msgin5g relay' process with --relay-links links; each remote UE "
    f"selects one. auto: enough for every remote UE to have a link at once (at most {MAX_AUTO_RELAYS}).",
)
@click.option(
    "--ue-ack-timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.05, 60.0),
    help="The constrained UEs' ACK_TIMEOUT in s (RFC 7252 §4.8; 2 s is its default for unknown paths).",
)
@output_options
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
    relay_links,
    relays,
    ue_ack_timeout,
    as_json,
    quiet,
):
    """Run the whole topology on this machine and check that every UE gets what its provisioning
    implies: SCM-S, Relay UE, Gateway UE (bulk), constrained and unconstrained UEs — secured with
    OSCORE keys generated for the run, unless --insecure."""
    opts = DemoOptions(
        ues, relay_share, relay_mode, bulk, max_batch, max_wait_ms, transport, cm_client, loss, seed
    )
    opts.report, opts.db, opts.insecure, opts.console = report, db, insecure, web_console
    opts.relay_links, opts.relays, opts.ue_ack_timeout = relay_links, relays, ue_ack_timeout
    from ..coap import aiocoap_tweaks

    aiocoap_tweaks.install_process_tweaks()  # this process protects every UE's requests
    console = make_console(quiet or as_json)
    if report is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            console.print(f"[yellow]--report: the chart needs matplotlib: {MATPLOTLIB_HINT_MARKUP}[/]")
    with tempfile.TemporaryDirectory(prefix="msgin5g-demo-") as tmp:
        run = Demo(opts, console, FsPath(tmp))
        run.json_lines = as_json
        code = _run(run)
    if as_json:
        click.echo(json.dumps({"exit": code, "console": run.console_url, **run.summary}, default=str))
    elif quiet and code != EXIT_OK:  # -q: silent when every UE got what it should; else say why
        click.echo(f"demo: {_failure_line(run, code)}", err=True)
    sys.exit(code)


def _relays_option(value: str) -> int | None:
    """``--relays``: ``auto`` (None) or a number of Relay UEs, 1 … 256."""
    if value.strip().lower() == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_RELAYS:
        raise click.BadParameter(f"'auto' or a number of Relay UEs from 1 to {MAX_RELAYS}, not {value!r}")
    return n


def _failure_line(run: Demo, code: int) -> str:
    s = run.summary
    if code == EXIT_INTERRUPTED:
        return "interrupted"
    if "error" in s:
        return f"stopped: {s['error']}"
    return s.get("verdict", {}).get("text", "failed")


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
