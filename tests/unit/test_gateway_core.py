"""The Gateway Client's pure core, without sockets (TS 24.538 6.2.2.x; RFC 7252 §4; SPEC D9, D13).

Datagrams are built with the MSGin5G-6 codec, the clock is a number, and what the core must do is
written down from RFC 7252 and SPEC D9/D13: an empty ACK only after the Store, duplicates by
(endpoint, message ID), CON answers retransmitted MAX_RETRANSMIT = 4 times with doubling timeouts
starting in [ACK_TIMEOUT, ACK_TIMEOUT × 1.5] = [2 s, 3 s], a repeat of the same UE superseding its
stored request, restart from stored state.
"""

from __future__ import annotations

import itertools
import json
import random

import cbor2

from msgin5g import api
from msgin5g.bulk import BulkGet, BulkItem
from msgin5g.gateway import wire
from msgin5g.gateway.core import (
    Ack,
    CoreConfig,
    Fetch,
    GatewayCore,
    MarkAnswered,
    Remove,
    Reply,
    Store,
)
from msgin5g.gateway.policy import ServicePolicy
from msgin5g.gateway.queue import StoredRequest
from msgin5g.gateway.upstream_rules import (
    Done,
    Restart,
    Split,
    UpstreamOutcome,
    after_bulk_answer,
    remaining_blocks,
)
from msgin5g.gateway.wire import ACK, CON, RST, UeQuery

PATH = [(wire.OPT_URI_PATH, s.encode()) for s in api.collection_path("msgin5g")]
UE_A = "urn:gsma:imei:35209900-000001-4"
UE_B = "urn:gsma:imei:35209900-000002-2"
UE_C = "urn:gsma:imei:35209900-000003-0"
A1, A2 = ("127.0.0.1", 40001), ("127.0.0.1", 40002)


def request(mid: int, token: bytes, ue_uri: str, mtype: int = CON) -> bytes:
    opts = [*PATH, (wire.OPT_URI_QUERY, f"ue-uri={ue_uri}".encode())]
    return wire.encode(wire.CoapMessage(mtype, wire.GET, mid, token, opts))


def empty(mtype: int, mid: int) -> bytes:
    return wire.encode(wire.CoapMessage(mtype, wire.EMPTY, mid))


def doc(ue: str, sid: str) -> dict:
    data = json.dumps({"msgin5gServerAddress": "coap://msg.example", "ueServiceId": sid})
    return {
        "valServiceDomain": "msgin5g.example",
        "valUeIds": {"uris": [ue]},
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": data}],
    }


def bulk_answer(*pairs: tuple[str, str]) -> UpstreamOutcome:
    """A 2.05 bulk answer as the SCM-S sends it: one entry per UE, in request order (SPEC D6)."""
    payload = cbor2.dumps([doc(ue, sid) for ue, sid in pairs])
    return UpstreamOutcome(tuple(ue for ue, _ in pairs), True, 0x45, payload, 60, 60)


def core(**policy) -> GatewayCore:
    p = ServicePolicy(**({"max_wait": 0.5} | policy))
    return GatewayCore(CoreConfig(policy=p, cache=False), rng=random.Random(7))


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def stored_as(store: Store, first_id: int = 1) -> list[StoredRequest]:
    """What the request store gives back for a Store action (ids from ``first_id``)."""
    return [
        StoredRequest(
            first_id + i, r.host, r.port, r.mid, r.token, r.confirmable, r.query, r.urgent, r.block_num,
            r.block_szx, r.received, "stored", r.oscore, r.requester,
        )
        for i, r in enumerate(store.requests)
    ]  # fmt: skip


def receive(c: GatewayCore, now: float, *datagrams, first_id: int = 1):
    """Datagrams in, the Store performed: every action, in order."""
    actions = c.on_datagrams(now, 1000.0 + now, list(datagrams))
    out = list(actions)
    for s in of(actions, Store):
        out += c.on_stored(now, s.batch, stored_as(s, first_id))
    return out


