"""The adaptive RTO on the legs that use it, without sockets (RFC 6298 on RFC 7252 §4.8; coap/rto.py):
the message layer (UE requests, the Gateway UE's separate responses) and the Relay UE's two legs.

Expected times are written from the RFCs: RFC 7252's first timeout is ACK_TIMEOUT x [1, 1.5] =
[2, 3] s; once the path answered in a few milliseconds, RFC 6298 gives RTO = MIN_RTO 1 s, so the
first timeout is [1, 1.5] s. A CON that was retransmitted gives no sample (Karn's rule)."""

from __future__ import annotations

import random

import pytest
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from msgin5g.coap import wire
from msgin5g.coap.msglayer import MessageLayer, Params, Send
from msgin5g.coap.wire import ACK, CON, EMPTY, GET, CoapMessage
from msgin5g.relay.core import RelayConfig, RelayCore, SendDownlink, SendUplink

from .test_relay_core import UE_A, UE_B, coap, link, request

S, S2 = ("10.0.0.2", 5683), ("10.0.0.3", 5683)
ADAPTIVE = Params(adaptive_rto=True)


def get() -> CoapMessage:
    return CoapMessage(CON, GET, 0, b"", [(11, b"cfg")])


def first_copy_at(layer: MessageLayer, data: bytes, until: float = 10.0) -> float:
    """When ``data`` is sent again (ticking the layer's own deadlines)."""
    while (d := layer.next_deadline()) is not None and d <= until:
        if any(isinstance(a, Send) and a.data == data for a in layer.on_tick(d)):
            return d
    raise AssertionError("no retransmission")


def sent(actions) -> bytes:
    (data,) = [a.data for a in actions if isinstance(a, Send)]
    return data


@pytest.mark.parametrize("seed", range(5))
def test_after_a_quick_acknowledgement_the_next_con_starts_from_min_rto(seed):
    layer = MessageLayer(ADAPTIVE, random.Random(seed))
    _, out = layer.request(0.0, get(), S)
    layer.on_message(0.01, CoapMessage(ACK, EMPTY, wire.decode(sent(out)).mid), S)
    _, out = layer.request(1.0, get(), S)
    assert 1.0 + 1.0 <= first_copy_at(layer, sent(out)) <= 1.0 + 1.5


@pytest.mark.parametrize("seed", range(5))
def test_without_adaptive_rto_or_after_a_retransmission_rfc7252s_ack_timeout(seed):
    fixed = MessageLayer(Params(), random.Random(seed))
    _, out = fixed.request(0.0, get(), S)
    fixed.on_message(0.01, CoapMessage(ACK, EMPTY, wire.decode(sent(out)).mid), S)
    _, out = fixed.request(1.0, get(), S)
    assert 3.0 <= first_copy_at(fixed, sent(out)) <= 4.0
    karn = MessageLayer(ADAPTIVE, random.Random(seed))
    _, out = karn.request(0.0, get(), S)
    data = sent(out)
    t = first_copy_at(karn, data)  # retransmitted once ...
    karn.on_message(t + 0.01, CoapMessage(ACK, EMPTY, wire.decode(data).mid), S)  # ... then acknowledged
    assert karn.rto.samples == 0  # no sample was taken
    _, out = karn.request(t + 1.0, get(), S)
    assert t + 3.0 <= first_copy_at(karn, sent(out), until=t + 10) <= t + 4.0


@pytest.mark.parametrize("seed", range(5))
def test_the_first_sample_re_times_a_burst_already_in_flight(seed):
    """A fleet asks at once: every CON went before any sample existed. The first acknowledgement
    re-times the others from their first transmission — each goes again once, at [1, 1.5] s."""
    # ACK_TIMEOUT 4 s, so that B's old first timeout, [4, 6] s, comes after its re-timed copy's
    # second one, [3, 4.5] s: a timer left armed would send a third copy before 6 s
    layer = MessageLayer(Params(ack_timeout=4.0, adaptive_rto=True), random.Random(seed))
    _, a = layer.request(0.0, get(), S)
    _, b = layer.request(0.0, get(), S2)
    layer.on_message(0.02, CoapMessage(ACK, EMPTY, wire.decode(sent(a)).mid), S)
    copies = []
    while (d := layer.next_deadline()) is not None and d < 6.0:
        copies += [(d, x.data) for x in layer.on_tick(d) if isinstance(x, Send)]
    assert [data for _, data in copies] == [sent(b)] * 2  # at t and 3t (t in [1, 1.5] s), no more
    assert 1.0 <= copies[0][0] <= 1.5 and copies[1][0] == pytest.approx(3 * copies[0][0])


