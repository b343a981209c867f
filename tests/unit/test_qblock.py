"""RFC 9177 Q-Block state without sockets: which blocks a server sends, how a client recovers.

Expected values are written from RFC 9177 §4.3, §4.4, §5 and §7.2 (defaults: MAX_PAYLOADS 10,
NON_TIMEOUT 2 s, NON_RECEIVE_TIMEOUT 4 s, NON_MAX_RETRANSMIT 4, NON_PARTIAL_TIMEOUT 247 s).
"""

from __future__ import annotations

import random

import cbor2
import pytest

from msgin5g.coap.qblock import (
    AskBlocks,
    BlockOpt,
    QBlock1Assembler,
    QBlock2Receiver,
    QBlockFailed,
    QBlockParams,
    block_count,
    blocks_requested,
    bursts,
    missing_payload,
)

SZX = 6  # 1024-byte blocks


# -- server: what a request asks for ----------------------------------------------------------------
def test_defaults_are_the_rfcs():
    p = QBlockParams()
    assert (p.max_payloads, p.non_timeout, p.non_receive_timeout, p.non_max_retransmit) == (10, 2.0, 4.0, 4)
    assert p.non_partial_timeout == 247.0


def test_num0_with_m_is_the_whole_body():
    r = blocks_requested([BlockOpt(0, True, SZX)], 23)
    assert r.blocks == tuple(range(23)) and r.whole_body and r.continue_from is None


def test_num0_without_m_is_the_first_block_only():
    assert blocks_requested([BlockOpt(0, False, SZX)], 23).blocks == (0,)


def test_continue_is_a_multiple_of_max_payloads_with_m():
    r = blocks_requested([BlockOpt(10, True, SZX)], 23)
    assert r.continue_from == 10 and r.blocks == tuple(range(10, 23))


def test_m_set_off_a_set_boundary_is_ignored():
    assert blocks_requested([BlockOpt(7, True, SZX)], 23).blocks == ()


def test_missing_blocks_each_once_in_order_and_in_range():
    opts = [BlockOpt(n, False, SZX) for n in (5, 2, 5, 40, 2, 22)]
    assert blocks_requested(opts, 23).blocks == (2, 5, 22)


def test_overlapping_options_send_each_block_once():
    opts = [BlockOpt(10, True, SZX), BlockOpt(12, False, SZX), BlockOpt(3, False, SZX)]
    assert blocks_requested(opts, 15).blocks == (3, 10, 11, 12, 13, 14)


def test_configurable_max_payloads_moves_the_continue_boundary():
    p = QBlockParams(max_payloads=4)
    assert blocks_requested([BlockOpt(8, True, SZX)], 10, p).blocks == (8, 9)
    assert blocks_requested([BlockOpt(10, True, SZX)], 23, p).blocks == ()


def test_bursts_of_max_payloads():
    assert bursts(list(range(23))) == [tuple(range(10)), tuple(range(10, 20)), (20, 21, 22)]
    assert bursts([1, 4], QBlockParams(max_payloads=1)) == [(1,), (4,)]


def test_block_count():
    assert (block_count(0, 1024), block_count(1024, 1024), block_count(1025, 1024)) == (1, 1, 2)


# -- client: recovery ------------------------------------------------------------------------------
def body_of(n_blocks: int, last: int = 300) -> bytes:
    return b"".join(bytes([i]) * 1024 for i in range(n_blocks - 1)) + b"\xee" * last


def feed(rx: QBlock2Receiver, now: float, body: bytes, nums, etag=b"E1", size2=True) -> list:
    asks = []
    for n in nums:
        chunk = body[n * 1024 : (n + 1) * 1024]
        more = (n + 1) * 1024 < len(body)
        rx.on_block(now, BlockOpt(n, more, SZX), chunk, etag, len(body) if size2 else None)
        ask = rx.poll(now)
        if ask:
            asks.append(ask)
    return asks


def test_lossless_burst_completes_without_any_request():
    body = body_of(7)
    rx = QBlock2Receiver()
    rx.start(0.0)
    assert feed(rx, 0.1, body, range(7)) == []
    assert rx.complete and rx.body() == body and rx.deadline() is None


def test_continue_sent_once_when_a_full_set_arrived():
    body = body_of(23)
    rx = QBlock2Receiver()
    rx.start(0.0)
    asks = feed(rx, 0.1, body, range(10))
    assert asks == [AskBlocks(continue_from=10, szx=SZX)]
    assert [o for o in asks[0].options()] == [BlockOpt(10, True, SZX)]
    assert feed(rx, 0.2, body, range(10, 20)) == [AskBlocks(continue_from=20, szx=SZX)]
    assert feed(rx, 0.3, body, range(20, 23)) == []
    assert rx.body() == body


def test_no_continue_when_the_set_has_a_hole():
    body = body_of(23)
    rx = QBlock2Receiver()
    rx.start(0.0)
    assert feed(rx, 0.1, body, [0, 1, 2, 4, 5, 6, 7, 8, 9]) == []