def answer_of(reply: Reply) -> wire.CoapMessage:
    return wire.decode(reply.data)


# -- acknowledge after storing; duplicates ---------------------------------------------------------
def test_request_is_stored_before_its_empty_ack_and_a_duplicate_gets_the_same_ack():
    c = core()
    first = c.on_datagrams(0.0, 1000.0, [(request(11, b"t1", UE_A), A1)])
    (store,) = of(first, Store)
    assert not of(first, Ack)  # nothing promised before the store
    assert store.requests[0].query == UeQuery(UE_A) and store.requests[0].mid == 11
    # a retransmission while the store is being written: nothing yet, and nothing stored twice
    assert c.on_datagrams(0.1, 1000.1, [(request(11, b"t1", UE_A), A1)]) == []
    after = c.on_stored(0.2, store.batch, stored_as(store))
    assert of(after, Ack) == [Ack(A1, empty(ACK, 11))]
    # a retransmission after the ACK: the same ACK again, no new Store (RFC 7252 §4.5)
    again = c.on_datagrams(1.0, 1001.0, [(request(11, b"t1", UE_A), A1)])
    assert again == [Ack(A1, empty(ACK, 11))]
    assert c.stats["duplicates"] == 2 and c.stats["stored"] == 1


def test_a_burst_is_one_store_and_one_bulk_fetch_after_max_wait():
    c = core(max_wait=0.5)
    acts = receive(c, 0.0, (request(1, b"a", UE_A), A1), (request(1, b"b", UE_B), A2))
    assert len(of(acts, Store)) == 1 and len(of(acts, Ack)) == 2 and not of(acts, Fetch)
    assert c.next_deadline() == 0.5
    (fetch,) = of(c.on_tick(0.5), Fetch)
    assert fetch.bulk and set(fetch.keys) == {BulkItem(UE_A), BulkItem(UE_B)}


# -- answers, retransmission, ACK ----------------------------------------------------------------
def test_answer_is_a_con_separate_response_retransmitted_four_times_with_doubling_timeouts():
    c = core(max_wait=0.0)
    acts = receive(c, 0.0, (request(5, b"tokA", UE_A), A1))
    (fetch,) = of(acts, Fetch)
    out = c.on_outcome(0.1, fetch.op, bulk_answer((UE_A, "sid-a")))
    (reply,) = of(out, Reply)
    assert of(out, MarkAnswered) == [MarkAnswered((1,))]
    msg = answer_of(reply)
    assert reply.addr == A1 and msg.mtype == CON and msg.token == b"tokA" and msg.code == 0x45
    assert cbor2.loads(msg.payload)[0]["valUeIds"] == {"uris": [UE_A]}
    first_timeout = c.next_deadline() - 0.1
    assert 2.0 <= first_timeout <= 3.0
    sent, now, gaps = [0.1], 0.1, []
    removed = []
    while c.next_deadline() is not None:
        now = c.next_deadline()
        acts = c.on_tick(now)
        removed += of(acts, Remove)
        for r in of(acts, Reply):
            assert r.data == reply.data  # a retransmission is the same message (same MID)
            gaps.append(now - sent[-1])
            sent.append(now)
    assert len(gaps) == 4  # MAX_RETRANSMIT
    for a, b in itertools.pairwise(gaps):
        assert abs(b - 2 * a) < 1e-6
    assert removed == [Remove((1,))]  # undelivered after the last timeout: given up, not kept
    assert c.stats["undelivered"] == 1 and c.unanswered == 0


def test_ack_of_the_answer_ends_the_request():
    c = core(max_wait=0.0)
    (fetch,) = of(receive(c, 0.0, (request(5, b"tokA", UE_A), A1)), Fetch)
    (reply,) = of(c.on_outcome(0.1, fetch.op, bulk_answer((UE_A, "sid-a"))), Reply)
    mid = answer_of(reply).mid
    assert c.on_datagrams(0.2, 1000.2, [(empty(ACK, mid), A1)]) == [Remove((1,))]
    assert c.next_deadline() is None and c.unanswered == 0 and c.stats["delivered"] == 1


