"""The Q-Block1 sender's decisions without sockets (RFC 9177 §4.3, §5, §7.2)."""

from __future__ import annotations

import pytest

from msgin5g.coap.qblock import QBlockFailed, QBlockParams
from msgin5g.coap.qblock1 import QBlock1Sender, missing_numbers

P = QBlockParams()  # the RFC's defaults: MAX_PAYLOADS 10, NON_TIMEOUT 2 s, NON_MAX_RETRANSMIT 4


def sender(blocks: int, last: int = 100) -> QBlock1Sender:
    return QBlock1Sender(b"x" * (1024 * (blocks - 1) + last), 6, P)


def test_blocks_and_the_more_flag():
    s = sender(3, last=5)
    assert s.total == 3
    assert s.block(0) == (b"x" * 1024, True) and s.block(2) == (b"x" * 5, False)


def test_one_block_needs_no_q_block1():
    with pytest.raises(ValueError):
        QBlock1Sender(b"x" * 1024)


def test_block_0_alone_then_the_rest_of_the_first_set_then_each_set_on_continue():
    s = sender(25)
    assert s.first(0.0) == [0]
    assert s.poll(100.0) == []  # block 0 is the layer's CON: nothing else until it is taken
    assert s.on_accepted(0.1) == list(range(1, 10))
    assert s.on_accepted(0.2) == []  # a duplicate ACK
    assert s.on_continue(0.3, 9) == list(range(10, 20))
    assert s.on_continue(0.4, 5) == []  # a Continue for a set before: nothing new
    assert s.on_continue(0.5, 19) == list(range(20, 25))
    assert s.sent == 25


def test_without_a_continue_the_next_set_goes_after_non_timeout():
    s = sender(15)
    s.first(0.0)
    s.on_accepted(1.0)
    assert s.deadline() == 3.0
    assert s.poll(2.9) == []
    assert s.poll(3.0) == list(range(10, 15))


def test_missing_blocks_from_a_408_go_again_max_payloads_at_a_time():
    s = sender(30)
    s.first(0.0)
    s.on_accepted(0.0)
    s.on_continue(0.1, 9)
    s.on_continue(0.2, 19)
    missing = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 40]  # 40 is beyond the body: ignored
    assert s.on_missing(1.0, missing) == [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]
    # a Continue (a resent block completed a set) or NON_TIMEOUT: the next lot
    assert s.on_continue(1.1, 9) == [13]


def test_silence_after_the_last_block_resends_it_doubling_and_gives_up():
    s = sender(3)
    s.first(0.0)
    s.on_accepted(0.0)
    at, waits = 0.0, []
    for _ in range(P.non_max_retransmit):
        due = s.deadline()
        waits.append(due - at)
        assert s.poll(due) == [2]  # the last block, M unset: the server answers it
        at = due
    assert waits == [2.0, 4.0, 8.0, 16.0]
    with pytest.raises(QBlockFailed):
        s.poll(s.deadline())


def test_a_408_resets_the_rounds():
    s = sender(3)
    s.first(0.0)
    s.on_accepted(0.0)
    s.poll(2.0)
    s.poll(6.0)
    assert s.on_missing(7.0, [1]) == [1]
    assert s.deadline() == 9.0  # NON_TIMEOUT again, not the doubled wait


def test_a_408_naming_nothing_of_the_body_fails():
    s = sender(3)
    s.first(0.0)
    with pytest.raises(QBlockFailed):
        s.on_missing(0.0, [7])


def test_missing_numbers_reads_a_cbor_sequence():
    assert missing_numbers(bytes([0x01, 0x18, 0x20])) == [1, 32]  # RFC 9177 §5: 1, 32
    assert missing_numbers(b"") == []
    with pytest.raises(ValueError):
        missing_numbers(bytes([0x61, 0x61]))  # "a": not a block number
    with pytest.raises(ValueError):
        missing_numbers(bytes([0x18]))  # truncated
