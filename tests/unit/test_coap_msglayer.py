"""The pure CoAP message layer (RFC 7252 §4–§5, RFC 7959, RFC 7641), without sockets or clocks.

Expected values come from the RFCs: ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4
(§4.8), EXCHANGE_LIFETIME 247 s and NON_LIFETIME 145 s (§4.8.2), block sizes 2**(SZX+4) (RFC 7959).
"""

from __future__ import annotations

import heapq
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g.coap import wire
from msgin5g.coap.blockwise import BlockError, BlockwiseTransfer, slice_block2
from msgin5g.coap.msglayer import (
    Acked,
    Confirmed,
    Deliver,
    Fail,
    MessageLayer,
    MidAllocator,
    Params,
    Send,
    Serve,
    Unmatched,
)
from msgin5g.coap.wire import ACK, CON, EMPTY, GET, NON, OPT_BLOCK2, OPT_ETAG, OPT_SIZE2, RST, CoapMessage

C, S = ("10.0.0.1", 5683), ("10.0.0.2", 5683)  # client, server
CONTENT = 0x45  # 2.05
PATH = [(11, b"cfg")]


def get(path=PATH) -> CoapMessage:
    return CoapMessage(CON, GET, 0, b"", list(path))


def sends(actions) -> list[CoapMessage]:
    return [wire.decode(a.data) for a in actions if isinstance(a, Send)]


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


# -- message IDs ------------------------------------------------------------------------------------


def test_mid_allocator_never_reuses_within_exchange_lifetime():
    alloc = MidAllocator(lifetime=247.0, start=65530)
    taken = [alloc.take(0.0) for _ in range(65536)]
    assert len(set(taken)) == 65536 and taken[:7] == [65530, 65531, 65532, 65533, 65534, 65535, 0]
    assert alloc.take(246.9) is None and not alloc.available(246.9)
    assert alloc.next_free_at() == 247.0
    assert alloc.take(247.0) == 65530  # the oldest, exactly one lifetime later


def test_layer_message_ids_towards_a_peer_are_distinct():
    layer = MessageLayer(Params(nstart=1000), random.Random(1))
    mids = []
    for _ in range(500):
        _, actions = layer.request(0.0, get(), S)
        mids += [m.mid for m in sends(actions)]
    assert len(mids) == 500 and len(set(mids)) == 500


# -- duplicate detection (RFC 7252 §4.5) -------------------------------------------------------------


def test_duplicate_con_gets_the_cached_piggybacked_reply_and_is_not_served_again():
    server = MessageLayer(rng=random.Random(2), server=True)
    data = wire.encode(CoapMessage(CON, GET, 77, b"tk", PATH))
    serve = only(server.on_datagram(0.0, data, C), Serve)
    _, actions = server.respond(0.5, serve.request, CoapMessage(ACK, CONTENT, 0, b"", [], b"hello"))
    (reply,) = [a.data for a in actions]
    assert wire.decode(reply) == CoapMessage(ACK, CONTENT, 77, b"tk", [], b"hello")
    again = server.on_datagram(10.0, data, C)
    assert again == [Send(reply, C)]
    assert server.counters.duplicates == 1
    # after EXCHANGE_LIFETIME (247 s) the same message ID is a new message
    assert isinstance(only(server.on_datagram(247.1, data, C), Serve), Serve)


def test_duplicate_before_the_answer_is_silent_and_non_dedup_lasts_non_lifetime():
    server = MessageLayer(rng=random.Random(3), server=True)
    con = wire.encode(CoapMessage(CON, GET, 5, b"a", PATH))
    only(server.on_datagram(0.0, con, C), Serve)
    assert server.on_datagram(1.0, con, C) == []  # still being answered: nothing to replay
    non = wire.encode(CoapMessage(NON, GET, 6, b"b", PATH))
    only(server.on_datagram(0.0, non, C), Serve)
    assert server.on_datagram(144.9, non, C) == []
    assert isinstance(only(server.on_datagram(145.1, non, C), Serve), Serve)


