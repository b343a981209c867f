"""Configurations per second through a Relay UE, layer 3 vs layer 2 vs direct (SPEC D8; docs/relay.md).

One run, loopback only, three processes so that each has a CPU of its own as far as the machine
allows: the SCM-S (``start_server``, SQLite), the relay (``msgin5g relay``, the real CLI), and this
driver with N constrained UEs (default 1,000), each on its own UDP endpoint and using the same
client (:class:`msgin5g.ue.via_relay.ConstrainedUe`) in every mode:

* ``direct`` — each UE sends the §3.1 GET straight to the SCM-S;
* ``l3`` — through ``msgin5g relay --mode l3`` (a NAT: one upstream port per remote UE);
* ``l2`` — through ``msgin5g relay --mode l2`` (one upstream address per remote UE, 127.0.0.0/8).

PC5 links are established before the clock starts (a link outlives many requests); the timed part
is every UE getting its configuration once, at most ``--window`` UEs in flight at a time (so that
no socket buffer overflows — a burst of 1,000 datagrams would otherwise be dropped by the kernel
and the numbers would measure CoAP's 2-s retransmission timer). Each configuration is checked
(2.05 with the UE's own ``ueServiceId``). The best of ``--rounds`` rounds is reported per mode.

``--uu-delay-ms D`` adds D ms to every datagram in each direction on the Uu side (relay ↔ SCM-S,
and direct UE ↔ SCM-S), emulating a cellular round trip of 2·D: a small UDP forwarder in its own
process that keeps one upstream socket per source endpoint, so layer-2 and direct UEs stay
distinct at the SCM-S. Default 0 (pure loopback).

``--profile DIR`` runs the relay under cProfile (one file per mode); the CPU seconds of the relay,
the SCM-S and the driver in each timed round are reported either way. ``--relay-src DIR`` runs the
relay from another tree's ``src`` (e.g. a baseline commit checked out with ``git worktree add``)
with this tree's driver and SCM-S.

Usage: ``python bench/bench_relay.py [--ues 1000] [--rounds 3] [--window 100] [--uu-delay-ms 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from msgin5g.model import imei_urn
from procs import cpu_seconds

try:
    from msgin5g.outcome import Outcome
except ImportError:  # an older tree (a baseline run with its src on PYTHONPATH)
    from msgin5g.ue.outcome import Outcome
from msgin5g.ue.via_relay import ConstrainedUe, config_query_uri, get_request, result_from_response

TAC = "35209900"
DOMAIN = "msgin5g.example"

SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from msgin5g.server.app import ServerConfig, start_server
    from msgin5g.server.service import ServiceConfig

    DOMAIN = sys.argv[3]

    async def main(port, db):
        srv = await start_server(ServerConfig(port=port, db_url=db, insecure=True, tcp=False,
                                              service=ServiceConfig(service_domains={"msgin5g": DOMAIN})))
        srv.store.import_docs("msgin5g", [json.loads(line) for line in sys.stdin])
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
    """
)

