"""Fixtures for integration tests: a real SCM-S on loopback (random free port, real SQLite file)."""

from __future__ import annotations

import json
import socket

import aiocoap
import pytest

from msgin5g.coap.qblock import QBlockParams
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig

DOMAIN = "msgin5g.example"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_data(
    ue_service_id: str, address: str = "coap://msg.example", segment_size: int | None = None
) -> str:
    data = {"msgin5gServerAddress": address, "ueServiceId": ue_service_id}
    if segment_size is not None:
        data["segmentSize"] = segment_size
    return json.dumps(data)


def make_doc(*, uris=None, ranges=None, service_id="sid@x", name=None, **extra) -> dict:
    doc = {
        "valServiceDomain": DOMAIN,
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": config_data(service_id)}],
    }
    ids = {}
    if uris:
        ids["uris"] = list(uris)
    if ranges:
        ids["imeiRanges"] = list(ranges)
    if ids:
        doc["valUeIds"] = ids
    if name:
        doc["configName"] = name
    doc.update(extra)
    return doc


@pytest.fixture
async def scm_server(tmp_path):
    """A running SCM-S (insecure lab mode) on UDP+TCP with an empty SQLite store."""
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            insecure=True,
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
        )
    )
    yield srv
    await srv.close()


@pytest.fixture
async def coap():
    """A client-side aiocoap context (UDP and TCP client transports)."""
    ctx = await aiocoap.Context.create_client_context()
    yield ctx
    await ctx.shutdown()


async def start_secured_qserver(tmp_path, identities: dict[str, str]):
    """A secured SCM-S (OSCORE, SPEC D12) with the short Q-Block2 pause of :func:`qserver`, and a key
    for each ``name → identity`` (``tests/integration/keyhelp.py``): (server, {name: key})."""
    from .keyhelp import store_keys

    keys = store_keys(tmp_path / "scm.db", identities, tmp_path)
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
            qblock=QBlockParams(non_timeout=0.2),
        )
    )
    return srv, keys


@pytest.fixture
async def qserver(tmp_path):
    """A running SCM-S (insecure lab mode) with a short pause between Q-Block2 sets (NON_TIMEOUT
    0.2 s, RFC 9177 §7.2: configurable) so that the Q-Block tests run fast."""
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            insecure=True,
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
            qblock=QBlockParams(non_timeout=0.2),
        )
    )
    yield srv
    await srv.close()
