"""The demo's topology: every actor started as its own process, the wire between them, the fleet
provisioned (SPEC §1, D8–D12).

Each actor is an ordinary ``msgin5g`` command (:mod:`.procs` starts, watches and stops it). It is
ready when it prints its machine-readable ready line — one JSON object with the addresses it
serves, e.g. ``{"ready": "scm-s", "listen": {"coap": "coap://127.0.0.1:40321/su-uc/v1", ...}}`` —
so nothing here depends on the wording of the actors' banners. Every port is picked by the
kernel on 127.0.0.1.

Every radio leg goes through the wire (:mod:`.lossy`): the PC5 side of each Relay UE (``--relays``:
as many as the remote UEs need, each with SPEC D8's link table), the MSGin5G-6 side of the Gateway
UE, and the Uu side of the relays, of the gateway (or its separate
CM client, SPEC D10), of the directly attached UEs and of the observing UE. ``--loss`` applies
to the UDP datagrams of every one of them, both ways; a TCP leg is reliable by definition and
only counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path as FsPath

import click

from ..api import parse_api_root
from ..store import open_store
from .keys import DemoKeys
from .plan import GATEWAY_ID, SENSOR_TAC, SERVICE_ID, FleetPlan, Path, relay_count, write_provisioning
from .procs import Child, ChildFailed, Supervisor, msgin5g_argv

RELAY_LINKS = 8  # TS 23.304's recommended PC5 link table size: the relay serves 8 UEs at a time

#: the wire leg each path's Uu traffic crosses, and the UE-side leg of the relayed paths
LEG_OF = {
    Path.RELAY: "uu-relay",
    Path.GATEWAY: "uu-gateway",
    Path.DIRECT: "uu-direct",
    Path.OBSERVER: "uu-observer",
}
UE_SIDE_LEG = {Path.RELAY: "pc5", Path.GATEWAY: "msgin5g-6"}
UDP_LEGS = ("pc5", "msgin5g-6", "uu-relay", "uu-direct", "uu-observer")


def relay_name(k: int) -> str:
    """The process name of Relay UE ``k`` (0-based): ``relay``, ``relay-2``, …"""
    return "relay" if k == 0 else f"relay-{k + 1}"


def pc5_leg(k: int) -> str:
    """The wire leg in front of Relay UE ``k``: ``pc5``, ``pc5-2``, …"""
    return "pc5" if k == 0 else f"pc5-{k + 1}"


def leg_total(legs: dict, name: str) -> dict | None:
    """The counters of leg ``name`` and of its siblings ``name-2``, ``name-3``, … added up (the
    PC5 legs of several Relay UEs: the relay path's UE side as a whole)."""
    parts = [
        v for k, v in legs.items() if k == name or (k.startswith(name + "-") and k[len(name) + 1 :].isdigit())
    ]
    if not parts:
        return None
    total = {"up": [0, 0, 0], "down": [0, 0, 0], "clients": 0}
    for leg in parts:
        for way in ("up", "down"):
            total[way] = [a + b for a, b in zip(total[way], leg[way], strict=False)]
        total["clients"] += leg.get("clients", 0)
    return total


def add_counters(a: dict, b: dict) -> dict:
    """Two actors' counters added up: numbers summed, nested tables merged the same way."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, bool) or k not in out:
            out[k] = v
        elif isinstance(v, (int, float)) and isinstance(out[k], (int, float)):
            out[k] = out[k] + v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = add_counters(out[k], v)
        elif isinstance(v, list) and isinstance(out[k], list):
            out[k] = out[k] + v
    return out


class PreconditionFailed(click.ClickException):
    """The demo cannot run as asked (a store that is not empty, a provisioning step refused): exit 2,
    as for any run that could not be carried out — 1 means "some UE got the wrong answer"."""

    exit_code = 2


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
    console: bool = False  # serve the SCM-S web console during the run (SPEC D15)
    relay_links: int = RELAY_LINKS  # each Relay UE's PC5 link table (--max-links; SPEC D8)
    relays: int | None = None  # Relay UEs to start; None: enough for every remote UE (--relays auto)
    ue_ack_timeout: float = 2.0  # the constrained UEs' ACK_TIMEOUT (RFC 7252 §4.8; SPEC D13)

    def relay_count(self, relay_ues: int) -> int:
        return relay_count(self.relays, relay_ues, self.relay_links)

    def path_label(self, path: Path) -> str:
        return {
            Path.RELAY: f"relay ({self.relay_mode.upper()})",
            Path.GATEWAY: f"gateway ({'bulk' if self.bulk else 'no bulk'}, {self.transport.upper()})",
            Path.DIRECT: "direct",
            Path.OBSERVER: "observer",
        }[path]


def uri(addr: tuple[str, int], scheme: str = "coap") -> str:
    return f"{scheme}://{hostport(addr)}"


def hostport(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


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


def check_store_empty(db_url: str) -> None:
    """A given store must be empty: the expectations are computed from this run's provisioning."""
    try:
        store = open_store(db_url)
    except Exception as e:
        raise PreconditionFailed(f"cannot open the store {db_url}: {e}") from None
    try:
        n = store.count(SERVICE_ID)
    finally:
        store.close()
    if n:
        raise PreconditionFailed(
            f"the store {db_url} already holds {n} configuration documents for '{SERVICE_ID}'; "
            "the demo provisions its own fleet and needs an empty store (e.g. a fresh database: "
            "createdb -h 127.0.0.1 -U postgres msgin5g_demo)"
        )


@dataclass
class Topology:
    """The running actors and where each one is reached (every address through the wire but
    ``scm``, the SCM-S itself, which only the administrator uses)."""

    wire: Wire
    ep: dict[str, tuple[str, int]]
    server: Child
    relays: list[Child]  # the Relay UEs (--relays)
    relay_pc5: list[tuple[str, int]]  # where the remote UEs reach each of them (its PC5 leg)
    gateway: Child
    cm_client: Child | None


async def start_topology(
    sup: Supervisor,
    opts: DemoOptions,
    keys: DemoKeys | None,
    workdir: FsPath,
    db_url: str,
    fd_limit: int,
    say,
    relay_ues: int = 0,
) -> Topology:
    """The SCM-S and the wire, then the Relay UEs (enough for ``relay_ues`` remote UEs with
    ``--relays auto``) and the gateway behind their legs."""
    o = opts
    security = [] if keys else ["--insecure"]  # secured: the keys are in its store
    server_task = sup.start(
        "server",
        "the SCM-S",
        ["server", *security, "--port", "0", "--db", db_url, *(["--http", "0"] if o.console else [])],
        "scm-s",
    )
    wire_task = sup.start(
        "wire",
        "the wire (lossy forwarder)",
        [sys.executable, "-m", "msgin5g.demo.lossy", "--loss", str(o.loss), "--seed", str(o.seed)],
        None,
        stdin_pipe=True,
        stdout_pipe=True,
    )
    server, wire_child = await asyncio.gather(server_task, wire_task)
    root = parse_api_root(server.ready["listen"]["coap"])
    scm = (root.host, root.port)
    say(
        f"  started {server.label} (pid {server.pid}): {uri(scm)}/su-uc/v1 (UDP and TCP), "
        f"store {db_url}" + ("" if keys else ", INSECURE lab mode")
    )
    if server.ready.get("console"):
        say(f"  console of the SCM-S (up during the run):\n  {server.ready['console']}")
    wire = Wire(wire_child)
    loss = f"loses {o.loss:.0%} of the UDP datagrams on every leg, both ways" if o.loss else "loses nothing"
    if o.loss and o.transport == "tcp":
        loss += " (the gateway's Uu leg is TCP: reliable)"
    say(f"  started {wire_child.label} (pid {wire_child.pid}): counts every leg, {loss}")
    ep: dict = {"scm": scm}
    for leg in ("uu-relay", "uu-direct", "uu-observer"):
        ep[leg] = await wire.leg("udp", leg, scm)
    ep["uu-gateway"] = await wire.leg(o.transport, "uu-gateway", scm)
    gw_scheme = "coap+tcp" if o.transport == "tcp" else "coap"

    n_relays = o.relay_count(relay_ues)

    async def relay(k: int) -> Child:
        args = ["relay", "--listen", "127.0.0.1:0", "--server", uri(ep["uu-relay"]), "--mode", o.relay_mode]
        args += ["--max-links", str(o.relay_links), "--admin", "127.0.0.1:0"]
        args += ["--ack-timeout", f"{o.ue_ack_timeout:g}"]  # the relay's legs run the UEs' timers
        return await sup.start(
            relay_name(k), f"Relay UE {k + 1}" if n_relays > 1 else "the Relay UE", args, "relay"
        )

    async def gateway() -> tuple[Child, Child | None]:
        cm = None
        # secured: its own key towards the SCM-S, and its UEs' keys on MSGin5G-6 (SPEC D12)
        uu_identity = ["--credentials", str(keys.gateway.path)] if keys else ["--gateway-id", GATEWAY_ID]
        state = keys.gateway_state if keys is not None else workdir / "gateway-state.db"
        args = ["gateway", "--listen", "127.0.0.1:0", "--state", str(state)]
        if keys is not None:  # its UEs' keys are rows of its state database
            args += ["--oscore"]
        args += ["--bulk" if o.bulk else "--no-bulk", "--max-batch", str(o.max_batch)]
        args += ["--max-wait-ms", str(o.max_wait_ms)]
        if o.cm_client == "separate":
            cm_args = ["cm-client", "--listen", "127.0.0.1:0", "--server", uri(ep["uu-gateway"], gw_scheme)]
            cm = await sup.start("cm-client", "the CM client (SEAL-C)", [*cm_args, *uu_identity], "cm-client")
            args += ["--cm-client", uri(cm.listen("seal-c"))]
        else:
            args += ["--server", uri(ep["uu-gateway"], gw_scheme), *uu_identity]
        return await sup.start("gateway", "the Gateway UE", args, "gateway"), cm

    *relays, (gw_child, cm_child) = await asyncio.gather(*(relay(k) for k in range(n_relays)), gateway())
    ep["relay"] = relays[0].listen("pc5")
    ep["gateway"] = gw_child.listen("msgin5g-6")
    # each Relay UE its own PC5 leg ("pc5", "pc5-2", …); their Uu flows share the relay path's leg
    relay_pc5 = [await wire.leg("udp", pc5_leg(k), ch.listen("pc5")) for k, ch in enumerate(relays)]
    ep["pc5"] = relay_pc5[0]
    ep["msgin5g-6"] = await wire.leg("udp", "msgin5g-6", ep["gateway"])
    mode = f"{o.relay_mode.upper()} mode, {o.relay_links} PC5 links"
    if n_relays == 1:
        say(f"  started {relays[0].label} (pid {relays[0].pid}): PC5 {hostport(ep['relay'])}, {mode}")
    else:
        say(
            f"  started {n_relays} Relay UEs (pids {', '.join(str(ch.pid) for ch in relays)}), each {mode}; "
            f"each remote UE selects one by its place in the layout (≤ {-(-relay_ues // n_relays)} per relay)"
        )
    if cm_child is not None:
        say(f"  started {cm_child.label} (pid {cm_child.pid}): SEAL-C {hostport(cm_child.listen('seal-c'))}")
    where = "CM client separate" if cm_child else "CM client collocated"
    say(
        f"  started {gw_child.label} (pid {gw_child.pid}): MSGin5G-6 {hostport(ep['gateway'])}, "
        f"{where}, Uu over {o.transport.upper()}"
    )
    say(
        "  ports: every process picked a free port on 127.0.0.1; every PC5, MSGin5G-6 and Uu leg "
        "goes through the wire"
    )
    return Topology(wire, ep, server, relays, relay_pc5, gw_child, cm_child)


async def provision(
    plan: FleetPlan, scm: tuple[str, int], db_url: str, keys: DemoKeys | None, workdir: FsPath, say
) -> list[FsPath]:
    """``msgin5g config import`` over CoAP (as administrator) and the gateway registry
    (``msgin5g config gateway set``); returns the provisioning files."""
    files = write_provisioning(plan, workdir)
    counts: dict[str, int] = {}
    admin = ["--credentials", str(keys.admin.path)] if keys else []
    for f in files:
        rc, out = await run_command(["config", "import", str(f), "--server", uri(scm), *admin])
        if rc != 0:
            raise PreconditionFailed(f"provisioning {f.name} failed: {out}")
        imported = re.search(r"imported (\d+)", out)
        counts[f.name] = int(imported.group(1)) if imported else 0
    rc, out = await run_command(
        ["config", "gateway", "set", GATEWAY_ID, *plan.gateway_set_args(), "--db", db_url]
    )
    if rc != 0:
        raise PreconditionFailed(f"registering the gateway failed: {out}")
    outside = plan.outside_gateway
    say(
        f"  provisioned {sum(counts.values()):,} documents with 'msgin5g config import' "
        f"({', '.join(f'{name}: {n}' for name, n in counts.items())})"
    )
    say(
        f"  registered gateway {GATEWAY_ID} with 'msgin5g config gateway set': TAC {SENSOR_TAC} "
        f"except SNR {outside.start}-{outside.stop - 1}"
    )
    return files


def _json_after(text: str, marker: str) -> dict | None:
    """The JSON document printed after ``marker`` in a child's log (its counters at shutdown)."""
    i = text.rfind(marker)
    if i < 0:
        return None
    with contextlib.suppress(ValueError):
        return json.JSONDecoder().raw_decode(text[i + len(marker) :].lstrip())[0]
    return None


def actor_counters(children: list[Child]) -> dict:
    """The counters the relays (added up), the gateway and the CM client print when they stop."""
    markers = {
        "relay": "relay counters at shutdown:",
        "gateway": "gateway counters at shutdown:",
        "cm-client": "cm-client counters at shutdown:",
    }
    out = {}
    for ch in children:
        name = "relay" if ch.name.startswith("relay-") else ch.name
        if name in markers:
            value = _json_after(ch.log_text(), markers[name])
            if value is not None:
                out[name] = add_counters(out[name], value) if name in out else value
    return out