def test_dedup_cache_is_bounded_and_counts_evictions():
    server = MessageLayer(Params(dedup_capacity=2), random.Random(4), server=True)
    for mid in (1, 2, 3):
        only(server.on_datagram(0.0, wire.encode(CoapMessage(NON, GET, mid, b"", PATH)), C), Serve)
    assert server.counters.dedup_evicted == 1
    # mid 1 was forgotten: served again; mid 3 is still remembered
    only(server.on_datagram(1.0, wire.encode(CoapMessage(NON, GET, 1, b"", PATH)), C), Serve)
    assert server.on_datagram(1.0, wire.encode(CoapMessage(NON, GET, 3, b"", PATH)), C) == []


# -- CON retransmission (RFC 7252 §4.2, §4.8) --------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_retransmission_schedule_within_rfc_bounds_and_give_up(seed):
    layer = MessageLayer(rng=random.Random(seed))
    handle, actions = layer.request(0.0, get(), S)
    (first,) = [a.data for a in actions]
    times = [0.0]
    outcome = []
    now = 0.0
    while (d := layer.next_deadline()) is not None:
        now = d
        for a in layer.on_tick(now):
            if isinstance(a, Send):
                assert a.data == first  # a retransmission is the same message, same MID
                times.append(now)
            else:
                outcome.append((now, a))
    assert len(times) == 5  # the original + MAX_RETRANSMIT (4) retransmissions
    t0 = times[1]
    assert 2.0 <= t0 <= 3.0  # ACK_TIMEOUT .. ACK_TIMEOUT * ACK_RANDOM_FACTOR
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([t0, 2 * t0, 4 * t0, 8 * t0])
    ((at, fail),) = outcome
    assert isinstance(fail, Fail) and fail.handle == handle and fail.cause == "gave-up"
    assert at == pytest.approx(31 * t0) and at <= 93.0  # MAX_TRANSMIT_WAIT
    assert layer.counters.gave_up == 1 and layer.pending() == 0


@pytest.mark.parametrize("seed", range(10))
def test_give_up_wait_ends_the_exchange_sooner_after_the_last_retransmission(seed):
    """RFC 7252 §4.2: the same five transmissions (doubling from ACK_TIMEOUT..ACK_TIMEOUT*1.5), but
    after the last one the sender waits only ``give_up_wait`` (3 s) instead of 16 x the first
    timeout before it gives up (SPEC D13: the constrained UE then asks again at once)."""
    layer = MessageLayer(Params(give_up_wait=3.0), rng=random.Random(seed))
    handle, _ = layer.request(0.0, get(), S)
    times, outcome = [0.0], []
    while (d := layer.next_deadline()) is not None:
        for a in layer.on_tick(d):
            (times.append(d) if isinstance(a, Send) else outcome.append((d, a)))
    t0 = times[1]
    assert 2.0 <= t0 <= 3.0
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([t0, 2 * t0, 4 * t0, 8 * t0])
    ((at, fail),) = outcome
    assert fail == Fail(handle, "gave-up", fail.reason)
    assert at == pytest.approx(15 * t0 + 3.0)  # not 31 * t0


def test_empty_ack_stops_retransmission_and_the_separate_response_is_acked_once():
    layer = MessageLayer(rng=random.Random(5))
    handle, actions = layer.request(0.0, get(), S, deadline=60.0)
    req = sends(actions)[0]
    assert layer.on_message(1.0, CoapMessage(ACK, EMPTY, req.mid), S) == [Acked(handle)]
    assert layer.on_message(1.5, CoapMessage(ACK, EMPTY, req.mid), S) == []  # a duplicate ACK
    assert layer.next_deadline() == 60.0  # only the wait for the response is left
    sep = CoapMessage(CON, CONTENT, 999, req.token, [], b"doc")
    out = layer.on_message(5.0, sep, S)
    assert sends(out) == [CoapMessage(ACK, EMPTY, 999)]
    assert only(out, Deliver).handle == handle and only(out, Deliver).response.payload == b"doc"
    # the server did not see our ACK and sends the response again: same ACK, no second delivery
    again = layer.on_message(7.0, sep, S)
    assert sends(again) == [CoapMessage(ACK, EMPTY, 999)] and not any(isinstance(a, Deliver) for a in again)