DELAY_SCRIPT = textwrap.dedent(
    """
    # Uu delay emulation: per-source NAT-like UDP forwarder adding a fixed one-way delay.
    import asyncio, socket, sys

    async def main(listen_port, server_port, delay):
        loop = asyncio.get_running_loop()
        server = ("127.0.0.1", server_port)
        front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        front.bind(("127.0.0.1", listen_port)); front.setblocking(False)
        for s in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            front.setsockopt(socket.SOL_SOCKET, s, 1 << 22)
        backs = {}

        def back_readable(src, sock):
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    return
                loop.call_later(delay, front.sendto, data, src)

        def front_readable():
            while True:
                try:
                    data, src = front.recvfrom(65535)
                except BlockingIOError:
                    return
                sock = backs.get(src)
                if sock is None:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.setblocking(False); sock.connect(server)
                    backs[src] = sock
                    loop.add_reader(sock.fileno(), back_readable, src, sock)
                loop.call_later(delay, sock.send, data)

        loop.add_reader(front.fileno(), front_readable)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ue_uri(i: int) -> str:
    return imei_urn(TAC, i)


def documents(n: int):
    """One document per UE (URI match), as provisioning would create them."""
    for i in range(n):
        data = {"msgin5gServerAddress": "coap://msg.example", "ueServiceId": f"ue{i}@{DOMAIN}"}
        yield {
            "valServiceDomain": DOMAIN,
            "valUeIds": {"uris": [ue_uri(i)]},
            "ueConfigs": [{"configType": "ON_NETWORK", "configData": json.dumps(data)}],
        }


async def wait_ready(proc: asyncio.subprocess.Process, what: str, timeout: float = 60.0) -> str:
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"{what} exited: {(await proc.stdout.read()).decode()[-2000:]}")
    return line.decode()


async def stop(proc: asyncio.subprocess.Process) -> bytes:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return out or b""


def relay_env(args) -> dict[str, str]:
    """The relay's environment: ``--relay-src`` runs another tree's relay (a baseline) against this
    tree's driver and SCM-S, so that only the relay differs."""
    env = dict(os.environ)
    if args.relay_src:
        env["PYTHONPATH"] = str(args.relay_src)
    return env


@dataclass
class ModeResult:
    mode: str
    rates: list[float] = field(default_factory=list)
    link_seconds: float = 0.0
    relay_counters: dict = field(default_factory=dict)
    relay_cpu: list[float] = field(default_factory=list)  # the relay's CPU seconds per timed round
    server_cpu: list[float] = field(default_factory=list)  # the SCM-S's
    driver_cpu: list[float] = field(default_factory=list)  # this process's (the constrained UEs)

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else 0.0


async def configure_all(ues: list[ConstrainedUe], uris: list[str], window: int, via_proxy: bool) -> float:
    """Every UE gets its configuration once; returns configurations per second."""
    sem = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with sem:
            resp = await ues[i].fetch(get_request(uris[i], via_proxy), timeout=60)
        result = result_from_response(resp)
        if result.outcome is not Outcome.CONFIGURED or result.config.ue_service_id != f"ue{i}@{DOMAIN}":
            raise RuntimeError(f"UE {i}: {result.outcome} {result.detail}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(ues))))
    return len(ues) / (time.perf_counter() - t0)


async def run_mode(mode: str, args, uu_port: int, api_base: str) -> ModeResult:
    n = args.ues
    uris = [config_query_uri(api_base, "msgin5g", ue_uri(i)) for i in range(n)]
    res = ModeResult(mode)
    relay = None
    try:
        if mode == "direct":
            ues = [await ConstrainedUe("127.0.0.1", uu_port).open() for _ in range(n)]
        else:
            pc5_port = free_port()
            profile = []
            if args.profile:  # the relay under cProfile, one file per run
                args.profile.mkdir(parents=True, exist_ok=True)
                runs = len(list(args.profile.glob(f"relay-{mode}-{n}-*.prof")))
                profile = ["-m", "cProfile", "-o", str(args.profile / f"relay-{mode}-{n}-{runs}.prof")]
            relay = await asyncio.create_subprocess_exec(
                sys.executable, *profile, "-m", "msgin5g.cli", "relay", "--listen", f"127.0.0.1:{pc5_port}",
                "--server", f"coap://127.0.0.1:{uu_port}", "--mode", mode, "--max-links", str(n),
                "--admin", "none", "--link-timeout", "600",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=relay_env(args),
            )  # fmt: skip
            await wait_ready(relay, "relay")
            ues = [await ConstrainedUe("127.0.0.1", pc5_port, l2_id=i + 1).open() for i in range(n)]
            t0 = time.perf_counter()
            sem = asyncio.Semaphore(args.window)

            async def link(ue: ConstrainedUe) -> None:
                async with sem:
                    await ue.establish_link(timeout=30)

            await asyncio.gather(*(link(ue) for ue in ues))
            res.link_seconds = time.perf_counter() - t0
        await configure_all(ues, uris, args.window, via_proxy=mode != "direct")  # warm-up, not counted
        for _ in range(args.rounds):
            cpu0 = cpu_seconds(relay.pid) if relay is not None else None
            srv0, drv0 = cpu_seconds(args.server_pid), time.process_time()
            res.rates.append(await configure_all(ues, uris, args.window, via_proxy=mode != "direct"))
            if cpu0 is not None:
                res.relay_cpu.append(round(cpu_seconds(relay.pid) - cpu0, 2))
            res.server_cpu.append(round(cpu_seconds(args.server_pid) - srv0, 2))
            res.driver_cpu.append(round(time.process_time() - drv0, 2))
        for ue in ues:
            await ue.close(release=False)
    finally:
        if relay is not None:
            out = (await stop(relay)).decode()
            start = out.find("{", out.find("relay counters at shutdown"))
            if start >= 0:
                res.relay_counters = json.loads(out[start:])
    return res


async def scenario(args, scm_port: int, delay_ms: float) -> dict:
    """direct, l3 and l2 with ``delay_ms`` added each way on the Uu side."""
    delay = None
    try:
        uu_port = scm_port
        if delay_ms > 0:
            uu_port = free_port()
            delay = await asyncio.create_subprocess_exec(
                sys.executable, "-c", DELAY_SCRIPT, str(uu_port), str(scm_port), str(delay_ms / 1000),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            await wait_ready(delay, "Uu delay forwarder")
        # the UEs name the SCM-S by the apiRoot they reach it at (through the forwarder, if any)
        api_base = f"coap://127.0.0.1:{uu_port}/su-uc/v1"
        results = {mode: await run_mode(mode, args, uu_port, api_base) for mode in args.modes}
    finally:
        if delay is not None:
            await stop(delay)
    out: dict = {
        "uu_delay_ms": delay_ms,
        "configs_per_s": {m: round(r.best, 1) for m, r in results.items()},
        "all_rounds": {m: [round(x, 1) for x in r.rates] for m, r in results.items()},
        "link_setup_s": {m: round(r.link_seconds, 3) for m, r in results.items() if m != "direct"},
        "relay_cpu_s_rounds": {m: r.relay_cpu for m, r in results.items() if r.relay_cpu},
        "server_cpu_s_rounds": {m: r.server_cpu for m, r in results.items() if r.server_cpu},
        "driver_cpu_s_rounds": {m: r.driver_cpu for m, r in results.items()},
        "relay_counters": {
            m: {
                k: r.relay_counters.get(k)
                for k in ("relayed_up", "retransmitted_up", "relayed_down", "errors")
            }
            for m, r in results.items()
            if r.relay_counters
        },
    }
    direct = results.get("direct")
    if direct and direct.best:
        out["ratio_to_direct"] = {
            m: round(r.best / direct.best, 3) for m, r in results.items() if m != "direct"
        }
    if "l2" in results and "l3" in results and results["l3"].best:
        out["l2_over_l3"] = round(results["l2"].best / results["l3"].best, 2)
    return out


async def main_async(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-relay-")
    scm_port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER_SCRIPT, str(scm_port), f"sqlite:///{tmp}/scm.db", DOMAIN,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    server.stdin.write("".join(json.dumps(d) + "\n" for d in documents(args.ues)).encode())
    await server.stdin.drain()
    server.stdin.close()
    try:
        await wait_ready(server, "SCM-S")
        args.server_pid = server.pid
        scenarios = [await scenario(args, scm_port, d) for d in args.uu_delay_ms]
    finally:
        await stop(server)
    report = {"ues": args.ues, "window": args.window, "rounds": args.rounds, "cpus": os.cpu_count(),
              "scenarios": scenarios}  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ues", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=100, help="UEs with a request in flight at a time")
    ap.add_argument("--uu-delay-ms", type=float, nargs="+", default=[0.0, 5.0],
                    help="one-way delays added on the Uu side, one scenario each")  # fmt: skip
    ap.add_argument("--modes", nargs="+", default=["direct", "l3", "l2"], choices=["direct", "l3", "l2"])
    ap.add_argument("--profile", type=Path, default=None, help="run the relay under cProfile, files here")
    ap.add_argument("--relay-src", type=Path, default=None,
                    help="run the relay from this src directory (another tree's)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print only the JSON report")
    args = ap.parse_args(argv)
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.ues} constrained UEs, window {args.window}, best of {args.rounds} rounds, "
        f"{report['cpus']} CPUs"
    )
    for sc in report["scenarios"]:
        print(f"Uu delay {sc['uu_delay_ms']:g} ms each way:")
        for mode, rate in sc["configs_per_s"].items():
            ratio = sc.get("ratio_to_direct", {}).get(mode)
            rounds = ", ".join(f"{x:.0f}" for x in sc["all_rounds"][mode])
            extra = f"  ({ratio:.2f}x direct)" if ratio is not None else ""
            print(f"  {mode:6s} {rate:8.1f} configurations/s{extra}   rounds: {rounds}")
        if "l2_over_l3" in sc:
            print(f"  L2 / L3 = {sc['l2_over_l3']:.2f}x")
        cpu = ("relay_cpu_s_rounds", "server_cpu_s_rounds", "driver_cpu_s_rounds")
        print("  " + json.dumps({k: sc[k] for k in ("link_setup_s", *cpu, "relay_counters")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
