"""TS 24.546 conformance gaps closed over real sockets: If-None-Match on PUT (RFC 7252 §5.10.8.2),
the seed's ``bulkConfFlag`` spelling of the bulk flag (SPEC D6), what bulk stub entries carry
(C.3.1.3; SPEC D6), and the SEAL vendor Content-Formats set from the command line (digest §2.5,
§10.7). Expected values come from those texts."""

from __future__ import annotations

import subprocess

import cbor2
import pytest
from aiocoap.numbers.codes import Code

from msgin5g.model import imei_urn

from .conftest import DOMAIN, make_doc
from .procs import MSGIN5G, ServerProcess
from .test_server_api import coll, post, problem, req

TAC = "35209900"
CONFIGURED, UNCONFIGURED = imei_urn(TAC, 1), imei_urn(TAC, 2)


# -- If-None-Match (RFC 7252 §5.10.8.2) ---------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_if_none_match_on_put_of_an_existing_document_is_412(scm_server, coap, scheme):
    srv = scm_server
    d = await post(coap, srv, make_doc(uris=[CONFIGURED], name="v1"))
    uri = f"{coll(srv, scheme)}/{d['ueConfigDocId']}"
    body = cbor2.dumps(make_doc(uris=[CONFIGURED], name="v2"))
    r = await req(coap, Code.PUT, uri, body, content_format=60, if_none_match=True)
    problem(r, Code.PRECONDITION_FAILED, "PRECONDITION_FAILED")
    stored = srv.store.get("msgin5g", d["ueConfigDocId"])
    assert stored.version == 1 and stored.doc["configName"] == "v1"  # nothing was written
    r = await req(coap, Code.PUT, uri, body, content_format=60)
    assert r.code == Code.CHANGED and cbor2.loads(r.payload)["configName"] == "v2"


# -- the seed's spelling of the bulk flag (SPEC D6) ---------------------------------------------------
def provision(srv) -> str:
    return srv.store.import_docs("msgin5g", [make_doc(uris=[CONFIGURED], service_id="svc-1")])[0]


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_seed_spelling_bulkConfFlag_is_the_bulk_flag(scm_server, coap, scheme):
    srv = scm_server
    doc_id = provision(srv)
    query = ["bulkConfFlag=seed-1", f"ue-uri={CONFIGURED}", f"ue-uri={UNCONFIGURED}"]
    r = await req(coap, Code.GET, coll(srv, scheme), query=query)
    assert r.code == Code.CONTENT, r.payload
    entries = cbor2.loads(r.payload)
    # one entry per requested UE, in request order (SPEC D6)
    assert len(entries) == 2
    assert entries[0]["ueConfigDocId"] == doc_id and entries[0]["valUeIds"] == {"uris": [CONFIGURED]}
    assert entries[1]["problem"][-4] == 0x84 and entries[1]["valUeIds"] == {"uris": [UNCONFIGURED]}
    # without a flag two ue-uri are refused, so the answer above came from the bulk path
    problem(await req(coap, Code.GET, coll(srv, scheme), query=query[1:]), Code.BAD_REQUEST)
    # both spellings at once name the flag twice (cardinality 1)
    both = ["bulkConfFlag=a", "bulk-conf-flag=b", f"ue-uri={CONFIGURED}"]
    problem(await req(coap, Code.GET, coll(srv, scheme), query=both), Code.BAD_REQUEST, "INVALID_QUERY")


# -- bulk stub entries (TS 24.546 C.3.1.3; SPEC D6) --------------------------------------------------
async def test_bulk_stub_entries_carry_the_mandatory_attributes(scm_server, coap):
    """UeConfigDoc's one mandatory attribute, valServiceDomain (Table C.3.1.3.2.1-1), is in every
    entry; a stub names no resource, so it carries no ueConfigDocId (docs/gateway.md)."""
    srv = scm_server
    doc_id = provision(srv)
    srv.store.set_gateway("gw-none", {"uris": ["urn:dev:nobody"]})
    query = ["bulk-conf-flag=stubs", f"ue-uri={CONFIGURED}", f"ue-uri={UNCONFIGURED}"]
    r = await req(coap, Code.GET, coll(srv), query=query)
    found, missing = cbor2.loads(r.payload)
    assert found["valServiceDomain"] == DOMAIN and found["ueConfigDocId"] == doc_id
    assert missing["valServiceDomain"] == DOMAIN  # the server's configured domain of the service
    assert missing["valUeIds"] == {"uris": [UNCONFIGURED]}
    assert missing["problem"][-4] == 0x84 and missing["problem"]["cause"] == "NO_CONFIGURATION"
    assert "ueConfigDocId" not in missing
    r = await req(
        coap, Code.GET, coll(srv), query=["bulk-conf-flag=gw", *query[1:]], identity="gateway:gw-none"
    )
    for entry, ue in zip(cbor2.loads(r.payload), (CONFIGURED, UNCONFIGURED), strict=True):
        assert entry["valServiceDomain"] == DOMAIN and entry["valUeIds"] == {"uris": [ue]}
        assert entry["problem"][-4] == 0x83 and "ueConfigDocId" not in entry  # existence not revealed


