"""OSCORE keys in the store, SQLite and PostgreSQL (msgin5g.store.keys; SPEC D12; RFC 8613 App. B.1)."""

from __future__ import annotations

import pytest

from msgin5g.store import open_store
from msgin5g.store.keys import KeyStoreError, NewKey

T0 = "2026-01-01T00:00:00Z"


def key(identity: str) -> NewKey:
    return NewKey(identity, "AES-CCM-16-64-128", bytes(32), bytes(8))


def test_keys_are_numbered_once_and_one_active_per_identity(store):
    assert store.add_keys([key("ue:urn:a"), key("admin:ops")], T0) == [1, 2]
    with pytest.raises(KeyStoreError, match="ue:urn:a already has an active key"):
        store.add_keys([key("ue:urn:b"), key("ue:urn:a")], T0)
    assert store.count_keys() == 2  # the refused batch left nothing behind
    assert store.revoke_keys(T0, identity="ue:urn:a") == [(1, "ue:urn:a")]
    assert store.revoke_keys(T0, identity="ue:urn:a") == []
    assert store.add_keys([key("ue:urn:a")], T0) == [3]  # a revoked number is never reused
    rows = list(store.iter_keys(include_revoked=True))
    assert [(r.number, r.identity, r.active) for r in rows] == [
        (1, "ue:urn:a", False),
        (2, "admin:ops", True),
        (3, "ue:urn:a", True),
    ]
    assert [r.number for r in store.iter_keys()] == [2, 3]
    assert store.revoked_among([1, 2, 3, 99]) == {1, 99}


def test_leases_are_disjoint_across_connections_and_survive_reopening(store_url):
    a, b = open_store(store_url), open_store(store_url)
    try:
        a.add_keys([key("ue:urn:a")], T0)
        assert a.lease_sequence_numbers(1, 16) == (0, 16)
        assert b.lease_sequence_numbers(1, 32) == (16, 48)
        assert a.lease_sequence_numbers(1, 16) == (48, 64)
    finally:
        a.close()
        b.close()
    c = open_store(store_url)
    try:
        assert c.lease_sequence_numbers(1, 1) == (64, 65)
    finally:
        c.close()


def test_replay_window_compare_and_set(store_url):
    a, b = open_store(store_url), open_store(store_url)
    try:
        a.add_keys([key("ue:urn:a")], T0)
        assert a.replay_window(1) == (0, 0, True)
        assert a.swap_replay_window(1, (0, 0), (0, 1))
        assert not b.swap_replay_window(1, (0, 0), (0, 2))  # stale: the other connection won
        assert b.replay_window(1) == (0, 1, True)
        b.revoke_keys(T0, number=1)
        assert not a.swap_replay_window(1, (0, 1), (0, 3))  # revoked: never accepted again
        assert a.replay_window(1) == (0, 1, False)
        assert a.replay_window(2) is None
    finally:
        a.close()
        b.close()
