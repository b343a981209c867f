"""The Gateway UE's MSGin5G-6 leg secured with OSCORE keys kept in its state database (TS 24.546
6.2.1.2; TS 33.501 Annex Y; RFC 8613; SPEC D12), over real sockets.

The constrained UEs' keys are rows of the gateway's SQLite state file (imported with ``msgin5g keys
import --gateway-state``), never a file per key; the gateway authenticates to the SCM-S with its
own key. Each UE gets only its own configuration; a revoked UE key is refused at its next request
without a restart; a gateway restarted (even killed with SIGKILL) never reuses a sender sequence
number (RFC 8613 App. B.1.1: leased, persisted before use) and keeps refusing replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.security.credentials import KeyCredentials, load_bundle
from msgin5g.store.keysqlite import SqliteKeyStore

from .conftest import make_doc
from .keyhelp import revoke, store_keys
from .test_security import C401, C403, ME, MSGIN5G, OTHER, SECRET, TAC, msgin5g, provision, secured_server

# -- through the gateway: its own leg, and the gateway's own identity towards the SCM-S ---------------


@dataclass
class GatewayKeys:
    scm: Path  # the SCM-S's store, with the gateway's key
    state: Path  # the gateway's state database, with the constrained UEs' keys
    gateway: KeyCredentials
    ue: KeyCredentials
    other: KeyCredentials


def gateway_keys(tmp_path, algorithm: str = "AES-CCM-16-64-128") -> GatewayKeys:
    """The gateway's own key in the SCM-S's store; its UEs' keys imported into its state database
    with the real command (``msgin5g keys import --gateway-state``), their client side one bundle."""
    scm, state = tmp_path / "scm.db", tmp_path / "gw-state.db"
    gateway = store_keys(scm, {"gw1": "gateway:gw1"}, tmp_path, algorithm=algorithm)["gw1"]
    ids = tmp_path / "gw-ues.csv"
    ids.write_text(f"identity\nue:{ME}\nue:{OTHER}\n")
    bundle = tmp_path / "gw-ues.jsonl"
    p = msgin5g("keys", "import", str(ids), "--gateway-state", str(state), "--out", str(bundle))
    assert p.returncode == 0, p.stderr
    keys = load_bundle(bundle)
    return GatewayKeys(scm, state, gateway, keys[f"ue:{ME}"], keys[f"ue:{OTHER}"])


@contextlib.asynccontextmanager
async def secured_gateway(
    srv, keys: GatewayKeys, tmp_path, port: int = 0, max_wait: float = 0.05, scheme: str = "coap"
):
    from msgin5g.gateway.policy import ServicePolicy
    from msgin5g.gateway.shell import GatewayConfig, GatewayUe
    from msgin5g.gateway.upstream import UpstreamScmc as GatewayScmClient

    cm = GatewayScmClient(f"{scheme}://127.0.0.1:{srv.port}", credentials=keys.gateway)
    config = GatewayConfig(
        port=port,
        state_path=str(keys.state),
        oscore=True,
        policy=ServicePolicy(max_wait=max_wait),
    )
    gw = await GatewayUe(config, cm).start()
    try:
        yield gw
    finally:
        await gw.close()


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_gateway_path_secured(tmp_path, scheme):
    """Constrained UE ─OSCORE (gateway's key)─► Gateway UE ─OSCORE (gateway's own key)─► SCM-S:
    each UE gets only its own configuration; the SCM-S authorizes the gateway per UE through its
    registry entry (TS 33.501 Annex Y; SPEC D12)."""
    from msgin5g.ue.via_gateway import get_config_via_gateway

    keys = gateway_keys(tmp_path)
    srv = await secured_server(tmp_path, keys.scm)
    try:
        provision(srv)
        async with secured_gateway(srv, keys, tmp_path, scheme=scheme) as gw:

            async def ask(ue_uri, creds):
                sec = creds.security_context() if creds else None
                return await get_config_via_gateway(
                    "127.0.0.1", gw.port, ue_uri=ue_uri, security=sec, timeout=10
                )

            mine = await ask(ME, keys.ue)
            assert mine.outcome is Outcome.CONFIGURED and SECRET[ME] in mine.config.ue_service_id
            # OTHER for itself: the SCM-S's per-UE 4.03 (the gateway's registry entry does not cover it)
            other = await ask(OTHER, keys.other)
            assert other.outcome is Outcome.FORBIDDEN
            # OTHER's key asking for ME: refused by the gateway itself, nothing of ME's leaks
            spoof = await ask(ME, keys.other)
            assert spoof.outcome is Outcome.FORBIDDEN and spoof.config is None
            assert gw.stats["forbidden"] == 1
            # unprotected, and with a key the gateway does not know (the gateway's own SCM-S key)
            bare = await ask(ME, None)
            assert bare.outcome is Outcome.ERROR and bare.code == C401
            stranger = await ask(ME, keys.gateway)
            assert stranger.outcome is Outcome.ERROR and stranger.code == C401
            assert gw.stats["unauthenticated"] == 2
        assert srv.service.counters.get("bulk-requests", 0) >= 1
        assert srv.keyring.counters["contexts-loaded"] == 1  # only the gateway talks to the SCM-S
    finally:
        await srv.close()


async def test_gateway_answers_a_stored_request_after_restart_protected(tmp_path):
    """The request binding is stored with the request: a gateway restarted before answering
    still answers with protection the UE verifies (a fresh nonce, never the request's)."""
    from msgin5g.ue.via_gateway import get_config_via_gateway

    from .conftest import free_port

    keys = gateway_keys(tmp_path)
    srv = await secured_server(tmp_path, keys.scm)
    port = free_port()
    try:
        provision(srv)
        async with secured_gateway(srv, keys, tmp_path, port=port, max_wait=3600) as gw:
            task = asyncio.ensure_future(
                get_config_via_gateway(
                    "127.0.0.1", port, ue_uri=ME, security=keys.ue.security_context(), timeout=30
                )
            )
            for _ in range(500):
                if gw.stats["stored"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert gw.stats["stored"] == 1 and gw.stats["answers"] == 0
        async with secured_gateway(srv, keys, tmp_path, port=port) as gw:
            assert gw.stats["restored"] == 1
            result = await asyncio.wait_for(task, 30)
        assert result.outcome is Outcome.CONFIGURED and SECRET[ME] in result.config.ue_service_id
    finally:
        await srv.close()


async def test_gateway_refused_by_the_scm_s_tells_its_ues(tmp_path):
    """A gateway whose key the SCM-S revoked gets 4.01; its UEs get an error, never a configuration."""
    from msgin5g.ue.via_gateway import get_config_via_gateway

    keys = gateway_keys(tmp_path)
    revoke(keys.scm, "gateway:gw1")
    srv = await secured_server(tmp_path, keys.scm)
    try:
        provision(srv)
        async with secured_gateway(srv, keys, tmp_path) as gw:
            r = await get_config_via_gateway(
                "127.0.0.1", gw.port, ue_uri=ME, security=keys.ue.security_context(), timeout=10
            )
        assert r.outcome is Outcome.ERROR and r.config is None and "4.01" in r.detail
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("scheme", "algorithm", "n"),
    [
        ("coap", "AES-CCM-16-64-128", 200),
        ("coap+tcp", "AES-CCM-16-64-128", 1000),  # > 64 KiB: block-wise even over TCP
        ("coap+tcp", "A128GCM", 1000),  # one message
    ],
)
async def test_bulk_get_with_block_wise_follow_ups_is_protected(tmp_path, scheme, algorithm, n):
    """A bulk answer larger than one block — a UDP block, or over TCP what one AES-CCM-protected
    message can hold (65,535 bytes) — comes back over OSCORE, over UDP as an RFC 9177 Q-Block2 burst,
    over TCP with follow-ups that name only the bulk configuration identifier (SPEC D7 b); each
    entry is the covered UE's or a 4.03."""
    from msgin5g.bulk import BulkItem, decode_answer
    from msgin5g.gateway.upstream import UpstreamScmc as GatewayScmClient

    keys = gateway_keys(tmp_path, algorithm)
    srv = await secured_server(tmp_path, keys.scm)
    try:
        srv.store.import_docs(
            "msgin5g",
            [make_doc(ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": "9999"}}], service_id="s-{snr}")],
        )
        covered = 3 * n // 4
        srv.store.set_gateway(
            "gw1", {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": str(covered - 1)}}]}
        )
        cm = GatewayScmClient(f"{scheme}://127.0.0.1:{srv.port}", credentials=keys.gateway, max_ues=n)
        try:
            items = [BulkItem(imei_urn(TAC, i)) for i in range(n)]
            outcomes = await cm.bulk_configure("msgin5g", items)
        finally:
            await cm.close()
        entries = []
        for o in outcomes:
            assert o.code == 0x45
            entries += decode_answer(o.payload)
        assert len(entries) == n
        for i, entry in enumerate(entries):
            if i < covered:
                assert json.loads(entry["ueConfigs"][0]["configData"])["ueServiceId"] == f"s-{i:06d}"
            else:
                assert entry["problem"][-4] == C403 and "ueConfigs" not in entry
        if algorithm == "A128GCM":
            assert len(outcomes) == 1 and cm.stats["block2-followups"] == 0
        elif scheme == "coap":  # RFC 9177: the blocks come as a burst, no follow-up on a clean link
            assert cm.stats["qblock-bodies"] == len(outcomes) and cm.stats["block2-followups"] == 0
        else:
            assert cm.stats["block2-followups"] > 0
    finally:
        await srv.close()


class _Recording:
    """A UE's OSCORE context that notes the OSCORE option of every answer it verifies (the
    gateway's Partial IV: its sender sequence number, RFC 8613 §6.1)."""

    def __init__(self, ctx, seen: list[int]):
        self._ctx, self._seen = ctx, seen

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def protect(self, *a, **kw):
        return self._ctx.protect(*a, **kw)

    def unprotect(self, message, binding=None):
        value = message.opt.oscore
        n = value[0] & 0x07 if value else 0  # flag bits: n = length of the Partial IV (RFC 8613 §6.1)
        if n:
            self._seen.append(int.from_bytes(value[1 : 1 + n], "big"))
        return self._ctx.unprotect(message, binding)


async def test_revoked_ue_key_is_refused_at_its_next_request(tmp_path):
    """``msgin5g keys revoke`` on the gateway's state database while the gateway runs: the UE's
    next request gets the uniform 4.01, no restart needed; another UE is unaffected."""
    from msgin5g.ue.via_gateway import get_config_via_gateway

    keys = gateway_keys(tmp_path)
    srv = await secured_server(tmp_path, keys.scm)
    try:
        provision(srv)
        srv.store.set_gateway("gw1", {"all": True})
        async with secured_gateway(srv, keys, tmp_path) as gw:

            async def ask(ue_uri, creds):
                return await get_config_via_gateway(
                    "127.0.0.1", gw.port, ue_uri=ue_uri, security=creds.security_context(), timeout=10
                )

            assert (await ask(ME, keys.ue)).outcome is Outcome.CONFIGURED
            p = msgin5g("keys", "revoke", f"ue:{ME}", "--db", f"sqlite:///{keys.state}")
            assert p.returncode == 0 and "revoked" in p.stdout, p.stderr
            refused = await ask(ME, keys.ue)
            assert refused.outcome is Outcome.ERROR and refused.code == C401 and refused.config is None
            assert (await ask(OTHER, keys.other)).outcome is Outcome.CONFIGURED
            assert gw.stats["unauthenticated"] == 1
    finally:
        await srv.close()


def _start_gateway(srv, keys: GatewayKeys, port: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "msgin5g.cli", "gateway", "--listen", f"127.0.0.1:{port}", "--oscore",
        "--server", f"coap://127.0.0.1:{srv.port}", "--credentials", str(keys.gateway.path),
        "--state", str(keys.state), "--max-wait-ms", "20",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("a") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _protected_datagram(creds: KeyCredentials, port: int, mid: int) -> bytes:
    """One OSCORE-protected configuration GET for ME, as the UE would send it (CON)."""
    from aiocoap import CON

    from msgin5g.api import ApiRoot, config_query_uri
    from msgin5g.security.endpoint import ClientProtection
    from msgin5g.ue.constrained import get_request

    plain = get_request(config_query_uri(ApiRoot("coap", "127.0.0.1", port), "msgin5g", ME), via_proxy=False)
    outer, _ = ClientProtection(creds.security_context()).protect(plain)
    outer.mtype, outer.mid, outer.token = CON, mid, mid.to_bytes(2, "big")
    return outer.encode()


def _exchange(port: int, datagram: bytes) -> set[int]:
    """Send ``datagram``, acknowledge what comes back, and return the code of the first non-empty
    answer seen within a few seconds (blocking; run in a thread)."""
    from aiocoap import ACK, CON, Message
    from aiocoap.numbers.codes import Code

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(datagram, ("127.0.0.1", port))
        with contextlib.suppress(TimeoutError):
            while True:
                m = Message.decode(s.recv(65536))
                if m.mtype == CON:
                    ack = Message(code=Code.EMPTY)
                    ack.mtype, ack.mid = ACK, m.mid
                    s.sendto(ack.encode(), ("127.0.0.1", port))
                if m.code != Code.EMPTY:
                    return {int(m.code)}
    return set()


async def _until_ready(proc: subprocess.Popen, log: Path, count: int) -> None:
    for _ in range(400):
        if log.read_text().count('"ready": "gateway"') >= count or proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    assert proc.poll() is None, log.read_text()


async def test_gateway_killed_and_restarted_never_reuses_a_sequence_number(tmp_path):
    """A real ``msgin5g gateway --oscore`` process answers a UE, is killed with SIGKILL and started
    again on the same state database: its answers after the restart carry sender sequence numbers
    at or above the mark leased in the store before the kill (RFC 8613 App. B.1.1), none repeated;
    a request recorded before the kill and replayed afterwards is refused (the replay window is in
    the store, no Echo round trip needed, App. B.1.2)."""
    from msgin5g.ue.via_gateway import get_config_via_gateway

    from .conftest import free_port

    keys = gateway_keys(tmp_path)
    srv = await secured_server(tmp_path, keys.scm)
    port, log = free_port(), tmp_path / "gateway.log"
    seen: list[int] = []
    ue = _Recording(keys.ue.security_context(), seen)

    async def ask():
        return await get_config_via_gateway("127.0.0.1", port, ue_uri=ME, security=ue, timeout=15)

    proc = _start_gateway(srv, keys, port, log)
    try:
        provision(srv)
        await _until_ready(proc, log, 1)
        for _ in range(3):
            r = await ask()
            assert r.outcome is Outcome.CONFIGURED and SECRET[ME] in r.config.ue_service_id
        recorded = _protected_datagram(keys.ue, port, 0x4242)
        assert await asyncio.to_thread(_exchange, port, recorded) == {0x44}  # 2.04: a protected answer
        before = list(seen)
        with sqlite3.connect(keys.state) as db:
            (mark,) = db.execute(
                "SELECT seq_mark FROM oscore_keys WHERE identity = ?", (f"ue:{ME}",)
            ).fetchone()
        assert len(before) == 3 and max(before) < mark  # (the raw exchange's answer was not recorded)
        proc.kill()
        proc.wait(10)
        proc = _start_gateway(srv, keys, port, log)
        await _until_ready(proc, log, 2)
        for _ in range(3):
            r = await ask()
            assert r.outcome is Outcome.CONFIGURED
        after = seen[3:]
        assert len(after) == 3 and min(after) >= mark
        assert len(set(seen)) == len(seen)
        # the request answered before the kill, replayed to the restarted gateway: refused
        assert await asyncio.to_thread(_exchange, port, recorded) == {C401}
    finally:
        proc.kill()
        proc.wait(10)
        await srv.close()


async def _ue_command(*args: str) -> str:
    """``msgin5g ue get-config ARGS`` as its own process (the event loop keeps serving meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        MSGIN5G, "ue", "get-config", "--ue-uri", ME, "--timeout", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, (out, err)
    text = (out + err).decode()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    return text


async def test_ue_commands_say_what_is_wrong(tmp_path):
    """Through the Gateway UE and through the Relay UE, a UE's command says in one line why it was
    refused: no ``--credentials`` against a secured peer; its key unknown or revoked there (the
    peer's 4.01 itself says nothing, RFC 8613 §8.2)."""
    from msgin5g.relay.shell import RelaySettings, start_relay

    keys = gateway_keys(tmp_path)
    scm_ue = store_keys(keys.scm, {"ue": f"ue:{ME}"}, tmp_path)["ue"]
    srv = await secured_server(tmp_path, keys.scm)
    relay = await start_relay(
        RelaySettings(server_uri=f"coap://127.0.0.1:{srv.port}", listen_port=0, admin_host=None)
    )
    try:
        provision(srv)
        async with secured_gateway(srv, keys, tmp_path) as gw:
            via_gw = ("--via-gateway", f"127.0.0.1:{gw.port}")
            text = await _ue_command(*via_gw)
            assert "4.01" in text and "is secured; pass --credentials FILE" in text
            gw_keys = SqliteKeyStore(keys.state)  # what 'msgin5g keys revoke --gateway-state' does
            assert gw_keys.revoke_keys("2026-01-01T00:00:00Z", identity=f"ue:{ME}")
            gw_keys.close()
            text = await _ue_command(*via_gw, "--credentials", str(keys.ue.path))
            assert f"Gateway UE does not accept key {keys.ue.kid.hex()} of ue:{ME}" in text
            assert "unknown or revoked on this server" in text
        host, port = relay.pc5_address
        via_relay = ("--via-relay", f"{host}:{port}", "--server", f"coap://127.0.0.1:{srv.port}")
        text = await _ue_command(*via_relay)
        assert "the SCM-S is secured; pass --credentials FILE" in text
        revoke(keys.scm, f"ue:{ME}")
        text = await _ue_command(*via_relay, "--credentials", str(scm_ue.path))
        assert f"SCM-S does not accept key {scm_ue.kid.hex()} of ue:{ME}" in text
        assert "unknown or revoked on this server" in text
    finally:
        await relay.close()
        await srv.close()