# -- SEAL vendor Content-Formats from the command line (digest §2.5, §10.7) ---------------------------
UE_CF, PROFILE_CF = 65060, 65061


@pytest.fixture
def seal_server(tmp_path):
    srv = ServerProcess(
        f"sqlite:///{tmp_path}/scm.db",
        "--seal-content-format",
        str(UE_CF),
        "--seal-profile-content-format",
        str(PROFILE_CF),
        "--service-domain",
        "seal.example",
    )
    yield srv
    srv.stop()


def profile_coll(api_root: str) -> str:
    return f"{api_root}/su-up/v1/val-services/msgin5g/user-profiles"


async def test_seal_content_formats_enabled_from_the_cli(seal_server, coap):
    srv = seal_server
    doc = cbor2.dumps(make_doc(uris=[CONFIGURED], name="seal"))
    r = await req(coap, Code.POST, srv.collection, doc, content_format=UE_CF, accept=UE_CF)
    assert r.code == Code.CREATED and int(r.opt.content_format) == UE_CF
    doc_id = cbor2.loads(r.payload)["ueConfigDocId"]  # CBOR under the vendor number
    r = await req(coap, Code.GET, f"{srv.collection}/{doc_id}", accept=UE_CF)
    assert int(r.opt.content_format) == UE_CF and cbor2.loads(r.payload)["configName"] == "seal"
    r = await req(coap, Code.GET, f"{srv.collection}/{doc_id}", accept=60)  # 60 still served
    assert int(r.opt.content_format) == 60 and cbor2.loads(r.payload)["configName"] == "seal"
    assert (await req(coap, Code.POST, srv.collection, doc, content_format=60)).code == Code.CREATED
    # each media type has its own number: the profile one is not a UE configuration format
    r = await req(coap, Code.POST, srv.collection, doc, content_format=PROFILE_CF)
    problem(r, Code.UNSUPPORTED_CONTENT_FORMAT, "UNSUPPORTED_CONTENT_FORMAT")
    problem(await req(coap, Code.GET, f"{srv.collection}/{doc_id}", accept=PROFILE_CF), Code.NOT_ACCEPTABLE)

    prof = cbor2.dumps({"profileInformation": {"status": True}, "valTgtUe": {"valUserId": "sip:a@x"}})
    r = await req(
        coap, Code.POST, profile_coll(srv.api_root), prof, content_format=PROFILE_CF, accept=PROFILE_CF
    )
    assert r.code == Code.CREATED and int(r.opt.content_format) == PROFILE_CF
    r = await req(coap, Code.GET, profile_coll(srv.api_root), query=["val-tgt-ue=sip:a@x"], accept=PROFILE_CF)
    assert int(r.opt.content_format) == PROFILE_CF and len(cbor2.loads(r.payload)) == 1
    r = await req(coap, Code.POST, profile_coll(srv.api_root), prof, content_format=UE_CF)
    problem(r, Code.UNSUPPORTED_CONTENT_FORMAT, "UNSUPPORTED_CONTENT_FORMAT")
    # and --service-domain reaches the bulk stubs
    r = await req(coap, Code.GET, srv.collection, query=["bulk-conf-flag=f", f"ue-uri={UNCONFIGURED}"])
    assert cbor2.loads(r.payload)[0]["valServiceDomain"] == "seal.example"


async def test_without_the_option_the_vendor_number_is_unsupported(tmp_path, coap):
    srv = ServerProcess(f"sqlite:///{tmp_path}/scm.db")
    try:
        doc = cbor2.dumps(make_doc(uris=[CONFIGURED]))
        r = await req(coap, Code.POST, srv.collection, doc, content_format=UE_CF)
        problem(r, Code.UNSUPPORTED_CONTENT_FORMAT, "UNSUPPORTED_CONTENT_FORMAT")
    finally:
        srv.stop()


@pytest.mark.parametrize("value", ["60", "50", "257", "70000", "x"])
def test_cli_refuses_a_taken_or_invalid_content_format(value, tmp_path):
    p = subprocess.run(
        [
            MSGIN5G,
            "server",
            "--insecure",
            "--port",
            "0",
            "--db",
            f"sqlite:///{tmp_path}/x.db",
            "--seal-content-format",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and "--seal-content-format" in p.stderr and "Traceback" not in p.stderr