def test_piggybacked_response_needs_matching_mid_and_token():
    layer = MessageLayer(rng=random.Random(6))
    handle, actions = layer.request(0.0, get(), S)
    req = sends(actions)[0]
    assert isinstance(
        only(layer.on_message(0.1, CoapMessage(ACK, CONTENT, req.mid, b"other"), S), Unmatched), Unmatched
    )
    out = layer.on_message(0.2, CoapMessage(ACK, CONTENT, req.mid, req.token, [], b"x"), S)
    assert only(out, Deliver) == Deliver(handle, CoapMessage(ACK, CONTENT, req.mid, req.token, [], b"x"), S)


def test_rst_fails_the_request_and_stray_con_response_is_rejected():
    layer = MessageLayer(rng=random.Random(7))
    handle, actions = layer.request(0.0, get(), S)
    req = sends(actions)[0]
    assert only(layer.on_message(0.1, CoapMessage(RST, EMPTY, req.mid), S), Fail).handle == handle
    stray = layer.on_message(1.0, CoapMessage(CON, CONTENT, 4, b"zz"), S)
    assert sends(stray) == [CoapMessage(RST, EMPTY, 4)] and isinstance(only(stray, Unmatched), Unmatched)
    acking = MessageLayer(rng=random.Random(7), ack_unmatched=True)
    assert sends(acking.on_message(1.0, CoapMessage(CON, CONTENT, 4, b"zz"), S)) == [
        CoapMessage(ACK, EMPTY, 4)
    ]


def test_client_rejects_requests_and_pings_malformed_con_gets_rst():
    layer = MessageLayer(rng=random.Random(8))
    assert sends(layer.on_message(0, CoapMessage(CON, GET, 9, b"", PATH), S)) == [CoapMessage(RST, EMPTY, 9)]
    assert sends(layer.on_message(0, CoapMessage(CON, EMPTY, 10), S)) == [CoapMessage(RST, EMPTY, 10)]
    assert sends(layer.on_datagram(0, b"\x40\x01\x00\x0b\xff", S)) == [CoapMessage(RST, EMPTY, 11)]
    assert layer.on_datagram(0, b"\x50\x01\x00\x0c\xff", S) == []  # malformed NON: silently dropped
    assert layer.counters.malformed == 2


def test_deadline_fails_a_request_waiting_for_its_separate_response():
    layer = MessageLayer(rng=random.Random(9))
    handle, actions = layer.request(0.0, get(), S, deadline=30.0)
    layer.on_message(0.5, CoapMessage(ACK, EMPTY, sends(actions)[0].mid), S)
    assert layer.on_tick(29.9) == []
    assert only(layer.on_tick(30.0), Fail) == Fail(handle, "deadline", "no response before the deadline")


def test_separate_wait_counts_from_the_empty_ack_not_from_the_first_copy():
    # SPEC D13: a client that asks again waits Params.separate_wait after the empty ACK
    layer = MessageLayer(Params(separate_wait=30.0), rng=random.Random(9))
    handle, actions = layer.request(0.0, get(), S, deadline=78.0)
    first = sends(actions)[0]
    retx = [m for m in sends(layer.on_tick(3.1))]  # the first timeout is in [2, 3] s: one copy
    assert [m.mid for m in retx] == [first.mid]
    assert only(layer.on_message(5.0, CoapMessage(ACK, EMPTY, first.mid), S), Acked).handle == handle
    assert layer.next_deadline() == pytest.approx(35.0)
    assert layer.on_tick(34.9) == []
    assert only(layer.on_tick(35.0), Fail) == Fail(handle, "deadline", "no response before the deadline")
    # never later than the request's own deadline
    late = MessageLayer(Params(separate_wait=30.0), rng=random.Random(9))
    h2, a2 = late.request(0.0, get(), S, deadline=40.0)
    late.on_message(20.0, CoapMessage(ACK, EMPTY, sends(a2)[0].mid), S)
    assert late.on_tick(39.9) == [] and only(late.on_tick(40.0), Fail).handle == h2


