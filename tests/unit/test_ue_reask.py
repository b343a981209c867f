"""The constrained UE's re-ask cycle, pure (RFC 7252 §4.2, §4.8.2, §5.2.2; SPEC D13).

Expected values from RFC 7252 §4.8.2: with ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5 and
MAX_RETRANSMIT 4, MAX_TRANSMIT_SPAN is 2 x (2^4 - 1) x 1.5 = 45 s and MAX_TRANSMIT_WAIT
2 x (2^5 - 1) x 1.5 = 93 s.
"""

from __future__ import annotations

import pytest

from msgin5g.ue.reask import ReaskPolicy, ask_again, exchange_timeout, proxy_timed_out


def test_rfc_7252_defaults_and_the_derived_times():
    p = ReaskPolicy()
    assert (p.ack_timeout, p.ack_random_factor, p.max_retransmit) == (2.0, 1.5, 4)
    assert p.max_transmit_span == pytest.approx(45.0)
    # after the last copy the UE waits the longest first timeout (3 s), not the doubled one
    assert p.give_up_wait == pytest.approx(3.0)
    assert p.transmit_window == pytest.approx(48.0)
    # without the early give-up the transmit window is RFC 7252's MAX_TRANSMIT_WAIT
    assert ReaskPolicy(give_up_wait=None).transmit_window == pytest.approx(93.0)
    # an acknowledged request waits 30 s more for its separate response
    assert p.exchange_window == pytest.approx(78.0)


def test_other_parameters_scale_the_window():
    p = ReaskPolicy(ack_timeout=1.0, max_retransmit=2, give_up_wait=1.5, separate_wait=10.0)
    assert p.max_transmit_span == pytest.approx(1.0 * 3 * 1.5)
    assert p.transmit_window == pytest.approx(4.5 + 1.5)
    assert p.exchange_window == pytest.approx(4.5 + 1.5 + 10.0)


@pytest.mark.parametrize(
    "cause, remaining, expected",
    [
        ("gave-up", 10.0, True),  # every copy unanswered: a new exchange
        ("deadline", 10.0, True),  # acknowledged, the separate response never came
        ("gave-up", 0.0, False),  # no time left
        ("reset", 10.0, False),  # the peer rejected the message: not a loss
        ("blockwise", 10.0, False),  # a broken block-wise transfer: not a loss
        ("no-mid", 10.0, False),
        ("proxy-timeout", 10.0, True),  # the relay's 5.04: it got no answer from the SCM-S
        ("proxy-timeout", 0.0, False),
    ],
)
def test_only_a_loss_is_asked_again_and_only_in_time(cause, remaining, expected):
    assert ask_again(cause, remaining) is expected


def test_the_exchange_timeout_is_the_window_or_what_is_left():
    p = ReaskPolicy()
    assert exchange_timeout(p, 100.0) == pytest.approx(78.0)
    assert exchange_timeout(p, 7.0) == pytest.approx(7.0)
    assert exchange_timeout(p, 0.0) is None


def test_nonsense_parameters_are_refused():
    with pytest.raises(ValueError):
        ReaskPolicy(ack_timeout=0)
    with pytest.raises(ValueError):
        ReaskPolicy(ack_random_factor=0.5)
    with pytest.raises(ValueError):
        ReaskPolicy(separate_wait=-1)


def test_a_proxys_5_04_is_a_loss_but_a_protected_5_04_is_the_origins_answer():
    assert proxy_timed_out(0xA4, protected=False)  # 5.04 Gateway Timeout (RFC 7252 §5.9.3.5)
    assert not proxy_timed_out(0xA4, protected=True)  # only the origin can protect (RFC 8613)
    assert not proxy_timed_out(0xA3, protected=False)  # 5.03 is an answer (Max-Age says when)
    assert not proxy_timed_out(0x45, protected=False)