@pytest.mark.parametrize("seed", range(5))
def test_the_gateways_separate_responses_learn_from_the_ues_acknowledgements(seed):
    server = MessageLayer(Params(adaptive_rto=True), random.Random(seed), server=True)
    answer = CoapMessage(CON, 0x45, 0, b"", [], b"cfg")
    _, out1 = server.respond_to(0.0, S, b"t1", answer)
    _, out2 = server.respond_to(0.0, S2, b"t2", answer)
    server.on_message(0.01, CoapMessage(ACK, EMPTY, wire.decode(sent(out1)).mid), S)
    assert 1.0 <= first_copy_at(server, sent(out2)) <= 1.5


@pytest.mark.parametrize("seed", range(3))
def test_a_path_that_became_slower_than_its_rto_is_backed_off_after_eight_timeouts(seed):
    """RFC 6298 §5.5, §5.7: measured fast (RTO 1 s), the path then takes 1.8 s. Every CON times out
    at [1, 1.5] s and Karn's rule leaves no sample; eight timeouts with no sample between them
    double the RTO (at most ACK_TIMEOUT, 2 s), and the next CON is answered before its timeout."""
    layer = MessageLayer(ADAPTIVE, random.Random(seed))
    _, out = layer.request(0.0, get(), S)
    layer.on_message(0.01, CoapMessage(ACK, EMPTY, wire.decode(sent(out)).mid), S)
    now = 1.0
    for _ in range(8):
        _, out = layer.request(now, get(), S)
        data = sent(out)
        t = first_copy_at(layer, data, until=now + 10)
        assert t - now <= 1.5  # retransmitted: the path is slower than the RTO
        layer.on_message(now + 1.8, CoapMessage(ACK, EMPTY, wire.decode(data).mid), S)
        now += 10.0
    assert layer.rto.rto(S, now) == 2.0 and layer.rto.rto(S2, now) == 2.0  # the peer's and the link's
    _, out = layer.request(now, get(), S)
    assert first_copy_at(layer, sent(out), until=now + 10) - now >= 2.0


def relay(**kw) -> RelayCore:
    c = RelayCore(RelayConfig(server_host="127.0.0.1", **kw), rng=random.Random(7))
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    return c


def uu_copies(c: RelayCore, start: float, end: float) -> list[tuple[float, int]]:
    out, t = [], start
    while t <= end:
        out += [(round(t, 2), a.uplink) for a in c.on_tick(t) if isinstance(a, SendUplink)]
        t += 0.01
    return out


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_relays_uu_leg_re_times_its_burst_after_the_scm_s_answered_quickly(adaptive):
    c = relay(adaptive_rto=adaptive)
    c.on_pc5(UE_A, request(mid=1, token=b"ta"), 0.0)
    c.on_pc5(UE_B, request(mid=2, token=b"tb"), 0.0)
    c.on_uu(1, coap(Type.ACK, Code.CONTENT, 1, b"ta", b"doc"), 0.02)  # UE A's, piggybacked
    (t, flow), *_ = uu_copies(c, 0.03, 4.0)
    assert flow == 2
    assert (1.0 <= t <= 1.51) if adaptive else (2.0 <= t <= 3.01)


def test_the_relays_pc5_leg_learns_from_a_ues_acknowledgement():
    c = relay()
    c.on_pc5(UE_A, request(mid=1, token=b"ta"), 0.0)
    c.on_pc5(UE_B, request(mid=2, token=b"tb"), 0.0)
    c.on_tick(0.1)  # both acknowledged empty: the answers go down as CONs
    [down_a] = [a.datagram for a in c.on_uu(1, coap(Type.CON, Code.CONTENT, 11, b"ta", b"a"), 0.5)
                if isinstance(a, SendDownlink)]  # fmt: skip
    c.on_uu(2, coap(Type.CON, Code.CONTENT, 12, b"tb", b"b"), 0.5)
    mid_a = wire.decode(down_a).mid
    c.on_pc5(UE_A, bytes([0x60, 0x00, mid_a >> 8, mid_a & 0xFF]), 0.51)  # UE A's ACK: 10 ms
    copies, t = [], 0.52
    while t < 4.0 and not copies:
        copies = [a for a in c.on_tick(t) if isinstance(a, SendDownlink)]
        t += 0.01
    assert copies and copies[0].endpoint == UE_B and 1.5 <= t <= 2.02  # 0.5 + [1, 1.5]