def test_retransmission_schedule_is_rfc7252s():
    from msgin5g.coap.actions import Retransmission

    params = Params()
    tx = Retransmission.start(b"x", 10.0, params, random.Random(1))
    assert 2.0 <= tx.timeout <= 3.0 and tx.next_at == 10.0 + tx.timeout
    first = tx.timeout
    waits = []
    now = tx.next_at
    while tx.due(now, params):
        waits.append(tx.next_at - now)
        now = tx.next_at
    assert waits == pytest.approx([2 * first, 4 * first, 8 * first, 16 * first])  # doubling, 4 copies
    assert tx.tries == 4
    quick = Params(give_up_wait=3.0)  # SPEC D13: one longest first timeout after the last copy
    short = Retransmission.start(b"x", 0.0, quick, random.Random(1))
    for _ in range(4):
        at = short.next_at
        assert short.due(at, quick)
    assert short.next_at - at == 3.0 and not short.due(short.next_at, quick)


# -- NSTART (RFC 7252 §4.7) -------------------------------------------------------------------------


def test_nstart_queues_requests_per_peer():
    other = ("10.0.0.3", 5683)
    layer = MessageLayer(Params(nstart=1), random.Random(10))
    _, a1 = layer.request(0.0, get(), S)
    _, a2 = layer.request(0.0, get(), S)
    _, a3 = layer.request(0.0, get(), other)
    assert len(sends(a1)) == 1 and sends(a2) == [] and len(sends(a3)) == 1  # another peer: not queued
    first = sends(a1)[0]
    released = layer.on_message(1.0, CoapMessage(ACK, EMPTY, first.mid), S)  # no longer outstanding
    (second,) = sends(released)
    assert second.mid != first.mid and second.token != first.token
    two = MessageLayer(Params(nstart=2), random.Random(10))
    assert [len(sends(two.request(0.0, get(), S)[1])) for _ in range(3)] == [1, 1, 0]


def test_non_request_outstanding_until_answered():
    layer = MessageLayer(Params(nstart=1), random.Random(11))
    h1, a1 = layer.request(0.0, get(), S, confirmable=False)
    _, a2 = layer.request(0.0, get(), S, confirmable=False)
    req = sends(a1)[0]
    assert req.mtype == NON and sends(a2) == [] and layer.next_deadline() == pytest.approx(145.0)
    out = layer.on_message(1.0, CoapMessage(NON, CONTENT, 500, req.token), S)
    assert only(out, Deliver).handle == h1 and len(sends(out)) == 1  # the queued one goes now


# -- server: separate responses (RFC 7252 §5.2.2) ---------------------------------------------------


def test_server_separate_response_retransmitted_until_acked():
    server = MessageLayer(rng=random.Random(12), server=True)
    data = wire.encode(CoapMessage(CON, GET, 40, b"t1", PATH))
    incoming = only(server.on_datagram(0.0, data, C), Serve).request
    assert sends(server.accept(0.1, incoming)) == [CoapMessage(ACK, EMPTY, 40)]
    assert sends(server.on_datagram(2.0, data, C)) == [CoapMessage(ACK, EMPTY, 40)]  # replayed
    handle, out = server.respond(5.0, incoming, CoapMessage(CON, CONTENT, 0, b"", [], b"late"))
    (resp,) = sends(out)
    assert (resp.mtype, resp.code, resp.token, resp.payload) == (CON, CONTENT, b"t1", b"late")
    deadline = server.next_deadline()
    assert 7.0 <= deadline <= 8.0
    assert sends(server.on_tick(deadline)) == [resp]  # retransmitted, same MID
    assert server.on_message(9.0, CoapMessage(ACK, EMPTY, resp.mid), C) == [Confirmed(handle)]
    assert server.next_deadline() is None


def test_respond_to_a_stored_request_and_rst_fails_it():
    server = MessageLayer(rng=random.Random(13), server=True)
    handle, out = server.respond_to(0.0, C, b"stored", CoapMessage(CON, CONTENT, 0, b"", [], b"x"))
    (resp,) = sends(out)
    assert resp.token == b"stored" and resp.mtype == CON
    assert server.on_message(0.5, CoapMessage(RST, EMPTY, resp.mid), C) == [
        Fail(handle, "reset", "rejected with RST")
    ]
    _, non = server.respond_to(0.0, C, b"n", CoapMessage(CON, CONTENT, 0), confirmable=False)
    assert sends(non)[0].mtype == NON and server.next_deadline() is None


