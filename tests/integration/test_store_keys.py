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


def test_a_bundle_prefetches_one_lease_per_key_and_never_hands_a_number_out_twice(tmp_path):
    """Client side (RFC 8613 App. B.1.1): ``load_bundle(prefetch=16)`` leases a first block for every
    key in one write; a context takes its prefetched block, then leases further ones; a second
    process (a fresh state object) continues above everything leased."""
    import json

    from msgin5g.security import credentials

    bundle = tmp_path / "b.jsonl"
    lines = [
        credentials.key_json(f"ue:urn:x:{i}", bytes([i]), bytes(32), bytes(8), "AES-CCM-16-64-128")
        for i in (1, 2)
    ]
    bundle.write_text("\n".join(lines) + "\n")
    keys = credentials.load_bundle(bundle, prefetch=16)
    ctx = keys["ue:urn:x:1"].security_context()
    first = [ctx.new_sequence_number() for _ in range(20)]
    assert first == list(range(20))  # [0, 16) prefetched, then [16, 48) leased (the second block)
    state = credentials._SequenceState(tmp_path / "b.jsonl.state")  # what another process would read
    assert state.lease(bytes([1]), 1) == (48, 49)
    assert state.lease(bytes([2]), 1) == (16, 17)  # key 2's prefetched block [0, 16) is taken too
    assert json.loads(lines[0])["kid"] == "01"
