"""su-up authorization with OSCORE identities over real sockets (TS 24.546 C.2, 6.2.1.2; SPEC D12,
D16): a VAL UE or VAL user reads only its own profiles, only an administrator writes, everything
unverifiable gets the one unprotected 4.01.

A secured SCM-S on loopback with a real SQLite file holding documents and keys; clients with real
credentials files (the helpers of test_security.py). Every requester runs every operation; the
code, whether the answer was protected, and that no foreign profile travels in the body are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import cbor2
import pytest
from aiocoap import Message, oscore
from aiocoap.numbers.codes import Code
from aiocoap.transports.oscore import OSCOREAddress

from msgin5g.authz import UNAUTHENTICATED
from msgin5g.codec import CF_CBOR
from msgin5g.model import imei_urn
from msgin5g.problem import CF_PROBLEM
from msgin5g.security.credentials import KeyCredentials

from .keyhelp import store_keys
from .test_security import client, secured_server, send

TAC = "35209900"
ME = imei_urn(TAC, 1)  # a VAL UE (MSGin5G UE ID)
OTHER = imei_urn(TAC, 2)
ALICE = "sip:alice@msgin5g.example"  # a VAL user (UE Service ID), authenticated under that ID
NEW = imei_urn(TAC, 3)
#: a marker inside each target's profile: a body that carries one carries that profile
SECRET = {ME: "prof-me-5e1d", ALICE: "prof-alice-0b7c", OTHER: "prof-other-c4a2"}
IDENTITIES = {
    "ue": f"ue:{ME}",
    "user": f"ue:{ALICE}",
    "other-ue": f"ue:{OTHER}",
    "gateway": "gateway:gw1",
    "admin": "admin:ops",
    "revoked": f"ue:{NEW}",
}
REQUESTERS = ("ue", "user", "other-ue", "gateway", "admin", "unauthenticated", "revoked")
OPERATIONS = ("query-me", "query-alice", "get-me", "get-alice", "observe-me", "post", "put", "delete")
C205, C201, C204, C202, C403, C401 = 0x45, 0x41, 0x44, 0x42, 0x83, 0x81
# fmt: off
EXPECTED = {
    #                   query-me query-alice get-me get-alice observe-me post  put   delete
    "ue":              (C205,    C403,       C205,  C403,     C205,      C403, C403, C403),
    "user":            (C403,    C205,       C403,  C205,     C403,      C403, C403, C403),
    "other-ue":        (C403,    C403,       C403,  C403,     C403,      C403, C403, C403),
    "gateway":         (C403,    C403,       C403,  C403,     C403,      C403, C403, C403),
    "admin":           (C205,    C205,       C205,  C205,     C205,      C201, C204, C202),
    "unauthenticated": (C401,) * 8,
    "revoked":         (C401,) * 8,
}
# fmt: on
#: whose profile a successful answer may carry
MAY_SEE = {
    ("ue", "query-me"): {ME},
    ("ue", "get-me"): {ME},
    ("ue", "observe-me"): {ME},
    ("user", "query-alice"): {ALICE},
    ("user", "get-alice"): {ALICE},
    ("admin", "query-me"): {ME},
    ("admin", "query-alice"): {ALICE},
    ("admin", "get-me"): {ME},
    ("admin", "get-alice"): {ALICE},
    ("admin", "observe-me"): {ME},
    ("admin", "put"): {ME},
}


@dataclass
class Keyset:
    creds: dict[str, KeyCredentials]


@pytest.fixture
def profile_keys(tmp_path) -> Keyset:
    """The keys of IDENTITIES in the test's store (``scm.db``, which secured_server opens)."""
    (tmp_path / "creds").mkdir()
    return Keyset(store_keys(tmp_path / "scm.db", IDENTITIES, tmp_path / "creds", revoke=["revoked"]))


def profile(target_kind: str, ident: str) -> dict:
    return {
        "profileInformation": {
            "status": True,
            "profileConfigs": [{"configType": "COMMON", "configData": SECRET.get(ident, "new")}],
        },
        "valTgtUe": {target_kind: ident},
    }


def provision(srv) -> dict[str, str]:
    store = srv.store
    return {
        ME: store.create_profile("msgin5g", profile("valUeId", ME)).doc_id,
        ALICE: store.create_profile("msgin5g", profile("valUserId", ALICE)).doc_id,
        OTHER: store.create_profile("msgin5g", profile("valUeId", OTHER)).doc_id,
    }