def test_rst_of_the_answer_also_ends_the_request():
    c = core(max_wait=0.0)
    (fetch,) = of(receive(c, 0.0, (request(5, b"tokA", UE_A), A1)), Fetch)
    (reply,) = of(c.on_outcome(0.1, fetch.op, bulk_answer((UE_A, "sid-a"))), Reply)
    assert c.on_datagrams(0.2, 1000.2, [(empty(RST, answer_of(reply).mid), A1)]) == [Remove((1,))]


def test_answers_beyond_a_burst_wait_and_each_is_retransmitted_from_its_own_transmission():
    """A bulk answer for many UEs: ``send_burst`` answers go out with the outcome, the rest when
    the shell asks; ACK_TIMEOUT × [1, 1.5] = [2 s, 3 s] counts from each one's own transmission
    (RFC 7252 §4.2), not from when the outcome arrived."""
    config = CoreConfig(policy=ServicePolicy(max_wait=0.0), cache=False, send_burst=2)
    c = GatewayCore(config, rng=random.Random(3))
    ues = [f"urn:gsma:imei:35209900-{i:06d}-0" for i in range(5)]
    reqs = [(request(i, bytes([65 + i]), ue), ("127.0.0.1", 41000 + i)) for i, ue in enumerate(ues)]
    (fetch,) = of(receive(c, 0.0, *reqs), Fetch)
    out = c.on_outcome(0.1, fetch.op, bulk_answer(*[(ue, f"sid-{i}") for i, ue in enumerate(ues)]))
    assert len(of(out, Reply)) == 2 and len(of(out, MarkAnswered)) == 5 and c.answers_waiting == 3
    sent_at = {r.data: 0.1 for r in of(out, Reply)}
    sent_at |= {r.data: 5.0 for r in of(c.send_answers(5.0, 2), Reply)}
    sent_at |= {r.data: 9.0 for r in of(c.send_answers(9.0, 10), Reply)}
    assert c.answers_waiting == 0 and c.send_answers(9.0, 10) == []
    assert sorted(wire.decode(d).token for d in sent_at) == [bytes([65 + i]) for i in range(5)]
    first_retransmission: dict[bytes, float] = {}
    while len(first_retransmission) < 5:
        now = c.next_deadline()
        for r in of(c.on_tick(now), Reply):
            first_retransmission.setdefault(r.data, now)
    for data, t in first_retransmission.items():
        assert 2.0 <= t - sent_at[data] <= 3.0


# -- each bulk GET answered as it comes; keys carried through ---------------------------------------
def test_each_bulk_get_outcome_is_answered_at_once_and_the_rest_retried_when_the_fetch_ends():
    c = core(max_wait=0.0, retry_initial=1.0)
    acts = receive(c, 0.0, (request(1, b"a", UE_A), A1), (request(1, b"b", UE_B), A2))
    (fetch,) = of(acts, Fetch)
    out = c.on_outcome(0.1, fetch.op, bulk_answer((UE_A, "sid-a")))
    assert [r.addr for r in of(out, Reply)] == [A1]  # UE A does not wait for UE B's bulk GET
    # an outcome naming a UE this fetch did not ask for is ignored
    assert c.on_outcome(0.2, fetch.op, bulk_answer((UE_C, "sid-c"))) == []
    assert c.on_fetch_done(0.3, fetch.op) == []  # UE B not covered: back off, retry
    retry = of(c.on_tick(1.3), Fetch)
    assert len(retry) == 1 and retry[0].keys == (BulkItem(UE_B),)
    out = c.on_outcome(1.4, retry[0].op, bulk_answer((UE_B, "sid-b")))
    (reply,) = of(out, Reply)
    assert reply.addr == A2 and answer_of(reply).token == b"b"


