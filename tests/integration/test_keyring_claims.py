"""The shared replay check of the store's keys, decided in batches (RFC 8613 §7.4, App. B.1;
SPEC D12): concurrent requests share one transaction, and a request is still accepted at most once
across every process that serves the key set — here two keyrings on one real SQLite file, each
with its own connection, as two SCM-S processes would have."""

from __future__ import annotations

import asyncio

import pytest

from msgin5g.authz import parse_identity
from msgin5g.security.keys import kid_for
from msgin5g.security.storekeys import StoreKeyring, Verdict, add_keys
from msgin5g.store import open_store

A, R, V = Verdict.ACCEPTED, Verdict.REPLAY, Verdict.REVOKED


@pytest.fixture
def two_keyrings(tmp_path):
    url = f"sqlite:///{tmp_path / 'scm.db'}"
    store = open_store(url)
    add_keys(
        store,
        [parse_identity("ue:urn:gsma:imei:35209900-000001-8"), parse_identity("admin:ops")],
        tmp_path / "k.jsonl",
    )
    other = open_store(url)
    try:
        yield StoreKeyring(store), StoreKeyring(other), store
    finally:
        store.close()
        other.close()


def test_a_batch_accepts_each_sequence_number_once(two_keyrings):
    ring, _, _ = two_keyrings
    ue, admin = ring.find(kid_for(1)), ring.find(kid_for(2))
    got = ring.claim_many_now([(ue, 5), (ue, 3), (admin, 1), (ue, 5), (admin, 1), (ue, 4)])
    assert got == [A, A, A, R, R, A]


def test_a_request_taken_by_a_sibling_process_is_a_replay(two_keyrings):
    ring, sibling, _ = two_keyrings
    mine, theirs = ring.find(kid_for(1)), sibling.find(kid_for(1))
    assert ring.claim_many_now([(mine, 1)]) == [A]
    assert sibling.claim_many_now([(theirs, 2), (theirs, 1)]) == [A, R]
    # this process's idea of the window is stale now: the store decides
    assert ring.claim_many_now([(mine, 2), (mine, 3)]) == [R, A]
    assert sibling.claim_now(theirs, 3) is R


def test_a_key_revoked_meanwhile_is_refused_in_a_batch(two_keyrings):
    ring, _, store = two_keyrings
    ue, admin = ring.find(kid_for(1)), ring.find(kid_for(2))
    assert ring.claim_many_now([(ue, 1), (admin, 1)]) == [A, A]
    assert store.revoke_keys("2026-01-01T00:00:00Z", identity="ue:urn:gsma:imei:35209900-000001-8")
    assert ring.claim_many_now([(ue, 2), (admin, 2)]) == [V, A]
    assert ring.find(kid_for(1)) is None


async def test_concurrent_claims_share_transactions(two_keyrings):
    ring, _, _ = two_keyrings
    ue = ring.find(kid_for(1))
    verdicts = await asyncio.gather(*(ring.claim(ue, n) for n in [*range(1, 31), *range(1, 31)]))
    assert verdicts.count(A) == 30 and verdicts.count(R) == 30
    assert ring.counters["claim-batches"] < 60


async def test_keys_asked_for_at_once_are_read_together(two_keyrings):
    """Contexts of keys not yet in memory, asked for by concurrent requests, come from shared reads
    off the event loop; an unknown or revoked kid gives None (SPEC D12, D14)."""
    ring, _, store = two_keyrings
    assert store.revoke_keys("2026-01-01T00:00:00Z", identity="admin:ops")
    kids = [kid_for(1), kid_for(2), kid_for(99), kid_for(1)]
    found = await asyncio.gather(*(ring.find_async(k) for k in kids))
    assert found[0] is not None and found[0] is found[3]
    assert found[0].key_identity == parse_identity("ue:urn:gsma:imei:35209900-000001-8")
    assert found[1] is None and found[2] is None
    assert ring.counters["contexts-loaded"] == 1
