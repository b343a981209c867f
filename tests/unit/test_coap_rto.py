"""RFC 6298 round-trip estimation for CON retransmission (RFC 7252 §4.8; coap/rto.py), without
sockets: the estimator's arithmetic with values worked out by hand from RFC 6298 §2, Karn's rule,
the bounds, ageing, and the re-timing of a burst sent before the first sample."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgin5g.coap.actions import Params, Retransmission
from msgin5g.coap.rto import RtoEstimator


def test_no_sample_no_estimate_the_default_timeout():
    est = RtoEstimator(2.0)
    assert est.rto("a", 0.0) == 2.0 and not est.known("a")


def test_first_and_later_samples_follow_rfc6298_section_2():
    # max_rto raised so that the arithmetic shows: SRTT + 4 RTTVAR, by hand
    est = RtoEstimator(2.0, min_rto=0.01, max_rto=60.0)
    assert est.sample("a", 0.4, 0.0) is True  # first sample of the link
    assert est.rto("a", 0.0) == pytest.approx(0.4 + 4 * 0.2)  # SRTT 0.4, RTTVAR 0.2 → 1.2
    assert est.sample("a", 0.8, 1.0) is False
    # RTTVAR = 3/4 * 0.2 + 1/4 * |0.4 - 0.8| = 0.25; SRTT = 7/8 * 0.4 + 1/8 * 0.8 = 0.45
    assert est.rto("a", 1.0) == pytest.approx(0.45 + 4 * 0.25)


def test_the_rto_is_at_least_min_rto_and_at_most_ack_timeout():
    est = RtoEstimator(2.0)  # MIN_RTO 1 s (RFC 6298 §2.4); at most the initial ACK_TIMEOUT
    est.sample("fast", 0.001, 0.0)
    assert est.rto("fast", 0.0) == 1.0
    est.sample("slow", 3.0, 0.0)  # a peer that answered slowly, e.g. under a burst of load
    assert est.rto("slow", 0.0) == 2.0  # never longer than RFC 7252's default


def test_a_new_peer_starts_from_the_links_estimate():
    est = RtoEstimator(2.0, min_rto=0.01)
    est.sample("a", 0.1, 0.0)
    assert not est.known("b")
    assert est.rto("b", 0.0) == pytest.approx(0.1 + 4 * 0.05)


def test_an_estimate_not_refreshed_is_forgotten():
    est = RtoEstimator(2.0, stale_after=300.0)
    est.sample("a", 0.001, 0.0)
    assert est.rto("a", 300.0) == 1.0
    assert est.rto("a", 300.5) == 2.0  # the path may have changed: RFC 7252's default again
    assert est.sample("a", 0.001, 301.0) is True  # and the next sample is a first one again


def test_peers_are_bounded():
    est = RtoEstimator(2.0, peer_bound=3)
    for i in range(10):
        est.sample(i, 0.01, float(i))
    assert [est.known(i) for i in range(10)] == [False] * 7 + [True] * 3


def test_a_negative_sample_is_ignored():
    est = RtoEstimator(2.0)
    assert est.sample("a", -1.0, 0.0) is False
    assert est.rto("a", 0.0) == 2.0 and est.samples == 0


def test_karns_rule_only_a_con_sent_once_gives_a_sample():
    params = Params()
    tx = Retransmission.start(b"x", 10.0, params, random.Random(1))
    assert tx.rtt(10.25) == pytest.approx(0.25)
    assert tx.due(tx.next_at, params)  # retransmitted
    assert tx.rtt(20.0) is None


def test_a_con_started_from_the_rto_keeps_rfc7252s_randomisation_and_doubling():
    params = Params()  # ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5
    tx = Retransmission.start(b"x", 0.0, params, random.Random(3), base=1.0)
    assert 1.0 <= tx.timeout <= 1.5 and tx.next_at == tx.timeout
    first = tx.timeout
    assert tx.due(tx.next_at, params) and tx.timeout == 2 * first


def test_the_give_up_wait_scales_with_the_rto():
    params = Params(max_retransmit=1, give_up_wait=3.0)  # RFC 7252 §4.2: give up early
    tx = Retransmission.start(b"x", 0.0, params, random.Random(3), base=1.0)
    now = tx.next_at
    assert tx.due(now, params)
    assert tx.next_at == pytest.approx(now + 1.5)  # 3 s x (1 s / ACK_TIMEOUT 2 s)


def test_rebase_re_times_a_con_of_a_burst_from_its_first_transmission():
    params = Params()
    tx = Retransmission.start(b"x", 5.0, params, random.Random(2))
    factor = tx.timeout / 2.0
    assert tx.rebase(1.0, params)
    assert tx.timeout == pytest.approx(factor * 1.0) and tx.next_at == pytest.approx(5.0 + factor)
    assert not tx.rebase(1.0, params)  # once


def test_rebase_leaves_retransmitted_or_already_adaptive_cons_alone():
    params = Params()
    tx = Retransmission.start(b"x", 0.0, params, random.Random(2))
    tx.due(tx.next_at, params)
    at = tx.next_at
    assert not tx.rebase(1.0, params) and tx.next_at == at
    adaptive = Retransmission.start(b"x", 0.0, params, random.Random(2), base=1.5)
    assert not adaptive.rebase(1.0, params)
    assert not Retransmission.start(b"x", 0.0, params, random.Random(2)).rebase(2.0, params)  # no gain


@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), min_size=1, max_size=50))
def test_the_rto_always_stays_within_its_bounds(samples):
    est = RtoEstimator(2.0)
    for i, rtt in enumerate(samples):
        est.sample("p", rtt, float(i))
        assert 1.0 <= est.rto("p", float(i)) <= 2.0
        assert 1.0 <= est.rto("other", float(i)) <= 2.0


def test_eight_timeouts_without_a_sample_double_the_rto_and_a_sample_undoes_it():
    """RFC 6298 §5.5, §5.7, after MISSES_BEFORE_BACKOFF (8) timeouts in a row: lossy links time out
    often, a path slower than its RTO does nothing else."""
    est = RtoEstimator(4.0)  # MIN_RTO 1 s; at most 4 s
    est.sample("a", 0.001, 0.0)
    for _ in range(7):
        est.expired("a")
    assert est.rto("a", 1.0) == 1.0  # seven losses: nothing yet
    est.expired("a")
    assert est.rto("a", 1.0) == 2.0 and est.rto("b", 1.0) == 2.0  # the peer and the link
    for _ in range(16):
        est.expired("a")
    assert est.rto("a", 1.0) == 4.0  # never above ACK_TIMEOUT
    est.sample("a", 0.001, 2.0)
    assert est.rto("a", 2.0) == 1.0  # a sample ends the back-off