def test_missing_blocks_asked_after_non_receive_timeout_only():
    body = body_of(8)
    rx = QBlock2Receiver()
    rx.start(0.0)
    feed(rx, 1.0, body, [0, 2, 3, 6, 7])
    assert rx.poll(4.9) is None  # 4 s of silence not yet over
    assert rx.deadline() == 5.0
    ask = rx.poll(5.0)
    assert ask.numbers == (1, 4, 5) and ask.continue_from is None
    assert ask.options() == [BlockOpt(1, False, SZX), BlockOpt(4, False, SZX), BlockOpt(5, False, SZX)]
    feed(rx, 5.5, body, [1, 4, 5])
    assert rx.complete and rx.body() == body


def test_duplicates_are_counted_and_ignored():
    body = body_of(3)
    rx = QBlock2Receiver()
    rx.start(0.0)
    feed(rx, 0.1, body, [0, 1, 1, 0, 2])
    assert rx.duplicates == 2 and rx.body() == body


def test_gap_at_the_end_known_from_size2():
    body = body_of(6)
    rx = QBlock2Receiver()
    rx.start(0.0)
    feed(rx, 0.5, body, [0, 1, 2, 3])  # 4 and 5 lost; Size2 says 6 blocks
    assert rx.poll(4.5).numbers == (4, 5)


def test_gap_at_the_end_without_size2_asks_for_the_next_block():
    body = body_of(6)
    rx = QBlock2Receiver()
    rx.start(0.0)
    feed(rx, 0.5, body, [0, 1, 3], size2=False)
    assert rx.poll(4.5).numbers == (2, 4)
    # what was asked for came; the end is still unknown: ask on at once
    assert feed(rx, 4.6, body, [2, 4], size2=False) == [AskBlocks(numbers=(5,), szx=SZX)]
    feed(rx, 4.7, body, [5], size2=False)
    assert rx.body() == body


def test_at_most_max_payloads_numbers_per_request_then_the_next_lot():
    body = body_of(30)
    rx = QBlock2Receiver(params=QBlockParams(max_payloads=10), send_continue=False)
    rx.start(0.0)
    feed(rx, 0.5, body, [0, 29])
    first = rx.poll(4.5)
    assert first.numbers == tuple(range(1, 11))
    assert feed(rx, 4.6, body, range(1, 11)) == [AskBlocks(numbers=tuple(range(11, 21)), szx=SZX)]


def test_retries_back_off_then_give_up():
    body = body_of(4)
    rx = QBlock2Receiver()
    rx.start(0.0)
    feed(rx, 0.0, body, [0, 1, 3])
    asks_at = []
    now = 0.0
    with pytest.raises(QBlockFailed):
        for _ in range(10):
            now = rx.deadline()
            ask = rx.poll(now)
            assert ask.numbers == (2,)
            asks_at.append(now)
    # NON_RECEIVE_TIMEOUT doubled each round, NON_MAX_RETRANSMIT (4) requests in all
    assert asks_at == [4.0, 4.0 + 8, 12.0 + 16, 28.0 + 32]


def test_partial_body_dropped_after_non_partial_timeout():
    params = QBlockParams(non_partial_timeout=10.0, non_max_retransmit=100)
    rx = QBlock2Receiver(params=params)
    rx.start(0.0)
    feed(rx, 0.0, body_of(4), [0, 1])
    rx.poll(4.0)
    with pytest.raises(QBlockFailed, match="partial body dropped"):
        rx.poll(10.0)


def test_etag_change_restarts_the_body():
    old, new = body_of(5), bytes(reversed(body_of(5)))
    new = b"\x55" * 1024 * 4 + b"\x66" * 300
    rx = QBlock2Receiver()
    rx.start(0.0)
    feed(rx, 0.1, old, [0, 1, 2], etag=b"OLD")
    assert rx.on_block(0.2, BlockOpt(3, True, SZX), new[3072:4096], b"NEW", len(new)) == "restarted"
    assert rx.restarts == 1 and rx.received == {3}
    feed(rx, 0.3, new, [0, 1, 2, 4], etag=b"NEW")
    assert rx.body() == new


def test_nothing_arrived_asks_for_the_whole_body_again():
    rx = QBlock2Receiver()
    rx.start(0.0)
    ask = rx.poll(4.0)
    assert ask == AskBlocks(continue_from=0, szx=6)
    assert ask.options() == [BlockOpt(0, True, 6)]


@pytest.mark.parametrize("seed", range(20))
def test_seeded_loss_always_recovers_the_exact_body(seed):
    """A server that honours every request (the core's own selection) over a link losing 30 %."""
    rng = random.Random(seed)
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 26 * 1024)))
    total = block_count(len(body), 1024)
    params = QBlockParams(non_max_retransmit=50)
    rx = QBlock2Receiver(params=params)
    rx.start(0.0)
    now = 0.0

    def serve(options):
        sent = blocks_requested(options, total, params).blocks
        for n in sent:
            if rng.random() < 0.3:
                continue
            chunk = body[n * 1024 : (n + 1) * 1024]
            rx.on_block(now, BlockOpt(n, (n + 1) * 1024 < len(body), SZX), chunk, b"T", len(body))
            ask = rx.poll(now)
            if ask:
                pending.append(ask)

    pending = [AskBlocks(continue_from=0, szx=SZX)]
    for _ in range(500):
        while pending:
            ask = pending.pop(0)
            if rng.random() >= 0.3:  # the request itself may be lost too
                serve(ask.options())
        if rx.complete:
            break
        now = rx.deadline()
        ask = rx.poll(now)
        if ask:
            pending.append(ask)
    assert rx.body() == body


