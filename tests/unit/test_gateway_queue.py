"""The Gateway UE's durable request store on a real SQLite file (SPEC D9, "nothing lost")."""

from __future__ import annotations

from msgin5g.gateway.queue import ANSWERED, STORED, NewRequest, RequestQueue
from msgin5g.gateway.wire import UeQuery


def new(i: int, mid: int | None = None, token: bytes | None = None, received: float = 0.0) -> NewRequest:
    return NewRequest(
        "127.0.0.1",
        40000 + i % 3,
        i if mid is None else mid,
        token if token is not None else i.to_bytes(4, "big"),
        True,
        UeQuery(f"urn:dev:ops:{i}", "acme" if i % 2 else None, None, "12" if i == 3 else None),
        urgent=i == 2,
        block_num=1 if i == 4 else 0,
        received=received or 1000.0 + i,
    )


def test_stored_requests_survive_reopening(tmp_path):
    path = tmp_path / "gw.db"
    q = RequestQueue(path)
    stored = q.add_many([new(i) for i in range(5)])
    assert [s.req_id for s in stored] == [1, 2, 3, 4, 5]
    q.close()  # as after kill -9: committed transactions are on disk
    q = RequestQueue(path)
    pending = q.pending()
    assert [p.query.ue_uri for p in pending] == [f"urn:dev:ops:{i}" for i in range(5)]
    assert pending[2].urgent and pending[4].block_num == 1 and pending[3].query.ue_snr == "12"
    assert pending[1].query.ue_vendor == "acme" and pending[0].token == (0).to_bytes(4, "big")
    assert pending[0].endpoint == ("127.0.0.1", 40000) and pending[0].confirmable
    # ids keep growing after a restart
    assert [s.req_id for s in q.add_many([new(9)])] == [6]
    q.close()


def test_retransmissions_are_stored_once(tmp_path):
    q = RequestQueue(tmp_path / "gw.db")
    first = q.add_many([new(1), new(2)])
    again = q.add_many([new(1), new(3), new(2, token=b"other")])
    assert all(first)
    assert again[0] is None and again[1] is not None and again[2] is not None
    assert q.count() == 4
    q.close()


def test_answered_then_removed(tmp_path):
    q = RequestQueue(tmp_path / "gw.db")
    ids = [s.req_id for s in q.add_many([new(i) for i in range(4)])]
    q.mark_answered(ids[:2])
    assert q.count(STORED) == 2 and q.count(ANSWERED) == 2
    q.remove_many(ids[:3])
    assert [p.req_id for p in q.pending()] == [ids[3]]
    q.close()


def test_pending_is_oldest_first(tmp_path):
    q = RequestQueue(tmp_path / "gw.db")
    q.add_many([new(1, received=30.0), new(2, received=10.0), new(3, received=20.0)])
    assert [p.query.ue_uri for p in q.pending()] == ["urn:dev:ops:2", "urn:dev:ops:3", "urn:dev:ops:1"]
    q.close()
