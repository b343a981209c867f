"""The authorization leaks of secured mode, probed exactly as reported, with OSCORE keys kept in
the store (RFC 8613; TS 24.546 6.2.1.2; SPEC D3, D12).

1. A UE whose ID is not an IMEI URN, with its own valid key, asks ``ue-uri=<itself>&ue-type=<TAC>&
   ue-snr=000043``: it must not receive the IMEI-range document expanded for serial 000043.
2. A gateway whose registry entry covers a TAC, on a UE-scoped GET (and a bulk GET) for a UE that is
   not an IMEI URN, plus a ``ue-type`` claim of that TAC: it must not receive that UE's configuration.
"""

from __future__ import annotations

import json

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from .conftest import make_doc
from .keyhelp import store_keys
from .test_security import client, secured_server, send

TAC = "35209900"
PLAIN_UE = "urn:dev:plain-ue-1"
OUTSIDE = "urn:dev:outside-1"
RANGE_DOC = make_doc(
    ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": "100"}}], service_id="sensor-{tac}-{snr}@x"
)


@pytest.fixture
def keys(tmp_path):
    """The keys of a non-IMEI UE and of a gateway, in the test's store (scm.db)."""
    (tmp_path / "creds").mkdir()
    identities = {"plain": f"ue:{PLAIN_UE}", "gw": "gateway:gw-tac"}
    return store_keys(tmp_path / "scm.db", identities, tmp_path / "creds")


def service_ids(payload: bytes) -> list[str]:
    return [
        json.loads(c["configData"])["ueServiceId"]
        for d in cbor2.loads(payload)
        for c in d.get("ueConfigs", ())
    ]


async def test_a_non_imei_ue_claiming_a_tac_and_serial_gets_no_range_document(tmp_path, keys):
    creds = keys
    srv = await secured_server(tmp_path)
    try:
        srv.store.import_docs("msgin5g", [RANGE_DOC])
        async with client(creds["plain"]) as ctx:
            m = Message(code=Code.GET, uri=srv.collection_uri())
            m.opt.uri_query = (f"ue-uri={PLAIN_UE}", f"ue-type={TAC}", "ue-snr=000043")
            r, protected = await send(ctx, m)
        assert protected and r.code == Code.NOT_FOUND, (r, r.payload)
        assert int(r.opt.content_format) == 257
        assert cbor2.loads(r.payload)["cause"] == "NO_CONFIGURATION"
        assert b"sensor-" not in r.payload
    finally:
        await srv.close()


async def test_a_gateway_claiming_a_tac_for_a_ue_outside_its_registry_gets_nothing(tmp_path, keys):
    creds = keys
    srv = await secured_server(tmp_path)
    try:
        srv.store.import_docs("msgin5g", [RANGE_DOC, make_doc(uris=[OUTSIDE], service_id="outside-secret")])
        srv.store.set_gateway("gw-tac", {"imeiRanges": [{"tac": TAC}]})
        async with client(creds["gw"]) as ctx:
            m = Message(code=Code.GET, uri=srv.collection_uri())
            m.opt.uri_query = (f"ue-uri={OUTSIDE}", f"ue-type={TAC}")
            r, protected = await send(ctx, m)
            assert protected and r.code == Code.FORBIDDEN, (r, r.payload)
            assert int(r.opt.content_format) == 257
            assert cbor2.loads(r.payload)["cause"] == "NOT_AUTHORIZED"
            bulk = Message(code=Code.GET, uri=srv.collection_uri())
            bulk.opt.uri_query = ("bulk-conf-flag=leak", f"ue-uri={OUTSIDE}", f"ue-type={TAC}")
            r, protected = await send(ctx, bulk)
        assert protected and r.code == Code.CONTENT
        (entry,) = cbor2.loads(r.payload)
        assert "ueConfigs" not in entry and entry["problem"][-4] == 0x83
        assert b"outside-secret" not in r.payload and b"sensor-" not in r.payload
    finally:
        await srv.close()