# -- server: Q-Block1 --------------------------------------------------------------------------------
def test_q1_single_block_body_is_complete_at_once():
    a = QBlock1Assembler(max_body=4096)
    out = a.on_block(0.0, "k", BlockOpt(0, False, SZX), b"abc")
    assert (out.kind, out.body) == ("complete", b"abc") and len(a) == 0


def test_q1_set_of_max_payloads_gets_continue_and_body_completes_in_any_order():
    a = QBlock1Assembler(max_body=64 * 1024, params=QBlockParams(max_payloads=3))
    body = body_of(5)
    kinds = []
    for n in [0, 2, 1, 4, 3]:
        chunk = body[n * 1024 : (n + 1) * 1024]
        kinds.append(a.on_block(0.0, "k", BlockOpt(n, n < 4, SZX), chunk).kind)
    # block 1 completes set 0..2 (2.31); the last block (4) comes with 3 missing (4.08); 3 completes
    assert kinds == ["silent", "silent", "continue", "missing", "complete"]


def test_q1_missing_list_and_payload_encoding():
    a = QBlock1Assembler(max_body=64 * 1024)
    body = body_of(4)
    a.on_block(0.0, "k", BlockOpt(0, True, SZX), body[:1024])
    out = a.on_block(0.0, "k", BlockOpt(3, False, SZX), body[3072:])
    assert out.kind == "missing" and out.missing == (1, 2)
    assert missing_payload(out.missing) == bytes([0x01, 0x02])  # CBOR unsigned 1, 2 as a sequence
    assert cbor2.loads(missing_payload([300])) == 300


def test_q1_too_large_by_size1_or_offset():
    a = QBlock1Assembler(max_body=2048)
    assert a.on_block(0.0, "k", BlockOpt(0, True, SZX), b"x" * 1024, size1=5000).kind == "too_large"
    assert a.on_block(0.0, "k", BlockOpt(2, True, SZX), b"x" * 1024).kind == "too_large"


def test_q1_wrong_block_size_is_refused():
    a = QBlock1Assembler(max_body=8192)
    assert a.on_block(0.0, "k", BlockOpt(0, True, SZX), b"x" * 100).kind == "bad_size"


def test_q1_bodies_are_kept_apart_and_expire():
    a = QBlock1Assembler(max_body=8192, params=QBlockParams(non_partial_timeout=10.0))
    a.on_block(0.0, "a", BlockOpt(0, True, SZX), b"a" * 1024)
    a.on_block(1.0, "b", BlockOpt(0, True, SZX), b"b" * 1024)
    assert len(a) == 2
    out = a.on_block(2.0, "a", BlockOpt(1, False, SZX), b"A")
    assert out.body == b"a" * 1024 + b"A" and len(a) == 1
    a.expire(11.0)
    assert len(a) == 0


def test_back_off_never_waits_longer_than_non_probing_wait():
    params = QBlockParams(non_receive_timeout=4.0, non_max_retransmit=20, non_probing_wait=30.0)
    rx = QBlock2Receiver(params=params)
    rx.start(0.0)
    feed(rx, 0.0, body_of(3), [0, 2])
    waits, now = [], 0.0
    for _ in range(6):
        due = rx.deadline()
        waits.append(due - now)
        now = due
        assert rx.poll(now).numbers == (1,)
    assert waits == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_holes_of_a_set_asked_first_then_continue_once_they_are_filled():
    """RFC 9177 §4.4: blocks 1 and 4 of the first set are lost; the server pauses after the set.
    The client asks for the holes only (the next set comes by itself), and when they are in, the
    set is complete: Continue at once."""
    body = body_of(23)
    rx = QBlock2Receiver()
    rx.start(0.0)
    assert feed(rx, 0.1, body, [0, 2, 3, 5, 6, 7, 8, 9]) == []
    assert rx.poll(4.1) == AskBlocks(numbers=(1, 4), szx=SZX)
    assert feed(rx, 4.2, body, [1, 4]) == [AskBlocks(continue_from=10, szx=SZX)]
    assert feed(rx, 4.3, body, range(10, 20)) == [AskBlocks(continue_from=20, szx=SZX)]
    assert feed(rx, 4.4, body, range(20, 23)) == [] and rx.body() == body


def test_a_lost_set_is_asked_for_when_nothing_more_comes():
    """The whole second set is lost (and the Continue for it was sent): after the silence the
    client asks for it, up to MAX_PAYLOADS numbers."""
    body = body_of(23)
    rx = QBlock2Receiver()
    rx.start(0.0)
    assert feed(rx, 0.1, body, range(10)) == [AskBlocks(continue_from=10, szx=SZX)]
    assert rx.poll(4.1) == AskBlocks(numbers=tuple(range(10, 20)), szx=SZX)