def test_empty_ack_and_rst_datagrams_end_exactly_their_own_exchange():
    """A four-byte empty ACK or RST (RFC 7252 §3: version 1, TKL 0, code 0.00) ends the CON with
    that message ID towards that endpoint, once; from another endpoint it matches nothing."""
    server = MessageLayer(rng=random.Random(15), server=True)
    handles, mids = [], []
    for token in (b"a", b"b", b"c"):
        handle, out = server.respond_to(0.0, C, token, CoapMessage(CON, CONTENT, 0, b"", [], b"x"))
        handles.append(handle)
        mids.append(sends(out)[0].mid)
    ack = [bytes([0x60, 0, m >> 8, m & 0xFF]) for m in mids]  # 01 10 0000: ACK, no token
    rst = [bytes([0x70, 0, m >> 8, m & 0xFF]) for m in mids]  # 01 11 0000: RST, no token
    assert server.on_datagram(0.5, ack[0], C) == [Confirmed(handles[0])]
    assert server.on_datagram(0.6, ack[0], C) == []  # a duplicate ACK: nothing more
    assert server.on_datagram(0.7, rst[1], C) == [Fail(handles[1], "reset", "rejected with RST")]
    assert server.on_datagram(0.8, ack[2], ("10.0.0.9", 5683)) == []  # not that endpoint's MID
    assert server.counters.unmatched == 2
    assert server.on_datagram(0.9, ack[2], C) == [Confirmed(handles[2])]
    assert server.next_deadline() is None
    # the client side: an empty ACK of a request says its answer follows (RFC 7252 §5.2.2)
    client = MessageLayer(rng=random.Random(16))
    handle, out = client.request(0.0, get(), S, deadline=60.0)
    mid = sends(out)[0].mid
    assert client.on_datagram(0.1, bytes([0x60, 0, mid >> 8, mid & 0xFF]), S) == [Acked(handle)]
    assert client.next_deadline() == 60.0  # no more retransmissions, the wait for the answer only


# -- Block2 (RFC 7959) ---------------------------------------------------------------------------------


def test_server_slices_a_large_body_into_the_blocks_asked_for():
    server = MessageLayer(rng=random.Random(14), server=True)
    body = bytes(range(256)) * 10  # 2560 bytes: 1024 + 1024 + 512
    inc = only(server.on_datagram(0, wire.encode(CoapMessage(CON, GET, 1, b"a", PATH)), C), Serve).request
    (b0,) = sends(server.respond(0, inc, CoapMessage(CON, CONTENT, 0, b"", [], body))[1])
    assert b0.payload == body[:1024] and b0.first(OPT_BLOCK2) == b"\x0e" and b0.uint(OPT_SIZE2) == 2560
    opts = [*PATH, (OPT_BLOCK2, wire.block_option(2, False, 6))]
    inc = only(server.on_datagram(0, wire.encode(CoapMessage(CON, GET, 2, b"b", opts)), C), Serve).request
    (b2,) = sends(server.respond(0, inc, CoapMessage(CON, CONTENT, 0, b"", [], body))[1])
    assert b2.payload == body[2048:] and wire.parse_block(b2.first(OPT_BLOCK2)) == (2, False, 6)
    opts = [*PATH, (OPT_BLOCK2, wire.block_option(3, False, 6))]
    inc = only(server.on_datagram(0, wire.encode(CoapMessage(CON, GET, 3, b"c", opts)), C), Serve).request
    (past,) = sends(server.respond(0, inc, CoapMessage(CON, CONTENT, 0, b"", [], body))[1])
    assert past.code == 0x82  # 4.02: no such block