def test_no_answer_from_the_scm_s_is_retried_not_answered():
    c = core(max_wait=0.0, retry_initial=0.5)
    (fetch,) = of(receive(c, 0.0, (request(1, b"a", UE_A), A1)), Fetch)
    failed = UpstreamOutcome((UE_A,), True, None, detail="timeout")
    assert c.on_outcome(1.0, fetch.op, failed) == [] and c.on_fetch_done(1.0, fetch.op) == []
    assert of(c.on_tick(1.5), Fetch)[0].keys == (BulkItem(UE_A),)


# -- SPEC D13: a repeat of the same UE supersedes ----------------------------------------------------
def test_repeat_from_a_new_port_supersedes_and_only_the_latest_exchange_is_answered():
    c = core(max_wait=0.5)
    receive(c, 0.0, (request(1, b"old", UE_A), A1), first_id=1)
    # the UE gave up on its exchange and asks again from a new port, new MID and token
    acts = receive(c, 0.3, (request(9, b"new", UE_A), A2), first_id=2)
    assert of(acts, Ack) == [Ack(A2, empty(ACK, 9))]
    assert of(acts, Remove) == [Remove((1,))]  # the earlier request leaves the store
    assert c.stats["superseded"] == 1 and c.unanswered == 1
    (fetch,) = of(c.on_tick(0.5), Fetch)
    assert fetch.keys == (BulkItem(UE_A),)  # asked for once
    (reply,) = of(c.on_outcome(0.6, fetch.op, bulk_answer((UE_A, "sid-a"))), Reply)
    assert reply.addr == A2 and answer_of(reply).token == b"new"


def test_repeat_with_a_new_token_on_the_same_port_supersedes():
    c = core(max_wait=0.5)
    receive(c, 0.0, (request(1, b"t1", UE_A), A1), first_id=1)
    acts = receive(c, 0.2, (request(2, b"t2", UE_A), A1), first_id=2)
    assert of(acts, Remove) == [Remove((1,))]
    (fetch,) = of(c.on_tick(0.5), Fetch)
    (reply,) = of(c.on_outcome(0.6, fetch.op, bulk_answer((UE_A, "sid-a"))), Reply)
    assert answer_of(reply).token == b"t2"


def test_repeat_while_the_answer_is_in_flight_gets_it_at_once_and_the_old_one_stops():
    c = core(max_wait=0.0)
    (fetch,) = of(receive(c, 0.0, (request(1, b"old", UE_A), A1), first_id=1), Fetch)
    (old_reply,) = of(c.on_outcome(0.1, fetch.op, bulk_answer((UE_A, "sid-a"))), Reply)
    acts = receive(c, 1.0, (request(4, b"new", UE_A), A2), first_id=2)
    assert of(acts, Remove) == [Remove((1,))]
    (reply,) = of(acts, Reply)
    assert reply.addr == A2 and answer_of(reply).token == b"new"
    assert answer_of(reply).payload == answer_of(old_reply).payload
    assert not of(acts, Fetch)  # not fetched again
    # from now on only the new exchange is retransmitted
    now, addrs = 1.0, set()
    while c.next_deadline() is not None:
        now = c.next_deadline()
        addrs |= {r.addr for r in of(c.on_tick(now), Reply)}
    assert addrs == {A2}


def test_other_ues_are_not_superseded():
    c = core(max_wait=0.5)
    receive(c, 0.0, (request(1, b"a", UE_A), A1), (request(1, b"b", UE_B), A2))
    assert c.stats["superseded"] == 0 and c.unanswered == 2


# -- restart from stored state -----------------------------------------------------------------------
def stored(req_id, addr, mid, token, ue, received, requester=None) -> StoredRequest:
    return StoredRequest(req_id, addr[0], addr[1], mid, token, True, UeQuery(ue), False, 0, 6, received,
                         "stored", None, requester)  # fmt: skip