def coll(srv) -> str:
    return srv.base_uri().replace("/su-uc/v1", "/su-up/v1") + "/val-services/msgin5g/user-profiles"


def matrix_request(srv, operation: str, ids: dict[str, str]) -> Message:
    c = coll(srv)
    if operation == "query-me":
        return Message(code=Code.GET, uri=c, uri_query=(f"val-tgt-ue={ME}",))
    if operation == "query-alice":
        return Message(code=Code.GET, uri=c, uri_query=(f"val-tgt-ue={ALICE}",))
    if operation == "get-me":
        return Message(code=Code.GET, uri=f"{c}/{ids[ME]}")
    if operation == "get-alice":
        return Message(code=Code.GET, uri=f"{c}/{ids[ALICE]}")
    if operation == "observe-me":
        return Message(code=Code.GET, uri=f"{c}/{ids[ME]}", observe=0)
    if operation == "post":
        body = cbor2.dumps(profile("valUeId", NEW))
        return Message(code=Code.POST, uri=c, payload=body, content_format=CF_CBOR)
    if operation == "put":
        body = cbor2.dumps(profile("valUeId", ME))
        return Message(code=Code.PUT, uri=f"{c}/{ids[ME]}", payload=body, content_format=CF_CBOR)
    assert operation == "delete"
    return Message(code=Code.DELETE, uri=f"{c}/{ids[OTHER]}")


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("requester", REQUESTERS)
async def test_profile_authorization_matrix(tmp_path, profile_keys, requester, operation):
    srv = await secured_server(tmp_path)
    try:
        ids = provision(srv)
        async with client(profile_keys.creds.get(requester)) as ctx:
            msg = matrix_request(srv, operation, ids)
            if operation == "observe-me":
                req = ctx.request(msg)
                try:
                    r = await asyncio.wait_for(req.response, 10)
                    protected = isinstance(r.remote, OSCOREAddress)
                except oscore.NotAProtectedMessage as e:
                    r, protected = e.plain_message, False
                observing = srv.site.apis[0].observer_count("msgin5g", ids[ME])
                with contextlib.suppress(Exception):
                    req.observation.cancel()
            else:
                r, protected = await send(ctx, msg)
        expected = EXPECTED[requester][OPERATIONS.index(operation)]
        assert int(r.code) == expected, (r, r.payload)
        if expected == C401:
            assert not protected and r.payload == UNAUTHENTICATED.encode()
        else:
            assert protected
        if not r.code.is_successful():
            assert r.opt.content_format == CF_PROBLEM
            cause = cbor2.loads(r.payload)["cause"]
            allowed = {"UNAUTHENTICATED"} if expected == C401 else {"NOT_AUTHORIZED", "ADMIN_ONLY"}
            assert cause in allowed
        visible = MAY_SEE.get((requester, operation), set())
        for who, marker in SECRET.items():
            if who not in visible:
                assert marker.encode() not in r.payload, f"{who}'s profile leaked to {requester}"
        if operation == "observe-me":
            registered = expected == C205
            assert (observing == 1) == registered and (r.opt.observe is not None) == registered
        # nothing changes unless an administrator wrote
        writes = {"post": 4, "delete": 2}
        count = srv.store.count_profiles("msgin5g")
        assert count == (writes.get(operation, 3) if requester == "admin" else 3)
    finally:
        await srv.close()


async def test_foreign_and_missing_profiles_read_the_same(tmp_path, profile_keys):
    """A UE asking for another target's profiles, another's profile, or a missing one reads one
    and the same 4.03 (SPEC D12: nothing tells whether a profile exists)."""
    srv = await secured_server(tmp_path)
    try:
        ids = provision(srv)
        c = coll(srv)
        async with client(profile_keys.creds["ue"]) as ctx:
            a, _ = await send(ctx, Message(code=Code.GET, uri=c, uri_query=(f"val-tgt-ue={OTHER}",)))
            b, _ = await send(ctx, Message(code=Code.GET, uri=c, uri_query=("val-tgt-ue=sip:nobody@x",)))
            d, _ = await send(ctx, Message(code=Code.GET, uri=f"{c}/{ids[OTHER]}"))
            e, _ = await send(ctx, Message(code=Code.GET, uri=f"{c}/no-such-profile"))
        assert a.code == b.code == d.code == e.code == Code.FORBIDDEN
        assert a.payload == b.payload == d.payload == e.payload
    finally:
        await srv.close()
