"""Nothing applicable to another identity ever comes back (TS 24.546 6.2.1.2; SPEC D3, D4, D12).

A property-based test (hypothesis) against a real ``msgin5g server`` process over a real UDP socket:
identities (UEs with and without IMEI URNs, gateways covering URIs or an IMEI range) × claimed UE
information (ue-uri, ue-type, ue-snr, ue-vendor, each also lying) × routes (scoped GET, individual
GET, Observe, bulk GET). Every configuration in every 2.05 must be one the requester is entitled to.

The entitlement is written here from SPEC D3/D4 alone, not by calling ``applicability``/``authz``:
a UE is entitled to the documents that apply to its own URI, and — only when that URI is an IMEI
URN — to those scoped to the TAC and serial number in it; a gateway to those of the UEs its
registry entry covers, judged the same way. Each document's UE Service ID carries a marker (with
its placeholders expanded for the UE served, SPEC D5), so a marker names both the document and the
UE it was resolved for.

The lab identity option of insecure mode carries the identity (the same rules as OSCORE-derived
identities, which ``test_authz_secured`` checks for the reported leaks).
"""

from __future__ import annotations

import itertools
import json
import re

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgin5g.api import OPT_LAB_IDENTITY
from msgin5g.model import imei_urn
from msgin5g.store import open_store
from msgin5g.testing.fuzz import GET, OPT_OBSERVE, request

from .scm_wire import COLLECTION, LoggedServer, UdpClient, no_tracebacks

TAC1, TAC2 = "35209900", "86000000"
A, C, B = imei_urn(TAC1, 1), imei_urn(TAC1, 43), imei_urn(TAC2, 7)
N, M = "urn:dev:n1", "urn:dev:m2"
UES = [A, C, B, N, M]
GW_URIS = {"uris": [N], "imeiRanges": [{"tac": TAC1, "snrs": ["1"]}]}  # covers A and N
GW_TAC2 = {"imeiRanges": [{"tac": TAC2}]}  # covers B (and, by the rule, no non-IMEI UE)
IDENTITIES = [f"ue:{u}" for u in UES] + ["gateway:gw-uris", "gateway:gw-tac2"]
ENTITLED_UES = {f"ue:{u}": {u} for u in UES} | {"gateway:gw-uris": {A, N}, "gateway:gw-tac2": {B}}


def _doc(sid: str, ids: dict | None = None, **extra) -> dict:
    data = json.dumps({"msgin5gServerAddress": "coap://m.example", "ueServiceId": sid})
    d = {"valServiceDomain": "d.example", "ueConfigs": [{"configType": "ON_NETWORK", "configData": data}]}
    if ids is not None:
        d["valUeIds"] = ids
    d.update(extra)
    return d


DOCS = {
    "uri-A": _doc("uri-A", {"uris": [A]}),
    "uri-N": _doc("uri-N", {"uris": [N]}),
    "snr-43": _doc("snr43-{snr}", {"imeiRanges": [{"tac": TAC1, "snrs": ["43"]}]}),
    "range": _doc(
        "range-{tac}-{snr}", {"imeiRanges": [{"tac": TAC1, "snrRange": {"low": "40", "high": "50"}}]}
    ),
    "tac2": _doc("tac2-{snr}", {"imeiRanges": [{"tac": TAC2}]}),
    "vendor-M": _doc("vendor-M", {"uris": [M]}, ueVendor="acme"),
    "domain": _doc("domain-{ueUri}"),
}
IMEI = re.compile(r"\Aurn:gsma:imei:(\d{8})-(\d{6})-\d\Z")


def markers_for(ue: str) -> set[str]:
    """SPEC D3/D4/D5 from the text: the UE Service IDs a UE may ever be served."""
    out = {f"domain-{ue}"}
    if ue == A:
        out.add("uri-A")
    if ue == N:
        out.add("uri-N")
    if ue == M:
        out.add("vendor-M")
    m = IMEI.match(ue)
    if m:  # TAC and serial only from the UE's own IMEI URN
        tac, snr = m.group(1), int(m.group(2))
        if tac == TAC1 and snr == 43:
            out.add(f"snr43-{snr:06d}")
        if tac == TAC1 and 40 <= snr <= 50:
            out.add(f"range-{tac}-{snr:06d}")
        if tac == TAC2:
            out.add(f"tac2-{snr:06d}")
    return out