def test_restart_answers_every_stored_request_on_its_stored_endpoint_and_token():
    c = core(max_wait=0.5)
    pending = [stored(7, A1, 100, b"tA", UE_A, 990.0), stored(8, A2, 200, b"tB", UE_B, 995.0)]
    acts = c.restore(0.0, 1000.0, pending)
    (fetch,) = of(acts, Fetch)  # waited longer than max_wait already: flushed at once
    assert set(fetch.keys) == {BulkItem(UE_A), BulkItem(UE_B)}
    # a retransmission of a stored request after the restart: the store knows it (None), so it is
    # acknowledged again and nothing else happens
    (again,) = c.on_datagrams(0.1, 1000.1, [(request(100, b"tA", UE_A), A1)])
    assert isinstance(again, Store)
    assert c.on_stored(0.1, again.batch, [None]) == [Ack(A1, empty(ACK, 100))]
    assert c.unanswered == 2
    out = c.on_outcome(0.2, fetch.op, bulk_answer((UE_A, "sid-a"), (UE_B, "sid-b")))
    replies = {r.addr: answer_of(r) for r in of(out, Reply)}
    assert replies[A1].token == b"tA" and replies[A2].token == b"tB"
    assert c.stats["restored"] == 2


def test_restart_keeps_only_the_latest_of_two_stored_repeats():
    c = core(max_wait=0.5)
    pending = [stored(1, A1, 10, b"old", UE_A, 990.0), stored(2, A2, 11, b"new", UE_A, 995.0)]
    acts = c.restore(0.0, 1000.0, pending)
    assert Remove((1,)) in acts and c.unanswered == 1
    (fetch,) = of(acts, Fetch)
    (reply,) = of(c.on_outcome(0.1, fetch.op, bulk_answer((UE_A, "sid-a"))), Reply)
    assert reply.addr == A2 and answer_of(reply).token == b"new"


# -- the SCM-C's rules (pure) ---------------------------------------------------------------------
def flags():
    n = iter(range(100))
    return lambda: f"flag-{next(n)}"


def test_4_13_halves_the_bulk_get_under_fresh_flags_and_lowers_the_maximum():
    uris = tuple(f"urn:gsma:imei:35209900-{i:06d}-0" for i in range(10))
    step, max_ues = after_bulk_answer(BulkGet("f0", uris, None, "35209900"), 0x8D, 10_000, False, flags())
    assert isinstance(step, Split) and max_ues == 5 and step.max_ues == 5
    assert [g.ue_uris for g in step.gets] == [uris[:5], uris[5:]]
    assert [g.flag for g in step.gets] == ["flag-0", "flag-1"]
    assert all(g.ue_type == "35209900" for g in step.gets)


def test_4_13_for_one_ue_is_final():
    step, max_ues = after_bulk_answer(BulkGet("f0", (UE_A,)), 0x8D, 8, False, flags())
    assert isinstance(step, Done) and max_ues == 8


def test_4_08_restarts_once_under_a_fresh_flag_then_hands_on():
    get = BulkGet("f0", (UE_A, UE_B))
    step, _ = after_bulk_answer(get, 0x88, 100, False, flags())
    assert isinstance(step, Restart) and step.get == BulkGet("flag-0", (UE_A, UE_B))
    again, _ = after_bulk_answer(step.get, 0x88, 100, True, flags())
    assert isinstance(again, Done)
    assert UpstreamOutcome((UE_A, UE_B), True, 0x88).retryable  # the Gateway Client backs off


def test_other_codes_are_done():
    for code in (0x45, 0x83, 0x84, 0xA3, None):
        assert isinstance(after_bulk_answer(BulkGet("f", (UE_A, UE_B)), code, 100, False, flags())[0], Done)


def test_remaining_blocks_after_block_0():
    assert remaining_blocks(5000, 1024, 6) == [1, 2, 3, 4]  # 5,000 bytes: blocks 0..4 of 1,024
    assert remaining_blocks(2048, 1024, 6) == [1]
    assert remaining_blocks(None, 1024, 6) is None  # no Size2: one after the other
    assert remaining_blocks(1024, 1024, 6) is None
    assert remaining_blocks(9000, 4096, 7) is None  # BERT over TCP: sequential