def serve_blockwise(client, out, body, now, etags=None):
    """Answer each block request in ``out`` from ``body`` (piggybacked), as a server would."""
    delivered = []
    rounds = 0
    while True:
        reqs = sends(out)
        delivered += [a for a in out if isinstance(a, (Deliver, Fail))]
        if not reqs:
            return delivered, rounds
        (req,) = reqs
        v = req.first(OPT_BLOCK2)
        num, _, szx = wire.parse_block(v) if v is not None else (0, False, 6)
        chunk, more = slice_block2(body, num, szx)
        opts = [(OPT_BLOCK2, wire.block_option(num, more, szx))]
        if etags is not None:
            opts.append((OPT_ETAG, etags[min(num, len(etags) - 1)]))
        out = client.on_message(now, CoapMessage(ACK, CONTENT, req.mid, req.token, opts, chunk), S)
        rounds += 1


def test_client_reassembles_block2_with_follow_up_requests():
    client = MessageLayer(rng=random.Random(15))
    body = b"".join(i.to_bytes(2, "big") for i in range(1500))  # 3000 bytes
    handle, out = client.request(0.0, get(), S, blockwise=True)
    delivered, rounds = serve_blockwise(client, out, body, 0.1, etags=[b"e1"])
    assert rounds == 3 and delivered == [Deliver(handle, delivered[0].response, S)]
    assert delivered[0].response.payload == body and delivered[0].response.first(OPT_BLOCK2) is None


def test_client_fails_when_the_etag_changes_mid_transfer():
    client = MessageLayer(rng=random.Random(16))
    handle, out = client.request(0.0, get(), S, blockwise=True)
    delivered, _ = serve_blockwise(client, out, b"x" * 3000, 0.1, etags=[b"v1", b"v2"])
    assert len(delivered) == 1 and isinstance(delivered[0], Fail) and "ETag" in delivered[0].reason
    assert delivered[0].handle == handle and client.pending() == 0


def test_blockwise_transfer_gaps_out_of_order_and_missing():
    t = BlockwiseTransfer()
    t.add(0, True, 4, b"a" * 256, b"E")
    t.add(2, False, 4, b"c" * 100, b"E")  # the last block before the middle one (Q-Block2 order)
    assert not t.complete and t.next_block() == 1 and t.missing() == [1]
    t.add(1, True, 4, b"b" * 256, b"E")
    assert t.complete and t.body() == b"a" * 256 + b"b" * 256 + b"c" * 100 and t.missing() == []


def test_blockwise_transfer_rejects_what_cannot_belong():
    t = BlockwiseTransfer(max_body=2048)
    t.add(0, True, 6, b"a" * 1024, None)
    with pytest.raises(BlockError):
        t.add(1, True, 6, b"short", None)  # not the last, but not a whole block
    with pytest.raises(BlockError):
        t.add(1, True, 6, b"b" * 1024, b"etag-appeared")
    with pytest.raises(BlockError):
        t.add(2, False, 6, b"c", None)  # past max_body
    t.add(1, False, 6, b"b" * 10, None)
    assert t.complete and len(t.body()) == 1034
    u = BlockwiseTransfer()
    u.add(0, True, 6, b"a" * 1024, None, size2=5000)
    assert u.missing() == [1, 2, 3, 4]  # what a Q-Block2 client would ask for (RFC 9177 §4.4)
    # the server answers later blocks smaller (RFC 7959 §2.2): reassembled by byte offset
    u = BlockwiseTransfer()
    u.add(0, True, 6, b"a" * 1024, None)
    u.add(3, False, 5, b"c" * 3, None)  # 512-byte block 3 = bytes 1536..1539, the end
    assert not u.complete and u.next_block() == 2 and u.missing() == [2]  # 1024..1536 at 512 bytes
    u.add(2, True, 5, b"b" * 512, None)
    assert u.complete and u.body() == b"a" * 1024 + b"b" * 512 + b"c" * 3


def test_observation_stays_open_for_notifications_until_cancelled():
    client = MessageLayer(rng=random.Random(17))
    obs_get = CoapMessage(CON, GET, 0, b"", [(6, b""), *PATH])
    handle, out = client.request(0.0, obs_get, S, observe=True)
    req = sends(out)[0]
    first = client.on_message(0.1, CoapMessage(ACK, CONTENT, req.mid, req.token, [(6, b"\x01")], b"v1"), S)
    assert only(first, Deliver).final is False
    note = client.on_message(5.0, CoapMessage(CON, CONTENT, 321, req.token, [(6, b"\x02")], b"v2"), S)
    assert sends(note) == [CoapMessage(ACK, EMPTY, 321)] and only(note, Deliver).response.payload == b"v2"
    client.cancel(handle)
    late = client.on_message(9.0, CoapMessage(CON, CONTENT, 322, req.token, [(6, b"\x03")], b"v3"), S)
    assert sends(late) == [CoapMessage(RST, EMPTY, 322)]  # RFC 7641 §3.6


