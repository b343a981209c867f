"""The Gateway UE's batching policy without sockets or clocks (TS 24.538 6.2.2.x; SPEC D9)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g.gateway.policy import (
    BatchPolicy,
    Flush,
    GatewayRequest,
    GiveUp,
    ResponseCache,
    ServicePolicy,
)


def req(i, key=None, t=0.0, urgent=False, bulkable=True):
    return GatewayRequest(i, key if key is not None else f"ue{i}", t, urgent, bulkable)


def flushes(decisions):
    return [d for d in decisions if isinstance(d, Flush)]


def test_full_batch_flushes_at_once():
    p = BatchPolicy(ServicePolicy(max_batch=3, max_wait=10))
    assert p.on_request(0, req(1)) == []
    assert p.on_request(0.1, req(2)) == []
    (f,) = p.on_request(0.2, req(3))
    assert f == Flush(("ue1", "ue2", "ue3"), True, "full")
    assert p.waiting == 0 and p.next_deadline() == pytest.approx(300.0)


def test_timer_flushes_when_oldest_waited_max_wait():
    p = BatchPolicy(ServicePolicy(max_batch=100, max_wait=0.5))
    p.on_request(1.0, req(1, t=1.0))
    p.on_request(1.3, req(2, t=1.3))
    assert p.next_deadline() == pytest.approx(1.5)
    assert p.on_tick(1.49) == []
    (f,) = p.on_tick(1.5)
    assert f.keys == ("ue1", "ue2") and f.reason == "timer"


def test_urgent_flushes_everything_waiting():
    p = BatchPolicy(ServicePolicy(max_batch=100, max_wait=10))
    p.on_request(0, req(1))
    p.on_request(0, req(2))
    (f,) = p.on_request(0, req(3, urgent=True))
    assert f == Flush(("ue1", "ue2", "ue3"), True, "urgent")


def test_urgent_duplicate_of_waiting_request_flushes():
    p = BatchPolicy(ServicePolicy(max_batch=100, max_wait=10))
    p.on_request(0, req(1, key="a"))
    p.on_request(0, req(2, key="b"))
    (f,) = p.on_request(0, req(3, key="a", urgent=True))
    assert f.keys == ("a", "b") and f.reason == "urgent"
    assert sorted(p.complete("a")) == [1, 3]


def test_duplicates_are_merged_and_all_answered():
    p = BatchPolicy(ServicePolicy(max_batch=2, max_wait=10))
    p.on_request(0, req(1, key="a"))
    assert p.on_request(0, req(2, key="a")) == []  # merged: still one key waiting
    (f,) = p.on_request(0, req(3, key="b"))
    assert f.keys == ("a", "b")
    # a duplicate arriving while in flight joins the same answer
    assert p.on_request(0, req(4, key="a")) == []
    assert p.complete("a") == [1, 2, 4]
    assert p.complete("b") == [3]
    assert p.unanswered == 0


def test_same_request_id_twice_is_ignored():
    p = BatchPolicy(ServicePolicy(max_batch=2, max_wait=10))
    p.on_request(0, req(1))
    assert p.on_request(0, req(1)) == []
    assert p.unanswered == 1


def test_no_bulk_policy_forwards_each_request_on_its_own():
    p = BatchPolicy(ServicePolicy(bulk=False))
    assert p.on_request(0, req(1)) == [Flush(("ue1",), False, "single")]
    assert p.on_request(0, req(2, key="ue1")) == []  # merged with the one in flight
    assert p.complete("ue1") == [1, 2]


def test_unbulkable_request_goes_alone_under_a_bulk_policy():
    p = BatchPolicy(ServicePolicy(max_batch=10, max_wait=10))
    assert p.on_request(0, req(1, bulkable=False)) == [Flush(("ue1",), False, "single")]


def test_failure_backs_off_and_retries_never_dropping():
    sp = ServicePolicy(max_batch=2, max_wait=0, retry_initial=1, retry_max=4, give_up=1000)
    p = BatchPolicy(sp)
    (f,) = p.on_request(0, req(1))
    assert f.reason == "timer"
    now = 0.0
    delays = []
    for _ in range(5):
        p.fail(now, f.keys)
        assert p.state_of("ue1") == "backoff"
        nxt = p.next_deadline()
        delays.append(nxt - now)
        assert p.on_tick(nxt - 0.01) == []
        (f,) = p.on_tick(nxt)
        assert f == Flush(("ue1",), True, "retry")
        now = nxt
    assert delays == [1, 2, 4, 4, 4]
    assert p.complete("ue1") == [1]


def test_retry_after_overrides_backoff():
    p = BatchPolicy(ServicePolicy(max_batch=1, retry_initial=1, retry_max=30))
    p.on_request(0, req(1))
    p.fail(0, ["ue1"], retry_after=10)
    assert p.next_deadline() == 10


def test_give_up_answers_5_04_even_in_flight():
    p = BatchPolicy(ServicePolicy(max_batch=1, give_up=5))
    (flush,) = p.on_request(0, req(1, t=0))
    assert flush.keys == ("ue1",)
    p.on_request(2, req(2, key="ue1", t=2))  # merged, in flight
    assert p.next_deadline() == 5
    assert p.on_tick(5) == [GiveUp((1,))]
    assert p.on_tick(7) == [GiveUp((2,))]
    assert p.complete("ue1") == []  # a late answer reaches nobody


def test_give_up_from_backoff_and_waiting():
    p = BatchPolicy(ServicePolicy(max_batch=10, max_wait=100, give_up=5))
    p.on_request(0, req(1, t=0))
    (g,) = p.on_tick(5)
    assert g == GiveUp((1,))
    assert p.waiting == 0 and p.state_of("ue1") is None
    p2 = BatchPolicy(ServicePolicy(max_batch=1, give_up=5))
    p2.on_request(0, req(1, t=0))
    p2.fail(0, ["ue1"])
    assert p2.on_tick(5) == [GiveUp((1,))]
    assert p2.state_of("ue1") is None


def test_restored_requests_flush_at_once_together():
    """After a restart the stored requests come back with their old receive times (SPEC D9)."""
    p = BatchPolicy(ServicePolicy(max_batch=3, max_wait=1))
    out = p.on_requests(50, [req(i, t=10 + i) for i in range(5)])
    assert [(f.keys, f.reason) for f in flushes(out)] == [
        (("ue0", "ue1", "ue2"), "full"),
        (("ue3", "ue4"), "timer"),
    ]


def test_arrival_order_is_kept_in_batches():
    p = BatchPolicy(ServicePolicy(max_batch=4, max_wait=1))
    out = p.on_requests(0, [req(i, key=k) for i, k in enumerate("dcbad")])
    assert flushes(out) == [Flush(("d", "c", "b", "a"), True, "full")]


def test_response_cache_honours_max_age():
    c: ResponseCache[str, int] = ResponseCache(max_entries=2)
    c.put(0, "a", 1, 10)
    assert c.get(5, "a") == (1, 5)
    assert c.get(10, "a") is None
    c.put(0, "a", 1, 10)
    c.put(0, "b", 2, 10)
    c.put(0, "c", 3, 10)
    assert c.get(1, "a") is None and len(c) == 2
    c.put(0, "b", 2, 0)
    assert c.get(0, "b") is None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("req"), st.integers(0, 15), st.booleans(), st.booleans()),
        st.tuples(st.just("tick"), st.floats(0, 3)),
        st.tuples(st.just("answer")),
        st.tuples(st.just("fail")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 5), st.booleans())
def test_every_request_is_answered_or_given_up_exactly_once(script, max_batch, bulk):
    """Whatever happens, each request ends exactly once: with an answer or with a 5.04."""
    p = BatchPolicy(ServicePolicy(bulk=bulk, max_batch=max_batch, max_wait=0.5, give_up=4, retry_initial=0.3))
    now = 0.0
    next_id = 0
    in_flight: list[tuple] = []
    ended: dict[int, str] = {}
    issued: set[int] = set()

    def run(decisions):
        for d in decisions:
            if isinstance(d, Flush):
                assert d.keys
                if d.bulk:
                    assert len(d.keys) <= max_batch
                else:
                    assert len(d.keys) == 1
                for k in d.keys:
                    assert k not in in_flight, "a key is in flight twice"
                in_flight.extend(d.keys)
            else:
                for r in d.req_ids:
                    assert r not in ended
                    ended[r] = "give-up"

    for op in script:
        if op[0] == "req":
            run(p.on_request(now, GatewayRequest(next_id, op[1], now, op[2], op[3])))
            issued.add(next_id)
            next_id += 1
        elif op[0] == "tick":
            now += op[1]
            run(p.on_tick(now))
        elif op[0] == "answer" and in_flight:
            k = in_flight.pop(0)
            for r in p.complete(k):
                assert r not in ended
                ended[r] = "answer"
        elif op[0] == "fail" and in_flight:
            k = in_flight.pop(0)
            p.fail(now, [k])
    # drain: answer everything in flight, tick until nothing is left
    for _ in range(200):
        while in_flight:
            for r in p.complete(in_flight.pop(0)):
                assert r not in ended
                ended[r] = "answer"
        d = p.next_deadline()
        if d is None:
            break
        now = max(now, d)
        run(p.on_tick(now))
    assert set(ended) == issued
    assert p.unanswered == 0


def test_urgent_duplicate_of_a_request_in_backoff_goes_now():
    p = BatchPolicy(ServicePolicy(max_batch=10, max_wait=10, retry_initial=5))
    p.on_request(0, req(1, key="a", bulkable=False))
    p.fail(0, ["a"])
    assert p.next_deadline() == 5
    assert p.on_request(1, req(2, key="a", urgent=True)) == [Flush(("a",), False, "urgent")]
    assert p.on_tick(5) == []  # the old retry is void
    assert p.complete("a") == [1, 2]
    q = BatchPolicy(ServicePolicy(max_batch=10, max_wait=10, retry_initial=5))
    q.on_request(0, req(1, key="b"))
    q.on_request(0, req(2, key="c"))
    (f,) = q.on_request(0, req(3, key="d", urgent=True))
    q.fail(0, f.keys)
    (g,) = q.on_request(1, req(4, key="b", urgent=True))
    assert g == Flush(("b",), True, "urgent")