def entitled_markers(identity: str) -> set[str]:
    return set().union(*(markers_for(u) for u in ENTITLED_UES[identity]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authz")
    url = f"sqlite:///{tmp}/authz.db"
    store = open_store(url)
    ids = dict(zip(DOCS, store.import_docs("msgin5g", list(DOCS.values())), strict=True))
    store.set_gateway("gw-uris", GW_URIS)
    store.set_gateway("gw-tac2", GW_TAC2)
    store.close()
    srv = LoggedServer(tmp, db=url)
    cli = UdpClient(srv.addr)
    yield srv, cli, ids
    cli.close()
    no_tracebacks(srv.stop())


COUNTER = itertools.count(1)


def ask(cli: UdpClient, identity: str, path: str, query=(), observe=False):
    n = next(COUNTER)
    opts = [(OPT_LAB_IDENTITY, identity.encode())]
    if observe:
        opts.append((OPT_OBSERVE, b""))
    m = cli.exchange(
        request(GET, path, mid=n & 0xFFFF, token=n.to_bytes(4, "big"), query=query, options=opts)
    )
    assert m.opt.block2 is None or not m.opt.block2.more, "answers here fit one datagram"
    return m


def served(payload: bytes) -> list[tuple[str, list]]:
    """(UE Service ID, valUeIds.uris) of every configuration in a 2.05 body."""
    value = cbor2.loads(payload)
    docs = value if isinstance(value, list) else [value]
    out = []
    for d in docs:
        if "problem" in d:  # a bulk stub: no configuration
            assert "ueConfigs" not in d
            continue
        for cfg in d.get("ueConfigs", ()):
            out.append((json.loads(cfg["configData"])["ueServiceId"], d.get("valUeIds", {}).get("uris", [])))
    return out


def check(identity: str, m) -> None:
    if int(m.code) != 0x45:
        assert int(m.code) >> 5 in (4, 5) and int(m.code) != 0xA0, m  # a refusal, never a 5.00
        return
    allowed = entitled_markers(identity)
    for sid, uris in served(m.payload):
        assert sid in allowed, (identity, sid, allowed)
        assert set(uris) <= ENTITLED_UES[identity], (identity, uris)


claims = st.fixed_dictionaries(
    {
        "ue-uri": st.sampled_from(UES),
        "ue-type": st.sampled_from([None, TAC1, TAC2]),
        "ue-snr": st.sampled_from([None, "43", "000043", "1", "7", "45"]),
        "ue-vendor": st.sampled_from([None, "acme"]),
    }
)


def _query(c: dict) -> list[str]:
    return [f"{k}={v}" for k, v in c.items() if v is not None]


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(identity=st.sampled_from(IDENTITIES), claim=claims)
def test_scoped_get_never_returns_another_identitys_configuration(world, identity, claim):
    _srv, cli, _ = world
    check(identity, ask(cli, identity, COLLECTION, _query(claim)))


@SETTINGS
@given(identity=st.sampled_from(IDENTITIES), name=st.sampled_from(list(DOCS)), observe=st.booleans())
def test_individual_get_and_observe_never_return_another_identitys_configuration(
    world, identity, name, observe
):
    _srv, cli, ids = world
    check(identity, ask(cli, identity, f"{COLLECTION}/{ids[name]}", observe=observe))


@SETTINGS
@given(
    identity=st.sampled_from(IDENTITIES),
    uris=st.lists(st.sampled_from(UES), min_size=1, max_size=4),
    tac=st.sampled_from([None, TAC1, TAC2]),
    vendor=st.sampled_from([None, "acme"]),
)
def test_bulk_get_never_returns_another_identitys_configuration(world, identity, uris, tac, vendor):
    _srv, cli, _ = world
    query = [f"bulk-conf-flag=p{next(COUNTER)}"] + [f"ue-uri={u}" for u in uris]
    query += _query({"ue-type": tac, "ue-vendor": vendor})
    m = ask(cli, identity, COLLECTION, query)
    check(identity, m)
    if int(m.code) == 0x45:  # one entry per requested UE, in order (SPEC D6)
        entries = cbor2.loads(m.payload)
        assert [e["valUeIds"]["uris"] for e in entries] == [[u] for u in uris]


def test_the_reported_leaks_are_closed(world):
    """The two probes of the issue, in lab mode: a non-IMEI UE claiming a TAC and serial; a gateway
    claiming a TAC for a UE its registry does not cover."""
    _srv, cli, _ = world
    m = ask(cli, f"ue:{N}", COLLECTION, [f"ue-uri={N}", f"ue-type={TAC1}", "ue-snr=000043"])
    assert int(m.code) == 0x45
    assert {sid for sid, _ in served(m.payload)} == {"uri-N", f"domain-{N}"}
    m = ask(cli, "gateway:gw-tac2", COLLECTION, [f"ue-uri={M}", f"ue-type={TAC2}"])
    assert int(m.code) == 0x83