# -- every request answered exactly once over a lossy, duplicating wire (seeded) ---------------------


def run_lossy(seed: int, loss: float, dup: float, n: int, separate: float):
    rng = random.Random(seed)
    client = MessageLayer(Params(nstart=3), random.Random(seed + 1))
    server = MessageLayer(rng=random.Random(seed + 2), server=True)
    wire_q: list = []  # (at, seq, layer name, data, from)
    seq = iter(range(10**9))
    app: list = []  # (at, seq, incoming): the server's late answers
    outcomes: dict[int, list] = {}
    served: dict[bytes, int] = {}
    expected: dict[int, bytes] = {}

    def post(actions, src, dst_name, now):
        for a in actions:
            if isinstance(a, Send):
                copies = 0 if rng.random() < loss else (2 if rng.random() < dup else 1)
                for _ in range(copies):
                    heapq.heappush(wire_q, (now + rng.uniform(0.01, 0.8), next(seq), dst_name, a.data, src))
            elif isinstance(a, (Deliver, Fail)) and src == C:
                outcomes.setdefault(a.handle, []).append(a)
            elif isinstance(a, Serve):
                body = a.request.message.first(11)
                served[body] = served.get(body, 0) + 1
                if rng.random() < separate:
                    post(server.accept(now, a.request), S, "client", now)
                    heapq.heappush(app, (now + rng.uniform(0.5, 5.0), next(seq), a.request))
                else:
                    resp = CoapMessage(ACK, CONTENT, 0, b"", [], body)
                    post(server.respond(now, a.request, resp)[1], S, "client", now)

    now = 0.0
    for i in range(n):
        name = f"r{i}".encode()
        h, actions = client.request(now, get([(11, name)]), S, deadline=200.0)
        expected[h] = name
        post(actions, C, "server", now)
    while True:
        times = [t for t in (client.next_deadline(), server.next_deadline()) if t is not None]
        times += [q[0][0] for q in (wire_q, app) if q]
        if not times:
            break
        now = min(times)
        if wire_q and wire_q[0][0] == now:
            _, _, dst, data, src = heapq.heappop(wire_q)
            layer = client if dst == "client" else server
            here, there = (C, "server") if dst == "client" else (S, "client")
            post(layer.on_datagram(now, data, src), here, there, now)
        elif app and app[0][0] == now:
            _, _, inc = heapq.heappop(app)
            resp = CoapMessage(CON, CONTENT, 0, b"", [], inc.message.first(11))
            post(server.respond(now, inc, resp)[1], S, "client", now)
        else:
            post(client.on_tick(now), C, "server", now)
            post(server.on_tick(now), S, "client", now)
    return outcomes, served, expected


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    loss=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.3),
    separate=st.floats(0.0, 1.0),
)
def test_every_request_answered_exactly_once_on_a_lossy_wire(seed, loss, dup, separate):
    outcomes, served, expected = run_lossy(seed, loss, dup, 12, separate)
    assert sorted(outcomes) == sorted(expected)  # every request has an outcome ...
    for handle, results in outcomes.items():
        assert len(results) == 1  # ... exactly one
        if isinstance(results[0], Deliver):
            assert results[0].response.payload == expected[handle]  # its own answer
    assert all(count == 1 for count in served.values())  # never served twice (dedup)


def test_lossless_wire_answers_everything():
    outcomes, served, expected = run_lossy(99, 0.0, 0.5, 30, 0.5)
    assert all(
        isinstance(r[0], Deliver) and r[0].response.payload == expected[h] for h, r in outcomes.items()
    )
    assert len(outcomes) == 30 and sorted(served.values()) == [1] * 30
